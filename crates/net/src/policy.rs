//! The network policy model: what an ISC declares, and the resolved form the firewall is built
//! from.
//!
//! A request ([`IscNetRequest`]) is what the engine derives from the manifest. Once addresses are
//! leased and host names resolved it becomes an [`IscNetPolicy`], which is all the nftables
//! builder needs; a full reconcile takes a list of policies only.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::AtomicBool;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::dns::{Answer, DnsError, Resolver};

/// Errors of policy validation and resolution.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("ISC id {id:?} is invalid: use 1-64 characters from [A-Za-z0-9_-]")]
    BadId { id: String },
    #[error("cannot resolve egress host {host}:{port}: {source}; check the name or declare a CIDR instead")]
    Resolve { host: String, port: u16, source: Box<DnsError> },
    #[error("egress host names need a resolver: {source}")]
    Resolver { source: Box<DnsError> },
    #[error("bandwidth {value:?} is not a rate: expected e.g. \"10mbit\", \"512kbit\", \"1gbit\", \"2mbps\"")]
    BadRate { value: String },
    #[error("port 0 is not a valid {what} port")]
    ZeroPort { what: &'static str },
}

/// Transport protocol of a port rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Proto {
    /// The nft / IANA keyword.
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }

    /// The IANA protocol number (what `meta l4proto` loads).
    pub fn number(self) -> u8 {
        match self {
            Proto::Tcp => 6,
            Proto::Udp => 17,
        }
    }
}

/// A port an ISC listens on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Listen {
    /// Protocol.
    pub proto: Proto,
    /// Port inside the ISC.
    pub port: u16,
}

/// A published port: `host_addr:host_port` on the host is DNATed to the ISC's `port`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Publish {
    /// Host address the port is bound to (never "all addresses").
    pub host_addr: IpAddr,
    /// Port on the host address.
    pub host_port: u16,
    /// Protocol.
    pub proto: Proto,
    /// Target port inside the ISC (should be one of its listen ports).
    pub port: u16,
}

/// Destination of a declared egress rule before resolution.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EgressTarget {
    /// An address or CIDR.
    Net(IpNet),
    /// A DNS name, resolved when the rules are applied and again when its TTL expires
    /// ([`crate::refresh`]).
    Host(String),
}

/// A declared egress destination: `target:port/proto`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EgressSpec {
    /// Where.
    pub target: EgressTarget,
    /// Protocol.
    pub proto: Proto,
    /// Destination port.
    pub port: u16,
}

/// A resolved egress rule: network, protocol, port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct EgressRule {
    /// Destination network (a /32 or /128 for resolved names).
    pub net: IpNet,
    /// Protocol.
    pub proto: Proto,
    /// Destination port.
    pub port: u16,
}

/// Bandwidth limits in bits per second, each direction optional.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bandwidth {
    /// Traffic sent to the ISC (host veth egress).
    pub to_isc: Option<u64>,
    /// Traffic sent by the ISC (host veth ingress, policed).
    pub from_isc: Option<u64>,
}

/// What the engine asks for when it starts an ISC with a `[network]` section.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IscNetRequest {
    /// Stable ISC id, `[A-Za-z0-9_-]{1,64}`; names the chains, sets and the host interface.
    pub id: String,
    /// Human name (manifest `name`).
    pub name: String,
    /// Listen ports.
    pub listen: Vec<Listen>,
    /// Published ports.
    pub publish: Vec<Publish>,
    /// Egress allowlist.
    pub egress: Vec<EgressSpec>,
    /// Addresses of the peer ISCs allowed in (resolved by the caller from `allow_from` names).
    pub allow_from: Vec<IpAddr>,
    /// Bandwidth limits.
    pub bandwidth: Bandwidth,
}

/// The resolved per-ISC policy the firewall is built from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IscNetPolicy {
    /// ISC id.
    pub id: String,
    /// Human name.
    pub name: String,
    /// Host-side interface.
    pub if_host: String,
    /// The ISC's IPv4 address.
    pub addr_v4: Ipv4Addr,
    /// The ISC's IPv6 address.
    pub addr_v6: Ipv6Addr,
    /// Listen ports.
    pub listen: Vec<Listen>,
    /// Published ports.
    pub publish: Vec<Publish>,
    /// Resolved egress rules.
    pub egress: Vec<EgressRule>,
    /// Peer ISC addresses allowed to reach the listen ports.
    pub allow_from: Vec<IpAddr>,
}

/// Check an ISC id is usable in chain, set and interface names.
pub fn validate_id(id: &str) -> Result<(), PolicyError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(PolicyError::BadId { id: id.to_string() })
    }
}

/// The current answer for one egress host name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostAnswer {
    /// The name as declared.
    pub host: String,
    /// Its addresses and clamped TTL.
    pub answer: Answer,
}

/// Resolve the egress declaration with the host's resolver ([`Resolver::system`], read only
/// if a host name is declared).
pub fn resolve_egress(specs: &[EgressSpec]) -> Result<Vec<EgressRule>, PolicyError> {
    let needs = specs.iter().any(|s| matches!(s.target, EgressTarget::Host(_)));
    let resolver = if needs {
        Some(Resolver::system().map_err(|e| PolicyError::Resolver { source: Box::new(e) })?)
    } else {
        None
    };
    Ok(resolve_egress_with(specs, resolver.as_ref())?.0)
}

/// Resolve the egress declaration: CIDRs as they are, each host name once through `resolver`
/// (A and AAAA, with TTL, see [`crate::dns`]). Returns the rules and the answers per name, which
/// the refresher ([`crate::refresh`]) starts from. A name that does not resolve fails the
/// whole declaration: an ISC does not start with part of its egress missing.
pub fn resolve_egress_with(
    specs: &[EgressSpec],
    resolver: Option<&Resolver>,
) -> Result<(Vec<EgressRule>, Vec<HostAnswer>), PolicyError> {
    let mut answers: Vec<HostAnswer> = Vec::new();
    let never = AtomicBool::new(false);
    for spec in specs {
        if spec.port == 0 {
            return Err(PolicyError::ZeroPort { what: "egress" });
        }
        let EgressTarget::Host(host) = &spec.target else { continue };
        if answers.iter().any(|a| &a.host == host) {
            continue;
        }
        let fail =
            |e| PolicyError::Resolve { host: host.clone(), port: spec.port, source: Box::new(e) };
        let resolver = resolver.ok_or_else(|| {
            fail(DnsError::NoAddress { name: format!("{host} (no resolver given)") })
        })?;
        let answer = resolver.lookup(host, &never).map_err(fail)?;
        answers.push(HostAnswer { host: host.clone(), answer });
    }
    Ok((egress_rules_from(specs, &answers), answers))
}

/// The rules of a declaration given the current answer of each host name (a name without an
/// answer contributes nothing). Sorted, without duplicates.
pub fn egress_rules_from(specs: &[EgressSpec], answers: &[HostAnswer]) -> Vec<EgressRule> {
    let mut rules = Vec::new();
    for spec in specs {
        let (proto, port) = (spec.proto, spec.port);
        match &spec.target {
            EgressTarget::Net(net) => rules.push(EgressRule { net: net.trunc(), proto, port }),
            EgressTarget::Host(host) => {
                let addrs =
                    answers.iter().filter(|a| &a.host == host).flat_map(|a| &a.answer.addrs);
                rules.extend(addrs.map(|ip| EgressRule { net: IpNet::from(*ip), proto, port }));
            }
        }
    }
    rules.sort();
    rules.dedup();
    rules
}

/// Parse a tc-style rate: `10mbit`, `512kbit`, `1gbit`, `800bit`, `2mbps` (bytes), `1000000`
/// (bits). Units are decimal, as in tc(8).
pub fn parse_rate(value: &str) -> Result<u64, PolicyError> {
    let bad = || PolicyError::BadRate { value: value.to_string() };
    let v = value.trim().to_ascii_lowercase();
    let split = v.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let num: f64 = num.parse().map_err(|_| bad())?;
    let mult: f64 = match unit {
        "" | "bit" => 1.0,
        "kbit" => 1e3,
        "mbit" => 1e6,
        "gbit" => 1e9,
        "bps" => 8.0,
        "kbps" => 8e3,
        "mbps" => 8e6,
        "gbps" => 8e9,
        _ => return Err(bad()),
    };
    let bits = num * mult;
    if !(1.0..1e13).contains(&bits) {
        return Err(bad());
    }
    Ok(bits as u64)
}

/// TCP ports for Landlock (ABI ≥ 4) inside the ISC: the second, independent layer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LandlockPorts {
    /// Ports the ISC may `connect(2)` to over TCP.
    pub connect_tcp: Vec<u16>,
    /// Ports the ISC may `bind(2)` over TCP.
    pub bind_tcp: Vec<u16>,
}

/// Derive the Landlock TCP rules from a declaration. `peer_listen_tcp` are the TCP listen ports
/// of the peer ISCs that allow this one in (Landlock filters by port only, not by address).
pub fn landlock_ports(req: &IscNetRequest, peer_listen_tcp: &[u16]) -> LandlockPorts {
    let mut connect: Vec<u16> = req
        .egress
        .iter()
        .filter(|e| e.proto == Proto::Tcp)
        .map(|e| e.port)
        .chain(peer_listen_tcp.iter().copied())
        .collect();
    let mut bind: Vec<u16> =
        req.listen.iter().filter(|l| l.proto == Proto::Tcp).map(|l| l.port).collect();
    connect.sort_unstable();
    connect.dedup();
    bind.sort_unstable();
    bind.dedup();
    LandlockPorts { connect_tcp: connect, bind_tcp: bind }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_like_tc() {
        assert_eq!(parse_rate("10mbit").unwrap(), 10_000_000);
        assert_eq!(parse_rate("512kbit").unwrap(), 512_000);
        assert_eq!(parse_rate("1gbit").unwrap(), 1_000_000_000);
        assert_eq!(parse_rate("2mbps").unwrap(), 16_000_000);
        assert_eq!(parse_rate("8000").unwrap(), 8000);
        assert_eq!(parse_rate(" 1.5Mbit ").unwrap(), 1_500_000);
        for bad in ["", "fast", "10 parsecs", "0mbit", "-1mbit", "10mbitx"] {
            assert!(parse_rate(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn ids_are_checked() {
        assert!(validate_id("web-1_a").is_ok());
        for bad in ["", "a b", "x/y", "é", &"a".repeat(65)] {
            assert!(validate_id(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn egress_resolves_cidrs_and_names() {
        let specs = vec![
            EgressSpec {
                target: EgressTarget::Net("192.0.2.7/24".parse().unwrap()),
                proto: Proto::Tcp,
                port: 5432,
            },
            EgressSpec {
                target: EgressTarget::Host("localhost".into()),
                proto: Proto::Udp,
                port: 53,
            },
        ];
        let rules = resolve_egress(&specs).unwrap();
        assert!(rules.contains(&EgressRule {
            net: "192.0.2.0/24".parse().unwrap(),
            proto: Proto::Tcp,
            port: 5432
        }));
        assert!(rules.iter().any(|r| r.port == 53 && r.net.addr().is_loopback()));
        let zero = vec![EgressSpec {
            target: EgressTarget::Net("192.0.2.1/32".parse().unwrap()),
            proto: Proto::Tcp,
            port: 0,
        }];
        assert!(resolve_egress(&zero).is_err());
        let bogus = vec![EgressSpec {
            target: EgressTarget::Host("no-such-host.invalid".into()),
            proto: Proto::Tcp,
            port: 1,
        }];
        assert!(resolve_egress(&bogus).is_err());
    }

    #[test]
    fn landlock_ports_follow_the_declaration() {
        let req = IscNetRequest {
            id: "a".into(),
            listen: vec![
                Listen { proto: Proto::Tcp, port: 8080 },
                Listen { proto: Proto::Udp, port: 53 },
            ],
            egress: vec![
                EgressSpec {
                    target: EgressTarget::Net("192.0.2.1/32".parse().unwrap()),
                    proto: Proto::Tcp,
                    port: 5432,
                },
                EgressSpec {
                    target: EgressTarget::Net("192.0.2.2/32".parse().unwrap()),
                    proto: Proto::Udp,
                    port: 53,
                },
            ],
            ..Default::default()
        };
        let lp = landlock_ports(&req, &[9000, 5432]);
        assert_eq!(lp.bind_tcp, vec![8080]);
        assert_eq!(lp.connect_tcp, vec![5432, 9000]);
    }
}
