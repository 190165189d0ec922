//! Reading denials from the NFLOG groups the slot chains `isc_s<slot>_out` / `_in` log to.
//!
//! Protocol (include/uapi/linux/netfilter/nfnetlink_log.h): a NETLINK_NETFILTER socket sends an
//! `NFULNL_MSG_CONFIG` message (subsystem `NFNL_SUBSYS_ULOG`) with `NFULA_CFG_CMD = BIND` for
//! the group, then `NFULA_CFG_MODE = COPY_PACKET` with a small copy range (headers only). The
//! kernel then sends one `NFULNL_MSG_PACKET` per logged packet with `NFULA_PREFIX` (our
//! `isc:s<slot>:<in|out>`), `NFULA_IFINDEX_INDEV` / `_OUTDEV` and `NFULA_PAYLOAD` (the packet
//! from its network header). The socket belongs to the network namespace of the thread that
//! opens it.
//!
//! Which ISC: the logging chains are per lease slot, not per ISC (`nft::slots`), so the prefix
//! names the slot; the ISC is the one behind the packet's ISC link — the input device of a
//! packet from it, the output device of one to it — whose name is `isc<first 12 characters of
//! the id>` (`alloc`). The name is looked up when the denial is read; a link deleted in
//! between leaves `isc_id` empty (the slot still says whose it was).

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::time::{Duration, Instant};

use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};

const NFNL_SUBSYS_ULOG: u16 = 4;
const NFULNL_MSG_PACKET: u16 = 0;
const NFULNL_MSG_CONFIG: u16 = 1;
const NFULA_CFG_CMD: u16 = 1;
const NFULA_CFG_MODE: u16 = 2;
const NFULA_CFG_TIMEOUT: u16 = 4;
const NFULA_CFG_QTHRESH: u16 = 5;
const NFULNL_CFG_CMD_BIND: u8 = 1;
const NFULNL_CFG_CMD_UNBIND: u8 = 2;
const NFULNL_COPY_PACKET: u8 = 2;
const NFULA_IFINDEX_INDEV: u16 = 4;
const NFULA_IFINDEX_OUTDEV: u16 = 5;
const NFULA_PAYLOAD: u16 = 9;
const NFULA_PREFIX: u16 = 10;
const NLMSG_ERROR: u16 = 2;
/// Bytes of each packet copied to us: enough for an IPv6 header plus ports.
const COPY_RANGE: u32 = 96;

/// Errors of the NFLOG reader.
#[derive(Debug, thiserror::Error)]
pub enum NflogError {
    #[error("cannot open a NETLINK_NETFILTER socket: {0}")]
    Socket(std::io::Error),
    #[error("cannot bind NFLOG group {group}: {source} (another process may own the group; is nfnetlink_log available?)")]
    Bind { group: u16, source: std::io::Error },
}

/// Direction of a denied packet relative to the ISC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Towards the ISC (ingress, P3).
    In,
    /// From the ISC (egress, P4; includes spoofed sources).
    Out,
}

/// One denied packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// The ISC's id as its host link names it (its first 12 characters; ids `isc run` makes
    /// have 12), or empty if the link was gone when the denial was read.
    pub isc_id: String,
    /// The ISC's lease slot, from the log prefix.
    pub slot: u32,
    /// Direction.
    pub direction: Direction,
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// IP protocol number (6 TCP, 17 UDP, 1 ICMP, 58 ICMPv6).
    pub proto: u8,
    /// Destination port for TCP and UDP.
    pub dport: Option<u16>,
}

/// A reader bound to one NFLOG group.
pub struct NflogReader {
    sock: Socket,
    group: u16,
    pending: VecDeque<Denial>,
    /// An eventfd that ends a wait early (see [`NflogReader::wake_on`]).
    wake: Option<std::os::fd::RawFd>,
}

fn nla(buf: &mut Vec<u8>, kind: u16, value: &[u8]) {
    let len = 4 + value.len();
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(value);
    while buf.len() & 3 != 0 {
        buf.push(0);
    }
}

fn config_msg(group: u16, seq: u32, attrs: &[u8]) -> Vec<u8> {
    let mut body = vec![libc::AF_UNSPEC as u8, 0];
    body.extend_from_slice(&group.to_be_bytes());
    body.extend_from_slice(attrs);
    let len = 16 + body.len();
    let mut msg = Vec::with_capacity(len);
    msg.extend_from_slice(&(len as u32).to_ne_bytes());
    msg.extend_from_slice(&((NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG).to_ne_bytes());
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16;
    msg.extend_from_slice(&flags.to_ne_bytes());
    msg.extend_from_slice(&seq.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes());
    msg.extend_from_slice(&body);
    msg
}

/// Iterate over netlink attributes in `buf`.
fn attrs(mut buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if buf.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([buf[0], buf[1]]) as usize;
        let kind = u16::from_ne_bytes([buf[2], buf[3]]) & 0x3fff;
        if len < 4 || len > buf.len() {
            return None;
        }
        let value = &buf[4..len];
        buf = &buf[((len + 3) & !3).min(buf.len())..];
        Some((kind, value))
    })
}

/// Parse `isc:s<slot>:<in|out>`.
fn parse_prefix(prefix: &str) -> Option<(u32, Direction)> {
    let rest = prefix.strip_prefix("isc:s")?;
    let (slot, dir) = rest.split_once(':')?;
    let dir = match dir {
        "in" => Direction::In,
        "out" => Direction::Out,
        _ => return None,
    };
    Some((slot.parse().ok()?, dir))
}

/// The ISC id (as far as the link name holds it) behind interface `index`, if it is an ISC
/// link that still exists.
fn isc_of_link(index: u32) -> Option<String> {
    let mut name = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: if_indextoname(3) writes at most IF_NAMESIZE bytes, NUL included, into `name`.
    let p = unsafe { libc::if_indextoname(index, name.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: on success `name` holds a NUL-terminated string.
    let name = unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) };
    name.to_str().ok()?.strip_prefix("isc").map(str::to_string)
}

/// Parse addresses, protocol and destination port from an IP packet.
fn parse_packet(p: &[u8]) -> Option<(IpAddr, IpAddr, u8, Option<u16>)> {
    let version = p.first()? >> 4;
    let (src, dst, proto, l4) = match version {
        4 if p.len() >= 20 => {
            let ihl = usize::from(p[0] & 0x0f) * 4;
            let src = Ipv4Addr::new(p[12], p[13], p[14], p[15]);
            let dst = Ipv4Addr::new(p[16], p[17], p[18], p[19]);
            (IpAddr::V4(src), IpAddr::V4(dst), p[9], p.get(ihl..))
        }
        6 if p.len() >= 40 => {
            let src: [u8; 16] = p[8..24].try_into().ok()?;
            let dst: [u8; 16] = p[24..40].try_into().ok()?;
            (IpAddr::V6(Ipv6Addr::from(src)), IpAddr::V6(Ipv6Addr::from(dst)), p[6], p.get(40..))
        }
        _ => return None,
    };
    let dport = match (proto, l4) {
        (6 | 17, Some(l4)) if l4.len() >= 4 => Some(u16::from_be_bytes([l4[2], l4[3]])),
        _ => None,
    };
    Some((src, dst, proto, dport))
}

impl NflogReader {
    /// Bind NFLOG `group` in the calling thread's network namespace. Only one socket per
    /// namespace can bind a group: a second `open` of the same group fails (EPERM on 6.18).
    pub fn open(group: u16) -> Result<Self, NflogError> {
        let mut sock = Socket::new(NETLINK_NETFILTER).map_err(NflogError::Socket)?;
        sock.bind_auto().map_err(NflogError::Socket)?;
        sock.connect(&SocketAddr::new(0, 0)).map_err(NflogError::Socket)?;
        // Without this a burst of denials overruns the socket and reading fails with ENOBUFS;
        // losing log records is preferable to losing the reader.
        let _ = sock.set_no_enobufs(true);
        let reader = NflogReader { sock, group, pending: VecDeque::new(), wake: None };
        let bind = |source| NflogError::Bind { group, source };
        let mut cmd = Vec::new();
        nla(&mut cmd, NFULA_CFG_CMD, &[NFULNL_CFG_CMD_BIND]);
        reader.command(config_msg(group, 1, &cmd)).map_err(bind)?;
        let mut mode = Vec::new();
        let mut m = COPY_RANGE.to_be_bytes().to_vec();
        m.extend_from_slice(&[NFULNL_COPY_PACKET, 0]);
        nla(&mut mode, NFULA_CFG_MODE, &m);
        reader.command(config_msg(group, 2, &mode)).map_err(bind)?;
        // The kernel batches a group's packets until `qthreshold` (default 100) are queued or
        // the flush timer (default 1 s) fires (net/netfilter/nfnetlink_log.c). Denials are
        // rare and wanted at once (the audit trail promises them within a second): send each
        // one as it is logged, and flush anything queued after 10 ms.
        let mut flush = Vec::new();
        nla(&mut flush, NFULA_CFG_QTHRESH, &1u32.to_be_bytes());
        nla(&mut flush, NFULA_CFG_TIMEOUT, &1u32.to_be_bytes());
        reader.command(config_msg(group, 3, &flush)).map_err(bind)?;
        Ok(reader)
    }

    /// The bound socket and its group, for a holder about to exec itself (a hibernating
    /// monitor): the group stays bound to the socket (the binding belongs to the socket, not to
    /// this value), and packets logged meanwhile queue in it. Denials already read but not yet
    /// returned by [`NflogReader::next`] are lost: call it when [`NflogReader::has_pending`]
    /// is false.
    pub fn into_kept(self) -> (OwnedFd, u16) {
        // Not dropped: its `Drop` would unbind the group.
        let mut me = std::mem::ManuallyDrop::new(self);
        drop(std::mem::take(&mut me.pending));
        let fd = me.sock.as_raw_fd();
        // SAFETY: `me` is never dropped, so the socket's descriptor passes to the OwnedFd
        // alone (`Socket` holds nothing else).
        (unsafe { OwnedFd::from_raw_fd(fd) }, me.group)
    }

    /// The reader a previous image of this process held ([`NflogReader::into_kept`]): `fd` is
    /// its socket, still bound to `group`.
    pub fn adopt(fd: OwnedFd, group: u16) -> NflogReader {
        // SAFETY: we own `fd` (a NETLINK_NETFILTER socket) and hand it to the Socket alone.
        let sock = unsafe { Socket::from_raw_fd(fd.into_raw_fd()) };
        NflogReader { sock, group, pending: VecDeque::new(), wake: None }
    }

    /// Are denials read from the socket but not yet returned by [`NflogReader::next`]?
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    fn command(&self, msg: Vec<u8>) -> Result<(), std::io::Error> {
        self.sock.send(&msg, 0)?;
        loop {
            let (data, _) = self.sock.recv_from_full()?;
            if data.len() >= 20 && u16::from_ne_bytes([data[4], data[5]]) == NLMSG_ERROR {
                let code = i32::from_ne_bytes([data[16], data[17], data[18], data[19]]);
                return if code == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::from_raw_os_error(-code))
                };
            }
        }
    }

    /// The next denial, waiting at most `timeout`. Packets of other groups, prefixes not made
    /// by isc and undecodable packets are skipped.
    pub fn next(&mut self, timeout: Duration) -> Option<Denial> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(d) = self.pending.pop_front() {
                return Some(d);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() && !self.readable(Duration::ZERO) {
                return None;
            }
            if !self.readable(left) {
                return None;
            }
            let Ok((data, _)) = self.sock.recv_from_full() else { return None };
            self.decode(&data);
        }
    }

    /// Lets a write to the eventfd `fd` (owned by the caller, open while this reader waits) end
    /// a wait of [`NflogReader::next`] early, as a timeout: a reader waiting long can still be
    /// told to stop at once. The event is consumed, so later waits block again; a packet
    /// readable at the same time is returned first.
    pub fn wake_on(&mut self, fd: std::os::fd::RawFd) {
        self.wake = Some(fd);
    }

    fn readable(&self, timeout: Duration) -> bool {
        let mut pfds = [
            libc::pollfd { fd: self.sock.as_fd().as_raw_fd(), events: libc::POLLIN, revents: 0 },
            libc::pollfd { fd: self.wake.unwrap_or(-1), events: libc::POLLIN, revents: 0 },
        ];
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: poll(2) on valid pollfds (a negative fd is ignored), for a bounded time.
        let rc = unsafe { libc::poll(pfds.as_mut_ptr(), 2, ms) };
        if rc > 0 && pfds[1].revents & libc::POLLIN != 0 {
            let mut n = 0u64;
            // SAFETY: an 8-byte read from the eventfd resets its counter.
            unsafe { libc::read(pfds[1].fd, (&mut n as *mut u64).cast(), 8) };
            // A packet readable too is returned rather than the early end: a reader told to
            // finish reads what is already queued first.
            return pfds[0].revents & libc::POLLIN != 0;
        }
        rc > 0 && pfds[0].revents & libc::POLLIN != 0
    }

    fn decode(&mut self, data: &[u8]) {
        let mut off = 0;
        while off + 16 <= data.len() {
            let len = u32::from_ne_bytes(data[off..off + 4].try_into().expect("4 bytes")) as usize;
            let kind = u16::from_ne_bytes([data[off + 4], data[off + 5]]);
            if len < 16 || off + len > data.len() {
                return;
            }
            let msg = &data[off..off + len];
            off += (len + 3) & !3;
            if kind != (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET || msg.len() < 20 {
                continue;
            }
            let group = u16::from_be_bytes([msg[18], msg[19]]);
            if group != self.group {
                continue;
            }
            let (mut prefix, mut payload, mut indev, mut outdev) = (None, None, None, None);
            let index = |v: &[u8]| v.try_into().ok().map(u32::from_be_bytes);
            for (k, v) in attrs(&msg[20..]) {
                match k {
                    NFULA_IFINDEX_INDEV => indev = index(v),
                    NFULA_IFINDEX_OUTDEV => outdev = index(v),
                    NFULA_PREFIX => {
                        prefix = Some(
                            String::from_utf8_lossy(v.split(|b| *b == 0).next().unwrap_or(v))
                                .into_owned(),
                        )
                    }
                    NFULA_PAYLOAD => payload = Some(v),
                    _ => {}
                }
            }
            let Some((slot, direction)) = prefix.as_deref().and_then(parse_prefix) else {
                continue;
            };
            let Some((src, dst, proto, dport)) = payload.and_then(parse_packet) else { continue };
            let link = match direction {
                Direction::Out => indev,
                Direction::In => outdev,
            };
            let isc_id = link.and_then(isc_of_link).unwrap_or_default();
            self.pending.push_back(Denial { isc_id, slot, direction, src, dst, proto, dport });
        }
    }
}

impl Drop for NflogReader {
    fn drop(&mut self) {
        let mut cmd = Vec::new();
        nla(&mut cmd, NFULA_CFG_CMD, &[NFULNL_CFG_CMD_UNBIND]);
        let _ = self.sock.send(&config_msg(self.group, 4, &cmd), 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_and_packets_parse() {
        assert_eq!(parse_prefix("isc:s7:in"), Some((7, Direction::In)));
        assert_eq!(parse_prefix("isc:s32767:out"), Some((32767, Direction::Out)));
        assert_eq!(parse_prefix("isc:web:in"), None);
        assert_eq!(parse_prefix("other:s1:in"), None);
        assert_eq!(parse_prefix("isc:s1:sideways"), None);
        assert_eq!(isc_of_link(1), None, "lo is no ISC link");
        let mut v4 = vec![0x45, 0, 0, 40, 0, 0, 0, 0, 64, 6, 0, 0, 10, 88, 0, 1, 192, 0, 2, 7];
        v4.extend_from_slice(&[0x30, 0x39, 0x01, 0xbb]);
        let (s, d, p, port) = parse_packet(&v4).unwrap();
        assert_eq!(
            (s, d, p, port),
            ("10.88.0.1".parse().unwrap(), "192.0.2.7".parse().unwrap(), 6, Some(443))
        );
        let mut v6 = vec![0x60, 0, 0, 0, 0, 8, 17, 64];
        v6.extend_from_slice(&"fd69:7363::1".parse::<Ipv6Addr>().unwrap().octets());
        v6.extend_from_slice(&"2001:db8::53".parse::<Ipv6Addr>().unwrap().octets());
        v6.extend_from_slice(&[0x30, 0x39, 0x00, 0x35]);
        let (_, d, p, port) = parse_packet(&v6).unwrap();
        assert_eq!((d, p, port), ("2001:db8::53".parse().unwrap(), 17, Some(53)));
        assert!(parse_packet(&[0x45, 0]).is_none());
    }

    #[test]
    fn config_message_layout_matches_nfnetlink() {
        let mut cmd = Vec::new();
        nla(&mut cmd, NFULA_CFG_CMD, &[NFULNL_CFG_CMD_BIND]);
        let msg = config_msg(100, 7, &cmd);
        assert_eq!(msg.len(), 16 + 4 + 8);
        assert_eq!(u16::from_ne_bytes([msg[4], msg[5]]), 0x0401);
        assert_eq!(&msg[18..20], &100u16.to_be_bytes());
        assert_eq!(attrs(&msg[20..]).next(), Some((NFULA_CFG_CMD, &[NFULNL_CFG_CMD_BIND][..])));
    }
}
