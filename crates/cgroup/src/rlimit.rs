//! rlimits of the service, applied in the child before exec (setrlimit(2)).
//!
//! Each configured limit is set as soft = hard = value, so the service can neither raise it
//! nor be surprised by a soft/hard gap. isc never raises a hard limit past what the host gives
//! the monitor: that is refused with an error naming the limit and the host's value.

use nix::sys::resource::{getrlimit, setrlimit, Resource};

use crate::error::CgroupError;

/// rlimits from `[resources]`; `None` keeps the inherited value. `core` defaults to 0: a
/// core dump of a service would write its secrets to disk.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rlimits {
    /// RLIMIT_NOFILE: open file descriptors.
    pub nofile: Option<u64>,
    /// RLIMIT_NPROC: processes of the service's real UID (unique per ISC, so per ISC).
    pub nproc: Option<u64>,
    /// RLIMIT_MEMLOCK: bytes of locked memory.
    pub memlock: Option<u64>,
    /// RLIMIT_STACK: main-thread stack bytes.
    pub stack: Option<u64>,
    /// RLIMIT_CORE: core file bytes; 0 disables core dumps.
    pub core: u64,
}

/// One configured limit: resource, its C name, its manifest key, the value.
type Entry = (Resource, &'static str, &'static str, u64);

impl Rlimits {
    fn entries(&self) -> [Option<Entry>; 5] {
        [
            self.nofile.map(|v| (Resource::RLIMIT_NOFILE, "RLIMIT_NOFILE", "nofile", v)),
            self.nproc.map(|v| (Resource::RLIMIT_NPROC, "RLIMIT_NPROC", "nproc", v)),
            self.memlock.map(|v| (Resource::RLIMIT_MEMLOCK, "RLIMIT_MEMLOCK", "memlock", v)),
            self.stack.map(|v| (Resource::RLIMIT_STACK, "RLIMIT_STACK", "stack", v)),
            Some((Resource::RLIMIT_CORE, "RLIMIT_CORE", "core", self.core)),
        ]
    }

    /// Pre-flight in the parent: every value must fit under this process's hard limits (the
    /// child inherits them).
    pub fn check(&self) -> Result<(), CgroupError> {
        self.check_with(getrlimit)
    }

    pub(crate) fn check_with(
        &self,
        get: impl Fn(Resource) -> nix::Result<(u64, u64)>,
    ) -> Result<(), CgroupError> {
        for (res, limit, key, requested) in self.entries().into_iter().flatten() {
            let (_, hard) = get(res).map_err(|source| CgroupError::GetRlimit { limit, source })?;
            if requested > hard {
                return Err(CgroupError::RlimitAboveHard { limit, key, requested, hard });
            }
        }
        Ok(())
    }

    /// Apply in the child (after clone, before exec): soft = hard = value for each limit.
    /// Does not allocate unless it fails, so it is safe after fork in a threaded parent.
    pub fn apply(&self) -> Result<(), CgroupError> {
        self.check()?;
        for (res, limit, _, value) in self.entries().into_iter().flatten() {
            setrlimit(res, value, value).map_err(|source| CgroupError::SetRlimit {
                limit,
                value,
                source,
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;
    use std::process::Command;

    #[test]
    fn raising_past_the_hard_limit_names_limit_and_host_value() {
        let rl = Rlimits { nofile: Some(30_000), ..Default::default() };
        let err = rl
            .check_with(|r| {
                Ok(if r == Resource::RLIMIT_NOFILE { (1024, 20_000) } else { (0, u64::MAX) })
            })
            .unwrap_err()
            .to_string();
        assert!(err.contains("RLIMIT_NOFILE = 30000"), "{err}");
        assert!(err.contains("hard limit 20000"), "{err}");
        assert!(err.contains("`nofile`"), "{err}");
    }

    #[test]
    fn check_uses_this_process_hard_limits() {
        let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        let ok = Rlimits { nofile: Some(hard.min(1024)), ..Default::default() };
        assert!(ok.check().is_ok());
        if hard < u64::MAX {
            let over = Rlimits { nofile: Some(hard + 1), ..Default::default() };
            assert!(
                matches!(over.check(), Err(CgroupError::RlimitAboveHard { hard: h, .. }) if h == hard)
            );
        }
    }

    #[test]
    fn apply_sets_soft_and_hard_in_a_child() {
        let rl = Rlimits { nofile: Some(512), stack: Some(4 << 20), ..Default::default() };
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", "ulimit -Sn; ulimit -Hn; ulimit -c; ulimit -Hs"]);
        // SAFETY: the closure runs between fork and exec; `apply` only calls getrlimit and
        // setrlimit on the success path (async-signal-safe, no allocation).
        unsafe {
            cmd.pre_exec(move || {
                rl.apply().map_err(|_| std::io::Error::from_raw_os_error(libc::EPERM))
            });
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "512\n512\n0\n4096\n");
    }
}
