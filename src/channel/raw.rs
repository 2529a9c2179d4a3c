//! A sender and a receiver that know their message type only from the channel's header:
//! the `shmbus send` tool writes bytes it encoded itself through the recorded schema, and
//! the Zenoh bridge carries encoded messages between machines without their Rust types.

use std::time::Duration;

use super::{deadline_after, Blocked, End};
use crate::error::OpenError;
use crate::message::{Encoding, MessageInfo};
use crate::options::Options;
use crate::ring::{Claim, Consumer, Producer, Take};
use crate::segment::layout::slot_flags;
use crate::segment::OpenMode;
use crate::segment::{Memory, Role};

/// Why raw bytes were not sent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RawSendError {
    /// Every receiver left (queue mode).
    #[error("no receiver is attached any more")]
    Disconnected,
    /// The channel stayed full.
    #[error("the channel stayed full for the whole timeout")]
    Timeout,
    /// The bytes do not fit a slot, or do not have the zero-copy message's exact size.
    #[error("{0}")]
    Size(String),
    /// The channel memory is corrupt.
    #[error(transparent)]
    Corrupt(crate::CorruptError),
}

/// A sender attached to an existing channel whose type is taken from its header.
pub struct RawSender {
    end: End,
    producer: Producer,
    msg_size: Option<usize>,
    flags: u32,
}

impl RawSender {
    /// Attaches as a sender to the existing channel `name`, whose header says the message is
    /// `info` (see [`inspect::Observer::message_info`](crate::inspect::Observer::message_info)).
    ///
    /// # Errors
    ///
    /// As for [`Sender::open`](crate::Sender::open).
    pub fn open(name: &str, options: &Options, info: MessageInfo) -> Result<RawSender, OpenError> {
        let end = End::open_info(name, options, OpenMode::Open, Role::Sender, info)?;
        let producer = Producer::new(&end.seg, end.index, end.delivery);
        let msg_size = (info.encoding == Encoding::ZeroCopy).then_some(info.size);
        Ok(RawSender {
            end,
            producer,
            msg_size,
            flags: 0,
        })
    }

    /// Marks every message sent from now on as *forwarded*: it came from outside this
    /// machine. A [`RawReceiver`] reports the mark ([`RawMessage::forwarded`]), so a bridge
    /// that carries this channel out again can leave such messages alone instead of echoing
    /// them back. Typed receivers do not see the mark.
    pub fn set_forwarded(&mut self, forwarded: bool) {
        self.flags = if forwarded { slot_flags::FORWARDED } else { 0 };
    }

    /// Largest encoded message, in bytes.
    pub fn max_message_size(&self) -> usize {
        self.end.seg_max_message()
    }

    /// Sends one encoded message, waiting up to `timeout` for a free slot.
    ///
    /// # Errors
    ///
    /// [`RawSendError`].
    pub fn send_bytes(&self, bytes: &[u8], timeout: Duration) -> Result<(), RawSendError> {
        let mem = &self.end.seg;
        let max = mem.geometry().max_message as usize;
        if bytes.len() > max || self.msg_size.is_some_and(|n| n != bytes.len()) {
            return Err(RawSendError::Size(format!(
                "{} bytes do not fit this channel's messages ({})",
                bytes.len(),
                self.msg_size
                    .map_or(format!("up to {max} bytes"), |n| format!(
                        "exactly {n} bytes"
                    ))
            )));
        }
        let pos = self
            .end
            .block(deadline_after(timeout), || {
                Ok(match self.producer.try_claim(mem)? {
                    Claim::Claimed(pos) => Some(pos),
                    Claim::Full => None,
                })
            })
            .map_err(|b| match b {
                Blocked::Timeout => RawSendError::Timeout,
                Blocked::Disconnected => RawSendError::Disconnected,
                Blocked::Corrupt(c) => RawSendError::Corrupt(c),
            })?;
        let payload = mem.payload(pos);
        debug_assert!(bytes.len() <= max);
        // SAFETY: the payload holds `max_message >= bytes.len()` bytes inside the mapping,
        // and we own position `pos` until we commit it.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), payload, bytes.len()) };
        self.producer
            .commit_flags(mem, pos, bytes.len() as u32, self.flags);
        Ok(())
    }
}

/// Why no raw message was received.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RawRecvError {
    /// Nothing arrived within the timeout.
    #[error("no message arrived within the timeout")]
    Timeout,
    /// Every sender left or died and every message they committed has been received.
    #[error("every sender has left")]
    Disconnected,
    /// Broadcast `DropOldest`: this many messages were overwritten before they were read
    /// (they are counted in this receiver's `lagged` counter too).
    #[error("{0} messages were overwritten before they could be read")]
    Lagged(u64),
    /// The channel memory is corrupt.
    #[error(transparent)]
    Corrupt(crate::CorruptError),
}

/// A message taken by a [`RawReceiver`]: its encoded bytes, copied out of the slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawMessage {
    /// The encoded message (the value's bytes for zero-copy channels, postcard otherwise).
    pub bytes: Vec<u8>,
    /// Whether a [`RawSender`] marked it as forwarded ([`RawSender::set_forwarded`]).
    pub forwarded: bool,
}

/// A receiver attached to an existing channel whose type is taken from its header.
///
/// It is a full participant, like a typed [`Receiver`](crate::Receiver): in a queue
/// channel it competes for messages, in a broadcast channel it is one more subscriber, and
/// in a `Block` channel senders wait for it.
pub struct RawReceiver {
    end: End,
    consumer: Consumer,
}

impl RawReceiver {
    /// Attaches as a receiver to the existing channel `name`, whose header says the message
    /// is `info` (see
    /// [`inspect::Observer::message_info`](crate::inspect::Observer::message_info)).
    ///
    /// # Errors
    ///
    /// As for [`Receiver::open`](crate::Receiver::open).
    pub fn open(
        name: &str,
        options: &Options,
        info: MessageInfo,
    ) -> Result<RawReceiver, OpenError> {
        let end = End::open_info(name, options, OpenMode::Open, Role::Receiver, info)?;
        let consumer = Consumer::new(&end.seg, end.index, end.delivery);
        Ok(RawReceiver { end, consumer })
    }

    /// Whether the channel is a broadcast channel (this receiver is then a subscriber).
    pub fn is_broadcast(&self) -> bool {
        self.end.delivery.broadcast
    }

    /// Whether the channel drops the oldest messages rather than making senders wait.
    pub fn drops_oldest(&self) -> bool {
        self.end.delivery.drop_oldest
    }

    /// Receives one message, waiting up to `timeout`, and copies it out of the slot.
    ///
    /// # Errors
    ///
    /// [`RawRecvError`].
    pub fn recv_timeout(&self, timeout: Duration) -> Result<RawMessage, RawRecvError> {
        let mem = &self.end.seg;
        let poll = || self.consumer.try_take(mem);
        let take = match poll() {
            Ok(Take::Empty) => self
                .end
                .block(deadline_after(timeout), || {
                    Ok(match poll()? {
                        Take::Empty => None,
                        t => Some(t),
                    })
                })
                .map_err(|b| match b {
                    Blocked::Timeout => RawRecvError::Timeout,
                    Blocked::Disconnected => RawRecvError::Disconnected,
                    Blocked::Corrupt(c) => RawRecvError::Corrupt(c),
                })?,
            Ok(t) => t,
            Err(c) => return Err(RawRecvError::Corrupt(c.into())),
        };
        match take {
            Take::Ready { pos, len } => {
                let forwarded = mem.slot(pos).flags.load(crate::sync::Ordering::Relaxed)
                    & slot_flags::FORWARDED
                    != 0;
                let payload = mem.payload(pos);
                let mut bytes = vec![0u8; len as usize];
                debug_assert!(len as usize <= self.end.seg_max_message());
                // SAFETY: the ring checked `len <= max_message`, so the bytes lie inside the
                // slot's payload in the mapping; we hold the position until we release it
                // below, so no sender writes it meanwhile.
                unsafe { std::ptr::copy_nonoverlapping(payload, bytes.as_mut_ptr(), bytes.len()) };
                self.consumer.release(mem, pos);
                Ok(RawMessage { bytes, forwarded })
            }
            Take::Lagged(n) => Err(RawRecvError::Lagged(n)),
            Take::Empty => Err(RawRecvError::Timeout),
        }
    }
}
