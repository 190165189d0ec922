//! `dock.toml`: where the Dock keeps its files, who may talk to it, and its policies.
//!
//! Every key is optional; a missing file means all defaults. Sizes accept the manifest's units
//! (`"512M"`, `"2G"`) or a plain byte count.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading the Dock config {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("the Dock config {path} is invalid: {detail}; fix: see docs/api.md for its keys")]
    Parse { path: PathBuf, detail: String },
}

/// The Dock's configuration.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DockConfig {
    /// API socket; default `<state>/dock.sock` (`/run/isc/dock.sock`).
    pub socket: Option<PathBuf>,
    /// Group whose members may use the API (besides root); the socket is chowned to it.
    /// If the group does not exist, only root may act.
    pub group: String,
    /// Mode of the socket file (the first gate; peer credentials are checked regardless).
    pub socket_mode: u32,
    /// First host UID handed to ISCs, and how many 65536-id ranges may be handed out.
    pub uid_base: u32,
    pub uid_slots: u32,
    /// How long a start may take until the ISC's service runs.
    pub start_timeout_s: u64,
    pub resources: ResourceConfig,
    pub logs: LogConfig,
    pub restart: RestartConfig,
}

/// The resource guard across ISCs.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ResourceConfig {
    /// Memory kept for the host: the sum of the ISCs' memory limits may not pass
    /// `memory_total - reserve`.
    #[serde(deserialize_with = "size")]
    pub reserve: u64,
    /// Overrides the host's MemTotal (e.g. to give the Dock only part of the machine).
    #[serde(deserialize_with = "opt_size")]
    pub memory_total: Option<u64>,
    /// The sum of the ISCs' CPU quotas may not pass `online CPUs × cpu_overcommit`.
    pub cpu_overcommit: f64,
}

/// Per-ISC output files.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// Rotate `output.log` once it would pass this size.
    #[serde(deserialize_with = "size")]
    pub max_bytes: u64,
    /// Rotated files kept per ISC.
    pub keep: u32,
}

/// Restart back-off and crash-loop detection.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RestartConfig {
    /// First delay; doubled after every further quick failure, up to `max_backoff_ms`.
    pub initial_backoff_ms: u64,
    pub max_backoff_ms: u64,
    /// A run shorter than this counts as a quick failure; a longer one resets the count.
    pub healthy_after_ms: u64,
    /// After this many consecutive quick failures the ISC is marked `crash-loop` and no longer
    /// restarted until an operator starts it again.
    pub crash_loop_after: u32,
}

impl Default for DockConfig {
    fn default() -> Self {
        DockConfig {
            socket: None,
            group: "isc".into(),
            socket_mode: 0o660,
            uid_base: isc_engine::creds::DEFAULT_UID_BASE,
            uid_slots: isc_engine::creds::DEFAULT_SLOTS,
            start_timeout_s: 60,
            resources: ResourceConfig::default(),
            logs: LogConfig::default(),
            restart: RestartConfig::default(),
        }
    }
}

impl Default for ResourceConfig {
    fn default() -> Self {
        ResourceConfig { reserve: 512 << 20, memory_total: None, cpu_overcommit: 4.0 }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { max_bytes: 16 << 20, keep: 3 }
    }
}

impl Default for RestartConfig {
    fn default() -> Self {
        RestartConfig {
            initial_backoff_ms: 500,
            max_backoff_ms: 60_000,
            healthy_after_ms: 10_000,
            crash_loop_after: 5,
        }
    }
}

impl RestartConfig {
    /// The delay before restart number `failures` (1-based) of a quick-failure streak.
    pub fn backoff(&self, failures: u32) -> Duration {
        let shift = failures.saturating_sub(1).min(20);
        Duration::from_millis(
            self.initial_backoff_ms.saturating_mul(1 << shift).min(self.max_backoff_ms),
        )
    }
}

impl DockConfig {
    /// Reads `path`; a missing file gives the defaults.
    pub fn load(path: &Path) -> Result<DockConfig, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => DockConfig::parse(&text, path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(DockConfig::default()),
            Err(source) => Err(ConfigError::Read { path: path.into(), source }),
        }
    }

    /// Parses config text (`origin` names it in errors).
    pub fn parse(text: &str, origin: &Path) -> Result<DockConfig, ConfigError> {
        let cfg: DockConfig = toml::from_str(text)
            .map_err(|e| ConfigError::Parse { path: origin.into(), detail: e.to_string() })?;
        if cfg.socket_mode & !0o777 != 0 {
            return Err(ConfigError::Parse {
                path: origin.into(),
                detail: format!("socket_mode {:o} has bits beyond 0777", cfg.socket_mode),
            });
        }
        if cfg.logs.keep > 100 || cfg.uid_slots == 0 || cfg.resources.cpu_overcommit <= 0.0 {
            return Err(ConfigError::Parse {
                path: origin.into(),
                detail: "logs.keep must be ≤ 100, uid_slots > 0, resources.cpu_overcommit > 0"
                    .into(),
            });
        }
        Ok(cfg)
    }

    /// The socket path for runtime state directory `state`.
    pub fn socket_path(&self, state: &Path) -> PathBuf {
        self.socket.clone().unwrap_or_else(|| state.join("dock.sock"))
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum SizeRepr {
    Bytes(u64),
    Text(String),
}

fn parse_size_repr(r: SizeRepr) -> Result<u64, String> {
    match r {
        SizeRepr::Bytes(b) => Ok(b),
        SizeRepr::Text(t) => isc_manifest::units::parse_size(&t).map_err(|p| p.message),
    }
}

fn size<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    parse_size_repr(SizeRepr::deserialize(d)?).map_err(serde::de::Error::custom)
}

fn opt_size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    parse_size_repr(SizeRepr::deserialize(d)?).map(Some).map_err(serde::de::Error::custom)
}

/// The gid of group `name` from `/etc/group`, if it exists.
pub fn group_gid(name: &str) -> Option<u32> {
    let text = std::fs::read_to_string("/etc/group").ok()?;
    text.lines().find_map(|l| {
        let mut f = l.split(':');
        (f.next()? == name).then_some(())?;
        f.nth(1)?.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_units() {
        let c = DockConfig::parse(
            "group = \"nogroup\"\n[resources]\nreserve = \"1G\"\nmemory_total = 4096\n[logs]\nmax_bytes = \"64K\"\n",
            Path::new("t"),
        )
        .unwrap();
        assert_eq!(c.group, "nogroup");
        assert_eq!(c.resources.reserve, 1 << 30);
        assert_eq!(c.resources.memory_total, Some(4096));
        assert_eq!(c.logs.max_bytes, 64 << 10);
        assert_eq!(c.logs.keep, 3);
        assert_eq!(c.socket_path(Path::new("/run/isc")), Path::new("/run/isc/dock.sock"));
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        let e = DockConfig::parse("sockt = \"/x\"", Path::new("dock.toml")).unwrap_err();
        assert!(e.to_string().contains("sockt"), "{e}");
        let e = DockConfig::parse("socket_mode = 4095", Path::new("dock.toml")).unwrap_err();
        assert!(e.to_string().contains("beyond 0777"), "{e}");
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let r =
            RestartConfig { initial_backoff_ms: 100, max_backoff_ms: 1000, ..Default::default() };
        let ms: Vec<u128> = (1..=6).map(|n| r.backoff(n).as_millis()).collect();
        assert_eq!(ms, vec![100, 200, 400, 800, 1000, 1000]);
    }

    #[test]
    fn group_lookup() {
        assert_eq!(group_gid("root"), Some(0));
        assert_eq!(group_gid("isc-no-such-group-xyz"), None);
    }
}
