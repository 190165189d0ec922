//! A hibernating PID 1: once the ISC has been quiet, PID 1 execs a 4 KiB program
//! (`tiny/init.rs`) that reaps, forwards signals and reports the service's end, and the monitor
//! execs the whole isc back into PID 1 when it needs more (probes). docs/engine.md, "A
//! hibernating PID 1".
//!
//! Why: PID 1 is a `clone3` copy of the monitor. While the service runs it keeps its own copy
//! of every heap page and data page it wrote, and page tables for the whole isc binary: ~180 KiB
//! per idle ISC (docs/benchmarks.md, "Idle memory"); the tiny init needs ~16.
//!
//! Both executables reach PID 1 as sealed, **execute-only** memfds created by the monitor
//! (host root):
//! - execute-only: PID 1 cannot read the file, so the exec makes it non-dumpable before its
//!   first instruction (fs/exec.c `would_dump`, `BINPRM_FLAGS_ENFORCE_NONDUMP`). A dumpable
//!   PID 1, even for a moment, could be opened through `/proc/1/mem` by the service (same uid)
//!   and made to forge probe results.
//! - sealed (`F_SEAL_WRITE`, …, `F_SEAL_EXEC`): nobody can change the program PID 1 runs
//!   (runc's CVE-2019-5736 was a writable runtime binary reachable from the container).
//! - a memfd is on an internal mount, which Landlock does not confine (security/landlock/fs.c:
//!   disconnected roots of `MNT_INTERNAL` mounts are allowed), and the ISC's mount namespace
//!   never shows it: no path inside the ISC leads to either program.
//!
//! The monitor hibernates the same way (`monitor_hibernate.rs`): it execs the tiny monitor
//! (`tiny/monitor.rs`) from a sealed, execute-only memfd made here, which sleeps on the
//! descriptors and deadline of a [`MonitorPlan`] and execs the whole isc back with the same
//! argv and environment when anything needs the monitor.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use crate::channel::Channel;

/// The hibernating init, built by `build.rs` from `tiny/init.rs`.
pub const TINY_INIT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/isc-init"));

/// The hibernating monitor, built by `build.rs` from `tiny/monitor.rs`.
pub const TINY_MONITOR: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/isc-monitor"));

/// The variable in the tiny monitor's environment that names its plan: the decimal number of
/// an inherited memfd holding [`MonitorPlan::encode`]. It stays in the environment of the
/// whole isc woken back (the tiny monitor keeps its envp as it came).
pub const PLAN_ENV: &str = "ISC_HIBERNATE_PLAN";

/// `argv[1]` of the whole isc exec'd back into PID 1: `isc __pid1 <service pid>`.
pub const RESUME_ARG: &str = "__pid1";

/// memfd_create(2) `MFD_EXEC` (Linux 6.3): say so, or a `vm.memfd_noexec` host may refuse.
const MFD_EXEC: libc::c_uint = 0x10;
/// memfd_create(2) `MFD_NOEXEC_SEAL` (Linux 6.3): a plan is data, never to be executed.
const MFD_NOEXEC_SEAL: libc::c_uint = 0x08;
/// fcntl(2) `F_SEAL_EXEC` (Linux 6.3): the mode's execute bits can no longer change.
const F_SEAL_EXEC: libc::c_int = 0x20;

/// `what` names the program or file, and whose it is ("PID 1's hibernating init").
#[derive(Debug, thiserror::Error)]
pub enum HibernateError {
    #[error("memfd_create for {what}: {source}")]
    Memfd { what: &'static str, source: io::Error },
    #[error("writing {what} into its memfd: {source}")]
    Fill { what: &'static str, source: io::Error },
    #[error("making {what} execute-only: {source}")]
    Mode { what: &'static str, source: io::Error },
    #[error("sealing {what}: {source}")]
    Seal { what: &'static str, source: io::Error },
    #[error("the hibernating monitor waits on at most {max} descriptors, not {count}")]
    TooManyFds { count: usize, max: usize },
}

/// The tiny init as a sealed, execute-only memfd for `ToInit::Hibernate`.
pub fn tiny_init() -> Result<OwnedFd, HibernateError> {
    sealed_exec_memfd(c"isc-init", "PID 1's hibernating init", |fd| write_all(fd, TINY_INIT))
}

/// The tiny monitor as a sealed, execute-only memfd, for the monitor to exec in place. Its
/// `/proc/PID/exe` reads `/memfd:isc-monitor (deleted)` while it sleeps.
pub fn tiny_monitor() -> Result<OwnedFd, HibernateError> {
    sealed_exec_memfd(c"isc-monitor", "the hibernating monitor", |fd| write_all(fd, TINY_MONITOR))
}

/// What the hibernating monitor (`tiny/monitor.rs`) sleeps on, and what it execs when any of
/// it happens. Every descriptor must be open without `FD_CLOEXEC` when the tiny monitor is
/// exec'd; it closes none of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MonitorPlan {
    /// The whole isc, exec'd on wake: `execveat(exe_fd, "", argv, envp, AT_EMPTY_PATH)`.
    pub exe_fd: RawFd,
    /// -1, or a NETLINK_AUDIT socket bound to the audit multicast group. Records provably of
    /// other ISCs (or the host) are dropped; anything else wakes the monitor, unread.
    pub audit_fd: RawFd,
    /// -1, or the CLOCK_MONOTONIC time in milliseconds at which to wake.
    pub deadline_ms: i64,
    /// The ISC's host uids, `uid_lo..uid_hi`: an audit record with one of them is its own.
    pub uid_lo: u32,
    pub uid_hi: u32,
    /// The inode of the ISC's PID namespace (`/proc/PID/ns/pid`); 0 if unknown, and then
    /// every audit record wakes the monitor.
    pub pidns_ino: u64,
    /// Wake when any is readable or hung up (at most [`MonitorPlan::MAX_FDS`]).
    pub fds: Vec<RawFd>,
    /// Landlock domain ids known to be another's (their creator is not in the ISC's PID
    /// namespace): the tiny monitor drops their access records, which carry no pid. At most
    /// [`MonitorPlan::MAX_DOMAINS`] are encoded (the first ones).
    pub foreign_domains: Vec<u64>,
}

impl MonitorPlan {
    /// "ISM1" read as a little-endian u32.
    pub const MAGIC: u32 = 0x314D_5349;
    pub const VERSION: u32 = 1;
    pub const MAX_FDS: usize = 64;
    pub const MAX_DOMAINS: usize = 64;

    /// The plan as the tiny monitor reads it, little-endian, no padding: magic, version (u32),
    /// exe_fd, audit_fd (i32), deadline_ms (i64), uid_lo, uid_hi (u32), pidns_ino (u64),
    /// n_fds (u32), then the n_fds descriptors (i32), then n_domains (u32) and the n_domains
    /// foreign Landlock domain ids (u64): the first [`MonitorPlan::MAX_DOMAINS`] of
    /// `foreign_domains`. The tiny monitor reads a plan that ends after the descriptors as one
    /// without domains. A plan with more than [`MonitorPlan::MAX_FDS`] descriptors is encoded
    /// as it is, and the tiny monitor wakes at once on it; [`MonitorPlan::plan_memfd`] refuses
    /// it.
    pub fn encode(&self) -> Vec<u8> {
        let domains = &self.foreign_domains[..self.foreign_domains.len().min(Self::MAX_DOMAINS)];
        let mut b = Vec::with_capacity(44 + 4 * self.fds.len() + 4 + 8 * domains.len());
        b.extend_from_slice(&Self::MAGIC.to_le_bytes());
        b.extend_from_slice(&Self::VERSION.to_le_bytes());
        b.extend_from_slice(&self.exe_fd.to_le_bytes());
        b.extend_from_slice(&self.audit_fd.to_le_bytes());
        b.extend_from_slice(&self.deadline_ms.to_le_bytes());
        b.extend_from_slice(&self.uid_lo.to_le_bytes());
        b.extend_from_slice(&self.uid_hi.to_le_bytes());
        b.extend_from_slice(&self.pidns_ino.to_le_bytes());
        b.extend_from_slice(&(self.fds.len() as u32).to_le_bytes());
        for fd in &self.fds {
            b.extend_from_slice(&fd.to_le_bytes());
        }
        b.extend_from_slice(&(domains.len() as u32).to_le_bytes());
        for id in domains {
            b.extend_from_slice(&id.to_le_bytes());
        }
        b
    }

    /// The plan fits the tiny monitor ([`MonitorPlan::MAX_FDS`]); otherwise it would wake at
    /// once, every time.
    pub fn check(&self) -> Result<(), HibernateError> {
        if self.fds.len() > Self::MAX_FDS {
            return Err(HibernateError::TooManyFds { count: self.fds.len(), max: Self::MAX_FDS });
        }
        Ok(())
    }

    /// The encoded plan in a sealed memfd (close-on-exec: clear it before the exec), whose
    /// number goes into the tiny monitor's environment as [`PLAN_ENV`].
    pub fn plan_memfd(&self) -> Result<OwnedFd, HibernateError> {
        self.check()?;
        let fd = data_memfd(c"isc-monitor-plan", "the hibernating monitor's plan")?;
        fill_and_seal(&fd, &self.encode(), "the hibernating monitor's plan")?;
        Ok(fd)
    }
}

/// A close-on-exec memfd for data that is to be sealed (`fill_and_seal`), never executable.
pub fn data_memfd(name: &std::ffi::CStr, what: &'static str) -> Result<OwnedFd, HibernateError> {
    let flags = libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING;
    // SAFETY: memfd_create with a NUL-terminated name; the result is checked.
    let mut raw = unsafe { libc::memfd_create(name.as_ptr(), flags | MFD_NOEXEC_SEAL) };
    if raw < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
        // Before Linux 6.3 there is no MFD_NOEXEC_SEAL.
        // SAFETY: as above.
        raw = unsafe { libc::memfd_create(name.as_ptr(), flags) };
    }
    if raw < 0 {
        return Err(HibernateError::Memfd { what, source: io::Error::last_os_error() });
    }
    // SAFETY: a descriptor memfd_create just returned, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// Writes `bytes` into a fresh `data_memfd` and seals it against any change: nobody, this
/// process included, can alter what the next image reads.
pub fn fill_and_seal(fd: &OwnedFd, bytes: &[u8], what: &'static str) -> Result<(), HibernateError> {
    write_all(fd.as_raw_fd(), bytes).map_err(|source| HibernateError::Fill { what, source })?;
    let seals = libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;
    // SAFETY: fcntl F_ADD_SEALS with an integer argument on our memfd.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals) } != 0 {
        return Err(HibernateError::Seal { what, source: io::Error::last_os_error() });
    }
    Ok(())
}

/// This very isc binary (`/proc/self/exe`, even if replaced on disk since) as a sealed,
/// execute-only memfd for `ToInit::Wake`: PID 1 must run the code that speaks this monitor's
/// protocol.
pub fn whole_isc() -> Result<OwnedFd, HibernateError> {
    sealed_exec_memfd(c"isc", "PID 1's isc executable", copy_self)
}

fn sealed_exec_memfd(
    name: &std::ffi::CStr,
    what: &'static str,
    fill: impl FnOnce(RawFd) -> io::Result<()>,
) -> Result<OwnedFd, HibernateError> {
    let flags = libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING;
    // SAFETY: memfd_create with a NUL-terminated name; the result is checked.
    let mut raw = unsafe { libc::memfd_create(name.as_ptr(), flags | MFD_EXEC) };
    if raw < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
        // Before Linux 6.3 there is no MFD_EXEC, and every memfd is executable.
        // SAFETY: as above.
        raw = unsafe { libc::memfd_create(name.as_ptr(), flags) };
    }
    if raw < 0 {
        return Err(HibernateError::Memfd { what, source: io::Error::last_os_error() });
    }
    // SAFETY: a descriptor memfd_create just returned, owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    fill(fd.as_raw_fd()).map_err(|source| HibernateError::Fill { what, source })?;
    // SAFETY: fchmod on our memfd.
    if unsafe { libc::fchmod(fd.as_raw_fd(), 0o111) } != 0 {
        return Err(HibernateError::Mode { what, source: io::Error::last_os_error() });
    }
    let seals = libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;
    // SAFETY: fcntl F_ADD_SEALS with an integer argument on our memfd.
    let mut rc = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals | F_SEAL_EXEC) };
    if rc != 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
        // SAFETY: as above, without the seal a pre-6.3 kernel does not know.
        rc = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals) };
    }
    if rc != 0 {
        return Err(HibernateError::Seal { what, source: io::Error::last_os_error() });
    }
    Ok(fd)
}

fn write_all(fd: RawFd, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        // SAFETY: write(2) from a live slice.
        let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        bytes = &bytes[n as usize..];
    }
    Ok(())
}

fn copy_self(to: RawFd) -> io::Result<()> {
    let exe = std::fs::File::open("/proc/self/exe")?;
    let mut left = exe.metadata()?.len() as usize;
    while left > 0 {
        // SAFETY: sendfile(2) between two descriptors we hold; the kernel copies the pages.
        let n = unsafe { libc::sendfile(to, exe.as_raw_fd(), std::ptr::null_mut(), left) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "isc binary truncated"));
        }
        left -= n as usize;
    }
    Ok(())
}

/// PID 1 execs `exe` (the tiny init) with the channel kept open; returns only on failure.
pub(crate) fn exec_tiny(exe: RawFd, service: i32) -> io::Error {
    let pid = CString::new(service.to_string()).expect("digits only");
    exec_keeping_channel(exe, &[c"isc-init".as_ptr(), pid.as_ptr()])
}

fn exec_keeping_channel(exe: RawFd, args: &[*const libc::c_char]) -> io::Error {
    let mut argv = args.to_vec();
    argv.push(std::ptr::null());
    let envp: [*const libc::c_char; 1] = [std::ptr::null()];
    let chan = crate::init::CHANNEL_FD;
    // SAFETY: fcntl on our channel fd; execveat(2) with AT_EMPTY_PATH on a descriptor we hold
    // and NULL-terminated arrays of NUL-terminated strings that outlive the call. On success
    // it does not return.
    unsafe {
        libc::fcntl(chan, libc::F_SETFD, 0);
        libc::syscall(
            libc::SYS_execveat,
            exe,
            c"".as_ptr(),
            argv.as_ptr(),
            envp.as_ptr(),
            libc::AT_EMPTY_PATH,
        );
        let e = io::Error::last_os_error();
        libc::fcntl(chan, libc::F_SETFD, libc::FD_CLOEXEC);
        e
    }
}

/// `isc __pid1 <service pid>`: the whole PID 1 again, woken from the tiny init with the
/// channel at fd 3 and the handled signals still blocked. Never returns.
pub fn resume_pid1(service: &std::ffi::OsStr) -> ! {
    // SAFETY: getpid has no memory effects.
    let pid1 = unsafe { libc::getpid() } == 1;
    let service = service.to_str().and_then(|s| s.parse::<i32>().ok()).filter(|p| *p > 0);
    let Some(service) = service.filter(|_| pid1) else {
        eprintln!("isc: `{RESUME_ARG}` is the entry of an ISC's woken PID 1, not a command");
        // SAFETY: terminating; nothing of ours to clean up.
        unsafe { libc::_exit(2) }
    };
    let chan = crate::init::CHANNEL_FD;
    // SAFETY: prctl and fcntl with integer arguments on this process and its channel fd.
    unsafe {
        // Already non-dumpable by the execute-only exec; kept explicit, as at the first start.
        libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
        libc::fcntl(chan, libc::F_SETFD, libc::FD_CLOEXEC);
    }
    crate::init::supervise_resumed(service, &Channel::from_raw(chan))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode_and_seals(fd: &OwnedFd) -> (u32, i32) {
        // SAFETY: fstat into a zeroed stat; fcntl F_GET_SEALS with no argument.
        unsafe {
            let mut st: libc::stat = std::mem::zeroed();
            assert_eq!(libc::fstat(fd.as_raw_fd(), &mut st), 0);
            (st.st_mode & 0o7777, libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS))
        }
    }

    #[test]
    fn the_tiny_init_is_a_small_static_elf() {
        assert_eq!(&TINY_INIT[..4], b"\x7fELF");
        assert!(TINY_INIT.len() < 16 * 1024, "{} bytes", TINY_INIT.len());
    }

    #[test]
    fn the_tiny_monitor_is_a_small_static_elf() {
        assert_eq!(&TINY_MONITOR[..4], b"\x7fELF");
        assert!(TINY_MONITOR.len() < 16 * 1024, "{} bytes", TINY_MONITOR.len());
        let fd = tiny_monitor().unwrap();
        assert_eq!(mode_and_seals(&fd).0, 0o111);
        let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap();
        assert!(link.to_string_lossy().starts_with("/memfd:isc-monitor "), "{link:?}");
        let len = std::fs::metadata(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap().len();
        assert_eq!(len as usize, TINY_MONITOR.len());
    }

    #[test]
    fn a_monitor_plan_is_encoded_at_the_tiny_monitors_offsets() {
        let plan = MonitorPlan {
            exe_fd: 7,
            audit_fd: -1,
            deadline_ms: 0x0102_0304_0506_0708,
            uid_lo: 100_000,
            uid_hi: 165_536,
            pidns_ino: 0x1122_3344_5566_7788,
            fds: vec![3, 4, 300],
            foreign_domains: vec![],
        };
        let b = plan.encode();
        assert_eq!(b.len(), 44 + 3 * 4 + 4);
        assert_eq!(&b[0..4], b"ISM1");
        assert_eq!(&b[4..8], &[1, 0, 0, 0]);
        assert_eq!(&b[8..12], &[7, 0, 0, 0]);
        assert_eq!(&b[12..16], &[0xff; 4]);
        assert_eq!(&b[16..24], &[8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(&b[24..28], &100_000u32.to_le_bytes());
        assert_eq!(&b[28..32], &165_536u32.to_le_bytes());
        assert_eq!(&b[32..40], &[0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11]);
        assert_eq!(&b[40..44], &[3, 0, 0, 0]);
        assert_eq!(&b[44..56], &[3, 0, 0, 0, 4, 0, 0, 0, 44, 1, 0, 0]);
        assert_eq!(&b[56..], &[0; 4], "no foreign domains");
        let none = MonitorPlan { deadline_ms: -1, fds: vec![], ..plan };
        assert_eq!(&none.encode()[16..24], &[0xff; 8]);
        assert_eq!(none.encode().len(), 44 + 4);
    }

    #[test]
    fn a_monitor_plan_ends_with_its_foreign_domains_at_most_64() {
        let plan = MonitorPlan {
            exe_fd: 7,
            audit_fd: 8,
            deadline_ms: -1,
            uid_lo: 1,
            uid_hi: 2,
            pidns_ino: 3,
            fds: vec![3, 4],
            foreign_domains: vec![0x1_95ba_459b, 0x0102_0304_0506_0708],
        };
        let b = plan.encode();
        assert_eq!(b.len(), 44 + 2 * 4 + 4 + 2 * 8);
        assert_eq!(&b[52..56], &[2, 0, 0, 0]);
        assert_eq!(&b[56..64], &0x1_95ba_459bu64.to_le_bytes());
        assert_eq!(&b[64..72], &[8, 7, 6, 5, 4, 3, 2, 1]);
        // Everything before the tail is as without domains.
        let without = MonitorPlan { foreign_domains: vec![], ..plan.clone() }.encode();
        assert_eq!(&b[..52], &without[..52]);
        let many = MonitorPlan { foreign_domains: (1..=100).collect(), ..plan };
        let b = many.encode();
        assert_eq!(b.len(), 52 + 4 + MonitorPlan::MAX_DOMAINS * 8);
        assert_eq!(&b[52..56], &64u32.to_le_bytes());
        assert_eq!(&b[56..64], &1u64.to_le_bytes());
        assert_eq!(&b[b.len() - 8..], &64u64.to_le_bytes());
    }

    #[test]
    fn a_plan_memfd_is_sealed_and_holds_the_encoding() {
        let plan = MonitorPlan {
            exe_fd: 5,
            audit_fd: 6,
            deadline_ms: 1234,
            uid_lo: 1,
            uid_hi: 2,
            pidns_ino: 3,
            fds: vec![9; MonitorPlan::MAX_FDS],
            foreign_domains: vec![0xab; MonitorPlan::MAX_DOMAINS],
        };
        let fd = plan.plan_memfd().unwrap();
        let bytes = std::fs::read(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap();
        assert_eq!(bytes, plan.encode());
        let need = libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;
        let seals = mode_and_seals(&fd).1;
        assert_eq!(seals & need, need, "seals {seals:#x}");
        // SAFETY: fcntl F_GETFD with no argument.
        assert_eq!(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFD) }, libc::FD_CLOEXEC);
        let more = MonitorPlan { fds: vec![9; MonitorPlan::MAX_FDS + 1], ..plan };
        assert!(matches!(
            more.plan_memfd(),
            Err(HibernateError::TooManyFds { count: 65, max: 64 })
        ));
    }

    #[test]
    fn memfds_are_execute_only_sealed_and_complete() {
        let fd = tiny_init().unwrap();
        let (mode, seals) = mode_and_seals(&fd);
        assert_eq!(mode, 0o111);
        let need = libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;
        assert_eq!(seals & need, need, "seals {seals:#x}");
        // Sealed: even its creator (root) can no longer write it.
        // SAFETY: write(2) of one byte from a local.
        let rc = unsafe { libc::pwrite(fd.as_raw_fd(), b"x".as_ptr().cast(), 1, 0) };
        assert_eq!(rc, -1);
        assert_eq!(io::Error::last_os_error().raw_os_error(), Some(libc::EPERM));
        let len = std::fs::metadata(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap().len();
        assert_eq!(len as usize, TINY_INIT.len());
        let whole = whole_isc().unwrap();
        let own = std::fs::metadata("/proc/self/exe").unwrap().len();
        let copy = std::fs::metadata(format!("/proc/self/fd/{}", whole.as_raw_fd())).unwrap();
        assert_eq!(copy.len(), own);
        assert_eq!(mode_and_seals(&whole).0, 0o111);
    }
}
