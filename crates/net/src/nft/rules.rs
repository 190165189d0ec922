//! The `inet isc` ruleset: base chains, shared policy chains, and global sets and maps keyed
//! by the ISC's host interface. An ISC owns nothing in the table but *elements*.
//!
//! Shape (see docs/network.md for the full listing):
//! - `forward`, `input`, `output` send traffic from an `isc*` link to the shared chain `isc_out`
//!   and traffic to one to `isc_in`. Those chains look the ISC up in global sets whose keys
//!   start with the interface name (`isc_addr4`: `ifname . ipv4_addr`, `isc_listen`,
//!   `isc_from4`, the egress hash sets of `egress`, ...), so the cost per packet is a few
//!   lookups whatever the number of ISCs;
//! - `prerouting` DNATs published ports through the data maps `isc_dnat4_addr` /
//!   `isc_dnat4_port` (and `6`), keyed on `daddr . l4proto . dport`; `postrouting`
//!   masquerades ISC traffic leaving by a non-ISC link;
//! - denials go to per-*slot* logging chains (`slots`), found through the data maps
//!   `isc_slot` / `isc_slot_in` (`ifname : mark`).
//!
//! Why elements only: the kernel re-validates every chain reachable from a base chain on any
//! commit that adds a jump/goto (a rule, or a verdict-map element) and `nft` lists every set
//! and chain of the table (and every element of an interval set) before it applies anything.
//! Per-ISC chains made both linear in the number of ISCs. Elements of hash sets and data maps
//! set no validation flag, and they are sent straight over nfnetlink (`netlink`), so adding
//! or removing an ISC costs the same with 1 or 1000 ISCs (docs/network.md, "Why this
//! shape").
//!
//! Adding an ISC is one transaction of element adds; removing it adds (a no-op if present)
//! then deletes the same elements, so it is idempotent. The base (chains, rules, sets) is
//! stated through `nft` when its marker set is missing, never read back.

use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::egress;
use super::netlink::{self, SetShape};
use super::slots::{self, block_marker, block_of, block_ops, slot_of};
use super::{
    m, not, verdict, BaseChain, Batch, ChainKind, Elem, Field, Hook, KeyType, Op, Stmt, Val,
    Verdict,
};
use crate::policy::{EgressRule, IscNetPolicy, Proto};

pub use slots::audit_nflog_group;

/// Set `ifname . ipv4_addr`: the one source address each ISC link may use.
pub const ADDR4: &str = "isc_addr4";
/// Set `ifname . ipv6_addr`.
pub const ADDR6: &str = "isc_addr6";
/// Set `ifname . inet_proto . inet_service`: listen ports of the ISC behind that link.
pub const LISTEN: &str = "isc_listen";
/// Set `ifname . ipv4_addr`: peer ISC addresses allowed into the ISC behind that link.
pub const FROM4: &str = "isc_from4";
/// Set `ifname . ipv6_addr`.
pub const FROM6: &str = "isc_from6";
/// Map `ifname : mark`: the lease slot of the ISC behind that link (selects its log chain).
pub const SLOT: &str = "isc_slot";
/// Map `ifname : mark`: the slot with [`slots::IN_BIT`] set (traffic to the ISC).
pub const SLOT_IN: &str = "isc_slot_in";
/// Map `host v4 . proto . port : ISC v4 address` of published ports.
pub const DNAT4_ADDR: &str = "isc_dnat4_addr";
/// Map `host v4 . proto . port : ISC port`.
pub const DNAT4_PORT: &str = "isc_dnat4_port";
/// Map `host v6 . proto . port : ISC v6 address`.
pub const DNAT6_ADDR: &str = "isc_dnat6_addr";
/// Map `host v6 . proto . port : ISC port`.
pub const DNAT6_PORT: &str = "isc_dnat6_port";
/// Map `mark : verdict`: slot (with or without [`slots::IN_BIT`]) → `goto isc_s<slot>`
/// (static entries, see `slots`).
pub const LOG: &str = "isc_log";
/// Shared chain for traffic from an ISC link.
pub const CHAIN_OUT: &str = "isc_out";
/// Shared chain for traffic to an ISC link.
pub const CHAIN_IN: &str = "isc_in";
/// Shared chain: deny traffic from an ISC link (log as its slot, drop).
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

fn base(name: &str, kind: ChainKind, hook: Hook, prio: i32) -> Op {
    Op::AddChain { name: name.into(), base: Some(BaseChain { kind, hook, prio }) }
}

pub(super) fn s(v: &str) -> Val {
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
    use KeyType::{Ifname, Ipv4, Ipv6, Mark, Proto as P, Service};
    let set = |name: &str, key: &[KeyType], interval: bool| Op::AddSet {
        name: name.into(),
        key: key.to_vec(),
        interval,
    };
    let map = |name: &str, key: &[KeyType], data: KeyType| Op::AddMap {
        name: name.into(),
        key: key.to_vec(),
        data,
    };
    vec![
        set(ADDR4, &[Ifname, Ipv4], false),
        set(ADDR6, &[Ifname, Ipv6], false),
        set(LISTEN, &[Ifname, P, Service], false),
        set(FROM4, &[Ifname, Ipv4], false),
        set(FROM6, &[Ifname, Ipv6], false),
        map(SLOT, &[Ifname], Mark),
        map(SLOT_IN, &[Ifname], Mark),
        map(DNAT4_ADDR, &[Ipv4, P, Service], Ipv4),
        map(DNAT4_PORT, &[Ipv4, P, Service], Service),
        map(DNAT6_ADDR, &[Ipv6, P, Service], Ipv6),
        map(DNAT6_PORT, &[Ipv6, P, Service], Service),
        Op::AddVmap { name: LOG.into(), key: vec![Mark] },
    ]
    .into_iter()
    .chain(egress::sets())
    .collect()
}

/// How the elements of `set` are laid out (for the netlink element batches), from the
/// declarations above; the marker sets hold one interface-name-typed element.
pub(super) fn shape(set: &str) -> Option<SetShape> {
    if set.starts_with("isc_base_") || set.starts_with("isc_blk") {
        return Some(SetShape { key: vec![KeyType::Ifname], data: None, interval: false });
    }
    global_sets().into_iter().find_map(|op| match op {
        Op::AddSet { name, key, interval } if name == set => {
            Some(SetShape { key, data: None, interval })
        }
        Op::AddMap { name, key, data } if name == set => {
            Some(SetShape { key, data: Some(data), interval: false })
        }
        _ => None,
    })
}

/// A shared deny chain: the packet's mark becomes the slot of the ISC behind `field` (from
/// `slot_map`, which also says the direction) and the slot's logging chain takes it (limit,
/// log, drop); a link with no slot is dropped unlogged. One rule, so that a lookup miss stops
/// it before the verdict map sees a stale mark.
fn deny_chain(b: &mut Batch, chain: &str, field: Field, slot_map: &str) {
    b.rule(
        chain,
        vec![
            Stmt::MarkFromMap { field, map: slot_map.into() },
            Stmt::Vmap { field: Field::Mark, map: LOG.into() },
        ],
    );
    b.rule(chain, vec![verdict(Verdict::Drop)]);
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
    // The egress allowlist: declared destinations of each ISC, keyed by its link, in one
    // hash set per whole-byte prefix length (`egress`).
    egress::rules(b, c);
    b.rule(c, vec![deny()]);
    deny_chain(b, DENY_OUT, Field::Iifname, SLOT);
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
    deny_chain(b, DENY_IN, Field::Oifname, SLOT_IN);
}

/// The one element of the base marker set.
pub(super) const MARKER_ELEM: &str = "isc_base";

/// FNV-1a (64 bit): a hash that, unlike std's `DefaultHasher`, is the same in every build.
pub(super) fn fnv1a(bytes: &[u8]) -> u64 {
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
    // Two data maps per family (address, port): nft 1.0.6 crashes on the JSON declaration of
    // a map whose data is a concatenation. A key missing from the first stops the rule.
    let dnat = |v6: bool, key: Field, addr_map: &str, port_map: &str| Stmt::DnatMap {
        v6,
        key,
        addr_map: addr_map.into(),
        port_map: port_map.into(),
    };
    b.rule("prerouting", vec![dnat(false, k4, DNAT4_ADDR, DNAT4_PORT)]);
    b.rule("prerouting", vec![dnat(true, k6, DNAT6_ADDR, DNAT6_PORT)]);

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

fn from_elems(p: &IscNetPolicy, peers: &[IpAddr], v4: bool) -> Vec<Elem> {
    let mut v: Vec<IpAddr> = peers.iter().copied().filter(|a| a.is_ipv4() == v4).collect();
    v.sort();
    v.dedup();
    v.into_iter().map(|a| Elem::Key(vec![ifk(p), Val::Addr(a)])).collect()
}

/// The published ports of `p` in one family: (address map elements, port map elements).
fn dnat_elems(p: &IscNetPolicy, v4: bool) -> (Vec<Elem>, Vec<Elem>) {
    let to = if v4 { IpAddr::V4(p.addr_v4) } else { IpAddr::V6(p.addr_v6) };
    p.publish
        .iter()
        .filter(|pb| pb.host_addr.is_ipv4() == v4)
        .map(|pb| {
            let k = vec![Val::Addr(pb.host_addr), Val::Proto(pb.proto), Val::Port(pb.host_port)];
            (Elem::Data(k.clone(), Val::Addr(to)), Elem::Data(k, Val::Port(pb.port)))
        })
        .unzip()
}

fn slot_elems(cfg: &RulesConfig, p: &IscNetPolicy, dir: u32) -> Vec<Elem> {
    vec![Elem::Data(vec![ifk(p)], Val::Mark(slot_of(cfg.v4_prefix, p.addr_v4) | dir))]
}

/// Every element of `p`, set by set, the source addresses last (a reader of the ops sees the
/// link allowed only once everything else is in; the kernel applies them at once anyway).
fn isc_elems(cfg: &RulesConfig, p: &IscNetPolicy) -> Vec<(String, Vec<Elem>)> {
    let (d4a, d4p) = dnat_elems(p, true);
    let (d6a, d6p) = dnat_elems(p, false);
    let named = |v: Vec<(&'static str, Vec<Elem>)>| {
        v.into_iter().map(|(s, e)| (s.to_string(), e)).collect::<Vec<_>>()
    };
    let mut v: Vec<(String, Vec<Elem>)> = named(vec![
        (SLOT, slot_elems(cfg, p, 0)),
        (SLOT_IN, slot_elems(cfg, p, slots::IN_BIT)),
        (LISTEN, listen_elems(p)),
        (FROM4, from_elems(p, &p.allow_from, true)),
        (FROM6, from_elems(p, &p.allow_from, false)),
    ]);
    v.extend(egress::elems(&p.if_host, &p.egress));
    v.extend(named(vec![
        (DNAT4_ADDR, d4a),
        (DNAT4_PORT, d4p),
        (DNAT6_ADDR, d6a),
        (DNAT6_PORT, d6p),
        (ADDR4, addr_elems(p, true)),
        (ADDR6, addr_elems(p, false)),
    ]));
    v
}

fn push_elems(b: &mut Batch, set: &str, elems: Vec<Elem>) {
    if !elems.is_empty() {
        b.push(Op::AddElems { set: set.to_string(), elems });
    }
}

/// Delete `elems` from `set` even if some are missing: `add` (a no-op for an element that is
/// there with the same data) then `delete`, in the same transaction. This works on every
/// kernel (`NFT_MSG_DESTROYSETELEM` needs 6.3) and through `nft` 1.0.6 (no `destroy`).
fn drop_elems(b: &mut Batch, set: &str, elems: Vec<Elem>) {
    if elems.is_empty() {
        return;
    }
    b.push(Op::AddElems { set: set.to_string(), elems: elems.clone() });
    let keys = elems.iter().map(|e| Elem::Key(e.key().to_vec())).collect();
    b.push(Op::DeleteElems { set: set.to_string(), elems: keys });
}

/// Swap elements of one set from `old` to `new` (one transaction).
fn swap_elems(b: &mut Batch, set: &str, old: Vec<Elem>, new: Vec<Elem>) {
    if old != new {
        drop_elems(b, set, old);
        push_elems(b, set, new);
    }
}

/// Ops replacing the egress elements of `p` applied from `old` with those of `p.egress` (the
/// DNS refresh). Only this ISC's elements are touched.
pub fn egress_refresh_ops(p: &IscNetPolicy, old: &[EgressRule]) -> Vec<Op> {
    let mut b = Batch::default();
    let (old, new) = (egress::elems(&p.if_host, old), egress::elems(&p.if_host, &p.egress));
    let mut sets: Vec<&String> = old.iter().chain(&new).map(|(s, _)| s).collect();
    sets.sort();
    sets.dedup();
    let of = |v: &[(String, Vec<Elem>)], set: &str| {
        v.iter().find(|(s, _)| s == set).map(|(_, e)| e.clone()).unwrap_or_default()
    };
    for set in sets {
        swap_elems(&mut b, set, of(&old, set), of(&new, set));
    }
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

/// Everything one ISC needs: its elements in the global sets and maps.
pub fn isc_add_ops(cfg: &RulesConfig, p: &IscNetPolicy) -> Vec<Op> {
    let mut b = Batch::default();
    for (set, elems) in isc_elems(cfg, p) {
        push_elems(&mut b, &set, elems);
    }
    b.ops
}

/// Remove one ISC: its elements, the addresses first (in a reader's order; one commit).
/// Idempotent: every element is added (a no-op if present) before it is deleted.
pub fn isc_remove_ops(cfg: &RulesConfig, p: &IscNetPolicy) -> Vec<Op> {
    let mut b = Batch::default();
    for (set, elems) in isc_elems(cfg, p).into_iter().rev() {
        drop_elems(&mut b, &set, elems);
    }
    b.ops
}

/// The blocks of logging chains the slots of `policies` need, each once.
fn blocks_for<'a>(
    cfg: &RulesConfig,
    policies: impl IntoIterator<Item = &'a IscNetPolicy>,
) -> Vec<Op> {
    let mut blocks: Vec<u32> =
        policies.into_iter().map(|p| block_of(slot_of(cfg.v4_prefix, p.addr_v4))).collect();
    blocks.sort();
    blocks.dedup();
    blocks.into_iter().flat_map(|b| block_ops(cfg, b)).collect()
}

/// The full reconcile: `add table; delete table; <table from scratch>` in one transaction, so
/// leftovers of crashed runs disappear and nothing is ever half-applied.
pub fn full_reconcile(cfg: &RulesConfig, policies: &[IscNetPolicy]) -> Batch {
    let mut b = Batch::default();
    b.push(Op::AddTable);
    b.push(Op::DeleteTable);
    b.ops.extend(base_ops(cfg));
    b.ops.extend(blocks_for(cfg, policies));
    for p in policies {
        b.ops.extend(isc_add_ops(cfg, p));
    }
    b
}

/// The batch (for `nft`) that adds one ISC on top of an existing (or missing) table,
/// re-stating the base and the ISC's block of logging chains.
pub fn add_isc(cfg: &RulesConfig, p: &IscNetPolicy) -> Batch {
    let mut ops = base_ops(cfg);
    ops.extend(blocks_for(cfg, [p]));
    ops.extend(isc_add_ops(cfg, p));
    Batch { ops }
}

/// The element batch that adds one ISC when the base and its block of this configuration are
/// in place: its first commands add the (existing) elements of the two marker sets, so the
/// whole transaction is refused (ENOENT) when the table, this version of its base or the
/// block is missing.
pub fn add_isc_fast(cfg: &RulesConfig, p: &IscNetPolicy) -> Batch {
    let marker = |set: String| Op::AddElems { set, elems: vec![Elem::Key(vec![s(MARKER_ELEM)])] };
    let block = block_of(slot_of(cfg.v4_prefix, p.addr_v4));
    let mut ops = vec![marker(base_marker(cfg)), marker(block_marker(cfg, block))];
    ops.extend(isc_add_ops(cfg, p));
    Batch { ops }
}

/// Apply element commands (`add`/`delete element` only) in one transaction over nfnetlink.
pub fn apply_elems(ops: &[Op]) -> Result<(), super::NftError> {
    Ok(netlink::apply_elems(ops, &shape)?)
}

/// [`apply_elems`] on a socket the caller closes (see [`netlink::NlSocket`]).
pub fn apply_elems_on(sock: &netlink::NlSocket, ops: &[Op]) -> Result<(), super::NftError> {
    Ok(sock.apply(ops, &shape)?)
}

/// Adds one ISC: [`add_isc_fast`] over nfnetlink, and if the kernel refuses it for a missing
/// set (no table, a base of another configuration or version, or the first ISC of its block),
/// [`add_isc`] through `nft`, in one transaction.
///
/// Why not always [`add_isc`]: re-stating the base flushes the rules of the base chains, and a
/// batch that deletes anything waits for an RCU grace period when its netlink socket is
/// closed (the kernel flushes its transaction destroy work on `NETLINK_URELEASE`): 11-12 ms,
/// plus `nft`'s start and cache dump (docs/network.md). The cost is that a base chain flushed
/// by hand behind isc's back is no longer repaired by the next start, only by a reconcile
/// (`isc net reconcile`, Dock start-up).
pub fn apply_add_isc(
    cfg: &RulesConfig,
    p: &IscNetPolicy,
    runner: &dyn super::NftRunner,
) -> Result<(), super::NftError> {
    match apply_elems(&add_isc_fast(cfg, p).ops) {
        Err(super::NftError::Kernel(e)) if e.errno() == Some(libc::ENOENT) => {
            tracing::debug!(isc = %p.id, error = %e, "base or logging block of inet isc missing or of another version: stating it");
            add_isc(cfg, p).apply(runner)
        }
        other => other,
    }
}

/// The element commands that remove one ISC (see [`isc_remove_ops`]).
pub fn remove_isc(cfg: &RulesConfig, p: &IscNetPolicy) -> Batch {
    Batch { ops: isc_remove_ops(cfg, p) }
}

/// Removes one ISC's elements over nfnetlink, in one transaction (idempotent).
pub fn apply_remove_isc(cfg: &RulesConfig, p: &IscNetPolicy) -> Result<(), super::NftError> {
    apply_elems(&remove_isc(cfg, p).ops)
}

#[cfg(test)]
#[path = "rules_tests.rs"]
mod tests;
