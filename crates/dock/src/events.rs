//! Lifecycle events (for `isc dock events` and the audit trail) and the audit writer.
//!
//! Audit records are appended by one writer thread in the order they were produced, so a slow
//! fsync never stalls an API handler or the supervisor. The price: a request is answered before
//! its record is durable (at most the queue's content is lost in a crash).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Mutex};

use isc_audit::{Actor, AuditLog, Kind};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::records::now_ms;

/// Events kept for `GET /v1/events` without `follow`.
const RECENT: usize = 1000;

/// One lifecycle event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub seq: u64,
    pub time_ms: u64,
    pub isc: String,
    /// `created`, `started`, `adopted`, `exited`, `restarting`, `crash-loop`, `stopping`,
    /// `start-failed`, `removed`.
    pub kind: String,
    pub detail: serde_json::Value,
}

/// An audit record waiting for the writer thread.
pub type AuditItem = (Option<String>, Kind, Actor, serde_json::Value);

/// Fan-out of events to followers, a ring of recent ones, and the audit queue.
pub struct Events {
    tx: broadcast::Sender<Event>,
    recent: Mutex<VecDeque<Event>>,
    seq: AtomicU64,
    audit: Option<Mutex<mpsc::Sender<AuditItem>>>,
    /// Audit appends that failed (also logged).
    pub audit_failures: AtomicU64,
    /// Audit records written.
    pub audit_records: AtomicU64,
}

impl Events {
    /// Without an audit log, events are only kept in memory and logged with tracing.
    pub fn new(audit: Option<AuditLog>) -> std::sync::Arc<Events> {
        let (tx, _) = broadcast::channel(4096);
        let (atx, arx) = mpsc::channel::<AuditItem>();
        let events = std::sync::Arc::new(Events {
            tx,
            recent: Mutex::new(VecDeque::new()),
            seq: AtomicU64::new(0),
            audit: audit.is_some().then(|| Mutex::new(atx)),
            audit_failures: AtomicU64::new(0),
            audit_records: AtomicU64::new(0),
        });
        if let Some(log) = audit {
            let ev = std::sync::Arc::clone(&events);
            std::thread::Builder::new()
                .name("isc-dock-audit".into())
                .spawn(move || {
                    for (isc, kind, actor, detail) in arx {
                        match log.append(isc.as_deref(), kind, actor, detail) {
                            Ok(_) => ev.audit_records.fetch_add(1, Ordering::Relaxed),
                            Err(e) => {
                                tracing::error!(error = %e, %kind, "appending to the audit log");
                                ev.audit_failures.fetch_add(1, Ordering::Relaxed)
                            }
                        };
                    }
                })
                .expect("spawning the audit writer thread");
        }
        events
    }

    /// Queues an audit record (or logs it when there is no audit log).
    pub fn audit(&self, isc: Option<&str>, kind: Kind, actor: Actor, detail: serde_json::Value) {
        match &self.audit {
            Some(tx) => {
                let _ = tx.lock().unwrap_or_else(|e| e.into_inner()).send((
                    isc.map(str::to_owned),
                    kind,
                    actor,
                    detail,
                ));
            }
            None => tracing::info!(isc, %kind, ?actor, %detail, "audit"),
        }
    }

    /// Publishes a lifecycle event and audits it as an action of the Dock itself.
    pub fn emit(&self, isc: &str, kind: &str, detail: serde_json::Value) {
        let ev = Event {
            seq: self.seq.fetch_add(1, Ordering::Relaxed) + 1,
            time_ms: now_ms(),
            isc: isc.into(),
            kind: kind.into(),
            detail,
        };
        tracing::info!(isc, kind, detail = %ev.detail, "event");
        let audit_kind = match kind {
            "created" => Some(Kind::IscCreate),
            "started" | "adopted" => Some(Kind::IscStart),
            "stopping" | "removed" => Some(Kind::IscStop),
            "exited" | "start-failed" | "crash-loop" => Some(Kind::IscExit),
            "restarting" => Some(Kind::IscRestart),
            _ => None,
        };
        if let Some(k) = audit_kind {
            let mut d = ev.detail.clone();
            if let serde_json::Value::Object(m) = &mut d {
                m.insert("event".into(), kind.into());
            }
            self.audit(Some(isc), k, Actor::Isc, d);
        }
        {
            let mut r = self.recent.lock().unwrap_or_else(|e| e.into_inner());
            if r.len() == RECENT {
                r.pop_front();
            }
            r.push_back(ev.clone());
        }
        let _ = self.tx.send(ev);
    }

    /// Recent events, oldest first.
    pub fn recent(&self) -> Vec<Event> {
        self.recent.lock().unwrap_or_else(|e| e.into_inner()).iter().cloned().collect()
    }

    /// A receiver of events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }
}
