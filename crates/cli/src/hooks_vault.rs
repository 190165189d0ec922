//! Secrets and volumes on the start path (issue 6, DESIGN.md §6).
//!
//! Where things live:
//! - the vault (keys, sealed secrets, volume images) is `<root>/vault` (see docs/secrets.md);
//! - mount points are under `<root>/mnt` (directories 0711): `volumes/<isc>/<name>` (host
//!   mounts of the ext4 loop images) and `secrets/<isc>` (an empty directory on the host).
//!   Not under `<state>`: the engine binds them from inside the ISC's user namespace, whose
//!   root is an unprivileged host uid that cannot search the 0700 state directory; `<root>` is
//!   searchable already (the root images are reached through it).
//!
//! Order of a start:
//! 1. [`VaultHooks::prepare`], before `clone3`: opens (creating on first use) each declared
//!    volume, mounts it on the host and adds a read-write bind of its `data/` to the spec; adds a
//!    read-only bind `secrets/<isc>` → `/run/secrets`. No secret is decrypted yet, and the vault
//!    (with its master key or passphrase) is dropped again before the clone, so PID 1, which is a
//!    copy of this process, never holds key material or plaintext in its memory.
//! 2. `before_release`, after `clone3` and the id maps: reads the host uid base back from
//!    `/proc/<child>/uid_map`, gives each volume's `data/` to the service's host uid, decrypts the
//!    declared secrets and writes them onto a tmpfs mounted *inside the child's mount namespace*
//!    (a helper thread `setns`es into it). The host's mount table never shows the plaintext, the
//!    child's namespace is a slave (less privileged user namespace, mount_namespaces(7)) so
//!    nothing propagates back, and the tmpfs dies with the ISC's last process.
//! 3. the child binds it read-only at `/run/secrets` (engine `BindMount { read_only: true }`)
//!    and detaches the old root, which leaves that bind as the only reference.
//! 4. Drop (after the ISC ended, or on any failed start): each volume's fscrypt key is removed,
//!    its filesystem unmounted and its loop device detached.
//!
//! A hibernating monitor ([`VaultHooks::suspend`]) keeps its volumes as they are (mounted,
//! keyed, attached) and their loop devices' descriptors; its woken self adopts them
//! ([`VaultHooks::resume`]) and ends them at step 4.

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, IntoRawFd, RawFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use isc_engine::monitor_hibernate::{adopt_fd, Suspended};
use isc_engine::{BindMount, IscSpec, StartHooks};
use isc_manifest::{Manifest, SECRETS_DIR};
use isc_vault::{KdfParams, KeptVolume, KeySource, MountedVolume, Vault, Zeroizing};
use serde::{Deserialize, Serialize};

use crate::launch::Dirs;

/// Environment variable naming a passphrase file (passphrase-derived vaults).
pub const PASSPHRASE_FILE_ENV: &str = "ISC_PASSPHRASE_FILE";

const PAGE: u64 = 4096;

/// The vault's directory under the isc root.
pub fn vault_root(dirs: &Dirs) -> PathBuf {
    dirs.root.join("vault")
}

/// The directory of volume mounts and secret mount points (absolute: the secrets helper
/// thread resolves it from the root of the child's mount namespace).
pub fn run_dir(dirs: &Dirs) -> Result<PathBuf> {
    let abs = std::path::absolute(&dirs.root)
        .with_context(|| format!("resolving the isc root {}", dirs.root.display()))?;
    Ok(abs.join("mnt"))
}

/// Creates `dir` and its missing parents below `base` with mode 0711: searchable by the
/// ISC's user namespace (which binds from here), listable by nobody but root.
fn searchable_dir(base: &Path, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(base).with_context(|| format!("creating {}", base.display()))?;
    let mut cur = base.to_path_buf();
    let rel = dir.strip_prefix(base).unwrap_or(dir);
    for part in std::iter::once(Path::new("")).chain(rel.iter().map(Path::new)) {
        cur.push(part);
        match std::fs::create_dir(&cur) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e).with_context(|| format!("creating {}", cur.display())),
        }
        std::fs::set_permissions(&cur, std::fs::Permissions::from_mode(0o711))
            .with_context(|| format!("setting mode 0711 on {}", cur.display()))?;
    }
    Ok(())
}

/// How to unlock the vault: a passphrase read from `file` (or from the file named by
/// `$ISC_PASSPHRASE_FILE`), else the key file under the vault. Never from argv.
pub fn key_source(file: Option<&Path>) -> Result<KeySource> {
    let env_file = std::env::var_os(PASSPHRASE_FILE_ENV).map(PathBuf::from);
    let Some(path) = file.map(Path::to_path_buf).or(env_file) else {
        return Ok(KeySource::File);
    };
    let mut f = File::open(&path)
        .with_context(|| format!("opening the passphrase file {}", path.display()))?;
    let meta = f.metadata().with_context(|| format!("reading {}", path.display()))?;
    if meta.mode() & 0o077 != 0 {
        bail!(
            "the passphrase file {} has mode {:o}; fix: `chmod 600 {}`",
            path.display(),
            meta.mode() & 0o7777,
            path.display()
        );
    }
    let mut text = Zeroizing::new(String::with_capacity(1024));
    f.by_ref()
        .take(1024)
        .read_to_string(&mut text)
        .with_context(|| format!("reading the passphrase file {}", path.display()))?;
    let pass = text.trim_end_matches(['\n', '\r']);
    if pass.is_empty() {
        bail!("the passphrase file {} is empty", path.display());
    }
    Ok(KeySource::Passphrase { passphrase: pass.to_string().into(), params: KdfParams::default() })
}

/// Opens the vault of `dirs`.
pub fn open_vault(dirs: &Dirs, passphrase_file: Option<&Path>) -> Result<Vault> {
    // The isc root itself must stay traversable (the ISC's user namespace reaches its image
    // through it), so create it with the default mode before the vault makes `vault/` 0700
    // (creating missing parents 0700 too).
    std::fs::create_dir_all(&dirs.root)
        .with_context(|| format!("creating the isc root {}", dirs.root.display()))?;
    let root = vault_root(dirs);
    Vault::open(&root, key_source(passphrase_file)?)
        .with_context(|| format!("opening the vault at {}", root.display()))
}

/// What a hibernating monitor keeps of its vault hooks ([`VaultHooks::suspend`]): the open
/// volumes, each with its loop device's descriptor (kept across the execs).
#[derive(Serialize, Deserialize)]
struct KeptVault {
    volumes: Vec<KeptVaultVolume>,
}

#[derive(Serialize, Deserialize)]
struct KeptVaultVolume {
    volume: KeptVolume,
    loop_fd: Option<RawFd>,
}

/// The vault's part of one start. See the module documentation for the order.
pub struct VaultHooks {
    dirs: Dirs,
    isc: String,
    uid: u32,
    gid: u32,
    /// `(secret name, file name under /run/secrets)`.
    secrets: Vec<(String, String)>,
    /// Host-side mount point of the secrets tmpfs (a plain directory on the host).
    secrets_dir: Option<PathBuf>,
    volumes: Vec<MountedVolume>,
    /// The run's audit trail (the monitor's session log): which secrets a start decrypted.
    audit: std::sync::Arc<isc_audit::AuditLog>,
}

impl VaultHooks {
    /// The hooks of `m` before anything is opened or delivered.
    fn empty(
        m: &Manifest,
        dirs: &Dirs,
        spec: &IscSpec,
        audit: std::sync::Arc<isc_audit::AuditLog>,
    ) -> Self {
        VaultHooks {
            dirs: dirs.clone(),
            isc: m.name.clone(),
            uid: spec.uid,
            gid: spec.gid,
            secrets: m.secrets.iter().map(|(n, d)| (n.clone(), d.file_name.clone())).collect(),
            secrets_dir: None,
            volumes: Vec::new(),
            audit,
        }
    }

    /// Opens the manifest's volumes and adds the volume and secret binds to `spec`. Nothing is
    /// done (and the vault is not opened) when the manifest declares neither.
    pub fn prepare(
        m: &Manifest,
        dirs: &Dirs,
        spec: &mut IscSpec,
        audit: std::sync::Arc<isc_audit::AuditLog>,
    ) -> Result<Self> {
        let mut hooks = VaultHooks::empty(m, dirs, spec, audit);
        if !m.filesystem.volumes.is_empty() {
            let t0 = Instant::now();
            let run = run_dir(dirs)?;
            let mut vault = open_vault(dirs, None)?;
            searchable_dir(&run, &run.join("volumes").join(&m.name))?;
            // We hold this ISC's name: a volume of it still mounted belongs to a monitor that
            // died without closing it. Close it (key removed, unmounted) before reopening.
            for v in &m.filesystem.volumes {
                let mount_dir = run.join("volumes").join(&m.name).join(&v.name);
                isc_vault::recover_stale_volume(&mount_dir)
                    .with_context(|| format!("closing the stale mount of volume `{}`", v.name))?;
            }
            for v in &m.filesystem.volumes {
                let vol = vault
                    .open_volume(&run, &m.name, &v.name, v.size, v.encrypted)
                    .with_context(|| format!("opening volume `{}` of ISC `{}`", v.name, m.name))?;
                spec.binds.push(BindMount {
                    source: vol.data_dir.clone(),
                    path: v.path.clone(),
                    read_only: false,
                });
                hooks.volumes.push(vol);
            }
            tracing::debug!(isc = %m.name, count = hooks.volumes.len(), us = t0.elapsed().as_micros() as u64, "volumes opened");
        }
        if !hooks.secrets.is_empty() {
            let run = run_dir(dirs)?;
            let dir = run.join("secrets").join(&m.name);
            searchable_dir(&run, &dir)?;
            spec.binds.push(BindMount {
                source: dir.clone(),
                path: PathBuf::from(SECRETS_DIR),
                read_only: true,
            });
            hooks.secrets_dir = Some(dir);
        }
        Ok(hooks)
    }

    /// The vault hooks of a woken monitor ([`VaultHooks::suspend`]): the kept volumes adopted
    /// (their keys, mounts and loop devices were never let go; nothing is reopened) and the
    /// secrets' host mount point where `prepare` made it. Dropping the result ends them as it
    /// would have the hooks `prepare` returned. `state` null: no volume was kept.
    pub fn resume(
        m: &Manifest,
        dirs: &Dirs,
        spec: &IscSpec,
        audit: std::sync::Arc<isc_audit::AuditLog>,
        state: serde_json::Value,
    ) -> Result<Self> {
        let kept: KeptVault = if state.is_null() {
            KeptVault { volumes: Vec::new() }
        } else {
            serde_json::from_value(state).context("the saved vault state")?
        };
        // Own every kept descriptor first, so that none stays open if a volume is refused.
        let mut fds = Vec::with_capacity(kept.volumes.len());
        for k in &kept.volumes {
            fds.push(match k.loop_fd {
                // SAFETY: the saved state names this descriptor once, as this volume's loop
                // device's.
                Some(fd) => Some(unsafe { adopt_fd(fd) }.context("a kept loop device")?),
                None => None,
            });
        }
        let mut hooks = VaultHooks::empty(m, dirs, spec, audit);
        for (k, fd) in kept.volumes.into_iter().zip(fds) {
            let mount = k.volume.mount_dir.clone();
            let vol = MountedVolume::adopt(k.volume, fd)
                .with_context(|| format!("adopting the volume mounted at {}", mount.display()))?;
            hooks.volumes.push(vol);
        }
        if hooks.volumes.len() != m.filesystem.volumes.len() {
            bail!(
                "the saved state keeps {} volumes but the manifest declares {}",
                hooks.volumes.len(),
                m.filesystem.volumes.len()
            );
        }
        if !hooks.secrets.is_empty() {
            hooks.secrets_dir = Some(run_dir(dirs)?.join("secrets").join(&m.name));
        }
        Ok(hooks)
    }

    /// Decrypts the declared secrets and writes them onto a tmpfs in the child's mount
    /// namespace, owned by the service's host ids.
    fn deliver_secrets(&self, child_pid: i32, host_uid: u32, host_gid: u32) -> Result<()> {
        let Some(dir) = &self.secrets_dir else { return Ok(()) };
        let t0 = Instant::now();
        let names: Vec<String> = self.secrets.iter().map(|(n, _)| n.clone()).collect();
        let opened = {
            let mut vault = open_vault(&self.dirs, None)?;
            vault.open_for_start(&self.isc, &names)?
        };
        // open_for_start returns the values in the order asked.
        let files: Vec<(String, Zeroizing<Vec<u8>>)> =
            opened.into_iter().zip(&self.secrets).map(|((_, v), (_, f))| (f.clone(), v)).collect();
        let limit =
            files.iter().map(|(_, v)| (v.len() as u64).div_ceil(PAGE).max(1) * PAGE).sum::<u64>()
                + PAGE;
        let ns_path = format!("/proc/{child_pid}/ns/mnt");
        let ns = File::open(&ns_path).with_context(|| format!("opening {ns_path}"))?;
        let written = std::thread::scope(|s| {
            std::thread::Builder::new()
                .name("isc-secrets".into())
                .spawn_scoped(s, || -> Result<()> {
                    // setns(CLONE_NEWNS) refuses a caller that shares its fs_struct (threads
                    // do), setns(2); unsharing it affects only this helper thread.
                    // SAFETY: unshare with a flag; no memory is passed.
                    if unsafe { libc::unshare(libc::CLONE_FS) } != 0 {
                        return Err(std::io::Error::last_os_error())
                            .context("unsharing the helper thread's fs attributes");
                    }
                    // SAFETY: setns on an fd we own; it changes only this thread's mount
                    // namespace, root and cwd (setns(2)), and the thread ends right after.
                    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNS) } != 0 {
                        return Err(std::io::Error::last_os_error())
                            .with_context(|| format!("entering the mount namespace {ns_path}"));
                    }
                    isc_vault::write_secret_tmpfs(dir, &files, host_uid, host_gid, limit)?;
                    Ok(())
                })
                .map(|h| h.join())
        });
        match written {
            Ok(Ok(r)) => r?,
            Ok(Err(_)) => bail!("the secrets helper thread panicked"),
            Err(e) => return Err(e).context("starting the secrets helper thread"),
        }
        tracing::debug!(isc = %self.isc, count = files.len(), us = t0.elapsed().as_micros() as u64, "secrets delivered");
        // Names only, never values: which secrets this start decrypted. On the run's own trail
        // (written now, synced with the run's other records), not through a second log opened
        // and synced on the start path. Fails closed like every record of the start.
        self.audit
            .append(
                Some(&self.isc),
                isc_audit::Kind::SecretRead,
                crate::hooks_audit::caller(),
                serde_json::json!({"secrets": names, "delivered_to": "/run/secrets"}),
            )
            .context("recording the secrets read on the audit trail")?;
        Ok(())
    }
}

/// The host id the child's id 0 maps to, from `/proc/<pid>/{uid,gid}_map` ("0 BASE COUNT").
fn map_base(pid: i32, file: &str) -> Result<u32> {
    let path = format!("/proc/{pid}/{file}");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    text.lines()
        .find_map(|l| {
            let mut f = l.split_whitespace();
            (f.next()? == "0").then(|| f.next()?.parse::<u32>().ok()).flatten()
        })
        .with_context(|| format!("{path} maps no id 0: {text:?}"))
}

fn host_id(pid: i32, file: &str, inner: u32) -> Result<u32> {
    let base = map_base(pid, file)?;
    base.checked_add(inner).with_context(|| format!("id {inner} overflows the range at {base}"))
}

impl StartHooks for VaultHooks {
    /// Secrets are delivered once, before `Go`; afterwards all that is left is their empty
    /// host mount point, which `resume` finds again. Mounted volumes stay mounted and keyed
    /// across a hibernation (both live in the kernel); their loop devices' descriptors are kept.
    fn can_hibernate(&self) -> bool {
        true
    }

    /// The open volumes, disarmed, with their loop devices' descriptors to keep.
    fn suspend(&mut self) -> Suspended {
        let mut keep = Vec::new();
        let volumes = self
            .volumes
            .drain(..)
            .map(|v| {
                let (volume, fd) = v.into_kept();
                let loop_fd = fd.map(IntoRawFd::into_raw_fd);
                keep.extend(loop_fd);
                KeptVaultVolume { volume, loop_fd }
            })
            .collect();
        Suspended {
            state: serde_json::to_value(KeptVault { volumes }).expect("the vault state serializes"),
            keep,
            ..Suspended::default()
        }
    }
    fn before_release(&mut self, _child_pid: i32) -> Result<(), (&'static str, String)> {
        Ok(())
    }

    /// Before `Go`: the secrets tmpfs is mounted at a host path in the child's mount
    /// namespace, which the child's root setup then binds into the image.
    fn before_go(&mut self, child_pid: i32) -> Result<(), (&'static str, String)> {
        if self.volumes.is_empty() && self.secrets_dir.is_none() {
            return Ok(());
        }
        let ids = host_id(child_pid, "uid_map", self.uid)
            .and_then(|u| Ok((u, host_id(child_pid, "gid_map", self.gid)?)));
        let (uid, gid) = ids.map_err(|e| ("reading the ISC's id maps", format!("{e:#}")))?;
        for v in &self.volumes {
            v.set_owner(uid, gid)
                .map_err(|e| ("giving the volumes to the service user", e.to_string()))?;
        }
        self.deliver_secrets(child_pid, uid, gid)
            .map_err(|e| ("delivering secrets", format!("{e:#}")))
    }
}

impl Drop for VaultHooks {
    fn drop(&mut self) {
        for v in self.volumes.drain(..) {
            let mount = v.mount_dir.clone();
            if let Err(e) = v.close() {
                tracing::error!(isc = %self.isc, mount = %mount.display(), error = %e, "closing the volume");
            }
        }
        if let Some(dir) = &self.secrets_dir {
            // The tmpfs lived only in the ISC's mount namespace; this is the empty mount point.
            let _ = std::fs::remove_dir(dir);
        }
    }
}
