//! The cgroup v1 backend: one directory per controller hierarchy (co-mounted controllers
//! share one), limits in the per-controller files, freezer for race-free kill.
//! File semantics: Documentation/admin-guide/cgroup-v1/{memory,cpusets,freezer-subsystem,
//! pids,blkio-controller}.rst and sched-bwc.rst.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::error::CgroupError;
use crate::fsops::{self, CgroupFs};
use crate::layout::Controller;
use crate::limits::{self, Events, Limits, Stats};

/// v1 reports "no limit" as PAGE_COUNTER_MAX pages, a value near i64::MAX rounded to pages.
const V1_UNLIMITED_FLOOR: u64 = 1 << 62;

/// The v1 part of one ISC cgroup.
#[derive(Debug)]
pub(crate) struct V1Part {
    /// Directory per controller; co-mounted controllers map to the same path.
    pub dirs: BTreeMap<Controller, PathBuf>,
}

impl V1Part {
    pub fn dir(&self, c: Controller) -> Option<&Path> {
        self.dirs.get(&c).map(PathBuf::as_path)
    }

    /// Distinct directories, in controller order.
    pub fn unique_dirs(&self) -> Vec<PathBuf> {
        let mut out: Vec<PathBuf> = Vec::new();
        for d in self.dirs.values() {
            if !out.contains(d) {
                out.push(d.clone());
            }
        }
        out
    }

    /// Write every limit this part holds a controller for. The cpuset must already be
    /// initialised ([`init_cpuset`]).
    pub fn apply_limits(
        &self,
        fs: &dyn CgroupFs,
        l: &Limits,
        warnings: &mut Vec<String>,
    ) -> Result<(), CgroupError> {
        if let Some(dir) = self.dir(Controller::Cpuset) {
            if let Some(cpus) = &l.cpuset {
                fsops::write(fs, dir, "cpuset.cpus", cpus)?;
            }
        }
        if let Some(dir) = self.dir(Controller::Memory) {
            apply_memory(fs, dir, l, warnings)?;
        }
        if let Some(dir) = self.dir(Controller::Cpu) {
            if let Some(cores) = l.cpu_quota {
                fsops::write(fs, dir, "cpu.cfs_period_us", &limits::CPU_PERIOD_USEC.to_string())?;
                fsops::write(
                    fs,
                    dir,
                    "cpu.cfs_quota_us",
                    &limits::cpu_quota_usec(cores).to_string(),
                )?;
            }
            if let Some(w) = l.cpu_weight {
                fsops::write(fs, dir, "cpu.shares", &limits::cpu_weight_to_shares(w).to_string())?;
            }
        }
        if let Some(dir) = self.dir(Controller::Pids) {
            if let Some(n) = l.pids {
                fsops::write(fs, dir, "pids.max", &n.to_string())?;
            }
        }
        if let Some(dir) = self.dir(Controller::Io) {
            apply_blkio(fs, dir, l)?;
        }
        Ok(())
    }

    pub fn attach(&self, fs: &dyn CgroupFs, pid: i32) -> Result<(), CgroupError> {
        for dir in self.unique_dirs() {
            let path = dir.join("cgroup.procs");
            fs.write(&path, &pid.to_string()).map_err(|source| CgroupError::Attach {
                pid,
                path,
                source,
            })?;
        }
        Ok(())
    }

    pub fn procs(&self, fs: &dyn CgroupFs) -> Result<Vec<i32>, CgroupError> {
        let mut all = Vec::new();
        for dir in self.unique_dirs() {
            if dir.exists() {
                all.extend(fsops::procs(fs, &dir)?);
            }
        }
        all.sort_unstable();
        all.dedup();
        Ok(all)
    }

    pub fn stats_into(&self, fs: &dyn CgroupFs, s: &mut Stats) -> Result<(), CgroupError> {
        if let Some(dir) = self.dir(Controller::Cpuacct) {
            s.cpu_usage_usec = fsops::read_u64(fs, dir, "cpuacct.usage")?.map(|ns| ns / 1000);
            let ticks = fsops::read_keyed(fs, dir, "cpuacct.stat")?;
            let hz = clock_ticks_per_sec();
            s.cpu_user_usec = ticks.get("user").map(|t| t * 1_000_000 / hz);
            s.cpu_system_usec = ticks.get("system").map(|t| t * 1_000_000 / hz);
        }
        if let Some(dir) = self.dir(Controller::Memory) {
            s.memory_current = fsops::read_u64(fs, dir, "memory.usage_in_bytes")?;
            s.memory_peak = fsops::read_u64(fs, dir, "memory.max_usage_in_bytes")?;
            s.memory_limit = fsops::read_u64(fs, dir, "memory.limit_in_bytes")?
                .filter(|&v| v < V1_UNLIMITED_FLOOR);
        }
        if let Some(dir) = self.dir(Controller::Pids) {
            s.pids_current = fsops::read_u64(fs, dir, "pids.current")?;
            s.pids_limit = fsops::read_u64(fs, dir, "pids.max")?;
        }
        if let Some(dir) = self.dir(Controller::Io) {
            if let Some(text) = fsops::read_opt(fs, dir, "blkio.throttle.io_service_bytes")? {
                let (r, w) = parse_blkio_service_bytes(&text);
                s.io_read_bytes = Some(r);
                s.io_write_bytes = Some(w);
            }
        }
        Ok(())
    }

    pub fn events_into(&self, fs: &dyn CgroupFs, e: &mut Events) -> Result<(), CgroupError> {
        if let Some(dir) = self.dir(Controller::Memory) {
            // `oom_kill` in memory.oom_control exists since Linux 4.13.
            let oom = fsops::read_keyed(fs, dir, "memory.oom_control")?;
            e.oom_kills = oom.get("oom_kill").copied().unwrap_or(0);
            // With memsw accounting the memory+swap counter usually fails first (it is charged
            // first and equals the limit when swap is 0), so count both counters' failures.
            e.memory_max_hits = fsops::read_u64(fs, dir, "memory.failcnt")?.unwrap_or(0)
                + fsops::read_u64(fs, dir, "memory.memsw.failcnt")?.unwrap_or(0);
        }
        if let Some(dir) = self.dir(Controller::Pids) {
            e.pids_max_hits =
                fsops::read_keyed(fs, dir, "pids.events")?.get("max").copied().unwrap_or(0);
        }
        if let Some(dir) = self.dir(Controller::Cpu) {
            let st = fsops::read_keyed(fs, dir, "cpu.stat")?;
            e.cpu_periods = st.get("nr_periods").copied().unwrap_or(0);
            e.throttled_periods = st.get("nr_throttled").copied().unwrap_or(0);
            e.throttled_usec = st.get("throttled_time").copied().unwrap_or(0) / 1000;
        }
        Ok(())
    }

    /// SIGKILL every member. With a freezer the cgroup is frozen first so no member can fork
    /// between reading cgroup.procs and the kill; a frozen task dies as soon as it is thawed.
    pub fn kill_all(&self, fs: &dyn CgroupFs) -> Result<(), CgroupError> {
        let freezer = self.dir(Controller::Freezer).filter(|d| d.join("freezer.state").exists());
        if let Some(dir) = freezer {
            // A task in uninterruptible sleep can keep the cgroup FREEZING; kill anyway (the
            // signal is delivered once it is thawed) and let destroy's re-kill catch forks.
            if let Err(e) = set_freezer(fs, dir, "FROZEN") {
                tracing::warn!(error = %e, "freeze before kill incomplete; killing unfrozen");
            }
            let killed = self.kill_members(fs);
            let thawed = set_freezer(fs, dir, "THAWED");
            killed.and(thawed)
        } else {
            // Without a freezer a forking member could outrun one pass; a few passes catch
            // children created between listing and killing.
            for _ in 0..5 {
                if self.procs(fs)?.is_empty() {
                    break;
                }
                self.kill_members(fs)?;
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(())
        }
    }

    fn kill_members(&self, fs: &dyn CgroupFs) -> Result<(), CgroupError> {
        for pid in self.procs(fs)? {
            match kill(Pid::from_raw(pid), Signal::SIGKILL) {
                Ok(()) | Err(nix::Error::ESRCH) => {}
                Err(source) => {
                    return Err(CgroupError::Kill {
                        pid,
                        path: self.unique_dirs().first().cloned().unwrap_or_default(),
                        source,
                    })
                }
            }
        }
        Ok(())
    }
}

fn apply_memory(
    fs: &dyn CgroupFs,
    dir: &Path,
    l: &Limits,
    warnings: &mut Vec<String>,
) -> Result<(), CgroupError> {
    let memsw = dir.join("memory.memsw.limit_in_bytes").exists();
    if let Some(mem) = l.memory {
        // memsw must stay >= limit, and the limit is set first (memory.rst, "memsw").
        fsops::write(fs, dir, "memory.limit_in_bytes", &mem.to_string())?;
        if memsw {
            fsops::write(
                fs,
                dir,
                "memory.memsw.limit_in_bytes",
                &(mem.saturating_add(l.swap)).to_string(),
            )?;
        }
    }
    if l.swap == 0 {
        // swappiness 0 in a memcg stops anonymous-page swap-out for it; the only protection
        // left when memsw accounting (CONFIG_MEMCG_SWAP / swapaccount=1) is missing.
        fsops::write(fs, dir, "memory.swappiness", "0")?;
        if !memsw || l.memory.is_none() {
            let why = if memsw {
                "no memory limit set, so memory+swap cannot be capped"
            } else {
                "memory.memsw.limit_in_bytes is missing (swap accounting disabled)"
            };
            let msg =
                format!("swap is only discouraged (memory.swappiness=0), not forbidden: {why}");
            tracing::warn!(cgroup = %dir.display(), "{msg}");
            warnings.push(msg);
        }
    } else if !memsw {
        let msg = "swap limit not enforced: memory.memsw.limit_in_bytes is missing".to_string();
        tracing::warn!(cgroup = %dir.display(), "{msg}");
        warnings.push(msg);
    }
    Ok(())
}

fn apply_blkio(fs: &dyn CgroupFs, dir: &Path, l: &Limits) -> Result<(), CgroupError> {
    if let Some(w) = l.io_weight {
        if dir.join("blkio.weight").exists() {
            fsops::write(fs, dir, "blkio.weight", &limits::io_weight_to_blkio(w).to_string())?;
        } else if dir.join("blkio.bfq.weight").exists() {
            fsops::write(fs, dir, "blkio.bfq.weight", &limits::io_weight_to_bfq(w).to_string())?;
        } else {
            return Err(CgroupError::ControllerMissing {
                key: "io_weight",
                controller: "blkio",
                hint: format!(
                    "{} has neither blkio.weight (CFQ) nor blkio.bfq.weight (BFQ); use the bfq IO scheduler",
                    dir.display()
                ),
            });
        }
    }
    for t in &l.io_throttle {
        for (file, v) in [
            ("blkio.throttle.read_bps_device", t.read_bps),
            ("blkio.throttle.write_bps_device", t.write_bps),
            ("blkio.throttle.read_iops_device", t.read_iops),
            ("blkio.throttle.write_iops_device", t.write_iops),
        ] {
            if let Some(v) = v {
                fsops::write(fs, dir, file, &format!("{}:{} {v}", t.major, t.minor))?;
            }
        }
    }
    Ok(())
}

/// A new v1 cpuset has empty `cpuset.cpus`/`cpuset.mems` and refuses tasks until both are
/// set (cpusets.rst §2.1), so copy the parent's unless `cgroup.clone_children` did already.
pub(crate) fn init_cpuset(fs: &dyn CgroupFs, dir: &Path) -> Result<(), CgroupError> {
    let parent = dir.parent().unwrap_or(dir);
    for file in ["cpuset.cpus", "cpuset.mems"] {
        if fsops::read(fs, dir, file)?.trim().is_empty() {
            let value = fsops::read(fs, parent, file)?;
            fsops::write(fs, dir, file, value.trim())?;
        }
    }
    Ok(())
}

fn set_freezer(fs: &dyn CgroupFs, dir: &Path, state: &'static str) -> Result<(), CgroupError> {
    fsops::write(fs, dir, "freezer.state", state)?;
    let start = Instant::now();
    let limit = Duration::from_secs(2);
    loop {
        // FREEZING while tasks are still being frozen; rewriting FROZEN retries stuck ones.
        if fsops::read(fs, dir, "freezer.state")?.trim() == state {
            return Ok(());
        }
        if start.elapsed() > limit {
            return Err(CgroupError::FreezerTimeout {
                path: dir.join("freezer.state"),
                state,
                millis: limit.as_millis() as u64,
            });
        }
        std::thread::sleep(Duration::from_millis(5));
        fsops::write(fs, dir, "freezer.state", state)?;
    }
}

/// Sum the Read and Write lines of `blkio.throttle.io_service_bytes` over all devices
/// (`MAJ:MIN Op Bytes` lines plus a `Total` line).
pub(crate) fn parse_blkio_service_bytes(text: &str) -> (u64, u64) {
    let (mut r, mut w) = (0u64, 0u64);
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() == 3 {
            let n: u64 = f[2].parse().unwrap_or(0);
            match f[1] {
                "Read" => r += n,
                "Write" => w += n,
                _ => {}
            }
        }
    }
    (r, w)
}

fn clock_ticks_per_sec() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions; it returns -1 on error.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 {
        hz as u64
    } else {
        100
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blkio_service_bytes_sums_devices() {
        let t = "8:0 Read 4096\n8:0 Write 8192\n8:0 Sync 0\n8:0 Total 12288\n\
8:16 Read 1\n8:16 Write 2\nTotal 12291\n";
        assert_eq!(parse_blkio_service_bytes(t), (4097, 8194));
        assert_eq!(parse_blkio_service_bytes("Total 0\n"), (0, 0));
    }
}
