//! The before-start record of a stored image (`record.bin`) and the check that compares it.
//!
//! **At commit** (after the tree is made read-only and flagged immutable) the store records, for
//! every entry, the facts `lstat(2)` returns: inode, ctime, mtime, size, mode, owner
//! ([`StartRecord`]). **Before every start** [`check_start_record`] compares them again. `ctime`
//! cannot be set from user space (`utimensat(2)` sets only atime/mtime; ctime is stamped by the
//! kernel on every inode change, including `chattr -i`), so any change made through the
//! filesystem, even by root after clearing the immutable flag, moves a ctime and is refused.
//!
//! The record is a small fixed-layout binary file, not JSON: it is read on every start, and
//! decoding it touches a few hundred bytes of code instead of serde's (−25 µs per start for a
//! 23-entry image, most of it first-touch page faults of the deserialiser's code). Stores written
//! before the binary form keep their `record.json` (format 1), which is still read.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::integrity::{tree_path, IntegrityError};
use crate::manifest::Manifest;

/// The record file of a committed image directory.
pub const RECORD_FILE: &str = "record.bin";
/// The format-1 record that stores written before `record.bin` hold instead.
pub const LEGACY_RECORD_FILE: &str = "record.json";
/// Format version of the record.
pub const RECORD_VERSION: u32 = 2;
/// The first eight bytes of `record.bin`.
const MAGIC: &[u8; 8] = b"iscrec\0\x02";

/// `lstat` facts of one inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct InodeFacts {
    /// Inode number.
    pub ino: u64,
    /// ctime seconds.
    pub ctime: i64,
    /// ctime nanoseconds.
    pub ctime_nsec: i64,
    /// mtime seconds.
    pub mtime: i64,
    /// mtime nanoseconds.
    pub mtime_nsec: i64,
    /// Size.
    pub size: u64,
    /// Full `st_mode`.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
}

/// Encoded size of [`InodeFacts`]: six 8-byte and three 4-byte fields.
const FACTS_LEN: usize = 6 * 8 + 3 * 4;

impl InodeFacts {
    /// Facts of `md`.
    pub fn of(md: &std::fs::Metadata) -> Self {
        Self {
            ino: md.ino(),
            ctime: md.ctime(),
            ctime_nsec: md.ctime_nsec(),
            mtime: md.mtime(),
            mtime_nsec: md.mtime_nsec(),
            size: md.size(),
            mode: md.mode(),
            uid: md.uid(),
            gid: md.gid(),
        }
    }

    fn of_stat(st: &libc::stat) -> Self {
        Self {
            ino: st.st_ino,
            ctime: st.st_ctime,
            ctime_nsec: st.st_ctime_nsec,
            mtime: st.st_mtime,
            mtime_nsec: st.st_mtime_nsec,
            size: st.st_size as u64,
            mode: st.st_mode,
            uid: st.st_uid,
            gid: st.st_gid,
        }
    }

    pub(crate) fn differences(&self, now: &Self) -> Vec<&'static str> {
        let mut d = Vec::new();
        if self.ino != now.ino {
            d.push("inode (replaced)");
        }
        if (self.ctime, self.ctime_nsec) != (now.ctime, now.ctime_nsec) {
            d.push("ctime");
        }
        if (self.mtime, self.mtime_nsec) != (now.mtime, now.mtime_nsec) {
            d.push("mtime");
        }
        if self.size != now.size {
            d.push("size");
        }
        if self.mode != now.mode {
            d.push("mode");
        }
        if (self.uid, self.gid) != (now.uid, now.gid) {
            d.push("owner");
        }
        d
    }

    fn encode(&self, out: &mut Vec<u8>) {
        for v in [self.ino, self.ctime as u64, self.ctime_nsec as u64, self.mtime as u64] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&(self.mtime_nsec as u64).to_le_bytes());
        out.extend_from_slice(&self.size.to_le_bytes());
        for v in [self.mode, self.uid, self.gid] {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, String> {
        let b = r.take(FACTS_LEN)?;
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        Ok(Self {
            ino: u64_at(0),
            ctime: u64_at(8) as i64,
            ctime_nsec: u64_at(16) as i64,
            mtime: u64_at(24) as i64,
            mtime_nsec: u64_at(32) as i64,
            size: u64_at(40),
            mode: u32_at(48),
            uid: u32_at(52),
            gid: u32_at(56),
        })
    }
}

/// What the before-start check compares.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartRecord {
    /// Format version.
    pub version: u32,
    /// The image id.
    pub id: String,
    /// Whether the tree carries `FS_IMMUTABLE_FL` (false on filesystems without inode flags).
    pub immutable: bool,
    /// Facts of `manifest.json`.
    pub manifest: InodeFacts,
    /// Facts of every tree entry, in manifest order.
    pub entries: Vec<(String, InodeFacts)>,
}

impl StartRecord {
    /// Captures the record of a committed image directory (`rootfs/` and `manifest.json`).
    pub fn capture(
        image_dir: &Path,
        id: &str,
        manifest: &Manifest,
        immutable: bool,
    ) -> std::io::Result<Self> {
        let rootfs = image_dir.join("rootfs");
        let mut entries = Vec::with_capacity(manifest.entries.len());
        for e in &manifest.entries {
            let md = std::fs::symlink_metadata(tree_path(&rootfs, &e.path))?;
            entries.push((e.path.clone(), InodeFacts::of(&md)));
        }
        let manifest_md = std::fs::symlink_metadata(image_dir.join("manifest.json"))?;
        Ok(Self {
            version: RECORD_VERSION,
            id: id.to_string(),
            immutable,
            manifest: InodeFacts::of(&manifest_md),
            entries,
        })
    }

    /// `record.bin`: the magic, then length-prefixed id, the flag, the manifest's facts, the
    /// entry count, and per entry a length-prefixed path and its facts (integers little-endian).
    pub fn encode(&self) -> Vec<u8> {
        let paths: usize = self.entries.iter().map(|(p, _)| p.len() + 4 + FACTS_LEN).sum();
        let mut out =
            Vec::with_capacity(MAGIC.len() + 4 + self.id.len() + 1 + FACTS_LEN + 4 + paths);
        out.extend_from_slice(MAGIC);
        put_bytes(&mut out, self.id.as_bytes());
        out.push(u8::from(self.immutable));
        self.manifest.encode(&mut out);
        out.extend_from_slice(&(self.entries.len() as u32).to_le_bytes());
        for (path, facts) in &self.entries {
            put_bytes(&mut out, path.as_bytes());
            facts.encode(&mut out);
        }
        out
    }

    /// Decodes [`StartRecord::encode`]'s bytes; refuses trailing or missing bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        let mut r = Reader(bytes);
        if r.take(MAGIC.len())? != MAGIC {
            return Err("it does not start with the record magic of format 2".to_string());
        }
        let id = r.string()?;
        let immutable = match r.take(1)?[0] {
            0 => false,
            1 => true,
            b => return Err(format!("its immutable flag is {b}, not 0 or 1")),
        };
        let manifest = InodeFacts::decode(&mut r)?;
        let n = r.u32()? as usize;
        // Each entry takes at least its length prefix and its facts: a count larger than the
        // bytes left is corrupt, and must not size an allocation.
        if n > r.0.len() / (4 + FACTS_LEN) {
            return Err(format!("it claims {n} entries in {} bytes", r.0.len()));
        }
        let mut entries = Vec::with_capacity(n);
        for _ in 0..n {
            let path = r.string()?;
            entries.push((path, InodeFacts::decode(&mut r)?));
        }
        if !r.0.is_empty() {
            return Err(format!("{} bytes follow its last entry", r.0.len()));
        }
        Ok(Self { version: RECORD_VERSION, id, immutable, manifest, entries })
    }

    /// The image paths of `wanted` (absolute image paths) that are not, component by component,
    /// directories in this record: a mount point must be a real directory, never a symlink
    /// (which could point the mount outside the tree).
    pub fn missing_dirs<'a>(&self, wanted: impl IntoIterator<Item = &'a Path>) -> Vec<PathBuf> {
        let dirs: std::collections::HashSet<&str> = self
            .entries
            .iter()
            .filter(|(_, f)| f.mode & libc::S_IFMT == libc::S_IFDIR)
            .map(|(p, _)| p.as_str())
            .collect();
        let is_dir = |p: &Path| p.to_str().is_some_and(|s| dirs.contains(s));
        wanted
            .into_iter()
            .filter(|w| !w.ancestors().filter(|a| *a != Path::new("/")).all(is_dir))
            .map(Path::to_path_buf)
            .collect()
    }
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

/// A cursor over the record's bytes.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err("it ends early (truncated)".to_string());
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }

    fn string(&mut self) -> Result<String, String> {
        let n = self.u32()? as usize;
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| "a path is not UTF-8".to_string())
    }
}

/// Reads the record of `image_dir` (`record.bin`, else a format-1 `record.json`).
fn read_record(image_dir: &Path, id: &str) -> Result<StartRecord, IntegrityError> {
    let bad = |path: &Path, why: String| IntegrityError::Record {
        id: id.to_string(),
        path: path.to_path_buf(),
        why,
    };
    let path = image_dir.join(RECORD_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => return StartRecord::decode(&bytes).map_err(|why| bad(&path, why)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(bad(&path, e.to_string())),
    }
    let legacy = image_dir.join(LEGACY_RECORD_FILE);
    let bytes = std::fs::read(&legacy).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound && !image_dir.exists() {
            IntegrityError::NotStored { id: id.to_string(), dir: image_dir.to_path_buf() }
        } else {
            bad(&path, e.to_string())
        }
    })?;
    let record: StartRecord =
        serde_json::from_slice(&bytes).map_err(|e| bad(&legacy, e.to_string()))?;
    if record.version != 1 {
        return Err(bad(&legacy, format!("it has format {}, not 1", record.version)));
    }
    Ok(record)
}

/// `true` when `image_dir` holds a record: the image was committed whole.
pub fn has_record(image_dir: &Path) -> bool {
    image_dir.join(RECORD_FILE).exists() || image_dir.join(LEGACY_RECORD_FILE).exists()
}

/// The before-start check of image directory `image_dir`; returns its record (for the mount
/// points, [`StartRecord::missing_dirs`]).
pub fn check_start_record(image_dir: &Path, id: &str) -> Result<StartRecord, IntegrityError> {
    let record = read_record(image_dir, id)?;
    if record.id != id {
        return Err(IntegrityError::Record {
            id: id.to_string(),
            path: image_dir.join(RECORD_FILE),
            why: format!("it describes image {}", record.id),
        });
    }
    let rootfs = image_dir.join("rootfs");
    if record.immutable && !crate::immutable::is_immutable(&rootfs).unwrap_or(false) {
        return Err(IntegrityError::FlagCleared { id: id.to_string(), path: rootfs });
    }
    let compare = |path: &str, now: Option<InodeFacts>, want: &InodeFacts| {
        let Some(now) = now else {
            return Err(IntegrityError::Removed { id: id.to_string(), path: path.to_string() });
        };
        let diff = want.differences(&now);
        if diff.is_empty() {
            Ok(())
        } else {
            Err(IntegrityError::Changed {
                id: id.to_string(),
                path: path.to_string(),
                what: diff.join(", "),
            })
        }
    };
    let facts = |p: &Path| std::fs::symlink_metadata(p).ok().map(|md| InodeFacts::of(&md));
    compare("manifest.json", facts(&image_dir.join("manifest.json")), &record.manifest)?;
    // Entries are looked up relative to the tree (fstatat(2) on an O_PATH descriptor): a start
    // walks each entry's own few components, not the store's path again and again.
    let tree = RootDir::open(&rootfs);
    for (path, want) in &record.entries {
        let now = match &tree {
            Some(t) => t.facts(path),
            None => facts(&tree_path(&rootfs, path)),
        };
        compare(path, now, want)?;
    }
    Ok(record)
}

/// An `O_PATH` descriptor of an image tree, for `lstat`s relative to it.
struct RootDir(OwnedFd);

impl RootDir {
    fn open(rootfs: &Path) -> Option<Self> {
        let c = std::ffi::CString::new(rootfs.as_os_str().as_bytes()).ok()?;
        let flags = libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC | libc::O_NOFOLLOW;
        // SAFETY: open(2) of a NUL-terminated path; the descriptor is owned below.
        let fd = unsafe { libc::open(c.as_ptr(), flags) };
        // SAFETY: a fresh descriptor nobody else owns.
        (fd >= 0).then(|| Self(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// `lstat` facts of image path `path` (`/` is the tree itself), or `None` if it is gone.
    fn facts(&self, path: &str) -> Option<InodeFacts> {
        let rel = path.trim_start_matches('/');
        let c = std::ffi::CString::new(if rel.is_empty() { "." } else { rel }).ok()?;
        // SAFETY: an all-zero `stat` is a valid value for fstatat(2) to fill.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: fstatat(2) on our descriptor with a NUL-terminated relative path, writing
        // into `st`; AT_SYMLINK_NOFOLLOW makes it an lstat.
        let rc = unsafe {
            libc::fstatat(self.0.as_raw_fd(), c.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW)
        };
        (rc == 0).then(|| InodeFacts::of_stat(&st))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(n: u64) -> InodeFacts {
        InodeFacts {
            ino: n,
            ctime: -(n as i64),
            ctime_nsec: 999_999_999,
            mtime: 1_700_000_000,
            mtime_nsec: 1,
            size: u64::MAX - n,
            mode: libc::S_IFDIR | 0o555,
            uid: 0,
            gid: u32::MAX,
        }
    }

    fn record() -> StartRecord {
        StartRecord {
            version: RECORD_VERSION,
            id: "ab".repeat(32),
            immutable: true,
            manifest: facts(1),
            entries: vec![
                ("/".into(), facts(2)),
                ("/run".into(), facts(3)),
                ("/run/secrets".into(), facts(4)),
                ("/bin/sh".into(), InodeFacts { mode: libc::S_IFLNK | 0o777, ..facts(5) }),
                ("/a b\n".into(), facts(6)),
            ],
        }
    }

    #[test]
    fn the_binary_record_round_trips_every_field() {
        let r = record();
        assert_eq!(StartRecord::decode(&r.encode()).unwrap(), r);
    }

    #[test]
    fn a_truncated_extended_or_foreign_record_is_refused() {
        let bytes = record().encode();
        for cut in [0, 7, 8, 20, bytes.len() - 1] {
            let err = StartRecord::decode(&bytes[..cut]).unwrap_err();
            assert!(err.contains("truncated") || err.contains("magic"), "cut {cut}: {err}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(StartRecord::decode(&longer).unwrap_err(), "1 bytes follow its last entry");
        let mut foreign = bytes.clone();
        foreign[7] = 1;
        assert!(StartRecord::decode(&foreign).unwrap_err().contains("magic"));
        // A count far beyond the bytes left is refused before anything is allocated for it.
        let mut huge = record();
        huge.entries.clear();
        let mut b = huge.encode();
        let at = b.len() - 4;
        b[at..].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(StartRecord::decode(&b).unwrap_err().contains("claims 4294967295 entries"));
    }

    #[test]
    fn mount_points_must_be_recorded_directories_all_the_way_down() {
        let r = record();
        let want = [Path::new("/run/secrets"), Path::new("/run"), Path::new("/bin/sh")];
        assert_eq!(r.missing_dirs(want), vec![PathBuf::from("/bin/sh")]);
        // A directory below a symlink is not a real directory of the tree.
        assert_eq!(r.missing_dirs([Path::new("/bin/sh/x")]), vec![PathBuf::from("/bin/sh/x")]);
        assert_eq!(r.missing_dirs([Path::new("/data")]), vec![PathBuf::from("/data")]);
        assert!(r.missing_dirs([Path::new("/")]).is_empty());
    }
}
