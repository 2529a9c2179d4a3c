//! [`WakeStrategy::Spin`](super::WakeStrategy::Spin): a blocked side never sleeps. The
//! blocking loop (`End::block`) busy-polls, yields the CPU once it has spun for a while and
//! still checks every 10 ms that the peer is alive. Nobody ever sets a waiter bit, so the
//! waker never makes a call.

use std::time::Duration;

use super::Notifier;
use crate::segment::layout::WaitCell;
use crate::segment::Role;
use crate::segment::Segment;

pub(crate) struct Spin;

impl Notifier for Spin {
    fn prepare(&self, _seg: &Segment) {}

    fn sleep(&self, _seg: &Segment, _cell: &WaitCell, _ticket: u32, _timeout: Duration) {
        std::thread::yield_now();
    }

    fn wake(&self, _seg: &Segment, _role: Role, _sleepers: u64) -> bool {
        true // nobody sleeps: no futex call either
    }
}
