//! Prometheus text exposition (format 0.0.4) for `GET /metrics`: per-ISC state, restarts and
//! cgroup usage; the Dock's API and audit counters. Written by hand: the format is a few lines
//! of text and a metrics crate would add a registry for no gain here.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::Ordering;
use std::sync::Mutex;

use crate::records::IscRecord;
use crate::supervisor::Dock;

/// API request counters by verb and HTTP status.
#[derive(Default)]
pub struct ApiCounters {
    by: Mutex<BTreeMap<(String, u16), u64>>,
}

impl ApiCounters {
    pub fn count(&self, verb: &str, status: u16) {
        *self
            .by
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((verb.into(), status))
            .or_default() += 1;
    }
    fn snapshot(&self) -> Vec<((String, u16), u64)> {
        self.by
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }
}

/// Escapes a label value (backslash, quote, newline).
fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Live cgroup numbers of one ISC (absent when it does not run).
#[derive(Debug, Default, Clone, Copy)]
pub struct Usage {
    pub cpu_usec: Option<u64>,
    pub memory_bytes: Option<u64>,
    pub pids: Option<u64>,
}

/// Reads the cgroup usage of the running ISCs (blocking file reads).
pub fn usage(dock: &Dock, recs: &[IscRecord]) -> BTreeMap<String, Usage> {
    let Ok(layout) = isc_cgroup::Layout::detect() else { return BTreeMap::new() };
    recs.iter()
        .filter(|r| r.monitor_pid.is_some())
        .filter_map(|r| {
            let cg = isc_cgroup::open(&layout, Some(&dock.cgroup_parent), &r.name).ok()?;
            let s = cg.stats().ok()?;
            Some((
                r.name.clone(),
                Usage {
                    cpu_usec: s.cpu_usage_usec,
                    memory_bytes: s.memory_current,
                    pids: s.pids_current,
                },
            ))
        })
        .collect()
}

/// Renders the exposition text.
pub fn render(
    dock: &Dock,
    recs: &[IscRecord],
    usage: &BTreeMap<String, Usage>,
    api: &ApiCounters,
) -> String {
    let mut o = String::new();
    let family = |o: &mut String, name: &str, kind: &str, help: &str| {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
    };
    family(&mut o, "isc_up", "gauge", "1 if the ISC's service runs.");
    for r in recs {
        let up = u8::from(r.status == crate::records::Status::Running);
        let _ = writeln!(
            o,
            "isc_up{{isc=\"{}\",status=\"{}\"}} {up}",
            label(&r.name),
            r.status.as_str()
        );
    }
    family(&mut o, "isc_restarts_total", "counter", "Restarts done by the supervisor.");
    for r in recs {
        let _ = writeln!(o, "isc_restarts_total{{isc=\"{}\"}} {}", label(&r.name), r.restarts);
    }
    family(
        &mut o,
        "isc_consecutive_failures",
        "gauge",
        "Quick failures in a row (crash-loop at the configured count).",
    );
    for r in recs {
        let _ =
            writeln!(o, "isc_consecutive_failures{{isc=\"{}\"}} {}", label(&r.name), r.failures);
    }
    family(&mut o, "isc_health_failures_total", "counter", "Runs ended by a failed health check.");
    for r in recs.iter().filter(|r| r.health.is_some()) {
        let _ = writeln!(
            o,
            "isc_health_failures_total{{isc=\"{}\"}} {}",
            label(&r.name),
            r.health_failures
        );
    }
    family(
        &mut o,
        "isc_healthy",
        "gauge",
        "1 if the ISC's last health check passed (ISCs with a check).",
    );
    for r in recs.iter().filter(|r| r.health.is_some()) {
        let healthy = u8::from(
            r.status == crate::records::Status::Running
                && r.health_state == Some(crate::health::HealthState::Healthy),
        );
        let _ = writeln!(o, "isc_healthy{{isc=\"{}\"}} {healthy}", label(&r.name));
    }
    family(&mut o, "isc_memory_limit_bytes", "gauge", "The ISC's memory limit.");
    for r in recs {
        if let Some(m) = r.memory_limit {
            let _ = writeln!(o, "isc_memory_limit_bytes{{isc=\"{}\"}} {m}", label(&r.name));
        }
    }
    family(&mut o, "isc_last_exit_status", "gauge", "Status of the last run (code or 128+signal).");
    for r in recs {
        if let Some(e) = &r.last_exit {
            let _ = writeln!(o, "isc_last_exit_status{{isc=\"{}\"}} {}", label(&r.name), e.status);
        }
    }
    family(&mut o, "isc_cpu_seconds_total", "counter", "CPU time used by the ISC's cgroup.");
    for (n, u) in usage {
        if let Some(c) = u.cpu_usec {
            let _ = writeln!(o, "isc_cpu_seconds_total{{isc=\"{}\"}} {}", label(n), c as f64 / 1e6);
        }
    }
    family(&mut o, "isc_memory_bytes", "gauge", "Memory charged to the ISC's cgroup.");
    for (n, u) in usage {
        if let Some(m) = u.memory_bytes {
            let _ = writeln!(o, "isc_memory_bytes{{isc=\"{}\"}} {m}", label(n));
        }
    }
    family(&mut o, "isc_pids", "gauge", "Tasks in the ISC's cgroup.");
    for (n, u) in usage {
        if let Some(p) = u.pids {
            let _ = writeln!(o, "isc_pids{{isc=\"{}\"}} {p}", label(n));
        }
    }
    family(&mut o, "isc_dock_api_requests_total", "counter", "API requests by verb and status.");
    for ((verb, status), n) in api.snapshot() {
        let _ = writeln!(
            o,
            "isc_dock_api_requests_total{{verb=\"{}\",code=\"{status}\"}} {n}",
            label(&verb)
        );
    }
    family(&mut o, "isc_dock_audit_records_total", "counter", "Audit records written by the Dock.");
    let _ = writeln!(
        o,
        "isc_dock_audit_records_total {}",
        dock.events.audit_records.load(Ordering::Relaxed)
    );
    family(&mut o, "isc_dock_audit_failures_total", "counter", "Audit appends that failed.");
    let _ = writeln!(
        o,
        "isc_dock_audit_failures_total {}",
        dock.events.audit_failures.load(Ordering::Relaxed)
    );
    o
}
