//! No heap allocation per message on the shared-memory path: a counting global allocator
//! watches 100 000 zero-copy messages (loaned and copied in, read in place) between a
//! sender thread and a receiver on one channel, after a warm-up. Only allocations inside the
//! measured window count.

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

const WARM_UP: u64 = 10_000;
const MEASURED: u64 = 100_000;

#[test]
fn no_allocation_per_message_in_steady_state() {
    let name = format!("zero-alloc-{}", std::process::id());
    let mut opts = shmbus::Options::new();
    opts.capacity(256);
    let tx = shmbus::Sender::<Tick>::create(&name, &opts).unwrap();
    let rx = shmbus::Receiver::<Tick>::open(&name, &opts).unwrap();
    let go = std::sync::Arc::new(AtomicBool::new(false));
    let sender = {
        let go = go.clone();
        std::thread::spawn(move || {
            let send = |seq: u64| {
                if seq % 2 == 0 {
                    let mut loan = tx.loan().unwrap();
                    loan.seq = seq;
                    loan.data = [seq; 7];
                    loan.send();
                } else {
                    tx.send(Tick {
                        seq,
                        data: [seq; 7],
                    })
                    .unwrap();
                }
            };
            (0..WARM_UP).for_each(send);
            while !go.load(Ordering::Acquire) {
                std::hint::spin_loop();
            }
            (WARM_UP..WARM_UP + MEASURED).for_each(send);
            tx
        })
    };
    let mut sum = 0u64;
    let mut receive = |seq: u64| {
        let m = rx.recv().unwrap();
        assert_eq!(m.seq, seq);
        sum = m.data.iter().fold(sum, |a, &x| a.wrapping_add(x));
    };
    (0..WARM_UP).for_each(&mut receive);
    COUNTING.store(true, Ordering::SeqCst);
    go.store(true, Ordering::Release);
    (WARM_UP..WARM_UP + MEASURED).for_each(&mut receive);
    COUNTING.store(false, Ordering::SeqCst);
    let allocations = ALLOCATIONS.load(Ordering::SeqCst);
    let tx = sender.join().unwrap();
    drop((tx, rx));
    std::hint::black_box(sum);
    assert_eq!(
        allocations, 0,
        "{allocations} heap allocations while {MEASURED} messages went through shared memory"
    );
}
