//! Ring protocol tests on the heap segment (threads in one process).

use std::sync::Arc;

use super::*;
use crate::segment::heap::HeapSegment;
use crate::segment::layout::Geometry;

fn segment(capacity: u64) -> HeapSegment {
    HeapSegment::new(Geometry::new(capacity, 8, 8, 1, 1).unwrap())
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
    }
}

#[test]
fn fills_drains_and_wraps() {
    let mem = segment(4);
    let (p, c) = (Producer::new(&mem), Consumer::new(&mem));
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
    let (p, c) = (Producer::new(&mem), Consumer::new(&mem));
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
    let (p, c) = (Producer::new(&mem), Consumer::new(&mem));
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
    let (p, c) = (Producer::new(&mem), Consumer::new(&mem));
    mem.slot(0).seq.store(12345, Ordering::Relaxed);
    assert!(c.try_take(&mem).is_err());
    assert!(p.try_claim(&mem).is_err());
    let mem = segment(4);
    let (p, c) = (Producer::new(&mem), Consumer::new(&mem));
    assert!(send(&mem, &p, 1));
    mem.slot(0).len.store(1 << 20, Ordering::Relaxed);
    let err = c.try_take(&mem).unwrap_err();
    assert!(err.0.contains("claims"), "{err:?}");
}

#[test]
fn dead_sender_loans_are_reclaimed() {
    let mem = segment(4);
    assert_eq!(attach(&mem, Role::Sender).unwrap(), Some(0));
    let rx = attach(&mem, Role::Receiver).unwrap().unwrap();
    let (p, c) = (Producer::new(&mem), Consumer::new(&mem));
    assert!(send(&mem, &p, 1));
    let Claim::Claimed(_) = p.try_claim(&mem).unwrap() else {
        panic!()
    };
    // The sender "dies": its entry lock goes away, its state stays ACTIVE.
    mem.disown(Role::Sender, 0);
    assert_eq!(peers(&mem, Role::Sender, true), Peers::Gone);
    assert_eq!(recv(&mem, &c), Some(1));
    assert_eq!(recv(&mem, &c), None, "the dead loan still blocks");
    // A new sender takes over the entry and reclaims the dead loan.
    mem.participant(Role::Sender, 0)
        .state
        .store(state::ACTIVE, Ordering::Relaxed);
    assert_eq!(attach(&mem, Role::Sender).unwrap(), Some(0));
    let p2 = Producer::new(&mem);
    assert!(send(&mem, &p2, 2));
    assert_eq!(recv(&mem, &c), Some(2));
    assert_eq!(peers(&mem, Role::Sender, true), Peers::Attached);
    detach(&mem, Role::Receiver, rx);
    assert_eq!(peers(&mem, Role::Receiver, false), Peers::Gone);
}

#[test]
fn dead_receiver_samples_are_reclaimed() {
    let mem = segment(2);
    let (p, c) = (Producer::new(&mem), Consumer::new(&mem));
    assert_eq!(attach(&mem, Role::Receiver).unwrap(), Some(0));
    assert!(send(&mem, &p, 1));
    assert!(send(&mem, &p, 2));
    let Take::Ready { .. } = c.try_take(&mem).unwrap() else {
        panic!()
    };
    mem.disown(Role::Receiver, 0); // dies holding the sample
    assert!(!send(&mem, &p, 3));
    assert_eq!(attach(&mem, Role::Receiver).unwrap(), Some(0));
    assert!(send(&mem, &p, 3), "the dead receiver's slot was released");
    let c2 = Consumer::new(&mem);
    assert_eq!(recv(&mem, &c2), Some(2));
    assert_eq!(recv(&mem, &c2), Some(3));
}

#[test]
fn only_one_participant_per_role() {
    let mem = segment(2);
    assert_eq!(attach(&mem, Role::Sender).unwrap(), Some(0));
    assert_eq!(attach(&mem, Role::Sender).unwrap(), None);
    assert_eq!(peers(&mem, Role::Receiver, false), Peers::NeverAttached);
}

#[test]
fn left_behind_segment_keeps_committed_messages() {
    let mem = segment(4);
    attach(&mem, Role::Sender).unwrap();
    let p = Producer::new(&mem);
    assert!(send(&mem, &p, 41));
    let Claim::Claimed(_) = p.try_claim(&mem).unwrap() else {
        panic!()
    };
    mem.disown(Role::Sender, 0);
    recover_left_behind(&mem);
    assert_eq!(peers(&mem, Role::Sender, true), Peers::NeverAttached);
    let c = Consumer::new(&mem);
    assert_eq!(recv(&mem, &c), Some(41));
    assert_eq!(recv(&mem, &c), None);
}

#[test]
fn threads_stream_in_order() {
    const N: u64 = 200_000;
    let mem = Arc::new(segment(64));
    let m = mem.clone();
    let producer = std::thread::spawn(move || {
        let p = Producer::new(&*m);
        for i in 0..N {
            while !send(&m, &p, i) {
                std::hint::spin_loop();
            }
        }
    });
    let c = Consumer::new(&*mem);
    for i in 0..N {
        loop {
            if let Some(v) = recv(&mem, &c) {
                assert_eq!(v, i);
                break;
            }
            std::hint::spin_loop();
        }
    }
    producer.join().unwrap();
}
