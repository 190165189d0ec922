//! The record schema and its canonical line encoding.
//!
//! A record is one JSON line whose fields always appear in this order:
//!
//! ```text
//! {"seq":N,"time":"…","isc":…,"kind":"…","actor":…,"detail":{…},"prev":"<64 hex>","hash":"<64 hex>"}\n
//! ```
//!
//! `hash` is BLAKE3 over the line's bytes *without* the hash field, i.e. over
//! `{"seq":…,"prev":"<64 hex>"}` (the body up to and including the `prev` value, then `}`).
//! `prev` is the previous record's `hash` (64 zero digits for the first record of a log).
//! Because `hash` is itself a function of every other byte of the line, `prev` commits to every
//! byte of the previous line. The verifier never re-serialises a record: it hashes the bytes as
//! stored, so the chain does not depend on any JSON canonicalisation.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// The `prev` value of the very first record of a log.
pub const GENESIS_PREV: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Length of the fixed suffix `,"hash":"<64 hex>"}` that ends every line (without `\n`).
pub(crate) const HASH_SUFFIX_LEN: usize = 9 + 64 + 2;

/// What happened. Serialised in snake_case (`isc_create`, `seccomp_denial`, …).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// An ISC was created from a manifest.
    IscCreate,
    /// An ISC was started.
    IscStart,
    /// An ISC was asked to stop.
    IscStop,
    /// An ISC's service exited (detail: status).
    IscExit,
    /// An ISC hit its memory limit.
    IscOom,
    /// The supervisor restarted an ISC.
    IscRestart,
    /// An image was built.
    ImageBuild,
    /// An image was imported.
    ImageImport,
    /// An image failed its content-manifest check (a re-hash found drift).
    ImageIntegrityFailure,
    /// An image (or a running ISC's live tree) was re-hashed against its manifest and intact.
    ImageVerify,
    /// A secret was sealed and stored.
    SecretSet,
    /// A secret was unsealed (delivered at start).
    SecretRead,
    /// A secret was removed.
    SecretRemove,
    /// A key (master key, audit signing key) was rotated.
    KeyRotate,
    /// A network policy was applied or changed.
    NetPolicy,
    /// A Dock API request (peer uid, verb, result).
    ApiRequest,
    /// An `isc verify` result.
    VerifyResult,
    /// The kernel denied a syscall by seccomp.
    SeccompDenial,
    /// nftables dropped a packet (NFLOG).
    NetDrop,
    /// Landlock denied an access.
    LandlockDenial,
    /// An Ed25519-signed checkpoint over the chain head (written by this crate).
    Checkpoint,
    /// First record of a new file after rotation (written by this crate).
    LogRotate,
    /// Appends failed earlier and the log became writable again (written by this crate).
    AuditWriteFailure,
}

impl Kind {
    /// The snake_case name used on disk.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::IscCreate => "isc_create",
            Kind::IscStart => "isc_start",
            Kind::IscStop => "isc_stop",
            Kind::IscExit => "isc_exit",
            Kind::IscOom => "isc_oom",
            Kind::IscRestart => "isc_restart",
            Kind::ImageBuild => "image_build",
            Kind::ImageImport => "image_import",
            Kind::ImageIntegrityFailure => "image_integrity_failure",
            Kind::ImageVerify => "image_verify",
            Kind::SecretSet => "secret_set",
            Kind::SecretRead => "secret_read",
            Kind::SecretRemove => "secret_remove",
            Kind::KeyRotate => "key_rotate",
            Kind::NetPolicy => "net_policy",
            Kind::ApiRequest => "api_request",
            Kind::VerifyResult => "verify_result",
            Kind::SeccompDenial => "seccomp_denial",
            Kind::NetDrop => "net_drop",
            Kind::LandlockDenial => "landlock_denial",
            Kind::Checkpoint => "checkpoint",
            Kind::LogRotate => "log_rotate",
            Kind::AuditWriteFailure => "audit_write_failure",
        }
    }

    /// Parses the on-disk name; `None` for an unknown kind.
    pub fn parse(s: &str) -> Option<Kind> {
        serde_json::from_value(serde_json::Value::String(s.to_owned())).ok()
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who caused the event: `"isc"` (the runtime itself), `"kernel"`, or `{"uid": N}` (an API peer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Actor {
    /// The isc runtime acting on its own (supervisor, checkpoints).
    Isc,
    /// The kernel (seccomp, Landlock, netfilter denials).
    Kernel,
    /// A user, identified by the peer credentials of the API connection.
    Uid(u32),
}

impl Serialize for Actor {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        match self {
            Actor::Isc => s.serialize_str("isc"),
            Actor::Kernel => s.serialize_str("kernel"),
            Actor::Uid(uid) => {
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry("uid", uid)?;
                m.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for Actor {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Name(String),
            Uid { uid: u32 },
        }
        match Repr::deserialize(d)? {
            Repr::Name(n) if n == "isc" => Ok(Actor::Isc),
            Repr::Name(n) if n == "kernel" => Ok(Actor::Kernel),
            Repr::Name(n) => Err(serde::de::Error::custom(format!(
                "unknown actor {n:?}: expected \"isc\", \"kernel\" or {{\"uid\": N}}"
            ))),
            Repr::Uid { uid } => Ok(Actor::Uid(uid)),
        }
    }
}

/// One parsed audit record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    /// Position in the chain, 1 for the first record, dense across files.
    pub seq: u64,
    /// RFC 3339 UTC timestamp with nanoseconds, e.g. `2026-01-02T03:04:05.000000001Z`.
    pub time: String,
    /// The ISC the event belongs to, if any.
    pub isc: Option<String>,
    /// What happened.
    pub kind: Kind,
    /// Who caused it.
    pub actor: Actor,
    /// Event-specific fields (always a JSON object).
    pub detail: serde_json::Value,
    /// Hex BLAKE3 `hash` of the previous record.
    pub prev: String,
    /// Hex BLAKE3 of this line without its hash field.
    pub hash: String,
}

/// Formats a time as RFC 3339 UTC with nanoseconds (`YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ`).
///
/// Fixed width, so formatted times compare correctly as strings (years 1970–9999).
pub fn format_time(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, day) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60,
        d.subsec_nanos()
    )
}

/// Parses an RFC 3339 timestamp (`Z` or `±HH:MM` offset, optional fraction) into a `SystemTime`.
pub fn parse_time(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> { s.get(r)?.parse().ok() };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, se) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    let mut i = 19;
    let mut nanos: u64 = 0;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            if i - start < 9 {
                nanos = nanos * 10 + u64::from(b[i] - b'0');
            }
            i += 1;
        }
        for _ in (i - start)..9 {
            nanos *= 10;
        }
        if i == start {
            return None;
        }
    }
    let offset: i64 = match b.get(i)? {
        b'Z' | b'z' if i + 1 == b.len() => 0,
        sign @ (b'+' | b'-') if i + 6 == b.len() => {
            let oh = num(i + 1..i + 3)?;
            let om = num(i + 4..i + 6)?;
            let o = oh * 3600 + om * 60;
            if *sign == b'+' {
                o
            } else {
                -o
            }
        }
        _ => return None,
    };
    let days = days_from_civil(y, mo, d);
    let secs = days * 86_400 + h * 3600 + mi * 60 + se - offset;
    let secs = u64::try_from(secs).ok()?;
    Some(UNIX_EPOCH + std::time::Duration::new(secs, nanos as u32))
}

// Howard Hinnant's civil calendar algorithms (public domain), proleptic Gregorian.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The fields of a record to encode (everything but `prev` and `hash`).
pub(crate) struct Fields<'a> {
    pub seq: u64,
    pub time: &'a str,
    pub isc: Option<&'a str>,
    pub kind: Kind,
    pub actor: Actor,
    /// A JSON object serialised by `serde_json` (checked by the caller), copied verbatim.
    pub detail: &'a [u8],
}

/// Serialises one record into `out` (appending, including the trailing `\n`) and returns its hash.
pub(crate) fn encode_line(out: &mut Vec<u8>, f: &Fields<'_>, prev: &blake3::Hash) -> blake3::Hash {
    let Fields { seq, time, isc, kind, actor, detail } = *f;
    use std::io::Write;
    let start = out.len();
    // Writing into a Vec cannot fail, and serde_json cannot fail on strings, ints and Values.
    let _ = write!(out, "{{\"seq\":{seq},\"time\":\"{time}\",\"isc\":");
    let _ = serde_json::to_writer(&mut *out, &isc);
    let _ = write!(out, ",\"kind\":\"{}\",\"actor\":", kind.as_str());
    let _ = serde_json::to_writer(&mut *out, &actor);
    out.extend_from_slice(b",\"detail\":");
    out.extend_from_slice(detail);
    out.extend_from_slice(b",\"prev\":\"");
    out.extend_from_slice(prev.to_hex().as_bytes());
    out.push(b'"');
    let mut h = blake3::Hasher::new();
    h.update(&out[start..]);
    h.update(b"}");
    let hash = h.finalize();
    out.extend_from_slice(b",\"hash\":\"");
    out.extend_from_slice(hash.to_hex().as_bytes());
    out.extend_from_slice(b"\"}\n");
    hash
}

/// Splits a stored line (without `\n`) into the hashed body and the stored hash, or `None` when the
/// line does not end in the fixed `,"hash":"<64 hex>"}` suffix.
pub(crate) fn split_hash(line: &[u8]) -> Option<(&[u8], blake3::Hash)> {
    if line.len() < HASH_SUFFIX_LEN + 2 || !line.ends_with(b"\"}") {
        return None;
    }
    let cut = line.len() - HASH_SUFFIX_LEN;
    let suffix = &line[cut..];
    if !suffix.starts_with(b",\"hash\":\"") {
        return None;
    }
    let hash = blake3::Hash::from_bytes(from_hex::<32>(&suffix[9..9 + 64])?);
    Some((&line[..cut], hash))
}

/// The seq and kind of a line `encode_line` wrote, read without a JSON parser (opening a log
/// on every `isc run` would otherwise pay for serde_json's cold code, ~70 µs here): the line
/// starts `{"seq":N,` and the first `,"kind":"` is its kind (every field before it is a number,
/// a time, `null` or a JSON string, and no JSON string holds a raw `"`). `None` for anything
/// else, e.g. a line of another writer; callers then parse it properly.
pub(crate) fn quick_head(line: &[u8]) -> Option<(u64, &[u8])> {
    let rest = line.strip_prefix(b"{\"seq\":")?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits > 19 || rest.get(digits) != Some(&b',') {
        return None;
    }
    let seq = std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()?;
    const KIND: &[u8] = b",\"kind\":\"";
    let at = rest.windows(KIND.len()).position(|w| w == KIND)? + KIND.len();
    let len = rest[at..].iter().position(|&b| b == b'"')?;
    Some((seq, &rest[at..at + len]))
}

/// BLAKE3 over a body as defined above (body bytes followed by `}`).
pub(crate) fn hash_body(body: &[u8]) -> blake3::Hash {
    let mut h = blake3::Hasher::new();
    h.update(body);
    h.update(b"}");
    h.finalize()
}

/// The cheap view of a line the verifier and the tail scanner need.
#[derive(Deserialize)]
pub(crate) struct LineHead<'a> {
    pub seq: u64,
    #[allow(dead_code)]
    pub time: serde::de::IgnoredAny,
    #[allow(dead_code)]
    pub isc: serde::de::IgnoredAny,
    #[serde(borrow)]
    pub kind: std::borrow::Cow<'a, str>,
    #[allow(dead_code)]
    pub actor: serde::de::IgnoredAny,
    #[allow(dead_code)]
    pub detail: serde::de::IgnoredAny,
    #[serde(borrow)]
    pub prev: std::borrow::Cow<'a, str>,
    #[allow(dead_code)]
    pub hash: serde::de::IgnoredAny,
}

/// What the verifier's hot path reads of a line: seq, kind and prev.
pub(crate) struct FastHead<'a> {
    pub seq: u64,
    pub kind: &'a str,
    pub prev: blake3::Hash,
}

/// Reads seq, kind and prev of a line laid out exactly as [`encode_line`] writes it, without a
/// JSON parser: `{"seq":N,"time":"…","isc":null|"…","kind":"…","actor":…,"prev":"<hex>"`
/// followed by the hash suffix. `None` for anything else; callers then fall back to serde,
/// which names what is wrong. Only lines whose hash matches reach this in the verifier, and
/// every byte of them is covered by the chain and the checkpoint signatures, so reading the
/// fields by position cannot be fooled into accepting bytes the hash does not cover.
pub(crate) fn fast_head(line: &[u8]) -> Option<FastHead<'_>> {
    let rest = line.strip_prefix(b"{\"seq\":")?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits > 19 || (digits > 1 && rest[0] == b'0') {
        return None;
    }
    let seq = std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()?;
    let rest = rest[digits..].strip_prefix(b",\"time\":\"")?;
    let close = memchr::memchr(b'"', rest)?;
    let rest = rest[close + 1..].strip_prefix(b",\"isc\":")?;
    let rest = match rest.strip_prefix(b"null") {
        Some(r) => r,
        None => {
            let mut i = 1;
            if rest.first() != Some(&b'"') {
                return None;
            }
            loop {
                match rest.get(i)? {
                    b'\\' => i += 2,
                    b'"' => break,
                    _ => i += 1,
                }
            }
            &rest[i + 1..]
        }
    };
    let rest = rest.strip_prefix(b",\"kind\":\"")?;
    let k = rest.iter().take_while(|b| b.is_ascii_lowercase() || **b == b'_').count();
    if !rest[k..].starts_with(b"\",\"actor\":") {
        return None;
    }
    let kind = std::str::from_utf8(&rest[..k]).ok()?;
    let body = line.len().checked_sub(HASH_SUFFIX_LEN)?;
    let prev_at = body.checked_sub(PREV_FIELD_LEN)?;
    let field = &line[prev_at..body];
    if !field.starts_with(b",\"prev\":\"") || field.last() != Some(&b'"') {
        return None;
    }
    let prev = blake3::Hash::from_bytes(from_hex::<32>(&field[9..9 + 64])?);
    Some(FastHead { seq, kind, prev })
}

/// `,"prev":"<64 hex>"`.
const PREV_FIELD_LEN: usize = 9 + 64 + 1;

/// Lower-case hex of arbitrary bytes.
pub(crate) fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

/// Value of each ASCII hex digit, `0xff` for anything else (a table: the verifier decodes two
/// hashes per record, and a per-character `match` showed up as a third of its time).
const HEX_VALUE: [u8; 256] = {
    let mut t = [0xffu8; 256];
    let mut i = 0;
    while i < 10 {
        t[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        t[b'a' as usize + i] = 10 + i as u8;
        t[b'A' as usize + i] = 10 + i as u8;
        i += 1;
    }
    t
};

/// Parses lower- or upper-case hex into exactly `N` bytes.
pub(crate) fn from_hex<const N: usize>(s: impl AsRef<[u8]>) -> Option<[u8; N]> {
    let b = s.as_ref();
    if b.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    let mut bad = 0u8;
    for (o, pair) in out.iter_mut().zip(b.chunks_exact(2)) {
        let (hi, lo) = (HEX_VALUE[usize::from(pair[0])], HEX_VALUE[usize::from(pair[1])]);
        bad |= hi | lo;
        *o = (hi << 4) | (lo & 0x0f);
    }
    // Valid digits are < 16; any 0xff entry sets the high bits.
    (bad & 0xf0 == 0).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quick_head_reads_what_encode_line_wrote_and_nothing_else() {
        let mut buf = Vec::new();
        let detail = br#"{"kind":"not this","seq":7}"#;
        let fields = Fields {
            seq: 42,
            time: "2026-12-06T00:00:00.000000000Z",
            isc: Some("a\"kind\":\"x"),
            kind: Kind::Checkpoint,
            actor: Actor::Isc,
            detail,
        };
        encode_line(&mut buf, &fields, &blake3::hash(b"prev"));
        let line = &buf[..buf.len() - 1];
        assert_eq!(quick_head(line), Some((42, &b"checkpoint"[..])));
        assert_eq!(quick_head(b"{\"seq\":x,"), None);
        assert_eq!(quick_head(b"{\"time\":1}"), None);
    }
    use std::time::Duration;

    #[test]
    fn time_round_trips_and_is_fixed_width() {
        let t = UNIX_EPOCH + Duration::new(1_767_323_045, 7);
        let s = format_time(t);
        assert_eq!(s, "2026-01-02T03:04:05.000000007Z");
        assert_eq!(parse_time(&s), Some(t));
        assert_eq!(
            parse_time("2026-01-02T04:04:05.000000007+01:00"),
            Some(t),
            "offsets are applied"
        );
        assert_eq!(parse_time("2026-13-02T03:04:05Z"), None);
        assert_eq!(format_time(UNIX_EPOCH), "1970-01-01T00:00:00.000000000Z");
    }

    #[test]
    fn line_is_deterministic_and_hash_covers_body() {
        let detail = serde_json::json!({"b": 1, "a": "x\"y"}).to_string();
        let detail = detail.as_bytes();
        let prev = blake3::Hash::from_hex(GENESIS_PREV).unwrap();
        let mut a = Vec::new();
        let mut b = Vec::new();
        let t = "2026-01-02T03:04:05.000000007Z";
        let fields = Fields {
            seq: 1,
            time: t,
            isc: Some("web"),
            kind: Kind::IscStart,
            actor: Actor::Uid(7),
            detail,
        };
        let ha = encode_line(&mut a, &fields, &prev);
        let hb = encode_line(&mut b, &fields, &prev);
        assert_eq!(a, b);
        assert_eq!(ha, hb);
        let line = &a[..a.len() - 1];
        let (body, stored) = split_hash(line).unwrap();
        assert_eq!(stored, ha);
        assert_eq!(hash_body(body), ha);
        let rec: Record = serde_json::from_slice(line).unwrap();
        assert_eq!(rec.actor, Actor::Uid(7));
        assert_eq!(rec.kind, Kind::IscStart);
        assert_eq!(rec.hash, ha.to_hex().as_str());
        assert!(std::str::from_utf8(line).unwrap().starts_with(
            "{\"seq\":1,\"time\":\"2026-01-02T03:04:05.000000007Z\",\"isc\":\"web\",\"kind\":\"isc_start\",\"actor\":{\"uid\":7},\"detail\":"
        ));
    }

    #[test]
    fn fast_head_agrees_with_serde_and_falls_back_on_anything_else() {
        let prev = blake3::hash(b"x");
        for isc in [None, Some("web"), Some("we\\\"b\\\\")] {
            let detail = serde_json::json!({"k": "\"kind\":\"x\"", "n": 1}).to_string();
            let f = Fields {
                seq: 1234,
                time: "2026-01-02T03:04:05.000000007Z",
                isc,
                kind: Kind::NetDrop,
                actor: Actor::Kernel,
                detail: detail.as_bytes(),
            };
            let mut out = Vec::new();
            encode_line(&mut out, &f, &prev);
            let line = &out[..out.len() - 1];
            let h = fast_head(line).expect("fast path");
            let slow: LineHead<'_> = serde_json::from_slice(line).unwrap();
            assert_eq!(
                (h.seq, h.kind, h.prev.to_hex().as_str()),
                (slow.seq, &*slow.kind, &*slow.prev)
            );
            assert_eq!(h.kind, "net_drop");
        }
        assert!(fast_head(b"{\"seq\":01,\"time\":\"t\"").is_none());
        assert!(fast_head(b"{\"seq\": 1}").is_none());
        assert!(fast_head(b"").is_none());
    }

    #[test]
    fn kind_names_match_serde() {
        for k in
            [Kind::IscCreate, Kind::ImageIntegrityFailure, Kind::SeccompDenial, Kind::LogRotate]
        {
            assert_eq!(serde_json::to_value(k).unwrap(), k.as_str());
            assert_eq!(Kind::parse(k.as_str()), Some(k));
        }
        assert_eq!(Kind::parse("nope"), None);
    }

    #[test]
    fn hex_round_trip() {
        let bytes = [0u8, 1, 0xab, 0xff];
        assert_eq!(to_hex(&bytes), "0001abff");
        assert_eq!(from_hex::<4>("0001ABff"), Some(bytes));
        assert_eq!(from_hex::<4>("0001abf"), None);
        assert_eq!(from_hex::<2>("0g01"), None);
        assert_eq!(from_hex::<2>(b"ab:1"), None);
        assert_eq!(from_hex::<32>(GENESIS_PREV), Some([0u8; 32]));
    }
}
