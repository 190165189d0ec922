//! Every error path: exact line:column, dotted key, kind and a message substring; every error
//! carries a fix line and names the file.

mod common;

use std::path::Path;

use isc_manifest::{ErrorKind, Manifest};

#[test]
fn every_error_names_file_line_column_key_and_fix() {
    let mut failures = Vec::new();
    for case in common::cases() {
        let err = match Manifest::parse(&case.text, Path::new("isc.toml")) {
            Ok(_) => {
                failures.push(format!("{}: parsed, expected an error", case.name));
                continue;
            }
            Err(e) => e,
        };
        let got = (err.line(), err.column(), err.key.as_deref(), err.kind);
        let want = (Some(case.line), Some(case.column), case.key, case.kind);
        if got != want || !err.message.contains(case.contains) {
            failures.push(format!(
                "{}: want {want:?} containing {:?}\n    got {got:?}: {err}",
                case.name, case.contains
            ));
            continue;
        }
        let shown = err.to_string();
        let prefix = format!("isc.toml:{}:{}: ", case.line, case.column);
        if !shown.starts_with(&prefix) || !shown.contains("\n  fix: ") || err.fix.is_empty() {
            failures.push(format!("{}: bad rendering {shown:?}", case.name));
        }
        if let Some(key) = case.key {
            if !shown.contains(&format!("key `{key}`: ")) {
                failures.push(format!("{}: rendering lacks the key: {shown:?}", case.name));
            }
        }
    }
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn display_format_is_exact() {
    let text = common::doc("", "", "[resources]\nmemory = \"lots\"\n");
    let err = Manifest::parse(&text, Path::new("isc.toml")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "isc.toml:8:10: key `resources.memory`: expected a size like \"128M\", got \"lots\"\n  fix: write a whole number of bytes or a number with K, M, G or T (binary: 1K = 1024), e.g. \"128M\""
    );
}

#[test]
fn user_zero_is_allowed_only_with_explicit_opt_in() {
    let text = common::doc("", "user = 0\n", "[security]\nallow_root = true\n");
    let m = Manifest::parse(&text, Path::new("isc.toml")).unwrap();
    assert_eq!((m.service.user, m.service.group), (0, 0));
    let err =
        Manifest::parse(&common::doc("", "user = 0\n", ""), Path::new("isc.toml")).unwrap_err();
    assert_eq!(err.kind, ErrorKind::Refused);
    assert!(err.fix.contains("allow_root = true"), "{err}");
}

#[test]
fn unknown_key_suggests_the_close_valid_key() {
    let text = common::doc("", "usr = 5\n", "");
    let err = Manifest::parse(&text, Path::new("isc.toml")).unwrap_err();
    assert!(err.fix.contains("did you mean `user`?"), "{err}");
    let text = common::doc("", "", "[resources]\nmemroy = \"1G\"\n");
    let err = Manifest::parse(&text, Path::new("isc.toml")).unwrap_err();
    assert!(err.fix.contains("did you mean `memory`?"), "{err}");
}

#[test]
fn fixes_suggest_concrete_values() {
    let fix_of = |text: String| Manifest::parse(&text, Path::new("isc.toml")).unwrap_err().fix;
    assert!(fix_of(common::doc("", "", "[network]\negress = [\"192.0.2.10/24\"]\n"))
        .contains("192.0.2.0/24"));
    assert!(fix_of(common::doc("", "", "[filesystem]\ntmpfs = [{ path = \"/tmp/\" }]\n"))
        .contains("\"/tmp\""));
    assert!(
        fix_of(common::doc("", "", "[network]\nbandwidth = \"10mbps\"\n")).contains("\"10mbit\"")
    );
    assert!(fix_of(common::doc("", "", "[security]\ncapabilities = [\"NET_BIND\"]\n"))
        .contains("NET_BIND_SERVICE"));
}

#[test]
fn load_reports_unreadable_files_by_name() {
    let err = Manifest::load(Path::new("/nonexistent/isc-test/isc.toml")).unwrap_err();
    assert_eq!(err.kind, ErrorKind::Io);
    assert!(err.location.is_none());
    let shown = err.to_string();
    assert!(
        shown.starts_with("/nonexistent/isc-test/isc.toml: cannot read the manifest"),
        "{shown}"
    );
    assert!(shown.contains("fix: check the path"), "{shown}");
    assert!(std::error::Error::source(&err).is_some());

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("isc.toml");
    std::fs::write(&path, b"name = \"\xff\"\n").unwrap();
    let err = Manifest::load(&path).unwrap_err();
    assert_eq!(err.kind, ErrorKind::Io);
    assert!(err.message.contains("UTF-8") || err.message.contains("utf-8"), "{err}");
}

#[test]
fn oversized_manifest_is_refused_before_parsing() {
    let text = format!("name = \"web\"\n# {}\n", "x".repeat(1 << 20));
    let err = Manifest::parse(&text, Path::new("isc.toml")).unwrap_err();
    assert_eq!((err.line(), err.column(), err.kind), (Some(1), Some(1), ErrorKind::Refused));
    assert!(err.message.contains("at most 1 MiB"), "{err}");
}

#[test]
fn array_of_tables_and_dotted_keys_are_located_too() {
    let text = common::doc(
        "",
        "",
        "[[filesystem.tmpfs]]\npath = \"/tmp\"\n[[filesystem.tmpfs]]\npath = \"/proc/x\"\n",
    );
    let err = Manifest::parse(&text, Path::new("isc.toml")).unwrap_err();
    assert_eq!((err.line(), err.column()), (Some(10), Some(8)), "{err}");
    assert_eq!(err.key.as_deref(), Some("filesystem.tmpfs[1].path"));

    let text = common::doc("resources.memory = \"lots\"\n", "", "");
    let err = Manifest::parse(&text, Path::new("isc.toml")).unwrap_err();
    assert_eq!((err.line(), err.column()), (Some(1), Some(20)), "{err}");
    assert_eq!(err.key.as_deref(), Some("resources.memory"));

    let text =
        common::doc("", "", "[[filesystem.volumes]]\nname = \"d\"\npath = \"/d\"\nsize = \"8M\"\n");
    let err = Manifest::parse(&text, Path::new("isc.toml")).unwrap_err();
    assert_eq!(err.kind, ErrorKind::MissingKey);
    assert_eq!(err.key.as_deref(), Some("filesystem.volumes[0].encrypted"));
    assert_eq!(err.line(), Some(7), "{err}");
}
