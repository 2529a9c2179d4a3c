//! Derive macro for `shmbus::Message`.
extern crate proc_macro;
use proc_macro::TokenStream;

/// Derives `shmbus::Message`.
#[proc_macro_derive(Message, attributes(shmbus))]
pub fn derive_message(_input: TokenStream) -> TokenStream {
    TokenStream::new()
}
