//! The work of a monitor's exit that nobody waits for, done by a child that outlives it.
//!
//! When an ISC ends, its monitor writes the closing audit records and removes what the ISC
//! owned (cgroup, registration). Two things are then left that no caller can observe, but that
//! would hold up `isc run`'s exit status:
//!
//! * **the last `fdatasync`** of the audit log: on this class of VM one flush is a host `fsync`,
//!   0.3–0.5 ms. The records are in the page cache and every reader sees them; waiting only buys
//!   their survival of a power loss in the next half millisecond, which records written while
//!   the ISC ran do not have either (they are synced within 50 ms, `Durability::Interval`);
//! * **the last references to kernel objects whose release is slow**: PID 1's mount namespace
//!   ([`hold`]). Its tear-down (every mount of the ISC's root, and an expedited RCU grace period
//!   in `namespace_unlock`) would otherwise run in PID 1's exit, before the monitor learns that
//!   PID 1 is gone and may remove the cgroup.
//!
//! Both go to a *finisher*: a child that shares the monitor's memory (`CLONE_VM`: no page-table
//! copy, it costs what a thread does), closes every descriptor but the log's, its directory's and
//! the held ones, calls `fdatasync(2)`, and exits, dropping the held objects. The monitor exits
//! at once; the finisher is re-parented to the nearest subreaper, which reaps it. It also takes
//! the tear-down of the monitor's address space off the exit path (`exit_mmap` runs when the
//! last user of the memory leaves).
//!
//! A failed flush cannot be reported to anyone alive, so the finisher leaves a marker file (the
//! name the caller gives) in the log's directory; the audit log takes it up at its next open.
//!
//! The finisher runs nothing but raw system calls on a stack of its own: it shares the monitor's
//! heap, locks and thread-local storage (`errno` included) while the monitor is still running.

use std::ffi::CStr;
use std::io;
use std::os::fd::{IntoRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

const STACK_SIZE: usize = 16 * 1024;
/// How many descriptors [`hold`] keeps for the finisher; more are closed at once.
const HELD_MAX: usize = 4;

#[repr(C, align(16))]
struct Stack(std::cell::UnsafeCell<[u8; STACK_SIZE]>);

// SAFETY: the stack is only ever used by one finisher at a time, guarded by `STACK_IN_USE`.
unsafe impl Sync for Stack {}

static STACK: Stack = Stack(std::cell::UnsafeCell::new([0; STACK_SIZE]));
/// Set while a finisher runs on `STACK`; the finisher clears it as its last store.
static STACK_IN_USE: AtomicBool = AtomicBool::new(false);
/// Descriptors the next finisher keeps open until it ends (-1: free slot).
static HELD: [AtomicI32; HELD_MAX] = [const { AtomicI32::new(-1) }; HELD_MAX];
/// `HELD` as it was at the finisher's clone, for the finisher: the caller empties `HELD` as soon
/// as `clone` returns, possibly before the finisher has read it.
static KEPT: [AtomicI32; HELD_MAX] = [const { AtomicI32::new(-1) }; HELD_MAX];
/// The failure marker's name, for the finisher (a `&'static CStr`'s pointer).
static MARKER: std::sync::atomic::AtomicPtr<libc::c_char> =
    std::sync::atomic::AtomicPtr::new(std::ptr::null_mut());

/// Keeps `fd` open until the finisher ends, so that its last close — and the release of what
/// it refers to — happens after this process has exited. Without a finisher (none spawned, or
/// no free slot) it is closed when the process exits, or at once when the slots are full.
pub fn hold(fd: OwnedFd) {
    let raw = fd.into_raw_fd();
    for slot in &HELD {
        if slot.compare_exchange(-1, raw, Ordering::AcqRel, Ordering::Acquire).is_ok() {
            return;
        }
    }
    // SAFETY: `raw` came from an OwnedFd we consumed and stored nowhere.
    unsafe { libc::close(raw) };
}

/// Closes the descriptors [`hold`] keeps, here and now (a monitor that goes on running).
/// The descriptors held for the finisher now (a hibernating monitor keeps them across its
/// execs and holds them again once woken).
pub fn held_fds() -> Vec<RawFd> {
    HELD.iter().map(|s| s.load(Ordering::Acquire)).filter(|fd| *fd >= 0).collect()
}

pub fn release_held() {
    for slot in &HELD {
        let fd = slot.swap(-1, Ordering::AcqRel);
        if fd >= 0 {
            // SAFETY: the slot owned `fd`; it is taken out of it and closed once.
            unsafe { libc::close(fd) };
        }
    }
}

/// Starts a finisher that flushes `file` (`fdatasync`) and then releases the held descriptors;
/// on a failed flush it creates `marker` in the directory `dir`. `file` and `dir` stay open in
/// the caller; the held descriptors are closed in the caller (the finisher has its own copies).
/// Fails when a finisher of this process still runs or `clone(2)` fails: the caller then syncs
/// itself (and the held descriptors stay held).
#[cfg(target_arch = "x86_64")]
pub fn spawn(file: RawFd, dir: RawFd, marker: &'static CStr) -> io::Result<()> {
    if file < 0 || dir < 0 {
        return Err(io::Error::from_raw_os_error(libc::EBADF));
    }
    if STACK_IN_USE.swap(true, Ordering::AcqRel) {
        return Err(io::Error::from_raw_os_error(libc::EBUSY));
    }
    MARKER.store(marker.as_ptr().cast_mut(), Ordering::Release);
    for (kept, held) in KEPT.iter().zip(&HELD) {
        kept.store(held.load(Ordering::Acquire), Ordering::Release);
    }
    // Both descriptors travel in the argument pointer itself: nothing the caller may free.
    let arg = (((dir as u64) << 32) | file as u64) as usize as *mut libc::c_void;
    // SAFETY: the stack grows down from its end; `STACK` is static, 16-byte aligned and, with
    // `STACK_IN_USE` set above, used by no other finisher.
    let top = unsafe { STACK.0.get().cast::<u8>().add(STACK_SIZE) };
    // SAFETY: clone(2) through glibc's wrapper runs `finish` on `top` in a new process sharing
    // our memory (CLONE_VM) but with copies of the descriptor table, cwd and signal handlers;
    // `finish` only makes raw system calls (no TLS, no allocator, no locks) and the wrapper
    // calls exit(2) when it returns. SIGCHLD as its exit signal makes it a normal child for
    // whichever process ends up reaping it.
    let pid = unsafe { libc::clone(finish, top.cast(), libc::CLONE_VM | libc::SIGCHLD, arg) };
    if pid < 0 {
        let e = io::Error::last_os_error();
        STACK_IN_USE.store(false, Ordering::Release);
        return Err(e);
    }
    // The finisher has its own copies: ours go now, so the last close is the finisher's.
    release_held();
    Ok(())
}

#[cfg(not(target_arch = "x86_64"))]
pub fn spawn(_file: RawFd, _dir: RawFd, _marker: &'static CStr) -> io::Result<()> {
    Err(io::Error::from_raw_os_error(libc::ENOSYS))
}

#[cfg(target_arch = "x86_64")]
extern "C" fn finish(arg: *mut libc::c_void) -> libc::c_int {
    let packed = arg as usize as u64;
    let (file, dir) = ((packed & 0xffff_ffff) as i64, (packed >> 32) as i64);
    // Nothing but these stays open: the caller's stdout must reach EOF when the caller exits,
    // not when the disk is done.
    let mut keep = [-1i64; HELD_MAX + 2];
    keep[0] = file;
    keep[1] = dir;
    for (k, slot) in keep[2..].iter_mut().zip(&KEPT) {
        *k = i64::from(slot.load(Ordering::Acquire));
    }
    keep.sort_unstable();
    // SAFETY (all calls below): raw system calls with integer arguments and a static C string;
    // see `sys`.
    unsafe {
        let mut next = 0i64;
        for &fd in keep.iter().filter(|fd| **fd >= 0) {
            if fd > next {
                sys(libc::SYS_close_range, next, fd - 1, 0);
            }
            next = fd + 1;
        }
        sys(libc::SYS_close_range, next, i64::from(u32::MAX), 0);
        if sys(libc::SYS_fdatasync, file, 0, 0) < 0 {
            let flags = i64::from(libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC);
            let name = MARKER.load(Ordering::Acquire) as i64;
            let fd = sys4(libc::SYS_openat, dir, name, flags, 0o600);
            if fd >= 0 {
                sys(libc::SYS_fsync, fd, 0, 0);
                sys(libc::SYS_fsync, dir, 0, 0);
            }
        }
    }
    STACK_IN_USE.store(false, Ordering::Release);
    // exit(2), from glibc's clone wrapper, closes the held descriptors: their release is ours.
    0
}

/// A system call without glibc's wrapper, which would write `errno` into the thread-local
/// storage of the thread that cloned us.
///
/// # Safety
/// The caller passes arguments valid for system call `nr`.
#[cfg(target_arch = "x86_64")]
unsafe fn sys(nr: libc::c_long, a: i64, b: i64, c: i64) -> i64 {
    // SAFETY: the caller's promise, passed on.
    unsafe { sys4(nr, a, b, c, 0) }
}

/// # Safety
/// As for [`sys`].
#[cfg(target_arch = "x86_64")]
unsafe fn sys4(nr: libc::c_long, a: i64, b: i64, c: i64, d: i64) -> i64 {
    let ret: i64;
    // SAFETY: the x86-64 Linux system call ABI: number in rax, arguments in rdi, rsi, rdx, r10;
    // the kernel clobbers rcx and r11 and returns in rax. No memory is touched but what the
    // call itself is given.
    unsafe {
        std::arch::asm!(
            "syscall",
            inlateout("rax") nr => ret,
            in("rdi") a,
            in("rsi") b,
            in("rdx") c,
            in("r10") d,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;
    use std::os::fd::{AsRawFd, FromRawFd};
    use std::time::{Duration, Instant};

    const MARK: &CStr = c"sync-failed";

    fn wait_idle() {
        let deadline = Instant::now() + Duration::from_secs(10);
        while STACK_IN_USE.load(Ordering::Acquire) {
            assert!(Instant::now() < deadline, "the finisher never finished");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn pipe() -> (OwnedFd, OwnedFd) {
        let mut fds = [0; 2];
        // SAFETY: pipe2(2) writes two descriptors into the array we own.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: both were just opened and are owned by nothing else.
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
    }

    /// One test for the whole life cycle: the finisher's stack and slots are process-wide.
    #[test]
    fn a_finisher_flushes_keeps_held_objects_until_it_ends_and_marks_a_failed_flush() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = std::fs::File::open(tmp.path()).unwrap();
        let file = std::fs::File::create(tmp.path().join("log")).unwrap();
        std::io::Write::write_all(&mut &file, b"record\n").unwrap();
        // A held write end: the read end sees EOF only once the finisher has exited.
        let (r, w) = pipe();
        hold(w);
        spawn(file.as_raw_fd(), dir.as_raw_fd(), MARK).unwrap();
        assert!(HELD.iter().all(|s| s.load(Ordering::Acquire) == -1), "our copies are closed");
        let mut buf = [0u8; 1];
        // SAFETY: a blocking read of one byte into our buffer; 0 means every writer is gone.
        let n = unsafe { libc::read(r.as_raw_fd(), buf.as_mut_ptr().cast(), 1) };
        assert_eq!(n, 0, "the held write end was closed by the finisher's exit");
        // Kept to the end: the last close came after the flush (the finisher's last store),
        // not from its first close_range.
        assert!(!STACK_IN_USE.load(Ordering::Acquire), "the held descriptor went before the flush");
        wait_idle();
        assert!(!tmp.path().join("sync-failed").exists(), "a successful flush leaves no marker");
        // fdatasync(2) of a pipe fails with EINVAL: the finisher must leave the marker.
        let (r2, _w2) = pipe();
        spawn(r2.as_raw_fd(), dir.as_raw_fd(), MARK).unwrap();
        wait_idle();
        assert!(tmp.path().join("sync-failed").exists(), "a failed flush leaves the marker");
        // One finisher at a time: a second one is refused while the first runs.
        STACK_IN_USE.store(true, Ordering::Release);
        let e = spawn(file.as_raw_fd(), dir.as_raw_fd(), MARK).unwrap_err();
        STACK_IN_USE.store(false, Ordering::Release);
        assert_eq!(e.raw_os_error(), Some(libc::EBUSY));
    }
}
