//! Evaluating the catalogue against gathered [`Evidence`]: one function per check returns an
//! [`Outcome`]; [`evaluate`] turns outcomes into [`CheckResult`]s, applying the catalogue's
//! rules: a CONTRADICTION (config good, kernel or probe bad) takes the full range, a result
//! backed only by C gets at most half credit, unsupported checks are `n/a`.

use serde::Serialize;

use isc_engine::probe::ProbeOutcome;

use crate::catalogue::{CheckDef, Class, Principle, CATALOGUE};
use crate::gather::Evidence;

/// What one check concluded before scoring rules are applied.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Evaluated: `frac` is badness / range (0 = good, 1 = worst).
    Scored {
        frac: f64,
        /// Strongest evidence class that decided the result.
        class: Class,
        /// The declared configuration says this should be good.
        declared_good: bool,
        /// For partial gates (P1.4, P5.6): does the failure hit the gated part? `None`: any
        /// badness fails the gate.
        gate_hit: Option<bool>,
        evidence: Vec<String>,
    },
    /// Not applicable to this target, with the reason.
    NotApplicable(String),
}

impl Outcome {
    pub fn scored(frac: f64, class: Class, declared_good: bool, evidence: Vec<String>) -> Outcome {
        Outcome::Scored {
            frac: frac.clamp(0.0, 1.0),
            class,
            declared_good,
            gate_hit: None,
            evidence,
        }
    }
    pub fn na(reason: impl Into<String>) -> Outcome {
        Outcome::NotApplicable(reason.into())
    }
}

/// The result state of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Pass,
    Fail,
    NotApplicable,
}

/// One check's result, ready for scoring and reports.
#[derive(Debug, Clone, Serialize)]
pub struct CheckResult {
    pub id: &'static str,
    pub principle: Principle,
    pub title: &'static str,
    pub weight: u32,
    pub range: u32,
    pub state: State,
    /// 0..=range.
    pub badness: f64,
    pub class: Option<Class>,
    pub contradiction: bool,
    pub gate: bool,
    pub gate_failed: bool,
    pub evidence: Vec<String>,
    pub fix: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub na_reason: Option<String>,
}

/// Errno name for evidence lines.
pub fn errno_name(e: i32) -> String {
    let n = match e {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EACCES => "EACCES",
        libc::EROFS => "EROFS",
        libc::ENOSYS => "ENOSYS",
        libc::EINVAL => "EINVAL",
        libc::EFAULT => "EFAULT",
        libc::EBADF => "EBADF",
        libc::ESRCH => "ESRCH",
        libc::ENODEV => "ENODEV",
        libc::EAFNOSUPPORT => "EAFNOSUPPORT",
        libc::ENETUNREACH => "ENETUNREACH",
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::EADDRINUSE => "EADDRINUSE",
        libc::EEXIST => "EEXIST",
        libc::ENOTDIR => "ENOTDIR",
        libc::EPROTONOSUPPORT => "EPROTONOSUPPORT",
        libc::ESOCKTNOSUPPORT => "ESOCKTNOSUPPORT",
        libc::EHOSTUNREACH => "EHOSTUNREACH",
        libc::EADDRNOTAVAIL => "EADDRNOTAVAIL",
        _ => return format!("errno {e}"),
    };
    n.to_string()
}

/// How one probe ended, for evidence.
pub fn describe(o: &ProbeOutcome) -> String {
    if o.ok {
        format!("{}: succeeded", o.name)
    } else if let Some(sig) = o.value.get("signal").and_then(|s| s.as_i64()) {
        format!("{}: killed by signal {sig}", o.name)
    } else {
        format!("{}: {}", o.name, o.errno.map(errno_name).unwrap_or_else(|| "failed".into()))
    }
}

/// Probe lookups with the errno attribution rules of catalogue §2.
pub struct Probes<'a>(pub &'a Evidence);

impl Probes<'_> {
    pub fn get(&self, name: &str) -> Option<&ProbeOutcome> {
        self.0.probes.get(name)
    }
    pub fn available(&self) -> bool {
        !self.0.probes.is_empty()
    }
    /// The attempt succeeded.
    pub fn succeeded(&self, name: &str) -> Option<bool> {
        self.get(name).map(|o| o.ok)
    }
    /// A syscall probe got past the seccomp filter and capability checks: it succeeded or the
    /// kernel rejected its (deliberately invalid) arguments. EPERM/ENOSYS/EACCES or a signal
    /// mean blocked.
    pub fn let_through(&self, name: &str) -> Option<bool> {
        self.get(name).map(|o| {
            o.ok || (o.value.get("signal").is_none()
                && !matches!(
                    o.errno,
                    Some(libc::EPERM) | Some(libc::ENOSYS) | Some(libc::EACCES) | None
                ))
        })
    }
}

/// Builds the not-applicable outcome for an A check when probes could not run.
pub fn no_probes(ev: &Evidence) -> Outcome {
    if !ev.is_isc {
        Outcome::na("active probes need the ISC's PID 1 (foreign process: K checks only)")
    } else {
        // Fail closed: a live ISC whose probes cannot run gives no evidence that the protection
        // holds, so the check counts as failed, never as "not applicable".
        Outcome::scored(
            1.0,
            Class::A,
            false,
            vec![format!(
                "probes did not run: {}",
                ev.probe_error.clone().unwrap_or_else(|| "no answer".into())
            )],
        )
    }
}

fn dispatch(def: &CheckDef, ev: &Evidence) -> Outcome {
    if !def.supported {
        return Outcome::na("not supported yet");
    }
    if !ev.init.readable {
        return Outcome::na("the process is gone or /proc is not readable");
    }
    crate::checks_p1_p4::evaluate(def.id, ev)
        .or_else(|| crate::checks_p5_p9::evaluate(def.id, ev))
        .unwrap_or_else(|| Outcome::na("not supported yet"))
}

/// Evaluates every check of the catalogue. Contradictions first, then catalogue order.
pub fn evaluate(ev: &Evidence) -> Vec<CheckResult> {
    let mut out: Vec<CheckResult> =
        CATALOGUE.iter().map(|def| result(def, dispatch(def, ev))).collect();
    out.sort_by_key(|r| !r.contradiction);
    out
}

/// Applies the scoring rules to one outcome.
pub fn result(def: &'static CheckDef, o: Outcome) -> CheckResult {
    let mut r = CheckResult {
        id: def.id,
        principle: def.principle,
        title: def.title,
        weight: def.weight,
        range: def.range,
        state: State::NotApplicable,
        badness: 0.0,
        class: None,
        contradiction: false,
        gate: def.gate,
        gate_failed: false,
        evidence: vec![],
        fix: def.fix,
        na_reason: None,
    };
    match o {
        Outcome::NotApplicable(reason) => r.na_reason = Some(reason),
        Outcome::Scored { mut frac, class, declared_good, gate_hit, evidence } => {
            if declared_good && frac > 0.0 && class != Class::C {
                r.contradiction = true;
                frac = 1.0;
            }
            if class == Class::C {
                frac = frac.max(0.5);
            }
            r.badness = frac * def.range as f64;
            r.state = if frac > 0.0 { State::Fail } else { State::Pass };
            r.gate_failed = def.gate && frac > 0.0 && gate_hit.unwrap_or(true);
            r.class = Some(class);
            r.evidence = evidence;
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalogue::find;

    #[test]
    fn contradiction_takes_full_range_and_c_only_gets_half_credit() {
        let def = find("P7.3").unwrap();
        let r = result(def, Outcome::scored(0.2, Class::K, true, vec!["CapEff: SYS_ADMIN".into()]));
        assert!(r.contradiction && r.badness == 10.0 && r.state == State::Fail);
        let r = result(def, Outcome::scored(0.2, Class::K, false, vec![]));
        assert!(!r.contradiction && (r.badness - 2.0).abs() < 1e-9);
        let r = result(def, Outcome::scored(0.0, Class::C, true, vec![]));
        assert_eq!(r.badness, 5.0);
        let r = result(find("P5.2").unwrap(), Outcome::scored(0.1, Class::A, false, vec![]));
        assert!(r.gate_failed);
        let r = result(find("P1.3").unwrap(), Outcome::na("x"));
        assert_eq!(r.state, State::NotApplicable);
        assert!(!r.gate_failed && r.badness == 0.0);
    }

    #[test]
    fn unsupported_checks_are_never_pass() {
        let ev = Evidence::default();
        for r in evaluate(&ev) {
            let def = find(r.id).unwrap();
            if !def.supported {
                assert_eq!(r.state, State::NotApplicable, "{}", r.id);
                assert_eq!(r.na_reason.as_deref(), Some("not supported yet"));
            }
        }
    }
}
