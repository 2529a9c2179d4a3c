//! Per-message cost in one process, for instruction counting (callgrind) and sampling
//! profilers: both ends of one direction of a [`Link`] live in this process, and the loop
//! sends a half ring of messages, then receives them (the receiver sums every word), so no
//! end ever waits. The same loop runs shmbus and the raw per-slot sequence ring.
//!
//! ```text
//! cargo bench --bench cost --no-run
//! valgrind --tool=callgrind target/release/deps/cost-* KIND SIZE MESSAGES
//! ```
//!
//! `KIND`: `seq-spin` (the raw per-slot sequence ring), `busy`, `busy-1x1`, `default`,
//! `default-1x1` (shmbus variants). Instructions per message: run two message counts and
//! divide the difference of the totals by the difference of the counts (start-up cancels).

mod bus;
mod harness;
mod raw;

use bus::{Big, Bus, Small};
use harness::{Link, Spec};

fn run<L: Link>(spec: &Spec, messages: u64) {
    let (mut a, args) = L::create(spec);
    let mut b = L::attach(spec, &args);
    a.connected();
    let half = (spec.capacity / 2) as u64;
    let mut sum = 0u64;
    let mut sent = 0u64;
    while sent < messages {
        for i in 0..half {
            a.send(|w| w.fill(sent + i));
        }
        for _ in 0..half {
            b.recv(|w| sum = sum.wrapping_add(harness::sum_words(w)));
        }
        sent += half;
    }
    std::hint::black_box(sum);
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let kind = args.get(1).map_or("busy", String::as_str);
    let size: usize = args.get(2).map_or(64, |s| s.parse().expect("SIZE"));
    let messages: u64 = args
        .get(3)
        .map_or(1_000_000, |s| s.parse().expect("MESSAGES"));
    let spec = Spec {
        size,
        capacity: if size >= 1 << 20 { 8 } else { 1024 },
        variant: kind.to_string(),
    };
    match (kind, size) {
        ("seq-spin", _) => run::<raw::SeqRing<false>>(&spec, messages),
        (_, 64) => run::<Bus<Small>>(&spec, messages),
        (_, s) if s == 1 << 20 => run::<Bus<Big>>(&spec, messages),
        _ => panic!("SIZE is 64 or 1048576"),
    }
}
