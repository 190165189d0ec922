//! Log files on disk: naming, listing, and scanning runs of lines for the chain state.
//!
//! A log directory holds `audit-NNNNNNNNNN.jsonl` files (a file index, zero-padded, one more per
//! rotation), an `audit.lock` file used for `flock(2)` between processes (its content names the
//! active file and where its records end), and nothing else this crate reads.
//!
//! **Reserved tail.** The active file keeps [`RESERVE`] bytes of zeros *written* after its last
//! record, and records are written over them. A later `fdatasync` then has no metadata to
//! commit (no size change, no block allocation: ext4 skips the journal when the inode's
//! datasync tid is already committed, fs/ext4/fsync.c) and costs one data write and a cache
//! flush, not a wait for the jbd2 thread's commit: ~0.1 ms instead of 0.15–0.9 ms here. Records
//! are JSON text and never hold a NUL byte, so a file is its records followed by NULs; readers
//! stop at the first NUL.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use memchr::memchr;

use crate::error::AuditError;
use crate::record::{hash_body, quick_head, split_hash, LineHead, GENESIS_PREV};

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

/// Zeros kept written after the active file's last record (see the module doc): a run of
/// `isc run` appends about 2.5 KiB, so the file grows (and one sync commits metadata) about
/// once per hundred runs.
pub(crate) const RESERVE: u64 = 256 * 1024;

/// The records of `buf` (a whole file or a region starting at a line boundary): everything
/// before its first NUL byte.
///
/// Here and in [`ends_in_checkpoint`] (the path of every open, on every `isc run`'s start)
/// plain slice searches, not the `memchr` crate: its first call runs std's CPU feature
/// detection, a dozen CPUID instructions that each exit to the hypervisor in a VM (~7 µs),
/// for buffers of a few hundred bytes.
pub(crate) fn records_part(buf: &[u8]) -> &[u8] {
    &buf[..buf.iter().position(|&b| b == 0).unwrap_or(buf.len())]
}

/// Where the data of `file` (`physical` bytes long) ends: its records, and a torn line if a
/// writer died mid-write. `hint` is the end the last writer recorded in the lock file; it is
/// trusted only where a record ends (a newline before it, or the start of the file) and the
/// reserved tail (a NUL, or the end of the file) begins, so a writer that died before updating
/// it is noticed. Otherwise (a crash, or a file of an older isc without reserved tail) the end
/// is found by reading back from the end of the file to its last non-NUL byte: the reserved
/// tail is at most [`RESERVE`] + 4 KiB, and this is not the path of a normal start.
pub(crate) fn records_end(
    file: &File,
    path: &Path,
    physical: u64,
    hint: Option<u64>,
) -> Result<u64, AuditError> {
    let read = |buf: &mut [u8], off: u64| {
        file.read_exact_at(buf, off)
            .map_err(|source| AuditError::Read { path: path.to_owned(), source })
    };
    if let Some(h) = hint.filter(|h| *h <= physical) {
        // One read of the bytes on either side of the hinted end.
        let (lo, hi) = (h.saturating_sub(1), (h + 1).min(physical));
        let mut around = [0u8; 2];
        let around = &mut around[..(hi - lo) as usize];
        read(around, lo)?;
        let record_ends = h == 0 || around[0] == b'\n';
        let tail_starts = h == physical || around[(h - lo) as usize] == 0;
        if record_ends && tail_starts {
            return Ok(h);
        }
    }
    let mut end = physical;
    let mut chunk = vec![0u8; 64 * 1024];
    while end > 0 {
        let from = end.saturating_sub(chunk.len() as u64);
        let part = &mut chunk[..(end - from) as usize];
        read(part, from)?;
        if let Some(i) = part.iter().rposition(|&b| b != 0) {
            return Ok(from + i as u64 + 1);
        }
        end = from;
    }
    Ok(0)
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
    // A NUL inside the region (a crash persisted a later page of the reserved tail but not an
    // earlier one) ends the records there; what follows is reported as torn by the caller.
    let buf = records_part(buf);
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
    /// Where its records end (the reserved tail starts).
    pub len: u64,
    /// Its size on disk, the reserved tail included.
    pub physical: u64,
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

/// Scans a log file for its last record, last checkpoint and torn tail: only a window at the
/// end of its records when a checkpoint lies within it, else the whole file. `hint`: see
/// [`records_end`].
pub(crate) fn scan_file(
    file: &File,
    path: &Path,
    hint: Option<u64>,
) -> Result<FileTail, AuditError> {
    let physical =
        file.metadata().map_err(|source| AuditError::Read { path: path.to_owned(), source })?.len();
    let len = records_end(file, path, physical, hint)?;
    if let Some(tail) = ends_in_checkpoint(file, path, len, physical)? {
        return Ok(tail);
    }
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
            return Ok(FileTail { len, physical, scan, torn });
        }
    }
    let buf = read_from(file, path, 0, len)?;
    let scan = scan_region(&buf, path, 0)?;
    let torn = (scan.complete_len < len).then(|| TornTail {
        file: path.to_owned(),
        offset: scan.complete_len,
        len: len - scan.complete_len,
    });
    Ok(FileTail { len, physical, scan, torn })
}

/// The common case at open: the file's last line is a checkpoint (every `isc run` ends with
/// one), so its head is the whole chain state needed, read from the last 1 KiB without parsing
/// the lines before it.
fn ends_in_checkpoint(
    file: &File,
    path: &Path,
    len: u64,
    physical: u64,
) -> Result<Option<FileTail>, AuditError> {
    const LAST_LINE_WINDOW: u64 = 1024;
    if len == 0 {
        return Ok(None);
    }
    let from = len.saturating_sub(LAST_LINE_WINDOW);
    let buf = read_from(file, path, from, len)?;
    let Some((b'\n', body)) = buf.split_last() else { return Ok(None) };
    // The last line must start inside the window (after a newline, or at the file's start).
    let start = match body.iter().rposition(|&b| b == b'\n') {
        Some(nl) => nl + 1,
        None if from == 0 => 0,
        None => return Ok(None),
    };
    let line = &body[start..];
    let Some((hashed, hash)) = split_hash(line) else { return Ok(None) };
    // Its own hash must match too: the quick read trusts nothing the full scan would not.
    let Some((seq, b"checkpoint")) = quick_head(line) else { return Ok(None) };
    if hash_body(hashed) != hash {
        return Ok(None);
    }
    let scan = RegionScan {
        last: Some((seq, hash)),
        last_checkpoint_seq: Some(seq),
        first_seq: Some(seq),
        complete_len: len,
    };
    Ok(Some(FileTail { len, physical, scan, torn: None }))
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
