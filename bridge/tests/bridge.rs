//! Two "hosts" on one machine, each with its own channel prefix and its own bridge process,
//! joined by Zenoh over TCP with explicit endpoints and multicast scouting off.
//!
//! * over loopback: typed messages (zero-copy and postcard) go host A channel -> Zenoh ->
//!   host B channel intact and in order;
//! * SIGKILL of either bridge and a restart: the flow resumes, still in order;
//! * a Python `eclipse-zenoh` subscriber decodes what a shmbus channel publishes (skipped
//!   when the module is missing, unless `SHMBUS_BRIDGE_REQUIRE_PYTHON` is set, as in CI);
//! * across two network namespaces joined by a veth pair, created and removed here (only with
//!   `SHMBUS_BRIDGE_NETNS=1`, as root, with `ip`: `.ci/run` sets it).

#[path = "../../tests/common/mod.rs"]
mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{param, param_or, report, Child, Harness, PATIENCE};
use shmbus::{Delivery, Message, Options, Receiver, RecvTimeoutError, Sender};

#[derive(shmbus::Message, Clone, Copy, Debug, PartialEq)]
#[repr(C)]
struct Tick {
    seq: u64,
    check: u64,
    data: [u8; 48],
}

impl Tick {
    fn new(seq: u64) -> Tick {
        let mut data = [0u8; 48];
        for (i, b) in data.iter_mut().enumerate() {
            *b = (seq as u8).wrapping_add(i as u8);
        }
        Tick {
            seq,
            check: seq.wrapping_mul(0x9e37_79b9_7f4a_7c15),
            data,
        }
    }
}

#[derive(shmbus::Message, serde::Serialize, serde::Deserialize, Clone, Debug, PartialEq)]
struct Note {
    seq: u64,
    text: String,
}

impl Note {
    fn new(seq: u64) -> Note {
        Note {
            seq,
            text: format!("note {seq} {}", "x".repeat((seq % 40) as usize)),
        }
    }
}

/// Runs a child's role; returns at once in the parent.
#[test]
fn child_main() {
    let Some(role) = common::role() else { return };
    common::exit_with_parent();
    match role.as_str() {
        "bridge" => bridge_child(),
        other => panic!("unknown role {other}"),
    }
}

/// A bridge process: routes and endpoints from the parameters, until stdin closes.
fn bridge_child() {
    let list = |key: &str| -> Vec<String> {
        param_or::<String>(key, String::new())
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    };
    let mut b = shmbus_bridge::Bridge::builder();
    b.shm_prefix(&param::<String>("prefix")).multicast(false);
    for r in list("to") {
        b.to_zenoh(&r);
    }
    for r in list("from") {
        b.from_zenoh(&r);
    }
    for e in list("listen") {
        b.listen(&e);
    }
    for e in list("connect") {
        b.connect(&e);
    }
    let bridge = b.start().expect("starting the bridge");
    report("started", bridge.id());
    common::wait_for_parent();
    bridge.stop();
}

fn host_prefix(h: &Harness, host: &str) -> String {
    format!("shmbus.{}-{host}.", h.name())
}

fn options(prefix: &str) -> Options {
    let mut o = Options::new();
    o.prefix(prefix).capacity(256);
    o
}

/// A TCP port free right now on `addr`.
fn free_port(addr: &str) -> u16 {
    std::net::TcpListener::bind((addr, 0))
        .and_then(|l| l.local_addr())
        .expect("binding port 0")
        .port()
}

struct Endpoints<'a> {
    wrapper: &'a [&'a str],
    listen: String,
    connect: String,
}

fn spawn_bridge(
    h: &Harness,
    wrapper: &[&str],
    prefix: &str,
    to: &str,
    from: &str,
    listen: &str,
    connect: &str,
) -> Child {
    let mut c = h.spawn_via(
        wrapper,
        h.name(),
        "bridge",
        &[
            ("prefix", &prefix),
            ("to", &to),
            ("from", &from),
            ("listen", &listen),
            ("connect", &connect),
        ],
    );
    c.expect("started");
    c
}

/// Receives `n` messages of type `T`, checking each against `expected(i)`.
fn receive_in_order<T: Message + PartialEq + std::fmt::Debug>(
    rx: &Receiver<T>,
    n: u64,
    expected: impl Fn(u64) -> T,
) {
    let start = Instant::now();
    let mut i = 0;
    while i < n {
        assert!(
            start.elapsed() < PATIENCE,
            "only {i} of {n} messages arrived"
        );
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(m) => {
                assert_eq!(*m, expected(i), "message {i}");
                i += 1;
            }
            Err(RecvTimeoutError::Timeout) => {}
            // The bridge (our sender) is not attached yet.
            Err(RecvTimeoutError::Disconnected) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => panic!("receiving message {i}: {e}"),
        }
    }
}

/// Host A's ticks and notes reach host B's channels through two bridge processes.
fn two_hosts_exchange(h: &Harness, ends: &Endpoints<'_>, n: u64) {
    let (pa, pb) = (host_prefix(h, "a"), host_prefix(h, "b"));
    let ticks_b = Receiver::<Tick>::open_or_create("ticks", &options(&pb)).unwrap();
    let notes_b = Receiver::<Note>::open_or_create("notes", &options(&pb)).unwrap();
    let ticks_a = Sender::<Tick>::open_or_create("ticks", &options(&pa)).unwrap();
    let notes_a = Sender::<Note>::open_or_create("notes", &options(&pa)).unwrap();
    let _a = spawn_bridge(h, ends.wrapper, &pa, "ticks,notes", "", &ends.listen, "");
    let _b = spawn_bridge(h, ends.wrapper, &pb, "", "ticks,notes", "", &ends.connect);
    let producer = std::thread::spawn(move || {
        for i in 0..n {
            ticks_a.send(Tick::new(i)).expect("sending a tick");
            notes_a.send(Note::new(i)).expect("sending a note");
        }
        (ticks_a, notes_a)
    });
    let notes = std::thread::spawn(move || receive_in_order(&notes_b, n, Note::new));
    receive_in_order(&ticks_b, n, Tick::new);
    notes.join().expect("notes consumer");
    producer.join().expect("producer");
}

#[test]
fn loopback_typed_messages_arrive_intact_and_in_order() {
    let h = Harness::new("bridge-loop");
    let port = free_port("127.0.0.1");
    let ends = Endpoints {
        wrapper: &[],
        listen: format!("tcp/127.0.0.1:{port}"),
        connect: format!("tcp/127.0.0.1:{port}"),
    };
    two_hosts_exchange(&h, &ends, 20_000);
}

/// Both hosts bridge channel `chat` both ways; each host's local receiver gets every
/// message once: its own host's directly, the other's through Zenoh, and no echo.
#[test]
fn both_directions_on_one_channel_do_not_echo() {
    let h = Harness::new("bridge-echo");
    let port = free_port("127.0.0.1");
    let ep = format!("tcp/127.0.0.1:{port}");
    let (pa, pb) = (host_prefix(&h, "a"), host_prefix(&h, "b"));
    let open = |prefix: &str| {
        let mut o = options(prefix);
        // Room for everything: each host sends all its messages before it reads.
        o.delivery(Delivery::Broadcast).capacity(4096);
        let rx = Receiver::<Note>::open_or_create("chat", &o).unwrap();
        let tx = Sender::<Note>::open_or_create("chat", &o).unwrap();
        (tx, rx)
    };
    let ((tx_a, rx_a), (tx_b, rx_b)) = (open(&pa), open(&pb));
    let _a = spawn_bridge(&h, &[], &pa, "chat", "chat", &ep, "");
    let _b = spawn_bridge(&h, &[], &pb, "chat", "chat", "", &ep);
    const N: u64 = 500;
    const FENCE: u64 = u64::MAX;
    // Host A sends 0..N, host B N..2N, then each a fence once it has all 2N: an echo of
    // anything would be published before the other host's fence, so it would show up.
    let run = move |tx: Sender<Note>, rx: Receiver<Note>, first: u64| {
        std::thread::spawn(move || {
            for seq in first..first + N {
                tx.send(Note::new(seq)).unwrap();
            }
            let mut seen = vec![0u32; 2 * N as usize];
            let mut fences = 0;
            let mut all = false;
            let start = Instant::now();
            while fences < 2 {
                assert!(
                    start.elapsed() < PATIENCE,
                    "stuck: {fences} fences, all {all}"
                );
                match rx.recv_timeout(Duration::from_millis(100)) {
                    Ok(n) if n.seq == FENCE => fences += 1,
                    Ok(n) => {
                        assert_eq!(*n, Note::new(n.seq));
                        seen[n.seq as usize] += 1;
                    }
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(e) => panic!("{e}"),
                }
                if !all && seen.iter().all(|&c| c > 0) {
                    all = true;
                    tx.send(Note::new(FENCE)).unwrap();
                }
            }
            seen
        })
    };
    let (a, b) = (run(tx_a, rx_a, 0), run(tx_b, rx_b, N));
    for (host, seen) in [("a", a.join().unwrap()), ("b", b.join().unwrap())] {
        let dup: Vec<usize> = (0..seen.len()).filter(|&i| seen[i] != 1).collect();
        assert!(
            dup.is_empty(),
            "host {host}: messages not seen exactly once: {dup:?}"
        );
    }
}

/// A `DropOldest` channel never waits for the bridge: when the bridge falls behind (here it
/// is stopped with SIGSTOP while the ring laps), what it missed is its `lagged` counter in
/// the channel, and what arrives on the other host is still in order and intact.
#[test]
fn drop_oldest_channel_counts_what_the_bridge_missed() {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let h = Harness::new("bridge-lag");
    let port = free_port("127.0.0.1");
    let ep = format!("tcp/127.0.0.1:{port}");
    let (pa, pb) = (host_prefix(&h, "a"), host_prefix(&h, "b"));
    let mut o = options(&pa);
    o.delivery(Delivery::Broadcast)
        .overflow(shmbus::Overflow::DropOldest)
        .capacity(64);
    let tx = Sender::<Tick>::open_or_create("ticks", &o).unwrap();
    let rx = Receiver::<Tick>::open_or_create("ticks", &options(&pb)).unwrap();
    let a = spawn_bridge(&h, &[], &pa, "ticks", "", &ep, "");
    let _b = spawn_bridge(&h, &[], &pb, "", "ticks", "", &ep);
    // Until the first tick arrives, the remote side may not be subscribed yet: send again.
    let mut seq = 0;
    let first = loop {
        tx.send(Tick::new(seq)).unwrap();
        seq += 1;
        match rx.recv_timeout(Duration::from_millis(20)) {
            Ok(t) => break t.seq,
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {}
            Err(e) => panic!("{e}"),
        }
    };
    // What the bridge lagged before it read `first` (it reads only once the remote side has
    // subscribed, which can take longer than the ring's 64 ticks at one per 20 ms on a
    // loaded machine): not part of the burst below.
    //
    // The lag is counted in ring positions, and a position can hold no message: a sender
    // that laps a slot still pinned by a reader (the bridge may be stopped in the middle of
    // reading one) commits an empty "skip" there and moves on. Positions that advanced
    // without a message sent (the tail moved more than `sent`) are such skips.
    // (lagged, tail, sent) now:
    let counts = || -> (u64, u64, u64) {
        let info = shmbus::inspect::Observer::open(&pa, "ticks")
            .unwrap()
            .info();
        (
            info.receivers.iter().map(|r| r.counters.lagged).sum(),
            info.tail,
            info.sender_totals().sent,
        )
    };
    let (lagged_before, tail_before, sent_before) = counts();
    let stopped = Pid::from_raw(a.pid() as i32);
    kill(stopped, Signal::SIGSTOP).unwrap();
    // A group stop is not instant: wait until every thread of the bridge has stopped, or a
    // thread still running would read part of the burst.
    let all_stopped = || {
        std::fs::read_dir(format!("/proc/{}/task", a.pid()))
            .map(|tasks| {
                tasks.filter_map(Result::ok).all(|t| {
                    std::fs::read_to_string(t.path().join("stat")).is_ok_and(|st| {
                        st.rsplit(')')
                            .next()
                            .is_some_and(|rest| rest.trim_start().starts_with(['T', 't']))
                    })
                })
            })
            .unwrap_or(false)
    };
    let since = Instant::now();
    while !all_stopped() {
        assert!(since.elapsed() < PATIENCE, "the bridge never stopped");
        std::thread::sleep(Duration::from_millis(1));
    }
    // The bridge reads nothing meanwhile; the ring (64 slots) laps many times.
    let burst = 2_000;
    for _ in 0..burst {
        tx.send(Tick::new(seq)).unwrap();
        seq += 1;
    }
    kill(stopped, Signal::SIGCONT).unwrap();
    let end = seq;
    tx.send(Tick::new(end)).unwrap();
    let (mut last, mut received) = (first, 1u64);
    let start = Instant::now();
    while last < end {
        assert!(start.elapsed() < PATIENCE, "stuck at tick {last} of {end}");
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(t) => {
                assert!(t.seq > last, "tick {} after {last}", t.seq);
                assert_eq!(*t, Tick::new(t.seq));
                last = t.seq;
                received += 1;
            }
            Err(RecvTimeoutError::Timeout) => {
                // Zenoh may drop the very last tick too (`CongestionControl::Drop`): send on.
                seq += 1;
                tx.send(Tick::new(seq)).unwrap();
            }
            Err(e) => panic!("{e}"),
        }
    }
    let (lagged_after, tail_after, sent_after) = counts();
    let lagged = lagged_after - lagged_before;
    let skips = (tail_after - tail_before) - (sent_after - sent_before);
    let missing = last - first + 1 - received;
    eprintln!(
        "received {received}, missing {missing}, lagged (channel counter) {lagged} \
         ({lagged_before} before the burst), skipped positions {skips}"
    );
    assert!(
        lagged > 0,
        "the stopped bridge lagged, and the channel counted it"
    );
    // Every message the bridge lagged over is missing on the other host (Zenoh may drop
    // more); the lag may also count the positions of skips, which carried no message.
    assert!(
        missing + skips >= lagged,
        "{missing} missing, {skips} skipped positions, but {lagged} counted as lagged"
    );
}

/// The parent sends ticks into host A's broadcast channel without end; host B's consumer
/// checks that sequence numbers only grow and the content is intact.
struct Flow {
    stop: Arc<AtomicBool>,
    last: Arc<AtomicU64>,
    received: Arc<AtomicU64>,
    gaps: Arc<AtomicU64>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Flow {
    fn start(pa: &str, pb: &str) -> Flow {
        let stop = Arc::new(AtomicBool::new(false));
        let last = Arc::new(AtomicU64::new(0));
        let received = Arc::new(AtomicU64::new(0));
        let gaps = Arc::new(AtomicU64::new(0));
        let mut o = options(pa);
        o.delivery(Delivery::Broadcast);
        let tx = Sender::<Tick>::open_or_create("ticks", &o).unwrap();
        let rx = Receiver::<Tick>::open_or_create("ticks", &options(pb)).unwrap();
        let producer = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut seq = 1;
                while !stop.load(Ordering::Relaxed) {
                    if tx
                        .send_timeout(Tick::new(seq), Duration::from_millis(50))
                        .is_ok()
                    {
                        seq += 1;
                    }
                }
            })
        };
        let consumer = {
            let (stop, last, received, gaps) = (
                Arc::clone(&stop),
                Arc::clone(&last),
                Arc::clone(&received),
                Arc::clone(&gaps),
            );
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match rx.recv_timeout(Duration::from_millis(50)) {
                        Ok(t) => {
                            let prev = last.load(Ordering::Relaxed);
                            assert!(t.seq > prev, "tick {} after {prev}", t.seq);
                            assert_eq!(*t, Tick::new(t.seq), "tick {} corrupted", t.seq);
                            if t.seq != prev + 1 {
                                gaps.fetch_add(1, Ordering::Relaxed);
                            }
                            last.store(t.seq, Ordering::Relaxed);
                            received.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(RecvTimeoutError::Timeout) => {}
                        Err(RecvTimeoutError::Disconnected) => {
                            std::thread::sleep(Duration::from_millis(5))
                        }
                        Err(e) => panic!("receiving: {e}"),
                    }
                }
            })
        };
        Flow {
            stop,
            last,
            received,
            gaps,
            threads: vec![producer, consumer],
        }
    }

    /// Waits until host B has received `more` more ticks, all sent after tick `seq`.
    fn wait_past(&self, seq: u64, more: u64) -> u64 {
        let start = Instant::now();
        let mut base = None;
        loop {
            let last = self.last.load(Ordering::Relaxed);
            let received = self.received.load(Ordering::Relaxed);
            if last > seq {
                let from = *base.get_or_insert(received);
                if received >= from + more {
                    return last;
                }
            }
            assert!(
                start.elapsed() < PATIENCE,
                "the flow did not resume: last tick {last} ({received} received), \
                 waiting for {more} after {seq}"
            );
            assert!(
                !self.threads.iter().any(|t| t.is_finished()),
                "a flow thread failed"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Stops the flow: (ticks received, gaps in their sequence numbers).
    fn finish(mut self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            t.join().expect("flow thread");
        }
        (
            self.received.load(Ordering::Relaxed),
            self.gaps.load(Ordering::Relaxed),
        )
    }
}

#[test]
fn sigkilled_bridges_restart_and_the_flow_resumes_in_order() {
    let h = Harness::new("bridge-kill");
    let (pa, pb) = (host_prefix(&h, "a"), host_prefix(&h, "b"));
    let port = free_port("127.0.0.1");
    let ep = format!("tcp/127.0.0.1:{port}");
    let flow = Flow::start(&pa, &pb);
    let mut a = spawn_bridge(&h, &[], &pa, "ticks", "", &ep, "");
    let mut b = spawn_bridge(&h, &[], &pb, "", "ticks", "", &ep);
    let seen = flow.wait_past(0, 1000);

    // The receiving side dies mid-stream and comes back.
    b.kill();
    let _b = spawn_bridge(&h, &[], &pb, "", "ticks", "", &ep);
    let seen = flow.wait_past(seen, 1000);

    // The publishing side (the listener) dies and comes back on the same endpoint; the
    // other bridge reconnects by itself.
    a.kill();
    let _a = spawn_bridge(&h, &[], &pa, "ticks", "", &ep, "");
    let seen = flow.wait_past(seen, 1000);

    let (received, gaps) = flow.finish();
    eprintln!("{received} ticks received in order up to {seen}, {gaps} gaps");
    // Ticks are lost only where nothing could carry them: before the first bridge attached
    // (a broadcast channel without subscribers), in flight to the killed receiving bridge,
    // and while the publishing bridge was dead. Never in between.
    assert!(gaps <= 3, "{gaps} gaps in the sequence");
}

/// The Python interpreter to run the example scripts with, if it has the zenoh module.
fn python_with_zenoh() -> Option<String> {
    let python = std::env::var("SHMBUS_BRIDGE_PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = Command::new(&python)
        .args(["-c", "import zenoh"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        return Some(python);
    }
    assert!(
        std::env::var_os("SHMBUS_BRIDGE_REQUIRE_PYTHON").is_none(),
        "{python} cannot import zenoh (pip install -r bridge/examples/python/requirements.txt)"
    );
    eprintln!("skipped: {python} cannot import zenoh");
    None
}

/// Kills and reaps a process when dropped.
struct Reap(std::process::Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn python_zenoh_subscriber_receives_a_shmbus_channel() {
    let Some(python) = python_with_zenoh() else {
        return;
    };
    let h = Harness::new("bridge-py");
    let pa = host_prefix(&h, "a");
    let port = free_port("127.0.0.1");
    let ep = format!("tcp/127.0.0.1:{port}");
    let tx = Sender::<Tick>::open_or_create("ticks", &options(&pa)).unwrap();
    let _a = spawn_bridge(&h, &[], &pa, "ticks", "", &ep, "");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/python/subscribe.py");
    let n = 200u64;
    let mut py = Reap(
        Command::new(&python)
            .args([script, "--connect", &ep, "--key", "shmbus/ticks"])
            .args(["--count", &n.to_string()])
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting python"),
    );
    // The bridge holds the messages until the Python subscriber matches its key.
    for i in 0..n {
        tx.send(Tick::new(i)).unwrap();
    }
    let out = BufReader::new(py.0.stdout.take().expect("piped stdout"));
    let mut i = 0;
    for line in out.lines() {
        let line = line.expect("reading python's output");
        // "<seq> <check> <fingerprint> <type name>"
        let f: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(f.len(), 4, "python printed {line:?}");
        let t = Tick::new(i);
        assert_eq!(f[0].parse::<u64>().unwrap(), t.seq, "{line}");
        assert_eq!(f[1].parse::<u64>().unwrap(), t.check, "{line}");
        assert_eq!(f[2], format!("{:016x}", Tick::INFO.fingerprint), "{line}");
        assert_eq!(f[3], "Tick");
        i += 1;
    }
    assert_eq!(i, n, "python received {i} of {n} ticks");
    assert!(py.0.wait().unwrap().success(), "python failed");
}

#[test]
fn python_zenoh_publisher_feeds_a_shmbus_channel() {
    let Some(python) = python_with_zenoh() else {
        return;
    };
    let h = Harness::new("bridge-pypub");
    let pb = host_prefix(&h, "b");
    let port = free_port("127.0.0.1");
    let ep = format!("tcp/127.0.0.1:{port}");
    let rx = Receiver::<Tick>::open_or_create("ticks", &options(&pb)).unwrap();
    let _b = spawn_bridge(&h, &[], &pb, "", "ticks", &ep, "");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/python/publish.py");
    let n = 200u64;
    let fingerprint = format!("{:016x}", Tick::INFO.fingerprint);
    let mut py = Reap(
        Command::new(&python)
            .args([script, "--connect", &ep, "--key", "shmbus/ticks"])
            .args(["--fingerprint", &fingerprint, "--count", &n.to_string()])
            .spawn()
            .expect("starting python"),
    );
    receive_in_order(&rx, n, Tick::new);
    assert!(py.0.wait().unwrap().success(), "python failed");
}

/// Two network namespaces joined by a veth pair; removed when dropped.
struct Netns {
    names: [String; 2],
}

impl Netns {
    fn new(tag: u32) -> Netns {
        let names = [format!("sbA{tag}"), format!("sbB{tag}")];
        let (va, vb) = (format!("sbva{tag}"), format!("sbvb{tag}"));
        let net = format!("10.{}.{}", 200 + (tag / 250) % 50, tag % 250);
        let ns = Netns { names };
        let [a, b] = &ns.names;
        let ip = |args: &[&str]| {
            let ok = Command::new("ip")
                .args(args)
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "ip {}", args.join(" "));
        };
        ip(&["netns", "add", a]);
        ip(&["netns", "add", b]);
        ip(&["link", "add", &va, "type", "veth", "peer", "name", &vb]);
        ip(&["link", "set", &va, "netns", a]);
        ip(&["link", "set", &vb, "netns", b]);
        ip(&["-n", a, "addr", "add", &format!("{net}.1/24"), "dev", &va]);
        ip(&["-n", b, "addr", "add", &format!("{net}.2/24"), "dev", &vb]);
        for (n, v) in [(a, &va), (b, &vb)] {
            ip(&["-n", n, "link", "set", v, "up"]);
            ip(&["-n", n, "link", "set", "lo", "up"]);
        }
        ns
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // The veth pair goes with its namespaces.
        for n in &self.names {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

#[test]
fn across_two_network_namespaces() {
    if std::env::var_os("SHMBUS_BRIDGE_NETNS").is_none() {
        eprintln!("skipped: set SHMBUS_BRIDGE_NETNS=1 (needs root and `ip`) to run");
        return;
    }
    assert!(
        nix::unistd::geteuid().is_root(),
        "SHMBUS_BRIDGE_NETNS is set but this is not root"
    );
    let tag = std::process::id() % 100_000;
    let ns = Netns::new(tag);
    let net = format!("10.{}.{}", 200 + (tag / 250) % 50, tag % 250);
    let h = Harness::new("bridge-netns");
    // Both namespaces see the same /dev/shm: the channels stay in this process.
    let (wa, wb) = (
        ["ip", "netns", "exec", ns.names[0].as_str()],
        ["ip", "netns", "exec", ns.names[1].as_str()],
    );
    let (pa, pb) = (host_prefix(&h, "a"), host_prefix(&h, "b"));
    let ticks_b = Receiver::<Tick>::open_or_create("ticks", &options(&pb)).unwrap();
    let ticks_a = Sender::<Tick>::open_or_create("ticks", &options(&pa)).unwrap();
    let ep_listen = format!("tcp/{net}.1:7447");
    let _a = spawn_bridge(&h, &wa, &pa, "ticks", "", &ep_listen, "");
    let _b = spawn_bridge(&h, &wb, &pb, "", "ticks", "", &ep_listen);
    let n = 5_000;
    let producer = std::thread::spawn(move || {
        for i in 0..n {
            ticks_a.send(Tick::new(i)).unwrap();
        }
    });
    receive_in_order(&ticks_b, n, Tick::new);
    producer.join().unwrap();
    // `h` goes first (it kills the bridges), then `ns` removes the namespaces.
}
