//! [`WakeStrategy::EventFd`](super::WakeStrategy::EventFd): every participant has an eventfd
//! and sleeps on it; the waker writes 1 to the sleeper's eventfd.
//!
//! The waker gets the eventfd from the sleeper itself: each participant also binds a
//! datagram socket in the abstract namespace (as with `UnixSocket`), and before it first
//! announces itself as a waiter to a given peer (a peer entry's generation), it sends that
//! peer's socket a hello carrying its role, index and generation, with the eventfd attached
//! (`SCM_RIGHTS`). The hello is queued before the waiter bit is set, so a waker that claims
//! the bit finds it by reading its own socket. Until a current eventfd is known (the waker
//! attached after the hello was due), the waker sends one byte to the sleeper's socket
//! instead. The sleeper waits on an epoll set of both; that epoll descriptor is the
//! receiver's pollable descriptor (`AsFd`).

use std::cell::RefCell;
use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::Ordering;
use std::time::Duration;

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};
use nix::sys::eventfd::{EfdFlags, EventFd as Efd};
use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags, UnixAddr};

use super::unix_socket::{abstract_name, bind, socket_name, wait_readable};
use super::{selected, Notifier};
use crate::segment::layout::{state, WaitCell};
use crate::segment::Segment;
use crate::segment::{Memory, Role};

const HELLO_LEN: usize = 9;

pub(crate) struct EventFd {
    role: Role,
    index: u32,
    object: String,
    efd: Efd,
    sock: UnixDatagram,
    out: UnixDatagram,
    epoll: Epoll,
    /// Eventfds received from participants of the other role: `(generation, fd)` by index.
    known: RefCell<Vec<Option<(u32, OwnedFd)>>>,
    /// The generation of each peer entry our eventfd was last sent to.
    sent: RefCell<Vec<Option<u32>>>,
}

fn generation(seg: &Segment, role: Role, index: u32) -> Option<u32> {
    let s = seg.participant(role, index).state.load(Ordering::Acquire);
    (s & state::MASK == state::ACTIVE).then_some(s >> 2)
}

fn role_code(role: Role) -> u8 {
    match role {
        Role::Sender => 0,
        Role::Receiver => 1,
    }
}

fn other(role: Role) -> Role {
    crate::ring::other(role)
}

impl EventFd {
    pub(crate) fn new(object: &str, role: Role, index: u32) -> io::Result<EventFd> {
        let efd = Efd::from_flags(EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)?;
        let sock = bind(object, 'e', role, index)?;
        let out = UnixDatagram::unbound()?;
        out.set_nonblocking(true)?;
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
        epoll.add(efd.as_fd(), EpollEvent::new(EpollFlags::EPOLLIN, 0))?;
        epoll.add(sock.as_fd(), EpollEvent::new(EpollFlags::EPOLLIN, 1))?;
        Ok(EventFd {
            role,
            index,
            object: object.to_owned(),
            efd,
            sock,
            out,
            epoll,
            known: RefCell::new(Vec::new()),
            sent: RefCell::new(Vec::new()),
        })
    }

    /// Reads every pending datagram of our socket: hellos update `known`; a plain wake-up
    /// byte is turned into a count on our own eventfd, so it is not lost if we are about to
    /// sleep.
    fn read_socket(&self) {
        loop {
            let mut buf = [0u8; 16];
            let mut fds: Vec<RawFd> = Vec::new();
            let len = {
                let mut iov = [IoSliceMut::new(&mut buf)];
                let mut cmsg = nix::cmsg_space!([RawFd; 2]);
                let msg = match recvmsg::<()>(
                    self.sock.as_raw_fd(),
                    &mut iov,
                    Some(&mut cmsg),
                    MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC,
                ) {
                    Ok(m) => m,
                    Err(_) => return,
                };
                if let Ok(cmsgs) = msg.cmsgs() {
                    for c in cmsgs {
                        if let ControlMessageOwned::ScmRights(r) = c {
                            fds.extend(r);
                        }
                    }
                }
                msg.bytes
            };
            // SAFETY: the kernel just installed these descriptors in our table for us;
            // nothing else owns them.
            let mut owned: Vec<OwnedFd> = fds
                .into_iter()
                .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })
                .collect();
            if len == HELLO_LEN && buf[0] == role_code(other(self.role)) && owned.len() == 1 {
                let index = u32::from_le_bytes(buf[1..5].try_into().expect("4 bytes")) as usize;
                let gen = u32::from_le_bytes(buf[5..9].try_into().expect("4 bytes"));
                if index < 64 {
                    let mut known = self.known.borrow_mut();
                    if known.len() <= index {
                        known.resize_with(index + 1, || None);
                    }
                    known[index] = Some((gen, owned.pop().expect("one fd")));
                }
            } else if len == 1 {
                let _ = self.efd.write(1);
            }
        }
    }

    /// Sends our eventfd to every attached peer that does not have it for its current
    /// generation.
    fn hello_peers(&self, seg: &Segment) {
        let peer_role = other(self.role);
        let max = match peer_role {
            Role::Sender => seg.geometry().max_senders,
            Role::Receiver => seg.geometry().max_receivers,
        }
        .min(64);
        let Some(my_gen) = generation(seg, self.role, self.index) else {
            return;
        };
        let mut sent = self.sent.borrow_mut();
        sent.resize(max as usize, None);
        for i in 0..max {
            let Some(gen) = generation(seg, peer_role, i) else {
                continue;
            };
            if sent[i as usize] == Some(gen) {
                continue;
            }
            let mut hello = [0u8; HELLO_LEN];
            hello[0] = role_code(self.role);
            hello[1..5].copy_from_slice(&self.index.to_le_bytes());
            hello[5..9].copy_from_slice(&my_gen.to_le_bytes());
            let Ok(addr) =
                UnixAddr::new_abstract(abstract_name(&self.object, 'e', peer_role, i).as_bytes())
            else {
                continue;
            };
            let fds = [self.efd.as_fd().as_raw_fd()];
            let ok = sendmsg(
                self.out.as_raw_fd(),
                &[IoSlice::new(&hello)],
                &[ControlMessage::ScmRights(&fds)],
                MsgFlags::MSG_DONTWAIT,
                Some(&addr),
            )
            .is_ok();
            if ok {
                sent[i as usize] = Some(gen);
            }
        }
    }
}

impl Notifier for EventFd {
    fn prepare(&self, seg: &Segment) {
        self.read_socket();
        let _ = self.efd.read(); // resets the count (EAGAIN when already 0)
        self.hello_peers(seg);
    }

    fn sleep(&self, _seg: &Segment, _cell: &WaitCell, _ticket: u32, timeout: Duration) {
        wait_readable(self.epoll.0.as_fd(), timeout);
    }

    fn wake(&self, seg: &Segment, role: Role, sleepers: u64) -> bool {
        self.read_socket();
        let known = self.known.borrow();
        for i in selected(seg, role, sleepers) {
            let current = generation(seg, role, i);
            match known.get(i as usize) {
                Some(Some((gen, fd))) if current == Some(*gen) => {
                    let _ = nix::unistd::write(fd, &1u64.to_ne_bytes());
                }
                _ => {
                    if current.is_some() {
                        let _ = self
                            .out
                            .send_to_addr(&[1], &socket_name(&self.object, 'e', role, i));
                    }
                }
            }
        }
        true
    }

    fn fd(&self) -> Option<BorrowedFd<'_>> {
        Some(self.epoll.0.as_fd())
    }
}
