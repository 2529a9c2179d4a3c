//! Asymmetric memory barriers with `membarrier(2)`.
//!
//! The waiter protocol is a Dekker handshake: the sleeper writes "I sleep" then reads the
//! ring; the other side writes the ring then reads "is anyone asleep". Both need a full
//! barrier between their write and their read. The side on the hot path (a sender on every
//! commit) would pay for an `mfence` per message; instead it uses a compiler fence, and the
//! side about to sleep (already on the slow path) calls
//! `membarrier(MEMBARRIER_CMD_GLOBAL_EXPEDITED)`, which makes every running thread of every
//! registered process execute a full barrier. A process that cannot register falls back to a
//! real fence on its fast path.

use std::sync::OnceLock;

const QUERY: libc::c_int = 0;
const GLOBAL_EXPEDITED: libc::c_int = 1 << 1;
const REGISTER_GLOBAL_EXPEDITED: libc::c_int = 1 << 2;

fn membarrier(cmd: libc::c_int) -> libc::c_long {
    // Miri does not model membarrier: report it unsupported, so the fast path uses the
    // read-modify-write fallback (which Miri checks like any other atomic).
    if cfg!(miri) {
        let _ = cmd;
        return -1;
    }
    // SAFETY: membarrier takes two integers and touches no memory of ours.
    unsafe {
        libc::syscall(
            libc::SYS_membarrier,
            cmd,
            0 as libc::c_uint,
            0 as libc::c_int,
        )
    }
}

/// Whether this process is registered for expedited global barriers (registering on first
/// call).
#[inline]
pub(crate) fn available() -> bool {
    match STATE.get() {
        Some(&v) => v,
        None => register(),
    }
}

static STATE: OnceLock<bool> = OnceLock::new();

#[cold]
fn register() -> bool {
    *STATE.get_or_init(|| {
        let supported = membarrier(QUERY);
        supported >= 0
            && (supported as libc::c_int & GLOBAL_EXPEDITED) != 0
            && (supported as libc::c_int & REGISTER_GLOBAL_EXPEDITED) != 0
            && membarrier(REGISTER_GLOBAL_EXPEDITED) == 0
    })
}

/// A full barrier on every running thread of every registered process. Returns false if the
/// call failed (the caller must then not rely on it).
pub(crate) fn global() -> bool {
    available() && membarrier(GLOBAL_EXPEDITED) == 0
}
