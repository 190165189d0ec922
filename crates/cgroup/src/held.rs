//! Interface files opened ahead of time and read later with `pread(2)` from offset 0.
//!
//! Why: the exit record needs the cgroup's limit-event counters the moment the service ends,
//! on the path `isc run`'s return waits for. Each cgroupfs read there was an `open(2)` walk of
//! a long kernfs path, a `kernfs_open_file` and a `seq_file` set up, one read and a close:
//! ~19 µs per file, 95 µs for the five counters of a v1 ISC. The files are opened while the
//! service runs instead, and a seq_file read at offset 0 starts a fresh show (fs/seq_file.c,
//! `seq_read_iter`), so the values are the current ones. Cost: five open files per ISC, whose
//! seq buffers are allocated only at that one read.
//!
//! [`ThroughHeld`] is a [`CgroupFs`] around the real one: in opening mode every read opens and
//! keeps the file instead, so running a backend's reader once through it holds exactly the files
//! that reader reads; in reading mode held files are read with `pread`, others as usual.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::fsops::CgroupFs;

/// A file as the opening pass found it.
#[derive(Debug)]
enum Held {
    Open(File),
    /// ENOENT: a controller or kernel feature this host lacks (e.g. `memory.memsw.failcnt`
    /// without swap accounting); answered without a syscall.
    Absent,
}

/// The files held for one cgroup.
#[derive(Debug, Default)]
pub(crate) struct HeldFiles(Mutex<HashMap<PathBuf, Held>>);

impl HeldFiles {
    fn files(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, Held>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Closes every held file (before the cgroup's directories are removed).
    pub(crate) fn release(&self) {
        self.files().clear();
    }

    /// The whole content of held file `path`, or `None` when it is not held.
    fn read(&self, path: &Path) -> Option<io::Result<String>> {
        let files = self.files();
        let file = match files.get(path)? {
            Held::Open(file) => file,
            Held::Absent => return Some(Err(io::Error::from(io::ErrorKind::NotFound))),
        };
        let mut out = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            match file.read_at(&mut chunk, out.len() as u64) {
                Ok(0) => break,
                Ok(n) => out.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Some(Err(e)),
            }
        }
        Some(String::from_utf8(out).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)))
    }
}

/// A [`CgroupFs`] that reads through [`HeldFiles`] (see the module doc).
pub(crate) struct ThroughHeld<'a> {
    pub inner: &'a dyn CgroupFs,
    pub held: &'a HeldFiles,
    /// Open and hold each file a read asks for, answering `0`: a value every reader of the
    /// event files parses (a flat-keyed reader skips the line), so the pass goes through all.
    pub opening: bool,
}

impl std::fmt::Debug for ThroughHeld<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThroughHeld").field("opening", &self.opening).finish()
    }
}

impl CgroupFs for ThroughHeld<'_> {
    fn mkdir(&self, path: &Path) -> io::Result<()> {
        self.inner.mkdir(path)
    }
    fn rmdir(&self, path: &Path) -> io::Result<()> {
        self.inner.rmdir(path)
    }
    fn read(&self, path: &Path) -> io::Result<String> {
        if self.opening {
            let held = match File::open(path) {
                Ok(file) => Held::Open(file),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Held::Absent,
                Err(e) => return Err(e),
            };
            let absent = matches!(held, Held::Absent);
            self.held.files().insert(path.to_path_buf(), held);
            return if absent { Err(io::ErrorKind::NotFound.into()) } else { Ok("0\n".into()) };
        }
        match self.held.read(path) {
            Some(result) => result,
            None => self.inner.read(path),
        }
    }
    fn write(&self, path: &Path, value: &str) -> io::Result<()> {
        self.inner.write(path, value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fsops::RealFs;

    #[test]
    fn a_held_file_is_read_from_its_start_every_time_and_absent_ones_stay_absent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pids.events");
        std::fs::write(&path, "max 0\n").unwrap();
        let held = HeldFiles::default();
        let opening = ThroughHeld { inner: &RealFs, held: &held, opening: true };
        assert_eq!(opening.read(&path).unwrap(), "0\n");
        let missing = dir.path().join("memory.memsw.failcnt");
        assert_eq!(opening.read(&missing).unwrap_err().kind(), io::ErrorKind::NotFound);
        // Replaced content under the same inode (as the kernel regenerates it at each read).
        std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&path)
            .and_then(|mut f| std::io::Write::write_all(&mut f, b"max 3\n"))
            .unwrap();
        let reading = ThroughHeld { inner: &RealFs, held: &held, opening: false };
        assert_eq!(reading.read(&path).unwrap(), "max 3\n");
        assert_eq!(reading.read(&path).unwrap(), "max 3\n");
        // The held descriptor is what is read: a path now naming another file is not seen.
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, "max 9\n").unwrap();
        assert_eq!(reading.read(&path).unwrap(), "max 3\n");
        // An absent file is remembered as absent, even once it exists.
        std::fs::write(&missing, "7\n").unwrap();
        assert_eq!(reading.read(&missing).unwrap_err().kind(), io::ErrorKind::NotFound);
        held.release();
        assert_eq!(reading.read(&path).unwrap(), "max 9\n");
        assert_eq!(reading.read(&missing).unwrap(), "7\n");
    }
}
