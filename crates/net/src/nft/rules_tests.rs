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
    assert!(text.contains("add map inet isc isc_slot { type ifname : mark; }"), "{text}");
    assert!(text.contains("add element inet isc isc_slot { \"isca\" : 0 }"), "{text}");
    assert!(text.contains("add element inet isc isc_slot { \"iscb\" : 1 }"), "{text}");
    assert!(text.contains("add element inet isc isc_slot_in { \"iscb\" : 65537 }"), "{text}");
    assert!(
        text.contains(
            "add rule inet isc isc_out iifname . ip saddr != @isc_addr4 goto isc_deny_out"
        ),
        "{text}"
    );
    assert!(
        text.contains("add rule inet isc isc_deny_in meta mark set oifname map @isc_slot_in meta mark vmap @isc_log"),
        "{text}"
    );
    assert!(text.contains("add element inet isc isc_addr4 { \"isca\" . 10.88.0.1 }"), "{text}");
    assert!(
        text.contains(
            "add element inet isc isc_egress4_24 { \"isca\" . 198.51.100.0 . tcp . 443 }"
        ),
        "{text}"
    );
    assert!(
        text.contains("add rule inet isc isc_out iifname . ip6 daddr . meta l4proto . th dport @isc_egress6_128 accept")
            && text.contains("add rule inet isc isc_out iifname . ip daddr & 255.255.255.0 . meta l4proto . th dport @isc_egress4_24 accept"),
        "{text}"
    );
    // Slot 1 (10.88.0.3): its own logging chain, to its monitor's own group besides the
    // Dock-wide one; one block of chains serves both ISCs.
    assert!(text.contains("add rule inet isc isc_s1 meta mark & 65536 == 65536 limit rate 10/second burst 20 packets log prefix \"isc:s1:in\" group 100 log prefix \"isc:s1:in\" group 32769"), "{text}");
    assert!(text.contains("add rule inet isc isc_s1 meta mark & 65536 == 0 limit rate"), "{text}");
    assert!(
        text.contains("add element inet isc isc_log { 1 : goto isc_s1, 65537 : goto isc_s1 }"),
        "{text}"
    );
    assert_eq!(text.matches("add chain inet isc isc_s0\n").count(), 1, "{text}");
    assert_eq!(text.matches("add chain inet isc isc_s").count(), 64, "one block: {text}");
    assert_eq!(audit_nflog_group(cfg().v4_prefix, "10.88.0.1".parse().unwrap()), 0x8000);
    assert!(text.contains("dnat ip to ip daddr . meta l4proto . th dport map @isc_dnat4_addr : ip daddr . meta l4proto . th dport map @isc_dnat4_port"), "{text}");
    assert!(
        text.contains(
            "add element inet isc isc_dnat4_addr { 192.0.2.1 . tcp . 18081 : 10.88.0.3 }"
        ),
        "{text}"
    );
    assert!(
        text.contains("add element inet isc isc_dnat4_port { 192.0.2.1 . tcp . 18081 : 8080 }"),
        "{text}"
    );
    let json = serde_json::to_string(&b.to_json()).unwrap();
    assert!(json.contains(r#""map":"verdict""#), "{json}");
    assert!(json.contains(r#""prefix":"isc:s0:out""#), "{json}");
    if let Ok(path) = std::env::var("ISC_NET_DUMP") {
        std::fs::write(path, json).unwrap();
    }
}

#[test]
fn removal_deletes_by_name_and_never_needs_handles() {
    let p = policy("a", 0);
    let text = remove_isc(&cfg(), &p).to_text();
    let addr_delete = text.find("delete element inet isc isc_addr4 { \"isca\" . 10.88.0.1 }");
    let slot_delete = text.find("delete element inet isc isc_slot { \"isca\" }");
    assert!(addr_delete.unwrap() < slot_delete.unwrap(), "addresses first: {text}");
    // Every deleted element is added first (idempotent removal), with its data.
    assert!(text.contains("add element inet isc isc_slot { \"isca\" : 0 }"), "{text}");
    assert!(
        text.contains("delete element inet isc isc_dnat4_port { 192.0.2.1 . tcp . 18080 }"),
        "{text}"
    );
    assert!(
        text.contains(
            "delete element inet isc isc_egress6_128 { \"isca\" . 2001:db8::1 . udp . 53 }"
        ),
        "{text}"
    );
    assert!(!text.contains("handle"), "{text}");
    assert!(!text.contains("chain") && !text.contains("set inet"), "elements only: {text}");
}

#[test]
fn per_isc_batches_hold_elements_only_and_no_jump() {
    // Adding the 1000th ISC is the same batch as adding the first: elements of the global
    // sets and data maps, no chain, no rule, no verdict (no table validation in the kernel).
    let one = isc_add_ops(&cfg(), &policy("a", 0));
    let other = isc_add_ops(&cfg(), &policy("zz", 100));
    assert_eq!(one.len(), other.len());
    for ops in [one, isc_remove_ops(&cfg(), &policy("a", 0))] {
        for op in &ops {
            match op {
                Op::AddElems { elems, .. } | Op::DeleteElems { elems, .. } => {
                    assert!(!elems.iter().any(|e| matches!(e, Elem::Map(..))), "{op:?}")
                }
                other => panic!("not an element command: {other:?}"),
            }
        }
        // Every command encodes for the kernel (shapes known, values fit).
        for op in &ops {
            let (Op::AddElems { set, .. } | Op::DeleteElems { set, .. }) = op else { continue };
            assert!(shape(set).is_some(), "{set}");
        }
    }
    let quiet = IscNetPolicy { publish: vec![], egress: vec![], ..policy("b", 1) };
    let text = Batch { ops: isc_add_ops(&cfg(), &quiet) }.to_text();
    assert!(!text.contains("dnat") && !text.contains("egress"), "{text}");
}

#[test]
fn the_fast_add_needs_the_base_and_block_markers_of_this_configuration() {
    let marker = base_marker(&cfg());
    assert!(marker.starts_with("isc_base_") && marker.len() == 25, "{marker}");
    assert_eq!(marker, base_marker(&cfg()), "stable");
    let v6 = RulesConfig { v6_prefix: "fd00:1::/48".parse().unwrap(), ..cfg() };
    assert_ne!(marker, base_marker(&v6), "the masquerade prefix is part of the base");
    // The log rate is in the slot chains: part of the block, not of the base.
    let other = RulesConfig { log_per_second: 11, ..cfg() };
    assert_eq!(marker, base_marker(&other));
    let block = slots::block_marker(&cfg(), 0);
    assert_ne!(block, slots::block_marker(&other, 0));
    assert_ne!(block, slots::block_marker(&cfg(), 1));
    let full = add_isc(&cfg(), &policy("a", 0)).to_text();
    assert!(full.contains(&format!("add set inet isc {marker} {{ type ifname; }}")), "{full}");
    assert!(full.contains(&format!("add set inet isc {block} {{ type ifname; }}")), "{full}");
    let fast = add_isc_fast(&cfg(), &policy("a", 0)).to_text();
    assert!(
        fast.starts_with(&format!(
            "add element inet isc {marker} {{ \"isc_base\" }}\nadd element inet isc {block} {{ \"isc_base\" }}\n"
        )),
        "{fast}"
    );
    // Slot 64 is the first of block 1.
    let far = add_isc_fast(&cfg(), &policy("far", 64)).to_text();
    assert!(far.contains(&slots::block_marker(&cfg(), 1)), "{far}");
    assert!(!fast.contains("chain"), "no base in the fast batch: {fast}");
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
    let old = p.egress.clone();
    p.egress.pop();
    let text = Batch { ops: egress_refresh_ops(&p, &old) }.to_text();
    assert!(
        text.contains(
            "delete element inet isc isc_egress6_128 { \"isca\" . 2001:db8::1 . udp . 53 }"
        ),
        "{text}"
    );
    assert!(!text.contains("isc_egress4"), "the unchanged set is not touched: {text}");
    assert!(!text.contains("flush"), "{text}");
    assert!(egress_refresh_ops(&p, &p.egress.clone()).is_empty());
}
