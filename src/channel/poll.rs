//! Wake-strategy accessors, and pollable receivers: with [`WakeStrategy::UnixSocket`] and
//! [`WakeStrategy::EventFd`] a [`Receiver`] on shared memory has a file descriptor that an
//! event loop can poll. Other transports have no wake strategy; a D-Bus receiver is
//! pollable too.

use std::os::fd::{AsFd, BorrowedFd};

use super::{Receiver, Sender};
use crate::message::Message;
use crate::ring::{self, wait, Peers};
use crate::segment::{Memory, Role};
use crate::wake::WakeStrategy;

impl<T: Message> Sender<T> {
    /// The channel's wake strategy (chosen by its creator); `None` for transports other
    /// than shared memory, which have none.
    pub fn wake_strategy(&self) -> Option<WakeStrategy> {
        self.ring_end().map(|end| end.strategy)
    }
}

impl<T: Message> Receiver<T> {
    /// The channel's wake strategy (chosen by its creator); `None` for transports other
    /// than shared memory, which have none.
    pub fn wake_strategy(&self) -> Option<WakeStrategy> {
        self.ring_end().map(|(end, _)| end.strategy)
    }

    /// The descriptor to poll for readability, for channels with a pollable strategy
    /// ([`WakeStrategy::is_pollable`]) and for D-Bus receivers; `None` otherwise. See
    /// [`prepare_poll`](Self::prepare_poll) for the protocol.
    pub fn poll_fd(&self) -> Option<BorrowedFd<'_>> {
        match self.ring_end() {
            Some((end, _)) => end.seg.notifier.fd(),
            None => self.link_end().and_then(|l| l.poll_fd()),
        }
    }

    /// Announces this receiver as a waiter, so that the sender signals the descriptor of
    /// [`poll_fd`](Self::poll_fd) (or [`AsFd`]) on its next message; returns `true` if there
    /// is no need to wait: a message may already be there, or the sender is gone.
    ///
    /// The protocol for an event loop:
    ///
    /// 1. call `prepare_poll()`; if it returns `true`, go to 3;
    /// 2. poll the descriptor for readability (`POLLIN`);
    /// 3. call [`try_recv`](Self::try_recv) until it returns `Empty` (or `Disconnected`),
    ///    then start over at 1.
    ///
    /// Readable means "a message may be waiting": wake-ups coalesce, so one readiness can
    /// stand for many messages, and it can be spurious. `prepare_poll` clears the
    /// descriptor, so it stays readable until the next `prepare_poll`. Without
    /// `prepare_poll` the sender does not know anyone is waiting and sends no wake-up.
    ///
    /// On a channel whose strategy is not pollable this only reports whether a message may
    /// be there. On a D-Bus receiver it follows the protocol above; on other transports
    /// other than shared memory it always returns `true`.
    pub fn prepare_poll(&self) -> bool {
        let Some((end, consumer)) = self.ring_end() else {
            return self.link_end().is_none_or(|l| l.prepare_poll());
        };
        let seg = &end.seg;
        let cell = ring::sleeps_on(seg, Role::Receiver);
        if consumer.ready(seg) {
            return true;
        }
        seg.notifier.prepare(&seg.seg);
        wait::prepare(seg.control(), cell, end.index);
        if consumer.ready(seg) || ring::peers(seg, ring::other(Role::Receiver), true) == Peers::Gone
        {
            wait::finish(cell, end.index);
            return true;
        }
        false
    }
}

/// The descriptor to poll: see [`Receiver::prepare_poll`].
///
/// # Panics
///
/// If the channel's wake strategy is not pollable ([`WakeStrategy::is_pollable`]); use
/// [`Receiver::poll_fd`] to find out without panicking.
impl<T: Message> AsFd for Receiver<T> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.poll_fd().unwrap_or_else(|| {
            panic!(
                "the wake strategy of channel {:?} ({}) has no descriptor to poll",
                self.name(),
                self.wake_strategy()
                    .map_or_else(|| "no wake strategy".to_owned(), |s| s.to_string())
            )
        })
    }
}
