//! Prometheus text exposition (format 0.0.4) for `GET /metrics`: per-ISC state, restarts and
//! cgroup usage; the Dock's API and audit counters. Written by hand: the format is a few lines
//! of text and a metrics crate would add a registry for no gain here.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::Ordering;
use std::sync::Mutex;

use crate::records::IscRecord;
use crate::stats::IscStats;
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

/// Renders the exposition text.
pub fn render(dock: &Dock, recs: &[IscRecord], usage: &[IscStats], api: &ApiCounters) -> String {
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
    family(
        &mut o,
        "isc_verify_exposure",
        "gauge",
        "Overall exposure (0 best .. 10) of the last `isc verify` of the running ISC.",
    );
    let verified: Vec<(&IscRecord, serde_json::Value)> = recs
        .iter()
        .filter(|r| r.status == crate::records::Status::Running)
        .filter_map(|r| Some((r, isc_engine::state::last_verify(&dock.state_dir, &r.name)?)))
        .collect();
    for (r, v) in &verified {
        if let Some(x) = v["exposure"].as_f64() {
            let _ = writeln!(o, "isc_verify_exposure{{isc=\"{}\"}} {x}", label(&r.name));
        }
    }
    family(&mut o, "isc_verify_pass", "gauge", "1 if the last `isc verify` of the ISC passed.");
    for (r, v) in &verified {
        let pass = u8::from(v["pass"].as_bool() == Some(true));
        let _ = writeln!(o, "isc_verify_pass{{isc=\"{}\"}} {pass}", label(&r.name));
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
    let cg = |f: fn(&isc_cgroup::Stats) -> Option<u64>| {
        usage.iter().filter_map(move |u| Some((label(&u.name), f(u.usage.as_ref()?)?)))
    };
    family(&mut o, "isc_cpu_seconds_total", "counter", "CPU time used by the ISC's cgroup.");
    for (n, c) in cg(|s| s.cpu_usage_usec) {
        let _ = writeln!(o, "isc_cpu_seconds_total{{isc=\"{n}\"}} {}", c as f64 / 1e6);
    }
    family(&mut o, "isc_memory_bytes", "gauge", "Memory charged to the ISC's cgroup.");
    for (n, m) in cg(|s| s.memory_current) {
        let _ = writeln!(o, "isc_memory_bytes{{isc=\"{n}\"}} {m}");
    }
    family(&mut o, "isc_pids", "gauge", "Tasks in the ISC's cgroup.");
    for (n, p) in cg(|s| s.pids_current) {
        let _ = writeln!(o, "isc_pids{{isc=\"{n}\"}} {p}");
    }
    family(
        &mut o,
        "isc_oom_kills",
        "gauge",
        "Processes of the current run killed by the OOM killer.",
    );
    for u in usage {
        if let Some(e) = &u.limit_events {
            let _ = writeln!(o, "isc_oom_kills{{isc=\"{}\"}} {}", label(&u.name), e.oom_kills);
        }
    }
    family(
        &mut o,
        "isc_network_receive_bytes_total",
        "counter",
        "Bytes the ISC received on its network link (this run).",
    );
    for u in usage {
        if let Some(n) = &u.net {
            let _ = writeln!(
                o,
                "isc_network_receive_bytes_total{{isc=\"{}\"}} {}",
                label(&u.name),
                n.rx_bytes
            );
        }
    }
    family(
        &mut o,
        "isc_network_transmit_bytes_total",
        "counter",
        "Bytes the ISC sent on its network link (this run).",
    );
    for u in usage {
        if let Some(n) = &u.net {
            let _ = writeln!(
                o,
                "isc_network_transmit_bytes_total{{isc=\"{}\"}} {}",
                label(&u.name),
                n.tx_bytes
            );
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
