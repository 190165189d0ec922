//! Pure validation rules for names, paths, environment variables, capabilities and syscalls.
//! Each returns a [`Problem`] explaining the rule and the fix; the parser adds the location.

use std::path::{Component, Path, PathBuf};

use crate::error::Problem;

/// Every Linux capability, by canonical name, in kernel (capability.h) order: index = capability
/// number, up to CAP_CHECKPOINT_RESTORE = 40 (`isc verify` decodes status masks with it).
pub const CAPABILITIES: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// Loader variables refused in `service.env`: each makes the dynamic loader run or search
/// attacker-chosen code (ld.so(8)).
pub const REFUSED_ENV: [&str; 3] = ["LD_PRELOAD", "LD_LIBRARY_PATH", "LD_AUDIT"];

/// Mount-point prefixes the engine owns; declared mounts must stay out of them.
pub const RESERVED_MOUNT_ROOTS: [&str; 3] = ["/proc", "/dev", "/sys"];

/// Checks a DNS label: 1–63 characters of `[a-z0-9-]`, not starting or ending with `-`.
pub fn dns_label(what: &str, text: &str) -> Result<(), Problem> {
    let why = if text.is_empty() {
        Some("it is empty".to_string())
    } else if text.len() > 63 {
        Some(format!("it is {} characters long (at most 63)", text.len()))
    } else if let Some(c) =
        text.chars().find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        Some(format!("it contains {c:?}"))
    } else if text.starts_with('-') || text.ends_with('-') {
        Some("it starts or ends with '-'".to_string())
    } else {
        None
    };
    match why {
        None => Ok(()),
        Some(why) => Err(Problem::invalid(
            format!("expected {what} that is a DNS label, got {text:?}: {why}"),
            format!(
                "use 1-63 lowercase letters, digits and '-', not at either end, e.g. {:?}",
                suggest_label(text)
            ),
        )),
    }
}

fn suggest_label(text: &str) -> String {
    let mut s: String = text
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    s.truncate(63);
    let s = s.trim_matches('-');
    if s.is_empty() {
        "web".to_string()
    } else {
        s.to_string()
    }
}

/// Checks a DNS name (dot-separated labels; letters may be upper case; at most 253 characters).
pub fn dns_name(text: &str) -> Result<(), Problem> {
    let bad = |why: &str| {
        Problem::invalid(
            format!("expected a host name like \"db.internal\", got {text:?}: {why}"),
            "use dot-separated labels of letters, digits and '-'",
        )
    };
    if text.is_empty() || text.len() > 253 {
        return Err(bad("a name has 1-253 characters"));
    }
    for label in text.trim_end_matches('.').split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(bad(&format!("label {label:?} is not valid")));
        }
    }
    Ok(())
}

/// Checks an absolute, normalized path usable as a mount point or working directory and returns
/// it. `allow_root` permits `/` itself (for `workdir`).
pub fn absolute_path(text: &str, allow_root: bool) -> Result<PathBuf, Problem> {
    if text.contains('\0') {
        return Err(Problem::invalid(
            format!("path {text:?} contains a NUL byte"),
            "remove the NUL byte",
        ));
    }
    if !text.starts_with('/') {
        return Err(Problem::invalid(
            format!("expected an absolute path, got {text:?}"),
            format!("start the path with '/', e.g. \"/{}\"", text.trim_start_matches("./")),
        ));
    }
    let path = Path::new(text);
    if path.components().any(|c| c == Component::ParentDir) {
        return Err(Problem::refused(
            format!("path {text:?} contains `..`"),
            "write the path without `..` components",
        ));
    }
    let normalized = normalize(path);
    if normalized.as_os_str() != text {
        return Err(Problem::invalid(
            format!("path {text:?} is not normalized"),
            format!("write it as {:?}", normalized.display().to_string()),
        ));
    }
    if !allow_root && normalized == Path::new("/") {
        return Err(Problem::refused(
            "the root `/` cannot be a mount point: the image is the root and is read-only",
            "mount below the root, e.g. \"/data\"",
        ));
    }
    Ok(normalized)
}

/// Lexical normalization: drops `.` and empty components and any trailing slash.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in path.components() {
        if let Component::Normal(part) = c {
            out.push(part);
        }
    }
    out
}

/// Refuses mount points inside the engine-owned `/proc`, `/dev` and `/sys`.
pub fn not_reserved_mount(path: &Path) -> Result<(), Problem> {
    for root in RESERVED_MOUNT_ROOTS {
        if path.starts_with(root) {
            return Err(Problem::refused(
                format!(
                    "{} is inside {root}, which the engine sets up itself (masked, minimal)",
                    path.display()
                ),
                format!("choose a mount point outside {}", RESERVED_MOUNT_ROOTS.join(", ")),
            ));
        }
    }
    Ok(())
}

/// Checks an environment variable name and value; refuses dynamic-loader variables.
pub fn env_var(name: &str, value: &str) -> Result<(), Problem> {
    if name.is_empty() || name.contains('=') || name.contains('\0') {
        return Err(Problem::invalid(
            format!("environment variable name {name:?} is empty or contains '=' or NUL"),
            "use a name like LANG or APP_MODE (letters, digits, '_')",
        ));
    }
    if REFUSED_ENV.contains(&name) {
        return Err(Problem::refused(
            format!("{name} makes the dynamic loader load code from outside the image's intent"),
            format!(
                "remove {name}; put libraries in the image (image.paths) at their standard locations"
            ),
        ));
    }
    if value.contains('\0') {
        return Err(Problem::invalid(
            format!("the value of {name} contains a NUL byte"),
            "remove the NUL byte from the value",
        ));
    }
    Ok(())
}

/// Checks a secret or volume name: `[A-Za-z0-9_.-]{1,64}`, not `.` or `..`.
pub fn file_name(what: &str, text: &str) -> Result<(), Problem> {
    let ok = !text.is_empty()
        && text.len() <= 64
        && text.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        && text != "."
        && text != "..";
    if ok {
        Ok(())
    } else {
        Err(Problem::invalid(
            format!("expected {what} of 1-64 characters from [A-Za-z0-9_.-], got {text:?}"),
            "use letters, digits, '_', '.' and '-' only (no '/'), e.g. \"db_password\"",
        ))
    }
}

/// Canonicalizes a capability name (`cap_net_bind_service`, `CAP_NET_BIND_SERVICE` and
/// `NET_BIND_SERVICE` all give `NET_BIND_SERVICE`) and checks it exists.
pub fn capability(text: &str) -> Result<String, Problem> {
    let upper = text.to_ascii_uppercase();
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    if CAPABILITIES.contains(&bare) {
        return Ok(bare.to_string());
    }
    let hint = CAPABILITIES
        .iter()
        .find(|c| c.contains(bare) || (bare.len() >= 3 && bare.contains(*c)))
        .map(|c| format!("did you mean \"{c}\"? "))
        .unwrap_or_default();
    Err(Problem::invalid(
        format!("unknown capability {text:?}"),
        format!("{hint}use a name from capabilities(7) without CAP_, e.g. \"NET_BIND_SERVICE\""),
    ))
}

/// Checks a syscall name is a C identifier of lowercase letters, digits and `_` (≤ 64).
pub fn syscall_name(text: &str) -> Result<(), Problem> {
    let ok = !text.is_empty()
        && text.len() <= 64
        && text.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && text.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(Problem::invalid(
            format!("expected a syscall name like \"io_uring_setup\", got {text:?}"),
            "use the name from syscalls(2): lowercase letters, digits and '_'",
        ))
    }
}

/// Checks an image store id: 64 lowercase hex digits.
pub fn image_id(text: &str) -> Result<(), Problem> {
    if text.len() == 64 && text.chars().all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)) {
        Ok(())
    } else {
        Err(Problem::invalid(
            format!("expected an image id of 64 lowercase hex digits, got {text:?}"),
            "copy the full id printed by `isc image ls`",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        assert!(dns_label("a name", "web-1").is_ok());
        assert!(dns_label("a name", &"a".repeat(63)).is_ok());
        let p = dns_label("a name", "Web_1").unwrap_err();
        assert!(p.message.contains("contains 'W'"), "{p:?}");
        assert!(p.fix.contains("\"web-1\""), "{p:?}");
        assert!(dns_label("a name", &"a".repeat(64))
            .unwrap_err()
            .message
            .contains("64 characters"));
        assert!(dns_label("a name", "-x").is_err());
        assert!(dns_label("a name", "").is_err());
    }

    #[test]
    fn names() {
        assert!(dns_name("db.internal").is_ok());
        assert!(dns_name("DB.example.com.").is_ok());
        assert!(dns_name("a..b").is_err());
        assert!(dns_name("a_b.c").is_err());
    }

    #[test]
    fn paths() {
        assert_eq!(absolute_path("/srv", false).unwrap(), PathBuf::from("/srv"));
        assert!(absolute_path("/", true).is_ok());
        assert!(absolute_path("/", false).unwrap_err().message.contains("root"));
        assert!(absolute_path("srv", false).unwrap_err().fix.contains("\"/srv\""));
        assert!(absolute_path("/a/../b", false).unwrap_err().message.contains(".."));
        let p = absolute_path("/a//b/", false).unwrap_err();
        assert!(p.fix.contains("\"/a/b\""), "{p:?}");
        assert!(absolute_path("/a/./b", false).is_err());
        assert!(not_reserved_mount(Path::new("/proc/x")).is_err());
        assert!(not_reserved_mount(Path::new("/dev")).is_err());
        assert!(not_reserved_mount(Path::new("/devices")).is_ok());
    }

    #[test]
    fn env() {
        assert!(env_var("LANG", "C.UTF-8").is_ok());
        assert!(env_var("A=B", "x").is_err());
        assert!(env_var("", "x").is_err());
        assert!(env_var("X", "a\0b").is_err());
        for name in REFUSED_ENV {
            assert_eq!(env_var(name, "/x").unwrap_err().kind, crate::ErrorKind::Refused);
        }
    }

    #[test]
    fn capabilities() {
        assert_eq!(capability("NET_BIND_SERVICE").unwrap(), "NET_BIND_SERVICE");
        assert_eq!(capability("CAP_NET_BIND_SERVICE").unwrap(), "NET_BIND_SERVICE");
        assert_eq!(capability("cap_chown").unwrap(), "CHOWN");
        assert_eq!(capability("checkpoint_restore").unwrap(), "CHECKPOINT_RESTORE");
        let p = capability("NET_BIND").unwrap_err();
        assert!(p.fix.contains("NET_BIND_SERVICE"), "{p:?}");
        assert!(capability("FLY").is_err());
    }

    #[test]
    fn syscalls_and_files_and_ids() {
        assert!(syscall_name("io_uring_setup").is_ok());
        assert!(syscall_name("_llseek").is_ok());
        assert!(syscall_name("Open").is_err());
        assert!(syscall_name("1open").is_err());
        assert!(file_name("a secret name", "db_password.txt").is_ok());
        assert!(file_name("a secret name", "a/b").is_err());
        assert!(file_name("a secret name", "..").is_err());
        assert!(file_name("a secret name", &"x".repeat(65)).is_err());
        assert!(image_id(&"ab".repeat(32)).is_ok());
        assert!(image_id("abc").is_err());
        assert!(image_id(&"AB".repeat(32)).is_err());
    }
}
