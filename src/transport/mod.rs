//! Fallback transports: the same typed channel over other kernel facilities.
//!
//! The default transport is the shared-memory ring (`crate::ring`), which `Sender` and
//! `Receiver` drive directly. Every other transport is a [`Link`]: something that moves
//! whole byte frames between the two ends, with the same blocking, timeout and
//! disconnection semantics. The channel layer encodes a message into a frame (zero-copy
//! types: their bytes; serde types: postcard) and decodes received frames into owned
//! values. One file per backend:
//!
//! * [`pipe`]: anonymous pipes, for a parent and the child it spawns;
//! * [`fifo`]: a named pipe in the file system;
//! * [`unix_socket`]: a Unix stream socket at a path or an abstract name, one listening
//!   receiver and any number of connecting senders;
//! * [`posix_mq`]: a POSIX message queue;
//! * [`sysv_mq`]: a System V message queue;
//! * [`file`]: a persistent, replayable log of segment files in a directory;
//! * [`dbus`] (feature `dbus`): a D-Bus bus, through zbus: method calls for queues and
//!   request-response, signals for broadcast.
//!
//! Byte-stream transports share the framing of [`frame`]; message queues record who is
//! attached in a small presence file ([`presence`]). `docs/wire-format.md` describes every
//! wire format for programs in other languages.

#![cfg_attr(shmbus_loom, allow(dead_code))]

#[cfg(feature = "dbus")]
pub(crate) mod dbus;
#[cfg(not(shmbus_loom))]
pub(crate) mod fifo;
#[cfg(not(shmbus_loom))]
pub(crate) mod file;
#[cfg(not(shmbus_loom))]
pub(crate) mod frame;
#[cfg(not(shmbus_loom))]
pub(crate) mod pipe;
#[cfg(not(shmbus_loom))]
pub(crate) mod posix_mq;
#[cfg(not(shmbus_loom))]
pub(crate) mod presence;
#[cfg(not(shmbus_loom))]
pub(crate) mod sysv_mq;
#[cfg(not(shmbus_loom))]
pub(crate) mod unix_socket;

use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::error::TypeDesc;

/// The kernel facility a channel runs over, chosen with
/// [`Options::transport`](crate::Options::transport).
///
/// Every transport carries the same message types with the same API and errors; only the
/// performance and the way the two ends meet differ (see the transport matrix in the README).
/// Anonymous pipes are not chosen here but made with [`pipe`](crate::pipe()).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Transport {
    /// The lock-free ring in POSIX shared memory (`/dev/shm`): zero-copy, the fastest.
    #[default]
    SharedMemory,
    /// A named pipe (FIFO) at `path`, created with mode 0600 if missing. One sender and one
    /// receiver; both wait in `open` (up to [`Options::connect_timeout`](crate::Options::connect_timeout))
    /// for the other end. The receiver removes the FIFO when it is dropped.
    Fifo {
        /// Where the FIFO lives.
        path: PathBuf,
    },
    /// A Unix stream socket bound by the receiver at `path` (removed when the receiver is
    /// dropped); any number of senders connect to it. The receiver must exist first.
    UnixSocket {
        /// The socket's file-system path.
        path: PathBuf,
    },
    /// A Unix stream socket with a Linux abstract name (no file; gone with the receiver).
    AbstractSocket {
        /// The abstract name (without the leading NUL byte).
        name: String,
    },
    /// The same lock-free ring, zero-copy, in a System V shared-memory segment
    /// (`shmget`/`shmat`) instead of `/dev/shm`: for systems where `/dev/shm` is missing,
    /// full or not writable. Either side may start first; `ipcs -m` lists the segment while
    /// the channel is open, and the last handle removes it (`IPC_RMID`). `key: None` derives
    /// the key from the channel name as for [`SysvQueue`](Transport::SysvQueue); otherwise the
    /// given key (not `IPC_PRIVATE`, which is 0). Liveness locks live in a companion file
    /// `$XDG_RUNTIME_DIR/<prefix>sysv-shm-<key>.lock` (`/tmp` when `XDG_RUNTIME_DIR` is
    /// unset).
    SysvSharedMemory {
        /// The segment key, or `None` to derive it from the name.
        key: Option<i32>,
    },
    /// A POSIX message queue named `/<prefix><name>`; either side may start first.
    PosixQueue,
    /// A System V message queue; either side may start first. `key: None` derives the key
    /// from the channel name (FNV-1a of `<prefix><name>`, made positive); otherwise the
    /// given key (not `IPC_PRIVATE`, which is 0).
    SysvQueue {
        /// The queue key, or `None` to derive it from the name.
        key: Option<i32>,
    },
    /// A persistent log: append-only segment files in the directory `dir` (created if
    /// missing). One sender appends; any number of receivers read independently, from the
    /// beginning, a sequence number or the live end ([`Options::start`](crate::Options::start)),
    /// optionally resuming from a named [cursor](crate::Options::cursor). The log is unbounded:
    /// sends never block and never see `Full` or `Disconnected`. Records outlive every
    /// handle (remove the directory to delete the log).
    File {
        /// The log's directory.
        dir: PathBuf,
    },
    /// A D-Bus bus (feature `dbus`): the session bus, the system bus or a bus at an address.
    /// The channel maps to a well-known bus name, object path and interface (default prefix
    /// and channel `calc`: `org.shmbus.calc`, `/org/shmbus/calc`, `org.shmbus.Channel1`; the
    /// rules are in `docs/wire-format.md`). With [`Delivery::Queue`](crate::Delivery::Queue)
    /// (the default) the receiver owns the name and must exist first (a sender waits up to
    /// [`Options::connect_timeout`](crate::Options::connect_timeout)); each message is a
    /// `Send(t fingerprint, ay payload)` method call to it, and the receiver holds at most
    /// [`Options::capacity`](crate::Options::capacity) messages. With
    /// [`Delivery::Broadcast`](crate::Delivery::Broadcast) the sender owns the name and each
    /// message is a `Message(t, ay)` signal that every subscribed receiver gets (no
    /// back-pressure: a sender never waits). `dbus-monitor` and `busctl` see the traffic.
    #[cfg(feature = "dbus")]
    DBus {
        /// Which bus.
        bus: crate::transport::dbus::DBusBus,
    },
    /// Shared memory if `/dev/shm` is a writable directory; otherwise the same ring in
    /// System V shared memory if the kernel has it; otherwise a POSIX message queue if the
    /// kernel has them; otherwise a System V message queue. Both ends must make the
    /// same choice, so use it only where both see the same `/dev/shm`.
    /// [`Sender::transport`](crate::Sender::transport) tells which was chosen.
    Auto,
}

/// Which transport a handle runs over (see [`Transport`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TransportKind {
    /// The shared-memory ring in POSIX shared memory.
    SharedMemory,
    /// The shared-memory ring in System V shared memory.
    SysvSharedMemory,
    /// An anonymous pipe.
    Pipe,
    /// A named pipe.
    Fifo,
    /// A Unix stream socket (path or abstract name).
    UnixSocket,
    /// A POSIX message queue.
    PosixQueue,
    /// A System V message queue.
    SysvQueue,
    /// A file log.
    File,
    /// A D-Bus bus.
    DBus,
}

impl TransportKind {
    /// A short lowercase name.
    pub const fn name(self) -> &'static str {
        match self {
            TransportKind::SharedMemory => "shared-memory",
            TransportKind::SysvSharedMemory => "sysv-shm",
            TransportKind::Pipe => "pipe",
            TransportKind::Fifo => "fifo",
            TransportKind::UnixSocket => "unix-socket",
            TransportKind::PosixQueue => "posix-mq",
            TransportKind::SysvQueue => "sysv-mq",
            TransportKind::File => "file",
            TransportKind::DBus => "dbus",
        }
    }
}

impl fmt::Display for TransportKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How long a link operation may wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wait {
    /// Not at all (`try_` calls): `Full`/`Empty` at once.
    No,
    /// Until this instant.
    Until(Instant),
    /// As long as the peer lives.
    Forever,
}

impl Wait {
    pub(crate) fn from_deadline(deadline: Option<Instant>) -> Wait {
        deadline.map_or(Wait::Forever, Wait::Until)
    }

    /// How long to wait now, at most `slice`; `None`: the time is up.
    pub(crate) fn slice(self, slice: Duration) -> Option<Duration> {
        match self {
            Wait::No => None,
            Wait::Forever => Some(slice),
            Wait::Until(d) => {
                let left = d.saturating_duration_since(Instant::now());
                (!left.is_zero()).then(|| left.min(slice))
            }
        }
    }

    /// The error for "the time is up".
    pub(crate) fn expired(self) -> LinkError {
        match self {
            Wait::No => LinkError::WouldBlock,
            _ => LinkError::Timeout,
        }
    }
}

/// A blocked link call wakes up this often to check that its peer is alive.
pub(crate) const LIVENESS_SLICE: Duration = Duration::from_millis(10);

/// Why a link operation did not complete. The channel layer turns these into the public
/// send and receive errors.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LinkError {
    /// Full (send) or empty (receive), and the call may not wait.
    #[error("the transport is full or empty")]
    WouldBlock,
    /// Still full or empty at the deadline.
    #[error("timed out")]
    Timeout,
    /// The peer left or died (and, on receive, everything it sent has been received).
    #[error("the peer is gone")]
    Disconnected,
    /// The frame is larger than the transport carries.
    #[error("frame does not fit in {max} bytes")]
    TooLarge {
        /// The transport's largest frame.
        max: usize,
    },
    /// Bytes that break the wire format (truncated or damaged frame, foreign data), or a
    /// system call failure other than the peer going away.
    #[error("{0}")]
    Corrupt(String),
}

impl LinkError {
    pub(crate) fn io(op: &str, e: std::io::Error) -> LinkError {
        match e.kind() {
            std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset => {
                LinkError::Disconnected
            }
            _ => LinkError::Corrupt(format!("{op} failed: {e}")),
        }
    }
}

/// Why a link could not be set up (turned into `OpenError` by the channel layer).
#[derive(Debug)]
pub(crate) enum LinkOpenError {
    NotFound(String),
    /// The object (named by the string) belongs to a user the handle does not accept.
    Foreign(String, u32, u32),
    /// The object at the path is a symbolic link or of the wrong kind.
    WrongKind(String),
    TypeMismatch(TypeDesc),
    Invalid(String),
    Refused(String),
    Io(&'static str, std::io::Error),
}

#[cfg(not(shmbus_loom))]
impl LinkOpenError {
    /// The error for an object that failed the owner check.
    pub(crate) fn perm(object: impl std::fmt::Display, e: crate::sys::perm::PermError) -> Self {
        match e {
            crate::sys::perm::PermError::Foreign { uid, gid } => {
                LinkOpenError::Foreign(object.to_string(), uid, gid)
            }
            crate::sys::perm::PermError::Io(op, e) => LinkOpenError::Io(op, e),
        }
    }
}

/// A file type in words, for errors about the wrong kind of object at a path.
pub(crate) fn kind_name(t: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if t.is_symlink() {
        "a symbolic link"
    } else if t.is_dir() {
        "a directory"
    } else if t.is_file() {
        "a regular file"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else {
        "a device"
    }
}

/// The type a handle carries, as exchanged in handshakes and presence files.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Wire {
    pub(crate) name: &'static str,
    pub(crate) encoding: u32,
    pub(crate) fingerprint: u64,
    /// Largest frame this handle sends or accepts.
    pub(crate) max_frame: usize,
}

/// One end of a byte-frame transport.
///
/// A link carries whole frames: `send_frame` delivers all of `bytes` as one frame or none
/// of it, and `recv_frame` yields exactly what one `send_frame` sent, in order.
pub(crate) trait Link: Send {
    /// Sends one frame. `tag` is the priority (POSIX queue) or message type (System V
    /// queue) and is ignored elsewhere.
    fn send_frame(&mut self, bytes: &[u8], tag: u32, wait: Wait) -> Result<(), LinkError>;
    /// Receives one frame into `buf` (replacing its contents).
    fn recv_frame(&mut self, buf: &mut Vec<u8>, wait: Wait) -> Result<(), LinkError>;
    /// Whether the peer is there, as far as the link can tell without waiting.
    fn is_connected(&mut self) -> bool;
    /// The transport.
    fn kind(&self) -> TransportKind;
    /// How many frames the transport buffers, if it has a fixed count.
    fn capacity(&self) -> Option<usize> {
        None
    }
    /// The descriptor of an anonymous pipe end, to pass to a child; `None` for others.
    fn into_pipe_fd(self: Box<Self>) -> Option<std::os::fd::OwnedFd> {
        None
    }
    /// A descriptor that is readable when [`prepare_poll`](Link::prepare_poll) may return
    /// `true` (receiving links that can be polled, for `AsyncReceiver`); `None` for others.
    fn poll_fd(&self) -> Option<std::sync::Arc<dyn std::os::fd::AsFd + Send + Sync>> {
        None
    }
    /// Clears the [`poll_fd`](Link::poll_fd) descriptor and tells whether a receive would
    /// not wait (a frame, an error or the disconnection is there). `true` where there is no
    /// descriptor.
    fn prepare_poll(&mut self) -> bool {
        true
    }
}
