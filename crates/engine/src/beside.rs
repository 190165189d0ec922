//! Helper threads that start on another CPU than their creator.
//!
//! A new thread is woken on its creator's CPU and, under EEVDF, usually runs first. With
//! PREEMPT_NONE (this kernel's default model) a helper that goes straight into a long system
//! call — creating a network namespace, removing cgroups — then holds that CPU for hundreds
//! of microseconds while its creator, the start or exit path, waits: measured 380 us for
//! `thread::spawn` of the netns helper. An idle CPU only pulls the waiting creator at the next
//! balancing tick (4 ms at HZ=250). So the helper is created with an affinity that excludes
//! the creator's CPU (pthread_attr_setaffinity_np(3)): the kernel places it on another CPU at
//! creation, and its first act is to widen its affinity back to what its creator had, so the
//! scheduler may move it later as usual.

use std::io;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Condvar, Mutex};

/// A helper thread's handle; `join` returns what its function returned.
pub struct Beside<T> {
    inner: Inner<T>,
}

enum Inner<T> {
    Pinned {
        thread: libc::pthread_t,
        result: Arc<Mutex<Option<T>>>,
        /// Set once `work` has returned (or panicked), before the thread's own teardown.
        done: Arc<Done>,
        /// The creator's CPU at creation, and where the helper found itself first: what the
        /// tests check placement with.
        #[cfg_attr(not(test), allow(dead_code))]
        excluded: i32,
        #[cfg_attr(not(test), allow(dead_code))]
        started_on: Arc<AtomicI32>,
    },
    Plain(std::thread::JoinHandle<T>),
}

impl<T> std::fmt::Debug for Beside<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Beside")
    }
}

struct Start<T> {
    name: String,
    home: libc::cpu_set_t,
    work: Box<dyn FnOnce() -> T + Send>,
    result: Arc<Mutex<Option<T>>>,
    done: Arc<Done>,
    started_on: Arc<AtomicI32>,
}

#[derive(Default)]
struct Done {
    flag: Mutex<bool>,
    cv: Condvar,
}

/// Starts `work` on a new thread named `name`, on another CPU than the caller's when the caller
/// may run on more than one; else (or if that fails) as `std::thread::spawn` would.
pub fn spawn<T, F>(name: &str, stack: usize, work: F) -> io::Result<Beside<T>>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let Some((home, elsewhere, excluded)) = masks() else {
        let thread = std::thread::Builder::new().name(name.into()).stack_size(stack).spawn(work)?;
        return Ok(Beside { inner: Inner::Plain(thread) });
    };
    let result = Arc::new(Mutex::new(None));
    let done = Arc::new(Done::default());
    let started_on = Arc::new(AtomicI32::new(-1));
    let start: Box<Start<T>> = Box::new(Start {
        name: name.into(),
        home,
        work: Box::new(work),
        result: Arc::clone(&result),
        done: Arc::clone(&done),
        started_on: Arc::clone(&started_on),
    });
    let arg = Box::into_raw(start);
    // SAFETY: attr is initialised before use and destroyed after pthread_create; the cpu set
    // and the stack size are plain values; `trampoline::<T>` takes back ownership of `arg`
    // exactly once, and only if pthread_create succeeded (else we take it back here).
    unsafe {
        let mut attr: libc::pthread_attr_t = std::mem::zeroed();
        libc::pthread_attr_init(&mut attr);
        libc::pthread_attr_setstacksize(&mut attr, stack.max(libc::PTHREAD_STACK_MIN));
        libc::pthread_attr_setaffinity_np(
            &mut attr,
            std::mem::size_of::<libc::cpu_set_t>(),
            &elsewhere,
        );
        let mut thread: libc::pthread_t = 0;
        let rc = libc::pthread_create(&mut thread, &attr, trampoline::<T>, arg.cast());
        libc::pthread_attr_destroy(&mut attr);
        if rc != 0 {
            drop(Box::from_raw(arg));
            return Err(io::Error::from_raw_os_error(rc));
        }
        Ok(Beside { inner: Inner::Pinned { thread, result, done, excluded, started_on } })
    }
}

/// Like [`spawn`] for work that must happen either way: when no thread can be made, `work`
/// runs here, on the caller's thread, before this returns (and `None` is returned). Exit-path
/// work — removing a cgroup, recording an ISC's end — is not lost to a failed `clone`.
pub fn spawn_or_inline<F>(name: &str, stack: usize, work: F) -> Option<Beside<()>>
where
    F: FnOnce() + Send + 'static,
{
    // The work is handed over through a slot, so it is still here if the spawn fails (spawn
    // consumes its closure either way).
    let slot = Arc::new(Mutex::new(Some(work)));
    let on_thread = Arc::clone(&slot);
    let spawned = spawn(name, stack, move || {
        if let Some(work) = on_thread.lock().ok().and_then(|mut w| w.take()) {
            work();
        }
    });
    match spawned {
        Ok(t) => Some(t),
        Err(e) => {
            tracing::warn!(thread = name, error = %e, "no helper thread; running its work inline");
            if let Some(work) = slot.lock().ok().and_then(|mut w| w.take()) {
                work();
            }
            None
        }
    }
}

impl<T> Beside<T> {
    /// Waits for the thread; `None` if its function panicked.
    pub fn join(self) -> Option<T> {
        match self.inner {
            Inner::Plain(h) => h.join().ok(),
            Inner::Pinned { thread, result, .. } => {
                // SAFETY: a joinable thread we created and join exactly once (self is consumed).
                unsafe { libc::pthread_join(thread, std::ptr::null_mut()) };
                result.lock().ok()?.take()
            }
        }
    }

    /// Waits until the work has returned, not for the thread to end: its teardown (thread-local
    /// destructors, glibc's thread-cache release and stack `madvise`, the joiner's wake-up:
    /// ~0.1 ms measured on the exit path) goes on detached, or is cut short by the process's
    /// exit. `None` if the work panicked.
    pub fn outcome(self) -> Option<T> {
        match self.inner {
            Inner::Plain(h) => h.join().ok(),
            Inner::Pinned { thread, result, done, .. } => {
                let mut finished = done.flag.lock().ok()?;
                while !*finished {
                    finished = done.cv.wait(finished).ok()?;
                }
                drop(finished);
                // SAFETY: a joinable thread we created; it is detached once (self is consumed)
                // and never joined.
                unsafe { libc::pthread_detach(thread) };
                result.lock().ok()?.take()
            }
        }
    }
}

extern "C" fn trampoline<T>(arg: *mut libc::c_void) -> *mut libc::c_void {
    // SAFETY: `arg` is the Box leaked by `spawn`, handed to this thread alone.
    let start = unsafe { Box::from_raw(arg.cast::<Start<T>>()) };
    // SAFETY: sched_getcpu takes no arguments.
    start.started_on.store(unsafe { libc::sched_getcpu() }, Ordering::Relaxed);
    // SAFETY: widening this thread's own affinity to its creator's mask (see module docs).
    unsafe {
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &start.home);
    }
    if let Ok(name) = std::ffi::CString::new(start.name.clone()) {
        // SAFETY: PR_SET_NAME reads at most 16 bytes of a NUL-terminated string.
        unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr()) };
    }
    let Start { work, result, done, .. } = *start;
    // A panic must not unwind through this extern "C" frame.
    if let Ok(v) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)) {
        if let Ok(mut slot) = result.lock() {
            *slot = Some(v);
        }
    }
    if let Ok(mut finished) = done.flag.lock() {
        *finished = true;
        done.cv.notify_one();
    }
    std::ptr::null_mut()
}

/// The caller's affinity, the same without the CPU it runs on, and that CPU; `None` when
/// that would leave nothing.
fn masks() -> Option<(libc::cpu_set_t, libc::cpu_set_t, i32)> {
    // SAFETY: an all-zero cpu_set_t is the empty set; sched_getaffinity fills it;
    // sched_getcpu takes no arguments; CPU_* only touch the local sets.
    unsafe {
        let mut home: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut home) != 0 {
            return None;
        }
        let cpu = libc::sched_getcpu();
        if cpu < 0 || libc::CPU_COUNT(&home) < 2 {
            return None;
        }
        let mut elsewhere = home;
        libc::CPU_CLR(cpu as usize, &mut elsewhere);
        (libc::CPU_COUNT(&elsewhere) > 0).then_some((home, elsewhere, cpu))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed_cpus() -> i32 {
        // SAFETY: an all-zero cpu_set_t is valid; sched_getaffinity fills it.
        unsafe {
            let mut mask: libc::cpu_set_t = std::mem::zeroed();
            libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut mask);
            libc::CPU_COUNT(&mask)
        }
    }

    #[test]
    fn the_helper_starts_elsewhere_returns_its_value_and_may_move_again() {
        let h = spawn("isc-test-beside", 64 * 1024, allowed_cpus).unwrap();
        let placement = match &h.inner {
            Inner::Pinned { excluded, started_on, .. } => Some((*excluded, Arc::clone(started_on))),
            Inner::Plain(_) => None,
        };
        let allowed_in_helper = h.join().unwrap();
        assert_eq!(allowed_in_helper, allowed_cpus(), "affinity widened back to the creator's");
        match placement {
            Some((excluded, started_on)) => {
                let first = started_on.load(Ordering::Relaxed);
                assert!(first >= 0, "the helper ran");
                assert_ne!(first, excluded, "the helper started on its creator's CPU");
            }
            None => assert_eq!(allowed_cpus(), 1, "a plain thread only with one CPU"),
        }
    }

    #[test]
    fn work_handed_to_spawn_or_inline_runs_once() {
        let runs = Arc::new(AtomicI32::new(0));
        let counter = Arc::clone(&runs);
        let h = spawn_or_inline("isc-test-inline", 64 * 1024, move || {
            counter.fetch_add(1, Ordering::SeqCst);
        });
        if let Some(h) = h {
            h.join().unwrap();
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn outcome_returns_the_work_s_value_or_none_after_a_panic() {
        assert_eq!(spawn("isc-test-outcome", 64 * 1024, || 7u8).unwrap().outcome(), Some(7));
        let h = spawn("isc-test-panic2", 64 * 1024, || -> u8 { panic!("boom") }).unwrap();
        assert_eq!(h.outcome(), None);
    }

    #[test]
    fn a_panicking_helper_joins_as_none() {
        let h = spawn("isc-test-panic", 64 * 1024, || -> u8 { panic!("boom") }).unwrap();
        assert_eq!(h.join(), None);
    }
}
