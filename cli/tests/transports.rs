//! `shmbus list` and `shmbus clean` over every transport that can be enumerated, against
//! channels held by a separate process (this test binary re-run with `SHMBUS_CLI_HOLDER`),
//! which is then SIGKILLed so that everything it held is left behind.
//!
//! The holder and the tool get their own `XDG_RUNTIME_DIR` (a fresh temporary directory),
//! where the library puts lock and presence files and where the tool looks for FIFOs,
//! sockets and file logs named after the prefix; the prefix is unique too.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use shmbus::{Options, Receiver, Sender, Transport};

#[derive(shmbus::Message, Clone, Copy, Debug, PartialEq)]
#[repr(C)]
struct Quote {
    seq: u64,
    price: f64,
}

const HOLDER: &str = "SHMBUS_CLI_HOLDER";

/// At the end of the test, also when it fails: kills the holder, removes whatever it left
/// (`shmbus clean`: kernel queues and segments too) and the runtime directory.
struct Cleanup {
    run: PathBuf,
    prefix: String,
    child: Option<std::process::Child>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new(env!("CARGO_BIN_EXE_shmbus"))
            .env("XDG_RUNTIME_DIR", &self.run)
            .args(["--prefix", &self.prefix, "clean"])
            .output();
        let _ = std::fs::remove_dir_all(&self.run);
    }
}

fn opts(prefix: &str, transport: Transport) -> Options {
    let mut o = Options::new();
    o.prefix(prefix).capacity(8).transport(transport);
    o
}

/// The holder: one channel per transport, each with a sender and a receiver, some
/// messages waiting; then sleeps until killed.
#[test]
fn holder() {
    let Ok(prefix) = std::env::var(HOLDER) else {
        return;
    };
    let run = PathBuf::from(std::env::var("XDG_RUNTIME_DIR").unwrap());
    let q = |seq| Quote { seq, price: 1.5 };
    let shm_tx = Sender::<Quote>::create("ring", &opts(&prefix, Transport::SharedMemory)).unwrap();
    let shm_rx = Receiver::<Quote>::open("ring", &opts(&prefix, Transport::SharedMemory)).unwrap();
    shm_tx.send(q(1)).unwrap();
    let sysv = Transport::SysvSharedMemory { key: None };
    let sysv_tx = Sender::<Quote>::create("sysvring", &opts(&prefix, sysv.clone())).unwrap();
    let sysv_rx = Receiver::<Quote>::open("sysvring", &opts(&prefix, sysv)).unwrap();
    sysv_tx.send(q(1)).unwrap();
    sysv_tx.send(q(2)).unwrap();
    let pmq_tx = Sender::<Quote>::create("pmq", &opts(&prefix, Transport::PosixQueue)).unwrap();
    let pmq_rx = Receiver::<Quote>::open("pmq", &opts(&prefix, Transport::PosixQueue)).unwrap();
    pmq_tx.send(q(1)).unwrap();
    let smq = Transport::SysvQueue { key: None };
    let smq_tx = Sender::<Quote>::create("smq", &opts(&prefix, smq.clone())).unwrap();
    let smq_rx = Receiver::<Quote>::open("smq", &opts(&prefix, smq)).unwrap();
    for i in 0..3 {
        smq_tx.send(q(i)).unwrap();
    }
    let fifo = Transport::Fifo {
        path: run.join(format!("{prefix}fifo")),
    };
    let fifo_o = opts(&prefix, fifo);
    let fifo_rx = std::thread::spawn(move || Receiver::<Quote>::open_or_create("f", &fifo_o));
    let fifo_tx = Sender::<Quote>::open_or_create(
        "f",
        &opts(&prefix, {
            Transport::Fifo {
                path: run.join(format!("{prefix}fifo")),
            }
        }),
    )
    .unwrap();
    let fifo_rx = fifo_rx.join().unwrap().unwrap();
    let sock = Transport::UnixSocket {
        path: run.join(format!("{prefix}sock")),
    };
    let sock_rx = Receiver::<Quote>::create("s", &opts(&prefix, sock.clone())).unwrap();
    let sock_tx = Sender::<Quote>::open("s", &opts(&prefix, sock)).unwrap();
    let abs = Transport::AbstractSocket {
        name: format!("{prefix}abstract"),
    };
    let abs_rx = Receiver::<Quote>::create("a", &opts(&prefix, abs.clone())).unwrap();
    let abs_tx = Sender::<Quote>::open("a", &opts(&prefix, abs)).unwrap();
    let log = Transport::File {
        dir: run.join(format!("{prefix}log")),
    };
    let log_tx = Sender::<Quote>::create("l", &opts(&prefix, log.clone())).unwrap();
    for i in 0..5 {
        log_tx.send(q(i)).unwrap();
    }
    let log_rx = Receiver::<Quote>::open("l", &opts(&prefix, log)).unwrap();
    println!("ready");
    std::thread::sleep(Duration::from_secs(120));
    drop((
        shm_tx, shm_rx, sysv_tx, sysv_rx, pmq_tx, pmq_rx, smq_tx, smq_rx,
    ));
    drop((
        fifo_tx, fifo_rx, sock_tx, sock_rx, abs_tx, abs_rx, log_tx, log_rx,
    ));
}

fn shmbus(run: &Path, prefix: &str, args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_shmbus"))
        .env("XDG_RUNTIME_DIR", run)
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
    assert!(out.status.success());
    out
}

fn list(run: &Path, prefix: &str) -> Vec<serde_json::Value> {
    let out = shmbus(run, prefix, &["list", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    v.as_array().expect("a list").clone()
}

fn find<'a>(rows: &'a [serde_json::Value], transport: &str) -> Option<&'a serde_json::Value> {
    rows.iter().find(|r| r["transport"] == transport)
}

#[test]
fn list_and_clean_every_transport() {
    let prefix = format!("shmbus-clitr-{}.", std::process::id());
    let dir = std::env::temp_dir().join(format!("shmbus-clitr-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut guard = Cleanup {
        run: dir.clone(),
        prefix: prefix.clone(),
        child: None,
    };
    let run = &dir;
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "holder", "--nocapture", "--test-threads", "1"])
        .env(HOLDER, &prefix)
        .env("XDG_RUNTIME_DIR", run)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let pid = serde_json::json!(child.id());
    let child_pid = child.id();
    guard.child = Some(child);
    let mut ready = String::new();
    let mut lines = BufReader::new(stdout).lines();
    for line in lines.by_ref() {
        ready = line.unwrap();
        if ready.contains("ready") {
            break;
        }
    }
    assert!(ready.contains("ready"), "the holder failed");

    let rows = list(run, &prefix);
    let want = [
        "posix-shm",
        "sysv-shm",
        "posix-mq",
        "sysv-mq",
        "fifo",
        "unix-socket",
        "abstract-socket",
        "file-log",
    ];
    for t in want {
        let r = find(&rows, t).unwrap_or_else(|| panic!("{t} not listed: {rows:?}"));
        assert_eq!(r["stale"], false, "{r}");
        assert!(r.get("error").is_none(), "{r}");
    }
    // Type, depth and pids where the transport records them.
    for (t, depth) in [
        ("posix-shm", 1),
        ("sysv-shm", 2),
        ("posix-mq", 1),
        ("sysv-mq", 3),
        ("file-log", 5),
    ] {
        let r = find(&rows, t).unwrap();
        assert_eq!(r["type"], "Quote", "{r}");
        assert_eq!(r["depth"], depth, "{r}");
        assert_eq!(r["senders"][0]["pid"], pid, "{r}");
        assert_eq!(r["senders"][0]["alive"], true, "{r}");
        if t != "file-log" {
            assert_eq!(r["receivers"][0]["pid"], pid, "{r}");
        }
    }
    let fifo = find(&rows, "fifo").unwrap();
    assert_eq!(fifo["senders"][0]["pid"], pid, "{fifo}");
    assert_eq!(fifo["receivers"][0]["pid"], pid, "{fifo}");
    let sock = find(&rows, "unix-socket").unwrap();
    assert_eq!(sock["receivers"][0]["pid"], pid, "{sock}");
    assert_eq!(sock["senders"].as_array().unwrap().len(), 1, "{sock}");
    // The table shows the same.
    let table = String::from_utf8_lossy(&shmbus(run, &prefix, &["list"]).stdout).into_owned();
    for t in want {
        assert!(table.contains(t), "{t} missing in\n{table}");
    }
    // Nothing is stale while the holder lives.
    let dry = shmbus(run, &prefix, &["clean", "--dry-run"]);
    assert!(!String::from_utf8_lossy(&dry.stdout).contains("would remove"));

    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child_pid as i32, libc::SIGKILL) };
    guard.child.take().unwrap().wait().unwrap();
    let rows = list(run, &prefix);
    for t in [
        "posix-shm",
        "sysv-shm",
        "posix-mq",
        "sysv-mq",
        "fifo",
        "unix-socket",
    ] {
        let r = find(&rows, t).unwrap_or_else(|| panic!("{t} gone: {rows:?}"));
        assert_eq!(r["stale"], true, "{r}");
    }
    assert!(
        find(&rows, "abstract-socket").is_none(),
        "an abstract socket goes with its process"
    );
    for t in ["posix-shm", "sysv-shm", "posix-mq", "sysv-mq"] {
        let r = find(&rows, t).unwrap();
        assert_eq!(r["senders"][0]["alive"], false, "{r}");
        assert_eq!(r["receivers"][0]["alive"], false, "{r}");
    }
    let table = String::from_utf8_lossy(&shmbus(run, &prefix, &["list"]).stdout).into_owned();
    assert!(
        table.contains("(dead)") && table.contains("stale"),
        "{table}"
    );

    let out = shmbus(run, &prefix, &["clean"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("6 stale channel(s) removed"), "{text}");
    let rows = list(run, &prefix);
    let left: Vec<&str> = rows
        .iter()
        .map(|r| r["transport"].as_str().unwrap())
        .collect();
    assert_eq!(left, ["file-log"], "the log keeps its records");
    assert!(shmbus::inspect::names(&prefix).unwrap().is_empty());
}
