//! Issue 7 wired into `isc`: the real binary appends lifecycle records and the kernel's
//! seccomp denials to a signed trail that `isc audit verify` checks, and refuses to start an ISC
//! it cannot record.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

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
    let m = env.manifest("audit-bpf", &[ISC, "probe", "bpf"]);
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
    assert!(exit["detail"]["kernel_denials"]["recorded"].as_u64().unwrap() >= 1, "{exit}");
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
    let parent = format!("isc.{}", &h[..12]);
    for line in own.lines() {
        let mut it = line.splitn(3, ':');
        let (_, ctrls, rel) = (it.next().unwrap(), it.next().unwrap(), it.next().unwrap());
        let ctrl = if ctrls.is_empty() { "unified" } else { ctrls.split(',').next().unwrap() };
        let ctrl = ctrl.trim_start_matches("name=");
        let base = Path::new("/sys/fs/cgroup").join(ctrl).join(rel.trim_start_matches('/'));
        let dir = base.join(&parent).join(format!("isc-{name}"));
        assert!(!dir.exists(), "cgroup left: {}", dir.display());
    }
    let entries: Vec<_> = fs::read_dir(env.dir.join("state/isc"))
        .map(|r| r.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(entries.is_empty(), "registry entries left: {entries:?}");
}
