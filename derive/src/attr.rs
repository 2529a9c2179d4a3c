//! Parsing of the attributes the derive reads: `#[shmbus(...)]` and `#[repr(...)]`.

use crate::errors::Errors;
use proc_macro2::Span;
use syn::spanned::Spanned as _;
use syn::{Attribute, LitStr};

/// What the attributes on the message type say.
pub(crate) struct Attrs {
    /// `#[shmbus(name = "...")]`: the name used in `INFO.name` and the fingerprint.
    pub name: Option<LitStr>,
    /// `#[shmbus(serde)]`: travel serialized even though the type is `#[repr(C)]`.
    pub serde: Option<Span>,
    /// The `#[repr(...)]` hints that decide the encoding.
    pub repr: Repr,
}

/// The `#[repr(...)]` hints that matter to the derive.
#[derive(Default)]
pub(crate) struct Repr {
    /// `repr(C)`, possibly with `packed` or `align(N)`.
    pub c: bool,
    /// `repr(transparent)`.
    pub transparent: bool,
}

/// Parses the attributes on the message type. Errors in `#[shmbus(...)]` are recorded in
/// `errors`; a malformed `#[repr(...)]` is left for rustc to report.
pub(crate) fn get(attrs: &[Attribute], errors: &mut Errors) -> Attrs {
    let mut out = Attrs {
        name: None,
        serde: None,
        repr: Repr::default(),
    };
    for attr in attrs {
        if attr.path().is_ident("shmbus") {
            errors.ok(parse_shmbus(attr, &mut out));
        } else if attr.path().is_ident("repr") {
            // rustc itself rejects a malformed `repr`; an error here would only repeat it.
            let _ = parse_repr(attr, &mut out.repr);
        }
    }
    out
}

fn parse_shmbus(attr: &Attribute, out: &mut Attrs) -> syn::Result<()> {
    attr.parse_nested_meta(|meta| {
        if meta.path.is_ident("name") {
            let name: LitStr = meta.value()?.parse()?;
            if out.name.is_some() {
                return Err(meta.error("duplicate `#[shmbus(name = ...)]` attribute"));
            }
            out.name = Some(name);
            Ok(())
        } else if meta.path.is_ident("serde") {
            if out.serde.is_some() {
                return Err(meta.error("duplicate `#[shmbus(serde)]` attribute"));
            }
            out.serde = Some(meta.path.span());
            Ok(())
        } else {
            let path = meta
                .path
                .get_ident()
                .map_or_else(|| "this".to_owned(), |i| format!("`{i}`"));
            Err(meta.error(format!(
                "unknown shmbus attribute {path}: expected `name = \"...\"` or `serde`"
            )))
        }
    })
}

fn parse_repr(attr: &Attribute, repr: &mut Repr) -> syn::Result<()> {
    attr.parse_nested_meta(|meta| {
        if meta.path.is_ident("C") {
            repr.c = true;
        } else if meta.path.is_ident("transparent") {
            repr.transparent = true;
        }
        // `packed(N)`, `align(N)`: the argument does not change the encoding.
        if meta.input.peek(syn::token::Paren) {
            let _args;
            syn::parenthesized!(_args in meta.input);
        }
        Ok(())
    })
}

/// The `#[shmbus(...)]` attributes in `attrs` (used to reject them where they do not belong).
pub(crate) fn shmbus_attrs(attrs: &[Attribute]) -> Vec<&Attribute> {
    attrs
        .iter()
        .filter(|a| a.path().is_ident("shmbus"))
        .collect()
}

/// The `#[serde(...)]` attributes in `attrs`: they change a postcard message's wire format,
/// so they are part of its fingerprint.
pub(crate) fn serde_attrs(attrs: &[Attribute]) -> Vec<&Attribute> {
    attrs
        .iter()
        .filter(|a| a.path().is_ident("serde"))
        .collect()
}
