//! Health checks that need nothing inside the ISC: the Dock connects to a TCP port on the
//! ISC's address (from its network record, `<state>/isc/<name>/net.json`) from the host, and
//! either counts the connect as the answer (`tcp`) or sends an HTTP/1.1 `GET` and wants a 2xx
//! or 3xx status (`http`).
//!
//! A check is part of the Dock's per-ISC request (`"health": {"tcp": PORT, …}` or
//! `{"http": PORT, "path": "/healthz", …}` in `POST /v1/iscs` and `POST /v1/apply`), not of
//! the manifest: the manifest describes the service, the check is how this Dock supervises it.
//! `retries` failed checks in a row end the run (the monitor is asked to stop, as `isc stop`
//! does), and the exit counts as a failure for the restart policy whatever status the service
//! returns on SIGTERM. The port must be one of the manifest's `listen` ports: the ISC's firewall
//! admits nothing else from the host. The HTTP client is written by hand (a request line and
//! a status line: no TLS, no redirects followed; a 3xx counts as an answer).

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use isc_engine::state::{self, ControlRequest};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::records::Status;
use crate::supervisor::{Dock, DockError};

/// A health check of one ISC: exactly one of `tcp` and `http`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// TCP check: the port to connect to on the ISC's address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<u16>,
    /// HTTP check: the port to send `GET path` to on the ISC's address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<u16>,
    /// The path of the HTTP check (default `/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Time between checks.
    #[serde(default = "default_interval_ms")]
    pub interval_ms: u64,
    /// A check that takes longer (connect, and for HTTP the status line) fails.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Failed checks in a row that end the run.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Grace after the service started before the first check.
    #[serde(default = "default_start_period_ms")]
    pub start_period_ms: u64,
}

/// What the last checks of the current (or last) run said.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HealthState {
    /// No check has passed yet in this run.
    Starting,
    /// The last check passed.
    Healthy,
    /// `retries` checks failed in a row; the run was ended.
    Unhealthy,
}

impl HealthState {
    pub fn as_str(self) -> &'static str {
        match self {
            HealthState::Starting => "starting",
            HealthState::Healthy => "healthy",
            HealthState::Unhealthy => "unhealthy",
        }
    }
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
    /// The port the check connects to.
    pub fn port(&self) -> u16 {
        self.tcp.or(self.http).unwrap_or(0)
    }

    /// `tcp PORT` or `http PORT/path`, for messages and listings.
    pub fn describe(&self) -> String {
        match self.http {
            Some(p) => format!("http {p}{}", self.path.as_deref().unwrap_or("/")),
            None => format!("tcp {}", self.port()),
        }
    }

    /// Refuses checks that cannot work for `manifest`.
    pub fn validate(&self, manifest: &isc_manifest::Manifest) -> Result<(), DockError> {
        let name = &manifest.name;
        let bad = |m: String| Err(DockError::BadRequest(format!("health check of `{name}`: {m}")));
        match (self.tcp, self.http) {
            (Some(_), Some(_)) | (None, None) => {
                return bad("give exactly one of `tcp` and `http` (the port to check)".into())
            }
            (Some(_), None) if self.path.is_some() => {
                return bad("`path` belongs to an `http` check; fix: use \"http\" instead of \"tcp\", or drop `path`".into())
            }
            _ => {}
        }
        if let Some(path) = &self.path {
            // The path goes into the request line verbatim: no spaces or control characters
            // (CR LF would let it inject headers).
            if !path.starts_with('/')
                || path.len() > 1024
                || !path.bytes().all(|b| (0x21..=0x7e).contains(&b))
            {
                return bad(format!(
                    "path {path:?} must start with `/` and hold only visible ASCII without spaces (at most 1024 bytes); fix: percent-encode other characters"
                ));
            }
        }
        if self.port() == 0 || self.retries == 0 || self.interval_ms == 0 || self.timeout_ms == 0 {
            return bad("the port, retries, interval_ms and timeout_ms must be > 0".into());
        }
        if manifest.network.is_none() {
            return bad(format!(
                "the Dock connects to the ISC's address, and the ISC has no [network]; fix: add a [network] section with listen = [{{ port = {} }}], or drop the check",
                self.port()
            ));
        }
        Ok(())
    }

    /// One check of the ISC at `ip`; the error says what failed.
    pub async fn probe(&self, ip: IpAddr) -> Result<(), String> {
        let addr = SocketAddr::new(ip, self.port());
        let timeout = Duration::from_millis(self.timeout_ms);
        match self.http {
            Some(_) => {
                probe_http(addr, self.path.as_deref().unwrap_or("/"), timeout).await.map(drop)
            }
            None => probe_tcp(addr, timeout).await,
        }
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

/// The longest status line read before giving up on an answer.
const MAX_STATUS_LINE: usize = 4096;

/// The status code of an HTTP/1.x status line (`HTTP/1.1 200 OK`).
fn parse_status_line(line: &[u8]) -> Result<u16, String> {
    let text = String::from_utf8_lossy(line);
    let mut parts = text.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    let code = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") || code.len() != 3 {
        return Err(format!(
            "the answer is not HTTP/1.x: {:?}",
            text.chars().take(60).collect::<String>()
        ));
    }
    code.parse().map_err(|_| format!("the answer's status {code:?} is not a number"))
}

/// One check: `GET path` over HTTP/1.1 to `addr`, answered with a 2xx or 3xx status line
/// within `timeout` (connect included). Returns the status; the error says what failed.
pub async fn probe_http(addr: SocketAddr, path: &str, timeout: Duration) -> Result<u16, String> {
    let url = format!("http://{addr}{path}");
    let exchange = async {
        let mut s =
            tokio::net::TcpStream::connect(addr).await.map_err(|e| format!("connecting: {e}"))?;
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: isc-dock-health\r\nAccept: */*\r\nConnection: close\r\n\r\n"
        );
        s.write_all(request.as_bytes()).await.map_err(|e| format!("sending the request: {e}"))?;
        let mut head: Vec<u8> = Vec::with_capacity(256);
        let mut buf = [0u8; 512];
        loop {
            if let Some(end) = head.windows(2).position(|w| w == b"\r\n") {
                return parse_status_line(&head[..end]);
            }
            if head.len() > MAX_STATUS_LINE {
                return Err(format!("no status line in the first {MAX_STATUS_LINE} bytes"));
            }
            match s.read(&mut buf).await {
                Ok(0) => return Err("the server closed the connection without an answer".into()),
                Ok(n) => head.extend_from_slice(&buf[..n]),
                Err(e) => return Err(format!("reading the answer: {e}")),
            }
        }
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(Ok(status)) if (200..400).contains(&status) => Ok(status),
        Ok(Ok(status)) => Err(format!("GET {url}: status {status} (wanted 2xx or 3xx)")),
        Ok(Err(e)) => Err(format!("GET {url}: {e}")),
        Err(_) => Err(format!("GET {url}: no answer within {} ms", timeout.as_millis())),
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
                    Some(ip) => check.probe(ip).await,
                    None => Err("the ISC has no network record (net.json)".into()),
                };
                match result {
                    Ok(()) => {
                        failed = 0;
                        dock.mark_healthy(&name, run_id);
                    }
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
        assert_eq!(
            serde_json::to_string(&c).unwrap(),
            r#"{"tcp":80,"interval_ms":2000,"timeout_ms":1000,"retries":3,"start_period_ms":1000}"#
        );
        assert!(serde_json::from_str::<HealthCheck>(r#"{"tcp": 80, "url": "/"}"#).is_err());
        let h: HealthCheck = serde_json::from_str(r#"{"http": 8080, "path": "/healthz"}"#).unwrap();
        assert_eq!((h.port(), h.describe()), (8080, "http 8080/healthz".to_string()));
    }

    fn manifest(network: bool) -> isc_manifest::Manifest {
        let net = if network { "[network]\nlisten = [{ port = 8080 }]\n" } else { "" };
        let text = format!("name = \"web\"\n[service]\nexec = [\"/bin/true\"]\n[image]\nsource = \"host\"\npaths = [\"/bin/true\"]\n{net}");
        isc_manifest::Manifest::parse(&text, Path::new("/tmp/isc-test-web.toml")).unwrap()
    }

    #[test]
    fn invalid_checks_are_refused_with_the_fix() {
        let m = manifest(true);
        let check = |j: &str| {
            serde_json::from_str::<HealthCheck>(j).unwrap().validate(&m).map_err(|e| e.to_string())
        };
        assert_eq!(check(r#"{"http": 8080, "path": "/ok?x=1"}"#), Ok(()));
        assert_eq!(check(r#"{"tcp": 8080}"#), Ok(()));
        for (j, want) in [
            (r#"{"tcp": 8080, "http": 8080}"#, "exactly one of `tcp` and `http`"),
            (r#"{"interval_ms": 5}"#, "exactly one of `tcp` and `http`"),
            (r#"{"tcp": 8080, "path": "/"}"#, "`path` belongs to an `http` check"),
            (r#"{"http": 8080, "path": "healthz"}"#, "must start with `/`"),
            (r#"{"http": 8080, "path": "/a\r\nX: y"}"#, "must start with `/`"),
            (r#"{"http": 8080, "path": "/a b"}"#, "must start with `/`"),
            (r#"{"http": 0}"#, "must be > 0"),
            (r#"{"http": 8080, "retries": 0}"#, "must be > 0"),
        ] {
            let e = check(j).unwrap_err();
            assert!(e.starts_with("health check of `web`: ") && e.contains(want), "{j}: {e}");
        }
        let e = serde_json::from_str::<HealthCheck>(r#"{"http": 8080}"#)
            .unwrap()
            .validate(&manifest(false))
            .unwrap_err()
            .to_string();
        assert!(e.contains("has no [network]") && e.contains("port = 8080"), "{e}");
    }

    /// A server that answers one connection with `answer` (after reading the request) and
    /// returns the request it read.
    fn serve_once(answer: &'static [u8]) -> (SocketAddr, std::thread::JoinHandle<String>) {
        use std::io::{Read, Write};
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let t = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut req = vec![];
            let mut buf = [0u8; 1024];
            while !req.ends_with(b"\r\n\r\n") {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            }
            let _ = s.write_all(answer);
            String::from_utf8(req).unwrap()
        });
        (addr, t)
    }

    #[tokio::test]
    async fn http_2xx_and_3xx_pass_and_everything_else_fails() {
        let t = Duration::from_secs(5);
        let (addr, srv) = serve_once(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
        assert_eq!(probe_http(addr, "/healthz", t).await, Ok(200));
        assert_eq!(
            srv.join().unwrap(),
            format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: isc-dock-health\r\nAccept: */*\r\nConnection: close\r\n\r\n")
        );
        let (addr, _srv) = serve_once(b"HTTP/1.0 302\r\nLocation: /x\r\n\r\n");
        assert_eq!(probe_http(addr, "/", t).await, Ok(302));
        let (addr, _srv) = serve_once(b"HTTP/1.1 500 Internal Server Error\r\n\r\n");
        assert_eq!(
            probe_http(addr, "/", t).await,
            Err(format!("GET http://{addr}/: status 500 (wanted 2xx or 3xx)"))
        );
        let (addr, _srv) = serve_once(b"ok\n");
        let e = probe_http(addr, "/", t).await.unwrap_err();
        assert!(e.contains("closed the connection without an answer"), "{e}");
        let (addr, _srv) = serve_once(b"SSH-2.0-OpenSSH\r\n");
        let e = probe_http(addr, "/", t).await.unwrap_err();
        assert!(e.contains("not HTTP/1.x"), "{e}");
        let (addr, _srv) = serve_once(b"");
        let e = probe_http(addr, "/", t).await.unwrap_err();
        assert!(e.contains("closed the connection without an answer"), "{e}");
    }

    #[tokio::test]
    async fn a_silent_http_server_times_out_and_a_closed_port_is_refused() {
        // Accepts (the kernel's backlog) but never answers.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let e = probe_http(addr, "/", Duration::from_millis(200)).await.unwrap_err();
        assert_eq!(e, format!("GET http://{addr}/: no answer within 200 ms"));
        drop(l);
        let e = probe_http(addr, "/", Duration::from_secs(5)).await.unwrap_err();
        assert!(
            e.starts_with(&format!("GET http://{addr}/: connecting: ")) && e.contains("refused"),
            "{e}"
        );
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
