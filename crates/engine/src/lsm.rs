//! Landlock: the filesystem is read-and-execute everywhere, writable only on declared paths;
//! TCP bind/connect only on declared ports; signals and abstract unix sockets scoped to the ISC.
//!
//! This is the second, independent layer behind the read-only mounts and nftables: a mount
//! mistake or a routing mistake alone does not open a hole.

use std::path::PathBuf;

use landlock::{
    Access, AccessFs, AccessNet, CompatLevel, Compatible, NetPort, PathBeneath, PathFd, Ruleset,
    RulesetAttr, RulesetCreatedAttr, RulesetStatus, Scope, ABI,
};

/// The newest ABI we ask for; older kernels are refused unless the manifest opts out (they
/// would silently enforce less).
const TARGET_ABI: ABI = ABI::V6;

#[derive(Debug, thiserror::Error)]
pub enum LandlockError {
    #[error("Landlock ruleset: {0}; fix: boot a kernel with CONFIG_SECURITY_LANDLOCK=y and `landlock` in the lsm= list (ABI 6 needed)")]
    Ruleset(#[from] landlock::RulesetError),
    #[error("opening {path} for a Landlock rule: {detail}")]
    PathFd { path: PathBuf, detail: String },
    #[error("Landlock is not fully enforced on this kernel (status {0:?}); fix: use a kernel with Landlock ABI 6")]
    NotEnforced(String),
}

/// What the service may do, derived from the spec.
#[derive(Debug, Clone, Default)]
pub struct LandlockPolicy {
    pub writable: Vec<PathBuf>,
    pub tcp_bind: Vec<u16>,
    pub tcp_connect: Vec<u16>,
}

/// Read access rights plus execute: what the whole read-only tree grants.
fn read_exec() -> landlock::BitFlags<AccessFs> {
    AccessFs::from_read(TARGET_ABI)
}

/// Applies the policy to the calling process (inherited by every child).
pub fn restrict(policy: &LandlockPolicy) -> Result<(), LandlockError> {
    let all_fs = AccessFs::from_all(TARGET_ABI);
    let mut ruleset = Ruleset::default()
        .set_compatibility(CompatLevel::HardRequirement)
        .handle_access(all_fs)?
        .handle_access(AccessNet::from_all(TARGET_ABI))?
        .scope(Scope::from_all(TARGET_ABI))?
        .create()?;
    ruleset = ruleset.add_rule(PathBeneath::new(path_fd("/")?, read_exec()))?;
    // Device nodes need write (and terminal ioctls) to be usable at all.
    for dev in ["/dev/null", "/dev/zero", "/dev/full", "/dev/tty", "/dev/random", "/dev/urandom"] {
        if std::path::Path::new(dev).exists() {
            ruleset = ruleset.add_rule(PathBeneath::new(
                path_fd(dev)?,
                AccessFs::ReadFile | AccessFs::WriteFile | AccessFs::IoctlDev,
            ))?;
        }
    }
    for path in &policy.writable {
        ruleset = ruleset.add_rule(PathBeneath::new(path_fd(path)?, all_fs))?;
    }
    for port in &policy.tcp_bind {
        ruleset = ruleset.add_rule(NetPort::new(*port, AccessNet::BindTcp))?;
    }
    for port in &policy.tcp_connect {
        ruleset = ruleset.add_rule(NetPort::new(*port, AccessNet::ConnectTcp))?;
    }
    // Log the *service's* denials too (it is a new exec of the domain's creator, whose denials
    // the kernel otherwise leaves out) to the audit subsystem, where `isc run` collects them
    // when the host's audit is enabled. Best effort: ABI 7+.
    ruleset = ruleset.set_compatibility(CompatLevel::BestEffort).log_new_exec(true)?;
    let status = ruleset.restrict_self()?;
    if status.ruleset != RulesetStatus::FullyEnforced {
        return Err(LandlockError::NotEnforced(format!("{:?}", status.ruleset)));
    }
    Ok(())
}

fn path_fd(path: impl Into<PathBuf>) -> Result<PathFd, LandlockError> {
    let path = path.into();
    PathFd::new(&path).map_err(|e| LandlockError::PathFd { path, detail: e.to_string() })
}
