//! Master keys: random 32-byte key files or Argon2id passphrase-derived keys, each named by a
//! key id so several can coexist during a rotation.
//!
//! Layout under `<root>/keys/` (directory 0700):
//! - `master-<keyid>.key`: 32 raw random bytes, mode 0600, owned by the vault's user;
//! - `passphrase-<keyid>.kdf`: JSON with the Argon2id salt and parameters (no key material);
//! - `active`: the key id new seals use;
//! - `rotation.journal`: present only while a rotation is in progress (see `rotate.rs`).

use std::collections::HashMap;
use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::fsutil::{self, FsError};

/// Length of a master key in bytes.
pub const MASTER_KEY_LEN: usize = 32;
const KEY_ID_CONTEXT: &str = "isc-vault 2026-01 master key id v1";

/// Errors of key handling.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// A file operation failed.
    #[error(transparent)]
    Fs(#[from] FsError),
    /// The OS random generator failed.
    #[error("cannot read random bytes from the kernel: {0}")]
    Random(String),
    /// A key file is readable by others or owned by someone else.
    #[error("key file {path} has mode {mode:o} and owner uid {uid}; it must be 0600 and owned by uid {expected_uid}: fix with `chmod 600` and `chown`, or restore it from backup")]
    InsecureKeyFile {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
        /// Its owner.
        uid: u32,
        /// The owner it must have.
        expected_uid: u32,
    },
    /// A key file has the wrong length or does not match its id.
    #[error("key file {path} is corrupt: {reason}; restore it from backup")]
    CorruptKeyFile {
        /// The key file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// No key with this id is present.
    #[error("key {id} is not present in {dir} (no master-{id}.key or passphrase-{id}.kdf); restore it from backup")]
    KeyNotPresent {
        /// The missing key id.
        id: KeyId,
        /// The keys directory.
        dir: PathBuf,
    },
    /// The passphrase does not derive the recorded key.
    #[error("wrong passphrase for the vault at {dir}: it does not derive key {id}")]
    WrongPassphrase {
        /// The keys directory.
        dir: PathBuf,
        /// The key id recorded with the salt.
        id: KeyId,
    },
    /// The vault uses passphrase keys but none was given, or the reverse.
    #[error("the vault at {dir} uses {found} keys but was opened with {given}; open it the way it was created")]
    ModeMismatch {
        /// The keys directory.
        dir: PathBuf,
        /// What is on disk.
        found: &'static str,
        /// What the caller gave.
        given: &'static str,
    },
    /// Argon2 rejected its parameters or failed.
    #[error("Argon2id key derivation failed: {0}")]
    Kdf(String),
    /// The `active` file is unreadable.
    #[error("{path} does not name a key id: {reason}")]
    BadActive {
        /// The `active` file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// A short key identifier: the first 8 bytes of a BLAKE3 derive_key of the key, shown as 16 hex.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub [u8; 8]);

impl KeyId {
    /// Computes the id of a master key.
    pub fn of(key: &[u8; MASTER_KEY_LEN]) -> Self {
        let full = blake3::derive_key(KEY_ID_CONTEXT, key);
        let mut id = [0u8; 8];
        id.copy_from_slice(&full[..8]);
        KeyId(id)
    }

    /// Parses 16 lower-case hex digits.
    pub fn parse(s: &str) -> Option<Self> {
        let bytes = crate::hex::decode(s)?;
        Some(KeyId(bytes.try_into().ok()?))
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&crate::hex::encode(&self.0))
    }
}

/// A master key in memory; zeroized on drop.
pub struct MasterKey {
    /// Its id.
    pub id: KeyId,
    bytes: Zeroizing<[u8; MASTER_KEY_LEN]>,
}

impl MasterKey {
    /// Wraps key bytes, computing the id.
    pub fn from_bytes(bytes: Zeroizing<[u8; MASTER_KEY_LEN]>) -> Self {
        MasterKey { id: KeyId::of(&bytes), bytes }
    }

    /// The raw key, for the AEAD.
    pub fn bytes(&self) -> &[u8; MASTER_KEY_LEN] {
        &self.bytes
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MasterKey({}, <redacted>)", self.id)
    }
}

/// Argon2id cost parameters, stored beside the salt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfParams {
    /// Memory in KiB.
    pub m_cost_kib: u32,
    /// Iterations.
    pub t_cost: u32,
    /// Lanes.
    pub p_cost: u32,
}

impl Default for KdfParams {
    /// OWASP's Argon2id recommendation (19 MiB, 2 passes, 1 lane), argon2's own default.
    fn default() -> Self {
        KdfParams {
            m_cost_kib: argon2::Params::DEFAULT_M_COST,
            t_cost: argon2::Params::DEFAULT_T_COST,
            p_cost: argon2::Params::DEFAULT_P_COST,
        }
    }
}

#[derive(Serialize, Deserialize)]
struct KdfRecord {
    version: u32,
    algorithm: String,
    params: KdfParams,
    salt: String,
    key_id: String,
}

/// How the vault obtains its master keys.
pub enum KeySource {
    /// Random key files created on first use.
    File,
    /// Keys derived from this passphrase with Argon2id; `params` apply to keys created now.
    Passphrase {
        /// The operator's passphrase (never from argv).
        passphrase: SecretString,
        /// Cost of newly created keys.
        params: KdfParams,
    },
}

/// A key generated in memory, not yet on disk: the bytes to write and where.
pub(crate) struct PendingKey {
    pub key: MasterKey,
    pub path: PathBuf,
    pub contents: Zeroizing<Vec<u8>>,
}

/// The keys directory and the keys loaded from it.
pub struct KeyStore {
    dir: PathBuf,
    source: KeySource,
    cache: HashMap<KeyId, MasterKey>,
}

fn random_bytes<const N: usize>() -> Result<Zeroizing<[u8; N]>, KeyError> {
    let mut b = Zeroizing::new([0u8; N]);
    getrandom::fill(&mut b[..]).map_err(|e| KeyError::Random(e.to_string()))?;
    Ok(b)
}

impl KeyStore {
    /// Opens (creating 0700) `dir` and checks that the key kind on disk matches `source`.
    pub fn open(dir: &Path, source: KeySource) -> Result<Self, KeyError> {
        fsutil::ensure_dir(dir, 0o700)?;
        let store = KeyStore { dir: dir.to_path_buf(), source, cache: HashMap::new() };
        let (files, kdfs) = store.scan()?;
        match (&store.source, files.is_empty(), kdfs.is_empty()) {
            (KeySource::File, _, false) => Err(KeyError::ModeMismatch {
                dir: dir.into(),
                found: "passphrase-derived",
                given: "no passphrase",
            }),
            (KeySource::Passphrase { .. }, false, _) => Err(KeyError::ModeMismatch {
                dir: dir.into(),
                found: "key-file",
                given: "a passphrase",
            }),
            _ => Ok(store),
        }
    }

    /// The keys directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn scan(&self) -> Result<(Vec<KeyId>, Vec<KeyId>), KeyError> {
        let mut files = Vec::new();
        let mut kdfs = Vec::new();
        let entries = fs::read_dir(&self.dir)
            .map_err(|source| FsError::Read { path: self.dir.clone(), source })?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(id) = name
                .strip_prefix("master-")
                .and_then(|s| s.strip_suffix(".key"))
                .and_then(KeyId::parse)
            {
                files.push(id);
            } else if let Some(id) = name
                .strip_prefix("passphrase-")
                .and_then(|s| s.strip_suffix(".kdf"))
                .and_then(KeyId::parse)
            {
                kdfs.push(id);
            }
        }
        files.sort();
        kdfs.sort();
        Ok((files, kdfs))
    }

    /// Ids of every key present on disk, sorted.
    pub fn present_ids(&self) -> Result<Vec<KeyId>, KeyError> {
        let (mut files, kdfs) = self.scan()?;
        files.extend(kdfs);
        files.sort();
        Ok(files)
    }

    fn path_of(&self, id: KeyId) -> PathBuf {
        match self.source {
            KeySource::File => self.dir.join(format!("master-{id}.key")),
            KeySource::Passphrase { .. } => self.dir.join(format!("passphrase-{id}.kdf")),
        }
    }

    fn active_path(&self) -> PathBuf {
        self.dir.join("active")
    }

    /// The active key id: the `active` file, else the only key present, else none.
    pub fn active_id(&self) -> Result<Option<KeyId>, KeyError> {
        let path = self.active_path();
        match fs::read_to_string(&path) {
            Ok(s) => KeyId::parse(s.trim()).map(Some).ok_or_else(|| KeyError::BadActive {
                path,
                reason: format!("{:?} is not 16 hex digits", s.trim()),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let ids = self.present_ids()?;
                Ok(if ids.len() == 1 { Some(ids[0]) } else { None })
            }
            Err(source) => Err(FsError::Read { path, source }.into()),
        }
    }

    /// The active key, created (and made active) on first use.
    pub fn active_or_create(&mut self) -> Result<&MasterKey, KeyError> {
        let id = match self.active_id()? {
            Some(id) => id,
            None => {
                let pending = self.generate()?;
                let id = pending.key.id;
                let tmp = fsutil::write_tmp(&pending.path, &pending.contents, 0o600)?;
                fsutil::commit_tmp_noreplace(&tmp, &pending.path)?;
                self.set_active_tmp(id).and_then(|t| self.commit_active(&t))?;
                tracing::info!(key_id = %id, dir = %self.dir.display(), "created master key");
                self.cache.insert(id, pending.key);
                id
            }
        };
        self.get(id)
    }

    /// Writes the temporary `active` file naming `id`; [`Self::commit_active`] makes it current.
    pub(crate) fn set_active_tmp(&self, id: KeyId) -> Result<PathBuf, KeyError> {
        Ok(fsutil::write_tmp(&self.active_path(), format!("{id}\n").as_bytes(), 0o600)?)
    }

    /// Renames the temporary `active` file into place.
    pub(crate) fn commit_active(&self, tmp: &Path) -> Result<(), KeyError> {
        Ok(fsutil::commit_tmp(tmp, &self.active_path())?)
    }

    /// Generates a new key in memory (random, or a fresh salt for the same passphrase).
    pub(crate) fn generate(&self) -> Result<PendingKey, KeyError> {
        match &self.source {
            KeySource::File => {
                let key = MasterKey::from_bytes(random_bytes::<MASTER_KEY_LEN>()?);
                let path = self.path_of(key.id);
                let contents = Zeroizing::new(key.bytes().to_vec());
                Ok(PendingKey { key, path, contents })
            }
            KeySource::Passphrase { passphrase, params } => {
                let salt = random_bytes::<16>()?;
                let key = derive(passphrase, &salt[..], *params)?;
                let record = KdfRecord {
                    version: 1,
                    algorithm: "argon2id".into(),
                    params: *params,
                    salt: crate::hex::encode(&salt[..]),
                    key_id: key.id.to_string(),
                };
                let json = serde_json::to_vec_pretty(&record).expect("KdfRecord serializes");
                let path = self.path_of(key.id);
                Ok(PendingKey { key, path, contents: Zeroizing::new(json) })
            }
        }
    }

    /// Returns key `id`, loading (or deriving) it on first use.
    pub fn get(&mut self, id: KeyId) -> Result<&MasterKey, KeyError> {
        if !self.cache.contains_key(&id) {
            let key = self.load(id)?;
            self.cache.insert(id, key);
        }
        Ok(&self.cache[&id])
    }

    /// Whether key `id` is present on disk or cached.
    pub fn has(&self, id: KeyId) -> bool {
        self.cache.contains_key(&id) || self.path_of(id).exists()
    }

    fn load(&self, id: KeyId) -> Result<MasterKey, KeyError> {
        let path = self.path_of(id);
        let mut file = match OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(KeyError::KeyNotPresent { id, dir: self.dir.clone() })
            }
            Err(source) => return Err(FsError::Read { path, source }.into()),
        };
        let meta =
            file.metadata().map_err(|source| FsError::Read { path: path.clone(), source })?;
        let euid = rustix::process::geteuid().as_raw();
        if meta.mode() & 0o077 != 0 || meta.uid() != euid || !meta.is_file() {
            return Err(KeyError::InsecureKeyFile {
                path,
                mode: meta.mode() & 0o7777,
                uid: meta.uid(),
                expected_uid: euid,
            });
        }
        let mut contents = Zeroizing::new(Vec::new());
        file.read_to_end(&mut contents)
            .map_err(|source| FsError::Read { path: path.clone(), source })?;
        let key = match &self.source {
            KeySource::File => {
                if contents.len() != MASTER_KEY_LEN {
                    return Err(KeyError::CorruptKeyFile {
                        path,
                        reason: format!("{} bytes, expected {MASTER_KEY_LEN}", contents.len()),
                    });
                }
                let mut bytes = Zeroizing::new([0u8; MASTER_KEY_LEN]);
                bytes.copy_from_slice(&contents);
                MasterKey::from_bytes(bytes)
            }
            KeySource::Passphrase { passphrase, .. } => {
                let record: KdfRecord = serde_json::from_slice(&contents).map_err(|e| {
                    KeyError::CorruptKeyFile { path: path.clone(), reason: e.to_string() }
                })?;
                let salt = crate::hex::decode(&record.salt)
                    .filter(|_| record.version == 1 && record.algorithm == "argon2id")
                    .ok_or_else(|| KeyError::CorruptKeyFile {
                        path: path.clone(),
                        reason: "unknown version, algorithm or salt encoding".into(),
                    })?;
                let key = derive(passphrase, &salt, record.params)?;
                if key.id != id {
                    return Err(KeyError::WrongPassphrase { dir: self.dir.clone(), id });
                }
                key
            }
        };
        if key.id != id {
            return Err(KeyError::CorruptKeyFile {
                path,
                reason: format!("its contents have key id {}", key.id),
            });
        }
        Ok(key)
    }

    /// Puts a freshly generated key into the cache (used by rotation after writing it).
    pub(crate) fn remember(&mut self, key: MasterKey) {
        self.cache.insert(key.id, key);
    }

    /// Deletes key `id` from disk and memory.
    pub(crate) fn delete(&mut self, id: KeyId) -> Result<(), KeyError> {
        self.cache.remove(&id);
        Ok(fsutil::remove_durable(&self.path_of(id))?)
    }
}

fn derive(passphrase: &SecretString, salt: &[u8], p: KdfParams) -> Result<MasterKey, KeyError> {
    let params = argon2::Params::new(p.m_cost_kib, p.t_cost, p.p_cost, Some(MASTER_KEY_LEN))
        .map_err(|e| KeyError::Kdf(e.to_string()))?;
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut out = Zeroizing::new([0u8; MASTER_KEY_LEN]);
    argon
        .hash_password_into(passphrase.expose_secret().as_bytes(), salt, &mut out[..])
        .map_err(|e| KeyError::Kdf(e.to_string()))?;
    Ok(MasterKey::from_bytes(out))
}
