//! [`WakeStrategy::SysvSemaphore`](super::WakeStrategy::SysvSemaphore): a private System V
//! set of two semaphores (0: the receivers' cell, 1: the senders'), created by the first
//! participant; its id is kept in the receivers' wake area. The handle that removes the
//! channel (the last one) removes the set (`IPC_RMID`). A set left by processes that all
//! crashed is removed when the channel is next opened and found left behind.
//!
//! The id is read from shared memory: a process that can write the segment can point it at
//! another of this user's sets. The set is only ever posted and waited on, and removed only
//! if it looks like one this code made.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::{cell, init_once, selected, Notifier};
use crate::segment::layout::WaitCell;
use crate::segment::Role;
use crate::segment::{Memory, Segment};
use crate::sys::wakeup;

pub(crate) struct SysvSem {
    id: i32,
    role: Role,
}

fn num(role: Role) -> u16 {
    match role {
        Role::Receiver => 0,
        Role::Sender => 1,
    }
}

impl SysvSem {
    pub(crate) fn new(seg: &mut Segment, role: Role, index: u32) -> std::io::Result<SysvSem> {
        let area = &cell(seg, Role::Receiver).wake;
        let alive = |r, i| seg.owned_by_other(r, i);
        init_once(area, (role, index), alive, || {
            // A participant killed while initialising may have made its set already.
            let old = area.id.load(Ordering::Relaxed) as i32;
            if old != 0 && wakeup::sysv_looks_like_ours(old, 2) {
                let _ = wakeup::sysv_remove(old);
            }
            let id = wakeup::sysv_create(2)?;
            area.id.store(id as u32, Ordering::Relaxed);
            Ok(())
        })?;
        let id = area.id.load(Ordering::Relaxed) as i32;
        seg.on_unlink(Box::new(move || {
            let _ = wakeup::sysv_remove(id);
        }));
        Ok(SysvSem { id, role })
    }
}

/// Removes the set of a left-behind segment and forgets it.
pub(crate) fn recover_left_behind(seg: &Segment) {
    for role in [Role::Receiver, Role::Sender] {
        let area = &cell(seg, role).wake;
        if role == Role::Receiver && area.state.load(Ordering::Acquire) == 2 {
            let id = area.id.load(Ordering::Relaxed) as i32;
            if seg.wake().0 == super::WakeStrategy::SysvSemaphore.code().0
                && wakeup::sysv_looks_like_ours(id, 2)
            {
                let _ = wakeup::sysv_remove(id);
            }
            area.id.store(0, Ordering::Relaxed);
            area.state.store(0, Ordering::Release);
        }
        // An initialisation that never finished (its process died) starts over.
        if area.state.load(Ordering::Acquire) != 2 {
            area.state.store(0, Ordering::Release);
        }
    }
}

impl Notifier for SysvSem {
    fn prepare(&self, _seg: &Segment) {
        while wakeup::sysv_trywait(self.id, num(self.role)) {}
    }

    fn sleep(&self, _seg: &Segment, _cell: &WaitCell, _ticket: u32, timeout: Duration) {
        wakeup::sysv_timedwait(self.id, num(self.role), timeout);
    }

    fn wake(&self, seg: &Segment, role: Role, sleepers: u64) -> bool {
        for _ in selected(seg, role, sleepers) {
            let _ = wakeup::sysv_post(self.id, num(role));
        }
        true
    }
}
