//! The validated manifest: plain data with secure defaults. Values of these types only come out of
//! the parser (or [`crate::Manifest::defaults_demo`]) and have passed every validation rule.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Default service uid (and, unless `group` is set, gid) inside the ISC.
pub const DEFAULT_USER: u32 = 1000;
/// Highest uid/gid the manifest accepts: the engine maps a 65536-id range per ISC and 65535 is
/// the kernel's overflow id.
pub const MAX_ID: u32 = 65534;
/// Default `stop_timeout`: time between SIGTERM and SIGKILL.
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Default memory limit (bytes) when `resources.memory` is not declared.
pub const DEFAULT_MEMORY: u64 = 256 * 1024 * 1024;
/// Default pids limit when `resources.pids` is not declared.
pub const DEFAULT_PIDS: u64 = 128;
/// Default open-file limit (`RLIMIT_NOFILE`) when `resources.nofile` is not declared.
pub const DEFAULT_NOFILE: u64 = 1024;
/// Default size of a declared tmpfs when `size` is omitted.
pub const DEFAULT_TMPFS_SIZE: u64 = 16 * 1024 * 1024;
/// Default mode of a declared tmpfs (sticky, world-writable, like `/tmp`).
pub const DEFAULT_TMPFS_MODE: u32 = 0o1777;
/// Where secrets appear inside the ISC.
pub const SECRETS_DIR: &str = "/run/secrets";

/// The whole `isc.toml`, validated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// The ISC's name: a DNS label (`[a-z0-9-]`, at most 63, no leading/trailing `-`).
    pub name: String,
    /// What may be written besides the declared mounts.
    pub profile: Profile,
    /// The UTS hostname inside the ISC; defaults to `name`.
    pub hostname: String,
    /// The one process the ISC runs.
    pub service: Service,
    /// Where the read-only root image comes from.
    pub image: ImageDecl,
    /// Writable mounts and `/sys`.
    pub filesystem: Filesystem,
    /// `None`: no `[network]` table, the ISC has loopback only.
    pub network: Option<Network>,
    /// Secrets delivered as files under `/run/secrets/` (mode 0400), keyed by secret name.
    pub secrets: BTreeMap<String, SecretDecl>,
    /// Privilege-related settings.
    pub security: Security,
    /// cgroup limits and rlimits.
    pub resources: Resources,
}

/// What may be written inside the ISC, after Solaris' immutable-zone profiles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Profile {
    /// Only the declared tmpfs mounts and volumes are writable.
    #[default]
    Strict,
    /// As strict, plus a private writable tmpfs at `/var`.
    Fixed,
    /// As strict, plus private writable tmpfs copies of `/etc` and `/var`.
    Flexible,
}

impl Profile {
    /// The manifest spelling (`strict`, `fixed`, `flexible`).
    pub fn as_str(self) -> &'static str {
        match self {
            Profile::Strict => "strict",
            Profile::Fixed => "fixed",
            Profile::Flexible => "flexible",
        }
    }

    /// Paths the profile itself makes writable (the engine mounts them); declared mounts may not
    /// reuse them.
    pub fn implied_writable_paths(self) -> &'static [&'static str] {
        match self {
            Profile::Strict => &[],
            Profile::Fixed => &["/var"],
            Profile::Flexible => &["/etc", "/var"],
        }
    }
}

/// The service process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Service {
    /// argv; `exec[0]` is an absolute path inside the image.
    pub exec: Vec<String>,
    /// uid inside the ISC (default 1000). 0 requires `security.allow_root = true`.
    pub user: u32,
    /// gid inside the ISC (default = `user`). 0 requires `security.allow_root = true`.
    pub group: u32,
    /// Working directory (default `/`).
    pub workdir: PathBuf,
    /// The complete environment of the service: nothing else is passed.
    pub env: BTreeMap<String, String>,
    /// What to do when the service exits.
    pub restart: RestartPolicy,
    /// Grace period between SIGTERM and SIGKILL (default 10 s).
    pub stop_timeout: Duration,
}

/// What to do when the service exits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Never restart (default).
    #[default]
    Never,
    /// Restart, with back-off, when the service exits non-zero or is killed by a signal.
    OnFailure,
    /// Restart, with back-off, whenever the service exits.
    Always,
}

impl RestartPolicy {
    /// The manifest spelling (`never`, `on-failure`, `always`).
    pub fn as_str(self) -> &'static str {
        match self {
            RestartPolicy::Never => "never",
            RestartPolicy::OnFailure => "on-failure",
            RestartPolicy::Always => "always",
        }
    }
}

/// Where the root image comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ImageSource {
    /// `host`: a tree built from the host files in `image.paths` plus their ELF closure.
    Host,
    /// `dir:PATH`: a prepared root tree (relative paths are resolved against the manifest's directory).
    Dir(PathBuf),
    /// `oci:PATH`: an OCI image layout directory.
    Oci(PathBuf),
    /// `erofs:PATH`: a packed EROFS image file.
    Erofs(PathBuf),
    /// `id:HEX`: an image already in the store, by its 64-hex-digit content id.
    Id(String),
}

impl fmt::Display for ImageSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageSource::Host => write!(f, "host"),
            ImageSource::Dir(p) => write!(f, "dir:{}", p.display()),
            ImageSource::Oci(p) => write!(f, "oci:{}", p.display()),
            ImageSource::Erofs(p) => write!(f, "erofs:{}", p.display()),
            ImageSource::Id(id) => write!(f, "id:{id}"),
        }
    }
}

/// `[image]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageDecl {
    /// The source of the root tree.
    pub source: ImageSource,
    /// For `host` only: absolute host paths (files or directories) copied into the image.
    pub paths: Vec<PathBuf>,
}

/// `[filesystem]`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Filesystem {
    /// Private tmpfs mounts (nosuid, nodev, and noexec unless `exec = true`).
    pub tmpfs: Vec<TmpfsDecl>,
    /// Persistent volumes.
    pub volumes: Vec<VolumeDecl>,
    /// Whether `/sys` exists (default: absent).
    pub sys: SysAccess,
}

/// Access to `/sys` inside the ISC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SysAccess {
    /// No `/sys` at all (default).
    #[default]
    None,
    /// A read-only sysfs.
    ReadOnly,
}

impl SysAccess {
    /// The manifest spelling (`none`, `read-only`).
    pub fn as_str(self) -> &'static str {
        match self {
            SysAccess::None => "none",
            SysAccess::ReadOnly => "read-only",
        }
    }
}

/// One `[[filesystem.tmpfs]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TmpfsDecl {
    /// Absolute, normalized mount point.
    pub path: PathBuf,
    /// Size limit in bytes (default 16 MiB).
    pub size: u64,
    /// Mode of the tmpfs root (default 0o1777).
    pub mode: u32,
    /// Allow executing files from it (default false: mounted noexec).
    pub exec: bool,
}

/// One `[[filesystem.volumes]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeDecl {
    /// Volume name, unique within the manifest.
    pub name: String,
    /// Absolute, normalized mount point.
    pub path: PathBuf,
    /// Size in bytes.
    pub size: u64,
    /// Whether the volume is encrypted at rest (fscrypt); must be stated explicitly.
    pub encrypted: bool,
}

/// `[network]`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Network {
    /// Ports the service listens on.
    pub listen: Vec<Listen>,
    /// Allowed outgoing destinations; everything else is dropped.
    pub egress: Vec<EgressRule>,
    /// Names of other ISCs on the same Dock allowed to connect to the listen ports.
    pub allow_from: Vec<String>,
    /// Traffic shaping, if any.
    pub bandwidth: Option<Bandwidth>,
}

/// Transport protocol.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Proto {
    /// TCP (default).
    #[default]
    Tcp,
    /// UDP.
    Udp,
}

impl Proto {
    /// `tcp` or `udp`.
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// One `network.listen` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listen {
    /// Port inside the ISC, 1–65535.
    pub port: u16,
    /// Protocol (default tcp).
    pub proto: Proto,
    /// Where the port is published on the host, if at all.
    pub publish: Option<Publish>,
}

/// A host-side publication of a listen port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Publish {
    /// Host address to bind; `None` means every host address (write `"127.0.0.1:PORT"` to
    /// restrict it).
    pub host_addr: Option<IpAddr>,
    /// Host port, 1–65535.
    pub port: u16,
}

impl fmt::Display for Publish {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.host_addr {
            None => write!(f, "{}", self.port),
            Some(IpAddr::V4(a)) => write!(f, "{a}:{}", self.port),
            Some(IpAddr::V6(a)) => write!(f, "[{a}]:{}", self.port),
        }
    }
}

/// One allowed egress destination.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EgressRule {
    /// An address range, optionally one port (`None`: every port of `proto`).
    Cidr {
        /// The network (host bits are zero).
        net: ipnet::IpNet,
        /// Destination port, if restricted.
        port: Option<u16>,
        /// Protocol.
        proto: Proto,
    },
    /// A DNS name, resolved when the rules are applied; the port is mandatory.
    Host {
        /// The DNS name.
        host: String,
        /// Destination port.
        port: u16,
        /// Protocol.
        proto: Proto,
    },
}

impl fmt::Display for EgressRule {
    /// The manifest spelling: `[udp:]NET[:PORT]`, `[udp:][V6NET]:PORT`, `[udp:]HOST:PORT`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let proto = |p: &Proto| if *p == Proto::Udp { "udp:" } else { "" };
        match self {
            EgressRule::Cidr { net, port, proto: p } => match (net, port) {
                (_, None) => write!(f, "{}{net}", proto(p)),
                (ipnet::IpNet::V4(_), Some(port)) => write!(f, "{}{net}:{port}", proto(p)),
                (ipnet::IpNet::V6(_), Some(port)) => write!(f, "{}[{net}]:{port}", proto(p)),
            },
            EgressRule::Host { host, port, proto: p } => write!(f, "{}{host}:{port}", proto(p)),
        }
    }
}

/// Traffic shaping, in bits per second.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bandwidth {
    /// Limit on traffic into the ISC, bits per second.
    pub ingress_bps: u64,
    /// Limit on traffic out of the ISC, bits per second.
    pub egress_bps: u64,
}

/// One `[secrets]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretDecl {
    /// File name under `/run/secrets/` (default: the secret's name).
    pub file_name: String,
}

/// `[security]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Security {
    /// Allow `service.user`/`service.group` 0 (default false).
    pub allow_root: bool,
    /// Capabilities kept, canonical names without `CAP_` (e.g. `NET_BIND_SERVICE`); default none.
    pub capabilities: Vec<String>,
    /// Named seccomp allowlist profile (only `default` exists).
    pub syscalls: String,
    /// Syscalls added to the profile.
    pub allow_syscalls: Vec<String>,
    /// Syscalls removed from the profile.
    pub deny_syscalls: Vec<String>,
}

impl Default for Security {
    fn default() -> Self {
        Security {
            allow_root: false,
            capabilities: Vec::new(),
            syscalls: "default".to_string(),
            allow_syscalls: Vec::new(),
            deny_syscalls: Vec::new(),
        }
    }
}

/// `[resources]`: cgroup limits and rlimits. Sizes are bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Resources {
    /// memory.max (default 256 MiB; `None` only if declared `"unlimited"`).
    pub memory: Option<u64>,
    /// Swap allowed on top of `memory` (default 0).
    pub swap: u64,
    /// CPU quota in CPUs (e.g. 0.5); `None`: no quota.
    pub cpu: Option<f64>,
    /// cpu.weight 1–10000; `None`: the kernel default (100).
    pub cpu_weight: Option<u64>,
    /// pids.max (default 128; `None` only if declared `"unlimited"`).
    pub pids: Option<u64>,
    /// cpuset.cpus list, e.g. `"0-1,3"`.
    pub cpuset: Option<String>,
    /// io.weight 1–10000.
    pub io_weight: Option<u64>,
    /// RLIMIT_NOFILE (default 1024).
    pub nofile: u64,
    /// RLIMIT_NPROC, if declared.
    pub nproc: Option<u64>,
    /// RLIMIT_MEMLOCK in bytes, if declared.
    pub memlock: Option<u64>,
    /// RLIMIT_STACK in bytes, if declared.
    pub stack: Option<u64>,
}

impl Default for Resources {
    fn default() -> Self {
        Resources {
            memory: Some(DEFAULT_MEMORY),
            swap: 0,
            cpu: None,
            cpu_weight: None,
            pids: Some(DEFAULT_PIDS),
            cpuset: None,
            io_weight: None,
            nofile: DEFAULT_NOFILE,
            nproc: None,
            memlock: None,
            stack: None,
        }
    }
}
