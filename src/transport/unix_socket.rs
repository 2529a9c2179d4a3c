//! Unix stream sockets, at a path or a Linux abstract name.
//!
//! The receiver listens; any number of senders connect. Each connection starts with a
//! hello each way (sender first), so a sender of the wrong type fails in `open` with a type
//! mismatch and the receiver drops the connection. The receiver can restrict senders by
//! uid, checked with `SO_PEERCRED` when a connection is accepted; a refused sender's `open`
//! fails. Frames from several senders are interleaved whole; each sender's own frames
//! arrive in order. The receiver reports `Disconnected` once every sender that connected
//! has gone and their frames are received.

use std::io;
use std::os::fd::AsFd;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::frame::{self, Fill, Hello, StreamRx, StreamTx, KIND_DATA, KIND_HELLO};
use super::{Link, LinkError, LinkOpenError, TransportKind, Wait, Wire};
use crate::sys::fd;

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

/// A connecting sender.
pub(crate) struct SocketSender {
    tx: StreamTx<UnixStream>,
}

/// One accepted connection.
struct Conn {
    rx: StreamRx<UnixStream>,
    greeted: bool,
}

/// The listening receiver.
pub(crate) struct SocketReceiver {
    listener: UnixListener,
    address: Address,
    wire: Wire,
    hello: Vec<u8>,
    allow_uids: Vec<u32>,
    conns: Vec<Conn>,
    next: usize,
    ever_greeted: bool,
}

fn io(op: &'static str) -> impl FnOnce(io::Error) -> LinkOpenError {
    move |e| LinkOpenError::Io(op, e)
}

impl SocketSender {
    /// Connects (waiting up to `timeout` for a listener) and exchanges hellos.
    pub(crate) fn connect(
        address: &Address,
        wire: &Wire,
        timeout: Duration,
    ) -> Result<Self, LinkOpenError> {
        let addr = address
            .to_addr()
            .map_err(|e| LinkOpenError::Invalid(e.to_string()))?;
        let start = Instant::now();
        let stream = loop {
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
        match fd::poll(&[(self.tx.io.as_fd(), true)], Some(Duration::ZERO)) {
            // The receiver never sends after its hello: readable means end-of-file.
            Ok(r) => !(r[0].hangup || r[0].readable),
            Err(_) => true,
        }
    }

    fn kind(&self) -> TransportKind {
        TransportKind::UnixSocket
    }
}

impl SocketReceiver {
    /// Binds and listens. A leftover socket file at the path that nobody listens on is
    /// replaced; any other file there is an error.
    pub(crate) fn bind(
        address: &Address,
        wire: &Wire,
        allow_uids: Vec<u32>,
    ) -> Result<Self, LinkOpenError> {
        let addr = address
            .to_addr()
            .map_err(|e| LinkOpenError::Invalid(e.to_string()))?;
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
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600));
        }
        listener.set_nonblocking(true).map_err(io("fcntl"))?;
        Ok(SocketReceiver {
            listener,
            address: address.clone(),
            wire: *wire,
            hello: frame::hello(wire),
            allow_uids,
            conns: Vec::new(),
            next: 0,
            ever_greeted: false,
        })
    }

    fn accept_all(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((s, _)) => {
                    if !self.allow_uids.is_empty() {
                        let ok = fd::peer_cred(s.as_fd())
                            .is_ok_and(|(uid, _)| self.allow_uids.contains(&uid));
                        if !ok {
                            continue; // dropped: the sender's handshake fails
                        }
                    }
                    if let Ok(rx) = StreamRx::new(s) {
                        self.conns.push(Conn { rx, greeted: false });
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
    }

    /// Looks for a frame on connection `i`. `Ok(true)`: `buf` holds a message.
    /// `Err(None)`: the connection is finished and was removed.
    fn poll_conn(&mut self, i: usize, buf: &mut Vec<u8>) -> Result<bool, Option<LinkError>> {
        loop {
            let conn = &mut self.conns[i];
            match conn.rx.next_frame(buf) {
                Ok(Some(KIND_DATA)) if conn.greeted => return Ok(true),
                Ok(Some(KIND_HELLO)) if !conn.greeted => {
                    let ok = Hello::parse(buf).is_ok_and(|h| h.matches(&self.wire));
                    // Answer with our hello either way: a mismatched sender learns our type.
                    let mut reply = Vec::new();
                    frame::encode(&mut reply, KIND_HELLO, &self.hello);
                    let _ = std::io::Write::write_all(&mut &conn.rx.io, &reply);
                    if !ok {
                        self.conns.swap_remove(i);
                        return Err(None);
                    }
                    if let Ok(h) = Hello::parse(buf) {
                        conn.rx.max_frame = h.max_frame.min(frame::MAX_FRAME);
                    }
                    conn.greeted = true;
                    self.ever_greeted = true;
                }
                Ok(Some(_)) => {
                    self.conns.swap_remove(i);
                    return Err(Some(LinkError::Corrupt(
                        "a sender broke the handshake order".into(),
                    )));
                }
                Err(e) => {
                    self.conns.swap_remove(i);
                    return Err(Some(e));
                }
                Ok(None) => match conn.rx.fill() {
                    Ok(Fill::Some) => {}
                    Ok(Fill::Nothing) => return Ok(false),
                    Ok(Fill::Eof) => {
                        if conn.rx.next_frame(buf).is_ok_and(|k| k.is_some()) {
                            // Unreachable in practice: next_frame above saw no full frame.
                            return Ok(false);
                        }
                        let greeted = conn.greeted;
                        let err = conn.rx.at_eof();
                        self.conns.swap_remove(i);
                        return Err(match err {
                            LinkError::Disconnected => None,
                            e if greeted => Some(e),
                            _ => None,
                        });
                    }
                    Err(e) => {
                        self.conns.swap_remove(i);
                        return Err(Some(e));
                    }
                },
            }
        }
    }
}

impl Link for SocketReceiver {
    fn send_frame(&mut self, _bytes: &[u8], _tag: u32, _wait: Wait) -> Result<(), LinkError> {
        unreachable!("a receiving link does not send")
    }

    fn recv_frame(&mut self, buf: &mut Vec<u8>, wait: Wait) -> Result<(), LinkError> {
        loop {
            self.accept_all();
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
            if self.conns.is_empty() && self.ever_greeted {
                return Err(LinkError::Disconnected);
            }
            let Some(slice) = wait.slice(super::LIVENESS_SLICE) else {
                return Err(wait.expired());
            };
            let mut fds = vec![(self.listener.as_fd(), true)];
            fds.extend(self.conns.iter().map(|c| (c.rx.io.as_fd(), true)));
            fd::poll(&fds, Some(slice)).map_err(|e| LinkError::io("poll", e))?;
        }
    }

    fn is_connected(&mut self) -> bool {
        self.accept_all();
        self.conns.iter().any(|c| c.greeted)
    }

    fn kind(&self) -> TransportKind {
        TransportKind::UnixSocket
    }
}

impl Drop for SocketReceiver {
    fn drop(&mut self) {
        if let Address::Path(p) = &self.address {
            let _ = std::fs::remove_file(p);
        }
    }
}
