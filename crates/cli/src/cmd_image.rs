//! `isc image`: build, import, list, inspect, verify, diff, pack and remove stored images.
//!
//! Every verb takes `--json`. Long work shows a spinner (or a byte bar for `hash`) on stderr when
//! stderr is a terminal. `verify` and `diff` exit 1 when they find differences.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};
use isc_image::{import_docker_archive, DriftReport, ImageStore, ImportOptions, MkfsErofs};
use isc_manifest::Manifest;
use serde_json::json;

use crate::launch::Dirs;

/// `isc image ...`.
#[derive(Subcommand)]
pub enum ImageCmd {
    /// Build (or find) the store image a manifest's [image] declares (`host`, `oci:`, `id:`).
    Build {
        file: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Import an OCI image: `oci:DIR` (OCI image layout) or `docker-archive:TAR` (docker save).
    Import {
        source: String,
        /// Strip setuid/setgid bits instead of refusing the image.
        #[arg(long)]
        strip_setuid: bool,
        /// Strip world-write bits instead of refusing the image.
        #[arg(long)]
        strip_world_writable: bool,
        #[arg(long)]
        json: bool,
    },
    /// List stored images.
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Show an image's source, defaults, size, packed form and whether it is in use.
    Inspect {
        id: String,
        /// Also list every manifest entry.
        #[arg(long)]
        entries: bool,
        #[arg(long)]
        json: bool,
    },
    /// Re-hash an image against its manifest (with `--isc NAME`: the live tree of that running
    /// ISC through /proc/<init pid>/root; ID defaults to the ISC's image; with `--all`: every
    /// stored image, as a timer runs it). Each result goes on the audit trail. Exit 1 on drift.
    Verify {
        id: Option<String>,
        #[arg(long, conflicts_with = "all")]
        isc: Option<String>,
        #[arg(long, conflicts_with = "id")]
        all: bool,
        #[arg(long)]
        json: bool,
    },
    /// Paths added, removed and changed from image A to image B. Exit 1 if they differ.
    Diff {
        a: String,
        b: String,
        #[arg(long)]
        json: bool,
    },
    /// Pack an image as EROFS (`images/packed/<id>.erofs`); start it with
    /// `[image] source = "erofs:<that path>"`.
    Pack {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Remove an image (refused while an ISC uses it).
    Rm {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Hash files with the store's hasher (BLAKE3) and report throughput (benchmarks).
    #[command(hide = true)]
    Hash {
        paths: Vec<PathBuf>,
        #[arg(long)]
        json: bool,
    },
}

/// Runs one `isc image` verb.
pub fn dispatch(dirs: &Dirs, cmd: ImageCmd) -> Result<ExitCode> {
    let store = ImageStore::open(&dirs.root)?;
    match cmd {
        ImageCmd::Build { file, json } => {
            let m = Manifest::load(&file)?;
            let extra = crate::launch::mount_points(&m);
            let sp = spinner(&format!("building the image of {}", file.display()));
            let started = Instant::now();
            let prepared = crate::hooks_image::build_store_image(&m, dirs, &extra)?;
            finish(sp);
            let ms = started.elapsed().as_secs_f64() * 1000.0;
            let summary = store.list()?.into_iter().find(|s| s.id == prepared.id);
            crate::hooks_audit::record(
                dirs,
                None,
                isc_audit::Kind::ImageBuild,
                json!({"id": prepared.id, "manifest": file, "cached": prepared.cached}),
            )?;
            if json {
                print_json(&json!({
                    "id": prepared.id, "rootfs": prepared.rootfs, "cached": prepared.cached,
                    "entries": summary.as_ref().map(|s| s.entries),
                    "bytes": summary.as_ref().map(|s| s.bytes), "ms": ms,
                }))?;
            } else {
                println!("{}", prepared.id);
            }
            Ok(ExitCode::SUCCESS)
        }
        ImageCmd::Import { source, strip_setuid, strip_world_writable, json } => {
            let opts = ImportOptions { strip_setuid, strip_world_writable, ..Default::default() };
            let sp = spinner(&format!("importing {source}"));
            let (id, defaults) = if let Some(dir) = source.strip_prefix("oci:") {
                let imported = isc_image::import_oci_layout(&dirs.root, Path::new(dir), &opts)?;
                let key = isc_image::oci_layout_key(Path::new(dir), &opts)?;
                store.set_key(&key, &imported.prepared.id)?;
                (imported.prepared.id, imported.defaults)
            } else if let Some(tar) = source.strip_prefix("docker-archive:") {
                let imported = import_docker_archive(&dirs.root, Path::new(tar), &opts)?;
                (imported.prepared.id, imported.defaults)
            } else {
                bail!("unknown import source {source:?}; fix: write oci:DIR or docker-archive:TAR")
            };
            finish(sp);
            crate::hooks_audit::record(
                dirs,
                None,
                isc_audit::Kind::ImageImport,
                json!({"id": id, "source": source}),
            )?;
            if json {
                print_json(&json!({"id": id, "defaults": defaults}))?;
            } else {
                println!("{id}");
            }
            Ok(ExitCode::SUCCESS)
        }
        ImageCmd::Ls { json } => {
            let list = store.list()?;
            if json {
                print_json(&list)?;
            } else {
                println!("{:<16} {:>8} {:>12}  SOURCE", "ID", "ENTRIES", "BYTES");
                for s in list {
                    println!(
                        "{:<16} {:>8} {:>12}  {}",
                        &s.id[..16],
                        s.entries,
                        s.bytes,
                        s.meta.source
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        ImageCmd::Inspect { id, entries, json } => {
            let id = full_id(&store, &id)?;
            let summary = store
                .list()?
                .into_iter()
                .find(|s| s.id == id)
                .with_context(|| format!("image {id} is not in the store"))?;
            let packed = store.packed_record(&id)?.map(|r| {
                json!({"file": store.packed_file(&id), "bytes": r.facts.size, "blake3": r.hash})
            });
            let in_use = store.in_use(&id)?;
            let manifest = entries.then(|| store.manifest(&id)).transpose()?;
            if json {
                print_json(&json!({
                    "id": id, "source": summary.meta.source, "defaults": summary.meta.defaults,
                    "entries": summary.entries, "bytes": summary.bytes,
                    "rootfs": store.images_dir().join(&id).join("rootfs"),
                    "packed": packed, "in_use": in_use,
                    "manifest": manifest.map(|m| m.entries),
                }))?;
            } else {
                println!("id:       {id}");
                println!("source:   {}", summary.meta.source);
                println!("entries:  {} ({} bytes in files)", summary.entries, summary.bytes);
                println!("rootfs:   {}", store.images_dir().join(&id).join("rootfs").display());
                println!(
                    "packed:   {}",
                    packed.map(|p| p["file"].to_string()).unwrap_or("no".into())
                );
                println!("in use:   {}", if in_use { "yes" } else { "no" });
                if let Some(d) = summary.meta.defaults {
                    println!(
                        "defaults: entrypoint {:?} cmd {:?} env {:?} user {:?} workdir {:?}",
                        d.entrypoint, d.cmd, d.env, d.user, d.workdir
                    );
                }
                for e in manifest.map(|m| m.entries).unwrap_or_default() {
                    println!(
                        "{:o} {:>5}:{:<5} {:>10} {}{}",
                        e.mode,
                        e.uid,
                        e.gid,
                        e.size,
                        e.path,
                        e.target.map(|t| format!(" -> {t}")).unwrap_or_default()
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        ImageCmd::Verify { id, isc, all, json } => {
            crate::cmd_image_verify::verify(dirs, &store, id, isc, all, json)
        }
        ImageCmd::Diff { a, b, json } => {
            let (a, b) = (full_id(&store, &a)?, full_id(&store, &b)?);
            let report = store.diff(&a, &b)?;
            if json {
                print_json(&json!({"a": a, "b": b, "added": report.added,
                    "removed": report.removed, "changed": report.changed}))?;
            } else {
                print_drift(&report);
            }
            let same =
                report.added.is_empty() && report.removed.is_empty() && report.changed.is_empty();
            Ok(if same { ExitCode::SUCCESS } else { ExitCode::from(1) })
        }
        ImageCmd::Pack { id, json } => {
            let id = full_id(&store, &id)?;
            let sp = spinner(&format!("packing {} as EROFS", &id[..16]));
            let started = Instant::now();
            let packed = store.pack(&id, &MkfsErofs)?;
            finish(sp);
            let ms = started.elapsed().as_secs_f64() * 1000.0;
            if json {
                let mut v = serde_json::to_value(&packed)?;
                v["ms"] = ms.into();
                print_json(&v)?;
            } else {
                println!("{}", packed.file.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        ImageCmd::Rm { id, json } => {
            let id = full_id(&store, &id)?;
            store.remove(&id)?;
            if json {
                print_json(&json!({"removed": id}))?;
            } else {
                println!("removed {id}");
            }
            Ok(ExitCode::SUCCESS)
        }
        ImageCmd::Hash { paths, json } => hash(&paths, json),
    }
}

pub(crate) fn print_drift(r: &DriftReport) {
    for p in &r.added {
        println!("+ {p}");
    }
    for p in &r.removed {
        println!("- {p}");
    }
    for c in &r.changed {
        println!("~ {} ({})", c.path, c.fields.join(", "));
    }
}

/// An id, or a unique prefix of at least 8 hex digits of a stored one.
pub(crate) fn full_id(store: &ImageStore, given: &str) -> Result<String> {
    let given = given.strip_prefix("id:").unwrap_or(given);
    if isc_image::store::is_valid_id(given) {
        return Ok(given.to_string());
    }
    if given.len() < 8 {
        bail!("{given:?} is not an image id; fix: give the id or at least 8 of its first digits (isc image ls)");
    }
    let matches: Vec<String> =
        store.list()?.into_iter().map(|s| s.id).filter(|id| id.starts_with(given)).collect();
    match matches.as_slice() {
        [one] => Ok(one.clone()),
        [] => bail!("no stored image id starts with {given}; see `isc image ls`"),
        _ => bail!("{given} is ambiguous ({} images); give more digits", matches.len()),
    }
}

pub(crate) fn print_json<T: serde::Serialize + ?Sized>(v: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

pub(crate) fn spinner(msg: &str) -> Option<ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let pb = ProgressBar::new_spinner();
    pb.set_style(
        ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    pb.set_message(msg.to_string());
    pb.enable_steady_tick(Duration::from_millis(100));
    Some(pb)
}

pub(crate) fn finish(pb: Option<ProgressBar>) {
    if let Some(pb) = pb {
        pb.finish_and_clear();
    }
}

/// `isc image hash`: the store's file hasher over every regular file under `paths`, single
/// threaded, as `isc image build` and `verify` run it.
fn hash(paths: &[PathBuf], json: bool) -> Result<ExitCode> {
    let mut files = Vec::new();
    for p in paths {
        collect_files(p, &mut files)?;
    }
    let total: u64 = files.iter().map(|(_, n)| n).sum();
    let pb = std::io::stderr().is_terminal().then(|| {
        let pb = ProgressBar::new(total);
        pb.set_style(
            ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {bytes_per_sec}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        pb
    });
    let mut buf = vec![0u8; 256 * 1024];
    let started = Instant::now();
    let mut out = String::new();
    for (f, n) in &files {
        let h = isc_image::manifest::hash_file(f, &mut buf)?;
        if !json {
            out.push_str(&format!("{h}  {}\n", f.display()));
        }
        if let Some(pb) = &pb {
            pb.inc(*n);
        }
    }
    let secs = started.elapsed().as_secs_f64();
    finish(pb);
    let mb_s = total as f64 / 1e6 / secs.max(1e-9);
    if json {
        print_json(
            &json!({"files": files.len(), "bytes": total, "seconds": secs, "mb_per_s": mb_s}),
        )?;
    } else {
        print!("{out}");
        eprintln!("{} files, {} bytes in {:.3} s: {:.0} MB/s", files.len(), total, secs, mb_s);
    }
    Ok(ExitCode::SUCCESS)
}

fn collect_files(p: &Path, out: &mut Vec<(PathBuf, u64)>) -> Result<()> {
    let md = std::fs::symlink_metadata(p).with_context(|| format!("reading {}", p.display()))?;
    if md.is_dir() {
        let mut names: Vec<PathBuf> = std::fs::read_dir(p)
            .with_context(|| format!("reading {}", p.display()))?
            .map(|e| e.map(|e| e.path()))
            .collect::<std::io::Result<_>>()?;
        names.sort();
        for n in names {
            collect_files(&n, out)?;
        }
    } else if md.is_file() {
        out.push((p.to_path_buf(), md.len()));
    }
    Ok(())
}
