//! Code generation. Everything is emitted inside `const _: () = { ... };` and reaches the
//! runtime crate only through absolute paths into `::shmbus::__private`.

use crate::ast::{Data, Encoding, Field, Input, Shape};
use crate::errors::Errors;
use crate::fallback;
use proc_macro2::{Span, TokenStream};
use quote::{quote, quote_spanned, ToTokens};
use syn::ext::IdentExt as _;
use syn::spanned::Spanned as _;
use syn::{Attribute, DeriveInput, Ident, LitStr, Type};

/// Entry point: parse, validate, then expand (or report every error found).
pub(crate) fn derive(node: &DeriveInput) -> TokenStream {
    let mut errors = Errors::default();
    let input = Input::from_syn(node, &mut errors);
    input.validate(&mut errors);
    if let Some(compile_errors) = errors.into_compile_errors() {
        return fallback::expand(&input, compile_errors);
    }
    match (&input.data, input.encoding()) {
        (Data::Struct(shape), Encoding::ZeroCopy) => zero_copy(&input, shape),
        _ => postcard(&input),
    }
}

/// A `#[repr(C)]` struct of plain data, read and written in place.
fn zero_copy(input: &Input, shape: &Shape) -> TokenStream {
    let ty = input.ident;
    let name = LitStr::new(&input.name(), Span::call_site());

    // Every field must be plain data. Spanned at the field's type so that the `Pod`
    // diagnostic ("`bool` cannot be a field of a zero-copy shmbus message") points at it.
    // These go in the same constant as the fingerprint, which names `<F as Pod>` too: rustc
    // then reports an unsatisfied `F: Pod` once, not once per constant.
    let assert_pod: Vec<TokenStream> = shape
        .fields
        .iter()
        .map(|field| {
            let field_ty = field.ty;
            quote_spanned! {field_ty.span()=>
                ::shmbus::__private::assert_pod::<#field_ty>();
            }
        })
        .collect();

    if shape
        .fields
        .iter()
        .any(|field| contains_raw_pointer(field.ty))
    {
        // A raw pointer is never plain data, and it is neither `Send` nor `Sync`: the impls
        // below would each add an error about threads that buries the one that matters.
        return quote! {
            const _: () = {
                #(#assert_pod)*
            };
        };
    }

    // No padding: the struct is exactly as large as its fields together. (With `Pod` fields,
    // which have no padding of their own, this also rules out padding inside the fields.)
    let field_sizes = shape.fields.iter().map(|field| {
        let field_ty = field.ty;
        quote!(::shmbus::__private::size_of::<#field_ty>())
    });
    let sum_of_field_sizes = if shape.fields.is_empty() {
        quote!(0)
    } else {
        quote!(#(#field_sizes)+*)
    };
    let padding_message = format!(
        "shmbus: `{ty}` has padding bytes (its size is larger than the sum of its fields' \
         sizes), and padding cannot be sent zero-copy: add explicit `_pad: [u8; N]` fields or \
         reorder the fields from largest to smallest alignment"
    );
    let assert_no_padding = quote_spanned! {ty.span()=>
        const _: () = ::core::assert!(
            ::shmbus::__private::size_of::<#ty>() == #sum_of_field_sizes,
            #padding_message
        );
    };

    let mut mix = vec![
        Mix::str("shmbus-zero-copy"),
        Mix::str(&input.name()),
        Mix::U64(quote!(::shmbus::__private::size_of::<#ty>() as ::core::primitive::u64)),
        Mix::U64(quote!(::shmbus::__private::align_of::<#ty>() as ::core::primitive::u64)),
    ];
    for field in &shape.fields {
        let member = &field.member;
        let field_ty = field.ty;
        mix.push(Mix::str(&field.name()));
        mix.push(Mix::U64(quote!(
            ::shmbus::__private::offset_of!(#ty, #member) as ::core::primitive::u64
        )));
        mix.push(Mix::U64(
            quote!(<#field_ty as ::shmbus::__private::Pod>::SCHEMA_FINGERPRINT),
        ));
    }
    let fingerprint = fingerprint(&mix);

    // The recorded schema. Each field's kind names `<F as Pod>` at the field's type, as
    // `assert_pod` does, so an unsatisfied bound is still reported once.
    let schema_fields = shape.fields.iter().map(|field| {
        let member = &field.member;
        let field_ty = field.ty;
        let field_name = LitStr::new(&field.name(), Span::call_site());
        let type_name = LitStr::new(&tokens_without_whitespace(field_ty), Span::call_site());
        let kind = quote_spanned! {field_ty.span()=>
            <#field_ty as ::shmbus::__private::Pod>::SCHEMA_KIND
        };
        quote! {
            ::shmbus::__private::SchemaField {
                name: #field_name,
                type_name: #type_name,
                offset: ::shmbus::__private::offset_of!(#ty, #member),
                size: ::shmbus::__private::size_of::<#field_ty>(),
                kind: #kind,
            }
        }
    });
    let schema_kind = quote! {
        ::shmbus::__private::FieldKind::Struct(&::shmbus::__private::Schema {
            name: #name,
            encoding: ::shmbus::__private::Encoding::ZeroCopy,
            size: ::shmbus::__private::size_of::<#ty>(),
            align: ::shmbus::__private::align_of::<#ty>(),
            fields: &[#(#schema_fields),*],
        })
    };

    let parts = Ident::new("__SHMBUS_LAYOUT", Span::mixed_site());

    // SAFETY (of the three `unsafe impl`s below): the assertions above make the program fail
    // to compile unless every field is `Pod` (plain data: every bit pattern valid, no
    // pointers, no interior mutability) and the struct, which is `#[repr(C)]` or
    // `#[repr(transparent)]` and so has a defined layout, has no padding bytes. Such a struct
    // is itself plain data, which is what `Pod` requires; `INFO.size`/`INFO.align` are its
    // real size and alignment and the encoding is `pod_encode`/`pod_decode`, which is what
    // `Message` requires of a zero-copy message; `ZeroCopy` only needs the other two.
    quote! {
        const _: () = {
            #assert_no_padding

            // Fingerprint and schema in one constant, so that an unsatisfied `F: Pod` is
            // reported once.
            const #parts: (::core::primitive::u64, ::shmbus::__private::FieldKind) = {
                #(#assert_pod)*
                (#fingerprint, #schema_kind)
            };

            #[automatically_derived]
            unsafe impl ::shmbus::__private::Pod for #ty {
                const SCHEMA_FINGERPRINT: ::core::primitive::u64 = #parts.0;
                const SCHEMA_KIND: ::shmbus::__private::FieldKind = #parts.1;
            }

            #[automatically_derived]
            unsafe impl ::shmbus::__private::Message for #ty {
                const INFO: ::shmbus::__private::MessageInfo = ::shmbus::__private::MessageInfo {
                    name: #name,
                    encoding: ::shmbus::__private::Encoding::ZeroCopy,
                    size: ::shmbus::__private::size_of::<#ty>(),
                    align: ::shmbus::__private::align_of::<#ty>(),
                    fingerprint: <#ty as ::shmbus::__private::Pod>::SCHEMA_FINGERPRINT,
                    schema: <#ty as ::shmbus::__private::Pod>::SCHEMA_KIND.as_schema(),
                };

                #[inline]
                fn __encode(
                    &self,
                    out: &mut [::core::primitive::u8],
                ) -> ::core::result::Result<::core::primitive::usize, ::shmbus::__private::EncodeError> {
                    ::shmbus::__private::pod_encode(self, out)
                }

                #[inline]
                fn __decode(
                    bytes: &[::core::primitive::u8],
                ) -> ::core::result::Result<Self, ::shmbus::__private::DecodeError> {
                    ::shmbus::__private::pod_decode(bytes, #name)
                }
            }

            #[automatically_derived]
            unsafe impl ::shmbus::__private::ZeroCopy for #ty {}
        };
    }
}

/// Any other type: serialized with postcard.
fn postcard(input: &Input) -> TokenStream {
    let ty = input.ident;
    let name = LitStr::new(&input.name(), Span::call_site());

    // The serde check (spanned at the type's name) and the instantiation of the encode and
    // decode functions share one constant: rustc then reports a missing `Serialize` or
    // `Deserialize` once, pointing at the type, and not again from each method. Only the
    // assertion carries the user's span (the `#ty` tokens carry it anyway); the rest is the
    // macro's own code, which lints such as `clippy::type_complexity` do not look at.
    let postcard_fns = Ident::new("__SHMBUS_POSTCARD", Span::mixed_site());
    let assert_serde = quote_spanned! {ty.span()=>
        ::shmbus::__private::assert_serde::<#ty>();
    };
    let postcard_fns_const = quote! {
        const #postcard_fns: (
            fn(
                &#ty,
                &mut [::core::primitive::u8],
            ) -> ::core::result::Result<::core::primitive::usize, ::shmbus::__private::EncodeError>,
            fn(
                &[::core::primitive::u8],
                &'static ::core::primitive::str,
            ) -> ::core::result::Result<#ty, ::shmbus::__private::DecodeError>,
        ) = {
            #assert_serde
            (
                ::shmbus::__private::postcard_encode::<#ty>,
                ::shmbus::__private::postcard_decode::<#ty>,
            )
        };
    };

    let mut mix = vec![Mix::str("shmbus-postcard"), Mix::str(&input.name())];
    mix_serde_attrs(&mut mix, &input.serde_attrs);
    match &input.data {
        Data::Struct(shape) => {
            mix.push(Mix::str("struct"));
            mix_shape(&mut mix, shape);
        }
        Data::Enum(variants) => {
            mix.push(Mix::str("enum"));
            mix.push(Mix::len(variants.len()));
            for variant in variants {
                mix.push(Mix::str(&variant.ident.unraw().to_string()));
                mix_serde_attrs(&mut mix, &variant.serde_attrs);
                mix_shape(&mut mix, &variant.shape);
            }
        }
        Data::Union(_) => unreachable!("rejected by validation"),
    }
    let fingerprint = fingerprint(&mix);
    let schema = postcard_schema(input, &name);

    // SAFETY: a postcard message makes no promise about its memory layout: it is only ever
    // moved in and out of shared memory as the bytes postcard produces and checks, and it is
    // not `Pod` or `ZeroCopy`. `Message`'s safety contract only constrains zero-copy messages.
    quote! {
        const _: () = {
            #postcard_fns_const

            #[automatically_derived]
            unsafe impl ::shmbus::__private::Message for #ty {
                const INFO: ::shmbus::__private::MessageInfo = ::shmbus::__private::MessageInfo {
                    name: #name,
                    encoding: ::shmbus::__private::Encoding::Postcard,
                    size: ::shmbus::__private::size_of::<#ty>(),
                    align: ::shmbus::__private::align_of::<#ty>(),
                    fingerprint: #fingerprint,
                    schema: ::core::option::Option::Some(&#schema),
                };

                #[inline]
                fn __encode(
                    &self,
                    out: &mut [::core::primitive::u8],
                ) -> ::core::result::Result<::core::primitive::usize, ::shmbus::__private::EncodeError> {
                    (#postcard_fns.0)(self, out)
                }

                #[inline]
                fn __decode(
                    bytes: &[::core::primitive::u8],
                ) -> ::core::result::Result<Self, ::shmbus::__private::DecodeError> {
                    (#postcard_fns.1)(bytes, #name)
                }
            }
        };
    }
}

/// The schema of a serialized message: field names and types as text (for an enum, one entry
/// per variant with its fields as the type text).
fn postcard_schema(input: &Input, name: &LitStr) -> TokenStream {
    let ty = input.ident;
    let text_field = |field_name: String, type_name: String, kind: TokenStream| {
        let field_name = LitStr::new(&field_name, Span::call_site());
        let type_name = LitStr::new(&type_name, Span::call_site());
        quote! {
            ::shmbus::__private::SchemaField {
                name: #field_name,
                type_name: #type_name,
                offset: 0,
                size: 0,
                kind: #kind,
            }
        }
    };
    let opaque = || quote!(::shmbus::__private::FieldKind::Opaque);
    let fields: Vec<TokenStream> = match &input.data {
        // A field whose type is itself a message records that message's schema (nested
        // structs); others are described by their type text.
        Data::Struct(shape) => shape
            .fields
            .iter()
            .map(|f| {
                let field_ty = described_type(f.ty);
                text_field(
                    f.name(),
                    tokens_without_whitespace(f.ty),
                    quote!({
                        #[allow(unused_imports)]
                        use ::shmbus::__private::SerdeFieldFallback as _;
                        ::shmbus::__private::SerdeField::<#field_ty>::KIND
                    }),
                )
            })
            .collect(),
        Data::Enum(variants) => variants
            .iter()
            .map(|v| {
                let types: Vec<String> = v
                    .shape
                    .fields
                    .iter()
                    .map(|f| match v.shape.style {
                        crate::ast::Style::Named => {
                            format!("{}:{}", f.name(), tokens_without_whitespace(f.ty))
                        }
                        _ => tokens_without_whitespace(f.ty),
                    })
                    .collect();
                let shape = match v.shape.style {
                    crate::ast::Style::Unit => String::new(),
                    crate::ast::Style::Tuple => format!("({})", types.join(",")),
                    crate::ast::Style::Named => format!("{{{}}}", types.join(",")),
                };
                text_field(
                    v.ident.unraw().to_string(),
                    format!("variant{shape}"),
                    opaque(),
                )
            })
            .collect(),
        Data::Union(_) => Vec::new(),
    };
    quote! {
        ::shmbus::__private::Schema {
            name: #name,
            encoding: ::shmbus::__private::Encoding::Postcard,
            size: ::shmbus::__private::size_of::<#ty>(),
            align: ::shmbus::__private::align_of::<#ty>(),
            fields: &[#(#fields),*],
        }
    }
}

/// The shape of a postcard struct or variant: its kind, then each field's name and type as
/// written (whitespace removed), and the `#[serde(...)]` attributes that change the wire
/// format. Lists are prefixed with their length so that neighbouring items cannot run together.
fn mix_shape(mix: &mut Vec<Mix>, shape: &Shape) {
    mix.push(Mix::str(shape.style.as_str()));
    mix.push(Mix::len(shape.fields.len()));
    for field in &shape.fields {
        mix_field(mix, field);
    }
}

fn mix_field(mix: &mut Vec<Mix>, field: &Field) {
    mix.push(Mix::str(&field.name()));
    mix.push(Mix::str(&tokens_without_whitespace(field.ty)));
    mix_serde_attrs(mix, &field.serde_attrs);
}

fn mix_serde_attrs(mix: &mut Vec<Mix>, attrs: &[&Attribute]) {
    mix.push(Mix::len(attrs.len()));
    for attr in attrs {
        mix.push(Mix::str(&tokens_without_whitespace(&attr.meta)));
    }
}

/// Whether `ty` is a raw pointer, or an array of them.
fn contains_raw_pointer(ty: &Type) -> bool {
    match ty {
        Type::Ptr(_) => true,
        Type::Array(array) => contains_raw_pointer(&array.elem),
        Type::Group(group) => contains_raw_pointer(&group.elem),
        Type::Paren(paren) => contains_raw_pointer(&paren.elem),
        _ => false,
    }
}

/// The type whose schema a serialized field records: the field's type, or for a standard
/// container (`Vec<T>`, `Option<T>`, `Box<T>`, maps: the value type, arrays, slices,
/// references) the element type, recursively. `Vec<Leg>` records `Leg`'s schema, so that a
/// tool can decode the elements; the field's type text still says it is a `Vec`.
fn described_type(ty: &Type) -> &Type {
    const CONTAINERS: &[&str] = &[
        "Vec",
        "VecDeque",
        "LinkedList",
        "BinaryHeap",
        "HashSet",
        "BTreeSet",
        "HashMap",
        "BTreeMap",
        "Option",
        "Box",
        "Rc",
        "Arc",
    ];
    match ty {
        Type::Array(a) => described_type(&a.elem),
        Type::Slice(s) => described_type(&s.elem),
        Type::Reference(r) => described_type(&r.elem),
        Type::Paren(p) => described_type(&p.elem),
        Type::Group(g) => described_type(&g.elem),
        Type::Path(p) if p.qself.is_none() => {
            let Some(last) = p.path.segments.last() else {
                return ty;
            };
            if !CONTAINERS.iter().any(|c| last.ident == c) {
                return ty;
            }
            let syn::PathArguments::AngleBracketed(args) = &last.arguments else {
                return ty;
            };
            match args.args.iter().rev().find_map(|a| match a {
                syn::GenericArgument::Type(t) => Some(t),
                _ => None,
            }) {
                Some(inner) => described_type(inner),
                None => ty,
            }
        }
        _ => ty,
    }
}

fn tokens_without_whitespace(tokens: &dyn ToTokens) -> String {
    let mut s = tokens.to_token_stream().to_string();
    s.retain(|c| !c.is_whitespace());
    s
}

/// One step of the fingerprint: a call into `shmbus::fingerprint`.
enum Mix {
    /// A string, hashed with its length (`fingerprint::str`).
    Str(LitStr),
    /// A `u64`-valued constant expression (`fingerprint::u64`).
    U64(TokenStream),
}

impl Mix {
    fn str(s: &str) -> Mix {
        Mix::Str(LitStr::new(s, Span::call_site()))
    }

    fn len(n: usize) -> Mix {
        let n = n as u64;
        Mix::U64(quote!(#n))
    }
}

/// A constant expression folding `mix` into `fingerprint::SEED` in order.
fn fingerprint(mix: &[Mix]) -> TokenStream {
    let fp = quote!(::shmbus::__private::fingerprint);
    // A mixed-site local cannot capture the user's locals; the prefix keeps it from running
    // into a user's unit struct or constant, which even a mixed-site `let` would match.
    let h = Ident::new("__shmbus_h", Span::mixed_site());
    let steps = mix.iter().map(|step| match step {
        Mix::Str(s) => quote!(#h = #fp::str(#h, #s);),
        Mix::U64(v) => quote!(#h = #fp::u64(#h, #v);),
    });
    quote! {{
        let mut #h: ::core::primitive::u64 = #fp::SEED;
        #(#steps)*
        #h
    }}
}
