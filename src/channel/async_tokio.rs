//! Async channels on tokio (the `tokio` feature): [`AsyncReceiver`] waits on the
//! receiver's pollable descriptor (see [`Receiver::prepare_poll`]) registered once with
//! tokio's reactor, so any number of channels share one runtime without a helper thread
//! per channel; [`AsyncSender`] retries a full ring after yielding and sleeping.

use std::future::Future;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::time::Sleep;

use super::{Receiver, Sample, Sender, LIVENESS_SLICE};
use crate::error::{RecvError, SendError, TryRecvError, TrySendError};
use crate::message::Message;

/// How many times in a row one poll may find "a message may be there" without getting one
/// before it yields to the runtime (a sender between claiming and committing a slot, or a
/// sender gone whose departure `try_recv` has not noticed yet).
const MAX_EAGER_RETRIES: u32 = 16;

/// A [`Receiver`] whose channel has a pollable wake strategy ([`WakeStrategy::UnixSocket`]
/// or [`WakeStrategy::EventFd`]), waited on asynchronously: [`recv`](Self::recv)`.await`
/// and [`Stream`](futures_core::Stream) of owned messages.
///
/// The receiver's descriptor is registered with the tokio reactor once, in
/// [`new`](Self::new), so thousands of channels can wait on one runtime thread. A waiting
/// receiver also wakes every 10 ms to check that its senders are alive (as the blocking
/// [`Receiver::recv`] does), so the runtime needs its time driver
/// (`Builder::enable_all`, or `#[tokio::main]` / `#[tokio::test]`).
///
/// # Cancel safety
///
/// [`recv`](Self::recv) is cancel safe: a message is taken from the ring only inside
/// [`Receiver::try_recv`], which runs to completion within one poll and whose result is
/// returned from that same poll. Dropping the future while it waits (in `select!`, or on a
/// `timeout`) therefore loses no message; the next `recv` gets it. The same holds for the
/// `Stream`.
///
/// [`WakeStrategy::UnixSocket`]: crate::WakeStrategy::UnixSocket
/// [`WakeStrategy::EventFd`]: crate::WakeStrategy::EventFd
pub struct AsyncReceiver<T: Message> {
    rx: Receiver<T>,
    wait: Wait,
}

/// The waiting half of an [`AsyncReceiver`] (a separate field, so that a sample borrowed
/// from the receiver and the wait state can be used side by side).
struct Wait {
    /// A duplicate of the receiver's pollable descriptor, registered for readability.
    fd: AsyncFd<OwnedFd>,
    /// Wakes a waiting poll to check that the senders are alive.
    liveness: Option<Pin<Box<Sleep>>>,
    /// Consecutive "a message may be there" answers without a message (see
    /// [`MAX_EAGER_RETRIES`]).
    eager: u32,
}

/// Why [`AsyncReceiver::new`] failed; holds the receiver, which
/// [`into_receiver`](Self::into_receiver) gives back.
pub struct AsyncReceiverError<T: Message> {
    /// Boxed: a `Receiver` is large, and errors should be small.
    receiver: Box<Receiver<T>>,
    source: io::Error,
}

impl<T: Message> AsyncReceiverError<T> {
    /// The receiver that could not be made asynchronous.
    pub fn into_receiver(self) -> Receiver<T> {
        *self.receiver
    }

    /// The cause: [`io::ErrorKind::Unsupported`] for a channel whose wake strategy has no
    /// descriptor to poll, otherwise the error of duplicating or registering it.
    pub fn io_error(&self) -> &io::Error {
        &self.source
    }
}

impl<T: Message> std::fmt::Display for AsyncReceiverError<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "cannot receive asynchronously on channel {:?}: {}",
            self.receiver.name(),
            self.source
        )
    }
}

impl<T: Message> std::fmt::Debug for AsyncReceiverError<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncReceiverError")
            .field("channel", &self.receiver.name())
            .field("source", &self.source)
            .finish()
    }
}

impl<T: Message> std::error::Error for AsyncReceiverError<T> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

impl<T: Message> AsyncReceiver<T> {
    /// Registers `rx`'s pollable descriptor with the current tokio runtime.
    ///
    /// # Errors
    ///
    /// An error of kind [`io::ErrorKind::Unsupported`] if the channel's wake strategy is
    /// not pollable ([`WakeStrategy::is_pollable`](crate::WakeStrategy::is_pollable)) or the
    /// transport is neither shared memory nor D-Bus; the error of duplicating or registering the
    /// descriptor otherwise. The error gives the receiver back.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime (with its IO driver enabled).
    pub fn new(rx: Receiver<T>) -> Result<Self, AsyncReceiverError<T>> {
        let dup = match rx.poll_fd() {
            Some(fd) => fd.try_clone_to_owned(),
            None => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!(
                    "its wake strategy ({}) has no descriptor to poll; create the channel \
                     with WakeStrategy::UnixSocket or WakeStrategy::EventFd",
                    rx.wake_strategy()
                        .map_or_else(|| format!("none: {}", rx.transport()), |s| s.to_string())
                ),
            )),
        };
        let dup = match dup {
            Ok(d) => d,
            Err(source) => {
                return Err(AsyncReceiverError {
                    receiver: Box::new(rx),
                    source,
                })
            }
        };
        // SAFETY: `dup` is an open descriptor that the `AsyncFd` owns: it stays open, refers
        // to the same file description and `as_raw_fd` returns the same number until the
        // `AsyncFd` is dropped.
        match unsafe { AsyncFd::register_with_interest(dup, Interest::READABLE) } {
            Ok(fd) => Ok(AsyncReceiver {
                rx,
                wait: Wait {
                    fd,
                    liveness: None,
                    eager: 0,
                },
            }),
            Err(e) => Err(AsyncReceiverError {
                receiver: Box::new(rx),
                source: e.into(),
            }),
        }
    }

    /// The receiver.
    pub fn get_ref(&self) -> &Receiver<T> {
        &self.rx
    }

    /// Deregisters the descriptor and gives the receiver back.
    pub fn into_inner(self) -> Receiver<T> {
        self.rx
    }

    /// Receives the next message, waiting asynchronously while the channel is empty; the
    /// [`Sample`] borrows the receiver, as with [`Receiver::recv`] (zero-copy).
    ///
    /// Cancel safe: see the [type's documentation](Self#cancel-safety).
    ///
    /// This future is not `Send`, since it borrows the receiver, which is not `Sync`: use it
    /// on a current-thread runtime, in a `LocalSet`, or in `block_on`. In a task given to
    /// `tokio::spawn`, use [`recv_owned`](Self::recv_owned) or the `Stream`.
    ///
    /// # Errors
    ///
    /// As [`Receiver::recv`]: [`RecvError::Disconnected`] once every sender has gone and
    /// every committed message was received, [`RecvError::Lagged`], [`RecvError::Decode`],
    /// [`RecvError::Corrupt`].
    pub async fn recv(&mut self) -> Result<Sample<'_, T>, RecvError> {
        let (rx, wait) = (&self.rx, &mut self.wait);
        loop {
            // Wait first: it returns at once when a message may be there.
            std::future::poll_fn(|cx| wait.poll(rx, cx)).await;
            match rx.try_recv() {
                Ok(sample) => {
                    wait.eager = 0;
                    return Ok(sample);
                }
                Err(e) => {
                    if let Some(e) = wait.failed(e) {
                        return Err(e);
                    }
                }
            }
        }
    }

    /// [`recv`](Self::recv), returning the message by value; this future is `Send`, so it
    /// can run in a task given to `tokio::spawn`.
    ///
    /// Cancel safe: see the [type's documentation](Self#cancel-safety).
    ///
    /// # Errors
    ///
    /// As [`recv`](Self::recv).
    pub async fn recv_owned(&mut self) -> Result<T, RecvError> {
        loop {
            // `&mut` (not `&`) receiver across the `.await`, so that the future is `Send`.
            let (rx, wait) = (&mut self.rx, &mut self.wait);
            std::future::poll_fn(move |cx| wait.poll(&*rx, cx)).await;
            match self.rx.try_recv() {
                Ok(sample) => {
                    self.wait.eager = 0;
                    return Ok(sample.into_inner());
                }
                Err(e) => {
                    if let Some(e) = self.wait.failed(e) {
                        return Err(e);
                    }
                }
            }
        }
    }
}

impl Wait {
    /// The error to return for a failed `try_recv`; `None` for `Empty` (wait again).
    fn failed(&mut self, e: TryRecvError) -> Option<RecvError> {
        let e = match e {
            TryRecvError::Empty => return None,
            TryRecvError::Lagged(n) => RecvError::Lagged(n),
            TryRecvError::Decode(d) => RecvError::Decode(d),
            TryRecvError::Corrupt(c) => RecvError::Corrupt(c),
            _ => RecvError::Disconnected,
        };
        self.eager = 0;
        Some(e)
    }

    /// Ready when a `try_recv` is worth trying: a message may be there (or the senders are
    /// gone), the descriptor became readable, or the liveness timer fired.
    fn poll<T: Message>(&mut self, rx: &Receiver<T>, cx: &mut Context<'_>) -> Poll<()> {
        if rx.prepare_poll() {
            self.eager += 1;
            if self.eager > MAX_EAGER_RETRIES {
                // Let other tasks run; try again on the next poll.
                self.eager = 0;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            return Poll::Ready(());
        }
        self.eager = 0;
        match self.fd.poll_read_ready(cx) {
            Poll::Ready(Ok(mut guard)) => {
                // `prepare_poll` drains the descriptor before the next wait.
                guard.clear_ready();
                self.liveness = None;
                return Poll::Ready(());
            }
            Poll::Ready(Err(e)) => {
                // The reactor is gone (runtime shutting down): fall back to the timer.
                tracing::debug!(channel = rx.name(), error = %e, "poll_read_ready failed");
            }
            Poll::Pending => {}
        }
        let timer = self
            .liveness
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(LIVENESS_SLICE)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => {
                self.liveness = None;
                Poll::Ready(())
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// The messages, by value, until every sender has gone ([`RecvError::Disconnected`]).
///
/// A [`RecvError::Lagged`] or [`RecvError::Decode`] is logged (`tracing` warning) and
/// skipped, as the channel goes on; a [`RecvError::Corrupt`] is logged as an error and ends
/// the stream. Use [`AsyncReceiver::recv`] to see every error.
impl<T: Message> futures_core::Stream for AsyncReceiver<T> {
    type Item = T;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let this = self.get_mut();
        loop {
            if this.wait.poll(&this.rx, cx).is_pending() {
                return Poll::Pending;
            }
            match this.rx.try_recv() {
                Ok(sample) => {
                    this.wait.eager = 0;
                    return Poll::Ready(Some(sample.into_inner()));
                }
                Err(TryRecvError::Empty) => {}
                Err(TryRecvError::Disconnected) => return Poll::Ready(None),
                Err(TryRecvError::Corrupt(c)) => {
                    tracing::error!(channel = this.rx.name(), error = %c, "stream ends");
                    return Poll::Ready(None);
                }
                Err(e) => {
                    tracing::warn!(channel = this.rx.name(), error = %e, "message skipped");
                }
            }
        }
    }
}

impl<T: Message> std::fmt::Debug for AsyncReceiver<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncReceiver")
            .field("rx", &self.rx)
            .field("fd", &self.wait.fd.get_ref().as_fd())
            .finish()
    }
}

/// A [`Sender`] with an async [`send`](Self::send), on any transport.
///
/// A sender waits only while the ring is full, and no wake strategy gives senders a
/// descriptor to poll, so `send` retries [`Sender::try_send`]: first after yielding to the
/// runtime a few times, then after sleeping 50 µs, doubling up to 1 ms (tokio's timer
/// rounds sleeps up to its 1 ms resolution). A full channel therefore costs a sender up to
/// about a millisecond of latency, and no thread. The runtime needs its time driver.
///
/// # Cancel safety
///
/// The message is in the ring once `send` returns `Ok`. Dropping the future before that
/// drops the message unsent: it was either in the ring already (sent) or not at all, never
/// half-written.
pub struct AsyncSender<T: Message> {
    tx: Sender<T>,
}

impl<T: Message> AsyncSender<T> {
    /// Wraps `tx`.
    pub fn new(tx: Sender<T>) -> Self {
        AsyncSender { tx }
    }

    /// The sender.
    pub fn get_ref(&self) -> &Sender<T> {
        &self.tx
    }

    /// Gives the sender back.
    pub fn into_inner(self) -> Sender<T> {
        self.tx
    }

    /// Sends `msg`, waiting asynchronously while the ring is full.
    ///
    /// # Errors
    ///
    /// As [`Sender::send`]: [`SendError::Disconnected`], [`SendError::Encode`],
    /// [`SendError::Corrupt`], each handing the message back.
    pub async fn send(&mut self, msg: T) -> Result<(), SendError<T>> {
        const YIELDS: u32 = 4;
        let mut msg = msg;
        let mut attempt = 0u32;
        let mut backoff = Duration::from_micros(50);
        loop {
            match self.tx.try_send(msg) {
                Ok(()) => return Ok(()),
                Err(TrySendError::Full(m)) => msg = m,
                Err(TrySendError::Disconnected(m)) => return Err(SendError::Disconnected(m)),
                Err(TrySendError::Encode(m, e)) => return Err(SendError::Encode(m, e)),
                Err(TrySendError::Corrupt(m, e)) => return Err(SendError::Corrupt(m, e)),
            }
            attempt += 1;
            if attempt <= YIELDS {
                YieldOnce(false).await;
            } else {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(1));
            }
        }
    }
}

impl<T: Message> std::fmt::Debug for AsyncSender<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncSender").field("tx", &self.tx).finish()
    }
}

/// Pending once (waking itself at once), then ready.
struct YieldOnce(bool);

impl Future for YieldOnce {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            return Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}
