//! Library search exactly in the order of glibc's `_dl_map_object` (elf/dl-load.c, glibc 2.36),
//! minus the environment: `LD_LIBRARY_PATH`, `LD_PRELOAD` and `LD_AUDIT` are ignored because an
//! ISC's environment is declared, not inherited.
//!
//! For a `DT_NEEDED` name without a slash: (1) unless the requesting object has `DT_RUNPATH`, the
//! `DT_RPATH` of the requester, then of the object that loaded it, and on up to the executable;
//! (2) the requester's `DT_RUNPATH`; (3) unless the requester has `DF_1_NODEFLIB`,
//! `/etc/ld.so.cache`, then the default directories. `DT_RPATH` is ignored in an object that also
//! has `DT_RUNPATH`. `$ORIGIN`, `$LIB` and `$PLATFORM` are expanded as in `ld.so(8)`. Each search
//! directory is tried with the same `glibc-hwcaps` and legacy platform subdirectories the loader
//! tries (visible with `LD_DEBUG=libs`). Candidates of another ELF class or machine are skipped.

use std::path::{Path, PathBuf};
use std::rc::Rc;

use crate::elf::ElfInfo;
use crate::ldcache::{LdCache, LdCacheError};

/// The loader cache read by glibc.
pub const LD_CACHE: &str = "/etc/ld.so.cache";

/// One object in a program's link map, in load (breadth-first) order; index 0 is the program.
#[derive(Debug, Clone)]
pub struct LoadedObject {
    /// The path the object was found under (its `l_name`; `$ORIGIN` of libraries derives from it).
    pub reached: PathBuf,
    /// The real host path after symlinks.
    pub real: PathBuf,
    /// Its dynamic section.
    pub info: Rc<ElfInfo>,
    /// Index of the object whose `DT_NEEDED` caused it to be loaded (`l_loader`).
    pub loader: Option<usize>,
}

/// The host's loader configuration.
#[derive(Debug)]
pub struct Loader {
    cache: LdCache,
    hwcaps_subdirs: Vec<&'static str>,
    cache_outside_defaults: bool,
}

impl Loader {
    /// Reads `/etc/ld.so.cache` and detects the CPU's `glibc-hwcaps` levels.
    pub fn from_host() -> Result<Self, LdCacheError> {
        Ok(Self::with_cache(LdCache::load(Path::new(LD_CACHE))?))
    }

    /// A loader over an explicit cache (tests).
    pub fn with_cache(cache: LdCache) -> Self {
        Self { cache, hwcaps_subdirs: hwcaps_subdirs(), cache_outside_defaults: false }
    }

    /// `true` when some library was found only through the cache in a directory outside the
    /// default search path, so the image needs the cache file to find it again.
    pub fn needs_cache_file(&self) -> bool {
        self.cache_outside_defaults
    }

    /// Finds `name` for `objects[idx]`; `probe` returns the ELF info of a candidate file (or `None`
    /// when it does not exist or is not ELF).
    pub fn search(
        &mut self,
        name: &str,
        idx: usize,
        objects: &[LoadedObject],
        probe: &mut dyn FnMut(&Path) -> Option<Rc<ElfInfo>>,
    ) -> Option<PathBuf> {
        let req = &objects[idx];
        let (class64, machine) = (req.info.class64, req.info.machine);
        let mut accept =
            |p: &Path| probe(p).is_some_and(|i| i.class64 == class64 && i.machine == machine);
        if name.contains('/') {
            let p = PathBuf::from(expand(name, &origin(objects, idx), &req.info)?);
            return accept(&p).then_some(p);
        }
        for dir in self.search_dirs(idx, objects) {
            if let Some(p) = self.try_dir(&dir, name, &mut accept) {
                return Some(p);
            }
        }
        if req.info.nodeflib {
            return None;
        }
        if let Some(p) = self.cache.lookup(name, class64, machine) {
            let p = p.to_path_buf();
            if accept(&p) {
                let defaults = default_dirs(&req.info);
                if !p.parent().is_some_and(|d| defaults.iter().any(|x| Path::new(x) == d)) {
                    self.cache_outside_defaults = true;
                }
                return Some(p);
            }
        }
        for dir in default_dirs(&req.info) {
            if let Some(p) = self.try_dir(Path::new(&dir), name, &mut accept) {
                return Some(p);
            }
        }
        None
    }

    /// The directories searched for `objects[idx]`, for error messages.
    pub fn describe_search(&self, idx: usize, objects: &[LoadedObject]) -> String {
        let mut dirs: Vec<String> =
            self.search_dirs(idx, objects).iter().map(|d| d.display().to_string()).collect();
        if !objects[idx].info.nodeflib {
            dirs.push(LD_CACHE.to_string());
            dirs.extend(default_dirs(&objects[idx].info));
        }
        dirs.join(", ")
    }

    /// RPATH chain (when the requester has no RUNPATH) then the requester's RUNPATH.
    fn search_dirs(&self, idx: usize, objects: &[LoadedObject]) -> Vec<PathBuf> {
        let req = &objects[idx];
        let mut dirs = Vec::new();
        if req.info.runpath.is_none() {
            let mut did_main = false;
            let mut cur = Some(idx);
            while let Some(k) = cur {
                push_list(&mut dirs, objects, k, effective_rpath(&objects[k].info));
                did_main |= k == 0;
                cur = objects[k].loader;
            }
            if !did_main {
                push_list(&mut dirs, objects, 0, effective_rpath(&objects[0].info));
            }
        }
        push_list(&mut dirs, objects, idx, req.info.runpath.as_deref());
        dirs
    }

    fn try_dir(
        &self,
        dir: &Path,
        name: &str,
        accept: &mut dyn FnMut(&Path) -> bool,
    ) -> Option<PathBuf> {
        for sub in &self.hwcaps_subdirs {
            let p = dir.join(sub).join(name);
            if accept(&p) {
                return Some(p);
            }
        }
        let p = dir.join(name);
        accept(&p).then_some(p)
    }
}

/// `DT_RPATH` is ignored when `DT_RUNPATH` is present (glibc get-dynamic-info.h).
fn effective_rpath(info: &ElfInfo) -> Option<&str> {
    if info.runpath.is_some() {
        None
    } else {
        info.rpath.as_deref()
    }
}

fn push_list(dirs: &mut Vec<PathBuf>, objects: &[LoadedObject], k: usize, list: Option<&str>) {
    let Some(list) = list else { return };
    let origin = origin(objects, k);
    for element in list.split(':').filter(|e| !e.is_empty()) {
        if let Some(d) = expand(element, &origin, &objects[k].info) {
            dirs.push(PathBuf::from(d));
        }
    }
}

/// `$ORIGIN` of `objects[k]`: the directory of the program's real path (the loader reads
/// `/proc/self/exe`), or of the path a library was found under.
fn origin(objects: &[LoadedObject], k: usize) -> PathBuf {
    let o = &objects[k];
    let base = if k == 0 { &o.real } else { &o.reached };
    base.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("/"))
}

/// Expands `$ORIGIN`, `$LIB`, `$PLATFORM` (also in `${...}` form). An element with an unknown
/// token is dropped, as `_dl_dst_substitute` does.
fn expand(element: &str, origin: &Path, info: &ElfInfo) -> Option<String> {
    if !element.contains('$') {
        return Some(element.to_string());
    }
    let mut out = String::new();
    let mut rest = element;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        let (token, len) = if let Some(inner) = after.strip_prefix('{') {
            let end = inner.find('}')?;
            (&inner[..end], end + 2)
        } else {
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            (&after[..end], end)
        };
        match token {
            "ORIGIN" => out.push_str(&origin.to_string_lossy()),
            "LIB" => out.push_str(&lib_token(info)),
            "PLATFORM" => out.push_str(std::env::consts::ARCH),
            _ => return None,
        }
        rest = &after[len..];
    }
    out.push_str(rest);
    Some(out)
}

fn multiarch(info: &ElfInfo) -> Option<&'static str> {
    match (info.class64, info.machine) {
        (true, 62) => Some("x86_64-linux-gnu"),
        (true, 183) => Some("aarch64-linux-gnu"),
        (false, 3) => Some("i386-linux-gnu"),
        (true, 243) => Some("riscv64-linux-gnu"),
        _ => None,
    }
}

/// `$LIB`: Debian's glibc is configured with `slibdir=/lib/<multiarch>`; other distributions use
/// `lib64` for 64-bit objects.
fn lib_token(info: &ElfInfo) -> String {
    match multiarch(info) {
        Some(t) if Path::new("/lib").join(t).is_dir() => format!("lib/{t}"),
        _ if info.class64 => "lib64".to_string(),
        _ => "lib".to_string(),
    }
}

/// The loader's built-in system search path (`system search path=` in `LD_DEBUG=libs`).
fn default_dirs(info: &ElfInfo) -> Vec<String> {
    match multiarch(info) {
        Some(t) if Path::new("/lib").join(t).is_dir() => vec![
            format!("/lib/{t}"),
            format!("/usr/lib/{t}"),
            "/lib".to_string(),
            "/usr/lib".to_string(),
        ],
        _ if info.class64 => vec!["/lib64".to_string(), "/usr/lib64".to_string()],
        _ => vec!["/lib".to_string(), "/usr/lib".to_string()],
    }
}

/// Subdirectories tried inside every search directory, best first: the `glibc-hwcaps` levels
/// this CPU supports (glibc 2.33+), then the legacy `tls`/platform directories (Debian 12's
/// glibc 2.36 still searches them).
fn hwcaps_subdirs() -> Vec<&'static str> {
    let mut subdirs = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        let v2 = std::arch::is_x86_feature_detected!("sse3")
            && std::arch::is_x86_feature_detected!("ssse3")
            && std::arch::is_x86_feature_detected!("sse4.1")
            && std::arch::is_x86_feature_detected!("sse4.2")
            && std::arch::is_x86_feature_detected!("popcnt")
            && std::arch::is_x86_feature_detected!("cmpxchg16b");
        let v3 = v2
            && std::arch::is_x86_feature_detected!("avx")
            && std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("bmi1")
            && std::arch::is_x86_feature_detected!("bmi2")
            && std::arch::is_x86_feature_detected!("f16c")
            && std::arch::is_x86_feature_detected!("fma")
            && std::arch::is_x86_feature_detected!("lzcnt")
            && std::arch::is_x86_feature_detected!("movbe")
            && std::arch::is_x86_feature_detected!("xsave");
        let v4 = v3
            && std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512cd")
            && std::arch::is_x86_feature_detected!("avx512dq")
            && std::arch::is_x86_feature_detected!("avx512vl");
        if v4 {
            subdirs.push("glibc-hwcaps/x86-64-v4");
        }
        if v3 {
            subdirs.push("glibc-hwcaps/x86-64-v3");
        }
        if v2 {
            subdirs.push("glibc-hwcaps/x86-64-v2");
        }
        subdirs.extend(["tls/x86_64/x86_64", "tls/x86_64", "tls", "x86_64/x86_64", "x86_64"]);
    }
    subdirs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(path: &str, info: ElfInfo, loader: Option<usize>) -> LoadedObject {
        LoadedObject {
            reached: PathBuf::from(path),
            real: PathBuf::from(path),
            info: Rc::new(info),
            loader,
        }
    }

    fn x86(rpath: Option<&str>, runpath: Option<&str>) -> ElfInfo {
        ElfInfo {
            class64: true,
            machine: 62,
            rpath: rpath.map(str::to_string),
            runpath: runpath.map(str::to_string),
            ..ElfInfo::default()
        }
    }

    #[test]
    fn expands_tokens() {
        let info = x86(None, None);
        assert_eq!(
            expand("$ORIGIN/../lib:${PLATFORM}", Path::new("/opt/app/bin"), &info).as_deref(),
            Some("/opt/app/bin/../lib:x86_64")
        );
        assert_eq!(
            expand("/x/$LIB", Path::new("/"), &info).as_deref(),
            Some("/x/lib/x86_64-linux-gnu")
        );
        assert_eq!(expand("$UNKNOWN/x", Path::new("/"), &info), None);
    }

    #[test]
    fn rpath_chain_and_runpath_order() {
        // main has RPATH /m; lib1 (loaded by main) has RPATH /a; lib2 (loaded by lib1) has
        // RUNPATH /r and RPATH /ignored: only /r is searched for lib2.
        let objects = vec![
            obj("/bin/main", x86(Some("/m"), None), None),
            obj("/a/lib1.so", x86(Some("/a"), None), Some(0)),
            obj("/r/lib2.so", x86(Some("/ignored"), Some("/r")), Some(1)),
        ];
        let loader = Loader::with_cache(LdCache::default());
        let d = |i| loader.search_dirs(i, &objects);
        assert_eq!(d(1), vec![PathBuf::from("/a"), PathBuf::from("/m")]);
        assert_eq!(d(2), vec![PathBuf::from("/r")]);
        assert_eq!(d(0), vec![PathBuf::from("/m")]);
    }

    #[test]
    fn search_skips_wrong_machine_and_falls_back_to_defaults() {
        let objects = vec![obj("/bin/main", x86(Some("/opt/x"), None), None)];
        let mut loader = Loader::with_cache(LdCache::default());
        let mut tried = Vec::new();
        let found = loader.search("libq.so.1", 0, &objects, &mut |p| {
            tried.push(p.to_path_buf());
            if p == Path::new("/opt/x/libq.so.1") {
                Some(Rc::new(ElfInfo { class64: false, machine: 3, ..ElfInfo::default() }))
            } else if p == Path::new("/usr/lib/libq.so.1") {
                Some(Rc::new(x86(None, None)))
            } else {
                None
            }
        });
        assert_eq!(found, Some(PathBuf::from("/usr/lib/libq.so.1")));
        assert!(tried.contains(&PathBuf::from("/opt/x/libq.so.1")));
    }
}
