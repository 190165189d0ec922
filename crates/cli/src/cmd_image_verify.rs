//! `isc image verify`: the full re-hash of stored images, or of a running ISC's live tree, with
//! each result on the audit trail (`image_verify`; `image_integrity_failure` when it drifted).
//!
//! `--all` re-hashes every stored image. `dist/isc-image-verify.timer` runs it daily: the
//! before-start check compares inode facts only, so drift it cannot see (writes that bypass the
//! VFS, a ctime forged by setting the clock back; docs/images.md) is found by this re-hash, also
//! for images no ISC has started since.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use isc_audit::Kind;
use isc_image::{DriftReport, ImageStore, PackedReport};
use serde_json::{json, Value};

use crate::cmd_image::{finish, full_id, print_drift, print_json, spinner};
use crate::launch::Dirs;

/// Paths listed in an audit record of a drifted image; the count of each kind is always whole.
const AUDIT_PATHS: usize = 32;

/// What one verification looks at.
struct Target {
    id: String,
    /// A running ISC's name and its live root (`/proc/<init pid>/root`).
    live: Option<(String, PathBuf)>,
}

impl Target {
    fn what(&self) -> String {
        match &self.live {
            Some((name, root)) => format!("ISC `{name}` through {}", root.display()),
            None => format!("image {}", &self.id[..16.min(self.id.len())]),
        }
    }
}

/// One verification's findings.
struct Outcome {
    target: Target,
    report: DriftReport,
    packed: Option<PackedReport>,
    ms: f64,
}

impl Outcome {
    fn clean(&self) -> bool {
        self.report.is_clean() && self.packed.as_ref().is_none_or(PackedReport::is_clean)
    }

    fn to_json(&self) -> Value {
        let (isc, root) = self.target.live.clone().unzip();
        let r = &self.report;
        json!({
            "id": self.target.id, "isc": isc, "root": root, "clean": self.clean(),
            "added": r.added, "removed": r.removed, "changed": r.changed,
            "skipped_mounts": r.skipped_mounts, "manifest_matches_id": r.manifest_matches_id,
            "packed": self.packed, "ms": self.ms,
        })
    }

    /// The audit record: counts, and the first [`AUDIT_PATHS`] paths that differ.
    fn audit_detail(&self) -> Value {
        let r = &self.report;
        let paths: Vec<&str> = r
            .added
            .iter()
            .chain(&r.removed)
            .map(String::as_str)
            .chain(r.changed.iter().map(|c| c.path.as_str()))
            .take(AUDIT_PATHS)
            .collect();
        json!({
            "image": self.target.id, "live_root": self.target.live.as_ref().map(|l| &l.1),
            "clean": self.clean(), "added": r.added.len(), "removed": r.removed.len(),
            "changed": r.changed.len(), "paths": paths,
            "manifest_matches_id": r.manifest_matches_id,
            "packed_clean": self.packed.as_ref().map(PackedReport::is_clean),
        })
    }

    fn print(&self) {
        print_drift(&self.report);
        if !self.report.manifest_matches_id {
            println!("! manifest.json no longer hashes to the image id {}", self.target.id);
        }
        if let Some(p) = &self.packed {
            if !p.hash_matches {
                println!("! packed file {} no longer has its recorded BLAKE3", p.file.display());
            }
            if let Some(why) = &p.start_check {
                println!("! packed file: {why}");
            }
            if !p.tree.is_clean() {
                println!("packed file {}:", p.file.display());
                print_drift(&p.tree);
            }
        }
        println!("{}: {}", self.target.what(), if self.clean() { "intact" } else { "DRIFT" });
    }
}

/// `isc image verify [ID] [--isc NAME] [--all] [--json]`.
pub fn verify(
    dirs: &Dirs,
    store: &ImageStore,
    id: Option<String>,
    isc: Option<String>,
    all: bool,
    json: bool,
) -> Result<ExitCode> {
    let targets = if all {
        store.list()?.into_iter().map(|s| Target { id: s.id, live: None }).collect()
    } else {
        vec![target(dirs, store, id, isc)?]
    };
    let mut outcomes = Vec::with_capacity(targets.len());
    for target in targets {
        let outcome = verify_one(store, target)?;
        if !json {
            outcome.print();
        }
        outcomes.push(outcome);
    }
    if json {
        let items: Vec<Value> = outcomes.iter().map(Outcome::to_json).collect();
        match (all, items.as_slice()) {
            (false, [one]) => print_json(one)?,
            _ => print_json(&items)?,
        }
    } else if all && outcomes.is_empty() {
        println!("no stored images");
    }
    record(dirs, &outcomes)?;
    let clean = outcomes.iter().all(Outcome::clean);
    Ok(if clean { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

fn target(
    dirs: &Dirs,
    store: &ImageStore,
    id: Option<String>,
    isc: Option<String>,
) -> Result<Target> {
    match (isc, id) {
        (Some(name), id) => {
            let st = isc_engine::state::get(&dirs.state, &name)?;
            let id = match id {
                Some(id) => full_id(store, &id)?,
                None => st.image_id.clone(),
            };
            let root = PathBuf::from(format!("/proc/{}/root", st.init_pid));
            Ok(Target { id, live: Some((name, root)) })
        }
        (None, Some(id)) => Ok(Target { id: full_id(store, &id)?, live: None }),
        (None, None) => bail!(
            "name an image (isc image verify ID), a running ISC (--isc NAME) or every stored image (--all)"
        ),
    }
}

fn verify_one(store: &ImageStore, target: Target) -> Result<Outcome> {
    let started = Instant::now();
    let sp = spinner(&format!("re-hashing {}", target.what()));
    let report = match &target.live {
        Some((name, root)) => store
            .verify_live(&target.id, root)
            .with_context(|| format!("verifying the live tree of ISC `{name}`"))?,
        None => store.verify(&target.id)?,
    };
    let packed = match target.live {
        None => store.verify_packed(&target.id)?,
        Some(_) => None,
    };
    finish(sp);
    Ok(Outcome { target, report, packed, ms: started.elapsed().as_secs_f64() * 1000.0 })
}

/// Puts every result on the audit trail in one commit; the results are printed first, so a
/// trail that cannot take them loses nothing the operator sees, and the exit status says so.
fn record(dirs: &Dirs, outcomes: &[Outcome]) -> Result<()> {
    if outcomes.is_empty() {
        return Ok(());
    }
    let log = crate::hooks_audit::open_for_monitor(dirs)
        .context("the results above are not on the audit trail")?;
    let actor = crate::hooks_audit::caller();
    let records = outcomes.iter().map(|o| {
        let kind = if o.clean() { Kind::ImageVerify } else { Kind::ImageIntegrityFailure };
        (o.target.live.as_ref().map(|l| l.0.clone()), kind, actor, o.audit_detail())
    });
    log.append_many(records).context("the results above are not on the audit trail")?;
    Ok(())
}
