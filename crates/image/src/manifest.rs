//! The content manifest: every entry of a tree (path, type, mode, uid, gid, size, symlink target,
//! BLAKE3 of the content) in canonical order, and its Merkle root, which is the image id.
//!
//! Canonical order is depth-first with the children of a directory sorted by the bytes of their
//! names (`Path`'s component order), so a directory's subtree is contiguous. Node hashes are
//! BLAKE3 in derive-key mode (context `isc-image manifest node v1`) over:
//! file `f|mode|uid|gid|size|content-hash`, symlink `l|mode|uid|gid|len|target`, directory
//! `d|mode|uid|gid|count|(len|name|child-hash)*` (integers little-endian u32/u64). The id is the
//! root directory's node hash in hex. Timestamps and inode numbers are not part of it, so the
//! same content always gives the same id.

use std::collections::HashMap;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

const NODE_CONTEXT: &str = "isc-image manifest node v1";
/// Manifest format version written to `manifest.json`.
pub const MANIFEST_VERSION: u32 = 1;

/// Errors while building or reading a manifest.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// Reading the tree failed.
    #[error("cannot read {path} while hashing the image: {source}")]
    Read {
        /// The host path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A file name is not UTF-8; manifests are JSON and must name every entry exactly.
    #[error("image entry {path:?} has a name that is not UTF-8; rename it")]
    NonUtf8Name {
        /// The path, lossily converted.
        path: String,
    },
    /// The tree holds a device node, FIFO or socket.
    #[error("image entry {path} is a device, FIFO or socket; images hold only files, directories and symlinks")]
    SpecialFile {
        /// The image path.
        path: String,
    },
}

/// Kind of a manifest entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    /// A directory.
    Dir,
    /// A regular file.
    File,
    /// A symbolic link.
    Symlink,
}

/// One entry of a tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestEntry {
    /// Absolute path inside the image (`/` for the root).
    pub path: String,
    /// Kind.
    #[serde(rename = "type")]
    pub kind: EntryKind,
    /// Permission bits (`st_mode & 0o7777`).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size in bytes (files), target length (symlinks), 0 (directories).
    pub size: u64,
    /// Symlink target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// BLAKE3 of the content, hex (files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
}

/// A whole tree's manifest, entries in canonical order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Format version.
    pub version: u32,
    /// Entries in canonical order, starting with `/`.
    pub entries: Vec<ManifestEntry>,
}

/// What a walk does with mount points (entries on another device than the root).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MountPolicy {
    /// Treat them like any directory (stored trees have none).
    Descend,
    /// Record nothing for them and do not descend (live trees under `/proc/PID/root`, where
    /// `/proc`, `/dev`, `/tmp`… are mounted over the image's mount points).
    Skip,
}

/// Result of walking a tree: its manifest and the mount points that were skipped.
#[derive(Debug, Clone)]
pub struct Walk {
    /// The manifest.
    pub manifest: Manifest,
    /// Image paths of skipped mount points.
    pub skipped_mounts: Vec<String>,
}

impl Manifest {
    /// Hashes the tree at `root`. Non-UTF-8 names and special files are refused.
    pub fn from_tree(root: &Path) -> Result<Self, ManifestError> {
        Ok(walk_tree(root, MountPolicy::Descend, true)?.manifest)
    }

    /// The Merkle root (the image id), lowercase hex.
    pub fn id(&self) -> String {
        let mut children: HashMap<&str, Vec<(&str, [u8; 32])>> = HashMap::new();
        let mut root = [0u8; 32];
        // Reverse canonical order visits children before their parent directory.
        for e in self.entries.iter().rev() {
            let mut h = blake3::Hasher::new_derive_key(NODE_CONTEXT);
            let tag: &[u8] = match e.kind {
                EntryKind::Dir => b"d",
                EntryKind::File => b"f",
                EntryKind::Symlink => b"l",
            };
            h.update(tag);
            h.update(&e.mode.to_le_bytes());
            h.update(&e.uid.to_le_bytes());
            h.update(&e.gid.to_le_bytes());
            match e.kind {
                EntryKind::File => {
                    h.update(&e.size.to_le_bytes());
                    h.update(e.hash.as_deref().unwrap_or("").as_bytes());
                }
                EntryKind::Symlink => {
                    let t = e.target.as_deref().unwrap_or("");
                    h.update(&(t.len() as u64).to_le_bytes());
                    h.update(t.as_bytes());
                }
                EntryKind::Dir => {
                    let mut kids = children.remove(e.path.as_str()).unwrap_or_default();
                    kids.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
                    h.update(&(kids.len() as u64).to_le_bytes());
                    for (name, hash) in kids {
                        h.update(&(name.len() as u64).to_le_bytes());
                        h.update(name.as_bytes());
                        h.update(&hash);
                    }
                }
            }
            let node = *h.finalize().as_bytes();
            if e.path == "/" {
                root = node;
            } else {
                let (parent, name) = split_parent(&e.path);
                children.entry(parent).or_default().push((name, node));
            }
        }
        blake3::Hash::from(root).to_hex().to_string()
    }

    /// Entries by path.
    pub fn by_path(&self) -> HashMap<&str, &ManifestEntry> {
        self.entries.iter().map(|e| (e.path.as_str(), e)).collect()
    }
}

fn split_parent(path: &str) -> (&str, &str) {
    match path.rfind('/') {
        Some(0) => ("/", &path[1..]),
        Some(i) => (&path[..i], &path[i + 1..]),
        None => ("/", path),
    }
}

/// Walks `root` in canonical order. With `strict`, non-UTF-8 names and special files are errors
/// (building); without, they are recorded lossily / as files of size 0 with no hash so a drift
/// check reports them rather than failing.
pub fn walk_tree(root: &Path, mounts: MountPolicy, strict: bool) -> Result<Walk, ManifestError> {
    // The root itself is followed: `/proc/PID/root` is a (magic) symlink to the live tree.
    let root_md = std::fs::metadata(root)
        .map_err(|e| ManifestError::Read { path: root.to_path_buf(), source: e })?;
    let mut walk = Walk {
        manifest: Manifest { version: MANIFEST_VERSION, entries: Vec::new() },
        skipped_mounts: Vec::new(),
    };
    let mut buf = vec![0u8; 256 * 1024];
    visit(root, "/", &root_md, root_md.dev(), mounts, strict, &mut walk, &mut buf)?;
    Ok(walk)
}

#[allow(clippy::too_many_arguments)]
fn visit(
    host: &Path,
    image_path: &str,
    md: &std::fs::Metadata,
    root_dev: u64,
    mounts: MountPolicy,
    strict: bool,
    walk: &mut Walk,
    buf: &mut [u8],
) -> Result<(), ManifestError> {
    let read_err = |e| ManifestError::Read { path: host.to_path_buf(), source: e };
    let ft = md.file_type();
    let mut entry = ManifestEntry {
        path: image_path.to_string(),
        kind: EntryKind::File,
        mode: md.mode() & 0o7777,
        uid: md.uid(),
        gid: md.gid(),
        size: 0,
        target: None,
        hash: None,
    };
    if ft.is_dir() {
        entry.kind = EntryKind::Dir;
        walk.manifest.entries.push(entry);
        let mut names: Vec<std::ffi::OsString> = Vec::new();
        for ent in std::fs::read_dir(host).map_err(read_err)? {
            names.push(ent.map_err(read_err)?.file_name());
        }
        names.sort_by(|a, b| a.as_encoded_bytes().cmp(b.as_encoded_bytes()));
        for name in names {
            let child = host.join(&name);
            let name_str = match name.to_str() {
                Some(s) => s.to_string(),
                None if strict => {
                    return Err(ManifestError::NonUtf8Name {
                        path: child.to_string_lossy().into_owned(),
                    })
                }
                None => name.to_string_lossy().into_owned(),
            };
            let child_path = if image_path == "/" {
                format!("/{name_str}")
            } else {
                format!("{image_path}/{name_str}")
            };
            let child_md = std::fs::symlink_metadata(&child)
                .map_err(|e| ManifestError::Read { path: child.clone(), source: e })?;
            if mounts == MountPolicy::Skip && child_md.is_dir() && child_md.dev() != root_dev {
                walk.skipped_mounts.push(child_path);
                continue;
            }
            visit(&child, &child_path, &child_md, root_dev, mounts, strict, walk, buf)?;
        }
        return Ok(());
    }
    if ft.is_symlink() {
        let target = std::fs::read_link(host).map_err(read_err)?;
        let t = match target.to_str() {
            Some(s) => s.to_string(),
            None if strict => {
                return Err(ManifestError::NonUtf8Name { path: image_path.to_string() })
            }
            None => target.to_string_lossy().into_owned(),
        };
        entry.kind = EntryKind::Symlink;
        entry.size = t.len() as u64;
        entry.target = Some(t);
    } else if ft.is_file() {
        entry.size = md.size();
        entry.hash = Some(hash_file(host, buf)?);
    } else if strict {
        return Err(ManifestError::SpecialFile { path: image_path.to_string() });
    }
    walk.manifest.entries.push(entry);
    Ok(())
}

/// BLAKE3 of a file's content, read without following a symlink swapped in at `path`.
pub fn hash_file(path: &Path, buf: &mut [u8]) -> Result<String, ManifestError> {
    let read_err = |e| ManifestError::Read { path: path.to_path_buf(), source: e };
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(read_err)?;
    let mut h = blake3::Hasher::new();
    loop {
        let n = f.read(buf).map_err(read_err)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().to_hex().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn tree() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("a/b")).unwrap();
        std::fs::write(d.path().join("a/b/f"), b"hello").unwrap();
        std::fs::write(d.path().join("a-b"), b"x").unwrap();
        std::os::unix::fs::symlink("a/b/f", d.path().join("l")).unwrap();
        d
    }

    #[test]
    fn canonical_order_keeps_subtrees_contiguous() {
        let d = tree();
        let m = Manifest::from_tree(d.path()).unwrap();
        let paths: Vec<&str> = m.entries.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, vec!["/", "/a", "/a/b", "/a/b/f", "/a-b", "/l"]);
        assert_eq!(m.entries[3].hash.as_deref(), Some(blake3::hash(b"hello").to_hex().as_str()));
    }

    #[test]
    fn id_is_stable_and_sensitive() {
        let d = tree();
        let id = Manifest::from_tree(d.path()).unwrap().id();
        assert_eq!(id, Manifest::from_tree(d.path()).unwrap().id());
        let d2 = tree();
        assert_eq!(id, Manifest::from_tree(d2.path()).unwrap().id(), "same content, same id");
        std::fs::write(d2.path().join("a/b/f"), b"hellp").unwrap();
        let changed = Manifest::from_tree(d2.path()).unwrap().id();
        assert_ne!(id, changed);
        let d3 = tree();
        std::fs::set_permissions(d3.path().join("a-b"), std::fs::Permissions::from_mode(0o600))
            .unwrap();
        assert_ne!(id, Manifest::from_tree(d3.path()).unwrap().id());
    }
}
