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
//!
//! A monitor about to hibernate stops its refresher with [`EgressRefresher::suspend`], which
//! gives back everything the thread knew ([`RefresherState`]: each name's answer, when it is
//! due again on CLOCK_MONOTONIC, its failure streak), and the woken monitor starts a new one
//! from it with [`EgressRefresher::resume`]: what is due is resolved then, the rest when it
//! falls due. A round cut short by the suspension commits nothing, so its names are due at
//! once after the resume.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::dns::{Answer, DnsError, Resolver, MIN_TTL};
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
    /// The length of the wait that ends at `due` (the TTL, a backoff, a retry).
    interval: Duration,
    failures: u32,
}

/// Everything a stopped refresher knew ([`EgressRefresher::suspend`]), for a new one to go on
/// exactly where it left off ([`EgressRefresher::resume`]), in another image of the process:
/// no `Instant`, times are CLOCK_MONOTONIC milliseconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefresherState {
    /// One per declared host name, in the declaration's order.
    pub names: Vec<NameState>,
}

/// One name's part of a [`RefresherState`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NameState {
    /// The name as declared.
    pub host: String,
    /// Its last good answer (in force).
    pub addrs: Vec<IpAddr>,
    /// That answer's clamped TTL, in milliseconds.
    pub ttl_ms: u64,
    /// When it is resolved next, CLOCK_MONOTONIC milliseconds.
    pub due_mono_ms: u64,
    /// The length of the wait ending then (TTL, backoff or retry), in milliseconds.
    pub interval_ms: u64,
    /// Failed lookups in a row (the streak's first one was reported).
    pub failures: u32,
}

impl RefresherState {
    /// The time from now until the next name is due (zero: overdue).
    pub fn next_due(&self) -> Duration {
        let now = mono_ms();
        let due = self.names.iter().map(|n| n.due_mono_ms.saturating_sub(now)).min();
        Duration::from_millis(due.unwrap_or(0))
    }

    /// The shortest wait between two lookups of a name now in force (TTL, backoff or retry):
    /// how often, at most, a refresher resumed from this state has work.
    pub fn shortest_interval(&self) -> Duration {
        Duration::from_millis(self.names.iter().map(|n| n.interval_ms).min().unwrap_or(u64::MAX))
    }
}

/// CLOCK_MONOTONIC in milliseconds (the clock of `Instant` and of the tiny monitor's deadline).
pub fn mono_ms() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}

impl Name {
    fn to_state(&self, now: Instant, now_ms: u64) -> NameState {
        NameState {
            host: self.current.host.clone(),
            addrs: self.current.answer.addrs.clone(),
            ttl_ms: self.current.answer.ttl.as_millis() as u64,
            due_mono_ms: now_ms + self.due.saturating_duration_since(now).as_millis() as u64,
            interval_ms: self.interval.as_millis() as u64,
            failures: self.failures,
        }
    }

    fn from_state(s: NameState, now: Instant, now_ms: u64) -> Name {
        let answer = Answer { addrs: s.addrs, ttl: Duration::from_millis(s.ttl_ms) };
        Name {
            current: HostAnswer { host: s.host, answer },
            due: now + Duration::from_millis(s.due_mono_ms.saturating_sub(now_ms)),
            interval: Duration::from_millis(s.interval_ms),
            failures: s.failures,
        }
    }
}

struct Shared {
    stopped: Mutex<bool>,
    wake: Condvar,
    cancel: AtomicBool,
    /// A round (lookups, reports, apply) is under way.
    busy: AtomicBool,
    /// The shortest interval of the names, in milliseconds, as of the last round.
    interval_ms: AtomicU64,
}

/// The refresher thread of one ISC; stopped (and joined) by [`EgressRefresher::stop`] or drop.
pub struct EgressRefresher {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<Vec<Name>>>,
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
            .map(|a| Name {
                due: now + a.answer.ttl,
                interval: a.answer.ttl,
                current: a,
                failures: 0,
            })
            .collect();
        Self::spawn(isc, specs, names, resolver, apply).map(Some)
    }

    /// Starts the thread again from what [`EgressRefresher::suspend`] gave back (possibly in
    /// another image of this process): names overdue are resolved at once, the others when
    /// they fall due; a failure streak goes on (it is not reported again). `specs` is the
    /// declaration the state was made for. `None` when the declaration names no host.
    pub fn resume(
        isc: &str,
        specs: Vec<EgressSpec>,
        state: RefresherState,
        resolver: MakeResolver,
        apply: Apply,
    ) -> std::io::Result<Option<EgressRefresher>> {
        if !specs.iter().any(|s| matches!(s.target, EgressTarget::Host(_))) {
            return Ok(None);
        }
        let (now, now_ms) = (Instant::now(), mono_ms());
        let names = state.names.into_iter().map(|s| Name::from_state(s, now, now_ms)).collect();
        Self::spawn(isc, specs, names, resolver, apply).map(Some)
    }

    fn spawn(
        isc: &str,
        specs: Vec<EgressSpec>,
        names: Vec<Name>,
        resolver: MakeResolver,
        apply: Apply,
    ) -> std::io::Result<EgressRefresher> {
        let shared = Arc::new(Shared {
            stopped: Mutex::new(false),
            wake: Condvar::new(),
            cancel: AtomicBool::new(false),
            busy: AtomicBool::new(false),
            interval_ms: AtomicU64::new(shortest_ms(&names)),
        });
        let mut worker =
            Worker { isc: isc.to_string(), specs, names, resolver, apply, shared: shared.clone() };
        let thread =
            std::thread::Builder::new().name("isc-egress-dns".into()).spawn(move || {
                worker.run();
                worker.names
            })?;
        Ok(EgressRefresher { shared, thread: Some(thread) })
    }

    /// Stops the thread: an answer being waited for is abandoned, an apply in progress
    /// finishes first. Idempotent.
    pub fn stop(mut self) {
        self.stop_inner();
    }

    /// Stops the thread as [`EgressRefresher::stop`] does and gives back its state, for
    /// [`EgressRefresher::resume`]. `None` if the thread had panicked (its state is lost).
    pub fn suspend(mut self) -> Option<RefresherState> {
        let names = self.stop_inner()?;
        let (now, now_ms) = (Instant::now(), mono_ms());
        Some(RefresherState { names: names.iter().map(|n| n.to_state(now, now_ms)).collect() })
    }

    /// While the thread waits for the next name to fall due: the shortest wait between two
    /// lookups of a name now in force (TTL, failure backoff or retry), i.e. how often at most
    /// it has work. `None` while a round of lookups is under way.
    pub fn idle_interval(&self) -> Option<Duration> {
        if self.shared.busy.load(Ordering::SeqCst) {
            return None;
        }
        Some(Duration::from_millis(self.shared.interval_ms.load(Ordering::SeqCst)))
    }

    fn stop_inner(&mut self) -> Option<Vec<Name>> {
        self.shared.cancel.store(true, Ordering::Relaxed);
        *self.shared.stopped.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.shared.wake.notify_all();
        let t = self.thread.take()?;
        let names = t.join();
        if names.is_err() {
            tracing::error!("the egress DNS refresher thread panicked");
        }
        names.ok()
    }
}

fn shortest_ms(names: &[Name]) -> u64 {
    names.iter().map(|n| n.interval.as_millis() as u64).min().unwrap_or(u64::MAX)
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
            // Lookups first, committed only once the round is complete and not stopped: a
            // round cut short (stop, suspend) leaves every name as it was, still due.
            let mut got = Vec::new();
            for (i, n) in self.names.iter().enumerate().filter(|(_, n)| n.due <= now) {
                let r = match &resolver {
                    Ok(r) => r.lookup(&n.current.host, &self.shared.cancel),
                    Err(e) => {
                        Err(DnsError::NoAddress { name: format!("{} ({e})", n.current.host) })
                    }
                };
                if let Err(DnsError::Cancelled { .. }) = r {
                    return;
                }
                got.push((i, r));
            }
            let shared = Arc::clone(&self.shared);
            let stopped = shared.stopped.lock().unwrap_or_else(|p| p.into_inner());
            if *stopped {
                return;
            }
            let mut next: Vec<(usize, HostAnswer)> = Vec::new();
            let mut changes = Vec::new();
            let mut failing = Vec::new();
            let mut recovered = Vec::new();
            for (i, r) in got {
                let n = &mut self.names[i];
                match r {
                    Err(e) => {
                        n.failures += 1;
                        n.interval = backoff(n.failures);
                        n.due = now + n.interval;
                        if n.failures == 1 {
                            failing.push((i, e.to_string()));
                        }
                    }
                    Ok(a) => {
                        if n.failures > 0 {
                            recovered.push(i);
                        }
                        n.failures = 0;
                        n.interval = a.ttl;
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
            self.report(&failing, &recovered);
            if !changes.is_empty() {
                self.apply_changes(next, &changes, now);
            }
            self.shared.interval_ms.store(shortest_ms(&self.names), Ordering::SeqCst);
            self.shared.busy.store(false, Ordering::SeqCst);
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
                self.shared.busy.store(true, Ordering::SeqCst);
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
                    self.names[i].interval = MIN_TTL;
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
        let resolver = loopback_resolver(dns);
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

    fn loopback_resolver(dns: SocketAddr) -> MakeResolver {
        Box::new(move || {
            Ok(Resolver {
                conf: PathBuf::from("test"),
                hosts: PathBuf::from("/nonexistent"),
                servers: vec![dns],
                timeout: Duration::from_secs(2),
                attempts: 1,
            })
        })
    }

    fn recorder() -> (Apply, mpsc::Receiver<String>) {
        let (tx, rx) = mpsc::channel::<String>();
        let apply: Apply = Box::new(move |ev| {
            let line = match ev {
                RefreshEvent::Changed { changes, .. } => format!("changed {changes:?}"),
                RefreshEvent::Failing { host, .. } => format!("failing {host}"),
                RefreshEvent::Recovered { host } => format!("recovered {host}"),
            };
            tx.send(line).unwrap();
            Ok(())
        });
        (apply, rx)
    }

    #[test]
    fn a_suspended_refresher_resumes_where_it_left_off() {
        let dns = server();
        let specs = vec![host("svc.test", 443), host("gone.test", 80)];
        let initial = vec![answer("svc.test", "192.0.2.43"), answer("gone.test", "192.0.2.80")];
        let (apply, rx) = recorder();
        let r = EgressRefresher::start("t", specs.clone(), initial, loopback_resolver(dns), apply)
            .unwrap()
            .unwrap();
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), "failing gone.test");
        assert!(rx.recv_timeout(Duration::from_secs(5)).unwrap().starts_with("changed"));
        // Idle: the shortest wait in force is the clamped TTL (5 s) and the first backoff (5 s).
        assert!(eventually(|| r.idle_interval() == Some(MIN_TTL)), "{:?}", r.idle_interval());
        let t = Instant::now();
        let state = r.suspend().expect("a state");
        assert!(t.elapsed() < Duration::from_secs(1), "suspend must not wait for the next expiry");
        assert!(rx.try_recv().is_err(), "nothing after suspend");
        // Serialisable, in CLOCK_MONOTONIC ms: the answers in force, the streak, when each is due.
        let state: RefresherState =
            serde_json::from_value(serde_json::to_value(&state).unwrap()).unwrap();
        let [svc, gone] = &state.names[..] else { panic!("{state:?}") };
        assert_eq!((svc.host.as_str(), svc.failures), ("svc.test", 0));
        assert_eq!(svc.addrs, vec!["192.0.2.44".parse::<IpAddr>().unwrap()]);
        assert_eq!((svc.ttl_ms, svc.interval_ms), (5000, 5000));
        assert_eq!((gone.host.as_str(), gone.failures, gone.interval_ms), ("gone.test", 1, 5000));
        assert_eq!(gone.addrs, vec!["192.0.2.80".parse::<IpAddr>().unwrap()]);
        let now = mono_ms();
        for n in [svc, gone] {
            assert!(n.due_mono_ms > now && n.due_mono_ms <= now + 5000, "{n:?} now {now}");
        }
        let left = state.next_due();
        assert!(left > Duration::from_secs(3) && left <= MIN_TTL, "{left:?}");
        assert_eq!(state.shortest_interval(), MIN_TTL);

        // Resumed with both overdue and svc.test back on .43: it moves to .44 again, and
        // gone.test's streak goes on without a second report.
        let mut state = state;
        state.names[0].addrs = vec!["192.0.2.43".parse().unwrap()];
        state.names.iter_mut().for_each(|n| n.due_mono_ms = now.saturating_sub(1));
        let (apply, rx) = recorder();
        let r = EgressRefresher::resume("t", specs, state, loopback_resolver(dns), apply)
            .unwrap()
            .unwrap();
        let first = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert!(first.contains("added: [192.0.2.44], removed: [192.0.2.43]"), "{first}");
        assert!(eventually(|| r.idle_interval().is_some()), "the round ends");
        let state = r.suspend().unwrap();
        assert!(rx.try_recv().is_err(), "one streak, one report");
        assert_eq!(state.names[1].failures, 2);
        assert_eq!(state.names[1].interval_ms, 10_000, "the backoff doubles");
        let left = state.next_due();
        assert!(left > Duration::from_secs(3) && left <= MIN_TTL, "{left:?}");
    }

    fn eventually(mut f: impl FnMut() -> bool) -> bool {
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(5) {
            if f() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
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
