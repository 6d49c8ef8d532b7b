//! Start-up: from a validated [`Config`] to running parts, with a healthcheck of every
//! queue (GetQueueAttributes) before the first receive.

use std::future::Future;
use std::sync::Arc;

use std::collections::HashMap;

use aws_config::profile::ProfileFileCredentialsProvider;
use aws_config::sts::AssumeRoleProvider;
use aws_config::SdkConfig;
use aws_sdk_sqs::config::{Region, SharedCredentialsProvider};
use futures_util::{StreamExt, TryStreamExt};

use crate::aws::{self, AwsError};
use crate::batching::BatchWindow;
use crate::concurrency::Adaptive;
use crate::config::routes::{CredentialSource, Route, RouteKey};
use crate::config::{check_message_group, Config, ConfigError, IndexerConfig};
use crate::forward::{
    DeadLetterQueue, Forwarder, Offloader, OrgRateLimiter, Pack, Pauses, Router, SqsSender,
    DEFAULT_MAX_MESSAGE_BYTES, MAX_ENTRIES,
};
use crate::health::Health;
use crate::idempotency::Idempotency;
use crate::indexer::{Indexer, SharedCache, Store, StoreError};
use crate::metrics::{sink, Metrics};
use crate::outcome::Operation;
use crate::pipeline::Pipeline;
use crate::source::{queue_info, QueueInfo, SqsSource};
use crate::worker::{self, PoolOptions, RunSummary, Worker};
use tokio_util::sync::CancellationToken;

/// How many destinations are reached at once at start and on a reload: enough that
/// hundreds of routes start within a second or two at tens of milliseconds a call, few
/// enough not to be throttled by the queues' account or to open hundreds of connections.
pub const REACH_CONCURRENCY: usize = 32;

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
    /// The shared cache's URL is unusable.
    #[error("FORWARDER_INDEXER_CACHE_URL: {0}")]
    SharedCache(crate::indexer::shared_cache::CacheError),
    /// The health listener could not start.
    #[error(transparent)]
    Health(#[from] crate::health::HealthError),
    /// The idempotency store could not be opened or did not answer.
    #[error("FORWARDER_IDEMPOTENCY_URL: {url}: {}", .source.to_string().replace('\n', " "))]
    Idempotency {
        /// The store's URL, redacted.
        url: String,
        /// Why.
        source: crate::idempotency::StoreError,
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
    let indexer = Indexer::new(store, &config.settings, retry.clone(), metrics.clone());
    let Some(settings) = &config.shared_cache else {
        return Ok(indexer);
    };
    let shared =
        SharedCache::new(settings.clone(), metrics.clone()).map_err(StartError::SharedCache)?;
    Ok(indexer.with_shared_cache(shared))
}

/// Opens the idempotency store and asks it once: a store that does not answer at start
/// fails the start, naming the variable.
pub async fn connect_idempotency(
    config: &crate::config::IdempotencyConfig,
    metrics: &Metrics,
) -> Result<Idempotency, StartError> {
    let failed = |source| StartError::Idempotency {
        url: config.url.redacted(),
        source,
    };
    let store = crate::idempotency::open(config.url.expose(), config.timeout)
        .await
        .map_err(failed)?;
    store.ping().await.map_err(failed)?;
    tracing::info!(
        url = %config.url,
        store = store.kind(),
        fail_open = config.fail_open,
        "idempotency store reached: effectively once"
    );
    Ok(Idempotency::new(
        store,
        config.ttl,
        config.lease,
        config.fail_open,
        metrics.clone(),
    ))
}

/// Asks the shared cache once at start, so an operator sees at once that it is down.
/// Not an error: lookups go to the store until it answers.
pub async fn greet_shared_cache(indexer: &Indexer) {
    let Some(shared) = indexer.shared_cache() else {
        return;
    };
    match shared.ping().await {
        Ok(()) => {
            tracing::info!(url = %crate::redact::url(&shared.settings().url, &[]), "indexer shared cache reached")
        }
        Err(err) => tracing::warn!(
            url = %crate::redact::url(&shared.settings().url, &[]),
            error = %err,
            "indexer shared cache not reachable at start: lookups go to the store until it answers"
        ),
    }
}

/// The batching window where no source queue sizes it: the setting, or the default.
fn config_window(config: &Config) -> std::time::Duration {
    config
        .batch_window
        .unwrap_or(crate::config::DEFAULT_BATCH_WINDOW)
}

/// With an idempotency store, a batch's entries share one call, so its events are
/// marked the moment that call answers ([`BatchWindow::whole_submissions`]).
fn whole_with_idempotency(window: BatchWindow, config: &Config) -> BatchWindow {
    match config.idempotency {
        Some(_) => window.whole_submissions(),
        None => window,
    }
}

fn one_line(err: &AwsError) -> String {
    err.to_string().replace('\n', " ")
}

/// The built parts of the forwarder.
#[derive(Debug, Clone)]
pub struct App {
    /// The validated configuration.
    config: Config,
    /// One SQS client for the process: one connection pool, shared by every worker.
    sqs: aws_sdk_sqs::Client,
    /// Metrics handle (disabled without `FORWARDER_STATSD_ADDR`).
    metrics: Metrics,
    /// The indexer stage, when on and connected ([`App::connect`]).
    indexer: Option<Arc<Indexer>>,
    /// The idempotency store, when set and reached ([`App::connect`]).
    idempotency: Option<Arc<Idempotency>>,
    /// The SDK configuration loaded at start; routes derive theirs from it.
    sdk: SdkConfig,
    /// The per-organization rate limit, shared by every worker of the process.
    rate_limit: Option<Arc<OrgRateLimiter>>,
    /// Which routes are paused, for the readiness probe.
    pauses: Arc<Pauses>,
    /// The batching window of `replay` and `redrive` (`run` sizes its own against the
    /// source's visibility timeout, [`App::worker`]).
    window: BatchWindow,
    /// The forwarder of each route in force, so a reload keeps those of the routes it
    /// does not change (their clients, windows and pause states) and reaches only the
    /// new ones.
    built: Arc<std::sync::Mutex<HashMap<Route, Arc<Forwarder>>>>,
}

impl App {
    /// Loads the AWS configuration from the environment and sets up metrics.
    pub async fn build(config: Config) -> Result<App, StartError> {
        let sdk = aws::load_sdk_config(config.request_timeout, config.http_pool).await;
        let metrics = sink::build(&config.metrics)?;
        App::connect(config, &sdk, metrics).await
    }

    /// Builds from an explicit SDK configuration (tests point it at LocalStack), and
    /// opens (and migrates) the indexer's store if the stage is on.
    pub async fn connect(
        config: Config,
        sdk: &SdkConfig,
        metrics: Metrics,
    ) -> Result<App, StartError> {
        let mut app = App::from_sdk(config, sdk, metrics)?;
        if let Some(ix) = &app.config.indexer {
            let indexer = connect_indexer(ix, &app.config.retry, &app.metrics).await?;
            greet_shared_cache(&indexer).await;
            app.indexer = Some(Arc::new(indexer));
        }
        if let Some(config) = &app.config.idempotency {
            app.idempotency = Some(Arc::new(connect_idempotency(config, &app.metrics).await?));
        }
        Ok(app)
    }

    /// The validated configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The metrics handle.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The process's SQS client.
    pub fn sqs(&self) -> &aws_sdk_sqs::Client {
        &self.sqs
    }

    /// The SDK configuration loaded at start.
    pub fn sdk(&self) -> &SdkConfig {
        &self.sdk
    }

    /// The indexer, when on and connected.
    pub fn indexer(&self) -> Option<&Arc<Indexer>> {
        self.indexer.as_ref()
    }

    /// The idempotency store, when set and reached.
    pub fn idempotency(&self) -> Option<&Arc<Idempotency>> {
        self.idempotency.as_ref()
    }

    /// Builds from an explicit SDK configuration, without the indexer's store (see
    /// [`App::connect`]).
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
        let rate_limit = config
            .rate_limit
            .map(|limit| Arc::new(OrgRateLimiter::new(limit, metrics.clone())));
        let window = whole_with_idempotency(BatchWindow::new(config_window(&config)), &config);
        Ok(App {
            sqs: aws::sqs_client(sdk, &metrics),
            config,
            metrics,
            indexer: None,
            idempotency: None,
            sdk: sdk.clone(),
            rate_limit,
            pauses: Arc::new(Pauses::default()),
            window,
            built: Arc::new(std::sync::Mutex::new(HashMap::new())),
        })
    }

    /// The SDK configuration of a route: the worker's, or with the route's region and
    /// credentials (a named profile, or a role assumed with STS).
    async fn sdk_for(&self, route: &Route) -> SdkConfig {
        if route.region.is_none() && route.credentials == CredentialSource::DefaultChain {
            return self.sdk.clone();
        }
        let mut builder = self.sdk.to_builder();
        if let Some(region) = &route.region {
            builder = builder.region(Region::new(region.clone()));
        }
        match &route.credentials {
            CredentialSource::DefaultChain => {}
            CredentialSource::Profile(name) => {
                let provider = ProfileFileCredentialsProvider::builder()
                    .profile_name(name)
                    .build();
                builder = builder.credentials_provider(SharedCredentialsProvider::new(provider));
            }
            CredentialSource::AssumeRole {
                role_arn,
                external_id,
            } => {
                let mut assume = AssumeRoleProvider::builder(role_arn)
                    .session_name("sqs-forwarder")
                    .configure(&self.sdk);
                if let Some(id) = external_id {
                    assume = assume.external_id(id);
                }
                if let Some(region) = &route.region {
                    assume = assume.region(Region::new(region.clone()));
                }
                builder = builder
                    .credentials_provider(SharedCredentialsProvider::new(assume.build().await));
            }
        }
        builder.build()
    }

    /// A forwarder for one route, after reaching its queue and checking its message
    /// group against the queue's type. `var` names the setting the route came from.
    async fn forwarder_for(
        &self,
        var: &'static str,
        route: &Route,
        sdk: &SdkConfig,
        window: &BatchWindow,
    ) -> Result<Forwarder, StartError> {
        let sqs = aws::sqs_client(sdk, &self.metrics);
        // Retried like every other healthcheck: a throttled start-up call is not fatal.
        let info = self
            .queue_info_retried(&sqs, &route.queue_url)
            .await
            .map_err(|source| StartError::Unreachable {
                var,
                url: route.queue_url.clone(),
                source,
            })?;
        check_message_group(info.fifo, route.message_group.as_ref()).map_err(|e| {
            if var == "FORWARDER_DEST_QUEUE_URL" {
                e
            } else {
                ConfigError {
                    var,
                    problem: format!("route to {}: {}: {}", route.queue_url, e.var, e.problem),
                }
            }
        })?;
        let offloader = route.s3_bucket.as_ref().map(|bucket| {
            self.offloader(sdk, bucket)
                .with_mode(route.s3_offload.unwrap_or(self.config.s3_offload))
                .with_encryption(
                    route
                        .s3_encryption
                        .clone()
                        .unwrap_or_else(|| self.config.s3_encryption.clone()),
                )
        });
        Ok(Forwarder::new(
            sqs,
            &route.queue_url,
            self.config.max_message_bytes,
            self.config.retry.clone(),
            self.metrics.clone(),
        )
        .with_queue_limit(info.max_message_bytes)
        .with_group(route.message_group.clone(), info.fifo)
        .with_offloader(offloader)
        .with_forward_attributes(self.config.forward_attributes.clone())
        .with_rate_limit(self.rate_limit.clone())
        .with_pauses(self.pauses.clone())
        .with_window(window)
        .with_shape(
            route.fields.clone().or_else(|| self.config.fields.clone()),
            route.filter.clone().or_else(|| self.config.filter.clone()),
        )
        .with_pack(
            route.pack.unwrap_or(self.config.pack),
            route
                .pack_compression
                .unwrap_or(self.config.pack_compression),
            window,
        ))
    }

    /// The S3 side of oversized events, for a bucket.
    pub fn offloader(&self, sdk: &SdkConfig, bucket: &str) -> Offloader {
        Offloader::new(
            aws::s3_client(sdk, &self.metrics),
            bucket,
            sdk.region().map(|r| r.as_ref()).unwrap_or("us-east-1"),
            self.config.s3_pointer_format,
            self.config.retry.clone(),
            self.metrics.clone(),
        )
    }

    /// One forwarder per destination of the effective routes, each built once (clients
    /// included) and shared by the projects routed to it; every destination reached.
    pub async fn router(&self) -> Result<Router, StartError> {
        self.router_within(&self.window).await
    }

    /// [`App::router`], its sends shared within `window`.
    async fn router_within(&self, window: &BatchWindow) -> Result<Router, StartError> {
        self.router_for(&self.config, window).await
    }

    /// A router for `config`'s routes (this app's, or a reloaded file's), its sends
    /// shared within `window`: a route in force already keeps its forwarder; a new one is
    /// built and its destination reached.
    pub async fn router_for(
        &self,
        config: &Config,
        window: &BatchWindow,
    ) -> Result<Router, StartError> {
        let routes = config.effective_routes();
        let file_default = config.routes.as_ref().is_some_and(|r| r.default.is_some());
        let in_force = self.built.lock().map(|b| b.clone()).unwrap_or_default();
        // The variable a route came from, to name it in an error.
        let var = |is_default: bool| {
            if is_default && !file_default {
                "FORWARDER_DEST_QUEUE_URL"
            } else {
                "FORWARDER_ROUTES_FILE"
            }
        };
        // Each distinct route once, in the file's order; a route in force keeps its
        // forwarder, a new one is built below.
        let mut built: HashMap<Route, Arc<Forwarder>> = HashMap::new();
        let mut new: Vec<(&Route, bool)> = Vec::new();
        let mut seen: std::collections::HashSet<&Route> = std::collections::HashSet::new();
        for (key, route) in routes.keyed() {
            if !seen.insert(route) {
                continue;
            }
            match in_force.get(route) {
                Some(forwarder) => {
                    built.insert(route.clone(), forwarder.clone());
                }
                None => new.push((route, key == RouteKey::Default)),
            }
        }
        // One SDK configuration per region and credentials (an assumed role's provider
        // is made once, not per route).
        let mut sdks: HashMap<(Option<String>, CredentialSource), SdkConfig> = HashMap::new();
        for (route, _) in &new {
            let key = (route.region.clone(), route.credentials.clone());
            if let std::collections::hash_map::Entry::Vacant(slot) = sdks.entry(key) {
                slot.insert(self.sdk_for(route).await);
            }
        }
        // New destinations are reached [`REACH_CONCURRENCY`] at a time: 300 routes at
        // 40 ms a call start within a second, not 12 s one after another. The first
        // failure in the file's order is the one reported.
        let sdks = &sdks;
        let made: Vec<(Route, Arc<Forwarder>)> = futures_util::stream::iter(new)
            .map(|(route, is_default)| async move {
                let key = (route.region.clone(), route.credentials.clone());
                let sdk = match sdks.get(&key) {
                    Some(sdk) => sdk.clone(),
                    None => self.sdk_for(route).await,
                };
                let forwarder = self
                    .forwarder_for(var(is_default), route, &sdk, window)
                    .await?;
                Ok::<_, StartError>((route.clone(), Arc::new(forwarder)))
            })
            .buffered(REACH_CONCURRENCY)
            .try_collect()
            .await?;
        built.extend(made);
        let router = Router::build(
            routes.default.as_ref(),
            routes.projects.iter().map(|(p, r)| (*p, r)),
            routes.organizations.iter().map(|(o, org)| (*o, org)),
            async |route: &Route, is_default| match built.get(route) {
                Some(forwarder) => Ok::<_, StartError>(forwarder.clone()),
                // Every route of `routes` was built above; never reached.
                None => {
                    let sdk = self.sdk_for(route).await;
                    Ok(Arc::new(
                        self.forwarder_for(var(is_default), route, &sdk, window)
                            .await?,
                    ))
                }
            },
        )
        .await?;
        if let Ok(mut in_force) = self.built.lock() {
            *in_force = built;
        }
        Ok(router)
    }

    /// Decode, index, forward, dead-letter: after reaching every destination (and
    /// checking each message group against its queue's type) and the dead-letter queue.
    pub async fn pipeline(&self) -> Result<Pipeline, StartError> {
        self.pipeline_within(&self.window).await
    }

    /// [`App::pipeline`], its sends shared within `window`.
    async fn pipeline_within(&self, window: &BatchWindow) -> Result<Pipeline, StartError> {
        let router = self.router_within(window).await?;
        let pipeline = self.pipeline_on(router);
        let dead_letter = match &self.config.dlq_url {
            Some(url) => {
                let info = self.reach("FORWARDER_DLQ_URL", url).await?;
                Some(self.dead_letter_queue(url, &info, window))
            }
            None => None,
        };
        Ok(pipeline.with_dead_letter(dead_letter))
    }

    /// Decode, index, forward, with no dead-letter step (`redrive` puts back what fails
    /// again itself): after reaching every destination.
    pub async fn pipeline_without_dead_letters(&self) -> Result<Pipeline, StartError> {
        Ok(self.pipeline_on(self.router().await?))
    }

    /// Decode, index, forward through `router` (already built, its destinations
    /// reached), with no dead-letter step.
    pub fn pipeline_on(&self, router: Router) -> Pipeline {
        Pipeline::new(router, self.indexer.clone(), self.metrics.clone())
            .with_envelope(self.config.source_envelope)
            .with_idempotency(self.idempotency.clone())
    }

    /// The dead-letter queue at `url`, as `info` (its healthcheck) describes it.
    fn dead_letter_queue(
        &self,
        url: &str,
        info: &QueueInfo,
        window: &BatchWindow,
    ) -> DeadLetterQueue {
        // SQS's own limit, not FORWARDER_MAX_MESSAGE_BYTES: an event too large to forward
        // may still fit in the dead-letter queue.
        let sender = SqsSender::new(
            self.sqs.clone(),
            url,
            DEFAULT_MAX_MESSAGE_BYTES,
            self.config.retry.clone(),
            self.metrics.clone(),
        )
        .with_window(window);
        // The queue's own limit, as each destination's (a queue made before 2025 takes
        // 256 KiB); what is larger goes to FORWARDER_S3_BUCKET behind a pointer.
        sender.follow_queue_limit(info.max_message_bytes);
        let offloader = self.config.s3_bucket.as_deref().map(|bucket| {
            self.offloader(&self.sdk, bucket)
                .with_encryption(self.config.s3_encryption.clone())
        });
        DeadLetterQueue::new(sender, info.fifo, self.metrics.clone()).with_offloader(offloader)
    }

    /// GetQueueAttributes, with transient failures retried within the retry bound: a
    /// blip at start does not stop the worker, a missing queue stops it at once.
    async fn queue_info_retried(
        &self,
        sqs: &aws_sdk_sqs::Client,
        url: &str,
    ) -> Result<QueueInfo, crate::aws::AwsError> {
        crate::retry::retry(
            &self.config.retry,
            Operation::GetAttributes,
            &self.metrics,
            || queue_info(sqs, url),
        )
        .await
    }

    /// Healthcheck of one queue.
    pub async fn reach(&self, var: &'static str, url: &str) -> Result<QueueInfo, StartError> {
        self.queue_info_retried(&self.sqs, url)
            .await
            .map_err(|source| StartError::Unreachable {
                var,
                url: url.to_string(),
                source,
            })
    }

    /// The dead-letter queue for `redrive`, reached once: as a source (every message
    /// attribute received) and as the queue that takes back what fails again.
    pub async fn dead_letters(&self) -> Result<(SqsSource, DeadLetterQueue), StartError> {
        let Some(url) = self.config.dlq_url.clone() else {
            return Err(ConfigError {
                var: "FORWARDER_DLQ_URL",
                problem: "is not set; redrive reads the dead-letter queue".into(),
            }
            .into());
        };
        let info = self.reach("FORWARDER_DLQ_URL", &url).await?;
        if info.fifo {
            // One group ("dead-letter"), handed out ten at a time and blocked while they
            // are held: a run would see ten, and a copy put back would be deduplicated.
            return Err(ConfigError {
                var: "FORWARDER_DLQ_URL",
                problem: "is a FIFO queue; redrive reads standard dead-letter queues only \
                          (use SQS's own redrive for a FIFO one)"
                    .into(),
            }
            .into());
        }
        let source = SqsSource::new(
            self.sqs.clone(),
            url.clone(),
            crate::source::MAX_BATCH,
            std::time::Duration::from_secs(1),
            self.config.retry.clone(),
            self.metrics.clone(),
        )
        .with_attributes(&crate::forward::ForwardAttributes::All)
        .with_window(&self.window);
        Ok((source, self.dead_letter_queue(&url, &info, &self.window)))
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
        if let Some(idempotency) = &self.idempotency {
            if let Some(warning) =
                idempotency.size_for_source(info.visibility_timeout, info.max_receive_count)
            {
                tracing::warn!("{warning}");
            }
            tracing::info!(
                ttl = %humantime::format_duration(idempotency.ttl()),
                lease = %humantime::format_duration(idempotency.lease()),
                "idempotency keys and claims"
            );
        }
        let bound = Arc::new(self.in_flight_bound());
        let mut window = whole_with_idempotency(
            BatchWindow::new(self.config.batch_window_for(info.visibility_timeout)?),
            &self.config,
        );
        if bound.adapts() {
            window = window.observed_by(bound.clone());
        }
        let pipeline = self.pipeline_within(&window).await?;
        let source = SqsSource::new(
            self.sqs.clone(),
            source_url,
            self.config.batch_size,
            self.config.receive_wait,
            self.config.retry.clone(),
            self.metrics.clone(),
        )
        .with_fifo(info.fifo)
        .with_attributes(&self.config.forward_attributes)
        .with_window(&window);
        let worker = Worker::new(
            source,
            pipeline,
            info.visibility_timeout,
            self.metrics.clone(),
        );
        tracing::info!(
            window = %humantime::format_duration(window.duration()),
            in_flight = %describe_bound(&bound),
            "batching window and in-flight bound"
        );
        let worker = worker
            .with_in_flight(bound)
            .with_max_in_flight_bytes(self.config.max_in_flight_bytes)
            .with_source_max_message(info.max_message_bytes);
        // What bounds memory, and the worst case with today's numbers
        // (docs/explanations/performance.md, "What bounds the rate and what bounds memory").
        if let Some(bytes) = worker.admission().describe_bytes() {
            tracing::info!(
                max_in_flight_bytes = self.config.max_in_flight_bytes,
                source_max_message_bytes = info
                    .max_message_bytes
                    .unwrap_or(crate::forward::DEFAULT_MAX_MESSAGE_BYTES),
                "memory bound: {bytes}"
            );
        }
        Ok(worker)
    }

    /// The pool's in-flight bound: `FORWARDER_MAX_IN_FLIGHT`, or with
    /// `FORWARDER_ADAPTIVE_IN_FLIGHT` a bound that follows the calls' response times up
    /// to it, a batch at a time, from a floor: one batch per poller, and room for every
    /// route to fill its calls twice over (the batching window's economy: with less,
    /// twenty routes would share receives of 10 and send calls of one or two). That floor
    /// wins over `FORWARDER_MAX_IN_FLIGHT`: with hundreds of routes, events wait a window
    /// for their route's call, and a count sized for one route capped the rate near
    /// the count per window (400 events/s over 300 routes); what they hold is bounded by
    /// `FORWARDER_MAX_IN_FLIGHT_BYTES` instead. A packed
    /// route takes all the room there is (a pack is as large as the events held allow),
    /// so with one the bound stays at its maximum.
    pub fn in_flight_bound(&self) -> Adaptive {
        let max = self.config.max_in_flight;
        let routes = self.config.effective_routes();
        let packed = routes
            .keyed()
            .any(|(_, route)| route.pack.unwrap_or(self.config.pack) != Pack::Off);
        if !self.config.adaptive_in_flight || packed {
            return Adaptive::fixed(max);
        }
        let batch = self.config.batch_size.max(1);
        let pollers = self.config.workers.saturating_mul(batch);
        let calls = routes.keyed().count().saturating_mul(2 * MAX_ENTRIES);
        let floor = pollers.max(calls);
        Adaptive::new(floor, max.max(floor), batch)
    }

    /// Runs the worker pool until `shutdown` completes (or the source stays idle, with
    /// `exit_when_idle`), then flushes metrics.
    ///
    /// The health listener, if configured, starts first: liveness answers while the
    /// queues are being reached (with retries), readiness waits for the first receive.
    pub async fn run(&self, shutdown: impl Future<Output = ()>) -> Result<RunSummary, StartError> {
        // SIGHUP reloads the routes (or is ignored without a file), from the start on:
        // never the signal's default action, which ends the process.
        let hangups = crate::reload::hangups();
        let health = Health::default()
            .with_pauses(self.pauses.clone())
            .with_idempotency(self.idempotency.clone())
            .with_exporter(self.metrics.exporter());
        let listener = CancellationToken::new();
        let _stop_listener = listener.clone().drop_guard();
        if let Some(addr) = self.config.health_addr {
            crate::health::serve(addr, health.clone(), listener).await?;
        }
        let worker = Arc::new(self.worker().await?);
        let options = PoolOptions {
            workers: self.config.workers,
            exit_when_idle: self.config.exit_when_idle,
            shutdown_timeout: self.config.shutdown_timeout,
            receive_backoff: self.config.retry.clone(),
            health,
        };
        tracing::info!(
            workers = options.workers,
            threads = tokio::runtime::Handle::current().metrics().num_workers(),
            "polling the source queue"
        );
        let stop_reloading = CancellationToken::new();
        let reloading = crate::reload::watch(
            self,
            worker.pipeline().routing().clone(),
            worker.source().window().clone(),
            hangups,
            self.metrics.clone(),
            stop_reloading.clone(),
        );
        let (summary, ()) = tokio::join!(
            async {
                let summary = worker::run(worker.clone(), options, shutdown).await;
                stop_reloading.cancel();
                summary
            },
            reloading
        );
        self.metrics.flush(std::time::Duration::from_secs(2));
        Ok(summary)
    }
}

impl crate::reload::Routers for App {
    type Error = StartError;

    fn config(&self) -> &Config {
        App::config(self)
    }

    async fn router_for(
        &self,
        config: &Config,
        window: &BatchWindow,
    ) -> Result<Router, StartError> {
        App::router_for(self, config, window).await
    }
}

/// The in-flight bound in words, for the start-up log and `check`.
pub fn describe_bound(bound: &Adaptive) -> String {
    if bound.adapts() {
        format!(
            "from {} to {} events, following the calls' response times (FORWARDER_ADAPTIVE_IN_FLIGHT)",
            bound.floor(),
            bound.max()
        )
    } else {
        format!("at most {} events (FORWARDER_MAX_IN_FLIGHT)", bound.max())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aws::fake;
    use crate::config::routes::{Organization, Routes};
    use std::time::Duration;

    /// A route to `queue` with every other key at its default.
    fn route(queue: &str) -> Route {
        Route {
            queue_url: format!("https://sqs.fake/0/{queue}"),
            region: None,
            message_group: None,
            s3_bucket: None,
            s3_offload: None,
            s3_encryption: None,
            credentials: CredentialSource::DefaultChain,
            fields: None,
            filter: None,
            pack: None,
            pack_compression: None,
        }
    }

    /// 300 organization routes whose queues each answer 40 ms late are reached within
    /// 3 s (tokio's paused clock): one after another they took 12 s.
    #[tokio::test(start_paused = true)]
    async fn hundreds_of_routes_are_reached_concurrently_within_a_bound() {
        let http = fake::delayed_client_fn(
            |_| Duration::from_millis(40),
            |_| {
                fake::ok(
                    r#"{"Attributes":{"VisibilityTimeout":"30","MaximumMessageSize":"1048576"}}"#,
                )
            },
        );
        let sdk = SdkConfig::builder()
            .behavior_version(aws_config::BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .credentials_provider(SharedCredentialsProvider::new(
                aws_sdk_sqs::config::Credentials::new("AKIDEXAMPLE", "secret", None, None, "fake"),
            ))
            .http_client(http)
            .build();
        let organizations = (0..300u64)
            .map(|o| {
                let org = Organization {
                    route: route(&format!("org-{o}")),
                    enroll_new_projects: true,
                    projects: HashMap::new(),
                };
                (o, org)
            })
            .collect();
        let config = Config {
            routes: Some(Routes {
                organizations,
                ..Routes::default()
            }),
            ..Config::for_test()
        };
        let app = App::from_sdk(config, &sdk, Metrics::disabled()).unwrap();
        let started = tokio::time::Instant::now();
        let router = app.router().await.unwrap();
        let took = started.elapsed();
        assert!(took < Duration::from_secs(3), "took {took:?}");
        assert!(
            router.resolve(299, 1).is_ok(),
            "the last organization is routed"
        );
        // Bounded: REACH_CONCURRENCY at a time makes rounds of 40 ms, not one.
        let rounds = took.as_millis() / 40;
        assert!(
            rounds as usize >= 300 / REACH_CONCURRENCY,
            "{rounds} rounds of 40 ms: more than {REACH_CONCURRENCY} at once"
        );
    }
}
