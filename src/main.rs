//! The `sqs-forwarder` binary: parses the command line, then hands over to the library.

use std::process::ExitCode;

use sqs_forwarder::app::{connect_indexer, App};
use sqs_forwarder::config::{Cli, Command, IndexerCommand, Needs};
use sqs_forwarder::metrics::Metrics;
use sqs_forwarder::{check, replay, telemetry};

/// mimalloc, as Vector and Relay ship a global allocator of their own: on the
/// throughput bench (8 pollers, 8 KiB events, 3 ms per call) the worker pool's CPU per
/// event went from 106-114 to 63-64 µs with it, and its context switches per event
/// from 0.44 to 0.29-0.35 (docs/PERFORMANCE.md, "CPU per event on a network").
/// Its settings: `sqs_forwarder::allocator`.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit status of a configuration or start-up error.
const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    // First, before the allocator reserves its arena: blocks of a 1 MiB event go back to
    // the system when freed (`allocator`).
    let _ = sqs_forwarder::allocator::tune();
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.len() == 1 {
        // No command: inside Lambda (which starts `bootstrap` or the image's entrypoint
        // with no arguments) serve batches; anywhere else, run the worker. One image
        // serves both.
        let in_lambda = std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_some();
        args.push(if in_lambda { "lambda" } else { "run" }.into());
    }
    let cli = match Cli::parse_or_one_line(args) {
        Ok(cli) => cli,
        Err(line) => {
            eprintln!("error: {line}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    // The runtime as FORWARDER_THREADS says (tokio's default would be a thread per core
    // of the machine, whatever the pod was given).
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cli.settings.threads)
        .enable_all()
        .build();
    match runtime {
        Ok(runtime) => runtime.block_on(serve(cli)),
        Err(err) => {
            eprintln!("error: the runtime did not start: {err}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

/// The command, on the runtime.
async fn serve(cli: Cli) -> ExitCode {
    let in_lambda = matches!(cli.command, Command::Lambda);
    if let Err(line) = telemetry::init(&telemetry::LogSetup::from_env(
        cli.settings.log_format,
        in_lambda,
    )) {
        eprintln!("error: {line}");
        return ExitCode::from(EXIT_CONFIG);
    }
    let code = match cli.command {
        Command::Run { exit_when_idle } => run(&cli, exit_when_idle).await,
        Command::Replay { ref input } => replay(&cli, input).await,
        Command::Check { send_test_event } => check(&cli, send_test_event).await,
        Command::Redrive {
            ref reasons,
            max,
            dry_run,
        } => {
            let options = sqs_forwarder::redrive::RedriveOptions {
                reasons: reasons.clone(),
                max,
                dry_run,
            };
            redrive(&cli, &options).await
        }
        Command::Lambda => lambda(&cli).await,
        Command::Indexer(ref command) => indexer(&cli, command).await,
    };
    // The spans that ended go before the process does.
    telemetry::otlp::flush().await;
    code
}

async fn indexer(cli: &Cli, command: &IndexerCommand) -> ExitCode {
    let config = cli.settings.indexer_config();
    let retry = cli.settings.retry_policy();
    let indexer = match connect_indexer(&config, &retry, &Metrics::disabled()).await {
        Ok(indexer) => indexer,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let result = match command {
        IndexerCommand::Resolve { org, string } => {
            indexer.resolve(*org, string).await.map(|id| match id {
                Some(id) => {
                    println!("{id}");
                    true
                }
                None => {
                    eprintln!("{string:?} has no id in organization {org}");
                    false
                }
            })
        }
        IndexerCommand::Reverse { org, id } => {
            indexer.reverse_resolve(*org, *id).await.map(|s| match s {
                Some(s) => {
                    println!("{s}");
                    true
                }
                None => {
                    eprintln!("id {id} stands for nothing in organization {org}");
                    false
                }
            })
        }
        IndexerCommand::Record { org, strings } => record(&indexer, *org, strings).await,
    };
    indexer.store().close().await;
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

/// `indexer record`: ids for the arguments, or for every line of stdin, in bulk.
async fn record(
    indexer: &sqs_forwarder::indexer::Indexer,
    org: u64,
    strings: &[String],
) -> Result<bool, sqs_forwarder::indexer::IndexerError> {
    use std::io::{BufRead, Write};
    let mut all = true;
    let strings: Vec<String> = if strings.is_empty() {
        let mut lines = Vec::new();
        for (n, line) in std::io::stdin().lock().split(b'\n').enumerate() {
            let line = match line {
                Ok(line) => line,
                Err(err) => {
                    eprintln!("error: reading stdin: {err}");
                    all = false;
                    break;
                }
            };
            let line = line.strip_suffix(b"\r").unwrap_or(&line).to_vec();
            match String::from_utf8(line) {
                Ok(s) => lines.push(s),
                Err(_) => {
                    // Reported and skipped; the rest is still recorded; the exit says so.
                    eprintln!("line {}: not UTF-8: skipped", n + 1);
                    all = false;
                }
            }
        }
        lines
    } else {
        strings.to_vec()
    };
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for chunk in strings.chunks(1000) {
        let request: sqs_forwarder::indexer::BulkRequest<'_> =
            [(org, chunk.iter().map(String::as_str).collect())]
                .into_iter()
                .collect();
        let found = indexer.bulk_record(&request).await?;
        for s in chunk {
            let id = found
                .get(&org)
                .and_then(|m| m.get(s.as_str()))
                .and_then(|l| l.id);
            all &= id.is_some();
            let _ = match id {
                Some(id) => writeln!(out, "{s}\t{id}"),
                None => writeln!(out, "{s}\t-"),
            };
        }
    }
    let _ = out.flush();
    Ok(all)
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
    let pipeline = match app.pipeline().await {
        Ok(pipeline) => pipeline,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let result = replay::replay(&pipeline, input).await;
    app.metrics().flush(std::time::Duration::from_secs(2));
    report(result.map(|s| {
        let ok = s.all_forwarded();
        (s, ok)
    }))
}

/// A command's summary on stdout, its error on stderr; exit 0 only if all went.
fn report<S: std::fmt::Display, E: std::fmt::Display>(result: Result<(S, bool), E>) -> ExitCode {
    match result {
        Ok((summary, all)) => {
            println!("{summary}");
            if all {
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

/// `redrive`: the dead letters back through the pipeline (or only counted).
async fn redrive(cli: &Cli, options: &sqs_forwarder::redrive::RedriveOptions) -> ExitCode {
    use sqs_forwarder::redrive::{self, Redrive};
    let needs = Needs::DeadLetters {
        destination: !options.dry_run,
    };
    let app = match start(cli, needs, None).await {
        Ok(app) => app,
        Err(code) => return code,
    };
    let (dlq, dead_letters) = match app.dead_letters().await {
        Ok(parts) => parts,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    // What fails again is put back by the redrive itself: no dead-letter step here.
    let pipeline = if options.dry_run {
        None
    } else {
        match app.pipeline_without_dead_letters().await {
            Ok(pipeline) => Some(pipeline),
            Err(err) => {
                eprintln!("error: {err}");
                return ExitCode::from(EXIT_CONFIG);
            }
        }
    };
    let bar = redrive::progress_bar(&dlq).await;
    let result = redrive::redrive(
        &dlq,
        pipeline.as_ref().map(|pipeline| Redrive {
            pipeline,
            dead_letters: &dead_letters,
        }),
        options,
        &bar,
    )
    .await;
    app.metrics().flush(std::time::Duration::from_secs(2));
    report(result.map(|s| {
        let ok = s.all_redriven();
        (s, ok)
    }))
}

/// Lambda mode: built once per cold start, then one batch per invocation.
async fn lambda(cli: &Cli) -> ExitCode {
    use sqs_forwarder::lambda;
    if let Err(err) = lambda::check_environment() {
        eprintln!("error: {err}");
        return ExitCode::from(EXIT_CONFIG);
    }
    let built = match cli.settings.validate(Needs::Destination, None) {
        // One batch per invocation: the event source mapping's own batching window
        // (MaximumBatchingWindowInSeconds) is the knob in Lambda; nothing waits here.
        Ok(config) => match App::build(sqs_forwarder::config::Config {
            batch_window: Some(std::time::Duration::ZERO),
            ..config
        })
        .await
        {
            Ok(app) => app
                .pipeline()
                .await
                .map(|p| (p, app.metrics().clone(), app.sqs().clone())),
            Err(err) => Err(err),
        }
        .map_err(|err| err.to_string()),
        Err(errors) => Err(errors
            .0
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")),
    };
    let (pipeline, metrics, sqs) = match built {
        Ok(built) => built,
        Err(message) => {
            eprintln!("error: {message}");
            lambda::report_init_error(&message).await;
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    match lambda::serve(pipeline, metrics, sqs).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn check(cli: &Cli, send_test_event: bool) -> ExitCode {
    let report = check::check(&cli.settings, send_test_event).await;
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
