//! shmbus side by side with its peers, between two processes, on the 64-byte round-trip and
//! busy-stream scenarios of `benches/compare.rs` (same harness, same table format):
//! iceoryx2 publish-subscribe (loan/send, busy-polling `receive`), ipc-channel byte channels
//! and interprocess local sockets, next to the raw spin flag and per-slot sequence ring and
//! shmbus itself, all in one run.
//!
//! ```text
//! cargo run --release --manifest-path peers/Cargo.toml [-- --quick]
//! ```

#[path = "../../benches/bus/mod.rs"]
mod bus;
#[path = "../../benches/harness/mod.rs"]
mod harness;
#[path = "../../benches/raw/mod.rs"]
mod raw;

use std::io::{Read, Write};
use std::sync::atomic::{AtomicU32, Ordering};

use harness::{Counts, Figure, Link, Mode, Row, Spec};
use iceoryx2::port::update_connections::UpdateConnections;
use iceoryx2::prelude::*;

// ---------------------------------------------------------------------------------------
// iceoryx2: a publish-subscribe service each way; loan_uninit → write → send, and
// busy-polling `receive` (pub-sub never blocks; events would add a wake-up per message).

#[derive(Debug, Clone, Copy, ZeroCopySend)]
#[repr(C)]
struct Msg {
    data: [u64; 8],
}

type Service = iceoryx2::service::ipc::Service;
type PubSub = iceoryx2::service::port_factory::publish_subscribe::PortFactory<Service, Msg, ()>;

struct Iox {
    _node: Node<Service>,
    down: PubSub,
    up: PubSub,
    publisher: iceoryx2::port::publisher::Publisher<Service, Msg, ()>,
    subscriber: iceoryx2::port::subscriber::Subscriber<Service, Msg, ()>,
    side: harness::Side,
}

static SERIAL: AtomicU32 = AtomicU32::new(0);

impl Iox {
    fn open(spec: &Spec, stem: &str, side: harness::Side) -> Iox {
        let node = NodeBuilder::new()
            .create::<Service>()
            .expect("iceoryx2 node");
        let service = |dir: &str| {
            let name: ServiceName = format!("{stem}/{dir}").as_str().try_into().unwrap();
            node.service_builder(&name)
                .publish_subscribe::<Msg>()
                .enable_safe_overflow(false)
                .subscriber_max_buffer_size(spec.capacity)
                .max_publishers(1)
                .max_subscribers(1)
                .open_or_create()
                .expect("iceoryx2 service")
        };
        let (down, up) = (service("down"), service("up"));
        let (tx, rx) = match side {
            harness::Side::Parent => (&down, &up),
            harness::Side::Child => (&up, &down),
        };
        let publisher = tx
            .publisher_builder()
            .backpressure_strategy(BackpressureStrategy::RetryUntilDelivered)
            .create()
            .expect("iceoryx2 publisher");
        let subscriber = rx
            .subscriber_builder()
            .create()
            .expect("iceoryx2 subscriber");
        Iox {
            _node: node,
            down,
            up,
            publisher,
            subscriber,
            side,
        }
    }
}

impl Link for Iox {
    fn create(spec: &Spec) -> (Self, Vec<String>) {
        let stem = format!(
            "shmbus-bench/{}-{}",
            std::process::id(),
            SERIAL.fetch_add(1, Ordering::Relaxed)
        );
        (Iox::open(spec, &stem, harness::Side::Parent), vec![stem])
    }

    fn attach(spec: &Spec, args: &[String]) -> Self {
        let l = Iox::open(spec, &args[0], harness::Side::Child);
        // The parent's ports exist already; connect to them before the first send, or the
        // first samples go nowhere.
        while l.up.dynamic_config().number_of_subscribers() < 1
            || l.down.dynamic_config().number_of_publishers() < 1
        {
            std::thread::yield_now();
        }
        l.publisher.update_connections().expect("connect publisher");
        l.subscriber
            .update_connections()
            .expect("connect subscriber");
        l
    }

    fn connected(&mut self) {
        // A sample published before the other side subscribed would be lost (no history).
        assert_eq!(self.side, harness::Side::Parent);
        while self.down.dynamic_config().number_of_subscribers() < 1
            || self.up.dynamic_config().number_of_publishers() < 1
        {
            std::thread::yield_now();
        }
        self.publisher
            .update_connections()
            .expect("connect publisher");
        self.subscriber
            .update_connections()
            .expect("connect subscriber");
    }

    #[inline]
    fn send(&mut self, fill: impl FnOnce(&mut [u64])) {
        let mut m = Msg { data: [0; 8] };
        fill(&mut m.data);
        let sample = self.publisher.loan_uninit().expect("loan");
        sample.write_payload(m).send().expect("send");
    }

    #[inline]
    fn recv(&mut self, read: impl FnOnce(&[u64])) {
        loop {
            if let Some(s) = self.subscriber.receive().expect("receive") {
                read(&s.data);
                return;
            }
            std::hint::spin_loop();
        }
    }
}

// ---------------------------------------------------------------------------------------
// ipc-channel: a byte channel each way, set up through a one-shot server.

struct IpcChan {
    server: Option<ipc_channel::ipc::IpcOneShotServer<(IpcTx, IpcRx)>>,
    tx: Option<IpcTx>,
    rx: Option<IpcRx>,
    buf: Vec<u64>,
}
type IpcTx = ipc_channel::ipc::IpcBytesSender;
type IpcRx = ipc_channel::ipc::IpcBytesReceiver;

fn as_bytes(w: &[u64]) -> &[u8] {
    // SAFETY: any u64 slice is a valid byte slice of 8× the length.
    unsafe { std::slice::from_raw_parts(w.as_ptr().cast(), w.len() * 8) }
}

impl Link for IpcChan {
    fn create(spec: &Spec) -> (Self, Vec<String>) {
        let (server, name) = ipc_channel::ipc::IpcOneShotServer::new().expect("ipc server");
        let l = IpcChan {
            server: Some(server),
            tx: None,
            rx: None,
            buf: vec![0; spec.size / 8],
        };
        (l, vec![name])
    }

    fn attach(spec: &Spec, args: &[String]) -> Self {
        let boot = ipc_channel::ipc::IpcSender::connect(args[0].clone()).expect("connect");
        let (tx_down, rx_down) = ipc_channel::ipc::bytes_channel().unwrap();
        let (tx_up, rx_up) = ipc_channel::ipc::bytes_channel().unwrap();
        boot.send((tx_down, rx_up)).expect("bootstrap");
        IpcChan {
            server: None,
            tx: Some(tx_up),
            rx: Some(rx_down),
            buf: vec![0; spec.size / 8],
        }
    }

    fn connected(&mut self) {
        let (_, (tx, rx)) = self.server.take().unwrap().accept().expect("accept");
        self.tx = Some(tx);
        self.rx = Some(rx);
    }

    #[inline]
    fn send(&mut self, fill: impl FnOnce(&mut [u64])) {
        fill(&mut self.buf);
        self.tx
            .as_ref()
            .unwrap()
            .send(as_bytes(&self.buf))
            .expect("send");
    }

    #[inline]
    fn recv(&mut self, read: impl FnOnce(&[u64])) {
        let v = self.rx.as_ref().unwrap().recv().expect("recv");
        for (w, c) in self.buf.iter_mut().zip(v.chunks_exact(8)) {
            *w = u64::from_ne_bytes(c.try_into().unwrap());
        }
        read(&self.buf);
    }
}

// ---------------------------------------------------------------------------------------
// interprocess: a local socket stream (a Unix socket in the abstract namespace).

struct LocalSock {
    listener: Option<interprocess::local_socket::Listener>,
    conn: Option<interprocess::local_socket::Stream>,
    buf: Vec<u64>,
}

fn sock_name(stem: &str) -> interprocess::local_socket::Name<'static> {
    use interprocess::local_socket::{GenericNamespaced, ToNsName};
    stem.to_string()
        .to_ns_name::<GenericNamespaced>()
        .expect("socket name")
}

impl Link for LocalSock {
    fn create(spec: &Spec) -> (Self, Vec<String>) {
        use interprocess::local_socket::ListenerOptions;
        let stem = format!(
            "shmbus-bench-{}-{}.sock",
            std::process::id(),
            SERIAL.fetch_add(1, Ordering::Relaxed)
        );
        let listener = ListenerOptions::new()
            .name(sock_name(&stem))
            .create_sync()
            .expect("listen");
        let l = LocalSock {
            listener: Some(listener),
            conn: None,
            buf: vec![0; spec.size / 8],
        };
        (l, vec![stem])
    }

    fn attach(spec: &Spec, args: &[String]) -> Self {
        use interprocess::local_socket::traits::Stream as _;
        LocalSock {
            listener: None,
            conn: Some(
                interprocess::local_socket::Stream::connect(sock_name(&args[0])).expect("connect"),
            ),
            buf: vec![0; spec.size / 8],
        }
    }

    fn connected(&mut self) {
        use interprocess::local_socket::traits::Listener as _;
        self.conn = Some(self.listener.take().unwrap().accept().expect("accept"));
    }

    #[inline]
    fn send(&mut self, fill: impl FnOnce(&mut [u64])) {
        fill(&mut self.buf);
        let bytes = as_bytes(&self.buf).to_vec();
        self.conn
            .as_mut()
            .unwrap()
            .write_all(&bytes)
            .expect("write");
    }

    #[inline]
    fn recv(&mut self, read: impl FnOnce(&[u64])) {
        let mut bytes = [0u8; 64];
        self.conn
            .as_mut()
            .unwrap()
            .read_exact(&mut bytes[..self.buf.len() * 8])
            .expect("read");
        for (w, c) in self.buf.iter_mut().zip(bytes.chunks_exact(8)) {
            *w = u64::from_ne_bytes(c.try_into().unwrap());
        }
        read(&self.buf);
    }
}

// ---------------------------------------------------------------------------------------

fn record(
    rows: &mut Vec<Row>,
    scenario: &str,
    transport: &str,
    baseline: Option<&str>,
    f: impl FnOnce() -> Figure,
) {
    let placement_ns = raw::probe();
    let figure = f();
    let row = Row {
        scenario: scenario.into(),
        transport: transport.into(),
        placement_ns,
        figure,
        baseline: baseline.map(str::to_string),
        note: String::new(),
    };
    harness::print_row(rows, &row);
    rows.push(row);
}

fn main() {
    if let Some(args) = harness::child_args() {
        let (kind, rest) = (args[0].as_str(), &args[1..]);
        if !raw::child(kind, rest) {
            match kind {
                "bus" => bus::child(rest),
                "iceoryx2" => harness::child_main::<Iox>(rest),
                "ipc-channel" => harness::child_main::<IpcChan>(rest),
                "interprocess" => harness::child_main::<LocalSock>(rest),
                _ => panic!("unknown child role {kind}"),
            }
        }
        return;
    }
    let quick = std::env::args().any(|a| a == "--quick");
    let scale = if quick { 5 } else { 1 };
    println!("shmbus and its peers, 64-byte messages, parent on CPU 0, child on CPU 1");
    println!();
    harness::print_header();
    let mut rows = Vec::new();
    for (mode, scenario, capacity) in [
        (Mode::RoundTrip, "round trip 64 B", 16),
        (Mode::Stream, "stream 64 B", 1024),
    ] {
        let fast = match mode {
            Mode::RoundTrip => Counts {
                n: 100_000 / scale,
                extra: 10_000,
            },
            Mode::Stream => Counts {
                n: 2_000_000 / scale,
                extra: 3,
            },
        };
        let slow = match mode {
            Mode::RoundTrip => Counts {
                n: 10_000 / scale,
                extra: 1_000,
            },
            Mode::Stream => Counts {
                n: 100_000 / scale,
                extra: 3,
            },
        };
        let spec = |variant: &str| Spec {
            size: 64,
            capacity,
            variant: variant.into(),
        };
        if mode == Mode::RoundTrip {
            record(&mut rows, scenario, "spin flag", None, || {
                raw::spin_flag(fast)
            });
        }
        record(&mut rows, scenario, "seq ring spin", None, || {
            harness::run_link::<raw::SeqRing<false>>("seq-spin", mode, &spec(""), fast)
        });
        record(&mut rows, scenario, "seq ring futex", None, || {
            harness::run_link::<raw::SeqRing<true>>("seq-futex", mode, &spec(""), slow)
        });
        for (variant, name, base) in [
            ("busy", "shmbus busy-poll", "seq ring spin"),
            ("busy-1x1", "shmbus busy-poll 1×1", "seq ring spin"),
            ("default", "shmbus default", "seq ring futex"),
        ] {
            record(&mut rows, scenario, name, Some(base), || {
                harness::run_link::<bus::Bus<bus::Small>>("bus", mode, &spec(variant), fast)
            });
        }
        record(
            &mut rows,
            scenario,
            "iceoryx2",
            Some("seq ring spin"),
            || harness::run_link::<Iox>("iceoryx2", mode, &spec(""), fast),
        );
        record(
            &mut rows,
            scenario,
            "ipc-channel",
            Some("seq ring futex"),
            || harness::run_link::<IpcChan>("ipc-channel", mode, &spec(""), slow),
        );
        record(
            &mut rows,
            scenario,
            "interprocess",
            Some("seq ring futex"),
            || harness::run_link::<LocalSock>("interprocess", mode, &spec(""), slow),
        );
    }
    println!();
    println!("Targets against iceoryx2 (medians, this run):");
    harness::target(
        &rows,
        "stream 64 B",
        "shmbus default",
        "iceoryx2",
        ">=",
        15.0,
    );
    harness::target(
        &rows,
        "stream 64 B",
        "shmbus busy-poll",
        "iceoryx2",
        ">=",
        15.0,
    );
    harness::target(
        &rows,
        "stream 64 B",
        "shmbus busy-poll 1×1",
        "iceoryx2",
        ">=",
        15.0,
    );
    harness::target(
        &rows,
        "round trip 64 B",
        "shmbus busy-poll",
        "iceoryx2",
        "<=",
        0.4,
    );
    harness::target(
        &rows,
        "round trip 64 B",
        "shmbus busy-poll 1×1",
        "iceoryx2",
        "<=",
        0.4,
    );
}
