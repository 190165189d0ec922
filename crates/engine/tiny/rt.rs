//! What both of isc's freestanding programs (`init.rs`, `monitor.rs`) need and libc would
//! otherwise give: the entry point (`_start`, which calls the program's `entry` with the
//! initial stack pointer), system calls, `exit`, and the memory functions the compiler may call
//! for copies, fills and comparisons of arrays. build.rs compiles each program with this file
//! as its `rt` module. `rep movsb`/`rep stosb` rather than loops, which the optimiser would
//! turn back into calls.

use core::arch::{asm, global_asm};

const SYS_EXIT_GROUP: usize = 231;

// The kernel enters with argc at the stack pointer; a call needs a 16-byte aligned stack.
global_asm!(
    ".globl _start",
    "_start:",
    "xor ebp, ebp",
    "mov rdi, rsp",
    "and rsp, -16",
    "call {entry}",
    "ud2",
    entry = sym super::entry,
);

/// # Safety
/// `nr` and the arguments must form a valid system call for this process.
pub(crate) unsafe fn syscall(nr: usize, a: [usize; 6]) -> isize {
    let ret: isize;
    // SAFETY: the x86_64 Linux system call convention; rcx and r11 are clobbered by `syscall`.
    unsafe {
        asm!(
            "syscall",
            inlateout("rax") nr as isize => ret,
            in("rdi") a[0],
            in("rsi") a[1],
            in("rdx") a[2],
            in("r10") a[3],
            in("r8") a[4],
            in("r9") a[5],
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret
}

pub(crate) fn exit(status: i32) -> ! {
    loop {
        // SAFETY: exit_group ends the process; it never returns.
        unsafe { syscall(SYS_EXIT_GROUP, [status as usize, 0, 0, 0, 0, 0]) };
    }
}

/// # Safety
/// `d` and `s` are valid for `n` bytes and do not overlap.
#[no_mangle]
unsafe extern "C" fn memcpy(d: *mut u8, s: *const u8, n: usize) -> *mut u8 {
    // SAFETY: the caller's contract; the direction flag is clear per the ABI.
    unsafe {
        asm!("rep movsb", inout("rcx") n => _, inout("rdi") d => _, inout("rsi") s => _,
             options(nostack, preserves_flags));
    }
    d
}

/// # Safety
/// `d` and `s` are valid for `n` bytes; they may overlap.
#[no_mangle]
unsafe extern "C" fn memmove(d: *mut u8, s: *const u8, n: usize) -> *mut u8 {
    if (d as usize) <= (s as usize) || (d as usize) >= (s as usize) + n {
        // SAFETY: a forward copy is correct when the destination starts before the source.
        return unsafe { memcpy(d, s, n) };
    }
    // SAFETY: a backward copy (direction flag set, then cleared again) for overlap.
    unsafe {
        asm!("std", "rep movsb", "cld", inout("rcx") n => _, inout("rdi") d.add(n - 1) => _,
             inout("rsi") s.add(n - 1) => _, options(nostack));
    }
    d
}

/// # Safety
/// `d` is valid for `n` bytes.
#[no_mangle]
unsafe extern "C" fn memset(d: *mut u8, c: i32, n: usize) -> *mut u8 {
    // SAFETY: the caller's contract.
    unsafe {
        asm!("rep stosb", inout("rcx") n => _, inout("rdi") d => _, in("al") c as u8,
             options(nostack, preserves_flags));
    }
    d
}

/// # Safety
/// `a` and `b` are valid for `n` bytes.
#[no_mangle]
unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    let mut i = 0;
    while i < n {
        // SAFETY: i < n.
        let (x, y) = unsafe { (*a.add(i), *b.add(i)) };
        if x != y {
            return x as i32 - y as i32;
        }
        i += 1;
    }
    0
}

/// # Safety
/// As `memcmp`.
#[no_mangle]
unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: the same contract.
    unsafe { memcmp(a, b, n) }
}
