//! An in-order barrier on the kernel's audit stream.
//!
//! kauditd delivers records to the multicast group asynchronously, in queue order. To know that
//! every denial an ISC caused before it ended has been delivered, we put a record of our own
//! at the end of that queue and read until it comes out. The kernel-denial collector thread
//! itself emits it: when it starts it installs, on itself only, a filter that denies `getppid`
//! with SECCOMP_RET_ERRNO and SECCOMP_FILTER_FLAG_LOG; told to drain, it calls `getppid` once.
//!
//! Without SECCOMP_FILTER_FLAG_TSYNC a filter binds only the thread that installs it
//! (seccomp(2)), and so does `no_new_privs` (prctl(2): a per-thread attribute), so the rest of
//! the monitor is untouched, and no thread or process has to be created on the exit path to
//! emit the record. The kernel's record names the thread group (`pid=` is the tgid,
//! kernel/auditsc.c `audit_log_task`), so the record to wait for is the one whose pid is this
//! process's.

use std::io;

/// BPF: allow everything except getppid, which fails with EPERM and is logged.
fn program() -> [libc::sock_filter; 7] {
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
        stmt(0x06, 0x7fff_0000),                      // ret ALLOW
    ]
}

/// The pid the barrier record carries: this process's (the thread group's).
pub fn record_pid() -> u32 {
    std::process::id()
}

/// Installs the barrier filter on the calling thread (only): from now on its `getppid`
/// fails with EPERM and is logged. The thread must never need `getppid` for anything else.
pub fn arm_this_thread() -> io::Result<()> {
    let mut prog = program();
    let fprog = libc::sock_fprog { len: prog.len() as u16, filter: prog.as_mut_ptr() };
    // SAFETY: prctl and seccomp act on this thread only (no TSYNC); `fprog` points at a live
    // local program.
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return Err(io::Error::last_os_error());
        }
        if libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            libc::SECCOMP_FILTER_FLAG_LOG,
            &fprog as *const libc::sock_fprog,
        ) != 0
        {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Puts the barrier record at the end of kauditd's queue; the calling thread must be armed
/// ([`arm_this_thread`]). Set the reader's expectation ([`record_pid`]) first.
pub fn emit_here() {
    // SAFETY: getppid has no arguments; on an armed thread the filter refuses and logs it.
    unsafe { libc::syscall(libc::SYS_getppid) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filter_binds_only_the_armed_thread() {
        let armed = std::thread::spawn(|| {
            arm_this_thread().unwrap();
            // SAFETY: getppid has no arguments.
            let rc = unsafe { libc::syscall(libc::SYS_getppid) };
            (rc, io::Error::last_os_error().raw_os_error())
        })
        .join()
        .unwrap();
        assert_eq!(armed, (-1, Some(libc::EPERM)), "the armed thread's getppid is refused");
        // SAFETY: getppid cannot fail; this thread has no filter.
        let ppid = unsafe { libc::syscall(libc::SYS_getppid) };
        assert!(ppid > 0, "getppid outside the armed thread must still work: {ppid}");
        // SAFETY: reading this thread's no_new_privs bit.
        assert_eq!(unsafe { libc::prctl(libc::PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) }, 0);
    }
}
