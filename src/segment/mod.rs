//! Shared segments: the memory a channel lives in.
//!
//! One trait, [`Memory`], gives the ring typed access to the control block, the participant
//! table and the slots; one file per backing implements it:
//!
//! * [`mapped`]: what every mapped backing shares: the header's initialisation and
//!   validation, the lock-based lifetime protocol, and the one [`Memory`] implementation
//!   over a mapping. This is the only place that turns raw mapped bytes into references.
//! * [`posix`]: a POSIX shared-memory object in `/dev/shm`, mapped by every process of the
//!   channel (the default).
//! * [`sysv`]: a System V shared-memory segment (`shmget`/`shmat`) with a companion lock
//!   file.
//! * [`heap`]: the same structures allocated on the heap of one process, so the ring runs
//!   under loom and in plain unit tests.
//!
//! # Trust boundary
//!
//! A segment is writable by every process that can open it. Nothing read from it is trusted:
//! the header is copied out and validated against the mapping's size before use, slot
//! positions are always masked into range, and every sequence number and length read from a
//! slot is checked; anything unexpected is reported as corruption, never acted upon.

#[cfg(any(test, shmbus_loom, feature = "fuzzing"))]
pub(crate) mod heap;
pub(crate) mod layout;
#[cfg(not(shmbus_loom))]
pub(crate) mod mapped;
#[cfg(not(shmbus_loom))]
pub(crate) mod posix;
#[cfg(not(shmbus_loom))]
pub(crate) mod sysv;
#[cfg(not(shmbus_loom))]
pub(crate) mod view;

#[cfg(not(shmbus_loom))]
pub(crate) use mapped::{OpenMode, Segment, SegmentError, Spec};

use layout::{Control, Counters, Geometry, Participant, SlotHeader};

/// Which side of a channel a participant is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    Sender,
    Receiver,
}

impl Role {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Role::Sender => "sender",
            Role::Receiver => "receiver",
        }
    }
}

/// What the ring needs from the memory it runs in.
pub(crate) trait Memory {
    /// Sizes and offsets (validated).
    fn geometry(&self) -> &Geometry;
    /// The shared atomics.
    fn control(&self) -> &Control;
    /// Entry `index` (< max for the role) of the participant table.
    fn participant(&self, role: Role, index: u32) -> &Participant;
    /// The statistics line of entry `index` (< max for the role).
    fn counters(&self, role: Role, index: u32) -> &Counters;
    /// The header of the slot for position `pos` (masked into range).
    fn slot(&self, pos: u64) -> &SlotHeader;
    /// The payload of the slot for position `pos`: `max_message` bytes, aligned for the
    /// message type.
    fn payload(&self, pos: u64) -> *mut u8;

    /// Tries to become the owner of a participant entry. `Ok(false)`: someone else owns it.
    fn try_own(&self, role: Role, index: u32) -> std::io::Result<bool>;
    /// Gives up ownership of an entry.
    fn disown(&self, role: Role, index: u32);
    /// Whether another handle (in any process) owns the entry. Owners that died no longer
    /// own anything.
    fn owned_by_other(&self, role: Role, index: u32) -> bool;

    /// Wakes the participants of `role` whose bits are set in `sleepers` by other means
    /// than the futex (a wake strategy, see `crate::wake`). Returns `false` when the caller
    /// must wake the futex (the default).
    #[inline]
    fn wake_hook(&self, role: Role, sleepers: u64) -> bool {
        let _ = (role, sleepers);
        false
    }
}
