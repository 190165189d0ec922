//! The nftables rules generator against its expected objects (unit tests of `rules`).

use super::*;
use crate::policy::{Listen, Publish};

pub(crate) fn cfg() -> RulesConfig {
    RulesConfig {
        v4_prefix: "10.88.0.0/16".parse().unwrap(),
        v6_prefix: "fd69:7363::/48".parse().unwrap(),
        nflog_group: 100,
        log_per_second: 10,
    }
}

pub(crate) fn policy(id: &str, n: u8) -> IscNetPolicy {
    IscNetPolicy {
        id: id.into(),
        name: id.into(),
        if_host: format!("isc{id}"),
        addr_v4: format!("10.88.0.{}", 2 * n + 1).parse().unwrap(),
        addr_v6: format!("fd69:7363::{:x}", 2 * n + 1).parse().unwrap(),
        listen: vec![Listen { proto: Proto::Tcp, port: 8080 }],
        publish: vec![Publish {
            host_addr: "192.0.2.1".parse().unwrap(),
            host_port: 18080 + u16::from(n),
            proto: Proto::Tcp,
            port: 8080,
        }],
        egress: vec![
            EgressRule { net: "198.51.100.0/24".parse().unwrap(), proto: Proto::Tcp, port: 443 },
            EgressRule { net: "2001:db8::1/128".parse().unwrap(), proto: Proto::Udp, port: 53 },
        ],
        allow_from: vec!["10.88.0.99".parse().unwrap()],
    }
}

#[test]
fn reconcile_text_and_json_name_every_object() {
    let b = full_reconcile(&cfg(), &[policy("a", 0), policy("b", 1)]);
    let text = b.to_text();
    assert!(text.starts_with("add table inet isc\ndelete table inet isc\n"), "{text}");
    assert!(text.contains("add map inet isc isc_deny_by_if { type ifname : verdict; }"), "{text}");
    assert!(
        text.contains("add element inet isc isc_deny_by_if { \"isca\" : goto isc_a_deny }"),
        "{text}"
    );
    assert!(
        text.contains(
            "add rule inet isc isc_out iifname . ip saddr != @isc_addr4 goto isc_deny_out"
        ),
        "{text}"
    );
    assert!(text.contains("add element inet isc isc_addr4 { \"isca\" . 10.88.0.1 }"), "{text}");
    assert!(
        text.contains("add rule inet isc isc_a_egress ip daddr 198.51.100.0/24 meta l4proto tcp th dport 443 accept"),
        "{text}"
    );
    assert!(text.contains("log prefix \"isc:b:in\" group 100"), "{text}");
    // Slot 1 (10.88.0.3): its monitor's own group, besides the Dock-wide one.
    assert!(text.contains("group 100 log prefix \"isc:b:in\" group 32769"), "{text}");
    assert_eq!(audit_nflog_group(cfg().v4_prefix, "10.88.0.1".parse().unwrap()), 0x8000);
    assert!(text.contains("dnat ip to 10.88.0.3:8080"), "{text}");
    let json = serde_json::to_string(&b.to_json()).unwrap();
    assert!(json.contains(r#""map":"verdict""#), "{json}");
    assert!(json.contains(r#""prefix":"isc:a:out""#), "{json}");
    if let Ok(path) = std::env::var("ISC_NET_DUMP") {
        std::fs::write(path, json).unwrap();
    }
}

#[test]
fn removal_deletes_by_name_and_never_needs_handles() {
    let p = policy("a", 0);
    let text = remove_isc(&p).to_text();
    let first_chain_delete = text.find("delete chain").unwrap();
    let addr_delete = text.find("delete element inet isc isc_addr4 { \"isca\" . 10.88.0.1 }");
    assert!(addr_delete.unwrap() < first_chain_delete, "{text}");
    assert!(
        text.find("delete element inet isc isc_deny_by_if { \"isca\" }").unwrap()
            < first_chain_delete,
        "{text}"
    );
    assert!(
        text.contains("delete element inet isc isc_dnat4 { 192.0.2.1 . tcp . 18080 }"),
        "{text}"
    );
    assert!(text.contains("delete chain inet isc isc_a_deny"), "{text}");
    assert!(!text.contains("handle"), "{text}");
    assert!(!text.contains("delete set"), "global sets stay: {text}");
}

#[test]
fn per_isc_batches_hold_no_set_and_a_constant_number_of_chains() {
    // Adding the 1000th ISC is the same batch as adding the first: no per-ISC set, three
    // chains, and no rule that depends on the number of ISCs.
    let one = add_isc(&cfg(), &policy("a", 0));
    let other = add_isc(&cfg(), &policy("zz", 100));
    assert_eq!(one.ops.len(), other.ops.len());
    let per_isc = isc_add_ops(&cfg(), &policy("a", 0));
    assert!(!per_isc.iter().any(|o| matches!(o, Op::AddSet { .. } | Op::AddVmap { .. })));
    let chains = per_isc.iter().filter(|o| matches!(o, Op::AddChain { .. })).count();
    assert_eq!(chains, 3);
    let quiet = IscNetPolicy { publish: vec![], ..policy("b", 1) };
    let per_isc = isc_add_ops(&cfg(), &quiet);
    let chains = per_isc.iter().filter(|o| matches!(o, Op::AddChain { .. })).count();
    assert_eq!(chains, 2, "no DNAT chain without a published port");
    let silent = IscNetPolicy { egress: vec![], ..quiet };
    let text = Batch { ops: isc_add_ops(&cfg(), &silent) }.to_text();
    assert!(!text.contains("isc_b_egress"), "no egress chain without egress: {text}");
}

#[test]
fn the_fast_add_needs_the_base_marker_of_this_configuration() {
    let marker = base_marker(&cfg());
    assert!(marker.starts_with("isc_base_") && marker.len() == 25, "{marker}");
    let other = RulesConfig { log_per_second: 11, ..cfg() };
    assert_eq!(marker, base_marker(&cfg()), "stable");
    let v6 = RulesConfig { v6_prefix: "fd00:1::/48".parse().unwrap(), ..cfg() };
    assert_ne!(marker, base_marker(&v6), "the masquerade prefix is part of the base");
    // (the log rate is per-ISC, not base)
    assert_eq!(marker, base_marker(&other));
    let full = add_isc(&cfg(), &policy("a", 0)).to_text();
    assert!(full.contains(&format!("add set inet isc {marker} {{ type ifname; }}")), "{full}");
    let fast = add_isc_fast(&cfg(), &policy("a", 0)).to_text();
    assert!(
        fast.starts_with(&format!("add element inet isc {marker} {{ \"isc_base\" }}\n")),
        "{fast}"
    );
    assert!(!fast.contains("flush chain inet isc forward"), "no base in the fast batch: {fast}");
    assert!(!fast.contains("delete"), "{fast}");
}

#[test]
fn refreshes_swap_only_this_iscs_elements() {
    let mut p = policy("a", 0);
    let old = p.allow_from.clone();
    p.allow_from = vec!["10.88.0.7".parse().unwrap()];
    let text = Batch { ops: peers_refresh_ops(&p, &old) }.to_text();
    assert!(text.contains("delete element inet isc isc_from4 { \"isca\" . 10.88.0.99 }"));
    assert!(text.contains("add element inet isc isc_from4 { \"isca\" . 10.88.0.7 }"));
    assert!(!text.contains("flush"), "{text}");
    assert!(peers_refresh_ops(&p, &p.allow_from.clone()).is_empty());
    p.egress.pop();
    let text = Batch { ops: egress_refresh_ops(&p) }.to_text();
    assert!(text.contains("flush chain inet isc isc_a_egress\n"), "{text}");
    assert!(text.ends_with("{ \"isca\" : jump isc_a_egress }\n"), "{text}");
    assert!(text.contains("198.51.100.0/24") && !text.contains("2001:db8::1"), "{text}");
}
