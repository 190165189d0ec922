//! Collecting the evidence for one verification: K evidence from /proc and the cgroup, C
//! evidence from the manifest published in the ISC's state, and A evidence from one batch of
//! probes run by the ISC's PID 1 (through a [`ProbeTransport`], so evaluation is unit-testable).

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::path::PathBuf;

use isc_engine::probe::ProbeOutcome;
use isc_engine::state::IscState;
use isc_manifest::Manifest;

use crate::procfs::{self, ProcInfo};

/// Runs probes inside the live confinement (in production: the monitor's control socket).
pub trait ProbeTransport {
    fn run(&self, names: &[String]) -> Result<Vec<ProbeOutcome>, String>;
}

/// What is being verified.
#[derive(Debug, Clone)]
pub enum Target {
    /// A running ISC: its registry entry, its cgroup directories, every other running ISC.
    Isc { state: Box<IscState>, cgroup_dirs: Vec<PathBuf>, others: Vec<IscState> },
    /// Any process on the host (weaker evidence: no probes, no declared configuration).
    Pid { pid: i32, cgroup_dirs: Vec<PathBuf> },
}

/// A listener owned by the verifier inside the ISC's network namespace: the egress canary's
/// sink (P4.2). It is created by a short-lived thread that joins the netns with setns(2)
/// (namespaces are per thread; the socket stays in the netns it was created in).
pub struct Sink {
    listener: TcpListener,
    pub port: u16,
}

impl Sink {
    pub fn in_netns_of(pid: i32) -> io::Result<Sink> {
        let ns = fs::File::open(format!("/proc/{pid}/ns/net"))?;
        let listener = std::thread::spawn(move || -> io::Result<TcpListener> {
            // SAFETY: setns on this (short-lived, dedicated) thread with a netns fd we opened.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            TcpListener::bind("127.0.0.1:0")
        })
        .join()
        .map_err(|_| io::Error::other("sink thread panicked"))??;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        Ok(Sink { listener, port })
    }

    /// Did anything connect?
    pub fn received(&self) -> bool {
        self.listener.accept().is_ok()
    }
}

/// Everything the checks look at.
#[derive(Default)]
pub struct Evidence {
    pub is_isc: bool,
    pub name: String,
    pub init: ProcInfo,
    pub service: ProcInfo,
    /// Other processes in the cgroup.
    pub procs: Vec<i32>,
    pub host_ns: BTreeMap<String, String>,
    pub manifest: Option<Manifest>,
    pub probes: BTreeMap<String, ProbeOutcome>,
    pub probe_error: Option<String>,
    /// Sink port and whether it saw a connection.
    pub sink: Option<(u16, bool)>,
    /// cgroup file name → contents (first directory that has it).
    pub cgroup: BTreeMap<String, String>,
    pub others: Vec<(String, ProcInfo)>,
    pub rootfs: Option<PathBuf>,
    pub monitor_pid: Option<i32>,
    /// Host ipv4 addresses (not loopback), for P4.4.
    pub host_addrs: Vec<String>,
}

/// cgroup files the checks read.
const CGROUP_FILES: &[&str] = &[
    "memory.max",
    "memory.swap.max",
    "memory.limit_in_bytes",
    "memory.memsw.limit_in_bytes",
    "memory.oom.group",
    "cpu.max",
    "cpu.weight",
    "cpu.cfs_quota_us",
    "cpu.shares",
    "pids.max",
    "cgroup.procs",
];

fn read_cgroup(dirs: &[PathBuf]) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    for f in CGROUP_FILES {
        for d in dirs {
            if let Ok(t) = fs::read_to_string(d.join(f)) {
                if *f == "cgroup.procs" {
                    m.entry(f.to_string()).or_insert_with(String::new).push_str(&t);
                } else {
                    m.entry(f.to_string()).or_insert(t.trim().to_string());
                }
            }
        }
    }
    m
}

fn host_ipv4_addrs() -> Vec<String> {
    let mut out = vec![];
    let mut ifa: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs allocates a list we walk read-only and free once.
    unsafe {
        if libc::getifaddrs(&mut ifa) != 0 {
            return out;
        }
        let mut p = ifa;
        while !p.is_null() {
            let a = (*p).ifa_addr;
            if !a.is_null() && (*a).sa_family as i32 == libc::AF_INET {
                let sin = &*(a as *const libc::sockaddr_in);
                let ip = std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
                if !ip.is_loopback() {
                    out.push(ip.to_string());
                }
            }
            p = (*p).ifa_next;
        }
        libc::freeifaddrs(ifa);
    }
    out.sort();
    out.dedup();
    out.truncate(4);
    out
}

/// The state records the service's pid inside the ISC's PID namespace; the host pid is the
/// process of the cgroup whose innermost `NSpid` is that pid and whose parent is PID 1.
fn host_pid_of_service(cgroup: &BTreeMap<String, String>, state: &IscState) -> i32 {
    let procs = cgroup.get("cgroup.procs").map(String::as_str).unwrap_or("");
    for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
        if procfs::parent_of(pid) != Some(state.init_pid) {
            continue;
        }
        let status = procfs::parse_status(
            &fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default(),
        );
        let inner = status
            .get("NSpid")
            .and_then(|v| v.split_whitespace().last())
            .and_then(|v| v.parse::<i32>().ok());
        if inner == Some(state.service_pid) {
            return pid;
        }
    }
    // Registries that already record host pids.
    state.service_pid
}

/// The probes one verification asks PID 1 to run.
pub fn probe_plan(ev: &Evidence) -> Vec<String> {
    let mut v: Vec<String> = [
        "status",
        "int80",
        "syscall:umount2",
        "syscall:init_module",
        "syscall:finit_module",
        "syscall:iopl",
        "syscall:ioperm",
        "syscall:reboot",
        "syscall:swapoff",
        "syscall:clock_settime",
        "syscall:ptrace_bad",
        "syscall:perf_event_open",
        "syscall:kexec_load",
        "syscall:bpf",
        "open_write:/proc/sysrq-trigger",
        "read:/dev/kmsg",
        "unshare:user",
        "unshare:mnt",
        "unshare:net",
        "socket:packet",
        "socket:raw4",
        "socket:raw6",
        "socket:netlink",
        "socket:vsock",
        "socket:alg",
        "socket:key",
        "socket:bluetooth",
        "socket:xdp",
        "socket:tipc",
        "socket:can",
        "socket:rds",
        "tcp_connect:192.0.2.1:443",
        "tcp_connect:[2001:db8::1]:443",
        "udp_send:198.51.100.53:53",
        "tcp_connect:169.254.169.254:80",
        "unix_connect:/var/run/docker.sock",
        "unix_connect:/run/containerd/containerd.sock",
        "unix_connect:/run/dbus/system_bus_socket",
        "unix_connect:/run/isc/dock.sock",
        "unix_connect:@/org/freedesktop/systemd1/private",
        "write:/",
        "write:/etc",
        "write:/bin",
        "write:/usr",
        "write:/usr/bin",
        "write:/lib",
        "remount_ro:/",
        "mount_badfs",
        "setuid0",
        "capset_raise",
        "ptrace",
        "sched_fifo",
        "mmap_wx",
        "rlimit_raise",
        "tcp_bind:47113",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for a in &ev.host_addrs {
        v.push(format!("tcp_connect:{a}:22"));
    }
    if let Some((port, _)) = ev.sink {
        v.push(format!("tcp_connect:127.0.0.1:{port}"));
    }
    for d in writable_dirs(ev) {
        v.push(format!("exec_write:{d}"));
        v.push(format!("mknod:{d}"));
    }
    if let Some(m) = &ev.manifest {
        if let Some(exe) = m.service.exec.first() {
            v.push(format!("open_write:{exe}"));
            if let Some(dir) = std::path::Path::new(exe).parent() {
                v.push(format!("write:{}", dir.display()));
            }
        }
    }
    v.sort();
    v.dedup();
    v
}

/// Writable mount points of the ISC that are not pseudo filesystems.
pub fn writable_dirs(ev: &Evidence) -> Vec<String> {
    ev.init
        .mounts
        .iter()
        .filter(|m| {
            !m.read_only() && !matches!(m.fstype.as_str(), "proc" | "sysfs" | "devpts" | "mqueue")
        })
        .filter(|m| {
            m.mount_point != "/dev"
                && !m.mount_point.starts_with("/dev/")
                && !m.mount_point.starts_with("/proc")
        })
        .map(|m| m.mount_point.clone())
        .collect()
}

/// Collects the evidence for `target`, running probes through `transport` (ISCs only).
pub fn gather(target: &Target, transport: Option<&dyn ProbeTransport>) -> Evidence {
    let mut ev = Evidence {
        host_ns: procfs::namespaces(std::path::Path::new("/proc/1/ns")),
        ..Default::default()
    };
    match target {
        Target::Pid { pid, cgroup_dirs } => {
            ev.name = format!("pid {pid}");
            ev.init = ProcInfo::read(*pid);
            ev.service = ev.init.clone();
            ev.cgroup = read_cgroup(cgroup_dirs);
        }
        Target::Isc { state, cgroup_dirs, others } => {
            ev.is_isc = true;
            ev.name = state.name.clone();
            ev.init = ProcInfo::read(state.init_pid);
            ev.cgroup = read_cgroup(cgroup_dirs);
            ev.service = ProcInfo::read(host_pid_of_service(&ev.cgroup, state));
            ev.rootfs = Some(state.rootfs.clone());
            ev.monitor_pid = Some(state.monitor_pid);
            ev.manifest = state.manifest.clone().and_then(|v| serde_json::from_value(v).ok());
            ev.others = others
                .iter()
                .filter(|o| o.name != state.name)
                .map(|o| (o.name.clone(), ProcInfo::read(o.init_pid)))
                .collect();
            ev.host_addrs = host_ipv4_addrs();
            let sink = Sink::in_netns_of(state.init_pid).ok();
            ev.sink = sink.as_ref().map(|s| (s.port, false));
            if let Some(t) = transport {
                match t.run(&probe_plan(&ev)) {
                    Ok(outs) => (ev.probes, ev.probe_error) = keep_probes_that_ran(outs),
                    Err(e) => ev.probe_error = Some(e),
                }
            } else {
                ev.probe_error = Some("no probe channel".into());
            }
            if let (Some(s), Some(slot)) = (&sink, ev.sink.as_mut()) {
                slot.1 = s.received();
            }
        }
    }
    ev.procs = ev
        .cgroup
        .get("cgroup.procs")
        .map(|t| {
            t.lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect::<std::collections::BTreeSet<i32>>()
                .into_iter()
                .collect()
        })
        .unwrap_or_default();
    ev
}

/// Splits the probe answers into those that ran and a note on those that did not: PID 1
/// answers a probe it could not fork (the ISC's pids limit filled) with `probe_error` and the
/// fork's errno, which a check asking "did the attempt fail?" would read as *blocked*. Leaving
/// them out makes those checks fail closed (`checks::no_probes`), never pass.
fn keep_probes_that_ran(
    outs: Vec<ProbeOutcome>,
) -> (BTreeMap<String, ProbeOutcome>, Option<String>) {
    let (unrun, ran): (Vec<_>, Vec<_>) =
        outs.into_iter().partition(|o| o.value.get("probe_error").is_some());
    let note = (!unrun.is_empty()).then(|| {
        let names: Vec<&str> = unrun.iter().map(|o| o.name.as_str()).collect();
        let why = unrun[0].value["probe_error"].as_str().unwrap_or("no answer").to_owned();
        format!("{} probe(s) could not run ({}): {why}", names.len(), names.join(", "))
    });
    (ran.into_iter().map(|o| (o.name.clone(), o)).collect(), note)
}

#[cfg(test)]
mod probe_split_tests {
    use super::*;

    fn outcome(name: &str, ok: bool, errno: Option<i32>, value: serde_json::Value) -> ProbeOutcome {
        ProbeOutcome { name: name.into(), ok, errno, value }
    }

    #[test]
    fn a_probe_pid1_could_not_fork_is_left_out_not_counted_as_blocked() {
        let outs = vec![
            outcome("write:/etc", false, Some(libc::EROFS), serde_json::Value::Null),
            outcome(
                "write:/usr",
                false,
                Some(libc::EAGAIN),
                serde_json::json!({"probe_error": "PID 1 could not fork a probe child"}),
            ),
        ];
        let (ran, note) = keep_probes_that_ran(outs);
        assert_eq!(ran.keys().collect::<Vec<_>>(), ["write:/etc"]);
        assert_eq!(
            note.as_deref(),
            Some("1 probe(s) could not run (write:/usr): PID 1 could not fork a probe child")
        );
    }
}
