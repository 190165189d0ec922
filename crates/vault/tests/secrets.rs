//! Sealed secrets against the real filesystem: binding, tampering, errors, passphrase keys.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;

use common::{contains, files_under, TestDir};
use isc_vault::{
    envelope, KdfParams, KeyError, KeySource, SecretError, Vault, VaultError, Zeroizing,
};
use secrecy::SecretString;

const CANARY: &[u8] = b"isc-canary-secret-value-7f3a";

fn value(v: &[u8]) -> Zeroizing<Vec<u8>> {
    Zeroizing::new(v.to_vec())
}

fn names(n: &[&str]) -> Vec<String> {
    n.iter().map(|s| s.to_string()).collect()
}

#[test]
fn set_list_open_remove_round_trip_without_printing_values() {
    let t = TestDir::new("roundtrip");
    let mut v = Vault::open(&t.root(), KeySource::File).unwrap();
    let info = v.set("web", "db_password", value(CANARY)).unwrap();
    assert_eq!(info.size, CANARY.len() as u64);
    v.set("web", "api.key", value(b"k")).unwrap();

    let key_files: Vec<_> = fs::read_dir(t.root().join("keys"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("master-"))
        .collect();
    assert_eq!(key_files.len(), 1);
    let meta = key_files[0].metadata().unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(meta.len(), 32);
    let blob = v.secret_path("web", "db_password");
    assert_eq!(fs::metadata(&blob).unwrap().permissions().mode() & 0o777, 0o600);

    let listed = v.list("web").unwrap();
    assert_eq!(
        listed.iter().map(|i| i.name.as_str()).collect::<Vec<_>>(),
        ["api.key", "db_password"]
    );
    assert!(listed.iter().all(|i| i.key_id == v.active_key_id().unwrap()));
    assert!(!format!("{listed:?}").contains("isc-canary"));
    assert!(v.list("other").unwrap().is_empty());

    let opened = v.open_for_start("web", &names(&["db_password"])).unwrap();
    assert_eq!(opened[0].0, "db_password");
    assert_eq!(&opened[0].1[..], CANARY);

    for f in files_under(&t.root()) {
        assert!(!contains(&fs::read(&f).unwrap(), CANARY), "plaintext in {}", f.display());
    }

    v.remove("web", "db_password").unwrap();
    assert!(!blob.exists());
    let err = v.remove("web", "db_password").unwrap_err();
    assert!(matches!(err, VaultError::Secret(SecretError::Missing { .. })));
    t.assert_no_leaks();
}

#[test]
fn missing_secret_names_it_and_the_fix() {
    let t = TestDir::new("missing");
    let mut v = Vault::open(&t.root(), KeySource::File).unwrap();
    v.set("web", "a", value(b"1")).unwrap();
    let err = v.open_for_start("web", &names(&["a", "tls_key"])).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("tls_key"), "{msg}");
    assert!(msg.contains("isc secret set tls_key --isc web"), "{msg}");
}

#[test]
fn tampering_any_byte_fails_authentication() {
    let t = TestDir::new("tamper");
    let mut v = Vault::open(&t.root(), KeySource::File).unwrap();
    v.set("web", "tok", value(b"s3cr3t")).unwrap();
    let path = v.secret_path("web", "tok");
    let original = fs::read(&path).unwrap();
    assert_eq!(original.len(), envelope::OVERHEAD + 6);
    for pos in 0..original.len() {
        for flip in [0x01u8, 0x80] {
            let mut bad = original.clone();
            bad[pos] ^= flip;
            fs::write(&path, &bad).unwrap();
            let err = v.open_for_start("web", &names(&["tok"])).unwrap_err();
            let key_id_field = 5..13;
            if key_id_field.contains(&pos) {
                // A changed key id names a key that does not exist: refused as a wrong key.
                assert!(
                    matches!(err, VaultError::Secret(SecretError::WrongKey { .. })),
                    "byte {pos}: {err}"
                );
                assert!(err.to_string().contains("the blob was modified"), "{err}");
            } else {
                assert!(err.is_authentication_failure(), "byte {pos}: {err}");
                assert!(err.to_string().starts_with("authentication failed: blob"), "{err}");
            }
        }
    }
    // Truncation and extension are refused too.
    fs::write(&path, &original[..original.len() - 1]).unwrap();
    assert!(v.open_for_start("web", &names(&["tok"])).unwrap_err().is_authentication_failure());
    let mut longer = original.clone();
    longer.push(0);
    fs::write(&path, &longer).unwrap();
    assert!(v.open_for_start("web", &names(&["tok"])).unwrap_err().is_authentication_failure());
    fs::write(&path, &original).unwrap();
    assert_eq!(&v.open_for_start("web", &names(&["tok"])).unwrap()[0].1[..], b"s3cr3t");
}

#[test]
fn blob_copied_to_another_isc_or_name_is_refused() {
    let t = TestDir::new("replay");
    let mut v = Vault::open(&t.root(), KeySource::File).unwrap();
    v.set("web", "db", value(b"web-db-password")).unwrap();
    v.set("cache", "other", value(b"x")).unwrap();
    let blob = fs::read(v.secret_path("web", "db")).unwrap();
    for (isc, name) in [("cache", "db"), ("web", "db2"), ("cache", "other")] {
        fs::write(v.secret_path(isc, name), &blob).unwrap();
        let err = v.open_for_start(isc, &names(&[name])).unwrap_err();
        assert!(err.is_authentication_failure(), "{isc}/{name}: {err}");
        assert!(err.to_string().contains("belongs to another ISC/name"));
    }
}

#[test]
fn missing_key_file_is_a_clear_wrong_key_error() {
    let t = TestDir::new("nokey");
    let mut v = Vault::open(&t.root(), KeySource::File).unwrap();
    v.set("web", "db", value(b"x")).unwrap();
    let id = v.active_key_id().unwrap().unwrap();
    drop(v);
    fs::remove_file(t.root().join(format!("keys/master-{id}.key"))).unwrap();
    let mut v = Vault::open(&t.root(), KeySource::File).unwrap();
    let err = v.open_for_start("web", &names(&["db"])).unwrap_err();
    assert!(
        matches!(
            &err,
            VaultError::Secret(SecretError::WrongKey {
                source: KeyError::KeyNotPresent { .. },
                ..
            })
        ),
        "{err}"
    );
    assert!(err.to_string().contains(&id.to_string()));
}

#[test]
fn insecure_key_file_is_refused() {
    let t = TestDir::new("keymode");
    let mut v = Vault::open(&t.root(), KeySource::File).unwrap();
    v.set("web", "db", value(b"x")).unwrap();
    let id = v.active_key_id().unwrap().unwrap();
    drop(v);
    let key = t.root().join(format!("keys/master-{id}.key"));
    fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
    let mut v = Vault::open(&t.root(), KeySource::File).unwrap();
    let err = v.open_for_start("web", &names(&["db"])).unwrap_err();
    assert!(err.to_string().contains("must be 0600"), "{err}");
}

#[test]
fn passphrase_vault_derives_keys_and_rejects_a_wrong_passphrase() {
    let t = TestDir::new("pass");
    let params = KdfParams { m_cost_kib: 1024, t_cost: 1, p_cost: 1 };
    let src =
        |p: &str| KeySource::Passphrase { passphrase: SecretString::from(p.to_string()), params };
    let mut v = Vault::open(&t.root(), src("correct horse")).unwrap();
    v.set("web", "db", value(CANARY)).unwrap();
    drop(v);
    let kdf: Vec<_> = fs::read_dir(t.root().join("keys"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".kdf"))
        .collect();
    assert_eq!(kdf.len(), 1);
    assert!(!t
        .root()
        .join("keys")
        .read_dir()
        .unwrap()
        .flatten()
        .any(|e| e.file_name().to_string_lossy().starts_with("master-")));

    let mut v = Vault::open(&t.root(), src("correct horse")).unwrap();
    assert_eq!(&v.open_for_start("web", &names(&["db"])).unwrap()[0].1[..], CANARY);
    let report = v.rotate_key().unwrap();
    assert_ne!(report.old, report.new);
    assert_eq!(&v.open_for_start("web", &names(&["db"])).unwrap()[0].1[..], CANARY);

    let mut v = Vault::open(&t.root(), src("wrong")).unwrap();
    let err = v.open_for_start("web", &names(&["db"])).unwrap_err();
    assert!(err.to_string().contains("wrong passphrase"), "{err}");

    let err = Vault::open(&t.root(), KeySource::File).err().unwrap();
    assert!(matches!(err, VaultError::Key(KeyError::ModeMismatch { .. })), "{err}");
}

#[test]
fn invalid_names_are_refused() {
    let t = TestDir::new("names");
    let mut v = Vault::open(&t.root(), KeySource::File).unwrap();
    for (isc, name) in
        [("web", "../x"), ("../web", "x"), ("web", ""), ("web", ".hidden"), ("a/b", "x")]
    {
        let err = v.set(isc, name, value(b"x")).unwrap_err();
        assert!(matches!(err, VaultError::Secret(SecretError::InvalidName { .. })), "{err}");
    }
}
