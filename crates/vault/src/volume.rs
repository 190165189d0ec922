//! Persistent volumes: one ext4 image per volume, loop-mounted on the host, with an fscrypt v2
//! policy on its `data/` directory when encrypted.
//!
//! Layout: `<root>/volumes/<isc>/<name>.img` (sparse image, 0600), `<name>.json` (size and
//! whether it is encrypted), `<name>.key.sealed` (the volume's random 64-byte fscrypt key, sealed
//! under the master key like a secret, so key rotation re-seals it and never has to re-encrypt
//! data; removing it crypto-shreds the volume). Mounted at `<run>/volumes/<isc>/<name>`.
//! The quota is the image size: ext4 is made with no reserved blocks, so the service gets it all.

use std::fs::{self, OpenOptions};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::fscrypt::{self, PolicyV2, KEY_IDENTIFIER_SIZE, RAW_KEY_LEN};
use crate::fsutil::{self, FsError};
use crate::loopdev::{self, LoopDevice};
use crate::secrets::{validate_name, Vault};
use crate::{envelope, VaultError};

/// Smallest volume accepted (ext4 with a journal needs a few MiB to be useful).
pub const MIN_VOLUME_SIZE: u64 = 8 << 20;

/// Errors of volume handling.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// The size is too small.
    #[error("volume {name} size {size} is below the {MIN_VOLUME_SIZE}-byte minimum")]
    TooSmall {
        /// The volume.
        name: String,
        /// The size asked for.
        size: u64,
    },
    /// The existing volume differs from what is asked.
    #[error("volume {name} of ISC {isc} exists with size {have_size} and encrypted = {have_encrypted}, but size {want_size} and encrypted = {want_encrypted} were asked; resizing or changing encryption is not supported: remove the volume (losing its data) or keep its settings")]
    Mismatch {
        /// The ISC.
        isc: String,
        /// The volume.
        name: String,
        /// Size on disk.
        have_size: u64,
        /// Encryption on disk.
        have_encrypted: bool,
        /// Size asked.
        want_size: u64,
        /// Encryption asked.
        want_encrypted: bool,
    },
    /// The image exists without metadata (an interrupted creation or a hand-made file).
    #[error("{image} exists but {meta} does not; remove the volume with `isc volume rm` (or move the image away) and start again")]
    Orphan {
        /// The image.
        image: PathBuf,
        /// The missing metadata file.
        meta: PathBuf,
    },
    /// Metadata is unreadable.
    #[error("volume metadata {path} is corrupt: {reason}")]
    CorruptMeta {
        /// The metadata file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The volume does not exist.
    #[error("volume {name} of ISC {isc} does not exist")]
    NotFound {
        /// The ISC.
        isc: String,
        /// The volume.
        name: String,
    },
    /// Creating the image failed.
    #[error("cannot create volume image {image}: {reason}")]
    Create {
        /// The image.
        image: PathBuf,
        /// What failed (mkfs.ext4 output included).
        reason: String,
    },
    /// The volume is mounted (or its loop device still attached).
    #[error("volume {name} of ISC {isc} is in use (mounted at {mount_dir} or attached to a loop device); stop the ISC first")]
    InUse {
        /// The ISC.
        isc: String,
        /// The volume.
        name: String,
        /// Where it would be mounted.
        mount_dir: PathBuf,
    },
    /// mount(2) of the image failed.
    #[error("cannot mount volume image {image} ({device}) at {mount_dir}: {source}; the image may be corrupt: check it with `e2fsck -f {image}` or remove the volume")]
    Mount {
        /// The image.
        image: PathBuf,
        /// The loop device.
        device: PathBuf,
        /// The mount point.
        mount_dir: PathBuf,
        /// The errno.
        source: Errno,
    },
    /// umount(2) failed.
    #[error("cannot unmount volume at {mount_dir}: {source}")]
    Unmount {
        /// The mount point.
        mount_dir: PathBuf,
        /// The errno.
        source: Errno,
    },
    /// The sealed volume key has the wrong length.
    #[error("volume key {path} holds {len} bytes, expected {RAW_KEY_LEN}")]
    BadKey {
        /// The sealed key.
        path: PathBuf,
        /// Its plaintext length.
        len: usize,
    },
    /// A kept volume ([`MountedVolume::into_kept`]) cannot be adopted as given.
    #[error("cannot adopt the kept volume mounted at {mount_dir}: {reason}")]
    Adopt {
        /// The mount point.
        mount_dir: PathBuf,
        /// What does not fit.
        reason: String,
    },
    /// The data directory's policy does not match the key or the volume's settings.
    #[error("{data_dir}: {reason}")]
    PolicyMismatch {
        /// The data directory.
        data_dir: PathBuf,
        /// What differs.
        reason: String,
    },
    /// Creating the data directory or changing its owner failed.
    #[error("cannot prepare {path}: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

#[derive(Serialize, Deserialize)]
struct VolumeMeta {
    version: u32,
    size: u64,
    encrypted: bool,
}

/// What `list_volumes` / `inspect_volume` report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeInfo {
    /// The ISC.
    pub isc: String,
    /// The volume.
    pub name: String,
    /// The image file.
    pub image: PathBuf,
    /// Image size in bytes (the quota).
    pub size: u64,
    /// Bytes the sparse image occupies on the host.
    pub allocated: u64,
    /// Whether `data/` carries an fscrypt policy.
    pub encrypted: bool,
    /// Where it is mounted now, if it is.
    pub mounted_at: Option<PathBuf>,
}

struct Paths {
    image: PathBuf,
    meta: PathBuf,
    key: PathBuf,
    mount_dir: PathBuf,
}

fn paths(root: &Path, run_dir: &Path, isc: &str, name: &str) -> Paths {
    let dir = root.join("volumes").join(isc);
    Paths {
        image: dir.join(format!("{name}.img")),
        meta: dir.join(format!("{name}.json")),
        key: dir.join(format!("{name}.key.sealed")),
        mount_dir: run_dir.join("volumes").join(isc).join(name),
    }
}

/// Decodes the octal escapes (`\040` etc.) that /proc/self/mountinfo uses in paths.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 4 <= b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = b[i + 1..i + 4].iter().fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0'));
            out.push(v as u8);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether `path` is a mount point in this mount namespace (per /proc/self/mountinfo).
pub fn is_mount_point(path: &Path) -> bool {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = path.to_string_lossy();
    info.lines().filter_map(|l| l.split(' ').nth(4)).any(|mp| unescape_mountinfo(mp) == want)
}

fn mkfs_ext4(image: &Path) -> Result<(), String> {
    let out = Command::new("/sbin/mkfs.ext4")
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .args(["-q", "-F", "-O", "encrypt", "-m", "0", "-E", "root_owner=0:0"])
        .arg(image)
        .output()
        .map_err(|e| format!("cannot run /sbin/mkfs.ext4 (install e2fsprogs): {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "mkfs.ext4 exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A volume mounted on the host. [`MountedVolume::close`] removes its key, unmounts it and
/// detaches its loop device; dropping it without `close` does the same, best effort.
#[derive(Debug)]
pub struct MountedVolume {
    /// The directory to bind into the ISC (`<mount>/data`), encrypted when the volume is.
    pub data_dir: PathBuf,
    /// Where the ext4 filesystem is mounted.
    pub mount_dir: PathBuf,
    /// The backing image.
    pub image: PathBuf,
    /// Whether `data_dir` carries an fscrypt policy.
    pub encrypted: bool,
    key_identifier: Option<[u8; KEY_IDENTIFIER_SIZE]>,
    loop_device: Option<LoopDevice>,
    mounted: bool,
}

/// A mounted volume as what names it, for a holder about to exec itself
/// ([`MountedVolume::into_kept`]): its mount, its fscrypt key (in the filesystem's keyring)
/// and its loop device live in the kernel; the loop device's descriptor is handed over beside
/// it. Serialise it, and [`MountedVolume::adopt`] it in the new image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeptVolume {
    /// The directory bound into the ISC.
    pub data_dir: PathBuf,
    /// Where the ext4 filesystem is mounted.
    pub mount_dir: PathBuf,
    /// The backing image.
    pub image: PathBuf,
    /// Whether `data_dir` carries an fscrypt policy.
    pub encrypted: bool,
    /// The fscrypt key identifier added for the volume, in hex (encrypted volumes).
    pub key_identifier: Option<String>,
    /// The number `N` of the backing `/dev/loopN`, whose descriptor is kept beside this.
    pub loop_device: Option<u32>,
    /// Whether the filesystem is mounted (and must be unmounted at the end).
    pub mounted: bool,
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn from_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != 2 * N || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

impl MountedVolume {
    /// The loop device backing the mount, e.g. `/dev/loop3`.
    pub fn device(&self) -> Option<&Path> {
        self.loop_device.as_ref().map(|l| l.path.as_path())
    }

    /// The fscrypt key identifier added for this volume (encrypted volumes only).
    pub fn key_identifier(&self) -> Option<[u8; KEY_IDENTIFIER_SIZE]> {
        self.key_identifier
    }

    /// The fscrypt policy of `data_dir`, read back from the kernel.
    pub fn policy(&self) -> Result<Option<PolicyV2>, VaultError> {
        let dir = fscrypt::open_dir(&self.data_dir)?;
        Ok(fscrypt::get_policy(dir.as_fd(), &self.data_dir)?)
    }

    /// Gives `data_dir` to the service's HOST uid/gid (mode 0700).
    pub fn set_owner(&self, uid: u32, gid: u32) -> Result<(), VaultError> {
        let err = |source| VolumeError::DataDir { path: self.data_dir.clone(), source };
        std::os::unix::fs::chown(&self.data_dir, Some(uid), Some(gid)).map_err(err)?;
        Ok(())
    }

    /// The volume as what names it and the loop device's descriptor (to keep across an exec):
    /// nothing is torn down, now or when the results are dropped, except that dropping the
    /// descriptor lets go of our reference to the device (the mount still holds it).
    pub fn into_kept(mut self) -> (KeptVolume, Option<OwnedFd>) {
        // Disarmed: `Drop` finds no key, no mount and no device to tear down.
        let key_identifier = self.key_identifier.take().map(|id| to_hex(&id));
        let mounted = std::mem::take(&mut self.mounted);
        let (loop_device, fd) = match self.loop_device.take().map(LoopDevice::into_kept) {
            Some((n, fd)) => (Some(n), Some(fd)),
            None => (None, None),
        };
        let kept = KeptVolume {
            data_dir: self.data_dir.clone(),
            mount_dir: self.mount_dir.clone(),
            image: self.image.clone(),
            encrypted: self.encrypted,
            key_identifier,
            loop_device,
            mounted,
        };
        (kept, fd)
    }

    /// The volume a previous image of this process held ([`MountedVolume::into_kept`]), with
    /// the loop device's descriptor it kept: [`MountedVolume::close`] (or dropping it) tears it
    /// down as it would have the volume [`Vault::open_volume`] returned. Refused (the
    /// descriptor closed again) when the descriptor is missing or not the device backed by the
    /// volume's image, or the key identifier is malformed.
    pub fn adopt(kept: KeptVolume, loop_fd: Option<OwnedFd>) -> Result<MountedVolume, VaultError> {
        let bad = |reason: String| VolumeError::Adopt { mount_dir: kept.mount_dir.clone(), reason };
        let key_identifier = match &kept.key_identifier {
            Some(hex) => Some(
                from_hex::<KEY_IDENTIFIER_SIZE>(hex)
                    .ok_or_else(|| bad(format!("malformed key identifier {hex:?}")))?,
            ),
            None => None,
        };
        let loop_device = match (kept.loop_device, loop_fd) {
            (Some(n), Some(fd)) => {
                if !loopdev::devices_backed_by(&kept.image).contains(&n) {
                    return Err(bad(format!(
                        "/dev/loop{n} is not backed by {}",
                        kept.image.display()
                    ))
                    .into());
                }
                Some(LoopDevice::adopt(n, fd))
            }
            (None, None) => None,
            (Some(n), None) => {
                return Err(bad(format!("no descriptor of /dev/loop{n} was kept")).into())
            }
            (None, Some(_)) => return Err(bad("a descriptor but no loop device".into()).into()),
        };
        Ok(MountedVolume {
            data_dir: kept.data_dir,
            mount_dir: kept.mount_dir,
            image: kept.image,
            encrypted: kept.encrypted,
            key_identifier,
            loop_device,
            mounted: kept.mounted,
        })
    }

    /// Removes the key (files become ciphertext), unmounts, detaches the loop device and removes
    /// the empty mount point.
    pub fn close(mut self) -> Result<(), VaultError> {
        self.teardown()
    }

    fn teardown(&mut self) -> Result<(), VaultError> {
        let mut first_err: Option<VaultError> = None;
        // FILES_BUSY is the normal answer here: the ISC's bind mount of `data_dir` is released
        // lazily, after an RCU grace period, so the directory is still pinned for a few tens of
        // ms after PID 1 is gone (dmesg: "1 inode(s) still busy ... including ino 12"). The
        // master secret is wiped regardless; what is still unlocked then are the in-use inodes,
        // and they go with the filesystem. So this is reported only if the filesystem does not
        // go (the loop device's release below waits for its last mount).
        let mut busy = 0u32;
        if let Some(id) = self.key_identifier.take() {
            let res = fscrypt::open_dir(&self.mount_dir)
                .and_then(|d| fscrypt::remove_key(d.as_fd(), &self.mount_dir, &id));
            match res {
                Ok(flags) => busy = flags,
                Err(e) => first_err = Some(e.into()),
            }
        }
        if self.mounted {
            let res = match umount2(&self.mount_dir, MntFlags::empty()) {
                Err(Errno::EBUSY) => umount2(&self.mount_dir, MntFlags::MNT_DETACH),
                r => r,
            };
            match res {
                Ok(()) => self.mounted = false,
                Err(source) => {
                    let e = VolumeError::Unmount { mount_dir: self.mount_dir.clone(), source };
                    first_err.get_or_insert(e.into());
                }
            }
        }
        let mut gone = false;
        if !self.mounted {
            if let Some(dev) = self.loop_device.take() {
                match dev.release_and_wait() {
                    Ok(()) => gone = true,
                    Err(e) => {
                        first_err.get_or_insert(e.into());
                    }
                }
            }
            let _ = fs::remove_dir(&self.mount_dir);
        }
        if busy != 0 && !gone {
            tracing::warn!(mount = %self.mount_dir.display(), flags = busy, "fscrypt key removed (its secret wiped) but files still in use keep their per-file keys until they are closed");
        } else if busy != 0 {
            tracing::debug!(mount = %self.mount_dir.display(), "inodes in use at the key's removal went with the filesystem");
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

impl Drop for MountedVolume {
    fn drop(&mut self) {
        if self.key_identifier.is_some() || self.mounted || self.loop_device.is_some() {
            if let Err(e) = self.teardown() {
                tracing::error!(mount = %self.mount_dir.display(), error = %e, "volume cleanup failed");
            }
        }
    }
}

/// Closes a volume left mounted by a monitor that died (e.g. SIGKILL, so no `close()` ran):
/// removes its fscrypt key (the identifier is read back from the data directory's policy),
/// unmounts it (the loop device was attached with autoclear, so it detaches with the last
/// unmount) and removes the mount point. Returns `false` when nothing was mounted there.
/// The caller must own the ISC's name (no live monitor may be using the volume).
pub fn recover_stale_volume(mount_dir: &Path) -> Result<bool, VaultError> {
    if !is_mount_point(mount_dir) {
        return Ok(false);
    }
    let data = mount_dir.join("data");
    if let Ok(dir) = fscrypt::open_dir(&data) {
        if let Ok(Some(policy)) = fscrypt::get_policy(dir.as_fd(), &data) {
            let root = fscrypt::open_dir(mount_dir)?;
            fscrypt::remove_key(root.as_fd(), mount_dir, &policy.master_key_identifier)?;
        }
    }
    match umount2(mount_dir, MntFlags::empty()) {
        Err(Errno::EBUSY) => umount2(mount_dir, MntFlags::MNT_DETACH),
        r => r,
    }
    .map_err(|source| VolumeError::Unmount { mount_dir: mount_dir.into(), source })?;
    let _ = fs::remove_dir(mount_dir);
    tracing::info!(mount = %mount_dir.display(), "closed a volume left open by a dead monitor");
    Ok(true)
}

fn read_meta(path: &Path) -> Result<Option<VolumeMeta>, VaultError> {
    match fs::read(path) {
        Ok(b) => {
            let meta: VolumeMeta = serde_json::from_slice(&b).map_err(|e| {
                VolumeError::CorruptMeta { path: path.into(), reason: e.to_string() }
            })?;
            Ok(Some(meta))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(FsError::Read { path: path.into(), source }.into()),
    }
}

impl Vault {
    /// Creates the volume on first use, then attaches, mounts and (when encrypted) unlocks it.
    /// On any error nothing stays mounted, keyed or attached.
    pub fn open_volume(
        &mut self,
        run_dir: &Path,
        isc: &str,
        name: &str,
        size: u64,
        encrypted: bool,
    ) -> Result<MountedVolume, VaultError> {
        validate_name("ISC", isc)?;
        validate_name("volume", name)?;
        if size < MIN_VOLUME_SIZE {
            return Err(VolumeError::TooSmall { name: name.into(), size }.into());
        }
        let _guard = self.lock(true)?;
        let p = paths(&self.root, run_dir, isc, name);
        match read_meta(&p.meta)? {
            Some(meta) if meta.size != size || meta.encrypted != encrypted => {
                return Err(VolumeError::Mismatch {
                    isc: isc.into(),
                    name: name.into(),
                    have_size: meta.size,
                    have_encrypted: meta.encrypted,
                    want_size: size,
                    want_encrypted: encrypted,
                }
                .into())
            }
            Some(_) => {}
            None if p.image.exists() => {
                return Err(VolumeError::Orphan { image: p.image, meta: p.meta }.into())
            }
            None => self.create_volume(&p, isc, name, size, encrypted)?,
        }
        if is_mount_point(&p.mount_dir) || !loopdev::devices_backed_by(&p.image).is_empty() {
            return Err(VolumeError::InUse {
                isc: isc.into(),
                name: name.into(),
                mount_dir: p.mount_dir,
            }
            .into());
        }
        let raw_key = if encrypted {
            let key = self.open_blob(&p.key, &envelope::volume_key_ad(isc, name))?;
            if key.len() != RAW_KEY_LEN {
                return Err(VolumeError::BadKey { path: p.key.clone(), len: key.len() }.into());
            }
            let mut raw = Zeroizing::new([0u8; RAW_KEY_LEN]);
            raw.copy_from_slice(&key);
            Some(raw)
        } else {
            None
        };
        fsutil::ensure_dir(&p.mount_dir, 0o700)?;
        let device = LoopDevice::attach(&p.image, loopdev::Mode::ReadWrite)?;
        let mut vol = MountedVolume {
            data_dir: p.mount_dir.join("data"),
            mount_dir: p.mount_dir.clone(),
            image: p.image.clone(),
            encrypted,
            key_identifier: None,
            loop_device: Some(device),
            mounted: false,
        };
        let dev_path = vol.device().map(Path::to_path_buf).unwrap_or_default();
        mount(
            Some(&dev_path),
            &p.mount_dir,
            Some("ext4"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            None::<&str>,
        )
        .map_err(|source| VolumeError::Mount {
            image: p.image.clone(),
            device: dev_path.clone(),
            mount_dir: p.mount_dir.clone(),
            source,
        })?;
        vol.mounted = true;
        let root_dir = fscrypt::open_dir(&p.mount_dir)?;
        if let Some(raw) = &raw_key {
            vol.key_identifier = Some(fscrypt::add_key(root_dir.as_fd(), &p.mount_dir, raw)?);
        }
        prepare_data_dir(&vol)?;
        tracing::info!(isc, volume = name, encrypted, device = %dev_path.display(), "volume mounted");
        Ok(vol)
    }

    fn create_volume(
        &mut self,
        p: &Paths,
        isc: &str,
        name: &str,
        size: u64,
        encrypted: bool,
    ) -> Result<(), VaultError> {
        let dir = p.image.parent().unwrap_or(Path::new("/"));
        fsutil::ensure_dir(&self.root.join("volumes"), 0o700)?;
        fsutil::ensure_dir(dir, 0o700)?;
        let tmp = fsutil::tmp_path(&p.image);
        let cerr = |reason: String| VolumeError::Create { image: p.image.clone(), reason };
        let _ = fs::remove_file(&tmp);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)
            .map_err(|e| cerr(e.to_string()))?;
        let made = file
            .set_len(size)
            .map_err(|e| e.to_string())
            .and_then(|()| mkfs_ext4(&tmp))
            .and_then(|()| file.sync_all().map_err(|e| e.to_string()));
        if let Err(reason) = made {
            let _ = fs::remove_file(&tmp);
            return Err(cerr(reason).into());
        }
        if encrypted {
            let mut key = Zeroizing::new(vec![0u8; RAW_KEY_LEN]);
            getrandom::fill(&mut key).map_err(|e| cerr(format!("no random key: {e}")))?;
            self.seal_to(&p.key, &envelope::volume_key_ad(isc, name), &key)?;
        }
        fsutil::commit_tmp(&tmp, &p.image)?;
        let meta = VolumeMeta { version: 1, size, encrypted };
        let json = serde_json::to_vec_pretty(&meta).expect("VolumeMeta serializes");
        fsutil::write_atomic(&p.meta, &json, 0o600)?;
        tracing::info!(isc, volume = name, size, encrypted, "volume created");
        Ok(())
    }

    /// Reports one volume.
    pub fn inspect_volume(
        &self,
        run_dir: &Path,
        isc: &str,
        name: &str,
    ) -> Result<VolumeInfo, VaultError> {
        validate_name("ISC", isc)?;
        validate_name("volume", name)?;
        let p = paths(&self.root, run_dir, isc, name);
        let meta = read_meta(&p.meta)?
            .ok_or_else(|| VolumeError::NotFound { isc: isc.into(), name: name.into() })?;
        let allocated = fs::metadata(&p.image)
            .map(|m| m.blocks() * 512)
            .map_err(|source| FsError::Read { path: p.image.clone(), source })?;
        Ok(VolumeInfo {
            isc: isc.into(),
            name: name.into(),
            image: p.image,
            size: meta.size,
            allocated,
            encrypted: meta.encrypted,
            mounted_at: is_mount_point(&p.mount_dir).then_some(p.mount_dir),
        })
    }

    /// Lists volumes, of one ISC or of all, sorted by ISC then name.
    pub fn list_volumes(
        &self,
        run_dir: &Path,
        isc: Option<&str>,
    ) -> Result<Vec<VolumeInfo>, VaultError> {
        let base = self.root.join("volumes");
        let mut iscs = Vec::new();
        match isc {
            Some(i) => {
                validate_name("ISC", i)?;
                iscs.push(i.to_string());
            }
            None => {
                if let Ok(entries) = fs::read_dir(&base) {
                    iscs.extend(
                        entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()),
                    );
                }
            }
        }
        iscs.sort();
        let mut out = Vec::new();
        for i in iscs {
            let Ok(entries) = fs::read_dir(base.join(&i)) else {
                continue;
            };
            let mut names: Vec<String> = entries
                .flatten()
                .filter_map(|e| {
                    e.file_name().to_string_lossy().strip_suffix(".json").map(String::from)
                })
                .collect();
            names.sort();
            for n in names {
                out.push(self.inspect_volume(run_dir, &i, &n)?);
            }
        }
        Ok(out)
    }

    /// Deletes a volume's image, metadata and sealed key (its data is gone for good). Refused
    /// while the volume is mounted or attached.
    pub fn remove_volume(
        &mut self,
        run_dir: &Path,
        isc: &str,
        name: &str,
    ) -> Result<(), VaultError> {
        validate_name("ISC", isc)?;
        validate_name("volume", name)?;
        let _guard = self.lock(true)?;
        let p = paths(&self.root, run_dir, isc, name);
        if !p.meta.exists() && !p.image.exists() {
            return Err(VolumeError::NotFound { isc: isc.into(), name: name.into() }.into());
        }
        if is_mount_point(&p.mount_dir) || !loopdev::devices_backed_by(&p.image).is_empty() {
            return Err(VolumeError::InUse {
                isc: isc.into(),
                name: name.into(),
                mount_dir: p.mount_dir,
            }
            .into());
        }
        // The key first: without it the image is ciphertext, whatever happens next.
        fsutil::remove_durable(&p.key)?;
        fsutil::remove_durable(&p.meta)?;
        fsutil::remove_durable(&p.image)?;
        tracing::info!(isc, volume = name, "volume removed");
        Ok(())
    }
}

/// Creates `data/` (0700) and applies or checks its fscrypt policy.
fn prepare_data_dir(vol: &MountedVolume) -> Result<(), VaultError> {
    let derr = |source| VolumeError::DataDir { path: vol.data_dir.clone(), source };
    let fresh = match fs::create_dir(&vol.data_dir) {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => false,
        Err(e) => return Err(derr(e).into()),
    };
    fs::set_permissions(&vol.data_dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .map_err(derr)?;
    let dir = fscrypt::open_dir(&vol.data_dir)?;
    let have = fscrypt::get_policy(dir.as_fd(), &vol.data_dir)?;
    let mismatch =
        |reason: String| VolumeError::PolicyMismatch { data_dir: vol.data_dir.clone(), reason };
    match (vol.key_identifier, have) {
        (Some(id), None) if fresh => {
            fscrypt::set_policy(dir.as_fd(), &vol.data_dir, &PolicyV2::aes256(id))?;
            Ok(())
        }
        (Some(_), None) => Err(mismatch(
            "the volume is marked encrypted but its data directory has no fscrypt policy; it was tampered with"
                .into(),
        )
        .into()),
        (Some(id), Some(p)) if p == PolicyV2::aes256(id) => Ok(()),
        (Some(_), Some(_)) => Err(mismatch(
            "the fscrypt policy does not match this volume's key (the sealed key was replaced?)".into(),
        )
        .into()),
        (None, None) => Ok(()),
        (None, Some(_)) => Err(mismatch(
            "the volume is marked unencrypted but its data directory is encrypted".into(),
        )
        .into()),
    }
}
