//! Configuration: every setting is an environment variable and a flag.
//!
//! [`cli`] declares them (clap reads flags, then `FORWARDER_*` variables, then
//! defaults); [`Settings::validate`] turns them into a [`Config`] for one command, or
//! into [`ConfigError`]s of one line each that name the variable. AWS region,
//! credentials and endpoint are the SDK's own variables and are not repeated here.

pub mod cli;
pub mod reference;
pub mod routes;

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

pub use cli::{Cli, Command, IndexerCommand, LogFormat, SecretUrl, Settings, Switch};

use crate::metrics::sink::{MetricsBackend, MetricsSettings};
use crate::retry::RetryPolicy;

/// A setting that is missing or wrong. Displays as one line naming the variable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{var}: {problem}")]
pub struct ConfigError {
    /// The environment variable (its flag is in `--help`).
    pub var: &'static str,
    /// What is wrong, with the expected form.
    pub problem: String,
}

impl ConfigError {
    fn new(var: &'static str, problem: impl Into<String>) -> Self {
        Self {
            var,
            problem: problem.into(),
        }
    }
}

/// Every problem found, one per line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// What a command needs configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Needs {
    /// `run`: a source and a destination.
    SourceAndDestination,
    /// `replay`: a destination.
    Destination,
    /// `redrive`: the dead-letter queue, and a destination unless it only counts.
    DeadLetters {
        /// Whether the dead letters are sent (not a dry run).
        destination: bool,
    },
}

/// The validated configuration of one command.
#[derive(Debug, Clone)]
pub struct Config {
    /// The queue consumed (`FORWARDER_SOURCE_QUEUE_URL`); `None` for `replay`.
    pub source_queue_url: Option<String>,
    /// The queue forwarded to (`FORWARDER_DEST_QUEUE_URL`): the default route. May be
    /// unset when a routes file is given.
    pub dest_queue_url: Option<String>,
    /// Per-project and per-organization routes (`FORWARDER_ROUTES_FILE`).
    pub routes: Option<routes::Routes>,
    /// The routes file itself, read again on SIGHUP and when its content changes
    /// ([`crate::reload`]); `None`: no file.
    pub routes_file: Option<std::path::PathBuf>,
    /// Where what can never be forwarded goes (`FORWARDER_DLQ_URL`).
    pub dlq_url: Option<String>,
    /// The message group (`FORWARDER_MESSAGE_GROUP_ID`): order on a FIFO destination,
    /// tenant fairness on a standard one.
    pub message_group: Option<crate::forward::GroupTemplate>,
    /// Where oversized events are stored (`FORWARDER_S3_BUCKET`).
    pub s3_bucket: Option<String>,
    /// The pointer's shape (`FORWARDER_S3_POINTER_FORMAT`).
    pub s3_pointer_format: crate::forward::PointerFormat,
    /// Whether source bodies may be SNS Notification envelopes, opened before decoding
    /// (`FORWARDER_SOURCE_ENVELOPE`: auto, sns, none).
    pub source_envelope: crate::source::envelope::SourceEnvelope,
    /// How objects stored in S3 are encrypted (`FORWARDER_S3_SSE`,
    /// `FORWARDER_S3_KMS_KEY_ID`), unless a route says otherwise.
    pub s3_encryption: crate::forward::S3Encryption,
    /// Which events go to a route's bucket (`FORWARDER_S3_OFFLOAD`): the oversized ones,
    /// or every one, as Sentry's plugin does.
    pub s3_offload: crate::forward::OffloadMode,
    /// Which source message attributes go on (`FORWARDER_FORWARD_ATTRIBUTES`).
    pub forward_attributes: crate::forward::ForwardAttributes,
    /// Per-organization rate limit (`FORWARDER_RATE_LIMIT`).
    pub rate_limit: Option<crate::forward::RateLimit>,
    /// Concurrent pollers (`FORWARDER_WORKERS`).
    pub workers: usize,
    /// Messages per receive, 1 to 10 (`FORWARDER_BATCH_SIZE`).
    pub batch_size: usize,
    /// Most events the pool holds at once (`FORWARDER_MAX_IN_FLIGHT`, default 400: room
    /// for 20 routes to fill calls of 10 twice over). A poller receives only what fits,
    /// and waits for room.
    pub max_in_flight: usize,
    /// Whether the in-flight bound adapts to the calls' response times, between one
    /// batch per poller and `max_in_flight` (`FORWARDER_ADAPTIVE_IN_FLIGHT`, default
    /// on; [`crate::concurrency`]).
    pub adaptive_in_flight: bool,
    /// Most body bytes the pool holds at once (`FORWARDER_MAX_IN_FLIGHT_BYTES`, default
    /// 24 MiB), taken before each receive at the source's `MaximumMessageSize` per
    /// message: with large events, memory stays bounded before the count is reached.
    pub max_in_flight_bytes: usize,
    /// How long an entry may wait to share a call (`FORWARDER_BATCH_WINDOW`); `None`: the
    /// default, [`DEFAULT_BATCH_WINDOW`] or a third of the source's visibility timeout if
    /// that is less. Zero: no window.
    pub batch_window: Option<Duration>,
    /// The fields every route without its own rules receives
    /// (`FORWARDER_EXCLUDE_FIELDS` / `FORWARDER_INCLUDE_FIELDS`).
    pub fields: Option<crate::event::fields::FieldRules>,
    /// The events every route without its own filter receives (`FORWARDER_FILTER`).
    pub filter: Option<crate::event::fields::Filter>,
    /// Whether the messages of every route without its own `pack` carry many events
    /// (`FORWARDER_PACK`).
    pub pack: crate::forward::Pack,
    /// How packs' S3 objects are stored, where a route does not say
    /// (`FORWARDER_PACK_COMPRESSION`).
    pub pack_compression: crate::forward::PackCompression,
    /// Long-poll wait (`FORWARDER_RECEIVE_WAIT_SECONDS`).
    pub receive_wait: Duration,
    /// Bound on a message and on a batch, in bytes (`FORWARDER_MAX_MESSAGE_BYTES`).
    pub max_message_bytes: usize,
    /// Where metrics go; `None` turns them off (`FORWARDER_STATSD_ADDR`).
    pub metrics: MetricsSettings,
    /// Every AWS client's HTTP connection pool (`FORWARDER_HTTP_POOL_*`).
    pub http_pool: crate::aws::HttpPool,
    /// Where the health listener serves the probes; `None`: no listener
    /// (`FORWARDER_HEALTH_ADDR`).
    pub health_addr: Option<SocketAddr>,
    /// Backoff bounds (`FORWARDER_RETRY_*`).
    pub retry: RetryPolicy,
    /// Bound on one HTTP attempt other than a long poll (`FORWARDER_REQUEST_TIMEOUT`).
    pub request_timeout: Duration,
    /// How long in-flight batches may take to finish at shutdown
    /// (`FORWARDER_SHUTDOWN_TIMEOUT`).
    pub shutdown_timeout: Duration,
    /// Stop once the source has been empty this long (`FORWARDER_EXIT_WHEN_IDLE`).
    pub exit_when_idle: Option<Duration>,
    /// The indexer stage; `None` when `FORWARDER_INDEXER=off`.
    pub indexer: Option<IndexerConfig>,
    /// The idempotency store; `None` when `FORWARDER_IDEMPOTENCY_URL` is unset.
    pub idempotency: Option<IdempotencyConfig>,
}

/// Settings of the idempotency store ([`crate::idempotency`]).
#[derive(Debug, Clone)]
pub struct IdempotencyConfig {
    /// The store (`FORWARDER_IDEMPOTENCY_URL`); shown without its password.
    pub url: SecretUrl,
    /// How long a key lives (`FORWARDER_IDEMPOTENCY_TTL`); `None`: sized from the source.
    pub ttl: Option<Duration>,
    /// How long a claim holds (`FORWARDER_IDEMPOTENCY_LEASE`); `None`: the source's
    /// visibility timeout.
    pub lease: Option<Duration>,
    /// Bound of each store call (`FORWARDER_IDEMPOTENCY_TIMEOUT`).
    pub timeout: Duration,
    /// Forward without the store when it fails (`FORWARDER_IDEMPOTENCY_FAIL_OPEN`).
    pub fail_open: bool,
}

/// Settings of the indexer stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexerConfig {
    /// Where ids are stored (`FORWARDER_INDEXER_DATABASE_URL`, or SQLite under
    /// `FORWARDER_DATA_DIR`). Redacted in every output.
    pub database_url: SecretUrl,
    /// Connections in its pool (`FORWARDER_INDEXER_POOL_SIZE`).
    pub pool_size: u32,
    /// Cache size and write limit.
    pub settings: crate::indexer::IndexerSettings,
    /// The shared cache tier (`FORWARDER_INDEXER_CACHE_URL`), when set.
    pub shared_cache: Option<crate::indexer::SharedCacheSettings>,
}

/// The batching window when `FORWARDER_BATCH_WINDOW` is not set: at a trickle, calls
/// carry ten times the events, for at most a second more on the way.
pub const DEFAULT_BATCH_WINDOW: Duration = Duration::from_secs(1);

impl Config {
    /// The batching window for a source whose visibility timeout is `visibility`: the
    /// setting, or the default; an explicit value over a third of the visibility timeout
    /// is refused (buffered messages must be settled long before they reappear).
    pub fn batch_window_for(&self, visibility: Duration) -> Result<Duration, ConfigError> {
        let third = visibility / 3;
        match self.batch_window {
            None => Ok(DEFAULT_BATCH_WINDOW.min(third)),
            Some(window) if window > third => Err(ConfigError::new(
                "FORWARDER_BATCH_WINDOW",
                format!(
                    "{} is over a third of the source queue's visibility timeout ({}s); at most {}",
                    humantime::format_duration(window),
                    visibility.as_secs(),
                    humantime::format_duration(third)
                ),
            )),
            Some(window) => Ok(window),
        }
    }

    /// A configuration for tests: no queue yet, two workers, short waits and retries
    /// (1 s long polls, retries within 5 s), exit after 2 s idle, no metrics, no
    /// indexer. Tests name what they need with struct-update syntax:
    /// `Config { source_queue_url: Some(url), ..Config::for_test() }`.
    pub fn for_test() -> Config {
        Config {
            source_queue_url: None,
            dest_queue_url: None,
            routes: None,
            routes_file: None,
            dlq_url: None,
            message_group: None,
            s3_bucket: None,
            s3_pointer_format: crate::forward::PointerFormat::Sentry,
            s3_offload: crate::forward::OffloadMode::Oversized,
            s3_encryption: crate::forward::S3Encryption::BucketDefault,
            source_envelope: crate::source::envelope::SourceEnvelope::Auto,
            forward_attributes: crate::forward::ForwardAttributes::None,
            rate_limit: None,
            workers: 2,
            batch_size: 10,
            max_in_flight: 40,
            adaptive_in_flight: false,
            max_in_flight_bytes: 40 << 20,
            batch_window: Some(Duration::ZERO),
            fields: None,
            filter: None,
            pack: crate::forward::Pack::Off,
            pack_compression: crate::forward::PackCompression::None,
            receive_wait: Duration::from_secs(1),
            max_message_bytes: crate::forward::DEFAULT_MAX_MESSAGE_BYTES,
            metrics: MetricsSettings::off(),
            http_pool: crate::aws::HttpPool::default(),
            health_addr: None,
            retry: RetryPolicy {
                initial_interval: Duration::from_millis(50),
                max_interval: Duration::from_millis(500),
                max_elapsed: Duration::from_secs(5),
            },
            request_timeout: Duration::from_secs(10),
            shutdown_timeout: Duration::from_secs(20),
            exit_when_idle: Some(Duration::from_secs(2)),
            indexer: None,
            idempotency: None,
        }
    }

    /// The same configuration with `routes` in force, validated as at start (each
    /// route's packing against the global settings): what a reload puts in force.
    pub fn with_routes(&self, routes: routes::Routes) -> Result<Config, ConfigError> {
        let file = self
            .routes_file
            .as_deref()
            .unwrap_or(std::path::Path::new(""));
        let defaults = (
            self.pack,
            self.s3_offload,
            self.pack_compression,
            self.s3_pointer_format,
        );
        if let Some(err) = route_pack_errors(&routes, file, defaults)
            .into_iter()
            .next()
        {
            return Err(err);
        }
        Ok(Config {
            routes: Some(routes),
            ..self.clone()
        })
    }

    /// Every project's destination: the routes file's, with `FORWARDER_DEST_QUEUE_URL`
    /// (and the global message group and bucket) as the default when the file has none.
    pub fn effective_routes(&self) -> routes::Routes {
        let mut effective = self.routes.clone().unwrap_or_default();
        if effective.default.is_none() {
            effective.default = self.dest_queue_url.as_ref().map(|url| routes::Route {
                queue_url: url.clone(),
                region: None,
                message_group: self.message_group.clone(),
                s3_bucket: self.s3_bucket.clone(),
                s3_offload: None,
                s3_encryption: None,
                credentials: routes::CredentialSource::DefaultChain,
                fields: None,
                filter: None,
                pack: None,
                pack_compression: None,
            });
        }
        effective
    }
}

impl Settings {
    /// The retry bounds.
    pub fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            initial_interval: self.retry_initial_interval,
            max_interval: self.retry_max_interval,
            max_elapsed: self.retry_max_elapsed,
        }
    }

    /// The indexer's configuration, whatever the command (the `indexer` commands too).
    pub fn indexer_config(&self) -> IndexerConfig {
        let database_url = self.indexer_database_url.clone().unwrap_or_else(|| {
            SecretUrl::new(format!(
                "sqlite:{}",
                self.data_dir.join("indexer.sqlite3").display()
            ))
        });
        IndexerConfig {
            database_url,
            pool_size: self.indexer_pool_size,
            settings: crate::indexer::IndexerSettings {
                cache_size: self.indexer_cache_size,
                write_limit: self.indexer_write_limit.0,
            },
            shared_cache: self.indexer_cache_url.as_ref().map(|url| {
                crate::indexer::SharedCacheSettings {
                    url: url.expose().to_string(),
                    version: self.indexer_cache_version,
                    ttl: self.indexer_cache_ttl,
                    timeout: self.indexer_cache_timeout,
                }
            }),
        }
    }
}

impl Settings {
    /// Validates the settings for a command. Every problem is reported, each on its line.
    pub fn validate(
        &self,
        needs: Needs,
        exit_when_idle: Option<Duration>,
    ) -> Result<Config, ConfigErrors> {
        let mut errors = Vec::new();
        let Queues {
            source,
            routes,
            dest,
            dlq_url,
        } = self.queues(needs, &mut errors);
        let health_addr = address(
            "FORWARDER_HEALTH_ADDR",
            self.health_addr.as_deref(),
            &mut errors,
        );
        let metrics = self.metrics_settings(&mut errors);
        self.check_http_pool(&mut errors);
        self.check_retry(&mut errors);
        self.check_offload(&mut errors);
        let s3_encryption = self.s3_encryption(&mut errors);
        let (fields, filter) = self.fields_and_filter(&mut errors);
        self.check_packs(routes.as_ref(), &mut errors);
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        let receive_wait = Duration::from_secs(u64::from(self.receive_wait_seconds));
        Ok(Config {
            source_queue_url: source,
            dest_queue_url: dest,
            routes,
            routes_file: self.routes_file.clone(),
            dlq_url,
            message_group: self.message_group_id.clone(),
            s3_bucket: self.s3_bucket.clone().filter(|b| !b.trim().is_empty()),
            s3_pointer_format: self.s3_pointer_format,
            s3_offload: self.s3_offload,
            s3_encryption,
            source_envelope: self.source_envelope,
            forward_attributes: self.forward_attributes.clone(),
            rate_limit: self.rate_limit,
            workers: self.workers,
            batch_size: usize::from(self.batch_size),
            max_in_flight: self.max_in_flight,
            adaptive_in_flight: self.adaptive_in_flight == Switch::On,
            max_in_flight_bytes: self.max_in_flight_bytes,
            batch_window: self.batch_window,
            fields,
            filter,
            pack: self.pack,
            pack_compression: self.pack_compression,
            // Exiting when idle: polls of at most a second, which the idle stop lets end
            // (a poll dropped half-way stays open at SQS, and may take messages sent
            // after the exit, hidden then for a visibility timeout).
            receive_wait: exit_when_idle.map_or(receive_wait, |_| {
                receive_wait.min(crate::worker::IDLE_RECEIVE_WAIT)
            }),
            max_message_bytes: self.max_message_bytes,
            metrics,
            http_pool: crate::aws::HttpPool {
                max_idle_per_host: self.http_pool_max_idle,
                idle_timeout: self.http_pool_idle_timeout,
            },
            health_addr,
            retry: self.retry_policy(),
            request_timeout: self.request_timeout,
            shutdown_timeout: self.shutdown_timeout,
            exit_when_idle,
            indexer: (self.indexer == Switch::On).then(|| self.indexer_config()),
            idempotency: self.idempotency_url.clone().map(|url| IdempotencyConfig {
                url,
                ttl: self.idempotency_ttl,
                lease: self.idempotency_lease,
                timeout: self.idempotency_timeout,
                fail_open: self.idempotency_fail_open == Switch::On,
            }),
        })
    }
}

/// The queues a command reads and writes, as validated.
struct Queues {
    /// The source queue, for the commands that poll one.
    source: Option<String>,
    /// The routes file's routes, if one is set.
    routes: Option<routes::Routes>,
    /// The default destination (optional beside a routes file).
    dest: Option<String>,
    /// The dead-letter queue (required by `redrive`).
    dlq_url: Option<String>,
}

impl Settings {
    /// The queues `needs` asks for: each URL checked, the routes file read.
    fn queues(&self, needs: Needs, errors: &mut Vec<ConfigError>) -> Queues {
        let source = match needs {
            Needs::SourceAndDestination => queue_url(
                "FORWARDER_SOURCE_QUEUE_URL",
                self.source_queue_url.as_deref(),
                errors,
            ),
            Needs::Destination | Needs::DeadLetters { .. } => None,
        };
        let routes = self.routes(errors);
        // With a routes file, the destination variable is optional: it is the default
        // route if the file has none.
        let dest = match (&self.dest_queue_url, &self.routes_file, needs) {
            (None, _, Needs::DeadLetters { destination: false }) | (None, Some(_), _) => None,
            (value, _, _) => queue_url("FORWARDER_DEST_QUEUE_URL", value.as_deref(), errors),
        };
        let dlq_url = match (self.dlq_url.as_deref(), needs) {
            (None, Needs::DeadLetters { .. }) => {
                errors.push(ConfigError::new(
                    "FORWARDER_DLQ_URL",
                    "is not set; redrive reads the dead-letter queue",
                ));
                None
            }
            (url, _) => url.and_then(|url| queue_url("FORWARDER_DLQ_URL", Some(url), errors)),
        };
        Queues {
            source,
            routes,
            dest,
            dlq_url,
        }
    }

    /// The idle connections' lifetime must be a sane one.
    fn check_http_pool(&self, errors: &mut Vec<ConfigError>) {
        if !(Duration::from_secs(1)..=Duration::from_secs(600))
            .contains(&self.http_pool_idle_timeout)
        {
            errors.push(ConfigError::new(
                "FORWARDER_HTTP_POOL_IDLE_TIMEOUT",
                "must be between 1s and 10m",
            ));
        }
    }

    /// The global field rules (exclude or include) and filter, parsed.
    fn fields_and_filter(
        &self,
        errors: &mut Vec<ConfigError>,
    ) -> (
        Option<crate::event::fields::FieldRules>,
        Option<crate::event::fields::Filter>,
    ) {
        let fields =
            crate::event::fields::FieldRules::new(&self.exclude_fields, &self.include_fields)
                .unwrap_or_else(|problem| {
                    let var = if self.include_fields.is_empty() {
                        "FORWARDER_EXCLUDE_FIELDS"
                    } else {
                        "FORWARDER_INCLUDE_FIELDS"
                    };
                    errors.push(ConfigError::new(var, problem));
                    None
                });
        let filter = crate::event::fields::Filter::parse_env(self.filter.as_deref().unwrap_or(""))
            .unwrap_or_else(|problem| {
                errors.push(ConfigError::new("FORWARDER_FILTER", problem));
                None
            });
        (fields, filter)
    }

    /// The metrics backend and what it needs: its address, key or nothing.
    fn metrics_settings(&self, errors: &mut Vec<ConfigError>) -> MetricsSettings {
        let statsd = address("FORWARDER_STATSD_ADDR", self.statsd_addr.as_deref(), errors);
        let in_lambda = std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_some();
        let default = match (&self.statsd_addr, in_lambda) {
            (Some(_), _) => "dogstatsd",
            (None, true) => "emf",
            (None, false) => "off",
        };
        let chosen: Vec<&str> = if self.metrics_backend.is_empty() {
            vec![default]
        } else {
            self.metrics_backend.iter().map(|b| b.trim()).collect()
        };
        let named = chosen.join(",");
        let needs_addr = |errors: &mut Vec<ConfigError>| {
            if statsd.is_none() && self.statsd_addr.is_none() {
                errors.push(ConfigError::new(
                    "FORWARDER_STATSD_ADDR",
                    format!("is not set, but FORWARDER_METRICS_BACKEND is {named}"),
                ));
            }
            statsd
        };
        if chosen.len() > 1 && chosen.contains(&"off") {
            errors.push(ConfigError::new(
                "FORWARDER_METRICS_BACKEND",
                format!("{named:?} names off beside other backends"),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        if let Some(twice) = chosen.iter().find(|b| !seen.insert(**b)) {
            errors.push(ConfigError::new(
                "FORWARDER_METRICS_BACKEND",
                format!("{named:?} names {twice} twice"),
            ));
        }
        if chosen.contains(&"prometheus") && self.health_addr.is_none() {
            errors.push(ConfigError::new(
                "FORWARDER_METRICS_BACKEND",
                "is prometheus, which is scraped at the health listener's /metrics, but FORWARDER_HEALTH_ADDR is not set",
            ));
        }
        let mut backends = Vec::new();
        for b in &chosen {
            let backend = match *b {
                "statsd" => needs_addr(errors).map(MetricsBackend::Statsd),
                "dogstatsd" => needs_addr(errors).map(MetricsBackend::DogStatsd),
                "datadog-api" => self.datadog(errors).map(MetricsBackend::DatadogApi),
                "emf" => Some(MetricsBackend::Emf),
                "log" => Some(MetricsBackend::Log),
                "prometheus" => Some(MetricsBackend::Prometheus),
                _ => None,
            };
            backends.extend(backend);
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(300))
            .contains(&self.metrics_flush_interval)
        {
            errors.push(ConfigError::new(
                "FORWARDER_METRICS_FLUSH_INTERVAL",
                "must be between 1s and 5m",
            ));
        }
        MetricsSettings {
            backends,
            prefix: self.metrics_prefix.clone(),
            tags: self.metrics_tags.0.clone(),
            sample_rate: self.metrics_sample_rate,
            flush_interval: self.metrics_flush_interval,
        }
    }

    /// Datadog's intake and key, for `datadog-api`.
    fn datadog(
        &self,
        errors: &mut Vec<ConfigError>,
    ) -> Option<crate::metrics::datadog::DatadogSettings> {
        let Some(key) = self.dd_api_key.clone().filter(|k| !k.is_blank()) else {
            errors.push(ConfigError::new(
                "DD_API_KEY",
                "is not set, but FORWARDER_METRICS_BACKEND is datadog-api",
            ));
            return None;
        };
        let base_url = match &self.dd_url {
            Some(url) if url.starts_with("https://") || url.starts_with("http://") => url.clone(),
            Some(url) => {
                errors.push(ConfigError::new(
                    "DD_URL",
                    format!("{url:?} is not an http(s) URL"),
                ));
                return None;
            }
            None => format!("https://api.{}", self.dd_site.trim()),
        };
        let prefix = &self.metrics_prefix;
        let dot = if prefix.is_empty() || prefix.ends_with('.') {
            ""
        } else {
            "."
        };
        Some(crate::metrics::datadog::DatadogSettings {
            base_url,
            api_key: key,
            dropped_metric: format!(
                "{prefix}{dot}{}",
                crate::metrics::Counter::MetricsDropped.name()
            ),
            tags: self.metrics_tags.0.clone(),
        })
    }

    /// `pack_compression = gzip` compresses a pack's S3 object: a route with it packs,
    /// offloads always, and points with Sentry's pointer (the Extended Client Library
    /// reads an object as text). Checked per route, with the global settings where a
    /// route does not say.
    fn check_packs(&self, routes: Option<&routes::Routes>, errors: &mut Vec<ConfigError>) {
        let file_default = routes.is_some_and(|r| r.default.is_some());
        if !file_default && self.dest_queue_url.is_some() {
            if let Some(p) = pack_problem(
                self.pack,
                self.s3_offload,
                self.pack_compression,
                self.s3_pointer_format,
            ) {
                errors.push(ConfigError::new("FORWARDER_PACK_COMPRESSION", p));
            }
        }
        let Some(routes) = routes else { return };
        let file = self
            .routes_file
            .as_deref()
            .unwrap_or(std::path::Path::new(""));
        errors.extend(route_pack_errors(
            routes,
            file,
            (
                self.pack,
                self.s3_offload,
                self.pack_compression,
                self.s3_pointer_format,
            ),
        ));
    }

    /// `FORWARDER_S3_SSE` and `FORWARDER_S3_KMS_KEY_ID`, together.
    fn s3_encryption(&self, errors: &mut Vec<ConfigError>) -> crate::forward::S3Encryption {
        crate::forward::S3Encryption::from_settings(
            self.s3_sse.as_deref(),
            self.s3_kms_key_id.as_deref(),
        )
        .unwrap_or_else(|(which, problem)| {
            let var = if which == "sse" {
                "FORWARDER_S3_SSE"
            } else {
                "FORWARDER_S3_KMS_KEY_ID"
            };
            errors.push(ConfigError::new(var, problem));
            crate::forward::S3Encryption::BucketDefault
        })
    }

    /// `always` needs a bucket to store in: the worker's, or (with a routes file) a
    /// route's.
    fn check_offload(&self, errors: &mut Vec<ConfigError>) {
        let bucket = self
            .s3_bucket
            .as_deref()
            .is_some_and(|b| !b.trim().is_empty());
        if self.s3_offload == crate::forward::OffloadMode::Always
            && !bucket
            && self.routes_file.is_none()
        {
            errors.push(ConfigError::new(
                "FORWARDER_S3_OFFLOAD",
                "is always, but FORWARDER_S3_BUCKET is not set; set a bucket or use oversized",
            ));
        }
    }

    /// The routes file, if one is given and readable.
    fn routes(&self, errors: &mut Vec<ConfigError>) -> Option<routes::Routes> {
        let path = self.routes_file.as_ref()?;
        match routes::load(path) {
            Ok(routes) => Some(routes),
            Err(e) => {
                errors.push(e);
                None
            }
        }
    }

    /// The first backoff wait may not exceed the longest.
    fn check_retry(&self, errors: &mut Vec<ConfigError>) {
        if self.retry_initial_interval > self.retry_max_interval {
            errors.push(ConfigError::new(
                "FORWARDER_RETRY_INITIAL_INTERVAL",
                format!(
                    "{} is longer than FORWARDER_RETRY_MAX_INTERVAL ({})",
                    humantime::format_duration(self.retry_initial_interval),
                    humantime::format_duration(self.retry_max_interval)
                ),
            ));
        }
    }
}

/// What is wrong with `pack_compression` given how a route packs, offloads and points.
fn pack_problem(
    pack: crate::forward::Pack,
    offload: crate::forward::OffloadMode,
    compression: crate::forward::PackCompression,
    pointer: crate::forward::PointerFormat,
) -> Option<&'static str> {
    use crate::forward::{OffloadMode, Pack, PackCompression, PointerFormat};
    if compression != PackCompression::Gzip {
        None
    } else if pack != Pack::Ndjson {
        Some("is gzip, which compresses a pack's S3 object, but events are not packed (pack = ndjson)")
    } else if offload != OffloadMode::Always {
        Some("is gzip, which compresses a pack's S3 object, but packs are not stored in S3 (s3_offload = always)")
    } else if pointer == PointerFormat::Extended {
        Some("is gzip, but the Extended Client Library's pointer reads its object as text; use the sentry pointer format")
    } else {
        None
    }
}

/// The global settings a route's own keys fall back to: pack, offload, compression, and
/// the pointer format.
type PackDefaults = (
    crate::forward::Pack,
    crate::forward::OffloadMode,
    crate::forward::PackCompression,
    crate::forward::PointerFormat,
);

/// Each route's `pack_compression` checked with the global settings where the route does
/// not say: the problems, naming `file` and the route.
fn route_pack_errors(
    routes: &routes::Routes,
    file: &std::path::Path,
    (pack, offload, compression, pointer): PackDefaults,
) -> Vec<ConfigError> {
    routes
        .keyed()
        .filter_map(|(key, route)| {
            let p = pack_problem(
                route.pack.unwrap_or(pack),
                route.s3_offload.unwrap_or(offload),
                route.pack_compression.unwrap_or(compression),
                pointer,
            )?;
            Some(ConfigError::new(
                "FORWARDER_ROUTES_FILE",
                format!("{}: {}.pack_compression {p}", file.display(), key.at()),
            ))
        })
        .collect()
}

/// A `host:port` setting resolved, or its problem noted against `var`.
fn address(
    var: &'static str,
    value: Option<&str>,
    errors: &mut Vec<ConfigError>,
) -> Option<SocketAddr> {
    match resolve(value?) {
        Ok(addr) => Some(addr),
        Err(problem) => {
            errors.push(ConfigError::new(var, problem));
            None
        }
    }
}

/// A FIFO destination needs a message group. A standard one may have one too: since
/// 2025 SQS uses the group of a standard queue for tenant fairness (fair queues), with
/// no order and no deduplication. Checked at start, against what GetQueueAttributes
/// says of the destination.
pub fn check_message_group(
    dest_is_fifo: bool,
    group: Option<&crate::forward::GroupTemplate>,
) -> Result<(), ConfigError> {
    match (dest_is_fifo, group) {
        (true, None) => Err(ConfigError::new(
            "FORWARDER_MESSAGE_GROUP_ID",
            "is not set, but FORWARDER_DEST_QUEUE_URL is a FIFO queue; set a group such as project-{project_id}",
        )),
        _ => Ok(()),
    }
}

/// A required queue URL: present and shaped like `https://host/account/queue`.
pub(crate) fn queue_url(
    var: &'static str,
    value: Option<&str>,
    errors: &mut Vec<ConfigError>,
) -> Option<String> {
    let expected =
        "expected a queue URL like https://sqs.us-east-1.amazonaws.com/123456789012/events";
    let Some(value) = value.map(str::trim).filter(|v| !v.is_empty()) else {
        errors.push(ConfigError::new(var, format!("is not set; {expected}")));
        return None;
    };
    let rest = value
        .strip_prefix("https://")
        .or_else(|| value.strip_prefix("http://"));
    let shaped = rest.is_some_and(|r| {
        let mut parts = r.splitn(2, '/');
        let host = parts.next().unwrap_or("");
        let path = parts.next().unwrap_or("");
        !host.is_empty()
            && path
                .trim_end_matches('/')
                .rsplit('/')
                .next()
                .is_some_and(|q| !q.is_empty())
    });
    if shaped {
        Some(value.to_string())
    } else {
        errors.push(ConfigError::new(
            var,
            format!("{value:?} is not a queue URL; {expected}"),
        ));
        None
    }
}

/// `host:port` to a socket address, resolved once at start.
fn resolve(value: &str) -> Result<SocketAddr, String> {
    let expected = "expected host:port, like 127.0.0.1:8125";
    if !value.contains(':') {
        return Err(format!("{value:?} has no port; {expected}"));
    }
    value
        .to_socket_addrs()
        .map_err(|e| format!("{value:?} cannot be resolved ({e}); {expected}"))?
        .next()
        .ok_or_else(|| format!("{value:?} resolves to no address; {expected}"))
}

impl fmt::Display for Config {
    /// The effective configuration, for the start-up log line. Holds no secret: AWS
    /// credentials are never part of it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "source={} dest={} routes={} dlq={} message_group={} s3_bucket={} s3_pointer={:?} s3_offload={} pack={} forward_attributes={} rate_limit={} workers={} batch_size={} receive_wait={}s batch_window={} max_in_flight={}{}/{}B max_message_bytes={} \
             http_pool={}/{} metrics={} metrics_prefix={:?} metrics_tags={} sample_rate={} retry_initial={} \
             retry_max_interval={} retry_max_elapsed={} request_timeout={} shutdown_timeout={} \
             exit_when_idle={} health={} indexer={} idempotency={}",
            self.source_queue_url.as_deref().unwrap_or("-"),
            self.dest_queue_url.as_deref().unwrap_or("-"),
            self.routes.as_ref().map_or("-".to_string(), |r| format!(
                "{} projects, {} organizations{}",
                r.projects.len(),
                r.organizations.len(),
                if r.default.is_some() { " and a default" } else { "" }
            )),
            self.dlq_url.as_deref().unwrap_or("-"),
            self.message_group.as_ref().map_or("-", |g| g.as_str()),
            self.s3_bucket.as_deref().unwrap_or("-"),
            self.s3_pointer_format,
            self.s3_offload.as_str(),
            match (self.pack, self.pack_compression) {
                (crate::forward::Pack::Ndjson, crate::forward::PackCompression::Gzip) => "ndjson+gzip",
                (p, _) => p.as_str(),
            },
            self.forward_attributes,
            self.rate_limit.map_or("off".to_string(), |r| r.to_string()),
            self.workers,
            self.batch_size,
            self.receive_wait.as_secs(),
            self.batch_window.map_or("default".to_string(), |w| humantime::format_duration(w).to_string()),
            self.max_in_flight,
            if self.adaptive_in_flight { "(adaptive)" } else { "" },
            self.max_in_flight_bytes,
            self.max_message_bytes,
            self.http_pool.max_idle_per_host,
            humantime::format_duration(self.http_pool.idle_timeout),
            self.metrics.describe(self.health_addr),
            self.metrics.prefix,
            self.metrics
                .tags
                .iter()
                .map(|(k, v)| format!("{k}:{v}"))
                .collect::<Vec<_>>()
                .join(","),
            self.metrics.sample_rate,
            humantime::format_duration(self.retry.initial_interval),
            humantime::format_duration(self.retry.max_interval),
            humantime::format_duration(self.retry.max_elapsed),
            humantime::format_duration(self.request_timeout),
            humantime::format_duration(self.shutdown_timeout),
            self.exit_when_idle
                .map_or("off".to_string(), |d| humantime::format_duration(d)
                    .to_string()),
            self.health_addr
                .map_or("off".to_string(), |a| a.to_string()),
            self.indexer.as_ref().map_or("off".to_string(), |i| format!(
                "{} pool={} cache={} write_limit={}",
                i.database_url,
                i.pool_size,
                i.settings.cache_size,
                i.settings
                    .write_limit
                    .map_or("off".to_string(), |l| l.to_string())
            )),
            self.idempotency.as_ref().map_or("off".to_string(), |i| format!(
                "{} ttl={} lease={} timeout={} fail_open={}",
                i.url,
                i.ttl.map_or("source".to_string(), |d| humantime::format_duration(d).to_string()),
                i.lease.map_or("source".to_string(), |d| humantime::format_duration(d).to_string()),
                humantime::format_duration(i.timeout),
                i.fail_open
            )),
        )
    }
}
