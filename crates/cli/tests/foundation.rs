//! Issue 2: every protection of a hardened ISC, proved from inside a running ISC.
//!
//! The service in these ISCs is the `isc` binary itself running `isc probe …`: each probe makes
//! one attack attempt and reports exactly what the kernel answered (errno, file contents).

mod common;

use std::fs;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use isc_engine::probe::ProbeOutcome;
use serde_json::Value;

#[test]
fn hardened_isc_proves_its_confinement_from_inside() {
    let env = Env::new("inside");
    let outs = env.probe(
        "inside",
        &[
            "status",
            "ids",
            "ns",
            "netns_owner",
            "fds",
            "env",
            "dev",
            "mounts",
            "uid_map",
            "mount",
            "unshare_user",
            "bpf",
            "ptrace",
            "keyctl",
            "open_by_handle_at",
            "init_module",
            "write:/",
            "write:/etc",
            "write:/usr",
            "write:/scratch",
            "read:/proc/kcore",
            "read:/proc/sysrq-trigger",
            "open_write:/proc/sysrq-trigger",
            "read:/proc/timer_list",
            "open_write:/proc/sys/kernel/hostname",
            "open_write:/proc/1/exe",
            "read:/proc/1/environ",
            "read:/sys/kernel/notes",
            "cat:/proc/self/limits",
            "cat:/proc/self/status",
            "cat:/proc/self/stat",
            "orphan_reap",
            "mmap_wx",
        ],
        &[],
    );
    // Namespaces: every one differs from the host's.
    let ns = &by_name(&outs, "ns").value;
    for kind in ["user", "pid", "mnt", "net", "uts", "ipc", "cgroup"] {
        let inside = ns[kind].as_str().unwrap_or_else(|| panic!("no {kind} ns"));
        assert_ne!(inside, host_ns(kind), "{kind} namespace is the host's");
    }
    // The network namespace belongs to the host's user namespace, not the ISC's: even root of
    // the ISC could change nothing in it (ioctl_ns(2): EPERM, the owner is out of scope).
    let owner = by_name(&outs, "netns_owner");
    assert_eq!((owner.ok, owner.errno), (false, Some(EPERM)), "{owner:?}");
    // Credentials: no capability in any set, no_new_privs, seccomp filter mode.
    let st = &by_name(&outs, "status").value;
    for set in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(st[set], "0000000000000000", "{set}");
    }
    assert_eq!(st["NoNewPrivs"], "1");
    assert_eq!(st["Umask"], "0027", "files the service creates are not world-readable");
    assert_eq!(st["Seccomp"], "2");
    assert_eq!(st["Uid"], "1000\t1000\t1000\t1000");
    assert_eq!(st["Groups"], "", "no supplementary groups (the host's are dropped before clone)");
    let uid_map = by_name(&outs, "uid_map")
        .value
        .as_str()
        .unwrap()
        .split_whitespace()
        .map(String::from)
        .collect::<Vec<_>>();
    assert_eq!(uid_map[0], "0");
    assert!(
        uid_map[1].parse::<u64>().unwrap() >= 1_000_000_000,
        "host range is far above login uids: {uid_map:?}"
    );
    assert_eq!(uid_map[2], "65536");
    // Escape primitives fail with EPERM from the seccomp filter.
    for p in
        ["mount", "unshare_user", "bpf", "ptrace", "keyctl", "open_by_handle_at", "init_module"]
    {
        let o = by_name(&outs, p);
        assert_eq!((o.ok, o.errno), (false, Some(EPERM)), "{p}: {o:?}");
    }
    // Read-only root image; the declared tmpfs is writable.
    for p in ["write:/", "write:/etc", "write:/usr"] {
        assert_eq!(by_name(&outs, p).errno, Some(EROFS), "{p}");
    }
    assert!(by_name(&outs, "write:/scratch").ok, "declared tmpfs must be writable");
    // /proc: kcore and sysrq-trigger are /dev/null, /proc/sys is read-only, PID 1 is closed.
    // This kernel may lack kcore/sysrq-trigger entirely (e.g. a microVM kernel): then they must be
    // absent inside too; where they exist they read as /dev/null.
    for p in ["/proc/kcore", "/proc/sysrq-trigger"] {
        let o = by_name(&outs, &format!("read:{p}"));
        if Path::new(p).exists() {
            assert_eq!(o.value, 0, "{p} not masked: {o:?}");
        } else {
            assert_eq!(o.errno, Some(2), "{p}: {o:?}");
        }
    }
    if Path::new("/proc/sysrq-trigger").exists() {
        assert!(by_name(&outs, "open_write:/proc/sysrq-trigger").ok, "writes go to /dev/null");
    }
    // timer_list is root-only (0400): unmasked, uid 1000 would get EACCES; masked it is /dev/null.
    assert_eq!(by_name(&outs, "read:/proc/timer_list").value, 0, "timer_list masked");
    // Host-owned files refuse uid 1000 before the mount flag is even consulted…
    assert_eq!(by_name(&outs, "open_write:/proc/sys/kernel/hostname").errno, Some(EACCES));
    // …and the mounts themselves carry the flags (kernel state seen from inside).
    let mounts = &by_name(&outs, "mounts").value;
    let opts = |p: &str| {
        mounts[p].as_str().unwrap_or_else(|| panic!("no mount at {p}: {mounts}")).to_string()
    };
    for (p, want) in [
        ("/", &["ro", "nosuid", "nodev"][..]),
        ("/proc/sys", &["ro", "nosuid", "nodev", "noexec"]),
        ("/proc", &["nosuid", "nodev", "noexec"]),
        ("/dev", &["ro", "nosuid", "noexec"]),
        // The host nodes bound into /dev (one recursive mount_setattr on /dev sets these).
        ("/dev/null", &["nosuid", "noexec"]),
        ("/dev/urandom", &["nosuid", "noexec"]),
        ("/scratch", &["rw", "nosuid", "nodev", "noexec"]),
    ] {
        let o = opts(p);
        for w in want {
            assert!(o.split(',').any(|x| x == *w), "{p} lacks {w}: {o}");
        }
    }
    assert!(!mounts.as_object().unwrap().contains_key("/sys"), "no /sys mount by default");
    assert_eq!(by_name(&outs, "open_write:/proc/1/exe").errno, Some(EACCES));
    assert_eq!(by_name(&outs, "read:/proc/1/environ").errno, Some(EACCES));
    assert_eq!(by_name(&outs, "read:/sys/kernel/notes").errno, Some(2), "no /sys by default");
    // /dev holds exactly the minimal nodes.
    assert_eq!(
        by_name(&outs, "dev").value,
        serde_json::json!([
            "fd", "full", "null", "random", "stderr", "stdin", "stdout", "tty", "urandom", "zero"
        ])
    );
    // The service is PID 2 under our PID 1, which reaps orphans.
    let ids = &by_name(&outs, "ids").value;
    assert_eq!((ids["pid"].as_i64(), ids["ppid"].as_i64()), (Some(2), Some(1)));
    assert_eq!(by_name(&outs, "orphan_reap").value, 0, "zombies left in the ISC");
    // rlimits from the manifest's defaults, set before exec: no core dumps, nofile 1024.
    let limits = by_name(&outs, "cat:/proc/self/limits").value.as_str().unwrap().to_string();
    let limit = |what: &str| -> Vec<String> {
        let line = limits
            .lines()
            .find(|l| l.starts_with(what))
            .unwrap_or_else(|| panic!("{what}: {limits}"));
        line[what.len()..].split_whitespace().take(2).map(String::from).collect()
    };
    assert_eq!(limit("Max core file size"), ["0", "0"]);
    assert_eq!(limit("Max open files"), ["1024", "1024"]);
    // PID 1 blocks every signal it handles (for its signalfd); the service starts with none
    // blocked and leads a session of its own, so no terminal signal or PID 1 state leaks in.
    let status = by_name(&outs, "cat:/proc/self/status").value.as_str().unwrap().to_string();
    let sig_blk = status.lines().find_map(|l| l.strip_prefix("SigBlk:")).map(str::trim);
    assert_eq!(sig_blk, Some("0000000000000000"), "{status}");
    let stat = by_name(&outs, "cat:/proc/self/stat").value.as_str().unwrap().to_string();
    // pid (comm) state ppid pgrp session …: the fields after the ")" that closes comm.
    let after_comm: Vec<&str> = stat[stat.rfind(')').unwrap() + 1..].split_whitespace().collect();
    let pid = stat.split_whitespace().next().unwrap();
    assert_eq!(
        (after_comm[2], after_comm[3]),
        (pid, pid),
        "pgrp and session are the service's own: {stat}"
    );
    // Memory-deny-write-execute: a writable and executable mapping is refused.
    let wx = by_name(&outs, "mmap_wx");
    assert_eq!((wx.ok, wx.errno), (false, Some(EACCES)), "{wx:?}");
    // Only stdio is open; the environment is exactly what was declared (nothing).
    let fds = by_name(&outs, "fds").value.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(fds, vec!["0", "1", "2"]);
    assert_eq!(by_name(&outs, "env").value, serde_json::json!([]));
    drop(outs);
    assert_nothing_left(&env);
}

#[test]
fn landlock_is_an_independent_layer() {
    let env = Env::new("landlock");
    // /proc/self/comm is writable for its owner as far as DAC and mounts are concerned; only
    // Landlock (read-only outside declared paths) refuses it. Likewise TCP connect with no
    // declared egress: Landlock answers EACCES before the (empty) network would.
    let probes = ["open_write:/proc/self/comm", "tcp_connect:127.0.0.1:9", "write:/scratch"];
    let with = env.probe("ll-on", &probes, &[]);
    assert_eq!(by_name(&with, "open_write:/proc/self/comm").errno, Some(EACCES));
    assert_eq!(by_name(&with, "tcp_connect:127.0.0.1:9").errno, Some(EACCES));
    assert!(by_name(&with, "write:/scratch").ok);
    let without = env.probe("ll-off", &probes, &["no-landlock"]);
    assert!(by_name(&without, "open_write:/proc/self/comm").ok, "{without:?}");
    assert_ne!(by_name(&without, "tcp_connect:127.0.0.1:9").errno, Some(EACCES));
    assert_nothing_left(&env);
}

#[test]
fn a_kept_network_capability_gets_a_network_namespace_of_the_iscs_own() {
    let env = Env::new("netcap");
    // NET_BIND_SERVICE is checked against the network namespace's owner: kept, it must act
    // there, so this ISC's namespace is made by clone3 inside its user namespace, and PID 1
    // brings lo up itself.
    let probes = ["netns_owner", "ns", "udp_ask:127.0.0.1:9:500"];
    let outs = env.probe_with(
        "netcap",
        &probes,
        "[security]\ncapabilities = [\"NET_BIND_SERVICE\"]\n",
        &[],
    );
    let owner = by_name(&outs, "netns_owner");
    assert_eq!(owner.value, "own", "{owner:?}");
    assert_ne!(by_name(&outs, "ns").value["net"].as_str().unwrap(), host_ns("net"));
    // lo is up: the datagram reached the port, nothing listened, ICMP said so.
    assert_eq!(by_name(&outs, "udp_ask:127.0.0.1:9:500").errno, Some(libc::ECONNREFUSED));
    assert_nothing_left(&env);
}

#[test]
fn two_iscs_side_by_side_get_distinct_unprivileged_host_uids() {
    let env = Env::new("uids");
    let a = env.manifest("uid-a", &["/usr/bin/sleep", "30"], "");
    let b = env.manifest("uid-b", &["/usr/bin/sleep", "30"], "");
    let (mut ca, mut cb) = (env.spawn(&a), env.spawn(&b));
    let sa = env.wait_running("uid-a");
    let sb = env.wait_running("uid-b");
    let host_uid = |s: &Value| {
        let pid = s["service_pid"].as_i64().unwrap();
        // The service's pid in its own namespace is 2; find its host pid via the init's children.
        let init = s["init_pid"].as_i64().unwrap();
        let children = fs::read_to_string(format!("/proc/{init}/task/{init}/children")).unwrap();
        let host_pid: i64 = children.split_whitespace().next().unwrap().parse().unwrap();
        assert_eq!(pid, 2);
        let status = fs::read_to_string(format!("/proc/{host_pid}/status")).unwrap();
        let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
        uid_line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap()
    };
    let (ua, ub) = (host_uid(&sa), host_uid(&sb));
    assert_ne!(ua, ub, "two ISCs share a host uid");
    for (u, s) in [(ua, &sa), (ub, &sb)] {
        assert!(u >= 1_000_000_000, "host uid {u} is in the login range");
        assert_eq!(u, s["host_uid_base"].as_u64().unwrap() + 1000);
    }
    for n in ["uid-a", "uid-b"] {
        assert!(env.cmd().args(["stop", n]).status().unwrap().success());
    }
    let (ra, rb) = (ca.wait().unwrap(), cb.wait().unwrap());
    assert_eq!((ra.code(), rb.code()), (Some(143), Some(143)), "SIGTERM ends the service: 128+15");
    // Who stopped it is on the audit trail.
    let out = env
        .cmd()
        .args(["audit", "show", "--isc", "uid-a", "--kind", "isc_stop", "--json"])
        .output()
        .unwrap();
    let stops: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(stops.len(), 1, "{stops:?}");
    assert_eq!(stops[0]["actor"], serde_json::json!({"uid": 0}));
    assert_nothing_left(&env);
}

#[test]
fn exit_codes_and_signals_propagate() {
    let env = Env::new("exit");
    let m = env.manifest("exit7", &["/bin/sh", "-c", "exit 7"], "");
    assert_eq!(env.run(&m, &[]).status.code(), Some(7));
    let m = env.manifest("selfkill", &["/bin/sh", "-c", "kill -USR1 $$"], "");
    let out = env.run(&m, &["--json"]);
    assert_eq!(out.status.code(), Some(128 + 10));
    let rec: Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stderr).lines().last().unwrap()).unwrap();
    assert_eq!((rec["signal"].as_i64(), rec["code"].as_i64()), (Some(10), None));
    let m = env.manifest("ok", &["/bin/sh", "-c", "echo out; echo err >&2"], "");
    let out = env.run(&m, &[]);
    assert_eq!(
        (out.status.code(), out.stdout.as_slice(), out.stderr.as_slice()),
        (Some(0), &b"out\n"[..], &b"err\n"[..])
    );
    assert_nothing_left(&env);
}

/// Runs `m` with phase marks on (`ISC_TIMINGS`); the output and the line index of each mark.
fn run_marked(env: &Env, m: &Path, args: &[&str]) -> (std::process::Output, Vec<String>) {
    let out = env.cmd().env("ISC_TIMINGS", "1").arg("run").arg(m).args(args).output().unwrap();
    let lines = String::from_utf8_lossy(&out.stderr).lines().map(String::from).collect();
    (out, lines)
}

fn mark_at(lines: &[String], label: &str) -> usize {
    lines.iter().position(|l| l.ends_with(label)).unwrap_or_else(|| panic!("{label}: {lines:#?}"))
}

/// The service exits while a process it started still runs: PID 1 then has a child left, so
/// the end is handled only once PID 1 is gone (its PID namespace, and the orphan with it), not
/// at its report. The phase marks show which way the end went.
#[test]
fn a_service_that_leaves_a_process_behind_ends_with_it() {
    let env = Env::new("leaver");
    let m =
        env.manifest("leaver", &["/bin/sh", "-c", "/usr/bin/sleep 30 & echo started; exit 7"], "");
    let t = Instant::now();
    let (out, marks) = run_marked(&env, &m, &["--json"]);
    assert!(t.elapsed() < Duration::from_secs(5), "the orphan kept the ISC alive");
    assert_eq!(out.status.code(), Some(7), "{marks:#?}");
    assert_eq!(out.stdout, b"started\n");
    assert_eq!(exit_record(&out)["code"], 7);
    assert!(
        mark_at(&marks, "PID 1 gone") < mark_at(&marks, "service ended"),
        "handled before PID 1 was gone: {marks:#?}"
    );
    // And a service that leaves nothing is handled at PID 1's report, before it is gone.
    let m = env.manifest("alone", &["/bin/sh", "-c", "exit 3"], "");
    let (out, marks) = run_marked(&env, &m, &[]);
    assert_eq!(out.status.code(), Some(3));
    assert!(
        mark_at(&marks, "service ended") < mark_at(&marks, "PID 1 gone"),
        "not handled at the report: {marks:#?}"
    );
    assert_nothing_left(&env);
}

#[test]
fn sigterm_stops_gracefully_then_sigkill_after_the_timeout() {
    let env = Env::new("stop");
    let path = env.dir.join("stubborn.toml");
    let text = "name = \"stubborn\"\n[service]\nexec = [\"/bin/sh\", \"-c\", \"trap '' TERM; sleep 30\"]\nstop_timeout = \"1s\"\n[image]\nsource = \"host\"\npaths = [\"/bin/sh\", \"/usr/bin/sleep\"]\n".to_string();
    fs::write(&path, text).unwrap();
    let mut child = env.spawn(&path);
    env.wait_running("stubborn");
    let t = Instant::now();
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    let took = t.elapsed();
    assert_eq!(status.code(), Some(128 + 9), "ignored SIGTERM, killed after the timeout");
    assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(5), "{took:?}");
    assert_nothing_left(&env);
}

#[test]
fn bad_input_is_refused_clearly_and_leaves_nothing() {
    let env = Env::new("bad");
    let bad = env.dir.join("bad.toml");
    fs::write(&bad, "name = \"x\"\n[service]\nexec = [\"/bin/true\"]\nuser = 0\n[image]\nsource = \"host\"\npaths = [\"/bin/true\"]\n").unwrap();
    let out = env.run(&bad, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0));
    assert!(err.contains("bad.toml:4:") && err.contains("allow_root"), "{err}");

    fs::write(&bad, "name = \"x\"\n[service]\nexec = [\"/bin/true\"]\n[image]\nsource = \"host\"\npaths = [\"/bin/true\"]\nbogus = 1\n").unwrap();
    let out = env.run(&bad, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml:7:1") && err.contains("bogus"), "{err}");

    fs::write(&bad, "name = \"x\"\n[service\n").unwrap();
    let out = env.run(&bad, &[]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad.toml:2:"), "syntax error located");

    let missing = env.manifest("missing", &["/usr/bin/not-there"], "");
    let out = env.run(&missing, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125));
    assert!(err.contains("/usr/bin/not-there does not exist in the image"), "{err}");

    let out = env.cmd().args(["run", "/nonexistent/isc.toml"]).output().unwrap();
    assert_ne!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/isc.toml"));
    assert_nothing_left(&env);
}

#[test]
fn control_socket_probes_run_inside_the_live_confinement() {
    let env = Env::new("control");
    let m = env.manifest("live", &["/usr/bin/sleep", "30"], "");
    let mut child = env.spawn(&m);
    env.wait_running("live");
    let out = env
        .cmd()
        .args(["probe", "--isc", "live", "status", "mount", "write:/etc"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let outs: Vec<ProbeOutcome> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(by_name(&outs, "status").value["Seccomp"], "2");
    assert_eq!(by_name(&outs, "mount").errno, Some(EPERM));
    assert_eq!(by_name(&outs, "write:/etc").errno, Some(EROFS));
    let sock = env.dir.join("state/isc/live/control.sock");
    let mode = std::os::unix::fs::PermissionsExt::mode(&fs::metadata(&sock).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "control socket is root-only");
    let second = env.run(&m, &[]);
    assert!(String::from_utf8_lossy(&second.stderr).contains("already running"));
    assert!(env.cmd().args(["stop", "live"]).status().unwrap().success());
    child.wait().unwrap();
    assert_nothing_left(&env);
}

#[test]
fn two_hundred_consecutive_runs_leak_nothing() {
    let env = Env::new("many");
    let m = env.manifest("many", &["/bin/sh", "-c", "exit 0"], "");
    for i in 0..200 {
        let st = env.cmd().arg("run").arg(&m).stdout(Stdio::null()).status().unwrap();
        assert!(st.success(), "run {i} failed");
    }
    assert_nothing_left(&env);
}
