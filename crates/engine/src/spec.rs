//! What the engine is asked to run: the fully resolved description of one ISC.
//!
//! The manifest (`isc.toml`) is the user's language; this is the engine's. It is resolved (image
//! prepared, sizes in bytes, names validated) so the start path does no parsing. An OCI-runtime
//! front end can fill the same struct from a `config.json`.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A tmpfs mounted inside the ISC. Always `nosuid,nodev`; `noexec` unless `exec` (W^X).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TmpfsMount {
    pub path: PathBuf,
    pub size_bytes: u64,
    pub mode: u32,
    pub exec: bool,
}

/// A host directory bind-mounted read-write at `path` inside the ISC (volumes, secrets).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BindMount {
    pub source: PathBuf,
    pub path: PathBuf,
    pub read_only: bool,
}

/// Resource limits applied in the child with `setrlimit(2)` before `execve`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RlimitSpec {
    pub nofile: u64,
    pub nproc: Option<u64>,
    pub memlock: Option<u64>,
    pub stack: Option<u64>,
}

impl Default for RlimitSpec {
    fn default() -> Self {
        Self { nofile: 1024, nproc: None, memlock: None, stack: None }
    }
}

/// Switches that weaken one protection. They exist so `isc verify` can be mutation-tested:
/// every switch must make verification fail. Never settable from a manifest.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Weakening {
    pub no_seccomp: bool,
    pub no_landlock: bool,
    pub no_new_privs_off: bool,
    pub keep_cap_sys_admin: bool,
    pub writable_root: bool,
    pub host_proc_unmasked: bool,
}

/// The resolved description of one ISC.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IscSpec {
    pub name: String,
    pub hostname: String,
    /// A prepared root tree, mounted read-only.
    pub rootfs: PathBuf,
    pub image_id: String,
    pub exec: Vec<String>,
    pub env: Vec<(String, String)>,
    pub workdir: PathBuf,
    /// Service ids *inside* the ISC.
    pub uid: u32,
    pub gid: u32,
    pub tmpfs: Vec<TmpfsMount>,
    pub binds: Vec<BindMount>,
    /// Mount `/sys` read-only (otherwise there is no `/sys`).
    pub sys_read_only: bool,
    /// Capability names kept (canonical, without `CAP_`).
    pub capabilities: Vec<String>,
    /// Extra syscalls on top of the default allowlist, and syscalls removed from it.
    pub allow_syscalls: Vec<String>,
    pub deny_syscalls: Vec<String>,
    /// TCP ports the service may bind / connect to (Landlock network rules).
    pub tcp_bind_ports: Vec<u16>,
    pub tcp_connect_ports: Vec<u16>,
    pub rlimits: RlimitSpec,
    pub stop_timeout: Duration,
    pub weakening: Weakening,
}

impl IscSpec {
    /// Paths the service may write: declared tmpfs and read-write binds.
    pub fn writable_paths(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = self.tmpfs.iter().map(|t| t.path.clone()).collect();
        v.extend(self.binds.iter().filter(|b| !b.read_only).map(|b| b.path.clone()));
        v
    }
}
