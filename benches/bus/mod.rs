//! shmbus as a [`Link`](crate::harness::Link): one channel each way. On shared memory,
//! zero-copy loans written in place and samples read in place; on the other transports a
//! message is filled in a buffer and sent (copied), as the raw baselines do. Shared by
//! `benches/compare.rs`, `benches/cost.rs` and `peers/`.
//!
//! The variant string picks the options, as words separated by `-` or `+`: `busy` (spin for
//! an hour: never sleeps), `nospin` (`spin(ZERO)`: every wait goes through the wake path),
//! `1x1` (one sender and one receiver), `wake=NAME` (a [`WakeStrategy`]: `spin`, `futex`,
//! `posix_sem`, `sysv_sem`, `signal`, `unix_socket`, `eventfd`) and `t=NAME` (a transport:
//! `shm`, `sysv_shm`, `pipe`, `fifo`, `unix`, `abstract`, `posix_mq`, `sysv_mq`). Anything
//! else (`default`) leaves the defaults.
#![allow(dead_code)]

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::harness::{self, Link, Spec};
use shmbus::{Options, Receiver, Sender, Transport, WakeStrategy, ZeroCopy};

/// Payload access for the benchmark message types.
pub trait Words: ZeroCopy + Copy {
    fn words(&self) -> &[u64];
    fn words_mut(&mut self) -> &mut [u64];
}

macro_rules! message {
    ($name:ident, $words:expr) => {
        #[derive(shmbus::Message, Clone, Copy)]
        #[repr(C)]
        pub struct $name {
            pub data: [u64; $words],
        }
        impl Words for $name {
            fn words(&self) -> &[u64] {
                &self.data
            }
            fn words_mut(&mut self) -> &mut [u64] {
                &mut self.data
            }
        }
    };
}

message!(Small, 8);
message!(Page, 512);
message!(Big, 131_072);

/// The value of `key=VALUE` in a variant string, if present.
fn param<'a>(variant: &'a str, key: &str) -> Option<&'a str> {
    variant
        .split(['-', '+'])
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

fn has(variant: &str, word: &str) -> bool {
    variant.split(['-', '+']).any(|w| w == word)
}

/// The wake strategy named in a variant (`wake=NAME`), if any.
pub fn wake(variant: &str) -> Option<WakeStrategy> {
    Some(match param(variant, "wake")? {
        "spin" => WakeStrategy::Spin,
        "futex" => WakeStrategy::Futex,
        "posix_sem" => WakeStrategy::PosixSemaphore,
        "sysv_sem" => WakeStrategy::SysvSemaphore,
        "signal" => WakeStrategy::signal(),
        "unix_socket" => WakeStrategy::UnixSocket,
        "eventfd" => WakeStrategy::EventFd,
        other => panic!("unknown wake strategy {other:?}"),
    })
}

/// The transport named in a variant (`t=NAME`); shared memory by default.
fn transport(variant: &str) -> &str {
    param(variant, "t").unwrap_or("shm")
}

/// Options of a shmbus variant for the channel `name`.
pub fn options(spec: &Spec, name: &str) -> Options {
    let mut o = Options::new();
    o.capacity(spec.capacity);
    let v = spec.variant.as_str();
    if has(v, "busy") {
        // Effectively never sleeps.
        o.spin(Duration::from_secs(3600));
    }
    if has(v, "nospin") {
        o.spin(Duration::ZERO);
    }
    if has(v, "1x1") {
        o.max_senders(1).max_receivers(1);
    }
    if let Some(w) = wake(v) {
        o.wake(w);
    }
    let tmp = std::env::temp_dir();
    let t = match transport(v) {
        "shm" | "pipe" => Transport::SharedMemory,
        "sysv_shm" => Transport::SysvSharedMemory { key: None },
        "fifo" => Transport::Fifo {
            path: tmp.join(format!("{name}.fifo")),
        },
        "unix" => Transport::UnixSocket {
            path: tmp.join(format!("{name}.sock")),
        },
        "abstract" => Transport::AbstractSocket {
            name: name.to_owned(),
        },
        "posix_mq" => Transport::PosixQueue,
        "sysv_mq" => Transport::SysvQueue { key: None },
        other => panic!("unknown transport {other:?}"),
    };
    o.transport(t).connect_timeout(Duration::from_secs(20));
    o
}

/// shmbus as a [`Link`]. Shared-memory rings are created by the parent in `create`; other
/// transports are opened in `connected` (parent) and `attach` (child), once both processes
/// exist, since some wait in `open` for the other end.
pub struct Bus<M: Words> {
    tx: Option<Sender<M>>,
    rx: Option<Receiver<M>>,
    spec: Spec,
    name: String,
    /// Pipes: the child's ends, until they are passed to it.
    child_ends: Option<(Receiver<M>, Sender<M>)>,
    /// Copying transports: the message is filled here, then sent (`None` on shared memory).
    scratch: Option<Box<M>>,
}

/// The `Signal` strategy needs its signal blocked in the threads that sleep.
fn block_signal(spec: &Spec) {
    if let Some(w) = wake(&spec.variant) {
        shmbus::block_wake_signal(w).expect("block the wake signal");
    }
}

static SERIAL: AtomicU32 = AtomicU32::new(0);

const PIPE_DOWN: &str = "SHMBUS_BENCH_DOWN";
const PIPE_UP: &str = "SHMBUS_BENCH_UP";

fn zeroed<M: Words>() -> Box<M> {
    let layout = std::alloc::Layout::new::<M>();
    assert!(layout.size() > 0);
    // SAFETY: the layout has a non-zero size; a zero-copy message is `Pod`, so the zeroed
    // bytes are a valid `M`, and the allocation was made with `M`'s layout as `Box` needs.
    unsafe {
        let p = std::alloc::alloc_zeroed(layout).cast::<M>();
        assert!(!p.is_null(), "out of memory");
        Box::from_raw(p)
    }
}

impl<M: Words> Bus<M> {
    fn new(spec: &Spec, name: String) -> Self {
        let t = transport(&spec.variant);
        Bus {
            tx: None,
            rx: None,
            spec: spec.clone(),
            name,
            child_ends: None,
            scratch: (t != "shm" && t != "sysv_shm").then(zeroed),
        }
    }
}

impl<M: Words> Bus<M> {
    /// Opens the parent's ends by name (every transport but pipes).
    fn open_parent(&mut self) {
        let (down, up) = (format!("{}.d", self.name), format!("{}.u", self.name));
        self.tx =
            Some(Sender::open_or_create(&down, &options(&self.spec, &down)).expect("open sender"));
        self.rx =
            Some(Receiver::open_or_create(&up, &options(&self.spec, &up)).expect("open receiver"));
    }
}

impl<M: Words> Link for Bus<M> {
    fn create(spec: &Spec) -> (Self, Vec<String>) {
        block_signal(spec);
        let serial = SERIAL.fetch_add(1, Ordering::Relaxed);
        let name = format!("bench-{}-{serial}", std::process::id());
        let mut bus = Bus::new(spec, name.clone());
        let t = transport(&spec.variant);
        if t == "shm" || t == "sysv_shm" {
            // Either side may open first: the parent creates the rings, as it always did.
            bus.open_parent();
        } else if t == "pipe" {
            let (tx, child_rx) = shmbus::pipe::<M>().expect("pipe");
            let (child_tx, rx) = shmbus::pipe::<M>().expect("pipe");
            bus.tx = Some(tx);
            bus.rx = Some(rx);
            bus.child_ends = Some((child_rx, child_tx));
        }
        (bus, vec![name])
    }

    fn prepare_child(&mut self, cmd: &mut Command) {
        if let Some((rx, tx)) = self.child_ends.take() {
            rx.pass_to(cmd, PIPE_DOWN).expect("pass the pipe");
            tx.pass_to(cmd, PIPE_UP).expect("pass the pipe");
        }
    }

    fn connected(&mut self) {
        if self.tx.is_none() {
            self.open_parent();
        }
    }

    fn attach(spec: &Spec, args: &[String]) -> Self {
        block_signal(spec);
        let name = &args[0];
        let mut bus = Bus::new(spec, name.clone());
        if transport(&spec.variant) == "pipe" {
            bus.rx = Some(Receiver::from_inherited(PIPE_DOWN).expect("inherited pipe"));
            bus.tx = Some(Sender::from_inherited(PIPE_UP).expect("inherited pipe"));
        } else {
            let (down, up) = (format!("{name}.d"), format!("{name}.u"));
            bus.rx = Some(
                Receiver::open_or_create(&down, &options(spec, &down)).expect("open receiver"),
            );
            bus.tx = Some(Sender::open_or_create(&up, &options(spec, &up)).expect("open sender"));
        }
        bus
    }

    #[inline]
    fn send(&mut self, fill: impl FnOnce(&mut [u64])) {
        let tx = self.tx.as_ref().expect("connected");
        match &mut self.scratch {
            None => {
                let mut loan = tx.loan().expect("loan");
                fill(loan.words_mut());
                loan.send();
            }
            Some(m) => {
                fill(m.words_mut());
                if tx.send(**m).is_err() {
                    panic!("send failed");
                }
            }
        }
    }

    #[inline]
    fn recv(&mut self, read: impl FnOnce(&[u64])) {
        let sample = self.rx.as_ref().expect("connected").recv().expect("recv");
        read(sample.words());
    }
}

pub fn child(args: &[String]) {
    match args[1].as_str() {
        "64" => harness::child_main::<Bus<Small>>(args),
        "4096" => harness::child_main::<Bus<Page>>(args),
        _ => harness::child_main::<Bus<Big>>(args),
    }
}
