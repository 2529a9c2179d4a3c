//! loom models of the ring and of the waiter protocol, run on the heap segment:
//! `RUSTFLAGS="--cfg shmbus_loom" cargo test --release --lib ring::tests_loom`.

use std::time::Duration;

use loom::sync::Arc;

use super::*;
use crate::segment::heap::HeapSegment;
use crate::segment::layout::Geometry;

fn segment(capacity: u64) -> Arc<HeapSegment> {
    Arc::new(HeapSegment::new(
        Geometry::new(capacity, 8, 8, 1, 1).unwrap(),
    ))
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
    let mut model = loom::model::Builder::new();
    // Three messages through two slots: the sender waits for space and the receiver for
    // data. Bounding preemptions keeps the search to minutes; lost wake-ups need only one.
    model.preemption_bound = Some(3);
    model.check(|| {
        let mem = segment(2);
        let m = mem.clone();
        let tx = loom::thread::spawn(move || {
            let p = Producer::new(&*m);
            for v in 1..=3u64 {
                let pos = claim_blocking(&m, &p);
                write(&m, pos, v * 11);
                p.commit(&*m, pos, 8, false);
            }
        });
        let c = Consumer::new(&*mem);
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
    loom::model(|| {
        let mem = segment(2);
        assert_eq!(attach(&*mem, Role::Sender).unwrap(), Some(0));
        let m = mem.clone();
        let tx = loom::thread::spawn(move || {
            let p = Producer::new(&*m);
            let pos = claim_blocking(&m, &p);
            write(&m, pos, 5);
            p.commit(&*m, pos, 8, false);
            detach(&*m, Role::Sender, 0);
        });
        let c = Consumer::new(&*mem);
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
    loom::model(|| {
        let mem = segment(2);
        let m = mem.clone();
        let tx = loom::thread::spawn(move || {
            let p = Producer::new(&*m);
            let a = claim_blocking(&m, &p);
            let b = claim_blocking(&m, &p);
            write(&m, b, 9);
            p.commit(&*m, b, 8, false);
            p.commit(&*m, a, 0, true);
        });
        let c = Consumer::new(&*mem);
        let (pos, _) = take_blocking(&mem, &c).unwrap();
        assert_eq!(read(&mem, pos), 9);
        c.release(&*mem, pos);
        tx.join().unwrap();
    });
}
