//! DNS messages on the wire (RFC 1035 §4): one question out, the A or AAAA records of the
//! answer (following CNAMEs) and their smallest TTL back.
//!
//! Only what an egress refresh needs: no EDNS, no DNSSEC, no TCP. An answer is accepted only if
//! its id and question match the query (RFC 5452 §4: with a random id and a random source port
//! that is the defence against off-path spoofing a stub resolver can have).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Record type A.
pub const TYPE_A: u16 = 1;
/// Record type AAAA.
pub const TYPE_AAAA: u16 = 28;
const TYPE_CNAME: u16 = 5;
const CLASS_IN: u16 = 1;
/// RFC 1035 §2.3.4: a name is at most 255 octets on the wire.
const MAX_NAME: usize = 255;
/// Compression pointers followed per name before the message is called malformed (loops).
const MAX_JUMPS: usize = 64;

/// Errors of encoding a query or decoding an answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("{name:?} is not a valid DNS name (labels of 1-63 octets, at most 253 in all)")]
    BadName { name: String },
    #[error("malformed answer: {what}")]
    Malformed { what: &'static str },
    #[error("answer does not match the query (id or question differs)")]
    Mismatch,
    #[error("the name does not exist (NXDOMAIN)")]
    NxDomain,
    #[error("the server answered with rcode {rcode} (2 SERVFAIL, 5 REFUSED)")]
    Rcode { rcode: u8 },
    #[error("the answer was truncated (TC); isc's resolver speaks UDP only")]
    Truncated,
}

/// Addresses of one answer and the smallest TTL of the records that led to them (CNAMEs
/// included). `ttl` is `None` when the answer holds no address (NODATA).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Records {
    /// The addresses.
    pub addrs: Vec<IpAddr>,
    /// Smallest TTL in seconds.
    pub ttl: Option<u32>,
}

/// A recursive query (RD) for `name`, type `qtype`, class IN, with id `id`.
pub fn query(id: u16, name: &str, qtype: u16) -> Result<Vec<u8>, WireError> {
    let mut m = Vec::with_capacity(32 + name.len());
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&0x0100u16.to_be_bytes()); // RD
    m.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]); // 1 question
    encode_name(&mut m, name)?;
    m.extend_from_slice(&qtype.to_be_bytes());
    m.extend_from_slice(&CLASS_IN.to_be_bytes());
    Ok(m)
}

fn encode_name(m: &mut Vec<u8>, name: &str) -> Result<(), WireError> {
    let bad = || WireError::BadName { name: name.to_string() };
    let trimmed = name.strip_suffix('.').unwrap_or(name);
    if trimmed.is_empty() || trimmed.len() > 253 {
        return Err(bad());
    }
    for label in trimmed.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(bad());
        }
        m.push(label.len() as u8);
        m.extend_from_slice(label.as_bytes());
    }
    m.push(0);
    Ok(())
}

struct Reader<'a> {
    msg: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], WireError> {
        let end = self.pos.checked_add(n).filter(|e| *e <= self.msg.len());
        let end = end.ok_or(WireError::Malformed { what: "message ends inside a record" })?;
        let s = &self.msg[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u16(&mut self) -> Result<u16, WireError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, WireError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    /// A (possibly compressed) name, lower-cased, without the trailing dot.
    fn name(&mut self) -> Result<String, WireError> {
        let bad = |what| WireError::Malformed { what };
        let mut out = String::new();
        let mut pos = self.pos;
        let mut jumps = 0;
        let mut resume = None;
        loop {
            let len = *self.msg.get(pos).ok_or(bad("name runs past the message"))? as usize;
            match len & 0xc0 {
                0xc0 => {
                    let lo = *self.msg.get(pos + 1).ok_or(bad("pointer runs past the message"))?;
                    resume.get_or_insert(pos + 2);
                    pos = ((len & 0x3f) << 8) | lo as usize;
                    jumps += 1;
                    if jumps > MAX_JUMPS {
                        return Err(bad("compression pointer loop"));
                    }
                }
                0 if len == 0 => {
                    self.pos = resume.unwrap_or(pos + 1);
                    return Ok(out);
                }
                0 => {
                    let label =
                        self.msg.get(pos + 1..pos + 1 + len).ok_or(bad("label past end"))?;
                    if !out.is_empty() {
                        out.push('.');
                    }
                    out.extend(label.iter().map(|b| b.to_ascii_lowercase() as char));
                    if out.len() > MAX_NAME {
                        return Err(bad("name longer than 255 octets"));
                    }
                    pos += 1 + len;
                }
                _ => return Err(bad("reserved label type")),
            }
        }
    }
}

fn canonical(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

/// Decode the answer to `query(id, name, qtype)`: its addresses of type `qtype` for `name` or
/// a CNAME chain from it, and their smallest TTL.
pub fn parse_answer(msg: &[u8], id: u16, name: &str, qtype: u16) -> Result<Records, WireError> {
    let mut r = Reader { msg, pos: 0 };
    let (got_id, flags) = (r.u16()?, r.u16()?);
    let (qd, an) = (r.u16()?, r.u16()?);
    r.take(4)?; // NSCOUNT, ARCOUNT: the authority and additional sections are not used
    if got_id != id || flags & 0x8000 == 0 || qd != 1 {
        return Err(WireError::Mismatch);
    }
    if flags & 0x0200 != 0 {
        return Err(WireError::Truncated);
    }
    match (flags & 0x000f) as u8 {
        0 => {}
        3 => return Err(WireError::NxDomain),
        rcode => return Err(WireError::Rcode { rcode }),
    }
    let qname = canonical(name);
    if r.name()? != qname || r.u16()? != qtype || r.u16()? != CLASS_IN {
        return Err(WireError::Mismatch);
    }
    // Names that lead to the answer: the question, then each CNAME target from it (answers
    // list the chain in order, RFC 1034 §4.3.2; records of other owners are ignored).
    let mut chain = vec![qname];
    let mut out = Records { addrs: vec![], ttl: None };
    let mut chain_ttl: Option<u32> = None;
    for _ in 0..an {
        let owner = r.name()?;
        let (rtype, class, ttl, len) = (r.u16()?, r.u16()?, r.u32()?, r.u16()? as usize);
        let start = r.pos;
        let data = r.take(len)?;
        if class != CLASS_IN || !chain.contains(&owner) {
            continue;
        }
        // RFC 2181 §8: a TTL with the top bit set is read as 0.
        let ttl = if ttl > i32::MAX as u32 { 0 } else { ttl };
        let addr = match (rtype, len) {
            (TYPE_A, 4) if qtype == TYPE_A => {
                Some(IpAddr::V4(Ipv4Addr::new(data[0], data[1], data[2], data[3])))
            }
            (TYPE_AAAA, 16) if qtype == TYPE_AAAA => {
                let b: [u8; 16] = data.try_into().expect("length checked");
                Some(IpAddr::V6(Ipv6Addr::from(b)))
            }
            (TYPE_CNAME, _) => {
                let mut sub = Reader { msg, pos: start };
                chain.push(sub.name()?);
                chain_ttl = Some(chain_ttl.map_or(ttl, |t| t.min(ttl)));
                None
            }
            _ => None,
        };
        if let Some(a) = addr {
            out.addrs.push(a);
            out.ttl = Some(out.ttl.map_or(ttl, |t| t.min(ttl)));
        }
    }
    if let (Some(t), Some(c)) = (out.ttl, chain_ttl) {
        out.ttl = Some(t.min(c));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An answer to `q` with `records` as (owner offset or name, type, ttl, rdata).
    fn answer(q: &[u8], rcode: u8, records: &[(&[u8], u16, u32, &[u8])]) -> Vec<u8> {
        let mut m = q.to_vec();
        m[2] |= 0x80;
        m[3] |= rcode;
        m[7] = records.len() as u8;
        for (owner, t, ttl, data) in records {
            m.extend_from_slice(owner);
            m.extend_from_slice(&t.to_be_bytes());
            m.extend_from_slice(&CLASS_IN.to_be_bytes());
            m.extend_from_slice(&ttl.to_be_bytes());
            m.extend_from_slice(&(data.len() as u16).to_be_bytes());
            m.extend_from_slice(data);
        }
        m
    }

    const QNAME_PTR: &[u8] = &[0xc0, 12];

    #[test]
    fn a_query_is_rfc1035() {
        let q = query(0xbeef, "svc.test.", TYPE_A).unwrap();
        let want = [
            0xbe, 0xef, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 3, b's', b'v', b'c', 4, b't', b'e', b's',
            b't', 0, 0, 1, 0, 1,
        ];
        assert_eq!(q, want);
        assert!(query(1, "a..b", TYPE_A).is_err());
        assert!(query(1, &"x".repeat(64), TYPE_A).is_err());
    }

    #[test]
    fn answers_follow_cnames_and_take_the_smallest_ttl() {
        let q = query(7, "www.Example.test", TYPE_A).unwrap();
        // www -> cdn.example.test (TTL 30) -> 192.0.2.9 (TTL 300); an unrelated A is ignored.
        let mut cname = vec![3u8];
        cname.extend_from_slice(b"cdn");
        cname.extend_from_slice(&[0xc0, 16]); // "example.test" inside the question
        let a = answer(
            &q,
            0,
            &[
                (QNAME_PTR, TYPE_CNAME, 30, &cname),
                (&[3, b'c', b'd', b'n', 0xc0, 16], TYPE_A, 300, &[192, 0, 2, 9]),
                (&[5, b'o', b't', b'h', b'e', b'r', 0], TYPE_A, 1, &[192, 0, 2, 66]),
            ],
        );
        let r = parse_answer(&a, 7, "www.example.test", TYPE_A).unwrap();
        assert_eq!(r.addrs, vec!["192.0.2.9".parse::<IpAddr>().unwrap()]);
        assert_eq!(r.ttl, Some(30));
    }

    #[test]
    fn mismatches_errors_and_malformed_answers_are_refused() {
        let q = query(9, "svc.test", TYPE_AAAA).unwrap();
        let v6: [u8; 16] = "2001:db8::5".parse::<Ipv6Addr>().unwrap().octets();
        let ok = answer(&q, 0, &[(QNAME_PTR, TYPE_AAAA, 2, &v6)]);
        let r = parse_answer(&ok, 9, "svc.test", TYPE_AAAA).unwrap();
        assert_eq!((r.addrs.len(), r.ttl), (1, Some(2)));
        assert_eq!(parse_answer(&ok, 10, "svc.test", TYPE_AAAA), Err(WireError::Mismatch));
        assert_eq!(parse_answer(&ok, 9, "other.test", TYPE_AAAA), Err(WireError::Mismatch));
        assert_eq!(parse_answer(&ok, 9, "svc.test", TYPE_A), Err(WireError::Mismatch));
        let nx = answer(&q, 3, &[]);
        assert_eq!(parse_answer(&nx, 9, "svc.test", TYPE_AAAA), Err(WireError::NxDomain));
        let nodata = answer(&q, 0, &[]);
        assert_eq!(parse_answer(&nodata, 9, "svc.test", TYPE_AAAA).unwrap().ttl, None);
        let mut tc = ok.clone();
        tc[2] |= 0x02;
        assert_eq!(parse_answer(&tc, 9, "svc.test", TYPE_AAAA), Err(WireError::Truncated));
        assert!(parse_answer(&ok[..ok.len() - 3], 9, "svc.test", TYPE_AAAA).is_err());
        // The answer's owner (offset 26) points at itself.
        let looped = answer(&q, 0, &[(&[0xc0, 26], TYPE_AAAA, 2, &v6)]);
        assert!(parse_answer(&looped, 9, "svc.test", TYPE_AAAA).is_err());
    }
}
