//! An in-order barrier on the kernel's audit stream.
//!
//! kauditd delivers records to the multicast group asynchronously, in queue order. To know that
//! every denial an ISC caused before it ended has been delivered, we put a record of our own
//! at the end of that queue and read until it comes out: a short-lived child installs a filter
//! that denies `getppid` with SECCOMP_RET_ERRNO and SECCOMP_FILTER_FLAG_LOG, calls it once and
//! exits. That costs one fork (~0.2 ms) instead of waiting for the socket to stay quiet.

use std::io;

/// BPF: allow everything except getppid, which fails with EPERM and is logged.
fn program() -> [libc::sock_filter; 6] {
    const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
    let stmt = |code: u16, k: u32| libc::sock_filter { code, jt: 0, jf: 0, k };
    let jump = |code: u16, k: u32, jt: u8, jf: u8| libc::sock_filter { code, jt, jf, k };
    [
        stmt(0x20, 4),                                // ld [arch]
        jump(0x15, AUDIT_ARCH_X86_64, 1, 0),          // jeq x86_64 ? next : allow
        stmt(0x06, 0x7fff_0000),                      // ret ALLOW (other arch: not ours)
        stmt(0x20, 0),                                // ld [nr]
        jump(0x15, libc::SYS_getppid as u32, 0, 1),   // jeq getppid
        stmt(0x06, 0x0005_0000 | libc::EPERM as u32), // ret ERRNO(EPERM)
    ]
}

/// A forked barrier child, parked until [`Barrier::release`] so its pid is known before its
/// record can exist.
pub struct Barrier {
    pub pid: i32,
    go: libc::c_int,
}

impl Barrier {
    /// Lets the child make its denied call, then reaps it.
    pub fn release(self) {
        // SAFETY: closing our end of the pipe wakes the child's read with EOF; then we reap it.
        unsafe {
            libc::close(self.go);
            libc::waitpid(self.pid, std::ptr::null_mut(), 0);
        }
    }
}

/// Forks the barrier child (parked). Its AUDIT_SECCOMP record, once released, marks the end
/// of everything the kernel queued before it.
pub fn prepare() -> io::Result<Barrier> {
    let mut pipe = [0; 2];
    // SAFETY: pipe2 writes two fds.
    if unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut prog = program().to_vec();
    prog.push(libc::sock_filter { code: 0x06, jt: 0, jf: 0, k: 0x7fff_0000 }); // ret ALLOW
    let fprog = libc::sock_fprog { len: prog.len() as u16, filter: prog.as_mut_ptr() };
    // SAFETY: the child only makes raw syscalls on memory prepared before the fork and exits
    // with _exit, so the monitor's other threads (and their locks) do not matter to it.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        let e = io::Error::last_os_error();
        // SAFETY: closing the pipe we just made.
        unsafe {
            libc::close(pipe[0]);
            libc::close(pipe[1]);
        }
        return Err(e);
    }
    if pid == 0 {
        // SAFETY: see above.
        unsafe {
            libc::close(pipe[1]);
            let mut b = 0u8;
            libc::read(pipe[0], (&mut b as *mut u8).cast(), 1);
            libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                libc::SECCOMP_FILTER_FLAG_LOG,
                &fprog as *const libc::sock_fprog,
            );
            libc::syscall(libc::SYS_getppid);
            libc::_exit(0);
        }
    }
    // SAFETY: the parent keeps only the write end.
    unsafe { libc::close(pipe[0]) };
    Ok(Barrier { pid, go: pipe[1] })
}
