//! The ISC's filesystem view: read-only root image, fresh masked `/proc`, minimal `/dev`,
//! declared tmpfs and binds, then `pivot_root` with the old root detached.
//!
//! Runs in the child, in its own user and mount namespaces, before credentials are dropped.

use std::io;
use std::path::{Component, Path, PathBuf};

use crate::spec::IscSpec;
use crate::syscall::{
    Syscall, MOUNT_ATTR_NODEV, MOUNT_ATTR_NOEXEC, MOUNT_ATTR_NOSUID, MOUNT_ATTR_RDONLY,
};

/// One variant per step, each naming the path involved.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("making mount propagation private: {0}")]
    Propagation(io::Error),
    #[error("bind-mounting the root image {path}: {source}")]
    BindRoot { path: PathBuf, source: io::Error },
    #[error("making the root image {path} read-only: {source}")]
    ReadOnlyRoot { path: PathBuf, source: io::Error },
    #[error("mounting /proc at {path}: {source}")]
    Proc { path: PathBuf, source: io::Error },
    #[error("masking {path}: {source}")]
    Mask { path: PathBuf, source: io::Error },
    #[error("mounting the minimal /dev at {path}: {source}")]
    Dev { path: PathBuf, source: io::Error },
    #[error("mounting tmpfs at {path}: {source}; fix: the image must contain the directory (declare it so the image builder creates it)")]
    Tmpfs { path: PathBuf, source: io::Error },
    #[error("bind-mounting {source_path} at {path}: {source}")]
    Bind { source_path: PathBuf, path: PathBuf, source: io::Error },
    #[error("mounting read-only /sys at {path}: {source}")]
    Sys { path: PathBuf, source: io::Error },
    #[error("pivot_root into {path}: {source}")]
    PivotRoot { path: PathBuf, source: io::Error },
    #[error("setting the hostname to {name}: {source}")]
    Hostname { name: String, source: io::Error },
    #[error("path {0} in the ISC must be absolute and free of `..`")]
    BadPath(PathBuf),
}

/// Files under /proc hidden behind /dev/null: kernel memory, kernel-state writers and
/// information leaks (the list runc and Docker mask, e.g. CVE-2016-8655-class info leaks).
pub const MASKED_PROC_FILES: &[&str] = &[
    "kcore",
    "sysrq-trigger",
    "keys",
    "timer_list",
    "latency_stats",
    "sched_debug",
    "kallsyms",
    "kmsg",
    "config.gz",
];
/// Directories under /proc hidden behind an empty read-only tmpfs.
pub const MASKED_PROC_DIRS: &[&str] = &["acpi", "scsi", "asound", "firmware", "interrupts"];
/// Directories under /proc kept visible but read-only.
pub const READONLY_PROC_DIRS: &[&str] = &["sys", "irq", "bus", "fs"];
/// The only device nodes in the ISC's /dev.
pub const DEV_NODES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];

/// Joins an absolute in-ISC path onto the new root, refusing `..`.
pub fn in_root(root: &Path, inner: &Path) -> Result<PathBuf, RootfsError> {
    if !inner.is_absolute() || inner.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(RootfsError::BadPath(inner.to_path_buf()));
    }
    Ok(root.join(inner.strip_prefix("/").unwrap_or(inner)))
}

const MS_NOSUID_NODEV_NOEXEC: libc::c_ulong = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;

/// Builds the mount tree under `spec.rootfs` and pivots into it.
pub fn prepare_rootfs(sys: &dyn Syscall, spec: &IscSpec) -> Result<(), RootfsError> {
    let root = spec.rootfs.as_path();
    sys.mount(None, Path::new("/"), None, libc::MS_REC | libc::MS_PRIVATE, None)
        .map_err(RootfsError::Propagation)?;
    sys.mount(Some(root), root, None, libc::MS_BIND | libc::MS_REC, None)
        .map_err(|source| RootfsError::BindRoot { path: root.into(), source })?;
    let mut root_attr = MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV;
    if !spec.weakening.writable_root {
        root_attr |= MOUNT_ATTR_RDONLY;
    }
    sys.mount_setattr(root, root_attr, true)
        .map_err(|source| RootfsError::ReadOnlyRoot { path: root.into(), source })?;

    mount_proc(sys, root, !spec.weakening.host_proc_unmasked)?;
    mount_dev(sys, root)?;
    for t in &spec.tmpfs {
        let target = in_root(root, &t.path)?;
        let mut flags = libc::MS_NOSUID | libc::MS_NODEV;
        if !t.exec {
            flags |= libc::MS_NOEXEC;
        }
        let data = format!(
            "size={},mode={:o},uid={},gid={}",
            t.size_bytes.max(4096),
            t.mode,
            spec.uid,
            spec.gid
        );
        sys.mount(Some(Path::new("tmpfs")), &target, Some("tmpfs"), flags, Some(&data))
            .map_err(|source| RootfsError::Tmpfs { path: t.path.clone(), source })?;
    }
    for b in &spec.binds {
        let target = in_root(root, &b.path)?;
        let err = |source| RootfsError::Bind {
            source_path: b.source.clone(),
            path: b.path.clone(),
            source,
        };
        sys.mount(Some(&b.source), &target, None, libc::MS_BIND | libc::MS_REC, None)
            .map_err(err)?;
        let mut attr = MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV;
        if b.read_only {
            attr |= MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOEXEC;
        }
        sys.mount_setattr(&target, attr, true).map_err(err)?;
    }
    if spec.sys_read_only {
        let target = root.join("sys");
        sys.mount(
            Some(Path::new("sysfs")),
            &target,
            Some("sysfs"),
            MS_NOSUID_NODEV_NOEXEC | libc::MS_RDONLY,
            None,
        )
        .map_err(|source| RootfsError::Sys { path: target.clone(), source })?;
    }
    sys.pivot_root(root).map_err(|source| RootfsError::PivotRoot { path: root.into(), source })?;
    sys.sethostname(&spec.hostname)
        .map_err(|source| RootfsError::Hostname { name: spec.hostname.clone(), source })?;
    Ok(())
}

fn mount_proc(sys: &dyn Syscall, root: &Path, mask: bool) -> Result<(), RootfsError> {
    let proc_dir = root.join("proc");
    sys.mount(Some(Path::new("proc")), &proc_dir, Some("proc"), MS_NOSUID_NODEV_NOEXEC, None)
        .map_err(|source| RootfsError::Proc { path: proc_dir.clone(), source })?;
    if !mask {
        return Ok(());
    }
    // Entries this kernel lacks are skipped on the mount's own ENOENT rather than a stat before
    // each (one syscall per entry); any other failure to mask fails the start.
    for name in MASKED_PROC_FILES {
        let target = proc_dir.join(name);
        let r = sys.mount(Some(Path::new("/dev/null")), &target, None, libc::MS_BIND, None);
        absent_or(r, false).map_err(|source| RootfsError::Mask { path: target.clone(), source })?;
    }
    for name in MASKED_PROC_DIRS {
        let target = proc_dir.join(name);
        let r = sys.mount(
            Some(Path::new("tmpfs")),
            &target,
            Some("tmpfs"),
            MS_NOSUID_NODEV_NOEXEC | libc::MS_RDONLY,
            Some("size=0,mode=000"),
        );
        // ENOTDIR: an entry that is a file on this kernel (e.g. `interrupts`) is not a
        // directory to hide, as before.
        absent_or(r, true).map_err(|source| RootfsError::Mask { path: target.clone(), source })?;
    }
    for name in READONLY_PROC_DIRS {
        let target = proc_dir.join(name);
        let err = |source| RootfsError::Mask { path: target.clone(), source };
        match sys.mount(Some(&target), &target, None, libc::MS_BIND | libc::MS_REC, None) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
            r => r.map_err(err)?,
        }
        sys.mount_setattr(
            &target,
            MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC,
            true,
        )
        .map_err(|source| RootfsError::Mask { path: target.clone(), source })?;
    }
    Ok(())
}

/// Success, or the entry to mount over does not exist on this kernel (ENOENT; with
/// `not_a_dir_too`, also ENOTDIR: it exists but is not a directory).
fn absent_or(r: std::io::Result<()>, not_a_dir_too: bool) -> std::io::Result<()> {
    match r {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        Err(e) if not_a_dir_too && e.raw_os_error() == Some(libc::ENOTDIR) => Ok(()),
        r => r,
    }
}

/// A tiny tmpfs with bind-mounted host nodes: a user namespace cannot mknod, and binding only
/// these six keeps every other device (disks, /dev/mem, /dev/kmsg) out of reach.
fn mount_dev(sys: &dyn Syscall, root: &Path) -> Result<(), RootfsError> {
    let dev = root.join("dev");
    let err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| RootfsError::Dev { path, source }
    };
    sys.mount(
        Some(Path::new("tmpfs")),
        &dev,
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_NOEXEC,
        Some("size=64k,mode=755"),
    )
    .map_err(err(&dev))?;
    for name in DEV_NODES {
        let target = dev.join(name);
        let host = Path::new("/dev").join(name);
        if !host.exists() {
            continue;
        }
        sys.create_file(&target).map_err(err(&target))?;
        sys.mount(Some(&host), &target, None, libc::MS_BIND, None).map_err(err(&target))?;
    }
    // One recursive call makes the tmpfs and every node bound on it nosuid,noexec.
    sys.mount_setattr(&dev, MOUNT_ATTR_NOSUID | MOUNT_ATTR_NOEXEC, true).map_err(err(&dev))?;
    for (name, to) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        let link = dev.join(name);
        sys.symlink(Path::new(to), &link).map_err(err(&link))?;
    }
    sys.mount_setattr(&dev, MOUNT_ATTR_RDONLY, false).map_err(err(&dev))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{IscSpec, RlimitSpec, TmpfsMount, Weakening};
    use crate::syscall::{Call, RecordingSyscall};
    use std::time::Duration;

    fn spec(root: &Path) -> IscSpec {
        IscSpec {
            name: "t".into(),
            hostname: "t".into(),
            rootfs: root.into(),
            image_id: "x".into(),
            exec: vec!["/bin/true".into()],
            env: vec![],
            workdir: "/".into(),
            uid: 1000,
            gid: 1000,
            tmpfs: vec![TmpfsMount {
                path: "/tmp".into(),
                size_bytes: 1 << 20,
                mode: 0o1777,
                exec: false,
            }],
            binds: vec![],
            sys_read_only: false,
            capabilities: vec![],
            allow_syscalls: vec![],
            deny_syscalls: vec![],
            tcp_bind_ports: vec![],
            tcp_connect_ports: vec![],
            rlimits: RlimitSpec::default(),
            stop_timeout: Duration::from_secs(1),
            weakening: Weakening::default(),
        }
    }

    #[test]
    fn order_is_private_bind_readonly_then_pivot_last() {
        let rec = RecordingSyscall::default();
        let root = Path::new("/nonexistent/isc-root");
        prepare_rootfs(&rec, &spec(root)).unwrap();
        let calls = rec.calls.borrow();
        assert!(matches!(&calls[0], Call::Mount { target, flags, .. }
            if target == Path::new("/") && *flags == libc::MS_REC | libc::MS_PRIVATE));
        assert!(
            matches!(&calls[1], Call::Mount { source: Some(s), target, .. } if s == root && target == root)
        );
        assert_eq!(
            calls[2],
            Call::SetAttr {
                target: root.into(),
                set: MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
                recursive: true
            }
        );
        let pivot = calls.iter().position(|c| matches!(c, Call::PivotRoot { .. })).unwrap();
        assert_eq!(pivot, calls.len() - 2, "pivot_root then hostname close the sequence");
        let tmp = calls
            .iter()
            .find_map(|c| match c {
                Call::Mount { target, flags, data, .. } if target == &root.join("tmp") => {
                    Some((*flags, data.clone()))
                }
                _ => None,
            })
            .unwrap();
        assert_eq!(tmp.0, libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC);
        assert_eq!(tmp.1.as_deref(), Some("size=1048576,mode=1777,uid=1000,gid=1000"));
    }

    #[test]
    fn writable_root_weakening_drops_only_rdonly() {
        let rec = RecordingSyscall::default();
        let mut s = spec(Path::new("/nonexistent/isc-root"));
        s.weakening.writable_root = true;
        prepare_rootfs(&rec, &s).unwrap();
        assert!(
            matches!(rec.calls.borrow()[2], Call::SetAttr { set, .. } if set == MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV)
        );
    }

    #[test]
    fn dotdot_paths_are_refused() {
        assert!(matches!(
            in_root(Path::new("/r"), Path::new("/tmp/../etc")),
            Err(RootfsError::BadPath(_))
        ));
        assert_eq!(in_root(Path::new("/r"), Path::new("/tmp")).unwrap(), Path::new("/r/tmp"));
    }
}
