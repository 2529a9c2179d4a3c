//! `shmbus demo`: a producer process and several consumer processes on the default transport
//! (the lock-free ring in `/dev/shm`), with live throughput and latency.
//!
//! This binary re-runs itself as the producer (`__producer`) and the consumers
//! (`__consumer`). Three phases:
//!
//! 1. a busy stream of 64-byte `Tick`s in broadcast mode (every consumer gets every tick,
//!    the producer waits for the slowest), written in place (`loan` → write → `send`) and
//!    read in place; each consumer checks every sequence number and measures the one-way
//!    latency of every 64th tick (stamped with `CLOCK_MONOTONIC` by the producer). Meanwhile
//!    the parent reads the channel's counters through `shmbus::inspect` (as `shmbus stat`
//!    does) and prints rates, with each consumer's latency of the last interval;
//! 2. round trips between the producer and the first consumer with the default wait
//!    (spin, then futex);
//! 3. round trips that always sleep (`spin(0)`: a futex wake-up each way).
//!
//! Children report to the parent through their standard output, one line per report.

use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shmbus::inspect::Observer;
use shmbus::{Delivery, Options, Receiver, Sender};

/// A 64-byte tick that travels zero-copy.
#[derive(shmbus::Message, Clone, Copy, Debug)]
#[repr(C)]
struct Tick {
    seq: u64,
    /// `CLOCK_MONOTONIC` nanoseconds on every 64th tick, 0 on the others.
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
}

/// What to run.
pub struct Config {
    /// Stream for this long...
    pub seconds: f64,
    /// ... or this many messages.
    pub messages: Option<u64>,
    /// Consumer processes.
    pub consumers: u32,
    /// Round trips per round-trip phase.
    pub round_trips: u64,
}

const SAMPLE_EVERY: u64 = 64;
const WARM_UP: u64 = 1000;

fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Consumers when `--consumers` is not given: two, or one where fewer than three CPUs are
/// online (three busy processes on two CPUs would measure the scheduler, not the channel).
pub fn default_consumers() -> u32 {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpus >= 3 {
        2
    } else {
        1
    }
}

fn ticks_options(prefix: &str, consumers: u32) -> Options {
    let mut o = Options::new();
    o.prefix(prefix)
        .delivery(Delivery::Broadcast)
        .capacity(4096)
        .max_receivers(consumers.max(1));
    o
}

fn ping_options(prefix: &str, spin: Duration) -> Options {
    let mut o = Options::new();
    o.prefix(prefix).capacity(8).spin(spin);
    o
}

/// Median, 99th percentile, 99.9th percentile of `v` (sorted in place), in ns.
fn percentiles(v: &mut [u64]) -> (u64, u64, u64) {
    if v.is_empty() {
        return (0, 0, 0);
    }
    v.sort_unstable();
    let at = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
    (at(0.5), at(0.99), at(0.999))
}

/// `830 ns`, `12.4 µs`, `3.10 ms`.
fn human_ns(ns: u64) -> String {
    match ns {
        0..1_000 => format!("{ns} ns"),
        1_000..1_000_000 => format!("{:.1} µs", ns as f64 / 1e3),
        _ => format!("{:.2} ms", ns as f64 / 1e6),
    }
}

/// What a consumer reported in its last interval: (received so far, p50, p99).
type Windows = Arc<Mutex<Vec<(u64, u64, u64)>>>;

/// Reads a child's report lines in a thread: `W` lines update `windows[index]`, the others
/// are kept for the summary.
fn reader(
    child: &mut Child,
    index: Option<usize>,
    windows: &Windows,
) -> std::thread::JoinHandle<Vec<String>> {
    let out = child.stdout.take().expect("piped stdout");
    let windows = Arc::clone(windows);
    std::thread::spawn(move || {
        let mut kept = Vec::new();
        for line in BufReader::new(out).lines().map_while(|l| l.ok()) {
            let f: Vec<&str> = line.split_whitespace().collect();
            match (f.first(), index) {
                (Some(&"W"), Some(i)) if f.len() == 4 => {
                    let n = |k: usize| f[k].parse().unwrap_or(0);
                    windows.lock().unwrap_or_else(|e| e.into_inner())[i] = (n(1), n(2), n(3));
                }
                _ => kept.push(line),
            }
        }
        kept
    })
}

pub fn run(prefix: &str, cfg: &Config) -> Result<(), String> {
    let consumers = cfg.consumers.max(1);
    let exe = std::env::current_exe().map_err(|e| format!("cannot find own binary: {e}"))?;
    let name = format!("demo-{}", std::process::id());
    let ticks = format!("{name}.ticks");
    let stream = match cfg.messages {
        Some(n) => format!("{n} ticks"),
        None => format!("{} s", cfg.seconds),
    };
    println!(
        "shmbus demo: 1 producer and {consumers} consumer process(es), channel /dev/shm/{prefix}{ticks}"
    );
    println!(
        "1. busy stream ({stream}) of {}-byte Tick messages, broadcast to every consumer, zero-copy (loan → write → send)",
        size_of::<Tick>()
    );
    println!("   meanwhile, from another terminal: shmbus list; shmbus stat {ticks} --watch; shmbus tail {ticks}");
    let spawn = |args: Vec<String>| {
        Command::new(&exe)
            .arg("--prefix")
            .arg(prefix)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start a child process: {e}"))
    };
    let windows: Windows = Arc::new(Mutex::new(vec![(0, 0, 0); consumers as usize]));
    let mut children = Vec::new();
    for index in 0..consumers {
        let mut c = spawn(vec![
            "__consumer".into(),
            name.clone(),
            index.to_string(),
            consumers.to_string(),
        ])?;
        let r = reader(&mut c, Some(index as usize), &windows);
        children.push((format!("consumer {}", index + 1), c, r));
    }
    let mut p = spawn(vec![
        "__producer".into(),
        name.clone(),
        cfg.seconds.to_string(),
        cfg.messages.unwrap_or(0).to_string(),
        consumers.to_string(),
        cfg.round_trips.to_string(),
    ])?;
    let r = reader(&mut p, None, &windows);
    children.insert(0, ("producer".to_string(), p, r));
    let pids: Vec<String> = children
        .iter()
        .map(|(what, c, _)| format!("{what} pid {}", c.id()))
        .collect();
    println!("   started {}", pids.join(", "));
    live(prefix, &ticks, &mut children, &windows);
    let mut reports = Vec::new();
    for (what, mut c, r) in children {
        let status = c.wait().map_err(|e| format!("{what}: {e}"))?;
        let lines = r.join().unwrap_or_default();
        if !status.success() {
            return Err(format!(
                "the {what} process failed ({status}){}",
                lines.iter().map(|l| format!("\n  {l}")).collect::<String>()
            ));
        }
        reports.push((what, lines));
    }
    summary(&reports)
}

/// Prints the channel's rates and the consumers' latencies until the stream ends.
fn live(
    prefix: &str,
    ticks: &str,
    children: &mut [(String, Child, std::thread::JoinHandle<Vec<String>>)],
    windows: &Windows,
) {
    let tty = std::io::stdout().is_terminal();
    let interval = Duration::from_millis(if tty { 250 } else { 1000 });
    let start = Instant::now();
    let mut obs = None;
    let (mut last_sent, mut last_recv, mut last_t) = (0u64, Vec::<u64>::new(), Instant::now());
    loop {
        std::thread::sleep(interval);
        if children
            .iter_mut()
            .all(|(_, c, _)| matches!(c.try_wait(), Ok(Some(_))))
        {
            break;
        }
        if obs.is_none() {
            obs = Observer::open(prefix, ticks).ok();
        }
        let Some(o) = &obs else { continue };
        let info = o.info();
        let sent = info.sender_totals().sent;
        let recv: Vec<u64> = info.receivers.iter().map(|r| r.counters.received).collect();
        let dt = last_t.elapsed().as_secs_f64();
        last_t = Instant::now();
        if recv.iter().all(|&n| n == 0) && sent == 0 {
            continue; // not started yet
        }
        if last_recv.len() != recv.len() {
            last_recv = vec![0; recv.len()];
        }
        let mut line = format!(
            "   {:5.1} s  producer {:6.2} M/s",
            start.elapsed().as_secs_f64(),
            sent.saturating_sub(last_sent) as f64 / dt / 1e6
        );
        let w = windows.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for (i, (&n, &before)) in recv.iter().zip(&last_recv).enumerate() {
            let (_, p50, p99) = w.get(i).copied().unwrap_or_default();
            line.push_str(&format!(
                " | consumer {} {:6.2} M/s, latency p50 {} p99 {}",
                i + 1,
                n.saturating_sub(before) as f64 / dt / 1e6,
                human_ns(p50),
                human_ns(p99)
            ));
        }
        (last_sent, last_recv) = (sent, recv);
        if info.stale || (sent > 0 && info.senders.iter().all(|s| !s.alive)) {
            break; // the stream is over
        }
        if tty {
            print!("\r{line}\x1b[K");
        } else {
            println!("{line}");
        }
        let _ = std::io::stdout().flush();
    }
    if tty {
        println!();
    }
}

fn summary(reports: &[(String, Vec<String>)]) -> Result<(), String> {
    let field = |lines: &[String], tag: &str| -> Option<Vec<String>> {
        lines.iter().find_map(|l| {
            l.strip_prefix(tag)
                .map(|rest| rest.split_whitespace().map(str::to_owned).collect())
        })
    };
    let (_, producer) = &reports[0];
    let sent: u64 = field(producer, "S ")
        .and_then(|f| f.first()?.parse().ok())
        .unwrap_or(0);
    let p_secs: f64 = field(producer, "S ")
        .and_then(|f| f.get(1)?.parse().ok())
        .unwrap_or(0.0);
    println!(
        "   producer: sent {sent} in {p_secs:.2} s, {:.2} M messages/s",
        sent as f64 / p_secs.max(1e-9) / 1e6
    );
    let mut all_in_order = true;
    for (what, lines) in &reports[1..] {
        for l in lines.iter().filter_map(|l| l.strip_prefix("T ")) {
            println!("   {what} got {l}");
        }
        let f = field(lines, "E ").unwrap_or_default();
        let g = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
        let (received, secs) = (g(0) as u64, g(2));
        let in_order = f.get(1).is_some_and(|x| x == "true") && received == sent;
        all_in_order &= in_order;
        println!(
            "   {what}: received {received}, every sequence number in order: {}, {:.2} M messages/s ({:.2} GB/s); one-way latency (every {SAMPLE_EVERY}th tick) p50 {} p99 {} p99.9 {}",
            if in_order { "yes" } else { "NO" },
            received as f64 / secs.max(1e-9) / 1e6,
            received as f64 * size_of::<Tick>() as f64 / secs.max(1e-9) / 1e9,
            human_ns(g(3) as u64),
            human_ns(g(4) as u64),
            human_ns(g(5) as u64)
        );
    }
    println!(
        "   (the stream is saturated: its latency includes waiting behind up to 4096 queued ticks; \
         the round trips below show the latency of a single message)"
    );
    for (n, label) in [(2, "busy"), (3, "sleep")] {
        let Some(f) = field(producer, &format!("R {label} ")) else {
            continue;
        };
        let g = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
        println!();
        if label == "busy" {
            println!(
                "{n}. round trips producer → consumer 1 → producer, default wait (spin {:?}, then futex): {} samples",
                shmbus::DEFAULT_SPIN,
                g(0)
            );
        } else {
            println!(
                "{n}. round trips that always sleep (spin 0: a futex wake-up each way): {} samples",
                g(0)
            );
        }
        println!(
            "   median {}, p99 {}, min {}",
            human_ns(g(1)),
            human_ns(g(2)),
            human_ns(g(3))
        );
    }
    if !all_in_order {
        return Err("a consumer did not receive every tick in order".into());
    }
    Ok(())
}

fn report(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

pub fn producer(
    prefix: &str,
    name: &str,
    seconds: f64,
    messages: u64,
    consumers: u32,
    round_trips: u64,
) -> Result<(), String> {
    crate::bench::pin_to_cpu(0);
    let ticks = format!("{name}.ticks");
    let tx = Sender::<Tick>::open_or_create(&ticks, &ticks_options(prefix, consumers))
        .map_err(|e| e.to_string())?;
    // Start when every consumer has subscribed, so that all see the whole stream.
    let obs = Observer::open(prefix, &ticks).map_err(|e| e.to_string())?;
    let wait = Instant::now();
    while obs.info().receivers.iter().filter(|r| r.alive).count() < consumers as usize {
        if wait.elapsed() > Duration::from_secs(30) {
            return Err("the consumers never subscribed".into());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let limit = Duration::from_secs_f64(seconds.max(0.01));
    let start = Instant::now();
    let mut seq = 0u64;
    loop {
        if messages > 0 && seq == messages {
            break;
        }
        if messages == 0 && seq % 4096 == 0 && start.elapsed() >= limit {
            break;
        }
        let mut slot = tx.loan().map_err(|e| e.to_string())?;
        *slot = Tick {
            seq,
            sent_ns: if seq % SAMPLE_EVERY == 0 { now_ns() } else { 0 },
            price: 100.0 + (seq % 1000) as f64 * 0.01,
            qty: (seq % 7 + 1) as f64,
            venue: *b"XNAS\0\0\0\0",
            flags: [seq as u32; 6],
        };
        slot.send();
        seq += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    drop(tx);
    report(&format!("S {seq} {secs}"));
    for (label, spin, n) in [
        ("busy", shmbus::DEFAULT_SPIN, round_trips),
        ("sleep", Duration::ZERO, round_trips.min(20_000)),
    ] {
        let o = ping_options(prefix, spin);
        let ping = Sender::<Ping>::open_or_create(&format!("{name}.ping-{label}"), &o)
            .map_err(|e| e.to_string())?;
        let pong = Receiver::<Ping>::open_or_create(&format!("{name}.pong-{label}"), &o)
            .map_err(|e| e.to_string())?;
        let mut samples = Vec::with_capacity(n as usize);
        for seq in 0..n + WARM_UP {
            let t0 = Instant::now();
            ping.send(Ping { seq }).map_err(|e| e.to_string())?;
            let back = pong.recv().map_err(|e| e.to_string())?;
            let rtt = t0.elapsed().as_nanos() as u64;
            if back.seq != seq {
                return Err(format!("pong {} answers ping {seq}", back.seq));
            }
            if seq >= WARM_UP {
                samples.push(rtt);
            }
        }
        let min = samples.iter().copied().min().unwrap_or(0);
        let (p50, p99, _) = percentiles(&mut samples);
        report(&format!("R {label} {n} {p50} {p99} {min}"));
    }
    Ok(())
}

pub fn consumer(prefix: &str, name: &str, index: u32, consumers: u32) -> Result<(), String> {
    crate::bench::pin_to_cpu(1 + index as usize);
    let ticks = format!("{name}.ticks");
    let rx = Receiver::<Tick>::open_or_create(&ticks, &ticks_options(prefix, consumers))
        .map_err(|e| e.to_string())?;
    let mut all = Vec::new();
    let mut window = Vec::new();
    let mut last_report = Instant::now();
    let (mut received, mut in_order, mut start, mut last) = (0u64, true, None, None);
    loop {
        let tick = match rx.recv() {
            Ok(t) => t,
            Err(shmbus::RecvError::Disconnected) => break,
            Err(e) => return Err(e.to_string()),
        };
        start.get_or_insert_with(Instant::now);
        in_order &= tick.seq == received;
        if tick.sent_ns != 0 {
            window.push(now_ns().saturating_sub(tick.sent_ns));
        }
        if received < 2 {
            report(&format!("T {}", show(&tick)));
        }
        last = Some(*tick);
        drop(tick);
        received += 1;
        if received % 4096 == 0 && last_report.elapsed() >= Duration::from_millis(200) {
            let (p50, p99, _) = percentiles(&mut window);
            report(&format!("W {received} {p50} {p99}"));
            all.append(&mut window);
            last_report = Instant::now();
        }
    }
    let secs = start.map_or(0.0, |s| s.elapsed().as_secs_f64());
    all.append(&mut window);
    drop(rx);
    if let Some(t) = last {
        report(&format!("T {}", show(&t)));
    }
    let (p50, p99, p999) = percentiles(&mut all);
    report(&format!(
        "E {received} {in_order} {secs} {p50} {p99} {p999}"
    ));
    if index == 0 {
        for (label, spin) in [("busy", shmbus::DEFAULT_SPIN), ("sleep", Duration::ZERO)] {
            let o = ping_options(prefix, spin);
            let ping = Receiver::<Ping>::open_or_create(&format!("{name}.ping-{label}"), &o)
                .map_err(|e| e.to_string())?;
            let pong = Sender::<Ping>::open_or_create(&format!("{name}.pong-{label}"), &o)
                .map_err(|e| e.to_string())?;
            while let Ok(p) = ping.recv() {
                let p = *p;
                if pong.send(p).is_err() {
                    break;
                }
            }
        }
    }
    Ok(())
}

fn show(t: &Tick) -> String {
    format!(
        "Tick {{ seq: {}, price: {:.2}, qty: {}, venue: {:?} }}",
        t.seq,
        t.price,
        t.qty,
        std::str::from_utf8(&t.venue)
            .unwrap_or("?")
            .trim_end_matches('\0')
    )
}
