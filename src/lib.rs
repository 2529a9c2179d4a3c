//! shmbus: typed, zero-copy message channels between Linux processes.
#![deny(unsafe_op_in_unsafe_fn)]

extern crate self as shmbus;

mod message;

pub use message::{fingerprint, DecodeError, EncodeError, Encoding, Message, MessageInfo, Pod, ZeroCopy};
pub use shmbus_derive::Message;

#[doc(hidden)]
pub use message::__private;
