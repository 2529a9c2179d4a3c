//! The one place atomics come from, so that loom can stand in for them
//! (`RUSTFLAGS="--cfg shmbus_loom"`), as in tokio's `loom` module.

#[cfg(not(shmbus_loom))]
pub(crate) use std::sync::atomic::{compiler_fence, fence, AtomicU32, AtomicU64, Ordering};

#[cfg(shmbus_loom)]
pub(crate) use loom::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};

/// Under loom, a compiler fence is modelled as the full fence it stands in for.
#[cfg(shmbus_loom)]
pub(crate) fn compiler_fence(order: Ordering) {
    loom::sync::atomic::fence(order)
}

/// Spin-loop hint; under loom, a yield so the model explores the other thread.
#[inline]
pub(crate) fn spin_hint() {
    #[cfg(not(shmbus_loom))]
    std::hint::spin_loop();
    #[cfg(shmbus_loom)]
    loom::thread::yield_now();
}
