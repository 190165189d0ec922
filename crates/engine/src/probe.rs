//! Probes: single attack attempts run from inside an ISC's confinement, reporting exactly what
//! the kernel answered. They run either in a probe child forked by PID 1 (`isc verify`) or in a
//! service process (`isc probe`, used by the integration tests). They never damage anything:
//! writes use O_CREAT|O_EXCL and are unlinked at once, syscalls get invalid arguments.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::linux::fs::MetadataExt;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// What one probe saw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeOutcome {
    pub name: String,
    /// The attempted operation succeeded.
    pub ok: bool,
    /// The errno when it failed.
    pub errno: Option<i32>,
    /// Extra facts (file contents, lists).
    pub value: Value,
}

impl ProbeOutcome {
    fn from_io(name: &str, r: io::Result<Value>) -> Self {
        match r {
            Ok(value) => Self { name: name.into(), ok: true, errno: None, value },
            Err(e) => {
                Self { name: name.into(), ok: false, errno: e.raw_os_error(), value: Value::Null }
            }
        }
    }
    fn fact(name: &str, value: Value) -> Self {
        Self { name: name.into(), ok: true, errno: None, value }
    }
}

/// Every probe name accepted by [`run`] (parameterised ones take `:ARG`).
pub const PROBES: &[&str] = &[
    "status",
    "ids",
    "ns",
    "netns_owner",
    "fds",
    "env",
    "dev",
    "uid_map",
    "mount",
    "unshare_user",
    "bpf",
    "ptrace",
    "keyctl",
    "open_by_handle_at",
    "init_module",
    "clone3",
    "audit_barrier",
    "orphan_reap",
    "write:PATH",
    "open_write:PATH",
    "read:PATH",
    "tcp_connect:IP:PORT",
    "tcp_bind:PORT",
    "tcp_reach:IP:PORT:MS",
    "udp_ask:IP:PORT:MS",
    "serve_tcp:PORT:SECONDS",
];

/// One raw syscall with harmless arguments: null or invalid pointers (the kernel or the seccomp
/// filter rejects the call before touching memory) or pointers to static C strings.
fn raw_syscall(nr: libc::c_long, a: [usize; 4]) -> io::Result<Value> {
    // SAFETY: see above; no argument points to memory the kernel could write into.
    cvt(unsafe { libc::syscall(nr, a[0], a[1], a[2], a[3]) })
}

fn cvt(rc: libc::c_long) -> io::Result<Value> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(json!(rc))
    }
}

/// Which user namespace owns this process's network namespace (ioctl_ns(2) NS_GET_USERNS):
/// `"own"` when it is the caller's; EPERM when it is outside the caller's scope (an ancestor,
/// e.g. the host's), so no capability held here applies to the network.
fn netns_owner() -> io::Result<Value> {
    const NS_GET_USERNS: libc::c_ulong = 0xb701; // _IO(0xb7, 0x1), linux/nsfs.h
    let net = fs::File::open("/proc/self/ns/net")?;
    // SAFETY: NS_GET_USERNS takes no argument and returns a new fd or -1.
    let owner = unsafe { libc::ioctl(net.as_raw_fd(), NS_GET_USERNS) };
    if owner < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor owned by nobody else.
    let owner = fs::File::from(unsafe { std::os::fd::OwnedFd::from_raw_fd(owner) });
    let own = fs::metadata("/proc/self/ns/user")?;
    let same = owner.metadata()?.st_ino() == own.st_ino();
    Ok(json!(if same { "own" } else { "another user namespace" }))
}

/// Runs the probe `spec` ("name" or "name:arg").
pub fn run(spec: &str) -> ProbeOutcome {
    let (name, arg) = spec.split_once(':').unwrap_or((spec, ""));
    match name {
        "status" => ProbeOutcome::fact(spec, status()),
        "ids" => ProbeOutcome::fact(spec, ids()),
        "ns" => ProbeOutcome::fact(spec, namespaces(Path::new("/proc/self/ns"))),
        "netns_owner" => ProbeOutcome::from_io(spec, netns_owner()),
        "fds" => ProbeOutcome::fact(spec, open_fds()),
        "env" => ProbeOutcome::fact(
            spec,
            json!(std::env::vars_os()
                .map(|(k, v)| format!("{}={}", k.to_string_lossy(), v.to_string_lossy()))
                .collect::<Vec<_>>()),
        ),
        "dev" => ProbeOutcome::fact(spec, list_dir("/dev")),
        "mounts" => ProbeOutcome::fact(spec, mounts()),
        "uid_map" => {
            ProbeOutcome::from_io(spec, fs::read_to_string("/proc/self/uid_map").map(Value::from))
        }
        "mount" => ProbeOutcome::from_io(
            spec,
            raw_syscall(
                libc::SYS_mount,
                [c"none".as_ptr() as usize, c"/".as_ptr() as usize, c"tmpfs".as_ptr() as usize, 0],
            ),
        ),
        "unshare_user" => ProbeOutcome::from_io(
            spec,
            raw_syscall(libc::SYS_unshare, [libc::CLONE_NEWUSER as usize, 0, 0, 0]),
        ),
        "bpf" => ProbeOutcome::from_io(spec, raw_syscall(libc::SYS_bpf, [5, 0, 0, 0])),
        "ptrace" => ProbeOutcome::from_io(
            spec,
            raw_syscall(libc::SYS_ptrace, [libc::PTRACE_ATTACH as usize, 1, 0, 0]),
        ),
        // KEYCTL_GET_KEYRING_ID (0) of KEY_SPEC_SESSION_KEYRING (-3).
        "keyctl" => {
            ProbeOutcome::from_io(spec, raw_syscall(libc::SYS_keyctl, [0, -3isize as usize, 0, 0]))
        }
        "open_by_handle_at" => ProbeOutcome::from_io(
            spec,
            raw_syscall(libc::SYS_open_by_handle_at, [-1isize as usize, 0, 0, 0]),
        ),
        "init_module" => ProbeOutcome::from_io(
            spec,
            raw_syscall(libc::SYS_init_module, [0, 0, c"".as_ptr() as usize, 0]),
        ),
        // size 0: the kernel itself would answer EINVAL; ENOSYS can only be the filter's.
        "clone3" => ProbeOutcome::from_io(spec, raw_syscall(libc::SYS_clone3, [0, 0, 0, 0])),
        // What PID 1 calls to end the audit drain; from anyone else it is only a denial.
        "audit_barrier" => ProbeOutcome::from_io(
            spec,
            raw_syscall(crate::seccomp::AUDIT_BARRIER_SYSCALL, [0, 0, 0, 0]),
        ),
        "orphan_reap" => ProbeOutcome::from_io(spec, orphan_reap()),
        "write" => ProbeOutcome::from_io(spec, try_create(Path::new(arg))),
        "open_write" => ProbeOutcome::from_io(
            spec,
            fs::OpenOptions::new().write(true).open(arg).map(|_| Value::Null),
        ),
        "read" => ProbeOutcome::from_io(spec, fs::read(arg).map(|b| json!(b.len()))),
        "tcp_connect" => ProbeOutcome::from_io(spec, tcp_connect(arg)),
        "tcp_bind" => ProbeOutcome::from_io(
            spec,
            arg.parse::<u16>()
                .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
                .and_then(|p| std::net::TcpListener::bind(("127.0.0.1", p)))
                .map(|_| Value::Null),
        ),
        "tcp_reach" => ProbeOutcome::from_io(spec, tcp_reach(arg)),
        "udp_ask" => ProbeOutcome::from_io(spec, udp_ask(arg)),
        "serve_tcp" => ProbeOutcome::from_io(spec, serve_tcp(arg)),
        other if crate::probe_battery::handles(other) => {
            crate::probe_battery::run(spec, other, arg)
        }
        other if crate::probe_stress::handles(other) => crate::probe_stress::run(spec, other, arg),
        _ => ProbeOutcome {
            name: spec.into(),
            ok: false,
            errno: Some(libc::EINVAL),
            value: json!(format!("unknown probe; known: {}", PROBES.join(", "))),
        },
    }
}

fn status() -> Value {
    let text = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let mut m = serde_json::Map::new();
    for line in text.lines() {
        if let Some((k, v)) = line.split_once(':') {
            if k.starts_with("Cap")
                || matches!(
                    k,
                    "NoNewPrivs"
                        | "Seccomp"
                        | "Seccomp_filters"
                        | "Uid"
                        | "Gid"
                        | "Groups"
                        | "NSpid"
                        | "PPid"
                        | "Pid"
                        | "Umask"
                )
            {
                m.insert(k.to_string(), Value::from(v.trim().to_string()));
            }
        }
    }
    Value::Object(m)
}

fn ids() -> Value {
    // SAFETY: getters without arguments.
    unsafe {
        json!({ "pid": libc::getpid(), "ppid": libc::getppid(), "uid": libc::getuid(),
                "gid": libc::getgid(), "euid": libc::geteuid() })
    }
}

/// `readlink` of every entry of a `/proc/PID/ns` directory, e.g. {"net": "net:[4026531840]"}.
pub fn namespaces(dir: &Path) -> Value {
    let mut m = serde_json::Map::new();
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            if let Ok(t) = fs::read_link(e.path()) {
                m.insert(
                    e.file_name().to_string_lossy().into(),
                    Value::from(t.to_string_lossy().to_string()),
                );
            }
        }
    }
    Value::Object(m)
}

/// Mount point → "per-mount options,fs type" from /proc/self/mountinfo (later mounts win).
fn mounts() -> Value {
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut m = serde_json::Map::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let Some(sep) = f.iter().position(|x| *x == "-") else { continue };
        if f.len() > sep + 1 && f.len() > 5 {
            m.insert(f[4].to_string(), Value::from(format!("{},{}", f[5], f[sep + 1])));
        }
    }
    Value::Object(m)
}

/// Open fds and their targets, without the directory handle used to list them.
fn open_fds() -> Value {
    let mut m = serde_json::Map::new();
    if let Ok(rd) = fs::read_dir("/proc/self/fd") {
        for e in rd.flatten() {
            let target = fs::read_link(e.path())
                .map(|t| t.to_string_lossy().into_owned())
                .unwrap_or_default();
            if target.starts_with("/proc/") && target.ends_with("/fd") {
                continue;
            }
            m.insert(e.file_name().to_string_lossy().into_owned(), Value::from(target));
        }
    }
    Value::Object(m)
}

fn list_dir(dir: &str) -> Value {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    names.sort();
    json!(names)
}

/// O_CREAT|O_EXCL a fresh name in `dir` (or create `dir` itself if it names a file) and unlink.
fn try_create(path: &Path) -> io::Result<Value> {
    let target = if path.is_dir() {
        path.join(format!(".isc-probe-{}", std::process::id()))
    } else {
        path.to_path_buf()
    };
    let c = CString::new(target.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: NUL-terminated path; the fd is closed right away.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_CLOEXEC,
            0o600,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just opened by us; the path was just created by us.
    unsafe {
        libc::close(fd);
        libc::unlink(c.as_ptr());
    }
    Ok(Value::Null)
}

fn tcp_connect(arg: &str) -> io::Result<Value> {
    let addr: std::net::SocketAddr =
        arg.parse().map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map(|_| Value::Null)
}

fn einval() -> io::Error {
    io::Error::from_raw_os_error(libc::EINVAL)
}

/// `ADDR:MS` (ADDR as in `1.2.3.4:80` or `[::1]:80`) into an address and a timeout.
fn addr_and_ms(arg: &str) -> io::Result<(std::net::SocketAddr, Duration)> {
    let (addr, ms) = arg.rsplit_once(':').ok_or_else(einval)?;
    let ms: u64 = ms.parse().map_err(|_| einval())?;
    Ok((addr.parse().map_err(|_| einval())?, Duration::from_millis(ms.max(1))))
}

/// Connect within MS and read what the server says first (up to 64 bytes, MS to wait). The
/// errno tells the layers apart: EACCES is Landlock, a timeout is a silent firewall drop.
fn tcp_reach(arg: &str) -> io::Result<Value> {
    use std::io::Read;
    let (addr, timeout) = addr_and_ms(arg)?;
    let mut s = std::net::TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).unwrap_or(0);
    Ok(json!(String::from_utf8_lossy(&buf[..n])))
}

/// Send one DNS-shaped datagram (so a resolver would answer) on a connected socket and wait MS
/// for an answer. Connected, so the errno tells the cases apart: ENETUNREACH (no route),
/// ECONNREFUSED (ICMP port unreachable: the path is open), EAGAIN (silence: dropped).
fn udp_ask(arg: &str) -> io::Result<Value> {
    let (addr, timeout) = addr_and_ms(arg)?;
    let any: std::net::SocketAddr =
        if addr.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { ([0u16; 8], 0).into() };
    let s = std::net::UdpSocket::bind(any)?;
    s.set_read_timeout(Some(timeout))?;
    s.connect(addr)?;
    let q = [0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, b'a', 0, 0, 1, 0, 1];
    s.send(&q)?;
    let mut buf = [0u8; 512];
    Ok(json!(s.recv(&mut buf)?))
}

/// Listen on PORT (IPv6 dual-stack, or IPv4 where IPv6 is off) for SECONDS, answering every
/// connection with "ok\n"; the value is the number of connections served.
fn serve_tcp(arg: &str) -> io::Result<Value> {
    use std::io::Write;
    let (port, secs) = arg.split_once(':').ok_or_else(einval)?;
    let port: u16 = port.parse().map_err(|_| einval())?;
    let secs: u64 = secs.parse().map_err(|_| einval())?;
    let listener = std::net::TcpListener::bind(("::", port))
        .or_else(|_| std::net::TcpListener::bind(("0.0.0.0", port)))?;
    listener.set_nonblocking(true)?;
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    let mut served = 0u64;
    while std::time::Instant::now() < deadline {
        match listener.accept() {
            Ok((mut s, _)) => {
                let _ = s.set_nonblocking(false);
                if s.write_all(b"ok\n").is_ok() {
                    served += 1;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(e) => return Err(e),
        }
    }
    Ok(json!(served))
}

/// Orphans a grandchild (it exits after 50 ms, re-parented to PID 1), then counts zombies left
/// in the PID namespace after 300 ms. A PID 1 that reaps leaves 0.
fn orphan_reap() -> io::Result<Value> {
    // SAFETY: fork in a single-threaded probe process; children only sleep and _exit.
    let child = unsafe { libc::fork() };
    if child < 0 {
        return Err(io::Error::last_os_error());
    }
    if child == 0 {
        // SAFETY: as above.
        unsafe {
            if libc::fork() == 0 {
                libc::usleep(50_000);
                libc::_exit(0);
            }
            libc::_exit(0);
        }
    }
    let mut st = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(child, &mut st, 0) };
    std::thread::sleep(Duration::from_millis(300));
    let mut zombies = 0;
    for e in fs::read_dir("/proc")?.flatten() {
        if let Ok(stat) = fs::read_to_string(e.path().join("stat")) {
            if let Some(rest) = stat.rsplit_once(") ") {
                if rest.1.starts_with('Z') {
                    zombies += 1;
                }
            }
        }
    }
    Ok(json!(zombies))
}
