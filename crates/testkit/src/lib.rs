//! Test support shared by isc's crates (a dev-dependency only).
//!
//! Network tests run inside a private network + mount namespace that stands in for the host:
//! the test re-executes itself under `unshare --net --mount`, so the links, addresses and
//! firewall rules it makes never touch the machine's real network namespace. Further
//! namespaces — an ISC's, an "outside" host's — are held by sleeping `unshare --net` children.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use isc_net::link::{in_netns, Rtnl};

const INNER: &str = "ISC_TEST_INNER_NETNS";
const OUTER_NS: &str = "ISC_TEST_OUTER_NETNS";

/// Inode of a network namespace file (e.g. `/proc/thread-self/ns/net`).
pub fn netns_inode(path: &str) -> u64 {
    std::fs::metadata(path).unwrap().ino()
}

/// Runs `body` (the test named `test`) inside a private network + mount namespace with `lo`
/// up and forwarding on, by re-executing this test binary for that one test. Lines of the
/// inner run's output that contain `BENCH` are printed again by the outer run.
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
    // The outer run already chose to run this test (ignored ones included, if asked).
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

/// A network namespace held by a sleeping `unshare --net` child, with `lo` up.
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

    /// The pid of the child holding the namespace.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Runs `f` on a thread inside this namespace.
    pub fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T, isc_net::LinkError> + Send + 'static,
    ) -> T {
        in_netns(&self.file, f).unwrap()
    }
}

impl Default for HeldNetns {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for HeldNetns {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
