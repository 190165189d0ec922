//! The capacity guard: refuse, before anything is created, limits this host cannot honour,
//! so a too-small memory limit is a clear error and not a mysterious crash at exec.

use std::collections::BTreeSet;

use crate::error::CgroupError;
use crate::limits::Limits;

/// The smallest memory limit isc accepts: 4 MiB. Below that, execve of even a static binary
/// fails or is OOM-killed before `main` (page tables, stack, the ELF image and our PID 1 are
/// all charged to the cgroup), which would surface as an unexplained SIGKILL.
pub const MIN_MEMORY_BYTES: u64 = 4 << 20;

/// What the host offers, read once per check.
#[derive(Debug, Clone)]
pub(crate) struct HostFacts {
    /// `MemTotal` in bytes.
    pub mem_total: u64,
    /// Online CPUs.
    pub online_cpus: usize,
    /// CPUs this process may run on (`Cpus_allowed_list`: its cpuset and affinity).
    pub allowed_cpus: BTreeSet<u32>,
}

impl HostFacts {
    fn read() -> Result<HostFacts, CgroupError> {
        let read = |p: &str| {
            std::fs::read_to_string(p)
                .map_err(|source| CgroupError::ReadProc { path: p.into(), source })
        };
        let meminfo = read("/proc/meminfo")?;
        let mem_total = field(&meminfo, "MemTotal:")
            .and_then(|v| v.trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .ok_or_else(|| CgroupError::Capacity("/proc/meminfo has no MemTotal line".into()))?;
        let online = read("/sys/devices/system/cpu/online")?;
        let online_cpus = parse_cpu_list(online.trim()).map_err(CgroupError::Capacity)?.len();
        let status = read("/proc/self/status")?;
        let allowed = field(&status, "Cpus_allowed_list:").ok_or_else(|| {
            CgroupError::Capacity("/proc/self/status has no Cpus_allowed_list".into())
        })?;
        let allowed_cpus = parse_cpu_list(allowed).map_err(CgroupError::Capacity)?;
        Ok(HostFacts { mem_total, online_cpus, allowed_cpus })
    }
}

fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines().find_map(|l| l.strip_prefix(key)).map(str::trim)
}

/// Refuse limits this host cannot honour: memory below [`MIN_MEMORY_BYTES`] or above
/// `MemTotal`, a CPU quota above the online CPUs, cpuset CPUs outside the caller's own set.
/// Also runs [`Limits::validate`].
pub fn check_capacity(limits: &Limits) -> Result<(), CgroupError> {
    limits.validate()?;
    check_against(limits, &HostFacts::read()?)
}

pub(crate) fn check_against(limits: &Limits, host: &HostFacts) -> Result<(), CgroupError> {
    if let Some(m) = limits.memory {
        if m < MIN_MEMORY_BYTES {
            return Err(CgroupError::Capacity(format!(
                "memory = {m} bytes is below the {} MiB floor needed to start a process \
                 (ELF image, stack, page tables and isc's PID 1 are charged to the cgroup); \
                 set `memory` to at least \"4M\"",
                MIN_MEMORY_BYTES >> 20
            )));
        }
        if m > host.mem_total {
            return Err(CgroupError::Capacity(format!(
                "memory = {} MiB exceeds this host's total memory ({} MiB); lower `memory`",
                m >> 20,
                host.mem_total >> 20
            )));
        }
    }
    if let Some(c) = limits.cpu_quota {
        if c > host.online_cpus as f64 {
            return Err(CgroupError::Capacity(format!(
                "cpu = {c} cores exceeds the {} online CPUs; lower `cpu`",
                host.online_cpus
            )));
        }
    }
    if let Some(set) = &limits.cpuset {
        let want = parse_cpu_list(set).map_err(CgroupError::Capacity)?;
        let missing: Vec<String> =
            want.difference(&host.allowed_cpus).map(u32::to_string).collect();
        if !missing.is_empty() {
            return Err(CgroupError::Capacity(format!(
                "cpuset = \"{set}\" names CPU(s) {} outside the parent's set {:?}; use only those",
                missing.join(","),
                host.allowed_cpus
            )));
        }
    }
    Ok(())
}

/// Parse a kernel CPU list (`0-3,5,7-8`; cpuset(7) "List format").
pub fn parse_cpu_list(s: &str) -> Result<BTreeSet<u32>, String> {
    let mut out = BTreeSet::new();
    for part in s.trim().split(',').filter(|p| !p.is_empty()) {
        let num = |x: &str| {
            x.trim()
                .parse::<u32>()
                .map_err(|_| format!("{x:?} in CPU list {s:?} is not a CPU number"))
        };
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (num(a)?, num(b)?);
                if a > b || b - a > 65_536 {
                    return Err(format!(
                        "range {part:?} in CPU list {s:?} is reversed or too large"
                    ));
                }
                out.extend(a..=b);
            }
            None => {
                out.insert(num(part)?);
            }
        }
    }
    if out.is_empty() {
        return Err(format!("CPU list {s:?} is empty"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host() -> HostFacts {
        HostFacts {
            mem_total: 1 << 30,
            online_cpus: 2,
            allowed_cpus: parse_cpu_list("0-1").unwrap(),
        }
    }

    #[test]
    fn cpu_lists_parse() {
        assert_eq!(parse_cpu_list("0-3,5,7-8").unwrap(), [0, 1, 2, 3, 5, 7, 8].into());
        assert_eq!(parse_cpu_list("1\n").unwrap(), [1].into());
        for bad in ["", "a", "3-1", "0-", "0-99999999"] {
            assert!(parse_cpu_list(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn memory_floor_and_ceiling() {
        let l = |m| Limits { memory: Some(m), ..Default::default() };
        let err = check_against(&l(1 << 20), &host()).unwrap_err().to_string();
        assert!(err.contains("4 MiB floor"), "{err}");
        assert!(check_against(&l(MIN_MEMORY_BYTES), &host()).is_ok());
        let err = check_against(&l(2 << 30), &host()).unwrap_err().to_string();
        assert!(err.contains("exceeds this host's total memory (1024 MiB)"), "{err}");
    }

    #[test]
    fn cpu_and_cpuset_bounds() {
        let over = Limits { cpu_quota: Some(2.5), ..Default::default() };
        assert!(check_against(&over, &host()).unwrap_err().to_string().contains("2 online CPUs"));
        let ok = Limits { cpu_quota: Some(2.0), cpuset: Some("1".into()), ..Default::default() };
        assert!(check_against(&ok, &host()).is_ok());
        let outside = Limits { cpuset: Some("0-3".into()), ..Default::default() };
        let err = check_against(&outside, &host()).unwrap_err().to_string();
        assert!(err.contains("CPU(s) 2,3 outside"), "{err}");
    }

    #[test]
    fn real_host_facts_are_readable_and_sane() {
        let h = HostFacts::read().unwrap();
        assert!(h.mem_total > MIN_MEMORY_BYTES);
        assert!(h.online_cpus >= 1 && !h.allowed_cpus.is_empty());
        assert!(check_capacity(&Limits { memory: Some(64 << 20), ..Default::default() }).is_ok());
    }
}
