//! fscrypt v2 ioctls, written by hand from `include/uapi/linux/fscrypt.h` and
//! Documentation/filesystems/fscrypt.rst (no Rust crate wraps them).
//!
//! Keys are added to the filesystem's own keyring (FS_IOC_ADD_ENCRYPTION_KEY, v2 "identifier"
//! keys), not to a process keyring, so they do not depend on the session that added them and are
//! removed explicitly with FS_IOC_REMOVE_ENCRYPTION_KEY, which also evicts cached plaintext.

use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use zeroize::Zeroize;

/// AES-256-XTS for file contents.
pub const MODE_AES_256_XTS: u8 = 1;
/// AES-256-CTS-CBC for file names.
pub const MODE_AES_256_CTS: u8 = 4;
/// Pad file names to 32 bytes (FSCRYPT_POLICY_FLAGS_PAD_32), leaking less about name lengths.
pub const FLAGS_PAD_32: u8 = 0x03;
/// The v2 policy version number.
pub const POLICY_V2: u8 = 2;
/// Length of a v2 key identifier.
pub const KEY_IDENTIFIER_SIZE: usize = 16;
/// Raw key length used for AES-256-XTS (two 256-bit keys).
pub const RAW_KEY_LEN: usize = 64;

const KEY_SPEC_TYPE_IDENTIFIER: u32 = 2;
/// FSCRYPT_KEY_STATUS_ABSENT.
pub const KEY_STATUS_ABSENT: u32 = 1;
/// FSCRYPT_KEY_STATUS_PRESENT.
pub const KEY_STATUS_PRESENT: u32 = 2;
/// FSCRYPT_KEY_STATUS_INCOMPLETELY_REMOVED.
pub const KEY_STATUS_INCOMPLETELY_REMOVED: u32 = 3;

/// Errors of the fscrypt ioctls.
#[derive(Debug, thiserror::Error)]
pub enum FscryptError {
    /// Opening the directory failed.
    #[error("cannot open {path} for fscrypt: {source}")]
    Open {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// An ioctl failed.
    #[error("{ioctl} on {path} failed: {source}{hint}")]
    Ioctl {
        /// Which ioctl.
        ioctl: &'static str,
        /// The file it was issued on.
        path: PathBuf,
        /// The errno.
        source: Errno,
        /// A hint for common errnos.
        hint: &'static str,
    },
}

/// `struct fscrypt_policy_v2`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PolicyV2 {
    /// Always [`POLICY_V2`].
    pub version: u8,
    /// Contents mode, e.g. [`MODE_AES_256_XTS`].
    pub contents_encryption_mode: u8,
    /// Filenames mode, e.g. [`MODE_AES_256_CTS`].
    pub filenames_encryption_mode: u8,
    /// FSCRYPT_POLICY_FLAG_*.
    pub flags: u8,
    /// log2 of the data unit size; 0 = the filesystem block size (Linux 6.7+, reserved before).
    pub log2_data_unit_size: u8,
    reserved: [u8; 3],
    /// Identifier of the master key, as returned by [`add_key`].
    pub master_key_identifier: [u8; KEY_IDENTIFIER_SIZE],
}

impl PolicyV2 {
    /// AES-256-XTS / AES-256-CTS, 32-byte name padding, for the key `identifier`.
    pub fn aes256(identifier: [u8; KEY_IDENTIFIER_SIZE]) -> Self {
        PolicyV2 {
            version: POLICY_V2,
            contents_encryption_mode: MODE_AES_256_XTS,
            filenames_encryption_mode: MODE_AES_256_CTS,
            flags: FLAGS_PAD_32,
            log2_data_unit_size: 0,
            reserved: [0; 3],
            master_key_identifier: identifier,
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy)]
struct KeySpecifier {
    kind: u32,
    reserved: u32,
    u: [u8; 32],
}

impl KeySpecifier {
    fn identifier(id: &[u8; KEY_IDENTIFIER_SIZE]) -> Self {
        let mut u = [0u8; 32];
        u[..KEY_IDENTIFIER_SIZE].copy_from_slice(id);
        KeySpecifier { kind: KEY_SPEC_TYPE_IDENTIFIER, reserved: 0, u }
    }
}

/// `struct fscrypt_add_key_arg` followed by the raw key (the kernel reads `raw_size` bytes).
#[repr(C)]
struct AddKeyArg {
    key_spec: KeySpecifier,
    raw_size: u32,
    key_id: u32,
    reserved: [u32; 8],
    raw: [u8; RAW_KEY_LEN],
}

#[repr(C)]
struct RemoveKeyArg {
    key_spec: KeySpecifier,
    removal_status_flags: u32,
    reserved: [u32; 5],
}

#[repr(C)]
struct KeyStatusArg {
    key_spec: KeySpecifier,
    reserved: [u32; 6],
    status: u32,
    status_flags: u32,
    user_count: u32,
    out_reserved: [u32; 13],
}

#[repr(C)]
struct GetPolicyExArg {
    policy_size: u64,
    policy: PolicyV2,
}

// The request numbers encode the sizes of the uapi structs; the header's own (odd) directions are
// kept: SET_ENCRYPTION_POLICY is _IOR('f', 19, struct fscrypt_policy_v1) even for v2 policies,
// and GET_ENCRYPTION_POLICY_EX is _IOWR('f', 22, __u8[9]).
const FS_IOC_SET_ENCRYPTION_POLICY: libc::c_ulong = nix::request_code_read!(b'f', 19, 12) as _;
const FS_IOC_GET_ENCRYPTION_POLICY_EX: libc::c_ulong =
    nix::request_code_readwrite!(b'f', 22, 9) as _;
const FS_IOC_ADD_ENCRYPTION_KEY: libc::c_ulong =
    nix::request_code_readwrite!(b'f', 23, std::mem::size_of::<AddKeyArg>() - RAW_KEY_LEN) as _;
const FS_IOC_REMOVE_ENCRYPTION_KEY: libc::c_ulong =
    nix::request_code_readwrite!(b'f', 24, std::mem::size_of::<RemoveKeyArg>()) as _;
const FS_IOC_GET_ENCRYPTION_KEY_STATUS: libc::c_ulong =
    nix::request_code_readwrite!(b'f', 26, std::mem::size_of::<KeyStatusArg>()) as _;

fn ioctl_err(ioctl: &'static str, path: &Path, source: Errno) -> FscryptError {
    let hint = match source {
        Errno::EOPNOTSUPP => " (the filesystem lacks the ext4 `encrypt` feature or the kernel lacks CONFIG_FS_ENCRYPTION)",
        Errno::ENOTEMPTY => " (fscrypt policies can only be set on empty directories)",
        Errno::EEXIST => " (the directory already has a different policy)",
        Errno::ENOKEY => " (the policy's key has not been added)",
        Errno::ENODATA => " (the directory is not encrypted)",
        _ => "",
    };
    FscryptError::Ioctl { ioctl, path: path.into(), source, hint }
}

/// Runs `ioctl(fd, req, arg)`.
///
/// # Safety
/// `arg` must point to a live value of the type the request expects.
unsafe fn raw_ioctl<T>(fd: BorrowedFd<'_>, req: libc::c_ulong, arg: *mut T) -> Result<(), Errno> {
    // SAFETY: the caller guarantees `arg` matches `req`; `fd` is a valid open descriptor.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), req as _, arg) };
    Errno::result(rc).map(drop)
}

/// Adds a 64-byte raw key to the filesystem holding `fd` and returns its v2 identifier.
pub fn add_key(
    fd: BorrowedFd<'_>,
    path: &Path,
    raw: &[u8; RAW_KEY_LEN],
) -> Result<[u8; KEY_IDENTIFIER_SIZE], FscryptError> {
    let mut arg = AddKeyArg {
        key_spec: KeySpecifier { kind: KEY_SPEC_TYPE_IDENTIFIER, reserved: 0, u: [0; 32] },
        raw_size: RAW_KEY_LEN as u32,
        key_id: 0,
        reserved: [0; 8],
        raw: *raw,
    };
    // SAFETY: `arg` is a fscrypt_add_key_arg followed by `raw_size` key bytes, as the ioctl reads.
    let res = unsafe { raw_ioctl(fd, FS_IOC_ADD_ENCRYPTION_KEY, &mut arg) };
    arg.raw.zeroize();
    res.map_err(|e| ioctl_err("FS_IOC_ADD_ENCRYPTION_KEY", path, e))?;
    let mut id = [0u8; KEY_IDENTIFIER_SIZE];
    id.copy_from_slice(&arg.key_spec.u[..KEY_IDENTIFIER_SIZE]);
    Ok(id)
}

/// Removes key `identifier` from the filesystem; returns the kernel's removal status flags
/// (bit 0 FILES_BUSY: some files were still open, so their keys linger until closed).
pub fn remove_key(
    fd: BorrowedFd<'_>,
    path: &Path,
    identifier: &[u8; KEY_IDENTIFIER_SIZE],
) -> Result<u32, FscryptError> {
    let mut arg = RemoveKeyArg {
        key_spec: KeySpecifier::identifier(identifier),
        removal_status_flags: 0,
        reserved: [0; 5],
    };
    // SAFETY: `arg` is a complete fscrypt_remove_key_arg.
    unsafe { raw_ioctl(fd, FS_IOC_REMOVE_ENCRYPTION_KEY, &mut arg) }
        .map_err(|e| ioctl_err("FS_IOC_REMOVE_ENCRYPTION_KEY", path, e))?;
    Ok(arg.removal_status_flags)
}

/// Returns the status of key `identifier` ([`KEY_STATUS_ABSENT`], ...).
pub fn key_status(
    fd: BorrowedFd<'_>,
    path: &Path,
    identifier: &[u8; KEY_IDENTIFIER_SIZE],
) -> Result<u32, FscryptError> {
    let mut arg = KeyStatusArg {
        key_spec: KeySpecifier::identifier(identifier),
        reserved: [0; 6],
        status: 0,
        status_flags: 0,
        user_count: 0,
        out_reserved: [0; 13],
    };
    // SAFETY: `arg` is a complete fscrypt_get_key_status_arg.
    unsafe { raw_ioctl(fd, FS_IOC_GET_ENCRYPTION_KEY_STATUS, &mut arg) }
        .map_err(|e| ioctl_err("FS_IOC_GET_ENCRYPTION_KEY_STATUS", path, e))?;
    Ok(arg.status)
}

/// Sets `policy` on the (empty) directory `fd`.
pub fn set_policy(fd: BorrowedFd<'_>, path: &Path, policy: &PolicyV2) -> Result<(), FscryptError> {
    let mut p = *policy;
    // SAFETY: the kernel reads the version byte, then sizeof(fscrypt_policy_v2) bytes.
    unsafe { raw_ioctl(fd, FS_IOC_SET_ENCRYPTION_POLICY, &mut p) }
        .map_err(|e| ioctl_err("FS_IOC_SET_ENCRYPTION_POLICY", path, e))
}

/// Reads the policy of `fd`; `Ok(None)` if it is not encrypted (ENODATA).
pub fn get_policy(fd: BorrowedFd<'_>, path: &Path) -> Result<Option<PolicyV2>, FscryptError> {
    let mut arg = GetPolicyExArg {
        policy_size: std::mem::size_of::<PolicyV2>() as u64,
        policy: PolicyV2::default(),
    };
    // SAFETY: `arg` is a fscrypt_get_policy_ex_arg whose union has room for `policy_size` bytes.
    match unsafe { raw_ioctl(fd, FS_IOC_GET_ENCRYPTION_POLICY_EX, &mut arg) } {
        Ok(()) => Ok(Some(arg.policy)),
        Err(Errno::ENODATA) => Ok(None),
        Err(e) => Err(ioctl_err("FS_IOC_GET_ENCRYPTION_POLICY_EX", path, e)),
    }
}

/// Opens `path` (a directory) for the ioctls above.
pub fn open_dir(path: &Path) -> Result<std::fs::File, FscryptError> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .open(path)
        .map_err(|source| FscryptError::Open { path: path.into(), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uapi_sizes_and_request_numbers() {
        assert_eq!(std::mem::size_of::<PolicyV2>(), 24);
        assert_eq!(std::mem::size_of::<KeySpecifier>(), 40);
        assert_eq!(std::mem::size_of::<AddKeyArg>() - RAW_KEY_LEN, 80);
        assert_eq!(std::mem::size_of::<RemoveKeyArg>(), 64);
        assert_eq!(std::mem::size_of::<KeyStatusArg>(), 128);
        // Values from <linux/fscrypt.h> on x86_64/aarch64.
        assert_eq!(FS_IOC_SET_ENCRYPTION_POLICY, 0x800c6613);
        assert_eq!(FS_IOC_GET_ENCRYPTION_POLICY_EX, 0xc0096616);
        assert_eq!(FS_IOC_ADD_ENCRYPTION_KEY, 0xc0506617);
        assert_eq!(FS_IOC_REMOVE_ENCRYPTION_KEY, 0xc0406618);
        assert_eq!(FS_IOC_GET_ENCRYPTION_KEY_STATUS, 0xc080661a);
    }
}
