//! What a long-lived idle process of an ISC (the monitor, PID 1) gives back to the kernel once
//! the service runs and nothing has happened for a while.
//!
//! Both run the whole isc binary at first (a 10 MB static PIE; PID 1 is a `clone3` copy of the
//! monitor, until it hibernates: `hibernate.rs`), and the start path touches megabytes of its
//! code: every code page touched is mapped by a
//! page-table entry, and every 2 MiB of the address space with at least one mapped page costs a
//! 4 KiB page-table page, charged to the process's memory cgroup as kernel memory
//! (`VmPTE` in /proc/PID/status: ~52 KiB per process measured, see docs/benchmarks.md). An
//! idle loop needs a few pages of that code: released, 13 KiB less kernel memory per idle ISC
//! (the pages an idle loop touches again are spread over several 2 MiB ranges, whose tables
//! come back).
//!
//! `madvise(MADV_DONTNEED)` over the binary's read-only segments (code, read-only data) unmaps
//! those pages: they are clean, file-backed and never written (relocations only touch the
//! writable RELRO and data segments), so the next access faults them back in from the page
//! cache with the same content — as after the kernel's own reclaim, which may drop clean file
//! pages of any process at any time. The page-cache pages themselves stay (shared by every
//! process running the binary and not charged to the ISC). With `CONFIG_PT_RECLAIM` (Linux
//! 6.14+, x86-64), MADV_DONTNEED also frees page-table pages left empty (madvise(2)); without
//! it, only the entries are cleared. The anonymous, relocated RELRO pages are never touched.

use std::io;

/// How long an ISC's process must have been quiet before it releases what idling does not
/// need: off the start path (a short-lived service never pays for it), and long enough that a
/// burst of control requests is not slowed by re-faulting code after each one.
pub const QUIET_MS: i32 = 1000;

/// One read-only segment of the running executable, page-aligned inward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Range {
    start: usize,
    end: usize,
}

/// At most this many read-only segments are released (an ELF executable has two: headers and
/// read-only data, and code). A fixed array: the release runs right after `malloc_trim(3)`,
/// and a heap allocation would dirty a page it has just given back.
const MAX_SEGMENTS: usize = 4;

/// The executable's loaded segments that are neither writable nor relocated: `PT_LOAD`
/// without `PF_W`, clipped inward to whole pages so a page shared with a writable segment is
/// never touched. `dl_iterate_phdr(3)` lists the main program first (also in a static PIE).
fn read_only_segments() -> ([Range; MAX_SEGMENTS], usize) {
    struct Acc {
        ranges: [Range; MAX_SEGMENTS],
        n: usize,
        page: usize,
    }
    unsafe extern "C" fn each(
        info: *mut libc::dl_phdr_info,
        _size: libc::size_t,
        data: *mut libc::c_void,
    ) -> libc::c_int {
        // SAFETY: glibc passes a valid dl_phdr_info for the duration of the callback, and
        // `data` is the `Acc` handed to dl_iterate_phdr below, borrowed mutably only here.
        let (info, acc) = unsafe { (&*info, &mut *(data as *mut Acc)) };
        // SAFETY: dlpi_phdr points at dlpi_phnum program headers of the loaded object.
        let phdrs = unsafe { std::slice::from_raw_parts(info.dlpi_phdr, info.dlpi_phnum.into()) };
        let base = info.dlpi_addr as usize;
        for ph in phdrs {
            if ph.p_type != libc::PT_LOAD || ph.p_flags & libc::PF_W != 0 || acc.n == MAX_SEGMENTS {
                continue;
            }
            let lo = base + ph.p_vaddr as usize;
            let hi = lo + ph.p_memsz as usize;
            let start = lo.next_multiple_of(acc.page);
            let end = hi / acc.page * acc.page;
            if end > start {
                acc.ranges[acc.n] = Range { start, end };
                acc.n += 1;
            }
        }
        1 // the main program only: stop after the first object
    }
    let mut acc = Acc { ranges: [Range::default(); MAX_SEGMENTS], n: 0, page: page_size() };
    // SAFETY: `each` matches the callback type and only uses `acc` through `data` while
    // dl_iterate_phdr runs.
    unsafe { libc::dl_iterate_phdr(Some(each), (&mut acc as *mut Acc).cast()) };
    (acc.ranges, acc.n)
}

fn page_size() -> usize {
    // SAFETY: sysconf has no memory effects.
    (unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize).max(4096)
}

/// Unmaps this process's resident pages of the executable's code and read-only data (they
/// fault back in from the page cache when next used) so that the page tables mapping them can
/// go. Returns the bytes of address space advised.
pub fn release_code_pages() -> io::Result<usize> {
    let (ranges, n) = read_only_segments();
    let mut total = 0;
    for r in &ranges[..n] {
        // SAFETY: the range lies inside a read-only, file-backed, private mapping of our own
        // executable (see `read_only_segments`): MADV_DONTNEED only drops its page-table
        // entries, and the identical file content is faulted back in on the next access
        // (madvise(2)). No Rust object lives there that could observe the difference.
        let rc = unsafe {
            libc::madvise(r.start as *mut libc::c_void, r.end - r.start, libc::MADV_DONTNEED)
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        total += r.end - r.start;
    }
    Ok(total)
}

/// Gives the calling thread's free heap back to the kernel: its thread cache first, then every
/// free page of the arena (malloc_trim(3)).
///
/// glibc keeps up to 7 freed blocks per size class in a per-thread cache (tcache), which the
/// arena counts as in use: `malloc_trim` cannot release the pages they sit on, and PID 1, a
/// copy of the monitor, keeps every page such a block pins at `clone3` for the ISC's life.
/// Emptied before the clone, 22 KiB less per idle ISC (docs/benchmarks.md). No public
/// interface empties it; glibc does so itself when a thread exits, through
/// `__malloc_arena_thread_freeres`, which also leaves the cache off for the rest of the
/// thread's life (its later allocations go to the arena directly, a few ns more each). isc
/// links glibc statically (`.cargo/config.toml`), so that internal function is resolved when
/// isc is linked, against the very glibc it runs with: a glibc without it fails the build, not
/// a run. Dynamically linked builds (libc.so does not export it) only trim.
pub fn release_heap() {
    #[cfg(all(target_env = "gnu", target_feature = "crt-static"))]
    {
        extern "C" {
            fn __malloc_arena_thread_freeres();
        }
        // SAFETY: glibc's own thread-exit step for the calling thread's allocator state: it
        // frees the cached blocks into the arena and detaches the thread from its arena, which
        // the next malloc of this thread attaches again (malloc/arena.c). It touches no other
        // thread's state and takes the arena locks itself.
        unsafe { __malloc_arena_thread_freeres() };
    }
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim takes glibc's arena locks itself and touches no caller memory.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status_kib(field: &str) -> u64 {
        let s = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = s.lines().find(|l| l.starts_with(field)).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    #[test]
    fn segments_are_the_executables_read_only_loads() {
        let (ranges, n) = read_only_segments();
        let ranges = &ranges[..n];
        assert!(n > 0);
        let here = segments_are_the_executables_read_only_loads as *const () as usize;
        assert!(
            ranges.iter().any(|r| (r.start..r.end).contains(&here)),
            "this function's code lies in one of {ranges:x?}"
        );
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        for r in ranges {
            assert_eq!(r.start % 4096, 0);
            assert_eq!(r.end % 4096, 0);
            // Every page of the range is in a mapping without write permission.
            let covered: usize = maps
                .lines()
                .filter_map(|l| {
                    let (span, rest) = l.split_once(' ')?;
                    let (a, b) = span.split_once('-')?;
                    let (a, b) =
                        (usize::from_str_radix(a, 16).ok()?, usize::from_str_radix(b, 16).ok()?);
                    (rest.as_bytes()[1] == b'-')
                        .then(|| b.min(r.end).saturating_sub(a.max(r.start)))
                })
                .sum();
            assert_eq!(covered, r.end - r.start, "{r:x?} is read-only in /proc/self/maps");
        }
    }

    /// Bytes the allocator counts as in use (blocks in a thread cache included).
    fn in_use() -> usize {
        // SAFETY: mallinfo2 only reads the allocator's counters.
        unsafe { libc::mallinfo2() }.uordblks
    }

    /// A block freed after `release_heap` goes back to the arena (counted free) instead of the
    /// thread's cache (counted in use, so `malloc_trim` could never release its page).
    #[cfg(all(target_env = "gnu", target_feature = "crt-static"))]
    #[test]
    fn after_release_heap_freed_blocks_go_back_to_the_arena() {
        // In a child of its own: no other test thread allocates while the counters are read.
        // SAFETY: the child only allocates on one new thread of its own, then _exits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let ok = std::thread::spawn(|| {
                // Bytes two freed blocks give back to the arena (0 while a cache takes them).
                let given_back = || {
                    // SAFETY: plain malloc/free of blocks owned here.
                    unsafe {
                        let (p, q) = (libc::malloc(1000), libc::malloc(1000));
                        let before = in_use();
                        libc::free(p);
                        libc::free(q);
                        before - in_use()
                    }
                };
                let cached = given_back();
                release_heap();
                let released = given_back();
                (cached == 0 && released >= 2000) as i32
            })
            .join()
            .unwrap_or(0);
            // SAFETY: ending the forked child with the verdict.
            unsafe { libc::_exit(if ok == 1 { 0 } else { 1 }) };
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "status {status:#x}");
    }

    #[test]
    fn code_pages_go_and_come_back() {
        // The code still runs after its pages are dropped (it faults back in), and the
        // resident file-backed pages shrink.
        let before = status_kib("RssFile:");
        let advised = release_code_pages().unwrap();
        let after = status_kib("RssFile:");
        assert!(advised > 1 << 20, "the test binary has more than 1 MiB of code: {advised}");
        assert!(after < before, "RssFile {before} -> {after} kB");
        assert_eq!(release_code_pages().unwrap(), advised);
    }
}
