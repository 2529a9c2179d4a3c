//! The shmbus demo: a producer process and a consumer process exchange typed messages over
//! shared memory, and this process reports what they exchanged and how fast.
//!
//! ```text
//! cargo run --release --example demo                      # 5 M messages, 100 k round trips
//! cargo run --release --example demo -- --messages 20000000 --round-trips 200000
//! ```
//!
//! Three phases, each between two real processes pinned to CPUs 0 and 1:
//! 1. a busy stream of 64-byte `Tick`s, written in place (`loan` → write → `send`) by the
//!    producer and read in place by the consumer, which checks every sequence number;
//! 2. ping-pong round trips with the default wait strategy (spin 20 µs, then futex);
//! 3. ping-pong round trips that always sleep (`spin(0)`), to show the kernel wake-up cost.
//!
//! The children report back over a third kind of channel: a serde (postcard) message with
//! strings and vectors, through the same API.

#[path = "util/mod.rs"]
mod util;

use std::time::{Duration, Instant};

use shmbus::{Options, Receiver, Sender};

/// A 64-byte market-data message that travels zero-copy.
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

/// A ping-pong message.
#[derive(shmbus::Message, Clone, Copy, Debug)]
#[repr(C)]
struct Ping {
    seq: u64,
    t0_ns: u64,
}

/// What a child reports to the parent: serialized with postcard.
#[derive(shmbus::Message, serde::Serialize, serde::Deserialize, Debug, Clone)]
enum Report {
    Consumer {
        received: u64,
        in_order: bool,
        seconds: f64,
        first: Vec<String>,
        last: String,
    },
    Producer {
        sent: u64,
        seconds: f64,
        rtt_busy_ns: Vec<u64>,
        rtt_sleep_ns: Vec<u64>,
    },
}

struct Config {
    messages: u64,
    round_trips: u64,
    id: String,
}

fn channel(cfg: &Config, what: &str) -> String {
    format!("{}.{what}", cfg.id)
}

fn parse() -> (Option<String>, Config) {
    let mut args = std::env::args().skip(1);
    let mut role = None;
    let mut cfg = Config {
        messages: 5_000_000,
        round_trips: 100_000,
        id: util::run_id("demo"),
    };
    while let Some(a) = args.next() {
        let mut value = || args.next().expect("a value after the flag");
        match a.as_str() {
            "--messages" => cfg.messages = value().parse().expect("--messages N"),
            "--round-trips" => cfg.round_trips = value().parse().expect("--round-trips N"),
            "--role" => role = Some(value()),
            "--id" => cfg.id = value(),
            "-h" | "--help" => {
                println!("usage: demo [--messages N] [--round-trips N]");
                std::process::exit(0);
            }
            other => panic!("unknown argument {other:?} (try --help)"),
        }
    }
    (role, cfg)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (role, cfg) = parse();
    match role.as_deref() {
        Some("producer") => producer(&cfg),
        Some("consumer") => consumer(&cfg),
        _ => parent(&cfg),
    }
}

fn parent(cfg: &Config) -> Result<(), Box<dyn std::error::Error>> {
    println!(
        "shmbus demo: producer and consumer processes, channels /dev/shm/shmbus.{}.*",
        cfg.id
    );
    // Reports carry every latency sample: room for a few MiB of postcard per message.
    let mut opts = Options::new();
    opts.capacity(2).max_message_size(8 << 20);
    let from_producer =
        Receiver::<Report>::open_or_create(&channel(cfg, "report-producer"), &opts)?;
    let from_consumer =
        Receiver::<Report>::open_or_create(&channel(cfg, "report-consumer"), &opts)?;
    let child_args = |role: &str| {
        vec![
            "--role".to_string(),
            role.to_string(),
            "--id".to_string(),
            cfg.id.clone(),
            "--messages".to_string(),
            cfg.messages.to_string(),
            "--round-trips".to_string(),
            cfg.round_trips.to_string(),
        ]
    };
    let mut consumer = util::spawn_self(&child_args("consumer"));
    let mut producer = util::spawn_self(&child_args("producer"));
    println!(
        "started consumer (pid {}) and producer (pid {})",
        consumer.id(),
        producer.id()
    );
    let reports = (from_consumer.recv(), from_producer.recv());
    let (cs, ps) = (consumer.wait(), producer.wait());
    let (cs, ps) = (cs?, ps?);
    let (c, p) = (reports.0?.into_inner(), reports.1?.into_inner());
    if !cs.success() || !ps.success() {
        return Err(format!("a child failed: consumer {cs}, producer {ps}").into());
    }
    let Report::Consumer {
        received,
        in_order,
        seconds,
        first,
        last,
    } = c
    else {
        return Err("unexpected report from the consumer".into());
    };
    let Report::Producer {
        sent,
        seconds: p_seconds,
        mut rtt_busy_ns,
        mut rtt_sleep_ns,
    } = p
    else {
        return Err("unexpected report from the producer".into());
    };
    println!();
    println!(
        "1. busy stream of {}-byte Tick messages, zero-copy (loan → write → send)",
        size_of::<Tick>()
    );
    for line in &first {
        println!("   consumer got  {line}");
    }
    println!("   ...");
    println!("   consumer got  {last}");
    println!(
        "   sent {sent}, received {received}, every sequence number in order: {}",
        if in_order { "yes" } else { "NO" }
    );
    println!(
        "   throughput: {:.1} M messages/s ({:.2} GB/s) at the consumer, {:.1} M/s at the producer",
        received as f64 / seconds / 1e6,
        received as f64 * size_of::<Tick>() as f64 / seconds / 1e9,
        sent as f64 / p_seconds / 1e6
    );
    let (med, p99, min) = util::percentiles(&mut rtt_busy_ns);
    println!();
    println!(
        "2. round trips, default wait (spin {:?}, then futex): {} samples",
        shmbus::DEFAULT_SPIN,
        rtt_busy_ns.len()
    );
    println!("   median {med:?}, p99 {p99:?}, min {min:?}");
    let (med, p99, min) = util::percentiles(&mut rtt_sleep_ns);
    println!();
    println!(
        "3. round trips that always sleep (spin 0, futex wake each way): {} samples",
        rtt_sleep_ns.len()
    );
    println!("   median {med:?}, p99 {p99:?}, min {min:?}");
    println!();
    println!("reports arrived as postcard-serialized `Report` enums over the same channel API.");
    if !in_order || received != cfg.messages {
        return Err("the consumer did not receive every message in order".into());
    }
    Ok(())
}

fn producer(cfg: &Config) -> Result<(), Box<dyn std::error::Error>> {
    util::pin_to_cpu(0);
    let report =
        Sender::<Report>::open_or_create(&channel(cfg, "report-producer"), &Options::new())?;
    let ticks =
        Sender::<Tick>::open_or_create(&channel(cfg, "ticks"), Options::new().capacity(4096))?;
    // Phase 1: stream.
    let start = Instant::now();
    for seq in 0..cfg.messages {
        let mut slot = ticks.loan()?;
        *slot = Tick {
            seq,
            sent_ns: 0,
            price: 100.0 + (seq % 1000) as f64 * 0.01,
            qty: (seq % 7 + 1) as f64,
            venue: *b"XNAS\0\0\0\0",
            flags: [seq as u32; 6],
        };
        slot.send();
    }
    let seconds = start.elapsed().as_secs_f64();
    drop(ticks);
    // Phases 2 and 3: ping-pong.
    let rtt_busy_ns = ping(cfg, "busy", Duration::from_micros(20), cfg.round_trips)?;
    let rtt_sleep_ns = ping(cfg, "sleep", Duration::ZERO, cfg.round_trips.min(20_000))?;
    report.send(Report::Producer {
        sent: cfg.messages,
        seconds,
        rtt_busy_ns,
        rtt_sleep_ns,
    })?;
    Ok(())
}

fn ping(
    cfg: &Config,
    what: &str,
    spin: Duration,
    n: u64,
) -> Result<Vec<u64>, Box<dyn std::error::Error>> {
    let mut opts = Options::new();
    opts.capacity(8).spin(spin);
    let tx = Sender::<Ping>::open_or_create(&channel(cfg, &format!("ping-{what}")), &opts)?;
    let rx = Receiver::<Ping>::open_or_create(&channel(cfg, &format!("pong-{what}")), &opts)?;
    let mut samples = Vec::with_capacity(n as usize);
    for seq in 0..n + 1000 {
        let t0 = Instant::now();
        tx.send(Ping { seq, t0_ns: 0 })?;
        let pong = rx.recv()?;
        let rtt = t0.elapsed();
        assert_eq!(pong.seq, seq, "pong answers the ping");
        if seq >= 1000 {
            samples.push(rtt.as_nanos() as u64); // the first 1000 warm up
        }
    }
    Ok(samples)
}

fn consumer(cfg: &Config) -> Result<(), Box<dyn std::error::Error>> {
    util::pin_to_cpu(1);
    let report =
        Sender::<Report>::open_or_create(&channel(cfg, "report-consumer"), &Options::new())?;
    let ticks =
        Receiver::<Tick>::open_or_create(&channel(cfg, "ticks"), Options::new().capacity(4096))?;
    let mut first = Vec::new();
    let mut last = String::new();
    let mut in_order = true;
    let mut received = 0u64;
    let mut start = None;
    while let Ok(tick) = ticks.recv() {
        start.get_or_insert_with(Instant::now);
        in_order &= tick.seq == received;
        if received < 3 || received + 1 == cfg.messages {
            let line = format!(
                "Tick {{ seq: {}, price: {:.2}, qty: {}, venue: {:?} }}",
                tick.seq,
                tick.price,
                tick.qty,
                std::str::from_utf8(&tick.venue)
                    .unwrap_or("?")
                    .trim_end_matches('\0')
            );
            if received < 3 {
                first.push(line);
            } else {
                last = line;
            }
        }
        received += 1;
        if received == cfg.messages {
            break;
        }
    }
    let seconds = start.map_or(0.0, |s| s.elapsed().as_secs_f64());
    drop(ticks);
    pong(cfg, "busy", Duration::from_micros(20))?;
    pong(cfg, "sleep", Duration::ZERO)?;
    report.send(Report::Consumer {
        received,
        in_order,
        seconds,
        first,
        last,
    })?;
    Ok(())
}

fn pong(cfg: &Config, what: &str, spin: Duration) -> Result<(), Box<dyn std::error::Error>> {
    let mut opts = Options::new();
    opts.capacity(8).spin(spin);
    let rx = Receiver::<Ping>::open_or_create(&channel(cfg, &format!("ping-{what}")), &opts)?;
    let tx = Sender::<Ping>::open_or_create(&channel(cfg, &format!("pong-{what}")), &opts)?;
    while let Ok(p) = rx.recv() {
        let p = *p;
        tx.send(p)?;
    }
    Ok(())
}
