//! From a validated manifest to a running ISC: prepare the image, resolve the engine spec,
//! create the cgroup (limits written before the child exists), run, and clean up.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use isc_cgroup::{IscCgroup, Layout, Limits};
use isc_engine::{IscSpec, RlimitSpec, StartHooks, TmpfsMount, Weakening};
use isc_image::PreparedRoot;
use isc_manifest::{Manifest, SysAccess, DEFAULT_TMPFS_MODE, DEFAULT_TMPFS_SIZE};

use crate::hooks_image::ImageHold;

/// Where isc keeps its files.
#[derive(Debug, Clone)]
pub struct Dirs {
    /// Persistent state: images, keys, audit (`/var/lib/isc`).
    pub root: PathBuf,
    /// Runtime state: running ISCs, control sockets (`/run/isc`).
    pub state: PathBuf,
}

/// Mount points the image must contain for this manifest.
pub(crate) fn mount_points(m: &Manifest) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = m.filesystem.tmpfs.iter().map(|t| t.path.clone()).collect();
    v.extend(m.filesystem.volumes.iter().map(|t| t.path.clone()));
    if !m.secrets.is_empty() {
        v.push(PathBuf::from(isc_manifest::SECRETS_DIR));
    }
    v.extend(m.profile.implied_writable_paths().iter().map(PathBuf::from));
    if m.service.workdir != Path::new("/") {
        v.push(m.service.workdir.clone());
    }
    v
}

/// Resolves the manifest into the engine's spec (preparing, leasing and checking the image on
/// the way). Keep the returned [`ImageHold`] alive until the ISC has ended.
pub fn resolve(m: &Manifest, dirs: &Dirs) -> Result<(IscSpec, ImageHold)> {
    let extra = mount_points(m);
    let (prepared, hold) = crate::hooks_image::prepare(m, dirs, &extra)?;
    Ok((spec_for(m, dirs, prepared)?, hold))
}

/// The engine's spec for `m` with the prepared image.
fn spec_for(m: &Manifest, dirs: &Dirs, prepared: PreparedRoot) -> Result<IscSpec> {
    // Volumes and secrets become binds in `hooks_vault::VaultHooks::prepare`.
    let mut tmpfs: Vec<TmpfsMount> = m
        .filesystem
        .tmpfs
        .iter()
        .map(|t| TmpfsMount {
            path: t.path.clone(),
            size_bytes: t.size,
            mode: t.mode,
            exec: t.exec,
        })
        .collect();
    for p in m.profile.implied_writable_paths() {
        if !tmpfs.iter().any(|t| t.path == Path::new(p)) {
            tmpfs.push(TmpfsMount {
                path: p.into(),
                size_bytes: DEFAULT_TMPFS_SIZE,
                mode: DEFAULT_TMPFS_MODE,
                exec: false,
            });
        }
    }
    // The same derivation as the firewall's (isc_net::landlock_ports), plus peers' ports.
    let (bind_ports, connect_ports) = crate::hooks_net::landlock_ports(m, dirs)?;
    // Refuse rlimits the host cannot grant before anything is created (the child would fail
    // later with a less helpful message).
    isc_cgroup::Rlimits {
        nofile: Some(m.resources.nofile),
        nproc: m.resources.nproc,
        memlock: m.resources.memlock,
        stack: m.resources.stack,
        core: 0,
    }
    .check()
    .context("checking [resources] rlimits")?;
    Ok(IscSpec {
        name: m.name.clone(),
        hostname: m.hostname.clone(),
        rootfs: prepared.rootfs,
        image_id: prepared.id,
        exec: m.service.exec.clone(),
        env: m.service.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        workdir: m.service.workdir.clone(),
        uid: m.service.user,
        gid: m.service.group,
        tmpfs,
        binds: vec![],
        sys_read_only: m.filesystem.sys == SysAccess::ReadOnly,
        capabilities: m.security.capabilities.clone(),
        allow_syscalls: m.security.allow_syscalls.clone(),
        deny_syscalls: m.security.deny_syscalls.clone(),
        tcp_bind_ports: bind_ports,
        tcp_connect_ports: connect_ports,
        rlimits: RlimitSpec {
            nofile: m.resources.nofile,
            nproc: m.resources.nproc,
            memlock: m.resources.memlock,
            stack: m.resources.stack,
        },
        stop_timeout: m.service.stop_timeout,
        weakening: Weakening::default(),
    })
}

/// The cgroup limits a manifest asks for.
pub fn limits(m: &Manifest) -> Limits {
    let r = &m.resources;
    Limits {
        memory: r.memory,
        swap: r.swap,
        cpu_quota: r.cpu,
        cpu_weight: r.cpu_weight,
        pids: r.pids,
        cpuset: r.cpuset.clone(),
        io_weight: r.io_weight,
        io_throttle: vec![],
    }
}

/// The host's cgroup layout, detected once per process (parsing mountinfo is most of a start's
/// user-space work otherwise, and the layout cannot change under a running monitor).
pub fn cgroup_layout() -> Result<&'static Layout, isc_cgroup::CgroupError> {
    static LAYOUT: std::sync::OnceLock<Layout> = std::sync::OnceLock::new();
    if let Some(l) = LAYOUT.get() {
        return Ok(l);
    }
    let detected = Layout::detect()?;
    Ok(LAYOUT.get_or_init(|| detected))
}

/// The cgroup scope of the ISCs of `state_dir` (see `isc_cgroup::scoped_dir_name`): none for
/// the default `/run/isc`; else 12 hex digits of the directory's BLAKE3, so test and bench
/// roots side by side never share a cgroup.
pub fn cgroup_scope(state_dir: &Path) -> Option<String> {
    (state_dir != Path::new("/run/isc")).then(|| {
        let h = blake3::hash(state_dir.as_os_str().as_encoded_bytes()).to_hex();
        h[..12].to_string()
    })
}

/// The cgroup directory name of ISC `name` of `state_dir`, in every hierarchy.
pub fn cgroup_name(state_dir: &Path, name: &str) -> String {
    isc_cgroup::scoped_dir_name(cgroup_scope(state_dir).as_deref(), name)
}

/// The cgroup side of a start: attach before release, report kernel limit events at the end,
/// remove the cgroup when dropped.
pub struct CgroupHooks {
    cgroup: Option<Box<dyn IscCgroup>>,
    limits: Limits,
    _starting: isc_engine::state::StartingLock,
    /// The engine asked for the v2 fd: the child was born in the v2 directory.
    cloned_into_v2: std::cell::Cell<bool>,
    /// The event counters read at the end (see `end_events`).
    end_events: Option<isc_cgroup::Events>,
    /// The removal started once PID 1 was gone (`init_gone`).
    teardown: Option<CgroupTeardown>,
}

impl CgroupHooks {
    /// Removes stale cgroups of dead monitors, checks capacity, creates the ISC's cgroup.
    pub fn create(name: &str, limits: Limits, state_dir: &Path) -> Result<Self> {
        isc_cgroup::check_capacity(&limits).context("checking the resource limits")?;
        isc_engine::timing::mark("capacity checked");
        let layout = cgroup_layout().context("detecting the cgroup layout")?;
        isc_engine::timing::mark("cgroup layout detected");
        let starting = isc_engine::state::StartingLock::take(state_dir, name)
            .with_context(|| format!("ISC `{name}` is being started by another process"))?;
        isc_engine::state::collect_stale(state_dir);
        isc_engine::timing::mark("start lock taken, stale registry entries collected");
        let scope = cgroup_scope(state_dir);
        // A directory of this state dir's scope is stale when no live process holds its ISC's
        // name lock; our own name's, if present, was left by a dead monitor (we hold the name
        // now). Other scopes' directories (other state dirs) are never touched.
        let alive = |dir: &str| match isc_cgroup::scoped_owner(scope.as_deref(), dir) {
            Some(n) => n != name && isc_engine::state::is_alive(state_dir, n),
            None => true,
        };
        // Failing to collect someone else's leftovers must not fail this start.
        let removed = isc_cgroup::collect_stale(layout, None, alive).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "removing stale ISC cgroups");
            vec![]
        });
        if !removed.is_empty() {
            tracing::info!(?removed, "removed cgroups of ISCs whose monitor died");
        }
        isc_engine::timing::mark("stale cgroups collected");
        // The v1 directories follow in `before_release`, while the child builds its root.
        let dir = isc_cgroup::scoped_dir_name(scope.as_deref(), name);
        let cgroup = isc_cgroup::create_v2_first(layout, None, &dir, &limits)
            .with_context(|| format!("creating the cgroup for ISC `{name}`"))?;
        Ok(Self::holding(cgroup, limits, starting))
    }

    fn holding(
        cgroup: Box<dyn IscCgroup>,
        limits: Limits,
        starting: isc_engine::state::StartingLock,
    ) -> Self {
        Self {
            cgroup: Some(cgroup),
            limits,
            _starting: starting,
            cloned_into_v2: Default::default(),
            end_events: None,
            teardown: None,
        }
    }

    /// The cgroup side of a woken monitor (`CgroupHooks::suspend`): the ISC's cgroup opened
    /// by name, its start lock adopted, its event files held again.
    pub fn resume(
        name: &str,
        limits: Limits,
        state_dir: &Path,
        state: serde_json::Value,
    ) -> Result<Self> {
        let kept: isc_engine::monitor_hibernate::KeptLock =
            serde_json::from_value(state).context("the saved cgroup state")?;
        // SAFETY: the saved state names this descriptor once, as the start lock's.
        let fd = unsafe { isc_engine::monitor_hibernate::adopt_fd(kept.fd) }
            .context("the kept start lock")?;
        let starting = isc_engine::state::StartingLock::adopt(isc_engine::state::LockFile::adopt(
            kept.path,
            fd.into(),
        ));
        let layout = cgroup_layout().context("detecting the cgroup layout")?;
        let cgroup = isc_cgroup::open(layout, None, &cgroup_name(state_dir, name))
            .with_context(|| format!("opening the cgroup of ISC `{name}`"))?;
        cgroup.hold_event_files();
        Ok(Self::holding(cgroup, limits, starting))
    }

    /// The cgroup's event counters, read once at the end (the exit record's reason and
    /// `limit_events`); `None` if they cannot be read.
    fn end_events(&mut self) -> Option<&isc_cgroup::Events> {
        if self.end_events.is_none() {
            self.end_events = self.cgroup.as_ref().and_then(|cg| cg.events().ok());
        }
        self.end_events.as_ref()
    }

    /// Removes the cgroup on a thread of its own, so the exit path's other work (the network
    /// teardown, the audit trail's close) overlaps it. The ISC's processes must be gone.
    /// (Removing it on the exit path's own thread when there is no network measured the same
    /// per `isc run` within the noise of this shared host.)
    pub fn teardown_in_background(&mut self) -> CgroupTeardown {
        if let Some(started) = self.teardown.take() {
            return started;
        }
        let Some(cg) = self.cgroup.take() else {
            return CgroupTeardown { thread: None };
        };
        // On another CPU: the rmdirs take ~0.2 ms in the kernel (isc_engine::beside); here if
        // no thread can be made, never left behind.
        let thread =
            isc_engine::beside::spawn_or_inline("isc-cgroup-rm", 128 * 1024, move || destroy(cg));
        CgroupTeardown { thread }
    }
}

/// The end of an ISC's cgroup, started by [`CgroupHooks::teardown_in_background`].
pub struct CgroupTeardown {
    thread: Option<isc_engine::beside::Beside<()>>,
}

impl CgroupTeardown {
    /// Waits until the cgroup is gone (not for its thread's own teardown).
    pub fn join(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.outcome();
        }
    }
}

fn exit_reason(ev: &isc_cgroup::Events, limits: &Limits) -> Option<String> {
    if ev.oom_kills > 0 {
        return Some(format!(
            "killed by the kernel OOM killer: memory limit {}",
            limits.memory.map(mib).unwrap_or_else(|| "unset".into())
        ));
    }
    if ev.pids_max_hits > 0 {
        return Some(format!(
            "the pids limit of {} was reached {} time(s): fork/clone failed with EAGAIN",
            limits.pids.unwrap_or(0),
            ev.pids_max_hits
        ));
    }
    None
}

fn mib(b: u64) -> String {
    format!("{} MiB", b / (1024 * 1024))
}

impl StartHooks for CgroupHooks {
    fn after_start(&mut self, _state: &isc_engine::state::IscState) {
        // The service runs and this thread waits for its end: open the limit-event counters'
        // files now, so the exit record reads them with a pread each (isc_cgroup's held.rs).
        if let Some(cg) = &self.cgroup {
            cg.hold_event_files();
        }
    }

    fn before_release(&mut self, child_pid: i32) -> Result<(), (&'static str, String)> {
        let cg = self.cgroup.as_mut().expect("cgroup present until drop");
        cg.complete().map_err(|e| ("creating the ISC's cgroup", e.to_string()))?;
        for w in cg.warnings() {
            tracing::warn!(cgroup = cg.name(), warning = %w, "resource control weaker than requested");
        }
        // The child joins the v1 hierarchies itself (`self_attach_files`). It was born in the
        // v2 directory unless this host's could not be used for CLONE_INTO_CGROUP; then it is
        // moved there now (attaching it to v1 as well is harmless).
        if !self.cloned_into_v2.get() && cg.v2_dir_fd().is_some() {
            cg.attach(child_pid).map_err(|e| ("joining the ISC's cgroup", e.to_string()))?;
        }
        Ok(())
    }

    fn self_attach_files(&self) -> Vec<PathBuf> {
        self.cgroup.as_ref().map(|c| c.v1_task_files()).unwrap_or_default()
    }

    fn exit_reason(&mut self) -> Option<String> {
        self.end_events();
        self.end_events.as_ref().and_then(|ev| exit_reason(ev, &self.limits))
    }

    fn limit_events(&mut self) -> Option<serde_json::Value> {
        let cpu_limit = self.limits.cpu_quota;
        let ev = self.end_events()?;
        Some(serde_json::json!({
            "oom_kills": ev.oom_kills,
            "pids_max_hits": ev.pids_max_hits,
            "cpu_periods": ev.cpu_periods,
            "cpu_throttled_periods": ev.throttled_periods,
            "cpu_throttled_ms": ev.throttled_usec / 1000,
            "cpu_limit_cores": cpu_limit,
        }))
    }

    fn init_gone(&mut self) {
        // The counters are read (the exit record is built before this): removal may begin.
        self.teardown = Some(self.teardown_in_background());
    }

    fn can_hibernate(&self) -> bool {
        self.cgroup.is_some() && self.teardown.is_none()
    }

    /// The cgroup is found again by its name; only the start lock's descriptor is kept.
    fn suspend(&mut self) -> isc_engine::monitor_hibernate::Suspended {
        let lock = self._starting.lock();
        let kept =
            isc_engine::monitor_hibernate::KeptLock { path: lock.path().into(), fd: lock.fd() };
        isc_engine::monitor_hibernate::Suspended {
            keep: vec![kept.fd],
            state: serde_json::to_value(kept).expect("a path and a number serialize"),
            ..Default::default()
        }
    }

    fn clone_into_cgroup(&self) -> Option<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd;
        let fd = self.cgroup.as_ref()?.v2_dir_fd().map(|fd| fd.as_raw_fd());
        self.cloned_into_v2.set(fd.is_some());
        fd
    }
}

fn destroy(cg: Box<dyn isc_cgroup::IscCgroup>) {
    let name = cg.name().to_string();
    if let Err(e) = cg.destroy() {
        tracing::error!(cgroup = %name, error = %e, "removing the ISC's cgroup");
    }
}

impl Drop for CgroupHooks {
    fn drop(&mut self) {
        if let Some(t) = self.teardown.take() {
            t.join();
        }
        if let Some(cg) = self.cgroup.take() {
            destroy(cg);
        }
    }
}
