//! The waiter protocol: how a side that found the ring full (sender) or empty (receiver)
//! goes to sleep, and how the other side knows it must wake it.
//!
//! ```text
//! sleeper (slow path)                        waker (fast path, after commit/release)
//! ticket = futex                 (Acquire)   slot.seq = …            (Release)
//! waiters |= my_bit                          ─── full barrier ───    (light: compiler fence)
//! ─── full barrier ───  (heavy: membarrier)  if waiters != 0 {
//! re-check the ring; if ready: stop              waiters = 0  (claim the sleepers)
//! sleep(ticket, slice)                           futex += 1          (Release)
//! waiters &= !my_bit                             wake(claimed)
//!                                            }
//! ```
//!
//! SYNC POINT: the two barriers make this a Dekker handshake: either the waker sees the
//! sleeper's bit, or the sleeper's re-check sees the waker's slot. The waker's barrier is a
//! compiler fence when the sleeper's is `membarrier(GLOBAL_EXPEDITED)` (see
//! [`crate::sys::membarrier`]); otherwise, and under loom, the waker reads `waiters` with a
//! read-modify-write, which orders it after its slot store in the same way.
//! The futex word closes the last gap: a wake between the re-check and `futex_wait` changed
//! the word, so `futex_wait` returns at once. A busy stream therefore never makes a system
//! call: the waker only loads `waiters`, a line the sleeper writes only when it sleeps.
//!
//! The waker claims the sleepers it wakes (swaps the mask to zero), so wake-ups coalesce:
//! until a woken sleeper announces itself again, further commits make no system call.
//! How a sleeper sleeps and is woken is the channel's wake strategy ([`crate::wake`],
//! through [`Memory::wake_hook`]); the futex is the default and the one modelled here.
//! Strategies whose wake-up is a token that stays pending (a semaphore count, a queued
//! signal, a datagram, an eventfd count) need no ticket: a token sent after the sleeper set
//! its bit is still there when it sleeps.

use std::time::Duration;

use crate::segment::layout::{Control, WaitCell};
use crate::segment::{Memory, Role};
use crate::sync::{compiler_fence, AtomicU32, Ordering};

/// Whether the fast path may rely on the sleeper's `membarrier`.
#[inline]
fn asymmetric(control: &Control) -> bool {
    #[cfg(shmbus_loom)]
    {
        let _ = control;
        false
    }
    #[cfg(not(shmbus_loom))]
    {
        crate::sys::membarrier::available()
            && control.flags.0.fence_required.load(Ordering::Relaxed) == 0
    }
}

/// Fast path, after publishing a slot: wakes the participants of `role` that sleep (on
/// their wait cell), if any. Returns whether a wake-up was issued.
#[inline]
pub(crate) fn notify<M: Memory>(mem: &M, role: Role) -> bool {
    let control = mem.control();
    let cell = crate::ring::sleeps_on(mem, role);
    let sleepers = if asymmetric(control) {
        // SYNC POINT (light side): pairs with the sleeper's membarrier in `prepare`.
        compiler_fence(Ordering::SeqCst);
        cell.waiters.load(Ordering::Relaxed)
    } else {
        // SYNC POINT (light side, fallback): an RMW is ordered after the slot store and reads
        // the latest value of `waiters` in its modification order.
        cell.waiters.fetch_add(0, Ordering::AcqRel)
    };
    if sleepers == 0 {
        return false;
    }
    wake_claimed(mem, role, cell)
}

#[cold]
fn wake_claimed<M: Memory>(mem: &M, role: Role, cell: &WaitCell) -> bool {
    // Claim them: the next commit makes no call until one of them announces itself again.
    let claimed = cell.waiters.swap(0, Ordering::AcqRel);
    if claimed == 0 {
        return false; // they woke up by themselves meanwhile
    }
    cell.futex.fetch_add(1, Ordering::Release);
    if !mem.wake_hook(role, claimed) {
        futex_wake(&cell.futex);
    }
    true
}

/// Wakes every sleeper of `role` unconditionally (used when a participant leaves).
pub(crate) fn wake_all<M: Memory>(mem: &M, role: Role) {
    let cell = crate::ring::sleeps_on(mem, role);
    cell.futex.fetch_add(1, Ordering::Release);
    if !mem.wake_hook(role, u64::MAX) {
        futex_wake(&cell.futex);
    }
}

/// Slow path, before re-checking the ring: announces that participant `bit` will sleep and
/// returns the ticket to sleep on.
pub(crate) fn prepare(control: &Control, cell: &WaitCell, bit: u32) -> u32 {
    // The ticket is read before the bit is set: a waker that claims the bit bumps the word
    // after that, so the sleep returns at once. (Read after the bit, the ticket could
    // already include the bump of a waker that claimed the bit for an older message; the
    // next waker would find no bit and the sleeper would sleep through its message.)
    let ticket = cell.futex.load(Ordering::Acquire);
    // SYNC POINT (heavy side): pairs with `notify`.
    cell.waiters.fetch_or(1u64 << bit, Ordering::AcqRel);
    heavy_barrier(control);
    ticket
}

/// Sleeps until woken, the ticket is stale, or `timeout` passes.
pub(crate) fn sleep(cell: &WaitCell, ticket: u32, timeout: Duration) {
    futex_wait(&cell.futex, ticket, timeout);
}

/// Slow path, after sleeping (or deciding not to).
pub(crate) fn finish(cell: &WaitCell, bit: u32) {
    cell.waiters.fetch_and(!(1u64 << bit), Ordering::AcqRel);
}

fn heavy_barrier(control: &Control) {
    #[cfg(not(shmbus_loom))]
    {
        if !crate::sys::membarrier::global() {
            // No membarrier here: from now on every fast path of this channel fences.
            control.flags.0.fence_required.store(1, Ordering::SeqCst);
        }
        crate::sync::fence(Ordering::SeqCst);
    }
    #[cfg(shmbus_loom)]
    {
        let _ = control;
    }
}

#[cfg(not(shmbus_loom))]
fn futex_wait(word: &AtomicU32, ticket: u32, timeout: Duration) {
    crate::sys::futex::wait(word, ticket, Some(timeout));
}

#[cfg(not(shmbus_loom))]
fn futex_wake(word: &AtomicU32) {
    crate::sys::futex::wake(word, u32::MAX);
}

// Under loom a futex is a condition variable keyed by the word's address: waiting really
// blocks, so a lost wake-up shows up as a deadlock in the model.
#[cfg(shmbus_loom)]
mod loom_futex {
    use loom::sync::{Condvar, Mutex};

    loom::lazy_static! {
        pub(super) static ref PARK: (Mutex<()>, Condvar) = (Mutex::new(()), Condvar::new());
    }
}

#[cfg(shmbus_loom)]
fn futex_wait(word: &AtomicU32, ticket: u32, _timeout: Duration) {
    let (lock, cv) = &*loom_futex::PARK;
    let guard = lock.lock().unwrap();
    if word.load(Ordering::SeqCst) == ticket {
        drop(cv.wait(guard).unwrap());
    }
}

#[cfg(shmbus_loom)]
fn futex_wake(word: &AtomicU32) {
    let _ = word;
    let (lock, cv) = &*loom_futex::PARK;
    let _guard = lock.lock().unwrap();
    cv.notify_all();
}
