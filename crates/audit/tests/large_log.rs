//! Opening a large log reads only its tail, yet finds the same head, checkpoint state and torn
//! tail as a full scan would (opening happens on every ISC start).

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;

use isc_audit::{verify_dir, Actor, AuditConfig, AuditLog, Durability, Kind};

#[test]
fn a_log_larger_than_the_tail_window_reopens_at_the_right_head() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("audit");
    let mut cfg = AuditConfig::new(tmp.path().join("keys"));
    cfg.durability = Durability::None;
    cfg.checkpoint_every = 500;
    let detail = serde_json::json!({"pad": "x".repeat(300)});
    let (log, _) = AuditLog::open(&dir, cfg.clone()).unwrap();
    for _ in 0..2500 {
        log.append(Some("big"), Kind::IscStart, Actor::Isc, detail.clone()).unwrap();
    }
    let last = log.last_seq();
    let key = log.verifying_key();
    drop(log); // closing checkpoint
    let file = isc_audit::list_files(&dir).unwrap().pop().unwrap();
    let size = std::fs::metadata(&file).unwrap().len();
    assert!(size > 512 * 1024, "the file must exceed the tail window: {size}");

    let (log, report) = AuditLog::open(&dir, cfg.clone()).unwrap();
    assert!((last..=last + 1).contains(&report.last_seq), "head {} after {last}", report.last_seq);
    assert_eq!(report.uncovered_records, 0);
    assert!(report.torn_tail.is_none());
    log.append(Some("big"), Kind::IscExit, Actor::Isc, serde_json::json!({})).unwrap();
    drop(log);
    assert!(verify_dir(&dir, &key, false).unwrap().is_ok());

    // A torn last line in a large file is found and reported at its exact offset.
    let file = isc_audit::list_files(&dir).unwrap().pop().unwrap();
    // Where the records end (the file's reserved tail of NULs follows): a writer that died
    // mid-write left part of a record there.
    let bytes = std::fs::read(&file).unwrap();
    let before = bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1) as u64;
    let f = OpenOptions::new().write(true).open(&file).unwrap();
    f.write_all_at(b"{\"seq\":99999,\"ti", before).unwrap();
    let (_log, report) = AuditLog::open(&dir, cfg).unwrap();
    let torn = report.torn_tail.expect("torn tail reported");
    assert_eq!((torn.offset, torn.len), (before, 16));
}

#[test]
fn without_a_recent_checkpoint_the_scan_widens_and_counts_what_is_uncovered() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("audit");
    let mut cfg = AuditConfig::new(tmp.path().join("keys"));
    cfg.durability = Durability::None;
    cfg.checkpoint_every = 0;
    cfg.checkpoint_interval = None;
    let detail = serde_json::json!({"pad": "y".repeat(300)});
    let (log, _) = AuditLog::open(&dir, cfg.clone()).unwrap();
    for _ in 0..2000 {
        log.append(Some("big"), Kind::IscStart, Actor::Isc, detail.clone()).unwrap();
    }
    log.checkpoint().unwrap();
    for _ in 0..200 {
        log.append(Some("big"), Kind::IscStart, Actor::Isc, detail.clone()).unwrap();
    }
    let last = log.last_seq();
    // A crash: no closing checkpoint (the 200 records are ~70 KB, past the first window).
    std::mem::forget(log);
    let (_log, report) = AuditLog::open(&dir, cfg).unwrap();
    assert_eq!(report.last_seq, last);
    assert_eq!(report.uncovered_records, 200);
}
