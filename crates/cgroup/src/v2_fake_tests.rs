//! The v2 backend against a fake cgroupfs in a temp dir: every limit file, every event and
//! stat parser, rollback, kill and removal.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::Group;
use crate::fsops::fake::FakeV2Fs;
use crate::fsops::CgroupFs;
use crate::{collect_stale_with, CgroupError, IoThrottle, IscCgroup, Layout, Limits};

const ALL: &str = "cpuset cpu io memory hugetlb pids rdma misc";

fn fake_root(controllers: &str) -> (tempfile::TempDir, Layout) {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("cgroup");
    FakeV2Fs::root(&root, controllers);
    (tmp, Layout::V2 { mount: root })
}

fn root(layout: &Layout) -> PathBuf {
    layout.unified().unwrap().to_path_buf()
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn full_limits() -> Limits {
    Limits {
        memory: Some(64 << 20),
        swap: 0,
        cpu_quota: Some(0.5),
        cpu_weight: Some(200),
        pids: Some(32),
        cpuset: Some("1".into()),
        io_weight: Some(300),
        io_throttle: vec![
            IoThrottle {
                major: 8,
                minor: 0,
                read_bps: Some(1_048_576),
                write_iops: Some(100),
                ..Default::default()
            },
            IoThrottle {
                major: 253,
                minor: 1,
                write_bps: Some(2048),
                read_iops: Some(50),
                ..Default::default()
            },
        ],
    }
}

#[test]
fn every_limit_lands_in_its_v2_file() {
    let (_tmp, layout) = fake_root(ALL);
    let parent = Path::new("isc/dock");
    let g =
        Group::create(Arc::new(FakeV2Fs), &layout, Some(parent), "web-1", &full_limits()).unwrap();
    let leaf = root(&layout).join("isc/dock/isc-web-1");
    assert_eq!(g.paths(), vec![leaf.clone()]);
    assert_eq!(g.name(), "isc-web-1");
    assert!(g.v2_dir_fd().is_some());
    assert!(g.warnings().is_empty(), "{:?}", g.warnings());
    for dir in [root(&layout), root(&layout).join("isc"), root(&layout).join("isc/dock")] {
        let mut enabled: Vec<String> = read(&dir.join("cgroup.subtree_control"))
            .split_whitespace()
            .map(String::from)
            .collect();
        enabled.sort();
        assert_eq!(enabled, ["cpu", "cpuset", "io", "memory", "pids"], "{}", dir.display());
    }
    assert_eq!(read(&leaf.join("memory.max")), "67108864");
    assert_eq!(read(&leaf.join("memory.swap.max")), "0");
    assert_eq!(read(&leaf.join("cpu.max")), "50000 100000");
    assert_eq!(read(&leaf.join("cpu.weight")), "200");
    assert_eq!(read(&leaf.join("pids.max")), "32");
    assert_eq!(read(&leaf.join("cpuset.cpus")), "1");
    assert_eq!(read(&leaf.join("io.weight")), "default 300");
    assert_eq!(
        read(&leaf.join("io.max")),
        "8:0 rbps=1048576 wiops=100\n253:1 wbps=2048 riops=50\n"
    );
    Box::new(g).destroy().unwrap();
    assert!(!leaf.exists());
    assert!(root(&layout).join("isc/dock").is_dir(), "shared parents stay");
}

#[test]
fn unset_limits_leave_kernel_defaults_but_swap_is_always_zero() {
    let (_tmp, layout) = fake_root(ALL);
    let g =
        Group::create(Arc::new(FakeV2Fs), &layout, None, "isc-plain", &Limits::default()).unwrap();
    let leaf = root(&layout).join("isc-plain");
    assert_eq!(read(&leaf.join("memory.max")), "max\n");
    assert_eq!(read(&leaf.join("memory.swap.max")), "0");
    assert_eq!(read(&leaf.join("cpu.max")), "max 100000\n");
    assert_eq!(read(&leaf.join("pids.max")), "max\n");
    assert_eq!(read(&leaf.join("io.max")), "");
    assert!(!read(&root(&layout).join("cgroup.subtree_control")).contains("cpuset"));
    Box::new(g).destroy().unwrap();
}

#[test]
fn stats_and_events_are_parsed_from_the_v2_files() {
    let (_tmp, layout) = fake_root(ALL);
    let g = Group::create(Arc::new(FakeV2Fs), &layout, None, "stats", &full_limits()).unwrap();
    let leaf = root(&layout).join("isc-stats");
    let w = |f: &str, v: &str| std::fs::write(leaf.join(f), v).unwrap();
    w("memory.events", "low 0\nhigh 0\nmax 5\noom 2\noom_kill 1\noom_group_kill 0\n");
    w("pids.events", "max 7\n");
    w(
        "cpu.stat",
        "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\nnr_periods 40\nnr_throttled 12\nthrottled_usec 345\n",
    );
    w("memory.current", "4096\n");
    w("memory.peak", "8192\n");
    w("pids.current", "3\n");
    w(
        "io.stat",
        "8:0 rbytes=100 wbytes=200 rios=1 wios=2 dbytes=0 dios=0\n253:1 rbytes=1 wbytes=2 rios=1 wios=1 dbytes=0 dios=0\n",
    );
    let e = g.events().unwrap();
    assert_eq!((e.oom_kills, e.memory_max_hits, e.pids_max_hits), (1, 5, 7));
    assert_eq!((e.cpu_periods, e.throttled_periods, e.throttled_usec), (40, 12, 345));
    let s = g.stats().unwrap();
    assert_eq!(s.cpu_usage_usec, Some(1500));
    assert_eq!((s.cpu_user_usec, s.cpu_system_usec), (Some(1000), Some(500)));
    assert_eq!(
        (s.memory_current, s.memory_peak, s.memory_limit),
        (Some(4096), Some(8192), Some(64 << 20))
    );
    assert_eq!((s.pids_current, s.pids_limit), (Some(3), Some(32)));
    assert_eq!((s.io_read_bytes, s.io_write_bytes), (Some(101), Some(202)));
    let json = serde_json::to_value(&s).unwrap();
    assert_eq!(json["memory_limit"], 67108864);
    Box::new(g).destroy().unwrap();
}

#[test]
fn unlimited_values_read_back_as_none() {
    let (_tmp, layout) = fake_root(ALL);
    let g = Group::create(Arc::new(FakeV2Fs), &layout, None, "unl", &Limits::default()).unwrap();
    let s = g.stats().unwrap();
    assert_eq!((s.memory_limit, s.pids_limit), (None, None));
    Box::new(g).destroy().unwrap();
}

#[test]
fn attach_kill_and_destroy() {
    let (_tmp, layout) = fake_root(ALL);
    let g = Group::create(Arc::new(FakeV2Fs), &layout, None, "k", &Limits::default()).unwrap();
    let leaf = root(&layout).join("isc-k");
    g.attach(4242).unwrap();
    g.attach(4243).unwrap();
    assert_eq!(read(&leaf.join("cgroup.procs")), "4242\n4243\n");
    assert_eq!(g.procs().unwrap(), vec![4242, 4243]);
    g.kill_all().unwrap();
    assert_eq!(read(&leaf.join("cgroup.kill")), "1");
    assert!(g.procs().unwrap().is_empty());
    Box::new(g).destroy().unwrap();
    assert!(!leaf.exists());
}

/// Fails writes to one interface file, to exercise rollback.
#[derive(Debug)]
struct FailWrite(&'static str);

impl CgroupFs for FailWrite {
    fn mkdir(&self, p: &Path) -> io::Result<()> {
        FakeV2Fs.mkdir(p)
    }
    fn rmdir(&self, p: &Path) -> io::Result<()> {
        FakeV2Fs.rmdir(p)
    }
    fn read(&self, p: &Path) -> io::Result<String> {
        FakeV2Fs.read(p)
    }
    fn write(&self, p: &Path, v: &str) -> io::Result<()> {
        if p.file_name().is_some_and(|n| n == self.0) {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        FakeV2Fs.write(p, v)
    }
}

#[test]
fn a_failed_limit_write_removes_what_create_made() {
    let (_tmp, layout) = fake_root(ALL);
    let err = Group::create(Arc::new(FailWrite("cpu.max")), &layout, None, "rb", &full_limits())
        .unwrap_err();
    assert!(
        matches!(&err, CgroupError::Write { path, .. } if path.ends_with("isc-rb/cpu.max")),
        "{err}"
    );
    assert!(err.to_string().contains("50000 100000"), "{err}");
    assert!(!root(&layout).join("isc-rb").exists());
}

#[test]
fn enabling_a_controller_failure_is_explained() {
    let (_tmp, layout) = fake_root(ALL);
    let err = Group::create(
        Arc::new(FailWrite("cgroup.subtree_control")),
        &layout,
        None,
        "en",
        &Limits::default(),
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("no internal processes")
            || err.to_string().contains("leaf cgroup"),
        "{err}"
    );
    assert!(!root(&layout).join("isc-en").exists());
}

#[test]
fn existing_cgroup_is_refused_and_left_alone() {
    let (_tmp, layout) = fake_root(ALL);
    let g = Group::create(Arc::new(FakeV2Fs), &layout, None, "dup", &Limits::default()).unwrap();
    let err =
        Group::create(Arc::new(FakeV2Fs), &layout, None, "dup", &Limits::default()).unwrap_err();
    assert!(matches!(err, CgroupError::AlreadyExists { .. }), "{err}");
    assert!(root(&layout).join("isc-dup").is_dir());
    Box::new(g).destroy().unwrap();
}

#[test]
fn a_limit_without_its_controller_is_refused_before_mkdir() {
    let (_tmp, layout) = fake_root("memory cpu");
    let l = Limits { pids: Some(8), ..Default::default() };
    let err = Group::create(Arc::new(FakeV2Fs), &layout, None, "np", &l).unwrap_err();
    assert!(matches!(err, CgroupError::ControllerMissing { key: "pids", .. }), "{err}");
    assert!(!root(&layout).join("isc-np").exists());
}

#[test]
fn open_finds_an_existing_cgroup() {
    let (_tmp, layout) = fake_root(ALL);
    let g = Group::create(Arc::new(FakeV2Fs), &layout, Some(Path::new("p")), "o", &full_limits())
        .unwrap();
    let again = Group::open(Arc::new(FakeV2Fs), &layout, Some(Path::new("p")), "isc-o").unwrap();
    assert_eq!(again.paths(), g.paths());
    assert_eq!(again.stats().unwrap().pids_limit, Some(32));
    let missing = Group::open(Arc::new(FakeV2Fs), &layout, None, "o").unwrap_err();
    assert!(matches!(missing, CgroupError::NotFound { .. }), "{missing}");
    Box::new(g).destroy().unwrap();
}

#[test]
fn stale_collection_removes_only_dead_isc_cgroups() {
    let (_tmp, layout) = fake_root(ALL);
    let fs = Arc::new(FakeV2Fs);
    let live = Group::create(fs.clone(), &layout, None, "live", &Limits::default()).unwrap();
    let dead = Group::create(fs.clone(), &layout, None, "dead", &Limits::default()).unwrap();
    dead.attach(99999).unwrap();
    drop(dead); // the monitor died without destroy()
    std::fs::create_dir(root(&layout).join("not-ours")).unwrap();
    let removed = collect_stale_with(fs, &layout, None, |n| n == "isc-live").unwrap();
    assert_eq!(removed, vec!["isc-dead".to_string()]);
    assert!(!root(&layout).join("isc-dead").exists());
    assert!(root(&layout).join("isc-live").is_dir());
    assert!(root(&layout).join("not-ours").is_dir());
    Box::new(live).destroy().unwrap();
}

/// The fake v2 fs, except that the first mkdir of a directory named `isc-…` (the leaf) finds
/// its parent just removed, as when another monitor's exit path removes the shared parent it
/// saw empty between our parent mkdir and leaf mkdir.
#[derive(Debug, Default)]
struct ParentVanishesOnce(std::sync::atomic::AtomicBool);

impl CgroupFs for ParentVanishesOnce {
    fn mkdir(&self, path: &Path) -> io::Result<()> {
        let is_leaf = path.file_name().is_some_and(|n| n.to_string_lossy().starts_with("isc-"));
        if is_leaf && !self.0.swap(true, std::sync::atomic::Ordering::SeqCst) {
            FakeV2Fs.rmdir(path.parent().unwrap())?;
        }
        FakeV2Fs.mkdir(path)
    }
    fn rmdir(&self, path: &Path) -> io::Result<()> {
        FakeV2Fs.rmdir(path)
    }
    fn read(&self, path: &Path) -> io::Result<String> {
        FakeV2Fs.read(path)
    }
    fn write(&self, path: &Path, value: &str) -> io::Result<()> {
        FakeV2Fs.write(path, value)
    }
}

#[test]
fn a_shared_parent_removed_by_another_monitor_mid_create_is_made_again() {
    let (_tmp, layout) = fake_root(ALL);
    let fs = Arc::new(ParentVanishesOnce::default());
    let limits = Limits { pids: Some(8), ..Default::default() };
    let g = Group::create(fs.clone(), &layout, Some(Path::new("isc.0123")), "web", &limits)
        .expect("the vanished parent is created again");
    assert!(fs.0.load(std::sync::atomic::Ordering::SeqCst), "the race was not simulated");
    let leaf = root(&layout).join("isc.0123/isc-web");
    assert_eq!(g.paths(), vec![leaf.clone()]);
    assert_eq!(read(&leaf.join("pids.max")), "8");
    let enabled = |dir: &Path| {
        let mut v: Vec<String> = read(&dir.join("cgroup.subtree_control"))
            .split_whitespace()
            .map(String::from)
            .collect();
        v.sort();
        v
    };
    assert_eq!(enabled(&root(&layout).join("isc.0123")), ["cpu", "io", "memory", "pids"]);
}
