//! Resource limits and bad input (issue 7, docs/limits.md): each case gets a typed error,
//! and messages already in a channel are still delivered after the failed operation.
//!
//! Cases that change process-wide limits run in a child process (this test binary re-run
//! with a role): a tiny tmpfs over `/dev/shm` in a private mount namespace (root), a low
//! `RLIMIT_NOFILE`, and POSIX queues created by user 65534 until `RLIMIT_MSGQUEUE` is
//! reached (root, to switch user). Without root those say so and return.

use std::ffi::CString;
use std::os::unix::fs::FileExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;

#[path = "common/exe_for_nobody.rs"]
mod exe_for_nobody;
use exe_for_nobody::ExeForNobody;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use shmbus::{
    EncodeError, OpenError, Options, Receiver, SendError, Sender, Transport, TryRecvError,
    TrySendError,
};

#[derive(shmbus::Message, Clone, Copy, Debug, PartialEq)]
#[repr(C)]
struct Msg {
    seq: u64,
}

#[derive(shmbus::Message, Clone, Copy, Debug, PartialEq)]
#[repr(C)]
struct Other {
    a: u32,
    b: u32,
}

/// 8 KiB: exactly what a default POSIX or System V queue message holds.
#[derive(shmbus::Message, Clone, Copy, Debug)]
#[repr(C)]
struct Page {
    words: [u64; 1024],
}

/// One word more than a queue message holds.
#[derive(shmbus::Message, Clone, Copy, Debug)]
#[repr(C)]
struct PagePlus {
    words: [u64; 1025],
}

#[derive(shmbus::Message, serde::Serialize, serde::Deserialize, Debug, PartialEq)]
struct Text {
    s: String,
}

const ROLE_VAR: &str = "SHMBUS_LIMITS_ROLE";
const NOBODY: u32 = 65534;

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn unique(test: &str) -> (String, i32) {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let pid = std::process::id();
    (
        format!("limits-{test}-{pid}-{n}"),
        0x5d00_0000 | (((pid & 0xffff) as i32) << 8) | (n as i32 & 0xff),
    )
}

/// Options for a channel of `kind`; paths are removed by the returned guard.
fn options(kind: &str, name: &str, key: i32) -> (Options, PathGuard) {
    let path = std::env::temp_dir().join(format!("shmbus-{name}"));
    let mut o = Options::new();
    o.capacity(8).connect_timeout(Duration::from_secs(5));
    o.transport(match kind {
        "shm" => Transport::SharedMemory,
        "sysv_shm" => Transport::SysvSharedMemory { key: Some(key) },
        "posix_mq" => Transport::PosixQueue,
        "sysv_mq" => Transport::SysvQueue { key: Some(key) },
        "fifo" => Transport::Fifo { path: path.clone() },
        "unix" => Transport::UnixSocket { path: path.clone() },
        "abstract" => Transport::AbstractSocket {
            name: name.to_owned(),
        },
        "file" => Transport::File { dir: path.clone() },
        k => panic!("unknown kind {k}"),
    });
    (o, PathGuard(path))
}

struct PathGuard(PathBuf);

impl Drop for PathGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const KINDS: [&str; 8] = [
    "shm", "sysv_shm", "posix_mq", "sysv_mq", "fifo", "unix", "abstract", "file",
];

fn pair<T: shmbus::Message>(kind: &str, name: &str, o: &Options) -> (Sender<T>, Receiver<T>) {
    if kind == "fifo" {
        let (n, o2) = (name.to_owned(), o.clone());
        let rx = std::thread::spawn(move || Receiver::<T>::open_or_create(&n, &o2));
        let tx = Sender::<T>::open_or_create(name, o).unwrap();
        return (tx, rx.join().unwrap().unwrap());
    }
    let rx = Receiver::<T>::open_or_create(name, o).unwrap();
    let tx = Sender::<T>::open_or_create(name, o).unwrap();
    (tx, rx)
}

fn send(tx: &Sender<Msg>, seqs: std::ops::Range<u64>) {
    for seq in seqs {
        tx.send(Msg { seq }).unwrap();
    }
}

/// Receives exactly `seqs`, in order, and then nothing: nothing accepted was lost.
fn expect(rx: &Receiver<Msg>, seqs: std::ops::Range<u64>) {
    for seq in seqs {
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)).unwrap().seq, seq);
    }
    assert!(matches!(
        rx.try_recv().map(|m| m.seq),
        Err(TryRecvError::Empty | TryRecvError::Disconnected)
    ));
}

/// Runs this binary as a child playing `role`, after `setup` (in the forked child, before
/// exec: async-signal-safe calls only). Returns its stdout (`None` if the system refused
/// the setup with `EPERM`/`EACCES`); panics if it failed.
fn run_child(
    role: &str,
    setup: impl FnMut() -> std::io::Result<()> + Send + Sync + 'static,
) -> Option<String> {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", "child_main", "--nocapture", "--test-threads=1"])
        .env(ROLE_VAR, role);
    // SAFETY: `setup` makes only async-signal-safe system calls on data prepared before
    // the fork.
    unsafe { cmd.pre_exec(setup) };
    let out = match cmd.output() {
        Ok(out) => out,
        // The setup failed in the child: a container without CAP_SYS_ADMIN, say.
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            eprintln!("child {role}: setup refused ({e}); skipped");
            return None;
        }
        Err(e) => panic!("child {role}: {e}"),
    };
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "child {role} failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Some(stdout)
}

fn report(stdout: &str, key: &str) -> String {
    let tag = format!("@@ {key} ");
    stdout
        .lines()
        .find_map(|l| l.find(&tag).map(|i| l[i + tag.len()..].to_owned()))
        .unwrap_or_else(|| panic!("no {key} report in {stdout}"))
}

fn os_check(r: libc::c_int) -> std::io::Result<()> {
    if r == -1 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Row "full /dev/shm at create": with a 256 KiB tmpfs over `/dev/shm` (a private mount
/// namespace of a child), creating a channel that does not fit is `NoSpace`, leaves no
/// file behind, and a channel made before keeps its messages.
#[test]
fn full_dev_shm_at_create_is_no_space() {
    if !is_root() {
        eprintln!("full_dev_shm_at_create_is_no_space: needs root (mount); skipped");
        return;
    }
    let root = CString::new("/").unwrap();
    let shm = CString::new("/dev/shm").unwrap();
    let tmpfs = CString::new("tmpfs").unwrap();
    let size = CString::new("size=256k").unwrap();
    let out = run_child("tiny_shm", move || {
        // SAFETY: unshare and mount with NUL-terminated strings prepared before the fork.
        unsafe {
            os_check(libc::unshare(libc::CLONE_NEWNS))?;
            os_check(libc::mount(
                std::ptr::null(),
                root.as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ))?;
            os_check(libc::mount(
                tmpfs.as_ptr(),
                shm.as_ptr(),
                tmpfs.as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV,
                size.as_ptr().cast(),
            ))
        }
    });
    let Some(out) = out else { return };
    assert_eq!(report(&out, "result"), "NoSpace, nothing left, 3 kept");
}

/// Row "too many segments": with `RLIMIT_NOFILE` at 48, creating channels until one fails
/// gives `LimitReached` (EMFILE); the channels made before keep their messages.
#[test]
fn too_many_open_files_is_limit_reached() {
    let out = run_child("nofile", || {
        let lim = libc::rlimit {
            rlim_cur: 48,
            rlim_max: 48,
        };
        // SAFETY: setrlimit with a valid rlimit.
        os_check(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) })
    })
    .expect("lowering a limit is always allowed");
    let r = report(&out, "result");
    println!("child with RLIMIT_NOFILE 48: {r}");
    assert!(r.starts_with("LimitReached after "), "{r}");
}

/// Row "POSIX queue limits": user 65534 creates 8 KiB-message queues until
/// `RLIMIT_MSGQUEUE` (800 KiB by default: 9 such queues) is reached: `LimitReached`, and the
/// queues made before keep their messages.
#[test]
fn posix_queue_count_limit_is_limit_reached() {
    if !is_root() {
        eprintln!("posix_queue_count_limit_is_limit_reached: needs root (setuid); skipped");
        return;
    }
    let exe = ExeForNobody::new();
    let mut cmd = Command::new(&exe.0);
    cmd.args(["--exact", "child_main", "--nocapture", "--test-threads=1"])
        .env(ROLE_VAR, "mq_count")
        .uid(NOBODY)
        .gid(NOBODY);
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = report(&stdout, "result");
    println!("child as uid {NOBODY}: {r}");
    assert!(r.starts_with("LimitReached after "), "{r}");
}

/// Rows "POSIX queue full", "message larger than the transport allows" (POSIX queue): a
/// queue holds `fs.mqueue.msg_max` (10) messages whatever the capacity asked for; the 11th
/// `try_send` is `Full`, `send_timeout` is `Timeout`, both hand the message back; a serialized message over
/// `msgsize_max` (8 KiB) is `Encode(TooLarge)`; a zero-copy type over 8 KiB is refused at
/// open. All ten are then received.
#[test]
fn posix_queue_full_and_too_large() {
    let (name, key) = unique("pmq");
    let (mut o, _g) = options("posix_mq", &name, key);
    o.capacity(1000);
    let (tx, rx) = pair::<Msg>("posix_mq", &name, &o);
    assert_eq!(tx.capacity(), 10, "clamped to fs.mqueue.msg_max");
    send(&tx, 0..10);
    match tx.try_send(Msg { seq: 10 }) {
        Err(TrySendError::Full(m)) => assert_eq!(m.seq, 10),
        other => panic!("expected Full, got {other:?}"),
    }
    match tx.send_timeout(Msg { seq: 10 }, Duration::from_millis(20)) {
        Err(shmbus::SendTimeoutError::Timeout(m)) => assert_eq!(m.seq, 10),
        other => panic!("expected Timeout, got {other:?}"),
    }
    let r = Sender::<PagePlus>::open_or_create(&unique("pmq-big").0, &o).map(drop);
    assert!(matches!(r, Err(OpenError::InvalidOptions { .. })), "{r:?}");
    expect(&rx, 0..10);

    let (tname, key) = unique("pmq-text");
    let (mut to, _tg) = options("posix_mq", &tname, key);
    to.max_message_size(64 * 1024);
    let (ttx, trx) = pair::<Text>("posix_mq", &tname, &to);
    ttx.send(Text { s: "before".into() }).unwrap();
    match ttx.send(Text {
        s: "x".repeat(9000),
    }) {
        Err(SendError::Encode(m, EncodeError::TooLarge { max })) => {
            assert_eq!((m.s.len(), max), (9000, 8192))
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert_eq!(trx.recv().unwrap().s, "before");
}

/// Rows "System V queue full", "message larger than the transport allows" (System V
/// queue): a queue holds `kernel.msgmnb` (16 KiB) of messages: 4 KiB messages are `Full` at
/// the fifth; a message over `kernel.msgmax` (8 KiB) is `Encode(TooLarge)`; a zero-copy
/// type over 8 KiB is refused at open. The four are then received.
#[test]
fn sysv_queue_full_and_too_large() {
    let (name, key) = unique("smq");
    let (mut o, _g) = options("sysv_mq", &name, key);
    o.max_message_size(16 * 1024);
    let (tx, rx) = pair::<Text>("sysv_mq", &name, &o);
    let chunk = |i: usize| Text {
        s: format!("{i}").repeat(4000),
    };
    let mut sent = 0;
    loop {
        match tx.try_send(chunk(sent)) {
            Ok(()) => sent += 1,
            Err(TrySendError::Full(m)) => {
                assert_eq!(m, chunk(sent));
                break;
            }
            Err(e) => panic!("{e}"),
        }
        assert!(sent < 100, "the queue never filled");
    }
    assert_eq!(sent, 16384 / 4002, "kernel.msgmnb = 16384 bytes");
    match tx.send(Text {
        s: "x".repeat(9000),
    }) {
        Err(SendError::Encode(_, EncodeError::TooLarge { max })) => assert_eq!(max, 8192),
        other => panic!("expected TooLarge, got {other:?}"),
    }
    let (bname, bkey) = unique("smq-big");
    let (bo, _bg) = options("sysv_mq", &bname, bkey);
    let r = Sender::<PagePlus>::open_or_create(&bname, &bo).map(drop);
    assert!(matches!(r, Err(OpenError::InvalidOptions { .. })), "{r:?}");
    for i in 0..sent {
        assert_eq!(*rx.recv().unwrap(), chunk(i));
    }
    // 8 KiB exactly still fits.
    let (pname, pkey) = unique("smq-page");
    let (po, _pg) = options("sysv_mq", &pname, pkey);
    let (ptx, prx) = pair::<Page>("sysv_mq", &pname, &po);
    ptx.send(Page { words: [7; 1024] }).unwrap();
    assert_eq!(prx.recv().unwrap().words[1023], 7);
}

/// Rows "zero capacity", "absurd capacity": refused with `InvalidOptions` on every
/// transport before anything is touched; an open channel of that name keeps its messages.
#[test]
fn zero_and_absurd_capacity_on_every_transport() {
    for kind in KINDS {
        let (name, key) = unique("cap");
        let (o, _g) = options(kind, &name, key);
        let (tx, rx) = pair::<Msg>(kind, &name, &o);
        send(&tx, 0..2);
        for cap in [0, shmbus::MAX_CAPACITY as usize + 1, usize::MAX] {
            let mut bad = o.clone();
            bad.capacity(cap);
            for (side, r) in [
                (
                    "sender",
                    Sender::<Msg>::open_or_create(&name, &bad).map(drop),
                ),
                (
                    "receiver",
                    Receiver::<Msg>::open_or_create(&name, &bad).map(drop),
                ),
            ] {
                assert!(
                    matches!(r, Err(OpenError::InvalidOptions { .. })),
                    "{kind} {side} capacity {cap}: {r:?}"
                );
            }
        }
        expect(&rx, 0..2);
    }
    // An absurd message size on the ring.
    let (name, key) = unique("msgsize");
    let (mut o, _g) = options("shm", &name, key);
    o.max_message_size(1 << 40);
    let r = Sender::<Text>::create(&name, &o).map(drop);
    assert!(matches!(r, Err(OpenError::InvalidOptions { .. })), "{r:?}");
}

/// Row "wrong type": `TypeMismatch` on every transport with a persistent object, and the
/// channel keeps its messages.
#[test]
fn wrong_type_keeps_the_channel() {
    for kind in ["shm", "sysv_shm", "posix_mq", "sysv_mq", "file"] {
        let (name, key) = unique("type");
        let (o, _g) = options(kind, &name, key);
        let (tx, rx) = pair::<Msg>(kind, &name, &o);
        send(&tx, 0..3);
        for (side, r) in [
            (
                "sender",
                Sender::<Other>::open_or_create(&name, &o).map(drop),
            ),
            ("receiver", Receiver::<Other>::open(&name, &o).map(drop)),
        ] {
            assert!(
                matches!(r, Err(OpenError::TypeMismatch { .. })),
                "{kind} {side}: {r:?}"
            );
        }
        expect(&rx, 0..3);
    }
}

/// Offsets in the segment header (`docs/wire-format.md`).
const VERSION_AT: u64 = 8;

/// Rows "wrong layout version", "truncated segment file": a live segment whose header says
/// another layout version, or whose file was cut short, is `Corrupt` for every new handle
/// (never replaced while in use); once repaired, the messages that were in it are delivered.
#[test]
fn wrong_version_and_truncated_segment_keep_the_channel() {
    let (name, key) = unique("version");
    let (mut o, _g) = options("shm", &name, key);
    o.capacity(256); // 16 KiB of slots: the last page holds only slots 192..255
    let (tx, rx) = pair::<Msg>("shm", &name, &o);
    send(&tx, 0..3);
    let path = PathBuf::from(format!("/dev/shm/shmbus.{name}"));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let mut version = [0u8; 4];
    file.read_exact_at(&mut version, VERSION_AT).unwrap();
    file.write_all_at(&99u32.to_ne_bytes(), VERSION_AT).unwrap();
    let corrupt = |what: &str, needle: &str| {
        for (side, r) in [
            ("receiver", Receiver::<Msg>::open(&name, &o).map(drop)),
            ("sender", Sender::<Msg>::open_or_create(&name, &o).map(drop)),
        ] {
            match r {
                Err(OpenError::Corrupt { reason, .. }) => {
                    assert!(reason.contains(needle), "{what} {side}: {reason}")
                }
                other => panic!("{what} {side}: expected Corrupt, got {other:?}"),
            }
        }
    };
    corrupt("version 99", "layout version");
    file.write_all_at(&version, VERSION_AT).unwrap();

    // Cut off the last page (slots far beyond the three messages), then put it back.
    let len = file.metadata().unwrap().len();
    file.set_len(len - 4096).unwrap();
    corrupt("truncated", "");
    file.set_len(len).unwrap();
    assert!(path.exists(), "a segment in use is never replaced");
    drop(file);
    expect(&rx, 0..3);
    send(&tx, 3..4);
    expect(&rx, 3..4);
}

/// Found while testing: both ends of a queue opening at once for the first time always
/// meet on one queue. (An opener used to take a presence file whose creator had not locked
/// it yet for one left behind, remove it and make its own: the two ends then used two
/// different queues, and one of them waited forever.)
#[test]
fn concurrent_first_opens_meet_on_one_queue() {
    for kind in ["posix_mq", "sysv_mq"] {
        for round in 0..150u64 {
            let (name, key) = unique("race");
            let (o, _g) = options(kind, &name, key);
            let (n2, o2) = (name.clone(), o.clone());
            let rx = std::thread::spawn(move || Receiver::<Msg>::open_or_create(&n2, &o2));
            let tx = Sender::<Msg>::open_or_create(&name, &o).unwrap();
            let rx = rx.join().unwrap().unwrap();
            tx.send(Msg { seq: round }).unwrap();
            let got = rx.recv_timeout(Duration::from_secs(5)).map(|m| m.seq);
            assert_eq!(
                got,
                Ok(round),
                "{kind} round {round}: the ends did not meet"
            );
        }
    }
}

/// Runs a child role (`SHMBUS_LIMITS_ROLE`); a no-op in the parent.
#[test]
fn child_main() {
    let Ok(role) = std::env::var(ROLE_VAR) else {
        return;
    };
    match role.as_str() {
        "tiny_shm" => {
            let (name, key) = unique("tiny");
            let (o, _g) = options("shm", &name, key);
            let (tx, rx) = pair::<Msg>("shm", &name, &o);
            send(&tx, 0..3);
            let (big, _) = unique("tiny-big");
            let mut bo = Options::new();
            bo.capacity(64);
            let r = Sender::<Page>::create(&big, &bo).map(drop);
            assert!(matches!(r, Err(OpenError::NoSpace { .. })), "{r:?}");
            let left = std::path::Path::new("/dev/shm").join(format!("shmbus.{big}"));
            assert!(!left.exists(), "the failed segment was removed");
            expect(&rx, 0..3);
            println!("@@ result NoSpace, nothing left, 3 kept");
        }
        "nofile" => {
            let mut held = Vec::new();
            let err = loop {
                let (name, key) = unique("nofile");
                let (mut o, g) = options("shm", &name, key);
                o.capacity(2);
                match Sender::<Msg>::create(&name, &o) {
                    Ok(tx) => {
                        tx.try_send(Msg {
                            seq: held.len() as u64,
                        })
                        .unwrap();
                        held.push((name, tx, g));
                    }
                    Err(e) => break e,
                }
                assert!(held.len() < 1000, "no limit reached");
            };
            assert!(matches!(err, OpenError::LimitReached { .. }), "{err:?}");
            // Free a few descriptors, then read what the first channels hold.
            let n = held.len();
            held.truncate(n.saturating_sub(8));
            for (i, (name, _tx, _g)) in held.iter().enumerate().take(4) {
                let rx = Receiver::<Msg>::open(name, &Options::new()).unwrap();
                expect(&rx, i as u64..i as u64 + 1);
            }
            println!("@@ result LimitReached after {n} channels: {err}");
        }
        "mq_count" => {
            // SAFETY: geteuid has no preconditions.
            assert_eq!(unsafe { libc::geteuid() }, NOBODY);
            let mut held = Vec::new();
            let err = loop {
                let (name, key) = unique("mqcount");
                let (o, g) = options("posix_mq", &name, key);
                let rx = match Receiver::<Page>::open_or_create(&name, &o) {
                    Ok(rx) => rx,
                    Err(e) => break e,
                };
                let tx = Sender::<Page>::open_or_create(&name, &o).unwrap();
                tx.send(Page {
                    words: [held.len() as u64; 1024],
                })
                .unwrap();
                held.push((tx, rx, g));
                assert!(held.len() < 300, "no limit reached");
            };
            assert!(matches!(err, OpenError::LimitReached { .. }), "{err:?}");
            for (i, (_tx, rx, _g)) in held.iter().enumerate() {
                assert_eq!(rx.recv().unwrap().words[0], i as u64);
            }
            println!("@@ result LimitReached after {} queues: {err}", held.len());
        }
        r => panic!("unknown role {r}"),
    }
}
