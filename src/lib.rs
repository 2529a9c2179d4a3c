//! Typed, zero-copy message channels between Linux processes.
//!
//! A channel is a named lock-free ring in POSIX shared memory (`/dev/shm`). A [`Sender`]
//! writes messages into it, in place or by value; a [`Receiver`] reads them where they lie.
//! Either side may start first, in any process.
//!
//! ```
//! #[derive(shmbus::Message, Clone, Copy, Debug, PartialEq)]
//! #[repr(C)]
//! struct Tick { seq: u64, price: f64, venue: [u8; 8] }
//!
//! # let name = format!("doc-hello-{}", std::process::id());
//! // In one process (here: the same one, for the sake of a runnable example)...
//! let tx = shmbus::Sender::<Tick>::open_or_create(&name, shmbus::Options::new().capacity(64))?;
//! let mut slot = tx.loan()?;                 // a slot in shared memory
//! *slot = Tick { seq: 1, price: 2.5, venue: *b"XNAS\0\0\0\0" };
//! slot.send();                               // now visible to the receiver
//! tx.send(Tick { seq: 2, price: 2.75, venue: *b"XNAS\0\0\0\0" })?;
//!
//! // ...and in another.
//! let rx = shmbus::Receiver::<Tick>::open_or_create(&name, &Default::default())?;
//! let first = rx.recv()?;                    // read in place, freed when dropped
//! assert_eq!((first.seq, first.price), (1, 2.5));
//! drop(first);
//! assert_eq!(rx.recv()?.into_inner().seq, 2);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Messages
//!
//! `#[derive(shmbus::Message)]` is all a message type needs:
//!
//! * a `#[repr(C)]` struct of integers, floats, fixed arrays and nested such structs, with no
//!   padding, travels **zero-copy**: [`Sender::loan`] hands out the slot to write in place
//!   and [`Receiver::recv`] returns a [`Sample`] that borrows it. Fields that cannot be read
//!   from shared memory (`bool`, `char`, enums, pointers, references, `Vec`, `String`, ...)
//!   and padding are compile errors that point at the field.
//! * any other type that also derives serde's `Serialize` and `Deserialize` travels
//!   **serialized** with postcard, up to [`Options::max_message_size`]; an oversize message
//!   is an error and is not sent.
//!
//! Both ends compare a type fingerprint ([`MessageInfo::fingerprint`]) computed from the
//! declared type name (overridable with `#[shmbus(name = "...")]`), field names and types,
//! size, alignment and encoding. Attaching with another type fails with
//! [`OpenError::TypeMismatch`], which names both types.
//!
//! # Blocking and disconnection
//!
//! [`Sender::send`] waits while the ring is full, [`Receiver::recv`] while it is empty;
//! `try_` variants never wait and `_timeout` variants wait at most a given time. A waiting
//! side spins for [`Options::spin`] (20 µs by default), then sleeps on a futex; the other
//! side makes the wake-up system call only when a waiter is actually asleep.
//!
//! The sleep primitive is the channel's [`WakeStrategy`], chosen by its creator
//! ([`Options::wake`]): futex (default), spin, POSIX or System V semaphores, real-time
//! signals, Unix sockets or eventfds. With the last two a [`Receiver`] has a descriptor to
//! poll ([`Receiver::prepare_poll`]). Wake strategies apply to the shared-memory
//! transports (POSIX and System V); the other transports ignore the option.
//!
//! When the sender is dropped or its process dies (SIGKILL included), the receiver gets the
//! messages already committed and then [`RecvError::Disconnected`]; when the receiver goes,
//! sends fail with [`SendError::Disconnected`], which hands the message back. A process
//! killed while its peer sleeps is noticed within about 10 ms.
//!
//! # Lifetimes and names
//!
//! A channel named `ticks` is the file `/dev/shm/shmbus.ticks` (the prefix is
//! [`Options::prefix`]), created with mode 0600 and with its memory reserved up front, so a
//! full `/dev/shm` is an error at creation rather than a crash later. The last handle to go
//! removes it. A file left behind by crashed processes is reused, with its committed
//! messages, if it is valid and of the same type, and replaced otherwise.
//!
//! # Permissions
//!
//! Everything a channel creates is owner-only (mode 0600) on every transport;
//! [`Options::group`] shares it with a group. Everything it opens must belong to this user,
//! to a user allowed with [`Options::allow_uid`] / [`Options::allow_any_uid`], or to the
//! group given with [`Options::group`]: otherwise [`OpenError::NotOwner`], before anything
//! is read. Paths are never followed through a symbolic link ([`OpenError::WrongKind`]).
//! `docs/limits.md` in the repository says how to share a channel between users safely.
//!
//! # Trust
//!
//! Every process that can open a channel's file can write to it. shmbus validates
//! everything it reads from shared memory: a corrupt header is an [`OpenError::Corrupt`],
//! foreign data in the ring a [`CorruptError`], never undefined behaviour. A zero-copy
//! message is read by reference; a process that ignores the protocol could change it while
//! it is read, which can yield odd values but never invalid ones, since every bit pattern
//! is a valid zero-copy message.
//!
//! # A bus
//!
//! A channel has up to [`Options::max_senders`] senders and [`Options::max_receivers`]
//! receivers (8 each by default, at most 64), in any processes; more is an
//! [`OpenError::TooManyParticipants`]. Its [`Delivery`] is fixed at creation:
//!
//! * [`Delivery::Queue`]: each message goes to exactly one receiver (competing consumers);
//! * [`Delivery::Broadcast`]: every subscriber reads every message sent after it joined,
//!   in place, plus an optional [`Options::history`] of recent messages.
//!
//! With [`Overflow::Block`] (the default) senders wait for the slowest receiver and nothing
//! is lost; with [`Overflow::DropOldest`] (broadcast) senders never wait and a subscriber
//! that fell behind gets [`RecvError::Lagged`] with the number of messages it missed.
//! Messages arrive in the order their slots were claimed, so each sender's messages arrive
//! in the order it sent them.
//!
//! [`Client`] and [`Server`] build request-response on top: many clients, each response
//! routed to the client that asked, per-request timeouts, [`RequestError::ServerGone`].
//!
//! # Transports
//!
//! The same `Sender`/`Receiver`, derive, errors and blocking semantics run over other
//! kernel facilities, chosen with [`Options::transport`]: the same ring in System V shared
//! memory ([`Transport::SysvSharedMemory`], still zero-copy), a FIFO, a Unix socket, a POSIX
//! or System V message queue, or [`Transport::Auto`] (POSIX shared memory when `/dev/shm` is
//! usable, else System V shared memory, else a message queue); [`pipe()`] makes an anonymous
//! pipe whose ends can be handed to a child process. Except on shared memory, messages are
//! copied through the kernel, not shared; a loan is a local value sent by [`Loan::send`].
//! `docs/wire-format.md` describes each wire format.
//!
//! # Async
//!
//! With the `tokio` feature, `AsyncReceiver` gives `recv().await` and a `Stream` of
//! messages on channels whose wake strategy is pollable ([`WakeStrategy::UnixSocket`],
//! [`WakeStrategy::EventFd`]): each receiver's descriptor is registered with tokio's
//! reactor, so many channels share one runtime thread with no helper thread per channel,
//! and cancelling a `recv` future loses no message. `AsyncSender::send().await` retries a
//! full ring with short sleeps.
//!
//! `Sender` and `Receiver` are `Send` but not `Sync`: move a handle to the thread that uses
//! it, or give each thread its own ([`Sender::try_clone`]).
#![deny(unsafe_op_in_unsafe_fn)]

extern crate self as shmbus;

#[cfg(not(shmbus_loom))]
mod channel;
mod error;
#[cfg(all(any(test, feature = "fuzzing"), not(shmbus_loom)))]
#[doc(hidden)]
pub mod fuzz_api;
#[cfg(all(test, not(shmbus_loom)))]
mod fuzz_tests;
#[cfg(not(shmbus_loom))]
pub mod inspect;
mod message;
mod name;
mod options;
mod ring;
mod schema;
mod segment;
mod sync;
#[cfg(not(shmbus_loom))]
mod sys;
mod transport;
mod wake;

#[cfg(not(shmbus_loom))]
pub use channel::{
    pipe, Client, Iter, Loan, Receiver, Request, RequestError, RespondError, Sample, Sender,
    Server, TryIter, INHERIT_VAR,
};
#[cfg(all(feature = "tokio", not(shmbus_loom)))]
pub use channel::{AsyncReceiver, AsyncReceiverError, AsyncSender};
pub use error::{
    CorruptError, OpenError, RecvError, RecvTimeoutError, SendError, SendTimeoutError,
    TryRecvError, TrySendError, TypeDesc,
};
pub use message::{
    fingerprint, DecodeError, EncodeError, Encoding, Message, MessageInfo, Pod, ZeroCopy,
};
pub use name::{MAX_NAME_LEN, MAX_PATH, MAX_SOCKET_PATH};
pub use options::{
    Delivery, Options, Overflow, DEFAULT_CAPACITY, DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_MAX_MESSAGE_SIZE, DEFAULT_MAX_PARTICIPANTS, DEFAULT_PREFIX, DEFAULT_SPIN, MAX_CAPACITY,
};
pub use schema::{
    FieldDesc, FieldKind, KindDesc, Schema, SchemaDesc, SchemaError, SchemaField, MAX_SCHEMA_LEN,
};
pub use shmbus_derive::Message;
#[cfg(feature = "dbus")]
pub use transport::dbus::DBusBus;
#[cfg(not(shmbus_loom))]
pub use transport::file::{
    replay::{record, replay, Pace, ReplayError},
    Durability, FileIo, Start, DEFAULT_SEGMENT_SIZE,
};
pub use transport::{Transport, TransportKind};
#[cfg(not(shmbus_loom))]
pub use wake::block_wake_signal;
pub use wake::WakeStrategy;

#[doc(hidden)]
pub use message::__private;
