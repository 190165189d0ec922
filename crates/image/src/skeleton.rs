//! The parts of every root tree that do not come from the image's content: the mount points the
//! engine mounts over, and a minimal `/etc` for name lookups.
//!
//! Generated files (always written, replacing any host copy, so an image cannot smuggle in extra
//! accounts): `/etc/passwd` and `/etc/group` with `root`, `nobody` and the service user `isc`,
//! `/etc/hosts` with the loopback names, and `/etc/nsswitch.conf` resolving from `files` (and
//! `dns` for hosts; glibc ≥ 2.34 has both modules built into libc, so no NSS library is needed).

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

/// Mount points every root tree must contain as real directories (the engine mounts `/proc`, a
/// minimal `/dev`, optionally `/sys`, tmpfs on `/tmp` and `/run`, and the secrets tmpfs).
pub const SKELETON_DIRS: &[&str] =
    &["/proc", "/dev", "/sys", "/tmp", "/run", "/run/secrets", "/etc"];

/// Files generated into `/etc` of host-built images.
pub const GENERATED_FILES: &[&str] =
    &["/etc/passwd", "/etc/group", "/etc/hosts", "/etc/nsswitch.conf"];

/// Errors while writing or checking the skeleton.
#[derive(Debug, thiserror::Error)]
pub enum SkeletonError {
    /// A caller-supplied mount point is not a clean absolute path.
    #[error("mount point {path} must be an absolute path without `.` or `..` components")]
    BadMountPoint {
        /// The path as given.
        path: PathBuf,
    },
    /// A mount point would have to be created through a symlink or over a file in the tree.
    #[error("mount point {path} cannot be created in the image: {component} is a {what} there; name a path that is a directory in the image")]
    MountPointBlocked {
        /// The mount point.
        path: PathBuf,
        /// The blocking component.
        component: PathBuf,
        /// "symlink" or "file".
        what: &'static str,
    },
    /// Writing into the tree failed.
    #[error("cannot write {path} into the image tree: {source}")]
    Write {
        /// The path in the tree.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// Checks that `p` is absolute and has only normal components.
pub fn check_mount_point(p: &Path) -> Result<(), SkeletonError> {
    let ok = p.is_absolute()
        && p.components().all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
    if ok {
        Ok(())
    } else {
        Err(SkeletonError::BadMountPoint { path: p.to_path_buf() })
    }
}

/// `root` joined with an absolute image path.
pub fn in_tree(root: &Path, image_path: &Path) -> PathBuf {
    root.join(image_path.strip_prefix("/").unwrap_or(image_path))
}

/// Creates `mount_point` (and missing parents, 0755) inside `root` without following symlinks.
pub fn create_mount_point(root: &Path, mount_point: &Path) -> Result<(), SkeletonError> {
    check_mount_point(mount_point)?;
    let mut cur = root.to_path_buf();
    let mut image_path = PathBuf::from("/");
    for c in mount_point.components().skip(1) {
        cur.push(c);
        image_path.push(c);
        match std::fs::symlink_metadata(&cur) {
            Ok(md) if md.is_dir() => {}
            Ok(md) => {
                return Err(SkeletonError::MountPointBlocked {
                    path: mount_point.to_path_buf(),
                    component: image_path,
                    what: if md.file_type().is_symlink() { "symlink" } else { "file" },
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir(&cur).map_err(|e| write_err(&cur, e))?;
                std::fs::set_permissions(&cur, std::fs::Permissions::from_mode(0o755))
                    .map_err(|e| write_err(&cur, e))?;
            }
            Err(e) => return Err(write_err(&cur, e)),
        }
    }
    Ok(())
}

/// Writes the skeleton directories, the caller's extra mount points and the generated `/etc`
/// files into `root`. `uid`/`gid` are the service user's ids inside the ISC.
pub fn write_skeleton(
    root: &Path,
    extra_dirs: &[PathBuf],
    uid: u32,
    gid: u32,
) -> Result<(), SkeletonError> {
    for d in SKELETON_DIRS {
        create_mount_point(root, Path::new(d))?;
    }
    for d in extra_dirs {
        create_mount_point(root, d)?;
    }
    let passwd = format!(
        "root:x:0:0:root:/root:/usr/sbin/nologin\n\
         nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n\
         isc:x:{uid}:{gid}:isc service:/nonexistent:/usr/sbin/nologin\n"
    );
    let group = format!("root:x:0:\nnogroup:x:65534:\nisc:x:{gid}:\n");
    let hosts = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n";
    let nss = "passwd: files\ngroup: files\nshadow: files\nhosts: files dns\nnetworks: files\nprotocols: files\nservices: files\n";
    for (name, body) in [
        ("/etc/passwd", passwd.as_str()),
        ("/etc/group", group.as_str()),
        ("/etc/hosts", hosts),
        ("/etc/nsswitch.conf", nss),
    ] {
        let p = in_tree(root, Path::new(name));
        match std::fs::symlink_metadata(&p) {
            Ok(_) => std::fs::remove_file(&p).map_err(|e| write_err(&p, e))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(write_err(&p, e)),
        }
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&p)
            .map_err(|e| write_err(&p, e))?;
        f.write_all(body.as_bytes()).map_err(|e| write_err(&p, e))?;
        f.set_permissions(std::fs::Permissions::from_mode(0o644)).map_err(|e| write_err(&p, e))?;
    }
    Ok(())
}

/// Creates only the skeleton mount points (imported images bring their own `/etc` files).
pub fn write_mount_points(root: &Path) -> Result<(), SkeletonError> {
    for d in SKELETON_DIRS {
        create_mount_point(root, Path::new(d))?;
    }
    Ok(())
}

/// The skeleton directories and `extra_dirs` that are not real directories under `root`.
pub fn missing_mount_points(root: &Path, extra_dirs: &[PathBuf]) -> Vec<PathBuf> {
    SKELETON_DIRS
        .iter()
        .map(PathBuf::from)
        .chain(extra_dirs.iter().cloned())
        .filter(|d| !is_real_dir_in(root, d))
        .collect()
}

/// `true` when every component of `image_path` below `root` is a directory, not a symlink.
fn is_real_dir_in(root: &Path, image_path: &Path) -> bool {
    let mut cur = root.to_path_buf();
    for c in image_path.components().skip(1) {
        cur.push(c);
        match std::fs::symlink_metadata(&cur) {
            Ok(md) if md.is_dir() => {}
            _ => return false,
        }
    }
    true
}

fn write_err(p: &Path, e: std::io::Error) -> SkeletonError {
    SkeletonError::Write { path: p.to_path_buf(), source: e }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_skeleton_and_users() {
        let dir = tempfile::tempdir().unwrap();
        write_skeleton(dir.path(), &[PathBuf::from("/data/cache")], 1000, 1001).unwrap();
        assert!(missing_mount_points(dir.path(), &[PathBuf::from("/data/cache")]).is_empty());
        let passwd = std::fs::read_to_string(dir.path().join("etc/passwd")).unwrap();
        assert!(passwd.contains("isc:x:1000:1001:"), "{passwd}");
        let group = std::fs::read_to_string(dir.path().join("etc/group")).unwrap();
        assert!(group.contains("isc:x:1001:"), "{group}");
    }

    #[test]
    fn mount_point_through_symlink_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/", dir.path().join("escape")).unwrap();
        let err = create_mount_point(dir.path(), Path::new("/escape/x")).unwrap_err();
        assert!(err.to_string().contains("/escape is a symlink"), "{err}");
        let err = create_mount_point(dir.path(), Path::new("/a/../b")).unwrap_err();
        assert!(matches!(err, SkeletonError::BadMountPoint { .. }));
    }
}
