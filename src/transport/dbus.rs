//! D-Bus (feature `dbus`): a channel on a session bus, the system bus or a bus at an address,
//! through zbus 6.
//!
//! A channel maps to a well-known bus name, an object path and an interface
//! ([`Names`]; `docs/wire-format.md` has the rules): the default prefix and channel `calc`
//! become `org.shmbus.calc` at `/org/shmbus/calc`, interface `org.shmbus.Channel1`.
//!
//! * Queue delivery: the receiver owns the well-known name; each sender greets it once
//!   (`Hello`, which checks the message type) and then makes one `Send(t fingerprint, ay
//!   payload)` method call per message. The receiver keeps at most `capacity` messages and
//!   answers `org.shmbus.Error.Full` beyond that; a sender retries until its deadline.
//! * Broadcast delivery: the sender owns the name and emits each message as the signal
//!   `Message(t fingerprint, ay payload)`; every receiver subscribed to it gets a copy.
//! * Request-response ([`ServiceServer`], [`ServiceClient`], used by `Server`/`Client`):
//!   the server owns the name and answers `Call(t fingerprint, ay request) -> (t, ay)` on
//!   interface `org.shmbus.Service1`, so `busctl call` and `dbus-send` can drive it.
//!
//! Each handle has its own bus connection and a pump thread that drains it: it answers the
//! method calls the handle serves, queues what arrives, and hands replies to the calls the
//! handle made. Blocking waits are condition-variable waits on that state; zbus runs on its
//! own runtime (`zbus::block_on`), so no tokio is needed. A peer that leaves or dies is seen
//! through the bus's `NameOwnerChanged` signal (the daemon emits it when the peer's socket
//! closes, also on SIGKILL).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use nix::sys::eventfd::{EfdFlags, EventFd};
use zbus::message::Type as MsgType;
use zbus::{Connection, Message, MessageStream};

use super::{Link, LinkError, LinkOpenError, TransportKind, Wait, Wire};
use crate::error::TypeDesc;
use crate::message::Encoding;

/// The interface of a channel's object.
pub(crate) const INTERFACE: &str = "org.shmbus.Channel1";
/// The interface of a request-response service's object.
pub(crate) const SERVICE_INTERFACE: &str = "org.shmbus.Service1";
/// The largest payload this transport carries (well under the bus daemons' message limits:
/// 128 MiB on a session bus, 32 MiB on the system bus).
pub(crate) const MAX_PAYLOAD: usize = 16 << 20;

const DBUS: &str = "org.freedesktop.DBus";
const DBUS_PATH: &str = "/org/freedesktop/DBus";
const ERR_FULL: &str = "org.shmbus.Error.Full";
const ERR_TYPE: &str = "org.shmbus.Error.TypeMismatch";
const ERR_LARGE: &str = "org.shmbus.Error.TooLarge";
const ERR_GONE: &str = "org.shmbus.Error.ServerGone";

/// A payload as a D-Bus `ay`, written and read as one block of bytes (serde's `bytes`),
/// not byte by byte as a plain `&[u8]` would be. Borrowed from the message when read.
#[derive(Debug, Clone, Copy)]
struct Bytes<'a>(&'a [u8]);

impl<'a> Bytes<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Bytes(bytes)
    }
}

impl std::ops::Deref for Bytes<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.0
    }
}

impl serde::Serialize for Bytes<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Bytes<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Bytes<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a byte array (ay)")
            }
            fn visit_borrowed_bytes<E: serde::de::Error>(
                self,
                v: &'de [u8],
            ) -> Result<Self::Value, E> {
                Ok(Bytes(v))
            }
        }
        d.deserialize_bytes(Visit)
    }
}

impl zbus::Type for Bytes<'_> {
    const SIGNATURE: &'static zbus::Signature =
        &zbus::Signature::static_array(&zbus::Signature::U8);
}

/// Which bus a channel lives on (see [`Transport::DBus`](crate::Transport::DBus)).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum DBusBus {
    /// The session bus (`DBUS_SESSION_BUS_ADDRESS`).
    #[default]
    Session,
    /// The system bus (`/run/dbus/system_bus_socket`); owning a name there needs a policy
    /// that allows it.
    System,
    /// A bus at a D-Bus address, such as `unix:path=/tmp/bus.sock`.
    Address(String),
}

/// The bus name, object path and interface a channel maps to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Names {
    pub(crate) bus_name: String,
    pub(crate) path: String,
}

/// Escapes one dot-separated element of a channel name: ASCII letters and digits stay, any
/// other byte (and a digit that would start the element) becomes `_` and two hex digits.
fn escape_element(e: &str) -> String {
    let mut out = String::with_capacity(e.len());
    for (i, b) in e.bytes().enumerate() {
        if b.is_ascii_alphabetic() || (b.is_ascii_digit() && i > 0) {
            out.push(b as char);
        } else {
            out.push_str(&format!("_{b:02x}"));
        }
    }
    out
}

impl Names {
    /// The names of the channel whose object name (prefix and name) is `object`:
    /// `org.<e1>.<e2>...` and `/org/<e1>/<e2>/...`, each element escaped.
    pub(crate) fn for_object(object: &str) -> Result<Names, LinkOpenError> {
        let elements: Vec<String> = object.split('.').map(escape_element).collect();
        if elements.iter().any(String::is_empty) {
            return Err(LinkOpenError::Invalid(format!(
                "{object:?} has an empty dot-separated element, which D-Bus names cannot have"
            )));
        }
        let bus_name = format!("org.{}", elements.join("."));
        if bus_name.len() > 255 {
            return Err(LinkOpenError::Invalid(format!(
                "the D-Bus name for {object:?} is longer than 255 bytes: {bus_name}"
            )));
        }
        Ok(Names {
            bus_name,
            path: format!("/org/{}", elements.join("/")),
        })
    }
}

fn io_err(op: &'static str) -> impl Fn(zbus::Error) -> LinkOpenError {
    move |e| LinkOpenError::Io(op, std::io::Error::other(e.to_string()))
}

/// Connects to `bus`.
fn connect(bus: &DBusBus) -> Result<Connection, LinkOpenError> {
    let builder = match bus {
        DBusBus::Session => zbus::connection::Builder::session(),
        DBusBus::System => zbus::connection::Builder::system(),
        DBusBus::Address(a) => zbus::connection::Builder::address(a.as_str()),
    };
    let build = builder.build();
    zbus::block_on(build).map_err(|e| match e {
        zbus::Error::Address(a) => LinkOpenError::Invalid(format!("bad D-Bus address: {a}")),
        e => LinkOpenError::NotFound(format!("the D-Bus bus {bus:?} ({e})")),
    })
}

/// Calls a method of the bus daemon.
fn call_bus<B, R>(conn: &Connection, member: &str, body: &B) -> zbus::Result<R>
where
    B: serde::Serialize + zbus::zvariant::DynamicType,
    R: for<'d> serde::Deserialize<'d> + zbus::zvariant::Type,
{
    zbus::block_on(async {
        let reply = conn
            .call_method(Some(DBUS), DBUS_PATH, Some(DBUS), member, body)
            .await?;
        reply.body().deserialize::<R>()
    })
}

/// Whether the channel `object` on `bus` has an owner now (for `create`).
pub(crate) fn in_use(bus: &DBusBus, object: &str) -> bool {
    let Ok(names) = Names::for_object(object) else {
        return false;
    };
    let Ok(conn) = connect(bus) else {
        return false;
    };
    let owned = call_bus::<_, bool>(&conn, "NameHasOwner", &(names.bus_name.as_str(),));
    let _ = zbus::block_on(conn.close());
    owned.unwrap_or(false)
}

/// Takes the well-known name, refusing to queue for it. `role` names who owns it (for the
/// error when someone else does).
fn own_name(conn: &Connection, name: &str, role: &str) -> Result<(), LinkOpenError> {
    const DO_NOT_QUEUE: u32 = 4;
    const PRIMARY_OWNER: u32 = 1;
    match call_bus::<_, u32>(conn, "RequestName", &(name, DO_NOT_QUEUE)) {
        Ok(PRIMARY_OWNER) => Ok(()),
        Ok(_) => Err(LinkOpenError::Refused(role.to_owned())),
        Err(e) => Err(LinkOpenError::Io(
            "RequestName",
            std::io::Error::new(std::io::ErrorKind::PermissionDenied, e.to_string()),
        )),
    }
}

/// Subscribes to the bus's `NameOwnerChanged` signals (peers leaving).
fn watch_owners(conn: &Connection) -> Result<(), LinkOpenError> {
    let rule = format!(
        "type='signal',sender='{DBUS}',interface='{DBUS}',member='NameOwnerChanged',path='{DBUS_PATH}'"
    );
    call_bus::<_, ()>(conn, "AddMatch", &(rule.as_str(),)).map_err(io_err("AddMatch"))
}

/// What a frame-carrying call was answered with.
type Reply = Result<Message, (String, String)>;

/// An item queued for the handle.
struct Item {
    payload: Vec<u8>,
    /// The method call to answer (service requests).
    call: Option<Message>,
}

/// State shared between a handle and its pump thread.
#[derive(Default)]
struct State {
    items: VecDeque<Item>,
    /// Replies to calls this handle made, by serial (only those it waits for).
    replies: HashMap<u32, Reply>,
    waiting: HashSet<u32>,
    /// Queue receiver / service: unique names of the greeted peers still connected.
    peers: HashSet<String>,
    ever_greeted: bool,
    /// Broadcast receiver: the publisher seen so far, until it leaves.
    publisher: Option<String>,
    publisher_seen: bool,
    /// The bus connection is gone.
    lost: bool,
    /// A payload of the wrong type arrived (broadcast receivers report it once).
    foreign: Option<String>,
}

struct Shared {
    state: Mutex<State>,
    cond: Condvar,
    /// Readable after every change, for event loops (`Receiver::poll_fd`).
    event: Arc<EventFd>,
}

impl Shared {
    /// Wakes the blocked callers and the event loops.
    fn notify(&self) {
        self.cond.notify_all();
        let _ = self.event.write(1);
    }

    /// Clears the event descriptor, then says whether `take` would return at once.
    fn prepare_poll(&self, gone: impl Fn(&State) -> bool) -> bool {
        let _ = self.event.read(); // EAGAIN when already clear
        let st = self.lock();
        !st.items.is_empty() || st.foreign.is_some() || st.lost || gone(&st)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits for a change, at most until `wait` allows; `false`: the time is up.
    fn wait<'a>(
        &self,
        guard: MutexGuard<'a, State>,
        wait: Wait,
    ) -> Result<MutexGuard<'a, State>, MutexGuard<'a, State>> {
        let Some(slice) = wait.slice(Duration::from_millis(100)) else {
            return Err(guard);
        };
        let (g, _) = self
            .cond
            .wait_timeout(guard, slice)
            .unwrap_or_else(|e| e.into_inner());
        Ok(g)
    }
}

/// What a pump serves.
#[derive(Clone)]
enum Serve {
    /// A queue receiver: `Hello` and `Send`, at most `capacity` queued.
    Queue { capacity: usize },
    /// A broadcast sender: `Hello` only.
    Publisher,
    /// A broadcast receiver: the channel's `Message` signals.
    Subscriber,
    /// A service server: `Hello` and `Call`, at most `capacity` requests queued.
    Service { capacity: usize },
    /// A caller: nothing, only replies.
    Caller,
}

/// A connection with its pump thread.
struct Pump {
    conn: Connection,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

fn describe(w: &Wire) -> (&'static str, u32, u64, u32) {
    (w.name, w.encoding, w.fingerprint, w.max_frame as u32)
}

fn type_desc(name: &str, encoding: u32, fingerprint: u64) -> TypeDesc {
    TypeDesc {
        name: name.to_owned(),
        encoding: Encoding::from_u32(encoding).map_or("unknown", Encoding::name),
        fingerprint,
    }
}

const INTROSPECT: &str = r#"<!DOCTYPE node PUBLIC "-//freedesktop//DTD D-BUS Object Introspection 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/introspect.dtd">
<node>
 <interface name="org.shmbus.Channel1">
  <method name="Hello">
   <arg name="type_name" type="s" direction="in"/><arg name="encoding" type="u" direction="in"/>
   <arg name="fingerprint" type="t" direction="in"/><arg name="max_frame" type="u" direction="in"/>
   <arg name="type_name" type="s" direction="out"/><arg name="encoding" type="u" direction="out"/>
   <arg name="fingerprint" type="t" direction="out"/><arg name="max_frame" type="u" direction="out"/>
  </method>
  <method name="Send">
   <arg name="fingerprint" type="t" direction="in"/><arg name="payload" type="ay" direction="in"/>
  </method>
  <signal name="Message">
   <arg name="fingerprint" type="t"/><arg name="payload" type="ay"/>
  </signal>
 </interface>
 <interface name="org.shmbus.Service1">
  <method name="Call">
   <arg name="fingerprint" type="t" direction="in"/><arg name="request" type="ay" direction="in"/>
   <arg name="fingerprint" type="t" direction="out"/><arg name="response" type="ay" direction="out"/>
  </method>
 </interface>
 <interface name="org.freedesktop.DBus.Introspectable">
  <method name="Introspect"><arg name="xml" type="s" direction="out"/></method>
 </interface>
 <interface name="org.freedesktop.DBus.Peer">
  <method name="Ping"/>
 </interface>
</node>
"#;

impl Pump {
    /// Starts draining `conn` (before any name is owned, so no call is missed).
    fn start(
        conn: Connection,
        names: &Names,
        wire: Wire,
        serve: Serve,
    ) -> Result<Pump, LinkOpenError> {
        let event = EventFd::from_flags(EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)
            .map_err(|e| LinkOpenError::Io("eventfd", e.into()))?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            cond: Condvar::new(),
            event: Arc::new(event),
        });
        let stream = MessageStream::from(&conn);
        let (c, s, n) = (conn.clone(), shared.clone(), names.clone());
        let thread = std::thread::Builder::new()
            .name("shmbus-dbus".into())
            .spawn(move || pump(c, stream, s, n, wire, serve))
            .map_err(|e| LinkOpenError::Io("spawn", e))?;
        Ok(Pump {
            conn,
            shared,
            thread: Some(thread),
        })
    }

    /// Sends a method call to `dest` and waits for its answer (however long the peer
    /// takes, up to `limit` if given; the bus answers with an error if the peer leaves).
    fn call<B>(
        &self,
        dest: &str,
        path: &str,
        iface: &str,
        member: &str,
        body: &B,
        limit: Option<Instant>,
    ) -> Result<Message, CallError>
    where
        B: serde::Serialize + zbus::zvariant::DynamicType,
    {
        let msg = Message::method_call(path, member)
            .destination(dest)
            .interface(iface)
            .build(body)
            .map_err(|e| CallError::Other(e.to_string()))?;
        let serial = msg.primary_header().serial_num().get();
        self.shared.lock().waiting.insert(serial);
        if let Err(e) = zbus::block_on(self.conn.send(&msg)) {
            self.shared.lock().waiting.remove(&serial);
            return Err(CallError::Other(e.to_string()));
        }
        let mut st = self.shared.lock();
        loop {
            if let Some(r) = st.replies.remove(&serial) {
                return r.map_err(|(name, text)| CallError::from_name(&name, text));
            }
            if st.lost {
                st.waiting.remove(&serial);
                return Err(CallError::Gone);
            }
            let wait = limit.map_or(Wait::Forever, Wait::Until);
            st = match self.shared.wait(st, wait) {
                Ok(g) => g,
                Err(mut g) => {
                    g.waiting.remove(&serial);
                    return Err(CallError::Timeout);
                }
            };
        }
    }

    /// Calls a method through zbus's own pending-call path (the reply wakes this thread
    /// directly, without the pump), waiting as long as the bus lets it.
    fn call_direct<B>(
        &self,
        dest: &str,
        path: &str,
        iface: &str,
        member: &str,
        body: &B,
    ) -> Result<Message, CallError>
    where
        B: serde::Serialize + zbus::zvariant::DynamicType,
    {
        zbus::block_on(
            self.conn
                .call_method(Some(dest), path, Some(iface), member, body),
        )
        .map_err(call_error)
    }

    fn stop(&mut self) {
        let _ = zbus::block_on(self.conn.clone().close());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Pump {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Why a method call failed.
#[derive(Debug)]
enum CallError {
    /// The peer (or the bus) is gone.
    Gone,
    Full,
    TypeMismatch(String),
    TooLarge(String),
    Timeout,
    Other(String),
}

/// The `CallError` for what zbus reports.
fn call_error(e: zbus::Error) -> CallError {
    use zbus::DBusError;
    match e {
        zbus::Error::MethodError(name, text, _) => {
            CallError::from_name(name.as_str(), text.unwrap_or_default())
        }
        zbus::Error::FDO(e) => CallError::from_name(
            e.name().as_str(),
            e.description().unwrap_or_default().to_owned(),
        ),
        zbus::Error::InputOutput(_) => CallError::Gone,
        e => CallError::Other(e.to_string()),
    }
}

impl CallError {
    fn from_name(name: &str, text: String) -> CallError {
        match name {
            "org.freedesktop.DBus.Error.ServiceUnknown"
            | "org.freedesktop.DBus.Error.NameHasNoOwner"
            | "org.freedesktop.DBus.Error.NoReply"
            | "org.freedesktop.DBus.Error.Disconnected"
            | "org.freedesktop.DBus.Error.UnknownObject"
            | ERR_GONE => CallError::Gone,
            ERR_FULL => CallError::Full,
            ERR_TYPE => CallError::TypeMismatch(text),
            ERR_LARGE => CallError::TooLarge(text),
            _ => CallError::Other(format!("{name}: {text}")),
        }
    }
}

/// The pump: drains the connection until it closes.
fn pump(
    conn: Connection,
    mut stream: MessageStream,
    shared: Arc<Shared>,
    names: Names,
    wire: Wire,
    serve: Serve,
) {
    zbus::block_on(async {
        loop {
            let next = stream.next();
            let closed = std::pin::pin!(conn.closed());
            let msg = match futures_util::future::select(next, closed).await {
                futures_util::future::Either::Left((Some(Ok(m)), _)) => m,
                futures_util::future::Either::Left((Some(Err(_)), _)) => continue,
                _ => break,
            };
            handle(&conn, &msg, &shared, &names, &wire, &serve).await;
        }
    });
    shared.lock().lost = true;
    shared.notify();
}

async fn handle(
    conn: &Connection,
    msg: &Message,
    shared: &Shared,
    names: &Names,
    wire: &Wire,
    serve: &Serve,
) {
    let hdr = msg.header();
    match msg.message_type() {
        MsgType::MethodReturn | MsgType::Error => {
            let Some(serial) = hdr.reply_serial() else {
                return;
            };
            let mut st = shared.lock();
            if st.waiting.remove(&serial.get()) {
                let r = if msg.message_type() == MsgType::Error {
                    let name = hdr.error_name().map(|n| n.to_string()).unwrap_or_default();
                    let text = msg.body().deserialize::<String>().unwrap_or_default();
                    Err((name, text))
                } else {
                    Ok(msg.clone())
                };
                st.replies.insert(serial.get(), r);
                shared.notify();
            }
        }
        MsgType::Signal => {
            let (iface, member) = (hdr.interface(), hdr.member());
            let sender = hdr.sender().map(|s| s.to_string());
            // Only the bus itself can send as `org.freedesktop.DBus` (it sets the sender).
            if iface.is_some_and(|i| i == DBUS)
                && member.is_some_and(|m| m == "NameOwnerChanged")
                && sender.as_deref() == Some(DBUS)
            {
                let body = msg.body();
                let Ok((name, _old, new)) = body.deserialize::<(&str, &str, &str)>() else {
                    return;
                };
                if new.is_empty() {
                    let mut st = shared.lock();
                    st.peers.remove(name);
                    if st.publisher.as_deref() == Some(name) || name == names.bus_name {
                        st.publisher = None;
                    }
                    shared.notify();
                }
                return;
            }
            if !matches!(serve, Serve::Subscriber)
                || iface.is_none_or(|i| i != INTERFACE)
                || member.is_none_or(|m| m != "Message")
                || hdr.path().is_none_or(|p| p.as_str() != names.path)
            {
                return;
            }
            let mut st = shared.lock();
            // Signals sent straight to us by someone other than the publisher are not
            // the channel's.
            if st.publisher.is_some() && st.publisher != sender {
                return;
            }
            match msg.body().deserialize::<(u64, Bytes<'_>)>() {
                Ok((fp, payload)) if fp == wire.fingerprint && payload.len() <= wire.max_frame => {
                    st.items.push_back(Item {
                        payload: payload.to_vec(),
                        call: None,
                    });
                    if st.publisher.is_none() {
                        st.publisher = sender;
                        st.publisher_seen = true;
                    }
                }
                Ok((fp, payload)) => {
                    st.foreign.get_or_insert(format!(
                        "a {}-byte message with type fingerprint {fp:#018x} (expected {:#018x}, at most {} bytes)",
                        payload.len(),
                        wire.fingerprint,
                        wire.max_frame
                    ));
                }
                Err(e) => {
                    st.foreign
                        .get_or_insert(format!("a signal that is not (t, ay): {e}"));
                }
            }
            shared.notify();
        }
        MsgType::MethodCall => {
            let reply = serve_call(msg, shared, names, wire, serve);
            let r = match reply {
                Answer::Hello => conn.reply(&hdr, &describe(wire)).await,
                Answer::Empty => conn.reply(&hdr, &()).await,
                Answer::Xml => conn.reply(&hdr, &INTROSPECT).await,
                Answer::Error(name, text) => conn.reply_error(&hdr, name, &text).await,
                Answer::Later => Ok(()),
                Answer::Queue(item) => {
                    // Acknowledged first, then made available: a receiver killed in between
                    // loses an acknowledged message (as a dead receiver loses what it held),
                    // but `recv` never returns one whose sender is told it failed (the bus
                    // answers `NoReply` for a receiver that died before replying).
                    let r = conn.reply(&hdr, &()).await;
                    if r.is_ok() {
                        shared.lock().items.push_back(item);
                        shared.notify();
                    }
                    r
                }
            };
            let _ = r;
        }
    }
}

enum Answer {
    Hello,
    Empty,
    Xml,
    Error(&'static str, String),
    /// A service request: the server answers when it responds.
    Later,
    /// A queued message: answered, then queued (`handle`).
    Queue(Item),
}

fn serve_call(msg: &Message, shared: &Shared, names: &Names, wire: &Wire, serve: &Serve) -> Answer {
    let hdr = msg.header();
    let iface = hdr.interface().map(|i| i.as_str()).unwrap_or("");
    let member = hdr.member().map(|m| m.as_str()).unwrap_or("");
    if hdr.path().is_none_or(|p| p.as_str() != names.path) {
        return Answer::Error(
            "org.freedesktop.DBus.Error.UnknownObject",
            format!("no object at {:?}", hdr.path().map(|p| p.as_str())),
        );
    }
    let sender = hdr.sender().map(|s| s.to_string()).unwrap_or_default();
    match (iface, member) {
        ("org.freedesktop.DBus.Introspectable" | "", "Introspect") => Answer::Xml,
        ("org.freedesktop.DBus.Peer" | "", "Ping") => Answer::Empty,
        (INTERFACE | SERVICE_INTERFACE | "", "Hello")
            if !matches!(serve, Serve::Subscriber | Serve::Caller) =>
        {
            // A peer of our type becomes a tracked peer; either way it learns our type.
            if let Ok((_, enc, fp, _)) = msg.body().deserialize::<(&str, u32, u64, u32)>() {
                if enc == wire.encoding && fp == wire.fingerprint && !sender.is_empty() {
                    let mut st = shared.lock();
                    st.peers.insert(sender);
                    st.ever_greeted = true;
                }
            }
            Answer::Hello
        }
        (INTERFACE | "", "Send") | (SERVICE_INTERFACE | "", "Call") => {
            let (capacity, is_call) = match (serve, member) {
                (Serve::Queue { capacity }, "Send") => (*capacity, false),
                (Serve::Service { capacity, .. }, "Call") => (*capacity, true),
                _ => {
                    return Answer::Error(
                        "org.freedesktop.DBus.Error.UnknownMethod",
                        format!("{iface}.{member} is not served by this end of the channel"),
                    )
                }
            };
            let body = msg.body();
            let (fp, payload) = match body.deserialize::<(u64, Bytes<'_>)>() {
                Ok(b) => b,
                Err(e) => {
                    return Answer::Error(
                        "org.freedesktop.DBus.Error.InvalidArgs",
                        format!("expected (t fingerprint, ay payload): {e}"),
                    )
                }
            };
            if fp != wire.fingerprint {
                return Answer::Error(
                    ERR_TYPE,
                    format!(
                        "this channel carries {} (fingerprint {:#018x}), not fingerprint {fp:#018x}",
                        wire.name, wire.fingerprint
                    ),
                );
            }
            if payload.len() > wire.max_frame {
                return Answer::Error(
                    ERR_LARGE,
                    format!(
                        "{} bytes; this channel takes at most {}",
                        payload.len(),
                        wire.max_frame
                    ),
                );
            }
            let mut st = shared.lock();
            // Only this pump adds items, one call at a time: the room seen here is still
            // there when `handle` queues the message after replying.
            if st.items.len() >= capacity {
                return Answer::Error(ERR_FULL, format!("{capacity} messages are waiting"));
            }
            if !is_call {
                return Answer::Queue(Item {
                    payload: payload.to_vec(),
                    call: None,
                });
            }
            st.items.push_back(Item {
                payload: payload.to_vec(),
                call: Some(msg.clone()),
            });
            shared.notify();
            Answer::Later
        }
        _ => Answer::Error(
            "org.freedesktop.DBus.Error.UnknownMethod",
            format!("no method {iface}.{member}"),
        ),
    }
}

/// Greets the owner of `names` (waiting up to `timeout` for one) and checks its type.
/// Returns its description's largest frame and its unique connection name.
fn greet(
    pump: &Pump,
    names: &Names,
    iface: &str,
    wire: &Wire,
    timeout: Duration,
) -> Result<(usize, String), LinkOpenError> {
    let deadline = Instant::now() + timeout;
    loop {
        let r = pump.call(
            &names.bus_name,
            &names.path,
            iface,
            "Hello",
            &describe(wire),
            Some(deadline.max(Instant::now() + Duration::from_secs(5))),
        );
        match r {
            Ok(reply) => {
                let (name, enc, fp, max) = reply
                    .body()
                    .deserialize::<(String, u32, u64, u32)>()
                    .map_err(|e| LinkOpenError::Invalid(format!("a bad Hello reply: {e}")))?;
                if enc != wire.encoding || fp != wire.fingerprint {
                    return Err(LinkOpenError::TypeMismatch(type_desc(&name, enc, fp)));
                }
                // The bus sets the sender of every message it routes.
                let owner = reply.header().sender().map(|s| s.to_string());
                let owner = owner.ok_or_else(|| {
                    LinkOpenError::Invalid("a Hello reply without a sender".to_owned())
                })?;
                return Ok((max as usize, owner));
            }
            Err(CallError::Gone) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(CallError::Gone | CallError::Timeout) => {
                return Err(LinkOpenError::NotFound(names.bus_name.clone()));
            }
            Err(e) => {
                return Err(LinkOpenError::Io(
                    "Hello",
                    std::io::Error::other(format!("{e:?}")),
                ))
            }
        }
    }
}

/// The receiving end of a queue channel: owns the well-known name.
pub(crate) struct QueueReceiver {
    pump: Pump,
    capacity: usize,
}

impl QueueReceiver {
    pub(crate) fn open(
        bus: &DBusBus,
        names: &Names,
        wire: &Wire,
        capacity: usize,
    ) -> Result<Self, LinkOpenError> {
        let conn = connect(bus)?;
        let capacity = capacity.max(1);
        let pump = Pump::start(conn, names, *wire, Serve::Queue { capacity })?;
        watch_owners(&pump.conn)?;
        own_name(&pump.conn, &names.bus_name, "receiver")?;
        Ok(QueueReceiver { pump, capacity })
    }
}

/// Takes the next queued payload into `buf`; `Disconnected` once `gone(state)` says so and
/// the queue is empty.
fn take(
    shared: &Shared,
    buf: &mut Vec<u8>,
    wait: Wait,
    gone: impl Fn(&State) -> bool,
) -> Result<Option<Message>, LinkError> {
    let mut st = shared.lock();
    loop {
        if let Some(item) = st.items.pop_front() {
            buf.clear();
            buf.extend_from_slice(&item.payload);
            return Ok(item.call);
        }
        if let Some(reason) = st.foreign.take() {
            return Err(LinkError::Corrupt(format!("D-Bus channel: {reason}")));
        }
        if st.lost || gone(&st) {
            return Err(LinkError::Disconnected);
        }
        st = shared.wait(st, wait).map_err(|_| wait.expired())?;
    }
}

impl QueueReceiver {
    /// Every sender that greeted this receiver is gone.
    fn gone(st: &State) -> bool {
        st.ever_greeted && st.peers.is_empty()
    }
}

impl Link for QueueReceiver {
    fn send_frame(&mut self, _bytes: &[u8], _tag: u32, _wait: Wait) -> Result<(), LinkError> {
        unreachable!("a receiving link does not send")
    }

    fn recv_frame(&mut self, buf: &mut Vec<u8>, wait: Wait) -> Result<(), LinkError> {
        take(&self.pump.shared, buf, wait, Self::gone).map(|_| ())
    }

    fn is_connected(&mut self) -> bool {
        !self.pump.shared.lock().peers.is_empty()
    }

    fn poll_fd(&self) -> Option<Arc<dyn std::os::fd::AsFd + Send + Sync>> {
        Some(self.pump.shared.event.clone())
    }

    fn prepare_poll(&mut self) -> bool {
        self.pump.shared.prepare_poll(Self::gone)
    }

    fn kind(&self) -> TransportKind {
        TransportKind::DBus
    }

    fn capacity(&self) -> Option<usize> {
        Some(self.capacity)
    }
}

/// The sending end of a queue channel: method calls to the receiver it greeted.
pub(crate) struct QueueSender {
    pump: Pump,
    names: Names,
    /// The unique connection name of the receiver greeted at open. Messages go there, not
    /// to the well-known name: a receiver that took the name after that one died never
    /// learnt of this sender (no `Hello`), so it would never see it leave. Unique names are
    /// never reused: once the greeted receiver is gone, every send is `Disconnected`.
    receiver: String,
    wire: Wire,
    max_frame: usize,
}

impl QueueSender {
    pub(crate) fn open(
        bus: &DBusBus,
        names: &Names,
        wire: &Wire,
        timeout: Duration,
    ) -> Result<Self, LinkOpenError> {
        let conn = connect(bus)?;
        // The pump answers nothing here, but its thread drives the connection, which
        // measured faster than leaving that to zbus's helper thread.
        let pump = Pump::start(conn, names, *wire, Serve::Caller)?;
        let (theirs, receiver) = greet(&pump, names, INTERFACE, wire, timeout)?;
        Ok(QueueSender {
            pump,
            names: names.clone(),
            receiver,
            wire: *wire,
            max_frame: wire.max_frame.min(theirs).min(MAX_PAYLOAD),
        })
    }

    pub(crate) fn max_frame(&self) -> usize {
        self.max_frame
    }
}

fn link_error(e: CallError) -> LinkError {
    match e {
        CallError::Gone => LinkError::Disconnected,
        CallError::Full => LinkError::WouldBlock,
        CallError::Timeout => LinkError::Timeout,
        CallError::TooLarge(t) => LinkError::Corrupt(format!("the peer refused the size: {t}")),
        CallError::TypeMismatch(t) => LinkError::Corrupt(format!("the peer refused the type: {t}")),
        CallError::Other(t) => LinkError::Corrupt(format!("D-Bus call failed: {t}")),
    }
}

/// Retries `attempt` while it reports `Full`, backing off up to 10 ms, until `wait` runs out.
fn retry_full(
    wait: Wait,
    mut attempt: impl FnMut() -> Result<(), CallError>,
) -> Result<(), LinkError> {
    let mut pause = Duration::from_micros(50);
    loop {
        match attempt() {
            Ok(()) => return Ok(()),
            Err(CallError::Full) => {
                let Some(slice) = wait.slice(pause) else {
                    return Err(wait.expired());
                };
                std::thread::sleep(slice);
                pause = (pause * 2).min(Duration::from_millis(10));
            }
            Err(e) => return Err(link_error(e)),
        }
    }
}

impl Link for QueueSender {
    fn send_frame(&mut self, bytes: &[u8], _tag: u32, wait: Wait) -> Result<(), LinkError> {
        if bytes.len() > self.max_frame {
            return Err(LinkError::TooLarge {
                max: self.max_frame,
            });
        }
        let body = (self.wire.fingerprint, Bytes::new(bytes));
        // Each call waits for its answer: the receiver answers at once (queued or full), so
        // a message is never both handed back and delivered.
        retry_full(wait, || {
            self.pump
                .call_direct(&self.receiver, &self.names.path, INTERFACE, "Send", &body)
                .map(|_| ())
        })
    }

    fn recv_frame(&mut self, _buf: &mut Vec<u8>, _wait: Wait) -> Result<(), LinkError> {
        unreachable!("a sending link does not receive")
    }

    fn is_connected(&mut self) -> bool {
        call_bus::<_, bool>(&self.pump.conn, "NameHasOwner", &(self.receiver.as_str(),))
            .unwrap_or(false)
    }

    fn kind(&self) -> TransportKind {
        TransportKind::DBus
    }
}

/// The sending end of a broadcast channel: owns the name, emits signals.
pub(crate) struct Publisher {
    pump: Pump,
    names: Names,
    wire: Wire,
}

impl Publisher {
    pub(crate) fn open(bus: &DBusBus, names: &Names, wire: &Wire) -> Result<Self, LinkOpenError> {
        let conn = connect(bus)?;
        let pump = Pump::start(conn, names, *wire, Serve::Publisher)?;
        own_name(&pump.conn, &names.bus_name, "sender")?;
        Ok(Publisher {
            pump,
            names: names.clone(),
            wire: *wire,
        })
    }
}

impl Link for Publisher {
    fn send_frame(&mut self, bytes: &[u8], _tag: u32, _wait: Wait) -> Result<(), LinkError> {
        if bytes.len() > self.wire.max_frame.min(MAX_PAYLOAD) {
            return Err(LinkError::TooLarge {
                max: self.wire.max_frame.min(MAX_PAYLOAD),
            });
        }
        let body = (self.wire.fingerprint, Bytes::new(bytes));
        zbus::block_on(self.pump.conn.emit_signal(
            None::<&str>,
            self.names.path.as_str(),
            INTERFACE,
            "Message",
            &body,
        ))
        .map_err(|e| match e {
            zbus::Error::InputOutput(_) => LinkError::Disconnected,
            e => LinkError::Corrupt(format!("emitting the signal failed: {e}")),
        })
    }

    fn recv_frame(&mut self, _buf: &mut Vec<u8>, _wait: Wait) -> Result<(), LinkError> {
        unreachable!("a sending link does not receive")
    }

    fn is_connected(&mut self) -> bool {
        !self.pump.conn.is_closed()
    }

    fn kind(&self) -> TransportKind {
        TransportKind::DBus
    }
}

/// A receiving end of a broadcast channel: subscribed to the publisher's signals.
pub(crate) struct Subscriber {
    pump: Pump,
}

impl Subscriber {
    pub(crate) fn open(bus: &DBusBus, names: &Names, wire: &Wire) -> Result<Self, LinkOpenError> {
        let conn = connect(bus)?;
        let pump = Pump::start(conn, names, *wire, Serve::Subscriber)?;
        watch_owners(&pump.conn)?;
        let rule = format!(
            "type='signal',sender='{}',path='{}',interface='{INTERFACE}',member='Message'",
            names.bus_name, names.path
        );
        call_bus::<_, ()>(&pump.conn, "AddMatch", &(rule.as_str(),)).map_err(io_err("AddMatch"))?;
        // A publisher that is there already: check its type, and remember it.
        match greet(&pump, names, INTERFACE, wire, Duration::ZERO) {
            Ok(_) => {
                if let Ok(owner) =
                    call_bus::<_, String>(&pump.conn, "GetNameOwner", &(names.bus_name.as_str(),))
                {
                    let mut st = pump.shared.lock();
                    st.publisher = Some(owner);
                    st.publisher_seen = true;
                }
            }
            Err(LinkOpenError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
        Ok(Subscriber { pump })
    }
}

impl Subscriber {
    /// The publisher this subscriber saw is gone.
    fn gone(st: &State) -> bool {
        st.publisher_seen && st.publisher.is_none()
    }
}

impl Link for Subscriber {
    fn send_frame(&mut self, _bytes: &[u8], _tag: u32, _wait: Wait) -> Result<(), LinkError> {
        unreachable!("a receiving link does not send")
    }

    fn recv_frame(&mut self, buf: &mut Vec<u8>, wait: Wait) -> Result<(), LinkError> {
        take(&self.pump.shared, buf, wait, Self::gone).map(|_| ())
    }

    fn is_connected(&mut self) -> bool {
        self.pump.shared.lock().publisher.is_some()
    }

    fn poll_fd(&self) -> Option<Arc<dyn std::os::fd::AsFd + Send + Sync>> {
        Some(self.pump.shared.event.clone())
    }

    fn prepare_poll(&mut self) -> bool {
        self.pump.shared.prepare_poll(Self::gone)
    }

    fn kind(&self) -> TransportKind {
        TransportKind::DBus
    }
}

/// Why a service operation failed.
#[derive(Debug)]
pub(crate) enum ServiceError {
    Gone,
    Timeout,
    Full,
    Refused(String),
    Other(String),
}

impl From<CallError> for ServiceError {
    fn from(e: CallError) -> Self {
        match e {
            CallError::Gone => ServiceError::Gone,
            CallError::Timeout => ServiceError::Timeout,
            CallError::Full => ServiceError::Full,
            CallError::TypeMismatch(t) | CallError::TooLarge(t) => ServiceError::Refused(t),
            CallError::Other(t) => ServiceError::Other(t),
        }
    }
}

/// A pending request: the payload and the call to answer.
pub(crate) struct PendingCall {
    pub(crate) payload: Vec<u8>,
    call: Message,
}

impl PendingCall {
    /// The caller's id: the number of its unique bus name (`:1.42` is 42).
    pub(crate) fn caller_id(&self) -> u64 {
        let hdr = self.call.header();
        hdr.sender()
            .and_then(|s| s.as_str().rsplit('.').next().map(str::to_owned))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }
}

/// The server of a request-response service: owns the name, answers `Call`.
pub(crate) struct ServiceServer {
    pump: Pump,
    response: Wire,
}

impl ServiceServer {
    pub(crate) fn open(
        bus: &DBusBus,
        names: &Names,
        request: &Wire,
        response: &Wire,
        capacity: usize,
    ) -> Result<Self, LinkOpenError> {
        let conn = connect(bus)?;
        let serve = Serve::Service {
            capacity: capacity.max(1),
        };
        let pump = Pump::start(conn, names, *request, serve)?;
        watch_owners(&pump.conn)?;
        own_name(&pump.conn, &names.bus_name, "receiver")?;
        Ok(ServiceServer {
            pump,
            response: *response,
        })
    }

    /// Waits for the next request; `Err(Gone)` once every client that greeted left.
    pub(crate) fn recv(&self, wait: Wait) -> Result<PendingCall, LinkError> {
        let mut payload = Vec::new();
        let call = take(&self.pump.shared, &mut payload, wait, |st| {
            st.ever_greeted && st.peers.is_empty()
        })?;
        Ok(PendingCall {
            payload,
            call: call.expect("service items are calls"),
        })
    }

    /// Answers `pending` with the encoded `response`; `Err(Gone)` if the caller has left
    /// (the bus would drop the answer). D-Bus does not confirm delivery, so a caller that
    /// leaves while the answer travels is not reported.
    pub(crate) fn respond(
        &self,
        pending: &PendingCall,
        response: &[u8],
    ) -> Result<(), ServiceError> {
        let hdr = pending.call.header();
        let caller = hdr.sender().map(|s| s.to_string()).unwrap_or_default();
        if !caller.is_empty()
            && !call_bus::<_, bool>(&self.pump.conn, "NameHasOwner", &(caller.as_str(),))
                .unwrap_or(true)
        {
            return Err(ServiceError::Gone);
        }
        let body = (self.response.fingerprint, Bytes::new(response));
        zbus::block_on(self.pump.conn.reply(&hdr, &body)).map_err(|e| match e {
            zbus::Error::InputOutput(_) => ServiceError::Gone,
            e => ServiceError::Other(e.to_string()),
        })
    }
}

/// A client of a request-response service.
pub(crate) struct ServiceClient {
    pump: Pump,
    names: Names,
    request: Wire,
    response: Wire,
}

impl ServiceClient {
    pub(crate) fn open(
        bus: &DBusBus,
        names: &Names,
        request: &Wire,
        response: &Wire,
        timeout: Duration,
    ) -> Result<Self, LinkOpenError> {
        let conn = connect(bus)?;
        let pump = Pump::start(conn, names, *request, Serve::Caller)?;
        greet(&pump, names, SERVICE_INTERFACE, request, timeout)?;
        Ok(ServiceClient {
            pump,
            names: names.clone(),
            request: *request,
            response: *response,
        })
    }

    /// Sends `request` and waits until `deadline` for the response, which lands in `buf`.
    pub(crate) fn call(
        &self,
        request: &[u8],
        deadline: Instant,
        buf: &mut Vec<u8>,
    ) -> Result<(), ServiceError> {
        let body = (self.request.fingerprint, Bytes::new(request));
        let mut reply = None;
        retry_full(Wait::Until(deadline), || {
            reply = Some(self.pump.call(
                &self.names.bus_name,
                &self.names.path,
                SERVICE_INTERFACE,
                "Call",
                &body,
                Some(deadline),
            )?);
            Ok(())
        })
        .map_err(|e| match e {
            LinkError::Disconnected => ServiceError::Gone,
            LinkError::Timeout | LinkError::WouldBlock => ServiceError::Timeout,
            e => ServiceError::Other(e.to_string()),
        })?;
        let reply = reply.expect("set on success");
        let body = reply.body();
        let (fp, payload) = body
            .deserialize::<(u64, Bytes<'_>)>()
            .map_err(|e| ServiceError::Other(format!("a bad Call reply: {e}")))?;
        if fp != self.response.fingerprint {
            return Err(ServiceError::Refused(format!(
                "the response has type fingerprint {fp:#018x}, expected {} ({:#018x})",
                self.response.name, self.response.fingerprint
            )));
        }
        buf.clear();
        buf.extend_from_slice(&payload);
        Ok(())
    }

    /// Whether the service has a server now.
    pub(crate) fn server_present(&self) -> bool {
        call_bus::<_, bool>(
            &self.pump.conn,
            "NameHasOwner",
            &(self.names.bus_name.as_str(),),
        )
        .unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_documented_mapping() {
        let n = Names::for_object("shmbus.calc").unwrap();
        assert_eq!(n.bus_name, "org.shmbus.calc");
        assert_eq!(n.path, "/org/shmbus/calc");
        let n = Names::for_object("shmbus.a-b_c.9x").unwrap();
        assert_eq!(n.bus_name, "org.shmbus.a_2db_5fc._39x");
        assert_eq!(n.path, "/org/shmbus/a_2db_5fc/_39x");
        // Different channels never share names.
        assert_ne!(
            Names::for_object("shmbus.a_2d").unwrap(),
            Names::for_object("shmbus.a-").unwrap()
        );
        assert!(matches!(
            Names::for_object("shmbus.x."),
            Err(LinkOpenError::Invalid(_))
        ));
        assert!(matches!(
            Names::for_object(&"-".repeat(100)),
            Err(LinkOpenError::Invalid(_))
        ));
    }
}
