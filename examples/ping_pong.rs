//! Ping-pong between two processes: this process sends a `Ping`, a child process it
//! started answers with the same message on a second channel, and the round trip is timed.
//!
//! ```text
//! cargo run --release --example ping_pong -- [ROUND_TRIPS] [SPIN_MICROS]
//! ```

#[path = "util/mod.rs"]
mod util;

use std::time::{Duration, Instant};

use shmbus::{Options, Receiver, Sender};

#[derive(shmbus::Message, Clone, Copy, Debug, PartialEq)]
#[repr(C)]
struct Ping {
    seq: u64,
    payload: [u64; 7],
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--pong") {
        return pong(&args[1], args[2].parse()?);
    }
    let round_trips: u64 = args.first().map_or(Ok(100_000), |a| a.parse())?;
    let spin_us: u64 = args.get(1).map_or(Ok(20), |a| a.parse())?;
    let id = util::run_id("ping-pong");
    let mut opts = Options::new();
    opts.capacity(16).spin(Duration::from_micros(spin_us));
    let tx = Sender::<Ping>::open_or_create(&format!("{id}.ping"), &opts)?;
    let rx = Receiver::<Ping>::open_or_create(&format!("{id}.pong"), &opts)?;
    let mut child = util::spawn_self(&["--pong".into(), id.clone(), spin_us.to_string()]);
    util::pin_to_cpu(0);
    let samples = measure(&tx, &rx, round_trips);
    drop(tx);
    child.wait()?;
    let mut samples = samples?;
    let (med, p99, min) = util::percentiles(&mut samples);
    println!(
        "{round_trips} round trips of {}-byte messages between pid {} and pid {} (spin {spin_us} µs): median {med:?}, p99 {p99:?}, min {min:?}",
        size_of::<Ping>(),
        std::process::id(),
        child.id()
    );
    Ok(())
}

fn measure(
    tx: &Sender<Ping>,
    rx: &Receiver<Ping>,
    round_trips: u64,
) -> Result<Vec<u64>, Box<dyn std::error::Error>> {
    let mut samples = Vec::with_capacity(round_trips as usize);
    for seq in 0..round_trips + 1000 {
        let msg = Ping {
            seq,
            payload: [seq; 7],
        };
        let t0 = Instant::now();
        tx.send(msg)?;
        let back = rx.recv()?;
        let rtt = t0.elapsed();
        assert_eq!(*back, msg, "the pong is the ping");
        if seq >= 1000 {
            samples.push(rtt.as_nanos() as u64);
        }
    }
    Ok(samples)
}

fn pong(id: &str, spin_us: u64) -> Result<(), Box<dyn std::error::Error>> {
    util::pin_to_cpu(1);
    let mut opts = Options::new();
    opts.capacity(16).spin(Duration::from_micros(spin_us));
    let rx = Receiver::<Ping>::open_or_create(&format!("{id}.ping"), &opts)?;
    let tx = Sender::<Ping>::open_or_create(&format!("{id}.pong"), &opts)?;
    // Answer until the pinger hangs up.
    while let Ok(ping) = rx.recv() {
        tx.send(*ping)?;
    }
    Ok(())
}
