//! `shmbus bench`: 64-byte round-trip latency and busy-stream throughput over every
//! transport, between this process and a copy of itself (the hidden `__bench_child`
//! subcommand), pinned to CPUs 0 and 1.
//!
//! For each transport the parent sends a message on a "ping" channel and the child echoes
//! it on a "pong" channel (round trips); then the parent streams messages and the child
//! acknowledges the last one (throughput, measured from the first send to the
//! acknowledgement). The file log runs as `file` (mmap, no sync), `file_rw`
//! (pread/pwrite), `file_batch` (fdatasync every 1000) and `file_fsync` (per message: pass
//! small counts), in `$TMPDIR`; its directories are removed afterwards. With the `dbus`
//! feature, `dbus` runs on the session bus (`DBUS_SESSION_BUS_ADDRESS`; wrap the command in
//! `dbus-run-session --` for a private one): one method call through the bus daemon per
//! message, so pass a small `--stream`.

use std::io::Write;
use std::process::Command;
use std::time::{Duration, Instant};

use shmbus::{Options, Receiver, Sender, Transport};

use crate::Result;

#[derive(shmbus::Message, Clone, Copy, Debug)]
#[repr(C)]
struct Tick {
    seq: u64,
    rest: [u64; 7],
}

/// The transports measured when none is named.
pub const DEFAULT: &[&str] = &[
    "shm", "sysv_shm", "pipe", "fifo", "unix", "abstract", "posix_mq", "sysv_mq", "file",
];

fn options(prefix: &str, transport: &str, name: &str) -> Result<Options> {
    let mut o = Options::new();
    o.capacity(1024)
        .prefix(prefix)
        .connect_timeout(Duration::from_secs(20));
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
        "pipe" => Transport::SharedMemory, // not used: pipes are made by `shmbus::pipe`
        #[cfg(feature = "dbus")]
        "dbus" => Transport::DBus {
            bus: shmbus::DBusBus::Session,
        },
        other => {
            return Err(format!(
                "unknown transport {other:?}; choose from {}, file_rw, file_batch, file_fsync{}",
                DEFAULT.join(", "),
                if cfg!(feature = "dbus") {
                    ", dbus"
                } else {
                    " (dbus: build with --features dbus)"
                }
            ))
        }
    };
    o.transport(t);
    Ok(o)
}

fn tick(seq: u64) -> Tick {
    Tick {
        seq,
        rest: [seq; 7],
    }
}

pub(crate) fn pin_to_cpu(cpu: usize) {
    // The CPUs online, not this process's affinity: a child inherits its parent's pinning.
    // SAFETY: sysconf only reads a configuration value.
    let ncpu = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(1) as usize;
    if cpu >= ncpu {
        return;
    }
    // SAFETY: `set` is a plain bit set initialised by CPU_ZERO; sched_setaffinity only
    // reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_ZERO(&mut set);
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// One transport's figures.
pub struct Row {
    pub transport: String,
    pub rtt_median: Duration,
    pub rtt_p99: Duration,
    pub messages_per_s: f64,
}

fn err(what: &str) -> impl Fn(String) -> String + '_ {
    move |e| format!("{what}: {e}")
}

/// The echoing child: ping → pong for `rt` round trips, then drain `stream` and ack.
pub fn child(prefix: &str, transport: &str, id: &str, rt: u64, stream: u64) -> Result {
    pin_to_cpu(1);
    let s = |e: &dyn std::fmt::Display| e.to_string();
    let (ping, pong): (Receiver<Tick>, Sender<Tick>) = if transport == "pipe" {
        (
            Receiver::from_inherited("SHMBUS_BENCH_PING").map_err(|e| s(&e))?,
            Sender::from_inherited("SHMBUS_BENCH_PONG").map_err(|e| s(&e))?,
        )
    } else {
        let (a, b) = (format!("{id}-ping"), format!("{id}-pong"));
        (
            Receiver::open_or_create(&a, &options(prefix, transport, &a)?).map_err(|e| s(&e))?,
            Sender::open_or_create(&b, &options(prefix, transport, &b)?).map_err(|e| s(&e))?,
        )
    };
    for _ in 0..rt {
        let t = ping.recv().map_err(|e| s(&e))?.into_inner();
        pong.send(t).map_err(|e| s(&e))?;
    }
    let mut last = 0;
    for _ in 0..stream {
        last = ping.recv().map_err(|e| s(&e))?.seq;
    }
    pong.send(tick(last)).map_err(|e| s(&e))?;
    // Wait for the parent to finish reading before leaving.
    let _ = ping.recv();
    Ok(())
}

fn measure(prefix: &str, transport: &str, rt: u64, stream: u64) -> Result<Row> {
    let id = format!("bench-{transport}-{}", std::process::id());
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut cmd = Command::new(exe);
    cmd.args(["--prefix", prefix, "__bench_child", transport, &id])
        .arg(rt.to_string())
        .arg(stream.to_string());
    let s = |e: &dyn std::fmt::Display| e.to_string();
    let (ping, pong, mut child) = if transport == "pipe" {
        let (ping_tx, ping_rx) = shmbus::pipe::<Tick>().map_err(|e| s(&e))?;
        let (pong_tx, pong_rx) = shmbus::pipe::<Tick>().map_err(|e| s(&e))?;
        ping_rx
            .pass_to(&mut cmd, "SHMBUS_BENCH_PING")
            .map_err(|e| s(&e))?;
        pong_tx
            .pass_to(&mut cmd, "SHMBUS_BENCH_PONG")
            .map_err(|e| s(&e))?;
        let child = cmd.spawn().map_err(|e| s(&e))?;
        drop(cmd);
        (ping_tx, pong_rx, child)
    } else {
        let child = cmd.spawn().map_err(|e| s(&e))?;
        let (a, b) = (format!("{id}-ping"), format!("{id}-pong"));
        let ping = Sender::open_or_create(&a, &options(prefix, transport, &a)?).map_err(|e| s(&e));
        let pong =
            Receiver::open_or_create(&b, &options(prefix, transport, &b)?).map_err(|e| s(&e));
        match (ping, pong) {
            (Ok(p), Ok(q)) => (p, q, child),
            (Err(e), _) | (_, Err(e)) => {
                let mut child = child;
                let _ = child.kill();
                let _ = child.wait();
                return Err(e);
            }
        }
    };
    pin_to_cpu(0);
    let result = (|| -> Result<Row> {
        let mut samples = Vec::with_capacity(rt as usize);
        for i in 0..rt {
            let t0 = Instant::now();
            ping.send(tick(i)).map_err(|e| s(&e))?;
            let back = pong.recv().map_err(|e| s(&e))?.into_inner();
            samples.push(t0.elapsed().as_nanos() as u64);
            if back.seq != i {
                return Err(format!("echo {} for {i}", back.seq));
            }
        }
        samples.sort_unstable();
        let at = |q: f64| {
            let i = ((samples.len().max(1) as f64 - 1.0) * q).round() as usize;
            Duration::from_nanos(samples.get(i).copied().unwrap_or(0))
        };
        let t0 = Instant::now();
        for i in 0..stream {
            ping.send(tick(i)).map_err(|e| s(&e))?;
        }
        let ack = pong.recv().map_err(|e| s(&e))?.into_inner();
        let took = t0.elapsed();
        if stream > 0 && ack.seq != stream - 1 {
            return Err(format!("acknowledged {} of {stream}", ack.seq + 1));
        }
        Ok(Row {
            transport: transport.to_owned(),
            rtt_median: at(0.5),
            rtt_p99: at(0.99),
            messages_per_s: stream as f64 / took.as_secs_f64(),
        })
    })();
    let _ = ping.send(tick(0));
    drop(ping);
    drop(pong);
    let status = child.wait().map_err(|e| s(&e))?;
    if transport.starts_with("file") {
        for end in ["ping", "pong"] {
            let _ = std::fs::remove_dir_all(std::env::temp_dir().join(format!("{id}-{end}.log")));
        }
    }
    let row = result.map_err(err(transport))?;
    if !status.success() {
        return Err(format!("{transport}: the child process failed ({status})"));
    }
    Ok(row)
}

/// Runs the chosen transports, with a progress bar on stderr, and prints the table (or
/// JSON).
pub fn run(prefix: &str, transports: &[String], rt: u64, stream: u64, json: bool) -> Result {
    let chosen: Vec<&str> = if transports.is_empty() {
        DEFAULT.to_vec()
    } else {
        transports.iter().map(String::as_str).collect()
    };
    for t in &chosen {
        options(prefix, t, "check")?;
    }
    let mut rows = Vec::new();
    for (i, t) in chosen.iter().enumerate() {
        progress(i, chosen.len(), t);
        rows.push(measure(prefix, t, rt, stream)?);
    }
    progress(chosen.len(), chosen.len(), "done");
    eprintln!();
    if json {
        let list: Vec<serde_json::Value> = rows
            .iter()
            .map(|r| {
                serde_json::json!({
                    "transport": r.transport,
                    "rtt_median_ns": r.rtt_median.as_nanos() as u64,
                    "rtt_p99_ns": r.rtt_p99.as_nanos() as u64,
                    "messages_per_s": r.messages_per_s,
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(list));
        return Ok(());
    }
    println!(
        "64-byte messages; {rt} round trips, a stream of {stream}; parent on CPU 0, child on CPU 1"
    );
    println!(
        "{:<11} {:>12} {:>12} {:>14}",
        "TRANSPORT", "RTT MEDIAN", "RTT P99", "STREAM"
    );
    for r in &rows {
        println!(
            "{:<11} {:>12} {:>12} {:>10.2} M/s",
            r.transport,
            format!("{:.1?}", r.rtt_median),
            format!("{:.1?}", r.rtt_p99),
            r.messages_per_s / 1e6
        );
    }
    Ok(())
}

fn progress(done: usize, total: usize, what: &str) {
    let width = 30;
    let filled = (done * width).checked_div(total).unwrap_or(width);
    let mut err = std::io::stderr().lock();
    let _ = write!(
        err,
        "\r[{}{}] {done}/{total} {what:<12}",
        "#".repeat(filled),
        "-".repeat(width - filled)
    );
    let _ = err.flush();
}
