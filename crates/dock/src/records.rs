//! The Dock's persistent state: one JSON file per ISC, written by atomic rename.
//!
//! Why JSON files and not SQLite: the Dock is the only writer, records are small (< 2 KiB) and
//! few (hundreds), every change rewrites one record, and a crash must leave either the old or
//! the new record — which write-temp + fsync + rename gives without a C build of SQLite
//! (~40 s on two cores) or a schema. `<root>/dock/`:
//!
//! ```text
//! iscs/<name>.json        IscRecord: desired state, status, restarts, last exit
//! manifests/<name>.toml   the manifest as admitted (defaults written out, paths absolute)
//! exits/<name>.json       ExitInfo written by the detached monitor when its ISC ends
//! logs/<name>/output.log  the service's stdout+stderr (rotated: output.log.1 …)
//! logs/<name>/monitor.log the monitor's own stderr
//! ```

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error(
        "Dock state {path}: {source}; fix: check permissions and free space under the isc root"
    )]
    Io { path: PathBuf, source: io::Error },
    #[error("Dock state file {path} is corrupt ({detail}); fix: remove it to forget that ISC")]
    Corrupt { path: PathBuf, detail: String },
}

/// Milliseconds since the epoch.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Where the Dock keeps its files.
#[derive(Debug, Clone)]
pub struct Paths {
    /// `<root>/dock`.
    pub dock: PathBuf,
}

impl Paths {
    pub fn new(root: &Path) -> Paths {
        Paths { dock: root.join("dock") }
    }
    pub fn record(&self, name: &str) -> PathBuf {
        self.dock.join("iscs").join(format!("{name}.json"))
    }
    pub fn manifest(&self, name: &str) -> PathBuf {
        self.dock.join("manifests").join(format!("{name}.toml"))
    }
    pub fn exit(&self, name: &str) -> PathBuf {
        self.dock.join("exits").join(format!("{name}.json"))
    }
    pub fn log_dir(&self, name: &str) -> PathBuf {
        self.dock.join("logs").join(name)
    }
    /// Creates the directories (0700: records name ISCs and their manifests).
    pub fn create(&self) -> Result<(), RecordError> {
        for d in ["iscs", "manifests", "exits", "logs"] {
            let p = self.dock.join(d);
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&p)
                .map_err(|source| RecordError::Io { path: p, source })?;
        }
        Ok(())
    }
    /// Everything the Dock holds about `name` (not the running ISC's engine state).
    pub fn remove_all(&self, name: &str) -> Result<(), RecordError> {
        for p in [self.record(name), self.manifest(name), self.exit(name)] {
            match fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => return Err(RecordError::Io { path: p, source }),
            }
        }
        let logs = self.log_dir(name);
        match fs::remove_dir_all(&logs) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(RecordError::Io { path: logs, source }),
        }
    }
}

/// Writes `bytes` to `path` atomically: temp file in the same directory, fsync, rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), RecordError> {
    let err = |source| RecordError::Io { path: path.into(), source };
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp).map_err(err)?;
    f.write_all(bytes).map_err(err)?;
    f.sync_all().map_err(err)?;
    fs::rename(&tmp, path).map_err(err)
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Option<T>, RecordError> {
    match fs::read(path) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| RecordError::Corrupt { path: path.into(), detail: e.to_string() }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(RecordError::Io { path: path.into(), source }),
    }
}

/// What the operator wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Desired {
    Running,
    Stopped,
}

/// What the ISC is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    /// A monitor was spawned; the service does not run yet.
    Starting,
    Running,
    /// Waiting out the back-off before a restart.
    Backoff,
    /// Restarted too often in a row; left down until an operator starts it.
    CrashLoop,
    /// Ended and not restarted (restart policy, or asked to stop).
    Exited,
    /// The last start failed before the service ran.
    Failed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Starting => "starting",
            Status::Running => "running",
            Status::Backoff => "backoff",
            Status::CrashLoop => "crash-loop",
            Status::Exited => "exited",
            Status::Failed => "failed",
        }
    }
    /// Holds (or is about to hold) resources.
    pub fn is_active(self) -> bool {
        matches!(self, Status::Starting | Status::Running | Status::Backoff)
    }
}

/// How one run of an ISC ended, written by its monitor to `exits/<name>.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitInfo {
    /// The run this record belongs to (the Dock's counter, passed to the monitor).
    pub run_id: u64,
    pub code: Option<i32>,
    pub signal: Option<i32>,
    /// The exit code, or 128 + signal; 125 when the start failed.
    pub status: i32,
    pub run_ms: u64,
    pub ended_ms: u64,
    /// Why, when the kernel or the start path said (OOM kill, a failed start step).
    pub reason: Option<String>,
    /// The start failed before the service ran.
    pub start_failed: bool,
}

impl ExitInfo {
    /// The record of a monitor that vanished without writing one (killed, crashed).
    pub fn vanished(run_id: u64) -> ExitInfo {
        ExitInfo {
            run_id,
            code: None,
            signal: None,
            status: 255,
            run_ms: 0,
            ended_ms: now_ms(),
            reason: Some("the ISC's monitor ended without an exit record (killed?)".into()),
            start_failed: false,
        }
    }

    /// Reads the exit record of `name` if it belongs to `run_id`.
    pub fn read(paths: &Paths, name: &str, run_id: u64) -> Result<Option<ExitInfo>, RecordError> {
        Ok(read_json::<ExitInfo>(&paths.exit(name))?.filter(|e| e.run_id == run_id))
    }

    pub fn write(&self, path: &Path) -> Result<(), RecordError> {
        write_atomic(path, &serde_json::to_vec_pretty(self).expect("exit info serializes"))
    }
}

/// What the Dock knows and keeps about one ISC.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IscRecord {
    pub name: String,
    /// `never`, `on-failure` or `always`.
    pub restart: String,
    pub memory_limit: Option<u64>,
    pub cpu_quota: Option<f64>,
    pub manifest_hash: String,
    pub desired: Desired,
    pub status: Status,
    /// Increments on every start; matches `ExitInfo::run_id`.
    pub run_id: u64,
    pub monitor_pid: Option<i32>,
    pub host_uid_base: Option<u32>,
    pub created_ms: u64,
    pub started_ms: Option<u64>,
    /// Restarts done by the supervisor (not by an operator).
    pub restarts: u32,
    /// Quick failures in a row (see `RestartConfig::healthy_after_ms`).
    pub failures: u32,
    pub last_exit: Option<ExitInfo>,
    /// Why the last start failed, or why the ISC is in its state.
    pub message: Option<String>,
    /// The Dock's health check of this ISC, if it was given one.
    #[serde(default)]
    pub health: Option<crate::health::HealthCheck>,
    /// Runs ended because their health check failed.
    #[serde(default)]
    pub health_failures: u32,
    /// What the health check says of the current (or last) run; none without a check.
    #[serde(default)]
    pub health_state: Option<crate::health::HealthState>,
}

impl IscRecord {
    pub fn save(&self, paths: &Paths) -> Result<(), RecordError> {
        write_atomic(
            &paths.record(&self.name),
            &serde_json::to_vec_pretty(self).expect("record serializes"),
        )
    }

    /// All records, sorted by name.
    pub fn load_all(paths: &Paths) -> Result<Vec<IscRecord>, RecordError> {
        let dir = paths.dock.join("iscs");
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(vec![]),
            Err(source) => return Err(RecordError::Io { path: dir, source }),
        };
        let mut out = vec![];
        for e in rd.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "json") {
                if let Some(r) = read_json::<IscRecord>(&p)? {
                    out.push(r);
                }
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }
}

/// What the Dock asks a detached monitor (`isc dock monitor --request JSON`) to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MonitorRequest {
    pub name: String,
    pub run_id: u64,
    pub manifest: PathBuf,
    pub exit_file: PathBuf,
    pub log_dir: PathBuf,
    pub log_max_bytes: u64,
    pub log_keep: u32,
    pub uid_base: u32,
    pub uid_slots: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_exit_records_match_their_run() {
        let d = tempfile::tempdir().unwrap();
        let paths = Paths::new(d.path());
        paths.create().unwrap();
        let rec = IscRecord {
            name: "web".into(),
            restart: "always".into(),
            memory_limit: Some(1 << 20),
            cpu_quota: None,
            manifest_hash: "h".into(),
            desired: Desired::Running,
            status: Status::Running,
            run_id: 3,
            monitor_pid: Some(42),
            host_uid_base: Some(7),
            created_ms: 1,
            started_ms: Some(2),
            restarts: 1,
            failures: 0,
            last_exit: None,
            message: None,
            health: None,
            health_failures: 0,
            health_state: None,
        };
        rec.save(&paths).unwrap();
        assert_eq!(IscRecord::load_all(&paths).unwrap(), vec![rec]);
        let mut e = ExitInfo::vanished(2);
        e.write(&paths.exit("web")).unwrap();
        assert_eq!(ExitInfo::read(&paths, "web", 3).unwrap(), None, "an older run's record");
        e.run_id = 3;
        e.write(&paths.exit("web")).unwrap();
        assert_eq!(ExitInfo::read(&paths, "web", 3).unwrap(), Some(e));
        fs::create_dir_all(paths.log_dir("web")).unwrap();
        paths.remove_all("web").unwrap();
        for sub in ["iscs", "manifests", "exits", "logs"] {
            assert_eq!(fs::read_dir(paths.dock.join(sub)).unwrap().count(), 0, "{sub}");
        }
    }
}
