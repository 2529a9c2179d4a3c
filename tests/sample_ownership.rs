//! An owned sample (a message received over a copying transport, or a serialized message
//! decoded out of shared memory) drops its message exactly once: when the sample is
//! dropped, or when the value moved out by `into_inner` is. Small messages are kept in the
//! sample itself, larger ones in a box; both are covered, over a pipe and over shared
//! memory, and a message with interior mutability changed through its sample.

use std::sync::atomic::{AtomicU64, Ordering};

/// Drops of `Small` and `Large` values, by message id.
static DROPPED: [AtomicU64; 8] = [const { AtomicU64::new(0) }; 8];

fn dropped(id: u64) -> u64 {
    DROPPED[id as usize].load(Ordering::SeqCst)
}

/// A serialized message small enough to live inside the sample.
#[derive(shmbus::Message, serde::Serialize, serde::Deserialize, Debug, PartialEq)]
#[shmbus(serde)]
struct Small {
    id: u64,
    text: String,
}

impl Drop for Small {
    fn drop(&mut self) {
        DROPPED[self.id as usize].fetch_add(1, Ordering::SeqCst);
    }
}

/// A serialized message too large for that: boxed.
#[derive(shmbus::Message, serde::Serialize, serde::Deserialize, Debug, PartialEq)]
#[shmbus(serde)]
struct Large {
    id: u64,
    text: String,
    pad: [u64; 16],
}

impl Drop for Large {
    fn drop(&mut self) {
        DROPPED[self.id as usize].fetch_add(1, Ordering::SeqCst);
    }
}

/// Sends messages `first`, `first + 1`, `first + 2`; the first sample is dropped, the
/// second turned into its value, the third read through `Deref` and dropped.
fn check<T: shmbus::Message>(
    tx: &shmbus::Sender<T>,
    rx: &shmbus::Receiver<T>,
    first: u64,
    make: fn(u64) -> T,
    id_of: fn(&T) -> u64,
    text_of: fn(&T) -> &str,
) {
    for id in first..first + 3 {
        let msg = make(id);
        tx.send(msg).unwrap();
    }
    // The values sent were moved into the channel and dropped after encoding: one drop each.
    for id in first..first + 3 {
        assert_eq!(dropped(id), 1, "message {id} after sending");
    }

    let a = rx.recv().unwrap();
    assert!(!a.is_in_place());
    assert_eq!(id_of(&a), first);
    assert_eq!(text_of(&a), format!("message {first}"));
    assert_eq!(dropped(first), 1, "a live sample does not drop its message");
    drop(a);
    assert_eq!(
        dropped(first),
        2,
        "dropping the sample drops the message once"
    );

    let b = rx.recv().unwrap().into_inner();
    assert_eq!(id_of(&b), first + 1);
    assert_eq!(
        dropped(first + 1),
        1,
        "into_inner moves the message out without dropping it"
    );
    assert_eq!(text_of(&b), format!("message {}", first + 1));
    drop(b);
    assert_eq!(dropped(first + 1), 2);

    {
        let c = rx.recv().unwrap();
        assert_eq!(text_of(&c), format!("message {}", first + 2));
    }
    assert_eq!(dropped(first + 2), 2);
}

fn small(id: u64) -> Small {
    Small {
        id,
        text: format!("message {id}"),
    }
}

fn large(id: u64) -> Large {
    Large {
        id,
        text: format!("message {id}"),
        pad: [id; 16],
    }
}

#[test]
fn owned_samples_drop_their_message_exactly_once() {
    assert!(std::mem::size_of::<Small>() <= 64 && std::mem::size_of::<Large>() > 64);

    // Over a pipe (a copying transport): ids 0..3 inline, 3..6 boxed.
    let (tx, rx) = shmbus::pipe::<Small>().unwrap();
    check(&tx, &rx, 0, small, |m| m.id, |m| &m.text);
    let (tx, rx) = shmbus::pipe::<Large>().unwrap();
    check(&tx, &rx, 3, large, |m| m.id, |m| &m.text);
}

#[test]
fn serialized_samples_from_shared_memory_drop_their_message_exactly_once() {
    // Ids 6 and 7 are this test's: one message of each size through a ring.
    let name = format!("sample-ownership-{}", std::process::id());
    let opts = shmbus::Options::new();
    let tx = shmbus::Sender::<Small>::create(&name, &opts).unwrap();
    let rx = shmbus::Receiver::<Small>::open(&name, &opts).unwrap();
    tx.send(small(6)).unwrap();
    let s = rx.recv().unwrap();
    assert_eq!(s.text, "message 6");
    assert_eq!(dropped(6), 1);
    drop(s);
    assert_eq!(dropped(6), 2);
    drop((tx, rx));

    let name = format!("sample-ownership-large-{}", std::process::id());
    let tx = shmbus::Sender::<Large>::create(&name, &opts).unwrap();
    let rx = shmbus::Receiver::<Large>::open(&name, &opts).unwrap();
    tx.send(large(7)).unwrap();
    let v = rx.recv().unwrap().into_inner();
    assert_eq!((v.id, v.pad), (7, [7; 16]));
    assert_eq!(dropped(7), 1);
    drop(v);
    assert_eq!(dropped(7), 2);
}

/// A serialized message with interior mutability, kept inside the sample: changing it
/// through the sample is allowed (the inline storage is an `UnsafeCell`, so `&Sample` does
/// not promise frozen bytes) and is seen by later reads of the same sample.
#[derive(shmbus::Message, serde::Serialize, serde::Deserialize, Debug)]
#[shmbus(serde)]
struct Counter {
    hits: std::cell::Cell<u64>,
    total: AtomicU64,
}

#[test]
fn an_inline_sample_may_be_mutated_through_its_cells() {
    assert!(std::mem::size_of::<Counter>() <= 64);
    let (tx, rx) = shmbus::pipe::<Counter>().unwrap();
    tx.send(Counter {
        hits: std::cell::Cell::new(1),
        total: AtomicU64::new(10),
    })
    .unwrap();
    let s = rx.recv().unwrap();
    let before = s.hits.get();
    s.hits.set(before + 1);
    s.total.fetch_add(5, Ordering::SeqCst);
    assert_eq!((s.hits.get(), s.total.load(Ordering::SeqCst)), (2, 15));
    let v = s.into_inner();
    assert_eq!((v.hits.get(), v.total.into_inner()), (2, 15));
}
