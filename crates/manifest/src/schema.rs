//! JSON Schema (draft 2020-12) of the `isc.toml` *surface syntax*, for editors (e.g. taplo,
//! VS Code Even Better TOML). Written by hand because the file format (sizes as `"16M"`, egress
//! rules as strings, `publish` as integer or string) differs from the Rust types. Tests check it
//! accepts the examples and rejects what the parser rejects structurally.

use serde_json::{json, Value};

use crate::rules::{CAPABILITIES, REFUSED_ENV};

fn strict_object(properties: Value, required: &[&str]) -> Value {
    json!({
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": false
    })
}

/// The JSON Schema of `isc.toml`.
pub fn json_schema() -> Value {
    let defs = json!({
        "size": {
            "description": "Bytes, or a number with a binary suffix K, M, G, T (1K = 1024), e.g. \"128M\".",
            "oneOf": [
                { "type": "integer", "minimum": 0 },
                { "type": "string", "pattern": "^\\s*[0-9]+([bB]|[kKmMgGtT]([iI]?[bB])?)?\\s*$" }
            ]
        },
        "duration": {
            "description": "A duration like \"10s\", \"500ms\", \"2m\", \"1h\", or whole seconds.",
            "oneOf": [
                { "type": "integer", "minimum": 0, "maximum": 3600 },
                { "type": "string", "pattern": "^\\s*[0-9]+(ms|s|m|min|h)\\s*$" }
            ]
        },
        "rate": {
            "description": "Bits per second in tc notation (decimal): \"10mbit\", \"512kbit\".",
            "type": "string",
            "pattern": "^\\s*[0-9]+[kKmMgGtT]?[bB][iI][tT]\\s*$"
        },
        "dnsLabel": {
            "type": "string",
            "pattern": "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
        },
        "absPath": {
            "description": "An absolute, normalized path (no trailing '/', no '.' or '..').",
            "type": "string",
            "pattern": "^/$|^(/[^/\\u0000]+)+$"
        },
        "fileName": {
            "type": "string",
            "pattern": "^[A-Za-z0-9_.-]{1,64}$",
            "not": { "enum": [".", ".."] }
        },
        "syscall": {
            "type": "string",
            "pattern": "^[a-z_][a-z0-9_]{0,63}$"
        },
        "port": { "type": "integer", "minimum": 1, "maximum": 65535 },
        "id": { "type": "integer", "minimum": 0, "maximum": crate::types::MAX_ID }
    });

    let service = strict_object(
        json!({
            "exec": {
                "description": "The command line; exec[0] is an absolute path inside the image.",
                "type": "array", "minItems": 1,
                "prefixItems": [{ "type": "string", "pattern": "^/" }],
                "items": { "type": "string" }
            },
            "user": { "$ref": "#/$defs/id", "description": "uid inside the ISC (default 1000); 0 needs security.allow_root" },
            "group": { "$ref": "#/$defs/id", "description": "gid inside the ISC (default = user)" },
            "workdir": { "$ref": "#/$defs/absPath", "description": "default \"/\"" },
            "env": {
                "type": "object",
                "additionalProperties": { "type": "string" },
                "propertyNames": { "pattern": "^[^=\\u0000]+$", "not": { "enum": REFUSED_ENV } }
            },
            "restart": { "enum": ["never", "on-failure", "always"], "description": "default \"never\"" },
            "stop_timeout": { "$ref": "#/$defs/duration", "description": "default \"10s\"" }
        }),
        &["exec"],
    );

    let mut image = strict_object(
        json!({
            "source": {
                "description": "host | dir:PATH | oci:PATH | erofs:PATH | id:HEX",
                "type": "string",
                "pattern": "^(host|(dir|oci|erofs):.+|id:[0-9a-f]{64})$"
            },
            "paths": {
                "description": "Host files and directories copied into the image (source = \"host\" only).",
                "type": "array", "minItems": 1, "uniqueItems": true,
                "items": { "$ref": "#/$defs/absPath" }
            }
        }),
        &["source"],
    );
    image["if"] = json!({ "properties": { "source": { "const": "host" } } });
    image["then"] = json!({ "required": ["paths"] });
    image["else"] = json!({ "not": { "required": ["paths"] } });

    let mount_path = json!({ "$ref": "#/$defs/absPath", "not": { "enum": ["/"] } });
    let filesystem = strict_object(
        json!({
            "tmpfs": {
                "type": "array",
                "items": strict_object(json!({
                    "path": mount_path,
                    "size": { "$ref": "#/$defs/size", "description": "default \"16M\"" },
                    "mode": {
                        "description": "octal: 0o1777 or \"1777\" (default 1777)",
                        "oneOf": [
                            { "type": "integer", "minimum": 0, "maximum": 4095 },
                            { "type": "string", "pattern": "^(0o)?[0-7]{1,4}$" }
                        ]
                    },
                    "exec": { "type": "boolean", "description": "default false (noexec)" }
                }), &["path"])
            },
            "volumes": {
                "type": "array",
                "items": strict_object(json!({
                    "name": { "$ref": "#/$defs/fileName" },
                    "path": mount_path,
                    "size": { "$ref": "#/$defs/size" },
                    "encrypted": { "type": "boolean" }
                }), &["name", "path", "size", "encrypted"])
            },
            "sys": { "enum": ["none", "read-only"], "description": "default \"none\": no /sys" }
        }),
        &[],
    );

    let network = strict_object(
        json!({
            "listen": {
                "type": "array",
                "items": strict_object(json!({
                    "port": { "$ref": "#/$defs/port" },
                    "proto": { "enum": ["tcp", "udp"] },
                    "publish": {
                        "oneOf": [
                            { "$ref": "#/$defs/port" },
                            { "type": "string", "pattern": "^([0-9]+|[0-9.]+:[0-9]+|\\[[0-9a-fA-F:.]+\\]:[0-9]+)$" }
                        ]
                    }
                }), &["port"])
            },
            "egress": {
                "description": "[udp:]CIDR[:PORT], [udp:][IPV6-CIDR]:PORT, [udp:]HOST:PORT",
                "type": "array", "uniqueItems": true,
                "items": { "type": "string", "pattern": "^((tcp|udp):)?[^\\s]+$" }
            },
            "allow_from": {
                "type": "array", "uniqueItems": true,
                "items": { "$ref": "#/$defs/dnsLabel" }
            },
            "bandwidth": {
                "oneOf": [
                    { "$ref": "#/$defs/rate" },
                    strict_object(json!({
                        "ingress": { "$ref": "#/$defs/rate" },
                        "egress": { "$ref": "#/$defs/rate" }
                    }), &["ingress", "egress"])
                ]
            }
        }),
        &[],
    );

    let secrets = json!({
        "description": "Secrets delivered as /run/secrets/<file_name> (0400).",
        "type": "object",
        "propertyNames": { "$ref": "#/$defs/fileName" },
        "additionalProperties": strict_object(json!({ "file_name": { "$ref": "#/$defs/fileName" } }), &[])
    });

    // Case-insensitive without inline flags, which ECMA-262 regexes (editors) lack.
    let ci = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphabetic() {
                    format!("[{}{}]", c.to_ascii_uppercase(), c.to_ascii_lowercase())
                } else {
                    c.to_string()
                }
            })
            .collect()
    };
    let names: Vec<String> = CAPABILITIES.iter().map(|c| ci(c)).collect();
    let cap_pattern = format!("^({}_)?({})$", ci("CAP"), names.join("|"));
    let security = strict_object(
        json!({
            "allow_root": { "type": "boolean", "description": "default false" },
            "capabilities": {
                "type": "array", "uniqueItems": true,
                "items": { "type": "string", "pattern": cap_pattern }
            },
            "syscalls": { "enum": ["default"] },
            "allow_syscalls": { "type": "array", "uniqueItems": true, "items": { "$ref": "#/$defs/syscall" } },
            "deny_syscalls": { "type": "array", "uniqueItems": true, "items": { "$ref": "#/$defs/syscall" } }
        }),
        &[],
    );

    let weight = json!({ "type": "integer", "minimum": 1, "maximum": 10000 });
    let resources = strict_object(
        json!({
            "memory": { "oneOf": [{ "$ref": "#/$defs/size" }, { "const": "unlimited" }], "description": "default \"256M\"" },
            "swap": { "$ref": "#/$defs/size", "description": "default 0" },
            "cpu": { "type": "number", "minimum": 0.01, "maximum": 1024 },
            "cpu_weight": weight,
            "pids": {
                "oneOf": [{ "type": "integer", "minimum": 1, "maximum": 4_194_304 }, { "const": "unlimited" }],
                "description": "default 128"
            },
            "cpuset": { "type": "string", "pattern": "^\\s*[0-9]+(-[0-9]+)?(\\s*,\\s*[0-9]+(-[0-9]+)?)*\\s*$" },
            "io_weight": weight,
            "nofile": { "type": "integer", "minimum": 8, "maximum": 1_048_576, "description": "default 1024" },
            "nproc": { "type": "integer", "minimum": 1, "maximum": 4_194_304 },
            "memlock": { "$ref": "#/$defs/size" },
            "stack": { "$ref": "#/$defs/size" }
        }),
        &[],
    );

    let mut root = strict_object(
        json!({
            "name": { "$ref": "#/$defs/dnsLabel", "description": "The ISC's name, unique per Dock." },
            "profile": { "enum": ["strict", "fixed", "flexible"], "description": "default \"strict\"" },
            "hostname": { "$ref": "#/$defs/dnsLabel", "description": "default = name" },
            "service": service,
            "image": image,
            "filesystem": filesystem,
            "network": network,
            "secrets": secrets,
            "security": security,
            "resources": resources
        }),
        &["name", "service", "image"],
    );
    root["$schema"] = json!("https://json-schema.org/draft/2020-12/schema");
    root["$id"] = json!("https://isc.invalid/schema/isc.toml.json");
    root["title"] = json!("isc.toml");
    root["description"] =
        json!("Manifest of an Immutable Service Container. Undeclared means denied.");
    root["$defs"] = defs;
    root
}
