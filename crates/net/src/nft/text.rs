//! The model → nft script text (`nft -f` syntax), for logs and `--dry-run`.

use std::fmt::Write;

use super::{Batch, ChainKind, Elem, Field, Hook, KeyType, Op, Stmt, Val, Verdict, TABLE};

fn key_type(k: &[KeyType]) -> String {
    k.iter()
        .map(|k| match k {
            KeyType::Ipv4 => "ipv4_addr",
            KeyType::Ipv6 => "ipv6_addr",
            KeyType::Proto => "inet_proto",
            KeyType::Service => "inet_service",
            KeyType::Ifname => "ifname",
            KeyType::Mark => "mark",
        })
        .collect::<Vec<_>>()
        .join(" . ")
}

fn val(v: &Val) -> String {
    match v {
        Val::Net(net) if net.prefix_len() == net.max_prefix_len() => net.addr().to_string(),
        Val::Net(net) => net.trunc().to_string(),
        Val::Addr(a) => a.to_string(),
        Val::Proto(p) => p.as_str().to_string(),
        Val::Port(p) => p.to_string(),
        Val::Str(s) => quote(s),
        Val::Strs(vs) => {
            format!("{{ {} }}", vs.iter().map(|s| quote(s)).collect::<Vec<_>>().join(", "))
        }
        Val::SetRef(n) => format!("@{n}"),
        Val::Mark(m) => m.to_string(),
    }
}

/// Interface names are quoted (they may hold a `*` wildcard); keywords are not.
fn quote(s: &str) -> String {
    if s.starts_with("isc") || s.contains('*') {
        format!("\"{s}\"")
    } else {
        s.to_string()
    }
}

fn field(f: &Field) -> String {
    match f {
        Field::IpSaddr => "ip saddr".into(),
        Field::IpDaddr => "ip daddr".into(),
        Field::Ip6Saddr => "ip6 saddr".into(),
        Field::Ip6Daddr => "ip6 daddr".into(),
        Field::L4proto => "meta l4proto".into(),
        Field::ThDport => "th dport".into(),
        Field::Iifname => "iifname".into(),
        Field::Oifname => "oifname".into(),
        Field::CtState => "ct state".into(),
        Field::FibDaddrType => "fib daddr type".into(),
        Field::Icmpv6Type => "icmpv6 type".into(),
        Field::Mark => "meta mark".into(),
        Field::Masked(f, mask) => format!("{} & {}", field(f), val(mask)),
        Field::Concat(fs) => fs.iter().map(field).collect::<Vec<_>>().join(" . "),
    }
}

fn verdict(v: &Verdict) -> String {
    match v {
        Verdict::Accept => "accept".into(),
        Verdict::Drop => "drop".into(),
        Verdict::Jump(t) => format!("jump {t}"),
        Verdict::Goto(t) => format!("goto {t}"),
        Verdict::Return => "return".into(),
    }
}

fn stmt(s: &Stmt) -> String {
    match s {
        // `FIELD & MASK VALUE` would not parse back: the comparison is written out.
        Stmt::Match { field: f @ Field::Masked(..), eq: true, val: v } => {
            format!("{} == {}", field(f), val(v))
        }
        Stmt::Match { field: f, eq: true, val: v } => format!("{} {}", field(f), val(v)),
        Stmt::Match { field: f, eq: false, val: v } => format!("{} != {}", field(f), val(v)),
        Stmt::Vmap { field: f, map } => format!("{} vmap @{map}", field(f)),
        Stmt::Limit { per_second, burst } => {
            format!("limit rate {per_second}/second burst {burst} packets")
        }
        Stmt::Log { prefix, group } => format!("log prefix \"{prefix}\" group {group}"),
        Stmt::Dnat { addr: std::net::IpAddr::V4(a), port } => format!("dnat ip to {a}:{port}"),
        Stmt::Dnat { addr: std::net::IpAddr::V6(a), port } => format!("dnat ip6 to [{a}]:{port}"),
        Stmt::Masquerade => "masquerade".into(),
        Stmt::MarkFromMap { field: f, map } => format!("meta mark set {} map @{map}", field(f)),
        Stmt::DnatMap { v6, key, addr_map, port_map } => {
            let k = field(key);
            let fam = if *v6 { "ip6" } else { "ip" };
            format!("dnat {fam} to {k} map @{addr_map} : {k} map @{port_map}")
        }
        Stmt::Verdict(v) => verdict(v),
    }
}

fn elem(e: &Elem) -> String {
    let key = |vs: &[Val]| vs.iter().map(val).collect::<Vec<_>>().join(" . ");
    match e {
        Elem::Key(vs) => key(vs),
        Elem::Map(vs, v) => format!("{} : {}", key(vs), verdict(v)),
        Elem::Data(vs, d) => format!("{} : {}", key(vs), val(d)),
    }
}

fn elems(es: &[Elem]) -> String {
    es.iter().map(elem).collect::<Vec<_>>().join(", ")
}

/// Render a batch as an nft script.
pub(super) fn batch_to_text(b: &Batch) -> String {
    let t = format!("inet {TABLE}");
    let mut out = String::new();
    for o in &b.ops {
        let line = match o {
            Op::AddTable => format!("add table {t}"),
            Op::DeleteTable => format!("delete table {t}"),
            Op::AddChain { name, base: None } => format!("add chain {t} {name}"),
            Op::AddChain { name, base: Some(bc) } => {
                let kind = match bc.kind {
                    ChainKind::Filter => "filter",
                    ChainKind::Nat => "nat",
                };
                let hook = match bc.hook {
                    Hook::Prerouting => "prerouting",
                    Hook::Input => "input",
                    Hook::Forward => "forward",
                    Hook::Output => "output",
                    Hook::Postrouting => "postrouting",
                };
                format!("add chain {t} {name} {{ type {kind} hook {hook} priority {}; policy accept; }}", bc.prio)
            }
            Op::FlushChain(n) => format!("flush chain {t} {n}"),
            Op::DeleteChain(n) => format!("delete chain {t} {n}"),
            Op::AddSet { name, key, interval } => format!(
                "add set {t} {name} {{ type {}; {}}}",
                key_type(key),
                if *interval { "flags interval; " } else { "" }
            ),
            Op::FlushSet(n) => format!("flush set {t} {n}"),
            Op::DeleteSet(n) => format!("delete set {t} {n}"),
            Op::AddVmap { name, key } => {
                format!("add map {t} {name} {{ type {} : verdict; }}", key_type(key))
            }
            Op::AddMap { name, key, data } => {
                format!("add map {t} {name} {{ type {} : {}; }}", key_type(key), key_type(&[*data]))
            }
            Op::AddRule { chain, stmts } => {
                format!(
                    "add rule {t} {chain} {}",
                    stmts.iter().map(stmt).collect::<Vec<_>>().join(" ")
                )
            }
            Op::AddElems { set, elems: es } => format!("add element {t} {set} {{ {} }}", elems(es)),
            Op::DeleteElems { set, elems: es } => {
                format!("delete element {t} {set} {{ {} }}", elems(es))
            }
        };
        let _ = writeln!(out, "{line}");
    }
    out
}
