//! Content-addressed store: reproducible ids, tamper detection before start and by re-hash,
//! leases that block removal, live drift checks through /proc/PID/root.

mod common;

use std::io::{BufRead, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use common::TestStore;
use isc_image::immutable::set_immutable;
use isc_image::{prepare_host_image, HostImageRequest, ImageError, ImageStore, IntegrityError};

fn request() -> HostImageRequest {
    HostImageRequest {
        paths: vec![PathBuf::from("/bin/true"), PathBuf::from("/bin/sh")],
        extra_dirs: vec![PathBuf::from("/data")],
        uid: 1000,
        gid: 1000,
    }
}

fn build(store: &TestStore) -> (ImageStore, String, PathBuf) {
    let prepared = prepare_host_image(store.path(), &request()).unwrap();
    (ImageStore::open(store.path()).unwrap(), prepared.id, prepared.rootfs)
}

/// Clears the immutable attribute of `path` (and its parent), runs `f`, as an attacker with root
/// would.
fn tamper(path: &Path, f: impl FnOnce()) {
    set_immutable(path.parent().unwrap(), false).unwrap();
    if !std::fs::symlink_metadata(path).unwrap().file_type().is_symlink() {
        set_immutable(path, false).unwrap();
    }
    f();
}

#[test]
fn same_inputs_give_the_same_id_in_any_store() {
    let a = TestStore::new();
    let b = TestStore::new();
    let (_, id_a, _) = build(&a);
    let (_, id_b, _) = build(&b);
    assert_eq!(id_a, id_b);
    let store = ImageStore::open(a.path()).unwrap();
    let report = store.verify(&id_a).unwrap();
    assert!(report.is_clean(), "{report:?}");
    let listed = store.list().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, id_a);
    assert_eq!(listed[0].meta.source, "host");
}

#[test]
fn stored_tree_is_immutable_even_for_root() {
    let s = TestStore::new();
    let (_, _, rootfs) = build(&s);
    assert!(std::fs::write(rootfs.join("usr/bin/true"), b"x").is_err());
    assert!(std::fs::write(rootfs.join("etc/evil"), b"x").is_err());
    assert!(std::fs::remove_file(rootfs.join("etc/passwd")).is_err());
    let mode = std::fs::metadata(rootfs.join("usr/bin/true")).unwrap().permissions().mode();
    assert_eq!(mode & 0o222, 0, "write bits left: {mode:o}");
}

#[test]
fn start_check_is_cheap() {
    let s = TestStore::new();
    let (store, id, _) = build(&s);
    store.check_before_start(&id).unwrap();
    let runs = 50;
    let t = Instant::now();
    for _ in 0..runs {
        store.check_before_start(&id).unwrap();
    }
    let per = t.elapsed() / runs;
    println!("check_before_start: {per:?} per call");
    assert!(per.as_millis() < 20, "{per:?}");
}

#[test]
fn content_change_is_refused_at_start_and_reported() {
    let s = TestStore::new();
    let (store, id, rootfs) = build(&s);
    let target = rootfs.join("etc/hosts");
    let before = std::fs::metadata(&target).unwrap();
    tamper(&target, || {
        // Same size, and the mtime put back: only ctime and content betray the change.
        let mut bytes = std::fs::read(&target).unwrap();
        bytes[0] ^= 1;
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::write(&target, &bytes).unwrap();
        std::fs::set_permissions(&target, before.permissions()).unwrap();
        let mtime = before.modified().unwrap();
        std::fs::File::options().write(true).open(&target).unwrap().set_modified(mtime).unwrap();
    });
    let err = store.check_before_start(&id).unwrap_err();
    assert!(
        matches!(&err, IntegrityError::Changed { path, .. } if path.starts_with("/etc")),
        "{err}"
    );
    let report = store.verify(&id).unwrap();
    assert_eq!(report.changed.len(), 1, "{report:?}");
    assert_eq!(report.changed[0].path, "/etc/hosts");
    assert_eq!(report.changed[0].fields, vec!["content".to_string()]);
    // The cached host build refuses too, instead of silently using the tampered tree.
    let err = prepare_host_image(s.path(), &request()).unwrap_err();
    assert!(matches!(err, ImageError::Integrity(_)), "{err}");
}

#[test]
fn mode_owner_symlink_and_additions_are_detected() {
    type Tamper = fn(&Path);
    let cases: Vec<(&str, Tamper, &str)> = vec![
        (
            "/etc/passwd",
            |p| std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o666)).unwrap(),
            "mode",
        ),
        ("/etc/group", |p| std::os::unix::fs::lchown(p, Some(1), None).unwrap(), "uid"),
        (
            "/bin",
            |p| {
                std::fs::remove_file(p).unwrap();
                std::os::unix::fs::symlink("/tmp", p).unwrap();
            },
            "target",
        ),
    ];
    for (path, f, field) in cases {
        let s = TestStore::new();
        let (store, id, rootfs) = build(&s);
        let host = rootfs.join(path.trim_start_matches('/'));
        tamper(&host, || f(&host));
        let err = store.check_before_start(&id).unwrap_err();
        assert!(err.to_string().contains("refusing to start"), "{path}: {err}");
        let report = store.verify(&id).unwrap();
        let change = report
            .changed
            .iter()
            .find(|c| c.path == path)
            .unwrap_or_else(|| panic!("{path}: {report:?}"));
        assert!(change.fields.iter().any(|f| f == field), "{path}: {change:?}");
    }
    // An added file: the directory's ctime moves (cheap check) and verify lists it.
    let s = TestStore::new();
    let (store, id, rootfs) = build(&s);
    let etc = rootfs.join("etc");
    set_immutable(&etc, false).unwrap();
    std::fs::write(etc.join("shadow"), b"x").unwrap();
    let err = store.check_before_start(&id).unwrap_err();
    assert!(err.to_string().contains("/etc"), "{err}");
    let report = store.verify(&id).unwrap();
    assert_eq!(report.added, vec!["/etc/shadow".to_string()]);
}

#[test]
fn leased_image_cannot_be_removed() {
    let s = TestStore::new();
    let (store, id, rootfs) = build(&s);
    let lease = store.lease(&id).unwrap();
    assert_eq!(lease.id(), id);
    let err = store.remove(&id).unwrap_err();
    assert!(err.to_string().contains("in use"), "{err}");
    assert!(rootfs.join("usr/bin/true").exists());
    drop(lease);
    store.remove(&id).unwrap();
    assert!(!rootfs.exists());
    assert!(store.list().unwrap().is_empty());
    assert!(store.lease(&id).is_err());
    assert!(store.check_before_start(&id).is_err());
    // The cache key no longer resolves; the next start rebuilds.
    let again = prepare_host_image(s.path(), &request()).unwrap();
    assert!(!again.cached);
    assert_eq!(again.id, id);
}

#[test]
fn bad_ids_are_refused() {
    let s = TestStore::new();
    let store = ImageStore::open(s.path()).unwrap();
    for bad in ["../../etc", "", "ABC", &"g".repeat(64)] {
        assert!(store.check_before_start(bad).is_err());
        assert!(store.remove(bad).is_err());
        assert!(store.lease(bad).is_err());
    }
}

#[test]
fn live_tree_is_checked_through_proc_pid_root() {
    let s = TestStore::new();
    let (store, id, rootfs) = build(&s);
    // A shell chrooted into the image in its own mount namespace, with /proc mounted inside.
    let mut child = Command::new("unshare")
        .args(["--mount", "--fork", "--pid"])
        .arg(format!("--mount-proc={}", rootfs.join("proc").display()))
        .arg("chroot")
        .arg(&rootfs)
        .args(["/bin/sh", "-c", "echo ready; read x"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "ready\n");
    // unshare -> forked child -> (exec) sh: the sh is unshare's only child.
    let children =
        std::fs::read_to_string(format!("/proc/{}/task/{}/children", child.id(), child.id()))
            .unwrap();
    let sh: u32 = children.split_whitespace().next().unwrap().parse().unwrap();
    let live = PathBuf::from(format!("/proc/{sh}/root"));
    let report = store.verify_live(&id, &live).unwrap();
    child.stdin.take().unwrap().write_all(b"\n").unwrap();
    child.wait().unwrap();
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(report.skipped_mounts, vec!["/proc".to_string()]);
}

#[test]
fn diff_between_two_images_lists_changes() {
    let s = TestStore::new();
    let (store, a, _) = build(&s);
    let mut other = request();
    other.uid = 1001;
    other.paths.push(PathBuf::from("/usr/bin/env"));
    let b = prepare_host_image(s.path(), &other).unwrap().id;
    let d = store.diff(&a, &b).unwrap();
    assert_eq!(d.added, vec!["/usr/bin/env".to_string()]);
    assert!(d.removed.is_empty());
    let changed: Vec<&str> = d.changed.iter().map(|c| c.path.as_str()).collect();
    assert_eq!(changed, vec!["/etc/passwd"]);
}

#[test]
fn mount_points_are_answered_from_the_checked_record() {
    let s = TestStore::new();
    let (store, id, _) = build(&s);
    store.check_before_start_for(&id, &[PathBuf::from("/data")]).unwrap();
    // Missing, a file, and below a file: each is named, and the fix says to rebuild.
    let wanted = ["/srv/www", "/etc/passwd", "/etc/passwd/x"].map(PathBuf::from);
    let err = store.check_before_start_for(&id, &wanted).unwrap_err();
    let IntegrityError::MissingMountPoints { missing, .. } = &err else { panic!("{err}") };
    assert_eq!(missing, &wanted.to_vec());
    let msg = err.to_string();
    assert!(msg.contains("/srv/www, /etc/passwd, /etc/passwd/x"), "{msg}");
    assert!(msg.contains("build or import it again"), "{msg}");
}

#[test]
fn a_corrupt_record_is_refused_with_its_path() {
    let s = TestStore::new();
    let (store, id, rootfs) = build(&s);
    let record = rootfs.parent().unwrap().join(isc_image::start_record::RECORD_FILE);
    tamper(&record, || {
        let bytes = std::fs::read(&record).unwrap();
        std::fs::set_permissions(&record, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::write(&record, &bytes[..bytes.len() - 3]).unwrap();
    });
    let err = store.check_before_start(&id).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, IntegrityError::Record { .. }), "{msg}");
    assert!(msg.contains("record.bin") && msg.contains("truncated"), "{msg}");
}

/// Stores written before `record.bin` hold a format-1 `record.json`: still start-checked.
#[test]
fn a_store_of_format_1_is_still_checked() {
    use isc_image::start_record::{StartRecord, LEGACY_RECORD_FILE, RECORD_FILE};
    let s = TestStore::new();
    let (store, id, rootfs) = build(&s);
    let dir = rootfs.parent().unwrap().to_path_buf();
    let record = dir.join(RECORD_FILE);
    tamper(&record, || {
        let mut r = StartRecord::decode(&std::fs::read(&record).unwrap()).unwrap();
        r.version = 1;
        std::fs::write(dir.join(LEGACY_RECORD_FILE), serde_json::to_vec(&r).unwrap()).unwrap();
        std::fs::remove_file(&record).unwrap();
    });
    store.check_before_start(&id).unwrap();
    assert!(store.lease(&id).is_ok(), "a format-1 image counts as stored");
    let target = rootfs.join("etc/hosts");
    tamper(&target, || {
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600)).unwrap();
    });
    let err = store.check_before_start(&id).unwrap_err();
    assert!(
        matches!(&err, IntegrityError::Changed { path, .. } if path.starts_with("/etc")),
        "{err}"
    );
}
