//! The lock-free ring: positions, slot sequence words, loans, takes and releases.
//!
//! Every slot carries a sequence word in the same cache line as the start of its payload
//! (Vyukov / Disruptor style). Its low 56 bits are a position, its top byte a tag: whether a
//! sender has claimed the slot, or a receiver has taken it, and which participant did. For
//! position `pos` (slot `pos & mask`) the word goes through:
//!
//! | word                    | meaning                                                   |
//! |-------------------------|-----------------------------------------------------------|
//! | `pos`                   | free: a sender may claim it                               |
//! | `pos` + CLAIMED(i)      | sender `i` is writing it (a loan)                          |
//! | `pos + 1`               | committed: receivers may take it                          |
//! | `pos + 1` + TAKEN(j)    | queue mode: receiver `j` is reading it in place           |
//! | `pos + capacity`        | queue mode: released, free for the next lap              |
//!
//! Claims and takes are a compare-and-swap on the slot's own word (a plain store when the
//! channel allows one participant of that role), so every slot in flight names its owner and
//! a dead participant's slots can be reclaimed exactly. `tail`/`head` in the control block
//! are shared hints of the next position, advanced by whoever claimed or took it.
//!
//! **Broadcast** channels never tag a slot on the receiving side: a committed slot stays
//! `pos + 1` until a sender claims it for `pos + capacity`. Each subscriber keeps its own
//! cursor (in its participant entry) and, while it reads a message in place, sets its bit in
//! the slot's `pins`. A sender never writes the payload of a pinned slot (it commits the
//! position empty instead), and in `Block` mode it does not claim a slot until every active
//! subscriber's cursor has passed the slot's old message.
//!
//! SYNC POINT: a commit is a `Release` store of `pos + 1` and pairs with the `Acquire` load
//! of whoever takes or reads it (the payload is visible); a release of `pos + capacity`, and
//! a subscriber's cursor store, pair with the `Acquire` load of the next claimer (the
//! reader is done before the payload is overwritten). The claim/pin handshake of broadcast
//! channels is a Dekker pattern made of read-modify-writes on both sides (see
//! [`Producer::try_claim`]).
//!
//! Positions are 56 bits: at 100 million messages per second a channel would run out after
//! 22 years. Every word read is checked against the states above; any other value is
//! corruption (a foreign writer), reported and never followed.

pub(crate) mod wait;

#[cfg(all(test, not(shmbus_loom)))]
mod tests;
#[cfg(all(test, shmbus_loom))]
mod tests_loom;

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;

use crate::segment::layout::{slot_flags, state, Counters, SlotHeader, WaitCell};
use crate::segment::{Memory, Role};
use crate::sync::Ordering;

pub(crate) const POS_BITS: u32 = 56;
pub(crate) const POS_MASK: u64 = (1 << POS_BITS) - 1;
const CLAIMED: u64 = 0x80;
const TAKEN: u64 = 0x40;
const OWNER_MASK: u64 = 0x3f;

fn tagged(pos: u64, tag: u64, owner: u32) -> u64 {
    pos | ((tag | owner as u64) << POS_BITS)
}

/// A sequence word split into its position and tag.
#[derive(Clone, Copy)]
struct Word {
    pos: u64,
    claimed: bool,
    taken: bool,
    owner: u32,
}

impl Word {
    fn of(seq: u64) -> Word {
        let tag = seq >> POS_BITS;
        Word {
            pos: seq & POS_MASK,
            claimed: tag & CLAIMED != 0,
            taken: tag & TAKEN != 0,
            owner: (tag & OWNER_MASK) as u32,
        }
    }

    fn plain(self) -> bool {
        !self.claimed && !self.taken
    }
}

/// Something in the segment that the protocol does not allow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Corruption(pub(crate) String);

fn corrupt(what: &str, pos: u64, seq: u64) -> Corruption {
    Corruption(format!(
        "{what}: slot for position {pos} holds the unexpected sequence word {seq:#018x}"
    ))
}

/// Moves a shared cursor (the tail or the head) from `pos` to `pos + 1`. A lone participant
/// owns the cursor: it stores it and keeps its own copy in `next`. Otherwise participants
/// race with a compare-and-swap, and losing it means another one already moved it.
#[inline]
fn advance(single: bool, next: &Cell<u64>, cursor: &crate::sync::AtomicU64, pos: u64) {
    if single {
        next.set(pos + 1);
        cursor.store(pos + 1, Ordering::Release);
    } else {
        let _ = cursor.compare_exchange(pos, pos + 1, Ordering::AcqRel, Ordering::Relaxed);
    }
}

/// Tags a slot's sequence word, `expected` → `tagged` (a claim or a take). A participant
/// that owns the transition (a lone participant of its role) stores it; otherwise
/// participants race with a compare-and-swap. Returns whether this participant won.
#[inline]
fn tag(owned: bool, word: &crate::sync::AtomicU64, expected: u64, tagged: u64) -> bool {
    if owned {
        word.store(tagged, Ordering::Relaxed);
        true
    } else {
        word.compare_exchange(expected, tagged, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    }
}

/// How a channel delivers messages (from its header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Delivery {
    pub(crate) broadcast: bool,
    pub(crate) drop_oldest: bool,
    pub(crate) history: u64,
}

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
    /// Broadcast, `DropOldest`: this many messages were overwritten before this subscriber
    /// read them; it continues from the oldest message still available.
    Lagged(u64),
}

/// The sending side: its participant index and, with a single sender, its own cursor.
pub(crate) struct Producer {
    index: u32,
    single: bool,
    delivery: Delivery,
    next: Cell<u64>,
    /// Broadcast `Block`: the smallest subscriber cursor seen last time (a lower bound).
    min_cursor: Cell<u64>,
}

/// The receiving side.
pub(crate) struct Consumer {
    index: u32,
    single: bool,
    delivery: Delivery,
    next: Cell<u64>,
    /// Broadcast: positions read but not released yet, oldest first.
    outstanding: RefCell<VecDeque<u64>>,
    /// Broadcast: positions before this were sent before the subscriber joined.
    joined_at: u64,
}

fn max_of<M: Memory>(mem: &M, role: Role) -> u32 {
    let g = mem.geometry();
    match role {
        Role::Sender => g.max_senders,
        Role::Receiver => g.max_receivers,
    }
}

/// Attaches as participant `role`: takes the first free entry, reclaims what a dead previous
/// owner of that entry left behind, and marks the entry active. `cursor` is the starting
/// cursor of a broadcast subscriber (ignored otherwise). Returns the entry index, or `None`
/// if every entry is owned.
pub(crate) fn attach<M: Memory>(
    mem: &M,
    role: Role,
    delivery: Delivery,
) -> std::io::Result<Option<u32>> {
    for index in 0..max_of(mem, role) {
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
        if role == Role::Receiver && delivery.broadcast {
            let tail = mem.control().tail.0.load(Ordering::Acquire);
            let start = tail.saturating_sub(delivery.history);
            entry.cursor.store(start, Ordering::Release);
        }
        let generation = (old & !state::MASK).wrapping_add(state::GENERATION);
        entry.pid.store(current_pid(), Ordering::Relaxed);
        // SYNC POINT: senders read the cursor after seeing ACTIVE.
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
    wait::wake_all(mem, other(role));
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

/// Makes the slots that a dead participant held usable again. Every slot in flight names
/// its owner, so only the dead participant's slots are touched:
///
/// * a loan of a dead sender is committed empty (`SKIP`): receivers step over it;
///   everything it committed stays;
/// * a message a dead queue receiver was reading is released (it was delivered to a process
///   that is gone; redelivering it out of order would break FIFO);
/// * a dead subscriber's pins are cleared.
fn reclaim<M: Memory>(mem: &M, role: Role, index: u32) {
    let g = mem.geometry();
    let bit = 1u64 << index;
    for i in 0..g.capacity {
        let slot = mem.slot(i);
        let seq = slot.seq.load(Ordering::Acquire);
        let w = Word::of(seq);
        match role {
            Role::Sender if w.claimed && w.owner == index => {
                slot.len.store(0, Ordering::Relaxed);
                slot.flags.store(slot_flags::SKIP, Ordering::Relaxed);
                let _ =
                    slot.seq
                        .compare_exchange(seq, w.pos + 1, Ordering::AcqRel, Ordering::Relaxed);
            }
            Role::Receiver if w.taken && w.owner == index && w.pos > 0 => {
                let _ = slot.seq.compare_exchange(
                    seq,
                    w.pos - 1 + g.capacity,
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                );
            }
            Role::Receiver => {
                slot.pins.fetch_and(!bit, Ordering::AcqRel);
            }
            Role::Sender => {}
        }
    }
    // A sleeper that died left its bit set; clear it so that wakers stop making calls.
    wait::finish(sleeps_on(mem, role), index);
    wait::wake_all(mem, Role::Receiver);
    wait::wake_all(mem, Role::Sender);
}

/// Recovers a segment left behind by processes that are all gone, before anyone attaches:
/// reclaims what every participant left in flight and forgets them, so the next session
/// starts as if newly created but keeps every committed message.
///
/// The caller must be alone in the segment (it holds the segment exclusively).
pub(crate) fn recover_left_behind<M: Memory>(mem: &M) {
    for role in [Role::Sender, Role::Receiver] {
        for index in 0..max_of(mem, role) {
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

/// Reads the participant table of `role`. When `check_liveness` is set, an entry that says
/// "active" but whose owner no longer holds it (the process died) is taken over for a moment:
/// its slots are reclaimed, it is marked dead and let go. Holding the entry meanwhile keeps a
/// new participant from taking it while its predecessor's slots are reclaimed.
pub(crate) fn peers<M: Memory>(mem: &M, role: Role, check_liveness: bool) -> Peers {
    let mut seen = false;
    let mut attached = false;
    for index in 0..max_of(mem, role) {
        let entry = mem.participant(role, index);
        let s = entry.state.load(Ordering::Acquire);
        match s & state::MASK {
            state::FREE => {}
            state::ACTIVE => {
                if !check_liveness || mem.owned_by_other(role, index) {
                    if !check_liveness {
                        return Peers::Attached;
                    }
                    attached = true;
                    continue;
                }
                match mem.try_own(role, index) {
                    Ok(true) => {
                        // We hold the dead participant's entry: nobody else can attach to it.
                        if entry.state.load(Ordering::Acquire) == s {
                            tracing::info!(
                                role = role.name(),
                                index,
                                pid = entry.pid.load(Ordering::Relaxed),
                                "peer died; reclaiming its slots"
                            );
                            reclaim(mem, role, index);
                            entry
                                .state
                                .store((s & !state::MASK) | state::DEAD, Ordering::Release);
                        }
                        mem.disown(role, index);
                        seen = true;
                    }
                    // Someone else (a new owner, or another checker) holds it now.
                    _ => attached = true,
                }
            }
            _ => seen = true,
        }
    }
    if attached {
        Peers::Attached
    } else if seen {
        Peers::Gone
    } else {
        Peers::NeverAttached
    }
}

/// The first participant entry of `role` that says "active", from shared state only (the
/// answer of [`peers`] without liveness checks is `Attached` exactly when there is one).
pub(crate) fn first_active<M: Memory>(mem: &M, role: Role) -> Option<u32> {
    (0..max_of(mem, role)).find(|&index| is_active(mem, role, index))
}

/// Whether entry `index` (below the role's maximum) of `role` says "active".
#[inline]
pub(crate) fn is_active<M: Memory>(mem: &M, role: Role, index: u32) -> bool {
    mem.participant(role, index).state.load(Ordering::Acquire) & state::MASK == state::ACTIVE
}

/// The smallest cursor of the active subscribers, or `u64::MAX` if there are none.
fn min_subscriber_cursor<M: Memory>(mem: &M) -> u64 {
    let mut min = u64::MAX;
    for index in 0..mem.geometry().max_receivers {
        let entry = mem.participant(Role::Receiver, index);
        if entry.state.load(Ordering::Acquire) & state::MASK == state::ACTIVE {
            min = min.min(entry.cursor.load(Ordering::Acquire));
        }
    }
    min
}

impl Producer {
    pub(crate) fn new<M: Memory>(mem: &M, index: u32, delivery: Delivery) -> Producer {
        Producer {
            index,
            single: mem.geometry().max_senders == 1,
            delivery,
            next: Cell::new(mem.control().tail.0.load(Ordering::Acquire)),
            min_cursor: Cell::new(0),
        }
    }

    /// Tries to claim the next position.
    ///
    /// Broadcast: after claiming, the sender reads the slot's pins with a read-modify-write;
    /// a subscriber sets its pin with a read-modify-write and then re-reads the sequence word
    /// with one. SYNC POINT: the two RMW pairs form a Dekker handshake: either the subscriber
    /// sees the claim (and does not read the payload), or the sender sees the pin (and does
    /// not write the payload, committing the position empty instead).
    #[inline]
    pub(crate) fn try_claim<M: Memory>(&self, mem: &M) -> Result<Claim, Corruption> {
        // Fast path of a queue sender whose next slot is free: the first branch of
        // `try_claim_slow`, without its loop (a busy stream runs only this). A lone sender
        // stores its claim, one of several wins it with a compare-and-swap (or, having lost
        // it, goes the slow way).
        if !self.delivery.broadcast {
            let tail = &mem.control().tail.0;
            let pos = if self.single {
                self.next.get()
            } else {
                tail.load(Ordering::Acquire)
            };
            if pos <= POS_MASK - mem.geometry().capacity {
                let slot = mem.slot(pos);
                let claimed = tagged(pos, CLAIMED, self.index);
                if slot.seq.load(Ordering::Acquire) == pos
                    && tag(self.single, &slot.seq, pos, claimed)
                {
                    advance(self.single, &self.next, tail, pos);
                    return Ok(Claim::Claimed(pos));
                }
            }
        }
        self.try_claim_slow(mem)
    }

    /// [`try_claim`](Self::try_claim) in every case.
    #[inline(never)]
    fn try_claim_slow<M: Memory>(&self, mem: &M) -> Result<Claim, Corruption> {
        let cap = mem.geometry().capacity;
        let tail = &mem.control().tail.0;
        let mut skipped = 0;
        loop {
            let pos = if self.single {
                self.next.get()
            } else {
                tail.load(Ordering::Acquire)
            };
            if pos > POS_MASK - cap {
                return Err(Corruption(format!(
                    "position {pos} is beyond the position space"
                )));
            }
            let slot = mem.slot(pos);
            let seq = slot.seq.load(Ordering::Acquire);
            let w = Word::of(seq);
            let free = if self.delivery.broadcast {
                seq == pos || (w.plain() && w.pos + cap == pos + 1)
            } else {
                seq == pos
            };
            if free {
                if self.delivery.broadcast && !self.delivery.drop_oldest && pos >= cap {
                    // The slot's old message (position pos - cap) must have been read by
                    // every active subscriber.
                    if self.min_cursor.get() <= pos - cap {
                        // Never cache more than `pos`: a subscriber that joins later starts at
                        // the tail, which is at least `pos`, and must not be overtaken.
                        self.min_cursor.set(min_subscriber_cursor(mem).min(pos));
                        if self.min_cursor.get() <= pos - cap {
                            return Ok(Claim::Full);
                        }
                    }
                }
                let claimed = tagged(pos, CLAIMED, self.index);
                // Broadcast subscribers read the word with read-modify-writes (the pin
                // handshake), so the claim must be one too; a lone queue sender stores.
                if !tag(
                    self.single && !self.delivery.broadcast,
                    &slot.seq,
                    seq,
                    claimed,
                ) {
                    continue;
                }
                advance(self.single, &self.next, tail, pos);
                if self.delivery.broadcast && slot.pins.fetch_or(0, Ordering::AcqRel) != 0 {
                    // A subscriber still reads the old message in place: leave the payload
                    // alone and give this position no message. After a ring's worth of
                    // pinned slots (only a foreign writer can do that), report full.
                    self.commit(mem, pos, 0, true);
                    skipped += 1;
                    if skipped >= cap {
                        return Ok(Claim::Full);
                    }
                    continue;
                }
                return Ok(Claim::Claimed(pos));
            }
            // The slot still holds the previous lap (claimed, committed or taken): full,
            // unless another sender moved the tail meanwhile.
            let previous_lap =
                (w.claimed && w.pos + cap == pos) || (!w.claimed && w.pos + cap == pos + 1);
            let stale = |now: u64| !self.single && now != pos;
            if previous_lap {
                if stale(tail.load(Ordering::Acquire)) {
                    continue;
                }
                return Ok(Claim::Full);
            }
            // The slot is already past `pos`: our view of the tail is stale (another sender
            // claimed `pos`, maybe several laps ago). Reload it; if it has not moved, the
            // claimer has not advanced it yet, or died before it could (then a lone sender's
            // successor starts from the tail it left): help it along.
            let ahead = w.pos > pos || (w.claimed && w.pos == pos);
            if ahead {
                if stale(tail.load(Ordering::Acquire)) {
                    continue;
                }
                let just_claimed = (w.claimed && w.pos == pos)
                    || (!w.claimed && (w.pos == pos + 1 || w.pos == pos + cap));
                if just_claimed {
                    advance(self.single, &self.next, tail, pos);
                    continue;
                }
            }
            return Err(corrupt("claim", pos, seq));
        }
    }

    /// Publishes a claimed position. `len` bytes of payload were written (or, with
    /// `skip`, nothing: receivers step over it). Returns whether a wake-up was issued.
    #[inline]
    pub(crate) fn commit<M: Memory>(&self, mem: &M, pos: u64, len: u32, skip: bool) -> bool {
        self.commit_flags(mem, pos, len, if skip { slot_flags::SKIP } else { 0 })
    }

    /// [`commit`](Self::commit) with explicit [`slot_flags`].
    #[inline]
    pub(crate) fn commit_flags<M: Memory>(&self, mem: &M, pos: u64, len: u32, flags: u32) -> bool {
        let skip = flags & slot_flags::SKIP != 0;
        let slot = mem.slot(pos);
        slot.len.store(len, Ordering::Relaxed);
        slot.flags.store(flags, Ordering::Relaxed);
        slot.seq.store(pos + 1, Ordering::Release);
        let woke = wait::notify(mem, Role::Receiver);
        // Statistics, on our own line (after the commit: never delays the receiver).
        let stats = mem.counters(Role::Sender, self.index);
        Counters::bump(&stats.sent, u64::from(!skip));
        Counters::bump(&stats.wakeups, u64::from(woke));
        woke
    }
}

impl Consumer {
    pub(crate) fn new<M: Memory>(mem: &M, index: u32, delivery: Delivery) -> Consumer {
        let next = if delivery.broadcast {
            mem.participant(Role::Receiver, index)
                .cursor
                .load(Ordering::Acquire)
        } else {
            mem.control().head.0.load(Ordering::Acquire)
        };
        Consumer {
            index,
            single: mem.geometry().max_receivers == 1,
            delivery,
            next: Cell::new(next),
            outstanding: RefCell::new(VecDeque::new()),
            joined_at: mem.control().tail.0.load(Ordering::Acquire),
        }
    }

    /// Whether there may be something for [`try_take`](Self::try_take) to do at this
    /// consumer's position (a committed slot, or anything but "not committed yet": a lag, a
    /// stale head, corruption), without taking it. Never `false` when a committed message
    /// is waiting.
    #[cfg(not(shmbus_loom))]
    pub(crate) fn ready<M: Memory>(&self, mem: &M) -> bool {
        let cap = mem.geometry().capacity;
        let pos = if self.delivery.broadcast || self.single {
            self.next.get()
        } else {
            mem.control().head.0.load(Ordering::Acquire)
        };
        if pos > POS_MASK - cap {
            return true; // let `try_take` report it
        }
        let seq = mem.slot(pos).seq.load(Ordering::Acquire);
        if seq == pos + 1 {
            return true;
        }
        let w = Word::of(seq);
        let not_yet = if self.delivery.broadcast {
            seq == pos
                || (w.claimed && w.pos == pos)
                || (w.plain() && w.pos + cap == pos + 1)
                || (w.claimed && w.pos + cap == pos)
        } else {
            seq == pos || (w.claimed && w.pos == pos) || (w.taken && w.pos + cap == pos + 1)
        };
        !not_yet
    }

    /// Tries to take the next committed message. Slots committed empty (`SKIP`) are released
    /// and stepped over.
    #[inline]
    pub(crate) fn try_take<M: Memory>(&self, mem: &M) -> Result<Take, Corruption> {
        // Fast path of a queue receiver: a committed message (the first branch of
        // `try_take_slow`, without its loop; a lone receiver stores its take, one of several
        // wins it with a compare-and-swap). A busy stream runs only this. An empty ring is
        // left to the loop: answering it here too made a polling receiver look more often,
        // and the busy-poll round trip measured slower (see the README's performance notes).
        if !self.delivery.broadcast {
            let head = &mem.control().head.0;
            let pos = if self.single {
                self.next.get()
            } else {
                head.load(Ordering::Acquire)
            };
            if pos <= POS_MASK - mem.geometry().capacity {
                let slot = mem.slot(pos);
                let seq = slot.seq.load(Ordering::Acquire);
                let taken = tagged(pos + 1, TAKEN, self.index);
                if seq == pos + 1 && tag(self.single, &slot.seq, seq, taken) {
                    advance(self.single, &self.next, head, pos);
                    if let Some(len) = self.check_slot(mem, slot, pos)? {
                        let stats = mem.counters(Role::Receiver, self.index);
                        Counters::bump(&stats.received, 1);
                        return Ok(Take::Ready { pos, len });
                    }
                    // A skipped slot (released by `check_slot`): go on with the next one.
                }
            }
        }
        self.try_take_slow(mem)
    }

    /// [`try_take`](Self::try_take) in every case.
    #[inline(never)]
    fn try_take_slow<M: Memory>(&self, mem: &M) -> Result<Take, Corruption> {
        if self.delivery.broadcast {
            return self.try_read(mem);
        }
        let g = mem.geometry();
        let cap = g.capacity;
        let head = &mem.control().head.0;
        loop {
            let pos = if self.single {
                self.next.get()
            } else {
                head.load(Ordering::Acquire)
            };
            if pos > POS_MASK - cap {
                return Err(Corruption(format!(
                    "head {pos} is beyond the position space"
                )));
            }
            let slot = mem.slot(pos);
            let seq = slot.seq.load(Ordering::Acquire);
            if seq == pos + 1 {
                let taken = tagged(pos + 1, TAKEN, self.index);
                if !tag(self.single, &slot.seq, seq, taken) {
                    continue;
                }
                advance(self.single, &self.next, head, pos);
                match self.check_slot(mem, slot, pos)? {
                    Some(len) => {
                        let stats = mem.counters(Role::Receiver, self.index);
                        Counters::bump(&stats.received, 1);
                        return Ok(Take::Ready { pos, len });
                    }
                    None => continue,
                }
            }
            let w = Word::of(seq);
            let stale = |now: u64| !self.single && now != pos;
            // Not committed yet, or a message of the previous lap is still being read.
            if seq == pos || (w.claimed && w.pos == pos) || (w.taken && w.pos + cap == pos + 1) {
                if stale(head.load(Ordering::Acquire)) {
                    continue;
                }
                return Ok(Take::Empty);
            }
            // The slot is already past `pos`: our view of the head is stale. Reload it; if it
            // has not moved, the taker has not advanced it yet, or died before it could (a
            // lone receiver's successor starts from the head it left): help it along. After
            // such a death the taken slot is released when the dead receiver is reclaimed,
            // and a sender may already have claimed (`pos + cap`) or committed
            // (`pos + cap + 1`) it for the next lap; nothing can go further while the head
            // stays at `pos`.
            let ahead =
                w.pos > pos + 1 || (w.taken && w.pos == pos + 1) || (w.claimed && w.pos > pos);
            if ahead {
                if stale(head.load(Ordering::Acquire)) {
                    continue;
                }
                let taken = (w.taken && w.pos == pos + 1)
                    || (!w.taken && w.pos == pos + cap)
                    || (w.plain() && w.pos == pos + cap + 1);
                if taken {
                    advance(self.single, &self.next, head, pos);
                    continue;
                }
            }
            return Err(corrupt("take", pos, seq));
        }
    }

    /// Reads the length and flags of a slot just taken; `None` for a skipped slot (released
    /// here).
    #[inline]
    fn check_slot<M: Memory>(
        &self,
        mem: &M,
        slot: &SlotHeader,
        pos: u64,
    ) -> Result<Option<u32>, Corruption> {
        let len = slot.len.load(Ordering::Relaxed);
        let flags = slot.flags.load(Ordering::Relaxed);
        if flags & slot_flags::SKIP == 0 && len <= mem.geometry().max_message {
            return Ok(Some(len));
        }
        self.check_header(mem, pos, len, flags)
    }

    /// [`check_slot`](Self::check_slot) on a header already read.
    #[inline(never)]
    fn check_header<M: Memory>(
        &self,
        mem: &M,
        pos: u64,
        len: u32,
        flags: u32,
    ) -> Result<Option<u32>, Corruption> {
        if flags & slot_flags::SKIP != 0 {
            self.release(mem, pos);
            return Ok(None);
        }
        let max = mem.geometry().max_message;
        if len > max {
            self.release(mem, pos);
            return Err(Corruption(format!(
                "message at position {pos} claims {len} bytes, the slot holds {max}"
            )));
        }
        Ok(Some(len))
    }

    /// Broadcast: reads the message at this subscriber's cursor in place, pinning the slot.
    fn try_read<M: Memory>(&self, mem: &M) -> Result<Take, Corruption> {
        let cap = mem.geometry().capacity;
        let bit = 1u64 << self.index;
        loop {
            let pos = self.next.get();
            if pos > POS_MASK - cap {
                return Err(Corruption(format!(
                    "cursor {pos} is beyond the position space"
                )));
            }
            let slot = mem.slot(pos);
            let seq = slot.seq.load(Ordering::Acquire);
            if seq == pos + 1 {
                slot.pins.fetch_or(bit, Ordering::AcqRel);
                // SYNC POINT: pairs with the sender's RMW read of `pins` after its claim.
                if slot.seq.fetch_add(0, Ordering::AcqRel) != pos + 1 {
                    // Overwritten between the two reads: let the next round see the lag.
                    slot.pins.fetch_and(!bit, Ordering::AcqRel);
                    continue;
                }
                // The pin keeps the payload, not the header: a `DropOldest` sender that
                // claims the slot for a later lap and finds it pinned commits that position
                // empty, writing `len` and `flags`. Read them, then check (SYNC POINT: an
                // RMW, ordered with the sender's claim) that no claim came in between;
                // otherwise the message was overtaken: the next round reports the lag.
                let len = slot.len.load(Ordering::Relaxed);
                let flags = slot.flags.load(Ordering::Relaxed);
                if slot.seq.fetch_add(0, Ordering::AcqRel) != pos + 1 {
                    slot.pins.fetch_and(!bit, Ordering::AcqRel);
                    continue;
                }
                self.next.set(pos + 1);
                self.outstanding.borrow_mut().push_back(pos);
                match self.check_header(mem, pos, len, flags)? {
                    Some(len) => {
                        let stats = mem.counters(Role::Receiver, self.index);
                        Counters::bump(&stats.received, 1);
                        return Ok(Take::Ready { pos, len });
                    }
                    None => continue,
                }
            }
            let w = Word::of(seq);
            let not_yet = seq == pos
                || (w.claimed && w.pos == pos)
                || (w.plain() && w.pos + cap == pos + 1)
                || (w.claimed && w.pos + cap == pos);
            if not_yet {
                return Ok(Take::Empty);
            }
            if w.pos > pos + 1 {
                // A sender has already reused this slot for a later position: everything
                // from `pos` to the oldest message still in the ring is gone.
                let tail = mem.control().tail.0.load(Ordering::Acquire);
                if tail > POS_MASK {
                    return Err(Corruption(format!(
                        "tail {tail} is beyond the position space"
                    )));
                }
                // The oldest slot may be being claimed again right now: reading it is safe
                // (the pin handshake), at worst it reports one more lag.
                let resume = tail.saturating_sub(cap).max(pos + 1);
                let lost_from = pos.max(self.joined_at);
                let missed = resume.saturating_sub(lost_from);
                self.skip_to(mem, resume);
                if missed > 0 {
                    let stats = mem.counters(Role::Receiver, self.index);
                    Counters::bump(&stats.lagged, missed);
                    tracing::debug!(index = self.index, missed, "subscriber lagged");
                    return Ok(Take::Lagged(missed));
                }
                continue;
            }
            return Err(corrupt("read", pos, seq));
        }
    }

    /// Broadcast: moves the cursor forward over positions that were lost.
    fn skip_to<M: Memory>(&self, mem: &M, resume: u64) {
        self.next.set(resume);
        self.advance_cursor(mem);
    }

    /// Broadcast: publishes the oldest position still needed by this subscriber.
    fn advance_cursor<M: Memory>(&self, mem: &M) {
        let cursor = self
            .outstanding
            .borrow()
            .front()
            .copied()
            .unwrap_or(self.next.get());
        mem.participant(Role::Receiver, self.index)
            .cursor
            .store(cursor, Ordering::Release);
    }

    /// Frees a taken position for the senders. Returns whether a wake-up was issued.
    /// (Splitting the broadcast branch out, so that the queue release inlines entirely, cut
    /// 10 instructions a message and made the busy-poll round trip 10–30 ns slower in A/B
    /// runs; it stays one function.)
    #[inline]
    pub(crate) fn release<M: Memory>(&self, mem: &M, pos: u64) -> bool {
        let slot = mem.slot(pos);
        if self.delivery.broadcast {
            slot.pins.fetch_and(!(1u64 << self.index), Ordering::AcqRel);
            {
                let mut out = self.outstanding.borrow_mut();
                if let Some(i) = out.iter().position(|&p| p == pos) {
                    out.remove(i);
                }
            }
            self.advance_cursor(mem);
        } else {
            let cap = mem.geometry().capacity;
            slot.seq.store(pos + cap, Ordering::Release);
        }
        let woke = wait::notify(mem, Role::Sender);
        if woke {
            Counters::bump(&mem.counters(Role::Receiver, self.index).wakeups, 1);
        }
        woke
    }
}
