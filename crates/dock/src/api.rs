//! The HTTP+JSON API on the Dock's Unix socket (see docs/api.md). Every request passes
//! [`authorize`] first: it is allowed for root and members of the socket's group, refused with
//! 403 otherwise, and audited either way (peer uid and pid, verb, target, status).

use std::path::PathBuf;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use isc_audit::{Actor, Kind};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::mpsc;

use crate::apply::Declared;
use crate::auth::PeerInfo;
use crate::health::HealthCheck;
use crate::logs;
use crate::metrics::{self, ApiCounters};
use crate::stats;
use crate::supervisor::{Dock, DockError};

/// What the handlers share.
pub struct ApiState {
    pub dock: Arc<Dock>,
    /// The gid whose members may act (the socket's group), if that group exists.
    pub group: Option<u32>,
    pub group_name: String,
    pub api: ApiCounters,
}

type St = State<Arc<ApiState>>;

impl IntoResponse for DockError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, Json(json!({"error": self.to_string()}))).into_response()
    }
}

/// The router with authorization and auditing on every route.
pub fn router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route("/v1/dock", get(info))
        .route("/v1/iscs", get(list).post(up))
        .route("/v1/iscs/{name}", get(inspect).delete(remove))
        .route("/v1/iscs/{name}/stop", post(stop))
        .route("/v1/iscs/{name}/start", post(start))
        .route("/v1/iscs/{name}/restart", post(restart))
        .route("/v1/iscs/{name}/logs", get(logs_of))
        .route("/v1/iscs/{name}/stats", get(stats_of))
        .route("/v1/stats", get(stats_all))
        .route("/v1/apply", post(apply))
        .route("/v1/events", get(events))
        .route("/metrics", get(metrics_text))
        .layer(middleware::from_fn_with_state(Arc::clone(&state), authorize))
        .with_state(state)
}

/// `METHOD /path` with the ISC name replaced, for counters.
fn verb_of(method: &str, path: &str) -> (String, Option<String>) {
    match path.strip_prefix("/v1/iscs/") {
        Some(rest) => {
            let (name, tail) = rest.split_once('/').unwrap_or((rest, ""));
            let tail = if tail.is_empty() { String::new() } else { format!("/{tail}") };
            (format!("{method} /v1/iscs/{{name}}{tail}"), Some(name.to_string()))
        }
        None => (format!("{method} {path}"), None),
    }
}

async fn authorize(
    State(st): St,
    ConnectInfo(peer): ConnectInfo<PeerInfo>,
    req: Request,
    next: Next,
) -> Response {
    let (verb, target) = verb_of(req.method().as_str(), req.uri().path());
    let allowed = peer.0.as_ref().is_some_and(|p| p.may_act(st.group));
    let resp = if allowed {
        next.run(req).await
    } else {
        let who = peer
            .0
            .as_ref()
            .map_or("an unidentified peer".to_string(), |p| format!("uid {}", p.uid));
        (
            StatusCode::FORBIDDEN,
            Json(json!({"error": format!(
                "permission denied: {who} is neither root nor a member of group `{}`; fix: ask an administrator to add you to that group",
                st.group_name
            )})),
        )
            .into_response()
    };
    let status = resp.status().as_u16();
    st.api.count(&verb, status);
    let (uid, pid) = peer.0.as_ref().map_or((u32::MAX, 0), |p| (p.uid, p.pid));
    st.dock.events.audit(
        target.as_deref(),
        Kind::ApiRequest,
        Actor::Uid(uid),
        json!({"verb": verb, "status": status, "allowed": allowed, "peer_pid": pid}),
    );
    resp
}

async fn info(State(st): St) -> Response {
    Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "pid": std::process::id(),
        "root": st.dock.paths.dock,
        "state": st.dock.state_dir,
        "iscs": st.dock.list().len(),
    }))
    .into_response()
}

async fn list(State(st): St) -> Response {
    Json(st.dock.list()).into_response()
}

/// Body of `POST /v1/iscs`.
#[derive(Deserialize)]
struct UpRequest {
    /// The manifest's text.
    manifest: String,
    /// Its path on the client (base of relative image paths; used in messages).
    origin: PathBuf,
    /// The Dock's health check of this ISC (crate::health).
    #[serde(default)]
    health: Option<HealthCheck>,
}

async fn up(State(st): St, Json(req): Json<UpRequest>) -> Result<Response, DockError> {
    let rec = st.dock.up(&req.manifest, &req.origin, req.health).await?;
    Ok((StatusCode::CREATED, Json(rec)).into_response())
}

/// Body of `POST /v1/apply`: the complete desired set.
#[derive(Deserialize)]
struct ApplyRequest {
    iscs: Vec<Declared>,
}

async fn apply(State(st): St, Json(req): Json<ApplyRequest>) -> Result<Response, DockError> {
    let dock = Arc::clone(&st.dock);
    // Its own task: a client that hangs up must not leave the set half applied.
    let report = tokio::spawn(async move { dock.apply(req.iscs).await })
        .await
        .map_err(|e| DockError::Internal(format!("apply task: {e}")))??;
    Ok(Json(report).into_response())
}

async fn inspect(State(st): St, Path(name): Path<String>) -> Result<Response, DockError> {
    let rec = st.dock.get(&name)?;
    let manifest = std::fs::read_to_string(st.dock.paths.manifest(&name)).ok();
    let engine = isc_engine::state::get(&st.dock.state_dir, &name).ok();
    Ok(Json(json!({"record": rec, "engine": engine, "manifest": manifest})).into_response())
}

async fn stop(State(st): St, Path(name): Path<String>) -> Result<Response, DockError> {
    Ok(Json(st.dock.stop(&name).await?).into_response())
}

async fn start(State(st): St, Path(name): Path<String>) -> Result<Response, DockError> {
    Ok(Json(st.dock.start(&name).await?).into_response())
}

async fn restart(State(st): St, Path(name): Path<String>) -> Result<Response, DockError> {
    Ok(Json(st.dock.restart(&name).await?).into_response())
}

async fn remove(State(st): St, Path(name): Path<String>) -> Result<Response, DockError> {
    st.dock.remove(&name).await?;
    Ok(Json(json!({"removed": name})).into_response())
}

#[derive(Deserialize)]
struct LogsQuery {
    #[serde(default)]
    follow: bool,
    tail: Option<usize>,
    /// Only lines from this time on (logs::parse_since: RFC 3339, Unix seconds, or `10m`).
    since: Option<String>,
    /// Keep each line's timestamp.
    #[serde(default)]
    timestamps: bool,
}

/// A streaming body fed by a blocking producer.
fn channel_body() -> (mpsc::Sender<Result<Bytes, std::io::Error>>, Body) {
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(64);
    let stream =
        futures_util::stream::unfold(
            rx,
            |mut rx| async move { rx.recv().await.map(|item| (item, rx)) },
        );
    (tx, Body::from_stream(stream))
}

async fn logs_of(
    State(st): St,
    Path(name): Path<String>,
    Query(q): Query<LogsQuery>,
) -> Result<Response, DockError> {
    st.dock.get(&name)?;
    let since_us = match &q.since {
        Some(s) => Some(
            logs::parse_since(s, crate::records::now_ms() * 1000)
                .map_err(|e| DockError::BadRequest(format!("since: {e}")))?,
        ),
        None => None,
    };
    let mut filter = logs::LineFilter::new(logs::View { since_us, timestamps: q.timestamps });
    let dir = st.dock.paths.log_dir(&name);
    let (initial, pos) = logs::read(&dir, &mut filter, q.tail, !q.follow)
        .map_err(|e| DockError::Internal(format!("reading the logs of `{name}`: {e}")))?;
    if !q.follow {
        return Ok(([(header::CONTENT_TYPE, "text/plain")], initial).into_response());
    }
    let (tx, body) = channel_body();
    let dock = Arc::clone(&st.dock);
    tokio::task::spawn_blocking(move || {
        if tx.blocking_send(Ok(Bytes::from(initial))).is_err() {
            return;
        }
        let probe = tx.clone();
        let mut out = vec![];
        logs::follow(
            &dir,
            pos,
            |b| {
                out.clear();
                filter.feed(b, &mut out);
                out.is_empty() || tx.blocking_send(Ok(Bytes::copy_from_slice(&out))).is_ok()
            },
            || !probe.is_closed() && dock.get(&name).is_ok_and(|r| r.status.is_active()),
        );
        out.clear();
        filter.finish(&mut out);
        if !out.is_empty() {
            let _ = tx.blocking_send(Ok(Bytes::from(out)));
        }
    });
    Ok(([(header::CONTENT_TYPE, "text/plain")], body).into_response())
}

#[derive(Deserialize)]
struct EventsQuery {
    #[serde(default)]
    follow: bool,
    /// Only the events of this ISC.
    isc: Option<String>,
}

fn json_line(v: &impl serde::Serialize) -> Bytes {
    let mut b = serde_json::to_vec(v).expect("events serialize");
    b.push(b'\n');
    Bytes::from(b)
}

async fn events(State(st): St, Query(q): Query<EventsQuery>) -> Response {
    let mut live = st.dock.events.subscribe();
    let wanted = move |e: &crate::events::Event| q.isc.as_ref().is_none_or(|n| *n == e.isc);
    let recent = st.dock.events.recent();
    let last = recent.last().map_or(0, |e| e.seq);
    let recent: Vec<_> = recent.into_iter().filter(|e| wanted(e)).collect();
    let head: Vec<u8> = recent.iter().flat_map(|e| json_line(e).to_vec()).collect();
    if !q.follow {
        return ([(header::CONTENT_TYPE, "application/x-ndjson")], head).into_response();
    }
    let (tx, body) = channel_body();
    tokio::spawn(async move {
        if tx.send(Ok(Bytes::from(head))).await.is_err() {
            return;
        }
        loop {
            match live.recv().await {
                Ok(e) if e.seq <= last || !wanted(&e) => {}
                Ok(e) => {
                    if tx.send(Ok(json_line(&e))).await.is_err() {
                        return;
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    let note = json!({"lagged": n});
                    if tx.send(Ok(json_line(&note))).await.is_err() {
                        return;
                    }
                }
                Err(_) => return,
            }
        }
    });
    ([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response()
}

async fn stats_of(State(st): St, Path(name): Path<String>) -> Result<Response, DockError> {
    let rec = st.dock.get(&name)?;
    let dock = Arc::clone(&st.dock);
    let mut all = tokio::task::spawn_blocking(move || stats::collect(&dock, &[rec]))
        .await
        .map_err(|e| DockError::Internal(format!("reading the stats of `{name}`: {e}")))?;
    Ok(Json(all.pop()).into_response())
}

async fn stats_all(State(st): St) -> Result<Response, DockError> {
    let recs = st.dock.list();
    let dock = Arc::clone(&st.dock);
    let all = tokio::task::spawn_blocking(move || stats::collect(&dock, &recs))
        .await
        .map_err(|e| DockError::Internal(format!("reading the stats: {e}")))?;
    Ok(Json(all).into_response())
}

async fn metrics_text(State(st): St) -> Response {
    let recs = st.dock.list();
    let dock = Arc::clone(&st.dock);
    let r2 = recs.clone();
    let usage =
        tokio::task::spawn_blocking(move || stats::collect(&dock, &r2)).await.unwrap_or_default();
    let text = metrics::render(&st.dock, &recs, &usage, &st.api);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

#[cfg(test)]
mod tests {
    use super::verb_of;

    #[test]
    fn verbs_hide_names() {
        assert_eq!(
            verb_of("POST", "/v1/iscs/web/stop"),
            ("POST /v1/iscs/{name}/stop".into(), Some("web".into()))
        );
        assert_eq!(
            verb_of("GET", "/v1/iscs/web"),
            ("GET /v1/iscs/{name}".into(), Some("web".into()))
        );
        assert_eq!(verb_of("GET", "/v1/iscs"), ("GET /v1/iscs".into(), None));
    }
}
