//! A hibernating PID 1 (`isc_engine::hibernate`, docs/engine.md): after a quiet second the
//! ISC's PID 1 is a 4 KiB program that still reaps, forwards signals, reports the service's
//! end and dies with its monitor, is non-dumpable, and becomes the whole isc again for probes.

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

use common::*;

const TINY: &str = "/memfd:isc-init (deleted)";
const WHOLE: &str = "/memfd:isc (deleted)";

/// Children of `pid` (host view) and their states, from /proc/*/stat.
fn children(pid: i64) -> Vec<(i64, char)> {
    let mut v = vec![];
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(stat) = fs::read_to_string(e.path().join("stat")) else { continue };
        let Some(rest) = stat.rsplit_once(") ").map(|(_, r)| r) else { continue };
        let f: Vec<&str> = rest.split_whitespace().collect();
        if f.get(1).and_then(|p| p.parse::<i64>().ok()) == Some(pid) {
            let me = e.file_name().to_string_lossy().parse().unwrap_or(0);
            v.push((me, f[0].chars().next().unwrap()));
        }
    }
    v
}

/// `isc verify NAME --json`, which must pass: (check id, state, badness) of every check.
fn verdicts(env: &Env, name: &str) -> Vec<(String, String, String)> {
    let out = env.cmd().args(["verify", name, "--json"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("verify: {e}: {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(v["score"]["pass"], true, "{v}");
    assert_eq!(out.status.code(), Some(0));
    let results = v["results"].as_array().unwrap_or_else(|| panic!("no results in {v}"));
    assert!(results.len() > 50, "{} results", results.len());
    results
        .iter()
        .map(|r| (r["id"].to_string(), r["state"].to_string(), r["badness"].to_string()))
        .collect()
}

#[test]
fn an_idle_pid_1_hibernates_reaps_stays_undumpable_and_wakes_for_probes() {
    let env = Env::new("hib-idle");
    // An orphan (`sleep 3` of a subshell that is gone) re-parents to PID 1 and ends while PID 1
    // hibernates: the tiny init must reap it. SIGTERM ends the service with status 7.
    let script = "trap 'exit 7' TERM; (/usr/bin/sleep 3 &); /usr/bin/sleep 600 & wait";
    let m = env.manifest("hib-idle", &["/bin/sh", "-c", script], "");
    let mut g = Guard(&env, "hib-idle", Some(env.spawn(&m)));
    let started = Instant::now();
    let s = env.wait_running("hib-idle");
    let init = s["init_pid"].as_i64().unwrap();
    // The catalogue's verdicts from the PID 1 of the start (a verify takes well under the
    // quiet second after which PID 1 hibernates), to compare with a woken PID 1's below.
    let before = verdicts(&env, "hib-idle");
    wait_exe(init, TINY, 10);
    // Its whole memory: two pages of stack and data, a few page-table pages (the whole PID 1:
    // ~130 KiB of private anonymous memory and ~45 KiB of page tables, docs/benchmarks.md).
    let (anon, pte) = (status_field(init, "RssAnon:"), status_field(init, "VmPTE:"));
    assert!(anon <= 32, "hibernating PID 1 has {anon} KiB anonymous memory");
    assert!(pte <= 32, "hibernating PID 1 has {pte} KiB of page tables");
    // Non-dumpable: its /proc files belong to host root, not to its own (mapped) uid, so the
    // service (same uid) cannot open /proc/1/mem (proc(5), PR_SET_DUMPABLE).
    let uid = status_field(init, "Uid:");
    assert_ne!(uid, 0, "PID 1 runs as a mapped uid");
    assert_eq!(fs::metadata(format!("/proc/{init}/mem")).unwrap().uid(), 0);
    // The orphan ends ~3 s after the start and is reaped: no zombie child of PID 1.
    std::thread::sleep(Duration::from_secs(4).saturating_sub(started.elapsed()));
    assert_eq!(exe_of(init), TINY, "still hibernating");
    let zombies: Vec<_> = children(init).into_iter().filter(|(_, st)| *st == 'Z').collect();
    assert!(zombies.is_empty(), "PID 1 left zombies: {zombies:?}");
    assert_eq!(children(init).len(), 1, "only the service's shell is left: {:?}", children(init));
    // Probes wake it: the whole isc answers them from inside, as before.
    let after = verdicts(&env, "hib-idle");
    assert_eq!(exe_of(init), WHOLE, "woken for the probes");
    // The same confinement: every check has the same state and badness as before.
    assert_eq!(before, after, "a woken PID 1's probes differ from the start's");
    assert_eq!(fs::metadata(format!("/proc/{init}/mem")).unwrap().uid(), 0, "woken: undumpable");
    // …and hibernates again after the next quiet second.
    wait_exe(init, TINY, 10);
    // A stop reaches the service through the tiny init.
    assert!(env.cmd().args(["stop", "hib-idle"]).status().unwrap().success());
    let status = g.2.take().unwrap().wait().unwrap();
    assert_eq!(status.code(), Some(7), "the service's own status for SIGTERM");
    assert_nothing_left(&env);
}

#[test]
fn a_service_ending_while_pid_1_hibernates_is_reported_with_its_status() {
    let env = Env::new("hib-end");
    let m = env.manifest("hib-end", &["/bin/sh", "-c", "/usr/bin/sleep 4; exit 5"], "");
    let mut g = Guard(&env, "hib-end", Some(run_captured(&env, &m)));
    let init = env.wait_running("hib-end")["init_pid"].as_i64().unwrap();
    wait_exe(init, TINY, 10);
    let out = g.2.take().unwrap().wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(5), "{}", String::from_utf8_lossy(&out.stderr));
    let rec = exit_record(&out);
    assert_eq!(rec["code"], 5, "{rec}");
    assert!(rec["signal"].is_null(), "{rec}");
    assert_nothing_left(&env);
}

#[test]
fn a_hibernating_pid_1_dies_with_its_monitor() {
    let env = Env::new("hib-orphan");
    let m = env.manifest("hib-orphan", &["/usr/bin/sleep", "600"], "");
    let mut g = Guard(&env, "hib-orphan", Some(env.spawn(&m)));
    let s = env.wait_running("hib-orphan");
    let (monitor, init) = (s["monitor_pid"].as_i64().unwrap(), s["init_pid"].as_i64().unwrap());
    let service = children(init)[0].0;
    wait_exe(init, TINY, 10);
    // SAFETY: SIGKILL to the monitor this test started (its pid from the registry).
    assert_eq!(unsafe { libc::kill(monitor as i32, libc::SIGKILL) }, 0);
    let _ = g.2.take().unwrap().wait();
    let t = Instant::now();
    while fs::metadata(format!("/proc/{init}")).is_ok()
        || fs::metadata(format!("/proc/{service}")).is_ok()
    {
        assert!(t.elapsed() < Duration::from_secs(5), "the ISC outlived its monitor");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The dead monitor's registry entry and cgroup are collected by the next start.
    let m2 = env.manifest("hib-next", &["/bin/sh", "-c", "exit 0"], "");
    let out = env.run(&m2, &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_nothing_left(&env);
}

#[test]
fn a_profile_that_denies_execveat_keeps_pid_1_whole_and_working() {
    let env = Env::new("hib-noexec");
    let extra = "[security]\ndeny_syscalls = [\"execveat\"]\n";
    let m = env.manifest("hib-noexec", &["/usr/bin/sleep", "600"], extra);
    let mut g = Guard(&env, "hib-noexec", Some(env.spawn(&m)));
    let init = env.wait_running("hib-noexec")["init_pid"].as_i64().unwrap();
    // Two quiet seconds: the monitor has asked, PID 1's execveat got EPERM and it said so.
    std::thread::sleep(Duration::from_millis(2500));
    let exe = exe_of(init);
    assert!(exe.ends_with("/isc"), "PID 1 still runs the isc it was cloned from: {exe:?}");
    let v = verdicts(&env, "hib-noexec");
    assert!(!v.is_empty());
    assert!(env.cmd().args(["stop", "hib-noexec"]).status().unwrap().success());
    let out = g.2.take().unwrap().wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(143));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err.matches("PID 1 could not exec the hibernating init").count(),
        1,
        "warned once: {err}"
    );
    assert!(err.contains("Operation not permitted"), "{err}");
    assert_nothing_left(&env);
}

#[test]
fn the_woken_pid_1_entry_refuses_to_run_outside_an_isc() {
    let out = std::process::Command::new(ISC).args(["__pid1", "1"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("`__pid1` is the entry of an ISC's woken PID 1, not a command"), "{err}");
}

/// The attack the execute-only memfd is for, from inside: the service (PID 1's own uid) tries
/// to open a hibernating PID 1's memory and executable and is refused.
#[test]
fn the_service_cannot_open_a_hibernating_pid_1s_memory_or_executable() {
    let env = Env::new("hib-attack");
    let script = "/usr/bin/sleep 3; \
        (exec 3</proc/1/mem) 2>/dev/null && echo mem-opened || echo mem-denied; \
        (exec 3</proc/1/exe) 2>/dev/null && echo exe-opened || echo exe-denied; \
        (exec 3>/proc/1/mem) 2>/dev/null && echo mem-writable || echo mem-write-denied";
    let m = env.manifest("hib-attack", &["/bin/sh", "-c", script], "");
    let mut g = Guard(&env, "hib-attack", Some(run_captured(&env, &m)));
    let init = env.wait_running("hib-attack")["init_pid"].as_i64().unwrap();
    wait_exe(init, TINY, 3);
    let out = g.2.take().unwrap().wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "mem-denied\nexe-denied\nmem-write-denied\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_nothing_left(&env);
}

/// PID 1's quiet is its own: output every 200 ms keeps the monitor busy, never PID 1.
#[test]
fn pid_1_of_a_chatty_service_hibernates_too() {
    let env = Env::new("hib-chatty");
    let script = "while :; do echo tick; /usr/bin/sleep 0.2; done";
    let m = env.manifest("hib-chatty", &["/bin/sh", "-c", script], "");
    let mut g = Guard(&env, "hib-chatty", Some(env.spawn(&m)));
    let init = env.wait_running("hib-chatty")["init_pid"].as_i64().unwrap();
    wait_exe(init, TINY, 5);
    assert!(env.cmd().args(["stop", "hib-chatty"]).status().unwrap().success());
    let status = g.2.take().unwrap().wait().unwrap();
    assert_eq!(status.code(), Some(143), "SIGTERM ends the shell: 128+15");
    assert_nothing_left(&env);
}
