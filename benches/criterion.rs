//! The cross-process scenarios of `benches/compare.rs` under criterion: statistics over
//! samples, change detection against the previous run, and an HTML report with plots.
//!
//! ```text
//! cargo bench --bench criterion                        # everything (two to four minutes)
//! cargo bench --bench criterion -- "round trip/64 B"   # the benchmarks whose id contains it
//! cargo bench --bench criterion -- --test              # each benchmark once, as a check
//! cargo bench --bench criterion -- --list              # the benchmark ids
//! cargo bench --bench criterion -- --save-baseline before   # later: -- --baseline before
//! ```
//!
//! The report is written to `target/criterion/report/index.html` (under `$CARGO_TARGET_DIR`
//! where that is set): one page per group with a violin plot of its functions, one per
//! benchmark with its distribution, regression and, from the second run on, the change
//! against the previous run (printed too). Each benchmark takes 20 samples over 2 s after a
//! 1 s warm-up, and the analysis uses 10 000 bootstrap resamples: defaults that criterion's
//! options override (`--sample-size`, `--warm-up-time`, `--measurement-time`,
//! `--nresamples`).
//! `benches/compare.rs` remains the side-by-side table with placement probes and ratios.
//!
//! Groups: `round trip/64 B`, `round trip/4 KiB`, `round trip/1 MiB` (time per round trip),
//! `stream/64 B` (messages per second) and `stream/1 MiB` (bytes per second, the receiver
//! reading every byte). Functions: the raw baselines of `benches/raw/` (the spin flag, which
//! carries no payload, in `round trip/64 B` only; the per-slot sequence ring spinning and on
//! a futex; for 64 B and 4 KiB a pipe and a Unix socket pair) and shmbus (`benches/bus/`)
//! busy-polling 1 × 1, with its defaults (8 × 8), and for 64 B and 4 KiB over a pipe and a
//! Unix socket.
//!
//! Every benchmark runs between two processes: this one, pinned to CPU 0, and one child,
//! this executable started again with `--child ...` (before criterion reads the command
//! line), pinned to CPU 1. The child is started when the benchmark first runs and serves
//! every sample criterion takes, then it is told to stop, reaped, and the link is dropped
//! (every name it created is removed). Round trips: the parent sends a sequence number, the
//! child checks it and echoes it; a sample is `iters` round trips. As in `compare`, the
//! shared-memory rings and shmbus write the sequence word in place (a 1 MiB round trip there
//! does not touch the rest of the payload), the copying transports move the whole message.
//! Streams: the parent asks the child (over the link's other direction) for `iters + 1`
//! messages, the child writes
//! every payload word of each, and the parent reads every byte (sums the words) and checks
//! the sequence; the clock starts at the first message (the request and the start of the
//! child's loop are not measured), so a sample is the time of the next `iters` messages.
//! The child only sends what was asked for, so no end ever waits for something that does
//! not come, and the stop request leaves nothing in flight.

mod bus;
mod harness;
mod raw;

use std::process::Child;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bus::{Big, Bus, Page, Small};
use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, Throughput};
use harness::{Link, Mode, Shm, Spec};

/// Asks the child to exit (a round trip's sequence number, a stream's request, or the spin
/// flag's value never reaches it).
const STOP: u64 = u64::MAX;

/// Parent side of one benchmark's child and the link to it.
struct Peer<L: Link> {
    link: L,
    /// `None` once reaped.
    child: Option<Child>,
    /// Next sequence number (round trips: sent; streams: expected).
    next: u64,
    what: String,
}

impl<L: Link> Peer<L> {
    /// Creates the link and starts the child (`kind` selects its link type there).
    fn start(kind: &str, mode: Mode, spec: &Spec) -> Self {
        let (link, child) = harness::start_child::<L>(kind, mode, spec, &[]);
        Peer {
            link,
            child: Some(child),
            next: 0,
            what: format!("{kind} {} {}", spec.size, spec.variant),
        }
    }

    /// `iters` round trips.
    fn round_trips(&mut self, iters: u64) -> Duration {
        let t0 = Instant::now();
        for _ in 0..iters {
            let i = self.next;
            self.link.send(|w| w[0] = i);
            let mut got = STOP;
            self.link.recv(|w| got = w[0]);
            assert_eq!(got, i, "pong sequence");
            self.next += 1;
        }
        t0.elapsed()
    }

    /// Receives one streamed message, sums its words and checks its sequence number.
    #[inline]
    fn take(&mut self, total: &mut u64) {
        let mut first = STOP;
        self.link.recv(|w| {
            first = w[0];
            *total = total.wrapping_add(harness::sum_words(w));
        });
        assert_eq!(first, self.next, "stream sequence");
        self.next += 1;
    }

    /// Asks for `iters + 1` messages and times the last `iters`.
    fn stream(&mut self, iters: u64) -> Duration {
        let mut total = 0u64;
        self.link.send(|w| w[0] = iters + 1);
        self.take(&mut total);
        let t0 = Instant::now();
        for _ in 0..iters {
            self.take(&mut total);
        }
        let dt = t0.elapsed();
        std::hint::black_box(total);
        dt
    }

    /// Stops and reaps the child, then drops the link.
    fn finish(mut self) {
        self.link.send(|w| w[0] = STOP);
        let child = self.child.take().expect("the child runs");
        harness::reap(child, &self.what);
    }
}

impl<L: Link> Drop for Peer<L> {
    /// On a panic before `finish`: no child is left behind.
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The child's side of a [`Peer`]: `args` are the arguments after the kind.
fn serve<L: Link>(args: &[String]) {
    harness::pin(1);
    let mode = args[0].as_str();
    let spec = Spec {
        size: args[1].parse().expect("size"),
        capacity: args[2].parse().expect("capacity"),
        variant: args[3].clone(),
    };
    let mut link = L::attach(&spec, &args[4..]);
    let mut next = 0u64;
    loop {
        let mut got = STOP;
        link.recv(|w| got = w[0]);
        if got == STOP {
            return;
        }
        if mode == "RoundTrip" {
            assert_eq!(got, next, "ping sequence");
            link.send(|w| w[0] = got);
            next += 1;
        } else {
            for _ in 0..got {
                link.send(|w| w.fill(next));
                next += 1;
            }
        }
    }
}

/// The raw spin flag (one shared word, no payload): the parent writes `2i + 1`, the child
/// answers `2i + 2`; `STOP` ends the child.
struct SpinFlag {
    shm: Shm,
    child: Option<Child>,
    next: u64,
}

impl SpinFlag {
    fn start() -> Self {
        let shm = Shm::create(4096);
        harness::pin(0);
        let child = harness::spawn_child(&["flag".into(), shm.fd.to_string()]);
        SpinFlag {
            shm,
            child: Some(child),
            next: 0,
        }
    }

    fn flag(shm: &Shm) -> &AtomicU64 {
        // SAFETY: the mapping is page-aligned, 4096 bytes, lives as long as `shm`, and its
        // first word is only accessed atomically.
        unsafe { &*(shm.ptr as *const AtomicU64) }
    }

    fn round_trips(&mut self, iters: u64) -> Duration {
        let flag = Self::flag(&self.shm);
        let t0 = Instant::now();
        for _ in 0..iters {
            let i = self.next;
            flag.store(2 * i + 1, Ordering::Release);
            while flag.load(Ordering::Acquire) != 2 * i + 2 {
                std::hint::spin_loop();
            }
            self.next += 1;
        }
        t0.elapsed()
    }

    fn finish(mut self) {
        Self::flag(&self.shm).store(STOP, Ordering::Release);
        harness::reap(self.child.take().expect("the child runs"), "spin flag");
    }

    fn child(args: &[String]) {
        harness::pin(1);
        let shm = Shm::attach(args[0].parse().expect("fd"), 4096);
        let flag = Self::flag(&shm);
        let mut want = 1u64;
        loop {
            let v = flag.load(Ordering::Acquire);
            if v == want {
                flag.store(v + 1, Ordering::Release);
                want += 2;
            } else if v == STOP {
                return;
            } else {
                std::hint::spin_loop();
            }
        }
    }
}

impl Drop for SpinFlag {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Adds one benchmark of `L` to `group`. The child is started the first time criterion runs
/// it (not at all when the filter leaves it out) and serves every sample.
fn bench<L: Link>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    kind: &str,
    mode: Mode,
    spec: Spec,
) {
    let mut peer: Option<Peer<L>> = None;
    group.bench_function(name, |b| {
        let p = peer.get_or_insert_with(|| Peer::start(kind, mode, &spec));
        match mode {
            Mode::RoundTrip => b.iter_custom(|iters| p.round_trips(iters)),
            Mode::Stream => b.iter_custom(|iters| p.stream(iters)),
        }
    });
    if let Some(p) = peer {
        p.finish();
    }
}

/// shmbus with the message type of `size`.
fn bench_bus(group: &mut BenchmarkGroup<'_, WallTime>, name: &str, mode: Mode, spec: Spec) {
    match spec.size {
        64 => bench::<Bus<Small>>(group, name, "bus", mode, spec),
        4096 => bench::<Bus<Page>>(group, name, "bus", mode, spec),
        _ => bench::<Bus<Big>>(group, name, "bus", mode, spec),
    }
}

/// Every function of one group.
fn scenario(c: &mut Criterion, mode: Mode, size: usize, label: &str, capacity: usize) {
    let group_name = match mode {
        Mode::RoundTrip => format!("round trip/{label}"),
        Mode::Stream => format!("stream/{label}"),
    };
    let mut g = c.benchmark_group(group_name);
    if mode == Mode::Stream {
        g.throughput(if size >= 1 << 20 {
            Throughput::Bytes(size as u64)
        } else {
            Throughput::Elements(1)
        });
    }
    let spec = |variant: &str| Spec {
        size,
        capacity,
        variant: variant.to_string(),
    };
    if mode == Mode::RoundTrip && size == 64 {
        let mut flag: Option<SpinFlag> = None;
        g.bench_function("raw spin flag", |b| {
            let f = flag.get_or_insert_with(SpinFlag::start);
            b.iter_custom(|iters| f.round_trips(iters));
        });
        if let Some(f) = flag {
            f.finish();
        }
    }
    bench::<raw::SeqRing<false>>(&mut g, "raw seq ring spin", "seq-spin", mode, spec(""));
    bench::<raw::SeqRing<true>>(&mut g, "raw futex ring", "seq-futex", mode, spec(""));
    bench_bus(&mut g, "shmbus busy-poll 1x1", mode, spec("busy-1x1"));
    bench_bus(&mut g, "shmbus default", mode, spec("default"));
    if size <= 4096 {
        bench::<raw::Stream<false>>(&mut g, "raw pipe", "pipe", mode, spec(""));
        bench_bus(&mut g, "shmbus pipe", mode, spec("t=pipe"));
        bench::<raw::Stream<true>>(&mut g, "raw unix socket", "unix", mode, spec(""));
        bench_bus(&mut g, "shmbus unix socket", mode, spec("t=unix"));
    }
    g.finish();
}

/// The child's entry: the kind picks the link type.
fn child(args: &[String]) {
    let (kind, rest) = (args[0].as_str(), &args[1..]);
    match kind {
        "flag" => SpinFlag::child(rest),
        "seq-spin" => serve::<raw::SeqRing<false>>(rest),
        "seq-futex" => serve::<raw::SeqRing<true>>(rest),
        "pipe" => serve::<raw::Stream<false>>(rest),
        "unix" => serve::<raw::Stream<true>>(rest),
        "bus" => match rest[1].as_str() {
            "64" => serve::<Bus<Small>>(rest),
            "4096" => serve::<Bus<Page>>(rest),
            _ => serve::<Bus<Big>>(rest),
        },
        other => panic!("unknown child kind {other:?}"),
    }
}

fn main() {
    if let Some(args) = harness::child_args() {
        child(&args);
        return;
    }
    // Defaults that the command line can override. 20 samples over 2 s after a 1 s warm-up
    // keep the whole run within a few minutes; 10 000 bootstrap resamples instead of
    // 100 000 are plenty for 20 samples, and the analysis and plots of a benchmark then take
    // about a second instead of four.
    let mut c = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2))
        .nresamples(10_000)
        .configure_from_args();
    for (size, label) in [(64, "64 B"), (4096, "4 KiB"), (1 << 20, "1 MiB")] {
        let capacity = if size >= 1 << 20 { 4 } else { 16 };
        scenario(&mut c, Mode::RoundTrip, size, label, capacity);
    }
    scenario(&mut c, Mode::Stream, 64, "64 B", 1024);
    scenario(&mut c, Mode::Stream, 1 << 20, "1 MiB", 8);
    c.final_summary();
}
