//! `isc-init`: the ISC's PID 1 while the ISC is idle (docs/engine.md, "A hibernating PID 1").
//!
//! The whole-isc PID 1 execs this program when its monitor says the ISC has been quiet
//! (`ToInit::Hibernate`): an idle PID 1 then costs two pages of memory instead of its copy of
//! the isc binary's heap, data and page tables. It does what an idle PID 1 must and nothing
//! else: reap every zombie, forward signals to the service, report the service's end in the
//! same message the whole PID 1 sends, die with the monitor, and exec the whole isc again
//! (`ToInit::Wake`, the executable attached) when the monitor needs more, i.e. probes.
//!
//! No libc, no allocation, no std: raw system calls, every one in the ISC's seccomp
//! allowlist. Built by `build.rs` as a static PIE without relocations (ASLR kept, nothing to
//! relocate), embedded in isc and handed to PID 1 as a sealed, execute-only memfd.
//!
//! argv: `isc-init <service pid>`. fd 3 is the channel to the monitor (SOCK_SEQPACKET, one
//! JSON message per record; crates/engine/src/channel.rs), fds 0–2 as the whole PID 1 had
//! them. The handled signals are still blocked (the mask survives execve).
#![no_std]
#![no_main]

use rt::{exit, syscall};

const SYS_READ: usize = 0;
const SYS_CLOSE: usize = 3;
const SYS_POLL: usize = 7;
const SYS_RT_SIGPROCMASK: usize = 14;
const SYS_SENDTO: usize = 44;
const SYS_RECVMSG: usize = 47;
const SYS_WAIT4: usize = 61;
const SYS_KILL: usize = 62;
const SYS_FCNTL: usize = 72;
const SYS_PRCTL: usize = 157;
const SYS_SIGNALFD4: usize = 289;
const SYS_EXECVEAT: usize = 322;
/// `isc_engine::seccomp::AUDIT_BARRIER_SYSCALL`: refused and logged by every isc profile.
const SYS_AUDIT_BARRIER: usize = 0x000f_ffff;

const CHANNEL: i32 = 3;
const SIGHUP: u32 = 1;
const SIGINT: u32 = 2;
const SIGQUIT: u32 = 3;
const SIGKILL: usize = 9;
const SIGUSR1: u32 = 10;
const SIGUSR2: u32 = 12;
const SIGTERM: u32 = 15;
const SIGCHLD: u32 = 17;
const EINTR: isize = -4;
const EAGAIN: isize = -11;
const ECHILD: isize = -10;
const F_SETFD: usize = 2;
const FD_CLOEXEC: usize = 1;
const WNOHANG: usize = 1;
const POLLIN: i16 = 1;
const POLLERR: i16 = 8;
const POLLHUP: i16 = 16;
const SFD_CLOEXEC: usize = 0o2000000;
const SFD_NONBLOCK: usize = 0o4000;
const MSG_NOSIGNAL: usize = 0x4000;
const MSG_CMSG_CLOEXEC: usize = 0x4000_0000;
const PR_SET_PDEATHSIG: usize = 1;
const PR_SET_DUMPABLE: usize = 4;
const AT_EMPTY_PATH: usize = 0x1000;
const SOL_SOCKET: i32 = 1;
const SCM_RIGHTS: i32 = 1;
const SIG_BLOCK: usize = 0;

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    // PID 1's exit ends the PID namespace: the monitor sees PID 1 gone and cleans up.
    exit(125)
}

const fn sigbit(s: u32) -> u64 {
    1u64 << (s - 1)
}

/// The signals the whole PID 1 handles (`init::handled_signals`).
const fn handled() -> u64 {
    sigbit(SIGCHLD)
        | sigbit(SIGTERM)
        | sigbit(SIGINT)
        | sigbit(SIGHUP)
        | sigbit(SIGQUIT)
        | sigbit(SIGUSR1)
        | sigbit(SIGUSR2)
}

/// # Safety
/// `sp` is the initial stack pointer the kernel set up (argc, argv…, NULL, envp…).
unsafe extern "C" fn entry(sp: *const usize) -> ! {
    // SAFETY: per the ELF ABI, argc and argv[] are at the initial stack pointer.
    let (argc, argv) = unsafe { (*sp, sp.add(1) as *const *const u8) };
    if argc < 2 {
        exit(125);
    }
    // SAFETY: argv[1] is a NUL-terminated string the kernel copied.
    let service = match unsafe { parse_pid(*argv.add(1)) } {
        Some(p) => p,
        None => exit(125),
    };
    run(service)
}

/// The decimal pid at `p`, a NUL-terminated string of at most 9 digits.
///
/// # Safety
/// `p` points to a NUL-terminated string.
unsafe fn parse_pid(p: *const u8) -> Option<i32> {
    let mut v: i32 = 0;
    for i in 0..10 {
        // SAFETY: every byte up to and including the NUL is readable; we stop at the NUL.
        let c = unsafe { *p.add(i) };
        if c == 0 {
            return (i > 0 && v > 0).then_some(v);
        }
        if !c.is_ascii_digit() {
            return None;
        }
        v = v * 10 + (c - b'0') as i32;
    }
    None
}

#[repr(C)]
struct PollFd {
    fd: i32,
    events: i16,
    revents: i16,
}

fn run(service: i32) -> ! {
    let mask = handled();
    // SAFETY: prctl/rt_sigprocmask/signalfd4/fcntl with plain integer arguments or pointers to
    // locals that outlive the calls.
    let sfd = unsafe {
        // The exec of an execute-only file already made us non-dumpable (fs/exec.c
        // would_dump); saying so again costs nothing and does not depend on the file's mode.
        syscall(SYS_PRCTL, [PR_SET_DUMPABLE, 0, 0, 0, 0, 0]);
        syscall(SYS_PRCTL, [PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0, 0]);
        syscall(SYS_FCNTL, [CHANNEL as usize, F_SETFD, FD_CLOEXEC, 0, 0, 0]);
        syscall(SYS_RT_SIGPROCMASK, [SIG_BLOCK, &mask as *const u64 as usize, 0, 8, 0, 0]);
        syscall(
            SYS_SIGNALFD4,
            [usize::MAX, &mask as *const u64 as usize, 8, SFD_CLOEXEC | SFD_NONBLOCK, 0, 0],
        )
    };
    if sfd < 0 {
        exit(125);
    }
    let sfd = sfd as i32;
    // A child that ended during the exec left its SIGCHLD pending (signalfd(2) reads it), but
    // reaping once now does not depend on that.
    reap(service);
    loop {
        let mut fds = [
            PollFd { fd: sfd, events: POLLIN, revents: 0 },
            PollFd { fd: CHANNEL, events: POLLIN, revents: 0 },
        ];
        // SAFETY: poll over two pollfd records of this frame, no timeout.
        let n = unsafe { syscall(SYS_POLL, [fds.as_mut_ptr() as usize, 2, usize::MAX, 0, 0, 0]) };
        if n < 0 {
            continue;
        }
        if fds[0].revents & POLLIN != 0 {
            on_signals(sfd, service);
        }
        if fds[1].revents & POLLIN != 0 {
            on_message(service);
        } else if fds[1].revents & (POLLHUP | POLLERR) != 0 {
            // The monitor is gone: nothing may run unsupervised (as the whole PID 1).
            exit(137);
        }
    }
}

fn on_signals(sfd: i32, service: i32) {
    // struct signalfd_siginfo is 128 bytes; ssi_signo is its first u32.
    let mut info = [0u32; 32];
    loop {
        // SAFETY: reads at most 128 bytes into a 128-byte local buffer.
        let r =
            unsafe { syscall(SYS_READ, [sfd as usize, info.as_mut_ptr() as usize, 128, 0, 0, 0]) };
        if r == EINTR {
            continue;
        }
        if r < 128 {
            return;
        }
        let signo = info[0];
        if signo == SIGCHLD {
            reap(service);
        } else if mask_has(signo) {
            forward(service, signo as usize);
        }
    }
}

fn mask_has(signo: u32) -> bool {
    (1..=64).contains(&signo) && handled() & sigbit(signo) != 0
}

fn forward(service: i32, signo: usize) {
    // SAFETY: kill(2) of our own child with a signal number.
    unsafe { syscall(SYS_KILL, [service as usize, signo, 0, 0, 0, 0]) };
}

/// Reaps every exited child; when the service is among them, reports and exits.
fn reap(service: i32) {
    let mut ended: Option<i32> = None;
    let alone = loop {
        let mut st: i32 = 0;
        // SAFETY: wait4 on any child, non-blocking, status into a local.
        let pid = unsafe {
            syscall(SYS_WAIT4, [usize::MAX, &mut st as *mut i32 as usize, WNOHANG, 0, 0, 0])
        };
        if pid > 0 {
            if pid as i32 == service {
                ended = Some(st);
            }
            continue;
        }
        if pid == EINTR {
            continue;
        }
        break pid == ECHILD;
    };
    let Some(st) = ended else { return };
    let (code, signal) =
        if st & 0x7f == 0 { (Some((st >> 8) & 0xff), None) } else { (None, Some(st & 0x7f)) };
    if alone {
        // As the whole PID 1: end the monitor's drain of kernel denials with this record.
        // SAFETY: a number no kernel implements, no arguments; refused by the filter.
        unsafe { syscall(SYS_AUDIT_BARRIER, [0; 6]) };
    }
    let mut msg = Buf::new();
    msg.push(b"{\"ServiceExited\":{\"code\":");
    msg.opt_int(code);
    msg.push(b",\"signal\":");
    msg.opt_int(signal);
    msg.push(if alone { b",\"alone\":true}}" as &[u8] } else { b",\"alone\":false}}" });
    // SAFETY: send(2) of a local buffer on the channel; MSG_NOSIGNAL avoids SIGPIPE.
    unsafe {
        syscall(SYS_SENDTO, [CHANNEL as usize, msg.b.as_ptr() as usize, msg.n, MSG_NOSIGNAL, 0, 0])
    };
    exit(code.unwrap_or_else(|| 128 + signal.unwrap_or(0)))
}

struct Buf {
    b: [u8; 96],
    n: usize,
}

impl Buf {
    fn new() -> Buf {
        Buf { b: [0; 96], n: 0 }
    }
    fn push(&mut self, s: &[u8]) {
        for &c in s {
            if self.n < self.b.len() {
                self.b[self.n] = c;
                self.n += 1;
            }
        }
    }
    fn opt_int(&mut self, v: Option<i32>) {
        let Some(mut v) = v else { return self.push(b"null") };
        let mut digits = [0u8; 10];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        self.push(&digits[i..]);
    }
}

#[repr(C)]
struct IoVec {
    base: *mut u8,
    len: usize,
}

#[repr(C)]
struct MsgHdr {
    name: usize,
    namelen: u32,
    iov: *mut IoVec,
    iovlen: usize,
    control: *mut u8,
    controllen: usize,
    flags: i32,
}

/// One message from the monitor: `Signal` is forwarded, `Wake` execs the attached whole isc,
/// anything else (e.g. a second `Hibernate`) is dropped with its descriptors.
fn on_message(service: i32) {
    // Not zeroed: recvmsg writes what it returns, and only that is read.
    let mut data = core::mem::MaybeUninit::<[u8; 256]>::uninit();
    // cmsghdr (16 bytes) + up to 4 fds, 8-byte aligned.
    let mut control = [0u64; 4];
    let mut iov = IoVec { base: data.as_mut_ptr() as *mut u8, len: 256 };
    let mut hdr = MsgHdr {
        name: 0,
        namelen: 0,
        iov: &mut iov,
        iovlen: 1,
        control: control.as_mut_ptr() as *mut u8,
        controllen: 32,
        flags: 0,
    };
    // SAFETY: recvmsg into local buffers whose sizes are given in the header.
    let n = unsafe {
        syscall(
            SYS_RECVMSG,
            [CHANNEL as usize, &mut hdr as *mut MsgHdr as usize, MSG_CMSG_CLOEXEC, 0, 0, 0],
        )
    };
    if n == EINTR || n == EAGAIN {
        return;
    }
    if n <= 0 {
        exit(137);
    }
    // SAFETY: the kernel wrote n (<= 256) bytes at the start of the buffer.
    let msg = unsafe { core::slice::from_raw_parts(data.as_ptr() as *const u8, n as usize) };
    let mut fds = [-1i32; 4];
    if hdr.controllen >= 16 {
        // cmsghdr { len: usize, level: i32, type: i32 } then the fds.
        let len = control[0] as usize;
        let level = control[1] as u32 as i32;
        let kind = (control[1] >> 32) as u32 as i32;
        if level == SOL_SOCKET && kind == SCM_RIGHTS && len > 16 {
            let count = ((len - 16) / 4).min(4);
            for (i, fd) in fds.iter_mut().enumerate().take(count) {
                let word = control[2 + i / 2];
                *fd = if i % 2 == 0 { word as u32 as i32 } else { (word >> 32) as u32 as i32 };
            }
        }
    }
    if let Some(signo) = signal_of(msg) {
        forward(service, signo as usize);
    } else if msg == b"\"Wake\"" && fds[0] >= 0 {
        wake(fds[0], service);
    }
    for fd in fds.into_iter().filter(|fd| *fd >= 0) {
        // SAFETY: closing a descriptor this message gave us and nothing else uses.
        unsafe { syscall(SYS_CLOSE, [fd as usize, 0, 0, 0, 0, 0]) };
    }
}

/// `{"Signal":{"signo":N}}` → N.
fn signal_of(msg: &[u8]) -> Option<u32> {
    let rest = msg.strip_prefix(b"{\"Signal\":{\"signo\":")?;
    let digits = rest.strip_suffix(b"}}")?;
    if digits.is_empty() || digits.len() > 2 {
        return None;
    }
    let mut v = 0u32;
    for &c in digits {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v * 10 + (c - b'0') as u32;
    }
    (1..=64).contains(&v).then_some(v)
}

/// Execs the whole isc (`isc __pid1 <service>`) from `exe`, keeping the channel open for it.
fn wake(exe: i32, service: i32) {
    let mut pid = Buf::new();
    pid.opt_int(Some(service));
    pid.push(b"\0");
    let argv: [*const u8; 4] =
        [c"isc".as_ptr().cast(), c"__pid1".as_ptr().cast(), pid.b.as_ptr(), core::ptr::null()];
    let envp: [*const u8; 1] = [core::ptr::null()];
    // SAFETY: fcntl on our channel fd; execveat with NUL-terminated strings and NULL-ended
    // arrays that live in this frame; on success the call does not return.
    let rc = unsafe {
        syscall(SYS_FCNTL, [CHANNEL as usize, F_SETFD, 0, 0, 0, 0]);
        let rc = syscall(
            SYS_EXECVEAT,
            [
                exe as usize,
                c"".as_ptr() as usize,
                argv.as_ptr() as usize,
                envp.as_ptr() as usize,
                AT_EMPTY_PATH,
                0,
            ],
        );
        syscall(SYS_FCNTL, [CHANNEL as usize, F_SETFD, FD_CLOEXEC, 0, 0, 0]);
        rc
    };
    // Still here: say so, so the monitor answers the probes' caller instead of letting it
    // wait (the probe requests that follow are dropped by `on_message`).
    let mut msg = Buf::new();
    msg.push(b"{\"WakeFailed\":{\"errno\":");
    msg.opt_int(Some(rc.unsigned_abs().min(4095) as i32));
    msg.push(b"}}");
    // SAFETY: send(2) of a local buffer on the channel; MSG_NOSIGNAL avoids SIGPIPE.
    unsafe {
        syscall(SYS_SENDTO, [CHANNEL as usize, msg.b.as_ptr() as usize, msg.n, MSG_NOSIGNAL, 0, 0])
    };
}

// The entry point, system calls and the memory functions the compiler may call (no libc): one
// copy for both tiny programs.
#[path = "rt.rs"]
mod rt;
