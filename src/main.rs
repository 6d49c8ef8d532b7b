//! The `sqs-forwarder` binary: parses the command line, then hands over to the library.

use std::process::ExitCode;

use sqs_forwarder::app::App;
use sqs_forwarder::config::{Cli, Command, Needs};
use sqs_forwarder::{check, replay, telemetry};

/// Exit status of a configuration or start-up error.
const EXIT_CONFIG: u8 = 2;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = match Cli::parse_or_one_line(std::env::args_os()) {
        Ok(cli) => cli,
        Err(line) => {
            eprintln!("error: {line}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    telemetry::init(cli.settings.log_format);
    match cli.command {
        Command::Run { exit_when_idle } => run(&cli, exit_when_idle).await,
        Command::Replay { ref input } => replay(&cli, input).await,
        Command::Check => check(&cli).await,
    }
}

async fn run(cli: &Cli, exit_when_idle: Option<std::time::Duration>) -> ExitCode {
    let app = match start(cli, Needs::SourceAndDestination, exit_when_idle).await {
        Ok(app) => app,
        Err(code) => return code,
    };
    match app.run(shutdown_signal()).await {
        Ok(summary) => {
            tracing::info!(?summary, "stopped");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

async fn replay(cli: &Cli, input: &str) -> ExitCode {
    let app = match start(cli, Needs::Destination, None).await {
        Ok(app) => app,
        Err(code) => return code,
    };
    if let Err(err) = app
        .reach("FORWARDER_DEST_QUEUE_URL", &app.config.dest_queue_url)
        .await
    {
        eprintln!("error: {err}");
        return ExitCode::from(EXIT_CONFIG);
    }
    let result = replay::replay(&app.pipeline(), input).await;
    app.metrics.flush(std::time::Duration::from_secs(2));
    match result {
        Ok(summary) => {
            println!("{summary}");
            if summary.all_forwarded() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn check(cli: &Cli) -> ExitCode {
    let report = check::check(&cli.settings).await;
    for line in &report.ok {
        println!("ok: {line}");
    }
    for line in &report.problems {
        eprintln!("error: {line}");
    }
    if report.problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Validates the settings and builds the app; a problem is printed, one line each.
async fn start(
    cli: &Cli,
    needs: Needs,
    exit_when_idle: Option<std::time::Duration>,
) -> Result<App, ExitCode> {
    let config = cli
        .settings
        .validate(needs, exit_when_idle)
        .map_err(|errors| {
            for e in &errors.0 {
                eprintln!("error: {e}");
            }
            ExitCode::from(EXIT_CONFIG)
        })?;
    App::build(config).await.map_err(|err| {
        eprintln!("error: {err}");
        ExitCode::from(EXIT_CONFIG)
    })
}

/// Completes on SIGTERM or SIGINT.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(err) => {
                tracing::warn!(%err, "SIGTERM handler not installed; only SIGINT stops the worker");
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
