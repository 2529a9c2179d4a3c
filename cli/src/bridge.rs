//! `shmbus bridge`: the Zenoh bridge of the `shmbus-bridge` crate, from the shell.

use std::path::PathBuf;

/// Options of `shmbus bridge`.
#[derive(clap::Args)]
pub struct Args {
    /// Local channels to publish on Zenoh (`name` or `name=key/expr`), comma-separated.
    #[arg(long, value_delimiter = ',')]
    to_zenoh: Vec<String>,
    /// Local channels to fill from Zenoh (`name` or `name=key/expr`), comma-separated.
    #[arg(long, value_delimiter = ',')]
    from_zenoh: Vec<String>,
    /// A Zenoh configuration file (JSON5); the options below override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Zenoh endpoints to listen on, e.g. tcp/0.0.0.0:7447.
    #[arg(long, value_delimiter = ',')]
    listen: Vec<String>,
    /// Zenoh endpoints to connect to, e.g. tcp/10.0.0.2:7447.
    #[arg(long, value_delimiter = ',')]
    connect: Vec<String>,
    /// peer (default) or client.
    #[arg(long)]
    mode: Option<String>,
    /// Turn multicast scouting off (only the explicit endpoints are used).
    #[arg(long)]
    no_multicast: bool,
    /// First part of the default keys: channel `c` is `<key-prefix>/c`.
    #[arg(long, default_value = "shmbus")]
    key_prefix: String,
    /// Print the per-channel counters to stderr every this many milliseconds.
    #[arg(long)]
    stats: Option<u64>,
}

#[cfg(feature = "bridge")]
pub fn run(prefix: &str, args: Args) -> crate::Result {
    let mut b = shmbus_bridge::Bridge::builder();
    b.shm_prefix(prefix).key_prefix(&args.key_prefix);
    for r in &args.to_zenoh {
        b.route(true, r.parse()?);
    }
    for r in &args.from_zenoh {
        b.route(false, r.parse()?);
    }
    for e in &args.listen {
        b.listen(e);
    }
    for e in &args.connect {
        b.connect(e);
    }
    if let Some(m) = &args.mode {
        b.mode(m.parse()?);
    }
    if args.no_multicast {
        b.multicast(false);
    }
    if let Some(c) = &args.config {
        b.config_file(c);
    }
    let bridge = b.start().map_err(|e| e.to_string())?;
    println!(
        "bridge {:016x} running (zenoh id {}); stop it with Ctrl-C",
        bridge.id(),
        bridge.session().zid()
    );
    loop {
        std::thread::sleep(std::time::Duration::from_millis(
            args.stats.unwrap_or(3_600_000),
        ));
        if args.stats.is_some() {
            for (channel, to, s) in bridge.stats() {
                let dir = if to { "to-zenoh" } else { "from-zenoh" };
                eprintln!(
                    "{dir} {channel}: {} messages, {} forwarded skipped, {} lagged, {} rejected, {} undeliverable",
                    s.messages, s.skipped_forwarded, s.lagged, s.rejected, s.undeliverable
                );
            }
        }
    }
}

#[cfg(not(feature = "bridge"))]
pub fn run(_prefix: &str, _args: Args) -> crate::Result {
    Err("this shmbus was built without the Zenoh bridge: \
         cargo install --path cli --features bridge"
        .into())
}
