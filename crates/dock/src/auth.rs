//! Who is calling: the kernel's peer credentials of the API connection (SO_PEERCRED and
//! SO_PEERGROUPS, socket(7)), taken when the connection is accepted. Nothing the client sends
//! is trusted for identity.
//!
//! Root and members of the socket's group may act; everyone else gets 403. The socket's file
//! mode (0660 by default) is a first gate; this check holds even when the mode is opened up.

use std::os::fd::{AsRawFd, RawFd};

use axum::extract::connect_info::Connected;
use axum::serve::IncomingStream;
use tokio::net::UnixListener;

/// The credentials of an API peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups at connect time (SO_PEERGROUPS); empty if the kernel refused.
    pub groups: Vec<u32>,
}

impl Peer {
    /// Reads the credentials of the connected peer of `fd`.
    pub fn of_fd(fd: RawFd) -> Option<Peer> {
        let mut cred = libc::ucred { pid: 0, uid: u32::MAX, gid: u32::MAX };
        let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `cred`.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_PEERCRED,
                (&mut cred as *mut libc::ucred).cast(),
                &mut len,
            )
        };
        if rc != 0 {
            return None;
        }
        Some(Peer { pid: cred.pid, uid: cred.uid, gid: cred.gid, groups: peer_groups(fd) })
    }

    /// Root, or a member (primary or supplementary) of `group`.
    pub fn may_act(&self, group: Option<u32>) -> bool {
        self.uid == 0 || group.is_some_and(|g| self.gid == g || self.groups.contains(&g))
    }
}

/// SO_PEERGROUPS (Linux 4.13): the peer's supplementary groups, captured at connect(2).
fn peer_groups(fd: RawFd) -> Vec<u32> {
    let mut groups = vec![0u32; 64];
    loop {
        let mut len = (groups.len() * 4) as libc::socklen_t;
        // SAFETY: the buffer holds `len` bytes; on ERANGE the kernel reports the needed size.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        if rc == 0 {
            groups.truncate(len as usize / 4);
            return groups;
        }
        if std::io::Error::last_os_error().raw_os_error() == Some(libc::ERANGE)
            && (len as usize / 4) > groups.len()
        {
            groups.resize(len as usize / 4, 0);
            continue;
        }
        return vec![];
    }
}

/// Connection info handed to every request: the peer, or `None` if the kernel did not say
/// (treated as unauthenticated).
#[derive(Debug, Clone)]
pub struct PeerInfo(pub Option<Peer>);

impl Connected<IncomingStream<'_, UnixListener>> for PeerInfo {
    fn connect_info(stream: IncomingStream<'_, UnixListener>) -> Self {
        PeerInfo(Peer::of_fd(stream.io().as_raw_fd()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    #[test]
    fn peer_credentials_are_our_own() {
        let (a, _b) = UnixStream::pair().unwrap();
        let p = Peer::of_fd(a.as_raw_fd()).unwrap();
        // SAFETY: getuid/getgid cannot fail.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        assert_eq!((p.pid, p.uid, p.gid), (std::process::id() as i32, uid, gid));
    }

    #[test]
    fn who_may_act() {
        let p = |uid, gid, groups: &[u32]| Peer { pid: 1, uid, gid, groups: groups.to_vec() };
        assert!(p(0, 0, &[]).may_act(None), "root always");
        assert!(!p(1000, 1000, &[]).may_act(None), "no group: only root");
        assert!(p(1000, 77, &[]).may_act(Some(77)), "primary group");
        assert!(p(1000, 1000, &[5, 77]).may_act(Some(77)), "supplementary group");
        assert!(!p(1000, 1000, &[5]).may_act(Some(77)));
    }
}
