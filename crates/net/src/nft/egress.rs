//! The egress allowlist: hash sets per whole-byte prefix length, no interval set.
//!
//! A declared destination is `prefix . l4proto . port`. The obvious set, a concatenated
//! interval set `ifname . addr . l4proto . port`, is a pipapo set in the kernel
//! (net/netfilter/nft_set_pipapo.c), and every transaction that changes a pipapo set copies
//! its whole lookup tables (`pipapo_clone`) and frees the old copy: measured with one prefix
//! for each of 1000 ISCs, adding an ISC cost 0.4 -> 0.8 ms and removing one 12-15 -> 19-27 ms,
//! all of it that copy. Hash sets (`nft_set_hash.c`) insert and remove one element in place.
//!
//! So there is one hash set per prefix length that is a whole number of bytes —
//! `isc_egress4_<L>` for L in 0, 8, 16, 24, 32 and `isc_egress6_<L>` for L in 0, 8, ..., 128 —
//! keyed by `ifname . (daddr & mask L) . l4proto . dport`, with one rule each in `isc_out`. A
//! prefix of another length is stored as the prefixes of the next whole-byte length that
//! cover it exactly (a /20 is 16 /24s; at most 128 elements for a /1 or a /121): the same
//! addresses, no more. A new connection costs one hash lookup per length of its family
//! (5 for IPv4, 17 for IPv6; replies are accepted before), whatever the number of ISCs.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

use super::{m, verdict, Batch, Elem, Field, KeyType, Op, Val, Verdict};
use crate::policy::{EgressRule, Proto};

/// The prefix lengths that have a set in family `v4` (IPv4) or IPv6.
pub fn lengths(v4: bool) -> impl Iterator<Item = u8> {
    (0..=if v4 { 32 } else { 128 }).step_by(8)
}

/// The set of length `len` in family `v4` (IPv4) or IPv6.
pub fn set_name(v4: bool, len: u8) -> String {
    format!("isc_egress{}_{len}", if v4 { 4 } else { 6 })
}

/// Every egress set, declared in the base.
pub(super) fn sets() -> Vec<Op> {
    let mut ops = vec![];
    for v4 in [true, false] {
        let addr = if v4 { KeyType::Ipv4 } else { KeyType::Ipv6 };
        for len in lengths(v4) {
            ops.push(Op::AddSet {
                name: set_name(v4, len),
                key: vec![KeyType::Ifname, addr, KeyType::Proto, KeyType::Service],
                interval: false,
            });
        }
    }
    ops
}

fn mask(v4: bool, len: u8) -> IpAddr {
    if v4 {
        IpAddr::V4(Ipv4Addr::from(u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0)))
    } else {
        IpAddr::V6(Ipv6Addr::from(u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0)))
    }
}

/// The rules of `chain` that accept a declared destination: one lookup per length.
pub(super) fn rules(b: &mut Batch, chain: &str) {
    for v4 in [true, false] {
        let (daddr, full) = if v4 { (Field::IpDaddr, 32) } else { (Field::Ip6Daddr, 128) };
        for len in lengths(v4) {
            let addr = if len == full {
                daddr.clone()
            } else {
                Field::Masked(Box::new(daddr.clone()), Val::Addr(mask(v4, len)))
            };
            let k = Field::Concat(vec![Field::Iifname, addr, Field::L4proto, Field::ThDport]);
            b.rule(chain, vec![m(k, Val::SetRef(set_name(v4, len))), verdict(Verdict::Accept)]);
        }
    }
}

/// `net` as prefixes of the next whole-byte length: (that length, their network addresses).
fn whole_bytes(net: IpNet) -> (u8, Vec<IpAddr>) {
    let net = net.trunc();
    let (len, max) = (net.prefix_len(), net.max_prefix_len());
    let to = len.div_ceil(8) * 8;
    let n = 1u32 << (to - len);
    let shift = u32::from(max - to);
    let addrs = match net {
        IpNet::V4(n4) => {
            let base = u32::from(n4.network());
            (0..n)
                .map(|i| IpAddr::V4(Ipv4Addr::from(base | i.checked_shl(shift).unwrap_or(0))))
                .collect()
        }
        IpNet::V6(n6) => {
            let base = u128::from(n6.network());
            (0..n)
                .map(|i| {
                    let off = u128::from(i).checked_shl(shift).unwrap_or(0);
                    IpAddr::V6(Ipv6Addr::from(base | off))
                })
                .collect()
        }
    };
    (to, addrs)
}

/// The elements of `egress` behind link `ifname`, set by set (sets without one left out).
pub(super) fn elems(ifname: &str, egress: &[EgressRule]) -> Vec<(String, Vec<Elem>)> {
    let mut v: Vec<(String, (IpAddr, Proto, u16))> = vec![];
    for e in egress {
        let (len, addrs) = whole_bytes(e.net);
        let set = set_name(e.net.addr().is_ipv4(), len);
        v.extend(addrs.into_iter().map(|a| (set.clone(), (a, e.proto, e.port))));
    }
    v.sort();
    v.dedup();
    let mut out: Vec<(String, Vec<Elem>)> = vec![];
    for (set, (addr, proto, port)) in v {
        let e = Elem::Key(vec![
            Val::Str(ifname.into()),
            Val::Addr(addr),
            Val::Proto(proto),
            Val::Port(port),
        ]);
        match out.last_mut() {
            Some((s, es)) if *s == set => es.push(e),
            _ => out.push((set, vec![e])),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(net: &str) -> EgressRule {
        EgressRule { net: net.parse().unwrap(), proto: Proto::Tcp, port: 443 }
    }

    #[test]
    fn a_prefix_becomes_the_whole_byte_prefixes_that_cover_it_exactly() {
        assert_eq!(
            whole_bytes("192.0.2.7/24".parse().unwrap()),
            (24, vec!["192.0.2.0".parse().unwrap()])
        );
        let (len, a) = whole_bytes("10.16.0.0/12".parse().unwrap());
        assert_eq!((len, a.len()), (16, 16));
        assert_eq!(a[0], "10.16.0.0".parse::<IpAddr>().unwrap());
        assert_eq!(a[15], "10.31.0.0".parse::<IpAddr>().unwrap());
        assert_eq!(
            whole_bytes("0.0.0.0/0".parse().unwrap()),
            (0, vec!["0.0.0.0".parse().unwrap()])
        );
        let (len, a) = whole_bytes("2001:db8::/33".parse().unwrap());
        assert_eq!((len, a.len()), (40, 128));
        assert_eq!(a[127], "2001:db8:7f00::".parse::<IpAddr>().unwrap());
        let (len, a) = whole_bytes("2001:db8::1/128".parse().unwrap());
        assert_eq!((len, a), (128, vec!["2001:db8::1".parse().unwrap()]));
    }

    #[test]
    fn elements_go_to_the_set_of_their_length() {
        let es =
            elems("isca", &[rule("192.0.2.0/24"), rule("198.51.100.9/32"), rule("192.0.2.0/24")]);
        let names: Vec<_> = es.iter().map(|(s, e)| (s.as_str(), e.len())).collect();
        assert_eq!(names, vec![("isc_egress4_24", 1), ("isc_egress4_32", 1)]);
        assert_eq!(mask(true, 24), "255.255.255.0".parse::<IpAddr>().unwrap());
        assert_eq!(mask(true, 0), "0.0.0.0".parse::<IpAddr>().unwrap());
        assert_eq!(mask(false, 48), "ffff:ffff:ffff::".parse::<IpAddr>().unwrap());
        assert_eq!(lengths(true).count() + lengths(false).count(), 5 + 17);
    }
}
