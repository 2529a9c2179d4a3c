//! Support shared by the benchmark binaries (`benches/compare.rs` and `peers/`): CPU
//! pinning, child processes, a memfd-backed shared mapping, futex calls, the generic
//! round-trip and stream loops, and the table printer. Written against libc and std only.
#![allow(dead_code)]

use std::process::{Child, Command, Stdio};
use std::sync::atomic::AtomicU32;
use std::time::Instant;

/// Pins the calling thread to `cpu` if this machine has it; returns whether it did.
pub fn pin(cpu: usize) -> bool {
    // Not `available_parallelism`: that reads this thread's affinity, which a child inherits
    // from its pinned parent.
    // SAFETY: sysconf has no preconditions.
    let ncpu = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(1) as usize;
    if cpu >= ncpu {
        return false;
    }
    // SAFETY: `set` is a plain bit set initialised by CPU_ZERO; sched_setaffinity only reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_ZERO(&mut set);
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    }
}

/// Starts this executable again as `--child ARGS...`; the child pins itself to CPU 1.
pub fn spawn_child(args: &[String]) -> Child {
    child_command(args).spawn().expect("spawn child process")
}

/// The command that [`spawn_child`] runs.
pub fn child_command(args: &[String]) -> Command {
    let mut cmd = Command::new(std::env::current_exe().expect("current executable"));
    cmd.arg("--child").args(args).stdin(Stdio::null());
    cmd
}

/// If this process was started by [`spawn_child`], its arguments after `--child`.
pub fn child_args() -> Option<Vec<String>> {
    let args: Vec<String> = std::env::args().collect();
    let at = args.iter().position(|a| a == "--child")?;
    // A child never outlives its parent: a killed or crashed benchmark must not leave a
    // process spinning on a CPU.
    // SAFETY: prctl(PR_SET_PDEATHSIG) with a signal number; getppid has no preconditions.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        if libc::getppid() == 1 {
            std::process::exit(1); // the parent is already gone
        }
    }
    Some(args[at + 1..].to_vec())
}

/// Waits for a child and panics if it failed.
pub fn reap(mut child: Child, what: &str) {
    let st = child.wait().expect("wait for child");
    assert!(st.success(), "{what}: child exited with {st}");
}

/// A shared mapping backed by a memfd that children inherit (no name in /dev/shm, nothing
/// left behind).
pub struct Shm {
    pub ptr: *mut u8,
    pub len: usize,
    pub fd: i32,
}

impl Shm {
    /// A zero-filled mapping of `len` bytes whose fd survives `exec`.
    pub fn create(len: usize) -> Shm {
        // SAFETY: the name is a NUL-terminated literal; flags 0 leave the fd inheritable.
        let fd = unsafe { libc::memfd_create(c"shmbus-bench".as_ptr(), 0) };
        assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
        // SAFETY: `fd` is the memfd we just created.
        let r = unsafe { libc::ftruncate(fd, len as libc::off_t) };
        assert_eq!(r, 0, "ftruncate: {}", std::io::Error::last_os_error());
        Shm::attach(fd, len)
    }

    /// Maps an inherited memfd.
    // The library maps shared memory only through `src/sys/shm.rs`; the raw baselines are
    // deliberately independent of it.
    #[allow(clippy::disallowed_methods)]
    pub fn attach(fd: i32, len: usize) -> Shm {
        // SAFETY: a fresh shared mapping of a file we hold; the kernel picks the address.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                fd,
                0,
            )
        };
        assert!(
            ptr != libc::MAP_FAILED,
            "mmap: {}",
            std::io::Error::last_os_error()
        );
        Shm {
            ptr: ptr.cast(),
            len,
            fd,
        }
    }
}

impl Drop for Shm {
    fn drop(&mut self) {
        // SAFETY: we own the mapping and the fd; nothing borrows them past this point.
        unsafe {
            libc::munmap(self.ptr.cast(), self.len);
            libc::close(self.fd);
        }
    }
}

/// Sleeps while `*word == val` (a shared, not private, futex).
pub fn futex_wait(word: &AtomicU32, val: u32) {
    // SAFETY: `word` is a valid, aligned 32-bit word for the duration of the call.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            val,
            std::ptr::null::<libc::timespec>(),
        );
    }
}

/// Wakes one sleeper on `word`.
pub fn futex_wake(word: &AtomicU32) {
    // SAFETY: `word` is a valid, aligned 32-bit word for the duration of the call.
    unsafe {
        libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE, 1);
    }
}

/// The role of an end of a [`Link`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Side {
    Parent,
    Child,
}

/// What a scenario needs to set up a transport: the payload size in bytes (a multiple of 8),
/// the ring capacity where the transport has one, and a variant string (options).
#[derive(Clone, Debug)]
pub struct Spec {
    pub size: usize,
    pub capacity: usize,
    pub variant: String,
}

/// A duplex message transport between the parent and one child. The parent sends "down"
/// and receives "up"; the child the reverse. Payloads are handled as `u64` words, written
/// in place where the transport allows it.
pub trait Link: Sized {
    /// Parent side: creates the transport; returns it and the arguments the child needs.
    fn create(spec: &Spec) -> (Self, Vec<String>);
    /// Child side: attaches with the parent's arguments.
    fn attach(spec: &Spec, args: &[String]) -> Self;
    /// Sends one message whose payload `fill` writes.
    fn send(&mut self, fill: impl FnOnce(&mut [u64]));
    /// Receives one message and lets `read` look at its payload.
    fn recv(&mut self, read: impl FnOnce(&[u64]));
    /// Called by the parent before the child is started, with its command (e.g. to pass it
    /// descriptors).
    fn prepare_child(&mut self, _cmd: &mut Command) {}
    /// Called by the parent after the child was started (e.g. to accept a connection).
    fn connected(&mut self) {}
}

/// Round-trip or one-way stream.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Mode {
    RoundTrip,
    Stream,
}

/// Counts of a run.
#[derive(Clone, Copy, Debug)]
pub struct Counts {
    /// Measured round trips, or messages per stream batch.
    pub n: u64,
    /// Warm-up round trips, or number of stream batches.
    pub extra: u64,
}

/// The result of one scenario.
#[derive(Clone, Copy, Debug)]
pub enum Figure {
    /// Round trip: median and 99th percentile in nanoseconds.
    Latency { median: f64, p99: f64 },
    /// Stream: messages per second (median of the batches) and the payload size.
    Rate { per_s: f64, size: usize },
    /// Not measured here (with the reason in the row's note).
    None,
}

/// Creates the parent's end of `L`, pins this process to CPU 0 and starts the child with
/// the arguments `kind mode size capacity variant [extra...] [link arguments...]`. Returns
/// the connected link and the child.
pub fn start_child<L: Link>(kind: &str, mode: Mode, spec: &Spec, extra: &[String]) -> (L, Child) {
    let (mut link, link_args) = L::create(spec);
    let mut args = vec![
        kind.to_string(),
        format!("{mode:?}"),
        spec.size.to_string(),
        spec.capacity.to_string(),
        spec.variant.clone(),
    ];
    args.extend_from_slice(extra);
    args.extend(link_args);
    pin(0);
    let mut cmd = child_command(&args);
    link.prepare_child(&mut cmd);
    let child = cmd.spawn().expect("spawn child process");
    drop(cmd);
    link.connected();
    (link, child)
}

/// Runs the parent side of `mode` over `L` (the child runs [`child_main`]).
pub fn run_link<L: Link>(kind: &str, mode: Mode, spec: &Spec, counts: Counts) -> Figure {
    let extra = [counts.n.to_string(), counts.extra.to_string()];
    let (mut link, child) = start_child::<L>(kind, mode, spec, &extra);
    let fig = match mode {
        Mode::RoundTrip => {
            let mut s = rtt_parent(&mut link, counts);
            let (median, p99) = median_p99(&mut s);
            Figure::Latency { median, p99 }
        }
        Mode::Stream => {
            let mut rates = stream_parent(&mut link, counts);
            rates.sort_by(f64::total_cmp);
            Figure::Rate {
                per_s: rates[rates.len() / 2],
                size: spec.size,
            }
        }
    };
    reap(child, kind);
    drop(link);
    fig
}

/// The child's side of [`run_link`]; `args` are the child arguments after the kind.
pub fn child_main<L: Link>(args: &[String]) {
    pin(1);
    let mode = if args[0] == "RoundTrip" {
        Mode::RoundTrip
    } else {
        Mode::Stream
    };
    let spec = Spec {
        size: args[1].parse().unwrap(),
        capacity: args[2].parse().unwrap(),
        variant: args[3].clone(),
    };
    let counts = Counts {
        n: args[4].parse().unwrap(),
        extra: args[5].parse().unwrap(),
    };
    let mut link = L::attach(&spec, &args[6..]);
    match mode {
        Mode::RoundTrip => {
            for i in 0..counts.n + counts.extra {
                let mut got = u64::MAX;
                link.recv(|w| got = w[0]);
                assert_eq!(got, i, "ping sequence");
                link.send(|w| w[0] = i);
            }
        }
        Mode::Stream => {
            for i in 0..counts.n * counts.extra + 1 {
                link.send(|w| w.fill(i));
            }
        }
    }
}

fn rtt_parent<L: Link>(link: &mut L, counts: Counts) -> Vec<u64> {
    let mut samples = Vec::with_capacity(counts.n as usize);
    for i in 0..counts.n + counts.extra {
        let t0 = Instant::now();
        link.send(|w| w[0] = i);
        let mut got = u64::MAX;
        link.recv(|w| got = w[0]);
        let dt = t0.elapsed().as_nanos() as u64;
        assert_eq!(got, i, "pong sequence");
        if i >= counts.extra {
            samples.push(dt);
        }
    }
    samples
}

/// Sum of all words: the receiver reads every byte.
#[inline]
pub fn sum_words(w: &[u64]) -> u64 {
    w.iter().fold(0u64, |a, &x| a.wrapping_add(x))
}

fn stream_parent<L: Link>(link: &mut L, counts: Counts) -> Vec<f64> {
    let mut total = 0u64;
    // The first message starts the clock (the child's start-up is not measured) and the
    // sequence check (a peer that drops samples sent before it was connected still runs).
    let mut next = 0u64;
    link.recv(|w| {
        total = sum_words(w);
        next = w[0] + 1;
    });
    let mut rates = Vec::new();
    for _ in 0..counts.extra {
        let t0 = Instant::now();
        for _ in 0..counts.n {
            let mut first = 0;
            link.recv(|w| {
                first = w[0];
                total = total.wrapping_add(sum_words(w));
            });
            assert!(
                first == next,
                "stream sequence: got {first}, expected {next}"
            );
            next += 1;
        }
        rates.push(counts.n as f64 / t0.elapsed().as_secs_f64());
    }
    std::hint::black_box(total);
    rates
}

/// Median and 99th percentile of `samples` (sorted in place).
pub fn median_p99(samples: &mut [u64]) -> (f64, f64) {
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize] as f64;
    (at(0.5), at(0.99))
}

/// One line of the comparison table.
#[derive(Clone, Debug)]
pub struct Row {
    /// e.g. "round trip 64 B".
    pub scenario: String,
    pub transport: String,
    /// Spin-flag round trip measured just before this row, in ns.
    pub placement_ns: f64,
    pub figure: Figure,
    /// Transport (same scenario) this row is divided by.
    pub baseline: Option<String>,
    pub note: String,
}

/// "fast" or "slow" placement of the two vCPUs, judged from a spin-flag round trip.
pub fn placement_label(ns: f64) -> &'static str {
    if ns < 300.0 {
        "fast"
    } else {
        "slow"
    }
}

fn fmt_ns(ns: f64) -> String {
    if ns >= 1e6 {
        format!("{:.2} ms", ns / 1e6)
    } else if ns >= 1e4 {
        format!("{:.1} µs", ns / 1e3)
    } else {
        format!("{ns:.0} ns")
    }
}

/// The figure as (value, p99) text.
pub fn fmt_figure(f: &Figure) -> (String, String) {
    match *f {
        Figure::Latency { median, p99 } => (fmt_ns(median), fmt_ns(p99)),
        Figure::Rate { per_s, size } if size >= 1 << 20 => (
            format!("{:.2} GiB/s", per_s * size as f64 / (1u64 << 30) as f64),
            format!("{:.0} msg/s", per_s),
        ),
        Figure::Rate { per_s, .. } => (format!("{:.2} M msg/s", per_s / 1e6), String::new()),
        Figure::None => ("n/a".into(), String::new()),
    }
}

/// The latest row of `transport` in `row`'s scenario measured in the same placement as `row`.
pub fn same_placement<'a>(rows: &'a [Row], row: &Row, transport: &str) -> Option<&'a Row> {
    rows.iter().rev().find(|r| {
        r.scenario == row.scenario
            && r.transport == transport
            && placement_label(r.placement_ns) == placement_label(row.placement_ns)
    })
}

/// `row ÷ baseline` for the same scenario, with the latest baseline row measured in the
/// same placement; `None` if there is none (latency: below 1 is better; rate: above 1 is).
pub fn ratio(rows: &[Row], row: &Row, baseline: &str) -> Option<f64> {
    let base = same_placement(rows, row, baseline)?;
    match (row.figure, base.figure) {
        (Figure::Latency { median: a, .. }, Figure::Latency { median: b, .. }) => Some(a / b),
        (Figure::Rate { per_s: a, .. }, Figure::Rate { per_s: b, .. }) => Some(a / b),
        _ => None,
    }
}

/// Prints the table header (markdown).
pub fn print_header() {
    println!("| scenario | transport | placement (spin-flag RTT) | median / rate | p99 / note | ratio to raw counterpart |");
    println!("|---|---|---|---|---|---|");
}

/// Prints one row; `rows` holds the rows measured before it (its baseline among them).
pub fn print_row(rows: &[Row], row: &Row) {
    let (v, p) = fmt_figure(&row.figure);
    let p = if row.note.is_empty() {
        p
    } else if p.is_empty() {
        row.note.clone()
    } else {
        format!("{p}; {}", row.note)
    };
    let r = match &row.baseline {
        Some(b) => match ratio(rows, row, b) {
            Some(x) => format!("{x:.2}× {b}"),
            None if rows
                .iter()
                .any(|r| r.scenario == row.scenario && &r.transport == b) =>
            {
                format!("– ({b} not measured in this placement)")
            }
            None => format!("– ({b} missing)"),
        },
        None => "–".into(),
    };
    println!(
        "| {} | {} | {} {:.0} ns | {} | {} | {} |",
        row.scenario,
        row.transport,
        placement_label(row.placement_ns),
        row.placement_ns,
        v,
        p,
        r
    );
}

/// Checks a target and prints it.
pub fn target(rows: &[Row], scenario: &str, who: &str, base: &str, op: &str, bound: f64) -> bool {
    let row = rows
        .iter()
        .rev()
        .find(|r| r.scenario == scenario && r.transport == who);
    let x = row.and_then(|r| ratio(rows, r, base));
    let ok = match (x, op) {
        (Some(x), "<=") => x <= bound,
        (Some(x), _) => x >= bound,
        _ => false,
    };
    println!(
        "- {scenario}: {who} ÷ {base} = {} (target {op} {bound}) {}",
        x.map_or(
            if row.is_some() {
                "n/a (no baseline in the same placement)"
            } else {
                "n/a (not measured)"
            }
            .to_string(),
            |x| format!(
                "{x:.2} ({} placement)",
                row.map_or("", |r| placement_label(r.placement_ns))
            )
        ),
        match (x, ok) {
            (None, _) => "UNKNOWN",
            (_, true) => "HOLDS",
            _ => "MISSED",
        }
    );
    ok
}
