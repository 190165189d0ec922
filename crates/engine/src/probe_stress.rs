//! Resource probes: each pushes against one limit (memory, pids, CPU) and reports what the
//! kernel did. Used by the resource-control tests and `isc verify`'s P9 checks. They are bounded
//! in size and time, and clean up their own children.

use std::io;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::probe::ProbeOutcome;

/// Names handled here.
pub fn handles(name: &str) -> bool {
    matches!(name, "alloc" | "forkbomb" | "busy" | "cat")
}

pub fn run(spec: &str, name: &str, arg: &str) -> ProbeOutcome {
    let n: u64 = arg.parse().unwrap_or(0);
    let r = match name {
        "alloc" => alloc_mib(n),
        "forkbomb" => fork_many(n),
        "cat" => std::fs::read(arg)
            .map(|b| Value::from(String::from_utf8_lossy(&b[..b.len().min(65536)]).into_owned())),
        _ => busy_ms(n),
    };
    match r {
        Ok(value) => ProbeOutcome { name: spec.into(), ok: true, errno: None, value },
        Err(e) => ProbeOutcome {
            name: spec.into(),
            ok: false,
            errno: e.raw_os_error(),
            value: Value::Null,
        },
    }
}

/// Touches `mib` MiB page by page. Under a smaller memory limit the kernel OOM-kills us
/// before this returns (the process never reports).
fn alloc_mib(mib: u64) -> io::Result<Value> {
    let mut chunks: Vec<Vec<u8>> = Vec::new();
    for _ in 0..mib {
        let mut v = vec![0u8; 1 << 20];
        for i in (0..v.len()).step_by(4096) {
            v[i] = 1;
        }
        chunks.push(v);
    }
    Ok(json!(chunks.len()))
}

/// Forks up to `n` children that sleep, counts how many forks failed with EAGAIN (the pids
/// limit), then kills and reaps them all.
fn fork_many(n: u64) -> io::Result<Value> {
    let mut pids = vec![];
    let mut eagain = 0u64;
    for _ in 0..n {
        // SAFETY: fork in a single-threaded probe; the child only sleeps and _exits.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: as above.
            unsafe {
                libc::sleep(5);
                libc::_exit(0);
            }
        }
        if pid < 0 {
            if io::Error::last_os_error().raw_os_error() == Some(libc::EAGAIN) {
                eagain += 1;
            }
            continue;
        }
        pids.push(pid);
    }
    for p in &pids {
        // SAFETY: killing and reaping our own children.
        unsafe {
            libc::kill(*p, libc::SIGKILL);
            libc::waitpid(*p, std::ptr::null_mut(), 0);
        }
    }
    Ok(json!({ "forked": pids.len(), "eagain": eagain }))
}

/// Spins for `ms` wall-clock milliseconds and reports the CPU time it got.
fn busy_ms(ms: u64) -> io::Result<Value> {
    let t = Instant::now();
    let mut x = 0u64;
    while t.elapsed() < Duration::from_millis(ms) {
        for i in 0..10_000u64 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(i);
        }
        std::hint::black_box(x);
    }
    // SAFETY: a plain C struct for which all-zero bytes are a valid value.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes the struct.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let cpu_ms = (ru.ru_utime.tv_sec * 1000
        + ru.ru_utime.tv_usec / 1000
        + ru.ru_stime.tv_sec * 1000
        + ru.ru_stime.tv_usec / 1000) as u64;
    Ok(json!({ "wall_ms": t.elapsed().as_millis() as u64, "cpu_ms": cpu_ms }))
}
