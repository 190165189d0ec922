//! The audit side of `isc run`: the trail at `<root>/audit` (keys in `<root>/keys`), the
//! lifecycle records of one start, and the start and stop of the threads (`audit_collect`) that
//! record the kernel's seccomp/Landlock denials and dropped packets of this ISC.
//!
//! Threads: the engine's monitor must be single-threaded until `clone3` (the child runs Rust
//! code, not an exec'd helper). So the log is opened without its ticker thread, the kernel
//! audit socket is opened (a plain fd, closed in the child by its `close_range`) before the
//! clone so no denial is missed, and the reader thread starts in `StartHooks::after_start`.
//!
//! Network denials: for an ISC with `[network]`, isc-net's drop rules also log to an NFLOG
//! group of that ISC alone (`isc_net::audit_nflog_group`; one socket per group is all the
//! kernel allows). The monitor binds it once the network is set up (before the service is
//! released) and an `isc-audit-net` thread appends `net_drop` records.
//!
//! A hibernating monitor (`isc_engine::monitor_hibernate`): both threads are paused, their
//! sockets kept; see `hooks_audit_sleep.rs`.

#[path = "hooks_audit_sleep.rs"]
mod sleep;

use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use isc_audit::kernel::KernelAuditReader;
use isc_audit::{Actor, AuditConfig, AuditLog, Durability, Kind};
use isc_cgroup::Limits;
use isc_engine::state::IscState;
use isc_engine::{ExitRecord, IscSpec, MonitorError, StartHooks};
use isc_net::NflogReader;
use serde_json::json;

use crate::audit_collect::{
    collect, collect_net, pidns_inode, start_ticker, Attribution, Collector, DenialCounts,
    Handover, NetDuty, NetSource,
};
use crate::launch::Dirs;

/// How often the log's ticker signs a checkpoint over uncovered records of a running ISC.
const CHECKPOINT_PERIOD: Duration = Duration::from_secs(10);

/// The audit log directory of a root.
pub fn audit_dir(dirs: &Dirs) -> PathBuf {
    dirs.root.join("audit")
}

/// The directory of the checkpoint signing key (`audit-ed25519.key`, `.pub`).
pub fn keys_dir(dirs: &Dirs) -> PathBuf {
    dirs.root.join("keys")
}

/// The caller's real uid: the actor of CLI-initiated operations.
pub fn caller() -> Actor {
    // SAFETY: getuid(2) cannot fail.
    Actor::Uid(unsafe { libc::getuid() })
}

/// Appends one record for an operation the CLI performed on behalf of its caller (image
/// builds, secret changes, key rotation, verify results). Fails closed: an operation whose
/// record cannot be written reports an error.
pub fn record(
    dirs: &Dirs,
    isc: Option<&str>,
    kind: isc_audit::Kind,
    detail: serde_json::Value,
) -> Result<()> {
    let log = open_for_monitor(dirs)?;
    log.append(isc, kind, caller(), detail)
        .with_context(|| format!("recording {kind:?} on the audit trail"))?;
    Ok(())
}

/// Opens the trail for a monitor process: durable, and without the log's ticker thread (the
/// monitor is single-threaded until clone); checkpoints come from the collector and on close.
pub fn open_for_monitor(dirs: &Dirs) -> Result<AuditLog> {
    let mut cfg = AuditConfig::new(keys_dir(dirs));
    cfg.durability = Durability::Durable;
    cfg.checkpoint_interval = None;
    open_with(dirs, cfg)
}

/// How long a monitor's records may sit written but unsynced. The start path writes its
/// records (so a full or read-only disk still refuses the start) but does not wait for the
/// disk: one `fdatasync` at exit covers a short run, and the ticking started once the service
/// runs covers a long one (this interval, checked at least every `audit_collect::IDLE_POLL`).
/// A host crash can lose that last fraction of a second of the trail — and the ISC dies with
/// the host. auditd's default (`flush = INCREMENTAL_ASYNC`) makes the same trade.
pub const SESSION_SYNC: Duration = Duration::from_millis(50);

/// Opens the trail for one `isc run`: see [`SESSION_SYNC`]. No thread until
/// [`AuditLog::start_ticker`] (the monitor is single-threaded until clone).
fn open_for_session(dirs: &Dirs) -> Result<AuditLog> {
    let mut cfg = AuditConfig::new(keys_dir(dirs));
    cfg.durability = Durability::Interval(SESSION_SYNC);
    cfg.checkpoint_interval = Some(CHECKPOINT_PERIOD);
    cfg.ticker_at_open = false;
    open_with(dirs, cfg)
}

/// Opens the trail of `dirs` and warns about a torn tail it found.
fn open_with(dirs: &Dirs, cfg: AuditConfig) -> Result<AuditLog> {
    let dir = audit_dir(dirs);
    let (log, report) = AuditLog::open(&dir, cfg)
        .with_context(|| format!("opening the audit log {}", dir.display()))?;
    if let Some(t) = &report.torn_tail {
        eprintln!(
            "isc: warning: the audit log {} ends in a torn line at byte {} ({} bytes, a crash or truncation); it is kept and acknowledged, see `isc audit verify`",
            t.file.display(),
            t.offset,
            t.len
        );
    }
    Ok(log)
}

/// One `isc run` on the trail: refuses to begin when the log is unwritable (fail closed).
pub struct AuditSession {
    log: Arc<AuditLog>,
    name: String,
    state_dir: PathBuf,
    reader: Option<KernelAuditReader>,
    reader_error: Option<String>,
    pidns_ino: Option<u64>,
    collector: Option<Collector>,
    net_cfg: isc_net::NetConfig,
    /// When `begin` ran: a network record older than this is a leftover, not this run's.
    begun: std::time::SystemTime,
    net: Option<NetSource>,
    net_status: serde_json::Value,
    net_collector: Option<Collector>,
    /// Ends the network collector's drain once the ISC's link is gone (`network_gone`).
    net_last_call: Option<crate::audit_collect::LastCall>,
    memory_limit: Option<u64>,
    /// The end is on the trail (`record_exit` ran), and this thread signs and syncs it.
    exit_recorded: bool,
    exit_sync: Option<isc_engine::beside::Beside<()>>,
    /// Whose kernel records are this ISC's (known once it runs).
    who: Option<Attribution>,
    /// The kernel collector's hand-over when the monitor hibernates.
    pause: Arc<Handover<KernelAuditReader>>,
    /// The network collector's.
    net_pause: Arc<Handover<NetSource>>,
    /// The network collector ticks the log (there is no kernel collector: `NetDuty`).
    net_ticks: bool,
    /// The log's own ticker thread runs (no collector ticks it).
    own_ticker: bool,
}

impl AuditSession {
    /// Opens the trail and checks it can take records; an error means the start is refused.
    pub fn begin(dirs: &Dirs, name: &str) -> Result<AuditSession> {
        let reader = KernelAuditReader::open();
        AuditSession::begin_with(dirs, name, Some(reader))
    }

    fn begin_with(
        dirs: &Dirs,
        name: &str,
        reader: Option<Result<KernelAuditReader, isc_audit::kernel::KernelAuditError>>,
    ) -> Result<AuditSession> {
        let refuse = |e: anyhow::Error| {
            e.context(format!(
                "refusing to start ISC `{name}`: the audit trail cannot record it (fail closed)"
            ))
        };
        let log = open_for_session(dirs).map_err(refuse)?;
        isc_engine::timing::mark("audit log opened");
        // A start fails closed; a woken monitor (no reader given) goes on as a whole one would,
        // recording what it can.
        if reader.is_some() {
            log.ensure_writable().map_err(|e| refuse(e.into()))?;
        }
        // Opened now, before clone, so denials of a service that fails fast are still queued.
        let (reader, reader_error) = match reader.transpose() {
            Ok(r) => (r, None),
            Err(e) => {
                tracing::warn!(isc = name, error = %e, "kernel denials will not be on the audit trail");
                (None, Some(e.to_string()))
            }
        };
        Ok(AuditSession {
            log: Arc::new(log),
            name: name.to_owned(),
            state_dir: dirs.state.clone(),
            reader,
            reader_error,
            pidns_ino: None,
            collector: None,
            net_cfg: crate::hooks_net::net_config(dirs),
            // File times come from the kernel's coarse clock (up to a tick behind).
            begun: std::time::SystemTime::now() - Duration::from_millis(50),
            net: None,
            net_status: json!({"collected": false, "reason": "no [network] section"}),
            net_collector: None,
            net_last_call: None,
            memory_limit: None,
            exit_recorded: false,
            exit_sync: None,
            who: None,
            pause: Arc::default(),
            net_pause: Arc::default(),
            net_ticks: false,
            own_ticker: false,
        })
    }

    /// The run's audit log, for records other start hooks append (e.g. the secrets read).
    pub fn log(&self) -> Arc<AuditLog> {
        Arc::clone(&self.log)
    }

    fn append(&self, kind: Kind, actor: Actor, detail: serde_json::Value) {
        if let Err(e) = self.log.append(Some(&self.name), kind, actor, detail) {
            tracing::error!(isc = %self.name, kind = %kind, error = %e, "cannot append to the audit trail");
        }
    }

    /// Records a failed step of the start (with its error) and passes the result through.
    pub fn step<T, E: std::fmt::Display>(&self, step: &str, r: Result<T, E>) -> Result<T, E> {
        if let Err(e) = &r {
            let error = format!("{e:#}");
            // The image store's integrity refusals all end in "refusing to start" or name a
            // tampered integrity record; they get their own record kind for alerting.
            if step == "preparing the image"
                && (error.contains("refusing to start") || error.contains("was tampered with"))
            {
                self.append(Kind::ImageIntegrityFailure, Actor::Isc, json!({"error": error}));
            }
            self.append(
                Kind::IscStart,
                caller(),
                json!({"result": "failed", "step": step, "error": error}),
            );
        }
        r
    }

    /// `isc_create`: what is about to be started, before any process exists. `spec_hash` is
    /// `isc_engine::monitor::spec_hash(spec)`, computed once per start by the caller.
    pub fn created(&mut self, spec: &IscSpec, spec_hash: &str, limits: &Limits) -> Result<()> {
        self.memory_limit = limits.memory;
        let weakened = spec.weakening != isc_engine::Weakening::default();
        self.log
            .append(
                Some(&self.name),
                Kind::IscCreate,
                caller(),
                json!({
                    "image_id": spec.image_id,
                    "spec_hash": spec_hash,
                    "exec": spec.exec,
                    "uid": spec.uid,
                    "gid": spec.gid,
                    "capabilities": spec.capabilities,
                    "limits": limits_json(limits),
                    "weakened": weakened,
                    "weakening": spec.weakening,
                }),
            )
            .context("recording the ISC's creation on the audit trail")?;
        Ok(())
    }

    /// Wraps the start hooks so that this session sees the clone and the start.
    pub fn hooks<'a>(&'a mut self, inner: &'a mut dyn StartHooks) -> AuditedHooks<'a> {
        AuditedHooks { inner, session: self }
    }

    fn on_started(&mut self, st: &IscState) {
        // The kernel denial collector wakes up regularly anyway, so it also does the log's
        // interval syncs and timed checkpoints (`AuditLog::tick`): one thread (~40 KiB of
        // kernel stack, task and user stack) less per ISC. Without one the network collector,
        // if any, does it (`NetDuty`); without either, the log's own ticker thread.
        let net_ticks = self.reader.is_none() && self.net.is_some();
        if self.reader.is_none() && !net_ticks {
            self.start_own_ticker();
        }
        // The network policy this start put in place (nftables chains, sets, DNAT, shaping) is a
        // policy change of the host's boundary: record what was applied.
        let net = self.state_dir.join("isc").join(&self.name).join(crate::hooks_net::RECORD_FILE);
        if let Ok(bytes) = std::fs::read(&net) {
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes) {
                self.append(Kind::NetPolicy, Actor::Isc, json!({"applied": v}));
            }
        }
        let kernel = match (&self.reader, &self.reader_error) {
            (Some(_), _) => json!({"collected": true}),
            (None, e) => json!({"collected": false, "error": e}),
        };
        self.append(
            Kind::IscStart,
            caller(),
            json!({
                "result": "started",
                "image_id": st.image_id,
                "spec_hash": st.spec_hash,
                "host_uid_base": st.host_uid_base,
                "host_uid_count": isc_engine::creds::RANGE_SIZE,
                "monitor_pid": st.monitor_pid,
                "init_pid": st.init_pid,
                "service_pid": st.service_pid,
                "pidns_inode": self.pidns_ino,
                "kernel_denials": kernel,
                "net_denials": self.net_status,
            }),
        );
        let attribution = Attribution {
            uid_lo: st.host_uid_base,
            uid_hi: st.host_uid_base.saturating_add(isc_engine::creds::RANGE_SIZE),
            pidns_ino: self.pidns_ino,
            init_pid: u32::try_from(st.init_pid).unwrap_or(0),
        };
        if let Some(src) = self.net.take() {
            self.start_net_collector(src, DenialCounts::default(), net_ticks);
        }
        if let Some(reader) = self.reader.take() {
            self.start_kernel_collector(reader, attribution, DenialCounts::default());
        }
    }

    /// The log's own ticker thread, when no collector ticks it. A monitor whose log ticks
    /// this way stays whole (the thread cannot be paused).
    fn start_own_ticker(&mut self) {
        self.own_ticker = true;
        start_ticker(&self.log, &self.name);
    }

    /// Starts the network collector on `src`, from `counts` (those of the monitor before a
    /// hibernation); it ticks the log too if `ticks_log` (no kernel collector).
    fn start_net_collector(&mut self, mut src: NetSource, counts: DenialCounts, ticks_log: bool) {
        // A fresh hand-over per collector: it starts from `counts`.
        self.net_pause = Arc::new(Handover::starting_from(counts));
        let wake = Collector::wake_fd();
        if let Some(fd) = &wake {
            src.reader.wake_on(fd.as_raw_fd());
        }
        let (log, name) = (Arc::clone(&self.log), self.name.clone());
        let pause = Arc::clone(&self.net_pause);
        let duty = NetDuty { wake: wake.clone(), ticks_log };
        match Collector::spawn("isc-audit-net", wake, move |stop, last_call| {
            collect_net(src, &log, &name, stop, last_call, duty, &pause)
        }) {
            Ok(c) => {
                self.net_collector = Some(c);
                self.net_ticks = ticks_log;
            }
            Err(e) => {
                tracing::error!(isc = %self.name, error = %e, "cannot start the network denial collector");
                if ticks_log {
                    self.start_own_ticker();
                }
            }
        }
    }

    fn start_kernel_collector(
        &mut self,
        mut reader: KernelAuditReader,
        who: Attribution,
        counts: DenialCounts,
    ) {
        self.who = Some(who);
        // A fresh hand-over per collector: it starts from `counts`.
        self.pause = Arc::new(Handover::starting_from(counts));
        let wake = Collector::wake_fd();
        if let Some(fd) = &wake {
            reader.wake_on(fd.as_raw_fd());
        }
        let (log, name) = (Arc::clone(&self.log), self.name.clone());
        let (ticks, pause) = (wake.clone(), Arc::clone(&self.pause));
        match Collector::spawn("isc-audit-kernel", wake, move |stop, _| {
            collect(reader, &log, &name, who, stop, ticks, &pause)
        }) {
            Ok(c) => self.collector = Some(c),
            Err(e) => {
                tracing::error!(isc = %self.name, error = %e, "cannot start the kernel denial collector");
                self.start_own_ticker();
            }
        }
    }

    /// Binds this ISC's NFLOG group, from the network record `hooks_net` has just written.
    fn open_net_source(&mut self) {
        let path = self.state_dir.join("isc").join(&self.name).join(crate::hooks_net::RECORD_FILE);
        let fresh =
            std::fs::metadata(&path).and_then(|m| m.modified()).is_ok_and(|t| t >= self.begun);
        if !fresh {
            return;
        }
        let Ok(bytes) = std::fs::read(&path) else { return };
        let rec: crate::hooks_net::NetRecord = match serde_json::from_slice(&bytes) {
            Ok(r) => r,
            Err(e) => {
                self.net_status =
                    json!({"collected": false, "error": format!("{}: {e}", path.display())});
                return;
            }
        };
        let group = isc_net::audit_nflog_group(self.net_cfg.v4_prefix, rec.policy.addr_v4);
        match NflogReader::open(group) {
            Ok(reader) => {
                self.net_status = json!({"collected": true, "nflog_group": group});
                self.net = Some(NetSource { reader, id: rec.id, group });
            }
            Err(e) => {
                tracing::warn!(isc = %self.name, error = %e, "dropped packets will not be on the audit trail");
                self.net_status =
                    json!({"collected": false, "nflog_group": group, "error": e.to_string()});
            }
        }
    }

    /// The ISC's host link is deleted: no dropped packet of it can still be on its way, so the
    /// network collector's drain ends with what is already queued (see `collect_net`).
    pub fn network_gone(&self) {
        if let Some(l) = &self.net_last_call {
            l.give();
        }
    }

    fn stop_net_collector(&mut self) -> Option<DenialCounts> {
        self.net_collector.take()?.finish()
    }

    /// Tells the kernel-denial collector to drain and stop: it emits the barrier record and
    /// reads until it comes out. Idempotent; call once no ISC process can act any more.
    fn start_drain(&mut self) {
        if let Some(c) = &self.collector {
            c.signal();
        }
    }

    fn stop_collector(&mut self) -> Option<DenialCounts> {
        self.collector.take()?.finish()
    }

    /// Records how the run ended — `isc_exit`, plus `isc_oom` after an OOM kill — once the
    /// kernel's denials are drained (PID 1's barrier usually ends that drain at once), then
    /// signs a checkpoint over it and syncs it on a thread of its own, together with the end of
    /// the network drain, so the `fdatasync` overlaps PID 1's teardown and the cgroup's and
    /// network's removal. (Having the kernel collector thread record the end itself measured
    /// the same per `isc run` in runs interleaved one by one; this keeps the collector a pure
    /// reader.) The cgroup's counters come from the record (`limit_events`). Runs once (from
    /// `exit_known`, else from `finish`).
    fn record_exit(&mut self, record: &ExitRecord) {
        if self.exit_recorded {
            return;
        }
        self.exit_recorded = true;
        // The network collector drains beside, until the link is gone (`network_gone`); the
        // end is recorded once its drain is over too.
        let net = self.net_collector.take();
        if let Some(n) = &net {
            n.signal();
            self.net_last_call = Some(n.last_call());
        }
        let event = |key: &str| record.limit_events.as_ref().and_then(|e| e[key].as_u64());
        let oom_kills = event("oom_kills");
        let oom = oom_kills
            .filter(|n| *n > 0)
            .map(|_| json!({"oom_kills": oom_kills, "memory_limit": self.memory_limit}));
        let mut exit = json!({
            "code": record.code,
            "signal": record.signal,
            "status": record.status,
            "reason": record.reason,
            "oom_kills": oom_kills,
            "pids_max_hits": event("pids_max_hits"),
            "cpu_throttled_periods": event("cpu_throttled_periods"),
            "run_ms": record.run_ms,
            "host_uid_base": record.host_uid_base,
            "kernel_denials": null,
            "net_denials": null,
        });
        let (log, name) = (Arc::clone(&self.log), self.name.clone());
        let write_end = move |counts: Option<DenialCounts>| {
            exit["kernel_denials"] = json!(counts);
            exit["net_denials"] = json!(net.and_then(Collector::finish));
            isc_engine::timing::mark("network denials drained");
            // The end and the checkpoint over it in one commit (one write, one lock-file hint).
            let isc = Some(name.clone());
            let mut closing = Vec::with_capacity(2);
            if let Some(oom) = oom {
                closing.push((isc.clone(), Kind::IscOom, Actor::Kernel, oom));
            }
            closing.push((isc, Kind::IscExit, Actor::Isc, exit));
            if let Err(e) = log.append_signed(closing) {
                tracing::error!(isc = %name, error = %e, "cannot append the ISC's end to the audit trail");
                return;
            }
            isc_engine::timing::mark("isc_exit and its checkpoint written");
            // The flush is left to a child that outlives this process: the records are
            // written (every reader sees them), and nothing the caller can observe waits for
            // the disk (docs/audit.md, "Durability and failure").
            if let Err(e) = log.sync_detached(&isc_engine::finisher::spawn) {
                tracing::error!(error = %e, "making the exit record durable");
            }
            isc_engine::timing::mark("isc_exit handed to the syncer");
        };
        // The kernel drain is joined on the same thread: it ends when kauditd delivers PID 1's
        // barrier record (~0.1–0.2 ms after the barrier call on this host), and the main
        // thread meanwhile waits for PID 1's end and removes the cgroup. Inline if no thread:
        // the work is the same, only not overlapped.
        let collector = self.collector.take();
        self.exit_sync =
            isc_engine::beside::spawn_or_inline("isc-audit-sync", 64 * 1024, move || {
                let counts = collector.and_then(Collector::finish);
                isc_engine::timing::mark("kernel denials drained");
                write_end(counts)
            });
    }

    /// Passes the result through, recording the failed start, or the end if `exit_known`
    /// did not (the record is the engine's, built once PID 1 was gone).
    pub fn finish(
        &mut self,
        result: Result<ExitRecord, MonitorError>,
    ) -> Result<ExitRecord, MonitorError> {
        match result {
            Ok(record) => {
                self.record_exit(&record);
                Ok(record)
            }
            Err(e) => {
                self.stop_collector();
                self.stop_net_collector();
                self.append(
                    Kind::IscStart,
                    caller(),
                    json!({"result": "failed", "step": "starting", "error": e.to_string()}),
                );
                Err(e)
            }
        }
    }
}

impl Drop for AuditSession {
    fn drop(&mut self) {
        // Error paths that never reached `finish` must not leave the threads reading.
        self.stop_collector();
        self.stop_net_collector();
        if let Some(t) = self.exit_sync.take() {
            let _ = t.outcome();
        }
    }
}

fn limits_json(l: &Limits) -> serde_json::Value {
    json!({
        "memory": l.memory, "swap": l.swap, "cpu": l.cpu_quota,
        "cpu_weight": l.cpu_weight, "pids": l.pids, "cpuset": l.cpuset, "io_weight": l.io_weight,
    })
}

/// The engine's hooks plus this session (records the PID namespace at clone, starts the
/// collector once the service runs).
pub struct AuditedHooks<'a> {
    inner: &'a mut dyn StartHooks,
    session: &'a mut AuditSession,
}

impl StartHooks for AuditedHooks<'_> {
    fn before_go(&mut self, child_pid: i32) -> Result<(), (&'static str, String)> {
        self.inner.before_go(child_pid)
    }
    fn before_release(&mut self, child_pid: i32) -> Result<(), (&'static str, String)> {
        self.inner.before_release(child_pid)?;
        // The clone made the child PID 1 of a new PID namespace: every ISC process is in it.
        self.session.pidns_ino = pidns_inode(child_pid);
        // The network (and its drop rules) exist now; the service has not run yet.
        self.session.open_net_source();
        Ok(())
    }
    fn service_ended(&mut self) {
        self.inner.service_ended();
        // No ISC process can act any more: put the barrier at the end of kauditd's queue now,
        // so the drain runs while the monitor reads the cgroup's counters for the exit record.
        self.session.start_drain();
    }
    fn exit_known(&mut self, record: &ExitRecord) {
        self.inner.exit_known(record);
        self.session.record_exit(record);
    }
    fn init_gone(&mut self) {
        self.inner.init_gone();
    }
    fn exit_reason(&mut self) -> Option<String> {
        self.inner.exit_reason()
    }
    fn limit_events(&mut self) -> Option<serde_json::Value> {
        self.inner.limit_events()
    }
    fn clone_into_cgroup(&self) -> Option<std::os::fd::RawFd> {
        self.inner.clone_into_cgroup()
    }
    fn self_attach_files(&self) -> Vec<std::path::PathBuf> {
        self.inner.self_attach_files()
    }
    fn after_start(&mut self, state: &IscState) {
        self.inner.after_start(state);
        self.session.on_started(state);
    }
    fn can_hibernate(&self) -> bool {
        self.session.can_hibernate() && self.inner.can_hibernate()
    }
    fn suspend(&mut self) -> isc_engine::monitor_hibernate::Suspended {
        let mut all = isc_engine::monitor_hibernate::Suspended {
            state: serde_json::Value::Array(vec![]),
            ..Default::default()
        };
        all.merge(self.session.suspend());
        all.merge(self.inner.suspend());
        all
    }
}

/// Where a `--root` keeps its public key (for `isc audit key` and verification).
pub fn public_key_path(dirs: &Dirs) -> PathBuf {
    keys_dir(dirs).join(isc_audit::keys::VERIFYING_KEY_FILE)
}
