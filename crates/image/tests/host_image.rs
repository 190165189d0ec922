//! Host closure and host-built images, against the real loader (`ldd`) and a real `chroot`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

mod common;

use isc_image::{elf_closure, prepare_dir_image, prepare_host_image, HostImageRequest, ImageError};

/// The files `ldd` says the loader maps for `bin` (interpreter and every `=> path`).
fn ldd_paths(bin: &str) -> Vec<PathBuf> {
    let out = Command::new("ldd").arg(bin).output().expect("run ldd");
    assert!(out.status.success(), "ldd {bin} failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let path = match l.split_once("=>") {
                Some((_, rest)) => rest.trim(),
                None => l,
            };
            let path = path.split(" (").next()?.trim();
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// Asserts that `p` resolves to a regular file using only symlinks and files in `closure`, i.e.
/// that the path the loader uses on the host also works inside the built tree.
fn assert_resolves_in(closure: &[PathBuf], p: &Path) {
    let mut pending: Vec<PathBuf> = vec![p.to_path_buf()];
    let mut hops = 0;
    'outer: while let Some(path) = pending.pop() {
        let mut cur = PathBuf::from("/");
        let comps: Vec<_> = path.components().skip(1).collect();
        for (i, c) in comps.iter().enumerate() {
            cur.push(c);
            let md = std::fs::symlink_metadata(&cur).unwrap();
            assert!(
                closure.contains(&cur),
                "{} (on the way to {}) missing from closure {closure:?}",
                cur.display(),
                p.display()
            );
            if md.file_type().is_symlink() {
                hops += 1;
                assert!(hops < 40);
                let target = std::fs::read_link(&cur).unwrap();
                let mut next =
                    if target.is_absolute() { target } else { cur.parent().unwrap().join(target) };
                for rest in &comps[i + 1..] {
                    next.push(rest);
                }
                pending.push(next);
                continue 'outer;
            }
        }
        assert!(
            std::fs::symlink_metadata(&cur).unwrap().is_file(),
            "{} is not a file",
            cur.display()
        );
    }
}

fn request(paths: &[&str]) -> HostImageRequest {
    HostImageRequest {
        paths: paths.iter().map(PathBuf::from).collect(),
        extra_dirs: vec![PathBuf::from("/data")],
        uid: 1000,
        gid: 1000,
    }
}

#[test]
fn closure_matches_the_loader() {
    for bin in ["/bin/true", "/bin/sh", "/usr/bin/python3"] {
        let closure = elf_closure(&[PathBuf::from(bin)]).unwrap();
        let expected = ldd_paths(bin);
        assert!(expected.len() >= 2, "ldd {bin} gave {expected:?}");
        for p in &expected {
            assert_resolves_in(&closure, p);
        }
        // Nothing beyond what the loader maps: every closure file is the program itself or a real
        // file behind one of ldd's paths.
        let allowed: Vec<PathBuf> = expected
            .iter()
            .chain(std::iter::once(&PathBuf::from(bin)))
            .map(|p| std::fs::canonicalize(p).unwrap())
            .collect();
        for p in &closure {
            let md = std::fs::symlink_metadata(p).unwrap();
            if md.is_file() {
                assert!(allowed.contains(p), "{bin}: unexpected file {} in closure", p.display());
            }
        }
    }
    let py = elf_closure(&[PathBuf::from("/usr/bin/python3")]).unwrap();
    assert!(py.iter().any(|p| p.ends_with("libm.so.6")), "{py:?}");
}

#[test]
fn closure_of_bin_true_is_fast() {
    let paths = [PathBuf::from("/bin/true")];
    elf_closure(&paths).unwrap();
    let runs = 50;
    let start = Instant::now();
    for _ in 0..runs {
        elf_closure(&paths).unwrap();
    }
    let per = start.elapsed() / runs;
    println!("elf_closure(/bin/true): {per:?} per call");
    // Debug build on a shared 2-core machine: generous bound that still catches an accidental
    // whole-file read or directory scan.
    assert!(per.as_millis() < 20, "closure took {per:?}");
}

#[test]
fn built_true_runs_in_chroot_and_is_cached() {
    let store = common::TestStore::new();
    let req = request(&["/bin/true", "/bin/sh"]);
    let t = Instant::now();
    let first = prepare_host_image(store.path(), &req).unwrap();
    println!("build: {:?}", t.elapsed());
    assert!(!first.cached);
    let status = Command::new("chroot").arg(&first.rootfs).arg("/bin/true").status().unwrap();
    assert!(status.success(), "chroot /bin/true: {status}");
    let out = Command::new("chroot")
        .arg(&first.rootfs)
        .args(["/bin/sh", "-c", "echo ok; exit 7"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(7));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ok\n");
    for d in ["proc", "dev", "sys", "tmp", "run/secrets", "etc", "data"] {
        assert!(first.rootfs.join(d).is_dir(), "missing /{d}");
    }
    let passwd = std::fs::read_to_string(first.rootfs.join("etc/passwd")).unwrap();
    assert!(passwd.contains("isc:x:1000:1000:"));
    // usrmerge: /bin stays a symlink, and the target file is real.
    assert!(std::fs::symlink_metadata(first.rootfs.join("bin")).unwrap().file_type().is_symlink());
    assert!(std::fs::symlink_metadata(first.rootfs.join("usr/bin/true")).unwrap().is_file());

    let t = Instant::now();
    let second = prepare_host_image(store.path(), &req).unwrap();
    println!("cache hit: {:?}", t.elapsed());
    assert!(second.cached);
    assert_eq!(second.id, first.id);
    assert_eq!(second.rootfs, first.rootfs);

    // A different service uid is a different tree.
    let mut other = req.clone();
    other.uid = 1001;
    let third = prepare_host_image(store.path(), &other).unwrap();
    assert!(!third.cached);
    assert_ne!(third.id, first.id);
}

#[test]
fn setuid_bits_are_stripped_and_owner_is_root() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let src = tempfile::Builder::new().prefix("isc-image-src-").tempdir().unwrap();
    let f = src.path().join("suid-tool");
    std::fs::write(&f, b"#!/bin/sh\nexit 0\n").unwrap();
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o6755)).unwrap();
    std::os::unix::fs::chown(&f, Some(1234), Some(1234)).unwrap();
    let store = common::TestStore::new();
    let req = HostImageRequest { paths: vec![f.clone()], extra_dirs: vec![], uid: 1000, gid: 1000 };
    let img = prepare_host_image(store.path(), &req).unwrap();
    let copied = img.rootfs.join(f.strip_prefix("/").unwrap());
    let md = std::fs::metadata(&copied).unwrap();
    assert_eq!(md.permissions().mode() & 0o7777, 0o555, "setuid/setgid and write bits stripped");
    assert_eq!((md.uid(), md.gid()), (0, 0));
    // The #! interpreter came along with its own closure.
    assert!(img.rootfs.join("usr/bin/sh").exists() || img.rootfs.join("usr/bin/dash").exists());
    let status = Command::new("chroot").arg(&img.rootfs).arg(&f).status().unwrap();
    assert!(status.success());
}

#[test]
fn origin_rpath_library_is_found_and_runs() {
    let work = tempfile::Builder::new().prefix("isc-image-rpath-").tempdir().unwrap();
    let w = work.path();
    std::fs::create_dir_all(w.join("app/bin")).unwrap();
    std::fs::create_dir_all(w.join("app/lib")).unwrap();
    std::fs::write(w.join("f.c"), "int isc_f(void){return 42;}\n").unwrap();
    std::fs::write(w.join("m.c"), "int isc_f(void); int main(void){return isc_f()==42?0:1;}\n")
        .unwrap();
    let cc = |args: &[&str]| {
        let st = Command::new("cc").current_dir(w).args(args).status().unwrap();
        assert!(st.success(), "cc {args:?}");
    };
    cc(&["-shared", "-fPIC", "-o", "app/lib/libiscf.so", "f.c"]);
    cc(&[
        "-o",
        "app/bin/m",
        "m.c",
        "-Lapp/lib",
        "-liscf",
        "-Wl,-rpath,$ORIGIN/../lib",
        "-Wl,--enable-new-dtags",
    ]);
    let bin = w.join("app/bin/m");
    let closure = elf_closure(std::slice::from_ref(&bin)).unwrap();
    let lib = w.join("app/bin/../lib/libiscf.so");
    assert!(
        closure.iter().any(|p| p == &w.join("app/lib/libiscf.so")),
        "closure lacks {}: {closure:?}",
        lib.display()
    );
    let store = common::TestStore::new();
    let img = prepare_host_image(
        store.path(),
        &HostImageRequest { paths: vec![bin.clone()], extra_dirs: vec![], uid: 1000, gid: 1000 },
    )
    .unwrap();
    // $ORIGIN of the program comes from /proc/self/exe, so the tree needs /proc, as in an ISC.
    let status = Command::new("unshare")
        .arg("--mount")
        .arg("--pid")
        .arg("--fork")
        .arg(format!("--mount-proc={}", img.rootfs.join("proc").display()))
        .arg("chroot")
        .arg(&img.rootfs)
        .arg(&bin)
        .status()
        .unwrap();
    assert!(status.success(), "rpath program in chroot: {status}");
}

#[test]
fn missing_and_bad_paths_are_clear_errors() {
    let store = common::TestStore::new();
    let err =
        prepare_host_image(store.path(), &request(&["/usr/bin/isc-does-not-exist"])).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("/usr/bin/isc-does-not-exist does not exist"), "{msg}");
    assert!(matches!(err, ImageError::Closure(_)));
    let err = prepare_host_image(store.path(), &request(&["usr/bin/true"])).unwrap_err();
    assert!(err.to_string().contains("must be absolute"), "{err}");
    let err = prepare_host_image(store.path(), &request(&["/usr/../bin/true"])).unwrap_err();
    assert!(err.to_string().contains("`..`"), "{err}");
    // Nothing was left in the store's staging area.
    let tmp = store.path().join("images/tmp");
    assert!(!tmp.exists() || std::fs::read_dir(&tmp).unwrap().next().is_none());
}

#[test]
fn concurrent_builders_agree() {
    let store = common::TestStore::new();
    let root = store.path_buf();
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let root = root.clone();
            std::thread::spawn(move || prepare_host_image(&root, &request(&["/bin/true"])).unwrap())
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    for r in &results {
        assert_eq!(r.id, results[0].id);
        let st = Command::new("chroot").arg(&r.rootfs).arg("/bin/true").status().unwrap();
        assert!(st.success());
    }
    let leftovers: Vec<_> = std::fs::read_dir(root.join("images/tmp")).unwrap().collect();
    assert!(leftovers.is_empty(), "staging leftovers: {leftovers:?}");
}

#[test]
fn dir_source_accepts_a_built_tree() {
    let store = common::TestStore::new();
    let built = prepare_host_image(store.path(), &request(&["/bin/true"])).unwrap();
    let dir = prepare_dir_image(&built.rootfs, &[PathBuf::from("/data")]).unwrap();
    assert_eq!(dir.rootfs, built.rootfs);
    let err = prepare_dir_image(&built.rootfs, &[PathBuf::from("/missing/mnt")]).unwrap_err();
    assert!(err.to_string().contains("/missing/mnt"), "{err}");
    let _ = Path::new("/");
}
