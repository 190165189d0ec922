//! `isc verify`: score a running ISC (or any process with `--pid`) against the check
//! catalogue, with active probes forked by the ISC's PID 1; print a table, JSON or SARIF;
//! sign reports and check signed ones.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use isc_engine::probe::ProbeOutcome;
use isc_engine::state::{self, ControlRequest, ControlResponse};
use isc_verify::{Policy, ProbeTransport, Target};

use crate::launch::Dirs;

#[derive(Args)]
pub struct VerifyArgs {
    /// The running ISC to verify.
    name: Option<String>,
    /// Verify any process on the host instead (kernel-state checks only; weaker evidence).
    #[arg(long, conflicts_with = "name")]
    pid: Option<i32>,
    /// Print the check catalogue.
    #[arg(long)]
    list: bool,
    /// Print the catalogue as the Markdown reference page (docs/verify.md).
    #[arg(long, hide = true)]
    list_markdown: bool,
    /// Print the report as JSON.
    #[arg(long, conflicts_with = "sarif")]
    json: bool,
    /// Print the report as SARIF 2.1.0 (CI code scanning).
    #[arg(long)]
    sarif: bool,
    /// Highest overall exposure (0.0–10.0) that still passes.
    #[arg(long, default_value_t = isc_verify::DEFAULT_THRESHOLD)]
    threshold: f64,
    /// JSON overrides of weight/range per check id (weight 0 skips a check).
    #[arg(long)]
    policy: Option<PathBuf>,
    /// Also write a signed report (Ed25519, key <root>/keys/verify.key) to FILE.
    #[arg(long)]
    sign: Option<PathBuf>,
    /// Check a signed report and print its verdict.
    #[arg(long, conflicts_with_all = ["name", "pid"])]
    check_report: Option<PathBuf>,
    /// Public key file to trust for --check-report (default <root>/keys/verify.pub).
    #[arg(long, requires = "check_report")]
    key: Option<PathBuf>,
}

/// Probes through the monitor's control socket; PID 1 forks one probe child per name.
struct ControlSocket<'a> {
    dirs: &'a Dirs,
    name: &'a str,
}

impl ProbeTransport for ControlSocket<'_> {
    fn run(&self, names: &[String]) -> Result<Vec<ProbeOutcome>, String> {
        let req = ControlRequest::Probe { names: names.to_vec() };
        // Generous: the battery's network probes wait up to 2 s each, and on a loaded host many
        // probe children compete; a timeout here fails the probe checks (fail closed).
        match state::request(&self.dirs.state, self.name, &req, Duration::from_secs(30)) {
            Ok(ControlResponse::Probes { outcomes }) => Ok(outcomes),
            Ok(ControlResponse::Error { message }) => Err(message),
            Ok(other) => Err(format!("unexpected answer {other:?}")),
            Err(e) => Err(e.to_string()),
        }
    }
}

fn cgroup_dirs(dirs: &Dirs, name: Option<&str>, pid: i32) -> Vec<PathBuf> {
    if let Some(name) = name {
        let opened = isc_cgroup::Layout::detect().ok().and_then(|l| {
            isc_cgroup::open(&l, None, &crate::launch::cgroup_name(&dirs.state, name)).ok()
        });
        if let Some(cg) = opened {
            return cg.paths();
        }
    }
    // A foreign process: its cgroup per hierarchy from /proc/PID/cgroup.
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_, ctrls, path) = (f.next()?, f.next()?, f.next()?);
            let base = if ctrls.is_empty() {
                if std::path::Path::new("/sys/fs/cgroup/unified").exists() {
                    PathBuf::from("/sys/fs/cgroup/unified")
                } else {
                    PathBuf::from("/sys/fs/cgroup")
                }
            } else {
                PathBuf::from("/sys/fs/cgroup").join(ctrls.trim_start_matches("name="))
            };
            Some(base.join(path.trim_start_matches('/')))
        })
        .filter(|p| p.is_dir())
        .collect()
}

pub fn dispatch(dirs: &Dirs, args: VerifyArgs) -> Result<ExitCode> {
    if args.list {
        print!("{}", isc_verify::catalogue::list_text());
        return Ok(ExitCode::SUCCESS);
    }
    if args.list_markdown {
        print!("{}", isc_verify::catalogue::markdown());
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(file) = &args.check_report {
        return check_report(dirs, file, args.key.as_ref());
    }
    let policy = match &args.policy {
        Some(p) => Policy::load(p)?,
        None => Policy::default(),
    };
    let (target, name) = match (&args.name, args.pid) {
        (Some(name), None) => {
            let st = state::get(&dirs.state, name)?;
            let others = state::list(&dirs.state).unwrap_or_default();
            let cg = cgroup_dirs(dirs, Some(name), st.init_pid);
            (Target::Isc { state: Box::new(st), cgroup_dirs: cg, others }, Some(name.clone()))
        }
        (None, Some(pid)) => {
            if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                bail!("no process {pid}; fix: pass the pid of a running process");
            }
            (Target::Pid { pid, cgroup_dirs: cgroup_dirs(dirs, None, pid) }, None)
        }
        _ => bail!("name an ISC (`isc verify NAME`) or a process (`--pid PID`); `--list` prints the catalogue"),
    };
    let transport = name.as_deref().map(|n| ControlSocket { dirs, name: n });
    let report = isc_verify::verify(
        &target,
        transport.as_ref().map(|t| t as &dyn ProbeTransport),
        &policy,
        args.threshold,
    );
    crate::hooks_audit::record(
        dirs,
        name.as_deref(),
        isc_audit::Kind::VerifyResult,
        serde_json::json!({
            "target": report.subject, "exposure": report.score.exposure,
            "label": report.score.label, "pass": report.score.pass,
            "gates_failed": report.score.gates_failed,
            "contradictions": report.score.contradictions,
        }),
    )?;
    if let Some(n) = &name {
        // For the Dock's metrics: the last result of a running ISC, beside its state.
        let summary = serde_json::json!({
            "exposure": report.score.exposure, "label": report.score.label,
            "pass": report.score.pass, "time_unix_ms": report.time_unix_ms,
        });
        if let Err(e) = state::record_verify(&dirs.state, n, &summary) {
            tracing::warn!(isc = %n, error = %e, "keeping the verify result beside the ISC's state");
        }
    }
    if let Some(out) = &args.sign {
        let key = isc_verify::sign::load_or_create_key(&dirs.root.join("keys"))?;
        let signed = isc_verify::sign::sign(&report.to_json(), &key);
        std::fs::write(out, serde_json::to_vec_pretty(&signed)?)
            .with_context(|| format!("writing the signed report {}", out.display()))?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report.to_json())?);
    } else if args.sarif {
        println!("{}", serde_json::to_string_pretty(&isc_verify::report::sarif(&report))?);
    } else {
        let color = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
        print!("{}", isc_verify::report::table(&report, color));
    }
    Ok(if report.score.pass { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

fn check_report(dirs: &Dirs, file: &PathBuf, key: Option<&PathBuf>) -> Result<ExitCode> {
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let signed: serde_json::Value = serde_json::from_slice(&bytes)
        .with_context(|| format!("{} is not JSON", file.display()))?;
    let key_path =
        key.cloned().unwrap_or_else(|| dirs.root.join("keys").join(isc_verify::sign::PUB_FILE));
    let trusted = isc_verify::sign::read_public_key(&key_path)
        .with_context(|| "no trusted public key; fix: pass --key FILE (the signer's verify.pub)")?;
    let report = isc_verify::sign::check(&signed, Some(&trusted))?;
    let s = &report["subject"];
    println!(
        "{}: signature ok; {} `{}` image {} spec {} at {} ms: exposure {} {} → {}",
        file.display(),
        s["kind"].as_str().unwrap_or("?"),
        s["name"].as_str().unwrap_or("?"),
        s["image_id"].as_str().unwrap_or("-"),
        s["spec_hash"].as_str().unwrap_or("-"),
        report["time_unix_ms"],
        report["score"]["exposure"],
        report["score"]["label"].as_str().unwrap_or("?"),
        if report["score"]["pass"] == true { "PASS" } else { "FAIL" }
    );
    Ok(ExitCode::SUCCESS)
}
