//! `isc secret set|ls|rm|rotate-key`: sealed secrets in the vault (`<root>/vault`).
//!
//! Values come from stdin or a file, never from argv (argv is world-readable in
//! `/proc/<pid>/cmdline`), and are never printed. A passphrase-derived vault is unlocked with
//! `--passphrase-file F` or `$ISC_PASSPHRASE_FILE`.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::UNIX_EPOCH;

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use isc_vault::{SecretInfo, Zeroizing, MAX_SECRET_LEN};
use serde_json::json;

use crate::hooks_vault::open_vault;
use crate::launch::Dirs;

#[derive(Subcommand)]
pub enum SecretCmd {
    /// Seal a secret for an ISC; the value is read from stdin (or --file), never from argv.
    Set {
        /// Secret name (1-64 of `A-Za-z0-9_.-`), as declared in the manifest's `[secrets]`.
        name: String,
        #[arg(long)]
        isc: String,
        /// Read the value from this file instead of stdin (exact bytes, newline included).
        #[arg(long)]
        file: Option<PathBuf>,
        /// File holding the vault passphrase (default: $ISC_PASSPHRASE_FILE, else the key file).
        #[arg(long)]
        passphrase_file: Option<PathBuf>,
    },
    /// List an ISC's secrets (names, sizes, key ids; never values).
    Ls {
        #[arg(long)]
        isc: String,
        #[arg(long)]
        json: bool,
        #[arg(long)]
        passphrase_file: Option<PathBuf>,
    },
    /// Delete a secret.
    Rm {
        name: String,
        #[arg(long)]
        isc: String,
        #[arg(long)]
        passphrase_file: Option<PathBuf>,
    },
    /// Create a new master key and re-seal every secret and volume key under it (crash-safe).
    RotateKey {
        #[arg(long)]
        passphrase_file: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
}

/// Reads a secret value into zeroizing memory reserved up front, so no growing buffer leaves
/// copies of it behind in freed memory.
fn read_value(file: Option<&Path>) -> Result<Zeroizing<Vec<u8>>> {
    let mut value = Zeroizing::new(Vec::with_capacity(MAX_SECRET_LEN + 1));
    let limit = MAX_SECRET_LEN as u64 + 1;
    match file {
        Some(p) => File::open(p)
            .and_then(|f| f.take(limit).read_to_end(&mut value))
            .with_context(|| format!("reading the secret value from {}", p.display()))?,
        None => std::io::stdin()
            .lock()
            .take(limit)
            .read_to_end(&mut value)
            .context("reading the secret value from stdin")?,
    };
    if value.len() > MAX_SECRET_LEN {
        bail!("the secret value is larger than {MAX_SECRET_LEN} bytes");
    }
    if value.is_empty() {
        bail!("the secret value is empty; fix: pipe it on stdin (`isc secret set NAME --isc ISC < FILE`) or pass --file");
    }
    Ok(value)
}

fn info_json(i: &SecretInfo) -> serde_json::Value {
    json!({
        "name": i.name,
        "size": i.size,
        "key_id": i.key_id.map(|k| k.to_string()),
        "modified_unix": i.modified.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
    })
}

/// Runs one `isc secret` verb.
pub fn dispatch(dirs: &Dirs, cmd: SecretCmd) -> Result<ExitCode> {
    match cmd {
        SecretCmd::Set { name, isc, file, passphrase_file } => {
            let value = read_value(file.as_deref())?;
            let mut vault = open_vault(dirs, passphrase_file.as_deref())?;
            let info = vault
                .set(&isc, &name, value)
                .with_context(|| format!("sealing secret `{name}` for ISC `{isc}`"))?;
            crate::hooks_audit::record(
                dirs,
                Some(&isc),
                isc_audit::Kind::SecretSet,
                json!({"secret": name, "bytes": info.size, "key_id": info.key_id.map(|k| k.to_string())}),
            )?;
            println!(
                "sealed secret `{name}` for ISC `{isc}` ({} bytes, key {})",
                info.size,
                info.key_id.map(|k| k.to_string()).unwrap_or_else(|| "?".into())
            );
        }
        SecretCmd::Ls { isc, json, passphrase_file } => {
            let vault = open_vault(dirs, passphrase_file.as_deref())?;
            let list = vault.list(&isc).with_context(|| format!("listing secrets of `{isc}`"))?;
            if json {
                let v: Vec<_> = list.iter().map(info_json).collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!("{:<32} {:>8}  KEY", "NAME", "BYTES");
                for i in &list {
                    let key = i.key_id.map(|k| k.to_string()).unwrap_or_else(|| "corrupt".into());
                    println!("{:<32} {:>8}  {key}", i.name, i.size);
                }
            }
        }
        SecretCmd::Rm { name, isc, passphrase_file } => {
            let mut vault = open_vault(dirs, passphrase_file.as_deref())?;
            vault
                .remove(&isc, &name)
                .with_context(|| format!("removing secret `{name}` of `{isc}`"))?;
            crate::hooks_audit::record(
                dirs,
                Some(&isc),
                isc_audit::Kind::SecretRemove,
                json!({"secret": name}),
            )?;
            println!("removed secret `{name}` of ISC `{isc}`");
        }
        SecretCmd::RotateKey { passphrase_file, json } => {
            let mut vault = open_vault(dirs, passphrase_file.as_deref())?;
            let r = vault.rotate_key().context("rotating the master key")?;
            let unreadable: Vec<String> =
                r.unreadable.iter().map(|p| p.display().to_string()).collect();
            crate::hooks_audit::record(
                dirs,
                None,
                isc_audit::Kind::KeyRotate,
                json!({"old": r.old.to_string(), "new": r.new.to_string(), "resealed": r.resealed, "unreadable": unreadable}),
            )?;
            if json {
                let v = json!({"old": r.old.to_string(), "new": r.new.to_string(),
                    "resealed": r.resealed, "unreadable": unreadable});
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!(
                    "rotated master key {} -> {}: {} blob(s) re-sealed",
                    r.old, r.new, r.resealed
                );
                for u in &unreadable {
                    eprintln!("isc: warning: {u} could not be opened (tampered or under a missing key); left as it was, and the old key was kept");
                }
            }
            if !unreadable.is_empty() {
                return Ok(ExitCode::from(1));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
