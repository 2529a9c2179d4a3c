//! The derive's view of its input: the syn tree reduced to what the expansion needs.

use crate::attr::{self, Attrs};
use crate::errors::Errors;
use syn::ext::IdentExt as _;
use syn::{Attribute, DeriveInput, Ident, Index, Member, Type};

/// The type the derive is applied to.
pub(crate) struct Input<'a> {
    pub original: &'a DeriveInput,
    pub ident: &'a Ident,
    pub attrs: Attrs,
    pub serde_attrs: Vec<&'a Attribute>,
    pub data: Data<'a>,
}

pub(crate) enum Data<'a> {
    Struct(Shape<'a>),
    Enum(Vec<Variant<'a>>),
    Union(&'a syn::DataUnion),
}

/// The fields of a struct or of an enum variant.
pub(crate) struct Shape<'a> {
    pub style: Style,
    pub fields: Vec<Field<'a>>,
}

#[derive(Clone, Copy)]
pub(crate) enum Style {
    Unit,
    Tuple,
    Named,
}

pub(crate) struct Variant<'a> {
    pub ident: &'a Ident,
    pub shape: Shape<'a>,
    pub shmbus_attrs: Vec<&'a Attribute>,
    pub serde_attrs: Vec<&'a Attribute>,
}

pub(crate) struct Field<'a> {
    pub member: Member,
    pub ty: &'a Type,
    pub shmbus_attrs: Vec<&'a Attribute>,
    pub serde_attrs: Vec<&'a Attribute>,
}

/// How a message travels (mirrors `shmbus::Encoding`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Encoding {
    ZeroCopy,
    Postcard,
}

impl<'a> Input<'a> {
    /// Builds the view of `node`, recording attribute errors in `errors`.
    pub(crate) fn from_syn(node: &'a DeriveInput, errors: &mut Errors) -> Self {
        let data = match &node.data {
            syn::Data::Struct(data) => Data::Struct(Shape::from_syn(&data.fields)),
            syn::Data::Enum(data) => {
                Data::Enum(data.variants.iter().map(Variant::from_syn).collect())
            }
            syn::Data::Union(data) => Data::Union(data),
        };
        Input {
            original: node,
            ident: &node.ident,
            attrs: attr::get(&node.attrs, errors),
            serde_attrs: attr::serde_attrs(&node.attrs),
            data,
        }
    }

    /// The name in `INFO.name` and the fingerprint: the `#[shmbus(name = "...")]` override,
    /// or the bare type name (never a module path, so that independent declarations agree).
    pub(crate) fn name(&self) -> String {
        match &self.attrs.name {
            Some(name) => name.value(),
            None => self.ident.unraw().to_string(),
        }
    }

    /// `#[repr(C)]` and `#[repr(transparent)]` structs travel zero-copy unless
    /// `#[shmbus(serde)]` says otherwise; everything else travels with postcard.
    pub(crate) fn encoding(&self) -> Encoding {
        let repr = &self.attrs.repr;
        match self.data {
            Data::Struct(_) if (repr.c || repr.transparent) && self.attrs.serde.is_none() => {
                Encoding::ZeroCopy
            }
            _ => Encoding::Postcard,
        }
    }

    pub(crate) fn is_generic(&self) -> bool {
        !self.original.generics.params.is_empty()
    }
}

impl<'a> Shape<'a> {
    fn from_syn(fields: &'a syn::Fields) -> Self {
        let style = match fields {
            syn::Fields::Named(_) => Style::Named,
            syn::Fields::Unnamed(_) => Style::Tuple,
            syn::Fields::Unit => Style::Unit,
        };
        let fields = fields
            .iter()
            .enumerate()
            .map(|(i, field)| Field::from_syn(i, field))
            .collect();
        Shape { style, fields }
    }
}

impl Style {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Style::Unit => "unit",
            Style::Tuple => "tuple",
            Style::Named => "named",
        }
    }
}

impl<'a> Variant<'a> {
    fn from_syn(node: &'a syn::Variant) -> Self {
        Variant {
            ident: &node.ident,
            shape: Shape::from_syn(&node.fields),
            shmbus_attrs: attr::shmbus_attrs(&node.attrs),
            serde_attrs: attr::serde_attrs(&node.attrs),
        }
    }
}

impl<'a> Field<'a> {
    fn from_syn(i: usize, node: &'a syn::Field) -> Self {
        let member = if let Some(ident) = &node.ident {
            Member::Named(ident.clone())
        } else {
            let mut index = Index::from(i);
            index.span = syn::spanned::Spanned::span(&node.ty);
            Member::Unnamed(index)
        };
        Field {
            member,
            ty: &node.ty,
            shmbus_attrs: attr::shmbus_attrs(&node.attrs),
            serde_attrs: attr::serde_attrs(&node.attrs),
        }
    }

    /// The field's name in the fingerprint: its identifier, or its index for a tuple field.
    pub(crate) fn name(&self) -> String {
        match &self.member {
            Member::Named(ident) => ident.unraw().to_string(),
            Member::Unnamed(index) => index.index.to_string(),
        }
    }
}
