//! POSIX message queues (`mq_open`, `mq_timedsend`, `mq_timedreceive`).
//!
//! Timed calls take an absolute `CLOCK_REALTIME` deadline; callers pass short relative
//! slices, so a jump of the wall clock only lengthens or shortens one slice.

use std::ffi::CString;
use std::io;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// An open message queue descriptor, closed on drop.
#[derive(Debug)]
pub(crate) struct Mq {
    mqd: libc::mqd_t,
}

impl std::os::fd::AsFd for Mq {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        // SAFETY: on Linux a queue descriptor is a file descriptor, open while `self` lives.
        unsafe { std::os::fd::BorrowedFd::borrow_raw(self.mqd) }
    }
}

/// How a timed queue operation ended.
pub(crate) enum MqResult<T> {
    Done(T),
    /// Full (send) or empty (receive) until the slice ended.
    TimedOut,
}

fn cname(name: &str) -> io::Result<CString> {
    CString::new(format!("/{name}")).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

fn abs_timespec(after: Duration) -> libc::timespec {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .saturating_add(after);
    libc::timespec {
        tv_sec: t.as_secs() as libc::time_t,
        tv_nsec: t.subsec_nanos() as libc::c_long,
    }
}

impl Mq {
    /// Opens the queue `name` (without the leading `/`), creating it with `maxmsg` messages
    /// of `msgsize` bytes and permission bits `mode` if `create`. Returns the queue and
    /// whether this call created it.
    pub(crate) fn open(
        name: &str,
        create: bool,
        maxmsg: usize,
        msgsize: usize,
        mode: u32,
    ) -> io::Result<(Mq, bool)> {
        let c = cname(name)?;
        let flags = libc::O_RDWR | libc::O_CLOEXEC;
        loop {
            if create {
                // SAFETY: mq_attr is a plain C struct; all-zero is valid.
                let mut attr: libc::mq_attr = unsafe { std::mem::zeroed() };
                attr.mq_maxmsg = maxmsg as _;
                attr.mq_msgsize = msgsize as _;
                // SAFETY: `c` is a NUL-terminated string and `attr` a valid mq_attr, both
                // alive for the call; the variadic mode and attr pointer are what
                // O_CREAT expects.
                let q = unsafe {
                    libc::mq_open(
                        c.as_ptr(),
                        flags | libc::O_CREAT | libc::O_EXCL,
                        mode as libc::mode_t,
                        &mut attr as *mut libc::mq_attr,
                    )
                };
                if q != -1 {
                    return Ok((Mq { mqd: q }, true));
                }
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::AlreadyExists {
                    return Err(e);
                }
            }
            // SAFETY: `c` is a NUL-terminated string alive for the call.
            let q = unsafe { libc::mq_open(c.as_ptr(), flags) };
            if q != -1 {
                return Ok((Mq { mqd: q }, false));
            }
            let e = io::Error::last_os_error();
            if !(create && e.kind() == io::ErrorKind::NotFound) {
                return Err(e);
            }
            // Removed between our two calls: try creating again.
        }
    }

    /// Removes the queue's name.
    pub(crate) fn unlink(name: &str) -> io::Result<()> {
        let c = cname(name)?;
        // SAFETY: `c` is a NUL-terminated string alive for the call.
        if unsafe { libc::mq_unlink(c.as_ptr()) } == -1 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// `(maxmsg, msgsize, curmsgs)` of the queue.
    pub(crate) fn attr(&self) -> io::Result<(usize, usize, usize)> {
        // SAFETY: mq_attr is a plain C struct; all-zero is valid.
        let mut attr: libc::mq_attr = unsafe { std::mem::zeroed() };
        // SAFETY: `self.mqd` is an open queue and `attr` a writable mq_attr.
        if unsafe { libc::mq_getattr(self.mqd, &mut attr) } == -1 {
            return Err(io::Error::last_os_error());
        }
        Ok((
            attr.mq_maxmsg as usize,
            attr.mq_msgsize as usize,
            attr.mq_curmsgs as usize,
        ))
    }

    /// Sends `bytes` with `prio`, waiting at most `slice` while the queue is full.
    pub(crate) fn send(
        &self,
        bytes: &[u8],
        prio: u32,
        slice: Duration,
    ) -> io::Result<MqResult<()>> {
        let ts = abs_timespec(slice);
        // SAFETY: `bytes` is valid for `bytes.len()` bytes, `ts` is a valid timespec, the
        // queue is open.
        let r =
            unsafe { libc::mq_timedsend(self.mqd, bytes.as_ptr().cast(), bytes.len(), prio, &ts) };
        if r == 0 {
            return Ok(MqResult::Done(()));
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::ETIMEDOUT) | Some(libc::EINTR) => Ok(MqResult::TimedOut),
            _ => Err(e),
        }
    }

    /// Receives one message into `buf` (which must hold `msgsize` bytes), waiting at most
    /// `slice` while the queue is empty. Returns its length and priority.
    pub(crate) fn receive(
        &self,
        buf: &mut [u8],
        slice: Duration,
    ) -> io::Result<MqResult<(usize, u32)>> {
        let ts = abs_timespec(slice);
        let mut prio: libc::c_uint = 0;
        // SAFETY: `buf` is writable for `buf.len()` bytes, `prio` and `ts` are valid, the
        // queue is open.
        let r = unsafe {
            libc::mq_timedreceive(self.mqd, buf.as_mut_ptr().cast(), buf.len(), &mut prio, &ts)
        };
        if r >= 0 {
            return Ok(MqResult::Done((r as usize, prio)));
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::ETIMEDOUT) | Some(libc::EINTR) => Ok(MqResult::TimedOut),
            _ => Err(e),
        }
    }
}

impl Drop for Mq {
    fn drop(&mut self) {
        // SAFETY: `self.mqd` is an open queue descriptor owned by this value.
        unsafe { libc::mq_close(self.mqd) };
    }
}

/// The kernel's limits for queues an unprivileged process may create: `(msg_max,
/// msgsize_max)`, from `/proc/sys/fs/mqueue` (defaults 10 and 8192).
pub(crate) fn limits() -> (usize, usize) {
    let read = |f: &str, d: usize| {
        std::fs::read_to_string(format!("/proc/sys/fs/mqueue/{f}"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(d)
    };
    (read("msg_max", 10), read("msgsize_max", 8192))
}
