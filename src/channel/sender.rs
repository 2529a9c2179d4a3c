//! The sending end.

use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;
use std::time::{Duration, Instant};

use super::{deadline_after, Blocked, End};
use crate::error::{OpenError, SendError, SendTimeoutError, TrySendError};
use crate::message::{Encoding, Message, ZeroCopy};
use crate::options::Options;
use crate::ring::{Claim, Peers, Producer};
use crate::segment::posix::OpenMode;
use crate::segment::{Memory, Role};

/// The sending end of a channel.
///
/// A channel has one sender at a time (in any process). The handle is `Send`: it can be
/// moved to the thread that uses it. Dropping it detaches: the receiver drains what was
/// committed and then gets `Disconnected`.
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
    pub(super) end: End,
    producer: Producer,
    _type: PhantomData<fn(T) -> T>,
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
        let end = End::open::<T>(name, options, mode, Role::Sender)?;
        let producer = Producer::new(&end.seg, end.index, end.delivery);
        Ok(Sender {
            end,
            producer,
            _type: PhantomData,
        })
    }

    /// Another sender on the same channel, for another thread: it takes a sender entry of
    /// its own (with its own loans and its own liveness lock).
    ///
    /// # Errors
    ///
    /// [`OpenError::TooManyParticipants`] if the channel already has its maximum of senders.
    pub fn try_clone(&self) -> Result<Self, OpenError> {
        let end = self.end.duplicate()?;
        let producer = Producer::new(&end.seg, end.index, end.delivery);
        Ok(Sender {
            end,
            producer,
            _type: PhantomData,
        })
    }

    /// The channel's name.
    pub fn name(&self) -> &str {
        self.end.name()
    }

    /// Number of slots (the channel creator's capacity, rounded up to a power of two).
    pub fn capacity(&self) -> usize {
        self.end.seg.geometry().capacity as usize
    }

    /// Largest encoded message, in bytes.
    pub fn max_message_size(&self) -> usize {
        self.end.seg.geometry().max_message as usize
    }

    /// Whether a receiver is attached (as far as shared memory says; a receiver killed a
    /// moment ago is noticed by the next blocked or failed call).
    pub fn is_connected(&self) -> bool {
        self.end.peers_fast() == Peers::Attached
    }

    fn claim(&self, deadline: Option<Instant>, block: bool) -> Result<u64, Failure> {
        let mem = &self.end.seg;
        if self.end.peers_fast() == Peers::Gone {
            return Err(Failure::Disconnected);
        }
        match self.producer.try_claim(mem) {
            Ok(Claim::Claimed(pos)) => return Ok(pos),
            Ok(Claim::Full) => {}
            Err(c) => return Err(Failure::Corrupt(c.into())),
        }
        let stats = self.end.seg.counters(Role::Sender, self.end.index);
        crate::segment::layout::Counters::bump(&stats.full_waits, 1);
        if !block {
            return Err(match self.end.peers_rate_limited() {
                Peers::Gone => Failure::Disconnected,
                _ => Failure::Full,
            });
        }
        self.end
            .block(deadline, || match self.producer.try_claim(mem)? {
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
        let mem = &self.end.seg;
        let payload = mem.payload(pos);
        match T::INFO.encoding {
            Encoding::ZeroCopy => {
                debug_assert!(size_of::<T>() <= mem.geometry().max_message as usize);
                debug_assert!((payload as usize) % align_of::<T>() == 0);
                // SAFETY: for zero-copy messages the slot payload holds exactly
                // `size_of::<T>()` bytes aligned for `T` (checked against the header when
                // the channel was opened); we own position `pos` until we commit it.
                unsafe { payload.cast::<T>().write(msg) };
                self.producer.commit(mem, pos, size_of::<T>() as u32, false);
                Ok(())
            }
            _ => {
                let max = mem.geometry().max_message as usize;
                // SAFETY: the payload is `max_message` bytes inside the mapping, owned by us
                // until committed.
                let out = unsafe { std::slice::from_raw_parts_mut(payload, max) };
                match msg.__encode(out) {
                    Ok(len) => {
                        self.producer.commit(mem, pos, len as u32, false);
                        Ok(())
                    }
                    Err(e) => {
                        // Nothing is sent: the receiver steps over the empty slot.
                        self.producer.commit(mem, pos, 0, true);
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
        match self.claim(deadline_after(timeout), true) {
            Ok(pos) => self
                .write(pos, msg)
                .map_err(|(m, e)| SendTimeoutError::Encode(m, e)),
            Err(Failure::Full) | Err(Failure::Timeout) => Err(SendTimeoutError::Timeout(msg)),
            Err(Failure::Disconnected) => Err(SendTimeoutError::Disconnected(msg)),
            Err(Failure::Corrupt(c)) => Err(SendTimeoutError::Corrupt(msg, c)),
        }
    }
}

impl<T: ZeroCopy> Sender<T> {
    /// Loans a slot in shared memory to write a message in place, waiting while the channel
    /// is full. [`Loan::send`] commits it; dropping the loan sends nothing.
    ///
    /// The slot initially holds whatever bytes it held before (a previous message of this
    /// channel, or zeros): a valid `T`, since every bit pattern of a zero-copy message is.
    ///
    /// # Errors
    ///
    /// As for [`send`](Self::send), with `()` in place of the message.
    pub fn loan(&self) -> Result<Loan<'_, T>, SendError<()>> {
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
    pub fn try_loan(&self) -> Result<Loan<'_, T>, TrySendError<()>> {
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
    pub fn loan_timeout(&self, timeout: Duration) -> Result<Loan<'_, T>, SendTimeoutError<()>> {
        match self.claim(deadline_after(timeout), true) {
            Ok(pos) => Ok(self.loan_at(pos)),
            Err(Failure::Full) | Err(Failure::Timeout) => Err(SendTimeoutError::Timeout(())),
            Err(Failure::Disconnected) => Err(SendTimeoutError::Disconnected(())),
            Err(Failure::Corrupt(c)) => Err(SendTimeoutError::Corrupt((), c)),
        }
    }

    fn loan_at(&self, pos: u64) -> Loan<'_, T> {
        let ptr = self.end.seg.payload(pos).cast::<T>();
        debug_assert!((ptr as usize) % align_of::<T>() == 0);
        Loan {
            tx: self,
            pos,
            // The payload pointer is inside a live mapping, never null.
            ptr: NonNull::new(ptr).expect("mapping pointer is not null"),
            sent: false,
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
pub struct Loan<'a, T: ZeroCopy> {
    tx: &'a Sender<T>,
    pos: u64,
    ptr: NonNull<T>,
    sent: bool,
}

impl<T: ZeroCopy> Loan<'_, T> {
    /// Commits the message: from now on the receiver can take it. Never blocks.
    pub fn send(mut self) {
        self.sent = true;
        self.tx
            .producer
            .commit(&self.tx.end.seg, self.pos, size_of::<T>() as u32, false);
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
    fn drop(&mut self) {
        if !self.sent {
            self.tx.producer.commit(&self.tx.end.seg, self.pos, 0, true);
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
