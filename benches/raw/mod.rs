//! Raw baselines written minimally against libc: the hardware floor and the kernel
//! transports that shmbus is measured against. Each one is a [`Link`] (or, for the spin
//! flag, a pair of loops) run by the same generic round-trip and stream code as shmbus.
#![allow(dead_code)]

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Instant;

use crate::harness::{self, futex_wait, futex_wake, Counts, Figure, Link, Shm, Side, Spec};

fn round_up(v: usize, to: usize) -> usize {
    v.div_ceil(to) * to
}

fn words<'a>(p: *mut u64, n: usize) -> &'a mut [u64] {
    // SAFETY: callers pass a pointer into a live mapping with room for `n` words that the
    // protocol gives them exclusively until they publish it.
    unsafe { std::slice::from_raw_parts_mut(p, n) }
}

// ---------------------------------------------------------------------------------------
// The spin flag: one shared cache line, one word; the parent writes an odd value, the child
// answers with the next even one. The hardware floor of a cross-CPU round trip.

/// Spin-flag round trips; returns the median and p99.
pub fn spin_flag(counts: Counts) -> Figure {
    let shm = Shm::create(4096);
    harness::pin(0);
    let child = harness::spawn_child(&[
        "spin-flag".into(),
        shm.fd.to_string(),
        counts.n.to_string(),
        counts.extra.to_string(),
    ]);
    // SAFETY: the mapping is page-aligned, 4096 bytes, and only accessed atomically.
    let flag = unsafe { &*(shm.ptr as *const AtomicU64) };
    let mut samples = Vec::with_capacity(counts.n as usize);
    for i in 0..counts.n + counts.extra {
        let t0 = Instant::now();
        flag.store(2 * i + 1, Ordering::Release);
        while flag.load(Ordering::Acquire) != 2 * i + 2 {
            std::hint::spin_loop();
        }
        let dt = t0.elapsed().as_nanos() as u64;
        if i >= counts.extra {
            samples.push(dt);
        }
    }
    harness::reap(child, "spin-flag");
    let (median, p99) = harness::median_p99(&mut samples);
    Figure::Latency { median, p99 }
}

fn spin_flag_child(args: &[String]) {
    harness::pin(1);
    let shm = Shm::attach(args[0].parse().unwrap(), 4096);
    let total: u64 = args[1].parse::<u64>().unwrap() + args[2].parse::<u64>().unwrap();
    // SAFETY: as in `spin_flag`.
    let flag = unsafe { &*(shm.ptr as *const AtomicU64) };
    for i in 0..total {
        while flag.load(Ordering::Acquire) != 2 * i + 1 {
            std::hint::spin_loop();
        }
        flag.store(2 * i + 2, Ordering::Release);
    }
}

/// The placement probe: median spin-flag round trip in ns (a few milliseconds).
pub fn probe() -> f64 {
    match spin_flag(Counts {
        n: 20_000,
        extra: 2_000,
    }) {
        Figure::Latency { median, .. } => median,
        _ => unreachable!(),
    }
}

// ---------------------------------------------------------------------------------------
// The per-slot sequence ring: each slot starts with its own 32-bit sequence word, in the
// same cache line as the start of the payload. Slot `pos % cap` is free for position `pos`
// when its word is `pos`, holds a message when it is `pos + 1`; the receiver releases it by
// writing `pos + cap` into the slot's own line. With FUTEX, every store is followed by a
// FUTEX_WAKE and a waiter sleeps at once (no spinning, a system call per message).

/// The per-slot sequence ring, spinning (`FUTEX = false`) or sleeping on a futex.
pub struct SeqRing<const FUTEX: bool> {
    shm: Shm,
    cap: usize,
    stride: usize,
    ring_bytes: usize,
    words: usize,
    tx: (usize, u64),
    rx: (usize, u64),
}

impl<const FUTEX: bool> SeqRing<FUTEX> {
    fn geometry(spec: &Spec) -> (usize, usize) {
        let stride = round_up(8 + spec.size, 64);
        (stride, stride * spec.capacity)
    }

    fn new(shm: Shm, spec: &Spec, side: Side) -> Self {
        let (stride, ring_bytes) = Self::geometry(spec);
        let (down, up) = (0, 1);
        let (tx, rx) = match side {
            Side::Parent => (down, up),
            Side::Child => (up, down),
        };
        SeqRing {
            shm,
            cap: spec.capacity,
            stride,
            ring_bytes,
            words: spec.size / 8,
            tx: (tx, 0),
            rx: (rx, 0),
        }
    }

    fn slot(&self, ring: usize, pos: u64) -> (&AtomicU32, *mut u64) {
        let off = ring * self.ring_bytes + (pos as usize & (self.cap - 1)) * self.stride;
        debug_assert!(off + self.stride <= self.shm.len);
        // SAFETY: `off` is inside the mapping and 64-byte aligned; the sequence word is only
        // accessed atomically and the payload starts 8 bytes further.
        unsafe {
            let p = self.shm.ptr.add(off);
            (&*(p as *const AtomicU32), p.add(8).cast())
        }
    }

    #[inline]
    fn wait(seq: &AtomicU32, want: u32) {
        loop {
            let v = seq.load(Ordering::Acquire);
            if v == want {
                return;
            }
            if FUTEX {
                futex_wait(seq, v);
            } else {
                std::hint::spin_loop();
            }
        }
    }
}

impl<const FUTEX: bool> Link for SeqRing<FUTEX> {
    fn create(spec: &Spec) -> (Self, Vec<String>) {
        let (_, ring_bytes) = Self::geometry(spec);
        let shm = Shm::create(2 * ring_bytes);
        let fd = shm.fd;
        let r = SeqRing::new(shm, spec, Side::Parent);
        for ring in 0..2 {
            for pos in 0..spec.capacity as u64 {
                r.slot(ring, pos).0.store(pos as u32, Ordering::Relaxed);
            }
        }
        (r, vec![fd.to_string()])
    }

    fn attach(spec: &Spec, args: &[String]) -> Self {
        let (_, ring_bytes) = Self::geometry(spec);
        SeqRing::new(
            Shm::attach(args[0].parse().unwrap(), 2 * ring_bytes),
            spec,
            Side::Child,
        )
    }

    #[inline]
    fn send(&mut self, fill: impl FnOnce(&mut [u64])) {
        let (ring, pos) = self.tx;
        let (seq, p) = self.slot(ring, pos);
        Self::wait(seq, pos as u32);
        fill(words(p, self.words));
        // SYNC POINT: publishes the payload to the receiver's Acquire load in `recv`.
        seq.store(pos.wrapping_add(1) as u32, Ordering::Release);
        if FUTEX {
            futex_wake(seq);
        }
        self.tx.1 += 1;
    }

    #[inline]
    fn recv(&mut self, read: impl FnOnce(&[u64])) {
        let (ring, pos) = self.rx;
        let (seq, p) = self.slot(ring, pos);
        Self::wait(seq, pos.wrapping_add(1) as u32);
        read(words(p, self.words));
        // SYNC POINT: hands the slot back to the sender's Acquire load in `send`.
        seq.store(pos.wrapping_add(self.cap as u64) as u32, Ordering::Release);
        if FUTEX {
            futex_wake(seq);
        }
        self.rx.1 += 1;
    }
}

// ---------------------------------------------------------------------------------------
// The head/tail ring (Lamport): a shared head and tail, each on its own cache lines, and
// bare payload slots; each side caches the other's index. Spins.

/// The classic head/tail ring with cached indices.
pub struct HeadTail {
    shm: Shm,
    cap: usize,
    stride: usize,
    ring_bytes: usize,
    words: usize,
    tx: (usize, u64, u64),
    rx: (usize, u64, u64),
}

impl HeadTail {
    fn geometry(spec: &Spec) -> (usize, usize) {
        let stride = round_up(spec.size, 64);
        (stride, 256 + stride * spec.capacity)
    }

    fn new(shm: Shm, spec: &Spec, side: Side) -> Self {
        let (stride, ring_bytes) = Self::geometry(spec);
        let (tx, rx) = match side {
            Side::Parent => (0, 1),
            Side::Child => (1, 0),
        };
        HeadTail {
            shm,
            cap: spec.capacity,
            stride,
            ring_bytes,
            words: spec.size / 8,
            tx: (tx, 0, 0),
            rx: (rx, 0, 0),
        }
    }

    /// (head, tail, first slot) of `ring`.
    fn parts(&self, ring: usize) -> (&AtomicU64, &AtomicU64, *mut u8) {
        // SAFETY: the ring's first 256 bytes hold head (at 0) and tail (at 128), only
        // accessed atomically; the slots follow.
        unsafe {
            let p = self.shm.ptr.add(ring * self.ring_bytes);
            (
                &*(p as *const AtomicU64),
                &*(p.add(128) as *const AtomicU64),
                p.add(256),
            )
        }
    }
}

impl Link for HeadTail {
    fn create(spec: &Spec) -> (Self, Vec<String>) {
        let shm = Shm::create(2 * Self::geometry(spec).1);
        let fd = shm.fd;
        (HeadTail::new(shm, spec, Side::Parent), vec![fd.to_string()])
    }

    fn attach(spec: &Spec, args: &[String]) -> Self {
        let shm = Shm::attach(args[0].parse().unwrap(), 2 * Self::geometry(spec).1);
        HeadTail::new(shm, spec, Side::Child)
    }

    #[inline]
    fn send(&mut self, fill: impl FnOnce(&mut [u64])) {
        let (ring, tail, mut head_seen) = self.tx;
        let (head, shared_tail, slots) = self.parts(ring);
        while tail - head_seen == self.cap as u64 {
            head_seen = head.load(Ordering::Acquire);
            std::hint::spin_loop();
        }
        let off = (tail as usize & (self.cap - 1)) * self.stride;
        // SAFETY: the slot is inside the ring and free (tail - head < cap).
        fill(words(unsafe { slots.add(off) }.cast(), self.words));
        // SYNC POINT: publishes the slot to the receiver's Acquire load of the tail.
        shared_tail.store(tail + 1, Ordering::Release);
        self.tx = (ring, tail + 1, head_seen);
    }

    #[inline]
    fn recv(&mut self, read: impl FnOnce(&[u64])) {
        let (ring, head, mut tail_seen) = self.rx;
        let (shared_head, tail, slots) = self.parts(ring);
        while head == tail_seen {
            tail_seen = tail.load(Ordering::Acquire);
            std::hint::spin_loop();
        }
        let off = (head as usize & (self.cap - 1)) * self.stride;
        // SAFETY: the slot is inside the ring and committed (head < tail).
        read(words(unsafe { slots.add(off) }.cast(), self.words));
        // SYNC POINT: hands the slot back to the sender's Acquire load of the head.
        shared_head.store(head + 1, Ordering::Release);
        self.rx = (ring, head + 1, tail_seen);
    }
}

// ---------------------------------------------------------------------------------------
// Byte-stream transports: a pipe pair and a Unix stream socket pair. The payload is copied
// from a user buffer by write() and into one by read().

/// A pipe in each direction (`UNIX = false`) or one Unix stream socket pair.
pub struct Stream<const UNIX: bool> {
    wfd: i32,
    rfd: i32,
    child_fds: Vec<i32>,
    own_fds: Vec<i32>,
    buf: Vec<u64>,
}

fn bytes_of(buf: &mut [u64]) -> &mut [u8] {
    // SAFETY: any u64 buffer is a valid byte buffer of 8× the length.
    unsafe { std::slice::from_raw_parts_mut(buf.as_mut_ptr().cast(), buf.len() * 8) }
}

fn write_all(fd: i32, mut b: &[u8]) {
    while !b.is_empty() {
        // SAFETY: `b` is a valid buffer of `b.len()` bytes.
        let n = unsafe { libc::write(fd, b.as_ptr().cast(), b.len()) };
        assert!(n > 0, "write: {}", std::io::Error::last_os_error());
        b = &b[n as usize..];
    }
}

fn read_exact(fd: i32, mut b: &mut [u8]) {
    while !b.is_empty() {
        // SAFETY: `b` is a valid, writable buffer of `b.len()` bytes.
        let n = unsafe { libc::read(fd, b.as_mut_ptr().cast(), b.len()) };
        assert!(n > 0, "read: {}", std::io::Error::last_os_error());
        b = &mut b[n as usize..];
    }
}

impl<const UNIX: bool> Link for Stream<UNIX> {
    fn create(spec: &Spec) -> (Self, Vec<String>) {
        let buf = vec![0u64; spec.size / 8];
        if UNIX {
            let mut fds = [0i32; 2];
            // SAFETY: `fds` has room for the two descriptors.
            let r =
                unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, fds.as_mut_ptr()) };
            assert_eq!(r, 0, "socketpair");
            let l = Stream {
                wfd: fds[0],
                rfd: fds[0],
                child_fds: vec![fds[1]],
                own_fds: vec![fds[0]],
                buf,
            };
            (l, vec![fds[1].to_string(), fds[1].to_string()])
        } else {
            let (mut down, mut up) = ([0i32; 2], [0i32; 2]);
            // SAFETY: each array has room for the two descriptors.
            unsafe {
                assert_eq!(libc::pipe(down.as_mut_ptr()), 0, "pipe");
                assert_eq!(libc::pipe(up.as_mut_ptr()), 0, "pipe");
            }
            let l = Stream {
                wfd: down[1],
                rfd: up[0],
                child_fds: vec![down[0], up[1]],
                own_fds: vec![down[1], up[0]],
                buf,
            };
            // The child writes up[1] and reads down[0].
            (l, vec![up[1].to_string(), down[0].to_string()])
        }
    }

    fn attach(spec: &Spec, args: &[String]) -> Self {
        Stream {
            wfd: args[0].parse().unwrap(),
            rfd: args[1].parse().unwrap(),
            child_fds: vec![],
            own_fds: vec![],
            buf: vec![0u64; spec.size / 8],
        }
    }

    fn connected(&mut self) {
        for fd in self.child_fds.drain(..) {
            // SAFETY: the child has its copy; the parent's copy of the child's end goes.
            unsafe { libc::close(fd) };
        }
    }

    #[inline]
    fn send(&mut self, fill: impl FnOnce(&mut [u64])) {
        fill(&mut self.buf);
        write_all(self.wfd, bytes_of(&mut self.buf));
    }

    #[inline]
    fn recv(&mut self, read: impl FnOnce(&[u64])) {
        read_exact(self.rfd, bytes_of(&mut self.buf));
        read(&self.buf);
    }
}

impl<const UNIX: bool> Drop for Stream<UNIX> {
    fn drop(&mut self) {
        for &fd in self.own_fds.iter().chain(&self.child_fds) {
            // SAFETY: descriptors this link opened and still owns.
            unsafe { libc::close(fd) };
        }
    }
}

// ---------------------------------------------------------------------------------------
// POSIX message queues: one queue per direction (10 messages deep, the default limit).

/// A POSIX message queue in each direction.
pub struct PosixMq {
    tx: libc::mqd_t,
    rx: libc::mqd_t,
    names: Vec<std::ffi::CString>,
    buf: Vec<u64>,
}

fn mq_open(name: &std::ffi::CStr, size: usize, create: bool) -> libc::mqd_t {
    // SAFETY: a zeroed mq_attr is valid; the fields we need are set below.
    let mut attr: libc::mq_attr = unsafe { std::mem::zeroed() };
    attr.mq_maxmsg = 10;
    attr.mq_msgsize = size as _;
    let flags = libc::O_RDWR
        | if create {
            libc::O_CREAT | libc::O_EXCL
        } else {
            0
        };
    // SAFETY: `name` is NUL-terminated and `attr` outlives the call.
    let q = unsafe { libc::mq_open(name.as_ptr(), flags, 0o600 as libc::mode_t, &attr) };
    assert!(q >= 0, "mq_open: {}", std::io::Error::last_os_error());
    q
}

static MQ_SERIAL: AtomicU32 = AtomicU32::new(0);

impl Link for PosixMq {
    fn create(spec: &Spec) -> (Self, Vec<String>) {
        let serial = MQ_SERIAL.fetch_add(1, Ordering::Relaxed);
        let stem = format!("/shmbus-bench-{}-{serial}", std::process::id());
        let names: Vec<_> = ["d", "u"]
            .iter()
            .map(|s| std::ffi::CString::new(format!("{stem}-{s}")).unwrap())
            .collect();
        let tx = mq_open(&names[0], spec.size, true);
        let rx = mq_open(&names[1], spec.size, true);
        let buf = vec![0u64; spec.size / 8];
        (PosixMq { tx, rx, names, buf }, vec![stem])
    }

    fn attach(spec: &Spec, args: &[String]) -> Self {
        let name = |s: &str| std::ffi::CString::new(format!("{}-{s}", args[0])).unwrap();
        PosixMq {
            tx: mq_open(&name("u"), spec.size, false),
            rx: mq_open(&name("d"), spec.size, false),
            names: vec![],
            buf: vec![0u64; spec.size / 8],
        }
    }

    #[inline]
    fn send(&mut self, fill: impl FnOnce(&mut [u64])) {
        fill(&mut self.buf);
        // SAFETY: the buffer holds exactly the queue's message size.
        let r = unsafe { libc::mq_send(self.tx, self.buf.as_ptr().cast(), self.buf.len() * 8, 0) };
        assert_eq!(r, 0, "mq_send: {}", std::io::Error::last_os_error());
    }

    #[inline]
    fn recv(&mut self, read: impl FnOnce(&[u64])) {
        // SAFETY: the buffer holds exactly the queue's message size.
        let n = unsafe {
            libc::mq_receive(
                self.rx,
                self.buf.as_mut_ptr().cast(),
                self.buf.len() * 8,
                std::ptr::null_mut(),
            )
        };
        assert_eq!(n as usize, self.buf.len() * 8, "mq_receive");
        read(&self.buf);
    }
}

impl Drop for PosixMq {
    fn drop(&mut self) {
        // SAFETY: descriptors and names this link created.
        unsafe {
            libc::mq_close(self.tx);
            libc::mq_close(self.rx);
            for n in &self.names {
                libc::mq_unlink(n.as_ptr());
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// System V message queue: one private queue, message type 1 downwards and 2 upwards.

/// A System V message queue (both directions, told apart by message type).
pub struct SysV {
    id: i32,
    owner: bool,
    tx_type: u64,
    rx_type: u64,
    /// Word 0 is the message type, the payload follows.
    buf: Vec<u64>,
}

impl Link for SysV {
    fn create(spec: &Spec) -> (Self, Vec<String>) {
        // SAFETY: plain system call with constant arguments.
        let id = unsafe { libc::msgget(libc::IPC_PRIVATE, libc::IPC_CREAT | 0o600) };
        assert!(id >= 0, "msgget: {}", std::io::Error::last_os_error());
        let l = SysV {
            id,
            owner: true,
            tx_type: 1,
            rx_type: 2,
            buf: vec![0u64; 1 + spec.size / 8],
        };
        (l, vec![id.to_string()])
    }

    fn attach(spec: &Spec, args: &[String]) -> Self {
        SysV {
            id: args[0].parse().unwrap(),
            owner: false,
            tx_type: 2,
            rx_type: 1,
            buf: vec![0u64; 1 + spec.size / 8],
        }
    }

    #[inline]
    fn send(&mut self, fill: impl FnOnce(&mut [u64])) {
        self.buf[0] = self.tx_type;
        fill(&mut self.buf[1..]);
        let size = (self.buf.len() - 1) * 8;
        // SAFETY: the buffer is a `struct msgbuf` (type word, then `size` bytes).
        let r = unsafe { libc::msgsnd(self.id, self.buf.as_ptr().cast(), size, 0) };
        assert_eq!(r, 0, "msgsnd: {}", std::io::Error::last_os_error());
    }

    #[inline]
    fn recv(&mut self, read: impl FnOnce(&[u64])) {
        let size = (self.buf.len() - 1) * 8;
        // SAFETY: the buffer is a `struct msgbuf` with room for `size` bytes.
        let n = unsafe {
            libc::msgrcv(
                self.id,
                self.buf.as_mut_ptr().cast(),
                size,
                self.rx_type as libc::c_long,
                0,
            )
        };
        assert_eq!(
            n as usize,
            size,
            "msgrcv: {}",
            std::io::Error::last_os_error()
        );
        read(&self.buf[1..]);
    }
}

impl Drop for SysV {
    fn drop(&mut self) {
        if self.owner {
            // SAFETY: removes the queue this link created; the child has exited.
            unsafe { libc::msgctl(self.id, libc::IPC_RMID, std::ptr::null_mut()) };
        }
    }
}

/// Runs the child side of a raw baseline; returns false if `kind` is not one.
pub fn child(kind: &str, args: &[String]) -> bool {
    match kind {
        "spin-flag" => spin_flag_child(args),
        "seq-spin" => harness::child_main::<SeqRing<false>>(args),
        "seq-futex" => harness::child_main::<SeqRing<true>>(args),
        "headtail" => harness::child_main::<HeadTail>(args),
        "pipe" => harness::child_main::<Stream<false>>(args),
        "unix" => harness::child_main::<Stream<true>>(args),
        "mq" => harness::child_main::<PosixMq>(args),
        "sysv" => harness::child_main::<SysV>(args),
        _ => return false,
    }
    true
}
