//! loom models of the ring and of the waiter protocol, run on the heap segment:
//! `RUSTFLAGS="--cfg shmbus_loom" cargo test --release --lib ring::tests_loom`.

use std::time::Duration;

use loom::sync::Arc;

use super::*;
use crate::segment::heap::HeapSegment;
use crate::segment::layout::Geometry;

const QUEUE: Delivery = Delivery {
    broadcast: false,
    drop_oldest: false,
    history: 0,
};

fn segment(capacity: u64) -> Arc<HeapSegment> {
    segment_n(capacity, 1, 1)
}

fn segment_n(capacity: u64, senders: u32, receivers: u32) -> Arc<HeapSegment> {
    Arc::new(HeapSegment::new(
        Geometry::new(capacity, 8, 8, senders, receivers).unwrap(),
    ))
}

/// Runs a model with preemptions bounded to 3: enough for every bug of this protocol found
/// so far (a lost wake-up needs one), and it keeps each model to seconds or minutes.
fn model<F: Fn() + Sync + Send + 'static>(f: F) {
    let mut model = loom::model::Builder::new();
    model.preemption_bound = Some(3);
    model.check(f);
}

/// Blocking claim with the real waiter protocol (sleeps on the modelled futex).
fn claim_blocking(mem: &HeapSegment, p: &Producer) -> u64 {
    loop {
        if let Claim::Claimed(pos) = p.try_claim(mem).unwrap() {
            return pos;
        }
        let cell = sleeps_on(mem, Role::Sender);
        let ticket = wait::prepare(mem.control(), cell, 0);
        if let Claim::Claimed(pos) = p.try_claim(mem).unwrap() {
            wait::finish(cell, 0);
            return pos;
        }
        wait::sleep(cell, ticket, Duration::MAX);
        wait::finish(cell, 0);
    }
}

/// Blocking take with the real waiter protocol; `None` once the sender has left and the
/// ring is drained.
fn take_blocking(mem: &HeapSegment, c: &Consumer) -> Option<(u64, u32)> {
    loop {
        if let Take::Ready { pos, len } = c.try_take(mem).unwrap() {
            return Some((pos, len));
        }
        let cell = sleeps_on(mem, Role::Receiver);
        let ticket = wait::prepare(mem.control(), cell, 0);
        if let Take::Ready { pos, len } = c.try_take(mem).unwrap() {
            wait::finish(cell, 0);
            return Some((pos, len));
        }
        if peers(mem, Role::Sender, true) == Peers::Gone {
            wait::finish(cell, 0);
            return match c.try_take(mem).unwrap() {
                Take::Ready { pos, len } => Some((pos, len)),
                Take::Empty => None,
                Take::Lagged(_) => unreachable!("queues never lag"),
            };
        }
        wait::sleep(cell, ticket, Duration::MAX);
        wait::finish(cell, 0);
    }
}

fn write(mem: &HeapSegment, pos: u64, v: u64) {
    // SAFETY: a claimed slot's payload has 8 aligned bytes, owned by the producer.
    unsafe { mem.payload(pos).cast::<u64>().write(v) }
}

fn read(mem: &HeapSegment, pos: u64) -> u64 {
    // SAFETY: a taken slot's payload, owned by the consumer until released.
    unsafe { mem.payload(pos).cast::<u64>().read() }
}

/// Messages arrive complete and in order through a ring that fills and wraps, and neither
/// side ever sleeps through a wake-up (a lost one would deadlock the model).
#[test]
fn blocking_transfer_wraps_without_lost_wakeups() {
    // Three messages through two slots: the sender waits for space and the receiver for
    // data.
    model(|| {
        let mem = segment(2);
        let m = mem.clone();
        let tx = loom::thread::spawn(move || {
            let p = Producer::new(&*m, 0, QUEUE);
            for v in 1..=3u64 {
                let pos = claim_blocking(&m, &p);
                write(&m, pos, v * 11);
                p.commit(&*m, pos, 8, false);
            }
        });
        let c = Consumer::new(&*mem, 0, QUEUE);
        for v in 1..=3u64 {
            let (pos, len) = take_blocking(&mem, &c).expect("sender never leaves");
            assert_eq!(len, 8);
            assert_eq!(read(&mem, pos), v * 11);
            c.release(&*mem, pos);
        }
        tx.join().unwrap();
    });
}

/// A receiver asleep on an empty ring is woken when the sender detaches, and still gets
/// the message committed before.
#[test]
fn detach_wakes_a_sleeping_receiver_after_draining() {
    model(|| {
        let mem = segment(2);
        assert_eq!(attach(&*mem, Role::Sender, QUEUE).unwrap(), Some(0));
        let m = mem.clone();
        let tx = loom::thread::spawn(move || {
            let p = Producer::new(&*m, 0, QUEUE);
            let pos = claim_blocking(&m, &p);
            write(&m, pos, 5);
            p.commit(&*m, pos, 8, false);
            detach(&*m, Role::Sender, 0);
        });
        let c = Consumer::new(&*mem, 0, QUEUE);
        let (pos, _) = take_blocking(&mem, &c).expect("the committed message");
        assert_eq!(read(&mem, pos), 5);
        c.release(&*mem, pos);
        assert_eq!(take_blocking(&mem, &c), None);
        tx.join().unwrap();
    });
}

/// A loan abandoned out of order is skipped, the committed one after it is delivered.
#[test]
fn abandoned_loan_is_skipped() {
    model(|| {
        let mem = segment(2);
        let m = mem.clone();
        let tx = loom::thread::spawn(move || {
            let p = Producer::new(&*m, 0, QUEUE);
            let a = claim_blocking(&m, &p);
            let b = claim_blocking(&m, &p);
            write(&m, b, 9);
            p.commit(&*m, b, 8, false);
            p.commit(&*m, a, 0, true);
        });
        let c = Consumer::new(&*mem, 0, QUEUE);
        let (pos, _) = take_blocking(&mem, &c).unwrap();
        assert_eq!(read(&mem, pos), 9);
        c.release(&*mem, pos);
        tx.join().unwrap();
    });
}

/// Two senders claim concurrently with compare-and-swap: both messages arrive exactly once.
#[test]
fn two_senders_commit_exactly_once() {
    model(|| {
        let mem = segment_n(2, 2, 1);
        let senders: Vec<_> = (0..2u32)
            .map(|i| {
                let m = mem.clone();
                loom::thread::spawn(move || {
                    let p = Producer::new(&*m, i, QUEUE);
                    let pos = claim_blocking(&m, &p);
                    write(&m, pos, 100 + i as u64);
                    p.commit(&*m, pos, 8, false);
                })
            })
            .collect();
        let c = Consumer::new(&*mem, 0, QUEUE);
        let mut got = Vec::new();
        for _ in 0..2 {
            let (pos, _) = take_blocking(&mem, &c).unwrap();
            got.push(read(&mem, pos));
            c.release(&*mem, pos);
        }
        got.sort_unstable();
        assert_eq!(got, vec![100, 101]);
        for s in senders {
            s.join().unwrap();
        }
    });
}

/// A receiver reclaims a dead sender's loan while another sender is sending: only the dead
/// sender's slot is touched, and the live sender's message arrives.
#[test]
fn reclaiming_a_dead_sender_spares_the_live_one() {
    model(|| {
        let mem = segment_n(4, 2, 1);
        assert_eq!(attach(&*mem, Role::Sender, QUEUE).unwrap(), Some(0));
        assert_eq!(attach(&*mem, Role::Sender, QUEUE).unwrap(), Some(1));
        let dead = Producer::new(&*mem, 0, QUEUE);
        let Claim::Claimed(_) = dead.try_claim(&*mem).unwrap() else {
            panic!("an empty ring has room")
        };
        mem.disown(Role::Sender, 0); // killed while holding the loan
        let m = mem.clone();
        let live = loom::thread::spawn(move || {
            let p = Producer::new(&*m, 1, QUEUE);
            let pos = claim_blocking(&m, &p);
            write(&m, pos, 7);
            p.commit(&*m, pos, 8, false);
        });
        let c = Consumer::new(&*mem, 0, QUEUE);
        let (pos, _) = take_blocking(&mem, &c).unwrap();
        assert_eq!(read(&mem, pos), 7);
        c.release(&*mem, pos);
        live.join().unwrap();
    });
}

/// Broadcast with DropOldest: a sender lapping the ring never writes the payload of a slot
/// that a subscriber is reading in place (the claim/pin handshake), and the subscriber
/// never takes the header of the empty commit that the sender writes there instead.
#[test]
fn drop_oldest_never_writes_a_pinned_payload() {
    let drop = Delivery {
        broadcast: true,
        drop_oldest: true,
        history: 0,
    };
    // A sender skipping pinned slots and a subscriber stepping over the skipped positions
    // can chase each other for as long as the scheduler lets them: the preemption bound
    // keeps that finite.
    model(move || {
        let mem = segment_n(2, 1, 1);
        let sub = attach(&*mem, Role::Receiver, drop).unwrap().unwrap();
        let c = Consumer::new(&*mem, sub, drop);
        let p = Producer::new(&*mem, 0, drop);
        let Claim::Claimed(pos) = p.try_claim(&*mem).unwrap() else {
            panic!()
        };
        write(&mem, pos, 1);
        p.commit(&*mem, pos, 8, false);
        let m = mem.clone();
        let tx = loom::thread::spawn(move || {
            let p = Producer::new(&*m, 0, drop);
            for v in 2..=3u64 {
                if let Claim::Claimed(pos) = p.try_claim(&*m).unwrap() {
                    write(&m, pos, v);
                    p.commit(&*m, pos, 8, false);
                }
            }
        });
        if let Take::Ready { pos, len } = c.try_take(&*mem).unwrap() {
            // The header too is the message's, never that of the empty commit a lapping
            // sender writes into a pinned slot (found by `tests/crash_matrix.rs`).
            assert_eq!(len, 8, "the length of a skipped position was delivered");
            let first = read(&mem, pos);
            loom::thread::yield_now();
            assert_eq!(read(&mem, pos), first, "payload changed while pinned");
            c.release(&*mem, pos);
        }
        tx.join().unwrap();
    });
}
