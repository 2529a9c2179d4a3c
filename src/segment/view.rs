//! A read-only view of a segment, for observers (`shmbus::inspect`, the `shmbus` tool).
//!
//! The object is opened and mapped read-only; the observer takes no lock at all, so it is
//! not a participant, does not count as a handle (it never keeps a segment alive nor
//! removes one) and cannot disturb the channel. The header is validated exactly as
//! an attached [`Segment`](super::mapped::Segment) validates it
//! ([`read_header`](super::mapped::read_header)).
//!
//! Liveness comes from the locks of the real handles: a participant is alive while its
//! entry lock is held, a segment is stale when nobody holds its lifetime lock.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use super::layout::{
    Control, Counters, Geometry, Header, Participant, SlotHeader, CONTROL_OFFSET, HEADER_SIZE,
    READY, READY_OFFSET,
};
use super::mapped::{entry_index, entry_lock, read_header, Mapping, SegmentError, LIFE_LOCK};
use super::Role;
use crate::sync::{fence, AtomicU32, Ordering};
use crate::sys::{lock, shm};

/// A read-only mapping of a valid, ready segment.
pub(crate) struct SegmentView {
    file: File,
    map: Mapping,
    header: Header,
    geometry: Geometry,
}

impl SegmentView {
    /// Opens the object `object` (already prefixed) read-only and validates its header.
    pub(crate) fn open(object: &str) -> Result<SegmentView, SegmentError> {
        let file = shm::open_read_only(object).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => SegmentError::NotFound,
            _ => SegmentError::Io("open", e),
        })?;
        let st = shm::stat(&file).map_err(|e| SegmentError::Io("fstat", e))?;
        if !st.is_file {
            return Err(SegmentError::Corrupt("not a regular file".into()));
        }
        if st.size < HEADER_SIZE as u64 {
            return Err(SegmentError::Corrupt(
                "smaller than a header (being created, or not a shmbus segment)".into(),
            ));
        }
        let map = Mapping::Mmap(
            shm::map_read_only(&file, st.size as usize).map_err(|e| SegmentError::Io("mmap", e))?,
        );
        Self::validate(file, map, st.size)
    }

    /// Opens the System V segment with `key`, whose companion lock file (holding the
    /// handles' locks) is `lock_path`; attaches it read-only and validates its header.
    pub(crate) fn open_sysv(lock_path: &Path, key: i32) -> Result<SegmentView, SegmentError> {
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
            .open(lock_path)
            .map_err(|e| match e.kind() {
                io::ErrorKind::NotFound => SegmentError::NotFound,
                _ => SegmentError::Io("open lock file", e),
            })?;
        if !file
            .metadata()
            .map_err(|e| SegmentError::Io("fstat", e))?
            .is_file()
        {
            return Err(SegmentError::Corrupt(
                "lock file is not a regular file".into(),
            ));
        }
        let id = shm::sysv_lookup(key)
            .map_err(|e| SegmentError::Io("shmget", e))?
            .ok_or(SegmentError::NotFound)?;
        let size = shm::sysv_stat(id)
            .map_err(|e| SegmentError::Io("shmctl", e))?
            .size;
        if size < HEADER_SIZE as u64 {
            return Err(SegmentError::Corrupt(
                "smaller than a header (not a shmbus segment)".into(),
            ));
        }
        let map = Mapping::Sysv(
            shm::sysv_attach_read_only(id, size).map_err(|e| SegmentError::Io("shmat", e))?,
        );
        Self::validate(file, map, size)
    }

    fn validate(file: File, map: Mapping, size: u64) -> Result<SegmentView, SegmentError> {
        // SAFETY: the mapping holds at least HEADER_SIZE bytes and is page aligned, so the
        // ready word is in bounds and aligned; it is only accessed atomically.
        let ready = unsafe { &*(map.base().as_ptr().add(READY_OFFSET) as *const AtomicU32) };
        if ready.load(Ordering::Acquire) != READY {
            return Err(SegmentError::Corrupt("not initialised (yet)".into()));
        }
        let (header, geometry) = read_header(&map, size)?;
        Ok(SegmentView {
            file,
            map,
            header,
            geometry,
        })
    }

    fn base(&self) -> *mut u8 {
        self.map.base().as_ptr()
    }

    pub(crate) fn header(&self) -> &Header {
        &self.header
    }

    pub(crate) fn geometry(&self) -> &Geometry {
        &self.geometry
    }

    /// Whether no handle holds the segment: the processes that used it are all gone.
    pub(crate) fn stale(&self) -> io::Result<bool> {
        Ok(!lock::is_held_by_other(self.file.as_fd(), LIFE_LOCK)?)
    }

    /// Whether the owner of an entry is alive (holds the entry's lock).
    pub(crate) fn alive(&self, role: Role, index: u32) -> bool {
        lock::is_held_by_other(self.file.as_fd(), entry_lock(role, index)).unwrap_or(true)
    }

    /// The stored schema bytes (empty if none).
    pub(crate) fn schema_bytes(&self) -> Vec<u8> {
        let g = &self.geometry;
        let mut out = vec![0u8; g.schema_len as usize];
        // SAFETY: [schema_offset, schema_offset + schema_len) was validated to lie before
        // ring_offset, inside the mapping; it is written once before `ready`, and copying
        // bytes is fine whatever they are.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.base().add(g.schema_offset as usize),
                out.as_mut_ptr(),
                out.len(),
            );
        }
        out
    }

    pub(crate) fn control(&self) -> &Control {
        // SAFETY: as in PosixSegment::control: in bounds, aligned, atomics only (read here).
        unsafe { &*(self.base().add(CONTROL_OFFSET) as *const Control) }
    }

    pub(crate) fn participant(&self, role: Role, index: u32) -> &Participant {
        let g = &self.geometry;
        let offset = g.participants_offset + entry_index(g, role, index) * 64;
        // SAFETY: as in PosixSegment::participant: the index is in range (asserted by
        // entry_index), so the entry lies in the validated mapping; aligned; atomics only.
        unsafe { &*(self.base().add(offset as usize) as *const Participant) }
    }

    pub(crate) fn counters(&self, role: Role, index: u32) -> &Counters {
        let g = &self.geometry;
        let offset = g.counters_offset + entry_index(g, role, index) * 64;
        // SAFETY: as in PosixSegment::counters.
        unsafe { &*(self.base().add(offset as usize) as *const Counters) }
    }

    pub(crate) fn slot(&self, pos: u64) -> &SlotHeader {
        let g = &self.geometry;
        let offset = g.ring_offset + (pos & (g.capacity - 1)) * g.stride;
        // SAFETY: as in PosixSegment::slot: the masked index is below capacity.
        unsafe { &*(self.base().add(offset as usize) as *const SlotHeader) }
    }

    /// A racy snapshot of the message committed at position `pos`, without taking it:
    /// `None` if the slot does not hold that committed message (not yet committed, already
    /// reused, taken and released, skipped) or if it changed while it was copied.
    pub(crate) fn snapshot(&self, pos: u64) -> Snapshot {
        let g = &self.geometry;
        let slot = self.slot(pos);
        let seq = slot.seq.load(Ordering::Acquire);
        let committed = pos + 1;
        // Committed (possibly being read in place by a queue receiver: tag bits set).
        if seq & crate::ring::POS_MASK != committed || seq >> crate::ring::POS_BITS & 0x80 != 0 {
            return if seq & crate::ring::POS_MASK > committed {
                Snapshot::Gone
            } else {
                Snapshot::NotYet
            };
        }
        let len = slot.len.load(Ordering::Relaxed);
        let flags = slot.flags.load(Ordering::Relaxed);
        let len = (len.min(g.max_message)) as usize;
        let mut out = vec![0u8; len];
        let base = g.ring_offset + (pos & (g.capacity - 1)) * g.stride + g.payload_offset as u64;
        for (i, b) in out.iter_mut().enumerate() {
            // SAFETY: `base + len <= base + max_message`, inside the slot, inside the
            // mapping. A sender may be writing these bytes concurrently (once it reclaimed
            // the slot); volatile reads of `u8` observe some value, and the sequence word is
            // re-checked below, which discards any such copy.
            *b = unsafe { std::ptr::read_volatile(self.base().add(base as usize + i)) };
        }
        // SYNC POINT: the copy happens-before the re-check (seqlock reader).
        fence(Ordering::Acquire);
        let again = slot.seq.load(Ordering::Relaxed);
        if again & crate::ring::POS_MASK != committed || again >> crate::ring::POS_BITS & 0x80 != 0
        {
            return Snapshot::Gone;
        }
        if flags & super::layout::slot_flags::SKIP != 0 {
            return Snapshot::Skipped;
        }
        Snapshot::Message(out)
    }
}

/// What [`SegmentView::snapshot`] found.
pub(crate) enum Snapshot {
    /// The message's bytes.
    Message(Vec<u8>),
    /// A position without a message (a dropped loan).
    Skipped,
    /// Not committed yet.
    NotYet,
    /// Already overwritten or released: the observer fell behind.
    Gone,
}
