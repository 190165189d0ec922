//! Key rotation interrupted after every durable step: each secret (and the volume key) stays
//! readable with a key present on disk, and reopening the vault finishes or rolls back cleanly.

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;

use common::{files_under, TestDir};
use isc_vault::keys::{KeyId, MasterKey};
use isc_vault::{envelope, KeySource, RotateError, Vault, VaultError, Zeroizing};

const SIZE: u64 = 16 << 20;
const SECRETS: [(&str, &str, &[u8]); 3] = [
    ("web", "db_password", b"pw-1"),
    ("web", "api_token", b"tok-2"),
    ("cache", "db_password", b"pw-3"),
];
const CANARY: &[u8] = b"volume canary survives rotation";

fn make_template(t: &TestDir) {
    let mut v = Vault::open(&t.root(), KeySource::File).unwrap();
    for (isc, name, val) in SECRETS {
        v.set(isc, name, Zeroizing::new(val.to_vec())).unwrap();
    }
    let vol = v.open_volume(&t.run(), "web", "data", SIZE, true).unwrap();
    fs::write(vol.data_dir.join("canary"), CANARY).unwrap();
    vol.close().unwrap();
}

fn key_ids(root: &Path) -> Vec<KeyId> {
    let mut ids: Vec<KeyId> = fs::read_dir(root.join("keys"))
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            KeyId::parse(n.strip_prefix("master-")?.strip_suffix(".key")?)
        })
        .collect();
    ids.sort();
    ids
}

/// Independent oracle: decrypt one blob with the key file its header names, without the Vault.
fn readable_with_present_key(root: &Path, blob: &Path, ad: &[u8]) -> Zeroizing<Vec<u8>> {
    let bytes = fs::read(blob).unwrap();
    let env = envelope::parse(&bytes).unwrap();
    let key_file = root.join(format!("keys/master-{}.key", env.key_id));
    let raw: [u8; 32] = fs::read(&key_file)
        .unwrap_or_else(|e| panic!("{} names absent key {}: {e}", blob.display(), env.key_id))
        .try_into()
        .unwrap();
    let key = MasterKey::from_bytes(Zeroizing::new(raw));
    envelope::open(&key, ad, &env).unwrap_or_else(|e| panic!("{}: {e}", blob.display()))
}

fn check_every_blob_readable(root: &Path) {
    for (isc, name, val) in SECRETS {
        let blob = root.join(format!("secrets/{isc}/{name}.sealed"));
        let got = readable_with_present_key(root, &blob, &envelope::secret_ad(isc, name));
        assert_eq!(&got[..], val);
    }
    let vk = root.join("volumes/web/data.key.sealed");
    let got = readable_with_present_key(root, &vk, &envelope::volume_key_ad("web", "data"));
    assert_eq!(got.len(), 64);
}

#[test]
fn rotation_interrupted_at_every_step_loses_nothing() {
    let template = TestDir::new("rot-template");
    make_template(&template);
    let original = key_ids(&template.root());
    assert_eq!(original.len(), 1);

    let mut k = 1;
    loop {
        let t = TestDir::new("rot-step");
        let ok = Command::new("cp")
            .args(["-a", "--sparse=always"])
            .arg(template.root())
            .arg(t.root())
            .status()
            .unwrap();
        assert!(ok.success());
        let mut v = Vault::open(&t.root(), KeySource::File).unwrap();
        match v.rotate_key_interrupted_after(k) {
            Ok(report) => {
                // Ran to the end without reaching step k: every step has been covered.
                assert_eq!(report.resealed, 4);
                assert!(k > 4 + 2 * 4 + 4, "only {k} steps");
                break;
            }
            Err(VaultError::Rotate(RotateError::Interrupted { step, .. })) => assert_eq!(step, k),
            Err(e) => panic!("step {k}: {e}"),
        }
        drop(v);

        // "Crash" state: every blob opens with a key that is on disk.
        check_every_blob_readable(&t.root());

        // Recovery on open finishes (new key on disk) or rolls back (it never got there).
        let mut v = Vault::open(&t.root(), KeySource::File).unwrap();
        let ids = key_ids(&t.root());
        assert_eq!(ids.len(), 1, "step {k}: keys left {ids:?}");
        assert_eq!(v.active_key_id().unwrap(), Some(ids[0]));
        if k >= 4 {
            assert_ne!(ids, original, "step {k}: new key written, rotation must finish");
        } else {
            assert_eq!(ids, original, "step {k}: rotation must roll back");
        }
        assert!(!t.root().join("keys/rotation.journal").exists());
        assert!(files_under(&t.root()).iter().all(|f| !f.to_string_lossy().ends_with(".isc-tmp")));
        check_every_blob_readable(&t.root());
        for (isc, name, val) in SECRETS {
            let got = v.open_for_start(isc, &[name.to_string()]).unwrap();
            assert_eq!(&got[0].1[..], val);
            let info = v.list(isc).unwrap();
            assert!(info.iter().all(|i| i.key_id == Some(ids[0])), "step {k}");
        }
        let vol = v.open_volume(&t.run(), "web", "data", SIZE, true).unwrap();
        assert_eq!(fs::read(vol.data_dir.join("canary")).unwrap(), CANARY);
        vol.close().unwrap();
        // The vault still rotates normally afterwards.
        let report = v.rotate_key().unwrap();
        assert_eq!(report.resealed, 4);
        assert!(report.unreadable.is_empty());
        assert_eq!(key_ids(&t.root()), vec![report.new]);
        t.assert_no_leaks();
        k += 1;
    }
    template.assert_no_leaks();
}

#[test]
fn unreadable_blob_keeps_the_old_key() {
    let t = TestDir::new("rot-tampered");
    let mut v = Vault::open(&t.root(), KeySource::File).unwrap();
    v.set("web", "good", Zeroizing::new(b"g".to_vec())).unwrap();
    v.set("web", "bad", Zeroizing::new(b"b".to_vec())).unwrap();
    let bad = v.secret_path("web", "bad");
    let mut bytes = fs::read(&bad).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    fs::write(&bad, &bytes).unwrap();
    let report = v.rotate_key().unwrap();
    assert_eq!(report.resealed, 1);
    assert_eq!(report.unreadable, vec![bad]);
    let ids = key_ids(&t.root());
    assert_eq!(ids.len(), 2, "old key kept while a blob still names it");
    assert_eq!(v.active_key_id().unwrap(), Some(report.new));
    let got = v.open_for_start("web", &["good".to_string()]).unwrap();
    assert_eq!(&got[0].1[..], b"g");
}

#[test]
fn passphrase_rotation_interrupted_at_every_step_recovers_only_with_the_passphrase() {
    use isc_vault::KdfParams;
    use secrecy::SecretString;
    let src = |p: &str| KeySource::Passphrase {
        passphrase: SecretString::from(p.to_string()),
        params: KdfParams { m_cost_kib: 256, t_cost: 1, p_cost: 1 },
    };
    let kdf_files = |root: &Path| {
        fs::read_dir(root.join("keys"))
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".kdf"))
            .count()
    };
    let mut k = 1;
    loop {
        let t = TestDir::new("rot-pass");
        let mut v = Vault::open(&t.root(), src("pass")).unwrap();
        v.set("web", "a", Zeroizing::new(b"A".to_vec())).unwrap();
        v.set("web", "b", Zeroizing::new(b"B".to_vec())).unwrap();
        match v.rotate_key_interrupted_after(k) {
            Ok(_) => {
                assert!(k > 4 + 2 * 2 + 4, "only {k} steps");
                break;
            }
            Err(VaultError::Rotate(RotateError::Interrupted { .. })) => {}
            Err(e) => panic!("step {k}: {e}"),
        }
        drop(v);
        let journal = t.root().join("keys/rotation.journal");
        if k >= 4 && journal.exists() {
            // Finishing needs the new key, which only the right passphrase derives.
            assert!(Vault::open(&t.root(), src("wrong")).is_err(), "step {k}");
            assert!(journal.exists(), "step {k}: a wrong passphrase must not touch the journal");
        }
        let mut v = Vault::open(&t.root(), src("pass")).unwrap();
        assert_eq!(kdf_files(&t.root()), 1, "step {k}");
        assert!(!journal.exists());
        let got = v.open_for_start("web", &["a".to_string(), "b".to_string()]).unwrap();
        assert_eq!((&got[0].1[..], &got[1].1[..]), (&b"A"[..], &b"B"[..]));
        k += 1;
    }
}
