//! Raw calls behind the wake strategies (`crate::wake`): process-shared POSIX semaphores,
//! System V semaphore sets, and thread-directed real-time signals.

use std::io;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn timespec(d: Duration) -> libc::timespec {
    libc::timespec {
        tv_sec: d.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_nsec: d.subsec_nanos() as libc::c_long,
    }
}

fn check(r: libc::c_int) -> io::Result<()> {
    if r == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// POSIX semaphores

/// Bytes a `sem_t` needs (the room reserved for it in shared memory is 32).
pub(crate) const SEM_SIZE: usize = std::mem::size_of::<libc::sem_t>();
const _: () = assert!(SEM_SIZE <= 32 && std::mem::align_of::<libc::sem_t>() <= 8);

/// Initialises a process-shared semaphore with value 0 at `sem`.
///
/// # Safety
///
/// `sem` must point to at least [`SEM_SIZE`] writable bytes, 8-byte aligned, in memory
/// shared by every process that uses the semaphore, that no one else uses meanwhile.
pub(crate) unsafe fn sem_init(sem: *mut u8) -> io::Result<()> {
    // SAFETY: per the caller's contract.
    check(unsafe { libc::sem_init(sem.cast(), 1, 0) })
}

/// Posts (increments) a semaphore.
///
/// # Safety
///
/// `sem` must point to a semaphore initialised by [`sem_init`] that stays mapped.
pub(crate) unsafe fn sem_post(sem: *mut u8) {
    // SAFETY: per the caller's contract. EOVERFLOW only means many pending wake-ups.
    unsafe { libc::sem_post(sem.cast()) };
}

/// Decrements a semaphore if it is positive; returns whether it did.
///
/// # Safety
///
/// As for [`sem_post`].
pub(crate) unsafe fn sem_trywait(sem: *mut u8) -> bool {
    // SAFETY: per the caller's contract.
    unsafe { libc::sem_trywait(sem.cast()) == 0 }
}

/// Waits at most `timeout` for the semaphore to become positive and decrements it.
///
/// # Safety
///
/// As for [`sem_post`].
pub(crate) unsafe fn sem_timedwait(sem: *mut u8, timeout: Duration) {
    // sem_timedwait takes an absolute CLOCK_REALTIME deadline.
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let ts = timespec(now.saturating_add(timeout));
    // SAFETY: per the caller's contract; `ts` is a live timespec. Any error (ETIMEDOUT,
    // EINTR) just ends the sleep: the caller re-checks.
    unsafe { libc::sem_timedwait(sem.cast(), &ts) };
}

// ---------------------------------------------------------------------------------------
// System V semaphores

/// Creates a private System V set of `n` semaphores (mode 0600), all 0. Returns its id.
pub(crate) fn sysv_create(n: i32) -> io::Result<i32> {
    // SAFETY: plain system call with integer arguments.
    let id = unsafe { libc::semget(libc::IPC_PRIVATE, n, libc::IPC_CREAT | 0o600) };
    if id == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(id)
}

fn sysv_op(id: i32, num: u16, op: i16, flags: i16, timeout: Option<Duration>) -> io::Result<()> {
    let mut buf = libc::sembuf {
        sem_num: num,
        sem_op: op,
        sem_flg: flags,
    };
    let ts = timeout.map(timespec);
    let ts_ptr = ts
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: `buf` is one live sembuf; `ts_ptr` is null or a live timespec. (The libc
    // crate has no `semtimedop` wrapper.)
    let r = unsafe {
        libc::syscall(
            libc::SYS_semtimedop,
            id,
            &mut buf as *mut libc::sembuf,
            1usize,
            ts_ptr,
        )
    };
    check(r as libc::c_int)
}

/// Adds one to semaphore `num` of set `id`.
pub(crate) fn sysv_post(id: i32, num: u16) -> io::Result<()> {
    sysv_op(id, num, 1, 0, None)
}

/// Takes one from semaphore `num` if it is positive; returns whether it did.
pub(crate) fn sysv_trywait(id: i32, num: u16) -> bool {
    sysv_op(id, num, -1, libc::IPC_NOWAIT as i16, None).is_ok()
}

/// Waits at most `timeout` to take one from semaphore `num`. Errors end the wait (the
/// caller re-checks): a timeout, a signal, or a set that was removed.
pub(crate) fn sysv_timedwait(id: i32, num: u16, timeout: Duration) {
    let _ = sysv_op(id, num, -1, 0, Some(timeout));
}

/// Removes set `id`.
pub(crate) fn sysv_remove(id: i32) -> io::Result<()> {
    // SAFETY: IPC_RMID takes no fourth argument.
    check(unsafe { libc::semctl(id, 0, libc::IPC_RMID) })
}

/// Whether set `id` exists, has `n` semaphores and was created by this user with mode
/// 0600 (what `sysv_create` makes): a stale id read from shared memory is removed only then.
pub(crate) fn sysv_looks_like_ours(id: i32, n: u64) -> bool {
    // SAFETY: semid_ds is plain data; all-zero is a valid value.
    let mut ds: libc::semid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: IPC_STAT writes one semid_ds through the pointer passed as fourth argument.
    let r = unsafe { libc::semctl(id, 0, libc::IPC_STAT, &mut ds as *mut libc::semid_ds) };
    // SAFETY: getuid cannot fail.
    let uid = unsafe { libc::getuid() };
    r == 0 && ds.sem_nsems == n && ds.sem_perm.cuid == uid && ds.sem_perm.mode & 0o777 == 0o600
}

// ---------------------------------------------------------------------------------------
// Signals

fn sigset_of(signal: i32) -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a live sigset_t; an invalid signal number only makes sigaddset fail.
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, signal);
    }
    set
}

/// The lowest real-time signal number.
pub(crate) fn sigrtmin() -> i32 {
    libc::SIGRTMIN()
}

/// The highest real-time signal number.
pub(crate) fn sigrtmax() -> i32 {
    libc::SIGRTMAX()
}

/// Blocks `signal` in the calling thread (threads it spawns later inherit the mask).
pub(crate) fn block(signal: i32) -> io::Result<()> {
    let set = sigset_of(signal);
    // SAFETY: `set` is a live sigset_t; the old mask is not requested.
    let r = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if r != 0 {
        return Err(io::Error::from_raw_os_error(r));
    }
    Ok(())
}

/// Whether `signal` is blocked in the calling thread.
pub(crate) fn is_blocked(signal: i32) -> bool {
    // SAFETY: sigset_t is plain data.
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: with a null new set, pthread_sigmask only writes the current mask to `old`.
    let r = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut old) };
    // SAFETY: `old` was initialised by the call above.
    r == 0 && unsafe { libc::sigismember(&old, signal) } == 1
}

/// Waits at most `timeout` for a pending `signal` (which the calling thread blocks) and
/// takes it. Returns whether one was taken.
pub(crate) fn take(signal: i32, timeout: Duration) -> bool {
    let set = sigset_of(signal);
    let ts = timespec(timeout);
    // SAFETY: `set` and `ts` are live; the siginfo output is not requested.
    unsafe { libc::sigtimedwait(&set, std::ptr::null_mut(), &ts) == signal }
}

/// The calling thread's id.
pub(crate) fn gettid() -> u32 {
    // SAFETY: gettid cannot fail.
    unsafe { libc::gettid() as u32 }
}

/// Queues `signal` with `value` to thread `tid` of process `pid`, as `sigqueue` does for a
/// process (`rt_tgsigqueueinfo`, `si_code = SI_QUEUE`).
pub(crate) fn queue_to_thread(pid: u32, tid: u32, signal: i32, value: usize) -> io::Result<()> {
    // SAFETY: siginfo_t is plain data; all-zero is valid.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    info.si_signo = signal;
    info.si_code = libc::SI_QUEUE;
    // The queue layout: si_pid, si_uid, then the sigval, after the three leading ints.
    #[repr(C)]
    struct Queued {
        signo: i32,
        errno: i32,
        code: i32,
        pad: i32,
        pid: u32,
        uid: u32,
        value: usize,
    }
    const _: () = assert!(std::mem::size_of::<Queued>() <= std::mem::size_of::<libc::siginfo_t>());
    let q = Queued {
        signo: signal,
        errno: 0,
        code: libc::SI_QUEUE,
        pad: 0,
        pid: crate::sys::pid(),
        // SAFETY: getuid cannot fail.
        uid: unsafe { libc::getuid() },
        value,
    };
    // SAFETY: `Queued` fits in siginfo_t (checked above) and siginfo_t is plain data.
    unsafe { std::ptr::write_unaligned((&mut info as *mut libc::siginfo_t).cast::<Queued>(), q) };
    // SAFETY: `info` is a live, initialised siginfo_t.
    let r = unsafe {
        libc::syscall(
            libc::SYS_rt_tgsigqueueinfo,
            pid as libc::pid_t,
            tid as libc::pid_t,
            signal,
            &info as *const libc::siginfo_t,
        )
    };
    if r == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
