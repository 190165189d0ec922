//! Network tests run inside a private network + mount namespace that stands in for the host:
//! the test re-executes itself under `unshare --net --mount`, so the ISCs' links, addresses and
//! firewall rules never touch the machine's real network namespace.
#![allow(dead_code)]

use std::os::unix::fs::MetadataExt;
use std::process::Command;

use isc_net::link::Rtnl;

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
