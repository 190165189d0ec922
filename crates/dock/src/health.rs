//! Health checks that need nothing inside the ISC: the Dock connects to a TCP port on the
//! ISC's address (from its network record, `<state>/isc/<name>/net.json`) from the host.
//!
//! A check is part of the Dock's per-ISC request (`"health": {"tcp": PORT, …}` in
//! `POST /v1/iscs` and `POST /v1/apply`), not of the manifest: the manifest describes the
//! service, the check is how this Dock supervises it. `retries` failed connects in a row end
//! the run (the monitor is asked to stop, as `isc stop` does), and the exit counts as a failure
//! for the restart policy whatever status the service returns on SIGTERM. The port must be one
//! of the manifest's `listen` ports: the ISC's firewall admits nothing else from the host.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use isc_engine::state::{self, ControlRequest};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::records::Status;
use crate::supervisor::{Dock, DockError};

/// A TCP connect check of one ISC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// The port to connect to on the ISC's address.
    pub tcp: u16,
    /// Time between checks.
    #[serde(default = "default_interval_ms")]
    pub interval_ms: u64,
    /// A connect that takes longer fails.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Failed checks in a row that end the run.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Grace after the service started before the first check.
    #[serde(default = "default_start_period_ms")]
    pub start_period_ms: u64,
}

fn default_interval_ms() -> u64 {
    2000
}
fn default_timeout_ms() -> u64 {
    1000
}
fn default_retries() -> u32 {
    3
}
fn default_start_period_ms() -> u64 {
    1000
}

impl HealthCheck {
    /// Refuses checks that cannot work for `manifest`.
    pub fn validate(&self, manifest: &isc_manifest::Manifest) -> Result<(), DockError> {
        let bad = |m: String| Err(DockError::BadRequest(m));
        if self.tcp == 0 || self.retries == 0 || self.interval_ms == 0 || self.timeout_ms == 0 {
            return bad(format!(
                "health check of `{}`: tcp, retries, interval_ms and timeout_ms must be > 0",
                manifest.name
            ));
        }
        if manifest.network.is_none() {
            return bad(format!(
                "health check of `{}`: the Dock connects to the ISC's address, and the ISC has no [network]; fix: add a [network] section with listen = [\"tcp {}\"], or drop the check",
                manifest.name, self.tcp
            ));
        }
        Ok(())
    }
}

/// The ISC's IPv4 address from its network record, if it has one.
pub fn isc_address(state_dir: &Path, name: &str) -> Option<IpAddr> {
    let bytes = std::fs::read(state_dir.join("isc").join(name).join("net.json")).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    v["policy"]["addr_v4"].as_str()?.parse().ok()
}

/// One check: a TCP connect to `addr` within `timeout`. The error says what failed.
pub async fn probe_tcp(addr: SocketAddr, timeout: Duration) -> Result<(), String> {
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!("connecting to {addr}: {e}")),
        Err(_) => Err(format!("connecting to {addr}: no answer within {} ms", timeout.as_millis())),
    }
}

impl Dock {
    /// Checks run `run_id` of `name` until it ends or fails `retries` checks in a row.
    pub(crate) fn watch_health(self: &Arc<Self>, name: String, run_id: u64, check: HealthCheck) {
        let dock = Arc::clone(self);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(check.start_period_ms)).await;
            let mut failed = 0u32;
            loop {
                if !dock.is_current_run(&name, run_id) {
                    return;
                }
                let result = match isc_address(&dock.state_dir, &name) {
                    Some(ip) => {
                        probe_tcp(
                            SocketAddr::new(ip, check.tcp),
                            Duration::from_millis(check.timeout_ms),
                        )
                        .await
                    }
                    None => Err("the ISC has no network record (net.json)".into()),
                };
                match result {
                    Ok(()) => failed = 0,
                    Err(e) => {
                        failed += 1;
                        tracing::debug!(isc = %name, failed, error = %e, "health check failed");
                        if failed >= check.retries {
                            dock.end_unhealthy(&name, run_id, &e).await;
                            return;
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(check.interval_ms)).await;
            }
        });
    }

    /// Whether run `run_id` of `name` is the one running now.
    fn is_current_run(&self, name: &str, run_id: u64) -> bool {
        self.get(name).is_ok_and(|r| r.run_id == run_id && r.status == Status::Running)
    }

    /// Marks the run as failed by its health check and asks its monitor to stop it; the exit
    /// then takes the restart policy's failure path (see `Dock::on_exit`).
    async fn end_unhealthy(self: &Arc<Self>, name: &str, run_id: u64, error: &str) {
        let reason = format!("health check failed: {error}");
        if !self.mark_unhealthy(name, run_id, &reason) {
            return;
        }
        self.events.emit(name, "unhealthy", json!({"run_id": run_id, "reason": reason}));
        let (dir, n) = (self.state_dir.clone(), name.to_string());
        let res = tokio::task::spawn_blocking(move || {
            state::request(&dir, &n, &ControlRequest::Stop, Duration::from_secs(5))
        })
        .await;
        match res {
            Ok(Ok(_)) | Ok(Err(state::StateError::NotRunning(_))) => {}
            Ok(Err(e)) => tracing::error!(isc = %name, error = %e, "stopping an unhealthy ISC"),
            Err(e) => tracing::error!(isc = %name, error = %e, "stopping an unhealthy ISC"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_listening_port_passes_and_a_closed_one_fails() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let open = l.local_addr().unwrap();
        assert_eq!(probe_tcp(open, Duration::from_secs(1)).await, Ok(()));
        drop(l);
        let e = probe_tcp(open, Duration::from_secs(1)).await.unwrap_err();
        assert!(e.contains("refused"), "{e}");
    }

    #[test]
    fn defaults_and_unknown_fields() {
        let c: HealthCheck = serde_json::from_str(r#"{"tcp": 80}"#).unwrap();
        assert_eq!(
            (c.interval_ms, c.timeout_ms, c.retries, c.start_period_ms),
            (2000, 1000, 3, 1000)
        );
        assert!(serde_json::from_str::<HealthCheck>(r#"{"tcp": 80, "http": "/"}"#).is_err());
    }

    #[test]
    fn the_address_comes_from_the_network_record() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("isc/web");
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(isc_address(d.path(), "web"), None);
        std::fs::write(dir.join("net.json"), r#"{"policy": {"addr_v4": "10.88.0.3"}}"#).unwrap();
        assert_eq!(isc_address(d.path(), "web"), Some("10.88.0.3".parse().unwrap()));
    }
}
