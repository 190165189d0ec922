//! Network tests run inside a private network + mount namespace that stands in for the host:
//! the test re-executes itself under `unshare --net --mount`, so the ISCs' links, addresses and
//! firewall rules never touch the machine's real network namespace.
#![allow(dead_code)]

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use isc_net::link::{in_netns, Rtnl};

const INNER: &str = "ISC_CLI_TEST_INNER_NETNS";
const OUTER_NS: &str = "ISC_CLI_TEST_OUTER_NETNS";

/// Inode of a network namespace file (e.g. `/proc/thread-self/ns/net`).
pub fn netns_inode(path: &str) -> u64 {
    std::fs::metadata(path).unwrap().ino()
}

/// Runs `body` (the test named `test`) inside a private network + mount namespace with `lo`
/// up and forwarding on, by re-executing this test binary for that one test.
pub fn in_private_netns(test: &str, body: impl FnOnce()) {
    if std::env::var_os(INNER).is_some() {
        let outer: u64 = std::env::var(OUTER_NS).unwrap().parse().unwrap();
        assert_ne!(
            netns_inode("/proc/thread-self/ns/net"),
            outer,
            "refusing to run network tests in the original namespace"
        );
        Rtnl::open().unwrap().set_up("lo").unwrap();
        isc_net::enable_forwarding().unwrap();
        body();
        return;
    }
    let out = Command::new("unshare")
        .args(["--net", "--mount", "--"])
        .arg(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--test-threads=1", "--include-ignored"])
        .env(INNER, "1")
        .env(OUTER_NS, netns_inode("/proc/thread-self/ns/net").to_string())
        .output()
        .expect("run unshare (util-linux)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "inner test failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("1 passed"), "inner test did not run:\n{stdout}\n{stderr}");
    // libtest prints "test NAME ... " without a newline before the body's first line.
    stdout.lines().filter_map(|l| l.find("BENCH").map(|i| &l[i..])).for_each(|l| println!("{l}"));
}

/// A network namespace held by a sleeping `unshare --net` child, with `lo` up: an "outside"
/// host the tests build links to.
pub struct HeldNetns {
    child: Child,
    pub file: File,
}

impl HeldNetns {
    pub fn new() -> HeldNetns {
        let me = netns_inode("/proc/thread-self/ns/net");
        let child = Command::new("unshare")
            .args(["--net", "--", "sleep", "600"])
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn unshare --net");
        let path = format!("/proc/{}/ns/net", child.id());
        let t = Instant::now();
        while netns_inode(&path) == me {
            assert!(t.elapsed() < Duration::from_secs(5), "child never entered its namespace");
            std::thread::sleep(Duration::from_millis(2));
        }
        let ns = HeldNetns { file: File::open(&path).unwrap(), child };
        ns.run(|| Rtnl::open()?.set_up("lo"));
        ns
    }

    /// Runs `f` on a thread inside this namespace.
    pub fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T, isc_net::LinkError> + Send + 'static,
    ) -> T {
        in_netns(&self.file, f).unwrap()
    }
}

impl Drop for HeldNetns {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An `isc run` in the background. On drop (a failed assertion) it gets SIGTERM, so it stops
/// the ISC and removes its network.
pub struct RunningIsc {
    pub name: String,
    pub child: Child,
}

impl Drop for RunningIsc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: kill(2) on our own child's pid, which we have not reaped yet.
            unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        }
        let _ = self.child.wait();
    }
}

/// Starts `isc … run MANIFEST ARGS` (commands from `isc`, which sets --root/--state) and
/// returns once `isc ps` lists `name`.
pub fn start_isc(
    isc: impl Fn() -> Command,
    manifest: &Path,
    args: &[&str],
    name: &str,
) -> RunningIsc {
    let child = isc()
        .arg("run")
        .arg(manifest)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let running = RunningIsc { name: name.into(), child };
    let t = Instant::now();
    loop {
        let out = isc().args(["ps", "--json"]).output().unwrap();
        let listed = serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout)
            .map(|v| v.iter().any(|s| s["name"] == name))
            .unwrap_or(false);
        if listed {
            return running;
        }
        assert!(t.elapsed() < Duration::from_secs(15), "ISC {name} did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `isc stop NAME`, then waits until its `isc run` has ended.
pub fn stop_isc(isc: impl Fn() -> Command, mut running: RunningIsc) {
    assert!(isc().args(["stop", &running.name]).status().unwrap().success());
    let t = Instant::now();
    while running.child.try_wait().unwrap().is_none() {
        assert!(t.elapsed() < Duration::from_secs(15), "ISC {} did not stop", running.name);
        std::thread::sleep(Duration::from_millis(20));
    }
}
