//! A hibernating monitor (`isc_engine::monitor_hibernate`, docs/engine.md): after a quiet
//! second an idle ISC's monitor is a few-KiB program holding its descriptors; anything that
//! needs the monitor execs the whole isc back, which goes on as if it had never slept.

mod common;
mod dockproc;
mod netns;

use std::fs;
use std::io::Read;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::*;
use dockproc::DockProc;
use isc_net::link::Rtnl;
use netns::in_private_netns;
use serde_json::Value;

const TINY_MONITOR: &str = "/memfd:isc-monitor (deleted)";

/// The ISC's records on the trail (`isc audit show --json --isc NAME`).
fn trail(env: &Env, name: &str) -> Vec<Value> {
    let out = env.cmd().args(["audit", "show", "--json", "--isc", name]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn audit_verifies(env: &Env) {
    let out = env.cmd().args(["audit", "verify"]).output().unwrap();
    assert!(
        out.status.success(),
        "the trail must verify: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn an_idle_monitor_hibernates_and_wakes_for_verify_and_stop() {
    let env = Env::new("mh-idle");
    let m = env.manifest(
        "mh-idle",
        &["/bin/sh", "-c", "trap 'exit 7' TERM; /usr/bin/sleep 600 & wait"],
        "",
    );
    let mut g = Guard(&env, "mh-idle", Some(run_captured(&env, &m)));
    let s = env.wait_running("mh-idle");
    let monitor = s["monitor_pid"].as_i64().unwrap();
    let cmdline = fs::read(format!("/proc/{monitor}/cmdline")).unwrap();
    wait_exe(monitor, TINY_MONITOR, 10);
    // The whole monitor: ~400 KiB of private memory, two threads (docs/benchmarks.md).
    let anon = status_field(monitor, "RssAnon:");
    assert!(anon <= 32, "a hibernating monitor has {anon} KiB of anonymous memory");
    assert_eq!(status_field(monitor, "Threads:"), 1);
    // Same process, same command line: the Dock recognises its monitors by it.
    assert_eq!(fs::read(format!("/proc/{monitor}/cmdline")).unwrap(), cmdline);
    // The registry needs no monitor: `isc ps` leaves it asleep.
    assert_eq!(env.ps()[0]["monitor_pid"], monitor);
    assert_eq!(exe_of(monitor), TINY_MONITOR);
    // `isc verify` wakes it (and PID 1): every check passes.
    let out = env.cmd().args(["verify", "mh-idle", "--json"]).output().unwrap();
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("verify: {e}: {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(v["score"]["pass"], true, "{v}");
    assert_ne!(exe_of(monitor), TINY_MONITOR, "woken for the probes");
    // …and it hibernates again.
    wait_exe(monitor, TINY_MONITOR, 10);
    std::thread::sleep(Duration::from_millis(300));
    assert!(env.cmd().args(["stop", "mh-idle"]).status().unwrap().success());
    let out = g.2.take().unwrap().wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(7), "{}", String::from_utf8_lossy(&out.stderr));
    let rec = exit_record(&out);
    assert_eq!(rec["code"], 7, "{rec}");
    // The run's length counts the time asleep (> 2 quiet seconds plus the verify).
    assert!(rec["run_ms"].as_u64().unwrap() >= 2000, "{rec}");
    let recs = trail(&env, "mh-idle");
    let exit = recs.iter().find(|r| r["kind"] == "isc_exit").unwrap_or_else(|| panic!("{recs:#?}"));
    assert_eq!(exit["detail"]["code"], 7);
    audit_verifies(&env);
    assert_nothing_left(&env);
}

#[test]
fn a_service_ending_while_its_monitor_hibernates_is_recorded_and_cleaned_up() {
    let env = Env::new("mh-end");
    let m = env.manifest("mh-end", &["/bin/sh", "-c", "/usr/bin/sleep 3; echo done; exit 5"], "");
    let mut g = Guard(&env, "mh-end", Some(run_captured(&env, &m)));
    let monitor = env.wait_running("mh-end")["monitor_pid"].as_i64().unwrap();
    wait_exe(monitor, TINY_MONITOR, 10);
    let out = g.2.take().unwrap().wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(5), "{}", String::from_utf8_lossy(&out.stderr));
    // The output written while the monitor slept woke it and was relayed.
    assert_eq!(String::from_utf8_lossy(&out.stdout), "done\n");
    let rec = exit_record(&out);
    assert_eq!(rec["code"], 5, "{rec}");
    assert!(rec["run_ms"].as_u64().unwrap() >= 3000, "{rec}");
    let recs = trail(&env, "mh-end");
    assert!(recs.iter().any(|r| r["kind"] == "isc_exit" && r["detail"]["code"] == 5), "{recs:#?}");
    audit_verifies(&env);
    assert_nothing_left(&env);
}

#[test]
fn a_denial_while_the_monitor_hibernates_is_on_the_trail() {
    let env = Env::new("mh-deny");
    // bpf(2) is denied (EPERM, logged by the kernel) once the monitor has gone to sleep.
    let script = format!("/usr/bin/sleep 3; {ISC} probe bpf; /usr/bin/sleep 600");
    let m = env.manifest("mh-deny", &["/bin/sh", "-c", &script], "");
    let mut g = Guard(&env, "mh-deny", Some(run_captured(&env, &m)));
    let monitor = env.wait_running("mh-deny")["monitor_pid"].as_i64().unwrap();
    wait_exe(monitor, TINY_MONITOR, 10);
    let t = Instant::now();
    let denial = loop {
        let recs = trail(&env, "mh-deny");
        if let Some(d) = recs
            .into_iter()
            .find(|r| r["kind"] == "seccomp_denial" && r["detail"]["syscall"] == libc::SYS_bpf)
        {
            break d;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "no bpf denial on the trail");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(denial["actor"], "kernel");
    // Back to sleep after it, then stopped: the exit record counts the denial made while the
    // monitor slept (the collector's counts survive its execs).
    wait_exe(monitor, TINY_MONITOR, 10);
    assert!(env.cmd().args(["stop", "mh-deny"]).status().unwrap().success());
    let out = g.2.take().unwrap().wait_with_output().unwrap();
    let recs = trail(&env, "mh-deny");
    let exit = recs.iter().find(|r| r["kind"] == "isc_exit").unwrap_or_else(|| panic!("{recs:#?}"));
    assert_eq!(exit["detail"]["kernel_denials"]["recorded"], 1, "{exit}");
    assert!(out.status.code().is_some());
    audit_verifies(&env);
    assert_nothing_left(&env);
}

#[test]
fn another_iscs_denials_leave_a_hibernating_monitor_asleep() {
    let env = Env::new("mh-quiet");
    let m = env.manifest("mh-quiet", &["/usr/bin/sleep", "600"], "");
    let mut g = Guard(&env, "mh-quiet", Some(env.spawn(&m)));
    let monitor = env.wait_running("mh-quiet")["monitor_pid"].as_i64().unwrap();
    wait_exe(monitor, TINY_MONITOR, 10);
    let switches = status_field(monitor, "voluntary_ctxt_switches:");
    // Another ISC's service is denied three times (kernel audit records on every monitor's
    // socket): this monitor reads and drops them without waking the whole isc.
    let other = env.manifest("mh-noisy", &[ISC, "probe", "bpf", "bpf", "bpf"], "");
    let out = env.run(&other, &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(exe_of(monitor), TINY_MONITOR, "woken by another ISC's denials");
    let woke = status_field(monitor, "voluntary_ctxt_switches:") - switches;
    assert!(woke >= 1, "the records never reached the hibernating monitor");
    let recs = trail(&env, "mh-noisy");
    assert!(recs.iter().any(|r| r["kind"] == "seccomp_denial"), "{recs:#?}");
    assert!(trail(&env, "mh-quiet").iter().all(|r| r["kind"] != "seccomp_denial"));
    assert!(env.cmd().args(["stop", "mh-quiet"]).status().unwrap().success());
    let _ = g.2.take().unwrap().wait();
    assert_nothing_left(&env);
}

#[test]
fn a_monitor_with_a_secret_hibernates_and_its_end_removes_the_secrets_mount_point() {
    use std::io::Write;
    let env = Env::new("mh-secret");
    let mut set = env
        .cmd()
        .args(["secret", "set", "tok", "--isc", "mh-secret"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    set.stdin.take().unwrap().write_all(b"canary").unwrap();
    assert!(set.wait().unwrap().success());
    // Reads its secret once the monitor sleeps (the delivery was at the start), then waits.
    let script =
        "/usr/bin/sleep 3; read -r s < /run/secrets/tok; echo \"got $s\"; /usr/bin/sleep 600";
    let m = env.manifest("mh-secret", &["/bin/sh", "-c", script], "[secrets]\ntok = {}\n");
    let mut g = Guard(&env, "mh-secret", Some(run_captured(&env, &m)));
    let monitor = env.wait_running("mh-secret")["monitor_pid"].as_i64().unwrap();
    wait_exe(monitor, TINY_MONITOR, 10);
    let mount_point = env.dir.join("root/mnt/secrets/mh-secret");
    assert!(mount_point.is_dir(), "the secrets' host mount point while the ISC runs");
    // The line woke it; asleep again, then stopped.
    std::thread::sleep(Duration::from_secs(2));
    wait_exe(monitor, TINY_MONITOR, 10);
    assert!(env.cmd().args(["stop", "mh-secret"]).status().unwrap().success());
    let out = g.2.take().unwrap().wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "got canary\n");
    assert!(!mount_point.exists(), "the woken monitor removed the secrets' mount point");
    assert_nothing_left(&env);
}

/// Loop devices whose backing file is `image`, as `losetup -a` lists them.
fn losetup_lines(image: &std::path::Path) -> Vec<String> {
    let out = std::process::Command::new("losetup").arg("-a").output().unwrap();
    assert!(out.status.success(), "losetup -a: {}", String::from_utf8_lossy(&out.stderr));
    let image = image.to_string_lossy().into_owned();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(&image))
        .map(String::from)
        .collect()
}

#[test]
fn a_monitor_with_an_encrypted_volume_hibernates_and_its_end_closes_the_volume() {
    use std::os::fd::AsFd;
    let env = Env::new("mh-vol");
    let vol =
        "[[filesystem.volumes]]\nname = \"d\"\npath = \"/d\"\nsize = \"8M\"\nencrypted = true\n";
    // Writes into the volume, reads it back once the monitor sleeps, then waits.
    let script = "echo kept > /d/f; /usr/bin/sleep 3; read -r s < /d/f; echo \"got $s\"; \
                  /usr/bin/sleep 600";
    let m = env.manifest("mh-vol", &["/bin/sh", "-c", script], vol);
    let mut g = Guard(&env, "mh-vol", Some(run_captured(&env, &m)));
    let monitor = env.wait_running("mh-vol")["monitor_pid"].as_i64().unwrap();
    wait_exe(monitor, TINY_MONITOR, 10);
    // Asleep, the volume is as the start left it: mounted, attached, its key in the keyring.
    let image = fs::canonicalize(env.dir.join("root/vault/volumes/mh-vol/d.img")).unwrap();
    let mount = env.dir.join("root/mnt/volumes/mh-vol/d");
    assert!(isc_vault::is_mount_point(&mount), "the volume is mounted while the monitor sleeps");
    assert_eq!(losetup_lines(&image).len(), 1, "one loop device backed by the volume");
    let data = mount.join("data");
    let dir = isc_vault::fscrypt::open_dir(&data).unwrap();
    let policy = isc_vault::fscrypt::get_policy(dir.as_fd(), &data).unwrap().unwrap();
    let id = policy.master_key_identifier;
    let status = isc_vault::fscrypt::key_status(dir.as_fd(), &data, &id).unwrap();
    assert_eq!(status, isc_vault::fscrypt::KEY_STATUS_PRESENT);
    drop(dir);
    // The line woke it; asleep again, then stopped.
    std::thread::sleep(Duration::from_secs(2));
    wait_exe(monitor, TINY_MONITOR, 10);
    assert!(isc_vault::is_mount_point(&mount));
    assert!(env.cmd().args(["stop", "mh-vol"]).status().unwrap().success());
    let out = g.2.take().unwrap().wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "got kept\n");
    assert_eq!(exit_record(&out)["signal"], 15, "SIGTERM ended the service");
    // The woken monitor closed the volume: key removed with the filesystem (unmounted, so its
    // keyring is gone), no loop device, no mount point.
    assert!(!isc_vault::is_mount_point(&mount), "the volume is still mounted");
    assert!(!mount.exists(), "the volume's mount point is left");
    assert_eq!(losetup_lines(&image), Vec::<String>::new(), "loop devices left");
    assert!(isc_vault::loopdev::devices_backed_by(&image).is_empty());
    assert_nothing_left(&env);
    // The volume persisted and was closed cleanly: the next run reads what the first wrote.
    let again =
        env.manifest("mh-vol", &["/bin/sh", "-c", "read -r s < /d/f; echo \"again $s\""], vol);
    let out = env.run(&again, &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "again kept\n");
    assert_eq!(losetup_lines(&image), Vec::<String>::new(), "loop devices left");
    assert_nothing_left(&env);
}

#[test]
fn an_isc_dies_with_its_hibernating_monitor() {
    let env = Env::new("mh-kill");
    let m = env.manifest("mh-kill", &["/usr/bin/sleep", "600"], "");
    let mut g = Guard(&env, "mh-kill", Some(env.spawn(&m)));
    let s = env.wait_running("mh-kill");
    let (monitor, init) = (s["monitor_pid"].as_i64().unwrap(), s["init_pid"].as_i64().unwrap());
    wait_exe(monitor, TINY_MONITOR, 10);
    // SAFETY: SIGKILL to the monitor this test started (its pid from the registry).
    assert_eq!(unsafe { libc::kill(monitor as i32, libc::SIGKILL) }, 0);
    let mut c = g.2.take().unwrap();
    let _ = c.wait();
    let mut err = String::new();
    let _ = c.stderr.take().unwrap().read_to_string(&mut err);
    // PID 1 sees its channel close and ends the ISC.
    let t = Instant::now();
    while fs::metadata(format!("/proc/{init}")).is_ok() {
        assert!(t.elapsed() < Duration::from_secs(10), "PID 1 outlived its monitor");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The next start of the name collects what the dead monitor left.
    let again = env.manifest("mh-kill", &["/bin/sh", "-c", "exit 0"], "");
    let out = env.run(&again, &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_nothing_left(&env);
}

#[test]
fn a_dock_monitor_hibernates_logs_its_services_output_and_outlives_a_killed_dock() {
    let mut d = DockProc::start("mh-dock", "");
    // One line 3 s after the start, when the monitor sleeps; then it waits for a stop.
    let script = "sleep 3; echo late-line; trap 'exit 7' TERM; sleep 1000 & wait";
    let m = d.manifest("mh-dock", script, "", "");
    d.ok(&["up", m.to_str().unwrap()]);
    let monitor = d.wait_status("mh-dock", "running", Duration::from_secs(10))["monitor_pid"]
        .as_i64()
        .unwrap();
    wait_exe(monitor, TINY_MONITOR, 10);
    // The line woke it and reached the Dock's log file.
    let t = Instant::now();
    while !String::from_utf8_lossy(&d.ok(&["dock", "logs", "mh-dock"]).stdout).contains("late-line")
    {
        assert!(t.elapsed() < Duration::from_secs(10), "the line never reached the log");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Asleep again; a killed and restarted Dock re-adopts the same process (its command line
    // is the one the Dock started).
    wait_exe(monitor, TINY_MONITOR, 10);
    d.kill9();
    d.spawn();
    let r = d.record("mh-dock");
    assert_eq!(r["status"], "running", "{r}");
    assert_eq!(r["monitor_pid"], monitor, "{r}");
    // A stop through the new Dock wakes it; the Dock reads the exit record it leaves.
    let r: Value =
        serde_json::from_slice(&d.ok(&["dock", "stop", "mh-dock", "--json"]).stdout).unwrap();
    assert_eq!(r["status"], "exited", "{r}");
    assert_eq!(r["last_exit"]["code"], 7, "{r}");
    let recs = trail(&d.env, "mh-dock");
    assert!(recs.iter().any(|r| r["kind"] == "isc_exit" && r["detail"]["code"] == 7), "{recs:#?}");
}

/// The ISC's network record (`<state>/isc/NAME/net.json`): its id, addresses, host link.
fn net_record(env: &Env, name: &str) -> Value {
    let path = env.dir.join("state/isc").join(name).join("net.json");
    serde_json::from_slice(&fs::read(path).unwrap()).unwrap()
}

/// What the host gets from a TCP connection to `to`: the greeting, or None.
fn greeting(to: SocketAddr, timeout: Duration) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&to, timeout).ok()?;
    s.set_read_timeout(Some(timeout)).unwrap();
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    Some(buf)
}

fn nft_table() -> String {
    let out = std::process::Command::new("nft").args(["list", "table", "inet", "isc"]).output();
    String::from_utf8_lossy(&out.unwrap().stdout).into_owned()
}

/// Nothing of the ISC `id`'s network is left (as `network.rs` checks): no nft object, no link
/// but `lo`, no lease; and nothing else of the ISC either.
fn assert_no_network_left(env: &Env, id: &str) {
    let table = nft_table();
    assert!(!table.contains(id), "nft objects of {id} left behind:\n{table}");
    let links = Rtnl::open().unwrap().link_names().unwrap();
    assert_eq!(links, vec!["lo".to_string()], "links left behind");
    let leases = fs::read_to_string(env.dir.join("root/net/leases.json")).unwrap();
    let leases: Value = serde_json::from_str(&leases).unwrap();
    assert_eq!(leases["leases"], serde_json::json!({}), "leases left behind");
    assert_nothing_left(env);
}

/// A service listening on 8080 (declared) for ten minutes, egress by address only.
const SERVE: [&str; 3] = [ISC, "probe", "serve_tcp:8080:600"];
const LISTEN: &str = "[network]\nlisten = [{ port = 8080 }]\negress = [\"192.0.2.2:443\"]";

#[test]
fn a_networked_monitor_hibernates_while_its_isc_serves_and_stop_removes_the_network() {
    in_private_netns(
        "a_networked_monitor_hibernates_while_its_isc_serves_and_stop_removes_the_network",
        || {
            let env = Env::new("mh-net");
            let m = env.manifest("mh-net", &SERVE, LISTEN);
            let mut g = Guard(&env, "mh-net", Some(run_captured(&env, &m)));
            let monitor = env.wait_running("mh-net")["monitor_pid"].as_i64().unwrap();
            let rec = net_record(&env, "mh-net");
            let id = rec["id"].as_str().unwrap().to_string();
            let link = rec["policy"]["if_host"].as_str().unwrap().to_string();
            let v4: IpAddr = rec["policy"]["addr_v4"].as_str().unwrap().parse().unwrap();
            // The kernel routes and filters without the monitor: the declared port answers
            // while it sleeps (asleep before and after: waking and sleeping again takes a
            // quiet second), and the firewall objects and the link are all still there. The
            // host's first MLD reports on the new link are dropped by the ISC's firewall and
            // may wake the monitor once (a `net_drop`): then try again.
            let to = SocketAddr::new(v4, 8080);
            let mut asleep_throughout = false;
            for _ in 0..3 {
                wait_exe(monitor, TINY_MONITOR, 10);
                assert_eq!(greeting(to, Duration::from_secs(3)).as_deref(), Some("ok\n"));
                let table = nft_table();
                assert!(table.contains(&format!("\"{link}\"")), "{table}");
                assert!(Rtnl::open().unwrap().link_names().unwrap().contains(&link));
                if exe_of(monitor) == TINY_MONITOR {
                    asleep_throughout = true;
                    break;
                }
            }
            assert!(asleep_throughout, "every connection found the monitor awake");
            assert!(env.cmd().args(["stop", "mh-net"]).status().unwrap().success());
            let out = g.2.take().unwrap().wait_with_output().unwrap();
            let rec = exit_record(&out);
            assert!(rec["run_ms"].as_u64().unwrap() >= 1000, "{rec}");
            audit_verifies(&env);
            // The woken monitor tore the network down as a whole one would have.
            assert_no_network_left(&env, &id);
        },
    );
}

#[test]
fn a_packet_dropped_while_the_monitor_hibernates_is_on_the_trail() {
    in_private_netns("a_packet_dropped_while_the_monitor_hibernates_is_on_the_trail", || {
        let env = Env::new("mh-drop");
        let m = env.manifest("mh-drop", &SERVE, LISTEN);
        let mut g = Guard(&env, "mh-drop", Some(run_captured(&env, &m)));
        let monitor = env.wait_running("mh-drop")["monitor_pid"].as_i64().unwrap();
        let rec = net_record(&env, "mh-drop");
        let id = rec["id"].as_str().unwrap().to_string();
        let v4: IpAddr = rec["policy"]["addr_v4"].as_str().unwrap().parse().unwrap();
        wait_exe(monitor, TINY_MONITOR, 10);
        // An undeclared port: the ISC's firewall drops the SYN and logs it to its NFLOG group,
        // whose socket the sleeping monitor holds and wakes on.
        assert_eq!(greeting(SocketAddr::new(v4, 9090), Duration::from_millis(500)), None);
        let drops = |recs: &[Value]| -> Vec<Value> {
            recs.iter()
                .filter(|r| r["kind"] == "net_drop" && r["detail"]["dport"] == 9090)
                .cloned()
                .collect()
        };
        let t = Instant::now();
        let drop = loop {
            if let Some(d) = drops(&trail(&env, "mh-drop")).pop() {
                break d;
            }
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "no net_drop on the trail while running"
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        assert_eq!(drop["actor"], "kernel");
        assert_eq!(drop["detail"]["direction"], "in", "{drop}");
        assert_eq!(drop["detail"]["dst"], v4.to_string(), "{drop}");
        // Back to sleep after it, then stopped: the exit record counts the drop made while the
        // monitor slept (the network collector's counts survive its execs).
        wait_exe(monitor, TINY_MONITOR, 10);
        assert!(env.cmd().args(["stop", "mh-drop"]).status().unwrap().success());
        let out = g.2.take().unwrap().wait_with_output().unwrap();
        assert!(out.status.code().is_some(), "{}", String::from_utf8_lossy(&out.stderr));
        let recs = trail(&env, "mh-drop");
        // Every dropped packet of the ISC (its own IPv6 router solicitations among them).
        let all: Vec<&Value> = recs
            .iter()
            .filter(|r| r["kind"] == "net_drop" && !r["detail"]["direction"].is_null())
            .collect();
        assert!(!drops(&recs).is_empty());
        let exit =
            recs.iter().find(|r| r["kind"] == "isc_exit").unwrap_or_else(|| panic!("{recs:#?}"));
        assert_eq!(exit["detail"]["net_denials"]["recorded"], all.len(), "{exit} {all:#?}");
        audit_verifies(&env);
        assert_no_network_left(&env, &id);
    });
}
