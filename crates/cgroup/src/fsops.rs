//! The narrow file-system surface the backends use, behind a trait so the v2 backend can be
//! tested against a fake cgroupfs in a temp dir (youki's `Syscall` pattern).

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::error::CgroupError;

/// mkdir/rmdir/read/write on a cgroup filesystem.
pub(crate) trait CgroupFs: Send + Sync + Debug {
    /// Create one cgroup directory (the kernel populates the interface files).
    fn mkdir(&self, path: &Path) -> io::Result<()>;
    /// Remove one cgroup directory (it must hold no processes and no children).
    fn rmdir(&self, path: &Path) -> io::Result<()>;
    /// Read a whole interface file.
    fn read(&self, path: &Path) -> io::Result<String>;
    /// Write one value to an interface file in a single write(2), as cgroupfs requires.
    fn write(&self, path: &Path, value: &str) -> io::Result<()>;
}

/// The real kernel cgroupfs.
#[derive(Debug, Default)]
pub(crate) struct RealFs;

impl CgroupFs for RealFs {
    fn mkdir(&self, path: &Path) -> io::Result<()> {
        std::fs::create_dir(path)
    }
    fn rmdir(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_dir(path)
    }
    fn read(&self, path: &Path) -> io::Result<String> {
        read_pseudo(path)
    }
    fn write(&self, path: &Path, value: &str) -> io::Result<()> {
        // No O_CREAT: a missing interface file means a missing controller, not a new file.
        let mut f = std::fs::OpenOptions::new().write(true).open(path)?;
        let n = f.write(value.as_bytes())?;
        if n != value.len() {
            return Err(io::Error::new(io::ErrorKind::WriteZero, "short write to cgroupfs"));
        }
        Ok(())
    }
}

/// Write `value` to `dir/file`, mapping the error to one that names the file and value.
/// Reads a procfs, sysfs or cgroupfs file whole. They report a size of 0, so
/// `fs::read_to_string` starts with a 32-byte probe and doubles its buffer from there: eight
/// read(2) calls for a 3 KiB mountinfo, each resuming the kernel's seq_file walk. A 16 KiB
/// buffer takes such files in one read and the end-of-file read.
pub(crate) fn read_pseudo(path: &Path) -> io::Result<String> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut chunk = vec![0u8; 16 * 1024];
    let mut out = Vec::new();
    loop {
        match f.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    String::from_utf8(out).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

pub(crate) fn write(
    fs: &dyn CgroupFs,
    dir: &Path,
    file: &str,
    value: &str,
) -> Result<(), CgroupError> {
    let path = dir.join(file);
    tracing::trace!(path = %path.display(), value, "cgroup write");
    fs.write(&path, value).map_err(|source| CgroupError::Write {
        path,
        value: value.to_string(),
        source,
    })
}

/// Read `dir/file`.
pub(crate) fn read(fs: &dyn CgroupFs, dir: &Path, file: &str) -> Result<String, CgroupError> {
    let path = dir.join(file);
    fs.read(&path).map_err(|source| CgroupError::Read { path, source })
}

/// Read `dir/file` if it exists (a controller or kernel feature may be absent).
pub(crate) fn read_opt(
    fs: &dyn CgroupFs,
    dir: &Path,
    file: &str,
) -> Result<Option<String>, CgroupError> {
    let path = dir.join(file);
    match fs.read(&path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(CgroupError::Read { path, source }),
    }
}

/// Parse a single-number file; `max` (v2, v1 pids) means unlimited and gives `None`.
pub(crate) fn parse_limit(text: &str, path: &Path) -> Result<Option<u64>, CgroupError> {
    let t = text.trim();
    if t == "max" {
        return Ok(None);
    }
    t.parse().map(Some).map_err(|_| CgroupError::Parse {
        file: path.display().to_string(),
        line: t.to_string(),
        expected: "an unsigned integer or `max`",
    })
}

/// Read a single-number file if present.
pub(crate) fn read_u64(
    fs: &dyn CgroupFs,
    dir: &Path,
    file: &str,
) -> Result<Option<u64>, CgroupError> {
    match read_opt(fs, dir, file)? {
        Some(text) => parse_limit(&text, &dir.join(file)),
        None => Ok(None),
    }
}

/// Parse a flat-keyed file (`key value` per line: memory.events, pids.events, cpu.stat,
/// memory.oom_control). Non-numeric values are skipped.
pub(crate) fn parse_keyed(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(char::is_whitespace)?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

/// Read a flat-keyed file if present (empty map otherwise).
pub(crate) fn read_keyed(
    fs: &dyn CgroupFs,
    dir: &Path,
    file: &str,
) -> Result<BTreeMap<String, u64>, CgroupError> {
    Ok(read_opt(fs, dir, file)?.map(|t| parse_keyed(&t)).unwrap_or_default())
}

/// The pids in `dir/cgroup.procs`.
pub(crate) fn procs(fs: &dyn CgroupFs, dir: &Path) -> Result<Vec<i32>, CgroupError> {
    let text = read(fs, dir, "cgroup.procs")?;
    Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect())
}

/// Remove `dirs` in reverse creation order, retrying EBUSY briefly: a killed task leaves its
/// cgroup asynchronously after exit. Returns every failure.
/// One rmdir per directory (deepest last listed first), no waiting: true when none is left.
pub(crate) fn try_remove_dirs(fs: &dyn CgroupFs, dirs: &[PathBuf]) -> bool {
    let mut all = true;
    for dir in dirs.iter().rev() {
        match fs.rmdir(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(_) => all = false,
        }
    }
    all
}

pub(crate) fn remove_dirs(fs: &dyn CgroupFs, dirs: &[PathBuf]) -> Vec<CgroupError> {
    let mut errors = Vec::new();
    for dir in dirs.iter().rev() {
        let mut attempt = 0;
        loop {
            match fs.rmdir(dir) {
                Ok(()) => break,
                Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) && attempt < 200 => {
                    attempt += 1;
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(source) => {
                    errors.push(CgroupError::Remove { path: dir.clone(), source });
                    break;
                }
            }
        }
    }
    errors
}

#[cfg(test)]
pub(crate) mod fake {
    //! A fake cgroup v2 filesystem: `mkdir` populates the interface files the kernel would,
    //! `cgroup.kill` empties `cgroup.procs`, `io.max` and `cgroup.procs` accumulate lines.

    use super::*;

    /// Interface files of a fresh v2 cgroup with their kernel defaults.
    const V2_FILES: &[(&str, &str)] = &[
        ("cgroup.procs", ""),
        ("cgroup.subtree_control", ""),
        ("cgroup.kill", ""),
        ("cgroup.events", "populated 0\nfrozen 0\n"),
        ("cpu.stat", "usage_usec 0\nuser_usec 0\nsystem_usec 0\n"),
        ("memory.max", "max\n"),
        ("memory.swap.max", "max\n"),
        ("memory.current", "0\n"),
        ("memory.peak", "0\n"),
        ("memory.events", "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\noom_group_kill 0\n"),
        ("cpu.max", "max 100000\n"),
        ("cpu.weight", "100\n"),
        ("pids.max", "max\n"),
        ("pids.current", "0\n"),
        ("pids.events", "max 0\n"),
        ("io.max", ""),
        ("io.weight", "default 100\n"),
        ("io.stat", ""),
        ("cpuset.cpus", ""),
        ("cpuset.mems", ""),
        ("cpuset.cpus.effective", "0-1\n"),
    ];

    #[derive(Debug, Default)]
    pub(crate) struct FakeV2Fs;

    impl FakeV2Fs {
        /// Lay out a fake root cgroup at `root` offering `controllers`.
        pub(crate) fn root(root: &Path, controllers: &str) {
            std::fs::create_dir_all(root).unwrap();
            for (f, v) in V2_FILES {
                std::fs::write(root.join(f), v).unwrap();
            }
            std::fs::write(root.join("cgroup.controllers"), format!("{controllers}\n")).unwrap();
        }
    }

    impl CgroupFs for FakeV2Fs {
        fn mkdir(&self, path: &Path) -> io::Result<()> {
            std::fs::create_dir(path)?;
            let parent = path.parent().expect("cgroup has a parent");
            let enabled = std::fs::read_to_string(parent.join("cgroup.subtree_control"))?;
            for (f, v) in V2_FILES {
                std::fs::write(path.join(f), v)?;
            }
            std::fs::write(path.join("cgroup.controllers"), enabled)
        }
        fn rmdir(&self, path: &Path) -> io::Result<()> {
            if !std::fs::read_to_string(path.join("cgroup.procs"))?.trim().is_empty() {
                return Err(io::Error::from_raw_os_error(libc::EBUSY));
            }
            std::fs::remove_dir_all(path)
        }
        fn read(&self, path: &Path) -> io::Result<String> {
            std::fs::read_to_string(path)
        }
        fn write(&self, path: &Path, value: &str) -> io::Result<()> {
            if !path.exists() {
                return Err(io::Error::from_raw_os_error(libc::ENOENT));
            }
            let name = path.file_name().unwrap().to_str().unwrap();
            match name {
                "cgroup.procs" | "io.max" => {
                    let mut f = std::fs::OpenOptions::new().append(true).open(path)?;
                    writeln!(f, "{value}")
                }
                "cgroup.kill" => {
                    std::fs::write(path, value)?;
                    std::fs::write(path.with_file_name("cgroup.procs"), "")
                }
                "cgroup.subtree_control" => {
                    let mut set: Vec<String> = std::fs::read_to_string(path)?
                        .split_whitespace()
                        .map(String::from)
                        .collect();
                    let offered =
                        std::fs::read_to_string(path.with_file_name("cgroup.controllers"))?;
                    for tok in value.split_whitespace() {
                        let (op, c) = tok.split_at(1);
                        if !offered.split_whitespace().any(|x| x == c) {
                            return Err(io::Error::from_raw_os_error(libc::ENOENT));
                        }
                        set.retain(|x| x != c);
                        if op == "+" {
                            set.push(c.to_string());
                        }
                    }
                    std::fs::write(path, set.join(" "))
                }
                _ => std::fs::write(path, value),
            }
        }
    }
}
