//! Integrity of stored images: the cheap check before every start, and drift reports.
//!
//! **At commit** (after the tree is made read-only and flagged immutable) the store records, for
//! every entry, the facts `lstat(2)` returns: inode, ctime, mtime, size, mode, owner
//! ([`StartRecord`], `record.json`). **Before every start** [`check_start_record`] compares them
//! again. `ctime` cannot be set from user space (`utimensat(2)` sets only atime/mtime; ctime is
//! stamped by the kernel on every inode change, including `chattr -i`), so any change made through
//! the filesystem, even by root after clearing the immutable flag, moves a ctime and is refused.
//! The full re-hash ([`diff_manifests`] over a fresh walk) runs at build/import and on demand.

use std::collections::{BTreeSet, HashMap};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::manifest::{EntryKind, Manifest, ManifestEntry};

/// Format version of `record.json`.
pub const RECORD_VERSION: u32 = 1;

/// Errors of the before-start check: each names the image and the path that failed.
#[derive(Debug, thiserror::Error)]
pub enum IntegrityError {
    /// The image is not in the store.
    #[error("image {id} is not in the store ({dir}); build or import it first")]
    NotStored {
        /// The id.
        id: String,
        /// Where it was looked for.
        dir: PathBuf,
    },
    /// The id is not a 64-hex-digit BLAKE3 id.
    #[error("{id:?} is not an image id (64 lowercase hex digits)")]
    BadId {
        /// What was given.
        id: String,
    },
    /// The start record is missing or unreadable.
    #[error("image {id}: integrity record {path} is unreadable ({why}); the image is incomplete or was tampered with: remove and rebuild it")]
    Record {
        /// The id.
        id: String,
        /// The record file.
        path: PathBuf,
        /// What went wrong.
        why: String,
    },
    /// The immutable flag of the tree was cleared.
    #[error("image {id}: the immutable attribute of {path} was cleared; refusing to start. Run `isc image verify {id}` and rebuild the image")]
    FlagCleared {
        /// The id.
        id: String,
        /// The tree root.
        path: PathBuf,
    },
    /// An entry changed.
    #[error("image {id}: {path} changed since the image was stored ({what}); refusing to start. Run `isc image verify {id}` for a full report and rebuild the image")]
    Changed {
        /// The id.
        id: String,
        /// Image path.
        path: String,
        /// Which facts differ.
        what: String,
    },
    /// An entry vanished.
    #[error("image {id}: {path} was removed since the image was stored; refusing to start. Rebuild the image")]
    Removed {
        /// The id.
        id: String,
        /// Image path.
        path: String,
    },
}

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
}

/// What the before-start check compares (`record.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
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
}

/// `rootfs` joined with an image path.
pub fn tree_path(rootfs: &Path, image_path: &str) -> PathBuf {
    rootfs.join(image_path.trim_start_matches('/'))
}

/// The before-start check of image `id` stored in `image_dir`: one `lstat` per entry.
pub fn check_start_record(image_dir: &Path, id: &str) -> Result<(), IntegrityError> {
    let record_path = image_dir.join("record.json");
    let bytes = std::fs::read(&record_path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound && !image_dir.exists() {
            IntegrityError::NotStored { id: id.to_string(), dir: image_dir.to_path_buf() }
        } else {
            IntegrityError::Record {
                id: id.to_string(),
                path: record_path.clone(),
                why: e.to_string(),
            }
        }
    })?;
    let record: StartRecord = serde_json::from_slice(&bytes).map_err(|e| {
        IntegrityError::Record { id: id.to_string(), path: record_path.clone(), why: e.to_string() }
    })?;
    if record.id != id || record.version != RECORD_VERSION {
        return Err(IntegrityError::Record {
            id: id.to_string(),
            path: record_path,
            why: format!("it describes image {} (format {})", record.id, record.version),
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
    Ok(())
}

/// An `O_PATH` descriptor of an image tree, for `lstat`s relative to it.
struct RootDir(std::os::fd::OwnedFd);

impl RootDir {
    fn open(rootfs: &Path) -> Option<Self> {
        use std::os::unix::ffi::OsStrExt;
        let c = std::ffi::CString::new(rootfs.as_os_str().as_bytes()).ok()?;
        let flags = libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC | libc::O_NOFOLLOW;
        // SAFETY: open(2) of a NUL-terminated path; the descriptor is owned below.
        let fd = unsafe { libc::open(c.as_ptr(), flags) };
        // SAFETY: a fresh descriptor nobody else owns.
        (fd >= 0).then(|| Self(unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) }))
    }

    /// `lstat` facts of image path `path` (`/` is the tree itself), or `None` if it is gone.
    fn facts(&self, path: &str) -> Option<InodeFacts> {
        use std::os::fd::AsRawFd;
        let rel = path.trim_start_matches('/');
        let c = std::ffi::CString::new(if rel.is_empty() { "." } else { rel }).ok()?;
        // SAFETY: an all-zero `stat` is a valid value for fstatat(2) to fill.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: fstatat(2) on our descriptor with a NUL-terminated relative path, writing
        // into `st`; AT_SYMLINK_NOFOLLOW makes it an lstat.
        let rc = unsafe {
            libc::fstatat(self.0.as_raw_fd(), c.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW)
        };
        (rc == 0).then_some(InodeFacts {
            ino: st.st_ino,
            ctime: st.st_ctime,
            ctime_nsec: st.st_ctime_nsec,
            mtime: st.st_mtime,
            mtime_nsec: st.st_mtime_nsec,
            size: st.st_size as u64,
            mode: st.st_mode,
            uid: st.st_uid,
            gid: st.st_gid,
        })
    }
}

/// One changed path and which of its manifest fields differ.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// Image path.
    pub path: String,
    /// Fields that differ: `type`, `mode`, `uid`, `gid`, `size`, `target`, `content`.
    pub fields: Vec<String>,
}

/// A BART-style comparison of a tree against its manifest.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DriftReport {
    /// Paths present now but not in the manifest.
    pub added: Vec<String>,
    /// Paths in the manifest but gone now.
    pub removed: Vec<String>,
    /// Paths whose recorded facts differ.
    pub changed: Vec<Change>,
    /// Mount points not inspected (live trees only), with their subtrees.
    pub skipped_mounts: Vec<String>,
    /// `false` when the stored manifest itself no longer hashes to the image id.
    pub manifest_matches_id: bool,
}

impl DriftReport {
    /// `true` when nothing was added, removed or changed and the manifest matches its id.
    pub fn is_clean(&self) -> bool {
        self.added.is_empty()
            && self.removed.is_empty()
            && self.changed.is_empty()
            && self.manifest_matches_id
    }
}

fn under(path: &str, mounts: &[String]) -> bool {
    mounts
        .iter()
        .any(|m| path == m || path.strip_prefix(m.as_str()).is_some_and(|r| r.starts_with('/')))
}

/// Compares `actual` against `expected`; entries under `skipped_mounts` are left out on both
/// sides.
pub fn diff_manifests(
    expected: &Manifest,
    actual: &Manifest,
    skipped_mounts: &[String],
) -> DriftReport {
    let want: HashMap<&str, &ManifestEntry> = expected.by_path();
    let have: HashMap<&str, &ManifestEntry> = actual.by_path();
    let mut report = DriftReport {
        skipped_mounts: skipped_mounts.to_vec(),
        manifest_matches_id: true,
        ..DriftReport::default()
    };
    let all: BTreeSet<&str> = want.keys().chain(have.keys()).copied().collect();
    for path in all {
        if under(path, skipped_mounts) {
            continue;
        }
        match (want.get(path), have.get(path)) {
            (Some(_), None) => report.removed.push(path.to_string()),
            (None, Some(_)) => report.added.push(path.to_string()),
            (Some(w), Some(h)) => {
                let mut fields = Vec::new();
                if w.kind != h.kind {
                    fields.push("type");
                }
                if w.mode != h.mode {
                    fields.push("mode");
                }
                if w.uid != h.uid {
                    fields.push("uid");
                }
                if w.gid != h.gid {
                    fields.push("gid");
                }
                if w.size != h.size && w.kind == h.kind && w.kind == EntryKind::File {
                    fields.push("size");
                }
                if w.target != h.target {
                    fields.push("target");
                }
                if w.hash != h.hash && w.kind == EntryKind::File && h.kind == EntryKind::File {
                    fields.push("content");
                }
                if !fields.is_empty() {
                    report.changed.push(Change {
                        path: path.to_string(),
                        fields: fields.into_iter().map(str::to_string).collect(),
                    });
                }
            }
            (None, None) => {}
        }
    }
    report
}
