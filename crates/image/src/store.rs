//! The image store under `<store_root>/images/`.
//!
//! ```text
//! images/<id>/rootfs/     the tree (never changed after it is committed)
//! images/keys/<key>       cache key → id, for host-built images
//! images/tmp/build-*      staging trees; renamed into place when complete
//! ```
//! Builders write a complete tree into a private staging directory and `rename(2)` it to
//! `images/<id>`: readers see either no image or a whole one. Two builders racing on the same id
//! both build; the second `rename` fails with `ENOTEMPTY`/`EEXIST` and that builder discards its
//! copy and uses the winner's, which has the same content by construction.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::PreparedRoot;

/// Errors of the image store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A store directory could not be created or read.
    #[error(
        "image store {path}: {source}; check that the isc root exists and is writable by root"
    )]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A key file names an id that is not a valid id.
    #[error("image store entry {path} is corrupt (holds {content:?}); delete it and run again")]
    CorruptKey {
        /// The key file.
        path: PathBuf,
        /// What it holds.
        content: String,
    },
}

/// Handle to `<store_root>/images`.
#[derive(Debug, Clone)]
pub struct Store {
    images: PathBuf,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |e| StoreError::Io { path: path.to_path_buf(), source: e }
}

/// Image ids and cache keys are lowercase hex (BLAKE3 output); anything else is refused so an id
/// can never name a path outside the store.
pub fn is_valid_id(id: &str) -> bool {
    id.len() == 64 && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl Store {
    /// Opens (creating if needed) the store below `store_root`.
    pub fn open(store_root: &Path) -> Result<Self, StoreError> {
        let images = store_root.join("images");
        for (dir, mode) in
            [(&images, 0o755), (&images.join("keys"), 0o700), (&images.join("tmp"), 0o700)]
        {
            match std::fs::create_dir_all(dir) {
                Ok(()) => {}
                Err(e) => return Err(io(dir)(e)),
            }
            let md = std::fs::metadata(dir).map_err(io(dir))?;
            if md.permissions().mode() & 0o7777 != mode {
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
                    .map_err(io(dir))?;
            }
        }
        Ok(Self { images })
    }

    /// `<store_root>/images`.
    pub fn images_dir(&self) -> &Path {
        &self.images
    }

    /// The directory of image `id`.
    pub fn image_dir(&self, id: &str) -> PathBuf {
        self.images.join(id)
    }

    /// The stored image for cache `key`, if any.
    pub fn lookup_key(&self, key: &str) -> Result<Option<PreparedRoot>, StoreError> {
        let key_file = self.images.join("keys").join(key);
        let id = match std::fs::read_to_string(&key_file) {
            Ok(s) => s.trim().to_string(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(&key_file)(e)),
        };
        if !is_valid_id(&id) {
            return Err(StoreError::CorruptKey { path: key_file, content: id });
        }
        let rootfs = self.image_dir(&id).join("rootfs");
        if !rootfs.is_dir() {
            // The image was removed; the key is stale and will be rewritten by the next build.
            return Ok(None);
        }
        Ok(Some(PreparedRoot { rootfs, id, cached: true }))
    }

    /// A fresh private staging directory; it is removed on drop unless committed.
    pub fn staging(&self) -> Result<tempfile::TempDir, StoreError> {
        let tmp = self.images.join("tmp");
        tempfile::Builder::new().prefix("build-").tempdir_in(&tmp).map_err(io(&tmp))
    }

    /// Moves a complete staging tree into place as image `id` and records `key → id`.
    pub fn commit(
        &self,
        staging: tempfile::TempDir,
        id: &str,
        key: &str,
    ) -> Result<PreparedRoot, StoreError> {
        let dest = self.image_dir(id);
        std::fs::set_permissions(staging.path(), std::fs::Permissions::from_mode(0o755))
            .map_err(io(staging.path()))?;
        match std::fs::rename(staging.path(), &dest) {
            Ok(()) => {
                let _ = staging.keep();
            }
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTEMPTY) | Some(libc::EEXIST)) => {
                tracing::debug!(
                    id,
                    "image already stored by a concurrent builder; discarding ours"
                );
                drop(staging);
            }
            Err(e) => return Err(io(&dest)(e)),
        }
        self.write_key(key, id)?;
        Ok(PreparedRoot { rootfs: dest.join("rootfs"), id: id.to_string(), cached: false })
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
