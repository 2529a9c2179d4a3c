//! Wake strategies: how a blocked side sleeps and how the other side wakes it.
//!
//! The waiter protocol itself ([`crate::ring::wait`]) is the same for every strategy: a
//! sleeper sets its bit in the wait cell's mask, re-checks the ring and sleeps; the waker
//! makes a system call only if it finds a bit set, and claims the bits it wakes, so wake-ups
//! coalesce. What differs is the sleep primitive, behind one trait, [`Notifier`], with one
//! file per strategy:
//!
//! | strategy | sleeper waits on | waker calls |
//! |---|---|---|
//! | [`Spin`](WakeStrategy::Spin) | nothing: busy-polls, yielding after a while | nothing |
//! | [`Futex`](WakeStrategy::Futex) | the cell's futex word | `futex(FUTEX_WAKE)` |
//! | [`PosixSemaphore`](WakeStrategy::PosixSemaphore) | a `sem_t` in the cell | `sem_post` |
//! | [`SysvSemaphore`](WakeStrategy::SysvSemaphore) | a System V set (id in the cell) | `semop(+1)` |
//! | [`Signal`](WakeStrategy::Signal) | `sigtimedwait` | a queued real-time signal |
//! | [`UnixSocket`](WakeStrategy::UnixSocket) | its datagram socket | one byte `sendto` |
//! | [`EventFd`](WakeStrategy::EventFd) | its eventfd (sent to the peer with `SCM_RIGHTS`) | `write(eventfd, 1)` |
//!
//! Every strategy but the futex leaves a token that stays pending (a count, a signal, a
//! datagram), so a wake-up sent between the sleeper's re-check and its sleep is never lost;
//! a sleeper drops stale tokens before it announces itself.

use std::fmt;

#[cfg(not(shmbus_loom))]
mod eventfd;
#[cfg(not(shmbus_loom))]
mod futex;
#[cfg(not(shmbus_loom))]
mod posix_sem;
#[cfg(not(shmbus_loom))]
mod signal;
#[cfg(not(shmbus_loom))]
mod spin;
#[cfg(not(shmbus_loom))]
mod sysv_sem;
#[cfg(not(shmbus_loom))]
mod unix_socket;

#[cfg(not(shmbus_loom))]
pub(crate) use imp::*;

/// How the blocked side of a channel sleeps and is woken. Chosen by the creator of a
/// channel with [`Options::wake`](crate::Options::wake) and recorded in the segment.
///
/// Whatever the strategy, a blocked call first spins for [`Options::spin`](crate::Options::spin),
/// a peer that dies is noticed within about 10 ms, and timeouts work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum WakeStrategy {
    /// Never sleep: busy-poll (yielding the CPU after a while). Lowest latency, burns a CPU
    /// per blocked side.
    Spin,
    /// Sleep on a futex word in the segment (the default).
    #[default]
    Futex,
    /// A process-shared POSIX semaphore in the segment per wait cell.
    PosixSemaphore,
    /// A System V semaphore set (two semaphores), removed when the channel is removed; it
    /// shows in `ipcs -s` while the channel exists.
    SysvSemaphore,
    /// A real-time signal queued to the sleeping thread (see [`block_wake_signal`]).
    /// [`WakeStrategy::signal()`] gives the default, `SIGRTMIN+4`.
    Signal {
        /// The signal number, between `SIGRTMIN` and `SIGRTMAX`.
        signal: i32,
    },
    /// A datagram socket per participant (abstract namespace); the waker sends it one byte.
    /// Pollable: the receiver implements `AsFd`.
    UnixSocket,
    /// An eventfd per participant, handed to the peer over a Unix socket (`SCM_RIGHTS`).
    /// Pollable: the receiver implements `AsFd`.
    EventFd,
}

impl WakeStrategy {
    /// `Signal` with the default signal, `SIGRTMIN+4`.
    pub fn signal() -> WakeStrategy {
        WakeStrategy::Signal {
            signal: libc::SIGRTMIN() + 4,
        }
    }

    /// Every strategy (with the default signal), for tests and benchmarks.
    pub fn all() -> [WakeStrategy; 7] {
        [
            WakeStrategy::Spin,
            WakeStrategy::Futex,
            WakeStrategy::PosixSemaphore,
            WakeStrategy::SysvSemaphore,
            WakeStrategy::signal(),
            WakeStrategy::UnixSocket,
            WakeStrategy::EventFd,
        ]
    }

    /// Whether a receiver of a channel with this strategy has a file descriptor to poll.
    pub fn is_pollable(self) -> bool {
        matches!(self, WakeStrategy::UnixSocket | WakeStrategy::EventFd)
    }

    /// The header's code and parameter. 0 is the futex, so segments made before wake
    /// strategies existed (reserved bytes zero) read as futex channels.
    #[cfg_attr(shmbus_loom, allow(dead_code))]
    pub(crate) fn code(self) -> (u32, u32) {
        match self {
            WakeStrategy::Futex => (0, 0),
            WakeStrategy::Spin => (1, 0),
            WakeStrategy::PosixSemaphore => (2, 0),
            WakeStrategy::SysvSemaphore => (3, 0),
            WakeStrategy::Signal { signal } => (4, signal as u32),
            WakeStrategy::UnixSocket => (5, 0),
            WakeStrategy::EventFd => (6, 0),
        }
    }

    /// Decodes a header's code and parameter (read from shared memory: validated).
    #[cfg_attr(shmbus_loom, allow(dead_code))]
    pub(crate) fn from_code(code: u32, param: u32) -> Result<WakeStrategy, String> {
        Ok(match (code, param) {
            (0, 0) => WakeStrategy::Futex,
            (1, 0) => WakeStrategy::Spin,
            (2, 0) => WakeStrategy::PosixSemaphore,
            (3, 0) => WakeStrategy::SysvSemaphore,
            (4, s) => WakeStrategy::Signal { signal: s as i32 },
            (5, 0) => WakeStrategy::UnixSocket,
            (6, 0) => WakeStrategy::EventFd,
            _ => return Err(format!("unknown wake strategy {code}/{param}")),
        })
    }
}

impl fmt::Display for WakeStrategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WakeStrategy::Spin => f.write_str("spin"),
            WakeStrategy::Futex => f.write_str("futex"),
            WakeStrategy::PosixSemaphore => f.write_str("POSIX semaphore"),
            WakeStrategy::SysvSemaphore => f.write_str("System V semaphore"),
            WakeStrategy::Signal { signal } => write!(f, "signal {signal}"),
            WakeStrategy::UnixSocket => f.write_str("Unix socket"),
            WakeStrategy::EventFd => f.write_str("eventfd"),
        }
    }
}

/// Blocks the wake signal `strategy` uses (default: `SIGRTMIN+4`) in the calling thread;
/// threads it spawns afterwards inherit the mask. Does nothing for other strategies.
///
/// With [`WakeStrategy::Signal`], wake-ups are real-time signals queued to the thread that
/// sleeps. shmbus blocks the signal in that thread itself before it first sleeps, and never
/// installs a handler. Call this early in `main`, before spawning threads, so that the
/// signal is blocked in every thread: then a wake-up that arrives after its thread stopped
/// waiting stays pending instead of taking the default action (terminating the process).
/// Do not unblock it afterwards.
///
/// # Errors
///
/// The system error if the signal mask cannot be changed (an invalid signal number).
#[cfg(not(shmbus_loom))]
pub fn block_wake_signal(strategy: WakeStrategy) -> std::io::Result<()> {
    match strategy {
        WakeStrategy::Signal { signal } => crate::sys::wakeup::block(signal),
        _ => Ok(()),
    }
}

#[cfg(not(shmbus_loom))]
mod imp {
    use std::os::fd::BorrowedFd;
    use std::time::Duration;

    use super::WakeStrategy;
    use crate::segment::layout::{Control, Counters, Geometry, Participant, SlotHeader, WaitCell};
    use crate::segment::Segment;
    use crate::segment::{Memory, Role};

    /// The sleep primitive of one participant: one implementation per strategy.
    pub(crate) trait Notifier {
        /// Before the participant announces itself as a waiter: drops stale tokens (and
        /// whatever else must happen before a waker may look for it).
        fn prepare(&self, seg: &Segment);
        /// Sleeps until woken, or `timeout` passes (spurious returns are fine: the caller
        /// re-checks). `cell` is the participant's wait cell, `ticket` the futex word read
        /// after announcing.
        fn sleep(&self, seg: &Segment, cell: &WaitCell, ticket: u32, timeout: Duration);
        /// Wakes the participants of `role` in `sleepers` (bits; all ones: everyone).
        /// Returns `false` if the caller must wake the futex instead.
        fn wake(&self, seg: &Segment, role: Role, sleepers: u64) -> bool;
        /// The descriptor that becomes readable when this participant is woken.
        fn fd(&self) -> Option<BorrowedFd<'_>> {
            None
        }
    }

    /// The chosen strategy's notifier (static dispatch).
    pub(crate) enum AnyNotifier {
        Futex(super::futex::Futex),
        Spin(super::spin::Spin),
        PosixSem(super::posix_sem::PosixSem),
        SysvSem(super::sysv_sem::SysvSem),
        Signal(super::signal::Signal),
        UnixSocket(super::unix_socket::UnixSocket),
        EventFd(super::eventfd::EventFd),
    }

    macro_rules! each {
        ($self:expr, $n:ident => $e:expr) => {
            match $self {
                AnyNotifier::Futex($n) => $e,
                AnyNotifier::Spin($n) => $e,
                AnyNotifier::PosixSem($n) => $e,
                AnyNotifier::SysvSem($n) => $e,
                AnyNotifier::Signal($n) => $e,
                AnyNotifier::UnixSocket($n) => $e,
                AnyNotifier::EventFd($n) => $e,
            }
        };
    }

    impl AnyNotifier {
        /// Sets up participant `index` of `role` for `strategy` on `seg`.
        pub(crate) fn new(
            strategy: WakeStrategy,
            seg: &mut Segment,
            role: Role,
            index: u32,
        ) -> std::io::Result<AnyNotifier> {
            Ok(match strategy {
                WakeStrategy::Futex => AnyNotifier::Futex(super::futex::Futex),
                WakeStrategy::Spin => AnyNotifier::Spin(super::spin::Spin),
                WakeStrategy::PosixSemaphore => {
                    AnyNotifier::PosixSem(super::posix_sem::PosixSem::new(seg, role, index)?)
                }
                WakeStrategy::SysvSemaphore => {
                    AnyNotifier::SysvSem(super::sysv_sem::SysvSem::new(seg, role, index)?)
                }
                WakeStrategy::Signal { signal } => {
                    AnyNotifier::Signal(super::signal::Signal::new(signal, role)?)
                }
                WakeStrategy::UnixSocket => AnyNotifier::UnixSocket(
                    super::unix_socket::UnixSocket::new(&seg.object(), role, index)?,
                ),
                WakeStrategy::EventFd => {
                    AnyNotifier::EventFd(super::eventfd::EventFd::new(&seg.object(), role, index)?)
                }
            })
        }

        /// Whether this strategy never sleeps.
        pub(crate) fn spins(&self) -> bool {
            matches!(self, AnyNotifier::Spin(_))
        }

        pub(crate) fn prepare(&self, seg: &Segment) {
            each!(self, n => n.prepare(seg))
        }

        pub(crate) fn sleep(&self, seg: &Segment, cell: &WaitCell, ticket: u32, timeout: Duration) {
            each!(self, n => n.sleep(seg, cell, ticket, timeout))
        }

        pub(crate) fn wake(&self, seg: &Segment, role: Role, sleepers: u64) -> bool {
            each!(self, n => n.wake(seg, role, sleepers))
        }

        pub(crate) fn fd(&self) -> Option<BorrowedFd<'_>> {
            each!(self, n => n.fd())
        }
    }

    /// Resets the strategy state of a segment left behind by processes that are all gone
    /// (the caller is alone in it).
    pub(crate) fn recover_left_behind(seg: &Segment) {
        super::sysv_sem::recover_left_behind(seg);
    }

    /// A segment together with this participant's notifier: what the ring runs on, so that
    /// its wake-ups go through the strategy.
    pub(crate) struct WakeSeg {
        pub(crate) seg: Segment,
        pub(crate) notifier: AnyNotifier,
    }

    impl Memory for WakeSeg {
        #[inline]
        fn geometry(&self) -> &Geometry {
            self.seg.geometry()
        }
        #[inline]
        fn control(&self) -> &Control {
            self.seg.control()
        }
        #[inline]
        fn participant(&self, role: Role, index: u32) -> &Participant {
            self.seg.participant(role, index)
        }
        #[inline]
        fn counters(&self, role: Role, index: u32) -> &Counters {
            self.seg.counters(role, index)
        }
        #[inline]
        fn slot(&self, pos: u64) -> &SlotHeader {
            self.seg.slot(pos)
        }
        #[inline]
        fn payload(&self, pos: u64) -> *mut u8 {
            self.seg.payload(pos)
        }
        fn try_own(&self, role: Role, index: u32) -> std::io::Result<bool> {
            self.seg.try_own(role, index)
        }
        fn disown(&self, role: Role, index: u32) {
            self.seg.disown(role, index)
        }
        fn owned_by_other(&self, role: Role, index: u32) -> bool {
            self.seg.owned_by_other(role, index)
        }
        #[inline]
        fn wake_hook(&self, role: Role, sleepers: u64) -> bool {
            self.notifier.wake(&self.seg, role, sleepers)
        }
    }

    /// The wait cell participants of `role` sleep on.
    pub(crate) fn cell(seg: &Segment, role: Role) -> &WaitCell {
        crate::ring::sleeps_on(seg, role)
    }

    /// Indices of the participants of `role` selected by `sleepers`.
    pub(crate) fn selected(seg: &Segment, role: Role, sleepers: u64) -> impl Iterator<Item = u32> {
        let g = seg.geometry();
        let max = match role {
            Role::Sender => g.max_senders,
            Role::Receiver => g.max_receivers,
        };
        (0..max.min(64)).filter(move |i| sleepers & (1u64 << i) != 0)
    }

    /// A short tag for a channel's object name, for derived names.
    pub(crate) fn tag(object: &str) -> u64 {
        // FNV-1a.
        object.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
        })
    }

    /// `WakeArea::state` while participant `(role, index)` initialises the area: above 2,
    /// so that a waiter can tell who to watch.
    fn initialising(role: Role, index: u32) -> u32 {
        3 + u32::from(role == Role::Receiver) * 64 + index.min(63)
    }

    /// The participant named by an `initialising` state.
    fn initialiser(state: u32) -> (Role, u32) {
        let code = state - 3;
        let role = if code >= 64 {
            Role::Receiver
        } else {
            Role::Sender
        };
        (role, code % 64)
    }

    /// Runs `init` in exactly one participant (`me`), the others wait until it has
    /// finished; `Err` if it never does. A participant killed while initialising is found
    /// through its entry lock (`alive` says whether a participant's entry is held by a
    /// live process) and another takes over, so one crash cannot make the channel unusable
    /// for everyone still in it; the entry's new owner takes over at once.
    pub(crate) fn init_once(
        area: &crate::segment::layout::WakeArea,
        me: (Role, u32),
        alive: impl Fn(Role, u32) -> bool,
        init: impl FnOnce() -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        use std::sync::atomic::Ordering;
        let mine = initialising(me.0, me.1);
        let mut start = std::time::Instant::now();
        let mut last = u32::MAX;
        loop {
            // SYNC POINT: the initialiser's Release store of 2 pairs with these Acquire loads.
            let state = area.state.load(Ordering::Acquire);
            let take = match state {
                2 => return Ok(()),
                // 1: an initialiser of an older version, which does not say who it is.
                0 | 1 => state == 0,
                s => {
                    let (role, index) = initialiser(s);
                    (role, index) == me || !alive(role, index)
                }
            };
            if take
                && area
                    .state
                    .compare_exchange(state, mine, Ordering::Acquire, Ordering::Acquire)
                    .is_ok()
            {
                return match init() {
                    Ok(()) => {
                        area.state.store(2, Ordering::Release);
                        Ok(())
                    }
                    Err(e) => {
                        area.state.store(0, Ordering::Release);
                        Err(e)
                    }
                };
            }
            if state != last {
                last = state;
                start = std::time::Instant::now();
            }
            if start.elapsed() > Duration::from_secs(2) {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the wake strategy's shared state was never initialised",
                ));
            }
            std::thread::yield_now();
        }
    }

    #[cfg(test)]
    mod init_tests {
        use std::sync::atomic::{AtomicBool, Ordering};

        use super::{init_once, initialiser, initialising};
        use crate::segment::layout::WakeArea;
        use crate::segment::Role;

        #[test]
        fn codes_name_the_initialiser() {
            for role in [Role::Sender, Role::Receiver] {
                for index in [0, 1, 63] {
                    assert_eq!(initialiser(initialising(role, index)), (role, index));
                    assert!(initialising(role, index) > 2);
                }
            }
        }

        /// Found by `tests/crash_matrix.rs`: a receiver killed while creating the channel's
        /// semaphores left the area "being initialised" forever, and every other process
        /// failed to open the channel. Now a survivor takes over.
        #[test]
        fn a_dead_initialiser_is_taken_over() {
            let area = WakeArea::new();
            area.state
                .store(initialising(Role::Receiver, 5), Ordering::Relaxed);
            let ran = AtomicBool::new(false);
            let alive = |r, i| !(r == Role::Receiver && i == 5);
            init_once(&area, (Role::Sender, 0), alive, || {
                ran.store(true, Ordering::Relaxed);
                Ok(())
            })
            .unwrap();
            assert!(ran.load(Ordering::Relaxed));
            assert_eq!(area.state.load(Ordering::Relaxed), 2);
        }

        /// The new owner of a dead initialiser's entry takes over at once, even though
        /// the entry is held (by itself).
        #[test]
        fn the_entry_s_new_owner_takes_over() {
            let area = WakeArea::new();
            area.state
                .store(initialising(Role::Sender, 2), Ordering::Relaxed);
            init_once(&area, (Role::Sender, 2), |_, _| true, || Ok(())).unwrap();
            assert_eq!(area.state.load(Ordering::Relaxed), 2);
        }

        /// A live initialiser is waited for, and `init` does not run twice.
        #[test]
        fn a_live_initialiser_is_waited_for() {
            let area = WakeArea::new();
            area.state
                .store(initialising(Role::Receiver, 0), Ordering::Relaxed);
            std::thread::scope(|s| {
                s.spawn(|| {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                    area.state.store(2, Ordering::Release);
                });
                init_once(
                    &area,
                    (Role::Sender, 0),
                    |_, _| true,
                    || panic!("ran twice"),
                )
                .unwrap();
            });
        }
    }
}
