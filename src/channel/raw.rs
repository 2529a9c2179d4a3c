//! A sender that knows its message type only from the channel's header: the `shmbus send`
//! tool writes bytes it encoded itself through the recorded schema.

use std::time::Duration;

use super::{deadline_after, Blocked, End};
use crate::error::OpenError;
use crate::message::{Encoding, MessageInfo};
use crate::options::Options;
use crate::ring::{Claim, Producer};
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
        })
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
        self.producer.commit(mem, pos, bytes.len() as u32, false);
        Ok(())
    }
}
