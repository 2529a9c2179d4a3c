//! Helpers shared by the examples: re-running this binary as a child process, CPU pinning,
//! and latency statistics.
#![allow(dead_code)]

use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Pins the calling thread to `cpu` if this machine has it; returns whether it did.
pub fn pin_to_cpu(cpu: usize) -> bool {
    // The CPUs online, not this process's affinity: a child inherits its parent's pinning.
    // SAFETY: sysconf only reads a configuration value.
    let ncpu = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(1) as usize;
    if cpu >= ncpu {
        return false;
    }
    // SAFETY: `set` is a plain bit set initialised by CPU_ZERO; sched_setaffinity only reads
    // it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_ZERO(&mut set);
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    }
}

/// Starts this same executable with `args` (the child's role and parameters).
pub fn spawn_self(args: &[String]) -> Child {
    Command::new(std::env::current_exe().expect("current executable"))
        .args(args)
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn child process")
}

/// Median, 99th percentile and minimum of `samples` (sorted in place).
pub fn percentiles(samples: &mut [u64]) -> (Duration, Duration, Duration) {
    samples.sort_unstable();
    let at = |q: f64| {
        let i = ((samples.len() as f64 - 1.0) * q).round() as usize;
        Duration::from_nanos(samples[i])
    };
    (at(0.5), at(0.99), at(0.0))
}

/// Nanoseconds on the monotonic clock, comparable between processes on this machine.
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// A unique channel-name stem for this run.
pub fn run_id(stem: &str) -> String {
    format!("{stem}-{}", std::process::id())
}
