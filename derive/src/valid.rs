//! Checks on the input that parsing alone does not make.
//!
//! Whether a zero-copy message's fields are plain data and whether it has padding cannot be
//! decided from tokens: those checks are emitted as compile-time assertions by `expand`.

use crate::ast::{Data, Field, Input};
use crate::errors::Errors;
use syn::Error;

impl Input<'_> {
    /// Records every problem with the input in `errors`.
    pub(crate) fn validate(&self, errors: &mut Errors) {
        if let Data::Union(data) = &self.data {
            errors.push(Error::new_spanned(
                data.union_token,
                "unions are not supported by `#[derive(shmbus::Message)]`: use a `#[repr(C)]` \
                 struct of plain data, or an enum that derives serde's `Serialize` and \
                 `Deserialize`",
            ));
        }
        let generics = &self.original.generics;
        if !generics.params.is_empty() {
            errors.push(Error::new_spanned(
                generics,
                "generic messages are not supported: both ends of a channel must agree on one \
                 concrete layout; declare a concrete type (or one per instantiation)",
            ));
        }
        if let Some(name) = &self.attrs.name {
            if name.value().is_empty() {
                errors.push(Error::new_spanned(
                    name,
                    "the message name must not be empty",
                ));
            }
        }
        match &self.data {
            Data::Struct(shape) => check_fields(&shape.fields, errors),
            Data::Enum(variants) => {
                for variant in variants {
                    for attr in &variant.shmbus_attrs {
                        errors.push(Error::new_spanned(
                            attr,
                            "`#[shmbus(...)]` is only allowed on the message type, not on a variant",
                        ));
                    }
                    check_fields(&variant.shape.fields, errors);
                }
            }
            Data::Union(_) => {}
        }
    }
}

fn check_fields(fields: &[Field], errors: &mut Errors) {
    for field in fields {
        for attr in &field.shmbus_attrs {
            errors.push(Error::new_spanned(
                attr,
                "`#[shmbus(...)]` is only allowed on the message type, not on a field",
            ));
        }
    }
}
