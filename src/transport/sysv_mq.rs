//! System V message queues.
//!
//! The key is the user's, or derived from the channel name: FNV-1a (64-bit) of
//! `<prefix><name>`, folded to 31 bits (`(h ^ h >> 32) & 0x7fff_ffff`), 1 if that is 0.
//! Each message is one frame, the encoded message itself, with the message type the
//! sender chose ([`Sender::send_with_priority`](crate::Sender::send_with_priority); 1 by
//! default); the receiver takes the first message of any type, or selects with
//! [`Options::message_type`](crate::Options::message_type) (msgrcv's rules). The type
//! check and presence live in the presence file `<prefix><name>.sysv` (or
//! `shmbus.sysv-<key>.sysv` for a user key).
//!
//! System V queues have no timed calls: a blocked call polls with `IPC_NOWAIT`, first
//! without sleeping for the channel's spin time ([`Options::spin`](crate::Options::spin),
//! 20 µs by default: a peer that answers within it is seen at once), then sleeping from
//! 20 µs up to 1 ms between tries, so waking up after that costs up to a millisecond.
//! Limits: `kernel.msgmax` bytes per message (8192), `kernel.msgmnb` bytes per queue
//! (16384); the channel's capacity option does not apply. The last handle removes the
//! queue (`IPC_RMID`); a queue that no handle uses (crashed processes) is kept with its
//! messages by the next handle that attaches if it carries the same type, and replaced
//! otherwise (see `presence`).

use std::time::{Duration, Instant};

use super::presence::{self, Presence, Setup};
use super::{Link, LinkError, LinkOpenError, TransportKind, Wait, Wire};
use crate::segment::Role;
use crate::sys::msg::{self, MsgBuf, MsgQueue};
use crate::sys::perm::Access;

/// The key for a channel name.
pub(crate) fn key_for(object: &str) -> i32 {
    let h =
        crate::message::fingerprint::bytes(crate::message::fingerprint::SEED, object.as_bytes());
    let k = ((h ^ (h >> 32)) & 0x7fff_ffff) as i32;
    if k == 0 {
        1
    } else {
        k
    }
}

/// The presence file of the queue for `object` or the user's `key`.
pub(crate) fn presence_path(object: &str, key: Option<i32>) -> std::path::PathBuf {
    presence::dir().join(match key {
        Some(k) => format!("shmbus.sysv-{k}.sysv"),
        None => format!("{object}.sysv"),
    })
}

/// One end of a System V message-queue channel.
pub(crate) struct SysvMq {
    q: MsgQueue,
    buf: MsgBuf,
    msgmax: usize,
    recv_type: i64,
    /// Type of the last received message.
    pub(crate) last_type: i64,
    presence: Presence,
    /// How long a blocked call polls without sleeping.
    spin: Duration,
}

impl SysvMq {
    // The channel's options, unpacked for this transport.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn open(
        object: &str,
        key: Option<i32>,
        wire: &Wire,
        role: Role,
        create: bool,
        access: &Access,
        recv_type: i64,
        spin: Duration,
    ) -> Result<Self, LinkOpenError> {
        let msgmax = msg::msgmax();
        if wire.max_frame > msgmax && wire.encoding == crate::Encoding::ZeroCopy as u32 {
            return Err(LinkOpenError::Invalid(format!(
                "the message type is {} bytes; System V queues carry at most {msgmax} (kernel.msgmax)",
                wire.max_frame
            )));
        }
        if key == Some(0) {
            return Err(LinkOpenError::Invalid("key 0 is IPC_PRIVATE".into()));
        }
        let (key, path) = (
            key.unwrap_or_else(|| key_for(object)),
            presence_path(object, key),
        );
        let (mut presence, setup) = Presence::attach(path, wire, role, create, access)?;
        if setup == Setup::Fresh {
            if let Ok((old, _)) = MsgQueue::get(key, false, 0) {
                let _ = old.remove(); // left by crashed processes, of another type
            }
        }
        let (q, made) = MsgQueue::get(key, create || setup != Setup::Joined, access.mode).map_err(
            |e| match e.kind() {
                std::io::ErrorKind::NotFound => {
                    LinkOpenError::NotFound(format!("System V queue {key:#x}"))
                }
                _ => LinkOpenError::Io("msgget", e),
            },
        )?;
        let (uid, gid) = q.owner().map_err(|e| LinkOpenError::Io("msgctl", e))?;
        access
            .check_ids(uid, gid)
            .map_err(|e| LinkOpenError::perm(format_args!("System V queue {key:#x}"), e))?;
        if let (true, Some(g)) = (made, access.group) {
            q.set_group(g)
                .map_err(|e| LinkOpenError::Io("msgctl(IPC_SET)", e))?;
        }
        presence.on_last = Some(Box::new(move || {
            let _ = q.remove();
        }));
        presence.share();
        Ok(SysvMq {
            q,
            buf: MsgBuf::new(msgmax),
            msgmax,
            recv_type,
            last_type: 0,
            presence,
            spin,
        })
    }

    pub(crate) fn max_frame(&self) -> usize {
        self.msgmax
    }
}

/// Between polls: nothing during the spin phase, then a growing sleep.
struct Backoff {
    step: Duration,
    /// End of the spin phase (`None`: over, or not started).
    spin_until: Option<Instant>,
}

impl Backoff {
    fn new(spin: Duration) -> Self {
        Backoff {
            step: Duration::from_micros(20),
            spin_until: (!spin.is_zero()).then(|| Instant::now() + spin),
        }
    }

    fn sleep(&mut self, wait: Wait) -> Result<(), LinkError> {
        if let Some(until) = self.spin_until {
            if wait.slice(Duration::ZERO).is_none() {
                return Err(wait.expired());
            }
            if Instant::now() < until {
                std::hint::spin_loop();
                return Ok(());
            }
            self.spin_until = None;
        }
        let Some(slice) = wait.slice(self.step) else {
            return Err(wait.expired());
        };
        std::thread::sleep(slice);
        self.step = (self.step * 2).min(Duration::from_millis(1));
        Ok(())
    }
}

impl Link for SysvMq {
    fn send_frame(&mut self, bytes: &[u8], tag: u32, wait: Wait) -> Result<(), LinkError> {
        if bytes.len() > self.msgmax {
            return Err(LinkError::TooLarge { max: self.msgmax });
        }
        let mut backoff = Backoff::new(self.spin);
        let mut checked = Instant::now();
        if self.presence.peer_gone() {
            return Err(LinkError::Disconnected);
        }
        loop {
            if self
                .q
                .try_send(&mut self.buf, (tag as i64).max(1), bytes)
                .map_err(|e| LinkError::io("msgsnd", e))?
            {
                return Ok(());
            }
            if checked.elapsed() >= super::LIVENESS_SLICE {
                checked = Instant::now();
                if self.presence.peer_gone() {
                    return Err(LinkError::Disconnected);
                }
            }
            backoff.sleep(wait)?;
        }
    }

    fn recv_frame(&mut self, out: &mut Vec<u8>, wait: Wait) -> Result<(), LinkError> {
        let mut backoff = Backoff::new(self.spin);
        let mut checked: Option<Instant> = None;
        loop {
            let gone = checked.is_none_or(|t| t.elapsed() >= super::LIVENESS_SLICE) && {
                checked = Some(Instant::now());
                self.presence.peer_gone()
            };
            if let Some(t) = self
                .q
                .try_recv(&mut self.buf, self.recv_type, out)
                .map_err(|e| LinkError::io("msgrcv", e))?
            {
                self.last_type = t;
                return Ok(());
            }
            if gone {
                return Err(LinkError::Disconnected);
            }
            backoff.sleep(wait)?;
        }
    }

    fn is_connected(&mut self) -> bool {
        self.presence.peer_attached()
    }

    fn kind(&self) -> TransportKind {
        TransportKind::SysvQueue
    }
}
