//! Cheap processes to kill: a child of the test (started by [`Harness`](super::Harness),
//! so single-threaded apart from the test harness's idle main thread) forks short-lived
//! workers, SIGKILLs them at random points and checks what they left. A fork is much
//! cheaper than re-running the test binary (no exec, no test-harness start-up), so a test
//! can kill hundreds of processes in seconds.
//!
//! Workers report through a [`Board`]: a page of shared anonymous memory mapped before the
//! fork, which outlives a killed worker. A worker updates its counters after each
//! operation returned, so after a SIGKILL the board says exactly which operations had
//! returned. Rules for workers: no handle of the forking process is used by two processes
//! (open-file-description locks are shared across `fork`), and a worker ends with
//! [`worker_exit`], never by returning into the test harness.

use std::ops::Deref;
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;

/// Types made only of atomics (and arrays of them), for which all-zero bytes are a valid
/// value.
///
/// # Safety
///
/// Every bit pattern of zeroes must be a valid value of the type, and the type must be
/// usable through `&Self` from several processes at once (atomics only, no pointers).
pub unsafe trait Zeroed: Sync {}

/// A `T` in shared anonymous memory, visible to every process forked after it was made.
pub struct Board<T: Zeroed> {
    ptr: *mut T,
}

impl<T: Zeroed> Board<T> {
    /// A zeroed board.
    // The lint routes the library's channel segments through `sys::shm`; this is the test's
    // own report page, private to a process and its forks, never a channel.
    #[allow(clippy::disallowed_methods)]
    pub fn new() -> Board<T> {
        let len = std::mem::size_of::<T>().max(1);
        // SAFETY: an anonymous shared mapping with no address hint; the result is checked.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(ptr, libc::MAP_FAILED, "mmap of a shared board failed");
        assert_eq!(ptr as usize % std::mem::align_of::<T>(), 0);
        Board { ptr: ptr.cast() }
    }

    /// Zeroes the board again (no worker may be running).
    pub fn reset(&self) {
        // SAFETY: the mapping is `size_of::<T>()` bytes, writable, and zero is a valid `T`
        // (`Zeroed`); no worker runs, so nothing reads it meanwhile.
        unsafe { std::ptr::write_bytes(self.ptr.cast::<u8>(), 0, std::mem::size_of::<T>()) };
    }
}

impl<T: Zeroed> Deref for Board<T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the mapping lives as long as `self` (in this process), is aligned, and
        // holds a valid `T` (zeroed at creation; `T: Zeroed` is atomics only, so writes
        // from other processes keep it valid).
        unsafe { &*self.ptr }
    }
}

impl<T: Zeroed> Drop for Board<T> {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `new`; no reference outlives `self`.
        unsafe { libc::munmap(self.ptr.cast(), std::mem::size_of::<T>().max(1)) };
    }
}

/// `CLOCK_MONOTONIC` in nanoseconds: comparable between processes.
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Forks a worker that runs `f` and exits with its result (101 if it panics). The worker
/// is SIGKILLed if this process dies.
pub fn fork_worker(f: impl FnOnce() -> i32) -> Pid {
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: fork has no preconditions; the child only runs `f` (Rust code that the
    // forking process runs itself too) and then `_exit`s, never returning into the caller.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed: {}", std::io::Error::last_os_error());
    if pid == 0 {
        // SAFETY: prctl with an integer argument; getppid has no preconditions.
        unsafe {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            if libc::getppid() != parent {
                libc::_exit(3);
            }
        }
        let code = std::panic::catch_unwind(AssertUnwindSafe(f)).unwrap_or(101);
        worker_exit(code);
    }
    Pid::from_raw(pid)
}

/// Ends a worker without running the test harness's exit path.
pub fn worker_exit(code: i32) -> ! {
    // SAFETY: `_exit` ends the process at once; nothing after it runs.
    unsafe { libc::_exit(code) }
}

/// How a worker ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// It exited with this status.
    Exited(i32),
    /// A signal killed it.
    Killed(i32),
}

/// How worker `pid` ended, if it did (then it is reaped); `None` while it runs.
pub fn ended(pid: Pid) -> Option<End> {
    match waitpid(pid, Some(nix::sys::wait::WaitPidFlag::WNOHANG)) {
        Ok(WaitStatus::Exited(_, code)) => Some(End::Exited(code)),
        Ok(WaitStatus::Signaled(_, sig, _)) => Some(End::Killed(sig as i32)),
        _ => None,
    }
}

/// Waits for worker `pid` to end, failing after `patience`.
pub fn reap(pid: Pid, patience: Duration) -> End {
    let start = Instant::now();
    loop {
        match waitpid(pid, Some(nix::sys::wait::WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => return End::Exited(code),
            Ok(WaitStatus::Signaled(_, sig, _)) => return End::Killed(sig as i32),
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => panic!("waitpid({pid}): {e}"),
        }
        if start.elapsed() > patience {
            let _ = kill(pid, Signal::SIGKILL);
            let _ = waitpid(pid, None);
            panic!("worker {pid} did not end within {patience:?} (killed it)");
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// SIGKILLs worker `pid` (not reaped yet) and reaps it; returns the time of the kill
/// ([`now_ns`], taken just before the signal).
pub fn kill_worker(pid: Pid) -> u64 {
    let at = now_ns();
    kill(pid, Signal::SIGKILL).expect("kill");
    match reap(pid, Duration::from_secs(30)) {
        End::Killed(sig) if sig == libc::SIGKILL => {}
        other => panic!("worker {pid} ended with {other:?} before the SIGKILL"),
    }
    at
}

/// A small deterministic generator (xorshift64*), seeded from the clock unless
/// `SHMBUS_CRASH_SEED` is set; the seed is printed so a failure can be replayed.
pub struct Rng(u64);

impl Rng {
    /// A generator for `what`, seeded from `SHMBUS_CRASH_SEED` or the clock.
    pub fn new(what: &str) -> Rng {
        let seed = std::env::var("SHMBUS_CRASH_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| now_ns() ^ u64::from(std::process::id()).rotate_left(32));
        eprintln!("{what}: seed {seed} (SHMBUS_CRASH_SEED={seed} replays it)");
        Rng(seed | 1)
    }

    /// The next value.
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A value in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// True with probability `percent`/100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// The median and the largest of `values` (sorted in place); `None` if empty.
pub fn median_max(values: &mut [u64]) -> Option<(u64, u64)> {
    values.sort_unstable();
    Some((*values.get(values.len() / 2)?, *values.last()?))
}
