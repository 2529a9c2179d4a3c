//! Ring protocol tests on the heap segment (threads in one process).

use std::sync::Arc;

use super::*;
use crate::segment::heap::HeapSegment;
use crate::segment::layout::slot_flags;
use crate::segment::layout::Geometry;

const QUEUE: Delivery = Delivery {
    broadcast: false,
    drop_oldest: false,
    history: 0,
};

fn segment(capacity: u64) -> HeapSegment {
    HeapSegment::new(Geometry::new(capacity, 8, 8, 1, 1).unwrap())
}

fn segment_n(capacity: u64, senders: u32, receivers: u32) -> HeapSegment {
    HeapSegment::new(Geometry::new(capacity, 8, 8, senders, receivers).unwrap())
}

fn producer(mem: &HeapSegment) -> Producer {
    Producer::new(mem, 0, QUEUE)
}

fn consumer(mem: &HeapSegment) -> Consumer {
    Consumer::new(mem, 0, QUEUE)
}

fn write_u64(mem: &HeapSegment, pos: u64, v: u64) {
    // SAFETY: the claimed slot's payload holds 8 bytes, aligned to 8.
    unsafe { mem.payload(pos).cast::<u64>().write(v) }
}

fn read_u64(mem: &HeapSegment, pos: u64) -> u64 {
    // SAFETY: as above, for a taken slot.
    unsafe { mem.payload(pos).cast::<u64>().read() }
}

fn send(mem: &HeapSegment, p: &Producer, v: u64) -> bool {
    match p.try_claim(mem).unwrap() {
        Claim::Claimed(pos) => {
            write_u64(mem, pos, v);
            p.commit(mem, pos, 8, false);
            true
        }
        Claim::Full => false,
    }
}

fn recv(mem: &HeapSegment, c: &Consumer) -> Option<u64> {
    match c.try_take(mem).unwrap() {
        Take::Ready { pos, len } => {
            assert_eq!(len, 8);
            let v = read_u64(mem, pos);
            c.release(mem, pos);
            Some(v)
        }
        Take::Empty => None,
        Take::Lagged(n) => panic!("a queue never lags ({n})"),
    }
}

#[test]
fn fills_drains_and_wraps() {
    let mem = segment(4);
    let (p, c) = (producer(&mem), consumer(&mem));
    for lap in 0..3u64 {
        for i in 0..4 {
            assert!(send(&mem, &p, lap * 10 + i));
        }
        assert!(!send(&mem, &p, 99), "a full ring accepts nothing");
        for i in 0..4 {
            assert_eq!(recv(&mem, &c), Some(lap * 10 + i));
        }
        assert_eq!(recv(&mem, &c), None);
    }
    assert_eq!(mem.control().tail.0.load(Ordering::Relaxed), 12);
    assert_eq!(mem.control().head.0.load(Ordering::Relaxed), 12);
}

#[test]
fn held_samples_and_loans_block_their_slot_only() {
    let mem = segment(2);
    let (p, c) = (producer(&mem), consumer(&mem));
    assert!(send(&mem, &p, 1));
    // Take without releasing: the sender cannot reuse that slot.
    let Take::Ready { pos: held, .. } = c.try_take(&mem).unwrap() else {
        panic!("expected a message")
    };
    assert!(send(&mem, &p, 2));
    assert!(!send(&mem, &p, 3));
    assert_eq!(recv(&mem, &c), Some(2));
    // Our own borrowed message of the previous lap reads as "empty", not corrupt.
    assert_eq!(c.try_take(&mem).unwrap(), Take::Empty);
    c.release(&mem, held);
    assert!(send(&mem, &p, 3));
    assert_eq!(recv(&mem, &c), Some(3));
}

#[test]
fn skipped_slots_are_stepped_over() {
    let mem = segment(4);
    let (p, c) = (producer(&mem), consumer(&mem));
    let Claim::Claimed(a) = p.try_claim(&mem).unwrap() else {
        panic!()
    };
    let Claim::Claimed(b) = p.try_claim(&mem).unwrap() else {
        panic!()
    };
    write_u64(&mem, b, 7);
    p.commit(&mem, b, 8, false);
    // `a` is still loaned: the receiver waits for it (FIFO)...
    assert_eq!(recv(&mem, &c), None);
    // ...and steps over it once it is abandoned.
    p.commit(&mem, a, 0, true);
    assert_eq!(recv(&mem, &c), Some(7));
    assert_eq!(recv(&mem, &c), None);
}

#[test]
fn foreign_sequence_numbers_are_corruption() {
    let mem = segment(4);
    let (p, c) = (producer(&mem), consumer(&mem));
    mem.slot(0).seq.store(12345, Ordering::Relaxed);
    assert!(c.try_take(&mem).is_err());
    assert!(p.try_claim(&mem).is_err());
    let mem = segment(4);
    let (p, c) = (producer(&mem), consumer(&mem));
    assert!(send(&mem, &p, 1));
    mem.slot(0).len.store(1 << 20, Ordering::Relaxed);
    let err = c.try_take(&mem).unwrap_err();
    assert!(err.0.contains("claims"), "{err:?}");
}

#[test]
fn dead_sender_loans_are_reclaimed() {
    let mem = segment(4);
    assert_eq!(attach(&mem, Role::Sender, QUEUE).unwrap(), Some(0));
    let rx = attach(&mem, Role::Receiver, QUEUE).unwrap().unwrap();
    let (p, c) = (producer(&mem), consumer(&mem));
    assert!(send(&mem, &p, 1));
    let Claim::Claimed(_) = p.try_claim(&mem).unwrap() else {
        panic!()
    };
    assert!(send(&mem, &p, 3));
    assert_eq!(recv(&mem, &c), Some(1));
    assert_eq!(
        recv(&mem, &c),
        None,
        "a live loan blocks what comes after it"
    );
    // The sender "dies": its entry lock goes away, its state stays ACTIVE.
    mem.disown(Role::Sender, 0);
    assert_eq!(peers(&mem, Role::Sender, true), Peers::Gone);
    assert_eq!(recv(&mem, &c), Some(3), "the dead loan was committed empty");
    assert_eq!(recv(&mem, &c), None);
    // A new sender takes the entry.
    assert_eq!(attach(&mem, Role::Sender, QUEUE).unwrap(), Some(0));
    let p2 = producer(&mem);
    assert!(send(&mem, &p2, 4));
    assert_eq!(recv(&mem, &c), Some(4));
    assert_eq!(peers(&mem, Role::Sender, true), Peers::Attached);
    detach(&mem, Role::Receiver, rx);
    assert_eq!(peers(&mem, Role::Receiver, false), Peers::Gone);
}

#[test]
fn dead_sender_found_by_takeover_is_reclaimed() {
    let mem = segment_n(4, 2, 1);
    assert_eq!(attach(&mem, Role::Sender, QUEUE).unwrap(), Some(0));
    let p = Producer::new(&mem, 0, QUEUE);
    let c = consumer(&mem);
    let Claim::Claimed(_) = p.try_claim(&mem).unwrap() else {
        panic!()
    };
    mem.disown(Role::Sender, 0); // dies holding the loan; nobody noticed yet
    assert_eq!(attach(&mem, Role::Sender, QUEUE).unwrap(), Some(0));
    let p2 = Producer::new(&mem, 0, QUEUE);
    assert!(send(&mem, &p2, 8));
    assert_eq!(recv(&mem, &c), Some(8));
}

#[test]
fn dead_receiver_samples_are_reclaimed() {
    let mem = segment(2);
    let (p, c) = (producer(&mem), consumer(&mem));
    assert_eq!(attach(&mem, Role::Receiver, QUEUE).unwrap(), Some(0));
    assert!(send(&mem, &p, 1));
    assert!(send(&mem, &p, 2));
    let Take::Ready { .. } = c.try_take(&mem).unwrap() else {
        panic!()
    };
    mem.disown(Role::Receiver, 0); // dies holding the sample
    assert!(!send(&mem, &p, 3));
    assert_eq!(attach(&mem, Role::Receiver, QUEUE).unwrap(), Some(0));
    assert!(send(&mem, &p, 3), "the dead receiver's slot was released");
    let c2 = consumer(&mem);
    assert_eq!(recv(&mem, &c2), Some(2));
    assert_eq!(recv(&mem, &c2), Some(3));
}

/// A receiver killed after taking a slot but before advancing the head: once it is
/// reclaimed, the slot is released and a sender reuses it for the next lap; its successor
/// (which starts from the head it left) steps over the position instead of calling the
/// slot's word corrupt. Found by `tests/crash_matrix.rs`.
#[test]
fn receiver_dead_before_advancing_the_head_is_stepped_over() {
    for receivers in [1, 2] {
        let mem = segment_n(4, 1, receivers);
        let p = producer(&mem);
        let rx = attach(&mem, Role::Receiver, QUEUE).unwrap().unwrap();
        let c = Consumer::new(&mem, rx, QUEUE);
        assert!(send(&mem, &p, 1));
        assert!(send(&mem, &p, 2));
        let Take::Ready { pos: 0, .. } = c.try_take(&mem).unwrap() else {
            panic!()
        };
        // It dies holding message 1, before its head store / head CAS took effect.
        mem.control().head.0.store(0, Ordering::Release);
        mem.disown(Role::Receiver, rx);
        assert_eq!(peers(&mem, Role::Receiver, true), Peers::Gone, "reclaimed");
        for v in 3..=5 {
            assert!(send(&mem, &p, v), "slot {v} free");
        }
        assert_eq!(
            mem.slot(0).seq.load(Ordering::Relaxed),
            5,
            "position 4 committed"
        );
        let rx2 = attach(&mem, Role::Receiver, QUEUE).unwrap().unwrap();
        let c2 = Consumer::new(&mem, rx2, QUEUE);
        for v in 2..=5 {
            assert_eq!(recv(&mem, &c2), Some(v), "{receivers} receiver(s)");
        }
        assert_eq!(recv(&mem, &c2), None);
    }
}

/// A lone sender killed after claiming a slot but before advancing the tail: its loan is
/// committed empty and released; its successor steps over the position. Found by
/// `tests/crash_matrix.rs`.
#[test]
fn lone_sender_dead_before_advancing_the_tail_is_stepped_over() {
    let mem = segment(4);
    let c = consumer(&mem);
    let tx = attach(&mem, Role::Sender, QUEUE).unwrap().unwrap();
    let p = Producer::new(&mem, tx, QUEUE);
    assert!(send(&mem, &p, 1));
    let Claim::Claimed(1) = p.try_claim(&mem).unwrap() else {
        panic!()
    };
    mem.control().tail.0.store(1, Ordering::Release); // dies before its tail store
    mem.disown(Role::Sender, tx);
    assert_eq!(peers(&mem, Role::Sender, true), Peers::Gone, "reclaimed");
    assert_eq!(recv(&mem, &c), Some(1));
    assert_eq!(recv(&mem, &c), None, "the empty loan is released");
    let tx2 = attach(&mem, Role::Sender, QUEUE).unwrap().unwrap();
    let p2 = Producer::new(&mem, tx2, QUEUE);
    assert!(send(&mem, &p2, 7));
    assert_eq!(recv(&mem, &c), Some(7));
}

#[test]
fn only_one_participant_per_role() {
    let mem = segment(2);
    assert_eq!(attach(&mem, Role::Sender, QUEUE).unwrap(), Some(0));
    assert_eq!(attach(&mem, Role::Sender, QUEUE).unwrap(), None);
    assert_eq!(peers(&mem, Role::Receiver, false), Peers::NeverAttached);
}

#[test]
fn left_behind_segment_keeps_committed_messages() {
    let mem = segment(4);
    attach(&mem, Role::Sender, QUEUE).unwrap();
    let p = producer(&mem);
    assert!(send(&mem, &p, 41));
    let Claim::Claimed(_) = p.try_claim(&mem).unwrap() else {
        panic!()
    };
    mem.disown(Role::Sender, 0);
    recover_left_behind(&mem);
    assert_eq!(peers(&mem, Role::Sender, true), Peers::NeverAttached);
    let c = consumer(&mem);
    assert_eq!(recv(&mem, &c), Some(41));
    assert_eq!(recv(&mem, &c), None);
}

#[test]
fn threads_stream_in_order() {
    // Under Miri (which checks every access for data races and aliasing) a few laps do.
    const N: u64 = if cfg!(miri) { 300 } else { 200_000 };
    let mem = Arc::new(segment(64));
    let m = mem.clone();
    let producer = std::thread::spawn(move || {
        let p = producer(&m);
        for i in 0..N {
            while !send(&m, &p, i) {
                std::thread::yield_now();
            }
        }
    });
    let c = consumer(&mem);
    for i in 0..N {
        loop {
            if let Some(v) = recv(&mem, &c) {
                assert_eq!(v, i);
                break;
            }
            std::thread::yield_now();
        }
    }
    producer.join().unwrap();
}

const BROADCAST: Delivery = Delivery {
    broadcast: true,
    drop_oldest: false,
    history: 0,
};

fn read_all(mem: &HeapSegment, c: &Consumer) -> (Vec<u64>, u64) {
    let (mut got, mut lagged) = (Vec::new(), 0);
    loop {
        match c.try_take(mem).unwrap() {
            Take::Ready { pos, .. } => {
                got.push(read_u64(mem, pos));
                c.release(mem, pos);
            }
            Take::Lagged(n) => lagged += n,
            Take::Empty => return (got, lagged),
        }
    }
}

#[test]
fn many_senders_many_receivers_deliver_exactly_once() {
    const SENDERS: u64 = 4;
    const PER: u64 = if cfg!(miri) { 100 } else { 20_000 };
    let mem = Arc::new(segment_n(64, 4, 4));
    let done = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut handles = Vec::new();
    for s in 0..SENDERS {
        let m = mem.clone();
        handles.push(std::thread::spawn(move || {
            let p = Producer::new(&*m, s as u32, QUEUE);
            for i in 0..PER {
                while !send(&m, &p, s << 32 | i) {
                    std::thread::yield_now();
                }
            }
        }));
    }
    let receivers: Vec<_> = (0..4u32)
        .map(|r| {
            let m = mem.clone();
            let done = done.clone();
            std::thread::spawn(move || {
                let c = Consumer::new(&*m, r, QUEUE);
                let mut got = Vec::new();
                while done.load(std::sync::atomic::Ordering::Relaxed) < SENDERS * PER {
                    match recv(&m, &c) {
                        Some(v) => {
                            got.push(v);
                            done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        None => std::thread::yield_now(),
                    }
                }
                got
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let mut all = Vec::new();
    for r in receivers {
        let got = r.join().unwrap();
        // Per-sender order holds within what each receiver saw.
        for s in 0..SENDERS {
            let mine: Vec<u64> = got.iter().filter(|v| *v >> 32 == s).copied().collect();
            assert!(
                mine.windows(2).all(|w| w[0] < w[1]),
                "sender {s} out of order"
            );
        }
        all.extend(got);
    }
    all.sort_unstable();
    let expected: Vec<u64> = (0..SENDERS)
        .flat_map(|s| (0..PER).map(move |i| s << 32 | i))
        .collect();
    assert_eq!(all, expected, "every message exactly once");
}

#[test]
fn broadcast_every_subscriber_sees_every_message() {
    let mem = segment_n(8, 1, 3);
    let subs: Vec<Consumer> = (0..3)
        .map(|_| {
            let i = attach(&mem, Role::Receiver, BROADCAST).unwrap().unwrap();
            Consumer::new(&mem, i, BROADCAST)
        })
        .collect();
    let p = Producer::new(&mem, 0, BROADCAST);
    let mut seen = vec![Vec::new(); 3];
    for v in 0..100 {
        while !send(&mem, &p, v) {
            // Full until the slowest subscriber reads: drain all of them.
            for (i, c) in subs.iter().enumerate() {
                let (got, lagged) = read_all(&mem, c);
                assert_eq!(lagged, 0);
                seen[i].extend(got);
            }
        }
    }
    for (i, c) in subs.iter().enumerate() {
        seen[i].extend(read_all(&mem, c).0);
        assert_eq!(seen[i], (0..100).collect::<Vec<_>>(), "subscriber {i}");
    }
}

#[test]
fn broadcast_block_waits_for_the_slowest_subscriber() {
    let mem = segment_n(4, 1, 2);
    let fast = Consumer::new(
        &mem,
        attach(&mem, Role::Receiver, BROADCAST).unwrap().unwrap(),
        BROADCAST,
    );
    let slow = Consumer::new(
        &mem,
        attach(&mem, Role::Receiver, BROADCAST).unwrap().unwrap(),
        BROADCAST,
    );
    let p = Producer::new(&mem, 0, BROADCAST);
    for v in 0..4 {
        assert!(send(&mem, &p, v));
    }
    assert_eq!(read_all(&mem, &fast).0, vec![0, 1, 2, 3]);
    assert!(
        !send(&mem, &p, 4),
        "the slow subscriber has not read position 0"
    );
    let Take::Ready { pos, .. } = slow.try_take(&mem).unwrap() else {
        panic!()
    };
    assert!(!send(&mem, &p, 4), "it is still reading it in place");
    slow.release(&mem, pos);
    assert!(send(&mem, &p, 4));
    // A subscriber that dies no longer holds the sender back once found dead.
    let dead = attach(&mem, Role::Receiver, BROADCAST).unwrap();
    assert!(dead.is_none(), "only two subscriber entries");
    mem.disown(Role::Receiver, 1);
    assert_eq!(peers(&mem, Role::Receiver, true), Peers::Attached);
    assert_eq!(read_all(&mem, &fast).0, vec![4]);
    for v in 5..9 {
        assert!(send(&mem, &p, v), "the dead subscriber's cursor is ignored");
    }
}

#[test]
fn broadcast_drop_oldest_reports_exact_lag_and_never_overwrites_a_pinned_slot() {
    let drop = Delivery {
        broadcast: true,
        drop_oldest: true,
        history: 0,
    };
    let mem = segment_n(8, 1, 2);
    let reader = Consumer::new(
        &mem,
        attach(&mem, Role::Receiver, drop).unwrap().unwrap(),
        drop,
    );
    let holder = Consumer::new(
        &mem,
        attach(&mem, Role::Receiver, drop).unwrap().unwrap(),
        drop,
    );
    let p = Producer::new(&mem, 0, drop);
    assert!(send(&mem, &p, 1000));
    let Take::Ready { pos: held, .. } = holder.try_take(&mem).unwrap() else {
        panic!()
    };
    for v in 0..100 {
        assert!(send(&mem, &p, v), "DropOldest never waits");
    }
    assert_eq!(
        read_u64(&mem, held),
        1000,
        "a pinned payload is never overwritten"
    );
    holder.release(&mem, held);
    let (got, lagged) = read_all(&mem, &reader);
    assert!(lagged > 0);
    assert!(!got.is_empty());
    // Positions: 1 + 100 sent, plus the ones committed empty because of the pin. Every
    // message is either delivered or counted as missed, and what arrives is the newest.
    assert_eq!(*got.last().unwrap(), 99);
    assert!(got.windows(2).all(|w| w[0] < w[1]));
    let positions = mem.control().tail.0.load(Ordering::Relaxed);
    assert_eq!(
        lagged + got.len() as u64 + skipped(&mem, positions),
        positions
    );
}

/// Positions committed empty among the last `capacity` (the rest were overwritten).
fn skipped(mem: &HeapSegment, tail: u64) -> u64 {
    let cap = mem.geometry().capacity;
    (tail.saturating_sub(cap)..tail)
        .filter(|&pos| mem.slot(pos).flags.load(Ordering::Relaxed) & slot_flags::SKIP != 0)
        .count() as u64
}

#[test]
fn broadcast_history_for_late_subscribers() {
    let hist = Delivery {
        broadcast: true,
        drop_oldest: false,
        history: 3,
    };
    let mem = segment_n(8, 1, 2);
    let p = Producer::new(&mem, 0, hist);
    for v in 0..5 {
        assert!(send(&mem, &p, v));
    }
    let late = Consumer::new(
        &mem,
        attach(&mem, Role::Receiver, hist).unwrap().unwrap(),
        hist,
    );
    assert!(send(&mem, &p, 5));
    assert_eq!(read_all(&mem, &late), (vec![2, 3, 4, 5], 0));
}

#[test]
fn broadcast_block_does_not_overtake_a_subscriber_that_joins_later() {
    let mem = segment_n(4, 1, 1);
    let p = Producer::new(&mem, 0, BROADCAST);
    for v in 0..10 {
        assert!(send(&mem, &p, v), "no subscriber: never full");
    }
    let sub = Consumer::new(
        &mem,
        attach(&mem, Role::Receiver, BROADCAST).unwrap().unwrap(),
        BROADCAST,
    );
    for v in 10..14 {
        assert!(send(&mem, &p, v));
    }
    assert!(
        !send(&mem, &p, 14),
        "the new subscriber has read nothing yet"
    );
    assert_eq!(read_all(&mem, &sub), (vec![10, 11, 12, 13], 0));
}
