//! The sealed-blob format: `"ISCS" | version (1) | key id (8) | nonce (24) | ciphertext+tag`.
//!
//! XChaCha20-Poly1305 with a random 192-bit nonce per seal: random nonces of that size never
//! collide in practice, so no counter state has to survive crashes (draft-irtf-cfrg-xchacha §3.1).
//! The associated data binds a blob to its owner (`"isc-secret-v1" || isc || 0 || name`), so a blob
//! copied to another ISC or renamed fails authentication. The header is not in the associated
//! data, but each field is still covered: the magic and version are compared literally, the key
//! id selects the key (a changed id selects a wrong or absent key), and the nonce feeds the cipher.

use chacha20poly1305::aead::{AeadInOut, KeyInit};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use zeroize::{Zeroize, Zeroizing};

use crate::keys::{KeyId, MasterKey};

/// First four bytes of every sealed blob.
pub const MAGIC: &[u8; 4] = b"ISCS";
/// The only envelope version written and read.
pub const VERSION: u8 = 1;
/// Bytes before the ciphertext.
pub const HEADER_LEN: usize = 4 + 1 + 8 + 24;
/// Poly1305 tag length.
pub const TAG_LEN: usize = 16;
/// Total overhead of a sealed blob over its plaintext.
pub const OVERHEAD: usize = HEADER_LEN + TAG_LEN;

/// Errors of sealing and opening one blob.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvelopeError {
    /// Shorter than a header and a tag.
    #[error("blob is {len} bytes, shorter than the {OVERHEAD}-byte minimum")]
    TooShort {
        /// Its length.
        len: usize,
    },
    /// Does not start with `ISCS`.
    #[error("blob does not start with the ISCS magic")]
    BadMagic,
    /// A version this build does not know.
    #[error("envelope version {0} is not supported (this build reads version {VERSION})")]
    UnsupportedVersion(u8),
    /// The Poly1305 tag does not verify.
    #[error("Poly1305 tag mismatch")]
    AuthenticationFailed,
    /// The OS random generator failed while drawing a nonce.
    #[error("cannot draw a random nonce: {0}")]
    Random(String),
    /// The AEAD refused to encrypt (message too long).
    #[error("encryption failed: {0}")]
    Encrypt(String),
}

/// A parsed, not yet authenticated, sealed blob.
#[derive(Debug, Clone, Copy)]
pub struct Envelope<'a> {
    /// The key it claims to be sealed with.
    pub key_id: KeyId,
    /// The XChaCha20 nonce.
    pub nonce: [u8; 24],
    /// Ciphertext followed by the tag.
    pub ciphertext: &'a [u8],
}

/// Parses the header of `blob`.
pub fn parse(blob: &[u8]) -> Result<Envelope<'_>, EnvelopeError> {
    if blob.len() < OVERHEAD {
        return Err(EnvelopeError::TooShort { len: blob.len() });
    }
    if &blob[..4] != MAGIC {
        return Err(EnvelopeError::BadMagic);
    }
    if blob[4] != VERSION {
        return Err(EnvelopeError::UnsupportedVersion(blob[4]));
    }
    let mut id = [0u8; 8];
    id.copy_from_slice(&blob[5..13]);
    let mut nonce = [0u8; 24];
    nonce.copy_from_slice(&blob[13..HEADER_LEN]);
    Ok(Envelope { key_id: KeyId(id), nonce, ciphertext: &blob[HEADER_LEN..] })
}

/// Associated data of a secret: `"isc-secret-v1" || isc || 0 || name`.
pub fn secret_ad(isc: &str, name: &str) -> Vec<u8> {
    bound_ad(b"isc-secret-v1", isc, name)
}

/// Associated data of a volume's fscrypt key: `"isc-volume-key-v1" || isc || 0 || name`.
pub fn volume_key_ad(isc: &str, name: &str) -> Vec<u8> {
    bound_ad(b"isc-volume-key-v1", isc, name)
}

fn bound_ad(label: &[u8], isc: &str, name: &str) -> Vec<u8> {
    let mut ad = Vec::with_capacity(label.len() + isc.len() + 1 + name.len());
    ad.extend_from_slice(label);
    ad.extend_from_slice(isc.as_bytes());
    ad.push(0);
    ad.extend_from_slice(name.as_bytes());
    ad
}

fn cipher(key: &MasterKey) -> XChaCha20Poly1305 {
    // Build the key array in place and wipe it: the cipher keeps (and, with the crate's
    // `zeroize` feature, wipes on drop) its own copy.
    let mut k = Key::default();
    k.copy_from_slice(key.bytes());
    let c = XChaCha20Poly1305::new(&k);
    k.as_mut_slice().zeroize();
    c
}

/// Seals `plaintext` under `key` with associated data `ad`.
pub fn seal(key: &MasterKey, ad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, EnvelopeError> {
    let mut nonce = [0u8; 24];
    getrandom::fill(&mut nonce).map_err(|e| EnvelopeError::Random(e.to_string()))?;
    let mut blob = Vec::with_capacity(OVERHEAD + plaintext.len());
    blob.extend_from_slice(MAGIC);
    blob.push(VERSION);
    blob.extend_from_slice(&key.id.0);
    blob.extend_from_slice(&nonce);
    // Encrypt in a zeroizing buffer: it holds plaintext until encrypt_in_place overwrites it.
    let mut body = Zeroizing::new(Vec::with_capacity(plaintext.len() + TAG_LEN));
    body.extend_from_slice(plaintext);
    cipher(key)
        .encrypt_in_place(&XNonce::from(nonce), ad, &mut *body)
        .map_err(|e| EnvelopeError::Encrypt(e.to_string()))?;
    blob.extend_from_slice(&body);
    Ok(blob)
}

/// Authenticates and decrypts `env` with `key`; the plaintext is zeroized when dropped.
pub fn open(
    key: &MasterKey,
    ad: &[u8],
    env: &Envelope<'_>,
) -> Result<Zeroizing<Vec<u8>>, EnvelopeError> {
    if key.id != env.key_id {
        return Err(EnvelopeError::AuthenticationFailed);
    }
    let mut buf = Zeroizing::new(env.ciphertext.to_vec());
    cipher(key)
        .decrypt_in_place(&XNonce::from(env.nonce), ad, &mut *buf)
        .map_err(|_| EnvelopeError::AuthenticationFailed)?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> MasterKey {
        MasterKey::from_bytes(Zeroizing::new([b; 32]))
    }

    #[test]
    fn round_trip_and_binding() {
        let k = key(7);
        let blob = seal(&k, &secret_ad("web", "db"), b"hunter2").unwrap();
        assert_eq!(blob.len(), OVERHEAD + 7);
        let env = parse(&blob).unwrap();
        assert_eq!(&open(&k, &secret_ad("web", "db"), &env).unwrap()[..], b"hunter2");
        for (isc, name) in [("web2", "db"), ("web", "db2"), ("we", "bdb")] {
            assert_eq!(
                open(&k, &secret_ad(isc, name), &env),
                Err(EnvelopeError::AuthenticationFailed)
            );
        }
        assert_eq!(
            open(&k, &volume_key_ad("web", "db"), &env),
            Err(EnvelopeError::AuthenticationFailed)
        );
    }

    #[test]
    fn header_checks() {
        let k = key(1);
        let mut blob = seal(&k, b"ad", b"x").unwrap();
        assert_eq!(
            parse(&blob[..OVERHEAD - 1]).unwrap_err(),
            EnvelopeError::TooShort { len: OVERHEAD - 1 }
        );
        blob[4] = 2;
        assert_eq!(parse(&blob).unwrap_err(), EnvelopeError::UnsupportedVersion(2));
        blob[0] = b'X';
        assert_eq!(parse(&blob).unwrap_err(), EnvelopeError::BadMagic);
    }

    #[test]
    fn nonces_differ() {
        let k = key(2);
        assert_ne!(seal(&k, b"", b"same").unwrap(), seal(&k, b"", b"same").unwrap());
    }
}
