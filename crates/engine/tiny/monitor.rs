//! `isc-monitor`: an ISC's monitor while the ISC is idle (hibernate.rs, `MonitorPlan`).
//!
//! The whole monitor execs this program in place once the ISC has been quiet, keeping the
//! descriptors it waits on: an idle monitor then costs a few pages instead of its copy of the
//! isc binary's relocated data, heap, stacks and page tables. It sleeps until one of those
//! descriptors has something, the plan's deadline passes or a kernel audit record arrives that
//! may be this ISC's, and then execs the whole isc back, which resumes the monitor from its
//! saved state. argv and envp go back exactly as they came: other processes know the monitor
//! by `/proc/PID/cmdline`, and the whole isc finds its state through its environment.
//!
//! The one event handled here is an audit record the whole monitor would read and drop: every
//! monitor's audit socket receives every record on the host, and waking for each would wake
//! every idle monitor whenever any process on the host is audited. `foreign` applies the whole
//! monitor's own test (`Attribution::owns`, crates/cli/src/audit_collect.rs) to the record's
//! text, so a record is dropped here exactly when waking would only have the whole isc drop it;
//! anything else, and anything this program cannot judge, wakes the whole isc unread. A
//! Landlock access record names only its domain: it is dropped if that domain is known to be
//! another's (the plan lists those of the collector's table whose creator is not in the ISC's
//! PID namespace, and the creation records dropped here add theirs), and wakes the whole isc
//! otherwise; so one ISC's repeated denials do not wake every sleeping monitor on the host
//! (its first denial in a new domain still does, once: the kernel logs the domain's creation
//! record after it).
//!
//! No libc, no allocation, no std: raw system calls. Built by `build.rs` as a static PIE
//! without relocations (ASLR kept, nothing to relocate), embedded in isc and exec'd from a
//! sealed, execute-only memfd.
//!
//! Input: `ISC_HIBERNATE_PLAN=<fd>` in envp names a memfd holding the plan (`parse`; written by
//! `hibernate::MonitorPlan`). Nothing is closed and the signal mask is left as inherited: the
//! monitor reads its signals through a signalfd, which is one of the plan's descriptors.
#![no_std]
#![no_main]

use core::mem::MaybeUninit;
use rt::{exit, syscall};

const SYS_PREAD64: usize = 17;
const SYS_NANOSLEEP: usize = 35;
const SYS_RECVFROM: usize = 45;
const SYS_CLOCK_GETTIME: usize = 228;
const SYS_NEWFSTATAT: usize = 262;
const SYS_PPOLL: usize = 271;
const SYS_EXECVEAT: usize = 322;

const EINTR: isize = -4;
const EAGAIN: isize = -11;
const POLLIN: i16 = 1;
const POLLERR: i16 = 8;
const POLLHUP: i16 = 16;
const POLLNVAL: i16 = 32;
const MSG_PEEK: usize = 2;
const MSG_DONTWAIT: usize = 0x40;
const CLOCK_MONOTONIC: usize = 1;
const AT_FDCWD: isize = -100;
const AT_EMPTY_PATH: usize = 0x1000;

const PLAN_ENV: &[u8] = b"ISC_HIBERNATE_PLAN=";
/// "ISM1", little-endian.
const PLAN_MAGIC: u32 = 0x314D_5349;
const PLAN_VERSION: u32 = 1;
const PLAN_HEADER: usize = 44;
const PLAN_MAX: usize = 4096;
const MAX_FDS: usize = 64;
/// Landlock domain ids known to be another's: the plan's, then those learnt from the creation
/// records dropped here (a ring once full).
const MAX_DOMAINS: usize = 64;
/// Audit records are at most ~8970 bytes (`MAX_AUDIT_MESSAGE_LENGTH`, linux/audit.h); a
/// datagram that fills this buffer may have been cut, and proves nothing.
const RECORD_MAX: usize = 9 * 1024;
const NLMSG_HDRLEN: usize = 16;
/// The record types the whole monitor's reader handles (crates/audit/src/kernel.rs,
/// `KernelAuditReader::handle`); it ignores every other.
const AUDIT_SECCOMP: u16 = 1326;
const AUDIT_LANDLOCK_ACCESS: u16 = 1423;
const AUDIT_LANDLOCK_DOMAIN: u16 = 1424;
/// A failed wake is retried this often, `RETRY_NS` apart, before the process gives up.
const WAKE_RETRIES: usize = 3;
const RETRY_NS: i64 = 100_000_000;

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    // The monitor's death closes PID 1's channel, and PID 1 ends the ISC: the safe failure.
    exit(125)
}

/// The process's own argument and environment arrays, handed back unchanged on wake.
struct Args {
    argv: *const *const u8,
    envp: *const *const u8,
}

/// # Safety
/// `sp` is the initial stack pointer the kernel set up (argc, argv…, NULL, envp…, NULL).
unsafe extern "C" fn entry(sp: *const usize) -> ! {
    // SAFETY: per the ELF ABI, argc is at the initial stack pointer, argv[] follows with its
    // NULL, and envp[] follows that.
    let args = unsafe {
        let argv = sp.add(1) as *const *const u8;
        Args { argv, envp: argv.add(*sp + 1) }
    };
    // SAFETY: envp is the kernel's NULL-terminated array of NUL-terminated strings.
    let Some(plan_fd) = (unsafe { plan_fd(args.envp) }) else {
        // Without a plan there is no executable to wake: only the monitor's death is left.
        exit(125)
    };
    // Not zeroed: pread and recvfrom write what they return, and only that is read. The
    // plan is read into it first, then the audit records.
    let mut buf = MaybeUninit::<[u8; RECORD_MAX]>::uninit();
    let n = loop {
        // SAFETY: pread64 of at most PLAN_MAX (< RECORD_MAX) bytes into the local buffer.
        let n = unsafe {
            syscall(SYS_PREAD64, [plan_fd as usize, buf.as_mut_ptr() as usize, PLAN_MAX, 0, 0, 0])
        };
        if n != EINTR {
            break n;
        }
    };
    if n < 12 {
        exit(125);
    }
    // SAFETY: the kernel wrote n (<= PLAN_MAX) bytes at the start of the buffer.
    let bytes = unsafe { core::slice::from_raw_parts(buf.as_ptr() as *const u8, n as usize) };
    let mut plan = Plan {
        exe: u32_at(bytes, 8) as i32,
        audit: -1,
        deadline_ms: -1,
        uid_lo: 0,
        uid_hi: 0,
        pidns_ino: 0,
        n: 0,
        domains_at: 0,
        n_domains: 0,
    };
    // Beside the plan, not in it: a struct literal with an array is built on the side and
    // copied in, and a copy that size is a call of memcpy through the GOT, a relocation.
    let mut fds = [PollFd { fd: -1, events: POLLIN, revents: 0 }; MAX_FDS + 1];
    if !parse(bytes, &mut plan, &mut fds) {
        // A plan this program does not understand: the whole isc, which wrote it, reports
        // the problem. exe_fd has the same offset in every version.
        wake(plan.exe, &args);
    }
    // Not zeroed either: the kernel writes the plan's ids into it, and only the first `len`
    // slots, all written, are read.
    let mut ids = MaybeUninit::<[u64; MAX_DOMAINS]>::uninit();
    let mut known = Domains { ids: &mut ids, len: 0, next: 0 };
    if !known.load(plan_fd, &plan) {
        wake(plan.exe, &args);
    }
    sleep(&plan, &mut fds, &args, &mut buf, &mut known)
}

/// The value of `ISC_HIBERNATE_PLAN` (its first occurrence, as getenv(3)), a descriptor.
///
/// # Safety
/// `envp` is a NULL-terminated array of NUL-terminated strings.
unsafe fn plan_fd(mut envp: *const *const u8) -> Option<i32> {
    loop {
        // SAFETY: the array ends with NULL, and we stop there.
        let s = unsafe { *envp };
        if s.is_null() {
            return None;
        }
        // SAFETY: s is a NUL-terminated string.
        if let Some(v) = unsafe { value_of(s, PLAN_ENV) } {
            return number(v.as_slice()).and_then(|fd| i32::try_from(fd).ok());
        }
        // SAFETY: s was not the terminating NULL, so another slot follows.
        envp = unsafe { envp.add(1) };
    }
}

/// What follows `prefix` in the NUL-terminated string at `s`, if it starts so: at most 11
/// bytes (a descriptor's digits and one too many), without the NUL. The bytes are read one
/// by one up to the first difference or NUL: a loop that measured the string first would be
/// compiled into a call of strlen, which there is none of.
///
/// # Safety
/// `s` points to a NUL-terminated string.
unsafe fn value_of(s: *const u8, prefix: &[u8]) -> Option<Value> {
    for (i, &c) in prefix.iter().enumerate() {
        // SAFETY: the bytes before index i matched the prefix and were not NUL.
        if unsafe { *s.add(i) } != c {
            return None;
        }
    }
    let mut v = Value { b: [0; 11], n: 0 };
    while v.n < v.b.len() {
        // SAFETY: the bytes before this one were not NUL, so it is within the string.
        let c = unsafe { *s.add(prefix.len() + v.n) };
        if c == 0 {
            break;
        }
        v.b[v.n] = c;
        v.n += 1;
    }
    Some(v)
}

struct Value {
    b: [u8; 11],
    n: usize,
}

impl Value {
    fn as_slice(&self) -> &[u8] {
        &self.b[..self.n]
    }
}

/// A decimal of 1 to 10 digits, optionally followed by NULs or a newline (how a record's last
/// field may end); anything else is not a number.
fn number(s: &[u8]) -> Option<u64> {
    let digits = s.iter().take_while(|c| c.is_ascii_digit()).count();
    if digits == 0 || digits > 10 || s[digits..].iter().any(|c| !matches!(c, b'\0' | b'\n')) {
        return None;
    }
    Some(s[..digits].iter().fold(0, |v, c| v * 10 + (c - b'0') as u64))
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

fn u64_at(b: &[u8], o: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[o..o + 8]);
    u64::from_le_bytes(v)
}

#[repr(C)]
#[derive(Clone, Copy)]
struct PollFd {
    fd: i32,
    events: i16,
    revents: i16,
}

struct Plan {
    exe: i32,
    audit: i32,
    deadline_ms: i64,
    uid_lo: u32,
    uid_hi: u32,
    pidns_ino: u64,
    /// How many of the poll set's records are the plan's `fds`; the audit socket follows
    /// them, if any.
    n: usize,
    /// Where the plan's foreign Landlock domain ids start in its memfd, and how many there are.
    domains_at: usize,
    n_domains: usize,
}

/// The Landlock domain ids known to be another's (`foreign`): slots `..len` of `ids` are
/// written, and `next` is the one written next (the oldest once all are: a ring).
struct Domains<'a> {
    ids: &'a mut MaybeUninit<[u64; MAX_DOMAINS]>,
    len: usize,
    next: usize,
}

impl Domains<'_> {
    /// Reads the plan's ids from its memfd straight into `ids` (a loop copying them out of
    /// the plan's bytes would be compiled into a call of memcpy); false if they are not all
    /// there.
    fn load(&mut self, plan_fd: i32, plan: &Plan) -> bool {
        let want = 8 * plan.n_domains;
        let n = loop {
            // SAFETY: pread64 of at most 8 * MAX_DOMAINS bytes (parse checked n_domains) into
            // the ids' storage, which is that large.
            let n = unsafe {
                syscall(
                    SYS_PREAD64,
                    [plan_fd as usize, self.ids.as_mut_ptr() as usize, want, plan.domains_at, 0, 0],
                )
            };
            if n != EINTR {
                break n;
            }
        };
        if n != want as isize {
            return false;
        }
        self.len = plan.n_domains;
        self.next = plan.n_domains % MAX_DOMAINS;
        true
    }

    fn contains(&self, id: u64) -> bool {
        let ids = self.ids.as_ptr() as *const u64;
        // SAFETY: slots below len are within the array and written.
        (0..self.len).any(|i| unsafe { *ids.add(i) } == id)
    }

    /// Adds `id` unless it is known, over the oldest once the set is full.
    fn add(&mut self, id: u64) {
        if self.contains(id) {
            return;
        }
        // SAFETY: next < MAX_DOMAINS: a slot of the array. One element written, no copy.
        unsafe { (self.ids.as_mut_ptr() as *mut u64).add(self.next).write(id) };
        self.next = (self.next + 1) % MAX_DOMAINS;
        self.len = (self.len + 1).min(MAX_DOMAINS);
    }
}

/// The plan, little-endian, no padding: magic u32, version u32, exe_fd i32, audit_fd i32,
/// deadline_ms i64 (-1: none), uid_lo u32, uid_hi u32, pidns_ino u64 (0: unknown), n_fds u32,
/// then n_fds i32 descriptors (into `fds`), then optionally n_domains u32 (at most
/// `MAX_DOMAINS`) and n_domains u64 Landlock domain ids known to be another's (their place is
/// noted, for `Domains::load`); a plan that ends after the descriptors has none. False if it
/// is not that.
fn parse(b: &[u8], plan: &mut Plan, fds: &mut [PollFd; MAX_FDS + 1]) -> bool {
    if b.len() < PLAN_HEADER || u32_at(b, 0) != PLAN_MAGIC || u32_at(b, 4) != PLAN_VERSION {
        return false;
    }
    let n = u32_at(b, 40) as usize;
    if n > MAX_FDS || b.len() < PLAN_HEADER + 4 * n {
        return false;
    }
    let tail = PLAN_HEADER + 4 * n;
    if b.len() > tail {
        if b.len() < tail + 4 {
            return false;
        }
        let domains = u32_at(b, tail) as usize;
        if domains > MAX_DOMAINS || b.len() < tail + 4 + 8 * domains {
            return false;
        }
        plan.domains_at = tail + 4;
        plan.n_domains = domains;
    }
    plan.audit = u32_at(b, 12) as i32;
    plan.deadline_ms = u64_at(b, 16) as i64;
    plan.uid_lo = u32_at(b, 24);
    plan.uid_hi = u32_at(b, 28);
    plan.pidns_ino = u64_at(b, 32);
    plan.n = n;
    for (i, slot) in fds[..n].iter_mut().enumerate() {
        slot.fd = u32_at(b, PLAN_HEADER + 4 * i) as i32;
    }
    true
}

/// Waits until something needs the whole monitor, dropping the audit records that do not.
fn sleep(
    plan: &Plan,
    fds: &mut [PollFd; MAX_FDS + 1],
    args: &Args,
    buf: &mut MaybeUninit<[u8; RECORD_MAX]>,
    known: &mut Domains,
) -> ! {
    let mut count = plan.n;
    if plan.audit >= 0 {
        fds[count].fd = plan.audit;
        count += 1;
    }
    loop {
        let mut left = match plan.deadline_ms {
            -1 => None,
            deadline => Some(time_left(deadline).unwrap_or_else(|| wake(plan.exe, args))),
        };
        let timeout = left.as_mut().map_or(core::ptr::null_mut(), |t| t.as_mut_ptr());
        // SAFETY: ppoll over `count` pollfd records of the plan, a timespec of this frame (the
        // kernel writes the time left into it) or NULL, and no signal mask (NULL): the
        // inherited mask stays as it is.
        let n = unsafe {
            syscall(SYS_PPOLL, [fds.as_mut_ptr() as usize, count, timeout as usize, 0, 8, 0])
        };
        if n == EINTR {
            continue;
        }
        // A timeout (0) is the deadline; an error leaves the monitor's needs unknown.
        if n <= 0 || plan.audit < 0 || fds[..plan.n].iter().any(|p| p.revents != 0) {
            wake(plan.exe, args);
        }
        let audit = fds[plan.n].revents;
        if audit & (POLLERR | POLLHUP | POLLNVAL) != 0
            || (audit & POLLIN != 0 && !on_audit(plan, buf, known))
        {
            // POLLERR on a netlink socket is an overrun (ENOBUFS): records were lost, which
            // only the whole monitor can account for.
            wake(plan.exe, args);
        }
    }
}

/// The time left until `deadline_ms` on CLOCK_MONOTONIC as a timespec, or `None` if it has
/// passed (or the clock cannot be read: then the whole monitor decides).
fn time_left(deadline_ms: i64) -> Option<[i64; 2]> {
    let mut now = [0i64; 2];
    // SAFETY: clock_gettime writes one timespec into a local.
    let rc = unsafe {
        syscall(SYS_CLOCK_GETTIME, [CLOCK_MONOTONIC, now.as_mut_ptr() as usize, 0, 0, 0, 0])
    };
    if rc != 0 {
        return None;
    }
    let mut sec = deadline_ms.div_euclid(1000) - now[0];
    let mut nsec = deadline_ms.rem_euclid(1000) * 1_000_000 - now[1];
    if nsec < 0 {
        nsec += 1_000_000_000;
        sec -= 1;
    }
    (sec > 0 || (sec == 0 && nsec > 0)).then_some([sec, nsec])
}

/// The audit socket is readable: drops its first record if the whole monitor would drop it
/// too (`foreign`, which may learn a domain of another's into `known`) and returns true (sleep
/// on), or returns false, leaving the record for the whole monitor.
fn on_audit(plan: &Plan, buf: &mut MaybeUninit<[u8; RECORD_MAX]>, known: &mut Domains) -> bool {
    let recv = |buf: &mut MaybeUninit<[u8; RECORD_MAX]>, flags: usize| {
        // SAFETY: recvfrom of one datagram into the local buffer, at most its size; no
        // source address (NULL), so its length argument is unused.
        unsafe {
            syscall(
                SYS_RECVFROM,
                [plan.audit as usize, buf.as_mut_ptr() as usize, RECORD_MAX, flags, 0, 0],
            )
        }
    };
    let n = recv(buf, MSG_PEEK | MSG_DONTWAIT);
    if n == EAGAIN || n == EINTR {
        return true;
    }
    if n < 0 {
        return false;
    }
    // SAFETY: the kernel wrote n (<= RECORD_MAX) bytes at the start of the buffer.
    let record = unsafe { core::slice::from_raw_parts(buf.as_ptr() as *const u8, n as usize) };
    if !foreign(record, plan, known) {
        return false;
    }
    // The same datagram: nothing else reads this socket while the whole monitor sleeps.
    let n = recv(buf, MSG_DONTWAIT);
    n >= 0 || n == EAGAIN || n == EINTR
}

/// Whether the whole monitor would read an audit datagram and drop it, so that waking it buys
/// nothing. Its collector keeps an event only if `Attribution::owns`
/// (crates/cli/src/audit_collect.rs) says so: the uid is one of this ISC's, or the pid is a
/// live process in this ISC's PID namespace. A process already gone, a record without a pid or
/// an unknown namespace (`pidns_ino` 0) fails that test there as here, and its reader ignores
/// all but seccomp and Landlock records: waking for those would only have the whole isc drop
/// them. An `AUDIT_LANDLOCK_DOMAIN` record is no event but the pid that later denials of its
/// domain are attributed by; one whose pid fails the test can never make them the ISC's.
///
/// A record is the ISC's here if any `uid=` field is in `uid_lo..uid_hi` or any `pid=` field
/// names a process whose `/proc/N/ns/pid` is `pidns_ino`: `owns` looks at the first of each,
/// and at the uid of seccomp records only, so this keeps at least what it keeps.
///
/// An `AUDIT_LANDLOCK_ACCESS` record carries neither: the reader attributes it by its domain's
/// creator pid, from its table (`KernelAuditReader::handle`, crates/audit/src/kernel.rs). It
/// is dropped here only if its `domain=` id is in `known`: a domain the plan lists as
/// another's (the table's domains whose creator is not in the ISC's PID namespace, or gone,
/// when the monitor hibernated), or one whose creation record (with a `pid=`) was dropped here
/// as another's since, which is then added to `known`. Any other access record may be of a
/// domain of this ISC's, and wakes the whole isc, which can tell.
///
/// What cannot be judged here wakes the whole isc too: a datagram that may have been cut or
/// holds another message, a malformed header, a `pid=` or `uid=` that is not a number, and a
/// Landlock record whose `domain=` is not 1 to 16 lowercase hex digits (as the kernel writes
/// it) or that has more than one.
fn foreign(record: &[u8], plan: &Plan, known: &mut Domains) -> bool {
    let n = record.len();
    if !(NLMSG_HDRLEN..RECORD_MAX).contains(&n) {
        return false;
    }
    let len = u32_at(record, 0) as usize;
    if len < NLMSG_HDRLEN {
        return false;
    }
    // An nlmsg_len beyond what was received: the text is all of it, as audit's own reader
    // takes it (crates/audit/src/kernel.rs, `split_netlink`).
    let end = len.min(n);
    if ((end + 3) & !3) < n {
        // Another message follows, which the whole monitor would read too.
        return false;
    }
    // Netlink headers are in host order.
    let ty = u16::from_ne_bytes([record[4], record[5]]);
    if !matches!(ty, AUDIT_SECCOMP | AUDIT_LANDLOCK_DOMAIN | AUDIT_LANDLOCK_ACCESS) {
        return true;
    }
    let landlock = ty != AUDIT_SECCOMP;
    // The record's `domain=` id, if it has one; whether it has a `pid=`.
    let mut domain = None;
    let mut has_pid = false;
    // Fields are space-separated; values with spaces are hex-encoded or quoted whole by the
    // kernel, so a `pid=` or `uid=` in a value starts no field unless it is in a quoted user
    // message, and such an extra field can only make a record the ISC's.
    for field in record[NLMSG_HDRLEN..end].split(|c| *c == b' ') {
        let ours = if let Some(v) = field.strip_prefix(b"pid=") {
            has_pid = true;
            match number(v) {
                Some(_) => plan.pidns_ino != 0 && pidns_of(v) == Some(plan.pidns_ino),
                None => true,
            }
        } else if let Some(v) = field.strip_prefix(b"uid=") {
            number(v).is_none_or(|uid| (plan.uid_lo as u64..plan.uid_hi as u64).contains(&uid))
        } else if let Some(v) = field.strip_prefix(b"domain=").filter(|_| landlock) {
            if domain.is_some() {
                return false;
            }
            domain = domain_id(v);
            domain.is_none()
        } else {
            false
        };
        if ours {
            return false;
        }
    }
    match (ty, domain) {
        (AUDIT_LANDLOCK_ACCESS, Some(id)) => known.contains(id),
        (AUDIT_LANDLOCK_ACCESS, None) => false,
        (AUDIT_LANDLOCK_DOMAIN, Some(id)) if has_pid => {
            // Its access records would be attributed to this pid, which is not the ISC's.
            known.add(id);
            true
        }
        _ => true,
    }
}

/// A Landlock domain id as the kernel writes it (`%llx`): 1 to 16 lowercase hex digits
/// without a leading zero, optionally followed by NULs or a newline; else `None`.
fn domain_id(s: &[u8]) -> Option<u64> {
    let digits = s.iter().take_while(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')).count();
    if digits == 0
        || digits > 16
        || (digits > 1 && s[0] == b'0')
        || s[digits..].iter().any(|c| !matches!(c, b'\0' | b'\n'))
    {
        return None;
    }
    let nibble = |c: u8| if c.is_ascii_digit() { c - b'0' } else { c - b'a' + 10 };
    Some(s[..digits].iter().fold(0, |v, c| (v << 4) | nibble(*c) as u64))
}

/// The inode of `/proc/<pid>/ns/pid` (stat follows the nsfs link to the namespace itself),
/// or `None` if the process is gone. `pid` is the field's value: digits, maybe a NUL or newline.
fn pidns_of(pid: &[u8]) -> Option<u64> {
    let mut path = [0u8; 32];
    let digits = pid.iter().take_while(|c| c.is_ascii_digit());
    for (slot, &c) in path.iter_mut().zip(b"/proc/".iter().chain(digits).chain(b"/ns/pid\0")) {
        *slot = c;
    }
    // struct stat is 144 bytes on x86_64; st_ino is its second u64. Not zeroed (a memset
    // call): only what a successful call wrote is read.
    let mut st = MaybeUninit::<[u64; 18]>::uninit();
    // SAFETY: newfstatat of a NUL-terminated path in this frame into a 144-byte local; st_ino
    // is read only after the kernel wrote the whole struct.
    unsafe {
        let rc = syscall(
            SYS_NEWFSTATAT,
            [AT_FDCWD as usize, path.as_ptr() as usize, st.as_mut_ptr() as usize, 0, 0, 0],
        );
        (rc == 0).then(|| st.assume_init()[1])
    }
}

/// Execs the whole isc from `exe` with this process's argv and envp, retrying a failure
/// `WAKE_RETRIES` times; then exits, and the monitor's death ends the ISC.
fn wake(exe: i32, args: &Args) -> ! {
    for attempt in 0..=WAKE_RETRIES {
        if attempt > 0 {
            let pause = [0i64, RETRY_NS];
            // SAFETY: nanosleep with a timespec of this frame and no remainder (NULL).
            unsafe { syscall(SYS_NANOSLEEP, [pause.as_ptr() as usize, 0, 0, 0, 0, 0]) };
        }
        // SAFETY: execveat with an empty NUL-terminated path and the NULL-ended arrays the
        // kernel gave this process; on success the call does not return.
        unsafe {
            syscall(
                SYS_EXECVEAT,
                [
                    exe as usize,
                    c"".as_ptr() as usize,
                    args.argv as usize,
                    args.envp as usize,
                    AT_EMPTY_PATH,
                    0,
                ],
            )
        };
    }
    exit(125)
}

// The entry point, system calls and the memory functions the compiler may call (no libc): one
// copy for both tiny programs.
#[path = "rt.rs"]
mod rt;
