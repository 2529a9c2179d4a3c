//! Presence files: who is attached to a message queue.
//!
//! Message queues have no connections, so each queue has a small companion file,
//! `<dir>/<prefix><name>.<kind>`, where `<dir>` is `$XDG_RUNTIME_DIR` if set and `/tmp`
//! otherwise. It holds a 256-byte header written once by its creator:
//!
//! ```text
//! 0   magic "SHMBUSP1"        8   encoding u32 LE     12  fingerprint u64 LE
//! 20  max_frame u32 LE        24  sender seen (u8)    25  receiver seen (u8)
//! 26  name_len u16 LE         28  queue set up (u8)   32  type name (up to 224 bytes)
//! ```
//!
//! (the creator writes it to an unnamed `O_TMPFILE` file that holds the lifetime lock, then
//! links it into place, so the file never appears unlocked or incomplete, and a creator
//! killed half-way leaves nothing), and each handle holds
//! open-file-description locks on it (the same mechanism as the
//! shared-memory segment): byte 0 shared by every handle (exclusive while the creator
//! writes the header, and taken exclusive by the last handle to leave, which removes the
//! queue and the file), byte 1 exclusive by the sender, byte 2 exclusive by the receiver.
//! The kernel drops a killed process's locks, so a peer that died is seen as gone. We chose
//! locks over a pid registry because pids are reused and locks cannot go stale.
//!
//! A file that no handle holds was left by crashed processes. If its queue was set up and
//! carries the same type, the next handle keeps the queue and its messages (as a left-behind
//! shared-memory segment is kept) and forgets who was attached; otherwise it removes the
//! file and the queue and starts afresh.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::{LinkOpenError, Wire};
use crate::error::TypeDesc;
use crate::message::Encoding;
use crate::segment::Role;
use crate::sys::perm::Access;
use crate::sys::{fd, lock};

const MAGIC: [u8; 8] = *b"SHMBUSP1";
const HEADER: usize = 256;
const LIFE: u64 = 0;
/// Header byte set to 1 once the creator has set up the queue.
const QUEUE_READY: u64 = 28;

/// How a handle came to the queue, as [`Presence::attach`] reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Setup {
    /// It made a new presence file: it removes any queue left under the name and makes a
    /// fresh one.
    Fresh,
    /// It took over a file left by crashed processes whose queue (same type) is kept with
    /// its messages; it opens the queue (creating it if it went missing).
    Recovered,
    /// It joined handles that are alive: the queue exists.
    Joined,
}

fn role_byte(role: Role) -> u64 {
    match role {
        Role::Sender => 1,
        Role::Receiver => 2,
    }
}

fn seen_offset(role: Role) -> u64 {
    match role {
        Role::Sender => 24,
        Role::Receiver => 25,
    }
}

fn other(role: Role) -> Role {
    match role {
        Role::Sender => Role::Receiver,
        Role::Receiver => Role::Sender,
    }
}

/// The directory presence files live in.
pub(crate) fn dir() -> PathBuf {
    std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|p| p.is_dir())
        .unwrap_or_else(|| PathBuf::from("/tmp"))
}

/// Whether a live handle holds the presence file at `path` (its lifetime byte is locked).
pub(crate) fn in_use(path: &std::path::Path) -> bool {
    OpenOptions::new()
        .read(true)
        .custom_flags(fd::O_NOFOLLOW)
        .open(path)
        .is_ok_and(|f| lock::is_held_by_other(f.as_fd(), LIFE).unwrap_or(true))
}

/// A handle's presence in a queue's companion file.
pub(crate) struct Presence {
    file: File,
    path: PathBuf,
    role: Role,
    /// Run by the last handle to leave (removes the queue).
    pub(crate) on_last: Option<Box<dyn FnOnce() + Send>>,
    /// The other side's "seen" byte was 1 (it is never cleared): no need to read it again.
    peer_seen: AtomicBool,
}

fn header(wire: &Wire) -> [u8; HEADER] {
    let mut h = [0u8; HEADER];
    h[..8].copy_from_slice(&MAGIC);
    h[8..12].copy_from_slice(&wire.encoding.to_le_bytes());
    h[12..20].copy_from_slice(&wire.fingerprint.to_le_bytes());
    h[20..24].copy_from_slice(&(wire.max_frame as u32).to_le_bytes());
    let name = &wire.name.as_bytes()[..wire.name.len().min(HEADER - 32)];
    h[26..28].copy_from_slice(&(name.len() as u16).to_le_bytes());
    h[32..32 + name.len()].copy_from_slice(name);
    h
}

/// Creates the presence file complete and locked: the header is written to an unnamed file
/// that holds the lifetime lock exclusively, which is then linked into place. An opener
/// therefore never sees a file whose creator has not locked it yet (and might take it for
/// one left behind), and a creator killed half-way leaves nothing. `Ok(None)`: a file is
/// already there.
fn create_locked(path: &std::path::Path, wire: &Wire, access: &Access) -> io::Result<Option<File>> {
    fd::create_complete(path, access.mode & 0o777, |f| {
        lock::lock_wait(f.as_fd(), LIFE, lock::Kind::Exclusive)?;
        access.apply_fd(f.as_fd(), false)?;
        f.write_all_at(&header(wire), 0)
    })
}

/// `TypeMismatch` if the header `h` records another type than `wire`'s.
fn mismatch(h: &[u8; HEADER], wire: &Wire) -> Option<LinkOpenError> {
    let encoding = u32::from_le_bytes(h[8..12].try_into().expect("4"));
    let fingerprint = u64::from_le_bytes(h[12..20].try_into().expect("8"));
    if encoding == wire.encoding && fingerprint == wire.fingerprint {
        return None;
    }
    let n = (u16::from_le_bytes([h[26], h[27]]) as usize).min(HEADER - 32);
    Some(LinkOpenError::TypeMismatch(TypeDesc {
        name: String::from_utf8_lossy(&h[32..32 + n]).into_owned(),
        encoding: Encoding::from_u32(encoding).map_or("unknown", Encoding::name),
        fingerprint,
    }))
}

/// The error for a presence file that cannot be opened: a symbolic link is the wrong kind.
fn refused(path: &std::path::Path, op: &'static str, e: io::Error) -> LinkOpenError {
    if e.raw_os_error() == Some(fd::ELOOP) {
        return LinkOpenError::WrongKind(format!(
            "presence file {} is a symbolic link (never followed)",
            path.display()
        ));
    }
    LinkOpenError::Io(op, e)
}

impl Presence {
    /// Attaches as `role` to the presence file at `path`, creating it if `create`. Returns
    /// the presence and how it came to the queue ([`Setup`]); unless it joined live handles,
    /// it holds the file exclusively (others wait) until [`share`](Self::share), so that it
    /// can set up the queue first. A taken role is reported as `Refused`.
    pub(crate) fn attach(
        path: PathBuf,
        wire: &Wire,
        role: Role,
        create: bool,
        access: &Access,
    ) -> Result<(Presence, Setup), LinkOpenError> {
        let io = |op| move |e| LinkOpenError::Io(op, e);
        let start = Instant::now();
        loop {
            if start.elapsed() > Duration::from_secs(10) {
                return Err(LinkOpenError::Io(
                    "open",
                    io::Error::new(io::ErrorKind::TimedOut, "presence file never became ready"),
                ));
            }
            let mut setup = Setup::Joined;
            let file = if create {
                match create_locked(&path, wire, access) {
                    Ok(Some(f)) => {
                        // Stays exclusive until the caller has set up the queue (`share`).
                        setup = Setup::Fresh;
                        Some(f)
                    }
                    Ok(None) => None,
                    Err(e) => return Err(refused(&path, "create", e)),
                }
            } else {
                None
            };
            let file = match file {
                Some(f) => f,
                None => match OpenOptions::new()
                    .read(true)
                    .write(true)
                    .custom_flags(fd::O_NOFOLLOW)
                    .open(&path)
                {
                    Ok(f) => f,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        if create {
                            continue;
                        }
                        return Err(LinkOpenError::NotFound(path.display().to_string()));
                    }
                    Err(e) => return Err(refused(&path, "open", e)),
                },
            };
            if setup == Setup::Joined {
                // Before anything is locked or read: whose is it, and is it a file?
                access
                    .check_fd(file.as_fd())
                    .map_err(|e| LinkOpenError::perm(path.display(), e))?;
                let kind = file.metadata().map_err(io("fstat"))?.file_type();
                if !kind.is_file() {
                    return Err(LinkOpenError::WrongKind(format!(
                        "presence file {} is {}",
                        path.display(),
                        super::kind_name(&kind)
                    )));
                }
                lock::lock_wait(file.as_fd(), LIFE, lock::Kind::Shared).map_err(io("lock"))?;
                let meta = file.metadata().map_err(io("fstat"))?;
                if meta.nlink() == 0 {
                    continue; // removed by its last handle meanwhile
                }
                let mut h = [0u8; HEADER];
                let complete = file.read_exact_at(&mut h, 0).is_ok() && h[..8] == MAGIC;
                let alone = lock::try_lock(file.as_fd(), LIFE, lock::Kind::Exclusive)
                    .map_err(io("lock"))?;
                if !complete && !alone {
                    // Cannot happen with files made by `create_locked`; another writer's.
                    std::thread::sleep(Duration::from_millis(1));
                    continue;
                }
                if alone {
                    // Left behind by handles that are gone. A queue that was set up for this
                    // type keeps its messages; anything else (a creator that died while
                    // setting up, another type) starts afresh.
                    let max_frame = u32::from_le_bytes(h[20..24].try_into().expect("4"));
                    let same = mismatch(&h, wire).is_none() && max_frame as usize == wire.max_frame;
                    if complete && same && h[QUEUE_READY as usize] == 1 {
                        // Forget who was attached (nobody is); we stay exclusive until
                        // `share`.
                        file.write_all_at(&[0, 0], seen_offset(Role::Sender))
                            .map_err(io("write"))?;
                        setup = Setup::Recovered;
                    } else {
                        match std::fs::remove_file(&path) {
                            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                                // Another user's file in a sticky directory (`/tmp`), shared
                                // through a group: not ours to remove, but ours to reuse while
                                // we hold it exclusively.
                                // Its queue cannot be removed either and may hold messages:
                                // reuse it only for the same type.
                                if !create {
                                    return Err(LinkOpenError::NotFound(
                                        path.display().to_string(),
                                    ));
                                }
                                if complete {
                                    if let Some(e) = mismatch(&h, wire) {
                                        return Err(e);
                                    }
                                    file.write_all_at(&[0, 0], seen_offset(Role::Sender))
                                        .map_err(io("write"))?;
                                    setup = Setup::Recovered;
                                } else {
                                    file.set_len(0).map_err(io("truncate"))?;
                                    file.write_all_at(&header(wire), 0).map_err(io("write"))?;
                                    setup = Setup::Fresh;
                                }
                            }
                            _ => continue,
                        }
                    }
                }
            }
            if setup == Setup::Joined {
                let mut h = [0u8; HEADER];
                file.read_exact_at(&mut h, 0).map_err(io("read"))?;
                if let Some(e) = mismatch(&h, wire) {
                    return Err(e);
                }
            }
            if !lock::try_lock(file.as_fd(), role_byte(role), lock::Kind::Exclusive)
                .map_err(io("lock"))?
            {
                return Err(LinkOpenError::Refused(role.name().into()));
            }
            file.write_all_at(&[1], seen_offset(role))
                .map_err(io("write"))?;
            return Ok((
                Presence {
                    file,
                    path,
                    role,
                    on_last: None,
                    peer_seen: AtomicBool::new(false),
                },
                setup,
            ));
        }
    }

    /// Whether the other side is attached now.
    pub(crate) fn peer_attached(&self) -> bool {
        lock::is_held_by_other(self.file.as_fd(), role_byte(other(self.role))).unwrap_or(true)
    }

    /// Whether the other side attached at some point and is gone now.
    pub(crate) fn peer_gone(&self) -> bool {
        if !self.peer_seen.load(Ordering::Relaxed) {
            let mut b = [0u8; 1];
            let seen = self
                .file
                .read_exact_at(&mut b, seen_offset(other(self.role)))
                .is_ok()
                && b[0] == 1;
            if !seen {
                return false;
            }
            self.peer_seen.store(true, Ordering::Relaxed);
        }
        !self.peer_attached()
    }

    /// Lets other handles in (after the creator has set up the queue), and records that
    /// the queue is set up.
    pub(crate) fn share(&self) {
        let _ = self.file.write_all_at(&[1], QUEUE_READY);
        let _ = lock::try_lock(self.file.as_fd(), LIFE, lock::Kind::Shared);
    }

    /// Detaches. The last handle runs `on_last` and removes the file; returns whether this
    /// was it.
    fn detach(&mut self) -> bool {
        let fd = self.file.as_fd();
        let _ = lock::unlock(fd, role_byte(self.role));
        let _ = lock::unlock(fd, LIFE);
        if let Ok(true) = lock::try_lock(fd, LIFE, lock::Kind::Exclusive) {
            // The queue goes first, while the file still keeps newcomers waiting.
            if let Some(f) = self.on_last.take() {
                f();
            }
            if let (Ok(ours), Ok(cur)) =
                (self.file.metadata(), std::fs::symlink_metadata(&self.path))
            {
                if ours.ino() == cur.ino() && ours.dev() == cur.dev() {
                    let _ = std::fs::remove_file(&self.path);
                }
            }
            return true;
        }
        false
    }
}

impl Drop for Presence {
    fn drop(&mut self) {
        self.detach();
    }
}

/// What an observer reads from a presence file, without attaching.
pub(crate) struct Described {
    pub(crate) encoding: u32,
    pub(crate) type_name: String,
    /// Some handle holds the file.
    pub(crate) in_use: bool,
    /// A sender / a receiver is attached now.
    pub(crate) sender: bool,
    pub(crate) receiver: bool,
    /// A sender / a receiver attached at some point.
    pub(crate) seen: (bool, bool),
    /// Lock bytes of the sender and the receiver.
    pub(crate) lock_bytes: (u64, u64),
}

/// Reads the presence file at `path` and looks at its locks (opened read-only; takes none).
pub(crate) fn describe(path: &std::path::Path) -> io::Result<Described> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(fd::O_NOFOLLOW)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not a regular file",
        ));
    }
    let mut h = [0u8; HEADER];
    if file.read_exact_at(&mut h, 0).is_err() || h[..8] != MAGIC {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not a shmbus presence file (or still being written)",
        ));
    }
    let n = (u16::from_le_bytes([h[26], h[27]]) as usize).min(HEADER - 32);
    let held = |b| lock::is_held_by_other(file.as_fd(), b);
    Ok(Described {
        encoding: u32::from_le_bytes(h[8..12].try_into().expect("4")),
        type_name: String::from_utf8_lossy(&h[32..32 + n]).into_owned(),
        in_use: held(LIFE)?,
        sender: held(role_byte(Role::Sender))?,
        receiver: held(role_byte(Role::Receiver))?,
        seen: (
            h[seen_offset(Role::Sender) as usize] == 1,
            h[seen_offset(Role::Receiver) as usize] == 1,
        ),
        lock_bytes: (role_byte(Role::Sender), role_byte(Role::Receiver)),
    })
}

/// Removes the presence file at `path` and, first, its queue (`remove_queue`), if no handle
/// holds it. Holding the lifetime byte exclusively while removing keeps attachers out (they
/// see the file unlinked and start over). Returns whether it removed them.
pub(crate) fn remove_if_unused(
    path: &std::path::Path,
    remove_queue: impl FnOnce(),
) -> io::Result<bool> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(fd::O_NOFOLLOW)
        .open(path)?;
    if !lock::try_lock(file.as_fd(), LIFE, lock::Kind::Exclusive)? {
        return Ok(false);
    }
    remove_queue();
    let removed = crate::segment::mapped::unlink_if_same(path, &file)?;
    tracing::info!(path = %path.display(), "removed a stale queue");
    Ok(removed)
}
