//! The resource guard across ISCs: a start is refused when the memory limits of the ISCs that
//! run (or are about to) would add up past the host's memory minus the reserve, or their CPU
//! quotas past the online CPUs times the configured over-commit.
//!
//! Limits, not usage, are summed: the kernel enforces each limit, so when their sum fits, no
//! ISC can push another into the host's OOM killer. An ISC without a memory limit could use
//! all of it and is counted as the whole budget.

use crate::config::ResourceConfig;
use crate::records::IscRecord;

const MIB: u64 = 1 << 20;

fn mib(b: u64) -> String {
    format!("{} MiB", b / MIB)
}

/// MemTotal from /proc/meminfo, in bytes.
pub fn mem_total() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn online_cpus() -> f64 {
    std::thread::available_parallelism().map(|n| n.get() as f64).unwrap_or(1.0)
}

/// Checks whether `candidate` may start next to the active ISCs among `others`.
pub fn admit<'a>(
    cfg: &ResourceConfig,
    others: impl Iterator<Item = &'a IscRecord>,
    candidate: &IscRecord,
) -> Result<(), String> {
    let total = cfg.memory_total.or_else(mem_total).unwrap_or(0);
    let budget = total.saturating_sub(cfg.reserve);
    let active: Vec<&IscRecord> =
        others.filter(|r| r.name != candidate.name && r.status.is_active()).collect();
    let mem_of = |r: &IscRecord| r.memory_limit.unwrap_or(total);
    let used: u64 = active.iter().map(|r| mem_of(r)).sum();
    let want = mem_of(candidate);
    if used + want > budget {
        let what = match candidate.memory_limit {
            Some(m) => format!("memory limit {}", mib(m)),
            None => "no memory limit (counted as all of the host's memory)".into(),
        };
        return Err(format!(
            "refusing to start `{}` ({what}): the memory limits of the {} running ISC(s) already add up to {}, and with it they would pass the Dock's budget of {} (memory {} − reserve {}); fix: lower its [resources] memory, stop an ISC, or change [resources] reserve in dock.toml",
            candidate.name,
            active.len(),
            mib(used),
            mib(budget),
            mib(total),
            mib(cfg.reserve)
        ));
    }
    if let Some(c) = candidate.cpu_quota {
        let cpus = online_cpus() * cfg.cpu_overcommit;
        let used: f64 = active.iter().filter_map(|r| r.cpu_quota).sum();
        if used + c > cpus + 1e-9 {
            return Err(format!(
                "refusing to start `{}` (cpu {c}): the CPU quotas of the running ISCs add up to {used}, and with it they would pass {cpus} ({} CPUs × cpu_overcommit {}); fix: lower its [resources] cpu, stop an ISC, or raise [resources] cpu_overcommit in dock.toml",
                candidate.name,
                online_cpus(),
                cfg.cpu_overcommit
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::{Desired, Status};

    fn rec(name: &str, mem: Option<u64>, cpu: Option<f64>, status: Status) -> IscRecord {
        IscRecord {
            name: name.into(),
            restart: "never".into(),
            memory_limit: mem,
            cpu_quota: cpu,
            manifest_hash: String::new(),
            desired: Desired::Running,
            status,
            run_id: 0,
            monitor_pid: None,
            host_uid_base: None,
            created_ms: 0,
            started_ms: None,
            restarts: 0,
            failures: 0,
            last_exit: None,
            message: None,
            health: None,
            health_failures: 0,
            health_state: None,
        }
    }

    #[test]
    fn memory_limits_are_summed_against_total_minus_reserve() {
        let cfg = ResourceConfig {
            reserve: 100 * MIB,
            memory_total: Some(1000 * MIB),
            cpu_overcommit: 1.0,
        };
        let running = [
            rec("a", Some(400 * MIB), None, Status::Running),
            rec("b", Some(400 * MIB), None, Status::Exited),
        ];
        assert!(
            admit(&cfg, running.iter(), &rec("c", Some(500 * MIB), None, Status::Exited)).is_ok()
        );
        let e = admit(&cfg, running.iter(), &rec("c", Some(501 * MIB), None, Status::Exited))
            .unwrap_err();
        assert!(e.contains("budget of 900 MiB") && e.contains("add up to 400 MiB"), "{e}");
        let e = admit(&cfg, running.iter(), &rec("c", None, None, Status::Exited)).unwrap_err();
        assert!(e.contains("no memory limit"), "{e}");
        // Restarting an ISC does not count it twice.
        assert!(
            admit(&cfg, running.iter(), &rec("a", Some(400 * MIB), None, Status::Exited)).is_ok()
        );
    }

    #[test]
    fn cpu_quotas_are_summed_against_the_overcommit() {
        let cfg = ResourceConfig { reserve: 0, memory_total: Some(1 << 40), cpu_overcommit: 1.0 };
        let n = online_cpus();
        let running = [rec("a", Some(1), Some(n - 0.5), Status::Running)];
        assert!(admit(&cfg, running.iter(), &rec("b", Some(1), Some(0.5), Status::Exited)).is_ok());
        let e = admit(&cfg, running.iter(), &rec("b", Some(1), Some(0.75), Status::Exited))
            .unwrap_err();
        assert!(e.contains("cpu_overcommit"), "{e}");
    }
}
