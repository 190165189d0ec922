//! A run's end as the Dock sees it: health verdicts, the monitor's exit (watched through its
//! pidfd), OOM accounting, and the restart policy with exponential back-off and crash-loop
//! detection.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use super::Dock;
use crate::health::HealthState;
use crate::process;
use crate::records::{Desired, ExitInfo, Status};
use crate::stats::is_oom_reason;

impl Dock {
    /// Records that run `run_id` failed its health check; false if that run is over already.
    pub(crate) fn mark_unhealthy(&self, name: &str, run_id: u64, reason: &str) -> bool {
        let mut map = self.lock();
        let Some(slot) = map.get_mut(name) else { return false };
        if slot.rec.run_id != run_id || slot.rec.status != Status::Running {
            return false;
        }
        slot.unhealthy_run = Some(run_id);
        slot.rec.health_failures += 1;
        slot.rec.health_state = Some(HealthState::Unhealthy);
        slot.rec.message = Some(reason.into());
        self.save(&slot.rec);
        true
    }

    /// Records that a check of run `run_id` passed; the first pass of a run emits `healthy`
    /// (there is no way back from `unhealthy` within a run: that verdict ends it).
    pub(crate) fn mark_healthy(&self, name: &str, run_id: u64) {
        let changed = {
            let mut map = self.lock();
            match map.get_mut(name) {
                Some(slot)
                    if slot.rec.run_id == run_id
                        && slot.rec.status == Status::Running
                        && slot.rec.health_state != Some(HealthState::Healthy) =>
                {
                    slot.rec.health_state = Some(HealthState::Healthy);
                    self.save(&slot.rec);
                    true
                }
                _ => false,
            }
        };
        if changed {
            self.events.emit(name, "healthy", json!({"run_id": run_id}));
        }
    }

    pub(super) fn mark_failed(&self, name: &str, run_id: u64, message: &str) {
        let mut map = self.lock();
        if let Some(slot) = map.get_mut(name).filter(|s| s.rec.run_id == run_id) {
            slot.rec.status = Status::Failed;
            slot.rec.message = Some(message.into());
            self.save(&slot.rec);
        }
        drop(map);
        self.events.emit(name, "start-failed", json!({"run_id": run_id, "message": message}));
    }

    /// Waits for the monitor of run `run_id` to end, then records the exit.
    pub(super) fn watch(self: &Arc<Self>, name: String, run_id: u64, pidfd: std::os::fd::OwnedFd) {
        let dock = Arc::clone(self);
        tokio::spawn(async move {
            if let Err(e) = process::wait_exit(pidfd).await {
                tracing::error!(isc = %name, error = %e, "watching the monitor");
                return;
            }
            let exit = ExitInfo::read(&dock.paths, &name, run_id)
                .unwrap_or_else(|e| {
                    tracing::error!(isc = %name, error = %e, "reading the exit record");
                    None
                })
                .unwrap_or_else(|| ExitInfo::vanished(run_id));
            dock.on_exit(&name, exit);
        });
    }

    /// Stores the OOM-kill count of run `run_id` of `name` read now; returns the count
    /// reported before (0 for a run not read yet), or `None` if that run is not current.
    pub(crate) fn note_oom_kills(&self, name: &str, run_id: u64, count: u64) -> Option<u64> {
        let mut map = self.lock();
        let slot = map.get_mut(name).filter(|s| s.rec.run_id == run_id)?;
        let before = slot.oom_kills.filter(|(r, _)| *r == run_id).map_or(0, |(_, c)| c);
        slot.oom_kills = Some((run_id, count.max(before)));
        Some(before)
    }

    /// Records how a run ended and applies the restart policy.
    pub(super) fn on_exit(self: &Arc<Self>, name: &str, exit: ExitInfo) {
        // An OOM kill that ended the run before the watcher saw it.
        let oom_unreported =
            self.lock().get_mut(name).filter(|s| s.rec.run_id == exit.run_id).is_some_and(|s| {
                let seen =
                    s.oom_kills.take().filter(|(r, _)| *r == exit.run_id).map_or(0, |(_, c)| c);
                seen == 0 && is_oom_reason(exit.reason.as_deref())
            });
        if oom_unreported {
            self.events.emit(name, "oom", json!({"run_id": exit.run_id, "at_exit": true}));
        }
        let mut map = self.lock();
        let Some(slot) = map.get_mut(name) else { return };
        if slot.rec.run_id != exit.run_id {
            return;
        }
        let mut exit = exit;
        // A run ended by its health check failed, even if the service exits 0 on SIGTERM.
        let unhealthy = slot.unhealthy_run.take() == Some(exit.run_id);
        if unhealthy {
            exit.reason = slot.rec.message.clone().or(exit.reason);
        }
        let rec = &mut slot.rec;
        rec.monitor_pid = None;
        rec.last_exit = Some(exit.clone());
        let detail = json!({"run_id": exit.run_id, "status": exit.status, "code": exit.code, "signal": exit.signal, "reason": exit.reason, "run_ms": exit.run_ms});
        if exit.start_failed {
            rec.status = Status::Failed;
            rec.message = exit.reason.clone();
            self.save(rec);
            drop(map);
            self.events.emit(name, "start-failed", detail);
            return;
        }
        let wants = rec.desired == Desired::Running
            && match rec.restart.as_str() {
                "always" => true,
                "on-failure" => exit.status != 0 || unhealthy,
                _ => false,
            };
        if !wants {
            rec.status = Status::Exited;
            self.save(rec);
            drop(map);
            self.events.emit(name, "exited", detail);
            return;
        }
        let r = &self.cfg.restart;
        rec.failures = if exit.run_ms < r.healthy_after_ms { rec.failures + 1 } else { 1 };
        if rec.failures >= r.crash_loop_after {
            rec.status = Status::CrashLoop;
            rec.message = Some(format!(
                "ended {} times in a row within {} ms of starting (last status {}); not restarted any more; fix: read `isc dock logs {name}`, then `isc dock start {name}`",
                rec.failures, r.healthy_after_ms, exit.status
            ));
            self.save(rec);
            drop(map);
            self.events.emit(name, "exited", detail);
            self.events.emit(
                name,
                "crash-loop",
                json!({"failures": self.get(name).map(|r| r.failures).unwrap_or(0)}),
            );
            return;
        }
        let delay = r.backoff(rec.failures);
        rec.status = Status::Backoff;
        rec.message = Some(format!("restarting in {} ms", delay.as_millis()));
        self.save(rec);
        drop(map);
        self.events.emit(name, "exited", detail);
        self.schedule_restart(name, delay);
    }

    pub(super) fn schedule_restart(self: &Arc<Self>, name: &str, delay: Duration) {
        let op = match self.lock().get(name) {
            Some(s) => s.op,
            None => return,
        };
        let dock = Arc::clone(self);
        let name = name.to_string();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let req = {
                let mut map = dock.lock();
                let Some(slot) = map.get_mut(&name) else { return };
                if slot.op != op
                    || slot.rec.desired != Desired::Running
                    || slot.rec.status != Status::Backoff
                {
                    return;
                }
                dock.begin_run(slot, true)
            };
            dock.events.emit(
                &name,
                "restarting",
                json!({"run_id": req.run_id, "after_ms": delay.as_millis() as u64}),
            );
            if let Err(e) = dock.launch(req).await {
                tracing::warn!(isc = %name, error = %e, "supervised restart failed");
            }
        });
    }
}
