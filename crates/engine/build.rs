//! Builds the tiny programs isc carries: `tiny/init.rs`, the hibernating PID 1 (docs/engine.md),
//! into `$OUT_DIR/isc-init`, and `tiny/monitor.rs`, the hibernating monitor, into
//! `$OUT_DIR/isc-monitor`; `hibernate.rs` embeds both. They are compiled here with the same
//! rustc, not as workspace binaries: isc must carry them (they are exec'd from memfds; nothing
//! is installed beside isc), and they must be freestanding programs — no libc, no std, no start
//! files — whatever profile builds isc, so their size and their syscalls do not depend on the
//! build.
//!
//! Each result must be a static PIE **without relocations**: nothing in it applies them (no
//! loader, no libc start-up), and a PIE keeps ASLR. The build fails if the linker left any.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    // Both programs' runtime (their `rt` module).
    println!("cargo:rerun-if-changed=tiny/rt.rs");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let target = std::env::var("TARGET").expect("cargo sets TARGET");
    if !target.starts_with("x86_64-") || !target.contains("linux") {
        panic!("isc's tiny programs (crates/engine/tiny/) are for x86_64 Linux, not {target}");
    }
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    build_tiny(&rustc, &target, "tiny/init.rs", &out.join("isc-init"));
    build_tiny(&rustc, &target, "tiny/monitor.rs", &out.join("isc-monitor"));
}

/// Compiles `src` into the freestanding static PIE `bin` and checks it has no relocations.
fn build_tiny(rustc: &OsString, target: &str, src: &str, bin: &Path) {
    println!("cargo:rerun-if-changed={src}");
    let name = bin.file_name().and_then(|n| n.to_str()).expect("a UTF-8 file name");
    let status = Command::new(rustc)
        .args(["--edition", "2021", "--crate-type", "bin", "--crate-name", &name.replace('-', "_")])
        .args(["--target", target])
        .args(["-C", "opt-level=s", "-C", "panic=abort", "-C", "lto=fat"])
        .args(["-C", "codegen-units=1", "-C", "debuginfo=0", "-C", "strip=symbols"])
        .args(["-C", "relocation-model=pie"])
        .args(["-C", "link-arg=-nostartfiles", "-C", "link-arg=-nostdlib"])
        .args(["-C", "link-arg=-static-pie", "-C", "link-arg=-Wl,--build-id=none"])
        .args(["-C", "link-arg=-Wl,-z,noexecstack"])
        .arg(src)
        .arg("-o")
        .arg(bin)
        .status()
        .unwrap_or_else(|e| panic!("running rustc for {src}: {e}"));
    assert!(status.success(), "compiling {src} failed");
    let elf = std::fs::read(bin).unwrap_or_else(|e| panic!("reading {}: {e}", bin.display()));
    if let Some(kind) = relocation_section(&elf) {
        panic!("{src} linked with relocations ({kind}); it has no loader to apply them");
    }
}

/// The first non-empty SHT_RELA / SHT_REL / SHT_RELR section of an ELF64 file, if any.
fn relocation_section(elf: &[u8]) -> Option<String> {
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    let u32_at = |o: usize| u32::from_le_bytes(elf[o..o + 4].try_into().unwrap());
    let u64_at = |o: usize| u64::from_le_bytes(elf[o..o + 8].try_into().unwrap()) as usize;
    assert!(elf.len() > 64 && &elf[..4] == b"\x7fELF" && elf[4] == 2, "not an ELF64 file");
    let (shoff, shentsize, shnum) = (u64_at(0x28), u16_at(0x3a), u16_at(0x3c));
    (0..shnum).find_map(|i| {
        let sh = shoff + i * shentsize;
        let (kind, size) = (u32_at(sh + 4), u64_at(sh + 0x20));
        // SHT_RELA 4, SHT_REL 9, SHT_RELR 19.
        (matches!(kind, 4 | 9 | 19) && size > 0)
            .then(|| format!("section type {kind}, {size} bytes"))
    })
}
