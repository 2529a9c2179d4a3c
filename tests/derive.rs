//! Tests of `#[derive(shmbus::Message)]`: the encoding it picks, `INFO`, the fingerprint,
//! and the encode/decode round trip of both encodings.

use serde::{Deserialize, Serialize};
use shmbus::{DecodeError, EncodeError, Encoding, Message, Pod, ZeroCopy};

#[derive(shmbus::Message, Clone, Copy, Debug, PartialEq)]
#[repr(C)]
struct Tick {
    seq: u64,
    price: f64,
    venue: [u8; 8],
}

fn round_trip<T: Message + PartialEq + std::fmt::Debug>(value: &T, buf: &mut [u8]) -> usize {
    let n = value.__encode(buf).expect("encode");
    let back = T::__decode(&buf[..n]).expect("decode");
    assert_eq!(&back, value);
    n
}

fn assert_zero_copy<T: ZeroCopy>() {}

#[test]
fn zero_copy_info() {
    let info = Tick::INFO;
    assert_eq!(info.name, "Tick");
    assert_eq!(info.encoding, Encoding::ZeroCopy);
    assert_eq!(info.size, 24);
    assert_eq!(info.align, 8);
    assert_eq!(info.fingerprint, <Tick as Pod>::SCHEMA_FINGERPRINT);
    assert_ne!(info.fingerprint, 0);
    assert_zero_copy::<Tick>();
}

#[test]
fn zero_copy_fingerprint_is_the_documented_hash() {
    use shmbus::fingerprint as fp;
    let mut h = fp::str(fp::SEED, "shmbus-zero-copy");
    h = fp::str(h, "Tick");
    h = fp::u64(h, 24);
    h = fp::u64(h, 8);
    for (name, offset, field) in [
        ("seq", 0, u64::SCHEMA_FINGERPRINT),
        ("price", 8, f64::SCHEMA_FINGERPRINT),
        ("venue", 16, <[u8; 8]>::SCHEMA_FINGERPRINT),
    ] {
        h = fp::str(h, name);
        h = fp::u64(h, offset);
        h = fp::u64(h, field);
    }
    assert_eq!(Tick::INFO.fingerprint, h);
}

#[test]
fn zero_copy_round_trip() {
    let tick = Tick {
        seq: 7,
        price: 101.25,
        venue: *b"XNAS\0\0\0\0",
    };
    let mut buf = [0xAAu8; 64];
    let n = round_trip(&tick, &mut buf);
    assert_eq!(n, 24);
    // The encoding is the value's own bytes.
    assert_eq!(&buf[..8], &7u64.to_ne_bytes());
    assert_eq!(&buf[8..16], &101.25f64.to_ne_bytes());
    assert_eq!(&buf[16..24], b"XNAS\0\0\0\0");
    // Nothing past the message was touched.
    assert!(buf[24..].iter().all(|&b| b == 0xAA));
}

#[test]
fn zero_copy_encode_into_short_buffer_is_too_large() {
    let tick = Tick {
        seq: 1,
        price: 0.0,
        venue: [0; 8],
    };
    let mut buf = [0u8; 23];
    assert_eq!(
        tick.__encode(&mut buf),
        Err(EncodeError::TooLarge { max: 23 })
    );
}

#[test]
fn zero_copy_decode_wrong_length() {
    let bytes = [0u8; 25];
    assert_eq!(
        Tick::__decode(&bytes),
        Err(DecodeError::Length {
            ty: "Tick",
            expected: 24,
            found: 25,
        })
    );
    assert!(matches!(
        Tick::__decode(&bytes[..23]),
        Err(DecodeError::Length { found: 23, .. })
    ));
}

#[derive(shmbus::Message, Clone, Copy, Debug, PartialEq)]
#[repr(C)]
struct Quote {
    bid: Tick,
    ask: Tick,
    flags: u32,
    _pad: [u8; 4],
}

#[test]
fn nested_zero_copy() {
    assert_eq!(Quote::INFO.encoding, Encoding::ZeroCopy);
    assert_eq!(Quote::INFO.size, 56);
    assert_eq!(Quote::INFO.align, 8);
    let q = Quote {
        bid: Tick {
            seq: 1,
            price: 99.5,
            venue: *b"BID_____",
        },
        ask: Tick {
            seq: 2,
            price: 100.5,
            venue: *b"ASK_____",
        },
        flags: 0xdead_beef,
        _pad: [0; 4],
    };
    let mut buf = [0u8; 56];
    assert_eq!(round_trip(&q, &mut buf), 56);
}

/// The nested type's fingerprint is part of the outer one: a change inside `Tick` changes it.
mod nested_changed {
    #[derive(shmbus::Message, Clone, Copy)]
    #[repr(C)]
    pub struct Tick {
        pub seq: u64,
        pub price: f64,
        pub venue: [i8; 8],
    }

    #[derive(shmbus::Message, Clone, Copy)]
    #[repr(C)]
    pub struct Quote {
        pub bid: Tick,
        pub ask: Tick,
        pub flags: u32,
        pub _pad: [u8; 4],
    }
}

#[test]
fn nested_fingerprint_follows_inner_change() {
    assert_eq!(nested_changed::Quote::INFO.size, Quote::INFO.size);
    assert_ne!(
        nested_changed::Quote::INFO.fingerprint,
        Quote::INFO.fingerprint
    );
}

#[derive(shmbus::Message, Clone, Copy, Debug, PartialEq)]
#[repr(C)]
struct Pair(u32, i32);

#[test]
fn tuple_struct() {
    assert_eq!(Pair::INFO.name, "Pair");
    assert_eq!(Pair::INFO.encoding, Encoding::ZeroCopy);
    assert_eq!(Pair::INFO.size, 8);
    assert_eq!(Pair::INFO.align, 4);
    let mut buf = [0u8; 8];
    assert_eq!(round_trip(&Pair(3, -4), &mut buf), 8);

    use shmbus::fingerprint as fp;
    let mut h = fp::str(fp::SEED, "shmbus-zero-copy");
    h = fp::str(h, "Pair");
    h = fp::u64(h, 8);
    h = fp::u64(h, 4);
    h = fp::u64(fp::u64(fp::str(h, "0"), 0), u32::SCHEMA_FINGERPRINT);
    h = fp::u64(fp::u64(fp::str(h, "1"), 4), i32::SCHEMA_FINGERPRINT);
    assert_eq!(Pair::INFO.fingerprint, h);
}

#[derive(shmbus::Message, Clone, Copy, Debug, PartialEq)]
#[repr(transparent)]
struct Seq(u64);

#[derive(shmbus::Message, Clone, Copy, Debug, PartialEq)]
#[repr(C, packed)]
struct Packed {
    a: u8,
    b: u32,
}

#[derive(shmbus::Message, Clone, Copy, Debug, PartialEq)]
#[repr(C, align(16))]
struct Aligned {
    a: [u64; 2],
}

#[test]
fn other_zero_copy_reprs() {
    assert_eq!(Seq::INFO.encoding, Encoding::ZeroCopy);
    assert_eq!(Seq::INFO.size, 8);
    let mut buf = [0u8; 16];
    assert_eq!(round_trip(&Seq(42), &mut buf), 8);

    assert_eq!(Packed::INFO.encoding, Encoding::ZeroCopy);
    assert_eq!((Packed::INFO.size, Packed::INFO.align), (5, 1));
    assert_eq!(
        round_trip(
            &Packed {
                a: 1,
                b: 0x0102_0304
            },
            &mut buf
        ),
        5
    );

    assert_eq!(Aligned::INFO.encoding, Encoding::ZeroCopy);
    assert_eq!((Aligned::INFO.size, Aligned::INFO.align), (16, 16));
    assert_eq!(round_trip(&Aligned { a: [5, 6] }, &mut buf), 16);
}

/// Two independent declarations of the same struct, and variations of it.
mod a {
    #[derive(shmbus::Message, Clone, Copy)]
    #[repr(C)]
    pub struct Tick {
        pub seq: u64,
        pub price: f64,
        pub venue: [u8; 8],
    }
}

mod b {
    #[derive(shmbus::Message, Clone, Copy)]
    #[repr(C)]
    pub struct Tick {
        pub seq: u64,
        pub price: f64,
        pub venue: [u8; 8],
    }
}

mod renamed {
    #[derive(shmbus::Message, Clone, Copy)]
    #[repr(C)]
    #[shmbus(name = "x.Tick")]
    pub struct Tick {
        pub seq: u64,
        pub price: f64,
        pub venue: [u8; 8],
    }
}

mod field_renamed {
    #[derive(shmbus::Message, Clone, Copy)]
    #[repr(C)]
    pub struct Tick {
        pub sequence: u64,
        pub price: f64,
        pub venue: [u8; 8],
    }
}

mod field_retyped {
    // Same size and offsets, different field type.
    #[derive(shmbus::Message, Clone, Copy)]
    #[repr(C)]
    pub struct Tick {
        pub seq: i64,
        pub price: f64,
        pub venue: [u8; 8],
    }
}

mod field_resized {
    #[derive(shmbus::Message, Clone, Copy)]
    #[repr(C)]
    pub struct Tick {
        pub seq: u64,
        pub price: f64,
        pub venue: [u8; 16],
    }
}

mod fields_reordered {
    #[derive(shmbus::Message, Clone, Copy)]
    #[repr(C)]
    pub struct Tick {
        pub price: f64,
        pub seq: u64,
        pub venue: [u8; 8],
    }
}

#[test]
fn same_declaration_in_two_modules_same_fingerprint() {
    assert_eq!(a::Tick::INFO, b::Tick::INFO);
    assert_eq!(a::Tick::INFO.fingerprint, b::Tick::INFO.fingerprint);
    // ... and the same as the one at the crate root: the module path is not hashed.
    assert_eq!(a::Tick::INFO.fingerprint, Tick::INFO.fingerprint);
}

#[test]
fn name_override() {
    assert_eq!(renamed::Tick::INFO.name, "x.Tick");
    assert_ne!(renamed::Tick::INFO.fingerprint, Tick::INFO.fingerprint);
    assert_eq!(renamed::Tick::INFO.size, Tick::INFO.size);
    let bytes = [0u8; 3];
    assert!(matches!(
        renamed::Tick::__decode(&bytes),
        Err(DecodeError::Length { ty: "x.Tick", .. })
    ));
}

#[test]
fn layout_changes_change_the_fingerprint() {
    let base = Tick::INFO.fingerprint;
    let changed = [
        ("field name", field_renamed::Tick::INFO.fingerprint),
        ("field type", field_retyped::Tick::INFO.fingerprint),
        ("field size", field_resized::Tick::INFO.fingerprint),
        ("field order", fields_reordered::Tick::INFO.fingerprint),
    ];
    for (what, fingerprint) in changed {
        assert_ne!(
            fingerprint, base,
            "changing the {what} kept the fingerprint"
        );
    }
    for (i, (_, x)) in changed.iter().enumerate() {
        for (_, y) in &changed[i + 1..] {
            assert_ne!(x, y);
        }
    }
}

// ---------------------------------------------------------------------------------------
// postcard

#[derive(shmbus::Message, Serialize, Deserialize, Clone, Debug, PartialEq)]
struct Order {
    id: u64,
    symbol: String,
    legs: Vec<(u16, u32)>,
    note: Option<String>,
}

#[derive(shmbus::Message, Serialize, Deserialize, Clone, Debug, PartialEq)]
enum Event {
    Heartbeat,
    Fill(u64, f64),
    Cancel { id: u64, reason: String },
    Order(Order),
}

fn order() -> Order {
    Order {
        id: 9,
        symbol: "ACME".to_owned(),
        legs: vec![(1, 100), (2, 250)],
        note: Some("rush".to_owned()),
    }
}

#[test]
fn postcard_info() {
    assert_eq!(Order::INFO.name, "Order");
    assert_eq!(Order::INFO.encoding, Encoding::Postcard);
    assert_eq!(Order::INFO.size, std::mem::size_of::<Order>());
    assert_eq!(Order::INFO.align, std::mem::align_of::<Order>());
    assert_eq!(Event::INFO.name, "Event");
    assert_eq!(Event::INFO.encoding, Encoding::Postcard);
    assert_ne!(Order::INFO.fingerprint, Event::INFO.fingerprint);
}

#[test]
fn postcard_struct_round_trip() {
    let mut buf = [0u8; 128];
    let n = round_trip(&order(), &mut buf);
    // postcard's varint encoding: far smaller than the in-memory value.
    assert!(n < std::mem::size_of::<Order>() + 20, "{n} bytes");
    assert_eq!(buf[0], 9, "postcard varint of id");

    let empty = Order {
        id: 0,
        symbol: String::new(),
        legs: Vec::new(),
        note: None,
    };
    assert_eq!(round_trip(&empty, &mut buf), 4);
}

#[test]
fn postcard_enum_round_trip() {
    let mut buf = [0u8; 128];
    for event in [
        Event::Heartbeat,
        Event::Fill(3, 1.5),
        Event::Cancel {
            id: 4,
            reason: "user".to_owned(),
        },
        Event::Order(order()),
    ] {
        round_trip(&event, &mut buf);
    }
    assert_eq!(Event::Heartbeat.__encode(&mut buf), Ok(1));
    assert_eq!(buf[0], 0, "variant index");
}

#[test]
fn postcard_too_large() {
    let mut buf = [0u8; 8];
    assert_eq!(
        order().__encode(&mut buf),
        Err(EncodeError::TooLarge { max: 8 })
    );
    assert_eq!(
        Event::Heartbeat.__encode(&mut []),
        Err(EncodeError::TooLarge { max: 0 })
    );
}

#[test]
fn postcard_garbage_is_a_deserialize_error() {
    // Variant index 200 does not exist.
    match Event::__decode(&[200, 1, 2, 3]) {
        Err(DecodeError::Deserialize { ty, reason }) => {
            assert_eq!(ty, "Event");
            assert!(!reason.is_empty());
        }
        other => panic!("expected a Deserialize error, got {other:?}"),
    }
    // Truncated: the string claims 100 bytes.
    assert!(matches!(
        Order::__decode(&[1, 100, b'A']),
        Err(DecodeError::Deserialize { ty: "Order", .. })
    ));
    assert!(matches!(
        Order::__decode(&[]),
        Err(DecodeError::Deserialize { .. })
    ));
}

/// The same fields as `Tick`, but serialized.
#[derive(shmbus::Message, Serialize, Deserialize, Clone, Copy, Debug, PartialEq)]
#[repr(C)]
#[shmbus(serde)]
struct TickSerde {
    seq: u64,
    price: f64,
    venue: [u8; 8],
}

mod tick_serde {
    use serde::{Deserialize, Serialize};

    // Same name and fields as the zero-copy `Tick`, but no `repr(C)`.
    #[derive(shmbus::Message, Serialize, Deserialize)]
    pub struct Tick {
        pub seq: u64,
        pub price: f64,
        pub venue: [u8; 8],
    }
}

#[test]
fn serde_attribute_forces_postcard() {
    assert_eq!(TickSerde::INFO.encoding, Encoding::Postcard);
    assert_eq!(TickSerde::INFO.size, 24);
    let value = TickSerde {
        seq: 300,
        price: 2.0,
        venue: [1; 8],
    };
    let mut buf = [0u8; 64];
    // varint(300) = 2 bytes + 8 (f64) + 8 (array): not the 24 in-memory bytes.
    assert_eq!(round_trip(&value, &mut buf), 18);
}

#[test]
fn postcard_and_zero_copy_fingerprints_differ() {
    assert_eq!(tick_serde::Tick::INFO.name, Tick::INFO.name);
    assert_eq!(tick_serde::Tick::INFO.encoding, Encoding::Postcard);
    assert_ne!(tick_serde::Tick::INFO.fingerprint, Tick::INFO.fingerprint);
}

mod postcard_variants {
    use serde::{Deserialize, Serialize};

    pub mod same {
        use serde::{Deserialize, Serialize};

        #[derive(shmbus::Message, Serialize, Deserialize)]
        pub struct Order {
            pub id: u64,
            pub symbol: String,
            pub legs: Vec<(u16, u32)>,
            pub note: Option<String>,
        }
    }

    #[derive(shmbus::Message, Serialize, Deserialize)]
    pub struct Order {
        pub id: u64,
        pub symbol: String,
        pub legs: Vec<(u16, u64)>,
        pub note: Option<String>,
    }

    pub mod reordered {
        use serde::{Deserialize, Serialize};

        #[derive(shmbus::Message, Serialize, Deserialize)]
        pub struct Order {
            pub symbol: String,
            pub id: u64,
            pub legs: Vec<(u16, u32)>,
            pub note: Option<String>,
        }
    }

    pub mod same_event {
        use crate::Order;
        use serde::{Deserialize, Serialize};

        // Formatted differently on purpose: whitespace is not part of the fingerprint.
        #[rustfmt::skip]
        #[derive(shmbus::Message, Serialize, Deserialize)]
        pub enum Event {
            Heartbeat,
            Fill(u64,f64),
            Cancel { id : u64 , reason : String },
            Order(Order),
        }
    }

    pub mod event_kind_changed {
        use crate::Order;
        use serde::{Deserialize, Serialize};

        #[derive(shmbus::Message, Serialize, Deserialize)]
        pub enum Event {
            Heartbeat,
            Fill { a: u64, b: f64 },
            Cancel { id: u64, reason: String },
            Order(Order),
        }
    }
}

#[test]
fn postcard_fingerprint_follows_the_shape() {
    // Independent declaration, same shape: same fingerprint (whitespace does not matter).
    assert_eq!(
        postcard_variants::same::Order::INFO.fingerprint,
        Order::INFO.fingerprint
    );
    assert_eq!(
        postcard_variants::same_event::Event::INFO.fingerprint,
        Event::INFO.fingerprint
    );
    // A field type or the field order changed.
    assert_ne!(
        postcard_variants::Order::INFO.fingerprint,
        Order::INFO.fingerprint
    );
    assert_ne!(
        postcard_variants::reordered::Order::INFO.fingerprint,
        Order::INFO.fingerprint
    );
    // A variant changed from tuple to struct form.
    assert_ne!(
        postcard_variants::event_kind_changed::Event::INFO.fingerprint,
        Event::INFO.fingerprint
    );
}

// ---------------------------------------------------------------------------------------
// edge cases

#[derive(shmbus::Message, Clone, Copy, Debug, PartialEq)]
#[repr(C)]
struct Empty;

#[derive(shmbus::Message, Clone, Copy, Debug, PartialEq)]
#[repr(C)]
struct Keywords {
    r#type: u32,
    r#match: u32,
}

#[derive(shmbus::Message, Serialize, Deserialize, Clone, Copy, Debug, PartialEq)]
#[repr(u8)]
enum Side {
    Buy = 1,
    Sell = 2,
}

#[test]
fn edge_cases() {
    assert_eq!(Empty::INFO.encoding, Encoding::ZeroCopy);
    assert_eq!((Empty::INFO.size, Empty::INFO.align), (0, 1));
    let mut buf = [0u8; 4];
    assert_eq!(round_trip(&Empty, &mut buf), 0);

    // Raw identifiers are hashed without `r#`.
    use shmbus::fingerprint as fp;
    let mut h = fp::str(fp::SEED, "shmbus-zero-copy");
    h = fp::u64(fp::u64(fp::str(h, "Keywords"), 8), 4);
    h = fp::u64(fp::u64(fp::str(h, "type"), 0), u32::SCHEMA_FINGERPRINT);
    h = fp::u64(fp::u64(fp::str(h, "match"), 4), u32::SCHEMA_FINGERPRINT);
    assert_eq!(Keywords::INFO.fingerprint, h);

    // An enum is never zero-copy, whatever its `repr`.
    assert_eq!(Side::INFO.encoding, Encoding::Postcard);
    assert_eq!(round_trip(&Side::Sell, &mut buf), 1);
}

/// The generated code uses absolute paths only, and its own names cannot clash with the
/// user's: it compiles without the prelude, next to items named like its internals.
mod hygiene {
    #![no_implicit_prelude]

    #[allow(dead_code, non_camel_case_types)]
    struct h;
    #[allow(dead_code, non_upper_case_globals)]
    const price: u8 = 0;
    #[allow(dead_code)]
    const __SHMBUS_POSTCARD: u8 = 0;

    #[derive(::shmbus::Message, ::core::clone::Clone, ::core::marker::Copy)]
    #[repr(C)]
    pub struct Tick {
        pub h: ::core::primitive::u64,
        pub price: ::core::primitive::f64,
        pub venue: [::core::primitive::u8; 8],
    }
}

#[test]
fn hygiene() {
    assert_eq!(hygiene::Tick::INFO.size, 24);
    assert_ne!(hygiene::Tick::INFO.fingerprint, Tick::INFO.fingerprint);
}
