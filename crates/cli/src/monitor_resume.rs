//! The CLI side of a hibernating monitor (`isc_engine::monitor_hibernate`, docs/engine.md).
//!
//! `run_manifest`'s start hooks say whether they can be kept across the monitor's execs and
//! what to keep; [`Frame`] adds what only `run_manifest`'s own frame holds (the image lease
//! and who started the run). A woken isc lands in [`resume`]: it rebuilds the same hooks from
//! the saved state — the audit session on its kept sockets, the cgroup by its name, the network
//! from its kept lease (or, without one, from the manifest) with its egress DNS refresher from
//! the refresher's saved state, the vault hooks from their kept volumes — lets the engine go on
//! supervising, and ends the run exactly as `isc run` or the
//! Dock's `isc dock monitor` would have.

use std::os::fd::{IntoRawFd, RawFd};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use isc_engine::monitor_hibernate::{adopt_fd, SavedMonitor, Suspended};
use isc_engine::StartHooks;
use isc_manifest::Manifest;
use serde::{Deserialize, Serialize};

use crate::hooks_audit::AuditSession;
use crate::hooks_image::ImageHold;
use crate::launch::{self, CgroupHooks, Dirs};

/// Who started the run: decides how a woken monitor reports its end.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum Caller {
    /// `isc run` in the foreground (`--json` or not).
    Run { json: bool },
    /// The Dock's detached monitor, with the Dock's request.
    Dock { request: String },
}

/// `run_manifest`'s own part of the state: the image lease and the caller.
pub(crate) struct Frame<'a> {
    image: &'a mut ImageHold,
    caller: &'a Caller,
}

#[derive(Serialize, Deserialize)]
struct KeptFrame {
    caller: Caller,
    /// The leased image's id and the lease's descriptor.
    lease: Option<(String, RawFd)>,
}

impl<'a> Frame<'a> {
    pub(crate) fn new(image: &'a mut ImageHold, caller: &'a Caller) -> Frame<'a> {
        Frame { image, caller }
    }
}

impl StartHooks for Frame<'_> {
    fn before_release(&mut self, _: i32) -> Result<(), (&'static str, String)> {
        Ok(())
    }

    fn can_hibernate(&self) -> bool {
        self.image.can_hibernate()
    }

    fn suspend(&mut self) -> Suspended {
        let lease = self.image.keep().map(|(id, fd)| (id, fd.into_raw_fd()));
        let keep = lease.iter().map(|(_, fd)| *fd).collect();
        let kept = KeptFrame { caller: self.caller.clone(), lease };
        Suspended {
            state: serde_json::to_value(kept).expect("the frame serializes"),
            keep,
            ..Suspended::default()
        }
    }
}

/// The saved hook states, in `run_manifest`'s order: the audit session, then its chain.
fn split_hooks(saved: &SavedMonitor) -> Result<[serde_json::Value; 5]> {
    let parts = |v: &serde_json::Value, n: usize| -> Result<Vec<serde_json::Value>> {
        match v.as_array() {
            Some(a) if a.len() == n => Ok(a.clone()),
            _ => bail!(
                "the saved hooks are not the {n} this isc keeps (another isc version hibernated?)"
            ),
        }
    };
    let top = parts(&saved.hooks, 2)?;
    let chain = parts(&top[1], 4)?;
    let [cgroup, vault, net, frame]: [serde_json::Value; 4] =
        chain.try_into().expect("four checked above");
    Ok([top[0].clone(), cgroup, vault, net, frame])
}

/// A woken monitor: rebuilds `run_manifest`'s hooks, supervises on, and ends the run.
pub(crate) fn resume(saved: SavedMonitor, dirs: &Dirs) -> Result<ExitCode> {
    let name = saved.spec.name.clone();
    let woken = (|| {
        let [session, cgroup, vault, net, frame] = split_hooks(&saved)?;
        let manifest: Manifest = serde_json::from_value(
            saved.opts.manifest.clone().context("the saved state has no manifest")?,
        )
        .context("the saved manifest")?;
        let frame: KeptFrame = serde_json::from_value(frame).context("the saved frame")?;
        let lease = match frame.lease {
            Some((id, fd)) => {
                // SAFETY: the saved state names this descriptor once, as the image lease's.
                Some((id, unsafe { adopt_fd(fd) }.context("the kept image lease")?))
            }
            None => None,
        };
        let image = ImageHold::adopt(lease);
        let audit = AuditSession::resume(dirs, session)?;
        let cgroup = CgroupHooks::resume(&name, launch::limits(&manifest), &dirs.state, cgroup)?;
        // The kept volumes adopted (never reopened) and the secrets' mount point (they were
        // delivered at the start).
        let vault = crate::hooks_vault::VaultHooks::resume(
            &manifest,
            dirs,
            &saved.spec,
            audit.log(),
            vault,
        )?;
        // A network keeps its lease (null: none to keep, as without `[network]`).
        let net = if net.is_null() {
            crate::hooks_net::NetHooks::prepare(&manifest, dirs)?
        } else {
            crate::hooks_net::NetHooks::resume(&manifest, dirs, net)?
        };
        Ok::<_, anyhow::Error>((frame.caller, image, audit, cgroup, vault, net))
    })();
    let (caller, mut image, mut audit, mut cgroup, mut vault, mut net) =
        woken.with_context(|| {
            format!("resuming the hibernated monitor of ISC `{name}` (its ISC ends with it)")
        })?;
    tracing::debug!(isc = %name, "the monitor resumed");
    let image_id = saved.spec.image_id.clone();
    let result = {
        let mut frame = Frame::new(&mut image, &caller);
        let mut chain = isc_engine::HookChain(vec![&mut cgroup, &mut vault, &mut net, &mut frame]);
        isc_engine::resume(saved, &mut audit.hooks(&mut chain))
    };
    let record = crate::finish_run(audit, cgroup, vault, net, result, &name);
    drop(image);
    match caller {
        Caller::Run { json } => crate::report_run(&record?, image_id, json),
        Caller::Dock { request } => {
            let req: isc_dock::MonitorRequest =
                serde_json::from_str(&request).context("the saved Dock request")?;
            crate::dock_daemon::report_exit(&req, record)
        }
    }
}
