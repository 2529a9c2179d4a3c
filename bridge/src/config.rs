//! Zenoh session settings: a JSON5 file, explicit endpoints, mode and scouting.

use std::path::PathBuf;

use crate::BridgeError;

/// Whether the bridge's Zenoh session is a peer or a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Connects directly to other peers, no router needed (Zenoh's default).
    #[default]
    Peer,
    /// Connects to one router (or peer) and goes through it.
    Client,
}

impl Mode {
    /// `"peer"` or `"client"`, as in Zenoh's configuration.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Peer => "peer",
            Mode::Client => "client",
        }
    }
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Mode, String> {
        match s {
            "peer" => Ok(Mode::Peer),
            "client" => Ok(Mode::Client),
            _ => Err(format!("unknown Zenoh mode {s:?} (peer or client)")),
        }
    }
}

/// How to open the Zenoh session. Options set here override the file's.
#[derive(Debug, Clone, Default)]
pub struct ZenohOptions {
    /// A Zenoh configuration file (JSON5 or YAML, as `zenoh::Config::from_file` reads).
    pub config_file: Option<PathBuf>,
    /// `mode`.
    pub mode: Option<Mode>,
    /// `listen/endpoints`, e.g. `tcp/0.0.0.0:7447`.
    pub listen: Vec<String>,
    /// `connect/endpoints`, e.g. `tcp/10.0.0.2:7447`.
    pub connect: Vec<String>,
    /// `scouting/multicast/enabled`.
    pub multicast: Option<bool>,
}

impl ZenohOptions {
    /// The Zenoh configuration these options describe.
    ///
    /// # Errors
    ///
    /// [`BridgeError::Config`] for an unreadable file or a value Zenoh refuses.
    pub fn to_config(&self) -> Result<zenoh::Config, BridgeError> {
        let mut config = match &self.config_file {
            Some(path) => zenoh::Config::from_file(path).map_err(|e| BridgeError::Config {
                what: format!("reading {}", path.display()),
                reason: e.to_string(),
            })?,
            None => zenoh::Config::default(),
        };
        let mut set = |key: &str, value: String| {
            config
                .insert_json5(key, &value)
                .map_err(|e| BridgeError::Config {
                    what: format!("{key} = {value}"),
                    reason: e.to_string(),
                })
        };
        let list = |v: &[String]| {
            let quoted: Vec<String> = v.iter().map(|e| format!("{e:?}")).collect();
            format!("[{}]", quoted.join(","))
        };
        if let Some(mode) = self.mode {
            set("mode", format!("{:?}", mode.name()))?;
        }
        if !self.listen.is_empty() {
            set("listen/endpoints", list(&self.listen))?;
        }
        if !self.connect.is_empty() {
            set("connect/endpoints", list(&self.connect))?;
        }
        if let Some(on) = self.multicast {
            set("scouting/multicast/enabled", on.to_string())?;
        }
        Ok(config)
    }
}
