//! `[image] source = "dir:PATH"`: a tree the operator prepared, used in place.

use std::path::{Path, PathBuf};

use crate::skeleton::{check_mount_point, missing_mount_points, SkeletonError};
use crate::{ImageError, PreparedRoot};

/// Errors of a prepared-directory image.
#[derive(Debug, thiserror::Error)]
pub enum DirImageError {
    /// The path does not exist or cannot be read.
    #[error("image directory {path}: {source}; create the tree or fix `source = \"dir:...\"`")]
    Unreadable {
        /// The path as given.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The path is not a directory.
    #[error("image directory {path} is not a directory; `source = \"dir:PATH\"` takes a prepared root tree")]
    NotADirectory {
        /// The path.
        path: PathBuf,
    },
    /// Mount points are missing.
    #[error("image directory {path} lacks the mount points {}; create them with `mkdir -p {}`", list(.missing), fix(.path, .missing))]
    MissingMountPoints {
        /// The tree.
        path: PathBuf,
        /// Image paths that are not real directories in it.
        missing: Vec<PathBuf>,
    },
    /// A caller-supplied mount point is malformed.
    #[error(transparent)]
    MountPoint(#[from] SkeletonError),
}

/// [`validate_dir_image`] with the crate-wide error type (the engine's entry point).
pub fn prepare_dir_image(path: &Path, extra_dirs: &[PathBuf]) -> Result<PreparedRoot, ImageError> {
    Ok(validate_dir_image(path, extra_dirs)?)
}

fn list(v: &[PathBuf]) -> String {
    v.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
}

fn fix(root: &Path, v: &[PathBuf]) -> String {
    v.iter()
        .map(|p| crate::skeleton::in_tree(root, p).display().to_string())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Validates a prepared tree: it exists, is a directory, and holds the skeleton mount points
/// (`/proc /dev /sys /tmp /run /run/secrets /etc`) and `extra_dirs` as real directories (not
/// symlinks, which could point a mount outside the tree). The tree is not copied or hashed; its
/// id is `dir-` and the BLAKE3 of its canonical path, so it names the location, not the content.
pub fn validate_dir_image(
    path: &Path,
    extra_dirs: &[PathBuf],
) -> Result<PreparedRoot, DirImageError> {
    for d in extra_dirs {
        check_mount_point(d)?;
    }
    let canonical = std::fs::canonicalize(path)
        .map_err(|e| DirImageError::Unreadable { path: path.to_path_buf(), source: e })?;
    if !canonical.is_dir() {
        return Err(DirImageError::NotADirectory { path: canonical });
    }
    let missing = missing_mount_points(&canonical, extra_dirs);
    if !missing.is_empty() {
        return Err(DirImageError::MissingMountPoints { path: canonical, missing });
    }
    let hash = blake3::hash(canonical.as_os_str().as_encoded_bytes());
    Ok(PreparedRoot {
        id: format!("dir-{}", &hash.to_hex()[..32]),
        rootfs: canonical,
        cached: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_mount_points_are_named_with_a_fix() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("proc")).unwrap();
        let err = validate_dir_image(dir.path(), &[PathBuf::from("/data")]).unwrap_err();
        let msg = err.to_string();
        for m in ["/dev", "/sys", "/tmp", "/run/secrets", "/etc", "/data", "mkdir -p"] {
            assert!(msg.contains(m), "{m} not in {msg}");
        }
        assert!(!msg.contains("/proc,"), "{msg}");
    }

    #[test]
    fn complete_tree_is_accepted() {
        let dir = tempfile::tempdir().unwrap();
        crate::skeleton::write_skeleton(dir.path(), &[], 1000, 1000).unwrap();
        let prepared = prepare_dir_image(dir.path(), &[]).unwrap();
        assert!(prepared.id.starts_with("dir-"));
        assert_eq!(prepared.rootfs, std::fs::canonicalize(dir.path()).unwrap());
    }

    #[test]
    fn file_and_missing_paths_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        std::fs::write(&f, "x").unwrap();
        assert!(matches!(validate_dir_image(&f, &[]), Err(DirImageError::NotADirectory { .. })));
        assert!(matches!(
            validate_dir_image(&dir.path().join("nope"), &[]),
            Err(DirImageError::Unreadable { .. })
        ));
    }
}
