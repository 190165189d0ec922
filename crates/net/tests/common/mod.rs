//! Test harness: every test re-executes itself under `unshare --net --mount` (`isc_testkit`),
//! so the "host" is a fresh network namespace; ISCs and the "outside" are further namespaces
//! held by `unshare --net sleep` children. Nothing here can touch the machine's real network
//! namespace. Here: this suite's traffic helpers on those namespaces.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::Command;
use std::time::Duration;

use isc_net::link::Rtnl;
use isc_testkit::HeldNetns;

pub use isc_testkit::in_private_netns;

/// A held namespace (`isc_testkit::HeldNetns`) with this suite's traffic helpers.
pub struct Netns(pub HeldNetns);

impl std::ops::Deref for Netns {
    type Target = HeldNetns;
    fn deref(&self) -> &HeldNetns {
        &self.0
    }
}

impl Netns {
    pub fn new() -> Netns {
        Netns(HeldNetns::new())
    }

    /// Start a TCP server (answers "ok\n" then closes) on `addr` inside this namespace.
    pub fn tcp_server(&self, addr: SocketAddr) {
        let l = self.run(move || Ok(TcpListener::bind(addr).unwrap()));
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                let mut s = s;
                let _ = s.write_all(b"ok\n");
            }
        });
    }

    /// Start a UDP echo server on `addr` inside this namespace.
    pub fn udp_echo(&self, addr: SocketAddr) {
        let s = self.run(move || Ok(UdpSocket::bind(addr).unwrap()));
        std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while let Ok((n, from)) = s.recv_from(&mut buf) {
                let _ = s.send_to(&buf[..n], from);
            }
        });
    }

    /// Try a TCP connection from inside this namespace (optionally from `bind`); true if the
    /// server's greeting arrived.
    pub fn tcp_ok(&self, to: SocketAddr, bind: Option<IpAddr>) -> bool {
        self.run(move || Ok(tcp_ok_here(to, bind)))
    }

    /// Like `tcp_ok`, but retried: the first packets of a flow may wait for neighbour
    /// discovery on a fresh link, so expected successes get three attempts.
    pub fn tcp_reach(&self, to: SocketAddr, bind: Option<IpAddr>) -> bool {
        (0..3).any(|_| self.tcp_ok(to, bind))
    }

    /// Retried `udp_ok`, for expected successes.
    pub fn udp_reach(&self, to: SocketAddr) -> bool {
        (0..3).any(|_| self.udp_ok(to))
    }

    /// Send a UDP datagram from inside this namespace; true if an answer came back.
    pub fn udp_ok(&self, to: SocketAddr) -> bool {
        self.run(move || Ok(udp_ok_here(to)))
    }

    /// Run an `ip` command inside this namespace (test fixtures only).
    pub fn ip(&self, args: &[&str]) {
        let ns = format!("--net=/proc/{}/ns/net", self.pid());
        let st = Command::new("nsenter").arg(ns).arg("--").arg("ip").args(args).status().unwrap();
        assert!(st.success(), "ip {args:?} failed");
    }
}

pub fn tcp_ok_here(to: SocketAddr, _unused: Option<IpAddr>) -> bool {
    let stream = TcpStream::connect_timeout(&to, Duration::from_millis(400));
    let Ok(mut s) = stream else { return false };
    s.set_read_timeout(Some(Duration::from_millis(400))).unwrap();
    let mut buf = [0u8; 3];
    s.read_exact(&mut buf).is_ok() && &buf == b"ok\n"
}

pub fn tcp_reach_here(to: SocketAddr, bind: Option<IpAddr>) -> bool {
    (0..3).any(|_| tcp_ok_here(to, bind))
}

pub fn udp_ok_here(to: SocketAddr) -> bool {
    let any: SocketAddr =
        if to.is_ipv4() { "0.0.0.0:0".parse().unwrap() } else { "[::]:0".parse().unwrap() };
    let s = UdpSocket::bind(any).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    // A DNS-shaped query (id 0x1234, one question for "a."), so a resolver would answer.
    let q = [0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, b'a', 0, 0, 1, 0, 1];
    let _ = s.send_to(&q, to);
    let mut buf = [0u8; 64];
    matches!(s.recv_from(&mut buf), Ok((n, _)) if n == q.len())
}

/// An "outside" network: a namespace behind a veth `up-isc0` (host 192.0.2.1/24,
/// 2001:db8::1/64; outside .2 / ::2), with a default route back to the host.
pub fn outside() -> Netns {
    let ns = Netns::new();
    let mut r = Rtnl::open().unwrap();
    r.create_veth("up-isc0", "eth0", &ns.file).unwrap();
    r.add_address("up-isc0", "192.0.2.1".parse().unwrap(), 24).unwrap();
    r.add_address("up-isc0", "2001:db8::1".parse().unwrap(), 64).unwrap();
    r.set_up("up-isc0").unwrap();
    ns.run(|| {
        let mut r = Rtnl::open()?;
        r.add_address("eth0", "192.0.2.2".parse().unwrap(), 24)?;
        r.add_address("eth0", "2001:db8::2".parse().unwrap(), 64)?;
        r.set_up("eth0")?;
        r.add_default_route("eth0", "192.0.2.1".parse().unwrap())?;
        r.add_default_route("eth0", "2001:db8::1".parse().unwrap())
    });
    ns
}

pub fn cfg(dir: &std::path::Path) -> isc_net::NetConfig {
    isc_net::NetConfig { state_dir: dir.to_path_buf(), ..Default::default() }
}

pub fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// Text of the isc table (tests only; the library never reads nft output).
pub fn nft_table() -> String {
    let out = Command::new("nft").args(["list", "table", "inet", "isc"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Netns {
    /// Start a TCP server in the current (host) namespace.
    pub fn tcp_server_here(addr: SocketAddr) {
        let l = TcpListener::bind(addr).unwrap();
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                let mut s = s;
                let _ = s.write_all(b"ok\n");
            }
        });
    }
}
