//! The message contract: what `#[derive(shmbus::Message)]` implements.
//!
//! A message type travels in one of two encodings, chosen by the derive:
//!
//! * **zero-copy** ([`Encoding::ZeroCopy`]): a `#[repr(C)]` struct of plain data (integers,
//!   floats, fixed arrays, nested zero-copy messages) with no padding. It is written and read
//!   in place in shared memory; such types also implement [`ZeroCopy`] and [`Pod`].
//! * **postcard** ([`Encoding::Postcard`]): any other type that derives serde's `Serialize`
//!   and `Deserialize` (`String`, `Vec`, enums, nested serde types). It is serialized with
//!   postcard into the slot, up to the channel's maximum message size.
//!
//! Both ends of a channel compare a [`MessageInfo::fingerprint`] when they attach: it is a
//! hash of the declared type name, the field names and field types, the size, the alignment
//! and the encoding, so two binaries that declare the same struct independently agree, and
//! any change to the layout is caught.

use std::fmt;

use crate::schema::{FieldKind, Schema};

/// How a message's bytes are laid out in a slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
#[non_exhaustive]
pub enum Encoding {
    /// The value's own bytes, read and written in place (`#[repr(C)]` plain data).
    ZeroCopy = 1,
    /// serde + postcard, variable length.
    Postcard = 2,
}

impl Encoding {
    /// The encoding stored in a segment header as this number, if it is known.
    pub const fn from_u32(v: u32) -> Option<Encoding> {
        match v {
            1 => Some(Encoding::ZeroCopy),
            2 => Some(Encoding::Postcard),
            _ => None,
        }
    }

    /// A short lowercase name (`"zero-copy"`, `"postcard"`).
    pub const fn name(self) -> &'static str {
        match self {
            Encoding::ZeroCopy => "zero-copy",
            Encoding::Postcard => "postcard",
        }
    }
}

impl fmt::Display for Encoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A compile-time description of a message type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MessageInfo {
    /// The declared type name (without crate path), or the `#[shmbus(name = "...")]` override.
    pub name: &'static str,
    /// How the message travels.
    pub encoding: Encoding,
    /// `size_of::<T>()`.
    pub size: usize,
    /// `align_of::<T>()`.
    pub align: usize,
    /// Hash of name, fields, field types, size, alignment and encoding.
    pub fingerprint: u64,
    /// The recorded shape of the type, stored in the segment by the channel's creator so
    /// that tools can decode messages without the Rust type (see [`crate::inspect`]).
    pub schema: Option<&'static Schema>,
}

/// A type that can travel through a shmbus channel.
///
/// Do not implement this trait by hand: write `#[derive(shmbus::Message)]`. The derive checks
/// at compile time that the type really is what its encoding requires.
///
/// # Safety
///
/// For [`Encoding::ZeroCopy`] the implementing type must also implement [`Pod`] (its
/// `INFO.size`/`INFO.align` must be its real size and alignment), and `encode`/`decode` must
/// be the byte copy of [`__private::pod_encode`](crate::__private). The channel relies on
/// this to read the type in place from shared memory.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a shmbus message",
    label = "this type cannot be sent through a shmbus channel",
    note = "add `#[derive(shmbus::Message)]` to `{Self}`: with `#[repr(C)]` it travels zero-copy, otherwise derive serde's `Serialize` and `Deserialize` too"
)]
pub unsafe trait Message: Sized + Send + 'static {
    /// The type's description and fingerprint.
    const INFO: MessageInfo;

    /// Writes the encoded message into `out` and returns how many bytes it used.
    #[doc(hidden)]
    fn __encode(&self, out: &mut [u8]) -> Result<usize, EncodeError>;

    /// Decodes a message from the bytes of one slot.
    #[doc(hidden)]
    fn __decode(bytes: &[u8]) -> Result<Self, DecodeError>;
}

/// Plain data: a type for which every bit pattern of `size_of::<Self>()` bytes is a valid
/// value, with no padding bytes, no pointers or references, and no interior mutability.
///
/// Implemented for the integer and float primitives, arrays of `Pod` types, and structs that
/// `#[derive(shmbus::Message)]` accepts as zero-copy. Do not implement it by hand.
///
/// # Safety
///
/// Every initialised byte pattern of the right size and alignment must be a valid `Self`;
/// `Self` has no padding, no `UnsafeCell`, and no pointers; its bytes can be copied freely.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be a field of a zero-copy shmbus message",
    label = "not plain data: this field cannot be read in place from shared memory",
    note = "zero-copy fields must be integers, floats, fixed-size arrays of them, or nested `#[repr(C)]` `#[derive(shmbus::Message)]` structs",
    note = "`bool`, `char` and enums have invalid bit patterns: store a `u8`/`u32` instead; pointers, references, `Box`, `Vec` and `String` point outside shared memory: use a fixed array, or remove `#[repr(C)]` and derive serde's `Serialize` and `Deserialize` so the message travels serialized with postcard"
)]
pub unsafe trait Pod: Sized + Send + Sync + 'static {
    /// Fingerprint of this type's layout, mixed into the fingerprint of any struct that
    /// contains it.
    const SCHEMA_FINGERPRINT: u64;

    /// What the bytes of this type are, for the recorded [`Schema`].
    const SCHEMA_KIND: FieldKind = FieldKind::Opaque;
}

/// A message that travels zero-copy: it can be loaned in place with
/// [`Sender::loan`](crate::Sender::loan) and is received by reference.
///
/// # Safety
///
/// Implemented only by the derive, for `#[repr(C)]` types that also implement [`Pod`].
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a zero-copy message",
    label = "loaning a slot in place needs a `#[repr(C)]` plain-data message",
    note = "serialized (postcard) messages cannot be written in place: use `Sender::send` instead, or make `{Self}` a `#[repr(C)]` struct of plain data"
)]
pub unsafe trait ZeroCopy: Message + Pod {}

macro_rules! pod_primitive {
    ($($t:ty => $kind:ident),* $(,)?) => {$(
        // SAFETY: every bit pattern is a valid value of this primitive, it has no padding,
        // no pointers and no interior mutability.
        unsafe impl Pod for $t {
            const SCHEMA_FINGERPRINT: u64 = fingerprint::str(fingerprint::SEED, stringify!($t));
            const SCHEMA_KIND: FieldKind = FieldKind::$kind;
        }
    )*};
}
pod_primitive!(
    u8 => U8, u16 => U16, u32 => U32, u64 => U64, u128 => Opaque, usize => Opaque,
    i8 => I8, i16 => I16, i32 => I32, i64 => I64, i128 => Opaque, isize => Opaque,
    f32 => F32, f64 => F64,
);

// SAFETY: an array of plain data is plain data: elements are laid out with no gaps (their
// size is a multiple of their alignment) and no other bytes.
unsafe impl<T: Pod, const N: usize> Pod for [T; N] {
    const SCHEMA_FINGERPRINT: u64 = fingerprint::u64(
        fingerprint::str(
            fingerprint::u64(fingerprint::SEED, T::SCHEMA_FINGERPRINT),
            "[;]",
        ),
        N as u64,
    );
    const SCHEMA_KIND: FieldKind = FieldKind::Array {
        elem: &T::SCHEMA_KIND,
        len: N,
    };
}

/// Why a message could not be encoded into a slot.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The encoded message does not fit the channel's maximum message size.
    #[error("message does not fit in {max} bytes (the channel's maximum message size)")]
    TooLarge {
        /// The channel's maximum message size in bytes.
        max: usize,
    },
    /// The serializer refused the value.
    #[error("cannot serialize message: {0}")]
    Serialize(String),
}

/// Why the bytes in a slot could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The slot holds a different number of bytes than a zero-copy message needs.
    #[error("slot holds {found} bytes, a `{ty}` needs {expected}")]
    Length {
        /// The message type's name.
        ty: &'static str,
        /// The type's size.
        expected: usize,
        /// The length found in the slot.
        found: usize,
    },
    /// postcard could not decode the bytes.
    #[error("cannot deserialize a `{ty}`: {reason}")]
    Deserialize {
        /// The message type's name.
        ty: &'static str,
        /// postcard's description of the failure.
        reason: String,
    },
}

/// Compile-time FNV-1a hashing used for type fingerprints.
///
/// These are `const fn`s so that the derive can compute a fingerprint as a constant.
pub mod fingerprint {
    /// The FNV-1a 64-bit offset basis.
    pub const SEED: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;

    /// Mixes `bytes` into `h`.
    pub const fn bytes(mut h: u64, bytes: &[u8]) -> u64 {
        let mut i = 0;
        while i < bytes.len() {
            h ^= bytes[i] as u64;
            h = h.wrapping_mul(PRIME);
            i += 1;
        }
        h
    }

    /// Mixes a length-prefixed string into `h` (so `"ab","c"` differs from `"a","bc"`).
    pub const fn str(h: u64, s: &str) -> u64 {
        bytes(u64(h, s.len() as u64), s.as_bytes())
    }

    /// Mixes a number into `h`.
    pub const fn u64(h: u64, v: u64) -> u64 {
        bytes(h, &v.to_le_bytes())
    }
}

/// Support code for the derive macro. Not public API.
#[doc(hidden)]
pub mod __private {
    pub use super::fingerprint;
    pub use super::{DecodeError, EncodeError, Encoding, Message, MessageInfo, Pod, ZeroCopy};
    pub use crate::schema::{FieldKind, Schema, SchemaField};
    pub use core::mem::{align_of, offset_of, size_of};
    pub use serde;

    /// The recorded kind of a field of a serialized message: the field type's own schema
    /// if it derives `Message` (a nested message), otherwise opaque (tools decode it from
    /// the type text). Resolved at the derive's expansion site: the inherent constant
    /// applies when `T: Message` holds, the [`SerdeFieldFallback`] one otherwise.
    pub struct SerdeField<T: ?Sized>(core::marker::PhantomData<T>);

    impl<T: Message> SerdeField<T> {
        /// The nested schema of a field whose type is a message.
        pub const KIND: FieldKind = match T::INFO.schema {
            Some(schema) => FieldKind::Struct(schema),
            None => FieldKind::Opaque,
        };
    }

    /// The kind of a field whose type is not a message (see [`SerdeField`]).
    pub trait SerdeFieldFallback {
        /// Opaque: decoded from the type text.
        const KIND: FieldKind = FieldKind::Opaque;
    }

    impl<T: ?Sized> SerdeFieldFallback for SerdeField<T> {}

    /// The byte copy used as the encoding of every zero-copy message.
    #[inline]
    pub fn pod_encode<T: Pod>(value: &T, out: &mut [u8]) -> Result<usize, EncodeError> {
        let n = size_of::<T>();
        let Some(dst) = out.get_mut(..n) else {
            return Err(EncodeError::TooLarge { max: out.len() });
        };
        // SAFETY: `T: Pod` has no padding, so all `n` bytes of `*value` are initialised and
        // may be viewed as `u8`s for the duration of this borrow.
        let src = unsafe { core::slice::from_raw_parts((value as *const T).cast::<u8>(), n) };
        dst.copy_from_slice(src);
        Ok(n)
    }

    /// The decoding of every zero-copy message: a byte copy into a new value.
    #[inline]
    pub fn pod_decode<T: Pod>(bytes: &[u8], ty: &'static str) -> Result<T, DecodeError> {
        if bytes.len() != size_of::<T>() {
            return Err(DecodeError::Length {
                ty,
                expected: size_of::<T>(),
                found: bytes.len(),
            });
        }
        let mut value = core::mem::MaybeUninit::<T>::uninit();
        // SAFETY: `bytes` holds exactly `size_of::<T>()` bytes; the destination is a fresh
        // `MaybeUninit<T>` that cannot overlap it.
        unsafe {
            core::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                value.as_mut_ptr().cast::<u8>(),
                bytes.len(),
            );
        }
        // SAFETY: all bytes were initialised above, and every bit pattern is a valid `T`
        // because `T: Pod`.
        Ok(unsafe { value.assume_init() })
    }

    /// postcard encoding of a serde message into a slot.
    #[inline]
    pub fn postcard_encode<T: serde::Serialize>(
        value: &T,
        out: &mut [u8],
    ) -> Result<usize, EncodeError> {
        let max = out.len();
        match postcard::to_slice(value, out) {
            Ok(used) => Ok(used.len()),
            Err(postcard::Error::SerializeBufferFull) => Err(EncodeError::TooLarge { max }),
            Err(e) => Err(EncodeError::Serialize(e.to_string())),
        }
    }

    /// postcard decoding of a serde message from a slot.
    #[inline]
    pub fn postcard_decode<T: serde::de::DeserializeOwned>(
        bytes: &[u8],
        ty: &'static str,
    ) -> Result<T, DecodeError> {
        postcard::from_bytes(bytes).map_err(|e| DecodeError::Deserialize {
            ty,
            reason: e.to_string(),
        })
    }

    /// Compile-time check that a field type is plain data (gives the `Pod` diagnostic at the
    /// field's span).
    pub const fn assert_pod<T: Pod>() {}

    /// Compile-time check that a serialized message is serde-capable.
    pub const fn assert_serde<T: serde::Serialize + serde::de::DeserializeOwned>() {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_is_length_prefixed() {
        let a = fingerprint::str(fingerprint::str(fingerprint::SEED, "ab"), "c");
        let b = fingerprint::str(fingerprint::str(fingerprint::SEED, "a"), "bc");
        assert_ne!(a, b);
    }

    #[test]
    fn primitive_fingerprints_differ() {
        assert_ne!(u32::SCHEMA_FINGERPRINT, i32::SCHEMA_FINGERPRINT);
        assert_ne!(u32::SCHEMA_FINGERPRINT, f32::SCHEMA_FINGERPRINT);
        assert_ne!(<[u8; 8]>::SCHEMA_FINGERPRINT, <[u8; 9]>::SCHEMA_FINGERPRINT);
        assert_ne!(<[u8; 8]>::SCHEMA_FINGERPRINT, <[i8; 8]>::SCHEMA_FINGERPRINT);
    }

    #[test]
    fn pod_round_trip() {
        let v: [u32; 3] = [1, 2, 0xdead_beef];
        let mut buf = [0u8; 16];
        let n = __private::pod_encode(&v, &mut buf).unwrap();
        assert_eq!(n, 12);
        let back: [u32; 3] = __private::pod_decode(&buf[..n], "x").unwrap();
        assert_eq!(back, v);
        assert!(matches!(
            __private::pod_decode::<[u32; 3]>(&buf[..11], "x"),
            Err(DecodeError::Length { found: 11, .. })
        ));
        assert_eq!(
            __private::pod_encode(&v, &mut buf[..4]),
            Err(EncodeError::TooLarge { max: 4 })
        );
    }
}
