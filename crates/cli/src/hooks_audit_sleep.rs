//! An audit session across a hibernation of its monitor (`isc_engine::monitor_hibernate`,
//! docs/engine.md): its collectors are paused without a drain and their sockets kept, so
//! whatever the kernel logs while the monitor sleeps queues in them. The tiny monitor reads
//! the kernel audit socket itself (it drops what is provably not this ISC's) and wakes on
//! anything readable on the NFLOG socket (the group is this ISC's alone: every packet in it
//! is a denial of this ISC). The woken monitor restarts both collectors on the same sockets,
//! from the same counts.

use std::collections::HashMap;
use std::os::fd::{IntoRawFd, RawFd};

use anyhow::{Context, Result};
use isc_audit::kernel::{KernelAuditReader, ReaderState};
use isc_engine::monitor_hibernate::{adopt_fd, AuditWatch, Suspended};
use isc_net::NflogReader;
use serde::{Deserialize, Serialize};

use super::AuditSession;
use crate::audit_collect::{pidns_inode, Attribution, Collector, DenialCounts, NetSource};
use crate::launch::Dirs;

/// What a session keeps while its monitor hibernates.
#[derive(Serialize, Deserialize)]
struct SuspendedSession {
    name: String,
    kernel: Option<KeptKernel>,
    net: Option<KeptNet>,
    memory_limit: Option<u64>,
}

/// The kernel collector's socket, its reader's state, whose records are the ISC's, its counts.
#[derive(Serialize, Deserialize)]
struct KeptKernel {
    fd: RawFd,
    reader: ReaderState,
    who: Attribution,
    counts: DenialCounts,
}

/// The network collector's NFLOG socket (still bound to the group), the ISC's network id, its
/// counts, and what `isc_start` said of it.
#[derive(Serialize, Deserialize)]
struct KeptNet {
    fd: RawFd,
    group: u16,
    id: String,
    counts: DenialCounts,
    status: serde_json::Value,
}

/// The Landlock domains of the reader's table (id → creator pid) that are another's: the
/// collector would attribute none of their access records to this ISC (`Attribution::owns`:
/// the creator is not a live process in the ISC's PID namespace, or that namespace is
/// unknown). The newest first (ids grow), at most `MonitorPlan::MAX_DOMAINS`, for the tiny
/// monitor to drop their access records instead of waking for each. Ids not written as the
/// kernel writes them (lowercase hex, no leading zero) are left out: theirs then wake it.
fn foreign_domains(domains: &HashMap<String, u32>, pidns_ino: Option<u64>) -> Vec<u64> {
    let mut ids: Vec<(u64, u32)> =
        domains.iter().filter_map(|(id, pid)| Some((domain_id(id)?, *pid))).collect();
    ids.sort_unstable_by_key(|(id, _)| std::cmp::Reverse(*id));
    ids.into_iter()
        .filter(|(_, pid)| {
            pidns_ino.is_none() || i32::try_from(*pid).ok().and_then(pidns_inode) != pidns_ino
        })
        .map(|(id, _)| id)
        .take(isc_engine::hibernate::MonitorPlan::MAX_DOMAINS)
        .collect()
}

/// A Landlock domain id as the kernel writes it (`%llx`): 1 to 16 lowercase hex digits, no
/// leading zero. The tiny monitor reads `domain=` values by the same rule.
fn domain_id(s: &str) -> Option<u64> {
    let hex = |c: u8| c.is_ascii_digit() || (b'a'..=b'f').contains(&c);
    let ok =
        (1..=16).contains(&s.len()) && s.bytes().all(hex) && (s.len() == 1 || !s.starts_with('0'));
    ok.then(|| u64::from_str_radix(s, 16).ok()).flatten()
}

fn running(c: &Option<Collector>) -> bool {
    c.as_ref().is_some_and(Collector::running)
}

impl AuditSession {
    /// The monitor may hibernate: the service runs and its end is not being recorded, every
    /// collector started still reads, and the log is ticked by one of them (a collector can be
    /// paused; the log's own ticker thread cannot).
    pub(crate) fn can_hibernate(&self) -> bool {
        let ticked = running(&self.collector) || (self.net_ticks && running(&self.net_collector));
        ticked
            && !self.own_ticker
            && self.reader.is_none()
            && self.net.is_none()
            && (self.net_collector.is_none() || running(&self.net_collector))
            && !self.exit_recorded
    }

    /// Pauses the collectors (their sockets stay open: what the kernel logs keeps queueing in
    /// them), covers and syncs what is on the trail, and says what to keep: both sockets, the
    /// kernel one for the tiny monitor to filter, the NFLOG one to wake it.
    pub(crate) fn suspend(&mut self) -> Suspended {
        let had_kernel = self.collector.is_some();
        let had_net = self.net_collector.is_some();
        let counts = self.collector.take().and_then(|c| c.pause(&self.pause));
        let net_counts = self.net_collector.take().and_then(|c| c.pause(&self.net_pause));
        // After both paused: they may have appended on their way out.
        if let Err(e) = self.log.checkpoint().and_then(|_| self.log.sync()) {
            tracing::error!(isc = %self.name, error = %e, "syncing the audit trail before hibernating");
        }
        let kernel = match (self.pause.take_reader(), self.who) {
            (Some(reader), Some(who)) => {
                let (fd, reader) = reader.into_parts();
                let fd = fd.into_raw_fd();
                Some(KeptKernel { fd, reader, who, counts: counts.unwrap_or_default() })
            }
            _ => {
                if had_kernel {
                    tracing::error!(isc = %self.name, "the kernel collector ended without its reader; kernel denials are no longer collected");
                }
                None
            }
        };
        let net = match self.net_pause.take_reader() {
            Some(src) => {
                let (fd, group) = src.reader.into_kept();
                Some(KeptNet {
                    fd: fd.into_raw_fd(),
                    group,
                    id: src.id,
                    counts: net_counts.unwrap_or_default(),
                    status: self.net_status.clone(),
                })
            }
            None => {
                if had_net {
                    tracing::error!(isc = %self.name, "the network collector ended without its reader; dropped packets are no longer collected");
                }
                None
            }
        };
        let audit = kernel.as_ref().map(|k| AuditWatch {
            fd: k.fd,
            uid_lo: k.who.uid_lo,
            uid_hi: k.who.uid_hi,
            pidns_ino: k.who.pidns_ino.unwrap_or(0),
            foreign_domains: foreign_domains(&k.reader.domains, k.who.pidns_ino),
        });
        let net_fd = net.as_ref().map(|n| n.fd);
        let keep = kernel.as_ref().map(|k| k.fd).into_iter().chain(net_fd).collect();
        let state = SuspendedSession {
            name: self.name.clone(),
            kernel,
            net,
            memory_limit: self.memory_limit,
        };
        Suspended {
            state: serde_json::to_value(state).expect("the session serializes"),
            keep,
            wake_on: net_fd.into_iter().collect(),
            audit,
            ..Suspended::default()
        }
    }

    /// The session of a woken monitor: the trail reopened, the collectors restarted on the
    /// kept sockets with their counts (the network one ticking the log if there is no kernel
    /// one, as at the start).
    pub(crate) fn resume(dirs: &Dirs, state: serde_json::Value) -> Result<AuditSession> {
        let s: SuspendedSession =
            serde_json::from_value(state).context("the saved audit session")?;
        let mut session = AuditSession::begin_with(dirs, &s.name, None)?;
        session.memory_limit = s.memory_limit;
        let ticks_log = s.kernel.is_none();
        if let Some(k) = s.kernel {
            // SAFETY: the saved state names this descriptor once, as the kernel audit socket.
            let fd = unsafe { adopt_fd(k.fd) }.context("the kept kernel audit socket")?;
            session.pidns_ino = k.who.pidns_ino;
            session.start_kernel_collector(
                KernelAuditReader::from_parts(fd, k.reader),
                k.who,
                k.counts,
            );
        }
        match s.net {
            Some(n) => {
                // SAFETY: the saved state names this descriptor once, as the NFLOG socket.
                let fd = unsafe { adopt_fd(n.fd) }.context("the kept NFLOG socket")?;
                session.net_status = n.status;
                let reader = NflogReader::adopt(fd, n.group);
                let src = NetSource { reader, id: n.id, group: n.group };
                session.start_net_collector(src, n.counts, ticks_log);
            }
            // Nothing left to tick the log (both collectors had ended): its own thread does.
            None if ticks_log => session.start_own_ticker(),
            None => {}
        }
        Ok(session)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn foreign_domains_are_those_whose_creator_is_not_in_the_isc_pid_namespace() {
        let ours = pidns_inode(std::process::id() as i32).unwrap();
        let gone: u32 =
            std::fs::read_to_string("/proc/sys/kernel/pid_max").unwrap().trim().parse().unwrap();
        let table: HashMap<String, u32> = [
            ("1a", std::process::id()),
            ("195ba459b", gone),
            ("0c", gone),
            ("C", gone),
            ("x", gone),
            ("11112222333344445", gone),
        ]
        .into_iter()
        .map(|(d, p)| (d.to_owned(), p))
        .collect();
        assert_eq!(foreign_domains(&table, Some(ours)), vec![0x1_95ba_459b]);
        let other = foreign_domains(&table, Some(ours + 1));
        assert_eq!(other, vec![0x1_95ba_459b, 0x1a]);
        assert_eq!(foreign_domains(&table, None), other);
        let many: HashMap<String, u32> = (1..=100u64).map(|d| (format!("{d:x}"), gone)).collect();
        let kept = foreign_domains(&many, Some(ours));
        assert_eq!(kept, (37..=100).rev().collect::<Vec<u64>>(), "the 64 newest");
    }
}
