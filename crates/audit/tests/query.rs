//! Query filters, follow mode across rotation, and export as JSON lines and RFC 5424 syslog.

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, SystemTime};

use isc_audit::{
    export, format_syslog, query, Actor, AuditConfig, AuditLog, Durability, ExportFormat,
    ExportSink, Filter, Follower, Kind, Record,
};
use serde_json::json;

fn open(tmp: &std::path::Path) -> AuditLog {
    let mut c = AuditConfig::new(tmp.join("keys"));
    c.durability = Durability::None;
    c.checkpoint_interval = None;
    c.max_file_bytes = 2000;
    AuditLog::open(&tmp.join("audit"), c).unwrap().0
}

#[test]
fn filters_by_isc_kind_and_time() {
    let tmp = tempfile::tempdir().unwrap();
    let log = open(tmp.path());
    log.append(Some("a"), Kind::IscStart, Actor::Uid(1), json!({})).unwrap();
    log.append(Some("b"), Kind::IscStart, Actor::Uid(1), json!({})).unwrap();
    std::thread::sleep(Duration::from_millis(5));
    let mid = SystemTime::now();
    log.append(Some("a"), Kind::IscStop, Actor::Uid(1), json!({})).unwrap();
    let only_a =
        |kinds: Vec<Kind>, since| Filter { isc: Some("a".into()), kinds, since, after_seq: None };
    let dir = log.dir().to_owned();
    assert_eq!(query(&dir, &only_a(vec![], None)).unwrap().len(), 2);
    let stops = query(&dir, &only_a(vec![Kind::IscStop], None)).unwrap();
    assert_eq!((stops.len(), stops[0].seq), (1, 3));
    let late = query(&dir, &only_a(vec![], Some(mid))).unwrap();
    assert_eq!(late.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![3]);
}

#[test]
fn follow_sees_new_records_across_rotation() {
    let tmp = tempfile::tempdir().unwrap();
    let log = open(tmp.path());
    log.append(Some("old"), Kind::IscStart, Actor::Isc, json!({})).unwrap();
    let filter = Filter { kinds: vec![Kind::IscExit], ..Filter::default() };
    let mut f = Follower::new(log.dir(), filter, true)
        .unwrap()
        .with_poll_interval(Duration::from_millis(5));
    assert!(f.next_timeout(Duration::from_millis(20)).unwrap().is_none());
    std::thread::scope(|s| {
        s.spawn(|| {
            for i in 0..40 {
                log.append(Some("web"), Kind::IscExit, Actor::Isc, json!({"status": i})).unwrap();
            }
        });
        for i in 0..40 {
            let r = f.next_timeout(Duration::from_secs(5)).unwrap().expect("followed");
            assert_eq!(r.detail["status"], i);
        }
    });
    assert!(isc_audit::list_files(log.dir()).unwrap().len() > 1, "rotated while following");
}

fn sample() -> Record {
    Record {
        seq: 9,
        time: "2026-01-02T03:04:05.123456789Z".into(),
        isc: Some("we\"b".into()),
        kind: Kind::SeccompDenial,
        actor: Actor::Kernel,
        detail: json!({"syscall": 110}),
        prev: "0".repeat(64),
        hash: "a".repeat(64),
    }
}

#[test]
fn syslog_format_is_rfc5424() {
    let m = format_syslog(&sample(), "host1", "isc");
    assert_eq!(
        m,
        format!(
            "<108>1 2026-01-02T03:04:05.123456Z host1 isc - seccomp_denial [isc@32473 seq=\"9\" \
             isc=\"we\\\"b\" actor=\"kernel\" hash=\"{}\"] \u{feff}{{\"syscall\":110}}",
            "a".repeat(64)
        )
    );
}

#[test]
fn exports_to_a_unix_datagram_socket_and_a_file() {
    let tmp = tempfile::tempdir().unwrap();
    let sock_path = tmp.path().join("log.sock");
    let server = UnixDatagram::bind(&sock_path).unwrap();
    server.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let fmt = ExportFormat::Syslog { hostname: "h".into(), app_name: "isc".into() };
    let recs = vec![sample(), sample()];
    assert_eq!(export(&recs, &fmt, &ExportSink::UnixDatagram(sock_path)).unwrap(), 2);
    let mut buf = [0u8; 4096];
    let n = server.recv(&mut buf).unwrap();
    assert!(std::str::from_utf8(&buf[..n]).unwrap().starts_with("<108>1 "));

    let file = tmp.path().join("out.jsonl");
    export(&recs, &ExportFormat::JsonLines, &ExportSink::File(file.clone())).unwrap();
    let text = std::fs::read_to_string(&file).unwrap();
    let back: Record = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(back, sample());
}
