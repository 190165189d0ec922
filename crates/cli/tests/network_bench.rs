//! Issue 5's ruleset benchmark (not CI; `bench/net.sh` section 3 runs it): the nft apply time
//! of the full table for 1, 100 and 1000 ISCs, and of adding and removing one ISC when that
//! many exist, which must stay flat. Inside a private network namespace like every network
//! test (see `network.rs`).

mod netns;

use std::path::PathBuf;
use std::time::Instant;

use netns::in_private_netns;

/// A scratch directory for the benchmark's network state, removed at the end.
struct Env {
    dir: PathBuf,
}

impl Env {
    fn new(tag: &str) -> Env {
        let dir = PathBuf::from(format!("/tmp/isc-test-net-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Env { dir }
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
#[ignore]
fn bench_ruleset_apply() {
    in_private_netns("bench_ruleset_apply", || {
        use isc_net::nft::rules::{self, RulesConfig};
        use isc_net::{EgressRule, IscNetPolicy, NftCli};
        let dir = Env::new("rules");
        let cfg = isc_net::NetConfig { state_dir: dir.dir.join("net"), ..Default::default() };
        let rc = RulesConfig {
            v4_prefix: cfg.v4_prefix,
            v6_prefix: cfg.v6_prefix,
            nflog_group: cfg.nflog_group,
            log_per_second: cfg.log_per_second,
        };
        let policy = |i: u32| IscNetPolicy {
            id: format!("b{i:06}"),
            name: format!("bench{i}"),
            if_host: format!("iscb{i:06}"),
            addr_v4: std::net::Ipv4Addr::from(
                u32::from(std::net::Ipv4Addr::new(10, 88, 0, 1)) + 2 * i,
            ),
            addr_v6: std::net::Ipv6Addr::from(
                u128::from("fd69:7363::1".parse::<std::net::Ipv6Addr>().unwrap()) + 2 * i as u128,
            ),
            listen: vec![isc_net::Listen { proto: isc_net::Proto::Tcp, port: 8080 }],
            publish: vec![isc_net::Publish {
                host_addr: "192.0.2.1".parse().unwrap(),
                host_port: 10000 + i as u16,
                proto: isc_net::Proto::Tcp,
                port: 8080,
            }],
            egress: vec![EgressRule {
                net: "192.0.2.0/24".parse().unwrap(),
                proto: isc_net::Proto::Tcp,
                port: 443,
            }],
            allow_from: vec![],
        };
        println!(
            "{:>6} {:>12} {:>12} {:>12} {:>12} {:>12}",
            "ISCs", "full_ms", "add_one_ms", "remove_one_ms", "add_base_ms", "rm_no_close"
        );
        for n in [1u32, 100, 1000] {
            let all: Vec<IscNetPolicy> = (0..n).map(policy).collect();
            let t = Instant::now();
            if let Err(e) = isc_net::reconcile(&cfg, &all) {
                println!("BENCH-RULES {n:>6} full reconcile failed after {:?}: {e}", t.elapsed());
                continue;
            }
            let full = t.elapsed();
            let extra = policy(n);
            // Medians of 11: the machine is shared, single runs are noisy.
            // add_one: what a start does (the base is in place); add_base: re-stating the base
            // too (a start on a missing or older table).
            let (mut add, mut rm, mut rm_work, mut add_base) = (vec![], vec![], vec![], vec![]);
            for _ in 0..11 {
                let t = Instant::now();
                rules::apply_add_isc(&rc, &extra, &NftCli::default()).unwrap();
                add.push(t.elapsed().as_secs_f64() * 1e3);
                // What a stop does (rules::apply_remove_isc), timed before and after the close
                // of the socket: that close waits for an RCU grace period (NlSocket).
                let t = Instant::now();
                let sock = isc_net::nft::netlink::NlSocket::open().unwrap();
                rules::apply_elems_on(&sock, &rules::remove_isc(&rc, &extra).ops).unwrap();
                rm_work.push(t.elapsed().as_secs_f64() * 1e3);
                drop(sock);
                rm.push(t.elapsed().as_secs_f64() * 1e3);
                let t = Instant::now();
                rules::add_isc(&rc, &extra).apply(&NftCli::default()).unwrap();
                add_base.push(t.elapsed().as_secs_f64() * 1e3);
                rules::apply_remove_isc(&rc, &extra).unwrap();
            }
            let median = |v: &mut Vec<f64>| {
                v.sort_by(|a, b| a.total_cmp(b));
                v[v.len() / 2]
            };
            println!(
                "BENCH-RULES {n:>6} {:>12.1} {:>12.2} {:>12.2} {:>12.1} {:>12.2}",
                full.as_secs_f64() * 1e3,
                median(&mut add),
                median(&mut rm),
                median(&mut add_base),
                median(&mut rm_work)
            );
        }
        isc_net::reconcile(&cfg, &[]).unwrap();
    });
}
