//! Offline verification: walk the chain and the checkpoint signatures and name the first bad
//! record and why. Works on a log directory or on any list of files (e.g. an export copied off
//! the host), with only the public key.

use std::path::{Path, PathBuf};

use ed25519_dalek::{Signature, Verifier, VerifyingKey};

use crate::error::AuditError;
use crate::keys::{checkpoint_message, key_id};
use crate::record::{fast_head, from_hex, hash_body, split_hash, LineHead, Record};
use crate::segment::{genesis, list_files, TornTail};

/// How to verify.
#[derive(Debug, Clone, Default)]
pub struct VerifyOptions {
    /// `false`: the input must start at the genesis record (seq 1). `true`: the input may start
    /// anywhere (an excerpt, or a directory whose oldest files were archived); trust is anchored
    /// at the first valid signed checkpoint, which covers the records chained before it.
    pub from_checkpoint: bool,
    /// A `(seq, hash)` known from elsewhere (the Dock's state, a forwarded copy, an earlier
    /// verification). The log must still contain that record; this is the only way to detect a
    /// truncation that ends exactly on a checkpoint.
    pub anchor: Option<(u64, String)>,
}

/// What is wrong, by cause.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    /// A record's bytes do not match its hash: it was edited (or damaged).
    Edited,
    /// A line is not a record at all.
    Malformed,
    /// Seqs jump forward: records were deleted.
    Deleted,
    /// Records are out of order.
    Reordered,
    /// A record's `prev` does not match its predecessor's hash: the predecessor was replaced and
    /// re-hashed, or a record was inserted.
    ChainBroken,
    /// The input does not start at seq 1 (and `from_checkpoint` was not set).
    MissingStart,
    /// The log was cut: an incomplete last line, or it ends before the anchor.
    Truncated,
    /// A file does not continue its predecessor as its `log_rotate` record says.
    RotationMismatch,
    /// A checkpoint signature (or the head/count it signs) does not verify with the key.
    BadSignature,
    /// Records at the end are not covered by any valid signed checkpoint: they could have been
    /// forged and re-chained by someone without the key (or were written just before a crash).
    Uncovered,
}

/// One finding, located precisely.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Finding {
    /// Cause.
    pub kind: FindingKind,
    /// File it was found in.
    pub file: PathBuf,
    /// Byte offset of the line in that file.
    pub offset: u64,
    /// 1-based line number in that file.
    pub line: u64,
    /// Seq of the record, when it could be read.
    pub seq: Option<u64>,
    /// Human-readable explanation naming the record.
    pub message: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} line {} (byte {}): {}",
            self.file.display(),
            self.line,
            self.offset,
            self.message
        )
    }
}

/// The result of a verification.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct VerifyReport {
    /// Files walked, in order.
    pub files: Vec<PathBuf>,
    /// Records that verified before the first error (all of them if none).
    pub records: u64,
    /// Seq of the first record walked.
    pub first_seq: Option<u64>,
    /// Seq of the last record that verified.
    pub last_seq: Option<u64>,
    /// Checkpoints whose signature verified.
    pub checkpoints: u64,
    /// Seq of the last valid checkpoint record (it covers every record before it).
    pub last_checkpoint_seq: Option<u64>,
    /// The first hard failure; the walk stops there.
    pub first_error: Option<Finding>,
    /// Records after the last valid checkpoint (only reported when there is no hard failure).
    pub uncovered: Option<Finding>,
    /// Torn lines left by crashes that a later `log_rotate` record acknowledged (not errors).
    pub recovered_torn_tails: Vec<TornTail>,
}

impl VerifyReport {
    /// True when every record verified and all of them are covered by a valid signature.
    pub fn is_ok(&self) -> bool {
        self.first_error.is_none() && self.uncovered.is_none()
    }

    /// The finding to show first: the hard error, else the uncovered tail.
    pub fn first_finding(&self) -> Option<&Finding> {
        self.first_error.as_ref().or(self.uncovered.as_ref())
    }
}

/// Verifies the log files in `dir` (oldest first).
pub fn verify_dir(
    dir: &Path,
    key: &VerifyingKey,
    from_checkpoint: bool,
) -> Result<VerifyReport, AuditError> {
    let files = list_files(dir)?;
    if files.is_empty() {
        return Err(AuditError::NoLogFiles { path: dir.to_owned() });
    }
    verify_files(&files, key, &VerifyOptions { from_checkpoint, anchor: None })
}

struct Walker<'k> {
    key: &'k VerifyingKey,
    opts: &'k VerifyOptions,
    report: VerifyReport,
    expected_seq: Option<u64>,
    expected_prev: Option<blake3::Hash>,
    covered_through: u64,
    anchor_seen: bool,
    /// Name and torn tail of the previous non-empty file.
    prev_file: Option<(String, Option<TornTail>)>,
}

/// Verifies `paths` as one chain, in the order given (e.g. a single exported file).
pub fn verify_files(
    paths: &[PathBuf],
    key: &VerifyingKey,
    opts: &VerifyOptions,
) -> Result<VerifyReport, AuditError> {
    let mut w = Walker {
        key,
        opts,
        report: VerifyReport::default(),
        expected_seq: None,
        expected_prev: None,
        covered_through: 0,
        anchor_seen: false,
        prev_file: None,
    };
    for (i, path) in paths.iter().enumerate() {
        let buf = std::fs::read(path)
            .map_err(|source| AuditError::Read { path: path.clone(), source })?;
        w.report.files.push(path.clone());
        if let Err(f) = w.walk_file(path, &buf, i + 1 == paths.len()) {
            w.report.first_error = Some(*f);
            return Ok(w.report);
        }
    }
    w.finish(paths.last());
    Ok(w.report)
}

type Step = Result<(), Box<Finding>>;

impl Walker<'_> {
    fn walk_file(&mut self, path: &Path, whole: &[u8], is_last: bool) -> Step {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("").to_owned();
        // The records end at the reserved tail (NUL bytes, `segment`). Anything but NULs after
        // its start (a crash persisted a later page before an earlier one) is outside the
        // chain: it counts as a torn tail, as the writer that found it counted it.
        let buf = crate::segment::records_part(whole);
        let data_end = whole.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
        let mut spans = Vec::new();
        let mut pos = 0usize;
        while let Some(nl) = memchr::memchr(b'\n', &buf[pos..]) {
            spans.push((pos, pos + nl));
            pos += nl + 1;
        }
        // Hashing and parsing each line is independent: spread it over the CPUs, then walk the
        // chain in order.
        let pres = pre_check_all(buf, &spans);
        for (i, ((start, end), pre)) in spans.iter().zip(pres).enumerate() {
            let at = Loc { file: path, offset: *start as u64, line: i as u64 + 1 };
            let pre = pre.map_err(|(kind, seq, msg)| at.finding(kind, seq, msg))?;
            self.check_line(&at, pre, &buf[*start..*end], buf, end + 1, i == 0)?;
        }
        let line_no = spans.len() as u64;
        let torn = (pos < data_end).then(|| TornTail {
            file: path.to_owned(),
            offset: pos as u64,
            len: (data_end - pos) as u64,
        });
        if let Some(t) = &torn {
            if is_last {
                return Err(Box::new(Finding {
                    kind: FindingKind::Truncated,
                    file: path.to_owned(),
                    offset: t.offset,
                    line: line_no + 1,
                    seq: None,
                    message: format!(
                        "the log ends in an incomplete record ({} bytes at offset {}) after seq {}: \
                         a crash in the middle of an append, or a truncation",
                        t.len,
                        t.offset,
                        self.report.last_seq.unwrap_or(0)
                    ),
                }));
            }
        }
        if !buf.is_empty() {
            self.prev_file = Some((name, torn));
        }
        Ok(())
    }

    fn check_line(
        &mut self,
        at: &Loc<'_>,
        pre: Pre,
        line: &[u8],
        buf: &[u8],
        rest: usize,
        first_in_file: bool,
    ) -> Step {
        let Pre { seq, prev, stored, tag } = pre;
        self.check_order(at, seq, prev, buf, rest)?;
        if first_in_file {
            self.check_rotation(at, seq, prev, tag, line)?;
        }
        if tag == Tag::Checkpoint {
            self.check_checkpoint(at, seq, prev, line)?;
        }
        if let Some((aseq, ahash)) = &self.opts.anchor {
            if *aseq == seq {
                if stored.to_hex().as_str() != ahash.as_str() {
                    return Err(at.finding(
                        FindingKind::ChainBroken,
                        Some(seq),
                        format!("record seq {seq} differs from the anchor's hash {ahash}: the log was rewritten"),
                    ));
                }
                self.anchor_seen = true;
            }
        }
        self.report.first_seq.get_or_insert(seq);
        self.report.last_seq = Some(seq);
        self.report.records += 1;
        self.expected_seq = Some(seq + 1);
        self.expected_prev = Some(stored);
        Ok(())
    }

    fn check_order(
        &mut self,
        at: &Loc<'_>,
        seq: u64,
        prev: blake3::Hash,
        buf: &[u8],
        rest: usize,
    ) -> Step {
        let Some(exp) = self.expected_seq else {
            if !self.opts.from_checkpoint && (seq != 1 || prev != genesis()) {
                return Err(at.finding(
                    FindingKind::MissingStart,
                    Some(seq),
                    format!(
                        "the log starts at seq {seq}, not at the genesis record seq 1: earlier records \
                         or files are missing (verify with from_checkpoint to check an excerpt)"
                    ),
                ));
            }
            return Ok(());
        };
        if seq > exp {
            if seq_appears_later(&buf[rest..], exp) {
                return Err(at.finding(
                    FindingKind::Reordered,
                    Some(seq),
                    format!("record seq {seq} is out of order: it appears before seq {exp}"),
                ));
            }
            return Err(at.finding(
                FindingKind::Deleted,
                Some(seq),
                format!(
                    "seq jumps from {} to {seq}: record{} deleted",
                    exp - 1,
                    if seq - exp == 1 {
                        format!(" seq {exp} was")
                    } else {
                        format!("s seq {exp}..={} were", seq - 1)
                    }
                ),
            ));
        }
        if seq < exp {
            return Err(at.finding(
                FindingKind::Reordered,
                Some(seq),
                format!(
                    "record seq {seq} appears after seq {}: records were reordered or duplicated",
                    exp - 1
                ),
            ));
        }
        if Some(prev) != self.expected_prev {
            return Err(at.finding(
                FindingKind::ChainBroken,
                Some(seq),
                format!(
                    "record seq {seq} does not chain to seq {}: seq {} was replaced and re-hashed, \
                     or seq {seq} was inserted",
                    exp - 1,
                    exp - 1
                ),
            ));
        }
        Ok(())
    }

    fn check_rotation(
        &mut self,
        at: &Loc<'_>,
        seq: u64,
        prev: blake3::Hash,
        tag: Tag,
        line: &[u8],
    ) -> Step {
        let Some((prev_name, torn)) = self.prev_file.take() else {
            return Ok(());
        };
        let bad = |msg: String| Err(at.finding(FindingKind::RotationMismatch, Some(seq), msg));
        if tag != Tag::LogRotate {
            let kind = serde_json::from_slice::<LineHead<'_>>(line)
                .map(|h| h.kind.into_owned())
                .unwrap_or_default();
            return bad(format!(
                "file starts with record seq {seq} of kind {kind}, not with the log_rotate record \
                 that continues {prev_name}"
            ));
        }
        let rec = parse_record(at, line)?;
        let d = &rec.detail;
        if d["prev_file"].as_str() != Some(prev_name.as_str())
            || d["prev_last_hash"].as_str() != Some(prev.to_hex().as_str())
            || d["prev_last_seq"].as_u64() != Some(seq - 1)
        {
            return bad(format!(
                "log_rotate record seq {seq} says it continues {} at seq {}, but the previous file is \
                 {prev_name} ending at seq {}",
                d["prev_file"],
                d["prev_last_seq"],
                seq - 1
            ));
        }
        if let Some(t) = torn {
            let ack = &d["torn_tail"];
            if ack["offset"].as_u64() != Some(t.offset) || ack["len"].as_u64() != Some(t.len) {
                return Err(Box::new(Finding {
                    kind: FindingKind::Truncated,
                    file: t.file.clone(),
                    offset: t.offset,
                    line: 0,
                    seq: None,
                    message: format!(
                        "{prev_name} ends in an incomplete record ({} bytes at offset {}) that the next \
                         file's log_rotate record does not acknowledge: the file was truncated",
                        t.len, t.offset
                    ),
                }));
            }
            self.report.recovered_torn_tails.push(t);
        }
        Ok(())
    }

    fn check_checkpoint(
        &mut self,
        at: &Loc<'_>,
        seq: u64,
        prev: blake3::Hash,
        line: &[u8],
    ) -> Step {
        let rec = parse_record(at, line)?;
        let d = &rec.detail;
        let bad = |msg: String| Err(at.finding(FindingKind::BadSignature, Some(seq), msg));
        let covers = d["covers_seq"].as_u64();
        let count = d["count"].as_u64();
        let head = d["head"].as_str().and_then(|h| blake3::Hash::from_hex(h).ok());
        let sig = d["sig"].as_str().and_then(from_hex::<64>).map(|b| Signature::from_bytes(&b));
        let (Some(covers), Some(count), Some(head), Some(sig)) = (covers, count, head, sig) else {
            return bad(format!("checkpoint seq {seq} lacks covers_seq, count, head or sig"));
        };
        if covers + 1 != seq || head != prev || count != covers {
            return bad(format!(
                "checkpoint seq {seq} signs seq {covers} (count {count}, head {head}) instead of its \
                 predecessor seq {} with head {prev}",
                seq - 1
            ));
        }
        if self.key.verify(&checkpoint_message(covers, count, &head), &sig).is_err() {
            let kid = d["key_id"].as_str().unwrap_or("?");
            let ours = key_id(self.key);
            return bad(format!(
                "checkpoint seq {seq}: the signature over seq {covers} does not verify with key {ours}{}",
                if kid == ours {
                    String::new()
                } else {
                    format!(" (the record claims key {kid})")
                }
            ));
        }
        self.report.checkpoints += 1;
        self.report.last_checkpoint_seq = Some(seq);
        self.covered_through = seq;
        Ok(())
    }

    fn finish(&mut self, last_file: Option<&PathBuf>) {
        let file = last_file.cloned().unwrap_or_default();
        let last = self.report.last_seq.unwrap_or(0);
        if let Some((aseq, _)) = &self.opts.anchor {
            if !self.anchor_seen {
                self.report.first_error = Some(Finding {
                    kind: FindingKind::Truncated,
                    file,
                    offset: 0,
                    line: 0,
                    seq: Some(last),
                    message: format!(
                        "the log ends at seq {last}, but the anchor says seq {aseq} existed: records \
                         after seq {last} were removed"
                    ),
                });
                return;
            }
        }
        if last > self.covered_through {
            let from =
                self.covered_through.max(self.report.first_seq.unwrap_or(1).saturating_sub(1));
            self.report.uncovered = Some(Finding {
                kind: FindingKind::Uncovered,
                file,
                offset: 0,
                line: 0,
                seq: Some(from + 1),
                message: format!(
                    "records after seq {from} are not covered by a signed checkpoint ({} record{}, up to \
                     seq {last}): they may have been forged and re-chained without the key, or written \
                     just before a crash",
                    last - from,
                    if last - from == 1 { "" } else { "s" }
                ),
            });
        }
    }
}

struct Loc<'a> {
    file: &'a Path,
    offset: u64,
    line: u64,
}

impl Loc<'_> {
    fn finding(&self, kind: FindingKind, seq: Option<u64>, message: String) -> Box<Finding> {
        Box::new(Finding {
            kind,
            file: self.file.to_owned(),
            offset: self.offset,
            line: self.line,
            seq,
            message,
        })
    }
}

/// Record kinds the walk treats specially.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tag {
    Checkpoint,
    LogRotate,
    Other,
}

/// What can be checked of one line on its own.
struct Pre {
    seq: u64,
    prev: blake3::Hash,
    stored: blake3::Hash,
    tag: Tag,
}

type PreError = (FindingKind, Option<u64>, String);

/// Checks one line in isolation: hash field present, hash matches the bytes, record parses.
/// The hot path reads seq, kind and prev by position ([`fast_head`]); serde is only the
/// fallback that names what is wrong with a line not laid out as the writer writes it.
fn pre_check(line: &[u8]) -> Result<Pre, PreError> {
    let Some((body, stored)) = split_hash(line) else {
        return Err((
            FindingKind::Edited,
            None,
            "the line does not end in a valid hash field: the record was edited or damaged".into(),
        ));
    };
    if hash_body(body) != stored {
        let seq_hint = fast_head(line)
            .map(|h| h.seq)
            .or_else(|| serde_json::from_slice::<LineHead<'_>>(line).ok().map(|h| h.seq));
        return Err((
            FindingKind::Edited,
            seq_hint,
            format!(
                "record{} was edited: its bytes do not match its hash",
                seq_hint.map(|s| format!(" seq {s}")).unwrap_or_default()
            ),
        ));
    }
    if let Some(h) = fast_head(line) {
        return Ok(Pre { seq: h.seq, prev: h.prev, stored, tag: tag_of(h.kind) });
    }
    let head: LineHead<'_> = serde_json::from_slice(line).map_err(|e| {
        (FindingKind::Malformed, None, format!("the line is not an audit record: {e}"))
    })?;
    let seq = head.seq;
    let prev = blake3::Hash::from_hex(head.prev.as_bytes()).map_err(|_| {
        (FindingKind::Malformed, Some(seq), format!("record seq {seq} has a malformed prev field"))
    })?;
    Ok(Pre { seq, prev, stored, tag: tag_of(&head.kind) })
}

fn tag_of(kind: &str) -> Tag {
    match kind {
        "checkpoint" => Tag::Checkpoint,
        "log_rotate" => Tag::LogRotate,
        _ => Tag::Other,
    }
}

/// `pre_check` over every line, on all CPUs when there are enough lines to be worth it.
fn pre_check_all(buf: &[u8], spans: &[(usize, usize)]) -> Vec<Result<Pre, PreError>> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpus == 1 || spans.len() < 8192 {
        return spans.iter().map(|&(a, b)| pre_check(&buf[a..b])).collect();
    }
    let chunk = spans.len().div_ceil(cpus);
    std::thread::scope(|s| {
        let handles: Vec<_> = spans
            .chunks(chunk)
            .map(|c| {
                s.spawn(move || c.iter().map(|&(a, b)| pre_check(&buf[a..b])).collect::<Vec<_>>())
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().expect("verify worker panicked")).collect()
    })
}

fn parse_record(at: &Loc<'_>, line: &[u8]) -> Result<Record, Box<Finding>> {
    serde_json::from_slice(line).map_err(|e| {
        at.finding(FindingKind::Malformed, None, format!("the line is not an audit record: {e}"))
    })
}

/// Whether a record with `seq` follows within the next lines (distinguishes a swap from a gap).
fn seq_appears_later(rest: &[u8], seq: u64) -> bool {
    rest.split(|&b| b == b'\n')
        .take(1024)
        .filter_map(|l| serde_json::from_slice::<LineHead<'_>>(l).ok())
        .any(|h| h.seq == seq)
}
