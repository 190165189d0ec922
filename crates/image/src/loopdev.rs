//! EROFS images mounted read-only from an autoclearing, read-only, direct-I/O loop device
//! (see `isc_loopdev`): the device detaches itself after the last mount of it goes away, in
//! whichever mount namespaces hold a copy, so a crashed `isc` leaks no device.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use isc_loopdev::{LoopDevice, Mode};

/// Errors of EROFS mounts.
#[derive(Debug, thiserror::Error)]
pub enum LoopError {
    /// Attaching the loop device failed.
    #[error(transparent)]
    Device(#[from] isc_loopdev::LoopError),
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
        let dev = LoopDevice::attach(file, Mode::ReadOnlyDirect)?;
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
