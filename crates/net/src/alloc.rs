//! Persistent address allocator: one /31 (IPv4) and one /127 (IPv6) per ISC.
//!
//! Slot `n` of the configured prefixes gives the host side `base + 2n` and the ISC side
//! `base + 2n + 1` (RFC 3021 point-to-point /31; the IPv6 /127 follows RFC 6164). The state
//! lives in `<state_dir>/leases.json`, guarded by an exclusive `flock(2)` on
//! `<state_dir>/leases.lock` and replaced by write-to-temp + `rename(2)`, so a crash never leaves
//! a torn file and two Dock processes never hand out the same slot.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use ipnet::{Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

/// Errors of the lease allocator.
#[derive(Debug, thiserror::Error)]
pub enum AllocError {
    #[error(
        "cannot create the network state directory {path}: {source} (check --root and permissions)"
    )]
    StateDir { path: PathBuf, source: std::io::Error },
    #[error("cannot lock {path}: {source}")]
    Lock { path: PathBuf, source: std::io::Error },
    #[error("cannot read lease file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("lease file {path} is corrupt: {source}; move it away and run a full reconcile")]
    Corrupt { path: PathBuf, source: serde_json::Error },
    #[error("cannot write lease file {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("ISC {id} already holds a network lease; tear it down (or release it) before starting again")]
    AlreadyLeased { id: String },
    #[error("host interface name {if_host} is already used by ISC {holder}; choose ISC ids that differ in their first 12 characters")]
    InterfaceTaken { if_host: String, holder: String },
    #[error("no free address pair left in {v4} / {v6}; enlarge the prefixes or stop ISCs")]
    Exhausted { v4: Ipv4Net, v6: Ipv6Net },
    #[error(
        "prefix {prefix} is too small: it needs room for at least one /31 (IPv4) or /127 (IPv6)"
    )]
    PrefixTooSmall { prefix: String },
}

/// One held lease: the address pair of one ISC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// ISC id the lease belongs to.
    pub id: String,
    /// Slot index inside the prefixes.
    pub slot: u32,
    /// Host-side interface name (`isc<short>`).
    pub if_host: String,
    /// Host side IPv4 address (even).
    pub host_v4: Ipv4Addr,
    /// ISC side IPv4 address (odd).
    pub isc_v4: Ipv4Addr,
    /// Host side IPv6 address (even).
    pub host_v6: Ipv6Addr,
    /// ISC side IPv6 address (odd).
    pub isc_v6: Ipv6Addr,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct LeaseFile {
    leases: BTreeMap<String, Lease>,
}

/// The allocator over a state directory and a pair of prefixes.
#[derive(Debug, Clone)]
pub struct Allocator {
    dir: PathBuf,
    v4: Ipv4Net,
    v6: Ipv6Net,
}

/// An exclusive lock on the lease file, released when dropped (closing the fd drops the flock).
struct LockGuard {
    _file: File,
}

impl Allocator {
    /// An allocator storing its state in `dir` and handing out pairs from `v4` and `v6`.
    pub fn new(dir: &Path, v4: Ipv4Net, v6: Ipv6Net) -> Result<Self, AllocError> {
        if v4.prefix_len() > 31 {
            return Err(AllocError::PrefixTooSmall { prefix: v4.to_string() });
        }
        if v6.prefix_len() > 127 {
            return Err(AllocError::PrefixTooSmall { prefix: v6.to_string() });
        }
        Ok(Allocator { dir: dir.to_path_buf(), v4: v4.trunc(), v6: v6.trunc() })
    }

    fn file_path(&self) -> PathBuf {
        self.dir.join("leases.json")
    }

    fn lock(&self) -> Result<LockGuard, AllocError> {
        std::fs::create_dir_all(&self.dir)
            .map_err(|source| AllocError::StateDir { path: self.dir.clone(), source })?;
        let path = self.dir.join("leases.lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|source| AllocError::Lock { path: path.clone(), source })?;
        loop {
            // SAFETY: flock(2) on a file descriptor we own; it only takes an advisory lock.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
            if rc == 0 {
                break;
            }
            let err = std::io::Error::last_os_error();
            if err.kind() != std::io::ErrorKind::Interrupted {
                return Err(AllocError::Lock { path, source: err });
            }
        }
        Ok(LockGuard { _file: file })
    }

    fn load(&self) -> Result<LeaseFile, AllocError> {
        let path = self.file_path();
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|source| AllocError::Corrupt { path, source }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(LeaseFile::default()),
            Err(source) => Err(AllocError::Read { path, source }),
        }
    }

    fn store(&self, state: &LeaseFile) -> Result<(), AllocError> {
        let path = self.file_path();
        let tmp = self.dir.join(".leases.json.tmp");
        let werr = |source| AllocError::Write { path: path.clone(), source };
        let bytes = serde_json::to_vec_pretty(state).expect("lease file serialises");
        let mut f = File::create(&tmp).map_err(werr)?;
        f.write_all(&bytes).map_err(werr)?;
        f.sync_all().map_err(werr)?;
        std::fs::rename(&tmp, &path).map_err(werr)?;
        Ok(())
    }

    fn slots(&self) -> u64 {
        let v4 = 1u64 << (31 - self.v4.prefix_len());
        let v6_bits = 127 - u32::from(self.v6.prefix_len());
        let v6 = if v6_bits >= 63 { u64::MAX } else { 1u64 << v6_bits };
        v4.min(v6).min(u64::from(u32::MAX))
    }

    fn lease_for(&self, id: &str, slot: u32) -> Lease {
        let base4 = u32::from(self.v4.network());
        let base6 = u128::from(self.v6.network());
        let host4 = base4 + 2 * slot;
        let host6 = base6 + 2 * u128::from(slot);
        Lease {
            id: id.to_string(),
            slot,
            if_host: host_ifname(id),
            host_v4: Ipv4Addr::from(host4),
            isc_v4: Ipv4Addr::from(host4 + 1),
            host_v6: Ipv6Addr::from(host6),
            isc_v6: Ipv6Addr::from(host6 + 1),
        }
    }

    /// Take the lowest free slot for `id`. Fails if `id` already holds one.
    pub fn allocate(&self, id: &str) -> Result<Lease, AllocError> {
        let _guard = self.lock()?;
        let mut state = self.load()?;
        if state.leases.contains_key(id) {
            return Err(AllocError::AlreadyLeased { id: id.to_string() });
        }
        let if_host = host_ifname(id);
        if let Some(holder) = state.leases.values().find(|l| l.if_host == if_host) {
            return Err(AllocError::InterfaceTaken { if_host, holder: holder.id.clone() });
        }
        let used: std::collections::BTreeSet<u32> = state.leases.values().map(|l| l.slot).collect();
        let slot = (0..self.slots())
            .map(|s| s as u32)
            .find(|s| !used.contains(s))
            .ok_or(AllocError::Exhausted { v4: self.v4, v6: self.v6 })?;
        let lease = self.lease_for(id, slot);
        state.leases.insert(id.to_string(), lease.clone());
        self.store(&state)?;
        tracing::debug!(isc = id, slot, v4 = %lease.isc_v4, v6 = %lease.isc_v6, "network lease allocated");
        Ok(lease)
    }

    /// Release the lease of `id`; returns whether one was held.
    pub fn release(&self, id: &str) -> Result<bool, AllocError> {
        let _guard = self.lock()?;
        let mut state = self.load()?;
        let held = state.leases.remove(id).is_some();
        if held {
            self.store(&state)?;
        }
        Ok(held)
    }

    /// Every lease currently held (for reconcile after a crash and for leak checks).
    pub fn leases(&self) -> Result<Vec<Lease>, AllocError> {
        let _guard = self.lock()?;
        Ok(self.load()?.leases.into_values().collect())
    }
}

/// Host-side interface name for an ISC id: `isc` + up to 12 id characters (IFNAMSIZ is 16
/// including the NUL, see netdevice(7)).
pub fn host_ifname(id: &str) -> String {
    let short: String = id.chars().take(12).collect();
    format!("isc{short}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alloc(dir: &Path, v4: &str) -> Allocator {
        Allocator::new(dir, v4.parse().unwrap(), "fd69:7363::/48".parse().unwrap()).unwrap()
    }

    #[test]
    fn pairs_are_even_odd_and_unique() {
        let dir = tempfile::tempdir().unwrap();
        let a = alloc(dir.path(), "10.88.0.0/16");
        let l0 = a.allocate("alpha").unwrap();
        let l1 = a.allocate("beta").unwrap();
        assert_eq!(l0.host_v4, Ipv4Addr::new(10, 88, 0, 0));
        assert_eq!(l0.isc_v4, Ipv4Addr::new(10, 88, 0, 1));
        assert_eq!(l1.host_v4, Ipv4Addr::new(10, 88, 0, 2));
        assert_eq!(l1.isc_v6, "fd69:7363::3".parse::<Ipv6Addr>().unwrap());
        assert_eq!(l1.if_host, "iscbeta");
    }

    #[test]
    fn held_lease_is_never_reissued_and_release_frees_it() {
        let dir = tempfile::tempdir().unwrap();
        let a = alloc(dir.path(), "10.88.0.0/30");
        let l0 = a.allocate("a").unwrap();
        let _l1 = a.allocate("b").unwrap();
        assert!(matches!(a.allocate("c"), Err(AllocError::Exhausted { .. })));
        assert!(matches!(a.allocate("a"), Err(AllocError::AlreadyLeased { .. })));
        // A second allocator over the same directory sees the same state (persistence).
        let again = alloc(dir.path(), "10.88.0.0/30");
        assert!(again.release("a").unwrap());
        assert!(!again.release("a").unwrap());
        let l2 = a.allocate("c").unwrap();
        assert_eq!(l2.slot, l0.slot);
        assert_eq!(a.leases().unwrap().len(), 2);
    }

    #[test]
    fn interface_name_collisions_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let a = alloc(dir.path(), "10.88.0.0/16");
        a.allocate("abcdefghijklm1").unwrap();
        let err = a.allocate("abcdefghijklm2").unwrap_err();
        assert!(matches!(err, AllocError::InterfaceTaken { .. }), "{err}");
        assert!(host_ifname("abcdefghijklmnop").len() <= 15);
    }

    #[test]
    fn corrupt_state_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("leases.json"), b"{not json").unwrap();
        let a = alloc(dir.path(), "10.88.0.0/16");
        assert!(matches!(a.allocate("x"), Err(AllocError::Corrupt { .. })));
    }
}
