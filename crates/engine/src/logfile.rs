//! Where an ISC's stdout/stderr go: relayed to the monitor's own fds 1 and 2 (`isc run`), or
//! into a size-rotated log file (a Dock-managed monitor).
//!
//! The log file must never slow the service down: the monitor's event loop only copies pipe
//! bytes into a bounded in-memory queue, and a writer thread does the file I/O and rotation.
//! The thread is started by the first output (so after `clone3`: the single-thread rule of the
//! start path holds) and ends after [`WRITER_IDLE`] without output, to be started again by the
//! next: a quiet service costs its monitor no thread (a kernel stack, a task and a user stack,
//! ~40 KiB per ISC). When the disk is
//! slower than the service, the queue fills and further output is dropped and counted instead of
//! back-pressuring the pipe; a marker line in the log says how much was lost. This is the same
//! trade-off journald makes with its rate limits: losing log lines beats stalling the service.
//!
//! Every line in the file starts with the time its first bytes reached the monitor, in UTC
//! with microseconds and a space ([`LINE_PREFIX_LEN`] bytes, `2026-11-28T15:00:00.123456Z `),
//! like `docker logs -t`: readers strip it to print the raw output, or use it for `--since`.
//! The time is taken when the monitor reads the pipe, not when the writer thread catches up. A
//! line that straddles a rotation continues in the new file without a prefix.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::RawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

/// Name of the active log file inside the log directory; rotated files are `output.log.1`
/// (newest) … `output.log.N` (oldest).
pub const LOG_FILE: &str = "output.log";

/// Output held in memory while the writer thread is behind; beyond it, output is dropped.
pub const QUEUE_BYTES: usize = 4 << 20;

/// Length of the timestamp that starts every line, including its trailing space.
pub const LINE_PREFIX_LEN: usize = 28;

/// How long the writer thread waits for output before it ends (the next output starts it again).
pub const WRITER_IDLE: Duration =
    if cfg!(test) { Duration::from_millis(100) } else { Duration::from_secs(2) };

/// Microseconds since the Unix epoch, now.
fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// `unix_us` as RFC 3339 in UTC with microseconds: `2026-11-28T15:00:00.123456Z` (27 bytes
/// for years 0000–9999). Hand-written to keep a date crate out of the monitor.
pub fn format_timestamp(unix_us: u64) -> String {
    let secs = unix_us / 1_000_000;
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        unix_us % 1_000_000
    )
}

/// (year, month, day) of a day count since 1970-01-01 in the proleptic Gregorian calendar
/// (H. Hinnant, "chrono-Compatible Low-Level Date Algorithms", `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = (z - era * 146_097) as u64;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe as i64 + era * 400;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// What the monitor does with the service's stdout and stderr.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Output {
    /// Copy to the monitor's own stdout (fd 1) and stderr (fd 2).
    #[default]
    Relay,
    /// Append both streams to `dir/output.log`; when it would pass `max_bytes`, rotate it to
    /// `output.log.1` and keep at most `keep` rotated files.
    LogDir { dir: PathBuf, max_bytes: u64, keep: u32 },
}

/// One destination of a pipe's bytes.
pub(crate) enum Dest {
    Fd(RawFd),
    Log(Arc<LogSink>),
}

impl Dest {
    /// Destinations for stdout and stderr. For `LogDir`, opens the log file now; its writer
    /// thread is started by the first output, so write only after `clone3`.
    pub(crate) fn for_output(output: &Output) -> io::Result<(Dest, Dest)> {
        match output {
            Output::Relay => Ok((Dest::Fd(1), Dest::Fd(2))),
            Output::LogDir { dir, max_bytes, keep } => {
                let sink = LogSink::start(dir, *max_bytes, *keep)?;
                Ok((Dest::Log(Arc::clone(&sink)), Dest::Log(sink)))
            }
        }
    }

    /// Nothing is queued and no writer thread runs (one that parked its file is reaped), so
    /// the monitor may exec: [`Dest::for_output`] reopens the same file after a wake.
    pub(crate) fn is_stderr(&self) -> bool {
        matches!(self, Dest::Fd(2))
    }

    pub(crate) fn is_idle(&self) -> bool {
        match self {
            Dest::Fd(_) => true,
            Dest::Log(sink) => sink.is_idle(),
        }
    }

    pub(crate) fn write(&self, bytes: &[u8]) {
        match self {
            Dest::Fd(fd) => {
                let mut off = 0usize;
                while off < bytes.len() {
                    // SAFETY: writing from a valid slice to an fd the monitor owns.
                    let w = unsafe {
                        libc::write(*fd, bytes[off..].as_ptr().cast(), bytes.len() - off)
                    };
                    if w <= 0 {
                        break;
                    }
                    off += w as usize;
                }
            }
            Dest::Log(sink) => sink.push(bytes),
        }
    }
}

#[derive(Default)]
struct Queue {
    /// Output with the time it was read from the pipe (µs since the epoch).
    chunks: VecDeque<(u64, Vec<u8>)>,
    bytes: usize,
    dropped: u64,
    closed: bool,
    /// The log file while no writer thread holds it (before the first output, when idle).
    parked: Option<RotatingFile>,
    /// A writer thread has been started and has not parked the file yet.
    running: bool,
}

impl Queue {
    /// Queues `bytes`, or counts them as dropped when the queue is full.
    fn offer(&mut self, at_us: u64, bytes: &[u8]) {
        if self.bytes + bytes.len() > QUEUE_BYTES {
            self.dropped += bytes.len() as u64;
        } else {
            self.bytes += bytes.len();
            self.chunks.push_back((at_us, bytes.to_vec()));
        }
    }
}

/// A bounded queue drained by a writer thread into a rotating file. Dropping the last handle
/// flushes what is queued and joins the thread.
pub(crate) struct LogSink {
    queue: Arc<(Mutex<Queue>, Condvar)>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl LogSink {
    fn start(dir: &Path, max_bytes: u64, keep: u32) -> io::Result<Arc<LogSink>> {
        fs::DirBuilder::new().recursive(true).mode(0o750).create(dir)?;
        let file = RotatingFile::open(dir, max_bytes.max(4096), keep)?;
        let queue = Queue { parked: Some(file), ..Queue::default() };
        Ok(Arc::new(LogSink {
            queue: Arc::new((Mutex::new(queue), Condvar::new())),
            writer: Mutex::new(None),
        }))
    }

    fn is_idle(&self) -> bool {
        {
            let q = lock(&self.queue.0);
            if q.running || !q.chunks.is_empty() || q.dropped > 0 {
                return false;
            }
        }
        if let Some(h) = lock(&self.writer).take() {
            let _ = h.join();
        }
        true
    }

    fn push(&self, bytes: &[u8]) {
        let at = now_us();
        let (queue, cv) = &*self.queue;
        let start = {
            let mut q = lock(queue);
            q.offer(at, bytes);
            !std::mem::replace(&mut q.running, true)
        };
        if start {
            self.start_writer();
        } else {
            cv.notify_one();
        }
    }

    /// Starts a writer thread, which takes the parked file. One attempt, without sleeping in
    /// the monitor's event loop: when `clone` fails (EAGAIN while a task limit, `threads-max`
    /// or an ancestor's pids controller, is hit for a moment; pthread_create(3)), the output
    /// stays queued, the next output tries again, and whatever is left is written on drop.
    fn start_writer(&self) {
        let mut slot = lock(&self.writer);
        // The previous writer parked the file and is ending (or has ended): reap it.
        if let Some(old) = slot.take() {
            let _ = old.join();
        }
        let q = Arc::clone(&self.queue);
        let spawned = std::thread::Builder::new()
            .name("isc-log-writer".into())
            .spawn(move || writer_loop(&q));
        match spawned {
            Ok(h) => *slot = Some(h),
            Err(e) => {
                lock(&self.queue.0).running = false;
                tracing::warn!(error = %e, "no log writer thread for now; output stays queued");
            }
        }
    }
}

impl Drop for LogSink {
    fn drop(&mut self) {
        let (queue, cv) = &*self.queue;
        lock(queue).closed = true;
        cv.notify_one();
        if let Some(h) = lock(&self.writer).take() {
            let _ = h.join();
        }
        // No writer holds the file (never started, idle, or could not start): flush here.
        let mut q = lock(queue);
        if let Some(mut file) = q.parked.take() {
            let (chunks, dropped) = (std::mem::take(&mut q.chunks), std::mem::take(&mut q.dropped));
            drop(q);
            write_batch(&mut file, &chunks, dropped);
        }
    }
}

fn writer_loop(queue: &(Mutex<Queue>, Condvar)) {
    let (lock_, cv) = queue;
    let Some(mut file) = lock(lock_).parked.take() else { return };
    loop {
        let (chunks, dropped, closed) = {
            let mut q = lock(lock_);
            while q.chunks.is_empty() && q.dropped == 0 && !q.closed {
                let (g, waited) =
                    cv.wait_timeout(q, WRITER_IDLE).unwrap_or_else(|e| e.into_inner());
                q = g;
                if waited.timed_out() && q.chunks.is_empty() && q.dropped == 0 && !q.closed {
                    // Idle: give the file back and end; the next output starts a new writer.
                    q.parked = Some(file);
                    q.running = false;
                    return;
                }
            }
            let chunks = std::mem::take(&mut q.chunks);
            q.bytes = 0;
            (chunks, std::mem::take(&mut q.dropped), q.closed)
        };
        write_batch(&mut file, &chunks, dropped);
        if closed {
            return;
        }
    }
}

/// Writes queued output, then the marker for what the full queue dropped.
fn write_batch(file: &mut RotatingFile, chunks: &VecDeque<(u64, Vec<u8>)>, dropped: u64) {
    for (at, c) in chunks {
        file.write_lines(*at, c);
    }
    if dropped > 0 {
        if !file.at_line_start {
            file.write_lines(now_us(), b"\n");
        }
        let marker = format!(
            "[isc: {dropped} bytes of output dropped: the log disk was slower than the service]\n"
        );
        file.write_lines(now_us(), marker.as_bytes());
    }
}

/// `output.log` plus its rotated predecessors.
struct RotatingFile {
    dir: PathBuf,
    max_bytes: u64,
    keep: u32,
    file: Option<File>,
    size: u64,
    failed: bool,
    /// The next byte starts a line (and gets a timestamp).
    at_line_start: bool,
}

/// Whether the last byte of `file` (of length `len` > 0) is a newline.
fn ends_with_newline(file: &File, len: u64) -> io::Result<bool> {
    use std::os::unix::fs::FileExt;
    let mut last = [0u8; 1];
    file.read_exact_at(&mut last, len - 1)?;
    Ok(last[0] == b'\n')
}

/// Opened for reading too: [`RotatingFile::open`] looks at the last byte.
fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).read(true).append(true).mode(0o640).open(path)
}

impl RotatingFile {
    fn open(dir: &Path, max_bytes: u64, keep: u32) -> io::Result<RotatingFile> {
        let mut file = open_append(&dir.join(LOG_FILE))?;
        let mut size = file.metadata()?.len();
        // An earlier run that ended mid-line: end that line, so this run's first line gets its
        // own timestamp.
        if size > 0 && !ends_with_newline(&file, size)? {
            file.write_all(b"\n")?;
            size += 1;
        }
        Ok(RotatingFile {
            dir: dir.into(),
            max_bytes,
            keep,
            file: Some(file),
            size,
            failed: false,
            at_line_start: true,
        })
    }

    /// Writes `bytes` read at `at_us`, with a timestamp before every line that starts in them.
    fn write_lines(&mut self, at_us: u64, bytes: &[u8]) {
        let stamp = format!("{} ", format_timestamp(at_us));
        let mut out = Vec::with_capacity(bytes.len() + LINE_PREFIX_LEN);
        for line in bytes.split_inclusive(|b| *b == b'\n') {
            if self.at_line_start {
                out.extend_from_slice(stamp.as_bytes());
            }
            out.extend_from_slice(line);
            self.at_line_start = line.ends_with(b"\n");
        }
        self.write(&out);
    }

    fn rotated(&self, i: u32) -> PathBuf {
        self.dir.join(format!("{LOG_FILE}.{i}"))
    }

    /// Shifts `output.log.i` to `.i+1` (dropping the oldest) and starts a new `output.log`.
    /// Readers that follow by path notice the new inode and finish the old one first.
    fn rotate(&mut self) -> io::Result<()> {
        self.file = None;
        if self.keep == 0 {
            fs::remove_file(self.dir.join(LOG_FILE))?;
        } else {
            let _ = fs::remove_file(self.rotated(self.keep));
            for i in (1..self.keep).rev() {
                let from = self.rotated(i);
                if from.exists() {
                    fs::rename(&from, self.rotated(i + 1))?;
                }
            }
            fs::rename(self.dir.join(LOG_FILE), self.rotated(1))?;
        }
        self.file = Some(open_append(&self.dir.join(LOG_FILE))?);
        self.size = 0;
        Ok(())
    }

    fn write(&mut self, bytes: &[u8]) {
        let result = (|| {
            if self.file.is_none() {
                self.file = Some(open_append(&self.dir.join(LOG_FILE))?);
                self.size = 0;
            }
            if self.size > 0 && self.size + bytes.len() as u64 > self.max_bytes {
                self.rotate()?;
            }
            let f = self.file.as_mut().expect("opened above");
            f.write_all(bytes)?;
            self.size += bytes.len() as u64;
            io::Result::Ok(())
        })();
        match result {
            Ok(()) => self.failed = false,
            Err(e) => {
                // Logged once per failure streak; the file is reopened on the next write.
                if !self.failed {
                    tracing::error!(dir = %self.dir.display(), error = %e, "writing the ISC's log file; output is lost until it works again");
                }
                self.failed = true;
                self.file = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(dir: &Path, name: &str) -> String {
        fs::read_to_string(dir.join(name)).unwrap_or_default()
    }

    #[test]
    fn rotates_by_size_and_keeps_n_files() {
        let d = tempfile::tempdir().unwrap();
        let (out, err) = Dest::for_output(&Output::LogDir {
            dir: d.path().join("logs"),
            max_bytes: 4096,
            keep: 2,
        })
        .unwrap();
        // 996 bytes + the 28-byte timestamp: 1024 per line, four lines per file.
        let line = [b'x'; 995];
        for i in 0..20u8 {
            let mut l = line.to_vec();
            l[0] = b'a' + i;
            l.push(b'\n');
            if i % 2 == 0 { &out } else { &err }.write(&l);
        }
        drop(out);
        drop(err);
        let logs = d.path().join("logs");
        let cur = read(&logs, LOG_FILE);
        let one = read(&logs, "output.log.1");
        let two = read(&logs, "output.log.2");
        assert!(!logs.join("output.log.3").exists(), "only `keep` rotated files remain");
        assert_eq!((cur.len(), one.len(), two.len()), (4096, 4096, 4096));
        // Newest lines in the current file, in order, nothing lost across the boundary.
        let firsts: Vec<u8> = [two, one, cur]
            .iter()
            .flat_map(|s| s.lines().map(|l| l.as_bytes()[LINE_PREFIX_LEN]).collect::<Vec<_>>())
            .collect();
        assert_eq!(firsts, (8..20u8).map(|i| b'a' + i).collect::<Vec<_>>());
    }

    #[test]
    fn a_full_queue_drops_and_says_so_instead_of_blocking() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("logs");
        let sink = LogSink::start(&dir, 1 << 30, 1).unwrap();
        // Under the queue lock the writer cannot drain: a full queue must refuse, not block.
        {
            let (lock, _) = &*sink.queue;
            let mut q = lock.lock().unwrap();
            q.offer(1, &vec![b'y'; QUEUE_BYTES]);
            q.offer(2, b"lost line\n");
            assert_eq!((q.bytes, q.dropped), (QUEUE_BYTES, 10));
        }
        drop(sink);
        let log = read(&dir, LOG_FILE);
        assert!(!log.contains("lost line"));
        assert!(
            log.ends_with(
                "[isc: 10 bytes of output dropped: the log disk was slower than the service]\n"
            ),
            "{}",
            &log[log.len() - 100..]
        );
    }

    #[test]
    fn the_writer_starts_with_output_ends_when_idle_and_starts_again() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("logs");
        let sink = LogSink::start(&dir, 1 << 20, 1).unwrap();
        let running = |s: &LogSink| lock(&s.queue.0).running;
        assert!(!running(&sink) && lock(&sink.writer).is_none(), "no thread before output");
        let wait_for = |what: &str, cond: &dyn Fn() -> bool| {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while !cond() {
                assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
                std::thread::sleep(Duration::from_millis(5));
            }
        };
        sink.push(b"first\n");
        wait_for("the first line", &|| read(&dir, LOG_FILE).contains("first\n"));
        wait_for("the idle writer to end", &|| !running(&sink));
        assert!(lock(&sink.queue.0).parked.is_some(), "the idle writer parks the file");
        sink.push(b"second\n");
        wait_for("the second line", &|| read(&dir, LOG_FILE).contains("second\n"));
        sink.push(b"third\n");
        drop(sink);
        let lines: Vec<String> =
            read(&dir, LOG_FILE).lines().map(|l| l[LINE_PREFIX_LEN..].to_owned()).collect();
        assert_eq!(lines, ["first", "second", "third"]);
    }

    #[test]
    fn timestamps_are_rfc3339_utc_with_microseconds() {
        assert_eq!(format_timestamp(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(format_timestamp(1_795_878_000_000_042), "2026-11-28T15:00:00.000042Z");
        assert_eq!(format_timestamp(1_709_251_199_999_999), "2024-02-29T23:59:59.999999Z");
        assert_eq!(format_timestamp(951_868_800_000_000), "2000-03-01T00:00:00.000000Z");
        assert_eq!(format_timestamp(1_795_878_000_000_000).len() + 1, LINE_PREFIX_LEN);
    }

    #[test]
    fn every_line_starts_with_the_time_its_first_bytes_arrived() {
        let d = tempfile::tempdir().unwrap();
        // A previous run ended mid-line: that line is ended before this run's first one.
        std::fs::write(d.path().join(LOG_FILE), "old partial").unwrap();
        let mut f = RotatingFile::open(d.path(), 1 << 20, 1).unwrap();
        let t0 = 1_795_878_000_000_000;
        f.write_lines(t0, b"one\ntw");
        f.write_lines(t0 + 1, b"o\n");
        f.write_lines(t0 + 2, b"\nthree\nfour");
        drop(f);
        assert_eq!(
            read(d.path(), LOG_FILE),
            "old partial\n\
             2026-11-28T15:00:00.000000Z one\n\
             2026-11-28T15:00:00.000000Z two\n\
             2026-11-28T15:00:00.000002Z \n\
             2026-11-28T15:00:00.000002Z three\n\
             2026-11-28T15:00:00.000002Z four"
        );
    }
}
