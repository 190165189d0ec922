//! Audit log throughput: `cargo run -p isc-audit --example bench --release [-- RECORDS THREADS]`.
//!
//! Prints records/s for: durable group commit from many threads (64 and THREADS, default 256:
//! a closed-loop appender has one record in flight, so group commit throughput is bounded by
//! appenders in flight / `fdatasync` latency), durable `append_many` batches,
//! fsync off (1 thread and many), the floor (the same bytes through a plain `BufWriter`), and
//! verification. Targets: >= 100k/s appended with group commit, >= 1M/s verified.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use isc_audit::{verify_dir, Actor, AuditConfig, AuditLog, Durability, Kind};
use serde_json::json;

fn config(root: &Path, durability: Durability) -> AuditConfig {
    let mut c = AuditConfig::new(root.join("keys"));
    c.durability = durability;
    c.checkpoint_interval = None;
    c
}

fn detail(i: u64) -> serde_json::Value {
    json!({"verb": "start", "peer_uid": 1000, "result": "ok", "n": i})
}

/// `threads` threads append `total` records in all; returns records/s and the log's stats.
fn threaded(dir: &Path, root: &Path, d: Durability, total: u64, threads: u64) -> (f64, String) {
    let (log, _) = AuditLog::open(dir, config(root, d)).expect("open audit log");
    let log = Arc::new(log);
    let per = total / threads;
    let t0 = Instant::now();
    let hs: Vec<_> = (0..threads)
        .map(|t| {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                for i in 0..per {
                    log.append(Some("bench"), Kind::ApiRequest, Actor::Uid(t as u32), detail(i))
                        .expect("append");
                }
            })
        })
        .collect();
    for h in hs {
        h.join().expect("appender thread");
    }
    let rate = (per * threads) as f64 / t0.elapsed().as_secs_f64();
    let s = log.stats();
    let info = format!(
        "{} commits, {:.1} records/commit, {} fdatasync",
        s.commits,
        s.requests as f64 / s.commits.max(1) as f64,
        s.syncs
    );
    (rate, info)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let total: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(200_000);
    let threads: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(256);
    let tmp = tempfile::Builder::new()
        .prefix("isc-audit-bench-")
        .tempdir_in(std::env::var_os("TMPDIR").unwrap_or_else(|| "/var/tmp".into()))
        .expect("temp dir");
    let root = tmp.path();
    println!("isc-audit bench: {total} records, {threads} appender threads, in {}", root.display());
    println!("{:<46} {:>14}  notes", "case", "records/s");

    for (i, n) in [64, threads].into_iter().enumerate() {
        let dir = root.join(format!("durable{i}"));
        let (r, info) = threaded(&dir, root, Durability::Durable, total, n);
        let case = format!("append, group commit durable, {n} threads");
        println!("{case:<46} {r:>14.0}  {info}");
    }

    let (log, _) =
        AuditLog::open(&root.join("batch"), config(root, Durability::Durable)).expect("open");
    let t0 = Instant::now();
    let batch = 1000;
    for b in 0..total / batch {
        log.append_many((0..batch).map(|i| {
            (Some("bench".to_owned()), Kind::ApiRequest, Actor::Isc, detail(b * batch + i))
        }))
        .expect("append_many");
    }
    let r = (total / batch * batch) as f64 / t0.elapsed().as_secs_f64();
    println!(
        "{:<46} {:>14.0}  batches of {batch}, one fdatasync each",
        "append_many, durable, 1 thread", r
    );
    drop(log);

    let (r, info) = threaded(&root.join("nosync1"), root, Durability::None, total, 1);
    println!("{:<46} {:>14.0}  {info}", "append, fsync off, 1 thread", r);
    let (r, info) = threaded(&root.join("nosync"), root, Durability::None, total, threads);
    println!("{:<46} {:>14.0}  {info}", format!("append, fsync off, {threads} threads"), r);

    // The floor: the very same bytes through a plain buffered writer (no hashing, no locking).
    let mut lines = Vec::new();
    for f in isc_audit::list_files(&root.join("nosync1")).expect("list") {
        lines.extend(std::fs::read(f).expect("read"));
    }
    let n_lines = lines.iter().filter(|&&b| b == b'\n').count();
    let t0 = Instant::now();
    {
        let f = std::fs::File::create(root.join("floor.jsonl")).expect("create");
        let mut w = std::io::BufWriter::with_capacity(1 << 16, f);
        for l in lines.split_inclusive(|&b| b == b'\n') {
            w.write_all(l).expect("write");
        }
        w.flush().expect("flush");
    }
    let r = n_lines as f64 / t0.elapsed().as_secs_f64();
    println!("{:<46} {:>14.0}  same bytes, BufWriter, no fsync", "floor: plain buffered append", r);

    let (log, _) =
        AuditLog::open(&root.join("nosync1"), config(root, Durability::None)).expect("open");
    let key = log.verifying_key();
    drop(log);
    let t0 = Instant::now();
    let rep = verify_dir(&root.join("nosync1"), &key, false).expect("verify");
    let r = rep.records as f64 / t0.elapsed().as_secs_f64();
    assert!(rep.is_ok(), "{:?}", rep.first_finding());
    println!(
        "{:<46} {:>14.0}  {} records, {} checkpoints",
        "verify (chain + signatures)", r, rep.records, rep.checkpoints
    );
}
