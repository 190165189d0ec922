//! The one error type of `isc-cgroup`: one variant per step, each carrying the path or name
//! involved and a message that says how to fix it.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong while detecting, creating, driving or removing ISC cgroups,
/// applying rlimits, or checking capacity.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// `/proc/self/cgroup` or `/proc/self/mountinfo` could not be read.
    #[error("cannot read {path}: {source}")]
    ReadProc {
        /// The procfs file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// No cgroup hierarchy could be matched between `/proc/self/cgroup` and mountinfo.
    #[error("no usable cgroup hierarchy found: {reason}; mount cgroup2 (or the v1 controllers) under /sys/fs/cgroup")]
    NoHierarchy {
        /// Why detection failed.
        reason: String,
    },
    /// A line of `/proc/self/cgroup` or mountinfo did not have the documented shape.
    #[error("malformed {file} line {line:?}: expected {expected}")]
    Parse {
        /// Which file (`/proc/self/cgroup`, `mountinfo`, a cgroup interface file).
        file: String,
        /// The offending line.
        line: String,
        /// What shape was expected.
        expected: &'static str,
    },
    /// The cgroup name given by the caller is not a single safe path component.
    #[error("invalid cgroup name {name:?}: {reason}")]
    InvalidName {
        /// The rejected name.
        name: String,
        /// Why.
        reason: &'static str,
    },
    /// The configured parent path is absolute or escapes the caller's own cgroup.
    #[error("invalid cgroup parent {path}: {reason}; give a relative path below this process's own cgroup")]
    InvalidParent {
        /// The rejected parent.
        path: PathBuf,
        /// Why.
        reason: &'static str,
    },
    /// A limit value is out of range before anything touched the kernel.
    #[error("invalid limit {key} = {value}: {reason}")]
    InvalidLimit {
        /// The `[resources]` key.
        key: &'static str,
        /// The value as given.
        value: String,
        /// What would be accepted.
        reason: String,
    },
    /// A limit needs a controller that this host does not offer.
    #[error("limit {key} needs the {controller} controller, which is not available here ({hint})")]
    ControllerMissing {
        /// The `[resources]` key.
        key: &'static str,
        /// The controller name.
        controller: &'static str,
        /// What was looked at.
        hint: String,
    },
    /// `mkdir` of a cgroup directory failed.
    #[error("cannot create cgroup {path}: {source}")]
    Create {
        /// The directory.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The cgroup already exists (another ISC with the same name, or a stale leftover).
    #[error("cgroup {path} already exists; run stale collection or choose another name")]
    AlreadyExists {
        /// The directory.
        path: PathBuf,
    },
    /// The cgroup to open does not exist.
    #[error("cgroup {path} does not exist")]
    NotFound {
        /// The directory.
        path: PathBuf,
    },
    /// Writing a cgroup interface file failed.
    #[error("cannot write {value:?} to {path}: {source}")]
    Write {
        /// The interface file.
        path: PathBuf,
        /// What was written.
        value: String,
        /// The underlying error.
        source: io::Error,
    },
    /// Reading a cgroup interface file failed.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The interface file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// Enabling a controller in a v2 parent's `cgroup.subtree_control` failed.
    #[error("cannot enable {controller} in {path}: {source}; on cgroup v2 a non-root parent must hold no processes (move the monitor into a leaf cgroup first)")]
    EnableController {
        /// The `cgroup.subtree_control` file.
        path: PathBuf,
        /// The controller.
        controller: &'static str,
        /// The underlying error.
        source: io::Error,
    },
    /// Moving a process into a cgroup failed.
    #[error("cannot attach pid {pid} to {path}: {source}")]
    Attach {
        /// The process.
        pid: i32,
        /// The `cgroup.procs` file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// Sending SIGKILL to a member process failed.
    #[error("cannot kill pid {pid} in {path}: {source}")]
    Kill {
        /// The process.
        pid: i32,
        /// The cgroup directory.
        path: PathBuf,
        /// The underlying error.
        source: nix::Error,
    },
    /// The freezer did not reach the requested state in time.
    #[error("freezer {path} did not reach {state} within {millis} ms")]
    FreezerTimeout {
        /// The `freezer.state` file.
        path: PathBuf,
        /// FROZEN or THAWED.
        state: &'static str,
        /// How long we waited.
        millis: u64,
    },
    /// Processes were still present after killing them.
    #[error("cgroup {path} still holds processes {pids:?} {millis} ms after SIGKILL (uninterruptible sleep?)")]
    NotEmpty {
        /// The cgroup directory.
        path: PathBuf,
        /// The remaining pids.
        pids: Vec<i32>,
        /// How long we waited.
        millis: u64,
    },
    /// `rmdir` of a cgroup directory failed.
    #[error("cannot remove cgroup {path}: {source}")]
    Remove {
        /// The directory.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// Several cleanup steps failed; every one is listed.
    #[error("cleanup failed: {}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
    Cleanup(Vec<CgroupError>),
    /// Opening the v2 directory for `CLONE_INTO_CGROUP` failed.
    #[error("cannot open cgroup directory {path}: {source}")]
    OpenDir {
        /// The directory.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// `getrlimit` failed.
    #[error("getrlimit({limit}) failed: {source}")]
    GetRlimit {
        /// The resource name, e.g. RLIMIT_NOFILE.
        limit: &'static str,
        /// The underlying error.
        source: nix::Error,
    },
    /// The requested rlimit exceeds the hard limit the host gives this process.
    #[error("{limit} = {requested} exceeds the host's hard limit {hard}; lower `{key}` in [resources] to at most {hard} or raise the host limit (ulimit -H / LimitNOFILE=)")]
    RlimitAboveHard {
        /// The resource name, e.g. RLIMIT_NOFILE.
        limit: &'static str,
        /// The manifest key, e.g. `nofile`.
        key: &'static str,
        /// What was asked for.
        requested: u64,
        /// The current hard limit.
        hard: u64,
    },
    /// `setrlimit` failed.
    #[error("setrlimit({limit}, {value}) failed: {source}")]
    SetRlimit {
        /// The resource name.
        limit: &'static str,
        /// The value.
        value: u64,
        /// The underlying error.
        source: nix::Error,
    },
    /// The limits cannot be honoured on this host.
    #[error("resource limits cannot be honoured: {0}")]
    Capacity(String),
}

impl CgroupError {
    /// A directory on the path was gone (ENOENT): another monitor removed a shared parent
    /// cgroup it had left empty. Creation retries on this; nothing else does.
    pub(crate) fn is_vanished(&self) -> bool {
        let source = match self {
            Self::Create { source, .. }
            | Self::Write { source, .. }
            | Self::Read { source, .. }
            | Self::EnableController { source, .. } => source,
            _ => return false,
        };
        source.kind() == io::ErrorKind::NotFound
    }
}
