//! Group commit, several writers, rotation continuity, torn tails and crashes (kill -9).

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use isc_audit::{
    export_verifiable, list_files, query, verify_dir, verify_files, Actor, AuditConfig, AuditLog,
    Durability, Filter, FindingKind, Kind, VerifyOptions,
};
use serde_json::json;

fn cfg(tmp: &Path) -> AuditConfig {
    let mut c = AuditConfig::new(tmp.join("keys"));
    c.checkpoint_interval = None;
    c
}

fn data_seqs(dir: &Path) -> BTreeSet<u64> {
    query(dir, &Filter::default())
        .unwrap()
        .into_iter()
        .filter(|r| !matches!(r.kind, Kind::Checkpoint | Kind::LogRotate))
        .map(|r| r.seq)
        .collect()
}

#[test]
fn group_commit_from_8_threads_keeps_one_valid_chain() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("audit");
    let (log, _) = AuditLog::open(&dir, cfg(tmp.path())).unwrap();
    let log = Arc::new(log);
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                (0..100)
                    .map(|i| {
                        log.append(
                            Some(&format!("isc-{t}")),
                            Kind::ApiRequest,
                            Actor::Uid(t),
                            json!({"i": i}),
                        )
                        .unwrap()
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut seqs = BTreeSet::new();
    for t in threads {
        for s in t.join().unwrap() {
            assert!(seqs.insert(s), "seq {s} handed out twice");
        }
    }
    assert_eq!(seqs.len(), 800);
    let stats = log.stats();
    eprintln!("8 threads x 100 durable appends: {stats:?}");
    // Pipelined group commit: one fdatasync covers every batch written before it started.
    assert!(stats.syncs >= 1 && stats.syncs <= stats.commits, "{stats:?}");
    assert!(stats.commits <= 800);
    let key = log.verifying_key();
    drop(log);
    assert_eq!(data_seqs(&dir), seqs);
    let r = verify_dir(&dir, &key, false).unwrap();
    assert!(r.is_ok(), "{:?}", r.first_finding());
}

#[test]
fn two_handles_on_one_directory_interleave_under_the_lock() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("audit");
    let mut c = cfg(tmp.path());
    c.durability = Durability::None;
    c.checkpoint_every = 7;
    c.max_file_bytes = 4096;
    // Separate handles have separate lock descriptors, exactly like separate processes.
    let (a, _) = AuditLog::open(&dir, c.clone()).unwrap();
    let (b, _) = AuditLog::open(&dir, c).unwrap();
    std::thread::scope(|s| {
        for log in [&a, &b] {
            s.spawn(move || {
                for i in 0..150 {
                    log.append(None, Kind::NetPolicy, Actor::Isc, json!({"i": i})).unwrap();
                }
            });
        }
    });
    let key = a.verifying_key();
    drop(a);
    drop(b);
    assert!(list_files(&dir).unwrap().len() > 2, "rotation happened");
    assert_eq!(data_seqs(&dir).len(), 300);
    let r = verify_dir(&dir, &key, false).unwrap();
    assert!(r.is_ok(), "{:?}", r.first_finding());
}

#[test]
fn rotation_keeps_the_chain_continuous_and_each_file_verifies_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("audit");
    let mut c = cfg(tmp.path());
    c.durability = Durability::None;
    c.max_file_bytes = 3000;
    let (log, _) = AuditLog::open(&dir, c).unwrap();
    for i in 0..100 {
        log.append(Some("db"), Kind::SecretRead, Actor::Isc, json!({"secret": "pw", "i": i}))
            .unwrap();
    }
    let key = log.verifying_key();
    drop(log);
    let files = list_files(&dir).unwrap();
    assert!(files.len() >= 5, "{} files", files.len());
    // A rotated file keeps only its records: its reserved tail of NULs is cut off; the active
    // (last) one keeps its tail.
    for f in &files[..files.len() - 1] {
        let bytes = std::fs::read(f).unwrap();
        assert!(bytes.ends_with(b"\n") && !bytes.contains(&0), "{} keeps a tail", f.display());
    }
    assert!(std::fs::read(files.last().unwrap()).unwrap().ends_with(&[0]), "active file's tail");
    let r = verify_dir(&dir, &key, false).unwrap();
    assert!(r.is_ok(), "{:?}", r.first_finding());
    for (i, f) in files.iter().enumerate().skip(1) {
        let first = std::fs::read_to_string(f).unwrap();
        let first: serde_json::Value = serde_json::from_str(first.lines().next().unwrap()).unwrap();
        assert_eq!(first["kind"], "log_rotate");
        let prev_name = files[i - 1].file_name().unwrap().to_str().unwrap();
        assert_eq!(first["detail"]["prev_file"], prev_name);
        // Each rotated file ends with a checkpoint, so a single exported file verifies alone.
        let single = verify_files(
            std::slice::from_ref(f),
            &key,
            &VerifyOptions { from_checkpoint: true, anchor: None },
        )
        .unwrap();
        assert!(single.is_ok(), "{}: {:?}", f.display(), single.first_finding());
    }
    // One exported file, copied off the host, verifies from genesis.
    let out = tmp.path().join("export.jsonl");
    assert_eq!(export_verifiable(&dir, &out).unwrap(), r.records);
    let exported = verify_files(&[out], &key, &VerifyOptions::default()).unwrap();
    assert!(exported.is_ok(), "{:?}", exported.first_finding());
    // Removing a whole middle file is a deletion.
    std::fs::remove_file(&files[2]).unwrap();
    let e = verify_dir(&dir, &key, false).unwrap().first_error.unwrap();
    assert_eq!(e.kind, FindingKind::Deleted, "{}", e.message);
}

/// A log file's data: its records (and a torn line, if any) without the reserved tail of NULs.
fn data(path: &std::path::Path) -> Vec<u8> {
    let mut bytes = std::fs::read(path).unwrap();
    bytes.truncate(bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1));
    bytes
}

#[test]
fn torn_tail_is_reported_on_open_kept_and_acknowledged() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("audit");
    let (log, _) = AuditLog::open(&dir, cfg(tmp.path())).unwrap();
    for i in 0..5 {
        log.append(None, Kind::IscExit, Actor::Isc, json!({"status": i})).unwrap();
    }
    let key = log.verifying_key();
    drop(log);
    let file = list_files(&dir).unwrap()[0].clone();
    let before = data(&file).len() as u64;
    // A writer that died mid-write left part of a record where the records end, over the
    // file's reserved tail of NULs.
    let torn = b"{\"seq\":7,\"time\":\"2026-01-01T00:00:00.0000";
    let f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, torn, before).unwrap();
    let e = verify_dir(&dir, &key, false).unwrap().first_error.unwrap();
    assert_eq!(e.kind, FindingKind::Truncated);
    assert_eq!(e.offset, before);

    let (log, report) = AuditLog::open(&dir, cfg(tmp.path())).unwrap();
    let t = report.torn_tail.expect("torn tail reported");
    assert_eq!((t.file.clone(), t.offset, t.len), (file.clone(), before, torn.len() as u64));
    assert_ne!(report.active_file, file, "appends continue in a new file");
    log.append(None, Kind::IscStart, Actor::Isc, json!({})).unwrap();
    drop(log);
    assert_eq!(data(&file).len() as u64, before + torn.len() as u64, "kept");
    let r = verify_dir(&dir, &key, false).unwrap();
    assert!(r.is_ok(), "{:?}", r.first_finding());
    assert_eq!(r.recovered_torn_tails, vec![t]);
}

#[test]
fn periodic_checkpoint_by_time_and_interval_sync() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("audit");
    let mut c = cfg(tmp.path());
    c.durability = Durability::Interval(Duration::from_millis(20));
    c.checkpoint_interval = Some(Duration::from_millis(50));
    let (log, _) = AuditLog::open(&dir, c).unwrap();
    log.append(Some("web"), Kind::IscCreate, Actor::Uid(0), json!({})).unwrap();
    let key = log.verifying_key();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let r = verify_dir(&dir, &key, false).unwrap();
        if r.is_ok() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no timed checkpoint: {:?}",
            r.first_finding()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(log.stats().syncs >= 1, "interval sync ran");
}

#[test]
fn deferred_ticker_syncs_only_once_started_and_then_within_the_interval() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("audit");
    let mut c = cfg(tmp.path());
    c.durability = Durability::Interval(Duration::from_millis(20));
    c.ticker_at_open = false;
    let (log, _) = AuditLog::open(&dir, c).unwrap();
    log.append(Some("web"), Kind::IscCreate, Actor::Uid(0), json!({})).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    // A single-threaded monitor: written, not synced, no thread anywhere.
    assert_eq!(log.stats().syncs, 0, "no ticker yet, nothing may sync");
    assert_eq!(data_seqs(&dir).len(), 1, "the record is written at once");
    log.start_ticker().unwrap();
    log.start_ticker().unwrap(); // idempotent
    log.append(Some("web"), Kind::IscStart, Actor::Uid(0), json!({})).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while log.stats().syncs == 0 {
        assert!(std::time::Instant::now() < deadline, "the started ticker never synced");
        std::thread::sleep(Duration::from_millis(10));
    }
    // Both records were covered by that one sync; an idle ticker syncs nothing more.
    let after = log.stats().syncs;
    std::thread::sleep(Duration::from_millis(150));
    assert_eq!(log.stats().syncs, after, "an idle ticker must not sync again");
}

#[test]
fn next_tick_in_says_when_a_ticking_caller_must_wake_and_nothing_when_idle() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = cfg(tmp.path());
    c.durability = Durability::Interval(Duration::from_millis(30));
    c.ticker_at_open = false;
    let (log, _) = AuditLog::open(&tmp.path().join("audit"), c).unwrap();
    assert_eq!(log.next_tick_in(), None, "nothing appended, nothing due");
    log.append(Some("web"), Kind::IscCreate, Actor::Uid(0), json!({})).unwrap();
    let due = log.next_tick_in().expect("an unsynced record is due a sync");
    assert!(due <= Duration::from_millis(30), "{due:?}");
    log.tick(); // notes the kick, syncs nothing yet
    std::thread::sleep(due + Duration::from_millis(5));
    log.tick();
    assert_eq!(log.stats().syncs, 1, "synced once the interval passed");
    assert_eq!(log.next_tick_in(), None, "idle again");
}

const CHILD_ENV: &str = "ISC_AUDIT_TEST_APPENDER_DIR";

/// Not a test on its own: the body of the child process the crash test kills.
#[test]
fn crash_child_appender() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let dir = PathBuf::from(dir);
    let mut c = cfg(dir.parent().unwrap());
    c.checkpoint_every = 5;
    let (log, _) = AuditLog::open(&dir, c).unwrap();
    let mut out = std::io::stdout().lock();
    for i in 0u64.. {
        let seq = log
            .append(
                Some("crashy"),
                Kind::IscStart,
                Actor::Isc,
                json!({"i": i, "pad": "x".repeat(200)}),
            )
            .unwrap();
        // Acknowledged (durable) before it is reported.
        writeln!(out, "{seq}").unwrap();
        out.flush().unwrap();
    }
}

#[test]
fn kill_9_while_appending_never_yields_an_undetected_gap() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("audit");
    let exe = std::env::current_exe().unwrap();
    let mut acked = BTreeSet::new();
    let mut torn_seen = 0;
    for round in 0..20u64 {
        let mut child = Command::new(&exe)
            .args(["--exact", "crash_child_appender", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, &dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        // Wait until it is appending, then let it run a varying while and kill it.
        let mut got = 0;
        while got < 1 + round % 4 {
            let l = lines.next().expect("child produced acks").unwrap();
            if let Ok(s) = l.trim().parse::<u64>() {
                acked.insert(s);
                got += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(3 * (round % 7)));
        // SAFETY: kill(2) on the pid of our own child.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGKILL) };
        for l in lines.map_while(Result::ok) {
            if let Ok(s) = l.trim().parse::<u64>() {
                acked.insert(s);
            }
        }
        child.wait().unwrap();
        // What the next opener sees: a torn tail is reported, never dropped.
        let files = list_files(&dir).unwrap();
        let last = data(files.last().unwrap());
        let ends_clean = last.is_empty() || last.ends_with(b"\n");
        let (log, report) = AuditLog::open(&dir, cfg(tmp.path())).unwrap();
        assert_eq!(report.torn_tail.is_some(), !ends_clean, "round {round}: {report:?}");
        torn_seen += usize::from(report.torn_tail.is_some());
        assert!(report.last_seq >= *acked.last().unwrap(), "round {round}: acked record lost");
        let key = log.verifying_key();
        drop(log);
        let r = verify_dir(&dir, &key, false).unwrap();
        assert!(r.is_ok(), "round {round}: {:?}", r.first_finding());
        let present = data_seqs(&dir);
        let missing: Vec<_> = acked.difference(&present).collect();
        assert!(missing.is_empty(), "round {round}: acknowledged seqs missing: {missing:?}");
    }
    eprintln!("{} acknowledged appends over 20 kills, {torn_seen} torn tails", acked.len());
}
