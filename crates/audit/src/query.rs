//! Reading the trail back: filtered queries, follow mode, and export as JSON lines or RFC 5424
//! syslog messages to a file or a Unix datagram socket.

use std::collections::VecDeque;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use crate::error::AuditError;
use crate::record::{format_time, Actor, Kind, Record};
use crate::segment::list_files;

/// Which records to return. Empty fields match everything.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only records of this ISC.
    pub isc: Option<String>,
    /// Only these kinds (any of them).
    pub kinds: Vec<Kind>,
    /// Only records at or after this time.
    pub since: Option<SystemTime>,
    /// Only records with a seq above this.
    pub after_seq: Option<u64>,
}

impl Filter {
    /// Whether `r` passes the filter.
    pub fn matches(&self, r: &Record) -> bool {
        self.isc.as_deref().is_none_or(|i| r.isc.as_deref() == Some(i))
            && (self.kinds.is_empty() || self.kinds.contains(&r.kind))
            && self.after_seq.is_none_or(|s| r.seq > s)
            // Record times are fixed-width RFC 3339 UTC, so string order is time order.
            && self.since.is_none_or(|t| r.time.as_str() >= format_time(t).as_str())
    }
}

/// Records of the log in `dir` that match `filter`, oldest first. Lines that are not records
/// (a torn tail, damage) are skipped here; `verify_dir` is what reports them.
pub fn query(dir: &Path, filter: &Filter) -> Result<Vec<Record>, AuditError> {
    query_files(&list_files(dir)?, filter)
}

/// Like [`query`], over explicit files (e.g. an exported copy).
pub fn query_files(paths: &[PathBuf], filter: &Filter) -> Result<Vec<Record>, AuditError> {
    let mut out = Vec::new();
    for p in paths {
        let buf =
            std::fs::read(p).map_err(|source| AuditError::Read { path: p.clone(), source })?;
        parse_complete_lines(&buf, filter, &mut out);
    }
    Ok(out)
}

/// Parses the complete lines of `buf`; returns how many bytes they span.
fn parse_complete_lines(buf: &[u8], filter: &Filter, out: &mut impl Extend<Record>) -> usize {
    let mut pos = 0;
    while let Some(nl) = memchr::memchr(b'\n', &buf[pos..]) {
        if let Ok(r) = serde_json::from_slice::<Record>(&buf[pos..pos + nl]) {
            if filter.matches(&r) {
                out.extend(Some(r));
            }
        }
        pos += nl + 1;
    }
    pos
}

/// Follows a log as it grows, across rotations (polling; cheap at the default 100 ms).
pub struct Follower {
    dir: PathBuf,
    filter: Filter,
    file: Option<PathBuf>,
    offset: u64,
    poll: Duration,
    ready: VecDeque<Record>,
}

impl Follower {
    /// Starts following `dir`: from the current end of the log if `from_end`, else from the
    /// oldest record.
    pub fn new(dir: &Path, filter: Filter, from_end: bool) -> Result<Follower, AuditError> {
        let files = list_files(dir)?;
        let (file, offset) = match (files.first(), files.last()) {
            (Some(first), Some(last)) => {
                if from_end {
                    let len = std::fs::metadata(last)
                        .map_err(|source| AuditError::Read { path: last.clone(), source })?
                        .len();
                    // Stay on a line boundary: skip only complete lines.
                    let buf = std::fs::read(last)
                        .map_err(|source| AuditError::Read { path: last.clone(), source })?;
                    let end = buf.iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1);
                    (Some(last.clone()), (end as u64).min(len))
                } else {
                    (Some(first.clone()), 0)
                }
            }
            _ => (None, 0),
        };
        Ok(Follower {
            dir: dir.to_owned(),
            filter,
            file,
            offset,
            poll: Duration::from_millis(100),
            ready: VecDeque::new(),
        })
    }

    /// Sets the polling interval.
    pub fn with_poll_interval(mut self, poll: Duration) -> Follower {
        self.poll = poll;
        self
    }

    /// The next matching record, waiting up to `timeout`; `Ok(None)` on timeout.
    pub fn next_timeout(&mut self, timeout: Duration) -> Result<Option<Record>, AuditError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(r) = self.ready.pop_front() {
                return Ok(Some(r));
            }
            if !self.read_more()? {
                let now = Instant::now();
                if now >= deadline {
                    return Ok(None);
                }
                std::thread::sleep(self.poll.min(deadline - now));
            }
        }
    }

    /// Reads new complete lines; moves to the next file when the current one has none.
    fn read_more(&mut self) -> Result<bool, AuditError> {
        let files = list_files(&self.dir)?;
        let Some(cur) = self.file.clone().or_else(|| files.first().cloned()) else {
            return Ok(false);
        };
        self.file = Some(cur.clone());
        let buf =
            std::fs::read(&cur).map_err(|source| AuditError::Read { path: cur.clone(), source })?;
        let from = (self.offset as usize).min(buf.len());
        let used = parse_complete_lines(&buf[from..], &self.filter, &mut self.ready);
        self.offset += used as u64;
        if used > 0 {
            return Ok(true);
        }
        // Nothing new here: if a newer file exists, this one is finished (a torn tail left in it
        // is reported by verification, not here).
        if let Some(next) = files.iter().find(|p| **p > cur) {
            self.file = Some(next.clone());
            self.offset = 0;
            return Ok(true);
        }
        Ok(false)
    }
}

/// How exported records are encoded.
#[derive(Debug, Clone)]
pub enum ExportFormat {
    /// One JSON record per line, as stored.
    JsonLines,
    /// RFC 5424 syslog messages (facility 13 "log audit").
    Syslog {
        /// HOSTNAME field (`-` if empty).
        hostname: String,
        /// APP-NAME field, e.g. `isc`.
        app_name: String,
    },
}

/// Where exported records go.
#[derive(Debug, Clone)]
pub enum ExportSink {
    /// Appended to a file (created if missing).
    File(PathBuf),
    /// One datagram per record to a Unix datagram socket (e.g. `/dev/log`).
    UnixDatagram(PathBuf),
}

/// Writes `records` to `sink` in `format`; returns how many were written.
pub fn export(
    records: &[Record],
    format: &ExportFormat,
    sink: &ExportSink,
) -> Result<usize, AuditError> {
    let encode = |r: &Record| -> String {
        match format {
            ExportFormat::JsonLines => serde_json::to_string(r).unwrap_or_default(),
            ExportFormat::Syslog { hostname, app_name } => format_syslog(r, hostname, app_name),
        }
    };
    match sink {
        ExportSink::File(path) => {
            let err = |source| AuditError::Export { target: path.display().to_string(), source };
            let mut f = OpenOptions::new().create(true).append(true).open(path).map_err(err)?;
            let mut buf = String::new();
            for r in records {
                buf.push_str(&encode(r));
                buf.push('\n');
            }
            f.write_all(buf.as_bytes()).map_err(err)?;
        }
        ExportSink::UnixDatagram(path) => {
            let err = |source| AuditError::Export { target: path.display().to_string(), source };
            let sock = UnixDatagram::unbound().map_err(err)?;
            for r in records {
                sock.send_to(encode(r).as_bytes(), path).map_err(err)?;
            }
        }
    }
    Ok(records.len())
}

/// Copies the complete records of `dir` byte for byte into one file that `verify_files` accepts
/// off the host (re-encoding is avoided so the hashes still match).
pub fn export_verifiable(dir: &Path, out: &Path) -> Result<u64, AuditError> {
    let err = |source| AuditError::Export { target: out.display().to_string(), source };
    let mut f = std::fs::File::create(out).map_err(err)?;
    let mut n = 0;
    for p in list_files(dir)? {
        let buf =
            std::fs::read(&p).map_err(|source| AuditError::Read { path: p.clone(), source })?;
        let end = buf.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        n += buf[..end].iter().filter(|&&b| b == b'\n').count() as u64;
        f.write_all(&buf[..end]).map_err(err)?;
    }
    f.sync_all().map_err(err)?;
    Ok(n)
}

/// Formats one record as an RFC 5424 message:
/// `<PRI>1 TIMESTAMP HOST APP - KIND [isc@32473 seq=".." isc=".." actor=".." hash=".."] BOM{detail}`.
/// 32473 is the documentation enterprise number of RFC 5612.
pub fn format_syslog(r: &Record, hostname: &str, app_name: &str) -> String {
    let severity = match r.kind {
        Kind::SeccompDenial
        | Kind::LandlockDenial
        | Kind::NetDrop
        | Kind::ImageIntegrityFailure
        | Kind::IscOom
        | Kind::AuditWriteFailure => 4, // warning
        _ => 5, // notice
    };
    let pri = 13 * 8 + severity;
    // RFC 5424 TIME-SECFRAC allows at most 6 digits: keep microseconds.
    let ts = match r.time.len() {
        30 => format!("{}Z", &r.time[..26]),
        _ => r.time.clone(),
    };
    let field = |s: &str| -> String {
        let s: String = s.chars().filter(|c| c.is_ascii_graphic()).take(48).collect();
        if s.is_empty() {
            "-".into()
        } else {
            s
        }
    };
    let esc = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"").replace(']', "\\]");
    let actor = match r.actor {
        Actor::Isc => "isc".to_owned(),
        Actor::Kernel => "kernel".to_owned(),
        Actor::Uid(u) => format!("uid:{u}"),
    };
    let mut sd = format!("[isc@32473 seq=\"{}\"", r.seq);
    if let Some(i) = &r.isc {
        sd.push_str(&format!(" isc=\"{}\"", esc(i)));
    }
    sd.push_str(&format!(" actor=\"{actor}\" hash=\"{}\"]", esc(&r.hash)));
    format!(
        "<{pri}>1 {ts} {} {} - {} {sd} \u{feff}{}",
        field(hostname),
        field(app_name),
        r.kind.as_str(),
        r.detail
    )
}
