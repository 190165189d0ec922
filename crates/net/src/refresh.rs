//! Egress host names follow their DNS answers for the ISC's lifetime.
//!
//! One thread per ISC (in its monitor) keeps, for each declared host name, the last good
//! answer and when it expires (its TTL, clamped by [`crate::dns`]). When a name expires it is
//! resolved again; if its addresses changed, the caller's `apply` receives the ISC's complete
//! new egress list and replaces the ISC's egress rules in one nft transaction.
//!
//! Fail static: a lookup that fails (timeout, SERVFAIL, NXDOMAIN, no address) keeps the last
//! good answer in force and is retried with a backoff ([`MIN_TTL`] doubling up to
//! [`MAX_RETRY`]); the first failure of a streak is reported once, and so is the recovery.
//! The reasons are in docs/network.md ("Egress host names").
//!
//! Stopping takes the same lock the thread holds while it applies, so once
//! [`EgressRefresher::stop`] returns no refresh is running or will run: the ISC's chains can
//! be removed without a refresh re-creating them.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::dns::{DnsError, Resolver, MIN_TTL};
use crate::policy::{egress_rules_from, EgressRule, EgressSpec, EgressTarget, HostAnswer};

/// The longest wait between two attempts at a name that fails to resolve.
pub const MAX_RETRY: Duration = Duration::from_secs(60);

/// How the addresses of one name changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostChange {
    /// The name as declared.
    pub host: String,
    /// Addresses that are new.
    pub added: Vec<IpAddr>,
    /// Addresses that are gone.
    pub removed: Vec<IpAddr>,
    /// TTL of the new answer (clamped).
    pub ttl: Duration,
}

/// What the refresher tells its owner.
#[derive(Debug)]
pub enum RefreshEvent<'a> {
    /// Some names moved: apply `rules`, the ISC's complete egress list, atomically. An error
    /// keeps the old answers, and the names are tried again after [`MIN_TTL`].
    Changed {
        /// The complete new egress list.
        rules: &'a [EgressRule],
        /// What changed, per name.
        changes: &'a [HostChange],
    },
    /// `host` stopped resolving; its last good answer stays in force (once per streak).
    Failing {
        /// The name.
        host: &'a str,
        /// Why.
        error: String,
    },
    /// `host` resolves again after a failure streak.
    Recovered {
        /// The name.
        host: &'a str,
    },
}

/// The owner's side: applies changes and records events. Runs on the refresher thread.
pub type Apply = Box<dyn FnMut(RefreshEvent<'_>) -> Result<(), String> + Send>;
/// Builds the resolver for each round (re-reading resolv.conf, which may have changed).
pub type MakeResolver = Box<dyn Fn() -> Result<Resolver, DnsError> + Send>;

struct Name {
    current: HostAnswer,
    due: Instant,
    failures: u32,
}

struct Shared {
    stopped: Mutex<bool>,
    wake: Condvar,
    cancel: AtomicBool,
}

/// The refresher thread of one ISC; stopped (and joined) by [`EgressRefresher::stop`] or drop.
pub struct EgressRefresher {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for EgressRefresher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EgressRefresher").field("running", &self.thread.is_some()).finish()
    }
}

impl EgressRefresher {
    /// Starts the thread `isc-egress-dns` for ISC `isc`, from the answers the ISC started with.
    /// `None` when the declaration names no host (nothing to refresh).
    pub fn start(
        isc: &str,
        specs: Vec<EgressSpec>,
        initial: Vec<HostAnswer>,
        resolver: MakeResolver,
        apply: Apply,
    ) -> std::io::Result<Option<EgressRefresher>> {
        if !specs.iter().any(|s| matches!(s.target, EgressTarget::Host(_))) {
            return Ok(None);
        }
        let now = Instant::now();
        let names: Vec<Name> = initial
            .into_iter()
            .map(|a| Name { due: now + a.answer.ttl, current: a, failures: 0 })
            .collect();
        let shared = Arc::new(Shared {
            stopped: Mutex::new(false),
            wake: Condvar::new(),
            cancel: AtomicBool::new(false),
        });
        let mut worker =
            Worker { isc: isc.to_string(), specs, names, resolver, apply, shared: shared.clone() };
        let thread = std::thread::Builder::new()
            .name("isc-egress-dns".into())
            .spawn(move || worker.run())?;
        Ok(Some(EgressRefresher { shared, thread: Some(thread) }))
    }

    /// Stops the thread: an answer being waited for is abandoned, an apply in progress
    /// finishes first. Idempotent.
    pub fn stop(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        self.shared.cancel.store(true, Ordering::Relaxed);
        *self.shared.stopped.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.shared.wake.notify_all();
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                tracing::error!("the egress DNS refresher thread panicked");
            }
        }
    }
}

impl Drop for EgressRefresher {
    fn drop(&mut self) {
        self.stop_inner();
    }
}

struct Worker {
    isc: String,
    specs: Vec<EgressSpec>,
    names: Vec<Name>,
    resolver: MakeResolver,
    apply: Apply,
    shared: Arc<Shared>,
}

fn backoff(failures: u32) -> Duration {
    MIN_TTL.saturating_mul(1 << failures.saturating_sub(1).min(8)).min(MAX_RETRY)
}

impl Worker {
    fn run(&mut self) {
        while self.wait_for_due() {
            let now = Instant::now();
            let resolver = (self.resolver)();
            let mut next: Vec<(usize, HostAnswer)> = Vec::new();
            let mut changes = Vec::new();
            let mut failing = Vec::new();
            let mut recovered = Vec::new();
            for (i, n) in self.names.iter_mut().enumerate().filter(|(_, n)| n.due <= now) {
                let got = match &resolver {
                    Ok(r) => r.lookup(&n.current.host, &self.shared.cancel),
                    Err(e) => {
                        Err(DnsError::NoAddress { name: format!("{} ({e})", n.current.host) })
                    }
                };
                match got {
                    Err(DnsError::Cancelled { .. }) => return,
                    Err(e) => {
                        n.failures += 1;
                        n.due = now + backoff(n.failures);
                        if n.failures == 1 {
                            failing.push((i, e.to_string()));
                        }
                    }
                    Ok(a) => {
                        if n.failures > 0 {
                            recovered.push(i);
                        }
                        n.failures = 0;
                        n.due = now + a.ttl;
                        if a.addrs == n.current.answer.addrs {
                            n.current.answer.ttl = a.ttl;
                            continue;
                        }
                        let old = &n.current.answer.addrs;
                        changes.push(HostChange {
                            host: n.current.host.clone(),
                            added: a.addrs.iter().filter(|x| !old.contains(x)).copied().collect(),
                            removed: old.iter().filter(|x| !a.addrs.contains(x)).copied().collect(),
                            ttl: a.ttl,
                        });
                        next.push((i, HostAnswer { host: n.current.host.clone(), answer: a }));
                    }
                }
            }
            let shared = Arc::clone(&self.shared);
            let stopped = shared.stopped.lock().unwrap_or_else(|p| p.into_inner());
            if *stopped {
                return;
            }
            self.report(&failing, &recovered);
            if !changes.is_empty() {
                self.apply_changes(next, &changes, now);
            }
            drop(stopped);
        }
    }

    /// Sleeps until the earliest expiry; false once stopped.
    fn wait_for_due(&self) -> bool {
        let mut stopped = self.shared.stopped.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if *stopped {
                return false;
            }
            let due = self.names.iter().map(|n| n.due).min();
            let Some(left) = due.map(|d| d.saturating_duration_since(Instant::now())) else {
                return false;
            };
            if left.is_zero() {
                return true;
            }
            stopped =
                self.shared.wake.wait_timeout(stopped, left).unwrap_or_else(|p| p.into_inner()).0;
        }
    }

    fn report(&mut self, failing: &[(usize, String)], recovered: &[usize]) {
        for (i, error) in failing {
            let host = &self.names[*i].current.host;
            let kept = &self.names[*i].current.answer.addrs;
            tracing::warn!(isc = %self.isc, host = %host, error = %error, kept = ?kept, "egress host name does not resolve; its last good answer stays in force");
            let ev = RefreshEvent::Failing { host, error: error.clone() };
            if let Err(e) = (self.apply)(ev) {
                tracing::error!(isc = %self.isc, error = %e, "cannot record an egress lookup failure");
            }
        }
        for i in recovered {
            let host = &self.names[*i].current.host;
            tracing::info!(isc = %self.isc, host = %host, "egress host name resolves again");
            if let Err(e) = (self.apply)(RefreshEvent::Recovered { host }) {
                tracing::error!(isc = %self.isc, error = %e, "cannot record an egress lookup recovery");
            }
        }
    }

    fn apply_changes(
        &mut self,
        next: Vec<(usize, HostAnswer)>,
        changes: &[HostChange],
        now: Instant,
    ) {
        let mut answers: Vec<HostAnswer> = self.names.iter().map(|n| n.current.clone()).collect();
        for (i, a) in &next {
            answers[*i] = a.clone();
        }
        let rules = egress_rules_from(&self.specs, &answers);
        match (self.apply)(RefreshEvent::Changed { rules: &rules, changes }) {
            Ok(()) => {
                for (i, a) in next {
                    self.names[i].current = a;
                }
                tracing::info!(isc = %self.isc, changes = ?changes, "egress rules follow DNS");
            }
            Err(e) => {
                tracing::error!(isc = %self.isc, error = %e, "cannot apply re-resolved egress; the old rules stay, retrying");
                for (i, _) in next {
                    self.names[i].due = now + MIN_TTL;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::wire::TYPE_A;
    use crate::dns::Answer;
    use crate::policy::Proto;
    use std::net::{SocketAddr, UdpSocket};
    use std::path::PathBuf;
    use std::sync::mpsc;

    /// Loopback DNS: `svc.test` A 192.0.2.44 (TTL 1), `gone.test` NXDOMAIN, AAAA empty.
    fn server() -> SocketAddr {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = s.local_addr().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while let Ok((n, from)) = s.recv_from(&mut buf) {
                let mut m = buf[..n].to_vec();
                let qtype = u16::from_be_bytes([m[n - 4], m[n - 3]]);
                m[2] |= 0x80;
                if m[13..16] == *b"gon" {
                    m[3] |= 3;
                } else if qtype == TYPE_A {
                    m[7] = 1;
                    m.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 1, 0, 4, 192, 0, 2, 44]);
                }
                let _ = s.send_to(&m, from);
            }
        });
        addr
    }

    fn host(h: &str, port: u16) -> EgressSpec {
        EgressSpec { target: EgressTarget::Host(h.into()), proto: Proto::Tcp, port }
    }

    fn answer(h: &str, ip: &str) -> HostAnswer {
        let answer = Answer { addrs: vec![ip.parse().unwrap()], ttl: Duration::ZERO };
        HostAnswer { host: h.into(), answer }
    }

    #[test]
    fn a_moved_name_is_applied_and_a_failing_one_keeps_its_answer() {
        let dns = server();
        let specs = vec![host("svc.test", 443), host("gone.test", 80)];
        // Both expire at once (TTL 0): svc.test moved from .43 to .44, gone.test vanished.
        let initial = vec![answer("svc.test", "192.0.2.43"), answer("gone.test", "192.0.2.80")];
        let resolver = Box::new(move || {
            Ok(Resolver {
                conf: PathBuf::from("test"),
                hosts: PathBuf::from("/nonexistent"),
                servers: vec![dns],
                timeout: Duration::from_secs(2),
                attempts: 1,
            })
        });
        let (tx, rx) = mpsc::channel::<String>();
        let apply: Apply = Box::new(move |ev| {
            let line = match ev {
                RefreshEvent::Changed { rules, changes } => {
                    format!("changed {rules:?} {changes:?}")
                }
                RefreshEvent::Failing { host, .. } => format!("failing {host}"),
                RefreshEvent::Recovered { host } => format!("recovered {host}"),
            };
            tx.send(line).unwrap();
            Ok(())
        });
        let r = EgressRefresher::start("t", specs, initial, resolver, apply).unwrap().unwrap();
        let first = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(first, "failing gone.test");
        let second = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert!(second.starts_with("changed"), "{second}");
        // The failing name keeps 192.0.2.80 on port 80; the moved one is now .44 only.
        assert!(second.contains("net: 192.0.2.80/32, proto: Tcp, port: 80"), "{second}");
        assert!(second.contains("net: 192.0.2.44/32, proto: Tcp, port: 443"), "{second}");
        assert!(!second.contains("192.0.2.43/32"), "{second}");
        assert!(second.contains("added: [192.0.2.44], removed: [192.0.2.43]"), "{second}");
        let t = Instant::now();
        r.stop();
        assert!(t.elapsed() < Duration::from_secs(1), "stop must not wait for the next expiry");
        assert!(rx.try_recv().is_err(), "nothing after stop");
    }

    #[test]
    fn nothing_to_refresh_without_host_names() {
        let cidr = EgressSpec {
            target: EgressTarget::Net("192.0.2.0/24".parse().unwrap()),
            proto: Proto::Udp,
            port: 53,
        };
        let r = EgressRefresher::start(
            "t",
            vec![cidr],
            vec![],
            Box::new(|| unreachable!("no lookup without names")),
            Box::new(|_| unreachable!("no event without names")),
        );
        assert!(r.unwrap().is_none());
    }
}
