//! A mapped segment, whatever backs it: the header, its validation and initialisation, the
//! typed views the ring uses, and the lock-based lifetime protocol shared by every backing.
//!
//! # Lifetime protocol
//!
//! Every handle keeps its own open file description of a *lock file* and holds, on it:
//!
//! * a shared lock on byte [`LIFE_LOCK`] for as long as it is open. The creator holds it
//!   exclusively while it initialises the segment, so openers wait for initialisation;
//!   a handle that can convert its lock to exclusive is the last one (or the only one left
//!   after crashes);
//! * an exclusive lock on its participant entry's byte ([`entry_lock`]). A peer that finds
//!   the byte unlocked while the entry says "active" knows its owner died (the kernel drops
//!   locks of dead processes), without trusting pids.
//!
//! For a POSIX segment the lock file is the shared-memory object itself; a System V
//! segment has no file, so it gets a companion lock file (see [`super::sysv`]). The last
//! handle to go removes the segment (and the lock file). A segment found with nobody else
//! holding the lifetime lock was left by crashed processes: it is reused if it is valid and
//! of the same type (its committed messages are still delivered), replaced otherwise.
//!
//! The mapping's base address is cached in the segment, so the ring's accessors are the
//! same code for every backing: no dispatch on the fast path.

use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::PathBuf;
use std::ptr::NonNull;
use std::time::{SystemTime, UNIX_EPOCH};

use memmap2::MmapRaw;
use zerocopy::{FromBytes, IntoBytes};

use super::layout::{
    Control, Counters, Geometry, Header, Participant, SlotHeader, HEADER_SIZE, LAYOUT_VERSION,
    MAGIC, MAX_PARTICIPANTS, READY, READY_OFFSET, TYPE_NAME_LEN,
};
use super::{Memory, Role};
use crate::sync::{AtomicU32, Ordering};
use crate::sys::{lock, shm};

/// Byte locked shared by every handle, exclusively by the creator while initialising.
pub(crate) const LIFE_LOCK: u64 = 0;

/// The byte a participant entry's owner holds exclusively.
pub(crate) fn entry_lock(role: Role, index: u32) -> u64 {
    match role {
        Role::Sender => 1 + index as u64,
        Role::Receiver => 1 + MAX_PARTICIPANTS as u64 + index as u64,
    }
}

/// What the opening handle expects of, or creates in, the segment.
#[derive(Debug, Clone)]
pub(crate) struct Spec {
    pub(crate) type_name: &'static str,
    pub(crate) fingerprint: u64,
    pub(crate) encoding: u32,
    pub(crate) msg_size: u32,
    pub(crate) msg_align: u32,
    /// Used only when creating.
    pub(crate) geometry: Geometry,
    /// Delivery mode (`layout::mode`); checked when opening if `mode_explicit`.
    pub(crate) mode: u32,
    pub(crate) mode_explicit: bool,
    /// Overflow policy (`layout::overflow`), used only when creating.
    pub(crate) overflow: u32,
    /// Broadcast history, used only when creating.
    pub(crate) history: u32,
    /// Permission bits and group of created objects, owners accepted when opening.
    pub(crate) access: crate::sys::perm::Access,
    /// The message type's schema in its byte form (`geometry.schema_len` bytes), written
    /// when creating.
    pub(crate) schema: Vec<u8>,
    /// Wake strategy code and parameter (`crate::wake`), used only when creating.
    pub(crate) wake: (u32, u32),
}

/// How to open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OpenMode {
    Create,
    Open,
    OpenOrCreate,
}

/// Why a segment could not be opened (turned into the public `OpenError` by the caller).
#[derive(Debug)]
pub(crate) enum SegmentError {
    NotFound,
    AlreadyExists,
    /// The segment is valid but made for another type.
    TypeMismatch {
        found_name: String,
        found_fingerprint: u64,
        found_encoding: u32,
    },
    Corrupt(String),
    /// The channel's delivery mode is not the one asked for.
    ModeMismatch(String),
    NoSpace(io::Error),
    /// The object (named by the string) belongs to a user the handle does not accept.
    Foreign(String, u32, u32),
    /// A symbolic link or something other than a regular file at the segment's name.
    WrongKind(String),
    Io(&'static str, io::Error),
}

impl SegmentError {
    /// The error for an object that failed the owner check.
    pub(crate) fn perm(object: impl std::fmt::Display, e: crate::sys::perm::PermError) -> Self {
        match e {
            crate::sys::perm::PermError::Foreign { uid, gid } => {
                SegmentError::Foreign(object.to_string(), uid, gid)
            }
            crate::sys::perm::PermError::Io(op, e) => SegmentError::Io(op, e),
        }
    }
}

pub(crate) fn io(op: &'static str) -> impl FnOnce(io::Error) -> SegmentError {
    move |e| SegmentError::Io(op, e)
}

/// The memory of a segment, unmapped (or detached) on drop.
pub(crate) enum Mapping {
    /// A POSIX object mapped with `mmap`.
    Mmap(MmapRaw),
    /// A System V segment attached with `shmat`.
    Sysv(shm::SysvMap),
}

impl Mapping {
    pub(crate) fn base(&self) -> NonNull<u8> {
        let p = match self {
            Mapping::Mmap(m) => m.as_mut_ptr(),
            Mapping::Sysv(m) => m.as_ptr(),
        };
        NonNull::new(p).expect("a mapping is never at address 0")
    }

    pub(crate) fn len(&self) -> usize {
        match self {
            Mapping::Mmap(m) => m.len(),
            Mapping::Sysv(m) => m.len(),
        }
    }
}

/// What backs a segment: how it is found again (duplicate) and removed (last handle).
pub(crate) enum Backing {
    /// A POSIX object `/dev/shm/<object>`; the lock file is the object itself.
    Posix { object: String },
    /// A System V segment `id`, with its companion lock file at `lock_path`.
    Sysv { id: i32, lock_path: PathBuf },
}

/// An open segment: its memory, its validated header and geometry, and this handle's lock
/// file description.
pub(crate) struct Segment {
    /// Cached `map` base: the accessors below use it without looking at the backing.
    base: NonNull<u8>,
    geometry: Geometry,
    header: Header,
    /// Opened with nobody else in it although it was ready: left by processes that are gone.
    /// We hold the lifetime lock exclusively until [`share`](Self::share).
    left_behind: bool,
    lock: File,
    backing: Backing,
    /// Run by the handle that removes the segment (the last one).
    on_unlink: Option<Box<dyn FnOnce() + Send>>,
    // Kept for its own drop (unmap or detach), which runs after `Drop::drop` has run the
    // lifetime protocol; `base` points into it.
    _map: Mapping,
}

// SAFETY: the mapping is shared memory whose every access goes through atomics or through
// slot payloads owned per the ring protocol; the lock file is an ordinary descriptor; the
// `on_unlink` closure is `Send` and only reached through `&mut self`.
unsafe impl Send for Segment {}
// SAFETY: as above.
unsafe impl Sync for Segment {}

/// Whether the header's ready word (at the start of `map`, at least `HEADER_SIZE` bytes
/// long) says the creator finished.
pub(crate) fn is_ready(map: &Mapping) -> bool {
    assert!(map.len() >= HEADER_SIZE);
    // SAFETY: the mapping is at least HEADER_SIZE bytes and page aligned, so the ready word
    // is in bounds and aligned; it is only accessed atomically.
    let word = unsafe { &*(map.base().as_ptr().add(READY_OFFSET) as *const AtomicU32) };
    // SYNC POINT: pairs with the creator's Release store in `Segment::create`.
    word.load(Ordering::Acquire) == READY
}

impl Segment {
    /// Initialises the freshly created, zero-filled memory `map` of `spec.geometry.total_size`
    /// bytes, whose lifetime lock this handle holds exclusively, and lets others in
    /// (downgrades the lock to shared).
    pub(crate) fn create(
        map: Mapping,
        lock: File,
        backing: Backing,
        spec: &Spec,
    ) -> Result<Segment, SegmentError> {
        let g = spec.geometry;
        assert!(map.len() as u64 >= g.total_size);
        let mut type_name = [0u8; TYPE_NAME_LEN];
        let name = spec.type_name.as_bytes();
        let n = name.len().min(TYPE_NAME_LEN);
        type_name[..n].copy_from_slice(&name[..n]);
        let header = Header {
            magic: MAGIC,
            version: LAYOUT_VERSION,
            ready: 0,
            header_size: HEADER_SIZE as u32,
            encoding: spec.encoding,
            fingerprint: spec.fingerprint,
            msg_size: spec.msg_size,
            msg_align: spec.msg_align,
            max_message: g.max_message,
            mode: spec.mode,
            capacity: g.capacity,
            stride: g.stride,
            ring_offset: g.ring_offset,
            total_size: g.total_size,
            max_senders: g.max_senders,
            max_receivers: g.max_receivers,
            creator_pid: crate::sys::pid(),
            type_name_len: n as u32,
            created_unix_ns: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64),
            type_name,
            wake: spec.wake.0,
            wake_param: spec.wake.1,
            overflow: spec.overflow,
            history: spec.history,
            reserved: [0; 68],
            schema_len: g.schema_len,
        };
        let seg = Segment {
            base: map.base(),
            geometry: g,
            header,
            left_behind: false,
            lock,
            backing,
            on_unlink: None,
            _map: map,
        };
        let bytes = header.as_bytes();
        // SAFETY: the mapping holds at least HEADER_SIZE bytes; no other process reads the
        // header before `ready` is set below (openers wait on our exclusive lock and check
        // `ready`).
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), seg.base.as_ptr(), bytes.len());
        }
        debug_assert_eq!(spec.schema.len(), g.schema_len as usize);
        let schema = &spec.schema[..(g.schema_len as usize).min(spec.schema.len())];
        // SAFETY: [schema_offset, schema_offset + schema_len) lies before ring_offset, inside
        // the mapping; nobody reads it before `ready` is set.
        unsafe {
            std::ptr::copy_nonoverlapping(
                schema.as_ptr(),
                seg.base.as_ptr().add(g.schema_offset as usize),
                schema.len(),
            );
        }
        // The memory is zero-filled: control block and participants start in their initial
        // state. Slots start free for their first lap.
        for pos in 0..g.capacity {
            seg.slot(pos).seq.store(pos, Ordering::Relaxed);
        }
        // SYNC POINT: everything above happens-before an opener's Acquire load of `ready`.
        seg.ready_word().store(READY, Ordering::Release);
        // Downgrade to shared: openers may come in.
        lock::try_lock(seg.lock.as_fd(), LIFE_LOCK, lock::Kind::Shared).map_err(io("lock"))?;
        Ok(seg)
    }

    /// Validates an existing, ready segment of `size` bytes (as the kernel reports it;
    /// `map` covers them) against `spec`. On success, checks whether this handle is alone
    /// in it (then it is left behind and the lifetime lock stays exclusive until
    /// [`share`](Self::share)). On failure, the lock file and mapping are handed back.
    #[allow(clippy::result_large_err)]
    pub(crate) fn attach(
        map: Mapping,
        lock: File,
        backing: Backing,
        spec: &Spec,
        size: u64,
    ) -> Result<Segment, (File, Backing, SegmentError)> {
        debug_assert!(map.len() as u64 >= size && size >= HEADER_SIZE as u64);
        let header = copy_header(map.base(), map.len());
        let geometry = match validate(&header, spec, size) {
            Ok(g) => g,
            Err(e) => return Err((lock, backing, e)),
        };
        let alone = match lock::try_lock(lock.as_fd(), LIFE_LOCK, lock::Kind::Exclusive) {
            Ok(alone) => alone,
            Err(e) => return Err((lock, backing, SegmentError::Io("lock", e))),
        };
        // If `alone`, the segment was left behind by processes that are gone; we keep the
        // exclusive lock until the caller has recovered it (`share`).
        Ok(Segment {
            base: map.base(),
            geometry,
            header,
            left_behind: alone,
            lock,
            backing,
            on_unlink: None,
            _map: map,
        })
    }

    /// Whether the segment was left behind by processes that are all gone (we are alone in
    /// it and hold it exclusively until [`share`](Self::share)).
    pub(crate) fn left_behind(&self) -> bool {
        self.left_behind
    }

    /// Opens a second handle on the same segment, with its own open file description of the
    /// lock file (its own locks) and its own mapping, even if the names were removed
    /// meanwhile.
    pub(crate) fn duplicate(&self) -> io::Result<Segment> {
        let path = format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(&self.lock)
        );
        let lock = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(path)?;
        lock::lock_wait(lock.as_fd(), LIFE_LOCK, lock::Kind::Shared)?;
        let total = self.geometry.total_size;
        let (map, backing) = match &self.backing {
            Backing::Posix { object } => (
                Mapping::Mmap(shm::map(&lock, total as usize)?),
                Backing::Posix {
                    object: object.clone(),
                },
            ),
            Backing::Sysv { id, lock_path } => (
                Mapping::Sysv(shm::sysv_attach(*id, total)?),
                Backing::Sysv {
                    id: *id,
                    lock_path: lock_path.clone(),
                },
            ),
        };
        Ok(Segment {
            base: map.base(),
            geometry: self.geometry,
            header: self.header,
            left_behind: false,
            lock,
            backing,
            on_unlink: None,
            _map: map,
        })
    }

    /// The channel's delivery mode, overflow policy and history (validated).
    pub(crate) fn delivery(&self) -> (u32, u32, u32) {
        (self.header.mode, self.header.overflow, self.header.history)
    }

    /// The channel's wake strategy code and parameter, as recorded in the header.
    pub(crate) fn wake(&self) -> (u32, u32) {
        (self.header.wake, self.header.wake_param)
    }

    /// A name that identifies the segment among this machine's channels, for names derived
    /// from it (the POSIX object's name, or the System V lock file's path).
    pub(crate) fn object(&self) -> String {
        match &self.backing {
            Backing::Posix { object } => object.clone(),
            Backing::Sysv { lock_path, .. } => lock_path.to_string_lossy().into_owned(),
        }
    }

    /// Registers what this handle must do if it is the one that removes the segment (the
    /// last handle, for either backing).
    pub(crate) fn on_unlink(&mut self, f: Box<dyn FnOnce() + Send>) {
        self.on_unlink = Some(f);
    }

    /// Lets other handles in (after recovering a left-behind segment).
    pub(crate) fn share(&mut self) -> io::Result<()> {
        if self.left_behind {
            lock::try_lock(self.lock.as_fd(), LIFE_LOCK, lock::Kind::Shared)?;
            self.left_behind = false;
        }
        Ok(())
    }

    fn ready_word(&self) -> &AtomicU32 {
        // SAFETY: READY_OFFSET + 4 <= HEADER_SIZE <= mapping length; page-aligned base, so
        // the word is 4-byte aligned; it is only ever accessed atomically.
        unsafe { &*(self.base.as_ptr().add(READY_OFFSET) as *const AtomicU32) }
    }
}

/// Checks a header copied out of a segment of `size` bytes against what we expect.
fn validate(header: &Header, spec: &Spec, size: u64) -> Result<Geometry, SegmentError> {
    let geometry = Geometry::from_header(header, size).map_err(SegmentError::Corrupt)?;
    if header.fingerprint != spec.fingerprint
        || header.encoding != spec.encoding
        || header.msg_size != spec.msg_size
        || header.msg_align != spec.msg_align
    {
        return Err(SegmentError::TypeMismatch {
            found_name: header.type_name(),
            found_fingerprint: header.fingerprint,
            found_encoding: header.encoding,
        });
    }
    if spec.mode_explicit && header.mode != spec.mode {
        let reason = format!(
            "the channel was created for {} delivery",
            if header.mode == super::layout::mode::BROADCAST {
                "broadcast"
            } else {
                "queue"
            }
        );
        return Err(SegmentError::ModeMismatch(reason));
    }
    if spec.encoding == crate::Encoding::ZeroCopy as u32 && header.max_message != spec.msg_size {
        let reason = format!(
            "zero-copy slots hold {} bytes, the type has {}",
            header.max_message, spec.msg_size
        );
        return Err(SegmentError::Corrupt(reason));
    }
    Ok(geometry)
}

/// Copies the header out of a mapping of `len >= HEADER_SIZE` bytes at `base`; only the copy
/// is validated and used afterwards.
pub(crate) fn copy_header(base: NonNull<u8>, len: usize) -> Header {
    assert!(len >= HEADER_SIZE);
    let mut raw = [0u8; HEADER_SIZE];
    // SAFETY: the mapping has at least HEADER_SIZE bytes (asserted). Other processes may
    // write them concurrently; we only copy bytes, which any value allows.
    unsafe { std::ptr::copy_nonoverlapping(base.as_ptr(), raw.as_mut_ptr(), HEADER_SIZE) };
    Header::read_from_bytes(&raw).expect("HEADER_SIZE bytes")
}

/// Copies the header out of a read-only mapping and validates it against the segment's
/// `size` (for observers that do not attach).
pub(crate) fn read_header(map: &Mapping, size: u64) -> Result<(Header, Geometry), SegmentError> {
    assert!(size as usize <= map.len());
    let header = copy_header(map.base(), map.len());
    let geometry = Geometry::from_header(&header, size).map_err(SegmentError::Corrupt)?;
    Ok((header, geometry))
}

/// The position of a participant in the participant table (and the counters table).
#[inline]
pub(crate) fn entry_index(g: &Geometry, role: Role, index: u32) -> u64 {
    (match role {
        Role::Sender => {
            assert!(index < g.max_senders);
            index
        }
        Role::Receiver => {
            assert!(index < g.max_receivers);
            g.max_senders + index
        }
    }) as u64
}

/// Unlinks `path` if it still refers to `file` (not a newer file of that name).
/// Returns whether it did.
pub(crate) fn unlink_if_same(path: &std::path::Path, file: &File) -> io::Result<bool> {
    let ours = file.metadata()?;
    let current = std::fs::symlink_metadata(path)?;
    if ours.ino() == current.ino() && ours.dev() == current.dev() {
        std::fs::remove_file(path)?;
        return Ok(true);
    }
    Ok(false)
}

impl Drop for Segment {
    fn drop(&mut self) {
        // The last handle removes the segment. Release our shared lock first, then try for
        // an exclusive one: of several handles dropping at once, the one that tries last
        // succeeds (all others have released), so the segment never outlives every handle.
        // Openers waiting for our lock see a link count of zero and start over.
        let fd = self.lock.as_fd();
        let _ = lock::unlock(fd, LIFE_LOCK);
        if let Ok(true) = lock::try_lock(fd, LIFE_LOCK, lock::Kind::Exclusive) {
            let removed = match &self.backing {
                Backing::Posix { object } => {
                    matches!(unlink_if_same(&shm::path_of(object), &self.lock), Ok(true))
                }
                Backing::Sysv { id, lock_path, .. } => {
                    // The segment first (it goes when the last process detaches; its key
                    // is free at once), then the lock file that guards the key.
                    let _ = shm::sysv_remove(*id);
                    let _ = unlink_if_same(lock_path, &self.lock);
                    true
                }
            };
            if removed {
                // What the wake strategy left outside the segment (a System V semaphore
                // set) goes with it.
                if let Some(f) = self.on_unlink.take() {
                    f();
                }
            }
        }
        // `map` is unmapped (detached) after this, when the fields drop.
    }
}

impl Memory for Segment {
    #[inline]
    fn geometry(&self) -> &Geometry {
        &self.geometry
    }

    #[inline]
    fn control(&self) -> &Control {
        // SAFETY: CONTROL_OFFSET + size_of::<Control>() <= participants_offset <= ring_offset
        // <= total_size <= mapping length (validated); the base is page aligned and
        // CONTROL_OFFSET is a multiple of 128, Control's alignment. Control consists only of
        // atomics, so shared references to memory that other processes mutate are fine.
        unsafe { &*(self.base.as_ptr().add(super::layout::CONTROL_OFFSET) as *const Control) }
    }

    #[inline]
    fn participant(&self, role: Role, index: u32) -> &Participant {
        let g = &self.geometry;
        let entry = entry_index(g, role, index);
        let offset = g.participants_offset + entry * std::mem::size_of::<Participant>() as u64;
        debug_assert!(offset + 64 <= g.ring_offset);
        // SAFETY: the entry index is below max_senders + max_receivers, so the entry lies
        // inside [participants_offset, ring_offset), within the validated mapping; 64-byte
        // aligned (participants_offset is a multiple of 128); atomics only.
        unsafe { &*(self.base.as_ptr().add(offset as usize) as *const Participant) }
    }

    #[inline]
    fn counters(&self, role: Role, index: u32) -> &Counters {
        let g = &self.geometry;
        let offset = g.counters_offset
            + entry_index(g, role, index) * std::mem::size_of::<Counters>() as u64;
        debug_assert!(offset + 64 <= g.schema_offset);
        // SAFETY: the entry index is below max_senders + max_receivers, so the line lies
        // inside [counters_offset, schema_offset), within the validated mapping; 64-byte
        // aligned (counters_offset is participants_offset plus whole 64-byte entries);
        // atomics only.
        unsafe { &*(self.base.as_ptr().add(offset as usize) as *const Counters) }
    }

    #[inline]
    fn slot(&self, pos: u64) -> &SlotHeader {
        let g = &self.geometry;
        let offset = g.ring_offset + (pos & (g.capacity - 1)) * g.stride;
        debug_assert!(offset + g.stride <= g.total_size);
        // SAFETY: the masked index is below capacity, so the slot lies inside the ring,
        // within the validated mapping; stride and ring_offset are multiples of 64, so the
        // header is aligned; it consists of atomics only.
        unsafe { &*(self.base.as_ptr().add(offset as usize) as *const SlotHeader) }
    }

    #[inline]
    fn payload(&self, pos: u64) -> *mut u8 {
        let g = &self.geometry;
        let offset = g.ring_offset + (pos & (g.capacity - 1)) * g.stride + g.payload_offset as u64;
        debug_assert!(offset + g.max_message as u64 <= g.total_size);
        // SAFETY: as for `slot`: `payload_offset + max_message <= stride`, so the payload
        // lies inside the slot, within the mapping.
        unsafe { self.base.as_ptr().add(offset as usize) }
    }

    fn try_own(&self, role: Role, index: u32) -> io::Result<bool> {
        lock::try_lock(
            self.lock.as_fd(),
            entry_lock(role, index),
            lock::Kind::Exclusive,
        )
    }

    fn disown(&self, role: Role, index: u32) {
        let _ = lock::unlock(self.lock.as_fd(), entry_lock(role, index));
    }

    fn owned_by_other(&self, role: Role, index: u32) -> bool {
        // If the check itself fails, assume alive: never declare a live peer dead.
        lock::is_held_by_other(self.lock.as_fd(), entry_lock(role, index)).unwrap_or(true)
    }
}
