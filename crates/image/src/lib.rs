//! isc-image: root images for Immutable Service Containers.
//!
//! * [`prepare_host_image`]: a minimal tree from host files plus their ELF closure, cached in the
//!   image store so an unchanged declaration does not rebuild on every start.
//! * [`prepare_dir_image`]: an operator-prepared tree, validated in place.
//! * [`elf_closure`]: the host paths such a tree holds (for tests and `isc image`).
//!
//! See `docs/images.md` for what is checked when.

pub mod closure;
pub mod dir;
pub mod elf;
pub mod host;
pub mod immutable;
pub mod integrity;
pub mod ldcache;
pub mod loader;
pub mod loopdev;
pub mod manifest;
pub mod oci;
mod oci_layer;
pub mod pack;
pub mod skeleton;
pub mod start_record;
pub mod store;

use std::path::PathBuf;

pub use dir::prepare_dir_image;
pub use host::{elf_closure, host_image_id, prepare_host_image, HostImageRequest};
pub use integrity::{Change, DriftReport, IntegrityError};
pub use loopdev::ErofsMount;
pub use manifest::{Manifest, ManifestEntry, MountPolicy};
pub use oci::{
    import_docker_archive, import_oci_layout, oci_layout_key, ImportOptions, ImportedImage,
    OciError,
};
pub use pack::{ErofsBuilder, MkfsErofs, PackError, PackedImage, PackedReport};
pub use store::{verify_tree, ImageDefaults, ImageLease, ImageMeta, ImageStore, ImageSummary};

/// A root tree ready for the engine to mount read-only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreparedRoot {
    /// The tree's directory on the host.
    pub rootfs: PathBuf,
    /// The image id (see docs/images.md for what it identifies per source).
    pub id: String,
    /// `true` when a stored tree was reused instead of built.
    pub cached: bool,
}

/// Every error this crate returns from its top-level functions.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// Computing the host closure failed.
    #[error(transparent)]
    Closure(#[from] closure::ClosureError),
    /// Copying host files failed.
    #[error(transparent)]
    HostBuild(#[from] host::HostBuildError),
    /// The image store failed.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// A stored image failed its before-start integrity check.
    #[error(transparent)]
    Integrity(#[from] integrity::IntegrityError),
    /// An OCI import was refused or failed.
    #[error(transparent)]
    Oci(#[from] oci::OciError),
    /// A prepared directory is unusable.
    #[error(transparent)]
    Dir(#[from] dir::DirImageError),
    /// Packing or mounting a packed image failed.
    #[error(transparent)]
    Pack(#[from] pack::PackError),
}
