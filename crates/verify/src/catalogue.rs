//! The check catalogue (VERIFY-CATALOGUE.md §3) as data: every check with its principle,
//! weight and range on the systemd-analyze-security scale, gate flag, evidence class, anchor,
//! rationale and fix hint. `isc verify --list` prints it and `docs/verify.md` is generated from
//! it ([`markdown`]), so the documentation cannot drift from what is scored.

use serde::Serialize;

/// Evidence classes, strongest first (catalogue §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Class {
    /// Active probe from inside the live confinement (forked by the ISC's PID 1).
    A,
    /// Kernel state read from /proc, cgroupfs, netlink.
    K,
    /// Configuration only (the manifest).
    C,
}

impl Class {
    pub fn as_str(self) -> &'static str {
        match self {
            Class::A => "A",
            Class::K => "K",
            Class::C => "C",
        }
    }
}

/// The nine principles plus the Dock's duties.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Principle {
    P1,
    P2,
    P3,
    P4,
    P5,
    P6,
    P7,
    P8,
    P9,
    Dock,
}

impl Principle {
    pub const ALL: [Principle; 10] = [
        Principle::P1,
        Principle::P2,
        Principle::P3,
        Principle::P4,
        Principle::P5,
        Principle::P6,
        Principle::P7,
        Principle::P8,
        Principle::P9,
        Principle::Dock,
    ];

    pub fn id(self) -> &'static str {
        match self {
            Principle::P1 => "P1",
            Principle::P2 => "P2",
            Principle::P3 => "P3",
            Principle::P4 => "P4",
            Principle::P5 => "P5",
            Principle::P6 => "P6",
            Principle::P7 => "P7",
            Principle::P8 => "P8",
            Principle::P9 => "P9",
            Principle::Dock => "D",
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            Principle::P1 => "Secure component (kernel attack surface)",
            Principle::P2 => "One logical service",
            Principle::P3 => "Only required services exposed",
            Principle::P4 => "Outbound restricted",
            Principle::P5 => "Immutable critical items",
            Principle::P6 => "Encrypted sensitive storage",
            Principle::P7 => "Unique credentials, least privilege",
            Principle::P8 => "Monitor and audit",
            Principle::P9 => "Resource-controlled",
            Principle::Dock => "Dock duties",
        }
    }
}

/// One check of the catalogue.
#[derive(Debug, Clone, Serialize)]
pub struct CheckDef {
    pub id: &'static str,
    pub principle: Principle,
    pub title: &'static str,
    /// Weight on the systemd scale; 0 for gate-only checks.
    pub weight: u32,
    /// Range of the badness (0..=range).
    pub range: u32,
    pub gate: bool,
    /// What the catalogue says makes it a gate, when only part of it is (P1.4, P5.6).
    pub gate_note: &'static str,
    /// Evidence classes this implementation uses, strongest first.
    pub classes: &'static [Class],
    /// What is probed or read.
    pub probe: &'static str,
    pub anchor: &'static str,
    /// Why it matters.
    pub rationale: &'static str,
    /// How to fix a failure.
    pub fix: &'static str,
    /// Implemented by this build; otherwise reported `n/a (not supported yet)`.
    pub supported: bool,
}

use Class::{A, C, K};
use Principle::*;

macro_rules! check {
    ($id:literal, $p:ident, $title:literal, $w:literal / $r:literal, gate=$g:literal, $note:literal,
     [$($cl:ident),*], $probe:literal, $anchor:literal, $why:literal, $fix:literal, $sup:literal) => {
        CheckDef { id: $id, principle: $p, title: $title, weight: $w, range: $r, gate: $g,
            gate_note: $note, classes: &[$($cl),*], probe: $probe, anchor: $anchor,
            rationale: $why, fix: $fix, supported: $sup }
    };
}

/// Every check, in catalogue order.
pub const CATALOGUE: &[CheckDef] = &[
    check!("P1.1", P1, "seccomp active and blocking", 1500/10, gate=false, "", [A, K],
        "`Seccomp: 2` in status of PID 1 and the service; in-dom one syscall per dangerous group (@mount, @module, @raw-io, @reboot, @swap, @clock, @debug); badness = share let through",
        "systemd SystemCallFilter; CIS 5.22; PSS", "Every syscall the filter lets through is kernel attack surface reachable from the service.",
        "do not run with the seccomp filter disabled; remove dangerous entries from [security] allow_syscalls", true),
    check!("P1.2", P1, "native ABI only", 1000/10, gate=false, "", [A],
        "in-dom x86-64 `int 0x80` gives ENOSYS or SIGSYS", "systemd SystemCallArchitectures",
        "The 32-bit entry points bypass filters written for the native syscall numbers.",
        "keep the seccomp filter (its arch check kills foreign-ABI calls)", true),
    check!("P1.3", P1, "MAC LSM enforcing", 1000/1, gate=false, "", [K],
        "`/proc/PID/attr/current` shows an enforced profile, not `unconfined`", "CIS 5.2/5.3; PSS; KCCSS R-2",
        "A mandatory access control profile is an independent second layer.",
        "isc does not load an AppArmor/SELinux profile yet", false),
    check!("P1.4", P1, "no host namespaces", 2500/8, gate=true, "gate: net, pid, user", [K],
        "`/proc/PID/ns/*` inodes differ from `/proc/1/ns/*` (mnt, pid, net, ipc, uts, user, cgroup, time)",
        "CIS 5.10/16/17/21/31; PSS; systemd Private*", "A shared namespace exposes the host's view (network, processes, ids) to the service.",
        "run every ISC in its own namespaces (never share the host's)", true),
    check!("P1.5", P1, "kernel interfaces closed", 1000/5, gate=false, "", [A, K],
        "mountinfo: `/proc/sys` ro, `/sys` absent or ro, `/proc/kcore` and `/proc/sysrq-trigger` masked; in-dom write `/proc/sysrq-trigger`, read `/dev/kmsg`, `finit_module` denied",
        "systemd ProtectKernel*, ProtectProc; PSS procMount", "Writable kernel tunables and unmasked /proc files leak or change host kernel state.",
        "keep /proc masked and /proc/sys read-only (never run with unmasked-proc)", true),
    check!("P1.6", P1, "no device access", 1000/10, gate=false, "", [A, K],
        "`/dev` holds only null, zero, full, random, urandom, tty (+ pts, shm, fd links); in-dom `mknod` gives EPERM",
        "CIS 5.5/5.18; systemd PrivateDevices, DeviceAllow", "Device nodes are direct paths into drivers.",
        "keep the minimal /dev and drop CAP_MKNOD", true),
    check!("P1.7", P1, "no control sockets", 0/1, gate=true, "", [A, K],
        "no docker.sock, containerd.sock, isc control socket or system D-Bus socket in the mount ns; in-dom `connect()` to these and to abstract sockets fails",
        "CIS 5.32", "A reachable runtime socket is root on the host.",
        "never bind-mount runtime or D-Bus sockets into an ISC", true),
    check!("P1.8", P1, "namespace creation blocked", 1500/3, gate=false, "", [A],
        "in-dom `unshare(NEWUSER)`, `unshare(NEWNS)`, `unshare(NEWNET)` give EPERM", "systemd RestrictNamespaces",
        "New user namespaces give the service a full capability set against large kernel surfaces.",
        "keep the seccomp filter (it refuses namespace flags)", true),
    check!("P2.1", P2, "processes equal the service tree", 1000/10, gate=false, "", [K],
        "every PID in the ISC's cgroup descends from the ISC's PID 1 and runs an executable of the image (PID 1 itself: the isc binary)",
        "CIS 5.3; 800-190 §4.4.4", "A process that is not part of the service tree was injected or escaped supervision.",
        "find out how the extra process entered the cgroup; stop and restart the ISC", true),
    check!("P2.2", P2, "no admin or interactive tools", 1000/1, gate=false, "", [K],
        "no sshd or shells among the processes; `tty_nr` = 0", "CIS 5.7",
        "Shells and remote-access daemons turn a service compromise into an interactive session.",
        "run the service binary directly in [service] exec, not through a shell", true),
    check!("P2.3", P2, "minimal executables", 500/10, gate=false, "", [K],
        "count executable ELF and `#!` files in the image; a shell in the image adds 5", "800-190",
        "Every executable in the image is a tool for an attacker.",
        "list only the service's own binaries in [image] paths", true),
    check!("P2.4", P2, "nothing shared with another ISC", 1000/1, gate=true, "", [K],
        "namespace inodes and cgroup compared pairwise with every other running ISC", "ISC",
        "ISCs that share a namespace are one security domain.", "give every ISC its own namespaces", true),
    check!("P2.5", P2, "listeners belong to the service", 500/1, gate=false, "", [K],
        "each listening socket inode is held by a process of the ISC", "new",
        "A listener held by a foreign process is a backdoor into the ISC's network namespace.",
        "stop the foreign process holding the socket", true),
    check!("P2.6", P2, "no drift", 500/1, gate=false, "", [K],
        "repeat P2.1 and P2.5 over a window", "800-190",
        "Point-in-time checks miss processes that come and go.", "needs the Dock's periodic re-verification", false),
    check!("P3.1", P3, "listeners equal the declared set", 1500/10, gate=false, "", [K, C],
        "`/proc/PID/net/tcp{,6}` st=0A, `udp{,6}` st=07 versus [network] listen", "CIS 5.9 (Manual); KCCSS R-5",
        "An undeclared listener is an exposed service nobody reviewed.",
        "declare the port in [network] listen or stop the service from listening", true),
    check!("P3.2", P3, "port scan", 1500/10, gate=false, "", [A],
        "TCP/UDP from the Dock and a neighbour netns, v4 and v6; only declared ports answer", "new",
        "What answers from outside is what is exposed.", "needs the Dock's network (issue: net integration)", false),
    check!("P3.3", P3, "explicit host publication", 500/1, gate=false, "", [K, C],
        "host nft DNAT pinned to daddr/iif; ports below 1024 only if declared", "CIS 5.8/5.14; PSS hostPort",
        "Publishing on every host address exposes the service more widely than intended.",
        "needs the Dock's nftables publication", false),
    check!("P3.4", P3, "no raw or packet sockets", 1000/1, gate=false, "", [A, K],
        "NET_RAW not in CapBnd; in-dom `socket(AF_PACKET)` and `socket(SOCK_RAW)` refused", "systemd AF_PACKET, NET_RAW; Polaris",
        "Raw sockets allow spoofing and sniffing.", "remove NET_RAW from [security] capabilities", true),
    check!("P3.5", P3, "low-port bind only if declared", 100/1, gate=false, "", [K, C],
        "NET_BIND_SERVICE in CapEff only if declared", "PSS (the only add allowed)",
        "Low ports are privileged for a reason.", "declare NET_BIND_SERVICE or listen on a port ≥ 1024", true),
    check!("P4.1", P4, "default-deny installed", 1000/10, gate=false, "", [K],
        "the ISC's netns has no interface but `lo` (nothing can leave), or an nft output drop / cgroup egress BPF is installed",
        "systemd IPAddressDeny; KCCSS R-4; Polaris; 800-190 §4.4.2", "Without default-deny every undeclared destination is reachable.",
        "run the ISC without a network or with the Dock's default-deny ruleset", true),
    check!("P4.2", P4, "egress canary", 2500/1, gate=true, "", [A],
        "in-dom `connect()` to a verifier-owned sink on an undeclared port in the ISC's netns, to TEST-NET v4/v6, and a UDP DNS query; the sink receives nothing",
        "new", "Only a connection attempt proves egress is blocked; a ruleset can be present and not apply.",
        "keep Landlock TCP connect rules and the default-deny network", true),
    check!("P4.3", P4, "declared egress works", 100/1, gate=false, "", [A],
        "declared destinations are reachable (catches stale policy)", "new",
        "A policy that blocks declared traffic gets disabled by operators.", "needs the Dock's network", false),
    check!("P4.4", P4, "host, Dock and metadata unreachable", 1000/1, gate=true, "", [A],
        "in-dom connect to the host's addresses, the Dock's control sockets and 169.254.169.254 fails", "new",
        "The host, the Dock API and cloud metadata are the classic pivots out of a container.",
        "keep the ISC off the host network and out of the host's mount namespace", true),
    check!("P4.5", P4, "exotic socket families refused", 1250/1, gate=false, "", [A],
        "in-dom `socket()` of AF_VSOCK, AF_ALG, AF_KEY, AF_BLUETOOTH, AF_XDP, AF_TIPC, AF_CAN, AF_RDS refused (AF_NETLINK is allowed by the default profile and reported only)",
        "systemd RestrictAddressFamilies", "Rarely used protocol families carry a disproportionate share of kernel CVEs.",
        "keep the seccomp socket-family filter", true),
    check!("P4.6", P4, "Landlock network rules", 200/1, gate=false, "", [A],
        "in-dom TCP bind to an undeclared port gives EACCES (Landlock ABI ≥ 4)", "new",
        "A second, independent layer restricting TCP ports from inside.", "do not disable Landlock", true),
    check!("P5.1", P5, "root read-only", 1000/10, gate=false, "", [K, C],
        "mountinfo for `/` has per-mount `ro`, with no overlay upperdir", "CIS 5.13; Polaris; systemd ProtectSystem; KCCSS K-5; Solaris strict",
        "A writable root lets a compromise persist and modify the service.", "never run with a writable root", true),
    check!("P5.2", P5, "write probe", 2000/10, gate=true, "", [A],
        "in-dom as the service uid: O_CREAT|O_EXCL in /, /etc, /bin, /usr, /usr/bin, /lib and the exec's directory; open(O_WRONLY) on the service binary; all must fail",
        "Solaris MWAC", "The promise of an immutable service container, tested as the attacker would.",
        "keep the root read-only and Landlock on", true),
    check!("P5.3", P5, "no remount", 1000/1, gate=false, "", [A],
        "in-dom `mount(MS_REMOUNT|MS_BIND)` of / (never weaker than before) and a mount of a new filesystem give EPERM",
        "systemd @mount, PrivateMounts, CAP_SYS_ADMIN", "A remount undoes read-only in one syscall.",
        "drop CAP_SYS_ADMIN and keep the seccomp filter", true),
    check!("P5.4", P5, "writable mounts declared, and W^X", 1000/10, gate=false, "", [A, K, C],
        "each rw mount is declared and `nosuid,nodev,noexec`; in-dom write-then-`execve` fails on every writable mount",
        "Solaris profiles; systemd RestrictSUIDSGID", "Writable and executable means downloaded code can run.",
        "remove `exec = true` from [filesystem] tmpfs; declare every writable path", true),
    check!("P5.5", P5, "integrity against reference", 1500/10, gate=false, "", [K],
        "BART-style manifest through `/proc/PID/root` compared with the image's build manifest", "Solaris BART",
        "Proves the files are the ones that were built.", "needs the image store integration (issue 3)", false),
    check!("P5.6", P5, "no sensitive host directories or shared propagation", 1500/1, gate=true, "gate: rw host dirs", [K],
        "mountinfo: no bind of a host system directory, no `shared:N` propagation", "CIS 5.6/5.20; PSS hostPath; 800-190 §4.5.5",
        "Host directories inside the ISC are a path to the host.", "do not bind host system directories; keep propagation private", true),
    check!("P6.1", P6, "encrypted at rest", 1500/10, gate=false, "", [K],
        "every writable mount is a tmpfs (or dm-crypt / fscrypt)", "ISC (encrypted scratch)",
        "Data written to disk in plaintext outlives the ISC.", "use tmpfs or encrypted volumes for writable paths", true),
    check!("P6.2", P6, "no plaintext spill", 1000/3, gate=false, "", [K],
        "host swap absent or dm-crypt; ISC swap limited to 0; core limit 0", "ISC (encrypted swap)",
        "Swap and core dumps copy memory contents to disk.", "set resources.swap = 0 and keep RLIMIT_CORE at 0", true),
    check!("P6.3", P6, "no secrets in env or argv", 1000/1, gate=false, "", [K, C],
        "`/proc/PID/environ` and `cmdline` of the service scanned for secret-looking names and values", "Polaris; KCCSS K-21",
        "Environment variables leak into logs, crash reports and child processes.",
        "deliver secrets through [secrets] (0400 files on a private tmpfs)", true),
    check!("P6.4", P6, "cross-ISC confidentiality", 500/1, gate=false, "", [A],
        "a probe with a sibling ISC's identity cannot read the secret", "systemd PrivateTmp",
        "Secrets must stay in their ISC.", "needs [secrets] (issue 6)", false),
    check!("P6.5", P6, "private keyring", 500/1, gate=false, "", [A],
        "the session keyring differs from every other ISC's", "systemd KeyringMode",
        "A shared keyring shares keys.", "needs keyring support", false),
    check!("P7.1", P7, "non-root", 2000/10, gate=false, "", [K, C],
        "status Uid and Gid ≠ 0 inside, and the host ids mapped through uid_map/gid_map ≠ 0", "systemd User=; PSS; Polaris; KCCSS K-2",
        "Root inside is one kernel bug from root outside.", "set [service] user to a non-zero uid", true),
    check!("P7.2", P7, "unique identity", 1500/1, gate=true, "", [K],
        "uid_map is not the identity map; the host range excludes 0 and is disjoint from every other running ISC", "CIS 5.31; systemd PrivateUsers",
        "Two ISCs with the same host uid can signal and read each other.", "let isc allocate a unique uid range per ISC", true),
    check!("P7.3", P7, "minimal capabilities", 1500/10, gate=false, "", [K, C],
        "CapEff/CapPrm/CapAmb/CapBnd within the declared set; badness = Σ per-capability weights (systemd's)", "systemd per-cap weights; PSS drop ALL; CIS 5.4; Polaris",
        "Every capability is a privilege the kernel honours.", "remove capabilities from [security] capabilities", true),
    check!("P7.4", P7, "no new privileges", 1000/1, gate=false, "", [K, C],
        "`NoNewPrivs: 1` for PID 1 and the service", "systemd; CIS 5.26; PSS; Polaris",
        "Without no_new_privs, setuid binaries and file caps raise privileges.", "never run with no_new_privs off", true),
    check!("P7.5", P7, "no extra or root groups", 200/1, gate=false, "", [K],
        "`Groups:` empty", "systemd SupplementaryGroups; PSS", "Supplementary groups grant file access nobody declared.",
        "isc clears supplementary groups; report a bug", true),
    check!("P7.6", P7, "escalation battery", 1000/10, gate=false, "", [A],
        "in-dom setuid(0), raising caps, ptrace(ATTACH), bpf(PROG_LOAD), perf_event_open, SCHED_FIFO, W+X mmap, personality: all must fail",
        "systemd @privileged, @debug, RestrictRealtime, MDWE", "Each is a known escalation or exploitation primitive.",
        "keep seccomp and no capabilities; isc applies MDWE (PR_SET_MDWE) to PID 1 and the service: a W+X mapping here means the kernel lacks it (Linux 6.3+)", true),
    check!("P7.7", P7, "umask", 100/10, gate=false, "", [K],
        "status `Umask` ⊇ 027", "systemd UMask", "A loose umask makes new files readable by others.",
        "isc sets umask 027 before exec; a looser one means the service changed it", true),
    check!("P8.1", P8, "audit live", 1000/1, gate=false, "", [K],
        "AUDIT_GET enabled, collector pid set, lost stable; rules cover the ISC", "ISC",
        "Without audit, denials go unseen.", "needs the audit integration (issue 7)", false),
    check!("P8.2", P8, "attributable records", 500/1, gate=false, "", [K],
        "unique uids; Dock-set loginuid/sessionid", "ISC", "Records must name the ISC.", "needs the audit integration", false),
    check!("P8.3", P8, "log channel", 1000/1, gate=false, "", [K],
        "`/proc/PID/fd/{1,2}` of the service are pipes held by the isc monitor (the collector)", "Solaris strict; ISC",
        "Logs that stay inside the ISC can be erased by an attacker.", "keep the service's stdout/stderr on the monitor's pipes", true),
    check!("P8.4", P8, "closed-loop canary", 2000/1, gate=true, "", [A],
        "trigger denials; matching audit records must reach the central store within T seconds", "new",
        "Proves the audit trail works end to end.", "needs the audit integration (issue 7)", false),
    check!("P8.5", P8, "logs tamper-proof", 500/1, gate=false, "", [A, K],
        "AUDIT_CONTROL and SYSLOG not in CapBnd; in-dom read of `/dev/kmsg` denied", "systemd CAP_AUDIT_*, ProtectKernelLogs",
        "A service that can change audit rules or read the kernel log hides its tracks.", "drop AUDIT_* and SYSLOG capabilities", true),
    check!("P8.6", P8, "health signal", 100/1, gate=false, "", [C],
        "a health probe is defined and recent", "CIS 5.27", "Unhealthy services should be noticed.", "needs health probes in the manifest", false),
    check!("P9.1", P9, "memory", 1000/1, gate=false, "", [K, C],
        "memory limit set in the ISC's cgroup (`memory.max` / `memory.limit_in_bytes`)", "CIS 5.11; Polaris; KCCSS K-8",
        "Without a memory limit one ISC can exhaust the host.", "set resources.memory", true),
    check!("P9.2", P9, "CPU", 500/1, gate=false, "", [K, C],
        "`cpu.max` ≠ max or `cpu.weight` set (v1: `cfs_quota_us`, `cpu.shares` ≠ 1024)", "CIS 5.12; Polaris",
        "Without a CPU limit one ISC can starve the others.", "set resources.cpu or resources.cpu_weight", true),
    check!("P9.3", P9, "pids", 1000/1, gate=false, "", [K, C],
        "`pids.max` set and ≤ the declared value", "CIS 5.29", "A fork bomb takes the host down.", "set resources.pids", true),
    check!("P9.4", P9, "storage quota", 1000/1, gate=false, "", [K],
        "every writable tmpfs has `size=` in its super options", "new", "An unbounded tmpfs is unbounded memory.",
        "give every tmpfs a size", true),
    check!("P9.5", P9, "I/O bandwidth", 500/1, gate=false, "", [K],
        "`io.max` rbps/wbps/iops (v1: `blkio.throttle.*`)", "new", "Disk bandwidth is shared.", "needs IO throttle support in the manifest", false),
    check!("P9.6", P9, "network bandwidth", 500/1, gate=false, "", [K],
        "a tbf/htb/fq maxrate on the host-side veth, plus ingress policing", "new", "Network bandwidth is shared.",
        "needs the Dock's network", false),
    check!("P9.7", P9, "rlimits and RT", 500/1, gate=false, "", [A, K],
        "`/proc/PID/limits`: core 0, nofile finite, rtprio 0; no SYS_RESOURCE or SYS_NICE in CapBnd; in-dom hard-rlimit raise gives EPERM",
        "CIS 5.19; systemd RestrictRealtime", "Limits the service cannot raise are limits.", "keep the defaults; drop SYS_RESOURCE and SYS_NICE", true),
    check!("P9.8", P9, "failure containment", 100/1, gate=false, "", [K],
        "`memory.oom.group` = 1 (cgroup v2); bounded restarts", "CIS 5.15",
        "Half-killed services behave unpredictably.", "needs the v2 memory controller", true),
    check!("D1", Dock, "reachability matrix equals policy", 0/1, gate=true, "", [A],
        "in-dom connect from every ISC to every other's ports and the host; diff against the policy graph", "KCCSS R-3/R-4; Polaris; ISC",
        "The Dock's core promise.", "needs the Dock", false),
    check!("D2", Dock, "anti-spoofing", 500/1, gate=false, "", [K],
        "rp_filter, or nft iif+saddr pinning, per veth", "new", "Spoofed sources defeat address-based policy.", "needs the Dock's network", false),
    check!("D3", Dock, "aggregate capacity", 500/1, gate=false, "", [K],
        "Σ memory limit of the running ISCs ≤ RAM − reserve; one leaf cgroup per ISC", "CIS 5.25",
        "Overcommitted limits are no limits.", "lower memory limits or run fewer ISCs", true),
    check!("D4", Dock, "identity uniqueness", 1500/1, gate=false, "", [K],
        "pairwise: host uid ranges, namespace inodes of the running ISCs", "new", "See P2.4 and P7.2, across the Dock.",
        "let isc allocate identities", true),
    check!("D5", Dock, "collection coverage", 1000/1, gate=false, "", [K],
        "every ISC has a live stream, audit rules, and a recent P8.4 pass", "ISC", "Unmonitored ISCs are blind spots.",
        "needs the Dock and audit", false),
    check!("D6", Dock, "host prerequisites", 500/6, gate=false, "", [K],
        "cgroup v2; a MAC LSM and landlock listed; unprivileged_bpf_disabled ≥ 1; yama.ptrace_scope ≥ 1; kptr_restrict ≥ 1; dmesg_restrict = 1",
        "CIS §1–2", "The host's own hardening bounds every ISC's.", "harden the host sysctls and boot with a MAC LSM", true),
];

/// The check with this id.
pub fn find(id: &str) -> Option<&'static CheckDef> {
    CATALOGUE.iter().find(|c| c.id == id)
}

fn classes(c: &CheckDef) -> String {
    c.classes.iter().map(|c| c.as_str()).collect::<Vec<_>>().join("+")
}

/// One line per check, for `isc verify --list`.
pub fn list_text() -> String {
    let mut out = String::new();
    for p in Principle::ALL {
        out.push_str(&format!("{} {}\n", p.id(), p.title()));
        for c in CATALOGUE.iter().filter(|c| c.principle == p) {
            out.push_str(&format!(
                "  {:<5} {:<48} {:>5}/{:<3} {:<4} {:<6} {}\n",
                c.id,
                c.title,
                c.weight,
                c.range,
                if c.gate { "GATE" } else { "" },
                classes(c),
                if c.supported { "" } else { "n/a (not supported yet)" }
            ));
        }
    }
    out
}

/// The reference page `docs/verify.md`, generated from the catalogue.
pub fn markdown() -> String {
    let mut s = String::from(include_str!("doc_header.md"));
    for p in Principle::ALL {
        s.push_str(&format!("\n### {} {}\n\n", p.id(), p.title()));
        s.push_str("| ID | Check | Evidence | W/R | Gate | Built | What is probed | Anchors | Why | Fix |\n");
        s.push_str("|---|---|---|---|---|---|---|---|---|---|\n");
        for c in CATALOGUE.iter().filter(|c| c.principle == p) {
            let gate = match (c.gate, c.gate_note) {
                (false, _) => String::new(),
                (true, "") => "**G**".into(),
                (true, n) => format!("**G** ({n})"),
            };
            s.push_str(&format!(
                "| {} | {} | {} | {}/{} | {} | {} | {} | {} | {} | {} |\n",
                c.id,
                c.title,
                classes(c),
                c.weight,
                c.range,
                gate,
                if c.supported { "yes" } else { "n/a (not supported yet)" },
                c.probe.replace('|', "\\|"),
                c.anchor,
                c.rationale,
                c.fix
            ));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalogue_has_the_63_checks_with_unique_ids_and_sane_ranges() {
        assert_eq!(CATALOGUE.len(), 63);
        let counts: Vec<usize> = Principle::ALL
            .iter()
            .map(|p| CATALOGUE.iter().filter(|c| c.principle == *p).count())
            .collect();
        assert_eq!(counts, vec![8, 6, 5, 6, 6, 5, 7, 6, 8, 6]);
        let mut ids: Vec<_> = CATALOGUE.iter().map(|c| c.id).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 63);
        for c in CATALOGUE {
            assert!(c.range >= 1, "{}", c.id);
            assert!(c.weight > 0 || c.gate, "{}: weightless checks must be gates", c.id);
            assert!(!c.classes.is_empty(), "{}", c.id);
        }
        assert!(find("P5.2").unwrap().gate);
        assert!(find("X9").is_none());
    }
}
