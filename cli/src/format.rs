//! Messages as text through a channel's recorded schema: decoding for `tail`, encoding JSON
//! for `send`. No Rust type of the message is needed.

use std::fmt::Write as _;

use serde_json::Value;
use shmbus::{Encoding, FieldDesc, KindDesc, SchemaDesc};

/// `{seq: 1, price: 2.5, venue: "XNAS"}` for a zero-copy message, the decoded values of a
/// serialized (postcard) one as far as its schema describes them; hex otherwise.
pub fn decode(schema: Option<&SchemaDesc>, bytes: &[u8]) -> String {
    match schema {
        Some(s) if s.encoding == Some(Encoding::ZeroCopy) && bytes.len() >= s.size => {
            let mut out = String::new();
            write_struct(&mut out, &s.fields, bytes);
            out
        }
        Some(s) if s.encoding == Some(Encoding::Postcard) => crate::postcard::decode(s, bytes),
        _ => format!("<{} bytes: {}>", bytes.len(), hex(bytes)),
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn write_struct(out: &mut String, fields: &[FieldDesc], bytes: &[u8]) {
    out.push('{');
    for (i, f) in fields.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        let _ = write!(out, "{}: ", f.name);
        match bytes.get(f.offset..f.offset + f.size) {
            Some(b) => write_value(out, &f.kind, b),
            None => out.push('?'),
        }
    }
    out.push('}');
}

fn write_value(out: &mut String, kind: &KindDesc, b: &[u8]) {
    macro_rules! num {
        ($t:ty) => {{
            let n = std::mem::size_of::<$t>();
            match b.get(..n) {
                Some(x) => {
                    let _ = write!(out, "{}", <$t>::from_le_bytes(x.try_into().expect("size")));
                }
                None => out.push('?'),
            }
        }};
    }
    match kind {
        KindDesc::U8 => num!(u8),
        KindDesc::U16 => num!(u16),
        KindDesc::U32 => num!(u32),
        KindDesc::U64 => num!(u64),
        KindDesc::I8 => num!(i8),
        KindDesc::I16 => num!(i16),
        KindDesc::I32 => num!(i32),
        KindDesc::I64 => num!(i64),
        KindDesc::F32 => num!(f32),
        KindDesc::F64 => num!(f64),
        KindDesc::Array(elem, len) => {
            if **elem == KindDesc::U8 {
                if let Some(text) = printable(&b[..(*len).min(b.len())]) {
                    let _ = write!(out, "{text:?}");
                    return;
                }
            }
            let size = if *len == 0 { 0 } else { b.len() / len };
            out.push('[');
            for i in 0..*len {
                if i > 0 {
                    out.push_str(", ");
                }
                match b.get(i * size..(i + 1) * size) {
                    Some(e) => write_value(out, elem, e),
                    None => out.push('?'),
                }
            }
            out.push(']');
        }
        KindDesc::Struct(s) => write_struct(out, &s.fields, b),
        KindDesc::Opaque => {
            let _ = write!(out, "0x{}", hex(b));
        }
    }
}

/// Bytes that read as text: printable ASCII followed only by NUL padding.
fn printable(b: &[u8]) -> Option<&str> {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    if b[end..].iter().any(|&c| c != 0) || !b[..end].iter().all(|c| (0x20..0x7f).contains(c)) {
        return None;
    }
    std::str::from_utf8(&b[..end]).ok()
}

/// Encodes JSON as the message the schema describes: a zero-copy message from an object
/// (missing fields are zero; unknown fields are an error), a serialized one with postcard
/// (see [`crate::postcard::encode`]).
pub fn encode(schema: &SchemaDesc, json: &Value) -> Result<Vec<u8>, String> {
    match schema.encoding {
        Some(Encoding::ZeroCopy) => {}
        Some(Encoding::Postcard) => return crate::postcard::encode(schema, json),
        _ => {
            return Err(format!(
                "`{}` travels in an encoding this build of shmbus does not know",
                schema.name
            ))
        }
    }
    let mut out = vec![0u8; schema.size];
    encode_struct(&schema.fields, json, &mut out, &schema.name)?;
    Ok(out)
}

fn encode_struct(
    fields: &[FieldDesc],
    v: &Value,
    out: &mut [u8],
    path: &str,
) -> Result<(), String> {
    let obj = v
        .as_object()
        .ok_or_else(|| format!("{path}: expected a JSON object, found {v}"))?;
    for key in obj.keys() {
        if !fields.iter().any(|f| &f.name == key) {
            let names: Vec<&str> = fields.iter().map(|f| f.name.as_str()).collect();
            return Err(format!(
                "{path} has no field `{key}` (its fields: {})",
                names.join(", ")
            ));
        }
    }
    for f in fields {
        if let Some(fv) = obj.get(&f.name) {
            let dst = out
                .get_mut(f.offset..f.offset + f.size)
                .ok_or_else(|| format!("{path}.{}: outside the message", f.name))?;
            encode_value(&f.kind, fv, dst, &format!("{path}.{}", f.name))?;
        }
    }
    Ok(())
}

fn encode_value(kind: &KindDesc, v: &Value, out: &mut [u8], path: &str) -> Result<(), String> {
    let bad = |what: &str| format!("{path}: expected {what}, found {v}");
    macro_rules! int {
        ($t:ty) => {{
            let n = v
                .as_i64()
                .map(i128::from)
                .or_else(|| v.as_u64().map(i128::from))
                .ok_or_else(|| bad(stringify!($t)))?;
            let x = <$t>::try_from(n)
                .map_err(|_| bad(concat!("a value in range of ", stringify!($t))))?;
            out.copy_from_slice(&x.to_le_bytes());
        }};
    }
    match kind {
        KindDesc::U8 => int!(u8),
        KindDesc::U16 => int!(u16),
        KindDesc::U32 => int!(u32),
        KindDesc::U64 => int!(u64),
        KindDesc::I8 => int!(i8),
        KindDesc::I16 => int!(i16),
        KindDesc::I32 => int!(i32),
        KindDesc::I64 => int!(i64),
        KindDesc::F32 => {
            let x = v.as_f64().ok_or_else(|| bad("a number"))? as f32;
            out.copy_from_slice(&x.to_le_bytes());
        }
        KindDesc::F64 => {
            let x = v.as_f64().ok_or_else(|| bad("a number"))?;
            out.copy_from_slice(&x.to_le_bytes());
        }
        KindDesc::Array(elem, len) => {
            if let (KindDesc::U8, Some(s)) = (&**elem, v.as_str()) {
                if s.len() > *len {
                    return Err(format!("{path}: {s:?} is longer than {len} bytes"));
                }
                out[..s.len()].copy_from_slice(s.as_bytes());
                return Ok(());
            }
            let items = v.as_array().ok_or_else(|| bad("an array"))?;
            if items.len() != *len {
                return Err(format!(
                    "{path}: expected {len} elements, found {}",
                    items.len()
                ));
            }
            let size = if *len == 0 { 0 } else { out.len() / len };
            for (i, item) in items.iter().enumerate() {
                encode_value(
                    elem,
                    item,
                    &mut out[i * size..(i + 1) * size],
                    &format!("{path}[{i}]"),
                )?;
            }
        }
        KindDesc::Struct(s) => encode_struct(&s.fields, v, out, path)?,
        KindDesc::Opaque => return Err(format!("{path}: this field's type cannot be encoded")),
    }
    Ok(())
}
