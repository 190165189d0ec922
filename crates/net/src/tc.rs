//! Bandwidth limits with tc(8): netlink-packet-route 0.34 has no tbf or police encoders
//! (STACK.md §1), so this shells out to `tc`, behind [`TcRunner`] for tests.
//!
//! Traffic *to* the ISC leaves the host end of the veth: a `tbf` root qdisc shapes it. Traffic
//! *from* the ISC enters the host end: an `ingress` qdisc with a catch-all `u32` filter
//! redirects it (`mirred`) to a per-ISC ifb device whose root `tbf` shapes it. (This kernel has
//! no `police` action nor `matchall` classifier; u32, mirred, ifb and tbf are built in.)
//! Deleting the links removes the qdiscs; the ifb link is deleted with the veth.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::policy::Bandwidth;

/// Errors of running tc.
#[derive(Debug, thiserror::Error)]
pub enum TcError {
    #[error("cannot run {path}: {source}; install iproute2")]
    Spawn { path: PathBuf, source: std::io::Error },
    #[error("{path} did not finish within {timeout:?}")]
    Timeout { path: PathBuf, timeout: Duration },
    #[error("`tc {args}` failed: {stderr}")]
    Failed { args: String, stderr: String },
}

/// Runs one tc command (a seam for unit tests).
pub trait TcRunner: Send + Sync {
    /// Run `tc ARGS…` in the caller's network namespace.
    fn run(&self, args: &[String]) -> Result<(), TcError>;
}

/// The real `tc`.
#[derive(Debug, Clone)]
pub struct TcCli {
    /// Absolute path.
    pub path: PathBuf,
    /// Kill after this long.
    pub timeout: Duration,
}

impl Default for TcCli {
    fn default() -> Self {
        let path = ["/usr/sbin/tc", "/sbin/tc", "/usr/bin/tc"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .unwrap_or_else(|| PathBuf::from("/usr/sbin/tc"));
        TcCli { path, timeout: Duration::from_secs(10) }
    }
}

impl TcRunner for TcCli {
    fn run(&self, args: &[String]) -> Result<(), TcError> {
        let mut child = Command::new(&self.path)
            .env_clear()
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| TcError::Spawn { path: self.path.clone(), source })?;
        let start = Instant::now();
        loop {
            match child.try_wait() {
                Ok(Some(status)) if status.success() => return Ok(()),
                Ok(Some(_)) => {
                    let out = child
                        .wait_with_output()
                        .map_err(|source| TcError::Spawn { path: self.path.clone(), source })?;
                    return Err(TcError::Failed {
                        args: args.join(" "),
                        stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
                    });
                }
                Ok(None) if start.elapsed() > self.timeout => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(TcError::Timeout {
                        path: self.path.clone(),
                        timeout: self.timeout,
                    });
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(2)),
                Err(source) => return Err(TcError::Spawn { path: self.path.clone(), source }),
            }
        }
    }
}

/// Bucket size for `rate` bits/s: 20 ms worth of bytes, at least a few full-size frames (a
/// bucket smaller than one MTU would stall the link; tc-tbf(8)).
fn burst_bytes(rate: u64) -> u64 {
    (rate / 8 / 50).max(4 * 1514)
}

/// Name of the ifb device that shapes traffic from the ISC behind host interface `dev`.
pub fn ifb_name(dev: &str) -> String {
    format!("ifb{}", dev.strip_prefix("isc").unwrap_or(dev))
}

/// The tc commands that apply `bw` to host interface `dev` (the ifb device, when `from_isc`
/// is set, must exist: see [`ifb_name`]).
pub fn bandwidth_commands(dev: &str, bw: &Bandwidth) -> Vec<Vec<String>> {
    let v = |xs: &[&str]| xs.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let mut cmds = Vec::new();
    if let Some(rate) = bw.to_isc {
        let (r, b) = (format!("{rate}bit"), format!("{}b", burst_bytes(rate)));
        cmds.push(v(&[
            "qdisc", "replace", "dev", dev, "root", "tbf", "rate", &r, "burst", &b, "latency",
            "50ms",
        ]));
    }
    if let Some(rate) = bw.from_isc {
        let ifb = ifb_name(dev);
        let (r, b) = (format!("{rate}bit"), format!("{}b", burst_bytes(rate)));
        cmds.push(v(&[
            "qdisc", "replace", "dev", &ifb, "root", "tbf", "rate", &r, "burst", &b, "latency",
            "50ms",
        ]));
        cmds.push(v(&["qdisc", "replace", "dev", dev, "handle", "ffff:", "ingress"]));
        cmds.push(v(&[
            "filter", "replace", "dev", dev, "parent", "ffff:", "protocol", "all", "prio", "1",
            "u32", "match", "u32", "0", "0", "action", "mirred", "egress", "redirect", "dev", &ifb,
        ]));
    }
    cmds
}

/// Apply `bw` to `dev` with `runner`.
pub fn apply_bandwidth(runner: &dyn TcRunner, dev: &str, bw: &Bandwidth) -> Result<(), TcError> {
    for cmd in bandwidth_commands(dev, bw) {
        runner.run(&cmd)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Recorder(Mutex<Vec<String>>);
    impl TcRunner for Recorder {
        fn run(&self, args: &[String]) -> Result<(), TcError> {
            self.0.lock().unwrap().push(args.join(" "));
            Ok(())
        }
    }

    #[test]
    fn both_directions_are_limited_separately() {
        let rec = Recorder::default();
        let bw = Bandwidth { to_isc: Some(8_000_000), from_isc: Some(2_000_000) };
        apply_bandwidth(&rec, "iscweb", &bw).unwrap();
        let cmds = rec.0.lock().unwrap().clone();
        assert_eq!(
            cmds[0],
            "qdisc replace dev iscweb root tbf rate 8000000bit burst 20000b latency 50ms"
        );
        assert_eq!(
            cmds[1],
            "qdisc replace dev ifbweb root tbf rate 2000000bit burst 6056b latency 50ms"
        );
        assert_eq!(cmds[2], "qdisc replace dev iscweb handle ffff: ingress");
        assert!(
            cmds[3].ends_with("u32 match u32 0 0 action mirred egress redirect dev ifbweb"),
            "{}",
            cmds[3]
        );
        assert!(bandwidth_commands("x", &Bandwidth::default()).is_empty());
    }
}
