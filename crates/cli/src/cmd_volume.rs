//! `isc volume ls|inspect|rm`: the persistent volumes under `<root>/vault/volumes`.
//!
//! Volumes are created on the first start of an ISC that declares them; there is no `create`
//! verb. `rm` destroys the data (the sealed fscrypt key goes first, so even a partial removal
//! leaves only ciphertext) and is refused while the volume is mounted or attached.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Subcommand;
use isc_vault::VolumeInfo;
use serde_json::json;

use crate::hooks_vault::{open_vault, run_dir};
use crate::launch::Dirs;

#[derive(Subcommand)]
pub enum VolumeCmd {
    /// List volumes (of one ISC with --isc).
    Ls {
        #[arg(long)]
        isc: Option<String>,
        #[arg(long)]
        json: bool,
        /// File holding the vault passphrase (default: $ISC_PASSPHRASE_FILE, else the key file).
        #[arg(long)]
        passphrase_file: Option<PathBuf>,
    },
    /// Show one volume: image, quota, space used, encryption, where it is mounted.
    Inspect {
        /// The volume's name (as in `[[filesystem.volumes]]`).
        name: String,
        #[arg(long)]
        isc: String,
        #[arg(long)]
        json: bool,
        #[arg(long)]
        passphrase_file: Option<PathBuf>,
    },
    /// Delete a volume and its data for good (refused while it is in use).
    Rm {
        name: String,
        #[arg(long)]
        isc: String,
        #[arg(long)]
        passphrase_file: Option<PathBuf>,
    },
}

fn info_json(v: &VolumeInfo) -> serde_json::Value {
    json!({
        "isc": v.isc,
        "name": v.name,
        "image": v.image,
        "size": v.size,
        "allocated": v.allocated,
        "encrypted": v.encrypted,
        "mounted_at": v.mounted_at,
    })
}

fn print_table(list: &[VolumeInfo]) {
    println!(
        "{:<20} {:<20} {:>10} {:>10} {:<9}  MOUNTED",
        "ISC", "NAME", "SIZE", "USED", "ENCRYPTED"
    );
    for v in list {
        println!(
            "{:<20} {:<20} {:>10} {:>10} {:<9}  {}",
            v.isc,
            v.name,
            v.size,
            v.allocated,
            if v.encrypted { "yes" } else { "no" },
            v.mounted_at.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "-".into())
        );
    }
}

/// Runs one `isc volume` verb.
pub fn dispatch(dirs: &Dirs, cmd: VolumeCmd) -> Result<ExitCode> {
    let run = run_dir(dirs)?;
    match cmd {
        VolumeCmd::Ls { isc, json, passphrase_file } => {
            let vault = open_vault(dirs, passphrase_file.as_deref())?;
            let list = vault.list_volumes(&run, isc.as_deref()).context("listing volumes")?;
            if json {
                let v: Vec<_> = list.iter().map(info_json).collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print_table(&list);
            }
        }
        VolumeCmd::Inspect { name, isc, json, passphrase_file } => {
            let vault = open_vault(dirs, passphrase_file.as_deref())?;
            let v = vault
                .inspect_volume(&run, &isc, &name)
                .with_context(|| format!("inspecting volume `{name}` of ISC `{isc}`"))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&info_json(&v))?);
            } else {
                print_table(std::slice::from_ref(&v));
                println!("image: {}", v.image.display());
            }
        }
        VolumeCmd::Rm { name, isc, passphrase_file } => {
            let mut vault = open_vault(dirs, passphrase_file.as_deref())?;
            vault
                .remove_volume(&run, &isc, &name)
                .with_context(|| format!("removing volume `{name}` of ISC `{isc}`"))?;
            println!("removed volume `{name}` of ISC `{isc}` (its data is gone)");
        }
    }
    Ok(ExitCode::SUCCESS)
}
