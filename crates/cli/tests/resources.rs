//! Issue 4: resource control proved on the real (v1) hierarchy with real ISCs.

mod common;

use std::fs;
use std::time::{Duration, Instant};

use common::*;

#[test]
fn memory_limit_oom_kills_and_the_exit_record_says_so() {
    let env = Env::new("oom");
    let m = env.probe_manifest("oom", &["alloc:256"], "[resources]\nmemory = \"32M\"\n");
    let out = env.run(&m, &["--json"]);
    assert_eq!(out.status.code(), Some(137), "{}", String::from_utf8_lossy(&out.stderr));
    let rec = exit_record(&out);
    assert_eq!(rec["signal"], 9);
    assert_eq!(rec["reason"], "killed by the kernel OOM killer: memory limit 32 MiB");
    assert_nothing_left(&env);
}

#[test]
fn fork_bomb_stops_at_the_pids_limit() {
    let env = Env::new("pids");
    let m = env.probe_manifest("pids", &["forkbomb:200"], "[resources]\npids = 16\n");
    let out = env.run(&m, &["--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let outs: Vec<isc_engine::probe::ProbeOutcome> = serde_json::from_slice(&out.stdout).unwrap();
    let v = &outs[0].value;
    // PID 1 and the service count against the limit too.
    assert!(v["forked"].as_u64().unwrap() <= 14, "{v}");
    assert!(v["eagain"].as_u64().unwrap() >= 186, "{v}");
    let rec = exit_record(&out);
    assert!(
        rec["reason"].as_str().unwrap().starts_with("the pids limit of 16 was reached"),
        "{rec}"
    );
    // The host is unaffected: we can still fork.
    assert!(std::process::Command::new("/bin/true").status().unwrap().success());
    assert_nothing_left(&env);
}

#[test]
fn cpu_quota_holds_a_busy_loop_under_a_quarter_core() {
    let env = Env::new("cpu");
    let m = env.probe_manifest("cpu", &["busy:2000"], "[resources]\ncpu = 0.2\n");
    let out = env.run(&m, &["--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let outs: Vec<isc_engine::probe::ProbeOutcome> = serde_json::from_slice(&out.stdout).unwrap();
    let v = &outs[0].value;
    // The exit record reports the throttling the kernel did.
    let ev = &exit_record(&out)["limit_events"];
    assert!(ev["cpu_throttled_periods"].as_u64().unwrap() >= 5, "{ev}");
    assert_eq!(ev["cpu_limit_cores"], 0.2);
    let (cpu, wall) = (v["cpu_ms"].as_f64().unwrap(), v["wall_ms"].as_f64().unwrap());
    assert!(cpu / wall <= 0.25, "used {cpu} ms of CPU in {wall} ms: {:.2} of a core", cpu / wall);
    assert!(cpu / wall >= 0.10, "suspiciously little CPU: {cpu}/{wall}");
    assert_nothing_left(&env);
}

#[test]
fn limits_are_in_the_cgroup_files_and_invisible_from_inside() {
    let env = Env::new("limits");
    let m = env.manifest(
        "limits",
        &["/usr/bin/sleep", "30"],
        "[resources]\nmemory = \"64M\"\npids = 32\ncpu = 0.5\n",
    );
    let mut child = env.spawn(&m);
    env.wait_running("limits");
    let read = |ctrl: &str, file: &str| {
        fs::read_to_string(isc_cgroup_dir(&env, ctrl, "limits").join(file))
            .unwrap()
            .trim()
            .to_string()
    };
    assert_eq!(read("memory", "memory.limit_in_bytes"), (64u64 << 20).to_string());
    assert_eq!(read("pids", "pids.max"), "32");
    // The child joined v1 through `tasks` (owned by the ISC's root for that moment); once the
    // service runs, every tasks file belongs to host root again.
    for ctrl in ["memory", "pids", "cpu"] {
        let f = isc_cgroup_dir(&env, ctrl, "limits").join("tasks");
        assert_eq!(
            std::os::unix::fs::MetadataExt::uid(&fs::metadata(&f).unwrap()),
            0,
            "{}",
            f.display()
        );
    }
    assert_eq!(read("cpu", "cpu.cfs_quota_us"), "50000");
    assert_eq!(read("cpu", "cpu.cfs_period_us"), "100000");
    // Hybrid host: the v2 directory's core files count CPU (`cpu.stat`) and kill everything
    // (`cgroup.kill`), so no cpuacct or freezer hierarchy is used.
    if isc_cgroup_dir(&env, "unified", "limits").join("cgroup.kill").exists() {
        for ctrl in ["cpuacct", "freezer"] {
            let d = isc_cgroup_dir(&env, ctrl, "limits");
            assert!(!d.exists(), "redundant v1 hierarchy used: {}", d.display());
        }
    }
    let stats = env.cmd().args(["stats", "limits", "--json"]).output().unwrap();
    assert!(stats.status.success(), "{}", String::from_utf8_lossy(&stats.stderr));
    let s: serde_json::Value = serde_json::from_slice(&stats.stdout).unwrap();
    assert!(s["stats"]["cpu_usage_usec"].as_u64().is_some(), "CPU usage from v2 cpu.stat: {s}");
    assert_eq!(s["stats"]["memory_limit"], 64u64 << 20);
    assert_eq!(s["stats"]["pids_limit"], 32);
    assert!(s["stats"]["pids_current"].as_u64().unwrap() >= 2, "PID 1 and the service");
    // From inside: the cgroup namespace roots every hierarchy at the ISC's own cgroup, and
    // no cgroupfs is mounted at all, so there is nothing to write.
    let out = env
        .cmd()
        .args(["probe", "--isc", "limits", "cat:/proc/self/cgroup", "write:/sys/fs/cgroup"])
        .output()
        .unwrap();
    let outs: Vec<isc_engine::probe::ProbeOutcome> = serde_json::from_slice(&out.stdout).unwrap();
    let cg = outs[0]
        .value
        .as_str()
        .unwrap_or_else(|| panic!("{outs:?} {}", String::from_utf8_lossy(&out.stderr)));
    assert!(
        !cg.is_empty() && cg.lines().all(|l| l.ends_with(":/")),
        "host cgroup paths visible: {cg}"
    );
    assert_eq!(outs[1].errno, Some(2), "no cgroupfs inside");
    assert!(env.cmd().args(["stop", "limits"]).status().unwrap().success());
    child.wait().unwrap();
    assert!(!isc_cgroup_dir(&env, "memory", "limits").exists(), "cgroup removed at the end");
    assert_nothing_left(&env);
}

#[test]
fn stale_cgroups_of_a_killed_monitor_are_collected_by_the_next_start() {
    let env = Env::new("stale");
    let m = env.manifest("stale", &["/usr/bin/sleep", "30"], "[resources]\nmemory = \"64M\"\n");
    let mut child = env.spawn(&m);
    let st = env.wait_running("stale");
    let init = st["init_pid"].as_i64().unwrap() as i32;
    child.kill().unwrap(); // SIGKILL to the monitor
    child.wait().unwrap();
    // PID 1 dies with its monitor (PR_SET_PDEATHSIG), taking the whole PID namespace.
    let t = Instant::now();
    while std::path::Path::new(&format!("/proc/{init}")).exists() {
        assert!(t.elapsed() < Duration::from_secs(5), "PID 1 outlived its monitor");
        std::thread::sleep(Duration::from_millis(10));
    }
    let dir = isc_cgroup_dir(&env, "memory", "stale");
    assert!(dir.exists(), "the killed monitor could not remove its cgroup");
    assert!(env.ps().is_empty(), "a dead monitor's ISC is not listed as running");
    // The next start (any ISC of this state dir) collects it.
    let other = env.manifest("other", &["/bin/sh", "-c", "exit 0"], "");
    assert!(env.run(&other, &[]).status.success());
    assert!(!dir.exists(), "stale cgroup still there");
    assert_nothing_left(&env);
}

#[test]
fn impossible_limits_are_refused_before_anything_is_created() {
    let env = Env::new("refuse");
    let m = env.manifest("refuse", &["/bin/sh", "-c", "exit 0"], "[resources]\nnofile = 1000000\n");
    let out = env.run(&m, &[]);
    assert_eq!(out.status.code(), Some(125));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("RLIMIT_NOFILE = 1000000 exceeds the host's hard limit"), "{err}");
    let m = env.manifest("tiny", &["/bin/sh", "-c", "exit 0"], "[resources]\nmemory = \"1M\"\n");
    let out = env.run(&m, &[]);
    assert_eq!(out.status.code(), Some(125));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("memory"), "{err}");
    assert_nothing_left(&env);
}
