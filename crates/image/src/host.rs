//! `[image] source = "host"`: a minimal root tree made of host files and their ELF closure.
//!
//! The start path (`isc run` of an unchanged declaration) only computes the closure (a few
//! `lstat`s and header reads per object), hashes the host facts into a cache key, and finds the
//! stored tree under that key. The tree is copied (never hard-linked: a hard link would let a host
//! change show through, and the image be changed from the host) only on a miss.

use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::closure::{Plan, PlanEntry, Planner};
use crate::skeleton::{self, in_tree, GENERATED_FILES};
use crate::store::{ImageMeta, ImageStore};
use crate::{ImageError, PreparedRoot};

/// What a host-built image contains and who its service user is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostImageRequest {
    /// Host files and directories (directories are taken recursively).
    pub paths: Vec<PathBuf>,
    /// Extra mount points to create (tmpfs, volumes, workdir).
    pub extra_dirs: Vec<PathBuf>,
    /// The service user's uid inside the ISC, written to `/etc/passwd` as `isc`.
    pub uid: u32,
    /// The service user's gid inside the ISC, written to `/etc/group` as `isc`.
    pub gid: u32,
}

/// Errors while copying host files into a tree.
#[derive(Debug, thiserror::Error)]
pub enum HostBuildError {
    /// Copying a host entry failed.
    #[error("cannot copy host {path} into the image: {source}")]
    Copy {
        /// The host path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A host file changed between computing the closure and copying it.
    #[error("host file {path} changed while the image was being built (it is being updated?); run again")]
    Changed {
        /// The host path.
        path: PathBuf,
    },
    /// Writing the skeleton failed.
    #[error(transparent)]
    Skeleton(#[from] skeleton::SkeletonError),
}

/// Version of the cache-key derivation; bump when the tree layout or generated files change so
/// old trees are not reused.
const KEY_VERSION: &[u8] = b"isc-host-image-v1\0";

/// The host paths a tree for `paths` would hold: the requested paths, every symlink and
/// directory on the way to them, and the ELF closure (interpreter and libraries), sorted.
pub fn elf_closure(paths: &[PathBuf]) -> Result<Vec<PathBuf>, ImageError> {
    let plan = Planner::new().plan(paths)?;
    Ok(plan.entries.into_keys().collect())
}

/// Builds (or finds in the cache) the root tree for `req` under `store_root/images/`; a tree
/// found in the cache is start-checked before it is returned.
pub fn prepare_host_image(
    store_root: &Path,
    req: &HostImageRequest,
) -> Result<PreparedRoot, ImageError> {
    let store = ImageStore::open(store_root)?;
    match find_or_build(&store, req)? {
        HostImage::Cached(id) => Ok(store.check_before_start(&id)?),
        HostImage::Built(prepared) => Ok(prepared),
    }
}

/// The id of the stored tree for `req`, found in the cache or built now, *not* start-checked:
/// for a caller that leases the image first and then checks it (`isc run`), so the check runs
/// once and nothing can remove the image between the check and the mount.
pub fn host_image_id(store: &ImageStore, req: &HostImageRequest) -> Result<String, ImageError> {
    Ok(match find_or_build(store, req)? {
        HostImage::Cached(id) => id,
        HostImage::Built(prepared) => prepared.id,
    })
}

/// A host tree found in the cache (by id: not checked yet) or freshly built and stored.
enum HostImage {
    Cached(String),
    Built(PreparedRoot),
}

fn find_or_build(store: &ImageStore, req: &HostImageRequest) -> Result<HostImage, ImageError> {
    for d in &req.extra_dirs {
        skeleton::check_mount_point(d).map_err(HostBuildError::from)?;
    }
    let plan = Planner::new().plan(&req.paths)?;
    let key = cache_key(&plan, req);
    if let Some(id) = store.lookup_key(&key)? {
        tracing::debug!(key = %key, id = %id, "host image cache hit");
        return Ok(HostImage::Cached(id));
    }
    let staging = store.staging()?;
    let rootfs = staging.path().join("rootfs");
    populate(&rootfs, &plan)?;
    skeleton::write_skeleton(&rootfs, &req.extra_dirs, req.uid, req.gid)
        .map_err(HostBuildError::from)?;
    chown_tree_root(&rootfs)
        .map_err(|e| HostBuildError::Copy { path: rootfs.clone(), source: e })?;
    let meta = ImageMeta { source: "host".to_string(), defaults: None };
    let prepared = store.commit(staging, &meta, Some(&key))?;
    tracing::info!(id = %prepared.id, files = plan.entries.len(), "built host image");
    Ok(HostImage::Built(prepared))
}

/// BLAKE3 over the sorted closure with each entry's host `lstat` facts, the mount points and the
/// service ids: any change to a copied file (content changes move mtime/size; replacement moves
/// the inode) gives a new key.
fn cache_key(plan: &Plan, req: &HostImageRequest) -> String {
    let mut h = blake3::Hasher::new();
    h.update(KEY_VERSION);
    for (path, entry) in &plan.entries {
        h.update(path.as_os_str().as_encoded_bytes());
        h.update(b"\0");
        let (tag, host, target): (u8, Option<_>, &[u8]) = match entry {
            PlanEntry::Dir { host } => (b'd', *host, b""),
            PlanEntry::File { host } => (b'f', Some(*host), b""),
            PlanEntry::Symlink { target, host } => {
                (b'l', Some(*host), target.as_os_str().as_encoded_bytes())
            }
        };
        h.update(&[tag]);
        if let Some(s) = host {
            h.update(&s.dev.to_le_bytes());
            h.update(&s.ino.to_le_bytes());
            h.update(&s.size.to_le_bytes());
            h.update(&s.mtime_ns.to_le_bytes());
            h.update(&s.mode.to_le_bytes());
        }
        h.update(target);
        h.update(b"\0");
    }
    let mut extra: Vec<&PathBuf> = req.extra_dirs.iter().collect();
    extra.sort();
    extra.dedup();
    for d in extra {
        h.update(b"mount\0");
        h.update(d.as_os_str().as_encoded_bytes());
        h.update(b"\0");
    }
    h.update(&req.uid.to_le_bytes());
    h.update(&req.gid.to_le_bytes());
    h.finalize().to_hex().to_string()
}

/// Copies the plan into `rootfs` (created here). Modes are kept minus setuid/setgid; everything
/// is owned by root when we are root.
fn populate(rootfs: &Path, plan: &Plan) -> Result<(), HostBuildError> {
    let copy_err = |p: &Path| {
        let p = p.to_path_buf();
        move |e| HostBuildError::Copy { path: p, source: e }
    };
    std::fs::create_dir(rootfs).map_err(copy_err(rootfs))?;
    std::fs::set_permissions(rootfs, std::fs::Permissions::from_mode(0o755))
        .map_err(copy_err(rootfs))?;
    for (path, entry) in &plan.entries {
        if path == Path::new("/") || GENERATED_FILES.iter().any(|g| Path::new(g) == path) {
            continue;
        }
        let dest = in_tree(rootfs, path);
        match entry {
            PlanEntry::Dir { host } => {
                std::fs::create_dir(&dest).map_err(copy_err(path))?;
                let mode = host.map_or(0o755, |h| sanitize_mode(h.mode));
                std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(mode))
                    .map_err(copy_err(path))?;
            }
            PlanEntry::Symlink { target, .. } => {
                std::os::unix::fs::symlink(target, &dest).map_err(copy_err(path))?;
            }
            PlanEntry::File { host } => copy_file(path, &dest, host)?,
        }
        lchown_root(&dest).map_err(copy_err(path))?;
    }
    Ok(())
}

/// Permission bits without setuid/setgid: an ISC runs with `no_new_privs`, and a setuid file in
/// an image is an escalation waiting for a configuration mistake.
fn sanitize_mode(mode: u32) -> u32 {
    mode & 0o1777
}

fn copy_file(
    src: &Path,
    dest: &Path,
    expected: &crate::closure::HostStat,
) -> Result<(), HostBuildError> {
    let err = |e| HostBuildError::Copy { path: src.to_path_buf(), source: e };
    // O_NOFOLLOW: the closure recorded a regular file here; a symlink swapped in since must not
    // pull some other host file into the image.
    let mut input = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(src)
        .map_err(err)?;
    let md = input.metadata().map_err(err)?;
    let mtime_ns = i128::from(md.mtime()) * 1_000_000_000 + i128::from(md.mtime_nsec());
    if !md.is_file()
        || md.ino() != expected.ino
        || md.size() != expected.size
        || mtime_ns != expected.mtime_ns
    {
        return Err(HostBuildError::Changed { path: src.to_path_buf() });
    }
    let mut output = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dest)
        .map_err(err)?;
    // std::io::copy uses copy_file_range(2)/sendfile(2) for file-to-file copies.
    std::io::copy(&mut input, &mut output).map_err(err)?;
    output
        .set_permissions(std::fs::Permissions::from_mode(sanitize_mode(md.mode())))
        .map_err(err)?;
    Ok(())
}

fn lchown_root(p: &Path) -> std::io::Result<()> {
    if euid_is_root() {
        std::os::unix::fs::lchown(p, Some(0), Some(0))?;
    }
    Ok(())
}

fn chown_tree_root(rootfs: &Path) -> std::io::Result<()> {
    if !euid_is_root() {
        return Ok(());
    }
    // The skeleton and /etc files are created by this process (root already), but be explicit:
    // the tree must not depend on the builder's umask or fsgid.
    for d in skeleton::SKELETON_DIRS.iter().chain(GENERATED_FILES) {
        let p = in_tree(rootfs, Path::new(d));
        std::os::unix::fs::lchown(&p, Some(0), Some(0))?;
    }
    std::os::unix::fs::lchown(rootfs, Some(0), Some(0))
}

fn euid_is_root() -> bool {
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}
