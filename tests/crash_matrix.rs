//! Crash matrix: on every transport, a sender and a receiver process stream checked
//! messages and one of them is SIGKILLed at a random point, many times over.
//!
//! Each transport's test re-runs this binary as a child (the "server", through
//! `common::Harness`); the server forks the sender and receiver processes of each iteration
//! (`common::fork`), kills one of them after a random delay, restarts it where the
//! transport allows, stops the rest cleanly and checks what every process reported on a
//! shared board (written after each operation returned, so it survives the kill):
//!
//! * no message is torn, half-written, from another run or out of order (each message
//!   carries a checksum of its content and its sender's incarnation and sequence number);
//! * every message whose `send` returned `Ok` is delivered: to the surviving receiver when
//!   the sender dies; when the receiver dies, to the restarted receiver, except the one
//!   message the dead receiver held (taken, not yet reported), which counts as delivered to
//!   it, and except on byte-stream transports (pipe, FIFO, sockets), where messages still
//!   in the kernel buffer die with the receiver's end, and on D-Bus, where those the
//!   receiver acknowledged but `recv` had not returned die with it; nothing is delivered
//!   twice;
//! * the survivor's blocking call returns `Disconnected` (the detection time, kill to
//!   `Disconnected`, is measured and printed), and never before the kill;
//! * a restarted process reattaches (to the survivor's channel, or to what the dead
//!   process left when the survivor is gone too), and at the end nothing of the channel is
//!   left: no `/dev/shm` file, System V segment or queue, POSIX queue, presence or lock
//!   file, FIFO or socket.
//!
//! `SHMBUS_CRASH_SECONDS` sets the time per transport (default 2; the soak run in the
//! README uses 600), `SHMBUS_CRASH_SEED` replays a run. The semantics are stated in the
//! README's "Crash matrix" section.

mod common;
#[cfg(feature = "dbus")]
#[path = "common/private_bus.rs"]
mod private_bus;

use std::cell::{Cell, RefCell};
use std::path::PathBuf;
use std::sync::atomic::{
    AtomicU64,
    Ordering::{Acquire, Relaxed, Release},
};
use std::time::{Duration, Instant};

use common::fork::{fork_worker, kill_worker, median_max, now_ns, reap, Board, End, Rng, Zeroed};
use common::{report, Harness};
use nix::unistd::Pid;
use shmbus::{
    Delivery, FileIo, Options, Overflow, Receiver, RecvError, SendError, Sender, Transport,
    WakeStrategy,
};

// ---------------------------------------------------------------------------------------
// The transports

/// What a transport promises when one side dies (see the README's "Crash matrix").
#[derive(Debug, Clone, Copy)]
struct Behaviour {
    /// When the sender dies, the receiver keeps its handle and a restarted sender attaches
    /// to it. Otherwise the receiver ends on `Disconnected` and the next iteration opens
    /// the channel afresh.
    restart_sender: bool,
    /// When the receiver dies, the sender keeps its handle (retrying on `Disconnected`) and
    /// a restarted receiver attaches to it. Otherwise as above.
    restart_receiver: bool,
    /// What becomes of sent messages that the receiver had not taken when it died.
    after_receiver_death: Kept,
    /// The sender learns that the receiver died (a log needs no receiver, a broadcast
    /// publisher no subscriber).
    sender_sees_receiver_death: bool,
    /// `Overflow::DropOldest`: a slow subscriber misses messages (`Lagged`), so only the
    /// order, the integrity and the delivery of the newest message are promised.
    lossy: bool,
}

impl Behaviour {
    /// Whether `victim`, killed, is restarted in place.
    fn restarts(&self, victim: Victim) -> bool {
        match victim {
            Victim::None => false,
            Victim::Sender => self.restart_sender,
            Victim::Receiver => self.restart_receiver,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kept {
    /// They stay in the channel for the next receiver (ring, message queues).
    ForNextReceiver,
    /// They are in a log that every receiver reads from the beginning.
    InLog,
    /// A subscriber that joins starts at the live end (broadcast without history): it gets
    /// everything sent after it attached.
    FromLiveEnd,
    /// They were in the dead end's kernel buffer (byte streams) or in the dead D-Bus
    /// receiver's memory, and are gone. A send that failed was not delivered either.
    Lost,
}

const RING: Behaviour = Behaviour {
    restart_sender: true,
    restart_receiver: true,
    after_receiver_death: Kept::ForNextReceiver,
    sender_sees_receiver_death: true,
    lossy: false,
};
const QUEUE: Behaviour = RING;
const STREAM: Behaviour = Behaviour {
    restart_sender: false,
    restart_receiver: false,
    after_receiver_death: Kept::Lost,
    sender_sees_receiver_death: true,
    lossy: false,
};
/// A publisher needs no subscriber: it goes on sending when the last one dies.
const BROADCAST: Behaviour = Behaviour {
    restart_sender: true,
    restart_receiver: true,
    after_receiver_death: Kept::FromLiveEnd,
    sender_sees_receiver_death: false,
    lossy: false,
};
const DROP_OLDEST: Behaviour = Behaviour {
    lossy: true,
    ..BROADCAST
};
const LOG: Behaviour = Behaviour {
    restart_sender: true,
    restart_receiver: true,
    after_receiver_death: Kept::InLog,
    sender_sees_receiver_death: false,
    lossy: false,
};

/// A D-Bus queue receiver outlives its sender and a restarted sender greets it; a sender
/// is bound to the receiver it greeted, so it ends with it (see the row).
#[cfg(feature = "dbus")]
const DBUS: Behaviour = Behaviour {
    restart_sender: true,
    ..STREAM
};

/// The server's parameter holding the address of the D-Bus row's private bus.
#[cfg(feature = "dbus")]
const DBUS_BUS: &str = "dbus_bus";

/// Where one test's channel lives.
struct Place {
    name: String,
    iteration: u64,
}

impl Place {
    fn path(&self, ext: &str) -> PathBuf {
        std::env::temp_dir().join(format!("shmbus-crash-{}.{ext}", self.name))
    }

    fn log_dir(&self) -> PathBuf {
        self.path(&format!("{}.log", self.iteration))
    }
}

/// One row per transport: its name (which is also its test's name), its behaviour and how
/// to open it. A new transport (D-Bus, say) is one more row; its test is generated from it.
/// A row may carry attributes (`#[cfg(feature = "dbus")]`), applied to all it generates.
macro_rules! transports {
    ($($(#[$attr:meta])* $name:ident: $behaviour:expr, $transport:expr $(, $tweak:expr)?;)*) => {
        const ROWS: &[(&str, Behaviour)] = &[$($(#[$attr])* (stringify!($name), $behaviour)),*];

        fn transport_of(name: &str, at: &Place) -> Option<Transport> {
            let make: &dyn Fn(&Place) -> Option<Transport> = match name {
                $($(#[$attr])* stringify!($name) => &$transport,)*
                other => panic!("no transport {other}"),
            };
            make(at)
        }

        /// The row's own options (delivery mode, wake strategy), if any.
        fn tweak(name: &str, o: &mut Options) {
            match name {
                $($(#[$attr])* stringify!($name) => { $( ($tweak)(o); )? })*
                other => panic!("no transport {other}"),
            }
        }

        $(
            $(#[$attr])*
            #[test]
            fn $name() {
                crash_matrix(stringify!($name));
            }
        )*
    };
}

transports! {
    shm: RING, |_| Some(Transport::SharedMemory);
    sysv_shm: RING, |_| Some(Transport::SysvSharedMemory { key: None });
    pipe: STREAM, |_| None; // made by shmbus::pipe() in each iteration
    fifo: STREAM, |at| Some(Transport::Fifo { path: at.path("fifo") });
    unix: STREAM, |at| Some(Transport::UnixSocket { path: at.path("sock") });
    abstract_socket: STREAM, |at| Some(Transport::AbstractSocket { name: format!("shmbus-crash-{}", at.name) });
    posix_mq: QUEUE, |_| Some(Transport::PosixQueue);
    sysv_mq: QUEUE, |_| Some(Transport::SysvQueue { key: None });
    file: LOG, |at| Some(Transport::File { dir: at.log_dir() });
    // The ring in other configurations: broadcast, and sleeping on other wake strategies.
    shm_broadcast: BROADCAST, |_| Some(Transport::SharedMemory), |o: &mut Options| { o.delivery(Delivery::Broadcast); };
    shm_drop_oldest: DROP_OLDEST, |_| Some(Transport::SharedMemory), |o: &mut Options| { o.delivery(Delivery::Broadcast).overflow(Overflow::DropOldest); };
    shm_eventfd: RING, |_| Some(Transport::SharedMemory), |o: &mut Options| { o.wake(WakeStrategy::EventFd); };
    shm_sysv_sem: RING, |_| Some(Transport::SharedMemory), |o: &mut Options| { o.wake(WakeStrategy::SysvSemaphore); };
    sysv_shm_posix_sem: RING, |_| Some(Transport::SysvSharedMemory { key: None }), |o: &mut Options| { o.wake(WakeStrategy::PosixSemaphore); };
    shm_signal: RING, |_| Some(Transport::SharedMemory), |o: &mut Options| { o.wake(WakeStrategy::signal()); };
    shm_unix_socket_wake: RING, |_| Some(Transport::SharedMemory), |o: &mut Options| { o.wake(WakeStrategy::UnixSocket); };
    // A queue channel on a private `dbus-daemon` started by the test (`DBUS_BUS`). The
    // receiver owns the name, answers each `Send` call and then keeps the message in its
    // own memory (at most `capacity` of them) for `recv`: when it dies, those acknowledged
    // messages (and one answered but not yet kept) die with it, as in a stream's kernel
    // buffer; no message whose send failed is delivered. A restarted sender
    // greets the surviving receiver; a sender is bound to the receiver it greeted (its
    // unique connection name), so it ends when that one dies.
    #[cfg(feature = "dbus")]
    dbus: DBUS, |_| Some(Transport::DBus { bus: shmbus::DBusBus::Address(common::param(DBUS_BUS)) });
}

fn behaviour(name: &str) -> Behaviour {
    ROWS.iter()
        .find(|(n, _)| *n == name)
        .map(|(_, b)| *b)
        .unwrap_or_else(|| panic!("no transport {name}"))
}

fn options(kind: &str, at: &Place) -> Option<Options> {
    let transport = transport_of(kind, at)?;
    let mut o = Options::new();
    o.capacity(8)
        .connect_timeout(Duration::from_secs(10))
        .max_message_size(256)
        .segment_size(16 * 1024)
        .transport(transport);
    // Alternate geometries: one sender and one receiver (a restarted process can attach
    // only if the dead one's entry was reclaimed), and the default table.
    if at.iteration % 2 == 0 {
        o.max_senders(1).max_receivers(1);
        o.file_io(FileIo::ReadWrite);
    }
    tweak(kind, &mut o);
    Some(o)
}

// ---------------------------------------------------------------------------------------
// Messages

/// A message whose every word derives from (iteration, incarnation, sequence number).
#[derive(shmbus::Message, Clone, Copy, Debug, PartialEq)]
#[repr(C)]
struct Msg {
    iteration: u32,
    incarnation: u32,
    seq: u64,
    check: u64,
    body: [u64; 13],
}

impl Msg {
    fn new(iteration: u32, incarnation: u32, seq: u64) -> Msg {
        let mut x = (u64::from(iteration) << 40 ^ u64::from(incarnation) << 32 ^ seq)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            | 1;
        let mut body = [0u64; 13];
        let mut check = 0xCBF2_9CE4_8422_2325u64;
        for word in &mut body {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *word = x;
            check = (check ^ x).wrapping_mul(0x0100_0000_01B3);
        }
        Msg {
            iteration,
            incarnation,
            seq,
            check,
            body,
        }
    }

    fn intact(&self) -> bool {
        *self == Msg::new(self.iteration, self.incarnation, self.seq)
    }
}

// ---------------------------------------------------------------------------------------
// The board the workers report on

const S: usize = 0; // the sender
const R: usize = 1; // the receiver
const S2: usize = 2; // the restarted sender
const R2: usize = 3; // the restarted receiver

/// One worker's reports. Senders: `acked` = number of sends that returned `Ok` (sequence
/// numbers `0..acked`). Receivers, per sender incarnation `i`: `lo[i]` = first sequence
/// number received + 1, `hi[i]` = last received + 1 (0: none), stored after the message was
/// checked, so a message taken but not reported when the receiver died is not counted.
#[repr(C)]
#[derive(Default)]
struct Worker {
    attached: AtomicU64,
    acked: AtomicU64,
    detect_ns: AtomicU64,
    received: AtomicU64,
    torn: AtomicU64,
    foreign: AtomicU64,
    disorder: AtomicU64,
    lo: [AtomicU64; 2],
    hi: [AtomicU64; 2],
    lagged: AtomicU64,
}

#[repr(C)]
#[derive(Default)]
struct Shared {
    stop_tx: AtomicU64,
    stop_rx: AtomicU64,
    workers: [Worker; 4],
}

// SAFETY: `Shared` is atomics and arrays of atomics only; all zeroes is a valid value.
unsafe impl Zeroed for Shared {}

impl Worker {
    fn range(&self, incarnation: usize) -> Option<(u64, u64)> {
        let hi = self.hi[incarnation].load(Acquire);
        if hi == 0 {
            return None;
        }
        let lo = self.lo[incarnation].load(Acquire);
        Some((if lo == 0 { hi - 1 } else { lo - 1 }, hi))
    }

    fn dump(&self) -> String {
        format!(
            "attached {} acked {} detect {} received {} torn {} foreign {} disorder {} ranges {:?} {:?}",
            self.attached.load(Relaxed),
            self.acked.load(Relaxed),
            self.detect_ns.load(Relaxed),
            self.received.load(Relaxed),
            self.torn.load(Relaxed),
            self.foreign.load(Relaxed),
            self.disorder.load(Relaxed),
            self.range(0),
            self.range(1),
        )
    }
}

// ---------------------------------------------------------------------------------------
// Workers (forked by the server)

#[derive(Clone, Copy, PartialEq)]
enum Pace {
    Fast,
    SlowReceiver,
    SlowSender,
}

fn pause(pace: Pace, mine: Pace, n: u64) {
    if pace == mine && n % 8 == 7 {
        std::thread::sleep(Duration::from_micros(100));
    }
}

/// Sends `Msg(iteration, incarnation, 0..)` until told to stop. On `Disconnected` it
/// records the time (first time after a successful send), then ends, or retries the same
/// message until a restarted receiver attaches.
fn sender_worker(
    board: &Shared,
    me: usize,
    iteration: u32,
    incarnation: u32,
    tx: Sender<Msg>,
    b: Behaviour,
    pace: Pace,
) -> i32 {
    let w = &board.workers[me];
    w.attached.store(1, Release);
    let mut had_ok = false;
    let mut seq = 0u64;
    while board.stop_tx.load(Acquire) == 0 {
        let mut msg = Msg::new(iteration, incarnation, seq);
        loop {
            match tx.send(msg) {
                Ok(()) => break,
                Err(SendError::Disconnected(m)) => {
                    if had_ok && w.detect_ns.load(Relaxed) == 0 {
                        w.detect_ns.store(now_ns(), Release);
                    }
                    had_ok = false;
                    if !b.restart_receiver || board.stop_tx.load(Acquire) != 0 {
                        return 0;
                    }
                    std::thread::sleep(Duration::from_micros(100));
                    msg = m;
                }
                Err(e) => {
                    eprintln!("sender {me}: send {seq}: {e}");
                    return 2;
                }
            }
        }
        had_ok = true;
        seq += 1;
        w.acked.store(seq, Release);
        pause(pace, Pace::SlowSender, seq);
    }
    drop(tx);
    0
}

/// Receives and checks messages until `Disconnected` (with a restartable transport: until
/// `Disconnected` after the server said stop).
fn receiver_worker(
    board: &Shared,
    me: usize,
    iteration: u32,
    rx: Receiver<Msg>,
    b: Behaviour,
    pace: Pace,
) -> i32 {
    let w = &board.workers[me];
    w.attached.store(1, Release);
    let mut had_ok = false;
    let mut last_incarnation = 0u32;
    let mut n = 0u64;
    loop {
        let stopping = board.stop_rx.load(Acquire) != 0;
        match rx.recv() {
            Ok(m) => {
                let i = m.incarnation as usize;
                if !m.intact() {
                    w.torn.fetch_add(1, Relaxed);
                } else if m.iteration != iteration || i > 1 {
                    w.foreign.fetch_add(1, Relaxed);
                } else {
                    if m.incarnation < last_incarnation {
                        w.disorder.fetch_add(1, Relaxed);
                    }
                    last_incarnation = m.incarnation;
                    if w.hi[i].load(Relaxed) == 0 {
                        w.lo[i].store(m.seq + 1, Release);
                    } else if w.hi[i].load(Relaxed) != m.seq
                        && !(b.lossy && m.seq > w.hi[i].load(Relaxed))
                    {
                        w.disorder.fetch_add(1, Relaxed);
                    }
                    w.hi[i].store(m.seq + 1, Release);
                }
                drop(m);
                w.received.fetch_add(1, Release);
                had_ok = true;
                n += 1;
                pause(pace, Pace::SlowReceiver, n);
            }
            Err(RecvError::Lagged(n)) if b.lossy => {
                w.lagged.fetch_add(n, Relaxed);
            }
            Err(RecvError::Disconnected) => {
                if had_ok && w.detect_ns.load(Relaxed) == 0 {
                    w.detect_ns.store(now_ns(), Release);
                }
                had_ok = false;
                if stopping || !b.restart_sender {
                    return 0;
                }
                std::thread::sleep(Duration::from_micros(100));
            }
            Err(e) => {
                eprintln!("receiver {me}: recv: {e}");
                return 2;
            }
        }
    }
}

/// With the `Signal` strategy, a worker blocks the wake signal before anything else (a
/// late wake-up must stay pending, not end the process).
fn block_wake_signal(opts: Option<&Options>) {
    if let Some(strategy) = opts.and_then(Options::get_wake) {
        shmbus::block_wake_signal(strategy).expect("blocking the wake signal");
    }
}

// ---------------------------------------------------------------------------------------
// The server: one transport, many iterations

#[derive(Default)]
struct Stats {
    iterations: u64,
    kills_sender: u64,
    kills_receiver: u64,
    early_kills: u64,
    restarts: u64,
    messages: u64,
    held_by_dead_receiver: u64,
    sent_not_acked_delivered: u64,
    lost_with_stream_receiver: u64,
    lagged: u64,
    detect_sender_death_us: Vec<u64>,
    detect_receiver_death_us: Vec<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Victim {
    None,
    Sender,
    Receiver,
}

const PATIENCE: Duration = Duration::from_secs(30);

/// Both ends of an anonymous pipe, made before the workers are forked.
struct PipeEnds {
    tx: RefCell<Option<Sender<Msg>>>,
    rx: RefCell<Option<Receiver<Msg>>>,
}

struct Iteration<'a> {
    kind: &'a str,
    b: Behaviour,
    board: &'a Board<Shared>,
    at: Place,
    opts: Option<Options>,
    pace: Pace,
    /// When the victim was killed (`now_ns`), 0 before.
    killed_at: Cell<u64>,
}

impl Iteration<'_> {
    fn w(&self, i: usize) -> &Worker {
        &self.board.workers[i]
    }

    fn dump(&self) -> String {
        (0..4)
            .map(|i| format!("\n  worker {i}: {}", self.w(i).dump()))
            .collect()
    }

    /// Waits until `cond` holds; fails if one of `running` ends meanwhile, or after
    /// [`PATIENCE`].
    fn wait_for(&self, what: &str, running: &[Pid], cond: impl Fn() -> bool) {
        let start = Instant::now();
        while !cond() {
            for &pid in running {
                if let Some(end) = common::fork::ended(pid) {
                    panic!(
                        "{} iteration {}: worker {pid} ended ({end:?}) while waiting for {what}{}",
                        self.kind,
                        self.at.iteration,
                        self.dump()
                    );
                }
            }
            assert!(
                start.elapsed() < PATIENCE,
                "{} iteration {}: {what} did not happen within {PATIENCE:?}{}",
                self.kind,
                self.at.iteration,
                self.dump()
            );
            std::thread::sleep(Duration::from_micros(100));
        }
    }

    fn spawn_sender(&self, me: usize, incarnation: u32, pipe: Option<&PipeEnds>) -> Pid {
        let (board, b, pace, it) = (self.board, self.b, self.pace, self.at.iteration as u32);
        let (name, opts) = (self.at.name.clone(), self.opts.clone());
        fork_worker(move || {
            block_wake_signal(opts.as_ref());
            // In this worker: keep our end of a pipe, close the other.
            let pre = pipe.and_then(|p| {
                drop(p.rx.take());
                p.tx.take()
            });
            let tx = match pre {
                Some(tx) => tx,
                None => match Sender::<Msg>::open_or_create(&name, opts.as_ref().unwrap()) {
                    Ok(tx) => tx,
                    Err(e) => {
                        eprintln!("sender {me}: open: {e}");
                        return 2;
                    }
                },
            };
            sender_worker(board, me, it, incarnation, tx, b, pace)
        })
    }

    fn spawn_receiver(&self, me: usize, pipe: Option<&PipeEnds>) -> Pid {
        let (board, b, pace, it) = (self.board, self.b, self.pace, self.at.iteration as u32);
        let (name, opts) = (self.at.name.clone(), self.opts.clone());
        fork_worker(move || {
            block_wake_signal(opts.as_ref());
            let pre = pipe.and_then(|p| {
                drop(p.tx.take());
                p.rx.take()
            });
            let rx = match pre {
                Some(rx) => rx,
                None => match Receiver::<Msg>::open_or_create(&name, opts.as_ref().unwrap()) {
                    Ok(rx) => rx,
                    Err(e) => {
                        eprintln!("receiver {me}: open: {e}");
                        return 2;
                    }
                },
            };
            receiver_worker(board, me, it, rx, b, pace)
        })
    }

    fn expect_success(&self, pid: Pid, who: &str) {
        match reap(pid, PATIENCE) {
            End::Exited(0) => {}
            other => panic!(
                "{} iteration {}: {who} ended with {other:?}{}",
                self.kind,
                self.at.iteration,
                self.dump()
            ),
        }
    }

    /// Runs the iteration: start both, kill `victim` after a random delay, restart it if the
    /// transport allows, stop cleanly, check.
    fn run(&self, victim: Victim, rng: &mut Rng, stats: &mut Stats) {
        let pipe = self.opts.is_none().then(|| {
            let (tx, rx) = shmbus::pipe::<Msg>().expect("pipe");
            PipeEnds {
                tx: RefCell::new(Some(tx)),
                rx: RefCell::new(Some(rx)),
            }
        });
        let r = self.spawn_receiver(R, pipe.as_ref());
        if self.b.after_receiver_death == Kept::FromLiveEnd {
            // A subscriber gets what is sent after it joined: let it join first.
            self.wait_for("the subscriber joining", &[r], || {
                self.w(R).attached.load(Acquire) != 0
            });
        }
        let s = self.spawn_sender(S, 0, pipe.as_ref());
        // Each worker kept its end and closed the other; this process closes both, so the
        // survivor of a kill holds the only end left.
        drop(pipe);
        // Sometimes the kill comes early, at any point of opening (creating, initialising,
        // attaching, greeting): where the transport lets the survivor keep its handle.
        if self.b.restarts(victim) && rng.chance(25) {
            std::thread::sleep(Duration::from_micros(rng.below(1500)));
            stats.early_kills += 1;
            return self.early_kill(victim, s, r, rng, stats);
        }
        self.wait_for("the stream starting", &[r, s], || {
            self.w(S).acked.load(Acquire) > 0 && self.w(R).received.load(Acquire) > 0
        });
        std::thread::sleep(Duration::from_micros(rng.below(3000)));
        let (sender, receiver) = match victim {
            Victim::None => (s, r),
            Victim::Sender => {
                stats.kills_sender += 1;
                let killed_at = kill_worker(s);
                self.killed_at.set(killed_at);
                // (A survivor that cannot continue ends by itself once it saw the death.)
                let watch = if self.b.restart_sender {
                    vec![r]
                } else {
                    vec![]
                };
                self.wait_for("the receiver seeing the sender's death", &watch, || {
                    self.w(R).detect_ns.load(Acquire) != 0
                });
                stats
                    .detect_sender_death_us
                    .push(self.detection_us(R, killed_at));
                if !self.b.restart_sender {
                    self.expect_success(r, "the surviving receiver");
                    self.check(victim, false, stats);
                    return;
                }
                stats.restarts += 1;
                let s2 = self.spawn_sender(S2, 1, None);
                self.wait_for("the restarted sender sending", &[r, s2], || {
                    self.w(S2).acked.load(Acquire) > 0
                });
                (s2, r)
            }
            Victim::Receiver => {
                stats.kills_receiver += 1;
                let killed_at = kill_worker(r);
                self.killed_at.set(killed_at);
                if self.b.sender_sees_receiver_death {
                    let watch = if self.b.restart_receiver {
                        vec![s]
                    } else {
                        vec![]
                    };
                    self.wait_for("the sender seeing the receiver's death", &watch, || {
                        self.w(S).detect_ns.load(Acquire) != 0
                    });
                    stats
                        .detect_receiver_death_us
                        .push(self.detection_us(S, killed_at));
                }
                if !self.b.restart_receiver {
                    self.expect_success(s, "the surviving sender");
                    self.check(victim, false, stats);
                    return;
                }
                stats.restarts += 1;
                let r2 = self.spawn_receiver(R2, None);
                self.wait_for("the restarted receiver receiving", &[s, r2], || {
                    self.w(R2).received.load(Acquire) > 0
                });
                (s, r2)
            }
        };
        std::thread::sleep(Duration::from_micros(rng.below(2000)));
        // The time of the stop: no survivor may see `Disconnected` before it.
        self.board.stop_tx.store(now_ns(), Release);
        self.expect_success(sender, "the sender");
        self.board.stop_rx.store(1, Release);
        self.expect_success(receiver, "the receiver");
        self.check(victim, false, stats);
    }

    /// Kills `victim` wherever it is (perhaps still opening), restarts it, stops cleanly
    /// and checks. Detection is not timed here (the survivor may never have seen the victim).
    fn early_kill(&self, victim: Victim, s: Pid, r: Pid, rng: &mut Rng, stats: &mut Stats) {
        stats.restarts += 1;
        let (sender, receiver) = if victim == Victim::Sender {
            stats.kills_sender += 1;
            self.killed_at.set(kill_worker(s));
            let s2 = self.spawn_sender(S2, 1, None);
            self.wait_for("the restarted sender's messages arriving", &[r, s2], || {
                self.w(R).hi[1].load(Acquire) > 0
            });
            (s2, r)
        } else {
            stats.kills_receiver += 1;
            self.killed_at.set(kill_worker(r));
            let r2 = self.spawn_receiver(R2, None);
            self.wait_for("the restarted receiver receiving", &[s, r2], || {
                self.w(R2).received.load(Acquire) > 0
            });
            (s, r2)
        };
        std::thread::sleep(Duration::from_micros(rng.below(2000)));
        self.board.stop_tx.store(now_ns(), Release);
        self.expect_success(sender, "the sender");
        self.board.stop_rx.store(1, Release);
        self.expect_success(receiver, "the receiver");
        self.check(victim, true, stats);
    }

    fn detection_us(&self, survivor: usize, killed_at: u64) -> u64 {
        let seen = self.w(survivor).detect_ns.load(Acquire);
        assert!(
            seen > killed_at,
            "{} iteration {}: worker {survivor} saw Disconnected before the kill{}",
            self.kind,
            self.at.iteration,
            self.dump()
        );
        (seen - killed_at) / 1000
    }

    /// Checks the iteration's reports against the transport's promises.
    fn check(&self, victim: Victim, early: bool, stats: &mut Stats) {
        let fail = |what: String| -> ! {
            panic!(
                "{} iteration {} ({victim:?} killed): {what}{}",
                self.kind,
                self.at.iteration,
                self.dump()
            )
        };
        // Nobody saw `Disconnected` while its peer was alive: senders only after a kill of
        // their receiver, receivers only after a kill or after the stop.
        let stop = self.board.stop_tx.load(Acquire);
        for i in [S, S2, R, R2] {
            let seen = self.w(i).detect_ns.load(Acquire);
            let expected = match (i, victim) {
                (S, Victim::Receiver) | (R, Victim::Sender) => seen >= self.killed_at.get(),
                (R | R2, _) => stop != 0 && seen >= stop,
                _ => false,
            };
            if seen != 0 && !expected {
                fail(format!(
                    "worker {i} saw Disconnected while its peer was alive"
                ));
            }
        }
        for i in [R, R2] {
            let w = self.w(i);
            if w.torn.load(Relaxed) + w.foreign.load(Relaxed) + w.disorder.load(Relaxed) != 0 {
                fail(format!(
                    "receiver {i} got torn, foreign or disordered messages"
                ));
            }
            stats.messages += w.received.load(Relaxed);
            stats.lagged += w.lagged.load(Relaxed);
        }
        let acked = self.w(S).acked.load(Acquire);
        let got = self.w(R).range(0);
        // The first sender's messages at the first receiver: 0..h, in order.
        let h = match got {
            Some((0, h)) => h,
            // A lagging subscriber may have missed the first messages too.
            Some((_, h)) if self.b.lossy => h,
            // Killed early, the receiver may have got nothing, or the sender sent nothing.
            None if early || self.b.lossy => 0,
            other => fail(format!("receiver 0 got {other:?} of sender 0")),
        };
        if h > acked + 1 {
            fail(format!("{h} messages delivered, {acked} sent: invented"));
        }
        match victim {
            Victim::None => {
                if h != acked {
                    fail(format!("{h} delivered of {acked} sent"));
                }
            }
            Victim::Sender => {
                // Every acknowledged send, and at most the one in flight (with `DropOldest`,
                // the restarted sender may overwrite the dead one's last messages before
                // a slow subscriber reads them: only what it did get is checked).
                if h < acked && !self.b.lossy {
                    fail(format!("{h} delivered of {acked} acknowledged: lost"));
                }
                stats.sent_not_acked_delivered += h.saturating_sub(acked);
                if self.b.restart_sender {
                    let a2 = self.w(S2).acked.load(Acquire);
                    let ok = match self.w(R).range(1) {
                        Some((f, h2)) => h2 == a2 && (f == 0 || self.b.lossy),
                        None => false,
                    };
                    if !ok {
                        fail(format!("restarted sender sent 0..{a2}"));
                    }
                }
            }
            Victim::Receiver => match self.b.after_receiver_death {
                Kept::Lost => {
                    // The sender survives: a send that failed was not delivered either
                    // (the message is handed back in the error).
                    if h > acked {
                        fail(format!(
                            "{h} messages delivered, {acked} sent: one both delivered and handed back"
                        ));
                    }
                    stats.lost_with_stream_receiver += acked - h;
                }
                Kept::FromLiveEnd => match self.w(R2).range(0) {
                    Some((f2, h2)) if f2 >= h && h2 == acked => {}
                    other => fail(format!(
                        "receiver 0 reported 0..{h}, the restarted one {other:?} of 0..{acked}"
                    )),
                },
                Kept::InLog => {
                    if self.w(R2).range(0) != Some((0, acked)) {
                        fail(format!("the restarted reader must replay 0..{acked}"));
                    }
                }
                Kept::ForNextReceiver => {
                    // The rest goes to the restarted receiver, minus at most the message
                    // the dead one held; nothing twice.
                    let (f2, h2) = self.w(R2).range(0).unwrap_or((acked, acked));
                    if f2 != h && f2 != h + 1 {
                        fail(format!(
                            "receiver 0 reported 0..{h}, receiver 1 starts at {f2}"
                        ));
                    }
                    if h2 != acked {
                        fail(format!("receiver 1 ends at {h2}, {acked} sent"));
                    }
                    stats.held_by_dead_receiver += f2 - h;
                }
            },
        }
    }
}

/// The server's body: iterations until the time is up, then one clean iteration, then the
/// leftover check; reports the figures.
fn serve(kind: &str, name: &str, seconds: f64) {
    let b = behaviour(kind);
    let board: Board<Shared> = Board::new();
    let mut rng = Rng::new(&format!("crash matrix {kind}"));
    let mut stats = Stats::default();
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let mut iteration = 0u64;
    loop {
        let last = Instant::now() >= deadline;
        let victim = match (last, rng.below(2)) {
            (true, _) => Victim::None,
            (false, 0) => Victim::Sender,
            (false, _) => Victim::Receiver,
        };
        let pace = match rng.below(3) {
            0 => Pace::Fast,
            1 => Pace::SlowReceiver,
            _ => Pace::SlowSender,
        };
        board.reset();
        let at = Place {
            name: name.to_owned(),
            iteration,
        };
        let it = Iteration {
            kind,
            b,
            board: &board,
            opts: options(kind, &at),
            at,
            pace,
            killed_at: Cell::new(0),
        };
        it.run(victim, &mut rng, &mut stats);
        if kind == "file" {
            // The log outlives its processes by design; each iteration has its own.
            let _ = std::fs::remove_dir_all(it.at.log_dir());
        }
        stats.iterations += 1;
        iteration += 1;
        if last {
            break;
        }
    }
    let line = |v: &mut Vec<u64>| match median_max(v) {
        Some((med, max)) => format!(
            "median {:.2} ms, worst {:.2} ms",
            med as f64 / 1e3,
            max as f64 / 1e3
        ),
        None => "n/a".to_owned(),
    };
    report(
        "summary",
        format!(
            "{kind}: {} iterations, {} kills (sender {}, receiver {}; {} while opening or early), {} restarts, {} messages checked; \
             held by a dead receiver {}, delivered though not acknowledged {}, lost in a dead stream receiver's buffer {}, missed by a lagging subscriber {}; \
             detection: sender death {} ({} kills), receiver death {} ({} kills)",
            stats.iterations,
            stats.kills_sender + stats.kills_receiver,
            stats.kills_sender,
            stats.kills_receiver,
            stats.early_kills,
            stats.restarts,
            stats.messages,
            stats.held_by_dead_receiver,
            stats.sent_not_acked_delivered,
            stats.lost_with_stream_receiver,
            stats.lagged,
            line(&mut stats.detect_sender_death_us),
            stats.detect_sender_death_us.len(),
            line(&mut stats.detect_receiver_death_us),
            stats.detect_receiver_death_us.len(),
        ),
    );
}

// ---------------------------------------------------------------------------------------
// Leftovers

/// The System V key shmbus derives from an object name (`docs/wire-format.md`).
fn sysv_key(object: &str) -> i32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in object.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    match ((h ^ (h >> 32)) & 0x7fff_ffff) as i32 {
        0 => 1,
        k => k,
    }
}

fn runtime_dir() -> PathBuf {
    std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|p| p.is_dir())
        .unwrap_or_else(|| "/tmp".into())
}

/// Everything that a channel called `name` could have left behind, and whether it is there.
fn leftovers(name: &str) -> Vec<String> {
    let object = format!("shmbus.{name}");
    let key = sysv_key(&object);
    let at = Place {
        name: name.to_owned(),
        iteration: 0,
    };
    let mut left = Vec::new();
    let mut files = vec![
        PathBuf::from("/dev/shm").join(&object),
        PathBuf::from("/dev/mqueue").join(&object),
        runtime_dir().join(format!("{object}.mq")),
        runtime_dir().join(format!("{object}.sysv")),
        runtime_dir().join(format!("shmbus.sysv-shm-{key:08x}.lock")),
        at.path("fifo"),
        at.path("sock"),
    ];
    files.retain(|p| std::fs::symlink_metadata(p).is_ok());
    // A queue's presence file is written unnamed and linked into place; where that is not
    // possible, under a temporary name `<file>.<pid>.<n>.tmp` first: a process killed in
    // between must not leave that name behind.
    if let Ok(dir) = std::fs::read_dir(runtime_dir()) {
        let presence = format!("{object}.");
        files.extend(
            dir.flatten()
                .filter(|e| {
                    let f = e.file_name().to_string_lossy().into_owned();
                    f.ends_with(".tmp") && f.starts_with(&presence)
                })
                .map(|e| e.path()),
        );
    }
    left.extend(files.iter().map(|p| p.display().to_string()));
    // SAFETY: shmget/msgget with plain integers only look the key up.
    if unsafe { libc::shmget(key, 0, 0) } >= 0 {
        left.push(format!("System V shared memory {key:#x}"));
    }
    // SAFETY: as above.
    if unsafe { libc::msgget(key, 0) } >= 0 {
        left.push(format!("System V queue {key:#x}"));
    }
    let c = std::ffi::CString::new(format!("/{object}")).unwrap();
    // SAFETY: a NUL-terminated name; O_RDONLY without O_CREAT only looks it up.
    let q = unsafe { libc::mq_open(c.as_ptr(), libc::O_RDONLY) };
    if q >= 0 {
        // SAFETY: closes the descriptor just opened.
        unsafe { libc::mq_close(q) };
        left.push(format!("POSIX queue /{object}"));
    }
    let abstract_name = format!("@shmbus-crash-{name}");
    if std::fs::read_to_string("/proc/net/unix")
        .is_ok_and(|t| t.lines().any(|l| l.ends_with(&abstract_name)))
    {
        left.push(format!("abstract socket {abstract_name}"));
    }
    left
}

/// Removes what `leftovers` lists (after a failure), so the machine stays clean.
fn clean(name: &str) {
    let object = format!("shmbus.{name}");
    for path in leftovers(name) {
        let _ = std::fs::remove_file(&path);
    }
    let key = sysv_key(&object);
    // SAFETY: plain integers; IPC_RMID ignores the buffer.
    unsafe {
        let id = libc::shmget(key, 0, 0);
        if id >= 0 {
            libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut());
        }
        let id = libc::msgget(key, 0);
        if id >= 0 {
            libc::msgctl(id, libc::IPC_RMID, std::ptr::null_mut());
        }
    }
    let c = std::ffi::CString::new(format!("/{object}")).unwrap();
    // SAFETY: a NUL-terminated name; mq_unlink only reads it.
    unsafe { libc::mq_unlink(c.as_ptr()) };
    if let Ok(dir) = std::fs::read_dir(std::env::temp_dir()) {
        let prefix = format!("shmbus-crash-{name}.");
        for e in dir.flatten() {
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = std::fs::remove_dir_all(e.path());
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// The tests

/// Seconds per transport: `SHMBUS_CRASH_SECONDS`, default 2.
fn seconds() -> f64 {
    std::env::var("SHMBUS_CRASH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2.0)
}

#[test]
fn child_main() {
    let Some(role) = common::role() else {
        return;
    };
    assert_eq!(role, "server");
    let kind: String = common::param("kind");
    serve(&kind, &common::channel(), common::param("seconds"));
    std::process::exit(0);
}

struct Clean(String);

impl Drop for Clean {
    fn drop(&mut self) {
        clean(&self.0);
    }
}

fn crash_matrix(kind: &str) {
    let h = Harness::new(&format!("crash-{kind}"));
    let _clean = Clean(h.name().to_owned());
    let seconds = seconds();
    #[allow(unused_mut)]
    let mut params: Vec<(&str, &dyn std::fmt::Display)> =
        vec![("kind", &kind), ("seconds", &seconds)];
    // The D-Bus row's own bus, stopped (and its directory removed) when the test ends.
    #[cfg(feature = "dbus")]
    let bus = (kind == "dbus").then(private_bus::PrivateBus::start);
    #[cfg(feature = "dbus")]
    if let Some(bus) = &bus {
        params.push((DBUS_BUS, &bus.address));
    }
    let mut server = h.spawn("server", &params);
    let summary = server.expect("summary");
    server.wait_success();
    eprintln!("{summary}");
    #[allow(unused_mut)]
    let mut left = leftovers(h.name());
    #[cfg(feature = "dbus")]
    if let Some(bus) = &bus {
        left.extend(bus_leftovers(&bus.address));
    }
    assert!(left.is_empty(), "{kind}: left behind: {left:?}");
}

/// What the D-Bus row's processes left on its private bus: a channel name still owned
/// (`org.shmbus.*`), or a connection other than the one asking (`dbus-send`'s own). The
/// bus drops a dead process's connection when it notices the closed socket: this gives it
/// [`common::SEGMENT_GRACE`] to.
#[cfg(feature = "dbus")]
fn bus_leftovers(address: &str) -> Vec<String> {
    let start = Instant::now();
    loop {
        let out = std::process::Command::new("dbus-send")
            .arg(format!("--bus={address}"))
            .args([
                "--print-reply",
                "--dest=org.freedesktop.DBus",
                "/org/freedesktop/DBus",
                "org.freedesktop.DBus.ListNames",
            ])
            .output()
            .expect("running dbus-send (package dbus-bin)");
        assert!(out.status.success(), "dbus-send ListNames: {out:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        let names: Vec<&str> = text
            .lines()
            .filter_map(|l| l.trim().strip_prefix("string \"")?.strip_suffix('"'))
            .collect();
        assert!(
            names.contains(&"org.freedesktop.DBus"),
            "ListNames answered {text}"
        );
        let mut left: Vec<String> = names
            .iter()
            .filter(|n| n.starts_with("org.shmbus."))
            .map(|n| format!("D-Bus name {n}"))
            .collect();
        let connections = names.iter().filter(|n| n.starts_with(':')).count();
        if connections > 1 {
            left.push(format!("{} D-Bus connections", connections - 1));
        }
        if left.is_empty() || start.elapsed() > common::SEGMENT_GRACE {
            return left;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Found by the matrix: a sender restarted right after a crash was refused
/// (`TooManyParticipants`) while the receiver held the dead sender's entry to reclaim it.
/// The reclaimer is played by an open-file-description lock on the entry's byte (byte
/// `1 + i` for sender entry `i`, `docs/wire-format.md`), let go after 20 ms: the opener waits
/// for it. A holder that stays (a live sender) still gets the refusal.
#[test]
fn opener_waits_for_a_reclaimer_to_let_go_of_a_dead_entry() {
    let name = common::unique_name("crash-reclaim");
    let _clean = Clean(name.clone());
    let mut o = Options::new();
    o.max_senders(1).capacity(4);
    let rx = Receiver::<Msg>::open_or_create(&name, &o).unwrap();
    let hold = |file: &std::fs::File| {
        // SAFETY: a zeroed flock is valid; the fields are set below.
        let mut fl: libc::flock = unsafe { std::mem::zeroed() };
        fl.l_type = libc::F_WRLCK as libc::c_short;
        fl.l_whence = libc::SEEK_SET as libc::c_short;
        fl.l_start = 1;
        fl.l_len = 1;
        use std::os::fd::AsRawFd;
        // SAFETY: a valid descriptor and a valid flock for F_OFD_SETLK.
        let r = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &fl) };
        assert_eq!(r, 0, "locking sender entry 0");
    };
    let open_segment = || {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(common::segment_path(&name))
            .unwrap()
    };
    let reclaimer = open_segment();
    hold(&reclaimer);
    let lets_go = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(20));
        drop(reclaimer); // closing the description releases its lock
    });
    let tx = Sender::<Msg>::open_or_create(&name, &o).expect("the opener waited");
    lets_go.join().unwrap();
    tx.send(Msg::new(0, 0, 0)).unwrap();
    assert!(rx.recv().unwrap().intact());
    drop(tx);
    let live = open_segment();
    hold(&live);
    match Sender::<Msg>::open_or_create(&name, &o) {
        Err(shmbus::OpenError::TooManyParticipants { .. }) => {}
        other => panic!("a held entry must be refused, got {:?}", other.err()),
    }
}

/// Every transport in the table has its test (the macro makes one per row).
#[test]
fn every_transport_has_a_row() {
    let names: Vec<&str> = ROWS.iter().map(|(n, _)| *n).collect();
    for t in [
        "shm",
        "sysv_shm",
        "pipe",
        "fifo",
        "unix",
        "abstract_socket",
        "posix_mq",
        "sysv_mq",
        "file",
    ] {
        assert!(names.contains(&t), "{t} is missing from the crash matrix");
    }
    #[cfg(feature = "dbus")]
    assert!(
        names.contains(&"dbus"),
        "dbus is missing from the crash matrix"
    );
}
