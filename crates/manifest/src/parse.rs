//! From TOML text to a validated [`Manifest`]: the top level, `[service]`, `[image]`,
//! `[security]`, `[resources]` and the cross-section rules. `[filesystem]`, `[secrets]` and
//! `[network]` live in sibling modules.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use toml::de::DeTable;

use crate::error::{ErrorKind, ManifestError, Problem};
use crate::reader::{Doc, Node, Table};
use crate::rules;
use crate::types::*;
use crate::units;

pub(crate) type Res<T> = Result<T, ManifestError>;

/// Keys of the top level, in documentation order.
pub const TOP_KEYS: &[&str] = &[
    "name",
    "profile",
    "hostname",
    "service",
    "image",
    "filesystem",
    "network",
    "secrets",
    "security",
    "resources",
];
const SERVICE_KEYS: &[&str] =
    &["exec", "user", "group", "workdir", "env", "restart", "stop_timeout"];
const IMAGE_KEYS: &[&str] = &["source", "paths"];
const SECURITY_KEYS: &[&str] =
    &["allow_root", "capabilities", "syscalls", "allow_syscalls", "deny_syscalls"];
const RESOURCES_KEYS: &[&str] = &[
    "memory",
    "swap",
    "cpu",
    "cpu_weight",
    "pids",
    "cpuset",
    "io_weight",
    "nofile",
    "nproc",
    "memlock",
    "stack",
];

/// Largest manifest accepted: bounds parser work on hostile input.
pub const MAX_MANIFEST_BYTES: usize = 1 << 20;
/// Longest `stop_timeout` accepted.
const MAX_STOP_TIMEOUT: Duration = Duration::from_secs(3600);
/// Smallest memory limit accepted: below this not even a shell starts.
const MIN_MEMORY: u64 = 1 << 20;
/// Highest CPU quota accepted (in CPUs); a sanity bound independent of the host.
const MAX_CPU: f64 = 1024.0;
/// The kernel's PID_MAX_LIMIT.
const MAX_PIDS: i64 = 4_194_304;
/// The kernel's default `fs.nr_open`, the ceiling for RLIMIT_NOFILE.
const MAX_NOFILE: i64 = 1_048_576;

/// Parses and validates a whole manifest.
pub(crate) fn parse_manifest(text: &str, origin: &Path) -> Res<Manifest> {
    let doc = Doc { text, origin };
    if text.len() > MAX_MANIFEST_BYTES {
        return Err(doc.error(
            0..0,
            "",
            Problem::refused(
                format!("the manifest is {} bytes; at most 1 MiB is accepted", text.len()),
                "check that this is the right file; a manifest is a few kilobytes",
            ),
        ));
    }
    let root = DeTable::parse(text).map_err(|e| syntax_error(&doc, &e))?;
    let top = Table { doc: &doc, prefix: String::new(), table: root.get_ref(), span: root.span() };
    top.deny_unknown(TOP_KEYS)?;

    let name_node = top.require("name", "the ISC's name", "name = \"web\"")?;
    let name = name_node.str("a name like \"web\"", "name = \"web\"")?;
    rules::dns_label("a name", name).map_err(|p| name_node.fail(p))?;

    let profile = match top.get("profile") {
        None => Profile::default(),
        Some(n) => match choice(&n, &["strict", "fixed", "flexible"], "profile = \"strict\"")? {
            "fixed" => Profile::Fixed,
            "flexible" => Profile::Flexible,
            _ => Profile::Strict,
        },
    };
    let hostname = match top.get("hostname") {
        None => name.to_string(),
        Some(n) => {
            let h = n.str("a host name like \"web\"", "hostname = \"web\"")?;
            rules::dns_label("a hostname", h).map_err(|p| n.fail(p))?;
            h.to_string()
        }
    };

    let service_node =
        top.require("service", "the service to run", "[service] exec = [\"/bin/sh\"]")?;
    let service_table = service_node.table("a table", "[service]")?;
    let service = parse_service(&service_table)?;

    let image_node =
        top.require("image", "where the root image comes from", "[image] source = \"host\"")?;
    let image = parse_image(&image_node.table("a table", "[image]")?, origin)?;

    let secrets = match top.get("secrets") {
        None => BTreeMap::new(),
        Some(n) => crate::parse_mounts::parse_secrets(&n.table("a table", "[secrets]")?)?,
    };
    let filesystem = match top.get("filesystem") {
        None => Filesystem::default(),
        Some(n) => crate::parse_mounts::parse_filesystem(
            &n.table("a table", "[filesystem]")?,
            profile,
            !secrets.is_empty(),
        )?,
    };
    let network = match top.get("network") {
        None => None,
        Some(n) => {
            Some(crate::parse_network::parse_network(&n.table("a table", "[network]")?, name)?)
        }
    };
    let security = match top.get("security") {
        None => Security::default(),
        Some(n) => parse_security(&n.table("a table", "[security]")?)?,
    };
    let resources = match top.get("resources") {
        None => Resources::default(),
        Some(n) => parse_resources(&n.table("a table", "[resources]")?)?,
    };

    // Root inside the ISC is an explicit opt-in (checked here because it spans two sections).
    if !security.allow_root {
        for (key, id) in [("user", service.user), ("group", service.group)] {
            if id == 0 {
                let node = service_table
                    .get(key)
                    .or_else(|| service_table.get("user"))
                    .expect("an id of 0 can only come from an explicit user or group key");
                return Err(node.err(
                    ErrorKind::Refused,
                    format!("{key} 0 (root inside the ISC) is refused by default"),
                    "use an unprivileged id (e.g. `user = 1000`), or set `allow_root = true` in [security] if the service truly needs it".into(),
                ));
            }
        }
    }

    Ok(Manifest {
        name: name.to_string(),
        profile,
        hostname,
        service,
        image,
        filesystem,
        network,
        secrets,
        security,
        resources,
    })
}

fn syntax_error(doc: &Doc<'_>, e: &toml::de::Error) -> ManifestError {
    let message = e.message().trim().to_string();
    let span = e.span().unwrap_or(0..0);
    // The parser does not expose the duplicated key's name; its span covers it.
    let key = doc
        .text
        .get(span.clone())
        .map(str::trim)
        .filter(|k| message.contains("duplicate") && !k.is_empty() && !k.contains('\n'))
        .map(str::to_string);
    let fix = if message.contains("duplicate") {
        "define each key or table once; merge the two definitions"
    } else if message.contains("expected `\"`") {
        "close the string with a double quote on the same line (use \"\"\" for multi-line strings)"
    } else if message.contains("string") || message.contains("quote") {
        "put string values in double quotes, e.g. name = \"web\""
    } else {
        "fix the TOML syntax here (strings in \"quotes\", tables as [name], arrays as [a, b]); see https://toml.io"
    };
    ManifestError::at(
        doc.origin,
        doc.text,
        span,
        key,
        ErrorKind::Syntax,
        format!("invalid TOML: {message}"),
        fix.to_string(),
    )
}

/// A string that must be one of `options`.
pub(crate) fn choice<'a>(node: &Node<'a, '_>, options: &[&str], example: &str) -> Res<&'a str> {
    let list = options.iter().map(|o| format!("\"{o}\"")).collect::<Vec<_>>().join(", ");
    let s = node.str(&format!("one of {list}"), example)?;
    if options.contains(&s) {
        Ok(s)
    } else {
        Err(node.err(
            ErrorKind::InvalidValue,
            format!("expected one of {list}, got {s:?}"),
            format!("write it like `{example}`"),
        ))
    }
}

/// Reports the second occurrence of something that must be unique.
pub(crate) fn duplicate(node: &Node<'_, '_>, what: &str, first_key: &str) -> ManifestError {
    node.err(
        ErrorKind::Duplicate,
        format!("{what} is already declared at `{first_key}`"),
        "declare it once; remove or change one of the two".into(),
    )
}

fn parse_service(t: &Table<'_, '_>) -> Res<Service> {
    t.deny_unknown(SERVICE_KEYS)?;
    let exec_ex = "exec = [\"/usr/bin/python3\", \"-m\", \"http.server\"]";
    let exec_node = t.require("exec", "the command line", exec_ex)?;
    let args = exec_node.strings("an array of strings", exec_ex)?;
    if args.is_empty() {
        return Err(exec_node.err(
            ErrorKind::InvalidValue,
            "expected a non-empty command line, got an empty array".into(),
            format!("write `{exec_ex}`"),
        ));
    }
    for (i, (node, arg)) in args.iter().enumerate() {
        if arg.contains('\0') {
            return Err(node
                .fail(Problem::invalid("an argument contains a NUL byte", "remove the NUL byte")));
        }
        if i == 0 && !arg.starts_with('/') {
            return Err(node.fail(Problem::invalid(
                format!("expected an absolute path to the executable, got {arg:?}"),
                format!(
                    "write the full path inside the image, e.g. \"/usr/bin/{}\"",
                    arg.rsplit('/').next().unwrap_or(arg)
                ),
            )));
        }
    }
    let exec = args.iter().map(|(_, a)| a.to_string()).collect();

    let id = |key: &str, example: &str| -> Res<Option<u32>> {
        t.get(key)
            .map(|n| n.int_in(0, MAX_ID as i64, "a numeric id", example).map(|v| v as u32))
            .transpose()
    };
    let user = id("user", "user = 1000")?.unwrap_or(DEFAULT_USER);
    let group = id("group", "group = 1000")?.unwrap_or(user);

    let workdir = match t.get("workdir") {
        None => PathBuf::from("/"),
        Some(n) => {
            let s = n.str("an absolute path", "workdir = \"/srv\"")?;
            rules::absolute_path(s, true).map_err(|p| n.fail(p))?
        }
    };

    let mut env = BTreeMap::new();
    if let Some(n) = t.get("env") {
        let table = n.table("a table of strings", "env = { LANG = \"C.UTF-8\" }")?;
        for (key_span, name, value_node) in table.entries() {
            let value = value_node.str("a string value", "env = { LANG = \"C.UTF-8\" }")?;
            rules::env_var(name, value)
                .map_err(|p| t.doc.error(key_span.clone(), &value_node.key, p))?;
            env.insert(name.to_string(), value.to_string());
        }
    }

    let restart = match t.get("restart") {
        None => RestartPolicy::default(),
        Some(n) => {
            match choice(&n, &["never", "on-failure", "always"], "restart = \"on-failure\"")? {
                "on-failure" => RestartPolicy::OnFailure,
                "always" => RestartPolicy::Always,
                _ => RestartPolicy::Never,
            }
        }
    };

    let stop_timeout = match t.get("stop_timeout") {
        None => DEFAULT_STOP_TIMEOUT,
        Some(n) => {
            let d = match n.value {
                toml::de::DeValue::Integer(_) => {
                    Duration::from_secs(
                        n.int_in(0, 3600, "seconds", "stop_timeout = \"10s\"")? as u64
                    )
                }
                _ => units::parse_duration(
                    n.str("a duration like \"10s\"", "stop_timeout = \"10s\"")?,
                )
                .map_err(|p| n.fail(p))?,
            };
            if d > MAX_STOP_TIMEOUT {
                return Err(n.fail(Problem::invalid(
                    format!(
                        "stop_timeout of {} is longer than one hour",
                        units::format_duration(d)
                    ),
                    "use at most \"1h\"; a service that needs longer to stop should checkpoint",
                )));
            }
            d
        }
    };

    Ok(Service { exec, user, group, workdir, env, restart, stop_timeout })
}

/// Lexically resolves `.` and `..` in an absolute path.
fn resolve_lexically(path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(p) => out.push(p),
            _ => {}
        }
    }
    out
}

fn parse_image(t: &Table<'_, '_>, origin: &Path) -> Res<ImageDecl> {
    t.deny_unknown(IMAGE_KEYS)?;
    let ex = "source = \"host\"";
    let node = t.require("source", "the image source", ex)?;
    let s = node.str("an image source like \"host\" or \"dir:PATH\"", ex)?;
    let path_of = |p: &str| -> Res<PathBuf> {
        if p.is_empty() || p.contains('\0') {
            return Err(node.fail(Problem::invalid(
                format!("expected a path after the prefix in {s:?}"),
                "write e.g. source = \"dir:/srv/images/web\"",
            )));
        }
        let p = Path::new(p);
        let base = origin
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .map(Path::to_path_buf)
            .or_else(|| std::env::current_dir().ok())
            .unwrap_or_else(|| PathBuf::from("/"));
        Ok(resolve_lexically(&base.join(p)))
    };
    let source = if s == "host" {
        ImageSource::Host
    } else if let Some(p) = s.strip_prefix("dir:") {
        ImageSource::Dir(path_of(p)?)
    } else if let Some(p) = s.strip_prefix("oci:") {
        ImageSource::Oci(path_of(p)?)
    } else if let Some(p) = s.strip_prefix("erofs:") {
        ImageSource::Erofs(path_of(p)?)
    } else if let Some(id) = s.strip_prefix("id:") {
        rules::image_id(id).map_err(|p| node.fail(p))?;
        ImageSource::Id(id.to_string())
    } else {
        return Err(node.fail(Problem::invalid(
            format!("expected \"host\", \"dir:PATH\", \"oci:PATH\", \"erofs:PATH\" or \"id:HEX\", got {s:?}"),
            "write e.g. source = \"host\" (with paths = [...]) or source = \"dir:./rootfs\"",
        )));
    };

    let paths_ex = "paths = [\"/usr/bin/python3\", \"/usr/lib/python3.11\"]";
    let mut paths = Vec::new();
    match (t.get("paths"), &source) {
        (None, ImageSource::Host) => {
            // Absent here, so this returns the missing-key error.
            t.require("paths", "host files to include", paths_ex)?;
        }
        (None, _) => {}
        (Some(n), ImageSource::Host) => {
            let items = n.strings("an array of absolute paths", paths_ex)?;
            if items.is_empty() {
                return Err(n.fail(Problem::invalid(
                    "expected at least one host path, got an empty array",
                    format!("list the executable and what it needs, e.g. `{paths_ex}`"),
                )));
            }
            let mut seen: BTreeMap<PathBuf, String> = BTreeMap::new();
            for (item, p) in items {
                let path = rules::absolute_path(p, true).map_err(|e| item.fail(e))?;
                if let Some(first) = seen.get(&path) {
                    return Err(duplicate(&item, &format!("path {p:?}"), first));
                }
                seen.insert(path.clone(), item.key.clone());
                paths.push(path);
            }
        }
        (Some(n), _) => {
            return Err(n.fail(Problem::invalid(
                format!("`paths` only applies to source = \"host\", but source is {s:?}"),
                "remove `paths`, or use source = \"host\"",
            )))
        }
    }
    Ok(ImageDecl { source, paths })
}

/// An array of unique names, each checked and canonicalized by `check`.
fn unique_names(
    t: &Table<'_, '_>,
    key: &str,
    what: &str,
    example: &str,
    check: impl Fn(&str) -> Result<String, Problem>,
) -> Res<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    let mut keys: Vec<String> = Vec::new();
    if let Some(n) = t.get(key) {
        for (item, s) in n.strings(what, example)? {
            let name = check(s).map_err(|p| item.fail(p))?;
            if let Some(i) = out.iter().position(|o| *o == name) {
                return Err(duplicate(&item, &format!("{name:?}"), &keys[i]));
            }
            out.push(name);
            keys.push(item.key.clone());
        }
    }
    Ok(out)
}

fn parse_security(t: &Table<'_, '_>) -> Res<Security> {
    t.deny_unknown(SECURITY_KEYS)?;
    let allow_root = match t.get("allow_root") {
        None => false,
        Some(n) => n.bool("allow_root = false")?,
    };
    let capabilities = unique_names(
        t,
        "capabilities",
        "an array of capability names",
        "capabilities = [\"NET_BIND_SERVICE\"]",
        rules::capability,
    )?;
    let syscalls = match t.get("syscalls") {
        None => "default".to_string(),
        Some(n) => choice(&n, &["default"], "syscalls = \"default\"")?.to_string(),
    };
    let syscall = |s: &str| rules::syscall_name(s).map(|()| s.to_string());
    let allow_syscalls = unique_names(
        t,
        "allow_syscalls",
        "an array of syscall names",
        "allow_syscalls = [\"io_uring_setup\"]",
        syscall,
    )?;
    let deny_syscalls = unique_names(
        t,
        "deny_syscalls",
        "an array of syscall names",
        "deny_syscalls = [\"ptrace\"]",
        syscall,
    )?;
    if let Some(both) = deny_syscalls.iter().find(|d| allow_syscalls.contains(d)) {
        let node = t.get("deny_syscalls").expect("non-empty deny list comes from the key");
        let item = node
            .array("", "")?
            .into_iter()
            .find(|n| n.value.as_str() == Some(both.as_str()))
            .expect("the name is in the array");
        return Err(item.err(
            ErrorKind::Duplicate,
            format!("syscall {both:?} is both allowed and denied"),
            "keep it in only one of allow_syscalls and deny_syscalls".into(),
        ));
    }
    Ok(Security { allow_root, capabilities, syscalls, allow_syscalls, deny_syscalls })
}

/// A size that may also be `"unlimited"` (→ `None`).
fn size_or_unlimited(n: &Node<'_, '_>, example: &str) -> Res<Option<u64>> {
    if n.value.as_str() == Some("unlimited") {
        return Ok(None);
    }
    n.size(example).map(Some)
}

fn parse_resources(t: &Table<'_, '_>) -> Res<Resources> {
    t.deny_unknown(RESOURCES_KEYS)?;
    let mut r = Resources::default();
    if let Some(n) = t.get("memory") {
        r.memory = size_or_unlimited(&n, "memory = \"128M\"")?;
        if let Some(m) = r.memory.filter(|m| *m < MIN_MEMORY) {
            return Err(n.fail(Problem::invalid(
                format!("memory limit of {m} bytes is below 1M; nothing would start"),
                "use at least \"1M\", e.g. memory = \"128M\"",
            )));
        }
    }
    if let Some(n) = t.get("swap") {
        r.swap = n.size("swap = \"0\"")?;
    }
    if let Some(n) = t.get("cpu") {
        let v = n.number("a number of CPUs like 0.5", "cpu = 0.5")?;
        if !(0.01..=MAX_CPU).contains(&v) {
            return Err(n.fail(Problem::invalid(
                format!("expected a CPU quota between 0.01 and {MAX_CPU}, got {v}"),
                "write the share of CPUs, e.g. cpu = 0.5 for half a CPU",
            )));
        }
        r.cpu = Some(v);
    }
    let weight = |key: &str, example: &str| -> Res<Option<u64>> {
        t.get(key).map(|n| n.int_in(1, 10_000, "a weight", example).map(|v| v as u64)).transpose()
    };
    r.cpu_weight = weight("cpu_weight", "cpu_weight = 100")?;
    r.io_weight = weight("io_weight", "io_weight = 100")?;
    if let Some(n) = t.get("pids") {
        r.pids = if n.value.as_str() == Some("unlimited") {
            None
        } else if n.value.is_str() {
            return Err(n.wrong_type("a number of processes or \"unlimited\"", "pids = 64"));
        } else {
            Some(n.int_in(1, MAX_PIDS, "a number of processes", "pids = 64")? as u64)
        };
    }
    if let Some(n) = t.get("cpuset") {
        let s = n.str("a CPU list like \"0-1\"", "cpuset = \"0-1\"")?;
        r.cpuset = Some(units::parse_cpuset(s).map_err(|p| n.fail(p))?);
    }
    if let Some(n) = t.get("nofile") {
        r.nofile = n.int_in(8, MAX_NOFILE, "a number of open files", "nofile = 1024")? as u64;
    }
    if let Some(n) = t.get("nproc") {
        r.nproc = Some(n.int_in(1, MAX_PIDS, "a number of processes", "nproc = 64")? as u64);
    }
    if let Some(n) = t.get("memlock") {
        r.memlock = Some(n.size("memlock = \"64K\"")?);
    }
    if let Some(n) = t.get("stack") {
        let s = n.size("stack = \"8M\"")?;
        if s < 64 * 1024 {
            return Err(n.fail(Problem::invalid(
                format!("stack limit of {s} bytes is below 64K; programs would crash at start"),
                "use at least \"64K\", e.g. stack = \"8M\"",
            )));
        }
        r.stack = Some(s);
    }
    Ok(r)
}
