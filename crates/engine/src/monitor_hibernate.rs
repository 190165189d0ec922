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
//! hooks cannot (e.g. egress host names or volumes, for now) stays whole, as before.
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
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::hibernate::{HibernateError, MonitorPlan};
use crate::logfile::Output;
use crate::spec::IscSpec;

/// The environment variable naming the saved state's descriptor for the whole isc woken back.
pub const RESUME_ENV: &str = "ISC_MONITOR_RESUME";

#[derive(Debug, thiserror::Error)]
pub enum MonitorSleepError {
    #[error("the hibernating monitor program: {0}")]
    Program(#[from] HibernateError),
    #[error("opening this isc binary to wake with: {0}")]
    Exe(io::Error),
    #[error("saving the monitor's state: {0}")]
    Save(io::Error),
    #[error("the saved monitor state (fd {fd}) cannot be read: {detail}")]
    Saved { fd: String, detail: String },
}

/// An audit socket the hibernating monitor reads itself: records it can prove are another
/// ISC's (or the host's) are dropped there, anything else wakes the whole monitor.
#[derive(Debug, Clone, Copy)]
pub struct AuditWatch {
    pub fd: RawFd,
    pub uid_lo: u32,
    pub uid_hi: u32,
    pub pidns_ino: u64,
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
    /// The hook must run again by then (e.g. an audit sync that is due).
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
        self.audit = self.audit.or(other.audit);
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
/// here: the caller rebuilds its hooks from [`SavedMonitor::hooks`] before [`crate::monitor::resume`].
#[derive(Debug, Serialize, Deserialize)]
pub struct SavedMonitor {
    pub spec: IscSpec,
    pub state_dir: PathBuf,
    pub uid_base: u32,
    pub uid_slots: u32,
    pub seccomp_log: bool,
    pub output: Output,
    pub manifest: Option<serde_json::Value>,
    pub spec_hash: Option<String>,
    pub defer_mount_teardown: bool,
    /// Wall-clock start (ms since the epoch) and the run's length when it was saved; with
    /// `saved_mono_ms` the resumed monitor's run length stays monotonic.
    pub start_ms: u64,
    pub run_ms: u64,
    pub saved_mono_ms: u64,
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
        let plan = sealable_memfd(c"isc-monitor-plan").map_err(MonitorSleepError::Save)?;
        let state = sealable_memfd(c"isc-monitor-state").map_err(MonitorSleepError::Save)?;
        Ok(Prepared { tiny, exe, plan, state })
    }

    /// Saves `saved`, then execs the tiny monitor with `plan`. Never returns: see the module.
    pub(crate) fn exec(self, mut saved: SavedMonitor, mut plan: MonitorPlan) -> ! {
        plan.exe_fd = self.exe.as_raw_fd();
        saved.plan_fd = self.plan.as_raw_fd();
        saved.exe_fd = self.exe.as_raw_fd();
        let state = serde_json::to_vec(&saved).expect("the saved state serializes");
        for (fd, bytes, what) in
            [(&self.plan, plan.encode(), "plan"), (&self.state, state, "state")]
        {
            if let Err(error) = fill_and_seal(fd, &bytes) {
                tracing::error!(%error, what, "cannot save the hibernating monitor's {what}; aborting (the ISC ends with its monitor)");
                std::process::abort();
            }
            keep_fd(fd.as_raw_fd());
        }
        keep_fd(self.exe.as_raw_fd());
        let env = environment(&[
            (crate::hibernate::PLAN_ENV, self.plan.as_raw_fd()),
            (RESUME_ENV, self.state.as_raw_fd()),
        ]);
        let error = execveat(self.tiny.as_raw_fd(), &env);
        tracing::error!(%error, "exec of the hibernating monitor failed; resuming the whole monitor");
        let error = execveat(self.exe.as_raw_fd(), &env);
        tracing::error!(%error, "exec of isc to resume the monitor failed; aborting (the ISC ends with its monitor)");
        std::process::abort()
    }
}

fn sealable_memfd(name: &std::ffi::CStr) -> io::Result<OwnedFd> {
    // SAFETY: memfd_create with a NUL-terminated name; the result is checked.
    let raw =
        unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// Writes `bytes` at offset 0 and seals the memfd against any change.
fn fill_and_seal(fd: &OwnedFd, bytes: &[u8]) -> io::Result<()> {
    let mut off = 0usize;
    while off < bytes.len() {
        // SAFETY: pwrite(2) from a live slice to our memfd.
        let n = unsafe {
            libc::pwrite(
                fd.as_raw_fd(),
                bytes[off..].as_ptr().cast(),
                bytes.len() - off,
                off as i64,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        off += n as usize;
    }
    let seals = libc::F_SEAL_WRITE | libc::F_SEAL_GROW | libc::F_SEAL_SHRINK | libc::F_SEAL_SEAL;
    // SAFETY: fcntl(F_ADD_SEALS) on our memfd.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
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
    std::env::remove_var(RESUME_ENV);
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
        let saved: SavedMonitor = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
        for fd in [saved.plan_fd, saved.exe_fd] {
            // SAFETY: named by the saved state as ours to close.
            drop(unsafe { adopt_fd(fd) });
        }
        Ok(saved)
    })();
    Some(result)
}
