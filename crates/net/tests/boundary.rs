//! The network boundary, proven from inside namespaces (see tests/common for the harness).

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use common::{cfg, in_private_netns, outside, sa, Netns};
use isc_net::{
    setup_isc, Direction, EgressSpec, EgressTarget, IscNetRequest, Listen, NflogReader, Proto,
    Publish,
};

fn tcp(port: u16) -> Listen {
    Listen { proto: Proto::Tcp, port }
}

fn egress(net: &str, proto: Proto, port: u16) -> EgressSpec {
    EgressSpec { target: EgressTarget::Net(net.parse().unwrap()), proto, port }
}

fn at(ip: impl Into<IpAddr>, port: u16) -> SocketAddr {
    SocketAddr::new(ip.into(), port)
}

#[test]
fn ingress_only_declared_ports_and_published_on_declared_address() {
    in_private_netns("ingress_only_declared_ports_and_published_on_declared_address", || {
        let dir = tempfile::tempdir().unwrap();
        let out = outside();
        let isc = Netns::new();
        let req = IscNetRequest {
            id: "web".into(),
            name: "web".into(),
            listen: vec![tcp(8080)],
            publish: vec![Publish {
                host_addr: "192.0.2.1".parse().unwrap(),
                host_port: 18080,
                proto: Proto::Tcp,
                port: 8080,
            }],
            ..Default::default()
        };
        let lease = setup_isc(&cfg(dir.path()), &req, isc.pid()).unwrap();
        assert_eq!(lease.if_host(), "iscweb");
        for addr in [IpAddr::V4(lease.addr_v4()), IpAddr::V6(lease.addr_v6())] {
            isc.tcp_server(at(addr, 8080));
            isc.tcp_server(at(addr, 9090));
        }
        let (v4, v6) = (lease.addr_v4(), lease.addr_v6());
        // From the host.
        assert!(common::tcp_reach_here(at(v4, 8080), None), "declared port from the host (v4)");
        assert!(common::tcp_reach_here(at(v6, 8080), None), "declared port from the host (v6)");
        assert!(
            !common::tcp_ok_here(at(v4, 9090), None),
            "undeclared port reachable from the host (v4)"
        );
        assert!(
            !common::tcp_ok_here(at(v6, 9090), None),
            "undeclared port reachable from the host (v6)"
        );
        // From outside, routed and published.
        assert!(out.tcp_reach(at(v4, 8080), None), "declared port from outside");
        assert!(!out.tcp_ok(at(v4, 9090), None), "undeclared port reachable from outside");
        assert!(!out.tcp_ok(at(v6, 9090), None), "undeclared v6 port reachable from outside");
        assert!(
            out.tcp_reach(sa("192.0.2.1:18080"), None),
            "published port on the declared host address"
        );
        assert!(
            !out.tcp_ok(sa("[2001:db8::1]:18080"), None),
            "published on an undeclared host address"
        );
        lease.teardown().unwrap();
        assert!(!out.tcp_ok(sa("192.0.2.1:18080"), None), "publish survived teardown");
    });
}

#[test]
fn egress_only_declared_destinations_and_never_the_host() {
    in_private_netns("egress_only_declared_destinations_and_never_the_host", || {
        let dir = tempfile::tempdir().unwrap();
        let out = outside();
        for a in ["192.0.2.2", "[2001:db8::2]"] {
            for p in [443, 444] {
                out.tcp_server(sa(&format!("{a}:{p}")));
            }
            out.udp_echo(sa(&format!("{a}:53")));
            out.udp_echo(sa(&format!("{a}:5353")));
        }
        // The host itself runs services the ISC must never reach.
        common::Netns::tcp_server_here(sa("0.0.0.0:7000"));
        common::Netns::tcp_server_here(sa("[::]:7001"));
        let mut reader = NflogReader::open(100).unwrap();
        let isc = Netns::new();
        let req = IscNetRequest {
            id: "db-client".into(),
            egress: vec![
                egress("192.0.2.2/32", Proto::Tcp, 443),
                egress("2001:db8::2/128", Proto::Tcp, 443),
                egress("192.0.2.0/24", Proto::Udp, 5353),
                // Declared, but a host address: still refused.
                egress("192.0.2.1/32", Proto::Tcp, 7000),
            ],
            ..Default::default()
        };
        let lease = setup_isc(&cfg(dir.path()), &req, isc.pid()).unwrap();
        assert!(isc.tcp_reach(sa("192.0.2.2:443"), None), "declared v4 TCP egress");
        assert!(isc.tcp_reach(sa("[2001:db8::2]:443"), None), "declared v6 TCP egress");
        assert!(isc.udp_reach(sa("192.0.2.2:5353")), "declared UDP egress");
        assert!(!isc.tcp_ok(sa("192.0.2.2:444"), None), "undeclared v4 TCP");
        assert!(!isc.tcp_ok(sa("[2001:db8::2]:444"), None), "undeclared v6 TCP");
        assert!(!isc.udp_ok(sa("[2001:db8::2]:5353")), "undeclared v6 UDP");
        assert!(!isc.udp_ok(sa("192.0.2.2:53")), "DNS to an undeclared resolver (v4)");
        assert!(!isc.udp_ok(sa("[2001:db8::2]:53")), "DNS to an undeclared resolver (v6)");
        for host in [
            at(lease.host_v4(), 7000),
            sa("192.0.2.1:7000"),
            at(lease.host_v6(), 7001),
            sa("[2001:db8::1]:7001"),
        ] {
            assert!(!isc.tcp_ok(host, None), "host address {host} reachable from the ISC");
        }
        assert!(!isc.udp_ok(at(lease.host_v4(), 53)), "host resolver reachable");
        // Spoofing: a second address inside the ISC, then the declared destination from it.
        // The route's preferred source makes the kernel pick the forged address.
        let gw = lease.host_v4().to_string();
        isc.ip(&["addr", "add", "10.88.200.1/32", "dev", "eth0"]);
        isc.ip(&["route", "add", "192.0.2.2/32", "via", &gw, "dev", "eth0", "src", "10.88.200.1"]);
        assert!(!isc.tcp_ok(sa("192.0.2.2:443"), None), "spoofed source got out");
        isc.ip(&["route", "del", "192.0.2.2/32"]);
        assert!(isc.tcp_reach(sa("192.0.2.2:443"), None), "own address stopped working");

        let mut seen = Vec::new();
        while let Some(d) = reader.next(Duration::from_millis(300)) {
            seen.push(d);
        }
        let has = |dst: &str, port: Option<u16>, src: Option<&str>| {
            let dst: IpAddr = dst.parse().unwrap();
            seen.iter().any(|d| {
                d.isc_id == "db-client"
                    && d.direction == Direction::Out
                    && d.dst == dst
                    && d.dport == port
                    && src.is_none_or(|s| d.src == s.parse::<IpAddr>().unwrap())
            })
        };
        assert!(has("192.0.2.2", Some(444), None), "v4 denial missing: {seen:?}");
        assert!(has("2001:db8::2", Some(444), None), "v6 denial missing: {seen:?}");
        assert!(has("192.0.2.2", Some(53), None), "DNS denial missing: {seen:?}");
        assert!(has("192.0.2.2", Some(443), Some("10.88.200.1")), "spoof denial missing: {seen:?}");
        // A refresh swaps the egress rules atomically: 444 in, 443 out.
        let mut lease = lease;
        lease.refresh_egress(&[egress("192.0.2.2/32", Proto::Tcp, 444)]).unwrap();
        assert!(isc.tcp_reach(sa("192.0.2.2:444"), None), "refreshed egress");
        assert!(!isc.tcp_ok(sa("192.0.2.2:443"), None), "egress dropped by the refresh");
        lease.teardown().unwrap();
    });
}

#[test]
fn iscs_reach_each_other_only_as_allowed() {
    in_private_netns("iscs_reach_each_other_only_as_allowed", || {
        let dir = tempfile::tempdir().unwrap();
        let c = cfg(dir.path());
        let (na, nb, nc) = (Netns::new(), Netns::new(), Netns::new());
        let listen = vec![tcp(8080), tcp(8081)];
        let a = setup_isc(
            &c,
            &IscNetRequest { id: "a".into(), listen: vec![tcp(8080)], ..Default::default() },
            na.pid(),
        )
        .unwrap();
        let cc = setup_isc(&c, &IscNetRequest { id: "c".into(), ..Default::default() }, nc.pid())
            .unwrap();
        let allow = vec![IpAddr::V4(a.addr_v4()), IpAddr::V6(a.addr_v6())];
        let mut b = setup_isc(
            &c,
            &IscNetRequest { id: "b".into(), listen, allow_from: allow, ..Default::default() },
            nb.pid(),
        )
        .unwrap();
        for p in [8080, 8081, 9090] {
            nb.tcp_server(at(b.addr_v4(), p));
            nb.tcp_server(at(b.addr_v6(), p));
        }
        na.tcp_server(at(a.addr_v4(), 8080));
        assert!(na.tcp_reach(at(b.addr_v4(), 8080), None), "A→B on a listen port");
        assert!(na.tcp_reach(at(b.addr_v4(), 8081), None), "A→B on the other listen port");
        assert!(na.tcp_reach(at(b.addr_v6(), 8080), None), "A→B over IPv6");
        assert!(!na.tcp_ok(at(b.addr_v4(), 9090), None), "A→B on a port B does not declare");
        assert!(!nc.tcp_ok(at(b.addr_v4(), 8080), None), "C→B although B does not allow C");
        assert!(!nc.tcp_ok(at(b.addr_v6(), 8080), None), "C→B over IPv6");
        assert!(!nb.tcp_ok(at(a.addr_v4(), 8080), None), "B→A although A allows nobody");
        // A spoofing C's address is dropped at A's link, whatever B allows.
        let (gw, forged, target) =
            (a.host_v4().to_string(), cc.addr_v4().to_string(), format!("{}/32", b.addr_v4()));
        na.ip(&["addr", "add", &format!("{forged}/32"), "dev", "eth0"]);
        na.ip(&["route", "add", &target, "via", &gw, "dev", "eth0", "src", &forged]);
        assert!(!na.tcp_ok(at(b.addr_v4(), 8080), None), "spoofed peer address");
        na.ip(&["route", "del", &target]);
        // Allowing C later opens exactly the same ports.
        b.set_allow_from(&[IpAddr::V4(a.addr_v4()), IpAddr::V4(cc.addr_v4())]).unwrap();
        assert!(nc.tcp_reach(at(b.addr_v4(), 8080), None), "C→B after allow");
        assert!(!nc.tcp_ok(at(b.addr_v4(), 9090), None), "C→B on an undeclared port after allow");
        for l in [a, b, cc] {
            l.teardown().unwrap();
        }
    });
}

#[test]
fn a_waiting_nflog_reader_is_woken_by_its_eventfd_and_consumes_the_event() {
    in_private_netns(
        "a_waiting_nflog_reader_is_woken_by_its_eventfd_and_consumes_the_event",
        || {
            let mut reader = NflogReader::open(101).unwrap();
            // SAFETY: eventfd(2) with flags only.
            let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
            assert!(efd >= 0);
            reader.wake_on(efd);
            let waker = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(200));
                let one = 1u64;
                // SAFETY: an 8-byte write to the eventfd.
                unsafe { libc::write(efd, (&one as *const u64).cast(), 8) };
            });
            let t = std::time::Instant::now();
            assert!(reader.next(Duration::from_secs(20)).is_none());
            assert!(t.elapsed() < Duration::from_secs(10), "not woken: {:?}", t.elapsed());
            waker.join().unwrap();
            // The event was consumed: the next wait lasts its whole timeout.
            let t = std::time::Instant::now();
            assert!(reader.next(Duration::from_millis(300)).is_none());
            assert!(t.elapsed() >= Duration::from_millis(250), "{:?}", t.elapsed());
            // SAFETY: closing the eventfd we made; the reader no longer waits on it.
            unsafe { libc::close(efd) };
        },
    );
}

#[test]
fn a_kept_lease_and_nflog_reader_survive_as_state_and_a_descriptor() {
    in_private_netns("a_kept_lease_and_nflog_reader_survive_as_state_and_a_descriptor", || {
        let dir = tempfile::tempdir().unwrap();
        let c = cfg(dir.path());
        let isc = Netns::new();
        let req = IscNetRequest {
            id: "kept".into(),
            name: "kept".into(),
            listen: vec![tcp(8080)],
            ..Default::default()
        };
        let lease = setup_isc(&c, &req, isc.pid()).unwrap();
        let group = lease.audit_nflog_group();
        let reader = NflogReader::open(group).unwrap();
        let v4 = lease.addr_v4();
        // Kept: nothing is torn down, now or when the kept values go (a monitor's exec).
        let kept = serde_json::to_string(&lease.into_kept()).unwrap();
        let (fd, kept_group) = reader.into_kept();
        assert_eq!(kept_group, group);
        assert!(common::nft_table().contains("\"isckept\""), "{}", common::nft_table());
        assert!(
            NflogReader::open(group).is_err(),
            "the kept socket no longer holds NFLOG group {group}"
        );
        // A packet dropped meanwhile queues in the kept socket.
        assert!(!common::tcp_ok_here(at(v4, 9090), None), "undeclared port answered");
        let mut reader = NflogReader::adopt(fd, group);
        let d = reader.next(Duration::from_secs(3)).expect("the denial logged while kept");
        assert_eq!((d.direction, d.dport, d.isc_id.as_str()), (Direction::In, Some(9090), "kept"));
        // Adopted, the lease is whole again: its teardown removes everything.
        let lease = isc_net::IscNetLease::adopt(&c, serde_json::from_str(&kept).unwrap());
        assert_eq!(lease.addr_v4(), v4);
        lease.teardown().unwrap();
        assert!(!common::nft_table().contains("\"isckept\""), "{}", common::nft_table());
        let alloc = isc_net::Allocator::new(dir.path(), c.v4_prefix, c.v6_prefix).unwrap();
        assert!(alloc.leases().unwrap().is_empty(), "the lease was not released");
        // The adopted reader unbinds its group when dropped, as one opened here would.
        drop(reader);
        NflogReader::open(group).expect("the group is free again");
    });
}
