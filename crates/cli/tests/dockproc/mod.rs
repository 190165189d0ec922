//! The Dock test harness shared by `dock.rs` and `dock_observe.rs`: a Dock serving one
//! private --root/--state, following commands, and the busybox httpd manifest.
#![allow(dead_code)]

use std::fs;
use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::Env;
use serde_json::Value;

/// A Dock serving one Env; on drop it is killed and every monitor it left is stopped.
pub struct DockProc {
    pub env: Env,
    pub child: Option<Child>,
}

impl DockProc {
    pub fn start(tag: &str, config: &str) -> DockProc {
        let env = Env::new(tag);
        fs::create_dir_all(env.dir.join("root")).unwrap();
        fs::write(env.dir.join("root/dock.toml"), config).unwrap();
        let mut d = DockProc { env, child: None };
        d.spawn();
        d
    }

    pub fn spawn(&mut self) {
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

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    pub fn cli(&self, args: &[&str]) -> Output {
        self.env.cmd().args(args).output().unwrap()
    }

    pub fn ok(&self, args: &[&str]) -> Output {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "isc {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        out
    }

    pub fn ps(&self) -> Vec<Value> {
        serde_json::from_slice(&self.ok(&["dock", "ps", "--json"]).stdout).unwrap()
    }

    pub fn record(&self, name: &str) -> Value {
        self.ps().into_iter().find(|r| r["name"] == name).unwrap_or_else(|| panic!("no {name}"))
    }

    pub fn wait_status(&self, name: &str, status: &str, within: Duration) -> Value {
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

    /// The record of `name` once its first run has ended and it was restarted.
    pub fn wait_restarted(&self, name: &str, within: Duration) -> Value {
        let t = Instant::now();
        loop {
            let r = self.record(name);
            if r["restarts"].as_u64() >= Some(1) && r["last_exit"]["run_id"] == 1 {
                return r;
            }
            assert!(t.elapsed() < within, "{name} never restarted: {r}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A manifest with an image of sh and sleep; `service` and `extra` are appended to their
    /// sections.
    pub fn manifest(&self, name: &str, script: &str, service: &str, extra: &str) -> PathBuf {
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

    pub fn state(&self) -> PathBuf {
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

pub fn uid_of(pid: i32) -> u32 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// A following command (`logs -f`, `events -f`) whose output a thread reads until `done`.
pub struct Follower {
    pub child: Child,
    pub reader: std::thread::JoinHandle<String>,
}

impl DockProc {
    pub fn follow(&self, args: &[&str], done: fn(&str) -> bool) -> Follower {
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
    pub fn finish(mut self, limit: Duration) -> String {
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
pub fn events_of(d: &DockProc, isc: &str) -> Vec<Value> {
    let out = d.ok(&["dock", "events", "--json", "--isc", isc]);
    String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

pub fn stats_of(d: &DockProc, isc: &str) -> Value {
    serde_json::from_slice(&d.ok(&["dock", "stats", isc, "--json"]).stdout).unwrap()
}

/// An ISC serving `/scratch/www` with busybox httpd on port 8080; `restart` is its policy.
pub fn httpd_manifest(d: &DockProc, name: &str) -> PathBuf {
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

pub const BUSYBOX: &str = "/usr/bin/busybox";

/// Runs `isc apply DIR --json`; returns the report.
pub fn apply(d: &DockProc, dir: &std::path::Path) -> Value {
    serde_json::from_slice(&d.ok(&["apply", "--json", dir.to_str().unwrap()]).stdout).unwrap()
}
