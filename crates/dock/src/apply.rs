//! Desired state (`isc apply DIR`, `POST /v1/apply`): the client sends every manifest of a
//! directory; the Dock makes its set of ISCs match.
//!
//! * declared and not on the Dock: created and started;
//! * declared, on the Dock, with another canonical manifest hash (or another health check):
//!   stopped and started again with the new manifest (same name, record and logs kept);
//! * declared, same hash, but not running (exited, failed, crash-loop, stopped): started;
//! * declared, same hash, starting/running/back-off: left alone;
//! * on the Dock but not declared: stopped and removed.
//!
//! Every manifest is parsed before anything changes, so a typo in one file changes nothing.
//! Removals go first (they free memory and CPU for the resource guard), then starts and
//! replacements run concurrently. The report lists what happened to each name.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;

use isc_manifest::Manifest;
use serde::{Deserialize, Serialize};

use crate::health::HealthCheck;
use crate::supervisor::{parse_manifest, Dock, DockError};

/// One declared ISC, as the client sends it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Declared {
    /// The manifest's text.
    pub manifest: String,
    /// Its path on the client (base of relative image paths; used in messages).
    pub origin: PathBuf,
    /// The Dock's health check of it.
    #[serde(default)]
    pub health: Option<HealthCheck>,
}

/// What [`Dock::apply`] did, by ISC name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyReport {
    pub created: Vec<String>,
    pub replaced: Vec<String>,
    pub started: Vec<String>,
    pub unchanged: Vec<String>,
    pub removed: Vec<String>,
    /// Names whose action failed, with the reason; the other actions still happened.
    pub failed: Vec<(String, String)>,
}

enum Action {
    Create,
    Replace,
    Start,
}

impl Dock {
    /// Makes the Dock's ISCs match `declared` (see the module documentation).
    pub async fn apply(
        self: &Arc<Self>,
        declared: Vec<Declared>,
    ) -> Result<ApplyReport, DockError> {
        let mut parsed: Vec<(Manifest, Option<HealthCheck>)> = vec![];
        let mut errors = vec![];
        let mut names = BTreeSet::new();
        for d in declared {
            match parse_manifest(&d.manifest, &d.origin, d.health.as_ref()) {
                Ok(m) if !names.insert(m.name.clone()) => errors.push(format!(
                    "{}: the name `{}` is declared twice",
                    d.origin.display(),
                    m.name
                )),
                Ok(m) => parsed.push((m, d.health)),
                Err(e) => errors.push(e.to_string()),
            }
        }
        // The set is complete: an `allow_from` name outside it can only be a mistake (it would
        // silently let nothing in), so it is refused like a malformed manifest.
        for (m, _) in &parsed {
            for peer in m.network.iter().flat_map(|n| &n.allow_from) {
                if !names.contains(peer) {
                    errors.push(format!(
                        "ISC `{}`: allow_from names `{peer}`, which this set does not declare; fix: add its manifest or correct the name",
                        m.name
                    ));
                }
            }
        }
        if !errors.is_empty() {
            return Err(DockError::BadRequest(format!(
                "nothing was changed: {}",
                errors.join("; ")
            )));
        }

        let mut report = ApplyReport::default();
        let current = self.list();
        let gone: Vec<String> =
            current.iter().filter(|r| !names.contains(&r.name)).map(|r| r.name.clone()).collect();
        let removals = gone.into_iter().map(|name| {
            let dock = Arc::clone(self);
            tokio::spawn(async move {
                let r = dock.remove(&name).await;
                (name, r)
            })
        });
        for h in removals.collect::<Vec<_>>() {
            match h.await {
                Ok((name, Ok(()))) => report.removed.push(name),
                Ok((name, Err(e))) => report.failed.push((name, e.to_string())),
                Err(e) => return Err(DockError::Internal(format!("apply task: {e}"))),
            }
        }

        let mut tasks = vec![];
        for (manifest, health) in parsed {
            let name = manifest.name.clone();
            let action = match current.iter().find(|r| r.name == name) {
                None => Action::Create,
                Some(r) if r.manifest_hash != manifest.canonical_hash() || r.health != health => {
                    Action::Replace
                }
                Some(r) if !r.status.is_active() => Action::Start,
                Some(_) => {
                    report.unchanged.push(name);
                    continue;
                }
            };
            let dock = Arc::clone(self);
            tasks.push(tokio::spawn(async move {
                let r = match action {
                    Action::Create => dock.up_parsed(&manifest, health).await,
                    Action::Replace => dock.replace(&manifest, health).await,
                    Action::Start => dock.start(&manifest.name).await,
                };
                (name, action, r)
            }));
        }
        for t in tasks {
            let (name, action, r) =
                t.await.map_err(|e| DockError::Internal(format!("apply task: {e}")))?;
            match (r, action) {
                (Err(e), _) => report.failed.push((name, e.to_string())),
                (Ok(_), Action::Create) => report.created.push(name),
                (Ok(_), Action::Replace) => report.replaced.push(name),
                (Ok(_), Action::Start) => report.started.push(name),
            }
        }
        for list in [
            &mut report.created,
            &mut report.replaced,
            &mut report.started,
            &mut report.unchanged,
            &mut report.removed,
        ] {
            list.sort();
        }
        report.failed.sort();
        Ok(report)
    }
}
