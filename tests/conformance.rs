//! One conformance suite, instantiated for every transport, across real processes.
//!
//! The child process is this test binary, re-run with `--exact conformance_child` and
//! environment variables naming its role, transport and channel. Every test uses its own
//! channel name and removes what it made (drop guards), even when it fails.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use shmbus::{
    OpenError, Options, Receiver, RecvError, RecvTimeoutError, SendError, SendTimeoutError, Sender,
    Transport, TryRecvError, TrySendError,
};

#[derive(shmbus::Message, Clone, Copy, Debug, PartialEq)]
#[repr(C)]
struct Msg {
    seq: u64,
    check: u64,
    body: [u64; 6],
}

impl Msg {
    fn new(seq: u64) -> Msg {
        let check = seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xDEAD_BEEF;
        Msg {
            seq,
            check,
            body: [seq ^ check; 6],
        }
    }

    fn verify(&self, seq: u64) {
        assert_eq!(
            *self,
            Msg::new(seq),
            "message {seq} arrived damaged or out of order"
        );
    }
}

#[derive(shmbus::Message, Clone, Copy, Debug, PartialEq)]
#[repr(C)]
struct Other {
    a: u32,
    b: u32,
}

#[derive(shmbus::Message, serde::Serialize, serde::Deserialize, Debug, PartialEq)]
struct Text {
    s: String,
}

const ROLE: &str = "SHMBUS_CONF_ROLE";
const TRANSPORT: &str = "SHMBUS_CONF_TRANSPORT";
const NAME: &str = "SHMBUS_CONF_NAME";
const COUNT: &str = "SHMBUS_CONF_COUNT";
/// The address of the test's private D-Bus bus, for children.
const DBUS_ADDRESS: &str = "SHMBUS_CONF_DBUS_ADDRESS";

#[cfg(feature = "dbus")]
#[path = "common/private_bus.rs"]
mod private_bus;

/// The private bus address of each D-Bus test's channel, in the parent process.
static BUSES: std::sync::Mutex<Vec<(String, String)>> = std::sync::Mutex::new(Vec::new());

fn bus_address(name: &str) -> String {
    let buses = BUSES.lock().unwrap_or_else(|e| e.into_inner());
    match buses.iter().find(|(n, _)| n == name) {
        Some((_, a)) => a.clone(),
        None => std::env::var(DBUS_ADDRESS).expect("the test's private bus address"),
    }
}

/// Messages in the ordering test: `SHMBUS_CONF_COUNT`, or a million (every transport
/// together takes about 20 s in a debug build on the 2-CPU machine).
fn count() -> u64 {
    std::env::var(COUNT)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000)
}

/// Messages in the ordering test on `transport`: D-Bus makes one method-call round trip
/// through the bus daemon per message, so it gets 5,000 unless `SHMBUS_CONF_COUNT` says.
fn count_for(transport: &str) -> u64 {
    if transport == "dbus" && std::env::var(COUNT).is_err() {
        5_000
    } else {
        count()
    }
}

fn options(transport: &str, name: &str) -> Options {
    let mut o = Options::new();
    o.capacity(8)
        .connect_timeout(Duration::from_secs(10))
        .max_message_size(256);
    let tmp = std::env::temp_dir();
    let t = match transport {
        "shm" => Transport::SharedMemory,
        "sysv_shm" => Transport::SysvSharedMemory { key: None },
        "fifo" => Transport::Fifo {
            path: tmp.join(format!("shmbus-test-{name}.fifo")),
        },
        "unix" => Transport::UnixSocket {
            path: tmp.join(format!("shmbus-test-{name}.sock")),
        },
        "abstract_socket" => Transport::AbstractSocket {
            name: format!("shmbus-test-{name}"),
        },
        "posix_mq" => Transport::PosixQueue,
        "sysv_mq" => Transport::SysvQueue { key: None },
        "file" => Transport::File {
            dir: tmp.join(format!("shmbus-test-{name}.log")),
        },
        "pipe" => Transport::SharedMemory, // unused: pipes are made by shmbus::pipe
        #[cfg(feature = "dbus")]
        "dbus" => Transport::DBus {
            bus: shmbus::DBusBus::Address(bus_address(name)),
        },
        other => panic!("unknown transport {other}"),
    };
    o.transport(t);
    o
}

/// Removes whatever a test's channel may have left, on drop (so also on panic).
struct Cleanup {
    name: String,
    transport: &'static str,
    children: Vec<Child>,
    /// The test's own bus (D-Bus), stopped after the children are gone.
    #[cfg(feature = "dbus")]
    _bus: Option<private_bus::PrivateBus>,
}

impl Cleanup {
    fn new(test: &str, transport: &'static str) -> Cleanup {
        let name = format!("conf-{test}-{transport}-{}", std::process::id());
        #[cfg(feature = "dbus")]
        let bus = (transport == "dbus").then(|| {
            let bus = private_bus::PrivateBus::start();
            BUSES
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((name.clone(), bus.address.clone()));
            bus
        });
        Cleanup {
            name,
            transport,
            children: Vec::new(),
            #[cfg(feature = "dbus")]
            _bus: bus,
        }
    }

    fn options(&self) -> Options {
        options(self.transport, &self.name)
    }

    fn spawn(&mut self, role: &str, extra: &[(&str, String)], cmd_hook: impl FnOnce(&mut Command)) {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args([
            "--exact",
            "conformance_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ROLE, role)
        .env(TRANSPORT, self.transport)
        .env(NAME, &self.name)
        .stdin(Stdio::null())
        .stdout(Stdio::null());
        for (k, v) in extra {
            cmd.env(k, v);
        }
        if self.transport == "dbus" {
            cmd.env(DBUS_ADDRESS, bus_address(&self.name));
        }
        cmd_hook(&mut cmd);
        self.children.push(cmd.spawn().expect("spawn child"));
        // `cmd` (and any pipe end moved into it) is dropped here, closing our copy.
    }

    fn wait_children(&mut self) {
        for mut c in self.children.drain(..) {
            let st = c.wait().unwrap();
            assert!(st.success(), "child failed: {st}");
        }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        BUSES
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(n, _)| *n != self.name);
        let tmp = std::env::temp_dir();
        let _ = std::fs::remove_file(tmp.join(format!("shmbus-test-{}.fifo", self.name)));
        let _ = std::fs::remove_file(tmp.join(format!("shmbus-test-{}.sock", self.name)));
        let _ = std::fs::remove_dir_all(tmp.join(format!("shmbus-test-{}.log", self.name)));
        let object = format!("shmbus.{}", self.name);
        let _ = std::fs::remove_file(format!("/dev/shm/{object}"));
        let dir = std::env::var_os("XDG_RUNTIME_DIR")
            .map(std::path::PathBuf::from)
            .filter(|p| p.is_dir())
            .unwrap_or_else(|| "/tmp".into());
        let _ = std::fs::remove_file(dir.join(format!("{object}.mq")));
        let _ = std::fs::remove_file(dir.join(format!("{object}.sysv")));
        let key = sysv_key(&object);
        let _ = std::fs::remove_file(dir.join(format!("shmbus.sysv-shm-{key:08x}.lock")));
        // SAFETY: shmget/shmctl with plain integers; IPC_RMID ignores the buffer.
        unsafe {
            let id = libc::shmget(key, 0, 0);
            if id >= 0 {
                libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut());
            }
        }
        let c = std::ffi::CString::new(format!("/{object}")).unwrap();
        // SAFETY: a NUL-terminated name; mq_unlink only reads it.
        unsafe { libc::mq_unlink(c.as_ptr()) };
        // SAFETY: msgget/msgctl with plain integers; IPC_RMID ignores the buffer.
        unsafe {
            let id = libc::msgget(sysv_key(&object), 0);
            if id >= 0 {
                libc::msgctl(id, libc::IPC_RMID, std::ptr::null_mut());
            }
        }
    }
}

/// The key shmbus derives from a name (documented in `docs/wire-format.md`).
fn sysv_key(object: &str) -> i32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in object.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let k = ((h ^ (h >> 32)) & 0x7fff_ffff) as i32;
    if k == 0 {
        1
    } else {
        k
    }
}

fn open_tx<T: shmbus::Message>(transport: &str, name: &str) -> Sender<T> {
    if transport == "pipe" {
        return Sender::from_inherited(shmbus::INHERIT_VAR).expect("inherited sender");
    }
    Sender::open_or_create(name, &options(transport, name)).expect("open sender")
}

fn open_rx<T: shmbus::Message>(transport: &str, name: &str) -> Receiver<T> {
    if transport == "pipe" {
        return Receiver::from_inherited(shmbus::INHERIT_VAR).expect("inherited receiver");
    }
    Receiver::open_or_create(name, &options(transport, name)).expect("open receiver")
}

/// The child side. Without the role variable (a normal test run) it does nothing.
#[test]
fn conformance_child() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    let transport = std::env::var(TRANSPORT).unwrap();
    let name = std::env::var(NAME).unwrap();
    match role.as_str() {
        // Sends `count` messages, then leaves.
        "stream_tx" => {
            let tx = open_tx::<Msg>(&transport, &name);
            for i in 0..count() {
                tx.send(Msg::new(i)).expect("send");
            }
        }
        // Sends one message, then waits to be killed.
        "one_then_hang_tx" => {
            let tx = open_tx::<Msg>(&transport, &name);
            tx.send(Msg::new(0)).expect("send");
            std::thread::sleep(Duration::from_secs(120));
        }
        // Sends three messages with no receiver attached yet, then waits to be killed.
        "three_then_hang_tx" => {
            let tx = open_tx::<Msg>(&transport, &name);
            for i in 0..3 {
                tx.send(Msg::new(i)).expect("send");
            }
            println!("sent");
            std::thread::sleep(Duration::from_secs(120));
        }
        // With `SHMBUS_SHM_DIR` pointing at an unusable directory, `Auto` must fall back.
        "auto_fallback" => {
            let mut o = Options::new();
            o.transport(Transport::Auto).capacity(4);
            let tx = Sender::<Msg>::open_or_create(&name, &o).unwrap();
            let rx = Receiver::<Msg>::open_or_create(&name, &o).unwrap();
            assert_eq!(tx.transport(), shmbus::TransportKind::SysvSharedMemory);
            assert_eq!(rx.transport(), shmbus::TransportKind::SysvSharedMemory);
            tx.send(Msg::new(0)).unwrap();
            rx.recv().unwrap().verify(0);
        }
        // Receives one message, then waits to be killed (or leaves, with "one_rx").
        "one_then_hang_rx" | "one_rx" => {
            let rx = open_rx::<Msg>(&transport, &name);
            rx.recv().expect("recv").verify(0);
            if role == "one_then_hang_rx" {
                std::thread::sleep(Duration::from_secs(120));
            }
        }
        // Receives `count` messages in order, then expects the sender to be gone.
        "stream_rx" => {
            let rx = open_rx::<Msg>(&transport, &name);
            for i in 0..count() {
                rx.recv().expect("recv").verify(i);
            }
            assert!(matches!(rx.recv(), Err(RecvError::Disconnected)));
        }
        // A receiver of the wrong type: must be refused.
        "mismatch_rx" => match Receiver::<Other>::from_inherited(shmbus::INHERIT_VAR) {
            Err(OpenError::TypeMismatch { .. }) => {}
            other => panic!("expected a type mismatch, got {other:?}"),
        },
        other => panic!("unknown role {other}"),
    }
}

/// Parent receives what a child sender streams: order, integrity, then `Disconnected`.
fn ordering_and_integrity(transport: &'static str) {
    let mut g = Cleanup::new("order", transport);
    let n = count_for(transport);
    let extra = [(COUNT, n.to_string())];
    let rx = if transport == "pipe" {
        let (tx, rx) = shmbus::pipe::<Msg>().unwrap();
        g.spawn("stream_tx", &extra, |cmd| {
            tx.pass_to(cmd, shmbus::INHERIT_VAR).unwrap()
        });
        rx
    } else {
        // Receiver first where the two ends meet through the receiver (sockets); the FIFO
        // receiver waits for the sender in `open`, so the child is started first there.
        if transport == "fifo" {
            g.spawn("stream_tx", &extra, |_| {});
            open_rx::<Msg>(transport, &g.name)
        } else {
            let rx = open_rx::<Msg>(transport, &g.name);
            g.spawn("stream_tx", &extra, |_| {});
            rx
        }
    };
    let start = Instant::now();
    for i in 0..n {
        rx.recv().expect("recv").verify(i);
    }
    let took = start.elapsed();
    assert!(matches!(rx.recv(), Err(RecvError::Disconnected)));
    eprintln!(
        "{transport}: {n} messages in {took:?} ({:.0} msg/s, debug build)",
        n as f64 / took.as_secs_f64()
    );
    g.wait_children();
}

/// The child receives in order while the parent sends through a small buffer: the parent
/// blocks on full, the child on empty; the child then sees `Disconnected`.
fn blocking_both_ways(transport: &'static str) {
    let mut g = Cleanup::new("block", transport);
    let n = 3000u64;
    let extra = [(COUNT, n.to_string())];
    let tx = if transport == "pipe" {
        let (tx, rx) = shmbus::pipe::<Msg>().unwrap();
        g.spawn("stream_rx", &extra, |cmd| {
            rx.pass_to(cmd, shmbus::INHERIT_VAR).unwrap()
        });
        tx
    } else if matches!(transport, "unix" | "abstract_socket" | "fifo" | "dbus") {
        g.spawn("stream_rx", &extra, |_| {});
        open_tx::<Msg>(transport, &g.name)
    } else {
        let tx = open_tx::<Msg>(transport, &g.name);
        g.spawn("stream_rx", &extra, |_| {});
        tx
    };
    for i in 0..n {
        tx.send(Msg::new(i)).expect("send");
    }
    drop(tx);
    g.wait_children();
}

/// Opens both ends in this process (the receiver in a thread, since some transports make
/// each end wait for the other in `open`).
fn pair<T: shmbus::Message>(g: &Cleanup, opts: &Options) -> (Sender<T>, Receiver<T>) {
    if g.transport == "pipe" {
        return shmbus::pipe::<T>().unwrap();
    }
    let (name, o) = (g.name.clone(), opts.clone());
    let rx =
        std::thread::spawn(move || Receiver::<T>::open_or_create(&name, &o).expect("receiver"));
    // Sockets: let the receiver bind first (the sender retries anyway).
    let tx = Sender::<T>::open_or_create(&g.name, opts).expect("sender");
    (tx, rx.join().unwrap())
}

/// Whether sends can block: not on the file log, which is unbounded (it has no "full", and
/// no receiver is needed for a send to succeed, so a sender never sees `Disconnected`).
/// The parts of the suite about a full transport, or about senders noticing that the
/// receiver left, are skipped there for that reason.
fn bounded(transport: &str) -> bool {
    transport != "file"
}

/// Empty and full, without waiting and with timeouts.
fn timeouts(transport: &'static str) {
    let g = Cleanup::new("timeout", transport);
    let (tx, rx) = pair::<Msg>(&g, &g.options());
    assert!(matches!(rx.try_recv(), Err(TryRecvError::Empty)));
    assert!(matches!(
        rx.recv_timeout(Duration::from_millis(30)),
        Err(RecvTimeoutError::Timeout)
    ));
    if !bounded(transport) {
        for i in 0..100 {
            tx.try_send(Msg::new(i))
                .expect("an unbounded log is never full");
        }
        for i in 0..100 {
            rx.try_recv().expect("recv").verify(i);
        }
        assert!(matches!(rx.try_recv(), Err(TryRecvError::Empty)));
        return;
    }
    let mut sent = 0u64;
    loop {
        match tx.try_send(Msg::new(sent)) {
            Ok(()) => sent += 1,
            Err(TrySendError::Full(m)) => {
                assert_eq!(m.seq, sent, "the message is handed back");
                break;
            }
            Err(e) => panic!("try_send: {e}"),
        }
        assert!(sent < 10_000_000, "never full");
    }
    match tx.send_timeout(Msg::new(sent), Duration::from_millis(30)) {
        Err(SendTimeoutError::Timeout(m)) => assert_eq!(m.seq, sent),
        other => panic!("expected a timeout, got {other:?}"),
    }
    for i in 0..sent {
        rx.recv_timeout(Duration::from_secs(10))
            .expect("recv")
            .verify(i);
    }
    assert!(matches!(rx.try_recv(), Err(TryRecvError::Empty)));
}

/// Disconnection both ways, by drop.
fn disconnect(transport: &'static str) {
    let g = Cleanup::new("disc", transport);
    let (tx, rx) = pair::<Msg>(&g, &g.options());
    tx.send(Msg::new(0)).unwrap();
    drop(tx);
    rx.recv().unwrap().verify(0);
    assert!(matches!(rx.recv(), Err(RecvError::Disconnected)));
    drop(rx);
    if !bounded(transport) {
        return;
    }

    let g = Cleanup::new("disc2", transport);
    let (tx, rx) = pair::<Msg>(&g, &g.options());
    drop(rx);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match tx.send(Msg::new(1)) {
            Err(SendError::Disconnected(m)) => {
                assert_eq!(m.seq, 1);
                break;
            }
            Ok(()) => assert!(Instant::now() < deadline, "sends never failed"),
            Err(e) => panic!("send: {e}"),
        }
    }
}

/// A message larger than the transport carries is an encode error, never truncated.
fn oversize(transport: &'static str) {
    let g = Cleanup::new("big", transport);
    let mut o = g.options();
    o.max_message_size(64);
    let (tx, rx) = pair::<Text>(&g, &o);
    let big = Text {
        s: "x".repeat(100_000),
    };
    match tx.send(big) {
        Err(SendError::Encode(m, shmbus::EncodeError::TooLarge { .. })) => {
            assert_eq!(m.s.len(), 100_000)
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    tx.send(Text { s: "small".into() }).unwrap();
    assert_eq!(rx.recv().unwrap().s, "small");
}

/// Two ends of different types: one of them is refused with `TypeMismatch`.
fn type_mismatch(transport: &'static str) {
    let mut g = Cleanup::new("mismatch", transport);
    if transport == "pipe" {
        let (tx, rx) = shmbus::pipe::<Msg>().unwrap();
        g.spawn("mismatch_rx", &[], |cmd| {
            rx.pass_to(cmd, shmbus::INHERIT_VAR).unwrap()
        });
        g.wait_children();
        drop(tx);
        return;
    }
    let mut o = g.options();
    o.connect_timeout(Duration::from_secs(3));
    let (name, o2) = (g.name.clone(), o.clone());
    let rx = std::thread::spawn(move || Receiver::<Msg>::open_or_create(&name, &o2));
    std::thread::sleep(Duration::from_millis(100));
    let tx = Sender::<Other>::open_or_create(&g.name, &o);
    let rx = rx.join().unwrap();
    let tx_mismatch = matches!(tx, Err(OpenError::TypeMismatch { .. }));
    let rx_mismatch = matches!(rx, Err(OpenError::TypeMismatch { .. }));
    assert!(
        tx_mismatch || rx_mismatch,
        "sender: {tx:?}, receiver: {rx:?}"
    );
}

/// `create` refuses a channel that exists and is in use, on every transport.
fn create_when_in_use(transport: &'static str) {
    if transport == "pipe" {
        return; // anonymous pipes have no name to create
    }
    let g = Cleanup::new("create", transport);
    let mut o = g.options();
    o.connect_timeout(Duration::from_secs(2));
    let holder: Box<dyn std::any::Any> = match transport {
        // The FIFO's existence is all a creator can see without disturbing its peers.
        "fifo" => {
            let path = std::env::temp_dir().join(format!("shmbus-test-{}.fifo", g.name));
            let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
            // SAFETY: a NUL-terminated path; mkfifo only reads it.
            assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
            Box::new(())
        }
        _ => Box::new(Receiver::<Msg>::open_or_create(&g.name, &o).expect("receiver")),
    };
    match Sender::<Msg>::create(&g.name, &o) {
        Err(OpenError::AlreadyExists { .. }) => {}
        other => panic!("{transport}: Sender::create on a channel in use gave {other:?}"),
    }
    match Receiver::<Msg>::create(&g.name, &o) {
        Err(OpenError::AlreadyExists { .. }) => {}
        other => panic!("{transport}: Receiver::create on a channel in use gave {other:?}"),
    }
    drop(holder);
}

/// `Loan::send_checked` reports what `Loan::send` cannot: the receiver is gone.
fn loan_send_checked_reports_disconnect(transport: &'static str) {
    let g = Cleanup::new("loanchk", transport);
    let (tx, rx) = pair::<Msg>(&g, &g.options());
    let mut loan = tx.loan().unwrap();
    *loan = Msg::new(0);
    loan.send_checked().unwrap();
    rx.recv().unwrap().verify(0);
    drop(rx);
    if !bounded(transport) {
        return; // a log needs no receiver: its sends never see `Disconnected`
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut i = 1;
    loop {
        let mut loan = match tx.loan() {
            Ok(l) => l,
            Err(SendError::Disconnected(())) => break,
            Err(e) => panic!("loan: {e}"),
        };
        *loan = Msg::new(i);
        match loan.send_checked() {
            Ok(()) => assert!(Instant::now() < deadline, "sends never failed"),
            Err(SendError::Disconnected(m)) => {
                m.verify(i);
                break;
            }
            Err(e) => panic!("send_checked: {e}"),
        }
        i += 1;
    }
}

/// A peer killed with SIGKILL: the survivor's blocked call returns `Disconnected`.
fn peer_killed(transport: &'static str) {
    // The sender dies while the receiver waits.
    let mut g = Cleanup::new("kill-tx", transport);
    let rx = if transport == "pipe" {
        let (tx, rx) = shmbus::pipe::<Msg>().unwrap();
        g.spawn("one_then_hang_tx", &[], |cmd| {
            tx.pass_to(cmd, shmbus::INHERIT_VAR).unwrap()
        });
        rx
    } else if transport == "fifo" {
        g.spawn("one_then_hang_tx", &[], |_| {});
        open_rx::<Msg>(transport, &g.name)
    } else {
        let rx = open_rx::<Msg>(transport, &g.name);
        g.spawn("one_then_hang_tx", &[], |_| {});
        rx
    };
    rx.recv().unwrap().verify(0);
    let child = g.children.pop().unwrap();
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        let mut child = child;
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
    });
    assert!(matches!(rx.recv(), Err(RecvError::Disconnected)));
    killer.join().unwrap();
    drop(rx);
    drop(g);
    if !bounded(transport) {
        return;
    }

    // The receiver dies while the sender is blocked on a full transport.
    let mut g = Cleanup::new("kill-rx", transport);
    let tx = if transport == "pipe" {
        let (tx, rx) = shmbus::pipe::<Msg>().unwrap();
        g.spawn("one_then_hang_rx", &[], |cmd| {
            rx.pass_to(cmd, shmbus::INHERIT_VAR).unwrap()
        });
        tx
    } else if matches!(transport, "unix" | "abstract_socket" | "fifo" | "dbus") {
        g.spawn("one_then_hang_rx", &[], |_| {});
        open_tx::<Msg>(transport, &g.name)
    } else {
        let tx = open_tx::<Msg>(transport, &g.name);
        g.spawn("one_then_hang_rx", &[], |_| {});
        tx
    };
    tx.send(Msg::new(0)).unwrap();
    let child = g.children.pop().unwrap();
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        let mut child = child;
        child.kill().unwrap();
        child.wait().unwrap();
    });
    let mut i = 1;
    loop {
        match tx.send(Msg::new(i)) {
            Ok(()) => i += 1,
            Err(SendError::Disconnected(_)) => break,
            Err(e) => panic!("send: {e}"),
        }
    }
    killer.join().unwrap();
}

/// The ring and message-queue transports keep what a killed process left: a segment (or
/// queue) that nobody holds is found by the next handle, reused (same type: its committed
/// messages are delivered) and removed by the last handle to leave.
fn stale_segment_reused(transport: &'static str) {
    let mut g = Cleanup::new("stale", transport);
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--exact",
        "conformance_child",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(ROLE, "three_then_hang_tx")
    .env(TRANSPORT, transport)
    .env(NAME, &g.name)
    .stdin(Stdio::null())
    .stdout(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn child");
    // The child's stdout also carries the test harness's lines: wait for ours.
    let out = std::io::BufReader::new(child.stdout.take().unwrap());
    let sent = std::io::BufRead::lines(out).any(|l| l.is_ok_and(|l| l.contains("sent")));
    assert!(sent, "the child sent its messages");
    child.kill().unwrap(); // SIGKILL: nothing is cleaned up
    child.wait().unwrap();
    assert!(
        exists(transport, &g.name),
        "the killed sender's segment is still there"
    );
    let rx = open_rx::<Msg>(transport, &g.name);
    for i in 0..3 {
        rx.recv_timeout(Duration::from_secs(10))
            .expect("a message committed before the crash")
            .verify(i);
    }
    // The recovered channel starts afresh: it waits for a new sender, which continues
    // where the dead one stopped.
    assert!(matches!(rx.try_recv(), Err(TryRecvError::Empty)));
    let tx = open_tx::<Msg>(transport, &g.name);
    tx.send(Msg::new(3)).unwrap();
    drop(tx);
    rx.recv().unwrap().verify(3);
    assert!(matches!(rx.recv(), Err(RecvError::Disconnected)));
    drop(rx);
    assert!(
        !exists(transport, &g.name),
        "the last handle removed the segment"
    );
    g.children.clear();
}

/// Whether the segment or queue of channel `name` exists.
fn exists(transport: &str, name: &str) -> bool {
    let object = format!("shmbus.{name}");
    match transport {
        "shm" => std::path::Path::new("/dev/shm").join(&object).exists(),
        // SAFETY: shmget with plain integers only looks the key up.
        "sysv_shm" => (unsafe { libc::shmget(sysv_key(&object), 0, 0) }) >= 0,
        // SAFETY: msgget with plain integers only looks the key up.
        "sysv_mq" => (unsafe { libc::msgget(sysv_key(&object), 0) }) >= 0,
        "posix_mq" => {
            let c = std::ffi::CString::new(format!("/{object}")).unwrap();
            // SAFETY: a NUL-terminated name; without O_CREAT mq_open only looks it up.
            let q = unsafe { libc::mq_open(c.as_ptr(), libc::O_RDONLY) };
            if q >= 0 {
                // SAFETY: closes the descriptor just opened.
                unsafe { libc::mq_close(q) };
            }
            q >= 0
        }
        other => panic!("{other} has no segment"),
    }
}

macro_rules! ring_conformance {
    ($($transport:ident),* $(,)?) => {$(
        mod $transport {
            #[test]
            fn stale_segment_reused() { super::stale_segment_reused(stringify!($transport)) }
        }
    )*};
}

mod ring {
    use super::*;
    ring_conformance!(shm, sysv_shm, posix_mq, sysv_mq);
}

macro_rules! conformance {
    ($($transport:ident),* $(,)?) => {$(
        mod $transport {
            #[test]
            fn ordering_and_integrity() { super::ordering_and_integrity(stringify!($transport)) }
            #[test]
            fn blocking_both_ways() { super::blocking_both_ways(stringify!($transport)) }
            #[test]
            fn timeouts() { super::timeouts(stringify!($transport)) }
            #[test]
            fn disconnect() { super::disconnect(stringify!($transport)) }
            #[test]
            fn oversize() { super::oversize(stringify!($transport)) }
            #[test]
            fn type_mismatch() { super::type_mismatch(stringify!($transport)) }
            #[test]
            fn peer_killed() { super::peer_killed(stringify!($transport)) }
            #[test]
            fn create_when_in_use() { super::create_when_in_use(stringify!($transport)) }
            #[test]
            fn loan_send_checked_reports_disconnect() {
                super::loan_send_checked_reports_disconnect(stringify!($transport))
            }
        }
    )*};
}

conformance!(
    shm,
    sysv_shm,
    pipe,
    fifo,
    unix,
    abstract_socket,
    posix_mq,
    sysv_mq,
    file
);

#[cfg(feature = "dbus")]
conformance!(dbus);

/// `Auto` picks shared memory where `/dev/shm` is usable, and says so.
#[test]
fn auto_prefers_shared_memory() {
    let g = Cleanup::new("auto", "shm");
    let mut o = Options::new();
    o.transport(Transport::Auto).capacity(4);
    let tx = Sender::<Msg>::open_or_create(&g.name, &o).unwrap();
    let rx = Receiver::<Msg>::open_or_create(&g.name, &o).unwrap();
    let expected = if std::fs::metadata("/dev/shm").is_ok_and(|m| m.is_dir()) {
        shmbus::TransportKind::SharedMemory
    } else {
        shmbus::TransportKind::PosixQueue
    };
    assert_eq!(tx.transport(), expected);
    assert_eq!(rx.transport(), expected);
    tx.send(Msg::new(0)).unwrap();
    rx.recv().unwrap().verify(0);
}

/// System V shared memory: `ipcs -m` lists the segment (under its key) while the channel is
/// open, with the zero-copy API (loans, samples in place), and nothing once the last handle
/// is gone; the companion lock file goes too.
#[test]
fn sysv_shm_listed_by_ipcs_while_open() {
    let g = Cleanup::new("ipcs", "sysv_shm");
    let key = 0x5b00_0000 | (std::process::id() as i32 & 0xff_ffff);
    let mut o = Options::new();
    o.capacity(4)
        .transport(Transport::SysvSharedMemory { key: Some(key) });
    let listed = || {
        let out = Command::new("ipcs")
            .arg("-m")
            .output()
            .expect("run ipcs -m");
        String::from_utf8_lossy(&out.stdout).contains(&format!("0x{key:08x}"))
    };
    let dir = std::env::var_os("XDG_RUNTIME_DIR")
        .map(std::path::PathBuf::from)
        .filter(|p| p.is_dir())
        .unwrap_or_else(|| "/tmp".into());
    let lock = dir.join(format!("shmbus.sysv-shm-{key:08x}.lock"));
    assert!(!listed(), "key {key:#x} is free before the test");
    let tx = Sender::<Msg>::open_or_create(&g.name, &o).unwrap();
    let rx = Receiver::<Msg>::open_or_create(&g.name, &o).unwrap();
    assert_eq!(tx.transport(), shmbus::TransportKind::SysvSharedMemory);
    assert_eq!(rx.transport(), shmbus::TransportKind::SysvSharedMemory);
    assert!(listed(), "ipcs -m lists the open channel's segment");
    assert!(lock.exists(), "the lock file {} exists", lock.display());
    let mut loan = tx.loan().unwrap();
    *loan = Msg::new(7);
    loan.send();
    let sample = rx.recv().unwrap();
    sample.verify(7);
    drop(sample);
    drop(tx);
    assert!(listed(), "still listed while the receiver is open");
    drop(rx);
    assert!(!listed(), "ipcs -m lists nothing once every handle is gone");
    assert!(!lock.exists(), "the lock file is removed");
}

/// A System V key of 0 (`IPC_PRIVATE`) is refused.
#[test]
fn sysv_shm_refuses_ipc_private() {
    let mut o = Options::new();
    o.transport(Transport::SysvSharedMemory { key: Some(0) });
    assert!(matches!(
        Sender::<Msg>::open_or_create("conf-ipc-private", &o),
        Err(OpenError::InvalidOptions { .. })
    ));
}

/// `Auto` falls back to System V shared memory when `/dev/shm` is not usable (here: the
/// probed directory is overridden with a path that is not a directory, in a child process
/// so the override does not leak into other tests).
#[test]
fn auto_falls_back_without_dev_shm() {
    let mut g = Cleanup::new("autofb", "sysv_shm");
    let not_a_dir = std::env::temp_dir().join(format!("shmbus-test-{}.notadir", g.name));
    std::fs::write(&not_a_dir, b"").unwrap();
    let extra = [("SHMBUS_SHM_DIR", not_a_dir.display().to_string())];
    g.spawn("auto_fallback", &extra, |_| {});
    g.wait_children();
    let _ = std::fs::remove_file(&not_a_dir);
}

// Unix-socket peer filtering by uid (`Options::allow_uid`) is tested with a sender of
// another user in tests/permissions.rs.

/// POSIX queues deliver higher priorities first.
#[test]
fn posix_queue_priorities() {
    let g = Cleanup::new("prio", "posix_mq");
    let (tx, rx) = pair::<Msg>(&g, &g.options());
    tx.send_with_priority(Msg::new(1), 1).unwrap();
    tx.send_with_priority(Msg::new(2), 9).unwrap();
    tx.send_with_priority(Msg::new(3), 5).unwrap();
    tx.send(Msg::new(4)).unwrap(); // priority 0
    for seq in [2, 3, 1, 4] {
        rx.recv_timeout(Duration::from_secs(5)).unwrap().verify(seq);
    }
}

/// System V queues: a receiver with `Options::message_type` takes only that type.
#[test]
fn sysv_queue_message_type_selection() {
    let g = Cleanup::new("mtype", "sysv_mq");
    let mut o = g.options();
    let tx = Sender::<Msg>::open_or_create(&g.name, &o).unwrap();
    o.message_type(2);
    let rx = Receiver::<Msg>::open_or_create(&g.name, &o).unwrap();
    tx.send_with_priority(Msg::new(1), 1).unwrap();
    tx.send_with_priority(Msg::new(2), 2).unwrap();
    tx.send_with_priority(Msg::new(3), 3).unwrap();
    rx.recv_timeout(Duration::from_secs(5)).unwrap().verify(2);
    assert!(matches!(rx.try_recv(), Err(TryRecvError::Empty)));
    drop(rx);
    drop(tx);
}
