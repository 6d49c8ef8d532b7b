//! `sqs-forwarder check`: validate the configuration and reach every configured queue.

use crate::app::App;
use crate::aws;
use crate::config::{check_message_group, Needs, Settings};
use crate::metrics::Metrics;

/// What `check` found: lines that are fine, and one line per problem.
#[derive(Debug, Default)]
pub struct Report {
    /// What was checked and is fine.
    pub ok: Vec<String>,
    /// Each problem, one line naming its variable.
    pub problems: Vec<String>,
}

/// Checks the settings and reaches the source and destination queues.
pub async fn check(settings: &Settings) -> Report {
    let mut report = Report::default();
    let config = match settings.validate(Needs::SourceAndDestination, None) {
        Ok(config) => config,
        Err(errors) => {
            report.problems = errors.0.iter().map(ToString::to_string).collect();
            return report;
        }
    };
    report.ok.push("configuration is valid".into());
    let sdk = aws::load_sdk_config(config.request_timeout).await;
    let app = match App::from_sdk(config, &sdk, Metrics::disabled()) {
        Ok(app) => app,
        Err(err) => {
            report.problems.push(err.to_string());
            return report;
        }
    };
    let queues = [
        (
            "FORWARDER_SOURCE_QUEUE_URL",
            app.config.source_queue_url.clone(),
        ),
        (
            "FORWARDER_DEST_QUEUE_URL",
            Some(app.config.dest_queue_url.clone()),
        ),
    ];
    if let Some(offloader) = &app.offloader {
        match offloader.check().await {
            Ok(()) => report.ok.push(format!(
                "FORWARDER_S3_BUCKET: reached {}",
                offloader.bucket()
            )),
            Err(err) => report.problems.push(format!(
                "FORWARDER_S3_BUCKET: bucket {} is not reachable: {err}",
                offloader.bucket()
            )),
        }
    }
    if let Some(ix) = &app.config.indexer {
        match crate::app::connect_indexer(ix, &app.config.retry, &Metrics::disabled()).await {
            Ok(indexer) => {
                report.ok.push(format!(
                    "FORWARDER_INDEXER_DATABASE_URL: opened {}",
                    ix.database_url
                ));
                indexer.store().close().await;
            }
            Err(err) => report.problems.push(err.to_string()),
        }
    }
    for (var, url) in queues {
        let Some(url) = url else { continue };
        match app.reach(var, &url).await {
            Ok(info) => {
                report.ok.push(format!(
                    "{var}: reached {url} (visibility timeout {}s{})",
                    info.visibility_timeout.as_secs(),
                    if info.fifo { ", FIFO" } else { "" }
                ));
                if var == "FORWARDER_DEST_QUEUE_URL" {
                    if let Err(err) =
                        check_message_group(info.fifo, app.config.message_group.as_ref())
                    {
                        report.problems.push(err.to_string());
                    }
                }
            }
            Err(err) => report.problems.push(err.to_string()),
        }
    }
    report
}
