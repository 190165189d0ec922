//! The cgroup v2 backend: one directory in the unified hierarchy, controllers enabled through
//! the parents' `cgroup.subtree_control`, `cgroup.kill` for kill-all.
//! File semantics: Documentation/admin-guide/cgroup-v2.rst.

use std::collections::BTreeSet;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::error::CgroupError;
use crate::fsops::{self, CgroupFs};
use crate::layout::Controller;
use crate::limits::{self, Events, Limits, Stats};

/// The v2 part of one ISC cgroup.
#[derive(Debug)]
pub(crate) struct V2Part {
    pub dir: PathBuf,
    /// `O_RDONLY|O_DIRECTORY` fd of `dir`, for clone3's CLONE_INTO_CGROUP.
    pub fd: OwnedFd,
    /// Controllers enabled for `dir` by its parent.
    pub enabled: BTreeSet<Controller>,
}

/// Controllers listed in `dir/cgroup.controllers` that isc knows.
pub(crate) fn offered(fs: &dyn CgroupFs, dir: &Path) -> Result<BTreeSet<Controller>, CgroupError> {
    let text = fsops::read_opt(fs, dir, "cgroup.controllers")?.unwrap_or_default();
    let names: Vec<&str> = text.split_whitespace().collect();
    Ok(Controller::ALL
        .into_iter()
        .filter(|c| c.v2_name().is_some_and(|n| names.contains(&n)))
        .collect())
}

/// Enable `controllers` for the children of `dir`, one write each so a failure names the
/// controller. Already-enabled ones are skipped: re-enabling would trip the
/// no-internal-processes check on a populated non-root cgroup for nothing.
pub(crate) fn enable(
    fs: &dyn CgroupFs,
    dir: &Path,
    controllers: &BTreeSet<Controller>,
) -> Result<(), CgroupError> {
    let path = dir.join("cgroup.subtree_control");
    let current =
        fs.read(&path).map_err(|source| CgroupError::Read { path: path.clone(), source })?;
    for c in controllers {
        let name = c.v2_name().expect("only v2 controllers are enabled");
        if current.split_whitespace().any(|x| x == name) {
            continue;
        }
        fs.write(&path, &format!("+{name}")).map_err(|source| CgroupError::EnableController {
            path: path.clone(),
            controller: name,
            source,
        })?;
    }
    Ok(())
}

impl V2Part {
    fn has(&self, c: Controller) -> bool {
        self.enabled.contains(&c)
    }

    /// Does this v2 directory already do what v1 hierarchy `c` would be created for? On a
    /// hybrid host every ISC also has a v2 directory (CLONE_INTO_CGROUP), and two v1
    /// controllers only duplicate v2 core files that exist without any controller
    /// (cgroup-v2.rst, "Core Interface Files"): `cpu.stat` counts CPU usage like `cpuacct`,
    /// and `cgroup.kill` (Linux 5.14) kills every member atomically, which is what the v1
    /// freezer was for. Each hierarchy left out saves two mkdirs, two rmdirs and a join.
    pub(crate) fn makes_redundant(&self, c: Controller) -> bool {
        match c {
            Controller::Cpuacct => self.dir.join("cpu.stat").exists(),
            Controller::Freezer => self.dir.join("cgroup.kill").exists(),
            _ => false,
        }
    }

    pub fn apply_limits(
        &self,
        fs: &dyn CgroupFs,
        l: &Limits,
        warnings: &mut Vec<String>,
    ) -> Result<(), CgroupError> {
        let d = self.dir.as_path();
        if self.has(Controller::Cpuset) {
            if let Some(cpus) = &l.cpuset {
                fsops::write(fs, d, "cpuset.cpus", cpus)?;
            }
        }
        if self.has(Controller::Memory) {
            if let Some(m) = l.memory {
                fsops::write(fs, d, "memory.max", &m.to_string())?;
            }
            if d.join("memory.swap.max").exists() {
                fsops::write(fs, d, "memory.swap.max", &l.swap.to_string())?;
            } else {
                let msg = "swap limit not enforced: memory.swap.max is missing (swap accounting disabled)".to_string();
                tracing::warn!(cgroup = %d.display(), "{msg}");
                warnings.push(msg);
            }
        }
        if self.has(Controller::Cpu) {
            if let Some(cores) = l.cpu_quota {
                let v = format!("{} {}", limits::cpu_quota_usec(cores), limits::CPU_PERIOD_USEC);
                fsops::write(fs, d, "cpu.max", &v)?;
            }
            if let Some(w) = l.cpu_weight {
                fsops::write(fs, d, "cpu.weight", &w.to_string())?;
            }
        }
        if self.has(Controller::Pids) {
            if let Some(n) = l.pids {
                fsops::write(fs, d, "pids.max", &n.to_string())?;
            }
        }
        if self.has(Controller::Io) {
            if let Some(w) = l.io_weight {
                fsops::write(fs, d, "io.weight", &format!("default {w}"))?;
            }
            for t in &l.io_throttle {
                let mut v = format!("{}:{}", t.major, t.minor);
                for (k, x) in [
                    ("rbps", t.read_bps),
                    ("wbps", t.write_bps),
                    ("riops", t.read_iops),
                    ("wiops", t.write_iops),
                ] {
                    if let Some(x) = x {
                        v.push_str(&format!(" {k}={x}"));
                    }
                }
                fsops::write(fs, d, "io.max", &v)?;
            }
        }
        Ok(())
    }

    pub fn attach(&self, fs: &dyn CgroupFs, pid: i32) -> Result<(), CgroupError> {
        let path = self.dir.join("cgroup.procs");
        fs.write(&path, &pid.to_string()).map_err(|source| CgroupError::Attach {
            pid,
            path,
            source,
        })
    }

    pub fn procs(&self, fs: &dyn CgroupFs) -> Result<Vec<i32>, CgroupError> {
        fsops::procs(fs, &self.dir)
    }

    /// Fill what v2 offers. `cpu.stat` usage is core (always present); the rest needs the
    /// controller enabled.
    pub fn stats_into(&self, fs: &dyn CgroupFs, s: &mut Stats) -> Result<(), CgroupError> {
        let d = self.dir.as_path();
        let cpu = fsops::read_keyed(fs, d, "cpu.stat")?;
        s.cpu_usage_usec = s.cpu_usage_usec.or(cpu.get("usage_usec").copied());
        s.cpu_user_usec = s.cpu_user_usec.or(cpu.get("user_usec").copied());
        s.cpu_system_usec = s.cpu_system_usec.or(cpu.get("system_usec").copied());
        if self.has(Controller::Memory) {
            s.memory_current = fsops::read_u64(fs, d, "memory.current")?;
            s.memory_peak = fsops::read_u64(fs, d, "memory.peak")?;
            s.memory_limit = fsops::read_u64(fs, d, "memory.max")?;
        }
        if self.has(Controller::Pids) {
            s.pids_current = fsops::read_u64(fs, d, "pids.current")?;
            s.pids_limit = fsops::read_u64(fs, d, "pids.max")?;
        }
        if self.has(Controller::Io) {
            if let Some(text) = fsops::read_opt(fs, d, "io.stat")? {
                let (r, w) = parse_io_stat(&text);
                s.io_read_bytes = Some(r);
                s.io_write_bytes = Some(w);
            }
        }
        Ok(())
    }

    pub fn events_into(&self, fs: &dyn CgroupFs, e: &mut Events) -> Result<(), CgroupError> {
        let d = self.dir.as_path();
        if self.has(Controller::Memory) {
            let m = fsops::read_keyed(fs, d, "memory.events")?;
            e.oom_kills = m.get("oom_kill").copied().unwrap_or(0);
            e.memory_max_hits = m.get("max").copied().unwrap_or(0);
        }
        if self.has(Controller::Pids) {
            e.pids_max_hits =
                fsops::read_keyed(fs, d, "pids.events")?.get("max").copied().unwrap_or(0);
        }
        if self.has(Controller::Cpu) {
            let st = fsops::read_keyed(fs, d, "cpu.stat")?;
            e.cpu_periods = st.get("nr_periods").copied().unwrap_or(0);
            e.throttled_periods = st.get("nr_throttled").copied().unwrap_or(0);
            e.throttled_usec = st.get("throttled_usec").copied().unwrap_or(0);
        }
        Ok(())
    }

    /// `cgroup.kill` (Linux 5.14) kills the whole subtree atomically, forks included. Older
    /// kernels get repeated list-and-kill passes.
    pub fn kill_all(&self, fs: &dyn CgroupFs) -> Result<(), CgroupError> {
        if self.dir.join("cgroup.kill").exists() {
            return fsops::write(fs, &self.dir, "cgroup.kill", "1");
        }
        for _ in 0..5 {
            let pids = self.procs(fs)?;
            if pids.is_empty() {
                break;
            }
            for pid in pids {
                match kill(Pid::from_raw(pid), Signal::SIGKILL) {
                    Ok(()) | Err(nix::Error::ESRCH) => {}
                    Err(source) => {
                        return Err(CgroupError::Kill { pid, path: self.dir.clone(), source })
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }
}

/// Sum `rbytes=`/`wbytes=` over the devices of `io.stat`.
pub(crate) fn parse_io_stat(text: &str) -> (u64, u64) {
    let (mut r, mut w) = (0u64, 0u64);
    for kv in text.split_whitespace() {
        if let Some((k, v)) = kv.split_once('=') {
            let n: u64 = v.parse().unwrap_or(0);
            match k {
                "rbytes" => r += n,
                "wbytes" => w += n,
                _ => {}
            }
        }
    }
    (r, w)
}
