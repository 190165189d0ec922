//! K evidence: parsers for `/proc/PID/{status,mountinfo,uid_map,gid_map,ns,limits,environ,
//! cmdline,net/*}` and cgroup files. Parsers take text so they are unit-tested without a
//! process; [`ProcInfo::read`] does the reading.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

/// One line of `/proc/PID/mountinfo` (proc(5)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Path of the mount's root within its filesystem (the bind source).
    pub root: String,
    pub mount_point: String,
    /// Per-mount options (`ro`, `nosuid`, ...).
    pub options: Vec<String>,
    /// Optional fields (`shared:N`, `master:N`).
    pub optional: Vec<String>,
    pub fstype: String,
    pub source: String,
    /// Super-block options (`size=...`, `upperdir=...`).
    pub super_options: Vec<String>,
}

impl Mount {
    pub fn has(&self, opt: &str) -> bool {
        self.options.iter().any(|o| o == opt)
    }
    pub fn read_only(&self) -> bool {
        self.has("ro")
    }
}

fn unescape(s: &str) -> String {
    // mountinfo escapes space, tab, newline and backslash as \ooo.
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            if let Ok(v) =
                u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 4]).unwrap_or("x"), 8)
            {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses mountinfo text.
pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    let mut v = vec![];
    for line in text.lines() {
        let Some((left, right)) = line.split_once(" - ") else { continue };
        let l: Vec<&str> = left.split(' ').collect();
        let r: Vec<&str> = right.split(' ').collect();
        if l.len() < 6 || r.len() < 3 {
            continue;
        }
        v.push(Mount {
            root: unescape(l[3]),
            mount_point: unescape(l[4]),
            options: l[5].split(',').map(str::to_string).collect(),
            optional: l[6..].iter().map(|s| s.to_string()).collect(),
            fstype: r[0].to_string(),
            source: unescape(r[1]),
            super_options: r[2].split(',').map(str::to_string).collect(),
        });
    }
    v
}

/// `Key:\tvalue` lines of /proc/PID/status.
pub fn parse_status(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect()
}

/// One line of uid_map/gid_map: inside, outside, count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdMapLine {
    pub inside: u64,
    pub outside: u64,
    pub count: u64,
}

pub fn parse_id_map(text: &str) -> Vec<IdMapLine> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<u64> = l.split_whitespace().filter_map(|x| x.parse().ok()).collect();
            (f.len() == 3).then(|| IdMapLine { inside: f[0], outside: f[1], count: f[2] })
        })
        .collect()
}

/// Maps an id inside the namespace to the host id.
pub fn map_to_host(map: &[IdMapLine], id: u64) -> Option<u64> {
    map.iter()
        .find(|m| id >= m.inside && id < m.inside + m.count)
        .map(|m| m.outside + id - m.inside)
}

/// `/proc/PID/limits`: resource name → (soft, hard), `None` for unlimited.
pub fn parse_limits(text: &str) -> BTreeMap<String, (Option<u64>, Option<u64>)> {
    let mut m = BTreeMap::new();
    for line in text.lines().skip(1) {
        if line.len() < 26 {
            continue;
        }
        let name = line[..26].trim().to_string();
        let f: Vec<&str> = line[26..].split_whitespace().collect();
        if f.len() < 2 {
            continue;
        }
        let val = |s: &str| s.parse::<u64>().ok();
        m.insert(name, (val(f[0]), val(f[1])));
    }
    m
}

/// Capability numbers set in a hex mask from status (`CapEff: 000001ffffffffff`).
pub fn cap_bits(hex: &str) -> u64 {
    u64::from_str_radix(hex.trim(), 16).unwrap_or(u64::MAX)
}

/// Capability names (without CAP_), by number (capability.h): the manifest's list, which is
/// in kernel order.
pub const CAP_NAMES: &[&str] = &isc_manifest::rules::CAPABILITIES;

pub fn cap_names(mask: u64) -> Vec<&'static str> {
    (0..64)
        .filter(|b| mask & (1u64 << b) != 0)
        .map(|b| CAP_NAMES.get(b).copied().unwrap_or("UNKNOWN"))
        .collect()
}

pub fn cap_number(name: &str) -> Option<usize> {
    let n = name.trim_start_matches("CAP_");
    CAP_NAMES.iter().position(|c| c.eq_ignore_ascii_case(n))
}

/// Listening sockets from `/proc/PID/net/{tcp,tcp6,udp,udp6}` text: (port, inode).
pub fn parse_listeners(text: &str, udp: bool) -> Vec<(u16, u64)> {
    let want = if udp { "07" } else { "0A" };
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 10 || f[3] != want {
                return None;
            }
            let port = u16::from_str_radix(f[1].rsplit(':').next()?, 16).ok()?;
            Some((port, f[9].parse().ok()?))
        })
        .collect()
}

/// What K evidence is read for one process.
#[derive(Debug, Clone, Default)]
pub struct ProcInfo {
    pub pid: i32,
    pub status: BTreeMap<String, String>,
    pub mounts: Vec<Mount>,
    pub uid_map: Vec<IdMapLine>,
    pub gid_map: Vec<IdMapLine>,
    /// Namespace kind → `kind:[inode]`.
    pub ns: BTreeMap<String, String>,
    pub limits: BTreeMap<String, (Option<u64>, Option<u64>)>,
    pub environ: Vec<String>,
    pub cmdline: Vec<String>,
    /// (proto, port, socket inode) of listening sockets in the process's netns.
    pub listeners: Vec<(&'static str, u16, u64)>,
    /// Network interfaces in the process's netns.
    pub interfaces: Vec<String>,
    pub readable: bool,
}

fn nul_list(p: PathBuf) -> Vec<String> {
    fs::read(p)
        .map(|b| {
            b.split(|c| *c == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

impl ProcInfo {
    /// Reads everything under `/proc/PID`; missing files leave fields empty.
    pub fn read(pid: i32) -> ProcInfo {
        let base = PathBuf::from(format!("/proc/{pid}"));
        let rd = |f: &str| fs::read_to_string(base.join(f)).unwrap_or_default();
        let status_text = rd("status");
        let mut listeners = vec![];
        for (f, proto, udp) in [
            ("net/tcp", "tcp", false),
            ("net/tcp6", "tcp6", false),
            ("net/udp", "udp", true),
            ("net/udp6", "udp6", true),
        ] {
            listeners.extend(parse_listeners(&rd(f), udp).into_iter().map(|(p, i)| (proto, p, i)));
        }
        let interfaces = rd("net/dev")
            .lines()
            .skip(2)
            .filter_map(|l| l.split(':').next().map(|s| s.trim().to_string()))
            .collect();
        let ns = namespaces(&base.join("ns"));
        ProcInfo {
            pid,
            readable: !status_text.is_empty(),
            status: parse_status(&status_text),
            mounts: parse_mountinfo(&rd("mountinfo")),
            uid_map: parse_id_map(&rd("uid_map")),
            gid_map: parse_id_map(&rd("gid_map")),
            ns,
            limits: parse_limits(&rd("limits")),
            environ: nul_list(base.join("environ")),
            cmdline: nul_list(base.join("cmdline")),
            listeners,
            interfaces,
        }
    }

    pub fn field(&self, k: &str) -> &str {
        self.status.get(k).map(String::as_str).unwrap_or("")
    }

    /// First value of a multi-value status line (`Uid: r e s fs`), all values.
    pub fn ids(&self, k: &str) -> Vec<u64> {
        self.field(k).split_whitespace().filter_map(|x| x.parse().ok()).collect()
    }

    pub fn caps(&self, k: &str) -> u64 {
        cap_bits(self.field(k))
    }
}

/// `/proc/PID/ns/*` link targets.
pub fn namespaces(dir: &Path) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.ends_with("_for_children") {
                continue;
            }
            if let Ok(t) = fs::read_link(e.path()) {
                m.insert(name, t.to_string_lossy().into_owned());
            }
        }
    }
    m
}

/// Pids whose parent chain reaches `ancestor` (inclusive), from /proc/PID/stat.
pub fn parent_of(pid: i32) -> Option<i32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(") ")?.1;
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// `tty_nr` from /proc/PID/stat.
pub fn tty_nr(pid: i32) -> Option<i64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(") ")?.1;
    rest.split_whitespace().nth(4)?.parse().ok()
}

/// Socket inodes held by `pid` (from `/proc/PID/fd`).
pub fn socket_inodes(pid: i32) -> Vec<u64> {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| fs::read_link(e.path()).ok())
                .filter_map(|t| {
                    let t = t.to_string_lossy().into_owned();
                    t.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
                })
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_fields_and_escapes() {
        let t = "22 1 0:21 / / ro,nosuid,nodev shared:1 - ext4 /dev/sda1 rw,errors=remount-ro\n\
                 30 22 0:30 / /tmp\\040dir rw,nosuid,nodev,noexec - tmpfs tmpfs rw,size=16384k,mode=1777\n";
        let m = parse_mountinfo(t);
        assert_eq!(m.len(), 2);
        assert!(m[0].read_only() && m[0].optional == vec!["shared:1"]);
        assert_eq!(m[1].mount_point, "/tmp dir");
        assert!(m[1].has("noexec") && m[1].super_options.iter().any(|o| o.starts_with("size=")));
    }

    #[test]
    fn id_maps_limits_caps_and_listeners() {
        let map = parse_id_map("         0     100000      65536\n");
        assert_eq!(map_to_host(&map, 1000), Some(101000));
        assert_eq!(map_to_host(&map, 70000), None);
        let lim = parse_limits(
            "Limit                     Soft Limit           Hard Limit           Units     \n\
Max core file size        0                    0                    bytes     \n\
Max open files            1024                 1024                 files     \n\
Max cpu time              unlimited            unlimited            seconds   \n",
        );
        assert_eq!(lim["Max core file size"], (Some(0), Some(0)));
        assert_eq!(lim["Max cpu time"], (None, None));
        assert_eq!(cap_names(cap_bits("0000000000200000")), vec!["SYS_ADMIN"]);
        assert_eq!(cap_number("CAP_NET_RAW"), Some(13));
        let tcp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:270F 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 12345 1 0\n\
   1: 0100007F:1F90 0100007F:D000 01 00000000:00000000 00:00000000 00000000  1000        0 12346 1 0\n";
        assert_eq!(parse_listeners(tcp, false), vec![(9999, 12345)]);
    }
}

#[cfg(test)]
mod cap_order_tests {
    use super::*;

    #[test]
    fn names_index_by_kernel_capability_number() {
        for (name, nr) in [("CHOWN", 0), ("NET_RAW", 13), ("SYS_ADMIN", 21), ("BPF", 39)] {
            assert_eq!(cap_number(name), Some(nr), "{name}");
        }
        assert_eq!(cap_names(1 << 21 | 1 << 13), vec!["NET_RAW", "SYS_ADMIN"]);
    }
}
