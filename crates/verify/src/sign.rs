//! Signed reports: Ed25519 over a domain tag and the canonical JSON of the report (serde_json
//! objects are key-sorted, so the bytes are reproducible). The key is `<root>/keys/verify.key`
//! (hex seed, 0600, created on first use); its public half is written next to it as
//! `verify.pub` for verifiers elsewhere.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde_json::{json, Value};

const DOMAIN: &[u8] = b"isc-verify report v1\0";
pub const KEY_FILE: &str = "verify.key";
pub const PUB_FILE: &str = "verify.pub";

#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("key file {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("signing key {path} has mode {mode:o}; fix: chmod 600 {path}")]
    Mode { path: PathBuf, mode: u32 },
    #[error("key file {path} is malformed: expected 64 hex digits")]
    Malformed { path: PathBuf },
    #[error("getting randomness for a new signing key: {0}")]
    Random(String),
    #[error("signed report is malformed: {0}")]
    Format(String),
    #[error("the report's signature does not verify: it was changed after signing or signed by another key")]
    BadSignature,
    #[error("the report was signed by key {found}, not the trusted key {trusted}; fix: pass the right --key")]
    UntrustedKey { found: String, trusted: String },
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let s = s.trim();
    if s.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Loads `<keys_dir>/verify.key`, creating it (0600) on first use.
pub fn load_or_create_key(keys_dir: &Path) -> Result<SigningKey, SignError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| SignError::Io { path, source }
    };
    fs::create_dir_all(keys_dir).map_err(io(keys_dir))?;
    let path = keys_dir.join(KEY_FILE);
    let key = match fs::read_to_string(&path) {
        Ok(text) => {
            let mode = fs::metadata(&path).map_err(io(&path))?.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(SignError::Mode { path, mode });
            }
            SigningKey::from_bytes(
                &unhex::<32>(&text).ok_or(SignError::Malformed { path: path.clone() })?,
            )
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut seed = [0u8; 32];
            getrandom::fill(&mut seed).map_err(|e| SignError::Random(e.to_string()))?;
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .map_err(io(&path))?;
            f.write_all(format!("{}\n", hex(&seed)).as_bytes()).map_err(io(&path))?;
            SigningKey::from_bytes(&seed)
        }
        Err(e) => return Err(SignError::Io { path, source: e }),
    };
    let pubp = keys_dir.join(PUB_FILE);
    fs::write(&pubp, format!("{}\n", hex(key.verifying_key().as_bytes()))).map_err(io(&pubp))?;
    Ok(key)
}

/// Reads a public key file (64 hex digits).
pub fn read_public_key(path: &Path) -> Result<VerifyingKey, SignError> {
    let text =
        fs::read_to_string(path).map_err(|source| SignError::Io { path: path.into(), source })?;
    unhex::<32>(&text)
        .and_then(|b| VerifyingKey::from_bytes(&b).ok())
        .ok_or(SignError::Malformed { path: path.into() })
}

fn message(report: &Value) -> Vec<u8> {
    let mut m = DOMAIN.to_vec();
    m.extend(serde_json::to_vec(report).expect("json value serializes"));
    m
}

/// `{"report": …, "signature": {"alg": "ed25519", "public_key": hex, "sig": hex}}`.
pub fn sign(report: &Value, key: &SigningKey) -> Value {
    let sig = key.sign(&message(report));
    json!({
        "report": report,
        "signature": {"alg": "ed25519", "public_key": hex(key.verifying_key().as_bytes()), "sig": hex(&sig.to_bytes())},
    })
}

/// Checks a signed report against `trusted` (or, without one, against its embedded key —
/// which only proves integrity, not origin). Returns the report.
pub fn check(signed: &Value, trusted: Option<&VerifyingKey>) -> Result<Value, SignError> {
    let report = signed.get("report").ok_or_else(|| SignError::Format("no `report`".into()))?;
    let s = signed.get("signature").ok_or_else(|| SignError::Format("no `signature`".into()))?;
    let field = |k: &str| {
        s.get(k)
            .and_then(|v| v.as_str())
            .ok_or_else(|| SignError::Format(format!("no signature.{k}")))
    };
    if field("alg")? != "ed25519" {
        return Err(SignError::Format("signature.alg must be ed25519".into()));
    }
    let pk = unhex::<32>(field("public_key")?)
        .and_then(|b| VerifyingKey::from_bytes(&b).ok())
        .ok_or_else(|| SignError::Format("bad public_key".into()))?;
    if let Some(t) = trusted {
        if t != &pk {
            return Err(SignError::UntrustedKey {
                found: hex(pk.as_bytes()),
                trusted: hex(t.as_bytes()),
            });
        }
    }
    let sig = Signature::from_bytes(
        &unhex::<64>(field("sig")?).ok_or_else(|| SignError::Format("bad sig".into()))?,
    );
    pk.verify(&message(report), &sig).map_err(|_| SignError::BadSignature)?;
    Ok(report.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_survive_the_file_round_trip() {
        // Without serde_json's `float_roundtrip` its parser may land one ULP off, and the
        // re-serialised report (what `check` verifies) differs from what was signed.
        let key = SigningKey::from_bytes(&[7; 32]);
        let vals: Vec<f64> = (1..2000u32).map(|i| f64::from(i).sqrt() * 1.000_000_1e-3).collect();
        let signed = sign(&json!({"timings_ms": vals}), &key);
        let text = serde_json::to_vec_pretty(&signed).unwrap();
        let back: Value = serde_json::from_slice(&text).unwrap();
        check(&back, Some(&key.verifying_key())).expect("a round-tripped report verifies");
    }

    #[test]
    fn sign_check_tamper_and_key_mode() {
        let d = tempfile::tempdir().unwrap();
        let k = load_or_create_key(d.path()).unwrap();
        let mode = fs::metadata(d.path().join(KEY_FILE)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(load_or_create_key(d.path()).unwrap().to_bytes(), k.to_bytes(), "reused");
        let pk = read_public_key(&d.path().join(PUB_FILE)).unwrap();
        let signed = sign(&json!({"subject": {"image_id": "abc"}, "score": {"pass": true}}), &k);
        assert!(check(&signed, Some(&pk)).is_ok());
        let mut bad = signed.clone();
        bad["report"]["score"]["pass"] = json!(false);
        assert!(matches!(check(&bad, Some(&pk)), Err(SignError::BadSignature)));
        let other = SigningKey::from_bytes(&[7u8; 32]);
        let forged = sign(&json!({"x": 1}), &other);
        assert!(matches!(check(&forged, Some(&pk)), Err(SignError::UntrustedKey { .. })));
        fs::set_permissions(d.path().join(KEY_FILE), fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(load_or_create_key(d.path()), Err(SignError::Mode { .. })));
    }
}
