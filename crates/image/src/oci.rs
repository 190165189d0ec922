//! OCI image import: an OCI image layout directory or a `docker save` / `docker-archive:` tarball.
//!
//! Layers are applied in order into a private staging tree, honouring whiteouts (`.wh.NAME`) and
//! opaque whiteouts (`.wh..wh..opq`) as the OCI image spec's layer changeset rules say; gzip and
//! zstd layers are recognised by magic bytes. Every blob is checked against its sha256 digest and
//! every layer against the config's `diff_ids`. Each layer is read twice: a validation pass that
//! refuses hostile entries before anything of that layer is written, then the apply pass. A refusal
//! names the layer, the entry and why; the staging tree is discarded, so nothing reaches the store.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::store::{ImageDefaults, ImageMeta, ImageStore, StoreError};
use crate::PreparedRoot;

/// Prefix of a whiteout entry (`.wh.NAME` deletes NAME from lower layers).
pub(crate) const WHITEOUT_MARKER: &str = ".wh.";
/// An opaque whiteout: the directory's lower-layer content is hidden.
pub(crate) const OPAQUE_MARKER: &str = ".wh..wh..opq";

/// A blob source as passed to the layer passes.
pub(crate) type BlobSourceRef<'a> = &'a dyn BlobSource;

/// Limits and opt-ins for an import.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportOptions {
    /// Strip setuid/setgid bits instead of refusing the image.
    pub strip_setuid: bool,
    /// Strip world-write bits instead of refusing the image.
    pub strip_world_writable: bool,
    /// Largest single file accepted.
    pub max_entry_bytes: u64,
    /// Largest total of file sizes over all layers.
    pub max_total_bytes: u64,
    /// Most entries over all layers.
    pub max_entries: usize,
}

impl Default for ImportOptions {
    fn default() -> Self {
        Self {
            strip_setuid: false,
            strip_world_writable: false,
            max_entry_bytes: 1 << 30,
            max_total_bytes: 8 << 30,
            max_entries: 1_000_000,
        }
    }
}

/// An imported image and the defaults its config offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportedImage {
    /// The stored tree.
    pub prepared: PreparedRoot,
    /// Entrypoint, cmd, env, user, workdir from the image config.
    pub defaults: ImageDefaults,
}

/// Errors of an OCI import; each names what was refused and why.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    /// Reading the source failed.
    #[error("cannot read OCI source {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The layout or archive is not what the spec describes.
    #[error("OCI source {source_path}: {what}")]
    Format {
        /// The source.
        source_path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// A blob does not match its digest.
    #[error("OCI blob {what} does not match its digest {expected} (got sha256:{actual}); the image is corrupt or was tampered with")]
    Digest {
        /// Which blob.
        what: String,
        /// The declared digest.
        expected: String,
        /// The computed one.
        actual: String,
    },
    /// A hostile or unsupported layer entry.
    #[error("layer {layer} entry {entry:?} refused: {why}")]
    Refused {
        /// Layer index (0 = base).
        layer: usize,
        /// The entry's path as stored in the tar.
        entry: String,
        /// Why.
        why: String,
    },
    /// Writing the staging tree failed.
    #[error("cannot write {path} while importing: {source}")]
    Write {
        /// The staging path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Storing the result failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Deserialize)]
struct Descriptor {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    #[serde(default)]
    platform: Option<Platform>,
}

#[derive(Deserialize)]
struct Platform {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    os: String,
}

#[derive(Deserialize)]
struct Index {
    manifests: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct OciManifest {
    config: Descriptor,
    layers: Vec<Descriptor>,
}

#[derive(Deserialize, Default)]
struct ConfigFile {
    #[serde(default)]
    config: Option<RunConfig>,
    #[serde(default)]
    rootfs: Option<RootfsConfig>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct RunConfig {
    #[serde(default)]
    entrypoint: Option<Vec<String>>,
    #[serde(default)]
    cmd: Option<Vec<String>>,
    #[serde(default)]
    env: Option<Vec<String>>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    working_dir: Option<String>,
}

#[derive(Deserialize, Default)]
struct RootfsConfig {
    #[serde(default)]
    diff_ids: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerManifestEntry {
    config: String,
    layers: Vec<String>,
}

/// Where blobs come from: files of a layout directory, or members of an archive.
pub(crate) trait BlobSource {
    fn open(&self, name: &str) -> Result<Box<dyn Read + '_>, OciError>;
    fn source_path(&self) -> &Path;
}

struct LayoutDir(PathBuf);

impl BlobSource for LayoutDir {
    fn open(&self, name: &str) -> Result<Box<dyn Read + '_>, OciError> {
        let p = self.0.join(name);
        Ok(Box::new(File::open(&p).map_err(|e| OciError::Read { path: p, source: e })?))
    }
    fn source_path(&self) -> &Path {
        &self.0
    }
}

/// Regular-file members of an outer tar, by name → (offset, size); read in place.
struct Archive {
    path: PathBuf,
    members: HashMap<String, (u64, u64)>,
}

impl Archive {
    fn index(path: &Path) -> Result<Self, OciError> {
        let read = |e| OciError::Read { path: path.to_path_buf(), source: e };
        let mut ar = tar::Archive::new(File::open(path).map_err(read)?);
        let mut members = HashMap::new();
        for ent in ar.entries().map_err(read)? {
            let ent = ent.map_err(read)?;
            if ent.header().entry_type() != tar::EntryType::Regular {
                continue;
            }
            let name =
                ent.path().map_err(read)?.to_string_lossy().trim_start_matches("./").to_string();
            members.insert(name, (ent.raw_file_position(), ent.size()));
        }
        Ok(Self { path: path.to_path_buf(), members })
    }
}

impl BlobSource for Archive {
    fn open(&self, name: &str) -> Result<Box<dyn Read + '_>, OciError> {
        let name = name.trim_start_matches("./");
        let (off, size) = *self.members.get(name).ok_or_else(|| OciError::Format {
            source_path: self.path.clone(),
            what: format!("archive has no member {name:?}"),
        })?;
        let read = |e| OciError::Read { path: self.path.clone(), source: e };
        let mut f = File::open(&self.path).map_err(read)?;
        f.seek(SeekFrom::Start(off)).map_err(read)?;
        Ok(Box::new(f.take(size)))
    }
    fn source_path(&self) -> &Path {
        &self.path
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn blob_name(digest: &str, source: &Path) -> Result<String, OciError> {
    match digest.split_once(':') {
        Some(("sha256", h)) if h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()) => {
            Ok(format!("blobs/sha256/{h}"))
        }
        _ => Err(OciError::Format {
            source_path: source.to_path_buf(),
            what: format!("unsupported digest {digest:?} (only sha256 is accepted)"),
        }),
    }
}

fn read_blob(src: &dyn BlobSource, name: &str, digest: Option<&str>) -> Result<Vec<u8>, OciError> {
    let mut buf = Vec::new();
    src.open(name)?
        .take(64 << 20)
        .read_to_end(&mut buf)
        .map_err(|e| OciError::Read { path: src.source_path().join(name), source: e })?;
    if let Some(d) = digest {
        check_digest(name, d, &hex(&Sha256::digest(&buf)))?;
    }
    Ok(buf)
}

/// `expected` is `sha256:<actual>`, else a digest error naming `what`.
pub(crate) fn check_digest(what: &str, expected: &str, actual: &str) -> Result<(), OciError> {
    if expected.strip_prefix("sha256:") == Some(actual) {
        Ok(())
    } else {
        Err(OciError::Digest {
            what: what.to_string(),
            expected: expected.to_string(),
            actual: actual.to_string(),
        })
    }
}

fn parse<T: for<'de> Deserialize<'de>>(
    bytes: &[u8],
    what: &str,
    source: &Path,
) -> Result<T, OciError> {
    serde_json::from_slice(bytes).map_err(|e| OciError::Format {
        source_path: source.to_path_buf(),
        what: format!("{what} is not valid: {e}"),
    })
}

/// Imports an OCI image layout directory (`oci-layout`, `index.json`, `blobs/sha256/`).
pub fn import_oci_layout(
    store_root: &Path,
    layout: &Path,
    opts: &ImportOptions,
) -> Result<ImportedImage, OciError> {
    let src = LayoutDir(layout.to_path_buf());
    let index: Index = parse(&read_blob(&src, "index.json", None)?, "index.json", layout)?;
    let mut desc = pick_manifest(index.manifests, layout)?;
    // An index may point at another index (multi-platform); follow one level.
    if desc.media_type.contains("image.index") || desc.media_type.contains("manifest.list") {
        let nested: Index = parse(
            &read_blob(&src, &blob_name(&desc.digest, layout)?, Some(&desc.digest))?,
            "nested index",
            layout,
        )?;
        desc = pick_manifest(nested.manifests, layout)?;
    }
    let manifest: OciManifest = parse(
        &read_blob(&src, &blob_name(&desc.digest, layout)?, Some(&desc.digest))?,
        "image manifest",
        layout,
    )?;
    let config_bytes = read_blob(
        &src,
        &blob_name(&manifest.config.digest, layout)?,
        Some(&manifest.config.digest),
    )?;
    let layers = manifest
        .layers
        .iter()
        .map(|l| Ok((blob_name(&l.digest, layout)?, Some(l.digest.clone()))))
        .collect::<Result<Vec<_>, OciError>>()?;
    import(
        store_root,
        &src,
        &config_bytes,
        &layers,
        opts,
        format!("oci-layout:{}", layout.display()),
    )
}

/// The import cache key of an OCI layout: BLAKE3 over its canonical path, its `index.json` and
/// the options. Blobs are content-addressed and checked against the digests the index names, so
/// an unchanged `index.json` means unchanged content; `isc run` with `oci:PATH` imports once and
/// maps this key to the image id (`images/keys/<key>`), then starts by id.
pub fn oci_layout_key(layout: &Path, opts: &ImportOptions) -> Result<String, OciError> {
    let canonical = std::fs::canonicalize(layout)
        .map_err(|e| OciError::Read { path: layout.to_path_buf(), source: e })?;
    let index_path = canonical.join("index.json");
    let index = std::fs::read(&index_path)
        .map_err(|e| OciError::Read { path: index_path.clone(), source: e })?;
    let mut h = blake3::Hasher::new_derive_key("isc-image oci-layout key v1");
    let path = canonical.as_os_str().as_encoded_bytes();
    h.update(&(path.len() as u64).to_le_bytes());
    h.update(path);
    h.update(&(index.len() as u64).to_le_bytes());
    h.update(&index);
    let o = opts;
    h.update(&[u8::from(o.strip_setuid), u8::from(o.strip_world_writable)]);
    for n in [o.max_entry_bytes, o.max_total_bytes, o.max_entries as u64] {
        h.update(&n.to_le_bytes());
    }
    Ok(h.finalize().to_hex().to_string())
}

/// Imports a `docker save` tarball (also `skopeo copy ... docker-archive:`).
pub fn import_docker_archive(
    store_root: &Path,
    tarball: &Path,
    opts: &ImportOptions,
) -> Result<ImportedImage, OciError> {
    let src = Archive::index(tarball)?;
    let entries: Vec<DockerManifestEntry> =
        parse(&read_blob(&src, "manifest.json", None)?, "manifest.json", tarball)?;
    let [entry] = entries.as_slice() else {
        return Err(OciError::Format {
            source_path: tarball.to_path_buf(),
            what: format!(
                "manifest.json lists {} images; import archives holding exactly one",
                entries.len()
            ),
        });
    };
    let config_bytes = read_blob(&src, &entry.config, digest_from_name(&entry.config).as_deref())?;
    let layers = entry.layers.iter().map(|l| (l.clone(), digest_from_name(l))).collect::<Vec<_>>();
    import(
        store_root,
        &src,
        &config_bytes,
        &layers,
        opts,
        format!("docker-archive:{}", tarball.display()),
    )
}

/// Archives written by newer Docker name blobs `blobs/sha256/<hex>` (or `<hex>.json`); the name
/// is then the digest to check.
fn digest_from_name(name: &str) -> Option<String> {
    let base = name.rsplit('/').next()?.trim_end_matches(".json");
    (base.len() == 64 && base.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| format!("sha256:{base}"))
}

fn pick_manifest(manifests: Vec<Descriptor>, source: &Path) -> Result<Descriptor, OciError> {
    let count = manifests.len();
    let mut fallback = None;
    for m in manifests {
        let matches = m.platform.as_ref().is_none_or(|p| {
            p.os == "linux"
                && (p.architecture == "amd64" && cfg!(target_arch = "x86_64")
                    || p.architecture == "arm64" && cfg!(target_arch = "aarch64"))
        });
        if matches && m.platform.is_some() {
            return Ok(m);
        }
        if fallback.is_none() && (matches || count == 1) {
            fallback = Some(m);
        }
    }
    fallback.ok_or_else(|| OciError::Format {
        source_path: source.to_path_buf(),
        what: "index lists no image for this platform".to_string(),
    })
}

fn import(
    store_root: &Path,
    src: &dyn BlobSource,
    config_bytes: &[u8],
    layers: &[(String, Option<String>)],
    opts: &ImportOptions,
    source: String,
) -> Result<ImportedImage, OciError> {
    let config: ConfigFile = parse(config_bytes, "image config", src.source_path())?;
    let diff_ids = config.rootfs.as_ref().map(|r| r.diff_ids.clone()).unwrap_or_default();
    if !diff_ids.is_empty() && diff_ids.len() != layers.len() {
        return Err(OciError::Format {
            source_path: src.source_path().to_path_buf(),
            what: format!("config lists {} diff_ids for {} layers", diff_ids.len(), layers.len()),
        });
    }
    let store = ImageStore::open(store_root)?;
    let staging = store.staging()?;
    let rootfs = staging.path().join("rootfs");
    std::fs::create_dir(&rootfs)
        .map_err(|e| OciError::Write { path: rootfs.clone(), source: e })?;
    let mut budget = Budget { entries: 0, bytes: 0 };
    for (i, (name, digest)) in layers.iter().enumerate() {
        let plan = crate::oci_layer::scan_layer(
            src,
            name,
            digest.as_deref(),
            diff_ids.get(i).map(String::as_str),
            i,
            opts,
            &mut budget,
        )?;
        crate::oci_layer::apply_layer(src, name, &rootfs, &plan, i, opts)?;
    }
    crate::skeleton::write_mount_points(&rootfs).map_err(|e| OciError::Write {
        path: rootfs.clone(),
        source: std::io::Error::other(e.to_string()),
    })?;
    let run = config.config.unwrap_or_default();
    let defaults = ImageDefaults {
        entrypoint: run.entrypoint.unwrap_or_default(),
        cmd: run.cmd.unwrap_or_default(),
        env: run.env.unwrap_or_default(),
        user: run.user.filter(|u| !u.is_empty()),
        workdir: run.working_dir.filter(|w| !w.is_empty()),
    };
    let meta = ImageMeta { source, defaults: Some(defaults.clone()) };
    std::fs::set_permissions(&rootfs, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| OciError::Write { path: rootfs.clone(), source: e })?;
    let prepared = store.commit(staging, &meta, None)?;
    Ok(ImportedImage { prepared, defaults })
}

/// Running totals over all layers.
pub(crate) struct Budget {
    pub(crate) entries: usize,
    pub(crate) bytes: u64,
}

/// Normalises a layer entry path: strips `./`, refuses absolute paths and `..`; returns the
/// components (empty for the root entry).
pub(crate) fn clean_entry_path(raw: &Path) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for c in raw.components() {
        match c {
            Component::CurDir => {}
            Component::Normal(n) => out.push(n.to_str().ok_or("name is not UTF-8")?.to_string()),
            Component::ParentDir => return Err("path traversal (`..`)".to_string()),
            Component::RootDir | Component::Prefix(_) => return Err("absolute path".to_string()),
        }
    }
    Ok(out)
}

/// Joined image path of components, for messages and sets.
pub(crate) fn join(parts: &[String]) -> String {
    format!("/{}", parts.join("/"))
}

/// Resolves a symlink target lexically from the link's directory; `None` if it climbs above
/// the root.
pub(crate) fn symlink_stays_inside(link_dir: &[String], target: &Path) -> bool {
    let mut depth: Vec<&str> = if target.is_absolute() {
        Vec::new()
    } else {
        link_dir.iter().map(String::as_str).collect()
    };
    for c in target.components() {
        match c {
            // The guard pops one level; climbing above the root is an escape.
            Component::ParentDir if depth.pop().is_none() => return false,
            Component::Normal(n) => depth.push(n.to_str().unwrap_or("?")),
            _ => {}
        }
    }
    true
}

/// Entries of a layer, validated: what the apply pass does.
pub(crate) struct LayerPlan {
    /// Paths deleted from lower layers (`.wh.NAME`).
    pub(crate) whiteouts: Vec<Vec<String>>,
    /// Directories whose lower-layer content is hidden (`.wh..wh..opq`).
    pub(crate) opaque: Vec<Vec<String>>,
    /// Paths this layer writes.
    pub(crate) written: HashSet<String>,
}
