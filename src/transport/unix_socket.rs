//! Unix stream sockets, at a path or a Linux abstract name.
//!
//! The receiver listens; any number of senders connect. Each connection starts with a
//! hello each way (sender first), so a sender of the wrong type fails in `open` with a type
//! mismatch and the receiver drops the connection. A thread of the receiver accepts and
//! greets connections, so senders can connect while the receiver is busy. Both ends check
//! the other's user with `SO_PEERCRED` (`Options::allow_uid`, `allow_any_uid`, `group`;
//! by default only their own user): the receiver when it accepts a connection (a refused
//! sender's `open` fails), the sender right after connecting. A socket path is never
//! followed through a symbolic link and must hold a socket. Frames from several senders are interleaved whole; each sender's own frames
//! arrive in order. The receiver reports `Disconnected` once every sender that connected
//! has gone and their frames are received.

use std::io;
use std::os::fd::AsFd;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::frame::{self, Fill, Hello, StreamRx, StreamTx, KIND_DATA, KIND_HELLO};
use super::{Link, LinkError, LinkOpenError, TransportKind, Wait, Wire};
use crate::sys::fd;
use crate::sys::perm::Access;

/// Where the socket lives.
#[derive(Debug, Clone)]
pub(crate) enum Address {
    Path(PathBuf),
    Abstract(String),
}

impl Address {
    fn to_addr(&self) -> io::Result<SocketAddr> {
        match self {
            Address::Path(p) => SocketAddr::from_pathname(p),
            Address::Abstract(n) => SocketAddr::from_abstract_name(n.as_bytes()),
        }
    }
}

/// Whether a receiver listens at `address` now (a probe connection, closed at once: the
/// receiver's acceptor drops it as a sender that sent no hello).
pub(crate) fn listening(address: &Address) -> bool {
    address
        .to_addr()
        .and_then(|a| UnixStream::connect_addr(&a))
        .is_ok()
}

/// A connecting sender.
pub(crate) struct SocketSender {
    tx: StreamTx<UnixStream>,
}

/// One accepted, greeted connection.
struct Conn {
    rx: StreamRx<UnixStream>,
}

/// State shared with the acceptor thread.
struct Shared {
    stop: AtomicBool,
    fresh: Mutex<Vec<Conn>>,
}

/// The listening receiver. A small thread accepts connections and answers hellos, so that
/// a sender's `open` completes whether or not the receiver is receiving at the time.
pub(crate) struct SocketReceiver {
    address: Address,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
    conns: Vec<Conn>,
    next: usize,
    ever_connected: bool,
}

fn io(op: &'static str) -> impl FnOnce(io::Error) -> LinkOpenError {
    move |e| LinkOpenError::Io(op, e)
}

/// Refuses a path that holds something other than a socket (a symbolic link included).
fn check_kind(address: &Address) -> Result<(), LinkOpenError> {
    let Address::Path(p) = address else {
        return Ok(());
    };
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.file_type().is_symlink() => Err(LinkOpenError::WrongKind(format!(
            "{} is a symbolic link (never followed)",
            p.display()
        ))),
        Ok(m) if !m.file_type().is_socket() => Err(LinkOpenError::WrongKind(format!(
            "{} is {}, not a socket",
            p.display(),
            super::kind_name(&m.file_type())
        ))),
        _ => Ok(()),
    }
}

impl SocketSender {
    /// Connects (waiting up to `timeout` for a listener), checks that the receiver runs as
    /// an accepted user (`SO_PEERCRED`), and exchanges hellos.
    pub(crate) fn connect(
        address: &Address,
        wire: &Wire,
        timeout: Duration,
        access: &Access,
    ) -> Result<Self, LinkOpenError> {
        let addr = address
            .to_addr()
            .map_err(|e| LinkOpenError::Invalid(e.to_string()))?;
        let start = Instant::now();
        let stream = loop {
            check_kind(address)?;
            match UnixStream::connect_addr(&addr) {
                Ok(s) => break s,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
                    ) && start.elapsed() < timeout =>
                {
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
                    ) =>
                {
                    return Err(LinkOpenError::NotFound(format!("{address:?}")));
                }
                Err(e) => return Err(LinkOpenError::Io("connect", e)),
            }
        };
        let (uid, gid, pid) = fd::peer_cred(stream.as_fd()).map_err(io("SO_PEERCRED"))?;
        access
            .check_ids(uid, gid)
            .map_err(|e| LinkOpenError::perm(format_args!("the receiver (pid {pid})"), e))?;
        let reader = stream.try_clone().map_err(io("dup"))?;
        let mut tx = StreamTx::new(stream).map_err(io("fcntl"))?;
        let mut rx = StreamRx::new(reader).map_err(io("fcntl"))?;
        tx.send(KIND_HELLO, &frame::hello(wire), Wait::Forever)
            .map_err(|_| LinkOpenError::Refused("the receiver closed the connection".into()))?;
        let left = timeout
            .saturating_sub(start.elapsed())
            .max(Duration::from_secs(1));
        rx.expect_hello(wire, left)?;
        Ok(SocketSender { tx })
    }
}

impl Link for SocketSender {
    fn send_frame(&mut self, bytes: &[u8], _tag: u32, wait: Wait) -> Result<(), LinkError> {
        self.tx.send(KIND_DATA, bytes, wait)
    }

    fn recv_frame(&mut self, _buf: &mut Vec<u8>, _wait: Wait) -> Result<(), LinkError> {
        unreachable!("a sending link does not receive")
    }

    fn is_connected(&mut self) -> bool {
        match fd::poll_one(self.tx.io.as_fd(), true, Some(Duration::ZERO)) {
            // The receiver never sends after its hello: readable means end-of-file.
            Ok(r) => !(r.hangup || r.readable),
            Err(_) => true,
        }
    }

    fn kind(&self) -> TransportKind {
        TransportKind::UnixSocket
    }
}

/// Accepts connections until told to stop: checks the peer's uid, reads its hello (for at
/// most a second), answers with ours, and hands over the connections of the right type.
fn acceptor(listener: UnixListener, wire: Wire, access: Access, shared: Arc<Shared>) {
    let hello = frame::hello(&wire);
    while !shared.stop.load(Ordering::Acquire) {
        let ready = fd::poll_one(listener.as_fd(), true, Some(Duration::from_millis(20)));
        if !ready.is_ok_and(|r| r.readable) {
            continue;
        }
        let Ok((stream, _)) = listener.accept() else {
            continue;
        };
        if !fd::peer_cred(stream.as_fd()).is_ok_and(|(uid, gid, _)| access.allows(uid, gid)) {
            continue; // dropped: the sender's handshake fails
        }
        let Ok(mut writer) = stream.try_clone() else {
            continue;
        };
        let Ok(mut rx) = StreamRx::new(stream) else {
            continue;
        };
        let mut p = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(1);
        let theirs = match rx.recv(&mut p, Wait::Until(deadline)) {
            Ok(KIND_HELLO) => Hello::parse(&p).ok(),
            _ => None,
        };
        let Some(theirs) = theirs else { continue };
        // Answer with our hello either way: a sender of another type learns ours.
        let mut reply = Vec::new();
        frame::encode(&mut reply, KIND_HELLO, &hello);
        if std::io::Write::write_all(&mut writer, &reply).is_err() || !theirs.matches(&wire) {
            continue;
        }
        rx.max_frame = theirs.max_frame.min(frame::MAX_FRAME);
        shared
            .fresh
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Conn { rx });
    }
}

impl SocketReceiver {
    /// Binds and listens. A leftover socket file at the path that nobody listens on is
    /// replaced; any other file there is an error.
    pub(crate) fn bind(
        address: &Address,
        wire: &Wire,
        access: Access,
    ) -> Result<Self, LinkOpenError> {
        let addr = address
            .to_addr()
            .map_err(|e| LinkOpenError::Invalid(e.to_string()))?;
        check_kind(address)?;
        let listener = match UnixListener::bind_addr(&addr) {
            Ok(l) => l,
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                let Address::Path(p) = address else {
                    return Err(LinkOpenError::Io("bind", e));
                };
                let is_socket =
                    std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_socket());
                let stale = is_socket
                    && matches!(UnixStream::connect(p), Err(ref c) if c.kind() == io::ErrorKind::ConnectionRefused);
                if !stale {
                    return Err(LinkOpenError::Io("bind", e));
                }
                std::fs::remove_file(p).map_err(io("unlink"))?;
                UnixListener::bind_addr(&addr).map_err(io("bind"))?
            }
            Err(e) => return Err(LinkOpenError::Io("bind", e)),
        };
        if let Address::Path(p) = address {
            // A socket's mode is its file's (connecting needs write permission on it); the
            // file was just bound by us, so the path names it.
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(access.mode & 0o777))
                .map_err(io("chmod"))?;
            if let Some(gid) = access.group {
                std::os::unix::fs::lchown(p, None, Some(gid)).map_err(io("chown"))?;
            }
        }
        listener.set_nonblocking(true).map_err(io("fcntl"))?;
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            fresh: Mutex::new(Vec::new()),
        });
        let (s, w) = (shared.clone(), *wire);
        let acceptor = std::thread::Builder::new()
            .name("shmbus-acceptor".into())
            .spawn(move || acceptor(listener, w, access, s))
            .map_err(io("spawn"))?;
        Ok(SocketReceiver {
            address: address.clone(),
            shared,
            acceptor: Some(acceptor),
            conns: Vec::new(),
            next: 0,
            ever_connected: false,
        })
    }

    fn take_fresh(&mut self) {
        let mut fresh = self.shared.fresh.lock().unwrap_or_else(|e| e.into_inner());
        if !fresh.is_empty() {
            self.ever_connected = true;
            self.conns.append(&mut fresh);
        }
    }

    /// Looks for a message on connection `i`. `Ok(true)`: `buf` holds one. `Err(None)`:
    /// the connection ended cleanly and was removed.
    fn poll_conn(&mut self, i: usize, buf: &mut Vec<u8>) -> Result<bool, Option<LinkError>> {
        loop {
            let conn = &mut self.conns[i];
            let r = match conn.rx.next_frame(buf) {
                Ok(Some(KIND_DATA)) => return Ok(true),
                Ok(Some(_)) => Err(Some(LinkError::Corrupt(
                    "a sender sent a second hello".into(),
                ))),
                Ok(None) => match conn.rx.fill() {
                    Ok(Fill::Some) => continue,
                    Ok(Fill::Nothing) => return Ok(false),
                    Ok(Fill::Eof) => match conn.rx.next_frame(buf) {
                        Ok(Some(KIND_DATA)) => return Ok(true),
                        _ => match conn.rx.at_eof() {
                            LinkError::Disconnected => Err(None),
                            e => Err(Some(e)),
                        },
                    },
                    Err(e) => Err(Some(e)),
                },
                Err(e) => Err(Some(e)),
            };
            self.conns.swap_remove(i);
            return r;
        }
    }
}

impl Link for SocketReceiver {
    fn send_frame(&mut self, _bytes: &[u8], _tag: u32, _wait: Wait) -> Result<(), LinkError> {
        unreachable!("a receiving link does not send")
    }

    fn recv_frame(&mut self, buf: &mut Vec<u8>, wait: Wait) -> Result<(), LinkError> {
        loop {
            self.take_fresh();
            let n = self.conns.len();
            let mut i = 0;
            while i < n.min(self.conns.len()) {
                let idx = (self.next + i) % self.conns.len();
                match self.poll_conn(idx, buf) {
                    Ok(true) => {
                        self.next = idx + 1;
                        return Ok(());
                    }
                    Ok(false) => i += 1,
                    Err(Some(e)) => return Err(e),
                    Err(None) => {}
                }
                if self.conns.is_empty() {
                    break;
                }
            }
            if self.conns.is_empty() && self.ever_connected {
                self.take_fresh();
                if self.conns.is_empty() {
                    return Err(LinkError::Disconnected);
                }
                continue;
            }
            let Some(slice) = wait.slice(super::LIVENESS_SLICE) else {
                return Err(wait.expired());
            };
            // New connections show up within a slice (the acceptor does not wake us).
            let slice = if self.conns.is_empty() {
                slice.min(Duration::from_millis(1))
            } else {
                slice
            };
            let fds = self.conns.iter().map(|c| c.rx.io.as_fd());
            fd::wait_readable(fds, Some(slice)).map_err(|e| LinkError::io("poll", e))?;
        }
    }

    fn is_connected(&mut self) -> bool {
        self.take_fresh();
        !self.conns.is_empty()
    }

    fn kind(&self) -> TransportKind {
        TransportKind::UnixSocket
    }
}

impl Drop for SocketReceiver {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(t) = self.acceptor.take() {
            let _ = t.join();
        }
        if let Address::Path(p) = &self.address {
            let _ = std::fs::remove_file(p);
        }
    }
}
