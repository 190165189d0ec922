//! A small stub resolver that reports TTLs, for egress host names (P4).
//!
//! getaddrinfo(3) does not say how long an answer is valid, and an egress rule built from a
//! name must follow the name when it moves. So isc asks the resolvers of the host's
//! `/etc/resolv.conf` itself: A and AAAA over UDP, one question per datagram, from a
//! connected socket on a random port with a random id (RFC 5452), and keeps the smallest TTL
//! of the records (CNAMEs included), clamped to [`MIN_TTL`] ..= [`MAX_TTL`].
//!
//! Names are taken as fully qualified: no `search` list, no `ndots` (a policy must not depend
//! on the host's search domains). `/etc/hosts` is read first, as with the usual
//! `hosts: files dns`; its entries and IP literals are refreshed every [`MAX_TTL`]. Names under
//! `.invalid` (RFC 6761 §6.4) never resolve and are never sent.
//!
//! `ISC_RESOLV_CONF` names another resolver configuration (tests, and operators who want
//! isc's egress names resolved by a dedicated resolver).

pub mod wire;

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use wire::{WireError, TYPE_A, TYPE_AAAA};

/// An answer is re-resolved no sooner than this after it was fetched: a TTL of 0 or 1 s would
/// otherwise turn the refresher into a query loop (and nft transactions) per ISC.
pub const MIN_TTL: Duration = Duration::from_secs(5);
/// An answer is re-resolved no later than this, whatever its TTL (hosts-file entries too).
pub const MAX_TTL: Duration = Duration::from_secs(3600);
/// Environment variable naming the resolver configuration to use instead of
/// `/etc/resolv.conf`.
pub const RESOLV_CONF_ENV: &str = "ISC_RESOLV_CONF";
/// How long one attempt waits for an answer at most, whatever `options timeout:` says
/// (resolv.conf(5) defaults to 5 s; an egress refresh is not worth waiting longer for).
const MAX_TIMEOUT: Duration = Duration::from_secs(3);
/// resolv.conf(5): at most 3 `nameserver` lines are used.
const MAXNS: usize = 3;
/// How often a wait for an answer looks at the cancel flag.
const CANCEL_POLL: Duration = Duration::from_millis(100);

/// Errors of a lookup.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("cannot read the resolver configuration {path}: {source}")]
    Config { path: PathBuf, source: std::io::Error },
    #[error("{name}: {source}")]
    Answer { name: String, source: WireError },
    #[error("{name}: no answer from {servers:?} ({last}); check the nameserver lines of {conf}")]
    NoServer { name: String, servers: Vec<SocketAddr>, conf: PathBuf, last: String },
    #[error("{name} has no A or AAAA record")]
    NoAddress { name: String },
    #[error("{name} is under .invalid (RFC 6761) and never resolves")]
    Invalid { name: String },
    #[error("{name}: asking {server}: {source}")]
    Socket { name: String, server: SocketAddr, source: std::io::Error },
    #[error("lookup of {name} cancelled")]
    Cancelled { name: String },
}

/// What a name resolved to and until when the answer may be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// Addresses, sorted, without duplicates.
    pub addrs: Vec<IpAddr>,
    /// The clamped TTL.
    pub ttl: Duration,
}

/// The resolver configuration: the files and the servers of `resolv.conf`.
#[derive(Debug, Clone)]
pub struct Resolver {
    /// The resolv.conf in use.
    pub conf: PathBuf,
    /// The hosts file read before DNS.
    pub hosts: PathBuf,
    /// Nameservers (port 53).
    pub servers: Vec<SocketAddr>,
    /// Wait per attempt.
    pub timeout: Duration,
    /// Rounds over all servers.
    pub attempts: u32,
}

impl Resolver {
    /// The host's resolver: `$ISC_RESOLV_CONF` or `/etc/resolv.conf`, and `/etc/hosts`.
    pub fn system() -> Result<Resolver, DnsError> {
        let conf = std::env::var_os(RESOLV_CONF_ENV)
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/etc/resolv.conf"));
        Resolver::from_files(&conf, Path::new("/etc/hosts"))
    }

    /// The resolver of `conf` (resolv.conf(5) syntax: `nameserver`, `options timeout: attempts:`)
    /// with hosts file `hosts`. No `nameserver` line means the local server, as in glibc.
    pub fn from_files(conf: &Path, hosts: &Path) -> Result<Resolver, DnsError> {
        let text = std::fs::read_to_string(conf)
            .map_err(|source| DnsError::Config { path: conf.to_owned(), source })?;
        let mut r = Resolver {
            conf: conf.to_owned(),
            hosts: hosts.to_owned(),
            servers: vec![],
            timeout: MAX_TIMEOUT,
            attempts: 2,
        };
        for line in text.lines() {
            let mut words = line.split_whitespace();
            match words.next() {
                Some("nameserver") => {
                    // A scoped (fe80::1%eth0) server is skipped: not parseable as an address.
                    if let Some(ip) = words.next().and_then(|w| w.parse::<IpAddr>().ok()) {
                        if r.servers.len() < MAXNS {
                            r.servers.push(SocketAddr::new(ip, 53));
                        }
                    }
                }
                Some("options") => {
                    for opt in words {
                        if let Some(v) = opt.strip_prefix("timeout:").and_then(|v| v.parse().ok()) {
                            r.timeout = Duration::from_secs(v).clamp(CANCEL_POLL, MAX_TIMEOUT);
                        } else if let Some(v) =
                            opt.strip_prefix("attempts:").and_then(|v| v.parse::<u32>().ok())
                        {
                            r.attempts = v.clamp(1, 5);
                        }
                    }
                }
                _ => {}
            }
        }
        if r.servers.is_empty() {
            r.servers.push(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 53));
        }
        Ok(r)
    }

    /// Resolve `name` to its A and AAAA addresses and their TTL. `cancel` set ends a wait
    /// early (the refresher's stop).
    pub fn lookup(&self, name: &str, cancel: &AtomicBool) -> Result<Answer, DnsError> {
        if let Ok(ip) = name.parse::<IpAddr>() {
            return Ok(Answer { addrs: vec![ip], ttl: MAX_TTL });
        }
        let lower = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
        if lower == "invalid" || lower.ends_with(".invalid") {
            return Err(DnsError::Invalid { name: name.to_string() });
        }
        let from_hosts = hosts_lookup(&self.hosts, &lower);
        if !from_hosts.is_empty() {
            return Ok(Answer { addrs: from_hosts, ttl: MAX_TTL });
        }
        let mut last = String::from("no attempt");
        for _ in 0..self.attempts {
            for server in &self.servers {
                match self.ask_both(*server, &lower, cancel) {
                    Ok(a) => return Ok(a),
                    // Authoritative answers: another server would say the same.
                    Err(e @ (DnsError::NoAddress { .. } | DnsError::Cancelled { .. })) => {
                        return Err(e)
                    }
                    Err(e @ DnsError::Answer { source: WireError::NxDomain, .. }) => return Err(e),
                    Err(e) => last = format!("{server}: {e}"),
                }
            }
        }
        Err(DnsError::NoServer {
            name: name.to_string(),
            servers: self.servers.clone(),
            conf: self.conf.clone(),
            last,
        })
    }

    fn ask_both(
        &self,
        server: SocketAddr,
        name: &str,
        cancel: &AtomicBool,
    ) -> Result<Answer, DnsError> {
        let a = self.ask(server, name, TYPE_A, cancel)?;
        let aaaa = self.ask(server, name, TYPE_AAAA, cancel)?;
        let ttl = match (a.ttl, aaaa.ttl) {
            (None, None) => return Err(DnsError::NoAddress { name: name.to_string() }),
            (Some(t), None) | (None, Some(t)) => t,
            (Some(x), Some(y)) => x.min(y),
        };
        let mut addrs: Vec<IpAddr> = a.addrs.into_iter().chain(aaaa.addrs).collect();
        addrs.sort();
        addrs.dedup();
        Ok(Answer { addrs, ttl: Duration::from_secs(u64::from(ttl)).clamp(MIN_TTL, MAX_TTL) })
    }

    /// One question to one server. The socket is connected, so only the server's datagrams
    /// arrive; one with another id or question is ignored (a late or forged answer) and the
    /// wait goes on.
    fn ask(
        &self,
        server: SocketAddr,
        name: &str,
        qtype: u16,
        cancel: &AtomicBool,
    ) -> Result<wire::Records, DnsError> {
        let io = |source| DnsError::Socket { name: name.to_string(), server, source };
        let wire = |source| DnsError::Answer { name: name.to_string(), source };
        let id = random_id();
        let q = wire::query(id, name, qtype).map_err(wire)?;
        let local: SocketAddr = match server {
            SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let sock = UdpSocket::bind(local).map_err(io)?;
        sock.connect(server).map_err(io)?;
        sock.send(&q).map_err(io)?;
        let deadline = Instant::now() + self.timeout;
        let mut buf = [0u8; 1500];
        loop {
            if cancel.load(Ordering::Relaxed) {
                return Err(DnsError::Cancelled { name: name.to_string() });
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io(std::io::ErrorKind::TimedOut.into()));
            }
            sock.set_read_timeout(Some(left.min(CANCEL_POLL))).map_err(io)?;
            match sock.recv(&mut buf) {
                Ok(n) => match wire::parse_answer(&buf[..n], id, name, qtype) {
                    Err(WireError::Mismatch) => continue,
                    r => return r.map_err(wire),
                },
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    continue
                }
                Err(e) => return Err(io(e)),
            }
        }
    }
}

/// A query id from getrandom(2): unpredictable ids are half of RFC 5452's defence.
fn random_id() -> u16 {
    let mut b = [0u8; 2];
    // SAFETY: getrandom(2) writes at most 2 bytes into the 2-byte buffer we own.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), 2, 0) };
    if n != 2 {
        // The source port (random, from the kernel) still protects the query.
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
        return t.map(|d| d.subsec_nanos() as u16).unwrap_or(0x5a5a);
    }
    u16::from_ne_bytes(b)
}

/// The addresses `hosts` lists for `name` (lower case), sorted.
fn hosts_lookup(hosts: &Path, name: &str) -> Vec<IpAddr> {
    let Ok(text) = std::fs::read_to_string(hosts) else { return vec![] };
    let mut out: Vec<IpAddr> = text
        .lines()
        .map(|l| l.split('#').next().unwrap_or(""))
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let ip = w.next()?.parse::<IpAddr>().ok()?;
            w.any(|n| n.eq_ignore_ascii_case(name)).then_some(ip)
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_and_hosts_are_read_like_glibc() {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("resolv.conf");
        let hosts = dir.path().join("hosts");
        std::fs::write(
            &conf,
            "# x\nsearch example.test\nnameserver 192.0.2.53\nnameserver fe80::1%eth0\nnameserver 2001:db8::53\noptions timeout:1 attempts:3\n",
        )
        .unwrap();
        std::fs::write(&hosts, "127.0.0.1 localhost\n192.0.2.7 Db.Local db # comment\n").unwrap();
        let r = Resolver::from_files(&conf, &hosts).unwrap();
        let want: Vec<SocketAddr> =
            vec!["192.0.2.53:53".parse().unwrap(), "[2001:db8::53]:53".parse().unwrap()];
        assert_eq!(r.servers, want);
        assert_eq!((r.timeout, r.attempts), (Duration::from_secs(1), 3));
        let never = AtomicBool::new(false);
        let a = r.lookup("db.local.", &never).unwrap();
        assert_eq!(a, Answer { addrs: vec!["192.0.2.7".parse().unwrap()], ttl: MAX_TTL });
        assert!(matches!(r.lookup("x.invalid", &never), Err(DnsError::Invalid { .. })));
        assert_eq!(
            r.lookup("192.0.2.8", &never).unwrap().addrs,
            vec!["192.0.2.8".parse::<IpAddr>().unwrap()]
        );
        std::fs::write(&conf, "").unwrap();
        let r = Resolver::from_files(&conf, &hosts).unwrap();
        assert_eq!(r.servers, vec!["127.0.0.1:53".parse::<SocketAddr>().unwrap()]);
    }

    /// A server on loopback answering A with `ttl` and AAAA with nothing: the TTL is clamped
    /// and a forged answer with a wrong id is ignored.
    #[test]
    fn lookups_clamp_ttls_and_ignore_forged_answers() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = server.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while let Ok((n, from)) = server.recv_from(&mut buf) {
                let q = &buf[..n];
                let qtype = u16::from_be_bytes([q[n - 4], q[n - 3]]);
                let mut forged = q.to_vec();
                forged[0] ^= 0xff;
                forged[2] |= 0x80;
                let _ = server.send_to(&forged, from);
                let mut m = q.to_vec();
                m[2] |= 0x80;
                if qtype == TYPE_A {
                    m[7] = 1;
                    m.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 1, 0, 4, 192, 0, 2, 44]);
                }
                let _ = server.send_to(&m, from);
            }
        });
        let r = Resolver {
            conf: PathBuf::from("test"),
            hosts: PathBuf::from("/nonexistent"),
            servers: vec![SocketAddr::from(([127, 0, 0, 1], port))],
            timeout: Duration::from_secs(2),
            attempts: 1,
        };
        let a = r.lookup("svc.test", &AtomicBool::new(false)).unwrap();
        assert_eq!(a, Answer { addrs: vec!["192.0.2.44".parse().unwrap()], ttl: MIN_TTL });
        let cancelled = AtomicBool::new(true);
        assert!(matches!(r.lookup("svc.test", &cancelled), Err(DnsError::Cancelled { .. })));
    }
}
