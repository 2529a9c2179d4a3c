//! Error types. Send errors hand the message back (`into_inner`), as in crossbeam-channel.

use std::fmt;
use std::io;

use crate::message::{DecodeError, EncodeError};

/// The shared segment holds something the protocol does not allow: another process wrote
/// garbage into it. The channel refuses to act on it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("channel memory is corrupt: {reason}")]
pub struct CorruptError {
    pub(crate) reason: String,
}

/// A type as recorded by a channel: name, encoding and fingerprint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeDesc {
    /// The declared type name.
    pub name: String,
    /// `"zero-copy"`, `"postcard"`, or `"unknown"`.
    pub encoding: &'static str,
    /// The type fingerprint.
    pub fingerprint: u64,
}

impl fmt::Display for TypeDesc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`{}` ({}, fingerprint {:016x})",
            self.name, self.encoding, self.fingerprint
        )
    }
}

/// Why a channel could not be opened or created.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The name (or prefix) is not acceptable.
    #[error("invalid channel name {name:?}: {reason}")]
    InvalidName {
        /// The rejected name.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The options cannot describe a channel.
    #[error("invalid options for channel {name:?}: {reason}")]
    InvalidOptions {
        /// The channel.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// `open` found no channel of that name.
    #[error("channel {name:?} does not exist (no /dev/shm/{object})")]
    NotFound {
        /// The channel.
        name: String,
        /// The shared-memory object looked for.
        object: String,
    },
    /// `create` found a channel of that name in use.
    #[error("channel {name:?} already exists")]
    AlreadyExists {
        /// The channel.
        name: String,
    },
    /// The channel carries another message type.
    #[error("channel {name:?} carries {found}, but this handle is for {expected}")]
    TypeMismatch {
        /// The channel.
        name: String,
        /// This handle's type.
        expected: TypeDesc,
        /// The channel's type.
        found: TypeDesc,
    },
    /// The channel's delivery mode is not the one asked for.
    #[error("channel {name:?}: {reason}")]
    DeliveryMismatch {
        /// The channel.
        name: String,
        /// Which mode the channel has.
        reason: String,
    },
    /// The channel was created with another wake strategy than this handle asked for.
    #[error("channel {name:?} wakes with {found}, but this handle asked for {expected}")]
    WakeMismatch {
        /// The channel.
        name: String,
        /// This handle's strategy.
        expected: crate::WakeStrategy,
        /// The channel's strategy.
        found: crate::WakeStrategy,
    },
    /// The segment's header is invalid or does not fit the file.
    #[error("channel {name:?} is corrupt: {reason}")]
    Corrupt {
        /// The channel.
        name: String,
        /// What failed validation.
        reason: String,
    },
    /// Every sender (or receiver) entry of the channel is taken.
    #[error("channel {name:?} already has its maximum of {max} {role}(s)")]
    TooManyParticipants {
        /// The channel.
        name: String,
        /// `"sender"` or `"receiver"`.
        role: &'static str,
        /// The channel's limit.
        max: u32,
    },
    /// `/dev/shm` has no room for the segment.
    #[error("no room in /dev/shm for channel {name:?} ({bytes} bytes): {source}")]
    NoSpace {
        /// The channel.
        name: String,
        /// The segment size.
        bytes: u64,
        /// The system error.
        source: io::Error,
    },
    /// The object at the channel's name or path belongs to another user, whom the caller
    /// did not allow ([`Options::allow_uid`](crate::Options::allow_uid),
    /// [`Options::allow_any_uid`](crate::Options::allow_any_uid),
    /// [`Options::group`](crate::Options::group)); or, on a Unix socket, the process at the
    /// other end runs as such a user. Nothing was read from or written to it.
    #[error("channel {name:?}: {object} belongs to uid {owner} (gid {group}), not to this user; allow it with Options::allow_uid({owner}) if it is trusted")]
    NotOwner {
        /// The channel.
        name: String,
        /// The object (path, shared-memory name, queue key or socket peer).
        object: String,
        /// Its owner's uid.
        owner: u32,
        /// Its group.
        group: u32,
    },
    /// The object at the channel's path is not of the kind the transport uses: a symbolic
    /// link (never followed), a regular file where a FIFO, socket or log directory belongs,
    /// and so on.
    #[error("channel {name:?}: {reason}")]
    WrongKind {
        /// The channel.
        name: String,
        /// What was found where.
        reason: String,
    },
    /// The operating system refused access (`EACCES`/`EPERM`): the object's permission bits
    /// or ownership do not let this user in.
    #[error("channel {name:?}: permission denied ({op}): {source}")]
    PermissionDenied {
        /// The channel.
        name: String,
        /// The operation.
        op: &'static str,
        /// The system error.
        source: io::Error,
    },
    /// A system limit was reached: open files (`RLIMIT_NOFILE`), POSIX queue memory
    /// (`RLIMIT_MSGQUEUE`), the number of queues or segments (`fs.mqueue.queues_max`,
    /// `kernel.msgmni`, `kernel.shmmni`), or memory.
    #[error("channel {name:?}: a system limit was reached ({op}): {source}")]
    LimitReached {
        /// The channel.
        name: String,
        /// The operation.
        op: &'static str,
        /// The system error.
        source: io::Error,
    },
    /// A system call failed.
    #[error("{op} failed for channel {name:?}: {source}")]
    Io {
        /// The channel.
        name: String,
        /// The operation.
        op: &'static str,
        /// The system error.
        source: io::Error,
    },
}

#[cfg(not(shmbus_loom))]
impl OpenError {
    /// The error for a failed system call: permission and limit errors get their own
    /// variants, the rest is [`OpenError::Io`].
    pub(crate) fn from_io(name: &str, op: &'static str, source: io::Error) -> OpenError {
        let name = name.to_owned();
        use crate::sys::perm::IoClass;
        match crate::sys::perm::classify(&source) {
            IoClass::Permission => OpenError::PermissionDenied { name, op, source },
            IoClass::Limit => OpenError::LimitReached { name, op, source },
            IoClass::Other => OpenError::Io { name, op, source },
        }
    }
}

macro_rules! generic_error {
    (
        $(#[$meta:meta])*
        pub enum $name:ident<T> {
            $( $(#[$vmeta:meta])* $variant:ident $( ( $($field:ty),* ) )? => $msg:literal ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[non_exhaustive]
        pub enum $name<T> {
            $( $(#[$vmeta])* $variant(T $(, $($field),*)?), )*
        }

        impl<T> $name<T> {
            /// The message that was not sent.
            pub fn into_inner(self) -> T {
                match self {
                    $( generic_error!(@pat $name $variant msg $( $($field),* )?) => msg, )*
                }
            }
        }

        impl<T> fmt::Debug for $name<T> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}(..)", match self { $( $name::$variant(..) => stringify!($variant), )* })?;
                if let Some(detail) = self.detail() {
                    write!(f, ": {detail}")?;
                }
                Ok(())
            }
        }

        impl<T> fmt::Display for $name<T> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let msg = match self { $( $name::$variant(..) => $msg, )* };
                f.write_str(msg)?;
                if let Some(detail) = self.detail() {
                    write!(f, ": {detail}")?;
                }
                Ok(())
            }
        }

        impl<T> std::error::Error for $name<T> {}
    };
    (@pat $name:ident $variant:ident $msg:ident) => { $name::$variant($msg) };
    (@pat $name:ident $variant:ident $msg:ident $($field:ty),+) => { $name::$variant($msg, ..) };
}

generic_error! {
    /// Why a blocking send (or loan) failed.
    pub enum SendError<T> {
        /// The receiver left or died; no one will read the message.
        Disconnected => "sending on a channel whose receiver is gone",
        /// The message could not be encoded into a slot (too large, or refused by serde).
        Encode(EncodeError) => "cannot encode message",
        /// The channel memory is corrupt.
        Corrupt(CorruptError) => "channel memory is corrupt",
    }
}

generic_error! {
    /// Why a non-blocking send (or loan) failed.
    pub enum TrySendError<T> {
        /// The ring is full.
        Full => "sending on a full channel",
        /// The receiver left or died; no one will read the message.
        Disconnected => "sending on a channel whose receiver is gone",
        /// The message could not be encoded into a slot.
        Encode(EncodeError) => "cannot encode message",
        /// The channel memory is corrupt.
        Corrupt(CorruptError) => "channel memory is corrupt",
    }
}

generic_error! {
    /// Why a send (or loan) with a timeout failed.
    pub enum SendTimeoutError<T> {
        /// The ring stayed full until the timeout.
        Timeout => "timed out sending on a full channel",
        /// The receiver left or died; no one will read the message.
        Disconnected => "sending on a channel whose receiver is gone",
        /// The message could not be encoded into a slot.
        Encode(EncodeError) => "cannot encode message",
        /// The channel memory is corrupt.
        Corrupt(CorruptError) => "channel memory is corrupt",
    }
}

macro_rules! detail_impl {
    ($($name:ident),*) => {$(
        impl<T> $name<T> {
            fn detail(&self) -> Option<String> {
                #[allow(unreachable_patterns)]
                match self {
                    $name::Encode(_, e) => Some(e.to_string()),
                    $name::Corrupt(_, e) => Some(e.reason.clone()),
                    _ => None,
                }
            }
        }
    )*};
}
detail_impl!(SendError, TrySendError, SendTimeoutError);

impl<T> From<SendError<T>> for SendTimeoutError<T> {
    fn from(e: SendError<T>) -> Self {
        match e {
            SendError::Disconnected(m) => SendTimeoutError::Disconnected(m),
            SendError::Encode(m, e) => SendTimeoutError::Encode(m, e),
            SendError::Corrupt(m, e) => SendTimeoutError::Corrupt(m, e),
        }
    }
}

/// Why a blocking receive failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecvError {
    /// Broadcast with `Overflow::DropOldest`: this many messages were overwritten before
    /// this subscriber read them. The next call continues with the oldest message still
    /// available. The count is of positions in the ring, so a position that held no
    /// message (a loan dropped without sending, a sender that died holding one, a slot left
    /// empty because a stopped subscriber still pinned it) counts too: never fewer than the
    /// messages lost, and exact when every position held one.
    #[error("fell behind: {0} messages were overwritten before they were read")]
    Lagged(u64),
    /// Every sender left or died and every committed message has been received. Not final:
    /// if a sender attaches again, the next `recv` delivers again.
    #[error("receiving on an empty channel whose senders are gone")]
    Disconnected,
    /// A message could not be decoded (it was dropped; the channel goes on).
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The channel memory is corrupt.
    #[error(transparent)]
    Corrupt(#[from] CorruptError),
}

/// Why a non-blocking receive failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TryRecvError {
    /// Broadcast with `Overflow::DropOldest`: this many messages were overwritten before
    /// this subscriber read them. The next call continues with the oldest message still
    /// available. The count is of positions in the ring, so a position that held no
    /// message (a loan dropped without sending, a sender that died holding one, a slot left
    /// empty because a stopped subscriber still pinned it) counts too: never fewer than the
    /// messages lost, and exact when every position held one.
    #[error("fell behind: {0} messages were overwritten before they were read")]
    Lagged(u64),
    /// No message is waiting.
    #[error("receiving on an empty channel")]
    Empty,
    /// Every sender left or died and every committed message has been received. Not final:
    /// if a sender attaches again, the next `recv` delivers again.
    #[error("receiving on an empty channel whose senders are gone")]
    Disconnected,
    /// A message could not be decoded (it was dropped; the channel goes on).
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The channel memory is corrupt.
    #[error(transparent)]
    Corrupt(#[from] CorruptError),
}

/// Why a receive with a timeout failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecvTimeoutError {
    /// Broadcast with `Overflow::DropOldest`: this many messages were overwritten before
    /// this subscriber read them. The next call continues with the oldest message still
    /// available. The count is of positions in the ring, so a position that held no
    /// message (a loan dropped without sending, a sender that died holding one, a slot left
    /// empty because a stopped subscriber still pinned it) counts too: never fewer than the
    /// messages lost, and exact when every position held one.
    #[error("fell behind: {0} messages were overwritten before they were read")]
    Lagged(u64),
    /// No message arrived before the timeout.
    #[error("timed out receiving on an empty channel")]
    Timeout,
    /// Every sender left or died and every committed message has been received. Not final:
    /// if a sender attaches again, the next `recv` delivers again.
    #[error("receiving on an empty channel whose senders are gone")]
    Disconnected,
    /// A message could not be decoded (it was dropped; the channel goes on).
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The channel memory is corrupt.
    #[error(transparent)]
    Corrupt(#[from] CorruptError),
}
