//! Presence files: who is attached to a message queue.
//!
//! Message queues have no connections, so each queue has a small companion file,
//! `<dir>/<prefix><name>.<kind>`, where `<dir>` is `$XDG_RUNTIME_DIR` if set and `/tmp`
//! otherwise. It holds a 256-byte header written once by its creator:
//!
//! ```text
//! 0   magic "SHMBUSP1"        8   encoding u32 LE     12  fingerprint u64 LE
//! 20  max_frame u32 LE        24  sender seen (u8)    25  receiver seen (u8)
//! 26  name_len u16 LE         32  type name (up to 224 bytes)
//! ```
//!
//! and each handle holds open-file-description locks on it (the same mechanism as the
//! shared-memory segment): byte 0 shared by every handle (exclusive while the creator
//! writes the header, and taken exclusive by the last handle to leave, which removes the
//! queue and the file), byte 1 exclusive by the sender, byte 2 exclusive by the receiver.
//! The kernel drops a killed process's locks, so a peer that died is seen as gone. We chose
//! locks over a pid registry because pids are reused and locks cannot go stale.

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
use crate::sys::{fd, lock};

const MAGIC: [u8; 8] = *b"SHMBUSP1";
const HEADER: usize = 256;
const LIFE: u64 = 0;

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

impl Presence {
    /// Attaches as `role` to the presence file at `path`, creating it if `create`. Returns
    /// the presence and whether this handle created the file; a creator holds the file
    /// exclusively (others wait) until [`share`](Self::share), so that it can remove a queue
    /// left behind by crashed processes and make a fresh one first. A taken role is
    /// reported as `Refused`.
    pub(crate) fn attach(
        path: PathBuf,
        wire: &Wire,
        role: Role,
        create: bool,
    ) -> Result<(Presence, bool), LinkOpenError> {
        let io = |op| move |e| LinkOpenError::Io(op, e);
        let start = Instant::now();
        loop {
            if start.elapsed() > Duration::from_secs(10) {
                return Err(LinkOpenError::Io(
                    "open",
                    io::Error::new(io::ErrorKind::TimedOut, "presence file never became ready"),
                ));
            }
            let mut created = false;
            let file = if create {
                match OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(fd::O_NOFOLLOW)
                    .open(&path)
                {
                    Ok(f) => {
                        lock::lock_wait(f.as_fd(), LIFE, lock::Kind::Exclusive)
                            .map_err(io("lock"))?;
                        f.write_all_at(&header(wire), 0).map_err(io("write"))?;
                        // Stays exclusive until the caller has set up the queue (`share`).
                        created = true;
                        Some(f)
                    }
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => None,
                    Err(e) => return Err(LinkOpenError::Io("create", e)),
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
                    Err(e) => return Err(LinkOpenError::Io("open", e)),
                },
            };
            if !created {
                lock::lock_wait(file.as_fd(), LIFE, lock::Kind::Shared).map_err(io("lock"))?;
                let meta = file.metadata().map_err(io("fstat"))?;
                if meta.nlink() == 0 {
                    continue; // removed by its last handle meanwhile
                }
                let mut h = [0u8; HEADER];
                let complete = file.read_exact_at(&mut h, 0).is_ok() && h[..8] == MAGIC;
                let alone = lock::try_lock(file.as_fd(), LIFE, lock::Kind::Exclusive)
                    .map_err(io("lock"))?;
                if !complete || alone {
                    if alone {
                        // Left behind by handles that are gone (or a creator that died while
                        // writing): start afresh.
                        let _ = std::fs::remove_file(&path);
                        continue;
                    }
                    std::thread::sleep(Duration::from_millis(1));
                    continue;
                }
                let encoding = u32::from_le_bytes(h[8..12].try_into().expect("4"));
                let fingerprint = u64::from_le_bytes(h[12..20].try_into().expect("8"));
                if encoding != wire.encoding || fingerprint != wire.fingerprint {
                    let n = (u16::from_le_bytes([h[26], h[27]]) as usize).min(HEADER - 32);
                    return Err(LinkOpenError::TypeMismatch(TypeDesc {
                        name: String::from_utf8_lossy(&h[32..32 + n]).into_owned(),
                        encoding: Encoding::from_u32(encoding).map_or("unknown", Encoding::name),
                        fingerprint,
                    }));
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
                created,
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

    /// Lets other handles in (after the creator has set up the queue).
    pub(crate) fn share(&self) {
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
