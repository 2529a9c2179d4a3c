//! The sending end.

use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;
use std::time::{Duration, Instant};

use super::link::{LinkEnd, LinkFail};
use super::{deadline_after, Blocked, End};
use crate::error::{OpenError, SendError, SendTimeoutError, TrySendError};
use crate::message::{Encoding, Message, ZeroCopy};
use crate::options::Options;
use crate::ring::{Claim, Peers, Producer};
use crate::segment::OpenMode;
use crate::segment::{Memory, Role};
use crate::transport::{TransportKind, Wait};

/// The sending end of a channel.
///
/// A channel has up to [`Options::max_senders`] senders, in any processes. The handle is
/// `Send`: it can be moved to the thread that uses it, and [`try_clone`](Self::try_clone)
/// gives another thread a sender of its own. Dropping it detaches: once every sender is
/// gone, receivers drain what was committed and then get `Disconnected`.
///
/// # Examples
///
/// ```no_run
/// #[derive(shmbus::Message, Clone, Copy, Debug)]
/// #[repr(C)]
/// struct Tick { seq: u64, price: f64, venue: [u8; 8] }
///
/// let tx = shmbus::Sender::<Tick>::open_or_create("ticks", shmbus::Options::new().capacity(1024))?;
/// let mut slot = tx.loan()?;          // a slot in shared memory
/// *slot = Tick { seq: 1, price: 2.5, venue: *b"XNAS\0\0\0\0" };
/// slot.send();                        // now visible to the receiver
/// tx.send(Tick { seq: 2, price: 2.75, venue: *b"XNAS\0\0\0\0" })?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Sender<T: Message> {
    flavor: Flavor,
    _type: PhantomData<fn(T) -> T>,
}

/// The shared-memory ring (the fast path, static dispatch) or another transport.
// The ring variant stays inline: boxing it would put a pointer chase on the fast path.
#[allow(clippy::large_enum_variant)]
enum Flavor {
    Ring { end: End, producer: Producer },
    Link(LinkEnd),
}

impl<T: Message> Sender<T> {
    /// Opens the channel `name`, creating it if it does not exist.
    ///
    /// # Errors
    ///
    /// [`OpenError`]: an invalid name or options, a channel of another type, a corrupt
    /// segment, a channel that already has a sender, no room in `/dev/shm`, or a failed
    /// system call.
    pub fn open_or_create(name: &str, options: &Options) -> Result<Self, OpenError> {
        Self::with_mode(name, options, OpenMode::OpenOrCreate)
    }

    /// Creates the channel `name`; fails with [`OpenError::AlreadyExists`] if it exists.
    ///
    /// # Errors
    ///
    /// As for [`open_or_create`](Self::open_or_create).
    pub fn create(name: &str, options: &Options) -> Result<Self, OpenError> {
        Self::with_mode(name, options, OpenMode::Create)
    }

    /// Opens the existing channel `name`; fails with [`OpenError::NotFound`] if there is none.
    ///
    /// # Errors
    ///
    /// As for [`open_or_create`](Self::open_or_create).
    pub fn open(name: &str, options: &Options) -> Result<Self, OpenError> {
        Self::with_mode(name, options, OpenMode::Open)
    }

    fn with_mode(name: &str, options: &Options, mode: OpenMode) -> Result<Self, OpenError> {
        if let Some(link) = LinkEnd::open::<T>(name, options, mode, Role::Sender)? {
            return Ok(Self::from_link(link));
        }
        let end = End::open::<T>(name, options, mode, Role::Sender)?;
        let producer = Producer::new(&end.seg, end.index, end.delivery);
        Ok(Sender {
            flavor: Flavor::Ring { end, producer },
            _type: PhantomData,
        })
    }

    /// Another sender on the same channel, for another thread: it takes a sender entry of
    /// its own (with its own loans and its own liveness lock).
    ///
    /// # Errors
    ///
    /// [`OpenError::TooManyParticipants`] if the channel already has its maximum of senders;
    /// [`OpenError::InvalidOptions`] on transports other than shared memory, whose senders
    /// cannot be cloned.
    pub fn try_clone(&self) -> Result<Self, OpenError> {
        let end = match &self.flavor {
            Flavor::Ring { end, .. } => end.duplicate()?,
            Flavor::Link(l) => {
                return Err(OpenError::InvalidOptions {
                    name: l.name.clone(),
                    reason: format!("a {:?} sender cannot be cloned; open another one", l.kind()),
                })
            }
        };
        let producer = Producer::new(&end.seg, end.index, end.delivery);
        Ok(Sender {
            flavor: Flavor::Ring { end, producer },
            _type: PhantomData,
        })
    }

    pub(super) fn from_link(link: LinkEnd) -> Self {
        Sender {
            flavor: Flavor::Link(link),
            _type: PhantomData,
        }
    }

    pub(super) fn into_link(self) -> Option<Box<dyn crate::transport::Link>> {
        match self.flavor {
            Flavor::Link(l) => Some(l.into_link()),
            Flavor::Ring { .. } => None,
        }
    }

    /// The ring end, if this sender runs on shared memory.
    pub(super) fn ring_end(&self) -> Option<&End> {
        match &self.flavor {
            Flavor::Ring { end, .. } => Some(end),
            Flavor::Link(_) => None,
        }
    }

    /// The ring end; only called on paths that dispatched to the ring already.
    #[inline]
    fn ring(&self) -> (&End, &Producer) {
        match &self.flavor {
            Flavor::Ring { end, producer } => (end, producer),
            Flavor::Link(_) => unreachable!("ring path on a link sender"),
        }
    }

    /// The channel's name.
    pub fn name(&self) -> &str {
        match &self.flavor {
            Flavor::Ring { end, .. } => end.name(),
            Flavor::Link(l) => &l.name,
        }
    }

    /// The transport this sender runs over (what [`Transport::Auto`](crate::Transport::Auto)
    /// chose, for instance).
    pub fn transport(&self) -> TransportKind {
        match &self.flavor {
            Flavor::Ring { end, .. } => end.kind,
            Flavor::Link(l) => l.kind(),
        }
    }

    /// Number of slots (the channel creator's capacity, rounded up to a power of two). For
    /// a POSIX queue, its message count; 0 for transports that count bytes, not messages.
    pub fn capacity(&self) -> usize {
        match &self.flavor {
            Flavor::Ring { end, .. } => end.seg.geometry().capacity as usize,
            Flavor::Link(l) => l.capacity(),
        }
    }

    /// Largest encoded message, in bytes.
    pub fn max_message_size(&self) -> usize {
        match &self.flavor {
            Flavor::Ring { end, .. } => end.seg.geometry().max_message as usize,
            Flavor::Link(l) => l.max_frame,
        }
    }

    /// Whether a receiver is attached (as far as shared memory says; a receiver killed a
    /// moment ago is noticed by the next blocked or failed call).
    pub fn is_connected(&self) -> bool {
        match &self.flavor {
            Flavor::Ring { end, .. } => end.peers_fast() == Peers::Attached,
            Flavor::Link(l) => l.is_connected(),
        }
    }

    /// Sends a message with a priority, waiting while the channel is full. On a POSIX
    /// queue it is the message priority (higher first, below 32768); on a System V queue the
    /// message type (at least 1) that receivers can select on; other transports ignore it.
    ///
    /// # Errors
    ///
    /// As for [`send`](Self::send).
    pub fn send_with_priority(&self, msg: T, priority: u32) -> Result<(), SendError<T>> {
        match &self.flavor {
            Flavor::Link(l) => l.send(msg, priority, Wait::Forever).map_err(send_error),
            Flavor::Ring { .. } => self.send(msg),
        }
    }

    #[inline]
    fn claim(&self, deadline: Option<Instant>, block: bool) -> Result<u64, Failure> {
        // Fast path: a receiver is there and a slot is free. Everything else is decided
        // again, from the start, by `claim_slow`.
        let (end, producer) = self.ring();
        if end.peers_fast() != Peers::Gone {
            if let Ok(Claim::Claimed(pos)) = producer.try_claim(&end.seg) {
                return Ok(pos);
            }
        }
        self.claim_slow(deadline, block)
    }

    #[inline(never)]
    fn claim_slow(&self, deadline: Option<Instant>, block: bool) -> Result<u64, Failure> {
        let (end, producer) = self.ring();
        let mem = &end.seg;
        if end.peers_fast() == Peers::Gone {
            return Err(Failure::Disconnected);
        }
        match producer.try_claim(mem) {
            Ok(Claim::Claimed(pos)) => return Ok(pos),
            Ok(Claim::Full) => {}
            Err(c) => return Err(Failure::Corrupt(c.into())),
        }
        let stats = end.seg.counters(Role::Sender, end.index);
        crate::segment::layout::Counters::bump(&stats.full_waits, 1);
        if !block {
            return Err(match end.peers_rate_limited() {
                Peers::Gone => Failure::Disconnected,
                _ => Failure::Full,
            });
        }
        end.block(deadline, || match producer.try_claim(mem)? {
            Claim::Claimed(pos) => Ok(Some(pos)),
            Claim::Full => Ok(None),
        })
        .map_err(|b| match b {
            Blocked::Timeout => Failure::Timeout,
            Blocked::Disconnected => Failure::Disconnected,
            Blocked::Corrupt(c) => Failure::Corrupt(c),
        })
    }

    /// Writes `msg` into the claimed position and commits it.
    fn write(&self, pos: u64, msg: T) -> Result<(), (T, crate::EncodeError)> {
        let (end, producer) = self.ring();
        let mem = &end.seg;
        let payload = mem.payload(pos);
        match T::INFO.encoding {
            Encoding::ZeroCopy => {
                debug_assert!(size_of::<T>() <= mem.geometry().max_message as usize);
                debug_assert!((payload as usize) % align_of::<T>() == 0);
                // SAFETY: for zero-copy messages the slot payload holds exactly
                // `size_of::<T>()` bytes aligned for `T` (checked against the header when
                // the channel was opened); we own position `pos` until we commit it.
                unsafe { payload.cast::<T>().write(msg) };
                producer.commit(mem, pos, size_of::<T>() as u32, false);
                Ok(())
            }
            _ => {
                let max = mem.geometry().max_message as usize;
                // SAFETY: the payload is `max_message` bytes inside the mapping, owned by us
                // until committed.
                let out = unsafe { std::slice::from_raw_parts_mut(payload, max) };
                match msg.__encode(out) {
                    Ok(len) => {
                        producer.commit(mem, pos, len as u32, false);
                        Ok(())
                    }
                    Err(e) => {
                        // Nothing is sent: the receiver steps over the empty slot.
                        producer.commit(mem, pos, 0, true);
                        Err((msg, e))
                    }
                }
            }
        }
    }

    /// Sends a message, waiting while the channel is full.
    ///
    /// # Errors
    ///
    /// [`SendError::Disconnected`] if the receiver left or died, [`SendError::Encode`] if a
    /// serialized message is larger than the channel's maximum message size (it is not
    /// sent), [`SendError::Corrupt`] if the channel memory was corrupted. The message is
    /// handed back in every case.
    pub fn send(&self, msg: T) -> Result<(), SendError<T>> {
        if let Flavor::Link(l) = &self.flavor {
            return l.send(msg, 0, Wait::Forever).map_err(send_error);
        }
        match self.claim(None, true) {
            Ok(pos) => self
                .write(pos, msg)
                .map_err(|(m, e)| SendError::Encode(m, e)),
            Err(Failure::Corrupt(c)) => Err(SendError::Corrupt(msg, c)),
            Err(_) => Err(SendError::Disconnected(msg)),
        }
    }

    /// Sends a message if a slot is free right now.
    ///
    /// # Errors
    ///
    /// [`TrySendError::Full`] if no slot is free; otherwise as for [`send`](Self::send).
    pub fn try_send(&self, msg: T) -> Result<(), TrySendError<T>> {
        if let Flavor::Link(l) = &self.flavor {
            return l.send(msg, 0, Wait::No).map_err(try_send_error);
        }
        match self.claim(None, false) {
            Ok(pos) => self
                .write(pos, msg)
                .map_err(|(m, e)| TrySendError::Encode(m, e)),
            Err(Failure::Full) | Err(Failure::Timeout) => Err(TrySendError::Full(msg)),
            Err(Failure::Disconnected) => Err(TrySendError::Disconnected(msg)),
            Err(Failure::Corrupt(c)) => Err(TrySendError::Corrupt(msg, c)),
        }
    }

    /// Sends a message, waiting at most `timeout` for a free slot.
    ///
    /// # Errors
    ///
    /// [`SendTimeoutError::Timeout`] if no slot became free in time; otherwise as for
    /// [`send`](Self::send).
    pub fn send_timeout(&self, msg: T, timeout: Duration) -> Result<(), SendTimeoutError<T>> {
        if let Flavor::Link(l) = &self.flavor {
            let wait = Wait::from_deadline(deadline_after(timeout));
            return l.send(msg, 0, wait).map_err(send_timeout_error);
        }
        match self.claim(deadline_after(timeout), true) {
            Ok(pos) => self
                .write(pos, msg)
                .map_err(|(m, e)| SendTimeoutError::Encode(m, e)),
            Err(Failure::Full) | Err(Failure::Timeout) => Err(SendTimeoutError::Timeout(msg)),
            Err(Failure::Disconnected) => Err(SendTimeoutError::Disconnected(msg)),
            Err(Failure::Corrupt(c)) => Err(SendTimeoutError::Corrupt(msg, c)),
        }
    }

    /// Loans a slot in shared memory to write a message in place, waiting while the channel
    /// is full. [`Loan::send`] commits it; dropping the loan sends nothing.
    ///
    /// The slot initially holds whatever bytes it held before (a previous message of this
    /// channel, or zeros): a valid `T`, since every bit pattern of a zero-copy message is.
    ///
    /// # Errors
    ///
    /// As for [`send`](Self::send), with `()` in place of the message.
    #[inline]
    pub fn loan(&self) -> Result<Loan<'_, T>, SendError<()>>
    where
        T: ZeroCopy,
    {
        if let Flavor::Link(l) = &self.flavor {
            return match l.is_connected()
                || !matches!(
                    l.kind(),
                    TransportKind::Pipe | TransportKind::Fifo | TransportKind::UnixSocket
                ) {
                true => Ok(self.local_loan()),
                false => Err(SendError::Disconnected(())),
            };
        }
        match self.claim(None, true) {
            Ok(pos) => Ok(self.loan_at(pos)),
            Err(Failure::Corrupt(c)) => Err(SendError::Corrupt((), c)),
            Err(_) => Err(SendError::Disconnected(())),
        }
    }

    /// Loans a slot if one is free right now.
    ///
    /// # Errors
    ///
    /// As for [`try_send`](Self::try_send).
    pub fn try_loan(&self) -> Result<Loan<'_, T>, TrySendError<()>>
    where
        T: ZeroCopy,
    {
        if let Flavor::Link(_) = &self.flavor {
            return self.loan().map_err(|_| TrySendError::Disconnected(()));
        }
        match self.claim(None, false) {
            Ok(pos) => Ok(self.loan_at(pos)),
            Err(Failure::Full) | Err(Failure::Timeout) => Err(TrySendError::Full(())),
            Err(Failure::Disconnected) => Err(TrySendError::Disconnected(())),
            Err(Failure::Corrupt(c)) => Err(TrySendError::Corrupt((), c)),
        }
    }

    /// Loans a slot, waiting at most `timeout` for one.
    ///
    /// # Errors
    ///
    /// As for [`send_timeout`](Self::send_timeout).
    pub fn loan_timeout(&self, timeout: Duration) -> Result<Loan<'_, T>, SendTimeoutError<()>>
    where
        T: ZeroCopy,
    {
        let _ = timeout;
        if let Flavor::Link(_) = &self.flavor {
            return self.loan().map_err(|_| SendTimeoutError::Disconnected(()));
        }
        match self.claim(deadline_after(timeout), true) {
            Ok(pos) => Ok(self.loan_at(pos)),
            Err(Failure::Full) | Err(Failure::Timeout) => Err(SendTimeoutError::Timeout(())),
            Err(Failure::Disconnected) => Err(SendTimeoutError::Disconnected(())),
            Err(Failure::Corrupt(c)) => Err(SendTimeoutError::Corrupt((), c)),
        }
    }

    fn loan_at(&self, pos: u64) -> Loan<'_, T>
    where
        T: ZeroCopy,
    {
        let ptr = self.ring().0.seg.payload(pos).cast::<T>();
        debug_assert!((ptr as usize) % align_of::<T>() == 0);
        Loan {
            tx: self,
            pos,
            // The payload pointer is inside a live mapping, never null.
            ptr: NonNull::new(ptr).expect("mapping pointer is not null"),
            sent: false,
            local: false,
        }
    }

    /// A loan of a local, zeroed value (transports other than shared memory).
    fn local_loan(&self) -> Loan<'_, T>
    where
        T: ZeroCopy,
    {
        let zeros = vec![0u8; size_of::<T>()];
        let value =
            Box::new(T::__decode(&zeros).expect("a zero-copy message of its own size decodes"));
        Loan {
            tx: self,
            pos: 0,
            // Owned by the loan: freed by `send` or `drop`.
            ptr: NonNull::from(Box::leak(value)),
            sent: false,
            local: true,
        }
    }
}

enum Failure {
    Full,
    Timeout,
    Disconnected,
    Corrupt(crate::error::CorruptError),
}

/// A slot loaned in shared memory: write the message through `DerefMut`, then
/// [`send`](Loan::send) it. Dropping the loan sends nothing.
///
/// On transports other than shared memory the loan is a local value, sent (copied) by
/// [`send`](Loan::send): the API is the same, but it is not zero-copy.
pub struct Loan<'a, T: ZeroCopy> {
    tx: &'a Sender<T>,
    pos: u64,
    ptr: NonNull<T>,
    sent: bool,
    /// Whether `ptr` is a heap value owned by the loan (`Box::leak`ed), on other transports.
    local: bool,
}

impl<T: ZeroCopy> Loan<'_, T> {
    /// Commits the message: from now on the receiver can take it. Never blocks on shared
    /// memory, and never fails there.
    ///
    /// On other transports it sends the value, waiting while the transport is full, and a
    /// failure (the receiver is gone, a system call failed) is not reported: the message is
    /// lost and the next call on the sender reports the state. Use
    /// [`send_checked`](Self::send_checked) to get the error and the message back.
    ///
    /// The message never passes through the stack on shared memory, whatever its size (a
    /// multi-megabyte loan works on a thread with a small stack); `send_checked` returns a
    /// `Result` that can hold the message, so its caller needs stack room for one.
    #[inline]
    pub fn send(mut self) {
        if self.local {
            return self.send_local_unchecked();
        }
        self.commit_in_place();
    }

    /// Commits the message like [`send`](Self::send), reporting failure. On shared memory it
    /// always succeeds (committing a loaned slot cannot fail); on other transports the value
    /// is sent now, and an error hands it back.
    ///
    /// # Errors
    ///
    /// As for [`Sender::send`]: [`SendError::Disconnected`] if the receiver left or died,
    /// [`SendError::Corrupt`] if the transport failed.
    ///
    /// # Examples
    ///
    /// ```
    /// #[derive(shmbus::Message, Clone, Copy, Debug, PartialEq)]
    /// #[repr(C)]
    /// struct Job { id: u64 }
    ///
    /// let (tx, rx) = shmbus::pipe::<Job>()?;
    /// let mut loan = tx.loan()?;
    /// loan.id = 7;
    /// loan.send_checked()?;
    /// assert_eq!(rx.recv()?.id, 7);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[inline]
    pub fn send_checked(mut self) -> Result<(), SendError<T>> {
        if self.local {
            return self.send_local();
        }
        self.commit_in_place();
        Ok(())
    }

    /// Publishes a loan in the ring.
    #[inline]
    fn commit_in_place(&mut self) {
        self.sent = true;
        let (end, producer) = self.tx.ring();
        producer.commit(&end.seg, self.pos, size_of::<T>() as u32, false);
    }

    /// Sends a local loan (transports other than shared memory). Out of line, as is
    /// [`send_local_unchecked`](Self::send_local_unchecked): the value and the error that
    /// may hand it back pass through these frames, which would otherwise make the in-place
    /// path's frames the size of `T` (probed page by page on every send).
    #[cold]
    #[inline(never)]
    fn send_local(mut self) -> Result<(), SendError<T>> {
        self.sent = true;
        // SAFETY: a local loan's `ptr` came from `Box::leak` in `local_loan` and is
        // reclaimed exactly once: here (`sent` is set, so `drop` does not) or in `drop`.
        let value = unsafe { Box::from_raw(self.ptr.as_ptr()) };
        self.tx.send(*value)
    }

    #[cold]
    #[inline(never)]
    fn send_local_unchecked(self) {
        let _ = self.send_local();
    }
}

impl<T: ZeroCopy> Deref for Loan<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: `ptr` is an aligned slot of `size_of::<T>()` bytes owned by this loan until
        // it is committed or dropped; `T: Pod` makes any bytes in it a valid `T`.
        unsafe { self.ptr.as_ref() }
    }
}

impl<T: ZeroCopy> DerefMut for Loan<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as for `deref`; the loan is the slot's only writer until commit.
        unsafe { self.ptr.as_mut() }
    }
}

impl<T: ZeroCopy> Drop for Loan<'_, T> {
    #[inline]
    fn drop(&mut self) {
        if self.local {
            if !self.sent {
                // SAFETY: as in `send`: the leaked box is reclaimed once, and `send` did not.
                drop(unsafe { Box::from_raw(self.ptr.as_ptr()) });
            }
            return;
        }
        if !self.sent {
            let (end, producer) = self.tx.ring();
            producer.commit(&end.seg, self.pos, 0, true);
        }
    }
}

impl<T: Message> Clone for Sender<T> {
    /// Same as [`Sender::try_clone`].
    ///
    /// # Panics
    ///
    /// If the channel already has its maximum of senders
    /// ([`Options::max_senders`](crate::Options::max_senders)), or the segment cannot be
    /// reopened. Use [`try_clone`](Sender::try_clone) to handle that.
    fn clone(&self) -> Self {
        match self.try_clone() {
            Ok(tx) => tx,
            Err(e) => panic!("shmbus: cannot clone Sender: {e}"),
        }
    }
}

impl<T: Message> std::fmt::Debug for Sender<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sender")
            .field("name", &self.name())
            .field("type", &T::INFO.name)
            .field("capacity", &self.capacity())
            .finish()
    }
}

fn send_error<T>((msg, f): (T, LinkFail)) -> SendError<T> {
    match f {
        LinkFail::Encode(e) => SendError::Encode(msg, e),
        LinkFail::Corrupt(c) => SendError::Corrupt(msg, c),
        LinkFail::Decode(_) | LinkFail::Full | LinkFail::Timeout | LinkFail::Disconnected => {
            SendError::Disconnected(msg)
        }
    }
}

fn try_send_error<T>((msg, f): (T, LinkFail)) -> TrySendError<T> {
    match f {
        LinkFail::Full | LinkFail::Timeout => TrySendError::Full(msg),
        LinkFail::Encode(e) => TrySendError::Encode(msg, e),
        LinkFail::Corrupt(c) => TrySendError::Corrupt(msg, c),
        LinkFail::Decode(_) | LinkFail::Disconnected => TrySendError::Disconnected(msg),
    }
}

fn send_timeout_error<T>((msg, f): (T, LinkFail)) -> SendTimeoutError<T> {
    match f {
        LinkFail::Full | LinkFail::Timeout => SendTimeoutError::Timeout(msg),
        LinkFail::Encode(e) => SendTimeoutError::Encode(msg, e),
        LinkFail::Corrupt(c) => SendTimeoutError::Corrupt(msg, c),
        LinkFail::Decode(_) | LinkFail::Disconnected => SendTimeoutError::Disconnected(msg),
    }
}
