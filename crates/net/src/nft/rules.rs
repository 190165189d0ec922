//! The `inet isc` ruleset: base chains, dispatch maps and per-ISC chains and sets.
//!
//! Shape (see docs/network.md for the full listing):
//! - `forward`, `input`, `output` dispatch on interface name through the verdict maps
//!   `isc_out_by_if` (traffic *from* an ISC link) and `isc_in_by_if` (traffic *to* one), so the
//!   cost per packet is one hash lookup whatever the number of ISCs;
//! - `prerouting` DNATs published ports through `isc_dnat4` / `isc_dnat6`, keyed on
//!   `daddr . l4proto . dport`; `postrouting` masquerades ISC traffic leaving by a non-ISC link;
//! - per ISC: chains `isc_<id>_{in,out,dnat,din,dout}` and sets `isc_<id>_{listen,egress4,
//!   egress6,from4,from6}`. `din`/`dout` log (rate-limited, NFLOG) and drop.
//!
//! Adding an ISC is one batch of adds; removing it deletes its map elements, then its chains and
//! sets, by name. Base rules are re-stated (flush + add) in every per-ISC batch so that the
//! table is always complete, without reading anything back.

use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::{
    m, not, verdict, BaseChain, Batch, ChainKind, Elem, Field, Hook, KeyType, Op, Stmt, Val,
    Verdict,
};
use crate::policy::{IscNetPolicy, Proto};

/// Map: host interface name → `jump isc_<id>_out`.
pub const OUT_BY_IF: &str = "isc_out_by_if";
/// Map: host interface name → `jump isc_<id>_in`.
pub const IN_BY_IF: &str = "isc_in_by_if";
/// Map: `host v4 . proto . port` → `goto isc_<id>_dnat`.
pub const DNAT4: &str = "isc_dnat4";
/// Map: `host v6 . proto . port` → `goto isc_<id>_dnat`.
pub const DNAT6: &str = "isc_dnat6";
/// Wildcard matching every isc host interface.
pub const IF_WILDCARD: &str = "isc*";

/// Parameters of the ruleset that are not per ISC.
#[derive(Debug, Clone)]
pub struct RulesConfig {
    /// IPv4 prefix the ISC addresses come from (masqueraded on the way out).
    pub v4_prefix: Ipv4Net,
    /// IPv6 prefix the ISC addresses come from.
    pub v6_prefix: Ipv6Net,
    /// NFLOG group for denials.
    pub nflog_group: u16,
    /// Logged denials per second per ISC and direction (the rest are dropped silently).
    pub log_per_second: u32,
}

/// Names of one ISC's objects.
#[derive(Debug, Clone)]
pub struct IscNames {
    /// `isc_<id>_in`.
    pub chain_in: String,
    /// `isc_<id>_out`.
    pub chain_out: String,
    /// `isc_<id>_dnat`.
    pub chain_dnat: String,
    /// `isc_<id>_din` (log + drop inbound).
    pub deny_in: String,
    /// `isc_<id>_dout` (log + drop outbound).
    pub deny_out: String,
    /// `isc_<id>_listen`.
    pub listen: String,
    /// `isc_<id>_egress4`.
    pub egress4: String,
    /// `isc_<id>_egress6`.
    pub egress6: String,
    /// `isc_<id>_from4`.
    pub from4: String,
    /// `isc_<id>_from6`.
    pub from6: String,
}

impl IscNames {
    /// The names for ISC `id`.
    pub fn new(id: &str) -> Self {
        let n = |s: &str| format!("isc_{id}_{s}");
        IscNames {
            chain_in: n("in"),
            chain_out: n("out"),
            chain_dnat: n("dnat"),
            deny_in: n("din"),
            deny_out: n("dout"),
            listen: n("listen"),
            egress4: n("egress4"),
            egress6: n("egress6"),
            from4: n("from4"),
            from6: n("from6"),
        }
    }

    fn chains(&self) -> [&str; 5] {
        [&self.chain_in, &self.chain_out, &self.chain_dnat, &self.deny_in, &self.deny_out]
    }

    fn sets(&self) -> [&str; 5] {
        [&self.listen, &self.egress4, &self.egress6, &self.from4, &self.from6]
    }
}

fn base(name: &str, kind: ChainKind, hook: Hook, prio: i32) -> Op {
    Op::AddChain { name: name.into(), base: Some(BaseChain { kind, hook, prio }) }
}

fn s(v: &str) -> Val {
    Val::Str(v.into())
}

fn strs(vs: &[&str]) -> Val {
    Val::Strs(vs.iter().map(|v| v.to_string()).collect())
}

fn nd_types() -> Val {
    strs(&["nd-neighbor-solicit", "nd-neighbor-advert"])
}

fn link_local6() -> Val {
    Val::Net("fe80::/10".parse().expect("valid prefix"))
}

fn key(fields: &[Field]) -> Field {
    Field::Concat(fields.to_vec())
}

/// Base chains, dispatch maps and base rules. Idempotent: chains and maps are added (a no-op if
/// present) and the base chains are flushed and re-filled in the same transaction.
pub fn base_ops(cfg: &RulesConfig) -> Vec<Op> {
    let mut b = Batch::default();
    b.push(Op::AddTable);
    let chains = [
        ("forward", ChainKind::Filter, Hook::Forward, 0),
        ("input", ChainKind::Filter, Hook::Input, 0),
        ("output", ChainKind::Filter, Hook::Output, 0),
        ("prerouting", ChainKind::Nat, Hook::Prerouting, -100),
        ("postrouting", ChainKind::Nat, Hook::Postrouting, 100),
    ];
    for (name, kind, hook, prio) in chains {
        b.push(base(name, kind, hook, prio));
        b.push(Op::FlushChain(name.into()));
    }
    b.push(Op::AddVmap { name: OUT_BY_IF.into(), key: vec![KeyType::Ifname] });
    b.push(Op::AddVmap { name: IN_BY_IF.into(), key: vec![KeyType::Ifname] });
    b.push(Op::AddVmap {
        name: DNAT4.into(),
        key: vec![KeyType::Ipv4, KeyType::Proto, KeyType::Service],
    });
    b.push(Op::AddVmap {
        name: DNAT6.into(),
        key: vec![KeyType::Ipv6, KeyType::Proto, KeyType::Service],
    });

    // forward: everything from or to an ISC link goes through that ISC's chain; ISC links that
    // have no entry (being set up or torn down) get nothing.
    b.rule("forward", vec![Stmt::Vmap { field: Field::Iifname, map: OUT_BY_IF.into() }]);
    b.rule("forward", vec![Stmt::Vmap { field: Field::Oifname, map: IN_BY_IF.into() }]);
    b.rule("forward", vec![m(Field::Iifname, s(IF_WILDCARD)), verdict(Verdict::Drop)]);
    b.rule("forward", vec![m(Field::Oifname, s(IF_WILDCARD)), verdict(Verdict::Drop)]);

    // input: an ISC may resolve its neighbour (ND), answer the host, and nothing else: its
    // `out` chain drops anything addressed to the host (fib daddr type local).
    b.rule(
        "input",
        vec![
            m(Field::Iifname, s(IF_WILDCARD)),
            m(Field::Icmpv6Type, nd_types()),
            verdict(Verdict::Accept),
        ],
    );
    // Link-local chatter (MLD reports, router solicitations) is expected noise: drop unlogged.
    b.rule(
        "input",
        vec![
            m(Field::Iifname, s(IF_WILDCARD)),
            m(Field::Ip6Saddr, link_local6()),
            verdict(Verdict::Drop),
        ],
    );
    b.rule("input", vec![Stmt::Vmap { field: Field::Iifname, map: OUT_BY_IF.into() }]);
    b.rule("input", vec![m(Field::Iifname, s(IF_WILDCARD)), verdict(Verdict::Drop)]);

    // output: the host reaches an ISC only on its listen ports, like everyone else. The host's
    // own link-local traffic (ND, MLD) on the veth is let through.
    b.rule(
        "output",
        vec![
            m(Field::Oifname, s(IF_WILDCARD)),
            m(Field::Ip6Saddr, link_local6()),
            verdict(Verdict::Accept),
        ],
    );
    b.rule("output", vec![Stmt::Vmap { field: Field::Oifname, map: IN_BY_IF.into() }]);
    b.rule("output", vec![m(Field::Oifname, s(IF_WILDCARD)), verdict(Verdict::Drop)]);

    let dport = [Field::L4proto, Field::ThDport];
    let k4 = key(&[Field::IpDaddr, dport[0].clone(), dport[1].clone()]);
    let k6 = key(&[Field::Ip6Daddr, dport[0].clone(), dport[1].clone()]);
    b.rule("prerouting", vec![Stmt::Vmap { field: k4, map: DNAT4.into() }]);
    b.rule("prerouting", vec![Stmt::Vmap { field: k6, map: DNAT6.into() }]);

    b.rule(
        "postrouting",
        vec![
            not(Field::Oifname, s(IF_WILDCARD)),
            m(Field::IpSaddr, Val::Net(IpNet::V4(cfg.v4_prefix))),
            Stmt::Masquerade,
        ],
    );
    b.rule(
        "postrouting",
        vec![
            not(Field::Oifname, s(IF_WILDCARD)),
            m(Field::Ip6Saddr, Val::Net(IpNet::V6(cfg.v6_prefix))),
            Stmt::Masquerade,
        ],
    );
    b.ops
}

/// The NFLOG group that only this ISC's denials go to (besides the Dock-wide
/// `nflog_group`), read by its monitor for the audit trail. nfnetlink_log lets exactly one
/// socket bind a group (a second binder gets EPERM, checked on 6.18), so concurrent monitors
/// cannot share one group: each ISC gets `0x8000 + its lease slot`. The slot is unique among
/// the ISCs of a Dock and is recovered from the ISC's IPv4 address (`prefix base + 2 * slot
/// + 1`), so reconcile derives the same group from the policy alone.
pub fn audit_nflog_group(v4_prefix: Ipv4Net, addr_v4: std::net::Ipv4Addr) -> u16 {
    let slot = u32::from(addr_v4).wrapping_sub(u32::from(v4_prefix.network())) / 2;
    0x8000 | (slot & 0x7fff) as u16
}

fn deny_chain(b: &mut Batch, cfg: &RulesConfig, chain: &str, prefix: String, audit_group: u16) {
    let burst = cfg.log_per_second.saturating_mul(2).max(1);
    b.rule(
        chain,
        vec![
            Stmt::Limit { per_second: cfg.log_per_second.max(1), burst },
            Stmt::Log { prefix: prefix.clone(), group: cfg.nflog_group },
            Stmt::Log { prefix, group: audit_group },
        ],
    );
    b.rule(chain, vec![verdict(Verdict::Drop)]);
}

fn listen_elems(p: &IscNetPolicy) -> Vec<Elem> {
    let mut v: Vec<(Proto, u16)> = p.listen.iter().map(|l| (l.proto, l.port)).collect();
    v.sort();
    v.dedup();
    v.into_iter().map(|(proto, port)| Elem::Key(vec![Val::Proto(proto), Val::Port(port)])).collect()
}

fn egress_elems(p: &IscNetPolicy, v4: bool) -> Vec<Elem> {
    p.egress
        .iter()
        .filter(|e| matches!(e.net, IpNet::V4(_)) == v4)
        .map(|e| Elem::Key(vec![Val::Net(e.net.trunc()), Val::Proto(e.proto), Val::Port(e.port)]))
        .collect()
}

fn from_elems(p: &IscNetPolicy, v4: bool) -> Vec<Elem> {
    let mut v: Vec<IpAddr> = p.allow_from.iter().copied().filter(|a| a.is_ipv4() == v4).collect();
    v.sort();
    v.dedup();
    v.into_iter().map(|a| Elem::Key(vec![Val::Addr(a)])).collect()
}

fn dnat_elems(p: &IscNetPolicy, n: &IscNames, v4: bool) -> Vec<Elem> {
    p.publish
        .iter()
        .filter(|pb| pb.host_addr.is_ipv4() == v4)
        .map(|pb| {
            Elem::Map(
                vec![Val::Addr(pb.host_addr), Val::Proto(pb.proto), Val::Port(pb.host_port)],
                Verdict::Goto(n.chain_dnat.clone()),
            )
        })
        .collect()
}

fn push_elems(b: &mut Batch, set: &str, elems: Vec<Elem>) {
    if !elems.is_empty() {
        b.push(Op::AddElems { set: set.to_string(), elems });
    }
}

/// Fill `set` with exactly `elems` (flush + add, one transaction).
pub fn replace_set_ops(set: &str, elems: Vec<Elem>) -> Vec<Op> {
    let mut b = Batch::default();
    b.push(Op::FlushSet(set.to_string()));
    push_elems(&mut b, set, elems);
    b.ops
}

/// Ops replacing the egress sets of `p` (used by the DNS refresh).
pub fn egress_refresh_ops(p: &IscNetPolicy) -> Vec<Op> {
    let n = IscNames::new(&p.id);
    let mut ops = replace_set_ops(&n.egress4, egress_elems(p, true));
    ops.extend(replace_set_ops(&n.egress6, egress_elems(p, false)));
    ops
}

/// Ops replacing the peer (allow_from) sets of `p`.
pub fn peers_refresh_ops(p: &IscNetPolicy) -> Vec<Op> {
    let n = IscNames::new(&p.id);
    let mut ops = replace_set_ops(&n.from4, from_elems(p, true));
    ops.extend(replace_set_ops(&n.from6, from_elems(p, false)));
    ops
}

/// Everything one ISC needs. Idempotent: its chains and sets are flushed before being filled.
pub fn isc_add_ops(cfg: &RulesConfig, p: &IscNetPolicy) -> Vec<Op> {
    let n = IscNames::new(&p.id);
    let mut b = Batch::default();
    for c in n.chains() {
        b.push(Op::AddChain { name: c.to_string(), base: None });
        b.push(Op::FlushChain(c.to_string()));
    }
    let svc = [KeyType::Proto, KeyType::Service];
    b.push(Op::AddSet { name: n.listen.clone(), key: svc.to_vec(), interval: false });
    b.push(Op::AddSet {
        name: n.egress4.clone(),
        key: vec![KeyType::Ipv4, svc[0], svc[1]],
        interval: true,
    });
    b.push(Op::AddSet {
        name: n.egress6.clone(),
        key: vec![KeyType::Ipv6, svc[0], svc[1]],
        interval: true,
    });
    b.push(Op::AddSet { name: n.from4.clone(), key: vec![KeyType::Ipv4], interval: false });
    b.push(Op::AddSet { name: n.from6.clone(), key: vec![KeyType::Ipv6], interval: false });
    for set in n.sets() {
        b.push(Op::FlushSet(set.to_string()));
    }
    push_elems(&mut b, &n.listen, listen_elems(p));
    push_elems(&mut b, &n.egress4, egress_elems(p, true));
    push_elems(&mut b, &n.egress6, egress_elems(p, false));
    push_elems(&mut b, &n.from4, from_elems(p, true));
    push_elems(&mut b, &n.from6, from_elems(p, false));

    let audit_group = audit_nflog_group(cfg.v4_prefix, p.addr_v4);
    deny_chain(&mut b, cfg, &n.deny_in, format!("isc:{}:in", p.id), audit_group);
    deny_chain(&mut b, cfg, &n.deny_out, format!("isc:{}:out", p.id), audit_group);
    let dout = || verdict(Verdict::Goto(n.deny_out.clone()));
    let din = || verdict(Verdict::Goto(n.deny_in.clone()));
    let established = || m(Field::CtState, strs(&["established", "related"]));
    let svc_key = || key(&[Field::L4proto, Field::ThDport]);

    // out: anti-spoofing first (RFC 2827 ingress filtering), then replies, then the host and
    // link-local ranges are refused even if an egress rule would cover them, then other ISCs
    // decide for themselves, then the egress allowlist.
    let out = &n.chain_out;
    b.rule(out, vec![not(Field::IpSaddr, Val::Addr(IpAddr::V4(p.addr_v4))), dout()]);
    b.rule(out, vec![not(Field::Ip6Saddr, Val::Addr(IpAddr::V6(p.addr_v6))), dout()]);
    b.rule(out, vec![established(), verdict(Verdict::Accept)]);
    b.rule(
        out,
        vec![m(Field::FibDaddrType, strs(&["local", "broadcast", "multicast", "anycast"])), dout()],
    );
    b.rule(
        out,
        vec![m(Field::IpDaddr, Val::Net("169.254.0.0/16".parse().expect("valid"))), dout()],
    );
    b.rule(out, vec![m(Field::Ip6Daddr, link_local6()), dout()]);
    b.rule(out, vec![Stmt::Vmap { field: Field::Oifname, map: IN_BY_IF.into() }]);
    let k4 = key(&[Field::IpDaddr, Field::L4proto, Field::ThDport]);
    let k6 = key(&[Field::Ip6Daddr, Field::L4proto, Field::ThDport]);
    b.rule(out, vec![m(k4, Val::SetRef(n.egress4.clone())), verdict(Verdict::Accept)]);
    b.rule(out, vec![m(k6, Val::SetRef(n.egress6.clone())), verdict(Verdict::Accept)]);
    b.rule(out, vec![dout()]);

    // in: replies and ND; peers ISCs only if allowed and only on listen ports; anyone else
    // (host, outside, published DNAT) on listen ports.
    let inn = &n.chain_in;
    b.rule(inn, vec![established(), verdict(Verdict::Accept)]);
    b.rule(inn, vec![m(Field::Icmpv6Type, nd_types()), verdict(Verdict::Accept)]);
    b.rule(
        inn,
        vec![
            m(Field::Iifname, s(IF_WILDCARD)),
            m(Field::IpSaddr, Val::SetRef(n.from4.clone())),
            m(svc_key(), Val::SetRef(n.listen.clone())),
            verdict(Verdict::Accept),
        ],
    );
    b.rule(
        inn,
        vec![
            m(Field::Iifname, s(IF_WILDCARD)),
            m(Field::Ip6Saddr, Val::SetRef(n.from6.clone())),
            m(svc_key(), Val::SetRef(n.listen.clone())),
            verdict(Verdict::Accept),
        ],
    );
    b.rule(inn, vec![m(Field::Iifname, s(IF_WILDCARD)), din()]);
    b.rule(inn, vec![m(svc_key(), Val::SetRef(n.listen.clone())), verdict(Verdict::Accept)]);
    b.rule(inn, vec![din()]);

    for pb in &p.publish {
        let (daddr, to) = match pb.host_addr {
            IpAddr::V4(_) => (Field::IpDaddr, IpAddr::V4(p.addr_v4)),
            IpAddr::V6(_) => (Field::Ip6Daddr, IpAddr::V6(p.addr_v6)),
        };
        b.rule(
            &n.chain_dnat,
            vec![
                m(daddr, Val::Addr(pb.host_addr)),
                m(Field::L4proto, Val::Proto(pb.proto)),
                m(Field::ThDport, Val::Port(pb.host_port)),
                Stmt::Dnat { addr: to, port: pb.port },
            ],
        );
    }

    // Dispatch last, so the chains are complete when traffic starts to reach them.
    let ifk = vec![s(&p.if_host)];
    b.push(Op::AddElems {
        set: OUT_BY_IF.into(),
        elems: vec![Elem::Map(ifk.clone(), Verdict::Jump(out.clone()))],
    });
    b.push(Op::AddElems {
        set: IN_BY_IF.into(),
        elems: vec![Elem::Map(ifk, Verdict::Jump(inn.clone()))],
    });
    push_elems(&mut b, DNAT4, dnat_elems(p, &n, true));
    push_elems(&mut b, DNAT6, dnat_elems(p, &n, false));
    b.ops
}

/// Remove one ISC: map elements first, then its chains (flushed, so no reference is left) and
/// its sets, by name.
pub fn isc_remove_ops(p: &IscNetPolicy) -> Vec<Op> {
    let n = IscNames::new(&p.id);
    let mut b = Batch::default();
    let ifk = vec![s(&p.if_host)];
    b.push(Op::DeleteElems { set: OUT_BY_IF.into(), elems: vec![Elem::Key(ifk.clone())] });
    b.push(Op::DeleteElems { set: IN_BY_IF.into(), elems: vec![Elem::Key(ifk)] });
    for (map, v4) in [(DNAT4, true), (DNAT6, false)] {
        let keys: Vec<Elem> = dnat_elems(p, &n, v4)
            .into_iter()
            .filter_map(|e| match e {
                Elem::Map(k, _) => Some(Elem::Key(k)),
                Elem::Key(_) => None,
            })
            .collect();
        if !keys.is_empty() {
            b.push(Op::DeleteElems { set: map.into(), elems: keys });
        }
    }
    for c in n.chains() {
        b.push(Op::FlushChain(c.to_string()));
    }
    for c in n.chains() {
        b.push(Op::DeleteChain(c.to_string()));
    }
    for set in n.sets() {
        b.push(Op::DeleteSet(set.to_string()));
    }
    b.ops
}

/// The full reconcile: `add table; delete table; <table from scratch>` in one transaction, so
/// leftovers of crashed runs disappear and nothing is ever half-applied.
pub fn full_reconcile(cfg: &RulesConfig, policies: &[IscNetPolicy]) -> Batch {
    let mut b = Batch::default();
    b.push(Op::AddTable);
    b.push(Op::DeleteTable);
    b.ops.extend(base_ops(cfg));
    for p in policies {
        b.ops.extend(isc_add_ops(cfg, p));
    }
    b
}

/// The batch that adds one ISC on top of an existing (or missing) table.
pub fn add_isc(cfg: &RulesConfig, p: &IscNetPolicy) -> Batch {
    let mut ops = base_ops(cfg);
    ops.extend(isc_add_ops(cfg, p));
    Batch { ops }
}

/// The batch that removes one ISC.
pub fn remove_isc(p: &IscNetPolicy) -> Batch {
    Batch { ops: isc_remove_ops(p) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{EgressRule, Listen, Publish};

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
                EgressRule {
                    net: "198.51.100.0/24".parse().unwrap(),
                    proto: Proto::Tcp,
                    port: 443,
                },
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
        assert!(
            text.contains("add map inet isc isc_out_by_if { type ifname : verdict; }"),
            "{text}"
        );
        assert!(
            text.contains("add element inet isc isc_out_by_if { \"isca\" : jump isc_a_out }"),
            "{text}"
        );
        assert!(
            text.contains("add rule inet isc isc_a_out ip saddr != 10.88.0.1 goto isc_a_dout"),
            "{text}"
        );
        assert!(
            text.contains("add element inet isc isc_a_egress4 { 198.51.100.0/24 . tcp . 443 }"),
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
        assert!(
            text.find("delete element inet isc isc_out_by_if { \"isca\" }").unwrap()
                < first_chain_delete,
            "{text}"
        );
        assert!(
            text.contains("delete element inet isc isc_dnat4 { 192.0.2.1 . tcp . 18080 }"),
            "{text}"
        );
        assert!(text.contains("delete set inet isc isc_a_egress6"), "{text}");
        assert!(!text.contains("handle"), "{text}");
    }

    #[test]
    fn per_isc_batch_size_is_constant() {
        // No rule is linear in the number of ISCs: the batch to add the 1000th ISC is the same
        // size as the one that adds the first.
        let one = add_isc(&cfg(), &policy("a", 0)).ops.len();
        let other = add_isc(&cfg(), &policy("zz", 100)).ops.len();
        assert_eq!(one, other);
    }
}
