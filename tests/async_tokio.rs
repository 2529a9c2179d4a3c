//! The `tokio` feature: many channels on one current-thread runtime (senders in threads and
//! in child processes), cancellation without loss, the `Stream`, `AsyncSender` on a full
//! ring, and the error for a wake strategy that cannot be polled.
//!
//! Children are this test binary re-run (`common::Harness`). No test asserts on a duration.
#![cfg(feature = "tokio")]

mod common;

use std::pin::Pin;
use std::time::Duration;

use futures_core::Stream;
use shmbus::{
    AsyncReceiver, AsyncSender, Options, Receiver, RecvError, SendError, Sender, WakeStrategy,
};

use common::{param, report, Harness};

#[derive(shmbus::Message, Clone, Copy, Debug, PartialEq)]
#[repr(C)]
struct Stamp {
    channel: u64,
    seq: u64,
}

const POLLABLE: [WakeStrategy; 2] = [WakeStrategy::EventFd, WakeStrategy::UnixSocket];

fn opts(strategy: WakeStrategy, capacity: usize) -> Options {
    let mut o = Options::new();
    o.capacity(capacity).wake(strategy);
    o
}

/// A small deterministic generator (xorshift) for pauses.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Sends `count` stamps on `tx`, pausing now and then so that the receiver often waits.
fn send_stamps(tx: &Sender<Stamp>, channel: u64, count: u64) {
    send_paced(tx, channel, count, 64, 500);
}

/// Sends `count` stamps on `tx`, pausing up to `max_us` µs after one in `every` or so.
fn send_paced(tx: &Sender<Stamp>, channel: u64, count: u64, every: u64, max_us: u64) {
    let mut rng = Rng(channel * 7919 + 1);
    for seq in 0..count {
        tx.send(Stamp { channel, seq }).unwrap();
        if rng.next() % every == 0 {
            std::thread::sleep(Duration::from_micros(rng.next() % max_us));
        }
    }
}

/// The next item of a stream (futures-core has no `StreamExt`).
async fn next<S: Stream + Unpin>(s: &mut S) -> Option<S::Item> {
    std::future::poll_fn(|cx| Pin::new(&mut *s).poll_next(cx)).await
}

#[test]
fn child_main() {
    let Some(role) = common::role() else {
        return;
    };
    common::exit_with_parent();
    match role.as_str() {
        "sender" => {
            let strategy = POLLABLE[param::<usize>("strategy")];
            let tx = Sender::<Stamp>::open(&common::channel(), &opts(strategy, 16)).unwrap();
            report("attached", "");
            send_stamps(&tx, param("id"), param("count"));
        }
        "one_then_sleep" => {
            let strategy = POLLABLE[param::<usize>("strategy")];
            let tx = Sender::<Stamp>::open(&common::channel(), &opts(strategy, 16)).unwrap();
            tx.send(Stamp { channel: 0, seq: 0 }).unwrap();
            report("sent", "");
            common::sleep_forever();
        }
        other => panic!("unknown child role {other:?}"),
    }
    std::process::exit(0);
}

#[tokio::test]
async fn many_channels_with_thread_senders_on_one_runtime() {
    const CHANNELS: u64 = 32;
    const COUNT: u64 = 2_000;
    let harness = Harness::new("async-threads");
    // `recv`'s future borrows a receiver, which is not `Sync`: local tasks.
    let local = tokio::task::LocalSet::new();
    let mut tasks = tokio::task::JoinSet::new();
    let mut threads = Vec::new();
    for c in 0..CHANNELS {
        let name = harness.sub_name(&c.to_string());
        let o = opts(POLLABLE[c as usize % 2], 16);
        let rx = Receiver::<Stamp>::create(&name, &o).unwrap();
        let mut rx = AsyncReceiver::new(rx).unwrap();
        let tx = Sender::<Stamp>::open(&name, &o).unwrap();
        threads.push(std::thread::spawn(move || send_stamps(&tx, c, COUNT)));
        tasks.spawn_local_on(
            async move {
                // Half the channels through `recv`, half through the `Stream`.
                if c % 4 < 2 {
                    for seq in 0..COUNT {
                        let got = rx.recv().await.unwrap();
                        assert_eq!(*got, Stamp { channel: c, seq });
                    }
                    assert_eq!(rx.recv().await.unwrap_err(), RecvError::Disconnected);
                } else {
                    let mut seq = 0;
                    while let Some(got) = next(&mut rx).await {
                        assert_eq!(got, Stamp { channel: c, seq });
                        seq += 1;
                    }
                    assert_eq!(seq, COUNT);
                }
                c
            },
            &local,
        );
    }
    let done = local
        .run_until(async {
            let mut done = 0;
            while let Some(r) = tasks.join_next().await {
                r.unwrap();
                done += 1;
            }
            done
        })
        .await;
    assert_eq!(done, CHANNELS);
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn many_channels_with_sender_processes_on_one_runtime() {
    const CHANNELS: u64 = 8;
    const COUNT: u64 = 5_000;
    let harness = Harness::new("async-procs");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut children = Vec::new();
    let mut receivers = Vec::new();
    rt.block_on(async {
        for c in 0..CHANNELS {
            let name = harness.sub_name(&c.to_string());
            let strategy = c as usize % 2;
            let rx = Receiver::<Stamp>::create(&name, &opts(POLLABLE[strategy], 16)).unwrap();
            receivers.push(AsyncReceiver::new(rx).unwrap());
            children.push(harness.spawn_on(
                &name,
                "sender",
                &[("strategy", &strategy), ("id", &c), ("count", &COUNT)],
            ));
        }
    });
    let received = rt.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        for (c, mut rx) in receivers.into_iter().enumerate() {
            tasks.spawn(async move {
                let mut seq = 0;
                loop {
                    match rx.recv_owned().await {
                        Ok(got) => {
                            assert_eq!(
                                got,
                                Stamp {
                                    channel: c as u64,
                                    seq
                                }
                            );
                            seq += 1;
                        }
                        Err(RecvError::Disconnected) => break,
                        Err(e) => panic!("channel {c}: {e}"),
                    }
                }
                seq
            });
        }
        let mut received = Vec::new();
        while let Some(r) = tasks.join_next().await {
            received.push(r.unwrap());
        }
        received
    });
    assert_eq!(received, vec![COUNT; CHANNELS as usize]);
    for mut child in children {
        child.wait_success();
    }
}

#[tokio::test]
async fn cancelled_receives_lose_no_message() {
    const COUNT: u64 = 3_000;
    for strategy in POLLABLE {
        let harness = Harness::new("async-cancel");
        let o = opts(strategy, 8);
        let rx = Receiver::<Stamp>::create(harness.name(), &o).unwrap();
        let mut rx = AsyncReceiver::new(rx).unwrap();
        let tx = Sender::<Stamp>::open(harness.name(), &o).unwrap();
        // Frequent pauses of up to 2 ms, so that receives wait and time out often.
        let sender = std::thread::spawn(move || send_paced(&tx, 0, COUNT, 8, 2_000));
        let mut rng = Rng(42);
        let (mut seq, mut cancelled) = (0, 0u64);
        loop {
            // Zero (cancelled at the first `Pending`) to 1 ms (tokio's timer resolution).
            let limit = Duration::from_micros(rng.next() % 1_000);
            match tokio::time::timeout(limit, rx.recv_owned()).await {
                Err(_) => cancelled += 1,
                Ok(Ok(got)) => {
                    assert_eq!(got, Stamp { channel: 0, seq });
                    seq += 1;
                }
                Ok(Err(RecvError::Disconnected)) => break,
                Ok(Err(e)) => panic!("{e}"),
            }
        }
        assert_eq!(seq, COUNT, "{strategy}");
        assert!(cancelled > 0, "{strategy}: no receive was ever cancelled");
        sender.join().unwrap();
    }
}

#[tokio::test]
async fn async_sender_waits_on_a_full_ring() {
    const COUNT: u64 = 2_000;
    let harness = Harness::new("async-send");
    let o = opts(WakeStrategy::EventFd, 4);
    let rx = Receiver::<Stamp>::create(harness.name(), &o).unwrap();
    let mut tx = AsyncSender::new(Sender::<Stamp>::open(harness.name(), &o).unwrap());
    let receiver = std::thread::spawn(move || {
        let mut rng = Rng(7);
        for seq in 0..COUNT {
            assert_eq!(rx.recv().unwrap().into_inner(), Stamp { channel: 1, seq });
            if rng.next() % 32 == 0 {
                std::thread::sleep(Duration::from_micros(rng.next() % 2_000));
            }
        }
    });
    for seq in 0..COUNT {
        tx.send(Stamp { channel: 1, seq }).await.unwrap();
    }
    receiver.join().unwrap();
    // The receiver is gone: the message comes back.
    let back = Stamp {
        channel: 1,
        seq: COUNT,
    };
    loop {
        match tx.send(back).await {
            Err(SendError::Disconnected(m)) => {
                assert_eq!(m, back);
                break;
            }
            // Room left in the ring before the receiver's departure was noticed.
            Ok(()) => tokio::task::yield_now().await,
            Err(e) => panic!("{e}"),
        }
    }
}

#[tokio::test]
async fn non_pollable_strategy_is_a_clear_error() {
    for strategy in [WakeStrategy::Futex, WakeStrategy::Spin] {
        let harness = Harness::new("async-nopoll");
        let rx = Receiver::<Stamp>::create(harness.name(), &opts(strategy, 4)).unwrap();
        let err = AsyncReceiver::new(rx).unwrap_err();
        assert_eq!(err.io_error().kind(), std::io::ErrorKind::Unsupported);
        let text = err.to_string();
        assert!(
            text.contains(harness.name()) && text.contains("no descriptor to poll"),
            "{text}"
        );
        // The receiver comes back, still usable.
        let rx = err.into_receiver();
        assert_eq!(rx.wake_strategy(), Some(strategy));
    }
}

#[tokio::test]
async fn killed_sender_process_disconnects_a_waiting_receiver() {
    for (i, strategy) in POLLABLE.into_iter().enumerate() {
        let harness = Harness::new("async-kill");
        let rx = Receiver::<Stamp>::create(harness.name(), &opts(strategy, 16)).unwrap();
        let mut rx = AsyncReceiver::new(rx).unwrap();
        let mut child = harness.spawn("one_then_sleep", &[("strategy", &i)]);
        assert_eq!(rx.recv_owned().await.unwrap(), Stamp { channel: 0, seq: 0 });
        child.expect("sent");
        // Waiting when the sender is killed: the liveness check notices.
        let waiting = tokio::spawn(async move { rx.recv_owned().await });
        child.kill();
        let got = tokio::time::timeout(common::PATIENCE, waiting).await;
        assert_eq!(
            got.unwrap().unwrap(),
            Err(RecvError::Disconnected),
            "{strategy}"
        );
    }
}
