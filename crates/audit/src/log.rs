//! `AuditLog`: the appender shared by threads and processes, with group commit, periodic signed
//! checkpoints, size rotation and a fail-closed state when the log cannot be written.

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use ed25519_dalek::VerifyingKey;
use serde_json::json;

use crate::error::AuditError;
use crate::keys::{open_signing_key, LazySigningKey};
use crate::pipeline::{lock, FailedState, Pipeline};
use crate::record::{format_time, Actor, Kind};
use crate::segment::{TornTail, LOCK_FILE};
use crate::writer::{load_active, DirLock, Failure, Handoff, Io, Request, SYNC_FAILED_MARKER};

/// When appended records reach stable storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// `append` returns after `fdatasync`; concurrent appenders share one write and one sync.
    #[default]
    Durable,
    /// `append` returns after `write`; a background thread syncs within this interval.
    Interval(Duration),
    /// Never sync (the page cache decides); for tests and benchmarks.
    None,
}

/// Settings of an audit log.
#[derive(Debug, Clone)]
pub struct AuditConfig {
    /// Directory holding the signing key (created on first use, 0600) and its public key.
    pub keys_dir: PathBuf,
    /// Sync policy.
    pub durability: Durability,
    /// Sign a checkpoint after this many uncovered records (0 disables the count trigger).
    pub checkpoint_every: u64,
    /// Sign a checkpoint when records have been uncovered this long (`None` disables).
    pub checkpoint_interval: Option<Duration>,
    /// Start a new file once the active one reaches this size (0 disables rotation).
    pub max_file_bytes: u64,
    /// `ensure_writable` fails when the filesystem has less free space than this.
    pub min_free_bytes: u64,
    /// Largest accepted encoded record.
    pub max_record_bytes: usize,
    /// Start the background thread (interval syncs, timed checkpoints) in `open`. A process
    /// that must stay single-threaded for a while (the engine's monitor until `clone3`) sets
    /// this false and calls [`AuditLog::start_ticker`] later; until then `Interval` records
    /// are synced only by `sync`, by a durable append, and on close.
    pub ticker_at_open: bool,
}

impl AuditConfig {
    /// Defaults: durable, checkpoint every 1000 records or 10 s, 64 MiB files, 1 MiB reserve,
    /// 256 KiB records.
    pub fn new(keys_dir: impl Into<PathBuf>) -> AuditConfig {
        AuditConfig {
            keys_dir: keys_dir.into(),
            durability: Durability::Durable,
            checkpoint_every: 1000,
            checkpoint_interval: Some(Duration::from_secs(10)),
            max_file_bytes: 64 << 20,
            min_free_bytes: 1 << 20,
            max_record_bytes: 256 << 10,
            ticker_at_open: true,
        }
    }
}

/// Counters of one `AuditLog` (this process only).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogStats {
    /// Batches committed (each under one lock, one `write`).
    pub commits: u64,
    /// Requests (records and explicit checkpoints) committed.
    pub requests: u64,
    /// `write(2)` calls.
    pub writes: u64,
    /// `fdatasync(2)` calls.
    pub syncs: u64,
    /// `fdatasync(2)` calls left to a child that outlives the process (`sync_detached`).
    pub detached_syncs: u64,
}

/// What `AuditLog::open` found.
#[derive(Debug, Clone)]
pub struct OpenReport {
    /// The file appends go to.
    pub active_file: PathBuf,
    /// Seq of the last record on disk (0 for a new log).
    pub last_seq: u64,
    /// Records not yet covered by a signed checkpoint (e.g. after a crash).
    pub uncovered_records: u64,
    /// An incomplete last line left by a crash (or truncation). It is left in place, byte for
    /// byte; appends continue in a new file whose `log_rotate` record names it.
    pub torn_tail: Option<TornTail>,
}

struct Inner {
    dir: PathBuf,
    cfg: AuditConfig,
    key: Arc<LazySigningKey>,
    io: Mutex<Io>,
    pipeline: Pipeline,
    tick: Condvar,
    /// When [`AuditLog::tick`] first saw the current kick (it then syncs `period` later).
    kicked_at: Mutex<Option<Instant>>,
    /// An eventfd written at every kick, for a caller that ticks the log from a loop of its
    /// own and sleeps until there is something to tick ([`AuditLog::wake_ticks_with`]).
    tick_waker: Mutex<Option<Arc<std::os::fd::OwnedFd>>>,
}

/// A tamper-evident audit log. `Sync`: share it by reference or `Arc` between threads. Several
/// processes may open the same directory: every batch is written under an `flock` of
/// `audit.lock`, after re-reading what the others appended.
pub struct AuditLog {
    inner: Arc<Inner>,
    ticker: Mutex<Option<JoinHandle<()>>>,
}

impl AuditLog {
    /// Opens (creating if needed) the log in `dir`, loading or creating the signing key.
    pub fn open(dir: &Path, cfg: AuditConfig) -> Result<(AuditLog, OpenReport), AuditError> {
        std::fs::create_dir_all(dir)
            .map_err(|source| AuditError::CreateDir { path: dir.to_owned(), source })?;
        let key = Arc::new(open_signing_key(&cfg.keys_dir)?);
        let lock_path = dir.join(LOCK_FILE);
        let lock_file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&lock_path)
            .map_err(|source| AuditError::Open { path: lock_path.clone(), source })?;
        let (active, torn) = {
            let _g = DirLock::acquire(&lock_file, &lock_path)?;
            load_active(dir, &lock_file)?
        };
        let mut io = Io {
            dir: dir.to_owned(),
            lock: lock_file,
            lock_path,
            active,
            dirty: false,
            last_sync: Instant::now(),
            last_checkpoint_at: Instant::now(),
            key: Arc::clone(&key),
            durability: cfg.durability,
            checkpoint_every: cfg.checkpoint_every,
            max_file_bytes: cfg.max_file_bytes,
            reload: false,
            stats: LogStats::default(),
        };
        if let Some(t) = &torn {
            tracing::warn!(file = %t.file.display(), offset = t.offset, len = t.len,
                "audit log ends in a torn line (crash or truncation); it is kept and reported");
            // Force the move to a new file now, so the report names where appends go.
            io.reload = true;
            io.commit(&[], false).map_err(Failure::into_error)?;
        }
        let (last_seq, uncovered) = io.head();
        let report = OpenReport {
            active_file: io.active.path.clone(),
            last_seq,
            uncovered_records: uncovered,
            torn_tail: torn,
        };
        let durable = cfg.durability == Durability::Durable;
        let inner = Arc::new(Inner {
            dir: dir.to_owned(),
            cfg,
            key,
            io: Mutex::new(io),
            pipeline: Pipeline::new(durable),
            tick: Condvar::new(),
            kicked_at: Mutex::new(None),
            tick_waker: Mutex::new(None),
        });
        let log = AuditLog { inner, ticker: Mutex::new(None) };
        log.take_up_failed_detached_sync();
        if log.inner.cfg.ticker_at_open {
            log.start_ticker()?;
        }
        Ok((log, report))
    }

    /// Starts the background thread that syncs `Interval` records and signs timed
    /// checkpoints, if the configuration needs one and it is not running yet.
    pub fn start_ticker(&self) -> Result<(), AuditError> {
        let mut slot = lock(&self.ticker);
        if slot.is_some() {
            return Ok(());
        }
        let Some(period) = ticker_period(&self.inner.cfg) else { return Ok(()) };
        let inner = Arc::clone(&self.inner);
        let ticker = std::thread::Builder::new()
            .name("isc-audit-tick".into())
            .spawn(move || ticker_loop(&inner, period))
            .map_err(|source| AuditError::Thread { source })?;
        *slot = Some(ticker);
        Ok(())
    }

    /// Does the ticker's work (the `Interval` sync of appended records, timed checkpoints) on
    /// the caller's thread, instead of [`AuditLog::start_ticker`]'s own thread: for a process
    /// that already has a thread waking up regularly (the monitor's kernel denial collector),
    /// one thread less per ISC. Records are then synced within the interval plus the caller's
    /// wake-up period. Does nothing while the ticker thread runs, or when the configuration
    /// needs no ticker.
    pub fn tick(&self) {
        let Some(period) = ticker_period(&self.inner.cfg) else { return };
        if lock(&self.ticker).is_some() {
            return;
        }
        let now = Instant::now();
        let sync_due = {
            let mut kicked_at = lock(&self.inner.kicked_at);
            if std::mem::take(&mut lock(&self.inner.pipeline.queue).kicked) {
                kicked_at.get_or_insert(now);
            }
            // Records appended during one period share one sync, as with the thread.
            let due = kicked_at.is_some_and(|t| now.duration_since(t) >= period);
            if due {
                *kicked_at = None;
            }
            due
        };
        let checkpoint_due = self.inner.checkpoint_wait().is_some_and(|d| d.is_zero());
        if sync_due || checkpoint_due {
            sync_and_checkpoint(&self.inner);
        }
    }

    /// Has every later append that needs a tick (an `Interval` sync, a timed checkpoint) write
    /// to the eventfd `waker`, so that a loop calling [`AuditLog::tick`] can wait for
    /// [`AuditLog::next_tick_in`] or that eventfd instead of polling; `None` stops it. The log
    /// holds the descriptor until then, so it is never written after being closed.
    pub fn wake_ticks_with(&self, waker: Option<Arc<std::os::fd::OwnedFd>>) {
        *lock(&self.inner.tick_waker) = waker;
    }

    /// How long until [`AuditLog::tick`] has work to do: the rest of the sync period of
    /// records appended since the last sync, or the wait for a timed checkpoint. `None` when
    /// nothing is pending, so a caller that ticks can sleep until something else wakes it.
    pub fn next_tick_in(&self) -> Option<Duration> {
        let period = ticker_period(&self.inner.cfg)?;
        if lock(&self.ticker).is_some() {
            return None;
        }
        let sync = match *lock(&self.inner.kicked_at) {
            Some(t) => Some(period.saturating_sub(t.elapsed())),
            None => lock(&self.inner.pipeline.queue).kicked.then_some(period),
        };
        match (sync, self.inner.checkpoint_wait()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Appends one record and returns its seq once it is written (and synced, if durable).
    pub fn append(
        &self,
        isc: Option<&str>,
        kind: Kind,
        actor: Actor,
        detail: serde_json::Value,
    ) -> Result<u64, AuditError> {
        let req = self.record_request(isc, kind, actor, detail)?;
        Ok(self.inner.submit(vec![req], false)?[0])
    }

    /// Appends several records in one commit; returns their seqs in order.
    pub fn append_many(
        &self,
        records: impl IntoIterator<Item = (Option<String>, Kind, Actor, serde_json::Value)>,
    ) -> Result<Vec<u64>, AuditError> {
        self.commit(records, false)
    }

    /// Appends `records` and a checkpoint signed over them in one commit (one `write`): for
    /// closing records that should be covered by a signature as soon as they are on the trail
    /// (an ISC's end). Returns the records' seqs in order.
    pub fn append_signed(
        &self,
        records: impl IntoIterator<Item = (Option<String>, Kind, Actor, serde_json::Value)>,
    ) -> Result<Vec<u64>, AuditError> {
        self.commit(records, true)
    }

    fn commit(
        &self,
        records: impl IntoIterator<Item = (Option<String>, Kind, Actor, serde_json::Value)>,
        signed: bool,
    ) -> Result<Vec<u64>, AuditError> {
        let mut reqs = Vec::new();
        for (isc, kind, actor, detail) in records {
            reqs.push(self.record_request(isc.as_deref(), kind, actor, detail)?);
        }
        let n = reqs.len();
        if signed {
            reqs.push(Request::Checkpoint { force: false });
        }
        let mut seqs = self.inner.submit(reqs, false)?;
        seqs.truncate(n);
        Ok(seqs)
    }

    fn record_request(
        &self,
        isc: Option<&str>,
        kind: Kind,
        actor: Actor,
        detail: serde_json::Value,
    ) -> Result<Request, AuditError> {
        let got = match &detail {
            serde_json::Value::Object(_) => None,
            serde_json::Value::Null => Some("null"),
            serde_json::Value::Bool(_) => Some("a boolean"),
            serde_json::Value::Number(_) => Some("a number"),
            serde_json::Value::String(_) => Some("a string"),
            serde_json::Value::Array(_) => Some("an array"),
        };
        if let Some(got) = got {
            return Err(AuditError::InvalidDetail { kind, got });
        }
        // Serialised here, by the appending thread, so the single writer only copies bytes.
        let detail = detail.to_string();
        // The fixed fields take well under 300 bytes; this bounds what tail scans must read.
        let size = 300 + isc.map_or(0, str::len) + detail.len();
        if size > self.inner.cfg.max_record_bytes {
            return Err(AuditError::TooLarge { kind, size, max: self.inner.cfg.max_record_bytes });
        }
        Ok(Request::Record { isc: isc.map(str::to_owned), kind, actor, detail })
    }

    /// Signs a checkpoint over the current head now (if any record is uncovered).
    pub fn checkpoint(&self) -> Result<(), AuditError> {
        self.inner.submit(vec![Request::Checkpoint { force: false }], false).map(|_| ())
    }

    /// Ok when new records can be written. Fails — and the engine must then refuse new ISC
    /// starts — after a failed write (until a retry here succeeds in recording the outage) and
    /// when the filesystem is read-only or below the configured free-space reserve.
    pub fn ensure_writable(&self) -> Result<(), AuditError> {
        let failed = lock(&self.inner.pipeline.queue).failed.clone();
        if let Some(f) = failed {
            // Recover only with the reserve free again, so a record squeezed into the last free
            // bytes does not flap the log between failed and writable.
            self.check_space()?;
            let detail = json!({
                "error": f.failure.reason,
                "since": f.since,
                "rejected_appends": f.rejected,
            });
            let req = Request::Record {
                isc: None,
                kind: Kind::AuditWriteFailure,
                actor: Actor::Isc,
                detail: detail.to_string(),
            };
            self.inner.submit(vec![req], true)?;
            match std::fs::remove_file(self.inner.dir.join(marker_name())) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    tracing::warn!(error = %e, "cannot remove the failed-sync marker")
                }
                _ => {}
            }
            tracing::info!(dir = %self.inner.dir.display(), "audit log writable again");
            return Ok(());
        }
        self.check_space()
    }

    /// A detached syncer (`sync_detached`) whose `fdatasync` failed left a marker: records
    /// its process acknowledged may not be on disk. The log is put in its failed state, so
    /// the outage is recorded on the trail (`ensure_writable`, which removes the marker) before
    /// anything else is appended.
    fn take_up_failed_detached_sync(&self) {
        let marker = self.inner.dir.join(marker_name());
        let Ok(meta) = std::fs::symlink_metadata(&marker) else { return };
        let since = meta.modified().unwrap_or_else(|_| SystemTime::now());
        let path = lock(&self.inner.io).active.path.clone();
        tracing::error!(marker = %marker.display(),
            "a monitor's detached audit sync failed; its last records may not be on disk");
        let mut q = lock(&self.inner.pipeline.queue);
        if q.failed.is_none() {
            q.failed = Some(FailedState {
                failure: Failure {
                    path,
                    reason: format!(
                        "the fdatasync of a monitor's closing records failed after it exited (marker {})",
                        marker.display()
                    ),
                },
                since: format_time(since),
                rejected: 0,
            });
        }
        drop(q);
        // Recorded at once, so that every opener (not only a starting ISC) can append again.
        if let Err(e) = self.ensure_writable() {
            tracing::error!(error = %e, "cannot record the failed detached sync yet");
        }
    }

    fn check_space(&self) -> Result<(), AuditError> {
        let active = lock(&self.inner.io).active.path.clone();
        let c = std::ffi::CString::new(self.inner.dir.as_os_str().as_encoded_bytes()).map_err(
            |_| AuditError::Unwritable {
                path: active.clone(),
                reason: "directory path contains a NUL byte".into(),
            },
        )?;
        // SAFETY: statvfs(3) writes into the zeroed struct we own; `c` is a valid C string.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: see above.
        if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
            return Err(AuditError::Unwritable {
                path: active,
                reason: std::io::Error::last_os_error().to_string(),
            });
        }
        if st.f_flag & libc::ST_RDONLY != 0 {
            return Err(AuditError::Unwritable {
                path: active,
                reason: std::io::Error::from_raw_os_error(libc::EROFS).to_string(),
            });
        }
        // Both fields are u64 on 64-bit Linux targets.
        let free = st.f_bavail.saturating_mul(st.f_frsize);
        if free < self.inner.cfg.min_free_bytes {
            return Err(AuditError::Unwritable {
                path: active,
                reason: format!(
                    "{} ({free} bytes free, below the {}-byte reserve)",
                    std::io::Error::from_raw_os_error(libc::ENOSPC),
                    self.inner.cfg.min_free_bytes
                ),
            });
        }
        Ok(())
    }

    /// Forces written records to stable storage (useful with `Durability::Interval`).
    pub fn sync(&self) -> Result<(), AuditError> {
        lock(&self.inner.io).sync(true).map_err(Failure::into_error)
    }

    /// Makes written records durable without waiting for the disk: `handoff` gives the
    /// `fdatasync(2)` to a process that outlives this one (the engine's `finisher::spawn`). For
    /// a process about to exit; a failed flush leaves [`SYNC_FAILED_MARKER`], which the next
    /// `open` takes up and records on the trail. Syncs here when the hand-off fails.
    pub fn sync_detached(&self, handoff: &Handoff) -> Result<(), AuditError> {
        lock(&self.inner.io).sync_detached(handoff).map_err(Failure::into_error)
    }

    /// The public key that verifies this log's checkpoints.
    pub fn verifying_key(&self) -> VerifyingKey {
        self.inner.key.get().verifying_key()
    }

    /// Expands the signing key now if it is not yet (see `keys::LazySigningKey`): for a thread
    /// with time to spare, so that the next checkpoint does not pay for it.
    pub fn prepare_signing(&self) {
        self.inner.key.get();
    }

    /// The log directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Counters of this handle (group-commit effectiveness).
    pub fn stats(&self) -> LogStats {
        let mut s = lock(&self.inner.io).stats;
        s.syncs += lock(&self.inner.pipeline.queue).syncs;
        s
    }

    /// Seq of the last record this process knows of.
    pub fn last_seq(&self) -> u64 {
        lock(&self.inner.io).head().0
    }
}

impl Inner {
    fn submit(&self, reqs: Vec<Request>, recovering: bool) -> Result<Vec<u64>, AuditError> {
        let seqs = self.pipeline.submit(&self.io, reqs, recovering).map_err(Failure::into_error)?;
        if ticker_period(&self.cfg).is_some() {
            lock(&self.pipeline.queue).kicked = true;
            self.tick.notify_all();
            if let Some(fd) = lock(&self.tick_waker).as_deref() {
                let one = 1u64;
                // SAFETY: an 8-byte write to an eventfd the log holds open (its counter
                // cannot overflow from these increments).
                unsafe { libc::write(fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
            }
        }
        Ok(seqs)
    }

    /// How long until uncovered records are due a timed checkpoint (`None`: nothing due).
    fn checkpoint_wait(&self) -> Option<Duration> {
        let t = self.cfg.checkpoint_interval?;
        let io = lock(&self.io);
        let (_, uncovered) = io.head();
        (uncovered > 0).then(|| t.saturating_sub(io.last_checkpoint_at.elapsed()))
    }
}

fn ticker_period(cfg: &AuditConfig) -> Option<Duration> {
    let sync = match cfg.durability {
        Durability::Interval(d) => Some(d),
        _ => None,
    };
    let p = match (sync, cfg.checkpoint_interval) {
        (Some(a), Some(b)) => a.min(b),
        (a, b) => a.or(b)?,
    };
    Some(p.max(Duration::from_millis(1)))
}

fn ticker_loop(inner: &Arc<Inner>, period: Duration) {
    loop {
        // Idle (no wake-ups) until an append kicks us, or until uncovered records are due a
        // timed checkpoint: hundreds of quiet monitors must not each tick several times a second.
        let checkpoint_wait = inner.checkpoint_wait();
        let kicked = {
            let q = lock(&inner.pipeline.queue);
            let idle = |q: &mut crate::pipeline::Queue| !q.stop && !q.kicked;
            let mut q = match checkpoint_wait {
                Some(d) => {
                    inner.tick.wait_timeout_while(q, d, idle).unwrap_or_else(|p| p.into_inner()).0
                }
                None => inner.tick.wait_while(q, idle).unwrap_or_else(|p| p.into_inner()),
            };
            if q.stop {
                return;
            }
            std::mem::take(&mut q.kicked)
        };
        // Records appended during one period share one sync.
        if kicked {
            let q = lock(&inner.pipeline.queue);
            let (q, _) = inner
                .tick
                .wait_timeout_while(q, period, |q| !q.stop)
                .unwrap_or_else(|p| p.into_inner());
            if q.stop {
                return;
            }
        }
        sync_and_checkpoint(inner);
    }
}

/// One step of the ticker: sync what is written (forced: the period has passed since the
/// kick, whenever the last sync was), then sign a checkpoint if uncovered records are due one.
fn sync_and_checkpoint(inner: &Inner) {
    let checkpoint_due = {
        let mut io = lock(&inner.io);
        if let Err(f) = io.sync(true) {
            tracing::error!(path = %f.path.display(), reason = %f.reason,
                "audit log sync failed; refusing appends until it is writable");
            // Records acknowledged under `Interval` may not be on disk: fail closed.
            let mut q = lock(&inner.pipeline.queue);
            if q.failed.is_none() {
                q.failed = Some(FailedState {
                    failure: f,
                    since: format_time(SystemTime::now()),
                    rejected: 0,
                });
            }
        }
        let (_, uncovered) = io.head();
        inner
            .cfg
            .checkpoint_interval
            .is_some_and(|t| uncovered > 0 && io.last_checkpoint_at.elapsed() >= t)
    };
    if checkpoint_due {
        if let Err(e) = inner.submit(vec![Request::Checkpoint { force: false }], false) {
            tracing::error!(error = %e, "periodic audit checkpoint failed");
        }
    }
}

fn marker_name() -> &'static str {
    SYNC_FAILED_MARKER.to_str().unwrap_or("sync-failed")
}

impl Drop for AuditLog {
    fn drop(&mut self) {
        if let Some(ticker) = lock(&self.ticker).take() {
            lock(&self.inner.pipeline.queue).stop = true;
            self.inner.tick.notify_all();
            let _ = ticker.join();
        }
        self.close();
    }
}

impl AuditLog {
    /// Closing checkpoint, so a cleanly closed log is fully covered by a signature.
    fn close(&self) {
        let failed = lock(&self.inner.pipeline.queue).failed.is_some();
        if !failed {
            if let Err(e) = self.checkpoint() {
                tracing::error!(error = %e, "closing audit checkpoint failed");
            }
        }
        let _ = lock(&self.inner.io).sync(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_signed_covers_its_records_in_the_same_commit() {
        let tmp = tempfile::tempdir().unwrap();
        let mut c = AuditConfig::new(tmp.path().join("keys"));
        c.ticker_at_open = false;
        c.checkpoint_interval = None;
        let (log, _) = AuditLog::open(&tmp.path().join("audit"), c).unwrap();
        log.append(Some("web"), Kind::IscStart, Actor::Isc, json!({})).unwrap();
        let writes = log.stats().writes;
        let seqs = log
            .append_signed([
                (Some("web".to_string()), Kind::IscOom, Actor::Kernel, json!({"oom_kills": 1})),
                (Some("web".to_string()), Kind::IscExit, Actor::Isc, json!({"code": 137})),
            ])
            .unwrap();
        assert_eq!(seqs, [2, 3], "the records' seqs, not the checkpoint's");
        assert_eq!(log.stats().writes, writes + 1, "records and checkpoint in one write");
        assert_eq!(
            lock(&log.inner.io).head(),
            (4, 0),
            "seq 4 is the checkpoint: nothing uncovered"
        );
    }

    #[test]
    fn tick_syncs_an_interval_log_once_the_period_has_passed_and_checkpoints_when_due() {
        let tmp = tempfile::tempdir().unwrap();
        let mut c = AuditConfig::new(tmp.path().join("keys"));
        c.durability = Durability::Interval(Duration::from_millis(30));
        c.checkpoint_interval = Some(Duration::from_millis(300));
        c.ticker_at_open = false;
        let (log, _) = AuditLog::open(&tmp.path().join("audit"), c).unwrap();
        log.append(Some("web"), Kind::IscCreate, Actor::Uid(0), json!({})).unwrap();
        log.tick();
        assert_eq!(log.stats().syncs, 0, "the period since the append has not passed yet");
        let deadline = Instant::now() + Duration::from_secs(5);
        while log.stats().syncs == 0 {
            assert!(Instant::now() < deadline, "tick never synced the appended record");
            std::thread::sleep(Duration::from_millis(5));
            log.tick();
        }
        let synced = log.stats().syncs;
        std::thread::sleep(Duration::from_millis(40));
        log.tick();
        assert_eq!(log.stats().syncs, synced, "nothing appended since: no second sync");
        // The record stays uncovered until the checkpoint interval has passed.
        while lock(&log.inner.io).head().1 > 0 {
            assert!(Instant::now() < deadline, "tick never signed the timed checkpoint");
            std::thread::sleep(Duration::from_millis(5));
            log.tick();
        }
    }

    #[test]
    fn an_append_that_needs_a_tick_writes_the_waker_until_it_is_unset() {
        let tmp = tempfile::tempdir().unwrap();
        let mut c = AuditConfig::new(tmp.path().join("keys"));
        c.durability = Durability::Interval(Duration::from_millis(30));
        c.ticker_at_open = false;
        let (log, _) = AuditLog::open(&tmp.path().join("audit"), c).unwrap();
        // SAFETY: eventfd(2) with flags only; owned right below.
        let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        assert!(raw >= 0);
        // SAFETY: a fresh descriptor nobody else owns.
        let fd =
            Arc::new(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) });
        let count = |fd: &std::os::fd::OwnedFd| {
            let mut n = 0u64;
            // SAFETY: an 8-byte read from our non-blocking eventfd into a local.
            let r = unsafe { libc::read(fd.as_raw_fd(), (&mut n as *mut u64).cast(), 8) };
            if r == 8 {
                n
            } else {
                0
            }
        };
        log.append(Some("web"), Kind::IscCreate, Actor::Uid(0), json!({})).unwrap();
        assert_eq!(count(&fd), 0, "not registered yet");
        log.wake_ticks_with(Some(Arc::clone(&fd)));
        log.append(Some("web"), Kind::IscStart, Actor::Uid(0), json!({})).unwrap();
        log.append(Some("web"), Kind::IscStart, Actor::Uid(0), json!({})).unwrap();
        assert_eq!(count(&fd), 2, "one wake per append");
        assert!(log.next_tick_in().is_some(), "and the tick it woke for is due");
        log.wake_ticks_with(None);
        assert_eq!(Arc::strong_count(&fd), 1, "the log let go of the descriptor");
        log.append(Some("web"), Kind::IscStart, Actor::Uid(0), json!({})).unwrap();
        assert_eq!(count(&fd), 0);
    }
}
