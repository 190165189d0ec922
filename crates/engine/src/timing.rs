//! Start-path timings for performance work: with `ISC_TIMINGS` set in the environment, each
//! [`mark`] prints the microseconds since the first mark of the process and a label to stderr
//! (`isc-timing:   1803 us cgroup created`). Without it a mark costs one relaxed atomic load.
//!
//! Only the monitor marks (never the cloned child: its stderr is the service's), so the
//! figures are the monitor's view of the start path; `bench/peers.sh` measures the whole.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

const UNKNOWN: u8 = 0;
const OFF: u8 = 1;
const ON: u8 = 2;

static STATE: AtomicU8 = AtomicU8::new(UNKNOWN);
static ORIGIN: OnceLock<Instant> = OnceLock::new();

/// Whether `ISC_TIMINGS` was set when the process first asked.
pub fn enabled() -> bool {
    match STATE.load(Ordering::Relaxed) {
        ON => true,
        OFF => false,
        _ => {
            let on = std::env::var_os("ISC_TIMINGS").is_some_and(|v| !v.is_empty());
            STATE.store(if on { ON } else { OFF }, Ordering::Relaxed);
            on
        }
    }
}

/// Prints the time since the first mark and `label`, when timings are enabled.
pub fn mark(label: &str) {
    if !enabled() {
        return;
    }
    let origin = ORIGIN.get_or_init(Instant::now);
    eprintln!("isc-timing: {:>6} us {label}", origin.elapsed().as_micros());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disabled_marks_print_nothing_and_stay_disabled() {
        // The test harness does not set ISC_TIMINGS; the state is decided once.
        if std::env::var_os("ISC_TIMINGS").is_none() {
            mark("x");
            assert!(!enabled());
            assert_eq!(STATE.load(Ordering::Relaxed), OFF);
            assert!(ORIGIN.get().is_none(), "a disabled mark must not start the clock");
        }
    }
}
