//! veth links, addresses and routes through rtnetlink, used synchronously (netavark's pattern:
//! netlink-packet-route messages over a blocking netlink-sys socket, no async runtime).
//!
//! A netlink socket acts in the network namespace of the thread that created it (netlink(7)),
//! so the ISC side is configured from a short-lived thread that first `setns(2)`s into the
//! target namespace. Host-side calls act in the caller's current namespace.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsFd, AsRawFd};
use std::path::PathBuf;

use netlink_packet_core::{
    NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressMessage};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// Errors of link configuration.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("cannot open a NETLINK_ROUTE socket: {0}")]
    Socket(std::io::Error),
    #[error("netlink I/O failed while {what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("kernel refused to {what}: {source}")]
    Kernel { what: String, source: std::io::Error },
    #[error("cannot decode the kernel's netlink answer while {what}: {detail}")]
    Decode { what: String, detail: String },
    #[error("interface {name} does not exist")]
    NoSuchLink { name: String },
    #[error("cannot open the network namespace {path}: {source}; is the ISC process still alive?")]
    OpenNetns { path: PathBuf, source: std::io::Error },
    #[error("cannot enter the network namespace {path}: {source}")]
    Setns { path: PathBuf, source: nix::Error },
    #[error("the netns worker thread panicked")]
    Worker,
}

/// A blocking rtnetlink socket in the current thread's network namespace.
pub struct Rtnl {
    sock: Socket,
    seq: u32,
}

impl Rtnl {
    /// Open a socket in the calling thread's network namespace.
    pub fn open() -> Result<Self, LinkError> {
        let mut sock = Socket::new(NETLINK_ROUTE).map_err(LinkError::Socket)?;
        sock.bind_auto().map_err(LinkError::Socket)?;
        sock.connect(&SocketAddr::new(0, 0)).map_err(LinkError::Socket)?;
        Ok(Rtnl { sock, seq: 0 })
    }

    /// Send one request and collect the answers until the ACK (or DONE for dumps).
    fn request(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
        what: &str,
    ) -> Result<Vec<RouteNetlinkMessage>, LinkError> {
        self.seq = self.seq.wrapping_add(1);
        let mut nl = NetlinkMessage::from(msg);
        nl.header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        nl.header.sequence_number = self.seq;
        nl.finalize();
        let mut buf = vec![0u8; nl.buffer_len()];
        nl.serialize(&mut buf);
        let io = |source| LinkError::Io { what: what.to_string(), source };
        self.sock.send(&buf, 0).map_err(io)?;
        let mut out = Vec::new();
        loop {
            let (data, _) = self.sock.recv_from_full().map_err(io)?;
            let mut off = 0;
            while off < data.len() {
                let msg =
                    NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[off..]).map_err(
                        |e| LinkError::Decode { what: what.to_string(), detail: e.to_string() },
                    )?;
                let len = msg.header.length as usize;
                if len == 0 {
                    return Err(LinkError::Decode {
                        what: what.to_string(),
                        detail: "zero-length message".into(),
                    });
                }
                off += (len + 3) & !3;
                if msg.header.sequence_number != self.seq {
                    continue;
                }
                match msg.payload {
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(out),
                            Some(_) => {
                                Err(LinkError::Kernel { what: what.to_string(), source: e.to_io() })
                            }
                        };
                    }
                    NetlinkPayload::Done(_) => return Ok(out),
                    NetlinkPayload::InnerMessage(m) => out.push(m),
                    _ => {}
                }
            }
        }
    }

    /// Index of the interface `name`, if it exists.
    pub fn link_index(&mut self, name: &str) -> Result<Option<u32>, LinkError> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        match self.request(RouteNetlinkMessage::GetLink(msg), 0, &format!("look up link {name}")) {
            Ok(answers) => Ok(answers.into_iter().find_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(l.header.index),
                _ => None,
            })),
            Err(LinkError::Kernel { source, .. })
                if source.raw_os_error() == Some(libc::ENODEV) =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    fn require_index(&mut self, name: &str) -> Result<u32, LinkError> {
        self.link_index(name)?.ok_or_else(|| LinkError::NoSuchLink { name: name.to_string() })
    }

    /// Create veth `host` here with its peer named `peer` directly inside the namespace `netns`
    /// (IFLA_NET_NS_FD on the peer, as `ip link add … peer name eth0 netns …` does), so the ISC
    /// end never exists in the host namespace and needs no rename.
    pub fn create_veth(&mut self, host: &str, peer: &str, netns: &File) -> Result<(), LinkError> {
        let mut peer_msg = LinkMessage::default();
        peer_msg.attributes.push(LinkAttribute::IfName(peer.to_string()));
        peer_msg.attributes.push(LinkAttribute::NetNsFd(netns.as_fd().as_raw_fd()));
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(host.to_string()));
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer_msg))),
        ]));
        self.request(
            RouteNetlinkMessage::NewLink(msg),
            NLM_F_CREATE | NLM_F_EXCL,
            &format!("create veth {host}"),
        )?;
        Ok(())
    }

    /// Create an ifb device `name` here (kept down until [`Rtnl::set_up`]).
    pub fn create_ifb(&mut self, name: &str) -> Result<(), LinkError> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        msg.attributes.push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Ifb)]));
        self.request(
            RouteNetlinkMessage::NewLink(msg),
            NLM_F_CREATE | NLM_F_EXCL,
            &format!("create ifb {name}"),
        )?;
        Ok(())
    }

    /// Bring `name` up.
    pub fn set_up(&mut self, name: &str) -> Result<(), LinkError> {
        let index = self.require_index(name)?;
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.header.flags = LinkFlags::Up;
        msg.header.change_mask = LinkFlags::Up;
        self.request(RouteNetlinkMessage::SetLink(msg), 0, &format!("bring {name} up"))?;
        Ok(())
    }

    /// Delete `name`; returns whether it existed. Deleting one end of a veth deletes both.
    pub fn delete_link(&mut self, name: &str) -> Result<bool, LinkError> {
        let Some(index) = self.link_index(name)? else { return Ok(false) };
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        match self.request(RouteNetlinkMessage::DelLink(msg), 0, &format!("delete link {name}")) {
            Ok(_) => Ok(true),
            Err(LinkError::Kernel { source, .. })
                if source.raw_os_error() == Some(libc::ENODEV) =>
            {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Add `addr/prefix` to `name`. IPv6 addresses skip DAD (IFA_F_NODAD): the /127 has exactly
    /// two ends, both ours, and DAD would delay the ISC's network by a second or more.
    pub fn add_address(&mut self, name: &str, addr: IpAddr, prefix: u8) -> Result<(), LinkError> {
        let index = self.require_index(name)?;
        let mut msg = AddressMessage::default();
        msg.header.index = index;
        msg.header.prefix_len = prefix;
        msg.header.family = if addr.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 };
        msg.attributes.push(AddressAttribute::Address(addr));
        msg.attributes.push(AddressAttribute::Local(addr));
        if addr.is_ipv6() {
            msg.attributes.push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        let what = format!("add address {addr}/{prefix} to {name}");
        self.request(RouteNetlinkMessage::NewAddress(msg), NLM_F_CREATE | NLM_F_EXCL, &what)?;
        Ok(())
    }

    /// Add a default route via `gw` on `name`.
    pub fn add_default_route(&mut self, name: &str, gw: IpAddr) -> Result<(), LinkError> {
        let index = self.require_index(name)?;
        let mut msg = RouteMessage::default();
        msg.header.address_family =
            if gw.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 };
        msg.header.table = RouteHeader::RT_TABLE_MAIN;
        msg.header.protocol = RouteProtocol::Static;
        msg.header.scope = RouteScope::Universe;
        msg.header.kind = RouteType::Unicast;
        msg.attributes.push(RouteAttribute::Gateway(RouteAddress::from(gw)));
        msg.attributes.push(RouteAttribute::Oif(index));
        let what = format!("add default route via {gw} on {name}");
        self.request(RouteNetlinkMessage::NewRoute(msg), NLM_F_CREATE | NLM_F_EXCL, &what)?;
        Ok(())
    }

    /// Names of all links in this namespace (for leak checks and reconcile).
    pub fn link_names(&mut self) -> Result<Vec<String>, LinkError> {
        let answers = self.request(
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            netlink_packet_core::NLM_F_DUMP,
            "list links",
        )?;
        Ok(answers
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => l.attributes.into_iter().find_map(|a| match a {
                    LinkAttribute::IfName(n) => Some(n),
                    _ => None,
                }),
                _ => None,
            })
            .collect())
    }
}

/// Open the network namespace of process `pid` (`/proc/<pid>/ns/net`).
pub fn open_netns_of(pid: i32) -> Result<File, LinkError> {
    let path = PathBuf::from(format!("/proc/{pid}/ns/net"));
    File::open(&path).map_err(|source| LinkError::OpenNetns { path, source })
}

/// Run `f` on a fresh thread that has entered the network namespace `netns`. Only that thread
/// changes namespace; the caller's stays where it was.
pub fn in_netns<T: Send + 'static>(
    netns: &File,
    f: impl FnOnce() -> Result<T, LinkError> + Send + 'static,
) -> Result<T, LinkError> {
    let fd = netns
        .try_clone()
        .map_err(|source| LinkError::OpenNetns { path: "<netns fd>".into(), source })?;
    std::thread::spawn(move || {
        nix::sched::setns(fd.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|source| LinkError::Setns { path: "<netns fd>".into(), source })?;
        f()
    })
    .join()
    .map_err(|_| LinkError::Worker)?
}

/// The address plan of one veth pair.
#[derive(Debug, Clone)]
pub struct VethPlan {
    /// Host-side interface name.
    pub if_host: String,
    /// Host side IPv4 (/31).
    pub host_v4: Ipv4Addr,
    /// ISC side IPv4 (/31).
    pub isc_v4: Ipv4Addr,
    /// Host side IPv6 (/127).
    pub host_v6: Ipv6Addr,
    /// ISC side IPv6 (/127).
    pub isc_v6: Ipv6Addr,
}

/// Name of the ISC end.
pub const ISC_IFNAME: &str = "eth0";

/// Create the pair and configure the ISC end (inside `netns`): lo and eth0 up, /31 and /127,
/// default routes via the host end. The host end is created down and left unconfigured; see
/// [`configure_host_side`].
pub fn create_isc_side(plan: &VethPlan, netns: &File) -> Result<(), LinkError> {
    let mut rtnl = Rtnl::open()?;
    rtnl.create_veth(&plan.if_host, ISC_IFNAME, netns)?;
    let p = plan.clone();
    let res = in_netns(netns, move || {
        let mut r = Rtnl::open()?;
        r.set_up("lo")?;
        disable_dad(ISC_IFNAME)?;
        r.add_address(ISC_IFNAME, IpAddr::V4(p.isc_v4), 31)?;
        r.add_address(ISC_IFNAME, IpAddr::V6(p.isc_v6), 127)?;
        r.set_up(ISC_IFNAME)?;
        r.add_default_route(ISC_IFNAME, IpAddr::V4(p.host_v4))?;
        r.add_default_route(ISC_IFNAME, IpAddr::V6(p.host_v6))?;
        Ok(())
    });
    if res.is_err() {
        let _ = rtnl.delete_link(&plan.if_host);
    }
    res
}

/// Turn off IPv6 DAD on `ifname` in the calling thread's namespace (sysctl files under
/// /proc/sys/net follow the opener's namespace). Without it the link-local address stays
/// tentative for a second or more, and the kernel sends no neighbour solicitation for
/// *forwarded* packets until it is usable (ndisc_send_ns needs a non-tentative link-local
/// source), so ISC-to-ISC IPv6 would stall. Both ends of the pair are ours: DAD has nothing to
/// detect.
pub fn disable_dad(ifname: &str) -> Result<(), LinkError> {
    let path = PathBuf::from(format!("/proc/sys/net/ipv6/conf/{ifname}/accept_dad"));
    std::fs::write(&path, b"0")
        .map_err(|source| LinkError::Io { what: format!("write {}", path.display()), source })
}

/// Address the host end and bring it up. The kernel adds the connected routes for the /31 and
/// the /127 (so the ISC address is routed through this link) when the addresses are added.
pub fn configure_host_side(plan: &VethPlan) -> Result<(), LinkError> {
    disable_dad(&plan.if_host)?;
    let mut rtnl = Rtnl::open()?;
    rtnl.add_address(&plan.if_host, IpAddr::V4(plan.host_v4), 31)?;
    rtnl.add_address(&plan.if_host, IpAddr::V6(plan.host_v6), 127)?;
    rtnl.set_up(&plan.if_host)
}

/// Delete the host end (the ISC end goes with it) and its ifb device if any. Returns whether
/// the veth existed.
pub fn delete_host_side(if_host: &str) -> Result<bool, LinkError> {
    let mut rtnl = Rtnl::open()?;
    rtnl.delete_link(&crate::tc::ifb_name(if_host))?;
    rtnl.delete_link(if_host)
}

/// Create and bring up the ifb device that shapes traffic from the ISC behind `if_host`.
pub fn create_ifb_for(if_host: &str) -> Result<(), LinkError> {
    let name = crate::tc::ifb_name(if_host);
    let mut rtnl = Rtnl::open()?;
    rtnl.create_ifb(&name)?;
    rtnl.set_up(&name)
}
