//! A minimal ELF reader: just the parts the dynamic loader looks at to find dependencies.
//!
//! Only the ELF header, the program headers, `PT_INTERP` and `PT_DYNAMIC` (plus the bytes of the
//! dynamic string table) are read, with positioned reads, so inspecting a 2 MiB `libc.so.6` costs a
//! few KiB of I/O. This keeps the closure computation on the `isc run` start path cheap. Layout per
//! the System V gABI and `elf(5)`.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

const PT_LOAD: u32 = 1;
const PT_DYNAMIC: u32 = 2;
const PT_INTERP: u32 = 3;
const DT_NULL: u64 = 0;
const DT_NEEDED: u64 = 1;
const DT_STRTAB: u64 = 5;
const DT_STRSZ: u64 = 10;
const DT_SONAME: u64 = 14;
const DT_RPATH: u64 = 15;
const DT_RUNPATH: u64 = 29;
const DT_FLAGS_1: u64 = 0x6fff_fffb;
const DF_1_NODEFLIB: u64 = 0x800;
/// Program headers, dynamic entries and string tables larger than this are refused as corrupt.
const MAX_TABLE_BYTES: u64 = 4 << 20;

/// Errors while reading an ELF file's dynamic-linking information.
#[derive(Debug, thiserror::Error)]
pub enum ElfError {
    /// The file could not be opened or read.
    #[error("cannot read ELF file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file starts with the ELF magic but its headers are inconsistent.
    #[error("malformed ELF file {path}: {what}; the file is corrupt or truncated, reinstall it")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is inconsistent.
        what: &'static str,
    },
}

/// What the dynamic loader needs to know about one ELF object.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ElfInfo {
    /// `true` for ELFCLASS64.
    pub class64: bool,
    /// `e_machine`.
    pub machine: u16,
    /// `PT_INTERP`, the program interpreter (the dynamic loader) of an executable.
    pub interp: Option<PathBuf>,
    /// `DT_NEEDED` entries in order.
    pub needed: Vec<String>,
    /// `DT_SONAME`.
    pub soname: Option<String>,
    /// `DT_RPATH` (colon-separated, unexpanded).
    pub rpath: Option<String>,
    /// `DT_RUNPATH` (colon-separated, unexpanded).
    pub runpath: Option<String>,
    /// `DF_1_NODEFLIB` in `DT_FLAGS_1`: the cache and default directories are not searched.
    pub nodeflib: bool,
}

/// Byte-order-aware reader over a small buffer.
struct Fields {
    le: bool,
}

impl Fields {
    fn u16(&self, b: &[u8], at: usize) -> u16 {
        let a = [b[at], b[at + 1]];
        if self.le {
            u16::from_le_bytes(a)
        } else {
            u16::from_be_bytes(a)
        }
    }
    fn u32(&self, b: &[u8], at: usize) -> u32 {
        let a = [b[at], b[at + 1], b[at + 2], b[at + 3]];
        if self.le {
            u32::from_le_bytes(a)
        } else {
            u32::from_be_bytes(a)
        }
    }
    fn u64(&self, b: &[u8], at: usize) -> u64 {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[at..at + 8]);
        if self.le {
            u64::from_le_bytes(a)
        } else {
            u64::from_be_bytes(a)
        }
    }
    /// A word: 8 bytes in ELFCLASS64, 4 in ELFCLASS32.
    fn word(&self, b: &[u8], at: usize, class64: bool) -> u64 {
        if class64 {
            self.u64(b, at)
        } else {
            u64::from(self.u32(b, at))
        }
    }
}

struct Segment {
    kind: u32,
    offset: u64,
    vaddr: u64,
    filesz: u64,
}

/// Reads `len` bytes at `offset`, refusing absurd sizes.
fn read_at(file: &File, path: &Path, offset: u64, len: u64) -> Result<Vec<u8>, ElfError> {
    if len > MAX_TABLE_BYTES {
        return Err(ElfError::Malformed {
            path: path.to_path_buf(),
            what: "table larger than 4 MiB",
        });
    }
    let mut buf = vec![0u8; len as usize];
    file.read_exact_at(&mut buf, offset).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            ElfError::Malformed {
                path: path.to_path_buf(),
                what: "a table points past the end of the file",
            }
        } else {
            ElfError::Read { path: path.to_path_buf(), source: e }
        }
    })?;
    Ok(buf)
}

/// Reads the dynamic-linking information of `path`. Returns `Ok(None)` when the file is not ELF
/// (scripts, data files, short files).
pub fn read_elf(path: &Path) -> Result<Option<ElfInfo>, ElfError> {
    let file =
        File::open(path).map_err(|e| ElfError::Read { path: path.to_path_buf(), source: e })?;
    let mut ident = [0u8; 64];
    let got = read_prefix(&file, &mut ident)
        .map_err(|e| ElfError::Read { path: path.to_path_buf(), source: e })?;
    if got < 52 || &ident[..4] != b"\x7fELF" {
        return Ok(None);
    }
    let malformed = |what| ElfError::Malformed { path: path.to_path_buf(), what };
    let class64 = match ident[4] {
        1 => false,
        2 => true,
        _ => return Err(malformed("unknown ELF class")),
    };
    let f = Fields {
        le: match ident[5] {
            1 => true,
            2 => false,
            _ => return Err(malformed("unknown ELF data encoding")),
        },
    };
    if class64 && got < 64 {
        return Ok(None);
    }
    let machine = f.u16(&ident, 18);
    let (phoff, phentsize, phnum) = if class64 {
        (f.u64(&ident, 32), f.u16(&ident, 54), f.u16(&ident, 56))
    } else {
        (u64::from(f.u32(&ident, 28)), f.u16(&ident, 42), f.u16(&ident, 44))
    };
    let min_phent = if class64 { 56 } else { 32 };
    if phnum > 0 && usize::from(phentsize) < min_phent {
        return Err(malformed("program header entries too small"));
    }
    let table = read_at(&file, path, phoff, u64::from(phentsize) * u64::from(phnum))?;
    let mut segments = Vec::with_capacity(usize::from(phnum));
    for i in 0..usize::from(phnum) {
        let at = i * usize::from(phentsize);
        let seg = if class64 {
            Segment {
                kind: f.u32(&table, at),
                offset: f.u64(&table, at + 8),
                vaddr: f.u64(&table, at + 16),
                filesz: f.u64(&table, at + 32),
            }
        } else {
            Segment {
                kind: f.u32(&table, at),
                offset: u64::from(f.u32(&table, at + 4)),
                vaddr: u64::from(f.u32(&table, at + 8)),
                filesz: u64::from(f.u32(&table, at + 16)),
            }
        };
        segments.push(seg);
    }
    let mut info = ElfInfo { class64, machine, ..ElfInfo::default() };
    if let Some(seg) = segments.iter().find(|s| s.kind == PT_INTERP) {
        let raw = read_at(&file, path, seg.offset, seg.filesz)?;
        let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
        let text =
            std::str::from_utf8(&raw[..end]).map_err(|_| malformed("PT_INTERP is not UTF-8"))?;
        info.interp = Some(PathBuf::from(text));
    }
    let Some(dynamic) = segments.iter().find(|s| s.kind == PT_DYNAMIC) else {
        return Ok(Some(info));
    };
    let raw = read_at(&file, path, dynamic.offset, dynamic.filesz)?;
    let entsize = if class64 { 16 } else { 8 };
    let word = if class64 { 8 } else { 4 };
    let mut strtab_vaddr = None;
    let mut strsz = None;
    let mut pending: Vec<(u64, u64)> = Vec::new();
    for at in (0..raw.len() / entsize).map(|i| i * entsize) {
        let tag = f.word(&raw, at, class64);
        let val = f.word(&raw, at + word, class64);
        match tag {
            DT_NULL => break,
            DT_STRTAB => strtab_vaddr = Some(val),
            DT_STRSZ => strsz = Some(val),
            DT_FLAGS_1 => info.nodeflib = val & DF_1_NODEFLIB != 0,
            DT_NEEDED | DT_SONAME | DT_RPATH | DT_RUNPATH => pending.push((tag, val)),
            _ => {}
        }
    }
    if pending.is_empty() {
        return Ok(Some(info));
    }
    let (Some(strtab_vaddr), Some(strsz)) = (strtab_vaddr, strsz) else {
        return Err(malformed("dynamic section has names but no DT_STRTAB/DT_STRSZ"));
    };
    // DT_STRTAB is a virtual address; the loader finds it through the PT_LOAD that maps it.
    let load = segments
        .iter()
        .find(|s| s.kind == PT_LOAD && strtab_vaddr >= s.vaddr && strtab_vaddr < s.vaddr + s.filesz)
        .ok_or_else(|| malformed("DT_STRTAB is not inside any PT_LOAD segment"))?;
    let strtab = read_at(&file, path, load.offset + (strtab_vaddr - load.vaddr), strsz)?;
    for (tag, off) in pending {
        let start = usize::try_from(off)
            .ok()
            .filter(|&s| s < strtab.len())
            .ok_or_else(|| malformed("dynamic string offset outside DT_STRTAB"))?;
        let end = strtab[start..]
            .iter()
            .position(|&b| b == 0)
            .map(|p| start + p)
            .ok_or_else(|| malformed("unterminated dynamic string"))?;
        let s = String::from_utf8_lossy(&strtab[start..end]).into_owned();
        match tag {
            DT_NEEDED => info.needed.push(s),
            DT_SONAME => info.soname = Some(s),
            DT_RPATH => info.rpath = Some(s),
            _ => info.runpath = Some(s),
        }
    }
    Ok(Some(info))
}

/// Reads up to `buf.len()` bytes from the start of `file`; returns how many were read.
fn read_prefix(file: &File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match file.read_at(&mut buf[got..], got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_python3_dynamic_section() {
        let info = read_elf(Path::new("/usr/bin/python3")).unwrap().unwrap();
        assert!(info.class64);
        assert_eq!(info.machine, 62);
        assert_eq!(info.interp.as_deref(), Some(Path::new("/lib64/ld-linux-x86-64.so.2")));
        assert!(info.needed.iter().any(|n| n == "libm.so.6"), "{info:?}");
        assert!(info.needed.iter().any(|n| n == "libc.so.6"), "{info:?}");
    }

    #[test]
    fn libc_has_soname_and_no_interp_needed() {
        let info = read_elf(Path::new("/lib/x86_64-linux-gnu/libc.so.6")).unwrap().unwrap();
        assert_eq!(info.soname.as_deref(), Some("libc.so.6"));
        assert_eq!(info.needed, vec!["ld-linux-x86-64.so.2".to_string()]);
    }

    #[test]
    fn non_elf_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("script");
        std::fs::write(&p, "#!/bin/sh\necho hi\n").unwrap();
        assert_eq!(read_elf(&p).unwrap(), None);
    }

    #[test]
    fn truncated_elf_is_malformed() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("trunc");
        let bytes = std::fs::read("/usr/bin/python3").unwrap();
        std::fs::write(&p, &bytes[..200]).unwrap();
        assert!(matches!(read_elf(&p), Err(ElfError::Malformed { .. })));
    }
}
