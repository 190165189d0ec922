//! Shared fixtures: a table of bad manifests, each with the exact error location expected.

#![allow(dead_code)] // each test binary uses a different part of this module

use isc_manifest::ErrorKind;

/// A valid manifest with insertion points. Lines with `top = ""` and `service = ""`:
/// 1 name, 2 [image], 3 source, 4 paths, 5 [service], 6 exec, 7 = first line of `service`/`rest`.
pub fn doc(top: &str, service: &str, rest: &str) -> String {
    format!(
        "{top}name = \"web\"\n[image]\nsource = \"host\"\npaths = [\"/bin/sh\"]\n[service]\nexec = [\"/bin/sh\"]\n{service}{rest}"
    )
}

/// One bad manifest and what its error must say.
pub struct Case {
    pub name: &'static str,
    pub text: String,
    pub line: usize,
    pub column: usize,
    pub key: Option<&'static str>,
    pub kind: ErrorKind,
    pub contains: &'static str,
}

fn case(
    name: &'static str,
    text: String,
    (line, column): (usize, usize),
    key: Option<&'static str>,
    kind: ErrorKind,
    contains: &'static str,
) -> Case {
    Case { name, text, line, column, key, kind, contains }
}

fn replace(text: String, from: &str, to: &str) -> String {
    assert!(text.contains(from), "fixture lacks {from:?}");
    text.replace(from, to)
}

/// Every error path of the parser.
pub fn cases() -> Vec<Case> {
    use ErrorKind::*;
    let base = || doc("", "", "");
    let sec = |body: &str| doc("", "", &format!("[security]\n{body}\n"));
    let res = |body: &str| doc("", "", &format!("[resources]\n{body}\n"));
    let fs = |body: &str| doc("", "", &format!("[filesystem]\n{body}\n"));
    let net = |body: &str| doc("", "", &format!("[network]\n{body}\n"));
    let secrets = |body: &str| doc("", "", &format!("[secrets]\n{body}\n"));
    let svc = |body: &str| doc("", &format!("{body}\n"), "");
    vec![
        // --- syntax
        case("unterminated string", "name = \"web\n".into(), (1, 12), None, Syntax, "invalid TOML"),
        case("duplicate key", doc("name = \"a\"\n", "", ""), (2, 1), Some("name"), Syntax, "duplicate key"),
        // --- top level
        case("unknown top key", doc("colour = \"red\"\n", "", ""), (1, 1), Some("colour"), UnknownKey, "valid keys are: name, profile, hostname"),
        case("name not a label", replace(base(), "\"web\"", "\"Web_1\""), (1, 8), Some("name"), InvalidValue, "DNS label"),
        case("name too long", replace(base(), "\"web\"", &format!("\"{}\"", "a".repeat(64))), (1, 8), Some("name"), InvalidValue, "at most 63"),
        case("name wrong type", replace(base(), "\"web\"", "5"), (1, 8), Some("name"), WrongType, "got integer `5`"),
        case("name missing", replace(base(), "name = \"web\"\n", ""), (1, 1), Some("name"), MissingKey, "missing required key `name`"),
        case("profile unknown", doc("profile = \"loose\"\n", "", ""), (1, 11), Some("profile"), InvalidValue, "one of \"strict\", \"fixed\", \"flexible\""),
        case("hostname not a label", doc("hostname = \"a.b\"\n", "", ""), (1, 12), Some("hostname"), InvalidValue, "DNS label"),
        case("section wrong type", "name = \"web\"\nservice = 5\n".into(), (2, 11), Some("service"), WrongType, "expected a table"),
        case("service missing", "name = \"web\"\n[image]\nsource = \"host\"\npaths = [\"/a\"]\n".into(), (1, 1), Some("service"), MissingKey, "missing required key `service`"),
        case("image missing", "name = \"web\"\n[service]\nexec = [\"/a\"]\n".into(), (1, 1), Some("image"), MissingKey, "missing required key `image`"),
        // --- [service]
        case("service unknown key with suggestion", svc("usr = 5"), (7, 1), Some("service.usr"), UnknownKey, "valid keys are: exec, user, group"),
        case("exec missing", "name = \"web\"\n[image]\nsource = \"host\"\npaths = [\"/a\"]\n[service]\nuser = 5\n".into(), (5, 1), Some("service.exec"), MissingKey, "missing required key `exec`"),
        case("exec empty", replace(base(), "exec = [\"/bin/sh\"]", "exec = []"), (6, 8), Some("service.exec"), InvalidValue, "non-empty command line"),
        case("exec relative", replace(base(), "exec = [\"/bin/sh\"]", "exec = [\"sh\"]"), (6, 9), Some("service.exec[0]"), InvalidValue, "absolute path to the executable"),
        case("exec wrong type", replace(base(), "exec = [\"/bin/sh\"]", "exec = \"/bin/sh\""), (6, 8), Some("service.exec"), WrongType, "expected an array of strings, got string"),
        case("exec element wrong type", replace(base(), "exec = [\"/bin/sh\"]", "exec = [\"/bin/sh\", 1]"), (6, 20), Some("service.exec[1]"), WrongType, "got integer"),
        case("user 0 refused", svc("user = 0"), (7, 8), Some("service.user"), Refused, "refused by default"),
        case("group 0 refused", svc("group = 0"), (7, 9), Some("service.group"), Refused, "group 0"),
        case("user out of range", svc("user = 70000"), (7, 8), Some("service.user"), InvalidValue, "between 0 and 65534, got 70000"),
        case("user negative", svc("user = -1"), (7, 8), Some("service.user"), InvalidValue, "between 0 and 65534, got -1"),
        case("user wrong type", svc("user = \"1000\""), (7, 8), Some("service.user"), WrongType, "expected a numeric id, got string"),
        case("workdir relative", svc("workdir = \"srv\""), (7, 11), Some("service.workdir"), InvalidValue, "expected an absolute path"),
        case("workdir dotdot", svc("workdir = \"/a/../b\""), (7, 11), Some("service.workdir"), Refused, "contains `..`"),
        case("env LD_PRELOAD", svc("env = { LD_PRELOAD = \"/x.so\" }"), (7, 9), Some("service.env.LD_PRELOAD"), Refused, "LD_PRELOAD makes the dynamic loader"),
        case("env LD_LIBRARY_PATH", svc("env = { LD_LIBRARY_PATH = \"/x\" }"), (7, 9), Some("service.env.LD_LIBRARY_PATH"), Refused, "LD_LIBRARY_PATH"),
        case("env LD_AUDIT", svc("env = { LD_AUDIT = \"/x\" }"), (7, 9), Some("service.env.LD_AUDIT"), Refused, "LD_AUDIT"),
        case("env name with =", svc("env = { \"A=B\" = \"x\" }"), (7, 9), Some("service.env.\"A=B\""), InvalidValue, "contains '='"),
        case("env value wrong type", svc("env = { A = 1 }"), (7, 13), Some("service.env.A"), WrongType, "expected a string value"),
        case("env not a table", svc("env = [\"A=1\"]"), (7, 7), Some("service.env"), WrongType, "expected a table of strings"),
        case("restart unknown", svc("restart = \"sometimes\""), (7, 11), Some("service.restart"), InvalidValue, "one of \"never\", \"on-failure\", \"always\""),
        case("stop_timeout bad", svc("stop_timeout = \"forever\""), (7, 16), Some("service.stop_timeout"), InvalidValue, "expected a duration like \"10s\""),
        case("stop_timeout too long", svc("stop_timeout = \"2h\""), (7, 16), Some("service.stop_timeout"), InvalidValue, "longer than one hour"),
        // --- [image]
        case("image unknown source", replace(base(), "source = \"host\"", "source = \"docker:web\""), (3, 10), Some("image.source"), InvalidValue, "expected \"host\", \"dir:PATH\""),
        case("image bad id", replace(replace(base(), "source = \"host\"", "source = \"id:xyz\""), "paths = [\"/bin/sh\"]\n", ""), (3, 10), Some("image.source"), InvalidValue, "64 lowercase hex digits"),
        case("image empty dir", replace(replace(base(), "source = \"host\"", "source = \"dir:\""), "paths = [\"/bin/sh\"]\n", ""), (3, 10), Some("image.source"), InvalidValue, "expected a path after the prefix"),
        case("paths with dir source", replace(base(), "source = \"host\"", "source = \"dir:/srv/root\""), (4, 9), Some("image.paths"), InvalidValue, "only applies to source = \"host\""),
        case("host without paths", replace(base(), "paths = [\"/bin/sh\"]\n", ""), (2, 1), Some("image.paths"), MissingKey, "missing required key `paths`"),
        case("host with empty paths", replace(base(), "paths = [\"/bin/sh\"]", "paths = []"), (4, 9), Some("image.paths"), InvalidValue, "at least one host path"),
        case("paths relative", replace(base(), "paths = [\"/bin/sh\"]", "paths = [\"bin/sh\"]"), (4, 10), Some("image.paths[0]"), InvalidValue, "expected an absolute path"),
        case("paths duplicate", replace(base(), "paths = [\"/bin/sh\"]", "paths = [\"/bin/sh\", \"/bin/sh\"]"), (4, 21), Some("image.paths[1]"), Duplicate, "already declared at `image.paths[0]`"),
        case("image unknown key", replace(base(), "source = \"host\"", "source = \"host\"\nlayers = 1"), (4, 1), Some("image.layers"), UnknownKey, "valid keys are: source, paths"),
        // --- [filesystem]
        case("filesystem unknown key", fs("mounts = []"), (8, 1), Some("filesystem.mounts"), UnknownKey, "valid keys are: tmpfs, volumes, sys"),
        case("tmpfs at /", fs("tmpfs = [{ path = \"/\" }]"), (8, 19), Some("filesystem.tmpfs[0].path"), Refused, "root `/` cannot be a mount point"),
        case("tmpfs in /proc", fs("tmpfs = [{ path = \"/proc/x\" }]"), (8, 19), Some("filesystem.tmpfs[0].path"), Refused, "inside /proc"),
        case("tmpfs in /dev", fs("tmpfs = [{ path = \"/dev/shm\" }]"), (8, 19), Some("filesystem.tmpfs[0].path"), Refused, "inside /dev"),
        case("tmpfs in /sys", fs("tmpfs = [{ path = \"/sys\" }]"), (8, 19), Some("filesystem.tmpfs[0].path"), Refused, "inside /sys"),
        case("tmpfs not normalized", fs("tmpfs = [{ path = \"/tmp/\" }]"), (8, 19), Some("filesystem.tmpfs[0].path"), InvalidValue, "not normalized"),
        case("tmpfs dotdot", fs("tmpfs = [{ path = \"/tmp/../etc\" }]"), (8, 19), Some("filesystem.tmpfs[0].path"), Refused, "contains `..`"),
        case("tmpfs missing path", fs("tmpfs = [{ size = \"1M\" }]"), (8, 10), Some("filesystem.tmpfs[0].path"), MissingKey, "missing required key `path`"),
        case("tmpfs bad size", fs("tmpfs = [{ path = \"/tmp\", size = \"lots\" }]"), (8, 34), Some("filesystem.tmpfs[0].size"), InvalidValue, "expected a size like \"128M\", got \"lots\""),
        case("tmpfs size 0", fs("tmpfs = [{ path = \"/tmp\", size = 0 }]"), (8, 34), Some("filesystem.tmpfs[0].size"), InvalidValue, "below the minimum"),
        case("tmpfs setuid mode", fs("tmpfs = [{ path = \"/tmp\", mode = 0o4777 }]"), (8, 34), Some("filesystem.tmpfs[0].mode"), Refused, "setuid"),
        case("tmpfs bad mode string", fs("tmpfs = [{ path = \"/tmp\", mode = \"rwx\" }]"), (8, 34), Some("filesystem.tmpfs[0].mode"), InvalidValue, "octal mode"),
        case("tmpfs unknown key", fs("tmpfs = [{ path = \"/tmp\", sise = \"1M\" }]"), (8, 27), Some("filesystem.tmpfs[0].sise"), UnknownKey, "valid keys are: path, size, mode, exec"),
        case("tmpfs not a table", fs("tmpfs = [\"/tmp\"]"), (8, 10), Some("filesystem.tmpfs[0]"), WrongType, "expected a table like"),
        case("tmpfs exec wrong type", fs("tmpfs = [{ path = \"/tmp\", exec = \"yes\" }]"), (8, 34), Some("filesystem.tmpfs[0].exec"), WrongType, "expected true or false"),
        case("duplicate mount", fs("tmpfs = [{ path = \"/data\" }]\nvolumes = [{ name = \"d\", path = \"/data\", size = \"8M\", encrypted = false }]"), (9, 33), Some("filesystem.volumes[0].path"), Duplicate, "already declared at `filesystem.tmpfs[0].path`"),
        case("duplicate tmpfs", fs("tmpfs = [{ path = \"/a\" }, { path = \"/a\" }]"), (8, 36), Some("filesystem.tmpfs[1].path"), Duplicate, "mount point \"/a\""),
        case("volume missing encrypted", fs("volumes = [{ name = \"d\", path = \"/data\", size = \"8M\" }]"), (8, 12), Some("filesystem.volumes[0].encrypted"), MissingKey, "no default, choose explicitly"),
        case("volume encrypted wrong type", fs("volumes = [{ name = \"d\", path = \"/data\", size = \"8M\", encrypted = \"yes\" }]"), (8, 67), Some("filesystem.volumes[0].encrypted"), WrongType, "expected true or false"),
        case("volume bad name", fs("volumes = [{ name = \"a/b\", path = \"/data\", size = \"8M\", encrypted = true }]"), (8, 21), Some("filesystem.volumes[0].name"), InvalidValue, "volume name"),
        case("volume duplicate name", fs("volumes = [{ name = \"d\", path = \"/a\", size = \"8M\", encrypted = true }, { name = \"d\", path = \"/b\", size = \"8M\", encrypted = true }]"), (8, 81), Some("filesystem.volumes[1].name"), Duplicate, "volume \"d\""),
        case("volume too small", fs("volumes = [{ name = \"d\", path = \"/a\", size = \"4K\", encrypted = true }]"), (8, 46), Some("filesystem.volumes[0].size"), InvalidValue, "below the minimum of 1M"),
        case("volume missing size", fs("volumes = [{ name = \"d\", path = \"/a\", encrypted = true }]"), (8, 12), Some("filesystem.volumes[0].size"), MissingKey, "missing required key `size`"),
        case("sys unknown", fs("sys = \"rw\""), (8, 7), Some("filesystem.sys"), InvalidValue, "one of \"none\", \"read-only\""),
        case("profile path reused", doc("profile = \"fixed\"\n", "", "[filesystem]\ntmpfs = [{ path = \"/var\" }]\n"), (9, 19), Some("filesystem.tmpfs[0].path"), Duplicate, "under profile \"fixed\""),
        case("mount in secrets dir", doc("", "", "[secrets]\ndb = {}\n[filesystem]\ntmpfs = [{ path = \"/run/secrets/x\" }]\n"), (10, 19), Some("filesystem.tmpfs[0].path"), Refused, "/run/secrets"),
        // --- [network]
        case("network unknown key", net("ports = []"), (8, 1), Some("network.ports"), UnknownKey, "valid keys are: listen, egress, allow_from, bandwidth"),
        case("listen port 0", net("listen = [{ port = 0 }]"), (8, 20), Some("network.listen[0].port"), InvalidValue, "between 1 and 65535, got 0"),
        case("listen port too big", net("listen = [{ port = 65536 }]"), (8, 20), Some("network.listen[0].port"), InvalidValue, "between 1 and 65535"),
        case("listen missing port", net("listen = [{ proto = \"tcp\" }]"), (8, 11), Some("network.listen[0].port"), MissingKey, "missing required key `port`"),
        case("listen bad proto", net("listen = [{ port = 80, proto = \"sctp\" }]"), (8, 32), Some("network.listen[0].proto"), InvalidValue, "one of \"tcp\", \"udp\""),
        case("listen duplicate port", net("listen = [{ port = 80 }, { port = 80 }]"), (8, 35), Some("network.listen[1].port"), Duplicate, "already declared at `network.listen[0].port`"),
        case("publish bad", net("listen = [{ port = 80, publish = \"localhost:80\" }]"), (8, 34), Some("network.listen[0].publish"), InvalidValue, "expected a host port like 18080"),
        case("publish duplicate", net("listen = [{ port = 80, publish = 8080 }, { port = 81, publish = \"127.0.0.1:8080\" }]"), (8, 65), Some("network.listen[1].publish"), Duplicate, "host tcp port 8080"),
        case("publish wrong type", net("listen = [{ port = 80, publish = true }]"), (8, 34), Some("network.listen[0].publish"), WrongType, "expected a host port"),
        case("egress host bits", net("egress = [\"192.0.2.10/24\"]"), (8, 11), Some("network.egress[0]"), InvalidValue, "host bits set"),
        case("egress host without port", net("egress = [\"db.internal\"]"), (8, 11), Some("network.egress[0]"), InvalidValue, "needs a port"),
        case("egress garbage", net("egress = [\"db.internal:5432\", \"!!\"]"), (8, 31), Some("network.egress[1]"), InvalidValue, "expected an egress rule"),
        case("egress duplicate", net("egress = [\"10.0.0.1:80\", \"10.0.0.1/32:80\"]"), (8, 26), Some("network.egress[1]"), Duplicate, "already declared at `network.egress[0]`"),
        case("allow_from self", net("allow_from = [\"web\"]"), (8, 15), Some("network.allow_from[0]"), InvalidValue, "own name"),
        case("allow_from bad label", net("allow_from = [\"Front End\"]"), (8, 15), Some("network.allow_from[0]"), InvalidValue, "DNS label"),
        case("allow_from duplicate", net("allow_from = [\"a\", \"a\"]"), (8, 20), Some("network.allow_from[1]"), Duplicate, "\"a\""),
        case("bandwidth bytes", net("bandwidth = \"10mbps\""), (8, 13), Some("network.bandwidth"), InvalidValue, "bytes per second"),
        case("bandwidth missing egress", net("bandwidth = { ingress = \"10mbit\" }"), (8, 13), Some("network.bandwidth.egress"), MissingKey, "missing required key `egress`"),
        case("bandwidth unknown key", net("bandwidth = { ingress = \"1mbit\", egres = \"1mbit\" }"), (8, 34), Some("network.bandwidth.egres"), UnknownKey, "valid keys are: ingress, egress"),
        case("bandwidth wrong type", net("bandwidth = 10"), (8, 13), Some("network.bandwidth"), WrongType, "expected a bit rate"),
        // --- [secrets]
        case("secret bad name", secrets("\"a/b\" = {}"), (8, 1), Some("secrets.\"a/b\""), InvalidValue, "secret name"),
        case("secret not a table", secrets("db = \"x\""), (8, 6), Some("secrets.db"), WrongType, "use {} for the defaults"),
        case("secret unknown key", secrets("db = { path = \"x\" }"), (8, 8), Some("secrets.db.path"), UnknownKey, "valid keys are: file_name"),
        case("secret bad file_name", secrets("db = { file_name = \"../x\" }"), (8, 20), Some("secrets.db.file_name"), InvalidValue, "file name"),
        case("secret duplicate file", secrets("a = { file_name = \"x\" }\nb = { file_name = \"x\" }"), (9, 19), Some("secrets.b.file_name"), Duplicate, "/run/secrets/x"),
        // --- [security]
        case("security unknown key", sec("privileged = true"), (8, 1), Some("security.privileged"), UnknownKey, "valid keys are: allow_root, capabilities"),
        case("capability unknown", sec("capabilities = [\"FLY\"]"), (8, 17), Some("security.capabilities[0]"), InvalidValue, "unknown capability \"FLY\""),
        case("capability duplicate", sec("capabilities = [\"NET_RAW\", \"cap_net_raw\"]"), (8, 28), Some("security.capabilities[1]"), Duplicate, "\"NET_RAW\""),
        case("syscalls unknown profile", sec("syscalls = \"strictest\""), (8, 12), Some("security.syscalls"), InvalidValue, "one of \"default\""),
        case("allow_syscalls bad name", sec("allow_syscalls = [\"Open\"]"), (8, 19), Some("security.allow_syscalls[0]"), InvalidValue, "syscall name"),
        case("deny_syscalls bad name", sec("deny_syscalls = [\"x-y\"]"), (8, 18), Some("security.deny_syscalls[0]"), InvalidValue, "syscall name"),
        case("syscall allowed and denied", sec("allow_syscalls = [\"ptrace\"]\ndeny_syscalls = [\"bpf\", \"ptrace\"]"), (9, 25), Some("security.deny_syscalls[1]"), Duplicate, "both allowed and denied"),
        case("allow_root wrong type", sec("allow_root = \"yes\""), (8, 14), Some("security.allow_root"), WrongType, "expected true or false"),
        // --- [resources]
        case("resources unknown key with suggestion", res("memroy = \"1G\""), (8, 1), Some("resources.memroy"), UnknownKey, "valid keys are: memory, swap"),
        case("memory not a size", res("memory = \"lots\""), (8, 10), Some("resources.memory"), InvalidValue, "expected a size like \"128M\", got \"lots\""),
        case("memory too small", res("memory = \"512K\""), (8, 10), Some("resources.memory"), InvalidValue, "below 1M"),
        case("memory wrong type", res("memory = true"), (8, 10), Some("resources.memory"), WrongType, "expected a size like"),
        case("swap not a size", res("swap = \"1X\""), (8, 8), Some("resources.swap"), InvalidValue, "expected a size"),
        case("cpu zero", res("cpu = 0"), (8, 7), Some("resources.cpu"), InvalidValue, "between 0.01 and 1024"),
        case("cpu huge", res("cpu = 2000.5"), (8, 7), Some("resources.cpu"), InvalidValue, "between 0.01 and 1024"),
        case("cpu not finite", res("cpu = inf"), (8, 7), Some("resources.cpu"), InvalidValue, "got `inf`"),
        case("cpu wrong type", res("cpu = \"half\""), (8, 7), Some("resources.cpu"), WrongType, "a number of CPUs"),
        case("cpu_weight zero", res("cpu_weight = 0"), (8, 14), Some("resources.cpu_weight"), InvalidValue, "between 1 and 10000"),
        case("io_weight too big", res("io_weight = 10001"), (8, 13), Some("resources.io_weight"), InvalidValue, "between 1 and 10000"),
        case("pids zero", res("pids = 0"), (8, 8), Some("resources.pids"), InvalidValue, "between 1 and 4194304"),
        case("pids string", res("pids = \"many\""), (8, 8), Some("resources.pids"), WrongType, "or \"unlimited\""),
        case("cpuset descending", res("cpuset = \"3-1\""), (8, 10), Some("resources.cpuset"), InvalidValue, "descending"),
        case("nofile too big", res("nofile = 2000000"), (8, 10), Some("resources.nofile"), InvalidValue, "between 8 and 1048576"),
        case("nproc zero", res("nproc = 0"), (8, 9), Some("resources.nproc"), InvalidValue, "between 1 and"),
        case("memlock bad", res("memlock = \"x\""), (8, 11), Some("resources.memlock"), InvalidValue, "expected a size"),
        case("stack too small", res("stack = \"1K\""), (8, 9), Some("resources.stack"), InvalidValue, "below 64K"),
    ]
}
