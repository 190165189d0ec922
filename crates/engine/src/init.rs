//! The child side: hardening in DESIGN.md §3 order, then PID 1 of the ISC.
//!
//! PID 1 carries exactly the service's confinement. It reaps every zombie (orphans re-parent
//! to it), forwards signals, forks probe children on request, and exits with the service's
//! status. It never execs, so it holds no file from the image.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::channel::{Channel, FromInit, ToInit};
use crate::creds;
use crate::lsm::{self, LandlockPolicy};
use crate::rootfs;
use crate::seccomp::{self, BpfProgram};
use crate::spec::IscSpec;
use crate::syscall::LinuxSyscall;

/// Everything the child needs, prepared by the monitor before clone.
pub struct ChildContext<'a> {
    pub spec: &'a IscSpec,
    pub channel: &'a Channel,
    pub stdout: RawFd,
    pub stderr: RawFd,
    pub seccomp: &'a BpfProgram,
    pub seccomp_log: bool,
    /// `clone3` created the network namespace (see `netns`); else it came prepared, `lo` up.
    pub own_netns: bool,
}

/// prctl(2) PR_SET_MDWE and its flag (include/uapi/linux/prctl.h).
const PR_SET_MDWE: libc::c_int = 65;
const PR_MDWE_REFUSE_EXEC_GAIN: libc::c_ulong = 1;

/// Fd number of the control channel inside the child (0–2 are the service's stdio).
pub(crate) const CHANNEL_FD: RawFd = 3;

/// Entry point of the cloned child. Never returns.
pub fn child_main(ctx: ChildContext<'_>) -> ! {
    // Die with the monitor: the kernel then kills the whole PID namespace.
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
    let channel = match setup_fds(&ctx) {
        Ok(c) => c,
        // No channel to report on: exit with a status the monitor maps to "setup failed".
        // SAFETY: terminating the child.
        Err(_) => unsafe { libc::_exit(125) },
    };
    match harden(&ctx, &channel) {
        Ok(()) => pid1_loop(ctx.spec, &channel),
        Err((step, error)) => {
            let _ = channel.send(&FromInit::SetupFailed { step: step.into(), error });
            // SAFETY: terminating the child after reporting.
            unsafe { libc::_exit(125) }
        }
    }
}

/// stdin = /dev/null, stdout/stderr = the monitor's pipes, fd 3 = channel, nothing else.
fn setup_fds(ctx: &ChildContext<'_>) -> io::Result<Channel> {
    let devnull = c"/dev/null";
    // SAFETY: standard fd juggling on fds we own; close_range closes every other inherited fd
    // (the monitor's listener, signalfd, pipe read ends) so none reaches the ISC.
    unsafe {
        let null = libc::open(devnull.as_ptr(), libc::O_RDONLY);
        if null < 0 {
            return Err(io::Error::last_os_error());
        }
        let chan = libc::fcntl(ctx.channel.raw_fd(), libc::F_DUPFD_CLOEXEC, 10);
        if chan < 0
            || libc::dup2(null, 0) < 0
            || libc::dup2(ctx.stdout, 1) < 0
            || libc::dup2(ctx.stderr, 2) < 0
        {
            return Err(io::Error::last_os_error());
        }
        if libc::dup3(chan, CHANNEL_FD, libc::O_CLOEXEC) < 0 {
            return Err(io::Error::last_os_error());
        }
        libc::close_range(CHANNEL_FD as u32 + 1, u32::MAX, 0);
        Ok(Channel::from_raw(CHANNEL_FD))
    }
}

type StepError = (&'static str, String);

fn step<T, E: std::fmt::Display>(name: &'static str, r: Result<T, E>) -> Result<T, StepError> {
    r.map_err(|e| (name, e.to_string()))
}

fn os_step(name: &'static str, rc: libc::c_int) -> Result<(), StepError> {
    if rc != 0 {
        return Err((name, io::Error::last_os_error().to_string()));
    }
    Ok(())
}

fn harden(ctx: &ChildContext<'_>, channel: &Channel) -> Result<(), StepError> {
    let spec = ctx.spec;
    match step("waiting for the monitor", channel.recv::<ToInit>())? {
        Some(ToInit::Go) => {}
        other => return Err(("waiting for the monitor", format!("unexpected message {other:?}"))),
    }
    crate::timing::mark("child: released by the monitor");
    // Become root of the new user namespace: until now our ids were the host's (unmapped
    // inside), and files we create (the /dev mount targets) would get EOVERFLOW.
    // SAFETY: id syscalls; we hold CAP_SETUID/CAP_SETGID in our user namespace.
    os_step("becoming root of the user namespace", unsafe { libc::setresgid(0, 0, 0) })?;
    // SAFETY: as above.
    os_step("becoming root of the user namespace", unsafe { libc::setresuid(0, 0, 0) })?;
    if ctx.own_netns {
        // clone3 made this namespace, owned by our user namespace: ours to bring up.
        step("bringing up the loopback interface", crate::netns::bring_up_loopback())?;
        crate::timing::mark("child: loopback up");
    }
    step("preparing the root filesystem", rootfs::prepare_rootfs(&LinuxSyscall, spec))?;
    crate::timing::mark("child: root filesystem prepared");
    join_cgroups(channel)?;
    crate::timing::mark("child: joined the v1 cgroups");
    // The cgroup namespace is created only now, after we joined the ISC's cgroup, so its root
    // is that cgroup and the host's tree stays invisible.
    // SAFETY: unshare with a namespace flag; we hold CAP_SYS_ADMIN in our user namespace.
    os_step("creating the cgroup namespace", unsafe { libc::unshare(libc::CLONE_NEWCGROUP) })?;
    let workdir = CString::new(spec.workdir.as_os_str().as_bytes()).unwrap_or_default();
    // SAFETY: NUL-terminated path.
    if unsafe { libc::chdir(workdir.as_ptr()) } != 0 {
        return Err((
            "entering the working directory",
            format!("{}: {}", spec.workdir.display(), io::Error::last_os_error()),
        ));
    }
    step("setting rlimits", apply_rlimits(spec))?;
    step("making PID 1 non-dumpable", creds::set_non_dumpable())?;
    // Files the service creates are not world-readable unless it says so (umask(2)).
    // SAFETY: umask only changes this process's file-creation mask.
    unsafe { libc::umask(0o027) };
    // Memory-Deny-Write-Execute: no mapping may become both writable and executable, which
    // turns most code-injection exploits into a SIGSEGV (prctl(2) PR_SET_MDWE, Linux 6.3+).
    // Inherited by the service across fork and execve.
    // SAFETY: prctl with integer arguments.
    os_step("enabling memory-deny-write-execute", unsafe {
        libc::prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0)
    })?;
    let mut keep = step("parsing capabilities", creds::parse_capabilities(&spec.capabilities))?;
    if spec.weakening.keep_cap_sys_admin {
        keep.insert(caps::Capability::CAP_SYS_ADMIN);
    }
    step("dropping to the service user", creds::drop_to_service(spec.uid, spec.gid, &keep))?;
    crate::timing::mark("child: rlimits, MDWE, dropped to the service user");
    if !spec.weakening.no_new_privs_off {
        step("setting no_new_privs", creds::set_no_new_privs())?;
    }
    if !spec.weakening.no_landlock {
        let policy = LandlockPolicy {
            writable: spec.writable_paths(),
            tcp_bind: spec.tcp_bind_ports.clone(),
            tcp_connect: spec.tcp_connect_ports.clone(),
        };
        step("applying Landlock", lsm::restrict(&policy))?;
    }
    crate::timing::mark("child: Landlock applied");
    if !spec.weakening.no_seccomp {
        step("loading the seccomp filter", seccomp::install(ctx.seccomp, ctx.seccomp_log))?;
    }
    crate::timing::mark("child: seccomp loaded");
    Ok(())
}

/// Waits for the monitor's `Proceed` and writes "0" (this thread, the only one of this
/// process) into each cgroup v1 `tasks` file it attached. Before `Proceed` the monitor was
/// creating those cgroups while we built our root.
fn join_cgroups(channel: &Channel) -> Result<(), StepError> {
    let (msg, fds) = step("waiting for the cgroup", crate::fdpass::recv_with_fds(channel))?;
    match msg {
        Some(ToInit::Proceed) => {}
        other => return Err(("waiting for the cgroup", format!("unexpected message {other:?}"))),
    }
    for fd in fds {
        // SAFETY: write of a 1-byte literal to a descriptor we own; closed when `fd` drops.
        let rc = unsafe { libc::write(fd.as_raw_fd(), c"0".as_ptr().cast(), 1) };
        os_step("joining the ISC's cgroup", if rc == 1 { 0 } else { -1 })?;
    }
    Ok(())
}

fn apply_rlimits(spec: &IscSpec) -> io::Result<()> {
    let r = &spec.rlimits;
    let mut limits = vec![(libc::RLIMIT_CORE, 0u64), (libc::RLIMIT_NOFILE, r.nofile)];
    limits.extend(r.nproc.map(|v| (libc::RLIMIT_NPROC, v)));
    limits.extend(r.memlock.map(|v| (libc::RLIMIT_MEMLOCK, v)));
    limits.extend(r.stack.map(|v| (libc::RLIMIT_STACK, v)));
    for (res, v) in limits {
        let lim = libc::rlimit { rlim_cur: v, rlim_max: v };
        // SAFETY: setrlimit reads the struct.
        if unsafe { libc::setrlimit(res, &lim) } != 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(e.kind(), format!("resource {res} = {v}: {e} (the host's hard limit is lower; fix: lower the value in [resources])")));
        }
    }
    Ok(())
}

/// Signals PID 1 handles through a signalfd (they stay blocked, so nothing is lost).
fn handled_signals() -> libc::sigset_t {
    // SAFETY: sigset manipulation on a local value.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [
            libc::SIGCHLD,
            libc::SIGTERM,
            libc::SIGINT,
            libc::SIGHUP,
            libc::SIGQUIT,
            libc::SIGUSR1,
            libc::SIGUSR2,
        ] {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

/// The setup's heap (mount paths, the policy, decoded messages) is garbage once the service
/// runs: give its free pages back (malloc_trim(3)), so an idle PID 1 keeps only what it copied
/// to write; and unmap the code the setup ran, so its page tables go too (`idle`).
fn release_idle() {
    crate::idle::release_heap();
    // Best effort: a failure only leaves the pages mapped.
    let _ = crate::idle::release_code_pages();
}

/// Blocks the signals PID 1 handles and returns a signalfd for them.
fn signal_fd() -> RawFd {
    let set = handled_signals();
    // SAFETY: blocking signals for this thread, then a signalfd for them.
    unsafe {
        libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        libc::signalfd(-1, &set, libc::SFD_CLOEXEC)
    }
}

fn pid1_loop(spec: &IscSpec, channel: &Channel) -> ! {
    // Before the fork: no signal for the service may arrive unhandled.
    let sfd = signal_fd();
    let service = match spawn_service(spec) {
        Ok(pid) => {
            crate::timing::mark("child: service forked and exec'd");
            let _ = channel.send(&FromInit::ServiceStarted { pid });
            pid
        }
        Err(errno) => {
            let _ = channel.send(&FromInit::ExecFailed { path: spec.exec[0].clone(), errno });
            // SAFETY: terminating PID 1 (kills the namespace).
            unsafe { libc::_exit(127) }
        }
    };
    supervise(service, channel, sfd, Probes::default())
}

/// The whole PID 1 exec'd back from the tiny init (`hibernate::resume_pid1`): the service
/// runs already; a child that ended during the exec is reaped at once.
pub(crate) fn supervise_resumed(service: i32, channel: &Channel) -> ! {
    let sfd = signal_fd();
    let mut probes = Probes::default();
    reap(service, channel, &mut probes);
    supervise(service, channel, sfd, probes)
}

fn supervise(service: i32, channel: &Channel, sfd: RawFd, mut probes: Probes) -> ! {
    let mut fds = [
        libc::pollfd { fd: sfd, events: libc::POLLIN, revents: 0 },
        libc::pollfd { fd: channel.raw_fd(), events: libc::POLLIN, revents: 0 },
    ];
    // Released after each quiet second that follows activity (off the start path: a
    // short-lived service never pays for it); then PID 1 waits without a timeout.
    let mut released = false;
    loop {
        let timeout = if released { -1 } else { crate::idle::QUIET_MS };
        // SAFETY: poll over two valid fds.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as _, timeout) };
        if n == 0 && !released {
            release_idle();
            released = true;
            continue;
        }
        released = false;
        if n < 0 {
            continue;
        }
        if fds[0].revents & libc::POLLIN != 0 {
            // SAFETY: a plain C struct for which all-zero bytes are a valid value.
            let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
            // SAFETY: reading one siginfo record into a properly sized buffer.
            let r = unsafe {
                libc::read(
                    sfd,
                    (&mut info as *mut libc::signalfd_siginfo).cast(),
                    std::mem::size_of::<libc::signalfd_siginfo>(),
                )
            };
            if r > 0 {
                let signo = info.ssi_signo as i32;
                if signo == libc::SIGCHLD {
                    reap(service, channel, &mut probes);
                } else {
                    // SAFETY: forwarding a signal to our own child.
                    unsafe { libc::kill(service, signo) };
                }
            }
        }
        if fds[1].revents & libc::POLLIN != 0 {
            match crate::fdpass::recv_with_fds::<ToInit>(channel) {
                Ok((Some(ToInit::Signal { signo }), _)) => {
                    // SAFETY: forwarding a signal to our own child.
                    unsafe { libc::kill(service, signo) };
                }
                Ok((Some(ToInit::Probe { id, name }), _)) => {
                    probes.queue.push_back((id, name));
                    probes.pump(channel);
                }
                Ok((Some(ToInit::Hibernate), exe)) => {
                    if let Some(exe) = exe.first() {
                        // Probe children still running are reaped by the tiny init.
                        let e = crate::hibernate::exec_tiny(exe.as_raw_fd(), service);
                        let errno = e.raw_os_error().unwrap_or(libc::EIO);
                        let _ = channel.send(&FromInit::HibernateFailed { errno });
                    }
                }
                Ok((Some(ToInit::Go | ToInit::Proceed | ToInit::Wake), _)) | Err(_) => {}
                Ok((None, _)) => {
                    // The monitor is gone: nothing may run unsupervised.
                    // SAFETY: terminating PID 1 kills every process in the namespace.
                    unsafe { libc::_exit(137) }
                }
            }
        } else if fds[1].revents & (libc::POLLHUP | libc::POLLERR) != 0 {
            // SAFETY: as above.
            unsafe { libc::_exit(137) }
        }
    }
}

/// Reaps every exited child; when the service is among them, reports and exits.
fn reap(service: i32, channel: &Channel, probes: &mut Probes) {
    loop {
        let mut st = 0;
        // SAFETY: waitpid on any child, non-blocking.
        let pid = unsafe { libc::waitpid(-1, &mut st, libc::WNOHANG) };
        if pid <= 0 {
            probes.pump(channel);
            return;
        }
        probes.running.remove(&pid);
        if pid == service {
            let (code, signal) = if libc::WIFEXITED(st) {
                (Some(libc::WEXITSTATUS(st)), None)
            } else {
                (None, Some(libc::WTERMSIG(st)))
            };
            let alone = reap_all_but_live(probes);
            if alone {
                // Nothing of the ISC can act any more: mark the end of its denials in the
                // kernel's audit queue before the monitor hears of it, so its drain is over as
                // soon as this record is delivered (no round trip of its own).
                seccomp::emit_audit_barrier();
            }
            let _ = channel.send(&FromInit::ServiceExited { code, signal, alone });
            let status = code.unwrap_or_else(|| 128 + signal.unwrap_or(0));
            // SAFETY: PID 1 exits with the service's status.
            unsafe { libc::_exit(status) }
        }
    }
}

/// Reaps whatever else has exited; true when no child is left at all (ECHILD). Every process
/// of the ISC descends from PID 1 (orphans re-parent to it), so then PID 1 is the last one.
fn reap_all_but_live(probes: &mut Probes) -> bool {
    loop {
        let mut st = 0;
        // SAFETY: waitpid on any child, non-blocking.
        let pid = unsafe { libc::waitpid(-1, &mut st, libc::WNOHANG) };
        if pid > 0 {
            probes.running.remove(&pid);
            continue;
        }
        return pid < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ECHILD);
    }
}

/// Probe children run at most this many at a time: they count against the ISC's pids limit
/// like any process, and a verify asks for ~50 probes at once.
const MAX_PROBES_IN_FLIGHT: usize = 8;

/// Pending probe requests and the probe children running now.
#[derive(Default)]
struct Probes {
    queue: std::collections::VecDeque<(u64, String)>,
    running: std::collections::HashSet<i32>,
}

impl Probes {
    /// Forks queued probes while there is room; a fork refused by the pids limit (EAGAIN) is
    /// retried when a running probe child exits, so no request is ever dropped.
    fn pump(&mut self, channel: &Channel) {
        while self.running.len() < MAX_PROBES_IN_FLIGHT {
            let Some((id, name)) = self.queue.pop_front() else { return };
            // SAFETY: fork of the single-threaded PID 1; the child runs one probe and _exits.
            let pid = unsafe { libc::fork() };
            if pid == 0 {
                let outcome = crate::probe::run(&name);
                let _ = channel.send(&FromInit::ProbeResult { id, outcome });
                // SAFETY: terminating the probe child.
                unsafe { libc::_exit(0) }
            }
            if pid < 0 {
                self.queue.push_front((id, name));
                if self.running.is_empty() {
                    // Nothing of ours will exit to retry on: answer instead of hanging.
                    let (id, name) = self.queue.pop_front().expect("just pushed");
                    let errno = io::Error::last_os_error().raw_os_error();
                    let outcome = crate::probe::ProbeOutcome {
                        name,
                        ok: false,
                        errno,
                        value: serde_json::json!({"probe_error": "PID 1 could not fork a probe child"}),
                    };
                    let _ = channel.send(&FromInit::ProbeResult { id, outcome });
                    continue;
                }
                return;
            }
            self.running.insert(pid);
        }
    }
}

/// Spawns the service; returns its pid, or the errno of a failed spawn or execve.
fn spawn_service(spec: &IscSpec) -> Result<i32, i32> {
    let to_c = |s: &str| CString::new(s).unwrap_or_default();
    let argv: Vec<CString> = spec.exec.iter().map(|s| to_c(s)).collect();
    let envp: Vec<CString> = spec.env.iter().map(|(k, v)| to_c(&format!("{k}={v}"))).collect();
    let mut argv_p: Vec<*const libc::c_char> = argv.iter().map(|c| c.as_ptr()).collect();
    argv_p.push(std::ptr::null());
    let mut envp_p: Vec<*const libc::c_char> = envp.iter().map(|c| c.as_ptr()).collect();
    envp_p.push(std::ptr::null());
    let path = to_c(&spec.exec[0]);
    // posix_spawn, not fork + execve: glibc spawns with CLONE_VM | CLONE_VFORK (no copy of
    // PID 1's page tables, which map the whole isc binary) and reports a failed execve as its
    // return value, so no pipe is needed. The child starts with every signal unblocked (PID 1
    // blocks them for its signalfd) in a new session; dispositions are already the defaults.
    // SAFETY: the attr is initialised before use and destroyed after; every pointer handed to
    // posix_spawn (path, NULL-terminated argv and envp of live CStrings) outlives the call.
    unsafe {
        let mut attr: libc::posix_spawnattr_t = std::mem::zeroed();
        let rc = libc::posix_spawnattr_init(&mut attr);
        if rc != 0 {
            return Err(rc);
        }
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        let mut rc = libc::posix_spawnattr_setsigmask(&mut attr, &empty);
        if rc == 0 {
            let flags = libc::POSIX_SPAWN_SETSIGMASK as libc::c_short | libc::POSIX_SPAWN_SETSID;
            rc = libc::posix_spawnattr_setflags(&mut attr, flags);
        }
        let mut pid: libc::pid_t = 0;
        if rc == 0 {
            rc = libc::posix_spawn(
                &mut pid,
                path.as_ptr(),
                std::ptr::null(),
                &attr,
                argv_p.as_ptr() as *const *mut libc::c_char,
                envp_p.as_ptr() as *const *mut libc::c_char,
            );
        }
        libc::posix_spawnattr_destroy(&mut attr);
        if rc != 0 {
            return Err(rc);
        }
        Ok(pid)
    }
}

/// Path of the service executable as seen from inside the image (for error messages).
pub fn describe_exec_error(path: &str, errno: i32, rootfs: &Path) -> String {
    let err = io::Error::from_raw_os_error(errno);
    match errno {
        libc::ENOENT => format!(
            "the service executable {path} does not exist in the image ({}); fix: add it to [image] paths or correct [service] exec",
            rootfs.display()
        ),
        libc::EACCES => format!("the service executable {path} is not executable inside the ISC: {err}; fix: check its mode and that it is not on a noexec tmpfs"),
        _ => format!("starting the service {path} failed: {err}"),
    }
}
