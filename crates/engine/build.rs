//! Builds `tiny/init.rs`, the hibernating PID 1 (docs/engine.md), into `$OUT_DIR/isc-init`,
//! which `hibernate.rs` embeds. It is compiled here with the same rustc, not as a workspace
//! binary: isc must carry it (PID 1 gets it as a memfd; nothing is installed beside isc), and
//! it must be a freestanding program — no libc, no std, no start files — whatever profile
//! builds isc, so its size and its syscalls do not depend on the build.
//!
//! The result must be a static PIE **without relocations**: nothing in it applies them (no
//! loader, no libc start-up), and a PIE keeps ASLR. The build fails if the linker left any.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let src = "tiny/init.rs";
    println!("cargo:rerun-if-changed={src}");
    println!("cargo:rerun-if-changed=build.rs");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let target = std::env::var("TARGET").expect("cargo sets TARGET");
    if !target.starts_with("x86_64-") || !target.contains("linux") {
        panic!("isc's tiny PID 1 (crates/engine/tiny/init.rs) is written for x86_64 Linux, not {target}");
    }
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let bin = out.join("isc-init");
    let status = Command::new(rustc)
        .args(["--edition", "2021", "--crate-type", "bin", "--crate-name", "isc_init"])
        .args(["--target", &target])
        .args(["-C", "opt-level=s", "-C", "panic=abort", "-C", "lto=fat"])
        .args(["-C", "codegen-units=1", "-C", "debuginfo=0", "-C", "strip=symbols"])
        .args(["-C", "relocation-model=pie"])
        .args(["-C", "link-arg=-nostartfiles", "-C", "link-arg=-nostdlib"])
        .args(["-C", "link-arg=-static-pie", "-C", "link-arg=-Wl,--build-id=none"])
        .args(["-C", "link-arg=-Wl,-z,noexecstack"])
        .arg(src)
        .arg("-o")
        .arg(&bin)
        .status()
        .expect("running rustc for tiny/init.rs");
    assert!(status.success(), "compiling tiny/init.rs failed");
    let elf = std::fs::read(&bin).expect("reading the tiny init");
    if let Some(name) = relocation_section(&elf) {
        panic!("tiny/init.rs linked with relocations ({name}); it has no loader to apply them");
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
