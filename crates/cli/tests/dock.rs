//! The Dock with real binaries: `isc dock serve` in a private --root/--state, ISCs started
//! through its API by `isc up`, supervision, re-adoption after `kill -9`, peer-credential
//! authorization, logs, the resource guard, and removal.

mod common;
mod netns;

use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{Env, ISC};
use netns::in_private_netns;
use serde_json::Value;

/// A Dock serving one Env; on drop it is killed and every monitor it left is stopped.
struct DockProc {
    env: Env,
    child: Option<Child>,
}

impl DockProc {
    fn start(tag: &str, config: &str) -> DockProc {
        let env = Env::new(tag);
        fs::create_dir_all(env.dir.join("root")).unwrap();
        fs::write(env.dir.join("root/dock.toml"), config).unwrap();
        let mut d = DockProc { env, child: None };
        d.spawn();
        d
    }

    fn spawn(&mut self) {
        let log = fs::File::create(self.env.dir.join("dock.stderr")).unwrap();
        let child = self
            .env
            .cmd()
            .args(["dock", "serve"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let t = Instant::now();
        while !self.cli(&["dock", "ps", "--json"]).status.success() {
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "the Dock did not come up: {}",
                fs::read_to_string(self.env.dir.join("dock.stderr")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    fn cli(&self, args: &[&str]) -> Output {
        self.env.cmd().args(args).output().unwrap()
    }

    fn ok(&self, args: &[&str]) -> Output {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "isc {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        out
    }

    fn ps(&self) -> Vec<Value> {
        serde_json::from_slice(&self.ok(&["dock", "ps", "--json"]).stdout).unwrap()
    }

    fn record(&self, name: &str) -> Value {
        self.ps().into_iter().find(|r| r["name"] == name).unwrap_or_else(|| panic!("no {name}"))
    }

    fn wait_status(&self, name: &str, status: &str, within: Duration) -> Value {
        let t = Instant::now();
        loop {
            let r = self.record(name);
            if r["status"] == status {
                return r;
            }
            assert!(t.elapsed() < within, "{name} never reached {status}: {r}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A manifest with an image of sh and sleep; `service` and `extra` are appended to their
    /// sections.
    fn manifest(&self, name: &str, script: &str, service: &str, extra: &str) -> PathBuf {
        let text = format!(
            r#"name = "{name}"
[service]
exec = ["/bin/sh", "-c", {script:?}]
env = {{ PATH = "/usr/bin:/bin" }}
{service}
[image]
source = "host"
paths = ["/bin/sh", "/usr/bin/sleep"]
[resources]
memory = "16M"
{extra}
"#
        );
        let path = self.env.dir.join(format!("{name}.toml"));
        fs::write(&path, text).unwrap();
        path
    }

    fn state(&self) -> PathBuf {
        self.env.dir.join("state")
    }
}

impl Drop for DockProc {
    fn drop(&mut self) {
        self.kill9();
        // The monitors outlive the Dock by design: stop them through their control sockets.
        let state = self.state();
        let monitors: Vec<i32> = isc_engine::state::list(&state)
            .unwrap_or_default()
            .iter()
            .map(|s| s.monitor_pid)
            .collect();
        for pid in &monitors {
            // SAFETY: SIGTERM to a monitor this test started (pid from its registry entry).
            unsafe { libc::kill(*pid, libc::SIGTERM) };
        }
        // Wait for the processes, not just their registry entries: a monitor releases the
        // image lease and the cgroup after unregistering, and the Env's removal needs both.
        let t = Instant::now();
        while monitors.iter().any(|p| std::path::Path::new(&format!("/proc/{p}")).exists())
            && t.elapsed() < Duration::from_secs(20)
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        // A SIGKILLed Dock leaves its socket; the Env's tree removal cannot open socket files.
        let _ = fs::remove_file(state.join("dock.sock"));
    }
}

fn uid_of(pid: i32) -> u32 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

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

/// Runs `isc apply DIR`; returns the report.
fn apply(d: &DockProc, dir: &std::path::Path) -> Value {
    serde_json::from_slice(&d.ok(&["apply", "--json", dir.to_str().unwrap()]).stdout).unwrap()
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

#[test]
fn a_failing_health_check_ends_the_run_as_a_failure() {
    in_private_netns("a_failing_health_check_ends_the_run_as_a_failure", || {
        let d = DockProc::start(
            "dock-health",
            "[restart]\ninitial_backoff_ms = 100\nhealthy_after_ms = 60000\n",
        );
        // Answers on 8080 for 4 s, then stops listening but keeps running, and exits 0 on
        // SIGTERM: only the health check can tell, and its verdict must count as a failure.
        let script = format!(
            "trap 'exit 0' TERM; {ISC} probe serve_tcp:8080:4 >/dev/null; while :; do sleep 0.05; done"
        );
        let text = format!(
            r#"name = "isc-health"
[service]
exec = ["/bin/sh", "-c", {script:?}]
restart = "on-failure"
[image]
source = "host"
paths = ["{ISC}", "/bin/sh", "/usr/bin/sleep"]
[network]
listen = [{{ port = 8080 }}]
[resources]
memory = "32M"
"#
        );
        let m = d.env.dir.join("isc-health.toml");
        fs::write(&m, text).unwrap();
        let health = d.env.dir.join("isc-health.health.json");
        fs::write(
            &health,
            r#"{"tcp": 8080, "interval_ms": 200, "timeout_ms": 300, "retries": 2, "start_period_ms": 800}"#,
        )
        .unwrap();
        // `isc up --health-tcp` would use the default timings; apply reads NAME.health.json.
        let dir = d.env.dir.join("desired");
        fs::create_dir_all(&dir).unwrap();
        fs::rename(&m, dir.join("isc-health.toml")).unwrap();
        fs::rename(&health, dir.join("isc-health.health.json")).unwrap();
        apply(&d, &dir);
        std::thread::sleep(Duration::from_millis(1600));
        let r = d.record("isc-health");
        assert_eq!(
            (r["status"].as_str(), r["health_failures"].as_u64()),
            (Some("running"), Some(0)),
            "{r}"
        );
        let t = Instant::now();
        let r = loop {
            let r = d.record("isc-health");
            if r["restarts"].as_u64() >= Some(1) && r["last_exit"]["run_id"] == 1 {
                break r;
            }
            assert!(t.elapsed() < Duration::from_secs(15), "never restarted: {r}");
            std::thread::sleep(Duration::from_millis(50));
        };
        assert_eq!(r["health_failures"], 1, "{r}");
        assert_eq!(r["last_exit"]["status"], 0, "the service exited 0 on SIGTERM: {r}");
        let reason = r["last_exit"]["reason"].as_str().unwrap_or_default();
        assert!(reason.contains("health check failed") && reason.contains(":8080"), "{r}");
        let metrics = String::from_utf8_lossy(&d.ok(&["dock", "metrics"]).stdout).into_owned();
        assert!(metrics.contains("isc_health_failures_total{isc=\"isc-health\"} 1"), "{metrics}");
        d.ok(&["dock", "rm", "isc-health"]);
        common::assert_nothing_left(&d.env);
    });
}

/// An ISC serving `/scratch/www` with busybox httpd on port 8080; `restart` is its policy.
fn httpd_manifest(d: &DockProc, name: &str) -> PathBuf {
    let script = "busybox mkdir -p /scratch/www && echo ok > /scratch/www/healthz && exec busybox httpd -f -p 8080 -h /scratch/www";
    let text = format!(
        r#"name = "{name}"
[service]
exec = ["{BUSYBOX}", "sh", "-c", {script:?}]
env = {{ PATH = "/usr/bin" }}
restart = "on-failure"
[image]
source = "host"
paths = ["{BUSYBOX}"]
[network]
listen = [{{ port = 8080 }}]
[filesystem]
tmpfs = [{{ path = "/scratch", size = "1M" }}]
[resources]
memory = "32M"
"#
    );
    let path = d.env.dir.join(format!("{name}.toml"));
    fs::write(&path, text).unwrap();
    path
}

const BUSYBOX: &str = "/usr/bin/busybox";

#[test]
fn http_health_checks_mark_healthy_and_end_a_failing_run() {
    in_private_netns("http_health_checks_mark_healthy_and_end_a_failing_run", || {
        let d = DockProc::start(
            "dock-http",
            "[restart]\ninitial_backoff_ms = 100\nhealthy_after_ms = 60000\n",
        );
        let timings = [
            "--health-interval-ms",
            "200",
            "--health-timeout-ms",
            "2000",
            "--health-retries",
            "2",
            "--health-start-period-ms",
            "300",
        ];
        let good = httpd_manifest(&d, "isc-http-ok");
        let text = fs::read_to_string(&good).unwrap();
        let text = text.replace("[network]\n", "[network]\nallow_from = [\"isc-nobody\"]\n");
        fs::write(&good, text).unwrap();
        let bad = httpd_manifest(&d, "isc-http-404");
        for (m, path) in [(&good, "/healthz"), (&bad, "/missing")] {
            let mut args = vec!["up", m.to_str().unwrap(), "--health-http", "8080"];
            args.extend(["--health-path", path]);
            args.extend(timings);
            d.ok(&args);
        }
        // `up` does not refuse an allow_from name that is not on the Dock, but says so.
        let r = d.record("isc-http-ok");
        assert_eq!(
            r["message"],
            "allow_from names `isc-nobody`, not on this Dock: nothing from there is let in until an ISC of that name runs here",
            "{r}"
        );
        // The server answers 200 on /healthz: healthy, in ps, inspect, metrics and events.
        let t = Instant::now();
        let r = loop {
            let r = d.record("isc-http-ok");
            if r["health_state"] == "healthy" {
                break r;
            }
            assert!(t.elapsed() < Duration::from_secs(15), "never healthy: {r}");
            std::thread::sleep(Duration::from_millis(50));
        };
        assert_eq!(r["health"]["http"], 8080, "{r}");
        assert_eq!(r["health"]["path"], "/healthz", "{r}");
        let table = String::from_utf8_lossy(&d.ok(&["dock", "ps"]).stdout).into_owned();
        let line = table.lines().find(|l| l.starts_with("isc-http-ok ")).unwrap();
        assert_eq!(
            line.split_whitespace().take(3).collect::<Vec<_>>(),
            ["isc-http-ok", "running", "healthy"],
            "{table}"
        );
        let inspect: Value =
            serde_json::from_slice(&d.ok(&["dock", "inspect", "isc-http-ok"]).stdout).unwrap();
        assert_eq!(inspect["record"]["health_state"], "healthy");

        // /missing is a 404: two failed checks in a row end the run as a failure, and the
        // on-failure policy restarts it.
        let t = Instant::now();
        let r = loop {
            let r = d.record("isc-http-404");
            if r["restarts"].as_u64() >= Some(1) && r["last_exit"]["run_id"] == 1 {
                break r;
            }
            assert!(t.elapsed() < Duration::from_secs(15), "never restarted: {r}");
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(r["health_failures"].as_u64() >= Some(1), "{r}");
        let reason = r["last_exit"]["reason"].as_str().unwrap_or_default();
        assert!(
            reason.starts_with("health check failed: GET http://")
                && reason.ends_with(":8080/missing: status 404 (wanted 2xx or 3xx)"),
            "{r}"
        );
        // The healthy one was never touched.
        let ok = d.record("isc-http-ok");
        assert_eq!(
            (ok["restarts"].as_u64(), ok["health_failures"].as_u64()),
            (Some(0), Some(0)),
            "{ok}"
        );
        let metrics = String::from_utf8_lossy(&d.ok(&["dock", "metrics"]).stdout).into_owned();
        assert!(metrics.contains("isc_healthy{isc=\"isc-http-ok\"} 1"), "{metrics}");
        let kinds = |isc: &str| -> Vec<String> {
            events_of(&d, isc).iter().map(|e| e["kind"].as_str().unwrap().to_string()).collect()
        };
        assert_eq!(kinds("isc-http-ok"), ["created", "started", "warning", "healthy"]);
        // Events are published just after the record is saved: wait for them.
        let t = Instant::now();
        let bad_kinds = loop {
            let k = kinds("isc-http-404");
            if k.len() >= 5 || t.elapsed() > Duration::from_secs(10) {
                break k;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        assert_eq!(bad_kinds[..5], ["created", "started", "unhealthy", "exited", "restarting"]);
        for n in ["isc-http-ok", "isc-http-404"] {
            d.ok(&["dock", "rm", n]);
        }
        common::assert_nothing_left(&d.env);
    });
}

fn now_us() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros() as u64
}

#[test]
fn logs_have_timestamps_and_since_selects_by_them() {
    let d = DockProc::start("dock-since", "");
    let m = d.manifest("isc-since", "echo before; sleep 1.5; echo after; exec sleep 1000", "", "");
    let t_up = now_us();
    d.ok(&["up", m.to_str().unwrap()]);
    let logs = |args: &[&str]| -> String {
        let mut a = vec!["dock", "logs", "isc-since"];
        a.extend(args);
        String::from_utf8(d.ok(&a).stdout).unwrap()
    };
    let t = Instant::now();
    while logs(&[]) != "before\nafter\n" {
        assert!(t.elapsed() < Duration::from_secs(15), "output: {:?}", logs(&[]));
        std::thread::sleep(Duration::from_millis(50));
    }
    let t_seen = now_us();
    // -t: each line behind the time the monitor read it (UTC, µs).
    let stamped = logs(&["--timestamps"]);
    let lines: Vec<(u64, &str)> = stamped
        .lines()
        .map(|l| {
            let (ts, text) = l.split_once(' ').unwrap();
            assert_eq!((ts.len(), &ts[ts.len() - 1..]), (27, "Z"), "{l}");
            (isc_dock::logs::parse_rfc3339(ts).unwrap(), text)
        })
        .collect();
    assert_eq!(lines.iter().map(|l| l.1).collect::<Vec<_>>(), ["before", "after"]);
    let (t_before, t_after) = (lines[0].0, lines[1].0);
    assert!(t_up <= t_before && t_before < t_after && t_after <= t_seen, "{stamped}");

    // --since between the two lines, as RFC 3339 (also with an offset) and as Unix seconds.
    let mid = (t_before + t_after) / 2;
    let mid_utc = isc_engine::logfile::format_timestamp(mid);
    assert_eq!(logs(&["--since", &mid_utc]), "after\n");
    let mid_plus_one = {
        // The same instant written in UTC+01:00.
        let shifted = isc_engine::logfile::format_timestamp(mid + 3_600_000_000);
        format!("{}+01:00", &shifted[..26])
    };
    assert_eq!(logs(&["--since", &mid_plus_one]), "after\n");
    assert_eq!(logs(&["--since", &(t_after / 1_000_000).to_string()]), "after\n");
    assert_eq!(logs(&["--since", "10m"]), "before\nafter\n");
    assert_eq!(logs(&["--since", "2099-01-01T00:00:00Z"]), "");
    assert_eq!(logs(&["--since", "10m", "--tail", "1"]), "after\n");
    assert_eq!(
        logs(&["--timestamps", "--tail", "1"]),
        format!("{}\n", stamped.lines().nth(1).unwrap())
    );
    let bad = d.cli(&["dock", "logs", "isc-since", "--since", "yesterday"]);
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("`yesterday` is not a time; fix:"), "{err}");

    // -f with --since: the old line is left out, the following starts at once.
    let follower = d.follow(&["dock", "logs", "-f", "isc-since", "--since", &mid_utc], |all| {
        all.ends_with('\n')
    });
    assert_eq!(follower.finish(Duration::from_secs(15)), "after\n");
    d.ok(&["dock", "rm", "isc-since"]);
}

/// A following command (`logs -f`, `events -f`) whose output a thread reads until `done`.
struct Follower {
    child: Child,
    reader: std::thread::JoinHandle<String>,
}

impl DockProc {
    fn follow(&self, args: &[&str], done: fn(&str) -> bool) -> Follower {
        let mut child = self.env.cmd().args(args).stdout(Stdio::piped()).spawn().unwrap();
        let mut stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut all = String::new();
            let mut buf = [0u8; 4096];
            while !done(&all) {
                match stdout.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => all.push_str(&String::from_utf8_lossy(&buf[..n])),
                }
            }
            all
        });
        Follower { child, reader }
    }
}

impl Follower {
    /// What was read once `done` held (or `limit` passed); the command is killed.
    fn finish(mut self, limit: Duration) -> String {
        let t = Instant::now();
        while !self.reader.is_finished() && t.elapsed() < limit {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        self.reader.join().unwrap()
    }
}

/// `isc dock events --json [--isc NAME]`, parsed.
fn events_of(d: &DockProc, isc: &str) -> Vec<Value> {
    let out = d.ok(&["dock", "events", "--json", "--isc", isc]);
    String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn stats_of(d: &DockProc, isc: &str) -> Value {
    serde_json::from_slice(&d.ok(&["dock", "stats", isc, "--json"]).stdout).unwrap()
}

#[test]
fn stats_and_events_through_the_dock() {
    in_private_netns("stats_and_events_through_the_dock", || {
        let d = DockProc::start("dock-stats", "");
        let web = httpd_manifest(&d, "isc-stats-web");
        // A child of the service allocates past the limit: the kernel kills it, the service lives.
        let oom = d.manifest(
            "isc-oom",
            &format!("{ISC} probe alloc:256 >/dev/null; echo survived; exec sleep 1000"),
            "",
            "",
        );
        let text = fs::read_to_string(&oom)
            .unwrap()
            .replace("paths = [", &format!("paths = [\"{ISC}\", "))
            .replace("memory = \"16M\"", "memory = \"32M\"");
        fs::write(&oom, text).unwrap();
        d.ok(&["up", web.to_str().unwrap(), oom.to_str().unwrap()]);

        // Traffic to the web ISC shows in its network counters (from the ISC's side).
        let ip = isc_dock::health::isc_address(&d.state(), "isc-stats-web").unwrap();
        let t = Instant::now();
        let answer = loop {
            use std::io::Write;
            let got = std::net::TcpStream::connect((ip, 8080)).and_then(|mut s| {
                s.set_read_timeout(Some(Duration::from_secs(5)))?;
                s.write_all(b"GET /healthz HTTP/1.0\r\n\r\n")?;
                let mut a = String::new();
                s.read_to_string(&mut a)?;
                Ok(a)
            });
            match got {
                Ok(a) => break a,
                Err(e) => {
                    assert!(t.elapsed() < Duration::from_secs(10), "httpd never answered: {e}")
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(answer.starts_with("HTTP/1.1 200 OK") && answer.ends_with("ok\n"), "{answer}");
        let s = stats_of(&d, "isc-stats-web");
        assert_eq!(
            (s["name"].as_str(), s["status"].as_str()),
            (Some("isc-stats-web"), Some("running")),
            "{s}"
        );
        let u = &s["usage"];
        assert_eq!(u["memory_limit"], 32 << 20, "{s}");
        assert!(
            u["memory_current"].as_u64() > Some(0) && u["pids_current"].as_u64() >= Some(1),
            "{s}"
        );
        assert!(u["cpu_usage_usec"].as_u64() > Some(0), "{s}");
        let net = &s["net"];
        assert!(net["rx_bytes"].as_u64() >= Some(24) && net["tx_bytes"].as_u64() > Some(0), "{s}");
        assert!(net["rx_packets"].as_u64() >= Some(1), "{s}");

        // The OOM kill inside isc-oom is an event; the ISC keeps running.
        let t = Instant::now();
        let oom_event = loop {
            if let Some(e) = events_of(&d, "isc-oom").into_iter().find(|e| e["kind"] == "oom") {
                break e;
            }
            assert!(
                t.elapsed() < Duration::from_secs(15),
                "no oom event: {:?}",
                events_of(&d, "isc-oom")
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        assert_eq!(oom_event["detail"]["oom_kills"], 1, "{oom_event}");
        assert_eq!(oom_event["detail"]["new"], 1, "{oom_event}");
        let kinds: Vec<Value> =
            events_of(&d, "isc-oom").iter().map(|e| e["kind"].clone()).collect();
        assert_eq!(kinds, ["created", "started", "oom"], "only isc-oom's events");
        assert_eq!(d.record("isc-oom")["status"], "running");
        assert_eq!(stats_of(&d, "isc-oom")["limit_events"]["oom_kills"], 1);
        let t = Instant::now();
        while !String::from_utf8_lossy(&d.ok(&["dock", "logs", "isc-oom"]).stdout)
            .contains("survived")
        {
            assert!(t.elapsed() < Duration::from_secs(10), "the service did not go on");
            std::thread::sleep(Duration::from_millis(50));
        }

        // All ISCs at once, as JSON and as a table; the same figures in the metrics.
        let all: Vec<Value> =
            serde_json::from_slice(&d.ok(&["dock", "stats", "--json"]).stdout).unwrap();
        let names: Vec<&str> = all.iter().map(|s| s["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["isc-oom", "isc-stats-web"]);
        assert!(all[0]["net"].is_null(), "isc-oom has no network: {}", all[0]);
        let table = String::from_utf8_lossy(&d.ok(&["dock", "stats"]).stdout).into_owned();
        assert!(
            table.starts_with("NAME ")
                && table.contains("isc-stats-web")
                && table.contains("32.0 MiB"),
            "{table}"
        );
        let metrics = String::from_utf8_lossy(&d.ok(&["dock", "metrics"]).stdout).into_owned();
        assert!(metrics.contains("isc_oom_kills{isc=\"isc-oom\"} 1"), "{metrics}");
        assert!(
            metrics.contains("isc_network_transmit_bytes_total{isc=\"isc-stats-web\"} "),
            "{metrics}"
        );

        // events -f streams what happens from now on.
        let follower = d
            .follow(&["dock", "events", "-f", "--json", "--isc", "isc-stats-web"], |all| {
                all.contains("\"kind\":\"exited\"")
            });
        // The follower has its head (created, started) once it is subscribed.
        std::thread::sleep(Duration::from_millis(300));
        d.ok(&["dock", "stop", "isc-stats-web"]);
        let streamed: Vec<Value> = follower
            .finish(Duration::from_secs(15))
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let kinds: Vec<&str> = streamed.iter().map(|e| e["kind"].as_str().unwrap()).collect();
        assert_eq!(kinds, ["created", "started", "stopping", "exited"]);
        let stopped = stats_of(&d, "isc-stats-web");
        assert_eq!(stopped["status"], "exited");
        assert!(stopped["usage"].is_null() && stopped["net"].is_null(), "{stopped}");
        let missing = d.cli(&["dock", "stats", "isc-nope"]);
        assert!(String::from_utf8_lossy(&missing.stderr).contains("no ISC named `isc-nope`"));
        for n in ["isc-oom", "isc-stats-web"] {
            d.ok(&["dock", "rm", n]);
        }
        common::assert_nothing_left(&d.env);
    });
}
