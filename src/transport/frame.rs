//! Framing for byte-stream transports (pipes, FIFOs, Unix stream sockets).
//!
//! Every frame is
//!
//! ```text
//! len: u32 LE | kind: u8 | payload: len bytes | crc: u32 LE
//! ```
//!
//! where `crc` is the CRC-32 (IEEE, as zlib's `crc32`) of the five header bytes and the
//! payload. Kind 0 is a message; kind 1 is a hello, sent first by each end that talks:
//!
//! ```text
//! magic: "SHMBUS\0\x01" | encoding: u32 LE | fingerprint: u64 LE | max_frame: u32 LE
//!   | name_len: u16 LE | name: name_len bytes of UTF-8
//! ```
//!
//! A frame whose length exceeds what the peer announced, whose CRC does not match, or that
//! the stream ends in the middle of, is corruption: the reader reports it and never yields
//! the bytes. The reader keeps reporting it, since the stream cannot be resynchronised.

use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::time::Duration;

use super::{LinkError, LinkOpenError, Wait, Wire};
use crate::error::TypeDesc;
use crate::message::Encoding;
use crate::sys::fd;

/// Frame kinds.
pub(crate) const KIND_DATA: u8 = 0;
pub(crate) const KIND_HELLO: u8 = 1;
/// The magic at the start of a hello.
pub(crate) const HELLO_MAGIC: [u8; 8] = *b"SHMBUS\0\x01";
/// Header and trailer bytes around a payload.
pub(crate) const OVERHEAD: usize = 9;
/// The most a reader accepts before it has seen a hello (which is small).
const MAX_HELLO: usize = 8 + 4 + 8 + 4 + 2 + 1024;
/// Upper bound on any frame, whatever a peer announces.
pub(crate) const MAX_FRAME: usize = 64 << 20;

/// CRC-32 (IEEE 802.3, reflected, as zlib) continued from `crc` (start with 0). Computed
/// by `crc32fast` (carry-less multiplication where the CPU has it, else slice-by-16): a
/// byte-at-a-time table costs about seven instructions a byte, 28 000 for a 4 KiB frame.
pub(crate) fn crc32(crc: u32, bytes: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new_with_initial(crc);
    h.update(bytes);
    h.finalize()
}

/// Appends one frame to `out`.
pub(crate) fn encode(out: &mut Vec<u8>, kind: u8, payload: &[u8]) {
    let start = out.len();
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.push(kind);
    out.extend_from_slice(payload);
    let crc = crc32(0, &out[start..]);
    out.extend_from_slice(&crc.to_le_bytes());
}

/// The hello payload for `wire`.
pub(crate) fn hello(wire: &Wire) -> Vec<u8> {
    let name = wire.name.as_bytes();
    let name = &name[..name.len().min(1024)];
    let mut p = Vec::with_capacity(26 + name.len());
    p.extend_from_slice(&HELLO_MAGIC);
    p.extend_from_slice(&wire.encoding.to_le_bytes());
    p.extend_from_slice(&wire.fingerprint.to_le_bytes());
    p.extend_from_slice(&(wire.max_frame.min(u32::MAX as usize) as u32).to_le_bytes());
    p.extend_from_slice(&(name.len() as u16).to_le_bytes());
    p.extend_from_slice(name);
    p
}

/// A peer's hello, parsed.
#[derive(Debug, Clone)]
pub(crate) struct Hello {
    pub(crate) encoding: u32,
    pub(crate) fingerprint: u64,
    pub(crate) max_frame: usize,
    pub(crate) name: String,
}

impl Hello {
    pub(crate) fn parse(p: &[u8]) -> Result<Hello, String> {
        if p.len() < 26 || p[..8] != HELLO_MAGIC {
            return Err("the peer does not speak the shmbus stream protocol (bad hello)".into());
        }
        let u32_at = |i: usize| u32::from_le_bytes(p[i..i + 4].try_into().expect("4 bytes"));
        let name_len = u16::from_le_bytes([p[24], p[25]]) as usize;
        if p.len() != 26 + name_len {
            return Err("malformed hello".into());
        }
        Ok(Hello {
            encoding: u32_at(8),
            fingerprint: u64::from_le_bytes(p[12..20].try_into().expect("8 bytes")),
            max_frame: u32_at(20) as usize,
            name: String::from_utf8_lossy(&p[26..]).into_owned(),
        })
    }

    /// Whether this hello is for the same type as `wire`.
    pub(crate) fn matches(&self, wire: &Wire) -> bool {
        self.fingerprint == wire.fingerprint && self.encoding == wire.encoding
    }

    pub(crate) fn desc(&self) -> TypeDesc {
        TypeDesc {
            name: self.name.clone(),
            encoding: Encoding::from_u32(self.encoding).map_or("unknown", Encoding::name),
            fingerprint: self.fingerprint,
        }
    }

    /// Checks the peer's hello against ours.
    pub(crate) fn check(&self, wire: &Wire) -> Result<(), LinkOpenError> {
        if self.matches(wire) {
            Ok(())
        } else {
            Err(LinkOpenError::TypeMismatch(self.desc()))
        }
    }
}

/// One frame found at the start of a buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Frame {
    pub(crate) kind: u8,
    /// Where the payload lies in the buffer.
    pub(crate) payload: std::ops::Range<usize>,
    /// Bytes the whole frame occupies.
    pub(crate) total: usize,
}

/// Decodes the frame at the start of `avail`: `Ok(None)` if it is not complete yet, an
/// error (the stream is corrupt) if its kind, length or checksum is wrong. Every length is
/// checked against `max_frame` before it is used, so no input makes this read out of bounds
/// or allocate.
pub(crate) fn decode(avail: &[u8], max_frame: usize) -> Result<Option<Frame>, String> {
    if avail.len() < 5 {
        return Ok(None);
    }
    let len = u32::from_le_bytes(avail[..4].try_into().expect("4 bytes")) as usize;
    let kind = avail[4];
    if kind > KIND_HELLO {
        return Err(format!("unknown frame kind {kind}"));
    }
    if len > max_frame {
        return Err(format!(
            "frame of {len} bytes exceeds the announced maximum of {max_frame}"
        ));
    }
    let total = len + OVERHEAD;
    if avail.len() < total {
        return Ok(None);
    }
    let crc = u32::from_le_bytes(avail[5 + len..total].try_into().expect("4 bytes"));
    if crc32(0, &avail[..5 + len]) != crc {
        return Err("frame checksum mismatch".into());
    }
    Ok(Some(Frame {
        kind,
        payload: 5..5 + len,
        total,
    }))
}

/// The writing half of a framed byte stream over a non-blocking descriptor.
pub(crate) struct StreamTx<F> {
    pub(crate) io: F,
    buf: Vec<u8>,
}

impl<F: Write + AsFd> StreamTx<F> {
    pub(crate) fn new(io: F) -> io::Result<Self> {
        fd::set_nonblocking(io.as_fd(), true)?;
        Ok(StreamTx {
            io,
            buf: Vec::new(),
        })
    }

    /// Sends one frame. `wait` bounds the wait for room before the first byte; once part
    /// of a frame is written, the rest is written whatever the wait (a half frame would
    /// break the stream).
    pub(crate) fn send(&mut self, kind: u8, payload: &[u8], wait: Wait) -> Result<(), LinkError> {
        self.buf.clear();
        encode(&mut self.buf, kind, payload);
        let mut off = 0;
        while off < self.buf.len() {
            match self.io.write(&self.buf[off..]) {
                Ok(0) => return Err(LinkError::Disconnected),
                Ok(n) => off += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let slice = if off == 0 {
                        match wait.slice(super::LIVENESS_SLICE) {
                            Some(s) => Some(s),
                            None => return Err(wait.expired()),
                        }
                    } else {
                        Some(super::LIVENESS_SLICE)
                    };
                    fd::poll_one(self.io.as_fd(), false, slice)
                        .map_err(|e| LinkError::io("poll", e))?;
                }
                Err(e) => return Err(LinkError::io("write", e)),
            }
        }
        Ok(())
    }
}

/// What [`StreamRx::fill`] found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Fill {
    /// Read some bytes (maybe a frame is complete now).
    Some,
    /// Nothing to read right now.
    Nothing,
    /// The writer closed its end.
    Eof,
}

/// The reading half of a framed byte stream over a non-blocking descriptor.
pub(crate) struct StreamRx<F> {
    pub(crate) io: F,
    /// Bytes read and not consumed yet are `buf[start..end]`. The vector only grows (it is
    /// zero-filled once, when it grows), so a read does not clear 64 KiB first.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Largest payload accepted (from the peer's hello; small until then).
    pub(crate) max_frame: usize,
    eof: bool,
    broken: Option<String>,
}

impl<F: Read + AsFd> StreamRx<F> {
    pub(crate) fn new(io: F) -> io::Result<Self> {
        fd::set_nonblocking(io.as_fd(), true)?;
        Ok(StreamRx {
            io,
            buf: Vec::new(),
            start: 0,
            end: 0,
            max_frame: MAX_HELLO,
            eof: false,
            broken: None,
        })
    }

    fn corrupt(&mut self, reason: String) -> LinkError {
        self.broken = Some(reason.clone());
        LinkError::Corrupt(reason)
    }

    /// The next complete frame in the buffer: `(kind, payload)` copied into `out`.
    pub(crate) fn next_frame(&mut self, out: &mut Vec<u8>) -> Result<Option<u8>, LinkError> {
        if let Some(r) = &self.broken {
            return Err(LinkError::Corrupt(r.clone()));
        }
        let avail = &self.buf[self.start..self.end];
        match decode(avail, self.max_frame) {
            Ok(None) => Ok(None),
            Ok(Some(frame)) => {
                out.clear();
                out.extend_from_slice(&avail[frame.payload.clone()]);
                self.start += frame.total;
                if self.start == self.end {
                    self.start = 0;
                    self.end = 0;
                }
                Ok(Some(frame.kind))
            }
            Err(reason) => Err(self.corrupt(reason)),
        }
    }

    /// Reads what is there without waiting.
    pub(crate) fn fill(&mut self) -> Result<Fill, LinkError> {
        if self.eof {
            return Ok(Fill::Eof);
        }
        if self.start > 0 && self.start * 2 >= self.end {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        // Room for at least 64 KiB more, in power-of-two sizes: small frames leave at most a
        // frame's worth before the read, so the buffer grows once, to 128 KiB, and a receive
        // in steady state never allocates.
        let want = (self.end + 64 * 1024).next_power_of_two();
        if self.buf.len() < want {
            self.buf.resize(want, 0);
        }
        loop {
            match self.io.read(&mut self.buf[self.end..want]) {
                Ok(0) => {
                    self.eof = true;
                    return Ok(Fill::Eof);
                }
                Ok(n) => {
                    self.end += n;
                    return Ok(Fill::Some);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Fill::Nothing),
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                    self.eof = true;
                    return Ok(Fill::Eof);
                }
                Err(e) => return Err(LinkError::io("read", e)),
            }
        }
    }

    /// What ending the stream now means: clean, or in the middle of a frame.
    pub(crate) fn at_eof(&mut self) -> LinkError {
        let left = self.end - self.start;
        if left == 0 {
            LinkError::Disconnected
        } else {
            self.corrupt(format!(
                "truncated frame: the stream ended {left} bytes into a frame"
            ))
        }
    }

    /// Receives one frame, waiting as `wait` allows. Returns its kind.
    pub(crate) fn recv(&mut self, out: &mut Vec<u8>, wait: Wait) -> Result<u8, LinkError> {
        loop {
            if let Some(kind) = self.next_frame(out)? {
                return Ok(kind);
            }
            match self.fill()? {
                Fill::Some => continue,
                Fill::Eof => {
                    if let Some(kind) = self.next_frame(out)? {
                        return Ok(kind);
                    }
                    return Err(self.at_eof());
                }
                Fill::Nothing => {
                    let Some(slice) = wait.slice(super::LIVENESS_SLICE) else {
                        return Err(wait.expired());
                    };
                    fd::poll_one(self.io.as_fd(), true, Some(slice))
                        .map_err(|e| LinkError::io("poll", e))?;
                }
            }
        }
    }

    /// Receives the peer's hello (the first frame), waiting at most `timeout`, checks it
    /// against `wire` and adopts its maximum frame size.
    pub(crate) fn expect_hello(
        &mut self,
        wire: &Wire,
        timeout: Duration,
    ) -> Result<Hello, LinkOpenError> {
        let mut p = Vec::new();
        let wait = Wait::from_deadline(std::time::Instant::now().checked_add(timeout));
        let kind = match self.recv(&mut p, wait) {
            Ok(k) => k,
            Err(LinkError::Timeout) => {
                return Err(LinkOpenError::Io(
                    "handshake",
                    io::Error::new(io::ErrorKind::TimedOut, "no hello from the peer in time"),
                ))
            }
            Err(LinkError::Disconnected) => {
                return Err(LinkOpenError::Refused(
                    "the peer closed the connection during the handshake".into(),
                ))
            }
            Err(e) => return Err(LinkOpenError::Invalid(e.to_string())),
        };
        if kind != KIND_HELLO {
            return Err(LinkOpenError::Invalid(
                "the first frame is not a hello".into(),
            ));
        }
        let hello = Hello::parse(&p).map_err(LinkOpenError::Invalid)?;
        hello.check(wire)?;
        self.max_frame = hello.max_frame.min(MAX_FRAME);
        Ok(hello)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_zlib() {
        assert_eq!(crc32(0, b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(0, b""), 0);
        assert_eq!(crc32(crc32(0, b"1234"), b"56789"), 0xCBF4_3926);
    }

    #[test]
    fn hello_round_trip() {
        let wire = Wire {
            name: "Tick",
            encoding: 1,
            fingerprint: 42,
            max_frame: 64,
        };
        let h = Hello::parse(&hello(&wire)).unwrap();
        assert!(h.matches(&wire));
        assert_eq!((h.name.as_str(), h.max_frame), ("Tick", 64));
        assert!(Hello::parse(b"garbage").is_err());
    }

    fn reader_over(bytes: &[u8]) -> StreamRx<std::fs::File> {
        let (r, mut w) = fd::pipe().unwrap();
        w.write_all(bytes).unwrap();
        drop(w);
        let mut rx = StreamRx::new(r).unwrap();
        rx.max_frame = 1024;
        rx
    }

    #[test]
    fn frames_round_trip_and_corruption_is_detected() {
        let mut bytes = Vec::new();
        encode(&mut bytes, KIND_DATA, b"hello");
        encode(&mut bytes, KIND_DATA, b"");
        let mut rx = reader_over(&bytes);
        let mut out = Vec::new();
        assert_eq!(rx.recv(&mut out, Wait::Forever).unwrap(), KIND_DATA);
        assert_eq!(out, b"hello");
        rx.recv(&mut out, Wait::Forever).unwrap();
        assert!(out.is_empty());
        assert!(matches!(
            rx.recv(&mut out, Wait::Forever),
            Err(LinkError::Disconnected)
        ));

        // A flipped payload bit, a truncated frame, an absurd length.
        let mut bad = bytes.clone();
        bad[6] ^= 1;
        let mut rx = reader_over(&bad);
        assert!(matches!(
            rx.recv(&mut out, Wait::Forever),
            Err(LinkError::Corrupt(_))
        ));
        assert!(matches!(
            rx.recv(&mut out, Wait::Forever),
            Err(LinkError::Corrupt(_))
        ));
        let mut rx = reader_over(&bytes[..7]);
        assert!(
            matches!(rx.recv(&mut out, Wait::Forever), Err(LinkError::Corrupt(r)) if r.contains("truncated"))
        );
        let mut rx = reader_over(&[0xff, 0xff, 0xff, 0x7f, 0, 1, 2, 3, 4]);
        assert!(matches!(
            rx.recv(&mut out, Wait::Forever),
            Err(LinkError::Corrupt(_))
        ));
    }
}
