//! `isc`: Immutable Service Containers. Thin: every verb calls the crates.

mod audit_barrier;
mod audit_collect;
mod cmd_audit;
mod cmd_dock;
mod cmd_image;
mod cmd_image_verify;
mod cmd_net;
mod cmd_secret;
mod cmd_verify;
mod cmd_volume;
mod dock_daemon;
mod hooks_audit;
mod hooks_image;
mod hooks_net;
mod hooks_vault;
mod launch;
mod monitor_log;
mod monitor_resume;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use isc_engine::state::{self, ControlRequest, ControlResponse};
use isc_manifest::Manifest;

use launch::{CgroupHooks, Dirs};

#[derive(Parser)]
#[command(
    name = "isc",
    version,
    about = "Immutable Service Containers: one service, one hardened container, verifiable promises"
)]
struct Cli {
    /// Persistent state (images, keys, audit).
    #[arg(long, global = true, env = "ISC_ROOT", default_value = "/var/lib/isc")]
    root: PathBuf,
    /// Runtime state (running ISCs and their control sockets).
    #[arg(long, global = true, env = "ISC_STATE", default_value = "/run/isc")]
    state: PathBuf,
    /// Log filter (e.g. `info`, `isc_engine=debug`).
    #[arg(long, global = true, env = "ISC_LOG", default_value = "warn")]
    log: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run one ISC in the foreground (no FILE: the built-in demo).
    Run {
        file: Option<PathBuf>,
        /// Print a JSON start/exit record on stderr.
        #[arg(long)]
        json: bool,
        /// TEST ONLY: remove one protection (for mutation-testing `isc verify`). Comma list of
        /// no-seccomp, no-landlock, no-nnp, keep-sys-admin, writable-root, unmasked-proc.
        #[arg(long, hide = true, value_delimiter = ',')]
        unsafe_weaken: Vec<String>,
    },
    /// Work with manifests.
    Manifest {
        #[command(subcommand)]
        cmd: ManifestCmd,
    },
    /// List running ISCs.
    Ps {
        #[arg(long)]
        json: bool,
    },
    /// Live CPU, memory, pids and IO of a running ISC.
    Stats {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Stop a running ISC (SIGTERM to the service, SIGKILL after its stop timeout).
    Stop { name: String },
    /// Run probes: inside the live confinement of ISC `--isc NAME` (forked by its PID 1), or in
    /// this process (what a service inside an ISC runs for the integration tests).
    Probe {
        #[arg(long)]
        isc: Option<String>,
        /// Probe names, e.g. `status mount write:/etc` (see `--list`).
        names: Vec<String>,
        #[arg(long)]
        list: bool,
    },
    /// Prove the security metrics on a running ISC (active probes from inside), score, gate, sign.
    Verify(cmd_verify::VerifyArgs),
    /// The tamper-evident audit trail: verify, show, export, print the public key.
    Audit {
        #[command(subcommand)]
        cmd: cmd_audit::AuditCmd,
    },
    /// Sealed secrets: set (value from stdin or --file), ls, rm, rotate-key.
    Secret {
        #[command(subcommand)]
        cmd: cmd_secret::SecretCmd,
    },
    /// Persistent (encrypted) volumes: ls, inspect, rm.
    Volume {
        #[command(subcommand)]
        cmd: cmd_volume::VolumeCmd,
    },
    /// Immutable images: build, import, ls, inspect, verify, diff, pack, rm.
    Image {
        #[command(subcommand)]
        cmd: cmd_image::ImageCmd,
    },
    /// The Dock: `serve` the daemon; ps, stop, start, restart, rm, logs, events of its ISCs.
    Dock(cmd_dock::DockArgs),
    /// Start ISCs from manifests through the Dock (`isc dock up`).
    Up(cmd_dock::UpArgs),
    /// Make the Dock's ISCs match the manifests in a directory (`isc dock apply`).
    Apply(cmd_dock::ApplyArgs),
    /// The network boundary: `reconcile` rebuilds the nftables table from the running ISCs.
    Net {
        #[command(subcommand)]
        cmd: cmd_net::NetCmd,
    },
    #[command(flatten)]
    DockVerb(cmd_dock::DockShortcut),
}

// <subcommands: new verbs are variants of `Cmd` above, each in its own `cmd_*.rs` module>

#[derive(Subcommand)]
enum ManifestCmd {
    /// Validate a manifest; errors name the line, column, key and a fix.
    Check { file: PathBuf },
    /// Print the JSON Schema of isc.toml (for editors).
    Schema,
    /// Print the built-in demo manifest.
    Demo,
}

fn main() -> ExitCode {
    // Like every Unix tool, end quietly when the reader of our output goes away
    // (`isc ps --json | grep -q …`) instead of panicking on EPIPE. The monitor blocks SIGPIPE
    // for itself, so a closed pipe never kills a running ISC.
    // SAFETY: resetting a signal disposition before any thread exists.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    isc_engine::timing::mark("main entered");
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    // `isc __pid1 <service pid>`: PID 1 of an ISC woken from hibernation
    // (isc_engine::hibernate); nothing else of isc runs.
    if let [_, verb, service] = args.as_slice() {
        if verb == isc_engine::hibernate::RESUME_ARG {
            isc_engine::hibernate::resume_pid1(service);
        }
    }
    // A monitor (`isc run`, `isc dock monitor`) stays resident for as long as its ISC, one per
    // ISC: mallopt(3) M_ARENA_MAX=1 keeps its few threads on the main heap instead of giving
    // each allocating thread an arena of its own (a 64 MiB reservation with dirty pages and a
    // page-table page; smaps of an idle monitor: ~8 KiB dirty and 4-12 KiB of page tables). The
    // other verbs, the Dock daemon among them, keep glibc's per-thread arenas.
    let monitor = args.iter().any(|a| a == "run" || a == "monitor");
    if monitor {
        // SAFETY: mallopt only sets an allocator parameter; called before any thread exists.
        #[cfg(target_env = "gnu")]
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 1);
        }
    }
    let cli = fast_run_args(&args).unwrap_or_else(|| Cli::parse_from(&args));
    isc_engine::timing::mark("arguments parsed");
    if monitor {
        // Events only, without the span registry `fmt()` builds (monitor_log: 40 KiB per ISC).
        monitor_log::MonitorLog::init(&cli.log);
    } else {
        tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_new(&cli.log).unwrap_or_else(|_| "warn".into()),
            )
            .with_writer(std::io::stderr)
            .init();
    }
    isc_engine::timing::mark("logging set up");
    match dispatch(cli, monitor) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("isc: error: {e:#}");
            ExitCode::from(125)
        }
    }
}

fn dispatch(cli: Cli, monitor: bool) -> Result<ExitCode> {
    let dirs = Dirs { root: cli.root, state: cli.state };
    // A monitor woken from its hibernation (isc_engine::monitor_hibernate): its command line
    // is the one it started with (the Dock recognises its monitors by it).
    if monitor {
        if let Some(saved) = isc_engine::monitor_hibernate::take_saved() {
            return monitor_resume::resume(saved?, &dirs);
        }
    }
    match cli.cmd {
        Cmd::Run { file, json, unsafe_weaken } => run(file.as_deref(), json, &unsafe_weaken, &dirs),
        Cmd::Audit { cmd } => cmd_audit::dispatch(&dirs, cmd),
        Cmd::Secret { cmd } => cmd_secret::dispatch(&dirs, cmd),
        Cmd::Volume { cmd } => cmd_volume::dispatch(&dirs, cmd),
        Cmd::Image { cmd } => cmd_image::dispatch(&dirs, cmd),
        Cmd::Verify(args) => cmd_verify::dispatch(&dirs, args),
        Cmd::Dock(args) => cmd_dock::dispatch(&dirs, args),
        Cmd::Up(args) => cmd_dock::up(&dirs, args),
        Cmd::Apply(args) => cmd_dock::apply_dir(&dirs, args),
        Cmd::Net { cmd } => cmd_net::dispatch(&dirs, cmd),
        Cmd::DockVerb(verb) => cmd_dock::shortcut(&dirs, verb),
        // <dispatch: add new verbs' arms above this line>
        Cmd::Manifest { cmd: ManifestCmd::Check { file } } => {
            let m = Manifest::load(&file)?;
            println!(
                "{}: ok (ISC `{}`, profile {}, image {})",
                file.display(),
                m.name,
                m.profile.as_str(),
                m.image.source
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Manifest { cmd: ManifestCmd::Schema } => {
            println!("{}", serde_json::to_string_pretty(&isc_manifest::json_schema())?);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Manifest { cmd: ManifestCmd::Demo } => {
            print!("{}", isc_manifest::DEMO_TOML);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Ps { json } => ps(&dirs, json),
        Cmd::Stats { name, json } => stats(&dirs, &name, json),
        Cmd::Stop { name } => {
            match state::request(&dirs.state, &name, &ControlRequest::Stop, Duration::from_secs(2))?
            {
                ControlResponse::Stopping => println!("stopping {name}"),
                other => anyhow::bail!("unexpected answer from the monitor: {other:?}"),
            }
            // Who asked for the stop is on the trail; the monitor records how the ISC ended.
            let log = hooks_audit::open_for_monitor(&dirs)?;
            log.append(
                Some(&name),
                isc_audit::Kind::IscStop,
                hooks_audit::caller(),
                serde_json::json!({"requested": "stop"}),
            )?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Probe { list: true, .. } => {
            for p in isc_engine::probe::PROBES {
                println!("{p}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Probe { isc: None, names, .. } => {
            let outcomes: Vec<_> = names.iter().map(|n| isc_engine::probe::run(n)).collect();
            println!("{}", serde_json::to_string(&outcomes)?);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Probe { isc: Some(name), names, .. } => {
            let req = ControlRequest::Probe { names };
            match state::request(&dirs.state, &name, &req, Duration::from_secs(10))? {
                ControlResponse::Probes { outcomes } => {
                    println!("{}", serde_json::to_string(&outcomes)?)
                }
                ControlResponse::Error { message } => anyhow::bail!("{message}"),
                other => anyhow::bail!("unexpected answer from the monitor: {other:?}"),
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn weakening(names: &[String]) -> Result<isc_engine::Weakening> {
    let mut w = isc_engine::Weakening::default();
    for n in names {
        match n.as_str() {
            "no-seccomp" => w.no_seccomp = true,
            "no-landlock" => w.no_landlock = true,
            "no-nnp" => w.no_new_privs_off = true,
            "keep-sys-admin" => w.keep_cap_sys_admin = true,
            "writable-root" => w.writable_root = true,
            "unmasked-proc" => w.host_proc_unmasked = true,
            other => anyhow::bail!("unknown weakening `{other}`"),
        }
    }
    if w != isc_engine::Weakening::default() {
        eprintln!("isc: WARNING: protections removed for testing: {}", names.join(", "));
    }
    Ok(w)
}

/// The start path's own command line, `isc [--root D] [--state D] [--log F] run [FILE]
/// [--json]` (globals before or after `run`, `--opt VALUE` or `--opt=VALUE`), parsed without
/// clap: building clap's tree of every verb costs ~0.3 ms, a tenth of a start. Anything else —
/// help, other verbs, unknown or hidden flags, a value that looks like a flag — returns `None`
/// and goes through clap, which also produces every error message.
fn fast_run_args(args: &[std::ffi::OsString]) -> Option<Cli> {
    // clap's `env` fallbacks; a variable set but empty is clap's to judge (it refuses an empty
    // root or state and takes an empty log filter), so such a line goes through clap.
    let env_or = |var: &str, default: &str| match std::env::var_os(var) {
        Some(v) if v.is_empty() => None,
        Some(v) => Some(v),
        None => Some(default.into()),
    };
    let mut root = PathBuf::from(env_or("ISC_ROOT", "/var/lib/isc")?);
    let mut state = PathBuf::from(env_or("ISC_STATE", "/run/isc")?);
    let mut log = env_or("ISC_LOG", "warn")?.into_string().ok()?;
    let (mut saw_run, mut file, mut json) = (false, None, false);
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        let a = a.to_str()?;
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_owned())),
            _ => (a, None),
        };
        let mut value = || match inline.clone() {
            Some(v) => Some(v),
            None => it.next()?.to_str().filter(|v| !v.starts_with('-')).map(str::to_owned),
        };
        match flag {
            "--root" => root = value()?.into(),
            "--state" => state = value()?.into(),
            "--log" => log = value()?,
            "--json" if saw_run && inline.is_none() => json = true,
            "run" if !saw_run => saw_run = true,
            f if saw_run && file.is_none() && !f.starts_with('-') && inline.is_none() => {
                file = Some(PathBuf::from(f))
            }
            _ => return None,
        }
    }
    saw_run.then_some(Cli {
        root,
        state,
        log,
        cmd: Cmd::Run { file, json, unsafe_weaken: Vec::new() },
    })
}

fn run(file: Option<&Path>, json: bool, weaken: &[String], dirs: &Dirs) -> Result<ExitCode> {
    // Made while the manifest loads and the audit trail opens (see isc_engine::netns).
    let netns = std::sync::Arc::new(isc_engine::netns::PreparedNetns::spawn());
    isc_engine::timing::mark("network namespace helper started");
    let manifest = match file {
        Some(f) => Manifest::load(f)?,
        None => Manifest::parse(isc_manifest::DEMO_TOML, Path::new("<built-in demo>"))?,
    };
    isc_engine::timing::mark("manifest parsed");
    let caller = monitor_resume::Caller::Run { json };
    let (record, image_id) = run_manifest(&manifest, weaken, dirs, &caller, &|o| {
        o.netns = Some(std::sync::Arc::clone(&netns))
    })?;
    isc_engine::timing::mark("image released");
    report_run(&record, image_id, json)
}

/// What `isc run` prints at the end, and its exit status (the service's).
pub(crate) fn report_run(
    record: &isc_engine::ExitRecord,
    image_id: String,
    json: bool,
) -> Result<ExitCode> {
    if json {
        let mut v = serde_json::to_value(record)?;
        v["image_id"] = image_id.into();
        eprintln!("{}", serde_json::to_string(&v)?);
    } else if let Some(reason) = &record.reason {
        eprintln!("isc: `{}` ended: {reason}", record.name);
    } else if let Some(sig) = record.signal {
        eprintln!("isc: `{}` was killed by signal {sig}", record.name);
    }
    std::io::stdout().flush().ok();
    Ok(ExitCode::from(record.status.clamp(0, 255) as u8))
}

/// Starts the ISC of `manifest` in this process (which becomes its monitor) and waits for its
/// end. `tweak` adjusts the engine options (the Dock's detached monitor sends the output to log
/// files and uses the Dock's UID range). Returns the exit record and the image id.
pub(crate) fn run_manifest(
    manifest: &Manifest,
    weaken: &[String],
    dirs: &Dirs,
    caller: &monitor_resume::Caller,
    tweak: &dyn Fn(&mut isc_engine::RunOptions),
) -> Result<(isc_engine::ExitRecord, String)> {
    if let Ok(running) = state::get(&dirs.state, &manifest.name) {
        anyhow::bail!(
            "an ISC named `{}` is already running (monitor pid {}); fix: `isc stop {}` or choose another name",
            manifest.name,
            running.monitor_pid,
            manifest.name
        );
    }
    // Fail closed: nothing is prepared for an ISC the audit trail cannot record.
    isc_engine::timing::mark("no ISC of that name running");
    let mut audit = hooks_audit::AuditSession::begin(dirs, &manifest.name)?;
    isc_engine::timing::mark("audit trail opened");
    // Networks of monitors that died (SIGKILL) are torn down before their stale registry
    // entries go (with the cgroup collection below); a failure here never fails this start.
    match hooks_net::collect_stale(dirs) {
        Ok(gone) if !gone.is_empty() => tracing::info!(?gone, "removed networks of dead monitors"),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = format!("{e:#}"), "removing networks of dead monitors"),
    }
    isc_engine::timing::mark("stale networks collected");
    // The image lease and any EROFS mount live until the ISC has ended (dropped at return).
    let (mut spec, mut image_hold) =
        audit.step("preparing the image", launch::resolve(manifest, dirs))?;
    isc_engine::timing::mark("image resolved");
    spec.weakening = weakening(weaken)?;
    let vault = audit.step(
        "opening secrets and volumes",
        hooks_vault::VaultHooks::prepare(manifest, dirs, &mut spec, audit.log()),
    )?;
    isc_engine::timing::mark("secrets and volumes prepared");
    // Hashed once: the isc_create record and the published state must name the same spec.
    let spec_hash = isc_engine::monitor::spec_hash(&spec);
    audit.created(&spec, &spec_hash, &launch::limits(manifest))?;
    isc_engine::timing::mark("isc_create recorded");
    let mut cgroup = audit.step(
        "creating the cgroup",
        CgroupHooks::create(&manifest.name, launch::limits(manifest), &dirs.state),
    )?;
    isc_engine::timing::mark("cgroup created");
    let mut vault = vault;
    let mut opts = isc_engine::RunOptions::new(dirs.state.clone());
    opts.seccomp_log = true;
    opts.spec_hash = Some(spec_hash);
    // An EROFS image's loop device waits for every mount of it to go (the engine itself never
    // defers an ISC with binds: volumes and secrets).
    opts.defer_mount_teardown = !image_hold.is_mounted();
    tweak(&mut opts);
    // Published in the ISC's state: the declared configuration `isc verify` compares with.
    opts.manifest = serde_json::to_value(manifest).ok();
    let mut net =
        audit.step("planning the network", hooks_net::NetHooks::prepare(manifest, dirs))?;
    isc_engine::timing::mark("network planned");
    let result = {
        let mut frame = monitor_resume::Frame::new(&mut image_hold, caller);
        let mut chain = isc_engine::HookChain(vec![&mut cgroup, &mut vault, &mut net, &mut frame]);
        isc_engine::run(&spec, &opts, &mut audit.hooks(&mut chain))
    };
    let record = finish_run(audit, cgroup, vault, net, result, &spec.name)?;
    drop(image_hold);
    Ok((record, spec.image_id.clone()))
}

/// The end of a run once its monitor returned: the network, the audit trail's last records
/// and the cgroup go, each as soon as it can.
pub(crate) fn finish_run(
    mut audit: hooks_audit::AuditSession,
    mut cgroup: CgroupHooks,
    vault: hooks_vault::VaultHooks,
    mut net: hooks_net::NetHooks,
    result: Result<isc_engine::ExitRecord, isc_engine::MonitorError>,
    name: &str,
) -> Result<isc_engine::ExitRecord> {
    isc_engine::timing::mark("monitor returned");
    // The ISC's processes are gone and its end is being recorded and made durable on the
    // audit collector's thread (`exit_known`). The cgroup goes on a thread of its own while
    // the network goes here.
    let teardown = cgroup.teardown_in_background();
    match net.finish() {
        // The link is deleted: its packets in flight are all processed (or discarded), so the
        // network drain can end with what is queued. After a failed teardown it waits for quiet.
        Ok(()) => audit.network_gone(),
        Err(e) => {
            tracing::error!(isc = %name, error = format!("{e:#}"), "network teardown failed; a reconcile removes the leftovers")
        }
    }
    isc_engine::timing::mark("network removed");
    let record = audit.finish(result).with_context(|| format!("ISC `{name}`"));
    // The closing checkpoint and sync find nothing new after a recorded end.
    drop(audit);
    drop(vault);
    isc_engine::timing::mark("audit trail closed");
    teardown.join();
    drop(cgroup);
    isc_engine::timing::mark("cgroup removed");
    record
}

fn ps(dirs: &Dirs, json: bool) -> Result<ExitCode> {
    let list = state::list(&dirs.state)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&list)?);
    } else {
        println!("{:<20} {:>8} {:>8} {:>12}  IMAGE", "NAME", "MONITOR", "INIT", "HOST-UID");
        for s in list {
            println!(
                "{:<20} {:>8} {:>8} {:>12}  {}",
                s.name,
                s.monitor_pid,
                s.init_pid,
                s.host_uid_base,
                &s.image_id[..s.image_id.len().min(16)]
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn stats(dirs: &Dirs, name: &str, json: bool) -> Result<ExitCode> {
    state::get(&dirs.state, name)?;
    let layout = isc_cgroup::Layout::detect()?;
    let cg = isc_cgroup::open(&layout, None, &launch::cgroup_name(&dirs.state, name))
        .with_context(|| format!("opening the cgroup of `{name}`"))?;
    let s = cg.stats()?;
    let ev = cg.events()?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({"name": name, "stats": s, "events": ev})
            )?
        );
    } else {
        let opt = |v: Option<u64>| v.map(|x| x.to_string()).unwrap_or_else(|| "-".into());
        println!("{name}: cpu {} us, memory {} / {} bytes, pids {} / {}, io read {} write {} bytes, oom kills {}, pids-limit hits {}, throttled periods {}",
            opt(s.cpu_usage_usec), opt(s.memory_current), opt(s.memory_limit), opt(s.pids_current), opt(s.pids_limit),
            opt(s.io_read_bytes), opt(s.io_write_bytes), ev.oom_kills, ev.pids_max_hits, ev.throttled_periods);
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    type RunArgs = (PathBuf, PathBuf, String, Option<PathBuf>, bool);

    fn fields(cli: Cli) -> RunArgs {
        match cli.cmd {
            Cmd::Run { file, json, unsafe_weaken } => {
                assert!(unsafe_weaken.is_empty());
                (cli.root, cli.state, cli.log, file, json)
            }
            _ => panic!("not a run"),
        }
    }

    fn argv(line: &str) -> Vec<std::ffi::OsString> {
        line.split(' ').map(Into::into).collect()
    }

    #[test]
    fn the_fast_path_agrees_with_clap_on_every_run_line_it_takes() {
        for line in [
            "isc run",
            "isc run a.toml",
            "isc run a.toml --json",
            "isc --root /r --state /s --log debug run x=y.toml",
            "isc --root=/r run --json a.toml",
            "isc run a.toml --log=info --state /s",
        ] {
            let fast = fast_run_args(&argv(line)).unwrap_or_else(|| panic!("not taken: {line}"));
            let slow = Cli::try_parse_from(argv(line)).unwrap();
            assert_eq!(fields(fast), fields(slow), "{line}");
        }
    }

    /// The fast path repeats clap's `env` fallbacks for `--root`, `--state` and `--log`. The
    /// environment is the process's, so this test checks them in child copies of itself with
    /// the variables set, leaving the other tests' environment alone.
    #[test]
    fn the_fast_path_reads_the_environment_as_clap_does() {
        const INNER: &str = "ISC_TEST_FAST_PATH_ENV";
        match std::env::var("ISC_TEST_FAST_PATH_ENV").as_deref() {
            Ok("set") => {
                for line in
                    ["isc run", "isc run a.toml --json", "isc --root /r run", "isc --log=info run"]
                {
                    let fast =
                        fast_run_args(&argv(line)).unwrap_or_else(|| panic!("not taken: {line}"));
                    let slow = Cli::try_parse_from(argv(line)).unwrap();
                    assert_eq!(fields(fast), fields(slow), "{line}");
                }
                let (root, state, log, ..) = fields(fast_run_args(&argv("isc run")).unwrap());
                assert_eq!(
                    (root.to_str(), state.to_str(), log.as_str()),
                    (Some("/env/root"), Some("/env/state"), "debug")
                );
            }
            // Set but empty: clap refuses an empty root and keeps an empty log filter; the
            // fast path leaves both to it rather than guess.
            Ok("empty") => {
                assert!(fast_run_args(&argv("isc run a.toml")).is_none());
                assert!(Cli::try_parse_from(argv("isc run a.toml")).is_err(), "empty ISC_ROOT");
            }
            _ => {
                let name = "tests::the_fast_path_reads_the_environment_as_clap_does";
                for (mode, value) in [("set", None), ("empty", Some(""))] {
                    let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
                    cmd.args([name, "--exact", "--nocapture", "--test-threads=1"]).env(INNER, mode);
                    cmd.env("ISC_ROOT", value.unwrap_or("/env/root"));
                    cmd.env("ISC_STATE", value.unwrap_or("/env/state"));
                    cmd.env("ISC_LOG", value.unwrap_or("debug"));
                    let out = cmd.output().unwrap();
                    let stdout = String::from_utf8_lossy(&out.stdout);
                    assert!(
                        out.status.success(),
                        "{mode}: {stdout}{}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                    assert!(
                        stdout.contains("1 passed"),
                        "{mode}: the inner test did not run: {stdout}"
                    );
                }
            }
        }
    }

    #[test]
    fn everything_else_is_left_to_clap() {
        for line in [
            "isc",
            "isc ps",
            "isc run --help",
            "isc run a.toml b.toml",
            "isc run a.toml --unsafe-weaken no-seccomp",
            "isc --root run a.toml",
            "isc --root --state /s run",
            "isc run -j",
            "isc run --json=1",
            "isc manifest check run",
        ] {
            assert!(fast_run_args(&argv(line)).is_none(), "{line}");
        }
    }
}
