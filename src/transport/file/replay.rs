//! `record` and `replay`: copying between a live channel and a file log.

use std::path::Path;
use std::time::{Duration, Instant};

use super::{LogOptions, LogReader, Start};
use crate::channel::link::open_error;
use crate::error::{OpenError, RecvError};
use crate::message::{DecodeError, Message};
use crate::transport::{LinkError, Wait, Wire};
use crate::{Receiver, Sender};

/// How [`replay`] paces the messages it sends.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
#[non_exhaustive]
pub enum Pace {
    /// As fast as the destination takes them (default).
    #[default]
    AsFast,
    /// With the gaps between the records' send times, as recorded.
    Recorded,
    /// Recorded gaps divided by this factor (2.0: twice as fast).
    Scaled(f64),
}

/// Why [`record`] or [`replay`] stopped early.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplayError {
    /// The log could not be opened.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// Receiving from the source channel failed.
    #[error("receiving failed: {0}")]
    Recv(#[from] RecvError),
    /// Sending to the destination failed (its message is dropped).
    #[error("sending failed: {0}")]
    Send(String),
    /// A record in the log does not decode as the type.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The log is damaged.
    #[error("the log is damaged: {0}")]
    Corrupt(String),
}

/// Copies messages from `from` (typically a shared-memory channel) to `to` (typically a
/// sender on [`Transport::File`](crate::Transport::File), which stamps each record with its
/// time) until `from`'s senders are gone or `limit` messages were copied. Returns how many
/// were copied. A broadcast subscriber that lags skips what it missed and goes on.
///
/// # Errors
///
/// [`ReplayError::Recv`] or [`ReplayError::Send`] if either channel fails.
///
/// # Examples
///
/// ```
/// #[derive(shmbus::Message, Clone, Copy)]
/// #[repr(C)]
/// struct N { v: u64 }
///
/// # let id = std::process::id();
/// let dir = std::env::temp_dir().join(format!("doc-record-{id}"));
/// let live = shmbus::Sender::<N>::open_or_create(&format!("doc-rec-{id}"), &Default::default())?;
/// let tap = shmbus::Receiver::<N>::open_or_create(&format!("doc-rec-{id}"), &Default::default())?;
/// live.send(N { v: 7 })?;
/// drop(live);
/// let mut o = shmbus::Options::new();
/// o.transport(shmbus::Transport::File { dir: dir.clone() });
/// let log = shmbus::Sender::<N>::open_or_create("rec", &o)?;
/// assert_eq!(shmbus::record(&tap, &log, None)?, 1);
/// # drop(log); std::fs::remove_dir_all(&dir)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn record<T: Message>(
    from: &Receiver<T>,
    to: &Sender<T>,
    limit: Option<u64>,
) -> Result<u64, ReplayError> {
    let mut n = 0u64;
    while limit.is_none_or(|l| n < l) {
        match from.recv() {
            Ok(m) => to
                .send(m.into_inner())
                .map_err(|e| ReplayError::Send(e.to_string()))?,
            Err(RecvError::Lagged(_)) => continue,
            Err(RecvError::Disconnected) => break,
            Err(e) => return Err(e.into()),
        }
        n += 1;
    }
    Ok(n)
}

/// Sends the records of the file log in `dir`, from `start` to its current end, to `to`,
/// paced as `pace` says. Returns how many were sent. The log is only read (no cursor).
///
/// # Errors
///
/// [`ReplayError::Open`] if the log is missing or of another type, [`ReplayError::Send`] if
/// `to` fails, [`ReplayError::Decode`]/[`ReplayError::Corrupt`] for damaged records.
pub fn replay<T: Message>(
    dir: &Path,
    start: Start,
    to: &Sender<T>,
    pace: Pace,
) -> Result<u64, ReplayError> {
    let info = T::INFO;
    let wire = Wire {
        name: info.name,
        encoding: info.encoding as u32,
        fingerprint: info.fingerprint,
        max_frame: 0,
    };
    let opts = LogOptions {
        start,
        ..LogOptions::default()
    };
    let mut r = LogReader::open(
        dir,
        Some(&wire),
        false,
        &crate::sys::perm::Access::default(),
        &opts,
    )
    .map_err(|e| open_error::<T>(&dir.display().to_string(), e))?;
    let scale = match pace {
        Pace::AsFast => None,
        Pace::Recorded => Some(1.0),
        Pace::Scaled(f) if f > 0.0 => Some(f),
        Pace::Scaled(_) => None,
    };
    let mut buf = Vec::new();
    let mut origin: Option<(u64, Instant)> = None;
    let mut n = 0u64;
    loop {
        let t = match r.next(&mut buf, Wait::No) {
            Ok(t) => t,
            Err(LinkError::WouldBlock | LinkError::Disconnected) => break,
            Err(e) => return Err(ReplayError::Corrupt(e.to_string())),
        };
        if let Some(scale) = scale {
            let (t0, s0) = *origin.get_or_insert((t, Instant::now()));
            let due = s0 + Duration::from_secs_f64(t.saturating_sub(t0) as f64 / 1e9 / scale);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
        }
        let msg = T::__decode(&buf)?;
        to.send(msg).map_err(|e| ReplayError::Send(e.to_string()))?;
        n += 1;
    }
    Ok(n)
}
