//! Secret delivery on a tmpfs: ownership, modes, mount options, read-only, clean unmount.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

use common::{mountinfo, TestDir};
use isc_vault::{unmount_secret_tmpfs, write_secret_tmpfs, TmpfsError, VaultError, Zeroizing};

const UID: u32 = 231_072;
const GID: u32 = 231_073;

fn secrets() -> Vec<(String, Zeroizing<Vec<u8>>)> {
    vec![
        ("db_password".into(), Zeroizing::new(b"hunter2".to_vec())),
        ("tls.key".into(), Zeroizing::new(vec![0xAB; 5000])),
    ]
}

#[test]
fn files_0400_dir_0500_owned_by_host_uid_and_mount_is_ro_nosuid_nodev_noexec() {
    let t = TestDir::new("tmpfs");
    let dir = t.path.join("secrets");
    write_secret_tmpfs(&dir, &secrets(), UID, GID, 64 * 1024).unwrap();

    let entry = mountinfo().into_iter().rfind(|m| m.mount_point == dir).expect("tmpfs mounted");
    assert_eq!(entry.fs_type, "tmpfs");
    for opt in ["ro", "nosuid", "nodev", "noexec"] {
        assert!(entry.mount_options.iter().any(|o| o == opt), "{opt} missing: {entry:?}");
    }
    assert!(entry.super_options.iter().any(|o| o == "ro"), "{entry:?}");
    assert!(entry.super_options.iter().any(|o| o == "size=64k"), "{entry:?}");
    // Linux 6.4+ tmpfs shows noswap; this CI kernel is 6.18.
    assert!(entry.super_options.iter().any(|o| o == "noswap"), "{entry:?}");

    let dmeta = fs::metadata(&dir).unwrap();
    assert_eq!(dmeta.permissions().mode() & 0o7777, 0o500);
    assert_eq!((dmeta.uid(), dmeta.gid()), (UID, GID));
    let mut names: Vec<String> = fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["db_password", "tls.key"]);
    for (name, value) in secrets() {
        let p = dir.join(&name);
        let m = fs::metadata(&p).unwrap();
        assert_eq!(m.permissions().mode() & 0o7777, 0o400, "{name}");
        assert_eq!((m.uid(), m.gid()), (UID, GID), "{name}");
        assert_eq!(fs::read(&p).unwrap(), *value);
    }
    // Even root cannot write: the superblock and the mount are read-only.
    let err = fs::OpenOptions::new().write(true).open(dir.join("db_password")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
    assert_eq!(fs::write(dir.join("new"), b"x").unwrap_err().raw_os_error(), Some(libc::EROFS));

    unmount_secret_tmpfs(&dir).unwrap();
    assert!(fs::read_dir(&dir).unwrap().next().is_none(), "files gone with the tmpfs");
    unmount_secret_tmpfs(&dir).unwrap();
    t.assert_no_leaks();
}

#[test]
fn too_small_limit_and_bad_names_mount_nothing() {
    let t = TestDir::new("tmpfs-fail");
    let dir = t.path.join("secrets");
    let err = write_secret_tmpfs(&dir, &secrets(), UID, GID, 4096).unwrap_err();
    assert!(matches!(err, VaultError::Tmpfs(TmpfsError::TooLarge { .. })), "{err}");
    let bad = vec![("../escape".to_string(), Zeroizing::new(b"x".to_vec()))];
    assert!(write_secret_tmpfs(&dir, &bad, UID, GID, 65536).is_err());
    t.assert_no_leaks();
}

#[test]
fn failure_after_mount_unmounts() {
    let t = TestDir::new("tmpfs-dup");
    let dir = t.path.join("secrets");
    // Two secrets with the same name: the second create fails after the tmpfs is mounted.
    let dup = vec![
        ("a".to_string(), Zeroizing::new(b"1".to_vec())),
        ("a".to_string(), Zeroizing::new(b"2".to_vec())),
    ];
    let err = write_secret_tmpfs(&dir, &dup, UID, GID, 65536).unwrap_err();
    assert!(matches!(err, VaultError::Tmpfs(TmpfsError::WriteFile { .. })), "{err}");
    t.assert_no_leaks();
}
