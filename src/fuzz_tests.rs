//! Property tests that feed every decoder of untrusted bytes with arbitrary input: the
//! segment header validation, stream framing, postcard payloads, the ring's reading of
//! sequence words, and the recovery of a damaged file log. None may panic, read out of bounds or loop; bad input must come back as
//! an error. (`fuzz/` runs the same decoders under cargo-fuzz where a nightly toolchain
//! exists.)

use proptest::prelude::*;
use zerocopy::{FromBytes, IntoBytes};

use crate::fuzz_api::{self, Payload};
use crate::message::Message;
use crate::segment::layout::{Geometry, Header, HEADER_SIZE, MAGIC};
use crate::transport::frame;

fn valid_header() -> Header {
    let g = Geometry::new(64, 24, 8, 8, 8).unwrap();
    let mut h = Header::read_from_bytes(&[0u8; HEADER_SIZE]).unwrap();
    h.magic = MAGIC;
    h.version = crate::segment::layout::LAYOUT_VERSION;
    h.header_size = HEADER_SIZE as u32;
    h.encoding = 1;
    h.msg_size = 24;
    h.msg_align = 8;
    h.max_message = g.max_message;
    h.mode = crate::segment::layout::mode::QUEUE;
    h.overflow = crate::segment::layout::overflow::BLOCK;
    h.capacity = g.capacity;
    h.stride = g.stride;
    h.ring_offset = g.ring_offset;
    h.total_size = g.total_size;
    h.max_senders = 8;
    h.max_receivers = 8;
    h
}

fn check_geometry(g: &Geometry, file_size: u64) {
    assert!(g.total_size <= file_size);
    assert!(g.capacity.is_power_of_two() && g.capacity >= 2);
    assert!(g.payload_offset as u64 + g.max_message as u64 <= g.stride);
    assert!(g.ring_offset + g.capacity * g.stride == g.total_size);
    assert!(g.participants_offset < g.ring_offset);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn header_validation_accepts_only_consistent_geometry(
        bytes in proptest::collection::vec(any::<u8>(), HEADER_SIZE),
        file_size in any::<u64>(),
    ) {
        let h = Header::read_from_bytes(&bytes).unwrap();
        if let Ok(g) = Geometry::from_header(&h, file_size) {
            check_geometry(&g, file_size);
        }
    }

    #[test]
    fn header_validation_survives_mutations_of_a_valid_header(
        edits in proptest::collection::vec((0..HEADER_SIZE, any::<u8>()), 1..6),
        file_size in prop_oneof![Just(1u64 << 20), any::<u64>()],
    ) {
        let mut bytes = valid_header().as_bytes().to_vec();
        for (at, b) in edits {
            bytes[at] = b;
        }
        let h = Header::read_from_bytes(&bytes).unwrap();
        if let Ok(g) = Geometry::from_header(&h, file_size) {
            check_geometry(&g, file_size);
        }
    }

    #[test]
    fn frame_decoding_never_misreads(
        bytes in proptest::collection::vec(any::<u8>(), 0..300),
        max in 0usize..400,
    ) {
        if let Ok(Some(f)) = frame::decode(&bytes, max) {
            prop_assert!(f.total <= bytes.len());
            prop_assert!(f.payload.end <= f.total);
            prop_assert!(f.payload.len() <= max);
        }
    }

    #[test]
    fn frames_round_trip_and_any_flipped_byte_is_caught(
        payload in proptest::collection::vec(any::<u8>(), 0..200),
        kind in 0u8..2,
        flip in any::<prop::sample::Index>(),
        bit in 0u8..8,
    ) {
        let mut wire = Vec::new();
        frame::encode(&mut wire, kind, &payload);
        let f = frame::decode(&wire, 1 << 20).unwrap().unwrap();
        prop_assert_eq!(f.kind, kind);
        prop_assert_eq!(&wire[f.payload.clone()], &payload[..]);
        let at = flip.index(wire.len());
        wire[at] ^= 1 << bit;
        if let Ok(Some(g)) = frame::decode(&wire, 1 << 20) {
            prop_assert!(false, "flipped byte {} accepted as {:?}", at, g);
        }
    }

    #[test]
    fn postcard_payloads_decode_or_fail_cleanly(
        bytes in proptest::collection::vec(any::<u8>(), 0..256),
    ) {
        fuzz_api::postcard(&bytes);
    }

    #[test]
    fn postcard_payloads_round_trip(
        id in any::<u64>(),
        tags in proptest::collection::vec(any::<u32>(), 0..20),
        note in proptest::option::of(".{0,20}"),
    ) {
        let p = Payload::Record { id, tags, note, nested: vec![vec![1, 2], vec![]] };
        let mut buf = vec![0u8; 1024];
        let n = p.__encode(&mut buf).unwrap();
        prop_assert_eq!(Payload::__decode(&buf[..n]).unwrap(), p);
    }

    /// A ring whose sequence words, lengths, pins and cursors are overwritten with garbage
    /// between operations (the interpreter of `fuzz_api::ring`): claims and takes return
    /// values or corruption, never panic.
    #[test]
    fn ring_survives_foreign_writes(
        mode in any::<u8>(),
        ops in proptest::collection::vec(any::<u8>(), 0..1800),
    ) {
        let mut data = vec![mode];
        data.extend(ops);
        fuzz_api::ring(&data);
    }
}

proptest! {
    // Each case writes and reads a small log on disk.
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// A file log damaged anywhere (bytes of its control file and segments overwritten,
    /// files truncated): a reader delivers only intact records in order, a writer recovers
    /// or fails with an error (the interpreter of `fuzz_api::file_log`).
    #[test]
    fn file_log_recovery_never_delivers_damage(
        ops in proptest::collection::vec(any::<u8>(), 0..120),
    ) {
        fuzz_api::file_log(&ops);
    }
}
