//! The `isc verify` probe battery: one attack attempt per probe, chosen so that the errno tells
//! which layer stopped it (VERIFY-CATALOGUE.md §2) and so that nothing is ever changed:
//!
//! - syscalls get arguments the kernel rejects *after* the seccomp filter but before acting
//!   (EFAULT/EINVAL/ENODEV then mean "the filter let it through", EPERM/ENOSYS mean "blocked");
//! - file probes create with O_CREAT|O_EXCL and unlink at once; an exec probe runs a file of
//!   zero bytes, which the kernel refuses with ENOEXEC when the mount allows exec (EACCES when
//!   it is `noexec`), so nothing ever runs;
//! - a remount probe only asks for flags at least as strict as the current ones;
//! - probes that could be killed (SIGSYS from seccomp's arch check) run in a grandchild and
//!   report the signal.
//!
//! Results come back as [`ProbeOutcome`]s: `ok` means the attempt succeeded, `errno` is the
//! kernel's answer, and `value` carries `{"signal": N}` for a killed grandchild.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use serde_json::{json, Value};

use crate::probe::ProbeOutcome;

/// Probe names this module answers (parameterised ones take `:ARG`).
pub const BATTERY: &[&str] = &[
    "syscall:NAME",
    "int80",
    "mknod:DIR",
    "unshare:KIND",
    "socket:KIND",
    "udp_send:IP:PORT",
    "unix_connect:PATH",
    "remount_ro:PATH",
    "mount_badfs",
    "exec_write:DIR",
    "setuid0",
    "capset_raise",
    "sched_fifo",
    "mmap_wx",
    "rlimit_raise",
];

/// Syscall names accepted by `syscall:NAME`, each with its seccomp group.
pub const SYSCALLS: &[(&str, &str)] = &[
    ("umount2", "@mount"),
    ("init_module", "@module"),
    ("finit_module", "@module"),
    ("iopl", "@raw-io"),
    ("ioperm", "@raw-io"),
    ("reboot", "@reboot"),
    ("swapoff", "@swap"),
    ("clock_settime", "@clock"),
    ("ptrace_bad", "@debug"),
    ("perf_event_open", "@debug"),
    ("kexec_load", "@reboot"),
    ("add_key", "@keyring"),
    ("bpf", "@privileged"),
    ("userfaultfd", "@privileged"),
];

/// Is `name` (without argument) a battery probe?
pub fn handles(name: &str) -> bool {
    BATTERY.iter().any(|b| b.split(':').next() == Some(name))
}

fn cvt(rc: libc::c_long) -> io::Result<Value> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(json!(rc))
    }
}

fn outcome(spec: &str, r: io::Result<Value>) -> ProbeOutcome {
    match r {
        Ok(value) => ProbeOutcome { name: spec.into(), ok: true, errno: None, value },
        Err(e) => ProbeOutcome {
            name: spec.into(),
            ok: false,
            errno: e.raw_os_error().or(Some(libc::EIO)),
            value: Value::Null,
        },
    }
}

fn einval() -> io::Error {
    io::Error::from_raw_os_error(libc::EINVAL)
}

fn cpath(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| einval())
}

/// Runs battery probe `name` with argument `arg`; `spec` is the full probe string.
pub fn run(spec: &str, name: &str, arg: &str) -> ProbeOutcome {
    let r = match name {
        "syscall" => raw_syscall(arg),
        "int80" => return int80(spec),
        "mknod" => mknod_in(Path::new(arg)),
        "unshare" => unshare(arg),
        "socket" => socket(arg),
        "udp_send" => udp_send(arg),
        "unix_connect" => unix_connect(arg),
        "remount_ro" => remount_ro(Path::new(arg)),
        "mount_badfs" => {
            // SAFETY: NUL-terminated strings; an unknown filesystem type makes a permitted
            // mount fail with ENODEV before anything is mounted.
            cvt(unsafe {
                libc::mount(
                    c"none".as_ptr(),
                    c"/".as_ptr(),
                    c"isc-probe-no-such-fs".as_ptr(),
                    0,
                    std::ptr::null(),
                )
            } as _)
        }
        "exec_write" => exec_write(Path::new(arg)),
        // SAFETY: id change in the short-lived probe child only.
        "setuid0" => cvt(unsafe { libc::setresuid(0, 0, 0) } as _),
        "capset_raise" => capset_raise(),
        "sched_fifo" => {
            let p = libc::sched_param { sched_priority: 1 };
            // SAFETY: scheduling policy of the probe child itself.
            cvt(unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &p) } as _)
        }
        "mmap_wx" => mmap_wx(),
        "rlimit_raise" => rlimit_raise(),
        _ => Err(einval()),
    };
    outcome(spec, r)
}

fn raw_syscall(which: &str) -> io::Result<Value> {
    // SAFETY (every arm): null pointers, invalid flags or invalid descriptors only. The kernel
    // rejects these with EFAULT/EINVAL/EBADF/ESRCH when the call is let through, or the filter
    // (EPERM/ENOSYS) or a missing capability (EPERM) stops it first. Nothing is changed.
    let rc = unsafe {
        match which {
            "umount2" => libc::syscall(libc::SYS_umount2, c"/".as_ptr(), 0x8000_0000u64),
            "init_module" => libc::syscall(libc::SYS_init_module, 0usize, 0usize, c"".as_ptr()),
            "finit_module" => libc::syscall(libc::SYS_finit_module, -1, c"".as_ptr(), 0),
            "iopl" => libc::syscall(libc::SYS_iopl, 4),
            "ioperm" => libc::syscall(libc::SYS_ioperm, 0x80u64, 1u64, 1),
            // Invalid magic: EINVAL once the CAP_SYS_BOOT check passed.
            "reboot" => libc::syscall(libc::SYS_reboot, 0, 0, 0, 0usize),
            "swapoff" => libc::syscall(libc::SYS_swapoff, 0usize),
            "clock_settime" => libc::syscall(libc::SYS_clock_settime, libc::CLOCK_REALTIME, 0usize),
            "ptrace_bad" => libc::syscall(libc::SYS_ptrace, 0x7fff_0000i64, 0, 0usize, 0usize),
            "perf_event_open" => libc::syscall(libc::SYS_perf_event_open, 0usize, 0, -1, -1, 0),
            "kexec_load" => libc::syscall(libc::SYS_kexec_load, 0usize, 0usize, 0usize, 0xffffu64),
            "add_key" => libc::syscall(
                libc::SYS_add_key,
                0usize,
                0usize,
                0usize,
                0usize,
                0xffff_fffcu32 as i32,
            ),
            "bpf" => libc::syscall(libc::SYS_bpf, 5 /* BPF_PROG_LOAD */, 0usize, 0),
            "userfaultfd" => libc::syscall(libc::SYS_userfaultfd, 0x7fff_0000),
            _ => return Err(einval()),
        }
    };
    cvt(rc)
}

/// The 32-bit `int 0x80` entry (i386 getpid, number 20) in a grandchild: seccomp's arch check
/// kills it with SIGSYS, a kernel without IA32 emulation with SIGSEGV.
fn int80(spec: &str) -> ProbeOutcome {
    // SAFETY: fork of the single-threaded probe child; the grandchild only runs the
    // instruction and _exits.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return outcome(spec, Err(io::Error::last_os_error()));
    }
    if pid == 0 {
        let ret: i64;
        // SAFETY: int 0x80 with eax=20 (getpid) reads no memory; clobbers as per the i386 ABI.
        unsafe {
            std::arch::asm!("int 0x80", inlateout("rax") 20i64 => ret,
                out("r8") _, out("r9") _, out("r10") _, out("r11") _);
            libc::_exit(if ret >= 0 { 0 } else { 1 })
        }
    }
    let mut st = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(pid, &mut st, 0) };
    if libc::WIFSIGNALED(st) {
        ProbeOutcome {
            name: spec.into(),
            ok: false,
            errno: None,
            value: json!({"signal": libc::WTERMSIG(st)}),
        }
    } else if libc::WEXITSTATUS(st) == 0 {
        ProbeOutcome { name: spec.into(), ok: true, errno: None, value: Value::Null }
    } else {
        ProbeOutcome { name: spec.into(), ok: false, errno: Some(libc::ENOSYS), value: Value::Null }
    }
}

fn probe_name(dir: &Path, what: &str) -> std::path::PathBuf {
    dir.join(format!(".isc-probe-{what}-{}", std::process::id()))
}

fn mknod_in(dir: &Path) -> io::Result<Value> {
    let p = cpath(&probe_name(dir, "mknod"))?;
    // SAFETY: NUL-terminated path; a char device 1:3 (/dev/null) is removed at once.
    let rc = unsafe { libc::mknod(p.as_ptr(), libc::S_IFCHR | 0o600, libc::makedev(1, 3)) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: removing the node we just made.
    unsafe { libc::unlink(p.as_ptr()) };
    Ok(Value::Null)
}

fn unshare(kind: &str) -> io::Result<Value> {
    let flag = match kind {
        "user" => libc::CLONE_NEWUSER,
        "mnt" => libc::CLONE_NEWNS,
        "net" => libc::CLONE_NEWNET,
        "pid" => libc::CLONE_NEWPID,
        "ipc" => libc::CLONE_NEWIPC,
        "uts" => libc::CLONE_NEWUTS,
        "cgroup" => libc::CLONE_NEWCGROUP,
        _ => return Err(einval()),
    };
    // SAFETY: affects only the probe child, which exits right after.
    cvt(unsafe { libc::unshare(flag) } as _)
}

fn socket(kind: &str) -> io::Result<Value> {
    let (fam, ty, proto) = match kind {
        "packet" => (libc::AF_PACKET, libc::SOCK_RAW, 0),
        "raw4" => (libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP),
        "raw6" => (libc::AF_INET6, libc::SOCK_RAW, libc::IPPROTO_ICMPV6),
        "icmp" => (libc::AF_INET, libc::SOCK_DGRAM, libc::IPPROTO_ICMP),
        "netlink" => (libc::AF_NETLINK, libc::SOCK_RAW, 0),
        "vsock" => (libc::AF_VSOCK, libc::SOCK_STREAM, 0),
        "alg" => (libc::AF_ALG, libc::SOCK_SEQPACKET, 0),
        "key" => (libc::AF_KEY, libc::SOCK_RAW, 2 /* PF_KEY_V2 */),
        "bluetooth" => (libc::AF_BLUETOOTH, libc::SOCK_RAW, 0),
        "xdp" => (libc::AF_XDP, libc::SOCK_RAW, 0),
        "tipc" => (libc::AF_TIPC, libc::SOCK_RDM, 0),
        "can" => (libc::AF_CAN, libc::SOCK_RAW, 1),
        "rds" => (libc::AF_RDS, libc::SOCK_SEQPACKET, 0),
        _ => return Err(einval()),
    };
    // SAFETY: socket(2); the fd is closed at once.
    let fd = unsafe { libc::socket(fam, ty | libc::SOCK_CLOEXEC, proto) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: closing the fd just opened.
    unsafe { libc::close(fd) };
    Ok(Value::Null)
}

fn udp_send(arg: &str) -> io::Result<Value> {
    let addr: std::net::SocketAddr = arg.parse().map_err(|_| einval())?;
    let bind = if addr.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
    let s = std::net::UdpSocket::bind(bind)?;
    // A DNS-shaped query header: the sink only needs to see that something arrived.
    s.send_to(b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00", addr).map(|n| json!(n))
}

fn unix_connect(path: &str) -> io::Result<Value> {
    if let Some(name) = path.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
        std::os::unix::net::UnixStream::connect_addr(&addr).map(|_| Value::Null)
    } else {
        std::os::unix::net::UnixStream::connect(path).map(|_| Value::Null)
    }
}

fn remount_ro(path: &Path) -> io::Result<Value> {
    let p = cpath(path)?;
    // SAFETY: statvfs into a local struct.
    let mut sv: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(p.as_ptr(), &mut sv) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // Keep every restriction the mount has and add read-only: if the kernel permits the
    // remount, the mount ends up exactly as strict as before (or stricter), never weaker.
    let mut flags = libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY;
    for (st, ms) in [
        (libc::ST_NOSUID, libc::MS_NOSUID),
        (libc::ST_NODEV, libc::MS_NODEV),
        (libc::ST_NOEXEC, libc::MS_NOEXEC),
        (libc::ST_NOATIME, libc::MS_NOATIME),
        (libc::ST_NODIRATIME, libc::MS_NODIRATIME),
        (libc::ST_RELATIME, libc::MS_RELATIME),
    ] {
        if sv.f_flag & st != 0 {
            flags |= ms;
        }
    }
    // SAFETY: NUL-terminated target; flags only add restrictions (see above).
    cvt(unsafe {
        libc::mount(std::ptr::null(), p.as_ptr(), std::ptr::null(), flags, std::ptr::null())
    } as _)
}

/// Creates an empty 0700 file in `dir`, tries to execve it, unlinks it. A zero-byte file has
/// no binfmt handler, so an exec-permitting mount answers ENOEXEC and nothing runs; a
/// `noexec` mount (or an LSM) answers EACCES first.
fn exec_write(dir: &Path) -> io::Result<Value> {
    let path = probe_name(dir, "exec");
    let p = cpath(&path)?;
    // SAFETY: NUL-terminated path; O_EXCL so we never touch an existing file.
    let fd = unsafe {
        libc::open(
            p.as_ptr(),
            libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_CLOEXEC,
            0o700,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: closing our fd; then execve of the empty file with empty argv/envp, which
    // cannot succeed (no binfmt accepts zero bytes); then removing the file.
    let err = unsafe {
        libc::close(fd);
        let argv = [p.as_ptr(), std::ptr::null()];
        let envp = [std::ptr::null()];
        libc::execve(p.as_ptr(), argv.as_ptr(), envp.as_ptr());
        let e = io::Error::last_os_error();
        libc::unlink(p.as_ptr());
        e
    };
    match err.raw_os_error() {
        // The kernel looked for a binfmt handler: the mount and every LSM allowed exec.
        Some(libc::ENOEXEC) => Ok(json!("exec permitted (ENOEXEC on an empty file)")),
        _ => Err(err),
    }
}

fn capset_raise() -> io::Result<Value> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    let mut hdr = Header { version: 0x2008_0522, pid: 0 };
    let full = Data { effective: u32::MAX, permitted: u32::MAX, inheritable: 0 };
    let data = [full, full];
    // SAFETY: capset with a v3 header and two data structs; affects only the probe child.
    cvt(unsafe { libc::syscall(libc::SYS_capset, &mut hdr as *mut Header, data.as_ptr()) })
}

fn mmap_wx() -> io::Result<Value> {
    // SAFETY: anonymous private mapping, unmapped right away; MDWE (PR_SET_MDWE) or an LSM
    // refuses PROT_WRITE|PROT_EXEC with EACCES/EPERM.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        libc::munmap(p, 4096);
    }
    Ok(Value::Null)
}

fn rlimit_raise() -> io::Result<Value> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: get/set of the probe child's own limit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return Err(io::Error::last_os_error());
        }
        if lim.rlim_max == libc::RLIM_INFINITY {
            return Ok(json!("hard limit already unlimited"));
        }
        lim.rlim_max += 1;
        cvt(libc::setrlimit(libc::RLIMIT_NOFILE, &lim) as _)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_battery_name_is_handled_and_unknown_arguments_are_einval() {
        for b in BATTERY {
            assert!(handles(b.split(':').next().unwrap()), "{b}");
        }
        assert!(!handles("status"));
        assert_eq!(run("syscall:nope", "syscall", "nope").errno, Some(libc::EINVAL));
        assert_eq!(run("socket:nope", "socket", "nope").errno, Some(libc::EINVAL));
    }

    #[test]
    fn exec_write_on_an_exec_dir_reports_permitted_and_leaves_nothing() {
        let d = tempfile::tempdir().unwrap();
        let o = run("exec_write", "exec_write", d.path().to_str().unwrap());
        // /tmp-style dirs in the test environment may be noexec; both answers are valid, but
        // the file must be gone either way.
        assert!(o.ok || o.errno == Some(libc::EACCES), "{o:?}");
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
    }
}
