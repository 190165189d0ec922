//! The string forms of `[network]` values: egress rules and `publish` addresses.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::error::Problem;
use crate::rules;
use crate::types::{EgressRule, Proto, Publish};

fn port(text: &str, whole: &str) -> Result<u16, Problem> {
    match text.parse::<u32>() {
        Ok(p) if (1..=65535).contains(&p) => Ok(p as u16),
        _ => Err(Problem::invalid(
            format!("expected a port 1-65535 in {whole:?}, got {text:?}"),
            "write a port number between 1 and 65535",
        )),
    }
}

fn egress_syntax(text: &str) -> Problem {
    Problem::invalid(
        format!("expected an egress rule like \"192.0.2.10/32:5432\", \"[2001:db8::/64]:443\" or \"db.internal:5432\", got {text:?}"),
        "write [udp:]CIDR[:PORT], [udp:][IPV6-CIDR]:PORT or [udp:]HOST:PORT",
    )
}

fn checked_net(net: IpNet, text: &str) -> Result<IpNet, Problem> {
    if net.trunc() != net {
        return Err(Problem::invalid(
            format!("{text:?}: {net} has host bits set"),
            format!("write the network address {}", net.trunc()),
        ));
    }
    Ok(net)
}

fn net_of(addr_or_net: &str) -> Option<IpNet> {
    addr_or_net
        .parse::<IpNet>()
        .ok()
        .or_else(|| addr_or_net.parse::<IpAddr>().ok().map(IpNet::from))
}

/// Parses one `network.egress` string.
pub fn parse_egress(text: &str) -> Result<EgressRule, Problem> {
    let (proto, rest) = if let Some(r) = text.strip_prefix("udp:") {
        (Proto::Udp, r)
    } else if let Some(r) = text.strip_prefix("tcp:") {
        (Proto::Tcp, r)
    } else {
        (Proto::Tcp, text)
    };
    if let Some(inner_and_tail) = rest.strip_prefix('[') {
        // Bracketed IPv6 network, as in URLs: "[2001:db8::/64]:443".
        let (inner, tail) = inner_and_tail.split_once(']').ok_or_else(|| egress_syntax(text))?;
        let net = match net_of(inner) {
            Some(net @ IpNet::V6(_)) => checked_net(net, text)?,
            _ => return Err(egress_syntax(text)),
        };
        let port = match tail {
            "" => None,
            t => Some(port(t.strip_prefix(':').ok_or_else(|| egress_syntax(text))?, text)?),
        };
        return Ok(EgressRule::Cidr { net, port, proto });
    }
    if let Some(net) = net_of(rest) {
        return Ok(EgressRule::Cidr { net: checked_net(net, text)?, port: None, proto });
    }
    let Some((left, right)) = rest.rsplit_once(':') else {
        if rules::dns_name(rest).is_ok() {
            return Err(Problem::invalid(
                format!("egress to host name {rest:?} needs a port"),
                format!("write \"{rest}:PORT\", e.g. \"{rest}:443\""),
            ));
        }
        return Err(egress_syntax(text));
    };
    if left.contains(':') {
        return Err(Problem::invalid(
            format!("{text:?}: an IPv6 destination with a port must be bracketed"),
            "write it as \"[2001:db8::/64]:443\"",
        ));
    }
    let port = port(right, text)?;
    if let Some(net) = net_of(left) {
        return Ok(EgressRule::Cidr { net: checked_net(net, text)?, port: Some(port), proto });
    }
    if left.chars().all(|c| c.is_ascii_digit() || c == '.' || c == '/') {
        // Looks numeric but is not an address: do not silently treat it as a DNS name.
        return Err(egress_syntax(text));
    }
    rules::dns_name(left)?;
    Ok(EgressRule::Host { host: left.to_string(), port, proto })
}

/// Parses the string form of `publish`: `"127.0.0.1:18080"`, `"[::1]:18080"` or `"18080"`.
pub fn parse_publish(text: &str) -> Result<Publish, Problem> {
    let bad = || {
        Problem::invalid(
            format!("expected a host port like 18080 or \"127.0.0.1:18080\", got {text:?}"),
            "write PORT, \"IPV4:PORT\" or \"[IPV6]:PORT\"",
        )
    };
    if text.chars().all(|c| c.is_ascii_digit()) {
        return Ok(Publish { host_addr: None, port: port(text, text)? });
    }
    let (addr, p) = if let Some(rest) = text.strip_prefix('[') {
        let (a, tail) = rest.split_once(']').ok_or_else(bad)?;
        (a, tail.strip_prefix(':').ok_or_else(bad)?)
    } else {
        let (a, p) = text.rsplit_once(':').ok_or_else(bad)?;
        if a.contains(':') {
            return Err(bad());
        }
        (a, p)
    };
    let host_addr: IpAddr = addr.parse().map_err(|_| bad())?;
    Ok(Publish { host_addr: Some(host_addr), port: port(p, text)? })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(net: &str, port: Option<u16>, proto: Proto) -> EgressRule {
        EgressRule::Cidr { net: net.parse().unwrap(), port, proto }
    }

    #[test]
    fn egress_forms() {
        assert_eq!(
            parse_egress("192.0.2.10/32:5432").unwrap(),
            cidr("192.0.2.10/32", Some(5432), Proto::Tcp)
        );
        assert_eq!(
            parse_egress("192.0.2.10:5432").unwrap(),
            cidr("192.0.2.10/32", Some(5432), Proto::Tcp)
        );
        assert_eq!(
            parse_egress("[2001:db8::/64]:443").unwrap(),
            cidr("2001:db8::/64", Some(443), Proto::Tcp)
        );
        assert_eq!(parse_egress("2001:db8::/64").unwrap(), cidr("2001:db8::/64", None, Proto::Tcp));
        assert_eq!(parse_egress("udp:10.0.0.0/8").unwrap(), cidr("10.0.0.0/8", None, Proto::Udp));
        assert_eq!(
            parse_egress("udp:[2001:db8::1]:53").unwrap(),
            cidr("2001:db8::1/128", Some(53), Proto::Udp)
        );
        assert_eq!(
            parse_egress("db.internal:5432").unwrap(),
            EgressRule::Host { host: "db.internal".into(), port: 5432, proto: Proto::Tcp }
        );
    }

    #[test]
    fn egress_errors() {
        assert!(parse_egress("192.0.2.10/24").unwrap_err().fix.contains("192.0.2.0/24"));
        assert!(parse_egress("db.internal").unwrap_err().message.contains("needs a port"));
        assert!(parse_egress("2001:db8::1:443:x").is_err());
        assert!(parse_egress("db.internal:0").unwrap_err().message.contains("1-65535"));
        assert!(parse_egress("db.internal:70000").is_err());
        assert!(parse_egress("300.1.1.1:80").is_err());
        assert!(parse_egress("[10.0.0.0/8]:80").is_err());
        assert!(parse_egress("bad_host:80").is_err());
        assert!(parse_egress("").is_err());
    }

    #[test]
    fn egress_display_round_trips() {
        for s in [
            "192.0.2.10/32:5432",
            "[2001:db8::/64]:443",
            "2001:db8::/64",
            "udp:10.0.0.0/8",
            "db.internal:5432",
            "udp:ns.example:53",
        ] {
            assert_eq!(parse_egress(s).unwrap().to_string(), s);
        }
    }

    #[test]
    fn publish_forms() {
        assert_eq!(parse_publish("18080").unwrap().host_addr, None);
        let p = parse_publish("127.0.0.1:18080").unwrap();
        assert_eq!((p.host_addr.unwrap().to_string(), p.port), ("127.0.0.1".into(), 18080));
        let p = parse_publish("[::1]:80").unwrap();
        assert_eq!(p.to_string(), "[::1]:80");
        assert!(parse_publish("localhost:80").is_err());
        assert!(parse_publish("::1:80").is_err());
        assert!(parse_publish("127.0.0.1:0").is_err());
    }
}
