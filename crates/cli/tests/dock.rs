//! The Dock with real binaries: `isc dock serve` in a private --root/--state, ISCs started
//! through its API by `isc up`, supervision, re-adoption after `kill -9`, peer-credential
//! authorization, logs, the resource guard, and removal.

mod common;
mod dockproc;
mod netns;

use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::{Duration, Instant};

use common::ISC;
use dockproc::*;
use serde_json::Value;

const N: usize = 50;

#[test]
fn many_iscs_start_concurrently_and_outlive_a_killed_dock() {
    let mut d = DockProc::start("dock-many", "");
    let mut files = vec![];
    for i in 0..N {
        files.push(d.manifest(&format!("isc-many-{i}"), "exec sleep 1000", "", ""));
    }
    // Ends with code 7 on SIGTERM: it is stopped while the Dock is down.
    let ender = "isc-many-ender";
    files.push(d.manifest(ender, "trap 'exit 7' TERM; while true; do sleep 0.1; done", "", ""));
    let mut args = vec!["up".to_string(), "--json".into()];
    args.extend(files.iter().map(|f| f.to_string_lossy().into_owned()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let t = Instant::now();
    let out = d.ok(&args);
    let took = t.elapsed();
    let results: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(results.len(), N + 1);
    assert!(results.iter().all(|r| r["record"]["status"] == "running"), "{results:?}");
    eprintln!("{} ISCs started through the Dock in {took:?}", N + 1);

    // Every ISC runs as its own host UID range.
    let engine = isc_engine::state::list(&d.state()).unwrap();
    assert_eq!(engine.len(), N + 1);
    let mut bases: Vec<u32> = engine.iter().map(|s| s.host_uid_base).collect();
    bases.sort();
    bases.dedup();
    assert_eq!(bases.len(), N + 1, "UID ranges shared");
    for s in &engine {
        let uid = uid_of(s.init_pid);
        assert!(
            (s.host_uid_base..s.host_uid_base + 65536).contains(&uid),
            "{} runs as {uid}",
            s.name
        );
    }
    let before: Vec<(String, Value)> = d
        .ps()
        .into_iter()
        .map(|r| (r["name"].as_str().unwrap().to_string(), r["monitor_pid"].clone()))
        .collect();

    // kill -9 of the Dock leaves every ISC running.
    d.kill9();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(isc_engine::state::list(&d.state()).unwrap().len(), N + 1);
    // One ends while the Dock is down.
    let stop = d.cli(&["stop", ender]);
    assert!(stop.status.success(), "{}", String::from_utf8_lossy(&stop.stderr));
    let t = Instant::now();
    while isc_engine::state::get(&d.state(), ender).is_ok() {
        assert!(t.elapsed() < Duration::from_secs(10), "{ender} did not stop");
        std::thread::sleep(Duration::from_millis(20));
    }

    // A new Dock re-adopts the running ones and knows how the other ended.
    d.spawn();
    let after = d.ps();
    assert_eq!(after.len(), N + 1);
    for (name, pid) in before.iter().filter(|(n, _)| n != ender) {
        let r = after.iter().find(|r| &r["name"] == name).unwrap();
        assert_eq!(r["status"], "running", "{r}");
        assert_eq!(&r["monitor_pid"], pid, "{name} re-adopted with its monitor");
    }
    // (Its monitor may still be finishing: the Dock then waits for it and reads its record.)
    let e = d.wait_status(ender, "exited", Duration::from_secs(10));
    assert_eq!(e["last_exit"]["code"], 7, "{e}");
    // Re-adopted monitors are still watched: stopping one through the new Dock works.
    let r: Value =
        serde_json::from_slice(&d.ok(&["dock", "stop", "isc-many-0", "--json"]).stdout).unwrap();
    assert_eq!(r["status"], "exited");
    assert_eq!(r["last_exit"]["signal"], 15);
}

#[test]
fn a_crashing_service_backs_off_then_is_marked_crash_looping() {
    let d = DockProc::start(
        "dock-crash",
        "[restart]\ninitial_backoff_ms = 100\nmax_backoff_ms = 400\nhealthy_after_ms = 5000\ncrash_loop_after = 4\n",
    );
    let m = d.manifest("isc-crash", "echo crashing; exit 3", "restart = \"on-failure\"", "");
    d.ok(&["up", m.to_str().unwrap()]);
    let r = d.wait_status("isc-crash", "crash-loop", Duration::from_secs(20));
    assert_eq!(r["restarts"], 3, "{r}");
    assert_eq!(r["failures"], 4, "{r}");
    assert_eq!(r["last_exit"]["status"], 3, "{r}");
    assert!(r["message"].as_str().unwrap().contains("isc dock start isc-crash"), "{r}");
    // The back-off doubled, and each restart waited at least that long after the exit.
    let out = d.ok(&["dock", "events", "--json"]);
    let events: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|e: &Value| e["isc"] == "isc-crash")
        .collect();
    let delays: Vec<u64> = events
        .iter()
        .filter(|e| e["kind"] == "restarting")
        .map(|e| e["detail"]["after_ms"].as_u64().unwrap())
        .collect();
    assert_eq!(delays, vec![100, 200, 400]);
    for (i, e) in events.iter().enumerate().filter(|(_, e)| e["kind"] == "restarting") {
        let exited = events[..i].iter().rev().find(|e| e["kind"] == "exited").unwrap();
        let gap = e["time_ms"].as_u64().unwrap() - exited["time_ms"].as_u64().unwrap();
        assert!(gap >= e["detail"]["after_ms"].as_u64().unwrap(), "restart after {gap} ms");
    }
    assert!(events.iter().any(|e| e["kind"] == "crash-loop"));
    // Every run's output is in the log; the ISC stays down until started by hand.
    let logs = d.ok(&["dock", "logs", "isc-crash"]);
    assert_eq!(String::from_utf8_lossy(&logs.stdout).matches("crashing").count(), 4);
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(d.record("isc-crash")["restarts"], 3);
}

#[test]
fn only_root_and_group_members_may_act_and_refusals_are_audited() {
    // `nogroup` (gid 65534) exists on Debian; the socket is opened to everyone so that the
    // peer-credential check, not the file mode, is what refuses.
    let d = DockProc::start("dock-auth", "group = \"nogroup\"\nsocket_mode = 438\n");
    for p in [d.env.dir.clone(), d.state()] {
        fs::set_permissions(&p, fs::Permissions::from_mode(0o711)).unwrap();
    }
    let as_user = |gid: &str| {
        Command::new("setpriv")
            .args(["--reuid", "65534", "--regid", gid, "--clear-groups", ISC])
            .arg("--root")
            .arg(d.env.dir.join("root"))
            .arg("--state")
            .arg(d.state())
            .args(["dock", "ps", "--json"])
            .output()
            .unwrap()
    };
    let denied = as_user("12345");
    assert!(!denied.status.success());
    let err = String::from_utf8_lossy(&denied.stderr);
    assert!(err.contains("permission denied: uid 65534") && err.contains("nogroup"), "{err}");
    let member = as_user("65534");
    assert!(member.status.success(), "{}", String::from_utf8_lossy(&member.stderr));
    // Both requests are in the audit trail with the peer's uid and the result.
    let t = Instant::now();
    loop {
        let mut text = String::new();
        for e in fs::read_dir(d.env.dir.join("root/audit")).unwrap().flatten() {
            let mut f = fs::File::open(e.path()).unwrap();
            let _ = f.read_to_string(&mut text);
        }
        let hits: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("api_request") && l.contains("\"uid\":65534"))
            .collect();
        if hits.iter().any(|l| l.contains("\"status\":403"))
            && hits.iter().any(|l| l.contains("\"status\":200"))
        {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(5), "not audited: {hits:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn logs_rotate_and_follow_sees_every_line_across_rotations() {
    let d = DockProc::start("dock-logs", "[logs]\nmax_bytes = 4096\nkeep = 2\n");
    let m = d.manifest(
        "isc-logs",
        "i=0; while [ $i -lt 400 ]; do echo \"line $i padding-padding-padding\"; i=$((i+1)); sleep 0.005; done; exec sleep 1000",
        "",
        "",
    );
    d.ok(&["up", m.to_str().unwrap()]);
    let follower = d.follow(&["dock", "logs", "-f", "isc-logs"], |all| all.contains("line 399 "));
    let got = follower.finish(Duration::from_secs(30));
    let nums: Vec<u32> = got
        .lines()
        .filter_map(|l| l.strip_prefix("line ")?.split(' ').next()?.parse().ok())
        .collect();
    assert_eq!(
        nums.last(),
        Some(&399),
        "follow stopped early: {}",
        &got[got.len().saturating_sub(300)..]
    );
    assert!(nums.windows(2).all(|w| w[1] == w[0] + 1), "a gap in the followed output");
    let logs = d.env.dir.join("root/dock/logs/isc-logs");
    for f in ["output.log", "output.log.1", "output.log.2"] {
        let len = fs::metadata(logs.join(f)).unwrap().len();
        assert!(len <= 4096, "{f} is {len} bytes");
    }
    assert!(!logs.join("output.log.3").exists(), "only `keep` rotated files remain");
    // Without -f, what is kept ends with the last line.
    let tail = d.ok(&["dock", "logs", "isc-logs", "--tail", "1"]);
    assert!(String::from_utf8_lossy(&tail.stdout).starts_with("line 399 "));
    // The last verify result of a running ISC is in the Dock's metrics.
    let v = d.cli(&["verify", "isc-logs", "--json"]);
    let report: Value = serde_json::from_slice(&v.stdout).unwrap();
    let exposure = report["score"]["exposure"].as_f64().unwrap();
    let pass = u8::from(report["score"]["pass"].as_bool().unwrap());
    let metrics = String::from_utf8_lossy(&d.ok(&["dock", "metrics"]).stdout).into_owned();
    assert!(
        metrics.contains(&format!("isc_verify_exposure{{isc=\"isc-logs\"}} {exposure}\n"))
            && metrics.contains(&format!("isc_verify_pass{{isc=\"isc-logs\"}} {pass}\n")),
        "{metrics}"
    );
    // The top-level verbs are the Dock's.
    assert_eq!(d.ok(&["logs", "isc-logs", "--tail", "1"]).stdout, tail.stdout);
    let inspect: serde_json::Value =
        serde_json::from_slice(&d.ok(&["inspect", "isc-logs"]).stdout).unwrap();
    assert_eq!(inspect["record"]["name"], "isc-logs", "{inspect}");
}

#[test]
fn overcommit_is_refused_and_rm_leaves_nothing() {
    let d =
        DockProc::start("dock-guard", "[resources]\nmemory_total = \"100M\"\nreserve = \"20M\"\n");
    let a = d.manifest("guard-a", "exec sleep 1000", "", "");
    let b = d.manifest("guard-b", "exec sleep 1000", "", "");
    for m in [&a, &b] {
        let text = fs::read_to_string(m).unwrap().replace("memory = \"16M\"", "memory = \"48M\"");
        fs::write(m, text).unwrap();
    }
    d.ok(&["up", a.to_str().unwrap()]);
    let refused = d.cli(&["up", b.to_str().unwrap()]);
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("refusing to start `guard-b` (memory limit 48 MiB)")
            && err.contains("budget of 80 MiB"),
        "{err}"
    );
    assert_eq!(d.ps().len(), 1, "nothing is created for a refused start");
    // Once `a` is stopped, `b` fits.
    d.ok(&["dock", "stop", "guard-a"]);
    d.ok(&["up", b.to_str().unwrap()]);
    let cg = common::isc_cgroup_dir(&d.env, "memory", "guard-b");
    assert!(cg.exists(), "{}", cg.display());

    for n in ["guard-a", "guard-b"] {
        d.ok(&["dock", "rm", n]);
        assert!(!d.state().join("isc").join(n).exists());
        assert!(!common::isc_cgroup_dir(&d.env, "memory", n).exists());
    }
    assert!(d.ps().is_empty());
    for sub in ["iscs", "manifests", "exits", "logs"] {
        let dir = d.env.dir.join("root/dock").join(sub);
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 0, "{} not empty", dir.display());
    }
    common::assert_nothing_left(&d.env);
}

fn names(v: &Value, key: &str) -> Vec<String> {
    v[key].as_array().unwrap().iter().map(|n| n.as_str().unwrap().to_string()).collect()
}

#[test]
fn apply_makes_the_dock_match_a_directory() {
    let d = DockProc::start("dock-apply", "");
    let dir = d.env.dir.join("desired");
    fs::create_dir_all(&dir).unwrap();
    let declare = |name: &str, script: &str| {
        let m = d.manifest(name, script, "", "");
        fs::rename(&m, dir.join(format!("{name}.toml"))).unwrap();
    };
    declare("isc-ap-a", "exec sleep 1000");
    declare("isc-ap-b", "exec sleep 1000");
    let r = apply(&d, &dir);
    assert_eq!(names(&r, "created"), ["isc-ap-a", "isc-ap-b"], "{r}");
    assert!(d.ps().iter().all(|r| r["status"] == "running"));
    let r = apply(&d, &dir);
    assert_eq!(names(&r, "unchanged"), ["isc-ap-a", "isc-ap-b"], "nothing to do: {r}");

    // a no longer declared, b changed, c new.
    let b_before = d.record("isc-ap-b");
    fs::remove_file(dir.join("isc-ap-a.toml")).unwrap();
    declare("isc-ap-b", "echo v2; exec sleep 1000");
    declare("isc-ap-c", "exec sleep 1000");
    let r = apply(&d, &dir);
    assert_eq!(names(&r, "removed"), ["isc-ap-a"], "{r}");
    assert_eq!(names(&r, "replaced"), ["isc-ap-b"], "{r}");
    assert_eq!(names(&r, "created"), ["isc-ap-c"], "{r}");
    let ps = d.ps();
    let listed: Vec<&str> = ps.iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(listed, ["isc-ap-b", "isc-ap-c"]);
    let b = d.record("isc-ap-b");
    assert_eq!(b["status"], "running");
    assert_ne!(b["manifest_hash"], b_before["manifest_hash"]);
    assert_ne!(b["monitor_pid"], b_before["monitor_pid"], "b runs its new manifest");
    assert!(isc_engine::state::get(&d.state(), "isc-ap-a").is_err(), "a was stopped");

    // A declared ISC that is not running is started again.
    d.ok(&["dock", "stop", "isc-ap-c"]);
    let r = apply(&d, &dir);
    assert_eq!(names(&r, "started"), ["isc-ap-c"], "{r}");
    assert_eq!(names(&r, "unchanged"), ["isc-ap-b"], "{r}");

    // One bad manifest: nothing changes.
    fs::write(dir.join("isc-ap-bad.toml"), "name = \"isc-ap-bad\"\n[service]\n").unwrap();
    let out = d.cli(&["apply", dir.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nothing was changed") && err.contains("isc-ap-bad.toml"), "{err}");
    assert_eq!(d.ps().len(), 2);

    // An allow_from name outside the declared set: nothing changes either.
    fs::remove_file(dir.join("isc-ap-bad.toml")).unwrap();
    let peer = d.manifest(
        "isc-ap-peer",
        "exec sleep 1000",
        "",
        "[network]\nallow_from = [\"isc-ap-typo\"]",
    );
    fs::rename(&peer, dir.join("isc-ap-peer.toml")).unwrap();
    let out = d.cli(&["apply", dir.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("nothing was changed")
            && err.contains("ISC `isc-ap-peer`: allow_from names `isc-ap-typo`, which this set does not declare"),
        "{err}"
    );
    assert_eq!(d.ps().len(), 2);
    fs::remove_file(dir.join("isc-ap-peer.toml")).unwrap();

    // An empty directory removes everything.
    let empty = d.env.dir.join("empty");
    fs::create_dir_all(&empty).unwrap();
    let r = apply(&d, &empty);
    assert_eq!(names(&r, "removed"), ["isc-ap-b", "isc-ap-c"], "{r}");
    assert!(d.ps().is_empty());
    common::assert_nothing_left(&d.env);
}
