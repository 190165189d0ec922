//! Set-element batches sent straight to nf_tables over nfnetlink, without `nft`.
//!
//! Why: an ISC's own firewall state is nothing but elements of the table's global sets and
//! maps (see `rules`), and `nft` 1.0.6 pays for every command with a cache dump of the table
//! (every chain and set; for interval sets every element too: 14 -> 33 ms to remove one ISC's
//! elements at 1000 ISCs, measured) plus a process start. Sending the same elements ourselves
//! costs a few hundred microseconds whatever the table holds.
//!
//! Only element commands go this way: the base (chains, rules, sets) keeps going through
//! `nft -j -f -`, whose diagnostics matter more than its speed there. Nothing is read back.
//!
//! Protocol (include/uapi/linux/netfilter/nf_tables.h, net/netfilter/nfnetlink.c): one
//! `sendmsg` carries `NFNL_MSG_BATCH_BEGIN`, one `NFT_MSG_NEWSETELEM` / `DELSETELEM` per
//! command (attributes `NFTA_SET_ELEM_LIST_TABLE`, `_SET`, `_ELEMENTS`), `NFNL_MSG_BATCH_END`;
//! the kernel applies it as one transaction (all or nothing). The batch is processed within
//! the `sendmsg` call (netlink delivers to the kernel synchronously), so every acknowledgement
//! is queued on the socket when `sendmsg` returns; they are then read without blocking.
//!
//! Encoding (nft's datatypes, src/datatype.c): `ifname` is 16 bytes (IFNAMSIZ) NUL padded;
//! addresses in network order; `inet_proto` one byte; `inet_service` two bytes big endian;
//! `mark` four bytes host order. In a concatenation every field takes a whole number of
//! 32-bit registers (nft `concat` pads each to 4 bytes), so the key is their padded sum.
//! Interval sets with a concatenated key (pipapo) take each element as a start key and an
//! end key (`NFTA_SET_ELEM_KEY_END`), field by field.

use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use ipnet::IpNet;

use super::{Elem, KeyType, Op, Val, TABLE};

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;
const NFTA_SET_ELEM_KEY_END: u16 = 10;
const NFTA_DATA_VALUE: u16 = 1;
const NLA_F_NESTED: u16 = 0x8000;
const NFPROTO_INET: u8 = 1;
const NLMSG_ERROR: u16 = 2;
const NLM_F_ACK_TLVS: u16 = 0x200;
const NLMSGERR_ATTR_MSG: u16 = 1;
const IFNAMSIZ: usize = 16;

/// Errors of an element batch.
#[derive(Debug, thiserror::Error)]
pub enum NlError {
    #[error("nfnetlink socket: {0}")]
    Socket(std::io::Error),
    #[error("cannot encode an element of set {set}: {why}")]
    Encode { set: String, why: String },
    #[error("the kernel rejected `{cmd}` on set {set}: {source}{detail}")]
    Rejected { cmd: &'static str, set: String, source: std::io::Error, detail: String },
    #[error("the kernel rejected the element batch: {source}{detail}")]
    Commit { source: std::io::Error, detail: String },
    #[error("{missing} of the batch's acknowledgements never came")]
    Incomplete { missing: usize },
}

impl NlError {
    /// The errno the kernel answered with, if it rejected the batch.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NlError::Rejected { source, .. } | NlError::Commit { source, .. } => {
                source.raw_os_error()
            }
            _ => None,
        }
    }
}

/// Key, data and interval flag of a set or map, as declared in the base.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetShape {
    /// Key fields (a concatenation if more than one).
    pub key: Vec<KeyType>,
    /// Data type of a data map.
    pub data: Option<KeyType>,
    /// `flags interval` (with a concatenated key: the kernel's pipapo set).
    pub interval: bool,
}

fn attr(buf: &mut Vec<u8>, kind: u16, value: &[u8]) {
    buf.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(value);
    buf.resize((buf.len() + 3) & !3, 0);
}

fn nested(buf: &mut Vec<u8>, kind: u16, fill: impl FnOnce(&mut Vec<u8>)) {
    let start = buf.len();
    buf.extend_from_slice(&[0; 4]);
    fill(buf);
    let len = (buf.len() - start) as u16;
    buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
    buf[start + 2..start + 4].copy_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
}

fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

/// One field's bytes: (start, end). They differ only for a prefix in an interval set.
fn field(k: KeyType, v: &Val) -> Result<(Vec<u8>, Vec<u8>), String> {
    let same = |b: Vec<u8>| Ok((b.clone(), b));
    let net = |n: &IpNet| match n {
        IpNet::V4(n) => (n.network().octets().to_vec(), n.broadcast().octets().to_vec()),
        IpNet::V6(n) => (n.network().octets().to_vec(), n.broadcast().octets().to_vec()),
    };
    match (k, v) {
        (KeyType::Ifname, Val::Str(s)) if s.len() < IFNAMSIZ && !s.contains('*') => {
            let mut b = s.as_bytes().to_vec();
            b.resize(IFNAMSIZ, 0);
            same(b)
        }
        (KeyType::Ipv4, Val::Addr(IpAddr::V4(a))) => same(a.octets().to_vec()),
        (KeyType::Ipv6, Val::Addr(IpAddr::V6(a))) => same(a.octets().to_vec()),
        (KeyType::Ipv4, Val::Net(n @ IpNet::V4(_)))
        | (KeyType::Ipv6, Val::Net(n @ IpNet::V6(_))) => Ok(net(&n.trunc())),
        (KeyType::Proto, Val::Proto(p)) => same(vec![p.number()]),
        (KeyType::Service, Val::Port(p)) => same(p.to_be_bytes().to_vec()),
        (KeyType::Mark, Val::Mark(m)) => same(m.to_ne_bytes().to_vec()),
        (k, v) => Err(format!("{v:?} is not a {k:?}")),
    }
}

/// The key of `vals` for `shape` as (start, end) bytes.
fn key(shape: &SetShape, vals: &[Val]) -> Result<(Vec<u8>, Vec<u8>), String> {
    if vals.len() != shape.key.len() {
        return Err(format!("{} fields for a key of {}", vals.len(), shape.key.len()));
    }
    let concat = shape.key.len() > 1;
    let (mut start, mut end) = (Vec::new(), Vec::new());
    for (k, v) in shape.key.iter().zip(vals) {
        let (s, e) = field(*k, v)?;
        if !shape.interval && s != e {
            return Err(format!("a range ({v:?}) in a set without `flags interval`"));
        }
        start.extend_from_slice(&s);
        end.extend_from_slice(&e);
        if concat {
            start.resize((start.len() + 3) & !3, 0);
            end.resize((end.len() + 3) & !3, 0);
        }
    }
    Ok((start, end))
}

/// The `NFTA_SET_ELEM_LIST_ELEMENTS` payload of one command.
fn elements(shape: &SetShape, elems: &[Elem], with_data: bool) -> Result<Vec<u8>, String> {
    let mut buf = Vec::new();
    for e in elems {
        let (start, end) = key(shape, e.key())?;
        let data = match (e, shape.data, with_data) {
            (Elem::Data(_, d), Some(t), true) => Some(field(t, d)?.0),
            (Elem::Key(_), None, _) | (_, _, false) => None,
            _ => return Err(format!("{e:?} does not fit {shape:?}")),
        };
        nested(&mut buf, NFTA_LIST_ELEM, |b| {
            nested(b, NFTA_SET_ELEM_KEY, |b| attr(b, NFTA_DATA_VALUE, &start));
            // pipapo (concatenated interval) takes both ends; a plain hash set neither.
            if shape.interval && shape.key.len() > 1 {
                nested(b, NFTA_SET_ELEM_KEY_END, |b| attr(b, NFTA_DATA_VALUE, &end));
            }
            if let Some(d) = &data {
                nested(b, NFTA_SET_ELEM_DATA, |b| attr(b, NFTA_DATA_VALUE, d));
            }
        });
    }
    Ok(buf)
}

fn message(
    buf: &mut Vec<u8>,
    kind: u16,
    flags: u16,
    seq: u32,
    family: u8,
    res_id: u16,
    body: &[u8],
) {
    let len = 16 + 4 + body.len();
    buf.extend_from_slice(&(len as u32).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(&(flags | libc::NLM_F_REQUEST as u16).to_ne_bytes());
    buf.extend_from_slice(&seq.to_ne_bytes());
    buf.extend_from_slice(&0u32.to_ne_bytes());
    buf.extend_from_slice(&[family, 0]);
    buf.extend_from_slice(&res_id.to_be_bytes());
    buf.extend_from_slice(body);
}

/// What each acknowledged message was, to name it in an error.
struct Sent {
    cmd: &'static str,
    set: String,
}

/// Encode `ops` (element commands only) as one nfnetlink batch. Message `i + 1` (its seq)
/// is `sent[i]`.
fn encode(
    ops: &[Op],
    shape: &dyn Fn(&str) -> Option<SetShape>,
) -> Result<(Vec<u8>, Vec<Sent>), NlError> {
    let mut buf = Vec::new();
    let mut sent = Vec::new();
    message(&mut buf, NFNL_MSG_BATCH_BEGIN, 0, 0, libc::AF_UNSPEC as u8, NFNL_SUBSYS_NFTABLES, &[]);
    for op in ops {
        let (cmd, kind, flags, set, elems) = match op {
            Op::AddElems { set, elems } => {
                ("add element", NFT_MSG_NEWSETELEM, libc::NLM_F_CREATE as u16, set, elems)
            }
            Op::DeleteElems { set, elems } => ("delete element", NFT_MSG_DELSETELEM, 0, set, elems),
            other => {
                return Err(NlError::Encode {
                    set: String::new(),
                    why: format!("not an element command: {other:?}"),
                })
            }
        };
        let enc = |why: String| NlError::Encode { set: set.clone(), why };
        let shape = shape(set).ok_or_else(|| enc("not a set of the table".into()))?;
        let list = elements(&shape, elems, kind == NFT_MSG_NEWSETELEM).map_err(enc)?;
        // nfnetlink message type: subsystem in the high byte (nfnetlink.h NFNL_MSG_TYPE).
        let kind = (NFNL_SUBSYS_NFTABLES << 8) | kind;
        let mut body = Vec::new();
        attr(&mut body, NFTA_SET_ELEM_LIST_TABLE, &cstr(TABLE));
        attr(&mut body, NFTA_SET_ELEM_LIST_SET, &cstr(set));
        nested(&mut body, NFTA_SET_ELEM_LIST_ELEMENTS, |b| b.extend_from_slice(&list));
        sent.push(Sent { cmd, set: set.clone() });
        let flags = flags | libc::NLM_F_ACK as u16;
        message(&mut buf, kind, flags, sent.len() as u32, NFPROTO_INET, 0, &body);
    }
    let end = sent.len() as u32 + 1;
    message(&mut buf, NFNL_MSG_BATCH_END, 0, end, libc::AF_UNSPEC as u8, NFNL_SUBSYS_NFTABLES, &[]);
    Ok((buf, sent))
}

fn socket() -> Result<OwnedFd, NlError> {
    let err = || NlError::Socket(std::io::Error::last_os_error());
    // SAFETY: socket(2) with constant arguments; the fd is owned right below.
    let fd = unsafe {
        libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::NETLINK_NETFILTER)
    };
    if fd < 0 {
        return Err(err());
    }
    // SAFETY: a fresh fd nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let one: libc::c_int = 1;
    // Errors with the kernel's reason (extended ack), without an echo of our request.
    for opt in [libc::NETLINK_EXT_ACK, libc::NETLINK_CAP_ACK] {
        // SAFETY: setsockopt(2) with a pointer to an int that outlives the call.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_NETLINK,
                opt,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
    }
    Ok(fd)
}

/// The kernel's extended-ack message in an `NLMSG_ERROR` reply, if any.
fn ext_msg(msg: &[u8], flags: u16) -> String {
    // nlmsgerr = error (4) + the request's header (16, the payload is capped); TLVs follow.
    if flags & NLM_F_ACK_TLVS == 0 || msg.len() <= 36 {
        return String::new();
    }
    let mut tlvs = &msg[36..];
    while tlvs.len() >= 4 {
        let len = u16::from_ne_bytes([tlvs[0], tlvs[1]]) as usize;
        let kind = u16::from_ne_bytes([tlvs[2], tlvs[3]]) & 0x3fff;
        if len < 4 || len > tlvs.len() {
            break;
        }
        if kind == NLMSGERR_ATTR_MSG {
            let s = &tlvs[4..len];
            let s = s.split(|b| *b == 0).next().unwrap_or(s);
            return format!(" ({})", String::from_utf8_lossy(s));
        }
        tlvs = &tlvs[((len + 3) & !3).min(tlvs.len())..];
    }
    String::new()
}

/// Apply `ops` (`add element` / `delete element` only) to table `inet isc` as one transaction
/// in the calling thread's network namespace. `shape` says how each set's elements are laid
/// out. An empty batch is a no-op.
///
/// Closing the socket at the end waits for an RCU grace period if the batch deleted anything
/// (see [`NlSocket`]); that wait is part of this call.
pub fn apply_elems(ops: &[Op], shape: &dyn Fn(&str) -> Option<SetShape>) -> Result<(), NlError> {
    if ops.is_empty() {
        return Ok(());
    }
    NlSocket::open()?.apply(ops, shape)
}

/// An nfnetlink socket of the calling thread's network namespace, for element batches.
///
/// Dropping it closes the socket. After a batch that deleted anything that close blocks for
/// an RCU grace period: the kernel frees a transaction's old objects in a work item after a
/// grace period and flushes that work when a NETLINK_NETFILTER socket is released
/// (net/netfilter/nf_tables_api.c, `nft_rcv_nl_event` on `NETLINK_URELEASE`). Keeping it
/// apart from [`NlSocket::apply`] lets a caller (the bench) see the two costs apart.
pub struct NlSocket(OwnedFd);

impl NlSocket {
    /// Open one (it belongs to the calling thread's network namespace).
    pub fn open() -> Result<Self, NlError> {
        socket().map(NlSocket)
    }

    /// Apply `ops` as one transaction (see [`apply_elems`]).
    pub fn apply(
        &self,
        ops: &[Op],
        shape: &dyn Fn(&str) -> Option<SetShape>,
    ) -> Result<(), NlError> {
        if ops.is_empty() {
            return Ok(());
        }
        send(&self.0, ops, shape)
    }
}

fn send(fd: &OwnedFd, ops: &[Op], shape: &dyn Fn(&str) -> Option<SetShape>) -> Result<(), NlError> {
    let (buf, sent) = encode(ops, shape)?;
    let io = |_| NlError::Socket(std::io::Error::last_os_error());
    // SAFETY: sockaddr_nl is plain data, for which all zeroes is a valid value.
    let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as u16;
    // SAFETY: sendto(2) of our buffer to the kernel (nl_pid 0), both valid for the call.
    let n = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            buf.as_ptr().cast(),
            buf.len(),
            0,
            (&addr as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if n < 0 || n as usize != buf.len() {
        return Err(io(()));
    }
    let mut acked = 0;
    let mut first_err: Option<NlError> = None;
    let mut rbuf = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: recv(2) into our buffer, without blocking: the replies are already queued.
        let n = unsafe {
            libc::recv(fd.as_raw_fd(), rbuf.as_mut_ptr().cast(), rbuf.len(), libc::MSG_DONTWAIT)
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::WouldBlock {
                break;
            }
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(NlError::Socket(e));
        }
        let data = &rbuf[..n as usize];
        let mut off = 0;
        while off + 16 <= data.len() {
            let len = u32::from_ne_bytes(data[off..off + 4].try_into().expect("4 bytes")) as usize;
            if len < 16 || off + len > data.len() {
                break;
            }
            let msg = &data[off..off + len];
            off += (len + 3) & !3;
            let kind = u16::from_ne_bytes([msg[4], msg[5]]);
            let flags = u16::from_ne_bytes([msg[6], msg[7]]);
            if kind != NLMSG_ERROR || msg.len() < 20 {
                continue;
            }
            let code = i32::from_ne_bytes(msg[16..20].try_into().expect("4 bytes"));
            // The request's sequence number, in the header the error carries.
            let seq = msg.get(28..32).map(|s| u32::from_ne_bytes(s.try_into().expect("4")));
            acked += 1;
            if code == 0 || first_err.is_some() {
                continue;
            }
            let source = std::io::Error::from_raw_os_error(-code);
            let detail = ext_msg(msg, flags);
            let which = seq.and_then(|s| sent.get((s as usize).wrapping_sub(1)));
            first_err = Some(match which {
                Some(s) => NlError::Rejected { cmd: s.cmd, set: s.set.clone(), source, detail },
                None => NlError::Commit { source, detail },
            });
        }
    }
    if let Some(e) = first_err {
        return Err(e);
    }
    if acked < sent.len() {
        return Err(NlError::Incomplete { missing: sent.len() - acked });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Proto;

    fn shape(key: &[KeyType], data: Option<KeyType>, interval: bool) -> SetShape {
        SetShape { key: key.to_vec(), data, interval }
    }

    #[test]
    fn concatenated_keys_pad_every_field_to_a_register() {
        let s = shape(&[KeyType::Ifname, KeyType::Proto, KeyType::Service], None, false);
        let (k, e) =
            key(&s, &[Val::Str("iscab".into()), Val::Proto(Proto::Tcp), Val::Port(443)]).unwrap();
        assert_eq!(k, e);
        assert_eq!(k.len(), 16 + 4 + 4);
        assert_eq!(&k[..6], b"iscab\0");
        assert_eq!(&k[16..24], &[6, 0, 0, 0, 0x01, 0xbb, 0, 0]);
        // A single field is not padded.
        let s = shape(&[KeyType::Service], None, false);
        assert_eq!(key(&s, &[Val::Port(80)]).unwrap().0, vec![0, 80]);
    }

    #[test]
    fn a_prefix_becomes_a_range_only_in_an_interval_set() {
        let net = Val::Net("192.0.2.7/24".parse().unwrap());
        let s = shape(&[KeyType::Ifname, KeyType::Ipv4], None, true);
        let (k, e) = key(&s, &[Val::Str("isc1".into()), net.clone()]).unwrap();
        assert_eq!(&k[16..], &[192, 0, 2, 0]);
        assert_eq!(&e[16..], &[192, 0, 2, 255]);
        let s = shape(&[KeyType::Ifname, KeyType::Ipv4], None, false);
        assert!(key(&s, &[Val::Str("isc1".into()), net]).is_err());
        assert!(
            key(&s, &[Val::Str("isc*".into()), Val::Addr("10.0.0.1".parse().unwrap())]).is_err()
        );
    }

    #[test]
    fn a_batch_is_framed_by_begin_and_end_and_acks_every_command() {
        let ops = vec![
            Op::AddElems {
                set: "m".into(),
                elems: vec![Elem::Data(vec![Val::Str("isc1".into())], Val::Mark(7))],
            },
            Op::DeleteElems {
                set: "m".into(),
                elems: vec![Elem::Key(vec![Val::Str("isc1".into())])],
            },
        ];
        let sh = |_: &str| Some(shape(&[KeyType::Ifname], Some(KeyType::Mark), false));
        let (buf, sent) = encode(&ops, &sh).unwrap();
        assert_eq!(sent.len(), 2);
        let mut kinds = vec![];
        let mut off = 0;
        while off < buf.len() {
            let len = u32::from_ne_bytes(buf[off..off + 4].try_into().unwrap()) as usize;
            kinds.push(u16::from_ne_bytes([buf[off + 4], buf[off + 5]]));
            off += len;
        }
        assert_eq!(kinds, vec![0x10, 0x0a0c, 0x0a0e, 0x11]);
        // The mark travels in host byte order.
        let needle = 7u32.to_ne_bytes();
        assert!(buf.windows(4).any(|w| w == needle));
        assert!(encode(&[Op::AddTable], &sh).is_err());
    }
}
