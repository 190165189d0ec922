//! A small blocking client of the Dock's API for the CLI: HTTP/1.1 over the Unix socket with
//! hyper, on a current-thread runtime per call (the CLI is synchronous).

use std::path::{Path, PathBuf};

use axum::body::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

/// Errors of the client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connecting to the Dock at {socket}: {source}; fix: start it (`isc dock serve`) or pass --socket PATH")]
    Connect { socket: PathBuf, source: std::io::Error },
    #[error("talking to the Dock at {socket}: {detail}")]
    Http { socket: PathBuf, detail: String },
    #[error("{message}")]
    Api { status: u16, message: String },
}

/// A client of one Dock socket.
#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
}

/// A complete response.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Reply {
    /// The body as JSON.
    pub fn json(&self) -> Result<serde_json::Value, ClientError> {
        serde_json::from_slice(&self.body).map_err(|e| ClientError::Api {
            status: self.status,
            message: format!("the Dock answered with invalid JSON: {e}"),
        })
    }
}

fn api_error(status: u16, body: &[u8]) -> ClientError {
    let message = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
    ClientError::Api { status, message }
}

impl Client {
    pub fn new(socket: &Path) -> Client {
        Client { socket: socket.into() }
    }

    /// Sends one request; non-2xx answers become `ClientError::Api` with the Dock's message.
    pub fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<Reply, ClientError> {
        let mut all = vec![];
        let status = self.stream(method, path, body, |b| {
            all.extend_from_slice(b);
            true
        })?;
        Ok(Reply { status, body: all })
    }

    /// Sends one request and hands the body to `sink` as it arrives (until it returns false).
    pub fn stream(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
        mut sink: impl FnMut(&[u8]) -> bool,
    ) -> Result<u16, ClientError> {
        let http = |detail: String| ClientError::Http { socket: self.socket.clone(), detail };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| http(format!("starting the client runtime: {e}")))?;
        rt.block_on(async {
            let stream = tokio::net::UnixStream::connect(&self.socket)
                .await
                .map_err(|source| ClientError::Connect { socket: self.socket.clone(), source })?;
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| http(e.to_string()))?;
            tokio::spawn(conn);
            let bytes =
                body.map(|b| serde_json::to_vec(b).expect("JSON serializes")).unwrap_or_default();
            let req = hyper::Request::builder()
                .method(method)
                .uri(path)
                .header("host", "isc-dock")
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(bytes)))
                .map_err(|e| http(e.to_string()))?;
            let resp = sender.send_request(req).await.map_err(|e| http(e.to_string()))?;
            let status = resp.status().as_u16();
            let mut body = resp.into_body();
            if !(200..300).contains(&status) {
                let all = body.collect().await.map_err(|e| http(e.to_string()))?.to_bytes();
                return Err(api_error(status, &all));
            }
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| http(e.to_string()))?;
                if let Some(d) = frame.data_ref() {
                    if !sink(d) {
                        break;
                    }
                }
            }
            Ok(status)
        })
    }
}
