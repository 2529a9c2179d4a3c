//! File-descriptor plumbing for the fallback transports: pipes, FIFOs, readiness polling,
//! close-on-exec, socket peer credentials.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use nix::fcntl::{FcntlArg, OFlag};

fn to_io(e: nix::errno::Errno) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

/// A pipe, both ends close-on-exec: `(read end, write end)`.
pub(crate) fn pipe() -> io::Result<(File, File)> {
    let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(to_io)?;
    Ok((File::from(r), File::from(w)))
}

/// Creates a FIFO with exactly the permission bits `mode`.
pub(crate) fn mkfifo(path: &Path, mode: u32) -> io::Result<()> {
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(mode)).map_err(to_io)
}

/// Sets or clears `O_NONBLOCK`.
pub(crate) fn set_nonblocking(fd: BorrowedFd<'_>, on: bool) -> io::Result<()> {
    let flags = nix::fcntl::fcntl(fd, FcntlArg::F_GETFL).map_err(to_io)?;
    let mut flags = OFlag::from_bits_truncate(flags);
    flags.set(OFlag::O_NONBLOCK, on);
    nix::fcntl::fcntl(fd, FcntlArg::F_SETFL(flags)).map_err(to_io)?;
    Ok(())
}

/// What `poll` reported for one descriptor.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Ready {
    pub(crate) readable: bool,
    /// Hang-up or error: the next read or write says which.
    pub(crate) hangup: bool,
}

/// Waits until `fd` is ready for reading (`read`) or writing, or `timeout` passes (`None`:
/// forever). EINTR counts as a spurious wake-up (not ready). Allocates nothing: the
/// copying transports call it on every wait.
pub(crate) fn poll_one(
    fd: BorrowedFd<'_>,
    read: bool,
    timeout: Option<Duration>,
) -> io::Result<Ready> {
    let mut pfd = [libc::pollfd {
        fd: fd.as_raw_fd(),
        events: if read { libc::POLLIN } else { libc::POLLOUT },
        revents: 0,
    }];
    raw_poll(&mut pfd, timeout)?;
    Ok(Ready {
        readable: pfd[0].revents & libc::POLLIN != 0,
        hangup: pfd[0].revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0,
    })
}

/// Waits until one of `fds` is readable (or hung up), or `timeout` passes. Up to 16
/// descriptors are polled from the stack, more from the heap.
pub(crate) fn wait_readable<'a>(
    fds: impl ExactSizeIterator<Item = BorrowedFd<'a>>,
    timeout: Option<Duration>,
) -> io::Result<()> {
    let entry = |fd: BorrowedFd<'_>| libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    const ON_STACK: usize = 16;
    if fds.len() <= ON_STACK {
        let mut pfds = [libc::pollfd {
            fd: -1,
            events: 0,
            revents: 0,
        }; ON_STACK];
        let mut n = 0;
        for (slot, fd) in pfds.iter_mut().zip(fds) {
            *slot = entry(fd);
            n += 1;
        }
        raw_poll(&mut pfds[..n], timeout)
    } else {
        let mut pfds: Vec<libc::pollfd> = fds.map(entry).collect();
        raw_poll(&mut pfds, timeout)
    }
}

/// `poll(2)` over `pfds`; EINTR is a spurious wake-up (`Ok`, nothing ready).
fn raw_poll(pfds: &mut [libc::pollfd], timeout: Option<Duration>) -> io::Result<()> {
    let ms = match timeout {
        None => -1,
        // Round up so a short timeout does not become a busy loop of zero-length polls.
        Some(d) => d.as_micros().div_ceil(1000).min(i32::MAX as u128) as libc::c_int,
    };
    // SAFETY: `pfds` is a valid array of `pfds.len()` pollfd structs that the kernel may
    // write; every fd in it is borrowed by the caller for the duration of the call.
    let r = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, ms) };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
        pfds.iter_mut().for_each(|p| p.revents = 0);
    }
    Ok(())
}

/// Arranges for `fd` to be inherited by the child that `cmd` spawns, at the same number
/// (close-on-exec is cleared in the child only). The descriptor moves into `cmd`: it is
/// closed in this process when `cmd` is dropped.
pub(crate) fn inherit_in_child(cmd: &mut Command, fd: OwnedFd) -> RawFd {
    let raw = fd.as_raw_fd();
    // SAFETY: the closure runs in the forked child before exec; it only calls `fcntl`, which
    // is async-signal-safe, on a descriptor that `fd` (owned by the closure, so kept open
    // until `cmd` is dropped) keeps valid; it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            let raw = fd.as_raw_fd();
            if libc::fcntl(raw, libc::F_SETFD, 0) == -1 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    raw
}

/// Takes ownership of an inherited descriptor number after checking that it is open, and
/// marks it close-on-exec so it does not leak further.
///
/// # Safety
///
/// The caller must be the only owner of `raw` in this process (it came from the parent
/// through an environment variable and nothing else in this process uses it).
pub(crate) unsafe fn adopt_inherited(raw: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: F_GETFD only queries the descriptor table; an invalid number gives EBADF.
    if unsafe { libc::fcntl(raw, libc::F_GETFD) } == -1 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above, F_SETFD only changes this descriptor's flags.
    unsafe { libc::fcntl(raw, libc::F_SETFD, libc::FD_CLOEXEC) };
    // SAFETY: `raw` is open (checked above) and, by the caller's obligation, owned by no one
    // else in this process.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) })
}

/// The uid, gid and pid of the process at the other end of a connected Unix socket.
pub(crate) fn peer_cred(sock: BorrowedFd<'_>) -> io::Result<(u32, u32, i32)> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` is a valid, writable ucred of `len` bytes; `sock` is open for the call.
    let r = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((cred.uid, cred.gid, cred.pid))
}

/// Creates the file `path` complete or not at all: `prepare` writes (and locks) an unnamed
/// file in `path`'s directory, which is then linked into place. `Ok(None)`: `path` exists.
///
/// The unnamed file is an `O_TMPFILE` linked through `/proc/self/fd`, so a process killed
/// half-way leaves nothing behind. Where the file system, a missing `/proc` or a sandbox
/// does not allow that, a temporary name (`<path>.<pid>.<n>.tmp`, removed after linking)
/// stands in, which a process killed between its creation and its removal leaves behind.
pub(crate) fn create_complete(
    path: &Path,
    mode: u32,
    prepare: impl Fn(&File) -> io::Result<()>,
) -> io::Result<Option<File>> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let unnamed = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .mode(mode)
        .custom_flags(libc::O_TMPFILE)
        .open(dir);
    match unnamed {
        Ok(f) => {
            prepare(&f)?;
            let proc_path = format!("/proc/self/fd/{}", f.as_raw_fd());
            match nix::unistd::linkat(
                nix::fcntl::AT_FDCWD,
                proc_path.as_str(),
                nix::fcntl::AT_FDCWD,
                path,
                nix::fcntl::AtFlags::AT_SYMLINK_FOLLOW,
            ) {
                Ok(()) => return Ok(Some(f)),
                Err(nix::errno::Errno::EEXIST) => return Ok(None),
                // No /proc, or a sandbox that refuses links through it: fall back to a
                // named temporary file below (which reports a real failure again).
                Err(_) => {}
            }
        }
        // Kernels and file systems without O_TMPFILE.
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EOPNOTSUPP | libc::EISDIR | libc::EINVAL)
            ) => {}
        Err(e) => return Err(e),
    }
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(
        ".{}.{}.tmp",
        std::process::id(),
        SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let tmp = std::path::PathBuf::from(tmp);
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(O_NOFOLLOW)
        .open(&tmp)?;
    let linked = prepare(&f).and_then(|()| std::fs::hard_link(&tmp, path));
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(Some(f)),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(None),
        Err(e) => Err(e),
    }
}

/// Open flags and error numbers the transports test for.
pub(crate) const O_NOFOLLOW: i32 = libc::O_NOFOLLOW;
pub(crate) const O_NONBLOCK: i32 = libc::O_NONBLOCK;
pub(crate) const O_DIRECTORY: i32 = libc::O_DIRECTORY;
pub(crate) const ENOTDIR: i32 = libc::ENOTDIR;
pub(crate) const ENXIO: i32 = libc::ENXIO;
pub(crate) const ELOOP: i32 = libc::ELOOP;
