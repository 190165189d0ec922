//! Issue 5: egress host names follow DNS for the ISC's lifetime (TTL expiry, fail static).
//!
//! Like `network.rs`, the test re-executes itself under `unshare --net --mount`: that fresh
//! namespace stands in for the host; the "outside" (a TCP greeter on 192.0.2.2 and .3, and a
//! DNS server written here, on 192.0.2.2:53) lives in a further namespace behind a veth the
//! test creates. `isc run` gets `ISC_RESOLV_CONF` pointing at that server.

mod netns;

use std::fs;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use isc_engine::probe::ProbeOutcome;
use isc_net::link::Rtnl;
use netns::{in_private_netns, start_isc, stop_isc, HeldNetns, RunningIsc};
use serde_json::Value;

const ISC: &str = env!("CARGO_BIN_EXE_isc");
const EACCES: i32 = 13;
const X: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
const Y: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 3);
/// The answer is "server failure" (rcode 2) while the test DNS server holds this address.
const SERVFAIL: u32 = 0;

/// The "outside": a held namespace behind `up-iscdns0` (host 192.0.2.1/24, outside .2 and .3
/// with a default route back).
struct Outside(HeldNetns);

impl Outside {
    fn new() -> Outside {
        let out = Outside(HeldNetns::new());
        let mut r = Rtnl::open().unwrap();
        r.create_veth("up-iscdns0", "eth0", &out.0.file).unwrap();
        r.add_address("up-iscdns0", "192.0.2.1".parse().unwrap(), 24).unwrap();
        r.set_up("up-iscdns0").unwrap();
        out.0.run(|| {
            let mut r = Rtnl::open()?;
            for a in [X, Y] {
                r.add_address("eth0", a.into(), 24)?;
            }
            r.set_up("eth0")?;
            r.add_default_route("eth0", "192.0.2.1".parse().unwrap())
        });
        out
    }

    /// A TCP greeter ("ok\n") on `0.0.0.0:port` (both outside addresses).
    fn tcp_server(&self, port: u16) {
        let l = self.0.run(move || Ok(TcpListener::bind(("0.0.0.0", port)).unwrap()));
        std::thread::spawn(move || {
            for mut s in l.incoming().flatten() {
                let _ = s.write_all(b"ok\n");
            }
        });
    }

    /// A DNS server on X:53 answering `svc.test` A with the address in `addr` (TTL `ttl` s; or
    /// SERVFAIL when it holds [`SERVFAIL`]), AAAA with no record. Counts the A questions.
    fn dns_server(&self, addr: Arc<AtomicU32>, asked: Arc<AtomicUsize>, ttl: u32) {
        let s = self.0.run(|| Ok(UdpSocket::bind((X, 53)).unwrap()));
        std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while let Ok((n, from)) = s.recv_from(&mut buf) {
                let q = &buf[..n];
                // Header (12) + "\x03svc\x04test\x00" (10) + type + class.
                if n != 26 || &q[12..22] != b"\x03svc\x04test\x00" {
                    continue;
                }
                let qtype = u16::from_be_bytes([q[22], q[23]]);
                let mut m = q.to_vec();
                m[2] |= 0x80; // QR
                let now = addr.load(Ordering::SeqCst);
                if qtype == 1 {
                    asked.fetch_add(1, Ordering::SeqCst);
                    if now == SERVFAIL {
                        m[3] |= 2;
                    } else {
                        m[7] = 1; // ANCOUNT
                        m.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
                        m.extend_from_slice(&ttl.to_be_bytes());
                        m.extend_from_slice(&[0, 4]);
                        m.extend_from_slice(&now.to_be_bytes());
                    }
                }
                let _ = s.send_to(&m, from);
            }
        });
    }
}

/// A private --root/--state pair under /tmp, removed (image store included) on drop.
struct Env {
    dir: PathBuf,
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = isc_image::immutable::remove_tree(&self.dir);
    }
}

impl Env {
    fn new(tag: &str) -> Env {
        let dir = PathBuf::from(format!("/tmp/isc-test-netdns-{tag}-{}", std::process::id()));
        let _ = isc_image::immutable::remove_tree(&dir);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("resolv.conf"), format!("nameserver {X}\noptions timeout:1\n")).unwrap();
        Env { dir }
    }
    fn cmd(&self) -> Command {
        let mut c = Command::new(ISC);
        c.arg("--root").arg(self.dir.join("root")).arg("--state").arg(self.dir.join("state"));
        c.env("ISC_RESOLV_CONF", self.dir.join("resolv.conf"));
        c
    }
    fn record(&self, name: &str) -> Value {
        let path = self.dir.join("state").join("isc").join(name).join("net.json");
        serde_json::from_slice(&fs::read(path).unwrap()).unwrap()
    }
    fn spawn(&self, name: &str, network: &str) -> RunningIsc {
        let text = format!(
            "name = \"{name}\"\n[service]\nexec = [\"/usr/bin/sleep\", \"60\"]\n[image]\nsource = \"host\"\npaths = [\"{ISC}\", \"/usr/bin/sleep\"]\n[network]\n{network}\n"
        );
        let m = self.dir.join(format!("{name}.toml"));
        fs::write(&m, text).unwrap();
        start_isc(|| self.cmd(), &m, &[], name)
    }
    /// `tcp_reach` from inside the running ISC.
    fn reach(&self, isc: &RunningIsc, to: Ipv4Addr, port: u16, ms: u32) -> ProbeOutcome {
        let probe = format!("tcp_reach:{}:{ms}", SocketAddr::from((to, port)));
        let out = self.cmd().args(["probe", "--isc", &isc.name, &probe]).output().unwrap();
        assert!(out.status.success(), "isc probe: {}", String::from_utf8_lossy(&out.stderr));
        let mut v: Vec<ProbeOutcome> = serde_json::from_slice(&out.stdout).unwrap();
        v.pop().unwrap()
    }
    /// The `net_policy` records of `name` on the audit trail.
    fn net_policy(&self, name: &str) -> Vec<Value> {
        let args = ["audit", "show", "--json", "--isc", name, "--kind", "net_policy"];
        let out = self.cmd().args(args).output().unwrap();
        assert!(out.status.success(), "audit show: {}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }
    fn stop(&self, isc: RunningIsc) {
        stop_isc(|| self.cmd(), isc);
    }
}

/// The egress addresses (`net`) of the record for port 7000.
fn egress_nets(record: &Value) -> Vec<String> {
    let rules = record["policy"]["egress"].as_array().unwrap();
    let port = |r: &&Value| r["port"] == 7000;
    rules.iter().filter(port).map(|r| r["net"].as_str().unwrap().to_string()).collect()
}

/// Polls `f` every 100 ms for up to `limit`.
fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let t = Instant::now();
    while t.elapsed() < limit {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

fn has_key(records: &[Value], key: &str) -> bool {
    records.iter().any(|r| !r["detail"][key].is_null())
}

/// The outside: a TCP server on port 7000 and a DNS server answering `svc.test` with the
/// address in the returned cell (X at first) and TTL `ttl` s, counting its queries.
fn svc_test_outside(ttl: u32) -> (Outside, Arc<AtomicU32>, Arc<AtomicUsize>) {
    let out = Outside::new();
    out.tcp_server(7000);
    let addr = Arc::new(AtomicU32::new(u32::from(X)));
    let asked = Arc::new(AtomicUsize::new(0));
    out.dns_server(addr.clone(), asked.clone(), ttl);
    (out, addr, asked)
}

#[test]
fn an_egress_host_name_follows_its_dns_answer_and_fails_static() {
    in_private_netns("an_egress_host_name_follows_its_dns_answer_and_fails_static", || {
        let env = Env::new("ttl");
        let (out, addr, asked) = svc_test_outside(1);

        let app = env.spawn("dnsapp", "egress = [\"svc.test:7000\"]");
        assert_eq!(egress_nets(&env.record("dnsapp")), vec!["192.0.2.2/32"]);
        let o = env.reach(&app, X, 7000, 3000);
        assert!(o.ok && o.value == "ok\n", "svc.test (X) is reachable: {o:?}");
        let o = env.reach(&app, Y, 7000, 400);
        assert!(!o.ok && o.errno != Some(EACCES), "Y is not declared yet: {o:?}");
        // A 5 s TTL would wake a sleeping monitor every 5 s: it stays whole
        // (`HIBERNATE_MIN_REFRESH`).
        std::thread::sleep(Duration::from_secs(2));
        assert_ne!(monitor_exe(&env, "dnsapp"), TINY, "hibernated with a 5 s TTL");

        // svc.test moves to Y: within the clamped TTL (5 s) plus slack, the ISC follows.
        addr.store(u32::from(Y), Ordering::SeqCst);
        let moved = eventually(Duration::from_secs(10), || env.reach(&app, Y, 7000, 500).ok);
        assert!(moved, "the ISC never reached svc.test's new address Y");
        let o = env.reach(&app, X, 7000, 500);
        assert!(!o.ok, "the old address X still answers: {o:?}");
        assert_ne!(o.errno, Some(EACCES), "must be the firewall, not Landlock: {o:?}");
        assert_eq!(egress_nets(&env.record("dnsapp")), vec!["192.0.2.3/32"]);
        let recs = env.net_policy("dnsapp");
        let change = recs.iter().find(|r| !r["detail"]["egress_refreshed"].is_null());
        let change = &change.expect("the change is on the audit trail")["detail"];
        assert_eq!(change["egress_refreshed"][0]["host"], "svc.test", "{change}");
        assert_eq!(change["egress_refreshed"][0]["added"][0], "192.0.2.3", "{change}");
        assert_eq!(change["egress_refreshed"][0]["removed"][0], "192.0.2.2", "{change}");

        // The server fails: the last good answer (Y) stays in force, and the failure is
        // recorded once.
        addr.store(SERVFAIL, Ordering::SeqCst);
        let failed = eventually(Duration::from_secs(10), || {
            has_key(&env.net_policy("dnsapp"), "egress_lookup_failed")
        });
        assert!(failed, "the failed lookup is on the audit trail");
        let o = env.reach(&app, Y, 7000, 3000);
        assert!(o.ok, "fail static: Y stays reachable while DNS fails: {o:?}");
        assert_eq!(egress_nets(&env.record("dnsapp")), vec!["192.0.2.3/32"]);
        let fails = env.net_policy("dnsapp");
        let n = fails.iter().filter(|r| !r["detail"]["egress_lookup_failed"].is_null()).count();
        assert_eq!(n, 1, "one record per failure streak: {fails:?}");
        assert!(asked.load(Ordering::SeqCst) >= 3, "start, change and failure were asked");

        let link = env.record("dnsapp")["policy"]["if_host"].as_str().unwrap().to_string();
        env.stop(app);
        // Everything the ISC had in `inet isc` is gone: no refresh re-added its elements (its
        // egress elements, and every other, are keyed by its link `isc<id>`).
        let table = Command::new("nft").args(["list", "table", "inet", "isc"]).output().unwrap();
        let table = String::from_utf8_lossy(&table.stdout).into_owned();
        assert!(table.contains("set isc_egress4"), "{table}");
        assert!(!table.contains(&format!("\"{link}\"")), "{table}");
        // The refresher's records (a second writer in the monitor) keep the trail verifiable.
        let verify = env.cmd().args(["audit", "verify"]).output().unwrap();
        assert!(
            verify.status.success(),
            "audit verify: {}",
            String::from_utf8_lossy(&verify.stderr)
        );
        drop(out);
    });
}

/// The executable of `name`'s monitor (`/memfd:isc-monitor (deleted)`: the tiny monitor).
fn monitor_exe(env: &Env, name: &str) -> String {
    let out = env.cmd().args(["ps", "--json"]).output().unwrap();
    let ps: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let s = ps.iter().find(|s| s["name"] == name).unwrap();
    let pid = s["monitor_pid"].as_i64().unwrap();
    fs::read_link(format!("/proc/{pid}/exe")).unwrap().to_string_lossy().into_owned()
}

const TINY: &str = "/memfd:isc-monitor (deleted)";

#[test]
fn a_monitor_with_an_egress_dns_refresher_hibernates_and_follows_dns() {
    in_private_netns("a_monitor_with_an_egress_dns_refresher_hibernates_and_follows_dns", || {
        let env = Env::new("sleep");
        // TTL 30 s: refreshes no more often than the floor (`HIBERNATE_MIN_REFRESH`).
        let (out, addr, asked) = svc_test_outside(30);
        let app = env.spawn("byname", "egress = [\"svc.test:7000\"]");
        let started = Instant::now();
        assert_eq!(egress_nets(&env.record("byname")), vec!["192.0.2.2/32"]);
        // The refresher's timer is the tiny monitor's deadline: the monitor sleeps meanwhile.
        let slept = eventually(Duration::from_secs(10), || monitor_exe(&env, "byname") == TINY);
        assert!(slept, "a monitor with an egress DNS refresher never hibernated");
        let asked_at_start = asked.load(Ordering::SeqCst);

        // svc.test moves to Y while the monitor sleeps; nothing looks it up before the TTL.
        addr.store(u32::from(Y), Ordering::SeqCst);
        std::thread::sleep(Duration::from_secs(2));
        assert_eq!(monitor_exe(&env, "byname"), TINY, "woken before the TTL");
        assert_eq!(asked.load(Ordering::SeqCst), asked_at_start, "looked up before the TTL");
        assert_eq!(egress_nets(&env.record("byname")), vec!["192.0.2.2/32"]);

        // At the TTL the deadline wakes the whole isc, whose refresher follows the answer (the
        // record is read without waking the monitor).
        let moved = eventually(Duration::from_secs(45), || {
            egress_nets(&env.record("byname")) == vec!["192.0.2.3/32"]
        });
        assert!(moved, "the egress rule never followed svc.test to Y");
        let took = started.elapsed();
        assert!(took >= Duration::from_secs(25), "followed before the TTL: {took:?}");
        assert!(asked.load(Ordering::SeqCst) > asked_at_start, "svc.test was looked up again");
        // And sleeps again after its quiet second.
        let again = eventually(Duration::from_secs(10), || monitor_exe(&env, "byname") == TINY);
        assert!(again, "the monitor did not go back to sleep after the refresh");
        let recs = env.net_policy("byname");
        let change = recs.iter().find(|r| !r["detail"]["egress_refreshed"].is_null());
        let change = &change.expect("the change is on the audit trail")["detail"];
        assert_eq!(change["egress_refreshed"][0]["added"][0], "192.0.2.3", "{change}");
        assert_eq!(change["egress_refreshed"][0]["removed"][0], "192.0.2.2", "{change}");
        // The firewall follows too (a probe wakes the monitor; it answers from the ISC).
        let o = env.reach(&app, Y, 7000, 3000);
        assert!(o.ok && o.value == "ok\n", "svc.test's new address Y is reachable: {o:?}");
        let o = env.reach(&app, X, 7000, 500);
        assert!(!o.ok, "the old address X still answers: {o:?}");
        assert_ne!(o.errno, Some(EACCES), "must be the firewall, not Landlock: {o:?}");

        let link = env.record("byname")["policy"]["if_host"].as_str().unwrap().to_string();
        env.stop(app);
        // The woken monitor removed everything the refresher put in force.
        let table = Command::new("nft").args(["list", "table", "inet", "isc"]).output().unwrap();
        let table = String::from_utf8_lossy(&table.stdout).into_owned();
        assert!(table.contains("set isc_egress4"), "{table}");
        assert!(!table.contains(&format!("\"{link}\"")), "{table}");
        assert!(!table.contains("192.0.2.3"), "{table}");
        let links = Rtnl::open().unwrap().link_names().unwrap();
        assert!(!links.contains(&link), "{links:?}");
        let leases = fs::read_to_string(env.dir.join("root/net/leases.json")).unwrap();
        let leases: Value = serde_json::from_str(&leases).unwrap();
        assert_eq!(leases["leases"], serde_json::json!({}), "leases left behind");
        let verify = env.cmd().args(["audit", "verify"]).output().unwrap();
        assert!(
            verify.status.success(),
            "audit verify: {}",
            String::from_utf8_lossy(&verify.stderr)
        );
        drop(out);
    });
}
