//! End-to-end tests of the `shmbus` binary against channels held by this test process (or by
//! a child of it: the test binary re-run with `SHMBUS_CLI_TEST_ROLE`). The `shmbus` binary
//! knows nothing of the `Quote` type declared here: it decodes through the recorded schema.
//!
//! Every test uses its own object-name prefix, so `shmbus clean` here never touches
//! channels of anything else on the machine.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use shmbus::{Options, Receiver, Sender};

#[derive(shmbus::Message, Clone, Copy, Debug, PartialEq)]
#[repr(C)]
struct Quote {
    seq: u64,
    price: f64,
    venue: [u8; 8],
    sizes: [u32; 2],
}

fn quote(seq: u64) -> Quote {
    Quote {
        seq,
        price: 2.5 + seq as f64,
        venue: *b"XNAS\0\0\0\0",
        sizes: [seq as u32, 7],
    }
}

fn prefix(test: &str) -> String {
    format!("shmbus-clitest-{}-{test}.", std::process::id())
}

fn opts(prefix: &str) -> Options {
    let mut o = Options::new();
    o.prefix(prefix).capacity(16);
    o
}

fn shmbus(prefix: &str, args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_shmbus"))
        .arg("--prefix")
        .arg(prefix)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run shmbus");
    eprintln!(
        "$ shmbus {}\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn leftovers(prefix: &str) -> Vec<String> {
    shmbus::inspect::names(prefix).unwrap()
}

#[test]
fn list_shows_type_mode_and_pids() {
    let p = prefix("list");
    let tx = Sender::<Quote>::create("quotes", &opts(&p)).unwrap();
    let rx = Receiver::<Quote>::open("quotes", &opts(&p)).unwrap();
    let out = shmbus(&p, &["list"]);
    assert!(out.status.success());
    let text = stdout(&out);
    let pid = std::process::id().to_string();
    let line = text
        .lines()
        .find(|l| l.starts_with("quotes"))
        .expect("listed");
    for want in ["posix-shm", "queue", "Quote", "16", &pid, "live"] {
        assert!(line.contains(want), "{want:?} missing in {line:?}");
    }
    let out = shmbus(&p, &["list", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["type"], "Quote");
    assert_eq!(v[0]["senders"][0]["pid"], std::process::id());
    assert_eq!(v[0]["receivers"][0]["alive"], true);
    drop((tx, rx));
    assert!(leftovers(&p).is_empty());
}

#[test]
fn stat_counts_what_was_sent() {
    let p = prefix("stat");
    let tx = Sender::<Quote>::create("quotes", &opts(&p)).unwrap();
    let rx = Receiver::<Quote>::open("quotes", &opts(&p)).unwrap();
    for i in 0..10 {
        tx.send(quote(i)).unwrap();
    }
    for _ in 0..4 {
        rx.recv().unwrap();
    }
    let info = shmbus::inspect::Observer::open(&p, "quotes")
        .unwrap()
        .info();
    assert_eq!(info.sender_totals().sent, 10);
    assert_eq!(info.receiver_totals().received, 4);
    assert_eq!(info.depth, 6);
    let out = shmbus(&p, &["stat", "quotes"]);
    assert!(out.status.success());
    let text = stdout(&out);
    let total = text.lines().find(|l| l.starts_with("total")).unwrap();
    let nums: Vec<&str> = total.split_whitespace().collect();
    assert_eq!(&nums[1..3], ["10", "4"], "{total}");
    assert!(text.contains("depth      6"), "{text}");
    assert!(text.contains("seq: u64"), "{text}");
    drop((tx, rx));
    assert!(leftovers(&p).is_empty());
}

#[test]
fn stat_watch_shows_rates() {
    let p = prefix("watch");
    let tx = Sender::<Quote>::create("quotes", &opts(&p)).unwrap();
    let rx = Receiver::<Quote>::open("quotes", &opts(&p)).unwrap();
    let stop = &std::sync::atomic::AtomicBool::new(false);
    let out = std::thread::scope(|s| {
        s.spawn(move || {
            let mut seq = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if tx.try_send(quote(seq)).is_ok() {
                    seq += 1;
                }
                while rx.try_recv().is_ok() {}
                std::thread::sleep(Duration::from_micros(50));
            }
        });
        let out = shmbus(
            &p,
            &[
                "stat",
                "quotes",
                "--watch",
                "--interval",
                "100",
                "--ticks",
                "3",
            ],
        );
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        out
    });
    assert!(out.status.success());
    let text = stdout(&out);
    let rows: Vec<Vec<f64>> = text
        .lines()
        .skip_while(|l| !l.contains("SENT/S"))
        .skip(1)
        .map(|l| l.split_whitespace().map(|n| n.parse().unwrap()).collect())
        .collect();
    assert_eq!(rows.len(), 3, "{text}");
    // Columns: SENT RECEIVED SENT/S RECEIVED/S DEPTH; counts grow, rates are per second.
    assert!(rows.windows(2).all(|w| w[1][0] >= w[0][0]), "{text}");
    assert!(rows.iter().any(|r| r[2] > 0.0 && r[3] > 0.0), "{text}");
    assert!(leftovers(&p).is_empty());
}

#[test]
fn tail_decodes_without_the_type_and_steals_nothing() {
    let p = prefix("tail");
    let tx = Sender::<Quote>::create("quotes", &opts(&p)).unwrap();
    let rx = Receiver::<Quote>::open("quotes", &opts(&p)).unwrap();
    for i in 1..=3 {
        tx.send(quote(i)).unwrap();
    }
    let out = shmbus(&p, &["tail", "quotes", "--count", "3"]);
    assert!(out.status.success());
    let lines: Vec<String> = stdout(&out).lines().map(str::to_owned).collect();
    assert_eq!(
        lines[0],
        r#"{seq: 1, price: 3.5, venue: "XNAS", sizes: [1, 7]}"#
    );
    assert_eq!(lines.len(), 3);
    // The receiver still gets every message.
    for i in 1..=3 {
        assert_eq!(*rx.try_recv().unwrap(), quote(i));
    }
    // Following: a tail started now prints what is sent next.
    let child = Command::new(env!("CARGO_BIN_EXE_shmbus"))
        .args([
            "--prefix",
            &p,
            "tail",
            "quotes",
            "-n",
            "1",
            "--idle-timeout",
            "5000",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    tx.send(quote(9)).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        stdout(&out).trim(),
        r#"{seq: 9, price: 11.5, venue: "XNAS", sizes: [9, 7]}"#
    );
    assert_eq!(rx.try_recv().unwrap().seq, 9);
    drop((tx, rx));
    assert!(leftovers(&p).is_empty());
}

/// A serialized (postcard) message: the tool sees only field names and type text, plus the
/// schema of `Leg`, a nested message.
#[derive(shmbus::Message, serde::Serialize, serde::Deserialize, Clone, Debug, PartialEq)]
struct Order {
    id: u64,
    account: String,
    delta: i32,
    legs: Vec<Leg>,
    first: Leg,
    limit: Option<f64>,
    tags: std::collections::BTreeMap<String, u16>,
    urgent: bool,
    note: Note,
}

#[derive(shmbus::Message, serde::Serialize, serde::Deserialize, Clone, Debug, PartialEq)]
struct Leg {
    venue: String,
    qty: [u32; 2],
}

/// Serde only: not described, shown as hex.
#[derive(serde::Serialize, serde::Deserialize, Clone, Debug, PartialEq)]
struct Note(u8);

#[derive(shmbus::Message, serde::Serialize, serde::Deserialize, Clone, Debug, PartialEq)]
enum Event {
    Start,
    Fill(u64, f32),
    Cancel { id: u64, reason: String },
}

#[test]
fn tail_decodes_serde_messages() {
    let p = prefix("tailserde");
    let leg = |v: &str| Leg {
        venue: v.into(),
        qty: [1, 300],
    };
    let tx = Sender::<Order>::create("orders", &opts(&p)).unwrap();
    let rx = Receiver::<Order>::open("orders", &opts(&p)).unwrap();
    tx.send(Order {
        id: 300,
        account: "ACME".into(),
        delta: -2,
        legs: vec![leg("XNAS"), leg("BATS")],
        first: leg("IEX"),
        limit: Some(2.5),
        tags: [("desk".to_string(), 7u16)].into(),
        urgent: true,
        note: Note(0xab),
    })
    .unwrap();
    let out = shmbus(&p, &["tail", "orders", "--count", "1"]);
    assert!(out.status.success());
    // Nested messages (`Leg`, also inside a `Vec`) are decoded through their recorded
    // schema; `Note` derives only serde: the rest of the message is shown as hex.
    assert_eq!(
        stdout(&out).trim(),
        r#"{id: 300, account: "ACME", delta: -2, legs: [{venue: "XNAS", qty: [1, 300]}, {venue: "BATS", qty: [1, 300]}], first: {venue: "IEX", qty: [1, 300]}, limit: Some(2.5), tags: {"desk": 7}, urgent: true, note: <undecoded (type `Note` is not described): ab>"#
    );
    let events = Sender::<Event>::create("events", &opts(&p)).unwrap();
    let erx = Receiver::<Event>::open("events", &opts(&p)).unwrap();
    events.send(Event::Start).unwrap();
    events.send(Event::Fill(300, 1.5)).unwrap();
    events
        .send(Event::Cancel {
            id: 9,
            reason: "late".into(),
        })
        .unwrap();
    let out = shmbus(&p, &["tail", "events", "--count", "3"]);
    assert_eq!(
        stdout(&out).lines().collect::<Vec<_>>(),
        [
            "Start",
            "Fill(300, 1.5)",
            r#"Cancel {id: 9, reason: "late"}"#
        ]
    );
    drop((tx, rx, events, erx));
    assert!(leftovers(&p).is_empty());
}

#[test]
fn send_delivers_json_to_a_receiver() {
    let p = prefix("send");
    let rx = Receiver::<Quote>::create("quotes", &opts(&p)).unwrap();
    let out = shmbus(
        &p,
        &[
            "send",
            "quotes",
            r#"{"seq": 42, "price": 1.25, "venue": "XLON", "sizes": [3, 4]}"#,
        ],
    );
    assert!(out.status.success());
    let got = rx.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(
        *got,
        Quote {
            seq: 42,
            price: 1.25,
            venue: *b"XLON\0\0\0\0",
            sizes: [3, 4]
        }
    );
    drop(got);
    // Errors: an unknown field, and a missing channel; both say what is wrong.
    let out = shmbus(&p, &["send", "quotes", r#"{"sequence": 1}"#]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no field `sequence`"));
    let out = shmbus(&p, &["send", "nothing", "{}"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("shmbus list"));
    let info = shmbus::inspect::Observer::open(&p, "quotes")
        .unwrap()
        .info();
    assert_eq!(info.sender_totals().sent, 1);
    drop(rx);
    assert!(leftovers(&p).is_empty());
}

/// A serialized message `shmbus send` can encode: every field type is described.
#[derive(shmbus::Message, serde::Serialize, serde::Deserialize, Clone, Debug, PartialEq)]
struct Ticket {
    id: u64,
    delta: i32,
    legs: Vec<Leg>,
    first: Leg,
    limit: Option<f64>,
    tags: std::collections::BTreeMap<String, u16>,
    words: Vec<String>,
    event: Event,
}

#[test]
fn send_encodes_serde_messages() {
    let p = prefix("sendserde");
    let rx = Receiver::<Ticket>::create("tickets", &opts(&p)).unwrap();
    let out = shmbus(
        &p,
        &[
            "send",
            "tickets",
            r#"{"id": 300, "delta": -2, "legs": [{"venue": "XNAS", "qty": [1, 300]}],
                "first": {"venue": "IEX", "qty": [0, 4294967295]}, "limit": 2.5,
                "tags": {"desk": 7}, "words": ["a", "", "ünï"], "event": {"Fill": [9, -0.5]}}"#,
        ],
    );
    assert!(out.status.success());
    assert!(stdout(&out).starts_with("sent {id: 300, delta: -2, legs: [{venue: \"XNAS\""));
    let got = rx
        .recv_timeout(Duration::from_secs(5))
        .unwrap()
        .into_inner();
    assert_eq!(
        got,
        Ticket {
            id: 300,
            delta: -2,
            legs: vec![Leg {
                venue: "XNAS".into(),
                qty: [1, 300]
            }],
            first: Leg {
                venue: "IEX".into(),
                qty: [0, u32::MAX]
            },
            limit: Some(2.5),
            tags: [("desk".to_string(), 7)].into(),
            words: vec!["a".into(), "".into(), "ünï".into()],
            event: Event::Fill(9, -0.5),
        }
    );

    // An enum message: a unit variant as a string, a struct variant as an object.
    let events = Receiver::<Event>::create("events", &opts(&p)).unwrap();
    for json in ["\"Start\"", r#"{"Cancel": {"id": 9, "reason": "late"}}"#] {
        assert!(shmbus(&p, &["send", "events", json]).status.success());
    }
    let got: Vec<Event> = (0..2)
        .map(|_| {
            events
                .recv_timeout(Duration::from_secs(5))
                .unwrap()
                .into_inner()
        })
        .collect();
    assert_eq!(
        got,
        [
            Event::Start,
            Event::Cancel {
                id: 9,
                reason: "late".into()
            }
        ]
    );

    // Refused, saying which field and why; nothing is sent.
    let err = |name: &str, json: &str| {
        let out = shmbus(&p, &["send", name, json]);
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let e = err("tickets", r#"{"id": -1}"#);
    assert!(e.contains("Ticket.id: expected a u64"), "{e}");
    let e = err("events", r#"{"Fill": [1, 2, 3]}"#);
    assert!(
        e.contains("Event::Fill: expected 2 values (u64,f32), found 3"),
        "{e}"
    );
    let orders = Receiver::<Order>::create("orders", &opts(&p)).unwrap();
    let e = err(
        "orders",
        r#"{"id": 1, "account": "A", "delta": 0, "legs": [], "first": {"venue": "", "qty": [0, 0]},
            "limit": null, "tags": {}, "urgent": false, "note": 1}"#,
    );
    // `Note` derives only serde: its wire form is not recorded.
    assert!(
        e.contains("Order.note: the recorded schema does not describe type `Note`"),
        "{e}"
    );
    for name in ["tickets", "events", "orders"] {
        let info = shmbus::inspect::Observer::open(&p, name).unwrap().info();
        let sent = if name == "tickets" {
            1
        } else if name == "events" {
            2
        } else {
            0
        };
        assert_eq!(info.sender_totals().sent, sent, "{name}");
    }
    assert!(rx.try_recv().is_err() && events.try_recv().is_err() && orders.try_recv().is_err());
    drop((rx, events, orders));
    assert!(leftovers(&p).is_empty());
}

const ROLE: &str = "SHMBUS_CLI_TEST_ROLE";

/// The child of `clean_removes_stale_and_keeps_live`: holds a sender until killed.
#[test]
fn child_hold() {
    let Ok(prefix) = std::env::var(ROLE) else {
        return;
    };
    let tx = Sender::<Quote>::create("doomed", &opts(&prefix)).unwrap();
    tx.try_send(quote(1)).unwrap();
    println!("ready");
    std::thread::sleep(Duration::from_secs(60));
}

#[test]
fn clean_removes_stale_and_keeps_live() {
    let p = prefix("clean");
    let live = Sender::<Quote>::create("live", &opts(&p)).unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_hold", "--nocapture"])
        .env(ROLE, &p)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !leftovers(&p).contains(&"doomed".to_owned()) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "child never created it"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // Wait until the child holds it (created and ready).
    while shmbus::inspect::Observer::open(&p, "doomed").is_err() {
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = shmbus(&p, &["clean", "--dry-run"]);
    assert!(
        stdout(&out).contains("keep    posix-shm doomed"),
        "live child's channel kept"
    );
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    child.wait().unwrap();
    let info = shmbus::inspect::Observer::open(&p, "doomed")
        .unwrap()
        .info();
    assert!(info.stale);
    assert!(!info.senders[0].alive);
    let out = shmbus(&p, &["list"]);
    assert!(stdout(&out).contains("stale"));
    let out = shmbus(&p, &["clean", "--dry-run"]);
    assert!(stdout(&out).contains("would remove posix-shm doomed"));
    assert!(stdout(&out).contains("keep    posix-shm live"));
    assert_eq!(leftovers(&p).len(), 2);
    let out = shmbus(&p, &["clean"]);
    assert!(out.status.success());
    assert!(stdout(&out).contains("removed posix-shm doomed"));
    assert_eq!(leftovers(&p), ["live"]);
    drop(live);
    assert!(leftovers(&p).is_empty());
}

#[test]
fn errors_are_clear_and_fail() {
    let p = prefix("errors");
    let out = shmbus(&p, &["stat", "missing"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no channel \"missing\""), "{err}");
}

#[test]
fn bench_measures_each_transport_between_two_processes() {
    let prefix = format!("clibench{}.", std::process::id());
    let out = shmbus(
        &prefix,
        &[
            "bench",
            "shm",
            "pipe",
            "posix_mq",
            "--round-trips",
            "200",
            "--stream",
            "2000",
            "--json",
        ],
    );
    assert!(out.status.success());
    let rows: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("JSON");
    let rows = rows.as_array().expect("a list");
    let names: Vec<&str> = rows
        .iter()
        .map(|r| r["transport"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["shm", "pipe", "posix_mq"]);
    for r in rows {
        assert!(r["rtt_median_ns"].as_u64().unwrap() > 0, "{r}");
        assert!(r["rtt_p99_ns"].as_u64().unwrap() >= r["rtt_median_ns"].as_u64().unwrap());
        assert!(r["messages_per_s"].as_f64().unwrap() > 0.0, "{r}");
    }
    let left: Vec<String> = std::fs::read_dir("/dev/shm")
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|f| f.starts_with(&prefix))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    let bad = shmbus(&prefix, &["bench", "carrier-pigeon"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown transport"));
}

#[test]
fn demo_streams_between_processes_and_cleans_up() {
    let p = prefix("demo");
    let out = shmbus(
        &p,
        &[
            "demo",
            "--messages",
            "20000",
            "--consumers",
            "2",
            "--round-trips",
            "200",
        ],
    );
    assert!(out.status.success());
    let text = stdout(&out);
    assert_eq!(
        text.matches("every sequence number in order: yes").count(),
        2,
        "{text}"
    );
    assert!(text.contains("producer: sent 20000"), "{text}");
    assert!(text.contains("received 20000"), "{text}");
    assert!(text.contains("Tick { seq: 19999"), "{text}");
    assert!(
        text.contains("default wait") && text.contains("always sleep"),
        "{text}"
    );
    assert!(text.contains("200 samples"), "{text}");
    assert!(leftovers(&p).is_empty(), "{:?}", leftovers(&p));
}

/// Kills and reaps a `shmbus bridge` process when dropped.
#[cfg(feature = "bridge")]
struct BridgeProc(std::process::Child);

#[cfg(feature = "bridge")]
impl Drop for BridgeProc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[cfg(feature = "bridge")]
fn bridge(prefix: &str, args: &[&str]) -> BridgeProc {
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(env!("CARGO_BIN_EXE_shmbus"))
        .args(["--prefix", prefix, "bridge", "--no-multicast"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run shmbus bridge");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(
        line.starts_with("bridge "),
        "shmbus bridge printed {line:?}"
    );
    BridgeProc(child)
}

#[cfg(feature = "bridge")]
#[test]
fn bridge_carries_a_channel_between_two_prefixes() {
    let (pa, pb) = (prefix("bridge-a"), prefix("bridge-b"));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let ep = format!("tcp/127.0.0.1:{port}");
    let tx = Sender::<Quote>::create("quotes", &opts(&pa)).unwrap();
    let rx = Receiver::<Quote>::create("quotes", &opts(&pb)).unwrap();
    let _a = bridge(&pa, &["--to-zenoh", "quotes", "--listen", &ep]);
    let _b = bridge(&pb, &["--from-zenoh", "quotes", "--connect", &ep]);
    for i in 0..100 {
        tx.send(quote(i)).unwrap();
    }
    for i in 0..100 {
        let q = loop {
            match rx.recv_timeout(Duration::from_secs(60)) {
                Ok(q) => break q.into_inner(),
                // The bridge is not attached yet.
                Err(shmbus::RecvTimeoutError::Disconnected) => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                Err(e) => panic!("{e}"),
            }
        };
        assert_eq!(q, quote(i));
    }
}

#[cfg(not(feature = "bridge"))]
#[test]
fn bridge_without_the_feature_says_how_to_get_it() {
    let out = shmbus("shmbus-clitest-nobridge.", &["bridge", "--to-zenoh", "x"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--features bridge"));
}
