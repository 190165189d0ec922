//! Control messages that carry file descriptors (SCM_RIGHTS, unix(7)) over the monitor–child
//! channel: the monitor opens what the child must not open itself (e.g. the cgroup v1 `tasks`
//! files, which the child can no longer reach by path once it has pivoted into the image).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::channel::{Channel, ChannelError};

/// More than any host has cgroup v1 hierarchies.
pub const MAX_FDS: usize = 16;
const MAX_MESSAGE: usize = 4096;

/// Space for the SCM_RIGHTS header and `MAX_FDS` descriptors, aligned for `cmsghdr`.
#[repr(C, align(8))]
struct CmsgBuf([u8; 128]);

fn cmsg_space(n: usize) -> usize {
    // SAFETY: CMSG_SPACE is pure arithmetic.
    unsafe { libc::CMSG_SPACE((n * std::mem::size_of::<RawFd>()) as u32) as usize }
}

/// Sends `msg` with `fds` attached (the receiver gets its own copies; ours stay open).
pub fn send_with_fds<T: Serialize>(
    chan: &Channel,
    msg: &T,
    fds: &[RawFd],
) -> Result<(), ChannelError> {
    if fds.len() > MAX_FDS {
        return Err(ChannelError::Send(io::Error::from_raw_os_error(libc::E2BIG)));
    }
    let bytes = serde_json::to_vec(msg).map_err(ChannelError::Decode)?;
    let mut iov = libc::iovec { iov_base: bytes.as_ptr() as *mut _, iov_len: bytes.len() };
    let mut cbuf = CmsgBuf([0; 128]);
    // SAFETY: a plain C struct for which all-zero bytes are a valid value.
    let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
    hdr.msg_iov = &mut iov;
    hdr.msg_iovlen = 1;
    if !fds.is_empty() {
        hdr.msg_control = cbuf.0.as_mut_ptr().cast();
        hdr.msg_controllen = cmsg_space(fds.len()) as _;
        // SAFETY: msg_control points at a buffer of at least CMSG_SPACE(fds) bytes, so the
        // first header and its data (fds.len() ints) fit; the fds are copied, not moved.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&hdr);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of_val(fds) as u32) as _;
            std::ptr::copy_nonoverlapping(fds.as_ptr(), libc::CMSG_DATA(c).cast(), fds.len());
        }
    }
    loop {
        // SAFETY: hdr and everything it points at live until the call returns.
        let rc = unsafe { libc::sendmsg(chan.raw_fd(), &hdr, libc::MSG_NOSIGNAL) };
        if rc >= 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(ChannelError::Send(e));
        }
    }
}

/// Receives one message and the descriptors attached to it (close-on-exec). `None` at EOF.
pub fn recv_with_fds<T: DeserializeOwned>(
    chan: &Channel,
) -> Result<(Option<T>, Vec<OwnedFd>), ChannelError> {
    let mut buf = vec![0u8; MAX_MESSAGE];
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    let mut cbuf = CmsgBuf([0; 128]);
    // SAFETY: as in send_with_fds.
    let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
    hdr.msg_iov = &mut iov;
    hdr.msg_iovlen = 1;
    hdr.msg_control = cbuf.0.as_mut_ptr().cast();
    hdr.msg_controllen = cmsg_space(MAX_FDS) as _;
    let n = loop {
        // SAFETY: hdr points at live buffers of the sizes it states.
        let rc = unsafe { libc::recvmsg(chan.raw_fd(), &mut hdr, libc::MSG_CMSG_CLOEXEC) };
        if rc >= 0 {
            break rc as usize;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(ChannelError::Recv(e));
        }
    };
    let mut fds = Vec::new();
    // SAFETY: walking the control headers the kernel wrote into cbuf, within msg_controllen;
    // each SCM_RIGHTS payload is an array of fds that are now ours.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&hdr);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let len = (*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                let p: *const RawFd = libc::CMSG_DATA(c).cast();
                for i in 0..len / std::mem::size_of::<RawFd>() {
                    fds.push(OwnedFd::from_raw_fd(p.add(i).read_unaligned()));
                }
            }
            c = libc::CMSG_NXTHDR(&hdr, c);
        }
    }
    if hdr.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(ChannelError::Recv(io::Error::other("control message truncated")));
    }
    if n == 0 {
        return Ok((None, fds));
    }
    let msg = serde_json::from_slice(&buf[..n]).map_err(ChannelError::Decode)?;
    Ok((Some(msg), fds))
}

/// `AsRawFd` of each owned descriptor, for [`send_with_fds`].
pub fn raw(fds: &[OwnedFd]) -> Vec<RawFd> {
    fds.iter().map(AsRawFd::as_raw_fd).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::ToInit;
    use std::io::{Read, Seek, Write};

    #[test]
    fn descriptors_arrive_with_their_message_and_refer_to_the_same_file() {
        let (a, b) = Channel::pair().unwrap();
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(b"shared").unwrap();
        send_with_fds(&a, &ToInit::Go, &[f.as_raw_fd(), f.as_raw_fd()]).unwrap();
        let (msg, fds) = recv_with_fds::<ToInit>(&b).unwrap();
        assert_eq!(msg, Some(ToInit::Go));
        assert_eq!(fds.len(), 2);
        let mut g = std::fs::File::from(fds.into_iter().next().unwrap());
        g.rewind().unwrap();
        let mut s = String::new();
        g.read_to_string(&mut s).unwrap();
        assert_eq!(s, "shared");
        // A message without descriptors still reads as one.
        send_with_fds(&a, &ToInit::Signal { signo: 15 }, &[]).unwrap();
        let (msg, fds) = recv_with_fds::<ToInit>(&b).unwrap();
        assert_eq!((msg, fds.len()), (Some(ToInit::Signal { signo: 15 }), 0));
        drop(a);
        assert!(recv_with_fds::<ToInit>(&b).unwrap().0.is_none());
    }
}
