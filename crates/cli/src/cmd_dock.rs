//! `isc dock …` and `isc up`: the Dock daemon (`serve`), its client verbs, and the hidden
//! `monitor` verb the Dock re-executes for every ISC it starts (DESIGN.md §3).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use isc_dock::client::Client;
use isc_dock::{DockConfig, IscRecord};
use serde_json::json;

use crate::launch::Dirs;

/// `isc dock [--socket PATH] <verb>`.
#[derive(Args)]
pub struct DockArgs {
    /// The Dock's API socket (default: from `<root>/dock.toml`, else `<state>/dock.sock`).
    #[arg(long, global = true, env = "ISC_DOCK_SOCKET")]
    socket: Option<PathBuf>,
    #[command(subcommand)]
    cmd: DockCmd,
}

/// `isc up FILE…`: start ISCs through the Dock.
#[derive(Args)]
pub struct UpArgs {
    /// Manifests (`isc.toml`); started concurrently.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    health: HealthArgs,
    /// The Dock's API socket.
    #[arg(long, env = "ISC_DOCK_SOCKET")]
    socket: Option<PathBuf>,
}

/// `isc apply DIR`: make the Dock's ISCs match the manifests in DIR.
#[derive(Args)]
pub struct ApplyArgs {
    /// Every `*.toml` in DIR is a manifest (`dock.toml` excepted); `NAME.health.json` beside
    /// `NAME.toml` is its health check (`{"tcp": 8080, "interval_ms": 2000, "retries": 3}`).
    dir: PathBuf,
    #[arg(long)]
    json: bool,
    /// The Dock's API socket.
    #[arg(long, env = "ISC_DOCK_SOCKET")]
    socket: Option<PathBuf>,
}

/// The Dock's health check of the ISCs started by `isc up` (see docs/api.md). It needs a
/// [network] that listens on the port; `retries` failed checks in a row end the run as a
/// failure (restarted per the manifest's restart policy).
#[derive(Args, Clone, Default)]
pub struct HealthArgs {
    /// TCP check: the Dock connects to this port on each ISC's address.
    #[arg(long, value_name = "PORT", conflicts_with = "health_http")]
    health_tcp: Option<u16>,
    /// HTTP check: the Dock sends `GET --health-path` to this port and wants a 2xx/3xx status.
    #[arg(long, value_name = "PORT")]
    health_http: Option<u16>,
    /// The path of the HTTP check.
    #[arg(long, value_name = "PATH", default_value = "/", requires = "health_http")]
    health_path: String,
    /// Milliseconds between checks [Dock default: 2000].
    #[arg(long, value_name = "MS")]
    health_interval_ms: Option<u64>,
    /// Milliseconds a check may take [Dock default: 1000].
    #[arg(long, value_name = "MS")]
    health_timeout_ms: Option<u64>,
    /// Failed checks in a row that end the run [Dock default: 3].
    #[arg(long, value_name = "N")]
    health_retries: Option<u32>,
    /// Milliseconds after the start before the first check [Dock default: 1000].
    #[arg(long, value_name = "MS")]
    health_start_period_ms: Option<u64>,
}

impl HealthArgs {
    /// The check as the API takes it (unset timings take the Dock's defaults).
    fn to_json(&self) -> Result<Option<serde_json::Value>> {
        let mut m = serde_json::Map::new();
        match (self.health_tcp, self.health_http) {
            (Some(p), _) => {
                m.insert("tcp".into(), p.into());
            }
            (None, Some(p)) => {
                m.insert("http".into(), p.into());
                m.insert("path".into(), self.health_path.clone().into());
            }
            (None, None) => {
                if self.health_interval_ms.is_some()
                    || self.health_timeout_ms.is_some()
                    || self.health_retries.is_some()
                    || self.health_start_period_ms.is_some()
                {
                    bail!("health check timings without a check; fix: add --health-tcp PORT or --health-http PORT");
                }
                return Ok(None);
            }
        }
        for (k, v) in [
            ("interval_ms", self.health_interval_ms),
            ("timeout_ms", self.health_timeout_ms),
            ("retries", self.health_retries.map(u64::from)),
            ("start_period_ms", self.health_start_period_ms),
        ] {
            if let Some(v) = v {
                m.insert(k.into(), v.into());
            }
        }
        Ok(Some(serde_json::Value::Object(m)))
    }
}

/// `isc logs` / `isc dock logs`.
#[derive(Args)]
pub struct LogsArgs {
    name: String,
    /// Keep printing new output (across log rotations) while the ISC is up.
    #[arg(short, long)]
    follow: bool,
    /// Only the last N lines.
    #[arg(long)]
    tail: Option<usize>,
    /// Only lines from this time on: a duration back from now (`90s`, `10m`, `1h30m`,
    /// `2d`), an RFC 3339 time (`2026-11-28T15:00:00Z`) or Unix seconds.
    #[arg(long, value_name = "TIME")]
    since: Option<String>,
    /// Print the time each line was read from the service (UTC, µs) before it.
    #[arg(short, long)]
    timestamps: bool,
}

/// `isc events` / `isc dock events`.
#[derive(Args)]
pub struct EventsArgs {
    /// Keep printing events as they happen.
    #[arg(short, long)]
    follow: bool,
    /// Only the events of this ISC.
    #[arg(long, value_name = "NAME")]
    isc: Option<String>,
    #[arg(long)]
    json: bool,
}

/// `isc start|restart|rm NAME` / `isc dock …`.
#[derive(Args)]
pub struct NameArgs {
    name: String,
    #[arg(long)]
    json: bool,
}

/// The Dock verbs that are also top-level verbs of `isc` (the issue's `isc logs`, `isc events`,
/// `isc inspect`, `isc start`, `isc restart`, `isc rm`); `isc ps`, `isc stop` and `isc stats`
/// stay the local verbs, which see the Dock's ISCs too.
#[derive(Subcommand)]
pub enum DockShortcut {
    /// The service's output of a Dock-run ISC (`isc dock logs`).
    Logs(LogsArgs),
    /// Lifecycle events of the Dock's ISCs (`isc dock events`).
    Events(EventsArgs),
    /// Everything the Dock knows about one ISC, as JSON (`isc dock inspect`).
    Inspect { name: String },
    /// Start a stopped, exited, failed or crash-looping Dock ISC (`isc dock start`).
    Start(NameArgs),
    /// Stop and start a Dock ISC (`isc dock restart`).
    Restart(NameArgs),
    /// Stop a Dock ISC and forget it: record, manifest copy, logs (`isc dock rm`).
    Rm(NameArgs),
}

/// Runs a top-level Dock verb through the Dock's socket (from `<root>/dock.toml` or the
/// `ISC_DOCK_SOCKET` environment variable).
pub fn shortcut(dirs: &Dirs, verb: DockShortcut) -> Result<ExitCode> {
    let socket = std::env::var_os("ISC_DOCK_SOCKET").map(PathBuf::from);
    let cmd = match verb {
        DockShortcut::Logs(a) => DockCmd::Logs(a),
        DockShortcut::Events(a) => DockCmd::Events(a),
        DockShortcut::Inspect { name } => DockCmd::Inspect { name },
        DockShortcut::Start(a) => DockCmd::Start { name: a.name, json: a.json },
        DockShortcut::Restart(a) => DockCmd::Restart { name: a.name, json: a.json },
        DockShortcut::Rm(a) => DockCmd::Rm { name: a.name, json: a.json },
    };
    dispatch(dirs, DockArgs { socket, cmd })
}

#[derive(Subcommand)]
pub enum DockCmd {
    /// Run the Dock daemon (API on a Unix socket; ISCs outlive it).
    Serve {
        /// Config file (default `<root>/dock.toml`; missing means defaults).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Start ISCs from manifests (same as `isc up`).
    Up {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        health: HealthArgs,
    },
    /// Desired state: start, replace or remove ISCs to match the manifests in DIR (same as
    /// `isc apply`).
    Apply {
        dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// List the Dock's ISCs with status, restarts and last exit.
    Ps {
        #[arg(long)]
        json: bool,
    },
    /// Everything the Dock knows about one ISC (JSON).
    Inspect { name: String },
    /// Stop an ISC (SIGTERM, SIGKILL after its stop timeout); it is not restarted.
    Stop {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Start a stopped, exited, failed or crash-looping ISC.
    Start {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Stop and start an ISC.
    Restart {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Stop an ISC and forget it (record, manifest copy, logs).
    Rm {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// The service's output (stdout and stderr).
    Logs(LogsArgs),
    /// Lifecycle events: created, started, healthy, unhealthy, oom, exited, restarting,
    /// crash-loop, stopping, removed… (JSON lines with --json).
    Events(EventsArgs),
    /// Live CPU, memory, pids, block IO, network bytes and OOM kills of the Dock's ISCs (or one).
    Stats {
        name: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Prometheus metrics of the Dock and its ISCs.
    Metrics,
    /// Internal: the detached monitor of one ISC, started by the Dock.
    #[command(hide = true)]
    Monitor {
        #[arg(long)]
        request: String,
    },
}

fn client(dirs: &Dirs, socket: Option<PathBuf>) -> Client {
    let socket = socket.unwrap_or_else(|| {
        DockConfig::load(&dirs.root.join("dock.toml")).unwrap_or_default().socket_path(&dirs.state)
    });
    Client::new(&socket)
}

/// Runs `isc dock …`.
pub fn dispatch(dirs: &Dirs, args: DockArgs) -> Result<ExitCode> {
    let c = || client(dirs, args.socket.clone());
    match args.cmd {
        DockCmd::Serve { config } => crate::dock_daemon::serve(dirs, config),
        DockCmd::Monitor { request } => crate::dock_daemon::monitor(dirs, &request),
        DockCmd::Up { files, json, health } => up_files(&c(), &files, json, &health),
        DockCmd::Apply { dir, json } => apply(&c(), &dir, json),
        DockCmd::Ps { json } => ps(&c(), json),
        DockCmd::Inspect { name } => {
            let v = c().call("GET", &format!("/v1/iscs/{name}"), None)?.json()?;
            println!("{}", serde_json::to_string_pretty(&v)?);
            Ok(ExitCode::SUCCESS)
        }
        DockCmd::Stop { name, json } => {
            action(&c(), "POST", &format!("/v1/iscs/{name}/stop"), json)
        }
        DockCmd::Start { name, json } => {
            action(&c(), "POST", &format!("/v1/iscs/{name}/start"), json)
        }
        DockCmd::Restart { name, json } => {
            action(&c(), "POST", &format!("/v1/iscs/{name}/restart"), json)
        }
        DockCmd::Rm { name, json } => action(&c(), "DELETE", &format!("/v1/iscs/{name}"), json),
        DockCmd::Logs(LogsArgs { name, follow, tail, since, timestamps }) => {
            let mut q = vec![];
            if follow {
                q.push("follow=true".to_string());
            }
            if let Some(n) = tail {
                q.push(format!("tail={n}"));
            }
            if let Some(s) = since {
                q.push(format!("since={}", query_escape(&s)));
            }
            if timestamps {
                q.push("timestamps=true".to_string());
            }
            stream_out(&c(), &format!("/v1/iscs/{name}/logs?{}", q.join("&")))
        }
        DockCmd::Events(EventsArgs { follow, isc, json }) => {
            events(&c(), follow, isc.as_deref(), json)
        }
        DockCmd::Stats { name, json } => stats(&c(), name.as_deref(), json),
        DockCmd::Metrics => stream_out(&c(), "/metrics"),
    }
}

/// Runs `isc up`.
pub fn up(dirs: &Dirs, args: UpArgs) -> Result<ExitCode> {
    up_files(&client(dirs, args.socket), &args.files, args.json, &args.health)
}

/// Runs `isc apply`.
pub fn apply_dir(dirs: &Dirs, args: ApplyArgs) -> Result<ExitCode> {
    apply(&client(dirs, args.socket), &args.dir, args.json)
}

/// The manifests of an apply directory with their health checks, sorted by file name.
fn declared_in(dir: &std::path::Path) -> Result<Vec<serde_json::Value>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading the directory {}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.extension().is_some_and(|x| x == "toml")
                && p.file_name().is_some_and(|n| n != "dock.toml")
                && p.is_file()
        })
        .collect();
    files.sort();
    files
        .iter()
        .map(|f| {
            let text =
                std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
            let health_file = f.with_extension("health.json");
            let health: Option<serde_json::Value> = match std::fs::read(&health_file) {
                Ok(b) => Some(
                    serde_json::from_slice(&b)
                        .with_context(|| format!("parsing {}", health_file.display()))?,
                ),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => {
                    return Err(e).with_context(|| format!("reading {}", health_file.display()))
                }
            };
            let origin = std::path::absolute(f).unwrap_or_else(|_| f.clone());
            Ok(json!({"manifest": text, "origin": origin, "health": health}))
        })
        .collect()
}

fn apply(c: &Client, dir: &std::path::Path, json: bool) -> Result<ExitCode> {
    let iscs = declared_in(dir)?;
    let v = c.call("POST", "/v1/apply", Some(&json!({ "iscs": iscs })))?.json()?;
    let report: isc_dock::apply::ApplyReport = serde_json::from_value(v.clone())?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        for (what, names) in [
            ("created", &report.created),
            ("replaced", &report.replaced),
            ("started", &report.started),
            ("unchanged", &report.unchanged),
            ("removed", &report.removed),
        ] {
            for n in names {
                println!("{n}: {what}");
            }
        }
        for (n, e) in &report.failed {
            eprintln!("isc: {n}: {e}");
        }
    }
    Ok(if report.failed.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

fn up_files(c: &Client, files: &[PathBuf], json: bool, health: &HealthArgs) -> Result<ExitCode> {
    let health = health.to_json()?;
    let bodies: Vec<(PathBuf, Result<serde_json::Value>)> = files
        .iter()
        .map(|f| {
            let body = std::fs::read_to_string(f)
                .with_context(|| format!("reading {}", f.display()))
                .map(|text| {
                    let origin = std::path::absolute(f).unwrap_or_else(|_| f.clone());
                    json!({"manifest": text, "origin": origin, "health": health})
                });
            (f.clone(), body)
        })
        .collect();
    let results: Vec<(PathBuf, Result<IscRecord>)> = std::thread::scope(|s| {
        let handles: Vec<_> = bodies
            .into_iter()
            .map(|(f, body)| {
                s.spawn(move || {
                    let r = body.and_then(|b| {
                        let v = c.call("POST", "/v1/iscs", Some(&b))?.json()?;
                        Ok(serde_json::from_value::<IscRecord>(v)?)
                    });
                    (f, r)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("up thread")).collect()
    });
    let failed = results.iter().filter(|(_, r)| r.is_err()).count();
    if json {
        let v: Vec<serde_json::Value> = results
            .iter()
            .map(|(f, r)| match r {
                Ok(rec) => json!({"file": f, "record": rec}),
                Err(e) => json!({"file": f, "error": format!("{e:#}")}),
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        for (f, r) in &results {
            match r {
                Ok(rec) => println!(
                    "{}: {} (monitor {}, host uid base {})",
                    rec.name,
                    rec.status.as_str(),
                    opt(rec.monitor_pid),
                    opt(rec.host_uid_base)
                ),
                Err(e) => eprintln!("isc: {}: {e:#}", f.display()),
            }
        }
    }
    Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// Percent-encodes everything but unreserved characters (RFC 3986 §2.3) for a query value.
fn query_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map(|x| x.to_string()).unwrap_or_else(|| "-".into())
}

fn ps(c: &Client, json: bool) -> Result<ExitCode> {
    let v = c.call("GET", "/v1/iscs", None)?.json()?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    let recs: Vec<IscRecord> = serde_json::from_value(v)?;
    println!(
        "{:<24} {:<10} {:<10} {:>8} {:>8} {:>12} {:>6}  MESSAGE",
        "NAME", "STATUS", "HEALTH", "RESTARTS", "MONITOR", "HOST-UID", "EXIT"
    );
    for r in recs {
        println!(
            "{:<24} {:<10} {:<10} {:>8} {:>8} {:>12} {:>6}  {}",
            r.name,
            r.status.as_str(),
            opt(r.health_state.map(|h| h.as_str())),
            r.restarts,
            opt(r.monitor_pid),
            opt(r.host_uid_base),
            opt(r.last_exit.as_ref().map(|e| e.status)),
            r.message.unwrap_or_default()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn action(c: &Client, method: &str, path: &str, json: bool) -> Result<ExitCode> {
    let v = c.call(method, path, None)?.json()?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else if let Ok(rec) = serde_json::from_value::<IscRecord>(v.clone()) {
        println!("{}: {}", rec.name, rec.status.as_str());
    } else if let Some(n) = v["removed"].as_str() {
        println!("{n}: removed");
    }
    Ok(ExitCode::SUCCESS)
}

fn stream_out(c: &Client, path: &str) -> Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    c.stream("GET", path, None, |b| out.write_all(b).and_then(|_| out.flush()).is_ok())?;
    Ok(ExitCode::SUCCESS)
}

fn events(c: &Client, follow: bool, isc: Option<&str>, json: bool) -> Result<ExitCode> {
    let mut q = vec![];
    if follow {
        q.push("follow=true".to_string());
    }
    if let Some(n) = isc {
        q.push(format!("isc={}", query_escape(n)));
    }
    let path = format!("/v1/events?{}", q.join("&"));
    let path = path.as_str();
    let mut out = std::io::stdout().lock();
    let mut pending: Vec<u8> = vec![];
    c.stream("GET", path, None, |b| {
        pending.extend_from_slice(b);
        while let Some(i) = pending.iter().position(|c| *c == b'\n') {
            let line: Vec<u8> = pending.drain(..=i).collect();
            let text = if json {
                String::from_utf8_lossy(&line).into_owned()
            } else {
                match serde_json::from_slice::<isc_dock::events::Event>(&line) {
                    Ok(e) => format!(
                        "{} {:<20} {:<12} {}\n",
                        isc_engine::logfile::format_timestamp(e.time_ms * 1000),
                        e.isc,
                        e.kind,
                        e.detail
                    ),
                    Err(_) => String::from_utf8_lossy(&line).into_owned(),
                }
            };
            if out.write_all(text.as_bytes()).and_then(|_| out.flush()).is_err() {
                return false;
            }
        }
        true
    })?;
    Ok(ExitCode::SUCCESS)
}

/// `1.5 GiB`-style sizes for the stats table.
fn human_bytes(v: Option<u64>) -> String {
    let Some(b) = v else { return "-".into() };
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut x = b as f64;
    let mut u = 0;
    while x >= 1024.0 && u + 1 < units.len() {
        x /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{x:.1} {}", units[u])
    }
}

fn stats(c: &Client, name: Option<&str>, json: bool) -> Result<ExitCode> {
    let v = match name {
        Some(n) => serde_json::Value::Array(vec![c
            .call("GET", &format!("/v1/iscs/{n}/stats"), None)?
            .json()?]),
        None => c.call("GET", "/v1/stats", None)?.json()?,
    };
    if json {
        let out = if name.is_some() { &v[0] } else { &v };
        println!("{}", serde_json::to_string_pretty(out)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<24} {:<10} {:>9} {:>21} {:>9} {:>10} {:>10} {:>10} {:>10} {:>4}",
        "NAME",
        "STATUS",
        "CPU-S",
        "MEMORY / LIMIT",
        "PIDS",
        "IO-READ",
        "IO-WRITE",
        "NET-RX",
        "NET-TX",
        "OOM"
    );
    for s in v.as_array().into_iter().flatten() {
        let u = &s["usage"];
        let n = |v: &serde_json::Value| v.as_u64();
        let pids = match (n(&u["pids_current"]), n(&u["pids_limit"])) {
            (Some(p), Some(l)) => format!("{p}/{l}"),
            (Some(p), None) => p.to_string(),
            _ => "-".into(),
        };
        println!(
            "{:<24} {:<10} {:>9} {:>21} {:>9} {:>10} {:>10} {:>10} {:>10} {:>4}",
            s["name"].as_str().unwrap_or_default(),
            s["status"].as_str().unwrap_or_default(),
            n(&u["cpu_usage_usec"]).map_or("-".into(), |c| format!("{:.2}", c as f64 / 1e6)),
            format!(
                "{} / {}",
                human_bytes(n(&u["memory_current"])),
                human_bytes(n(&u["memory_limit"]))
            ),
            pids,
            human_bytes(n(&u["io_read_bytes"])),
            human_bytes(n(&u["io_write_bytes"])),
            human_bytes(n(&s["net"]["rx_bytes"])),
            human_bytes(n(&s["net"]["tx_bytes"])),
            opt(n(&s["limit_events"]["oom_kills"])),
        );
    }
    Ok(ExitCode::SUCCESS)
}
