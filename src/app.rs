//! Start-up: from a validated [`Config`] to running parts, with a healthcheck of every
//! queue (GetQueueAttributes) before the first receive.

use std::future::Future;
use std::sync::Arc;

use aws_config::SdkConfig;

use crate::aws::{self, AwsError};
use crate::config::{check_message_group, Config, ConfigError, IndexerConfig};
use crate::forward::{
    DeadLetterQueue, Forwarder, Offloader, OrgRateLimiter, SqsSender, DEFAULT_MAX_MESSAGE_BYTES,
};
use crate::indexer::{Indexer, Store, StoreError};
use crate::metrics::{sink, Metrics};
use crate::pipeline::Pipeline;
use crate::source::{queue_info, QueueInfo, SqsSource};
use crate::worker::{self, PoolOptions, RunSummary, Worker};

/// Why the worker could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A setting is wrong.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The statsd sink could not be set up.
    #[error("FORWARDER_STATSD_ADDR: metrics socket could not be opened: {0}")]
    Metrics(#[from] std::io::Error),
    /// The indexer's store could not be opened or migrated.
    #[error("FORWARDER_INDEXER_DATABASE_URL: {url}: {}", .source.to_string().replace('\n', " "))]
    Indexer {
        /// The store's URL, redacted.
        url: String,
        /// Why.
        source: StoreError,
    },
    /// A configured queue could not be reached.
    #[error("{var}: queue {url} is not reachable: {}", one_line(.source))]
    Unreachable {
        /// The variable naming the queue.
        var: &'static str,
        /// The queue.
        url: String,
        /// Why.
        source: AwsError,
    },
}

/// Connects the indexer's store (creating the SQLite file's directory) and migrates it.
pub async fn connect_indexer(
    config: &IndexerConfig,
    retry: &crate::retry::RetryPolicy,
    metrics: &Metrics,
) -> Result<Indexer, StartError> {
    let store = Store::connect(config.database_url.expose(), config.pool_size)
        .await
        .map_err(|source| StartError::Indexer {
            url: config.database_url.redacted(),
            source,
        })?;
    Ok(Indexer::new(
        store,
        &config.settings,
        retry.clone(),
        metrics.clone(),
    ))
}

fn one_line(err: &AwsError) -> String {
    err.to_string().replace('\n', " ")
}

/// The built parts of the forwarder.
#[derive(Debug, Clone)]
pub struct App {
    /// The validated configuration.
    pub config: Config,
    /// One SQS client for the process: one connection pool, shared by every worker.
    pub sqs: aws_sdk_sqs::Client,
    /// Metrics handle (disabled without `FORWARDER_STATSD_ADDR`).
    pub metrics: Metrics,
    /// The indexer stage, once connected ([`App::connect_indexer`]).
    pub indexer: Option<Arc<Indexer>>,
    /// Stores oversized events, with `FORWARDER_S3_BUCKET`.
    pub offloader: Option<Offloader>,
    /// The per-organization rate limit, shared by every worker of the process.
    pub rate_limit: Option<Arc<OrgRateLimiter>>,
}

impl App {
    /// Loads the AWS configuration from the environment and sets up metrics.
    pub async fn build(config: Config) -> Result<App, StartError> {
        let sdk = aws::load_sdk_config(config.request_timeout).await;
        let metrics = match &config.statsd {
            Some(settings) => sink::udp(settings)?,
            None => Metrics::disabled(),
        };
        let mut app = App::from_sdk(config, &sdk, metrics)?;
        app.connect_indexer().await?;
        Ok(app)
    }

    /// Opens (and migrates) the indexer's store if the stage is on.
    pub async fn connect_indexer(&mut self) -> Result<(), StartError> {
        let Some(ix) = &self.config.indexer else {
            return Ok(());
        };
        let indexer = connect_indexer(ix, &self.config.retry, &self.metrics).await?;
        self.indexer = Some(Arc::new(indexer));
        Ok(())
    }

    /// Builds from an explicit SDK configuration (tests point it at LocalStack).
    pub fn from_sdk(config: Config, sdk: &SdkConfig, metrics: Metrics) -> Result<App, StartError> {
        if sdk.region().is_none() {
            return Err(ConfigError {
                var: "AWS_REGION",
                problem: "is not set (nor a region in the AWS profile); e.g. AWS_REGION=us-east-1"
                    .into(),
            }
            .into());
        }
        tracing::info!(
            config = %config,
            aws_region = sdk.region().map(|r| r.as_ref()).unwrap_or("-"),
            aws_endpoint = sdk.endpoint_url().unwrap_or("default"),
            "effective configuration"
        );
        let offloader = config.s3_bucket.as_ref().map(|bucket| {
            Offloader::new(
                aws::s3_client(sdk),
                bucket,
                sdk.region().map(|r| r.as_ref()).unwrap_or("us-east-1"),
                config.s3_pointer_format,
                config.retry.clone(),
                metrics.clone(),
            )
        });
        let rate_limit = config
            .rate_limit
            .and_then(|limit| OrgRateLimiter::new(limit, metrics.clone()))
            .map(Arc::new);
        Ok(App {
            sqs: aws::sqs_client(sdk),
            config,
            metrics,
            indexer: None,
            offloader,
            rate_limit,
        })
    }

    /// The forwarder to the destination queue.
    pub fn forwarder(&self) -> Forwarder {
        Forwarder::new(
            self.sqs.clone(),
            &self.config.dest_queue_url,
            self.config.max_message_bytes,
            self.config.retry.clone(),
            self.metrics.clone(),
        )
        .with_group(self.config.message_group.clone())
        .with_offloader(self.offloader.clone())
        .with_rate_limit(self.rate_limit.clone())
    }

    /// Decode, index, forward, dead-letter: after reaching the destination (and checking
    /// its message group against its type) and the dead-letter queue.
    pub async fn pipeline(&self) -> Result<Pipeline, StartError> {
        let dest = self
            .reach("FORWARDER_DEST_QUEUE_URL", &self.config.dest_queue_url)
            .await?;
        check_message_group(dest.fifo, self.config.message_group.as_ref())?;
        let dead_letter = match &self.config.dlq_url {
            Some(url) => {
                let info = self.reach("FORWARDER_DLQ_URL", url).await?;
                // SQS's own limit, not FORWARDER_MAX_MESSAGE_BYTES: an event too large
                // to forward may still fit in the dead-letter queue.
                let sender = SqsSender::new(
                    self.sqs.clone(),
                    url,
                    DEFAULT_MAX_MESSAGE_BYTES,
                    self.config.retry.clone(),
                    self.metrics.clone(),
                );
                Some(DeadLetterQueue::new(
                    sender,
                    info.fifo,
                    self.metrics.clone(),
                ))
            }
            None => None,
        };
        Ok(
            Pipeline::new(self.forwarder(), self.indexer.clone(), self.metrics.clone())
                .with_dead_letter(dead_letter),
        )
    }

    /// Healthcheck of one queue.
    pub async fn reach(&self, var: &'static str, url: &str) -> Result<QueueInfo, StartError> {
        queue_info(&self.sqs, url)
            .await
            .map_err(|source| StartError::Unreachable {
                var,
                url: url.to_string(),
                source,
            })
    }

    /// A worker on the source queue, after reaching every configured queue.
    pub async fn worker(&self) -> Result<Worker, StartError> {
        let Some(source_url) = self.config.source_queue_url.clone() else {
            return Err(ConfigError {
                var: "FORWARDER_SOURCE_QUEUE_URL",
                problem: "is not set".into(),
            }
            .into());
        };
        let info = self
            .reach("FORWARDER_SOURCE_QUEUE_URL", &source_url)
            .await?;
        let pipeline = self.pipeline().await?;
        let source = SqsSource::new(
            self.sqs.clone(),
            source_url,
            self.config.batch_size,
            self.config.receive_wait,
            self.config.retry.clone(),
            self.metrics.clone(),
        );
        Ok(Worker::new(
            source,
            pipeline,
            info.visibility_timeout,
            self.metrics.clone(),
        ))
    }

    /// Runs the worker pool until `shutdown` completes (or the source stays idle, with
    /// `exit_when_idle`), then flushes metrics.
    pub async fn run(&self, shutdown: impl Future<Output = ()>) -> Result<RunSummary, StartError> {
        let worker = Arc::new(self.worker().await?);
        let options = PoolOptions {
            workers: self.config.workers,
            exit_when_idle: self.config.exit_when_idle,
            shutdown_timeout: self.config.shutdown_timeout,
            receive_error_pause: self.config.retry.max_interval,
        };
        tracing::info!(workers = options.workers, "polling the source queue");
        let summary = worker::run(worker, options, shutdown).await;
        self.metrics.flush(std::time::Duration::from_secs(2));
        Ok(summary)
    }
}
