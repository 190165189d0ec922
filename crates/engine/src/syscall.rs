//! The privileged syscalls of the start sequence, behind a trait so the sequence can be
//! unit-tested with a recording double (after youki's `Syscall`).

use std::cell::RefCell;
use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// `mount_setattr(2)` attribute bits (include/uapi/linux/mount.h).
pub const MOUNT_ATTR_RDONLY: u64 = 0x1;
pub const MOUNT_ATTR_NOSUID: u64 = 0x2;
pub const MOUNT_ATTR_NODEV: u64 = 0x4;
pub const MOUNT_ATTR_NOEXEC: u64 = 0x8;

/// One recorded call, for tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Mount {
        source: Option<PathBuf>,
        target: PathBuf,
        fstype: Option<String>,
        flags: u64,
        data: Option<String>,
    },
    SetAttr {
        target: PathBuf,
        set: u64,
        recursive: bool,
    },
    Umount {
        target: PathBuf,
        flags: i32,
    },
    PivotRoot {
        new_root: PathBuf,
    },
    Chdir {
        path: PathBuf,
    },
    Hostname {
        name: String,
    },
    Symlink {
        target: PathBuf,
        link: PathBuf,
    },
    CreateFile {
        path: PathBuf,
    },
}

/// The syscalls the rootfs sequence needs.
pub trait Syscall {
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: libc::c_ulong,
        data: Option<&str>,
    ) -> io::Result<()>;
    /// Sets attributes on a mount (only adds restrictions: no read-modify-write of locked flags).
    fn mount_setattr(&self, target: &Path, set: u64, recursive: bool) -> io::Result<()>;
    fn umount2(&self, target: &Path, flags: i32) -> io::Result<()>;
    /// `pivot_root(".", ".")` after `chdir(new_root)`, as runc and youki do.
    fn pivot_root(&self, new_root: &Path) -> io::Result<()>;
    fn chdir(&self, path: &Path) -> io::Result<()>;
    fn sethostname(&self, name: &str) -> io::Result<()>;
    /// Creates a symlink; an existing one is left alone.
    fn symlink(&self, target: &Path, link: &Path) -> io::Result<()>;
    /// Creates an empty file to bind-mount onto; an existing one is left alone.
    fn create_file(&self, path: &Path) -> io::Result<()>;
}

fn cstr(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn check(rc: libc::c_long) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// The real kernel.
pub struct LinuxSyscall;

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

impl Syscall for LinuxSyscall {
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: libc::c_ulong,
        data: Option<&str>,
    ) -> io::Result<()> {
        let src = source.map(cstr).transpose()?;
        let tgt = cstr(target)?;
        let fst = fstype.map(|s| CString::new(s).expect("fstype has no NUL"));
        let dat = data.map(|s| CString::new(s).expect("mount data has no NUL"));
        // SAFETY: every pointer is either null or a NUL-terminated string alive for the call.
        let rc = unsafe {
            libc::mount(
                src.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
                tgt.as_ptr(),
                fst.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
                flags,
                dat.as_ref().map_or(std::ptr::null(), |s| s.as_ptr().cast()),
            )
        };
        check(rc as libc::c_long)
    }

    fn mount_setattr(&self, target: &Path, set: u64, recursive: bool) -> io::Result<()> {
        let tgt = cstr(target)?;
        let attr = MountAttr { attr_set: set, attr_clr: 0, propagation: 0, userns_fd: 0 };
        let flags = if recursive { libc::AT_RECURSIVE as libc::c_uint } else { 0 };
        // SAFETY: mount_setattr(2) reads `attr` (size passed) and the path string; both outlive
        // the call. Only bits in attr_set are changed, so locked atime flags are left alone
        // (the failure runc hit with MS_REMOUNT in user namespaces).
        let rc = unsafe {
            libc::syscall(
                libc::SYS_mount_setattr,
                libc::AT_FDCWD,
                tgt.as_ptr(),
                flags,
                &attr as *const MountAttr,
                std::mem::size_of::<MountAttr>(),
            )
        };
        check(rc)
    }

    fn umount2(&self, target: &Path, flags: i32) -> io::Result<()> {
        let tgt = cstr(target)?;
        // SAFETY: NUL-terminated path alive for the call.
        check(unsafe { libc::umount2(tgt.as_ptr(), flags) } as libc::c_long)
    }

    fn pivot_root(&self, new_root: &Path) -> io::Result<()> {
        self.chdir(new_root)?;
        let dot = c".";
        // SAFETY: pivot_root(2) with "." for both arguments stacks the old root under the new
        // one (documented in pivot_root(2) NOTES); the strings are static.
        check(unsafe { libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()) })?;
        // The old root now sits on top of "."; detach it so no host path stays reachable.
        self.umount2(Path::new("."), libc::MNT_DETACH)?;
        self.chdir(Path::new("/"))
    }

    fn chdir(&self, path: &Path) -> io::Result<()> {
        let p = cstr(path)?;
        // SAFETY: NUL-terminated path alive for the call.
        check(unsafe { libc::chdir(p.as_ptr()) } as libc::c_long)
    }

    fn sethostname(&self, name: &str) -> io::Result<()> {
        // SAFETY: pointer and length describe `name`'s bytes.
        check(unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) } as libc::c_long)
    }

    fn symlink(&self, target: &Path, link: &Path) -> io::Result<()> {
        match std::os::unix::fs::symlink(target, link) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            r => r,
        }
    }

    fn create_file(&self, path: &Path) -> io::Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            r => r.map(drop),
        }
    }
}

/// A test double that records every call and succeeds.
#[derive(Default)]
pub struct RecordingSyscall {
    pub calls: RefCell<Vec<Call>>,
}

impl Syscall for RecordingSyscall {
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: libc::c_ulong,
        data: Option<&str>,
    ) -> io::Result<()> {
        self.calls.borrow_mut().push(Call::Mount {
            source: source.map(Path::to_path_buf),
            target: target.to_path_buf(),
            fstype: fstype.map(str::to_string),
            flags,
            data: data.map(str::to_string),
        });
        Ok(())
    }
    fn mount_setattr(&self, target: &Path, set: u64, recursive: bool) -> io::Result<()> {
        self.calls.borrow_mut().push(Call::SetAttr { target: target.into(), set, recursive });
        Ok(())
    }
    fn umount2(&self, target: &Path, flags: i32) -> io::Result<()> {
        self.calls.borrow_mut().push(Call::Umount { target: target.into(), flags });
        Ok(())
    }
    fn pivot_root(&self, new_root: &Path) -> io::Result<()> {
        self.calls.borrow_mut().push(Call::PivotRoot { new_root: new_root.into() });
        Ok(())
    }
    fn chdir(&self, path: &Path) -> io::Result<()> {
        self.calls.borrow_mut().push(Call::Chdir { path: path.into() });
        Ok(())
    }
    fn sethostname(&self, name: &str) -> io::Result<()> {
        self.calls.borrow_mut().push(Call::Hostname { name: name.into() });
        Ok(())
    }
    fn symlink(&self, target: &Path, link: &Path) -> io::Result<()> {
        self.calls.borrow_mut().push(Call::Symlink { target: target.into(), link: link.into() });
        Ok(())
    }
    fn create_file(&self, path: &Path) -> io::Result<()> {
        self.calls.borrow_mut().push(Call::CreateFile { path: path.into() });
        Ok(())
    }
}
