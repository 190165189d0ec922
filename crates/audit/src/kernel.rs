//! Kernel denials: a reader of the audit netlink socket's read-only multicast group
//! (`NETLINK_AUDIT`, group `AUDIT_NLGRP_READLOG` = 1, needs `CAP_AUDIT_READ`). It coexists with
//! an installed auditd: multicast listeners get a copy of every record and never become the
//! audit daemon (see `kauditd_send_multicast_skb` in kernel/audit.c; multicast is only delivered
//! in the initial network namespace).
//!
//! Seccomp records (type 1326, `AUDIT_SECCOMP`) are emitted for `SECCOMP_RET_KILL_*`,
//! `SECCOMP_RET_LOG`, and for other actions when the filter was installed with
//! `SECCOMP_FILTER_FLAG_LOG` and the action is listed in `/proc/sys/kernel/seccomp/actions_logged`
//! (seccomp(2)). Landlock records (1423 access, 1424 domain) exist since Linux 6.15.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use serde_json::json;

use crate::record::{Actor, Kind};

/// `AUDIT_SECCOMP` from linux/audit.h.
pub const AUDIT_SECCOMP: u16 = 1326;
/// `AUDIT_LANDLOCK_ACCESS` from linux/audit.h (Linux 6.15+).
pub const AUDIT_LANDLOCK_ACCESS: u16 = 1423;
/// `AUDIT_LANDLOCK_DOMAIN` from linux/audit.h (Linux 6.15+).
pub const AUDIT_LANDLOCK_DOMAIN: u16 = 1424;
/// The read-only multicast group of the audit netlink socket.
pub const AUDIT_NLGRP_READLOG: u32 = 1;
/// The reader's receive buffer: more than one netlink datagram can carry (an audit record is
/// at most MAX_AUDIT_MESSAGE_LENGTH, 8970 bytes).
const RECV_BUF: usize = 1 << 16;

/// Errors of the kernel audit reader.
#[derive(Debug, thiserror::Error)]
pub enum KernelAuditError {
    /// socket(2) failed.
    #[error(
        "cannot open the kernel audit netlink socket: {0}; is the kernel built with CONFIG_AUDIT?"
    )]
    Socket(std::io::Error),
    /// bind(2) to the multicast group failed.
    #[error("cannot join the kernel audit read-only multicast group: {0}; this needs CAP_AUDIT_READ and the initial network namespace")]
    Bind(std::io::Error),
    /// poll(2)/recv(2) failed.
    #[error("cannot receive from the kernel audit socket: {0}")]
    Recv(std::io::Error),
    /// This process is not in the initial network namespace, where alone the kernel
    /// multicasts audit records (kernel/audit.c `kauditd_send_multicast_skb` uses `init_net`).
    #[error("the kernel sends audit records only to the initial network namespace, and this process runs in another; run isc in the host's network namespace to collect kernel denials")]
    OtherNetns,
}

/// A seccomp action the kernel logged.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SeccompEvent {
    /// Audit timestamp `seconds.millis` and serial from `audit(…:…)`.
    pub audit_id: String,
    /// Thread group id in the initial PID namespace.
    pub pid: u32,
    /// The task's uid in the initial user namespace (`uid=`), when present. A process that has
    /// exited by the time its record is read can still be attributed by it (isc gives every ISC
    /// its own host UID range).
    pub uid: Option<u32>,
    /// Task command name.
    pub comm: String,
    /// Executable path, when present.
    pub exe: Option<String>,
    /// Syscall number (per `arch`).
    pub syscall: i64,
    /// AUDIT_ARCH_* value, hex as printed by the kernel (e.g. `c000003e` for x86_64).
    pub arch: String,
    /// The filter's action (`SECCOMP_RET_ACTION_FULL` bits; the kernel does not log the data
    /// part, e.g. which errno was returned).
    pub code: u32,
    /// Signal delivered, if any.
    pub sig: i32,
}

impl SeccompEvent {
    /// Name of the action in `code` (`errno`, `kill_process`, `log`, …).
    pub fn action(&self) -> &'static str {
        match self.code & 0xffff_0000 {
            0x8000_0000 => "kill_process",
            0x0000_0000 => "kill_thread",
            0x0003_0000 => "trap",
            0x0005_0000 => "errno",
            0x7fc0_0000 => "user_notif",
            0x7ff0_0000 => "trace",
            0x7ffc_0000 => "log",
            0x7fff_0000 => "allow",
            _ => "unknown",
        }
    }
}

/// A Landlock denial (`AUDIT_LANDLOCK_ACCESS`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LandlockEvent {
    /// Audit timestamp and serial.
    pub audit_id: String,
    /// Landlock domain id (hex).
    pub domain: String,
    /// What was denied, e.g. `fs.write_file` or `net.connect_tcp`.
    pub blockers: String,
    /// Pid that created the domain, from an earlier `AUDIT_LANDLOCK_DOMAIN` record, if seen.
    pub pid: Option<u32>,
    /// Remaining fields (path, dev, ino, daddr, dest, …).
    pub fields: Vec<(String, String)>,
}

/// A typed kernel audit event.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub enum KernelEvent {
    /// A logged seccomp action.
    Seccomp(SeccompEvent),
    /// A Landlock denial.
    Landlock(LandlockEvent),
}

impl KernelEvent {
    /// The pid to attribute the event to an ISC with.
    pub fn pid(&self) -> Option<u32> {
        match self {
            KernelEvent::Seccomp(s) => Some(s.pid),
            KernelEvent::Landlock(l) => l.pid,
        }
    }

    /// The audit record to append: `(kind, actor, detail)`.
    pub fn to_record(&self) -> (Kind, Actor, serde_json::Value) {
        match self {
            KernelEvent::Seccomp(s) => (
                Kind::SeccompDenial,
                Actor::Kernel,
                json!({
                    "pid": s.pid, "uid": s.uid, "comm": s.comm, "exe": s.exe, "syscall": s.syscall,
                    "arch": s.arch, "action": s.action(), "code": format!("{:#x}", s.code),
                    "sig": s.sig, "audit_id": s.audit_id,
                }),
            ),
            KernelEvent::Landlock(l) => {
                let mut d = json!({
                    "pid": l.pid, "domain": l.domain, "blockers": l.blockers, "audit_id": l.audit_id,
                });
                for (k, v) in &l.fields {
                    d[k.as_str()] = json!(v);
                }
                (Kind::LandlockDenial, Actor::Kernel, d)
            }
        }
    }
}

/// Splits `audit(1700000000.123:456): k=v k="v v" …` into the id and the key/value pairs.
/// Unquoted values of string fields that the kernel hex-encodes (`comm`, `exe`, `path`, `name`)
/// are decoded (audit_log_n_untrustedstring() hex-encodes strings with spaces or quotes).
pub fn parse_fields(text: &str) -> (String, Vec<(String, String)>) {
    let text = text.trim_end_matches(['\0', '\n']);
    let (id, rest) = match text.strip_prefix("audit(").and_then(|t| t.split_once("): ")) {
        Some((id, rest)) => (id.to_owned(), rest),
        None => (String::new(), text),
    };
    let mut out = Vec::new();
    let mut s = rest.trim_start();
    while let Some(eq) = s.find('=') {
        let key = s[..eq].trim().to_owned();
        let after = &s[eq + 1..];
        let (val, next) = if let Some(q) = after.strip_prefix('"') {
            match q.find('"') {
                Some(end) => (q[..end].to_owned(), &q[end + 1..]),
                None => (q.to_owned(), ""),
            }
        } else {
            let end = after.find(' ').unwrap_or(after.len());
            let raw = &after[..end];
            let decoded = matches!(key.as_str(), "comm" | "exe" | "path" | "name")
                .then(|| hex_decode(raw))
                .flatten();
            (decoded.unwrap_or_else(|| raw.to_owned()), &after[end..])
        };
        out.push((key, val));
        s = next.trim_start();
    }
    (id, out)
}

fn hex_decode(s: &str) -> Option<String> {
    if !s.len().is_multiple_of(2) || s.is_empty() || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let bytes: Option<Vec<u8>> =
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok()).collect();
    String::from_utf8(bytes?).ok()
}

fn field<'a>(fields: &'a [(String, String)], key: &str) -> Option<&'a str> {
    fields.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// Parses an `AUDIT_SECCOMP` payload.
pub fn parse_seccomp(text: &str) -> Option<SeccompEvent> {
    let (audit_id, f) = parse_fields(text);
    let code = field(&f, "code")?;
    let code = u32::from_str_radix(code.trim_start_matches("0x"), 16).ok()?;
    Some(SeccompEvent {
        audit_id,
        pid: field(&f, "pid")?.parse().ok()?,
        uid: field(&f, "uid").and_then(|u| u.parse().ok()),
        comm: field(&f, "comm").unwrap_or("").to_owned(),
        exe: field(&f, "exe").map(str::to_owned),
        syscall: field(&f, "syscall")?.parse().ok()?,
        arch: field(&f, "arch").unwrap_or("").to_owned(),
        code,
        sig: field(&f, "sig").and_then(|s| s.parse().ok()).unwrap_or(0),
    })
}

/// Is this process in the initial network namespace? Kernel threads live there, and kthreadd
/// is PID 2 of the initial PID namespace (the host's PID 1 may refuse to be inspected, as on
/// this VM). When that cannot be established, assume so and let the socket tell.
fn in_initial_netns() -> bool {
    use std::os::linux::fs::MetadataExt;
    let ino = |p: &str| std::fs::metadata(p).map(|m| (m.st_dev(), m.st_ino())).ok();
    match (ino("/proc/self/ns/net"), ino("/proc/2/ns/net")) {
        (Some(own), Some(kernel)) if own != kernel => {
            let comm = std::fs::read_to_string("/proc/2/comm").unwrap_or_default();
            comm.trim() != "kthreadd"
        }
        _ => true,
    }
}

/// Reads typed events from the kernel audit multicast group.
/// What a [`KernelAuditReader`] knows beyond its socket.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct ReaderState {
    /// Landlock domain id → pid of the task that created it.
    pub domains: HashMap<String, u32>,
    pub overflows: u64,
}

pub struct KernelAuditReader {
    fd: OwnedFd,
    buf: Vec<u8>,
    queue: std::collections::VecDeque<KernelEvent>,
    /// Landlock domain id → pid of the task that created it (from `AUDIT_LANDLOCK_DOMAIN`).
    domains: HashMap<String, u32>,
    /// Times the kernel reported dropped multicast messages (ENOBUFS).
    overflows: u64,
    /// An eventfd that ends a wait early (see [`KernelAuditReader::wake_on`]).
    wake: Option<std::os::fd::RawFd>,
}

impl KernelAuditReader {
    /// Opens the socket and joins the read-only group (needs `CAP_AUDIT_READ` and the initial
    /// network namespace: a socket elsewhere binds fine but would never receive a record).
    pub fn open() -> Result<KernelAuditReader, KernelAuditError> {
        if !in_initial_netns() {
            return Err(KernelAuditError::OtherNetns);
        }
        // SAFETY: plain socket(2) call; the returned descriptor is checked and then owned.
        let fd = unsafe {
            libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::NETLINK_AUDIT)
        };
        if fd < 0 {
            return Err(KernelAuditError::Socket(std::io::Error::last_os_error()));
        }
        // SAFETY: `fd` is a fresh descriptor we exclusively own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_nl is plain data; zeroed is a valid initial value.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        addr.nl_groups = AUDIT_NLGRP_READLOG;
        // SAFETY: `addr` is a valid sockaddr_nl and its exact size is passed.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(KernelAuditError::Bind(std::io::Error::last_os_error()));
        }
        Ok(KernelAuditReader {
            fd,
            // Allocated at the first receive, not here. A reader opened before the ISC's
            // `clone3` would hand its block to PID 1, which keeps every heap block that was
            // live at the clone (copy-on-write) for the ISC's life, and a block reused from the
            // start path's freed memory is dirty already (25 KiB per idle ISC measured,
            // docs/benchmarks.md). Capacity only: the kernel fills what it delivers.
            buf: Vec::new(),
            queue: Default::default(),
            domains: HashMap::new(),
            overflows: 0,
            wake: None,
        })
    }

    /// Events parsed from the socket but not yet returned by [`KernelAuditReader::next_event`].
    pub fn has_queued(&self) -> bool {
        !self.queue.is_empty()
    }

    /// The socket (still a member of the group: records keep queueing in it) and what the
    /// reader has learnt, for a monitor that hibernates (isc's `monitor_hibernate`); call only
    /// without [`KernelAuditReader::has_queued`] events.
    pub fn into_parts(self) -> (OwnedFd, ReaderState) {
        (self.fd, ReaderState { domains: self.domains, overflows: self.overflows })
    }

    /// A reader again, from [`KernelAuditReader::into_parts`].
    pub fn from_parts(fd: OwnedFd, state: ReaderState) -> KernelAuditReader {
        KernelAuditReader {
            fd,
            buf: Vec::new(),
            queue: Default::default(),
            domains: state.domains,
            overflows: state.overflows,
            wake: None,
        }
    }

    /// Lets a write to the eventfd `fd` (owned by the caller, open while this reader waits)
    /// end a wait of [`KernelAuditReader::next_event`] early, as a timeout does: a reader
    /// sleeping on a quiet socket can be told to act at once. The event is consumed; if a
    /// record is readable too, that record is returned rather than the early end.
    pub fn wake_on(&mut self, fd: std::os::fd::RawFd) {
        self.wake = Some(fd);
    }

    /// Waits up to `timeout` for the next seccomp or Landlock event; `Ok(None)` on timeout.
    pub fn next_event(
        &mut self,
        timeout: Duration,
    ) -> Result<Option<KernelEvent>, KernelAuditError> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(e) = self.queue.pop_front() {
                return Ok(Some(e));
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let mut pfds = [
                libc::pollfd { fd: self.fd.as_raw_fd(), events: libc::POLLIN, revents: 0 },
                libc::pollfd { fd: self.wake.unwrap_or(-1), events: libc::POLLIN, revents: 0 },
            ];
            let ms = i32::try_from(left.as_millis()).unwrap_or(i32::MAX);
            // SAFETY: two valid pollfds (a negative fd is ignored) for the duration of the call.
            let rc = unsafe { libc::poll(pfds.as_mut_ptr(), 2, ms) };
            if rc < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(KernelAuditError::Recv(e));
            }
            if rc == 0 {
                return Ok(None);
            }
            if pfds[1].revents & libc::POLLIN != 0 {
                let mut n = 0u64;
                // SAFETY: an 8-byte read from the eventfd resets its counter.
                unsafe { libc::read(pfds[1].fd, (&mut n as *mut u64).cast(), 8) };
                // A wake only matters when there is nothing to read: a drain told to start
                // reads what is already queued before it decides anything.
                if pfds[0].revents & libc::POLLIN == 0 {
                    return Ok(None);
                }
            }
            self.buf.clear();
            self.buf.reserve_exact(RECV_BUF);
            // SAFETY: recv writes at most `capacity` bytes into the buffer's allocation.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    self.buf.as_mut_ptr().cast(),
                    self.buf.capacity(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EAGAIN) | Some(libc::EINTR) => continue,
                    // The kernel dropped multicast messages because we were slow: keep reading.
                    Some(libc::ENOBUFS) => {
                        self.overflows += 1;
                        tracing::warn!("kernel audit multicast overflow: some denials were lost");
                        continue;
                    }
                    _ => return Err(KernelAuditError::Recv(e)),
                }
            }
            // SAFETY: the kernel initialised the first n bytes (n <= capacity).
            unsafe { self.buf.set_len(n as usize) };
            let msgs = split_netlink(&self.buf);
            for (ty, payload) in msgs {
                self.handle(ty, &payload);
            }
        }
    }

    /// How often the socket overflowed (the kernel then drops multicast messages: an unknown
    /// number of events was lost each time). Callers should put a rise on the trail.
    pub fn overflows(&self) -> u64 {
        self.overflows
    }

    fn handle(&mut self, ty: u16, payload: &str) {
        match ty {
            AUDIT_SECCOMP => match parse_seccomp(payload) {
                Some(e) => self.queue.push_back(KernelEvent::Seccomp(e)),
                None => tracing::warn!(record = payload, "unparsable AUDIT_SECCOMP record"),
            },
            AUDIT_LANDLOCK_DOMAIN => {
                let (_, f) = parse_fields(payload);
                if let (Some(d), Some(pid)) = (field(&f, "domain"), field(&f, "pid")) {
                    if let Ok(pid) = pid.parse() {
                        self.domains.insert(d.to_owned(), pid);
                    }
                }
            }
            AUDIT_LANDLOCK_ACCESS => {
                let (audit_id, f) = parse_fields(payload);
                let domain = field(&f, "domain").unwrap_or("").to_owned();
                self.queue.push_back(KernelEvent::Landlock(LandlockEvent {
                    audit_id,
                    pid: self.domains.get(&domain).copied(),
                    blockers: field(&f, "blockers").unwrap_or("").to_owned(),
                    fields: f
                        .into_iter()
                        .filter(|(k, _)| k != "domain" && k != "blockers")
                        .collect(),
                    domain,
                }));
            }
            _ => {}
        }
    }

    /// Reads events until `stop()` returns true (checked every `poll` interval), appending each
    /// to `log` attributed by `attribute(pid)` (e.g. a cgroup lookup by the engine).
    pub fn pump(
        &mut self,
        log: &crate::AuditLog,
        attribute: &dyn Fn(u32) -> Option<String>,
        stop: &dyn Fn() -> bool,
        poll: Duration,
    ) -> Result<u64, KernelAuditError> {
        let mut n = 0;
        while !stop() {
            let Some(ev) = self.next_event(poll)? else {
                continue;
            };
            let isc = ev.pid().and_then(attribute);
            let (kind, actor, detail) = ev.to_record();
            match log.append(isc.as_deref(), kind, actor, detail) {
                Ok(_) => n += 1,
                Err(e) => tracing::error!(error = %e, "cannot record a kernel denial"),
            }
        }
        Ok(n)
    }
}

/// Splits a netlink datagram into `(type, payload text)` messages.
fn split_netlink(mut b: &[u8]) -> Vec<(u16, String)> {
    const HDR: usize = 16;
    let mut out = Vec::new();
    while b.len() >= HDR {
        let len = u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize;
        let ty = u16::from_ne_bytes([b[4], b[5]]);
        if len < HDR || len > b.len() {
            // The audit subsystem sends single messages whose nlmsg_len may count only the
            // header plus text; take what is there.
            out.push((ty, String::from_utf8_lossy(&b[HDR..]).into_owned()));
            break;
        }
        out.push((ty, String::from_utf8_lossy(&b[HDR..len]).into_owned()));
        let aligned = (len + 3) & !3;
        b = &b[aligned.min(b.len())..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A thread that denies itself getppid(2) with a logged EPERM (no TSYNC: the filter binds
    /// this thread only, seccomp(2)), so one AUDIT_SECCOMP record reaches the group.
    fn log_one_denial() {
        std::thread::spawn(|| {
            let filter = [
                libc::sock_filter { code: 0x20, jt: 0, jf: 0, k: 0 }, // ld [nr]
                libc::sock_filter { code: 0x15, jt: 0, jf: 1, k: libc::SYS_getppid as u32 },
                libc::sock_filter { code: 0x06, jt: 0, jf: 0, k: 0x0005_0000 | 1 }, // ERRNO(EPERM)
                libc::sock_filter { code: 0x06, jt: 0, jf: 0, k: 0x7fff_0000 },     // ALLOW
            ];
            let prog = libc::sock_fprog { len: 4, filter: filter.as_ptr() as *mut _ };
            // SAFETY: prctl and seccomp act on this thread only; `prog` outlives the call.
            unsafe {
                assert_eq!(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), 0);
                assert_eq!(libc::syscall(libc::SYS_seccomp, 1, 2, &prog), 0); // FLAG_LOG
                assert_eq!(libc::syscall(libc::SYS_getppid), -1);
            }
        })
        .join()
        .unwrap();
    }

    #[test]
    fn the_receive_buffer_is_allocated_at_the_first_receive() {
        let mut r = KernelAuditReader::open().expect("join AUDIT_NLGRP_READLOG (run as root)");
        assert_eq!(r.buf.capacity(), 0, "nothing is allocated at open (before the clone)");
        // Woken without data (an eventfd already readable): still nothing allocated.
        // SAFETY: eventfd(2) with flags only; the fd is owned right below.
        let wake = unsafe { OwnedFd::from_raw_fd(libc::eventfd(1, libc::EFD_CLOEXEC)) };
        r.wake_on(wake.as_raw_fd());
        assert!(r.next_event(Duration::from_secs(5)).unwrap().is_none());
        assert_eq!(r.buf.capacity(), 0);
        r.wake = None;
        log_one_denial();
        assert!(r.next_event(Duration::from_secs(2)).unwrap().is_some(), "a record arrived");
        assert_eq!(r.buf.capacity(), RECV_BUF);
    }

    #[test]
    fn parses_a_seccomp_record() {
        let t = "audit(1764300000.123:4567): auid=4294967295 uid=0 gid=0 ses=4294967295 \
                 subj=unconfined pid=4242 comm=\"getppid test\" exe=\"/usr/bin/x\" sig=0 \
                 arch=c000003e syscall=110 compat=0 ip=0x7f0000001000 code=0x50000";
        let e = parse_seccomp(t).unwrap();
        assert_eq!(e.audit_id, "1764300000.123:4567");
        assert_eq!(e.pid, 4242);
        assert_eq!(e.uid, Some(0));
        assert_eq!(e.comm, "getppid test");
        assert_eq!(e.exe.as_deref(), Some("/usr/bin/x"));
        assert_eq!(e.syscall, 110);
        assert_eq!(e.action(), "errno");
    }

    #[test]
    fn decodes_hex_encoded_untrusted_strings() {
        let (_, f) = parse_fields("audit(1.2:3): pid=1 comm=612062 syscall=1 code=0x7ffc0000");
        assert_eq!(field(&f, "comm"), Some("a b"));
    }

    #[test]
    fn landlock_access_is_attributed_through_its_domain_record() {
        let mut r = KernelAuditReader {
            // SAFETY: dup(2) returns a fresh descriptor that we own; it is never read from.
            fd: unsafe { OwnedFd::from_raw_fd(libc::dup(2)) },
            buf: Vec::new(),
            queue: Default::default(),
            domains: HashMap::new(),
            overflows: 0,
            wake: None,
        };
        r.handle(
            AUDIT_LANDLOCK_DOMAIN,
            "audit(1.2:3): domain=195ba459b status=allocated mode=enforcing pid=77 uid=0 exe=\"/x\" comm=\"x\"",
        );
        r.handle(
            AUDIT_LANDLOCK_ACCESS,
            "audit(1.2:3): domain=195ba459b blockers=fs.write_file path=\"/etc/passwd\" dev=\"vda\" ino=12",
        );
        let KernelEvent::Landlock(l) = r.queue.pop_front().unwrap() else {
            panic!("expected a Landlock event")
        };
        assert_eq!(l.pid, Some(77));
        assert_eq!(l.blockers, "fs.write_file");
        let (kind, _, d) = KernelEvent::Landlock(l).to_record();
        assert_eq!(kind, Kind::LandlockDenial);
        assert_eq!(d["path"], "/etc/passwd");
    }
}
