//! fscrypt volumes on loop-mounted ext4 images, against the real kernel.

mod common;

use std::fs;
use std::os::fd::AsFd;

use common::{contains, TestDir};
use isc_vault::fscrypt::{self, KEY_STATUS_ABSENT, KEY_STATUS_PRESENT};
use isc_vault::loopdev::{self, LoopDevice};
use isc_vault::{KeySource, Vault, VaultError, VolumeError};

const SIZE: u64 = 16 << 20;
const CANARY_NAME: &str = "isc-canary-filename-q8w7e6";
const CANARY_DATA: &[u8] = b"isc-canary-plaintext-contents-z9x8c7v6";

fn write_canary(dir: &std::path::Path) {
    // Enough copies to fill several blocks, so a plaintext leak could not hide in a partial one.
    let body: Vec<u8> = CANARY_DATA.iter().copied().cycle().take(64 * 1024).collect();
    fs::write(dir.join(CANARY_NAME), &body).unwrap();
    let f = fs::File::open(dir.join(CANARY_NAME)).unwrap();
    f.sync_all().unwrap();
}

#[test]
fn encrypted_volume_is_ciphertext_at_rest() {
    let t = TestDir::new("vol-enc");
    let mut v = Vault::open(&t.root(), KeySource::File).unwrap();
    let vol = v.open_volume(&t.run(), "web", "data", SIZE, true).unwrap();
    assert!(vol.data_dir.starts_with(t.run()));
    write_canary(&vol.data_dir);

    let policy = vol.policy().unwrap().expect("data dir has a policy");
    assert_eq!(policy.version, 2);
    assert_eq!(policy.contents_encryption_mode, fscrypt::MODE_AES_256_XTS);
    assert_eq!(policy.filenames_encryption_mode, fscrypt::MODE_AES_256_CTS);
    assert_eq!(policy.flags, fscrypt::FLAGS_PAD_32);
    let id = vol.key_identifier().unwrap();
    assert_eq!(policy.master_key_identifier, id);
    let root_dir = fscrypt::open_dir(&vol.mount_dir).unwrap();
    assert_eq!(
        fscrypt::key_status(root_dir.as_fd(), &vol.mount_dir, &id).unwrap(),
        KEY_STATUS_PRESENT
    );
    drop(root_dir);
    let image = vol.image.clone();
    vol.close().unwrap();
    t.assert_no_leaks();

    // The backing file holds neither the name nor the contents in clear.
    let bytes = fs::read(&image).unwrap();
    assert!(!contains(&bytes, CANARY_DATA), "canary contents found in the image");
    assert!(!contains(&bytes, CANARY_NAME.as_bytes()), "canary name found in the image");

    // Mounted raw, without the key: the policy is still there and names are encrypted.
    let dev = LoopDevice::attach(&image, isc_vault::loopdev::Mode::ReadWrite).unwrap();
    let raw = t.path.join("raw");
    fs::create_dir(&raw).unwrap();
    nix::mount::mount(
        Some(&dev.path),
        &raw,
        Some("ext4"),
        nix::mount::MsFlags::MS_RDONLY,
        None::<&str>,
    )
    .unwrap();
    let data = raw.join("data");
    let names: Vec<String> = fs::read_dir(&data)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 1);
    assert_ne!(names[0], CANARY_NAME);
    let d = fscrypt::open_dir(&data).unwrap();
    assert_eq!(fscrypt::get_policy(d.as_fd(), &data).unwrap().unwrap().master_key_identifier, id);
    assert_eq!(fscrypt::key_status(d.as_fd(), &data, &id).unwrap(), KEY_STATUS_ABSENT);
    assert!(fs::read(data.join(&names[0])).is_err(), "readable without the key");
    drop(d);
    nix::mount::umount2(&raw, nix::mount::MntFlags::empty()).unwrap();
    dev.release_and_wait().unwrap();

    // Re-opened with the key, the data is back.
    let vol = v.open_volume(&t.run(), "web", "data", SIZE, true).unwrap();
    let back = fs::read(vol.data_dir.join(CANARY_NAME)).unwrap();
    assert_eq!(&back[..CANARY_DATA.len()], CANARY_DATA);
    vol.close().unwrap();
    t.assert_no_leaks();
}

#[test]
fn unencrypted_volume_is_plaintext_which_proves_the_scan_works() {
    let t = TestDir::new("vol-plain");
    let mut v = Vault::open(&t.root(), KeySource::File).unwrap();
    let vol = v.open_volume(&t.run(), "web", "cache", SIZE, false).unwrap();
    assert_eq!(vol.policy().unwrap(), None);
    assert_eq!(vol.key_identifier(), None);
    write_canary(&vol.data_dir);
    let image = vol.image.clone();
    vol.close().unwrap();
    t.assert_no_leaks();
    let bytes = fs::read(&image).unwrap();
    assert!(contains(&bytes, CANARY_DATA));
    assert!(contains(&bytes, CANARY_NAME.as_bytes()));
    assert!(!t.root().join("volumes/web/cache.key.sealed").exists());
}

#[test]
fn list_inspect_remove_and_in_use_refusal() {
    let t = TestDir::new("vol-admin");
    let mut v = Vault::open(&t.root(), KeySource::File).unwrap();
    let vol = v.open_volume(&t.run(), "web", "data", SIZE, true).unwrap();
    let info = v.inspect_volume(&t.run(), "web", "data").unwrap();
    assert_eq!(info.size, SIZE);
    assert!(info.encrypted);
    assert_eq!(info.mounted_at.as_deref(), Some(vol.mount_dir.as_path()));
    assert!(info.allocated < SIZE, "image is sparse");
    let err = v.remove_volume(&t.run(), "web", "data").unwrap_err();
    assert!(matches!(err, VaultError::Volume(VolumeError::InUse { .. })), "{err}");
    let err = v.open_volume(&t.run(), "web", "data", SIZE, true).unwrap_err();
    assert!(matches!(err, VaultError::Volume(VolumeError::InUse { .. })), "{err}");
    let err = v.open_volume(&t.run(), "web", "data", SIZE * 2, true).unwrap_err();
    assert!(matches!(err, VaultError::Volume(VolumeError::Mismatch { .. })), "{err}");
    vol.close().unwrap();

    let all = v.list_volumes(&t.run(), None).unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].mounted_at, None);
    v.remove_volume(&t.run(), "web", "data").unwrap();
    assert!(v.list_volumes(&t.run(), Some("web")).unwrap().is_empty());
    assert!(!info.image.exists());
    t.assert_no_leaks();
}

#[test]
fn drop_without_close_cleans_up() {
    let t = TestDir::new("vol-drop");
    let mut v = Vault::open(&t.root(), KeySource::File).unwrap();
    let vol = v.open_volume(&t.run(), "web", "data", SIZE, true).unwrap();
    let image = vol.image.clone();
    drop(vol);
    t.assert_no_leaks();
    assert!(loopdev::devices_backed_by(&image).is_empty());
}

#[test]
fn a_kept_volume_stays_open_and_its_adopted_self_closes_it() {
    let t = TestDir::new("vol-kept");
    let mut v = Vault::open(&t.root(), KeySource::File).unwrap();
    let vol = v.open_volume(&t.run(), "web", "data", SIZE, true).unwrap();
    fs::write(vol.data_dir.join("f"), b"kept").unwrap();
    let (image, mount, dev) =
        (vol.image.clone(), vol.mount_dir.clone(), vol.device().unwrap().to_path_buf());
    let id = vol.key_identifier().unwrap();
    let (kept, fd) = vol.into_kept();
    // Disarmed: nothing was torn down, and the state round-trips through JSON.
    assert!(isc_vault::is_mount_point(&mount));
    assert_eq!(kept.loop_device.map(|n| format!("/dev/loop{n}")), Some(dev.display().to_string()));
    let kept: isc_vault::KeptVolume =
        serde_json::from_str(&serde_json::to_string(&kept).unwrap()).unwrap();
    let root_dir = fscrypt::open_dir(&mount).unwrap();
    assert_eq!(fscrypt::key_status(root_dir.as_fd(), &mount, &id).unwrap(), KEY_STATUS_PRESENT);
    drop(root_dir);
    // A missing descriptor is refused.
    let err = isc_vault::MountedVolume::adopt(kept.clone(), None).unwrap_err();
    assert!(matches!(err, VaultError::Volume(VolumeError::Adopt { .. })), "{err}");
    let vol = isc_vault::MountedVolume::adopt(kept, fd).unwrap();
    assert_eq!(vol.key_identifier(), Some(id));
    assert_eq!(vol.device(), Some(dev.as_path()));
    assert_eq!(fs::read(vol.data_dir.join("f")).unwrap(), b"kept");
    vol.close().unwrap();
    t.assert_no_leaks();
    assert!(loopdev::devices_backed_by(&image).is_empty());
    let vol = v.open_volume(&t.run(), "web", "data", SIZE, true).unwrap();
    assert_eq!(fs::read(vol.data_dir.join("f")).unwrap(), b"kept");
    vol.close().unwrap();
    t.assert_no_leaks();
}

#[test]
fn corrupt_image_fails_cleanly() {
    let t = TestDir::new("vol-corrupt");
    let mut v = Vault::open(&t.root(), KeySource::File).unwrap();
    let vol = v.open_volume(&t.run(), "web", "data", SIZE, true).unwrap();
    let image = vol.image.clone();
    vol.close().unwrap();
    // Destroy the primary superblock (offset 1024) and its magic.
    let mut bytes = fs::read(&image).unwrap();
    bytes[1024..2048].fill(0);
    fs::write(&image, &bytes).unwrap();
    let err = v.open_volume(&t.run(), "web", "data", SIZE, true).unwrap_err();
    assert!(matches!(err, VaultError::Volume(VolumeError::Mount { .. })), "{err}");
    assert!(err.to_string().contains("e2fsck"), "{err}");
    t.assert_no_leaks();
    assert!(loopdev::devices_backed_by(&image).is_empty());
}

#[test]
fn tampered_or_missing_volume_key_fails_cleanly() {
    let t = TestDir::new("vol-key");
    let mut v = Vault::open(&t.root(), KeySource::File).unwrap();
    v.open_volume(&t.run(), "web", "data", SIZE, true).unwrap().close().unwrap();
    let key = t.root().join("volumes/web/data.key.sealed");
    let original = fs::read(&key).unwrap();
    let mut bad = original.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    fs::write(&key, &bad).unwrap();
    let err = v.open_volume(&t.run(), "web", "data", SIZE, true).unwrap_err();
    assert!(err.is_authentication_failure(), "{err}");
    t.assert_no_leaks();

    // A key blob from another volume is refused (bound to ISC and volume name).
    v.open_volume(&t.run(), "web", "other", SIZE, true).unwrap().close().unwrap();
    fs::copy(t.root().join("volumes/web/other.key.sealed"), &key).unwrap();
    let err = v.open_volume(&t.run(), "web", "data", SIZE, true).unwrap_err();
    assert!(err.is_authentication_failure(), "{err}");
    t.assert_no_leaks();

    fs::remove_file(&key).unwrap();
    assert!(v.open_volume(&t.run(), "web", "data", SIZE, true).is_err());
    t.assert_no_leaks();
    fs::write(&key, &original).unwrap();
    v.open_volume(&t.run(), "web", "data", SIZE, true).unwrap().close().unwrap();
    t.assert_no_leaks();
}
