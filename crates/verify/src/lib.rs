//! isc-verify: the ISC security metrics, proved on the live container.
//!
//! The catalogue ([`catalogue`]) lists every check of VERIFY-CATALOGUE.md; [`gather`] collects
//! K evidence from /proc and cgroupfs, C evidence from the manifest published in the ISC's
//! state, and A evidence from probes forked by the ISC's PID 1 inside its live confinement;
//! [`checks`] evaluates, [`score`] applies systemd-analyze-security arithmetic and gates,
//! [`report`] renders, [`sign`] signs and checks reports.

pub mod catalogue;
pub mod checks;
mod checks_p1_p4;
mod checks_p5_p9;
pub mod gather;
pub mod procfs;
pub mod report;
pub mod score;
pub mod sign;

use std::time::{Instant, SystemTime, UNIX_EPOCH};

pub use catalogue::{CheckDef, Class, Principle, CATALOGUE};
pub use checks::{CheckResult, State};
pub use gather::{ProbeTransport, Target};
pub use report::{Report, Subject};
pub use score::{Policy, Score, DEFAULT_THRESHOLD};

/// Verifies `target`: gathers evidence (probes through `transport` for ISCs), evaluates every
/// check, applies `policy`, scores against `threshold`.
pub fn verify(
    target: &Target,
    transport: Option<&dyn ProbeTransport>,
    policy: &Policy,
    threshold: f64,
) -> Report {
    let t0 = Instant::now();
    let ev = gather::gather(target, transport);
    let mut results = checks::evaluate(&ev);
    policy.apply(&mut results);
    let threshold = policy.threshold.unwrap_or(threshold);
    let score = score::score(&results, threshold);
    let subject = match target {
        Target::Isc { state, .. } => Subject {
            kind: "isc",
            name: state.name.clone(),
            pid: state.init_pid,
            image_id: Some(state.image_id.clone()),
            spec_hash: Some(state.spec_hash.clone()),
            manifest_hash: ev.manifest.as_ref().map(|m| m.canonical_hash()),
        },
        Target::Pid { pid, .. } => Subject {
            kind: "pid",
            name: ev.name.clone(),
            pid: *pid,
            image_id: None,
            spec_hash: None,
            manifest_hash: None,
        },
    };
    Report {
        tool: "isc verify",
        version: env!("CARGO_PKG_VERSION"),
        subject,
        time_unix_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0),
        duration_ms: t0.elapsed().as_secs_f64() * 1000.0,
        score,
        results,
    }
}
