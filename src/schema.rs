//! Self-describing channels: the schema a message type's derive records, and the compact
//! byte form the creator of a channel stores in its segment.
//!
//! The derive describes every message type as a `&'static` [`Schema`] in
//! [`MessageInfo::schema`](crate::MessageInfo::schema): zero-copy types with each field's
//! name, type name, offset, size and [`FieldKind`]; serialized (postcard) types with their
//! field names and type names as text, and for a field whose type (or, for a standard
//! container such as `Vec<T>` or `Option<T>`, whose element type) is itself a message, that
//! message's schema as a [`FieldKind::Struct`], so that nested structs can be decoded too. The creator writes it into the segment, so that
//! tools such as `shmbus tail` can decode messages without the Rust type
//! ([`inspect::ChannelInfo::schema`](crate::inspect::ChannelInfo::schema)).
//!
//! # Byte form
//!
//! Little endian, length-prefixed, no padding:
//!
//! ```text
//! schema := str(name) u8(encoding) u32(size) u32(align) u16(n) field × n
//! field  := str(name) str(type name) u32(offset) u32(size) kind
//! kind   := u8 tag: 1..=10 a primitive (u8 u16 u32 u64 i8 i16 i32 i64 f32 f64),
//!           20 array: u32(len) kind, 21 struct: schema, 30 opaque
//! str    := u16(len) utf-8 bytes
//! ```
//!
//! Decoding treats the bytes as untrusted (they come from shared memory): every length is
//! checked and nesting is limited to [`MAX_DEPTH`] levels.

use crate::message::Encoding;

/// Nesting limit (structs in arrays in structs …) when decoding a stored schema.
pub const MAX_DEPTH: usize = 16;
/// Largest stored schema, in bytes; a larger one is not stored (the channel works anyway).
pub const MAX_SCHEMA_LEN: usize = 64 * 1024;

/// The recorded shape of a message type (written by the derive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schema {
    /// The message name (as in [`MessageInfo::name`](crate::MessageInfo::name)).
    pub name: &'static str,
    /// How the type travels.
    pub encoding: Encoding,
    /// `size_of` the type.
    pub size: usize,
    /// `align_of` the type.
    pub align: usize,
    /// The fields, in declaration order (tuple fields are named `0`, `1`, …). For an enum:
    /// one entry per variant, its type name giving the variant's shape.
    pub fields: &'static [SchemaField],
}

/// One field of a [`Schema`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchemaField {
    /// The field's name.
    pub name: &'static str,
    /// The field's type as written in the source (whitespace removed).
    pub type_name: &'static str,
    /// Byte offset in the message (zero-copy types; 0 for serialized ones).
    pub offset: usize,
    /// Size in bytes (zero-copy types; 0 for serialized ones).
    pub size: usize,
    /// What the bytes are.
    pub kind: FieldKind,
}

/// What a zero-copy field's bytes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FieldKind {
    /// `u8`.
    U8,
    /// `u16`.
    U16,
    /// `u32`.
    U32,
    /// `u64`.
    U64,
    /// `i8`.
    I8,
    /// `i16`.
    I16,
    /// `i32`.
    I32,
    /// `i64`.
    I64,
    /// `f32`.
    F32,
    /// `f64`.
    F64,
    /// `[elem; len]`.
    Array {
        /// The element kind.
        elem: &'static FieldKind,
        /// Number of elements.
        len: usize,
    },
    /// A nested zero-copy message.
    Struct(&'static Schema),
    /// Anything else (128-bit and pointer-sized integers, serialized fields): shown as bytes
    /// or type text only.
    Opaque,
}

impl FieldKind {
    /// The nested schema of a [`FieldKind::Struct`].
    pub const fn as_schema(self) -> Option<&'static Schema> {
        match self {
            FieldKind::Struct(schema) => Some(schema),
            _ => None,
        }
    }
}

/// An owned, decoded schema (read back from a segment).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaDesc {
    /// The message name.
    pub name: String,
    /// How the type travels (`None`: an encoding this build does not know).
    pub encoding: Option<Encoding>,
    /// Size of the type in bytes.
    pub size: usize,
    /// Alignment of the type.
    pub align: usize,
    /// The fields.
    pub fields: Vec<FieldDesc>,
}

/// An owned field description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldDesc {
    /// The field's name.
    pub name: String,
    /// The field's type as written.
    pub type_name: String,
    /// Byte offset in the message.
    pub offset: usize,
    /// Size in bytes.
    pub size: usize,
    /// What the bytes are.
    pub kind: KindDesc,
}

/// An owned [`FieldKind`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum KindDesc {
    U8,
    U16,
    U32,
    U64,
    I8,
    I16,
    I32,
    I64,
    F32,
    F64,
    /// `[elem; len]`.
    Array(Box<KindDesc>, usize),
    /// A nested struct.
    Struct(SchemaDesc),
    /// Not decodable from its bytes.
    Opaque,
}

impl KindDesc {
    /// Size in bytes of a primitive kind, `None` for the others.
    pub fn primitive_size(&self) -> Option<usize> {
        Some(match self {
            KindDesc::U8 | KindDesc::I8 => 1,
            KindDesc::U16 | KindDesc::I16 => 2,
            KindDesc::U32 | KindDesc::I32 | KindDesc::F32 => 4,
            KindDesc::U64 | KindDesc::I64 | KindDesc::F64 => 8,
            _ => return None,
        })
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    let b = &s.as_bytes()[..s.len().min(u16::MAX as usize)];
    out.extend_from_slice(&(b.len() as u16).to_le_bytes());
    out.extend_from_slice(b);
}

fn put_u32(out: &mut Vec<u8>, v: usize) {
    out.extend_from_slice(&(v.min(u32::MAX as usize) as u32).to_le_bytes());
}

fn put_kind(out: &mut Vec<u8>, kind: &FieldKind) {
    let tag = match kind {
        FieldKind::U8 => 1,
        FieldKind::U16 => 2,
        FieldKind::U32 => 3,
        FieldKind::U64 => 4,
        FieldKind::I8 => 5,
        FieldKind::I16 => 6,
        FieldKind::I32 => 7,
        FieldKind::I64 => 8,
        FieldKind::F32 => 9,
        FieldKind::F64 => 10,
        FieldKind::Array { elem, len } => {
            out.push(20);
            put_u32(out, *len);
            return put_kind(out, elem);
        }
        FieldKind::Struct(schema) => {
            out.push(21);
            return put_schema(out, schema);
        }
        FieldKind::Opaque => 30,
    };
    out.push(tag);
}

fn put_schema(out: &mut Vec<u8>, schema: &Schema) {
    put_str(out, schema.name);
    out.push(schema.encoding as u32 as u8);
    put_u32(out, schema.size);
    put_u32(out, schema.align);
    let n = schema.fields.len().min(u16::MAX as usize);
    out.extend_from_slice(&(n as u16).to_le_bytes());
    for f in &schema.fields[..n] {
        put_str(out, f.name);
        put_str(out, f.type_name);
        put_u32(out, f.offset);
        put_u32(out, f.size);
        put_kind(out, &f.kind);
    }
}

impl Schema {
    /// The byte form stored in a segment, or `None` if it exceeds [`MAX_SCHEMA_LEN`].
    pub fn encode(&self) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        put_schema(&mut out, self);
        (out.len() <= MAX_SCHEMA_LEN).then_some(out)
    }
}

/// Why stored schema bytes could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid stored schema: {0}")]
pub struct SchemaError(String);

struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], SchemaError> {
        if n > self.bytes.len() {
            return Err(SchemaError("truncated".into()));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, SchemaError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, SchemaError> {
        Ok(u16::from_le_bytes(
            self.take(2)?.try_into().expect("2 bytes"),
        ))
    }
    fn u32(&mut self) -> Result<usize, SchemaError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")) as usize)
    }
    fn str(&mut self) -> Result<String, SchemaError> {
        let n = self.u16()? as usize;
        Ok(String::from_utf8_lossy(self.take(n)?).into_owned())
    }

    fn schema(&mut self, depth: usize) -> Result<SchemaDesc, SchemaError> {
        if depth > MAX_DEPTH {
            return Err(SchemaError(format!("nested deeper than {MAX_DEPTH}")));
        }
        let name = self.str()?;
        let encoding = Encoding::from_u32(self.u8()? as u32);
        let size = self.u32()?;
        let align = self.u32()?;
        let n = self.u16()?;
        let mut fields = Vec::new();
        for _ in 0..n {
            let name = self.str()?;
            let type_name = self.str()?;
            let offset = self.u32()?;
            let fsize = self.u32()?;
            let kind = self.kind(depth + 1)?;
            if encoding == Some(Encoding::ZeroCopy)
                && offset.checked_add(fsize).is_none_or(|end| end > size)
            {
                return Err(SchemaError(format!(
                    "field `{name}` lies outside the message"
                )));
            }
            fields.push(FieldDesc {
                name,
                type_name,
                offset,
                size: fsize,
                kind,
            });
        }
        Ok(SchemaDesc {
            name,
            encoding,
            size,
            align,
            fields,
        })
    }

    fn kind(&mut self, depth: usize) -> Result<KindDesc, SchemaError> {
        if depth > MAX_DEPTH {
            return Err(SchemaError(format!("nested deeper than {MAX_DEPTH}")));
        }
        Ok(match self.u8()? {
            1 => KindDesc::U8,
            2 => KindDesc::U16,
            3 => KindDesc::U32,
            4 => KindDesc::U64,
            5 => KindDesc::I8,
            6 => KindDesc::I16,
            7 => KindDesc::I32,
            8 => KindDesc::I64,
            9 => KindDesc::F32,
            10 => KindDesc::F64,
            20 => {
                let len = self.u32()?;
                KindDesc::Array(Box::new(self.kind(depth + 1)?), len)
            }
            21 => KindDesc::Struct(self.schema(depth + 1)?),
            30 => KindDesc::Opaque,
            t => return Err(SchemaError(format!("unknown kind tag {t}"))),
        })
    }
}

impl SchemaDesc {
    /// Decodes the byte form written by [`Schema::encode`].
    ///
    /// # Errors
    ///
    /// [`SchemaError`] if the bytes are truncated, nested too deeply, or describe fields
    /// outside the message.
    pub fn decode(bytes: &[u8]) -> Result<SchemaDesc, SchemaError> {
        let mut r = Reader { bytes };
        let s = r.schema(0)?;
        if !r.bytes.is_empty() {
            return Err(SchemaError("trailing bytes".into()));
        }
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INNER: Schema = Schema {
        name: "Inner",
        encoding: Encoding::ZeroCopy,
        size: 4,
        align: 2,
        fields: &[SchemaField {
            name: "a",
            type_name: "[i16;2]",
            offset: 0,
            size: 4,
            kind: FieldKind::Array {
                elem: &FieldKind::I16,
                len: 2,
            },
        }],
    };
    const OUTER: Schema = Schema {
        name: "Outer",
        encoding: Encoding::ZeroCopy,
        size: 16,
        align: 8,
        fields: &[
            SchemaField {
                name: "x",
                type_name: "f64",
                offset: 0,
                size: 8,
                kind: FieldKind::F64,
            },
            SchemaField {
                name: "inner",
                type_name: "Inner",
                offset: 8,
                size: 4,
                kind: FieldKind::Struct(&INNER),
            },
        ],
    };

    #[test]
    fn round_trip() {
        let bytes = OUTER.encode().unwrap();
        let d = SchemaDesc::decode(&bytes).unwrap();
        assert_eq!(d.name, "Outer");
        assert_eq!(d.fields.len(), 2);
        assert_eq!(d.fields[0].kind, KindDesc::F64);
        let KindDesc::Struct(inner) = &d.fields[1].kind else {
            panic!("not a struct: {:?}", d.fields[1].kind)
        };
        assert_eq!(
            inner.fields[0].kind,
            KindDesc::Array(Box::new(KindDesc::I16), 2)
        );
    }

    #[test]
    fn rejects_garbage() {
        let bytes = OUTER.encode().unwrap();
        for n in 0..bytes.len() {
            assert!(SchemaDesc::decode(&bytes[..n]).is_err());
        }
        // A deeply nested array chain.
        let mut deep = vec![
            1, 0, b'x', 1, 8, 0, 0, 0, 8, 0, 0, 0, 1, 0, 1, 0, b'a', 0, 0,
        ];
        deep.extend_from_slice(&[0, 0, 0, 0, 8, 0, 0, 0]);
        for _ in 0..100 {
            deep.extend_from_slice(&[20, 1, 0, 0, 0]);
        }
        deep.push(1);
        assert!(SchemaDesc::decode(&deep).is_err());
    }
}
