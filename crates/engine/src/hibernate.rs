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

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use crate::channel::Channel;

/// The hibernating init, built by `build.rs` from `tiny/init.rs`.
pub const TINY_INIT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/isc-init"));

/// `argv[1]` of the whole isc exec'd back into PID 1: `isc __pid1 <service pid>`.
pub const RESUME_ARG: &str = "__pid1";

/// memfd_create(2) `MFD_EXEC` (Linux 6.3): say so, or a `vm.memfd_noexec` host may refuse.
const MFD_EXEC: libc::c_uint = 0x10;
/// fcntl(2) `F_SEAL_EXEC` (Linux 6.3): the mode's execute bits can no longer change.
const F_SEAL_EXEC: libc::c_int = 0x20;

#[derive(Debug, thiserror::Error)]
pub enum HibernateError {
    #[error("memfd_create for PID 1's {what}: {source}")]
    Memfd { what: &'static str, source: io::Error },
    #[error("writing PID 1's {what} into its memfd: {source}")]
    Fill { what: &'static str, source: io::Error },
    #[error("making PID 1's {what} execute-only: {source}")]
    Mode { what: &'static str, source: io::Error },
    #[error("sealing PID 1's {what}: {source}")]
    Seal { what: &'static str, source: io::Error },
}

/// The tiny init as a sealed, execute-only memfd for `ToInit::Hibernate`.
pub fn tiny_init() -> Result<OwnedFd, HibernateError> {
    sealed_exec_memfd(c"isc-init", "hibernating init", |fd| write_all(fd, TINY_INIT))
}

/// This very isc binary (`/proc/self/exe`, even if replaced on disk since) as a sealed,
/// execute-only memfd for `ToInit::Wake`: PID 1 must run the code that speaks this monitor's
/// protocol.
pub fn whole_isc() -> Result<OwnedFd, HibernateError> {
    sealed_exec_memfd(c"isc", "isc executable", copy_self)
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
