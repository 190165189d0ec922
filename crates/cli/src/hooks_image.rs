//! The image side of a start: resolve `[image] source` to a tree, lease it, check it, and (for
//! packed images) mount it. What is checked when is in docs/images.md.
//!
//! * `host`: built (or found in the host-build cache), then leased and start-checked.
//! * `id:HEX`: leased and start-checked (one `lstat` per entry against `record.bin`; mount points
//!   answered from that record).
//! * `oci:PATH`: imported once; later starts find the id by the layout's key and go by id.
//! * `erofs:PATH`: a file packed by `isc image pack` is leased, its flag and `lstat` facts are
//!   checked against its record, and it is mounted read-only from a loop device. Any other EROFS
//!   file is mounted unchecked, like `dir:PATH` (its id names the place, not the content).
//! * `dir:PATH`: validated in place, not hashed.
//!
//! The returned [`ImageHold`] must live until the ISC has ended: it holds the lease that stops
//! `isc image rm` and it owns the host-side EROFS mount.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use isc_image::{
    dir::validate_dir_image, host_image_id, import_oci_layout, oci_layout_key, prepare_dir_image,
    ErofsMount, HostImageRequest, ImageLease, ImageStore, ImportOptions, PreparedRoot,
};
use isc_manifest::{ImageSource, Manifest};

use crate::launch::Dirs;

/// What keeps an ISC's image usable while it runs; drop it after `isc_engine::run` returns.
#[derive(Default)]
pub struct ImageHold {
    lease: Option<ImageLease>,
    mount: Option<(ErofsMount, PathBuf)>,
}

impl ImageHold {
    /// The image is a filesystem mounted for this ISC (EROFS on a loop device), whose release
    /// waits for every mount of it — the ISC's own included — to be gone.
    pub fn is_mounted(&self) -> bool {
        self.mount.is_some()
    }

    /// A hibernating monitor can keep it: a lease is one descriptor (a mounted image is not
    /// kept across a hibernation yet).
    pub fn can_hibernate(&self) -> bool {
        self.mount.is_none()
    }

    /// The lease as (image id, descriptor) for a hibernating monitor; the hold is empty after.
    pub fn keep(&mut self) -> Option<(String, std::os::fd::OwnedFd)> {
        self.lease.take().map(ImageLease::into_kept)
    }

    /// The hold of a woken monitor, from [`ImageHold::keep`].
    pub fn adopt(kept: Option<(String, std::os::fd::OwnedFd)>) -> ImageHold {
        ImageHold { lease: kept.map(|(id, fd)| ImageLease::adopt(id, fd)), mount: None }
    }
}

impl Drop for ImageHold {
    fn drop(&mut self) {
        if let Some((mount, dir)) = self.mount.take() {
            drop(mount);
            let _ = std::fs::remove_dir(&dir);
        }
        // The lease is released after the mount is gone (fields drop after this body).
    }
}

/// Leases stored image `id` and runs the before-start check, mount points `extra` included; the
/// lease comes first so the image cannot be removed between the check and the mount.
fn lease_and_check(
    store: &ImageStore,
    id: &str,
    extra: &[PathBuf],
) -> Result<(ImageLease, PreparedRoot)> {
    let lease = store.lease(id).with_context(|| format!("taking a lease on image {id}"))?;
    let prepared = store.check_before_start_for(id, extra)?;
    Ok((lease, prepared))
}

/// Imports the OCI layout at `layout` unless the store already maps its key to an image.
fn import_oci_once(store: &ImageStore, store_root: &Path, layout: &Path) -> Result<String> {
    let opts = ImportOptions::default();
    let key = oci_layout_key(layout, &opts)?;
    if let Some(id) = store.lookup_key(&key)? {
        tracing::debug!(id, layout = %layout.display(), "OCI layout already imported");
        return Ok(id);
    }
    let imported = import_oci_layout(store_root, layout, &opts)
        .with_context(|| format!("importing the OCI layout {}", layout.display()))?;
    store.set_key(&key, &imported.prepared.id)?;
    Ok(imported.prepared.id)
}

/// The id of the store image a manifest's `[image]` names (`host`, `oci:`, `id:`), built or
/// imported on the way if needed; not start-checked (callers check it, after leasing it if it
/// is about to run).
fn store_image_id(
    store: &ImageStore,
    m: &Manifest,
    dirs: &Dirs,
    extra: &[PathBuf],
) -> Result<String> {
    match &m.image.source {
        ImageSource::Host => Ok(host_image_id(
            store,
            &HostImageRequest {
                paths: m.image.paths.clone(),
                extra_dirs: extra.to_vec(),
                uid: m.service.user,
                gid: m.service.group,
            },
        )
        .context("building the root image from host files")?),
        ImageSource::Oci(layout) => import_oci_once(store, &dirs.root, layout),
        ImageSource::Id(id) => Ok(id.clone()),
        other => anyhow::bail!(
            "image source `{other}` is not built into the store; fix: use `host`, `oci:PATH` or `id:HEX` (pack a stored image with `isc image pack ID`)"
        ),
    }
}

/// Builds or finds the store image a manifest's `[image]` names (`host`, `oci:`, `id:`), and
/// start-checks it, without leasing it (`isc image build`).
pub fn build_store_image(m: &Manifest, dirs: &Dirs, extra: &[PathBuf]) -> Result<PreparedRoot> {
    let store = ImageStore::open(&dirs.root)?;
    let id = store_image_id(&store, m, dirs, extra)?;
    Ok(store.check_before_start_for(&id, extra)?)
}

/// Resolves, leases, checks and (for EROFS) mounts the image of `m` for ISC `m.name`.
pub fn prepare(m: &Manifest, dirs: &Dirs, extra: &[PathBuf]) -> Result<(PreparedRoot, ImageHold)> {
    let mut hold = ImageHold::default();
    let prepared = match &m.image.source {
        ImageSource::Dir(p) => {
            prepare_dir_image(p, extra).context("checking the prepared root tree")?
        }
        ImageSource::Erofs(file) => {
            let store = ImageStore::open(&dirs.root)?;
            let dir = mount_dir(store.images_dir(), &m.name)?;
            let (mount, id) = match store.packed_id_of(file) {
                Some(id) => {
                    hold.lease = Some(
                        store
                            .lease(&id)
                            .with_context(|| format!("taking a lease on image {id}"))?,
                    );
                    let mount = store.mount_packed(&id, &dir).inspect_err(|_| {
                        let _ = std::fs::remove_dir(&dir);
                    })?;
                    (mount, id)
                }
                None => {
                    tracing::warn!(file = %file.display(), "EROFS file outside the image store: mounted without an integrity check");
                    let mount = ErofsMount::mount(file, &dir).inspect_err(|_| {
                        let _ = std::fs::remove_dir(&dir);
                    })?;
                    let canonical = std::fs::canonicalize(file).unwrap_or_else(|_| file.clone());
                    let h = blake3::hash(canonical.as_os_str().as_encoded_bytes()).to_hex();
                    (mount, format!("erofs-{}", &h[..32]))
                }
            };
            hold.mount = Some((mount, dir.clone()));
            validate_dir_image(&dir, extra)
                .with_context(|| format!("checking the mount points of {}", file.display()))?;
            PreparedRoot { rootfs: dir, id, cached: true }
        }
        _ => {
            // One start check, after the lease (build_store_image would check once more).
            let store = ImageStore::open(&dirs.root)?;
            let id = store_image_id(&store, m, dirs, extra)?;
            let (lease, prepared) = lease_and_check(&store, &id, extra)?;
            hold.lease = Some(lease);
            prepared
        }
    };
    Ok((prepared, hold))
}

/// A fresh host-side mount point `<root>/images/mnt/<name>.<pid>`, after detaching mounts left by
/// dead `isc run` processes. Below `images/` (mode 0755) because the ISC's user namespace must be
/// able to reach the mount to bind it as its root, as for a directory image; the runtime state
/// directory is private (0700).
fn mount_dir(images: &Path, name: &str) -> Result<PathBuf> {
    let base = images.join("mnt");
    std::fs::create_dir_all(&base).with_context(|| format!("creating {}", base.display()))?;
    for ent in std::fs::read_dir(&base).with_context(|| format!("reading {}", base.display()))? {
        let path = ent?.path();
        let pid = path.extension().and_then(|e| e.to_str()).and_then(|e| e.parse::<u32>().ok());
        if let Some(pid) = pid {
            if !Path::new(&format!("/proc/{pid}")).exists() {
                // EINVAL: not mounted any more; the directory is all that is left.
                let _ = isc_image::loopdev::detach_mount(&path);
                let _ = std::fs::remove_dir(&path);
            }
        }
    }
    let dir = base.join(format!("{name}.{}", std::process::id()));
    std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}
