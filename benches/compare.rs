//! The cross-process comparison: shmbus and raw baselines, side by side, in one run.
//!
//! ```text
//! cargo bench --bench compare              # the whole table (one to two minutes)
//! cargo bench --bench compare -- --quick   # fewer iterations
//! cargo bench --bench compare -- --only "stream 64 B,round trip 64 B: shmbus"
//! ```
//!
//! Rows: the raw baselines, shmbus on shared memory (busy-poll and default, 8 × 8 and
//! 1 × 1), shmbus over every other transport against its raw mechanism, and every wake
//! strategy (with and without its spin phase) against the bare futex ring. A ratio only
//! divides figures taken in the same placement: a baseline measured in the other one is
//! measured again.
//!
//! Every scenario runs between two processes: this one, pinned to CPU 0, and a copy of it
//! started with `--child ...`, pinned to CPU 1. Before each row, a spin-flag round trip
//! probes the placement of the two vCPUs (the host moves them between a fast and a slow
//! placement) and the row records it. Round trips: the message carries a sequence number
//! that the other side checks and echoes (copying transports move the whole message;
//! shmbus and the shared-memory rings write it in place). Streams: the child writes every
//! payload word, the parent reads every byte (sums them); the rate is the median of three
//! batches. Each shmbus row is divided by its raw counterpart from the same run.

mod bus;
mod harness;
mod raw;

use std::collections::HashMap;
use std::rc::Rc;

use bus::{Big, Bus, Page, Small};
use harness::{Counts, Figure, Link, Mode, Row, Spec};

/// How many iterations a transport class gets.
#[derive(Clone, Copy)]
enum Class {
    /// Busy-polling: cheap iterations.
    Spin,
    /// A system call (or more) per message.
    Syscall,
}

/// How to measure a row again.
type Run = Rc<dyn Fn() -> Figure>;

struct Bench {
    quick: bool,
    /// `--only A,B`: run only the rows whose "scenario: transport" contains one of these.
    only: Vec<String>,
    rows: Vec<Row>,
    /// Every row measured so far, by (scenario, transport), to measure a baseline again.
    runs: HashMap<(String, String), Run>,
}

const SIZES: [(usize, &str); 3] = [(64, "64 B"), (4096, "4 KiB"), (1 << 20, "1 MiB")];

impl Bench {
    fn counts(&self, mode: Mode, size: usize, class: Class) -> Counts {
        let (n, extra) = match (mode, size >= 1 << 20, class) {
            (Mode::RoundTrip, true, _) => (2_000, 200),
            (Mode::RoundTrip, false, Class::Spin) => (100_000, 10_000),
            (Mode::RoundTrip, false, Class::Syscall) => (10_000, 1_000),
            (Mode::Stream, true, _) => (300, 3),
            (Mode::Stream, false, Class::Spin) => (2_000_000, 3),
            (Mode::Stream, false, Class::Syscall) => (100_000, 3),
        };
        let n = if self.quick { n / 5 } else { n };
        Counts { n, extra }
    }

    /// Measures a row (after a placement probe) and prints it. `baseline` is what its ratio
    /// is taken to; `also` names other rows of the scenario that the targets compare it
    /// with. Each of those that has no figure in the placement of this row is measured
    /// again now (up to twice: the placement may move again), so that ratios only ever
    /// divide figures of the same placement.
    fn record(
        &mut self,
        scenario: &str,
        transport: &str,
        (baseline, also): (Option<&str>, &[&str]),
        f: Run,
        note: &str,
    ) {
        let id = format!("{scenario}: {transport}");
        if !self.only.is_empty() && !self.only.iter().any(|o| id.contains(o.as_str())) {
            return;
        }
        let placement_ns = raw::probe();
        let figure = f();
        let row = Row {
            scenario: scenario.to_string(),
            transport: transport.to_string(),
            placement_ns,
            figure,
            baseline: baseline.map(str::to_string),
            note: note.to_string(),
        };
        for base in baseline.iter().chain(also) {
            let key = (scenario.to_string(), base.to_string());
            let Some(run) = self.runs.get(&key).cloned() else {
                continue;
            };
            for _ in 0..2 {
                if harness::same_placement(&self.rows, &row, base).is_some() {
                    break;
                }
                let again = Row {
                    scenario: scenario.to_string(),
                    transport: base.to_string(),
                    placement_ns: raw::probe(),
                    figure: run(),
                    baseline: None,
                    note: "measured again: the placement changed".to_string(),
                };
                harness::print_row(&self.rows, &again);
                self.rows.push(again);
            }
        }
        harness::print_row(&self.rows, &row);
        self.rows.push(row);
        self.runs
            .insert((scenario.to_string(), transport.to_string()), f);
    }

    #[allow(clippy::too_many_arguments)]
    fn link<L: Link + 'static>(
        &mut self,
        scenario: &str,
        (transport, kind): (&str, &str),
        mode: Mode,
        spec: Spec,
        class: Class,
        baseline: Option<&str>,
    ) {
        self.link_also::<L>(
            scenario,
            (transport, kind),
            mode,
            spec,
            class,
            (baseline, &[]),
        );
    }

    fn link_also<L: Link + 'static>(
        &mut self,
        scenario: &str,
        (transport, kind): (&str, &str),
        mode: Mode,
        spec: Spec,
        class: Class,
        baselines: (Option<&str>, &[&str]),
    ) {
        let counts = self.counts(mode, spec.size, class);
        let kind = kind.to_string();
        self.record(
            scenario,
            transport,
            baselines,
            Rc::new(move || harness::run_link::<L>(&kind, mode, &spec, counts)),
            "",
        );
    }

    fn bus(&mut self, scenario: &str, mode: Mode, size: usize, capacity: usize) {
        for (variant, transport, baseline) in [
            ("busy", "shmbus busy-poll", "seq ring spin"),
            ("busy-1x1", "shmbus busy-poll 1×1", "seq ring spin"),
            ("default", "shmbus default", "seq ring futex"),
            ("default-1x1", "shmbus default 1×1", "seq ring futex"),
        ] {
            let spec = Spec {
                size,
                capacity,
                variant: variant.to_string(),
            };
            // The targets also divide by the spinning ring and by the spin flag.
            let also: &[&str] = if scenario == "round trip 64 B" {
                &["seq ring spin", "spin flag"]
            } else {
                &["seq ring spin"]
            };
            let b = (Some(baseline), also);
            let kind = (transport, "bus");
            match size {
                64 => self.link_also::<Bus<Small>>(scenario, kind, mode, spec, Class::Spin, b),
                4096 => self.link_also::<Bus<Page>>(scenario, kind, mode, spec, Class::Spin, b),
                _ => self.link_also::<Bus<Big>>(scenario, kind, mode, spec, Class::Spin, b),
            }
        }
    }

    /// shmbus over every transport but shared memory, each against its raw mechanism.
    fn transports(&mut self, scenario: &str, mode: Mode, size: usize, capacity: usize) {
        for (t, transport, baseline) in [
            ("pipe", "shmbus pipe", "pipe"),
            ("fifo", "shmbus fifo", "pipe"),
            ("unix", "shmbus unix socket", "unix socket"),
            ("abstract", "shmbus abstract socket", "unix socket"),
            ("posix_mq", "shmbus posix mq", "posix mq"),
            ("sysv_mq", "shmbus sysv mq", "sysv msg"),
        ] {
            let spec = Spec {
                size,
                capacity,
                variant: format!("t={t}"),
            };
            let b = Some(baseline);
            let kind = (transport, "bus");
            match size {
                64 => self.link::<Bus<Small>>(scenario, kind, mode, spec, Class::Syscall, b),
                _ => self.link::<Bus<Page>>(scenario, kind, mode, spec, Class::Syscall, b),
            }
        }
    }

    /// The ring in System V shared memory, and every wake strategy (with its spin phase,
    /// and with none: every wait then sleeps), against the bare rings.
    fn wakes(&mut self, scenario: &str, mode: Mode) {
        let (size, capacity) = (64, if mode == Mode::Stream { 1024 } else { 16 });
        let mut variants = vec![
            (
                "t=sysv_shm+busy".to_string(),
                "shmbus sysv shm busy-poll".to_string(),
                "seq ring spin",
                Class::Spin,
            ),
            (
                "t=sysv_shm".to_string(),
                "shmbus sysv shm default".to_string(),
                "seq ring futex",
                Class::Spin,
            ),
        ];
        for w in [
            "spin",
            "futex",
            "posix_sem",
            "sysv_sem",
            "signal",
            "unix_socket",
            "eventfd",
        ] {
            variants.push((
                format!("wake={w}"),
                format!("shmbus wake {w}"),
                "seq ring futex",
                Class::Spin,
            ));
            if mode == Mode::RoundTrip && w != "spin" {
                variants.push((
                    format!("wake={w}+nospin"),
                    format!("shmbus wake {w} no spin"),
                    "seq ring futex",
                    Class::Syscall,
                ));
            }
        }
        for (variant, transport, baseline, class) in variants {
            let spec = Spec {
                size,
                capacity,
                variant,
            };
            self.link::<Bus<Small>>(
                scenario,
                (&transport, "bus"),
                mode,
                spec,
                class,
                Some(baseline),
            );
        }
    }

    fn raw(&mut self, scenario: &str, mode: Mode, size: usize, capacity: usize) {
        let spec = |variant: &str| Spec {
            size,
            capacity,
            variant: variant.to_string(),
        };
        if mode == Mode::RoundTrip && size == 64 {
            let counts = self.counts(mode, size, Class::Spin);
            self.record(
                scenario,
                "spin flag",
                (None, &[]),
                Rc::new(move || raw::spin_flag(counts)),
                "one shared word, no payload",
            );
        }
        self.link::<raw::SeqRing<false>>(
            scenario,
            ("seq ring spin", "seq-spin"),
            mode,
            spec(""),
            Class::Spin,
            None,
        );
        self.link::<raw::SeqRing<true>>(
            scenario,
            ("seq ring futex", "seq-futex"),
            mode,
            spec(""),
            Class::Syscall,
            None,
        );
        self.link::<raw::HeadTail>(
            scenario,
            ("head/tail ring spin", "headtail"),
            mode,
            spec(""),
            Class::Spin,
            Some("seq ring spin"),
        );
        self.link::<raw::Stream<false>>(
            scenario,
            ("pipe", "pipe"),
            mode,
            spec(""),
            Class::Syscall,
            None,
        );
        self.link::<raw::Stream<true>>(
            scenario,
            ("unix socket", "unix"),
            mode,
            spec(""),
            Class::Syscall,
            None,
        );
        if size <= 8192 {
            self.link::<raw::PosixMq>(
                scenario,
                ("posix mq", "mq"),
                mode,
                spec(""),
                Class::Syscall,
                None,
            );
            self.link::<raw::SysV>(
                scenario,
                ("sysv msg", "sysv"),
                mode,
                spec(""),
                Class::Syscall,
                None,
            );
        } else {
            for t in ["posix mq", "sysv msg"] {
                self.record(
                    scenario,
                    t,
                    (None, &[]),
                    Rc::new(|| Figure::None),
                    "over the 8 KiB message limit",
                );
            }
        }
    }
}

fn main() {
    if let Some(args) = harness::child_args() {
        let (kind, rest) = (&args[0], &args[1..]);
        if !raw::child(kind, rest) {
            assert_eq!(kind, "bus", "unknown child role");
            bus::child(rest);
        }
        return;
    }
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .map(|s| s.split(',').map(str::to_string).collect())
        .unwrap_or_default();
    let mut b = Bench {
        quick,
        only,
        runs: HashMap::new(),
        rows: Vec::new(),
    };
    println!(
        "shmbus cross-process comparison{}: parent on CPU 0, child on CPU 1; placement = median spin-flag round trip just before the row (fast < 300 ns)",
        if quick { " (--quick)" } else { "" }
    );
    println!();
    harness::print_header();
    for (size, label) in SIZES {
        let scenario = format!("round trip {label}");
        let capacity = if size >= 1 << 20 { 4 } else { 16 };
        b.raw(&scenario, Mode::RoundTrip, size, capacity);
        b.bus(&scenario, Mode::RoundTrip, size, capacity);
        if size <= 4096 {
            b.transports(&scenario, Mode::RoundTrip, size, capacity);
        }
        if size == 64 {
            b.wakes(&scenario, Mode::RoundTrip);
        }
    }
    for (size, label, capacity) in [(64, "64 B", 1024), (1 << 20, "1 MiB", 8)] {
        let scenario = format!("stream {label}");
        b.raw(&scenario, Mode::Stream, size, capacity);
        b.bus(&scenario, Mode::Stream, size, capacity);
        if size == 64 {
            b.transports(&scenario, Mode::Stream, size, capacity);
            b.wakes(&scenario, Mode::Stream);
        }
    }
    println!();
    println!("Targets (medians, this run):");
    let rows = &b.rows;
    harness::target(
        rows,
        "stream 64 B",
        "shmbus default",
        "seq ring spin",
        ">=",
        0.5,
    );
    harness::target(
        rows,
        "stream 64 B",
        "shmbus busy-poll",
        "seq ring spin",
        ">=",
        0.5,
    );
    harness::target(
        rows,
        "stream 64 B",
        "shmbus busy-poll 1×1",
        "seq ring spin",
        ">=",
        0.5,
    );
    harness::target(
        rows,
        "round trip 64 B",
        "shmbus busy-poll",
        "spin flag",
        "<=",
        1.3,
    );
    harness::target(
        rows,
        "round trip 64 B",
        "shmbus busy-poll 1×1",
        "spin flag",
        "<=",
        1.3,
    );
    harness::target(
        rows,
        "stream 64 B",
        "shmbus default",
        "seq ring futex",
        ">=",
        3.0,
    );
    harness::target(
        rows,
        "round trip 64 B",
        "shmbus default",
        "seq ring futex",
        "<=",
        1.1,
    );
    harness::target(
        rows,
        "stream 1 MiB",
        "shmbus busy-poll",
        "seq ring spin",
        ">=",
        0.8,
    );
    harness::target(
        rows,
        "stream 1 MiB",
        "shmbus default",
        "seq ring spin",
        ">=",
        0.8,
    );
    for (transport, raw) in [
        ("shmbus pipe", "pipe"),
        ("shmbus fifo", "pipe"),
        ("shmbus unix socket", "unix socket"),
        ("shmbus abstract socket", "unix socket"),
        ("shmbus posix mq", "posix mq"),
        ("shmbus sysv mq", "sysv msg"),
    ] {
        for scenario in ["round trip 64 B", "round trip 4 KiB"] {
            harness::target(rows, scenario, transport, raw, "<=", 1.15);
        }
        harness::target(rows, "stream 64 B", transport, raw, ">=", 0.85);
    }
    for w in ["posix_sem", "sysv_sem", "signal", "unix_socket", "eventfd"] {
        let who = format!("shmbus wake {w}");
        harness::target(rows, "stream 64 B", &who, "seq ring futex", ">=", 3.0);
        harness::target(rows, "round trip 64 B", &who, "seq ring futex", "<=", 1.1);
        let who = format!("shmbus wake {w} no spin");
        harness::target(rows, "round trip 64 B", &who, "seq ring futex", "<=", 1.1);
    }
    harness::target(
        rows,
        "round trip 64 B",
        "shmbus wake futex no spin",
        "seq ring futex",
        "<=",
        1.1,
    );
    println!("(iceoryx2 targets: `cargo run --release --manifest-path peers/Cargo.toml`)");
}
