//! Delivery of opened secrets onto a private tmpfs that the engine binds at `/run/secrets`.
//!
//! The tmpfs is size-limited, `nosuid,nodev,noexec`, `noswap` where the kernel has it (tmpfs
//! gained `noswap` in Linux 6.4; older kernels reject the unknown option with EINVAL, so we try it
//! and fall back), mode 0700 while being filled, then files 0400 and the directory 0500 owned by
//! the service's *host* uid/gid, and finally read-only both at the superblock and at the mount.
//! Its propagation is made private so the plaintext mount never shows up in other mount
//! namespaces through shared subtrees (mount_namespaces(7)).

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use zeroize::Zeroizing;

use crate::secrets::validate_name;
use crate::VaultError;

const PAGE: u64 = 4096;

/// Errors of secret delivery.
#[derive(Debug, thiserror::Error)]
pub enum TmpfsError {
    /// The secrets do not fit in the size limit.
    #[error("secrets for {dir} need {needed} bytes of tmpfs (each file takes whole 4 KiB pages) but the limit is {limit}; raise the secrets size limit")]
    TooLarge {
        /// The target directory.
        dir: PathBuf,
        /// Bytes needed.
        needed: u64,
        /// The limit given.
        limit: u64,
    },
    /// Preparing the mount point failed.
    #[error("cannot create mount point {dir}: {source}")]
    MountPoint {
        /// The directory.
        dir: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// mount(2) of the tmpfs failed.
    #[error("cannot mount tmpfs at {dir} ({options}): {source}")]
    Mount {
        /// The directory.
        dir: PathBuf,
        /// The options tried.
        options: String,
        /// The errno.
        source: Errno,
    },
    /// Writing a secret file failed.
    #[error("cannot write secret file {path}: {source}")]
    WriteFile {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Changing owner or mode failed.
    #[error("cannot set owner {uid}:{gid} / mode of {path}: {source}")]
    Ownership {
        /// The file or directory.
        path: PathBuf,
        /// The uid.
        uid: u32,
        /// The gid.
        gid: u32,
        /// The OS error.
        source: std::io::Error,
    },
    /// The read-only remount failed.
    #[error("cannot remount {dir} read-only: {source}")]
    Remount {
        /// The directory.
        dir: PathBuf,
        /// The errno.
        source: Errno,
    },
    /// umount(2) failed.
    #[error("cannot unmount the secrets tmpfs at {dir}: {source}")]
    Unmount {
        /// The directory.
        dir: PathBuf,
        /// The errno.
        source: Errno,
    },
}

/// Unmounts on drop unless disarmed, so a failure half-way leaves no plaintext mounted.
struct MountGuard<'a> {
    dir: &'a Path,
    armed: bool,
}

impl Drop for MountGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            if let Err(e) = umount2(self.dir, MntFlags::MNT_DETACH) {
                tracing::error!(dir = %self.dir.display(), error = %e, "cannot unmount secrets tmpfs after a failure");
            }
        }
    }
}

/// Mounts a fresh tmpfs at `dir` and writes each secret as a file of that name: files 0400 and
/// the directory 0500, owned by the HOST `uid`/`gid` the service runs as (the engine's user
/// namespace maps them to the container ids), then makes the mount read-only. On error nothing
/// stays mounted. The caller keeps ownership of the (zeroizing) values.
pub fn write_secret_tmpfs(
    dir: &Path,
    secrets: &[(String, Zeroizing<Vec<u8>>)],
    uid: u32,
    gid: u32,
    size_limit: u64,
) -> Result<(), VaultError> {
    for (name, _) in secrets {
        validate_name("secret", name)?;
    }
    let needed: u64 =
        secrets.iter().map(|(_, v)| (v.len() as u64).div_ceil(PAGE).max(1) * PAGE).sum();
    if needed > size_limit {
        return Err(TmpfsError::TooLarge { dir: dir.into(), needed, limit: size_limit }.into());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| TmpfsError::MountPoint { dir: dir.into(), source })?;
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let size = size_limit.max(PAGE);
    let with_noswap = format!("size={size},mode=0700,noswap");
    let noswap = match mount(Some("tmpfs"), dir, Some("tmpfs"), flags, Some(with_noswap.as_str())) {
        Ok(()) => true,
        Err(Errno::EINVAL) => {
            let options = format!("size={size},mode=0700");
            mount(Some("tmpfs"), dir, Some("tmpfs"), flags, Some(options.as_str()))
                .map_err(|source| TmpfsError::Mount { dir: dir.into(), options, source })?;
            false
        }
        Err(source) => {
            return Err(TmpfsError::Mount { dir: dir.into(), options: with_noswap, source }.into())
        }
    };
    let mut guard = MountGuard { dir, armed: true };
    mount(None::<&str>, dir, None::<&str>, MsFlags::MS_PRIVATE, None::<&str>).map_err(
        |source| TmpfsError::Mount {
            dir: dir.into(),
            options: "private propagation".into(),
            source,
        },
    )?;
    for (name, value) in secrets {
        write_one(&dir.join(name), value, uid, gid)?;
    }
    set_owner_mode(dir, uid, gid, 0o500)?;
    let ro = MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | flags;
    // First the superblock (no writer anywhere), then the mount itself (what bind mounts copy).
    mount(None::<&str>, dir, None::<&str>, ro, None::<&str>)
        .and_then(|()| mount(None::<&str>, dir, None::<&str>, ro | MsFlags::MS_BIND, None::<&str>))
        .map_err(|source| TmpfsError::Remount { dir: dir.into(), source })?;
    guard.armed = false;
    tracing::debug!(dir = %dir.display(), count = secrets.len(), noswap, "secrets delivered on tmpfs");
    Ok(())
}

fn write_one(path: &Path, value: &[u8], uid: u32, gid: u32) -> Result<(), TmpfsError> {
    let werr = |source| TmpfsError::WriteFile { path: path.into(), source };
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o400)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(werr)?;
    f.write_all(value).map_err(werr)?;
    drop(f);
    set_owner_mode(path, uid, gid, 0o400)
}

fn set_owner_mode(path: &Path, uid: u32, gid: u32, mode: u32) -> Result<(), TmpfsError> {
    let oerr = |source| TmpfsError::Ownership { path: path.into(), uid, gid, source };
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).map_err(oerr)?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(oerr)
}

/// Unmounts the secrets tmpfs at `dir` (its pages are freed with it). Not being mounted is fine,
/// so the engine can call this on every stop path.
pub fn unmount_secret_tmpfs(dir: &Path) -> Result<(), VaultError> {
    match umount2(dir, MntFlags::empty()) {
        Ok(()) => Ok(()),
        Err(Errno::EINVAL) | Err(Errno::ENOENT) => Ok(()),
        Err(Errno::EBUSY) => umount2(dir, MntFlags::MNT_DETACH)
            .map_err(|source| TmpfsError::Unmount { dir: dir.into(), source }.into()),
        Err(source) => Err(TmpfsError::Unmount { dir: dir.into(), source }.into()),
    }
}
