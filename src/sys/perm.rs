//! Who may use the objects a channel creates and opens: permission bits, group, owner check.
//!
//! Every object a channel creates (a `/dev/shm` segment, a System V segment and its lock
//! file, a POSIX or System V queue and its presence file, a FIFO, a socket file, a log
//! directory with its control, segment and cursor files) gets exactly [`Access::mode`]
//! (0600 by default; the umask does not apply because the bits are set again with `fchmod`
//! or `IPC_SET` after creation) and, if [`Access::group`] is set, that group. Every object a
//! channel opens is checked first: its owner must be this user, a user the caller allowed,
//! or the object's group must be the group the caller named; otherwise the open fails with a
//! typed error before anything is read from or locked in the object.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// The permission policy of one handle (built from `Options`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Access {
    /// Permission bits of created objects (the low nine bits).
    pub(crate) mode: u32,
    /// Group given to created objects, and trusted as the group of opened ones.
    pub(crate) group: Option<u32>,
    /// Other owners (and Unix-socket peers) accepted besides this user.
    pub(crate) allow_uids: Vec<u32>,
    /// Accept objects and peers of any user.
    pub(crate) allow_any: bool,
}

impl Default for Access {
    fn default() -> Self {
        Access {
            mode: 0o600,
            group: None,
            allow_uids: Vec::new(),
            allow_any: false,
        }
    }
}

/// An opened object (or a connected peer) that the policy does not accept.
#[derive(Debug)]
pub(crate) enum PermError {
    /// Owned by `uid` (group `gid`), which the caller did not allow.
    Foreign { uid: u32, gid: u32 },
    /// `fstat`, `fchmod`, `fchown` or `IPC_STAT`/`IPC_SET` failed.
    Io(&'static str, io::Error),
}

/// The effective uid of this process.
pub(crate) fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

impl Access {
    /// Whether an object owned by `uid` with group `gid` (or a peer with these ids) is
    /// accepted.
    pub(crate) fn allows(&self, uid: u32, gid: u32) -> bool {
        self.allow_any || uid == euid() || self.allow_uids.contains(&uid) || self.group == Some(gid)
    }

    /// Checks the owner of an opened file, FIFO, socket file or queue descriptor.
    pub(crate) fn check_fd(&self, fd: BorrowedFd<'_>) -> Result<(), PermError> {
        let (uid, gid) = owner_of(fd).map_err(|e| PermError::Io("fstat", e))?;
        self.check_ids(uid, gid)
    }

    /// Checks owner ids read from a System V object's `ipc_perm`.
    pub(crate) fn check_ids(&self, uid: u32, gid: u32) -> Result<(), PermError> {
        if self.allows(uid, gid) {
            Ok(())
        } else {
            Err(PermError::Foreign { uid, gid })
        }
    }

    /// Permission bits for a directory: the mode, plus search (`x`) wherever it grants read,
    /// and always owner `rwx`.
    pub(crate) fn dir_mode(&self) -> u32 {
        0o700 | (self.mode & 0o777) | ((self.mode & 0o444) >> 2)
    }

    /// Gives a freshly created file (or directory, with `dir`) exactly this policy's bits
    /// and group.
    pub(crate) fn apply_fd(&self, fd: BorrowedFd<'_>, dir: bool) -> io::Result<()> {
        let mode = if dir {
            self.dir_mode()
        } else {
            self.mode & 0o777
        };
        // SAFETY: fchmod on a descriptor that `fd` keeps open for the call.
        if unsafe { libc::fchmod(fd.as_raw_fd(), mode as libc::mode_t) } == -1 {
            return Err(io::Error::last_os_error());
        }
        if let Some(gid) = self.group {
            // SAFETY: fchown on a descriptor that `fd` keeps open; uid -1 keeps the owner.
            if unsafe { libc::fchown(fd.as_raw_fd(), u32::MAX, gid) } == -1 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }
}

/// Owner uid and gid of an open descriptor.
pub(crate) fn owner_of(fd: BorrowedFd<'_>) -> io::Result<(u32, u32)> {
    let st = nix::sys::stat::fstat(fd).map_err(|e| io::Error::from_raw_os_error(e as i32))?;
    Ok((st.st_uid, st.st_gid))
}

/// What kind of failure an error number is.
pub(crate) enum IoClass {
    /// `EACCES`, `EPERM`.
    Permission,
    /// `EMFILE`, `ENFILE`, `ENOSPC`, `ENOMEM`: a limit or resource is exhausted.
    Limit,
    /// Anything else.
    Other,
}

pub(crate) fn classify(e: &io::Error) -> IoClass {
    match e.raw_os_error() {
        Some(libc::EACCES) | Some(libc::EPERM) => IoClass::Permission,
        Some(libc::EMFILE) | Some(libc::ENFILE) | Some(libc::ENOSPC) | Some(libc::ENOMEM) => {
            IoClass::Limit
        }
        _ => IoClass::Other,
    }
}
