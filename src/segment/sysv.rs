//! A segment in System V shared memory (`shmget`/`shmat`).
//!
//! The same ring and header as a POSIX segment, in memory found by a key instead of a file
//! name. The key is the user's, or derived from `<prefix><name>` exactly as for System V
//! queues (FNV-1a 64, folded to 31 bits; see `docs/wire-format.md`); queues and segments
//! live in separate kernel namespaces, so the same key may name both.
//!
//! System V segments have no file to hold locks on, so each key has a companion lock file,
//! [`lock_path`]: `<dir>/<prefix>sysv-shm-<key, 8 hex digits>.lock`, where `<dir>` is
//! `$XDG_RUNTIME_DIR` if set and `/tmp` otherwise; created with the channel's file mode
//! (0600 by default), never through a symbolic link. Every handle holds the locks of the
//! lifetime protocol ([`super::mapped`]) on its own open file description of that file, so
//! dead peers and left-behind segments are detected exactly as for POSIX segments.
//!
//! Opening, under the lock file's lifetime lock:
//!
//! * a handle that gets the lock exclusively is alone: an existing segment was left by
//!   crashed processes and is reused if it is ready, valid and of the same type (its
//!   committed messages are delivered), removed otherwise; if there is none, the handle
//!   creates it (`IPC_CREAT | IPC_EXCL`), initialises it, and downgrades to shared;
//! * any other handle waits for a shared lock (the creator holds it exclusively while it
//!   initialises) and attaches to the segment.
//!
//! The last handle to leave (the one that can convert its lock to exclusive) removes the
//! segment with `IPC_RMID` (it disappears from `ipcs -m` once every process has detached),
//! then the lock file. A handle that waited on a lock file that was removed meanwhile (its
//! link count is zero) starts over.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::layout::HEADER_SIZE;
use super::mapped::{
    io, is_ready, unlink_if_same, Backing, Mapping, OpenMode, Segment, SegmentError, Spec,
    LIFE_LOCK,
};
use crate::sys::perm::Access;
use crate::sys::{lock, shm};

/// The directory lock files live in: `$XDG_RUNTIME_DIR` if it is a directory, else `/tmp`.
fn lock_dir() -> PathBuf {
    std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|p| p.is_dir())
        .unwrap_or_else(|| PathBuf::from("/tmp"))
}

/// The companion lock file of the segment with `key`.
pub(crate) fn lock_path(prefix: &str, key: i32) -> PathBuf {
    lock_dir().join(format!("{prefix}sysv-shm-{key:08x}.lock"))
}

/// Opens the lock file, creating it (with `access`'s mode and group) if `create`. Never
/// follows a symlink; refuses anything but a regular file of an accepted owner.
fn open_lock_file(path: &Path, create: bool, access: &Access) -> Result<File, SegmentError> {
    let open = |create_new: bool| {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(create_new)
            .mode(access.mode & 0o777)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
            .open(path)
    };
    let opened = match create {
        true => match open(true) {
            Ok(f) => Ok((f, true)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => open(false).map(|f| (f, false)),
            Err(e) => Err(e),
        },
        false => open(false).map(|f| (f, false)),
    };
    let (file, created) = match opened {
        Ok(x) => x,
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(SegmentError::WrongKind(format!(
                "lock file {} is a symbolic link (never followed)",
                path.display()
            )))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(SegmentError::NotFound),
        Err(e) => return Err(SegmentError::Io("open lock file", e)),
    };
    access
        .check_fd(file.as_fd())
        .map_err(|e| SegmentError::perm(path.display(), e))?;
    if !file.metadata().map_err(io("fstat"))?.file_type().is_file() {
        return Err(SegmentError::WrongKind(format!(
            "lock file {} is not a regular file",
            path.display()
        )));
    }
    if created {
        // The umask may have removed bits; set exactly what was asked for.
        access.apply_fd(file.as_fd(), false).map_err(io("fchmod"))?;
    }
    Ok(file)
}

/// Opens or creates the segment with `key` (not 0), guarded by the lock file `lock_path`.
pub(crate) fn open(
    key: i32,
    lock_path: &Path,
    spec: &Spec,
    mode: OpenMode,
) -> Result<Segment, SegmentError> {
    debug_assert!(key != 0, "IPC_PRIVATE is rejected by the caller");
    let start = Instant::now();
    loop {
        if start.elapsed() > Duration::from_secs(10) {
            return Err(SegmentError::Io(
                "open",
                io::Error::new(io::ErrorKind::TimedOut, "segment never became ready"),
            ));
        }
        let file = match open_lock_file(lock_path, mode != OpenMode::Open, &spec.access) {
            // Removed between our two opens: start over.
            Err(SegmentError::NotFound) if mode != OpenMode::Open => continue,
            r => r?,
        };
        let fd = file.as_fd();
        if !lock::try_lock(fd, LIFE_LOCK, lock::Kind::Exclusive).map_err(io("lock"))? {
            lock::lock_wait(fd, LIFE_LOCK, lock::Kind::Shared).map_err(io("lock"))?;
        }
        if file.metadata().map_err(io("fstat"))?.nlink() == 0 {
            continue; // removed by the last handle while we waited: start over
        }
        let alone = lock::try_lock(fd, LIFE_LOCK, lock::Kind::Exclusive).map_err(io("lock"))?;
        let existing = shm::sysv_lookup(key).map_err(io("shmget"))?;
        let Some(id) = existing else {
            if !alone {
                // Removed by a handle that crashed before it removed the lock file, or not
                // created yet: look again (alone, next time, if nobody else is there).
                drop(file);
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
            if mode == OpenMode::Open {
                let _ = unlink_if_same(lock_path, &file);
                return Err(SegmentError::NotFound);
            }
            return create(key, file, lock_path, spec);
        };
        let (uid, gid) = shm::sysv_owner(id).map_err(io("shmctl"))?;
        spec.access
            .check_ids(uid, gid)
            .map_err(|e| SegmentError::perm(format_args!("System V segment {key:#x}"), e))?;
        if mode == OpenMode::Create {
            return Err(SegmentError::AlreadyExists);
        }
        let st = shm::sysv_stat(id).map_err(io("shmctl"))?;
        let usable = st.size >= HEADER_SIZE as u64;
        let map = if usable {
            Some(Mapping::Sysv(
                shm::sysv_attach(id, st.size).map_err(io("shmat"))?,
            ))
        } else {
            None
        };
        let ready = map.as_ref().is_some_and(is_ready);
        let backing = Backing::Sysv {
            id,
            lock_path: lock_path.to_owned(),
        };
        let err = match (map, ready) {
            (Some(map), true) => match Segment::attach(map, file, backing, spec, st.size) {
                Ok(seg) => return Ok(seg),
                Err((f, _, err)) => {
                    if !alone {
                        return Err(err);
                    }
                    drop(f);
                    err
                }
            },
            _ if !alone => {
                // The creator died while initialising; once its lock is gone, the next
                // round is alone and replaces the segment.
                drop(file);
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
            _ => SegmentError::Corrupt("the segment never became ready".into()),
        };
        // Alone in a segment that cannot be used: left by crashed processes. Replace it,
        // unless asked only to open. We dropped our lock file description, so start over.
        if mode == OpenMode::Open {
            return Err(err);
        }
        if shm::sysv_remove(id).is_err() {
            // Another user's segment: not ours to replace.
            return Err(err);
        }
    }
}

/// Creates and initialises the segment; `file` holds the lifetime lock exclusively.
fn create(key: i32, file: File, lock_path: &Path, spec: &Spec) -> Result<Segment, SegmentError> {
    let g = spec.geometry;
    let id = match shm::sysv_create(key, g.total_size, spec.access.mode) {
        Ok(id) => id,
        Err(e) => {
            let _ = unlink_if_same(lock_path, &file);
            return Err(match e.raw_os_error() {
                Some(libc::ENOSPC) | Some(libc::ENOMEM) | Some(libc::EINVAL) => {
                    SegmentError::NoSpace(e)
                }
                _ => SegmentError::Io("shmget", e),
            });
        }
    };
    if let Some(gid) = spec.access.group {
        if let Err(e) = shm::sysv_set_group(id, gid) {
            let _ = shm::sysv_remove(id);
            let _ = unlink_if_same(lock_path, &file);
            return Err(SegmentError::Io("shmctl(IPC_SET)", e));
        }
    }
    let map = match shm::sysv_attach(id, g.total_size) {
        Ok(m) => Mapping::Sysv(m),
        Err(e) => {
            let _ = shm::sysv_remove(id);
            let _ = unlink_if_same(lock_path, &file);
            return Err(SegmentError::Io("shmat", e));
        }
    };
    let backing = Backing::Sysv {
        id,
        lock_path: lock_path.to_owned(),
    };
    Segment::create(map, file, backing, spec)
}

/// Removes the segment with `key` and its lock file `lock_path` if no handle holds them.
/// Holding the lifetime lock exclusively while removing keeps openers out (they see the lock
/// file unlinked and start over). Returns whether it removed them.
pub(crate) fn remove_if_unused(lock_path: &Path, key: i32) -> io::Result<bool> {
    // Only this user's lock files (the default access policy); anything else is refused.
    let file = open_lock_file(lock_path, false, &Access::default()).map_err(|e| match e {
        SegmentError::NotFound => io::Error::from(io::ErrorKind::NotFound),
        SegmentError::Io(_, e) => e,
        other => io::Error::other(format!("{other:?}")),
    })?;
    if !lock::try_lock(file.as_fd(), LIFE_LOCK, lock::Kind::Exclusive)? {
        return Ok(false);
    }
    if let Some(id) = shm::sysv_lookup(key)? {
        shm::sysv_remove(id)?;
    }
    let removed = unlink_if_same(lock_path, &file)?;
    tracing::info!(key, "removed a stale System V segment");
    Ok(removed)
}
