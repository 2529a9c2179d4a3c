//! Every channel that can be found on the machine, over every transport.
//!
//! What is enumerated, and from where:
//!
//! | transport | found at | type | depth | peers |
//! |---|---|---|---|---|
//! | POSIX shared memory | `/dev/shm/<prefix>*` | recorded | ring | entry locks, pids in the segment |
//! | System V shared memory | lock files `<dir>/<prefix>sysv-shm-<key>.lock` | recorded | ring | entry locks, pids in the segment |
//! | POSIX message queue | presence files `<dir>/<prefix><name>.mq` | presence file | `mq_getattr` | presence locks |
//! | System V message queue | presence files `<dir>/<prefix><name>.sysv`, `<dir>/shmbus.sysv-<key>.sysv` | presence file | `msgctl` | presence locks |
//! | FIFO | FIFOs named `<dir>/<prefix>*`, and [`Scan::paths`] | unknown | unknown | who has it open |
//! | Unix socket | sockets named `<dir>/<prefix>*`, abstract names `<prefix>*`, and [`Scan::paths`] | unknown | unknown | listener, connections |
//! | file log | directories `<dir>/<prefix>*` holding `log.ctl`, and [`Scan::paths`] | control file | records kept | writer and reader locks |
//!
//! `<dir>` is `$XDG_RUNTIME_DIR` if set, otherwise `/tmp` (where the library puts lock and
//! presence files). FIFOs, sockets and file logs live wherever their creator put them and
//! no registry records them, so only those named after the prefix in `<dir>`, or given in
//! [`Scan::paths`], are found; anonymous pipes cannot be found at all.
//!
//! Pids: a ring segment records each participant's pid; for the other transports the pids
//! come from `/proc/<pid>/fd` and the locks listed in `/proc/<pid>/fdinfo` (see the
//! `procfs` module), so processes of other users are missing unless run as root.

use std::fs::Metadata;
use std::io;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use super::procfs::{self, Holder, Procs};
use super::{ChannelInfo, InspectError, Mode, Observer, ParticipantInfo, ParticipantState};
use crate::message::Encoding;
use crate::transport::{file, presence, sysv_mq};

/// The kind of an [`Endpoint`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Transport {
    /// The ring in POSIX shared memory.
    PosixShm,
    /// The ring in System V shared memory.
    SysvShm,
    /// A POSIX message queue.
    PosixQueue,
    /// A System V message queue.
    SysvQueue,
    /// A named pipe.
    Fifo,
    /// A Unix socket at a path.
    UnixSocket,
    /// A Unix socket with an abstract name.
    AbstractSocket,
    /// A persistent file log.
    FileLog,
}

impl Transport {
    /// A short name: `posix-shm`, `sysv-shm`, `posix-mq`, `sysv-mq`, `fifo`, `unix-socket`,
    /// `abstract-socket`, `file-log`.
    pub fn name(self) -> &'static str {
        match self {
            Transport::PosixShm => "posix-shm",
            Transport::SysvShm => "sysv-shm",
            Transport::PosixQueue => "posix-mq",
            Transport::SysvQueue => "sysv-mq",
            Transport::Fifo => "fifo",
            Transport::UnixSocket => "unix-socket",
            Transport::AbstractSocket => "abstract-socket",
            Transport::FileLog => "file-log",
        }
    }
}

/// A sender or receiver of an [`Endpoint`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    /// Its process, where known.
    pub pid: Option<u32>,
    /// Whether it is attached now (false: it was attached and died without detaching).
    pub alive: bool,
}

/// One channel found by [`scan`].
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// The channel name (without prefix); a path for FIFOs, sockets and logs; `@name` for
    /// an abstract socket; `sysv-shm-<key>` for a System V segment.
    pub name: String,
    /// Its transport.
    pub transport: Transport,
    /// What was found: the object, lock, presence or control file, or the path.
    pub location: String,
    /// How it delivers, where known.
    pub mode: Option<Mode>,
    /// The message type's name, where recorded.
    pub type_name: Option<String>,
    /// The message encoding, where recorded.
    pub encoding: Option<Encoding>,
    /// Messages it holds at most, where fixed.
    pub capacity: Option<u64>,
    /// Messages waiting (a file log: records kept), where known.
    pub depth: Option<u64>,
    /// Its senders (attached, or dead while attached).
    pub senders: Vec<Peer>,
    /// Its receivers.
    pub receivers: Vec<Peer>,
    /// Nothing holds it any more: left behind by processes that are gone, removable with
    /// [`clean_stale`].
    pub stale: bool,
    /// The full description of a ring channel.
    pub channel: Option<ChannelInfo>,
    /// Why it could not be read completely.
    pub error: Option<String>,
}

impl Endpoint {
    fn new(name: String, transport: Transport, location: String) -> Endpoint {
        Endpoint {
            name,
            transport,
            location,
            mode: None,
            type_name: None,
            encoding: None,
            capacity: None,
            depth: None,
            senders: Vec::new(),
            receivers: Vec::new(),
            stale: false,
            channel: None,
            error: None,
        }
    }
}

/// What [`scan`] looks at.
#[derive(Debug, Clone)]
pub struct Scan {
    /// The object-name prefix ([`DEFAULT_PREFIX`](crate::DEFAULT_PREFIX) by default).
    pub prefix: String,
    /// FIFOs, socket paths and file-log directories to look at besides those found by name.
    pub paths: Vec<PathBuf>,
}

impl Scan {
    /// Looks for channels named with `prefix`.
    pub fn new(prefix: &str) -> Scan {
        Scan {
            prefix: prefix.to_owned(),
            paths: Vec::new(),
        }
    }
}

fn peers(ps: &[ParticipantInfo]) -> Vec<Peer> {
    ps.iter()
        .filter(|p| p.state == ParticipantState::Active)
        .map(|p| Peer {
            pid: Some(p.pid),
            alive: p.alive,
        })
        .collect()
}

fn ring(transport: Transport, location: String, r: Result<Observer, InspectError>) -> Endpoint {
    match r {
        Ok(o) => {
            let i = o.info();
            let mut e = Endpoint::new(i.name.clone(), transport, location);
            e.mode = Some(i.mode);
            e.type_name = Some(i.type_name.clone());
            e.encoding = i.encoding;
            e.capacity = Some(i.capacity);
            e.depth = Some(i.depth);
            e.senders = peers(&i.senders);
            e.receivers = peers(&i.receivers);
            e.stale = i.stale;
            e.channel = Some(i);
            e
        }
        Err(err) => {
            let name = match &err {
                InspectError::NotFound { name, .. }
                | InspectError::InvalidName { name, .. }
                | InspectError::Invalid { name, .. }
                | InspectError::Io { name, .. } => name.clone(),
            };
            let mut e = Endpoint::new(name, transport, location);
            e.error = Some(err.to_string());
            e
        }
    }
}

/// The holders of `meta` that lock byte `b`, as peers (alive: they hold it now).
fn lockers(holders: &[Holder], b: u64) -> Vec<Peer> {
    holders
        .iter()
        .filter(|h| h.locks_byte(b))
        .map(|h| Peer {
            pid: Some(h.pid),
            alive: true,
        })
        .collect()
}

/// One peer per role that the locks say is attached, with its pid where `/proc` showed it;
/// one dead peer (pid unknown) if the role was seen and nobody holds it now.
fn role_peers(holders: &[Holder], byte: u64, attached: bool, seen: bool) -> Vec<Peer> {
    let found = lockers(holders, byte);
    if found.is_empty() && (attached || seen) {
        vec![Peer {
            pid: None,
            alive: attached,
        }]
    } else {
        found
    }
}

fn queue(
    procs: &Procs,
    transport: Transport,
    name: String,
    path: &Path,
    meta: &Metadata,
    depth: impl FnOnce() -> io::Result<(Option<u64>, u64)>,
) -> Endpoint {
    let mut e = Endpoint::new(name, transport, path.display().to_string());
    e.mode = Some(Mode::Queue);
    match presence::describe(path) {
        Ok(d) => {
            let holders = procs.holders_of(meta);
            e.type_name = Some(d.type_name);
            e.encoding = Encoding::from_u32(d.encoding);
            e.senders = role_peers(&holders, d.lock_bytes.0, d.sender, d.seen.0);
            e.receivers = role_peers(&holders, d.lock_bytes.1, d.receiver, d.seen.1);
            e.stale = !d.in_use;
            match depth() {
                Ok((cap, n)) => {
                    e.capacity = cap;
                    e.depth = Some(n);
                }
                Err(err) if !e.stale => e.error = Some(format!("queue: {err}")),
                Err(_) => {}
            }
        }
        Err(err) => e.error = Some(err.to_string()),
    }
    e
}

fn fifo(procs: &Procs, path: &Path, meta: &Metadata) -> Endpoint {
    let mut e = Endpoint::new(
        path.display().to_string(),
        Transport::Fifo,
        path.display().to_string(),
    );
    e.mode = Some(Mode::Queue);
    for h in procs.holders_of(meta) {
        let p = Peer {
            pid: Some(h.pid),
            alive: true,
        };
        if h.access == 1 {
            e.senders.push(p);
        } else {
            e.receivers.push(p);
        }
    }
    e.stale = e.senders.is_empty() && e.receivers.is_empty();
    e
}

fn socket(procs: &Procs, sockets: &[procfs::UnixSocket], name: &str, abs: bool) -> Endpoint {
    let transport = if abs {
        Transport::AbstractSocket
    } else {
        Transport::UnixSocket
    };
    let mut e = Endpoint::new(name.to_owned(), transport, name.to_owned());
    e.mode = Some(Mode::Queue);
    let mine: Vec<_> = sockets.iter().filter(|s| s.path == name).collect();
    for s in &mine {
        if s.listening {
            for h in procs.socket_holders(s.inode) {
                e.receivers.push(Peer {
                    pid: Some(h.pid),
                    alive: true,
                });
            }
            if e.receivers.is_empty() {
                e.receivers.push(Peer {
                    pid: None,
                    alive: true,
                });
            }
        } else if s.connected {
            // An accepted connection carries the listener's name: one per sender. The
            // sender's own end is unnamed, so its pid is not known.
            e.senders.push(Peer {
                pid: None,
                alive: true,
            });
        }
    }
    e.stale = !abs && !mine.iter().any(|s| s.listening);
    e
}

fn file_log(procs: &Procs, dir: &Path) -> Endpoint {
    let mut e = Endpoint::new(
        dir.display().to_string(),
        Transport::FileLog,
        dir.join(file::CONTROL_FILE).display().to_string(),
    );
    e.mode = Some(Mode::Broadcast);
    match file::describe(dir) {
        Ok(d) => {
            e.type_name = Some(d.type_name);
            e.encoding = Encoding::from_u32(d.encoding);
            e.depth = Some(d.committed.saturating_sub(d.oldest));
            let holders = std::fs::metadata(dir.join(file::CONTROL_FILE))
                .map(|m| procs.holders_of(&m))
                .unwrap_or_default();
            e.senders = role_peers(&holders, d.writer_lock, d.writer, false);
            e.receivers = lockers(&holders, d.readers_lock);
        }
        Err(err) => e.error = Some(err.to_string()),
    }
    e
}

/// Every channel found (see the module docs for where each transport is looked for),
/// sorted by transport, then name.
///
/// # Errors
///
/// If `/dev/shm` exists and cannot be read. Channels that cannot be read are returned with
/// [`Endpoint::error`] set.
pub fn scan(what: &Scan) -> io::Result<Vec<Endpoint>> {
    let prefix = what.prefix.as_str();
    let procs = Procs::scan();
    let sockets = procfs::unix_sockets();
    let mut out = Vec::new();
    let names = match super::names(prefix) {
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e),
    };
    for name in names {
        let r = Observer::open(prefix, &name);
        if matches!(r, Err(InspectError::NotFound { .. })) {
            continue;
        }
        let location = format!("{}/{prefix}{name}", crate::sys::shm::SHM_DIR);
        out.push(ring(Transport::PosixShm, location, r));
    }
    let dir = presence::dir();
    let mut paths: Vec<PathBuf> = Vec::new();
    if let Ok(rd) = std::fs::read_dir(&dir) {
        let mut entries: Vec<_> = rd.flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let file_name = entry.file_name();
            let Some(f) = file_name.to_str() else {
                continue;
            };
            let path = entry.path();
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            if let Some(rest) = f.strip_prefix("shmbus.sysv-") {
                if let Some(key) = rest
                    .strip_suffix(".sysv")
                    .and_then(|k| k.parse::<i32>().ok())
                {
                    let name = format!("sysv-mq-{key}");
                    out.push(queue(
                        &procs,
                        Transport::SysvQueue,
                        name,
                        &path,
                        &meta,
                        || sysv_depth(key),
                    ));
                    continue;
                }
            }
            let Some(rest) = f.strip_prefix(prefix).filter(|r| !r.is_empty()) else {
                continue;
            };
            let ft = meta.file_type();
            if ft.is_file() {
                if let Some(key) = rest
                    .strip_prefix("sysv-shm-")
                    .and_then(|r| r.strip_suffix(".lock"))
                    .and_then(|k| i32::from_str_radix(k, 16).ok())
                {
                    let r = Observer::open_sysv(prefix, key);
                    let mut e = ring(Transport::SysvShm, path.display().to_string(), r);
                    if e.error.is_some() {
                        // A lock file whose segment is gone or unreadable: stale if unheld.
                        e.stale = !presence::in_use(&path);
                    }
                    out.push(e);
                } else if let Some(name) = rest.strip_suffix(".mq") {
                    let object = format!("{prefix}{name}");
                    out.push(queue(
                        &procs,
                        Transport::PosixQueue,
                        name.to_owned(),
                        &path,
                        &meta,
                        || {
                            let (q, _) = crate::sys::mq::Mq::open(&object, false, 0, 0, 0)?;
                            let (cap, _, cur) = q.attr()?;
                            Ok((Some(cap as u64), cur as u64))
                        },
                    ));
                } else if let Some(name) = rest.strip_suffix(".sysv") {
                    let key = sysv_mq::key_for(&format!("{prefix}{name}"));
                    out.push(queue(
                        &procs,
                        Transport::SysvQueue,
                        name.to_owned(),
                        &path,
                        &meta,
                        || sysv_depth(key),
                    ));
                }
            } else if ft.is_fifo() || ft.is_socket() || ft.is_dir() {
                paths.push(path);
            }
        }
    }
    paths.extend(what.paths.iter().cloned());
    paths.dedup();
    for path in &paths {
        let Ok(meta) = std::fs::symlink_metadata(path) else {
            let mut e = Endpoint::new(
                path.display().to_string(),
                Transport::Fifo,
                path.display().to_string(),
            );
            e.error = Some("no such file".into());
            out.push(e);
            continue;
        };
        let ft = meta.file_type();
        if ft.is_fifo() {
            out.push(fifo(&procs, path, &meta));
        } else if ft.is_socket() {
            out.push(socket(&procs, &sockets, &path.display().to_string(), false));
        } else if ft.is_dir() && path.join(file::CONTROL_FILE).is_file() {
            out.push(file_log(&procs, path));
        }
    }
    let abstract_prefix = format!("@{prefix}");
    let mut abstract_names: Vec<&str> = sockets
        .iter()
        .filter(|s| s.listening && s.path.starts_with(&abstract_prefix))
        .map(|s| s.path.as_str())
        .collect();
    abstract_names.sort_unstable();
    abstract_names.dedup();
    for name in abstract_names {
        out.push(socket(&procs, &sockets, name, true));
    }
    out.sort_by(|a, b| (a.transport as u8, &a.name).cmp(&(b.transport as u8, &b.name)));
    Ok(out)
}

fn sysv_depth(key: i32) -> io::Result<(Option<u64>, u64)> {
    let (q, _) = crate::sys::msg::MsgQueue::get(key, false, 0)?;
    let (n, _bytes, _, _) = q.stat()?;
    Ok((None, n))
}

/// What [`clean_stale`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removed {
    /// Removed (with its queue or segment).
    Removed,
    /// Someone holds it now: left alone.
    InUse,
    /// Not something that goes stale (a file log keeps its records on purpose; an abstract
    /// socket disappears with its receiver).
    NotApplicable,
}

/// Removes a stale endpoint found by [`scan`], checking again, atomically with respect to
/// processes opening it, that nobody holds it: a POSIX or System V segment, a queue with its
/// presence file, a socket file nobody listens on. A FIFO is removed if no process has it
/// open (a process blocked opening it, waiting for its peer, recreates it if it may create).
///
/// # Errors
///
/// If it cannot be opened, locked or removed.
pub fn clean_stale(prefix: &str, e: &Endpoint) -> io::Result<Removed> {
    let done = |b: bool| if b { Removed::Removed } else { Removed::InUse };
    let path = Path::new(&e.location);
    match e.transport {
        Transport::PosixShm => super::remove_stale(prefix, &e.name)
            .map(done)
            .map_err(|err| io::Error::other(err.to_string())),
        Transport::SysvShm => {
            let key = e
                .name
                .strip_prefix("sysv-shm-")
                .and_then(|k| i32::from_str_radix(k, 16).ok())
                .ok_or_else(|| io::Error::other("not a System V segment name"))?;
            crate::segment::sysv::remove_if_unused(path, key).map(done)
        }
        Transport::PosixQueue => {
            let object = format!("{prefix}{}", e.name);
            presence::remove_if_unused(path, || {
                let _ = crate::sys::mq::Mq::unlink(&object);
            })
            .map(done)
        }
        Transport::SysvQueue => {
            let key = match e.name.strip_prefix("sysv-mq-") {
                Some(k) => k.parse().map_err(io::Error::other)?,
                None => sysv_mq::key_for(&format!("{prefix}{}", e.name)),
            };
            presence::remove_if_unused(path, || {
                if let Ok((q, _)) = crate::sys::msg::MsgQueue::get(key, false, 0) {
                    let _ = q.remove();
                }
            })
            .map(done)
        }
        Transport::Fifo => {
            let meta = std::fs::symlink_metadata(path)?;
            if !meta.file_type().is_fifo() {
                return Err(io::Error::other("not a FIFO any more"));
            }
            if !Procs::scan().holders_of(&meta).is_empty() {
                return Ok(Removed::InUse);
            }
            std::fs::remove_file(path)?;
            Ok(Removed::Removed)
        }
        Transport::UnixSocket => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Ok(Removed::InUse);
            }
            let meta = std::fs::symlink_metadata(path)?;
            if !meta.file_type().is_socket() {
                return Err(io::Error::other("not a socket any more"));
            }
            std::fs::remove_file(path)?;
            Ok(Removed::Removed)
        }
        Transport::AbstractSocket | Transport::FileLog => Ok(Removed::NotApplicable),
    }
}
