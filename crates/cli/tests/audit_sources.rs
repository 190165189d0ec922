//! Issue 7: the security-relevant operations outside a run are on the trail too — secret set,
//! read at start and removal, image builds, verify results — attributed to the caller.

mod common;

use std::io::Write;
use std::process::Stdio;

use common::*;
use serde_json::Value;

fn kinds(env: &Env) -> Vec<(String, Value)> {
    let out = env.cmd().args(["audit", "show", "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .map(|r| (r["kind"].as_str().unwrap().to_string(), r))
        .collect()
}

#[test]
fn secrets_images_and_verify_results_are_audited() {
    let env = Env::new("asrc");
    let mut set = env
        .cmd()
        .args(["secret", "set", "tok", "--isc", "asrc"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    set.stdin.take().unwrap().write_all(b"s3cr3t-canary").unwrap();
    assert!(set.wait().unwrap().success());

    let m = env.manifest(
        "asrc",
        &["/bin/sh", "-c", "test -s /run/secrets/tok"],
        "[secrets]\ntok = {}\n",
    );
    let out = env.run(&m, &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(env.cmd().args(["image", "build"]).arg(&m).output().unwrap().status.success());
    let out = env.cmd().args(["secret", "rm", "tok", "--isc", "asrc"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let recs = kinds(&env);
    let find = |k: &str| {
        recs.iter().find(|(kind, _)| kind == k).map(|(_, r)| r.clone()).unwrap_or_else(|| {
            panic!("no {k} record in {:?}", recs.iter().map(|(k, _)| k).collect::<Vec<_>>())
        })
    };
    let set = find("secret_set");
    assert_eq!(
        (set["isc"].as_str(), set["actor"].clone()),
        (Some("asrc"), serde_json::json!({"uid": 0}))
    );
    assert_eq!(find("secret_read")["detail"]["secrets"], serde_json::json!(["tok"]));
    assert_eq!(find("secret_remove")["detail"]["secret"], "tok");
    assert!(find("image_build")["detail"]["id"].as_str().unwrap().len() == 64);
    // Never a value.
    let all = String::from_utf8_lossy(
        &env.cmd().args(["audit", "show", "--json"]).output().unwrap().stdout,
    )
    .into_owned();
    assert!(!all.contains("s3cr3t-canary"), "a secret value reached the audit trail");
    let verified = env.cmd().args(["audit", "verify"]).output().unwrap();
    assert!(
        matches!(verified.status.code(), Some(0) | Some(2)),
        "{}",
        String::from_utf8_lossy(&verified.stderr)
    );
    assert_nothing_left(&env);
}
