//! Entry points for the cargo-fuzz targets in `fuzz/` (feature `fuzzing`; not public API).
//! Each one feeds arbitrary bytes to a decoder of untrusted input and checks what it
//! accepted; a panic is a bug.

use zerocopy::FromBytes;

use crate::message::Message;
use crate::ring::{Claim, Consumer, Delivery, Producer, Take};
use crate::segment::heap::HeapSegment;
use crate::segment::layout::{Geometry, Header, HEADER_SIZE};
use crate::segment::Memory;
use crate::sync::Ordering;
use crate::transport::frame;

/// Segment header validation: whatever it accepts is a consistent geometry.
pub fn header(data: &[u8]) {
    if data.len() < HEADER_SIZE + 8 {
        return;
    }
    let file_size = u64::from_le_bytes(data[..8].try_into().expect("8 bytes"));
    let h = Header::read_from_bytes(&data[8..8 + HEADER_SIZE]).expect("HEADER_SIZE bytes");
    if let Ok(g) = Geometry::from_header(&h, file_size) {
        assert!(g.total_size <= file_size);
        assert!(g.payload_offset as u64 + g.max_message as u64 <= g.stride);
        assert_eq!(g.ring_offset + g.capacity * g.stride, g.total_size);
    }
}

/// Stream framing: decoding a buffer frame by frame never reads out of bounds, and every
/// frame accepted carries a payload within the limit.
pub fn frames(data: &[u8]) {
    let Some((&max, mut rest)) = data.split_first() else {
        return;
    };
    let max = max as usize * 16;
    while let Ok(Some(f)) = frame::decode(rest, max) {
        assert!(f.payload.len() <= max && f.total <= rest.len());
        rest = &rest[f.total..];
    }
}

/// A serialized message type with strings, vectors, options and variants.
#[derive(crate::Message, serde::Serialize, serde::Deserialize, Debug, Clone, PartialEq)]
pub(crate) enum Payload {
    Unit,
    Text(String),
    Record {
        id: u64,
        tags: Vec<u32>,
        note: Option<String>,
        nested: Vec<Vec<u8>>,
    },
}

/// postcard payloads: decoding garbage fails cleanly; what decodes re-encodes.
pub fn postcard(data: &[u8]) {
    if let Ok(p) = Payload::__decode(data) {
        let mut buf = vec![0u8; data.len() * 2 + 64];
        let n = p.__encode(&mut buf).expect("fits");
        assert_eq!(Payload::__decode(&buf[..n]).expect("round trip"), p);
    }
}

/// The ring under foreign writes: every 9 input bytes are one operation (a claim, a take, a
/// release, or a garbage write into a slot word or a cursor).
pub fn ring(data: &[u8]) {
    let Some((&mode, ops)) = data.split_first() else {
        return;
    };
    let n = if mode & 1 != 0 { 4 } else { 1 };
    let broadcast = mode & 2 != 0;
    let delivery = Delivery {
        broadcast,
        drop_oldest: broadcast && mode & 4 != 0,
        history: 0,
    };
    let mem = HeapSegment::new(Geometry::new(8, 8, 8, n, n).expect("valid"));
    let p = Producer::new(&mem, 0, delivery);
    let c = Consumer::new(&mem, 0, delivery);
    let mut held = Vec::new();
    for op in ops.chunks_exact(9) {
        let value = u64::from_le_bytes(op[1..].try_into().expect("8 bytes"));
        let slot = value % 8;
        match op[0] % 6 {
            0 => {
                if let Ok(Claim::Claimed(pos)) = p.try_claim(&mem) {
                    p.commit(&mem, pos, 8, value & 1 == 0);
                }
            }
            1 => {
                if let Ok(Take::Ready { pos, len }) = c.try_take(&mem) {
                    assert!(len <= mem.geometry().max_message);
                    held.push(pos);
                }
            }
            2 => {
                if let Some(pos) = held.pop() {
                    c.release(&mem, pos);
                }
            }
            3 => mem.slot(slot).seq.store(value, Ordering::Relaxed),
            4 => mem.slot(slot).len.store(value as u32, Ordering::Relaxed),
            _ => {
                mem.slot(slot).pins.store(value, Ordering::Relaxed);
                mem.control().tail.0.store(value >> 8, Ordering::Relaxed);
            }
        }
    }
}
