//! Request-response on top of channels: [`Client`] and [`Server`].
//!
//! A service `NAME` is made of
//!
//! * a queue channel `NAME.req` that every client sends requests into and every server
//!   worker receives from (several servers compete for requests), and
//! * one queue channel `NAME.resp.<client id>` per client, created by the client, into which
//!   servers send that client's responses.
//!
//! Requests and responses travel in an envelope (client id, request id, encoded body) with
//! postcard; the body is the request or response type's own encoding (zero-copy types are
//! copied as their bytes). A response is matched to its request by id, so a late response to
//! a request that timed out is dropped, never handed to the wrong caller.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::error::{CorruptError, OpenError, RecvError, RecvTimeoutError, SendError};
use crate::message::{DecodeError, EncodeError, Message};
use crate::options::{Delivery, Options};
use crate::ring::Peers;

use super::{Receiver, Sender};

/// The envelope of every request and response.
#[derive(crate::Message, serde::Serialize, serde::Deserialize, Debug, Clone)]
#[shmbus(name = "shmbus.Envelope")]
struct Envelope {
    client: u64,
    id: u64,
    body: Vec<u8>,
}

/// How often a waiting client checks that a server is still there.
const SERVER_CHECK: Duration = Duration::from_millis(10);

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// No server is attached to the service (it left or died), so no answer will come.
    #[error("the service has no server (it left or died)")]
    ServerGone,
    /// No response arrived in time.
    #[error("no response within the timeout")]
    Timeout,
    /// The request could not be encoded (for example, larger than the service's maximum
    /// message size).
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// The response could not be decoded.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The service's channels are corrupt.
    #[error(transparent)]
    Corrupt(#[from] CorruptError),
}

/// Why a response could not be delivered.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RespondError {
    /// The client that asked is gone.
    #[error("the client that sent the request is gone")]
    ClientGone,
    /// The response could not be encoded.
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// The client's channel could not be opened.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// The client's channel is corrupt.
    #[error(transparent)]
    Corrupt(#[from] CorruptError),
}

fn unique_client_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    (u64::from(std::process::id()) << 32) | (NEXT.fetch_add(1, Ordering::Relaxed) & 0xffff_ffff)
}

fn encode<T: Message>(value: &T, max: usize) -> Result<Vec<u8>, EncodeError> {
    let mut buf = vec![0u8; max];
    let n = value.__encode(&mut buf)?;
    buf.truncate(n);
    Ok(buf)
}

/// The calling side of a service: sends requests and waits for their responses.
///
/// # Examples
///
/// ```no_run
/// #[derive(shmbus::Message, serde::Serialize, serde::Deserialize, Debug)]
/// struct Add { a: i64, b: i64 }
/// #[derive(shmbus::Message, serde::Serialize, serde::Deserialize, Debug)]
/// struct Sum(i64);
///
/// // In the server process:
/// let server = shmbus::Server::<Add, Sum>::open("calc", &Default::default())?;
/// // In a client process:
/// let client = shmbus::Client::<Add, Sum>::open("calc", &Default::default())?;
/// // Server: answer requests as they come.
/// let req = server.recv()?;
/// server.respond(&req, &Sum(req.body.a + req.body.b))?;
/// // Client:
/// let Sum(s) = client.request(&Add { a: 2, b: 3 }, std::time::Duration::from_secs(1))?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Client<Req: Message, Resp: Message> {
    backend: ClientBackend,
    next_id: std::cell::Cell<u64>,
    max_message: usize,
    _types: PhantomData<fn(Req) -> Resp>,
}

/// How a client reaches its service.
enum ClientBackend {
    /// A request channel and a response channel.
    Channels(Box<ChannelClient>),
    /// D-Bus method calls.
    #[cfg(feature = "dbus")]
    DBus(Box<crate::transport::dbus::ServiceClient>),
}

/// A client's own id, the service's request channel and the client's response channel.
struct ChannelClient {
    id: u64,
    requests: Sender<Envelope>,
    responses: Receiver<Envelope>,
}

/// The bus and names of a service on D-Bus; `None` on other transports.
#[cfg(feature = "dbus")]
fn dbus_service(
    name: &str,
    options: &Options,
) -> Result<Option<(crate::DBusBus, crate::transport::dbus::Names)>, OpenError> {
    let crate::Transport::DBus { bus } = &options.transport else {
        return Ok(None);
    };
    let object = crate::name::object_name(&options.prefix, name)?;
    let names = crate::transport::dbus::Names::for_object(&object)
        .map_err(|e| super::link::open_error::<Envelope>(name, e))?;
    Ok(Some((bus.clone(), names)))
}

impl<Req: Message, Resp: Message> Client<Req, Resp> {
    /// Connects to the service `name` (creating its request channel if no server has yet).
    /// `options` shape the channels this call creates: its maximum message size bounds the
    /// encoded requests and responses.
    ///
    /// # Errors
    ///
    /// [`OpenError`] as for [`Sender::open_or_create`].
    ///
    /// On [`Transport::DBus`](crate::Transport::DBus) the server must be there already
    /// (the client waits up to [`Options::connect_timeout`] for it), and a server of another
    /// request type is an [`OpenError::TypeMismatch`].
    pub fn open(name: &str, options: &Options) -> Result<Self, OpenError> {
        #[cfg(feature = "dbus")]
        if let Some((bus, names)) = dbus_service(name, options)? {
            let (wreq, wresp) = (
                super::link::wire::<Req>(options),
                super::link::wire::<Resp>(options),
            );
            let client = crate::transport::dbus::ServiceClient::open(
                &bus,
                &names,
                &wreq,
                &wresp,
                options.connect_timeout,
            )
            .map_err(|e| super::link::open_error::<Req>(name, e))?;
            return Ok(Client {
                backend: ClientBackend::DBus(Box::new(client)),
                next_id: std::cell::Cell::new(0),
                max_message: wreq.max_frame.min(crate::transport::dbus::MAX_PAYLOAD) + 32,
                _types: PhantomData,
            });
        }
        let mut opts = options.clone();
        opts.delivery(Delivery::Queue);
        let requests = Sender::open_or_create(&format!("{name}.req"), &opts)?;
        let id = unique_client_id();
        let responses = Receiver::create(&format!("{name}.resp.{id:x}"), &opts)?;
        let max_message = requests.max_message_size().min(responses_max(&responses));
        Ok(Client {
            backend: ClientBackend::Channels(Box::new(ChannelClient {
                id,
                requests,
                responses,
            })),
            next_id: std::cell::Cell::new(0),
            max_message,
            _types: PhantomData,
        })
    }

    /// Sends `request` and waits at most `timeout` for its response.
    ///
    /// # Errors
    ///
    /// [`RequestError::ServerGone`] if no server is attached (or the one serving died),
    /// [`RequestError::Timeout`] if the response did not come in time, or an encoding,
    /// decoding or corruption error.
    pub fn request(&self, request: &Req, timeout: Duration) -> Result<Resp, RequestError> {
        let deadline = Instant::now() + timeout;
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        let body = encode(request, self.max_message.saturating_sub(32))?;
        let (client_id, requests, responses) = match &self.backend {
            ClientBackend::Channels(c) => (c.id, &c.requests, &c.responses),
            #[cfg(feature = "dbus")]
            ClientBackend::DBus(client) => return dbus_request::<Resp>(client, &body, deadline),
        };
        if !peer_attached(requests) {
            return Err(RequestError::ServerGone);
        }
        let envelope = Envelope {
            client: client_id,
            id,
            body,
        };
        let remaining = deadline.saturating_duration_since(Instant::now());
        match requests.send_timeout(envelope, remaining) {
            Ok(()) => {}
            Err(crate::SendTimeoutError::Timeout(_)) => return Err(RequestError::Timeout),
            Err(crate::SendTimeoutError::Disconnected(_)) => return Err(RequestError::ServerGone),
            Err(crate::SendTimeoutError::Encode(_, e)) => return Err(RequestError::Encode(e)),
            Err(crate::SendTimeoutError::Corrupt(_, e)) => return Err(RequestError::Corrupt(e)),
        }
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Err(RequestError::Timeout);
            }
            match responses.recv_timeout((deadline - now).min(SERVER_CHECK)) {
                Ok(sample) => {
                    let envelope = sample.into_inner();
                    if envelope.id == id {
                        return Ok(Resp::__decode(&envelope.body)?);
                    }
                    // A late answer to an earlier request that timed out: drop it.
                }
                Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => {
                    if !peer_attached(requests) {
                        return Err(RequestError::ServerGone);
                    }
                }
                Err(RecvTimeoutError::Lagged(_)) => {}
                Err(RecvTimeoutError::Decode(e)) => return Err(RequestError::Decode(e)),
                Err(RecvTimeoutError::Corrupt(e)) => return Err(RequestError::Corrupt(e)),
            }
        }
    }
}

/// One request as a D-Bus method call.
#[cfg(feature = "dbus")]
fn dbus_request<Resp: Message>(
    client: &crate::transport::dbus::ServiceClient,
    body: &[u8],
    deadline: Instant,
) -> Result<Resp, RequestError> {
    use crate::transport::dbus::ServiceError;
    let mut buf = Vec::new();
    match client.call(body, deadline, &mut buf) {
        Ok(()) => Ok(Resp::__decode(&buf)?),
        Err(ServiceError::Gone) => Err(RequestError::ServerGone),
        Err(ServiceError::Timeout | ServiceError::Full) => {
            if client.server_present() {
                Err(RequestError::Timeout)
            } else {
                Err(RequestError::ServerGone)
            }
        }
        Err(ServiceError::Refused(reason) | ServiceError::Other(reason)) => {
            Err(RequestError::Corrupt(CorruptError { reason }))
        }
    }
}

fn responses_max(rx: &Receiver<Envelope>) -> usize {
    rx.max_message_size()
}

/// Whether the other side of `tx` (the servers of a request channel, the client of a
/// response channel) is attached, checking that it is alive.
fn peer_attached(tx: &Sender<Envelope>) -> bool {
    tx.ring_end()
        .is_none_or(|end| end.peers_checked() == Peers::Attached)
}

/// A request received by a [`Server`]: the decoded body and where to send the answer.
#[derive(Debug)]
pub struct Request<Req> {
    client: u64,
    id: u64,
    /// The request.
    pub body: Req,
}

impl<Req> Request<Req> {
    /// The id of the client that sent it (unique among the clients alive on this machine).
    pub fn client(&self) -> u64 {
        self.client
    }
}

/// The serving side of a service: receives requests from every client and answers each.
/// Several servers of one service compete for requests (each request goes to one).
pub struct Server<Req: Message, Resp: Message> {
    name: String,
    backend: ServerBackend,
    options: Options,
    clients: std::cell::RefCell<HashMap<u64, Sender<Envelope>>>,
    _types: PhantomData<fn(Req) -> Resp>,
}

/// Where a server's requests come from.
enum ServerBackend {
    Channels(Box<Receiver<Envelope>>),
    /// D-Bus `Call`s, and those not answered yet by request id.
    #[cfg(feature = "dbus")]
    DBus(Box<DBusServer>),
}

/// A server's D-Bus side: the `Call`s not answered yet, by request id.
#[cfg(feature = "dbus")]
struct DBusServer {
    server: crate::transport::dbus::ServiceServer,
    pending: std::cell::RefCell<HashMap<u64, crate::transport::dbus::PendingCall>>,
    next_id: std::cell::Cell<u64>,
}

impl<Req: Message, Resp: Message> Server<Req, Resp> {
    /// Serves the service `name` (creating its request channel if needed).
    ///
    /// # Errors
    ///
    /// [`OpenError`] as for [`Receiver::open_or_create`].
    ///
    /// On [`Transport::DBus`](crate::Transport::DBus) the server owns the service's
    /// well-known name (a second server is refused with
    /// [`OpenError::TooManyParticipants`]) and at most [`Options::capacity`] requests wait.
    pub fn open(name: &str, options: &Options) -> Result<Self, OpenError> {
        let mut opts = options.clone();
        opts.delivery(Delivery::Queue);
        #[cfg(feature = "dbus")]
        if let Some((bus, names)) = dbus_service(name, options)? {
            let (wreq, wresp) = (
                super::link::wire::<Req>(options),
                super::link::wire::<Resp>(options),
            );
            let server = crate::transport::dbus::ServiceServer::open(
                &bus,
                &names,
                &wreq,
                &wresp,
                options.capacity,
            )
            .map_err(|e| super::link::open_error::<Req>(name, e))?;
            return Ok(Server {
                name: name.to_owned(),
                backend: ServerBackend::DBus(Box::new(DBusServer {
                    server,
                    pending: Default::default(),
                    next_id: std::cell::Cell::new(0),
                })),
                options: opts,
                clients: Default::default(),
                _types: PhantomData,
            });
        }
        let requests = Receiver::open_or_create(&format!("{name}.req"), &opts)?;
        Ok(Server {
            name: name.to_owned(),
            backend: ServerBackend::Channels(Box::new(requests)),
            options: opts,
            clients: Default::default(),
            _types: PhantomData,
        })
    }

    /// The next D-Bus request, as an envelope whose id finds the call to answer.
    #[cfg(feature = "dbus")]
    fn dbus_recv(
        server: &crate::transport::dbus::ServiceServer,
        pending: &std::cell::RefCell<HashMap<u64, crate::transport::dbus::PendingCall>>,
        next_id: &std::cell::Cell<u64>,
        wait: crate::transport::Wait,
    ) -> Result<Envelope, crate::transport::LinkError> {
        let call = server.recv(wait)?;
        let id = next_id.get();
        next_id.set(id + 1);
        let envelope = Envelope {
            client: call.caller_id(),
            id,
            body: call.payload.clone(),
        };
        pending.borrow_mut().insert(id, call);
        Ok(envelope)
    }

    fn next_envelope(&self, timeout: Option<Duration>) -> Result<Envelope, RecvTimeoutError> {
        match &self.backend {
            ServerBackend::Channels(rx) => match timeout {
                Some(t) => Ok(rx.recv_timeout(t)?.into_inner()),
                None => rx.recv().map(|s| s.into_inner()).map_err(|e| match e {
                    RecvError::Decode(d) => RecvTimeoutError::Decode(d),
                    RecvError::Corrupt(c) => RecvTimeoutError::Corrupt(c),
                    RecvError::Lagged(n) => RecvTimeoutError::Lagged(n),
                    RecvError::Disconnected => RecvTimeoutError::Disconnected,
                }),
            },
            #[cfg(feature = "dbus")]
            ServerBackend::DBus(d) => {
                use crate::transport::{LinkError, Wait};
                let wait = timeout.map_or(Wait::Forever, |t| Wait::Until(Instant::now() + t));
                Self::dbus_recv(&d.server, &d.pending, &d.next_id, wait).map_err(|e| match e {
                    LinkError::Disconnected => RecvTimeoutError::Disconnected,
                    LinkError::Timeout | LinkError::WouldBlock => RecvTimeoutError::Timeout,
                    e => RecvTimeoutError::Corrupt(CorruptError {
                        reason: e.to_string(),
                    }),
                })
            }
        }
    }

    fn decode(&self, envelope: Envelope) -> Result<Request<Req>, RecvError> {
        Ok(Request {
            client: envelope.client,
            id: envelope.id,
            body: Req::__decode(&envelope.body)?,
        })
    }

    /// Waits for the next request.
    ///
    /// # Errors
    ///
    /// As for [`Receiver::recv`]: `Disconnected` once every client is gone and every
    /// request has been received.
    pub fn recv(&self) -> Result<Request<Req>, RecvError> {
        let envelope = self.next_envelope(None).map_err(|e| match e {
            RecvTimeoutError::Decode(d) => RecvError::Decode(d),
            RecvTimeoutError::Corrupt(c) => RecvError::Corrupt(c),
            RecvTimeoutError::Lagged(n) => RecvError::Lagged(n),
            _ => RecvError::Disconnected,
        })?;
        self.decode(envelope)
    }

    /// Waits at most `timeout` for the next request.
    ///
    /// # Errors
    ///
    /// As for [`Receiver::recv_timeout`].
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Request<Req>, RecvTimeoutError> {
        let envelope = self.next_envelope(Some(timeout))?;
        self.decode(envelope).map_err(|e| match e {
            RecvError::Decode(d) => RecvTimeoutError::Decode(d),
            RecvError::Corrupt(c) => RecvTimeoutError::Corrupt(c),
            RecvError::Lagged(n) => RecvTimeoutError::Lagged(n),
            RecvError::Disconnected => RecvTimeoutError::Disconnected,
        })
    }

    /// Sends the response to `request` to the client that asked.
    ///
    /// # Errors
    ///
    /// [`RespondError::ClientGone`] if that client is no longer there.
    pub fn respond(&self, request: &Request<Req>, response: &Resp) -> Result<(), RespondError> {
        #[cfg(feature = "dbus")]
        if let ServerBackend::DBus(d) = &self.backend {
            use crate::transport::dbus::ServiceError;
            let Some(call) = d.pending.borrow_mut().remove(&request.id) else {
                return Err(RespondError::ClientGone); // answered already
            };
            let body = encode(response, self.options.max_message_size.max(Resp::INFO.size))?;
            return match d.server.respond(&call, &body) {
                Ok(()) => Ok(()),
                Err(ServiceError::Gone) => Err(RespondError::ClientGone),
                Err(ServiceError::Refused(reason) | ServiceError::Other(reason)) => {
                    Err(RespondError::Corrupt(CorruptError { reason }))
                }
                Err(ServiceError::Timeout | ServiceError::Full) => Err(RespondError::ClientGone),
            };
        }
        let mut clients = self.clients.borrow_mut();
        if !clients.contains_key(&request.client) {
            let channel = format!("{}.resp.{:x}", self.name, request.client);
            let tx = match Sender::open(&channel, &self.options) {
                Ok(tx) => tx,
                Err(OpenError::NotFound { .. }) => return Err(RespondError::ClientGone),
                Err(e) => return Err(e.into()),
            };
            // Forget clients that left, so the table does not grow without bound.
            clients.retain(|_, tx: &mut Sender<Envelope>| peer_attached(tx));
            clients.insert(request.client, tx);
        }
        let tx = &clients[&request.client];
        let body = encode(response, tx.max_message_size().saturating_sub(32))?;
        let envelope = Envelope {
            client: request.client,
            id: request.id,
            body,
        };
        match tx.send(envelope) {
            Ok(()) => Ok(()),
            Err(SendError::Disconnected(_)) => {
                clients.remove(&request.client);
                Err(RespondError::ClientGone)
            }
            Err(SendError::Encode(_, e)) => Err(e.into()),
            Err(SendError::Corrupt(_, e)) => Err(e.into()),
        }
    }
}
