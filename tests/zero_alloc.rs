//! No heap allocation per message in steady state: a counting global allocator watches
//! 100 000 messages between a sender thread and a receiver, after a warm-up: zero-copy
//! messages on shared memory (loaned and copied in, read in place), a small serialized
//! message on shared memory (decoded into the sample), and small messages over a pipe and
//! a Unix socket (received into the sample). Only allocations inside the measured window
//! count.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator; the counter is a
// side effect that never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: the caller's obligations are those of `System.alloc`.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: the caller's obligations are those of `System.realloc`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[derive(shmbus::Message, Clone, Copy, Debug, PartialEq)]
#[repr(C)]
struct Tick {
    seq: u64,
    data: [u64; 7],
}

/// A serialized (postcard) message with no heap fields: decoded into the sample itself.
#[derive(shmbus::Message, serde::Serialize, serde::Deserialize, Clone, Debug, PartialEq)]
#[shmbus(serde)]
enum Event {
    Tick { seq: u64, level: f32 },
    Stop,
}

const WARM_UP: u64 = 10_000;
const MEASURED: u64 = 100_000;

/// Sends `WARM_UP + MEASURED` messages from a thread (`send(tx, seq)`), receives them here
/// (`seq_of` reads a message's sequence number back) and returns the heap allocations made
/// by both while the last `MEASURED` went through.
fn allocations_per_run<T: shmbus::Message + Send + 'static>(
    tx: shmbus::Sender<T>,
    rx: shmbus::Receiver<T>,
    send: fn(&shmbus::Sender<T>, u64),
    seq_of: fn(&T) -> u64,
) -> u64 {
    let go = std::sync::Arc::new(AtomicBool::new(false));
    let sender = {
        let go = go.clone();
        std::thread::spawn(move || {
            (0..WARM_UP).for_each(|seq| send(&tx, seq));
            while !go.load(Ordering::Acquire) {
                std::hint::spin_loop();
            }
            (WARM_UP..WARM_UP + MEASURED).for_each(|seq| send(&tx, seq));
            tx
        })
    };
    let receive = |seq: u64| {
        let m = rx.recv().unwrap();
        assert_eq!(seq_of(&m), seq);
        std::hint::black_box(&*m);
    };
    (0..WARM_UP).for_each(receive);
    ALLOCATIONS.store(0, Ordering::SeqCst);
    COUNTING.store(true, Ordering::SeqCst);
    go.store(true, Ordering::Release);
    (WARM_UP..WARM_UP + MEASURED).for_each(receive);
    COUNTING.store(false, Ordering::SeqCst);
    let allocations = ALLOCATIONS.load(Ordering::SeqCst);
    let tx = sender.join().unwrap();
    drop((tx, rx));
    allocations
}

fn tick(seq: u64) -> Tick {
    Tick {
        seq,
        data: [seq; 7],
    }
}

/// Every other message loaned and written in place, the others copied in.
fn send_tick_loan_or_copy(tx: &shmbus::Sender<Tick>, seq: u64) {
    if seq % 2 == 0 {
        let mut loan = tx.loan().unwrap();
        loan.seq = seq;
        loan.data = [seq; 7];
        loan.send();
    } else {
        tx.send(tick(seq)).unwrap();
    }
}

fn send_tick(tx: &shmbus::Sender<Tick>, seq: u64) {
    tx.send(tick(seq)).unwrap();
}

/// The counting allocator is global: one test at a time measures.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A shared-memory channel of 256 slots named after `test` and this process.
fn shm_channel<T: shmbus::Message>(test: &str) -> (shmbus::Sender<T>, shmbus::Receiver<T>) {
    let name = format!("{test}-{}", std::process::id());
    let mut opts = shmbus::Options::new();
    opts.capacity(256);
    let tx = shmbus::Sender::<T>::create(&name, &opts).unwrap();
    let rx = shmbus::Receiver::<T>::open(&name, &opts).unwrap();
    (tx, rx)
}

fn check(what: &str, allocations: u64) {
    assert_eq!(
        allocations, 0,
        "{allocations} heap allocations while {MEASURED} messages went through {what}"
    );
}

#[test]
fn no_allocation_per_message_in_steady_state() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (tx, rx) = shm_channel::<Tick>("zero-alloc");
    let n = allocations_per_run(tx, rx, send_tick_loan_or_copy, |m| m.seq);
    check("shared memory", n);
}

/// A small serialized message is encoded into the slot and decoded into the sample: no
/// allocation either.
#[test]
fn no_allocation_per_small_serialized_message() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (tx, rx) = shm_channel::<Event>("zero-alloc-serde");
    let n = allocations_per_run(
        tx,
        rx,
        |tx, seq| {
            tx.send(Event::Tick { seq, level: 0.5 }).unwrap();
        },
        |m| match m {
            Event::Tick { seq, .. } => *seq,
            Event::Stop => u64::MAX,
        },
    );
    check("shared memory (serialized)", n);
}

/// The copying transports: a small message is received into the sample itself (a buffer
/// reused by every receive holds the frame), so no allocation per message either.
#[test]
fn no_allocation_per_small_message_over_a_pipe_and_a_socket() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (tx, rx) = shmbus::pipe::<Tick>().unwrap();
    check("a pipe", allocations_per_run(tx, rx, send_tick, |m| m.seq));

    let dir = std::env::temp_dir().join(format!("shmbus-zero-alloc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut opts = shmbus::Options::new();
    opts.transport(shmbus::Transport::UnixSocket {
        path: dir.join("sock"),
    });
    let name = format!("zero-alloc-sock-{}", std::process::id());
    let rx = shmbus::Receiver::<Tick>::create(&name, &opts).unwrap();
    let tx = shmbus::Sender::<Tick>::open(&name, &opts).unwrap();
    let n = allocations_per_run(tx, rx, send_tick, |m| m.seq);
    std::fs::remove_dir_all(&dir).unwrap();
    check("a Unix socket", n);
}
