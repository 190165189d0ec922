//! Measures what the vault adds to an ISC start (run as root):
//! `cargo run -p isc-vault --example start_cost`.
//! Secrets: open N sealed secrets + deliver them on a tmpfs + unmount, for N = 1 and 20.
//! Volume: first creation (mkfs) and a later open + close of an encrypted volume.

use std::path::Path;
use std::time::{Duration, Instant};

use isc_vault::{unmount_secret_tmpfs, write_secret_tmpfs, KeySource, Vault, Zeroizing};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let base = Path::new("/tmp/isc-vault-bench");
    let _ = std::fs::remove_dir_all(base);
    let (root, run) = (base.join("root"), base.join("run"));
    let mut vault = Vault::open(&root, KeySource::File)?;
    for i in 0..20 {
        vault.set("bench", &format!("s{i}"), Zeroizing::new(vec![b'x'; 64]))?;
    }
    for n in [1usize, 20] {
        let names: Vec<String> = (0..n).map(|i| format!("s{i}")).collect();
        let dir = base.join(format!("secrets-{n}"));
        let mut times = Vec::new();
        for _ in 0..50 {
            let t = Instant::now();
            let opened = vault.open_for_start("bench", &names)?;
            write_secret_tmpfs(&dir, &opened, 1000, 1000, 1 << 20)?;
            times.push(t.elapsed());
            unmount_secret_tmpfs(&dir)?;
        }
        let m = median(times);
        println!("secrets n={n:2}: median {m:?} ({:?} per secret)", m / n as u32);
    }
    let t = Instant::now();
    vault.open_volume(&run, "bench", "vol", 64 << 20, true)?.close()?;
    println!("encrypted volume, first use (mkfs + mount + policy + close): {:?}", t.elapsed());
    let mut opens = Vec::new();
    let mut closes = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        let vol = vault.open_volume(&run, "bench", "vol", 64 << 20, true)?;
        opens.push(t.elapsed());
        let t = Instant::now();
        vol.close()?;
        closes.push(t.elapsed());
    }
    println!(
        "encrypted volume, later starts: open median {:?}, close median {:?}",
        median(opens),
        median(closes)
    );
    std::fs::remove_dir_all(base)?;
    Ok(())
}
