//! The D-Bus transport seen from standard D-Bus tools, on a private `dbus-daemon` per test
//! (never the machine's bus): `dbus-monitor` observes a broadcast channel's signals,
//! `dbus-send` (and `busctl`, where installed) drives a request-response [`Server`] and is
//! refused with a typed D-Bus error when it sends the wrong type. The conformance suite
//! (`tests/conformance.rs`) runs the queue channel across processes.
#![cfg(feature = "dbus")]

#[path = "common/private_bus.rs"]
mod private_bus;

use std::io::BufRead;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use private_bus::PrivateBus;
use shmbus::{
    Client, DBusBus, Delivery, Message, OpenError, Options, Receiver, RecvError, RecvTimeoutError,
    RequestError, Sender, Server, Transport, TransportKind,
};

#[derive(shmbus::Message, serde::Serialize, serde::Deserialize, Debug, PartialEq)]
struct Add {
    a: i64,
    b: i64,
}

#[derive(shmbus::Message, serde::Serialize, serde::Deserialize, Debug, PartialEq)]
struct Sum(i64);

#[derive(shmbus::Message, Clone, Copy, Debug, PartialEq)]
#[repr(C)]
struct Tick {
    seq: u64,
    value: u64,
}

fn options(bus: &PrivateBus) -> Options {
    options_at(&bus.address)
}

fn options_at(address: &str) -> Options {
    let mut o = Options::new();
    o.transport(Transport::DBus {
        bus: DBusBus::Address(address.to_owned()),
    })
    .connect_timeout(Duration::from_secs(10));
    o
}

const ROLE: &str = "SHMBUS_DBUS_TEST_ROLE";
const ADDRESS: &str = "SHMBUS_DBUS_TEST_ADDRESS";

/// The child side (this test binary re-run with a role); does nothing in a normal run.
#[test]
fn dbus_child() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    let o = options_at(&std::env::var(ADDRESS).unwrap());
    match role.as_str() {
        // Takes one request, says so, and never answers (waits to be killed).
        "server_hangs" => {
            let server = Server::<Add, Sum>::open("calc", &o).unwrap();
            println!("ready");
            let _req = server.recv().unwrap();
            println!("got");
            std::thread::sleep(Duration::from_secs(120));
        }
        // Sends one request, waiting for an answer that does not come until killed.
        "client_waits" => {
            let client = Client::<Add, Sum>::open("calc", &o).unwrap();
            let _ = client.request(&Add { a: 1, b: 1 }, Duration::from_secs(120));
        }
        // Broadcasts three ticks, says so, then waits to be killed.
        "publisher" => {
            let mut o = o;
            o.delivery(Delivery::Broadcast);
            let tx = Sender::<Tick>::create("ticks", &o).unwrap();
            println!("ready");
            let mut line = String::new();
            std::io::stdin().read_line(&mut line).unwrap();
            for seq in 0..3 {
                tx.send(Tick { seq, value: seq }).unwrap();
            }
            println!("sent");
            std::thread::sleep(Duration::from_secs(120));
        }
        // Takes the queue channel `relay`'s name, says so, then waits to be killed.
        "receiver" => {
            let _rx = Receiver::<Tick>::create("relay", &o).unwrap();
            println!("ready");
            std::thread::sleep(Duration::from_secs(120));
        }
        other => panic!("unknown role {other}"),
    }
}

/// This test binary as a child in `role` on `bus`, stdin and stdout piped.
fn child(bus: &PrivateBus, role: &str) -> (Tool, std::process::ChildStdin) {
    let mut tool = Tool::spawn_with_stdin(
        Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "dbus_child", "--nocapture", "--test-threads=1"])
            .env(ROLE, role)
            .env(ADDRESS, &bus.address),
    );
    let stdin = tool.child.stdin.take().unwrap();
    (tool, stdin)
}

fn wait_line(tool: &Tool, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(line) = tool.lines.recv_timeout(Duration::from_millis(100)) {
            if line.trim().ends_with(want) {
                return;
            }
        }
    }
    panic!("the child never printed {want:?}");
}

/// A child process whose stdout lines arrive on a channel; killed on drop.
struct Tool {
    child: std::process::Child,
    lines: mpsc::Receiver<String>,
}

impl Tool {
    fn spawn(cmd: &mut Command) -> Tool {
        Tool::spawn_from(cmd.stdin(Stdio::null()))
    }

    fn spawn_with_stdin(cmd: &mut Command) -> Tool {
        Tool::spawn_from(cmd.stdin(Stdio::piped()))
    }

    fn spawn_from(cmd: &mut Command) -> Tool {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e} (install dbus-bin)"));
        let out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Tool { child, lines }
    }
}

impl Drop for Tool {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `dbus-monitor` on the private bus prints a shmbus broadcast signal: its path, interface,
/// member, the type fingerprint and the payload bytes; a subscribed receiver gets the same
/// message, and `Disconnected` once the sender is gone.
#[test]
fn dbus_monitor_observes_a_shmbus_signal() {
    let bus = PrivateBus::start();
    let mut o = options(&bus);
    o.delivery(Delivery::Broadcast);
    let tx = Sender::<Tick>::create("ticks", &o).unwrap();
    assert_eq!(tx.transport(), TransportKind::DBus);
    let rx = Receiver::<Tick>::open_or_create("ticks", &o).unwrap();
    let monitor = Tool::spawn(Command::new("dbus-monitor").args([
        "--address",
        &bus.address,
        "type='signal',interface='org.shmbus.Channel1'",
    ]));
    // The monitor is ready at some point after it starts: send until it shows a signal.
    let fingerprint = format!("uint64 {}", <Tick as Message>::INFO.fingerprint);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = Vec::new();
    let mut seq = 0u64;
    'outer: loop {
        assert!(Instant::now() < deadline, "dbus-monitor showed: {seen:#?}");
        tx.send(Tick {
            seq,
            value: 0x1122_3344_5566_7788,
        })
        .unwrap();
        seq += 1;
        while let Ok(line) = monitor.lines.recv_timeout(Duration::from_millis(100)) {
            seen.push(line);
            let text = seen.join("\n");
            if let Some(at) = text.find("member=Message") {
                // The body follows the header line: the fingerprint, then the bytes.
                let rest = &text[at..];
                if rest.contains("array of bytes") && rest.contains("88 77 66 55 44 33 22 11") {
                    break 'outer;
                }
            }
        }
    }
    let text = seen.join("\n");
    assert!(
        text.contains("path=/org/shmbus/ticks; interface=org.shmbus.Channel1; member=Message"),
        "{text}"
    );
    assert!(text.contains(&fingerprint), "{text}");
    // The subscriber got every tick, in order.
    for i in 0..seq {
        let t = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(t.seq, i);
        assert_eq!(t.value, 0x1122_3344_5566_7788);
    }
    drop(tx);
    assert!(matches!(rx.recv(), Err(RecvError::Disconnected)));
}

/// Every broadcast receiver gets every message; a second broadcast sender is refused.
#[test]
fn broadcast_reaches_every_receiver() {
    let bus = PrivateBus::start();
    let mut o = options(&bus);
    o.delivery(Delivery::Broadcast);
    let rx1 = Receiver::<Tick>::open_or_create("fan", &o).unwrap();
    let rx2 = Receiver::<Tick>::open_or_create("fan", &o).unwrap();
    let tx = Sender::<Tick>::open_or_create("fan", &o).unwrap();
    assert!(matches!(
        Sender::<Tick>::open_or_create("fan", &o),
        Err(OpenError::TooManyParticipants { role: "sender", .. })
    ));
    // Subscriptions are in place once the bus has answered AddMatch, before `open` returns.
    for i in 0..100 {
        tx.send(Tick { seq: i, value: i }).unwrap();
    }
    for rx in [&rx1, &rx2] {
        for i in 0..100 {
            assert_eq!(rx.recv_timeout(Duration::from_secs(10)).unwrap().seq, i);
        }
    }
    // A receiver of another type is refused while the sender is there.
    assert!(matches!(
        Receiver::<Add>::open_or_create("fan", &o),
        Err(OpenError::TypeMismatch { .. })
    ));
}

fn serve_once(server: &Server<Add, Sum>) {
    let req = server.recv().unwrap();
    server.respond(&req, &Sum(req.body.a + req.body.b)).unwrap();
}

/// A shmbus `Client` and `Server` over D-Bus: answers, then `ServerGone` once the server left.
#[test]
fn client_and_server_over_dbus() {
    let bus = PrivateBus::start();
    let o = options(&bus);
    let server = Server::<Add, Sum>::open("calc", &o).unwrap();
    assert!(matches!(
        Server::<Add, Sum>::open("calc", &o),
        Err(OpenError::TooManyParticipants { .. })
    ));
    let client_opts = o.clone();
    let client = std::thread::spawn(move || {
        let client = Client::<Add, Sum>::open("calc", &client_opts).unwrap();
        let mut sums = Vec::new();
        for i in 0..20 {
            sums.push(
                client
                    .request(&Add { a: i, b: 100 }, Duration::from_secs(10))
                    .unwrap(),
            );
        }
        sums
    });
    for _ in 0..20 {
        serve_once(&server);
    }
    let sums = client.join().unwrap();
    assert_eq!(sums, (0..20).map(|i| Sum(i + 100)).collect::<Vec<_>>());
    // The only client left: the server sees it.
    assert!(matches!(
        server.recv_timeout(Duration::from_secs(10)),
        Err(RecvTimeoutError::Disconnected)
    ));
    // A client of another request type is refused at open.
    let wrong = Client::<Sum, Add>::open("calc", &o);
    assert!(
        matches!(wrong, Err(OpenError::TypeMismatch { .. })),
        "{:?}",
        wrong.err()
    );
    let client = Client::<Add, Sum>::open("calc", &o).unwrap();
    drop(server);
    assert!(matches!(
        client.request(&Add { a: 1, b: 2 }, Duration::from_secs(5)),
        Err(RequestError::ServerGone)
    ));
}

/// `dbus-send` (and `busctl`, if installed) call the service: postcard `Add { a: 2, b: 3 }`
/// is the bytes 4 6 (zigzag varints), the answer `Sum(5)` is the byte 10.
#[test]
fn dbus_send_and_busctl_drive_a_server() {
    let bus = PrivateBus::start();
    let o = options(&bus);
    let server = Server::<Add, Sum>::open("calc", &o).unwrap();
    let fp = <Add as Message>::INFO.fingerprint;
    let resp_fp = <Sum as Message>::INFO.fingerprint;
    let address = bus.address.clone();
    let call = std::thread::spawn(move || {
        Command::new("dbus-send")
            .args([
                &format!("--bus={address}"),
                "--print-reply",
                "--dest=org.shmbus.calc",
                "/org/shmbus/calc",
                "org.shmbus.Service1.Call",
                &format!("uint64:{fp}"),
                "array:byte:4,6",
            ])
            .output()
            .expect("run dbus-send (install dbus-bin)")
    });
    serve_once(&server);
    let out = call.join().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains(&format!("uint64 {resp_fp}")), "{text}");
    assert!(
        text.contains("array of bytes [\n      0a\n   ]") || text.contains("0a"),
        "{text}"
    );

    // The wrong fingerprint: a typed D-Bus error, and the server sees nothing.
    let out = Command::new("dbus-send")
        .args([
            &format!("--bus={}", bus.address),
            "--print-reply",
            "--dest=org.shmbus.calc",
            "/org/shmbus/calc",
            "org.shmbus.Service1.Call",
            "uint64:12345",
            "array:byte:4,6",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("org.shmbus.Error.TypeMismatch"), "{err}");
    assert!(matches!(
        server.recv_timeout(Duration::from_millis(50)),
        Err(RecvTimeoutError::Timeout)
    ));

    if Command::new("busctl").arg("--version").output().is_err() {
        eprintln!("busctl is not installed (package systemd): the busctl call is not tried");
        return;
    }
    let address = bus.address.clone();
    let call = std::thread::spawn(move || {
        Command::new("busctl")
            .args([
                &format!("--address={address}"),
                "call",
                "org.shmbus.calc",
                "/org/shmbus/calc",
                "org.shmbus.Service1",
                "Call",
                "tay",
                &fp.to_string(),
                "2",
                "4",
                "6",
            ])
            .output()
            .unwrap()
    });
    serve_once(&server);
    let out = call.join().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.trim(), format!("tay {resp_fp} 1 10"));
}

/// A queue channel's `Send` from `dbus-send` with the wrong fingerprint is refused with
/// `org.shmbus.Error.TypeMismatch`; with the right one the receiver gets the message.
#[test]
fn dbus_send_to_a_queue_channel() {
    let bus = PrivateBus::start();
    let o = options(&bus);
    let rx = Receiver::<Tick>::create("jobs", &o).unwrap();
    let send = |fp: u64, bytes: &str| {
        Command::new("dbus-send")
            .args([
                &format!("--bus={}", bus.address),
                "--print-reply",
                "--dest=org.shmbus.jobs",
                "/org/shmbus/jobs",
                "org.shmbus.Channel1.Send",
                &format!("uint64:{fp}"),
                &format!("array:byte:{bytes}"),
            ])
            .output()
            .unwrap()
    };
    let bad = send(7, "1,2");
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("org.shmbus.Error.TypeMismatch"));
    let fp = <Tick as Message>::INFO.fingerprint;
    let short = send(fp, "1,2");
    assert!(String::from_utf8_lossy(&short.stderr).is_empty());
    // Two bytes are not a Tick: the receiver reports a decode error, then goes on. (The
    // receiver answers `Send` before it queues the message, so wait for it.)
    let wait = Duration::from_secs(10);
    assert!(matches!(
        rx.recv_timeout(wait),
        Err(shmbus::RecvTimeoutError::Decode(_))
    ));
    let ok = send(fp, "5,0,0,0,0,0,0,0,9,0,0,0,0,0,0,0");
    assert!(ok.status.success());
    assert_eq!(
        rx.recv_timeout(wait).unwrap().into_inner(),
        Tick { seq: 5, value: 9 }
    );
}

/// With the `tokio` feature, a D-Bus receiver is an `AsyncReceiver` (its descriptor is an
/// eventfd that the connection's pump signals): messages from a sender in another thread
/// arrive in order, then `Disconnected`.
#[cfg(feature = "tokio")]
#[tokio::test(flavor = "current_thread")]
async fn async_receiver_on_dbus() {
    let bus = PrivateBus::start();
    let mut o = options(&bus);
    o.capacity(16);
    let rx = Receiver::<Tick>::create("async", &o).unwrap();
    assert!(rx.poll_fd().is_some());
    let mut rx = shmbus::AsyncReceiver::new(rx).unwrap();
    let sender = std::thread::spawn(move || {
        let tx = Sender::<Tick>::open("async", &o).unwrap();
        for seq in 0..300 {
            tx.send(Tick { seq, value: seq }).unwrap();
        }
    });
    for seq in 0..300 {
        let t = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("a message within 10 s")
            .unwrap();
        assert_eq!(t.seq, seq);
    }
    sender.join().unwrap();
    let end = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await;
    assert!(matches!(end, Ok(Err(RecvError::Disconnected))), "{end:?}");
}

/// A server process killed with SIGKILL while a client waits for its answer: the client's
/// request fails with `ServerGone` at once (the bus answers the pending call), not at its
/// timeout.
#[test]
fn killed_server_fails_a_waiting_request() {
    let bus = PrivateBus::start();
    let (mut server, _stdin) = child(&bus, "server_hangs");
    wait_line(&server, "ready");
    let client = Client::<Add, Sum>::open("calc", &options(&bus)).unwrap();
    let waiting =
        std::thread::spawn(move || client.request(&Add { a: 1, b: 2 }, Duration::from_secs(60)));
    wait_line(&server, "got");
    server.child.kill().unwrap(); // SIGKILL
    server.child.wait().unwrap();
    let r = waiting.join().unwrap();
    assert!(matches!(r, Err(RequestError::ServerGone)), "{r:?}");
}

/// A client process killed with SIGKILL while its request waits: the server, whose only
/// client that greeted it is gone, sees `Disconnected` once it has taken the request.
#[test]
fn killed_client_disconnects_the_server() {
    let bus = PrivateBus::start();
    let server = Server::<Add, Sum>::open("calc", &options(&bus)).unwrap();
    let (mut client, _stdin) = child(&bus, "client_waits");
    let req = server.recv_timeout(Duration::from_secs(30)).unwrap();
    assert_eq!(req.body, Add { a: 1, b: 1 });
    client.child.kill().unwrap();
    client.child.wait().unwrap();
    assert!(matches!(
        server.recv_timeout(Duration::from_secs(30)),
        Err(RecvTimeoutError::Disconnected)
    ));
}

/// A broadcast sender in another process: its messages arrive, and its SIGKILL is seen as
/// `Disconnected` by the subscriber.
#[test]
fn killed_publisher_disconnects_subscribers() {
    let bus = PrivateBus::start();
    let (mut publisher, mut stdin) = child(&bus, "publisher");
    wait_line(&publisher, "ready");
    let mut o = options(&bus);
    o.delivery(Delivery::Broadcast);
    let rx = Receiver::<Tick>::open("ticks", &o).unwrap();
    std::io::Write::write_all(&mut stdin, b"go\n").unwrap();
    for seq in 0..3 {
        assert_eq!(rx.recv_timeout(Duration::from_secs(30)).unwrap().seq, seq);
    }
    wait_line(&publisher, "sent");
    publisher.child.kill().unwrap();
    publisher.child.wait().unwrap();
    assert!(matches!(
        rx.recv_timeout(Duration::from_secs(30)),
        Err(RecvTimeoutError::Disconnected)
    ));
}

/// Found while adding the crash matrix's D-Bus row: a sender whose receiver was SIGKILLed sent its
/// next messages to whichever receiver took the channel's name next, which had never been
/// greeted by it, so that receiver would never see that sender leave (a `recv` waiting
/// forever). The sender now addresses the receiver it greeted (its unique connection name):
/// once that one is gone, every send is `Disconnected`, as on the byte-stream transports.
#[test]
fn sender_stays_disconnected_from_a_killed_receiver() {
    let bus = PrivateBus::start();
    let o = options(&bus);
    let (mut first, _stdin) = child(&bus, "receiver");
    wait_line(&first, "ready");
    let tx = Sender::<Tick>::open("relay", &o).unwrap();
    tx.send(Tick { seq: 0, value: 0 }).unwrap();
    first.child.kill().unwrap(); // SIGKILL
    first.child.wait().unwrap();
    // A new receiver takes the name once the bus has dropped the dead one's connection.
    let deadline = Instant::now() + Duration::from_secs(30);
    let rx = loop {
        match Receiver::<Tick>::create("relay", &o) {
            Ok(rx) => break rx,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => panic!("the name was never released: {e}"),
        }
    };
    for seq in 1..3 {
        match tx.send(Tick { seq, value: seq }) {
            Err(shmbus::SendError::Disconnected(_)) => {}
            other => panic!("send {seq} to a dead receiver's successor: {other:?}"),
        }
    }
    assert!(matches!(rx.try_recv(), Err(shmbus::TryRecvError::Empty)));
}
