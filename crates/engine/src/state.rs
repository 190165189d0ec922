//! The runtime registry: one directory per running ISC under the state dir (`/run/isc` by
//! default) with its `state.json` and the monitor's control socket, and one lock file per name
//! held by the monitor for the ISC's life, so names are unique and a crashed monitor's entry is
//! recognisably stale (its flock is gone).

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state directory {path}: {source}; fix: run as root or pass --state DIR")]
    Dir { path: PathBuf, source: io::Error },
    #[error("an ISC named `{name}` is already running (monitor pid {monitor}); fix: stop it or choose another name")]
    NameTaken { name: String, monitor: i32 },
    #[error("control socket {path}: {source}")]
    Socket { path: PathBuf, source: io::Error },
    #[error("no running ISC named `{0}`; fix: `isc ps` lists the running ones")]
    NotRunning(String),
    #[error("talking to the monitor of `{name}`: {source}")]
    Request { name: String, source: io::Error },
    #[error("state file {path}: {detail}")]
    Corrupt { path: PathBuf, detail: String },
}

/// What `isc ps` and `isc verify NAME` learn about a running ISC.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct IscState {
    pub name: String,
    pub monitor_pid: i32,
    pub init_pid: i32,
    pub service_pid: i32,
    pub host_uid_base: u32,
    pub image_id: String,
    pub rootfs: PathBuf,
    pub started_unix_ms: u128,
    pub spec_hash: String,
    /// The validated manifest as JSON, when the launcher provided it (`isc verify` reads the
    /// declared configuration from here: its C evidence).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest: Option<serde_json::Value>,
}

fn mkdir_private(path: &Path) -> Result<(), StateError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|source| StateError::Dir { path: path.into(), source })
}

fn try_lock(file: &File, exclusive: bool) -> bool {
    let op = if exclusive { libc::LOCK_EX } else { libc::LOCK_SH };
    // SAFETY: flock(2) on an fd we own.
    unsafe { libc::flock(file.as_raw_fd(), op | libc::LOCK_NB) == 0 }
}

/// An exclusive flock(2) on a file that exists only while it is held, so a start leaves no
/// lock files behind. Taking it checks that the locked inode is still the one at its path (the
/// previous holder unlinks it just before letting go, and a waiter that opened it earlier must
/// not hold a lock on a file nobody else can find); letting go unlinks it, then unlocks.
#[derive(Debug)]
pub struct LockFile {
    path: PathBuf,
    _file: File,
}

impl LockFile {
    /// `Ok(None)` when another process holds it.
    pub fn try_acquire(path: &Path) -> io::Result<Option<LockFile>> {
        use std::os::unix::fs::MetadataExt;
        loop {
            let file = OpenOptions::new().create(true).truncate(false).write(true).open(path)?;
            if !try_lock(&file, true) {
                return Ok(None);
            }
            let held = file.metadata()?;
            match fs::metadata(path) {
                Ok(now) if now.ino() == held.ino() && now.dev() == held.dev() => {
                    return Ok(Some(LockFile { path: path.to_owned(), _file: file }));
                }
                // Unlinked (and maybe re-created) by the holder we waited for: try again.
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

impl LockFile {
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn fd(&self) -> std::os::fd::RawFd {
        self._file.as_raw_fd()
    }

    /// The lock a previous image of this process held (a woken monitor's): the flock belongs
    /// to the open file, which the exec kept.
    pub fn adopt(path: PathBuf, file: File) -> LockFile {
        LockFile { path, _file: file }
    }
}

impl Drop for LockFile {
    fn drop(&mut self) {
        // Unlinked while still locked; the lock goes when `_file` closes right after.
        let _ = fs::remove_file(&self.path);
    }
}

/// A running ISC's registration; removing it (Drop) deletes its directory.
pub struct Registration {
    dir: PathBuf,
    _lock: LockFile,
    pub listener: UnixListener,
}

impl Registration {
    /// Claims `name`; removes a stale entry of a dead monitor first.
    pub fn claim(state_dir: &Path, name: &str) -> Result<Self, StateError> {
        let locks = state_dir.join("locks");
        let iscs = state_dir.join("isc");
        mkdir_private(&locks)?;
        mkdir_private(&iscs)?;
        let lock_path = locks.join(format!("{name}.lock"));
        let dir = iscs.join(name);
        let Some(lock) = LockFile::try_acquire(&lock_path)
            .map_err(|source| StateError::Dir { path: lock_path.clone(), source })?
        else {
            let monitor = read_state(&dir).map(|s| s.monitor_pid).unwrap_or(-1);
            return Err(StateError::NameTaken { name: name.into(), monitor });
        };
        if dir.exists() {
            tracing::info!(isc = name, dir = %dir.display(), "removing the stale entry of a dead monitor");
            let _ = fs::remove_dir_all(&dir);
        }
        mkdir_private(&dir)?;
        let sock = dir.join("control.sock");
        let listener = UnixListener::bind(&sock)
            .map_err(|source| StateError::Socket { path: sock.clone(), source })?;
        fs::set_permissions(&sock, fs::Permissions::from_mode(0o600))
            .map_err(|source| StateError::Socket { path: sock.clone(), source })?;
        listener
            .set_nonblocking(true)
            .map_err(|source| StateError::Socket { path: sock.clone(), source })?;
        Ok(Self { dir, _lock: lock, listener })
    }

    /// Writes `state.json` atomically.
    pub fn publish(&self, state: &IscState) -> Result<(), StateError> {
        let path = self.dir.join("state.json");
        let tmp = self.dir.join(".state.json.tmp");
        let bytes = serde_json::to_vec_pretty(state).expect("state serializes");
        fs::write(&tmp, bytes)
            .and_then(|_| fs::rename(&tmp, &path))
            .map_err(|source| StateError::Dir { path, source })
    }

    /// The published state.
    pub fn read(&self) -> Result<IscState, StateError> {
        read_state(&self.dir)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Its directory, name lock and control socket's descriptor, for a hibernating monitor.
    pub fn kept(&self) -> (PathBuf, &LockFile, std::os::fd::RawFd) {
        (self.dir.clone(), &self._lock, self.listener.as_raw_fd())
    }

    /// The registration a previous image of this process held (a woken monitor's).
    pub fn adopt(dir: PathBuf, lock: LockFile, listener: std::os::fd::OwnedFd) -> Registration {
        Registration { dir, _lock: lock, listener: UnixListener::from(listener) }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            tracing::warn!(dir = %self.dir.display(), error = %e, "removing the ISC's state directory");
        }
    }
}

fn read_state(dir: &Path) -> Result<IscState, StateError> {
    let path = dir.join("state.json");
    let bytes = fs::read(&path).map_err(|source| StateError::Dir { path: path.clone(), source })?;
    serde_json::from_slice(&bytes).map_err(|e| StateError::Corrupt { path, detail: e.to_string() })
}

/// Is `name`'s lock held by a live monitor?
pub fn is_running(state_dir: &Path, name: &str) -> bool {
    match File::open(state_dir.join("locks").join(format!("{name}.lock"))) {
        Ok(f) => !try_lock(&f, false),
        Err(_) => false,
    }
}

/// Running ISCs, sorted by name. Entries of dead monitors are skipped.
pub fn list(state_dir: &Path) -> Result<Vec<IscState>, StateError> {
    let iscs = state_dir.join("isc");
    let rd = match fs::read_dir(&iscs) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(vec![]),
        Err(source) => return Err(StateError::Dir { path: iscs, source }),
    };
    let mut out = vec![];
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if is_running(state_dir, &name) {
            if let Ok(s) = read_state(&e.path()) {
                out.push(s);
            }
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Held by a launcher from before it creates anything for `name` (cgroups) until its monitor
/// has claimed the name, so a concurrent start never collects a starting ISC as stale.
pub struct StartingLock(#[allow(dead_code)] LockFile);

impl StartingLock {
    pub fn lock(&self) -> &LockFile {
        &self.0
    }

    /// The lock a previous image of this process held (a woken monitor's).
    pub fn adopt(lock: LockFile) -> StartingLock {
        StartingLock(lock)
    }

    pub fn take(state_dir: &Path, name: &str) -> Result<Self, StateError> {
        let locks = state_dir.join("locks");
        mkdir_private(&locks)?;
        let path = locks.join(format!("{name}.starting"));
        match LockFile::try_acquire(&path) {
            Ok(Some(l)) => Ok(Self(l)),
            Ok(None) => Err(StateError::NameTaken { name: name.into(), monitor: -1 }),
            Err(source) => Err(StateError::Dir { path, source }),
        }
    }
}

/// Is an ISC named `name` running or being started by a live process?
pub fn is_alive(state_dir: &Path, name: &str) -> bool {
    if is_running(state_dir, name) {
        return true;
    }
    match File::open(state_dir.join("locks").join(format!("{name}.starting"))) {
        Ok(f) => !try_lock(&f, false),
        Err(_) => false,
    }
}

/// Removes the registry entries of ISCs whose monitor died (SIGKILL, crash): their lock is
/// free but their directory is still there. Returns the names removed.
pub fn collect_stale(state_dir: &Path) -> Vec<String> {
    let Ok(rd) = fs::read_dir(state_dir.join("isc")) else { return vec![] };
    let mut removed = vec![];
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !is_running(state_dir, &name) && fs::remove_dir_all(e.path()).is_ok() {
            tracing::info!(isc = %name, "removed the registry entry of a dead monitor");
            removed.push(name);
        }
    }
    removed
}

/// The state of one running ISC.
pub fn get(state_dir: &Path, name: &str) -> Result<IscState, StateError> {
    if !is_running(state_dir, name) {
        return Err(StateError::NotRunning(name.into()));
    }
    read_state(&state_dir.join("isc").join(name))
}

/// The file beside a running ISC's state that holds its last `isc verify` summary; it goes
/// with the ISC's state directory when the ISC ends.
pub const VERIFY_FILE: &str = "verify.json";

/// Keeps `summary` (the last verify result: exposure, label, pass, time) beside the state of
/// the running ISC `name`, for the Dock's metrics and `isc ps`-like readers.
pub fn record_verify(
    state_dir: &Path,
    name: &str,
    summary: &serde_json::Value,
) -> Result<(), StateError> {
    get(state_dir, name)?;
    let dir = state_dir.join("isc").join(name);
    let path = dir.join(VERIFY_FILE);
    let tmp = dir.join(format!(".{VERIFY_FILE}.tmp"));
    fs::write(&tmp, serde_json::to_vec(summary).expect("json value serializes"))
        .and_then(|_| fs::rename(&tmp, &path))
        .map_err(|source| StateError::Dir { path, source })
}

/// The last verify summary recorded for the running ISC `name`, if any.
pub fn last_verify(state_dir: &Path, name: &str) -> Option<serde_json::Value> {
    let bytes = fs::read(state_dir.join("isc").join(name).join(VERIFY_FILE)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// A request to a monitor's control socket: one JSON line out, one JSON line back.
pub fn request(
    state_dir: &Path,
    name: &str,
    req: &ControlRequest,
    timeout: Duration,
) -> Result<ControlResponse, StateError> {
    if !is_running(state_dir, name) {
        return Err(StateError::NotRunning(name.into()));
    }
    let err = |source| StateError::Request { name: name.into(), source };
    let mut s =
        UnixStream::connect(state_dir.join("isc").join(name).join("control.sock")).map_err(err)?;
    s.set_read_timeout(Some(timeout)).map_err(err)?;
    let mut line = serde_json::to_vec(req).expect("request serializes");
    line.push(b'\n');
    s.write_all(&line).map_err(err)?;
    let mut resp = String::new();
    BufReader::new(s).read_line(&mut resp).map_err(err)?;
    serde_json::from_str(&resp).map_err(|e| err(io::Error::new(io::ErrorKind::InvalidData, e)))
}

/// Requests on a monitor's control socket.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ControlRequest {
    State,
    /// Run probes from inside the live confinement (forked by PID 1).
    Probe {
        names: Vec<String>,
    },
    Stop,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum ControlResponse {
    State { state: IscState },
    Probes { outcomes: Vec<crate::probe::ProbeOutcome> },
    Stopping,
    Error { message: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(name: &str) -> IscState {
        IscState {
            name: name.into(),
            monitor_pid: std::process::id() as i32,
            init_pid: 1,
            service_pid: 2,
            host_uid_base: 7,
            image_id: "img".into(),
            rootfs: "/r".into(),
            started_unix_ms: 1,
            spec_hash: "h".into(),
            manifest: None,
        }
    }

    #[test]
    fn names_are_unique_while_held_and_entries_vanish_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let reg = Registration::claim(dir.path(), "web").unwrap();
        reg.publish(&state("web")).unwrap();
        let e = Registration::claim(dir.path(), "web").err().unwrap();
        assert!(
            matches!(e, StateError::NameTaken { ref name, monitor } if name == "web" && monitor == std::process::id() as i32)
        );
        assert_eq!(list(dir.path()).unwrap(), vec![state("web")]);
        let sock = reg.dir().join("control.sock");
        assert_eq!(fs::metadata(&sock).unwrap().permissions().mode() & 0o777, 0o600);
        drop(reg);
        assert!(list(dir.path()).unwrap().is_empty());
        assert!(matches!(get(dir.path(), "web"), Err(StateError::NotRunning(_))));
        assert!(!dir.path().join("isc/web").exists());
        assert!(!dir.path().join("locks/web.lock").exists(), "no lock file is left behind");
    }

    #[test]
    fn a_lock_taken_through_an_unlinked_inode_is_not_held() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.lock");
        let first = LockFile::try_acquire(&path).unwrap().unwrap();
        // A waiter that opened the file before the holder let go…
        let stale = OpenOptions::new().write(true).open(&path).unwrap();
        drop(first);
        assert!(!path.exists(), "released: unlinked");
        // …could lock that inode now, but it guards nothing: a new holder gets a fresh file,
        // and a second one is refused on it.
        assert!(try_lock(&stale, true), "the old inode is lockable");
        let second =
            LockFile::try_acquire(&path).unwrap().expect("a fresh file, not the old inode");
        assert!(LockFile::try_acquire(&path).unwrap().is_none(), "held: refused");
        drop(second);
        assert!(!path.exists());
    }

    #[test]
    fn a_stale_entry_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("isc/old")).unwrap();
        fs::write(dir.path().join("isc/old/state.json"), b"{}").unwrap();
        assert!(list(dir.path()).unwrap().is_empty(), "no lock held: not running");
        let reg = Registration::claim(dir.path(), "old").unwrap();
        assert!(!reg.dir().join("state.json").exists());
    }
}
