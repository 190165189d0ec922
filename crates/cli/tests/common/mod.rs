//! Shared helpers for the integration tests: a private --root/--state pair per test, manifests
//! whose image holds the `isc` binary (so `isc probe` can run inside), and leak assertions.
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use isc_engine::probe::ProbeOutcome;
use serde_json::Value;

pub const ISC: &str = env!("CARGO_BIN_EXE_isc");
pub const EPERM: i32 = 1;
pub const EACCES: i32 = 13;
pub const EROFS: i32 = 30;

/// A private --root/--state pair, removed (image store included) on drop.
pub struct Env {
    pub dir: PathBuf,
}

impl Env {
    pub fn new(tag: &str) -> Env {
        let dir = std::env::temp_dir().join(format!("isc-test-{tag}-{}", std::process::id()));
        let _ = isc_image::immutable::remove_tree(&dir);
        fs::create_dir_all(&dir).unwrap();
        Env { dir }
    }
    pub fn cmd(&self) -> Command {
        let mut c = Command::new(ISC);
        c.arg("--root").arg(self.dir.join("root")).arg("--state").arg(self.dir.join("state"));
        c.arg("--log").arg("warn");
        c
    }
    /// Writes a manifest whose image holds the isc binary, sh and sleep.
    pub fn manifest(&self, name: &str, exec: &[&str], extra: &str) -> PathBuf {
        let exec: Vec<String> = exec.iter().map(|e| format!("{e:?}")).collect();
        let text = format!(
            r#"name = "{name}"
[service]
exec = [{exec}]
{extra_service}
[image]
source = "host"
paths = ["{ISC}", "/bin/sh", "/usr/bin/sleep"]
[filesystem]
tmpfs = [{{ path = "/scratch", size = "4M" }}]
{extra}
"#,
            exec = exec.join(", "),
            extra_service = "",
        );
        let path = self.dir.join(format!("{name}.toml"));
        fs::write(&path, text).unwrap();
        path
    }
    pub fn run(&self, manifest: &Path, args: &[&str]) -> Output {
        self.cmd().arg("run").arg(manifest).args(args).output().unwrap()
    }
    pub fn spawn(&self, manifest: &Path) -> Child {
        self.cmd()
            .arg("run")
            .arg(manifest)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }
    /// Runs `isc probe NAMES` as the service of a fresh ISC and returns the outcomes by name.
    pub fn probe(&self, name: &str, probes: &[&str], weaken: &[&str]) -> Vec<ProbeOutcome> {
        self.probe_with(name, probes, "", weaken)
    }
    /// A manifest whose service runs `isc probe PROBES`; `extra` is appended (e.g. `[resources]`).
    pub fn probe_manifest(&self, name: &str, probes: &[&str], extra: &str) -> PathBuf {
        let mut exec = vec![ISC, "probe"];
        exec.extend_from_slice(probes);
        self.manifest(name, &exec, extra)
    }
    pub fn probe_with(
        &self,
        name: &str,
        probes: &[&str],
        extra: &str,
        weaken: &[&str],
    ) -> Vec<ProbeOutcome> {
        let m = self.probe_manifest(name, probes, extra);
        let mut args = vec![];
        let w = weaken.join(",");
        if !weaken.is_empty() {
            args.extend(["--unsafe-weaken", w.as_str()]);
        }
        let out = self.run(&m, &args);
        assert!(out.status.success(), "isc run failed: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!("probe output {:?}: {e}", String::from_utf8_lossy(&out.stdout))
        })
    }
    pub fn ps(&self) -> Vec<Value> {
        let out = self.cmd().args(["ps", "--json"]).output().unwrap();
        serde_json::from_slice::<Vec<Value>>(&out.stdout).unwrap()
    }
    pub fn wait_running(&self, name: &str) -> Value {
        let t = Instant::now();
        loop {
            if let Some(s) = self.ps().into_iter().find(|s| s["name"] == name) {
                return s;
            }
            assert!(t.elapsed() < Duration::from_secs(10), "ISC {name} did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = isc_image::immutable::remove_tree(&self.dir);
    }
}

pub fn by_name<'a>(outs: &'a [ProbeOutcome], name: &str) -> &'a ProbeOutcome {
    outs.iter().find(|o| o.name == name).unwrap_or_else(|| panic!("no probe {name}"))
}

pub fn host_ns(kind: &str) -> String {
    fs::read_link(format!("/proc/self/ns/{kind}")).unwrap().to_string_lossy().into_owned()
}

/// The cgroup directory of ISC `name` in v1 controller `ctrl`, or in the v2 hierarchy for
/// `"unified"` (below this process's own cgroup).
pub fn isc_cgroup_dir(env: &Env, ctrl: &str, name: &str) -> PathBuf {
    let own = fs::read_to_string("/proc/self/cgroup").unwrap();
    let rel = own
        .lines()
        .find_map(|l| {
            let mut it = l.splitn(3, ':');
            let (_, c, p) = (it.next()?, it.next()?, it.next()?);
            let matches =
                if ctrl == "unified" { c.is_empty() } else { c.split(',').any(|x| x == ctrl) };
            matches.then(|| p.trim_start_matches('/').to_string())
        })
        .unwrap_or_default();
    Path::new("/sys/fs/cgroup")
        .join(ctrl)
        .join(rel)
        .join(isc_cli_cgroup_name(&env.dir.join("state"), name))
}

/// The JSON exit record `isc run --json` prints last on stderr.
pub fn exit_record(out: &Output) -> Value {
    let err = String::from_utf8_lossy(&out.stderr);
    let line = err
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no exit record in {err}"));
    serde_json::from_str(line).unwrap()
}

/// Cgroups, mounts and registry entries this Env could have left behind.
pub fn assert_nothing_left(env: &Env) {
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let ours = env.dir.to_string_lossy().into_owned();
    assert!(!mounts.contains(&ours), "mounts left under {ours}:\n{mounts}");
    let isc_dir = env.dir.join("state/isc");
    let entries: Vec<_> = fs::read_dir(&isc_dir).map(|r| r.flatten().collect()).unwrap_or_default();
    assert!(entries.is_empty(), "registry entries left: {entries:?}");
    let prefix = isc_cli_cgroup_name(&env.dir.join("state"), "");
    for ctrl in ["memory", "pids", "cpu", "blkio", "freezer", "unified"] {
        let base = Path::new("/sys/fs/cgroup").join(ctrl);
        let own = fs::read_to_string("/proc/self/cgroup").unwrap();
        let rel = own
            .lines()
            .find_map(|l| {
                let mut it = l.splitn(3, ':');
                let (_, c, p) = (it.next()?, it.next()?, it.next()?);
                let matches =
                    if ctrl == "unified" { c.is_empty() } else { c.split(',').any(|x| x == ctrl) };
                matches.then(|| p.trim_start_matches('/').to_string())
            })
            .unwrap_or_default();
        let dir = base.join(rel);
        let left: Vec<String> = fs::read_dir(&dir)
            .map(|r| r.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        let ours: Vec<&String> = left.iter().filter(|n| n.starts_with(&prefix)).collect();
        assert!(ours.is_empty(), "cgroups left in {}: {ours:?}", dir.display());
    }
}

/// Mirrors `launch::cgroup_name` (the binary's private function): `isc-<12 hex of the state
/// dir's BLAKE3>.<name>`.
pub fn isc_cli_cgroup_name(state: &Path, name: &str) -> String {
    let h = blake3::hash(state.as_os_str().as_encoded_bytes()).to_hex();
    format!("isc-{}.{name}", &h[..12])
}

/// The executable `pid` runs (`/proc/PID/exe`), or "" once it is gone.
pub fn exe_of(pid: i64) -> String {
    fs::read_link(format!("/proc/{pid}/exe"))
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Waits up to `secs` for `pid` to run `want` (e.g. a hibernating PID 1's or monitor's memfd).
pub fn wait_exe(pid: i64, want: &str, secs: u64) {
    let t = Instant::now();
    while exe_of(pid) != want {
        assert!(
            t.elapsed() < Duration::from_secs(secs),
            "{pid} runs {:?}, not {want:?}, after {secs} s",
            exe_of(pid)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The first number of a `/proc/PID/status` line (`RssAnon:`, `Threads:`, …).
pub fn status_field(pid: i64, field: &str) -> u64 {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = s.lines().find(|l| l.starts_with(field)).unwrap_or_else(|| panic!("{field}"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// `isc run --json MANIFEST` with the service's output and the exit record captured.
pub fn run_captured(env: &Env, manifest: &Path) -> Child {
    env.cmd()
        .args(["run", "--json"])
        .arg(manifest)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Stops (or kills) ISC `.1`, run by `.2`, if the test fails first: nothing may be left running.
pub struct Guard<'a>(pub &'a Env, pub &'a str, pub Option<Child>);

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        if let Some(mut c) = self.2.take() {
            if c.try_wait().ok().flatten().is_none() {
                let _ = self.0.cmd().args(["stop", self.1]).output();
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}
