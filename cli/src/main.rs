//! `shmbus`: look at, feed and clean up shmbus channels from the shell.
//!
//! Every command observes channels read-only through [`shmbus::inspect`] except `send`
//! (which attaches as a sender), `clean` (which removes channels nobody holds) and `demo`.

mod bench;
mod bridge;
mod demo;
mod format;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use serde_json::json;
use shmbus::inspect::{self, ChannelInfo, Observed, Observer, ParticipantInfo};

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
    /// List the channels in /dev/shm.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
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
    /// Send one message given as JSON (zero-copy message types), attaching as a sender.
    Send {
        /// The channel name.
        name: String,
        /// The message, e.g. '{"seq": 1, "price": 2.5, "venue": "XNAS"}'.
        json: String,
        /// How long to wait for a free slot, in milliseconds.
        #[arg(long, default_value_t = 5000)]
        timeout: u64,
    },
    /// Remove stale channels (every process that used them is gone). Never removes one
    /// that a live process holds.
    Clean {
        /// Only show what would be removed.
        #[arg(long)]
        dry_run: bool,
    },
    /// Run a producer and a consumer process and report throughput and latency.
    Demo {
        /// Messages to stream.
        #[arg(long, default_value_t = 2_000_000)]
        messages: u64,
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
    Producer { name: String, messages: u64 },
    #[command(name = "__consumer", hide = true)]
    Consumer { name: String, messages: u64 },
}

type Result<T = (), E = String> = std::result::Result<T, E>;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let prefix = cli.prefix.as_str();
    let result = match cli.command {
        Command::List { json } => list(prefix, json),
        Command::Stat {
            name,
            watch,
            interval,
        } => stat(prefix, &name, watch, interval),
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
        Command::Clean { dry_run } => clean(prefix, dry_run),
        Command::Demo { messages } => demo::run(prefix, messages),
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
        Command::Producer { name, messages } => demo::producer(prefix, &name, messages),
        Command::Consumer { name, messages } => demo::consumer(prefix, &name, messages),
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

fn pids(ps: &[ParticipantInfo]) -> String {
    let live: Vec<String> = ps
        .iter()
        .filter(|p| p.state == inspect::ParticipantState::Active)
        .map(|p| {
            if p.alive {
                p.pid.to_string()
            } else {
                format!("{}(dead)", p.pid)
            }
        })
        .collect();
    if live.is_empty() {
        "-".into()
    } else {
        live.join(",")
    }
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

fn list(prefix: &str, as_json: bool) -> Result {
    let entries = inspect::list(prefix).map_err(|e| format!("cannot read /dev/shm: {e}"))?;
    if as_json {
        let v: Vec<_> = entries
            .iter()
            .map(|e| match e {
                Ok(i) => info_json(i),
                Err(u) => json!({"name": u.name, "error": u.error.to_string()}),
            })
            .collect();
        println!("{}", serde_json::Value::Array(v));
        return Ok(());
    }
    let mut rows = vec![[
        "NAME",
        "MODE",
        "TYPE",
        "ENCODING",
        "CAP",
        "SLOT",
        "DEPTH",
        "SENDERS",
        "RECEIVERS",
        "STATE",
    ]
    .map(String::from)];
    for e in &entries {
        rows.push(match e {
            Ok(i) => [
                i.name.clone(),
                i.mode.name().into(),
                i.type_name.clone(),
                i.encoding.map_or("unknown", |e| e.name()).into(),
                i.capacity.to_string(),
                i.slot_size.to_string(),
                i.depth.to_string(),
                pids(&i.senders),
                pids(&i.receivers),
                if i.stale { "stale" } else { "live" }.into(),
            ],
            Err(u) => {
                let mut r: [String; 10] = Default::default();
                r[0] = u.name.clone();
                r[9] = format!("unreadable: {}", u.error);
                r
            }
        });
    }
    if entries.is_empty() {
        println!("no channels in /dev/shm with prefix {prefix:?}");
        return Ok(());
    }
    print_table(&rows);
    Ok(())
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

fn stat(prefix: &str, name: &str, watch: bool, interval_ms: u64) -> Result {
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
    loop {
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

fn clean(prefix: &str, dry_run: bool) -> Result {
    let names = inspect::names(prefix).map_err(|e| format!("cannot read /dev/shm: {e}"))?;
    let mut removed = 0;
    for name in names {
        let stale = match Observer::open(prefix, &name) {
            Ok(o) => o.is_stale(),
            Err(inspect::InspectError::NotFound { .. }) => continue,
            // Unreadable (another layout version, half-created): removed below only if
            // nobody holds it, which remove_stale checks atomically.
            Err(_) => true,
        };
        if !stale {
            println!("keep    {name} (in use)");
            continue;
        }
        if dry_run {
            println!("would remove {name}");
            continue;
        }
        match inspect::remove_stale(prefix, &name) {
            Ok(true) => {
                println!("removed {name}");
                removed += 1;
            }
            Ok(false) => println!("keep    {name} (in use)"),
            Err(e) => eprintln!("shmbus: cannot remove {name}: {e}"),
        }
    }
    if !dry_run {
        println!("{removed} stale channel(s) removed");
    }
    Ok(())
}
