//! The Dock's own processes: the daemon (`isc dock serve`) and the detached monitor it starts
//! for each ISC (`isc dock monitor`). The client verbs are in `cmd_dock`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use isc_dock::{DockConfig, ExitInfo, MonitorRequest};
use isc_manifest::Manifest;

use crate::hooks_audit;
use crate::launch::{self, Dirs};

pub(crate) fn serve(dirs: &Dirs, config: Option<PathBuf>) -> Result<ExitCode> {
    let path = config.unwrap_or_else(|| dirs.root.join("dock.toml"));
    let cfg = DockConfig::load(&path)?;
    // The Dock owns the network boundary: rebuild it from the running ISCs before serving
    // (removes what crashed monitors left and repairs drift).
    if let Some(msg) = crate::hooks_net::reconcile_all(dirs, false)? {
        tracing::info!("{msg}");
    }
    let mut audit_cfg = isc_audit::AuditConfig::new(hooks_audit::keys_dir(dirs));
    audit_cfg.durability = isc_audit::Durability::Durable;
    let audit_dir = hooks_audit::audit_dir(dirs);
    let (audit, _) = isc_audit::AuditLog::open(&audit_dir, audit_cfg)
        .with_context(|| format!("opening the audit log {}", audit_dir.display()))?;
    let exe = std::env::current_exe().context("locating the isc binary to start monitors")?;
    let launcher = isc_dock::process::ExecLauncher {
        exe,
        args: vec![
            "--root".into(),
            dirs.root.clone().into(),
            "--state".into(),
            dirs.state.clone().into(),
            "dock".into(),
            "monitor".into(),
        ],
    };
    let opts = isc_dock::ServeOptions {
        dock: isc_dock::DockOptions {
            root: dirs.root.clone(),
            state: dirs.state.clone(),
            cgroup_scope: launch::cgroup_scope(&dirs.state),
            config: cfg,
        },
        launcher: Box::new(launcher),
        audit: Some(audit),
    };
    isc_dock::serve_blocking(opts)?;
    Ok(ExitCode::SUCCESS)
}

/// The detached monitor: runs one ISC like `isc run`, with output to the Dock's log files, and
/// leaves its exit record where the Dock (or a restarted Dock) reads it.
pub(crate) fn monitor(dirs: &Dirs, request: &str) -> Result<ExitCode> {
    let req: MonitorRequest =
        serde_json::from_str(request).context("parsing the monitor request from the Dock")?;
    // Made while the manifest loads and the audit trail opens (see isc_engine::netns).
    let netns = std::sync::Arc::new(isc_engine::netns::PreparedNetns::spawn());
    let result = (|| {
        let manifest = Manifest::load(&req.manifest)?;
        if manifest.name != req.name {
            bail!(
                "the manifest {} names `{}`, not `{}`",
                req.manifest.display(),
                manifest.name,
                req.name
            );
        }
        let caller = crate::monitor_resume::Caller::Dock { request: request.to_string() };
        let (record, _) = crate::run_manifest(&manifest, &[], dirs, &caller, &|o| {
            o.output = isc_engine::Output::LogDir {
                dir: req.log_dir.clone(),
                max_bytes: req.log_max_bytes,
                keep: req.log_keep,
            };
            o.uid_base = req.uid_base;
            o.uid_slots = req.uid_slots;
            o.netns = Some(std::sync::Arc::clone(&netns));
        })?;
        Ok(record)
    })();
    report_exit(&req, result)
}

/// Leaves the run's exit record where the Dock reads it; the exit status is the service's.
pub(crate) fn report_exit(
    req: &MonitorRequest,
    result: Result<isc_engine::ExitRecord>,
) -> Result<ExitCode> {
    let ended_ms = isc_dock::records::now_ms();
    let info = match result {
        Ok(r) => ExitInfo {
            run_id: req.run_id,
            code: r.code,
            signal: r.signal,
            status: r.status,
            run_ms: r.run_ms,
            ended_ms,
            reason: r.reason,
            start_failed: false,
        },
        Err(e) => {
            eprintln!("isc: `{}`: {e:#}", req.name);
            ExitInfo {
                run_id: req.run_id,
                code: None,
                signal: None,
                status: 125,
                run_ms: 0,
                ended_ms,
                reason: Some(format!("{e:#}")),
                start_failed: true,
            }
        }
    };
    info.write(&req.exit_file)?;
    Ok(ExitCode::from(info.status.clamp(0, 255) as u8))
}
