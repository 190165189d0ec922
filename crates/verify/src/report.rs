//! The report: what was verified, every result, the score; rendered as a colored table, JSON
//! or SARIF 2.1.0.

use serde::Serialize;
use serde_json::{json, Value};

use crate::catalogue::{find, Principle};
use crate::checks::{CheckResult, State};
use crate::score::Score;

/// What was verified.
#[derive(Debug, Clone, Serialize)]
pub struct Subject {
    /// `isc` or `pid`.
    pub kind: &'static str,
    pub name: String,
    pub pid: i32,
    pub image_id: Option<String>,
    pub spec_hash: Option<String>,
    pub manifest_hash: Option<String>,
}

/// One verification.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub tool: &'static str,
    pub version: &'static str,
    pub subject: Subject,
    pub time_unix_ms: u128,
    pub duration_ms: f64,
    pub score: Score,
    pub results: Vec<CheckResult>,
}

impl Report {
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).expect("report serializes")
    }
}

struct Paint(bool);

impl Paint {
    fn c(&self, code: &str, s: &str) -> String {
        if self.0 {
            format!("\x1b[{code}m{s}\x1b[0m")
        } else {
            s.to_string()
        }
    }
    fn label(&self, l: &str) -> String {
        let code = match l {
            "DANGEROUS" | "UNSAFE" => "1;31",
            "EXPOSED" => "1;33",
            "MEDIUM" => "33",
            _ => "32",
        };
        self.c(code, l)
    }
}

/// The human-readable table.
pub fn table(r: &Report, color: bool) -> String {
    let p = Paint(color);
    let mut s = format!(
        "isc verify: {} `{}` (pid {}){}\n\n",
        r.subject.kind,
        r.subject.name,
        r.subject.pid,
        r.subject
            .image_id
            .as_ref()
            .map(|i| format!(", image {}", &i[..i.len().min(16)]))
            .unwrap_or_default()
    );
    s.push_str(&format!(
        "{:<5} {:<42} {:>8}  {:<10} {:>4} {:>4} {:>4}  GATES\n",
        "", "PRINCIPLE", "EXPOSURE", "", "PASS", "FAIL", "N/A"
    ));
    for ps in &r.score.principles {
        let (e, l) = match (ps.exposure, ps.label) {
            (Some(e), Some(l)) => (format!("{e:.1}"), p.label(l)),
            _ => ("-".into(), "n/a".into()),
        };
        let pad = 10usize.saturating_sub(ps.label.map(str::len).unwrap_or(3));
        s.push_str(&format!(
            "{:<5} {:<42} {:>8}  {}{} {:>4} {:>4} {:>4}  {}\n",
            ps.id,
            ps.title,
            e,
            l,
            " ".repeat(pad),
            ps.passed,
            ps.failed,
            ps.not_applicable,
            if ps.gates_failed.is_empty() {
                String::new()
            } else {
                p.c("1;31", &ps.gates_failed.join(","))
            }
        ));
    }
    let failing: Vec<&CheckResult> = r.results.iter().filter(|c| c.state == State::Fail).collect();
    if !failing.is_empty() {
        s.push_str("\nFailing checks (contradictions first):\n");
        for c in failing {
            let mut tags = vec![];
            if c.contradiction {
                tags.push(p.c("1;31", "CONTRADICTION"));
            }
            if c.gate_failed {
                tags.push(p.c("1;31", "GATE"));
            }
            s.push_str(&format!(
                "  {:<5} {} [{}] badness {:.1}/{} {}\n",
                c.id,
                c.title,
                c.class.map(|x| x.as_str()).unwrap_or("-"),
                c.badness,
                c.range,
                tags.join(" ")
            ));
            for e in c.evidence.iter().take(6) {
                s.push_str(&format!("        {e}\n"));
            }
            s.push_str(&format!("        fix: {}\n", c.fix));
        }
    }
    let na = r.results.iter().filter(|c| c.state == State::NotApplicable).count();
    s.push_str(&format!(
        "\nOverall exposure {:.1} {} (threshold {:.1}); {} checks n/a; {}: {}\n",
        r.score.exposure,
        p.label(r.score.label),
        r.score.threshold,
        na,
        if r.score.gates_failed.is_empty() {
            "gates ok".to_string()
        } else {
            format!("gates failed {}", r.score.gates_failed.join(","))
        },
        if r.score.pass { p.c("1;32", "PASS") } else { p.c("1;31", "FAIL") }
    ));
    s
}

/// SARIF 2.1.0 for CI code scanning: one rule per catalogue check, one result per failing
/// check (`error` for gates and contradictions, `warning` otherwise).
pub fn sarif(r: &Report) -> Value {
    let rules: Vec<Value> = crate::catalogue::CATALOGUE
        .iter()
        .map(|c| {
            json!({
                "id": c.id,
                "name": c.title,
                "shortDescription": {"text": format!("{} {}", c.id, c.title)},
                "fullDescription": {"text": c.rationale},
                "help": {"text": format!("{} Fix: {}", c.probe, c.fix)},
                "properties": {"principle": c.principle.id(), "weight": c.weight, "range": c.range, "gate": c.gate, "anchor": c.anchor},
            })
        })
        .collect();
    let results: Vec<Value> = r
        .results
        .iter()
        .filter(|c| c.state == State::Fail)
        .map(|c| {
            let level = if c.gate_failed || c.contradiction { "error" } else { "warning" };
            json!({
                "ruleId": c.id,
                "level": level,
                "message": {"text": format!("{}{}: {}", if c.contradiction {"CONTRADICTION: "} else {""}, c.title, c.evidence.join("; "))},
                "locations": [{"physicalLocation": {"artifactLocation": {"uri": format!("isc://{}/{}", r.subject.kind, r.subject.name)}}}],
                "properties": {"badness": c.badness, "range": c.range, "class": c.class.map(|x| x.as_str())},
            })
        })
        .collect();
    json!({
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {"name": "isc verify", "version": r.version, "informationUri": "https://github.com/isc/isc/blob/main/docs/verify.md", "rules": rules}},
            "results": results,
            "properties": {"exposure": r.score.exposure, "label": r.score.label, "pass": r.score.pass, "gatesFailed": r.score.gates_failed},
        }]
    })
}

/// Principle of a check id (for callers grouping results).
pub fn principle_of(id: &str) -> Option<Principle> {
    find(id).map(|c| c.principle)
}
