//! A request-response service on D-Bus (feature `dbus`): a calculator [`Server`] that any
//! D-Bus client can call, and a shmbus [`Client`] for it.
//!
//! ```text
//! # everything in one go, on a private dbus-daemon started (and stopped) by the example:
//! # serves, calls it with the shmbus client and with busctl/dbus-send, and times both
//! # the request-response round trip and a queue channel
//! cargo run --release --features dbus --example dbus_service -- demo [CALLS]
//!
//! # or on a bus of your choice (the session bus unless --address is given):
//! cargo run --features dbus --example dbus_service -- serve [--address ADDR]
//! cargo run --features dbus --example dbus_service -- call 2 3 [--address ADDR]
//! busctl --user call org.shmbus.calc /org/shmbus/calc org.shmbus.Service1 Call tay FP 2 4 6
//! ```
//!
//! `serve` prints the exact `busctl` and `dbus-send` lines (FP is the request type's
//! fingerprint). The request `Add { a: 2, b: 3 }` in postcard is the bytes `4 6` (zigzag
//! varints), the answer `Sum(5)` the byte `10`: busctl prints `tay <Sum's fingerprint> 1 10`.

use std::io::BufRead;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use shmbus::{Client, DBusBus, Message, Options, Receiver, Sender, Server, Transport};

/// The request.
#[derive(shmbus::Message, serde::Serialize, serde::Deserialize, Debug)]
struct Add {
    a: i64,
    b: i64,
}

/// The response.
#[derive(shmbus::Message, serde::Serialize, serde::Deserialize, Debug)]
struct Sum(i64);

/// A message for the queue-channel timing.
#[derive(shmbus::Message, Clone, Copy, Debug)]
#[repr(C)]
struct Tick {
    seq: u64,
    body: [u64; 7],
}

fn options(bus: DBusBus) -> Options {
    let mut o = Options::new();
    o.transport(Transport::DBus { bus });
    o
}

fn bus_from(args: &[String]) -> DBusBus {
    match args.iter().position(|a| a == "--address") {
        Some(i) => DBusBus::Address(args[i + 1].clone()),
        None => DBusBus::Session,
    }
}

fn print_tool_lines(bus: &DBusBus) {
    let fp = <Add as Message>::INFO.fingerprint;
    let (busctl_bus, send_bus) = match bus {
        DBusBus::Address(a) => (format!("--address={a}"), format!("--bus={a}")),
        _ => ("--user".to_owned(), "--session".to_owned()),
    };
    println!("call it with:");
    println!(
        "  busctl {busctl_bus} call org.shmbus.calc /org/shmbus/calc org.shmbus.Service1 Call tay {fp} 2 4 6"
    );
    println!(
        "  dbus-send {send_bus} --print-reply --dest=org.shmbus.calc /org/shmbus/calc org.shmbus.Service1.Call uint64:{fp} array:byte:4,6"
    );
}

/// Serves until `limit` requests were answered (forever with `None`). `Disconnected` means
/// that every shmbus client that greeted the server left; plain D-Bus callers (busctl) do
/// not greet, so the server keeps serving.
fn serve(server: &Server<Add, Sum>, limit: Option<u64>) -> Result<(), Box<dyn std::error::Error>> {
    let mut n = 0;
    while limit.is_none_or(|l| n < l) {
        let req = match server.recv() {
            Ok(r) => r,
            Err(shmbus::RecvError::Disconnected) => {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let sum = Sum(req.body.a + req.body.b);
        if let Err(e) = server.respond(&req, &sum) {
            eprintln!("client {} left: {e}", req.client());
        }
        n += 1;
    }
    Ok(())
}

/// Starts a private bus: `(daemon, address, directory)`.
fn private_bus(
) -> Result<(std::process::Child, String, std::path::PathBuf), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("shmbus-example-dbus-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let conf = dir.join("bus.conf");
    std::fs::write(
        &conf,
        format!(
            r#"<busconfig><type>session</type><listen>unix:path={}</listen><auth>EXTERNAL</auth>
<policy context="default"><allow send_destination="*" eavesdrop="true"/><allow eavesdrop="true"/><allow own="*"/></policy></busconfig>"#,
            dir.join("bus.sock").display()
        ),
    )?;
    let mut daemon = Command::new("dbus-daemon")
        .arg(format!("--config-file={}", conf.display()))
        .args(["--print-address", "--nofork", "--nosyslog"])
        .stdout(Stdio::piped())
        .spawn()?;
    let mut address = String::new();
    std::io::BufReader::new(daemon.stdout.take().expect("piped")).read_line(&mut address)?;
    Ok((daemon, address.trim().to_owned(), dir))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p) as usize]
}

fn demo(calls: usize) -> Result<(), Box<dyn std::error::Error>> {
    let (mut daemon, address, dir) = private_bus()?;
    let result = (|| -> Result<(), Box<dyn std::error::Error>> {
        let bus = DBusBus::Address(address.clone());
        println!("private bus at {address}");
        print_tool_lines(&bus);
        let o = options(bus.clone());
        let server = Server::<Add, Sum>::open("calc", &o)?;
        let busctl = Command::new("busctl").arg("--version").output().is_ok();
        let client_opts = o.clone();
        let client = std::thread::spawn(move || -> Result<Vec<Duration>, String> {
            let client =
                Client::<Add, Sum>::open("calc", &client_opts).map_err(|e| e.to_string())?;
            let mut times = Vec::with_capacity(calls);
            for i in 0..calls as i64 {
                let t = Instant::now();
                let Sum(s) = client
                    .request(&Add { a: i, b: 1 }, Duration::from_secs(10))
                    .map_err(|e| e.to_string())?;
                times.push(t.elapsed());
                assert_eq!(s, i + 1);
            }
            Ok(times)
        });
        serve(&server, Some(calls as u64))?;
        let mut times = client.join().expect("client thread")?;
        times.sort();
        println!(
            "request-response, shmbus Client -> Server over the bus: {calls} calls, median {:?}, p99 {:?}",
            percentile(&times, 0.5),
            percentile(&times, 0.99)
        );
        if busctl {
            let fp = <Add as Message>::INFO.fingerprint;
            let a = address.clone();
            let call = std::thread::spawn(move || {
                Command::new("busctl")
                    .args([
                        &format!("--address={a}"),
                        "call",
                        "org.shmbus.calc",
                        "/org/shmbus/calc",
                    ])
                    .args([
                        "org.shmbus.Service1",
                        "Call",
                        "tay",
                        &fp.to_string(),
                        "2",
                        "4",
                        "6",
                    ])
                    .output()
            });
            serve(&server, Some(1))?;
            let out = call.join().expect("busctl thread")?;
            println!(
                "busctl answered: {}",
                String::from_utf8_lossy(&out.stdout).trim()
            );
        }
        drop(server);

        // A queue channel: one Send method call per message, in order, bounded.
        let n = calls as u64;
        let rx = Receiver::<Tick>::create("ticks", &o)?;
        let tx_opts = o.clone();
        let sender = std::thread::spawn(move || -> Result<(), String> {
            let tx = Sender::<Tick>::open("ticks", &tx_opts).map_err(|e| e.to_string())?;
            for seq in 0..n {
                tx.send(Tick {
                    seq,
                    body: [seq; 7],
                })
                .map_err(|e| e.to_string())?;
            }
            Ok(())
        });
        let start = Instant::now();
        for seq in 0..n {
            assert_eq!(rx.recv()?.seq, seq);
        }
        let took = start.elapsed();
        sender.join().expect("sender thread")?;
        println!(
            "queue channel, 64-byte messages: {n} in {took:?} ({:.0} msg/s)",
            n as f64 / took.as_secs_f64()
        );
        Ok(())
    })();
    let _ = daemon.kill();
    let _ = daemon.wait();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("serve") => {
            let bus = bus_from(&args);
            let server = Server::<Add, Sum>::open("calc", &options(bus.clone()))?;
            println!("serving org.shmbus.calc on {bus:?}");
            print_tool_lines(&bus);
            serve(&server, None)
        }
        Some("call") => {
            let (a, b) = (args[1].parse()?, args[2].parse()?);
            let client = Client::<Add, Sum>::open("calc", &options(bus_from(&args)))?;
            let Sum(s) = client.request(&Add { a, b }, Duration::from_secs(5))?;
            println!("{a} + {b} = {s}");
            Ok(())
        }
        Some("demo") | None => demo(args.get(1).map_or(Ok(2000), |n| n.parse())?),
        Some(other) => Err(format!("unknown command {other:?}: demo, serve or call").into()),
    }
}
