//! shmbus: typed, zero-copy message channels between Linux processes.
#![deny(unsafe_op_in_unsafe_fn)]

extern crate self as shmbus;

#[cfg(not(shmbus_loom))]
mod channel;
mod error;
mod message;
mod name;
mod options;
mod ring;
mod segment;
mod sync;
#[cfg(not(shmbus_loom))]
mod sys;

#[cfg(not(shmbus_loom))]
pub use channel::{Iter, Loan, Receiver, Sample, Sender, TryIter};
pub use error::{
    CorruptError, OpenError, RecvError, RecvTimeoutError, SendError, SendTimeoutError,
    TryRecvError, TrySendError, TypeDesc,
};
pub use message::{
    fingerprint, DecodeError, EncodeError, Encoding, Message, MessageInfo, Pod, ZeroCopy,
};
pub use name::MAX_NAME_LEN;
pub use options::{
    Options, DEFAULT_CAPACITY, DEFAULT_MAX_MESSAGE_SIZE, DEFAULT_PREFIX, DEFAULT_SPIN,
};
pub use shmbus_derive::Message;

#[doc(hidden)]
pub use message::__private;
