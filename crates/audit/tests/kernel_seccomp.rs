//! Does a seccomp denial with SECCOMP_RET_ERRNO, installed with SECCOMP_FILTER_FLAG_LOG, reach the
//! kernel audit read-only multicast group on this kernel? This test asserts that it does, within
//! one second, with the denied task's pid, and that it is recorded attributed to its ISC.

use std::time::{Duration, Instant};

use isc_audit::kernel::{KernelAuditReader, KernelEvent};
use isc_audit::{query, Actor, AuditConfig, AuditLog, Durability, Filter, Kind};

const SECCOMP_SET_MODE_FILTER: libc::c_ulong = 1;
const SECCOMP_FILTER_FLAG_LOG: libc::c_ulong = 2;
const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;

fn stmt(code: u16, k: u32) -> libc::sock_filter {
    libc::sock_filter { code, jt: 0, jf: 0, k }
}

/// Forks a child that denies itself getppid(2) with EPERM (FLAG_LOG) and calls it.
/// Returns the child's pid after it exited successfully.
fn run_denied_child() -> libc::pid_t {
    // Built before fork: the child of a multithreaded process may only make raw syscalls.
    let filter = [
        stmt(0x20, 4), // ld [arch]
        libc::sock_filter { code: 0x15, jt: 0, jf: 3, k: AUDIT_ARCH_X86_64 },
        stmt(0x20, 0), // ld [nr]
        libc::sock_filter { code: 0x15, jt: 0, jf: 1, k: libc::SYS_getppid as u32 },
        stmt(0x06, SECCOMP_RET_ERRNO | libc::EPERM as u32),
        stmt(0x06, SECCOMP_RET_ALLOW),
    ];
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: the child only calls prctl, seccomp, getppid and _exit (async-signal-safe).
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        // SAFETY: raw syscalls with valid arguments; `prog` outlives them.
        unsafe {
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                libc::_exit(10);
            }
            if libc::syscall(
                libc::SYS_seccomp,
                SECCOMP_SET_MODE_FILTER,
                SECCOMP_FILTER_FLAG_LOG,
                &prog as *const libc::sock_fprog,
            ) != 0
            {
                libc::_exit(11);
            }
            let r = libc::syscall(libc::SYS_getppid);
            let ok = r == -1 && *libc::__errno_location() == libc::EPERM;
            libc::_exit(if ok { 0 } else { 12 });
        }
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    let w = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(w, pid);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "child status {status:#x}: the filter did not deny getppid with EPERM"
    );
    pid
}

#[test]
fn seccomp_errno_with_flag_log_reaches_the_readlog_group_within_a_second() {
    let logged = std::fs::read_to_string("/proc/sys/kernel/seccomp/actions_logged").unwrap();
    assert!(
        logged.split_whitespace().any(|a| a == "errno"),
        "this host does not log errno actions: actions_logged = {logged:?}"
    );
    let mut reader = KernelAuditReader::open().expect("join AUDIT_NLGRP_READLOG (run as root)");
    let pid = run_denied_child() as u32;
    let start = Instant::now();
    let deadline = start + Duration::from_secs(1);
    let mut found = None;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match reader.next_event(left).unwrap() {
            Some(KernelEvent::Seccomp(e)) if e.pid == pid => {
                found = Some(e);
                break;
            }
            Some(_) => continue,
            None => break,
        }
    }
    let e = found.unwrap_or_else(|| panic!("no AUDIT_SECCOMP record for pid {pid} within 1 s"));
    assert_eq!(e.syscall, libc::SYS_getppid);
    assert_eq!(e.action(), "errno");
    // The kernel logs only the action bits (SECCOMP_RET_ACTION_FULL), not the errno data.
    assert_eq!(e.code, SECCOMP_RET_ERRNO);
    eprintln!("AUDIT_SECCOMP for pid {pid} after {:?}: {e:?}", start.elapsed());

    // Attribution and recording, as the Dock does it.
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = AuditConfig::new(tmp.path().join("keys"));
    cfg.durability = Durability::None;
    let (log, _) = AuditLog::open(&tmp.path().join("audit"), cfg).unwrap();
    let attribute = |p: u32| (p == pid).then(|| "isc-denied".to_owned());
    let ev = KernelEvent::Seccomp(e);
    let (kind, actor, detail) = ev.to_record();
    let isc = ev.pid().and_then(attribute);
    log.append(isc.as_deref(), kind, actor, detail).unwrap();
    let recs = query(
        log.dir(),
        &Filter {
            isc: Some("isc-denied".into()),
            kinds: vec![Kind::SeccompDenial],
            ..Filter::default()
        },
    )
    .unwrap();
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0].actor, Actor::Kernel);
    assert_eq!(recs[0].detail["syscall"], libc::SYS_getppid);
    assert_eq!(recs[0].detail["pid"], pid);
}
