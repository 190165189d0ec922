//! Bandwidth limits, repeated start/stop and crash reconcile, in private namespaces.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use common::{cfg, in_private_netns, nft_table, Netns};
use isc_net::link::Rtnl;
use isc_net::{reconcile, setup_isc, Allocator, Bandwidth, IscNetRequest, Listen, Proto};

/// Send as fast as possible for `secs` from `send_in` (None = here) to a sink in `recv_in`;
/// returns the bit rate seen by the receiver.
fn bulk_rate(sink: SocketAddr, recv_in: &Netns, send_from: Option<&Netns>, secs: f64) -> f64 {
    let l = recv_in.run(move || Ok(TcpListener::bind(sink).unwrap()));
    let counter = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        steady_rate(&mut s)
    });
    let send = move || {
        let mut s = TcpStream::connect_timeout(&sink, Duration::from_secs(2)).unwrap();
        let chunk = vec![7u8; 16384];
        let start = Instant::now();
        while start.elapsed().as_secs_f64() < secs {
            if s.write_all(&chunk).is_err() {
                break;
            }
        }
        Ok(())
    };
    match send_from {
        Some(ns) => ns.run(send),
        None => send().unwrap(),
    }
    counter.join().unwrap()
}

/// The ISC serves bulk data on `src` for `secs`; the host reads it. Returns the receiver's rate.
fn bulk_rate_reverse(src: SocketAddr, isc: &Netns, secs: f64) -> f64 {
    let l = isc.run(move || Ok(TcpListener::bind(src).unwrap()));
    std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let chunk = vec![7u8; 16384];
        let start = Instant::now();
        while start.elapsed().as_secs_f64() < secs {
            if s.write_all(&chunk).is_err() {
                break;
            }
        }
    });
    let mut s = TcpStream::connect_timeout(&src, Duration::from_secs(2)).unwrap();
    steady_rate(&mut s)
}

/// Bits per second received on `s` until EOF, over the steady part of the transfer: the first
/// `WARM_UP` after the first byte (the shaper's initial burst, TCP's slow start and its first
/// back-off under the limit) is left out, so a loaded host measures the limit, not the ramp.
fn steady_rate(s: &mut TcpStream) -> f64 {
    const WARM_UP: Duration = Duration::from_millis(700);
    let mut buf = vec![0u8; 65536];
    let (mut first, mut from, mut last) = (None, None, Instant::now());
    let mut counted = 0usize;
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
        let now = Instant::now();
        let t0 = *first.get_or_insert(now);
        if now.duration_since(t0) >= WARM_UP {
            from.get_or_insert(now);
            counted += n;
            last = now;
        }
    }
    let from = from.expect("the transfer outlasted its warm-up");
    counted as f64 * 8.0 / last.duration_since(from).as_secs_f64()
}

#[test]
fn bandwidth_limits_hold_within_20_percent() {
    in_private_netns("bandwidth_limits_hold_within_20_percent", || {
        let dir = tempfile::tempdir().unwrap();
        let isc = Netns::new();
        let req = IscNetRequest {
            id: "bulk".into(),
            listen: vec![Listen { proto: Proto::Tcp, port: 5001 }],
            bandwidth: Bandwidth { to_isc: Some(8_000_000), from_isc: None },
            ..Default::default()
        };
        let lease = setup_isc(&cfg(dir.path()), &req, isc.pid()).unwrap();
        let rate = bulk_rate(SocketAddr::new(lease.addr_v4().into(), 5001), &isc, None, 2.5);
        assert!(
            (6_400_000.0..=9_600_000.0).contains(&rate),
            "to-ISC rate {rate} not within 8mbit ±20%"
        );
        lease.teardown().unwrap();
        // From the ISC: 4mbit shaped on the ifb behind the host end.
        let req = IscNetRequest {
            bandwidth: Bandwidth { to_isc: None, from_isc: Some(4_000_000) },
            ..req
        };
        let lease = setup_isc(&cfg(dir.path()), &req, isc.pid()).unwrap();
        // The ISC may not open connections to the host, so the host connects to the ISC's
        // listen port and the ISC sends the bulk data back on that connection.
        let rate = bulk_rate_reverse(SocketAddr::new(lease.addr_v4().into(), 5001), &isc, 2.5);
        assert!(
            (3_200_000.0..=4_800_000.0).contains(&rate),
            "from-ISC rate {rate} not within 4mbit ±20%"
        );
        lease.teardown().unwrap();
    });
}

#[test]
fn hundred_cycles_leave_nothing_and_reconcile_cleans_a_crash() {
    in_private_netns("hundred_cycles_leave_nothing_and_reconcile_cleans_a_crash", || {
        let dir = tempfile::tempdir().unwrap();
        let c = cfg(dir.path());
        let isc = Netns::new();
        let req = IscNetRequest {
            id: "cyc".into(),
            listen: vec![Listen { proto: Proto::Tcp, port: 80 }],
            publish: vec![isc_net::Publish {
                host_addr: "192.0.2.1".parse().unwrap(),
                host_port: 8080,
                proto: Proto::Tcp,
                port: 80,
            }],
            bandwidth: Bandwidth { to_isc: Some(10_000_000), from_isc: Some(10_000_000) },
            ..Default::default()
        };
        let isc_links = || {
            Rtnl::open()
                .unwrap()
                .link_names()
                .unwrap()
                .into_iter()
                .filter(|n| n.starts_with("isc") || n.starts_with("ifbcyc"))
                .collect::<Vec<_>>()
        };
        let alloc = Allocator::new(dir.path(), c.v4_prefix, c.v6_prefix).unwrap();
        for i in 0..100 {
            let lease = setup_isc(&c, &req, isc.pid()).unwrap_or_else(|e| panic!("cycle {i}: {e}"));
            assert!(isc_links().contains(&"isccyc".to_string()));
            if i % 2 == 0 {
                lease.teardown().unwrap();
            } else {
                drop(lease); // Drop tears down too.
            }
        }
        assert!(isc_links().is_empty(), "links leaked: {:?}", isc_links());
        assert!(alloc.leases().unwrap().is_empty(), "leases leaked");
        let table = nft_table();
        assert!(!table.contains("isc_cyc"), "nft objects leaked:\n{table}");
        assert!(!table.contains("isccyc"), "map elements leaked:\n{table}");
        let isc_ns_links = isc.run(|| Rtnl::open()?.link_names());
        assert_eq!(isc_ns_links, vec!["lo".to_string()], "ISC side leaked");

        // A crash: the lease object vanishes without teardown.
        std::mem::forget(setup_isc(&c, &req, isc.pid()).unwrap());
        assert!(isc_links().contains(&"ifbcyc".to_string()));
        reconcile(&c, &[]).unwrap();
        assert!(isc_links().is_empty(), "reconcile left the link");
        assert!(alloc.leases().unwrap().is_empty(), "reconcile left the lease");
        let table = nft_table();
        assert!(
            !table.contains("isc_cyc") && table.contains("chain forward"),
            "reconcile result:\n{table}"
        );
        // Reconcile is idempotent and keeps what it is told to keep.
        let kept = setup_isc(&c, &req, isc.pid()).unwrap();
        reconcile(&c, &[kept.policy().clone()]).unwrap();
        assert!(nft_table().contains("\"isccyc\" : 0"), "its slot element: {}", nft_table());
        assert!(isc_links().contains(&"isccyc".to_string()));
        kept.teardown().unwrap();
    });
}

#[test]
fn a_start_restates_the_base_only_when_this_version_of_it_is_missing() {
    in_private_netns("a_start_restates_the_base_only_when_this_version_of_it_is_missing", || {
        let dir = tempfile::tempdir().unwrap();
        let c = cfg(dir.path());
        let isc = Netns::new();
        let req = IscNetRequest {
            id: "fast".into(),
            listen: vec![Listen { proto: Proto::Tcp, port: 80 }],
            ..Default::default()
        };
        let nft = |args: &[&str]| {
            let ok = std::process::Command::new("nft").args(args).status().unwrap().success();
            assert!(ok, "nft {args:?}");
        };
        let rc = isc_net::nft::rules::RulesConfig {
            v4_prefix: c.v4_prefix,
            v6_prefix: c.v6_prefix,
            nflog_group: c.nflog_group,
            log_per_second: c.log_per_second,
        };
        let marker = isc_net::nft::rules::base_marker(&rc);
        // The base chain `forward` sends ISC traffic to the shared chains.
        let forward = || {
            let out = std::process::Command::new("nft")
                .args(["list", "chain", "inet", "isc", "forward"])
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).contains("jump isc_out")
        };
        // No table: the fast batch is refused and the base is stated with the ISC.
        let lease = setup_isc(&c, &req, isc.pid()).unwrap();
        assert!(forward() && nft_table().contains(&marker), "{}", nft_table());
        lease.teardown().unwrap();
        // The base in place: a start adds only the ISC (a base chain flushed by hand stays
        // flushed until a reconcile; that is the price of the fast path).
        nft(&["flush", "chain", "inet", "isc", "forward"]);
        let lease = setup_isc(&c, &req, isc.pid()).unwrap();
        assert!(!forward(), "the fast path re-stated the base");
        assert!(nft_table().contains("\"iscfast\""), "its elements: {}", nft_table());
        lease.teardown().unwrap();
        // Another version's base (its marker is missing): re-stated with the next start.
        nft(&["delete", "set", "inet", "isc", &marker]);
        let lease = setup_isc(&c, &req, isc.pid()).unwrap();
        assert!(forward() && nft_table().contains(&marker), "{}", nft_table());
        lease.teardown().unwrap();
        reconcile(&c, &[]).unwrap();
    });
}
