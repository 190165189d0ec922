//! The content-addressed image store under `<store_root>/images/`.
//!
//! ```text
//! images/<id>/rootfs/          the tree: root-owned, no write bits, FS_IMMUTABLE_FL on every inode
//! images/<id>/manifest.json    content manifest; its Merkle root is <id>
//! images/<id>/record.bin       inode facts for the before-start check (start_record.rs;
//!                              stores of format 1 hold record.json instead)
//! images/<id>/meta.json        source and OCI config defaults
//! images/keys/<key>            host-build cache key -> id
//! images/locks/<id>            flock held while an image is being committed
//! images/leases/<id>           flock: shared while an ISC uses the image, exclusive to remove it
//! images/tmp/build-*           private staging trees
//! ```
//! A builder writes a complete tree into staging and `rename(2)`s it to `images/<id>` under the
//! commit lock: readers see no image or a whole one, and concurrent builders of the same content
//! agree (the loser discards its copy).

use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::immutable::{self, ImmutableError};
use crate::integrity::{self, DriftReport, IntegrityError};
use crate::manifest::{walk_tree, Manifest, ManifestError, MountPolicy};
use crate::skeleton::SKELETON_DIRS;
use crate::start_record::{check_start_record, has_record, StartRecord, RECORD_FILE};
use crate::PreparedRoot;

/// Errors of the image store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A store file or directory could not be created, read or written.
    #[error(
        "image store {path}: {source}; check that the isc root exists and is writable by root"
    )]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A store file holds something unparseable.
    #[error("image store file {path} is corrupt ({why}); remove the image and build it again")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// The id is malformed.
    #[error("{id:?} is not an image id (64 lowercase hex digits; see `isc image ls`)")]
    BadId {
        /// What was given.
        id: String,
    },
    /// No such image.
    #[error("image {id} is not in the store; see `isc image ls`")]
    NotFound {
        /// The id.
        id: String,
    },
    /// The image is leased by a running ISC.
    #[error("image {id} is in use by a running ISC; stop it before removing the image")]
    InUse {
        /// The id.
        id: String,
    },
    /// The image is being removed.
    #[error("image {id} is being removed; build or import it again")]
    BeingRemoved {
        /// The id.
        id: String,
    },
    /// Hashing the tree failed.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// Setting or clearing the immutable attribute failed.
    #[error(transparent)]
    Immutable(#[from] ImmutableError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |e| StoreError::Io { path: path.to_path_buf(), source: e }
}

/// Defaults an image offers to the manifest (from an OCI image config).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageDefaults {
    /// `Entrypoint`.
    pub entrypoint: Vec<String>,
    /// `Cmd`.
    pub cmd: Vec<String>,
    /// `Env` (`KEY=value`).
    pub env: Vec<String>,
    /// `User` as written in the config (`uid`, `uid:gid`, or a name).
    pub user: Option<String>,
    /// `WorkingDir`.
    pub workdir: Option<String>,
}

/// Where an image came from (`meta.json`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageMeta {
    /// `host`, `oci-layout:PATH`, `docker-archive:PATH`.
    pub source: String,
    /// OCI config defaults, if any.
    #[serde(default)]
    pub defaults: Option<ImageDefaults>,
}

/// One stored image, for listings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageSummary {
    /// The id.
    pub id: String,
    /// Its metadata.
    pub meta: ImageMeta,
    /// Number of manifest entries.
    pub entries: usize,
    /// Sum of file sizes.
    pub bytes: u64,
}

/// Image ids and cache keys are lowercase hex BLAKE3 digests; anything else is refused so an id
/// can never name a path outside the store.
pub fn is_valid_id(id: &str) -> bool {
    id.len() == 64 && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// An open `flock(2)`.
#[derive(Debug)]
pub(crate) struct Flock {
    file: std::fs::File,
}

impl Flock {
    fn acquire(path: &Path, op: libc::c_int) -> std::io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        loop {
            // SAFETY: flock(2) on a descriptor we own; no memory is passed.
            let rc = unsafe { libc::flock(file.as_raw_fd(), op) };
            if rc == 0 {
                return Ok(Self { file });
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}

/// Proof that an ISC uses an image: while a lease is alive, [`ImageStore::remove`] refuses the
/// image. The lease is a shared `flock(2)` on `images/leases/<id>`; it ends when the last
/// descriptor of its open file description closes (so also when the holder dies). To keep it
/// across `execve(2)`, clear `FD_CLOEXEC` on [`ImageLease::as_fd`].
#[derive(Debug)]
pub struct ImageLease {
    id: String,
    lock: Flock,
}

impl ImageLease {
    /// The leased image id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The lease as its id and the locked file: a monitor that hibernates keeps the
    /// descriptor across its execs (the shared flock belongs to the open file).
    pub fn into_kept(self) -> (String, std::os::fd::OwnedFd) {
        (self.id, self.lock.file.into())
    }

    /// The lease a previous image of this process held ([`ImageLease::into_kept`]).
    pub fn adopt(id: String, fd: std::os::fd::OwnedFd) -> ImageLease {
        ImageLease { id, lock: Flock { file: fd.into() } }
    }
}

impl AsFd for ImageLease {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.lock.file.as_fd()
    }
}

/// Handle to `<store_root>/images`.
#[derive(Debug, Clone)]
pub struct ImageStore {
    images: PathBuf,
}

impl ImageStore {
    /// Opens (creating if needed) the store below `store_root`.
    pub fn open(store_root: &Path) -> Result<Self, StoreError> {
        let images = store_root.join("images");
        let dirs = [
            (images.clone(), 0o755),
            (images.join("keys"), 0o700),
            (images.join("tmp"), 0o700),
            (images.join("locks"), 0o700),
            (images.join("leases"), 0o700),
        ];
        for (dir, mode) in dirs {
            // One `stat` per directory on every start; created only when missing.
            let md = match std::fs::metadata(&dir) {
                Ok(md) if md.is_dir() => md,
                _ => {
                    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
                    std::fs::metadata(&dir).map_err(io(&dir))?
                }
            };
            if md.permissions().mode() & 0o7777 != mode {
                std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode))
                    .map_err(io(&dir))?;
            }
        }
        Ok(Self { images })
    }

    /// `<store_root>/images`.
    pub fn images_dir(&self) -> &Path {
        &self.images
    }

    fn checked_dir(&self, id: &str) -> Result<PathBuf, StoreError> {
        if !is_valid_id(id) {
            return Err(StoreError::BadId { id: id.to_string() });
        }
        Ok(self.images.join(id))
    }

    /// The id recorded for a host-build cache key, if any.
    pub fn lookup_key(&self, key: &str) -> Result<Option<String>, StoreError> {
        let key_file = self.images.join("keys").join(key);
        let id = match std::fs::read_to_string(&key_file) {
            Ok(s) => s.trim().to_string(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(&key_file)(e)),
        };
        if !is_valid_id(&id) {
            return Err(StoreError::Corrupt {
                path: key_file,
                why: format!("holds {id:?}, not an image id"),
            });
        }
        if !has_record(&self.images.join(&id)) {
            return Ok(None); // removed since; the next build rewrites the key
        }
        Ok(Some(id))
    }

    /// A fresh private staging directory; removed on drop unless committed. Put the tree in
    /// `rootfs/` below it.
    pub fn staging(&self) -> Result<tempfile::TempDir, StoreError> {
        let tmp = self.images.join("tmp");
        tempfile::Builder::new().prefix("build-").tempdir_in(&tmp).map_err(io(&tmp))
    }

    /// Stores the tree in `staging/rootfs`: makes it read-only, hashes it, moves it into place as
    /// `images/<id>`, flags it immutable and records the start facts. `key` (host builds) is
    /// mapped to the id afterwards.
    pub fn commit(
        &self,
        staging: tempfile::TempDir,
        meta: &ImageMeta,
        key: Option<&str>,
    ) -> Result<PreparedRoot, StoreError> {
        let rootfs = staging.path().join("rootfs");
        strip_write_bits(&rootfs)?;
        let manifest = Manifest::from_tree(&rootfs)?;
        let id = manifest.id();
        write_json(&staging.path().join("manifest.json"), &manifest)?;
        write_json(&staging.path().join("meta.json"), meta)?;
        let dest = self.images.join(&id);
        let lock_path = self.images.join("locks").join(&id);
        let _lock = Flock::acquire(&lock_path, libc::LOCK_EX).map_err(io(&lock_path))?;
        let cached = has_record(&dest);
        if cached {
            tracing::debug!(id, "image already stored; discarding the new copy");
            drop(staging);
        } else {
            // A directory without a record is a commit that died half-way: replace it.
            immutable::remove_tree(&dest)?;
            std::fs::set_permissions(staging.path(), std::fs::Permissions::from_mode(0o755))
                .map_err(io(staging.path()))?;
            std::fs::rename(staging.path(), &dest).map_err(io(&dest))?;
            let _ = staging.keep();
            let flagged = immutable::set_tree_immutable(&dest.join("rootfs"), true)?;
            if !flagged {
                tracing::warn!(id, "filesystem does not support FS_IMMUTABLE_FL; the image is protected by read-only modes and the start record only");
            }
            // Flags first: setting one moves the inode's ctime, which the record captures.
            if flagged {
                for f in ["manifest.json", "meta.json"] {
                    immutable::set_immutable(&dest.join(f), true)?;
                }
            }
            let record = StartRecord::capture(&dest, &id, &manifest, flagged).map_err(io(&dest))?;
            write_read_only(&dest.join(RECORD_FILE), &record.encode())?;
            if flagged {
                for f in [RECORD_FILE, ""] {
                    immutable::set_immutable(&dest.join(f), true)?;
                }
            }
            tracing::info!(id, entries = manifest.entries.len(), "image stored");
        }
        if let Some(key) = key {
            self.write_key(key, &id)?;
        }
        Ok(PreparedRoot { rootfs: dest.join("rootfs"), id, cached })
    }

    /// The cheap check run before every start (see `docs/images.md`); returns the tree to mount.
    pub fn check_before_start(&self, id: &str) -> Result<PreparedRoot, IntegrityError> {
        self.check_before_start_for(id, &[])
    }

    /// [`ImageStore::check_before_start`], and that the skeleton's and `extra_dirs`' mount
    /// points are directories of the image, answered from the record the check just compared
    /// (no further `lstat`).
    pub fn check_before_start_for(
        &self,
        id: &str,
        extra_dirs: &[PathBuf],
    ) -> Result<PreparedRoot, IntegrityError> {
        if !is_valid_id(id) {
            return Err(IntegrityError::BadId { id: id.to_string() });
        }
        let dir = self.images.join(id);
        let record = check_start_record(&dir, id)?;
        let wanted =
            SKELETON_DIRS.iter().map(Path::new).chain(extra_dirs.iter().map(PathBuf::as_path));
        let missing = record.missing_dirs(wanted);
        if !missing.is_empty() {
            return Err(IntegrityError::MissingMountPoints { id: id.to_string(), missing });
        }
        Ok(PreparedRoot { rootfs: dir.join("rootfs"), id: id.to_string(), cached: true })
    }

    /// The stored manifest of `id`.
    pub fn manifest(&self, id: &str) -> Result<Manifest, StoreError> {
        read_json(&self.existing(id)?.join("manifest.json"))
    }

    /// The stored metadata of `id`.
    pub fn meta(&self, id: &str) -> Result<ImageMeta, StoreError> {
        read_json(&self.existing(id)?.join("meta.json"))
    }

    fn existing(&self, id: &str) -> Result<PathBuf, StoreError> {
        let dir = self.checked_dir(id)?;
        if !has_record(&dir) {
            return Err(StoreError::NotFound { id: id.to_string() });
        }
        Ok(dir)
    }

    /// Full re-hash of the stored tree against its manifest, and of the manifest against the id.
    pub fn verify(&self, id: &str) -> Result<DriftReport, StoreError> {
        let manifest = self.manifest(id)?;
        let mut report =
            verify_tree(&self.images.join(id).join("rootfs"), &manifest, MountPolicy::Descend)?;
        report.manifest_matches_id = manifest.id() == id;
        Ok(report)
    }

    /// Re-hash of a live tree (e.g. `/proc/PID/root` of an ISC) against image `id`'s manifest;
    /// mount points inside it are listed, not inspected.
    pub fn verify_live(&self, id: &str, live_root: &Path) -> Result<DriftReport, StoreError> {
        let manifest = self.manifest(id)?;
        let mut report = verify_tree(live_root, &manifest, MountPolicy::Skip)?;
        report.manifest_matches_id = manifest.id() == id;
        Ok(report)
    }

    /// Differences between two stored images (`isc image diff A B`): paths only in `b` are
    /// `added`, only in `a` are `removed`.
    pub fn diff(&self, a: &str, b: &str) -> Result<DriftReport, StoreError> {
        Ok(integrity::diff_manifests(&self.manifest(a)?, &self.manifest(b)?, &[]))
    }

    /// The commit lock of `id` (held while an image or its packed form is put in place).
    pub(crate) fn commit_lock(&self, id: &str) -> Result<Flock, StoreError> {
        let lock_path = self.images.join("locks").join(id);
        Flock::acquire(&lock_path, libc::LOCK_EX).map_err(io(&lock_path))
    }

    /// Records that host-build or import cache `key` maps to image `id` (e.g. an OCI layout's
    /// key, see [`crate::oci::oci_layout_key`]).
    pub fn set_key(&self, key: &str, id: &str) -> Result<(), StoreError> {
        if !is_valid_id(key) {
            return Err(StoreError::BadId { id: key.to_string() });
        }
        self.existing(id)?;
        self.write_key(key, id)
    }

    /// Takes a lease on `id` for a running ISC.
    pub fn lease(&self, id: &str) -> Result<ImageLease, StoreError> {
        self.existing(id)?;
        let path = self.images.join("leases").join(id);
        let lock = Flock::acquire(&path, libc::LOCK_SH | libc::LOCK_NB).map_err(|e| {
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                StoreError::BeingRemoved { id: id.to_string() }
            } else {
                io(&path)(e)
            }
        })?;
        // The image may have been removed between the check and the lock.
        self.existing(id)?;
        Ok(ImageLease { id: id.to_string(), lock })
    }

    /// `true` while an [`ImageLease`] on `id` is alive (an ISC uses the image).
    pub fn in_use(&self, id: &str) -> Result<bool, StoreError> {
        self.existing(id)?;
        let path = self.images.join("leases").join(id);
        match Flock::acquire(&path, libc::LOCK_EX | libc::LOCK_NB) {
            Ok(_probe) => Ok(false),
            Err(e) if e.raw_os_error() == Some(libc::EWOULDBLOCK) => Ok(true),
            Err(e) => Err(io(&path)(e)),
        }
    }

    /// Removes image `id` (clearing the immutable attribute first); refused while leased.
    pub fn remove(&self, id: &str) -> Result<(), StoreError> {
        let dir = self.checked_dir(id)?;
        if !dir.exists() {
            return Err(StoreError::NotFound { id: id.to_string() });
        }
        let lease_path = self.images.join("leases").join(id);
        let lease = Flock::acquire(&lease_path, libc::LOCK_EX | libc::LOCK_NB).map_err(|e| {
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                StoreError::InUse { id: id.to_string() }
            } else {
                io(&lease_path)(e)
            }
        })?;
        let lock_path = self.images.join("locks").join(id);
        let _commit = Flock::acquire(&lock_path, libc::LOCK_EX).map_err(io(&lock_path))?;
        self.remove_packed(id).map_err(|e| match e {
            crate::pack::PackError::Immutable(e) => StoreError::Immutable(e),
            other => StoreError::Io {
                path: self.packed_file(id),
                source: std::io::Error::other(other.to_string()),
            },
        })?;
        immutable::remove_tree(&dir)?;
        let keys = self.images.join("keys");
        for ent in std::fs::read_dir(&keys).map_err(io(&keys))? {
            let p = ent.map_err(io(&keys))?.path();
            if std::fs::read_to_string(&p).is_ok_and(|s| s.trim() == id) {
                let _ = std::fs::remove_file(&p);
            }
        }
        let _ = std::fs::remove_file(&lease_path);
        let _ = std::fs::remove_file(&lock_path);
        drop(lease);
        tracing::info!(id, "image removed");
        Ok(())
    }

    /// All stored images, sorted by id.
    pub fn list(&self) -> Result<Vec<ImageSummary>, StoreError> {
        let mut out = Vec::new();
        for ent in std::fs::read_dir(&self.images).map_err(io(&self.images))? {
            let name = ent.map_err(io(&self.images))?.file_name();
            let Some(id) = name.to_str().filter(|n| is_valid_id(n)) else {
                continue;
            };
            if !has_record(&self.images.join(id)) {
                continue;
            }
            let manifest = self.manifest(id)?;
            out.push(ImageSummary {
                id: id.to_string(),
                meta: self.meta(id)?,
                entries: manifest.entries.len(),
                bytes: manifest.entries.iter().filter(|e| e.hash.is_some()).map(|e| e.size).sum(),
            });
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// Atomically writes `keys/<key>` = id.
    fn write_key(&self, key: &str, id: &str) -> Result<(), StoreError> {
        let keys = self.images.join("keys");
        let mut tmp =
            tempfile::Builder::new().prefix(".key-").tempfile_in(&keys).map_err(io(&keys))?;
        tmp.write_all(id.as_bytes()).map_err(io(&keys))?;
        let dest = keys.join(key);
        tmp.persist(&dest).map_err(|e| io(&dest)(e.error))?;
        Ok(())
    }
}

/// Compares the tree at `root` with `manifest`.
pub fn verify_tree(
    root: &Path,
    manifest: &Manifest,
    mounts: MountPolicy,
) -> Result<DriftReport, StoreError> {
    let walk = walk_tree(root, mounts, false)?;
    Ok(integrity::diff_manifests(manifest, &walk.manifest, &walk.skipped_mounts))
}

/// Removes every write bit in the tree: the stored image is read-only even where the immutable
/// attribute is unsupported.
fn strip_write_bits(root: &Path) -> Result<(), StoreError> {
    let md = std::fs::symlink_metadata(root).map_err(io(root))?;
    if md.file_type().is_symlink() {
        return Ok(());
    }
    if md.is_dir() {
        for ent in std::fs::read_dir(root).map_err(io(root))? {
            strip_write_bits(&ent.map_err(io(root))?.path())?;
        }
    }
    let mode = md.permissions().mode() & 0o7777;
    if mode & 0o222 != 0 {
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(mode & !0o222))
            .map_err(io(root))?;
    }
    Ok(())
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), StoreError> {
    let bytes = serde_json::to_vec(value).map_err(|e| io(path)(e.into()))?;
    write_read_only(path, &bytes)
}

/// Writes `bytes` to `path` (mode 0444) through a temporary file and a rename.
fn write_read_only(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new().prefix(".tmp-").tempfile_in(dir).map_err(io(dir))?;
    tmp.write_all(bytes).map_err(io(path))?;
    tmp.as_file().set_permissions(std::fs::Permissions::from_mode(0o444)).map_err(io(path))?;
    tmp.persist(path).map_err(|e| io(path)(e.error))?;
    Ok(())
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, StoreError> {
    let bytes = std::fs::read(path).map_err(io(path))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| StoreError::Corrupt { path: path.to_path_buf(), why: e.to_string() })
}
