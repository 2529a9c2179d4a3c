//! `shmbus`: look at, feed and clean up shmbus channels from the shell.
//!
//! Every command observes channels read-only through [`shmbus::inspect`] except `send`
//! (which attaches as a sender), `clean` (which removes channels nobody holds) and `demo`.

mod bench;
mod bridge;
mod demo;
mod format;
mod postcard;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use serde_json::json;
use shmbus::inspect::{
    self, ChannelInfo, Endpoint, Observed, Observer, ParticipantInfo, Peer, Removed,
};

#[derive(Parser)]
#[command(
    name = "shmbus",
    version,
    about = "Inspect and use shmbus shared-memory channels"
)]
struct Cli {
    /// Prefix of the channels' object names in /dev/shm.
    #[arg(long, global = true, env = "SHMBUS_PREFIX", default_value = shmbus::DEFAULT_PREFIX)]
    prefix: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List the channels of every transport that can be found: shared memory (POSIX and
    /// System V), POSIX and System V queues, and FIFOs, Unix sockets and file logs named
    /// after the prefix in $XDG_RUNTIME_DIR (or /tmp) or given with --path.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// A FIFO, Unix socket or file-log directory to look at too (repeatable).
        #[arg(long = "path", value_name = "PATH")]
        paths: Vec<std::path::PathBuf>,
    },
    /// Show a channel's description, participants and counters.
    Stat {
        /// The channel name.
        name: String,
        /// Print again every interval, with rates.
        #[arg(long)]
        watch: bool,
        /// Interval of --watch, in milliseconds.
        #[arg(long, default_value_t = 1000)]
        interval: u64,
        /// Stop --watch after this many rows (default: until interrupted or stale).
        #[arg(long)]
        ticks: Option<u64>,
    },
    /// Print messages as they are committed, decoded through the channel's schema. Never
    /// takes a message away from a receiver.
    Tail {
        /// The channel name.
        name: String,
        /// Exit after this many messages.
        #[arg(long, short = 'n')]
        count: Option<u64>,
        /// Exit after this many milliseconds without a new message.
        #[arg(long)]
        idle_timeout: Option<u64>,
    },
    /// Send one message given as JSON, encoded through the channel's recorded schema (zero-copy
    /// or serialized), attaching as a sender.
    Send {
        /// The channel name.
        name: String,
        /// The message, e.g. '{"seq": 1, "price": 2.5, "venue": "XNAS"}'; enum variants as
        /// '"Start"' or '{"Fill": [300, 1.5]}', `Option` as null or the value.
        json: String,
        /// How long to wait for a free slot, in milliseconds.
        #[arg(long, default_value_t = 5000)]
        timeout: u64,
    },
    /// Remove stale channels of every transport `list` finds (every process that used
    /// them is gone): segments, queues with their presence files, lock files, FIFOs nobody
    /// has open, socket files nobody listens on. Never removes one that a live process
    /// holds; never removes file logs (their records are kept on purpose).
    Clean {
        /// Only show what would be removed.
        #[arg(long)]
        dry_run: bool,
        /// A FIFO or Unix socket to consider too (repeatable).
        #[arg(long = "path", value_name = "PATH")]
        paths: Vec<std::path::PathBuf>,
    },
    /// Start here: a producer and consumer processes stream typed messages over shared
    /// memory, with live throughput and latency, then measure round trips.
    Demo {
        /// Seconds to stream.
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
        /// Stream this many messages instead of streaming for --seconds.
        #[arg(long)]
        messages: Option<u64>,
        /// Consumer processes (each gets every message). Default: 2, or 1 on a machine
        /// with fewer than 3 CPUs (so that no process has to share a CPU).
        #[arg(long)]
        consumers: Option<u32>,
        /// Round trips per round-trip phase.
        #[arg(long, default_value_t = 100_000)]
        round_trips: u64,
    },
    /// Measure 64-byte round-trip latency and busy-stream throughput over every transport
    /// (or the ones named), between this process and a copy of itself.
    Bench {
        /// Transports to measure (default: shm sysv_shm pipe fifo unix abstract posix_mq
        /// sysv_mq file; also file_rw, file_batch, file_fsync).
        transports: Vec<String>,
        /// Round trips per transport.
        #[arg(long, default_value_t = 20_000)]
        round_trips: u64,
        /// Messages in the throughput stream.
        #[arg(long, default_value_t = 200_000)]
        stream: u64,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Carry channels to and from other machines over Zenoh (needs the `bridge` feature:
    /// `cargo install --path cli --features bridge`).
    Bridge(bridge::Args),
    #[command(name = "__bench_child", hide = true)]
    BenchChild {
        transport: String,
        id: String,
        round_trips: u64,
        stream: u64,
    },
    #[command(name = "__producer", hide = true)]
    Producer {
        name: String,
        seconds: f64,
        messages: u64,
        consumers: u32,
        round_trips: u64,
    },
    #[command(name = "__consumer", hide = true)]
    Consumer {
        name: String,
        index: u32,
        consumers: u32,
    },
}

type Result<T = (), E = String> = std::result::Result<T, E>;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let prefix = cli.prefix.as_str();
    let result = match cli.command {
        Command::List { json, paths } => list(prefix, json, paths),
        Command::Stat {
            name,
            watch,
            interval,
            ticks,
        } => stat(prefix, &name, watch, interval, ticks),
        Command::Tail {
            name,
            count,
            idle_timeout,
        } => tail(prefix, &name, count, idle_timeout),
        Command::Send {
            name,
            json,
            timeout,
        } => send(prefix, &name, &json, timeout),
        Command::Clean { dry_run, paths } => clean(prefix, dry_run, paths),
        Command::Demo {
            seconds,
            messages,
            consumers,
            round_trips,
        } => demo::run(
            prefix,
            &demo::Config {
                seconds,
                messages,
                consumers: consumers.unwrap_or_else(demo::default_consumers),
                round_trips,
            },
        ),
        Command::Bench {
            transports,
            round_trips,
            stream,
            json,
        } => bench::run(prefix, &transports, round_trips, stream, json),
        Command::Bridge(args) => bridge::run(prefix, args),
        Command::BenchChild {
            transport,
            id,
            round_trips,
            stream,
        } => bench::child(prefix, &transport, &id, round_trips, stream),
        Command::Producer {
            name,
            seconds,
            messages,
            consumers,
            round_trips,
        } => demo::producer(prefix, &name, seconds, messages, consumers, round_trips),
        Command::Consumer {
            name,
            index,
            consumers,
        } => demo::consumer(prefix, &name, index, consumers),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shmbus: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn open(prefix: &str, name: &str) -> Result<Observer> {
    Observer::open(prefix, name).map_err(|e| e.to_string())
}

fn participant_json(p: &ParticipantInfo) -> serde_json::Value {
    json!({
        "index": p.index,
        "pid": p.pid,
        "state": format!("{:?}", p.state).to_lowercase(),
        "alive": p.alive,
        "sent": p.counters.sent,
        "received": p.counters.received,
        "full_waits": p.counters.full_waits,
        "wakeups": p.counters.wakeups,
        "lagged": p.counters.lagged,
    })
}

fn info_json(i: &ChannelInfo) -> serde_json::Value {
    json!({
        "name": i.name,
        "object": i.object,
        "transport": i.transport,
        "mode": i.mode.name(),
        "overflow": i.overflow,
        "type": i.type_name,
        "encoding": i.encoding.map_or("unknown", |e| e.name()),
        "fingerprint": format!("{:016x}", i.fingerprint),
        "capacity": i.capacity,
        "slot_size": i.slot_size,
        "depth": i.depth,
        "stale": i.stale,
        "senders": i.senders.iter().map(participant_json).collect::<Vec<_>>(),
        "receivers": i.receivers.iter().map(participant_json).collect::<Vec<_>>(),
    })
}

fn peers_text(ps: &[Peer]) -> String {
    if ps.is_empty() {
        return "-".into();
    }
    ps.iter()
        .map(|p| match (p.pid, p.alive) {
            (Some(pid), true) => pid.to_string(),
            (Some(pid), false) => format!("{pid}(dead)"),
            (None, true) => "?".into(),
            (None, false) => "?(dead)".into(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn peers_json(ps: &[Peer]) -> serde_json::Value {
    ps.iter()
        .map(|p| json!({"pid": p.pid, "alive": p.alive}))
        .collect()
}

fn endpoint_json(e: &Endpoint) -> serde_json::Value {
    let mut v = match &e.channel {
        Some(i) => info_json(i),
        None => json!({
            "name": e.name,
            "mode": e.mode.map(|m| m.name()),
            "type": e.type_name,
            "encoding": e.encoding.map(|e| e.name()),
            "capacity": e.capacity,
            "depth": e.depth,
            "stale": e.stale,
            "senders": peers_json(&e.senders),
            "receivers": peers_json(&e.receivers),
        }),
    };
    v["transport"] = json!(e.transport.name());
    v["location"] = json!(e.location);
    if let Some(err) = &e.error {
        v["error"] = json!(err);
    }
    v
}

fn scan(prefix: &str, paths: Vec<std::path::PathBuf>) -> Result<Vec<Endpoint>> {
    let mut what = inspect::Scan::new(prefix);
    what.paths = paths;
    inspect::scan(&what).map_err(|e| format!("cannot list channels: {e}"))
}

fn list(prefix: &str, as_json: bool, paths: Vec<std::path::PathBuf>) -> Result {
    let entries = scan(prefix, paths)?;
    if as_json {
        let v: Vec<_> = entries.iter().map(endpoint_json).collect();
        println!("{}", serde_json::Value::Array(v));
        return Ok(());
    }
    if entries.is_empty() {
        println!(
            "no channels with prefix {prefix:?} (looked in /dev/shm, {}, /proc/net/unix)",
            runtime_dir()
        );
        return Ok(());
    }
    let mut rows = vec![[
        "NAME",
        "TRANSPORT",
        "MODE",
        "TYPE",
        "CAP",
        "DEPTH",
        "SENDERS",
        "RECEIVERS",
        "STATE",
    ]
    .map(String::from)];
    let opt = |v: Option<u64>| v.map_or("-".to_string(), |n| n.to_string());
    for e in &entries {
        rows.push([
            e.name.clone(),
            e.transport.name().into(),
            e.mode.map_or("-", |m| m.name()).into(),
            e.type_name.clone().unwrap_or_else(|| "?".into()),
            opt(e.capacity),
            opt(e.depth),
            peers_text(&e.senders),
            peers_text(&e.receivers),
            match (&e.error, e.stale) {
                (_, true) => "stale".into(),
                (None, false)
                    if e.transport == inspect::Transport::FileLog
                        && e.senders.is_empty()
                        && e.receivers.is_empty() =>
                {
                    "kept (unused)".into()
                }
                (Some(err), false) => format!("unreadable: {err}"),
                (None, false) => "live".into(),
            },
        ]);
    }
    print_table(&rows);
    Ok(())
}

fn runtime_dir() -> String {
    std::env::var("XDG_RUNTIME_DIR")
        .ok()
        .filter(|d| std::path::Path::new(d).is_dir())
        .unwrap_or_else(|| "/tmp".into())
}

fn print_table<const N: usize>(rows: &[[String; N]]) {
    let mut widths = [0usize; N];
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
}

fn stat(prefix: &str, name: &str, watch: bool, interval_ms: u64, ticks: Option<u64>) -> Result {
    let obs = open(prefix, name)?;
    let i = obs.info();
    println!("channel    {} (/dev/shm/{})", i.name, i.object);
    println!(
        "type       {} ({}, fingerprint {:016x})",
        i.type_name,
        i.encoding.map_or("unknown", |e| e.name()),
        i.fingerprint
    );
    println!(
        "delivery   {} / {}{}",
        i.mode.name(),
        i.overflow,
        if i.history > 0 {
            format!(", history {}", i.history)
        } else {
            String::new()
        }
    );
    println!(
        "ring       {} slots × {} bytes (max message {} bytes), {} bytes, transport {}",
        i.capacity, i.slot_size, i.max_message, i.total_size, i.transport
    );
    if let Some(s) = &i.schema {
        let fields: Vec<String> = s
            .fields
            .iter()
            .map(|f| format!("{}: {}", f.name, f.type_name))
            .collect();
        println!("schema     {} {{ {} }}", s.name, fields.join(", "));
    }
    println!(
        "state      {}, created by pid {}",
        if i.stale {
            "stale (no process holds it)"
        } else {
            "live"
        },
        i.creator_pid
    );
    let mut rows = vec![[
        "ROLE",
        "#",
        "PID",
        "STATE",
        "SENT",
        "RECEIVED",
        "FULL-WAITS",
        "WAKEUPS",
        "LAGGED",
    ]
    .map(String::from)];
    for (role, ps) in [("sender", &i.senders), ("receiver", &i.receivers)] {
        for p in ps.iter() {
            let st = match (p.state, p.alive) {
                (inspect::ParticipantState::Active, true) => "alive",
                (inspect::ParticipantState::Active, false) => "dead",
                (inspect::ParticipantState::Left, _) => "left",
                (inspect::ParticipantState::Dead, _) => "dead",
            };
            let c = p.counters;
            rows.push([
                role.into(),
                p.index.to_string(),
                p.pid.to_string(),
                st.into(),
                c.sent.to_string(),
                c.received.to_string(),
                c.full_waits.to_string(),
                c.wakeups.to_string(),
                c.lagged.to_string(),
            ]);
        }
    }
    let (s, r) = (i.sender_totals(), i.receiver_totals());
    rows.push([
        "total".into(),
        String::new(),
        String::new(),
        String::new(),
        s.sent.to_string(),
        r.received.to_string(),
        s.full_waits.to_string(),
        (s.wakeups + r.wakeups).to_string(),
        r.lagged.to_string(),
    ]);
    print_table(&rows);
    println!("depth      {} (tail {}, head {})", i.depth, i.tail, i.head);
    if !watch {
        return Ok(());
    }
    let interval = Duration::from_millis(interval_ms.max(10));
    let (mut last_sent, mut last_recv, mut last_t) = (s.sent, r.received, Instant::now());
    println!();
    println!(
        "{:>12}  {:>12}  {:>14}  {:>14}  {:>8}",
        "SENT", "RECEIVED", "SENT/S", "RECEIVED/S", "DEPTH"
    );
    let mut rows = 0u64;
    while ticks.is_none_or(|t| rows < t) {
        rows += 1;
        std::thread::sleep(interval);
        let i = obs.info();
        let (s, r) = (i.sender_totals(), i.receiver_totals());
        let dt = last_t.elapsed().as_secs_f64();
        println!(
            "{:>12}  {:>12}  {:>14.0}  {:>14.0}  {:>8}",
            s.sent,
            r.received,
            s.sent.saturating_sub(last_sent) as f64 / dt,
            r.received.saturating_sub(last_recv) as f64 / dt,
            i.depth
        );
        (last_sent, last_recv, last_t) = (s.sent, r.received, Instant::now());
        if i.stale {
            println!("the channel is stale: every process using it is gone");
            return Ok(());
        }
    }
    Ok(())
}

fn tail(prefix: &str, name: &str, count: Option<u64>, idle_ms: Option<u64>) -> Result {
    let obs = open(prefix, name)?;
    let info = obs.info();
    let schema = info.schema.as_ref();
    if schema.is_none() {
        eprintln!("shmbus: note: channel {name:?} has no recorded schema; printing bytes as hex");
    }
    let cap = obs.capacity();
    let mut pos = obs.head();
    let (mut printed, mut missed) = (0u64, 0u64);
    let mut last_new = Instant::now();
    while count.is_none_or(|c| printed < c) {
        match obs.snapshot(pos) {
            Observed::Message(bytes) => {
                println!("{}", format::decode(schema, &bytes));
                printed += 1;
                pos += 1;
                last_new = Instant::now();
            }
            Observed::Skipped => pos += 1,
            Observed::Gone => {
                // Taken and released by a receiver (queue) or overwritten (broadcast) before
                // we copied it: move on, to the oldest message that can still be there.
                let resume = (pos + 1).max(obs.tail().saturating_sub(cap));
                missed += resume - pos;
                pos = resume;
            }
            Observed::NotYet => {
                if idle_ms.is_some_and(|ms| last_new.elapsed() >= Duration::from_millis(ms)) {
                    break;
                }
                if obs.is_stale() && obs.tail() <= pos {
                    eprintln!("shmbus: channel {name:?} is stale: every process using it is gone");
                    break;
                }
                std::thread::sleep(Duration::from_micros(200));
            }
        }
    }
    if missed > 0 {
        eprintln!("shmbus: {missed} messages were taken by receivers before tail could copy them");
    }
    Ok(())
}

fn send(prefix: &str, name: &str, text: &str, timeout_ms: u64) -> Result {
    let obs = open(prefix, name)?;
    let info = obs.info();
    let schema = info.schema.as_ref().ok_or_else(|| {
        format!(
            "channel {name:?} has no recorded schema, so its messages cannot be encoded from JSON"
        )
    })?;
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("the message is not valid JSON: {e}"))?;
    let bytes = format::encode(schema, &value)?;
    let mut opts = shmbus::Options::new();
    opts.prefix(prefix);
    let tx = inspect::RawSender::open(name, &opts, obs.message_info())
        .map_err(|e| format!("cannot attach as a sender: {e}"))?;
    tx.send_bytes(&bytes, Duration::from_millis(timeout_ms))
        .map_err(|e| format!("not sent: {e}"))?;
    println!("sent {}", format::decode(Some(schema), &bytes));
    Ok(())
}

fn clean(prefix: &str, dry_run: bool, paths: Vec<std::path::PathBuf>) -> Result {
    let entries = scan(prefix, paths)?;
    let mut removed = 0;
    for e in &entries {
        let what = format!("{} {}", e.transport.name(), e.name);
        if matches!(
            e.transport,
            inspect::Transport::FileLog | inspect::Transport::AbstractSocket
        ) {
            continue;
        }
        // Unreadable ring segments (another layout version, half-created) count as
        // candidates: clean_stale removes them only if nobody holds them, atomically.
        let candidate = e.stale
            || (e.error.is_some()
                && matches!(
                    e.transport,
                    inspect::Transport::PosixShm | inspect::Transport::SysvShm
                ));
        if !candidate {
            println!("keep    {what} (in use)");
            continue;
        }
        if dry_run {
            println!("would remove {what} ({})", e.location);
            continue;
        }
        match inspect::clean_stale(prefix, e) {
            Ok(Removed::Removed) => {
                println!("removed {what} ({})", e.location);
                removed += 1;
            }
            Ok(Removed::InUse) => println!("keep    {what} (in use)"),
            Ok(Removed::NotApplicable) => {}
            Err(err) => eprintln!("shmbus: cannot remove {what}: {err}"),
        }
    }
    if !dry_run {
        println!("{removed} stale channel(s) removed");
    }
    Ok(())
}
