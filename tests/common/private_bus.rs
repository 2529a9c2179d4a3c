//! A private `dbus-daemon` for one test: started with a generated configuration on a socket
//! in a temporary directory, never the machine's bus; killed and removed on drop.

use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// A running private bus.
pub struct PrivateBus {
    child: Child,
    dir: PathBuf,
    /// The bus address, for `Transport::DBus { bus: DBusBus::Address(..) }`, `dbus-monitor
    /// --address` and `busctl --address`.
    pub address: String,
}

impl PrivateBus {
    /// Starts a bus that lets every connection own any name and see every message.
    ///
    /// # Panics
    ///
    /// If `dbus-daemon` is not installed (`apt-get install dbus-daemon`) or does not start.
    pub fn start() -> PrivateBus {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "shmbus-test-dbus-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("bus.conf");
        std::fs::write(
            &config,
            format!(
                r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"#,
                dir.join("bus.sock").display()
            ),
        )
        .unwrap();
        let mut child = Command::new("dbus-daemon")
            .arg(format!("--config-file={}", config.display()))
            .args(["--print-address", "--nofork", "--nosyslog"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                let _ = std::fs::remove_dir_all(&dir);
                panic!("cannot run dbus-daemon ({e}): install the dbus-daemon package")
            });
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let address = line.trim().to_owned();
        let bus = PrivateBus {
            child,
            dir,
            address,
        };
        assert!(
            bus.address.starts_with("unix:"),
            "dbus-daemon printed no address"
        );
        bus
    }
}

impl Drop for PrivateBus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
