//! [`WakeStrategy::PosixSemaphore`](super::WakeStrategy::PosixSemaphore): a process-shared
//! POSIX semaphore (`sem_init(pshared = 1)`) in each wait cell's wake area, initialised by
//! the first participant that opens the channel. The waker posts once per woken sleeper; the
//! sleeper `sem_timedwait`s, after dropping stale posts with `sem_trywait`.

use std::time::Duration;

use super::{cell, init_once, selected, Notifier};
use crate::segment::layout::WaitCell;
use crate::segment::Role;
use crate::segment::{Memory, Segment};
use crate::sys::wakeup;

pub(crate) struct PosixSem {
    role: Role,
}

fn sem_ptr(cell: &WaitCell) -> *mut u8 {
    cell.wake.storage.as_ptr().cast_mut().cast::<u8>()
}

impl PosixSem {
    pub(crate) fn new(seg: &Segment, role: Role, index: u32) -> std::io::Result<PosixSem> {
        for r in [Role::Sender, Role::Receiver] {
            let c = cell(seg, r);
            let alive = |r, i| seg.owned_by_other(r, i);
            // SAFETY: the storage is 32 bytes (>= SEM_SIZE), 8-byte aligned, in the shared
            // mapping; `init_once` runs this in exactly one participant, before anyone uses
            // the semaphore (others wait for state 2; one that took over from a killed
            // initialiser initialises it again, still before anyone uses it).
            init_once(&c.wake, (role, index), alive, || unsafe {
                wakeup::sem_init(sem_ptr(c))
            })?;
        }
        Ok(PosixSem { role })
    }
}

impl Notifier for PosixSem {
    fn prepare(&self, seg: &Segment) {
        let sem = sem_ptr(cell(seg, self.role));
        // SAFETY: initialised in `new` (state 2), lives as long as the mapping.
        while unsafe { wakeup::sem_trywait(sem) } {}
    }

    fn sleep(&self, _seg: &Segment, cell: &WaitCell, _ticket: u32, timeout: Duration) {
        // SAFETY: as in `prepare`.
        unsafe { wakeup::sem_timedwait(sem_ptr(cell), timeout) };
    }

    fn wake(&self, seg: &Segment, role: Role, sleepers: u64) -> bool {
        let sem = sem_ptr(cell(seg, role));
        for _ in selected(seg, role, sleepers) {
            // SAFETY: as in `prepare`.
            unsafe { wakeup::sem_post(sem) };
        }
        true
    }
}
