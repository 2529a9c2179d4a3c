//! [`WakeStrategy::Signal`](super::WakeStrategy::Signal): a real-time signal (default
//! `SIGRTMIN+4`) queued to the sleeping thread, taken with `sigtimedwait`.
//!
//! Before it announces itself, a sleeper blocks the signal in its own thread (if it is not
//! blocked already), records its thread id in its wait cell's wake area and takes any stale
//! signal still pending. The waker queues the signal with `rt_tgsigqueueinfo` (the
//! thread-directed form of `sigqueue`, `si_code = SI_QUEUE`) to that thread of the pid the
//! participant entry records. Directing it at the thread, not the process, means that
//! another thread (a test harness's main thread, another channel's sleeper) never takes or
//! receives it. No handler is ever installed; see [`crate::block_wake_signal`] for what the
//! application should do with its signal mask.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::{cell, selected, Notifier};
use crate::segment::layout::WaitCell;
use crate::segment::Segment;
use crate::segment::{Memory, Role};
use crate::sys::wakeup;

pub(crate) struct Signal {
    signal: i32,
    role: Role,
}

impl Signal {
    pub(crate) fn new(signal: i32, role: Role) -> std::io::Result<Signal> {
        if signal < wakeup::sigrtmin() || signal > wakeup::sigrtmax() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "wake signal {signal} is not a real-time signal ({}..={})",
                    wakeup::sigrtmin(),
                    wakeup::sigrtmax()
                ),
            ));
        }
        Ok(Signal { signal, role })
    }
}

impl Notifier for Signal {
    fn prepare(&self, seg: &Segment) {
        if !wakeup::is_blocked(self.signal) {
            let _ = wakeup::block(self.signal);
        }
        let c = cell(seg, self.role);
        c.wake.id.store(wakeup::gettid(), Ordering::Relaxed);
        while wakeup::take(self.signal, Duration::ZERO) {}
    }

    fn sleep(&self, _seg: &Segment, _cell: &WaitCell, _ticket: u32, timeout: Duration) {
        wakeup::take(self.signal, timeout);
    }

    fn wake(&self, seg: &Segment, role: Role, sleepers: u64) -> bool {
        // SYNC POINT: the sleeper stored its tid before setting its waiter bit (AcqRel RMW);
        // the waker claimed the bit with an AcqRel swap before this load.
        let c = cell(seg, role);
        // A wake-up of everyone (a participant left) goes only to threads that are really
        // waiting now: a thread that slept once may be doing something else by now.
        let sleepers = if sleepers == u64::MAX {
            c.waiters.load(Ordering::Acquire)
        } else {
            sleepers
        };
        let tid = c.wake.id.load(Ordering::Relaxed);
        if tid == 0 {
            return true;
        }
        for i in selected(seg, role, sleepers) {
            let pid = seg.participant(role, i).pid.load(Ordering::Relaxed);
            if pid != 0 {
                let _ = wakeup::queue_to_thread(pid, tid, self.signal, 0);
            }
        }
        true
    }
}
