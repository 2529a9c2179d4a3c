//! Carries shmbus channels across machines over [Eclipse Zenoh](https://zenoh.io).
//!
//! A [`Bridge`] runs one Zenoh session (peer or client, TCP) and, per channel:
//!
//! * **to Zenoh**: attaches to the local channel as a [`RawReceiver`] and publishes every
//!   message on the channel's key (`shmbus/<channel>` by default). In a broadcast channel
//!   the bridge is one more subscriber and takes nothing from anybody; in a queue channel it
//!   is one more competing consumer (use it when the consumers are on the other machine).
//! * **from Zenoh**: subscribes to the key and writes each sample into the local channel as
//!   a [`RawSender`], so local processes read it with the ordinary typed
//!   [`Receiver`](shmbus::Receiver).
//!
//! The bridge attaches to channels that exist: their local users create them with their
//! types (it waits for a missing channel and attaches when it appears). The payload on
//! Zenoh is the encoded message, the attachment its type fingerprint ([`wire`] has the
//! layout), so any Zenoh program can publish or subscribe to a bridged channel.
//!
//! ```no_run
//! let bridge = shmbus_bridge::Bridge::builder()
//!     .to_zenoh("ticks")
//!     .from_zenoh("orders")
//!     .listen("tcp/0.0.0.0:7447")
//!     .multicast(false)
//!     .start()?;
//! // ... runs in its own threads until dropped
//! println!("{:?}", bridge.stats());
//! # Ok::<(), shmbus_bridge::BridgeError>(())
//! ```
//!
//! # Back-pressure and loss
//!
//! In a `Block` (lossless) channel the bridge publishes with Zenoh's
//! `CongestionControl::Block`, and it reads the channel only while a subscriber on Zenoh
//! matches the key: with nobody listening (the other side is not up yet, or it died), the
//! messages stay in the local ring and local senders wait, as they would for a slow local
//! receiver. In a `DropOldest` channel it publishes with `CongestionControl::Drop` and
//! always reads; what it missed because it fell behind is counted in its receiver entry's
//! `lagged` counter in the channel (`shmbus stat`) and in [`RouteStats::lagged`]. Messages
//! in flight on the network when a bridge process dies are lost: Zenoh pub/sub is not
//! stored and forwarded.
//!
//! # No echo
//!
//! Messages a bridge writes into a channel are marked *forwarded* in their slot
//! ([`RawSender::set_forwarded`]); no bridge publishes a forwarded message again, and a
//! bridge's subscriptions ignore its own session's publications. So both directions of one
//! channel can be bridged on every machine without messages coming back. The other side of
//! this rule: a channel does not relay what it received from Zenoh to further machines
//! (Zenoh routers do that).
//!
//! # Threads
//!
//! Zenoh runs its own tokio runtime; the bridge drives it through the blocking API from
//! plain threads, one per route, so it can be embedded in any program (not from inside a
//! tokio current-thread runtime, which Zenoh refuses).

mod config;
pub mod wire;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use shmbus::inspect::{InspectError, Observer, RawReceiver, RawRecvError, RawSendError, RawSender};
use shmbus::{OpenError, Options};
use zenoh::qos::CongestionControl;
use zenoh::sample::Locality;
use zenoh::Wait;

pub use config::{Mode, ZenohOptions};
pub use wire::{Attachment, AttachmentError};

/// How often a route checks whether the bridge is stopping while it waits.
const POLL: Duration = Duration::from_millis(50);
/// Samples buffered between Zenoh and a from-Zenoh route's thread. When the local channel is
/// full the buffer fills, then Zenoh stops reading the connection and a blocking publisher
/// on the other side waits.
const FIFO: usize = 1024;

/// Why a bridge did not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BridgeError {
    /// A Zenoh configuration value or file was refused.
    #[error("zenoh configuration: {what}: {reason}")]
    Config {
        /// The setting.
        what: String,
        /// Zenoh's message.
        reason: String,
    },
    /// The Zenoh session did not open (e.g. a listen endpoint in use).
    #[error("opening the zenoh session: {0}")]
    Session(String),
    /// A route names an invalid channel or key.
    #[error("route {route:?}: {reason}")]
    Route {
        /// The route as given.
        route: String,
        /// What is wrong with it.
        reason: String,
    },
    /// No routes at all.
    #[error("nothing to bridge: give at least one channel to or from Zenoh")]
    NoRoutes,
}

/// One bridged channel: a local channel name and the Zenoh key it maps to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The local channel.
    pub channel: String,
    /// The Zenoh key expression; `None` for `<key prefix>/<channel>`.
    pub key: Option<String>,
}

impl std::str::FromStr for Route {
    type Err = String;
    /// `channel` or `channel=key/expr`.
    fn from_str(s: &str) -> Result<Route, String> {
        let (channel, key) = match s.split_once('=') {
            Some((c, k)) => (c, Some(k.to_owned())),
            None => (s, None),
        };
        if channel.is_empty() {
            return Err(format!("{s:?}: empty channel name"));
        }
        Ok(Route {
            channel: channel.to_owned(),
            key,
        })
    }
}

/// Counters of one route, since the bridge started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RouteStats {
    /// To Zenoh: messages published. From Zenoh: messages written into the channel.
    pub messages: u64,
    /// To Zenoh: forwarded messages not published again (see "No echo").
    pub skipped_forwarded: u64,
    /// To Zenoh: messages of a `DropOldest` channel overwritten before the bridge read them.
    pub lagged: u64,
    /// From Zenoh: samples refused (no or bad attachment, another type, wrong size).
    pub rejected: u64,
    /// From Zenoh: samples dropped because a queue channel had no receiver left.
    pub undeliverable: u64,
    /// Times the route attached to its local channel.
    pub attached: u64,
}

#[derive(Default)]
struct Counters {
    messages: AtomicU64,
    skipped_forwarded: AtomicU64,
    lagged: AtomicU64,
    rejected: AtomicU64,
    undeliverable: AtomicU64,
    attached: AtomicU64,
    /// Set once the route has tried to attach the first time.
    tried: AtomicBool,
}

impl Counters {
    fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    fn snapshot(&self) -> RouteStats {
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
        RouteStats {
            messages: l(&self.messages),
            skipped_forwarded: l(&self.skipped_forwarded),
            lagged: l(&self.lagged),
            rejected: l(&self.rejected),
            undeliverable: l(&self.undeliverable),
            attached: l(&self.attached),
        }
    }
}

/// Builds a [`Bridge`]; setters take `&mut self` and chain.
#[derive(Debug, Clone)]
pub struct BridgeBuilder {
    zenoh: ZenohOptions,
    to_zenoh: Vec<Route>,
    from_zenoh: Vec<Route>,
    key_prefix: String,
    shm_prefix: String,
}

impl Default for BridgeBuilder {
    fn default() -> Self {
        BridgeBuilder {
            zenoh: ZenohOptions::default(),
            to_zenoh: Vec::new(),
            from_zenoh: Vec::new(),
            key_prefix: "shmbus".into(),
            shm_prefix: shmbus::DEFAULT_PREFIX.into(),
        }
    }
}

impl BridgeBuilder {
    /// Publishes local channel `route` (`name` or `name=key/expr`) on Zenoh.
    ///
    /// # Panics
    ///
    /// If `route` has an empty channel name.
    pub fn to_zenoh(&mut self, route: &str) -> &mut Self {
        self.to_zenoh
            .push(route.parse().expect("a route needs a channel name"));
        self
    }

    /// Delivers what Zenoh publishes on the key of `route` (`name` or `name=key/expr`) into
    /// local channel `name`.
    ///
    /// # Panics
    ///
    /// If `route` has an empty channel name.
    pub fn from_zenoh(&mut self, route: &str) -> &mut Self {
        self.from_zenoh
            .push(route.parse().expect("a route needs a channel name"));
        self
    }

    /// Adds a parsed route in either direction.
    pub fn route(&mut self, to_zenoh: bool, route: Route) -> &mut Self {
        if to_zenoh {
            self.to_zenoh.push(route);
        } else {
            self.from_zenoh.push(route);
        }
        self
    }

    /// All Zenoh settings at once.
    pub fn zenoh(&mut self, options: ZenohOptions) -> &mut Self {
        self.zenoh = options;
        self
    }

    /// Adds a listen endpoint (`tcp/0.0.0.0:7447`).
    pub fn listen(&mut self, endpoint: &str) -> &mut Self {
        self.zenoh.listen.push(endpoint.to_owned());
        self
    }

    /// Adds a connect endpoint (`tcp/10.0.0.2:7447`).
    pub fn connect(&mut self, endpoint: &str) -> &mut Self {
        self.zenoh.connect.push(endpoint.to_owned());
        self
    }

    /// Peer (default) or client.
    pub fn mode(&mut self, mode: Mode) -> &mut Self {
        self.zenoh.mode = Some(mode);
        self
    }

    /// Multicast scouting on or off (Zenoh's default is on).
    pub fn multicast(&mut self, on: bool) -> &mut Self {
        self.zenoh.multicast = Some(on);
        self
    }

    /// A Zenoh configuration file; the other Zenoh settings override it.
    pub fn config_file(&mut self, path: impl Into<std::path::PathBuf>) -> &mut Self {
        self.zenoh.config_file = Some(path.into());
        self
    }

    /// The first part of every default key (`shmbus`).
    pub fn key_prefix(&mut self, prefix: &str) -> &mut Self {
        self.key_prefix = prefix.to_owned();
        self
    }

    /// The local channels' [`Options::prefix`] (`shmbus.`).
    pub fn shm_prefix(&mut self, prefix: &str) -> &mut Self {
        self.shm_prefix = prefix.to_owned();
        self
    }

    /// Opens the Zenoh session and starts one thread per route.
    ///
    /// # Errors
    ///
    /// [`BridgeError`]: no routes, an invalid channel name or key, a configuration Zenoh
    /// refuses, or a session that does not open.
    pub fn start(&self) -> Result<Bridge, BridgeError> {
        Bridge::start(self)
    }
}

/// A running bridge: a Zenoh session and one thread per route. Dropping it stops them.
pub struct Bridge {
    id: u64,
    session: zenoh::Session,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    stats: Vec<(String, bool, Arc<Counters>)>,
}

/// What a route's thread needs.
struct Ctx {
    id: u64,
    session: zenoh::Session,
    stop: Arc<AtomicBool>,
    channel: String,
    key: String,
    options: Options,
    shm_prefix: String,
    counters: Arc<Counters>,
}

impl Bridge {
    /// A builder with no routes, peer mode and Zenoh's default endpoints.
    pub fn builder() -> BridgeBuilder {
        BridgeBuilder::default()
    }

    fn start(b: &BridgeBuilder) -> Result<Bridge, BridgeError> {
        if b.to_zenoh.is_empty() && b.from_zenoh.is_empty() {
            return Err(BridgeError::NoRoutes);
        }
        let mut options = Options::new();
        options.prefix(&b.shm_prefix);
        let mut routes = Vec::new();
        for (to, r) in b
            .to_zenoh
            .iter()
            .map(|r| (true, r))
            .chain(b.from_zenoh.iter().map(|r| (false, r)))
        {
            let bad = |reason: String| BridgeError::Route {
                route: r.channel.clone(),
                reason,
            };
            // The channel name must be valid (checked by the library on a dry run).
            if let Err(e @ InspectError::InvalidName { .. }) =
                Observer::open(&b.shm_prefix, &r.channel)
            {
                return Err(bad(e.to_string()));
            }
            let key = r
                .key
                .clone()
                .unwrap_or_else(|| wire::key_of(&b.key_prefix, &r.channel));
            let ke = zenoh::key_expr::KeyExpr::try_from(key.clone())
                .map_err(|e| bad(format!("key {key:?}: {e}")))?;
            if to && ke.is_wild() {
                return Err(bad(format!(
                    "key {key:?} has wildcards: a channel is published on one key"
                )));
            }
            routes.push((to, r.channel.clone(), key));
        }
        let config = b.zenoh.to_config()?;
        let session = zenoh::open(config)
            .wait()
            .map_err(|e| BridgeError::Session(e.to_string()))?;
        let id = bridge_id(&session);
        let stop = Arc::new(AtomicBool::new(false));
        let mut bridge = Bridge {
            id,
            session: session.clone(),
            stop: Arc::clone(&stop),
            threads: Vec::new(),
            stats: Vec::new(),
        };
        for (to, channel, key) in routes {
            let counters = Arc::new(Counters::default());
            let ctx = Ctx {
                id,
                session: session.clone(),
                stop: Arc::clone(&stop),
                channel: channel.clone(),
                key,
                options: options.clone(),
                shm_prefix: b.shm_prefix.clone(),
                counters: Arc::clone(&counters),
            };
            let name = format!("{}-{channel}", if to { "to-zenoh" } else { "from-zenoh" });
            let thread = std::thread::Builder::new()
                .name(name)
                .spawn(move || if to { to_zenoh(ctx) } else { from_zenoh(ctx) })
                .map_err(|e| BridgeError::Session(format!("spawning a route thread: {e}")))?;
            bridge.threads.push(thread);
            bridge.stats.push((channel, to, counters));
        }
        // Return once every route has tried to attach to its channel: a channel that exists
        // now is bridged from here on (in a broadcast channel, a subscriber sees only what
        // is sent after it joined).
        for (_, _, c) in &bridge.stats {
            while !c.tried.load(Ordering::Acquire) {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        tracing::info!(id, zid = %bridge.session.zid(), "bridge started");
        Ok(bridge)
    }

    /// This bridge's id, carried in the attachment of what it publishes.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The Zenoh session (to publish or subscribe more, or to read its info).
    pub fn session(&self) -> &zenoh::Session {
        &self.session
    }

    /// Counters per route: `(channel, to_zenoh, stats)`.
    pub fn stats(&self) -> Vec<(String, bool, RouteStats)> {
        self.stats
            .iter()
            .map(|(c, to, s)| (c.clone(), *to, s.snapshot()))
            .collect()
    }

    /// Stops the routes and closes the session.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        let _ = self.session.close().wait();
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A nonzero id for this bridge: a hash of its Zenoh session id (unique per session).
fn bridge_id(session: &zenoh::Session) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    session.zid().to_string().hash(&mut h);
    std::process::id().hash(&mut h);
    h.finish().max(1)
}

/// Waits for local channel `ctx.channel` to exist and attaches with `open`; `None` when the
/// bridge stops first.
fn attach<T>(
    ctx: &Ctx,
    open: impl Fn(&Options, shmbus::MessageInfo) -> Result<T, OpenError>,
) -> Option<(T, shmbus::MessageInfo)> {
    let mut warned: HashSet<String> = HashSet::new();
    while !ctx.stop.load(Ordering::Relaxed) {
        let opened = Observer::open(&ctx.shm_prefix, &ctx.channel)
            .map_err(|e| e.to_string())
            .and_then(|obs| {
                let info = obs.message_info();
                open(&ctx.options, info)
                    .map(|end| (end, info))
                    .map_err(|e| e.to_string())
            });
        // After the attempt: `start` waits for this (an attached receiver already counts).
        ctx.counters.tried.store(true, Ordering::Release);
        match opened {
            Ok(x) => {
                Counters::add(&ctx.counters.attached, 1);
                tracing::info!(channel = ctx.channel, key = ctx.key, "attached");
                return Some(x);
            }
            Err(e) => {
                if warned.insert(e.clone()) {
                    tracing::info!(channel = ctx.channel, "waiting for the channel: {e}");
                }
                std::thread::sleep(POLL);
            }
        }
    }
    None
}

/// A local channel to Zenoh.
fn to_zenoh(ctx: Ctx) {
    while !ctx.stop.load(Ordering::Relaxed) {
        let Some((rx, info)) = attach(&ctx, |o, i| RawReceiver::open(&ctx.channel, o, i)) else {
            return;
        };
        let lossless = !rx.drops_oldest();
        let attachment = Attachment {
            encoding: info.encoding as u8,
            fingerprint: info.fingerprint,
            origin: ctx.id,
            type_name: info.name.to_owned(),
        }
        .encode();
        let publisher = match ctx
            .session
            .declare_publisher(ctx.key.clone())
            // Only other sessions: also what the matching status counts, so the bridge's
            // own subscription to the same key never opens the gate.
            .allowed_destination(Locality::Remote)
            .congestion_control(if lossless {
                CongestionControl::Block
            } else {
                CongestionControl::Drop
            })
            .wait()
        {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(key = ctx.key, "declaring the publisher: {e}");
                std::thread::sleep(POLL);
                continue;
            }
        };
        let mut matching = false;
        let mut checked = Instant::now() - POLL;
        while !ctx.stop.load(Ordering::Relaxed) {
            // Lossless: take a message only when someone on Zenoh will get it. The status
            // is re-read often while nobody matches, and every POLL while somebody does.
            if lossless && (!matching || checked.elapsed() >= POLL) {
                matching = publisher
                    .matching_status()
                    .wait()
                    .map(|s| s.matching())
                    .unwrap_or(false);
                checked = Instant::now();
                if !matching {
                    std::thread::sleep(Duration::from_millis(2));
                    continue;
                }
            }
            match rx.recv_timeout(POLL) {
                Ok(m) if m.forwarded => Counters::add(&ctx.counters.skipped_forwarded, 1),
                Ok(m) => match publisher.put(m.bytes).attachment(attachment.clone()).wait() {
                    Ok(()) => Counters::add(&ctx.counters.messages, 1),
                    Err(e) => tracing::warn!(key = ctx.key, "publishing: {e}"),
                },
                Err(RawRecvError::Timeout) => {}
                Err(RawRecvError::Lagged(n)) => Counters::add(&ctx.counters.lagged, n),
                Err(RawRecvError::Disconnected) => std::thread::sleep(Duration::from_millis(5)),
                Err(e) => {
                    tracing::error!(channel = ctx.channel, "{e}; attaching again");
                    break;
                }
            }
        }
    }
}

/// Zenoh to a local channel.
fn from_zenoh(ctx: Ctx) {
    while !ctx.stop.load(Ordering::Relaxed) {
        let Some((mut tx, info)) = attach(&ctx, |o, i| RawSender::open(&ctx.channel, o, i)) else {
            return;
        };
        tx.set_forwarded(true);
        let subscriber = match ctx
            .session
            .declare_subscriber(ctx.key.clone())
            .allowed_origin(Locality::Remote)
            .with(zenoh::handlers::FifoChannel::new(FIFO))
            .wait()
        {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(key = ctx.key, "declaring the subscriber: {e}");
                std::thread::sleep(POLL);
                continue;
            }
        };
        let mut warned = false;
        'samples: while !ctx.stop.load(Ordering::Relaxed) {
            let sample = match subscriber.recv_timeout(POLL) {
                Ok(Some(s)) => s,
                Ok(None) => continue,
                Err(e) => {
                    tracing::error!(key = ctx.key, "subscriber: {e}");
                    break;
                }
            };
            let checked = sample
                .attachment()
                .ok_or(AttachmentError::Missing)
                .and_then(|a| Attachment::decode(&a.to_bytes()))
                .map_err(|e| e.to_string())
                .and_then(|a| {
                    if a.fingerprint == info.fingerprint {
                        Ok(a)
                    } else {
                        Err(format!(
                            "type {:?} (fingerprint {:#018x}) is not the channel's {:?} ({:#018x})",
                            a.type_name, a.fingerprint, info.name, info.fingerprint
                        ))
                    }
                });
            let attachment = match checked {
                Ok(a) => a,
                Err(e) => {
                    Counters::add(&ctx.counters.rejected, 1);
                    if !warned {
                        warned = true;
                        tracing::warn!(key = %sample.key_expr(), "sample refused: {e}");
                    }
                    continue;
                }
            };
            if attachment.origin == ctx.id {
                continue;
            }
            let bytes = sample.payload().to_bytes();
            loop {
                match tx.send_bytes(&bytes, POLL) {
                    Ok(()) => {
                        Counters::add(&ctx.counters.messages, 1);
                        break;
                    }
                    Err(RawSendError::Timeout) => {
                        if ctx.stop.load(Ordering::Relaxed) {
                            return;
                        }
                    }
                    Err(RawSendError::Disconnected) => {
                        Counters::add(&ctx.counters.undeliverable, 1);
                        break;
                    }
                    Err(RawSendError::Size(e)) => {
                        Counters::add(&ctx.counters.rejected, 1);
                        if !warned {
                            warned = true;
                            tracing::warn!(key = %sample.key_expr(), "sample refused: {e}");
                        }
                        break;
                    }
                    Err(e) => {
                        tracing::error!(channel = ctx.channel, "{e}; attaching again");
                        break 'samples;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn routes_are_checked_before_the_session_opens() {
        use crate::{Bridge, BridgeError};
        let err = |b: &mut crate::BridgeBuilder| match b.start() {
            Err(e) => e,
            Ok(_) => panic!("started"),
        };
        assert!(matches!(err(&mut Bridge::builder()), BridgeError::NoRoutes));
        let e = err(Bridge::builder().to_zenoh("bad/name"));
        assert!(matches!(e, BridgeError::Route { .. }), "{e}");
        let e = err(Bridge::builder().to_zenoh("ticks=site/*/ticks"));
        assert!(e.to_string().contains("wildcards"), "{e}");
        let e = err(Bridge::builder()
            .from_zenoh("ticks")
            .config_file("/nonexistent/zenoh.json5"));
        assert!(matches!(e, BridgeError::Config { .. }), "{e}");
    }
}
