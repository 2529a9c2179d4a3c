//! Every wake strategy across real processes: the test binary re-runs itself as the child
//! (`--exact child`), with its role, channel and strategy in environment variables. One
//! generic body per behaviour; `strategy_tests!` instantiates each for every strategy.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use shmbus::{
    OpenError, Options, Receiver, RecvError, RecvTimeoutError, SendTimeoutError, Sender,
    WakeStrategy,
};

#[derive(shmbus::Message, Clone, Copy, Debug, PartialEq)]
#[repr(C)]
struct Msg {
    seq: u64,
    check: u64,
}

fn msg(seq: u64) -> Msg {
    Msg {
        seq,
        check: seq.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x5555,
    }
}

const ROLE: &str = "SHMBUS_WAKE_ROLE";
const NAME: &str = "SHMBUS_WAKE_NAME";
const STRATEGY: &str = "SHMBUS_WAKE_STRATEGY";
const COUNT: &str = "SHMBUS_WAKE_COUNT";

fn strategy_index(s: WakeStrategy) -> usize {
    WakeStrategy::all().iter().position(|x| *x == s).unwrap()
}

fn unique(test: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("wake-{test}-{}-{nanos}", std::process::id())
}

fn segment_exists(name: &str) -> bool {
    std::path::Path::new(&format!("/dev/shm/shmbus.{name}")).exists()
}

fn spawn(role: &str, name: &str, s: WakeStrategy, count: u64) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child", "--nocapture", "--test-threads=1"])
        .env(ROLE, role)
        .env(NAME, name)
        .env(STRATEGY, strategy_index(s).to_string())
        .env(COUNT, count.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits for `child` to exit successfully within `limit`; kills it and fails otherwise.
fn finish(mut child: Child, what: &str, limit: Duration) {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut out = String::new();
            if let Some(mut o) = child.stdout.take() {
                let _ = std::io::Read::read_to_string(&mut o, &mut out);
            }
            assert!(status.success(), "{what} failed ({status}):\n{out}");
            return;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("watchdog: {what} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Reads the child's stdout until a line equal to `line`.
fn wait_for_line(child: &mut Child, line: &str) -> BufReader<std::process::ChildStdout> {
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut buf = String::new();
    loop {
        buf.clear();
        assert!(
            out.read_line(&mut buf).unwrap() > 0,
            "child ended before {line:?}"
        );
        if buf.trim().ends_with(line) {
            return out;
        }
    }
}

fn opts(s: WakeStrategy, capacity: usize, spin: Duration) -> Options {
    let mut o = Options::new();
    o.capacity(capacity).spin(spin).wake(s);
    o
}

/// A small xorshift for random pauses.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// Now and then a pause of up to 200 µs (a sleep, so the peer really blocks).
    fn pause(&mut self) {
        let r = self.next();
        if r % 512 == 0 {
            std::thread::sleep(Duration::from_micros(r % 200));
        }
    }
}

/// The child side: dispatches on the role.
#[test]
fn child() {
    let Ok(role) = std::env::var(ROLE) else {
        return; // run as an ordinary test: nothing to do
    };
    let name = std::env::var(NAME).unwrap();
    let s = WakeStrategy::all()[std::env::var(STRATEGY).unwrap().parse::<usize>().unwrap()];
    let count: u64 = std::env::var(COUNT).unwrap().parse().unwrap();
    shmbus::block_wake_signal(s).unwrap();
    match role.as_str() {
        // Stream `count` messages; with a pause of 50 ms before the first, so that the
        // receiver sleeps on an empty ring.
        "send" | "send-random" => {
            let tx = Sender::<Msg>::open_or_create(&name, &opts(s, 16, Duration::ZERO)).unwrap();
            assert_eq!(tx.wake_strategy(), Some(s));
            std::thread::sleep(Duration::from_millis(50));
            let mut rng = Rng(0x1234_5678);
            for seq in 0..count {
                tx.send(msg(seq)).unwrap();
                if role == "send-random" {
                    rng.pause();
                }
            }
        }
        "recv" | "recv-random" => {
            let rx = Receiver::<Msg>::open_or_create(&name, &opts(s, 16, Duration::ZERO)).unwrap();
            println!("READY");
            let mut rng = Rng(0x8765_4321);
            for seq in 0..count {
                let m = rx.recv().unwrap();
                assert_eq!(*m, msg(seq), "message {seq}");
                drop(m);
                if role == "recv-random" {
                    rng.pause();
                } else if seq == 0 {
                    // Let the sender fill the ring and sleep on it.
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            assert_eq!(rx.recv().err(), Some(RecvError::Disconnected));
        }
        // Sends one message, then waits to be killed.
        "send-then-hang" => {
            let tx = Sender::<Msg>::open_or_create(&name, &opts(s, 16, Duration::ZERO)).unwrap();
            tx.send(msg(0)).unwrap();
            println!("SENT");
            std::thread::sleep(Duration::from_secs(60));
        }
        // Receives that message, then sleeps in recv until the sender is killed.
        "recv-until-disconnected" => {
            let rx = Receiver::<Msg>::open_or_create(&name, &opts(s, 16, Duration::ZERO)).unwrap();
            println!("READY");
            assert_eq!(*rx.recv().unwrap(), msg(0));
            assert_eq!(rx.recv().err(), Some(RecvError::Disconnected));
        }
        // An event loop: prepare_poll, poll(2) on the receiver's descriptor, drain.
        "recv-poll" => {
            use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
            use std::os::fd::AsFd;
            let rx = Receiver::<Msg>::open_or_create(&name, &opts(s, 16, Duration::ZERO)).unwrap();
            println!("READY");
            let mut seq = 0;
            let mut polls = 0u64;
            loop {
                if !rx.prepare_poll() {
                    let mut fds = [PollFd::new(rx.as_fd(), PollFlags::POLLIN)];
                    let n = poll(&mut fds, PollTimeout::from(5000u16)).unwrap();
                    assert_eq!(n, 1, "poll timed out with {seq} messages received");
                    polls += 1;
                }
                loop {
                    match rx.try_recv() {
                        Ok(m) => {
                            assert_eq!(*m, msg(seq));
                            seq += 1;
                        }
                        Err(shmbus::TryRecvError::Empty) => break,
                        Err(shmbus::TryRecvError::Disconnected) => {
                            assert_eq!(seq, count);
                            println!("polls: {polls}");
                            return;
                        }
                        Err(e) => panic!("{e}"),
                    }
                }
            }
        }
        other => panic!("unknown role {other}"),
    }
}

fn stream(s: WakeStrategy, count: u64, random: bool, limit: Duration) {
    let name = unique("stream");
    let suffix = if random { "-random" } else { "" };
    let mut rx = spawn(&format!("recv{suffix}"), &name, s, count);
    let _out = wait_for_line(&mut rx, "READY");
    let tx = spawn(&format!("send{suffix}"), &name, s, count);
    finish(tx, "sender", limit);
    finish(rx, "receiver", limit);
    assert!(!segment_exists(&name), "segment left behind");
}

fn transfer_in_order(s: WakeStrategy) {
    stream(s, 100_000, false, Duration::from_secs(120));
}

fn stress(s: WakeStrategy) {
    // One million messages, with random pauses on both sides.
    let count = 1_000_000;
    stream(s, count, true, Duration::from_secs(300));
}

fn disconnected_after_sigkill(s: WakeStrategy) {
    let name = unique("kill");
    let mut rx = spawn("recv-until-disconnected", &name, s, 0);
    let _rx_out = wait_for_line(&mut rx, "READY");
    let mut tx = spawn("send-then-hang", &name, s, 0);
    let _tx_out = wait_for_line(&mut tx, "SENT");
    // Let the receiver take the message and fall asleep on the empty ring.
    std::thread::sleep(Duration::from_millis(200));
    tx.kill().unwrap();
    tx.wait().unwrap();
    finish(rx, "receiver", Duration::from_secs(20));
    assert!(!segment_exists(&name), "segment left behind");
}

fn timeouts(s: WakeStrategy) {
    shmbus::block_wake_signal(s).unwrap();
    let name = unique("timeout");
    let rx = Receiver::<Msg>::create(&name, &opts(s, 2, Duration::from_micros(5))).unwrap();
    let tx = Sender::<Msg>::open(&name, &Options::new()).unwrap();
    assert_eq!(
        tx.wake_strategy(),
        Some(s),
        "an opener without a strategy adopts the channel's"
    );
    let start = Instant::now();
    assert_eq!(
        rx.recv_timeout(Duration::from_millis(30)).err(),
        Some(RecvTimeoutError::Timeout)
    );
    assert!(start.elapsed() >= Duration::from_millis(30));
    tx.send(msg(1)).unwrap();
    tx.send(msg(2)).unwrap();
    match tx.send_timeout(msg(3), Duration::from_millis(30)) {
        Err(SendTimeoutError::Timeout(m)) => assert_eq!(m, msg(3)),
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert_eq!(*rx.recv().unwrap(), msg(1));
    drop((tx, rx));
    assert!(!segment_exists(&name));
}

fn mismatch(s: WakeStrategy) {
    let name = unique("mismatch");
    let other = if s == WakeStrategy::Futex {
        WakeStrategy::Spin
    } else {
        WakeStrategy::Futex
    };
    let rx = Receiver::<Msg>::create(&name, &opts(s, 4, Duration::ZERO)).unwrap();
    let mut o = Options::new();
    o.wake(other);
    match Sender::<Msg>::open(&name, &o) {
        Err(OpenError::WakeMismatch {
            expected, found, ..
        }) => {
            assert_eq!((expected, found), (other, s));
        }
        r => panic!("expected WakeMismatch, got {:?}", r.map(|_| ())),
    }
    let tx = Sender::<Msg>::open(&name, &Options::new()).unwrap();
    assert_eq!(tx.wake_strategy(), Some(s));
    assert_eq!(rx.wake_strategy(), Some(s));
    drop((tx, rx));
    assert!(!segment_exists(&name));
}

fn poll_across_processes(s: WakeStrategy) {
    let name = unique("poll");
    let mut rx = spawn("recv-poll", &name, s, 20_000);
    let _out = wait_for_line(&mut rx, "READY");
    let tx = spawn("send-random", &name, s, 20_000);
    finish(tx, "sender", Duration::from_secs(60));
    finish(rx, "polling receiver", Duration::from_secs(60));
    assert!(!segment_exists(&name), "segment left behind");
}

#[test]
fn unix_socket_receiver_polls_across_processes() {
    poll_across_processes(WakeStrategy::UnixSocket)
}

#[test]
fn eventfd_receiver_polls_across_processes() {
    poll_across_processes(WakeStrategy::EventFd)
}

#[test]
fn non_pollable_receiver_has_no_fd() {
    let name = unique("nofd");
    let rx = Receiver::<Msg>::create(&name, &opts(WakeStrategy::Futex, 4, Duration::ZERO)).unwrap();
    assert!(rx.poll_fd().is_none());
    assert!(!rx.prepare_poll());
}

/// Several receivers of one role asleep at once, in threads: every message is delivered
/// exactly once (queue) or to everyone (broadcast), and no wait outlasts its timeout by more
/// than a scheduling margin. Strategies that track one sleeper per cell (`Signal`) wake the
/// others through their 10 ms liveness slice.
fn several_sleepers(s: WakeStrategy, broadcast: bool, sysv: bool) {
    const RECEIVERS: usize = 4;
    const COUNT: u64 = 2_000;
    shmbus::block_wake_signal(s).unwrap();
    let name = unique(if broadcast { "bcast" } else { "queue" });
    let mut o = opts(s, 16, Duration::ZERO);
    o.max_receivers(RECEIVERS as u32);
    if broadcast {
        o.delivery(shmbus::Delivery::Broadcast);
    }
    if sysv {
        o.transport(shmbus::Transport::SysvSharedMemory { key: None });
    }
    let tx = Sender::<Msg>::create(&name, &o).unwrap();
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(RECEIVERS + 1));
    let receivers: Vec<_> = (0..RECEIVERS)
        .map(|_| {
            let rx = Receiver::<Msg>::open(&name, &o).unwrap();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                shmbus::block_wake_signal(s).unwrap();
                barrier.wait();
                let timeout = Duration::from_millis(300);
                let mut got = Vec::new();
                loop {
                    let start = Instant::now();
                    match rx.recv_timeout(timeout) {
                        Ok(m) => {
                            assert_eq!(*m, msg(m.seq));
                            got.push(m.seq);
                        }
                        Err(RecvTimeoutError::Timeout) => {
                            let took = start.elapsed();
                            assert!(
                                took < timeout + Duration::from_millis(200),
                                "a wait of {timeout:?} took {took:?}"
                            );
                        }
                        Err(RecvTimeoutError::Disconnected) => return got,
                        Err(e) => panic!("{e:?}"),
                    }
                }
            })
        })
        .collect();
    barrier.wait();
    // Let every receiver fall asleep on the empty ring, then stream with pauses so that
    // they sleep again and again.
    std::thread::sleep(Duration::from_millis(50));
    let mut rng = Rng(0x1234_5678 + strategy_index(s) as u64);
    for seq in 0..COUNT {
        tx.send(msg(seq)).unwrap();
        if rng.next() % 64 == 0 {
            std::thread::sleep(Duration::from_micros(300));
        }
    }
    drop(tx);
    let results: Vec<Vec<u64>> = receivers.into_iter().map(|h| h.join().unwrap()).collect();
    if broadcast {
        for got in &results {
            assert_eq!(
                got,
                &(0..COUNT).collect::<Vec<_>>(),
                "a subscriber missed messages"
            );
        }
    } else {
        let mut all: Vec<u64> = results.into_iter().flatten().collect();
        all.sort_unstable();
        assert_eq!(
            all,
            (0..COUNT).collect::<Vec<_>>(),
            "lost or duplicated messages"
        );
    }
    if !sysv {
        assert!(!segment_exists(&name), "segment left behind");
    }
}

macro_rules! strategy_tests {
    ($($module:ident => $strategy:expr),* $(,)?) => {$(
        mod $module {
            use super::*;
            #[test]
            fn transfer_in_order_across_processes() { transfer_in_order($strategy) }
            #[test]
            fn disconnected_after_sender_is_killed() { disconnected_after_sigkill($strategy) }
            #[test]
            fn recv_and_send_timeouts() { timeouts($strategy) }
            #[test]
            fn wake_strategy_mismatch() { mismatch($strategy) }
            #[test]
            fn stress_random_pauses() { stress($strategy) }
            #[test]
            fn several_sleeping_receivers_queue() { several_sleepers($strategy, false, false) }
            #[test]
            fn several_sleeping_subscribers_broadcast() { several_sleepers($strategy, true, false) }
            #[test]
            fn several_sleeping_receivers_sysv_shared_memory() {
                several_sleepers($strategy, false, true)
            }
        }
    )*};
}

strategy_tests! {
    spin => WakeStrategy::Spin,
    futex => WakeStrategy::Futex,
    posix_semaphore => WakeStrategy::PosixSemaphore,
    sysv_semaphore => WakeStrategy::SysvSemaphore,
    signal => WakeStrategy::signal(),
    unix_socket => WakeStrategy::UnixSocket,
    eventfd => WakeStrategy::EventFd,
}

#[test]
fn signal_strategy_rejects_a_non_realtime_signal() {
    let name = unique("badsig");
    let mut o = Options::new();
    o.wake(WakeStrategy::Signal { signal: 10 });
    assert!(Receiver::<Msg>::create(&name, &o).is_err());
    assert!(!segment_exists(&name));
}
