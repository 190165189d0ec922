//! Network tests run inside a private network + mount namespace that stands in for the host
//! (`isc_testkit`); here, what those tests add: an `isc run` in the background and its waits.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[allow(unused_imports)] // each test binary uses its own part
pub use isc_testkit::{in_private_netns, netns_inode, HeldNetns};

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
