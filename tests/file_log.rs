//! The file transport across processes: a writer killed with SIGKILL at a random moment
//! leaves a log whose records are exactly 0..k, intact, with k at least the last sequence
//! number the writer reported as sent; a new writer continues it; readers resume from
//! cursors; `record` and `replay`.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use shmbus::{Durability, FileIo, Options, Receiver, Sender, Start, Transport, TryRecvError};

#[derive(shmbus::Message, Clone, Copy, Debug, PartialEq)]
#[repr(C)]
struct Rec {
    seq: u64,
    check: u64,
    body: [u64; 6],
}

impl Rec {
    fn new(seq: u64) -> Rec {
        let check = seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xFEED;
        Rec {
            seq,
            check,
            body: [seq ^ check; 6],
        }
    }
}

const DIR: &str = "SHMBUS_FILELOG_DIR";
const IO: &str = "SHMBUS_FILELOG_IO";
const START: &str = "SHMBUS_FILELOG_START";

fn options(dir: &std::path::Path, io: FileIo) -> Options {
    let mut o = Options::new();
    o.transport(Transport::File {
        dir: dir.to_owned(),
    })
    .file_io(io)
    .segment_size(64 * 1024);
    o
}

fn io_of(s: &str) -> FileIo {
    if s == "rw" {
        FileIo::ReadWrite
    } else {
        FileIo::Mmap
    }
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        TempDir(std::env::temp_dir().join(format!("shmbus-filelog-{tag}-{}", std::process::id())))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The child: appends records forever, reporting each sequence number after `send`
/// returned.
#[test]
fn file_log_child() {
    let Ok(dir) = std::env::var(DIR) else { return };
    let o = options(dir.as_ref(), io_of(&std::env::var(IO).unwrap()));
    let tx = Sender::<Rec>::open_or_create("log", &o).expect("writer");
    let out = std::io::stdout();
    let mut out = out.lock();
    // Continue after what is there (a restarted writer; the parent counted it).
    let mut next: u64 = std::env::var(START).unwrap().parse().unwrap();
    loop {
        tx.send(Rec::new(next)).expect("send");
        use std::io::Write;
        writeln!(out, "{next}").unwrap();
        out.flush().unwrap();
        next += 1;
    }
}

fn pseudo_random(i: u64) -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64;
    (t ^ i.wrapping_mul(0x9E37_79B9_7F4A_7C15)) % 150
}

/// Starts a writer child, kills it after a random time, returns the last sequence number
/// it reported as sent.
fn write_and_kill(dir: &std::path::Path, io: &str, round: u64, start: u64) -> Option<u64> {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "file_log_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(DIR, dir)
        .env(IO, io)
        .env(START, start.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut last = None;
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Ok(n) = line.trim().parse::<u64>() {
                last = Some(n);
            }
        }
        last
    });
    std::thread::sleep(Duration::from_millis(30 + pseudo_random(round)));
    child.kill().unwrap(); // SIGKILL, at whatever point the writer is
    child.wait().unwrap();
    reader.join().unwrap()
}

#[test]
fn sigkilled_writer_leaves_a_recoverable_log() {
    for io in ["mmap", "rw"] {
        let d = TempDir::new(&format!("kill-{io}"));
        let mut floor = 0u64;
        for round in 0..4 {
            let reported = write_and_kill(&d.0, io, round, floor);
            let o = options(&d.0, io_of(io));
            let rx = Receiver::<Rec>::open_or_create("log", &o).unwrap();
            let mut k = 0u64;
            loop {
                match rx.try_recv() {
                    Ok(r) => {
                        assert_eq!(*r, Rec::new(k), "record {k} damaged or out of order");
                        k += 1;
                    }
                    Err(TryRecvError::Disconnected) | Err(TryRecvError::Empty) => break,
                    Err(e) => panic!("after the kill: {e}"),
                }
            }
            let last = reported.expect("the child reported no send before the kill");
            assert!(
                k > last,
                "{io} round {round}: log has 0..{k}, child reported {last} sent"
            );
            assert!(k >= floor);
            eprintln!("{io} round {round}: {k} records intact, child reported {reported:?}");
            floor = k;
        }
        assert!(floor > 0, "the writer never got to write");
    }
}

#[test]
fn live_reader_in_another_process_cursor_and_replay() {
    let d = TempDir::new("live");
    let mut o = options(&d.0, FileIo::Mmap);
    o.durability(Durability::Batch(64));
    let tx = Sender::<Rec>::open_or_create("log", &o).unwrap();
    // A live reader (started at the end) is woken for new records.
    let mut live = o.clone();
    live.start(Start::End);
    for i in 0..10 {
        tx.send(Rec::new(i)).unwrap();
    }
    let rx = Receiver::<Rec>::open_or_create("log", &live).unwrap();
    let h = std::thread::spawn(move || {
        for i in 10..2010 {
            assert_eq!(*rx.recv().unwrap(), Rec::new(i));
        }
    });
    for i in 10..2010 {
        tx.send(Rec::new(i)).unwrap();
    }
    h.join().unwrap();

    // A named cursor resumes.
    let mut c = o.clone();
    c.cursor("audit");
    {
        let rx = Receiver::<Rec>::open_or_create("log", &c).unwrap();
        for i in 0..5 {
            assert_eq!(rx.recv().unwrap().seq, i);
        }
    }
    let rx = Receiver::<Rec>::open_or_create("log", &c).unwrap();
    assert_eq!(rx.recv().unwrap().seq, 5);

    // Replay into a shared-memory channel.
    let name = format!("filelog-replay-{}", std::process::id());
    let mut shm = Options::new();
    shm.capacity(4096);
    let out = Sender::<Rec>::open_or_create(&name, &shm).unwrap();
    let sink = Receiver::<Rec>::open_or_create(&name, &shm).unwrap();
    let n = shmbus::replay(&d.0, Start::Sequence(2000), &out, shmbus::Pace::Recorded).unwrap();
    assert_eq!(n, 10);
    for i in 2000..2010 {
        assert_eq!(sink.recv().unwrap().seq, i);
    }
    // And record it back into a second log.
    drop(out);
    let d2 = TempDir::new("rec");
    let out = Sender::<Rec>::open_or_create(&name, &shm).unwrap();
    let log2 = Sender::<Rec>::open_or_create("log2", &options(&d2.0, FileIo::ReadWrite)).unwrap();
    for i in 0..3 {
        out.send(Rec::new(i)).unwrap();
    }
    drop(out);
    assert_eq!(shmbus::record(&sink, &log2, None).unwrap(), 3);
}
