//! The hibernating monitor (docs/engine.md, "A hibernating monitor").
//!
//! An idle ISC's monitor is a whole isc process — ~400 KiB of relocated RELRO, heap, stacks
//! and data that no other process shares — doing nothing but waiting. Like PID 1
//! (`hibernate.rs`), once it has been quiet for a second it execs, in place, a freestanding
//! program (`tiny/monitor.rs`, ~8 KB) that keeps every descriptor the monitor holds and sleeps
//! on them. Anything that needs the monitor — PID 1's channel, the control socket, the
//! service's output, a signal, PID 1's end, a kernel audit record that may be this ISC's, a
//! due audit tick — makes it exec the whole isc back, with the same argv and environment, and
//! `isc` resumes the monitor from the state saved here ([`SavedMonitor`]) before it handles the
//! event. The process keeps its pid, its children (PID 1) and its command line throughout.
//!
//! Every start hook must agree ([`StartHooks::can_hibernate`]): what it holds must survive as
//! descriptors plus a serialisable state, and its threads must be stoppable. A monitor whose
//! hooks cannot (e.g. egress host names or a mounted EROFS image, for now) stays whole, as before.
//!
//! What the exec keeps is exactly the descriptors named in the saved state; everything else
//! is close-on-exec. The state and the plan travel in sealed memfds: nothing but this process
//! can have written them, and nothing can change them afterwards. A failure before the hooks
//! are suspended leaves the monitor whole (and it does not try again); a failed exec after
//! that execs the whole isc directly, and if even that fails the monitor aborts — its ISC then
//! ends with it (PID 1 exits when the channel closes), which is the safe failure.

use std::ffi::{CString, OsString};
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::channel::Channel;
use crate::creds::UidRange;
use crate::hibernate::{data_memfd, fill_and_seal, HibernateError, MonitorPlan};
use crate::logfile::Dest;
use crate::monitor::{
    supervise, ExitRecord, Launched, MonitorError, RunOptions, Running, StartHooks,
};
use crate::spec::IscSpec;
use crate::state::{LockFile, Registration};
use crate::supervisor::Supervisor;

/// The environment variable naming the saved state's descriptor for the whole isc woken back.
pub const RESUME_ENV: &str = "ISC_MONITOR_RESUME";
/// Set when the whole isc was exec'd straight back because the tiny monitor's exec failed: it
/// must not try again (each try would cost an exec of the whole isc every quiet second).
const STAY_WHOLE_ENV: &str = "ISC_MONITOR_STAY_WHOLE";

#[derive(Debug, thiserror::Error)]
pub enum MonitorSleepError {
    #[error(transparent)]
    Memfd(#[from] HibernateError),
    #[error("opening this isc binary to wake with: {0}")]
    Exe(io::Error),
    #[error("the saved monitor state (fd {fd}) cannot be read: {detail}")]
    Saved { fd: String, detail: String },
}

/// An audit socket the hibernating monitor reads itself: records it can prove are another
/// ISC's (or the host's) are dropped there, anything else wakes the whole monitor.
#[derive(Debug, Clone)]
pub struct AuditWatch {
    pub fd: RawFd,
    pub uid_lo: u32,
    pub uid_hi: u32,
    pub pidns_ino: u64,
    /// Landlock domain ids whose creator is known not to be in the ISC's PID namespace (or
    /// gone): their access records are another's (`MonitorPlan::foreign_domains`).
    pub foreign_domains: Vec<u64>,
}

/// What one start hook hands over while the monitor sleeps.
#[derive(Debug, Default)]
pub struct Suspended {
    /// The hook's own state, given back to the code that rebuilds it on resume.
    pub state: serde_json::Value,
    /// Descriptors that must stay open across the execs (the hook's state names them).
    pub keep: Vec<RawFd>,
    /// Of those (or others), the ones whose readability must wake the monitor.
    pub wake_on: Vec<RawFd>,
    pub audit: Option<AuditWatch>,
    /// The hook must run again by then (e.g. an egress DNS refresh that is due).
    pub deadline: Option<Duration>,
}

impl Suspended {
    /// Folds `other` in (for chains: their states become an array, in order).
    pub fn merge(&mut self, other: Suspended) {
        match &mut self.state {
            serde_json::Value::Array(v) => v.push(other.state),
            s => *s = serde_json::Value::Array(vec![other.state]),
        }
        self.keep.extend(other.keep);
        self.wake_on.extend(other.wake_on);
        self.audit = self.audit.take().or(other.audit);
        self.deadline = match (self.deadline, other.deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
}

/// A lock file kept across the execs: its path (removed when it is let go) and its fd.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeptLock {
    pub path: PathBuf,
    pub fd: RawFd,
}

/// Everything the engine's monitor needs to go on after a wake. The hooks' states are opaque
/// here: the caller rebuilds its hooks from [`SavedMonitor::hooks`] before [`resume`].
#[derive(Debug, Serialize, Deserialize)]
pub struct SavedMonitor {
    pub spec: IscSpec,
    pub opts: RunOptions,
    /// Wall-clock start (ms since the epoch), and the start on CLOCK_MONOTONIC in ms (std's
    /// `Instant` is not serialisable): the run's length counts the time asleep.
    pub start_ms: u64,
    pub started_mono_ms: u64,
    pub init_pid: i32,
    pub pidfd: RawFd,
    pub channel: RawFd,
    pub signalfd: RawFd,
    pub listener: RawFd,
    /// The service's output pipes still open, and whether each is its stderr.
    pub outputs: Vec<(RawFd, bool)>,
    pub registration_dir: PathBuf,
    pub registration_lock: KeptLock,
    pub uid_lock: KeptLock,
    pub host_uid_base: u32,
    pub uid_slot: u32,
    /// Descriptors the finisher is to hold (`finisher::hold`).
    pub held: Vec<RawFd>,
    pub next_probe: u64,
    pub init_hibernating: bool,
    pub init_hibernation_works: bool,
    /// The plan and the binary: closed by the resumed monitor.
    pub plan_fd: RawFd,
    pub exe_fd: RawFd,
    pub hooks: serde_json::Value,
    /// False when the tiny monitor could not be exec'd: the resumed monitor stays whole.
    #[serde(skip, default = "yes")]
    pub monitor_hibernation_works: bool,
}

fn yes() -> bool {
    true
}

/// Suspends the hooks and execs the tiny monitor (`monitor_hibernate`). Returns only when
/// nothing has been changed yet (the programs or memfds could not be made).
pub(crate) fn hibernate(
    spec: &IscSpec,
    opts: &RunOptions,
    r: &Running,
    sup: &Supervisor<'_>,
    hooks: &mut dyn StartHooks,
) -> Result<(), MonitorSleepError> {
    let prepared = Prepared::new()?;
    let held = crate::finisher::held_fds();
    let suspended = hooks.suspend();
    let outputs = sup.output_fds();
    let (registration_dir, registration_lock, listener) = r.registration.kept();
    let kept_lock = |l: &LockFile| KeptLock { path: l.path().into(), fd: l.fd() };
    let saved = SavedMonitor {
        spec: spec.clone(),
        opts: opts.clone(),
        start_ms: r.start_ms,
        started_mono_ms: mono_ms().saturating_sub(r.t0.elapsed().as_millis() as u64),
        init_pid: r.child.pid,
        pidfd: r.child.pidfd.as_raw_fd(),
        channel: r.chan.raw_fd(),
        signalfd: r.sfd.as_raw_fd(),
        listener,
        outputs: outputs.clone(),
        registration_dir,
        registration_lock: kept_lock(registration_lock),
        uid_lock: kept_lock(r.range.lock()),
        host_uid_base: r.range.host_base,
        uid_slot: r.range.slot,
        held: held.clone(),
        next_probe: sup.next_probe(),
        init_hibernating: sup.init_hibernating(),
        init_hibernation_works: sup.hibernation_works,
        plan_fd: -1,
        exe_fd: -1,
        hooks: suspended.state,
        monitor_hibernation_works: true,
    };
    let mut wake_on = vec![saved.pidfd, saved.signalfd, saved.channel, saved.listener];
    wake_on.extend(outputs.iter().map(|(fd, _)| *fd));
    wake_on.extend(&suspended.wake_on);
    let keep = wake_on
        .iter()
        .chain(&suspended.keep)
        .chain(&held)
        .chain(&[saved.registration_lock.fd, saved.uid_lock.fd])
        .copied()
        .collect::<Vec<_>>();
    // The audit socket is the session's: among its `keep`.
    keep.iter().for_each(|fd| {
        keep_fd(*fd);
    });
    let audit = suspended.audit.as_ref();
    let plan = crate::hibernate::MonitorPlan {
        exe_fd: -1,
        audit_fd: audit.map_or(-1, |a| a.fd),
        deadline_ms: suspended.deadline.map_or(-1, |d| (mono_ms() + d.as_millis() as u64) as i64),
        uid_lo: audit.map_or(0, |a| a.uid_lo),
        uid_hi: audit.map_or(0, |a| a.uid_hi),
        pidns_ino: audit.map_or(0, |a| a.pidns_ino),
        fds: wake_on,
        foreign_domains: audit.map_or_else(Vec::new, |a| a.foreign_domains.clone()),
    };
    tracing::debug!(isc = %spec.name, "the monitor hibernates");
    prepared.exec(saved, plan)
}

/// Resumes the monitor of a running ISC in a whole isc woken from the tiny monitor, with its
/// hooks rebuilt by the caller from [`SavedMonitor::hooks`]; returns like [`run`].
pub fn resume(saved: SavedMonitor, hooks: &mut dyn StartHooks) -> Result<ExitRecord, MonitorError> {
    let adopt = |fd: RawFd, what: &'static str| {
        // SAFETY: the saved state names each of these descriptors once, as ours.
        unsafe { adopt_fd(fd) }.map_err(|source| MonitorError::Resource { what, source })
    };
    let run = Duration::from_millis(mono_ms().saturating_sub(saved.started_mono_ms));
    let t0 = Instant::now().checked_sub(run).unwrap_or_else(Instant::now);
    let adopt_lock = |l: &KeptLock| -> Result<LockFile, MonitorError> {
        Ok(LockFile::adopt(l.path.clone(), adopt(l.fd, "lock file")?.into()))
    };
    let registration = Registration::adopt(
        saved.registration_dir.clone(),
        adopt_lock(&saved.registration_lock)?,
        adopt(saved.listener, "control socket")?,
    );
    let range = UidRange::adopt(saved.host_uid_base, saved.uid_slot, adopt_lock(&saved.uid_lock)?);
    let child = Launched { pid: saved.init_pid, pidfd: adopt(saved.pidfd, "PID 1's pidfd")? };
    let chan = Channel::from_fd(adopt(saved.channel, "control channel")?);
    let sfd = adopt(saved.signalfd, "signalfd")?;
    for fd in &saved.held {
        crate::finisher::hold(adopt(*fd, "held namespace")?);
    }
    let opts = saved.opts.clone();
    let dests = Dest::for_output(&opts.output)
        .map_err(|source| MonitorError::Resource { what: "log file", source })?;
    let mut dests = [Some(dests.0), Some(dests.1)];
    let mut outputs = Vec::new();
    for (fd, stderr) in &saved.outputs {
        let i = usize::from(*stderr);
        // Both of a log's pipes go to the same file: either destination serves.
        let dest = dests[i].take().or_else(|| dests[1 - i].take()).expect("two destinations");
        outputs.push((adopt(*fd, "output pipe")?, dest));
    }
    let running = Running { registration, range, child, chan, sfd, t0, start_ms: saved.start_ms };
    supervise(&saved.spec, &opts, running, outputs, Some(&saved), hooks)
}

/// CLOCK_MONOTONIC in milliseconds (std's `Instant` is not serialisable).
pub(crate) fn mono_ms() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}

/// Lets `fd` survive the execs; returns it.
pub fn keep_fd(fd: RawFd) -> RawFd {
    // SAFETY: fcntl(F_SETFD) on a descriptor the caller holds.
    unsafe { libc::fcntl(fd, libc::F_SETFD, 0) };
    fd
}

/// Takes ownership of a descriptor kept across the execs, close-on-exec again.
///
/// # Safety
/// `fd` must be a descriptor this process was handed by its previous image (named in the
/// saved state) and owned by nothing else here.
pub unsafe fn adopt_fd(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: fcntl on a descriptor number; EBADF tells us it is not open.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: open (checked above) and, per the caller, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// What the exec needs, made before any hook is suspended: once they are, nothing may fail
/// back into the whole monitor (its threads are stopped).
pub(crate) struct Prepared {
    tiny: OwnedFd,
    exe: std::fs::File,
    plan: OwnedFd,
    state: OwnedFd,
}

impl Prepared {
    pub(crate) fn new() -> Result<Prepared, MonitorSleepError> {
        let tiny = crate::hibernate::tiny_monitor()?;
        let exe = std::fs::File::open("/proc/self/exe").map_err(MonitorSleepError::Exe)?;
        let plan = data_memfd(c"isc-monitor-plan", "the hibernating monitor's plan")?;
        let state = data_memfd(c"isc-monitor-state", "the hibernating monitor's state")?;
        Ok(Prepared { tiny, exe, plan, state })
    }

    /// Saves `saved`, then execs the tiny monitor with `plan`. Never returns: see the module.
    pub(crate) fn exec(self, mut saved: SavedMonitor, mut plan: MonitorPlan) -> ! {
        plan.exe_fd = self.exe.as_raw_fd();
        saved.plan_fd = self.plan.as_raw_fd();
        saved.exe_fd = self.exe.as_raw_fd();
        let state = serde_json::to_vec(&saved).expect("the saved state serializes");
        for (fd, bytes, what) in [
            (&self.plan, plan.encode(), "the hibernating monitor's plan"),
            (&self.state, state, "the hibernating monitor's state"),
        ] {
            if let Err(error) = fill_and_seal(fd, &bytes, what) {
                tracing::error!(%error, "cannot save the monitor; aborting (the ISC ends with its monitor)");
                std::process::abort();
            }
            keep_fd(fd.as_raw_fd());
        }
        keep_fd(self.exe.as_raw_fd());
        let env = environment(&[
            (crate::hibernate::PLAN_ENV, self.plan.as_raw_fd()),
            (RESUME_ENV, self.state.as_raw_fd()),
        ]);
        // A plan the tiny monitor would refuse would wake it at once, every quiet second:
        // resume the whole monitor instead, which then stays whole.
        let error = match plan.check() {
            Ok(()) => execveat(self.tiny.as_raw_fd(), &env).to_string(),
            Err(e) => e.to_string(),
        };
        tracing::error!(%error, "the monitor cannot hibernate; resuming the whole monitor, which stays whole");
        let mut env = env;
        env.push(CString::new(format!("{STAY_WHOLE_ENV}=1")).expect("no NUL"));
        let error = execveat(self.exe.as_raw_fd(), &env);
        tracing::error!(%error, "exec of isc to resume the monitor failed; aborting (the ISC ends with its monitor)");
        std::process::abort()
    }
}

/// This process's environment without any previous hibernation's variables, plus `vars`.
fn environment(vars: &[(&str, RawFd)]) -> Vec<CString> {
    let mut env: Vec<CString> = std::env::vars_os()
        .filter(|(k, _)| !vars.iter().any(|(n, _)| k == n))
        .filter_map(|(k, v)| {
            let mut kv: OsString = k;
            kv.push("=");
            kv.push(v);
            CString::new(kv.into_vec()).ok()
        })
        .collect();
    env.extend(vars.iter().map(|(k, fd)| CString::new(format!("{k}={fd}")).expect("no NUL")));
    env
}

/// execveat(fd, "", this process's argv, env, AT_EMPTY_PATH); returns only on failure.
fn execveat(fd: RawFd, env: &[CString]) -> io::Error {
    let args: Vec<CString> =
        std::env::args_os().filter_map(|a| CString::new(a.into_vec()).ok()).collect();
    let mut argv: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut envp: Vec<*const libc::c_char> = env.iter().map(|e| e.as_ptr()).collect();
    envp.push(std::ptr::null());
    // SAFETY: execveat(2) with AT_EMPTY_PATH on a descriptor we hold and NULL-terminated
    // arrays of NUL-terminated strings that outlive the call; on success it does not return.
    unsafe {
        libc::syscall(
            libc::SYS_execveat,
            fd,
            c"".as_ptr(),
            argv.as_ptr(),
            envp.as_ptr(),
            libc::AT_EMPTY_PATH,
        )
    };
    io::Error::last_os_error()
}

/// The state saved by the previous image, if this process is a woken monitor: reads it (and
/// closes its memfd) and removes the hibernation's variables from the environment, so nothing
/// this process starts inherits them. Call first thing, while single-threaded, and only in a
/// process started as a monitor (`isc run`, `isc dock monitor`).
pub fn take_saved() -> Option<Result<SavedMonitor, MonitorSleepError>> {
    let value = std::env::var_os(RESUME_ENV)?;
    let stay_whole = std::env::var_os(STAY_WHOLE_ENV).is_some();
    std::env::remove_var(RESUME_ENV);
    std::env::remove_var(STAY_WHOLE_ENV);
    std::env::remove_var(crate::hibernate::PLAN_ENV);
    let fd_text = value.to_string_lossy().into_owned();
    let bad = |detail: String| MonitorSleepError::Saved { fd: fd_text.clone(), detail };
    let result = (|| {
        let fd: RawFd = fd_text.parse().map_err(|_| bad("not a descriptor number".into()))?;
        // SAFETY: the previous image named this descriptor for us alone.
        let fd = unsafe { adopt_fd(fd) }.map_err(|e| bad(e.to_string()))?;
        // Only a sealed memfd (what `Prepared::exec` leaves) is a saved state: not a file
        // someone's environment happened to name.
        let sealed =
            libc::F_SEAL_WRITE | libc::F_SEAL_GROW | libc::F_SEAL_SHRINK | libc::F_SEAL_SEAL;
        // SAFETY: fcntl(F_GET_SEALS) on a descriptor we own.
        let seals = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
        if seals < 0 || seals & sealed != sealed {
            return Err(bad("not a sealed memfd left by a hibernating monitor".into()));
        }
        let mut file = std::fs::File::from(fd);
        // The previous image wrote it through this same open file: its offset is at the end.
        std::io::Seek::rewind(&mut file).map_err(|e| bad(e.to_string()))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(|e| bad(e.to_string()))?;
        let mut saved: SavedMonitor =
            serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
        saved.monitor_hibernation_works = !stay_whole;
        for fd in [saved.plan_fd, saved.exe_fd] {
            // SAFETY: named by the saved state as ours to close.
            drop(unsafe { adopt_fd(fd) });
        }
        Ok(saved)
    })();
    Some(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn take_with(fd: &OwnedFd) -> MonitorSleepError {
        std::env::set_var(RESUME_ENV, fd.as_raw_fd().to_string());
        let got = take_saved().expect("the variable is set");
        assert!(std::env::var_os(RESUME_ENV).is_none(), "the variable is removed");
        match got {
            Ok(_) => panic!("not a saved state"),
            Err(e) => e,
        }
    }

    /// Only a sealed memfd is taken for a saved state, whatever a caller's environment names;
    /// without the variable nothing is resumed. (One test: it sets a process-wide variable.)
    #[test]
    fn only_a_sealed_memfd_is_a_saved_state() {
        assert!(take_saved().is_none());
        let unsealed = data_memfd(c"test-state", "a test state").unwrap();
        let raw = unsealed.as_raw_fd();
        let e = take_with(&unsealed).to_string();
        std::mem::forget(unsealed);
        assert!(e.contains("not a sealed memfd"), "{e}");
        // SAFETY: fcntl(F_GETFD) on a number: the descriptor was closed by take_saved.
        assert_eq!(unsafe { libc::fcntl(raw, libc::F_GETFD) }, -1, "closed after the refusal");
        let sealed = data_memfd(c"test-state", "a test state").unwrap();
        fill_and_seal(&sealed, b"{\"spec\": 1}", "a test state").unwrap();
        let e = take_with(&sealed).to_string();
        std::mem::forget(sealed);
        assert!(
            e.contains("cannot be read") && !e.contains("sealed"),
            "a sealed one is parsed: {e}"
        );
    }
}
