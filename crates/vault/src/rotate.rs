//! Master-key rotation that loses nothing when interrupted at any step.
//!
//! Protocol (each numbered action is one durable step; the test hook can stop after any of them):
//! 1. write the journal `keys/rotation.journal` = {old, new} (temporary file, then rename);
//! 2. write the new key file (temporary file, then rename with RENAME_NOREPLACE);
//! 3. for every sealed blob still under another key: decrypt, seal under the new key, write a
//!    temporary file, rename it over the blob;
//! 4. point `keys/active` at the new key (temporary file, then rename);
//! 5. delete the old key; 6. delete the journal.
//!
//! Invariant: the old key is deleted only after every blob is sealed with the new key, and a blob
//! is replaced only by rename, so each blob is at all times a complete blob under a key on disk.
//! Recovery on [`Vault::open`]: stale temporary files are deleted; if a journal exists and its new
//! key is on disk, steps 3-6 are re-run (they are idempotent); if the new key never reached disk,
//! no blob can use it, so the journal is simply deleted (roll back).

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::envelope;
use crate::fsutil::{self, FsError};
use crate::keys::KeyId;
use crate::secrets::Vault;
use crate::VaultError;

/// Errors of key rotation.
#[derive(Debug, thiserror::Error)]
pub enum RotateError {
    /// The test hook stopped the rotation.
    #[error("key rotation interrupted (test hook) after step {step}: {what}")]
    Interrupted {
        /// The last step that completed.
        step: usize,
        /// What that step did.
        what: String,
    },
    /// The journal cannot be parsed.
    #[error("rotation journal {path} is corrupt ({reason}); inspect it and the key files in its directory, then remove it")]
    CorruptJournal {
        /// The journal.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Re-sealing a blob under the new key failed.
    #[error("cannot re-seal {path} under key {key_id}: {source}")]
    Reseal {
        /// The blob.
        path: PathBuf,
        /// The new key.
        key_id: KeyId,
        /// The cause.
        source: envelope::EnvelopeError,
    },
}

/// What a rotation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotationReport {
    /// The key that was active before.
    pub old: KeyId,
    /// The key active now.
    pub new: KeyId,
    /// Blobs re-sealed under `new`.
    pub resealed: usize,
    /// Blobs that could not be opened (tampered, or under a key that is missing); they are left as
    /// they were and the old key is kept so that nothing becomes less readable.
    pub unreadable: Vec<PathBuf>,
}

#[derive(Serialize, Deserialize)]
struct Journal {
    version: u32,
    old: String,
    new: String,
}

/// Counts durable steps and stops after the chosen one (the interruption test hook).
struct Steps {
    done: usize,
    stop_after: Option<usize>,
}

impl Steps {
    fn step(&mut self, what: impl FnOnce() -> String) -> Result<(), VaultError> {
        self.done += 1;
        if self.stop_after == Some(self.done) {
            return Err(RotateError::Interrupted { step: self.done, what: what() }.into());
        }
        Ok(())
    }
}

/// A sealed blob and the associated data it is bound to.
pub(crate) struct BlobRef {
    pub path: PathBuf,
    pub ad: Vec<u8>,
}

fn list_dir(dir: &Path) -> Result<Vec<(String, PathBuf)>, FsError> {
    let mut out = Vec::new();
    match fs::read_dir(dir) {
        Ok(entries) => {
            for e in entries.flatten() {
                out.push((e.file_name().to_string_lossy().into_owned(), e.path()));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => return Err(FsError::Read { path: dir.into(), source }),
    }
    out.sort();
    Ok(out)
}

impl Vault {
    fn journal_path(&self) -> PathBuf {
        self.keys.dir().join("rotation.journal")
    }

    /// Every sealed blob in the vault: secrets and volume keys, in a stable order.
    pub(crate) fn sealed_blobs(&self) -> Result<Vec<BlobRef>, VaultError> {
        let mut out = Vec::new();
        for (isc, dir) in list_dir(&self.root.join("secrets"))? {
            for (file, path) in list_dir(&dir)? {
                if let Some(name) = file.strip_suffix(".sealed") {
                    out.push(BlobRef { path, ad: envelope::secret_ad(&isc, name) });
                }
            }
        }
        for (isc, dir) in list_dir(&self.root.join("volumes"))? {
            for (file, path) in list_dir(&dir)? {
                if let Some(name) = file.strip_suffix(".key.sealed") {
                    out.push(BlobRef { path, ad: envelope::volume_key_ad(&isc, name) });
                }
            }
        }
        Ok(out)
    }

    /// Creates a new master key, re-seals every secret and volume key under it, and deletes the
    /// old key. Safe to interrupt at any point (see the module documentation).
    pub fn rotate_key(&mut self) -> Result<RotationReport, VaultError> {
        self.rotate(None)
    }

    /// Test hook: runs [`Vault::rotate_key`] but stops with [`RotateError::Interrupted`] right
    /// after durable step `step` (1-based), as a crash there would. Drop the vault and open it
    /// again to run recovery.
    pub fn rotate_key_interrupted_after(
        &mut self,
        step: usize,
    ) -> Result<RotationReport, VaultError> {
        self.rotate(Some(step))
    }

    fn rotate(&mut self, stop_after: Option<usize>) -> Result<RotationReport, VaultError> {
        let mut steps = Steps { done: 0, stop_after };
        let guard = self.lock(true)?;
        let old = self.keys.active_or_create()?.id;
        let pending = self.keys.generate()?;
        let new = pending.key.id;
        let journal = Journal { version: 1, old: old.to_string(), new: new.to_string() };
        let jpath = self.journal_path();
        let json = serde_json::to_vec_pretty(&journal).expect("Journal serializes");
        let tmp = fsutil::write_tmp(&jpath, &json, 0o600)?;
        steps.step(|| "journal written to a temporary file".into())?;
        fsutil::commit_tmp(&tmp, &jpath)?;
        steps.step(|| "journal renamed into place".into())?;
        let tmp = fsutil::write_tmp(&pending.path, &pending.contents, 0o600)?;
        steps.step(|| "new key written to a temporary file".into())?;
        fsutil::commit_tmp_noreplace(&tmp, &pending.path)?;
        steps.step(|| "new key renamed into place".into())?;
        self.keys.remember(pending.key);
        tracing::info!(old_key = %old, new_key = %new, "key rotation started");
        let report = self.roll_forward(old, new, &mut steps)?;
        drop(guard);
        Ok(report)
    }

    fn roll_forward(
        &mut self,
        old: KeyId,
        new: KeyId,
        steps: &mut Steps,
    ) -> Result<RotationReport, VaultError> {
        let mut resealed = 0;
        let mut unreadable = Vec::new();
        for blob in self.sealed_blobs()? {
            let bytes = fsutil::read(&blob.path)?;
            if envelope::parse(&bytes).map(|e| e.key_id) == Ok(new) {
                continue;
            }
            let plaintext = match self.open_blob(&blob.path, &blob.ad) {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(path = %blob.path.display(), error = %e, "blob left as it is during key rotation");
                    unreadable.push(blob.path);
                    continue;
                }
            };
            let key = self.keys.get(new)?;
            let sealed = envelope::seal(key, &blob.ad, &plaintext).map_err(|source| {
                RotateError::Reseal { path: blob.path.clone(), key_id: new, source }
            })?;
            let tmp = fsutil::write_tmp(&blob.path, &sealed, 0o600)?;
            steps.step(|| format!("{} re-sealed to a temporary file", blob.path.display()))?;
            fsutil::commit_tmp(&tmp, &blob.path)?;
            steps.step(|| format!("{} renamed into place", blob.path.display()))?;
            resealed += 1;
        }
        let tmp = self.keys.set_active_tmp(new)?;
        steps.step(|| "active key written to a temporary file".into())?;
        self.keys.commit_active(&tmp)?;
        steps.step(|| "active key renamed into place".into())?;
        if unreadable.is_empty() && old != new {
            self.keys.delete(old)?;
            steps.step(|| format!("old key {old} deleted"))?;
        }
        fsutil::remove_durable(&self.journal_path())?;
        steps.step(|| "journal deleted".into())?;
        tracing::info!(old_key = %old, new_key = %new, resealed, unreadable = unreadable.len(), "key rotation finished");
        Ok(RotationReport { old, new, resealed, unreadable })
    }

    /// Removes crash debris and finishes or rolls back an interrupted rotation.
    pub(crate) fn recover(&mut self) -> Result<(), VaultError> {
        let guard = self.lock(true)?;
        fsutil::remove_stale_tmp(self.keys.dir())?;
        for (_, dir) in list_dir(&self.root.join("secrets"))? {
            fsutil::remove_stale_tmp(&dir)?;
        }
        for (_, dir) in list_dir(&self.root.join("volumes"))? {
            fsutil::remove_stale_tmp(&dir)?;
        }
        let jpath = self.journal_path();
        if !jpath.exists() {
            return Ok(());
        }
        let corrupt = |reason: String| RotateError::CorruptJournal { path: jpath.clone(), reason };
        let journal: Journal =
            serde_json::from_slice(&fsutil::read(&jpath)?).map_err(|e| corrupt(e.to_string()))?;
        let (Some(old), Some(new)) = (KeyId::parse(&journal.old), KeyId::parse(&journal.new))
        else {
            return Err(corrupt("key ids are not 16 hex digits".into()).into());
        };
        if self.keys.has(new) {
            // Refuse to touch anything unless the new key loads (e.g. the right passphrase).
            self.keys.get(new)?;
            tracing::warn!(old_key = %old, new_key = %new, "finishing an interrupted key rotation");
            let mut steps = Steps { done: 0, stop_after: None };
            self.roll_forward(old, new, &mut steps)?;
        } else {
            tracing::warn!(old_key = %old, new_key = %new, "rolling back a key rotation interrupted before its key was written");
            fsutil::remove_durable(&jpath)?;
        }
        drop(guard);
        Ok(())
    }
}
