//! Rendering a [`Manifest`] back to `isc.toml` text: every field explicit, in the manifest's own
//! spellings, so `parse(render(m)) == m`.

use toml::{Table, Value};

use crate::types::*;
use crate::units::{format_duration, format_rate, format_size};

fn s(v: impl Into<String>) -> Value {
    Value::String(v.into())
}

fn int(v: u64) -> Value {
    // Every integer in a validated manifest is far below i64::MAX (ids, ports, limits).
    Value::Integer(i64::try_from(v).unwrap_or(i64::MAX))
}

fn strings<I: IntoIterator<Item = T>, T: Into<String>>(items: I) -> Value {
    Value::Array(items.into_iter().map(|i| s(i)).collect())
}

fn table<const N: usize>(entries: [(&str, Value); N]) -> Table {
    entries.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

/// The manifest as TOML text with every default made explicit.
pub(crate) fn to_toml_string(m: &Manifest) -> String {
    let mut top = Table::new();
    top.insert("name".into(), s(&m.name));
    top.insert("profile".into(), s(m.profile.as_str()));
    top.insert("hostname".into(), s(&m.hostname));

    let svc = &m.service;
    let env: Table = svc.env.iter().map(|(k, v)| (k.clone(), s(v))).collect();
    top.insert(
        "service".into(),
        Value::Table(table([
            ("exec", strings(svc.exec.iter().cloned())),
            ("user", int(svc.user.into())),
            ("group", int(svc.group.into())),
            ("workdir", s(svc.workdir.display().to_string())),
            ("env", Value::Table(env)),
            ("restart", s(svc.restart.as_str())),
            ("stop_timeout", s(format_duration(svc.stop_timeout))),
        ])),
    );

    let mut image = table([("source", s(m.image.source.to_string()))]);
    if m.image.source == ImageSource::Host {
        image
            .insert("paths".into(), strings(m.image.paths.iter().map(|p| p.display().to_string())));
    }
    top.insert("image".into(), Value::Table(image));

    let fs = &m.filesystem;
    let tmpfs = fs
        .tmpfs
        .iter()
        .map(|t| {
            Value::Table(table([
                ("path", s(t.path.display().to_string())),
                ("size", s(format_size(t.size))),
                ("mode", s(format!("{:04o}", t.mode))),
                ("exec", Value::Boolean(t.exec)),
            ]))
        })
        .collect();
    let volumes = fs
        .volumes
        .iter()
        .map(|v| {
            Value::Table(table([
                ("name", s(&v.name)),
                ("path", s(v.path.display().to_string())),
                ("size", s(format_size(v.size))),
                ("encrypted", Value::Boolean(v.encrypted)),
            ]))
        })
        .collect();
    top.insert(
        "filesystem".into(),
        Value::Table(table([
            ("tmpfs", Value::Array(tmpfs)),
            ("volumes", Value::Array(volumes)),
            ("sys", s(fs.sys.as_str())),
        ])),
    );

    if let Some(net) = &m.network {
        let listen = net
            .listen
            .iter()
            .map(|l| {
                let mut t = table([("port", int(l.port.into())), ("proto", s(l.proto.as_str()))]);
                if let Some(p) = &l.publish {
                    let v = match p.host_addr {
                        None => int(p.port.into()),
                        Some(_) => s(p.to_string()),
                    };
                    t.insert("publish".into(), v);
                }
                Value::Table(t)
            })
            .collect();
        let mut t = table([
            ("listen", Value::Array(listen)),
            ("egress", strings(net.egress.iter().map(|e| e.to_string()))),
            ("allow_from", strings(net.allow_from.iter().cloned())),
        ]);
        if let Some(b) = &net.bandwidth {
            t.insert(
                "bandwidth".into(),
                Value::Table(table([
                    ("ingress", s(format_rate(b.ingress_bps))),
                    ("egress", s(format_rate(b.egress_bps))),
                ])),
            );
        }
        top.insert("network".into(), Value::Table(t));
    }

    let secrets: Table = m
        .secrets
        .iter()
        .map(|(k, d)| (k.clone(), Value::Table(table([("file_name", s(&d.file_name))]))))
        .collect();
    top.insert("secrets".into(), Value::Table(secrets));

    let sec = &m.security;
    top.insert(
        "security".into(),
        Value::Table(table([
            ("allow_root", Value::Boolean(sec.allow_root)),
            ("capabilities", strings(sec.capabilities.iter().cloned())),
            ("syscalls", s(&sec.syscalls)),
            ("allow_syscalls", strings(sec.allow_syscalls.iter().cloned())),
            ("deny_syscalls", strings(sec.deny_syscalls.iter().cloned())),
        ])),
    );

    let r = &m.resources;
    let mut res = Table::new();
    res.insert("memory".into(), r.memory.map_or(s("unlimited"), |v| s(format_size(v))));
    res.insert("swap".into(), s(format_size(r.swap)));
    if let Some(cpu) = r.cpu {
        res.insert("cpu".into(), Value::Float(cpu));
    }
    if let Some(w) = r.cpu_weight {
        res.insert("cpu_weight".into(), int(w));
    }
    res.insert("pids".into(), r.pids.map_or(s("unlimited"), int));
    if let Some(c) = &r.cpuset {
        res.insert("cpuset".into(), s(c));
    }
    if let Some(w) = r.io_weight {
        res.insert("io_weight".into(), int(w));
    }
    res.insert("nofile".into(), int(r.nofile));
    if let Some(v) = r.nproc {
        res.insert("nproc".into(), int(v));
    }
    if let Some(v) = r.memlock {
        res.insert("memlock".into(), s(format_size(v)));
    }
    if let Some(v) = r.stack {
        res.insert("stack".into(), s(format_size(v)));
    }
    top.insert("resources".into(), Value::Table(res));

    toml::to_string(&top).expect("a toml::Table of plain values always serializes")
}
