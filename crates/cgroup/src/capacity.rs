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
    /// From system calls, not /proc text: sysinfo(2)'s `totalram` is MemTotal, and
    /// sched_getaffinity(2) is `Cpus_allowed_list` (its cpuset and affinity). Formatting
    /// /proc/meminfo and /proc/self/status cost more than the rest of the check.
    fn read() -> Result<HostFacts, CgroupError> {
        // SAFETY: an all-zero sysinfo is valid; sysinfo(2) fills it.
        let mut si: libc::sysinfo = unsafe { std::mem::zeroed() };
        // SAFETY: a valid pointer to a local struct.
        if unsafe { libc::sysinfo(&mut si) } != 0 {
            let source = std::io::Error::last_os_error();
            return Err(CgroupError::ReadProc { path: "sysinfo(2)".into(), source });
        }
        let mem_total = si.totalram as u64 * u64::from(si.mem_unit.max(1));
        let online = crate::fsops::read_pseudo(std::path::Path::new(ONLINE))
            .map_err(|source| CgroupError::ReadProc { path: ONLINE.into(), source })?;
        let online_cpus = parse_cpu_list(online.trim()).map_err(CgroupError::Capacity)?.len();
        // SAFETY: an all-zero cpu_set_t is the empty set; sched_getaffinity fills it.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        // SAFETY: pid 0 is the calling thread; the size is the set's.
        if unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) }
            != 0
        {
            let source = std::io::Error::last_os_error();
            return Err(CgroupError::ReadProc { path: "sched_getaffinity(2)".into(), source });
        }
        let allowed_cpus = (0..libc::CPU_SETSIZE as usize)
            // SAFETY: CPU_ISSET reads the local set within CPU_SETSIZE.
            .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
            .map(|c| c as u32)
            .collect();
        Ok(HostFacts { mem_total, online_cpus, allowed_cpus })
    }
}

const ONLINE: &str = "/sys/devices/system/cpu/online";

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
