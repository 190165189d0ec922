//! Packing a stored image as EROFS, and the checks on the packed file.
//!
//! ```text
//! images/packed/<id>.erofs   the EROFS image: root-owned, mode 0444, FS_IMMUTABLE_FL
//! images/packed/<id>.json    PackedRecord: BLAKE3 of the file and its lstat facts (also flagged)
//! ```
//! `mkfs.erofs` (erofs-utils) writes the file from the stored tree with a fixed timestamp and
//! UUID, so packing is reproducible. Before the file is committed it is mounted and its tree is
//! re-hashed against the image's content manifest: a packed file is only ever stored if it holds
//! exactly the content its id names (this also catches a source tree changed behind the store's
//! back). Before every start [`ImageStore::check_packed_before_start`] compares the file's
//! immutable flag and `lstat` facts with the record (one `lstat`, no reading); `isc image verify`
//! re-hashes the file and, mounted, its tree.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use crate::immutable::{self, ImmutableError};
use crate::integrity::{DriftReport, IntegrityError};
use crate::loopdev::{ErofsMount, LoopError};
use crate::manifest::{hash_file, ManifestError, MountPolicy};
use crate::start_record::InodeFacts;
use crate::store::{verify_tree, ImageStore, StoreError};

/// Format version of `packed/<id>.json`.
pub const PACKED_VERSION: u32 = 1;

/// Errors of packing and of mounting packed images.
#[derive(Debug, thiserror::Error)]
pub enum PackError {
    /// The EROFS builder could not be run or failed.
    #[error("mkfs.erofs failed packing {tree}: {why}; install erofs-utils (apt-get install -y erofs-utils)")]
    Tool {
        /// The tree being packed.
        tree: PathBuf,
        /// What went wrong (exit status and stderr).
        why: String,
    },
    /// A file of the packed store could not be written or read.
    #[error("packed image {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The packed file's tree does not match the image's manifest.
    #[error("packed image of {id} does not match its manifest ({summary}); nothing was stored. Run `isc image verify {id}`")]
    Mismatch {
        /// The image id.
        id: String,
        /// The first differences.
        summary: String,
    },
    /// The image is not packed.
    #[error("image {id} is not packed; run `isc image pack {id}` first")]
    NotPacked {
        /// The image id.
        id: String,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The source tree failed its integrity check.
    #[error(transparent)]
    Integrity(#[from] IntegrityError),
    /// Attaching or mounting failed.
    #[error(transparent)]
    Loop(#[from] LoopError),
    /// Hashing failed.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// Setting or clearing the immutable attribute failed.
    #[error(transparent)]
    Immutable(#[from] ImmutableError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PackError + '_ {
    move |e| PackError::Io { path: path.to_path_buf(), source: e }
}

/// Builds an EROFS file from a tree (a trait so tests and other tools can replace `mkfs.erofs`).
pub trait ErofsBuilder {
    /// Writes `out` from `tree`.
    fn build(&self, tree: &Path, out: &Path) -> Result<(), PackError>;
}

/// `mkfs.erofs` from erofs-utils: uncompressed (reads need no decompression, and the stored tree
/// is already small), fixed timestamp and UUID (reproducible), no xattrs (the store keeps none).
#[derive(Debug, Clone, Copy, Default)]
pub struct MkfsErofs;

impl ErofsBuilder for MkfsErofs {
    fn build(&self, tree: &Path, out: &Path) -> Result<(), PackError> {
        let output = Command::new("mkfs.erofs")
            .args(["--quiet", "-x-1", "-T0", "-U00000000-0000-0000-0000-000000000001"])
            .arg(out)
            .arg(tree)
            .output()
            .map_err(|e| PackError::Tool { tree: tree.to_path_buf(), why: e.to_string() })?;
        if !output.status.success() {
            return Err(PackError::Tool {
                tree: tree.to_path_buf(),
                why: format!(
                    "{}: {}",
                    output.status,
                    String::from_utf8_lossy(&output.stderr).trim()
                ),
            });
        }
        Ok(())
    }
}

/// What the before-start check of a packed image compares (`packed/<id>.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackedRecord {
    /// Format version.
    pub version: u32,
    /// The image id.
    pub id: String,
    /// BLAKE3 of the whole EROFS file.
    pub hash: String,
    /// Whether the file carries `FS_IMMUTABLE_FL`.
    pub immutable: bool,
    /// `lstat` facts of the file after it was flagged.
    pub facts: InodeFacts,
}

/// A packed image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PackedImage {
    /// The image id.
    pub id: String,
    /// The EROFS file.
    pub file: PathBuf,
    /// Its size.
    pub bytes: u64,
    /// `true` when it was already packed.
    pub cached: bool,
}

/// The full check of a packed image (`isc image verify`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PackedReport {
    /// The EROFS file.
    pub file: PathBuf,
    /// The file still hashes to the recorded BLAKE3.
    pub hash_matches: bool,
    /// The before-start check's complaint, if any.
    pub start_check: Option<String>,
    /// The mounted tree against the image's manifest.
    pub tree: DriftReport,
}

impl PackedReport {
    /// `true` when nothing differs.
    pub fn is_clean(&self) -> bool {
        self.hash_matches && self.start_check.is_none() && self.tree.is_clean()
    }
}

fn summarize(r: &DriftReport) -> String {
    let mut parts = Vec::new();
    parts.extend(r.added.iter().take(3).map(|p| format!("added {p}")));
    parts.extend(r.removed.iter().take(3).map(|p| format!("removed {p}")));
    parts.extend(r.changed.iter().take(3).map(|c| format!("{} ({})", c.path, c.fields.join(","))));
    parts.join("; ")
}

/// Mounts `file` on a private temporary directory, runs `f` on it, unmounts.
fn with_mounted<T>(
    tmp_parent: &Path,
    file: &Path,
    f: impl FnOnce(&Path) -> Result<T, PackError>,
) -> Result<T, PackError> {
    let dir = tempfile::Builder::new()
        .prefix("isc-erofs-")
        .tempdir_in(tmp_parent)
        .map_err(io(tmp_parent))?;
    let mount = ErofsMount::mount(file, dir.path())?;
    let out = f(mount.target());
    mount.unmount().map_err(io(dir.path()))?;
    out
}

impl ImageStore {
    fn packed_dir(&self) -> Result<PathBuf, PackError> {
        let dir = self.images_dir().join("packed");
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).map_err(io(&dir))?;
        Ok(dir)
    }

    /// `images/packed/<id>.erofs` (whether or not it exists).
    pub fn packed_file(&self, id: &str) -> PathBuf {
        self.images_dir().join("packed").join(format!("{id}.erofs"))
    }

    fn packed_record_path(&self, id: &str) -> PathBuf {
        self.images_dir().join("packed").join(format!("{id}.json"))
    }

    /// The record of a packed image, `None` if the image is not packed.
    pub fn packed_record(&self, id: &str) -> Result<Option<PackedRecord>, PackError> {
        let path = self.packed_record_path(id);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                PackError::Store(StoreError::Corrupt { path: path.clone(), why: e.to_string() })
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(&path)(e)),
        }
    }

    /// Packs stored image `id` as EROFS (see the module docs); idempotent.
    pub fn pack(&self, id: &str, builder: &dyn ErofsBuilder) -> Result<PackedImage, PackError> {
        let manifest = self.manifest(id)?;
        let prepared = self.check_before_start(id)?;
        let file = self.packed_file(id);
        if let Some(rec) = self.packed_record(id)? {
            return Ok(PackedImage {
                id: id.to_string(),
                file,
                bytes: rec.facts.size,
                cached: true,
            });
        }
        let dir = self.packed_dir()?;
        let staging = self.staging()?;
        let out = staging.path().join("image.erofs");
        builder.build(&prepared.rootfs, &out)?;
        let report = with_mounted(staging.path(), &out, |root| {
            Ok(verify_tree(root, &manifest, MountPolicy::Descend)?)
        })?;
        if !(report.added.is_empty() && report.removed.is_empty() && report.changed.is_empty()) {
            return Err(PackError::Mismatch { id: id.to_string(), summary: summarize(&report) });
        }
        let hash = hash_file(&out, &mut vec![0u8; 1 << 20])?;
        std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o444)).map_err(io(&out))?;
        let lock = self.commit_lock(id)?;
        if let Some(rec) = self.packed_record(id)? {
            drop(lock);
            return Ok(PackedImage {
                id: id.to_string(),
                file,
                bytes: rec.facts.size,
                cached: true,
            });
        }
        // A file without a record is a pack that died half-way: replace it.
        immutable::remove_tree(&file)?;
        std::fs::rename(&out, &file).map_err(io(&file))?;
        let flagged = immutable::set_immutable(&file, true)?;
        // Flag first: setting it moves the ctime, which the record captures.
        let md = std::fs::symlink_metadata(&file).map_err(io(&file))?;
        let record = PackedRecord {
            version: PACKED_VERSION,
            id: id.to_string(),
            hash,
            immutable: flagged,
            facts: InodeFacts::of(&md),
        };
        let rec_path = self.packed_record_path(id);
        let mut tmp =
            tempfile::Builder::new().prefix(".tmp-").tempfile_in(&dir).map_err(io(&dir))?;
        serde_json::to_writer(&mut tmp, &record).map_err(|e| io(&rec_path)(e.into()))?;
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o444))
            .map_err(io(&rec_path))?;
        tmp.persist(&rec_path).map_err(|e| io(&rec_path)(e.error))?;
        if flagged {
            immutable::set_immutable(&rec_path, true)?;
        }
        tracing::info!(id, bytes = md.len(), "image packed as EROFS");
        Ok(PackedImage { id: id.to_string(), file, bytes: md.len(), cached: false })
    }

    /// The cheap check before a packed image is mounted: the file's immutable flag and `lstat`
    /// facts (inode, ctime, mtime, size, mode, owner) equal the record. Returns the file.
    pub fn check_packed_before_start(&self, id: &str) -> Result<PathBuf, IntegrityError> {
        let file = self.packed_file(id);
        let rec_path = self.packed_record_path(id);
        let record_err = |why: String| IntegrityError::Record {
            id: id.to_string(),
            path: rec_path.clone(),
            why,
        };
        let record: PackedRecord = match self.packed_record(id) {
            Ok(Some(r)) => r,
            Ok(None) => return Err(record_err("the image is not packed".into())),
            Err(e) => return Err(record_err(e.to_string())),
        };
        if record.id != id || record.version != PACKED_VERSION {
            return Err(record_err(format!("it describes image {}", record.id)));
        }
        if record.immutable && !immutable::is_immutable(&file).unwrap_or(false) {
            return Err(IntegrityError::FlagCleared { id: id.to_string(), path: file });
        }
        let md = std::fs::symlink_metadata(&file).map_err(|_| IntegrityError::Removed {
            id: id.to_string(),
            path: file.display().to_string(),
        })?;
        let diff = record.facts.differences(&InodeFacts::of(&md));
        if !diff.is_empty() {
            return Err(IntegrityError::Changed {
                id: id.to_string(),
                path: file.display().to_string(),
                what: diff.join(", "),
            });
        }
        Ok(file)
    }

    /// Checks and mounts packed image `id` at `target` (an existing empty directory).
    pub fn mount_packed(&self, id: &str, target: &Path) -> Result<ErofsMount, PackError> {
        let file = self.check_packed_before_start(id)?;
        Ok(ErofsMount::mount(&file, target)?)
    }

    /// Full check of packed image `id`: re-hash of the file, the before-start check, and the
    /// mounted tree against the manifest. `None` when the image is not packed.
    pub fn verify_packed(&self, id: &str) -> Result<Option<PackedReport>, PackError> {
        let Some(record) = self.packed_record(id)? else {
            return Ok(None);
        };
        let manifest = self.manifest(id)?;
        let file = self.packed_file(id);
        let hash = hash_file(&file, &mut vec![0u8; 1 << 20])?;
        let start_check = self.check_packed_before_start(id).err().map(|e| e.to_string());
        let tmp = self.images_dir().join("tmp");
        let tree = with_mounted(&tmp, &file, |root| {
            Ok(verify_tree(root, &manifest, MountPolicy::Descend)?)
        })?;
        Ok(Some(PackedReport { file, hash_matches: hash == record.hash, start_check, tree }))
    }

    /// Removes the packed form of `id` (if any), clearing the immutable attribute first.
    pub(crate) fn remove_packed(&self, id: &str) -> Result<(), PackError> {
        immutable::remove_tree(&self.packed_record_path(id))?;
        immutable::remove_tree(&self.packed_file(id))?;
        Ok(())
    }

    /// Resolves `path` to a store id if it is a packed file of this store.
    pub fn packed_id_of(&self, path: &Path) -> Option<String> {
        let canonical = std::fs::canonicalize(path).ok()?;
        let dir = std::fs::canonicalize(self.images_dir().join("packed")).ok()?;
        if canonical.parent()? != dir {
            return None;
        }
        let id = canonical.file_name()?.to_str()?.strip_suffix(".erofs")?;
        crate::store::is_valid_id(id).then(|| id.to_string())
    }
}
