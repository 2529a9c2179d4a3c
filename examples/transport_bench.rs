//! Round-trip latency and busy-stream throughput of 64-byte messages over every transport.
//!
//! `cargo run --release --example transport_bench [ROUND_TRIPS] [STREAM] [TRANSPORT...]`
//!
//! Two processes, pinned to CPUs 0 and 1: the parent sends a `Tick` on a "ping" channel and
//! the child echoes it on a "pong" channel (round trips); then the parent streams `STREAM`
//! ticks and the child acknowledges the last one (throughput, measured at the parent from
//! the first send to the acknowledgement).
//!
//! The file log runs as `file` (mmap, no sync), `file_rw` (pread/pwrite), `file_batch`
//! (fdatasync every 1000 messages) and `file_fsync` (fdatasync per message; pass small
//! counts), in `$TMPDIR` (or `/tmp`); its directories are removed afterwards. It is not in
//! the default list: name it.

mod util;

use std::process::Command;
use std::time::{Duration, Instant};

use shmbus::{Options, Receiver, Sender, Transport};

#[derive(shmbus::Message, Clone, Copy, Debug)]
#[repr(C)]
struct Tick {
    seq: u64,
    rest: [u64; 7],
}

const ALL: &[&str] = &[
    "shm", "sysv_shm", "pipe", "fifo", "unix", "abstract", "posix_mq", "sysv_mq",
];

fn options(transport: &str, name: &str) -> Options {
    let mut o = Options::new();
    o.capacity(1024).connect_timeout(Duration::from_secs(20));
    let tmp = std::env::temp_dir();
    let t = match transport {
        "shm" => Transport::SharedMemory,
        "sysv_shm" => Transport::SysvSharedMemory { key: None },
        "fifo" => Transport::Fifo {
            path: tmp.join(format!("{name}.fifo")),
        },
        "unix" => Transport::UnixSocket {
            path: tmp.join(format!("{name}.sock")),
        },
        "abstract" => Transport::AbstractSocket {
            name: name.to_owned(),
        },
        "posix_mq" => Transport::PosixQueue,
        "sysv_mq" => Transport::SysvQueue { key: None },
        "file" | "file_rw" | "file_batch" | "file_fsync" => {
            o.durability(match transport {
                "file_batch" => shmbus::Durability::Batch(1000),
                "file_fsync" => shmbus::Durability::Message,
                _ => shmbus::Durability::None,
            });
            if transport == "file_rw" {
                o.file_io(shmbus::FileIo::ReadWrite);
            }
            Transport::File {
                dir: tmp.join(format!("{name}.log")),
            }
        }
        other => panic!("unknown transport {other}"),
    };
    o.transport(t);
    o
}

fn tick(seq: u64) -> Tick {
    Tick {
        seq,
        rest: [seq; 7],
    }
}

/// The echoing child: ping → pong for `rt` round trips, then drain `stream` and ack.
fn child(transport: &str, id: &str, rt: u64, stream: u64) {
    util::pin_to_cpu(1);
    let (ping, pong): (Receiver<Tick>, Sender<Tick>) = if transport == "pipe" {
        (
            Receiver::from_inherited("BENCH_PING").unwrap(),
            Sender::from_inherited("BENCH_PONG").unwrap(),
        )
    } else {
        let ping = Receiver::open_or_create(
            &format!("{id}-ping"),
            &options(transport, &format!("{id}-ping")),
        )
        .unwrap();
        let pong = Sender::open_or_create(
            &format!("{id}-pong"),
            &options(transport, &format!("{id}-pong")),
        )
        .unwrap();
        (ping, pong)
    };
    for _ in 0..rt {
        let t = ping.recv().unwrap().into_inner();
        pong.send(t).unwrap();
    }
    let mut last = 0;
    for _ in 0..stream {
        last = ping.recv().unwrap().seq;
    }
    pong.send(tick(last)).unwrap();
    // Wait for the parent to finish reading before leaving.
    let _ = ping.recv();
}

fn run(transport: &str, rt: u64, stream: u64) {
    let id = util::run_id(&format!("tbench-{transport}"));
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--child",
        transport,
        &id,
        &rt.to_string(),
        &stream.to_string(),
    ]);
    let (ping, pong, mut child) = if transport == "pipe" {
        let (ping_tx, ping_rx) = shmbus::pipe::<Tick>().unwrap();
        let (pong_tx, pong_rx) = shmbus::pipe::<Tick>().unwrap();
        ping_rx.pass_to(&mut cmd, "BENCH_PING").unwrap();
        pong_tx.pass_to(&mut cmd, "BENCH_PONG").unwrap();
        let child = cmd.spawn().unwrap();
        drop(cmd);
        (ping_tx, pong_rx, child)
    } else {
        let child = cmd.spawn().unwrap();
        let ping = Sender::open_or_create(
            &format!("{id}-ping"),
            &options(transport, &format!("{id}-ping")),
        )
        .unwrap();
        let pong = Receiver::open_or_create(
            &format!("{id}-pong"),
            &options(transport, &format!("{id}-pong")),
        )
        .unwrap();
        (ping, pong, child)
    };
    util::pin_to_cpu(0);
    let mut samples = Vec::with_capacity(rt as usize);
    for i in 0..rt {
        let t0 = Instant::now();
        ping.send(tick(i)).unwrap();
        let back = pong.recv().unwrap().into_inner();
        samples.push(t0.elapsed().as_nanos() as u64);
        assert_eq!(back.seq, i);
    }
    let (med, p99, _) = util::percentiles(&mut samples);
    let t0 = Instant::now();
    for i in 0..stream {
        ping.send(tick(i)).unwrap();
    }
    let ack = pong.recv().unwrap().into_inner();
    let took = t0.elapsed();
    assert_eq!(ack.seq, stream - 1);
    let _ = ping.send(tick(0));
    drop(ping);
    drop(pong);
    child.wait().unwrap();
    if transport.starts_with("file") {
        for end in ["ping", "pong"] {
            let _ = std::fs::remove_dir_all(std::env::temp_dir().join(format!("{id}-{end}.log")));
        }
    }
    println!(
        "| {:<9} | {:>10.1?} | {:>10.1?} | {:>8.2} M/s | {:>8.0} MB/s |",
        transport,
        med,
        p99,
        stream as f64 / took.as_secs_f64() / 1e6,
        stream as f64 * 64.0 / took.as_secs_f64() / 1e6
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--child") {
        let n = |i: usize| args[i].parse::<u64>().unwrap();
        child(&args[2], &args[3], n(4), n(5));
        return;
    }
    let rt: u64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(20_000);
    let stream: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(500_000);
    let chosen: Vec<&str> = if args.len() > 3 {
        args[3..].iter().map(String::as_str).collect()
    } else {
        ALL.to_vec()
    };
    println!(
        "64-byte messages; {rt} round trips, stream of {stream}; parent on CPU 0, child on CPU 1\n"
    );
    println!("| transport | RTT median |    RTT p99 |   throughput |    bandwidth |");
    println!("|-----------|-----------:|-----------:|-------------:|-------------:|");
    for t in chosen {
        run(t, rt, stream);
    }
}
