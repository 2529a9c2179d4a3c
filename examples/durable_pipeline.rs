//! A durable pipeline that survives restarts: a producer process appends sensor readings to
//! a file log (`Transport::File`), a consumer process reads them through a named, durable
//! cursor. The example kills the producer and then the consumer with SIGKILL in mid-stream,
//! restarts each, and shows that the pipeline carries on where it stopped:
//!
//! ```text
//! cargo run --release --example durable_pipeline [RECORDS]
//! ```
//!
//! * the restarted producer finds every record whose `send` returned still in the log (a
//!   record torn by the kill is cut off by its checksum) and continues after the last one;
//! * the restarted consumer resumes from its cursor `etl`. The cursor advances when `recv`
//!   returns, so delivery across a consumer crash is at most once: a record it was holding
//!   when it was killed is not redelivered.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use shmbus::{Durability, Options, Receiver, RecvTimeoutError, Sender, Transport, TryRecvError};

#[derive(shmbus::Message, Clone, Copy, Debug, PartialEq)]
#[repr(C)]
struct Reading {
    seq: u64,
    sensor: u32,
    flags: u32,
    value: f64,
    check: u64,
}

impl Reading {
    fn new(seq: u64) -> Reading {
        let sensor = (seq % 8) as u32;
        let value = 20.0 + (seq % 1000) as f64 / 100.0;
        Reading {
            seq,
            sensor,
            flags: 0,
            value,
            check: seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ u64::from(sensor),
        }
    }

    fn is_intact(&self) -> bool {
        *self == Reading::new(self.seq)
    }
}

fn options(dir: &Path) -> Options {
    let mut o = Options::new();
    o.transport(Transport::File {
        dir: dir.to_owned(),
    })
    .durability(Durability::Batch(1000))
    .segment_size(1 << 20);
    o
}

/// The producer: continues the log after its last intact record, up to `total`, reporting
/// every thousandth sequence number after `send` returned.
fn producer(dir: &Path, total: u64) {
    let o = options(dir);
    let tx = Sender::<Reading>::open_or_create("readings", &o).expect("open the log");
    // Where to continue: read the log once from the beginning (a reader without a cursor).
    let next = {
        let rx = Receiver::<Reading>::open("readings", &o).expect("read the log");
        let mut next = 0;
        loop {
            match rx.try_recv() {
                Ok(r) => {
                    assert!(r.is_intact() && r.seq == next, "log damaged at {next}");
                    next += 1;
                }
                Err(TryRecvError::Empty) | Err(TryRecvError::Disconnected) => break,
                Err(e) => panic!("reading the log: {e}"),
            }
        }
        next
    };
    println!("start {next}");
    for seq in next..total {
        tx.send(Reading::new(seq)).expect("send");
        if seq % 1000 == 999 {
            println!("sent {seq}");
        }
        if seq % 16 == 15 {
            // Pace the producer like a sensor, so that the kills land in mid-stream.
            std::thread::sleep(Duration::from_micros(20));
        }
    }
    println!("done {total}");
}

/// The consumer: reads through cursor `etl` until the last record, checking each one.
fn consumer(dir: &Path, total: u64) {
    let mut o = options(dir);
    o.cursor("etl");
    let rx = Receiver::<Reading>::open_or_create("readings", &o).expect("open the log");
    let mut expected: Option<u64> = None;
    let (mut got, mut sum) = (0u64, 0.0f64);
    loop {
        let r = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(r) => *r,
            Err(RecvTimeoutError::Disconnected) | Err(RecvTimeoutError::Timeout) => {
                std::thread::sleep(Duration::from_millis(5));
                continue; // the producer is being restarted
            }
            Err(e) => panic!("recv: {e}"),
        };
        assert!(r.is_intact(), "damaged record {r:?}");
        match expected {
            None => println!("resumed {}", r.seq),
            Some(e) => assert_eq!(r.seq, e, "a record missing, repeated or out of order"),
        }
        expected = Some(r.seq + 1);
        got += 1;
        sum += r.value;
        if r.seq % 1000 == 999 {
            println!("processed {}", r.seq);
        }
        if r.seq + 1 == total {
            println!("done {got} {sum:.2}");
            return;
        }
    }
}

/// A child and a thread forwarding its stdout lines.
struct Proc {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Proc {
    fn start(role: &str, dir: &Path, total: u64) -> Proc {
        let mut child = Command::new(std::env::current_exe().expect("current executable"))
            .arg(role)
            .arg(dir)
            .arg(total.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn child process");
        let out: ChildStdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Proc { child, lines }
    }

    /// Waits for a line starting with `prefix` and returns the rest; `None` if the child
    /// ended first.
    fn wait_for(&self, prefix: &str) -> Option<String> {
        while let Ok(line) = self.lines.recv() {
            if let Some(rest) = line.strip_prefix(prefix) {
                return Some(rest.trim().to_owned());
            }
        }
        None
    }

    /// Waits until the child reports a number `>= at` on a line starting with `prefix`.
    fn wait_past(&self, prefix: &str, at: u64) -> u64 {
        loop {
            let n: u64 = self
                .wait_for(prefix)
                .expect("the child ended early")
                .parse()
                .unwrap();
            if n >= at {
                return n;
            }
        }
    }

    fn kill(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reap");
    }

    fn finish(mut self, prefix: &str) -> String {
        let rest = self.wait_for(prefix).expect("the child ended early");
        assert!(self.child.wait().expect("reap").success());
        rest
    }
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() == 4 {
        let (dir, total) = (Path::new(&args[2]), args[3].parse().expect("records"));
        match args[1].as_str() {
            "producer" => return producer(dir, total),
            "consumer" => return consumer(dir, total),
            _ => {}
        }
    }
    let total: u64 = args.get(1).map_or(200_000, |a| a.parse().expect("RECORDS"));
    assert!(total >= 10_000, "use at least 10000 records");
    let dir = TempDir(std::env::temp_dir().join(format!("shmbus-durable-{}", std::process::id())));
    let t0 = Instant::now();
    println!(
        "durable pipeline: {total} readings of {} bytes through a file log in {}",
        std::mem::size_of::<Reading>(),
        dir.0.display()
    );

    let p = Proc::start("producer", &dir.0, total);
    let c = Proc::start("consumer", &dir.0, total);
    let reported = p.wait_past("sent", total / 4);
    p.kill();
    println!(
        "  SIGKILL producer: it had reported {} records sent",
        reported + 1
    );

    let p = Proc::start("producer", &dir.0, total);
    let start: u64 = p
        .wait_for("start")
        .expect("producer restarted")
        .parse()
        .unwrap();
    println!(
        "  producer restarted: the log holds {start} intact records (>= {}), continuing",
        reported + 1
    );
    assert!(start > reported, "a record whose send returned was lost");

    let processed = c.wait_past("processed", total / 2);
    c.kill();
    println!(
        "  SIGKILL consumer: it had reported {} records processed",
        processed + 1
    );
    let c = Proc::start("consumer", &dir.0, total);
    let resumed: u64 = c
        .wait_for("resumed")
        .expect("consumer restarted")
        .parse()
        .unwrap();
    println!("  consumer restarted from cursor `etl` at record {resumed}");

    p.finish("done");
    let summary = c.finish("done");
    let got: u64 = summary.split_whitespace().next().unwrap().parse().unwrap();
    assert_eq!(
        resumed + got,
        total,
        "the restarted consumer did not read to the end"
    );
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "done in {secs:.2} s: {total} records produced by two producer processes; the first \
         consumer took records 0..{resumed}, the restarted one {resumed}..{total} ({got}), \
         every record intact and in order"
    );
}
