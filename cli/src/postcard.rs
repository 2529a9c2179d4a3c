//! Decoding serialized (postcard) messages without their Rust type, from the recorded
//! schema: each field's name and its type as written in the source (`u64`, `String`,
//! `Vec<Option<f32>>`, `[u8;4]`, `(u32,bool)`, `BTreeMap<String,i64>` …), and for a field
//! whose type is itself a message, that message's schema (nested structs). Enum messages
//! record one entry per variant with its shape (`variant`, `variant(u32,String)`,
//! `variant{a:u64}`).
//!
//! Postcard's wire rules used here: `u8`/`i8` one byte; other integers LEB128 varints
//! (signed ones zig-zag encoded); `f32`/`f64` little endian; `bool` one byte; `char`, `str`
//! and `String` a varint length and UTF-8; sequences and maps a varint length, then the
//! elements; `Option` a 0/1 byte; arrays and tuples their elements; an enum a varint
//! variant index, then the variant's fields. A type the decoder does not know (a struct
//! that does not derive `Message`, a `#[serde(with)]` field, …) ends decoding: the rest is
//! shown as hex. The bytes are untrusted: lengths are checked, nesting is bounded.

use std::collections::HashMap;
use std::fmt::Write as _;

use shmbus::{FieldDesc, KindDesc, SchemaDesc};

const MAX_DEPTH: usize = 32;

/// Why decoding stopped.
struct Stop(String);

type R<T> = Result<T, Stop>;

struct Input<'a> {
    bytes: &'a [u8],
    pos: usize,
    /// Nested message schemas by type name (every `Struct` kind in the schema tree).
    known: HashMap<&'a str, &'a SchemaDesc>,
}

fn collect<'a>(
    fields: &'a [FieldDesc],
    known: &mut HashMap<&'a str, &'a SchemaDesc>,
    depth: usize,
) {
    if depth > MAX_DEPTH {
        return;
    }
    for f in fields {
        if let KindDesc::Struct(s) = &f.kind {
            if known.insert(s.name.as_str(), s).is_none() {
                collect(&s.fields, known, depth + 1);
            }
        }
    }
}

impl<'a> Input<'a> {
    fn take(&mut self, n: usize) -> R<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or_else(|| Stop("truncated".into()))?;
        let b = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(b)
    }

    fn byte(&mut self) -> R<u8> {
        Ok(self.take(1)?[0])
    }

    fn varint(&mut self) -> R<u128> {
        let mut v: u128 = 0;
        for shift in (0..).step_by(7).take(19) {
            let b = self.byte()?;
            v |= u128::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(Stop("varint too long".into()))
    }

    fn len(&mut self) -> R<usize> {
        let n = self.varint()?;
        // Every element takes at least one byte, except zero-sized ones (units): bound the
        // length by what is left so that garbage cannot make us loop for long.
        usize::try_from(n)
            .ok()
            .filter(|&n| n <= self.bytes.len() - self.pos + 1024)
            .ok_or_else(|| Stop(format!("length {n} exceeds the message")))
    }
}

/// A message's fields as `{name: value, ...}` (or `Variant ...` for an enum), with whatever
/// could not be decoded as hex.
pub fn decode(schema: &SchemaDesc, bytes: &[u8]) -> String {
    let mut out = String::new();
    let mut known = HashMap::new();
    collect(&schema.fields, &mut known, 0);
    let mut input = Input {
        bytes,
        pos: 0,
        known,
    };
    // An enum records one entry per variant, each typed `variant…`.
    let is_enum = !schema.fields.is_empty()
        && schema
            .fields
            .iter()
            .all(|f| f.type_name.starts_with("variant") && f.kind == KindDesc::Opaque);
    let r = if is_enum {
        enum_value(&mut out, &schema.fields, &mut input)
    } else {
        struct_value(&mut out, &schema.fields, &mut input, 0)
    };
    match r {
        Ok(()) if input.pos == bytes.len() => {}
        Ok(()) => {
            let _ = write!(out, " <{} trailing bytes>", bytes.len() - input.pos);
        }
        Err(Stop(why)) => {
            let rest = &bytes[input.pos.min(bytes.len())..];
            let _ = write!(out, "<undecoded ({why}): {}>", crate::format::hex(rest));
        }
    }
    out
}

fn struct_value(out: &mut String, fields: &[FieldDesc], input: &mut Input, depth: usize) -> R<()> {
    if depth > MAX_DEPTH {
        return Err(Stop("nested too deeply".into()));
    }
    out.push('{');
    for (i, f) in fields.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        let _ = write!(out, "{}: ", f.name);
        field_value(out, f, input, depth + 1)?;
    }
    out.push('}');
    Ok(())
}

fn field_value(out: &mut String, f: &FieldDesc, input: &mut Input, depth: usize) -> R<()> {
    let ty = parse_type(&f.type_name);
    match (&f.kind, &ty) {
        // The field's type is the nested message itself.
        (KindDesc::Struct(s), Ty::Unknown(_)) => struct_value(out, &s.fields, input, depth),
        _ => value(out, &ty, input, depth),
    }
}

fn enum_value(out: &mut String, variants: &[FieldDesc], input: &mut Input) -> R<()> {
    let index = input.varint()?;
    let v = usize::try_from(index)
        .ok()
        .and_then(|i| variants.get(i))
        .ok_or_else(|| Stop(format!("no variant {index}")))?;
    out.push_str(&v.name);
    let shape = v.type_name.strip_prefix("variant").unwrap_or("");
    if let Some(inner) = shape.strip_prefix('(').and_then(|s| s.strip_suffix(')')) {
        out.push('(');
        for (i, t) in split_top(inner).iter().enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            value(out, &parse_type(t), input, 1)?;
        }
        out.push(')');
    } else if let Some(inner) = shape.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
        out.push_str(" {");
        for (i, field) in split_top(inner).iter().enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            let (name, t) = field.split_once(':').unwrap_or(("?", field));
            let _ = write!(out, "{name}: ");
            value(out, &parse_type(t), input, 1)?;
        }
        out.push('}');
    }
    Ok(())
}

/// A type as written in the source, as far as postcard cares.
#[derive(Debug, Clone, PartialEq)]
enum Ty {
    U8,
    I8,
    Unsigned,
    Signed,
    F32,
    F64,
    Bool,
    Char,
    Str,
    Unit,
    Seq(Box<Ty>),
    Map(Box<Ty>, Box<Ty>),
    Option(Box<Ty>),
    Array(Box<Ty>, usize),
    Tuple(Vec<Ty>),
    Unknown(String),
}

/// Splits `a,b<c,d>,(e,f)` at its top-level commas.
fn split_top(s: &str) -> Vec<&str> {
    let (mut parts, mut depth, mut start) = (Vec::new(), 0i32, 0);
    for (i, c) in s.char_indices() {
        match c {
            '<' | '(' | '[' | '{' => depth += 1,
            '>' | ')' | ']' | '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if start < s.len() {
        parts.push(&s[start..]);
    }
    parts
}

fn parse_type(t: &str) -> Ty {
    let t = t.trim();
    // References: `&T`, and `&'aT` (the type text has no whitespace, so the lifetime runs
    // into the type: take the longest tail that is a type we know).
    let t = match t.strip_prefix('&') {
        Some(rest) => match rest.strip_prefix('\'') {
            Some(l) => {
                return (1..l.len())
                    .filter(|&i| l.is_char_boundary(i))
                    .map(|i| parse_type(&l[i..]))
                    .find(|ty| !matches!(ty, Ty::Unknown(_)))
                    .unwrap_or_else(|| Ty::Unknown(t.into()));
            }
            None => rest,
        },
        None => t,
    };
    if let Some(inner) = t.strip_prefix('(').and_then(|s| s.strip_suffix(')')) {
        let parts = split_top(inner);
        return if parts.is_empty() {
            Ty::Unit
        } else {
            Ty::Tuple(parts.into_iter().map(parse_type).collect())
        };
    }
    if let Some(inner) = t.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
        let parts: Vec<&str> = inner.rsplitn(2, ';').collect();
        return match parts.as_slice() {
            [n, elem] => match n.parse() {
                Ok(n) => Ty::Array(Box::new(parse_type(elem)), n),
                Err(_) => Ty::Unknown(t.into()),
            },
            _ => Ty::Seq(Box::new(parse_type(inner))), // a slice `[T]`
        };
    }
    let (path, args) = match t.find('<') {
        Some(i) if t.ends_with('>') => (&t[..i], split_top(&t[i + 1..t.len() - 1])),
        _ => (t, Vec::new()),
    };
    let name = path.rsplit("::").next().unwrap_or(path);
    let arg = |i: usize| Box::new(args.get(i).map_or(Ty::Unknown(t.into()), |a| parse_type(a)));
    match (name, args.len()) {
        ("u8", 0) => Ty::U8,
        ("i8", 0) => Ty::I8,
        ("u16" | "u32" | "u64" | "u128" | "usize", 0) => Ty::Unsigned,
        ("i16" | "i32" | "i64" | "i128" | "isize", 0) => Ty::Signed,
        ("f32", 0) => Ty::F32,
        ("f64", 0) => Ty::F64,
        ("bool", 0) => Ty::Bool,
        ("char", 0) => Ty::Char,
        ("str" | "String", 0) => Ty::Str,
        ("Vec" | "VecDeque" | "HashSet" | "BTreeSet" | "LinkedList" | "BinaryHeap", 1) => {
            Ty::Seq(arg(0))
        }
        ("HashMap" | "BTreeMap", 2) => Ty::Map(arg(0), arg(1)),
        ("Option", 1) => Ty::Option(arg(0)),
        ("Box" | "Rc" | "Arc" | "Cow", 1) => *arg(0),
        ("Cow", 2) => *arg(1),
        _ => Ty::Unknown(t.into()),
    }
}

fn value(out: &mut String, ty: &Ty, input: &mut Input, depth: usize) -> R<()> {
    if depth > MAX_DEPTH {
        return Err(Stop("nested too deeply".into()));
    }
    let _ = match ty {
        Ty::U8 => write!(out, "{}", input.byte()?),
        Ty::I8 => write!(out, "{}", input.byte()? as i8),
        Ty::Unsigned => write!(out, "{}", input.varint()?),
        Ty::Signed => {
            let z = input.varint()?;
            let v = (z >> 1) as i128 ^ -((z & 1) as i128);
            write!(out, "{v}")
        }
        Ty::F32 => write!(
            out,
            "{}",
            f32::from_le_bytes(input.take(4)?.try_into().expect("4"))
        ),
        Ty::F64 => write!(
            out,
            "{}",
            f64::from_le_bytes(input.take(8)?.try_into().expect("8"))
        ),
        Ty::Bool => match input.byte()? {
            0 => write!(out, "false"),
            1 => write!(out, "true"),
            b => return Err(Stop(format!("{b} is not a bool"))),
        },
        Ty::Char | Ty::Str => {
            let n = input.len()?;
            let s = std::str::from_utf8(input.take(n)?)
                .map_err(|_| Stop("a string that is not UTF-8".into()))?;
            write!(out, "{s:?}")
        }
        Ty::Unit => write!(out, "()"),
        Ty::Seq(elem) => {
            let n = input.len()?;
            out.push('[');
            for i in 0..n {
                if i > 0 {
                    out.push_str(", ");
                }
                value(out, elem, input, depth + 1)?;
            }
            write!(out, "]")
        }
        Ty::Map(k, v) => {
            let n = input.len()?;
            out.push('{');
            for i in 0..n {
                if i > 0 {
                    out.push_str(", ");
                }
                value(out, k, input, depth + 1)?;
                out.push_str(": ");
                value(out, v, input, depth + 1)?;
            }
            write!(out, "}}")
        }
        Ty::Option(inner) => match input.byte()? {
            0 => write!(out, "None"),
            1 => {
                out.push_str("Some(");
                value(out, inner, input, depth + 1)?;
                write!(out, ")")
            }
            b => return Err(Stop(format!("{b} is not an Option tag"))),
        },
        Ty::Array(elem, n) => {
            out.push('[');
            for i in 0..*n {
                if i > 0 {
                    out.push_str(", ");
                }
                value(out, elem, input, depth + 1)?;
            }
            write!(out, "]")
        }
        Ty::Tuple(items) => {
            out.push('(');
            for (i, t) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                value(out, t, input, depth + 1)?;
            }
            write!(out, ")")
        }
        Ty::Unknown(t) => {
            let name = t.rsplit("::").next().unwrap_or(t);
            match input.known.get(name).copied() {
                Some(s) => return struct_value(out, &s.fields, input, depth + 1),
                None => return Err(Stop(format!("type `{t}` is not described"))),
            }
        }
    };
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_types() {
        assert_eq!(parse_type("Vec<u8>"), Ty::Seq(Box::new(Ty::U8)));
        assert_eq!(
            parse_type("std::collections::BTreeMap<String,Option<i32>>"),
            Ty::Map(
                Box::new(Ty::Str),
                Box::new(Ty::Option(Box::new(Ty::Signed)))
            )
        );
        assert_eq!(parse_type("[f32;3]"), Ty::Array(Box::new(Ty::F32), 3));
        assert_eq!(
            parse_type("(u8,&'staticstr)"),
            Ty::Tuple(vec![Ty::U8, Ty::Str])
        );
        assert_eq!(parse_type("Inner"), Ty::Unknown("Inner".into()));
    }

    #[test]
    fn garbage_is_hex_not_a_panic() {
        let schema = SchemaDesc {
            name: "M".into(),
            encoding: Some(shmbus::Encoding::Postcard),
            size: 0,
            align: 1,
            fields: vec![FieldDesc {
                name: "v".into(),
                type_name: "Vec<Vec<String>>".into(),
                offset: 0,
                size: 0,
                kind: KindDesc::Opaque,
            }],
        };
        for bytes in [&[0xff; 40][..], &[5, 1, 200], &[]] {
            let text = decode(&schema, bytes);
            assert!(text.contains("undecoded"), "{text}");
        }
    }
}
