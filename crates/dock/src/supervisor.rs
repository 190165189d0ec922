//! The Dock's core: the ISCs it owns, their lifecycle (a run's end, health verdicts and the
//! restart policy with exponential back-off and crash-loop detection are in `lifecycle`),
//! re-adoption after a Dock restart, and the resource guard.
//!
//! State lives in a `BTreeMap` under a std mutex that is never held across an await; every
//! change is persisted (records.rs) before it is announced. Each start gets a new `run_id`
//! (passed to the monitor, echoed in its exit record) and every operator action bumps `op`, so a
//! late exit or a pending back-off timer of an older run cannot act on a newer one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use isc_engine::state::{self, ControlRequest};
use isc_manifest::Manifest;
use serde_json::json;

use crate::config::DockConfig;
use crate::events::Events;
use crate::guard;
use crate::health::{HealthCheck, HealthState};
use crate::process::{self, Launcher};
use crate::records::{
    now_ms, Desired, ExitInfo, IscRecord, MonitorRequest, Paths, RecordError, Status,
};

mod lifecycle;

/// Errors of Dock operations; each maps to one HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum DockError {
    #[error("no ISC named `{0}` on this Dock; fix: `isc dock ps` lists them")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    OverCommit(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("starting `{name}` failed: {message}")]
    StartFailed { name: String, message: String },
    #[error(transparent)]
    Record(#[from] RecordError),
    #[error("{0}")]
    Internal(String),
}

impl DockError {
    /// The HTTP status of this error.
    pub fn status(&self) -> u16 {
        match self {
            DockError::NotFound(_) => 404,
            DockError::Conflict(_) | DockError::OverCommit(_) => 409,
            DockError::BadRequest(_) => 400,
            DockError::StartFailed { .. } => 422,
            DockError::Record(_) | DockError::Internal(_) => 500,
        }
    }
}

struct Slot {
    rec: IscRecord,
    /// Bumped by every operator action (stop, start, rm) to cancel pending restarts.
    op: u64,
    /// The run its health check ended: its exit is a failure whatever its status.
    unhealthy_run: Option<u64>,
    /// OOM kills already reported by `oom` events: (run, count).
    oom_kills: Option<(u64, u64)>,
}

/// Settings the CLI passes in.
pub struct DockOptions {
    pub root: PathBuf,
    pub state: PathBuf,
    /// The cgroup scope of ISCs of this state dir (`isc_cgroup::scoped_dir_name`; metrics).
    pub cgroup_scope: Option<String>,
    pub config: DockConfig,
}

/// The Dock.
pub struct Dock {
    pub cfg: DockConfig,
    pub paths: Paths,
    pub state_dir: PathBuf,
    pub cgroup_scope: Option<String>,
    pub events: Arc<Events>,
    launcher: Box<dyn Launcher>,
    slots: Mutex<BTreeMap<String, Slot>>,
}

/// Parses manifest text sent by a client and checks its health check against it.
pub fn parse_manifest(
    text: &str,
    origin: &Path,
    health: Option<&HealthCheck>,
) -> Result<Manifest, DockError> {
    let manifest = Manifest::parse(text, origin)
        .map_err(|e| DockError::BadRequest(format!("manifest {}: {e}", origin.display())))?;
    if let Some(h) = health {
        h.validate(&manifest)?;
    }
    Ok(manifest)
}

fn stopped_or_missing(e: &state::StateError) -> bool {
    matches!(e, state::StateError::NotRunning(_))
}

impl Dock {
    /// Opens the Dock's state (creating its directories) and loads its records. Call
    /// [`Dock::adopt`] next.
    pub fn open(
        opts: DockOptions,
        launcher: Box<dyn Launcher>,
        events: Arc<Events>,
    ) -> Result<Arc<Dock>, DockError> {
        let paths = Paths::new(&opts.root);
        paths.create()?;
        let slots = IscRecord::load_all(&paths)?
            .into_iter()
            .map(|rec| {
                (rec.name.clone(), Slot { rec, op: 0, unhealthy_run: None, oom_kills: None })
            })
            .collect();
        Ok(Arc::new(Dock {
            cfg: opts.config,
            paths,
            state_dir: opts.state,
            cgroup_scope: opts.cgroup_scope,
            events,
            launcher,
            slots: Mutex::new(slots),
        }))
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Slot>> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A snapshot of every record.
    pub fn list(&self) -> Vec<IscRecord> {
        self.lock().values().map(|s| s.rec.clone()).collect()
    }

    /// One record.
    pub fn get(&self, name: &str) -> Result<IscRecord, DockError> {
        self.lock().get(name).map(|s| s.rec.clone()).ok_or_else(|| DockError::NotFound(name.into()))
    }

    /// Re-adopts ISCs whose monitors survived a Dock restart, and records how the others ended
    /// while the Dock was down (restarting them if their policy says so).
    pub fn adopt(self: &Arc<Self>) {
        let names: Vec<String> = self.lock().keys().cloned().collect();
        for name in names {
            let (status, run_id) = match self.lock().get(&name) {
                Some(s) => (s.rec.status, s.rec.run_id),
                None => continue,
            };
            if !status.is_active() {
                continue;
            }
            let alive = state::get(&self.state_dir, &name)
                .ok()
                .and_then(|st| process::pidfd_open(st.monitor_pid).ok().map(|fd| (st, fd)));
            match alive {
                Some((st, pidfd)) if status != Status::Backoff => {
                    {
                        let mut map = self.lock();
                        let Some(slot) = map.get_mut(&name) else { continue };
                        slot.rec.status = Status::Running;
                        slot.rec.monitor_pid = Some(st.monitor_pid);
                        slot.rec.host_uid_base = Some(st.host_uid_base);
                        self.save(&slot.rec);
                    }
                    self.events.emit(&name, "adopted", json!({"monitor_pid": st.monitor_pid}));
                    if let Some(check) = self.get(&name).ok().and_then(|r| r.health) {
                        self.watch_health(name.clone(), run_id, check);
                    }
                    self.watch(name, run_id, pidfd);
                }
                // The engine's entry is gone but the monitor still writes its exit record.
                None if status != Status::Backoff
                    && self.lock().get(&name).and_then(|s| s.rec.monitor_pid).is_some_and(
                        |pid| process::monitor_alive(pid, &name, run_id).is_some(),
                    ) =>
                {
                    let pid = self.lock().get(&name).and_then(|s| s.rec.monitor_pid).unwrap_or(0);
                    if let Some(fd) = process::monitor_alive(pid, &name, run_id) {
                        self.watch(name, run_id, fd);
                    }
                }
                _ if status == Status::Backoff => {
                    let failures = self.lock().get(&name).map_or(1, |s| s.rec.failures);
                    self.schedule_restart(&name, self.cfg.restart.backoff(failures));
                }
                _ => {
                    let exit = ExitInfo::read(&self.paths, &name, run_id)
                        .ok()
                        .flatten()
                        .unwrap_or_else(|| ExitInfo::vanished(run_id));
                    self.on_exit(&name, exit);
                }
            }
        }
    }

    fn save(&self, rec: &IscRecord) {
        if let Err(e) = rec.save(&self.paths) {
            tracing::error!(isc = %rec.name, error = %e, "persisting the ISC's record");
        }
    }

    /// Admits a new ISC from manifest text and starts it. `origin` is the manifest's path on
    /// the client (relative image paths are resolved against its directory).
    pub async fn up(
        self: &Arc<Self>,
        text: &str,
        origin: &Path,
        health: Option<HealthCheck>,
    ) -> Result<IscRecord, DockError> {
        let manifest = parse_manifest(text, origin, health.as_ref())?;
        let strangers: Vec<String> = {
            let map = self.lock();
            manifest
                .network
                .iter()
                .flat_map(|n| &n.allow_from)
                .filter(|peer| !map.contains_key(*peer))
                .cloned()
                .collect()
        };
        let rec = self.up_parsed(&manifest, health).await?;
        if strangers.is_empty() {
            return Ok(rec);
        }
        // Not refused (two ISCs that allow each other are brought up one after the other),
        // but said: a misspelt name lets nothing in, and nothing else would tell.
        let message = format!(
            "allow_from names {}, not on this Dock: nothing from there is let in until an ISC of that name runs here",
            strangers.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")
        );
        tracing::warn!(isc = %manifest.name, %message);
        self.events.emit(&manifest.name, "warning", json!({"message": message}));
        let mut map = self.lock();
        let Some(slot) = map.get_mut(&manifest.name) else { return Ok(rec) };
        if slot.rec.message.is_none() {
            slot.rec.message = Some(message);
            self.save(&slot.rec);
        }
        Ok(slot.rec.clone())
    }

    /// [`Dock::up`] of a parsed manifest.
    pub async fn up_parsed(
        self: &Arc<Self>,
        manifest: &Manifest,
        health: Option<HealthCheck>,
    ) -> Result<IscRecord, DockError> {
        let name = manifest.name.clone();
        let req = {
            let mut map = self.lock();
            if let Some(s) = map.get(&name) {
                return Err(DockError::Conflict(format!(
                    "an ISC named `{name}` is already on this Dock (status {}); fix: `isc dock rm {name}` first or choose another name",
                    s.rec.status.as_str()
                )));
            }
            let rec = IscRecord {
                name: name.clone(),
                restart: manifest.service.restart.as_str().into(),
                memory_limit: manifest.resources.memory,
                cpu_quota: manifest.resources.cpu,
                manifest_hash: manifest.canonical_hash(),
                desired: Desired::Running,
                status: Status::Exited,
                run_id: 0,
                monitor_pid: None,
                host_uid_base: None,
                created_ms: now_ms(),
                started_ms: None,
                restarts: 0,
                failures: 0,
                last_exit: None,
                message: None,
                health,
                health_failures: 0,
                health_state: None,
            };
            guard::admit(&self.cfg.resources, map.values().map(|s| &s.rec), &rec)
                .map_err(DockError::OverCommit)?;
            crate::records::write_atomic(
                &self.paths.manifest(&name),
                manifest.to_toml_string().as_bytes(),
            )?;
            let mut slot = Slot { rec, op: 0, unhealthy_run: None, oom_kills: None };
            let req = self.begin_run(&mut slot, false);
            map.insert(name.clone(), slot);
            req
        };
        self.events.emit(&name, "created", json!({"manifest_hash": manifest.canonical_hash()}));
        self.launch(req).await
    }

    /// Replaces the manifest (and health check) of an ISC on this Dock: stops it, then starts
    /// the new one under the same name (record, restarts and logs kept; failure count reset).
    pub async fn replace(
        self: &Arc<Self>,
        manifest: &Manifest,
        health: Option<HealthCheck>,
    ) -> Result<IscRecord, DockError> {
        let name = manifest.name.as_str();
        self.stop(name).await?;
        let req = {
            let mut map = self.lock();
            let others: Vec<IscRecord> =
                map.values().filter(|s| s.rec.name != name).map(|s| s.rec.clone()).collect();
            let slot = map.get_mut(name).ok_or_else(|| DockError::NotFound(name.into()))?;
            if slot.rec.status.is_active() {
                return Err(DockError::Conflict(format!(
                    "`{name}` was started again while being replaced"
                )));
            }
            let mut rec = slot.rec.clone();
            rec.restart = manifest.service.restart.as_str().into();
            rec.memory_limit = manifest.resources.memory;
            rec.cpu_quota = manifest.resources.cpu;
            rec.manifest_hash = manifest.canonical_hash();
            rec.health = health;
            guard::admit(&self.cfg.resources, others.iter(), &rec)
                .map_err(DockError::OverCommit)?;
            crate::records::write_atomic(
                &self.paths.manifest(name),
                manifest.to_toml_string().as_bytes(),
            )?;
            slot.rec = rec;
            slot.op += 1;
            slot.rec.desired = Desired::Running;
            slot.rec.failures = 0;
            self.begin_run(slot, false)
        };
        self.events.emit(name, "replaced", json!({"manifest_hash": manifest.canonical_hash()}));
        self.launch(req).await
    }

    /// Starts a stopped, exited, failed or crash-looping ISC (resets its failure count).
    pub async fn start(self: &Arc<Self>, name: &str) -> Result<IscRecord, DockError> {
        let req = {
            let mut map = self.lock();
            let others: Vec<IscRecord> =
                map.values().filter(|s| s.rec.name != name).map(|s| s.rec.clone()).collect();
            let slot = map.get_mut(name).ok_or_else(|| DockError::NotFound(name.into()))?;
            if matches!(slot.rec.status, Status::Starting | Status::Running) {
                return Err(DockError::Conflict(format!("`{name}` is already running")));
            }
            guard::admit(&self.cfg.resources, others.iter(), &slot.rec)
                .map_err(DockError::OverCommit)?;
            slot.op += 1;
            slot.rec.desired = Desired::Running;
            slot.rec.failures = 0;
            self.begin_run(slot, false)
        };
        self.launch(req).await
    }

    /// Under the lock: a new run id, status `starting`, the monitor's instructions.
    fn begin_run(&self, slot: &mut Slot, supervised: bool) -> MonitorRequest {
        let rec = &mut slot.rec;
        rec.run_id += 1;
        rec.status = Status::Starting;
        rec.message = None;
        rec.monitor_pid = None;
        rec.health_state = rec.health.as_ref().map(|_| HealthState::Starting);
        if supervised {
            rec.restarts += 1;
        }
        self.save(rec);
        MonitorRequest {
            name: rec.name.clone(),
            run_id: rec.run_id,
            manifest: self.paths.manifest(&rec.name),
            exit_file: self.paths.exit(&rec.name),
            log_dir: self.paths.log_dir(&rec.name),
            log_max_bytes: self.cfg.logs.max_bytes,
            log_keep: self.cfg.logs.keep,
            uid_base: self.cfg.uid_base,
            uid_slots: self.cfg.uid_slots,
        }
    }

    /// Spawns the monitor and waits until the service runs, the start fails, or the run ends.
    /// Runs as its own task so a client that hangs up cannot leave the ISC in `starting`.
    async fn launch(self: &Arc<Self>, req: MonitorRequest) -> Result<IscRecord, DockError> {
        let dock = Arc::clone(self);
        tokio::spawn(async move { dock.launch_inner(req).await })
            .await
            .map_err(|e| DockError::Internal(format!("start task: {e}")))?
    }

    async fn launch_inner(self: &Arc<Self>, req: MonitorRequest) -> Result<IscRecord, DockError> {
        let name = req.name.clone();
        let _ = std::fs::remove_file(&req.exit_file);
        let spawned =
            self.launcher.spawn(&req).and_then(|pid| Ok((pid, process::pidfd_open(pid)?)));
        let (pid, pidfd) = match spawned {
            Ok(x) => x,
            Err(e) => {
                let message = format!("spawning its monitor: {e}");
                self.mark_failed(&name, req.run_id, &message);
                return Err(DockError::StartFailed { name, message });
            }
        };
        let kill_fd = pidfd.try_clone().map_err(|e| DockError::Internal(e.to_string()))?;
        self.watch(name.clone(), req.run_id, pidfd);
        let deadline = Instant::now() + Duration::from_secs(self.cfg.start_timeout_s);
        loop {
            {
                let mut map = self.lock();
                let Some(slot) = map.get_mut(&name) else {
                    return Err(DockError::NotFound(name));
                };
                if slot.rec.run_id != req.run_id {
                    return Ok(slot.rec.clone());
                }
                match slot.rec.status {
                    Status::Starting => {
                        if let Ok(st) = state::get(&self.state_dir, &name) {
                            if st.monitor_pid == pid {
                                slot.rec.status = Status::Running;
                                slot.rec.monitor_pid = Some(pid);
                                slot.rec.host_uid_base = Some(st.host_uid_base);
                                slot.rec.started_ms = Some(now_ms());
                                self.save(&slot.rec);
                                let rec = slot.rec.clone();
                                drop(map);
                                self.events.emit(
                                    &name,
                                    "started",
                                    json!({"run_id": rec.run_id, "monitor_pid": pid, "host_uid_base": st.host_uid_base}),
                                );
                                if let Some(check) = rec.health.clone() {
                                    self.watch_health(name.clone(), rec.run_id, check);
                                }
                                return Ok(rec);
                            }
                        }
                    }
                    Status::Failed => {
                        let message = slot.rec.message.clone().unwrap_or_default();
                        return Err(DockError::StartFailed { name, message });
                    }
                    _ => return Ok(slot.rec.clone()),
                }
            }
            if Instant::now() > deadline {
                let _ = process::signal(&kill_fd, libc::SIGTERM);
                return Err(DockError::StartFailed {
                    name,
                    message: format!(
                        "the service did not run within {} s (start_timeout_s in dock.toml); its monitor was asked to stop",
                        self.cfg.start_timeout_s
                    ),
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops an ISC (SIGTERM, SIGKILL after its stop timeout) and waits until it ended.
    pub async fn stop(self: &Arc<Self>, name: &str) -> Result<IscRecord, DockError> {
        {
            let mut map = self.lock();
            let slot = map.get_mut(name).ok_or_else(|| DockError::NotFound(name.into()))?;
            slot.op += 1;
            slot.rec.desired = Desired::Stopped;
            if slot.rec.status == Status::Backoff {
                slot.rec.status = Status::Exited;
                slot.rec.message = Some("stopped while waiting to restart".into());
            }
            self.save(&slot.rec);
        }
        self.events.emit(name, "stopping", json!({}));
        let deadline = Instant::now() + Duration::from_secs(300);
        let mut asked = false;
        loop {
            let rec = self.get(name)?;
            match rec.status {
                Status::Running if !asked => {
                    let (dir, n) = (self.state_dir.clone(), name.to_string());
                    let res = tokio::task::spawn_blocking(move || {
                        state::request(&dir, &n, &ControlRequest::Stop, Duration::from_secs(5))
                    })
                    .await
                    .map_err(|e| DockError::Internal(e.to_string()))?;
                    match res {
                        Ok(_) => asked = true,
                        Err(e) if stopped_or_missing(&e) => asked = true,
                        Err(e) => {
                            return Err(DockError::Internal(format!("stopping `{name}`: {e}")))
                        }
                    }
                }
                Status::Starting | Status::Running => {}
                _ => return Ok(rec),
            }
            if Instant::now() > deadline {
                return Err(DockError::Internal(format!("`{name}` did not stop within 300 s")));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops (if needed) and starts again.
    pub async fn restart(self: &Arc<Self>, name: &str) -> Result<IscRecord, DockError> {
        self.stop(name).await?;
        self.start(name).await
    }

    /// Stops the ISC and forgets it: record, manifest, exit record and logs. The engine removes
    /// its runtime state and cgroup when the monitor ends.
    pub async fn remove(self: &Arc<Self>, name: &str) -> Result<(), DockError> {
        self.stop(name).await?;
        {
            let mut map = self.lock();
            if map.get(name).is_some_and(|s| s.rec.status.is_active()) {
                return Err(DockError::Conflict(format!(
                    "`{name}` was started again while being removed"
                )));
            }
            map.remove(name);
            self.paths.remove_all(name)?;
        }
        self.events.emit(name, "removed", json!({}));
        Ok(())
    }
}
