//! Reader for glibc's `/etc/ld.so.cache` ("glibc-ld.so.cache1.1" format, written by `ldconfig(8)`).
//!
//! Layout from glibc `sysdeps/generic/dl-cache.h`: a 48-byte header (`magic[17]`, `version[3]`,
//! `nlibs`, `len_strings`, `flags`, 3 padding bytes, `extension_offset`, 3 unused words) followed by
//! `nlibs` 24-byte entries (`flags: i32`, `key: u32`, `value: u32`, `osversion: u32`, `hwcap: u64`).
//! String offsets are relative to the start of this new-format header. Files that still carry the
//! pre-2.32 "ld.so-1.7.0" table in front are handled by skipping it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

const NEW_MAGIC: &[u8] = b"glibc-ld.so.cache1.1";
const OLD_MAGIC: &[u8] = b"ld.so-1.7.0";
const HEADER_LEN: usize = 48;
const ENTRY_LEN: usize = 24;
/// `FLAG_ELF_LIBC6`: the only library type the glibc loader accepts.
const FLAG_ELF_LIBC6: i32 = 0x0003;
const FLAG_TYPE_MASK: i32 = 0x00ff;
const FLAG_REQUIRED_MASK: i32 = 0xff00;
/// Entries for `glibc-hwcaps/` subdirectories carry this bit in `hwcap` (DL_CACHE_HWCAP_EXTENSION).
const HWCAP_EXTENSION: u64 = 1 << 62;

/// Errors while reading the loader cache.
#[derive(Debug, thiserror::Error)]
pub enum LdCacheError {
    /// The cache file exists but could not be read.
    #[error("cannot read loader cache {path}: {source}")]
    Read {
        /// The cache file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not in a format the loader itself would accept.
    #[error("loader cache {path} is malformed: {what}; regenerate it with `ldconfig`")]
    Malformed {
        /// The cache file.
        path: PathBuf,
        /// What is wrong.
        what: &'static str,
    },
}

/// The parsed cache: library name → host path, per architecture flag word.
#[derive(Debug, Default, Clone)]
pub struct LdCache {
    /// (name, required arch flags) → path of the first acceptable entry in cache order.
    entries: HashMap<(String, i32), PathBuf>,
}

impl LdCache {
    /// Loads the cache at `path`. A missing file is an empty cache (the loader then only searches
    /// the default directories).
    pub fn load(path: &Path) -> Result<Self, LdCacheError> {
        match std::fs::read(path) {
            Ok(bytes) => Self::parse(path, &bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(LdCacheError::Read { path: path.to_path_buf(), source: e }),
        }
    }

    /// Parses cache bytes; `path` is only used in errors.
    pub fn parse(path: &Path, bytes: &[u8]) -> Result<Self, LdCacheError> {
        let malformed = |what| LdCacheError::Malformed { path: path.to_path_buf(), what };
        let start = if bytes.starts_with(NEW_MAGIC) {
            0
        } else if bytes.starts_with(OLD_MAGIC) {
            // Old header is magic[11] + NUL + nlibs (16 bytes), then 12-byte entries; the new
            // table follows, aligned to 8 (ALIGN_CACHE in dl-cache.h).
            let n = u32_at(bytes, 12).ok_or_else(|| malformed("truncated old header"))? as usize;
            let end = 16 + n * 12;
            let aligned = (end + 7) & !7;
            if !bytes.get(aligned..).is_some_and(|b| b.starts_with(NEW_MAGIC)) {
                return Err(malformed("old-format cache without a new-format table"));
            }
            aligned
        } else {
            return Err(malformed("unknown magic"));
        };
        let new = &bytes[start..];
        if new.len() < HEADER_LEN {
            return Err(malformed("truncated header"));
        }
        let nlibs = u32_at(new, 20).ok_or_else(|| malformed("truncated header"))? as usize;
        if HEADER_LEN + nlibs * ENTRY_LEN > new.len() {
            return Err(malformed("entry table runs past the end of the file"));
        }
        let mut entries = HashMap::with_capacity(nlibs);
        for i in 0..nlibs {
            let at = HEADER_LEN + i * ENTRY_LEN;
            let flags = u32_at(new, at).ok_or_else(|| malformed("truncated entry"))? as i32;
            let key = u32_at(new, at + 4).ok_or_else(|| malformed("truncated entry"))? as usize;
            let value = u32_at(new, at + 8).ok_or_else(|| malformed("truncated entry"))? as usize;
            let hwcap = u64_at(new, at + 16).ok_or_else(|| malformed("truncated entry"))?;
            if flags & FLAG_TYPE_MASK != FLAG_ELF_LIBC6 {
                continue;
            }
            // hwcaps-subdirectory variants are optional optimised copies of a baseline library
            // that is also listed; we always resolve to the baseline (see docs/images.md).
            if hwcap & HWCAP_EXTENSION != 0 || hwcap != 0 {
                continue;
            }
            let name = c_str_at(new, key).ok_or_else(|| malformed("key outside string table"))?;
            let target =
                c_str_at(new, value).ok_or_else(|| malformed("value outside string table"))?;
            entries
                .entry((name.to_string(), flags & FLAG_REQUIRED_MASK))
                .or_insert_with(|| PathBuf::from(target));
        }
        Ok(Self { entries })
    }

    /// The path the loader's cache gives for `name` for objects of this class/machine, if any.
    pub fn lookup(&self, name: &str, class64: bool, machine: u16) -> Option<&Path> {
        let arch = arch_flags(class64, machine)?;
        self.entries.get(&(name.to_string(), arch)).map(PathBuf::as_path)
    }

    /// Number of usable entries (for diagnostics).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// `true` when no entry is usable.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The `FLAG_*_LIB64`-style required bits glibc uses for an object of this kind
/// (`_DL_CACHE_DEFAULT_ID` in each architecture's `dl-cache.h`).
fn arch_flags(class64: bool, machine: u16) -> Option<i32> {
    match (class64, machine) {
        (true, 62) => Some(0x0300),  // FLAG_X8664_LIB64
        (true, 183) => Some(0x0a00), // FLAG_AARCH64_LIB64
        (false, 3) => Some(0),       // i386: plain FLAG_ELF_LIBC6
        (true, 243) => Some(0x0f00), // FLAG_RISCV_FLOAT_ABI_DOUBLE | lp64d
        _ => None,
    }
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_ne_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

fn c_str_at(b: &[u8], at: usize) -> Option<&str> {
    let rest = b.get(at..)?;
    let end = rest.iter().position(|&c| c == 0)?;
    std::str::from_utf8(&rest[..end]).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_cache_finds_libc_like_ldconfig() {
        let cache = LdCache::load(Path::new("/etc/ld.so.cache")).unwrap();
        assert!(cache.len() > 10);
        let out = std::process::Command::new("ldconfig").arg("-p").output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text
            .lines()
            .find(|l| l.trim_start().starts_with("libc.so.6 (libc6,x86-64)"))
            .expect("ldconfig -p lists libc.so.6");
        let expected = line.rsplit("=> ").next().unwrap().trim();
        assert_eq!(cache.lookup("libc.so.6", true, 62), Some(Path::new(expected)));
        assert_eq!(cache.lookup("libdoes-not-exist.so.9", true, 62), None);
    }

    #[test]
    fn garbage_is_refused() {
        let err = LdCache::parse(Path::new("/x"), b"not a cache at all").unwrap_err();
        assert!(err.to_string().contains("unknown magic"), "{err}");
    }

    #[test]
    fn truncated_table_is_refused() {
        let bytes = std::fs::read("/etc/ld.so.cache").unwrap();
        let err = LdCache::parse(Path::new("/x"), &bytes[..100]).unwrap_err();
        assert!(err.to_string().contains("past the end"), "{err}");
    }
}
