//! What an idle ISC gives back once its service runs (`isc_engine::idle`, docs/benchmarks.md
//! "Idle memory"): after a quiet second, PID 1 hibernates, and a monitor that stays whole
//! (one whose hooks cannot be kept across a hibernation, here because the ISC's image is a
//! mounted EROFS file: `isc_engine::monitor_hibernate`; tests/monitor_hibernate.rs for the
//! others) unmaps the code
//! of the isc binary that the start path ran, so the page tables mapping it can go, and sleeps.

mod common;

use std::fs;
use std::time::{Duration, Instant};

use common::*;

/// KiB of the isc binary's clean file pages (code, read-only data) that `pid` has mapped: the
/// `Rss` of its mappings of the binary without anonymous pages (the relocated RELRO segment is
/// a mapping of the binary too, but anonymous once written, and is never released).
fn code_resident_kib(pid: i64) -> u64 {
    let smaps = fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    let (mut ours, mut rss, mut total) = (false, 0, 0);
    for line in smaps.lines() {
        let mut f = line.split_whitespace();
        match f.next() {
            Some(first) if first.contains('-') && !first.ends_with(':') => {
                ours = line.ends_with(ISC);
            }
            Some("Rss:") if ours => rss = f.next().unwrap().parse::<u64>().unwrap(),
            Some("Anonymous:") if ours && f.next() == Some("0") => total += rss,
            _ => {}
        }
    }
    total
}

/// A manifest running `sleep 60` from a packed EROFS image (`isc image build`, then `isc image
/// pack`), so that its monitor stays whole: the image's mount cannot be kept across a
/// hibernation (`ImageHold::can_hibernate`).
fn whole_monitor_manifest(env: &Env, name: &str) -> std::path::PathBuf {
    let ok = |out: std::process::Output, what: &str| -> serde_json::Value {
        assert!(out.status.success(), "{what}: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let host = env.manifest(&format!("{name}-host"), &["/usr/bin/sleep", "60"], "");
    let built =
        ok(env.cmd().args(["image", "build", "--json"]).arg(&host).output().unwrap(), "build");
    let id = built["id"].as_str().unwrap();
    let packed = ok(env.cmd().args(["image", "pack", id, "--json"]).output().unwrap(), "pack");
    let file = packed["file"].as_str().unwrap();
    let text = format!(
        "name = \"{name}\"\n[service]\nexec = [\"/usr/bin/sleep\", \"60\"]\n[image]\nsource = \"erofs:{file}\"\n[filesystem]\ntmpfs = [{{ path = \"/scratch\", size = \"4M\" }}]\n"
    );
    let path = env.dir.join(format!("{name}.toml"));
    fs::write(&path, text).unwrap();
    path
}

/// Stops the ISC if the test fails before it does (nothing may be left running).
struct Running<'a>(&'a Env, std::process::Child);

impl Running<'_> {
    /// Waits for the ISC's end and returns its stderr.
    fn wait_with_output_ref(&mut self) -> String {
        let mut err = String::new();
        if let Some(mut e) = self.1.stderr.take() {
            std::io::Read::read_to_string(&mut e, &mut err).unwrap();
        }
        self.1.wait().unwrap();
        err
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        if self.1.try_wait().ok().flatten().is_none() {
            let _ = self.0.cmd().args(["stop", "idle-code"]).output();
            let _ = self.0.cmd().args(["stop", "idle-log"]).output();
            let _ = self.0.cmd().args(["stop", "idle-wake"]).output();
            let _ = self.1.wait();
        }
    }
}

#[test]
fn an_idle_isc_unmaps_the_code_its_start_ran() {
    let env = Env::new("idle-code");
    let m = whole_monitor_manifest(&env, "idle-code");
    let mut running = Running(&env, env.spawn(&m));
    let s = env.wait_running("idle-code");
    let (monitor, init) = (s["monitor_pid"].as_i64().unwrap(), s["init_pid"].as_i64().unwrap());
    // Measured after the release (release and debug builds): the monitor ~1.5-2.5 MiB (its
    // audit collector wakes five times a second and faults some back in); without it 5.7
    // (release) or 15 MiB (debug). PID 1 no longer maps the binary at all once idle: it
    // hibernates (tests/hibernate.rs).
    const MONITOR_MAX_KIB: u64 = 4096;
    let t = Instant::now();
    let (mut p1, mut mon) = (u64::MAX, u64::MAX);
    while t.elapsed() < Duration::from_secs(10) {
        (p1, mon) = (code_resident_kib(init), code_resident_kib(monitor));
        if p1 == 0 && mon <= MONITOR_MAX_KIB {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(mon > 0, "the monitor maps the isc binary");
    assert_eq!(p1, 0, "PID 1 still has {p1} KiB of the isc binary's code mapped");
    assert!(mon <= MONITOR_MAX_KIB, "the monitor still has {mon} KiB of code mapped");
    // Both still work: a probe wakes PID 1 (the whole isc again, which forks it) and the monitor
    // answers the control socket.
    let out = env.cmd().args(["verify", "idle-code", "--json"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("verify: {e}: {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(out.status.code() == Some(0), v["score"]["pass"] == true, "{v}");
    assert!(fs::metadata(format!("/proc/{init}")).is_ok(), "PID 1 lives on after the probes");
    assert!(env.cmd().args(["stop", "idle-code"]).status().unwrap().success());
    assert_eq!(running.1.wait().unwrap().code(), Some(143), "SIGTERM ends the service: 128+15");
    drop(running);
    assert_nothing_left(&env);
}

/// Monitors log through `monitor_log` (no span registry): the lines keep `fmt()`'s layout.
#[test]
fn a_monitors_log_lines_keep_their_layout() {
    let env = Env::new("idle-log");
    let m = env.manifest("idle-log", &["/usr/bin/sleep", "60"], "");
    let c = env.cmd();
    let args = c.get_args().map(|a| a.to_owned()).collect::<Vec<_>>();
    let mut cmd = std::process::Command::new(ISC);
    // The shared command with `--log info` instead of `--log warn`.
    for a in args.iter().map(|a| a.to_str().unwrap()) {
        cmd.arg(if a == "warn" { "info" } else { a });
    }
    let child = cmd
        .arg("run")
        .arg(&m)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut running = Running(&env, child);
    env.wait_running("idle-log");
    assert!(env.cmd().args(["stop", "idle-log"]).status().unwrap().success());
    let out = running.wait_with_output_ref();
    let line = out
        .lines()
        .find(|l| l.contains("stopping: SIGTERM to the service"))
        .unwrap_or_else(|| panic!("no stop line in {out:?}"));
    // 2026-12-06T14:15:26.630899Z  INFO isc_engine::supervisor: stopping: … isc="idle-log" …
    let (time, rest) = line.split_at(27);
    assert!(time.ends_with('Z') && time.as_bytes()[10] == b'T' && time.as_bytes()[19] == b'.');
    assert!(rest.starts_with("  INFO isc_engine::supervisor: stopping: SIGTERM"), "{line}");
    assert!(rest.contains(" isc=idle-log "), "{line}");
    drop(running);
    assert_nothing_left(&env);
}

/// Voluntary context switches of each thread of `pid`, by thread name.
fn wakeups(pid: i64) -> Vec<(String, u64)> {
    let mut v = vec![];
    for t in fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten() {
        let name = fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        let status = fs::read_to_string(t.path().join("status")).unwrap_or_default();
        let n = status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .map_or(0, |n| n.trim().parse().unwrap());
        v.push((name.trim().to_string(), n));
    }
    v.sort();
    v
}

/// An idle ISC's monitor sleeps: its denial collector wakes for records, a stop, the audit
/// log's due ticks or a backstop every 10 s, not five times a second (audit_collect.rs).
#[test]
fn an_idle_monitor_does_not_wake() {
    let env = Env::new("idle-wake");
    let m = whole_monitor_manifest(&env, "idle-wake");
    let mut running = Running(&env, env.spawn(&m));
    let monitor = env.wait_running("idle-wake")["monitor_pid"].as_i64().unwrap();
    // Past the start's own ticks (its records' sync and timed checkpoint) and PID 1's
    // hibernation.
    std::thread::sleep(Duration::from_millis(2500));
    let before = wakeups(monitor);
    std::thread::sleep(Duration::from_secs(3));
    let after = wakeups(monitor);
    assert_eq!(before.len(), after.len(), "{before:?} {after:?}");
    assert!(before.iter().any(|(n, _)| n == "isc-audit-kerne"), "{before:?}");
    for ((name, a), (_, b)) in before.iter().zip(&after) {
        assert!(b - a <= 1, "thread {name} woke {} times in 3 s", b - a);
    }
    assert!(env.cmd().args(["stop", "idle-wake"]).status().unwrap().success());
    running.1.wait().unwrap();
    drop(running);
    assert_nothing_left(&env);
}
