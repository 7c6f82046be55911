//! The daemon's log output: `tracing` + `tracing-subscriber`, with every
//! `log::` record of the workspace captured through `tracing-log`. The filter
//! comes from `RUST_LOG` (default `info`); lines go to stderr, human-readable
//! or one JSON object per line (`--log-json`):
//!
//! ```text
//! {"timestamp":"2025-01-01T00:00:00.000000Z","level":"INFO","message":"...","volume":"disk1","target":"fabric::daemon"}
//! ```
//!
//! Records of `log::` macros also carry tracing-log's `log.file`,
//! `log.line`, `log.module_path` and `log.target` keys (tracing-subscriber's
//! JSON formatter keeps them).

use std::io::IsTerminal;
use tracing::Subscriber;
use tracing_log::AsLog;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::{EnvFilter, Registry};

/// Installs the process-wide logger, writing to stderr: JSON lines if
/// `json`, else text (coloured on a terminal). Only the first call in a
/// process installs anything; later ones change nothing.
pub fn init(json: bool) {
    let filter = env_filter();
    // `log` records below this level are not even formatted by `log`.
    let max = filter.max_level_hint().unwrap_or(LevelFilter::TRACE);
    let ansi = std::io::stderr().is_terminal();
    if tracing::subscriber::set_global_default(subscriber(json, filter, std::io::stderr, ansi))
        .is_err()
    {
        return;
    }
    if let Err(e) = tracing_log::LogTracer::init_with_filter(max.as_log()) {
        // Another `log` logger (env_logger) came first: its records keep
        // going there.
        tracing::warn!("log records are not captured: {e}");
    }
}

/// `RUST_LOG`, or `info` when it is unset or empty; invalid directives are
/// skipped (and reported on stderr by tracing-subscriber).
pub fn env_filter() -> EnvFilter {
    EnvFilter::builder()
        .with_default_directive(LevelFilter::INFO.into())
        .from_env_lossy()
}

/// The subscriber [`init`] installs, writing each line to `writer`.
pub fn subscriber<W>(
    json: bool,
    filter: EnvFilter,
    writer: W,
    ansi: bool,
) -> Box<dyn Subscriber + Send + Sync>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let fmt = tracing_subscriber::fmt::layer().with_writer(writer);
    if json {
        let json = fmt
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false);
        Box::new(Registry::default().with(filter).with(json))
    } else {
        Box::new(Registry::default().with(filter).with(fmt.with_ansi(ansi)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;
    use std::sync::{Arc, Mutex};

    /// Lines written by a subscriber, for the test to read.
    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Capture {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'w> MakeWriter<'w> for Capture {
        type Writer = Capture;
        fn make_writer(&'w self) -> Capture {
            self.clone()
        }
    }

    impl Capture {
        fn json_lines(&self) -> Vec<serde_json::Value> {
            let out = String::from_utf8(self.0.lock().unwrap().clone()).unwrap();
            out.lines()
                .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
                .collect()
        }
    }

    #[test]
    fn json_layer_writes_one_object_per_event() {
        let out = Capture::default();
        let sub = subscriber(true, EnvFilter::new("info"), out.clone(), false);
        tracing::subscriber::with_default(sub, || {
            tracing::info!(volume = "disk1", "export {} started", "disk1");
            tracing::debug!("filtered out");
            tracing::warn!("line\nbreak \"quoted\"");
        });
        let lines = out.json_lines();
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert_eq!(lines[0]["level"], "INFO");
        assert_eq!(lines[0]["message"], "export disk1 started");
        assert_eq!(lines[0]["volume"], "disk1");
        assert!(lines[0]["target"].as_str().unwrap().starts_with("fabric"));
        assert!(lines[0]["timestamp"].is_string());
        assert_eq!(lines[1]["level"], "WARN");
        assert_eq!(lines[1]["message"], "line\nbreak \"quoted\"");
    }

    #[test]
    fn log_records_come_out_as_json_with_their_target() {
        let out = Capture::default();
        let sub = subscriber(true, EnvFilter::new("info"), out.clone(), false);
        let bridge = tracing_log::LogTracer::new();
        tracing::subscriber::with_default(sub, || {
            for (level, text) in [(log::Level::Info, "kept"), (log::Level::Debug, "dropped")] {
                log::Log::log(
                    &bridge,
                    &log::Record::builder()
                        .args(format_args!("{text}"))
                        .level(level)
                        .target("vswitch::fdb")
                        .module_path_static(Some("vswitch::fdb"))
                        .file_static(Some("vswitch/src/fdb.rs"))
                        .line(Some(7))
                        .build(),
                );
            }
        });
        let lines = out.json_lines();
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert_eq!(lines[0]["level"], "INFO");
        assert_eq!(lines[0]["message"], "kept");
        assert_eq!(lines[0]["target"], "vswitch::fdb");
        // The JSON formatter keeps tracing-log's fields next to the target.
        assert_eq!(lines[0]["log.file"], "vswitch/src/fdb.rs");
        assert_eq!(lines[0]["log.line"], 7);
    }

    #[test]
    fn text_layer_writes_plain_lines() {
        let out = Capture::default();
        let sub = subscriber(false, EnvFilter::new("info"), out.clone(), false);
        tracing::subscriber::with_default(sub, || tracing::info!("plain"));
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        assert!(
            text.contains(" INFO ") && text.trim_end().ends_with("plain"),
            "{text:?}"
        );
        assert!(!text.contains('\x1b'));
    }

    const CHILD: &str = "FABRIC_LOGGING_TEST_CHILD";

    /// Run by [`init_json_captures_log_macros`] in a child process (a no-op
    /// otherwise): the real `init(true)` and a real `log::info!`.
    #[test]
    fn init_child() {
        if std::env::var_os(CHILD).is_none() {
            return;
        }
        init(true);
        init(true); // A second call is harmless.
        log::info!(target: "fabric::child", "hello from log {}", 42);
        log::debug!("below the default level");
        tracing::info!(answer = 42, "hello from tracing");
    }

    #[test]
    fn init_json_captures_log_macros() {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "logging::tests::init_child", "--nocapture"])
            .args(["--test-threads", "1"])
            .env(CHILD, "1")
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let stderr = String::from_utf8(out.stderr).unwrap();
        let lines: Vec<serde_json::Value> = stderr
            .lines()
            .filter(|l| l.starts_with('{'))
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
            .collect();
        assert_eq!(lines.len(), 2, "{stderr}");
        assert_eq!(lines[0]["level"], "INFO");
        assert_eq!(lines[0]["target"], "fabric::child");
        assert_eq!(lines[0]["message"], "hello from log 42");
        assert_eq!(lines[1]["message"], "hello from tracing");
        assert_eq!(lines[1]["answer"], 42);
    }
}
