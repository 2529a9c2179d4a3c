//! Collects every error found in the input so that they are all reported at once.

use proc_macro2::TokenStream;

/// An accumulator of `syn::Error`s.
#[derive(Default)]
pub(crate) struct Errors {
    inner: Option<syn::Error>,
}

impl Errors {
    /// Records one error (which may itself hold several).
    pub(crate) fn push(&mut self, error: syn::Error) {
        match &mut self.inner {
            Some(all) => all.combine(error),
            None => self.inner = Some(error),
        }
    }

    /// Records the error of `result`, if any, and returns its value.
    pub(crate) fn ok<T>(&mut self, result: syn::Result<T>) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(error) => {
                self.push(error);
                None
            }
        }
    }

    /// All recorded errors as `compile_error!` invocations, or `None` if there were none.
    pub(crate) fn into_compile_errors(self) -> Option<TokenStream> {
        self.inner.map(|error| error.to_compile_error())
    }
}
