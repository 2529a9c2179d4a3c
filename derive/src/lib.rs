//! Derive macro for `shmbus::Message`. Use it through the `shmbus` crate
//! (`#[derive(shmbus::Message)]`), which documents what it generates.
//!
//! The macro is split the way thiserror's is: `ast` turns the `syn` input into the shapes this
//! derive cares about, `attr` parses `#[shmbus(...)]` and `#[repr(...)]`, `valid` checks what
//! the parser cannot, `expand` writes the impls, and `fallback` writes a stand-in impl when
//! the input was rejected, so that one mistake gives one error and not a cascade of "not a
//! shmbus message" errors wherever the type is used. Every error found is collected (see
//! `errors`) and reported together.

extern crate proc_macro;

mod ast;
mod attr;
mod errors;
mod expand;
mod fallback;
mod valid;

use proc_macro::TokenStream;
use syn::{parse_macro_input, DeriveInput};

/// Derives `shmbus::Message`.
///
/// A `#[repr(C)]` (or `#[repr(transparent)]`) struct travels zero-copy and also gets
/// `shmbus::Pod` and `shmbus::ZeroCopy`; every other struct, every enum, and any type marked
/// `#[shmbus(serde)]` travels serialized with postcard and must derive serde's `Serialize`
/// and `Deserialize`. `#[shmbus(name = "...")]` sets the name used in the fingerprint.
#[proc_macro_derive(Message, attributes(shmbus))]
pub fn derive_message(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    expand::derive(&input).into()
}
