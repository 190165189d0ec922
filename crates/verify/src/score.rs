//! Scoring: systemd-analyze-security arithmetic per principle and overall, labels, gates,
//! threshold and `--policy` overrides.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::catalogue::Principle;
use crate::checks::{CheckResult, State};

/// Errors of the scoring inputs.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("reading the policy file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("policy file {path} is not valid: {detail}; expected {{\"weights\": {{\"P1.1\": {{\"weight\": 2000, \"range\": 10}}}}, \"threshold\": 2.0}}")]
    Parse { path: PathBuf, detail: String },
    #[error(
        "policy file {path}: unknown check id `{id}`; fix: use an id from `isc verify --list`"
    )]
    UnknownCheck { path: PathBuf, id: String },
}

/// Overrides for one check.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Override {
    pub weight: Option<u32>,
    pub range: Option<u32>,
}

/// `--policy FILE`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    #[serde(default)]
    pub weights: BTreeMap<String, Override>,
    pub threshold: Option<f64>,
}

impl Policy {
    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| PolicyError::Read { path: path.into(), source })?;
        let p: Policy = serde_json::from_str(&text)
            .map_err(|e| PolicyError::Parse { path: path.into(), detail: e.to_string() })?;
        if let Some(id) = p.weights.keys().find(|id| crate::catalogue::find(id).is_none()) {
            return Err(PolicyError::UnknownCheck { path: path.into(), id: id.clone() });
        }
        Ok(p)
    }

    /// Applies weight/range overrides; weight 0 turns a check into n/a ("skipped by policy").
    pub fn apply(&self, results: &mut [CheckResult]) {
        for r in results.iter_mut() {
            let Some(o) = self.weights.get(r.id) else { continue };
            if let Some(range) = o.range.filter(|r| *r > 0) {
                r.badness = r.badness / r.range as f64 * range as f64;
                r.range = range;
            }
            if let Some(w) = o.weight {
                r.weight = w;
                if w == 0 {
                    r.state = State::NotApplicable;
                    r.badness = 0.0;
                    r.gate_failed = false;
                    r.na_reason = Some("skipped by policy".into());
                }
            }
        }
    }
}

/// systemd's label for an exposure on the 0.0–10.0 scale.
pub fn label(exposure: f64) -> &'static str {
    let e = (exposure * 10.0).round() as u64;
    match e {
        100.. => "DANGEROUS",
        90..=99 => "UNSAFE",
        75..=89 => "EXPOSED",
        50..=74 => "MEDIUM",
        10..=49 => "OK",
        1..=9 => "SAFE",
        0 => "PERFECT",
    }
}

/// Exposure over `results`: `10 × Σ(w·b/r) / Σw`, rounded up to one decimal as systemd's
/// `DIV_ROUND_UP(badness_sum * 100, weight_sum)` does. `None` when nothing applies.
pub fn exposure<'a>(results: impl Iterator<Item = &'a CheckResult>) -> Option<f64> {
    let (mut bad, mut weight) = (0.0f64, 0.0f64);
    for r in results.filter(|r| r.state != State::NotApplicable && r.weight > 0) {
        bad += r.weight as f64 * r.badness / r.range as f64;
        weight += r.weight as f64;
    }
    (weight > 0.0).then(|| {
        let tenths = ((bad * 100.0 / weight) - 1e-9).ceil();
        if tenths <= 0.0 {
            0.0
        } else {
            tenths / 10.0
        }
    })
}

/// One principle's row.
#[derive(Debug, Clone, Serialize)]
pub struct PrincipleScore {
    pub id: &'static str,
    pub title: &'static str,
    pub exposure: Option<f64>,
    pub label: Option<&'static str>,
    pub passed: usize,
    pub failed: usize,
    pub not_applicable: usize,
    pub gates_failed: Vec<&'static str>,
}

/// The verdict over all results.
#[derive(Debug, Clone, Serialize)]
pub struct Score {
    pub principles: Vec<PrincipleScore>,
    /// Over P1–P9 (the Dock row is reported, not counted).
    pub exposure: f64,
    pub label: &'static str,
    pub threshold: f64,
    pub gates_failed: Vec<&'static str>,
    pub contradictions: Vec<&'static str>,
    pub pass: bool,
}

pub const DEFAULT_THRESHOLD: f64 = 2.0;

pub fn score(results: &[CheckResult], threshold: f64) -> Score {
    let principles = Principle::ALL
        .iter()
        .map(|p| {
            let rs: Vec<&CheckResult> = results.iter().filter(|r| r.principle == *p).collect();
            let e = exposure(rs.iter().copied());
            PrincipleScore {
                id: p.id(),
                title: p.title(),
                exposure: e,
                label: e.map(label),
                passed: rs.iter().filter(|r| r.state == State::Pass).count(),
                failed: rs.iter().filter(|r| r.state == State::Fail).count(),
                not_applicable: rs.iter().filter(|r| r.state == State::NotApplicable).count(),
                gates_failed: rs.iter().filter(|r| r.gate_failed).map(|r| r.id).collect(),
            }
        })
        .collect();
    let overall =
        exposure(results.iter().filter(|r| r.principle != Principle::Dock)).unwrap_or(10.0);
    let gates_failed: Vec<&'static str> =
        results.iter().filter(|r| r.gate_failed).map(|r| r.id).collect();
    Score {
        principles,
        exposure: overall,
        label: label(overall),
        threshold,
        pass: gates_failed.is_empty() && overall <= threshold,
        gates_failed,
        contradictions: results.iter().filter(|r| r.contradiction).map(|r| r.id).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalogue::{find, Class};
    use crate::checks::{result, Outcome};

    #[test]
    fn systemd_arithmetic_and_labels() {
        let rs = vec![
            result(find("P7.1").unwrap(), Outcome::scored(0.0, Class::K, false, vec![])),
            result(find("P7.4").unwrap(), Outcome::scored(1.0, Class::K, false, vec![])),
        ];
        // 2000·0 + 1000·1 over 3000 → 3.33… → rounded up to 3.4
        assert_eq!(exposure(rs.iter()), Some(3.4));
        assert_eq!(label(0.0), "PERFECT");
        assert_eq!(label(0.1), "SAFE");
        assert_eq!(label(1.0), "OK");
        assert_eq!(label(5.0), "MEDIUM");
        assert_eq!(label(7.5), "EXPOSED");
        assert_eq!(label(9.0), "UNSAFE");
        assert_eq!(label(10.0), "DANGEROUS");
        let s = score(&rs, 2.0);
        assert!(!s.pass);
        assert_eq!(s.principles.iter().find(|p| p.id == "P7").unwrap().exposure, Some(3.4));
        assert_eq!(s.principles.iter().find(|p| p.id == "P1").unwrap().exposure, None);
    }

    #[test]
    fn gates_fail_the_verdict_whatever_the_score_and_policy_can_skip() {
        let mut rs = vec![
            result(find("P7.1").unwrap(), Outcome::scored(0.0, Class::K, false, vec![])),
            result(find("P1.7").unwrap(), Outcome::scored(1.0, Class::A, false, vec![])),
        ];
        let s = score(&rs, 10.0);
        assert_eq!(s.exposure, 0.0, "P1.7 has no weight");
        assert!(!s.pass && s.gates_failed == vec!["P1.7"]);
        let p: Policy = serde_json::from_str(r#"{"weights": {"P1.7": {"weight": 0}}}"#).unwrap();
        p.apply(&mut rs);
        assert!(score(&rs, 10.0).pass);
    }
}
