//! `[filesystem]` (tmpfs, volumes, /sys) and `[secrets]`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::{ErrorKind, Problem};
use crate::parse::{choice, duplicate, Res};
use crate::reader::{Node, Table};
use crate::rules;
use crate::types::*;
use crate::units;

const FILESYSTEM_KEYS: &[&str] = &["tmpfs", "volumes", "sys"];
const TMPFS_KEYS: &[&str] = &["path", "size", "mode", "exec"];
const VOLUME_KEYS: &[&str] = &["name", "path", "size", "encrypted"];
const SECRET_KEYS: &[&str] = &["file_name"];

/// Smallest volume accepted: a filesystem needs room for its own metadata.
const MIN_VOLUME_SIZE: u64 = 1 << 20;

/// Mount points seen so far, to refuse duplicates with a pointer to the first declaration.
struct MountPoints {
    seen: BTreeMap<PathBuf, String>,
    profile: Profile,
    has_secrets: bool,
}

impl MountPoints {
    /// Parses and checks one mount point (`path` key of a tmpfs or volume).
    fn take(&mut self, t: &Table<'_, '_>, example: &str) -> Res<PathBuf> {
        let node = t.require("path", "the mount point", example)?;
        let s = node.str("an absolute path", example)?;
        let path = rules::absolute_path(s, false).map_err(|p| node.fail(p))?;
        rules::not_reserved_mount(&path).map_err(|p| node.fail(p))?;
        if self.has_secrets && path.starts_with(SECRETS_DIR) {
            return Err(node.fail(Problem::refused(
                format!("{s} is inside {SECRETS_DIR}, where the declared secrets are mounted"),
                "choose another mount point",
            )));
        }
        if let Some(implied) =
            self.profile.implied_writable_paths().iter().find(|p| Path::new(p) == path)
        {
            return Err(node.err(
                ErrorKind::Duplicate,
                format!(
                    "{implied} is already a writable mount under profile \"{}\"",
                    self.profile.as_str()
                ),
                "remove this mount, or use profile = \"strict\" and declare it yourself".into(),
            ));
        }
        if let Some(first) = self.seen.get(&path) {
            return Err(duplicate(&node, &format!("mount point {s:?}"), first));
        }
        self.seen.insert(path.clone(), node.key.clone());
        Ok(path)
    }
}

fn positive_size(n: &Node<'_, '_>, min: u64, example: &str) -> Res<u64> {
    let size = n.size(example)?;
    if size < min {
        return Err(n.fail(Problem::invalid(
            format!(
                "size {} is below the minimum of {}",
                units::format_size(size),
                units::format_size(min)
            ),
            if size == 0 {
                format!("write a size, e.g. `{example}` (size 0 would mean no limit at all)")
            } else {
                format!("write a larger size, e.g. `{example}`")
            },
        )));
    }
    Ok(size)
}

pub(crate) fn parse_filesystem(
    t: &Table<'_, '_>,
    profile: Profile,
    has_secrets: bool,
) -> Res<Filesystem> {
    t.deny_unknown(FILESYSTEM_KEYS)?;
    let mut mounts = MountPoints { seen: BTreeMap::new(), profile, has_secrets };
    let mut fs = Filesystem::default();

    let tmpfs_ex = "tmpfs = [{ path = \"/tmp\", size = \"16M\" }]";
    if let Some(n) = t.get("tmpfs") {
        for item in n.array("an array of tables", tmpfs_ex)? {
            let e = item.table("a table like { path = \"/tmp\", size = \"16M\" }", tmpfs_ex)?;
            e.deny_unknown(TMPFS_KEYS)?;
            let path = mounts.take(&e, "path = \"/tmp\"")?;
            let size = match e.get("size") {
                None => DEFAULT_TMPFS_SIZE,
                Some(s) => positive_size(&s, 4096, "size = \"16M\"")?,
            };
            let mode = match e.get("mode") {
                None => DEFAULT_TMPFS_MODE,
                Some(m) if m.value.is_str() => {
                    units::parse_mode_str(m.str("", "")?).map_err(|p| m.fail(p))?
                }
                Some(m) => {
                    let v = m.int_in(0, 0o7777, "a file mode", "mode = 0o1777")?;
                    units::check_mode(v as u32).map_err(|p| m.fail(p))?
                }
            };
            let exec = match e.get("exec") {
                None => false,
                Some(x) => x.bool("exec = false")?,
            };
            fs.tmpfs.push(TmpfsDecl { path, size, mode, exec });
        }
    }

    let vol_ex =
        "volumes = [{ name = \"data\", path = \"/var/lib/app\", size = \"64M\", encrypted = true }]";
    if let Some(n) = t.get("volumes") {
        let mut names: BTreeMap<String, String> = BTreeMap::new();
        for item in n.array("an array of tables", vol_ex)? {
            let e = item.table("a table like { name = \"data\", ... }", vol_ex)?;
            e.deny_unknown(VOLUME_KEYS)?;
            let name_node = e.require("name", "the volume's name", "name = \"data\"")?;
            let name = name_node.str("a volume name", "name = \"data\"")?;
            rules::file_name("a volume name", name).map_err(|p| name_node.fail(p))?;
            if let Some(first) = names.get(name) {
                return Err(duplicate(&name_node, &format!("volume {name:?}"), first));
            }
            names.insert(name.to_string(), name_node.key.clone());
            let path = mounts.take(&e, "path = \"/var/lib/app\"")?;
            let size_node = e.require("size", "the volume's size", "size = \"64M\"")?;
            let size = positive_size(&size_node, MIN_VOLUME_SIZE, "size = \"64M\"")?;
            let enc_node = e.require(
                "encrypted",
                "whether the volume is encrypted at rest; there is no default, choose explicitly",
                "encrypted = true",
            )?;
            let encrypted = enc_node.bool("encrypted = true")?;
            fs.volumes.push(VolumeDecl { name: name.to_string(), path, size, encrypted });
        }
    }

    if let Some(n) = t.get("sys") {
        fs.sys = match choice(&n, &["none", "read-only"], "sys = \"none\"")? {
            "read-only" => SysAccess::ReadOnly,
            _ => SysAccess::None,
        };
    }
    Ok(fs)
}

pub(crate) fn parse_secrets(t: &Table<'_, '_>) -> Res<BTreeMap<String, SecretDecl>> {
    let mut out = BTreeMap::new();
    let mut files: BTreeMap<String, String> = BTreeMap::new();
    for (key_span, name, node) in t.entries() {
        rules::file_name("a secret name", name)
            .map_err(|p| t.doc.error(key_span.clone(), &node.key, p))?;
        let e = node.table("a table (use {} for the defaults)", &format!("{name} = {{}}"))?;
        e.deny_unknown(SECRET_KEYS)?;
        let (file_name, file_node) = match e.get("file_name") {
            None => (name.to_string(), node.clone()),
            Some(f) => {
                let s = f.str("a file name", "file_name = \"password\"")?;
                rules::file_name("a file name", s).map_err(|p| f.fail(p))?;
                (s.to_string(), f)
            }
        };
        if let Some(first) = files.get(&file_name) {
            return Err(duplicate(&file_node, &format!("file {SECRETS_DIR}/{file_name}"), first));
        }
        files.insert(file_name.clone(), file_node.key.clone());
        out.insert(name.to_string(), SecretDecl { file_name });
    }
    Ok(out)
}
