//! Anonymous pipes, and the framed pipe link that FIFOs share.
//!
//! [`pipe`] makes both ends in this process; one of them is usually handed to a child
//! process (`Sender::pass_to`/`Receiver::pass_to`), which takes it back with
//! `from_inherited`. Each sender writes a hello when it is made, so a receiver meets the
//! sender's type before its first message.

use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use super::frame::{self, Hello, StreamRx, StreamTx, KIND_DATA, KIND_HELLO};
use super::{Link, LinkError, LinkOpenError, TransportKind, Wait, Wire};
use crate::sys::fd;

/// The writing end of a framed pipe or FIFO.
pub(crate) struct PipeSender {
    tx: StreamTx<File>,
    kind: TransportKind,
}

/// The reading end of a framed pipe or FIFO.
pub(crate) struct PipeReceiver {
    rx: StreamRx<File>,
    wire: Wire,
    kind: TransportKind,
    /// Run when dropped (the FIFO removes its file).
    pub(crate) on_drop: Option<Box<dyn FnOnce() + Send>>,
}

fn io(op: &'static str) -> impl FnOnce(std::io::Error) -> LinkOpenError {
    move |e| LinkOpenError::Io(op, e)
}

impl PipeSender {
    /// Wraps a write end and sends the hello for `wire`.
    pub(crate) fn new(file: File, wire: &Wire, kind: TransportKind) -> Result<Self, LinkOpenError> {
        let mut tx = StreamTx::new(file).map_err(io("fcntl"))?;
        match tx.send(KIND_HELLO, &frame::hello(wire), Wait::Forever) {
            Ok(()) => Ok(PipeSender { tx, kind }),
            Err(LinkError::Disconnected) => {
                Err(LinkOpenError::Refused("the receiving end is closed".into()))
            }
            Err(e) => Err(LinkOpenError::Invalid(e.to_string())),
        }
    }

    pub(crate) fn into_fd(self) -> OwnedFd {
        OwnedFd::from(self.tx.io)
    }
}

impl PipeReceiver {
    /// Wraps a read end. With `handshake`, waits up to that long for the sender's hello and
    /// checks it; otherwise hellos are checked as they arrive.
    pub(crate) fn new(
        file: File,
        wire: &Wire,
        kind: TransportKind,
        handshake: Option<Duration>,
    ) -> Result<Self, LinkOpenError> {
        let mut rx = StreamRx::new(file).map_err(io("fcntl"))?;
        if let Some(timeout) = handshake {
            rx.expect_hello(wire, timeout)?;
        }
        Ok(PipeReceiver {
            rx,
            wire: *wire,
            kind,
            on_drop: None,
        })
    }

    pub(crate) fn into_fd(mut self) -> OwnedFd {
        self.on_drop = None;
        let this = std::mem::ManuallyDrop::new(self);
        // SAFETY: `this` is never used or dropped again, so moving the file out of it leaves
        // no second owner; the other fields hold no resources (on_drop is None).
        let rx = unsafe { std::ptr::read(&this.rx) };
        OwnedFd::from(rx.io)
    }
}

impl Link for PipeSender {
    fn send_frame(&mut self, bytes: &[u8], _tag: u32, wait: Wait) -> Result<(), LinkError> {
        self.tx.send(KIND_DATA, bytes, wait)
    }

    fn recv_frame(&mut self, _buf: &mut Vec<u8>, _wait: Wait) -> Result<(), LinkError> {
        unreachable!("a sending link does not receive")
    }

    fn is_connected(&mut self) -> bool {
        match fd::poll_one(self.tx.io.as_fd(), false, Some(Duration::ZERO)) {
            Ok(r) => !r.hangup,
            Err(_) => true,
        }
    }

    fn kind(&self) -> TransportKind {
        self.kind
    }

    fn into_pipe_fd(self: Box<Self>) -> Option<OwnedFd> {
        (self.kind == TransportKind::Pipe).then(|| self.into_fd())
    }
}

impl Link for PipeReceiver {
    fn send_frame(&mut self, _bytes: &[u8], _tag: u32, _wait: Wait) -> Result<(), LinkError> {
        unreachable!("a receiving link does not send")
    }

    fn recv_frame(&mut self, buf: &mut Vec<u8>, wait: Wait) -> Result<(), LinkError> {
        loop {
            if self.rx.recv(buf, wait)? == KIND_DATA {
                return Ok(());
            }
            // A (new) sender introduces itself.
            let hello = Hello::parse(buf).map_err(LinkError::Corrupt)?;
            if !hello.matches(&self.wire) {
                return Err(LinkError::Corrupt(format!(
                    "type mismatch: the sender sends {}, this receiver is for `{}`",
                    hello.desc(),
                    self.wire.name
                )));
            }
            self.rx.max_frame = hello.max_frame.min(frame::MAX_FRAME);
        }
    }

    fn is_connected(&mut self) -> bool {
        match fd::poll_one(self.rx.io.as_fd(), true, Some(Duration::ZERO)) {
            Ok(r) => !r.hangup,
            Err(_) => true,
        }
    }

    fn kind(&self) -> TransportKind {
        self.kind
    }

    fn into_pipe_fd(self: Box<Self>) -> Option<OwnedFd> {
        (self.kind == TransportKind::Pipe).then(|| self.into_fd())
    }
}

impl Drop for PipeReceiver {
    fn drop(&mut self) {
        if let Some(f) = self.on_drop.take() {
            f();
        }
    }
}

/// A new pipe: `(sender, receiver)`. The sender's hello is in the pipe already.
pub(crate) fn pipe(wire: &Wire) -> Result<(PipeSender, PipeReceiver), LinkOpenError> {
    let (r, w) = fd::pipe().map_err(io("pipe"))?;
    let rx = PipeReceiver::new(r, wire, TransportKind::Pipe, None)?;
    let tx = PipeSender::new(w, wire, TransportKind::Pipe)?;
    Ok((tx, rx))
}
