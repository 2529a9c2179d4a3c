//! What the derive emits when it rejected its input: the errors, plus (where possible) a
//! stand-in `Message` impl so that every use of the type does not add a second error.

use crate::ast::{Data, Input};
use proc_macro2::TokenStream;
use quote::quote;

pub(crate) fn expand(input: &Input, errors: TokenStream) -> TokenStream {
    if input.is_generic() || matches!(input.data, Data::Union(_)) {
        // A stand-in impl for these would only add errors of its own.
        return errors;
    }
    let ty = input.ident;
    // SAFETY: this impl is only ever emitted next to `compile_error!`, so no program that
    // contains it compiles, and its bodies can never run.
    quote! {
        #errors

        const _: () = {
            #[automatically_derived]
            unsafe impl ::shmbus::__private::Message for #ty {
                const INFO: ::shmbus::__private::MessageInfo = ::shmbus::__private::MessageInfo {
                    name: "",
                    encoding: ::shmbus::__private::Encoding::Postcard,
                    size: 0,
                    align: 1,
                    fingerprint: 0,
                    schema: ::core::option::Option::None,
                };

                fn __encode(
                    &self,
                    _: &mut [::core::primitive::u8],
                ) -> ::core::result::Result<::core::primitive::usize, ::shmbus::__private::EncodeError> {
                    ::core::unreachable!()
                }

                fn __decode(
                    _: &[::core::primitive::u8],
                ) -> ::core::result::Result<Self, ::shmbus::__private::DecodeError> {
                    ::core::unreachable!()
                }
            }
        };
    }
}
