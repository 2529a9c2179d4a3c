//! A segment in a POSIX shared-memory object (`/dev/shm/<prefix><name>`).
//!
//! # Lifetime protocol
//!
//! Every handle keeps its own open file description of the object and holds, on it:
//!
//! * a shared lock on byte [`LIFE_LOCK`] for as long as it is open. The creator holds it
//!   exclusively while it initialises the segment, so openers wait for initialisation;
//!   a handle that can convert its lock to exclusive is the last one (or the only one left
//!   after crashes);
//! * an exclusive lock on its participant entry's byte. A peer that finds the byte unlocked
//!   while the entry says "active" knows its owner died (the kernel drops locks of dead
//!   processes), without trusting pids.
//!
//! The last handle to go unlinks the object. A segment found with nobody else holding the
//! lifetime lock was left by crashed processes: it is reused if it is valid and of the same
//! type (its committed messages are still delivered), replaced otherwise.

use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

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
    pub(crate) file_mode: u32,
    /// The message type's schema in its byte form (`geometry.schema_len` bytes), written
    /// when creating.
    pub(crate) schema: Vec<u8>,
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
    Io(&'static str, io::Error),
}

pub(crate) struct PosixSegment {
    object: String,
    file: File,
    map: MmapRaw,
    geometry: Geometry,
    header: Header,
    /// Opened with nobody else in it although it was ready: left by processes that are gone.
    /// We hold the lifetime lock exclusively until [`share`](Self::share).
    left_behind: bool,
}

// SAFETY: the mapping is shared memory whose every access goes through atomics or through
// slot payloads owned per the ring protocol; the file is an ordinary descriptor.
unsafe impl Send for PosixSegment {}
// SAFETY: as above.
unsafe impl Sync for PosixSegment {}

fn io(op: &'static str) -> impl FnOnce(io::Error) -> SegmentError {
    move |e| SegmentError::Io(op, e)
}

impl PosixSegment {
    /// Opens or creates the object `object` (already validated and prefixed).
    pub(crate) fn open(object: &str, spec: &Spec, mode: OpenMode) -> Result<Self, SegmentError> {
        let start = Instant::now();
        let mut not_ready_since: Option<Instant> = None;
        loop {
            if start.elapsed() > Duration::from_secs(10) {
                return Err(SegmentError::Io(
                    "open",
                    io::Error::new(io::ErrorKind::TimedOut, "segment never became ready"),
                ));
            }
            if mode != OpenMode::Open {
                match shm::create_exclusive(object, spec.file_mode) {
                    Ok(file) => match Self::initialise(object, file, spec)? {
                        Some(seg) => return Ok(seg),
                        None => continue,
                    },
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                        if mode == OpenMode::Create {
                            return Err(SegmentError::AlreadyExists);
                        }
                    }
                    Err(e) => return Err(SegmentError::Io("create", e)),
                }
            }
            let file = match shm::open_existing(object) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    if mode == OpenMode::Open {
                        return Err(SegmentError::NotFound);
                    }
                    continue;
                }
                Err(e) => return Err(SegmentError::Io("open", e)),
            };
            lock::lock_wait(file.as_fd(), LIFE_LOCK, lock::Kind::Shared).map_err(io("lock"))?;
            let st = shm::stat(&file).map_err(io("fstat"))?;
            if st.links == 0 {
                continue; // unlinked by its last handle while we waited: start over
            }
            if !st.is_file {
                return Err(SegmentError::Corrupt("not a regular file".into()));
            }
            let ready = st.size >= HEADER_SIZE as u64 && {
                let map = shm::map(&file, HEADER_SIZE).map_err(io("mmap"))?;
                // SAFETY: the mapping is at least HEADER_SIZE bytes and page aligned, so the
                // ready word is in bounds and aligned; it is only accessed atomically.
                let word = unsafe { &*(map.as_ptr().add(READY_OFFSET) as *const AtomicU32) };
                word.load(Ordering::Acquire) == READY
            };
            if !ready {
                // The creator has not taken its lock yet, or died while initialising.
                let since = *not_ready_since.get_or_insert_with(Instant::now);
                if since.elapsed() > Duration::from_millis(200)
                    && lock::try_lock(file.as_fd(), LIFE_LOCK, lock::Kind::Exclusive)
                        .map_err(io("lock"))?
                {
                    // Nobody else is in it and it never became ready: remove it.
                    let _ = unlink_if_same(object, &file);
                }
                drop(file);
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
            match Self::attach_existing(object, file, spec, st.size) {
                Ok(seg) => return Ok(seg),
                Err((file, err)) => {
                    // A segment nobody else uses is stale: replace it rather than fail.
                    let stale = lock::try_lock(file.as_fd(), LIFE_LOCK, lock::Kind::Exclusive)
                        .map_err(io("lock"))?;
                    if stale && mode != OpenMode::Open {
                        tracing::info!(object, reason = ?err, "replacing a stale segment");
                        let _ = unlink_if_same(object, &file);
                        continue;
                    }
                    return Err(err);
                }
            }
        }
    }

    /// Initialises a freshly created object. `Ok(None)`: it was removed meanwhile, retry.
    fn initialise(object: &str, file: File, spec: &Spec) -> Result<Option<Self>, SegmentError> {
        lock::lock_wait(file.as_fd(), LIFE_LOCK, lock::Kind::Exclusive).map_err(io("lock"))?;
        if shm::stat(&file).map_err(io("fstat"))?.links == 0 {
            return Ok(None);
        }
        let g = spec.geometry;
        if let Err(e) = shm::reserve(&file, g.total_size) {
            let _ = shm::unlink(object);
            return Err(match e.raw_os_error() {
                Some(libc::ENOSPC) | Some(libc::EFBIG) => SegmentError::NoSpace(e),
                _ => SegmentError::Io("fallocate", e),
            });
        }
        let map = match shm::map(&file, g.total_size as usize) {
            Ok(m) => m,
            Err(e) => {
                let _ = shm::unlink(object);
                return Err(SegmentError::Io("mmap", e));
            }
        };
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
            reserved_wake: [0; 8],
            overflow: spec.overflow,
            history: spec.history,
            reserved: [0; 68],
            schema_len: g.schema_len,
        };
        let seg = PosixSegment {
            object: object.to_owned(),
            file,
            map,
            geometry: g,
            header,
            left_behind: false,
        };
        let bytes = header.as_bytes();
        // SAFETY: the mapping holds at least HEADER_SIZE bytes; no other process reads the
        // header before `ready` is set below (openers wait on our exclusive lock and check
        // `ready`).
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), seg.map.as_mut_ptr(), bytes.len());
        }
        debug_assert_eq!(spec.schema.len(), g.schema_len as usize);
        let schema = &spec.schema[..(g.schema_len as usize).min(spec.schema.len())];
        // SAFETY: [schema_offset, schema_offset + schema_len) lies before ring_offset, inside
        // the mapping; nobody reads it before `ready` is set.
        unsafe {
            std::ptr::copy_nonoverlapping(
                schema.as_ptr(),
                seg.map.as_mut_ptr().add(g.schema_offset as usize),
                schema.len(),
            );
        }
        // The file is zero-filled: control block and participants start in their initial
        // state. Slots start free for their first lap.
        for pos in 0..g.capacity {
            seg.slot(pos).seq.store(pos, Ordering::Relaxed);
        }
        // SYNC POINT: everything above happens-before an opener's Acquire load of `ready`.
        seg.ready_word().store(READY, Ordering::Release);
        // Downgrade to shared: openers may come in.
        lock::try_lock(seg.file.as_fd(), LIFE_LOCK, lock::Kind::Shared).map_err(io("lock"))?;
        Ok(Some(seg))
    }

    /// Validates and maps an existing, ready object. On failure the file is handed back.
    fn attach_existing(
        object: &str,
        file: File,
        spec: &Spec,
        size: u64,
    ) -> Result<Self, (File, SegmentError)> {
        let map = match shm::map(&file, size as usize) {
            Ok(m) => m,
            Err(e) => return Err((file, SegmentError::Io("mmap", e))),
        };
        let (header, geometry) = match read_header(&map, size) {
            Ok(hg) => hg,
            Err(e) => return Err((file, e)),
        };
        if header.fingerprint != spec.fingerprint
            || header.encoding != spec.encoding
            || header.msg_size != spec.msg_size
            || header.msg_align != spec.msg_align
        {
            let err = SegmentError::TypeMismatch {
                found_name: header.type_name(),
                found_fingerprint: header.fingerprint,
                found_encoding: header.encoding,
            };
            return Err((file, err));
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
            return Err((file, SegmentError::ModeMismatch(reason)));
        }
        if spec.encoding == crate::Encoding::ZeroCopy as u32 && header.max_message != spec.msg_size
        {
            let reason = format!(
                "zero-copy slots hold {} bytes, the type has {}",
                header.max_message, spec.msg_size
            );
            return Err((file, SegmentError::Corrupt(reason)));
        }
        let alone = match lock::try_lock(file.as_fd(), LIFE_LOCK, lock::Kind::Exclusive) {
            Ok(alone) => alone,
            Err(e) => return Err((file, SegmentError::Io("lock", e))),
        };
        // If `alone`, the segment was left behind by processes that are gone; we keep the
        // exclusive lock until the caller has recovered it (`share`).
        Ok(PosixSegment {
            object: object.to_owned(),
            file,
            map,
            geometry,
            header,
            left_behind: alone,
        })
    }

    /// Whether the segment was left behind by processes that are all gone (we are alone in
    /// it and hold it exclusively until [`share`](Self::share)).
    pub(crate) fn left_behind(&self) -> bool {
        self.left_behind
    }

    /// Opens a second handle on the same segment, with its own open file description (its
    /// own locks), even if the name was unlinked meanwhile.
    pub(crate) fn duplicate(&self) -> io::Result<PosixSegment> {
        let path = format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(&self.file)
        );
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(path)?;
        lock::lock_wait(file.as_fd(), LIFE_LOCK, lock::Kind::Shared)?;
        let map = shm::map(&file, self.geometry.total_size as usize)?;
        Ok(PosixSegment {
            object: self.object.clone(),
            file,
            map,
            geometry: self.geometry,
            header: self.header,
            left_behind: false,
        })
    }

    /// The channel's delivery mode, overflow policy and history (validated).
    pub(crate) fn delivery(&self) -> (u32, u32, u32) {
        (self.header.mode, self.header.overflow, self.header.history)
    }

    /// Lets other handles in (after recovering a left-behind segment).
    pub(crate) fn share(&mut self) -> io::Result<()> {
        if self.left_behind {
            lock::try_lock(self.file.as_fd(), LIFE_LOCK, lock::Kind::Shared)?;
            self.left_behind = false;
        }
        Ok(())
    }

    fn ready_word(&self) -> &AtomicU32 {
        // SAFETY: READY_OFFSET + 4 <= HEADER_SIZE <= mapping length; page-aligned base, so
        // the word is 4-byte aligned; it is only ever accessed atomically.
        unsafe { &*(self.map.as_ptr().add(READY_OFFSET) as *const AtomicU32) }
    }
}

/// Copies the header out of a mapping of `size >= HEADER_SIZE` bytes and validates it against
/// the size; only the copy is used afterwards.
pub(crate) fn read_header(map: &MmapRaw, size: u64) -> Result<(Header, Geometry), SegmentError> {
    assert!(map.len() >= HEADER_SIZE && size as usize <= map.len());
    let mut raw = [0u8; HEADER_SIZE];
    // SAFETY: the mapping has at least HEADER_SIZE bytes (asserted). Other processes may
    // write them concurrently; we only copy bytes, which any value allows.
    unsafe { std::ptr::copy_nonoverlapping(map.as_ptr(), raw.as_mut_ptr(), HEADER_SIZE) };
    let header = Header::read_from_bytes(&raw).expect("HEADER_SIZE bytes");
    let geometry = Geometry::from_header(&header, size).map_err(SegmentError::Corrupt)?;
    Ok((header, geometry))
}

/// The position of a participant in the participant table (and the counters table).
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

/// Removes `object` if no handle holds it (nobody holds its lifetime lock). Taking the
/// lifetime lock exclusively makes the check and the removal atomic with respect to openers,
/// which wait for a shared lock and then see the object unlinked. Returns whether it was
/// removed.
pub(crate) fn remove_if_unused(object: &str) -> Result<bool, SegmentError> {
    let file = match shm::open_existing(object) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(SegmentError::NotFound),
        Err(e) => return Err(SegmentError::Io("open", e)),
    };
    if !lock::try_lock(file.as_fd(), LIFE_LOCK, lock::Kind::Exclusive).map_err(io("lock"))? {
        return Ok(false);
    }
    unlink_if_same(object, &file).map_err(io("unlink"))?;
    tracing::info!(object, "removed a stale segment");
    Ok(true)
}

/// Unlinks `object` if the name still refers to `file` (not a newer object of that name).
fn unlink_if_same(object: &str, file: &File) -> io::Result<()> {
    let ours = file.metadata()?;
    let current = std::fs::symlink_metadata(shm::path_of(object))?;
    if ours.ino() == current.ino() && ours.dev() == current.dev() {
        shm::unlink(object)?;
    }
    Ok(())
}

impl Drop for PosixSegment {
    fn drop(&mut self) {
        // The last handle removes the name. Release our shared lock first, then try for an
        // exclusive one: of several handles dropping at once, the one that tries last
        // succeeds (all others have released), so the name never outlives every handle.
        // Openers waiting for our lock see a link count of zero and start over.
        let fd = self.file.as_fd();
        let _ = lock::unlock(fd, LIFE_LOCK);
        if let Ok(true) = lock::try_lock(fd, LIFE_LOCK, lock::Kind::Exclusive) {
            let _ = unlink_if_same(&self.object, &self.file);
        }
    }
}

impl Memory for PosixSegment {
    fn geometry(&self) -> &Geometry {
        &self.geometry
    }

    fn control(&self) -> &Control {
        // SAFETY: CONTROL_OFFSET + size_of::<Control>() <= participants_offset <= ring_offset
        // <= total_size <= mapping length (validated); the base is page aligned and
        // CONTROL_OFFSET is a multiple of 128, Control's alignment. Control consists only of
        // atomics, so shared references to memory that other processes mutate are fine.
        unsafe { &*(self.map.as_ptr().add(super::layout::CONTROL_OFFSET) as *const Control) }
    }

    fn participant(&self, role: Role, index: u32) -> &Participant {
        let g = &self.geometry;
        let entry = entry_index(g, role, index);
        let offset = g.participants_offset + entry * std::mem::size_of::<Participant>() as u64;
        debug_assert!(offset + 64 <= g.ring_offset);
        // SAFETY: the entry index is below max_senders + max_receivers, so the entry lies
        // inside [participants_offset, ring_offset), within the validated mapping; 64-byte
        // aligned (participants_offset is a multiple of 128); atomics only.
        unsafe { &*(self.map.as_ptr().add(offset as usize) as *const Participant) }
    }

    fn counters(&self, role: Role, index: u32) -> &Counters {
        let g = &self.geometry;
        let offset = g.counters_offset
            + entry_index(g, role, index) * std::mem::size_of::<Counters>() as u64;
        debug_assert!(offset + 64 <= g.schema_offset);
        // SAFETY: the entry index is below max_senders + max_receivers, so the line lies
        // inside [counters_offset, schema_offset), within the validated mapping; 64-byte
        // aligned (counters_offset is participants_offset plus whole 64-byte entries);
        // atomics only.
        unsafe { &*(self.map.as_ptr().add(offset as usize) as *const Counters) }
    }

    #[inline]
    fn slot(&self, pos: u64) -> &SlotHeader {
        let g = &self.geometry;
        let offset = g.ring_offset + (pos & (g.capacity - 1)) * g.stride;
        debug_assert!(offset + g.stride <= g.total_size);
        // SAFETY: the masked index is below capacity, so the slot lies inside the ring,
        // within the validated mapping; stride and ring_offset are multiples of 64, so the
        // header is aligned; it consists of atomics only.
        unsafe { &*(self.map.as_ptr().add(offset as usize) as *const SlotHeader) }
    }

    #[inline]
    fn payload(&self, pos: u64) -> *mut u8 {
        let g = &self.geometry;
        let offset = g.ring_offset + (pos & (g.capacity - 1)) * g.stride + g.payload_offset as u64;
        debug_assert!(offset + g.max_message as u64 <= g.total_size);
        // SAFETY: as for `slot`: `payload_offset + max_message <= stride`, so the payload
        // lies inside the slot, within the mapping.
        unsafe { self.map.as_mut_ptr().add(offset as usize) }
    }

    fn try_own(&self, role: Role, index: u32) -> io::Result<bool> {
        lock::try_lock(
            self.file.as_fd(),
            entry_lock(role, index),
            lock::Kind::Exclusive,
        )
    }

    fn disown(&self, role: Role, index: u32) {
        let _ = lock::unlock(self.file.as_fd(), entry_lock(role, index));
    }

    fn owned_by_other(&self, role: Role, index: u32) -> bool {
        // If the check itself fails, assume alive: never declare a live peer dead.
        lock::is_held_by_other(self.file.as_fd(), entry_lock(role, index)).unwrap_or(true)
    }
}
