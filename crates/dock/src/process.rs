//! Starting detached monitors and watching them through pidfds.
//!
//! The Dock never forks to run Rust code (it is multi-threaded tokio): it re-executes the `isc`
//! binary (`isc dock monitor --request JSON`) with `std::process::Command`, whose child only
//! runs `setsid` before `execve`. The monitor gets its own session (no signal from the Dock's
//! terminal or process group reaches it), stdin `/dev/null`, stdout/stderr to
//! `logs/<name>/monitor.log`, and no parent-death signal, so a SIGKILLed Dock leaves every ISC
//! running. Exits are observed with pidfd_open(2) + poll, which works the same for the Dock's own
//! children and for monitors adopted after a Dock restart (those are not its children).

use std::ffi::OsString;
use std::fs::{self, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use crate::records::MonitorRequest;

/// How the Dock starts a monitor. The CLI supplies [`ExecLauncher`]; tests may fake it.
pub trait Launcher: Send + Sync + 'static {
    /// Starts a detached monitor for `req`; returns its pid.
    fn spawn(&self, req: &MonitorRequest) -> io::Result<i32>;
}

/// Re-executes `exe args… --request JSON`.
#[derive(Debug, Clone)]
pub struct ExecLauncher {
    pub exe: PathBuf,
    /// Arguments before `--request`, e.g. `--root R --state S dock monitor`.
    pub args: Vec<OsString>,
}

impl Launcher for ExecLauncher {
    fn spawn(&self, req: &MonitorRequest) -> io::Result<i32> {
        fs::create_dir_all(&req.log_dir)?;
        let log =
            OpenOptions::new().create(true).append(true).open(req.log_dir.join("monitor.log"))?;
        let mut cmd = Command::new(&self.exe);
        cmd.args(&self.args)
            .arg("--request")
            .arg(serde_json::to_string(req).map_err(io::Error::other)?)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // SAFETY: setsid(2) is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        // The `Child` is dropped without waiting: the pidfd watcher reaps it (see `wait_exit`).
        let child = cmd.spawn()?;
        Ok(child.id() as i32)
    }
}

/// A pidfd for `pid` (pidfd_open(2), Linux 5.3).
pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; a non-negative result is a new fd we own.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh fd from the kernel.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// A pidfd for the monitor of `name`'s run `run_id` if that process still lives. The pid comes
/// from the Dock's record and may have been reused since, so the process's command line must
/// be that monitor's (`dock monitor --request {…"name":NAME,"run_id":N…}`); the pidfd taken
/// before the check pins the process, so it cannot change identity afterwards.
pub fn monitor_alive(pid: i32, name: &str, run_id: u64) -> Option<OwnedFd> {
    let fd = pidfd_open(pid).ok()?;
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let text = String::from_utf8_lossy(&cmdline);
    let ours = text.contains("dock\0monitor\0")
        && text.contains(&format!("\"name\":{}", serde_json::to_string(name).ok()?))
        && text.contains(&format!("\"run_id\":{run_id},"));
    (ours && !has_exited(&fd)).then_some(fd)
}

/// Whether the process behind `pidfd` has ended (non-blocking).
pub fn has_exited(pidfd: &OwnedFd) -> bool {
    let mut p = libc::pollfd { fd: pidfd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    // SAFETY: zero-timeout poll on one valid fd.
    unsafe { libc::poll(&mut p, 1, 0) == 1 }
}

/// Waits until the process behind `pidfd` ends, then reaps it if it is our child (an adopted
/// monitor is not: waitid then fails with ECHILD, which is expected).
pub async fn wait_exit(pidfd: OwnedFd) -> io::Result<()> {
    // SAFETY: an OwnedFd moved into the AsyncFd stays open and the same fd until it drops.
    let afd = unsafe { AsyncFd::register_with_interest(pidfd, Interest::READABLE) }
        .map_err(|e| e.into_parts().1)?;
    let guard = afd.readable().await?;
    drop(guard);
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: waitid(P_PIDFD) with WNOHANG on a pidfd we own; `info` is written by the kernel.
    unsafe {
        libc::waitid(
            libc::P_PIDFD,
            afd.get_ref().as_raw_fd() as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG,
        )
    };
    Ok(())
}

/// Sends `sig` through a pidfd (no pid-reuse race).
pub fn signal(pidfd: &OwnedFd, sig: i32) -> io::Result<()> {
    // SAFETY: pidfd_send_signal(2) on a pidfd we own, no siginfo.
    let rc =
        unsafe { libc::syscall(libc::SYS_pidfd_send_signal, pidfd.as_raw_fd(), sig, 0usize, 0u32) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
