//! Running `nft -j -f -`: absolute path, empty environment, bounded time.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Errors of applying a batch.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("cannot run {path}: {source}; install the Debian package `nftables`")]
    Spawn { path: PathBuf, source: std::io::Error },
    #[error("cannot feed the ruleset to {path}: {source}")]
    Stdin { path: PathBuf, source: std::io::Error },
    #[error("{path} did not finish within {timeout:?} and was killed")]
    Timeout { path: PathBuf, timeout: Duration },
    #[error("{path} rejected the ruleset ({status}): {stderr}")]
    Rejected { path: PathBuf, status: String, stderr: String },
    #[error("element batch: {0}")]
    Kernel(#[from] super::netlink::NlError),
}

/// Something that applies an nft JSON document atomically (a narrow seam for unit tests).
pub trait NftRunner: Send + Sync {
    /// Apply `doc` (a `{"nftables": [...]}` document) as one transaction.
    fn apply_json(&self, doc: &str) -> Result<(), NftError>;
}

/// The real `nft` binary. It acts on the network namespace of the calling thread.
#[derive(Debug, Clone)]
pub struct NftCli {
    /// Absolute path of `nft`.
    pub path: PathBuf,
    /// Kill `nft` after this long.
    pub timeout: Duration,
    /// Only check (`nft -c`), do not commit.
    pub check_only: bool,
}

impl Default for NftCli {
    fn default() -> Self {
        let path = ["/usr/sbin/nft", "/sbin/nft", "/usr/bin/nft"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .unwrap_or_else(|| PathBuf::from("/usr/sbin/nft"));
        NftCli { path, timeout: Duration::from_secs(10), check_only: false }
    }
}

impl NftRunner for NftCli {
    fn apply_json(&self, doc: &str) -> Result<(), NftError> {
        let mut cmd = Command::new(&self.path);
        cmd.env_clear();
        if self.check_only {
            cmd.arg("-c");
        }
        cmd.args(["-j", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child =
            cmd.spawn().map_err(|source| NftError::Spawn { path: self.path.clone(), source })?;
        let mut stderr = child.stderr.take().expect("stderr is piped");
        let reader = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });
        let fed = child.stdin.take().expect("stdin is piped").write_all(doc.as_bytes());
        let start = Instant::now();
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if start.elapsed() > self.timeout => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(NftError::Timeout {
                        path: self.path.clone(),
                        timeout: self.timeout,
                    });
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(2)),
                Err(source) => return Err(NftError::Spawn { path: self.path.clone(), source }),
            }
        };
        let stderr = reader.join().unwrap_or_default();
        if !status.success() {
            return Err(NftError::Rejected {
                path: self.path.clone(),
                status: status.to_string(),
                stderr: stderr.trim().to_string(),
            });
        }
        fed.map_err(|source| NftError::Stdin { path: self.path.clone(), source })
    }
}
