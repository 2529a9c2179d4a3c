//! Channels for trying the `shmbus` tool on: one per transport that `shmbus list` finds,
//! a zero-copy `Quote` stream on the shared-memory ring and a serialized (postcard) `Order`
//! channel, held open until this process is stopped (Ctrl-C, or `kill -9` to leave stale
//! resources behind for `shmbus clean`).
//!
//! ```text
//! cargo run --example tool_tour &
//! cargo run -p shmbus-cli -- list
//! cargo run -p shmbus-cli -- tail orders -n 2
//! ```
//!
//! FIFOs, sockets and the file log are created in `$XDG_RUNTIME_DIR` (or `/tmp`) under the
//! prefix (`shmbus.`, or `$SHMBUS_PREFIX` as for the tool), where `shmbus list` looks for
//! them.

use std::path::PathBuf;
use std::time::Duration;

use shmbus::{Delivery, Options, Receiver, Sender, Transport};

/// A zero-copy quote.
#[derive(shmbus::Message, Clone, Copy, Debug)]
#[repr(C)]
struct Quote {
    seq: u64,
    price: f64,
    venue: [u8; 8],
}

/// A serialized order with a nested message.
#[derive(shmbus::Message, serde::Serialize, serde::Deserialize, Clone, Debug)]
struct Order {
    id: u64,
    account: String,
    legs: Vec<Leg>,
    limit: Option<f64>,
}

#[derive(shmbus::Message, serde::Serialize, serde::Deserialize, Clone, Debug)]
struct Leg {
    venue: String,
    qty: u32,
}

fn prefix() -> String {
    std::env::var("SHMBUS_PREFIX").unwrap_or_else(|_| shmbus::DEFAULT_PREFIX.to_owned())
}

fn with(transport: Transport) -> Options {
    let mut o = Options::new();
    o.prefix(prefix()).capacity(64).transport(transport);
    o
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let run = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|p| p.is_dir())
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    let p = prefix();
    let mut broadcast = Options::new();
    broadcast
        .prefix(&p)
        .capacity(1024)
        .delivery(Delivery::Broadcast);
    let quotes = Sender::<Quote>::open_or_create("quotes", &broadcast)?;
    let quote_rx = Receiver::<Quote>::open_or_create("quotes", &broadcast)?;
    let orders = Sender::<Order>::open_or_create("orders", &with(Transport::SharedMemory))?;
    let order_rx = Receiver::<Order>::open_or_create("orders", &with(Transport::SharedMemory))?;
    for id in 1..=3 {
        orders.send(Order {
            id,
            account: "ACME".into(),
            legs: vec![Leg {
                venue: "XNAS".into(),
                qty: 100 * id as u32,
            }],
            limit: (id % 2 == 1).then_some(101.5),
        })?;
    }
    let sysv = with(Transport::SysvSharedMemory { key: None });
    let _sysv = (
        Sender::<Quote>::open_or_create("sysv-quotes", &sysv)?,
        Receiver::<Quote>::open_or_create("sysv-quotes", &sysv)?,
    );
    let pmq = with(Transport::PosixQueue);
    let _pmq = (
        Sender::<Quote>::open_or_create("mq-quotes", &pmq)?,
        Receiver::<Quote>::open_or_create("mq-quotes", &pmq)?,
    );
    let smq = with(Transport::SysvQueue { key: None });
    let _smq = (
        Sender::<Quote>::open_or_create("msg-quotes", &smq)?,
        Receiver::<Quote>::open_or_create("msg-quotes", &smq)?,
    );
    let fifo_path = run.join(format!("{p}tour.fifo"));
    let fifo = with(Transport::Fifo {
        path: fifo_path.clone(),
    });
    let fifo_rx = std::thread::spawn(move || Receiver::<Quote>::open_or_create("fifo", &fifo));
    let _fifo_tx =
        Sender::<Quote>::open_or_create("fifo", &with(Transport::Fifo { path: fifo_path }))?;
    let _fifo_rx = fifo_rx.join().expect("FIFO receiver thread")?;
    let sock = with(Transport::UnixSocket {
        path: run.join(format!("{p}tour.sock")),
    });
    let _sock_rx = Receiver::<Quote>::create("sock", &sock)?;
    let _sock_tx = Sender::<Quote>::open("sock", &sock)?;
    let log = with(Transport::File {
        dir: run.join(format!("{p}tour.log")),
    });
    let log_tx = Sender::<Quote>::open_or_create("log", &log)?;
    println!(
        "channels open (pid {}); stop with Ctrl-C",
        std::process::id()
    );
    let mut seq = 0u64;
    loop {
        // A slow stream, so that `shmbus stat --watch` shows rates and `tail` follows.
        let q = Quote {
            seq,
            price: 100.0 + (seq % 100) as f64 / 100.0,
            venue: *b"XNAS\0\0\0\0",
        };
        quotes.send(q)?;
        while quote_rx.try_recv().is_ok() {}
        if seq % 100 == 0 {
            log_tx.send(q)?;
        }
        seq += 1;
        std::thread::sleep(Duration::from_millis(1));
        let _ = &order_rx;
    }
}
