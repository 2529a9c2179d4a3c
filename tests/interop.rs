//! Interoperability: a Python program (standard library only) sends to a Rust receiver
//! over a FIFO, using the wire format of `docs/wire-format.md`.

use std::process::Command;
use std::time::Duration;

use shmbus::{Message, Options, Receiver, RecvError, Transport};

#[derive(shmbus::Message, Clone, Copy, Debug, PartialEq)]
#[repr(C)]
struct Point {
    x: i64,
    y: i64,
}

#[test]
fn python_sender_over_fifo() {
    if Command::new("python3").arg("--version").output().is_err() {
        eprintln!("SKIPPED python_sender_over_fifo: python3 is not installed");
        return;
    }
    let path = std::env::temp_dir().join(format!("shmbus-interop-{}.fifo", std::process::id()));
    struct Remove(std::path::PathBuf);
    impl Drop for Remove {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    let _guard = Remove(path.clone());
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/interop/fifo_sender.py"
    );
    let n = 1000;
    let mut child = Command::new("python3")
        .args([script, path.to_str().unwrap(), &n.to_string()])
        .arg(format!("{:#x}", Point::INFO.fingerprint))
        .arg(Point::INFO.name)
        .spawn()
        .expect("start python3");
    let mut o = Options::new();
    o.transport(Transport::Fifo { path: path.clone() })
        .connect_timeout(Duration::from_secs(20));
    let rx = Receiver::<Point>::open_or_create("interop", &o).expect("receiver");
    for i in 0..n {
        assert_eq!(rx.recv().unwrap().into_inner(), Point { x: i, y: -2 * i });
    }
    assert!(matches!(rx.recv(), Err(RecvError::Disconnected)));
    assert!(child.wait().unwrap().success());
}
