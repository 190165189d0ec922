//! The single-writer core: under the directory's `flock`, follow what other processes appended,
//! encode a batch of records (plus checkpoints and rotation headers), write it with one `pwrite(2)`
//! over the file's reserved tail (see `segment`), note where the records now end in the lock
//! file, and sync as configured.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

use ed25519_dalek::Signer;
use serde_json::json;

use crate::error::AuditError;
use crate::keys::{checkpoint_message, key_id, sync_dir};
use crate::record::{encode_line, format_time, to_hex, Actor, Fields, Kind};
use crate::segment::{
    file_index, file_name, genesis, list_files, read_from, records_end, scan_file, scan_region,
    TornTail, LOCK_FILE, RESERVE,
};
use crate::Durability;

/// Hands the final `fdatasync` of a log file to a process that outlives the caller: given the
/// file, its directory and the name of the marker to create there if the flush fails.
pub type Handoff =
    dyn Fn(std::os::fd::RawFd, std::os::fd::RawFd, &'static std::ffi::CStr) -> std::io::Result<()>;

/// Left in a log's directory by a detached flush (`AuditLog::sync_detached`) that failed.
pub const SYNC_FAILED_MARKER: &std::ffi::CStr = c"sync-failed";

/// A failed write, reported to every appender of the batch and kept as the log's failed state.
#[derive(Debug, Clone)]
pub(crate) struct Failure {
    pub path: PathBuf,
    pub reason: String,
}

impl Failure {
    pub fn io(path: &Path, e: &std::io::Error) -> Failure {
        Failure { path: path.to_owned(), reason: e.to_string() }
    }
    pub fn into_error(self) -> AuditError {
        AuditError::Unwritable { path: self.path, reason: self.reason }
    }
}

impl From<AuditError> for Failure {
    fn from(e: AuditError) -> Failure {
        let path = match &e {
            AuditError::Corrupt { path, .. }
            | AuditError::Read { path, .. }
            | AuditError::Open { path, .. }
            | AuditError::Lock { path, .. }
            | AuditError::CreateDir { path, .. }
            | AuditError::Unwritable { path, .. } => path.clone(),
            _ => PathBuf::new(),
        };
        Failure { path, reason: e.to_string() }
    }
}

/// One unit of work for the writer.
#[derive(Debug)]
pub(crate) enum Request {
    Record {
        isc: Option<String>,
        kind: Kind,
        actor: Actor,
        /// The detail object, already serialised by the appender (outside the writer's lock).
        detail: String,
    },
    /// Sign the chain head if any record is not yet covered (or always, with `force`).
    Checkpoint { force: bool },
}

/// The file currently appended to and the chain state at its end.
pub(crate) struct Active {
    pub path: PathBuf,
    pub name: String,
    pub file: File,
    /// Where its records end (and the reserved tail begins).
    pub len: u64,
    /// Its size on disk, reserved tail included.
    pub physical: u64,
    pub last_seq: u64,
    pub last_hash: blake3::Hash,
    pub last_checkpoint_seq: u64,
    /// Detail of the `log_rotate` record this (empty) file must start with.
    pub header: Option<serde_json::Value>,
}

/// Writer state, owned by whoever holds the `io` mutex.
pub(crate) struct Io {
    pub dir: PathBuf,
    pub lock: File,
    pub lock_path: PathBuf,
    pub active: Active,
    pub dirty: bool,
    pub last_sync: Instant,
    pub last_checkpoint_at: Instant,
    pub key: std::sync::Arc<crate::keys::LazySigningKey>,
    pub durability: Durability,
    pub checkpoint_every: u64,
    pub max_file_bytes: u64,
    /// Re-read the chain state from disk before the next commit (set after a failed write).
    pub reload: bool,
    /// Counters for tests and benchmarks.
    pub stats: crate::LogStats,
}

/// RAII `flock(LOCK_EX)` on the lock file. Holds the raw descriptor (no borrow, so the
/// writer can lock its own `lock` file and still mutate itself); the `File` it came from
/// must outlive the guard, which holds for `Io::lock` and the lock file in `AuditLog::open`.
pub(crate) struct DirLock {
    fd: std::os::fd::RawFd,
}

impl DirLock {
    pub fn acquire(file: &File, path: &Path) -> Result<DirLock, AuditError> {
        let fd = file.as_raw_fd();
        loop {
            // SAFETY: flock on a valid, open descriptor owned by `file`; no memory is passed.
            let rc = unsafe { libc::flock(fd, libc::LOCK_EX) };
            if rc == 0 {
                return Ok(DirLock { fd });
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(AuditError::Lock { path: path.to_owned(), source: e });
            }
        }
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        // SAFETY: the descriptor is still open (see the type's doc); unlocking cannot fail on
        // a descriptor we locked.
        unsafe { libc::flock(self.fd, libc::LOCK_UN) };
    }
}

pub(crate) fn open_log_file(path: &Path, create_new: bool) -> Result<File, AuditError> {
    // Not O_APPEND: records go over the reserved tail, at the end the lock file records.
    OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(create_new)
        .mode(0o640)
        .open(path)
        .map_err(|source| AuditError::Open { path: path.to_owned(), source })
}

/// Reads the chain state of the log in `dir`, which the caller has locked. Returns the active
/// file state and the torn tail found at its end, if any (the caller must rotate away from it).
pub(crate) fn load_active(
    dir: &Path,
    lock: &File,
) -> Result<(Active, Option<TornTail>), AuditError> {
    let (named, hint) = read_lock_content(lock, &dir.join(LOCK_FILE))?.unzip();
    // The directory is listed only when the lock file does not name an existing active file or
    // that file holds no complete record (its predecessor is needed): not on a normal open.
    let active_path = match named.clone().filter(|n| file_index(n).is_some()) {
        Some(n) if dir.join(&n).exists() => dir.join(n),
        _ => match list_files(dir)?.pop() {
            Some(p) => p,
            None => {
                let path = dir.join(file_name(1));
                let file = open_log_file(&path, true)?;
                sync_dir(dir);
                write_lock_content(lock, &dir.join(LOCK_FILE), &file_name(1), 0)?;
                return Ok((
                    Active {
                        name: file_name(1),
                        path,
                        file,
                        len: 0,
                        physical: 0,
                        last_seq: 0,
                        last_hash: genesis(),
                        last_checkpoint_seq: 0,
                        header: None,
                    },
                    None,
                ));
            }
        },
    };
    let file = open_log_file(&active_path, false)?;
    let name = active_path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
    // The lock file's end is about the file it names.
    let hint = hint.flatten().filter(|_| named.as_deref() == Some(name.as_str()));
    let tail = scan_file(&file, &active_path, hint)?;
    let mut active = Active {
        path: active_path.clone(),
        name,
        file,
        len: tail.len,
        physical: tail.physical,
        last_seq: 0,
        last_hash: genesis(),
        last_checkpoint_seq: 0,
        header: None,
    };
    match tail.scan.last {
        Some((seq, hash)) => {
            active.last_seq = seq;
            active.last_hash = hash;
            // Without a checkpoint in this file, treat all of its records as uncovered: at worst
            // this signs one checkpoint more than strictly needed.
            active.last_checkpoint_seq = tail
                .scan
                .last_checkpoint_seq
                .unwrap_or(tail.scan.first_seq.unwrap_or(1).saturating_sub(1));
        }
        None => {
            // No complete record here: the chain continues from the previous file.
            let files = list_files(dir)?;
            let pos = files.iter().position(|p| *p == active_path);
            if let Some(prev) = pos.and_then(|i| i.checked_sub(1)).map(|i| &files[i]) {
                let pf = open_log_file(prev, false)?;
                let pt = scan_file(&pf, prev, None)?;
                if let Some((seq, hash)) = pt.scan.last {
                    active.last_seq = seq;
                    active.last_hash = hash;
                    active.last_checkpoint_seq = pt.scan.last_checkpoint_seq.unwrap_or(0);
                }
                let prev_name = prev.file_name().and_then(|n| n.to_str()).unwrap_or("");
                active.header = Some(rotate_detail(prev_name, seq_hash(&active), pt.torn.as_ref()));
            }
        }
    }
    Ok((active, tail.torn))
}

fn seq_hash(a: &Active) -> (u64, blake3::Hash) {
    (a.last_seq, a.last_hash)
}

fn rotate_detail(
    prev_file: &str,
    (seq, hash): (u64, blake3::Hash),
    torn: Option<&TornTail>,
) -> serde_json::Value {
    let mut d = json!({
        "prev_file": prev_file,
        "prev_last_seq": seq,
        "prev_last_hash": hash.to_hex().as_str(),
    });
    if let Some(t) = torn {
        d["torn_tail"] = json!({"offset": t.offset, "len": t.len});
    }
    d
}

/// The lock file's content: the active file's name and, when written by a writer that keeps a
/// reserved tail, where its records end (`NAME END`, END zero-padded so that every update is
/// one same-length `pwrite`). An end is a hint (see `segment::records_end`).
fn read_lock_content(
    lock: &File,
    path: &Path,
) -> Result<Option<(String, Option<u64>)>, AuditError> {
    let mut buf = [0u8; 64];
    let n = lock
        .read_at(&mut buf, 0)
        .map_err(|source| AuditError::Read { path: path.to_owned(), source })?;
    let s = std::str::from_utf8(&buf[..n]).unwrap_or("").trim();
    let mut parts = s.split_whitespace();
    let Some(name) = parts.next() else { return Ok(None) };
    Ok(Some((name.to_owned(), parts.next().and_then(|e| e.parse().ok()))))
}

fn lock_line(name: &str, end: u64) -> String {
    format!("{name} {end:020}\n")
}

fn write_lock_content(lock: &File, path: &Path, name: &str, end: u64) -> Result<(), AuditError> {
    let fail =
        |e: std::io::Error| AuditError::Unwritable { path: path.to_owned(), reason: e.to_string() };
    lock.set_len(0).map_err(fail)?;
    lock.write_all_at(lock_line(name, end).as_bytes(), 0).map_err(fail)?;
    Ok(())
}

impl Io {
    /// Catches up with records other processes appended since we last held the lock.
    /// Returns a torn tail another process left behind, if any.
    fn refresh(&mut self) -> Result<Option<TornTail>, AuditError> {
        let content = read_lock_content(&self.lock, &self.lock_path)?;
        if content.as_ref().is_some_and(|(n, _)| *n != self.active.name) {
            let (active, torn) = load_active(&self.dir, &self.lock)?;
            self.active = active;
            return Ok(torn);
        }
        let hint = content.and_then(|(_, end)| end);
        let physical = self
            .active
            .file
            .metadata()
            .map_err(|source| AuditError::Read { path: self.active.path.clone(), source })?
            .len();
        self.active.physical = physical;
        let len = records_end(&self.active.file, &self.active.path, physical, hint)?;
        if len < self.active.len {
            return Err(AuditError::Corrupt {
                path: self.active.path.clone(),
                offset: len,
                reason: format!(
                    "the file shrank from {} to {len} bytes while open: it was truncated outside isc",
                    self.active.len
                ),
            });
        }
        if len == self.active.len {
            return Ok(None);
        }
        let buf = read_from(&self.active.file, &self.active.path, self.active.len, len)?;
        let scan = scan_region(&buf, &self.active.path, self.active.len)?;
        if let Some((seq, hash)) = scan.last {
            self.active.last_seq = seq;
            self.active.last_hash = hash;
            self.active.header = None;
        }
        if let Some(cp) = scan.last_checkpoint_seq {
            self.active.last_checkpoint_seq = cp;
        }
        let complete = self.active.len + scan.complete_len;
        self.active.len = len;
        Ok((complete < len).then(|| TornTail {
            file: self.active.path.clone(),
            offset: complete,
            len: len - complete,
        }))
    }

    fn encode(
        &mut self,
        buf: &mut Vec<u8>,
        isc: Option<&str>,
        kind: Kind,
        actor: Actor,
        detail: &[u8],
    ) -> u64 {
        let seq = self.active.last_seq + 1;
        let time = format_time(SystemTime::now());
        let fields = Fields { seq, time: &time, isc, kind, actor, detail };
        self.active.last_hash = encode_line(buf, &fields, &self.active.last_hash);
        self.active.last_seq = seq;
        seq
    }

    fn encode_checkpoint(&mut self, buf: &mut Vec<u8>) -> u64 {
        let covers = self.active.last_seq;
        let head = self.active.last_hash;
        let key = self.key.get();
        let sig = key.sign(&checkpoint_message(covers, covers, &head));
        let detail = json!({
            "covers_seq": covers,
            "count": covers,
            "head": head.to_hex().as_str(),
            "key_id": key_id(&key.verifying_key()),
            "sig": to_hex(&sig.to_bytes()),
        });
        let seq =
            self.encode(buf, None, Kind::Checkpoint, Actor::Isc, detail.to_string().as_bytes());
        self.active.last_checkpoint_seq = seq;
        self.last_checkpoint_at = Instant::now();
        seq
    }

    fn uncovered(&self) -> u64 {
        self.active.last_seq - self.active.last_checkpoint_seq
    }

    fn write_buf(&mut self, buf: &[u8]) -> Result<(), Failure> {
        if buf.is_empty() {
            return Ok(());
        }
        let end = self.active.len + buf.len() as u64;
        let res = if end <= self.active.physical {
            self.active.file.write_all_at(buf, self.active.len)
        } else {
            // Out of reserved tail: the same write lays a new one down after the records, as
            // written zeros (not fallocate: unwritten extents would need a metadata commit
            // again at their first overwrite). The sync after this one commits the growth.
            let physical = (end + RESERVE).next_multiple_of(4096);
            let mut grown = Vec::with_capacity((physical - self.active.len) as usize);
            grown.extend_from_slice(buf);
            grown.resize((physical - self.active.len) as usize, 0);
            match self.active.file.write_all_at(&grown, self.active.len) {
                Ok(()) => {
                    self.active.physical = physical;
                    Ok(())
                }
                // No room for a reserve (a nearly full or tiny filesystem): the records alone,
                // as an append; the reserve comes back with the next growth that fits.
                Err(_) => {
                    let _ = self.active.file.set_len(self.active.len);
                    self.active.physical = self.active.len;
                    let r = self.active.file.write_all_at(buf, self.active.len);
                    if r.is_ok() {
                        self.active.physical = end;
                    }
                    r
                }
            }
        };
        if let Err(e) = res {
            let f = Failure::io(&self.active.path, &e);
            // Nothing in `buf` was acknowledged to anyone: cut the partial write off so the file
            // keeps ending on a record boundary (its reserved tail goes with it).
            let _ = self.active.file.set_len(self.active.len);
            self.active.physical = self.active.len;
            return Err(f);
        }
        self.active.len = end;
        // Where the records end now, for the next writer (a hint: checked before use, so a
        // failure here costs the next one a search, not a record).
        let line = lock_line(&self.active.name, end);
        if let Err(e) = self.lock.write_all_at(line.as_bytes(), 0) {
            tracing::debug!(error = %e, "audit lock file not updated; the next writer searches");
        }
        self.dirty = true;
        self.stats.writes += 1;
        Ok(())
    }

    /// Syncs per the durability setting (`force` syncs in every mode but `None`).
    pub fn sync(&mut self, force: bool) -> Result<(), Failure> {
        let due = match self.durability {
            Durability::Durable => true,
            Durability::Interval(d) => force || self.last_sync.elapsed() >= d,
            Durability::None => false,
        };
        if self.dirty && due {
            self.active.file.sync_data().map_err(|e| Failure::io(&self.active.path, &e))?;
            self.dirty = false;
            self.last_sync = Instant::now();
            self.stats.syncs += 1;
        }
        Ok(())
    }

    /// Like `sync(true)`, but the `fdatasync` is left to `handoff` (given the log file, its
    /// directory and the failure marker's name): for a process about to exit, whose caller
    /// gains nothing from waiting for the disk. Syncs here when `handoff` fails.
    pub fn sync_detached(&mut self, handoff: &Handoff) -> Result<(), Failure> {
        if !self.dirty || self.durability == Durability::None {
            return Ok(());
        }
        // Read-only is enough for openat(2) and fsync(2) of a directory.
        let handed = File::open(&self.dir).and_then(|dir| {
            handoff(self.active.file.as_raw_fd(), dir.as_raw_fd(), SYNC_FAILED_MARKER)
        });
        match handed {
            Ok(()) => {
                self.dirty = false;
                self.last_sync = Instant::now();
                self.stats.detached_syncs += 1;
                Ok(())
            }
            Err(e) => {
                tracing::debug!(error = %e, "no detached sync; syncing the audit log here");
                self.sync(true)
            }
        }
    }

    /// Starts a new file. `flush_old` writes `buf` (and a covering checkpoint) to the old file
    /// first; it is false when the old file ends in a torn line that must be left as found.
    fn rotate(
        &mut self,
        buf: &mut Vec<u8>,
        torn: Option<&TornTail>,
        flush_old: bool,
    ) -> Result<(), Failure> {
        if flush_old {
            if self.uncovered() > 0 {
                self.encode_checkpoint(buf);
            }
            self.write_buf(buf)?;
            buf.clear();
            self.sync(true)?;
        }
        let next = list_files(&self.dir)?
            .iter()
            .filter_map(|p| p.file_name()?.to_str().and_then(file_index))
            .max()
            .unwrap_or(0)
            + 1;
        let name = file_name(next);
        let path = self.dir.join(&name);
        let file = open_log_file(&path, true)?;
        sync_dir(&self.dir);
        write_lock_content(&self.lock, &self.lock_path, &name, 0)?;
        if flush_old {
            // The file left behind keeps only its records (synced above); trimming its reserved
            // tail needs no sync of its own.
            let _ = self.active.file.set_len(self.active.len);
        }
        let header = rotate_detail(&self.active.name, seq_hash(&self.active), torn);
        tracing::info!(from = %self.active.name, to = %name, torn = torn.is_some(), "rotated audit log");
        self.active = Active {
            path,
            name,
            file,
            len: 0,
            physical: 0,
            last_seq: self.active.last_seq,
            last_hash: self.active.last_hash,
            last_checkpoint_seq: self.active.last_checkpoint_seq,
            header: Some(header),
        };
        Ok(())
    }

    fn write_header_if_pending(&mut self, buf: &mut Vec<u8>) {
        if self.active.len == 0 && buf.is_empty() {
            if let Some(h) = self.active.header.take() {
                self.encode(buf, None, Kind::LogRotate, Actor::Isc, h.to_string().as_bytes());
            }
        }
    }

    /// Appends a batch under the directory lock; returns one seq per request (for a checkpoint
    /// request: the checkpoint's seq, or the current head seq if nothing needed signing).
    /// With `defer_sync` (durable mode in the pipeline) the final sync is left to the caller;
    /// a rotation still syncs the file it leaves.
    pub fn commit(&mut self, batch: &[&Request], defer_sync: bool) -> Result<Vec<u64>, Failure> {
        let _guard = DirLock::acquire(&self.lock, &self.lock_path)?;
        let result = self.commit_locked(batch, defer_sync);
        if let Ok(seqs) = &result {
            self.stats.commits += 1;
            self.stats.requests += seqs.len() as u64;
        }
        if result.is_err() {
            // The in-memory chain state may be ahead of the file (the partial write was cut off)
            // or mid-rotation: re-read it from disk before the next attempt.
            self.reload = true;
        }
        result
    }

    fn commit_locked(&mut self, batch: &[&Request], defer_sync: bool) -> Result<Vec<u64>, Failure> {
        let torn = if self.reload {
            let (active, torn) = load_active(&self.dir, &self.lock)?;
            self.active = active;
            self.reload = false;
            torn
        } else {
            self.refresh()?
        };
        if let Some(torn) = torn {
            tracing::warn!(file = %torn.file.display(), offset = torn.offset, len = torn.len,
                "audit log ends in a torn line left by a crashed writer; continuing in a new file");
            let mut empty = Vec::new();
            self.rotate(&mut empty, Some(&torn), false)?;
        }
        let mut buf = Vec::with_capacity(256 * batch.len() + 512);
        let mut seqs = Vec::with_capacity(batch.len());
        for &req in batch {
            self.write_header_if_pending(&mut buf);
            if self.max_file_bytes > 0
                && self.active.len + buf.len() as u64 >= self.max_file_bytes
                && self.active.len + buf.len() as u64 > 0
            {
                self.rotate(&mut buf, None, true)?;
                self.write_header_if_pending(&mut buf);
            }
            match req {
                Request::Record { isc, kind, actor, detail } => {
                    let detail = detail.as_bytes();
                    seqs.push(self.encode(&mut buf, isc.as_deref(), *kind, *actor, detail));
                    if self.checkpoint_every > 0 && self.uncovered() >= self.checkpoint_every {
                        self.encode_checkpoint(&mut buf);
                    }
                }
                Request::Checkpoint { force } => {
                    if *force || self.uncovered() > 0 {
                        seqs.push(self.encode_checkpoint(&mut buf));
                    } else {
                        seqs.push(self.active.last_seq);
                    }
                }
            }
        }
        self.write_buf(&buf)?;
        if !defer_sync {
            self.sync(false)?;
        }
        Ok(seqs)
    }

    /// The active file's path (what a deferred sync must cover).
    pub fn active_path(&self) -> PathBuf {
        self.active.path.clone()
    }

    /// Seq of the last record and how many records no checkpoint covers yet (local view).
    pub fn head(&self) -> (u64, u64) {
        (self.active.last_seq, self.uncovered())
    }
}
