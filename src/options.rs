//! Channel options.

use std::time::Duration;

/// Options for opening or creating a channel, set through a builder.
///
/// Only the creator's `capacity` and `max_message_size` shape the channel; a handle that
/// opens an existing channel uses the channel's values (see `Sender::capacity`).
///
/// # Examples
///
/// ```
/// let mut opts = shmbus::Options::new();
/// opts.capacity(4096).max_message_size(16 * 1024).spin(std::time::Duration::from_micros(50));
/// assert_eq!(opts.get_capacity(), 4096);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub(crate) capacity: usize,
    pub(crate) max_message_size: usize,
    pub(crate) prefix: String,
    pub(crate) file_mode: u32,
    pub(crate) spin: Duration,
    pub(crate) transport: crate::transport::Transport,
    pub(crate) connect_timeout: Duration,
    pub(crate) allow_uids: Vec<u32>,
    pub(crate) message_type: i64,
}

/// Default number of slots.
pub const DEFAULT_CAPACITY: usize = 1024;
/// Default maximum encoded size of a serialized (postcard) message.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 4096;
/// Default prefix of shared-memory object names.
pub const DEFAULT_PREFIX: &str = "shmbus.";
/// Default time a blocked call busy-waits before it sleeps.
pub const DEFAULT_SPIN: Duration = Duration::from_micros(20);
/// Default time `open` waits for the other end on transports where the ends meet (FIFO,
/// Unix socket, inherited pipe).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

impl Default for Options {
    fn default() -> Self {
        Options {
            capacity: DEFAULT_CAPACITY,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            prefix: DEFAULT_PREFIX.to_owned(),
            file_mode: 0o600,
            spin: DEFAULT_SPIN,
            transport: crate::transport::Transport::SharedMemory,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            allow_uids: Vec::new(),
            message_type: 0,
        }
    }
}

impl Options {
    /// The defaults: 1024 slots, 4 KiB serialized messages, prefix `shmbus.`, mode 0600,
    /// 20 µs of spinning before sleeping.
    pub fn new() -> Options {
        Options::default()
    }

    /// Number of message slots (rounded up to a power of two, and to at least 2, when the
    /// channel is created).
    pub fn capacity(&mut self, slots: usize) -> &mut Self {
        self.capacity = slots;
        self
    }

    /// Largest encoded size, in bytes, of a serialized (postcard) message. Zero-copy
    /// messages always use exactly `size_of::<T>()`.
    pub fn max_message_size(&mut self, bytes: usize) -> &mut Self {
        self.max_message_size = bytes;
        self
    }

    /// Prefix of the shared-memory object name (`/dev/shm/<prefix><name>`).
    pub fn prefix(&mut self, prefix: impl Into<String>) -> &mut Self {
        self.prefix = prefix.into();
        self
    }

    /// Permission bits of a created segment (default `0o600`: owner only).
    pub fn mode(&mut self, mode: u32) -> &mut Self {
        self.file_mode = mode & 0o777;
        self
    }

    /// How long a blocked call busy-waits before it sleeps on a futex. A peer that answers
    /// within this time never pays for a kernel wake-up; `Duration::ZERO` sleeps at once.
    pub fn spin(&mut self, spin: Duration) -> &mut Self {
        self.spin = spin;
        self
    }

    /// The transport the channel runs over (default: [`Transport::SharedMemory`]).
    ///
    /// [`Transport::SharedMemory`]: crate::Transport::SharedMemory
    ///
    /// # Examples
    ///
    /// ```
    /// let mut opts = shmbus::Options::new();
    /// opts.transport(shmbus::Transport::PosixQueue).capacity(8);
    /// ```
    pub fn transport(&mut self, transport: crate::transport::Transport) -> &mut Self {
        self.transport = transport;
        self
    }

    /// How long `open` waits for the other end where the two ends meet (FIFO, Unix socket).
    pub fn connect_timeout(&mut self, timeout: Duration) -> &mut Self {
        self.connect_timeout = timeout;
        self
    }

    /// On a Unix socket, the receiver accepts senders of this uid (checked with
    /// `SO_PEERCRED`); call it once per uid. With no call, any process that can reach the
    /// socket may connect.
    pub fn allow_uid(&mut self, uid: u32) -> &mut Self {
        self.allow_uids.push(uid);
        self
    }

    /// On a System V queue, which message types the receiver takes (msgrcv's rules: 0, the
    /// default, any; `n > 0` only type `n`; `n < 0` the lowest type up to `-n` first).
    pub fn message_type(&mut self, message_type: i64) -> &mut Self {
        self.message_type = message_type;
        self
    }

    /// The requested capacity.
    pub fn get_capacity(&self) -> usize {
        self.capacity
    }

    /// The requested maximum serialized message size.
    pub fn get_max_message_size(&self) -> usize {
        self.max_message_size
    }
}

impl AsRef<Options> for Options {
    fn as_ref(&self) -> &Options {
        self
    }
}
