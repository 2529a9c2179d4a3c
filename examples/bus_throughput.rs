//! Throughput of the bus between processes, 64-byte messages: a queue fed by 1 and by 4
//! sender processes, and a broadcast to 1 and to 4 subscriber processes.
//!
//! ```text
//! cargo run --release --example bus_throughput -- [MESSAGES_PER_SENDER]
//! ```
//!
//! This machine may have fewer CPUs than processes; the figures then include scheduling.

#[path = "util/mod.rs"]
mod util;

use std::time::Instant;

use shmbus::{Delivery, Options, Receiver, Sender};

#[derive(shmbus::Message, Clone, Copy, Debug)]
#[repr(C)]
struct M64 {
    sender: u64,
    seq: u64,
    rest: [u64; 6],
}

fn queue_opts() -> Options {
    let mut o = Options::new();
    o.capacity(4096).max_senders(8).max_receivers(8);
    o
}

fn broadcast_opts() -> Options {
    let mut o = queue_opts();
    o.delivery(Delivery::Broadcast);
    o
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--child") {
        return child(&args[1], &args[2], args[3].parse()?, args[4].parse()?);
    }
    let n: u64 = args.first().map_or(Ok(2_000_000), |a| a.parse())?;
    let id = util::run_id("bus-tp");
    println!(
        "64-byte messages, {} CPUs",
        std::thread::available_parallelism()?.get()
    );
    for senders in [1u64, 4] {
        let name = format!("{id}.q{senders}");
        let rx = Receiver::<M64>::open_or_create(&name, &queue_opts())?;
        let mut kids: Vec<_> = (0..senders)
            .map(|i| {
                util::spawn_self(&[
                    "--child".into(),
                    "sender".into(),
                    name.clone(),
                    i.to_string(),
                    n.to_string(),
                ])
            })
            .collect();
        let total = senders * n;
        let mut next = vec![0u64; senders as usize];
        let mut start = None;
        for _ in 0..total {
            let m = rx.recv()?;
            start.get_or_insert_with(Instant::now);
            assert_eq!(m.seq, next[m.sender as usize], "per-sender order");
            next[m.sender as usize] += 1;
        }
        let secs = start.map_or(0.0, |s| s.elapsed().as_secs_f64());
        for k in &mut kids {
            k.wait()?;
        }
        println!(
            "queue, {senders} sender process(es) -> 1 receiver: {total} messages, {:.1} M msg/s",
            total as f64 / secs / 1e6
        );
    }
    for subs in [1u64, 4] {
        let name = format!("{id}.b{subs}");
        let tx = Sender::<M64>::open_or_create(&name, &broadcast_opts())?;
        // Created before the children start, so that their reports are not sent into a
        // channel that nobody holds yet (the last handle of a channel removes it).
        let ready = Receiver::<M64>::open_or_create(&format!("{name}.ready"), &queue_opts())?;
        let results = Receiver::<M64>::open_or_create(&format!("{name}.done"), &queue_opts())?;
        let mut kids: Vec<_> = (0..subs)
            .map(|i| {
                util::spawn_self(&[
                    "--child".into(),
                    "subscriber".into(),
                    name.clone(),
                    i.to_string(),
                    n.to_string(),
                ])
            })
            .collect();
        // Wait until every subscriber has joined.
        collect(&ready, subs)?;
        for seq in 0..n {
            tx.send(M64 {
                sender: 0,
                seq,
                rest: [seq; 6],
            })
            .map_err(|e| format!("send {seq}: {e}"))?;
        }
        drop(tx);
        let mut rates = Vec::new();
        for r in collect(&results, subs)? {
            rates.push(f64::from_bits(r.rest[0]));
        }
        for k in &mut kids {
            assert!(k.wait()?.success());
        }
        let each: f64 = rates.iter().sum::<f64>() / rates.len() as f64;
        println!(
            "broadcast, 1 publisher -> {subs} subscriber process(es): {n} messages each, {:.1} M msg/s per subscriber, {:.1} M deliveries/s in all",
            each / 1e6,
            each * subs as f64 / 1e6
        );
    }
    Ok(())
}

/// Receives `n` reports from child processes that each attach, send one and leave. Between
/// two of them the channel may have no sender at all, which `recv` reports as
/// `Disconnected`: that is not the end here, more children are coming.
fn collect(rx: &Receiver<M64>, n: u64) -> Result<Vec<M64>, Box<dyn std::error::Error>> {
    let mut got = Vec::new();
    while (got.len() as u64) < n {
        match rx.recv_timeout(std::time::Duration::from_secs(60)) {
            Ok(m) => got.push(*m),
            Err(shmbus::RecvTimeoutError::Disconnected) => {
                std::thread::sleep(std::time::Duration::from_millis(1))
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(got)
}

fn child(role: &str, name: &str, index: u64, n: u64) -> Result<(), Box<dyn std::error::Error>> {
    util::pin_to_cpu(1 + index as usize % 2);
    match role {
        "sender" => {
            let tx = Sender::<M64>::open_or_create(name, &queue_opts())?;
            for seq in 0..n {
                let mut slot = tx.loan()?;
                *slot = M64 {
                    sender: index,
                    seq,
                    rest: [seq; 6],
                };
                slot.send();
            }
        }
        "subscriber" => {
            let rx = Receiver::<M64>::open_or_create(name, &broadcast_opts())?;
            let done = Sender::<M64>::open_or_create(&format!("{name}.done"), &queue_opts())?;
            Sender::<M64>::open_or_create(&format!("{name}.ready"), &queue_opts())?.send(M64 {
                sender: index,
                seq: 0,
                rest: [0; 6],
            })?;
            let mut start = None;
            let mut got = 0;
            while got < n {
                let m = rx
                    .recv()
                    .map_err(|e| format!("subscriber {index} after {got} of {n}: {e}"))?;
                start.get_or_insert_with(Instant::now);
                assert_eq!(m.seq, got, "in order");
                got += 1;
            }
            let rate = n as f64 / start.map_or(1.0, |s: Instant| s.elapsed().as_secs_f64());
            done.send(M64 {
                sender: index,
                seq: n,
                rest: [rate.to_bits(), 0, 0, 0, 0, 0],
            })?;
        }
        _ => return Err(format!("role {role}").into()),
    }
    Ok(())
}
