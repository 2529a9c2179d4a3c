//! The file transport across processes: writers SIGKILLed at random points, hundreds of
//! times (a killer child forks them cheaply, see `common::fork`), leave a log whose records
//! are exactly those before, every one whose `send` returned, and at most the one in
//! flight, each intact; a new writer continues it; readers resume from cursors; `record`
//! and `replay`. `SHMBUS_FILELOG_KILLS` sets the kills per I/O mode (default 200).

mod common;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::fork::{fork_worker, kill_worker, Board, Rng, Zeroed};
use common::{report, Harness};
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

// ---------------------------------------------------------------------------------------
// A writer SIGKILLed hundreds of times

/// What a writer reports: `acked` = one past the last sequence number whose `send`
/// returned (0: none yet), `opened` = its `open` (the log's recovery) returned.
#[repr(C)]
#[derive(Default)]
struct WriterBoard {
    opened: AtomicU64,
    acked: AtomicU64,
}

// SAFETY: atomics only; all zeroes is a valid value.
unsafe impl Zeroed for WriterBoard {}

/// Kills per I/O mode: `SHMBUS_FILELOG_KILLS`, default 200.
fn kills() -> u64 {
    std::env::var("SHMBUS_FILELOG_KILLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200)
}

#[test]
fn child_main() {
    let Some(role) = common::role() else {
        return;
    };
    assert_eq!(role, "writer_killer");
    kill_writers(
        common::channel().as_ref(),
        io_of(&common::param::<String>("io")),
        common::param("kills"),
    );
    std::process::exit(0);
}

/// The killer (a child of the test, single-threaded): forks a writer that continues the
/// log from the last record, SIGKILLs it after a random delay (from "during open and
/// recovery" to "mid-stream, across segment roll-overs"), and checks with a fresh reader
/// that the log holds exactly the records before, then every record whose `send` returned,
/// at most the one record in flight, and nothing else, each intact.
fn kill_writers(dir: &std::path::Path, io: FileIo, kills: u64) {
    let o = {
        let mut o = options(dir, io);
        o.segment_size(8 * 1024); // ~90 records per segment: many kills land in a roll-over
        o
    };
    let board: Board<WriterBoard> = Board::new();
    let mut rng = Rng::new("file log writer kills");
    let (mut floor, mut during_open, mut in_flight_kept) = (0u64, 0u64, 0u64);
    for round in 0..kills {
        board.reset();
        let (b, o2) = (&board, o.clone());
        let pid = fork_worker(move || {
            let tx = match Sender::<Rec>::open_or_create("log", &o2) {
                Ok(tx) => tx,
                Err(e) => {
                    eprintln!("writer: open: {e}");
                    return 2;
                }
            };
            b.opened.store(1, Ordering::Release);
            for seq in floor.. {
                if let Err(e) = tx.send(Rec::new(seq)) {
                    eprintln!("writer: send {seq}: {e}");
                    return 2;
                }
                b.acked.store(seq + 1, Ordering::Release);
            }
            0
        });
        let delay = if rng.chance(25) {
            rng.below(300)
        } else {
            rng.below(2500)
        };
        std::thread::sleep(Duration::from_micros(delay));
        kill_worker(pid);
        if board.opened.load(Ordering::Acquire) == 0 {
            during_open += 1;
        }
        let acked = board.acked.load(Ordering::Acquire).max(floor);
        // Recover: a new reader (no writer alive) from the first record not checked yet.
        let mut from = o.clone();
        from.start(Start::Sequence(floor));
        let rx = Receiver::<Rec>::open_or_create("log", &from).expect("reader after a kill");
        let mut k = floor;
        loop {
            match rx.try_recv() {
                Ok(r) => {
                    assert_eq!(
                        *r,
                        Rec::new(k),
                        "round {round}: record {k} damaged or out of order"
                    );
                    k += 1;
                }
                Err(TryRecvError::Disconnected) | Err(TryRecvError::Empty) => break,
                Err(e) => panic!("round {round}, after the kill: {e}"),
            }
        }
        drop(rx); // before the next fork: its locks must not be shared with the writer
        assert!(
            k >= acked,
            "round {round}: the log ends at {k}, the writer's send of {} had returned",
            acked - 1
        );
        assert!(
            k <= acked + 1,
            "round {round}: the log ends at {k}, the writer had sent 0..{acked}: invented"
        );
        in_flight_kept += k - acked;
        floor = k;
    }
    // The whole log, once more, from the beginning; then a writer that is not killed
    // continues it.
    let rx = Receiver::<Rec>::open_or_create("log", &o).expect("reader");
    for seq in 0..floor {
        assert_eq!(*rx.try_recv().expect("a checked record"), Rec::new(seq));
    }
    assert!(rx.try_recv().is_err(), "a record past the last one checked");
    drop(rx);
    let tx = Sender::<Rec>::open_or_create("log", &o).expect("writer after the kills");
    tx.send(Rec::new(floor)).unwrap();
    drop(tx);
    let mut from = o.clone();
    from.start(Start::Sequence(floor));
    let rx = Receiver::<Rec>::open_or_create("log", &from).unwrap();
    assert_eq!(*rx.try_recv().unwrap(), Rec::new(floor));
    report(
        "summary",
        format!(
            "{io:?}: {kills} writers SIGKILLed ({during_open} before open returned), {} records \
             checked after each kill and all again at the end; kept though not acknowledged {in_flight_kept}",
            floor + 1
        ),
    );
}

fn sigkilled_writers(io: &str) {
    let d = TempDir::new(&format!("kill-{io}"));
    let h = Harness::new("filelog-kill");
    let mut killer = h.spawn_on(
        d.0.to_str().unwrap(),
        "writer_killer",
        &[("io", &io), ("kills", &kills())],
    );
    let summary = killer.expect("summary");
    killer.wait_success();
    eprintln!("{summary}");
}

/// A writer SIGKILLed at random points, hundreds of times (mmap segments): recovery
/// delivers exactly the records whose send returned (and at most the one in flight).
#[test]
fn sigkilled_writer_leaves_a_recoverable_log_mmap() {
    sigkilled_writers("mmap");
}

/// The same with read/write segments.
#[test]
fn sigkilled_writer_leaves_a_recoverable_log_rw() {
    sigkilled_writers("rw");
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
