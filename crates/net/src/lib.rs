//! isc-net: the network boundary of an ISC (DESIGN.md §5, principles P3 and P4).
//!
//! Routed, not bridged: each ISC gets a veth pair whose host end `isc<short>` holds the even
//! address of a /31 and a /127 and whose ISC end `eth0` holds the odd one. One nftables table,
//! `inet isc`, enforces ingress (declared listen ports only), egress (declared destinations
//! only), ISC-to-ISC policy, anti-spoofing and published ports; denials go to an NFLOG group.
//!
//! Every function acts in the network namespace of the calling thread (the host, in
//! production) and in the ISC namespace named by a pid; none ever picks a namespace by itself.

pub mod alloc;
pub mod dns;
pub mod link;
pub mod nflog;
pub mod nft;
pub mod policy;
pub mod refresh;
pub mod tc;

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use ipnet::{Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

pub use alloc::{AllocError, Allocator, Lease};
pub use link::LinkError;
pub use nflog::{Denial, Direction, NflogError, NflogReader};
pub use nft::rules::audit_nflog_group;
pub use nft::{NftCli, NftError, NftRunner};
pub use policy::{
    landlock_ports, parse_rate, Bandwidth, EgressRule, EgressSpec, EgressTarget, HostAnswer,
    IscNetPolicy, IscNetRequest, LandlockPorts, Listen, PolicyError, Proto, Publish,
};
pub use refresh::{EgressRefresher, HostChange, RefreshEvent, RefresherState};
pub use tc::{TcCli, TcError, TcRunner};

use nft::rules::{self, RulesConfig};

/// Errors of the network layer; each wraps the step that failed.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("network policy of ISC {id}: {source}")]
    Policy { id: String, source: PolicyError },
    #[error("address lease: {0}")]
    Alloc(#[from] AllocError),
    #[error("veth for ISC {id}: {source}")]
    Link { id: String, source: LinkError },
    #[error("nftables for ISC {id}: {source}")]
    Nft { id: String, source: NftError },
    #[error("bandwidth for ISC {id}: {source}")]
    Tc { id: String, source: TcError },
    #[error("cannot enable forwarding via {path}: {source}")]
    Forwarding { path: String, source: std::io::Error },
}

/// Configuration of the Dock's network layer.
#[derive(Debug, Clone)]
pub struct NetConfig {
    /// IPv4 prefix the /31s come from (default 10.88.0.0/16).
    pub v4_prefix: Ipv4Net,
    /// IPv6 ULA prefix the /127s come from (default fd69:7363::/48, "isc" in ASCII).
    pub v6_prefix: Ipv6Net,
    /// Directory of the lease file.
    pub state_dir: PathBuf,
    /// NFLOG group for denials (default 100).
    pub nflog_group: u16,
    /// Logged denials per second per ISC and direction (default 10; the rest drop silently).
    pub log_per_second: u32,
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            v4_prefix: "10.88.0.0/16".parse().expect("valid prefix"),
            v6_prefix: "fd69:7363::/48".parse().expect("valid prefix"),
            state_dir: PathBuf::from("/var/lib/isc/net"),
            nflog_group: 100,
            log_per_second: 10,
        }
    }
}

impl NetConfig {
    fn rules(&self) -> RulesConfig {
        RulesConfig {
            v4_prefix: self.v4_prefix,
            v6_prefix: self.v6_prefix,
            nflog_group: self.nflog_group,
            log_per_second: self.log_per_second,
        }
    }

    /// The address allocator of this configuration (its leases say which ISCs hold a network).
    pub fn allocator(&self) -> Result<Allocator, NetError> {
        Ok(Allocator::new(&self.state_dir, self.v4_prefix, self.v6_prefix)?)
    }
}

/// Turn on IPv4 and IPv6 forwarding in the calling thread's network namespace (the routed
/// design needs it). Note: `net.ipv6.conf.all.forwarding=1` makes the kernel ignore router
/// advertisements on interfaces with `accept_ra=1`; hosts configured by SLAAC need
/// `accept_ra=2` on their uplink first (docs/network.md).
pub fn enable_forwarding() -> Result<(), NetError> {
    // /proc/thread-self: sysctl files under /proc/sys/net follow the opener's namespace.
    for path in ["/proc/sys/net/ipv4/ip_forward", "/proc/sys/net/ipv6/conf/all/forwarding"] {
        std::fs::write(path, b"1")
            .map_err(|source| NetError::Forwarding { path: path.to_string(), source })?;
    }
    Ok(())
}

/// A live ISC network: lease, veth, firewall entries. Dropping it tears everything down
/// (best effort); call [`IscNetLease::teardown`] to see errors.
pub struct IscNetLease {
    cfg: NetConfig,
    policy: IscNetPolicy,
    egress_answers: Vec<HostAnswer>,
    lease: Lease,
    live: bool,
}

impl std::fmt::Debug for IscNetLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IscNetLease").field("lease", &self.lease).field("live", &self.live).finish()
    }
}

/// What an [`IscNetLease`] is, kept across an `execve(2)` of its holder (a hibernating
/// monitor). The lease holds no descriptor: its address pair is an entry in the allocator's
/// file, its veth and firewall objects live in the kernel, and all of them are found again by
/// what this names. Serialise it, and [`IscNetLease::adopt`] it in the new image.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeptNetLease {
    /// The policy in force (its `egress` as last set, see [`IscNetLease::set_egress_in_force`]).
    pub policy: IscNetPolicy,
    /// The address pair and host interface.
    pub lease: Lease,
}

impl IscNetLease {
    /// The lease as what names it, for a holder about to exec itself: nothing is torn down,
    /// now or when the result is dropped. The egress host names' start-time answers are not
    /// kept: an egress DNS refresher starts from them, and a holder that sleeps keeps the
    /// refresher's own state instead ([`refresh::EgressRefresher::suspend`]).
    pub fn into_kept(mut self) -> KeptNetLease {
        // Disarmed: `Drop` sees a lease that is no longer live.
        self.live = false;
        let policy = self.policy.clone();
        KeptNetLease { policy, lease: self.lease.clone() }
    }

    /// The lease a previous image of this process held ([`IscNetLease::into_kept`]), live
    /// again: dropping it or [`IscNetLease::teardown`] removes the network. `cfg` must be the
    /// configuration it was set up with.
    pub fn adopt(cfg: &NetConfig, kept: KeptNetLease) -> IscNetLease {
        IscNetLease {
            cfg: cfg.clone(),
            policy: kept.policy,
            egress_answers: Vec::new(),
            lease: kept.lease,
            live: true,
        }
    }

    /// The ISC's IPv4 address.
    pub fn addr_v4(&self) -> Ipv4Addr {
        self.lease.isc_v4
    }
    /// The ISC's IPv6 address.
    pub fn addr_v6(&self) -> Ipv6Addr {
        self.lease.isc_v6
    }
    /// The host end's IPv4 address (the ISC's gateway).
    pub fn host_v4(&self) -> Ipv4Addr {
        self.lease.host_v4
    }
    /// The host end's IPv6 address.
    pub fn host_v6(&self) -> Ipv6Addr {
        self.lease.host_v6
    }
    /// The host-side interface name.
    pub fn if_host(&self) -> &str {
        &self.lease.if_host
    }
    /// The NFLOG group only this ISC's denials are logged to (its monitor reads it; see
    /// [`audit_nflog_group`]).
    pub fn audit_nflog_group(&self) -> u16 {
        audit_nflog_group(self.cfg.v4_prefix, self.lease.isc_v4)
    }
    /// The policy in force (store it: [`reconcile`] rebuilds the table from these).
    pub fn policy(&self) -> &IscNetPolicy {
        &self.policy
    }

    /// The answer each egress host name had when the network was set up (the refresher's
    /// starting point, see [`refresh::EgressRefresher`]).
    pub fn egress_answers(&self) -> &[HostAnswer] {
        &self.egress_answers
    }

    /// Re-resolve a (new) egress declaration and replace the egress rules atomically.
    pub fn refresh_egress(&mut self, egress: &[EgressSpec]) -> Result<(), NetError> {
        let id = self.policy.id.clone();
        let new = policy::resolve_egress(egress)
            .map_err(|source| NetError::Policy { id: id.clone(), source })?;
        let old = std::mem::replace(&mut self.policy.egress, new);
        apply_egress(&self.policy, &old).inspect_err(|_| self.policy.egress = old.clone())
    }

    /// Replace the set of peer ISC addresses allowed to reach this ISC's listen ports (call it
    /// when an ISC named in `allow_from` starts or stops).
    pub fn set_allow_from(&mut self, peers: &[std::net::IpAddr]) -> Result<(), NetError> {
        let old = std::mem::replace(&mut self.policy.allow_from, peers.to_vec());
        rules::apply_elems(&rules::peers_refresh_ops(&self.policy, &old))
            .map_err(|source| NetError::Nft { id: self.policy.id.clone(), source })
    }

    /// Say which egress rules are in force now, when something other than
    /// [`IscNetLease::refresh_egress`] replaced them (the monitor's DNS refresher, through
    /// [`apply_egress`]): the teardown removes exactly those elements. Nothing is applied.
    pub fn set_egress_in_force(&mut self, egress: Vec<EgressRule>) {
        self.policy.egress = egress;
    }

    /// Remove the firewall entries, the veth and the lease. All three are attempted; the first
    /// error is returned.
    pub fn teardown(mut self) -> Result<(), NetError> {
        self.teardown_inner()
    }

    fn teardown_inner(&mut self) -> Result<(), NetError> {
        if !self.live {
            return Ok(());
        }
        self.live = false;
        let id = self.policy.id.clone();
        // Side by side: the element batch waits for an RCU grace period when its socket
        // closes (~10 ms) and deleting a veth pair for the netdev teardown's own (~30 ms,
        // `unregister_netdevice` → `synchronize_net`, `rcu_barrier`); neither needs the other
        // (an element keyed by a deleted link matches nothing).
        let (nft, link) = std::thread::scope(|scope| {
            let link = scope.spawn(|| link::delete_host_side(&self.lease.if_host));
            let nft = rules::apply_remove_isc(&self.cfg.rules(), &self.policy);
            (nft, link.join())
        });
        let nft = nft.map_err(|source| NetError::Nft { id: id.clone(), source });
        let link = match link {
            Ok(r) => r.map(|_| ()).map_err(|source| NetError::Link { id: id.clone(), source }),
            Err(panic) => std::panic::resume_unwind(panic),
        };
        let lease =
            self.cfg.allocator().and_then(|a| a.release(&id).map(|_| ()).map_err(NetError::from));
        tracing::info!(isc = %id, if_host = %self.lease.if_host, "ISC network torn down");
        nft.and(link).and(lease)
    }
}

impl Drop for IscNetLease {
    fn drop(&mut self) {
        if let Err(e) = self.teardown_inner() {
            tracing::error!(isc = %self.policy.id, error = %e, "best-effort network teardown failed; run a reconcile");
        }
    }
}

/// Replace the egress elements of the ISC of `policy` (its id, host link and new `egress`),
/// applied from `old`, in one transaction: only this ISC's elements of the egress sets are
/// touched, and connections already established stay (replies are accepted before egress).
/// `old` must be what is in force (the record's `egress`): elements not named are not removed.
pub fn apply_egress(policy: &IscNetPolicy, old: &[EgressRule]) -> Result<(), NetError> {
    rules::apply_elems(&rules::egress_refresh_ops(policy, old))
        .map_err(|source| NetError::Nft { id: policy.id.clone(), source })
}

fn build_policy(req: &IscNetRequest, lease: &Lease, egress: Vec<EgressRule>) -> IscNetPolicy {
    IscNetPolicy {
        id: req.id.clone(),
        name: req.name.clone(),
        if_host: lease.if_host.clone(),
        addr_v4: lease.isc_v4,
        addr_v6: lease.isc_v6,
        listen: req.listen.clone(),
        publish: req.publish.clone(),
        egress,
        allow_from: req.allow_from.clone(),
    }
}

/// Give the ISC whose network namespace holds process `netns_pid` its network: lease an address
/// pair, create the veth (ISC end `eth0` created directly in that namespace), address and route
/// both ends, add its firewall objects in one nft transaction, then apply bandwidth limits.
/// On failure, everything done so far is undone.
pub fn setup_isc(
    cfg: &NetConfig,
    req: &IscNetRequest,
    netns_pid: i32,
) -> Result<IscNetLease, NetError> {
    let id = req.id.clone();
    let perr = |source| NetError::Policy { id: id.clone(), source };
    policy::validate_id(&req.id).map_err(perr)?;
    for p in &req.publish {
        if p.host_port == 0 || p.port == 0 {
            return Err(perr(PolicyError::ZeroPort { what: "publish" }));
        }
    }
    // The resolver (and its TTLs) only when a host name is declared.
    let names = req.egress.iter().any(|e| matches!(e.target, EgressTarget::Host(_)));
    let resolver = if names {
        let r = dns::Resolver::system();
        Some(r.map_err(|e| perr(PolicyError::Resolver { source: Box::new(e) }))?)
    } else {
        None
    };
    let (egress, egress_answers) =
        policy::resolve_egress_with(&req.egress, resolver.as_ref()).map_err(perr)?;
    let netns = link::open_netns_of(netns_pid)
        .map_err(|source| NetError::Link { id: id.clone(), source })?;
    let lease = cfg.allocator()?.allocate(&req.id)?;
    let policy = build_policy(req, &lease, egress);
    // From here on, dropping `out` undoes whatever was done.
    let out = IscNetLease { cfg: cfg.clone(), policy, egress_answers, lease, live: true };
    let plan = link::VethPlan {
        if_host: out.lease.if_host.clone(),
        host_v4: out.lease.host_v4,
        isc_v4: out.lease.isc_v4,
        host_v6: out.lease.host_v6,
        isc_v6: out.lease.isc_v6,
    };
    link::create_isc_side(&plan, &netns)
        .map_err(|source| NetError::Link { id: id.clone(), source })?;
    rules::apply_add_isc(&cfg.rules(), &out.policy, &NftCli::default())
        .map_err(|source| NetError::Nft { id: id.clone(), source })?;
    link::configure_host_side(&plan).map_err(|source| NetError::Link { id: id.clone(), source })?;
    if req.bandwidth.from_isc.is_some() {
        link::create_ifb_for(&plan.if_host)
            .map_err(|source| NetError::Link { id: id.clone(), source })?;
    }
    tc::apply_bandwidth(&TcCli::default(), &plan.if_host, &req.bandwidth)
        .map_err(|source| NetError::Tc { id: id.clone(), source })?;
    tracing::info!(isc = %id, if_host = %plan.if_host, v4 = %plan.isc_v4, v6 = %plan.isc_v6, "ISC network up");
    Ok(out)
}

/// Removes the network of an ISC whose monitor died without tearing it down (SIGKILL): its
/// nftables objects (by name, idempotent), its host link (the peer went with its namespace) and
/// its address lease. `policy` is the one recorded when it was set up. Safe to call twice.
pub fn teardown_stale(cfg: &NetConfig, policy: &IscNetPolicy) -> Result<(), NetError> {
    let id = policy.id.clone();
    let nft = rules::apply_remove_isc(&cfg.rules(), policy)
        .map_err(|source| NetError::Nft { id: id.clone(), source });
    let link = link::delete_host_side(&policy.if_host)
        .map(|_| ())
        .map_err(|source| NetError::Link { id: id.clone(), source });
    let lease = cfg.allocator().and_then(|a| a.release(&id).map(|_| ()).map_err(NetError::from));
    tracing::warn!(isc = %id, if_host = %policy.if_host, "removed the network of a dead monitor");
    nft.and(link).and(lease)
}

/// The full-reconcile batch as nft script text (for `--dry-run` and logs).
pub fn render_reconcile(cfg: &NetConfig, policies: &[IscNetPolicy]) -> String {
    rules::full_reconcile(&cfg.rules(), policies).to_text()
}

/// Rebuild the whole `inet isc` table from `policies` in one transaction, then delete the host
/// links and release the leases of ISCs that hold a lease but are not in `policies` (leftovers
/// of a crash). Use at Dock start-up.
pub fn reconcile(cfg: &NetConfig, policies: &[IscNetPolicy]) -> Result<(), NetError> {
    // One transaction for the whole table: ~0.1 ms per ISC in nft and the kernel (measured at
    // 1000 ISCs), so the base timeout plus a generous per-ISC allowance never cuts it short.
    let nft = NftCli::default();
    let per_isc = std::time::Duration::from_millis(10) * policies.len() as u32;
    let nft = NftCli { timeout: nft.timeout + per_isc, ..nft };
    rules::full_reconcile(&cfg.rules(), policies)
        .apply(&nft)
        .map_err(|source| NetError::Nft { id: "*".into(), source })?;
    let alloc = cfg.allocator()?;
    for stale in alloc.leases()?.into_iter().filter(|l| !policies.iter().any(|p| p.id == l.id)) {
        link::delete_host_side(&stale.if_host)
            .map_err(|source| NetError::Link { id: stale.id.clone(), source })?;
        alloc.release(&stale.id)?;
        tracing::warn!(isc = %stale.id, if_host = %stale.if_host, "removed leftover network of a stopped ISC");
    }
    Ok(())
}
