//! Checks of principles P5–P9 and the Dock duties: immutability, storage, credentials,
//! audit, resources, host prerequisites.

use std::fs;

use crate::catalogue::Class;
use crate::checks::{describe, no_probes, Outcome, Probes};
use crate::gather::{writable_dirs, Evidence};
use crate::procfs::{self, cap_names, cap_number};

/// Per-capability badness on a 0–10 scale, after systemd-analyze-security's capability weights
/// (weight / 150, so CAP_SYS_ADMIN alone takes the full range).
fn cap_badness(name: &str) -> f64 {
    match name {
        "SYS_ADMIN" | "SYS_MODULE" | "SYS_PTRACE" | "NET_ADMIN" | "MAC_ADMIN" | "MAC_OVERRIDE"
        | "SETUID" | "SETGID" | "SETPCAP" | "BPF" | "SYS_RAWIO" | "DAC_OVERRIDE"
        | "DAC_READ_SEARCH" | "CHOWN" | "FOWNER" | "FSETID" | "SETFCAP" | "SYSLOG" => 10.0,
        "SYS_TIME" | "SYS_TTY_CONFIG" | "SYS_BOOT" | "LINUX_IMMUTABLE" | "PERFMON"
        | "CHECKPOINT_RESTORE" | "AUDIT_CONTROL" => 6.7,
        "NET_RAW" | "NET_BROADCAST" | "MKNOD" | "KILL" | "IPC_LOCK" | "IPC_OWNER" | "SYS_NICE"
        | "SYS_RESOURCE" | "AUDIT_WRITE" | "AUDIT_READ" | "SYS_PACCT" => 3.3,
        _ => 0.7,
    }
}

const SECRET_WORDS: &[&str] = &[
    "PASSWORD",
    "PASSWD",
    "SECRET",
    "TOKEN",
    "API_KEY",
    "APIKEY",
    "PRIVATE_KEY",
    "CREDENTIAL",
    "ACCESS_KEY",
];

pub fn evaluate(id: &str, ev: &Evidence) -> Option<Outcome> {
    let p = Probes(ev);
    Some(match id {
        "P5.1" => root_read_only(ev),
        "P5.2" => write_probe(ev, &p),
        "P5.3" => {
            if !p.available() {
                return Some(no_probes(ev));
            }
            let bad: Vec<String> = ["remount_ro:/", "mount_badfs"]
                .iter()
                .filter_map(|n| p.get(n))
                .filter(|o| o.ok || !matches!(o.errno, Some(libc::EPERM) | Some(libc::EACCES)))
                .map(describe)
                .collect();
            let frac = bad.len() as f64 / 2.0;
            let ev_lines =
                if bad.is_empty() { vec!["remount and new mounts: EPERM".into()] } else { bad };
            Outcome::scored(frac, Class::A, ev.is_isc, ev_lines)
        }
        "P5.4" => wx_mounts(ev),
        "P5.6" => host_dirs(ev),
        "P6.1" => {
            let dirs = writable_dirs(ev);
            let bad: Vec<String> = ev
                .init
                .mounts
                .iter()
                .filter(|m| dirs.contains(&m.mount_point) && m.fstype != "tmpfs")
                .map(|m| {
                    format!("{} is writable {} (not tmpfs or encrypted)", m.mount_point, m.fstype)
                })
                .collect();
            let frac = bad.len() as f64 / dirs.len().max(1) as f64;
            let lines = if bad.is_empty() {
                vec![format!("{} writable mounts, all tmpfs", dirs.len())]
            } else {
                bad
            };
            Outcome::scored(frac, Class::K, false, lines)
        }
        "P6.2" => spill(ev),
        "P6.3" => env_secrets(ev),
        "P7.1" => non_root(ev),
        "P7.2" => unique_identity(ev),
        "P7.3" => capabilities(ev),
        "P7.4" => {
            let bad: Vec<String> = [("PID 1", &ev.init), ("service", &ev.service)]
                .iter()
                .filter(|(_, i)| i.field("NoNewPrivs") != "1")
                .map(|(w, i)| format!("{w}: NoNewPrivs: {}", i.field("NoNewPrivs")))
                .collect();
            let frac = if bad.is_empty() { 0.0 } else { 1.0 };
            let lines = if bad.is_empty() { vec!["NoNewPrivs: 1".into()] } else { bad };
            Outcome::scored(frac, Class::K, ev.is_isc, lines)
        }
        "P7.5" => {
            let g = ev.service.field("Groups").to_string();
            Outcome::scored(
                if g.is_empty() { 0.0 } else { 1.0 },
                Class::K,
                ev.is_isc,
                vec![format!("Groups: [{g}]")],
            )
        }
        "P7.6" => escalation(ev, &p),
        "P7.7" => {
            let u = u32::from_str_radix(ev.service.field("Umask"), 8).unwrap_or(0);
            let missing = (0o027 & !u).count_ones();
            Outcome::scored(
                missing as f64 / 4.0,
                Class::K,
                false,
                vec![format!("Umask: {:04o} (want ⊇ 0027)", u)],
            )
        }
        "P8.3" => log_channel(ev),
        "P8.5" => {
            let bnd = ev.service.caps("CapBnd");
            let mut bad: Vec<String> = ["AUDIT_CONTROL", "AUDIT_WRITE", "SYSLOG"]
                .iter()
                .filter(|c| bnd & (1 << cap_number(c).expect("known")) != 0)
                .map(|c| format!("{c} in the bounding set"))
                .collect();
            let mut class = Class::K;
            if let Some(o) = p.get("read:/dev/kmsg") {
                class = Class::A;
                if o.ok {
                    bad.push("in-dom read of /dev/kmsg succeeded".into());
                }
            }
            let frac = if bad.is_empty() { 0.0 } else { 1.0 };
            let lines = if bad.is_empty() {
                vec!["no audit/syslog capabilities; /dev/kmsg denied".into()]
            } else {
                bad
            };
            Outcome::scored(frac, class, ev.is_isc, lines)
        }
        "P9.1" => {
            let lim = ev.cgroup.get("memory.max").filter(|v| v.as_str() != "max").or_else(|| {
                ev.cgroup
                    .get("memory.limit_in_bytes")
                    .filter(|v| v.parse::<u64>().is_ok_and(|x| x < 1 << 62))
            });
            let declared = ev.manifest.as_ref().is_some_and(|m| m.resources.memory.is_some());
            limit_outcome(ev, lim, declared, "memory")
        }
        "P9.2" => {
            let c = &ev.cgroup;
            let lim = c
                .get("cpu.max")
                .filter(|v| !v.starts_with("max"))
                .or_else(|| c.get("cpu.weight").filter(|v| v.as_str() != "100"))
                .or_else(|| c.get("cpu.cfs_quota_us").filter(|v| v.as_str() != "-1"))
                .or_else(|| c.get("cpu.shares").filter(|v| v.as_str() != "1024"));
            let declared = ev
                .manifest
                .as_ref()
                .is_some_and(|m| m.resources.cpu.is_some() || m.resources.cpu_weight.is_some());
            limit_outcome(ev, lim, declared, "cpu")
        }
        "P9.3" => {
            let lim = ev.cgroup.get("pids.max").filter(|v| v.as_str() != "max");
            let declared = ev.manifest.as_ref().and_then(|m| m.resources.pids);
            if let (Some(l), Some(d)) = (lim.and_then(|v| v.parse::<u64>().ok()), declared) {
                if l > d {
                    return Some(Outcome::scored(
                        1.0,
                        Class::K,
                        true,
                        vec![format!("pids.max {l} > declared {d}")],
                    ));
                }
            }
            limit_outcome(ev, lim, declared.is_some(), "pids")
        }
        "P9.4" => {
            let dirs = writable_dirs(ev);
            let bad: Vec<String> = ev
                .init
                .mounts
                .iter()
                .filter(|m| dirs.contains(&m.mount_point) && m.fstype == "tmpfs")
                .filter(|m| !m.super_options.iter().any(|o| o.starts_with("size=")))
                .map(|m| format!("tmpfs {} has no size limit", m.mount_point))
                .collect();
            let frac = if bad.is_empty() { 0.0 } else { 1.0 };
            let lines =
                if bad.is_empty() { vec!["every writable tmpfs has a size".into()] } else { bad };
            Outcome::scored(frac, Class::K, ev.is_isc, lines)
        }
        "P9.7" => rlimits(ev, &p),
        "P9.8" => match ev.cgroup.get("memory.oom.group") {
            None => Outcome::na(
                "memory.oom.group needs the cgroup v2 memory controller (this host: v1)",
            ),
            Some(v) => Outcome::scored(
                if v == "1" { 0.0 } else { 1.0 },
                Class::K,
                false,
                vec![format!("memory.oom.group = {v}")],
            ),
        },
        "D3" => capacity(ev),
        "D4" => {
            if !ev.is_isc {
                return Some(Outcome::na("needs the ISC registry"));
            }
            let own = ev.service.uid_map.first().map(|m| m.outside);
            let clash: Vec<String> = ev
                .others
                .iter()
                .filter(|(_, o)| o.uid_map.first().map(|m| m.outside) == own)
                .map(|(n, _)| format!("host uid range shared with `{n}`"))
                .collect();
            let frac = if clash.is_empty() { 0.0 } else { 1.0 };
            let lines = if clash.is_empty() {
                vec![format!("unique among {} running ISCs", ev.others.len() + 1)]
            } else {
                clash
            };
            Outcome::scored(frac, Class::K, true, lines)
        }
        "D6" => host_prerequisites(),
        _ => return None,
    })
}

fn limit_outcome(ev: &Evidence, lim: Option<&String>, declared: bool, what: &str) -> Outcome {
    match lim {
        Some(v) => Outcome::scored(0.0, Class::K, declared, vec![format!("{what} limit: {v}")]),
        None if ev.cgroup.is_empty() => Outcome::na("cgroup files not readable"),
        None => {
            Outcome::scored(1.0, Class::K, declared, vec![format!("no {what} limit in the cgroup")])
        }
    }
}

fn root_mount(ev: &Evidence) -> Option<&procfs::Mount> {
    ev.init.mounts.iter().rev().find(|m| m.mount_point == "/")
}

fn root_read_only(ev: &Evidence) -> Outcome {
    let Some(root) = root_mount(ev) else { return Outcome::na("no root mount in mountinfo") };
    let mut bad = vec![];
    if !root.read_only() {
        bad.push(format!("/ is mounted {}", root.options.join(",")));
    }
    if root.super_options.iter().any(|o| o.starts_with("upperdir=")) {
        bad.push("/ is an overlay with an upperdir".into());
    }
    let frac = if bad.is_empty() { 0.0 } else { 1.0 };
    let lines = if bad.is_empty() {
        vec![format!("/ is {} ({})", root.options.join(","), root.fstype)]
    } else {
        bad
    };
    Outcome::scored(frac, Class::K, ev.is_isc, lines)
}

fn write_probe(ev: &Evidence, p: &Probes<'_>) -> Outcome {
    if !p.available() {
        return no_probes(ev);
    }
    let names: Vec<&String> = ev
        .probes
        .keys()
        .filter(|k| {
            (k.starts_with("write:") || k.starts_with("open_write:")) && !k.contains("/proc/")
        })
        .collect();
    let ok: Vec<String> = names
        .iter()
        .filter(|n| ev.probes[**n].ok)
        .map(|n| format!("in-dom {n} succeeded"))
        .collect();
    let frac = ok.len() as f64 / names.len().max(1) as f64;
    let lines = if ok.is_empty() {
        let errs: Vec<String> = names.iter().take(4).map(|n| describe(&ev.probes[*n])).collect();
        vec![format!("{} write attempts denied ({} …)", names.len(), errs.join("; "))]
    } else {
        ok
    };
    Outcome::scored(frac, Class::A, ev.is_isc, lines)
}

fn declared_writable(ev: &Evidence) -> Vec<(String, bool)> {
    let Some(m) = &ev.manifest else { return vec![] };
    let mut v: Vec<(String, bool)> =
        m.filesystem.tmpfs.iter().map(|t| (t.path.display().to_string(), t.exec)).collect();
    v.extend(m.filesystem.volumes.iter().map(|t| (t.path.display().to_string(), false)));
    v.extend(m.profile.implied_writable_paths().iter().map(|p| (p.to_string(), false)));
    v.push((isc_manifest::SECRETS_DIR.to_string(), false));
    v
}

fn wx_mounts(ev: &Evidence) -> Outcome {
    let dirs = writable_dirs(ev);
    let declared = declared_writable(ev);
    let mut bad = vec![];
    let mut declared_exec = false;
    for m in ev.init.mounts.iter().filter(|m| dirs.contains(&m.mount_point)) {
        let decl = declared.iter().find(|(p, _)| *p == m.mount_point);
        if ev.is_isc && decl.is_none() {
            bad.push(format!("{} is writable but not declared", m.mount_point));
        }
        declared_exec |= decl.is_some_and(|d| d.1);
        let missing: Vec<&str> =
            ["nosuid", "nodev", "noexec"].into_iter().filter(|o| !m.has(o)).collect();
        if !missing.is_empty() {
            bad.push(format!("{} lacks {}", m.mount_point, missing.join(",")));
        }
    }
    let mut class = Class::K;
    for (n, o) in ev.probes.iter().filter(|(k, _)| k.starts_with("exec_write:")) {
        class = Class::A;
        if o.ok {
            bad.push(format!(
                "in-dom write-then-execve in {} permitted",
                &n["exec_write:".len()..]
            ));
        }
    }
    let frac = (bad.len() as f64 / (dirs.len().max(1) * 2) as f64).min(1.0);
    let lines = if bad.is_empty() {
        vec![format!("{} writable mounts, all declared and nosuid,nodev,noexec", dirs.len())]
    } else {
        bad
    };
    Outcome::scored(frac, class, ev.is_isc && !declared_exec, lines)
}

const HOST_SYSTEM_DIRS: &[&str] = &[
    "/", "/etc", "/usr", "/var", "/home", "/root", "/boot", "/run", "/var/run", "/proc", "/sys",
    "/dev", "/var/lib",
];

fn host_dirs(ev: &Evidence) -> Outcome {
    let mut bad = vec![];
    let mut gate_hit = false;
    for m in &ev.init.mounts {
        if m.optional.iter().any(|o| o.starts_with("shared:")) {
            bad.push(format!(
                "{} has shared propagation ({})",
                m.mount_point,
                m.optional.join(" ")
            ));
        }
        let pseudo = matches!(
            m.fstype.as_str(),
            "tmpfs" | "proc" | "sysfs" | "devpts" | "mqueue" | "devtmpfs"
        );
        if !pseudo && m.mount_point != "/" && HOST_SYSTEM_DIRS.contains(&m.root.as_str()) {
            bad.push(format!(
                "{} is the host's {} ({})",
                m.mount_point,
                m.root,
                if m.read_only() { "ro" } else { "rw" }
            ));
            gate_hit |= !m.read_only();
        }
    }
    let frac = if bad.is_empty() { 0.0 } else { 1.0 };
    if bad.is_empty() {
        bad.push("no host system directory mounted; propagation private".into());
    }
    Outcome::Scored {
        frac,
        class: Class::K,
        declared_good: ev.is_isc,
        gate_hit: Some(gate_hit),
        evidence: bad,
    }
}

fn spill(ev: &Evidence) -> Outcome {
    let mut bad = vec![];
    let swaps = fs::read_to_string("/proc/swaps").unwrap_or_default();
    let plain: Vec<&str> = swaps
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .filter(|d| !d.starts_with("/dev/dm-") && !d.starts_with("/dev/mapper/"))
        .collect();
    let host_swap = !plain.is_empty();
    let isc_swap_zero = match (
        ev.cgroup.get("memory.swap.max"),
        ev.cgroup.get("memory.memsw.limit_in_bytes"),
        ev.cgroup.get("memory.limit_in_bytes"),
    ) {
        (Some(v), _, _) => v == "0",
        (None, Some(sw), Some(m)) => sw == m,
        _ => !host_swap,
    };
    if host_swap && !isc_swap_zero {
        bad.push(format!("unencrypted host swap ({}) and the ISC may swap", plain.join(", ")));
    }
    match ev.service.limits.get("Max core file size") {
        Some((Some(0), Some(0))) => {}
        other => bad.push(format!("core dumps allowed: {other:?}")),
    }
    let dumpable = fs::read_to_string("/proc/sys/fs/suid_dumpable").unwrap_or_default();
    if dumpable.trim() == "1" {
        bad.push("fs.suid_dumpable = 1".into());
    }
    let frac = bad.len() as f64 / 3.0;
    if bad.is_empty() {
        bad.push("no plaintext swap for the ISC, core limit 0".into());
    }
    Outcome::scored(frac, Class::K, false, bad)
}

fn env_secrets(ev: &Evidence) -> Outcome {
    let mut bad = vec![];
    for (what, list) in [("environment", &ev.service.environ), ("argv", &ev.service.cmdline)] {
        for e in list {
            let (k, v) = e.split_once('=').unwrap_or(("", e.as_str()));
            let ku = k.to_ascii_uppercase();
            if (SECRET_WORDS.iter().any(|w| ku.contains(w)) && !v.is_empty())
                || v.contains("-----BEGIN")
            {
                bad.push(format!(
                    "{what}: `{}` looks like a secret",
                    if k.is_empty() { "value" } else { k }
                ));
            }
        }
    }
    let frac = if bad.is_empty() { 0.0 } else { 1.0 };
    if bad.is_empty() {
        bad.push("no secret-looking variables or arguments".into());
    }
    Outcome::scored(frac, Class::K, false, bad)
}

fn non_root(ev: &Evidence) -> Outcome {
    // /proc/PID/status shows ids as seen from the reader's (the host's) user namespace; the
    // id inside the ISC is found by mapping back through uid_map/gid_map.
    let host_uid = ev.service.ids("Uid");
    let host_gid = ev.service.ids("Gid");
    let inside = |map: &[procfs::IdMapLine], host: u64| {
        map.iter()
            .find(|m| host >= m.outside && host < m.outside + m.count)
            .map(|m| host - m.outside + m.inside)
    };
    let in_uid: Vec<Option<u64>> =
        host_uid.iter().map(|u| inside(&ev.service.uid_map, *u)).collect();
    let in_gid: Vec<Option<u64>> =
        host_gid.iter().map(|g| inside(&ev.service.gid_map, *g)).collect();
    let mut frac: f64 = 0.0;
    let mut lines = vec![format!(
        "host Uid {host_uid:?} Gid {host_gid:?}; inside Uid {in_uid:?} Gid {in_gid:?}"
    )];
    if in_uid.contains(&Some(0)) || in_gid.contains(&Some(0)) {
        frac = 0.5;
        lines.push("root inside".into());
    }
    if host_uid.contains(&0) || host_gid.contains(&0) {
        frac = 1.0;
        lines.push("root on the host".into());
    }
    let declared = ev.manifest.as_ref().is_some_and(|m| m.service.user != 0);
    Outcome::scored(frac, Class::K, declared, lines)
}

fn unique_identity(ev: &Evidence) -> Outcome {
    let map = &ev.service.uid_map;
    let mut bad = vec![];
    if map.iter().any(|m| m.inside == 0 && m.outside == 0 && m.count >= 4_294_967_295) {
        bad.push("uid_map is the identity map: no user namespace".to_string());
    }
    if map.iter().any(|m| m.outside == 0) {
        bad.push("host uid 0 is mapped".into());
    }
    for (n, o) in &ev.others {
        let overlap = map.iter().any(|a| {
            o.uid_map
                .iter()
                .any(|b| a.outside < b.outside + b.count && b.outside < a.outside + a.count)
        });
        if overlap {
            bad.push(format!("host uid range overlaps ISC `{n}`"));
        }
    }
    let frac = if bad.is_empty() { 0.0 } else { 1.0 };
    if bad.is_empty() {
        let r: Vec<String> = map.iter().map(|m| format!("{}+{}", m.outside, m.count)).collect();
        bad.push(format!(
            "host range {} disjoint from {} other ISCs",
            r.join(","),
            ev.others.len()
        ));
    }
    Outcome::scored(frac, Class::K, ev.is_isc, bad)
}

fn capabilities(ev: &Evidence) -> Outcome {
    let declared: u64 = ev
        .manifest
        .as_ref()
        .map(|m| {
            m.security
                .capabilities
                .iter()
                .filter_map(|c| cap_number(c))
                .fold(0u64, |a, b| a | (1 << b))
        })
        .unwrap_or(0);
    let s = &ev.service;
    let held = s.caps("CapEff") | s.caps("CapPrm") | s.caps("CapAmb") | s.caps("CapBnd");
    let extra = held & !declared;
    let names = cap_names(extra);
    let badness: f64 = names.iter().map(|n| cap_badness(n)).sum();
    let lines = if names.is_empty() {
        vec![format!("capabilities within the declared set [{}]", cap_names(declared).join(","))]
    } else {
        vec![format!("undeclared capabilities: {}", names.join(","))]
    };
    Outcome::scored(badness / 10.0, Class::K, ev.is_isc, lines)
}

fn escalation(ev: &Evidence, p: &Probes<'_>) -> Outcome {
    if !p.available() {
        return no_probes(ev);
    }
    let battery = [
        ("setuid0", false),
        ("capset_raise", false),
        ("ptrace", false),
        ("syscall:bpf", true),
        ("syscall:perf_event_open", true),
        ("sched_fifo", false),
        ("mmap_wx", false),
    ];
    let mut bad = vec![];
    for (n, syscall) in battery {
        let hit = if syscall { p.let_through(n) } else { p.succeeded(n) };
        if hit == Some(true) {
            bad.push(describe(p.get(n).expect("present")));
        }
    }
    let frac = bad.len() as f64 / battery.len() as f64;
    // W+X mappings are refused only with MDWE, which the engine does not set yet: do not
    // count that one as a contradiction of the declared configuration.
    let declared_good = ev.is_isc && bad.iter().any(|b| !b.starts_with("mmap_wx"));
    if bad.is_empty() {
        bad.push(format!("all {} escalation attempts failed", battery.len()));
    }
    Outcome::scored(frac, Class::A, declared_good, bad)
}

fn log_channel(ev: &Evidence) -> Outcome {
    let Some(mon) = ev.monitor_pid else {
        return Outcome::na("no collector known for a foreign process");
    };
    let pipe = |pid: i32, fd: &str| {
        fs::read_link(format!("/proc/{pid}/fd/{fd}")).ok().map(|t| t.to_string_lossy().into_owned())
    };
    let mon_fds: Vec<String> = fs::read_dir(format!("/proc/{mon}/fd"))
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| fs::read_link(e.path()).ok())
                .map(|t| t.to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    let mut bad = vec![];
    for fd in ["1", "2"] {
        match pipe(ev.service.pid, fd) {
            Some(t) if t.starts_with("pipe:") && mon_fds.contains(&t) => {}
            other => bad.push(format!("fd {fd} is {other:?}, not a pipe to the monitor")),
        }
    }
    let frac = if bad.is_empty() { 0.0 } else { 1.0 };
    if bad.is_empty() {
        bad.push("stdout and stderr are pipes read by the monitor".into());
    }
    Outcome::scored(frac, Class::K, ev.is_isc, bad)
}

fn rlimits(ev: &Evidence, p: &Probes<'_>) -> Outcome {
    let l = &ev.service.limits;
    let mut bad = vec![];
    if l.get("Max core file size") != Some(&(Some(0), Some(0))) {
        bad.push("core limit is not 0".to_string());
    }
    if l.get("Max open files").is_some_and(|(_, h)| h.is_none()) {
        bad.push("open files unlimited".into());
    }
    if l.get("Max realtime priority").is_some_and(|(_, h)| *h != Some(0)) {
        bad.push("realtime priority allowed".into());
    }
    let bnd = ev.service.caps("CapBnd");
    for c in ["SYS_RESOURCE", "SYS_NICE"] {
        if bnd & (1 << cap_number(c).expect("known")) != 0 {
            bad.push(format!("{c} in the bounding set"));
        }
    }
    let mut class = Class::K;
    if let Some(o) = p.get("rlimit_raise") {
        class = Class::A;
        if o.ok {
            bad.push(describe(o));
        }
    }
    let frac = if bad.is_empty() { 0.0 } else { 1.0 };
    if bad.is_empty() {
        bad.push("core 0, finite nofile, no RT; hard limits cannot be raised".into());
    }
    Outcome::scored(frac, class, ev.is_isc, bad)
}

fn capacity(ev: &Evidence) -> Outcome {
    if !ev.is_isc {
        return Outcome::na("needs the ISC registry");
    }
    let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let total_kb: u64 = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let own: u64 = ev.manifest.as_ref().and_then(|m| m.resources.memory).unwrap_or(total_kb * 1024);
    let sum = own; // other ISCs' limits are counted by the Dock (it holds their manifests)
    let budget = total_kb * 1024 / 10 * 9;
    let frac = if sum <= budget { 0.0 } else { 1.0 };
    Outcome::scored(
        frac,
        Class::K,
        false,
        vec![format!("memory limits {} MiB of {} MiB usable", sum >> 20, budget >> 20)],
    )
}

fn host_prerequisites() -> Outcome {
    let rd = |p: &str| fs::read_to_string(p).unwrap_or_default().trim().to_string();
    let num = |p: &str| rd(p).parse::<i64>().unwrap_or(-1);
    let lsm = rd("/sys/kernel/security/lsm");
    let mut bad = vec![];
    if std::path::Path::new("/sys/fs/cgroup/memory").exists() {
        bad.push("cgroup v1 controllers in use (hybrid or legacy hierarchy)".to_string());
    }
    if !lsm.split(',').any(|l| matches!(l, "selinux" | "apparmor" | "smack" | "tomoyo")) {
        bad.push(format!("no MAC LSM active (lsm: `{lsm}`)"));
    }
    if num("/proc/sys/kernel/unprivileged_bpf_disabled") < 1 {
        bad.push("kernel.unprivileged_bpf_disabled = 0".into());
    }
    if std::path::Path::new("/proc/sys/kernel/yama/ptrace_scope").exists()
        && num("/proc/sys/kernel/yama/ptrace_scope") < 1
    {
        bad.push("kernel.yama.ptrace_scope = 0".into());
    }
    if num("/proc/sys/kernel/kptr_restrict") < 1 {
        bad.push("kernel.kptr_restrict = 0".into());
    }
    if num("/proc/sys/kernel/dmesg_restrict") != 1 {
        bad.push("kernel.dmesg_restrict = 0".into());
    }
    let frac = bad.len() as f64 / 6.0;
    if bad.is_empty() {
        bad.push("host prerequisites met".into());
    }
    Outcome::scored(frac, Class::K, false, bad)
}
