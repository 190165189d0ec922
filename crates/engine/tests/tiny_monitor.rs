//! The hibernating monitor (`tiny/monitor.rs`) on its own, outside an ISC: a forked child
//! execs it from its sealed memfd with a plan, as the monitor does, and `/bin/sh` stands in for
//! the whole isc it execs on wake. Its argv is `isc-test -c <script> isc-test 'a b' c`, so the
//! woken shell runs the script, which copies its own `/proc/PID/cmdline` and `environ` into a
//! directory and exits 7: both must be the tiny monitor's, byte for byte. Between the two
//! execs the test checks that the child sleeps as the tiny monitor (`/proc/PID/exe`).

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::linux::fs::MetadataExt;
use std::time::{Duration, Instant};

use isc_engine::hibernate::{self, MonitorPlan, PLAN_ENV};

/// How long a sleeping monitor is watched to see that it does not wake.
const QUIET: Duration = Duration::from_millis(200);
/// The woken script's exit status: the exit came from the shell, not the tiny monitor.
const WOKE: i32 = 7;
/// Host uids of the pretend ISC, for the audit filter.
const UID_LO: u32 = 100_000;
const UID_HI: u32 = 165_536;

/// A forked child running the tiny monitor, SIGKILLed and reaped on drop unless it ended.
struct Sleeper {
    pid: libc::pid_t,
    reaped: bool,
    argv: Vec<CString>,
    envp: Vec<CString>,
    report: tempfile::TempDir,
}

/// `/bin/sh` as the "isc" to wake, opened close-on-exec (the child clears the flag).
fn sh() -> OwnedFd {
    std::fs::File::open("/bin/sh").unwrap().into()
}

fn plan(exe: &OwnedFd) -> MonitorPlan {
    MonitorPlan {
        exe_fd: exe.as_raw_fd(),
        audit_fd: -1,
        deadline_ms: -1,
        uid_lo: UID_LO,
        uid_hi: UID_HI,
        pidns_ino: 0,
        fds: vec![],
        foreign_domains: vec![],
    }
}

/// A close-on-exec memfd holding `bytes` as they are (a plan `plan_memfd` would refuse).
fn raw_plan(bytes: &[u8]) -> OwnedFd {
    // SAFETY: memfd_create with a NUL-terminated name; the result is checked.
    let raw = unsafe { libc::memfd_create(c"raw-plan".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(raw >= 0, "{}", std::io::Error::last_os_error());
    // SAFETY: a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    std::fs::write(format!("/proc/self/fd/{raw}"), bytes).unwrap();
    fd
}

fn pipe() -> (OwnedFd, OwnedFd) {
    let mut p = [0; 2];
    // SAFETY: pipe2 into a local array; both ends are then owned here.
    assert_eq!(unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: two fresh descriptors nobody else owns.
    unsafe { (OwnedFd::from_raw_fd(p[0]), OwnedFd::from_raw_fd(p[1])) }
}

/// A datagram socketpair: `.0` is the fake audit socket, `.1` the "kernel" that sends on it.
fn fake_audit() -> (OwnedFd, OwnedFd) {
    let mut p = [0; 2];
    // SAFETY: socketpair into a local array; both ends are then owned here.
    let rc = unsafe {
        libc::socketpair(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0, p.as_mut_ptr())
    };
    assert_eq!(rc, 0);
    // SAFETY: two fresh descriptors nobody else owns.
    unsafe { (OwnedFd::from_raw_fd(p[0]), OwnedFd::from_raw_fd(p[1])) }
}

fn mono_ms() -> i64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec we own.
    assert_eq!(unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) }, 0);
    ts.tv_sec * 1000 + ts.tv_nsec / 1_000_000
}

fn own_pidns_ino() -> u64 {
    std::fs::metadata("/proc/self/ns/pid").unwrap().st_ino()
}

/// Forks and execs the tiny monitor with `plan_fd` named in its environment; `keep` are the
/// descriptors it must inherit (the plan's own, the "isc" and the plan memfd). With `env`
/// false the plan variable is left out.
fn start_with(plan_fd: &OwnedFd, keep: &[RawFd], env: bool) -> Sleeper {
    let tiny = hibernate::tiny_monitor().unwrap();
    let report = tempfile::tempdir().unwrap();
    let dir = report.path().to_str().unwrap();
    let script = format!(
        "/bin/cat /proc/$$/cmdline >'{dir}/cmdline' && /bin/cat /proc/$$/environ >'{dir}/environ' \
         && exit {WOKE}"
    );
    let argv: Vec<CString> = ["isc-test", "-c", &script, "isc-test", "a b", "c"]
        .into_iter()
        .map(|a| CString::new(a).unwrap())
        .collect();
    let mut envp = vec![CString::new("A=1").unwrap()];
    if env {
        envp.push(CString::new(format!("{PLAN_ENV}={}", plan_fd.as_raw_fd())).unwrap());
    }
    envp.push(CString::new("B=x y").unwrap());
    let mut argv_p: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_p.push(std::ptr::null());
    let mut envp_p: Vec<*const libc::c_char> = envp.iter().map(|e| e.as_ptr()).collect();
    envp_p.push(std::ptr::null());
    let mut keep = keep.to_vec();
    keep.push(plan_fd.as_raw_fd());
    // SAFETY: fork; the child only calls fcntl, execveat and _exit (async-signal-safe) on
    // memory prepared before the fork.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "{}", std::io::Error::last_os_error());
    if pid == 0 {
        // SAFETY: see above; the arrays are NULL-terminated and outlive the exec.
        unsafe {
            for &fd in &keep {
                libc::fcntl(fd, libc::F_SETFD, 0);
            }
            libc::syscall(
                libc::SYS_execveat,
                tiny.as_raw_fd(),
                c"".as_ptr(),
                argv_p.as_ptr(),
                envp_p.as_ptr(),
                libc::AT_EMPTY_PATH,
            );
            libc::_exit(127);
        }
    }
    Sleeper { pid, reaped: false, argv, envp, report }
}

fn start(plan_fd: &OwnedFd, keep: &[RawFd]) -> Sleeper {
    start_with(plan_fd, keep, true)
}

impl Sleeper {
    fn exe(&self) -> String {
        std::fs::read_link(format!("/proc/{}/exe", self.pid))
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    fn exited(&mut self) -> Option<i32> {
        let mut st = 0;
        // SAFETY: waitpid on our own child, non-blocking, status into a local.
        let rc = unsafe { libc::waitpid(self.pid, &mut st, libc::WNOHANG) };
        assert!(rc >= 0, "{}", std::io::Error::last_os_error());
        (rc == self.pid).then(|| {
            self.reaped = true;
            st
        })
    }

    /// Waits until the child runs the tiny monitor.
    fn asleep(self) -> Sleeper {
        let t = Instant::now();
        while !self.exe().starts_with("/memfd:isc-monitor ") {
            assert!(t.elapsed() < Duration::from_secs(5), "no tiny monitor: {}", self.exe());
            std::thread::sleep(Duration::from_millis(5));
        }
        self
    }

    /// It is still the tiny monitor after `QUIET`.
    fn stays_asleep(&mut self) {
        self.stays_asleep_at("");
    }

    /// `stays_asleep`, with `what` in the failure message.
    fn stays_asleep_at(&mut self, what: &str) {
        std::thread::sleep(QUIET);
        assert_eq!(self.exited(), None, "{what}: the tiny monitor ended");
        assert!(self.exe().starts_with("/memfd:isc-monitor "), "{what}: {}", self.exe());
    }

    /// The raw wait status once the child ends (within 10 s); `what` is for failure messages.
    fn wait(&mut self, what: &str) -> i32 {
        let t = Instant::now();
        loop {
            if let Some(st) = self.exited() {
                return st;
            }
            assert!(t.elapsed() < Duration::from_secs(10), "{what}: still running: {}", self.exe());
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// It woke: the shell ran with exactly the tiny monitor's argv and envp, in this process.
    fn woke(&mut self) {
        self.woke_at("");
    }

    /// `woke`, with `what` in the failure messages.
    fn woke_at(&mut self, what: &str) {
        let st = self.wait(what);
        assert!(libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == WOKE, "{what}: status {st:#x}");
        let joined = |v: &[CString]| -> Vec<u8> {
            v.iter().flat_map(|s| s.as_bytes_with_nul().iter().copied()).collect()
        };
        let read = |name: &str| std::fs::read(self.report.path().join(name)).unwrap();
        assert_eq!(read("cmdline"), joined(&self.argv));
        assert_eq!(read("environ"), joined(&self.envp));
    }

    /// It exited by itself with `code`, without waking the shell.
    fn exits(&mut self, code: i32) {
        let st = self.wait("");
        assert!(libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == code, "wait status {st:#x}");
        assert!(!self.report.path().join("cmdline").exists(), "the shell ran");
    }
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        if !self.reaped {
            // SAFETY: SIGKILL to our own unreaped child, then a blocking reap of it.
            unsafe {
                libc::kill(self.pid, libc::SIGKILL);
                libc::waitpid(self.pid, std::ptr::null_mut(), 0);
            }
        }
    }
}

/// The first datagram queued on `sock`, left queued; `None` if there is none.
fn peek(sock: &OwnedFd) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 16 * 1024];
    // SAFETY: recv into a local buffer of the given size.
    let n = unsafe {
        libc::recv(
            sock.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        assert_eq!(std::io::Error::last_os_error().raw_os_error(), Some(libc::EAGAIN));
        return None;
    }
    buf.truncate(n as usize);
    Some(buf)
}

/// `AUDIT_SECCOMP`, `AUDIT_LANDLOCK_ACCESS`, `AUDIT_LANDLOCK_DOMAIN`: the record types the
/// whole monitor's reader handles, and `AUDIT_SYSCALL`, one it ignores.
const SECCOMP: u16 = 1326;
const LANDLOCK_ACCESS: u16 = 1423;
const LANDLOCK_DOMAIN: u16 = 1424;
const SYSCALL: u16 = 1300;

/// An audit record of type `ty` as the kernel multicasts it: nlmsghdr (length, type, no
/// flags) and the text.
fn typed(ty: u16, text: &str) -> Vec<u8> {
    nlmsg(ty, text, 16 + text.len() as u32)
}

/// An `AUDIT_SECCOMP` record.
fn record(text: &str) -> Vec<u8> {
    typed(SECCOMP, text)
}

fn nlmsg(ty: u16, text: &str, nlmsg_len: u32) -> Vec<u8> {
    let mut b = nlmsg_len.to_ne_bytes().to_vec();
    b.extend_from_slice(&ty.to_ne_bytes());
    b.extend_from_slice(&[0; 10]);
    b.extend_from_slice(text.as_bytes());
    b
}

fn write(fd: &OwnedFd, bytes: &[u8]) -> isize {
    // SAFETY: write from a live slice.
    unsafe { libc::write(fd.as_raw_fd(), bytes.as_ptr().cast(), bytes.len()) }
}

fn send(sock: &OwnedFd, datagram: &[u8]) {
    // SAFETY: send from a live slice.
    let n = unsafe { libc::send(sock.as_raw_fd(), datagram.as_ptr().cast(), datagram.len(), 0) };
    assert_eq!(n, datagram.len() as isize, "{}", std::io::Error::last_os_error());
}

/// A pid no process can have (pids are below pid_max).
fn gone_pid() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/pid_max").unwrap().trim().parse().unwrap()
}

#[test]
fn it_sleeps_until_a_descriptor_is_readable_then_execs_isc_with_its_argv_and_env() {
    let exe = sh();
    let (quiet_r, _quiet_w) = pipe();
    let (r, w) = pipe();
    // A quiet audit socket too: the plan's descriptors wake it on their own.
    let (audit, _kernel) = fake_audit();
    let p = MonitorPlan {
        fds: vec![quiet_r.as_raw_fd(), r.as_raw_fd()],
        ..audit_plan(&exe, &audit, own_pidns_ino() + 1)
    };
    let plan_fd = p.plan_memfd().unwrap();
    let keep = [exe.as_raw_fd(), quiet_r.as_raw_fd(), r.as_raw_fd(), audit.as_raw_fd()];
    let mut s = start(&plan_fd, &keep).asleep();
    s.stays_asleep();
    assert_eq!(write(&w, b"x"), 1);
    s.woke();
    // The byte is for the whole monitor: the tiny one did not read it.
    let mut got = [0u8; 4];
    // SAFETY: read into a local buffer; the pipe holds the byte (the child is gone).
    let n = unsafe { libc::read(r.as_raw_fd(), got.as_mut_ptr().cast(), 4) };
    assert_eq!(&got[..n as usize], b"x");
}

#[test]
fn it_wakes_when_a_write_end_is_closed() {
    let exe = sh();
    let (r, w) = pipe();
    let (audit, _kernel) = fake_audit();
    let p = MonitorPlan { fds: vec![r.as_raw_fd()], ..audit_plan(&exe, &audit, 1) };
    let plan_fd = p.plan_memfd().unwrap();
    let mut s = start(&plan_fd, &[exe.as_raw_fd(), r.as_raw_fd(), audit.as_raw_fd()]).asleep();
    s.stays_asleep();
    drop(w);
    s.woke();
}

#[test]
fn it_wakes_at_the_deadline_and_at_once_if_it_has_passed() {
    let exe = sh();
    let (r, _w) = pipe();
    let deadline_ms = mono_ms() + 700;
    let p = MonitorPlan { deadline_ms, fds: vec![r.as_raw_fd()], ..plan(&exe) };
    let plan_fd = p.plan_memfd().unwrap();
    let mut s = start(&plan_fd, &[exe.as_raw_fd(), r.as_raw_fd()]).asleep();
    s.stays_asleep();
    s.woke();
    let now = mono_ms();
    assert!(now >= deadline_ms, "woke {} ms early", deadline_ms - now);
    assert!(now < deadline_ms + 2000, "woke {} ms late", now - deadline_ms);

    let passed = MonitorPlan { deadline_ms: mono_ms() - 1000, ..plan(&exe) };
    let plan_fd = passed.plan_memfd().unwrap();
    let t = Instant::now();
    start(&plan_fd, &[exe.as_raw_fd()]).woke();
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
}

#[test]
fn a_plan_it_does_not_understand_wakes_isc_at_once() {
    let exe = sh();
    let (r, _w) = pipe();
    let good = MonitorPlan { fds: vec![r.as_raw_fd(), r.as_raw_fd()], ..plan(&exe) }.encode();
    let mut bad_magic = good.clone();
    bad_magic[3] = b'2';
    let mut bad_version = good.clone();
    bad_version[4] = 2;
    let too_many = MonitorPlan { fds: vec![r.as_raw_fd(); 65], ..plan(&exe) }.encode();
    // Ends inside the descriptors.
    let short = good[..44 + 4].to_vec();
    let header_only = good[..20].to_vec();
    let domains = MonitorPlan { foreign_domains: vec![0x1a, 0x2b], ..plan(&exe) };
    let domains = MonitorPlan { fds: vec![r.as_raw_fd()], ..domains }.encode();
    let short_domains = domains[..domains.len() - 1].to_vec();
    let short_count = domains[..44 + 4 + 2].to_vec();
    let mut too_many_domains = domains[..44 + 4].to_vec();
    too_many_domains.extend_from_slice(&65u32.to_le_bytes());
    too_many_domains.extend(std::iter::repeat_n(0x1a, 65 * 8));
    for (what, bytes) in [
        ("bad magic", bad_magic),
        ("bad version", bad_version),
        ("65 fds", too_many),
        ("short fds", short),
        ("short header", header_only),
        ("short domains", short_domains),
        ("short domain count", short_count),
        ("65 domains", too_many_domains),
    ] {
        let plan_fd = raw_plan(&bytes);
        let t = Instant::now();
        // Nothing else would ever wake it: no deadline, and nobody writes the pipe.
        let mut s = start(&plan_fd, &[exe.as_raw_fd(), r.as_raw_fd()]);
        s.woke();
        assert!(t.elapsed() < Duration::from_secs(3), "{what}: {:?}", t.elapsed());
    }
    // The same plans, intact, sleep; so does one that ends after its descriptors (no
    // domains).
    let without_tail = good[..good.len() - 4].to_vec();
    for bytes in [good, domains, without_tail] {
        start(&raw_plan(&bytes), &[exe.as_raw_fd(), r.as_raw_fd()]).asleep().stays_asleep();
    }
}

#[test]
fn without_a_plan_or_an_executable_it_exits_125() {
    let exe = sh();
    let plan_fd = plan(&exe).plan_memfd().unwrap();
    // No ISC_HIBERNATE_PLAN: no executable to wake.
    start_with(&plan_fd, &[exe.as_raw_fd()], false).exits(125);
    // Not even the plan's exe_fd is there to read.
    start(&raw_plan(&plan(&exe).encode()[..11]), &[exe.as_raw_fd()]).exits(125);
    // A wake that cannot exec (not an executable): retried 3 times 100 ms apart, then 125.
    let not_exe: OwnedFd = std::fs::File::open("/dev/null").unwrap().into();
    let p = MonitorPlan { exe_fd: not_exe.as_raw_fd(), deadline_ms: 0, ..plan(&exe) };
    let plan_fd = p.plan_memfd().unwrap();
    let t = Instant::now();
    start(&plan_fd, &[not_exe.as_raw_fd()]).exits(125);
    assert!(t.elapsed() >= Duration::from_millis(300), "{:?}", t.elapsed());
}

/// A plan whose audit socket is the fake's first end, for an ISC in the PID namespace whose
/// `/proc/N/ns/pid` inode is `pidns_ino` (0: unknown).
fn audit_plan(exe: &OwnedFd, audit: &OwnedFd, pidns_ino: u64) -> MonitorPlan {
    MonitorPlan { audit_fd: audit.as_raw_fd(), pidns_ino, ..plan(exe) }
}

#[test]
fn audit_records_the_whole_monitor_would_drop_are_consumed_and_its_own_wake_it_unread() {
    let exe = sh();
    let me = std::process::id();
    let gone = gone_pid();
    // The test runs in the pretend ISC's PID namespace: its own pid is the ISC's.
    let ours = own_pidns_ino();
    let cases: [(&str, u64, Vec<u8>); 8] = [
        (
            "a type the reader ignores",
            ours,
            typed(SYSCALL, &format!("audit(1.2:3): ppid=1 pid={me} auid={UID_LO} uid={UID_LO}")),
        ),
        ("a gone pid", ours, record(&format!("audit(1.2:3): pid={gone} uid=0 comm=\"x\""))),
        ("no pid and no uid", ours, record("audit(1.2:3): arch=c000003e syscall=1 code=0x0")),
        (
            "another PID namespace",
            ours + 1,
            record(&format!("audit(1.2:3): auid=0 uid=0 ses=1 pid={me} comm=\"x\"")),
        ),
        ("PID namespace unknown", 0, record(&format!("audit(1.2:3): pid={me} uid={UID_HI}"))),
        (
            "only other *uid= fields in range",
            ours,
            record(&format!(
                "audit(1.2:3): auid={UID_LO} euid={UID_LO} suid={UID_LO} fsuid={UID_LO} \
                 ouid={UID_LO} uid={UID_HI} pid={gone}"
            )),
        ),
        ("only a ppid= of the ISC's", ours, record(&format!("audit(1.2:3): ppid={me} uid=0"))),
        // pid= first in the text; an nlmsg_len past the datagram: the text is all of it.
        ("nlmsg_len past the datagram", ours, nlmsg(SECCOMP, &format!("pid={gone}"), 100_000)),
    ];
    for (what, pidns_ino, datagram) in cases {
        let (audit, kernel) = fake_audit();
        let plan_fd = audit_plan(&exe, &audit, pidns_ino).plan_memfd().unwrap();
        let mut s = start(&plan_fd, &[exe.as_raw_fd(), audit.as_raw_fd()]).asleep();
        send(&kernel, &datagram);
        s.stays_asleep_at(what);
        assert_eq!(peek(&audit), None, "{what}: the record was consumed");
    }
    // One after the other, then the ISC's own: it wakes, and that record is left queued.
    let (audit, kernel) = fake_audit();
    let plan_fd = audit_plan(&exe, &audit, ours).plan_memfd().unwrap();
    let mut s = start(&plan_fd, &[exe.as_raw_fd(), audit.as_raw_fd()]).asleep();
    send(&kernel, &typed(SYSCALL, &format!("audit(1.2:4): pid={me} uid={UID_LO}")));
    send(&kernel, &record(&format!("audit(1.2:4): pid={gone} uid=0")));
    s.stays_asleep();
    assert_eq!(peek(&audit), None, "the records were consumed");
    let own = record(&format!("audit(1.2:5): pid={me} uid=0 comm=\"x\""));
    send(&kernel, &own);
    s.woke();
    assert_eq!(peek(&audit), Some(own), "the ISC's own record is left for the whole monitor");
}

#[test]
fn audit_records_of_the_isc_or_that_it_cannot_judge_wake_it_and_stay_queued() {
    let exe = sh();
    let me = std::process::id();
    let gone = gone_pid();
    let ours = own_pidns_ino();
    // Each would be dropped but for what the case is about.
    let two = {
        let mut b = record(&format!("audit(1.2:3): pid={gone}"));
        while !b.len().is_multiple_of(4) {
            b.push(0);
        }
        b.extend(record(&format!("audit(1.2:3): pid={gone} uid=0")));
        b
    };
    let cases: [(&str, u64, Vec<u8>); 14] = [
        ("a uid in range", ours, record(&format!("audit(1.2:3): pid={gone} uid={}", UID_HI - 1))),
        ("a pid in its namespace", ours, record(&format!("audit(1.2:3): uid=0 pid={me}"))),
        (
            "a second pid in its namespace",
            ours,
            record(&format!("audit(1.2:3): pid={gone} uid=0 pid={me}")),
        ),
        (
            "a Landlock access with a pid in its namespace",
            ours,
            typed(LANDLOCK_ACCESS, &format!("audit(1.2:3): domain=1a blockers=fs.x pid={me}")),
        ),
        // As the kernel writes them: attributed by the domain's pid, which only the whole
        // monitor knows.
        (
            "a Landlock access, which has no pid",
            ours,
            typed(LANDLOCK_ACCESS, "audit(1.2:3): domain=1a blockers=fs.write_file path=\"/x\""),
        ),
        (
            "a Landlock domain created in its namespace",
            ours,
            typed(
                LANDLOCK_DOMAIN,
                &format!("audit(1.2:3): domain=1a status=allocated mode=enforcing pid={me} uid=0"),
            ),
        ),
        ("a pid that is not a number", ours, record("audit(1.2:3): pid=abc uid=0")),
        ("a uid that is not a number", ours, record(&format!("audit(1.2:3): pid={gone} uid=x1"))),
        ("two messages", ours, two),
        (
            "cut at 9 KiB",
            ours,
            record(&format!("audit(1.2:3): pid={gone} uid=0 {}", "a".repeat(9 * 1024))),
        ),
        (
            "nlmsg_len shorter than the header",
            ours,
            nlmsg(SECCOMP, &format!("audit(1.2:3): pid={gone} uid=0"), 15),
        ),
        ("no text", ours, nlmsg(SECCOMP, "", 16)[..12].to_vec()),
        ("empty", ours, vec![]),
        // Unknown namespace: the uid alone makes it the ISC's.
        (
            "a uid in range, PID namespace unknown",
            0,
            record(&format!("audit(1.2:3): uid={UID_LO}")),
        ),
    ];
    for (what, pidns_ino, datagram) in cases {
        let (audit, kernel) = fake_audit();
        let plan_fd = audit_plan(&exe, &audit, pidns_ino).plan_memfd().unwrap();
        let mut s = start(&plan_fd, &[exe.as_raw_fd(), audit.as_raw_fd()]).asleep();
        send(&kernel, &datagram);
        let t = Instant::now();
        s.woke_at(what);
        assert!(t.elapsed() < Duration::from_secs(3), "{what}: {:?}", t.elapsed());
        assert_eq!(peek(&audit).as_deref(), Some(&datagram[..]), "{what}");
    }
}

#[test]
fn an_audit_socket_that_is_shut_down_or_not_open_wakes_it() {
    let exe = sh();
    let (audit, _kernel) = fake_audit();
    let plan_fd = audit_plan(&exe, &audit, own_pidns_ino() + 1).plan_memfd().unwrap();
    let mut s = start(&plan_fd, &[exe.as_raw_fd(), audit.as_raw_fd()]).asleep();
    s.stays_asleep();
    // POLLHUP (and a readable end of file) on the socket the tiny monitor shares with us.
    // SAFETY: shutdown(2) of a socket we hold.
    assert_eq!(unsafe { libc::shutdown(audit.as_raw_fd(), libc::SHUT_RDWR) }, 0);
    s.woke();
    // POLLNVAL alone: a descriptor the tiny monitor does not have (close-on-exec here).
    let (audit, _kernel) = fake_audit();
    let plan_fd = audit_plan(&exe, &audit, own_pidns_ino() + 1).plan_memfd().unwrap();
    let t = Instant::now();
    start(&plan_fd, &[exe.as_raw_fd()]).woke();
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
}

/// An `AUDIT_LANDLOCK_ACCESS` record of `domain`, as the kernel writes it (no pid, no uid).
fn access(domain: &str) -> Vec<u8> {
    typed(
        LANDLOCK_ACCESS,
        &format!(
            "audit(1.2:3): domain={domain} blockers=fs.write_file path=\"/etc/passwd\" dev=\"vda\" \
             ino=12"
        ),
    )
}

/// An `AUDIT_LANDLOCK_DOMAIN` record: `domain` created by `pid` (uid `uid`).
fn created(domain: &str, pid: u32, uid: u32) -> Vec<u8> {
    typed(
        LANDLOCK_DOMAIN,
        &format!(
            "audit(1.2:3): domain={domain} status=allocated mode=enforcing pid={pid} uid={uid} \
             exe=\"/x\" comm=\"x\""
        ),
    )
}

#[test]
fn landlock_access_records_of_a_domain_the_plan_lists_as_anothers_are_dropped() {
    let exe = sh();
    let (audit, kernel) = fake_audit();
    let p = MonitorPlan {
        foreign_domains: vec![0x7, 0x1_95ba_459b, u64::MAX],
        ..audit_plan(&exe, &audit, own_pidns_ino())
    };
    let plan_fd = p.plan_memfd().unwrap();
    let mut s = start(&plan_fd, &[exe.as_raw_fd(), audit.as_raw_fd()]).asleep();
    for domain in ["195ba459b", "7", "ffffffffffffffff", "195ba459b"] {
        send(&kernel, &access(domain));
        s.stays_asleep_at(domain);
        assert_eq!(peek(&audit), None, "{domain}: the record was consumed");
    }
    // An unknown domain may be the ISC's: it wakes, unread.
    let unknown = access("195ba459c");
    send(&kernel, &unknown);
    s.woke();
    assert_eq!(peek(&audit), Some(unknown));
}

#[test]
fn a_domain_created_by_another_makes_its_access_records_anothers() {
    let exe = sh();
    let me = std::process::id();
    // The ISC's PID namespace is not the test's: `me` is another's process.
    let (audit, kernel) = fake_audit();
    let plan_fd = audit_plan(&exe, &audit, own_pidns_ino() + 1).plan_memfd().unwrap();
    let mut s = start(&plan_fd, &[exe.as_raw_fd(), audit.as_raw_fd()]).asleep();
    send(&kernel, &created("195ba459b", me, 0));
    s.stays_asleep_at("the creation");
    send(&kernel, &access("195ba459b"));
    s.stays_asleep_at("the access");
    assert_eq!(peek(&audit), None, "both records were consumed");
    // A deallocation record has no pid: dropped, but it makes no domain another's.
    send(&kernel, &typed(LANDLOCK_DOMAIN, "audit(1.2:4): domain=2c status=deallocated denials=1"));
    s.stays_asleep_at("the deallocation");
    let other = access("2c");
    send(&kernel, &other);
    s.woke_at("an access of a domain of unknown creator");
    assert_eq!(peek(&audit), Some(other));
}

#[test]
fn landlock_access_records_of_an_unknown_domain_wake_it_and_stay_queued() {
    let exe = sh();
    let (audit, kernel) = fake_audit();
    let p =
        MonitorPlan { foreign_domains: vec![0x1a], ..audit_plan(&exe, &audit, own_pidns_ino()) };
    let plan_fd = p.plan_memfd().unwrap();
    let mut s = start(&plan_fd, &[exe.as_raw_fd(), audit.as_raw_fd()]).asleep();
    let record = access("1b");
    send(&kernel, &record);
    s.woke();
    assert_eq!(peek(&audit), Some(record));
}

#[test]
fn a_domain_created_by_the_isc_wakes_it_and_its_access_records_are_not_dropped() {
    let exe = sh();
    let gone = gone_pid();
    // Another namespace, but a uid of the ISC's.
    let (audit, kernel) = fake_audit();
    let p = MonitorPlan { foreign_domains: vec![0x1a], ..audit_plan(&exe, &audit, 1) };
    let plan_fd = p.plan_memfd().unwrap();
    let mut s = start(&plan_fd, &[exe.as_raw_fd(), audit.as_raw_fd()]).asleep();
    let own = created("2b", gone, UID_LO);
    send(&kernel, &own);
    s.woke();
    assert_eq!(peek(&audit), Some(own));
}

#[test]
fn landlock_records_with_a_malformed_or_second_domain_wake_it() {
    let exe = sh();
    let me = std::process::id();
    let access_with = |fields: &str| typed(LANDLOCK_ACCESS, &format!("audit(1.2:3): {fields}"));
    let cases = [
        ("0x1a", access_with("domain=0x1a blockers=fs.x")),
        ("upper case", access_with("domain=1A blockers=fs.x")),
        ("a leading zero", access_with("domain=01a blockers=fs.x")),
        ("empty", access_with("domain= blockers=fs.x")),
        ("17 digits", access_with("domain=1000000000000001a blockers=fs.x")),
        ("a second domain", access_with("domain=1a blockers=fs.x domain=2b")),
        ("no domain", access_with("blockers=fs.x")),
        ("a creation's malformed domain", created("1A", me, 0)),
        ("a creation with two domains", {
            typed(LANDLOCK_DOMAIN, &format!("audit(1.2:3): domain=1a domain=2b pid={me} uid=0"))
        }),
    ];
    for (what, datagram) in cases {
        let (audit, kernel) = fake_audit();
        let p = MonitorPlan {
            foreign_domains: vec![0x1a, 0x2b],
            ..audit_plan(&exe, &audit, own_pidns_ino() + 1)
        };
        let plan_fd = p.plan_memfd().unwrap();
        let mut s = start(&plan_fd, &[exe.as_raw_fd(), audit.as_raw_fd()]).asleep();
        send(&kernel, &datagram);
        s.woke_at(what);
        assert_eq!(peek(&audit).as_deref(), Some(&datagram[..]), "{what}");
    }
    // The last field of a record may end with a newline or NULs.
    let (audit, kernel) = fake_audit();
    let p = MonitorPlan { foreign_domains: vec![0x1a], ..audit_plan(&exe, &audit, 1) };
    let plan_fd = p.plan_memfd().unwrap();
    let mut s = start(&plan_fd, &[exe.as_raw_fd(), audit.as_raw_fd()]).asleep();
    send(&kernel, &access_with("blockers=fs.x domain=1a\n"));
    send(&kernel, &access_with("blockers=fs.x domain=1a\0\0"));
    s.stays_asleep();
    assert_eq!(peek(&audit), None);
}

#[test]
fn the_known_domains_are_a_ring_of_64() {
    let exe = sh();
    let me = std::process::id();
    let (audit, kernel) = fake_audit();
    let p = MonitorPlan {
        foreign_domains: (1..=64).collect(),
        ..audit_plan(&exe, &audit, own_pidns_ino() + 1)
    };
    let plan_fd = p.plan_memfd().unwrap();
    let mut s = start(&plan_fd, &[exe.as_raw_fd(), audit.as_raw_fd()]).asleep();
    // A known domain's creation adds nothing; a new one takes the oldest's place (1).
    send(&kernel, &created("40", me, 0));
    send(&kernel, &created("100", me, 0));
    for domain in ["100", "2", "40"] {
        send(&kernel, &access(domain));
    }
    s.stays_asleep();
    assert_eq!(peek(&audit), None, "all consumed");
    let oldest = access("1");
    send(&kernel, &oldest);
    s.woke();
    assert_eq!(peek(&audit), Some(oldest));
}
