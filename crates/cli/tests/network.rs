//! Issue 5 through `isc run`: the network boundary proved from inside real ISCs.
//!
//! Every test re-executes itself under `unshare --net --mount`: that fresh namespace stands in
//! for the host (forwarding on, `lo` up, nothing else), "outside" servers live in a further
//! namespace behind a veth the test creates. Nothing here touches the machine's real network.
//! ISC services are the `isc` binary itself (`isc probe serve_tcp:…`, `sleep`), and the
//! attempts from inside run as `isc probe --isc NAME …` in the ISC's live confinement.

mod netns;

use std::fs;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use isc_engine::probe::ProbeOutcome;
use isc_net::link::Rtnl;
use isc_net::{Denial, Direction, NflogReader};
use netns::{in_private_netns, start_isc, stop_isc, HeldNetns, RunningIsc};
use serde_json::Value;

const ISC: &str = env!("CARGO_BIN_EXE_isc");
const EACCES: i32 = 13;
const NFLOG_GROUP: u16 = 100;

/// A held namespace (`isc_testkit::HeldNetns`) with this suite's servers and clients.
struct Netns(HeldNetns);

impl std::ops::Deref for Netns {
    type Target = HeldNetns;
    fn deref(&self) -> &HeldNetns {
        &self.0
    }
}

impl Netns {
    fn new() -> Netns {
        Netns(HeldNetns::new())
    }

    /// The outside network behind `up-isc0`: host 192.0.2.1/24 and 2001:db8::1/64; outside
    /// .2 and .3, ::2 and ::3, with default routes back to the host.
    fn outside() -> Netns {
        let ns = Netns::new();
        let mut r = Rtnl::open().unwrap();
        r.create_veth("up-isc0", "eth0", &ns.file).unwrap();
        r.add_address("up-isc0", "192.0.2.1".parse().unwrap(), 24).unwrap();
        r.add_address("up-isc0", "2001:db8::1".parse().unwrap(), 64).unwrap();
        r.set_up("up-isc0").unwrap();
        ns.run(|| {
            let mut r = Rtnl::open()?;
            isc_net::link::disable_dad("eth0")?;
            for a in ["192.0.2.2", "192.0.2.3"] {
                r.add_address("eth0", a.parse().unwrap(), 24)?;
            }
            for a in ["2001:db8::2", "2001:db8::3"] {
                r.add_address("eth0", a.parse().unwrap(), 64)?;
            }
            r.set_up("eth0")?;
            r.add_default_route("eth0", "192.0.2.1".parse().unwrap())?;
            r.add_default_route("eth0", "2001:db8::1".parse().unwrap())
        });
        ns
    }

    /// A dual-stack TCP greeter ("ok\n") on `[::]:port` inside this namespace.
    fn tcp_server(&self, port: u16) {
        let l = self.run(move || Ok(TcpListener::bind(("::", port)).unwrap()));
        std::thread::spawn(move || greet(l));
    }

    /// A UDP echo on `addr` inside this namespace. Bound to the address, not `[::]`: with
    /// several addresses an unbound socket may answer from another one, which the asking
    /// (connected) socket and conntrack would rightly ignore.
    fn udp_echo(&self, addr: &str) {
        let addr: SocketAddr = addr.parse().unwrap();
        let s = self.run(move || Ok(UdpSocket::bind(addr).unwrap()));
        std::thread::spawn(move || echo(s));
    }
}

fn greet(l: TcpListener) {
    for mut s in l.incoming().flatten() {
        let _ = s.write_all(b"ok\n");
    }
}

fn echo(s: UdpSocket) {
    let mut buf = [0u8; 1500];
    while let Ok((n, from)) = s.recv_from(&mut buf) {
        let _ = s.send_to(&buf[..n], from);
    }
}

/// What the host (this namespace) gets from `to`: the greeting, or None.
fn host_tcp(to: SocketAddr, timeout: Duration) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&to, timeout).ok()?;
    s.set_read_timeout(Some(timeout)).unwrap();
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    Some(buf)
}

/// Retry until `deadline` (the service may still be binding).
fn host_tcp_eventually(to: SocketAddr) -> Option<String> {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(8) {
        if let Some(g) = host_tcp(to, Duration::from_millis(500)) {
            return Some(g);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// A private --root/--state pair under /tmp, removed (image store included) on drop.
struct Env {
    dir: PathBuf,
}

struct Isc {
    run: RunningIsc,
    record: Value,
}

impl Isc {
    fn v4(&self) -> IpAddr {
        self.record["policy"]["addr_v4"].as_str().unwrap().parse().unwrap()
    }
    fn v6(&self) -> IpAddr {
        self.record["policy"]["addr_v6"].as_str().unwrap().parse().unwrap()
    }
    fn id(&self) -> String {
        self.record["id"].as_str().unwrap().to_string()
    }
}

impl Env {
    fn new(tag: &str) -> Env {
        let dir = PathBuf::from(format!("/tmp/isc-test-net-{tag}-{}", std::process::id()));
        let _ = isc_image::immutable::remove_tree(&dir);
        fs::create_dir_all(&dir).unwrap();
        Env { dir }
    }
    fn state(&self) -> PathBuf {
        self.dir.join("state")
    }
    fn cmd(&self) -> Command {
        let mut c = Command::new(ISC);
        c.arg("--root").arg(self.dir.join("root")).arg("--state").arg(self.state());
        c
    }
    /// A manifest whose image holds the isc binary, sh and sleep; `network` is the body of
    /// `[network]` (None: no section at all).
    fn manifest(&self, name: &str, exec: &[&str], network: Option<&str>) -> PathBuf {
        let exec: Vec<String> = exec.iter().map(|e| format!("{e:?}")).collect();
        let net = network.map(|n| format!("[network]\n{n}\n")).unwrap_or_default();
        let text = format!(
            "name = \"{name}\"\n[service]\nexec = [{}]\n[image]\nsource = \"host\"\npaths = [\"{ISC}\", \"/bin/sh\", \"/usr/bin/sleep\", \"/bin/true\"]\n{net}",
            exec.join(", ")
        );
        let path = self.dir.join(format!("{name}.toml"));
        fs::write(&path, text).unwrap();
        path
    }
    fn run(&self, manifest: &Path, args: &[&str]) -> Output {
        self.cmd().arg("run").arg(manifest).args(args).output().unwrap()
    }
    /// Starts an ISC in the background; returns once it runs and its network record exists.
    fn spawn(&self, name: &str, exec: &[&str], network: &str, args: &[&str]) -> Isc {
        let m = self.manifest(name, exec, Some(network));
        let run = start_isc(|| self.cmd(), &m, args, name);
        let rec = self.state().join("isc").join(name).join("net.json");
        Isc { run, record: serde_json::from_slice(&fs::read(&rec).unwrap()).unwrap() }
    }
    /// Probes inside the live confinement of a running ISC.
    fn probe(&self, isc: &Isc, probes: &[String]) -> Vec<ProbeOutcome> {
        let out = self.cmd().args(["probe", "--isc", &isc.run.name]).args(probes).output().unwrap();
        assert!(out.status.success(), "isc probe: {}", String::from_utf8_lossy(&out.stderr));
        let mut v: Vec<ProbeOutcome> = serde_json::from_slice(&out.stdout).unwrap();
        // Probe results arrive in completion order; give them back in request order.
        v.sort_by_key(|o| probes.iter().position(|p| *p == o.name));
        v
    }
    fn stop(&self, isc: Isc) {
        stop_isc(|| self.cmd(), isc.run);
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = isc_image::immutable::remove_tree(&self.dir);
    }
}

fn sa(ip: IpAddr, port: u16) -> String {
    SocketAddr::new(ip, port).to_string()
}

fn by_name<'a>(outs: &'a [ProbeOutcome], name: &str) -> &'a ProbeOutcome {
    outs.iter().find(|o| o.name == name).unwrap_or_else(|| panic!("no probe {name}: {outs:?}"))
}

/// Denials read within `wait`.
fn denials(reader: &mut NflogReader, wait: Duration) -> Vec<Denial> {
    let t = Instant::now();
    let mut v = vec![];
    while t.elapsed() < wait {
        if let Some(d) = reader.next(Duration::from_millis(100)) {
            v.push(d);
        }
    }
    v
}

/// Text of one nft set (tests only; isc itself never reads nft output).
fn nft_set(name: &str) -> String {
    let out = Command::new("nft").args(["list", "set", "inet", "isc", name]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn declared_listen_port_answers_undeclared_does_not() {
    in_private_netns("declared_listen_port_answers_undeclared_does_not", || {
        let env = Env::new("listen");
        let mut nflog = NflogReader::open(NFLOG_GROUP).unwrap();
        // Landlock off for this ISC only, so the service really listens on the undeclared
        // port too: what keeps the host out of 9090 is then nftables alone.
        let script = format!("{ISC} probe serve_tcp:8080:30 & exec {ISC} probe serve_tcp:9090:30");
        let web = env.spawn(
            "web",
            &["/bin/sh", "-c", &script],
            "listen = [{ port = 8080 }]",
            &["--unsafe-weaken", "no-landlock"],
        );
        for ip in [web.v4(), web.v6()] {
            let to: SocketAddr = sa(ip, 8080).parse().unwrap();
            assert_eq!(host_tcp_eventually(to).as_deref(), Some("ok\n"), "declared port {to}");
        }
        let inside = env.probe(&web, &["tcp_reach:127.0.0.1:9090:1000".into()]);
        assert!(inside[0].ok, "the service listens on 9090 inside: {inside:?}");
        for ip in [web.v4(), web.v6()] {
            let to: SocketAddr = sa(ip, 9090).parse().unwrap();
            assert_eq!(host_tcp(to, Duration::from_millis(600)), None, "undeclared port {to}");
        }
        let seen = denials(&mut nflog, Duration::from_millis(1500));
        assert!(
            seen.iter().any(|d| d.isc_id == web.id()
                && d.direction == Direction::In
                && d.dport == Some(9090)),
            "denial of 9090 tagged with the ISC: {seen:?}"
        );
        env.stop(web);
    });
}

#[test]
fn egress_only_to_declared_destinations_and_never_the_host() {
    in_private_netns("egress_only_to_declared_destinations_and_never_the_host", || {
        let env = Env::new("egress");
        let out = Netns::outside();
        out.tcp_server(7000);
        out.tcp_server(7001);
        for a in ["192.0.2.2:5300", "[2001:db8::2]:5300", "192.0.2.2:5301", "[2001:db8::2]:5301"] {
            out.udp_echo(a);
        }
        out.udp_echo("192.0.2.3:53");
        // Services of the host itself, on every host address.
        std::thread::spawn(|| greet(TcpListener::bind(("::", 7000)).unwrap()));
        std::thread::spawn(|| echo(UdpSocket::bind(("::", 5300)).unwrap()));
        let mut nflog = NflogReader::open(NFLOG_GROUP).unwrap();
        let net = r#"egress = ["192.0.2.2:7000", "[2001:db8::2/128]:7000", "udp:192.0.2.2:5300", "udp:[2001:db8::2/128]:5300"]"#;
        let app = env.spawn("app", &["/usr/bin/sleep", "30"], net, &[]);
        let host4 = app.record["policy"]["addr_v4"].as_str().unwrap().parse::<std::net::Ipv4Addr>();
        let host4 = IpAddr::V4(std::net::Ipv4Addr::from(u32::from(host4.unwrap()) - 1));
        let host6 = app.record["policy"]["addr_v6"].as_str().unwrap().parse::<std::net::Ipv6Addr>();
        let host6 = IpAddr::V6(std::net::Ipv6Addr::from(u128::from(host6.unwrap()) - 1));

        let allowed: Vec<String> = [
            "tcp_reach:192.0.2.2:7000:3000",
            "tcp_reach:[2001:db8::2]:7000:3000",
            "udp_ask:192.0.2.2:5300:2000",
            "udp_ask:[2001:db8::2]:5300:2000",
        ]
        .map(String::from)
        .into();
        for o in env.probe(&app, &allowed) {
            assert!(o.ok, "declared destination refused: {o:?}");
        }
        let denied: Vec<String> = [
            // Same port, undeclared address: Landlock allows port 7000, nftables must drop.
            "tcp_reach:192.0.2.3:7000:400",
            "tcp_reach:[2001:db8::3]:7000:400",
            // UDP (Landlock has no UDP rules): nftables alone.
            "udp_ask:192.0.2.2:5301:400",
            "udp_ask:[2001:db8::2]:5301:400",
            "udp_ask:192.0.2.3:53:400",
            // The host: its end of the veth, its uplink address, v4 and v6.
            &format!("tcp_reach:{}:400", sa(host4, 7000)),
            &format!("tcp_reach:{}:400", sa(host6, 7000)),
            "tcp_reach:192.0.2.1:7000:400",
            "tcp_reach:[2001:db8::1]:7000:400",
            &format!("udp_ask:{}:400", sa(host4, 5300)),
            "udp_ask:192.0.2.1:5300:400",
        ]
        .map(String::from)
        .into();
        for o in env.probe(&app, &denied) {
            assert!(!o.ok, "undeclared destination answered: {o:?}");
            assert_ne!(o.errno, Some(EACCES), "must be the firewall, not Landlock: {o:?}");
        }
        // An undeclared TCP port: Landlock refuses before a packet leaves.
        let ll = env.probe(&app, &["tcp_reach:192.0.2.2:7001:1000".into()]);
        assert_eq!(ll[0].errno, Some(EACCES), "Landlock connect rule: {ll:?}");

        // nfnetlink_log batches records for up to a second (NFULNL_TIMEOUT_DEFAULT).
        let seen = denials(&mut nflog, Duration::from_millis(1500));
        let mine = |dst: &str| {
            let dst: IpAddr = dst.parse().unwrap();
            seen.iter()
                .any(|d| d.isc_id == app.id() && d.direction == Direction::Out && d.dst == dst)
        };
        for dst in ["192.0.2.3", "2001:db8::3", "192.0.2.1"] {
            assert!(mine(dst), "no denial to {dst} tagged with the ISC: {seen:?}");
        }
        env.stop(app);
        drop(out);
    });
}

#[test]
fn an_isc_reaches_another_only_when_allowed_and_landlock_is_a_second_layer() {
    in_private_netns(
        "an_isc_reaches_another_only_when_allowed_and_landlock_is_a_second_layer",
        || {
            let env = Env::new("peers");
            let mut nflog = NflogReader::open(NFLOG_GROUP).unwrap();
            let sleep = ["/usr/bin/sleep", "30"];
            // A starts before B: B lets it in, but A's Landlock ports were fixed without B's.
            let a = env.spawn("a", &sleep, "", &[]);
            let serve = [ISC, "probe", "serve_tcp:8080:30"];
            let b = env.spawn(
                "b",
                &serve,
                "listen = [{ port = 8080 }]\nallow_from = [\"a\", \"c\"]",
                &[],
            );
            let c = env.spawn("c", &sleep, "", &[]);
            // D is not allowed in; its own egress declares port 8080 elsewhere, so Landlock
            // lets it try and only B's firewall chain stands in the way.
            let d = env.spawn("d", &sleep, "egress = [\"203.0.113.9:8080\"]", &[]);

            let to_b = |ms: u32| {
                vec![
                    format!("tcp_reach:{}:{ms}", sa(b.v4(), 8080)),
                    format!("tcp_reach:{}:{ms}", sa(b.v6(), 8080)),
                ]
            };
            for o in env.probe(&c, &to_b(3000)) {
                assert!(o.ok && o.value == "ok\n", "C is allowed into B: {o:?}");
            }
            for o in env.probe(&d, &to_b(500)) {
                assert!(!o.ok && o.errno != Some(EACCES), "D must be dropped by nftables: {o:?}");
            }
            // nftables would let A in (its addresses are in B's peer set) ...
            // (global sets keyed by B's host link: `"isc<id>" . <peer address>`)
            let peer = |ip: IpAddr| format!("\"isc{}\" . {ip}", b.id());
            let (from4, from6) = ("isc_from4", "isc_from6");
            assert!(nft_set(from4).contains(&peer(a.v4())), "{}", nft_set(from4));
            assert!(nft_set(from6).contains(&peer(a.v6())), "{}", nft_set(from6));
            // ... but A's Landlock connect rule, fixed at A's start, does not.
            for o in env.probe(&a, &to_b(1000)) {
                assert_eq!(o.errno, Some(EACCES), "Landlock stops A: {o:?}");
            }
            let seen = denials(&mut nflog, Duration::from_millis(1500));
            let d4 = d.v4();
            assert!(
                seen.iter().any(|x| (x.isc_id == b.id() || x.isc_id == d.id()) && x.src == d4),
                "D's attempt logged: {seen:?}"
            );
            // C stops: its addresses leave B's peer set at once (they may be leased again).
            assert!(nft_set(from4).contains(&peer(c.v4())), "{}", nft_set(from4));
            let c_v4 = c.v4();
            env.stop(c);
            assert!(!nft_set(from4).contains(&peer(c_v4)), "{}", nft_set(from4));
            assert!(nft_set(from4).contains(&peer(a.v4())));
            for isc in [a, b, d] {
                env.stop(isc);
            }
        },
    );
}

#[test]
fn a_published_port_answers_on_its_declared_host_address_only() {
    in_private_netns("a_published_port_answers_on_its_declared_host_address_only", || {
        let env = Env::new("publish");
        let out = Netns::outside();
        // A second host address on the uplink: the port must not be published there.
        Rtnl::open().unwrap().add_address("up-isc0", "192.0.2.11".parse().unwrap(), 24).unwrap();
        let web = env.spawn(
            "pub",
            &[ISC, "probe", "serve_tcp:8080:30"],
            "listen = [{ port = 8080, publish = \"192.0.2.1:18080\" }]",
            &[],
        );
        let from_outside = |to: &str, wait_ms: u64| {
            let to: SocketAddr = to.parse().unwrap();
            out.run(move || {
                let t = Instant::now();
                loop {
                    let got = host_tcp(to, Duration::from_millis(300));
                    if got.is_some() || t.elapsed() > Duration::from_millis(wait_ms) {
                        return Ok(got);
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            })
        };
        assert_eq!(from_outside("192.0.2.1:18080", 8000).as_deref(), Some("ok\n"), "DNAT");
        assert_eq!(from_outside("192.0.2.11:18080", 0), None, "published on another address");
        // The ISC's own address is reachable only on its listen port, not the host port.
        assert_eq!(from_outside(&sa(web.v4(), 18080), 0), None, "host port on the ISC address");
        env.stop(web);
        drop(out);
    });
}

#[test]
fn a_bandwidth_limit_holds_on_a_bulk_transfer_from_the_isc() {
    in_private_netns("a_bandwidth_limit_holds_on_a_bulk_transfer_from_the_isc", || {
        let env = Env::new("bw");
        // 1.5 MB at 8 Mbit/s (1 MB/s): ~1.5 s, long against tbf's 20 ms burst.
        const BYTES: usize = 24 * 65536;
        let out = Netns::outside();
        let l = out.run(|| Ok(TcpListener::bind(("192.0.2.2", 5201)).unwrap()));
        let sink = std::thread::spawn(move || {
            // Bounded: a transfer that never comes fails the test instead of hanging it.
            l.set_nonblocking(true).unwrap();
            let t = Instant::now();
            let mut s = loop {
                match l.accept() {
                    Ok((s, _)) => break s,
                    Err(_) if t.elapsed() < Duration::from_secs(15) => {
                        std::thread::sleep(Duration::from_millis(10))
                    }
                    Err(e) => return (0, None, format!("no connection: {e}")),
                }
            };
            s.set_nonblocking(false).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut buf = vec![0u8; 65536];
            let (mut total, mut first) = (0usize, None);
            // Count to the last byte, then acknowledge: the sender waits for that before it
            // exits, because the ISC's network goes away with it (unsent data would be lost).
            while total < BYTES {
                match s.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        first.get_or_insert_with(Instant::now);
                        total += n;
                    }
                    Err(e) => return (total, None, format!("read: {e}")),
                }
            }
            let took = first.map(|f| f.elapsed());
            let _ = s.write_all(b"done\n");
            (total, took, String::new())
        });
        let send = format!(
            "exec 3<>/dev/tcp/192.0.2.2/5201 && /usr/bin/dd if=/dev/zero bs=65536 count={} status=none >&3 && read -r -u 3 ack",
            BYTES / 65536
        );
        let m = env.manifest("bulk", &["/bin/bash", "-c", &send], None);
        let net = "egress = [\"192.0.2.2:5201\"]\nbandwidth = \"8mbit\"";
        let text = fs::read_to_string(&m)
            .unwrap()
            .replace("\"/bin/true\"]", "\"/bin/true\", \"/bin/bash\", \"/usr/bin/dd\"]");
        fs::write(&m, format!("{text}[network]\n{net}\n")).unwrap();
        let run = env.run(&m, &[]);
        let (total, took, err) = sink.join().unwrap();
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(run.status.success(), "{stderr}");
        assert_eq!(total, BYTES, "the whole transfer arrived ({err}); isc run said: {stderr}");
        let rate = total as f64 * 8.0 / took.unwrap().as_secs_f64();
        println!("BENCH-BANDWIDTH bulk transfer from the ISC: {:.2} Mbit/s (limit 8)", rate / 1e6);
        assert!((6.4e6..=9.6e6).contains(&rate), "rate {rate} not within 8mbit ±20%");
        drop(out);
    });
}

#[test]
fn without_a_network_section_there_is_only_loopback() {
    in_private_netns("without_a_network_section_there_is_only_loopback", || {
        let env = Env::new("lo");
        let probes =
            ["udp_ask:127.0.0.1:9:500", "udp_ask:192.0.2.2:53:300", "tcp_reach:127.0.0.1:9:300"];
        let mut exec = vec![ISC, "probe"];
        exec.extend(probes);
        let m = env.manifest("lonely", &exec, None);
        let out = env.run(&m, &[]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let v: Vec<ProbeOutcome> = serde_json::from_slice(&out.stdout).unwrap();
        // lo is up: the datagram reached the port, nothing listened, ICMP said so.
        assert_eq!(by_name(&v, probes[0]).errno, Some(libc::ECONNREFUSED), "{v:?}");
        assert_eq!(by_name(&v, probes[1]).errno, Some(libc::ENETUNREACH), "{v:?}");
        assert_eq!(by_name(&v, probes[2]).errno, Some(EACCES), "{v:?}");
        let links = Rtnl::open().unwrap().link_names().unwrap();
        assert_eq!(links, vec!["lo".to_string()], "no host link for a loopback-only ISC");
    });
}

#[test]
fn nothing_leaks_after_20_start_stop_cycles() {
    in_private_netns("nothing_leaks_after_20_start_stop_cycles", || {
        let env = Env::new("leak");
        let net = "listen = [{ port = 8080 }]\negress = [\"192.0.2.2:443\", \"udp:[2001:db8::53/128]:53\"]\nallow_from = [\"other\"]\nbandwidth = \"10mbit\"";
        let ok = env.manifest("cycle", &[ISC, "probe", "ids"], Some(net));
        for i in 0..20 {
            let out = env.run(&ok, &[]);
            assert!(out.status.success(), "cycle {i}: {}", String::from_utf8_lossy(&out.stderr));
        }
        // A start that fails after the network is up (no such executable) cleans up too.
        let bad = env.manifest("broken", &["/nonexistent"], Some(net));
        assert!(!env.run(&bad, &[]).status.success());
        let links = Rtnl::open().unwrap().link_names().unwrap();
        assert_eq!(links, vec!["lo".to_string()], "links left behind");
        let table = Command::new("nft").args(["list", "table", "inet", "isc"]).output().unwrap();
        let table = String::from_utf8_lossy(&table.stdout);
        for name in ["cycle", "broken"] {
            let id = isc_id(&env.state(), name);
            assert!(!table.contains(&id), "nft objects of {name} left behind:\n{table}");
        }
        let leases = fs::read_to_string(env.dir.join("root/net/leases.json")).unwrap();
        let leases: Value = serde_json::from_str(&leases).unwrap();
        assert_eq!(leases["leases"], serde_json::json!({}), "leases left behind");
        let left: Vec<_> = fs::read_dir(env.state().join("isc")).unwrap().flatten().collect();
        assert!(left.is_empty(), "registrations left behind: {left:?}");
    });
}

#[test]
fn a_killed_monitors_network_is_removed_by_the_next_start() {
    in_private_netns("a_killed_monitors_network_is_removed_by_the_next_start", || {
        let env = Env::new("crash");
        let net = "listen = [{ port = 8080 }]\negress = [\"192.0.2.2:443\"]";
        let mut isc = env.spawn("crashy", &["/usr/bin/sleep", "30"], net, &[]);
        let id = isc.id();
        let init: i32 = serde_json::from_slice::<Vec<Value>>(
            &env.cmd().args(["ps", "--json"]).output().unwrap().stdout,
        )
        .unwrap()
        .iter()
        .find(|s| s["name"] == "crashy")
        .unwrap()["init_pid"]
            .as_i64()
            .unwrap() as i32;
        // SIGKILL the monitor: none of its teardown runs; PID 1 and its netns die with it.
        isc.run.child.kill().unwrap();
        isc.run.child.wait().unwrap();
        let t = Instant::now();
        while Path::new(&format!("/proc/{init}")).exists() {
            assert!(t.elapsed() < Duration::from_secs(5), "PID 1 outlived its monitor");
            std::thread::sleep(Duration::from_millis(10));
        }
        let table = |id: &str| {
            let t = Command::new("nft").args(["list", "table", "inet", "isc"]).output().unwrap();
            String::from_utf8_lossy(&t.stdout).contains(id)
        };
        let leases = || fs::read_to_string(env.dir.join("root/net/leases.json")).unwrap();
        assert!(table(&id), "the killed monitor's nft objects should still be there");
        assert!(leases().contains(&id), "the killed monitor's lease should still be held");
        // Any next start in this state directory removes the leftovers.
        let other = env.manifest("after", &["/bin/true"], None);
        let out = env.run(&other, &[]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(!table(&id), "nft objects of the dead ISC left behind");
        assert!(!leases().contains(&id), "lease of the dead ISC left behind");
        let links = Rtnl::open().unwrap().link_names().unwrap();
        assert_eq!(links, vec!["lo".to_string()], "links left behind");
        let left: Vec<_> = fs::read_dir(env.state().join("isc")).unwrap().flatten().collect();
        assert!(left.is_empty(), "registrations left behind: {left:?}");
    });
}

#[test]
fn reconcile_rebuilds_the_table_from_the_running_iscs() {
    in_private_netns("reconcile_rebuilds_the_table_from_the_running_iscs", || {
        let env = Env::new("recon");
        let isc = env.spawn("steady", &["/usr/bin/sleep", "30"], "listen = [{ port = 8080 }]", &[]);
        let id = isc.id();
        let table = || {
            let t = Command::new("nft").args(["list", "table", "inet", "isc"]).output().unwrap();
            t.status.success().then(|| String::from_utf8_lossy(&t.stdout).into_owned())
        };
        assert!(table().unwrap().contains(&id));
        // Drift: someone flushes the table. `isc net reconcile` (and a Dock at start-up) rebuilds
        // it, in one transaction, from the records of the running ISCs.
        assert!(Command::new("nft")
            .args(["delete", "table", "inet", "isc"])
            .status()
            .unwrap()
            .success());
        assert!(table().is_none());
        let dry = env.cmd().args(["net", "reconcile", "--dry-run"]).output().unwrap();
        assert!(String::from_utf8_lossy(&dry.stdout).contains(&id), "dry run names the ISC");
        assert!(table().is_none(), "a dry run changes nothing");
        let out = env.cmd().args(["net", "reconcile"]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(table().expect("table rebuilt").contains(&id));
        env.stop(isc);
        assert!(!table().unwrap_or_default().contains(&id), "stop removes its objects again");
    });
}

/// The id `isc run` gives an ISC (mirrors hooks_net::isc_id: BLAKE3 of state dir and name).
fn isc_id(state: &Path, name: &str) -> String {
    let mut h = blake3::Hasher::new();
    h.update(state.as_os_str().as_encoded_bytes());
    h.update(b"\0");
    h.update(name.as_bytes());
    h.finalize().to_hex()[..12].to_string()
}
