//! The ISC's network namespace, made ahead of time by a helper thread.
//!
//! Creating a network namespace is the costliest part of `clone3` (~0.45 ms here: every
//! protocol's per-namespace init, the loopback device, the sysctl tables). Nothing in it
//! depends on the manifest, so a thread of the monitor makes it while the main thread loads
//! the manifest, opens the audit trail and creates the cgroup, and brings `lo` up in it. Just
//! before `clone3` the main thread enters it (`setns(2)` moves only the calling thread), clones
//! without `CLONE_NEWNET` so the child is born in it, and returns to the host's.
//!
//! That namespace is owned by the host's user namespace, not the ISC's: root inside the ISC
//! holds no capability over its own network (no address, route or firewall change, no raw
//! socket), as with podman's netavark-made namespaces. An ISC whose manifest keeps a `NET_*`
//! capability needs that power, so it still gets a namespace of its own user namespace
//! (`needs_own`).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Mutex;

use crate::beside::{self, Beside};

use crate::spec::IscSpec;

/// Errors of entering or leaving a prepared namespace around `clone3`.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// The prepared namespace could not be made (the ISC then gets its own from `clone3`).
    #[error("preparing the network namespace ({step}): {source}")]
    Prepare { step: &'static str, source: io::Error },
    /// The monitor's thread could not enter the prepared namespace.
    #[error("entering the prepared network namespace: {0}")]
    Enter(io::Error),
    /// The monitor's thread could not return to the host's namespace: it must not go on
    /// (host-side network setup would land in the ISC's namespace).
    #[error("returning to the host's network namespace after clone: {0}")]
    Leave(io::Error),
}

/// A network namespace being made by a helper thread (see the module documentation).
#[derive(Debug)]
pub struct PreparedNetns {
    thread: Mutex<Option<Beside<Result<OwnedFd, NetnsError>>>>,
}

impl PreparedNetns {
    /// Starts the helper thread. Never fails: if the thread cannot start, `take` says so and
    /// the ISC gets its namespace from `clone3` as before.
    pub fn spawn() -> Self {
        let thread = beside::spawn("isc-netns", 64 * 1024, make_in_this_thread).ok();
        Self { thread: Mutex::new(thread) }
    }

    /// Waits for the namespace; `None` (logged) when it could not be made or was taken.
    pub(crate) fn take(&self) -> Option<OwnedFd> {
        let handle = self.thread.lock().ok()?.take()?;
        match handle.join()? {
            Ok(fd) => Some(fd),
            Err(e) => {
                tracing::warn!(error = %e, "falling back to a network namespace made by clone3");
                None
            }
        }
    }
}

/// Does this ISC need a network namespace owned by its own user namespace? Only if the
/// manifest keeps a capability that acts on the network: those are checked against the
/// namespace's owner (user_namespaces(7), "Interaction of namespaces and capabilities").
pub(crate) fn needs_own(spec: &IscSpec) -> bool {
    keeps_network_capability(&spec.capabilities) || spec.weakening.keep_cap_sys_admin
}

fn keeps_network_capability(capabilities: &[String]) -> bool {
    capabilities.iter().any(|c| c.trim_start_matches("CAP_").starts_with("NET_"))
}

/// Runs on the helper thread: a new network namespace for this thread only (CLONE_NEWNET,
/// unlike CLONE_NEWUSER or CLONE_NEWNS, is allowed in a multi-threaded process), `lo` up, and
/// a descriptor that keeps it alive after the thread exits.
fn make_in_this_thread() -> Result<OwnedFd, NetnsError> {
    // BLAKE3 picks its SIMD code by CPUID on first use, and a CPUID exits to the hypervisor in
    // a VM (~7 µs each): this thread pays that, beside the main thread, which hashes soon after
    // (the audit trail's head, the spec) and then finds the answer cached.
    let _ = blake3::hash(b"");
    // SAFETY: unshare with one namespace flag; it changes only this thread's nsproxy.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return Err(NetnsError::Prepare { step: "unshare", source: io::Error::last_os_error() });
    }
    bring_up_loopback().map_err(|source| NetnsError::Prepare { step: "bringing up lo", source })?;
    open_own_netns().map_err(|source| NetnsError::Prepare { step: "opening it", source })
}

/// `/proc/thread-self/ns/net`: the calling thread's network namespace.
fn open_own_netns() -> io::Result<OwnedFd> {
    // SAFETY: NUL-terminated literal path; the returned fd is owned below.
    let fd = unsafe {
        libc::open(c"/proc/thread-self/ns/net".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC)
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn setns_net(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: setns on a namespace descriptor we own; it moves only the calling thread.
    if unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The calling thread inside a prepared namespace until [`Entered::leave`].
#[must_use = "the thread stays in the ISC's namespace until `leave`"]
pub(crate) struct Entered {
    host: OwnedFd,
}

impl Entered {
    /// Moves the calling thread into `netns`, remembering the one it was in.
    pub(crate) fn enter(netns: &OwnedFd) -> Result<Self, NetnsError> {
        let host = open_own_netns().map_err(NetnsError::Enter)?;
        setns_net(netns).map_err(NetnsError::Enter)?;
        Ok(Self { host })
    }

    /// Moves the calling thread back to the namespace it was in before `enter`.
    pub(crate) fn leave(self) -> Result<(), NetnsError> {
        setns_net(&self.host).map_err(NetnsError::Leave)
    }
}

/// A new network namespace starts with `lo` present but down (netdevice(7)), so even
/// 127.0.0.1 is unreachable; "loopback only" (no `[network]`) means `lo` up and nothing else.
/// The caller needs CAP_NET_ADMIN over the namespace it is in.
pub(crate) fn bring_up_loopback() -> io::Result<()> {
    // SAFETY: socket(2) with constant arguments; the fd is owned (and closed) right below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nobody else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: an all-zero ifreq is a valid value; the name "lo" fits IFNAMSIZ with its NUL.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(b"lo") {
        *d = *s as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write `req`, which outlives both calls; the
    // union member ifru_flags is the one these two ioctls use.
    unsafe {
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) != 0 {
            return Err(io::Error::last_os_error());
        }
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inode(path: &str) -> u64 {
        std::os::linux::fs::MetadataExt::st_ino(&std::fs::metadata(path).unwrap())
    }

    #[test]
    fn the_prepared_namespace_is_new_has_lo_up_and_the_thread_returns_home() {
        // SAFETY: geteuid cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root");
            return;
        }
        let host = inode("/proc/thread-self/ns/net");
        let prepared = PreparedNetns::spawn();
        let fd = prepared.take().expect("namespace made");
        assert!(prepared.take().is_none(), "taken once");
        let entered = Entered::enter(&fd).unwrap();
        let inside = inode("/proc/thread-self/ns/net");
        let lo_flags = loopback_flags();
        entered.leave().unwrap();
        assert_ne!(inside, host, "a new namespace");
        assert_ne!(lo_flags & libc::IFF_UP as libc::c_short, 0, "lo is up");
        assert_eq!(inode("/proc/thread-self/ns/net"), host, "back in the host's");
    }

    /// `lo`'s flags in the calling thread's namespace (/sys would show the mounter's).
    fn loopback_flags() -> libc::c_short {
        // SAFETY: constant arguments; the fd is owned right away.
        let sock =
            unsafe { OwnedFd::from_raw_fd(libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0)) };
        // SAFETY: an all-zero ifreq is valid; SIOCGIFFLAGS fills the flags member.
        unsafe {
            let mut req: libc::ifreq = std::mem::zeroed();
            for (d, c) in req.ifr_name.iter_mut().zip(b"lo") {
                *d = *c as libc::c_char;
            }
            assert_eq!(libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req), 0);
            req.ifr_ifru.ifru_flags
        }
    }

    #[test]
    fn only_network_capabilities_need_a_namespace_of_the_isc_itself() {
        assert!(!keeps_network_capability(&[]));
        assert!(!keeps_network_capability(&["CHOWN".into()]));
        assert!(keeps_network_capability(&["CHOWN".into(), "NET_BIND_SERVICE".into()]));
        assert!(keeps_network_capability(&["CAP_NET_RAW".into()]));
    }
}
