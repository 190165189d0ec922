//! One OCI layer: the validation pass (refuses hostile entries, checks digests) and the apply
//! pass (whiteouts, then entries, never following a symlink inside the staging tree).

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tar::EntryType;

use crate::oci::BlobSourceRef;
use crate::oci::{
    clean_entry_path, join, symlink_stays_inside, Budget, ImportOptions, LayerPlan, OciError,
    OPAQUE_MARKER, WHITEOUT_MARKER,
};

/// Hashes what passes through.
struct Hashing<R> {
    inner: R,
    hash: Sha256,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
}

/// Wraps a layer stream in the decompressor its magic bytes call for (gzip, zstd, or none).
fn decompress<'a, R: Read + 'a>(r: R) -> std::io::Result<Box<dyn Read + 'a>> {
    let mut buffered = BufReader::with_capacity(256 * 1024, r);
    let head = buffered.fill_buf()?;
    if head.starts_with(&[0x1f, 0x8b]) {
        Ok(Box::new(flate2::bufread::MultiGzDecoder::new(buffered)))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Ok(Box::new(zstd::stream::read::Decoder::with_buffer(buffered)?))
    } else {
        Ok(Box::new(buffered))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn refuse(layer: usize, entry: &str, why: impl Into<String>) -> OciError {
    OciError::Refused { layer, entry: entry.to_string(), why: why.into() }
}

/// Validation pass over layer `idx`: every entry is checked and the digests verified before any
/// of it is written.
pub(crate) fn scan_layer(
    src: BlobSourceRef<'_>,
    name: &str,
    digest: Option<&str>,
    diff_id: Option<&str>,
    idx: usize,
    opts: &ImportOptions,
    budget: &mut Budget,
) -> Result<LayerPlan, OciError> {
    let read_err = |e| OciError::Read { path: src.source_path().join(name), source: e };
    let mut compressed = Hashing { inner: src.open(name)?, hash: Sha256::new() };
    let mut plan = LayerPlan { whiteouts: Vec::new(), opaque: Vec::new(), written: HashSet::new() };
    let diff_hex = {
        let mut plain =
            Hashing { inner: decompress(&mut compressed).map_err(read_err)?, hash: Sha256::new() };
        {
            let mut ar = tar::Archive::new(&mut plain);
            for ent in ar.entries().map_err(read_err)? {
                let ent = ent.map_err(read_err)?;
                let raw = ent.path().map_err(read_err)?.into_owned();
                let shown = raw.to_string_lossy().into_owned();
                let parts = clean_entry_path(&raw).map_err(|why| refuse(idx, &shown, why))?;
                budget.entries += 1;
                if budget.entries > opts.max_entries {
                    return Err(refuse(
                        idx,
                        &shown,
                        format!("more than {} entries in the image", opts.max_entries),
                    ));
                }
                let Some((base, parent)) = parts.split_last() else {
                    continue; // "./": the root directory itself
                };
                if base == OPAQUE_MARKER {
                    plan.opaque.push(parent.to_vec());
                    continue;
                }
                if let Some(hidden) = base.strip_prefix(WHITEOUT_MARKER) {
                    if hidden.is_empty() || hidden == "." || hidden == ".." {
                        return Err(refuse(idx, &shown, "malformed whiteout"));
                    }
                    let mut p = parent.to_vec();
                    p.push(hidden.to_string());
                    plan.whiteouts.push(p);
                    continue;
                }
                let h = ent.header();
                let kind = h.entry_type();
                let mode = h.mode().map_err(read_err)?;
                match kind {
                    EntryType::Regular | EntryType::Continuous => {
                        let size = ent.size();
                        if size > opts.max_entry_bytes {
                            return Err(refuse(
                                idx,
                                &shown,
                                format!(
                                    "oversized: {size} bytes, the limit is {}",
                                    opts.max_entry_bytes
                                ),
                            ));
                        }
                        budget.bytes += size;
                        if budget.bytes > opts.max_total_bytes {
                            return Err(refuse(
                                idx,
                                &shown,
                                format!(
                                    "the image exceeds {} bytes in total",
                                    opts.max_total_bytes
                                ),
                            ));
                        }
                    }
                    EntryType::Directory => {}
                    EntryType::Symlink => {
                        let target = ent
                            .link_name()
                            .map_err(read_err)?
                            .ok_or_else(|| refuse(idx, &shown, "symlink without a target"))?;
                        if !symlink_stays_inside(parent, &target) {
                            return Err(refuse(
                                idx,
                                &shown,
                                format!(
                                    "symlink target {} escapes the image root",
                                    target.display()
                                ),
                            ));
                        }
                    }
                    EntryType::Link => {
                        let target = ent
                            .link_name()
                            .map_err(read_err)?
                            .ok_or_else(|| refuse(idx, &shown, "hardlink without a target"))?;
                        clean_entry_path(&target).map_err(|why| {
                            refuse(
                                idx,
                                &shown,
                                format!("hardlink target {}: {why}", target.display()),
                            )
                        })?;
                    }
                    EntryType::Char | EntryType::Block => {
                        return Err(refuse(
                            idx,
                            &shown,
                            "device node (images get a minimal /dev from the engine)",
                        ))
                    }
                    EntryType::Fifo => return Err(refuse(idx, &shown, "FIFO")),
                    other => {
                        return Err(refuse(
                            idx,
                            &shown,
                            format!("unsupported entry type {other:?}"),
                        ))
                    }
                }
                if kind != EntryType::Symlink && kind != EntryType::Link {
                    if mode & 0o6000 != 0 && !opts.strip_setuid {
                        return Err(refuse(
                            idx,
                            &shown,
                            format!(
                                "setuid/setgid mode {mode:o}; set the manifest opt-in to strip it"
                            ),
                        ));
                    }
                    if mode & 0o002 != 0 && !opts.strip_world_writable {
                        return Err(refuse(
                            idx,
                            &shown,
                            format!(
                                "world-writable mode {mode:o}; set the manifest opt-in to strip it"
                            ),
                        ));
                    }
                }
                if !plan.written.insert(join(&parts)) {
                    return Err(refuse(idx, &shown, "duplicate entry in the layer"));
                }
            }
        }
        std::io::copy(&mut plain, &mut std::io::sink()).map_err(read_err)?;
        hex(&plain.hash.finalize())
    };
    std::io::copy(&mut compressed, &mut std::io::sink()).map_err(read_err)?;
    let blob_hex = hex(&compressed.hash.finalize());
    if let Some(d) = digest {
        crate::oci::check_digest(name, d, &blob_hex)?;
    }
    if let Some(d) = diff_id {
        crate::oci::check_digest(&format!("{name} (uncompressed, diff_id)"), d, &diff_hex)?;
    }
    Ok(plan)
}

/// The staging path of `parts`, after checking that no existing parent is a symlink or file,
/// creating missing parents (0755). Never follows a symlink: a layer cannot write through a link
/// planted by itself or a lower layer.
fn safe_parent(
    rootfs: &Path,
    parts: &[String],
    create: bool,
    idx: usize,
    shown: &str,
) -> Result<Option<PathBuf>, OciError> {
    let mut cur = rootfs.to_path_buf();
    for c in &parts[..parts.len().saturating_sub(1)] {
        cur.push(c);
        match std::fs::symlink_metadata(&cur) {
            Ok(md) if md.is_dir() => {}
            Ok(md) if md.file_type().is_symlink() => {
                return Err(refuse(
                    idx,
                    shown,
                    format!(
                        "goes through symlink {} (would write outside the tree)",
                        cur.strip_prefix(rootfs).unwrap_or(&cur).display()
                    ),
                ))
            }
            Ok(_) => return Err(refuse(idx, shown, "a parent is not a directory")),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if !create {
                    return Ok(None);
                }
                std::fs::create_dir(&cur).map_err(write_err(&cur))?;
                std::fs::set_permissions(&cur, std::fs::Permissions::from_mode(0o755))
                    .map_err(write_err(&cur))?;
            }
            Err(e) => return Err(write_err(&cur)(e)),
        }
    }
    Ok(Some(rootfs.join(parts.join("/"))))
}

fn write_err(p: &Path) -> impl FnOnce(std::io::Error) -> OciError + '_ {
    move |e| OciError::Write { path: p.to_path_buf(), source: e }
}

fn remove_any(p: &Path) -> Result<(), OciError> {
    match std::fs::symlink_metadata(p) {
        Ok(md) if md.is_dir() => std::fs::remove_dir_all(p).map_err(write_err(p)),
        Ok(_) => std::fs::remove_file(p).map_err(write_err(p)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(write_err(p)(e)),
    }
}

/// Apply pass: whiteouts of this layer hide lower-layer paths first, then the entries are written.
pub(crate) fn apply_layer(
    src: BlobSourceRef<'_>,
    name: &str,
    rootfs: &Path,
    plan: &LayerPlan,
    idx: usize,
    opts: &ImportOptions,
) -> Result<(), OciError> {
    for dir in &plan.opaque {
        let mut p = dir.clone();
        p.push(String::from("x"));
        if let Some(target) = safe_parent(rootfs, &p, false, idx, &join(dir))? {
            let dir_path = target.parent().expect("has a parent").to_path_buf();
            if let Ok(rd) = std::fs::read_dir(&dir_path) {
                for ent in rd {
                    remove_any(&ent.map_err(write_err(&dir_path))?.path())?;
                }
            }
        }
    }
    for w in &plan.whiteouts {
        if let Some(target) = safe_parent(rootfs, w, false, idx, &join(w))? {
            remove_any(&target)?;
        }
    }
    let read_err = |e| OciError::Read { path: src.source_path().join(name), source: e };
    let mut ar = tar::Archive::new(decompress(src.open(name)?).map_err(read_err)?);
    for ent in ar.entries().map_err(read_err)? {
        let mut ent = ent.map_err(read_err)?;
        let raw = ent.path().map_err(read_err)?.into_owned();
        let shown = raw.to_string_lossy().into_owned();
        let parts = clean_entry_path(&raw).map_err(|why| refuse(idx, &shown, why))?;
        let Some(base) = parts.last() else { continue };
        if base.starts_with(WHITEOUT_MARKER) {
            continue;
        }
        let target = safe_parent(rootfs, &parts, true, idx, &shown)?.expect("created");
        let h = ent.header().clone();
        let mut mode = h.mode().map_err(read_err)? & 0o7777;
        if opts.strip_setuid {
            mode &= !0o6000;
        }
        if opts.strip_world_writable {
            mode &= !0o002;
        }
        let existing = std::fs::symlink_metadata(&target).ok();
        match h.entry_type() {
            EntryType::Directory => {
                if !existing.as_ref().is_some_and(|m| m.is_dir()) {
                    remove_any(&target)?;
                    std::fs::create_dir(&target).map_err(write_err(&target))?;
                }
                std::fs::set_permissions(&target, std::fs::Permissions::from_mode(mode))
                    .map_err(write_err(&target))?;
            }
            EntryType::Regular | EntryType::Continuous => {
                remove_any(&target)?;
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .mode(0o600)
                    .open(&target)
                    .map_err(write_err(&target))?;
                std::io::copy(&mut ent, &mut f).map_err(read_err)?;
                f.set_permissions(std::fs::Permissions::from_mode(mode))
                    .map_err(write_err(&target))?;
            }
            EntryType::Symlink => {
                remove_any(&target)?;
                let link = ent.link_name().map_err(read_err)?.expect("checked in the scan");
                std::os::unix::fs::symlink(&*link, &target).map_err(write_err(&target))?;
            }
            EntryType::Link => {
                let link = ent.link_name().map_err(read_err)?.expect("checked in the scan");
                let link_parts = clean_entry_path(&link).map_err(|why| refuse(idx, &shown, why))?;
                let from = safe_parent(rootfs, &link_parts, false, idx, &shown)?
                    .filter(|p| std::fs::symlink_metadata(p).is_ok_and(|m| m.is_file()))
                    .ok_or_else(|| {
                        refuse(
                            idx,
                            &shown,
                            format!(
                                "hardlink target {} is not a regular file already in the image",
                                link.display()
                            ),
                        )
                    })?;
                remove_any(&target)?;
                std::fs::hard_link(&from, &target).map_err(write_err(&target))?;
                continue; // the link shares the target's inode: no chown/chmod of its own
            }
            _ => return Err(refuse(idx, &shown, "entry type changed between passes")),
        }
        let uid = h.uid().map_err(read_err)? as u32;
        let gid = h.gid().map_err(read_err)? as u32;
        std::os::unix::fs::lchown(&target, Some(uid), Some(gid)).map_err(write_err(&target))?;
        // chown(2) clears setuid/setgid; restore the (already vetted) mode on non-links.
        if h.entry_type() != EntryType::Symlink {
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(mode))
                .map_err(write_err(&target))?;
        }
    }
    Ok(())
}
