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
//!
//! The filter can be replaced while the daemon runs ([`set_filter`], the
//! control socket's `log.level`): it sits behind a reload layer.

use std::io::IsTerminal;
use std::sync::{Mutex, OnceLock};
use tracing::Subscriber;
use tracing_log::AsLog;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

/// Swaps the installed subscriber's filter.
pub type FilterHandle = reload::Handle<EnvFilter, Registry>;

/// The installed subscriber's filter handle and its directives as text.
static INSTALLED: OnceLock<(FilterHandle, Mutex<String>)> = OnceLock::new();

/// Why a new filter was not taken.
#[derive(Debug, PartialEq, Eq)]
pub enum FilterError {
    /// Not `error|warn|info|debug|trace|off` nor valid `RUST_LOG` directives.
    Invalid(String),
    /// No logger of ours is installed (a library user's process).
    NotInstalled,
}

impl std::fmt::Display for FilterError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FilterError::Invalid(m) => f.write_str(m),
            FilterError::NotInstalled => f.write_str("this process has no reloadable logger"),
        }
    }
}

const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// `directives` (`debug`, `info,vblock=trace`: the `RUST_LOG` grammar)
/// checked strictly: a bad directive is refused, not skipped, and each is a
/// level or `TARGET=LEVEL` (a bare word would be a target at `trace`, a
/// typo of a level that floods the log).
pub fn parse_filter(directives: &str) -> Result<EnvFilter, FilterError> {
    let text = directives.trim();
    if text.is_empty() {
        return Err(FilterError::Invalid("empty log filter".into()));
    }
    for d in text.split(',') {
        if !d.contains('=') && !LEVELS.contains(&d.trim().to_ascii_lowercase().as_str()) {
            return Err(FilterError::Invalid(format!(
                "bad log filter {text:?}: {d:?} is not one of {} nor TARGET=LEVEL",
                LEVELS.join("|")
            )));
        }
    }
    EnvFilter::builder()
        .parse(text)
        .map_err(|e| FilterError::Invalid(format!("bad log filter {text:?}: {e}")))
}

/// Replaces the running filter with `directives` ([`parse_filter`]) and
/// raises or lowers the `log` crate's own level with it, so `log::` records
/// of a level now wanted are no longer cut before tracing sees them.
pub fn set_filter(directives: &str) -> Result<(), FilterError> {
    let filter = parse_filter(directives)?;
    let (handle, current) = INSTALLED.get().ok_or(FilterError::NotInstalled)?;
    let max = filter.max_level_hint().unwrap_or(LevelFilter::TRACE);
    handle
        .reload(filter)
        .map_err(|_| FilterError::NotInstalled)?;
    log::set_max_level(max.as_log());
    *current.lock().unwrap_or_else(|e| e.into_inner()) = directives.trim().to_owned();
    Ok(())
}

/// The running filter's directives (`None`: no logger of ours installed).
pub fn current_filter() -> Option<String> {
    let (_, current) = INSTALLED.get()?;
    Some(current.lock().unwrap_or_else(|e| e.into_inner()).clone())
}

/// Installs the process-wide logger, writing to stderr: JSON lines if
/// `json`, else text (coloured on a terminal). Only the first call in a
/// process installs anything; later ones change nothing.
pub fn init(json: bool) {
    let filter = env_filter();
    let text = filter.to_string();
    // `log` records below this level are not even formatted by `log`.
    let max = filter.max_level_hint().unwrap_or(LevelFilter::TRACE);
    let ansi = std::io::stderr().is_terminal();
    let (sub, handle) = reloadable_subscriber(json, filter, std::io::stderr, ansi);
    if tracing::subscriber::set_global_default(sub).is_err() {
        return;
    }
    let _ = INSTALLED.set((handle, Mutex::new(text)));
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
    reloadable_subscriber(json, filter, writer, ansi).0
}

/// [`subscriber`], with the handle that replaces its filter.
pub fn reloadable_subscriber<W>(
    json: bool,
    filter: EnvFilter,
    writer: W,
    ansi: bool,
) -> (Box<dyn Subscriber + Send + Sync>, FilterHandle)
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let (filter, handle) = reload::Layer::new(filter);
    let fmt = tracing_subscriber::fmt::layer().with_writer(writer);
    let sub: Box<dyn Subscriber + Send + Sync> = if json {
        let json = fmt
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false);
        Box::new(Registry::default().with(filter).with(json))
    } else {
        Box::new(Registry::default().with(filter).with(fmt.with_ansi(ansi)))
    };
    (sub, handle)
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

    #[test]
    fn a_reloaded_filter_takes_effect_at_once() {
        let out = Capture::default();
        let (sub, handle) = reloadable_subscriber(true, EnvFilter::new("info"), out.clone(), false);
        tracing::subscriber::with_default(sub, || {
            tracing::debug!("before");
            handle.reload(parse_filter("debug").unwrap()).unwrap();
            tracing::debug!("after");
            handle.reload(parse_filter("warn").unwrap()).unwrap();
            tracing::info!("quiet again");
        });
        let lines = out.json_lines();
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert_eq!(lines[0]["message"], "after");
        assert!(matches!(parse_filter("loud"), Err(FilterError::Invalid(_))));
        assert!(matches!(parse_filter(" "), Err(FilterError::Invalid(_))));
        assert!(parse_filter("info,vblock=trace").is_ok());
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
