//! Issue 3 through the real binary: stored images are checked before every start, verified on
//! demand (also live), imported from OCI layouts, packed as EROFS, and leased while in use.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

fn ok_json(out: Output, what: &str) -> Value {
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{what}: {e}: {}", String::from_utf8_lossy(&out.stdout)))
}

/// `isc image build FILE --json` → (id, rootfs).
fn build(env: &Env, manifest: &Path) -> (String, PathBuf) {
    let v = ok_json(
        env.cmd().args(["image", "build", "--json"]).arg(manifest).output().unwrap(),
        "build",
    );
    (v["id"].as_str().unwrap().to_string(), PathBuf::from(v["rootfs"].as_str().unwrap()))
}

/// A manifest that names its image by `source`.
fn manifest_with_source(env: &Env, name: &str, exec: &[&str], source: &str) -> PathBuf {
    let exec: Vec<String> = exec.iter().map(|e| format!("{e:?}")).collect();
    let text = format!(
        "name = \"{name}\"\n[service]\nexec = [{}]\n[image]\nsource = \"{source}\"\n[filesystem]\ntmpfs = [{{ path = \"/run\", size = \"4M\" }}]\n",
        exec.join(", ")
    );
    let path = env.dir.join(format!("{name}.toml"));
    fs::write(&path, text).unwrap();
    path
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unique(tag: &str) -> String {
    format!("img{tag}{}", std::process::id() % 100_000)
}

#[test]
fn tampered_byte_is_named_by_verify_and_refused_at_start() {
    let env = Env::new("img-tamper");
    let name = unique("t");
    let m = env.probe_manifest(&name, &["status"], "");
    let (id, rootfs) = build(&env, &m);
    let clean =
        ok_json(env.cmd().args(["image", "verify", &id, "--json"]).output().unwrap(), "verify");
    assert_eq!(clean["clean"], true, "{clean}");

    // Root clears the immutable flag and flips one byte in place (same size).
    let victim = rootfs.join("usr/bin/sleep");
    let md = fs::symlink_metadata(&victim).unwrap();
    assert!(md.is_file(), "{} is not a file in the image", victim.display());
    isc_image::immutable::set_immutable(&victim, false).unwrap();
    fs::set_permissions(&victim, fs::Permissions::from_mode(0o755)).unwrap();
    let mut bytes = fs::read(&victim).unwrap();
    bytes[100] ^= 0xff;
    fs::write(&victim, &bytes).unwrap();
    fs::set_permissions(&victim, fs::Permissions::from_mode(md.mode() & 0o7777)).unwrap();
    assert_eq!(fs::metadata(&victim).unwrap().len(), md.len());

    let out = env.cmd().args(["image", "verify", &id, "--json"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "verify must fail on drift");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["clean"], false);
    assert_eq!(v["changed"], json!([{"path": "/usr/bin/sleep", "fields": ["content"]}]), "{v}");
    assert_eq!(v["added"], json!([]));
    assert_eq!(v["removed"], json!([]));

    // `--all`, what the daily timer runs, re-hashes every stored image; each result goes on
    // the audit trail, the drifted one naming its path.
    let layout = env.dir.join("layout");
    write_oci_layout(&layout);
    let mut imp = env.cmd();
    imp.args(["image", "import", "--json"]).arg(format!("oci:{}", layout.display()));
    let other = ok_json(imp.output().unwrap(), "import")["id"].as_str().unwrap().to_string();
    let out = env.cmd().args(["image", "verify", "--all", "--json"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    let all: Value = serde_json::from_slice(&out.stdout).unwrap();
    let clean_of =
        |i: &str| all.as_array().unwrap().iter().find(|v| v["id"] == i).unwrap()["clean"].clone();
    assert_eq!(all.as_array().unwrap().len(), 2, "{all}");
    assert_eq!((clean_of(&id), clean_of(&other)), (json!(false), json!(true)), "{all}");
    let trail = env.cmd().args(["audit", "show", "--json"]).output().unwrap();
    let records: Vec<Value> = String::from_utf8_lossy(&trail.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let of_kind = |k: &str| -> Vec<Value> {
        records.iter().filter(|r| r["kind"] == k).map(|r| r["detail"].clone()).collect()
    };
    let verified = of_kind("image_verify");
    let drifted = of_kind("image_integrity_failure");
    // The first single verify (intact), then the single and the --all verify of the tampered id.
    assert_eq!(verified.len(), 2, "{verified:?}");
    assert_eq!(
        (verified[0]["image"].as_str(), verified[1]["image"].as_str()),
        (Some(&*id), Some(&*other))
    );
    assert_eq!(drifted.len(), 2, "{drifted:?}");
    for d in &drifted {
        assert_eq!(d["image"], id.as_str());
        assert_eq!((d["clean"].clone(), d["changed"].clone()), (json!(false), json!(1)));
        assert_eq!(d["paths"], json!(["/usr/bin/sleep"]));
    }

    let by_id = manifest_with_source(&env, &name, &[ISC, "probe", "status"], &format!("id:{id}"));
    let out = env.run(&by_id, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a tampered image started: {err}");
    assert!(err.contains("/usr/bin/sleep") && err.contains("refusing to start"), "{err}");
    // The host-build path runs the same check on its cache hit.
    let out = env.run(&m, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("/usr/bin/sleep"), "{err}");
    assert_nothing_left(&env);
}

#[test]
fn image_in_use_cannot_be_removed_and_live_tree_verifies() {
    let env = Env::new("img-inuse");
    let name = unique("u");
    let (id, _) = build(&env, &env.manifest(&name, &["/usr/bin/sleep", "30"], ""));
    let by_id = manifest_with_source(&env, &name, &["/usr/bin/sleep", "30"], &format!("id:{id}"));
    let mut child = env.spawn(&by_id);
    env.wait_running(&name);

    let live = env.cmd().args(["image", "verify", "--isc", &name, "--json"]).output().unwrap();
    let v = ok_json(live, "verify --isc");
    assert_eq!(v["clean"], true, "{v}");
    assert_eq!(v["id"], id.as_str());
    let skipped: BTreeSet<&str> =
        v["skipped_mounts"].as_array().unwrap().iter().map(|s| s.as_str().unwrap()).collect();
    for m in ["/proc", "/dev", "/run"] {
        assert!(skipped.contains(m), "{m} not skipped: {skipped:?}");
    }

    let rm = env.cmd().args(["image", "rm", &id]).output().unwrap();
    let err = String::from_utf8_lossy(&rm.stderr);
    assert!(!rm.status.success() && err.contains("in use"), "removed while running: {err}");
    let inspect =
        ok_json(env.cmd().args(["image", "inspect", &id, "--json"]).output().unwrap(), "inspect");
    assert_eq!(inspect["in_use"], true);

    let stop = env.cmd().args(["stop", &name]).output().unwrap();
    assert!(stop.status.success(), "{}", String::from_utf8_lossy(&stop.stderr));
    let t = Instant::now();
    while child.try_wait().unwrap().is_none() {
        assert!(t.elapsed() < Duration::from_secs(15), "ISC did not stop");
        std::thread::sleep(Duration::from_millis(20));
    }
    let rm = env.cmd().args(["image", "rm", &id, "--json"]).output().unwrap();
    assert_eq!(ok_json(rm, "rm")["removed"], id.as_str());
    assert!(!env.dir.join("root/images").join(&id).exists());
    let ls = ok_json(env.cmd().args(["image", "ls", "--json"]).output().unwrap(), "ls");
    assert_eq!(ls, json!([]));
    assert_nothing_left(&env);
}

fn header() -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h
}

/// Writes an OCI image layout holding the `isc` binary and its ELF closure in one layer.
fn write_oci_layout(dir: &Path) {
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).unwrap();
    let put = |bytes: &[u8]| -> (String, usize) {
        let hex = hex(&Sha256::digest(bytes));
        fs::write(blobs.join(&hex), bytes).unwrap();
        (format!("sha256:{hex}"), bytes.len())
    };
    let closure = isc_image::elf_closure(&[PathBuf::from(ISC)]).unwrap();
    let mut tar = tar::Builder::new(Vec::new());
    let mut dirs_done = BTreeSet::new();
    for p in &closure {
        let mut parents: Vec<&Path> =
            p.ancestors().skip(1).filter(|a| *a != Path::new("/")).collect();
        parents.reverse();
        for d in parents {
            if dirs_done.insert(d.to_path_buf()) {
                let mut h = header();
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                tar.append_data(&mut h, d.strip_prefix("/").unwrap(), std::io::empty()).unwrap();
            }
        }
        let md = fs::symlink_metadata(p).unwrap();
        let rel = p.strip_prefix("/").unwrap();
        let mut h = header();
        h.set_mode(0o755);
        if md.file_type().is_symlink() {
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            tar.append_link(&mut h, rel, fs::read_link(p).unwrap()).unwrap();
        } else if md.is_dir() {
            if dirs_done.insert(p.clone()) {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                tar.append_data(&mut h, rel, std::io::empty()).unwrap();
            }
        } else {
            let data = fs::read(p).unwrap();
            h.set_size(data.len() as u64);
            tar.append_data(&mut h, rel, data.as_slice()).unwrap();
        }
    }
    let layer = tar.into_inner().unwrap();
    let (layer_digest, layer_size) = put(&layer);
    let config = json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Entrypoint": [ISC], "Cmd": ["probe", "status"], "Env": ["PATH=/usr/bin:/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
    });
    let (config_digest, config_size) = put(config.to_string().as_bytes());
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": layer_size}],
    });
    let (manifest_digest, manifest_size) = put(manifest.to_string().as_bytes());
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest_digest,
            "size": manifest_size, "platform": {"architecture": "amd64", "os": "linux"}}],
    });
    fs::write(dir.join("index.json"), index.to_string()).unwrap();
    fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
}

#[test]
fn oci_layout_runs_as_an_isc_and_is_imported_once() {
    let env = Env::new("img-oci");
    let layout = env.dir.join("layout");
    write_oci_layout(&layout);
    let name = unique("o");
    let m = manifest_with_source(
        &env,
        &name,
        &[ISC, "probe", "status"],
        &format!("oci:{}", layout.display()),
    );
    let mut ids = Vec::new();
    for _ in 0..2 {
        let out = env.run(&m, &["--json"]);
        assert!(out.status.success(), "oci run failed: {}", String::from_utf8_lossy(&out.stderr));
        let outs: Vec<isc_engine::probe::ProbeOutcome> =
            serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(by_name(&outs, "status").value["NoNewPrivs"], "1");
        ids.push(exit_record(&out)["image_id"].as_str().unwrap().to_string());
    }
    assert_eq!(ids[0], ids[1]);
    let ls = ok_json(env.cmd().args(["image", "ls", "--json"]).output().unwrap(), "ls");
    assert_eq!(ls.as_array().unwrap().len(), 1, "imported once: {ls}");
    assert_eq!(ls[0]["id"], ids[0].as_str());
    assert!(ls[0]["meta"]["source"].as_str().unwrap().starts_with("oci-layout:"));
    assert_eq!(ls[0]["meta"]["defaults"]["entrypoint"], json!([ISC]));
    // An explicit import of the same layout gives the same id.
    let imp = env
        .cmd()
        .args(["image", "import", "--json"])
        .arg(format!("oci:{}", layout.display()))
        .output()
        .unwrap();
    let v = ok_json(imp, "import");
    assert_eq!(v["id"], ids[0].as_str());
    // A mount point the image lacks is refused before anything is created: a stored image
    // cannot be changed in place, so the message says to rebuild it.
    let lacking = manifest_with_source(
        &env,
        &unique("m"),
        &[ISC, "probe", "status"],
        &format!("oci:{}", layout.display()),
    );
    let text = fs::read_to_string(&lacking).unwrap().replace(
        "tmpfs = [{ path = \"/run\", size = \"4M\" }]",
        "tmpfs = [{ path = \"/run\", size = \"4M\" }, { path = \"/srv/cache\" }]",
    );
    fs::write(&lacking, text).unwrap();
    let out = env.run(&lacking, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert!(
        err.contains(&format!(
            "image {} lacks mount points this manifest needs: /srv/cache; add them",
            ids[0]
        )),
        "{err}"
    );
    assert_nothing_left(&env);
}

#[test]
fn same_inputs_give_the_same_id_and_the_same_packed_file() {
    let a = Env::new("img-same-a");
    let b = Env::new("img-same-b");
    let name = unique("s");
    let (id_a, _) = build(&a, &a.manifest(&name, &["/usr/bin/sleep", "1"], ""));
    let (id_b, _) = build(&b, &b.manifest(&name, &["/usr/bin/sleep", "1"], ""));
    assert_eq!(id_a, id_b, "two stores, same inputs, different ids");
    let (again, _) = build(&a, &a.manifest(&name, &["/usr/bin/sleep", "1"], ""));
    assert_eq!(again, id_a);
    let pack = |env: &Env| {
        let v =
            ok_json(env.cmd().args(["image", "pack", &id_a, "--json"]).output().unwrap(), "pack");
        let file = PathBuf::from(v["file"].as_str().unwrap());
        let mut h = Sha256::new();
        h.update(fs::read(&file).unwrap());
        hex(&h.finalize())
    };
    assert_eq!(pack(&a), pack(&b), "EROFS packing is not reproducible");
    let diff = a.cmd().args(["image", "diff", &id_a, &id_b, "--json"]).output().unwrap();
    assert_eq!(ok_json(diff, "diff")["changed"], json!([]));
}

/// Loop devices whose backing file is `file`.
fn loops_backed_by(file: &Path) -> Vec<String> {
    let file = fs::canonicalize(file).unwrap();
    let mut out = Vec::new();
    for e in fs::read_dir("/sys/block").unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Ok(b) = fs::read_to_string(e.path().join("loop/backing_file")) {
            if Path::new(b.trim_end()) == file {
                out.push(name);
            }
        }
    }
    out
}

#[test]
fn packed_erofs_image_runs_read_only_and_tampering_is_refused() {
    let env = Env::new("img-erofs");
    let name = unique("e");
    let (id, _) = build(&env, &env.probe_manifest(&name, &["status"], ""));
    let v = ok_json(env.cmd().args(["image", "pack", &id, "--json"]).output().unwrap(), "pack");
    let file = PathBuf::from(v["file"].as_str().unwrap());
    let m = manifest_with_source(
        &env,
        &name,
        &[ISC, "probe", "mounts", "write:/usr"],
        &format!("erofs:{}", file.display()),
    );
    let out = env.run(&m, &["--json"]);
    assert!(out.status.success(), "erofs run failed: {}", String::from_utf8_lossy(&out.stderr));
    let outs: Vec<isc_engine::probe::ProbeOutcome> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(by_name(&outs, "write:/usr").errno, Some(EROFS));
    let root_opts = by_name(&outs, "mounts").value["/"].as_str().unwrap().to_string();
    assert!(root_opts.contains("ro"), "{root_opts}");
    assert_eq!(exit_record(&out)["image_id"], id.as_str());
    // The loop device autoclears once the ISC's mount namespace is gone.
    let t = Instant::now();
    while !loops_backed_by(&file).is_empty() {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "loop device left: {:?}",
            loops_backed_by(&file)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let verify = env.cmd().args(["image", "verify", &id, "--json"]).output().unwrap();
    let v = ok_json(verify, "verify");
    assert_eq!(v["packed"]["hash_matches"], true, "{v}");

    // Root clears the flag and rewrites the packed file: refused, naming the file.
    isc_image::immutable::set_immutable(&file, false).unwrap();
    let bytes = fs::read(&file).unwrap();
    fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
    fs::write(&file, &bytes).unwrap();
    let out = env.run(&m, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "tampered packed image started");
    assert!(err.contains(&file.display().to_string()), "{err}");
    let verify = env.cmd().args(["image", "verify", &id, "--json"]).output().unwrap();
    assert_eq!(verify.status.code(), Some(1));
    assert_nothing_left(&env);
}
