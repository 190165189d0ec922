//! Shared test support: a per-test directory under /tmp/isc-vault-test-* that is unmounted,
//! detached and removed on drop, and a leak check on mounts and loop devices.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// A test directory with `root/` (the vault root) and `run/` (mount points).
pub struct TestDir {
    pub path: PathBuf,
}

impl TestDir {
    pub fn new(tag: &str) -> Self {
        let mut rnd = [0u8; 6];
        getrandom::fill(&mut rnd).unwrap();
        let hex: String = rnd.iter().map(|b| format!("{b:02x}")).collect();
        let path = PathBuf::from(format!("/tmp/isc-vault-test-{tag}-{hex}"));
        std::fs::create_dir_all(&path).unwrap();
        TestDir { path }
    }

    pub fn root(&self) -> PathBuf {
        self.path.join("root")
    }

    pub fn run(&self) -> PathBuf {
        self.path.join("run")
    }

    /// Fails unless no mount point and no loop device refers to anything under this directory.
    pub fn assert_no_leaks(&self) {
        let mounts = mounts_under(&self.path);
        assert!(mounts.is_empty(), "mounts left under {}: {mounts:?}", self.path.display());
        let losetup = Command::new("losetup").arg("-a").output().unwrap();
        let listing = String::from_utf8_lossy(&losetup.stdout);
        let ours: Vec<&str> =
            listing.lines().filter(|l| l.contains(&*self.path.to_string_lossy())).collect();
        assert!(ours.is_empty(), "loop devices left: {ours:?}");
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let mut mounts = mounts_under(&self.path);
        mounts.sort_by_key(|m| std::cmp::Reverse(m.as_os_str().len()));
        for m in mounts {
            let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
        }
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// One parsed line of /proc/self/mountinfo.
#[derive(Debug)]
pub struct MountEntry {
    pub mount_point: PathBuf,
    pub mount_options: Vec<String>,
    pub fs_type: String,
    pub super_options: Vec<String>,
}

pub fn mountinfo() -> Vec<MountEntry> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .map(|l| {
            let (left, right) = l.split_once(" - ").unwrap();
            let f: Vec<&str> = left.split(' ').collect();
            let r: Vec<&str> = right.split(' ').collect();
            MountEntry {
                mount_point: PathBuf::from(f[4].replace("\\040", " ")),
                mount_options: f[5].split(',').map(String::from).collect(),
                fs_type: r[0].to_string(),
                super_options: r.get(2).unwrap_or(&"").split(',').map(String::from).collect(),
            }
        })
        .collect()
}

pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    mountinfo().into_iter().map(|m| m.mount_point).filter(|m| m.starts_with(dir)).collect()
}

/// Whether `needle` occurs anywhere in `haystack`.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Every regular file under `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() {
                out.push(e.path());
            }
        }
    }
    out
}
