//! The `inet isc` ruleset: base chains, shared policy chains, global sets keyed by the ISC's
//! host interface, and three small chains per ISC.
//!
//! Shape (see docs/network.md for the full listing):
//! - `forward`, `input`, `output` send traffic from an `isc*` link to the shared chain `isc_out`
//!   and traffic to one to `isc_in`. Those chains look the ISC up in global sets whose keys
//!   start with the interface name (`isc_addr4`: `ifname . ipv4_addr`, `isc_listen`,
//!   `isc_from4`, ...) and in verdict maps keyed by interface name, so the cost per packet is
//!   a few hash lookups whatever the number of ISCs;
//! - `prerouting` DNATs published ports through `isc_dnat4` / `isc_dnat6`, keyed on
//!   `daddr . l4proto . dport`; `postrouting` masquerades ISC traffic leaving by a non-ISC link;
//! - per ISC only the chains `isc_<id>_deny` (rate-limited NFLOG with the ISC's id and the
//!   direction in the prefix, then drop; reached through the map `isc_deny_by_if`),
//!   `isc_<id>_egress` (one rule per declared destination, through `isc_egress_by_if`) and,
//!   if it publishes a port, `isc_<id>_dnat`.
//!
//! Why global sets and no per-ISC sets: `nft` lists every set and chain of the table before it
//! applies anything that references one (its cache), and the kernel looks sets up by name in
//! a list and re-validates every chain reachable from a base chain on each commit that adds a
//! jump. With five chains and five sets per ISC, and a verdict map nested in every ISC's
//! chain, adding the 1001st ISC cost ten times the first (measured, nftables 1.0.6 / 6.18).
//! Now the number of sets is constant, no verdict map is reached from a chain that a verdict
//! map jumps to, and adding or removing an ISC is a constant batch of elements and 3 chains.
//!
//! Adding an ISC is one batch of adds; removing it deletes its elements, then its chains, by
//! name. Base rules are re-stated (flush + add) in every per-ISC batch so that the table is
//! always complete, without reading anything back.

use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::{
    m, not, verdict, BaseChain, Batch, ChainKind, Elem, Field, Hook, KeyType, Op, Stmt, Val,
    Verdict,
};
use crate::policy::{EgressRule, IscNetPolicy, Proto};

/// Map: host interface name → `goto isc_<id>_deny` (log as that ISC, drop).
pub const DENY_BY_IF: &str = "isc_deny_by_if";
/// Map: `host v4 . proto . port` → `goto isc_<id>_dnat`.
pub const DNAT4: &str = "isc_dnat4";
/// Map: `host v6 . proto . port` → `goto isc_<id>_dnat`.
pub const DNAT6: &str = "isc_dnat6";
/// Set `ifname . ipv4_addr`: the one source address each ISC link may use.
pub const ADDR4: &str = "isc_addr4";
/// Set `ifname . ipv6_addr`.
pub const ADDR6: &str = "isc_addr6";
/// Set `ifname . inet_proto . inet_service`: listen ports of the ISC behind that link.
pub const LISTEN: &str = "isc_listen";
/// Map: host interface name → `jump isc_<id>_egress` (one rule per declared destination).
pub const EGRESS_BY_IF: &str = "isc_egress_by_if";
/// Set `ifname . ipv4_addr`: peer ISC addresses allowed into the ISC behind that link.
pub const FROM4: &str = "isc_from4";
/// Set `ifname . ipv6_addr`.
pub const FROM6: &str = "isc_from6";
/// Shared chain for traffic from an ISC link.
pub const CHAIN_OUT: &str = "isc_out";
/// Shared chain for traffic to an ISC link.
pub const CHAIN_IN: &str = "isc_in";
/// Shared chain: deny traffic from an ISC link (dispatch to its logging chain, else drop).
pub const DENY_OUT: &str = "isc_deny_out";
/// Shared chain: deny traffic to an ISC link.
pub const DENY_IN: &str = "isc_deny_in";
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

/// Names of one ISC's chains.
#[derive(Debug, Clone)]
pub struct IscNames {
    /// `isc_<id>_dnat`.
    pub chain_dnat: String,
    /// `isc_<id>_deny` (log by direction, then drop).
    pub deny: String,
    /// `isc_<id>_egress` (one accept rule per declared destination).
    pub egress: String,
}

impl IscNames {
    /// The names for ISC `id`.
    pub fn new(id: &str) -> Self {
        let n = |s: &str| format!("isc_{id}_{s}");
        IscNames { chain_dnat: n("dnat"), deny: n("deny"), egress: n("egress") }
    }

    fn chains(&self) -> [&str; 3] {
        [&self.chain_dnat, &self.deny, &self.egress]
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

fn global_sets() -> Vec<Op> {
    use KeyType::{Ifname, Ipv4, Ipv6, Proto as P, Service};
    let set = |name: &str, key: &[KeyType], interval: bool| Op::AddSet {
        name: name.into(),
        key: key.to_vec(),
        interval,
    };
    vec![
        set(ADDR4, &[Ifname, Ipv4], false),
        set(ADDR6, &[Ifname, Ipv6], false),
        set(LISTEN, &[Ifname, P, Service], false),
        set(FROM4, &[Ifname, Ipv4], false),
        set(FROM6, &[Ifname, Ipv6], false),
        Op::AddVmap { name: DENY_BY_IF.into(), key: vec![Ifname] },
        Op::AddVmap { name: EGRESS_BY_IF.into(), key: vec![Ifname] },
        Op::AddVmap { name: DNAT4.into(), key: vec![Ipv4, P, Service] },
        Op::AddVmap { name: DNAT6.into(), key: vec![Ipv6, P, Service] },
    ]
}

/// The shared `isc_out` chain: anti-spoofing first (RFC 2827 ingress filtering, before the
/// conntrack shortcut so a spoofed packet cannot ride another ISC's flow), then replies, then
/// the host and link-local ranges are refused even if an egress rule would cover them, then
/// traffic to another ISC returns to `forward`, where the peer's `isc_in` decides, then the
/// egress allowlist.
fn out_chain(b: &mut Batch) {
    let deny = || verdict(Verdict::Goto(DENY_OUT.into()));
    let c = CHAIN_OUT;
    let src4 = key(&[Field::Iifname, Field::IpSaddr]);
    let src6 = key(&[Field::Iifname, Field::Ip6Saddr]);
    b.rule(c, vec![not(src4, Val::SetRef(ADDR4.into())), deny()]);
    b.rule(c, vec![not(src6, Val::SetRef(ADDR6.into())), deny()]);
    b.rule(c, vec![m(Field::CtState, strs(&["established", "related"])), verdict(Verdict::Accept)]);
    let host = strs(&["local", "broadcast", "multicast", "anycast"]);
    b.rule(c, vec![m(Field::FibDaddrType, host), deny()]);
    b.rule(c, vec![m(Field::IpDaddr, Val::Net("169.254.0.0/16".parse().expect("valid"))), deny()]);
    b.rule(c, vec![m(Field::Ip6Daddr, link_local6()), deny()]);
    b.rule(c, vec![m(Field::Oifname, s(IF_WILDCARD)), verdict(Verdict::Return)]);
    // The ISC's egress chain accepts a declared destination or falls through (jump) to deny.
    b.rule(c, vec![Stmt::Vmap { field: Field::Iifname, map: EGRESS_BY_IF.into() }]);
    b.rule(c, vec![deny()]);
    b.rule(DENY_OUT, vec![Stmt::Vmap { field: Field::Iifname, map: DENY_BY_IF.into() }]);
    b.rule(DENY_OUT, vec![verdict(Verdict::Drop)]);
}

/// The shared `isc_in` chain: replies and ND; peer ISCs only if allowed and only on listen
/// ports; anyone else (host, outside, published DNAT) on listen ports.
fn in_chain(b: &mut Batch) {
    let deny = || verdict(Verdict::Goto(DENY_IN.into()));
    let c = CHAIN_IN;
    let svc = || key(&[Field::Oifname, Field::L4proto, Field::ThDport]);
    b.rule(c, vec![m(Field::CtState, strs(&["established", "related"])), verdict(Verdict::Accept)]);
    b.rule(c, vec![m(Field::Icmpv6Type, nd_types()), verdict(Verdict::Accept)]);
    for (saddr, set) in [(Field::IpSaddr, FROM4), (Field::Ip6Saddr, FROM6)] {
        b.rule(
            c,
            vec![
                m(Field::Iifname, s(IF_WILDCARD)),
                m(key(&[Field::Oifname, saddr]), Val::SetRef(set.into())),
                m(svc(), Val::SetRef(LISTEN.into())),
                verdict(Verdict::Accept),
            ],
        );
    }
    b.rule(c, vec![m(Field::Iifname, s(IF_WILDCARD)), deny()]);
    b.rule(c, vec![m(svc(), Val::SetRef(LISTEN.into())), verdict(Verdict::Accept)]);
    b.rule(c, vec![deny()]);
    b.rule(DENY_IN, vec![Stmt::Vmap { field: Field::Oifname, map: DENY_BY_IF.into() }]);
    b.rule(DENY_IN, vec![verdict(Verdict::Drop)]);
}

/// The one element of the base marker set.
const MARKER_ELEM: &str = "isc_base";

/// FNV-1a (64 bit): a hash that, unlike std's `DefaultHasher`, is the same in every build.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3))
}

/// Name of the set whose existence says "the base ruleset of exactly this configuration and
/// isc version is in place": `isc_base_<hash of the base batch>`. It is created in the same
/// transaction as the base chains and their rules, and only a full reconcile (which deletes
/// the table) removes it.
pub fn base_marker(cfg: &RulesConfig) -> String {
    format!("isc_base_{:016x}", fnv1a(Batch { ops: base_ops_unmarked(cfg) }.to_text().as_bytes()))
}

/// Base chains, shared chains, global sets and maps, and the base marker set. Idempotent:
/// chains and sets are added (a no-op if present) and the base and shared chains are flushed
/// and re-filled in the same transaction. Sets and maps are never flushed here: they hold the
/// running ISCs.
pub fn base_ops(cfg: &RulesConfig) -> Vec<Op> {
    let mut ops = base_ops_unmarked(cfg);
    let marker = base_marker(cfg);
    ops.push(Op::AddSet { name: marker.clone(), key: vec![KeyType::Ifname], interval: false });
    ops.push(Op::AddElems { set: marker, elems: vec![Elem::Key(vec![s(MARKER_ELEM)])] });
    ops
}

fn base_ops_unmarked(cfg: &RulesConfig) -> Vec<Op> {
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
    for name in [CHAIN_OUT, CHAIN_IN, DENY_OUT, DENY_IN] {
        b.push(Op::AddChain { name: name.into(), base: None });
        b.push(Op::FlushChain(name.into()));
    }
    b.ops.extend(global_sets());
    out_chain(&mut b);
    in_chain(&mut b);

    // forward: everything from or to an ISC link goes through the shared chains; a link with
    // no entry in the sets (being set up or torn down) fails anti-spoofing and gets nothing.
    let from_isc = || m(Field::Iifname, s(IF_WILDCARD));
    let to_isc = || m(Field::Oifname, s(IF_WILDCARD));
    b.rule("forward", vec![from_isc(), verdict(Verdict::Jump(CHAIN_OUT.into()))]);
    b.rule("forward", vec![to_isc(), verdict(Verdict::Jump(CHAIN_IN.into()))]);

    // input: an ISC may resolve its neighbour (ND), answer the host, and nothing else:
    // `isc_out` drops anything addressed to the host (fib daddr type local).
    b.rule("input", vec![from_isc(), m(Field::Icmpv6Type, nd_types()), verdict(Verdict::Accept)]);
    // Link-local chatter (MLD reports, router solicitations) is expected noise: drop unlogged.
    b.rule("input", vec![from_isc(), m(Field::Ip6Saddr, link_local6()), verdict(Verdict::Drop)]);
    b.rule("input", vec![from_isc(), verdict(Verdict::Jump(CHAIN_OUT.into()))]);

    // output: the host reaches an ISC only on its listen ports, like everyone else. The host's
    // own link-local traffic (ND, MLD) on the veth is let through.
    b.rule("output", vec![to_isc(), m(Field::Ip6Saddr, link_local6()), verdict(Verdict::Accept)]);
    b.rule("output", vec![to_isc(), verdict(Verdict::Jump(CHAIN_IN.into()))]);

    let k4 = key(&[Field::IpDaddr, Field::L4proto, Field::ThDport]);
    let k6 = key(&[Field::Ip6Daddr, Field::L4proto, Field::ThDport]);
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

/// One chain per ISC for both directions (fewer chains: `nft` lists every chain before each
/// batch): traffic from its link is logged as `out`, traffic to it as `in`, each direction
/// with its own rate limit; then drop.
fn deny_chain(b: &mut Batch, cfg: &RulesConfig, chain: &str, p: &IscNetPolicy, audit_group: u16) {
    let burst = cfg.log_per_second.saturating_mul(2).max(1);
    for (field, dir) in [(Field::Iifname, "out"), (Field::Oifname, "in")] {
        let prefix = format!("isc:{}:{dir}", p.id);
        b.rule(
            chain,
            vec![
                m(field, s(&p.if_host)),
                Stmt::Limit { per_second: cfg.log_per_second.max(1), burst },
                Stmt::Log { prefix: prefix.clone(), group: cfg.nflog_group },
                Stmt::Log { prefix, group: audit_group },
            ],
        );
    }
    b.rule(chain, vec![verdict(Verdict::Drop)]);
}

fn ifk(p: &IscNetPolicy) -> Val {
    s(&p.if_host)
}

fn addr_elems(p: &IscNetPolicy, v4: bool) -> Vec<Elem> {
    let a = if v4 { IpAddr::V4(p.addr_v4) } else { IpAddr::V6(p.addr_v6) };
    vec![Elem::Key(vec![ifk(p), Val::Addr(a)])]
}

fn listen_elems(p: &IscNetPolicy) -> Vec<Elem> {
    let mut v: Vec<(Proto, u16)> = p.listen.iter().map(|l| (l.proto, l.port)).collect();
    v.sort();
    v.dedup();
    v.into_iter()
        .map(|(proto, port)| Elem::Key(vec![ifk(p), Val::Proto(proto), Val::Port(port)]))
        .collect()
}

/// One rule per declared destination in `isc_<id>_egress`. Rules, not a set: a global
/// concatenated interval set (pipapo) costs O(elements of all ISCs) per insert and removal
/// (measured: half of a removal at 1000 ISCs), while these rules are only as many as this
/// ISC declares, and only new connections reach them (replies are accepted before).
fn egress_rules(b: &mut Batch, chain: &str, egress: &[EgressRule]) {
    let mut v: Vec<(IpNet, Proto, u16)> =
        egress.iter().map(|e| (e.net.trunc(), e.proto, e.port)).collect();
    v.sort();
    v.dedup();
    for (net, proto, port) in v {
        let daddr = if matches!(net, IpNet::V4(_)) { Field::IpDaddr } else { Field::Ip6Daddr };
        b.rule(
            chain,
            vec![
                m(daddr, Val::Net(net)),
                m(Field::L4proto, Val::Proto(proto)),
                m(Field::ThDport, Val::Port(port)),
                verdict(Verdict::Accept),
            ],
        );
    }
}

fn from_elems(p: &IscNetPolicy, peers: &[IpAddr], v4: bool) -> Vec<Elem> {
    let mut v: Vec<IpAddr> = peers.iter().copied().filter(|a| a.is_ipv4() == v4).collect();
    v.sort();
    v.dedup();
    v.into_iter().map(|a| Elem::Key(vec![ifk(p), Val::Addr(a)])).collect()
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

/// Delete `elems` from `set` even if some are missing: `add` (a no-op for an element that is
/// there) then `delete`, in the same transaction. nft 1.0.6 has no `destroy`.
fn drop_elems(b: &mut Batch, set: &str, elems: Vec<Elem>) {
    if elems.is_empty() {
        return;
    }
    b.push(Op::AddElems { set: set.to_string(), elems: elems.clone() });
    let keys = elems
        .into_iter()
        .map(|e| match e {
            Elem::Map(k, _) | Elem::Key(k) => Elem::Key(k),
        })
        .collect();
    b.push(Op::DeleteElems { set: set.to_string(), elems: keys });
}

/// Swap the elements of `p` in `set` from `old` to `new` (one transaction).
fn swap_elems(b: &mut Batch, set: &str, old: Vec<Elem>, new: Vec<Elem>) {
    if old != new {
        drop_elems(b, set, old);
        push_elems(b, set, new);
    }
}

/// Ops replacing the egress rules of `p` with its (re-resolved) `egress`: flush and refill
/// its egress chain in one transaction (used by the DNS refresh). The chain and its dispatch
/// entry are (re)added first: an ISC that declared no egress at start has neither.
pub fn egress_refresh_ops(p: &IscNetPolicy) -> Vec<Op> {
    let n = IscNames::new(&p.id);
    let mut b = Batch::default();
    b.push(Op::AddChain { name: n.egress.clone(), base: None });
    b.push(Op::FlushChain(n.egress.clone()));
    egress_rules(&mut b, &n.egress, &p.egress);
    b.push(Op::AddElems {
        set: EGRESS_BY_IF.into(),
        elems: vec![Elem::Map(vec![ifk(p)], Verdict::Jump(n.egress.clone()))],
    });
    b.ops
}

/// Ops replacing the peer (allow_from) elements of `p` (whose `allow_from` is the new list)
/// that were applied from `old`.
pub fn peers_refresh_ops(p: &IscNetPolicy, old: &[IpAddr]) -> Vec<Op> {
    let mut b = Batch::default();
    for (set, v4) in [(FROM4, true), (FROM6, false)] {
        swap_elems(&mut b, set, from_elems(p, old, v4), from_elems(p, &p.allow_from, v4));
    }
    b.ops
}

/// Everything one ISC needs: its three chains (flushed and filled) and its elements in the
/// global sets, dispatch entries last so the chains are complete when traffic reaches them.
pub fn isc_add_ops(cfg: &RulesConfig, p: &IscNetPolicy) -> Vec<Op> {
    let n = IscNames::new(&p.id);
    let mut b = Batch::default();
    // The DNAT chain only for an ISC that publishes, the egress chain only for one that
    // declares egress (fewer chains for `nft` to list and the kernel to validate).
    let publishes = !p.publish.is_empty();
    let egresses = !p.egress.is_empty();
    let wanted = |c: &&str| (publishes || *c != n.chain_dnat) && (egresses || *c != n.egress);
    for c in n.chains().into_iter().filter(wanted) {
        b.push(Op::AddChain { name: c.to_string(), base: None });
        b.push(Op::FlushChain(c.to_string()));
    }
    let audit_group = audit_nflog_group(cfg.v4_prefix, p.addr_v4);
    deny_chain(&mut b, cfg, &n.deny, p, audit_group);
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
    egress_rules(&mut b, &n.egress, &p.egress);
    push_elems(&mut b, LISTEN, listen_elems(p));
    push_elems(&mut b, FROM4, from_elems(p, &p.allow_from, true));
    push_elems(&mut b, FROM6, from_elems(p, &p.allow_from, false));
    let ifk = vec![ifk(p)];
    b.push(Op::AddElems {
        set: DENY_BY_IF.into(),
        elems: vec![Elem::Map(ifk.clone(), Verdict::Goto(n.deny.clone()))],
    });
    if egresses {
        b.push(Op::AddElems {
            set: EGRESS_BY_IF.into(),
            elems: vec![Elem::Map(ifk, Verdict::Jump(n.egress.clone()))],
        });
    }
    push_elems(&mut b, DNAT4, dnat_elems(p, &n, true));
    push_elems(&mut b, DNAT6, dnat_elems(p, &n, false));
    // The source addresses last: until they are in, the link fails anti-spoofing.
    push_elems(&mut b, ADDR4, addr_elems(p, true));
    push_elems(&mut b, ADDR6, addr_elems(p, false));
    b.ops
}

/// Remove one ISC: its elements first (the addresses before anything else, so the link is
/// cut off at once), then its chains, by name. Idempotent: every element and chain is added
/// (a no-op if present) before it is deleted, so a half-removed ISC can be removed again.
pub fn isc_remove_ops(p: &IscNetPolicy) -> Vec<Op> {
    let n = IscNames::new(&p.id);
    let mut b = Batch::default();
    for c in n.chains() {
        b.push(Op::AddChain { name: c.to_string(), base: None });
    }
    drop_elems(&mut b, ADDR4, addr_elems(p, true));
    drop_elems(&mut b, ADDR6, addr_elems(p, false));
    drop_elems(&mut b, DNAT4, dnat_elems(p, &n, true));
    drop_elems(&mut b, DNAT6, dnat_elems(p, &n, false));
    let ifk = vec![ifk(p)];
    drop_elems(&mut b, DENY_BY_IF, vec![Elem::Map(ifk.clone(), Verdict::Goto(n.deny.clone()))]);
    drop_elems(&mut b, EGRESS_BY_IF, vec![Elem::Map(ifk, Verdict::Jump(n.egress.clone()))]);
    drop_elems(&mut b, LISTEN, listen_elems(p));
    drop_elems(&mut b, FROM4, from_elems(p, &p.allow_from, true));
    drop_elems(&mut b, FROM6, from_elems(p, &p.allow_from, false));
    for c in n.chains() {
        b.push(Op::FlushChain(c.to_string()));
    }
    for c in n.chains() {
        b.push(Op::DeleteChain(c.to_string()));
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

/// The batch that adds one ISC on top of an existing (or missing) table, re-stating the base.
pub fn add_isc(cfg: &RulesConfig, p: &IscNetPolicy) -> Batch {
    let mut ops = base_ops(cfg);
    ops.extend(isc_add_ops(cfg, p));
    Batch { ops }
}

/// The batch that adds one ISC when the base of this configuration is in place: its first
/// command adds the (existing) element of the base marker set, so the whole transaction is
/// refused when the table, or this version of its base, is missing.
pub fn add_isc_fast(cfg: &RulesConfig, p: &IscNetPolicy) -> Batch {
    let mut ops =
        vec![Op::AddElems { set: base_marker(cfg), elems: vec![Elem::Key(vec![s(MARKER_ELEM)])] }];
    ops.extend(isc_add_ops(cfg, p));
    Batch { ops }
}

/// Adds one ISC: [`add_isc_fast`], and if `nft` refuses it (no table, or a base of another
/// configuration or version), [`add_isc`].
///
/// Why not always [`add_isc`]: re-stating the base flushes the rules of the base chains, and a
/// batch that deletes anything makes `nft` wait for an RCU grace period when it closes its
/// netlink socket (the kernel flushes its transaction destroy work on `NETLINK_URELEASE`):
/// 11-12 ms of every ISC start on the test machine (docs/network.md). The cost is that a base
/// chain flushed by hand behind isc's back is no longer repaired by the next start, only by a
/// reconcile (`isc net reconcile`, Dock start-up).
pub fn apply_add_isc(
    cfg: &RulesConfig,
    p: &IscNetPolicy,
    runner: &dyn super::NftRunner,
) -> Result<(), super::NftError> {
    match add_isc_fast(cfg, p).apply(runner) {
        Err(super::NftError::Rejected { stderr, .. }) => {
            tracing::debug!(isc = %p.id, stderr = %stderr.trim(), "base of inet isc missing or of another version: re-stating it");
            add_isc(cfg, p).apply(runner)
        }
        other => other,
    }
}

/// The batch that removes one ISC.
pub fn remove_isc(p: &IscNetPolicy) -> Batch {
    Batch { ops: isc_remove_ops(p) }
}

#[cfg(test)]
#[path = "rules_tests.rs"]
mod tests;
