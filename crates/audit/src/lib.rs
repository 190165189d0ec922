//! isc-audit: the tamper-evident audit trail of isc (principle P8).
//!
//! * [`AuditLog`] appends hash-chained JSON-line records (see [`record`] for the exact bytes),
//!   with group commit, periodic Ed25519-signed checkpoints, size rotation that keeps the chain
//!   continuous, torn-tail detection, and a fail-closed state ([`AuditLog::ensure_writable`]).
//! * [`verify_dir`] / [`verify_files`] walk the chain and signatures and name the first bad record.
//! * [`query`], [`Follower`] and [`export`] read the trail back (JSON lines or RFC 5424 syslog).
//! * [`kernel`] reads the kernel's audit multicast group for seccomp and Landlock denials.
//!
//! See `docs/audit.md` for the format, the threat model and what verification can and cannot
//! detect.

mod error;
pub mod kernel;
pub mod keys;
mod log;
mod pipeline;
mod query;
pub mod record;
mod segment;
mod verify;
mod writer;

pub use error::AuditError;
pub use keys::{
    load_or_create_signing_key, load_verifying_key, KeyError, SigningKey, VerifyingKey,
};
pub use log::{AuditConfig, AuditLog, Durability, LogStats, OpenReport};
pub use query::{
    export, export_verifiable, format_syslog, query, query_files, ExportFormat, ExportSink, Filter,
    Follower,
};
pub use record::{Actor, Kind, Record};
pub use segment::{list_files, TornTail};
pub use verify::{verify_dir, verify_files, Finding, FindingKind, VerifyOptions, VerifyReport};
pub use writer::{Handoff, SYNC_FAILED_MARKER};
