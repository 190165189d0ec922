//! Every tamper case is detected and named; a clean log verifies.

use std::fs;
use std::path::{Path, PathBuf};

use isc_audit::{
    verify_dir, verify_files, Actor, AuditConfig, AuditLog, Durability, FindingKind, Kind,
    VerifyOptions,
};
use serde_json::json;

struct Fixture {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    key: isc_audit::VerifyingKey,
}

/// 40 records, a checkpoint after every 10 records, closed cleanly (closing checkpoint).
fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("audit");
    let mut cfg = AuditConfig::new(tmp.path().join("keys"));
    cfg.durability = Durability::None;
    cfg.checkpoint_every = 10;
    cfg.checkpoint_interval = None;
    let (log, report) = AuditLog::open(&dir, cfg).unwrap();
    assert_eq!(report.last_seq, 0);
    for i in 0..40 {
        log.append(Some("web"), Kind::IscStart, Actor::Uid(1000), json!({"i": i, "note": "start"}))
            .unwrap();
    }
    let key = log.verifying_key();
    drop(log);
    // The tampering below edits the records as text: drop the active file's reserved tail of
    // NULs (the shape of a rotated file); `a_reserved_tail_...` covers the tail itself.
    let file = only_file(&dir);
    let text_len = fs::read(&file).unwrap().iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    fs::OpenOptions::new().write(true).open(&file).unwrap().set_len(text_len as u64).unwrap();
    Fixture { _tmp: tmp, dir, key }
}

#[test]
fn a_reserved_tail_is_free_space_and_data_beyond_a_gap_is_named() {
    use std::os::unix::fs::FileExt;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("audit");
    let mut cfg = AuditConfig::new(tmp.path().join("keys"));
    cfg.durability = Durability::None;
    let (log, _) = AuditLog::open(&dir, cfg).unwrap();
    log.append(Some("web"), Kind::IscStart, Actor::Isc, json!({})).unwrap();
    let key = log.verifying_key();
    drop(log);
    let file = only_file(&dir);
    let bytes = fs::read(&file).unwrap();
    let end = bytes.iter().rposition(|&b| b != 0).unwrap() + 1;
    assert!(bytes.len() >= end + 256 * 1024, "a reserved tail follows the records");
    assert!(bytes[end..].iter().all(|&b| b == 0));
    assert!(verify_dir(&dir, &key, false).unwrap().is_ok(), "the tail is free space");
    // Bytes after a run of NULs (a later page persisted before an earlier one, or an edit) are
    // outside the chain: named as an incomplete end at the records' end.
    fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .unwrap()
        .write_all_at(b"{\"seq\":9", end as u64 + 100)
        .unwrap();
    let e = verify_dir(&dir, &key, false).unwrap().first_error.unwrap();
    assert_eq!(e.kind, FindingKind::Truncated);
    assert_eq!(e.offset, end as u64);
}

fn only_file(dir: &Path) -> PathBuf {
    let files = isc_audit::list_files(dir).unwrap();
    assert_eq!(files.len(), 1);
    files[0].clone()
}

fn lines(path: &Path) -> Vec<String> {
    fs::read_to_string(path).unwrap().lines().map(str::to_owned).collect()
}

fn write_lines(path: &Path, lines: &[String]) {
    let mut s = lines.join("\n");
    s.push('\n');
    fs::write(path, s).unwrap();
}

/// Line index of the record with `seq`.
fn idx(lines: &[String], seq: u64) -> usize {
    lines.iter().position(|l| l.starts_with(&format!("{{\"seq\":{seq},"))).unwrap()
}

/// An attacker without the key: re-chain a forged record onto `prev` with the public format.
fn forge(seq: u64, prev: &str, kind: &str) -> (String, String) {
    let body = format!(
        "{{\"seq\":{seq},\"time\":\"2030-01-01T00:00:00.000000000Z\",\"isc\":\"web\",\"kind\":\"{kind}\",\"actor\":\"isc\",\"detail\":{{\"forged\":true}},\"prev\":\"{prev}\""
    );
    let hash = blake3::hash(format!("{body}}}").as_bytes()).to_hex().to_string();
    (format!("{body},\"hash\":\"{hash}\"}}"), hash)
}

fn hash_of(line: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    v["hash"].as_str().unwrap().to_owned()
}

#[test]
fn clean_log_verifies_fully_covered() {
    let f = fixture();
    let r = verify_dir(&f.dir, &f.key, false).unwrap();
    assert!(r.is_ok(), "{:?}", r.first_finding());
    // 40 records + 4 periodic checkpoints (the closing one finds nothing uncovered).
    assert_eq!(r.records, 44);
    assert_eq!(r.checkpoints, 4);
    assert_eq!(r.last_seq, Some(44));
}

#[test]
fn flipped_byte_is_named_as_edited() {
    let f = fixture();
    let path = only_file(&f.dir);
    let mut bytes = fs::read(&path).unwrap();
    let l = lines(&path);
    let start: usize = l[..idx(&l, 5)].iter().map(|x| x.len() + 1).sum();
    let pos = start + l[idx(&l, 5)].find("start").unwrap();
    bytes[pos] ^= 0x01;
    fs::write(&path, bytes).unwrap();
    let r = verify_dir(&f.dir, &f.key, false).unwrap();
    let e = r.first_error.expect("edit detected");
    assert_eq!(e.kind, FindingKind::Edited);
    assert_eq!(e.seq, Some(5));
    assert!(e.message.contains("seq 5 was edited"), "{}", e.message);
    assert_eq!(r.records, 4, "records before the edit verified");
}

#[test]
fn edited_and_rehashed_record_breaks_the_chain_at_its_successor() {
    let f = fixture();
    let path = only_file(&f.dir);
    let mut l = lines(&path);
    let i = idx(&l, 5);
    let prev = serde_json::from_str::<serde_json::Value>(&l[i]).unwrap()["prev"]
        .as_str()
        .unwrap()
        .to_owned();
    l[i] = forge(5, &prev, "isc_start").0;
    write_lines(&path, &l);
    let e = verify_dir(&f.dir, &f.key, false).unwrap().first_error.unwrap();
    assert_eq!(e.kind, FindingKind::ChainBroken);
    assert_eq!(e.seq, Some(6));
    assert!(e.message.contains("seq 5 was replaced"), "{}", e.message);
}

#[test]
fn deleted_record_is_named() {
    let f = fixture();
    let path = only_file(&f.dir);
    let mut l = lines(&path);
    let i = idx(&l, 7);
    l.remove(i);
    write_lines(&path, &l);
    let e = verify_dir(&f.dir, &f.key, false).unwrap().first_error.unwrap();
    assert_eq!(e.kind, FindingKind::Deleted);
    assert_eq!(e.seq, Some(8));
    assert!(e.message.contains("seq 7 was deleted"), "{}", e.message);
}

#[test]
fn swapped_records_are_named_as_reordered() {
    let f = fixture();
    let path = only_file(&f.dir);
    let mut l = lines(&path);
    let (a, b) = (idx(&l, 3), idx(&l, 4));
    l.swap(a, b);
    write_lines(&path, &l);
    let e = verify_dir(&f.dir, &f.key, false).unwrap().first_error.unwrap();
    assert_eq!(e.kind, FindingKind::Reordered);
    assert_eq!(e.seq, Some(4));
    assert!(e.message.contains("out of order"), "{}", e.message);
}

#[test]
fn truncation_mid_record_is_reported_with_offset() {
    let f = fixture();
    let path = only_file(&f.dir);
    let len = fs::metadata(&path).unwrap().len();
    fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(len - 30).unwrap();
    let r = verify_dir(&f.dir, &f.key, false).unwrap();
    let e = r.first_error.unwrap();
    assert_eq!(e.kind, FindingKind::Truncated);
    let l = lines(&path);
    let complete: u64 = l[..l.len() - 1].iter().map(|x| x.len() as u64 + 1).sum();
    assert_eq!(e.offset, complete);
    assert!(e.message.contains("incomplete record"), "{}", e.message);
}

#[test]
fn truncation_removing_the_last_checkpoint_leaves_an_uncovered_tail() {
    let f = fixture();
    let path = only_file(&f.dir);
    let mut l = lines(&path);
    // Records 34..=44 are: 34..=43 data, 44 the last checkpoint (covers 43). Cut 44 and 43.
    let i = idx(&l, 43);
    l.truncate(i);
    write_lines(&path, &l);
    let r = verify_dir(&f.dir, &f.key, false).unwrap();
    assert!(r.first_error.is_none());
    let u = r.uncovered.unwrap();
    assert_eq!(u.kind, FindingKind::Uncovered);
    assert!(
        u.message.starts_with("records after seq 33 are not covered by a signed checkpoint"),
        "{}",
        u.message
    );
}

#[test]
fn truncation_on_a_checkpoint_boundary_needs_an_anchor() {
    let f = fixture();
    let path = only_file(&f.dir);
    let full = lines(&path);
    let anchor = (44, hash_of(&full[idx(&full, 44)]));
    let mut l = full.clone();
    let i = idx(&l, 33);
    l.truncate(i + 1); // seq 33 is the checkpoint covering 1..=32
    write_lines(&path, &l);
    // Without outside knowledge this cut is indistinguishable from a log that ended there.
    assert!(verify_dir(&f.dir, &f.key, false).unwrap().is_ok());
    let opts = VerifyOptions { from_checkpoint: false, anchor: Some(anchor) };
    let r = verify_files(&[path], &f.key, &opts).unwrap();
    let e = r.first_error.unwrap();
    assert_eq!(e.kind, FindingKind::Truncated);
    assert!(e.message.contains("anchor says seq 44 existed"), "{}", e.message);
}

#[test]
fn forged_tail_rechained_without_the_key_is_uncovered() {
    let f = fixture();
    let path = only_file(&f.dir);
    let mut l = lines(&path);
    let mut prev = hash_of(l.last().unwrap());
    for seq in 45..48 {
        let (line, h) = forge(seq, &prev, "isc_stop");
        l.push(line);
        prev = h;
    }
    write_lines(&path, &l);
    let r = verify_dir(&f.dir, &f.key, false).unwrap();
    assert!(r.first_error.is_none(), "{:?}", r.first_error);
    let u = r.uncovered.unwrap();
    assert_eq!(u.kind, FindingKind::Uncovered);
    assert!(
        u.message.starts_with("records after seq 44 are not covered by a signed checkpoint"),
        "{}",
        u.message
    );
}

#[test]
fn replaced_checkpoint_signature_is_a_bad_signature() {
    let f = fixture();
    let path = only_file(&f.dir);
    let mut l = lines(&path);
    let i = idx(&l, 22); // checkpoint covering 1..=21
    let mut v: serde_json::Value = serde_json::from_str(&l[i]).unwrap();
    assert_eq!(v["kind"], "checkpoint");
    // A signature by another key over the same message, with the line re-hashed and the rest of
    // the chain re-linked, so only the signature is wrong.
    let other = ed25519_dalek_sign_other();
    v["detail"]["sig"] = json!(other);
    let prev = v["prev"].as_str().unwrap().to_owned();
    let detail = serde_json::to_string(&v["detail"]).unwrap();
    let body = format!(
        "{{\"seq\":22,\"time\":{},\"isc\":null,\"kind\":\"checkpoint\",\"actor\":\"isc\",\"detail\":{detail},\"prev\":\"{prev}\"",
        v["time"]
    );
    let hash = blake3::hash(format!("{body}}}").as_bytes()).to_hex().to_string();
    l[i] = format!("{body},\"hash\":\"{hash}\"}}");
    // Re-chain the rest.
    let mut prev = hash;
    for line in l.iter_mut().skip(i + 1) {
        let mut v: serde_json::Value = serde_json::from_str(line).unwrap();
        let seq = v["seq"].as_u64().unwrap();
        v["prev"] = json!(prev);
        let body = format!(
            "{{\"seq\":{seq},\"time\":{},\"isc\":{},\"kind\":{},\"actor\":{},\"detail\":{},\"prev\":\"{prev}\"",
            v["time"], v["isc"], v["kind"], v["actor"], v["detail"]
        );
        prev = blake3::hash(format!("{body}}}").as_bytes()).to_hex().to_string();
        *line = format!("{body},\"hash\":\"{prev}\"}}");
    }
    write_lines(&path, &l);
    let e = verify_dir(&f.dir, &f.key, false).unwrap().first_error.unwrap();
    assert_eq!(e.kind, FindingKind::BadSignature);
    assert_eq!(e.seq, Some(22));
    assert!(e.message.contains("does not verify"), "{}", e.message);
}

/// 64 bytes of a valid-looking but wrong signature (hex).
fn ed25519_dalek_sign_other() -> String {
    use isc_audit::SigningKey;
    let k = SigningKey::from_bytes(&[7u8; 32]);
    let sig = ed25519_dalek_sign(&k);
    sig.iter().map(|b| format!("{b:02x}")).collect()
}

fn ed25519_dalek_sign(k: &isc_audit::SigningKey) -> [u8; 64] {
    use ed25519_dalek::Signer;
    k.sign(b"isc-audit test: some other message").to_bytes()
}

#[test]
fn wrong_public_key_fails_every_checkpoint() {
    let f = fixture();
    let other = isc_audit::SigningKey::from_bytes(&[9u8; 32]).verifying_key();
    let e = verify_dir(&f.dir, &other, false).unwrap().first_error.unwrap();
    assert_eq!(e.kind, FindingKind::BadSignature);
    assert_eq!(e.seq, Some(11));
}

#[test]
fn removed_start_is_missing_unless_verifying_from_a_checkpoint() {
    let f = fixture();
    let path = only_file(&f.dir);
    let mut l = lines(&path);
    l.drain(..5);
    write_lines(&path, &l);
    let e = verify_dir(&f.dir, &f.key, false).unwrap().first_error.unwrap();
    assert_eq!(e.kind, FindingKind::MissingStart);
    let r = verify_dir(&f.dir, &f.key, true).unwrap();
    assert!(r.is_ok(), "{:?}", r.first_finding());
    assert_eq!(r.first_seq, Some(6));
}

#[test]
fn large_file_is_checked_in_parallel_and_still_names_the_first_bad_record() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("audit");
    let mut cfg = AuditConfig::new(tmp.path().join("keys"));
    cfg.durability = Durability::None;
    cfg.checkpoint_interval = None;
    let (log, _) = AuditLog::open(&dir, cfg).unwrap();
    let recs = (0..12_000).map(|i| (None, Kind::NetDrop, Actor::Kernel, json!({"i": i})));
    log.append_many(recs).unwrap();
    let key = log.verifying_key();
    drop(log);
    assert!(verify_dir(&dir, &key, false).unwrap().is_ok());
    let path = only_file(&dir);
    let text = fs::read_to_string(&path).unwrap();
    // Corrupt two records; the earlier one must be named even though workers see both.
    let text =
        text.replace("{\"i\":11000}", "{\"i\":11001}").replace("{\"i\":9000}", "{\"i\":9001}");
    fs::write(&path, text).unwrap();
    let e = verify_dir(&dir, &key, false).unwrap().first_error.unwrap();
    assert_eq!(e.kind, FindingKind::Edited);
    // 9000 data records before it plus one checkpoint per 1000.
    assert_eq!(e.seq, Some(9010));
}
