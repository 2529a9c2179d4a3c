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

/// A record of the file-log target: its content is a function of its sequence number.
#[derive(crate::Message, Clone, Copy, Debug, PartialEq)]
#[repr(C)]
pub(crate) struct LogRecord {
    seq: u64,
    check: u64,
}

impl LogRecord {
    fn new(seq: u64) -> LogRecord {
        LogRecord {
            seq,
            check: seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x5EED,
        }
    }
}

/// Records written before the damage in [`file_log`].
const LOG_RECORDS: u64 = 24;

/// File-log recovery: a log of `LOG_RECORDS` (24) records in small segments is damaged by the
/// input (every 6 bytes: a file of the log, an offset in it and a byte to write there, or a
/// truncation), then read from the beginning and reopened by a writer. The reader delivers
/// only intact records in increasing order, whatever the damage; the writer recovers or
/// reports an error; nothing panics.
pub fn file_log(data: &[u8]) {
    use crate::{Options, Receiver, Sender, Start, Transport, TryRecvError};
    use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};

    static RUN: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "shmbus-fuzz-log-{}-{}",
        std::process::id(),
        RUN.fetch_add(1, AtomicOrdering::Relaxed)
    ));
    struct Remove(std::path::PathBuf);
    impl Drop for Remove {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _guard = Remove(dir.clone());
    let mut o = Options::new();
    o.transport(Transport::File { dir: dir.clone() })
        .segment_size(4096)
        .start(Start::Beginning);
    {
        let tx = Sender::<LogRecord>::create("log", &o).expect("a fresh log");
        for seq in 0..LOG_RECORDS {
            tx.send(LogRecord::new(seq)).expect("append");
        }
    }
    let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(&dir)
        .expect("the log directory")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    for op in data.chunks_exact(6) {
        let file = &files[op[0] as usize % files.len()];
        let Ok(f) = std::fs::OpenOptions::new().write(true).open(file) else {
            continue;
        };
        let len = f.metadata().map_or(0, |m| m.len());
        let at = u32::from_le_bytes(op[1..5].try_into().expect("4 bytes")) as u64;
        if op[0] & 0x80 != 0 {
            let _ = f.set_len(at % (len + 1));
        } else if len > 0 {
            use std::os::unix::fs::FileExt;
            let _ = f.write_all_at(&[op[5]], at % len);
        }
    }
    if let Ok(rx) = Receiver::<LogRecord>::open("log", &o) {
        let mut last: Option<u64> = None;
        for _ in 0..LOG_RECORDS * 2 {
            match rx.try_recv() {
                Ok(r) => {
                    assert_eq!(*r, LogRecord::new(r.seq), "a damaged record was delivered");
                    assert!(last.is_none_or(|l| r.seq > l), "records out of order");
                    last = Some(r.seq);
                }
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                Err(_) => break, // a typed error (corruption, decoding) ends the read
            }
        }
    }
    if let Ok(tx) = Sender::<LogRecord>::open("log", &o) {
        let _ = tx.send(LogRecord::new(LOG_RECORDS));
    }
}
