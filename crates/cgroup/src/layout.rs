//! Which cgroup hierarchies this host has, and where the calling process sits in each.
//!
//! Detection reads `/proc/self/cgroup` (cgroups(7): `hierarchy-ID:controller-list:cgroup-path`)
//! and `/proc/self/mountinfo` (proc(5)). The paths stored in a [`Layout`] are not the bare mount
//! points: they are the mount point joined with this process's own cgroup path, i.e. the
//! default parent below which ISC cgroups are created. That is what keeps isc from ever writing
//! at an arbitrary place in the host's tree.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::CgroupError;

/// A resource controller isc manages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Controller {
    /// Memory limit, swap, OOM events.
    Memory,
    /// CPU bandwidth (quota) and weight.
    Cpu,
    /// CPU usage accounting (v1 only; part of `cpu.stat` on v2).
    Cpuacct,
    /// Process-count limit.
    Pids,
    /// Block IO (`blkio` on v1, `io` on v2).
    Io,
    /// CPU and memory-node placement.
    Cpuset,
    /// Freezing for race-free kill on v1 (`cgroup.freeze`/`cgroup.kill` on v2 are core files).
    Freezer,
}

impl Controller {
    /// Every managed controller.
    pub const ALL: [Controller; 7] = [
        Controller::Memory,
        Controller::Cpu,
        Controller::Cpuacct,
        Controller::Pids,
        Controller::Io,
        Controller::Cpuset,
        Controller::Freezer,
    ];

    /// The v1 hierarchy name, as in `/proc/self/cgroup` and mount options.
    pub fn v1_name(self) -> &'static str {
        match self {
            Controller::Memory => "memory",
            Controller::Cpu => "cpu",
            Controller::Cpuacct => "cpuacct",
            Controller::Pids => "pids",
            Controller::Io => "blkio",
            Controller::Cpuset => "cpuset",
            Controller::Freezer => "freezer",
        }
    }

    /// The v2 controller name as listed in `cgroup.controllers`, if the controller exists on v2.
    pub fn v2_name(self) -> Option<&'static str> {
        match self {
            Controller::Memory => Some("memory"),
            Controller::Cpu => Some("cpu"),
            Controller::Pids => Some("pids"),
            Controller::Io => Some("io"),
            Controller::Cpuset => Some("cpuset"),
            Controller::Cpuacct | Controller::Freezer => None,
        }
    }
}

impl fmt::Display for Controller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.v1_name())
    }
}

/// The cgroup layout of this host, as seen by the calling process.
///
/// Every path is the directory of the calling process's own cgroup in that hierarchy (the
/// mount point joined with the path from `/proc/self/cgroup`): the default parent of ISC cgroups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// Only v1 controller hierarchies.
    V1 {
        /// Own-cgroup directory per v1 controller (co-mounted controllers share a path).
        mounts: BTreeMap<Controller, PathBuf>,
    },
    /// Only the unified (v2) hierarchy.
    V2 {
        /// Own-cgroup directory in the cgroup2 mount.
        mount: PathBuf,
    },
    /// v1 controllers plus a cgroup2 mount (systemd "hybrid"), like this CI host.
    Hybrid {
        /// Own-cgroup directory per v1 controller.
        v1: BTreeMap<Controller, PathBuf>,
        /// Own-cgroup directory in the cgroup2 mount.
        unified: PathBuf,
    },
}

impl Layout {
    /// Detect the layout from this process's `/proc/self/cgroup` and `/proc/self/mountinfo`.
    pub fn detect() -> Result<Layout, CgroupError> {
        let read = |p: &str| {
            crate::fsops::read_pseudo(Path::new(p))
                .map_err(|source| CgroupError::ReadProc { path: PathBuf::from(p), source })
        };
        let layout =
            Layout::detect_at(&read("/proc/self/cgroup")?, &read("/proc/self/mountinfo")?)?;
        tracing::debug!(?layout, "detected cgroup layout");
        Ok(layout)
    }

    /// Detect the layout from the given texts of `/proc/self/cgroup` and mountinfo; used for
    /// fake trees in tests and for inspecting another process.
    pub fn detect_at(proc_self_cgroup: &str, mountinfo: &str) -> Result<Layout, CgroupError> {
        let memberships = parse_proc_cgroup(proc_self_cgroup)?;
        let mounts = parse_mountinfo(mountinfo)?;
        let mut v1 = BTreeMap::new();
        let mut unified = None;
        for m in &memberships {
            if m.hierarchy_id == 0 && m.controllers.is_empty() {
                if let Some(mount) = mounts.iter().find(|x| x.fstype == "cgroup2") {
                    unified = Some(own_dir(mount, &m.path));
                }
                continue;
            }
            for c in Controller::ALL {
                if !m.controllers.iter().any(|n| n == c.v1_name()) {
                    continue;
                }
                let mount = mounts
                    .iter()
                    .find(|x| x.fstype == "cgroup" && x.options.iter().any(|o| o == c.v1_name()));
                if let Some(mount) = mount {
                    v1.insert(c, own_dir(mount, &m.path));
                }
            }
        }
        match (v1.is_empty(), unified) {
            (false, Some(unified)) => Ok(Layout::Hybrid { v1, unified }),
            (false, None) => Ok(Layout::V1 { mounts: v1 }),
            (true, Some(mount)) => Ok(Layout::V2 { mount }),
            (true, None) => Err(CgroupError::NoHierarchy {
                reason:
                    "no line of /proc/self/cgroup matches a mounted cgroup or cgroup2 filesystem"
                        .into(),
            }),
        }
    }

    /// The v1 controller directories, if any.
    pub fn v1(&self) -> Option<&BTreeMap<Controller, PathBuf>> {
        match self {
            Layout::V1 { mounts } => Some(mounts),
            Layout::Hybrid { v1, .. } => Some(v1),
            Layout::V2 { .. } => None,
        }
    }

    /// The unified (v2) directory, if any.
    pub fn unified(&self) -> Option<&Path> {
        match self {
            Layout::V2 { mount } => Some(mount),
            Layout::Hybrid { unified, .. } => Some(unified),
            Layout::V1 { .. } => None,
        }
    }
}

struct Membership {
    hierarchy_id: u32,
    controllers: Vec<String>,
    path: String,
}

struct Mount {
    root: String,
    mount_point: PathBuf,
    fstype: String,
    options: Vec<String>,
}

fn parse_proc_cgroup(text: &str) -> Result<Vec<Membership>, CgroupError> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let bad = || CgroupError::Parse {
            file: "/proc/self/cgroup".into(),
            line: line.into(),
            expected: "hierarchy-ID:controller-list:cgroup-path",
        };
        let mut parts = line.splitn(3, ':');
        let id = parts.next().and_then(|s| s.parse().ok()).ok_or_else(bad)?;
        let ctrls = parts.next().ok_or_else(bad)?;
        let path = parts.next().ok_or_else(bad)?;
        out.push(Membership {
            hierarchy_id: id,
            controllers: ctrls.split(',').filter(|s| !s.is_empty()).map(String::from).collect(),
            path: path.to_string(),
        });
    }
    Ok(out)
}

fn parse_mountinfo(text: &str) -> Result<Vec<Mount>, CgroupError> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let bad = || CgroupError::Parse {
            file: "mountinfo".into(),
            line: line.into(),
            expected:
                "ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTS",
        };
        let (pre, post) = line.split_once(" - ").ok_or_else(bad)?;
        // Hosts have hundreds of mounts and this runs on every ISC start: look at the file
        // system type before splitting the rest of the line.
        let fstype = post.split(' ').next().unwrap_or_default();
        if fstype != "cgroup" && fstype != "cgroup2" {
            continue;
        }
        let pre: Vec<&str> = pre.split(' ').collect();
        let post: Vec<&str> = post.split(' ').collect();
        if pre.len() < 6 || post.len() < 3 {
            return Err(bad());
        }
        out.push(Mount {
            root: unescape(pre[3]),
            mount_point: PathBuf::from(unescape(pre[4])),
            fstype: fstype.to_string(),
            options: post[2].split(',').map(String::from).collect(),
        });
    }
    Ok(out)
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo` octal (proc(5)).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The directory of `cgroup_path` inside `mount`: paths in /proc/self/cgroup are relative to
/// the hierarchy root, mounts may expose a subtree (`root` field), so strip that prefix.
fn own_dir(mount: &Mount, cgroup_path: &str) -> PathBuf {
    let rel = cgroup_path.strip_prefix(mount.root.trim_end_matches('/')).unwrap_or(cgroup_path);
    let rel = rel.trim_start_matches('/');
    if rel.is_empty() {
        mount.mount_point.clone()
    } else {
        mount.mount_point.join(rel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID_CGROUP: &str = "9:name=systemd:/\n8:pids:/\n7:blkio:/\n6:freezer:/\n5:devices:/\n\
4:memory:/process_api/81ede\n3:cpuset:/\n2:cpuacct:/\n1:cpu:/\n0::/\n";
    const HYBRID_MOUNTINFO: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 31 0:33 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
38 31 0:35 / /sys/fs/cgroup/blkio rw,relatime - cgroup cgroup rw,blkio
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn hybrid_host_like_ci() {
        let l = Layout::detect_at(HYBRID_CGROUP, HYBRID_MOUNTINFO).unwrap();
        let Layout::Hybrid { v1, unified } = l else { panic!("expected hybrid, got {l:?}") };
        assert_eq!(unified, PathBuf::from("/sys/fs/cgroup/unified"));
        assert_eq!(
            v1[&Controller::Memory],
            PathBuf::from("/sys/fs/cgroup/memory/process_api/81ede")
        );
        assert_eq!(v1[&Controller::Io], PathBuf::from("/sys/fs/cgroup/blkio"));
        assert_eq!(v1[&Controller::Cpuacct], PathBuf::from("/sys/fs/cgroup/cpuacct"));
        assert_eq!(v1.len(), 7, "devices and name=systemd are not managed: {v1:?}");
    }

    #[test]
    fn pure_v1_with_comounted_cpu_cpuacct() {
        let cg = "5:cpu,cpuacct:/user.slice\n4:memory:/user.slice/session-1.scope\n3:pids:/x\n";
        let mi = "\
25 24 0:22 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid shared:8 - cgroup cgroup rw,cpu,cpuacct
26 24 0:23 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
27 24 0:24 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids
";
        let l = Layout::detect_at(cg, mi).unwrap();
        let Layout::V1 { mounts } = l else { panic!("expected v1, got {l:?}") };
        let cpu = PathBuf::from("/sys/fs/cgroup/cpu,cpuacct/user.slice");
        assert_eq!(mounts[&Controller::Cpu], cpu);
        assert_eq!(mounts[&Controller::Cpuacct], cpu);
        assert_eq!(
            mounts[&Controller::Memory],
            PathBuf::from("/sys/fs/cgroup/memory/user.slice/session-1.scope")
        );
        assert_eq!(mounts.len(), 4);
    }

    #[test]
    fn pure_v2_with_subtree_root_and_escaped_mountpoint() {
        let cg = "0::/user.slice/user-0.slice/session-3.scope\n";
        let mi = "\
22 1 8:1 / / rw - ext4 /dev/sda1 rw
30 22 0:26 /user.slice /mnt/cg\\040two rw,nosuid - cgroup2 cgroup2 rw,nsdelegate
";
        let l = Layout::detect_at(cg, mi).unwrap();
        assert_eq!(
            l,
            Layout::V2 { mount: PathBuf::from("/mnt/cg two/user-0.slice/session-3.scope") }
        );
        assert!(l.v1().is_none());
    }

    #[test]
    fn nothing_mounted_is_an_error() {
        let err = Layout::detect_at("0::/\n", "22 1 8:1 / / rw - ext4 /dev/sda1 rw\n").unwrap_err();
        assert!(matches!(err, CgroupError::NoHierarchy { .. }), "{err}");
    }

    #[test]
    fn malformed_lines_are_reported() {
        let err = Layout::detect_at("garbage\n", HYBRID_MOUNTINFO).unwrap_err();
        assert!(err.to_string().contains("garbage"), "{err}");
        let err = Layout::detect_at(HYBRID_CGROUP, "1 2 3\n").unwrap_err();
        assert!(err.to_string().contains("mountinfo"), "{err}");
    }
}
