//! shmbus as a bus: a fan-out broadcast to several subscriber processes, a work queue
//! shared by competing worker processes, and a request-response service.
//!
//! ```text
//! cargo run --release --example bus
//! ```

#[path = "util/mod.rs"]
mod util;

use std::time::{Duration, Instant};

use shmbus::{Client, Delivery, Options, Receiver, Sender, Server};

#[derive(shmbus::Message, Clone, Copy, Debug)]
#[repr(C)]
struct Tick {
    seq: u64,
    price: f64,
}

#[derive(shmbus::Message, Clone, Copy, Debug)]
#[repr(C)]
struct Job {
    id: u64,
    work: u64,
}

#[derive(shmbus::Message, serde::Serialize, serde::Deserialize, Debug)]
struct Add {
    a: i64,
    b: i64,
}

#[derive(shmbus::Message, serde::Serialize, serde::Deserialize, Debug)]
struct Sum(i64);

/// What a child reports back when it is done.
#[derive(shmbus::Message, serde::Serialize, serde::Deserialize, Debug)]
struct Done {
    who: String,
    messages: u64,
    in_order: bool,
    checksum: u64,
}

const TICKS: u64 = 1_000_000;
const JOBS: u64 = 100_000;
const SUBSCRIBERS: usize = 3;
const WORKERS: usize = 3;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [role, id, index] = args.as_slice() {
        return child(role, id, index.parse()?);
    }
    let id = util::run_id("bus");
    let mut report_opts = Options::new();
    report_opts.max_senders(16);
    let done = Receiver::<Done>::open_or_create(&format!("{id}.done"), &report_opts)?;

    // 1. Broadcast: every subscriber gets every tick, read in place.
    let mut ticks_opts = Options::new();
    ticks_opts.delivery(Delivery::Broadcast).capacity(4096);
    let ticks = Sender::<Tick>::open_or_create(&format!("{id}.ticks"), &ticks_opts)?;
    let mut children: Vec<_> = (0..SUBSCRIBERS)
        .map(|i| util::spawn_self(&["subscriber".into(), id.clone(), i.to_string()]))
        .collect();
    // Wait until every subscriber has joined (they report once subscribed).
    for _ in 0..SUBSCRIBERS {
        let hello = done.recv()?.into_inner();
        assert_eq!(hello.messages, 0);
    }
    let start = Instant::now();
    for seq in 0..TICKS {
        ticks.send(Tick {
            seq,
            price: seq as f64 * 0.25,
        })?;
    }
    drop(ticks);
    println!("broadcast: {TICKS} ticks from 1 publisher to {SUBSCRIBERS} subscriber processes");
    for _ in 0..SUBSCRIBERS {
        let d = done.recv()?.into_inner();
        println!(
            "  {} received {} ticks, in order: {}, checksum {:x}",
            d.who, d.messages, d.in_order, d.checksum
        );
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "  {:.1} M ticks/s per subscriber",
        TICKS as f64 / secs / 1e6
    );

    // 2. Queue: competing workers each take a share of the jobs, every job exactly once.
    let jobs = Sender::<Job>::open_or_create(&format!("{id}.jobs"), Options::new().capacity(1024))?;
    children.extend(
        (0..WORKERS).map(|i| util::spawn_self(&["worker".into(), id.clone(), i.to_string()])),
    );
    for id in 0..JOBS {
        jobs.send(Job { id, work: id * 3 })?;
    }
    drop(jobs);
    println!("queue: {JOBS} jobs shared by {WORKERS} worker processes");
    let (mut total, mut sum) = (0, 0u64);
    for _ in 0..WORKERS {
        let d = done.recv()?.into_inner();
        println!("  {} did {} jobs", d.who, d.messages);
        total += d.messages;
        sum = sum.wrapping_add(d.checksum);
    }
    let expected: u64 = (0..JOBS).map(|i| i * 3).sum();
    println!("  {total} jobs done in all, sum of work {sum} (expected {expected})");

    // 3. Request-response.
    children.push(util::spawn_self(&["server".into(), id.clone(), "0".into()]));
    let client = Client::<Add, Sum>::open(&format!("{id}.calc"), &Options::new())?;
    let mut rtts = Vec::new();
    let mut answer = Sum(0);
    for i in 0..10_000 {
        let t0 = Instant::now();
        // The server may still be starting: retry while it is not there yet.
        answer = loop {
            match client.request(&Add { a: i, b: 1 }, Duration::from_secs(5)) {
                Ok(sum) => break sum,
                Err(shmbus::RequestError::ServerGone) => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                Err(e) => return Err(e.into()),
            }
        };
        assert_eq!(answer.0, i + 1);
        rtts.push(t0.elapsed().as_nanos() as u64);
    }
    drop(client);
    let (med, p99, _) = util::percentiles(&mut rtts[100..]);
    println!("request-response: 10000 requests answered, last {answer:?}; round trip median {med:?}, p99 {p99:?}");
    for mut c in children {
        c.wait()?;
    }
    Ok(())
}

fn child(role: &str, id: &str, index: usize) -> Result<(), Box<dyn std::error::Error>> {
    let done = Sender::<Done>::open(&format!("{id}.done"), &Options::new())?;
    match role {
        "subscriber" => {
            let mut opts = Options::new();
            opts.delivery(Delivery::Broadcast);
            let rx = Receiver::<Tick>::open(&format!("{id}.ticks"), &opts)?;
            done.send(Done {
                who: format!("subscriber {index}"),
                messages: 0,
                in_order: true,
                checksum: 0,
            })?;
            let (mut n, mut in_order, mut checksum) = (0u64, true, 0u64);
            while let Ok(tick) = rx.recv() {
                in_order &= tick.seq == n;
                checksum = checksum.wrapping_add(tick.seq ^ tick.price.to_bits());
                n += 1;
            }
            done.send(Done {
                who: format!("subscriber {index} (pid {})", std::process::id()),
                messages: n,
                in_order,
                checksum,
            })?;
        }
        "worker" => {
            let rx = Receiver::<Job>::open_or_create(&format!("{id}.jobs"), &Options::new())?;
            let (mut n, mut sum) = (0u64, 0u64);
            while let Ok(job) = rx.recv() {
                n += 1;
                sum = sum.wrapping_add(job.work);
            }
            done.send(Done {
                who: format!("worker {index} (pid {})", std::process::id()),
                messages: n,
                in_order: true,
                checksum: sum,
            })?;
        }
        "server" => {
            let server = Server::<Add, Sum>::open(&format!("{id}.calc"), &Options::new())?;
            while let Ok(req) = server.recv() {
                let sum = Sum(req.body.a + req.body.b);
                let _ = server.respond(&req, &sum);
            }
        }
        _ => return Err(format!("unknown role {role}").into()),
    }
    Ok(())
}
