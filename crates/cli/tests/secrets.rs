//! Issue 6: sealed secrets and encrypted volumes, end to end through the `isc` binary.
//!
//! Each test has its own `--root`/`--state` under /tmp (`isc-test-secrets-*`) and its own ISC
//! names. After every run the test checks that nothing is left mounted below its directory
//! (/proc/self/mountinfo) and that no loop device is backed by one of its files.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use isc_engine::probe::ProbeOutcome;
use serde_json::Value;

const ISC: &str = env!("CARGO_BIN_EXE_isc");
const EROFS: i32 = 30;

struct Env {
    dir: PathBuf,
}

impl Env {
    fn new(tag: &str) -> Env {
        let dir =
            std::env::temp_dir().join(format!("isc-test-secrets-{tag}-{}", std::process::id()));
        let _ = isc_image::immutable::remove_tree(&dir);
        fs::create_dir_all(&dir).unwrap();
        Env { dir }
    }
    fn root(&self) -> PathBuf {
        self.dir.join("root")
    }
    fn state(&self) -> PathBuf {
        self.dir.join("state")
    }
    fn cmd(&self) -> Command {
        let mut c = Command::new(ISC);
        c.arg("--root").arg(self.root()).arg("--state").arg(self.state()).args(["--log", "warn"]);
        c.env_remove("ISC_PASSPHRASE_FILE");
        c
    }
    /// `isc secret set NAME --isc ISC` with the value on stdin.
    fn set_secret(&self, isc: &str, name: &str, value: &[u8], extra: &[&str]) -> Output {
        let mut child = self
            .cmd()
            .args(["secret", "set", name, "--isc", isc])
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(value).unwrap();
        child.wait_with_output().unwrap()
    }
    /// A manifest outside `--root`/`--state` (so the plaintext scans do not see test inputs).
    fn manifest(&self, name: &str, script: &str, extra: &str) -> PathBuf {
        let text = format!(
            r#"name = "{name}"
[service]
exec = ["/bin/sh", "-c", {script:?}]
[image]
source = "host"
paths = ["{ISC}", "/bin/sh", "/usr/bin/sleep", "/usr/bin/stat", "/usr/bin/cat", "/usr/bin/true", "/usr/bin/ls"]
[filesystem]
tmpfs = [{{ path = "/scratch", size = "1M" }}]
{extra}
"#
        );
        let path = self.dir.join(format!("{name}.toml"));
        fs::write(&path, text).unwrap();
        path
    }
    fn run(&self, manifest: &Path) -> Output {
        self.cmd().arg("run").arg(manifest).output().unwrap()
    }
    fn json(&self, args: &[&str]) -> Value {
        let out = self.cmd().args(args).output().unwrap();
        assert!(out.status.success(), "isc {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    }
    /// Mount points below this test's directory, in the host's mount namespace.
    fn leftover_mounts(&self) -> Vec<String> {
        let dir = self.dir.to_string_lossy().into_owned();
        fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|mp| mp.starts_with(&dir))
            .map(String::from)
            .collect()
    }
    /// Loop devices whose backing file is in this test's directory.
    fn leftover_loops(&self) -> Vec<String> {
        let dir = self.dir.to_string_lossy().into_owned();
        let mut out = vec![];
        for e in fs::read_dir("/sys/block").unwrap().flatten() {
            if let Ok(b) = fs::read_to_string(e.path().join("loop/backing_file")) {
                if b.trim().starts_with(&dir) {
                    out.push(format!("{}: {}", e.file_name().to_string_lossy(), b.trim()));
                }
            }
        }
        out
    }
    fn assert_clean(&self) {
        assert_eq!(self.leftover_mounts(), Vec::<String>::new(), "mounts left behind");
        assert_eq!(self.leftover_loops(), Vec::<String>::new(), "loop devices left attached");
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        for m in self.leftover_mounts().iter().rev() {
            let _ = Command::new("umount").args(["-l", m]).status();
        }
        let _ = isc_image::immutable::remove_tree(&self.dir);
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Every regular file under `dir` (symlinks not followed) that contains `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut hits = vec![];
    let Ok(entries) = fs::read_dir(dir) else { return hits };
    for e in entries.flatten() {
        let Ok(ft) = e.file_type() else { continue };
        if ft.is_dir() {
            hits.extend(files_containing(&e.path(), needle));
        } else if ft.is_file() {
            if let Ok(bytes) = fs::read(e.path()) {
                if bytes.len() >= needle.len() && contains(&bytes, needle) {
                    hits.push(e.path());
                }
            }
        }
    }
    hits
}

fn canary(tag: &str) -> String {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("isc-canary-{tag}-{}-{nanos:x}", std::process::id())
}

#[test]
fn secret_is_delivered_read_only_0400_to_the_service_user() {
    let env = Env::new("deliver");
    let value = canary("deliver");
    let o = env.set_secret("sec-deliver", "db_password", value.as_bytes(), &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    // A second secret from a file, delivered under another file name.
    let f = env.dir.join("api.txt");
    fs::write(&f, b"api-token").unwrap();
    let o = env
        .cmd()
        .args(["secret", "set", "api", "--isc", "sec-deliver", "--file"])
        .arg(&f)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let ls = env.json(&["secret", "ls", "--isc", "sec-deliver", "--json"]);
    let names: Vec<&str> =
        ls.as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["api", "db_password"]);
    assert!(!ls.to_string().contains(&value), "ls must never print values");
    // Rotation re-seals both; delivery afterwards must still work.
    let rot = env.json(&["secret", "rotate-key", "--json"]);
    assert_eq!(rot["resealed"], 2, "{rot}");

    let script = format!(
        "stat -c '%a %u %g' /run/secrets/db_password /run/secrets/api.key /run/secrets; \
         cat /run/secrets/db_password; echo; cat /run/secrets/api.key; echo; \
         {ISC} probe write:/run/secrets open_write:/run/secrets/db_password status"
    );
    let m = env.manifest(
        "sec-deliver",
        &script,
        "[secrets]\ndb_password = {}\napi = { file_name = \"api.key\" }\n",
    );
    let out = env.run(&m);
    assert!(out.status.success(), "isc run failed: {}", stderr(&out));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "400 1000 1000", "{text}");
    assert_eq!(lines[1], "400 1000 1000", "{text}");
    assert_eq!(lines[2], "500 1000 1000", "{text}");
    assert_eq!(lines[3], value);
    assert_eq!(lines[4], "api-token");
    let probes: Vec<ProbeOutcome> = serde_json::from_str(lines[5]).unwrap();
    assert_eq!(probes[0].errno, Some(EROFS), "creating in /run/secrets: {:?}", probes[0]);
    assert!(!probes[1].ok, "opening a secret for writing must fail: {:?}", probes[1]);
    assert_eq!(probes[1].errno, Some(EROFS), "{:?}", probes[1]);
    env.assert_clean();

    // rm, then a start that needs it is refused with the fix named.
    let o =
        env.cmd().args(["secret", "rm", "db_password", "--isc", "sec-deliver"]).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let out = env.run(&m);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("db_password") && err.contains("isc secret set"), "{err}");
    env.assert_clean();
}

/// Kills a background `isc run` if the test fails while it runs (its ISC dies with it).
struct KillOnDrop(Option<Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn wait_for_service(env: &Env, name: &str, child: &mut Child) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let list = env.json(&["ps", "--json"]);
        if let Some(s) = list.as_array().unwrap().iter().find(|s| s["name"] == name) {
            return s.clone();
        }
        if let Some(st) = child.try_wait().unwrap() {
            let mut e = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut e).unwrap();
            panic!("isc run ended early ({st}): {e}");
        }
        assert!(Instant::now() < deadline, "`{name}` did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn plaintext_is_nowhere_on_the_host_and_volume_is_ciphertext_at_rest() {
    let env = Env::new("leak");
    // The canaries reach the service only as secrets, so neither the manifest, argv nor the
    // audit trail ever holds them: any copy found on the host leaked from the vault's path.
    let secret = canary("secret");
    let file_name = canary("name");
    let control = canary("control");
    for (n, v) in [("token", &secret), ("fname", &file_name), ("control", &control)] {
        let o = env.set_secret("sec-leak", n, v.as_bytes(), &[]);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let vol = "[[filesystem.volumes]]\nname = \"data\"\npath = \"/data\"\nsize = \"16M\"\nencrypted = true\n";
    // The control: an unencrypted volume, where the scan must find what the service wrote.
    let plain = "[[filesystem.volumes]]\nname = \"plain\"\npath = \"/plain\"\nsize = \"8M\"\nencrypted = false\n";
    let extra = format!("{vol}{plain}[secrets]\ntoken = {{}}\nfname = {{}}\ncontrol = {{}}\n");
    // Run 1 (background): store the secret in the volume under the secret file name, then stay
    // up so /proc of the service can be inspected.
    let script = "n=$(cat /run/secrets/fname); cat /run/secrets/token > /data/$n; \
                  cat /run/secrets/control > /plain/c; exec sleep 30";
    let m = env.manifest("sec-leak", script, &extra);
    let child =
        env.cmd().arg("run").arg(&m).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let mut guard = KillOnDrop(Some(child));
    let st = wait_for_service(&env, "sec-leak", guard.0.as_mut().unwrap());
    // `service_pid` is the pid inside the ISC's PID namespace; on the host the service is
    // PID 1's child.
    let init = st["init_pid"].as_i64().unwrap();
    let children = fs::read_to_string(format!("/proc/{init}/task/{init}/children")).unwrap();
    let svc: i64 = children.split_whitespace().next().expect("PID 1 has a child").parse().unwrap();
    for (pid_key, pid) in [("service", svc), ("PID 1", init)] {
        for f in ["environ", "cmdline"] {
            let bytes = fs::read(format!("/proc/{pid}/{f}"))
                .unwrap_or_else(|e| panic!("/proc/{pid}/{f} ({pid_key}): {e}"));
            assert!(!contains(&bytes, secret.as_bytes()), "secret in /proc/{pid}/{f}");
        }
    }
    // The tmpfs exists only in the ISC's mount namespace: the host's table never has it.
    let mounts = env.leftover_mounts();
    assert!(
        mounts.iter().all(|m| !m.contains("/secrets")),
        "secrets tmpfs visible on the host: {mounts:?}"
    );
    let monitor = st["monitor_pid"].as_i64().unwrap();
    let mon_env = fs::read(format!("/proc/{monitor}/environ")).unwrap();
    assert!(!contains(&mon_env, secret.as_bytes()));
    // The service sees its secret (read through its own root).
    let seen = fs::read(format!("/proc/{svc}/root/run/secrets/token")).unwrap();
    assert_eq!(seen, secret.as_bytes());
    let o = env.cmd().args(["stop", "sec-leak"]).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let out = guard.0.take().unwrap().wait_with_output().unwrap();
    assert!(out.status.code().is_some(), "{}", stderr(&out));
    env.assert_clean();

    // Run 2: the data persisted across runs.
    let m2 = env.manifest("sec-leak", "ls /data; cat /data/$(cat /run/secrets/fname)", &extra);
    let out = env.run(&m2);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), format!("{file_name}\n{secret}"));
    env.assert_clean();

    // At rest: no plaintext anywhere under --root or --state, image included.
    let image = env.root().join("vault/volumes/sec-leak/data.img");
    assert!(image.is_file());
    let plain_img = env.root().join("vault/volumes/sec-leak/plain.img");
    assert_eq!(files_containing(&env.root(), control.as_bytes()), [plain_img], "the scan works");
    for needle in [&secret, &file_name] {
        let mut hits = files_containing(&env.root(), needle.as_bytes());
        hits.extend(files_containing(&env.state(), needle.as_bytes()));
        assert!(hits.is_empty(), "plaintext {needle:?} found in {hits:?}");
    }
    let v = env.json(&["volume", "inspect", "data", "--isc", "sec-leak", "--json"]);
    assert_eq!(v["encrypted"], true);
    assert_eq!(v["size"], 16 << 20);
    assert!(v["mounted_at"].is_null(), "{v}");
    let ls = env.json(&["volume", "ls", "--json"]);
    assert_eq!(ls.as_array().unwrap().len(), 2);
    let o = env.cmd().args(["volume", "rm", "data", "--isc", "sec-leak"]).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!image.exists());
}

#[test]
fn tampered_blob_refuses_the_start_and_leaves_nothing_mounted() {
    let env = Env::new("tamper");
    let o = env.set_secret("sec-tamper", "key", b"s3cret", &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let vol =
        "[[filesystem.volumes]]\nname = \"v\"\npath = \"/v\"\nsize = \"8M\"\nencrypted = true\n";
    let m = env.manifest(
        "sec-tamper",
        "cat /run/secrets/key",
        &format!("{vol}[secrets]\nkey = {{}}\n"),
    );
    let out = env.run(&m);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "s3cret");

    let blob = env.root().join("vault/secrets/sec-tamper/key.sealed");
    let mut bytes = fs::read(&blob).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    fs::write(&blob, &bytes).unwrap();
    let out = env.run(&m);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("authentication failed") && err.contains("key.sealed"), "{err}");
    assert!(err.contains("delivering secrets"), "the failed step is named: {err}");
    // The volume was opened before the failure: it must be closed again.
    env.assert_clean();
    assert!(env.json(&["ps", "--json"]).as_array().unwrap().is_empty());

    // A blob replayed under another ISC's name is refused the same way.
    let o = env.set_secret("sec-other", "key", b"other", &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    fs::copy(env.root().join("vault/secrets/sec-other/key.sealed"), &blob).unwrap();
    let out = env.run(&m);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("authentication failed"), "{}", stderr(&out));
    env.assert_clean();

    // A corrupt volume image: clear error, nothing attached.
    let o = env.set_secret("sec-tamper", "key", b"s3cret", &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let img = env.root().join("vault/volumes/sec-tamper/v.img");
    let mut f = fs::OpenOptions::new().write(true).open(&img).unwrap();
    std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(1024)).unwrap();
    f.write_all(&[0u8; 1024]).unwrap();
    drop(f);
    let out = env.run(&m);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("volume `v`") && err.contains("e2fsck"), "{err}");
    env.assert_clean();
}

#[test]
fn passphrase_vault_unlocks_from_a_file_never_argv() {
    let env = Env::new("pass");
    let pass = env.dir.join("pass");
    fs::write(&pass, "correct horse battery staple\n").unwrap();
    fs::set_permissions(&pass, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let pf = pass.to_str().unwrap();
    let o = env.set_secret("sec-pass", "pw", b"from-passphrase-vault", &["--passphrase-file", pf]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(env
        .root()
        .join("vault/keys")
        .read_dir()
        .unwrap()
        .flatten()
        .all(|e| { !e.file_name().to_string_lossy().starts_with("master-") }));
    let m = env.manifest("sec-pass", "cat /run/secrets/pw", "[secrets]\npw = {}\n");
    let out = env.cmd().env("ISC_PASSPHRASE_FILE", &pass).arg("run").arg(&m).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "from-passphrase-vault");
    // Without the passphrase, or with a wrong one: refused, clearly.
    let out = env.run(&m);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("passphrase"), "{}", stderr(&out));
    fs::write(&pass, "wrong\n").unwrap();
    let out = env.cmd().env("ISC_PASSPHRASE_FILE", &pass).arg("run").arg(&m).output().unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("wrong passphrase"), "{}", stderr(&out));
    // A group-readable passphrase file is refused.
    fs::set_permissions(&pass, std::os::unix::fs::PermissionsExt::from_mode(0o640)).unwrap();
    let o = env.set_secret("sec-pass", "pw", b"x", &["--passphrase-file", pf]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("chmod 600"), "{}", stderr(&o));
    env.assert_clean();
}

fn median_ms(env: &Env, m: &Path, runs: usize) -> f64 {
    let mut v: Vec<f64> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            let out = env.run(m);
            assert!(out.status.success(), "{}", stderr(&out));
            t.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Not an assertion: prints what secrets and an encrypted volume add to `isc run` of `true`.
#[test]
fn bench_start_cost_of_secrets_and_volume() {
    let env = Env::new("bench");
    for i in 0..20 {
        let o = env.set_secret("sec-bench", &format!("s{i}"), format!("value-{i}").as_bytes(), &[]);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let one = "[secrets]\ns0 = {}\n".to_string();
    let twenty =
        format!("[secrets]\n{}", (0..20).map(|i| format!("s{i} = {{}}\n")).collect::<String>());
    let vol =
        "[[filesystem.volumes]]\nname = \"b\"\npath = \"/b\"\nsize = \"8M\"\nencrypted = true\n";
    let base = env.manifest("sec-bench", "true", "");
    median_ms(&env, &base, 1); // builds and caches the image
    let t0 = median_ms(&env, &base, 5);
    let t1 = median_ms(&env, &env.manifest("sec-bench", "true", &one), 5);
    let t20 = median_ms(&env, &env.manifest("sec-bench", "true", &twenty), 5);
    let vm = env.manifest("sec-bench", "true", vol);
    let first = Instant::now();
    let out = env.run(&vm);
    assert!(out.status.success(), "{}", stderr(&out));
    let tv_first = first.elapsed().as_secs_f64() * 1000.0;
    let tv = median_ms(&env, &vm, 5);
    eprintln!(
        "isc run `true` (median of 5, debug build): baseline {t0:.1} ms; +1 secret {:+.1} ms; \
         +20 secrets {:+.1} ms; +1 encrypted volume {:+.1} ms (first use, mkfs: {:+.1} ms)",
        t1 - t0,
        t20 - t0,
        tv - t0,
        tv_first - t0
    );
    env.assert_clean();
}

#[test]
fn a_volume_left_open_by_a_killed_monitor_is_closed_by_the_next_start() {
    let env = Env::new("stalevol");
    let vol =
        "[[filesystem.volumes]]\nname = \"d\"\npath = \"/d\"\nsize = \"8M\"\nencrypted = true\n";
    let m = env.manifest("sec-stale", "echo kept > /d/f; exec sleep 30", vol);
    let child =
        env.cmd().arg("run").arg(&m).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let mut guard = KillOnDrop(Some(child));
    let st = wait_for_service(&env, "sec-stale", guard.0.as_mut().unwrap());
    let init = st["init_pid"].as_i64().unwrap();
    // SIGKILL the monitor: no cleanup code of it runs; PID 1 dies with it (PDEATHSIG).
    let mut c = guard.0.take().unwrap();
    c.kill().unwrap();
    c.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Path::new(&format!("/proc/{init}")).exists() {
        assert!(Instant::now() < deadline, "PID 1 outlived its monitor");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(!env.leftover_mounts().is_empty(), "the killed monitor left its volume mounted");
    // The next start of the same ISC closes the stale mount and reopens the volume: the data
    // written before the kill is still there.
    let m2 = env.manifest("sec-stale", "cat /d/f", vol);
    let out = env.run(&m2);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "kept\n");
    assert!(env.leftover_mounts().is_empty(), "{:?}", env.leftover_mounts());
    assert!(env.leftover_loops().is_empty(), "{:?}", env.leftover_loops());
}
