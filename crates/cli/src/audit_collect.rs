//! The threads that put the kernel's denials of one ISC on its audit trail: `isc-audit-kernel`
//! reads the audit multicast group (seccomp and Landlock records) and `isc-audit-net` this
//! ISC's NFLOG group (dropped packets). Both attribute, rate-limit and append; the kernel one
//! also ticks the log (interval syncs, timed checkpoints). `hooks_audit` starts and stops them.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use isc_audit::kernel::{KernelAuditReader, KernelEvent};
use isc_audit::{Actor, AuditLog, Kind};
use isc_net::{Denial, Direction, NflogReader};
use serde_json::json;

/// Denials recorded one by one per ISC and second; beyond that they are counted and summarised
/// once a second, so a service looping on a denied syscall cannot flood the trail or the disk.
const DENIALS_PER_SECOND: u32 = 100;
/// `clone3` is answered with ENOSYS by design (libc then falls back to `clone`, whose flags the
/// filter can inspect), so it is counted, not recorded as a denial. Same number on every arch.
const SYS_CLONE3: i64 = 435;
/// After the service ended, read until our barrier record arrives (see `audit_barrier`); if it
/// never does (audit backlog full, `actions_logged` without errno), stop once the socket has
/// been quiet this long, and never later than `DRAIN_MAX`.
const DRAIN_QUIET: Duration = Duration::from_millis(100);
const DRAIN_MAX: Duration = Duration::from_secs(1);
/// The longest a denial collector sleeps on a quiet socket when nothing can wake it: no
/// eventfd could be made (then `stop` is noticed only at a timeout, and the log's ticks are
/// polled).
pub(crate) const IDLE_POLL: Duration = Duration::from_millis(200);
/// With an eventfd, a collector sleeps until a record arrives, it is told to stop, the log has
/// a sync or checkpoint due (the log writes the eventfd at every append that needs one:
/// `AuditLog::wake_ticks_with`), or a rate-limit summary is due; this is only the backstop.
/// An idle ISC's collectors then wake once in this long instead of five times a second.
pub(crate) const IDLE_WAKEABLE: Duration = Duration::from_secs(10);

/// Which processes belong to the ISC: its host UID range (robust even after the process
/// exited) or its PID namespace.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub(crate) struct Attribution {
    pub(crate) uid_lo: u32,
    pub(crate) uid_hi: u32,
    pub(crate) pidns_ino: Option<u64>,
    /// PID 1's host pid: its barrier record (`isc_engine::seccomp::AUDIT_BARRIER_SYSCALL`)
    /// ends the drain.
    pub(crate) init_pid: u32,
}

impl Attribution {
    /// PID 1's end-of-denials record: it calls the barrier number once the service has ended
    /// with nothing else left. The service cannot forge it: the record's pid is the caller's
    /// host tgid, and no process of the ISC but PID 1 has PID 1's.
    fn is_init_barrier(&self, ev: &KernelEvent) -> bool {
        matches!(ev, KernelEvent::Seccomp(s)
            if s.pid == self.init_pid && s.syscall == isc_engine::seccomp::AUDIT_BARRIER_SYSCALL)
    }

    fn owns(&self, ev: &KernelEvent) -> bool {
        if let KernelEvent::Seccomp(s) = ev {
            if s.uid.is_some_and(|u| (self.uid_lo..self.uid_hi).contains(&u)) {
                return true;
            }
        }
        match (ev.pid(), self.pidns_ino) {
            (Some(pid), Some(ino)) => pidns_inode(pid as i32) == Some(ino),
            _ => false,
        }
    }
}

pub(crate) fn pidns_inode(pid: i32) -> Option<u64> {
    std::fs::metadata(format!("/proc/{pid}/ns/pid")).ok().map(|m| m.ino())
}

/// Counters of the collector, reported in the `isc_exit` record.
#[derive(Debug, Default, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub(crate) struct DenialCounts {
    recorded: u64,
    suppressed: u64,
    clone3_fallbacks: u64,
    /// Socket overflows: the kernel dropped an unknown number of events (of any ISC).
    overflows: u64,
}

/// This ISC's NFLOG group, bound before the service runs.
pub(crate) struct NetSource {
    pub(crate) reader: NflogReader,
    pub(crate) id: String,
    pub(crate) group: u16,
}

/// A collector thread (`isc-audit-kernel` or `isc-audit-net`) and what stops it.
pub(crate) struct Collector {
    stop: Arc<AtomicBool>,
    /// Raised by [`LastCall::give`]: nothing more can reach its socket (see `collect_net`).
    last_call: Arc<AtomicBool>,
    /// An eventfd its reader also waits on: stopping wakes it at once (it otherwise sleeps up
    /// to `IDLE_POLL` on a quiet socket).
    wake: Option<Arc<OwnedFd>>,
    thread: JoinHandle<DenialCounts>,
}

impl Collector {
    /// A fresh eventfd for a reader's `wake_on`, to hand to [`Collector::spawn`] with it;
    /// `None` if none can be made (the reader then notices `stop` at its next timeout).
    pub(crate) fn wake_fd() -> Option<Arc<OwnedFd>> {
        // SAFETY: eventfd(2) with flags only; the fd is owned right below.
        let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        // SAFETY: a fresh fd nobody else owns.
        (raw >= 0).then(|| Arc::new(unsafe { OwnedFd::from_raw_fd(raw) }))
    }

    /// Runs `collect(stop, last_call)` on a thread named `name`; `wake` must be the eventfd
    /// its reader waits on (it is kept open until the thread is joined).
    pub(crate) fn spawn(
        name: &str,
        wake: Option<Arc<OwnedFd>>,
        collect: impl FnOnce(&AtomicBool, &AtomicBool) -> DenialCounts + Send + 'static,
    ) -> std::io::Result<Collector> {
        let stop = Arc::new(AtomicBool::new(false));
        let last_call = Arc::new(AtomicBool::new(false));
        let (flag, last) = (Arc::clone(&stop), Arc::clone(&last_call));
        let thread =
            std::thread::Builder::new().name(name.into()).spawn(move || collect(&flag, &last))?;
        Ok(Collector { stop, last_call, wake, thread })
    }

    /// Tells it to drain and stop, waking it. Idempotent.
    pub(crate) fn signal(&self) {
        if !self.stop.swap(true, Ordering::SeqCst) {
            wake(self.wake.as_deref());
        }
    }

    /// What tells it, even once it has been handed away, that its drain can end now.
    pub(crate) fn last_call(&self) -> LastCall {
        LastCall { flag: Arc::clone(&self.last_call), wake: self.wake.clone() }
    }

    /// Is its thread still reading? (It ends by itself only when its reader fails.)
    pub(crate) fn running(&self) -> bool {
        !self.thread.is_finished()
    }

    /// Asks a collector to hand its reader back through `pause` and end at once, without a
    /// drain (the monitor hibernates), and waits for its counts.
    pub(crate) fn pause<R>(self, pause: &Handover<R>) -> Option<DenialCounts> {
        pause.asked.store(true, Ordering::SeqCst);
        wake(self.wake.as_deref());
        self.thread.join().ok()
    }

    /// Signals it and waits for its counts (`None` if it panicked).
    pub(crate) fn finish(self) -> Option<DenialCounts> {
        self.signal();
        self.thread.join().ok()
    }
}

/// A collector's hand-over across a hibernation of its monitor: the counts it starts from
/// (those of the monitor before the sleep), and where it returns its reader (`R`: the kernel
/// audit socket's, or the NFLOG group's) when paused.
pub(crate) struct Handover<R> {
    pub(crate) resumed: DenialCounts,
    asked: AtomicBool,
    reader: std::sync::Mutex<Option<R>>,
}

impl<R> Default for Handover<R> {
    fn default() -> Handover<R> {
        Handover::starting_from(DenialCounts::default())
    }
}

impl<R> Handover<R> {
    pub(crate) fn starting_from(resumed: DenialCounts) -> Handover<R> {
        Handover { resumed, asked: AtomicBool::new(false), reader: std::sync::Mutex::new(None) }
    }

    /// Has the monitor asked the collector to hand its reader back?
    fn asked(&self) -> bool {
        self.asked.load(Ordering::SeqCst)
    }

    /// Where a paused collector leaves its reader.
    fn give_back(&self, reader: R) {
        *self.reader.lock().unwrap_or_else(|e| e.into_inner()) = Some(reader);
    }

    /// The reader a paused collector handed back.
    pub(crate) fn take_reader(&self) -> Option<R> {
        self.reader.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// Tells a draining collector that nothing more can reach its socket, so the drain is what is
/// already queued (see `collect_net`).
#[derive(Clone)]
pub(crate) struct LastCall {
    flag: Arc<AtomicBool>,
    wake: Option<Arc<OwnedFd>>,
}

impl LastCall {
    pub(crate) fn give(&self) {
        if !self.flag.swap(true, Ordering::SeqCst) {
            wake(self.wake.as_deref());
        }
    }
}

fn wake(fd: Option<&OwnedFd>) {
    if let Some(fd) = fd {
        let one = 1u64;
        // SAFETY: an 8-byte write to our eventfd (its counter cannot overflow here).
        unsafe { libc::write(fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }
}

/// Starts the audit log's own ticker thread (interval syncs, timed checkpoints).
pub(crate) fn start_ticker(log: &AuditLog, name: &str) {
    if let Err(e) = log.start_ticker() {
        // Records still reach the disk at exit (close syncs); only the bound is lost.
        tracing::error!(isc = %name, error = %e, "audit records of this run are synced only at its end");
    }
}

/// Did a wait that began at `asked` last its whole `wait`? poll(2) takes whole milliseconds,
/// so a wait may end up to one short of a non-integral duration.
fn ran_its_course(asked: Instant, wait: Duration) -> bool {
    asked.elapsed() + Duration::from_millis(1) >= wait
}

/// The collector thread: reads the kernel's audit multicast group and appends this ISC's
/// denials until `stop`, then emits the drain's barrier record itself (`audit_barrier`) and
/// reads until it comes out. It also ticks the log (see `on_started`), and hands that to the
/// log's ticker thread if the reader fails.
pub(crate) fn collect(
    mut reader: KernelAuditReader,
    log: &AuditLog,
    name: &str,
    who: Attribution,
    stop: &AtomicBool,
    wake: Option<Arc<OwnedFd>>,
    pause: &Handover<KernelAuditReader>,
) -> DenialCounts {
    let idle = if wake.is_some() { IDLE_WAKEABLE } else { IDLE_POLL };
    // Appends of other threads that need a tick wake this loop (the log holds the fd until
    // it is unset below).
    log.wake_ticks_with(wake);
    // The run's closing checkpoint is signed on the exit path: expand the key now, while the
    // service runs.
    log.prepare_signing();
    let mut counts = pause.resumed;
    let mut limiter = RateLimit::new(DENIALS_PER_SECOND);
    let mut stopping_since: Option<Instant> = None;
    // Pid the barrier record carries once emitted; 0: drain by quiet period instead.
    let mut barrier_pid = 0u32;
    // Told to drain, the collector first reads what is already in the socket: PID 1's barrier
    // is usually there, and then no record of our own (one more kauditd round trip) is needed.
    let mut own_barrier_due = false;
    let armed = match crate::audit_barrier::arm_this_thread() {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(isc = name, error = %e, "no audit barrier; the drain waits for a quiet period");
            false
        }
    };
    loop {
        let stopping = stop.load(Ordering::Relaxed);
        if !stopping && !reader.has_queued() && pause.asked() {
            wind_down(log, name, &mut limiter);
            pause.give_back(reader);
            return counts;
        }
        if stopping && stopping_since.is_none() {
            stopping_since = Some(Instant::now());
            own_barrier_due = armed;
        }
        let wait = if own_barrier_due {
            Duration::ZERO
        } else if stopping {
            DRAIN_QUIET
        } else {
            let tick = log.next_tick_in().map_or(idle, |d| d.clamp(Duration::from_millis(1), idle));
            limiter.summary_due_in().map_or(tick, |d| tick.min(d))
        };
        let asked = Instant::now();
        let ev = match reader.next_event(wait) {
            Ok(ev) => ev,
            Err(e) => {
                tracing::error!(isc = name, error = %e, "kernel audit reader failed; denials are no longer collected");
                let _ = log.append(
                    Some(name),
                    Kind::AuditWriteFailure,
                    Actor::Isc,
                    json!({"error": e.to_string(), "source": "kernel audit reader"}),
                );
                log.wake_ticks_with(None);
                start_ticker(log, name);
                return counts;
            }
        };
        log.tick();
        if reader.overflows() > counts.overflows {
            counts.overflows = reader.overflows();
            // Loss is itself security-relevant: the trail says it may be incomplete.
            let detail = json!({"lost": "unknown", "socket_overflows": counts.overflows,
                "source": "kernel audit multicast (ENOBUFS)"});
            append(log, name, Kind::SeccompDenial, detail);
        }
        if let Some(n) = limiter.take_summary() {
            append(
                log,
                name,
                Kind::SeccompDenial,
                json!({"suppressed": n, "limit_per_second": DENIALS_PER_SECOND}),
            );
        }
        if ev.as_ref().is_some_and(|e| who.is_init_barrier(e)) {
            // PID 1 queued it after the service's last syscall: nothing of the ISC can follow.
            break;
        }
        if barrier_pid > 0 && ev.as_ref().and_then(KernelEvent::pid) == Some(barrier_pid) {
            // Everything the kernel queued before the ISC ended has now been delivered.
            break;
        }
        if ev.is_none() && own_barrier_due {
            // The socket is empty and PID 1's barrier not seen (the ISC did not end alone, or
            // its record is still on its way): queue ours.
            own_barrier_due = false;
            barrier_pid = crate::audit_barrier::record_pid();
            crate::audit_barrier::emit_here();
            continue;
        }
        match ev {
            Some(ev) if who.owns(&ev) => {
                if matches!(&ev, KernelEvent::Seccomp(s) if s.syscall == SYS_CLONE3) {
                    counts.clone3_fallbacks += 1;
                } else if limiter.admit() {
                    let (kind, actor, detail) = ev.to_record();
                    if log.append(Some(name), kind, actor, detail).is_ok() {
                        counts.recorded += 1;
                    }
                } else {
                    counts.suppressed += 1;
                }
            }
            Some(_) => {}
            // With a barrier outstanding only the barrier (or DRAIN_MAX) ends the drain. Without
            // one, a wait that ran its full course means quiet; a wait ended early by the wake
            // (already pending when a just-started collector first polls) means nothing.
            None if stopping && barrier_pid == 0 && ran_its_course(asked, wait) => break,
            None => {}
        }
        if stopping_since.is_some_and(|t| t.elapsed() >= DRAIN_MAX) {
            break;
        }
    }
    wind_down(log, name, &mut limiter);
    counts
}

/// The kernel collector's last acts, at its end or its pause: other threads' appends stop
/// waking it, and the denials its rate limit suppressed are summed up on the trail.
fn wind_down(log: &AuditLog, name: &str, limiter: &mut RateLimit) {
    log.wake_ticks_with(None);
    if let Some(n) = limiter.flush() {
        append(
            log,
            name,
            Kind::SeccompDenial,
            json!({"suppressed": n, "limit_per_second": DENIALS_PER_SECOND}),
        );
    }
}

/// After the service ended and until its link is gone, read what arrives until the socket has
/// been quiet this long: a packet the service sent just before it ended may still be on its
/// way through the host's stack. With a queue threshold of 1 the kernel sends each logged
/// packet as it is dropped (no batching to wait for).
const NET_DRAIN_QUIET: Duration = Duration::from_millis(30);

fn net_drop_detail(d: &Denial, group: u16) -> serde_json::Value {
    json!({
        "direction": match d.direction { Direction::In => "in", Direction::Out => "out" },
        "src": d.src.to_string(),
        "dst": d.dst.to_string(),
        "proto": d.proto,
        "dport": d.dport,
        "nflog_group": group,
    })
}

/// How a network collector runs beside the rest of its session.
pub(crate) struct NetDuty {
    /// The eventfd its reader also waits on ([`Collector::wake_fd`]), if one could be made.
    pub(crate) wake: Option<Arc<OwnedFd>>,
    /// It also ticks the log (interval syncs, timed checkpoints), as the kernel collector
    /// otherwise does: there is none (isc runs outside the initial network namespace, where
    /// alone the kernel sends audit records), and one thread waking anyway is cheaper than the
    /// log's own ticker — which, unlike a collector, cannot be paused for a hibernation.
    pub(crate) ticks_log: bool,
}

/// The network collector thread: appends this ISC's dropped packets (the prefix carries the
/// ISC id `hooks_net` gave it) until `stop`, then drains the socket. Asked through `pause`
/// (the monitor hibernates), it hands its source back and ends at once, without a drain.
///
/// The drain ends early at the last call ([`LastCall`]), given once the ISC's host link is
/// deleted: deleting a device waits for every packet in flight through it to be processed or
/// discarded (`unregister_netdevice` → `synchronize_net`, net/core/dev.c), and NFLOG delivers
/// each logged packet into this socket synchronously, so what is queued then is all there is.
pub(crate) fn collect_net(
    mut src: NetSource,
    log: &AuditLog,
    name: &str,
    stop: &AtomicBool,
    last_call: &AtomicBool,
    duty: NetDuty,
    pause: &Handover<NetSource>,
) -> DenialCounts {
    let idle = if duty.wake.is_some() { IDLE_WAKEABLE } else { IDLE_POLL };
    let ticks = duty.ticks_log;
    if ticks {
        log.wake_ticks_with(duty.wake);
        log.prepare_signing();
    }
    let mut counts = pause.resumed;
    let mut limiter = RateLimit::new(DENIALS_PER_SECOND);
    let summary = |n| json!({"suppressed": n, "limit_per_second": DENIALS_PER_SECOND});
    loop {
        let stopping = stop.load(Ordering::Relaxed);
        let last = last_call.load(Ordering::SeqCst);
        if !stopping && !src.reader.has_pending() && pause.asked() {
            if let Some(n) = limiter.flush() {
                append(log, name, Kind::NetDrop, summary(n));
            }
            if ticks {
                log.wake_ticks_with(None);
            }
            pause.give_back(src);
            return counts;
        }
        let wait = if last {
            Duration::ZERO
        } else if stopping {
            NET_DRAIN_QUIET
        } else {
            let tick = match log.next_tick_in() {
                Some(d) if ticks => d.clamp(Duration::from_millis(1), idle),
                _ => idle,
            };
            limiter.summary_due_in().map_or(tick, |d| tick.min(d))
        };
        let asked = Instant::now();
        let d = src.reader.next(wait);
        if ticks {
            log.tick();
        }
        if let Some(n) = limiter.take_summary() {
            append(log, name, Kind::NetDrop, summary(n));
        }
        match d {
            // The group is this ISC's alone; an empty id is a denial whose link was already
            // deleted when it was read (isc_net::Denial).
            Some(d) if d.isc_id == src.id || d.isc_id.is_empty() => {
                if limiter.admit() {
                    append(log, name, Kind::NetDrop, net_drop_detail(&d, src.group));
                    counts.recorded += 1;
                } else {
                    counts.suppressed += 1;
                }
            }
            Some(_) => {}
            None if last => break,
            // Quiet only if the wait ran its full course (the wake may end one early).
            None if stopping && ran_its_course(asked, wait) => break,
            None => {}
        }
    }
    if let Some(n) = limiter.flush() {
        append(log, name, Kind::NetDrop, summary(n));
    }
    if ticks {
        log.wake_ticks_with(None);
    }
    counts
}

fn append(log: &AuditLog, name: &str, kind: Kind, detail: serde_json::Value) {
    if let Err(e) = log.append(Some(name), kind, Actor::Kernel, detail) {
        tracing::error!(isc = name, error = %e, "cannot record a kernel denial");
    }
}

/// At most `per_second` admissions per one-second window; the rest are counted and reported
/// once the window is over.
pub(crate) struct RateLimit {
    per_second: u32,
    window: Instant,
    used: u32,
    dropped: u64,
}

impl RateLimit {
    fn new(per_second: u32) -> RateLimit {
        RateLimit { per_second, window: Instant::now(), used: 0, dropped: 0 }
    }
    fn roll(&mut self) {
        if self.window.elapsed() >= Duration::from_secs(1) {
            self.window = Instant::now();
            self.used = 0;
        }
    }
    fn admit(&mut self) -> bool {
        self.roll();
        if self.used < self.per_second {
            self.used += 1;
            true
        } else {
            self.dropped += 1;
            false
        }
    }
    /// How long until the dropped count of this window is due as a summary (`None`: nothing
    /// dropped).
    fn summary_due_in(&self) -> Option<Duration> {
        (self.dropped > 0).then(|| {
            Duration::from_secs(1)
                .saturating_sub(self.window.elapsed())
                .max(Duration::from_millis(1))
        })
    }
    /// The count dropped in a finished window, if any.
    fn take_summary(&mut self) -> Option<u64> {
        if self.dropped > 0 && self.window.elapsed() >= Duration::from_secs(1) {
            return self.flush();
        }
        None
    }
    fn flush(&mut self) -> Option<u64> {
        (self.dropped > 0).then(|| std::mem::take(&mut self.dropped))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_admits_per_window_and_reports_the_rest() {
        let mut r = RateLimit::new(3);
        assert!((0..3).all(|_| r.admit()));
        assert!(!r.admit());
        assert!(!r.admit());
        assert_eq!(r.take_summary(), None, "window not over yet");
        r.window -= Duration::from_secs(2);
        assert_eq!(r.take_summary(), Some(2));
        assert!(r.admit(), "a new window admits again");
        assert_eq!(r.flush(), None);
    }

    #[test]
    fn attribution_by_uid_range_works_without_the_process() {
        let who = Attribution {
            uid_lo: 1_000_000_000,
            uid_hi: 1_000_065_536,
            pidns_ino: None,
            init_pid: 0,
        };
        let ev = |uid| {
            KernelEvent::Seccomp(isc_audit::kernel::SeccompEvent {
                audit_id: "1.2:3".into(),
                pid: u32::MAX - 1,
                uid: Some(uid),
                comm: "x".into(),
                exe: None,
                syscall: 321,
                arch: "c000003e".into(),
                code: 0x50000,
                sig: 0,
            })
        };
        assert!(who.owns(&ev(1_000_001_000)));
        assert!(!who.owns(&ev(0)));
        assert!(!who.owns(&ev(1_000_065_536)));
    }

    #[test]
    fn only_pid_1_calling_the_barrier_number_ends_the_drain() {
        let who = Attribution { uid_lo: 10, uid_hi: 20, pidns_ino: None, init_pid: 4242 };
        let ev = |pid, syscall| {
            KernelEvent::Seccomp(isc_audit::kernel::SeccompEvent {
                audit_id: "1.2:3".into(),
                pid,
                uid: Some(15),
                comm: "x".into(),
                exe: None,
                syscall,
                arch: "c000003e".into(),
                code: 0x50000,
                sig: 0,
            })
        };
        let barrier = isc_engine::seccomp::AUDIT_BARRIER_SYSCALL;
        assert!(who.is_init_barrier(&ev(4242, barrier)));
        // The service calling the same number, or PID 1 being denied anything else, is a denial.
        assert!(!who.is_init_barrier(&ev(4243, barrier)));
        assert!(!who.is_init_barrier(&ev(4242, 101)));
    }
}
