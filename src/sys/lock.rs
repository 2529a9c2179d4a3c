//! Byte-range locks owned by an open file description (`F_OFD_SETLK`).
//!
//! The kernel drops them when the last descriptor of the description is closed, including
//! when the owning process is killed. shmbus uses one lock byte per participant to tell a
//! live peer from a dead one without trusting pids, and a shared "lifetime" lock to know who
//! is the last handle of a segment. Unlike classic POSIX record locks, OFD locks conflict
//! between two descriptors of the same process, so they also work between handles of one
//! process.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// Lock kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Shared,
    Exclusive,
}

fn flock_for(kind: Option<Kind>, offset: u64) -> libc::flock {
    // SAFETY: `flock` is a plain C struct for which all-zero is a valid value.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = match kind {
        Some(Kind::Shared) => libc::F_RDLCK,
        Some(Kind::Exclusive) => libc::F_WRLCK,
        None => libc::F_UNLCK,
    } as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = offset as libc::off_t;
    fl.l_len = 1;
    fl.l_pid = 0; // required to be 0 for OFD locks
    fl
}

fn fcntl_lock(fd: BorrowedFd<'_>, cmd: libc::c_int, fl: &mut libc::flock) -> io::Result<()> {
    loop {
        // SAFETY: `fd` is an open descriptor for the duration of the call and `fl` points to
        // a valid `flock` that the kernel may read and (for F_OFD_GETLK) write.
        let r = unsafe { libc::fcntl(fd.as_raw_fd(), cmd, fl as *mut libc::flock) };
        if r == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Tries to take (or convert to) a lock on byte `offset` without waiting. `Ok(false)` means
/// another open file description holds a conflicting lock.
pub(crate) fn try_lock(fd: BorrowedFd<'_>, offset: u64, kind: Kind) -> io::Result<bool> {
    let mut fl = flock_for(Some(kind), offset);
    match fcntl_lock(fd, libc::F_OFD_SETLK, &mut fl) {
        Ok(()) => Ok(true),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EACCES)) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Takes a lock on byte `offset`, waiting for conflicting holders to release it.
pub(crate) fn lock_wait(fd: BorrowedFd<'_>, offset: u64, kind: Kind) -> io::Result<()> {
    let mut fl = flock_for(Some(kind), offset);
    fcntl_lock(fd, libc::F_OFD_SETLKW, &mut fl)
}

/// Releases this description's lock on byte `offset`.
pub(crate) fn unlock(fd: BorrowedFd<'_>, offset: u64) -> io::Result<()> {
    let mut fl = flock_for(None, offset);
    fcntl_lock(fd, libc::F_OFD_SETLK, &mut fl)
}

/// Whether some other open file description holds a lock that conflicts with an exclusive
/// lock on byte `offset` (i.e. whether anyone holds any lock there).
pub(crate) fn is_held_by_other(fd: BorrowedFd<'_>, offset: u64) -> io::Result<bool> {
    let mut fl = flock_for(Some(Kind::Exclusive), offset);
    fcntl_lock(fd, libc::F_OFD_GETLK, &mut fl)?;
    Ok(fl.l_type != libc::F_UNLCK as libc::c_short)
}
