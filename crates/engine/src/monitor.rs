//! The monitor: prepares everything an ISC needs before it exists, clones it into its
//! namespaces, releases it, then supervises it (output relay, signals, control socket, exit).
//!
//! It is single-threaded on purpose: `clone3` copies only the calling thread, and the child
//! runs Rust code (not an exec'd helper), so no other thread may hold a lock at that moment.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::channel::{Channel, ChannelError, FromInit, ToInit};
use crate::creds::{self, CredsError, UidRange};
use crate::fdpass;
use crate::init::{self, ChildContext};
use crate::logfile::{Dest, Output};
use crate::monitor_hibernate::{self as sleep, SavedMonitor, Suspended};
use crate::netns::{self, NetnsError, PreparedNetns};
use crate::seccomp::{self, SeccompError};
use crate::spec::IscSpec;
use crate::state::{IscState, Registration, StateError};
use crate::supervisor::{RunEnd, Supervisor};

#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    #[error(transparent)]
    Registry(#[from] StateError),
    #[error("allocating a host UID range: {0}")]
    Uid(CredsError),
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
    #[error("creating the ISC's {what}: {source}")]
    Resource { what: &'static str, source: io::Error },
    #[error("clone3 into new namespaces failed: {0}; fix: this kernel must allow user namespaces for root (kernel.unprivileged_userns_clone is irrelevant for root, but user.max_user_namespaces must be > 0)")]
    Clone(io::Error),
    #[error("setting up the user namespace: {0}")]
    IdMap(CredsError),
    #[error("preparing the ISC before release ({step}): {message}")]
    Hook { step: &'static str, message: String },
    #[error("starting the ISC failed while {step}: {error}")]
    Setup { step: String, error: String },
    #[error("{0}")]
    Exec(String),
    #[error("the ISC's PID 1 died during setup (wait status {0:#x}) without saying why")]
    ChildVanished(i32),
    #[error("control channel: {0}")]
    Channel(#[from] ChannelError),
    #[error(transparent)]
    Netns(#[from] NetnsError),
}

/// How a run is configured beyond the spec (saved as it is by a hibernating monitor).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunOptions {
    pub state_dir: PathBuf,
    pub uid_base: u32,
    pub uid_slots: u32,
    /// Ask the kernel to log every seccomp denial (SECCOMP_FILTER_FLAG_LOG) for the audit trail.
    pub seccomp_log: bool,
    /// Where the service's stdout/stderr go (default: relayed to this process's fds 1 and 2).
    pub output: Output,
    /// The validated manifest as JSON, published in the ISC's state for `isc verify`.
    pub manifest: Option<serde_json::Value>,
    /// A network namespace made ahead by a helper thread (see `netns`): spawn it as early as
    /// possible. Without one (or when the ISC keeps a network capability) `clone3` makes it.
    /// Used up by the start: never saved.
    #[serde(skip)]
    pub netns: Option<std::sync::Arc<PreparedNetns>>,
    /// [`spec_hash`] of the spec, if the caller already computed it (it serialises the spec).
    pub spec_hash: Option<String>,
    /// Leave the tear-down of the ISC's mount namespace to this process's finisher (see
    /// `finisher::hold`) — never for an ISC with bind mounts, whose host-side resources wait
    /// for every mount of them to go (a volume's fscrypt key would be removed incompletely,
    /// FILES_BUSY). The caller clears it when the root itself is such a mount (an EROFS image
    /// on a loop device, which stays attached while a mount of it lives in a held namespace).
    pub defer_mount_teardown: bool,
}

impl RunOptions {
    pub fn new(state_dir: PathBuf) -> Self {
        Self {
            state_dir,
            uid_base: creds::DEFAULT_UID_BASE,
            uid_slots: creds::DEFAULT_SLOTS,
            seccomp_log: false,
            output: Output::Relay,
            manifest: None,
            netns: None,
            spec_hash: None,
            defer_mount_teardown: false,
        }
    }
}

/// Called between clone and release, with the child's pid (cgroup creation and attach,
/// network setup). `before_release` runs while the child, already told to go on, builds its
/// root: the child waits for `ToInit::Proceed` before it joins its cgroups and drops privileges.
pub trait StartHooks {
    /// Called after the id maps are written and **before** `Go`, while the child has not
    /// touched its mount namespace yet: for work that needs the host's view of it (e.g. a
    /// tmpfs mounted at a host path that the child's root setup binds into the image).
    /// Forwarders (chains, wrappers) must forward it.
    fn before_go(&mut self, _child_pid: i32) -> Result<(), (&'static str, String)> {
        Ok(())
    }
    fn before_release(&mut self, child_pid: i32) -> Result<(), (&'static str, String)>;
    /// Called once, as soon as no process of the ISC can act any more — when PID 1 reports
    /// the service's end with no other process left (PID 1 then only exits), else when PID 1
    /// is gone — and before the exit record is built: start exit-path work that takes wall
    /// time (e.g. draining the kernel's audit queue) so it overlaps what follows. Forwarders
    /// must forward it.
    fn service_ended(&mut self) {}
    /// Called once with the exit record, right after `service_ended` — possibly while PID 1 is
    /// still being torn down (the cgroup still exists) — so that recording the end, and making
    /// that durable, overlaps the teardown. [`run`] returns the same record once PID 1 is gone.
    /// Forwarders must forward it.
    fn exit_known(&mut self, _record: &ExitRecord) {}
    /// Called once PID 1 is gone — every process of the ISC has left its cgroup — before the
    /// ISC is unregistered: start the cgroup's removal here so it overlaps the rest of the
    /// exit path. Forwarders must forward it.
    fn init_gone(&mut self) {}
    /// A reason the kernel gave for the end (e.g. an OOM kill seen in the cgroup's events).
    fn exit_reason(&mut self) -> Option<String> {
        None
    }
    /// Limit events of the run for the exit record (see [`ExitRecord::limit_events`]).
    fn limit_events(&mut self) -> Option<serde_json::Value> {
        None
    }
    /// Called once the service runs and its state is published. `clone3` is done, so unlike
    /// the steps before it this may start threads in the monitor (e.g. an audit reader).
    fn after_start(&mut self, _state: &IscState) {}
    /// cgroup v1 `tasks` files the child writes itself into, asked for after `before_release`
    /// (which may create them). The monitor opens them and passes the descriptors with
    /// `ToInit::Proceed`: the child has pivoted into the image by then, and a write is checked
    /// against the opener's credentials (Linux 5.16, commit 1756d7994ad8), or, before that,
    /// allowed because a task moves itself. A thread moving itself through `tasks` skips the
    /// global rwsem (and its RCU grace period) that moving another process through
    /// `cgroup.procs` costs.
    fn self_attach_files(&self) -> Vec<std::path::PathBuf> {
        Vec::new()
    }
    /// A cgroup v2 directory fd to clone straight into (`CLONE_INTO_CGROUP`), so the child is
    /// limited from its first instruction; v1 hierarchies are joined in `before_release`.
    fn clone_into_cgroup(&self) -> Option<RawFd> {
        None
    }
    /// Whether the monitor may hibernate with this hook (`monitor_hibernate`): everything it
    /// holds survives as descriptors and a state it can be rebuilt from after a wake, and its
    /// threads can be stopped. No by default: the monitor then stays whole.
    fn can_hibernate(&self) -> bool {
        false
    }
    /// The monitor is about to hibernate (every hook said it can): stop threads, make what
    /// is pending durable, and say what to keep. Forwarders must forward it.
    fn suspend(&mut self) -> Suspended {
        Suspended::default()
    }
}

/// Several hooks run in order; the first exit reason wins. The one forwarder of every
/// `StartHooks` method: compose hooks with it rather than writing another.
#[derive(Default)]
pub struct HookChain<'a>(pub Vec<&'a mut dyn StartHooks>);

impl StartHooks for HookChain<'_> {
    fn before_go(&mut self, child_pid: i32) -> Result<(), (&'static str, String)> {
        self.0.iter_mut().try_for_each(|h| h.before_go(child_pid))
    }
    fn before_release(&mut self, child_pid: i32) -> Result<(), (&'static str, String)> {
        self.0.iter_mut().try_for_each(|h| h.before_release(child_pid))
    }
    fn service_ended(&mut self) {
        self.0.iter_mut().for_each(|h| h.service_ended())
    }
    fn exit_known(&mut self, record: &ExitRecord) {
        self.0.iter_mut().for_each(|h| h.exit_known(record))
    }
    fn init_gone(&mut self) {
        self.0.iter_mut().for_each(|h| h.init_gone())
    }
    fn exit_reason(&mut self) -> Option<String> {
        self.0.iter_mut().find_map(|h| h.exit_reason())
    }
    fn limit_events(&mut self) -> Option<serde_json::Value> {
        self.0.iter_mut().find_map(|h| h.limit_events())
    }
    fn after_start(&mut self, state: &IscState) {
        self.0.iter_mut().for_each(|h| h.after_start(state))
    }
    fn clone_into_cgroup(&self) -> Option<RawFd> {
        self.0.iter().find_map(|h| h.clone_into_cgroup())
    }
    fn self_attach_files(&self) -> Vec<std::path::PathBuf> {
        self.0.iter().flat_map(|h| h.self_attach_files()).collect()
    }
    fn can_hibernate(&self) -> bool {
        self.0.iter().all(|h| h.can_hibernate())
    }
    fn suspend(&mut self) -> Suspended {
        let mut all = Suspended { state: serde_json::Value::Array(vec![]), ..Default::default() };
        for h in self.0.iter_mut() {
            all.merge(h.suspend());
        }
        all
    }
}

/// No hooks.
pub struct NoHooks;
impl StartHooks for NoHooks {
    fn before_release(&mut self, _: i32) -> Result<(), (&'static str, String)> {
        Ok(())
    }
    fn can_hibernate(&self) -> bool {
        true
    }
}

/// How the service ended.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ExitRecord {
    pub name: String,
    pub code: Option<i32>,
    pub signal: Option<i32>,
    /// What `isc run` exits with: the code, or 128 + signal.
    pub status: i32,
    pub host_uid_base: u32,
    pub start_ms: u64,
    pub run_ms: u64,
    pub reason: Option<String>,
    /// Resource-limit events of the run (OOM kills, pids-limit hits, CPU throttling), as the
    /// hooks that own the cgroup report them.
    pub limit_events: Option<serde_json::Value>,
}

/// Everything the parent holds about the child.
pub(crate) struct Launched {
    pub(crate) pid: i32,
    pub(crate) pidfd: OwnedFd,
}

#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

const NAMESPACES: u64 = (libc::CLONE_NEWUSER
    | libc::CLONE_NEWNS
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC) as u64;

fn pipe_cloexec(what: &'static str) -> Result<(OwnedFd, OwnedFd), MonitorError> {
    let mut p = [0; 2];
    // SAFETY: pipe2 writes two new fds.
    if unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(MonitorError::Resource { what, source: io::Error::last_os_error() });
    }
    // SAFETY: fresh fds owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(p[0]), OwnedFd::from_raw_fd(p[1])) })
}

fn monitor_signals() -> libc::sigset_t {
    // SAFETY: sigset manipulation on a local.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in
            [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT, libc::SIGCHLD, libc::SIGPIPE]
        {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Runs one ISC in the foreground until its service ends.
pub fn run(
    spec: &IscSpec,
    opts: &RunOptions,
    hooks: &mut dyn StartHooks,
) -> Result<ExitRecord, MonitorError> {
    let t0 = Instant::now();
    let start_ms = now_ms();
    let registration = Registration::claim(&opts.state_dir, &spec.name)?;
    let range =
        UidRange::allocate(&opts.state_dir.join("uids"), opts.uid_base, opts.uid_slots, &spec.name)
            .map_err(MonitorError::Uid)?;
    let profile = seccomp::Profile::new(&spec.allow_syscalls, &spec.deny_syscalls)?;
    let bpf = seccomp::load_or_compile(&profile, &opts.state_dir.join("cache"))?;
    crate::timing::mark("registered, UID range held, seccomp loaded");
    let (out_r, out_w) = pipe_cloexec("stdout pipe")?;
    let (err_r, err_w) = pipe_cloexec("stderr pipe")?;
    let (parent_chan, child_chan) = Channel::pair()?;
    creds::clear_supplementary_groups().map_err(MonitorError::IdMap)?;

    let set = monitor_signals();
    // SAFETY: blocking the monitor's signals (the child inherits the mask, which PID 1 keeps
    // for its own signalfd and clears for the service).
    let sfd = unsafe {
        libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK)
    };
    if sfd < 0 {
        return Err(MonitorError::Resource {
            what: "signalfd",
            source: io::Error::last_os_error(),
        });
    }
    // SAFETY: fresh fd.
    let sfd = unsafe { OwnedFd::from_raw_fd(sfd) };

    // Joined here whatever happens: no other thread may run at clone3 (module docs).
    let prepared = opts.netns.as_ref().and_then(|p| p.take());
    let prepared = prepared.filter(|_| !netns::needs_own(spec));
    let ctx = ChildContext {
        spec,
        channel: &child_chan,
        stdout: out_w.as_raw_fd(),
        stderr: err_w.as_raw_fd(),
        seccomp: &bpf,
        seccomp_log: opts.seccomp_log,
        own_netns: prepared.is_none(),
    };
    // PID 1 inherits the heap copy-on-write: trim it first so the start path's free pages are
    // neither shared with PID 1 nor copied when its allocator touches them.
    release_start_heap();
    crate::timing::mark("pipes and signals ready");
    let child = clone_child(ctx, hooks.clone_into_cgroup(), prepared.as_ref())?;
    drop(prepared);
    crate::timing::mark("cloned");
    drop(child_chan);
    drop(out_w);
    drop(err_w);
    // After clone3: a log writer thread may start now.
    let dests = Dest::for_output(&opts.output)
        .map_err(|source| MonitorError::Resource { what: "log file", source })?;

    let mut guard = KillOnDrop { pidfd: Some(child.pidfd.as_raw_fd()) };
    creds::write_id_maps(child.pid, range.host_base).map_err(MonitorError::IdMap)?;
    hooks.before_go(child.pid).map_err(|(step, message)| MonitorError::Hook { step, message })?;
    // The child builds its root (mounts, pivot_root) while the hooks create its cgroup and
    // network: on two or more CPUs the slowest of the two is the cost, not their sum.
    parent_chan.send(&ToInit::Go)?;
    hooks
        .before_release(child.pid)
        .map_err(|(step, message)| MonitorError::Hook { step, message })?;
    let joins = open_tasks_files(&hooks.self_attach_files())?;
    if let Err(e) = fdpass::send_with_fds(&parent_chan, &ToInit::Proceed, &fdpass::raw(&joins)) {
        // A child that failed its setup meanwhile has said why before it exited.
        return Err(match parent_chan.recv::<FromInit>() {
            Ok(Some(FromInit::SetupFailed { step, error })) => MonitorError::Setup { step, error },
            _ => e.into(),
        });
    }
    drop(joins);
    crate::timing::mark("cgroup and network ready, child told to proceed");
    let service_pid = match parent_chan.recv::<FromInit>()? {
        Some(FromInit::ServiceStarted { pid }) => pid,
        Some(FromInit::SetupFailed { step, error }) => {
            return Err(MonitorError::Setup { step, error })
        }
        Some(FromInit::ExecFailed { path, errno }) => {
            return Err(MonitorError::Exec(init::describe_exec_error(&path, errno, &spec.rootfs)))
        }
        Some(other) => {
            return Err(MonitorError::Setup {
                step: "starting".into(),
                error: format!("unexpected {other:?}"),
            })
        }
        None => return Err(MonitorError::ChildVanished(wait_pidfd(&child.pidfd))),
    };
    crate::timing::mark("service started");
    // Here, not at clone: the open costs ~40 µs (a /proc lookup and an nsfs inode) that the
    // start path would wait for, while the monitor now only waits for the service. PID 1 is
    // alive until it has reported the service's end; if a fast service is already gone and
    // PID 1 with it, there is nothing left to hold.
    if opts.defer_mount_teardown && spec.binds.is_empty() {
        hold_mount_namespace(child.pid);
    }
    let state = IscState {
        name: spec.name.clone(),
        monitor_pid: std::process::id() as i32,
        init_pid: child.pid,
        service_pid,
        host_uid_base: range.host_base,
        image_id: spec.image_id.clone(),
        rootfs: spec.rootfs.clone(),
        started_unix_ms: start_ms as u128,
        spec_hash: opts.spec_hash.clone().unwrap_or_else(|| spec_hash(spec)),
        manifest: opts.manifest.clone(),
    };
    registration.publish(&state)?;
    hooks.after_start(&state);
    crate::timing::mark("state published, after-start hooks run");
    release_start_heap();
    tracing::debug!(isc = %spec.name, init_pid = child.pid, start_us = t0.elapsed().as_micros() as u64, "ISC started");

    let running = Running { registration, range, child, chan: parent_chan, sfd, t0, start_ms };
    guard.pidfd = None;
    supervise(spec, opts, running, vec![(out_r, dests.0), (err_r, dests.1)], None, hooks)
}

/// What the monitor holds while its ISC runs: made by [`run`], or rebuilt by [`resume`].
pub(crate) struct Running {
    pub(crate) registration: Registration,
    pub(crate) range: UidRange,
    pub(crate) child: Launched,
    pub(crate) chan: Channel,
    pub(crate) sfd: OwnedFd,
    pub(crate) t0: Instant,
    pub(crate) start_ms: u64,
}

/// The monitor of a running ISC, until its end is handled: the event loop, hibernating when
/// quiet (if every hook can), and the end's records.
pub(crate) fn supervise(
    spec: &IscSpec,
    opts: &RunOptions,
    r: Running,
    outputs: Vec<(OwnedFd, Dest)>,
    resumed: Option<&SavedMonitor>,
    hooks: &mut dyn StartHooks,
) -> Result<ExitRecord, MonitorError> {
    let mut guard = KillOnDrop { pidfd: Some(r.child.pidfd.as_raw_fd()) };
    let mut sup = Supervisor::new(spec, &r.chan, &r.registration, outputs);
    if let Some(s) = resumed {
        sup.restore(s);
    }
    // The end is handled once: as soon as PID 1 reports it with nothing else left in the ISC
    // (from inside the supervisor's loop), else once PID 1 is gone.
    let mut record: Option<ExitRecord> = None;
    let wait_status = loop {
        let end = {
            let mut on_end = |code: Option<i32>, signal: Option<i32>| {
                record = Some(end_record(spec, &r, hooks, code, signal));
            };
            sup.run(&r.child, r.sfd.as_raw_fd(), &mut on_end)
        };
        match end {
            RunEnd::Exited(status) => break status,
            RunEnd::Quiet => {
                if !hooks.can_hibernate() {
                    tracing::debug!(isc = %spec.name, "a start hook cannot resume after a hibernation: the monitor stays whole");
                    sup.monitor_hibernation_works = false;
                } else if sup.outputs_idle() {
                    if let Err(error) = sleep::hibernate(spec, opts, &r, &sup, hooks) {
                        tracing::warn!(isc = %spec.name, %error, "the monitor cannot hibernate; it stays whole (~400 KiB more per idle ISC)");
                        sup.monitor_hibernation_works = false;
                    }
                }
            }
        }
    };
    guard.pidfd = None;
    let (code, signal) = sup.exited.unwrap_or_else(|| decode_status(wait_status));
    // The ISC is gone: unregister it now (its entry, control socket and name lock), before
    // the exit path's threads start and compete with it for the CPU — once the cgroup's
    // removal is under way, if the end (and with it the cgroup's counters) is recorded.
    let ended_reported = sup.ended_reported;
    drop(sup);
    let Running { registration, range, t0, start_ms, .. } = r;
    if ended_reported {
        hooks.init_gone();
        drop(registration);
    } else {
        drop(registration);
        let run_ms = t0.elapsed().as_millis() as u64;
        record = Some(build_end(spec, hooks, range.host_base, start_ms, run_ms, code, signal));
        hooks.init_gone();
    }
    drop(range);
    crate::timing::mark("service exited");
    Ok(record.expect("the end was handled"))
}

fn end_record(
    spec: &IscSpec,
    r: &Running,
    hooks: &mut dyn StartHooks,
    code: Option<i32>,
    signal: Option<i32>,
) -> ExitRecord {
    let run_ms = r.t0.elapsed().as_millis() as u64;
    build_end(spec, hooks, r.range.host_base, r.start_ms, run_ms, code, signal)
}

/// Records the end with the hooks (`service_ended`, `exit_known`).
fn build_end(
    spec: &IscSpec,
    hooks: &mut dyn StartHooks,
    host_uid_base: u32,
    start_ms: u64,
    run_ms: u64,
    code: Option<i32>,
    signal: Option<i32>,
) -> ExitRecord {
    hooks.service_ended();
    crate::timing::mark("service ended");
    let r = ExitRecord {
        name: spec.name.clone(),
        code,
        signal,
        status: code.unwrap_or_else(|| 128 + signal.unwrap_or(0)),
        host_uid_base,
        start_ms,
        run_ms,
        reason: hooks.exit_reason(),
        limit_events: hooks.limit_events(),
    };
    hooks.exit_known(&r);
    crate::timing::mark("exit record built");
    r
}

/// Keeps PID 1's mount namespace referenced until this process's finisher ends (see `finisher`):
/// PID 1's exit then skips the tear-down of the ISC's mounts — and the expedited RCU grace
/// period of `namespace_unlock` in fs/namespace.c — so the monitor learns sooner that PID 1 is
/// gone and can remove its cgroup; the finisher's exit pays for it after `isc run` has returned.
/// Best effort: without it PID 1's exit does the work, as before.
fn hold_mount_namespace(pid: i32) {
    match std::fs::File::open(format!("/proc/{pid}/ns/mnt")) {
        Ok(f) => crate::finisher::hold(f.into()),
        Err(e) => tracing::debug!(pid, error = %e, "cannot hold PID 1's mount namespace"),
    }
}

/// Opens the v1 `tasks` files the child joins through (see `StartHooks::self_attach_files`).
fn open_tasks_files(paths: &[std::path::PathBuf]) -> Result<Vec<OwnedFd>, MonitorError> {
    paths
        .iter()
        .map(|p| {
            std::fs::OpenOptions::new()
                .write(true)
                .open(p)
                .map(OwnedFd::from)
                .map_err(|source| MonitorError::Resource { what: "cgroup tasks file", source })
        })
        .collect()
}

/// BLAKE3 of the serialized spec, to bind reports to what was started.
pub fn spec_hash(spec: &IscSpec) -> String {
    blake3::hash(&serde_json::to_vec(spec).expect("spec serializes")).to_hex().to_string()
}

fn decode_status(status: i32) -> (Option<i32>, Option<i32>) {
    if libc::WIFEXITED(status) {
        (Some(libc::WEXITSTATUS(status)), None)
    } else if libc::WIFSIGNALED(status) {
        (None, Some(libc::WTERMSIG(status)))
    } else {
        (None, None)
    }
}

/// Kills the child's whole namespace if setup is abandoned on an error path.
struct KillOnDrop {
    pidfd: Option<RawFd>,
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(fd) = self.pidfd {
            // SAFETY: pidfd_send_signal on a pidfd we still own; then reap it.
            unsafe { libc::syscall(libc::SYS_pidfd_send_signal, fd, libc::SIGKILL, 0usize, 0) };
            // SAFETY: a plain C struct for which all-zero bytes are a valid value.
            let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
            // SAFETY: waitid(P_PIDFD) on our own child.
            unsafe { libc::waitid(libc::P_PIDFD, fd as libc::id_t, &mut info, libc::WEXITED) };
        }
    }
}

/// `CLONE_INTO_CGROUP` (linux/sched.h, since 5.7).
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// Clones the child into new namespaces: into `netns` if given (entered by this thread for
/// the clone only), else into a new one too.
fn clone_child(
    ctx: ChildContext<'_>,
    cgroup: Option<RawFd>,
    netns: Option<&OwnedFd>,
) -> Result<Launched, MonitorError> {
    let mut pidfd: RawFd = -1;
    let into_cgroup = if cgroup.is_some() { CLONE_INTO_CGROUP } else { 0 };
    let namespaces = match netns {
        Some(_) => NAMESPACES & !(libc::CLONE_NEWNET as u64),
        None => NAMESPACES,
    };
    let entered = netns.map(netns::Entered::enter).transpose()?;
    let args = CloneArgs {
        flags: namespaces | libc::CLONE_PIDFD as u64 | into_cgroup,
        cgroup: cgroup.map_or(0, |fd| fd as u64),
        pidfd: &mut pidfd as *mut RawFd as u64,
        exit_signal: libc::SIGCHLD as u64,
        ..Default::default()
    };
    // SAFETY: clone3 without CLONE_VM behaves like fork: the child gets a copy of this
    // single-threaded process and continues in `child_main`, which never returns.
    let pid = unsafe {
        libc::syscall(libc::SYS_clone3, &args as *const CloneArgs, std::mem::size_of::<CloneArgs>())
    };
    let clone_error = io::Error::last_os_error();
    if pid == 0 {
        init::child_main(ctx);
    }
    // Back to the host's network namespace whatever clone3 did.
    let left = entered.map(netns::Entered::leave).transpose();
    if pid < 0 {
        return Err(MonitorError::Clone(clone_error));
    }
    // SAFETY: the kernel wrote a new pidfd owned by us.
    let launched = Launched { pid: pid as i32, pidfd: unsafe { OwnedFd::from_raw_fd(pidfd) } };
    if let Err(e) = left {
        // KillOnDrop is not armed yet: the child set up in the wrong place dies here.
        drop(KillOnDrop { pidfd: Some(launched.pidfd.as_raw_fd()) });
        return Err(e.into());
    }
    Ok(launched)
}

pub(crate) fn wait_pidfd(pidfd: &OwnedFd) -> i32 {
    // SAFETY: a plain C struct for which all-zero bytes are a valid value.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: waitid(P_PIDFD) on our own child; siginfo is written by the kernel.
    unsafe {
        libc::waitid(libc::P_PIDFD, pidfd.as_raw_fd() as libc::id_t, &mut info, libc::WEXITED);
        let status = info.si_status();
        if info.si_code == libc::CLD_EXITED {
            (status & 0xff) << 8
        } else {
            status & 0x7f
        }
    }
}

/// Gives the free heap pages of the start path (manifest, spec, image checks, seccomp
/// compilation: garbage once the service runs) back to the kernel. The monitor lives as long
/// as its ISC, and glibc only trims the top of the heap by itself (mallopt(3)
/// M_TRIM_THRESHOLD), not free pages below live chunks; malloc_trim(3) releases those too
/// (~130 KiB per ISC measured by bench/dock.sh). Pages still shared copy-on-write with PID 1
/// stay resident until PID 1 also drops them, so the gain is what the monitor alone holds.
/// The thread cache goes first (`idle::release_heap`): before the clone, its blocks would pin
/// their pages in PID 1 for the ISC's life.
fn release_start_heap() {
    crate::idle::release_heap();
}
