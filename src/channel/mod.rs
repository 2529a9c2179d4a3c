//! Typed channel handles: the public [`Sender`] and [`Receiver`] on top of the ring.
//!
//! This module owns the blocking policy (spin, then sleep on the futex in slices, checking
//! that the peer is alive between slices) and the typed view of slots.

#[cfg(feature = "tokio")]
mod async_tokio;
pub(crate) mod link;
mod poll;
pub(crate) mod raw;
mod receiver;
mod sender;
mod service;

#[cfg(feature = "tokio")]
pub use async_tokio::{AsyncReceiver, AsyncReceiverError, AsyncSender};
pub use link::{pipe, INHERIT_VAR};
pub use receiver::{Iter, Receiver, Sample, TryIter};
pub use sender::{Loan, Sender};
pub use service::{Client, Request, RequestError, RespondError, Server};

use std::cell::Cell;
use std::time::{Duration, Instant};

/// How long an opener keeps trying when every participant entry is held (see
/// `End::attach`).
const ATTACH_RETRY: Duration = Duration::from_millis(100);

use crate::error::{CorruptError, OpenError, TypeDesc};
use crate::message::{Encoding, Message};
use crate::name;
use crate::options::{Delivery as DeliveryMode, Options, Overflow};
use crate::ring::{self, wait, Corruption, Delivery, Peers};
use crate::segment::layout::{self, Geometry};
use crate::segment::{posix, sysv, OpenMode, Segment, SegmentError, Spec};
use crate::segment::{Memory, Role};
use crate::transport::{Transport, TransportKind};
use crate::wake::{AnyNotifier, WakeSeg, WakeStrategy};

/// While asleep, a blocked call wakes up this often to check that its peer is still alive,
/// which bounds how long a SIGKILLed peer goes unnoticed.
pub(crate) const LIVENESS_SLICE: Duration = Duration::from_millis(10);
/// A non-blocking call that finds the ring empty/full checks liveness at most this often.
const TRY_LIVENESS_INTERVAL: Duration = Duration::from_millis(1);

/// How a blocking operation ended without a result.
pub(crate) enum Blocked {
    Timeout,
    Disconnected,
    Corrupt(CorruptError),
}

impl From<Corruption> for CorruptError {
    fn from(c: Corruption) -> Self {
        CorruptError { reason: c.0 }
    }
}

/// One end of a channel: the segment, our participant entry, and the blocking machinery.
pub(crate) struct End {
    /// The segment with this participant's wake notifier: the ring reaches the notifier's
    /// wake-up through `Memory::wake_hook`, statically dispatched.
    pub(crate) seg: WakeSeg,
    /// The channel's wake strategy (recorded in the header by its creator).
    pub(crate) strategy: WakeStrategy,
    /// POSIX or System V shared memory.
    pub(crate) kind: TransportKind,
    pub(crate) role: Role,
    pub(crate) index: u32,
    pub(crate) delivery: Delivery,
    name: String,
    spin: Duration,
    last_liveness: Cell<Instant>,
    /// An entry of the other role that was active when last looked at: `peers_fast` reads
    /// that one entry, and scans the table only when it is no longer active.
    peer_hint: Cell<u32>,
}

impl End {
    pub(crate) fn open<T: Message>(
        name: &str,
        options: &Options,
        mode: OpenMode,
        role: Role,
    ) -> Result<End, OpenError> {
        Self::open_info(name, options, mode, role, T::INFO)
    }

    /// [`open`](Self::open) for a type known only by its description.
    pub(crate) fn open_info(
        name: &str,
        options: &Options,
        mode: OpenMode,
        role: Role,
        info: crate::MessageInfo,
    ) -> Result<End, OpenError> {
        let object = name::object_name(&options.prefix, name)?;
        let invalid = |reason: String| OpenError::InvalidOptions {
            name: name.to_owned(),
            reason,
        };
        let (msg_size, msg_align, max_message) = match info.encoding {
            Encoding::ZeroCopy => (info.size as u32, info.align as u64, info.size as u64),
            Encoding::Postcard => (0, 8, options.max_message_size as u64),
        };
        options.check(name)?;
        let capacity = (options.capacity.max(2) as u64)
            .checked_next_power_of_two()
            .ok_or_else(|| invalid(format!("capacity {} is too large", options.capacity)))?;
        let schema = info.schema.and_then(|s| s.encode()).unwrap_or_default();
        let geometry = Geometry::new(
            capacity,
            max_message,
            msg_align,
            options.max_senders,
            options.max_receivers,
        )
        .and_then(|g| g.with_schema(schema.len() as u32))
        .map_err(invalid)?;
        let broadcast = options.delivery == Some(DeliveryMode::Broadcast);
        if options.overflow == Overflow::DropOldest && !broadcast {
            return Err(invalid(
                "Overflow::DropOldest needs Delivery::Broadcast (a queue never drops work)".into(),
            ));
        }
        if options.history > 0 && (!broadcast || options.history as u64 >= capacity) {
            return Err(invalid(format!(
                "history {} needs Delivery::Broadcast and must be less than the capacity {capacity}",
                options.history
            )));
        }
        let spec = Spec {
            type_name: info.name,
            fingerprint: info.fingerprint,
            encoding: info.encoding as u32,
            msg_size,
            msg_align: msg_align as u32,
            geometry,
            mode: if broadcast {
                layout::mode::BROADCAST
            } else {
                layout::mode::QUEUE
            },
            mode_explicit: options.delivery.is_some(),
            overflow: match options.overflow {
                Overflow::Block => layout::overflow::BLOCK,
                Overflow::DropOldest => layout::overflow::DROP_OLDEST,
            },
            history: options.history as u32,
            access: options.access(),
            schema,
            wake: options.wake.unwrap_or_default().code(),
        };
        // Register for asymmetric barriers before touching the ring (see ring::wait).
        crate::sys::membarrier::available();
        let (opened, kind) = match link::resolve(&options.transport) {
            Transport::SysvSharedMemory { key } => {
                let key = key.unwrap_or_else(|| crate::transport::sysv_mq::key_for(&object));
                if key == 0 {
                    return Err(invalid("key 0 is IPC_PRIVATE".into()));
                }
                let lock_path = sysv::lock_path(&options.prefix, key);
                (
                    sysv::open(key, &lock_path, &spec, mode),
                    TransportKind::SysvSharedMemory,
                )
            }
            _ => (
                posix::open(&object, &spec, mode),
                TransportKind::SharedMemory,
            ),
        };
        let mut seg = opened.map_err(|e| match e {
            SegmentError::NotFound => OpenError::NotFound {
                name: name.to_owned(),
                object: object.clone(),
            },
            SegmentError::AlreadyExists => OpenError::AlreadyExists {
                name: name.to_owned(),
            },
            SegmentError::TypeMismatch {
                found_name,
                found_fingerprint,
                found_encoding,
            } => OpenError::TypeMismatch {
                name: name.to_owned(),
                expected: TypeDesc {
                    name: info.name.to_owned(),
                    encoding: info.encoding.name(),
                    fingerprint: info.fingerprint,
                },
                found: TypeDesc {
                    name: found_name,
                    encoding: Encoding::from_u32(found_encoding).map_or("unknown", Encoding::name),
                    fingerprint: found_fingerprint,
                },
            },
            SegmentError::ModeMismatch(reason) => OpenError::DeliveryMismatch {
                name: name.to_owned(),
                reason,
            },
            SegmentError::Corrupt(reason) => OpenError::Corrupt {
                name: name.to_owned(),
                reason,
            },
            SegmentError::NoSpace(source) => OpenError::NoSpace {
                name: name.to_owned(),
                bytes: geometry.total_size,
                source,
            },
            SegmentError::Foreign(object, owner, group) => OpenError::NotOwner {
                name: name.to_owned(),
                object,
                owner,
                group,
            },
            SegmentError::WrongKind(reason) => OpenError::WrongKind {
                name: name.to_owned(),
                reason,
            },
            SegmentError::Io(op, source) => OpenError::from_io(name, op, source),
        })?;
        let io_err = |op| {
            move |source| OpenError::Io {
                name: name.to_owned(),
                op,
                source,
            }
        };
        let (code, param) = seg.wake();
        let strategy =
            WakeStrategy::from_code(code, param).map_err(|reason| OpenError::Corrupt {
                name: name.to_owned(),
                reason,
            })?;
        if let Some(expected) = options.wake {
            if expected != strategy {
                return Err(OpenError::WakeMismatch {
                    name: name.to_owned(),
                    expected,
                    found: strategy,
                });
            }
        }
        if seg.left_behind() {
            tracing::info!(
                channel = name,
                "recovering a segment left behind by processes that are gone"
            );
            ring::recover_left_behind(&seg);
            crate::wake::recover_left_behind(&seg);
            seg.share().map_err(io_err("lock"))?;
        }
        Self::attach(seg, strategy, kind, role, name, options.spin)
    }

    /// Attaches to an open segment as a new participant.
    fn attach(
        mut seg: Segment,
        strategy: WakeStrategy,
        kind: TransportKind,
        role: Role,
        name: &str,
        spin: Duration,
    ) -> Result<End, OpenError> {
        let (mode, overflow, history) = seg.delivery();
        let delivery = Delivery {
            broadcast: mode == layout::mode::BROADCAST,
            drop_oldest: overflow == layout::overflow::DROP_OLDEST,
            history: history as u64,
        };
        // The entry of a participant that died is held for a moment by a peer reclaiming
        // it (`ring::peers`); try again for a short while before calling the channel full,
        // so that a process restarted right after a crash is not refused.
        let deadline = Instant::now() + ATTACH_RETRY;
        let index = loop {
            let found = ring::attach(&seg, role, delivery).map_err(|source| OpenError::Io {
                name: name.to_owned(),
                op: "lock",
                source,
            })?;
            match found {
                Some(index) => break index,
                None if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(1));
                }
                None => {
                    return Err(OpenError::TooManyParticipants {
                        name: name.to_owned(),
                        role: role.name(),
                        max: match role {
                            Role::Sender => seg.geometry().max_senders,
                            Role::Receiver => seg.geometry().max_receivers,
                        },
                    })
                }
            }
        };
        let notifier = match AnyNotifier::new(strategy, &mut seg, role, index) {
            Ok(n) => n,
            Err(source) => {
                ring::detach(&seg, role, index);
                return Err(OpenError::Io {
                    name: name.to_owned(),
                    op: "wake strategy setup",
                    source,
                });
            }
        };
        tracing::debug!(channel = name, role = role.name(), index, %strategy, "attached");
        Ok(End {
            seg: WakeSeg { seg, notifier },
            strategy,
            kind,
            role,
            index,
            delivery,
            name: name.to_owned(),
            spin,
            last_liveness: Cell::new(Instant::now()),
            peer_hint: Cell::new(0),
        })
    }

    /// A new participant of the same role on the same segment (a cloned handle).
    pub(crate) fn duplicate(&self) -> Result<End, OpenError> {
        let seg = self.seg.seg.duplicate().map_err(|source| OpenError::Io {
            name: self.name.clone(),
            op: "reopen",
            source,
        })?;
        Self::attach(
            seg,
            self.strategy,
            self.kind,
            self.role,
            &self.name,
            self.spin,
        )
    }

    /// Whether this end stops waiting when the other side is gone. A broadcast sender does
    /// not: its messages stay in the ring for subscribers that join later.
    fn stops_when_peer_gone(&self) -> bool {
        !(self.delivery.broadcast && self.role == Role::Sender)
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// The state of the other side, from shared state only (no system call).
    #[inline]
    pub(crate) fn peers_fast(&self) -> Peers {
        if !self.stops_when_peer_gone() {
            return Peers::Attached;
        }
        let other = ring::other(self.role);
        if ring::is_active(&self.seg, other, self.peer_hint.get()) {
            return Peers::Attached;
        }
        self.peers_scan()
    }

    /// `peers_fast` when the hinted entry is not active: the whole table.
    #[cold]
    fn peers_scan(&self) -> Peers {
        let other = ring::other(self.role);
        if let Some(index) = ring::first_active(&self.seg, other) {
            self.peer_hint.set(index);
            return Peers::Attached;
        }
        ring::peers(&self.seg, other, false)
    }

    /// The state of the other side, checking now that attached peers are alive.
    pub(crate) fn peers_checked(&self) -> Peers {
        ring::peers(&self.seg, ring::other(self.role), true)
    }

    /// The channel's maximum message size.
    pub(crate) fn seg_max_message(&self) -> usize {
        self.seg.geometry().max_message as usize
    }

    /// The state of the other side, checking at most every millisecond whether an
    /// "attached" peer is really alive (for non-blocking calls that found nothing to do).
    pub(crate) fn peers_rate_limited(&self) -> Peers {
        let now = Instant::now();
        let check = now.duration_since(self.last_liveness.get()) >= TRY_LIVENESS_INTERVAL;
        if check {
            self.last_liveness.set(now);
        }
        let peers = ring::peers(&self.seg, ring::other(self.role), check);
        if self.stops_when_peer_gone() {
            peers
        } else {
            Peers::Attached
        }
    }

    /// Runs `poll` until it yields a value: spinning for the configured time, then sleeping
    /// on the futex in slices, checking between slices that the peer is alive. `gone` says
    /// what to do when the peer is gone: give up (`Disconnected`) after one last poll.
    pub(crate) fn block<R>(
        &self,
        deadline: Option<Instant>,
        mut poll: impl FnMut() -> Result<Option<R>, Corruption>,
    ) -> Result<R, Blocked> {
        let corrupt = |c: Corruption| Blocked::Corrupt(c.into());
        let start = Instant::now();
        let mut spins: u32 = 0;
        let control = self.seg.control();
        let cell = ring::sleeps_on(&self.seg, self.role);
        let notifier = &self.seg.notifier;
        let spins_only = notifier.spins();
        let mut last_check = start;
        loop {
            if let Some(r) = poll().map_err(corrupt)? {
                return Ok(r);
            }
            if self.stops_when_peer_gone() && self.peers_fast() == Peers::Gone {
                // One last look: anything committed before the peer left is visible now.
                return poll().map_err(corrupt)?.ok_or(Blocked::Disconnected);
            }
            spins = spins.wrapping_add(1);
            // Between clock reads, spin in batches of 64 polls; with `spin(ZERO)` there is
            // no spin phase at all.
            if !self.spin.is_zero() && spins % 64 != 0 {
                crate::sync::spin_hint();
                continue;
            }
            let now = Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                return Err(Blocked::Timeout);
            }
            // While spinning (a long `Options::spin`, or a strategy that never sleeps), check
            // every slice that the peer lives: a killed peer never changes the shared state
            // that the check above reads. (A sleeper checks between its sleeps, below.)
            if now.duration_since(last_check) >= LIVENESS_SLICE {
                last_check = now;
                if self.stops_when_peer_gone()
                    && ring::peers(&self.seg, ring::other(self.role), true) == Peers::Gone
                {
                    return poll().map_err(corrupt)?.ok_or(Blocked::Disconnected);
                }
            }
            if now.duration_since(start) < self.spin {
                crate::sync::spin_hint();
                continue;
            }
            if spins_only {
                // Never sleeps: yield.
                std::thread::yield_now();
                continue;
            }
            // Slow path: announce, re-check, sleep.
            notifier.prepare(&self.seg.seg);
            let ticket = wait::prepare(control, cell, self.index);
            let ready = poll();
            if !matches!(ready, Ok(None)) {
                wait::finish(cell, self.index);
                return ready.map_err(corrupt)?.ok_or(Blocked::Disconnected);
            }
            if ring::peers(&self.seg, ring::other(self.role), true) == Peers::Gone
                && self.stops_when_peer_gone()
            {
                wait::finish(cell, self.index);
                return poll().map_err(corrupt)?.ok_or(Blocked::Disconnected);
            }
            let mut slice = LIVENESS_SLICE;
            if let Some(d) = deadline {
                slice = slice.min(d.saturating_duration_since(Instant::now()));
            }
            notifier.sleep(&self.seg.seg, cell, ticket, slice);
            wait::finish(cell, self.index);
        }
    }
}

impl Drop for End {
    fn drop(&mut self) {
        ring::detach(&self.seg, self.role, self.index);
        tracing::debug!(channel = %self.name, role = self.role.name(), index = self.index, "detached");
    }
}

/// Turns an optional timeout into a deadline (`None`: wait forever; an overflowing timeout
/// is treated as forever).
pub(crate) fn deadline_after(timeout: Duration) -> Option<Instant> {
    Instant::now().checked_add(timeout)
}
