//! The seccomp allowlist: compiled once per profile, cached on disk, loaded last.
//!
//! Compiling a ~300-entry filter at every start is what costs hardened crun/runc ~25 ms
//! (PEERS.md). We compile once, store the raw BPF under the state directory keyed by the BLAKE3
//! of the profile, and on later starts only read the instructions back.
//!
//! The compiler is our own, not seccompiler's: an allowlist of ~300 syscall numbers collapses
//! into ~50 contiguous ranges, so the program is ~250 instructions instead of ~1350. That makes
//! the kernel's load (verification and JIT, ~0.5 ms for the long form) and every filtered syscall
//! cheaper, and adds what seccompiler lacks: the x32 ABI (bit 30 of the number) is refused.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::seccomp_table::KNOWN;

/// A classic BPF program, as `struct sock_filter` instructions.
pub type BpfProgram = Vec<libc::sock_filter>;

/// Errors while building, caching or loading the filter.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("unknown syscall `{0}` in [security] allow/deny: not a syscall name on x86_64; fix: check the spelling (see `man 2 syscalls`)")]
    UnknownSyscall(String),
    #[error("syscall `{0}` cannot be allowed: it would let the service escape its ISC")]
    Forbidden(String),
    #[error("compiling the seccomp filter failed: {0}")]
    Compile(String),
    #[error("seccomp filter cache {path}: {source}")]
    Cache { path: PathBuf, source: std::io::Error },
    #[error("loading the seccomp filter failed: {0}")]
    Load(std::io::Error),
}

/// Syscalls that the default profile denies and that no manifest may re-allow: each is a
/// known container-escape or kernel-attack primitive.
const NEVER: &[&str] = &[
    "mount",
    "umount2",
    "pivot_root",
    "chroot",
    "unshare",
    "setns",
    "bpf",
    "ptrace",
    "init_module",
    "finit_module",
    "delete_module",
    "kexec_load",
    "kexec_file_load",
    "reboot",
    "open_by_handle_at",
    "name_to_handle_at",
    "keyctl",
    "add_key",
    "request_key",
    "process_vm_writev",
    "userfaultfd",
    "iopl",
    "ioperm",
    "swapon",
    "swapoff",
    "fsopen",
    "fsmount",
    "fsconfig",
    "move_mount",
    "open_tree",
    "mount_setattr",
    "kcmp",
];

/// Everything in `KNOWN` up to (excluding) this name is allowed by default.
const FIRST_DENIED: &str = "mount";

/// Namespace flags `clone(2)` may not carry (CLONE_NEWUSER would need no capability at all).
const CLONE_NS_FLAGS: u64 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWCGROUP) as u64
    | 0x80; // CLONE_NEWTIME

/// Address families `socket(2)` may create. AF_ALG, AF_PACKET, AF_VSOCK … stay denied:
/// they are rarely needed by services and a recurring source of kernel CVEs.
const SOCKET_FAMILIES: &[i32] = &[libc::AF_UNIX, libc::AF_INET, libc::AF_INET6, libc::AF_NETLINK];

fn number(name: &str) -> Result<libc::c_long, SeccompError> {
    let wanted = name.strip_prefix("SYS_").unwrap_or(name);
    KNOWN
        .iter()
        .find(|(n, _)| n.strip_prefix("SYS_") == Some(wanted))
        .map(|(_, nr)| *nr)
        .ok_or_else(|| SeccompError::UnknownSyscall(name.to_string()))
}

/// The default allowlist, as names.
pub fn default_allowlist() -> Vec<&'static str> {
    KNOWN
        .iter()
        .map(|(n, _)| n.strip_prefix("SYS_").unwrap_or(n))
        .take_while(|n| *n != FIRST_DENIED)
        .collect()
}

/// A seccomp profile: the default allowlist adjusted by the manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    allowed: Vec<&'static str>,
}

impl Profile {
    /// Builds the profile for a manifest's `allow`/`deny` lists.
    pub fn new(allow: &[String], deny: &[String]) -> Result<Self, SeccompError> {
        let mut allowed = default_allowlist();
        for name in allow {
            number(name)?;
            let canonical = name.strip_prefix("SYS_").unwrap_or(name);
            if NEVER.contains(&canonical) {
                return Err(SeccompError::Forbidden(canonical.to_string()));
            }
            let entry = KNOWN
                .iter()
                .map(|(n, _)| n.strip_prefix("SYS_").unwrap_or(n))
                .find(|n| *n == canonical)
                .ok_or_else(|| SeccompError::UnknownSyscall(name.clone()))?;
            if !allowed.contains(&entry) {
                allowed.push(entry);
            }
        }
        for name in deny {
            number(name)?;
            let canonical = name.strip_prefix("SYS_").unwrap_or(name);
            allowed.retain(|n| *n != canonical);
        }
        allowed.sort_unstable();
        Ok(Self { allowed })
    }

    /// A stable key for the on-disk cache.
    pub fn cache_key(&self) -> String {
        let mut h = blake3::Hasher::new();
        h.update(b"isc-seccomp-v3\0");
        h.update(env!("CARGO_PKG_VERSION").as_bytes());
        for n in &self.allowed {
            h.update(n.as_bytes());
            h.update(b"\0");
        }
        h.finalize().to_hex()[..32].to_string()
    }

    pub fn allows(&self, name: &str) -> bool {
        self.allowed.contains(&name)
    }

    /// Compiles the filter. Unlisted syscalls fail with EPERM; `clone3` passes here and fails
    /// with ENOSYS in [`clone3_companion`], installed with it, so that libc falls back to
    /// `clone`, whose flags (unlike clone3's, passed in memory) we can check;
    /// `clone` may not create namespaces; `socket` only for the families in `SOCKET_FAMILIES`;
    /// another architecture (i386 `int 0x80`) kills the process; x32 numbers are refused.
    pub fn compile(&self) -> Result<BpfProgram, SeccompError> {
        let mut nrs = Vec::with_capacity(self.allowed.len());
        for name in &self.allowed {
            nrs.push(number(name)? as u32);
        }
        let allow_clone = nrs.contains(&(libc::SYS_clone as u32));
        let allow_socket = nrs.contains(&(libc::SYS_socket as u32));
        nrs.retain(|n| *n != libc::SYS_clone as u32 && *n != libc::SYS_socket as u32);
        nrs.sort_unstable();
        nrs.dedup();

        let mut p = Bpf::default();
        p.ld(OFF_ARCH);
        p.jump(BPF_JEQ, AUDIT_ARCH_X86_64, 1, 0);
        p.ret(SECCOMP_RET_KILL_PROCESS);
        p.ld(OFF_NR);
        p.jump(BPF_JGE, X32_SYSCALL_BIT, 0, 1);
        p.ret(RET_EPERM);
        p.jump(BPF_JEQ, libc::SYS_clone3 as u32, 0, 1);
        p.ret(SECCOMP_RET_ALLOW);
        if allow_clone {
            // ld args[0] (low word holds every CLONE_NEW* flag); any set → EPERM.
            p.jump(BPF_JEQ, libc::SYS_clone as u32, 0, 4);
            p.ld(OFF_ARG0_LO);
            p.jump(BPF_JSET, CLONE_NS_FLAGS as u32, 1, 0);
            p.ret(SECCOMP_RET_ALLOW);
            p.ret(RET_EPERM);
        }
        if allow_socket {
            let fams = SOCKET_FAMILIES.len() as u8;
            p.jump(BPF_JEQ, libc::SYS_socket as u32, 0, fams + 3);
            p.ld(OFF_ARG0_LO);
            for (i, fam) in SOCKET_FAMILIES.iter().enumerate() {
                // On a match, jump over the remaining tests and the EPERM return to ALLOW.
                p.jump(BPF_JEQ, *fam as u32, fams - i as u8, 0);
            }
            p.ret(RET_EPERM);
            p.ret(SECCOMP_RET_ALLOW);
        }
        // Ascending ranges: nr > hi → next range; lo <= nr → allow; else (below this range
        // and so below every later one) → EPERM. Every jump is short, so no 8-bit offset can
        // overflow however many ranges a manifest creates.
        for (lo, hi) in ranges(&nrs) {
            p.jump(BPF_JGT, hi, 3, 0);
            p.jump(BPF_JGE, lo, 0, 1);
            p.ret(SECCOMP_RET_ALLOW);
            p.ret(RET_EPERM);
        }
        p.ret(RET_EPERM);
        if p.0.len() > BPF_MAXINSNS {
            return Err(SeccompError::Compile(format!(
                "{} instructions exceed the kernel's limit of {BPF_MAXINSNS}",
                p.0.len()
            )));
        }
        Ok(p.0)
    }
}

/// The syscall number PID 1 calls, once the service has ended with no other process left,
/// to put a record at the end of the kernel's audit queue (see `isc-cli`'s `audit_collect`).
/// No kernel syscall has this number (x86_64 is below 500) and no manifest can name it, so
/// every profile's filter refuses it like any unknown number (EPERM, logged when the profile
/// logs): the record, carrying PID 1's host pid, tells the monitor's collector that every
/// denial of the ISC is already queued before it — kauditd delivers in queue order, and each
/// record is queued in the denied syscall's own context (kernel/audit.c `audit_log_end`).
pub const AUDIT_BARRIER_SYSCALL: i64 = 0x000f_ffff;

/// Puts the barrier record in the audit queue from the calling process (see
/// [`AUDIT_BARRIER_SYSCALL`]); a no-op where nothing logs the refusal.
pub fn emit_audit_barrier() {
    // SAFETY: a syscall number no kernel implements, without arguments: the filter refuses it
    // (or, without one, the kernel answers ENOSYS); nothing is read or written.
    unsafe { libc::syscall(AUDIT_BARRIER_SYSCALL) };
}

const BPF_MAXINSNS: usize = 4096;
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
/// `struct seccomp_data.args[0]`, low 32 bits (little-endian).
const OFF_ARG0_LO: u32 = 16;
const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
const X32_SYSCALL_BIT: u32 = 0x4000_0000;
const SECCOMP_RET_KILL_PROCESS: u32 = 0x8000_0000;
const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
const RET_EPERM: u32 = SECCOMP_RET_ERRNO | libc::EPERM as u32;
const BPF_LD_W_ABS: u16 = 0x20;
const BPF_RET_K: u16 = 0x06;
const BPF_JEQ: u16 = 0x15;
const BPF_JGT: u16 = 0x25;
const BPF_JGE: u16 = 0x35;
const BPF_JSET: u16 = 0x45;

#[derive(Default)]
struct Bpf(BpfProgram);

impl Bpf {
    fn ld(&mut self, k: u32) {
        self.0.push(libc::sock_filter { code: BPF_LD_W_ABS, jt: 0, jf: 0, k });
    }
    fn jump(&mut self, code: u16, k: u32, jt: u8, jf: u8) {
        self.0.push(libc::sock_filter { code, jt, jf, k });
    }
    fn ret(&mut self, k: u32) {
        self.0.push(libc::sock_filter { code: BPF_RET_K, jt: 0, jf: 0, k });
    }
}

/// Sorted, deduplicated numbers → maximal contiguous `(lo, hi)` ranges.
fn ranges(sorted: &[u32]) -> Vec<(u32, u32)> {
    let mut out: Vec<(u32, u32)> = vec![];
    for &n in sorted {
        match out.last_mut() {
            Some((_, hi)) if *hi + 1 == n => *hi = n,
            _ => out.push((n, n)),
        }
    }
    out
}

fn to_bytes(prog: &BpfProgram) -> Vec<u8> {
    let mut out = Vec::with_capacity(prog.len() * 8);
    for i in prog {
        out.extend_from_slice(&i.code.to_le_bytes());
        out.push(i.jt);
        out.push(i.jf);
        out.extend_from_slice(&i.k.to_le_bytes());
    }
    out
}

fn from_bytes(bytes: &[u8]) -> Option<BpfProgram> {
    if bytes.is_empty() || !bytes.len().is_multiple_of(8) {
        return None;
    }
    Some(
        bytes
            .chunks_exact(8)
            .map(|c| libc::sock_filter {
                code: u16::from_le_bytes([c[0], c[1]]),
                jt: c[2],
                jf: c[3],
                k: u32::from_le_bytes([c[4], c[5], c[6], c[7]]),
            })
            .collect(),
    )
}

/// Returns the compiled filter for `profile`, from `cache_dir` when present.
/// The cache file is written atomically (temp + rename), root-only.
pub fn load_or_compile(profile: &Profile, cache_dir: &Path) -> Result<BpfProgram, SeccompError> {
    let path = cache_dir.join(format!("seccomp-{}.bpf", profile.cache_key()));
    if let Ok(bytes) = fs::read(&path) {
        if let Some(prog) = from_bytes(&bytes) {
            return Ok(prog);
        }
    }
    let prog = profile.compile()?;
    let cache = |source| SeccompError::Cache { path: path.clone(), source };
    fs::create_dir_all(cache_dir).map_err(cache)?;
    let tmp = cache_dir.join(format!(".seccomp-{}.{}", profile.cache_key(), std::process::id()));
    let mut f = fs::File::create(&tmp).map_err(cache)?;
    f.write_all(&to_bytes(&prog)).map_err(cache)?;
    drop(f);
    fs::rename(&tmp, &path).map_err(cache)?;
    Ok(prog)
}

/// The filter installed beside every profile's: `clone3` fails with ENOSYS, everything else
/// is left to the profile. It is a filter of its own because it is never logged: glibc tries
/// `clone3` before `clone` at every fork, thread and posix_spawn, and a logged ENOSYS would put
/// one kernel audit record per process creation on the host's audit stream. When several
/// filters answer, the kernel keeps the most restrictive action and logs it only if the filter
/// that returned it asked to (kernel/seccomp.c, `seccomp_log`), so the profile allows `clone3`
/// and this one refuses it.
pub fn clone3_companion() -> BpfProgram {
    let mut p = Bpf::default();
    p.ld(OFF_NR);
    p.jump(BPF_JEQ, libc::SYS_clone3 as u32, 0, 1);
    p.ret(SECCOMP_RET_ERRNO | libc::ENOSYS as u32);
    p.ret(SECCOMP_RET_ALLOW);
    p.0
}

/// Installs the profile's filter on the calling thread, after its unlogged `clone3`
/// companion (first, so that no moment exists where the profile's `clone3` allowance stands
/// alone). Requires no_new_privs (set earlier). `log` asks the kernel to audit-log every
/// non-allow action of the profile (SECCOMP_FILTER_FLAG_LOG).
pub fn install(prog: &BpfProgram, log: bool) -> Result<(), SeccompError> {
    install_one(&clone3_companion(), false)?;
    install_one(prog, log)
}

fn install_one(prog: &BpfProgram, log: bool) -> Result<(), SeccompError> {
    let fprog = libc::sock_fprog { len: prog.len() as u16, filter: prog.as_ptr().cast_mut() };
    let flags: libc::c_ulong = if log { libc::SECCOMP_FILTER_FLAG_LOG } else { 0 };
    // SAFETY: seccomp(2) SECCOMP_SET_MODE_FILTER reads `fprog` and the instructions it points to
    // (both alive for the call).
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            flags,
            &fprog as *const libc::sock_fprog,
        )
    };
    if rc != 0 {
        return Err(SeccompError::Load(std::io::Error::last_os_error()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_profile_denies_escape_primitives() {
        let p = Profile::new(&[], &[]).unwrap();
        for n in NEVER {
            assert!(!p.allows(n), "{n} must not be allowed by default");
        }
        for n in ["read", "execve", "clone", "socket", "exit_group", "landlock_restrict_self"] {
            assert!(p.allows(n), "{n} must be allowed");
        }
    }

    #[test]
    fn forbidden_syscalls_cannot_be_allowed() {
        let e = Profile::new(&["ptrace".into()], &[]).unwrap_err();
        assert!(matches!(e, SeccompError::Forbidden(ref n) if n == "ptrace"));
        let e = Profile::new(&["frobnicate".into()], &[]).unwrap_err();
        assert!(e.to_string().contains("unknown syscall `frobnicate`"));
    }

    #[test]
    fn allow_and_deny_change_the_key() {
        let a = Profile::new(&[], &[]).unwrap();
        let b = Profile::new(&["personality".into()], &[]).unwrap();
        let c = Profile::new(&[], &["getppid".into()]).unwrap();
        assert!(b.allows("personality") && !c.allows("getppid"));
        assert_ne!(a.cache_key(), b.cache_key());
        assert_ne!(a.cache_key(), c.cache_key());
    }

    #[test]
    fn cache_round_trips_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let p = Profile::new(&[], &[]).unwrap();
        let first = load_or_compile(&p, dir.path()).unwrap();
        let second = load_or_compile(&p, dir.path()).unwrap();
        assert_eq!(to_bytes(&first), to_bytes(&second));
        assert_eq!(to_bytes(&first), to_bytes(&p.compile().unwrap()));
        assert!(first.len() < 400, "range compression: {} instructions", first.len());
    }

    /// A classic-BPF interpreter for the instructions the compiler emits.
    fn run(prog: &BpfProgram, nr: u32, arch: u32, arg0: u64) -> u32 {
        let mut data = [0u8; 64];
        data[0..4].copy_from_slice(&nr.to_le_bytes());
        data[4..8].copy_from_slice(&arch.to_le_bytes());
        data[16..24].copy_from_slice(&arg0.to_le_bytes());
        let (mut pc, mut acc) = (0usize, 0u32);
        loop {
            let i = &prog[pc];
            pc += 1;
            let jump = |cond: bool| if cond { i.jt as usize } else { i.jf as usize };
            match i.code {
                BPF_LD_W_ABS => {
                    let k = i.k as usize;
                    acc = u32::from_le_bytes(data[k..k + 4].try_into().unwrap());
                }
                BPF_RET_K => return i.k,
                BPF_JEQ => pc += jump(acc == i.k),
                BPF_JGT => pc += jump(acc > i.k),
                BPF_JGE => pc += jump(acc >= i.k),
                BPF_JSET => pc += jump(acc & i.k != 0),
                c => panic!("unexpected opcode {c:#x}"),
            }
        }
    }

    /// What the kernel does with several filters: the most restrictive action wins
    /// (`ACTION_ONLY` compared as signed, so KILL_PROCESS first).
    fn effective(progs: &[&BpfProgram], nr: u32, arch: u32, arg0: u64) -> u32 {
        let rank = |r: u32| (r & 0xffff_0000) as i32;
        progs.iter().map(|p| run(p, nr, arch, arg0)).min_by_key(|r| rank(*r)).unwrap()
    }

    #[test]
    fn the_audit_barrier_is_refused_by_the_logged_profile_even_allowing_everything_it_can() {
        // The most permissive profile a manifest can ask for still refuses the barrier number,
        // and it is the logged filter (not the companion) that decides it.
        let names: Vec<String> = ["personality", "getppid", "sysinfo"].map(String::from).into();
        for profile in [Profile::new(&[], &[]).unwrap(), Profile::new(&names, &[]).unwrap()] {
            let p = profile.compile().unwrap();
            let nr = AUDIT_BARRIER_SYSCALL as u32;
            assert_eq!(run(&p, nr, AUDIT_ARCH_X86_64, 0), RET_EPERM);
            assert_eq!(run(&clone3_companion(), nr, AUDIT_ARCH_X86_64, 0), SECCOMP_RET_ALLOW);
        }
        assert!(AUDIT_BARRIER_SYSCALL as u32 & X32_SYSCALL_BIT == 0);
    }

    #[test]
    fn clone3_is_refused_by_the_unlogged_companion_alone() {
        let p = Profile::new(&[], &[]).unwrap().compile().unwrap();
        let x86 = AUDIT_ARCH_X86_64;
        let clone3 = libc::SYS_clone3 as u32;
        // The logged profile lets it through; the companion (installed without
        // SECCOMP_FILTER_FLAG_LOG) refuses it, so the refusal is never logged…
        assert_eq!(run(&p, clone3, x86, 0), SECCOMP_RET_ALLOW);
        assert_eq!(
            run(&clone3_companion(), clone3, x86, 0),
            SECCOMP_RET_ERRNO | libc::ENOSYS as u32
        );
        assert_eq!(effective(&[&clone3_companion(), &p], clone3, x86, 0), SECCOMP_RET_ERRNO | 38);
        // …and the companion decides nothing else.
        for nr in [libc::SYS_read, libc::SYS_ptrace, libc::SYS_clone] {
            assert_eq!(run(&clone3_companion(), nr as u32, x86, 0), SECCOMP_RET_ALLOW);
        }
    }

    #[test]
    fn compiled_filter_decides_exactly_like_the_profile() {
        let p = Profile::new(&["personality".into()], &["getppid".into()]).unwrap();
        let prog = p.compile().unwrap();
        let x86 = AUDIT_ARCH_X86_64;
        for (name, nr) in KNOWN {
            let name = name.strip_prefix("SYS_").unwrap();
            let got = effective(&[&clone3_companion(), &prog], *nr as u32, x86, 0);
            let want = match name {
                "clone3" => SECCOMP_RET_ERRNO | libc::ENOSYS as u32,
                "socket" => RET_EPERM, // family 0 (AF_UNSPEC) is not allowed
                n if p.allows(n) => SECCOMP_RET_ALLOW,
                _ => RET_EPERM,
            };
            assert_eq!(got, want, "{name} ({nr})");
        }
        // Numbers no table names (gaps, future syscalls) are denied.
        for nr in [335u32, 400, 470, 1000] {
            assert_eq!(run(&prog, nr, x86, 0), RET_EPERM, "{nr}");
        }
        // clone: threads and forks pass, any namespace flag is refused.
        let thread = (libc::CLONE_VM
            | libc::CLONE_FS
            | libc::CLONE_FILES
            | libc::CLONE_SIGHAND
            | libc::CLONE_THREAD) as u64;
        assert_eq!(run(&prog, libc::SYS_clone as u32, x86, thread), SECCOMP_RET_ALLOW);
        for ns in [libc::CLONE_NEWUSER, libc::CLONE_NEWNS, libc::CLONE_NEWNET, libc::CLONE_NEWPID] {
            let flags = thread | ns as u64;
            assert_eq!(run(&prog, libc::SYS_clone as u32, x86, flags), RET_EPERM, "{ns:#x}");
        }
        // socket: only the allowed families.
        for fam in SOCKET_FAMILIES {
            assert_eq!(run(&prog, libc::SYS_socket as u32, x86, *fam as u64), SECCOMP_RET_ALLOW);
        }
        for fam in [libc::AF_PACKET, libc::AF_ALG, libc::AF_VSOCK, libc::AF_KEY] {
            assert_eq!(run(&prog, libc::SYS_socket as u32, x86, fam as u64), RET_EPERM, "{fam}");
        }
        // x32 (bit 30) and foreign architectures.
        assert_eq!(run(&prog, X32_SYSCALL_BIT | libc::SYS_read as u32, x86, 0), RET_EPERM);
        assert_eq!(run(&prog, 20, 0x4000_0003 /* AUDIT_ARCH_I386 */, 0), SECCOMP_RET_KILL_PROCESS);
    }
}
