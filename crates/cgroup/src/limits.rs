//! What an ISC asks for (`[resources]`), and what the kernel reports back.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use serde::Serialize;

use crate::error::CgroupError;

/// CFS period used for `cpu_quota` on both versions (the kernel default, 100 ms).
pub(crate) const CPU_PERIOD_USEC: u64 = 100_000;
/// The kernel refuses quotas below 1 ms (`cpu.cfs_quota_us` / `cpu.max`).
pub(crate) const CPU_MIN_QUOTA_USEC: u64 = 1_000;

/// Resource limits of one ISC. `Default` is "no limit" except swap, which is 0: secrets must
/// not reach swap.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Limits {
    /// Memory limit in bytes (v1 `memory.limit_in_bytes`, v2 `memory.max`).
    pub memory: Option<u64>,
    /// Swap allowed on top of `memory`, in bytes (v1 memsw = memory + swap, v2 `memory.swap.max`).
    pub swap: u64,
    /// CPU bandwidth in cores (0.5 = half a core) over a 100 ms period.
    pub cpu_quota: Option<f64>,
    /// Relative CPU weight, 1..=10000, 100 is the default (v2 scale; mapped to v1 shares).
    pub cpu_weight: Option<u64>,
    /// Maximum number of tasks (processes and threads).
    pub pids: Option<u64>,
    /// CPUs the ISC may run on, in cpuset list syntax (`0-1,3`).
    pub cpuset: Option<String>,
    /// Relative IO weight, 1..=10000, 100 is the default (v2 scale; mapped to v1 blkio).
    pub io_weight: Option<u64>,
    /// Per-device bandwidth and IOPS limits.
    pub io_throttle: Vec<IoThrottle>,
}

/// Throttle of one block device; unset fields are unlimited.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IoThrottle {
    /// Device major number.
    pub major: u32,
    /// Device minor number.
    pub minor: u32,
    /// Read bytes per second.
    pub read_bps: Option<u64>,
    /// Write bytes per second.
    pub write_bps: Option<u64>,
    /// Read operations per second.
    pub read_iops: Option<u64>,
    /// Write operations per second.
    pub write_iops: Option<u64>,
}

impl IoThrottle {
    /// A throttle (all fields unset) for the block device node at `path`, e.g. `/dev/vda`.
    pub fn for_device(path: &Path) -> Result<IoThrottle, CgroupError> {
        let meta = std::fs::metadata(path).map_err(|e| CgroupError::InvalidLimit {
            key: "io_throttle",
            value: path.display().to_string(),
            reason: format!("cannot stat the device: {e}"),
        })?;
        if !meta.file_type().is_block_device() {
            return Err(CgroupError::InvalidLimit {
                key: "io_throttle",
                value: path.display().to_string(),
                reason: "not a block device".into(),
            });
        }
        let rdev = meta.rdev();
        Ok(IoThrottle {
            major: libc::major(rdev),
            minor: libc::minor(rdev),
            ..IoThrottle::default()
        })
    }
}

/// A snapshot of usage. `None` means the host does not report that value (controller absent)
/// or, for limits, that there is no limit.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// Total CPU time in µs.
    pub cpu_usage_usec: Option<u64>,
    /// User CPU time in µs.
    pub cpu_user_usec: Option<u64>,
    /// System CPU time in µs.
    pub cpu_system_usec: Option<u64>,
    /// Memory in use, bytes.
    pub memory_current: Option<u64>,
    /// Highest memory use seen, bytes.
    pub memory_peak: Option<u64>,
    /// Memory limit, bytes.
    pub memory_limit: Option<u64>,
    /// Tasks in the cgroup.
    pub pids_current: Option<u64>,
    /// Task limit.
    pub pids_limit: Option<u64>,
    /// Bytes read from block devices.
    pub io_read_bytes: Option<u64>,
    /// Bytes written to block devices.
    pub io_write_bytes: Option<u64>,
}

/// Limit events since creation. Counters of controllers the host lacks stay 0.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Events {
    /// Processes killed by the kernel OOM killer inside this cgroup.
    pub oom_kills: u64,
    /// Times usage hit the memory limit (v1 `memory.failcnt` + `memory.memsw.failcnt`, v2
    /// `memory.events` max).
    pub memory_max_hits: u64,
    /// Forks refused because of `pids.max`.
    pub pids_max_hits: u64,
    /// CFS periods that elapsed with the cgroup runnable.
    pub cpu_periods: u64,
    /// Periods in which the cgroup was throttled by its CPU quota.
    pub throttled_periods: u64,
    /// Total time throttled, µs.
    pub throttled_usec: u64,
}

impl Events {
    /// Human-readable lines for the exit record and audit log, one per kind of event that
    /// happened, e.g. "killed by the kernel OOM killer: memory limit 64 MiB".
    pub fn summary(&self, limits: &Limits) -> Vec<String> {
        let mut out = Vec::new();
        if self.oom_kills > 0 {
            let limit = limits
                .memory
                .map_or("no memory limit".to_string(), |m| format!("memory limit {} MiB", m >> 20));
            out.push(format!(
                "killed by the kernel OOM killer ({} kill(s)): {limit}",
                self.oom_kills
            ));
        }
        if self.pids_max_hits > 0 {
            let limit = limits.pids.map_or("an ancestor's limit".to_string(), |p| p.to_string());
            out.push(format!(
                "fork/clone refused {} time(s) at the pids limit ({limit})",
                self.pids_max_hits
            ));
        }
        if self.throttled_periods > 0 {
            let quota = limits
                .cpu_quota
                .map_or("an ancestor's quota".to_string(), |c| format!("cpu = {c}"));
            out.push(format!(
                "CPU throttled in {} of {} periods ({} ms in total) by {quota}",
                self.throttled_periods,
                self.cpu_periods,
                self.throttled_usec / 1000
            ));
        }
        out
    }
}

impl Limits {
    /// Check every value's range before anything touches the kernel.
    pub fn validate(&self) -> Result<(), CgroupError> {
        let bad = |key, value: String, reason: &str| CgroupError::InvalidLimit {
            key,
            value,
            reason: reason.to_string(),
        };
        if self.memory == Some(0) {
            return Err(bad(
                "memory",
                "0".into(),
                "must be at least 1 byte (see the capacity floor)",
            ));
        }
        if let Some(c) = self.cpu_quota {
            if !c.is_finite() || c <= 0.0 {
                return Err(bad("cpu", c.to_string(), "must be a positive number of cores"));
            }
            if cpu_quota_usec(c) < CPU_MIN_QUOTA_USEC {
                return Err(bad(
                    "cpu",
                    c.to_string(),
                    "must be at least 0.01 (1 ms per 100 ms period)",
                ));
            }
        }
        for (key, v) in [("cpu_weight", self.cpu_weight), ("io_weight", self.io_weight)] {
            if let Some(w) = v {
                if !(1..=10_000).contains(&w) {
                    return Err(bad(
                        key,
                        w.to_string(),
                        "must be in 1..=10000 (100 is the default)",
                    ));
                }
            }
        }
        if self.pids == Some(0) {
            return Err(bad("pids", "0".into(), "must be at least 1"));
        }
        if let Some(set) = &self.cpuset {
            crate::capacity::parse_cpu_list(set)
                .map_err(|reason| bad("cpuset", set.clone(), &reason))?;
        }
        for t in &self.io_throttle {
            if [t.read_bps, t.write_bps, t.read_iops, t.write_iops].iter().all(Option::is_none) {
                return Err(bad(
                    "io_throttle",
                    format!("{}:{}", t.major, t.minor),
                    "sets no rate; give read_bps, write_bps, read_iops or write_iops",
                ));
            }
        }
        Ok(())
    }
}

/// Quota in µs per [`CPU_PERIOD_USEC`] for `cores`.
pub(crate) fn cpu_quota_usec(cores: f64) -> u64 {
    (cores * CPU_PERIOD_USEC as f64).round() as u64
}

/// v2 weight (1..=10000, default 100) to v1 `cpu.shares` (2..=262144, default 1024):
/// proportional, so the defaults map onto each other (runc's range-to-range formula maps
/// weight 100 to 2597 shares, which silently favours containers over host processes).
pub(crate) fn cpu_weight_to_shares(weight: u64) -> u64 {
    (weight * 1024 / 100).clamp(2, 262_144)
}

/// v2 IO weight to v1 `blkio.weight` (CFQ: 10..=1000, default 500), proportional.
pub(crate) fn io_weight_to_blkio(weight: u64) -> u64 {
    (weight * 5).clamp(10, 1000)
}

/// v2 IO weight to v1 `blkio.bfq.weight` (BFQ: 1..=1000, default 100): same scale, capped.
pub(crate) fn io_weight_to_bfq(weight: u64) -> u64 {
    weight.clamp(1, 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_map_default_to_default() {
        assert_eq!(cpu_weight_to_shares(100), 1024);
        assert_eq!(cpu_weight_to_shares(1), 10);
        assert_eq!(cpu_weight_to_shares(10_000), 102_400);
        assert_eq!(io_weight_to_blkio(100), 500);
        assert_eq!(io_weight_to_blkio(1), 10);
        assert_eq!(io_weight_to_blkio(10_000), 1000);
        assert_eq!(io_weight_to_bfq(100), 100);
        assert_eq!(io_weight_to_bfq(5000), 1000);
    }

    #[test]
    fn validation_rejects_out_of_range_values() {
        assert!(Limits::default().validate().is_ok());
        let cases = [
            Limits { memory: Some(0), ..Default::default() },
            Limits { cpu_quota: Some(0.0), ..Default::default() },
            Limits { cpu_quota: Some(f64::NAN), ..Default::default() },
            Limits { cpu_quota: Some(0.001), ..Default::default() },
            Limits { cpu_weight: Some(0), ..Default::default() },
            Limits { io_weight: Some(10_001), ..Default::default() },
            Limits { pids: Some(0), ..Default::default() },
            Limits { cpuset: Some("0-x".into()), ..Default::default() },
            Limits { io_throttle: vec![IoThrottle::default()], ..Default::default() },
        ];
        for l in cases {
            assert!(l.validate().is_err(), "{l:?} accepted");
        }
    }

    #[test]
    fn event_summary_names_the_limits() {
        let limits = Limits {
            memory: Some(64 << 20),
            pids: Some(8),
            cpu_quota: Some(0.2),
            ..Default::default()
        };
        assert!(Events::default().summary(&limits).is_empty());
        let e = Events {
            oom_kills: 1,
            pids_max_hits: 3,
            cpu_periods: 20,
            throttled_periods: 18,
            throttled_usec: 1_500_000,
            ..Default::default()
        };
        assert_eq!(
            e.summary(&limits),
            [
                "killed by the kernel OOM killer (1 kill(s)): memory limit 64 MiB",
                "fork/clone refused 3 time(s) at the pids limit (8)",
                "CPU throttled in 18 of 20 periods (1500 ms in total) by cpu = 0.2",
            ]
        );
    }

    #[test]
    fn throttle_for_non_block_device_is_refused() {
        let err = IoThrottle::for_device(Path::new("/dev/null")).unwrap_err();
        assert!(err.to_string().contains("not a block device"), "{err}");
    }
}
