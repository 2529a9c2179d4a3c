//! `shmbus demo`: this binary re-runs itself as a producer process and a consumer process
//! (hidden `__producer`/`__consumer` subcommands) that stream 64-byte ticks, written and
//! read in place, and reports throughput and one-way latency.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use shmbus::{Options, Receiver, Sender};

/// A 64-byte tick that travels zero-copy.
#[derive(shmbus::Message, Clone, Copy, Debug)]
#[repr(C)]
struct Tick {
    seq: u64,
    sent_ns: u64,
    price: f64,
    qty: f64,
    venue: [u8; 8],
    flags: [u32; 6],
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn options(prefix: &str) -> Options {
    let mut o = Options::new();
    o.prefix(prefix).capacity(1024);
    o
}

pub fn run(prefix: &str, messages: u64) -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find own binary: {e}"))?;
    let name = format!("demo-{}", std::process::id());
    println!("shmbus demo: {messages} ticks of 64 bytes over /dev/shm/{prefix}{name}");
    let spawn = |role: &str| {
        Command::new(&exe)
            .args(["--prefix", prefix, role, &name, &messages.to_string()])
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start the {role} process: {e}"))
    };
    let consumer = spawn("__consumer")?;
    let producer = spawn("__producer")?;
    for (what, child) in [("producer", producer), ("consumer", consumer)] {
        let pid = child.id();
        let out = child
            .wait_with_output()
            .map_err(|e| format!("{what}: {e}"))?;
        print!(
            "  {what} (pid {pid}): {}",
            String::from_utf8_lossy(&out.stdout)
        );
        if !out.status.success() {
            return Err(format!("the {what} process failed ({})", out.status));
        }
    }
    Ok(())
}

pub fn producer(prefix: &str, name: &str, messages: u64) -> Result<(), String> {
    let tx = Sender::<Tick>::open_or_create(name, &options(prefix)).map_err(|e| e.to_string())?;
    while !tx.is_connected() {
        std::thread::sleep(Duration::from_millis(1));
    }
    let start = Instant::now();
    for seq in 0..messages {
        let mut slot = tx.loan().map_err(|e| e.to_string())?;
        *slot = Tick {
            seq,
            sent_ns: now_ns(),
            price: 100.0 + (seq % 100) as f64 / 100.0,
            qty: 1.0,
            venue: *b"XNAS\0\0\0\0",
            flags: [0; 6],
        };
        slot.send();
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "sent {messages} in {secs:.3} s: {:.2} M messages/s",
        messages as f64 / secs / 1e6
    );
    Ok(())
}

pub fn consumer(prefix: &str, name: &str, messages: u64) -> Result<(), String> {
    let rx = Receiver::<Tick>::open_or_create(name, &options(prefix)).map_err(|e| e.to_string())?;
    let mut lat = Vec::with_capacity(messages.min(1 << 20) as usize);
    let mut start = None;
    for expected in 0..messages {
        let tick = rx.recv().map_err(|e| e.to_string())?;
        start.get_or_insert_with(Instant::now);
        if tick.seq != expected {
            return Err(format!(
                "out of order: got {} expected {expected}",
                tick.seq
            ));
        }
        if expected % 64 == 0 && lat.len() < lat.capacity() {
            lat.push(now_ns().saturating_sub(tick.sent_ns));
        }
    }
    let secs = start.map_or(0.0, |s| s.elapsed().as_secs_f64());
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 - 1.0) * p) as usize)
            .copied()
            .unwrap_or(0)
    };
    println!(
        "received {messages} in order in {secs:.3} s: {:.2} M messages/s; one-way latency (busy stream, sampled 1/64) median {} ns, p99 {} ns",
        messages as f64 / secs.max(1e-9) / 1e6,
        pct(0.5),
        pct(0.99)
    );
    Ok(())
}
