//! Reading an ISC's output files: all of it (rotated files oldest first, then the current
//! one), the last N lines, or following it like `tail -F` across rotations.
//!
//! Following works by path: the reader keeps its open file and, at end of file, checks whether
//! `output.log` is now a different inode (the monitor's writer renamed it to `output.log.1`
//! and opened a new one). It then reads the old file to its end first, so no bytes written
//! before the rotation are lost, and continues with the new file from its start.
//!
//! Every stored line starts with the time the monitor read it (`isc_engine::logfile`); a
//! [`LineFilter`] strips that prefix (unless timestamps are wanted) and drops lines older than
//! `since`. A line without a prefix (a line that straddled a rotation, or a file written
//! before lines had timestamps) is printed as stored and takes the time of the line before it;
//! with `since`, such lines before the first timestamp are left out.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use isc_engine::logfile::{LINE_PREFIX_LEN, LOG_FILE};

/// How often a follower checks for new output.
const POLL: Duration = Duration::from_millis(100);

/// The log files of `dir`, oldest first.
pub fn files(dir: &Path) -> Vec<PathBuf> {
    let mut rotated: Vec<(u32, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            let i = n.strip_prefix(LOG_FILE)?.strip_prefix('.')?.parse().ok()?;
            Some((i, e.path()))
        })
        .collect();
    rotated.sort_by_key(|r| std::cmp::Reverse(r.0));
    let mut v: Vec<PathBuf> = rotated.into_iter().map(|(_, p)| p).collect();
    let cur = dir.join(LOG_FILE);
    if cur.exists() {
        v.push(cur);
    }
    v
}

/// Where a reader stopped: the inode of the file last read and the offset reached in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub ino: u64,
    pub offset: u64,
}

/// Everything kept, as `filter` shows it, or only the last `tail` lines of that, and the
/// position reached (to follow on from without a gap). `complete`: the whole answer, so a last
/// line still held back by the filter (its timestamp not read in full) is let out too; a
/// follower passes false and keeps feeding the same filter.
pub fn read(
    dir: &Path,
    filter: &mut LineFilter,
    tail: Option<usize>,
    complete: bool,
) -> io::Result<(Vec<u8>, Option<Position>)> {
    let mut raw = vec![];
    let mut pos = None;
    for f in files(dir) {
        match File::open(&f) {
            Ok(mut file) => {
                let n = file.read_to_end(&mut raw)?;
                pos = Some(Position { ino: file.metadata()?.ino(), offset: n as u64 });
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    let mut all = Vec::with_capacity(raw.len());
    filter.feed(&raw, &mut all);
    drop(raw);
    if complete {
        filter.finish(&mut all);
    }
    if let Some(n) = tail {
        if n == 0 {
            return Ok((vec![], pos));
        }
        let body = all.strip_suffix(b"\n").unwrap_or(&all);
        let start = body
            .iter()
            .enumerate()
            .rev()
            .filter(|(_, b)| **b == b'\n')
            .nth(n - 1)
            .map(|(i, _)| i + 1)
            .unwrap_or(0);
        all.drain(..start);
    }
    Ok((all, pos))
}

/// What a reader wants of the stored lines.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct View {
    /// Only lines stamped at or after this time (µs since the epoch).
    pub since_us: Option<u64>,
    /// Keep each line's timestamp (`2026-11-28T15:00:00.123456Z `) in front of it.
    pub timestamps: bool,
}

/// Turns stored bytes into what a [`View`] asks for, line by line, across any number of
/// [`LineFilter::feed`] calls (bytes may split lines and timestamps anywhere). Bytes of a line
/// are passed on as soon as its timestamp is known, so a follower sees partial lines.
#[derive(Debug, Default)]
pub struct LineFilter {
    view: View,
    /// The start of the current line, until it holds a whole timestamp or ends.
    head: Vec<u8>,
    /// Inside a line whose timestamp was read: whether it is shown.
    showing: Option<bool>,
    /// The time of the last stamped line.
    last_us: Option<u64>,
}

impl LineFilter {
    pub fn new(view: View) -> LineFilter {
        LineFilter { view, ..LineFilter::default() }
    }

    /// Appends to `out` what `bytes` hold for the reader.
    pub fn feed(&mut self, mut bytes: &[u8], out: &mut Vec<u8>) {
        while !bytes.is_empty() {
            let end = bytes.iter().position(|b| *b == b'\n').map_or(bytes.len(), |i| i + 1);
            match self.showing {
                Some(show) => {
                    if show {
                        out.extend_from_slice(&bytes[..end]);
                    }
                    if bytes[end - 1] == b'\n' {
                        self.showing = None;
                    }
                    bytes = &bytes[end..];
                }
                None => {
                    let take = end.min(LINE_PREFIX_LEN - self.head.len());
                    self.head.extend_from_slice(&bytes[..take]);
                    bytes = &bytes[take..];
                    if self.head.len() == LINE_PREFIX_LEN || self.head.ends_with(b"\n") {
                        self.decide(out);
                    }
                }
            }
        }
    }

    /// Lets out a last line whose start is still held back (the output ends inside it).
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if !self.head.is_empty() {
            self.decide(out);
        }
    }

    fn decide(&mut self, out: &mut Vec<u8>) {
        let head = std::mem::take(&mut self.head);
        let stamp = (head.len() == LINE_PREFIX_LEN && head[LINE_PREFIX_LEN - 1] == b' ')
            .then(|| std::str::from_utf8(&head[..LINE_PREFIX_LEN - 1]).ok())
            .flatten()
            .and_then(parse_rfc3339);
        if stamp.is_some() {
            self.last_us = stamp;
        }
        let show = match self.view.since_us {
            None => true,
            Some(since) => self.last_us.is_some_and(|t| t >= since),
        };
        if show && (stamp.is_none() || self.view.timestamps) {
            out.extend_from_slice(&head);
        }
        self.showing = (!head.ends_with(b"\n")).then_some(show);
    }
}

/// Microseconds since the epoch of an RFC 3339 time: `2026-11-28T15:00:00Z`, with optional
/// fraction (`.5`, `.123456`; beyond µs ignored) and `Z` or an offset (`+01:00`).
pub fn parse_rfc3339(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<u64> {
        let part = b.get(r)?;
        part.iter().all(u8::is_ascii_digit).then(|| std::str::from_utf8(part).ok()?.parse().ok())?
    };
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut i = 19;
    let mut micros = 0u64;
    if b[i] == b'.' {
        let digits = b[i + 1..].iter().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 {
            return None;
        }
        for k in 0..6 {
            micros = micros * 10
                + b.get(i + 1 + k).filter(|_| k < digits).map_or(0, |c| u64::from(c - b'0'));
        }
        i += 1 + digits;
    }
    let offset_s: i64 = match b.get(i..)? {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), _, _, b':', _, _] => {
            let (oh, om) = (num(i + 1..i + 3)? as i64, num(i + 4..i + 6)? as i64);
            if oh > 23 || om > 59 {
                return None;
            }
            let o = oh * 3600 + om * 60;
            if *sign == b'+' {
                o
            } else {
                -o
            }
        }
        _ => return None,
    };
    let days = days_from_civil(y as i64, mo as u32, d as u32);
    let secs = days * 86_400 + (h * 3600 + mi * 60 + sec) as i64 - offset_s;
    u64::try_from(secs).ok().map(|s| s * 1_000_000 + micros)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = (y - era * 400) as u64;
    let mp = u64::from(if m > 2 { m - 3 } else { m + 9 });
    let doy = (153 * mp + 2) / 5 + u64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe as i64 - 719_468
}

/// The time `--since` means, in µs since the epoch: an RFC 3339 time, Unix seconds, or a
/// duration before `now_us` (`90s`, `10m`, `1h30m`, `2d`).
pub fn parse_since(s: &str, now_us: u64) -> Result<u64, String> {
    let s = s.trim();
    if let Some(t) = parse_rfc3339(s) {
        return Ok(t);
    }
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(secs.saturating_mul(1_000_000));
    }
    let bad = || {
        format!(
            "`{s}` is not a time; fix: give a duration (`90s`, `10m`, `1h30m`, `2d`), an RFC 3339 time (`2026-11-28T15:00:00Z`) or Unix seconds"
        )
    };
    let mut total_s = 0u64;
    let mut rest = s;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        let unit = match rest.as_bytes().get(digits) {
            Some(b's') => 1,
            Some(b'm') => 60,
            Some(b'h') => 3600,
            Some(b'd') => 86_400,
            _ => return Err(bad()),
        };
        total_s = total_s.saturating_add(n.saturating_mul(unit));
        rest = &rest[digits + 1..];
    }
    Ok(now_us.saturating_sub(total_s.saturating_mul(1_000_000)))
}

/// Opens the file at `from` (still `output.log`, or already rotated to `output.log.1`) at its
/// offset; `None` if it is gone.
fn reopen(dir: &Path, from: Position) -> Option<File> {
    use std::io::Seek;
    for name in [LOG_FILE.to_string(), format!("{LOG_FILE}.1")] {
        if let Ok(mut f) = File::open(dir.join(name)) {
            if f.metadata().is_ok_and(|m| m.ino() == from.ino)
                && f.seek(io::SeekFrom::Start(from.offset)).is_ok()
            {
                return Some(f);
            }
        }
    }
    None
}

/// Follows `dir/output.log` from `from` (a position returned by [`read`]; else from its
/// current end), calling `sink` with new bytes, until `sink` returns false or `keep_going` says
/// the ISC is gone and the file is drained. A follower that falls more than one rotation
/// behind (output faster than `max_bytes` per poll) skips the files in between.
pub fn follow(
    dir: &Path,
    from: Option<Position>,
    mut sink: impl FnMut(&[u8]) -> bool,
    keep_going: impl Fn() -> bool,
) {
    let path = dir.join(LOG_FILE);
    let mut file: Option<File> = from.and_then(|p| reopen(dir, p));
    let mut at_start = from.is_some() && file.is_none();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        if file.is_none() {
            file = File::open(&path).ok();
            if let (Some(f), false) = (&mut file, at_start) {
                use std::io::Seek;
                let _ = f.seek(io::SeekFrom::End(0));
            }
        }
        let mut progressed = false;
        if let Some(f) = &mut file {
            loop {
                match f.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        progressed = true;
                        if !sink(&buf[..n]) {
                            return;
                        }
                    }
                    Err(_) => break,
                }
            }
            let rotated = match (f.metadata(), std::fs::metadata(&path)) {
                (Ok(open), Ok(now)) => open.ino() != now.ino() || open.dev() != now.dev(),
                (Ok(_), Err(_)) => true,
                _ => false,
            };
            if rotated {
                // The old file is drained (read to EOF above); the new one is read from its
                // start so nothing written after the rotation is skipped.
                file = None;
                at_start = true;
                continue;
            }
        } else {
            // No file yet: whatever appears is new.
            at_start = true;
        }
        if !progressed {
            if !keep_going() {
                return;
            }
            std::thread::sleep(POLL);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    #[test]
    fn read_orders_rotated_files_and_tails_lines() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("output.log.2"), "a\nb\n").unwrap();
        std::fs::write(d.path().join("output.log.1"), "c\n").unwrap();
        std::fs::write(d.path().join("output.log"), "d\ne\n").unwrap();
        std::fs::write(d.path().join("monitor.log"), "not output\n").unwrap();
        let all = |tail| read(d.path(), &mut LineFilter::default(), tail, true).unwrap();
        assert_eq!(all(None).0, b"a\nb\nc\nd\ne\n");
        assert_eq!(all(Some(3)).0, b"c\nd\ne\n");
        assert_eq!(all(Some(0)).0, b"");
        assert_eq!(all(Some(99)).0, b"a\nb\nc\nd\ne\n");
        let ino = std::fs::metadata(d.path().join("output.log")).unwrap().ino();
        assert_eq!(all(None).1, Some(Position { ino, offset: 4 }));
    }

    #[test]
    fn follow_continues_across_rotation_without_loss() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().to_path_buf();
        std::fs::write(dir.join("output.log"), "old\n").unwrap();
        let append = |p: &Path, s: &str| {
            std::fs::OpenOptions::new().append(true).open(p).unwrap().write_all(s.as_bytes())
        };
        let got = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (g, s, dd) = (Arc::clone(&got), Arc::clone(&stop), dir.clone());
        // Bytes written between `read` and `follow` are not lost.
        let (_, pos) = read(&dir, &mut LineFilter::default(), None, false).unwrap();
        append(&dir.join("output.log"), "gap\n").unwrap();
        let t = std::thread::spawn(move || {
            follow(
                &dd,
                pos,
                |b| {
                    g.lock().unwrap().extend_from_slice(b);
                    true
                },
                || !s.load(std::sync::atomic::Ordering::SeqCst),
            )
        });
        std::thread::sleep(Duration::from_millis(250));
        append(&dir.join("output.log"), "one\n").unwrap();
        std::thread::sleep(Duration::from_millis(250));
        // Rotate while the follower sleeps, with unread bytes in the old file.
        append(&dir.join("output.log"), "two\n").unwrap();
        std::fs::rename(dir.join("output.log"), dir.join("output.log.1")).unwrap();
        std::fs::write(dir.join("output.log"), "three\n").unwrap();
        std::thread::sleep(Duration::from_millis(350));
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        t.join().unwrap();
        assert_eq!(
            String::from_utf8(got.lock().unwrap().clone()).unwrap(),
            "gap\none\ntwo\nthree\n"
        );
    }

    const T0: &str = "2026-11-28T15:00:00.000000Z";
    const T0_US: u64 = 1_795_878_000_000_000;

    #[test]
    fn rfc3339_times_and_since_forms() {
        assert_eq!(parse_rfc3339(T0), Some(T0_US));
        assert_eq!(parse_rfc3339("2026-11-28T15:00:00Z"), Some(T0_US));
        assert_eq!(parse_rfc3339("2026-11-28t15:00:00.5z"), Some(T0_US + 500_000));
        assert_eq!(parse_rfc3339("2026-11-28T16:30:00.1234567+01:30"), Some(T0_US + 123_456));
        assert_eq!(parse_rfc3339("2026-11-28T14:00:00-01:00"), Some(T0_US));
        assert_eq!(parse_rfc3339("2024-02-29T23:59:59Z"), Some(1_709_251_199_000_000));
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        for bad in [
            "2026-11-28 15:00:00Z",
            "2026-11-28T15:00:00",
            "2026-13-28T15:00:00Z",
            "2026-11-28T15:00:00.Z",
            "2026-11-28T15:00:00+0100",
            "1969-12-31T23:59:59Z",
            "10m",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
        let now = T0_US;
        assert_eq!(parse_since("10m", now), Ok(T0_US - 600_000_000));
        assert_eq!(parse_since("1h30m5s", now), Ok(T0_US - 5_405_000_000));
        assert_eq!(parse_since("2d", now), Ok(T0_US - 172_800_000_000));
        assert_eq!(parse_since("2026-11-28T15:00:00Z", 0), Ok(T0_US));
        assert_eq!(parse_since("1795878000", 0), Ok(T0_US));
        for bad in ["", "10", "m", "10x", "-5m", "5m3"] {
            if bad == "10" {
                continue; // plain numbers are Unix seconds
            }
            let e = parse_since(bad, now).unwrap_err();
            assert!(e.contains("is not a time; fix: give a duration"), "{bad}: {e}");
        }
    }

    fn stamped(t: u64, line: &str) -> String {
        format!("{} {line}", isc_engine::logfile::format_timestamp(t))
    }

    #[test]
    fn the_filter_strips_stamps_and_keeps_lines_since_a_time_across_any_split() {
        let stored = format!(
            "no stamp: before any\n{}{}{}{}continued after a rotation\n{}",
            stamped(T0_US, "one\n"),
            stamped(T0_US + 1_000_000, "two\n"),
            stamped(T0_US + 2_000_000, "\n"),
            stamped(T0_US + 3_000_000, "three, "),
            stamped(T0_US + 4_000_000, "partial"),
        );
        let run = |view: View, chunk: usize| {
            let mut f = LineFilter::new(view);
            let mut out = vec![];
            for c in stored.as_bytes().chunks(chunk) {
                f.feed(c, &mut out);
            }
            f.finish(&mut out);
            String::from_utf8(out).unwrap()
        };
        for chunk in [1, 5, 27, 28, 29, 4096] {
            assert_eq!(
                run(View::default(), chunk),
                "no stamp: before any\none\ntwo\n\nthree, continued after a rotation\npartial",
                "chunks of {chunk}"
            );
            let since = View { since_us: Some(T0_US + 1_000_000), timestamps: false };
            assert_eq!(
                run(since, chunk),
                "two\n\nthree, continued after a rotation\npartial",
                "chunks of {chunk}"
            );
            let with_stamps = View { since_us: Some(T0_US + 3_000_000), timestamps: true };
            assert_eq!(
                run(with_stamps, chunk),
                format!(
                    "{}continued after a rotation\n{}",
                    stamped(T0_US + 3_000_000, "three, "),
                    stamped(T0_US + 4_000_000, "partial")
                ),
                "chunks of {chunk}"
            );
            let future = View { since_us: Some(T0_US + 9_000_000), timestamps: false };
            assert_eq!(run(future, chunk), "", "chunks of {chunk}");
        }
        // A follower gets a partial line's bytes once its stamp is complete.
        let mut f = LineFilter::default();
        let mut out = vec![];
        f.feed(stamped(T0_US, "prompt> ").as_bytes(), &mut out);
        assert_eq!(out, b"prompt> ");
    }

    #[test]
    fn read_filters_then_tails() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("output.log"),
            format!(
                "{}{}{}",
                stamped(T0_US, "a\n"),
                stamped(T0_US + 10, "b\n"),
                stamped(T0_US + 20, "c\n")
            ),
        )
        .unwrap();
        let mut f = LineFilter::new(View { since_us: Some(T0_US + 10), timestamps: false });
        assert_eq!(read(d.path(), &mut f, None, true).unwrap().0, b"b\nc\n");
        let mut f = LineFilter::new(View { since_us: None, timestamps: true });
        assert_eq!(
            String::from_utf8(read(d.path(), &mut f, Some(1), true).unwrap().0).unwrap(),
            stamped(T0_US + 20, "c\n")
        );
    }
}
