//! isc-vault: principle P6, "keep sensitive data encrypted".
//!
//! - [`Vault`]: master keys (random key files or Argon2id passphrase), sealed secrets
//!   (XChaCha20-Poly1305 envelopes bound to ISC and secret name), crash-safe key rotation, and
//!   encrypted volumes whose fscrypt keys are sealed like secrets.
//! - [`write_secret_tmpfs`] / [`unmount_secret_tmpfs`]: delivery of opened secrets onto a private,
//!   size-limited, read-only tmpfs for the engine to bind at `/run/secrets`.
//! - [`MountedVolume`]: an ext4 loop image per volume, fscrypt v2 policy on its `data/` directory.
//!
//! See `docs/secrets.md` for the on-disk layout and the threat model.

pub mod envelope;
pub mod fscrypt;
mod fsutil;
pub mod keys;
/// Loop devices (shared with the image store).
pub use isc_loopdev as loopdev;
mod rotate;
mod secrets;
mod tmpfs;
mod volume;

pub use fsutil::FsError;
pub use keys::{KdfParams, KeyError, KeyId, KeySource};
pub use rotate::{RotateError, RotationReport};
pub use secrets::{validate_name, OpenedSecrets, SecretError, SecretInfo, Vault, MAX_SECRET_LEN};
pub use tmpfs::{unmount_secret_tmpfs, write_secret_tmpfs, TmpfsError};
pub use volume::{
    is_mount_point, recover_stale_volume, KeptVolume, MountedVolume, VolumeError, VolumeInfo,
    MIN_VOLUME_SIZE,
};
pub use zeroize::Zeroizing;

/// Every error the vault returns; each variant wraps the error enum of one module.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// A durable file operation failed.
    #[error(transparent)]
    Fs(#[from] FsError),
    /// Loading, deriving or creating a key failed.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// A secret is missing, tampered or under an unusable key.
    #[error(transparent)]
    Secret(#[from] SecretError),
    /// Key rotation failed or was interrupted.
    #[error(transparent)]
    Rotate(#[from] RotateError),
    /// Delivering secrets onto a tmpfs failed.
    #[error(transparent)]
    Tmpfs(#[from] TmpfsError),
    /// An fscrypt ioctl failed.
    #[error(transparent)]
    Fscrypt(#[from] fscrypt::FscryptError),
    /// A loop-device operation failed.
    #[error(transparent)]
    Loop(#[from] loopdev::LoopError),
    /// A volume operation failed.
    #[error(transparent)]
    Volume(#[from] VolumeError),
}

impl VaultError {
    /// True when a sealed blob failed authentication (modified, or bound to another ISC/name).
    pub fn is_authentication_failure(&self) -> bool {
        matches!(self, VaultError::Secret(SecretError::Tampered { .. }))
    }
}

/// Lower-case hex, for key ids and salts.
pub(crate) mod hex {
    /// Encodes bytes as lower-case hex.
    pub fn encode(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Decodes lower-case hex; `None` on odd length or other characters.
    pub fn decode(s: &str) -> Option<Vec<u8>> {
        if s.len() & 1 == 1 {
            return None;
        }
        (0..s.len())
            .step_by(2)
            .map(|i| {
                let pair = s.get(i..i + 2)?;
                if pair.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
                    u8::from_str_radix(pair, 16).ok()
                } else {
                    None
                }
            })
            .collect()
    }
}
