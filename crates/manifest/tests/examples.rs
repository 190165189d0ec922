//! The shipped examples: they parse, round-trip, hash canonically, carry the secure defaults,
//! and agree with the JSON Schema.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use isc_manifest::*;

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples").join(name)
}

fn load(name: &str) -> Manifest {
    Manifest::load(&example(name)).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn full_example_has_every_value() {
    let m = load("full.toml");
    assert_eq!(m.name, "web");
    assert_eq!(m.hostname, "web-1");
    assert_eq!(m.service.exec[0], "/usr/bin/python3");
    assert_eq!(m.service.restart, RestartPolicy::OnFailure);
    assert_eq!(m.service.stop_timeout, Duration::from_secs(5));
    assert_eq!(m.service.env["LANG"], "C.UTF-8");
    assert_eq!(m.filesystem.tmpfs[1].mode, 0o700);
    assert_eq!(m.filesystem.tmpfs[1].size, 1 << 20);
    assert_eq!(m.filesystem.volumes[0].size, 64 << 20);
    assert!(m.filesystem.volumes[0].encrypted);
    let net = m.network.as_ref().unwrap();
    assert_eq!(net.listen[0].publish, Some(Publish { host_addr: None, port: 18080 }));
    assert_eq!(
        net.listen[1].publish,
        Some(Publish { host_addr: Some("127.0.0.1".parse().unwrap()), port: 18443 })
    );
    assert_eq!(net.listen[2].proto, Proto::Udp);
    assert_eq!(
        net.egress[3],
        EgressRule::Cidr {
            net: "192.0.2.53/32".parse().unwrap(),
            port: Some(53),
            proto: Proto::Udp
        }
    );
    assert_eq!(net.bandwidth, Some(Bandwidth { ingress_bps: 10_000_000, egress_bps: 5_000_000 }));
    assert_eq!(m.secrets["db_password"].file_name, "db_password");
    assert_eq!(m.secrets["tls_key"].file_name, "server.key");
    assert_eq!(m.security.capabilities, vec!["NET_BIND_SERVICE"]);
    assert_eq!(m.resources.memory, Some(128 << 20));
    assert_eq!(m.resources.cpu, Some(0.5));
    assert_eq!(m.resources.stack, Some(8 << 20));
    assert_eq!(
        m.writable_paths(),
        vec![PathBuf::from("/tmp"), PathBuf::from("/run/app"), PathBuf::from("/var/lib/web")]
    );
}

#[test]
fn every_example_round_trips_through_toml_and_json() {
    for name in ["full.toml", "minimal.toml", "demo.toml"] {
        let m = load(name);
        let text = m.to_toml_string();
        let again = Manifest::parse(&text, &example(name))
            .unwrap_or_else(|e| panic!("{name}: {e}\n{text}"));
        assert_eq!(again, m, "{name}: TOML round trip");
        assert_eq!(again.canonical_hash(), m.canonical_hash());
        let json = serde_json::to_string(&m).unwrap();
        let back: Manifest = serde_json::from_str(&json).unwrap();
        assert_eq!(back, m, "{name}: JSON round trip");
    }
}

#[test]
fn minimal_manifest_gets_the_secure_defaults() {
    let m = load("minimal.toml");
    assert_eq!(m.profile, Profile::Strict);
    assert_eq!(m.hostname, m.name);
    assert_eq!((m.service.user, m.service.group), (1000, 1000));
    assert_eq!(m.service.workdir, PathBuf::from("/"));
    assert!(m.service.env.is_empty(), "environment is only what is declared");
    assert_eq!(m.service.restart, RestartPolicy::Never);
    assert_eq!(m.service.stop_timeout, Duration::from_secs(10));
    assert!(m.network.is_none(), "no [network] means loopback only");
    assert!(m.filesystem.tmpfs.is_empty() && m.filesystem.volumes.is_empty());
    assert!(m.writable_paths().is_empty(), "nothing writable unless declared");
    assert_eq!(m.filesystem.sys, SysAccess::None);
    assert!(m.secrets.is_empty());
    assert_eq!(
        m.security,
        Security {
            allow_root: false,
            capabilities: vec![],
            syscalls: "default".into(),
            allow_syscalls: vec![],
            deny_syscalls: vec![],
        }
    );
    let r = &m.resources;
    assert_eq!(r.memory, Some(256 << 20));
    assert_eq!(r.swap, 0);
    assert_eq!(r.pids, Some(128));
    assert_eq!(r.nofile, 1024);
    assert_eq!((r.cpu, r.cpu_weight, r.io_weight, r.cpuset.as_deref()), (None, None, None, None));
    assert_eq!((r.nproc, r.memlock, r.stack), (None, None, None));
    assert_eq!(*r, Resources::default());
}

#[test]
fn demo_is_strict_and_runs_a_host_shell() {
    let m = Manifest::defaults_demo();
    assert_eq!(m, load("demo.toml"));
    assert_eq!(m.profile, Profile::Strict);
    assert_eq!(m.service.exec[0], "/bin/sh");
    assert!(m.service.exec[2].contains("id"));
    assert_eq!(m.image.source, ImageSource::Host);
    assert!(m.image.paths.contains(&PathBuf::from("/bin/sh")));
    assert!(m.network.is_none());
    assert_ne!(m.service.user, 0);
    assert!(m.security.capabilities.is_empty());
}

#[test]
fn canonical_hash_ignores_spelling_but_not_content() {
    let a = common::doc("", "", "[resources]\nmemory = \"16M\"\n");
    let b = common::doc(
        "",
        "user = 1000\nstop_timeout = \"10s\"\n",
        "[resources]\nmemory = 16777216\npids = 128\n",
    );
    let c = common::doc("", "", "[resources]\nmemory = \"17M\"\n");
    let h = |t: &str| Manifest::parse(t, Path::new("isc.toml")).unwrap().canonical_hash();
    assert_eq!(h(&a), h(&b));
    assert_ne!(h(&a), h(&c));
    assert_eq!(h(&a).len(), 64);
    assert!(h(&a).chars().all(|c| c.is_ascii_hexdigit()));
}

#[test]
fn relative_image_paths_resolve_against_the_manifest_directory() {
    let text = common::doc("", "", "")
        .replace("source = \"host\"", "source = \"dir:../rootfs/web\"")
        .replace("paths = [\"/bin/sh\"]\n", "");
    let m = Manifest::parse(&text, Path::new("/srv/isc/web/isc.toml")).unwrap();
    assert_eq!(m.image.source, ImageSource::Dir(PathBuf::from("/srv/isc/rootfs/web")));
    let text = text.replace("dir:../rootfs/web", "erofs:/images/web.erofs");
    let m = Manifest::parse(&text, Path::new("isc.toml")).unwrap();
    assert_eq!(m.image.source, ImageSource::Erofs(PathBuf::from("/images/web.erofs")));
    let id = "a".repeat(64);
    let m = Manifest::parse(
        &text.replace("erofs:/images/web.erofs", &format!("id:{id}")),
        Path::new("isc.toml"),
    )
    .unwrap();
    assert_eq!(m.image.source, ImageSource::Id(id));
}

/// Every alternative spelling the parser accepts (integer seconds, string modes, v6 publish, ...).
fn alternative_doc() -> String {
    common::doc(
        "profile = \"flexible\"\n",
        "stop_timeout = 3\nrestart = \"always\"\n",
        "[filesystem]\ntmpfs = [{ path = \"/tmp\", mode = \"0755\", exec = true }]\nsys = \"read-only\"\n\
         [network]\nbandwidth = \"1gbit\"\nlisten = [{ port = 53, proto = \"udp\", publish = \"[::1]:5353\" }]\n\
         [security]\ncapabilities = [\"cap_net_raw\", \"CAP_CHOWN\"]\n\
         [resources]\nmemory = \"unlimited\"\npids = \"unlimited\"\ncpu = 2\n",
    )
}

#[test]
fn alternative_spellings_parse() {
    let text = alternative_doc();
    let m = Manifest::parse(&text, Path::new("isc.toml")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(m.profile, Profile::Flexible);
    assert_eq!(m.writable_paths()[..2], [PathBuf::from("/etc"), PathBuf::from("/var")]);
    assert_eq!(m.service.stop_timeout, Duration::from_secs(3));
    assert_eq!(m.filesystem.tmpfs[0].mode, 0o755);
    assert!(m.filesystem.tmpfs[0].exec);
    assert_eq!(m.filesystem.sys, SysAccess::ReadOnly);
    let net = m.network.as_ref().unwrap();
    assert_eq!(
        net.bandwidth,
        Some(Bandwidth { ingress_bps: 1_000_000_000, egress_bps: 1_000_000_000 })
    );
    assert_eq!(net.listen[0].publish.as_ref().unwrap().to_string(), "[::1]:5353");
    assert_eq!(m.security.capabilities, vec!["NET_RAW", "CHOWN"]);
    assert_eq!((m.resources.memory, m.resources.pids, m.resources.cpu), (None, None, Some(2.0)));
    assert_eq!(Manifest::parse(&m.to_toml_string(), Path::new("isc.toml")).unwrap(), m);
}

fn toml_to_json(text: &str) -> serde_json::Value {
    let v: toml::Value = toml::from_str(text).expect("test input is valid TOML");
    serde_json::to_value(v).unwrap()
}

#[test]
fn schema_accepts_every_example_and_rendering() {
    let schema = json_schema();
    let validator =
        jsonschema::draft202012::new(&schema).expect("the schema is valid draft 2020-12");
    let errors: Vec<String> =
        validator.iter_errors(&toml_to_json(&alternative_doc())).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "alternative spellings: {errors:?}");
    for name in ["full.toml", "minimal.toml", "demo.toml"] {
        let text = std::fs::read_to_string(example(name)).unwrap();
        let errors: Vec<String> =
            validator.iter_errors(&toml_to_json(&text)).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{name}: {errors:?}");
        let rendered = load(name).to_toml_string();
        let errors: Vec<String> =
            validator.iter_errors(&toml_to_json(&rendered)).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{name} rendered: {errors:?}");
    }
}

#[test]
fn schema_rejects_unknown_keys_and_bad_shapes() {
    let schema = json_schema();
    let validator = jsonschema::draft202012::new(&schema).unwrap();
    for bad in [
        common::doc("colour = \"red\"\n", "", ""),
        common::doc("", "usr = 5\n", ""),
        common::doc("", "", "[filesystem]\ntmpfs = [{ path = \"/tmp\", sise = \"1M\" }]\n"),
        common::doc("", "", "[resources]\nmemory = \"lots\"\n"),
        common::doc("", "env = { LD_PRELOAD = \"/x\" }\n", ""),
        common::doc("", "", "").replace("source = \"host\"", "source = \"dir:/x\""),
    ] {
        assert!(!validator.is_valid(&toml_to_json(&bad)), "schema accepted:\n{bad}");
    }
}

/// Wherever the parser rejects a manifest for its *shape* (unknown key, missing key, wrong
/// type), the schema must reject it too; otherwise editors would accept what `isc` refuses.
#[test]
fn schema_agrees_with_the_parser_on_shape_errors() {
    let schema = json_schema();
    let validator = jsonschema::draft202012::new(&schema).unwrap();
    let mut checked = 0;
    for case in common::cases() {
        if !matches!(
            case.kind,
            ErrorKind::UnknownKey | ErrorKind::MissingKey | ErrorKind::WrongType
        ) {
            continue;
        }
        let Ok(value) = toml::from_str::<toml::Value>(&case.text) else { continue };
        let json = serde_json::to_value(value).unwrap();
        assert!(
            !validator.is_valid(&json),
            "{}: schema accepted a manifest the parser rejects",
            case.name
        );
        checked += 1;
    }
    assert!(checked >= 30, "only {checked} shape cases checked");
}

#[test]
fn schema_rejects_what_the_parser_rejects_by_pattern() {
    let schema = json_schema();
    let validator = jsonschema::draft202012::new(&schema).unwrap();
    let names = [
        "name not a label",
        "name too long",
        "profile unknown",
        "exec empty",
        "exec relative",
        "user out of range",
        "user negative",
        "env LD_PRELOAD",
        "env LD_AUDIT",
        "restart unknown",
        "stop_timeout bad",
        "image unknown source",
        "image bad id",
        "paths with dir source",
        "host with empty paths",
        "paths relative",
        "paths duplicate",
        "tmpfs at /",
        "tmpfs not normalized",
        "tmpfs bad size",
        "tmpfs bad mode string",
        "sys unknown",
        "listen port 0",
        "listen bad proto",
        "allow_from bad label",
        "allow_from duplicate",
        "bandwidth bytes",
        "secret bad name",
        "capability unknown",
        "syscalls unknown profile",
        "allow_syscalls bad name",
        "memory not a size",
        "cpu zero",
        "cpu_weight zero",
        "pids zero",
        "pids string",
        "nofile too big",
    ];
    let cases = common::cases();
    for name in names {
        let case =
            cases.iter().find(|c| c.name == name).unwrap_or_else(|| panic!("no case {name}"));
        let json = toml_to_json(&case.text);
        assert!(!validator.is_valid(&json), "{name}: schema accepted it");
    }
}

/// Every TOML example in docs/manifest.md parses, and the full one equals examples/full.toml.
#[test]
fn reference_page_examples_are_valid() {
    let page = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/manifest.md"),
    )
    .expect("docs/manifest.md exists");
    let blocks: Vec<&str> =
        page.split("```toml\n").skip(1).map(|rest| rest.split("```").next().unwrap()).collect();
    assert!(blocks.len() >= 2, "expected the minimal and full examples");
    let parsed: Vec<Manifest> = blocks
        .iter()
        .map(|b| Manifest::parse(b, &example("doc.toml")).unwrap_or_else(|e| panic!("{e}\n{b}")))
        .collect();
    assert!(parsed.contains(&load("minimal.toml")));
    assert!(parsed.contains(&load("full.toml")));
}
