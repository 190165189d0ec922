//! Live usage of the Dock's ISCs (`GET /v1/stats`, `GET /v1/iscs/{name}/stats`, the metrics)
//! and the OOM watcher that turns the kernel's OOM kills into `oom` events.
//!
//! CPU, memory, pids and block IO come from each ISC's cgroup (`isc_cgroup`), limit events
//! (OOM kills, pids-limit hits, CPU throttling) from the same cgroup, and network bytes from the
//! counters of the ISC's host-side interface (named in its network record) in
//! `/proc/self/net/dev`. That file shows the reading thread's network namespace, where the host
//! link lives; `/sys/class/net` would show the namespace sysfs was mounted in, which is not the
//! same for a Dock started inside `unshare --net`. Counters are reported from the ISC's side:
//! what the host link receives, the ISC sent.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::json;

use crate::records::{IscRecord, Status};
use crate::supervisor::Dock;

/// How often the OOM watcher reads the running ISCs' OOM-kill counters.
pub const OOM_POLL: Duration = Duration::from_secs(1);

/// Bytes and packets through an ISC's network link, from the ISC's side.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct NetBytes {
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
}

/// What `GET /v1/iscs/{name}/stats` answers for one ISC.
#[derive(Debug, Clone, Serialize)]
pub struct IscStats {
    pub name: String,
    pub status: &'static str,
    pub run_id: u64,
    /// Usage of its cgroup; absent when the ISC does not run.
    pub usage: Option<isc_cgroup::Stats>,
    /// Limit events of this run (OOM kills, pids-limit hits, CPU throttling).
    pub limit_events: Option<isc_cgroup::Events>,
    /// Its network link's counters; absent without a [network] or when it does not run.
    pub net: Option<NetBytes>,
}

/// The per-interface counters of `/proc/self/net/dev` (see proc(5)): host-side counters by
/// interface name.
pub fn parse_net_dev(text: &str) -> BTreeMap<String, NetBytes> {
    text.lines()
        .skip(2)
        .filter_map(|l| {
            let (name, rest) = l.split_once(':')?;
            let f: Vec<u64> = rest.split_whitespace().map(|v| v.parse().unwrap_or(0)).collect();
            if f.len() < 10 {
                return None;
            }
            // Receive: bytes packets errs drop fifo frame compressed multicast; transmit: bytes packets …
            Some((
                name.trim().to_string(),
                NetBytes { rx_bytes: f[0], rx_packets: f[1], tx_bytes: f[8], tx_packets: f[9] },
            ))
        })
        .collect()
}

/// The host-side interface of `name` from its network record.
fn host_link(state_dir: &Path, name: &str) -> Option<String> {
    let bytes = std::fs::read(state_dir.join("isc").join(name).join("net.json")).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    v["policy"]["if_host"].as_str().map(str::to_owned)
}

/// Usage of `recs` now (blocking file reads; run it off the async workers).
pub fn collect(dock: &Dock, recs: &[IscRecord]) -> Vec<IscStats> {
    let layout = isc_cgroup::Layout::detect().ok();
    let dev = std::fs::read_to_string("/proc/self/net/dev")
        .map(|t| parse_net_dev(&t))
        .unwrap_or_default();
    recs.iter()
        .map(|r| {
            let running = r.monitor_pid.is_some();
            let cg = layout.as_ref().filter(|_| running).and_then(|l| {
                let dir = isc_cgroup::scoped_dir_name(dock.cgroup_scope.as_deref(), &r.name);
                isc_cgroup::open(l, None, &dir).ok()
            });
            let net = running
                .then(|| host_link(&dock.state_dir, &r.name))
                .flatten()
                .and_then(|link| dev.get(&link))
                .map(|h| NetBytes {
                    rx_bytes: h.tx_bytes,
                    rx_packets: h.tx_packets,
                    tx_bytes: h.rx_bytes,
                    tx_packets: h.rx_packets,
                });
            IscStats {
                name: r.name.clone(),
                status: r.status.as_str(),
                run_id: r.run_id,
                usage: cg.as_ref().and_then(|c| c.stats().ok()),
                limit_events: cg.as_ref().and_then(|c| c.events().ok()),
                net,
            }
        })
        .collect()
}

/// Whether an exit reason is the engine's OOM verdict (`launch.rs`: "killed by the kernel OOM
/// killer: …").
pub fn is_oom_reason(reason: Option<&str>) -> bool {
    reason.is_some_and(|r| r.starts_with("killed by the kernel OOM killer"))
}

impl Dock {
    /// Polls the OOM-kill counters of the running ISCs every [`OOM_POLL`] and emits `oom` when
    /// one grew. Each run has a fresh cgroup, so the first reading of a run counts from 0; an
    /// OOM kill that ends the run between two polls is reported from its exit record instead
    /// (`Dock::on_exit`).
    pub fn watch_oom(self: &Arc<Self>) {
        let dock = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(OOM_POLL).await;
                let recs: Vec<IscRecord> = dock
                    .list()
                    .into_iter()
                    .filter(|r| r.status == Status::Running && r.monitor_pid.is_some())
                    .collect();
                let d = Arc::clone(&dock);
                let Ok(stats) = tokio::task::spawn_blocking(move || collect(&d, &recs)).await
                else {
                    continue;
                };
                for s in stats {
                    let Some(ev) = s.limit_events else { continue };
                    let before = dock.note_oom_kills(&s.name, s.run_id, ev.oom_kills);
                    if let Some(before) = before.filter(|b| ev.oom_kills > *b) {
                        dock.events.emit(
                            &s.name,
                            "oom",
                            json!({"run_id": s.run_id, "oom_kills": ev.oom_kills, "new": ev.oom_kills - before}),
                        );
                    }
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn net_dev_counters_by_interface() {
        let text = "Inter-|   Receive                                                |  Transmit\n \
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    \
 lo:    1234      12    0    0    0     0          0         0     1234      12    0    0    0     0       0          0\n\
iscabcdef012345: 500 5 0 0 0 0 0 0 7000 70 0 0 0 0 0 0\n";
        let m = parse_net_dev(text);
        assert_eq!(m.len(), 2);
        assert_eq!(
            m["iscabcdef012345"],
            NetBytes { rx_bytes: 500, rx_packets: 5, tx_bytes: 7000, tx_packets: 70 }
        );
        assert_eq!(m["lo"].rx_bytes, 1234);
    }

    #[test]
    fn the_engines_oom_verdict_is_recognised() {
        assert!(is_oom_reason(Some("killed by the kernel OOM killer: memory limit 16 MiB")));
        assert!(!is_oom_reason(Some("health check failed: …")));
        assert!(!is_oom_reason(None));
    }
}
