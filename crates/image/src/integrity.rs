//! Integrity of stored images: the errors of the cheap check before every start (the check
//! itself and its record are in [`crate::start_record`]), and drift reports.
//!
//! The full re-hash ([`diff_manifests`] over a fresh walk) runs at build/import and on demand.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::manifest::{EntryKind, Manifest, ManifestEntry};

/// Errors of the before-start check: each names the image and the path that failed.
#[derive(Debug, thiserror::Error)]
pub enum IntegrityError {
    /// The image is not in the store.
    #[error("image {id} is not in the store ({dir}); build or import it first")]
    NotStored {
        /// The id.
        id: String,
        /// Where it was looked for.
        dir: PathBuf,
    },
    /// The id is not a 64-hex-digit BLAKE3 id.
    #[error("{id:?} is not an image id (64 lowercase hex digits)")]
    BadId {
        /// What was given.
        id: String,
    },
    /// The start record is missing or unreadable.
    #[error("image {id}: integrity record {path} is unreadable ({why}); the image is incomplete or was tampered with: remove and rebuild it")]
    Record {
        /// The id.
        id: String,
        /// The record file.
        path: PathBuf,
        /// What went wrong.
        why: String,
    },
    /// The immutable flag of the tree was cleared.
    #[error("image {id}: the immutable attribute of {path} was cleared; refusing to start. Run `isc image verify {id}` and rebuild the image")]
    FlagCleared {
        /// The id.
        id: String,
        /// The tree root.
        path: PathBuf,
    },
    /// An entry changed.
    #[error("image {id}: {path} changed since the image was stored ({what}); refusing to start. Run `isc image verify {id}` for a full report and rebuild the image")]
    Changed {
        /// The id.
        id: String,
        /// Image path.
        path: String,
        /// Which facts differ.
        what: String,
    },
    /// The image lacks mount points the manifest needs (a stored image cannot be changed in place).
    #[error("image {id} lacks mount points this manifest needs: {}; add them as directories to the image's source and build or import it again", .missing.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))]
    MissingMountPoints {
        /// The id.
        id: String,
        /// Image paths that are not directories in the image.
        missing: Vec<PathBuf>,
    },
    /// An entry vanished.
    #[error("image {id}: {path} was removed since the image was stored; refusing to start. Rebuild the image")]
    Removed {
        /// The id.
        id: String,
        /// Image path.
        path: String,
    },
}

/// `rootfs` joined with an image path.
pub fn tree_path(rootfs: &Path, image_path: &str) -> PathBuf {
    rootfs.join(image_path.trim_start_matches('/'))
}

/// One changed path and which of its manifest fields differ.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// Image path.
    pub path: String,
    /// Fields that differ: `type`, `mode`, `uid`, `gid`, `size`, `target`, `content`.
    pub fields: Vec<String>,
}

/// A BART-style comparison of a tree against its manifest.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DriftReport {
    /// Paths present now but not in the manifest.
    pub added: Vec<String>,
    /// Paths in the manifest but gone now.
    pub removed: Vec<String>,
    /// Paths whose recorded facts differ.
    pub changed: Vec<Change>,
    /// Mount points not inspected (live trees only), with their subtrees.
    pub skipped_mounts: Vec<String>,
    /// `false` when the stored manifest itself no longer hashes to the image id.
    pub manifest_matches_id: bool,
}

impl DriftReport {
    /// `true` when nothing was added, removed or changed and the manifest matches its id.
    pub fn is_clean(&self) -> bool {
        self.added.is_empty()
            && self.removed.is_empty()
            && self.changed.is_empty()
            && self.manifest_matches_id
    }
}

fn under(path: &str, mounts: &[String]) -> bool {
    mounts
        .iter()
        .any(|m| path == m || path.strip_prefix(m.as_str()).is_some_and(|r| r.starts_with('/')))
}

/// Compares `actual` against `expected`; entries under `skipped_mounts` are left out on both
/// sides.
pub fn diff_manifests(
    expected: &Manifest,
    actual: &Manifest,
    skipped_mounts: &[String],
) -> DriftReport {
    let want: HashMap<&str, &ManifestEntry> = expected.by_path();
    let have: HashMap<&str, &ManifestEntry> = actual.by_path();
    let mut report = DriftReport {
        skipped_mounts: skipped_mounts.to_vec(),
        manifest_matches_id: true,
        ..DriftReport::default()
    };
    let all: BTreeSet<&str> = want.keys().chain(have.keys()).copied().collect();
    for path in all {
        if under(path, skipped_mounts) {
            continue;
        }
        match (want.get(path), have.get(path)) {
            (Some(_), None) => report.removed.push(path.to_string()),
            (None, Some(_)) => report.added.push(path.to_string()),
            (Some(w), Some(h)) => {
                let mut fields = Vec::new();
                if w.kind != h.kind {
                    fields.push("type");
                }
                if w.mode != h.mode {
                    fields.push("mode");
                }
                if w.uid != h.uid {
                    fields.push("uid");
                }
                if w.gid != h.gid {
                    fields.push("gid");
                }
                if w.size != h.size && w.kind == h.kind && w.kind == EntryKind::File {
                    fields.push("size");
                }
                if w.target != h.target {
                    fields.push("target");
                }
                if w.hash != h.hash && w.kind == EntryKind::File && h.kind == EntryKind::File {
                    fields.push("content");
                }
                if !fields.is_empty() {
                    report.changed.push(Change {
                        path: path.to_string(),
                        fields: fields.into_iter().map(str::to_string).collect(),
                    });
                }
            }
            (None, None) => {}
        }
    }
    report
}
