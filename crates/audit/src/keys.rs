//! The checkpoint signing key: created on first use as a 0600 file, exported as a public key file
//! for off-host verification, and the exact message a checkpoint signature covers.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

pub use ed25519_dalek::{Signature, SigningKey, VerifyingKey};

use crate::record::{from_hex, to_hex};

/// File name of the private signing key (hex seed) inside the keys directory.
pub const SIGNING_KEY_FILE: &str = "audit-ed25519.key";
/// File name of the exported public key (hex) inside the keys directory.
pub const VERIFYING_KEY_FILE: &str = "audit-ed25519.pub";

/// Domain separation for checkpoint signatures, so they can never be confused with any other
/// Ed25519 signature made by the same key.
const CHECKPOINT_DOMAIN: &[u8] = b"isc-audit checkpoint v1\0";

/// Errors while creating, loading or parsing audit keys.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The keys directory could not be created.
    #[error("cannot create audit keys directory {path}: {source}; check that the parent exists and is writable")]
    CreateDir {
        /// Directory.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// A key file could not be written.
    #[error("cannot write audit key file {path}: {source}")]
    Write {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// A key file could not be read.
    #[error("cannot read audit key file {path}: {source}")]
    Read {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The private key file is readable by group or others.
    #[error("audit signing key {path} has mode {mode:o}; it must not be accessible by group or others (chmod 600 {path})")]
    Permissions {
        /// File.
        path: PathBuf,
        /// Actual permission bits.
        mode: u32,
    },
    /// A key file does not contain 64 hex digits.
    #[error("audit key file {path} is malformed: expected 64 hex digits on one line")]
    Malformed {
        /// File.
        path: PathBuf,
    },
    /// The public key bytes are not a valid Ed25519 point.
    #[error("audit public key {path} is not a valid Ed25519 key")]
    InvalidPublicKey {
        /// File.
        path: PathBuf,
    },
    /// The operating system random source failed.
    #[error("cannot obtain randomness for a new audit signing key: {0}")]
    Random(String),
}

/// The log's signing key as read at open: its seed, expanded into the key (an ed25519
/// scalar multiplication, ~50 µs here) only when first needed. An `isc run` signs once, at its
/// end, and its collector thread expands the key while the service runs
/// (`AuditLog::prepare_signing`), so neither the start nor the end waits for it.
pub struct LazySigningKey {
    keys_dir: PathBuf,
    seed: [u8; 32],
    key: std::sync::OnceLock<SigningKey>,
}

impl LazySigningKey {
    /// The key, expanded at the first call. That call also makes the public key file match it
    /// (it is rewritten if another key's, as at every open before); a failure to write it is
    /// logged: signing does not depend on it, off-host verification does.
    pub fn get(&self) -> &SigningKey {
        self.key.get_or_init(|| {
            let key = SigningKey::from_bytes(&self.seed);
            if let Err(e) = write_public_key(&self.keys_dir, &key.verifying_key()) {
                tracing::error!(error = %e, "audit public key file not updated");
            }
            key
        })
    }
}

/// Opens the signing key of `keys_dir` like [`load_or_create_signing_key`] (same checks, same
/// creation on first use), expanding it at once only when it was just created or its public
/// key file is missing.
pub fn open_signing_key(keys_dir: &Path) -> Result<LazySigningKey, KeyError> {
    let path = keys_dir.join(SIGNING_KEY_FILE);
    let lazy = |seed| LazySigningKey {
        keys_dir: keys_dir.to_owned(),
        seed,
        key: std::sync::OnceLock::new(),
    };
    match read_seed(&path) {
        Ok(seed) => {
            let key = lazy(seed);
            if !keys_dir.join(VERIFYING_KEY_FILE).exists() {
                key.get();
            }
            Ok(key)
        }
        Err(KeyError::Read { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            let created = load_or_create_signing_key(keys_dir)?;
            let key = lazy(created.to_bytes());
            let _ = key.key.set(created);
            Ok(key)
        }
        Err(e) => Err(e),
    }
}

/// Loads the signing key from `keys_dir`, creating it (mode 0600) and its public key file on first
/// use. Safe against several processes racing to create it: the key is written to a private
/// temporary file and published with `link(2)`, which fails if another process won.
pub fn load_or_create_signing_key(keys_dir: &Path) -> Result<SigningKey, KeyError> {
    if !keys_dir.is_dir() {
        fs::create_dir_all(keys_dir)
            .map_err(|source| KeyError::CreateDir { path: keys_dir.to_owned(), source })?;
        let _ = fs::set_permissions(keys_dir, fs::Permissions::from_mode(0o700));
    }
    let path = keys_dir.join(SIGNING_KEY_FILE);
    let key = match read_signing_key(&path) {
        Ok(k) => k,
        Err(KeyError::Read { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            create_signing_key(keys_dir, &path)?
        }
        Err(e) => return Err(e),
    };
    write_public_key(keys_dir, &key.verifying_key())?;
    Ok(key)
}

fn create_signing_key(keys_dir: &Path, path: &Path) -> Result<SigningKey, KeyError> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| KeyError::Random(e.to_string()))?;
    let key = SigningKey::from_bytes(&seed);
    let tmp = keys_dir.join(format!(".{SIGNING_KEY_FILE}.{}.tmp", std::process::id()));
    let write_err = |source| KeyError::Write { path: tmp.clone(), source };
    let _ = fs::remove_file(&tmp);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(write_err)?;
    let mut text = to_hex(&seed);
    text.push('\n');
    f.write_all(text.as_bytes()).map_err(write_err)?;
    f.sync_all().map_err(write_err)?;
    drop(f);
    let linked = fs::hard_link(&tmp, path);
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            sync_dir(keys_dir);
            tracing::info!(path = %path.display(), "created audit signing key");
            Ok(key)
        }
        // Another process created the key first: use theirs.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => read_signing_key(path),
        Err(source) => Err(KeyError::Write { path: path.to_owned(), source }),
    }
}

fn read_signing_key(path: &Path) -> Result<SigningKey, KeyError> {
    Ok(SigningKey::from_bytes(&read_seed(path)?))
}

fn read_seed(path: &Path) -> Result<[u8; 32], KeyError> {
    let meta =
        fs::metadata(path).map_err(|source| KeyError::Read { path: path.to_owned(), source })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyError::Permissions { path: path.to_owned(), mode });
    }
    let text = fs::read_to_string(path)
        .map_err(|source| KeyError::Read { path: path.to_owned(), source })?;
    from_hex::<32>(text.trim()).ok_or_else(|| KeyError::Malformed { path: path.to_owned() })
}

fn write_public_key(keys_dir: &Path, key: &VerifyingKey) -> Result<(), KeyError> {
    let path = keys_dir.join(VERIFYING_KEY_FILE);
    let text = format!("{}\n", to_hex(key.as_bytes()));
    if fs::read_to_string(&path).ok().as_deref() == Some(text.as_str()) {
        return Ok(());
    }
    let tmp = keys_dir.join(format!(".{VERIFYING_KEY_FILE}.{}.tmp", std::process::id()));
    let write_err = |source| KeyError::Write { path: path.clone(), source };
    fs::write(&tmp, text).map_err(write_err)?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o644)).map_err(write_err)?;
    fs::rename(&tmp, &path).map_err(write_err)?;
    Ok(())
}

/// Loads an exported public key file (64 hex digits), e.g. a copy of `audit-ed25519.pub` taken
/// off the host.
pub fn load_verifying_key(path: &Path) -> Result<VerifyingKey, KeyError> {
    let text = fs::read_to_string(path)
        .map_err(|source| KeyError::Read { path: path.to_owned(), source })?;
    let bytes =
        from_hex::<32>(text.trim()).ok_or_else(|| KeyError::Malformed { path: path.to_owned() })?;
    VerifyingKey::from_bytes(&bytes)
        .map_err(|_| KeyError::InvalidPublicKey { path: path.to_owned() })
}

/// A short identifier of a public key: the first 16 hex digits of BLAKE3 over its bytes.
pub fn key_id(key: &VerifyingKey) -> String {
    blake3::hash(key.as_bytes()).to_hex()[..16].to_owned()
}

/// The exact bytes a checkpoint signature covers:
/// `"isc-audit checkpoint v1\0" || covers_seq (u64 BE) || count (u64 BE) || head (32 bytes)`.
pub fn checkpoint_message(covers_seq: u64, count: u64, head: &blake3::Hash) -> Vec<u8> {
    let mut m = Vec::with_capacity(CHECKPOINT_DOMAIN.len() + 48);
    m.extend_from_slice(CHECKPOINT_DOMAIN);
    m.extend_from_slice(&covers_seq.to_be_bytes());
    m.extend_from_slice(&count.to_be_bytes());
    m.extend_from_slice(head.as_bytes());
    m
}

pub(crate) fn sync_dir(dir: &Path) {
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer, Verifier};

    #[test]
    fn an_opened_key_is_expanded_only_when_used_and_then_fixes_a_stale_public_file() {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys");
        let created = open_signing_key(&keys).unwrap();
        assert!(created.key.get().is_some(), "a new key is expanded to export its public key");
        let public = keys.join(VERIFYING_KEY_FILE);
        let exported = fs::read_to_string(&public).unwrap();
        fs::write(&public, format!("{}\n", "00".repeat(32))).unwrap();
        let lazy = open_signing_key(&keys).unwrap();
        assert!(lazy.key.get().is_none(), "an existing key is not expanded at open");
        assert_eq!(lazy.get().to_bytes(), created.get().to_bytes());
        assert_eq!(fs::read_to_string(&public).unwrap(), exported, "public file rewritten");
        fs::remove_file(&public).unwrap();
        assert!(open_signing_key(&keys).unwrap().key.get().is_some(), "missing public file");
        assert_eq!(fs::read_to_string(&public).unwrap(), exported);
    }

    #[test]
    fn key_is_created_once_with_0600_and_public_key_exported() {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys");
        let k1 = load_or_create_signing_key(&keys).unwrap();
        let k2 = load_or_create_signing_key(&keys).unwrap();
        assert_eq!(k1.to_bytes(), k2.to_bytes());
        let mode = fs::metadata(keys.join(SIGNING_KEY_FILE)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let vk = load_verifying_key(&keys.join(VERIFYING_KEY_FILE)).unwrap();
        assert_eq!(vk, k1.verifying_key());
        let msg = checkpoint_message(5, 5, &blake3::hash(b"x"));
        let sig = k1.sign(&msg);
        assert!(vk.verify(&msg, &sig).is_ok());
        assert!(vk.verify(&checkpoint_message(6, 5, &blake3::hash(b"x")), &sig).is_err());
    }

    #[test]
    fn group_readable_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        load_or_create_signing_key(dir.path()).unwrap();
        let p = dir.path().join(SIGNING_KEY_FILE);
        fs::set_permissions(&p, fs::Permissions::from_mode(0o640)).unwrap();
        let err = load_or_create_signing_key(dir.path()).unwrap_err();
        assert!(matches!(err, KeyError::Permissions { mode: 0o640, .. }), "{err}");
    }
}
