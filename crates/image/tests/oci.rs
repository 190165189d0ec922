//! OCI import: test images are written here with our own code (tar + gzip/zstd + sha256).

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};

use common::TestStore;
use isc_image::{import_docker_archive, import_oci_layout, ImageStore, ImportOptions, OciError};
use sha2::{Digest, Sha256};

#[derive(Clone)]
enum E {
    Dir(&'static str, u32),
    File(&'static str, &'static [u8], u32),
    Link(&'static str, &'static str),
    Hard(&'static str, &'static str),
    Dev(&'static str),
    Raw(Vec<u8>, &'static [u8]), // raw name bytes (for `..`/absolute names the builder refuses)
}

fn layer_tar(entries: &[E]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        match e {
            E::Dir(p, mode) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(*mode);
                h.set_size(0);
                b.append_data(&mut h, p, std::io::empty()).unwrap();
            }
            E::File(p, data, mode) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(*mode);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, p, *data).unwrap();
            }
            E::Link(p, target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.set_size(0);
                b.append_link(&mut h, p, target).unwrap();
            }
            E::Hard(p, target) => {
                h.set_entry_type(tar::EntryType::Link);
                h.set_mode(0o644);
                h.set_size(0);
                b.append_link(&mut h, p, target).unwrap();
            }
            E::Dev(p) => {
                h.set_entry_type(tar::EntryType::Char);
                h.set_mode(0o666);
                h.set_size(0);
                b.append_data(&mut h, p, std::io::empty()).unwrap();
            }
            E::Raw(name, data) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(0o644);
                h.set_size(data.len() as u64);
                let gnu = h.as_gnu_mut().unwrap();
                gnu.name[..name.len()].copy_from_slice(name);
                h.set_cksum();
                b.append(&h, *data).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

#[derive(Clone, Copy)]
enum Z {
    None,
    Gzip,
    Zstd,
}

fn compress(data: &[u8], z: Z) -> Vec<u8> {
    match z {
        Z::None => data.to_vec(),
        Z::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(data).unwrap();
            e.finish().unwrap()
        }
        Z::Zstd => zstd::encode_all(data, 3).unwrap(),
    }
}

fn sha(data: &[u8]) -> String {
    format!(
        "sha256:{}",
        Sha256::digest(data).iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

fn config_json(diff_ids: &[String]) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Entrypoint": ["/bin/app"], "Cmd": ["--serve"], "Env": ["A=1"], "User": "1000:1000", "WorkingDir": "/srv"},
        "rootfs": {"type": "layers", "diff_ids": diff_ids}
    }))
    .unwrap()
}

/// Writes an OCI layout with `layers` and returns its directory.
fn write_layout(dir: &Path, layers: &[(Vec<E>, Z)]) -> PathBuf {
    let root = dir.join("layout");
    std::fs::create_dir_all(root.join("blobs/sha256")).unwrap();
    let put = |data: &[u8]| {
        let d = sha(data);
        std::fs::write(root.join("blobs/sha256").join(&d[7..]), data).unwrap();
        d
    };
    let mut descs = Vec::new();
    let mut diff_ids = Vec::new();
    for (entries, z) in layers {
        let plain = layer_tar(entries);
        diff_ids.push(sha(&plain));
        let blob = compress(&plain, *z);
        descs.push(serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": put(&blob), "size": blob.len()}));
    }
    let config = config_json(&diff_ids);
    let cd = put(&config);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": config.len()},
        "layers": descs
    }))
    .unwrap();
    let md = put(&manifest);
    std::fs::write(root.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    std::fs::write(
        root.join("index.json"),
        serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": manifest.len(),
             "platform": {"architecture": "amd64", "os": "linux"}}]}))
        .unwrap(),
    )
    .unwrap();
    root
}

fn base_layer() -> Vec<E> {
    vec![
        E::Dir("etc", 0o755),
        E::File("etc/keep", b"keep", 0o644),
        E::File("etc/gone", b"gone", 0o644),
        E::Dir("opt", 0o755),
        E::Dir("opt/data", 0o755),
        E::File("opt/data/old1", b"1", 0o644),
        E::Dir("opt/data/sub", 0o755),
        E::File("opt/data/sub/old2", b"2", 0o644),
        E::Dir("bin", 0o755),
        E::File("bin/app", b"#!/bin/sh\n", 0o755),
        E::Link("bin/sh", "/bin/app"),
    ]
}

fn paths(store: &ImageStore, id: &str) -> Vec<String> {
    store.manifest(id).unwrap().entries.into_iter().map(|e| e.path).collect()
}

#[test]
fn layers_and_whiteouts_give_exactly_the_expected_tree() {
    let s = TestStore::new();
    let work = tempfile::tempdir().unwrap();
    let top = vec![
        E::File("etc/.wh.gone", b"", 0o644),
        E::Dir("opt/data", 0o755),
        E::File("opt/data/.wh..wh..opq", b"", 0o644),
        E::File("opt/data/new", b"new", 0o644),
        E::File("etc/keep", b"changed", 0o600),
        E::Hard("bin/app2", "bin/app"),
    ];
    for z in [Z::Gzip, Z::Zstd, Z::None] {
        let layout = write_layout(work.path(), &[(base_layer(), z), (top.clone(), z)]);
        let img = import_oci_layout(s.path(), &layout, &ImportOptions::default()).unwrap();
        let store = ImageStore::open(s.path()).unwrap();
        let mut got = paths(&store, &img.prepared.id);
        got.retain(|p| {
            !["/proc", "/dev", "/sys", "/tmp", "/run", "/run/secrets"].contains(&p.as_str())
        });
        assert_eq!(
            got,
            vec![
                "/",
                "/bin",
                "/bin/app",
                "/bin/app2",
                "/bin/sh",
                "/etc",
                "/etc/keep",
                "/opt",
                "/opt/data",
                "/opt/data/new"
            ]
        );
        assert_eq!(std::fs::read(img.prepared.rootfs.join("etc/keep")).unwrap(), b"changed");
        assert_eq!(img.defaults.entrypoint, vec!["/bin/app".to_string()]);
        assert_eq!(img.defaults.cmd, vec!["--serve".to_string()]);
        assert_eq!(img.defaults.env, vec!["A=1".to_string()]);
        assert_eq!(img.defaults.user.as_deref(), Some("1000:1000"));
        assert_eq!(img.defaults.workdir.as_deref(), Some("/srv"));
        store.check_before_start(&img.prepared.id).unwrap();
        assert!(store.verify(&img.prepared.id).unwrap().is_clean());
        std::fs::remove_dir_all(&layout).unwrap();
    }
}

#[test]
fn same_layout_twice_gives_the_same_id() {
    let s = TestStore::new();
    let s2 = TestStore::new();
    let work = tempfile::tempdir().unwrap();
    let layout = write_layout(work.path(), &[(base_layer(), Z::Gzip)]);
    let a = import_oci_layout(s.path(), &layout, &ImportOptions::default()).unwrap();
    let b = import_oci_layout(s2.path(), &layout, &ImportOptions::default()).unwrap();
    assert_eq!(a.prepared.id, b.prepared.id);
    let again = import_oci_layout(s.path(), &layout, &ImportOptions::default()).unwrap();
    assert!(again.prepared.cached);
}

fn assert_refused(entries: Vec<E>, needle: &str, opts: &ImportOptions) {
    let s = TestStore::new();
    let work = tempfile::tempdir().unwrap();
    let layout = write_layout(work.path(), &[(base_layer(), Z::Gzip), (entries, Z::Gzip)]);
    let err = import_oci_layout(s.path(), &layout, opts).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, OciError::Refused { .. }), "{msg}");
    assert!(msg.contains(needle), "expected {needle:?} in {msg}");
    // Nothing reached the store, and staging was cleaned.
    let store = ImageStore::open(s.path()).unwrap();
    assert!(store.list().unwrap().is_empty());
    assert_eq!(std::fs::read_dir(s.path().join("images/tmp")).unwrap().count(), 0);
}

#[test]
fn hostile_layers_are_refused_with_the_entry_and_reason() {
    let d = ImportOptions::default();
    assert_refused(vec![E::Raw(b"../evil".to_vec(), b"x")], "path traversal", &d);
    assert_refused(vec![E::Raw(b"etc/../../evil".to_vec(), b"x")], "etc/../../evil", &d);
    assert_refused(vec![E::Raw(b"/etc/abs".to_vec(), b"x")], "absolute path", &d);
    assert_refused(vec![E::Link("etc/esc", "../../../../host")], "escapes the image root", &d);
    assert_refused(vec![E::Hard("etc/h", "../outside")], "hardlink target", &d);
    assert_refused(vec![E::Dev("dev-null")], "device node", &d);
    assert_refused(vec![E::File("bin/su", b"x", 0o4755)], "setuid", &d);
    assert_refused(vec![E::File("etc/ww", b"x", 0o666)], "world-writable", &d);
    assert_refused(
        vec![E::File("etc/dup", b"x", 0o644), E::File("etc/dup", b"y", 0o644)],
        "duplicate",
        &d,
    );
    let small = ImportOptions { max_entry_bytes: 4, ..ImportOptions::default() };
    assert_refused(vec![E::File("etc/big", b"0123456789", 0o644)], "oversized", &small);
    // A symlink planted in a lower layer cannot be written through.
    assert_refused(
        vec![E::Link("etc/lnk", "/opt"), E::File("etc/lnk/x", b"x", 0o644)],
        "goes through symlink",
        &d,
    );
}

#[test]
fn setuid_and_world_writable_are_stripped_with_the_opt_in() {
    let s = TestStore::new();
    let work = tempfile::tempdir().unwrap();
    let layout = write_layout(
        work.path(),
        &[(vec![E::Dir("tmp", 0o1777), E::File("su", b"x", 0o4755)], Z::Gzip)],
    );
    let opts = ImportOptions {
        strip_setuid: true,
        strip_world_writable: true,
        ..ImportOptions::default()
    };
    let img = import_oci_layout(s.path(), &layout, &opts).unwrap();
    let store = ImageStore::open(s.path()).unwrap();
    let m = store.manifest(&img.prepared.id).unwrap();
    let su = m.entries.iter().find(|e| e.path == "/su").unwrap();
    assert_eq!(su.mode & 0o6000, 0);
    let tmp = m.entries.iter().find(|e| e.path == "/tmp").unwrap();
    assert_eq!(tmp.mode & 0o002, 0);
}

#[test]
fn corrupted_blob_is_refused() {
    let s = TestStore::new();
    let work = tempfile::tempdir().unwrap();
    let layout = write_layout(work.path(), &[(base_layer(), Z::None)]);
    // Change file content in the (uncompressed) layer blob: the tar stays valid, the digest fails.
    for ent in std::fs::read_dir(layout.join("blobs/sha256")).unwrap() {
        let p = ent.unwrap().path();
        let mut b = std::fs::read(&p).unwrap();
        if let Some(at) = b.windows(4).rposition(|w| w == b"keep") {
            b[at + 2] = b'x';
            std::fs::write(&p, b).unwrap();
        }
    }
    let err = import_oci_layout(s.path(), &layout, &ImportOptions::default()).unwrap_err();
    assert!(matches!(err, OciError::Digest { .. }), "{err}");
}

#[test]
fn docker_archive_imports_like_the_layout() {
    let s = TestStore::new();
    let work = tempfile::tempdir().unwrap();
    let plain = layer_tar(&base_layer());
    let config = config_json(&[sha(&plain)]);
    let config_name = format!("{}.json", &sha(&config)[7..]);
    let manifest = serde_json::to_vec(&serde_json::json!([{"Config": config_name, "RepoTags": ["isc/test:1"], "Layers": ["abc/layer.tar"]}])).unwrap();
    let tarball = work.path().join("image.tar");
    let mut b = tar::Builder::new(std::fs::File::create(&tarball).unwrap());
    for (name, data) in
        [("manifest.json", &manifest), (config_name.as_str(), &config), ("abc/layer.tar", &plain)]
    {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, name, data.as_slice()).unwrap();
    }
    b.into_inner().unwrap().flush().unwrap();
    let img = import_docker_archive(s.path(), &tarball, &ImportOptions::default()).unwrap();
    let layout = write_layout(work.path(), &[(base_layer(), Z::Gzip)]);
    let s2 = TestStore::new();
    let from_layout = import_oci_layout(s2.path(), &layout, &ImportOptions::default()).unwrap();
    assert_eq!(img.prepared.id, from_layout.prepared.id);
    assert_eq!(img.defaults.entrypoint, vec!["/bin/app".to_string()]);
}
