//! POSIX message queues (`/dev/mqueue`, which need not be mounted).
//!
//! The queue is `/<prefix><name>`; each message is one frame, the encoded message itself
//! (no header: the queue keeps boundaries and the kernel does not corrupt them). The type
//! check and the sender/receiver presence live in the presence file
//! `<prefix><name>.mq` (see `presence`). Priorities: [`Sender::send_with_priority`]
//! (crate::Sender::send_with_priority) sets the message priority; higher priorities are
//! received first.
//!
//! Limits: the kernel caps a queue at `fs.mqueue.msg_max` messages (10 by default) of
//! `fs.mqueue.msgsize_max` bytes (8192), and a user's queues at `RLIMIT_MSGQUEUE` bytes
//! (800 KiB: nine default-size queues). The channel capacity is clamped to `msg_max`; a
//! larger message is `TooLarge`. A queue that no handle uses any more (crashed processes)
//! is kept with its messages by the next handle that attaches if it carries the same type,
//! and replaced otherwise (see `presence`).

use std::time::Duration;

use super::presence::{self, Presence, Setup};
use super::{Link, LinkError, LinkOpenError, TransportKind, Wait, Wire};
use crate::segment::Role;
use crate::sys::mq::{self, Mq, MqResult};
use crate::sys::perm::Access;

/// One end of a POSIX message-queue channel.
pub(crate) struct PosixMq {
    // Field order: the queue descriptor closes before the presence detaches (and, if last,
    // unlinks the queue).
    q: Mq,
    presence: Presence,
    msgsize: usize,
    capacity: usize,
    /// Priority of the last received message.
    pub(crate) last_priority: u32,
}

impl PosixMq {
    pub(crate) fn open(
        object: &str,
        wire: &Wire,
        role: Role,
        create: bool,
        capacity: usize,
        access: &Access,
    ) -> Result<Self, LinkOpenError> {
        let (msg_max, msgsize_max) = mq::limits();
        if wire.max_frame > msgsize_max && wire.encoding == crate::Encoding::ZeroCopy as u32 {
            return Err(LinkOpenError::Invalid(format!(
                "the message type is {} bytes; POSIX queues carry at most {msgsize_max} (fs.mqueue.msgsize_max)",
                wire.max_frame
            )));
        }
        let path = presence::dir().join(format!("{object}.mq"));
        let (mut presence, setup) = Presence::attach(path, wire, role, create, access)?;
        if setup == Setup::Fresh {
            let _ = Mq::unlink(object); // left by crashed processes, of another type
        }
        let want_size = wire.max_frame.clamp(1, msgsize_max);
        let want_cap = capacity.clamp(1, msg_max);
        let (q, made) = Mq::open(
            object,
            create || setup != Setup::Joined,
            want_cap,
            want_size,
            access.mode,
        )
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => LinkOpenError::NotFound(format!("/{object}")),
            _ => LinkOpenError::Io("mq_open", e),
        })?;
        {
            use std::os::fd::AsFd;
            access
                .check_fd(q.as_fd())
                .map_err(|e| LinkOpenError::perm(format_args!("POSIX queue /{object}"), e))?;
            if made {
                access
                    .apply_fd(q.as_fd(), false)
                    .map_err(|e| LinkOpenError::Io("fchmod", e))?;
            }
        }
        let name = object.to_owned();
        presence.on_last = Some(Box::new(move || {
            let _ = Mq::unlink(&name);
        }));
        presence.share();
        let (capacity, msgsize, _) = q.attr().map_err(|e| LinkOpenError::Io("mq_getattr", e))?;
        Ok(PosixMq {
            q,
            presence,
            msgsize,
            capacity,
            last_priority: 0,
        })
    }

    pub(crate) fn max_frame(&self) -> usize {
        self.msgsize
    }
}

impl Link for PosixMq {
    fn send_frame(&mut self, bytes: &[u8], tag: u32, wait: Wait) -> Result<(), LinkError> {
        if bytes.len() > self.msgsize {
            return Err(LinkError::TooLarge { max: self.msgsize });
        }
        loop {
            if self.presence.peer_gone() {
                return Err(LinkError::Disconnected);
            }
            let slice = wait.slice(super::LIVENESS_SLICE).unwrap_or(Duration::ZERO);
            match self
                .q
                .send(bytes, tag, slice)
                .map_err(|e| LinkError::io("mq_timedsend", e))?
            {
                MqResult::Done(()) => return Ok(()),
                MqResult::TimedOut if wait.slice(super::LIVENESS_SLICE).is_none() => {
                    return Err(wait.expired())
                }
                MqResult::TimedOut => {}
            }
        }
    }

    fn recv_frame(&mut self, buf: &mut Vec<u8>, wait: Wait) -> Result<(), LinkError> {
        buf.resize(self.msgsize, 0);
        // A message that is already there is delivered whatever the sender's state: one
        // system call, no presence check (two more) in a busy stream.
        if let MqResult::Done((n, prio)) = self
            .q
            .receive(buf, Duration::ZERO)
            .map_err(|e| LinkError::io("mq_timedreceive", e))?
        {
            buf.truncate(n);
            self.last_priority = prio;
            return Ok(());
        }
        loop {
            // Look at presence before the queue: a sender that left after we looked cannot
            // have messages we miss.
            let gone = self.presence.peer_gone();
            let slice = if gone {
                Duration::ZERO
            } else {
                wait.slice(super::LIVENESS_SLICE).unwrap_or(Duration::ZERO)
            };
            match self
                .q
                .receive(buf, slice)
                .map_err(|e| LinkError::io("mq_timedreceive", e))?
            {
                MqResult::Done((n, prio)) => {
                    buf.truncate(n);
                    self.last_priority = prio;
                    return Ok(());
                }
                MqResult::TimedOut if gone => {
                    buf.clear();
                    return Err(LinkError::Disconnected);
                }
                MqResult::TimedOut if wait.slice(super::LIVENESS_SLICE).is_none() => {
                    buf.clear();
                    return Err(wait.expired());
                }
                MqResult::TimedOut => {}
            }
        }
    }

    fn is_connected(&mut self) -> bool {
        self.presence.peer_attached()
    }

    fn kind(&self) -> TransportKind {
        TransportKind::PosixQueue
    }

    fn capacity(&self) -> Option<usize> {
        Some(self.capacity)
    }
}
