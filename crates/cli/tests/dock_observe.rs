//! The Dock observed: health checks (TCP and HTTP) that end failing runs, log timestamps and
//! `--since`, and `isc dock stats` / `events` with their live follow (harness: `dockproc`).

mod common;
mod dockproc;
mod netns;

use std::fs;
use std::io::Read;
use std::time::{Duration, Instant};

use common::ISC;
use dockproc::*;
use netns::in_private_netns;
use serde_json::Value;

#[test]
fn a_failing_health_check_ends_the_run_as_a_failure() {
    in_private_netns("a_failing_health_check_ends_the_run_as_a_failure", || {
        let d = DockProc::start(
            "dock-health",
            "[restart]\ninitial_backoff_ms = 100\nhealthy_after_ms = 60000\n",
        );
        // Answers on 8080 for 4 s, then stops listening but keeps running, and exits 0 on
        // SIGTERM: only the health check can tell, and its verdict must count as a failure.
        let script = format!(
            "trap 'exit 0' TERM; {ISC} probe serve_tcp:8080:4 >/dev/null; while :; do sleep 0.05; done"
        );
        let text = format!(
            r#"name = "isc-health"
[service]
exec = ["/bin/sh", "-c", {script:?}]
restart = "on-failure"
[image]
source = "host"
paths = ["{ISC}", "/bin/sh", "/usr/bin/sleep"]
[network]
listen = [{{ port = 8080 }}]
[resources]
memory = "32M"
"#
        );
        let m = d.env.dir.join("isc-health.toml");
        fs::write(&m, text).unwrap();
        let health = d.env.dir.join("isc-health.health.json");
        fs::write(
            &health,
            r#"{"tcp": 8080, "interval_ms": 200, "timeout_ms": 300, "retries": 2, "start_period_ms": 800}"#,
        )
        .unwrap();
        // `isc up --health-tcp` would use the default timings; apply reads NAME.health.json.
        let dir = d.env.dir.join("desired");
        fs::create_dir_all(&dir).unwrap();
        fs::rename(&m, dir.join("isc-health.toml")).unwrap();
        fs::rename(&health, dir.join("isc-health.health.json")).unwrap();
        apply(&d, &dir);
        std::thread::sleep(Duration::from_millis(1600));
        let r = d.record("isc-health");
        assert_eq!(
            (r["status"].as_str(), r["health_failures"].as_u64()),
            (Some("running"), Some(0)),
            "{r}"
        );
        let r = d.wait_restarted("isc-health", Duration::from_secs(15));
        assert_eq!(r["health_failures"], 1, "{r}");
        assert_eq!(r["last_exit"]["status"], 0, "the service exited 0 on SIGTERM: {r}");
        let reason = r["last_exit"]["reason"].as_str().unwrap_or_default();
        assert!(reason.contains("health check failed") && reason.contains(":8080"), "{r}");
        let metrics = String::from_utf8_lossy(&d.ok(&["dock", "metrics"]).stdout).into_owned();
        assert!(metrics.contains("isc_health_failures_total{isc=\"isc-health\"} 1"), "{metrics}");
        d.ok(&["dock", "rm", "isc-health"]);
        common::assert_nothing_left(&d.env);
    });
}

#[test]
fn http_health_checks_mark_healthy_and_end_a_failing_run() {
    in_private_netns("http_health_checks_mark_healthy_and_end_a_failing_run", || {
        let d = DockProc::start(
            "dock-http",
            "[restart]\ninitial_backoff_ms = 100\nhealthy_after_ms = 60000\n",
        );
        let timings = [
            "--health-interval-ms",
            "200",
            "--health-timeout-ms",
            "2000",
            "--health-retries",
            "2",
            "--health-start-period-ms",
            "300",
        ];
        let good = httpd_manifest(&d, "isc-http-ok");
        let text = fs::read_to_string(&good).unwrap();
        let text = text.replace("[network]\n", "[network]\nallow_from = [\"isc-nobody\"]\n");
        fs::write(&good, text).unwrap();
        let bad = httpd_manifest(&d, "isc-http-404");
        for (m, path) in [(&good, "/healthz"), (&bad, "/missing")] {
            let mut args = vec!["up", m.to_str().unwrap(), "--health-http", "8080"];
            args.extend(["--health-path", path]);
            args.extend(timings);
            d.ok(&args);
        }
        // `up` does not refuse an allow_from name that is not on the Dock, but says so.
        let r = d.record("isc-http-ok");
        assert_eq!(
            r["message"],
            "allow_from names `isc-nobody`, not on this Dock: nothing from there is let in until an ISC of that name runs here",
            "{r}"
        );
        // The server answers 200 on /healthz: healthy, in ps, inspect, metrics and events.
        let t = Instant::now();
        let r = loop {
            let r = d.record("isc-http-ok");
            if r["health_state"] == "healthy" {
                break r;
            }
            assert!(t.elapsed() < Duration::from_secs(15), "never healthy: {r}");
            std::thread::sleep(Duration::from_millis(50));
        };
        assert_eq!(r["health"]["http"], 8080, "{r}");
        assert_eq!(r["health"]["path"], "/healthz", "{r}");
        let table = String::from_utf8_lossy(&d.ok(&["dock", "ps"]).stdout).into_owned();
        let line = table.lines().find(|l| l.starts_with("isc-http-ok ")).unwrap();
        assert_eq!(
            line.split_whitespace().take(3).collect::<Vec<_>>(),
            ["isc-http-ok", "running", "healthy"],
            "{table}"
        );
        let inspect: Value =
            serde_json::from_slice(&d.ok(&["dock", "inspect", "isc-http-ok"]).stdout).unwrap();
        assert_eq!(inspect["record"]["health_state"], "healthy");

        // /missing is a 404: two failed checks in a row end the run as a failure, and the
        // on-failure policy restarts it.
        let r = d.wait_restarted("isc-http-404", Duration::from_secs(15));
        assert!(r["health_failures"].as_u64() >= Some(1), "{r}");
        let reason = r["last_exit"]["reason"].as_str().unwrap_or_default();
        assert!(
            reason.starts_with("health check failed: GET http://")
                && reason.ends_with(":8080/missing: status 404 (wanted 2xx or 3xx)"),
            "{r}"
        );
        // The healthy one was never touched.
        let ok = d.record("isc-http-ok");
        assert_eq!(
            (ok["restarts"].as_u64(), ok["health_failures"].as_u64()),
            (Some(0), Some(0)),
            "{ok}"
        );
        let metrics = String::from_utf8_lossy(&d.ok(&["dock", "metrics"]).stdout).into_owned();
        assert!(metrics.contains("isc_healthy{isc=\"isc-http-ok\"} 1"), "{metrics}");
        let kinds = |isc: &str| -> Vec<String> {
            events_of(&d, isc).iter().map(|e| e["kind"].as_str().unwrap().to_string()).collect()
        };
        assert_eq!(kinds("isc-http-ok"), ["created", "started", "warning", "healthy"]);
        // Events are published just after the record is saved: wait for them.
        let t = Instant::now();
        let bad_kinds = loop {
            let k = kinds("isc-http-404");
            if k.len() >= 5 || t.elapsed() > Duration::from_secs(10) {
                break k;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        assert_eq!(bad_kinds[..5], ["created", "started", "unhealthy", "exited", "restarting"]);
        for n in ["isc-http-ok", "isc-http-404"] {
            d.ok(&["dock", "rm", n]);
        }
        common::assert_nothing_left(&d.env);
    });
}

fn now_us() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros() as u64
}

#[test]
fn logs_have_timestamps_and_since_selects_by_them() {
    let d = DockProc::start("dock-since", "");
    let m = d.manifest("isc-since", "echo before; sleep 1.5; echo after; exec sleep 1000", "", "");
    let t_up = now_us();
    d.ok(&["up", m.to_str().unwrap()]);
    let logs = |args: &[&str]| -> String {
        let mut a = vec!["dock", "logs", "isc-since"];
        a.extend(args);
        String::from_utf8(d.ok(&a).stdout).unwrap()
    };
    let t = Instant::now();
    while logs(&[]) != "before\nafter\n" {
        assert!(t.elapsed() < Duration::from_secs(15), "output: {:?}", logs(&[]));
        std::thread::sleep(Duration::from_millis(50));
    }
    let t_seen = now_us();
    // -t: each line behind the time the monitor read it (UTC, µs).
    let stamped = logs(&["--timestamps"]);
    let lines: Vec<(u64, &str)> = stamped
        .lines()
        .map(|l| {
            let (ts, text) = l.split_once(' ').unwrap();
            assert_eq!((ts.len(), &ts[ts.len() - 1..]), (27, "Z"), "{l}");
            (isc_dock::logs::parse_rfc3339(ts).unwrap(), text)
        })
        .collect();
    assert_eq!(lines.iter().map(|l| l.1).collect::<Vec<_>>(), ["before", "after"]);
    let (t_before, t_after) = (lines[0].0, lines[1].0);
    assert!(t_up <= t_before && t_before < t_after && t_after <= t_seen, "{stamped}");

    // --since between the two lines, as RFC 3339 (also with an offset) and as Unix seconds.
    let mid = (t_before + t_after) / 2;
    let mid_utc = isc_engine::logfile::format_timestamp(mid);
    assert_eq!(logs(&["--since", &mid_utc]), "after\n");
    let mid_plus_one = {
        // The same instant written in UTC+01:00.
        let shifted = isc_engine::logfile::format_timestamp(mid + 3_600_000_000);
        format!("{}+01:00", &shifted[..26])
    };
    assert_eq!(logs(&["--since", &mid_plus_one]), "after\n");
    assert_eq!(logs(&["--since", &(t_after / 1_000_000).to_string()]), "after\n");
    assert_eq!(logs(&["--since", "10m"]), "before\nafter\n");
    assert_eq!(logs(&["--since", "2099-01-01T00:00:00Z"]), "");
    assert_eq!(logs(&["--since", "10m", "--tail", "1"]), "after\n");
    assert_eq!(
        logs(&["--timestamps", "--tail", "1"]),
        format!("{}\n", stamped.lines().nth(1).unwrap())
    );
    let bad = d.cli(&["dock", "logs", "isc-since", "--since", "yesterday"]);
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("`yesterday` is not a time; fix:"), "{err}");

    // -f with --since: the old line is left out, the following starts at once.
    let follower = d.follow(&["dock", "logs", "-f", "isc-since", "--since", &mid_utc], |all| {
        all.ends_with('\n')
    });
    assert_eq!(follower.finish(Duration::from_secs(15)), "after\n");
    d.ok(&["dock", "rm", "isc-since"]);
}

#[test]
fn stats_and_events_through_the_dock() {
    in_private_netns("stats_and_events_through_the_dock", || {
        let d = DockProc::start("dock-stats", "");
        let web = httpd_manifest(&d, "isc-stats-web");
        // A child of the service allocates past the limit: the kernel kills it, the service lives.
        let oom = d.manifest(
            "isc-oom",
            &format!("{ISC} probe alloc:256 >/dev/null; echo survived; exec sleep 1000"),
            "",
            "",
        );
        let text = fs::read_to_string(&oom)
            .unwrap()
            .replace("paths = [", &format!("paths = [\"{ISC}\", "))
            .replace("memory = \"16M\"", "memory = \"32M\"");
        fs::write(&oom, text).unwrap();
        d.ok(&["up", web.to_str().unwrap(), oom.to_str().unwrap()]);

        // Traffic to the web ISC shows in its network counters (from the ISC's side).
        let ip = isc_dock::health::isc_address(&d.state(), "isc-stats-web").unwrap();
        let t = Instant::now();
        let answer = loop {
            use std::io::Write;
            let got = std::net::TcpStream::connect((ip, 8080)).and_then(|mut s| {
                s.set_read_timeout(Some(Duration::from_secs(5)))?;
                s.write_all(b"GET /healthz HTTP/1.0\r\n\r\n")?;
                let mut a = String::new();
                s.read_to_string(&mut a)?;
                Ok(a)
            });
            match got {
                Ok(a) => break a,
                Err(e) => {
                    assert!(t.elapsed() < Duration::from_secs(10), "httpd never answered: {e}")
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(answer.starts_with("HTTP/1.1 200 OK") && answer.ends_with("ok\n"), "{answer}");
        let s = stats_of(&d, "isc-stats-web");
        assert_eq!(
            (s["name"].as_str(), s["status"].as_str()),
            (Some("isc-stats-web"), Some("running")),
            "{s}"
        );
        let u = &s["usage"];
        assert_eq!(u["memory_limit"], 32 << 20, "{s}");
        assert!(
            u["memory_current"].as_u64() > Some(0) && u["pids_current"].as_u64() >= Some(1),
            "{s}"
        );
        assert!(u["cpu_usage_usec"].as_u64() > Some(0), "{s}");
        let net = &s["net"];
        assert!(net["rx_bytes"].as_u64() >= Some(24) && net["tx_bytes"].as_u64() > Some(0), "{s}");
        assert!(net["rx_packets"].as_u64() >= Some(1), "{s}");

        // The OOM kill inside isc-oom is an event; the ISC keeps running.
        let t = Instant::now();
        let oom_event = loop {
            if let Some(e) = events_of(&d, "isc-oom").into_iter().find(|e| e["kind"] == "oom") {
                break e;
            }
            assert!(
                t.elapsed() < Duration::from_secs(15),
                "no oom event: {:?}",
                events_of(&d, "isc-oom")
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        assert_eq!(oom_event["detail"]["oom_kills"], 1, "{oom_event}");
        assert_eq!(oom_event["detail"]["new"], 1, "{oom_event}");
        let kinds: Vec<Value> =
            events_of(&d, "isc-oom").iter().map(|e| e["kind"].clone()).collect();
        assert_eq!(kinds, ["created", "started", "oom"], "only isc-oom's events");
        assert_eq!(d.record("isc-oom")["status"], "running");
        assert_eq!(stats_of(&d, "isc-oom")["limit_events"]["oom_kills"], 1);
        let t = Instant::now();
        while !String::from_utf8_lossy(&d.ok(&["dock", "logs", "isc-oom"]).stdout)
            .contains("survived")
        {
            assert!(t.elapsed() < Duration::from_secs(10), "the service did not go on");
            std::thread::sleep(Duration::from_millis(50));
        }

        // All ISCs at once, as JSON and as a table; the same figures in the metrics.
        let all: Vec<Value> =
            serde_json::from_slice(&d.ok(&["dock", "stats", "--json"]).stdout).unwrap();
        let names: Vec<&str> = all.iter().map(|s| s["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["isc-oom", "isc-stats-web"]);
        assert!(all[0]["net"].is_null(), "isc-oom has no network: {}", all[0]);
        let table = String::from_utf8_lossy(&d.ok(&["dock", "stats"]).stdout).into_owned();
        assert!(
            table.starts_with("NAME ")
                && table.contains("isc-stats-web")
                && table.contains("32.0 MiB"),
            "{table}"
        );
        let metrics = String::from_utf8_lossy(&d.ok(&["dock", "metrics"]).stdout).into_owned();
        assert!(metrics.contains("isc_oom_kills{isc=\"isc-oom\"} 1"), "{metrics}");
        assert!(
            metrics.contains("isc_network_transmit_bytes_total{isc=\"isc-stats-web\"} "),
            "{metrics}"
        );

        // events -f streams what happens from now on.
        let follower = d
            .follow(&["dock", "events", "-f", "--json", "--isc", "isc-stats-web"], |all| {
                all.contains("\"kind\":\"exited\"")
            });
        // The follower has its head (created, started) once it is subscribed.
        std::thread::sleep(Duration::from_millis(300));
        d.ok(&["dock", "stop", "isc-stats-web"]);
        let streamed: Vec<Value> = follower
            .finish(Duration::from_secs(15))
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let kinds: Vec<&str> = streamed.iter().map(|e| e["kind"].as_str().unwrap()).collect();
        assert_eq!(kinds, ["created", "started", "stopping", "exited"]);
        let stopped = stats_of(&d, "isc-stats-web");
        assert_eq!(stopped["status"], "exited");
        assert!(stopped["usage"].is_null() && stopped["net"].is_null(), "{stopped}");
        let missing = d.cli(&["dock", "stats", "isc-nope"]);
        assert!(String::from_utf8_lossy(&missing.stderr).contains("no ISC named `isc-nope`"));
        for n in ["isc-oom", "isc-stats-web"] {
            d.ok(&["dock", "rm", n]);
        }
        common::assert_nothing_left(&d.env);
    });
}
