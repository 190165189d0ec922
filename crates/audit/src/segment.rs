//! Log files on disk: naming, listing, and scanning runs of lines for the chain state.
//!
//! A log directory holds `audit-NNNNNNNNNN.jsonl` files (a file index, zero-padded, one more per
//! rotation), an `audit.lock` file used for `flock(2)` between processes (its content names the
//! active file), and nothing else this crate reads.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use memchr::memchr;

use crate::error::AuditError;
use crate::record::{split_hash, LineHead, GENESIS_PREV};

/// Name of the lock file inside the log directory.
pub const LOCK_FILE: &str = "audit.lock";

/// File name for a given file index.
pub(crate) fn file_name(index: u64) -> String {
    format!("audit-{index:010}.jsonl")
}

/// The index of a log file name, or `None` if the name is not a log file.
pub(crate) fn file_index(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("audit-")?.strip_suffix(".jsonl")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The log files of `dir`, oldest first.
pub fn list_files(dir: &Path) -> Result<Vec<PathBuf>, AuditError> {
    let rd = std::fs::read_dir(dir)
        .map_err(|source| AuditError::Read { path: dir.to_owned(), source })?;
    let mut files = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|source| AuditError::Read { path: dir.to_owned(), source })?;
        if let Some(idx) = entry.file_name().to_str().and_then(file_index) {
            files.push((idx, entry.path()));
        }
    }
    files.sort();
    Ok(files.into_iter().map(|(_, p)| p).collect())
}

/// A line that was cut off: bytes after the last `\n` of a file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TornTail {
    /// The file.
    pub file: PathBuf,
    /// Byte offset where the incomplete line starts.
    pub offset: u64,
    /// Number of bytes in the incomplete line.
    pub len: u64,
}

/// What scanning a run of complete lines found.
#[derive(Debug, Clone, Default)]
pub(crate) struct RegionScan {
    /// Number of complete lines.
    pub lines: u64,
    /// Seq and hash of the last complete record.
    pub last: Option<(u64, blake3::Hash)>,
    /// Seq of the last checkpoint record seen.
    pub last_checkpoint_seq: Option<u64>,
    /// Seq of the first record seen.
    pub first_seq: Option<u64>,
    /// Offset (relative to the region) just past the last complete line.
    pub complete_len: u64,
}

/// Scans `buf` (starting at a line boundary) for its last record and last checkpoint. Lines are
/// hashed only as far as needed to read the hash field; full verification is `verify`'s job.
pub(crate) fn scan_region(buf: &[u8], path: &Path, base: u64) -> Result<RegionScan, AuditError> {
    let mut scan = RegionScan::default();
    let mut pos = 0usize;
    while let Some(nl) = memchr(b'\n', &buf[pos..]) {
        let line = &buf[pos..pos + nl];
        let corrupt = |reason: String| AuditError::Corrupt {
            path: path.to_owned(),
            offset: base + pos as u64,
            reason,
        };
        let (_, hash) =
            split_hash(line).ok_or_else(|| corrupt("line does not end in a hash field".into()))?;
        let head: LineHead<'_> =
            serde_json::from_slice(line).map_err(|e| corrupt(format!("not a record: {e}")))?;
        scan.first_seq.get_or_insert(head.seq);
        if head.kind == "checkpoint" {
            scan.last_checkpoint_seq = Some(head.seq);
        }
        scan.last = Some((head.seq, hash));
        scan.lines += 1;
        pos += nl + 1;
        scan.complete_len = pos as u64;
    }
    Ok(scan)
}

/// Reads the whole of `file` from `from` to its current end.
pub(crate) fn read_from(
    file: &File,
    path: &Path,
    from: u64,
    to: u64,
) -> Result<Vec<u8>, AuditError> {
    let mut buf = vec![0u8; (to - from) as usize];
    file.read_exact_at(&mut buf, from)
        .map_err(|source| AuditError::Read { path: path.to_owned(), source })?;
    Ok(buf)
}

/// The chain state at the end of one file.
#[derive(Debug, Clone)]
pub(crate) struct FileTail {
    /// File length.
    pub len: u64,
    /// Scan of the complete lines.
    pub scan: RegionScan,
    /// The incomplete last line, if any.
    pub torn: Option<TornTail>,
}

/// How much of a log's end `scan_file` reads, growing until a checkpoint is in view. Opening
/// the log happens on every ISC start, so it must not cost time proportional to the file (up to
/// the rotation size, 64 MiB): a clean close always ends in a checkpoint, so the first window
/// (a few dozen records) is nearly always enough.
const TAIL_WINDOWS: [u64; 2] = [16 * 1024, 512 * 1024];

/// Scans a log file for its last record, last checkpoint and torn tail: only a window at its
/// end when a checkpoint lies within it, else the whole file.
pub(crate) fn scan_file(file: &File, path: &Path) -> Result<FileTail, AuditError> {
    let len =
        file.metadata().map_err(|source| AuditError::Read { path: path.to_owned(), source })?.len();
    for window in TAIL_WINDOWS {
        if len <= window {
            break;
        }
        let from = len - window;
        let buf = read_from(file, path, from, len)?;
        // The window starts mid-line: begin after its first newline.
        let Some(nl) = memchr(b'\n', &buf) else { continue };
        let start = from + nl as u64 + 1;
        let mut scan = scan_region(&buf[nl + 1..], path, start)?;
        if scan.last_checkpoint_seq.is_some() {
            scan.complete_len += start;
            let torn = (scan.complete_len < len).then(|| TornTail {
                file: path.to_owned(),
                offset: scan.complete_len,
                len: len - scan.complete_len,
            });
            return Ok(FileTail { len, scan, torn });
        }
    }
    let buf = read_from(file, path, 0, len)?;
    let scan = scan_region(&buf, path, 0)?;
    let torn = (scan.complete_len < len).then(|| TornTail {
        file: path.to_owned(),
        offset: scan.complete_len,
        len: len - scan.complete_len,
    });
    Ok(FileTail { len, scan, torn })
}

/// The hash every log starts from.
pub(crate) fn genesis() -> blake3::Hash {
    blake3::Hash::from_hex(GENESIS_PREV).expect("constant is valid hex")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_sort() {
        assert_eq!(file_name(7), "audit-0000000007.jsonl");
        assert_eq!(file_index("audit-0000000007.jsonl"), Some(7));
        assert_eq!(file_index("audit-x.jsonl"), None);
        assert_eq!(file_index("audit.lock"), None);
    }
}
