//! The log subscriber of monitor processes (`isc run`, `isc dock monitor`): one per ISC,
//! resident for the ISC's life.
//!
//! `tracing_subscriber::fmt()` builds a span registry first, whose table of 4096 shard slots
//! (32 KiB) is written at start-up and then shared with PID 1, the monitor's copy, for the
//! ISC's life: 40–45 KiB per idle ISC measured (docs/benchmarks.md, "Idle memory"). isc opens
//! no spans, so monitors log events only: filtered by the `--log` directives (`Targets`
//! syntax: `warn`, `isc_engine=debug,info` — the part of `EnvFilter`'s syntax without span
//! and field filters) and written to stderr in `fmt()`'s default layout without colours:
//! `2026-12-06T14:15:26.630899Z  WARN isc::launch: message key=value`.
//! Records of the `log` crate (the netlink crates) are forwarded, as `fmt().init()` does.

use std::fmt::Write as _;
use std::io::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::subscriber::Interest;
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::util::SubscriberInitExt;

/// Events only, filtered, formatted like `fmt()`'s default.
pub(crate) struct MonitorLog {
    targets: Targets,
}

impl MonitorLog {
    /// `directives` as `--log` gives them; unparsable ones fall back to `warn`, as the
    /// `EnvFilter` of the other verbs does.
    pub(crate) fn new(directives: &str) -> MonitorLog {
        let targets = directives
            .parse::<Targets>()
            .unwrap_or_else(|_| Targets::new().with_default(Level::WARN));
        MonitorLog { targets }
    }

    /// Installs it as the process's subscriber (and the `log` crate's forwarder).
    pub(crate) fn init(directives: &str) {
        let _ = MonitorLog::new(directives).try_init();
    }

    fn line(&self, event: &Event<'_>, unix_us: u64) -> String {
        let meta = event.metadata();
        let mut line = isc_engine::logfile::format_timestamp(unix_us);
        let _ = write!(line, " {:>5} {}: ", meta.level().as_str(), meta.target());
        let mut fields = Fields { line, first: true };
        event.record(&mut fields);
        let mut line = fields.line;
        line.push('\n');
        line
    }
}

/// Writes the message first, then `name=value` for every other field (`{:?}`, so strings are
/// quoted and `%`-marked values displayed, as in `fmt()`).
struct Fields {
    line: String,
    first: bool,
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if !self.first {
            self.line.push(' ');
        }
        self.first = false;
        let _ = if field.name() == "message" {
            write!(self.line, "{value:?}")
        } else {
            write!(self.line, "{}={value:?}", field.name())
        };
    }
}

impl Subscriber for MonitorLog {
    fn register_callsite(&self, meta: &'static Metadata<'static>) -> Interest {
        if self.enabled(meta) {
            Interest::always()
        } else {
            Interest::never()
        }
    }

    fn enabled(&self, meta: &Metadata<'_>) -> bool {
        self.targets.would_enable(meta.target(), meta.level())
    }

    fn new_span(&self, _: &Attributes<'_>) -> Id {
        // Spans are not recorded; every one gets the same id.
        Id::from_u64(1)
    }

    fn record(&self, _: &Id, _: &Record<'_>) {}

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let line = self.line(event, now.as_micros() as u64);
        // One write per line, so lines of several threads do not interleave.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn enter(&self, _: &Id) {}

    fn exit(&self, _: &Id) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// Collects the lines `MonitorLog` would write, for one test's thread.
    struct Capture(MonitorLog, Arc<Mutex<Vec<String>>>);

    impl Subscriber for Capture {
        fn register_callsite(&self, meta: &'static Metadata<'static>) -> Interest {
            self.0.register_callsite(meta)
        }
        fn enabled(&self, meta: &Metadata<'_>) -> bool {
            self.0.enabled(meta)
        }
        fn new_span(&self, a: &Attributes<'_>) -> Id {
            self.0.new_span(a)
        }
        fn record(&self, _: &Id, _: &Record<'_>) {}
        fn record_follows_from(&self, _: &Id, _: &Id) {}
        fn event(&self, event: &Event<'_>) {
            // 2026-12-06T14:15:26.630899Z
            self.1.lock().unwrap().push(self.0.line(event, 1_796_566_526_630_899));
        }
        fn enter(&self, _: &Id) {}
        fn exit(&self, _: &Id) {}
    }

    fn capture(directives: &str, f: impl FnOnce()) -> Vec<String> {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sub = Capture(MonitorLog::new(directives), Arc::clone(&lines));
        tracing::subscriber::with_default(sub, f);
        let v = lines.lock().unwrap().clone();
        v
    }

    #[test]
    fn lines_have_fmts_default_layout() {
        let lines = capture("warn", || {
            let name = "demo";
            tracing::warn!(isc = %name, timeout_s = 1.5, path = "/x", "stopping: {}", "now");
        });
        assert_eq!(
            lines,
            [concat!(
                "2026-12-06T14:15:26.630899Z  WARN isc::monitor_log::tests: stopping: now ",
                "isc=demo timeout_s=1.5 path=\"/x\"\n"
            )]
        );
    }

    #[test]
    fn directives_filter_by_level_and_target() {
        let lines = capture("warn,isc::monitor_log=debug", || {
            tracing::debug!("kept: this target is at debug");
            tracing::trace!("dropped: below debug");
            tracing::debug!(target: "other", "dropped: other targets are at warn");
            tracing::error!(target: "other", "kept");
        });
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(
            lines[0].ends_with("DEBUG isc::monitor_log::tests: kept: this target is at debug\n")
        );
        assert!(lines[1].ends_with("ERROR other: kept\n"));
        // What EnvFilter accepts and Targets does not falls back to warn.
        let lines = capture("[span{f=1}]=debug", || {
            tracing::info!("dropped");
            tracing::warn!("kept");
        });
        assert_eq!(lines.len(), 1, "{lines:?}");
    }
}
