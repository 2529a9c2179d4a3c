//! [`WakeStrategy::Futex`](super::WakeStrategy::Futex): sleep on the wait cell's futex word
//! with the ticket protocol of [`crate::ring::wait`]; the waker's `FUTEX_WAKE` is the ring's
//! default, so `wake` leaves it to the ring.

use std::time::Duration;

use super::Notifier;
use crate::segment::layout::WaitCell;
use crate::segment::Role;
use crate::segment::Segment;

pub(crate) struct Futex;

impl Notifier for Futex {
    fn prepare(&self, _seg: &Segment) {}

    fn sleep(&self, _seg: &Segment, cell: &WaitCell, ticket: u32, timeout: Duration) {
        crate::ring::wait::sleep(cell, ticket, timeout);
    }

    fn wake(&self, _seg: &Segment, _role: Role, _sleepers: u64) -> bool {
        false
    }
}
