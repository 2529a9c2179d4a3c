//! Observing channels from outside: what the `shmbus` command-line tool is built on.
//!
//! An [`Observer`] maps a channel's segment **read-only** and takes no lock: it is not a
//! participant, it does not keep the channel alive or remove it, and it cannot take
//! messages away from receivers. Its header is validated exactly like a participant's.
//!
//! ```no_run
//! for entry in shmbus::inspect::list(shmbus::DEFAULT_PREFIX)? {
//!     match entry {
//!         Ok(info) => println!("{} {} depth {}", info.name, info.type_name, info.depth),
//!         Err(bad) => println!("{}: {}", bad.name, bad.error),
//!     }
//! }
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! # Liveness
//!
//! A participant is **alive** while it holds its entry's lock (the kernel drops the locks
//! of a process that dies, SIGKILL included). A channel is **stale** when no process holds
//! its lifetime lock: every process that used it is gone. [`remove_stale`] removes such a
//! channel and never a live one.
//!
//! # Reading messages without taking them
//!
//! [`Observer::snapshot`] copies the message committed at a position and then re-reads the
//! slot's sequence word; if it changed meanwhile (the message was released and the slot
//! reused) the copy is discarded. It is a racy snapshot: in queue mode a fast receiver may
//! release a message before the observer copies it, and the observer then never sees it
//! ([`Observed::Gone`]). Receivers are never affected.

use std::io;

mod procfs;
mod scan;

pub use crate::channel::raw::{RawMessage, RawReceiver, RawRecvError, RawSendError, RawSender};
pub use scan::{clean_stale, scan, Endpoint, Peer, Removed, Scan, Transport};

use crate::message::Encoding;
use crate::name;
use crate::schema::SchemaDesc;
use crate::segment::layout::{mode, overflow, state};
use crate::segment::posix;
use crate::segment::view::{SegmentView, Snapshot};
use crate::segment::Role;
use crate::segment::SegmentError;
use crate::sync::Ordering;

/// How a channel delivers messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Each message goes to one receiver.
    Queue,
    /// Every subscriber gets every message.
    Broadcast,
}

impl Mode {
    /// `"queue"` or `"broadcast"`.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Queue => "queue",
            Mode::Broadcast => "broadcast",
        }
    }
}

/// The state of a participant entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParticipantState {
    /// Attached (see [`ParticipantInfo::alive`] for whether its process still runs).
    Active,
    /// Detached cleanly.
    Left,
    /// Found dead by a peer.
    Dead,
}

/// Statistics of one participant entry (cumulative over its owners).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Messages committed (senders).
    pub sent: u64,
    /// Messages received (receivers).
    pub received: u64,
    /// Times a send found the ring full (senders).
    pub full_waits: u64,
    /// Futex wake-ups issued to the other side.
    pub wakeups: u64,
    /// Messages overwritten before this subscriber read them (broadcast `DropOldest`).
    pub lagged: u64,
}

impl std::ops::AddAssign for Counters {
    fn add_assign(&mut self, o: Counters) {
        self.sent += o.sent;
        self.received += o.received;
        self.full_waits += o.full_waits;
        self.wakeups += o.wakeups;
        self.lagged += o.lagged;
    }
}

/// One sender or receiver entry that has been used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParticipantInfo {
    /// Entry index.
    pub index: u32,
    /// The pid recorded by its last owner.
    pub pid: u32,
    /// The entry's state.
    pub state: ParticipantState,
    /// Whether its owner holds the entry right now (active and its process alive).
    pub alive: bool,
    /// Its statistics.
    pub counters: Counters,
}

/// A snapshot of a channel's description and state.
#[derive(Debug, Clone)]
pub struct ChannelInfo {
    /// The channel name (without prefix).
    pub name: String,
    /// The shared-memory object name (with prefix), or for a System V segment the path of
    /// its companion lock file.
    pub object: String,
    /// Where the channel lives: `"posix-shm"` or `"sysv-shm"`.
    pub transport: &'static str,
    /// Delivery mode.
    pub mode: Mode,
    /// `"block"` or `"drop-oldest"`.
    pub overflow: &'static str,
    /// Broadcast history offered to new subscribers.
    pub history: u32,
    /// The message type's name.
    pub type_name: String,
    /// The message encoding (`None`: unknown to this build).
    pub encoding: Option<Encoding>,
    /// The type fingerprint.
    pub fingerprint: u64,
    /// Slots.
    pub capacity: u64,
    /// Bytes per slot (header and payload).
    pub slot_size: u64,
    /// Largest message in bytes.
    pub max_message: u32,
    /// Size of the segment in bytes.
    pub total_size: u64,
    /// Next position a sender claims.
    pub tail: u64,
    /// Queue: next position a receiver takes. Broadcast: the smallest active subscriber
    /// cursor (or `tail` without subscribers).
    pub head: u64,
    /// Messages waiting: `tail - head`.
    pub depth: u64,
    /// Sender entries that were ever used.
    pub senders: Vec<ParticipantInfo>,
    /// Receiver entries that were ever used.
    pub receivers: Vec<ParticipantInfo>,
    /// No process holds the channel: everyone who used it is gone.
    pub stale: bool,
    /// Pid of the creator.
    pub creator_pid: u32,
    /// Creation time, nanoseconds since the Unix epoch.
    pub created_unix_ns: u64,
    /// The message type's recorded schema, if the creator stored one and it is valid.
    pub schema: Option<SchemaDesc>,
}

impl ChannelInfo {
    /// All senders' counters added up.
    pub fn sender_totals(&self) -> Counters {
        let mut t = Counters::default();
        self.senders.iter().for_each(|p| t += p.counters);
        t
    }

    /// All receivers' counters added up.
    pub fn receiver_totals(&self) -> Counters {
        let mut t = Counters::default();
        self.receivers.iter().for_each(|p| t += p.counters);
        t
    }
}

/// Why a channel could not be observed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InspectError {
    /// No such channel.
    #[error("no channel {name:?} (no /dev/shm/{object}); `shmbus list` shows the channels")]
    NotFound {
        /// The channel name.
        name: String,
        /// The object looked for.
        object: String,
    },
    /// The name is not acceptable.
    #[error("invalid channel name {name:?}: {reason}")]
    InvalidName {
        /// The name.
        name: String,
        /// Why.
        reason: String,
    },
    /// Not a valid segment of this layout version.
    #[error("channel {name:?} is not readable by this build: {reason}")]
    Invalid {
        /// The channel name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// A system call failed.
    #[error("channel {name:?}: {op} failed: {source}")]
    Io {
        /// The channel name.
        name: String,
        /// The operation.
        op: &'static str,
        /// The error.
        source: io::Error,
    },
}

/// A prefixed object in `/dev/shm` that could not be observed.
#[derive(Debug)]
pub struct Unreadable {
    /// The channel name (object name without prefix).
    pub name: String,
    /// Why.
    pub error: InspectError,
}

fn map_err(name: &str, object: &str, e: SegmentError) -> InspectError {
    match e {
        SegmentError::NotFound => InspectError::NotFound {
            name: name.to_owned(),
            object: object.to_owned(),
        },
        SegmentError::Io(op, source) => InspectError::Io {
            name: name.to_owned(),
            op,
            source,
        },
        SegmentError::Corrupt(reason) | SegmentError::ModeMismatch(reason) => {
            InspectError::Invalid {
                name: name.to_owned(),
                reason,
            }
        }
        other => InspectError::Invalid {
            name: name.to_owned(),
            reason: format!("{other:?}"),
        },
    }
}

fn object_of(prefix: &str, name: &str) -> Result<String, InspectError> {
    name::object_name(prefix, name).map_err(|e| InspectError::InvalidName {
        name: name.to_owned(),
        reason: e.to_string(),
    })
}

/// The names (without prefix) of the objects in `/dev/shm` that start with `prefix`, sorted.
///
/// # Errors
///
/// If `/dev/shm` cannot be read.
pub fn names(prefix: &str) -> io::Result<Vec<String>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(crate::sys::shm::SHM_DIR)? {
        let entry = entry?;
        if let Some(n) = entry.file_name().to_str() {
            if let Some(rest) = n.strip_prefix(prefix) {
                if !rest.is_empty() {
                    out.push(rest.to_owned());
                }
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Every channel with `prefix` in `/dev/shm`: a description, or why it could not be read.
///
/// # Errors
///
/// If `/dev/shm` cannot be read.
pub fn list(prefix: &str) -> io::Result<Vec<Result<ChannelInfo, Unreadable>>> {
    Ok(names(prefix)?
        .into_iter()
        .filter_map(|name| match Observer::open(prefix, &name) {
            Ok(o) => Some(Ok(o.info())),
            // Removed between listing and opening.
            Err(InspectError::NotFound { .. }) => None,
            Err(error) => Some(Err(Unreadable { name, error })),
        })
        .collect())
}

/// Removes the channel if no process holds it (every process that used it is gone).
/// Returns whether it was removed; a channel in use is left alone. The check and the
/// removal are atomic with respect to processes opening the channel.
///
/// # Errors
///
/// If the object cannot be opened or locked.
pub fn remove_stale(prefix: &str, name: &str) -> Result<bool, InspectError> {
    let object = object_of(prefix, name)?;
    posix::remove_if_unused(&object).map_err(|e| map_err(name, &object, e))
}

/// A read-only view of one channel.
pub struct Observer {
    name: String,
    object: String,
    transport: &'static str,
    view: SegmentView,
}

/// The name `list` shows for the System V segment with `key` (the channel name cannot be
/// recovered from the key).
pub(crate) fn sysv_shm_name(key: i32) -> String {
    format!("sysv-shm-{key:08x}")
}

/// The key of a System V segment named as [`sysv_shm_name`] shows it, or else derived from
/// the channel name as the library derives it.
fn sysv_key_of(name: &str, object: &str) -> i32 {
    name.strip_prefix("sysv-shm-")
        .filter(|h| h.len() == 8)
        .and_then(|h| i32::from_str_radix(h, 16).ok())
        .filter(|k| *k > 0)
        .unwrap_or_else(|| crate::transport::sysv_mq::key_for(object))
}

/// What [`Observer::snapshot`] found at a position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observed {
    /// The message's bytes (encoded as the channel's encoding says).
    Message(Vec<u8>),
    /// A position without a message (a loan that was dropped).
    Skipped,
    /// Not committed yet.
    NotYet,
    /// Released or overwritten before it could be copied.
    Gone,
}

impl Observer {
    /// Opens channel `name` read-only: the POSIX object `/dev/shm/<prefix><name>` if there
    /// is one, otherwise the System V segment of that name (its key derived from the name,
    /// or given as `sysv-shm-<key in 8 hex digits>`, the name [`scan`] shows).
    ///
    /// # Errors
    ///
    /// [`InspectError`]: no such channel, an invalid name, or a segment this build cannot
    /// read (another layout version, corrupt, still being created).
    pub fn open(prefix: &str, name: &str) -> Result<Observer, InspectError> {
        let object = object_of(prefix, name)?;
        match SegmentView::open(&object) {
            Ok(view) => Ok(Observer {
                name: name.to_owned(),
                object,
                transport: "posix-shm",
                view,
            }),
            Err(SegmentError::NotFound) => {
                let key = sysv_key_of(name, &object);
                let lock = crate::segment::sysv::lock_path(prefix, key);
                match SegmentView::open_sysv(&lock, key) {
                    Ok(view) => Ok(Observer {
                        name: name.to_owned(),
                        object: lock.display().to_string(),
                        transport: "sysv-shm",
                        view,
                    }),
                    Err(e) => Err(map_err(name, &object, e)),
                }
            }
            Err(e) => Err(map_err(name, &object, e)),
        }
    }

    /// Opens the System V segment with `key` read-only (its lock file named after `prefix`).
    ///
    /// # Errors
    ///
    /// As [`open`](Self::open).
    pub fn open_sysv(prefix: &str, key: i32) -> Result<Observer, InspectError> {
        let name = sysv_shm_name(key);
        let lock = crate::segment::sysv::lock_path(prefix, key);
        let object = lock.display().to_string();
        let view = SegmentView::open_sysv(&lock, key).map_err(|e| map_err(&name, &object, e))?;
        Ok(Observer {
            name,
            object,
            transport: "sysv-shm",
            view,
        })
    }

    /// Next position a sender will claim.
    pub fn tail(&self) -> u64 {
        self.view.control().tail.0.load(Ordering::Acquire)
    }

    /// Queue: next position a receiver will take. Broadcast: the smallest cursor of the
    /// active subscribers, or the tail if there are none.
    pub fn head(&self) -> u64 {
        if self.view.header().mode == mode::BROADCAST {
            let mut min = u64::MAX;
            for i in 0..self.view.geometry().max_receivers {
                let p = self.view.participant(Role::Receiver, i);
                if p.state.load(Ordering::Acquire) & state::MASK == state::ACTIVE {
                    min = min.min(p.cursor.load(Ordering::Acquire));
                }
            }
            if min == u64::MAX {
                self.tail()
            } else {
                min
            }
        } else {
            self.view.control().head.0.load(Ordering::Acquire)
        }
    }

    /// The message description recorded in the header, to attach a
    /// [`RawSender`] with. The name is leaked (once per call).
    pub fn message_info(&self) -> crate::MessageInfo {
        let h = self.view.header();
        crate::MessageInfo {
            name: Box::leak(h.type_name().into_boxed_str()),
            encoding: Encoding::from_u32(h.encoding).unwrap_or(Encoding::Postcard),
            size: h.msg_size as usize,
            align: h.msg_align as usize,
            fingerprint: h.fingerprint,
            schema: None,
        }
    }

    /// Number of slots.
    pub fn capacity(&self) -> u64 {
        self.view.geometry().capacity
    }

    /// Copies the message at position `pos` without taking it (see the module docs).
    pub fn snapshot(&self, pos: u64) -> Observed {
        match self.view.snapshot(pos) {
            Snapshot::Message(b) => Observed::Message(b),
            Snapshot::Skipped => Observed::Skipped,
            Snapshot::NotYet => Observed::NotYet,
            Snapshot::Gone => Observed::Gone,
        }
    }

    /// Whether no process holds the channel any more.
    pub fn is_stale(&self) -> bool {
        self.view.stale().unwrap_or(false)
    }

    fn participants(&self, role: Role) -> Vec<ParticipantInfo> {
        let g = self.view.geometry();
        let max = match role {
            Role::Sender => g.max_senders,
            Role::Receiver => g.max_receivers,
        };
        (0..max)
            .filter_map(|index| {
                let p = self.view.participant(role, index);
                let s = p.state.load(Ordering::Acquire) & state::MASK;
                let state = match s {
                    state::ACTIVE => ParticipantState::Active,
                    state::LEFT => ParticipantState::Left,
                    state::DEAD => ParticipantState::Dead,
                    _ => return None,
                };
                let c = self.view.counters(role, index);
                Some(ParticipantInfo {
                    index,
                    pid: p.pid.load(Ordering::Relaxed),
                    state,
                    alive: state == ParticipantState::Active && self.view.alive(role, index),
                    counters: Counters {
                        sent: c.sent.load(Ordering::Relaxed),
                        received: c.received.load(Ordering::Relaxed),
                        full_waits: c.full_waits.load(Ordering::Relaxed),
                        wakeups: c.wakeups.load(Ordering::Relaxed),
                        lagged: c.lagged.load(Ordering::Relaxed),
                    },
                })
            })
            .collect()
    }

    /// A description of the channel and its current state.
    pub fn info(&self) -> ChannelInfo {
        let h = self.view.header();
        let g = self.view.geometry();
        let tail = self.tail();
        let head = self.head();
        let schema_bytes = self.view.schema_bytes();
        ChannelInfo {
            name: self.name.clone(),
            object: self.object.clone(),
            transport: self.transport,
            mode: if h.mode == mode::BROADCAST {
                Mode::Broadcast
            } else {
                Mode::Queue
            },
            overflow: if h.overflow == overflow::DROP_OLDEST {
                "drop-oldest"
            } else {
                "block"
            },
            history: h.history,
            type_name: h.type_name(),
            encoding: Encoding::from_u32(h.encoding),
            fingerprint: h.fingerprint,
            capacity: g.capacity,
            slot_size: g.stride,
            max_message: g.max_message,
            total_size: g.total_size,
            tail,
            head,
            depth: tail.saturating_sub(head),
            senders: self.participants(Role::Sender),
            receivers: self.participants(Role::Receiver),
            stale: self.is_stale(),
            creator_pid: h.creator_pid,
            created_unix_ns: h.created_unix_ns,
            schema: if schema_bytes.is_empty() {
                None
            } else {
                SchemaDesc::decode(&schema_bytes).ok()
            },
        }
    }
}
