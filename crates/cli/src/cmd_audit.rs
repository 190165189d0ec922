//! `isc audit verify|show|export|key`: checking and reading the tamper-evident trail.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use isc_audit::{
    export, export_verifiable, query, ExportFormat, ExportSink, Filter, Follower, Kind, Record,
    VerifyOptions, VerifyingKey,
};

use crate::hooks_audit::{audit_dir, keys_dir, public_key_path};
use crate::launch::Dirs;

/// Exit status of `verify` when every record verifies but the newest ones are not yet covered
/// by a signed checkpoint (a monitor still running, or a crash before its closing checkpoint).
const EXIT_UNCOVERED: u8 = 2;

#[derive(Subcommand)]
pub enum AuditCmd {
    /// Walk the hash chain and checkpoint signatures; name the first bad record and why.
    /// Exit 0: intact and signed; 1: tampered or damaged; 2: intact, but the newest records are
    /// not yet covered by a signed checkpoint.
    Verify {
        /// The input may start anywhere (an excerpt or archived prefix): trust starts at the
        /// first valid signed checkpoint.
        #[arg(long)]
        from_checkpoint: bool,
        /// Verify these files (e.g. an export copied off the host) instead of `<root>/audit`.
        #[arg(long = "file", num_args = 1..)]
        files: Vec<PathBuf>,
        /// Public key file (`audit-ed25519.pub`, see `isc audit key`); default `<root>/keys`.
        #[arg(long)]
        key: Option<PathBuf>,
        /// Print the full report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print records, oldest first.
    Show {
        #[command(flatten)]
        filter: FilterArgs,
        /// Keep printing new records as they are appended (Ctrl-C ends).
        #[arg(long)]
        follow: bool,
        /// One stored JSON record per line.
        #[arg(long)]
        json: bool,
    },
    /// Export records as JSON lines or RFC 5424 syslog to a file or a Unix datagram socket.
    /// `--format jsonl --to FILE` without filters writes the records byte for byte, so the file
    /// verifies off the host with `isc audit verify --file FILE --key audit-ed25519.pub`.
    Export {
        #[arg(long, value_enum)]
        format: Format,
        /// `FILE` (appended to; replaced for a full jsonl export) or `unix:PATH` (e.g. unix:/dev/log).
        #[arg(long)]
        to: String,
        #[command(flatten)]
        filter: FilterArgs,
    },
    /// Print the public key that verifies this root's checkpoints (copy it off the host).
    Key {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Format {
    Jsonl,
    Syslog,
}

#[derive(Args)]
pub struct FilterArgs {
    /// Only records of this ISC.
    #[arg(long)]
    isc: Option<String>,
    /// Only these kinds (repeatable), e.g. `seccomp_denial`, `isc_start`.
    #[arg(long = "kind")]
    kinds: Vec<String>,
    /// Only records at or after this time: RFC 3339 (`2026-01-02T03:04:05Z`) or an age such as
    /// `90s`, `15m`, `2h`, `1d`.
    #[arg(long)]
    since: Option<String>,
}

impl FilterArgs {
    fn is_empty(&self) -> bool {
        self.isc.is_none() && self.kinds.is_empty() && self.since.is_none()
    }

    fn to_filter(&self) -> Result<Filter> {
        let mut kinds = Vec::new();
        for k in &self.kinds {
            match Kind::parse(k) {
                Some(kind) => kinds.push(kind),
                None => bail!("unknown record kind `{k}`; see docs/audit.md for the list (e.g. isc_start, isc_exit, seccomp_denial)"),
            }
        }
        let since = self.since.as_deref().map(parse_since).transpose()?;
        Ok(Filter { isc: self.isc.clone(), kinds, since, after_seq: None })
    }
}

/// `2026-01-02T03:04:05Z` (any RFC 3339 `parse_time` accepts) or an age `N{s,m,h,d}`.
fn parse_since(s: &str) -> Result<SystemTime> {
    if let Some(t) = isc_audit::record::parse_time(s) {
        return Ok(t);
    }
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().map_err(|_| bad_since(s))?;
    let secs = match unit {
        "s" | "" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return Err(bad_since(s)),
    };
    SystemTime::now().checked_sub(Duration::from_secs(secs)).ok_or_else(|| bad_since(s))
}

fn bad_since(s: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "--since `{s}` is neither an RFC 3339 time (2026-01-02T03:04:05Z) nor an age like 15m, 2h, 1d"
    )
}

/// Runs one `isc audit` verb.
pub fn dispatch(dirs: &Dirs, cmd: AuditCmd) -> Result<ExitCode> {
    match cmd {
        AuditCmd::Verify { from_checkpoint, files, key, json } => {
            verify(dirs, from_checkpoint, files, key, json)
        }
        AuditCmd::Show { filter, follow, json } => show(dirs, &filter, follow, json),
        AuditCmd::Export { format, to, filter } => export_cmd(dirs, format, &to, &filter),
        AuditCmd::Key { json } => key(dirs, json),
    }
}

fn load_key(dirs: &Dirs, key: Option<PathBuf>) -> Result<VerifyingKey> {
    let path = key.unwrap_or_else(|| public_key_path(dirs));
    isc_audit::load_verifying_key(&path).with_context(|| {
        format!("loading the audit public key {} (pass --key FILE to use another)", path.display())
    })
}

fn verify(
    dirs: &Dirs,
    from_checkpoint: bool,
    files: Vec<PathBuf>,
    key: Option<PathBuf>,
    json: bool,
) -> Result<ExitCode> {
    let key = load_key(dirs, key)?;
    let report = if files.is_empty() {
        isc_audit::verify_dir(&audit_dir(dirs), &key, from_checkpoint)?
    } else {
        isc_audit::verify_files(&files, &key, &VerifyOptions { from_checkpoint, anchor: None })?
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    let span = match (report.first_seq, report.last_seq) {
        (Some(a), Some(b)) => format!("seq {a}..{b}"),
        _ => "no records".into(),
    };
    for t in &report.recovered_torn_tails {
        eprintln!(
            "isc: note: {} has a torn line at byte {} ({} bytes) from a crash, acknowledged by the next file",
            t.file.display(),
            t.offset,
            t.len
        );
    }
    if let Some(f) = &report.first_error {
        let seq = f.seq.map(|s| format!(" at seq {s}")).unwrap_or_default();
        eprintln!("isc: audit trail FAILED verification{seq} ({:?}): {f}", f.kind);
        eprintln!(
            "isc: {} record(s) before it verified ({span}); nothing from there on can be trusted",
            report.records
        );
        return Ok(ExitCode::from(1));
    }
    if let Some(f) = &report.uncovered {
        eprintln!("isc: audit trail intact but NOT fully signed: {f}");
        eprintln!("isc: a running isc signs within 10 s and on exit; verify again, or treat these records as unproven");
        return Ok(ExitCode::from(EXIT_UNCOVERED));
    }
    if !json {
        println!(
            "audit trail OK: {} records ({span}) in {} file(s), {} signed checkpoint(s), last at seq {}",
            report.records,
            report.files.len(),
            report.checkpoints,
            report.last_checkpoint_seq.map(|s| s.to_string()).unwrap_or_else(|| "-".into())
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn actor_str(r: &Record) -> String {
    match r.actor {
        isc_audit::Actor::Isc => "isc".into(),
        isc_audit::Actor::Kernel => "kernel".into(),
        isc_audit::Actor::Uid(u) => format!("uid:{u}"),
    }
}

fn print_record(out: &mut impl Write, r: &Record, json: bool) -> std::io::Result<()> {
    if json {
        writeln!(out, "{}", serde_json::to_string(r).unwrap_or_default())
    } else {
        writeln!(
            out,
            "{:>7} {} {:<16} {:<22} {:<10} {}",
            r.seq,
            r.time,
            r.isc.as_deref().unwrap_or("-"),
            r.kind.as_str(),
            actor_str(r),
            r.detail
        )
    }
}

fn show(dirs: &Dirs, args: &FilterArgs, follow: bool, json: bool) -> Result<ExitCode> {
    let filter = args.to_filter()?;
    let dir = audit_dir(dirs);
    let stdout = std::io::stdout();
    if !follow {
        let mut out = stdout.lock();
        for r in query(&dir, &filter)? {
            if print_record(&mut out, &r, json).is_err() {
                break; // e.g. a closed pipe (`| head`)
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    // A follower may start before the first ISC ever ran: wait for the log to exist.
    while !dir.exists() {
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut f = Follower::new(&dir, filter, false)?;
    loop {
        if let Some(r) = f.next_timeout(Duration::from_secs(1))? {
            let mut out = stdout.lock();
            if print_record(&mut out, &r, json).and_then(|_| out.flush()).is_err() {
                return Ok(ExitCode::SUCCESS);
            }
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

fn export_cmd(dirs: &Dirs, format: Format, to: &str, args: &FilterArgs) -> Result<ExitCode> {
    let dir = audit_dir(dirs);
    let sink = match to.strip_prefix("unix:") {
        Some(p) => ExportSink::UnixDatagram(PathBuf::from(p)),
        None => ExportSink::File(PathBuf::from(to)),
    };
    if let (Format::Jsonl, ExportSink::File(path), true) = (format, &sink, args.is_empty()) {
        let n = export_verifiable(&dir, path)?;
        println!(
            "exported {n} records to {} byte for byte; verify off the host with `isc audit verify --file {} --key {}`",
            path.display(),
            path.display(),
            isc_audit::keys::VERIFYING_KEY_FILE
        );
        return Ok(ExitCode::SUCCESS);
    }
    let records = query(&dir, &args.to_filter()?)?;
    let fmt = match format {
        Format::Jsonl => ExportFormat::JsonLines,
        Format::Syslog => ExportFormat::Syslog { hostname: hostname(), app_name: "isc".into() },
    };
    let n = export(&records, &fmt, &sink)?;
    println!("exported {n} records to {to}");
    Ok(ExitCode::SUCCESS)
}

fn key(dirs: &Dirs, json: bool) -> Result<ExitCode> {
    let path = public_key_path(dirs);
    let key = if path.exists() {
        isc_audit::load_verifying_key(&path)?
    } else {
        // First use: create the pair, exactly as the first `isc run` would.
        isc_audit::load_or_create_signing_key(&keys_dir(dirs))?.verifying_key()
    };
    let hex: String = key.as_bytes().iter().map(|b| format!("{b:02x}")).collect();
    let id = isc_audit::keys::key_id(&key);
    if json {
        println!("{}", serde_json::json!({"public_key": hex, "key_id": id, "file": path}));
    } else {
        println!("{hex}");
        eprintln!("key id {id}; file {} (copy it off the host to verify exports)", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_accepts_rfc3339_and_ages() {
        let t = parse_since("2026-01-02T03:04:05Z").unwrap();
        assert_eq!(isc_audit::record::format_time(t), "2026-01-02T03:04:05.000000000Z");
        let ago = SystemTime::now().duration_since(parse_since("15m").unwrap()).unwrap();
        assert!((899..=901).contains(&ago.as_secs()), "{ago:?}");
        assert!(parse_since("yesterday").is_err());
        assert!(parse_since("5w").is_err());
    }
}
