//! Named pipes (FIFOs) in the file system.
//!
//! Either end creates the FIFO (mode and group from `Options::mode`/`Options::group`, 0600
//! by default) if it is missing and it may create. Opening never follows a symbolic link
//! (`O_NOFOLLOW`) and refuses anything that is not a FIFO (checked with `lstat` before and
//! `fstat` after opening) and a FIFO of an owner the handle does not accept. The sender
//! waits for a reader to appear, then writes its hello; the receiver waits for the hello and
//! checks the type, so a mismatch fails the receiver's `open` (the sender then sees the
//! receiver go away). The receiver removes the FIFO when dropped, if the path still names
//! the FIFO it opened. A FIFO carries one sender at a time.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::pipe::{PipeReceiver, PipeSender};
use super::{LinkOpenError, TransportKind, Wire};
use crate::sys::fd;
use crate::sys::perm::Access;

use fd::{ELOOP, ENXIO, O_NOFOLLOW, O_NONBLOCK};

/// Refuses a path that holds something other than a FIFO (a symbolic link included)
/// before anything opens it.
fn check_kind(path: &Path, access: &Access) -> Result<(), LinkOpenError> {
    match std::fs::symlink_metadata(path) {
        // Checked again on the opened descriptor; here so that `open` does not wait for a
        // peer on a FIFO it will refuse.
        Ok(m) if m.file_type().is_fifo() && !access.allows(m.uid(), m.gid()) => Err(
            LinkOpenError::Foreign(path.display().to_string(), m.uid(), m.gid()),
        ),
        Ok(m) if m.file_type().is_symlink() => Err(LinkOpenError::WrongKind(format!(
            "{} is a symbolic link (never followed)",
            path.display()
        ))),
        Ok(m) if !m.file_type().is_fifo() => Err(LinkOpenError::WrongKind(format!(
            "{} is {}, not a FIFO",
            path.display(),
            super::kind_name(&m.file_type())
        ))),
        _ => Ok(()),
    }
}

/// Creates the FIFO if missing (when allowed). Returns whether this call created it.
fn ensure(path: &Path, create: bool, access: &Access) -> Result<bool, LinkOpenError> {
    check_kind(path, access)?;
    if !create {
        return Ok(false);
    }
    match fd::mkfifo(path, access.mode & 0o777) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            check_kind(path, access).map(|()| false)
        }
        Err(e) => Err(LinkOpenError::Io("mkfifo", e)),
    }
}

fn open_fifo(path: &Path, write: bool) -> io::Result<File> {
    OpenOptions::new()
        .read(!write)
        .write(write)
        .custom_flags(O_NOFOLLOW | O_NONBLOCK)
        .open(path)
}

/// Checks what was opened: a FIFO of an accepted owner; one this handle created gets its
/// mode and group (the umask may have removed bits).
fn check_fifo(
    path: &Path,
    file: &File,
    access: &Access,
    created: bool,
) -> Result<(), LinkOpenError> {
    let meta = file.metadata().map_err(|e| LinkOpenError::Io("fstat", e))?;
    if !meta.file_type().is_fifo() {
        return Err(LinkOpenError::WrongKind(format!(
            "{} is {}, not a FIFO",
            path.display(),
            super::kind_name(&meta.file_type())
        )));
    }
    access
        .check_fd(file.as_fd())
        .map_err(|e| LinkOpenError::perm(path.display(), e))?;
    if created {
        access
            .apply_fd(file.as_fd(), false)
            .map_err(|e| LinkOpenError::Io("fchmod", e))?;
    }
    Ok(())
}

fn open_error(path: &Path, e: io::Error) -> LinkOpenError {
    match e.raw_os_error() {
        Some(ELOOP) => LinkOpenError::WrongKind(format!(
            "{} is a symbolic link (never followed)",
            path.display()
        )),
        _ if e.kind() == io::ErrorKind::NotFound => {
            LinkOpenError::NotFound(path.display().to_string())
        }
        _ => LinkOpenError::Io("open", e),
    }
}

fn remove_if_same(path: &Path, dev: u64, ino: u64) {
    if let Ok(m) = std::fs::symlink_metadata(path) {
        if m.dev() == dev && m.ino() == ino {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Opens the sending end, waiting up to `timeout` for a receiver.
pub(crate) fn sender(
    path: &Path,
    wire: &Wire,
    create: bool,
    access: &Access,
    timeout: Duration,
) -> Result<PipeSender, LinkOpenError> {
    let created = ensure(path, create, access)?;
    let start = Instant::now();
    let file = loop {
        match open_fifo(path, true) {
            Ok(f) => break f,
            Err(e) if e.raw_os_error() == Some(ENXIO) && start.elapsed() < timeout => {
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => {
                if created {
                    let _ = std::fs::remove_file(path);
                }
                if e.raw_os_error() == Some(ENXIO) {
                    return Err(LinkOpenError::Io(
                        "open",
                        io::Error::new(
                            io::ErrorKind::TimedOut,
                            "no receiver opened the FIFO in time",
                        ),
                    ));
                }
                return Err(open_error(path, e));
            }
        }
    };
    check_fifo(path, &file, access, created)?;
    PipeSender::new(file, wire, TransportKind::Fifo)
}

/// Opens the receiving end, waiting up to `timeout` for a sender's hello.
pub(crate) fn receiver(
    path: &Path,
    wire: &Wire,
    create: bool,
    access: &Access,
    timeout: Duration,
) -> Result<PipeReceiver, LinkOpenError> {
    let created = ensure(path, create, access)?;
    let file = open_fifo(path, false).map_err(|e| open_error(path, e))?;
    check_fifo(path, &file, access, created)?;
    let meta = file.metadata().map_err(|e| LinkOpenError::Io("fstat", e))?;
    let (dev, ino) = (meta.dev(), meta.ino());
    let owned: PathBuf = path.to_owned();
    let cleanup = move || remove_if_same(&owned, dev, ino);
    // Until a writer opens the FIFO, reads return end-of-file: wait for data first.
    let start = Instant::now();
    loop {
        let left = timeout.saturating_sub(start.elapsed());
        if left.is_zero() {
            cleanup();
            return Err(LinkOpenError::Io(
                "open",
                io::Error::new(io::ErrorKind::TimedOut, "no sender opened the FIFO in time"),
            ));
        }
        let r = fd::poll_one(
            file.as_fd(),
            true,
            Some(left.min(Duration::from_millis(50))),
        )
        .map_err(|e| LinkOpenError::Io("poll", e))?;
        if r.readable || r.hangup {
            break;
        }
    }
    let left = timeout
        .saturating_sub(start.elapsed())
        .max(Duration::from_millis(100));
    match PipeReceiver::new(file, wire, TransportKind::Fifo, Some(left)) {
        Ok(mut rx) => {
            rx.on_drop = Some(Box::new(cleanup));
            Ok(rx)
        }
        Err(e) => {
            cleanup();
            Err(e)
        }
    }
}
