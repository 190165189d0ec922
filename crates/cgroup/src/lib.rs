//! isc-cgroup: resource control for ISCs (principle P9).
//!
//! One trait, [`IscCgroup`], over hand-written cgroup v1 and v2 backends, combined on hybrid
//! hosts (v1 controllers plus a cgroup2 mount). ISC cgroups are only ever created below the
//! calling process's own cgroup (per controller on v1), optionally below a relative parent.
//! Limits are written before any process joins; [`create`] removes what it made on failure.
//!
//! Also here: [`Rlimits`] applied in the child, and [`check_capacity`], the pre-flight guard
//! that refuses limits the host cannot honour.

mod capacity;
mod error;
mod fsops;
mod group;
mod held;
mod layout;
mod limits;
mod rlimit;
mod v1;
mod v2;

use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use capacity::{check_capacity, parse_cpu_list, MIN_MEMORY_BYTES};
pub use error::CgroupError;
pub use layout::{Controller, Layout};
pub use limits::{Events, IoThrottle, Limits, Stats};
pub use rlimit::Rlimits;

use fsops::{CgroupFs, RealFs};

/// One ISC's cgroup, spanning every hierarchy it lives in.
///
/// The engine's start sequence: [`create`] (limits written, no process yet), `clone3` with
/// `CLONE_INTO_CGROUP` and [`IscCgroup::v2_dir_fd`] when that is `Some`, then **always**
/// [`IscCgroup::attach`] before releasing the child (required for v1 controllers, harmless
/// when the child is already there), and [`IscCgroup::destroy`] when the ISC has ended.
pub trait IscCgroup: Send {
    /// Move `pid` (the whole thread group) into every directory of this cgroup.
    fn attach(&self, pid: i32) -> Result<(), CgroupError>;
    /// Move `pid` into the v1 hierarchies only: for a child that `clone3` already placed in the
    /// v2 directory with `CLONE_INTO_CGROUP`. Every `cgroup.procs` write takes the kernel's
    /// cgroup_threadgroup_rwsem for writing, which can cost an RCU grace period: skip needless ones.
    fn attach_v1(&self, pid: i32) -> Result<(), CgroupError>;
    /// The v1 `tasks` files of this cgroup. A *thread* writing "0" (itself) to `tasks` is moved
    /// without the global `cgroup_threadgroup_rwsem` that every `cgroup.procs` write takes (and
    /// whose first writer waits for an RCU grace period, 5–15 ms, holding `cgroup_mutex` and so
    /// stalling every cgroup mkdir on the host meanwhile). The engine lets a still
    /// single-threaded child join its cgroup this way (see `isc_engine::StartHooks`).
    fn v1_task_files(&self) -> Vec<PathBuf>;
    /// Creates what [`create_v2_first`] left for later (the v1 hierarchies and their limits).
    /// A no-op for a cgroup made by [`create`] or [`open`].
    fn complete(&mut self) -> Result<(), CgroupError>;
    /// The v2 directory as an fd for `clone3`'s `cgroup` field with `CLONE_INTO_CGROUP`
    /// (V2 and Hybrid layouts). `None` on pure v1.
    fn v2_dir_fd(&self) -> Option<BorrowedFd<'_>>;
    /// Live usage and configured limits.
    fn stats(&self) -> Result<Stats, CgroupError>;
    /// Counters of limit events: OOM kills, pids-limit hits, CPU throttling.
    fn events(&self) -> Result<Events, CgroupError>;
    /// Opens the files [`IscCgroup::events`] reads, so that its one read at the service's end
    /// costs a `pread` each instead of an open, a read and a close on cgroupfs. Call once the
    /// service runs; a file that cannot be opened is read the usual way.
    fn hold_event_files(&self) {}
    /// The pids of every process in this cgroup (union over hierarchies, sorted).
    fn procs(&self) -> Result<Vec<i32>, CgroupError>;
    /// SIGKILL every process: `cgroup.kill` on v2; on v1 freeze, kill, thaw (so nothing can
    /// fork between listing and killing).
    fn kill_all(&self) -> Result<(), CgroupError>;
    /// Kill leftovers, wait until the cgroup is empty, and rmdir every directory.
    fn destroy(self: Box<Self>) -> Result<(), CgroupError>;
    /// Every directory of this cgroup (one per v1 hierarchy, plus the v2 one).
    fn paths(&self) -> Vec<PathBuf>;
    /// The directory name shared by all hierarchies (`isc-…`).
    fn name(&self) -> &str;
    /// Protections that could not be applied on this host (e.g. no swap accounting), for the
    /// exit record and audit log; empty when everything requested is enforced.
    fn warnings(&self) -> &[String];
}

/// The directory name for `name`: used as-is when it already starts with `isc-`, otherwise
/// prefixed with `isc-`. Refuses anything that is not one safe path component.
pub fn cgroup_dir_name(name: &str) -> Result<String, CgroupError> {
    let bad = |reason| CgroupError::InvalidName { name: name.to_string(), reason };
    if name.is_empty() {
        return Err(bad("empty"));
    }
    if name.contains('/') {
        return Err(bad("contains '/'"));
    }
    if name.contains("..") {
        return Err(bad("contains '..'"));
    }
    if name == "." {
        return Err(bad("is '.'"));
    }
    if name.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(bad("contains whitespace or control characters"));
    }
    let dir = if name.starts_with("isc-") { name.to_string() } else { format!("isc-{name}") };
    if dir.len() > 200 {
        return Err(bad("longer than 200 bytes"));
    }
    Ok(dir)
}

/// The directory of ISC `name` in a *scope* (the ISCs of one state directory), one level below
/// the starter's own cgroup in every hierarchy: `isc-NAME` in the default scope (`None`),
/// `isc-SCOPE.NAME` in another. ISC names are DNS labels (no '.'), so two scopes never share a
/// directory and [`scoped_owner`] tells them apart. (One level, not a per-scope parent: a parent
/// costs one more `mkdir` and `rmdir` per hierarchy and start, ~0.1 ms measured.)
pub fn scoped_dir_name(scope: Option<&str>, name: &str) -> String {
    match scope {
        None => format!("isc-{name}"),
        Some(s) => format!("isc-{s}.{name}"),
    }
}

/// The ISC name that directory `dir` belongs to if it is one of `scope`'s (see
/// [`scoped_dir_name`]); `None` for anything else, another scope's included.
pub fn scoped_owner<'a>(scope: Option<&str>, dir: &'a str) -> Option<&'a str> {
    let rest = dir.strip_prefix("isc-")?;
    let name = match scope {
        None => rest,
        Some(s) => rest.strip_prefix(s)?.strip_prefix('.')?,
    };
    (!name.is_empty() && !name.contains('.')).then_some(name)
}

/// Check a configured parent: relative, only normal components, no `..`.
pub(crate) fn validate_parent(parent: Option<&Path>) -> Result<(), CgroupError> {
    let Some(p) = parent else { return Ok(()) };
    let bad = |reason| CgroupError::InvalidParent { path: p.to_path_buf(), reason };
    if p.is_absolute() {
        return Err(bad("is absolute"));
    }
    if p.as_os_str().is_empty() {
        return Err(bad("is empty"));
    }
    for c in p.components() {
        match c {
            std::path::Component::Normal(s) if s.to_str().is_some_and(|s| !s.contains('\n')) => {}
            _ => return Err(bad("has '..', '.' or non-UTF-8 components")),
        }
    }
    Ok(())
}

/// Create the cgroup `isc-<name>` below each hierarchy's own cgroup (joined with `parent`
/// when given), enable what v2 needs, and write every limit before any process exists.
/// On any error, every directory this call created is removed again.
pub fn create(
    layout: &Layout,
    parent: Option<&Path>,
    name: &str,
    limits: &Limits,
) -> Result<Box<dyn IscCgroup>, CgroupError> {
    let g = group::Group::create(Arc::new(RealFs), layout, parent, name, limits)?;
    Ok(Box::new(g))
}

/// Like [`create`], split in two: the v2 directory (needed before `clone3` for
/// CLONE_INTO_CGROUP) now, the v1 directories at [`IscCgroup::complete`], which the engine calls
/// while the child builds its root. Until then the cgroup has no v1 directories.
pub fn create_v2_first(
    layout: &Layout,
    parent: Option<&Path>,
    name: &str,
    limits: &Limits,
) -> Result<Box<dyn IscCgroup>, CgroupError> {
    let g = group::Group::create_v2_first(Arc::new(RealFs), layout, parent, name, limits)?;
    Ok(Box::new(g))
}

/// Open an existing ISC cgroup (e.g. for `isc stats` or cleanup); directories missing in
/// some hierarchies are tolerated, but at least one must exist.
pub fn open(
    layout: &Layout,
    parent: Option<&Path>,
    name: &str,
) -> Result<Box<dyn IscCgroup>, CgroupError> {
    let g = group::Group::open(Arc::new(RealFs), layout, parent, name)?;
    Ok(Box::new(g))
}

/// Remove ISC cgroups left behind by a monitor that died (e.g. SIGKILL): every `isc-*`
/// directory below the parent, in any hierarchy, whose name `is_alive` rejects is emptied
/// (its processes are SIGKILLed) and removed. `is_alive` gets the directory name (`isc-…`)
/// and must return true for every ISC the caller still owns. Returns the names removed.
pub fn collect_stale(
    layout: &Layout,
    parent: Option<&Path>,
    is_alive: impl Fn(&str) -> bool,
) -> Result<Vec<String>, CgroupError> {
    collect_stale_with(Arc::new(RealFs), layout, parent, is_alive)
}

pub(crate) fn collect_stale_with(
    fs: Arc<dyn CgroupFs>,
    layout: &Layout,
    parent: Option<&Path>,
    is_alive: impl Fn(&str) -> bool,
) -> Result<Vec<String>, CgroupError> {
    validate_parent(parent)?;
    let mut bases: Vec<PathBuf> =
        layout.v1().map(|m| m.values().cloned().collect()).unwrap_or_default();
    bases.extend(layout.unified().map(Path::to_path_buf));
    let mut names = std::collections::BTreeSet::new();
    for base in bases {
        let dir = parent.map_or(base.clone(), |p| base.join(p));
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for e in entries.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with("isc-") && e.file_type().is_ok_and(|t| t.is_dir()) {
                names.insert(n);
            }
        }
    }
    let mut removed = Vec::new();
    let mut errors = Vec::new();
    for n in names.into_iter().filter(|n| !is_alive(n)) {
        let res =
            group::Group::open(fs.clone(), layout, parent, &n).and_then(|g| Box::new(g).destroy());
        match res {
            Ok(()) => {
                tracing::info!(cgroup = %n, "removed stale ISC cgroup");
                removed.push(n);
            }
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() {
        Ok(removed)
    } else {
        Err(CgroupError::Cleanup(errors))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scoped_names_round_trip_and_never_cross_scopes() {
        assert_eq!(scoped_dir_name(None, "web"), "isc-web");
        assert_eq!(scoped_dir_name(Some("0123abcd4567"), "web"), "isc-0123abcd4567.web");
        assert_eq!(scoped_owner(None, "isc-web"), Some("web"));
        assert_eq!(scoped_owner(Some("0123abcd4567"), "isc-0123abcd4567.web"), Some("web"));
        // Another scope's directory, or the default scope's, is never ours.
        assert_eq!(scoped_owner(None, "isc-0123abcd4567.web"), None);
        assert_eq!(scoped_owner(Some("0123abcd4567"), "isc-web"), None);
        assert_eq!(scoped_owner(Some("0123abcd4567"), "isc-ffffabcd4567.web"), None);
        assert_eq!(scoped_owner(None, "system.slice"), None);
        assert_eq!(scoped_owner(None, "isc-"), None);
    }

    #[test]
    fn names_are_prefixed_once_and_validated() {
        assert_eq!(cgroup_dir_name("web-1a2b").unwrap(), "isc-web-1a2b");
        assert_eq!(cgroup_dir_name("isc-web-1a2b").unwrap(), "isc-web-1a2b");
        for bad in ["", "a/b", "..", "x..y", ".", "a b", "a\nb"] {
            assert!(cgroup_dir_name(bad).is_err(), "{bad:?} accepted");
        }
        assert!(cgroup_dir_name(&"x".repeat(300)).is_err());
    }

    #[test]
    fn parents_must_stay_below_own_cgroup() {
        assert!(validate_parent(None).is_ok());
        assert!(validate_parent(Some(Path::new("isc/dock"))).is_ok());
        for bad in ["/sys/fs/cgroup", "../x", "a/../../b", "./a", ""] {
            assert!(validate_parent(Some(Path::new(bad))).is_err(), "{bad:?} accepted");
        }
    }
}
