//! Checks of principles P1–P4: kernel attack surface, one service, exposure, egress.

use std::path::Path;

use crate::catalogue::Class;
use crate::checks::{describe, no_probes, Outcome, Probes};
use crate::gather::Evidence;
use crate::procfs::{self, cap_number};

/// Seccomp groups and the probe that stands for each.
const SECCOMP_GROUPS: &[(&str, &[&str])] = &[
    ("@mount", &["syscall:umount2"]),
    ("@module", &["syscall:init_module", "syscall:finit_module"]),
    ("@raw-io", &["syscall:iopl", "syscall:ioperm"]),
    ("@reboot", &["syscall:reboot", "syscall:kexec_load"]),
    ("@swap", &["syscall:swapoff"]),
    ("@clock", &["syscall:clock_settime"]),
    ("@debug", &["syscall:ptrace_bad", "syscall:perf_event_open"]),
];

/// Namespaces an ISC must not share with the host (time is shared by design: one clock).
const NAMESPACES: &[&str] = &["mnt", "pid", "net", "ipc", "uts", "user", "cgroup"];

const DEVICES_ALLOWED: &[&str] = &[
    "null", "zero", "full", "random", "urandom", "tty", "pts", "ptmx", "shm", "mqueue", "fd",
    "stdin", "stdout", "stderr", "core", "console",
];

pub fn evaluate(id: &str, ev: &Evidence) -> Option<Outcome> {
    let p = Probes(ev);
    Some(match id {
        "P1.1" => seccomp(ev, &p),
        "P1.2" => match p.get("int80") {
            None => no_probes(ev),
            Some(o) => Outcome::scored(
                if o.ok { 1.0 } else { 0.0 },
                Class::A,
                ev.is_isc,
                vec![describe(o)],
            ),
        },
        "P1.4" => namespaces(ev),
        "P1.5" => kernel_interfaces(ev, &p),
        "P1.6" => devices(ev),
        "P1.7" => control_sockets(ev),
        "P1.8" => {
            share_of(ev, &p, &["unshare:user", "unshare:mnt", "unshare:net"], |n| p.succeeded(n))
        }
        "P2.1" => service_tree(ev),
        "P2.2" => admin_tools(ev),
        "P2.3" => executables(ev),
        "P2.4" => shared_with_others(ev),
        "P2.5" => listener_owners(ev),
        "P3.1" => declared_listeners(ev),
        "P3.4" => raw_sockets(ev, &p),
        "P3.5" => low_ports(ev),
        "P4.1" => default_deny(ev),
        "P4.2" => egress_canary(ev, &p),
        "P4.4" => host_unreachable(ev, &p),
        "P4.5" => exotic_families(ev, &p),
        "P4.6" => match p.get("tcp_bind:47113") {
            None => no_probes(ev),
            Some(o) => {
                let landlock = o.errno == Some(libc::EACCES);
                Outcome::scored(
                    if landlock { 0.0 } else { 1.0 },
                    Class::A,
                    ev.is_isc,
                    vec![describe(o)],
                )
            }
        },
        _ => return None,
    })
}

/// Share of `names` for which `bad` says yes; A class.
fn share_of(
    ev: &Evidence,
    p: &Probes<'_>,
    names: &[&str],
    bad: impl Fn(&str) -> Option<bool>,
) -> Outcome {
    if !p.available() {
        return no_probes(ev);
    }
    let mut n_bad = 0;
    let mut evidence = vec![];
    for n in names {
        if bad(n) == Some(true) {
            n_bad += 1;
        }
        if let Some(o) = p.get(n) {
            evidence.push(describe(o));
        }
    }
    Outcome::scored(n_bad as f64 / names.len() as f64, Class::A, ev.is_isc, evidence)
}

fn seccomp(ev: &Evidence, p: &Probes<'_>) -> Outcome {
    let mut evidence = vec![];
    let mut k_bad = false;
    for (who, info) in [("PID 1", &ev.init), ("service", &ev.service)] {
        let mode = info.field("Seccomp");
        if mode != "2" {
            k_bad = true;
            evidence.push(format!("{who}: Seccomp: {mode} (want 2, filter mode)"));
        }
    }
    if k_bad {
        return Outcome::scored(1.0, Class::K, ev.is_isc, evidence);
    }
    if !p.available() {
        evidence.push("Seccomp: 2 on PID 1 and the service".into());
        return Outcome::scored(0.0, Class::K, ev.is_isc, evidence);
    }
    let mut through = 0;
    for (group, probes) in SECCOMP_GROUPS {
        let passed: Vec<&str> =
            probes.iter().copied().filter(|n| p.let_through(n) == Some(true)).collect();
        if !passed.is_empty() {
            through += 1;
            for n in passed {
                evidence
                    .push(format!("{group} let through: {}", describe(p.get(n).expect("present"))));
            }
        }
    }
    if through == 0 {
        evidence.push(format!("all {} groups blocked", SECCOMP_GROUPS.len()));
    }
    Outcome::scored(through as f64 / SECCOMP_GROUPS.len() as f64, Class::A, ev.is_isc, evidence)
}

fn namespaces(ev: &Evidence) -> Outcome {
    if ev.host_ns.is_empty() {
        return Outcome::na(
            "/proc/1/ns is not readable here (the verifier runs in a confined namespace)",
        );
    }
    let mut shared = vec![];
    for k in NAMESPACES {
        match (ev.init.ns.get(*k), ev.host_ns.get(*k)) {
            (Some(a), Some(b)) if a == b => shared.push(*k),
            _ => {}
        }
    }
    let gate_hit = shared.iter().any(|k| matches!(*k, "net" | "pid" | "user"));
    let evidence = if shared.is_empty() {
        vec![format!("own {} namespaces", NAMESPACES.join(", "))]
    } else {
        vec![format!("shared with the host: {}", shared.join(", "))]
    };
    Outcome::Scored {
        frac: shared.len() as f64 / NAMESPACES.len() as f64,
        class: Class::K,
        declared_good: ev.is_isc,
        gate_hit: Some(gate_hit),
        evidence,
    }
}

fn mount_at<'a>(ev: &'a Evidence, path: &str) -> Option<&'a procfs::Mount> {
    ev.init.mounts.iter().rev().find(|m| m.mount_point == path)
}

fn kernel_interfaces(ev: &Evidence, p: &Probes<'_>) -> Outcome {
    let mut bad = vec![];
    let mut total = 3;
    let proc_mounted = mount_at(ev, "/proc").is_some();
    if proc_mounted {
        if !mount_at(ev, "/proc/sys").is_some_and(|m| m.read_only()) {
            bad.push("/proc/sys is not a read-only mount".to_string());
        }
        // Masked means covered by a mount; files this kernel does not have need no mask.
        let root = Path::new("/proc").join(ev.init.pid.to_string()).join("root");
        let unmasked: Vec<&str> = [
            "/proc/kcore",
            "/proc/sysrq-trigger",
            "/proc/kallsyms",
            "/proc/kmsg",
            "/proc/keys",
            "/proc/timer_list",
        ]
        .into_iter()
        .filter(|f| mount_at(ev, f).is_none() && root.join(&f[1..]).exists())
        .collect();
        if !unmasked.is_empty() {
            bad.push(format!("not masked: {}", unmasked.join(", ")));
        }
    }
    if let Some(m) = mount_at(ev, "/sys") {
        if !m.read_only() {
            bad.push("/sys is mounted read-write".into());
        }
    }
    let mut class = Class::K;
    if p.available() {
        class = Class::A;
        total += 3;
        for (n, what) in [
            ("open_write:/proc/sysrq-trigger", "write /proc/sysrq-trigger"),
            ("read:/dev/kmsg", "read /dev/kmsg"),
        ] {
            if p.succeeded(n) == Some(true) {
                bad.push(format!("in-dom {what} succeeded"));
            }
        }
        if p.let_through("syscall:finit_module") == Some(true) {
            bad.push(describe(p.get("syscall:finit_module").expect("present")));
        }
    }
    let frac = bad.len() as f64 / total as f64;
    if bad.is_empty() {
        bad.push("/proc/sys ro, kcore and sysrq-trigger masked, no writable /sys; in-dom attempts denied".into());
    }
    Outcome::scored(frac, class, ev.is_isc, bad)
}

fn devices(ev: &Evidence) -> Outcome {
    let dev = Path::new("/proc").join(ev.init.pid.to_string()).join("root/dev");
    let extra: Vec<String> = std::fs::read_dir(&dev)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !DEVICES_ALLOWED.contains(&n.as_str()))
                .collect()
        })
        .unwrap_or_default();
    let mut evidence = vec![];
    let mut frac: f64 = 0.0;
    if !extra.is_empty() {
        frac += 0.5;
        let mut e = extra.clone();
        e.truncate(8);
        evidence.push(format!("{} extra entries in /dev: {}", extra.len(), e.join(", ")));
    }
    let mut class = Class::K;
    let mknods: Vec<&String> = ev.probes.keys().filter(|k| k.starts_with("mknod:")).collect();
    if !mknods.is_empty() {
        class = Class::A;
        for n in mknods {
            let o = &ev.probes[n];
            if o.ok {
                frac += 0.5;
                evidence.push(describe(o));
            }
        }
    }
    if evidence.is_empty() {
        evidence.push("minimal /dev; mknod denied".into());
    }
    Outcome::scored(frac.min(1.0), class, ev.is_isc, evidence)
}

const CONTROL_SOCKETS: &[&str] = &[
    "/var/run/docker.sock",
    "/run/docker.sock",
    "/run/containerd/containerd.sock",
    "/run/dbus/system_bus_socket",
    "/run/podman/podman.sock",
    "/run/isc/dock.sock",
];

fn control_sockets(ev: &Evidence) -> Outcome {
    let root = Path::new("/proc").join(ev.init.pid.to_string()).join("root");
    let mut bad: Vec<String> = CONTROL_SOCKETS
        .iter()
        .filter(|s| root.join(s.trim_start_matches('/')).exists())
        .map(|s| format!("{s} exists in the mount namespace"))
        .collect();
    let mut class = Class::K;
    for (n, o) in ev.probes.iter().filter(|(k, _)| k.starts_with("unix_connect:")) {
        class = Class::A;
        if o.ok {
            bad.push(format!("in-dom {n} succeeded"));
        }
    }
    let frac = if bad.is_empty() { 0.0 } else { 1.0 };
    if bad.is_empty() {
        bad.push("no runtime, Dock or D-Bus socket reachable".into());
    }
    Outcome::scored(frac, class, ev.is_isc, bad)
}

fn service_tree(ev: &Evidence) -> Outcome {
    if ev.procs.is_empty() {
        return Outcome::na("no cgroup process list");
    }
    let root = ev.rootfs.clone();
    let mut foreign = vec![];
    for &pid in &ev.procs {
        let mut cur = pid;
        let mut hops = 0;
        while cur != ev.init.pid && cur > 1 && hops < 64 {
            cur = procfs::parent_of(cur).unwrap_or(0);
            hops += 1;
        }
        if cur != ev.init.pid {
            foreign.push(format!("pid {pid} does not descend from the ISC's PID 1"));
            continue;
        }
        if pid == ev.init.pid {
            continue;
        }
        if let (Some(root), Ok(exe)) = (&root, std::fs::read_link(format!("/proc/{pid}/exe"))) {
            let inner = exe.strip_prefix("/").unwrap_or(&exe);
            // Probe children of PID 1 run the isc binary, which is not in the image.
            let is_init_image =
                std::fs::read_link(format!("/proc/{}/exe", ev.init.pid)).ok() == Some(exe.clone());
            if !root.join(inner).exists() && !is_init_image {
                foreign.push(format!("pid {pid} runs {} which is not in the image", exe.display()));
            }
        }
    }
    let frac = foreign.len() as f64 / ev.procs.len() as f64;
    if foreign.is_empty() {
        foreign.push(format!("{} processes, all in the service tree", ev.procs.len()));
    }
    Outcome::scored(frac, Class::K, ev.is_isc, foreign)
}

const ADMIN_TOOLS: &[&str] =
    &["sh", "bash", "dash", "zsh", "ash", "ksh", "csh", "fish", "sshd", "dropbear", "telnetd"];

fn admin_tools(ev: &Evidence) -> Outcome {
    let mut bad = vec![];
    let pids: Vec<i32> = if ev.procs.is_empty() { vec![ev.service.pid] } else { ev.procs.clone() };
    for pid in pids {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        let comm = comm.trim();
        if ADMIN_TOOLS.contains(&comm) {
            bad.push(format!("pid {pid} is `{comm}`"));
        }
        if procfs::tty_nr(pid).unwrap_or(0) != 0 {
            bad.push(format!("pid {pid} has a controlling terminal"));
        }
    }
    let frac = if bad.is_empty() { 0.0 } else { 1.0 };
    if bad.is_empty() {
        bad.push("no shells or remote-access daemons; no terminal".into());
    }
    Outcome::scored(frac, Class::K, false, bad)
}

fn executables(ev: &Evidence) -> Outcome {
    let root = ev
        .rootfs
        .clone()
        .unwrap_or_else(|| Path::new("/proc").join(ev.init.pid.to_string()).join("root"));
    let mut count = 0usize;
    let mut names = vec![];
    for dir in ["bin", "sbin", "usr/bin", "usr/sbin", "usr/local/bin", "usr/local/sbin"] {
        let d = root.join(dir);
        if std::fs::symlink_metadata(&d).map(|m| m.file_type().is_symlink()).unwrap_or(true) {
            continue; // absent, or the merged-/usr link (counted through its target)
        }
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten().take(5000) {
            use std::os::unix::fs::PermissionsExt;
            let Ok(md) = e.metadata() else { continue };
            if !md.is_file() || md.permissions().mode() & 0o111 == 0 {
                continue;
            }
            let mut head = [0u8; 4];
            let is_exec = std::fs::File::open(e.path())
                .and_then(|mut f| std::io::Read::read(&mut f, &mut head))
                .map(|n| n >= 2 && (head == *b"\x7fELF" || head[..2] == *b"#!"))
                .unwrap_or(false);
            if is_exec {
                count += 1;
                if names.len() < 6 {
                    names.push(format!("/{dir}/{}", e.file_name().to_string_lossy()));
                }
            }
        }
    }
    let shell = ["bin/sh", "bin/bash", "usr/bin/sh", "usr/bin/bash", "bin/dash", "usr/bin/dash"]
        .iter()
        .any(|s| root.join(s).exists());
    let badness = (count.saturating_sub(1) as f64 + if shell { 5.0 } else { 0.0 }) / 10.0;
    let mut evidence = vec![format!("{count} executables ({})", names.join(", "))];
    if shell {
        evidence.push("a shell is in the image".into());
    }
    Outcome::scored(badness, Class::K, false, evidence)
}

fn shared_with_others(ev: &Evidence) -> Outcome {
    if !ev.is_isc {
        return Outcome::na("needs the ISC registry");
    }
    let mut bad = vec![];
    for (name, info) in &ev.others {
        for k in NAMESPACES {
            if let (Some(a), Some(b)) = (ev.init.ns.get(*k), info.ns.get(*k)) {
                if a == b {
                    bad.push(format!("{k} namespace shared with ISC `{name}`"));
                }
            }
        }
    }
    let frac = if bad.is_empty() { 0.0 } else { 1.0 };
    if bad.is_empty() {
        bad.push(format!("no namespace shared with the {} other running ISCs", ev.others.len()));
    }
    Outcome::scored(frac, Class::K, true, bad)
}

fn listener_owners(ev: &Evidence) -> Outcome {
    let pids: Vec<i32> =
        if ev.procs.is_empty() { vec![ev.init.pid, ev.service.pid] } else { ev.procs.clone() };
    let owned: Vec<u64> = pids.iter().flat_map(|p| procfs::socket_inodes(*p)).collect();
    let foreign: Vec<String> = ev
        .init
        .listeners
        .iter()
        .filter(|(_, _, ino)| !owned.contains(ino))
        .map(|(proto, port, _)| format!("{proto} port {port} is held by a process outside the ISC"))
        .collect();
    let frac = if foreign.is_empty() { 0.0 } else { 1.0 };
    let evidence = if foreign.is_empty() {
        vec![format!("{} listeners, all held by the ISC's processes", ev.init.listeners.len())]
    } else {
        foreign
    };
    Outcome::scored(frac, Class::K, false, evidence)
}

fn declared_listeners(ev: &Evidence) -> Outcome {
    let Some(m) = &ev.manifest else {
        return Outcome::na("no declared listener set (foreign process or manifest not published)");
    };
    let declared: Vec<(String, u16)> = m
        .network
        .iter()
        .flat_map(|n| n.listen.iter())
        .map(|l| (l.proto.as_str().to_string(), l.port))
        .collect();
    let mut undeclared = vec![];
    for (proto, port, _) in &ev.init.listeners {
        let p = proto.trim_end_matches('6');
        if !declared.iter().any(|(dp, dport)| dp == p && dport == port) {
            undeclared.push(format!("{proto} port {port} listens but is not declared"));
        }
    }
    let total = ev.init.listeners.len().max(1);
    let frac = undeclared.len() as f64 / total as f64;
    if undeclared.is_empty() {
        undeclared.push(format!("{} listeners, all declared", ev.init.listeners.len()));
    }
    Outcome::scored(frac, Class::K, true, undeclared)
}

fn declared_caps(ev: &Evidence) -> Vec<usize> {
    ev.manifest
        .as_ref()
        .map(|m| m.security.capabilities.iter().filter_map(|c| cap_number(c)).collect())
        .unwrap_or_default()
}

fn raw_sockets(ev: &Evidence, p: &Probes<'_>) -> Outcome {
    let raw = cap_number("NET_RAW").expect("known");
    let declared = declared_caps(ev).contains(&raw);
    let mut bad = vec![];
    if ev.service.caps("CapBnd") & (1 << raw) != 0 {
        bad.push("NET_RAW in the service's bounding set".to_string());
    }
    let mut class = Class::K;
    if p.available() {
        class = Class::A;
        for n in ["socket:packet", "socket:raw4", "socket:raw6"] {
            if p.succeeded(n) == Some(true) {
                bad.push(format!("in-dom {n} succeeded"));
            }
        }
    }
    let frac = if bad.is_empty() { 0.0 } else { 1.0 };
    if bad.is_empty() {
        bad.push("no NET_RAW; raw and packet sockets refused".into());
    }
    Outcome::scored(frac, class, ev.is_isc && !declared, bad)
}

fn low_ports(ev: &Evidence) -> Outcome {
    let nbs = cap_number("NET_BIND_SERVICE").expect("known");
    let declared = declared_caps(ev).contains(&nbs);
    let held = (ev.service.caps("CapEff") | ev.service.caps("CapAmb") | ev.service.caps("CapPrm"))
        & (1 << nbs)
        != 0;
    let bad = held && !declared;
    Outcome::scored(
        if bad { 1.0 } else { 0.0 },
        Class::K,
        ev.is_isc,
        vec![format!("NET_BIND_SERVICE held: {held}, declared: {declared}")],
    )
}

fn default_deny(ev: &Evidence) -> Outcome {
    let ifs: Vec<&String> = ev.init.interfaces.iter().filter(|i| i.as_str() != "lo").collect();
    if ifs.is_empty() && !ev.init.interfaces.is_empty() {
        Outcome::scored(
            0.0,
            Class::K,
            ev.is_isc,
            vec!["the network namespace has no interface but lo: nothing can leave".into()],
        )
    } else {
        Outcome::na(format!(
            "interfaces {:?}: checking nft/BPF default-deny rules is not supported yet",
            ev.init.interfaces
        ))
    }
}

fn egress_canary(ev: &Evidence, p: &Probes<'_>) -> Outcome {
    if !p.available() {
        return no_probes(ev);
    }
    let mut bad = vec![];
    let mut evidence = vec![];
    if let Some((port, received)) = ev.sink {
        let n = format!("tcp_connect:127.0.0.1:{port}");
        if let Some(o) = p.get(&n) {
            evidence.push(format!("sink on undeclared port {port}: {}", describe(o)));
        }
        if received || p.succeeded(&n) == Some(true) {
            bad.push(format!(
                "the verifier's sink on undeclared port {port} received a connection"
            ));
        }
    } else {
        evidence.push("no sink could be created in the ISC's netns".into());
    }
    for n in
        ["tcp_connect:192.0.2.1:443", "tcp_connect:[2001:db8::1]:443", "udp_send:198.51.100.53:53"]
    {
        if let Some(o) = p.get(n) {
            evidence.push(describe(o));
            if o.ok {
                bad.push(format!("in-dom {n} succeeded"));
            }
        }
    }
    if bad.is_empty() {
        Outcome::scored(0.0, Class::A, ev.is_isc, evidence)
    } else {
        bad.extend(evidence);
        Outcome::scored(1.0, Class::A, ev.is_isc, bad)
    }
}

fn host_unreachable(ev: &Evidence, p: &Probes<'_>) -> Outcome {
    if !p.available() {
        return no_probes(ev);
    }
    let mut bad = vec![];
    let mut evidence = vec![];
    for (n, o) in ev.probes.iter().filter(|(k, _)| {
        k.starts_with("tcp_connect:169.254.")
            || k.ends_with(":22") && k.starts_with("tcp_connect:")
            || k.as_str() == "unix_connect:/run/isc/dock.sock"
    }) {
        evidence.push(describe(o));
        if o.ok {
            bad.push(format!("in-dom {n} succeeded"));
        }
    }
    let frac = if bad.is_empty() { 0.0 } else { 1.0 };
    bad.extend(evidence);
    Outcome::scored(frac, Class::A, ev.is_isc, bad)
}

fn exotic_families(ev: &Evidence, p: &Probes<'_>) -> Outcome {
    if !p.available() {
        return no_probes(ev);
    }
    let fams = ["vsock", "alg", "key", "bluetooth", "xdp", "tipc", "can", "rds"];
    let allowed: Vec<&str> = fams
        .iter()
        .copied()
        .filter(|f| p.succeeded(&format!("socket:{f}")) == Some(true))
        .collect();
    let mut evidence = vec![if allowed.is_empty() {
        format!("{} exotic families refused", fams.len())
    } else {
        format!("allowed: {}", allowed.join(", "))
    }];
    if p.succeeded("socket:netlink") == Some(true) {
        evidence.push("AF_NETLINK allowed (by the default profile; not scored)".into());
    }
    Outcome::scored(if allowed.is_empty() { 0.0 } else { 1.0 }, Class::A, ev.is_isc, evidence)
}
