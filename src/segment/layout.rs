//! The versioned byte layout of a channel segment, and its validation.
//!
//! ```text
//! offset 0            Header      256 bytes, written once by the creator; `ready` last
//! CONTROL_OFFSET      Control     cache-line-padded atomics: cursors, wait words, flags
//!                     Participant one 64-byte entry per sender, then per receiver
//! counters_offset     Counters    one 64-byte line per sender, then per receiver
//! schema_offset       schema      `schema_len` bytes: the message type's schema (crate::schema)
//! ring_offset         slots       capacity × stride, page aligned
//!   slot i            SlotHeader  seq (u64), len (u32), flags (u32)
//!                     payload     at payload_offset, up to max_message bytes
//! ```
//!
//! A channel's footprint is `ring_offset + capacity × stride` bytes, where `ring_offset` is
//! the control area rounded up to a page and `stride` is the slot header plus the payload
//! rounded up to 64 bytes (or the message's alignment if larger).
//!
//! Everything here is read from memory that other processes can write: the header is copied
//! out and every field is checked against the mapping's real size before it is used.

use crate::sync::{AtomicU32, AtomicU64, Ordering};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Identifies a shmbus segment.
pub(crate) const MAGIC: [u8; 8] = *b"SHMBUS\0\0";
/// Bumped on every incompatible change of this layout.
pub(crate) const LAYOUT_VERSION: u32 = 3;
/// Size reserved for [`Header`].
pub(crate) const HEADER_SIZE: usize = 256;
/// Where [`Control`] starts.
pub(crate) const CONTROL_OFFSET: usize = HEADER_SIZE;
/// Byte offset of the `ready` word inside the header.
pub(crate) const READY_OFFSET: usize = 12;
/// `ready` value once the creator has finished initialising the segment.
pub(crate) const READY: u32 = 0x5245_4459; // "READY"
/// Size of [`SlotHeader`].
pub(crate) const SLOT_HEADER_SIZE: usize = 24;
/// Page size assumed for alignment of the ring (and the largest message alignment).
pub(crate) const PAGE: usize = 4096;
/// Upper bound on capacity (slots).
pub(crate) const MAX_CAPACITY: u64 = crate::options::MAX_CAPACITY;
/// Upper bound on one message's size.
pub(crate) const MAX_MESSAGE: u64 = 1 << 30;
/// Upper bound on a segment's total size (1 TiB).
pub(crate) const MAX_TOTAL: u64 = 1 << 40;
/// Upper bound on senders and on receivers per channel (one bit each in a wait mask).
pub(crate) const MAX_PARTICIPANTS: u32 = 64;
/// Stored type names are truncated to this many bytes.
pub(crate) const TYPE_NAME_LEN: usize = 64;

/// Delivery mode recorded in the header (`Header::mode`).
pub(crate) mod mode {
    /// Each message goes to exactly one receiver.
    pub(crate) const QUEUE: u32 = 1;
    /// Every subscriber receives every message.
    pub(crate) const BROADCAST: u32 = 2;
}

/// Overflow policy recorded in the header (`Header::overflow`).
pub(crate) mod overflow {
    /// Senders wait for the slowest receiver.
    pub(crate) const BLOCK: u32 = 1;
    /// Senders overwrite the oldest message (broadcast only).
    pub(crate) const DROP_OLDEST: u32 = 2;
}

/// The creator's description of the segment. Immutable once `ready` is set.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub(crate) struct Header {
    pub(crate) magic: [u8; 8],
    pub(crate) version: u32,
    pub(crate) ready: u32,
    pub(crate) header_size: u32,
    pub(crate) encoding: u32,
    pub(crate) fingerprint: u64,
    pub(crate) msg_size: u32,
    pub(crate) msg_align: u32,
    pub(crate) max_message: u32,
    pub(crate) mode: u32,
    pub(crate) capacity: u64,
    pub(crate) stride: u64,
    pub(crate) ring_offset: u64,
    pub(crate) total_size: u64,
    pub(crate) max_senders: u32,
    pub(crate) max_receivers: u32,
    pub(crate) creator_pid: u32,
    pub(crate) type_name_len: u32,
    pub(crate) created_unix_ns: u64,
    pub(crate) type_name: [u8; TYPE_NAME_LEN],
    /// Wake strategy of the channel (`crate::wake` codes; 0 is the futex).
    pub(crate) wake: u32,
    /// The strategy's parameter (the signal number for `Signal`, otherwise 0).
    pub(crate) wake_param: u32,
    pub(crate) overflow: u32,
    /// Broadcast: how many past messages a new subscriber is offered.
    pub(crate) history: u32,
    pub(crate) reserved: [u8; 68],
    /// Length of the stored schema (0: none), which starts at `Geometry::schema_offset`.
    pub(crate) schema_len: u32,
}
const _: () = assert!(core::mem::size_of::<Header>() == HEADER_SIZE);
const _: () = assert!(core::mem::offset_of!(Header, ready) == READY_OFFSET);

impl Header {
    pub(crate) fn type_name(&self) -> String {
        let n = (self.type_name_len as usize).min(TYPE_NAME_LEN);
        String::from_utf8_lossy(&self.type_name[..n]).into_owned()
    }
}

/// One value on its own pair of cache lines (128 bytes covers adjacent-line prefetch).
#[repr(C, align(128))]
pub(crate) struct Padded<T>(pub(crate) T);

/// Where one side sleeps: a waiter count (read by the other side on its fast path) and a
/// futex word (bumped by the other side before it wakes sleepers).
#[repr(C)]
pub(crate) struct WaitCell {
    /// One bit per participant (of the sleeping role) that is about to sleep or asleep.
    pub(crate) waiters: AtomicU64,
    /// Bumped before every wake-up, so a sleeper that read it before re-checking the ring
    /// cannot miss one.
    pub(crate) futex: AtomicU32,
    /// Shared state of the channel's wake strategy for this cell (see `crate::wake`).
    pub(crate) wake: WakeArea,
}

/// Per-cell state of a wake strategy that needs some in shared memory (a POSIX semaphore,
/// a System V semaphore set id, a sleeping thread id). Zero in a new segment. Never touched
/// by the ring itself.
#[repr(C)]
pub(crate) struct WakeArea {
    /// 0: uninitialised, 2: ready, `3 + code`: being initialised by participant `code`
    /// (senders 0–63, receivers 64–127); 1: being initialised (older versions).
    pub(crate) state: std::sync::atomic::AtomicU32,
    /// A System V semaphore set id, or a thread id.
    pub(crate) id: std::sync::atomic::AtomicU32,
    /// Room for a process-shared `sem_t`.
    pub(crate) storage: [std::sync::atomic::AtomicU64; 4],
}

#[cfg(any(test, shmbus_loom, feature = "fuzzing"))]
impl WakeArea {
    pub(crate) const fn new() -> WakeArea {
        use std::sync::atomic::{AtomicU32, AtomicU64};
        WakeArea {
            state: AtomicU32::new(0),
            id: AtomicU32::new(0),
            storage: [const { AtomicU64::new(0) }; 4],
        }
    }
}

/// Channel-wide flags.
#[repr(C)]
pub(crate) struct Flags {
    /// Set (sticky) by a participant that cannot issue `membarrier`: the fast paths must use
    /// real fences.
    pub(crate) fence_required: AtomicU32,
}

/// The shared atomics of a channel.
#[repr(C)]
pub(crate) struct Control {
    /// Next position a sender will claim (written by the sender only; read for recovery and
    /// observation, never on the receiver's fast path).
    pub(crate) tail: Padded<AtomicU64>,
    /// Next position the receiver will take (written by the receiver only).
    pub(crate) head: Padded<AtomicU64>,
    /// Receivers sleep here waiting for messages.
    pub(crate) data: Padded<WaitCell>,
    /// Senders sleep here waiting for free slots.
    pub(crate) space: Padded<WaitCell>,
    pub(crate) flags: Padded<Flags>,
}

/// Participant states (low two bits of [`Participant::state`]; the rest is a generation).
pub(crate) mod state {
    /// Never used.
    pub(crate) const FREE: u32 = 0;
    /// Attached.
    pub(crate) const ACTIVE: u32 = 1;
    /// Detached cleanly.
    pub(crate) const LEFT: u32 = 2;
    /// Found dead by a peer.
    pub(crate) const DEAD: u32 = 3;
    pub(crate) const MASK: u32 = 3;
    pub(crate) const GENERATION: u32 = 4;
}

/// One sender or receiver entry.
#[repr(C, align(64))]
pub(crate) struct Participant {
    /// `generation << 2 | state`.
    pub(crate) state: AtomicU32,
    /// The owner's pid (informational: liveness comes from the entry's lock).
    pub(crate) pid: AtomicU32,
    /// Broadcast subscribers: the oldest position this subscriber still needs. Senders
    /// that block wait until every active subscriber's cursor is past a slot's old message.
    pub(crate) cursor: AtomicU64,
}

/// Statistics of one participant, on a line of their own that only the owner writes (with
/// relaxed stores) and that nothing on the hot path reads: observers (`shmbus stat`) only.
/// Cumulative over the entry's owners.
#[repr(C, align(64))]
pub(crate) struct Counters {
    /// Messages committed (senders).
    pub(crate) sent: AtomicU64,
    /// Messages taken or read (receivers).
    pub(crate) received: AtomicU64,
    /// Times a send found the ring full and had to wait (senders).
    pub(crate) full_waits: AtomicU64,
    /// Futex wake-ups issued to the other side.
    pub(crate) wakeups: AtomicU64,
    /// Messages overwritten before this subscriber read them (broadcast, `DropOldest`).
    pub(crate) lagged: AtomicU64,
}

impl Counters {
    /// Adds `n` to a counter that only this participant writes.
    #[inline]
    pub(crate) fn bump(counter: &AtomicU64, n: u64) {
        counter.store(
            counter.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }

    #[cfg(any(test, shmbus_loom, feature = "fuzzing"))]
    pub(crate) fn new() -> Counters {
        Counters {
            sent: AtomicU64::new(0),
            received: AtomicU64::new(0),
            full_waits: AtomicU64::new(0),
            wakeups: AtomicU64::new(0),
            lagged: AtomicU64::new(0),
        }
    }
}

/// The per-slot header, in the same cache line as the start of the payload.
#[repr(C)]
pub(crate) struct SlotHeader {
    /// Sequence word: a position in the low 56 bits and a tag in the top byte; see
    /// [`crate::ring`] for the states.
    pub(crate) seq: AtomicU64,
    /// Broadcast: one bit per subscriber that is reading this slot's message in place.
    /// A sender never writes the payload of a slot with a bit set.
    pub(crate) pins: AtomicU64,
    /// Payload length in bytes.
    pub(crate) len: AtomicU32,
    /// [`slot_flags`].
    pub(crate) flags: AtomicU32,
}

/// Slot flag bits.
pub(crate) mod slot_flags {
    /// The slot carries no message (a loan that was dropped, or reclaimed from a dead
    /// sender): the receiver skips it.
    pub(crate) const SKIP: u32 = 1;
    /// The message came into this channel from outside the machine (a bridge wrote it with
    /// [`RawSender::set_forwarded`](crate::inspect::RawSender::set_forwarded)): bridges do not
    /// carry it out again. Typed receivers ignore the bit.
    pub(crate) const FORWARDED: u32 = 2;
}

#[cfg(not(shmbus_loom))]
const _: () = {
    assert!(core::mem::size_of::<SlotHeader>() == SLOT_HEADER_SIZE);
    assert!(core::mem::size_of::<Participant>() == 64);
    assert!(core::mem::size_of::<Counters>() == 64);
    assert!(core::mem::offset_of!(SlotHeader, len) == 16);
    assert!(core::mem::size_of::<Control>() == 5 * 128);
    assert!(core::mem::size_of::<WaitCell>() <= 128);
    assert!(core::mem::size_of::<Padded<WaitCell>>() == 128);
    assert!(core::mem::offset_of!(Header, wake) == 168);
};

/// Sizes and offsets of a segment, derived from the few numbers that define it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Geometry {
    pub(crate) capacity: u64,
    pub(crate) max_message: u32,
    pub(crate) msg_align: u32,
    pub(crate) payload_offset: u32,
    pub(crate) stride: u64,
    pub(crate) max_senders: u32,
    pub(crate) max_receivers: u32,
    pub(crate) participants_offset: u64,
    pub(crate) counters_offset: u64,
    pub(crate) schema_offset: u64,
    pub(crate) schema_len: u32,
    pub(crate) ring_offset: u64,
    pub(crate) total_size: u64,
}

/// Why a set of numbers does not describe a valid segment.
pub(crate) type GeometryError = String;

const fn round_up(v: u64, to: u64) -> u64 {
    v.div_ceil(to) * to
}

impl Geometry {
    /// Computes the layout; every input is bounds-checked (they may come from shared memory).
    pub(crate) fn new(
        capacity: u64,
        max_message: u64,
        msg_align: u64,
        max_senders: u32,
        max_receivers: u32,
    ) -> Result<Geometry, GeometryError> {
        // At least 2: with one slot, "released for the next lap" (pos + capacity) and
        // "committed" (pos + 1) would be the same sequence number.
        if !(2..=MAX_CAPACITY).contains(&capacity) || !capacity.is_power_of_two() {
            return Err(format!(
                "capacity {capacity} is not a power of two between 2 and {MAX_CAPACITY}"
            ));
        }
        if max_message > MAX_MESSAGE {
            return Err(format!(
                "maximum message size {max_message} exceeds {MAX_MESSAGE}"
            ));
        }
        if msg_align == 0 || !msg_align.is_power_of_two() || msg_align > PAGE as u64 {
            return Err(format!(
                "message alignment {msg_align} is not a power of two up to {PAGE}"
            ));
        }
        for (what, n) in [("senders", max_senders), ("receivers", max_receivers)] {
            if n == 0 || n > MAX_PARTICIPANTS {
                return Err(format!(
                    "maximum {what} {n} is not between 1 and {MAX_PARTICIPANTS}"
                ));
            }
        }
        let payload_offset = round_up(SLOT_HEADER_SIZE as u64, msg_align);
        let stride = round_up(payload_offset + max_message, msg_align.max(64));
        let participants_offset = (CONTROL_OFFSET + core::mem::size_of::<Control>()) as u64;
        let participants_end = participants_offset
            + (max_senders as u64 + max_receivers as u64)
                * core::mem::size_of::<Participant>() as u64;
        let entry_size = core::mem::size_of::<Participant>() as u64;
        let counters_offset = participants_end;
        let schema_offset =
            counters_offset + (max_senders as u64 + max_receivers as u64) * entry_size.max(64);
        let ring_offset = round_up(schema_offset, PAGE as u64);
        let total_size = stride
            .checked_mul(capacity)
            .and_then(|r| r.checked_add(ring_offset))
            .filter(|t| *t <= MAX_TOTAL)
            .ok_or_else(|| format!("capacity {capacity} × slot size {stride} overflows"))?;
        Ok(Geometry {
            capacity,
            max_message: max_message as u32,
            msg_align: msg_align as u32,
            payload_offset: payload_offset as u32,
            stride,
            max_senders,
            max_receivers,
            participants_offset,
            counters_offset,
            schema_offset,
            schema_len: 0,
            ring_offset,
            total_size,
        })
    }

    /// The same geometry with room for a stored schema of `schema_len` bytes before the ring.
    pub(crate) fn with_schema(self, schema_len: u32) -> Result<Geometry, GeometryError> {
        if schema_len as usize > crate::schema::MAX_SCHEMA_LEN {
            return Err(format!("schema of {schema_len} bytes is too large"));
        }
        let ring_offset = round_up(self.schema_offset + schema_len as u64, PAGE as u64);
        let total_size = self
            .stride
            .checked_mul(self.capacity)
            .and_then(|r| r.checked_add(ring_offset))
            .filter(|t| *t <= MAX_TOTAL)
            .ok_or_else(|| {
                format!(
                    "capacity {} × slot size {} overflows",
                    self.capacity, self.stride
                )
            })?;
        Ok(Geometry {
            schema_len,
            ring_offset,
            total_size,
            ..self
        })
    }

    /// Checks a header copied out of shared memory against a mapping of `file_size` bytes,
    /// and returns the geometry it describes.
    pub(crate) fn from_header(h: &Header, file_size: u64) -> Result<Geometry, GeometryError> {
        if h.magic != MAGIC {
            return Err("bad magic: not a shmbus segment".into());
        }
        if h.version != LAYOUT_VERSION {
            return Err(format!(
                "layout version {} (this build reads version {LAYOUT_VERSION})",
                h.version
            ));
        }
        if h.header_size as usize != HEADER_SIZE {
            return Err(format!("header size {} != {HEADER_SIZE}", h.header_size));
        }
        if h.mode != mode::QUEUE && h.mode != mode::BROADCAST {
            return Err(format!("unknown delivery mode {}", h.mode));
        }
        match (h.mode, h.overflow) {
            (_, overflow::BLOCK) | (mode::BROADCAST, overflow::DROP_OLDEST) => {}
            _ => return Err(format!("invalid overflow policy {}", h.overflow)),
        }
        if h.history as u64 >= h.capacity || (h.history != 0 && h.mode != mode::BROADCAST) {
            return Err(format!("history {} does not fit the channel", h.history));
        }
        if h.type_name_len as usize > TYPE_NAME_LEN {
            return Err(format!("type name length {}", h.type_name_len));
        }
        let g = Geometry::new(
            h.capacity,
            h.max_message as u64,
            h.msg_align as u64,
            h.max_senders,
            h.max_receivers,
        )?
        .with_schema(h.schema_len)?;
        if h.stride != g.stride || h.ring_offset != g.ring_offset || h.total_size != g.total_size {
            return Err(format!(
                "stride/ring offset/total size {}/{}/{} do not match the geometry {}/{}/{}",
                h.stride, h.ring_offset, h.total_size, g.stride, g.ring_offset, g.total_size
            ));
        }
        if g.total_size > file_size {
            return Err(format!(
                "segment claims {} bytes but the file has {file_size}",
                g.total_size
            ));
        }
        Ok(g)
    }
}

#[cfg(any(test, shmbus_loom, feature = "fuzzing"))]
impl WaitCell {
    pub(crate) fn new() -> WaitCell {
        WaitCell {
            waiters: AtomicU64::new(0),
            futex: AtomicU32::new(0),
            wake: WakeArea::new(),
        }
    }
}

#[cfg(any(test, shmbus_loom, feature = "fuzzing"))]
impl Control {
    /// A control block in its initial state (used by the heap backing; a new shared segment
    /// is zero-filled, which is the same state).
    pub(crate) fn new() -> Control {
        Control {
            tail: Padded(AtomicU64::new(0)),
            head: Padded(AtomicU64::new(0)),
            data: Padded(WaitCell::new()),
            space: Padded(WaitCell::new()),
            flags: Padded(Flags {
                fence_required: AtomicU32::new(0),
            }),
        }
    }
}

#[cfg(any(test, shmbus_loom, feature = "fuzzing"))]
impl Participant {
    pub(crate) fn new() -> Participant {
        Participant {
            state: AtomicU32::new(state::FREE),
            pid: AtomicU32::new(0),
            cursor: AtomicU64::new(0),
        }
    }
}

#[cfg(any(test, shmbus_loom, feature = "fuzzing"))]
impl SlotHeader {
    /// A slot free for position `index` (its first lap).
    pub(crate) fn new(index: u64) -> SlotHeader {
        SlotHeader {
            seq: AtomicU64::new(index),
            pins: AtomicU64::new(0),
            len: AtomicU32::new(0),
            flags: AtomicU32::new(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn footprint_formula() {
        let g = Geometry::new(1024, 24, 8, 1, 1).unwrap();
        assert_eq!(g.payload_offset, 24);
        assert_eq!(g.stride, 64);
        assert_eq!(g.ring_offset, 4096);
        assert_eq!(g.total_size, 4096 + 1024 * 64);
        let g = Geometry::new(1024, 64, 8, 8, 8).unwrap();
        assert_eq!(g.stride, 128);
        let g = Geometry::new(8, 100, 64, 1, 1).unwrap();
        assert_eq!(g.payload_offset, 64);
        assert_eq!(g.stride, 192);
    }

    #[test]
    fn rejects_bad_numbers() {
        assert!(Geometry::new(3, 8, 8, 1, 1).is_err());
        assert!(Geometry::new(0, 8, 8, 1, 1).is_err());
        assert!(Geometry::new(1, 8, 8, 1, 1).is_err());
        assert!(Geometry::new(8, 8, 3, 1, 1).is_err());
        assert!(Geometry::new(8, 8, 8192, 1, 1).is_err());
        assert!(Geometry::new(8, 8, 8, 0, 1).is_err());
        assert!(Geometry::new(8, MAX_MESSAGE + 1, 8, 1, 1).is_err());
        assert!(Geometry::new(MAX_CAPACITY, MAX_MESSAGE, 8, 1, 1).is_err());
    }
}
