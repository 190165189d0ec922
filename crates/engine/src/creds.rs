//! Credentials: a host UID/GID range unique to each ISC, the user-namespace maps, and the drop
//! to the service's ids with only the declared capabilities.

use std::collections::HashSet;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use caps::{CapSet, Capability, CapsHashSet};

/// Host ids handed to ISCs start here; each ISC gets `RANGE_SIZE` consecutive ids.
/// Far above any distribution's system and login ranges and above the usual /etc/subuid ranges.
pub const DEFAULT_UID_BASE: u32 = 1_000_000_000;
/// Container ids 0..65535, as in every OCI runtime.
pub const RANGE_SIZE: u32 = 65_536;
/// How many ranges the allocator hands out (the Dock's config can change it).
pub const DEFAULT_SLOTS: u32 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum CredsError {
    #[error("UID range lock directory {path}: {source}")]
    LockDir { path: PathBuf, source: io::Error },
    #[error("no free host UID range: all {slots} ranges are held by running ISCs; fix: stop an ISC or raise the slot count")]
    Exhausted { slots: u32 },
    #[error("writing {path} for the ISC's user namespace: {source}")]
    IdMap { path: PathBuf, source: io::Error },
    #[error(
        "unknown capability `{0}`; fix: use a name from capabilities(7), e.g. NET_BIND_SERVICE"
    )]
    UnknownCapability(String),
    #[error("dropping supplementary groups: {0}")]
    Groups(io::Error),
    #[error("setresgid({gid}): {source}")]
    SetGid { gid: u32, source: io::Error },
    #[error("setresuid({uid}): {source}")]
    SetUid { uid: u32, source: io::Error },
    #[error("capability set {set}: {detail}")]
    Caps { set: &'static str, detail: String },
    #[error("prctl({what}): {source}")]
    Prctl { what: &'static str, source: io::Error },
}

/// A host id range held for as long as this value lives (an flock on its slot file, so a
/// crashed monitor releases it with its last fd).
#[derive(Debug)]
pub struct UidRange {
    pub host_base: u32,
    pub slot: u32,
    _lock: crate::state::LockFile,
}

impl UidRange {
    pub fn lock(&self) -> &crate::state::LockFile {
        &self._lock
    }

    /// The range a previous image of this process held (a woken monitor's).
    pub fn adopt(host_base: u32, slot: u32, lock: crate::state::LockFile) -> UidRange {
        UidRange { host_base, slot, _lock: lock }
    }

    /// Takes the first free slot, starting at a point derived from `hint` (the ISC name), so
    /// ISCs usually keep the same range across restarts and allocation is O(1) in practice.
    pub fn allocate(
        lock_dir: &Path,
        base: u32,
        slots: u32,
        hint: &str,
    ) -> Result<Self, CredsError> {
        fs::create_dir_all(lock_dir)
            .map_err(|source| CredsError::LockDir { path: lock_dir.into(), source })?;
        let start = (blake3::hash(hint.as_bytes()).as_bytes()[0] as u32
            | (blake3::hash(hint.as_bytes()).as_bytes()[1] as u32) << 8)
            % slots;
        for i in 0..slots {
            let slot = (start + i) % slots;
            let path = lock_dir.join(format!("{slot}.lock"));
            match crate::state::LockFile::try_acquire(&path) {
                Ok(Some(lock)) => {
                    return Ok(Self { host_base: base + slot * RANGE_SIZE, slot, _lock: lock })
                }
                Ok(None) => {}
                Err(source) => return Err(CredsError::LockDir { path, source }),
            }
        }
        Err(CredsError::Exhausted { slots })
    }
}

/// Writes `setgroups=deny`, `uid_map` and `gid_map` for the child `pid` (parent side).
/// setgroups must be denied before gid_map is written (user_namespaces(7)).
pub fn write_id_maps(pid: i32, host_base: u32) -> Result<(), CredsError> {
    let line = format!("0 {host_base} {RANGE_SIZE}\n");
    for (file, content) in
        [("setgroups", "deny\n"), ("uid_map", line.as_str()), ("gid_map", line.as_str())]
    {
        let path = PathBuf::from(format!("/proc/{pid}/{file}"));
        OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|mut f| f.write_all(content.as_bytes()))
            .map_err(|source| CredsError::IdMap { path, source })?;
    }
    Ok(())
}

/// Parses declared capability names into the kernel's.
pub fn parse_capabilities(names: &[String]) -> Result<CapsHashSet, CredsError> {
    names
        .iter()
        .map(|n| {
            let upper = n.to_ascii_uppercase();
            let full = if upper.starts_with("CAP_") { upper } else { format!("CAP_{upper}") };
            Capability::from_str(&full).map_err(|_| CredsError::UnknownCapability(n.clone()))
        })
        .collect()
}

fn caps_err(set: &'static str) -> impl Fn(caps::errors::CapsError) -> CredsError {
    move |e| CredsError::Caps { set, detail: e.to_string() }
}

/// Switches to the service's ids keeping only `keep`: bounding set first (needs CAP_SETPCAP,
/// which we still hold), then ids with KEEPCAPS so declared caps survive, then the other sets,
/// and ambient last so they survive execve for a non-root service.
pub fn drop_to_service(uid: u32, gid: u32, keep: &CapsHashSet) -> Result<(), CredsError> {
    for cap in caps::all() {
        if !keep.contains(&cap) {
            caps::drop(None, CapSet::Bounding, cap).map_err(caps_err("bounding"))?;
        }
    }
    if !keep.is_empty() {
        prctl(libc::PR_SET_KEEPCAPS, 1, "PR_SET_KEEPCAPS")?;
    }
    // SAFETY: plain id syscalls on the current (single-threaded) process.
    if unsafe { libc::setresgid(gid, gid, gid) } != 0 {
        return Err(CredsError::SetGid { gid, source: io::Error::last_os_error() });
    }
    // SAFETY: as above.
    if unsafe { libc::setresuid(uid, uid, uid) } != 0 {
        return Err(CredsError::SetUid { uid, source: io::Error::last_os_error() });
    }
    let kept: HashSet<Capability> = keep.iter().copied().collect();
    caps::set(None, CapSet::Effective, &kept).map_err(caps_err("effective"))?;
    caps::set(None, CapSet::Permitted, &kept).map_err(caps_err("permitted"))?;
    caps::set(None, CapSet::Inheritable, &kept).map_err(caps_err("inheritable"))?;
    caps::clear(None, CapSet::Ambient).map_err(caps_err("ambient"))?;
    if uid != 0 {
        for cap in keep {
            caps::raise(None, CapSet::Ambient, *cap).map_err(caps_err("ambient"))?;
        }
    }
    Ok(())
}

fn prctl(option: libc::c_int, arg: libc::c_ulong, what: &'static str) -> Result<(), CredsError> {
    // SAFETY: prctl(2) with integer arguments only.
    if unsafe { libc::prctl(option, arg, 0, 0, 0) } != 0 {
        return Err(CredsError::Prctl { what, source: io::Error::last_os_error() });
    }
    Ok(())
}

/// `no_new_privs`: execve can never grant privileges again (setuid bits, file caps).
pub fn set_no_new_privs() -> Result<(), CredsError> {
    prctl(libc::PR_SET_NO_NEW_PRIVS, 1, "PR_SET_NO_NEW_PRIVS")
}

/// Non-dumpable: no core dumps, and /proc/PID of this process (PID 1) is not accessible to the
/// service, which closes the /proc/1/exe overwrite of CVE-2019-5736.
pub fn set_non_dumpable() -> Result<(), CredsError> {
    prctl(libc::PR_SET_DUMPABLE, 0, "PR_SET_DUMPABLE")
}

/// Drops the monitor's own supplementary groups before clone: with `setgroups=deny` the child
/// could never drop host gid 0 from its groups itself.
pub fn clear_supplementary_groups() -> Result<(), CredsError> {
    // SAFETY: setgroups(0, NULL) clears the list; allowed for host root.
    if unsafe { libc::setgroups(0, std::ptr::null()) } != 0 {
        return Err(CredsError::Groups(io::Error::last_os_error()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capability_names_accept_both_spellings() {
        let set = parse_capabilities(&["net_bind_service".into(), "CAP_CHOWN".into()]).unwrap();
        assert!(set.contains(&Capability::CAP_NET_BIND_SERVICE));
        assert!(set.contains(&Capability::CAP_CHOWN));
        assert!(matches!(
            parse_capabilities(&["FLY".into()]),
            Err(CredsError::UnknownCapability(n)) if n == "FLY"
        ));
    }

    #[test]
    fn two_ranges_held_at_once_differ_and_release_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let a = UidRange::allocate(dir.path(), DEFAULT_UID_BASE, 4, "same").unwrap();
        let b = UidRange::allocate(dir.path(), DEFAULT_UID_BASE, 4, "same").unwrap();
        assert_ne!(a.host_base, b.host_base);
        assert_eq!((b.host_base - DEFAULT_UID_BASE) % RANGE_SIZE, 0);
        let slot = a.slot;
        drop(a);
        assert!(!dir.path().join(format!("{slot}.lock")).exists(), "released: no lock file left");
        let c = UidRange::allocate(dir.path(), DEFAULT_UID_BASE, 4, "same").unwrap();
        assert_eq!(c.slot, slot, "a released range is reused");
    }

    #[test]
    fn exhaustion_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let _a = UidRange::allocate(dir.path(), DEFAULT_UID_BASE, 1, "x").unwrap();
        let e = UidRange::allocate(dir.path(), DEFAULT_UID_BASE, 1, "x").unwrap_err();
        assert!(e.to_string().contains("no free host UID range"));
    }
}
