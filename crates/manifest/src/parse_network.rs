//! `[network]`: listen ports and their publication, egress allowlist, peers, bandwidth.

use std::collections::BTreeMap;
use std::net::IpAddr;

use crate::error::{ErrorKind, Problem};
use crate::netspec;
use crate::parse::{choice, duplicate, Res};
use crate::reader::Table;
use crate::rules;
use crate::types::*;
use crate::units;

const NETWORK_KEYS: &[&str] = &["listen", "egress", "allow_from", "bandwidth"];
const LISTEN_KEYS: &[&str] = &["port", "proto", "publish"];
const BANDWIDTH_KEYS: &[&str] = &["ingress", "egress"];

pub(crate) fn parse_network(t: &Table<'_, '_>, own_name: &str) -> Res<Network> {
    t.deny_unknown(NETWORK_KEYS)?;
    let mut net = Network::default();

    let listen_ex = "listen = [{ port = 8080, publish = 18080 }]";
    if let Some(n) = t.get("listen") {
        let mut ports: BTreeMap<(u16, Proto), String> = BTreeMap::new();
        let mut published: BTreeMap<(Option<IpAddr>, u16, Proto), String> = BTreeMap::new();
        for item in n.array("an array of tables", listen_ex)? {
            let e = item.table("a table like { port = 8080 }", listen_ex)?;
            e.deny_unknown(LISTEN_KEYS)?;
            let port_node = e.require("port", "the port inside the ISC", "port = 8080")?;
            let port = port_node.int_in(1, 65535, "a port", "port = 8080")? as u16;
            let proto = match e.get("proto") {
                None => Proto::Tcp,
                Some(p) => match choice(&p, &["tcp", "udp"], "proto = \"tcp\"")? {
                    "udp" => Proto::Udp,
                    _ => Proto::Tcp,
                },
            };
            if let Some(first) = ports.get(&(port, proto)) {
                return Err(duplicate(
                    &port_node,
                    &format!("{} port {port}", proto.as_str()),
                    first,
                ));
            }
            ports.insert((port, proto), port_node.key.clone());
            let publish = match e.get("publish") {
                None => None,
                Some(p) => {
                    let publish = if p.value.is_integer() {
                        Publish {
                            host_addr: None,
                            port: p.int_in(1, 65535, "a host port", "publish = 18080")? as u16,
                        }
                    } else {
                        let s = p.str(
                            "a host port like 18080 or \"127.0.0.1:18080\"",
                            "publish = \"127.0.0.1:18080\"",
                        )?;
                        netspec::parse_publish(s).map_err(|pr| p.fail(pr))?
                    };
                    // The same host port on "every address" and on one address also collide.
                    let clash = published.iter().find(|((addr, hp, pr), _)| {
                        *hp == publish.port
                            && *pr == proto
                            && (addr.is_none()
                                || publish.host_addr.is_none()
                                || *addr == publish.host_addr)
                    });
                    if let Some((_, first)) = clash {
                        return Err(duplicate(
                            &p,
                            &format!("host {} port {}", proto.as_str(), publish.port),
                            first,
                        ));
                    }
                    published.insert((publish.host_addr, publish.port, proto), p.key.clone());
                    Some(publish)
                }
            };
            net.listen.push(Listen { port, proto, publish });
        }
    }

    let egress_ex = "egress = [\"192.0.2.10/32:5432\", \"db.internal:5432\"]";
    if let Some(n) = t.get("egress") {
        let mut seen: Vec<(EgressRule, String)> = Vec::new();
        for (item, s) in n.strings("an array of egress rules", egress_ex)? {
            let rule = netspec::parse_egress(s).map_err(|p| item.fail(p))?;
            if let Some((_, first)) = seen.iter().find(|(r, _)| *r == rule) {
                return Err(duplicate(&item, &format!("egress rule {s:?}"), first));
            }
            seen.push((rule.clone(), item.key.clone()));
            net.egress.push(rule);
        }
    }

    let allow_ex = "allow_from = [\"frontend\"]";
    if let Some(n) = t.get("allow_from") {
        let mut seen: BTreeMap<String, String> = BTreeMap::new();
        for (item, s) in n.strings("an array of ISC names", allow_ex)? {
            rules::dns_label("an ISC name", s).map_err(|p| item.fail(p))?;
            if s == own_name {
                return Err(item.err(
                    ErrorKind::InvalidValue,
                    format!(
                        "{s:?} is this ISC's own name; an ISC always reaches itself over loopback"
                    ),
                    "remove it from allow_from".into(),
                ));
            }
            if let Some(first) = seen.get(s) {
                return Err(duplicate(&item, &format!("{s:?}"), first));
            }
            seen.insert(s.to_string(), item.key.clone());
            net.allow_from.push(s.to_string());
        }
    }

    if let Some(n) = t.get("bandwidth") {
        let rate_ex = "bandwidth = \"10mbit\"";
        net.bandwidth = Some(if let Some(s) = n.value.as_str() {
            let bps = units::parse_rate(s).map_err(|p| n.fail(p))?;
            Bandwidth { ingress_bps: bps, egress_bps: bps }
        } else if n.value.is_table() {
            let b = n.table("", rate_ex)?;
            b.deny_unknown(BANDWIDTH_KEYS)?;
            let rate = |key: &str| -> Res<u64> {
                let r = b.require(key, "a bit rate", &format!("{key} = \"10mbit\""))?;
                let s = r.str("a bit rate like \"10mbit\"", &format!("{key} = \"10mbit\""))?;
                units::parse_rate(s).map_err(|p: Problem| r.fail(p))
            };
            Bandwidth { ingress_bps: rate("ingress")?, egress_bps: rate("egress")? }
        } else {
            return Err(n.wrong_type(
                "a bit rate like \"10mbit\" or { ingress = \"10mbit\", egress = \"5mbit\" }",
                rate_ex,
            ));
        });
    }
    Ok(net)
}
