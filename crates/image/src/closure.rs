//! The host closure: which host paths a root tree needs so that the requested programs run.
//!
//! Every requested path is walked component by component the way the kernel resolves it
//! (`path_resolution(7)`): each symlink met on the way is kept as a symlink and its target followed,
//! so a usrmerge host (`/lib -> usr/lib`) yields the same symlinks plus the real files in the tree.
//! Every ELF object found is then linked the way glibc's `ld.so(8)` would link it (see
//! [`crate::loader`]) and the libraries it would load are added the same way.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;

use crate::elf::{read_elf, ElfError, ElfInfo};
use crate::ldcache::LdCacheError;
use crate::loader::{LoadedObject, Loader};

/// Symlinks followed while resolving one path before giving up, as the kernel's MAXSYMLINKS.
const MAX_SYMLINK_HOPS: usize = 40;

/// Errors while computing a host closure.
#[derive(Debug, thiserror::Error)]
pub enum ClosureError {
    /// A requested path is relative or contains `..`.
    #[error("image path {path} must be absolute and must not contain `.` or `..` components; write it as the host path it is, e.g. /usr/bin/python3")]
    BadPath {
        /// The path as given.
        path: PathBuf,
    },
    /// A requested path (or a file it needs) does not exist on the host.
    #[error("{path} does not exist on this host{}; install it or remove it from [image] paths", needed_by_text(.needed_by))]
    Missing {
        /// The missing path.
        path: PathBuf,
        /// What needed it, if it was not requested directly.
        needed_by: Option<PathBuf>,
    },
    /// A path could not be inspected.
    #[error("cannot inspect {path}: {source}")]
    Stat {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A symlink chain loops or is too long.
    #[error(
        "too many levels of symbolic links resolving {path}; fix the symlink loop on the host"
    )]
    SymlinkLoop {
        /// The path being resolved.
        path: PathBuf,
    },
    /// A path component that must be a directory is something else.
    #[error("{path} is not a directory but {requested} goes through it")]
    NotADirectory {
        /// The offending component.
        path: PathBuf,
        /// The requested path.
        requested: PathBuf,
    },
    /// A device node, socket or FIFO was requested.
    #[error("{path} is a device, socket or FIFO; image trees hold only files, directories and symlinks (devices come from the engine's minimal /dev)")]
    SpecialFile {
        /// The path.
        path: PathBuf,
    },
    /// An ELF file could not be parsed.
    #[error(transparent)]
    Elf(#[from] ElfError),
    /// The loader cache could not be read.
    #[error(transparent)]
    LdCache(#[from] LdCacheError),
    /// A shared library that an explicitly requested program needs cannot be found.
    #[error("{object} needs {library}, which the dynamic loader would not find (searched: {searched}); install the library or add its directory to [image] paths")]
    LibraryNotFound {
        /// The object that needs it.
        object: PathBuf,
        /// The DT_NEEDED name.
        library: String,
        /// Directories searched, for the message.
        searched: String,
    },
}

fn needed_by_text(n: &Option<PathBuf>) -> String {
    n.as_ref().map(|p| format!(" (needed by {})", p.display())).unwrap_or_default()
}

/// `lstat` facts of a host entry that decide whether a cached tree is still current.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostStat {
    /// `st_dev`.
    pub dev: u64,
    /// `st_ino`.
    pub ino: u64,
    /// `st_size`.
    pub size: u64,
    /// `st_mtime` in nanoseconds.
    pub mtime_ns: i128,
    /// `st_mode` (type and permission bits).
    pub mode: u32,
}

impl HostStat {
    fn of(md: &std::fs::Metadata) -> Self {
        Self {
            dev: md.dev(),
            ino: md.ino(),
            size: md.size(),
            mtime_ns: i128::from(md.mtime()) * 1_000_000_000 + i128::from(md.mtime_nsec()),
            mode: md.mode(),
        }
    }
}

/// One entry of the root tree to build; its image path equals its host path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlanEntry {
    /// A directory. `host` is set when it was requested (or walked) and so copied with its mode;
    /// directories that are only on the way to something are created 0755.
    Dir {
        /// Host facts, for requested/walked directories.
        host: Option<HostStat>,
    },
    /// A regular file copied from the same host path.
    File {
        /// Host facts.
        host: HostStat,
    },
    /// A symlink recreated with the same target.
    Symlink {
        /// The link's target as stored on the host.
        target: PathBuf,
        /// Host facts.
        host: HostStat,
    },
}

/// The set of host entries a root tree holds, keyed and sorted by absolute path.
#[derive(Debug, Default, Clone)]
pub struct Plan {
    /// Entries by absolute path.
    pub entries: BTreeMap<PathBuf, PlanEntry>,
}

/// How a path entered the closure; decides whether problems are fatal.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// Named in the request: every problem is an error.
    Requested,
    /// Found while walking a requested directory: broken symlinks and unresolvable optional
    /// plugins are logged and skipped, as the program may never load them.
    Walked,
    /// Added by the loader resolution (interpreter, libraries, the loader cache): recorded, but
    /// not linked again as a program of its own, because its dependencies are resolved in the
    /// breadth-first walk of the program that loads it, as `ld.so` does.
    Dependency,
}

/// Builds a [`Plan`] from requested host paths.
pub struct Planner {
    plan: Plan,
    elf_memo: HashMap<PathBuf, Option<Rc<ElfInfo>>>,
    loader: Option<Loader>,
    walked_dirs: HashSet<PathBuf>,
    /// ELF/script candidates: (path as reached, real host path, origin).
    candidates: Vec<(PathBuf, PathBuf, Origin)>,
}

impl Default for Planner {
    fn default() -> Self {
        Self::new()
    }
}

impl Planner {
    /// A planner using the host's `/etc/ld.so.cache`.
    pub fn new() -> Self {
        Self {
            plan: Plan::default(),
            elf_memo: HashMap::new(),
            loader: None,
            walked_dirs: HashSet::new(),
            candidates: Vec::new(),
        }
    }

    /// Computes the closure of `paths` (files and directories, the latter recursively).
    pub fn plan(mut self, paths: &[PathBuf]) -> Result<Plan, ClosureError> {
        for p in paths {
            check_requested(p)?;
            self.add_path(p, true, Origin::Requested, None)?;
        }
        let mut done = 0;
        // Linking can add files (libraries), which are themselves candidates: loop to a fixpoint.
        while done < self.candidates.len() {
            let (reached, real, origin) = self.candidates[done].clone();
            done += 1;
            self.link(&reached, &real, origin)?;
        }
        if self.loader.as_ref().is_some_and(Loader::needs_cache_file) {
            self.add_path(Path::new(crate::loader::LD_CACHE), false, Origin::Dependency, None)?;
        }
        Ok(self.plan)
    }

    fn elf(&mut self, real: &Path) -> Result<Option<Rc<ElfInfo>>, ClosureError> {
        if let Some(hit) = self.elf_memo.get(real) {
            return Ok(hit.clone());
        }
        let info = read_elf(real)?.map(Rc::new);
        self.elf_memo.insert(real.to_path_buf(), info.clone());
        Ok(info)
    }

    /// Adds the libraries (and interpreter) that `real` needs, or a script's `#!` interpreter.
    fn link(&mut self, reached: &Path, real: &Path, origin: Origin) -> Result<(), ClosureError> {
        let Some(info) = self.elf(real)? else {
            if origin == Origin::Requested {
                if let Some(interp) = shebang(real) {
                    self.add_path(&interp, false, Origin::Requested, Some(real))?;
                }
            }
            return Ok(());
        };
        if info.interp.is_none() && info.needed.is_empty() {
            return Ok(()); // static
        }
        if self.loader.is_none() {
            self.loader = Some(Loader::from_host()?);
        }
        let mut objects = vec![LoadedObject {
            reached: reached.to_path_buf(),
            real: real.to_path_buf(),
            info: info.clone(),
            loader: None,
        }];
        let mut names: HashSet<String> = HashSet::new();
        let mut inodes: HashSet<(u64, u64)> = HashSet::new();
        if let Some(interp) = &info.interp {
            let interp_real = self.add_path(interp, false, Origin::Dependency, Some(real))?;
            names.insert(interp.to_string_lossy().into_owned());
            if let Some(i) = self.elf(&interp_real)? {
                if let Some(s) = &i.soname {
                    names.insert(s.clone());
                }
            }
            if let Ok(md) = std::fs::metadata(&interp_real) {
                inodes.insert((md.dev(), md.ino()));
            }
        }
        let mut next = 0;
        while next < objects.len() {
            let idx = next;
            next += 1;
            let needed = objects[idx].info.needed.clone();
            for name in needed {
                if names.contains(&name) {
                    continue;
                }
                let found = {
                    let loader = self.loader.as_mut().expect("loader initialised above");
                    let memo = &mut self.elf_memo;
                    loader.search(&name, idx, &objects, &mut |p| probe(memo, p))
                };
                let Some(found) = found else {
                    let err = ClosureError::LibraryNotFound {
                        object: objects[idx].reached.clone(),
                        library: name.clone(),
                        searched: self
                            .loader
                            .as_ref()
                            .expect("loader initialised above")
                            .describe_search(idx, &objects),
                    };
                    if origin == Origin::Requested {
                        return Err(err);
                    }
                    tracing::warn!(object = %real.display(), library = %name, "skipping unresolvable dependency of a walked file: {err}");
                    names.insert(name);
                    continue;
                };
                names.insert(name);
                let lib_real = self.add_path(&found, false, Origin::Dependency, Some(real))?;
                let md = std::fs::metadata(&lib_real)
                    .map_err(|e| ClosureError::Stat { path: lib_real.clone(), source: e })?;
                if !inodes.insert((md.dev(), md.ino())) {
                    continue;
                }
                let lib_info = self.elf(&lib_real)?.expect("probe accepted only ELF objects");
                if let Some(s) = &lib_info.soname {
                    names.insert(s.clone());
                }
                objects.push(LoadedObject {
                    reached: found,
                    real: lib_real,
                    info: lib_info,
                    loader: Some(idx),
                });
            }
        }
        Ok(())
    }

    /// Records `path` (and every symlink and directory on the way) and returns its real host path.
    fn add_path(
        &mut self,
        path: &Path,
        recursive: bool,
        origin: Origin,
        needed_by: Option<&Path>,
    ) -> Result<PathBuf, ClosureError> {
        let mut pending: Vec<std::ffi::OsString> = normal_components(path).rev().collect();
        let mut cur = PathBuf::from("/");
        let mut hops = 0;
        while let Some(c) = pending.pop() {
            if c == ".." {
                cur.pop();
                continue;
            }
            let cand = cur.join(&c);
            let last = pending.is_empty();
            let known = self.plan.entries.get(&cand).cloned();
            let (entry_kind, md) = match known {
                Some(PlanEntry::Symlink { .. }) => (known, None),
                Some(PlanEntry::Dir { .. }) | Some(PlanEntry::File { .. }) if !last => {
                    (known, None)
                }
                _ => (None, Some(lstat(&cand, needed_by)?)),
            };
            let link_target = match (&entry_kind, &md) {
                (Some(PlanEntry::Symlink { target, .. }), _) => Some(target.clone()),
                (_, Some(md)) if md.file_type().is_symlink() => {
                    let target = std::fs::read_link(&cand)
                        .map_err(|e| ClosureError::Stat { path: cand.clone(), source: e })?;
                    self.plan.entries.insert(
                        cand.clone(),
                        PlanEntry::Symlink { target: target.clone(), host: HostStat::of(md) },
                    );
                    Some(target)
                }
                _ => None,
            };
            if let Some(target) = link_target {
                hops += 1;
                if hops > MAX_SYMLINK_HOPS {
                    return Err(ClosureError::SymlinkLoop { path: path.to_path_buf() });
                }
                if target.is_absolute() {
                    cur = PathBuf::from("/");
                }
                pending.extend(normal_components(&target).rev());
                continue;
            }
            let is_dir = match (&entry_kind, &md) {
                (Some(PlanEntry::Dir { .. }), _) => true,
                (_, Some(md)) => md.is_dir(),
                _ => false,
            };
            if is_dir {
                if last {
                    let md = md.expect("final components are always stat'ed");
                    self.plan
                        .entries
                        .insert(cand.clone(), PlanEntry::Dir { host: Some(HostStat::of(&md)) });
                    if recursive {
                        self.walk(&cand)?;
                    }
                } else {
                    self.plan.entries.entry(cand.clone()).or_insert(PlanEntry::Dir { host: None });
                }
                cur = cand;
                continue;
            }
            if !last {
                return Err(ClosureError::NotADirectory {
                    path: cand,
                    requested: path.to_path_buf(),
                });
            }
            let md = md.expect("final components are always stat'ed");
            if !md.is_file() {
                return Err(ClosureError::SpecialFile { path: cand });
            }
            let fresh = self
                .plan
                .entries
                .insert(cand.clone(), PlanEntry::File { host: HostStat::of(&md) })
                .is_none();
            if fresh && origin != Origin::Dependency && may_be_elf_or_script(&cand, &md) {
                self.candidates.push((path.to_path_buf(), cand.clone(), origin));
            }
            cur = cand;
        }
        Ok(cur)
    }

    /// Adds everything below the real directory `dir`.
    fn walk(&mut self, dir: &Path) -> Result<(), ClosureError> {
        if !self.walked_dirs.insert(dir.to_path_buf()) {
            return Ok(());
        }
        let rd = std::fs::read_dir(dir)
            .map_err(|e| ClosureError::Stat { path: dir.to_path_buf(), source: e })?;
        let mut children: Vec<PathBuf> = Vec::new();
        for ent in rd {
            let ent = ent.map_err(|e| ClosureError::Stat { path: dir.to_path_buf(), source: e })?;
            children.push(ent.path());
        }
        children.sort();
        for child in children {
            let md = lstat(&child, None)?;
            let ft = md.file_type();
            if ft.is_block_device() || ft.is_char_device() || ft.is_fifo() || ft.is_socket() {
                tracing::warn!(path = %child.display(), "skipping device, socket or FIFO in an image directory");
                continue;
            }
            match self.add_path(&child, true, Origin::Walked, None) {
                Ok(_) => {}
                Err(ClosureError::Missing { path, .. }) if ft.is_symlink() => {
                    tracing::warn!(link = %child.display(), missing = %path.display(), "keeping dangling symlink from an image directory");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// Accepts a candidate library path when it is an ELF object of the same class and machine as
/// the one that needs it; the loader silently skips anything else (e.g. i386 libraries).
fn probe(memo: &mut HashMap<PathBuf, Option<Rc<ElfInfo>>>, path: &Path) -> Option<Rc<ElfInfo>> {
    if let Some(hit) = memo.get(path) {
        return hit.clone();
    }
    let info = match read_elf(path) {
        Ok(info) => info.map(Rc::new),
        Err(_) => None,
    };
    memo.insert(path.to_path_buf(), info.clone());
    info
}

fn lstat(path: &Path, needed_by: Option<&Path>) -> Result<std::fs::Metadata, ClosureError> {
    std::fs::symlink_metadata(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            ClosureError::Missing {
                path: path.to_path_buf(),
                needed_by: needed_by.map(Path::to_path_buf),
            }
        } else {
            ClosureError::Stat { path: path.to_path_buf(), source: e }
        }
    })
}

fn check_requested(p: &Path) -> Result<(), ClosureError> {
    let ok = p.is_absolute()
        && p.components().all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
    if ok {
        Ok(())
    } else {
        Err(ClosureError::BadPath { path: p.to_path_buf() })
    }
}

/// Components of a path (or symlink target) that move through the tree: names and `..`.
fn normal_components(p: &Path) -> impl DoubleEndedIterator<Item = std::ffi::OsString> + '_ {
    p.components().filter_map(|c| match c {
        Component::Normal(n) => Some(n.to_os_string()),
        Component::ParentDir => Some("..".into()),
        _ => None,
    })
}

/// Executables and anything named like a shared object are inspected; other data files are not
/// opened, which keeps walking large directories (a Python standard library) cheap.
fn may_be_elf_or_script(path: &Path, md: &std::fs::Metadata) -> bool {
    md.mode() & 0o111 != 0
        || path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.ends_with(".so") || n.contains(".so."))
}

/// The interpreter of a `#!` script, as `execve(2)` reads it.
fn shebang(path: &Path) -> Option<PathBuf> {
    use std::io::Read;
    let mut buf = [0u8; 256];
    let mut f = std::fs::File::open(path).ok()?;
    let n = f.read(&mut buf).ok()?;
    let text = buf[..n].strip_prefix(b"#!")?;
    let line = text.split(|&b| b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?.trim_start();
    let interp = line.split([' ', '\t']).next()?;
    interp.starts_with('/').then(|| PathBuf::from(interp))
}
