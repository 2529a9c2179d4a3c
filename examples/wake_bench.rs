//! Costs of each wake strategy: 64-byte round-trip latency between two processes pinned to
//! CPUs 0 and 1 (with spinning disabled, so every message goes through the wake path, and
//! with the default 20 µs spin), and busy-stream throughput.
//!
//! `cargo run --release --example wake_bench [ROUND_TRIPS] [STREAM_MESSAGES]`
//! (defaults: 20000 and 2000000).

mod util;

use std::time::{Duration, Instant};

use shmbus::{Options, Receiver, Sender, WakeStrategy};

#[derive(shmbus::Message, Clone, Copy)]
#[repr(C)]
struct Msg64 {
    seq: u64,
    pad: [u64; 7],
}

fn msg(seq: u64) -> Msg64 {
    Msg64 { seq, pad: [seq; 7] }
}

fn opts(s: WakeStrategy, spin: Duration, capacity: usize) -> Options {
    let mut o = Options::new();
    o.wake(s).spin(spin).capacity(capacity);
    o
}

/// The child side of one measurement: echo (`pong`) or drain (`sink`).
fn child(args: &[String]) -> Result<(), Box<dyn std::error::Error>> {
    let s = WakeStrategy::all()[args[2].parse::<usize>()?];
    shmbus::block_wake_signal(s)?;
    util::pin_to_cpu(1);
    let spin = Duration::from_micros(args[3].parse()?);
    let name = &args[1];
    match args[0].as_str() {
        "--pong" => {
            let rx = Receiver::<Msg64>::open(&format!("{name}-ping"), &opts(s, spin, 64))?;
            let tx = Sender::<Msg64>::open(&format!("{name}-pong"), &opts(s, spin, 64))?;
            while let Ok(m) = rx.recv() {
                let seq = m.seq;
                drop(m);
                if tx.send(msg(seq)).is_err() {
                    break;
                }
            }
        }
        "--sink" => {
            let rx = Receiver::<Msg64>::open(name, &opts(s, spin, 1024))?;
            while let Ok(m) = rx.recv() {
                std::hint::black_box(m.seq);
            }
        }
        _ => unreachable!(),
    }
    Ok(())
}

fn round_trips(
    s: WakeStrategy,
    i: usize,
    spin: Duration,
    n: usize,
) -> Result<(Duration, Duration), Box<dyn std::error::Error>> {
    let name = util::run_id(&format!("wake-bench-rt{i}-{}", spin.as_micros()));
    let tx = Sender::<Msg64>::create(&format!("{name}-ping"), &opts(s, spin, 64))?;
    let rx = Receiver::<Msg64>::create(&format!("{name}-pong"), &opts(s, spin, 64))?;
    let mut child = util::spawn_self(&[
        "--pong".into(),
        name,
        i.to_string(),
        spin.as_micros().to_string(),
    ]);
    let measured = (|| -> Result<Vec<u64>, Box<dyn std::error::Error>> {
        let mut samples = Vec::with_capacity(n);
        for seq in 0..(n + n / 10) as u64 {
            let t = Instant::now();
            tx.send(msg(seq))?;
            let m = rx.recv()?;
            assert_eq!(m.seq, seq);
            if seq as usize >= n / 10 {
                samples.push(t.elapsed().as_nanos() as u64);
            }
        }
        Ok(samples)
    })();
    drop((tx, rx));
    child.wait()?;
    let mut samples = measured?;
    let (med, p99, _) = util::percentiles(&mut samples);
    Ok((med, p99))
}

fn stream(s: WakeStrategy, i: usize, n: u64) -> Result<f64, Box<dyn std::error::Error>> {
    let name = util::run_id(&format!("wake-bench-st{i}"));
    let spin = shmbus::DEFAULT_SPIN;
    let tx = Sender::<Msg64>::create(&name, &opts(s, spin, 1024))?;
    let mut child = util::spawn_self(&[
        "--sink".into(),
        name,
        i.to_string(),
        spin.as_micros().to_string(),
    ]);
    let measured = (|| -> Result<Instant, Box<dyn std::error::Error>> {
        while !tx.is_connected() {
            std::thread::sleep(Duration::from_millis(1));
        }
        let t = Instant::now();
        for seq in 0..n {
            tx.send(msg(seq))?;
        }
        Ok(t)
    })();
    drop(tx);
    child.wait()?;
    let t = measured?;
    Ok(n as f64 / t.elapsed().as_secs_f64())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().is_some_and(|a| a.starts_with("--")) {
        return child(&args);
    }
    let rts: usize = args.first().map_or(Ok(20_000), |a| a.parse())?;
    let msgs: u64 = args.get(1).map_or(Ok(2_000_000), |a| a.parse())?;
    shmbus::block_wake_signal(WakeStrategy::signal())?;
    util::pin_to_cpu(0);
    println!(
        "| strategy | round trip, spin 0: median / p99 | round trip, spin 20 µs: median / p99 | stream (64 B) |"
    );
    println!("|---|---|---|---|");
    for (i, s) in WakeStrategy::all().into_iter().enumerate() {
        let (m0, p0) = round_trips(s, i, Duration::ZERO, rts)?;
        let (m1, p1) = round_trips(s, i, shmbus::DEFAULT_SPIN, rts)?;
        let tput = stream(s, i, msgs)?;
        println!(
            "| {s} | {:.1} µs / {:.1} µs | {:.2} µs / {:.1} µs | {:.1} M msg/s |",
            m0.as_nanos() as f64 / 1000.0,
            p0.as_nanos() as f64 / 1000.0,
            m1.as_nanos() as f64 / 1000.0,
            p1.as_nanos() as f64 / 1000.0,
            tput / 1e6
        );
    }
    Ok(())
}
