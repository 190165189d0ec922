//! Typed messages between the monitor and the ISC's PID 1 over a SOCK_SEQPACKET socketpair
//! (message boundaries kept by the kernel, EOF when the peer dies).

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::probe::ProbeOutcome;

const MAX_MESSAGE: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("socketpair: {0}")]
    Create(io::Error),
    #[error("sending on the control channel: {0}")]
    Send(io::Error),
    #[error("receiving on the control channel: {0}")]
    Recv(io::Error),
    #[error("malformed control message: {0}")]
    Decode(serde_json::Error),
}

/// Monitor → child during setup, then → PID 1 while running.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub enum ToInit {
    /// uid/gid maps written: become root of the user namespace and build the root.
    Go,
    /// The cgroup and network are ready: join the v1 cgroups through the `tasks` descriptors
    /// attached to this message (SCM_RIGHTS), then finish the hardening and start the service.
    Proceed,
    /// Fork a probe child inside the confinement and run one probe.
    Probe { id: u64, name: String },
    /// Forward a signal to the service.
    Signal { signo: i32 },
    /// The ISC has been quiet: exec the tiny init attached (a sealed, execute-only memfd;
    /// `hibernate.rs`). Sent only with no probe outstanding.
    Hibernate,
    /// Exec the whole isc attached (`isc __pid1 <service>`), e.g. before probes. The tiny
    /// init acts on it; the whole PID 1 drops it.
    Wake,
}

/// PID 1 → monitor.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub enum FromInit {
    /// The setup step that failed, and why; the child exits after sending it.
    SetupFailed {
        step: String,
        error: String,
    },
    /// The service was forked and exec'd successfully.
    ServiceStarted {
        pid: i32,
    },
    /// execve of the service failed (errno), e.g. ENOENT for a missing executable.
    ExecFailed {
        path: String,
        errno: i32,
    },
    ProbeResult {
        id: u64,
        outcome: ProbeOutcome,
    },
    /// PID 1 could not exec the tiny init (errno); it stays whole.
    HibernateFailed {
        errno: i32,
    },
    /// The tiny init could not exec the whole isc (errno); it stays tiny and drops the probe
    /// requests that followed the `Wake`.
    WakeFailed {
        errno: i32,
    },
    /// The service ended; PID 1 exits right after.
    ServiceExited {
        code: Option<i32>,
        signal: Option<i32>,
        /// PID 1 had no other child left (waitpid: ECHILD), so no process of the ISC but PID 1
        /// exists, and PID 1 only reports and exits: nothing in the ISC acts any more.
        #[serde(default)]
        alone: bool,
    },
}

/// One end of the channel.
#[derive(Debug)]
pub struct Channel {
    fd: OwnedFd,
}

impl Channel {
    /// A connected pair; both ends close on exec.
    pub fn pair() -> Result<(Channel, Channel), ChannelError> {
        let mut fds = [0 as RawFd; 2];
        // SAFETY: socketpair(2) writes two fds into the array on success.
        let rc = unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        };
        if rc != 0 {
            return Err(ChannelError::Create(io::Error::last_os_error()));
        }
        // SAFETY: both fds were just created and are owned by nobody else.
        let (a, b) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        Ok((Channel { fd: a }, Channel { fd: b }))
    }

    pub fn send<T: Serialize>(&self, msg: &T) -> Result<(), ChannelError> {
        let bytes = serde_json::to_vec(msg).map_err(ChannelError::Decode)?;
        loop {
            // SAFETY: the buffer is valid for its length; MSG_NOSIGNAL avoids SIGPIPE.
            let rc = unsafe {
                libc::send(
                    self.fd.as_raw_fd(),
                    bytes.as_ptr().cast(),
                    bytes.len(),
                    libc::MSG_NOSIGNAL,
                )
            };
            if rc >= 0 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(ChannelError::Send(e));
            }
        }
    }

    /// Blocks for the next message; `None` when the peer closed its end.
    pub fn recv<T: DeserializeOwned>(&self) -> Result<Option<T>, ChannelError> {
        // A buffer of the message's own size, not MAX_MESSAGE: PID 1 never trims its heap, so
        // every page a receive dirties stays resident for the life of the ISC.
        let Some(len) = self.next_len()? else { return Ok(None) };
        let mut buf = vec![0u8; len.clamp(1, MAX_MESSAGE)];
        loop {
            // SAFETY: the buffer is valid and writable for its length.
            let rc =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if rc == 0 {
                return Ok(None);
            }
            if rc > 0 {
                let msg =
                    serde_json::from_slice(&buf[..rc as usize]).map_err(ChannelError::Decode)?;
                return Ok(Some(msg));
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(ChannelError::Recv(e));
            }
        }
    }

    /// Waits for the next message and returns its length without consuming it; `None` on EOF.
    /// MSG_PEEK|MSG_TRUNC reports the real length of the pending record on AF_UNIX datagram
    /// and seqpacket sockets (recv(2), "since Linux 3.4"); messages are JSON, never empty, so
    /// 0 means the peer closed its end.
    fn next_len(&self) -> Result<Option<usize>, ChannelError> {
        loop {
            // SAFETY: a zero-length peek writes nothing; the null buffer is never dereferenced.
            let rc = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    std::ptr::null_mut(),
                    0,
                    libc::MSG_PEEK | libc::MSG_TRUNC,
                )
            };
            if rc == 0 {
                return Ok(None);
            }
            if rc > 0 {
                return Ok(Some(rc as usize));
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(ChannelError::Recv(e));
            }
        }
    }

    /// Adopts an fd that is a channel end (used by the child after moving it to fd 3).
    pub(crate) fn from_raw(fd: RawFd) -> Channel {
        // SAFETY: the caller passes an fd it owns exclusively (the child's dup of its end).
        Channel { fd: unsafe { OwnedFd::from_raw_fd(fd) } }
    }

    /// One end again, from its descriptor (a woken monitor's, `monitor_hibernate`).
    pub fn from_fd(fd: OwnedFd) -> Channel {
        Channel { fd }
    }

    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl AsFd for Channel {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_eof_is_none() {
        let (a, b) = Channel::pair().unwrap();
        a.send(&ToInit::Probe { id: 7, name: "mount".into() }).unwrap();
        assert_eq!(
            b.recv::<ToInit>().unwrap(),
            Some(ToInit::Probe { id: 7, name: "mount".into() })
        );
        b.send(&FromInit::ServiceExited { code: Some(3), signal: None, alone: true }).unwrap();
        assert_eq!(
            a.recv::<FromInit>().unwrap(),
            Some(FromInit::ServiceExited { code: Some(3), signal: None, alone: true })
        );
        drop(b);
        assert_eq!(a.recv::<FromInit>().unwrap(), None);
    }
}
