//! Read-only loop devices and EROFS mounts, by hand.
//!
//! `LOOP_CTL_GET_FREE` on `/dev/loop-control`, then `LOOP_CONFIGURE` (Linux 5.8+: one atomic
//! ioctl instead of `LOOP_SET_FD` + `LOOP_SET_STATUS64`, so no window in which the device is
//! attached but not yet read-only) with `LO_FLAGS_READ_ONLY | LO_FLAGS_AUTOCLEAR |
//! LO_FLAGS_DIRECT_IO`; see loop(4). Autoclear detaches the device when its last user (the
//! mount, in whichever mount namespaces hold a copy of it) goes away, so a crashed `isc` leaks no
//! device. Direct I/O keeps the backing file out of the page cache: only the EROFS pages are
//! cached, not the same bytes twice.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
const LO_FLAGS_READ_ONLY: u32 = 1;
const LO_FLAGS_AUTOCLEAR: u32 = 4;
const LO_FLAGS_DIRECT_IO: u32 = 16;
const LO_NAME_SIZE: usize = 64;

/// Errors of loop devices and EROFS mounts.
#[derive(Debug, thiserror::Error)]
pub enum LoopError {
    /// `/dev/loop-control` gave no device.
    #[error("cannot get a free loop device from /dev/loop-control: {source}; is the loop module loaded (modprobe loop)?")]
    GetFree {
        /// The OS error.
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
    /// `LOOP_CONFIGURE` failed.
    #[error("cannot attach {backing} to a loop device: {source}")]
    Configure {
        /// The backing file.
        backing: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// `mount(2)` of the EROFS device failed.
    #[error("cannot mount {file} (EROFS, via {device}) read-only at {target}: {source}; check that the kernel has erofs (grep erofs /proc/filesystems) and the file is an EROFS image")]
    Mount {
        /// The packed file.
        file: PathBuf,
        /// The loop device.
        device: PathBuf,
        /// The mount point.
        target: PathBuf,
        /// The OS error.
        source: std::io::Error,
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

/// A read-only, autoclearing loop device; dropping it closes our reference (the device stays
/// while a mount uses it).
#[derive(Debug)]
pub struct LoopDevice {
    /// e.g. `/dev/loop7`.
    pub path: PathBuf,
    _file: File,
}

impl LoopDevice {
    /// Attaches `backing` read-only to a free loop device.
    pub fn attach_read_only(backing: &Path) -> Result<Self, LoopError> {
        let open_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| LoopError::Open { path, source }
        };
        let backing_file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
            .open(backing)
            .map_err(open_err(backing))?;
        let control_path = Path::new("/dev/loop-control");
        let control = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(control_path)
            .map_err(open_err(control_path))?;
        let mut name = [0u8; LO_NAME_SIZE];
        let shown = backing.as_os_str().as_bytes();
        let len = shown.len().min(LO_NAME_SIZE - 1);
        name[..len].copy_from_slice(&shown[..len]);
        let mut last = std::io::Error::from_raw_os_error(libc::EBUSY);
        // Another process can take the device between GET_FREE and CONFIGURE (EBUSY): retry.
        for _ in 0..32 {
            // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a device number or -1.
            let n = unsafe { libc::ioctl(control.as_raw_fd(), LOOP_CTL_GET_FREE as _) };
            if n < 0 {
                return Err(LoopError::GetFree { source: std::io::Error::last_os_error() });
            }
            let path = PathBuf::from(format!("/dev/loop{n}"));
            let file = OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_CLOEXEC)
                .open(&path)
                .map_err(open_err(&path))?;
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
                    lo_flags: LO_FLAGS_READ_ONLY | LO_FLAGS_AUTOCLEAR | LO_FLAGS_DIRECT_IO,
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
                return Ok(Self { path, _file: file });
            }
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EBUSY) {
                return Err(LoopError::Configure { backing: backing.to_path_buf(), source: e });
            }
            last = e;
        }
        Err(LoopError::Configure { backing: backing.to_path_buf(), source: last })
    }
}

/// An EROFS image mounted read-only, `nosuid`, `nodev`. Dropping it detaches the mount
/// (`MNT_DETACH`: copies of it in an ISC's mount namespace stay until that namespace dies, and
/// the loop device autoclears after the last one).
#[derive(Debug)]
pub struct ErofsMount {
    target: PathBuf,
    device: PathBuf,
    mounted: bool,
}

impl ErofsMount {
    /// Mounts the EROFS file `file` at the existing directory `target`.
    pub fn mount(file: &Path, target: &Path) -> Result<Self, LoopError> {
        let dev = LoopDevice::attach_read_only(file)?;
        let c = |p: &Path| std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap_or_default();
        let (src, dst) = (c(&dev.path), c(target));
        let fstype = c"erofs";
        // SAFETY: mount(2) with NUL-terminated strings that live across the call and no data.
        let rc = unsafe {
            libc::mount(
                src.as_ptr(),
                dst.as_ptr(),
                fstype.as_ptr(),
                libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            return Err(LoopError::Mount {
                file: file.to_path_buf(),
                device: dev.path.clone(),
                target: target.to_path_buf(),
                source: std::io::Error::last_os_error(),
            });
        }
        tracing::debug!(file = %file.display(), device = %dev.path.display(), target = %target.display(), "EROFS image mounted");
        // `dev` drops here: the mount now holds the device, and autoclear frees it after.
        Ok(Self { target: target.to_path_buf(), device: dev.path, mounted: true })
    }

    /// The mount point.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// The loop device the mount uses.
    pub fn device(&self) -> &Path {
        &self.device
    }

    /// Detaches the mount now.
    pub fn unmount(mut self) -> std::io::Result<()> {
        self.detach()
    }

    fn detach(&mut self) -> std::io::Result<()> {
        if !self.mounted {
            return Ok(());
        }
        self.mounted = false;
        detach_mount(&self.target)
    }
}

impl Drop for ErofsMount {
    fn drop(&mut self) {
        if let Err(e) = self.detach() {
            tracing::error!(target = %self.target.display(), error = %e, "detaching an EROFS image mount");
        }
    }
}

/// `umount2(target, MNT_DETACH)`.
pub fn detach_mount(target: &Path) -> std::io::Result<()> {
    let dst = std::ffi::CString::new(target.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: umount2(2) with a NUL-terminated path that lives across the call.
    let rc = unsafe { libc::umount2(dst.as_ptr(), libc::MNT_DETACH) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
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
