//! Reading an ISC's output files: all of it (rotated files oldest first, then the current
//! one), the last N lines, or following it like `tail -F` across rotations.
//!
//! Following works by path: the reader keeps its open file and, at end of file, checks whether
//! `output.log` is now a different inode (the monitor's writer renamed it to `output.log.1`
//! and opened a new one). It then reads the old file to its end first, so no bytes written
//! before the rotation are lost, and continues with the new file from its start.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use isc_engine::logfile::LOG_FILE;

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

/// Everything kept, or only the last `tail` lines, and the position reached (to follow on
/// from without a gap).
pub fn read(dir: &Path, tail: Option<usize>) -> io::Result<(Vec<u8>, Option<Position>)> {
    let mut all = vec![];
    let mut pos = None;
    for f in files(dir) {
        match File::open(&f) {
            Ok(mut file) => {
                let n = file.read_to_end(&mut all)?;
                pos = Some(Position { ino: file.metadata()?.ino(), offset: n as u64 });
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    if let Some(n) = tail {
        let body = all.strip_suffix(b"\n").unwrap_or(&all);
        let start = body
            .iter()
            .enumerate()
            .rev()
            .filter(|(_, b)| **b == b'\n')
            .nth(n.saturating_sub(1))
            .map(|(i, _)| i + 1)
            .unwrap_or(0);
        if n == 0 {
            return Ok((vec![], pos));
        }
        all.drain(..start);
    }
    Ok((all, pos))
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
        assert_eq!(read(d.path(), None).unwrap().0, b"a\nb\nc\nd\ne\n");
        assert_eq!(read(d.path(), Some(3)).unwrap().0, b"c\nd\ne\n");
        assert_eq!(read(d.path(), Some(0)).unwrap().0, b"");
        assert_eq!(read(d.path(), Some(99)).unwrap().0, b"a\nb\nc\nd\ne\n");
        let ino = std::fs::metadata(d.path().join("output.log")).unwrap().ino();
        assert_eq!(read(d.path(), None).unwrap().1, Some(Position { ino, offset: 4 }));
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
        let (_, pos) = read(&dir, None).unwrap();
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
}
