//! The error type of the log, verification and query APIs.

use std::path::PathBuf;

use crate::keys::KeyError;

/// Errors from opening, appending to, verifying, querying or exporting an audit log.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The audit directory could not be created.
    #[error("cannot create audit directory {path}: {source}; check that the parent exists and is writable")]
    CreateDir {
        /// Directory.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The background sync/checkpoint thread could not be started.
    #[error(
        "cannot start the audit log's sync thread: {source}; the host is out of threads or memory"
    )]
    Thread {
        /// Cause.
        source: std::io::Error,
    },
    /// A log, lock or export file could not be opened.
    #[error("cannot open audit file {path}: {source}")]
    Open {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The inter-process lock could not be taken.
    #[error("cannot lock audit log {path}: {source}")]
    Lock {
        /// Lock file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// A log file could not be read.
    #[error("cannot read audit file {path}: {source}")]
    Read {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The log cannot be written: the caller must fail closed (refuse new ISC starts).
    #[error("audit log {path} unwritable: {reason}; new ISC starts are refused until it is fixed")]
    Unwritable {
        /// The active log file (or directory).
        path: PathBuf,
        /// Why, e.g. "No space left on device (os error 28)".
        reason: String,
    },
    /// The end of the active file is not a valid record, so no record can be chained onto it.
    #[error("audit log {path} is corrupt at byte {offset}: {reason}; run `isc audit verify` and move the damaged file aside")]
    Corrupt {
        /// File.
        path: PathBuf,
        /// Byte offset of the bad line.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// `detail` was not a JSON object.
    #[error("audit record detail for kind {kind} must be a JSON object, got {got}")]
    InvalidDetail {
        /// The record kind.
        kind: crate::Kind,
        /// The JSON type given.
        got: &'static str,
    },
    /// A record would exceed the maximum line size.
    #[error("audit record of kind {kind} is {size} bytes, above the {max}-byte limit; shorten its detail")]
    TooLarge {
        /// The record kind.
        kind: crate::Kind,
        /// Encoded size.
        size: usize,
        /// Limit.
        max: usize,
    },
    /// No audit files were found where some were expected.
    #[error("no audit log files found in {path}")]
    NoLogFiles {
        /// Directory or path given.
        path: PathBuf,
    },
    /// Signing key problem.
    #[error(transparent)]
    Keys(#[from] KeyError),
    /// Exporting to a file or socket failed.
    #[error("cannot export audit records to {target}: {source}")]
    Export {
        /// File path or socket path.
        target: String,
        /// Cause.
        source: std::io::Error,
    },
}
