//! isc-loopdev: loop devices by hand, shared by the image store (read-only EROFS images) and the
//! vault (encrypted ext4 volumes).
//!
//! `LOOP_CTL_GET_FREE` on `/dev/loop-control`, then `LOOP_CONFIGURE` (Linux 5.8+: one atomic
//! ioctl instead of `LOOP_SET_FD` + `LOOP_SET_STATUS64`, so there is no window in which the
//! device is attached but not yet read-only) with `LO_FLAGS_AUTOCLEAR`, so the device detaches
//! itself when its last user (the mount, in whichever mount namespaces hold a copy) goes away
//! and a crashed `isc` leaks no device; see loop(4).

use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
const LOOP_CLR_FD: libc::c_ulong = 0x4C01;
const LO_FLAGS_READ_ONLY: u32 = 1;
const LO_FLAGS_AUTOCLEAR: u32 = 4;
const LO_FLAGS_DIRECT_IO: u32 = 16;
const LO_NAME_SIZE: usize = 64;

/// Errors of loop-device handling.
#[derive(Debug, thiserror::Error)]
pub enum LoopError {
    /// /dev/loop-control is unusable.
    #[error("cannot get a free loop device from /dev/loop-control: {source} (is the loop module loaded?)")]
    GetFree {
        /// The errno.
        source: std::io::Error,
    },
    /// Opening the backing file or the device failed.
    #[error("cannot open {path}: {source}")]
    Open {
        /// The file or device.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// LOOP_CONFIGURE kept failing.
    #[error("cannot attach {backing} to a loop device: {source}")]
    Configure {
        /// The backing file.
        backing: PathBuf,
        /// The last OS error.
        source: std::io::Error,
    },
    /// The device stayed attached after its users went away.
    #[error("loop device {device} is still attached to its backing file after {waited_ms} ms")]
    Detach {
        /// The loop device.
        device: PathBuf,
        /// How long we waited.
        waited_ms: u128,
    },
}

#[repr(C)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; LO_NAME_SIZE],
    lo_crypt_name: [u8; LO_NAME_SIZE],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

/// How a backing file is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Read-write (a volume's filesystem image).
    ReadWrite,
    /// Read-only with direct I/O: the backing file stays out of the page cache, so only the
    /// filesystem's pages are cached, not the same bytes twice (packed images).
    ReadOnlyDirect,
}

/// An attached loop device. Dropping the handle closes our reference; with autoclear the kernel
/// detaches the device once nothing (no mount, no open file) uses it any more.
#[derive(Debug)]
pub struct LoopDevice {
    /// e.g. `/dev/loop7`.
    pub path: PathBuf,
    /// The device number `N` of `/dev/loopN`.
    pub number: u32,
    file: File,
}

impl LoopDevice {
    /// Attaches `backing` to a free loop device, with autoclear.
    pub fn attach(backing: &Path, mode: Mode) -> Result<Self, LoopError> {
        let writable = mode == Mode::ReadWrite;
        let flags = match mode {
            Mode::ReadWrite => LO_FLAGS_AUTOCLEAR,
            Mode::ReadOnlyDirect => LO_FLAGS_READ_ONLY | LO_FLAGS_AUTOCLEAR | LO_FLAGS_DIRECT_IO,
        };
        let backing_file = OpenOptions::new()
            .read(true)
            .write(writable)
            .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
            .open(backing)
            .map_err(|source| LoopError::Open { path: backing.into(), source })?;
        let control = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open("/dev/loop-control")
            .map_err(|source| LoopError::Open { path: "/dev/loop-control".into(), source })?;
        let mut last = std::io::Error::from_raw_os_error(libc::EBUSY);
        // Another process can grab the device between GET_FREE and CONFIGURE (EBUSY): retry.
        for _ in 0..16 {
            // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a device number.
            let n = unsafe { libc::ioctl(control.as_raw_fd(), LOOP_CTL_GET_FREE as _) };
            if n < 0 {
                return Err(LoopError::GetFree { source: std::io::Error::last_os_error() });
            }
            let path = PathBuf::from(format!("/dev/loop{n}"));
            let file = OpenOptions::new()
                .read(true)
                .write(writable)
                .custom_flags(libc::O_CLOEXEC)
                .open(&path)
                .map_err(|source| LoopError::Open { path: path.clone(), source })?;
            let mut name = [0u8; LO_NAME_SIZE];
            let shown = backing.as_os_str().as_encoded_bytes();
            let len = shown.len().min(LO_NAME_SIZE - 1);
            name[..len].copy_from_slice(&shown[..len]);
            let config = LoopConfig {
                fd: backing_file.as_raw_fd() as u32,
                block_size: 0,
                info: LoopInfo64 {
                    lo_device: 0,
                    lo_inode: 0,
                    lo_rdevice: 0,
                    lo_offset: 0,
                    lo_sizelimit: 0,
                    lo_number: 0,
                    lo_encrypt_type: 0,
                    lo_encrypt_key_size: 0,
                    lo_flags: flags,
                    lo_file_name: name,
                    lo_crypt_name: [0; LO_NAME_SIZE],
                    lo_encrypt_key: [0; 32],
                    lo_init: [0; 2],
                },
                reserved: [0; 8],
            };
            // SAFETY: LOOP_CONFIGURE reads a `struct loop_config`, whose layout `LoopConfig`
            // reproduces (checked by the size test below); `config` outlives the call.
            let rc = unsafe { libc::ioctl(file.as_raw_fd(), LOOP_CONFIGURE as _, &config) };
            if rc == 0 {
                return Ok(LoopDevice { path, number: n as u32, file });
            }
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EBUSY) {
                return Err(LoopError::Configure { backing: backing.into(), source: e });
            }
            last = e;
        }
        Err(LoopError::Configure { backing: backing.into(), source: last })
    }

    /// The device as what names it (its number) and our open reference to it, for a holder
    /// about to exec itself: nothing is released, now or when the result is dropped (the
    /// descriptor keeps the device; with autoclear closing it detaches an unmounted device).
    pub fn into_kept(self) -> (u32, OwnedFd) {
        (self.number, self.file.into())
    }

    /// The device a previous image of this process held ([`LoopDevice::into_kept`]), with the
    /// descriptor it kept: `/dev/loop{number}`, released as [`LoopDevice::attach`] made it.
    pub fn adopt(number: u32, fd: OwnedFd) -> LoopDevice {
        LoopDevice { path: PathBuf::from(format!("/dev/loop{number}")), number, file: fd.into() }
    }

    /// Drops our reference and waits until the kernel has detached the device, so callers (and
    /// leak checks) see it gone. Call after unmounting.
    pub fn release_and_wait(self) -> Result<(), LoopError> {
        let LoopDevice { path, number, file } = self;
        // An explicit LOOP_CLR_FD while the device is still open only marks it autoclear (which it
        // already is); if nothing else holds it, it detaches now. ENXIO = already detached.
        // SAFETY: LOOP_CLR_FD takes no argument.
        let _ = unsafe { libc::ioctl(file.as_raw_fd(), LOOP_CLR_FD as _) };
        drop(file);
        wait_detached(&path, number, Duration::from_secs(5))
    }
}

/// The backing file of `/dev/loopN`, or `None` when the device is not attached.
pub fn backing_file(number: u32) -> Option<PathBuf> {
    std::fs::read_to_string(format!("/sys/block/loop{number}/loop/backing_file"))
        .ok()
        .map(|s| PathBuf::from(s.trim_end()))
}

fn wait_detached(path: &Path, number: u32, timeout: Duration) -> Result<(), LoopError> {
    let start = Instant::now();
    while backing_file(number).is_some() {
        if start.elapsed() > timeout {
            return Err(LoopError::Detach {
                device: path.into(),
                waited_ms: start.elapsed().as_millis(),
            });
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

/// Loop devices whose backing file is `backing` (for leak checks and `remove_volume`).
pub fn devices_backed_by(backing: &Path) -> Vec<u32> {
    // sysfs shows the resolved path of the file, so compare against the canonical form.
    let backing = std::fs::canonicalize(backing).unwrap_or_else(|_| backing.to_path_buf());
    let backing = backing.as_path();
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/sys/block") {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(n) = name.strip_prefix("loop").and_then(|n| n.parse::<u32>().ok()) {
                if backing_file(n).as_deref() == Some(backing) {
                    out.push(n);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uapi_sizes() {
        // struct loop_info64 is 232 bytes, struct loop_config 304 (include/uapi/linux/loop.h).
        assert_eq!(std::mem::size_of::<LoopInfo64>(), 232);
        assert_eq!(std::mem::size_of::<LoopConfig>(), 304);
    }
}
