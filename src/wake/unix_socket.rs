//! [`WakeStrategy::UnixSocket`](super::WakeStrategy::UnixSocket): every participant binds a
//! datagram socket in the abstract namespace, named after the channel, its role and its
//! entry index ([`socket_name`]). The waker sends one byte to each sleeper's socket; the
//! sleeper polls its socket and drains it before it announces itself again. A full socket
//! buffer already holds a wake-up, so a send that would block is dropped.
//!
//! The socket is the receiver's pollable descriptor (`AsFd`).

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

use super::{selected, tag, Notifier};
use crate::segment::layout::WaitCell;
use crate::segment::Role;
use crate::segment::Segment;

/// The abstract socket name of participant `index` of `role` of channel `object`; `kind`
/// tells strategies apart.
pub(crate) fn socket_name(object: &str, kind: char, role: Role, index: u32) -> SocketAddr {
    SocketAddr::from_abstract_name(abstract_name(object, kind, role, index).as_bytes())
        .expect("short abstract name")
}

/// The bytes of [`socket_name`] (without the leading NUL).
pub(crate) fn abstract_name(object: &str, kind: char, role: Role, index: u32) -> String {
    let r = match role {
        Role::Sender => 's',
        Role::Receiver => 'r',
    };
    format!("shmbus-wake/{:016x}/{kind}{r}{index}", tag(object))
}

/// A bound, non-blocking datagram socket for participant `index` of `role`.
pub(crate) fn bind(object: &str, kind: char, role: Role, index: u32) -> io::Result<UnixDatagram> {
    let sock = UnixDatagram::bind_addr(&socket_name(object, kind, role, index))?;
    sock.set_nonblocking(true)?;
    Ok(sock)
}

/// Reads and discards every pending datagram.
pub(crate) fn drain(sock: &UnixDatagram) {
    let mut buf = [0u8; 16];
    while sock.recv(&mut buf).is_ok() {}
}

/// Waits at most `timeout` for `fd` to become readable.
pub(crate) fn wait_readable(fd: BorrowedFd<'_>, timeout: Duration) {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    // Round up to a millisecond so that a short timeout still sleeps.
    let ms = timeout.as_micros().div_ceil(1000).min(u16::MAX as u128) as u16;
    let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
    let _ = poll(&mut fds, PollTimeout::from(ms));
}

pub(crate) struct UnixSocket {
    /// Our own socket: wake-ups for us arrive here.
    sock: UnixDatagram,
    /// Unbound, for sending wake-ups.
    out: UnixDatagram,
    object: String,
}

impl UnixSocket {
    pub(crate) fn new(object: &str, role: Role, index: u32) -> io::Result<UnixSocket> {
        let out = UnixDatagram::unbound()?;
        out.set_nonblocking(true)?;
        Ok(UnixSocket {
            sock: bind(object, 'u', role, index)?,
            out,
            object: object.to_owned(),
        })
    }
}

impl Notifier for UnixSocket {
    fn prepare(&self, _seg: &Segment) {
        drain(&self.sock);
    }

    fn sleep(&self, _seg: &Segment, _cell: &WaitCell, _ticket: u32, timeout: Duration) {
        wait_readable(self.sock.as_fd(), timeout);
    }

    fn wake(&self, seg: &Segment, role: Role, sleepers: u64) -> bool {
        for i in selected(seg, role, sleepers) {
            // ECONNREFUSED (nobody bound), EAGAIN (a wake-up is already pending): fine.
            let _ = self
                .out
                .send_to_addr(&[1], &socket_name(&self.object, 'u', role, i));
        }
        true
    }

    fn fd(&self) -> Option<BorrowedFd<'_>> {
        Some(self.sock.as_fd())
    }
}
