//! Issue 7 wired into `isc`: the real binary appends lifecycle records and the kernel's
//! seccomp denials to a signed trail that `isc audit verify` checks, and refuses to start an ISC
//! it cannot record.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use isc_testkit::in_private_netns;
use serde_json::Value;

const ISC: &str = env!("CARGO_BIN_EXE_isc");

/// A private --root/--state pair, removed (image store included) on drop.
struct Env {
    dir: PathBuf,
}

impl Env {
    fn new(tag: &str) -> Env {
        let dir = std::env::temp_dir().join(format!("isc-test-audit-{tag}-{}", std::process::id()));
        let _ = isc_image::immutable::remove_tree(&dir);
        fs::create_dir_all(dir.join("root")).unwrap();
        Env { dir }
    }
    fn root(&self) -> PathBuf {
        self.dir.join("root")
    }
    fn cmd(&self) -> Command {
        let mut c = Command::new(ISC);
        c.arg("--root").arg(self.root()).arg("--state").arg(self.dir.join("state"));
        c.arg("--log").arg("warn");
        c
    }
    fn isc(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().unwrap()
    }
    /// A manifest whose image holds the isc binary and sh.
    fn manifest(&self, name: &str, exec: &[&str]) -> PathBuf {
        let exec: Vec<String> = exec.iter().map(|e| format!("{e:?}")).collect();
        let text = format!(
            r#"name = "{name}"
[service]
exec = [{}]
[image]
source = "host"
paths = ["{ISC}", "/bin/sh"]
[filesystem]
tmpfs = [{{ path = "/scratch", size = "4M" }}]
"#,
            exec.join(", ")
        );
        let path = self.dir.join(format!("{name}.toml"));
        fs::write(&path, text).unwrap();
        path
    }
    fn run(&self, manifest: &Path) -> Output {
        self.cmd().arg("run").arg(manifest).output().unwrap()
    }
    /// `isc audit show --json` with extra filter args, parsed.
    fn show(&self, args: &[&str]) -> Vec<Value> {
        let mut a = vec!["audit", "show", "--json"];
        a.extend_from_slice(args);
        let out = self.isc(&a);
        assert!(out.status.success(), "audit show: {}", text(&out.stderr));
        text(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = isc_image::immutable::remove_tree(&self.dir);
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn time_of(r: &Value) -> std::time::SystemTime {
    isc_audit::record::parse_time(r["time"].as_str().unwrap()).unwrap()
}

#[test]
fn a_run_leaves_signed_start_and_exit_records_and_tampering_is_named() {
    let env = Env::new("run");
    let m = env.manifest("audit-run", &["/bin/sh", "-c", "exit 3"]);
    let out = env.run(&m);
    assert_eq!(out.status.code(), Some(3), "stderr: {}", text(&out.stderr));

    let recs = env.show(&["--isc", "audit-run"]);
    let kinds: Vec<&str> = recs.iter().map(|r| r["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["isc_create", "isc_start", "isc_exit"], "{recs:#?}");
    // SAFETY: getuid(2) cannot fail.
    let uid = unsafe { libc::getuid() };
    let (create, start, exit) = (&recs[0], &recs[1], &recs[2]);
    assert_eq!(create["actor"]["uid"], uid);
    assert_eq!(create["detail"]["image_id"], start["detail"]["image_id"]);
    assert_eq!(create["detail"]["spec_hash"], start["detail"]["spec_hash"]);
    assert_eq!(create["detail"]["weakened"], false);
    assert!(create["detail"]["limits"]["memory"].as_u64().unwrap() > 0, "{create}");
    assert!(start["detail"]["host_uid_base"].as_u64().unwrap() >= 1_000_000_000);
    assert_eq!(start["detail"]["result"], "started");
    assert_eq!(exit["actor"], "isc");
    assert_eq!(exit["detail"]["code"], 3);
    assert_eq!(exit["detail"]["status"], 3);
    assert_eq!(exit["detail"]["oom_kills"], 0);

    let ok = env.isc(&["audit", "verify"]);
    assert!(ok.status.success(), "clean trail: {}{}", text(&ok.stdout), text(&ok.stderr));
    assert!(text(&ok.stdout).starts_with("audit trail OK"), "{}", text(&ok.stdout));

    // Exported byte for byte, it verifies with only the public key file.
    let export = env.dir.join("export.jsonl");
    let e = env.isc(&["audit", "export", "--format", "jsonl", "--to", export.to_str().unwrap()]);
    assert!(e.status.success(), "{}", text(&e.stderr));
    let key = env.root().join("keys/audit-ed25519.pub");
    let off = Command::new(ISC)
        .args(["--root", "/nonexistent-isc-root", "audit", "verify", "--file"])
        .arg(&export)
        .arg("--key")
        .arg(&key)
        .output()
        .unwrap();
    assert!(off.status.success(), "off-host verify: {}", text(&off.stderr));
    let printed = env.isc(&["audit", "key"]);
    assert_eq!(text(&printed.stdout).trim(), fs::read_to_string(&key).unwrap().trim());

    // Tamper with the real log: change the exit code inside the isc_exit record.
    let file = isc_audit::list_files(&env.root().join("audit")).unwrap().pop().unwrap();
    let orig = fs::read_to_string(&file).unwrap();
    let seq = exit["seq"].as_u64().unwrap();
    let needle = format!("{{\"seq\":{seq},");
    let line = orig.lines().find(|l| l.starts_with(&needle)).unwrap();
    let forged = line.replacen("\"code\":3", "\"code\":0", 1);
    assert_ne!(line, forged);
    fs::write(&file, orig.replacen(line, &forged, 1)).unwrap();
    let bad = env.isc(&["audit", "verify"]);
    assert_eq!(bad.status.code(), Some(1), "tampered trail must fail: {}", text(&bad.stderr));
    let msg = text(&bad.stderr);
    assert!(msg.contains(&format!("record seq {seq} was edited")), "{msg}");
}

#[test]
fn a_blocked_syscall_inside_an_isc_is_on_the_trail_within_a_second() {
    let env = Env::new("seccomp");
    let m = env.manifest("audit-bpf", &[ISC, "probe", "bpf", "clone3"]);
    // A follower started before the run sees the denial as it is appended.
    let mut follower = env
        .cmd()
        .args(["audit", "show", "--follow", "--json", "--isc", "audit-bpf"])
        .args(["--kind", "seccomp_denial"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = follower.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let out = env.run(&m);
    let followed = rx.recv_timeout(Duration::from_secs(5));
    follower.kill().unwrap();
    follower.wait().unwrap();
    let followed: Value = serde_json::from_str(&followed.expect("follower saw no denial")).unwrap();
    assert_eq!(followed["kind"], "seccomp_denial");
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let probe: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(probe[0]["errno"], 1, "bpf must be denied with EPERM: {probe}");
    assert_eq!(probe[1]["errno"], libc::ENOSYS, "clone3 refused so libc falls back: {probe}");

    let recs = env.show(&["--isc", "audit-bpf"]);
    let start = recs.iter().find(|r| r["kind"] == "isc_start").unwrap();
    assert_eq!(start["detail"]["kernel_denials"]["collected"], true, "{start}");
    let denial = recs
        .iter()
        .find(|r| r["kind"] == "seccomp_denial" && r["detail"]["syscall"] == libc::SYS_bpf)
        .unwrap_or_else(|| panic!("no seccomp_denial for bpf in {recs:#?}"));
    assert_eq!(denial["isc"], "audit-bpf");
    assert_eq!(denial["actor"], "kernel");
    assert_eq!(denial["detail"]["action"], "errno");
    let base = start["detail"]["host_uid_base"].as_u64().unwrap();
    let uid = denial["detail"]["uid"].as_u64().unwrap();
    assert!((base..base + 65_536).contains(&uid), "denial uid {uid} outside the ISC's range");
    // Recorded within one second of the service starting (the probe runs at once).
    let lag = time_of(denial).duration_since(time_of(start)).unwrap();
    assert!(lag < Duration::from_secs(1), "denial recorded {lag:?} after the start");
    let exit = recs.iter().find(|r| r["kind"] == "isc_exit").unwrap();
    assert!(exit["seq"].as_u64() > denial["seq"].as_u64(), "the exit comes after the denial");
    // Exactly the probe's one denial: PID 1's end-of-denials record (the barrier number,
    // isc_engine::seccomp::AUDIT_BARRIER_SYSCALL) ends the drain and is never a denial.
    assert_eq!(exit["detail"]["kernel_denials"]["recorded"], 1, "{exit}");
    let barrier = recs.iter().find(|r| r["detail"]["syscall"] == 0x000f_ffff);
    assert!(barrier.is_none(), "the drain's barrier was recorded as a denial: {barrier:?}");
    // PID 1's posix_spawn and the probe both met clone3's ENOSYS, and the kernel logged
    // neither: it comes from the companion filter installed without SECCOMP_FILTER_FLAG_LOG.
    assert_eq!(exit["detail"]["kernel_denials"]["clone3_fallbacks"], 0, "{exit}");
    // `--kind` filters, and the trail still verifies.
    let only = env.show(&["--kind", "seccomp_denial"]);
    assert!(!only.is_empty() && only.iter().all(|r| r["kind"] == "seccomp_denial"));
    let ok = env.isc(&["audit", "verify"]);
    assert!(ok.status.success(), "{}", text(&ok.stderr));
}

/// A tiny tmpfs mounted over `<root>/audit`, unmounted on drop.
struct TinyFs {
    path: PathBuf,
}

impl TinyFs {
    fn mount(path: &Path, size: &str) -> TinyFs {
        fs::create_dir_all(path).unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "isc-test-audit"])
            .arg(path)
            .status()
            .unwrap();
        assert!(st.success(), "mounting a tmpfs at {}", path.display());
        TinyFs { path: path.to_owned() }
    }
}

impl Drop for TinyFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.path).status();
    }
}

/// Fills the filesystem at `dir` with one file until ENOSPC.
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write;
    let p = dir.join("isc-test-filler");
    let mut f = fs::File::create(&p).unwrap();
    let chunk = vec![0u8; 64 << 10];
    loop {
        match f.write(&chunk) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    p
}

#[test]
fn a_service_calling_the_audit_barrier_number_cannot_end_the_drain() {
    // PID 1's end-of-denials record (isc_engine::seccomp::AUDIT_BARRIER_SYSCALL) ends the
    // collector's drain. The service makes the same call, then a denied one: both must be on
    // the trail as its denials, before isc_exit — a forged barrier would have ended the
    // collection and lost the second.
    const BARRIER: i64 = 0x000f_ffff;
    let env = Env::new("forged-barrier");
    let m = env.manifest("audit-forge", &[ISC, "probe", "audit_barrier", "bpf"]);
    let out = env.run(&m);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let probe: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(probe[0]["errno"], libc::EPERM, "the filter refuses the barrier number: {probe}");
    assert_eq!(probe[1]["errno"], libc::EPERM, "bpf: {probe}");
    let recs = env.show(&["--isc", "audit-forge"]);
    let denial = |nr: i64| {
        recs.iter()
            .find(|r| r["kind"] == "seccomp_denial" && r["detail"]["syscall"] == nr)
            .unwrap_or_else(|| panic!("no seccomp_denial for syscall {nr} in {recs:#?}"))
    };
    let (forged, bpf) = (denial(BARRIER), denial(libc::SYS_bpf));
    let exit = recs.iter().find(|r| r["kind"] == "isc_exit").unwrap();
    assert!(exit["seq"].as_u64() > forged["seq"].as_u64(), "{exit}");
    assert!(exit["seq"].as_u64() > bpf["seq"].as_u64(), "{exit}");
    assert_eq!(exit["detail"]["kernel_denials"]["recorded"], 2, "{exit}");
}

#[test]
fn a_full_audit_disk_refuses_new_starts_and_leaves_nothing_behind() {
    let env = Env::new("full");
    let audit = env.root().join("audit");
    let _fs = TinyFs::mount(&audit, "2M");
    let m = env.manifest("audit-full", &["/bin/sh", "-c", "exit 0"]);
    // With space, the trail takes the start (this also creates the key outside the tmpfs).
    let out = env.run(&m);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));

    let filler = fill(&audit);
    let out = env.run(&m);
    let err = text(&out.stderr);
    assert!(!out.status.success(), "a start the trail cannot record must be refused");
    assert!(err.contains("refusing to start ISC `audit-full`"), "{err}");
    assert!(err.contains("No space left on device"), "{err}");
    assert!(err.contains("fail closed"), "{err}");
    assert!(out.stdout.is_empty(), "the service must not have run");
    assert_nothing_left(&env, "audit-full");

    // Space back: starts work again and the trail is whole.
    fs::remove_file(filler).unwrap();
    let out = env.run(&m);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let exits = env.show(&["--kind", "isc_exit"]);
    assert_eq!(exits.len(), 2, "the refused start left no record, the others did: {exits:#?}");
    let ok = env.isc(&["audit", "verify"]);
    assert!(ok.status.success(), "{}", text(&ok.stderr));
}

/// No cgroup (any hierarchy) and no registry entry named after the ISC.
fn assert_nothing_left(env: &Env, name: &str) {
    let own = fs::read_to_string("/proc/self/cgroup").unwrap();
    let h = blake3::hash(env.dir.join("state").as_os_str().as_encoded_bytes()).to_hex();
    let dir_name = format!("isc-{}.{name}", &h[..12]);
    for line in own.lines() {
        let mut it = line.splitn(3, ':');
        let (_, ctrls, rel) = (it.next().unwrap(), it.next().unwrap(), it.next().unwrap());
        let ctrl = if ctrls.is_empty() { "unified" } else { ctrls.split(',').next().unwrap() };
        let ctrl = ctrl.trim_start_matches("name=");
        let base = Path::new("/sys/fs/cgroup").join(ctrl).join(rel.trim_start_matches('/'));
        let dir = base.join(&dir_name);
        assert!(!dir.exists(), "cgroup left: {}", dir.display());
    }
    let entries: Vec<_> = fs::read_dir(env.dir.join("state/isc"))
        .map(|r| r.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(entries.is_empty(), "registry entries left: {entries:?}");
}

/// A networked ISC running `sleep` under `isc run` (Landlock off, so nftables alone decides).
struct NetIsc {
    name: String,
    child: std::process::Child,
    host_v4: std::net::Ipv4Addr,
}

impl Drop for NetIsc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: kill(2) on our own, not yet reaped child.
            unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        }
        let _ = self.child.wait();
    }
}

impl Env {
    fn spawn_networked(&self, name: &str) -> NetIsc {
        let text = format!(
            "name = \"{name}\"\n[service]\nexec = [\"/usr/bin/sleep\", \"30\"]\n[image]\nsource = \"host\"\npaths = [\"{ISC}\", \"/bin/sh\", \"/usr/bin/sleep\"]\n[network]\negress = [\"udp:192.0.2.2:5300\"]\n"
        );
        let m = self.dir.join(format!("{name}.toml"));
        fs::write(&m, text).unwrap();
        let child = self
            .cmd()
            .arg("run")
            .arg(&m)
            .args(["--unsafe-weaken", "no-landlock"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Owned at once, so a failed wait below still stops and reaps `isc run`.
        let mut isc = NetIsc { name: name.into(), child, host_v4: std::net::Ipv4Addr::UNSPECIFIED };
        let rec = self.dir.join("state/isc").join(name).join("net.json");
        let t = std::time::Instant::now();
        loop {
            let ps = self.isc(&["ps", "--json"]);
            let up = serde_json::from_slice::<Vec<Value>>(&ps.stdout)
                .is_ok_and(|v| v.iter().any(|s| s["name"] == name));
            if up && rec.exists() {
                let r: Value = serde_json::from_slice(&fs::read(&rec).unwrap()).unwrap();
                let v4: std::net::Ipv4Addr =
                    r["policy"]["addr_v4"].as_str().unwrap().parse().unwrap();
                isc.host_v4 = std::net::Ipv4Addr::from(u32::from(v4) - 1);
                return isc;
            }
            assert!(t.elapsed() < Duration::from_secs(15), "ISC {name} did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Tries an undeclared UDP destination (the host end of its link) from inside `isc`.
    /// Returns when the attempt started.
    fn undeclared_egress(&self, isc: &NetIsc, port: u16) -> std::time::SystemTime {
        let at = std::time::SystemTime::now();
        let probe = format!("udp_ask:{}:{port}:200", isc.host_v4);
        let out = self.isc(&["probe", "--isc", &isc.name, &probe]);
        assert!(out.status.success(), "isc probe: {}", text(&out.stderr));
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v[0]["ok"], false, "the undeclared destination answered: {v}");
        at
    }

    /// Waits (at most `limit`) for a `net_drop` record of `isc` to port `port`.
    fn net_drop(&self, isc: &str, port: u16, limit: Duration) -> Option<Value> {
        let t = std::time::Instant::now();
        loop {
            let recs = self.show(&["--isc", isc, "--kind", "net_drop"]);
            if let Some(r) = recs.into_iter().find(|r| r["detail"]["dport"] == port) {
                return Some(r);
            }
            if t.elapsed() >= limit {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop_isc(&self, mut isc: NetIsc) {
        assert!(self.isc(&["stop", &isc.name]).status.success());
        let t = std::time::Instant::now();
        while isc.child.try_wait().unwrap().is_none() {
            assert!(t.elapsed() < Duration::from_secs(15), "ISC {} did not stop", isc.name);
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn a_dropped_packet_is_on_the_trail_within_a_second_attributed_to_its_isc() {
    in_private_netns(
        "a_dropped_packet_is_on_the_trail_within_a_second_attributed_to_its_isc",
        || {
            let env = Env::new("netdrop");
            // Two networked ISCs at once: each monitor binds its own NFLOG group (the kernel lets
            // only one socket bind a group), and each records only its own ISC's drops.
            let a = env.spawn_networked("audit-net-a");
            let b = env.spawn_networked("audit-net-b");
            let attempt = env.undeclared_egress(&a, 5301);
            let drop_a = env
                .net_drop("audit-net-a", 5301, Duration::from_secs(1))
                .expect("no net_drop record for audit-net-a within a second of the attempt");
            let lag = time_of(&drop_a).duration_since(attempt).unwrap();
            println!("net_drop recorded {lag:?} after the attempt");
            assert!(lag < Duration::from_secs(1), "net_drop recorded {lag:?} after the attempt");
            assert_eq!(drop_a["actor"], "kernel");
            assert_eq!(drop_a["detail"]["direction"], "out");
            assert_eq!(drop_a["detail"]["proto"], 17);
            assert_eq!(drop_a["detail"]["dst"], a.host_v4.to_string());
            env.undeclared_egress(&b, 5302);
            assert!(env.net_drop("audit-net-b", 5302, Duration::from_secs(1)).is_some());
            assert!(env.net_drop("audit-net-a", 5302, Duration::ZERO).is_none(), "b's drop on a");
            assert!(env.net_drop("audit-net-b", 5301, Duration::ZERO).is_none(), "a's drop on b");

            env.stop_isc(a);
            env.stop_isc(b);
            let recs = env.show(&["--isc", "audit-net-a"]);
            let start = recs.iter().find(|r| r["kind"] == "isc_start").unwrap();
            // The network boundary this start applied is on the trail as a policy change.
            let policy =
                recs.iter().find(|r| r["kind"] == "net_policy").expect("net_policy record");
            assert_eq!(policy["actor"], "isc");
            assert!(policy["detail"]["applied"].is_object(), "{policy}");
            let groups: Vec<Value> = ["audit-net-a", "audit-net-b"]
                .iter()
                .map(|n| {
                    let s = env.show(&["--isc", n, "--kind", "isc_start"]);
                    assert_eq!(s[0]["detail"]["net_denials"]["collected"], true, "{}", s[0]);
                    s[0]["detail"]["net_denials"]["nflog_group"].clone()
                })
                .collect();
            assert_ne!(groups[0], groups[1], "two ISCs must not share an NFLOG group");
            // The kernel multicasts audit records only in the initial network namespace, which
            // this test left: the start says kernel denials are not collected, and why (the
            // drain then does not wait for a barrier that could never come).
            let kernel = &start["detail"]["kernel_denials"];
            assert_eq!(kernel["collected"], false, "{start}");
            assert!(kernel["error"].as_str().unwrap().contains("initial network namespace"));
            assert_eq!(start["detail"]["net_denials"]["nflog_group"], groups[0]);
            let exit = recs.iter().find(|r| r["kind"] == "isc_exit").unwrap();
            assert!(
                exit["seq"].as_u64() > drop_a["seq"].as_u64(),
                "the drop comes before isc_exit"
            );
            assert!(exit["detail"]["net_denials"]["recorded"].as_u64().unwrap() >= 1, "{exit}");
            let ok = env.isc(&["audit", "verify"]);
            assert!(ok.status.success(), "{}", text(&ok.stderr));
        },
    );
}
