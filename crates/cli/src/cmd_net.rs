//! `isc net`: the network boundary the running ISCs of this state directory declare.

use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;

use crate::launch::Dirs;

#[derive(Subcommand)]
pub enum NetCmd {
    /// Rebuild the `inet isc` nftables table from the running ISCs in one transaction, removing
    /// what crashed monitors left (nft objects, host links, address leases).
    Reconcile {
        /// Print the nft script instead of applying it.
        #[arg(long)]
        dry_run: bool,
    },
}

pub fn dispatch(dirs: &Dirs, cmd: NetCmd) -> Result<ExitCode> {
    match cmd {
        NetCmd::Reconcile { dry_run } => {
            match crate::hooks_net::reconcile_all(dirs, dry_run)? {
                Some(text) => println!("{text}"),
                None => println!("no ISC here has a network: nothing to reconcile"),
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
