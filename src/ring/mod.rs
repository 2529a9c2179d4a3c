//! The lock-free ring: positions, slot sequence numbers, loans and releases.
//!
//! Each slot carries a Vyukov sequence number in the same cache line as the start of its
//! payload. For position `pos` (slot `pos & mask`):
//!
//! | `seq`              | meaning                                              |
//! |--------------------|------------------------------------------------------|
//! | `pos`              | free: the sender may claim it                         |
//! | `pos + 1`          | committed: the receiver may take it                   |
//! | `pos + capacity`   | released: free for position `pos + capacity`          |
//!
//! The sender polls only the slot it is about to claim, the receiver only the slot it is
//! about to take: neither reads the other's cursor on the fast path, so a busy stream moves
//! one cache line per slot. `tail`/`head` in the control block record the cursors for
//! recovery and observation only.
//!
//! SYNC POINT: the sender's `Release` store of `pos + 1` pairs with the receiver's `Acquire`
//! load (the payload written before is visible); the receiver's `Release` store of
//! `pos + capacity` pairs with the sender's `Acquire` load (the receiver's reads finish
//! before the sender overwrites the slot).
//!
//! Every sequence number read is checked against the few values the protocol allows; any
//! other value is corruption (a foreign writer), reported and never followed.

pub(crate) mod wait;

#[cfg(all(test, not(shmbus_loom)))]
mod tests;
#[cfg(all(test, shmbus_loom))]
mod tests_loom;

use std::cell::Cell;

use crate::segment::layout::{slot_flags, state, WaitCell};
use crate::segment::{Memory, Role};
use crate::sync::Ordering;

/// Something in the segment that the protocol does not allow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Corruption(pub(crate) String);

/// Result of trying to claim a slot.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Claim {
    /// Position claimed; the caller writes the payload and commits (or abandons) it.
    Claimed(u64),
    /// The ring is full.
    Full,
}

/// Result of trying to take a slot.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Take {
    /// A committed message at `pos` of `len` bytes; the caller reads it and releases `pos`.
    Ready { pos: u64, len: u32 },
    /// Nothing committed yet.
    Empty,
}

/// The sending side's cursor.
pub(crate) struct Producer {
    next: Cell<u64>,
}

/// The receiving side's cursor.
pub(crate) struct Consumer {
    next: Cell<u64>,
}

/// Attaches as participant `role`: takes the first free entry, reclaims what a dead previous
/// owner of that entry left behind, and marks the entry active. Returns the entry index, or
/// `None` if every entry is owned.
pub(crate) fn attach<M: Memory>(mem: &M, role: Role) -> std::io::Result<Option<u32>> {
    let g = mem.geometry();
    let max = match role {
        Role::Sender => g.max_senders,
        Role::Receiver => g.max_receivers,
    };
    for index in 0..max {
        if !mem.try_own(role, index)? {
            continue;
        }
        let entry = mem.participant(role, index);
        let old = entry.state.load(Ordering::Acquire);
        if old & state::MASK == state::ACTIVE {
            // The previous owner died without detaching (its lock is gone). Nothing of its
            // is in flight any more: make its slots usable again.
            reclaim(mem, role, index);
        }
        let generation = (old & !state::MASK).wrapping_add(state::GENERATION);
        entry.pid.store(current_pid(), Ordering::Relaxed);
        entry
            .state
            .store(generation | state::ACTIVE, Ordering::Release);
        return Ok(Some(index));
    }
    Ok(None)
}

/// Detaches cleanly: marks the entry as left and wakes the other side so that its blocked
/// calls notice.
pub(crate) fn detach<M: Memory>(mem: &M, role: Role, index: u32) {
    let entry = mem.participant(role, index);
    let old = entry.state.load(Ordering::Relaxed);
    // SYNC POINT: Release orders every commit/release of ours before the state change; the
    // peer reads the state with Acquire and then re-checks the ring.
    entry
        .state
        .store((old & !state::MASK) | state::LEFT, Ordering::Release);
    wait::finish(sleeps_on(mem, role), index);
    wait::wake_all(sleeps_on(mem, other(role)));
    mem.disown(role, index);
}

/// The wait cell that participants of `role` sleep on.
pub(crate) fn sleeps_on<M: Memory>(mem: &M, role: Role) -> &WaitCell {
    let c = mem.control();
    match role {
        Role::Sender => &c.space.0,
        Role::Receiver => &c.data.0,
    }
}

/// The other role.
pub(crate) fn other(role: Role) -> Role {
    match role {
        Role::Sender => Role::Receiver,
        Role::Receiver => Role::Sender,
    }
}

fn current_pid() -> u32 {
    #[cfg(not(shmbus_loom))]
    {
        crate::sys::pid()
    }
    #[cfg(shmbus_loom)]
    {
        1
    }
}

/// Makes the slots that a dead participant held usable again.
///
/// * A dead sender may have claimed positions it never committed: they are committed empty
///   (`SKIP`), so the receiver steps over them. Committed messages stay.
/// * A dead receiver may have taken messages it never released: they are released (the
///   receiver that took them is gone; redelivering them out of order would break FIFO).
///
/// Called by the new owner of the dead participant's entry; with one participant per role,
/// no one else moves that role's cursor meanwhile.
fn reclaim<M: Memory>(mem: &M, role: Role, index: u32) {
    let g = mem.geometry();
    let c = mem.control();
    match role {
        Role::Sender => {
            let tail = c.tail.0.load(Ordering::Acquire);
            for pos in tail.saturating_sub(g.capacity)..tail {
                let slot = mem.slot(pos);
                if slot.seq.load(Ordering::Acquire) == pos {
                    slot.len.store(0, Ordering::Relaxed);
                    slot.flags.store(slot_flags::SKIP, Ordering::Relaxed);
                    slot.seq.store(pos + 1, Ordering::Release);
                }
            }
        }
        Role::Receiver => {
            let head = c.head.0.load(Ordering::Acquire);
            for pos in head.saturating_sub(g.capacity)..head {
                let slot = mem.slot(pos);
                if slot.seq.load(Ordering::Acquire) == pos + 1 {
                    slot.seq.store(pos + g.capacity, Ordering::Release);
                }
            }
        }
    }
    // A sleeper that died left its bit set; clear it so that wakers stop making calls.
    wait::finish(sleeps_on(mem, role), index);
    wait::wake_all(&c.data.0);
    wait::wake_all(&c.space.0);
}

/// Recovers a segment left behind by processes that are all gone, before anyone attaches:
/// reclaims what every participant left in flight and forgets them, so the next session
/// starts as if newly created but keeps every committed message.
///
/// The caller must be alone in the segment (it holds the segment exclusively).
pub(crate) fn recover_left_behind<M: Memory>(mem: &M) {
    let g = mem.geometry();
    for (role, max) in [
        (Role::Sender, g.max_senders),
        (Role::Receiver, g.max_receivers),
    ] {
        for index in 0..max {
            let entry = mem.participant(role, index);
            let s = entry.state.load(Ordering::Acquire);
            if s & state::MASK == state::ACTIVE {
                reclaim(mem, role, index);
            }
            entry.state.store(s & !state::MASK, Ordering::Release);
        }
    }
    let c = mem.control();
    c.data.0.waiters.store(0, Ordering::Release);
    c.space.0.waiters.store(0, Ordering::Release);
}

/// What the peers of a role look like right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Peers {
    /// None has ever attached: wait for one.
    NeverAttached,
    /// At least one is attached (as far as the shared state says).
    Attached,
    /// All that attached have left or died.
    Gone,
}

/// Reads the participant table of `role`. When `check_liveness` is set, entries that say
/// "active" but whose owner no longer holds the entry (the process died) are marked dead.
pub(crate) fn peers<M: Memory>(mem: &M, role: Role, check_liveness: bool) -> Peers {
    let g = mem.geometry();
    let max = match role {
        Role::Sender => g.max_senders,
        Role::Receiver => g.max_receivers,
    };
    let mut seen = false;
    for index in 0..max {
        let entry = mem.participant(role, index);
        let s = entry.state.load(Ordering::Acquire);
        match s & state::MASK {
            state::FREE => {}
            state::ACTIVE => {
                if !check_liveness || mem.owned_by_other(role, index) {
                    return Peers::Attached;
                }
                // Dead: record it, unless the entry changed meanwhile (a new owner).
                let _ = entry.state.compare_exchange(
                    s,
                    (s & !state::MASK) | state::DEAD,
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                );
                seen = true;
            }
            _ => seen = true,
        }
    }
    if seen {
        Peers::Gone
    } else {
        Peers::NeverAttached
    }
}

impl Producer {
    pub(crate) fn new<M: Memory>(mem: &M) -> Producer {
        Producer {
            next: Cell::new(mem.control().tail.0.load(Ordering::Acquire)),
        }
    }

    /// Tries to claim the next position.
    #[inline]
    pub(crate) fn try_claim<M: Memory>(&self, mem: &M) -> Result<Claim, Corruption> {
        let pos = self.next.get();
        let cap = mem.geometry().capacity;
        let seq = mem.slot(pos).seq.load(Ordering::Acquire);
        if seq == pos {
            self.next.set(pos + 1);
            mem.control().tail.0.store(pos + 1, Ordering::Relaxed);
            Ok(Claim::Claimed(pos))
        } else if seq.wrapping_add(cap) == pos.wrapping_add(1) || seq.wrapping_add(cap) == pos {
            // Still holds the message of the previous lap (unread, or loaned by us and not
            // committed yet).
            Ok(Claim::Full)
        } else {
            Err(Corruption(format!(
                "slot for position {pos} has sequence {seq}, expected {pos} (free) or {} (full)",
                pos.wrapping_sub(cap).wrapping_add(1)
            )))
        }
    }

    /// Publishes a claimed position. `len` bytes of payload were written (or, with
    /// `skip`, nothing: the receiver steps over it). Returns whether a wake-up was issued.
    #[inline]
    pub(crate) fn commit<M: Memory>(&self, mem: &M, pos: u64, len: u32, skip: bool) -> bool {
        let slot = mem.slot(pos);
        slot.len.store(len, Ordering::Relaxed);
        slot.flags
            .store(if skip { slot_flags::SKIP } else { 0 }, Ordering::Relaxed);
        slot.seq.store(pos + 1, Ordering::Release);
        let c = mem.control();
        wait::notify(c, &c.data.0)
    }
}

impl Consumer {
    pub(crate) fn new<M: Memory>(mem: &M) -> Consumer {
        Consumer {
            next: Cell::new(mem.control().head.0.load(Ordering::Acquire)),
        }
    }

    /// Tries to take the next committed message. Slots committed empty (`SKIP`) are released
    /// and stepped over.
    #[inline]
    pub(crate) fn try_take<M: Memory>(&self, mem: &M) -> Result<Take, Corruption> {
        let g = mem.geometry();
        loop {
            let pos = self.next.get();
            let slot = mem.slot(pos);
            let seq = slot.seq.load(Ordering::Acquire);
            if seq == pos + 1 {
                let len = slot.len.load(Ordering::Relaxed);
                let flags = slot.flags.load(Ordering::Relaxed);
                self.next.set(pos + 1);
                mem.control().head.0.store(pos + 1, Ordering::Relaxed);
                if flags & slot_flags::SKIP != 0 {
                    self.release(mem, pos);
                    continue;
                }
                if len > g.max_message {
                    self.release(mem, pos);
                    return Err(Corruption(format!(
                        "message at position {pos} claims {len} bytes, the slot holds {}",
                        g.max_message
                    )));
                }
                return Ok(Take::Ready { pos, len });
            }
            // `pos`: not written yet; `pos - capacity + 1`: our own earlier message in this
            // slot is still borrowed.
            if seq == pos || seq.wrapping_add(g.capacity) == pos + 1 {
                return Ok(Take::Empty);
            }
            return Err(Corruption(format!(
                "slot for position {pos} has sequence {seq}, expected {pos} (empty) or {} (ready)",
                pos + 1
            )));
        }
    }

    /// Frees a taken position for the sender. Returns whether a wake-up was issued.
    #[inline]
    pub(crate) fn release<M: Memory>(&self, mem: &M, pos: u64) -> bool {
        let cap = mem.geometry().capacity;
        mem.slot(pos).seq.store(pos + cap, Ordering::Release);
        let c = mem.control();
        wait::notify(c, &c.space.0)
    }
}
