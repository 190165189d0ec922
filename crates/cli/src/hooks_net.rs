//! `[network]` for `isc run`: the manifest's declaration becomes an `isc_net` request, the
//! ISC's network is set up between clone and release (the child already sits in its new
//! netns), and torn down when the ISC ends or its start fails.
//!
//! Without `[network]` the ISC keeps the engine default: its own netns with only `lo` (up).
//!
//! Cross-ISC state: each networked ISC records its policy in `<state>/isc/<name>/net.json`
//! (removed with the registration). `allow_from` names are resolved against the records of
//! ISCs running now; when an ISC starts or stops, the peer sets of every running ISC that
//! names it are recomputed, under `<root>/net/peers.lock`, so a released address never stays
//! allowed into another ISC.
//!
//! Egress host names: once the service runs, an `isc-egress-dns` thread in the monitor
//! re-resolves each name when its TTL expires (`isc_net::refresh`) and replaces the ISC's
//! egress rules (and the `egress` of its record) under the same lock; every change, and the
//! start and end of a failure streak, is a `net_policy` record on the audit trail.
//!
//! A hibernating monitor (`isc_engine::monitor_hibernate`) keeps the network as it is: the
//! kernel forwards and filters without it, and what `finish` needs to tear it down (the lease,
//! the egress rules in force) is saved as state ([`NetHooks::resume`] rebuilds it). Peers
//! update this ISC's sets from their own processes, under the peers lock, from its record.
//! An egress DNS refresher is suspended with it (its answers, failure streaks and when each
//! name is due are saved too): the time until its next due lookup is the tiny monitor's
//! deadline, the woken monitor's refresher resumes from the saved state and does its due work,
//! and after a quiet second the monitor sleeps again — unless refreshes would come more often
//! than [`HIBERNATE_MIN_REFRESH`] (see there).

use std::fs::{File, OpenOptions};
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use isc_engine::StartHooks;
use isc_manifest::{EgressRule, Manifest, Proto};
use isc_net::{
    Bandwidth, EgressRefresher, EgressRule as NetEgressRule, EgressSpec, EgressTarget, IscNetLease,
    IscNetPolicy, IscNetRequest, KeptNetLease, Listen, NetConfig, Publish, RefreshEvent,
    RefresherState,
};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::launch::Dirs;

/// File name of an ISC's network record inside its state directory.
pub const RECORD_FILE: &str = "net.json";

/// What a running ISC publishes about its network (for peers, `isc ps`, audit).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NetRecord {
    /// ISC name.
    pub name: String,
    /// The id naming its nft objects, host interface and NFLOG prefix (`isc:<id>:in|out`).
    pub id: String,
    /// Names of the ISCs it lets in (manifest `allow_from`).
    pub allow_from: Vec<String>,
    /// The policy in force (addresses, listen ports, resolved egress).
    pub policy: IscNetPolicy,
}

/// The network layer's configuration for a Dock root: leases under `<root>/net`.
pub fn net_config(dirs: &Dirs) -> NetConfig {
    NetConfig { state_dir: dirs.root.join("net"), ..Default::default() }
}

/// Stable id of ISC `name` under state directory `state`: 12 hex digits of BLAKE3, so the host
/// interface `isc<id>` fits IFNAMSIZ and two Docks (state dirs) never share an id.
pub fn isc_id(state: &Path, name: &str) -> String {
    let mut h = blake3::Hasher::new();
    h.update(state.as_os_str().as_encoded_bytes());
    h.update(b"\0");
    h.update(name.as_bytes());
    h.finalize().to_hex()[..12].to_string()
}

fn proto(p: Proto) -> isc_net::Proto {
    match p {
        Proto::Tcp => isc_net::Proto::Tcp,
        Proto::Udp => isc_net::Proto::Udp,
    }
}

/// The `isc_net` request for a manifest's `[network]` (`None`: loopback only). `allow_from`
/// addresses are left empty; they are resolved at start.
pub fn request(m: &Manifest, dirs: &Dirs) -> Result<Option<IscNetRequest>> {
    let Some(net) = &m.network else { return Ok(None) };
    let mut req = IscNetRequest {
        id: isc_id(&dirs.state, &m.name),
        name: m.name.clone(),
        ..Default::default()
    };
    for l in &net.listen {
        req.listen.push(Listen { proto: proto(l.proto), port: l.port });
        if let Some(p) = &l.publish {
            let Some(host_addr) = p.host_addr else {
                bail!("[network] listen port {} is published on every host address; isc publishes only on a declared one; fix: write publish = \"127.0.0.1:{}\" (or another host address)", l.port, p.port);
            };
            req.publish.push(Publish {
                host_addr,
                host_port: p.port,
                proto: proto(l.proto),
                port: l.port,
            });
        }
    }
    for e in &net.egress {
        req.egress.push(match e {
            EgressRule::Cidr { net: n, port: Some(port), proto: p } => {
                EgressSpec { target: EgressTarget::Net(*n), proto: proto(*p), port: *port }
            }
            EgressRule::Cidr { port: None, .. } => bail!(
                "[network] egress \"{e}\" allows every port; this build enforces egress per port (nftables and Landlock alike); fix: add the port, e.g. \"{e}:443\", one entry per port"
            ),
            EgressRule::Host { host, port, proto: p } => {
                EgressSpec { target: EgressTarget::Host(host.clone()), proto: proto(*p), port: *port }
            }
        });
    }
    if let Some(b) = &net.bandwidth {
        req.bandwidth = Bandwidth { to_isc: Some(b.ingress_bps), from_isc: Some(b.egress_bps) };
    }
    Ok(Some(req))
}

/// Landlock TCP ports for the engine spec: `(bind, connect)` from `isc_net::landlock_ports`.
/// Connect also gets the TCP listen ports of ISCs running now that allow this one in; a peer
/// started later is reachable through nftables but not through Landlock (ports are fixed at
/// start), which is the narrower of the two and fails closed.
pub fn landlock_ports(m: &Manifest, dirs: &Dirs) -> Result<(Vec<u16>, Vec<u16>)> {
    let Some(req) = request(m, dirs)? else { return Ok((vec![], vec![])) };
    let peer_ports: Vec<u16> = running_records(&dirs.state, &m.name)
        .iter()
        .filter(|r| r.allow_from.contains(&m.name))
        .flat_map(|r| r.policy.listen.iter())
        .filter(|l| l.proto == isc_net::Proto::Tcp)
        .map(|l| l.port)
        .collect();
    let lp = isc_net::landlock_ports(&req, &peer_ports);
    Ok((lp.bind_tcp, lp.connect_tcp))
}

/// Is `name`'s registration lock held by a live monitor? (Same test as `isc_engine::state`.)
fn is_running(state: &Path, name: &str) -> bool {
    match File::open(state.join("locks").join(format!("{name}.lock"))) {
        // SAFETY: flock(2) on an fd we own; a shared lock we get is dropped with the file.
        Ok(f) => unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) != 0 },
        Err(_) => false,
    }
}

/// Tears down the networks of ISCs whose monitor died (their registry entry is stale but still
/// holds the network record): nft objects, host link, lease; then peers forget them. Runs at
/// every start, before the stale registry entries themselves are removed.
pub fn collect_stale(dirs: &Dirs) -> Result<Vec<String>> {
    let Ok(rd) = std::fs::read_dir(dirs.state.join("isc")) else { return Ok(vec![]) };
    let stale: Vec<NetRecord> = rd
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            if is_running(&dirs.state, &name) {
                return None;
            }
            let bytes = std::fs::read(e.path().join(RECORD_FILE)).ok()?;
            serde_json::from_slice::<NetRecord>(&bytes).ok()
        })
        .collect();
    if stale.is_empty() {
        return Ok(vec![]);
    }
    let cfg = net_config(dirs);
    let _lock = PeersLock::take(&cfg)?;
    let mut removed = vec![];
    for rec in stale {
        isc_net::teardown_stale(&cfg, &rec.policy)
            .with_context(|| format!("removing the network left by ISC `{}`", rec.name))?;
        let _ = std::fs::remove_file(record_path(&dirs.state, &rec.name));
        sync_peers(&dirs.state, &rec.name, Some(&rec.name))?;
        removed.push(rec.name);
    }
    Ok(removed)
}

/// Rebuilds the whole `inet isc` table from the records of the ISCs running in this state
/// directory, in one transaction, after tearing down the networks of dead monitors; leases no
/// running ISC holds are released and their links deleted. For Dock start-up and operators
/// (`isc net reconcile`). Returns the number of ISCs whose policy was re-applied; does nothing
/// (and needs no `nft`) when no ISC here has or had a network.
pub fn reconcile_all(dirs: &Dirs, dry_run: bool) -> Result<Option<String>> {
    let cfg = net_config(dirs);
    let running = running_records(&dirs.state, "");
    let policies: Vec<IscNetPolicy> = running.iter().map(|r| r.policy.clone()).collect();
    if dry_run {
        return Ok(Some(isc_net::render_reconcile(&cfg, &policies)));
    }
    collect_stale(dirs)?;
    let leases = cfg.allocator().and_then(|a| a.leases().map_err(Into::into))?;
    if policies.is_empty() && leases.is_empty() {
        return Ok(None);
    }
    let _lock = PeersLock::take(&cfg)?;
    isc_net::reconcile(&cfg, &policies).context("rebuilding the inet isc table")?;
    tracing::info!(iscs = policies.len(), "network table reconciled");
    Ok(Some(format!("reconciled the inet isc table for {} running ISC(s)", policies.len())))
}

fn record_path(state: &Path, name: &str) -> PathBuf {
    state.join("isc").join(name).join(RECORD_FILE)
}

/// Network records of running ISCs other than `except`.
pub fn running_records(state: &Path, except: &str) -> Vec<NetRecord> {
    let Ok(rd) = std::fs::read_dir(state.join("isc")) else { return vec![] };
    let mut out: Vec<NetRecord> = rd
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            if name == except || !is_running(state, &name) {
                return None;
            }
            let bytes = std::fs::read(e.path().join(RECORD_FILE)).ok()?;
            serde_json::from_slice::<NetRecord>(&bytes).ok()
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

fn addresses_of(records: &[NetRecord], names: &[String]) -> Vec<IpAddr> {
    records
        .iter()
        .filter(|r| names.contains(&r.name))
        .flat_map(|r| [IpAddr::V4(r.policy.addr_v4), IpAddr::V6(r.policy.addr_v6)])
        .collect()
}

/// Recompute the peer sets of every running ISC that names `changed` in its `allow_from`,
/// from the records of ISCs running now (`gone` excluded even if still listed).
fn sync_peers(state: &Path, changed: &str, gone: Option<&str>) -> Result<()> {
    let all = running_records(state, gone.unwrap_or(""));
    for r in all.iter().filter(|r| r.allow_from.iter().any(|a| a == changed)) {
        let mut rec = r.clone();
        let old = std::mem::replace(&mut rec.policy.allow_from, addresses_of(&all, &r.allow_from));
        isc_net::nft::rules::apply_elems(&isc_net::nft::rules::peers_refresh_ops(
            &rec.policy,
            &old,
        ))
        .with_context(|| format!("updating which ISCs may reach `{}`", r.name))?;
        // The record says which peer elements are in force: the next swap deletes exactly those.
        write_record(state, &rec)?;
    }
    Ok(())
}

fn write_record(state: &Path, record: &NetRecord) -> Result<()> {
    let path = record_path(state, &record.name);
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(record)?)
        .and_then(|_| std::fs::rename(&tmp, &path))
        .with_context(|| format!("writing {}", path.display()))
}

/// An exclusive `flock` on `<root>/net/peers.lock`, released when the file closes on drop.
struct PeersLock {
    _held: File,
}

impl PeersLock {
    fn take(cfg: &NetConfig) -> Result<Self> {
        std::fs::create_dir_all(&cfg.state_dir)
            .with_context(|| format!("creating {}", cfg.state_dir.display()))?;
        let path = cfg.state_dir.join("peers.lock");
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        // SAFETY: flock(2) on an fd we own; blocking until other isc processes finish.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("locking {}", path.display()));
        }
        Ok(Self { _held: f })
    }
}

/// The network side of a start. `before_release` sets the network up; [`NetHooks::finish`]
/// (or drop, on every error path) tears it down.
pub struct NetHooks {
    cfg: NetConfig,
    dirs: Dirs,
    state: PathBuf,
    name: String,
    allow_from: Vec<String>,
    request: Option<IscNetRequest>,
    lease: Option<IscNetLease>,
    refresher: Option<EgressRefresher>,
    /// The egress rules in force once the refresher replaced the start's (it sets them).
    egress_in_force: Arc<Mutex<Option<Vec<NetEgressRule>>>>,
}

/// What [`NetHooks`] keeps while its monitor hibernates: what `finish` tears down, and the
/// egress DNS refresher's state.
#[derive(Serialize, Deserialize)]
struct KeptNet {
    lease: KeptNetLease,
    egress_in_force: Option<Vec<NetEgressRule>>,
    #[serde(default)]
    refresher: Option<RefresherState>,
}

/// A monitor with an egress DNS refresher hibernates only while every name is looked up at
/// most this often (its TTL, or its failure backoff, is at least this long). Each lookup
/// needs the whole isc: the tiny monitor wakes it at the deadline (an exec, resuming the
/// hooks: ~5–10 ms of CPU), and it stays whole for the quiet second before it sleeps again.
/// With TTLs at the 5 s clamp that would be a wake every 5 s — 20% of the time whole anyway,
/// and more CPU than the whole monitor's refresher thread spends (a wait and a UDP lookup) —
/// for little memory saved; at 30 s or more the monitor sleeps ≥ 29 s of every 30 for a
/// wake's CPU every 30 s, which the ~400 KiB it frees are worth. A short TTL that grows later
/// (or a backoff that reaches this) lets the monitor sleep from then on.
pub const HIBERNATE_MIN_REFRESH: Duration = Duration::from_secs(30);

impl NetHooks {
    /// Plans the network of `m` (nothing happens yet).
    pub fn prepare(m: &Manifest, dirs: &Dirs) -> Result<Self> {
        let request = request(m, dirs)?;
        if request.is_some() && !forwarding_on() {
            tracing::warn!(isc = %m.name, "IPv4/IPv6 forwarding is off in this network namespace: the ISC can be reached on its listen ports but its egress goes nowhere; fix: sysctl net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1 (docs/network.md)");
        }
        Ok(Self {
            cfg: net_config(dirs),
            dirs: dirs.clone(),
            state: dirs.state.clone(),
            name: m.name.clone(),
            allow_from: m.network.as_ref().map(|n| n.allow_from.clone()).unwrap_or_default(),
            request,
            lease: None,
            refresher: None,
            egress_in_force: Arc::default(),
        })
    }

    /// The network hooks of a woken monitor, from what [`StartHooks::suspend`] kept (a JSON
    /// null, a monitor without network, is [`NetHooks::prepare`]'s business): the network is
    /// still up, and `finish` tears it down as the sleeping monitor's would have.
    /// An egress DNS refresher, if there was one, starts again from its saved state.
    pub fn resume(m: &Manifest, dirs: &Dirs, state: serde_json::Value) -> Result<Self> {
        let kept: KeptNet = serde_json::from_value(state).context("the saved network state")?;
        let request = request(m, dirs)?;
        if request.is_none() {
            bail!("the saved state holds a network, the saved manifest declares none");
        }
        let cfg = net_config(dirs);
        let mut hooks = Self {
            lease: Some(IscNetLease::adopt(&cfg, kept.lease)),
            cfg,
            dirs: dirs.clone(),
            state: dirs.state.clone(),
            name: m.name.clone(),
            allow_from: m.network.as_ref().map(|n| n.allow_from.clone()).unwrap_or_default(),
            request,
            refresher: None,
            egress_in_force: Arc::new(Mutex::new(kept.egress_in_force)),
        };
        if let Some(saved) = kept.refresher {
            hooks.start_refresher(Some(saved));
        }
        Ok(hooks)
    }

    /// Starts the egress DNS refresher (none without egress host names): from the answers of
    /// the start, or from what a suspended one saved.
    fn start_refresher(&mut self, saved: Option<RefresherState>) {
        let (Some(req), Some(lease)) = (&self.request, &self.lease) else { return };
        let apply = egress_applier(
            self.dirs.clone(),
            self.name.clone(),
            lease.policy().clone(),
            Arc::clone(&self.egress_in_force),
        );
        let resolver = Box::new(isc_net::dns::Resolver::system);
        let specs = req.egress.clone();
        let started = match saved {
            None => {
                let initial = lease.egress_answers().to_vec();
                EgressRefresher::start(&self.name, specs, initial, resolver, apply)
            }
            Some(state) => EgressRefresher::resume(&self.name, specs, state, resolver, apply),
        };
        match started {
            Ok(r) => self.refresher = r,
            Err(e) => {
                tracing::error!(isc = %self.name, error = %e, "cannot start the egress DNS refresher; egress host names keep their addresses in force")
            }
        }
    }

    fn setup(&mut self, child_pid: i32) -> Result<()> {
        let Some(req) = &self.request else { return Ok(()) };
        let _lock = PeersLock::take(&self.cfg)?;
        let mut req = req.clone();
        req.allow_from = addresses_of(&running_records(&self.state, &self.name), &self.allow_from);
        let lease = isc_net::setup_isc(&self.cfg, &req, child_pid)?;
        let record = NetRecord {
            name: self.name.clone(),
            id: req.id.clone(),
            allow_from: self.allow_from.clone(),
            policy: lease.policy().clone(),
        };
        self.lease = Some(lease);
        write_record(&self.state, &record)?;
        sync_peers(&self.state, &self.name, None)
    }

    /// Tears the network down: peers forget this ISC's addresses first, then its firewall
    /// objects, veth and lease go. Idempotent.
    pub fn finish(&mut self) -> Result<()> {
        // First: once stopped, no refresh can re-add the egress elements being removed.
        if let Some(r) = self.refresher.take() {
            r.stop();
        }
        let Some(mut lease) = self.lease.take() else { return Ok(()) };
        // The egress elements to remove are those the refresher (stopped: joined) left in
        // force, not the start's.
        if let Some(egress) = self.egress_in_force.lock().ok().and_then(|mut e| e.take()) {
            lease.set_egress_in_force(egress);
        }
        let lock = PeersLock::take(&self.cfg);
        let _ = std::fs::remove_file(record_path(&self.state, &self.name));
        let peers = sync_peers(&self.state, &self.name, Some(&self.name));
        let down = lease.teardown().context("removing the ISC's network");
        drop(lock);
        peers.and(down)
    }
}

fn forwarding_on() -> bool {
    ["/proc/sys/net/ipv4/ip_forward", "/proc/sys/net/ipv6/conf/all/forwarding"]
        .iter()
        .all(|p| std::fs::read_to_string(p).map(|s| s.trim() == "1").unwrap_or(false))
}

impl StartHooks for NetHooks {
    /// Without a network there is nothing to keep; with one, its lease and the egress rules
    /// in force are kept, and an egress DNS refresher's state if it is idle (no lookup under
    /// way) and looks names up no more often than [`HIBERNATE_MIN_REFRESH`].
    fn can_hibernate(&self) -> bool {
        let refresher_sleeps = |r: &EgressRefresher| {
            r.idle_interval().is_some_and(|every| every >= HIBERNATE_MIN_REFRESH)
        };
        self.request.is_none()
            || (self.lease.is_some() && self.refresher.as_ref().is_none_or(refresher_sleeps))
    }

    /// The refresher stopped and its state, the lease (disarmed: the exec tears nothing down)
    /// and the egress rules in force (read once the refresher stopped), as state; no
    /// descriptor. The refresher's next due lookup is the deadline.
    fn suspend(&mut self) -> isc_engine::monitor_hibernate::Suspended {
        let Some(lease) = self.lease.take() else { return Default::default() };
        let refresher = self.refresher.take().and_then(|r| {
            let state = r.suspend();
            if state.is_none() {
                tracing::error!(isc = %self.name, "the egress DNS refresher had stopped; egress host names keep their addresses in force");
            }
            state
        });
        let deadline = refresher.as_ref().map(RefresherState::next_due);
        let egress_in_force = self.egress_in_force.lock().ok().and_then(|e| e.clone());
        let kept = KeptNet { lease: lease.into_kept(), egress_in_force, refresher };
        isc_engine::monitor_hibernate::Suspended {
            state: serde_json::to_value(kept).expect("the network state serializes"),
            deadline,
            ..Default::default()
        }
    }
    fn before_release(&mut self, child_pid: i32) -> Result<(), (&'static str, String)> {
        self.setup(child_pid).map_err(|e| ("setting up the ISC's network", format!("{e:#}")))
    }

    /// Starts the egress DNS refresher (threads are allowed once the service runs).
    fn after_start(&mut self, _state: &isc_engine::state::IscState) {
        self.start_refresher(None);
    }
}

/// What the refresher thread does with its events: a change replaces the ISC's egress rules
/// and the `egress` of its record under the peers lock (a reconcile then rebuilds the table
/// with the current answers); every event becomes a `net_policy` audit record.
fn egress_applier(
    dirs: Dirs,
    name: String,
    policy: IscNetPolicy,
    in_force: Arc<Mutex<Option<Vec<NetEgressRule>>>>,
) -> isc_net::refresh::Apply {
    let cfg = net_config(&dirs);
    let mut audit: Option<isc_audit::AuditLog> = None;
    Box::new(move |ev| {
        let detail = match ev {
            RefreshEvent::Changed { rules, changes } => {
                let _lock = PeersLock::take(&cfg).map_err(|e| format!("{e:#}"))?;
                let next = IscNetPolicy { egress: rules.to_vec(), ..policy.clone() };
                let old = in_force
                    .lock()
                    .ok()
                    .and_then(|e| e.clone())
                    .unwrap_or_else(|| policy.egress.clone());
                // The record names old and new while they are swapped, so a teardown after
                // a crash (it removes what the record names) removes both.
                let both: Vec<_> = old.iter().chain(rules).cloned().collect();
                update_record_egress(&dirs.state, &name, &both).map_err(|e| format!("{e:#}"))?;
                if let Err(e) = isc_net::apply_egress(&next, &old) {
                    let _ = update_record_egress(&dirs.state, &name, &old);
                    return Err(e.to_string());
                }
                if let Ok(mut e) = in_force.lock() {
                    *e = Some(rules.to_vec());
                }
                update_record_egress(&dirs.state, &name, rules).map_err(|e| format!("{e:#}"))?;
                let changes: Vec<serde_json::Value> = changes
                    .iter()
                    .map(|c| {
                        json!({"host": c.host, "added": c.added, "removed": c.removed, "ttl_s": c.ttl.as_secs()})
                    })
                    .collect();
                json!({"egress_refreshed": changes, "egress": rules})
            }
            RefreshEvent::Failing { host, error } => {
                json!({"egress_lookup_failed": {"host": host, "error": error, "kept": "last good answer"}})
            }
            RefreshEvent::Recovered { host } => json!({"egress_lookup_recovered": {"host": host}}),
        };
        if audit.is_none() {
            match crate::hooks_audit::open_for_monitor(&dirs) {
                Ok(log) => audit = Some(log),
                Err(e) => {
                    tracing::error!(isc = %name, error = format!("{e:#}"), "cannot open the audit trail for an egress refresh record")
                }
            }
        }
        if let Some(log) = &audit {
            let kind = isc_audit::Kind::NetPolicy;
            if let Err(e) = log.append(Some(&name), kind, isc_audit::Actor::Isc, detail) {
                tracing::error!(isc = %name, error = %e, "cannot record an egress refresh");
            }
        }
        Ok(())
    })
}

/// Replaces the `egress` of `name`'s record (missing record: the ISC is stopping; nothing to
/// do). Call under the peers lock, like every writer of records.
fn update_record_egress(state: &Path, name: &str, rules: &[NetEgressRule]) -> Result<()> {
    let path = record_path(state, name);
    let Ok(bytes) = std::fs::read(&path) else { return Ok(()) };
    let mut rec: NetRecord = serde_json::from_slice(&bytes)
        .with_context(|| format!("reading the network record {}", path.display()))?;
    rec.policy.egress = rules.to_vec();
    write_record(state, &rec)
}

impl Drop for NetHooks {
    fn drop(&mut self) {
        if let Err(e) = self.finish() {
            tracing::error!(isc = %self.name, error = format!("{e:#}"), "network teardown failed; a reconcile removes the leftovers");
        }
    }
}
