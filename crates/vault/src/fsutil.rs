//! Durable file operations: create-exclusive, atomic replace, directory fsync.
//!
//! Every write the vault makes must survive a crash in a state that is either the old or the new
//! content, never a torn file: write a temporary file in the same directory, fsync it, rename it
//! over the target, then fsync the directory so the rename itself is durable (see rename(2) and
//! the ext4 "data=ordered" caveats discussed in LWN 322823).

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Errors of the durable file helpers.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// Creating a directory failed.
    #[error("cannot create directory {path}: {source} (check that the parent exists and is writable by root)")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Writing a temporary file failed.
    #[error("cannot write {path}: {source} (is the filesystem full or read-only?)")]
    Write {
        /// The file being written.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Renaming the temporary file into place failed.
    #[error("cannot rename {from} to {to}: {source}")]
    Rename {
        /// The temporary file.
        from: PathBuf,
        /// The destination.
        to: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Reading a file failed.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Removing a file failed.
    #[error("cannot remove {path}: {source}")]
    Remove {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Syncing a directory failed.
    #[error("cannot fsync directory {path}: {source}")]
    SyncDir {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Suffix of every temporary file the vault writes; recovery deletes leftovers with it.
pub(crate) const TMP_SUFFIX: &str = ".isc-tmp";

/// Creates `path` (and parents) with mode `mode`, and re-applies the mode if it already exists.
pub(crate) fn ensure_dir(path: &Path, mode: u32) -> Result<(), FsError> {
    let err = |source| FsError::CreateDir { path: path.to_path_buf(), source };
    fs::DirBuilder::new().recursive(true).mode(mode).create(path).map_err(err)?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(err)
}

/// fsyncs a directory so renames and unlinks inside it are durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), FsError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| FsError::SyncDir { path: dir.to_path_buf(), source })
}

/// The temporary path used while writing `target`.
pub(crate) fn tmp_path(target: &Path) -> PathBuf {
    let mut name = target.file_name().unwrap_or_default().to_os_string();
    name.push(TMP_SUFFIX);
    target.with_file_name(name)
}

/// Writes `data` to the temporary sibling of `target` with `mode`, created with O_EXCL (a stale
/// temporary from a crash is removed first) and fsynced. Returns the temporary path.
pub(crate) fn write_tmp(target: &Path, data: &[u8], mode: u32) -> Result<PathBuf, FsError> {
    let tmp = tmp_path(target);
    let werr = |source| FsError::Write { path: tmp.clone(), source };
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => return Err(FsError::Remove { path: tmp, source }),
    }
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&tmp)
        .map_err(werr)?;
    f.write_all(data).map_err(werr)?;
    f.sync_all().map_err(werr)?;
    Ok(tmp)
}

/// Renames `tmp` over `target` and fsyncs the directory.
pub(crate) fn commit_tmp(tmp: &Path, target: &Path) -> Result<(), FsError> {
    fs::rename(tmp, target).map_err(|source| FsError::Rename {
        from: tmp.to_path_buf(),
        to: target.to_path_buf(),
        source,
    })?;
    sync_dir(target.parent().unwrap_or(Path::new("/")))
}

/// Renames `tmp` to `target` only if `target` does not exist (renameat2 RENAME_NOREPLACE), so a
/// key file is never silently replaced; then fsyncs the directory.
pub(crate) fn commit_tmp_noreplace(tmp: &Path, target: &Path) -> Result<(), FsError> {
    rustix::fs::renameat_with(
        rustix::fs::CWD,
        tmp,
        rustix::fs::CWD,
        target,
        rustix::fs::RenameFlags::NOREPLACE,
    )
    .map_err(|e| FsError::Rename {
        from: tmp.to_path_buf(),
        to: target.to_path_buf(),
        source: e.into(),
    })?;
    sync_dir(target.parent().unwrap_or(Path::new("/")))
}

/// Atomically replaces `target` with `data` (temporary file, fsync, rename, directory fsync).
pub(crate) fn write_atomic(target: &Path, data: &[u8], mode: u32) -> Result<(), FsError> {
    let tmp = write_tmp(target, data, mode)?;
    commit_tmp(&tmp, target)
}

/// Reads a file, mapping errors to [`FsError::Read`].
pub(crate) fn read(path: &Path) -> Result<Vec<u8>, FsError> {
    fs::read(path).map_err(|source| FsError::Read { path: path.to_path_buf(), source })
}

/// Removes a file and fsyncs its directory; a missing file is not an error.
pub(crate) fn remove_durable(path: &Path) -> Result<(), FsError> {
    match fs::remove_file(path) {
        Ok(()) => sync_dir(path.parent().unwrap_or(Path::new("/"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(FsError::Remove { path: path.to_path_buf(), source }),
    }
}

/// Removes leftover temporary files (crash debris) directly inside `dir`.
pub(crate) fn remove_stale_tmp(dir: &Path) -> Result<(), FsError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => return Err(FsError::Read { path: dir.to_path_buf(), source }),
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().ends_with(TMP_SUFFIX) {
            tracing::info!(path = %entry.path().display(), "removing stale temporary file");
            remove_durable(&entry.path())?;
        }
    }
    Ok(())
}
