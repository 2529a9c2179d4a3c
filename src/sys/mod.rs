//! Raw operating-system calls: futex, membarrier, open-file-description locks, POSIX shared
//! memory. Everything above this module is free of `libc`; every `unsafe` FFI call of the
//! crate lives here (pointer work on the mapping lives in `segment`).
//!
//! Public signatures of the crate never expose `libc` or `nix` types.

pub(crate) mod fd;
pub(crate) mod futex;
pub(crate) mod lock;
pub(crate) mod membarrier;
pub(crate) mod mq;
pub(crate) mod msg;
pub(crate) mod perm;
pub(crate) mod shm;
pub(crate) mod wakeup;

/// The calling process's id.
pub(crate) fn pid() -> u32 {
    std::process::id()
}
