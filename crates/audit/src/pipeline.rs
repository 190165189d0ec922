//! Group commit as a two-stage pipeline, run by the appending threads themselves (no helper
//! thread: the engine's monitor appends before `clone3`, when it must be single-threaded).
//!
//! Stage 1, *write*: one appender at a time (the writer) takes every queued request, encodes
//! them and writes them with one `write(2)` under the `io` mutex and the directory `flock`.
//! Stage 2, *sync* (durable mode only): an appender (a syncer) takes every batch written so
//! far and makes it durable with one `fdatasync(2)`, holding no lock. Up to `MAX_SYNCERS`
//! syncs run at once, and while they run the next requests are queued and written, so the
//! `fdatasync` latency is off the write path; each sync covers everything written before it
//! started.
//!
//! Hand-offs are targeted: every appender waits on its own slot. Whoever finishes a stage
//! completes the slots of the requests it finished (after releasing the queue lock, so the
//! woken appenders return without touching it) and, when work is due, wakes exactly one
//! other appender to pick it up. With hundreds of appenders this avoids waking them all at
//! every step; context switches are the main cost of group commit on a small machine.

use std::fs::File;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::SystemTime;

use crate::record::format_time;
use crate::writer::{Failure, Io, Request};

/// Queued requests written ahead while all syncers are busy.
const WRITE_AHEAD: usize = 32;
/// `fdatasync` calls in flight at once. Concurrent syncs of one file overlap in the kernel
/// and the device (measured here: one thread completes ~1.5k syncs/s, eight ~15k/s at about
/// the same latency each), so a new group need not wait for the previous one's sync. With
/// closed-loop appenders, 2 and 3 did best in (noisy) bench runs on this shared 2-CPU machine
/// on 2026-11-28, 8 worst: more syncers split the appenders into more, smaller groups and
/// spend the CPU on wake-ups.
const MAX_SYNCERS: usize = 2;

type Outcome = Result<Vec<u64>, Failure>;

/// One `submit` call's place in the pipeline.
#[derive(Default)]
pub(crate) struct Slot {
    state: Mutex<SlotState>,
    wake: Condvar,
}

#[derive(Default)]
struct SlotState {
    result: Option<Outcome>,
    /// Work is due that this appender should pick up.
    kicked: bool,
}

impl Slot {
    fn complete(&self, r: Outcome) {
        lock(&self.state).result = Some(r);
        self.wake.notify_one();
    }

    fn kick(&self) {
        lock(&self.state).kicked = true;
        self.wake.notify_one();
    }

    fn take_result(&self) -> Option<Outcome> {
        lock(&self.state).result.take()
    }

    /// Blocks until this slot is completed (`Some`) or kicked (`None`).
    fn wait(&self) -> Option<Outcome> {
        let mut st = lock(&self.state);
        loop {
            if let Some(r) = st.result.take() {
                return Some(r);
            }
            if std::mem::take(&mut st.kicked) {
                return None;
            }
            st = self.wake.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// State shared by the appenders (under `Pipeline::queue`).
pub(crate) struct Queue {
    /// Submitted, not yet written.
    pending: Vec<(Arc<Slot>, Vec<Request>)>,
    /// Requests in `pending`.
    pending_requests: usize,
    /// Written, waiting for an `fdatasync`, with their seqs.
    unsynced: Vec<(Arc<Slot>, Vec<u64>)>,
    /// The file the newest unsynced batch went to (older files are synced at rotation).
    sync_target: Option<PathBuf>,
    /// Idle descriptors of `sync_target` for syncers, each its own open file description.
    sync_fds: Vec<(PathBuf, File)>,
    writing: bool,
    /// Syncers in flight.
    syncers: usize,
    /// `fdatasync` calls made by syncers (the `io` counters see only in-lock syncs).
    pub syncs: u64,
    /// Set after a failed write or sync: every append fails until a recovery succeeds.
    pub failed: Option<FailedState>,
    /// Tells the ticker thread to exit.
    pub stop: bool,
    /// Set by an append: the ticker has something to sync or checkpoint.
    pub kicked: bool,
}

/// Why and since when the log refuses appends.
#[derive(Debug, Clone)]
pub(crate) struct FailedState {
    pub failure: Failure,
    pub since: String,
    pub rejected: u64,
}

/// The group-commit pipeline of one `AuditLog`.
pub(crate) struct Pipeline {
    pub queue: Mutex<Queue>,
    /// Durable mode: sync in stage 2 instead of inside the write.
    durable: bool,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding these locks cannot leave them logically inconsistent beyond what
    // `Io::reload` repairs, so keep going rather than poisoning every later append.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Slots to complete or kick once the queue lock is released.
#[derive(Default)]
struct Wakes {
    done: Vec<(Arc<Slot>, Outcome)>,
    kick: Vec<Arc<Slot>>,
}

impl Wakes {
    fn deliver(self) {
        for (slot, r) in self.done {
            slot.complete(r);
        }
        for slot in self.kick {
            slot.kick();
        }
    }
}

impl Queue {
    /// Enters the failed state (once) and counts `rejected` records as lost to it.
    fn fail(&mut self, f: &Failure, rejected: usize) {
        if self.failed.is_none() {
            tracing::error!(path = %f.path.display(), reason = %f.reason,
                "audit log write failed; refusing appends until it is writable");
            self.failed = Some(FailedState {
                failure: f.clone(),
                since: format_time(SystemTime::now()),
                rejected: 0,
            });
        }
        if let Some(st) = self.failed.as_mut() {
            st.rejected += rejected as u64;
        }
    }

    /// Whether queued requests should be written now. In durable mode, while every syncer is
    /// busy, they accumulate (written in chunks of `WRITE_AHEAD`, so the next group's write
    /// is mostly done when a syncer frees up).
    fn write_due(&self, durable: bool) -> bool {
        !self.writing
            && !self.pending.is_empty()
            && (!durable || self.syncers < MAX_SYNCERS || self.pending_requests >= WRITE_AHEAD)
    }

    fn sync_due(&self) -> bool {
        self.syncers < MAX_SYNCERS && !self.unsynced.is_empty()
    }

    /// One waiting appender (other than `me`) per stage that has work due.
    fn kick_targets(&self, durable: bool, me: &Arc<Slot>, w: &mut Wakes) {
        let other = |s: &&Arc<Slot>| !Arc::ptr_eq(s, me);
        if self.write_due(durable) {
            if let Some(s) = self.pending.iter().map(|(s, _)| s).find(other) {
                w.kick.push(Arc::clone(s));
            }
        }
        if self.sync_due() {
            if let Some(s) = self.unsynced.iter().map(|(s, _)| s).find(other) {
                w.kick.push(Arc::clone(s));
            }
        }
    }
}

impl Pipeline {
    pub fn new(durable: bool) -> Pipeline {
        Pipeline {
            queue: Mutex::new(Queue {
                pending: Vec::new(),
                pending_requests: 0,
                unsynced: Vec::new(),
                sync_target: None,
                sync_fds: Vec::new(),
                writing: false,
                syncers: 0,
                syncs: 0,
                failed: None,
                stop: false,
                kicked: false,
            }),
            durable,
        }
    }

    /// Queues `reqs` and returns their seqs once written (and synced, when durable). Unless
    /// `recovering`, fails at once while the log is in the failed state.
    pub fn submit(&self, io: &Mutex<Io>, reqs: Vec<Request>, recovering: bool) -> Outcome {
        if recovering {
            // Only `ensure_writable` recovers, while every other append is refused: commit
            // directly, synced, and leave the failed state only if that worked.
            let refs: Vec<&Request> = reqs.iter().collect();
            let r = lock(io).commit(&refs, false);
            if r.is_ok() {
                lock(&self.queue).failed = None;
            }
            return r;
        }
        let me = Arc::new(Slot::default());
        let mut q = lock(&self.queue);
        if let Some(f) = q.failed.as_mut() {
            f.rejected += reqs.len() as u64;
            return Err(f.failure.clone());
        }
        q.pending_requests += reqs.len();
        q.pending.push((Arc::clone(&me), reqs));
        loop {
            if let Some(r) = me.take_result() {
                return r;
            }
            if q.write_due(self.durable) {
                self.write_stage(io, q, &me);
            } else if q.sync_due() {
                self.sync_stage(q, &me);
            } else {
                drop(q);
                if let Some(r) = me.wait() {
                    return r;
                }
            }
            q = lock(&self.queue);
        }
    }

    fn write_stage(&self, io: &Mutex<Io>, mut q: MutexGuard<'_, Queue>, me: &Arc<Slot>) {
        q.writing = true;
        let batch = std::mem::take(&mut q.pending);
        q.pending_requests = 0;
        let mut w = Wakes::default();
        q.kick_targets(self.durable, me, &mut w);
        drop(q);
        w.deliver();
        let refs: Vec<&Request> = batch.iter().flat_map(|(_, r)| r.iter()).collect();
        let (outcome, target) = {
            let mut io = lock(io);
            let r = io.commit(&refs, self.durable);
            (r, io.active_path())
        };
        drop(refs);
        let mut q = lock(&self.queue);
        q.writing = false;
        let mut w = Wakes::default();
        match outcome {
            Ok(seqs) => {
                let mut it = seqs.into_iter();
                for (slot, reqs) in batch {
                    let seqs: Vec<u64> = it.by_ref().take(reqs.len()).collect();
                    if self.durable {
                        q.unsynced.push((slot, seqs));
                    } else {
                        w.done.push((slot, Ok(seqs)));
                    }
                }
                if self.durable {
                    q.sync_target = Some(target);
                }
            }
            Err(f) => {
                q.fail(&f, batch.iter().map(|(_, r)| r.len()).sum());
                w.done.extend(batch.into_iter().map(|(slot, _)| (slot, Err(f.clone()))));
            }
        }
        q.kick_targets(self.durable, me, &mut w);
        drop(q);
        w.deliver();
    }

    fn sync_stage(&self, mut q: MutexGuard<'_, Queue>, me: &Arc<Slot>) {
        let group = std::mem::take(&mut q.unsynced);
        let path = q.sync_target.clone().expect("a written durable batch always records its file");
        let mut w = Wakes::default();
        // After a failure nothing more is acknowledged.
        if let Some(st) = q.failed.as_ref() {
            let f = st.failure.clone();
            w.done.extend(group.into_iter().map(|(slot, _)| (slot, Err(f.clone()))));
            q.kick_targets(self.durable, me, &mut w);
            drop(q);
            w.deliver();
            return;
        }
        q.syncers += 1;
        // Each syncer uses its own open file description: a writeback error is reported once
        // per description (errseq), so a sync on a shared one could miss an error another
        // concurrent sync consumed, and acknowledge records that were lost.
        let fd =
            q.sync_fds.iter().position(|(p, _)| *p == path).map(|i| q.sync_fds.swap_remove(i).1);
        q.kick_targets(self.durable, me, &mut w);
        drop(q);
        w.deliver();
        let fd = match fd {
            Some(f) => Ok(f),
            None => File::open(&path),
        };
        let r = fd.and_then(|f| f.sync_data().map(|()| f)).map_err(|e| Failure::io(&path, &e));
        let mut q = lock(&self.queue);
        q.syncers -= 1;
        q.syncs += 1;
        let mut w = Wakes::default();
        match r {
            Ok(f) => {
                let current = q.sync_target.clone();
                if current.as_ref() == Some(&path) {
                    q.sync_fds.push((path, f));
                } else {
                    // Rotated meanwhile: descriptors of the old file are no longer needed.
                    q.sync_fds.retain(|(p, _)| current.as_ref() == Some(p));
                }
                w.done.extend(group.into_iter().map(|(slot, seqs)| (slot, Ok(seqs))));
            }
            Err(f) => {
                q.fail(&f, group.iter().map(|(_, s)| s.len()).sum());
                w.done.extend(group.into_iter().map(|(slot, _)| (slot, Err(f.clone()))));
            }
        }
        q.kick_targets(self.durable, me, &mut w);
        drop(q);
        w.deliver();
    }
}
