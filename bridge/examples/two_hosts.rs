//! Two "hosts" exchange typed messages through their local shmbus channels and Zenoh, and
//! measure the round trip and the one-way throughput.
//!
//! Host A writes `Ping`s into its local channel `ping` and reads `Ping`s back from its
//! local channel `pong`; host B reads its `ping` and answers into its `pong`. Neither
//! program knows about the network: each embeds a `shmbus_bridge::Bridge` that carries
//! `ping` from A to B and `pong` from B to A. Each host uses its own channel prefix, so the
//! two can share one machine.
//!
//! ```text
//! # one machine, B started as a child, loopback TCP:
//! cargo run --release -p shmbus-bridge --example two_hosts
//! # two machines (or two network namespaces):
//! two_hosts --role b --listen tcp/0.0.0.0:7447          # on host B
//! two_hosts --role a --connect tcp/<host B>:7447        # on host A
//! ```

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use shmbus::{Options, Receiver, Sender};

#[derive(shmbus::Message, Clone, Copy, Debug)]
#[repr(C)]
struct Ping {
    seq: u64,
    /// ECHO, STREAM, END or QUIT.
    kind: u64,
    pad: [u8; 48],
}

const ECHO: u64 = 0;
const STREAM: u64 = 1;
const END: u64 = 2;
const QUIT: u64 = 3;

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

/// Each host's channels: `shmbus.two-hosts-<host>-<pid>.<channel>`.
fn host(name: &str) -> (String, Options) {
    let prefix = format!("shmbus.two-hosts-{name}-{}.", std::process::id());
    let mut o = Options::new();
    o.prefix(prefix.clone()).capacity(1024);
    (prefix, o)
}

fn bridge(
    prefix: &str,
    to: &str,
    from: &str,
    listen: Option<&str>,
    connect: Option<&str>,
) -> shmbus_bridge::Bridge {
    let mut b = shmbus_bridge::Bridge::builder();
    b.shm_prefix(prefix)
        .to_zenoh(to)
        .from_zenoh(from)
        .multicast(false);
    if let Some(e) = listen {
        b.listen(e);
    }
    if let Some(e) = connect {
        b.connect(e);
    }
    b.start().expect("starting the bridge")
}

/// Host B: answers every ECHO and END ping, until QUIT.
fn host_b(listen: Option<&str>, connect: Option<&str>) {
    let (prefix, o) = host("b");
    let pings = Receiver::<Ping>::open_or_create("ping", &o).expect("ping channel");
    let pongs = Sender::<Ping>::open_or_create("pong", &o).expect("pong channel");
    let _bridge = bridge(&prefix, "pong", "ping", listen, connect);
    let mut streamed = 0u64;
    loop {
        let p = match pings.recv_timeout(Duration::from_secs(60)) {
            Ok(p) => p.into_inner(),
            Err(shmbus::RecvTimeoutError::Disconnected) => {
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
            Err(e) => panic!("host b: {e}"),
        };
        match p.kind {
            ECHO => pongs.send(p).expect("pong"),
            STREAM => streamed += 1,
            END => {
                streamed += 1;
                pongs.send(Ping { seq: streamed, ..p }).expect("pong");
                streamed = 0;
            }
            _ => return,
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p) as usize]
}

/// Host A: round trips, then a one-way stream.
fn host_a(listen: Option<&str>, connect: Option<&str>, round_trips: usize, stream: u64) {
    let (prefix, o) = host("a");
    let pings = Sender::<Ping>::open_or_create("ping", &o).expect("ping channel");
    let pongs = Receiver::<Ping>::open_or_create("pong", &o).expect("pong channel");
    let bridge = bridge(&prefix, "ping", "pong", listen, connect);
    let ping = |seq, kind| Ping {
        seq,
        kind,
        pad: [7; 48],
    };
    let recv = || loop {
        match pongs.recv_timeout(Duration::from_secs(60)) {
            Ok(p) => return p.into_inner(),
            Err(shmbus::RecvTimeoutError::Disconnected) => {
                std::thread::sleep(Duration::from_millis(1))
            }
            Err(e) => panic!("host a: {e}"),
        }
    };
    // Warm-up (also waits for the other host to come up).
    for i in 0..200 {
        pings.send(ping(i, ECHO)).unwrap();
        assert_eq!(recv().seq, i);
    }
    let mut rtts = Vec::with_capacity(round_trips);
    for i in 0..round_trips as u64 {
        let t = Instant::now();
        pings.send(ping(i, ECHO)).unwrap();
        let back = recv();
        rtts.push(t.elapsed());
        assert_eq!(back.seq, i, "answers come back in order");
    }
    rtts.sort();
    println!(
        "round trip A -> B -> A, 64-byte messages, {round_trips} samples: \
         min {:.0} us, median {:.0} us, p99 {:.0} us",
        rtts[0].as_secs_f64() * 1e6,
        percentile(&rtts, 0.5).as_secs_f64() * 1e6,
        percentile(&rtts, 0.99).as_secs_f64() * 1e6
    );
    let t = Instant::now();
    for i in 0..stream - 1 {
        pings.send(ping(i, STREAM)).unwrap();
    }
    pings.send(ping(stream - 1, END)).unwrap();
    let got = recv().seq;
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(got, stream, "host b received every streamed message");
    println!(
        "one way A -> B, {stream} messages of 64 bytes: {secs:.2} s, {:.0} messages/s, {:.1} MB/s",
        stream as f64 / secs,
        stream as f64 * 64.0 / secs / 1e6
    );
    pings.send(ping(0, QUIT)).unwrap();
    for (channel, to, s) in bridge.stats() {
        let dir = if to { "to zenoh" } else { "from zenoh" };
        println!("bridge {dir} {channel}: {} messages", s.messages);
    }
    // Let the QUIT reach host B before the bridge goes.
    std::thread::sleep(Duration::from_millis(200));
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let listen = arg(&args, "--listen");
    let connect = arg(&args, "--connect");
    let round_trips = arg(&args, "--round-trips").map_or(5_000, |s| s.parse().unwrap());
    let stream = arg(&args, "--stream").map_or(200_000, |s| s.parse().unwrap());
    match arg(&args, "--role").as_deref() {
        Some("a") => host_a(listen.as_deref(), connect.as_deref(), round_trips, stream),
        Some("b") => host_b(listen.as_deref(), connect.as_deref()),
        Some(other) => panic!("--role a or b, not {other}"),
        None => {
            // Both hosts on this machine: B is a child process listening on loopback.
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port();
            let ep = format!("tcp/127.0.0.1:{port}");
            let mut b = Command::new(std::env::current_exe().unwrap())
                .args(["--role", "b", "--listen", &ep])
                .stdin(Stdio::null())
                .spawn()
                .expect("starting host b");
            host_a(None, Some(&ep), round_trips, stream);
            let status = b.wait().expect("host b");
            assert!(status.success(), "host b: {status}");
        }
    }
}
