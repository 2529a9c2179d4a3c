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
    pub(crate) delivery: Option<Delivery>,
    pub(crate) overflow: Overflow,
    pub(crate) max_senders: u32,
    pub(crate) max_receivers: u32,
    pub(crate) history: usize,
    pub(crate) capacity: usize,
    pub(crate) max_message_size: usize,
    pub(crate) prefix: String,
    pub(crate) file_mode: u32,
    pub(crate) spin: Duration,
    pub(crate) wake: Option<crate::wake::WakeStrategy>,
    pub(crate) transport: crate::transport::Transport,
    pub(crate) connect_timeout: Duration,
    pub(crate) allow_uids: Vec<u32>,
    pub(crate) allow_any_uid: bool,
    pub(crate) group: Option<u32>,
    pub(crate) message_type: i64,
    #[cfg(not(shmbus_loom))]
    pub(crate) log: crate::transport::file::LogOptions,
}

/// How messages are delivered to the receivers of a channel. Chosen when the channel is
/// created; a handle that asks for the other one gets [`OpenError::DeliveryMismatch`](crate::OpenError::DeliveryMismatch).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Delivery {
    /// Each message goes to exactly one receiver: receivers compete for work.
    #[default]
    Queue,
    /// Every subscriber receives every message sent after it subscribed, read in place
    /// (one copy in memory for all subscribers).
    Broadcast,
}

/// What senders do when the ring is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Overflow {
    /// Senders wait for the slowest receiver; nothing is lost.
    #[default]
    Block,
    /// Senders never wait: they overwrite the oldest message. A subscriber that fell behind
    /// gets a `Lagged(n)` result telling how many messages it missed, then continues with
    /// the oldest message still available. Broadcast channels only.
    DropOldest,
}

/// Default maximum number of senders, and of receivers, of a channel.
pub const DEFAULT_MAX_PARTICIPANTS: u32 = 8;
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
            delivery: None,
            overflow: Overflow::Block,
            max_senders: DEFAULT_MAX_PARTICIPANTS,
            max_receivers: DEFAULT_MAX_PARTICIPANTS,
            history: 0,
            capacity: DEFAULT_CAPACITY,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            prefix: DEFAULT_PREFIX.to_owned(),
            file_mode: 0o600,
            spin: DEFAULT_SPIN,
            wake: None,
            transport: crate::transport::Transport::SharedMemory,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            allow_uids: Vec::new(),
            allow_any_uid: false,
            group: None,
            message_type: 0,
            #[cfg(not(shmbus_loom))]
            log: Default::default(),
        }
    }
}

impl Options {
    /// The defaults: a queue of 1024 slots that blocks when full, up to 8 senders and 8
    /// receivers, 4 KiB serialized messages, prefix `shmbus.`, mode 0600, 20 µs of spinning
    /// before sleeping.
    pub fn new() -> Options {
        Options::default()
    }

    /// Delivery mode of a channel this handle creates; when opening, the channel's mode must
    /// match. Without this call, a created channel is a [`Delivery::Queue`] and an opened
    /// one keeps whatever it is.
    pub fn delivery(&mut self, delivery: Delivery) -> &mut Self {
        self.delivery = Some(delivery);
        self
    }

    /// Overflow policy of a channel this handle creates (default [`Overflow::Block`]).
    pub fn overflow(&mut self, overflow: Overflow) -> &mut Self {
        self.overflow = overflow;
        self
    }

    /// Most senders that may be attached at once (1 to 64, default 8). With 1, senders
    /// claim slots with plain stores instead of compare-and-swap: with
    /// [`max_receivers`](Self::max_receivers) also 1, a busy stream of small messages
    /// runs about twice as fast (README, Performance).
    pub fn max_senders(&mut self, n: u32) -> &mut Self {
        self.max_senders = n;
        self
    }

    /// Most receivers (or subscribers) that may be attached at once (1 to 64, default 8).
    /// With 1, a queue receiver takes slots with plain stores instead of compare-and-swap.
    pub fn max_receivers(&mut self, n: u32) -> &mut Self {
        self.max_receivers = n;
        self
    }

    /// Broadcast: how many of the most recent messages a new subscriber receives first
    /// (less than the capacity; default 0).
    pub fn history(&mut self, messages: usize) -> &mut Self {
        self.history = messages;
        self
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

    /// Permission bits of every object this handle creates (default `0o600`: owner only):
    /// the segment, a System V segment's lock file, a queue and its presence file, a FIFO, a
    /// socket file, a log's files (its directories get `x` wherever the mode grants `r`).
    /// The bits are set exactly, whatever the umask. See [`group`](Self::group) to share with
    /// another user.
    pub fn mode(&mut self, mode: u32) -> &mut Self {
        self.file_mode = mode & 0o777;
        self
    }

    /// Shares the channel with the members of group `gid`.
    ///
    /// Objects this handle creates are given group `gid` (with `fchown`, or `IPC_SET` for
    /// System V objects, so this process must be a member of the group or privileged) and
    /// group read-write permission (mode `0o660` unless [`mode`](Self::mode) is called
    /// afterwards). When opening, objects whose group is `gid` are accepted whoever owns
    /// them (only members of `gid` can give an object that group), and so are Unix-socket
    /// peers whose primary group is `gid`.
    ///
    /// # Examples
    ///
    /// ```
    /// let mut opts = shmbus::Options::new();
    /// opts.group(1234);
    /// assert_eq!(opts.get_mode(), 0o660);
    /// ```
    pub fn group(&mut self, gid: u32) -> &mut Self {
        self.group = Some(gid);
        self.file_mode |= 0o060;
        self
    }

    /// The permission bits objects are created with.
    pub fn get_mode(&self) -> u32 {
        self.file_mode
    }

    /// How long a blocked call busy-waits before it sleeps on a futex. A peer that answers
    /// within this time never pays for a kernel wake-up; `Duration::ZERO` sleeps at once.
    /// However long the spin, a peer that died is noticed within a liveness slice (10 ms).
    pub fn spin(&mut self, spin: Duration) -> &mut Self {
        self.spin = spin;
        self
    }

    /// How a blocked side sleeps and is woken ([`WakeStrategy`](crate::WakeStrategy)). Only
    /// the creator's choice shapes the channel (it is recorded in the segment, default
    /// [`WakeStrategy::Futex`](crate::WakeStrategy::Futex)); a handle that sets another one
    /// gets [`OpenError::WakeMismatch`](crate::OpenError::WakeMismatch), one that sets none
    /// adopts the channel's.
    ///
    /// Wake strategies apply to the shared-memory ring, over POSIX or System V shared
    /// memory ([`Transport::SharedMemory`](crate::Transport::SharedMemory),
    /// [`Transport::SysvSharedMemory`](crate::Transport::SysvSharedMemory)); every other
    /// transport ignores this option (it sleeps in its own system calls).
    pub fn wake(&mut self, strategy: crate::wake::WakeStrategy) -> &mut Self {
        self.wake = Some(strategy);
        self
    }

    /// The requested wake strategy, if one was set.
    pub fn get_wake(&self) -> Option<crate::wake::WakeStrategy> {
        self.wake
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

    /// How long `open` waits for the other end where the two ends meet (FIFO, Unix socket,
    /// a D-Bus sender or client waiting for the receiver or server to own its name).
    pub fn connect_timeout(&mut self, timeout: Duration) -> &mut Self {
        self.connect_timeout = timeout;
        self
    }

    /// Accepts objects owned by, and Unix-socket peers running as, user `uid` besides this
    /// process's own user; call it once per uid.
    ///
    /// By default a handle opens only objects its own (effective) user owns: a segment,
    /// queue, presence file, FIFO, lock file or log owned by anyone else is refused with
    /// [`OpenError::NotOwner`](crate::OpenError::NotOwner) before anything is read from it,
    /// and a Unix-socket receiver accepts only senders of its own user (checked with
    /// `SO_PEERCRED`), a sender only a receiver of its own user. This also holds for root.
    pub fn allow_uid(&mut self, uid: u32) -> &mut Self {
        self.allow_uids.push(uid);
        self
    }

    /// Accepts objects and Unix-socket peers of any user (see [`allow_uid`](Self::allow_uid)).
    /// Only the permission bits then keep other users out.
    pub fn allow_any_uid(&mut self) -> &mut Self {
        self.allow_any_uid = true;
        self
    }

    /// The permission policy for the objects this handle creates and opens.
    #[cfg(not(shmbus_loom))]
    pub(crate) fn access(&self) -> crate::sys::perm::Access {
        crate::sys::perm::Access {
            mode: self.file_mode,
            group: self.group,
            allow_uids: self.allow_uids.clone(),
            allow_any: self.allow_any_uid,
        }
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

#[cfg(not(shmbus_loom))]
impl Options {
    /// Checks what every transport requires of the options (one place, before any object
    /// is touched): a capacity of 1 to [`MAX_CAPACITY`] slots.
    pub(crate) fn check(&self, name: &str) -> Result<(), crate::OpenError> {
        let invalid = |reason: String| crate::OpenError::InvalidOptions {
            name: name.to_owned(),
            reason,
        };
        if self.capacity == 0 {
            return Err(invalid("capacity must be at least 1".into()));
        }
        if self.capacity as u64 > MAX_CAPACITY {
            return Err(invalid(format!(
                "capacity {} is too large (at most {MAX_CAPACITY} slots)",
                self.capacity
            )));
        }
        Ok(())
    }
}

/// Largest capacity, in slots, of any channel.
pub const MAX_CAPACITY: u64 = 1 << 24;

impl AsRef<Options> for Options {
    fn as_ref(&self) -> &Options {
        self
    }
}
