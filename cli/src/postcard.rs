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
//!
//! [`encode`] is the mirror for `shmbus send`: JSON to the bytes postcard would produce for
//! the Rust value, refusing (with the field's path) whatever the schema cannot encode.

use std::collections::HashMap;
use std::fmt::Write as _;

use serde_json::Value;
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
    let r = message_value(&mut out, &schema.fields, &mut input, 0);
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

/// Whether a message's fields are an enum's variants: an enum records one entry per variant,
/// each typed `variant…`.
fn is_enum(fields: &[FieldDesc]) -> bool {
    !fields.is_empty()
        && fields
            .iter()
            .all(|f| f.type_name.starts_with("variant") && f.kind == KindDesc::Opaque)
}

/// A message (the top-level one or a nested one): a struct or an enum.
fn message_value(out: &mut String, fields: &[FieldDesc], input: &mut Input, depth: usize) -> R<()> {
    if is_enum(fields) {
        enum_value(out, fields, input, depth)
    } else {
        struct_value(out, fields, input, depth)
    }
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
        (KindDesc::Struct(s), Ty::Unknown(_)) => message_value(out, &s.fields, input, depth),
        _ => value(out, &ty, input, depth),
    }
}

fn enum_value(out: &mut String, variants: &[FieldDesc], input: &mut Input, depth: usize) -> R<()> {
    if depth > MAX_DEPTH {
        return Err(Stop("nested too deeply".into()));
    }
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
            value(out, &parse_type(t), input, depth + 1)?;
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
            value(out, &parse_type(t), input, depth + 1)?;
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
    /// A varint of at most this many bits.
    Unsigned(u32),
    /// A zig-zag varint of at most this many bits.
    Signed(u32),
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
        ("u16", 0) => Ty::Unsigned(16),
        ("u32", 0) => Ty::Unsigned(32),
        // Postcard sends `usize` as a `u64`.
        ("u64" | "usize", 0) => Ty::Unsigned(64),
        ("u128", 0) => Ty::Unsigned(128),
        ("i16", 0) => Ty::Signed(16),
        ("i32", 0) => Ty::Signed(32),
        ("i64" | "isize", 0) => Ty::Signed(64),
        ("i128", 0) => Ty::Signed(128),
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
        Ty::Unsigned(_) => write!(out, "{}", input.varint()?),
        Ty::Signed(_) => {
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
                Some(s) => return message_value(out, &s.fields, input, depth + 1),
                None => return Err(Stop(format!("type `{t}` is not described"))),
            }
        }
    };
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Encoding: JSON -> postcard bytes, the mirror of the decoder above.

/// Encodes a JSON value as the serialized (postcard) message the schema describes: the bytes
/// `postcard::to_allocvec` gives for the Rust value that `serde_json` would read from the
/// same JSON. Structs are objects (a missing `Option` field is `None`, every other field is
/// required, unknown fields are errors); tuple structs are arrays (a newtype its inner
/// value); enums are `"Variant"` or `{"Variant": payload}` (a value, an array for a tuple
/// variant, an object for a struct variant); `Option` is `null` or the value; maps are
/// objects (keys parsed as the key type) or arrays of `[key, value]` pairs; 128-bit integers
/// may be given as strings. A value that does not fit its type, or a type the schema does not
/// describe, is an error naming the field: nothing is sent that the receiver cannot decode.
pub fn encode(schema: &SchemaDesc, json: &Value) -> Result<Vec<u8>, String> {
    let mut known = HashMap::new();
    collect(&schema.fields, &mut known, 0);
    let mut enc = Encoder {
        out: Vec::new(),
        known,
    };
    enc.message(&schema.fields, json, &schema.name, 0)?;
    Ok(enc.out)
}

struct Encoder<'a> {
    out: Vec<u8>,
    /// Nested message schemas by type name, as for decoding.
    known: HashMap<&'a str, &'a SchemaDesc>,
}

/// `found` as short text for an error message.
fn shown(v: &Value) -> String {
    let mut s = v.to_string();
    if s.len() > 60 {
        let mut end = 57;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push_str("...");
    }
    s
}

fn expected(path: &str, what: &str, v: &Value) -> String {
    format!("{path}: expected {what}, found {}", shown(v))
}

/// The fields of a tuple struct are named `0`, `1`, ...
fn is_tuple(fields: &[FieldDesc]) -> bool {
    !fields.is_empty()
        && fields
            .iter()
            .enumerate()
            .all(|(i, f)| f.name == i.to_string())
}

impl<'a> Encoder<'a> {
    fn varint(&mut self, mut v: u128) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                self.out.push(b);
                return;
            }
            self.out.push(b | 0x80);
        }
    }

    fn len(&mut self, n: usize) {
        self.varint(n as u128);
    }

    /// A message (the top-level one or a nested one): a struct or an enum.
    fn message(
        &mut self,
        fields: &'a [FieldDesc],
        v: &Value,
        path: &str,
        depth: usize,
    ) -> Result<(), String> {
        if depth > MAX_DEPTH {
            return Err(format!("{path}: nested too deeply"));
        }
        if is_enum(fields) {
            self.variant(fields, v, path, depth)
        } else {
            self.structure(fields, v, path, depth)
        }
    }

    fn structure(
        &mut self,
        fields: &'a [FieldDesc],
        v: &Value,
        path: &str,
        depth: usize,
    ) -> Result<(), String> {
        if fields.is_empty() && (v.is_null() || v.as_object().is_some_and(|o| o.is_empty())) {
            return Ok(()); // a unit struct
        }
        // serde_json's forms: a newtype struct is its inner value, a tuple struct an array
        // (or an object with fields `0`, `1`, ...).
        if let ([f], true) = (fields, is_tuple(fields)) {
            return self.field(f, v, &format!("{path}.0"), depth + 1);
        }
        if is_tuple(fields) && !v.is_object() {
            let items = v.as_array().ok_or_else(|| {
                expected(path, &format!("an array of {} values", fields.len()), v)
            })?;
            if items.len() != fields.len() {
                return Err(format!(
                    "{path}: expected {} values, found {}",
                    fields.len(),
                    items.len()
                ));
            }
            for (f, item) in fields.iter().zip(items) {
                self.field(f, item, &format!("{path}.{}", f.name), depth + 1)?;
            }
            return Ok(());
        }
        let obj = v
            .as_object()
            .ok_or_else(|| expected(path, "a JSON object", v))?;
        self.named_fields(
            fields
                .iter()
                .map(|f| (f.name.as_str(), Some(f), f.type_name.as_str())),
            obj,
            path,
            depth,
        )
    }

    /// The named fields of a struct (with their recorded descriptions) or of a struct
    /// variant (type text only), in declaration order, from a JSON object.
    fn named_fields<'f>(
        &mut self,
        fields: impl Iterator<Item = (&'f str, Option<&'a FieldDesc>, &'f str)> + Clone,
        obj: &serde_json::Map<String, Value>,
        path: &str,
        depth: usize,
    ) -> Result<(), String> {
        for key in obj.keys() {
            if !fields.clone().any(|(name, _, _)| name == key) {
                let names: Vec<&str> = fields.clone().map(|(name, _, _)| name).collect();
                return Err(format!(
                    "{path} has no field `{key}` (its fields: {})",
                    names.join(", ")
                ));
            }
        }
        for (name, desc, type_text) in fields {
            let fpath = format!("{path}.{name}");
            let ty = parse_type(type_text);
            match obj.get(name) {
                Some(fv) => match desc {
                    Some(f) => self.field(f, fv, &fpath, depth + 1)?,
                    None => self.value(&ty, fv, &fpath, depth + 1)?,
                },
                // As serde does: a missing `Option` field is `None`.
                None if matches!(ty, Ty::Option(_)) => self.out.push(0),
                None => return Err(format!("{fpath} is missing (a `{type_text}`)")),
            }
        }
        Ok(())
    }

    fn field(
        &mut self,
        f: &'a FieldDesc,
        v: &Value,
        path: &str,
        depth: usize,
    ) -> Result<(), String> {
        let ty = parse_type(&f.type_name);
        match (&f.kind, &ty) {
            (KindDesc::Struct(s), Ty::Unknown(_)) => self.message(&s.fields, v, path, depth),
            _ => self.value(&ty, v, path, depth),
        }
    }

    fn variant(
        &mut self,
        variants: &'a [FieldDesc],
        v: &Value,
        path: &str,
        depth: usize,
    ) -> Result<(), String> {
        let names = || {
            variants
                .iter()
                .map(|v| v.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let (name, payload) = match v {
            Value::String(name) => (name.as_str(), None),
            Value::Object(o) if o.len() == 1 => {
                let (k, p) = o.iter().next().expect("one entry");
                (k.as_str(), Some(p))
            }
            _ => {
                return Err(expected(
                    path,
                    &format!(
                        "\"Variant\" or {{\"Variant\": ...}} (variants: {})",
                        names()
                    ),
                    v,
                ))
            }
        };
        let (index, variant) = variants
            .iter()
            .enumerate()
            .find(|(_, v)| v.name == name)
            .ok_or_else(|| format!("{path} has no variant `{name}` (variants: {})", names()))?;
        let vpath = format!("{path}::{name}");
        self.varint(index as u128);
        let shape = variant.type_name.strip_prefix("variant").unwrap_or("");
        if let Some(inner) = shape.strip_prefix('(').and_then(|s| s.strip_suffix(')')) {
            let types = split_top(inner);
            let payload = payload
                .ok_or_else(|| format!("{vpath} carries ({inner}): give {{\"{name}\": ...}}"))?;
            if let [t] = types.as_slice() {
                return self.value(&parse_type(t), payload, &format!("{vpath}.0"), depth + 1);
            }
            let items = payload.as_array().ok_or_else(|| {
                expected(
                    &vpath,
                    &format!("an array of {} values", types.len()),
                    payload,
                )
            })?;
            if items.len() != types.len() {
                return Err(format!(
                    "{vpath}: expected {} values ({inner}), found {}",
                    types.len(),
                    items.len()
                ));
            }
            for (i, (t, item)) in types.iter().zip(items).enumerate() {
                self.value(&parse_type(t), item, &format!("{vpath}.{i}"), depth + 1)?;
            }
            Ok(())
        } else if let Some(inner) = shape.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            let payload = payload.ok_or_else(|| {
                format!("{vpath} has fields {{{inner}}}: give {{\"{name}\": {{...}}}}")
            })?;
            let obj = payload
                .as_object()
                .ok_or_else(|| expected(&vpath, "a JSON object", payload))?;
            let fields: Vec<(&str, &str)> = split_top(inner)
                .into_iter()
                .map(|f| f.split_once(':').unwrap_or(("?", f)))
                .collect();
            self.named_fields(
                fields.iter().map(|&(n, t)| (n, None, t)),
                obj,
                &vpath,
                depth,
            )
        } else if shape.is_empty() {
            match payload {
                None | Some(Value::Null) => Ok(()),
                Some(p) => Err(expected(&vpath, "no value (a unit variant)", p)),
            }
        } else {
            Err(format!(
                "{vpath}: the recorded shape `{shape}` is not understood"
            ))
        }
    }

    fn value(&mut self, ty: &Ty, v: &Value, path: &str, depth: usize) -> Result<(), String> {
        if depth > MAX_DEPTH {
            return Err(format!("{path}: nested too deeply"));
        }
        match ty {
            Ty::U8 => {
                let n = unsigned(v, 8).ok_or_else(|| expected(path, "a u8 (0 to 255)", v))?;
                self.out.push(n as u8);
            }
            Ty::I8 => {
                let n = signed(v, 8).ok_or_else(|| expected(path, "an i8 (-128 to 127)", v))?;
                self.out.push(n as i8 as u8);
            }
            Ty::Unsigned(bits) => {
                let n = unsigned(v, *bits)
                    .ok_or_else(|| expected(path, &format!("a u{bits} (an integer from 0)"), v))?;
                self.varint(n);
            }
            Ty::Signed(bits) => {
                let n = signed(v, *bits).ok_or_else(|| {
                    expected(path, &format!("an i{bits} (an integer in range)"), v)
                })?;
                // Zig-zag: 0, -1, 1, -2, ... -> 0, 1, 2, 3, ...
                self.varint(((n as u128) << 1) ^ ((n >> 127) as u128));
            }
            Ty::F32 => {
                let x = v.as_f64().ok_or_else(|| expected(path, "a number", v))?;
                let f = x as f32;
                if f.is_infinite() {
                    return Err(expected(path, "a number in the range of f32", v));
                }
                self.out.extend_from_slice(&f.to_le_bytes());
            }
            Ty::F64 => {
                let x = v.as_f64().ok_or_else(|| expected(path, "a number", v))?;
                self.out.extend_from_slice(&x.to_le_bytes());
            }
            Ty::Bool => {
                let b = v
                    .as_bool()
                    .ok_or_else(|| expected(path, "true or false", v))?;
                self.out.push(u8::from(b));
            }
            Ty::Char => {
                let s = v
                    .as_str()
                    .filter(|s| s.chars().count() == 1)
                    .ok_or_else(|| expected(path, "a string of one character (a char)", v))?;
                self.string(s);
            }
            Ty::Str => {
                let s = v.as_str().ok_or_else(|| expected(path, "a string", v))?;
                self.string(s);
            }
            Ty::Unit => {
                if !v.is_null() {
                    return Err(expected(path, "null (the unit value)", v));
                }
            }
            Ty::Seq(elem) => {
                let items = v.as_array().ok_or_else(|| expected(path, "an array", v))?;
                self.len(items.len());
                for (i, item) in items.iter().enumerate() {
                    self.value(elem, item, &format!("{path}[{i}]"), depth + 1)?;
                }
            }
            Ty::Map(k, val) => match v {
                Value::Object(obj) => {
                    self.len(obj.len());
                    for (key, item) in obj {
                        let kpath = format!("{path}[{key:?}]");
                        let key_value = match **k {
                            Ty::Str | Ty::Char => Value::String(key.clone()),
                            // `{"7": ...}` for integer keys, as serde_json reads them;
                            // `{"Buy": ...}` for enum keys.
                            _ => serde_json::from_str(key)
                                .unwrap_or_else(|_| Value::String(key.clone())),
                        };
                        self.value(k, &key_value, &kpath, depth + 1)?;
                        self.value(val, item, &kpath, depth + 1)?;
                    }
                }
                Value::Array(pairs) => {
                    self.len(pairs.len());
                    for (i, pair) in pairs.iter().enumerate() {
                        let ppath = format!("{path}[{i}]");
                        match pair.as_array().map(Vec::as_slice) {
                            Some([key, item]) => {
                                self.value(k, key, &ppath, depth + 1)?;
                                self.value(val, item, &ppath, depth + 1)?;
                            }
                            _ => return Err(expected(&ppath, "a [key, value] pair", pair)),
                        }
                    }
                }
                _ => {
                    return Err(expected(
                        path,
                        "an object or an array of [key, value] pairs",
                        v,
                    ))
                }
            },
            Ty::Option(inner) => {
                if v.is_null() {
                    self.out.push(0);
                } else {
                    self.out.push(1);
                    self.value(inner, v, path, depth + 1)?;
                }
            }
            Ty::Array(elem, n) => {
                let items = v
                    .as_array()
                    .ok_or_else(|| expected(path, &format!("an array of {n} elements"), v))?;
                if items.len() != *n {
                    return Err(format!(
                        "{path}: expected {n} elements, found {}",
                        items.len()
                    ));
                }
                for (i, item) in items.iter().enumerate() {
                    self.value(elem, item, &format!("{path}[{i}]"), depth + 1)?;
                }
            }
            Ty::Tuple(types) => {
                let items = v.as_array().ok_or_else(|| {
                    expected(
                        path,
                        &format!("an array of {} values (a tuple)", types.len()),
                        v,
                    )
                })?;
                if items.len() != types.len() {
                    return Err(format!(
                        "{path}: expected a tuple of {} values, found {}",
                        types.len(),
                        items.len()
                    ));
                }
                for (i, (t, item)) in types.iter().zip(items).enumerate() {
                    self.value(t, item, &format!("{path}.{i}"), depth + 1)?;
                }
            }
            Ty::Unknown(t) => {
                let name = t.rsplit("::").next().unwrap_or(t);
                let schema = self.known.get(name).copied().ok_or_else(|| {
                    format!(
                        "{path}: the recorded schema does not describe type `{t}` (it must \
                         derive shmbus::Message to be encoded from JSON)"
                    )
                })?;
                self.message(&schema.fields, v, path, depth + 1)?;
            }
        }
        Ok(())
    }

    fn string(&mut self, s: &str) {
        self.len(s.len());
        self.out.extend_from_slice(s.as_bytes());
    }
}

/// A JSON integer (or a string of digits, for 128-bit values) that fits `bits` unsigned bits.
fn unsigned(v: &Value, bits: u32) -> Option<u128> {
    let n = v.as_u64().map(u128::from).or_else(|| {
        v.as_str()
            .filter(|_| bits == 128)
            .and_then(|s| s.parse().ok())
    })?;
    (bits >= 128 || n >> bits == 0).then_some(n)
}

/// A JSON integer (or a string of digits, for 128-bit values) that fits `bits` signed bits.
fn signed(v: &Value, bits: u32) -> Option<i128> {
    let n = v
        .as_i64()
        .map(i128::from)
        .or_else(|| v.as_u64().map(i128::from))
        .or_else(|| {
            v.as_str()
                .filter(|_| bits == 128)
                .and_then(|s| s.parse().ok())
        })?;
    let (min, max) = if bits >= 128 {
        (i128::MIN, i128::MAX)
    } else {
        (-(1i128 << (bits - 1)), (1i128 << (bits - 1)) - 1)
    };
    (min..=max).contains(&n).then_some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::collections::BTreeMap;

    use serde::{Deserialize, Serialize};
    use serde_json::json;
    use shmbus::Message;

    #[derive(Message, Serialize, Deserialize, Debug, PartialEq)]
    struct Leg {
        venue: String,
        qty: [u32; 2],
        ratio: f32,
    }

    #[derive(Message, Serialize, Deserialize, Debug, PartialEq)]
    enum Side {
        Buy,
        Sell(i8),
    }

    #[derive(Message, Serialize, Deserialize, Debug, PartialEq)]
    struct Order {
        id: u64,
        delta: i64,
        small: i16,
        big: u128,
        byte: u8,
        price: f64,
        tags: Vec<String>,
        limit: Option<f64>,
        none: Option<Vec<u8>>,
        first: Leg,
        legs: Vec<Leg>,
        side: Side,
        sides: BTreeMap<u32, Option<Side>>,
        pair: (bool, char),
        unit: (),
        size: usize,
    }

    #[derive(Message, Serialize, Deserialize, Debug, PartialEq)]
    enum Event {
        Start,
        Fill(u64, f32),
        Note(String),
        Cancel { id: i32, reason: Option<String> },
        Spread(Vec<[i16; 2]>),
        Routed(Vec<Leg>),
    }

    #[derive(Message, Serialize, Deserialize, Debug, PartialEq)]
    struct Pair(i32, String);

    #[derive(Message, Serialize, Deserialize, Debug, PartialEq)]
    struct Wrapped(Vec<i64>);

    #[derive(Message, Serialize, Deserialize, Debug, PartialEq)]
    struct LegById(BTreeMap<String, Leg>, Unit);

    #[derive(Message, Serialize, Deserialize, Debug, PartialEq)]
    struct Unit;

    #[derive(Message, Serialize, Deserialize, Debug, PartialEq)]
    struct Boxed(Box<Leg>);

    fn schema_of<T: Message>() -> SchemaDesc {
        let schema = T::INFO.schema.expect("recorded").encode().expect("fits");
        SchemaDesc::decode(&schema).unwrap()
    }

    /// Encodes `json` through `T`'s recorded schema, checks the bytes are postcard's for the
    /// value serde_json reads from the same JSON (and for `expected`), that postcard decodes
    /// them back to it, and that the tool's own decoder reads them fully; returns that text.
    fn round_trip<T>(json: serde_json::Value, expected: &T) -> String
    where
        T: Message + Serialize + for<'de> Deserialize<'de> + PartialEq + std::fmt::Debug,
    {
        let schema = schema_of::<T>();
        let bytes = encode(&schema, &json).unwrap_or_else(|e| panic!("{json}: {e}"));
        let from_json: T = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(&from_json, expected);
        assert_eq!(bytes, postcard::to_allocvec(expected).unwrap(), "{json}");
        assert_eq!(&postcard::from_bytes::<T>(&bytes).unwrap(), expected);
        let text = decode(&schema, &bytes);
        assert!(
            !text.contains("undecoded") && !text.contains("trailing"),
            "{text}"
        );
        text
    }

    fn leg(venue: &str, ratio: f32) -> Leg {
        Leg {
            venue: venue.into(),
            qty: [1, 300],
            ratio,
        }
    }

    #[test]
    fn encodes_like_postcard() {
        let order = Order {
            id: 300,
            delta: -9_000_000_000,
            small: i16::MIN,
            big: u128::MAX,
            byte: 255,
            price: -2.75e-3,
            tags: vec!["desk".into(), "".into(), "ünï".into()],
            limit: Some(2.5),
            none: None,
            first: leg("IEX", 0.5),
            legs: vec![leg("XNAS", -1.25), leg("BATS", 3e10)],
            side: Side::Sell(-128),
            sides: [(7, Some(Side::Buy)), (70_000, None)].into(),
            pair: (true, 'é'),
            unit: (),
            size: 1 << 40,
        };
        let json = json!({
            "id": 300, "delta": -9_000_000_000i64, "small": -32768,
            "big": u128::MAX.to_string(), "byte": 255, "price": -2.75e-3,
            "tags": ["desk", "", "ünï"], "limit": 2.5, "none": null,
            "first": {"venue": "IEX", "qty": [1, 300], "ratio": 0.5},
            "legs": [{"venue": "XNAS", "qty": [1, 300], "ratio": -1.25},
                     {"venue": "BATS", "qty": [1, 300], "ratio": 3e10}],
            "side": {"Sell": -128}, "sides": {"7": "Buy", "70000": null},
            "pair": [true, "é"], "unit": null, "size": 1u64 << 40,
        });
        // serde_json cannot read a u128 from a string: compare against the value itself.
        let schema = schema_of::<Order>();
        let bytes = encode(&schema, &json).unwrap();
        assert_eq!(bytes, postcard::to_allocvec(&order).unwrap());
        assert_eq!(postcard::from_bytes::<Order>(&bytes).unwrap(), order);
        let text = decode(&schema, &bytes);
        assert!(text.contains("side: Sell(-128)"), "{text}");
        assert!(
            text.contains(r#"sides: {7: Some(Buy), 70000: None}"#),
            "{text}"
        );
        // A missing `Option` field is `None`, as serde reads it.
        let mut short = json.clone();
        short.as_object_mut().unwrap().remove("none");
        assert_eq!(encode(&schema, &short).unwrap(), bytes);

        round_trip(json!("Start"), &Event::Start);
        round_trip(
            json!({"Fill": [u64::MAX, -0.5]}),
            &Event::Fill(u64::MAX, -0.5),
        );
        round_trip(json!({"Note": "x"}), &Event::Note("x".into()));
        round_trip(
            json!({"Cancel": {"id": -1, "reason": "late"}}),
            &Event::Cancel {
                id: -1,
                reason: Some("late".into()),
            },
        );
        round_trip(
            json!({"Cancel": {"id": i32::MIN, "reason": null}}),
            &Event::Cancel {
                id: i32::MIN,
                reason: None,
            },
        );
        let text = round_trip(
            json!({"Spread": [[-1, 2], [3, -4]]}),
            &Event::Spread(vec![[-1, 2], [3, -4]]),
        );
        assert_eq!(text, "Spread([[-1, 2], [3, -4]])");
        round_trip(json!([-5, "p"]), &Pair(-5, "p".into()));
        round_trip(json!([1, -1, i64::MIN]), &Wrapped(vec![1, -1, i64::MIN]));
        round_trip(
            json!({"venue": "B", "qty": [1, 300], "ratio": 2}),
            &Boxed(Box::new(leg("B", 2.0))),
        );
        round_trip(
            json!([{"b": {"venue": "B", "qty": [1, 300], "ratio": 2}}, null]),
            &LegById([("b".to_string(), leg("B", 2.0))].into(), Unit),
        );
        round_trip(
            json!({"venue": "", "qty": [1, 300], "ratio": -0.0}),
            &leg("", -0.0),
        );
        let mut l = leg("", 1.0);
        l.qty = [0, u32::MAX];
        round_trip(json!({"venue": "", "qty": [0, u32::MAX], "ratio": 1}), &l);
    }

    #[test]
    fn refuses_what_it_cannot_encode() {
        let err = |schema: &SchemaDesc, json: serde_json::Value| encode(schema, &json).unwrap_err();
        let leg = schema_of::<Leg>();
        let e = err(&leg, json!({"venue": "X", "qty": [1, 2]}));
        assert!(e.contains("Leg.ratio is missing (a `f32`)"), "{e}");
        let e = err(
            &leg,
            json!({"venue": "X", "qty": [1, 2], "ratio": 1, "extra": 0}),
        );
        assert!(e.contains("Leg has no field `extra`"), "{e}");
        let e = err(&leg, json!({"venue": "X", "qty": [1, -2], "ratio": 1}));
        assert!(e.contains("Leg.qty[1]: expected a u32"), "{e}");
        let e = err(&leg, json!({"venue": "X", "qty": [1, 2, 3], "ratio": 1}));
        assert!(e.contains("Leg.qty: expected 2 elements, found 3"), "{e}");
        let e = err(&leg, json!({"venue": "X", "qty": [1, 2], "ratio": 1e300}));
        assert!(
            e.contains("Leg.ratio: expected a number in the range of f32"),
            "{e}"
        );
        let e = err(&leg, json!({"venue": 5, "qty": [1, 2], "ratio": 1}));
        assert!(e.contains("Leg.venue: expected a string, found 5"), "{e}");

        let event = schema_of::<Event>();
        let e = err(&event, json!("Stop"));
        assert!(
            e.contains(
                "Event has no variant `Stop` (variants: Start, Fill, Note, Cancel, Spread, Routed)"
            ),
            "{e}"
        );
        let e = err(&event, json!("Fill"));
        assert!(e.contains("Event::Fill carries (u64,f32)"), "{e}");
        let e = err(&event, json!({"Fill": [1]}));
        assert!(e.contains("Event::Fill: expected 2 values"), "{e}");
        let e = err(&event, json!({"Start": 1}));
        assert!(e.contains("Event::Start: expected no value"), "{e}");
        let e = err(&event, json!({"Cancel": {"reason": "x"}}));
        assert!(e.contains("Event::Cancel.id is missing (a `i32`)"), "{e}");
        // Variants record their fields' type text only, not nested message schemas.
        let e = err(
            &event,
            json!({"Routed": [{"venue": "A", "qty": [1, 2], "ratio": 1}]}),
        );
        assert!(
            e.contains("Event::Routed.0[0]: the recorded schema does not describe type `Leg`"),
            "{e}"
        );

        let order = schema_of::<Order>();
        let e = err(&order, json!({"id": 1, "small": 40000}));
        assert!(e.contains("Order.delta is missing"), "{e}");
        let e = err(&order, json!({"side": {"Sell": 200}}));
        assert!(e.contains("Order.id is missing"), "{e}");
        let mut full = json!({
            "id": 1, "delta": 0, "small": 0, "big": 0, "byte": 0, "price": 0, "tags": [],
            "limit": null, "first": {"venue": "", "qty": [0, 0], "ratio": 0}, "legs": [],
            "side": "Buy", "sides": {}, "pair": [false, "x"], "unit": null, "size": 0,
        });
        assert!(encode(&order, &full).is_ok());
        for (field, value, why) in [
            (
                "side",
                json!({"Sell": 200}),
                "Order.side::Sell.0: expected an i8",
            ),
            ("small", json!(40000), "Order.small: expected an i16"),
            ("byte", json!(256), "Order.byte: expected a u8"),
            ("id", json!(-1), "Order.id: expected a u64"),
            ("id", json!(1.5), "Order.id: expected a u64"),
            ("id", json!("1"), "Order.id: expected a u64"),
            ("big", json!("-1"), "Order.big: expected a u128"),
            (
                "pair",
                json!([false, "xy"]),
                "Order.pair.1: expected a string of one character",
            ),
            (
                "pair",
                json!([false]),
                "Order.pair: expected a tuple of 2 values, found 1",
            ),
            (
                "sides",
                json!({"x": null}),
                r#"Order.sides["x"]: expected a u32"#,
            ),
            (
                "sides",
                json!({"-1": null}),
                r#"Order.sides["-1"]: expected a u32"#,
            ),
            ("unit", json!(0), "Order.unit: expected null"),
            (
                "first",
                json!({"venue": "", "qty": [0, 0]}),
                "Order.first.ratio is missing",
            ),
        ] {
            let saved = full[field].clone();
            full[field] = value;
            let e = err(&order, full.clone());
            assert!(e.contains(why), "{field}: {e}");
            full[field] = saved;
        }
        // Maps also as [key, value] pairs.
        full["sides"] = json!([[7, "Buy"], [8, {"Sell": 1}]]);
        let bytes = encode(&order, &full).unwrap();
        let text = decode(&order, &bytes);
        assert!(
            text.contains("sides: {7: Some(Buy), 8: Some(Sell(1))}"),
            "{text}"
        );

        // A field whose type does not derive `Message` is not described: refused, not guessed.
        #[derive(Serialize, Deserialize)]
        struct Note(u8);
        #[derive(Message, Serialize, Deserialize)]
        struct WithNote {
            a: u8,
            note: Note,
        }
        let e = err(&schema_of::<WithNote>(), json!({"a": 1, "note": 2}));
        assert!(
            e.contains("WithNote.note: the recorded schema does not describe type `Note`"),
            "{e}"
        );
    }

    #[test]
    fn parses_types() {
        assert_eq!(parse_type("Vec<u8>"), Ty::Seq(Box::new(Ty::U8)));
        assert_eq!(
            parse_type("std::collections::BTreeMap<String,Option<i32>>"),
            Ty::Map(
                Box::new(Ty::Str),
                Box::new(Ty::Option(Box::new(Ty::Signed(32))))
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
