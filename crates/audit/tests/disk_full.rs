//! A full (or read-only) filesystem puts the log in a failed state: `ensure_writable` refuses with
//! the message the engine shows, and recovers (recording the outage) once space is back.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use isc_audit::{query, verify_dir, Actor, AuditConfig, AuditError, AuditLog, Filter, Kind};
use serde_json::json;

/// A 64 KiB tmpfs under /tmp/isc-audit-test-*, unmounted and removed on drop (even on failure).
///
/// One at a time (the guard): a `mount` another test forks copies this process's descriptors
/// until it execs, so a file this test just closed can still be open for writing there, and
/// `remount,ro` fails with EBUSY (seen once in CI).
struct Tmpfs(PathBuf, #[allow(dead_code)] std::sync::MutexGuard<'static, ()>);

static ONE_TMPFS_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl Tmpfs {
    fn mount(tag: &str) -> Tmpfs {
        let guard = ONE_TMPFS_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let p = PathBuf::from(format!("/tmp/isc-audit-test-{}-{tag}", std::process::id()));
        std::fs::create_dir_all(&p).unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64k,mode=0700", "isc-audit-test"])
            .arg(&p)
            .status()
            .unwrap();
        assert!(st.success(), "mounting a tmpfs at {} (needs root)", p.display());
        Tmpfs(p, guard)
    }
    fn remount(&self, opt: &str) {
        let st = Command::new("mount")
            .args(["-o", &format!("remount,{opt}")])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(st.success());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

fn fill(path: &Path) {
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0u8; 4096];
    while f.write_all(&chunk).is_ok() {}
    let _ = f.write_all(&chunk[..1]);
    while f.write_all(&chunk[..1]).is_ok() {}
}

fn assert_refusal(e: &AuditError, why: &str) {
    let msg = e.to_string();
    assert!(matches!(e, AuditError::Unwritable { .. }), "{e:?}");
    assert!(msg.starts_with("audit log /tmp/isc-audit-test-"), "{msg}");
    assert!(msg.contains(&format!("unwritable: {why}")), "{msg}");
    assert!(msg.ends_with("; new ISC starts are refused until it is fixed"), "{msg}");
}

#[test]
fn disk_full_refuses_new_starts_with_a_clear_message_and_recovers() {
    let keys = tempfile::tempdir().unwrap();
    let fs = Tmpfs::mount("full");
    let dir = fs.0.join("audit");
    let mut cfg = AuditConfig::new(keys.path());
    cfg.min_free_bytes = 8 << 10;
    cfg.checkpoint_interval = None;
    let (log, _) = AuditLog::open(&dir, cfg).unwrap();
    for i in 0..3 {
        log.append(Some("web"), Kind::IscStart, Actor::Isc, json!({"i": i})).unwrap();
    }
    log.ensure_writable().unwrap();

    fill(&fs.0.join("filler"));
    let pad = "p".repeat(1500);
    let mut failure = None;
    for i in 0..200 {
        match log.append(Some("web"), Kind::IscStart, Actor::Isc, json!({"i": i, "pad": pad})) {
            Ok(_) => continue,
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    let e = failure.expect("appends fail once the filesystem is full");
    assert_refusal(&e, "No space left on device");
    let e = log.ensure_writable().unwrap_err();
    assert_refusal(&e, "No space left on device");
    eprintln!("{e}");
    // While failed, appends are refused at once (and counted).
    assert!(log.append(None, Kind::IscStart, Actor::Isc, json!({})).is_err());

    std::fs::remove_file(fs.0.join("filler")).unwrap();
    // Freed space can show up in statvfs a moment later on a loaded host (seen once in CI under
    // load): allow up to 2 s, then it must be writable again.
    let t = std::time::Instant::now();
    while log.ensure_writable().is_err() && t.elapsed() < std::time::Duration::from_secs(2) {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    log.ensure_writable().expect("writable again once space is freed");
    log.append(Some("web"), Kind::IscStart, Actor::Isc, json!({"after": true})).unwrap();
    let key = log.verifying_key();
    drop(log);
    let outage =
        query(&dir, &Filter { kinds: vec![Kind::AuditWriteFailure], ..Filter::default() }).unwrap();
    assert_eq!(outage.len(), 1);
    assert!(outage[0].detail["rejected_appends"].as_u64().unwrap() >= 2);
    assert!(outage[0].detail["error"].as_str().unwrap().contains("No space left on device"));
    let r = verify_dir(&dir, &key, false).unwrap();
    assert!(r.is_ok(), "{:?}", r.first_finding());
}

#[test]
fn free_space_reserve_fails_closed_before_any_write_fails() {
    let keys = tempfile::tempdir().unwrap();
    let fs = Tmpfs::mount("reserve");
    let mut cfg = AuditConfig::new(keys.path());
    cfg.checkpoint_interval = None;
    cfg.min_free_bytes = 1 << 20; // more than the whole 64 KiB filesystem
    let (log, _) = AuditLog::open(&fs.0.join("audit"), cfg).unwrap();
    assert_refusal(&log.ensure_writable().unwrap_err(), "No space left on device");
}

#[test]
fn read_only_filesystem_refuses_to_open() {
    let keys = tempfile::tempdir().unwrap();
    let fs = Tmpfs::mount("ro");
    let dir = fs.0.join("audit");
    let mut cfg = AuditConfig::new(keys.path());
    cfg.checkpoint_interval = None;
    cfg.min_free_bytes = 0;
    let (log, _) = AuditLog::open(&dir, cfg.clone()).unwrap();
    log.append(None, Kind::KeyRotate, Actor::Uid(0), json!({})).unwrap();
    drop(log); // remount,ro is refused (EBUSY) while a file is open for writing
    fs.remount("ro");
    let e = AuditLog::open(&dir, cfg).err().expect("opening on a read-only filesystem fails");
    assert!(e.to_string().contains("Read-only file system"), "{e}");
    fs.remount("rw");
}

/// A monitor's finisher whose `fdatasync` failed leaves `SYNC_FAILED_MARKER`: the next opener —
/// whoever it is — records the outage on the trail at once, removes the marker, and appends.
#[test]
fn a_failed_detached_flush_is_on_the_trail_after_the_next_open() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("audit");
    let cfg = || AuditConfig::new(tmp.path().join("keys"));
    let (log, _) = AuditLog::open(&dir, cfg()).unwrap();
    log.append(Some("web"), Kind::IscExit, Actor::Isc, json!({"code": 0})).unwrap();
    drop(log);
    let marker = dir.join(isc_audit::SYNC_FAILED_MARKER.to_str().unwrap());
    std::fs::write(&marker, b"").unwrap();
    let (log, _) = AuditLog::open(&dir, cfg()).unwrap();
    assert!(!marker.exists(), "the marker is taken up by the open");
    log.ensure_writable().expect("writable: the outage is recorded, not pending");
    log.append(Some("web"), Kind::IscStart, Actor::Isc, json!({})).unwrap();
    let key = log.verifying_key();
    drop(log);
    let outage =
        query(&dir, &Filter { kinds: vec![Kind::AuditWriteFailure], ..Filter::default() }).unwrap();
    assert_eq!(outage.len(), 1, "exactly one outage record");
    let why = outage[0].detail["error"].as_str().unwrap();
    assert!(why.contains("fdatasync of a monitor's closing records failed"), "{why}");
    assert!(why.contains("sync-failed"), "{why}");
    let r = verify_dir(&dir, &key, false).unwrap();
    assert!(r.is_ok(), "{:?}", r.first_finding());
}
