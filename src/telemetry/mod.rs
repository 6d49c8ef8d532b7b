//! Logging set-up, apart from where logs are written. Logs go to stderr; `RUST_LOG`
//! filters them (default `info`).
//!
//! Colour only where a person reads: when stderr is a terminal and `NO_COLOR` is not
//! set, never into a file, a pipe or CloudWatch. In Lambda mode, Lambda's own logging
//! controls apply: `AWS_LAMBDA_LOG_FORMAT=JSON` gives the `json` format (unless
//! `FORWARDER_LOG_FORMAT` says otherwise), and `AWS_LAMBDA_LOG_LEVEL` sets the level
//! unless `RUST_LOG` is set.
//!
//! Traces leave the process over OTLP when the standard OpenTelemetry variables ask for
//! it ([`otlp`]).

pub mod otlp;

use std::io::IsTerminal;

use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Log output format (`FORWARDER_LOG_FORMAT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Pretty,
    /// One JSON object per line, for log pipelines.
    Json,
}

/// How logs are written: decided once at start from the settings and the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSetup {
    /// Lines for people or JSON objects for a log pipeline.
    pub format: LogFormat,
    /// The `EnvFilter` directives: `RUST_LOG`, else Lambda's level, else `info`.
    pub filter: String,
    /// ANSI colour escapes: only on a terminal, and never with `NO_COLOR`.
    pub ansi: bool,
}

impl LogSetup {
    /// From the process's environment and its stderr. `format` is the configured one
    /// (`FORWARDER_LOG_FORMAT`), if any; `lambda` says the process serves Lambda.
    pub fn from_env(format: Option<LogFormat>, lambda: bool) -> LogSetup {
        let var = |name: &str| std::env::var(name).ok();
        LogSetup::decide(format, lambda, &var, std::io::stderr().is_terminal())
    }

    /// The rule itself, from any environment (`var`) and terminal.
    pub fn decide(
        format: Option<LogFormat>,
        lambda: bool,
        var: &dyn Fn(&str) -> Option<String>,
        stderr_is_terminal: bool,
    ) -> LogSetup {
        let set = |name: &str| var(name).filter(|v| !v.is_empty());
        let lambda_json =
            lambda && set("AWS_LAMBDA_LOG_FORMAT").is_some_and(|f| f.eq_ignore_ascii_case("json"));
        let format = format.unwrap_or(if lambda_json {
            LogFormat::Json
        } else {
            LogFormat::Pretty
        });
        let lambda_level = || {
            set("AWS_LAMBDA_LOG_LEVEL")
                .filter(|_| lambda)
                .and_then(|level| lambda_level(&level))
        };
        let filter = set("RUST_LOG")
            .or_else(|| lambda_level().map(str::to_string))
            .unwrap_or_else(|| "info".to_string());
        LogSetup {
            format,
            filter,
            ansi: format == LogFormat::Pretty && stderr_is_terminal && set("NO_COLOR").is_none(),
        }
    }
}

/// Lambda's log levels (`TRACE` … `FATAL`) as tracing's; `None` for anything else.
fn lambda_level(level: &str) -> Option<&'static str> {
    Some(match level.to_ascii_uppercase().as_str() {
        "TRACE" => "trace",
        "DEBUG" => "debug",
        "INFO" => "info",
        "WARN" => "warn",
        // tracing has no level above error.
        "ERROR" | "FATAL" => "error",
        _ => return None,
    })
}

/// Installs the global subscriber: the log lines, and the OTLP exporter of the worker's
/// own spans when the environment asks for one. Safe to call more than once (later
/// calls are no-ops). A bad OpenTelemetry setting: one line naming its variable. Must
/// run within the Tokio runtime (the exporter's requests run on it).
pub fn init(setup: &LogSetup) -> Result<(), String> {
    let filter = EnvFilter::try_new(&setup.filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(setup.ansi)
        .with_writer(std::io::stderr);
    let fmt = match setup.format {
        // Each line carries its spans (the batch's message ids, the route and its
        // event ids), outermost first.
        LogFormat::Json => fmt
            .json()
            .with_current_span(false)
            .with_span_list(true)
            .boxed(),
        LogFormat::Pretty => fmt.boxed(),
    };
    // Only the worker's own spans are traced (`batch`, `route`), not its dependencies'.
    let traces = otlp::tracer()?.map(|tracer| {
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_filter(Targets::new().with_target("sqs_forwarder", LevelFilter::INFO))
    });
    let _ = tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .with(traces)
        .try_init();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decide(
        format: Option<LogFormat>,
        lambda: bool,
        env: &[(&str, &str)],
        terminal: bool,
    ) -> LogSetup {
        let var = |name: &str| {
            env.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        };
        LogSetup::decide(format, lambda, &var, terminal)
    }

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(decide(None, false, &[], true).ansi);
        assert!(!decide(None, false, &[], false).ansi, "a file or a pipe");
        assert!(!decide(None, false, &[("NO_COLOR", "1")], true).ansi);
        // NO_COLOR set but empty does not count (no-color.org).
        assert!(decide(None, false, &[("NO_COLOR", "")], true).ansi);
        assert!(!decide(Some(LogFormat::Json), false, &[], true).ansi);
    }

    #[test]
    fn lambdas_log_format_gives_json_in_lambda_only() {
        let env = [("AWS_LAMBDA_LOG_FORMAT", "JSON")];
        assert_eq!(decide(None, true, &env, false).format, LogFormat::Json);
        assert_eq!(decide(None, false, &env, false).format, LogFormat::Pretty);
        let text = [("AWS_LAMBDA_LOG_FORMAT", "Text")];
        assert_eq!(decide(None, true, &text, false).format, LogFormat::Pretty);
        // The forwarder's own setting, when given, wins.
        assert_eq!(
            decide(Some(LogFormat::Pretty), true, &env, false).format,
            LogFormat::Pretty
        );
    }

    #[test]
    fn lambdas_log_level_applies_unless_rust_log_is_set() {
        let level = [("AWS_LAMBDA_LOG_LEVEL", "DEBUG")];
        assert_eq!(decide(None, true, &level, false).filter, "debug");
        assert_eq!(decide(None, false, &level, false).filter, "info");
        let fatal = [("AWS_LAMBDA_LOG_LEVEL", "FATAL")];
        assert_eq!(decide(None, true, &fatal, false).filter, "error");
        let both = [
            ("AWS_LAMBDA_LOG_LEVEL", "DEBUG"),
            ("RUST_LOG", "warn,sqs_forwarder=trace"),
        ];
        assert_eq!(
            decide(None, true, &both, false).filter,
            "warn,sqs_forwarder=trace"
        );
        let unknown = [("AWS_LAMBDA_LOG_LEVEL", "LOUD")];
        assert_eq!(decide(None, true, &unknown, false).filter, "info");
    }
}
