//! The vault: sealed secrets at `<root>/secrets/<isc>/<name>.sealed`, opened only for a start.

use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use zeroize::Zeroizing;

use crate::envelope::{self, EnvelopeError};
use crate::fsutil::{self, FsError};
use crate::keys::{KeyError, KeyId, KeySource, KeyStore};
use crate::VaultError;

/// Largest secret value accepted (secrets are small; the tmpfs holding them is size-limited).
pub const MAX_SECRET_LEN: usize = 1 << 20;

/// Errors specific to sealed secrets.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// An ISC, secret or volume name with characters that could escape its directory.
    #[error("invalid {kind} name {name:?}: use 1-64 characters of A-Z a-z 0-9 _ . - not starting with . or -")]
    InvalidName {
        /// "ISC", "secret" or "volume".
        kind: &'static str,
        /// The name given.
        name: String,
    },
    /// The secret was never set (or was removed).
    #[error(
        "secret {name} is not set for ISC {isc}; set it with `isc secret set {name} --isc {isc}`"
    )]
    Missing {
        /// The ISC.
        isc: String,
        /// The secret.
        name: String,
    },
    /// The blob failed authentication.
    #[error(
        "authentication failed: blob {path} was modified or belongs to another ISC/name ({detail})"
    )]
    Tampered {
        /// The blob.
        path: PathBuf,
        /// Which check failed.
        detail: EnvelopeError,
    },
    /// The key the blob names cannot be used.
    #[error("blob {path} is sealed with key {key_id}, which cannot be used: {source}. Restore that key (or its passphrase); if no such key ever existed, the blob was modified")]
    WrongKey {
        /// The blob.
        path: PathBuf,
        /// The key id in its header.
        key_id: KeyId,
        /// Why the key is unusable.
        source: KeyError,
    },
    /// Sealing failed.
    #[error("cannot seal {path}: {source}")]
    Seal {
        /// The blob being written.
        path: PathBuf,
        /// The cause.
        source: EnvelopeError,
    },
    /// The value exceeds [`MAX_SECRET_LEN`].
    #[error("secret {name} is {len} bytes; the limit is {MAX_SECRET_LEN}")]
    TooLarge {
        /// The secret.
        name: String,
        /// Its length.
        len: usize,
    },
    /// Taking the vault lock failed.
    #[error("cannot lock {path}: {source}")]
    Lock {
        /// The lock file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Opened secrets, `(name, value)`, values zeroized on drop.
pub type OpenedSecrets = Vec<(String, Zeroizing<Vec<u8>>)>;

/// What `list` tells about a secret: never its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretInfo {
    /// The secret's name.
    pub name: String,
    /// The key it is sealed with; `None` if the header is unreadable (the blob is corrupt).
    pub key_id: Option<KeyId>,
    /// Plaintext size in bytes.
    pub size: u64,
    /// When it was last set (or re-sealed by a key rotation).
    pub modified: SystemTime,
}

/// Checks that `name` is safe as a single path component.
pub fn validate_name(kind: &'static str, name: &str) -> Result<(), SecretError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with(['.', '-'])
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(SecretError::InvalidName { kind, name: name.to_string() })
    }
}

/// A vault rooted at a directory (the isc root): keys, sealed secrets and volume keys.
pub struct Vault {
    pub(crate) root: PathBuf,
    pub(crate) keys: KeyStore,
    lock: File,
}

/// A held flock; released on drop.
/// It owns a duplicate of the lock file descriptor: flock(2) locks belong to the open file
/// description, so unlocking through the duplicate releases the vault's lock.
pub(crate) struct LockGuard(File);

impl Drop for LockGuard {
    fn drop(&mut self) {
        let _ = rustix::fs::flock(&self.0, rustix::fs::FlockOperation::Unlock);
    }
}

impl Vault {
    /// Opens the vault at `root` (created 0700 if missing). If a key rotation was interrupted,
    /// finishes or rolls it back first, so every secret is sealed with a present key.
    pub fn open(root: &Path, source: KeySource) -> Result<Self, VaultError> {
        // A new root is private; an existing one (shared with the rest of isc) keeps its mode,
        // since keys/, secrets/ and volumes/ below it are 0700 themselves.
        if !root.exists() {
            fsutil::ensure_dir(root, 0o700)?;
        }
        let keys = KeyStore::open(&root.join("keys"), source)?;
        let lock_path = root.join("vault.lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
            .open(&lock_path)
            .map_err(|source| SecretError::Lock { path: lock_path, source })?;
        let mut vault = Vault { root: root.to_path_buf(), keys, lock };
        vault.recover()?;
        Ok(vault)
    }

    /// The vault's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The key new seals use, if one exists yet.
    pub fn active_key_id(&self) -> Result<Option<KeyId>, VaultError> {
        Ok(self.keys.active_id()?)
    }

    /// Ids of all keys present.
    pub fn key_ids(&self) -> Result<Vec<KeyId>, VaultError> {
        Ok(self.keys.present_ids()?)
    }

    pub(crate) fn lock(&self, exclusive: bool) -> Result<LockGuard, VaultError> {
        let lerr = |source| SecretError::Lock { path: self.root.join("vault.lock"), source };
        let dup = self.lock.try_clone().map_err(lerr)?;
        let op = if exclusive {
            rustix::fs::FlockOperation::LockExclusive
        } else {
            rustix::fs::FlockOperation::LockShared
        };
        rustix::fs::flock(&dup, op).map_err(|e| lerr(e.into()))?;
        Ok(LockGuard(dup))
    }

    fn isc_dir(&self, isc: &str) -> PathBuf {
        self.root.join("secrets").join(isc)
    }

    /// Where secret `name` of `isc` is stored.
    pub fn secret_path(&self, isc: &str, name: &str) -> PathBuf {
        self.isc_dir(isc).join(format!("{name}.sealed"))
    }

    /// Seals `value` for `isc`/`name` with the active key (created on first use) and stores it
    /// atomically (0600). The value is zeroized when this returns.
    pub fn set(
        &mut self,
        isc: &str,
        name: &str,
        value: Zeroizing<Vec<u8>>,
    ) -> Result<SecretInfo, VaultError> {
        validate_name("ISC", isc)?;
        validate_name("secret", name)?;
        if value.len() > MAX_SECRET_LEN {
            return Err(SecretError::TooLarge { name: name.into(), len: value.len() }.into());
        }
        let _guard = self.lock(true)?;
        fsutil::ensure_dir(&self.root.join("secrets"), 0o700)?;
        fsutil::ensure_dir(&self.isc_dir(isc), 0o700)?;
        let path = self.secret_path(isc, name);
        self.seal_to(&path, &envelope::secret_ad(isc, name), &value)?;
        tracing::info!(isc, secret = name, "secret set");
        self.info(name, &path)
    }

    /// Seals `plaintext` with the active key and atomically writes it to `path` (0600).
    pub(crate) fn seal_to(
        &mut self,
        path: &Path,
        ad: &[u8],
        plaintext: &[u8],
    ) -> Result<(), VaultError> {
        let key = self.keys.active_or_create()?;
        let blob = envelope::seal(key, ad, plaintext)
            .map_err(|source| SecretError::Seal { path: path.into(), source })?;
        fsutil::write_atomic(path, &blob, 0o600)?;
        Ok(())
    }

    /// Reads, authenticates and decrypts the blob at `path` with the key its header names.
    pub(crate) fn open_blob(
        &mut self,
        path: &Path,
        ad: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, VaultError> {
        let blob = fsutil::read(path)?;
        let env = envelope::parse(&blob)
            .map_err(|detail| SecretError::Tampered { path: path.into(), detail })?;
        let key = self.keys.get(env.key_id).map_err(|source| SecretError::WrongKey {
            path: path.into(),
            key_id: env.key_id,
            source,
        })?;
        Ok(envelope::open(key, ad, &env)
            .map_err(|detail| SecretError::Tampered { path: path.into(), detail })?)
    }

    fn info(&self, name: &str, path: &Path) -> Result<SecretInfo, VaultError> {
        let rerr = |source| FsError::Read { path: path.into(), source };
        let mut file = File::open(path).map_err(rerr)?;
        let meta = file.metadata().map_err(rerr)?;
        let mut header = [0u8; envelope::OVERHEAD];
        let key_id = match file.read_exact(&mut header) {
            Ok(()) => envelope::parse(&header).ok().map(|e| e.key_id),
            Err(_) => None,
        };
        Ok(SecretInfo {
            name: name.into(),
            key_id,
            size: meta.len().saturating_sub(envelope::OVERHEAD as u64),
            modified: meta.modified().map_err(rerr)?,
        })
    }

    /// Lists the secrets of `isc`, sorted by name, without decrypting anything.
    pub fn list(&self, isc: &str) -> Result<Vec<SecretInfo>, VaultError> {
        validate_name("ISC", isc)?;
        let _guard = self.lock(false)?;
        let dir = self.isc_dir(isc);
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(FsError::Read { path: dir, source }.into()),
        };
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let file_name = entry.file_name().to_string_lossy().into_owned();
            if let Some(name) = file_name.strip_suffix(".sealed") {
                out.push(self.info(name, &entry.path())?);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Removes secret `name` of `isc`; an absent secret is an error naming it.
    pub fn remove(&mut self, isc: &str, name: &str) -> Result<(), VaultError> {
        validate_name("ISC", isc)?;
        validate_name("secret", name)?;
        let _guard = self.lock(true)?;
        let path = self.secret_path(isc, name);
        if !path.exists() {
            return Err(SecretError::Missing { isc: isc.into(), name: name.into() }.into());
        }
        fsutil::remove_durable(&path)?;
        tracing::info!(isc, secret = name, "secret removed");
        Ok(())
    }

    /// Decrypts the named secrets of `isc` for delivery at start. Fails on the first missing,
    /// unreadable or tampered secret, and then returns no plaintext at all.
    pub fn open_for_start(
        &mut self,
        isc: &str,
        names: &[String],
    ) -> Result<OpenedSecrets, VaultError> {
        validate_name("ISC", isc)?;
        let _guard = self.lock(false)?;
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            validate_name("secret", name)?;
            let path = self.secret_path(isc, name);
            if !path.exists() {
                return Err(SecretError::Missing { isc: isc.into(), name: name.clone() }.into());
            }
            let value = self.open_blob(&path, &envelope::secret_ad(isc, name))?;
            out.push((name.clone(), value));
        }
        Ok(out)
    }
}
