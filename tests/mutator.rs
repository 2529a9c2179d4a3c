//! Untrusted shared memory: while a sender and a receiver process use a channel, this
//! process writes random bytes into the channel's segment file (header, control block,
//! participant table and slots). Both children must keep running and finish normally:
//! corrupt data may surface as errors (`Corrupt`, `Decode`, timeouts), never as a crash, a
//! panic, undefined behaviour or a hang.

use std::os::unix::fs::FileExt;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use shmbus::{Delivery, Options, Overflow, Receiver, Sender};

#[derive(shmbus::Message, Clone, Copy, Debug, PartialEq)]
#[repr(C)]
struct Tick {
    seq: u64,
    price: f64,
    venue: [u8; 8],
}

#[derive(shmbus::Message, serde::Serialize, serde::Deserialize, Clone, Debug, PartialEq)]
struct Note {
    id: u64,
    text: String,
    tags: Vec<u32>,
}

const ROLE: &str = "SHMBUS_MUTATOR_ROLE";
const RUN_FOR: Duration = Duration::from_millis(1500);
const WATCHDOG: Duration = Duration::from_secs(60);

fn options(layout: &str) -> Options {
    let mut o = Options::new();
    o.capacity(16).spin(Duration::from_micros(5));
    match layout {
        "queue-single" => o.max_senders(1).max_receivers(1),
        "queue-multi" => o.max_senders(4).max_receivers(4),
        "broadcast" => o.delivery(Delivery::Broadcast).max_receivers(4),
        "drop-oldest" => o
            .delivery(Delivery::Broadcast)
            .overflow(Overflow::DropOldest)
            .max_receivers(4),
        other => panic!("layout {other}"),
    };
    o
}

/// Child: uses the channel for `RUN_FOR`, tolerating every error, then exits 0.
#[test]
fn child_main() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    let name = std::env::var("SHMBUS_MUTATOR_CHANNEL").unwrap();
    let layout = std::env::var("SHMBUS_MUTATOR_LAYOUT").unwrap();
    let opts = options(&layout);
    let serde = layout == "queue-multi";
    let deadline = Instant::now() + RUN_FOR;
    let (mut ok, mut errors) = (0u64, 0u64);
    let step = Duration::from_millis(20);
    while Instant::now() < deadline {
        // (Re)open: a corrupt header is an error at open time; try again.
        match (role.as_str(), serde) {
            ("tx", false) => match Sender::<Tick>::open_or_create(&name, &opts) {
                Ok(tx) => {
                    for seq in 0.. {
                        if Instant::now() >= deadline {
                            break;
                        }
                        let t = Tick {
                            seq,
                            price: 1.5,
                            venue: *b"XNAS\0\0\0\0",
                        };
                        match tx.send_timeout(t, step) {
                            Ok(()) => ok += 1,
                            Err(_) => errors += 1,
                        }
                    }
                }
                Err(_) => errors += 1,
            },
            ("tx", true) => match Sender::<Note>::open_or_create(&name, &opts) {
                Ok(tx) => {
                    for id in 0.. {
                        if Instant::now() >= deadline {
                            break;
                        }
                        let n = Note {
                            id,
                            text: "hello".repeat(id as usize % 5),
                            tags: vec![1, 2, 3],
                        };
                        match tx.send_timeout(n, step) {
                            Ok(()) => ok += 1,
                            Err(_) => errors += 1,
                        }
                    }
                }
                Err(_) => errors += 1,
            },
            ("rx", false) => match Receiver::<Tick>::open_or_create(&name, &opts) {
                Ok(rx) => {
                    while Instant::now() < deadline {
                        match rx.recv_timeout(step) {
                            // Read every field of the message in place.
                            Ok(t) => {
                                std::hint::black_box((t.seq, t.price, t.venue));
                                ok += 1;
                            }
                            Err(_) => errors += 1,
                        }
                    }
                }
                Err(_) => errors += 1,
            },
            ("rx", true) => match Receiver::<Note>::open_or_create(&name, &opts) {
                Ok(rx) => {
                    while Instant::now() < deadline {
                        match rx.recv_timeout(step) {
                            Ok(n) => {
                                std::hint::black_box(n.text.len());
                                ok += 1;
                            }
                            Err(_) => errors += 1,
                        }
                    }
                }
                Err(_) => errors += 1,
            },
            _ => panic!("role {role}"),
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    println!("\nRESULT ok={ok} errors={errors}");
    std::process::exit(0);
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn mutate_while_running(layout: &str) {
    let name = format!(
        "mutator-{layout}-{}-{}",
        std::process::id(),
        Instant::now().elapsed().as_nanos() ^ u128::from(std::process::id())
    );
    let path = format!("/dev/shm/shmbus.{name}");
    let spawn = |role: &str| {
        Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "child_main", "--nocapture", "--test-threads=1"])
            .env(ROLE, role)
            .env("SHMBUS_MUTATOR_CHANNEL", &name)
            .env("SHMBUS_MUTATOR_LAYOUT", layout)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let children = [spawn("rx"), spawn("tx")];
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("{layout}: seed {seed:#x}");
    let mut rng = Rng(seed);
    let start = Instant::now();
    let mut writes = 0u64;
    while start.elapsed() < RUN_FOR {
        if let Ok(file) = std::fs::OpenOptions::new().write(true).open(&path) {
            let len = file.metadata().map(|m| m.len()).unwrap_or(0);
            if len > 0 {
                for _ in 0..8 {
                    // Mostly the header and control block, the rest anywhere in the ring.
                    let offset = match rng.next() % 4 {
                        0 => rng.next() % 256,
                        1 => 256 + rng.next() % 3840,
                        _ => rng.next() % len,
                    };
                    let n = 1 + (rng.next() % 8) as usize;
                    let bytes = rng.next().to_le_bytes();
                    let _ = file.write_at(&bytes[..n], offset);
                    writes += 1;
                }
            }
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    for mut child in children {
        let deadline = Instant::now() + WATCHDOG;
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                let _ = std::fs::remove_file(&path);
                panic!("{layout}: a child hung after the channel was corrupted");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let result = stdout
            .lines()
            .find(|l| l.starts_with("RESULT"))
            .unwrap_or("no result");
        eprintln!("{layout}: child {result} after {writes} random writes");
        assert!(
            status.success(),
            "{layout}: child ended with {status:?} (signal {:?}) after {writes} random writes\n{stderr}",
            status.signal()
        );
    }
    // The children were the last handles: the library removed the segment.
    let _ = std::fs::remove_file(&path);
}

#[test]
fn garbage_in_a_live_queue_segment_single() {
    mutate_while_running("queue-single");
}

#[test]
fn garbage_in_a_live_queue_segment_multi_serde() {
    mutate_while_running("queue-multi");
}

#[test]
fn garbage_in_a_live_broadcast_segment() {
    mutate_while_running("broadcast");
}

#[test]
fn garbage_in_a_live_drop_oldest_segment() {
    mutate_while_running("drop-oldest");
}
