//! The receiving end.

use std::cell::UnsafeCell;
use std::marker::PhantomData;
use std::mem::{ManuallyDrop, MaybeUninit};
use std::ops::Deref;
use std::ptr::NonNull;
use std::time::{Duration, Instant};

use super::link::{LinkEnd, LinkFail};
use super::{deadline_after, Blocked, End};
use crate::error::{OpenError, RecvError, RecvTimeoutError, TryRecvError};
use crate::message::{DecodeError, Encoding, Message};
use crate::options::Options;
use crate::ring::{Consumer, Peers, Take};
use crate::segment::OpenMode;
use crate::segment::{Memory, Role};
use crate::transport::{TransportKind, Wait};

/// The receiving end of a channel.
///
/// A channel has up to [`Options::max_receivers`] receivers, in any processes; in a
/// broadcast channel each is a subscriber. Zero-copy messages are read where
/// they lie in shared memory: [`recv`](Self::recv) returns a [`Sample`] that borrows the slot
/// and frees it when dropped. Serialized messages are decoded into a [`Sample`] that owns
/// the value.
///
/// # Examples
///
/// ```no_run
/// #[derive(shmbus::Message, Clone, Copy, Debug)]
/// #[repr(C)]
/// struct Tick { seq: u64, price: f64, venue: [u8; 8] }
///
/// let rx = shmbus::Receiver::<Tick>::open_or_create("ticks", &Default::default())?;
/// let tick = rx.recv()?;               // borrows the message in shared memory
/// println!("{} at {}", tick.seq, tick.price);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Receiver<T: Message> {
    flavor: Flavor,
    _type: PhantomData<fn() -> T>,
}

/// The shared-memory ring (the fast path, static dispatch) or another transport.
// The ring variant stays inline: boxing it would put a pointer chase on the fast path.
#[allow(clippy::large_enum_variant)]
enum Flavor {
    Ring { end: End, consumer: Consumer },
    Link(LinkEnd),
}

/// What one attempt to take a message found.
enum Got {
    Slot { pos: u64, len: u32 },
    Lagged(u64),
}

impl<T: Message> Receiver<T> {
    /// Opens the channel `name`, creating it if it does not exist.
    ///
    /// # Errors
    ///
    /// [`OpenError`]: an invalid name or options, a channel of another type, a corrupt
    /// segment, a channel that already has a receiver, no room in `/dev/shm`, or a failed
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
        if let Some(link) = LinkEnd::open::<T>(name, options, mode, Role::Receiver)? {
            return Ok(Self::from_link(link));
        }
        let end = End::open::<T>(name, options, mode, Role::Receiver)?;
        let consumer = Consumer::new(&end.seg, end.index, end.delivery);
        Ok(Receiver {
            flavor: Flavor::Ring { end, consumer },
            _type: PhantomData,
        })
    }

    pub(super) fn from_link(link: LinkEnd) -> Self {
        Receiver {
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

    /// The ring end and consumer, if this receiver runs on the shared-memory ring.
    pub(super) fn ring_end(&self) -> Option<(&End, &Consumer)> {
        match &self.flavor {
            Flavor::Ring { end, consumer } => Some((end, consumer)),
            Flavor::Link(_) => None,
        }
    }

    /// The link end, on fallback transports.
    pub(super) fn link_end(&self) -> Option<&LinkEnd> {
        match &self.flavor {
            Flavor::Link(l) => Some(l),
            Flavor::Ring { .. } => None,
        }
    }

    /// The ring end; only called on paths that dispatched to the ring already.
    #[inline]
    fn ring(&self) -> (&End, &Consumer) {
        match &self.flavor {
            Flavor::Ring { end, consumer } => (end, consumer),
            Flavor::Link(_) => unreachable!("ring path on a link receiver"),
        }
    }

    /// The channel's name.
    pub fn name(&self) -> &str {
        match &self.flavor {
            Flavor::Ring { end, .. } => end.name(),
            Flavor::Link(l) => &l.name,
        }
    }

    /// The transport this receiver runs over.
    pub fn transport(&self) -> TransportKind {
        match &self.flavor {
            Flavor::Ring { end, .. } => end.kind,
            Flavor::Link(l) => l.kind(),
        }
    }

    /// Largest encoded message, in bytes.
    pub fn max_message_size(&self) -> usize {
        match &self.flavor {
            Flavor::Ring { end, .. } => end.seg_max_message(),
            Flavor::Link(l) => l.max_frame,
        }
    }

    /// Number of slots (see [`Sender::capacity`](crate::Sender::capacity)).
    pub fn capacity(&self) -> usize {
        match &self.flavor {
            Flavor::Ring { end, .. } => end.seg.geometry().capacity as usize,
            Flavor::Link(l) => l.capacity(),
        }
    }

    /// Whether a sender is attached (as far as shared memory says).
    pub fn is_connected(&self) -> bool {
        match &self.flavor {
            Flavor::Ring { end, .. } => end.peers_fast() == Peers::Attached,
            Flavor::Link(l) => l.is_connected(),
        }
    }

    /// Receives from a fallback transport into an owned sample. Never inlined: the decoded
    /// value passes through this frame, so inlined it would give every caller a stack frame
    /// the size of `T` (probed page by page on every receive, a megabyte message or not).
    #[inline(never)]
    fn recv_link(l: &LinkEnd, wait: Wait) -> Result<Sample<'_, T>, LinkFail> {
        l.recv::<T>(wait).map(|v| Sample {
            inner: Inner::owned(v),
        })
    }

    fn poll(&self) -> Result<Option<Got>, crate::ring::Corruption> {
        let (end, consumer) = self.ring();
        Ok(match consumer.try_take(&end.seg)? {
            Take::Ready { pos, len } => Some(Got::Slot { pos, len }),
            Take::Lagged(n) => Some(Got::Lagged(n)),
            Take::Empty => None,
        })
    }

    /// Turns a taken slot into a sample.
    #[inline]
    fn sample(&self, pos: u64, len: u32) -> Result<Sample<'_, T>, DecodeError> {
        let (end, consumer) = self.ring();
        let mem = &end.seg;
        let payload = mem.payload(pos);
        match T::INFO.encoding {
            Encoding::ZeroCopy => {
                if len as usize != size_of::<T>() {
                    consumer.release(mem, pos);
                    return Err(DecodeError::Length {
                        ty: T::INFO.name,
                        expected: size_of::<T>(),
                        found: len as usize,
                    });
                }
                debug_assert!((payload as usize) % align_of::<T>() == 0);
                Ok(Sample {
                    inner: Inner::InPlace {
                        rx: self,
                        pos,
                        ptr: NonNull::new(payload.cast::<T>()).expect("mapping is not null"),
                    },
                })
            }
            _ => {
                // SAFETY: `len <= max_message` (checked by the ring), so the bytes lie inside
                // the slot's payload, which we own until we release it below.
                let bytes = unsafe { std::slice::from_raw_parts(payload, len as usize) };
                let value = Self::decode_owned(bytes);
                consumer.release(mem, pos);
                Ok(Sample { inner: value? })
            }
        }
    }

    /// Decodes a serialized message into an owned sample. Out of line, like
    /// [`recv_link`](Self::recv_link): the value passes through this frame on its way to the
    /// sample, and would otherwise enlarge the frame of every receive by the size of `T`.
    #[inline(never)]
    fn decode_owned(bytes: &[u8]) -> Result<Inner<'static, T>, DecodeError> {
        T::__decode(bytes).map(Inner::owned)
    }

    /// Receives a message, waiting until one arrives.
    ///
    /// # Errors
    ///
    /// [`RecvError::Disconnected`] once the sender has left or died and every message it
    /// committed has been received; [`RecvError::Decode`] for a message that cannot be
    /// decoded (it is dropped, the channel goes on); [`RecvError::Corrupt`] if the channel
    /// memory was corrupted.
    #[inline]
    pub fn recv(&self) -> Result<Sample<'_, T>, RecvError> {
        // Fast path: a message is waiting in the ring. Everything else (an empty ring,
        // another transport) goes through `recv_slow`.
        if let Flavor::Ring { end, consumer } = &self.flavor {
            match consumer.try_take(&end.seg) {
                Ok(Take::Ready { pos, len }) => return Ok(self.sample(pos, len)?),
                Ok(Take::Lagged(n)) => return Err(RecvError::Lagged(n)),
                Ok(Take::Empty) => {}
                Err(c) => return Err(RecvError::Corrupt(c.into())),
            }
        }
        self.recv_slow()
    }

    #[inline(never)]
    fn recv_slow(&self) -> Result<Sample<'_, T>, RecvError> {
        if let Flavor::Link(l) = &self.flavor {
            return Self::recv_link(l, Wait::Forever).map_err(|f| match f {
                LinkFail::Decode(e) => RecvError::Decode(e),
                LinkFail::Corrupt(c) => RecvError::Corrupt(c),
                LinkFail::Encode(e) => RecvError::Corrupt(crate::CorruptError {
                    reason: e.to_string(),
                }),
                _ => RecvError::Disconnected,
            });
        }
        let got = match self.poll() {
            Ok(Some(g)) => g,
            Ok(None) => self
                .ring()
                .0
                .block(None, || self.poll())
                .map_err(|b| match b {
                    Blocked::Corrupt(c) => RecvError::Corrupt(c),
                    _ => RecvError::Disconnected,
                })?,
            Err(c) => return Err(RecvError::Corrupt(c.into())),
        };
        match got {
            Got::Slot { pos, len } => Ok(self.sample(pos, len)?),
            Got::Lagged(n) => Err(RecvError::Lagged(n)),
        }
    }

    /// Receives a message if one is waiting.
    ///
    /// # Errors
    ///
    /// [`TryRecvError::Empty`] if none is; otherwise as for [`recv`](Self::recv).
    pub fn try_recv(&self) -> Result<Sample<'_, T>, TryRecvError> {
        if let Flavor::Link(l) = &self.flavor {
            return Self::recv_link(l, Wait::No).map_err(|f| match f {
                LinkFail::Full | LinkFail::Timeout => TryRecvError::Empty,
                LinkFail::Decode(e) => TryRecvError::Decode(e),
                LinkFail::Corrupt(c) => TryRecvError::Corrupt(c),
                LinkFail::Encode(e) => TryRecvError::Corrupt(crate::CorruptError {
                    reason: e.to_string(),
                }),
                LinkFail::Disconnected => TryRecvError::Disconnected,
            });
        }
        match self.poll() {
            Ok(Some(Got::Slot { pos, len })) => Ok(self.sample(pos, len)?),
            Ok(Some(Got::Lagged(n))) => Err(TryRecvError::Lagged(n)),
            Ok(None) => match self.ring().0.peers_rate_limited() {
                Peers::Gone => match self.poll() {
                    Ok(Some(Got::Slot { pos, len })) => Ok(self.sample(pos, len)?),
                    Ok(Some(Got::Lagged(n))) => Err(TryRecvError::Lagged(n)),
                    Ok(None) => Err(TryRecvError::Disconnected),
                    Err(c) => Err(TryRecvError::Corrupt(c.into())),
                },
                _ => Err(TryRecvError::Empty),
            },
            Err(c) => Err(TryRecvError::Corrupt(c.into())),
        }
    }

    /// Receives a message, waiting at most `timeout`.
    ///
    /// # Errors
    ///
    /// [`RecvTimeoutError::Timeout`] if none arrived in time; otherwise as for
    /// [`recv`](Self::recv).
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Sample<'_, T>, RecvTimeoutError> {
        self.recv_deadline_inner(deadline_after(timeout))
    }

    /// Receives a message, waiting at most until `deadline`.
    ///
    /// # Errors
    ///
    /// As for [`recv_timeout`](Self::recv_timeout).
    pub fn recv_deadline(&self, deadline: Instant) -> Result<Sample<'_, T>, RecvTimeoutError> {
        self.recv_deadline_inner(Some(deadline))
    }

    fn recv_deadline_inner(
        &self,
        deadline: Option<Instant>,
    ) -> Result<Sample<'_, T>, RecvTimeoutError> {
        if let Flavor::Link(l) = &self.flavor {
            return Self::recv_link(l, Wait::from_deadline(deadline)).map_err(|f| match f {
                LinkFail::Full | LinkFail::Timeout => RecvTimeoutError::Timeout,
                LinkFail::Decode(e) => RecvTimeoutError::Decode(e),
                LinkFail::Corrupt(c) => RecvTimeoutError::Corrupt(c),
                LinkFail::Encode(e) => RecvTimeoutError::Corrupt(crate::CorruptError {
                    reason: e.to_string(),
                }),
                LinkFail::Disconnected => RecvTimeoutError::Disconnected,
            });
        }
        let got = match self.poll() {
            Ok(Some(g)) => g,
            Ok(None) => self
                .ring()
                .0
                .block(deadline, || self.poll())
                .map_err(|b| match b {
                    Blocked::Corrupt(c) => RecvTimeoutError::Corrupt(c),
                    Blocked::Timeout => RecvTimeoutError::Timeout,
                    Blocked::Disconnected => RecvTimeoutError::Disconnected,
                })?,
            Err(c) => return Err(RecvTimeoutError::Corrupt(c.into())),
        };
        match got {
            Got::Slot { pos, len } => Ok(self.sample(pos, len)?),
            Got::Lagged(n) => Err(RecvTimeoutError::Lagged(n)),
        }
    }

    /// A blocking iterator over owned messages; it ends when the senders are gone and the
    /// channel is drained (or on an error, which it does not report: use `recv` for that).
    /// Broadcast lag is stepped over silently.
    pub fn iter(&self) -> Iter<'_, T> {
        Iter { rx: self }
    }

    /// A non-blocking iterator over the messages waiting now.
    pub fn try_iter(&self) -> TryIter<'_, T> {
        TryIter { rx: self }
    }
}

/// Blocking iterator returned by [`Receiver::iter`].
pub struct Iter<'a, T: Message> {
    rx: &'a Receiver<T>,
}

impl<T: Message> Iterator for Iter<'_, T> {
    type Item = T;
    fn next(&mut self) -> Option<T> {
        loop {
            match self.rx.recv() {
                Ok(sample) => return Some(sample.into_inner()),
                Err(RecvError::Lagged(_)) => continue,
                Err(_) => return None,
            }
        }
    }
}

/// Non-blocking iterator returned by [`Receiver::try_iter`].
pub struct TryIter<'a, T: Message> {
    rx: &'a Receiver<T>,
}

impl<T: Message> Iterator for TryIter<'_, T> {
    type Item = T;
    fn next(&mut self) -> Option<T> {
        self.rx.try_recv().ok().map(Sample::into_inner)
    }
}

/// A received message.
///
/// For a zero-copy message it is a view of the slot in shared memory, freed for the sender
/// when the sample is dropped; hold it only as long as needed, since the sender cannot reuse
/// the slot (nor any slot after it) meanwhile. For a serialized message it owns the decoded
/// value. Either way it dereferences to `T`, and [`into_inner`](Sample::into_inner) gives
/// the value.
///
/// # Trust
///
/// The slot is shared memory: a process that is not following the protocol could write it
/// while the sample is alive. Every bit pattern is a valid zero-copy message, so this can
/// produce odd values, never an invalid one.
pub struct Sample<'a, T: Message> {
    inner: Inner<'a, T>,
}

enum Inner<'a, T: Message> {
    InPlace {
        rx: &'a Receiver<T>,
        pos: u64,
        ptr: NonNull<T>,
    },
    /// Boxed, so that a sample stays small (80 bytes with the inline variant below)
    /// whatever the size of `T`: it is returned by value through several calls, and an
    /// inline `T` made every one of them copy the whole message (a megabyte message was
    /// copied once per receive, in place or not, and took that much stack).
    Owned(Box<T>),
    /// A message of at most [`INLINE`] bytes, kept in the sample itself: no allocation per
    /// receive for small messages over the copying transports. Holds an initialised `T`
    /// (written by [`Inner::owned`], dropped by `Sample`'s `Drop` or moved out by
    /// `into_inner`).
    Inline(InlineBuf, PhantomData<T>),
}

/// Largest message a sample keeps inline (bytes).
const INLINE: usize = 64;

/// Room for one small message: [`INLINE`] bytes aligned for any type up to 16. In an
/// `UnsafeCell`: the message may have interior mutability (a `Cell` in a serialized
/// message), and the sample hands out `&T` into these bytes, so they must not be treated
/// as frozen behind `&Sample`.
#[repr(C, align(16))]
struct InlineBuf(UnsafeCell<[MaybeUninit<u8>; INLINE]>);

impl<T: Message> Inner<'_, T> {
    /// Whether a `T` fits an [`InlineBuf`] (decided at compile time).
    const FITS_INLINE: bool =
        size_of::<T>() <= INLINE && align_of::<T>() <= align_of::<InlineBuf>();

    /// An owned message: inline if it fits, boxed otherwise.
    #[inline]
    fn owned(value: T) -> Self {
        if Self::FITS_INLINE {
            let buf = InlineBuf(UnsafeCell::new([MaybeUninit::uninit(); INLINE]));
            debug_assert!(size_of::<T>() <= INLINE && align_of::<T>() <= 16);
            // SAFETY: `FITS_INLINE`: the buffer is large enough and aligned for `T` (the
            // cell has the layout of its contents); it is uninitialised, not shared yet,
            // and we write it once.
            unsafe { buf.0.get().cast::<T>().write(value) };
            Inner::Inline(buf, PhantomData)
        } else {
            Inner::Owned(Box::new(value))
        }
    }
}

impl<T: Message> Sample<'_, T> {
    /// The message by value (a copy out of shared memory for zero-copy messages).
    pub fn into_inner(self) -> T {
        let this = ManuallyDrop::new(self);
        match &this.inner {
            Inner::InPlace { rx, pos, ptr } => {
                // SAFETY: zero-copy messages are `Pod` (the `Message` contract): reading the
                // slot's bytes produces a valid, independent `T`. The slot stays ours until
                // the release below.
                let value = unsafe { ptr.as_ptr().read() };
                let (end, consumer) = rx.ring();
                consumer.release(&end.seg, *pos);
                value
            }
            // SAFETY: `this` is never used or dropped again, so moving the value out leaves
            // no second owner.
            Inner::Owned(v) => *unsafe { std::ptr::read(v) },
            // SAFETY: the buffer holds an initialised `T` (see `Inner::Inline`), aligned for
            // it; `this` is never dropped, so the value has no second owner.
            Inner::Inline(buf, _) => unsafe { buf.0.get().cast::<T>().read() },
        }
    }

    /// Whether the message is read in place in shared memory (zero-copy).
    pub fn is_in_place(&self) -> bool {
        matches!(self.inner, Inner::InPlace { .. })
    }
}

impl<T: Message> Deref for Sample<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        match &self.inner {
            // SAFETY: the slot is aligned for `T`, holds `size_of::<T>()` committed bytes
            // (checked when taken) and stays ours until this sample is dropped; `T` is `Pod`,
            // so any bytes are a valid `T`, and it has no interior mutability.
            Inner::InPlace { ptr, .. } => unsafe { ptr.as_ref() },
            Inner::Owned(v) => v,
            // SAFETY: the buffer holds an initialised, aligned `T` owned by this sample.
            Inner::Inline(buf, _) => unsafe { &*buf.0.get().cast::<T>() },
        }
    }
}

impl<T: Message> Drop for Sample<'_, T> {
    #[inline]
    fn drop(&mut self) {
        match &mut self.inner {
            Inner::InPlace { rx, pos, .. } => {
                let (end, consumer) = rx.ring();
                consumer.release(&end.seg, *pos);
            }
            // SAFETY: the buffer holds an initialised `T` owned by this sample, dropped
            // exactly once, here.
            Inner::Inline(buf, _) => unsafe { std::ptr::drop_in_place(buf.0.get().cast::<T>()) },
            Inner::Owned(_) => {}
        }
    }
}

impl<T: Message + std::fmt::Debug> std::fmt::Debug for Sample<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        (**self).fmt(f)
    }
}

impl<T: Message> std::fmt::Debug for Receiver<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receiver")
            .field("name", &self.name())
            .field("type", &T::INFO.name)
            .field("capacity", &self.capacity())
            .finish()
    }
}
