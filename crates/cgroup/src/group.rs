//! One ISC cgroup across hierarchies: planning which hierarchy holds which controller,
//! creating the directories with rollback, and the [`IscCgroup`] implementation.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::CgroupError;
use crate::fsops::{self, CgroupFs};
use crate::held::{HeldFiles, ThroughHeld};
use crate::layout::{Controller, Layout};
use crate::limits::{Events, Limits, Stats};
use crate::v1::{self, V1Part};
use crate::v2::{self, V2Part};
use crate::{cgroup_dir_name, validate_parent, IscCgroup};

/// How long [`IscCgroup::destroy`] waits for killed members to leave.
const EMPTY_TIMEOUT: Duration = Duration::from_secs(5);

/// The cgroup of one ISC: v1 directories, a v2 directory, or both (hybrid).
#[derive(Debug)]
pub(crate) struct Group {
    fs: Arc<dyn CgroupFs>,
    name: String,
    v1: Option<V1Part>,
    v2: Option<V2Part>,
    warnings: Vec<String>,
    /// v1 directories still to create (split creation only).
    pending_v1: Option<PendingV1>,
    /// The event counters' files, once [`IscCgroup::hold_event_files`] opened them.
    held: HeldFiles,
}

/// Which hierarchy holds which controller for a new cgroup.
struct Plan {
    v1: BTreeMap<Controller, PathBuf>,
    /// The v1 hierarchy cpuset is bound to, used or not: new cgroups there need their cpuset
    /// copied from the parent whatever else is co-mounted with it.
    cpuset_base: Option<PathBuf>,
    v2: Option<(PathBuf, BTreeSet<Controller>)>,
}

impl Plan {
    fn new(fs: &dyn CgroupFs, layout: &Layout, limits: &Limits) -> Result<Plan, CgroupError> {
        let v1_bases = layout.v1().cloned().unwrap_or_default();
        let v1: BTreeMap<Controller, PathBuf> = v1_bases
            .iter()
            .filter(|(c, _)| **c != Controller::Cpuset || limits.cpuset.is_some())
            .map(|(c, p)| (*c, p.clone()))
            .collect();
        let v2 = match layout.unified() {
            Some(base) => {
                let offered = v2::offered(fs, base)?;
                let mut want = BTreeSet::from([
                    Controller::Memory,
                    Controller::Cpu,
                    Controller::Pids,
                    Controller::Io,
                ]);
                if limits.cpuset.is_some() {
                    want.insert(Controller::Cpuset);
                }
                // A controller bound to a v1 hierarchy cannot be enabled on v2 (cgroup-v2.rst).
                let enabled = want
                    .into_iter()
                    .filter(|c| offered.contains(c) && !v1_bases.contains_key(c))
                    .collect();
                Some((base.to_path_buf(), enabled))
            }
            None => None,
        };
        let cpuset_base = v1_bases.get(&Controller::Cpuset).cloned();
        let plan = Plan { v1, cpuset_base, v2 };
        let needs = [
            ("memory", Controller::Memory, limits.memory.is_some()),
            ("cpu", Controller::Cpu, limits.cpu_quota.is_some()),
            ("cpu_weight", Controller::Cpu, limits.cpu_weight.is_some()),
            ("pids", Controller::Pids, limits.pids.is_some()),
            ("cpuset", Controller::Cpuset, limits.cpuset.is_some()),
            ("io_weight", Controller::Io, limits.io_weight.is_some()),
            ("io_throttle", Controller::Io, !limits.io_throttle.is_empty()),
        ];
        for (key, c, needed) in needs {
            if needed && !plan.holds(c) {
                return Err(CgroupError::ControllerMissing {
                    key,
                    controller: c.v1_name(),
                    hint: format!(
                        "no v1 hierarchy mounted for it and not offered in the v2 cgroup.controllers of {:?}",
                        layout.unified()
                    ),
                });
            }
        }
        Ok(plan)
    }

    fn holds(&self, c: Controller) -> bool {
        self.v1.contains_key(&c) || self.v2.as_ref().is_some_and(|(_, e)| e.contains(&c))
    }
}

/// mkdir one component that may already exist (a shared parent, possibly racing with
/// another monitor creating it).
fn ensure_dir(fs: &dyn CgroupFs, dir: &Path) -> Result<bool, CgroupError> {
    match fs.mkdir(dir) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(source) => Err(CgroupError::Create { path: dir.to_path_buf(), source }),
    }
}

/// How often [`create_below`] rebuilds the parent chain after a parent vanished under it.
const PARENT_VANISHED_RETRIES: usize = 8;

/// Creates `base/<parent…>/dirname`: each parent component if missing (then `prepare` runs
/// on it), then the leaf. The shared parents are removed by whichever monitor leaves them
/// empty, so one may vanish between our mkdir and the leaf's; the chain is then rebuilt. Once
/// the leaf exists its parents are no longer empty and stay.
fn create_below(
    fs: &dyn CgroupFs,
    base: &Path,
    parent: Option<&Path>,
    dirname: &str,
    created: &mut Vec<PathBuf>,
    mut prepare: impl FnMut(&Path) -> Result<(), CgroupError>,
) -> Result<PathBuf, CgroupError> {
    let mut attempt = 0;
    loop {
        let built = (|| -> Result<PathBuf, CgroupError> {
            let mut dir = base.to_path_buf();
            for comp in parent.iter().flat_map(|p| p.components()) {
                dir.push(comp);
                ensure_dir(fs, &dir)?;
                prepare(&dir)?;
            }
            let leaf = dir.join(dirname);
            create_leaf(fs, &leaf, created)?;
            Ok(leaf)
        })();
        match built {
            Err(e) if e.is_vanished() && attempt < PARENT_VANISHED_RETRIES => {
                attempt += 1;
                tracing::debug!(error = %e, attempt, "cgroup parent vanished while creating; retrying");
            }
            other => return other,
        }
    }
}

/// mkdir the ISC's own directory, which must not exist yet; record it for rollback.
fn create_leaf(
    fs: &dyn CgroupFs,
    dir: &Path,
    created: &mut Vec<PathBuf>,
) -> Result<(), CgroupError> {
    match fs.mkdir(dir) {
        Ok(()) => {
            created.push(dir.to_path_buf());
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            Err(CgroupError::AlreadyExists { path: dir.to_path_buf() })
        }
        Err(source) => Err(CgroupError::Create { path: dir.to_path_buf(), source }),
    }
}

fn open_dir(dir: &Path) -> Result<OwnedFd, CgroupError> {
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY)
        .open(dir)
        .map(OwnedFd::from)
        .map_err(|source| CgroupError::OpenDir { path: dir.to_path_buf(), source })
}

/// Removes the directories a failed creation made (logged, not returned: the creation's own
/// error is the one to report).
fn rollback(fs: &dyn CgroupFs, created: &[PathBuf]) {
    for failure in fsops::remove_dirs(fs, created) {
        tracing::warn!(error = %failure, "rollback of partially created cgroup failed");
    }
}

/// The v1 half of a cgroup whose creation was split (see [`Group::create_v2_first`]).
#[derive(Debug)]
struct PendingV1 {
    bases: BTreeMap<Controller, PathBuf>,
    cpuset_base: Option<PathBuf>,
    parent: Option<PathBuf>,
    limits: Limits,
}

impl Group {
    pub(crate) fn create(
        fs: Arc<dyn CgroupFs>,
        layout: &Layout,
        parent: Option<&Path>,
        name: &str,
        limits: &Limits,
    ) -> Result<Group, CgroupError> {
        let mut g = Self::create_v2_first(fs, layout, parent, name, limits)?;
        if let Err(e) = g.complete_v1() {
            rollback(g.fs.as_ref(), &g.paths());
            return Err(e);
        }
        Ok(g)
    }

    /// Creates the v2 directory (with its limits) now and leaves the v1 hierarchies to
    /// [`Group::complete_v1`]: the engine needs the v2 directory before `clone3`
    /// (CLONE_INTO_CGROUP) but can build the v1 ones while the child prepares its root.
    pub(crate) fn create_v2_first(
        fs: Arc<dyn CgroupFs>,
        layout: &Layout,
        parent: Option<&Path>,
        name: &str,
        limits: &Limits,
    ) -> Result<Group, CgroupError> {
        let dirname = cgroup_dir_name(name)?;
        validate_parent(parent)?;
        limits.validate()?;
        let plan = Plan::new(fs.as_ref(), layout, limits)?;
        let mut created = Vec::new();
        let mut warnings = Vec::new();
        let v2 =
            Self::build_v2(fs.as_ref(), &plan, parent, &dirname, &mut created).and_then(|v2| {
                if let Some(p) = &v2 {
                    p.apply_limits(fs.as_ref(), limits, &mut warnings)?;
                }
                Ok(v2)
            });
        let v2 = match v2 {
            Ok(v2) => v2,
            Err(e) => {
                rollback(fs.as_ref(), &created);
                return Err(e);
            }
        };
        if limits.swap == 0 && !plan.holds(Controller::Memory) {
            warnings.push("swap not restricted: no memory controller on this host".into());
        }
        let pending = PendingV1 {
            bases: plan.v1,
            cpuset_base: plan.cpuset_base,
            parent: parent.map(Path::to_path_buf),
            limits: limits.clone(),
        };
        Ok(Group {
            fs,
            name: dirname,
            v1: None,
            v2,
            warnings,
            pending_v1: (!pending.bases.is_empty()).then_some(pending),
            held: HeldFiles::default(),
        })
    }

    /// Creates the v1 directories left by [`Group::create_v2_first`] and applies their limits;
    /// on failure removes the v1 directories it made (the v2 one stays for `destroy`).
    pub(crate) fn complete_v1(&mut self) -> Result<(), CgroupError> {
        let Some(mut p) = self.pending_v1.take() else { return Ok(()) };
        if let Some(v2) = &self.v2 {
            p.bases.retain(|c, _| !v2.makes_redundant(*c));
        }
        let f = self.fs.as_ref();
        let mut created = Vec::new();
        let cpuset = p.cpuset_base.as_deref();
        let built =
            Self::build_v1(f, &p.bases, cpuset, p.parent.as_deref(), &self.name, &mut created)
                .and_then(|dirs| {
                    let part = V1Part { dirs };
                    part.apply_limits(f, &p.limits, &mut self.warnings)?;
                    Ok(part)
                });
        match built {
            Ok(part) => {
                self.v1 = (!part.dirs.is_empty()).then_some(part);
                tracing::info!(cgroup = %self.name, paths = ?self.paths(), "created ISC cgroup");
                Ok(())
            }
            Err(e) => {
                rollback(f, &created);
                Err(e)
            }
        }
    }

    fn build_v1(
        f: &dyn CgroupFs,
        bases: &BTreeMap<Controller, PathBuf>,
        cpuset_base: Option<&Path>,
        parent: Option<&Path>,
        dirname: &str,
        created: &mut Vec<PathBuf>,
    ) -> Result<BTreeMap<Controller, PathBuf>, CgroupError> {
        let mut leaf_by_base: BTreeMap<PathBuf, PathBuf> = BTreeMap::new();
        let mut v1_dirs = BTreeMap::new();
        for (c, base) in bases {
            if let Some(leaf) = leaf_by_base.get(base) {
                v1_dirs.insert(*c, leaf.clone());
                continue;
            }
            let is_cpuset = cpuset_base == Some(base.as_path());
            let leaf = create_below(f, base, parent, dirname, created, |dir| {
                // Every time, not only when this call made `dir`: a parent that another
                // monitor has just made may not have its cpuset copied yet, and a child of an
                // empty cpuset could never hold a task.
                if is_cpuset {
                    v1::init_cpuset(f, dir)?;
                }
                Ok(())
            })?;
            if is_cpuset {
                v1::init_cpuset(f, &leaf)?;
            }
            leaf_by_base.insert(base.clone(), leaf.clone());
            v1_dirs.insert(*c, leaf);
        }
        Ok(v1_dirs)
    }

    fn build_v2(
        f: &dyn CgroupFs,
        plan: &Plan,
        parent: Option<&Path>,
        dirname: &str,
        created: &mut Vec<PathBuf>,
    ) -> Result<Option<V2Part>, CgroupError> {
        let Some((base, enabled)) = &plan.v2 else { return Ok(None) };
        v2::enable(f, base, enabled)?;
        let leaf =
            create_below(f, base, parent, dirname, created, |dir| v2::enable(f, dir, enabled))?;
        Ok(Some(V2Part {
            fd: open_dir(&leaf)?,
            enabled: v2::offered(f, &leaf)?.intersection(enabled).copied().collect(),
            dir: leaf,
        }))
    }

    pub(crate) fn open(
        fs: Arc<dyn CgroupFs>,
        layout: &Layout,
        parent: Option<&Path>,
        name: &str,
    ) -> Result<Group, CgroupError> {
        let dirname = cgroup_dir_name(name)?;
        validate_parent(parent)?;
        let leaf = |base: &Path| parent.map_or(base.to_path_buf(), |p| base.join(p)).join(&dirname);
        let v1_dirs: BTreeMap<Controller, PathBuf> = layout
            .v1()
            .into_iter()
            .flatten()
            .map(|(c, base)| (*c, leaf(base)))
            .filter(|(_, d)| d.is_dir())
            .collect();
        let v2 = match layout.unified().map(leaf) {
            Some(dir) if dir.is_dir() => {
                Some(V2Part { fd: open_dir(&dir)?, enabled: v2::offered(fs.as_ref(), &dir)?, dir })
            }
            _ => None,
        };
        if v1_dirs.is_empty() && v2.is_none() {
            let base = layout
                .unified()
                .map(Path::to_path_buf)
                .or_else(|| layout.v1().and_then(|m| m.values().next().cloned()))
                .unwrap_or_default();
            return Err(CgroupError::NotFound { path: leaf(&base) });
        }
        Ok(Group {
            fs,
            name: dirname,
            v1: (!v1_dirs.is_empty()).then_some(V1Part { dirs: v1_dirs }),
            v2,
            warnings: Vec::new(),
            pending_v1: None,
            held: HeldFiles::default(),
        })
    }

    fn events_through(&self, fs: &ThroughHeld<'_>) -> Result<Events, CgroupError> {
        let mut e = Events::default();
        if let Some(p) = &self.v1 {
            p.events_into(fs, &mut e)?;
        }
        if let Some(p) = &self.v2 {
            p.events_into(fs, &mut e)?;
        }
        Ok(e)
    }

    fn wait_empty(&self) -> Result<(), CgroupError> {
        let start = Instant::now();
        let mut rekilled = false;
        loop {
            let pids = self.procs()?;
            if pids.is_empty() {
                return Ok(());
            }
            if !rekilled && start.elapsed() > Duration::from_secs(1) {
                // A member forked between the first kill pass and its death (v1 without freezer).
                self.kill_all()?;
                rekilled = true;
            }
            if start.elapsed() > EMPTY_TIMEOUT {
                return Err(CgroupError::NotEmpty {
                    path: self.paths().into_iter().next().unwrap_or_default(),
                    pids,
                    millis: EMPTY_TIMEOUT.as_millis() as u64,
                });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl IscCgroup for Group {
    fn attach(&self, pid: i32) -> Result<(), CgroupError> {
        if let Some(p) = &self.v2 {
            p.attach(self.fs.as_ref(), pid)?;
        }
        if let Some(p) = &self.v1 {
            p.attach(self.fs.as_ref(), pid)?;
        }
        tracing::debug!(cgroup = %self.name, pid, "attached process");
        Ok(())
    }

    fn attach_v1(&self, pid: i32) -> Result<(), CgroupError> {
        if let Some(p) = &self.v1 {
            p.attach(self.fs.as_ref(), pid)?;
        }
        Ok(())
    }

    fn complete(&mut self) -> Result<(), CgroupError> {
        self.complete_v1()
    }

    fn v1_task_files(&self) -> Vec<PathBuf> {
        self.v1
            .as_ref()
            .map(V1Part::unique_dirs)
            .unwrap_or_default()
            .into_iter()
            .map(|d| d.join("tasks"))
            .collect()
    }

    fn v2_dir_fd(&self) -> Option<BorrowedFd<'_>> {
        self.v2.as_ref().map(|p| p.fd.as_fd())
    }

    fn stats(&self) -> Result<Stats, CgroupError> {
        let mut s = Stats::default();
        if let Some(p) = &self.v1 {
            p.stats_into(self.fs.as_ref(), &mut s)?;
        }
        if let Some(p) = &self.v2 {
            p.stats_into(self.fs.as_ref(), &mut s)?;
        }
        Ok(s)
    }

    fn events(&self) -> Result<Events, CgroupError> {
        let fs = ThroughHeld { inner: self.fs.as_ref(), held: &self.held, opening: false };
        self.events_through(&fs)
    }

    fn hold_event_files(&self) {
        let fs = ThroughHeld { inner: self.fs.as_ref(), held: &self.held, opening: true };
        // Errors only mean a file stays unheld; `events` then reads it the usual way.
        let _ = self.events_through(&fs);
    }

    fn procs(&self) -> Result<Vec<i32>, CgroupError> {
        let mut all = Vec::new();
        if let Some(p) = &self.v1 {
            all.extend(p.procs(self.fs.as_ref())?);
        }
        if let Some(p) = &self.v2 {
            if p.dir.exists() {
                all.extend(p.procs(self.fs.as_ref())?);
            }
        }
        all.sort_unstable();
        all.dedup();
        Ok(all)
    }

    fn kill_all(&self) -> Result<(), CgroupError> {
        let mut errors = Vec::new();
        if let Some(p) = &self.v2 {
            errors.extend(p.kill_all(self.fs.as_ref()).err());
        }
        if let Some(p) = &self.v1 {
            errors.extend(p.kill_all(self.fs.as_ref()).err());
        }
        match errors.len() {
            0 => Ok(()),
            1 => Err(errors.remove(0)),
            _ => Err(CgroupError::Cleanup(errors)),
        }
    }

    fn destroy(self: Box<Self>) -> Result<(), CgroupError> {
        self.held.release();
        // After a normal end the PID namespace is already gone and every directory empty:
        // rmdir(2) itself is the emptiness check (EBUSY while a task or child remains), so try
        // it first and read no `cgroup.procs` at all. Whatever stays goes the long way.
        if fsops::try_remove_dirs(self.fs.as_ref(), &self.paths()) {
            tracing::info!(cgroup = %self.name, "removed ISC cgroup");
            return Ok(());
        }
        let mut errors = Vec::new();
        if !self.procs().is_ok_and(|p| p.is_empty()) {
            errors.extend(self.kill_all().err());
        }
        if let Err(e) = self.wait_empty() {
            errors.push(e);
            return Err(CgroupError::Cleanup(errors));
        }
        errors.extend(fsops::remove_dirs(self.fs.as_ref(), &self.paths()));
        if errors.is_empty() {
            tracing::info!(cgroup = %self.name, "removed ISC cgroup");
            Ok(())
        } else {
            Err(CgroupError::Cleanup(errors))
        }
    }

    fn paths(&self) -> Vec<PathBuf> {
        let mut out = self.v1.as_ref().map(V1Part::unique_dirs).unwrap_or_default();
        out.extend(self.v2.as_ref().map(|p| p.dir.clone()));
        out
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn warnings(&self) -> &[String] {
        &self.warnings
    }
}

#[cfg(test)]
#[path = "v2_fake_tests.rs"]
mod v2_fake_tests;
