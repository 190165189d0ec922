//! isc-dock: the daemon that runs many ISCs on one host (DESIGN.md §3).
//!
//! * [`serve`] runs the Dock: state under `<root>/dock` ([`records`]), the API on a Unix socket
//!   with peer-credential authorization and auditing ([`api`], [`auth`]), supervision with
//!   restart back-off and crash-loop detection ([`supervisor`]), the resource guard
//!   ([`guard`]), per-ISC logs ([`logs`]), live usage and OOM events ([`stats`]) and
//!   Prometheus metrics ([`metrics`]).
//! * Each ISC runs under its own detached monitor process ([`process`]), so ISCs outlive the
//!   Dock; a restarted Dock re-adopts them.
//! * [`client::Client`] is what the CLI's `isc dock …` verbs use.

pub mod api;
pub mod apply;
pub mod auth;
pub mod client;
pub mod config;
pub mod events;
pub mod guard;
pub mod health;
pub mod logs;
pub mod metrics;
pub mod process;
pub mod records;
pub mod stats;
pub mod supervisor;

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;

pub use config::DockConfig;
pub use records::{ExitInfo, IscRecord, MonitorRequest, Status};
pub use supervisor::{Dock, DockError, DockOptions};

/// Errors of [`serve`].
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Dock(#[from] DockError),
    #[error("another Dock already uses {path}; fix: stop it first (one Dock per isc root)")]
    AlreadyRunning { path: PathBuf },
    #[error("the API socket {path}: {source}")]
    Socket { path: PathBuf, source: std::io::Error },
    #[error("serving the API: {0}")]
    Serve(std::io::Error),
    #[error("starting the Dock's async runtime: {0}")]
    Runtime(std::io::Error),
}

/// [`serve`] on a runtime of its own (two worker threads: the Dock mostly waits).
pub fn serve_blocking(opts: ServeOptions) -> Result<(), ServeError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(ServeError::Runtime)?
        .block_on(serve(opts))
}

/// Everything [`serve`] needs.
pub struct ServeOptions {
    pub dock: DockOptions,
    pub launcher: Box<dyn process::Launcher>,
    /// The audit trail; without it, audit records go to the tracing log.
    pub audit: Option<isc_audit::AuditLog>,
}

fn lock_exclusive(path: &std::path::Path) -> Result<File, ServeError> {
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|source| ServeError::Socket { path: path.into(), source })?;
    // SAFETY: flock(2) on an fd we own; held until the process ends.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(ServeError::AlreadyRunning { path: path.into() });
    }
    Ok(f)
}

/// Runs the Dock until SIGTERM or SIGINT. ISCs keep running after it returns.
pub async fn serve(opts: ServeOptions) -> Result<(), ServeError> {
    let events = events::Events::new(opts.audit);
    let socket = opts.dock.config.socket_path(&opts.dock.state);
    let group_name = opts.dock.config.group.clone();
    let mode = opts.dock.config.socket_mode;
    let dock = Dock::open(opts.dock, opts.launcher, events)?;
    let _lock = lock_exclusive(&dock.paths.dock.join("dock.lock"))?;
    let sock_err = |source| ServeError::Socket { path: socket.clone(), source };
    if let Some(parent) = socket.parent() {
        std::fs::create_dir_all(parent).map_err(sock_err)?;
    }
    // We hold the root's lock, so a socket file left here belongs to a dead Dock.
    let _ = std::fs::remove_file(&socket);
    let listener = tokio::net::UnixListener::bind(&socket).map_err(sock_err)?;
    let group = config::group_gid(&group_name);
    if let Some(gid) = group {
        std::os::unix::fs::chown(&socket, None, Some(gid)).map_err(sock_err)?;
    } else {
        tracing::warn!(group = %group_name, "the Dock's group does not exist: only root may use the API");
    }
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(mode)).map_err(sock_err)?;
    dock.adopt();
    dock.watch_oom();
    let state = Arc::new(api::ApiState {
        dock: Arc::clone(&dock),
        group,
        group_name,
        api: metrics::ApiCounters::default(),
    });
    let app = api::router(state).into_make_service_with_connect_info::<auth::PeerInfo>();
    if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
        tracing::warn!(error = %e, "telling systemd we are ready");
    }
    tracing::info!(socket = %socket.display(), iscs = dock.list().len(), "the Dock is ready");
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing the SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!("stopping the Dock; ISCs keep running");
    };
    let result = axum::serve(listener, app).with_graceful_shutdown(shutdown).await;
    let _ = std::fs::remove_file(&socket);
    result.map_err(ServeError::Serve)
}
