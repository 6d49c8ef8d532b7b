//! The command line: commands, and every setting as a flag with its environment variable.

use std::time::Duration;

use clap::builder::TypedValueParser;
use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};

/// Forwards Sentry-style events from one Amazon SQS queue to another.
///
/// Every option can also be set by the environment variable shown with it. AWS region,
/// credentials and endpoint come from the AWS SDK's own variables: AWS_REGION,
/// AWS_PROFILE, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL,
/// AWS_ENDPOINT_URL_SQS.
#[derive(Debug, Parser)]
#[command(name = "sqs-forwarder", version, about, long_about)]
pub struct Cli {
    /// Settings shared by every command.
    #[command(flatten)]
    pub settings: Settings,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Consume the source queue and forward its events until stopped (SIGTERM, SIGINT).
    Run {
        /// Stop cleanly, exit 0, once the source queue has been empty this long (a duration:
        /// 10s, 1m30s, 500ms; a bare number is seconds).
        #[arg(long, env = "FORWARDER_EXIT_WHEN_IDLE", value_name = "DURATION", value_parser = duration)]
        exit_when_idle: Option<Duration>,
    },
    /// Forward newline-delimited JSON events from a file, or stdin with "-".
    Replay {
        /// The file to read; "-" reads standard input.
        #[arg(value_name = "FILE|-")]
        input: String,
    },
    /// Validate the configuration and reach every configured queue.
    Check {
        /// Also send one synthetic test event through the pipeline to every route, and
        /// say whether each destination accepted it and how long it took.
        #[arg(long, env = "FORWARDER_CHECK_SEND_TEST_EVENT")]
        send_test_event: bool,
    },
    /// Send the dead letters of FORWARDER_DLQ_URL back through the pipeline to their
    /// routes, once their cause is fixed; each is deleted from the DLQ only once its
    /// destination accepted it. Exits 1 if any matching dead letter was left behind.
    Redrive {
        /// Only dead letters with this `reason` attribute (e.g. oversized); repeat for
        /// several. None: all.
        #[arg(
            long = "reason",
            env = "FORWARDER_REDRIVE_REASONS",
            value_name = "R",
            value_delimiter = ','
        )]
        reasons: Vec<String>,
        /// At most this many dead letters (of those matching).
        #[arg(long, env = "FORWARDER_REDRIVE_MAX", value_name = "N")]
        max: Option<usize>,
        /// Print the counts by reason and stage; change nothing.
        #[arg(long, env = "FORWARDER_REDRIVE_DRY_RUN")]
        dry_run: bool,
    },
    /// Serve AWS Lambda SQS batches (the default inside Lambda, where
    /// AWS_LAMBDA_RUNTIME_API is set); answers with partial batch failures.
    Lambda,
    /// Look up the indexer's store.
    #[command(subcommand)]
    Indexer(IndexerCommand),
}

/// `sqs-forwarder indexer …`: the configured store, read (and for `record`, written).
#[derive(Debug, Clone, Subcommand)]
pub enum IndexerCommand {
    /// Print the id of a string, if it has one.
    Resolve {
        /// The organization.
        #[arg(long)]
        org: u64,
        /// The string.
        string: String,
    },
    /// Print the string an id stands for.
    Reverse {
        /// The organization.
        #[arg(long)]
        org: u64,
        /// The id.
        id: u64,
    },
    /// Give ids to strings (arguments, or one per line on stdin) and print
    /// `string<TAB>id` for each; `-` for a string refused by a limit.
    Record {
        /// The organization.
        #[arg(long)]
        org: u64,
        /// The strings; none reads stdin.
        strings: Vec<String>,
    },
}

/// A database URL: its password never appears in Debug, Display or logs.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretUrl(String);

impl SecretUrl {
    /// The URL itself, for connecting.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// A URL from text.
    pub fn new(url: impl Into<String>) -> Self {
        Self(url.into())
    }

    /// The URL with any password replaced by `***`.
    pub fn redacted(&self) -> String {
        crate::redact::url(&self.0, SAFE_PARAMS)
    }
}

/// Query parameters of a database URL shown as they are; any other (`password`,
/// `sslpassword`, a token…) has its value masked.
const SAFE_PARAMS: &[&str] = &[
    "sslmode",
    "sslrootcert",
    "mode",
    "cache",
    "immutable",
    "application_name",
    "connect_timeout",
    "host",
    "port",
    "dbname",
    "user",
    "target_session_attrs",
    "statement-cache-capacity",
];

impl std::fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.redacted())
    }
}

impl std::fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

fn secret_url(value: &str) -> Result<SecretUrl, String> {
    let v = value.trim();
    if v.starts_with("postgres://") || v.starts_with("postgresql://") || v.starts_with("sqlite:") {
        Ok(SecretUrl(v.to_string()))
    } else {
        Err("expected postgres://user:password@host/db or sqlite:PATH".into())
    }
}

/// `on` or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Switch {
    /// Enabled.
    On,
    /// Disabled.
    Off,
}

/// Log output format: telemetry's, named here as a setting.
pub use crate::telemetry::LogFormat;

/// Global tags added to every metric: `k:v,k:v`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetricTags(pub Vec<(String, String)>);

/// Settings shared by every command.
#[derive(Debug, Clone, Args)]
pub struct Settings {
    /// The SQS queue to consume: needed by `run` and `check` (Lambda gets its batches from
    /// Lambda).
    #[arg(
        long,
        env = "FORWARDER_SOURCE_QUEUE_URL",
        value_name = "URL",
        global = true
    )]
    pub source_queue_url: Option<String>,

    /// The SQS queue to forward events to.
    #[arg(
        long,
        env = "FORWARDER_DEST_QUEUE_URL",
        value_name = "URL",
        global = true
    )]
    pub dest_queue_url: Option<String>,

    /// Per-project routes, a TOML or JSON file: destination, region, message group, S3
    /// bucket and credentials per project, and a default.
    #[arg(
        long,
        env = "FORWARDER_ROUTES_FILE",
        value_name = "PATH",
        global = true
    )]
    pub routes_file: Option<std::path::PathBuf>,

    /// Dead-letter queue for events that can never be forwarded (invalid bodies, permanent
    /// errors); unset leaves them in the source queue for its redrive policy.
    #[arg(long, env = "FORWARDER_DLQ_URL", value_name = "URL", global = true)]
    pub dlq_url: Option<String>,

    /// Message group: a literal, or a template with {project_id} and {organization_id}.
    /// Required for a .fifo destination (order); on a standard one, the fair-queue tenant.
    #[arg(
        long,
        env = "FORWARDER_MESSAGE_GROUP_ID",
        value_name = "TEMPLATE",
        global = true
    )]
    pub message_group_id: Option<crate::forward::GroupTemplate>,

    /// S3 bucket for events over FORWARDER_MAX_MESSAGE_BYTES; a pointer is sent instead.
    /// Unset: such events are not forwarded (and go to the dead-letter queue, if any).
    #[arg(
        long,
        env = "FORWARDER_S3_BUCKET",
        value_name = "BUCKET",
        global = true
    )]
    pub s3_bucket: Option<String>,

    /// The pointer sent for an event stored in S3: Sentry's, or the AWS SQS Extended
    /// Client Library's.
    #[arg(long, env = "FORWARDER_S3_POINTER_FORMAT", value_name = "FORMAT",
          value_parser = clap::builder::PossibleValuesParser::new(["sentry", "extended"])
              .map(|s| s.parse::<crate::forward::PointerFormat>().unwrap_or_default()),
          default_value = "sentry", global = true)]
    pub s3_pointer_format: crate::forward::PointerFormat,

    /// What the source's bodies are: `auto` (an SNS Notification envelope is opened, any
    /// other body is the event), `sns` (every body must be one), or `none`.
    #[arg(long, env = "FORWARDER_SOURCE_ENVELOPE", value_name = "ENVELOPE",
          value_parser = clap::builder::PossibleValuesParser::new(["auto", "sns", "none"])
              .map(|s| s.parse::<crate::source::envelope::SourceEnvelope>().unwrap_or_default()),
          default_value = "auto", global = true)]
    pub source_envelope: crate::source::envelope::SourceEnvelope,

    /// Server-side encryption of every object stored in S3: `AES256` (SSE-S3) or
    /// `aws:kms` (SSE-KMS). Unset: the bucket's default encryption.
    #[arg(long, env = "FORWARDER_S3_SSE", value_name = "SSE", global = true)]
    pub s3_sse: Option<String>,

    /// The KMS key (id, ARN or alias) of `aws:kms`; unset: the account's `aws/s3` key.
    #[arg(
        long,
        env = "FORWARDER_S3_KMS_KEY_ID",
        value_name = "KEY",
        global = true
    )]
    pub s3_kms_key_id: Option<String>,

    /// Which events go to the bucket: `oversized` (over FORWARDER_MAX_MESSAGE_BYTES), or
    /// `always` (every event, only a pointer in the queue, as Sentry's plugin does).
    #[arg(long, env = "FORWARDER_S3_OFFLOAD", value_name = "MODE",
          value_parser = clap::builder::PossibleValuesParser::new(["oversized", "always"])
              .map(|s| s.parse::<crate::forward::OffloadMode>().unwrap_or_default()),
          default_value = "oversized", global = true)]
    pub s3_offload: crate::forward::OffloadMode,

    /// Source message attributes sent on to the destination: none, all, or a
    /// comma-separated list of names. The forwarder's own win a name clash; past SQS's
    /// 10 per message the rest are dropped (counted).
    #[arg(
        long,
        env = "FORWARDER_FORWARD_ATTRIBUTES",
        value_name = "none|all|NAMES",
        default_value = "none",
        global = true
    )]
    pub forward_attributes: crate::forward::ForwardAttributes,

    /// Per-organization rate limit, N/DURATION (Sentry: 50/1s); an event over it is
    /// deferred (its message hidden until its organization's tokens are back).
    /// Unset: no limit.
    ///
    /// An event over it is never dropped, and no other organization waits for it. The
    /// limit applies per worker process. A rate finer than one event per nanosecond is
    /// refused at start.
    #[arg(
        long,
        env = "FORWARDER_RATE_LIMIT",
        value_name = "N/DURATION",
        global = true
    )]
    pub rate_limit: Option<crate::forward::RateLimit>,

    /// Concurrent pollers of the source queue (1 to 1024).
    #[arg(long, env = "FORWARDER_WORKERS", value_name = "N", default_value_t = 4,
          value_parser = clap::value_parser!(u16).range(1..=1024).map(usize::from), global = true)]
    pub workers: usize,

    /// Threads that run the forwarder's tasks (tokio's worker threads). One core forwards
    /// about 8,000 typical events a second; a second thread pays only once one is busy,
    /// and below that every wake-up between threads costs CPU. Raise it with the CPU a
    /// pod is given, or add pods. 1 to 1024.
    #[arg(long, env = "FORWARDER_THREADS", value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..=1024).map(usize::from), global = true)]
    pub threads: usize,

    /// Messages per receive (1 to 10).
    #[arg(long, env = "FORWARDER_BATCH_SIZE", value_name = "N", default_value_t = 10,
          value_parser = clap::value_parser!(u8).range(1..=10), global = true)]
    pub batch_size: u8,

    /// Most events held at once by the whole pool (received, not yet settled, buffered in
    /// the batching window included). Pollers wait for room. With the adaptive bound, never
    /// under room for every route to fill two calls (2 × 10 events a route): hundreds of
    /// routes hold their events a window each, and what they hold is bounded by
    /// FORWARDER_MAX_IN_FLIGHT_BYTES. 1 to 100000.
    #[arg(long, env = "FORWARDER_MAX_IN_FLIGHT", value_name = "N", default_value_t = 400,
          value_parser = clap::value_parser!(u32).range(1..=100_000).map(|v| v as usize), global = true)]
    pub max_in_flight: usize,

    /// Whether the in-flight bound follows the calls' response times (on: from one
    /// batch per poller up to FORWARDER_MAX_IN_FLIGHT, adding a batch while they stay
    /// within twice their lowest lately, down in proportion (at most by half) when they
    /// grow past it, a tenth off when a call is throttled) or stays at
    /// FORWARDER_MAX_IN_FLIGHT (off).
    ///
    /// Receiving ahead pays while the queues answer as fast (on a stand-in with 3 ms
    /// calls the bound grows to 400 and the pool forwards 2.1-2.3 times a bare loop's
    /// events per second); at a saturated queue it only queues (on LocalStack: 1.07-1.08x
    /// the bare loop's CPU per event, against 1.20-1.23x with the bound fixed at 400). A
    /// packed route keeps the bound at its maximum. `check` prints it.
    #[arg(long, env = "FORWARDER_ADAPTIVE_IN_FLIGHT", value_name = "SWITCH", value_enum,
          default_value_t = Switch::On, global = true)]
    pub adaptive_in_flight: Switch,

    /// Most bytes held at once by the whole pool, beside the count: each message received and not
    /// yet forwarded at twice its body plus 32 KiB, and each receive in flight at what it is
    /// expected to bring (per message, the largest body seen lately rounded up to a power of two).
    /// KB, MB, KiB, MiB, GiB or bytes; 64 KiB to 4 GiB.
    ///
    /// However small the events lately, a receive may bring 10 × the source's
    /// MaximumMessageSize: receives in flight are capped at 1.75 × this over that (7 from a
    /// 1 MiB source at the default, 28 from a 256 KiB one), so the worst case is this plus that
    /// cap × 10 × MaximumMessageSize (40 + 7 × 10 = 110 MiB at the default; logged at start as
    /// `memory bound: …`). A batch larger than expected is held at its real size and later
    /// receives wait until it is paid back.
    #[arg(long, env = "FORWARDER_MAX_IN_FLIGHT_BYTES", value_name = "BYTES", default_value = "40MiB",
          value_parser = byte_size, global = true)]
    pub max_in_flight_bytes: usize,

    /// The longest an event or a delete waits to share a call (0: none) [default: 1s, at most a third of the source's visibility timeout].
    #[arg(long, env = "FORWARDER_BATCH_WINDOW", value_name = "DURATION", value_parser = duration, global = true)]
    pub batch_window: Option<Duration>,

    /// Fields left out of every forwarded event (a route's exclude_fields wins): dotted paths, `*` for every element or member.
    #[arg(
        long,
        env = "FORWARDER_EXCLUDE_FIELDS",
        value_name = "PATHS",
        value_delimiter = ',',
        global = true
    )]
    pub exclude_fields: Vec<String>,

    /// The only fields forwarded, with event_id, project_id, organization_id and tag_ids (a route's include_fields wins).
    #[arg(
        long,
        env = "FORWARDER_INCLUDE_FIELDS",
        value_name = "PATHS",
        value_delimiter = ',',
        global = true
    )]
    pub include_fields: Vec<String>,

    /// Which events are forwarded, as path=value|value,... (all must match; tags.KEY is a tag; a route's filter wins).
    #[arg(long, env = "FORWARDER_FILTER", value_name = "RULES", global = true)]
    pub filter: Option<String>,

    /// `ndjson`: many events per destination message, one per line (a route's pack wins); `off`: one per message.
    #[arg(long, env = "FORWARDER_PACK", value_name = "PACK",
          value_parser = clap::builder::PossibleValuesParser::new(["off", "ndjson"])
              .map(|s| s.parse::<crate::forward::Pack>().unwrap_or_default()),
          default_value = "off", global = true)]
    pub pack: crate::forward::Pack,

    /// `gzip`: each pack's S3 object (s3_offload always) is gzip-compressed, Content-Encoding gzip (a route's pack_compression wins).
    #[arg(long, env = "FORWARDER_PACK_COMPRESSION", value_name = "COMPRESSION",
          value_parser = clap::builder::PossibleValuesParser::new(["none", "gzip"])
              .map(|s| s.parse::<crate::forward::PackCompression>().unwrap_or_default()),
          default_value = "none", global = true)]
    pub pack_compression: crate::forward::PackCompression,

    /// Long-poll wait of each receive, in seconds (0 to 20).
    ///
    /// SIGTERM cancels a poll in progress; with --exit-when-idle polls last at most 1 s,
    /// and the idle stop lets the last ones end. With 0 (short polls), an empty receive
    /// is followed by a 1 s pause.
    #[arg(long, env = "FORWARDER_RECEIVE_WAIT_SECONDS", value_name = "SECS", default_value_t = 20,
          value_parser = clap::value_parser!(u8).range(0..=20), global = true)]
    pub receive_wait_seconds: u8,

    /// Idle HTTP connections kept per host, for every AWS client (1 to 10000).
    #[arg(long, env = "FORWARDER_HTTP_POOL_MAX_IDLE", value_name = "N", default_value_t = 64,
          value_parser = clap::value_parser!(u32).range(1..=10_000).map(|v| v as usize), global = true)]
    pub http_pool_max_idle: usize,

    /// How long an idle HTTP connection is kept (1s to 10m); below the 60 s after which
    /// AWS's load balancers close idle connections.
    #[arg(long, env = "FORWARDER_HTTP_POOL_IDLE_TIMEOUT", value_name = "DURATION",
          default_value = "50s", value_parser = duration, global = true)]
    pub http_pool_idle_timeout: Duration,

    /// Largest message, and largest batch, in bytes of body and attributes (SQS: 1 MiB;
    /// 1 to 1048576).
    ///
    /// A destination queue whose own MaximumMessageSize is smaller bounds its route by
    /// that instead (read at start and every minute). A larger event goes to S3, or is
    /// dead-lettered as `oversized`.
    #[arg(long, env = "FORWARDER_MAX_MESSAGE_BYTES", value_name = "BYTES", default_value_t = 1_048_576,
          value_parser = clap::value_parser!(u32).range(1..=1_048_576).map(|v| v as usize), global = true)]
    pub max_message_bytes: usize,

    /// statsd/DogStatsD address, host:port: where the statsd and dogstatsd backends send
    /// (FORWARDER_METRICS_BACKEND; set alone, it makes dogstatsd the backend). The other
    /// backends need none.
    #[arg(
        long,
        env = "FORWARDER_STATSD_ADDR",
        value_name = "HOST:PORT",
        global = true
    )]
    pub statsd_addr: Option<String>,

    /// Where metrics go, one or several comma-separated (each gets every metric): off,
    /// statsd (plain, no tags), dogstatsd, datadog-api (Datadog's HTTP API: DD_API_KEY,
    /// DD_SITE, DD_URL), emf (CloudWatch Embedded Metric Format on stdout), log (tracing
    /// events at debug) or prometheus (GET /metrics on FORWARDER_HEALTH_ADDR). Unset:
    /// dogstatsd if FORWARDER_STATSD_ADDR is set; else emf in Lambda mode; else off.
    #[arg(long, env = "FORWARDER_METRICS_BACKEND", value_name = "BACKENDS", value_delimiter = ',',
          value_parser = ["off", "statsd", "dogstatsd", "datadog-api", "emf", "log", "prometheus"], global = true)]
    pub metrics_backend: Vec<String>,

    /// How often emf and datadog-api write what they aggregated (1s to 5m).
    #[arg(long, env = "FORWARDER_METRICS_FLUSH_INTERVAL", value_name = "DURATION",
          default_value = "10s", value_parser = duration, global = true)]
    pub metrics_flush_interval: Duration,

    /// Datadog's API key, for datadog-api. Never logged.
    #[arg(long, env = "DD_API_KEY", value_name = "KEY", hide_env_values = true, global = true,
          value_parser = |s: &str| Ok::<_, String>(crate::metrics::datadog::ApiKey::new(s)))]
    pub dd_api_key: Option<crate::metrics::datadog::ApiKey>,

    /// Datadog's site, for datadog-api: the intake is api.SITE, over HTTPS.
    #[arg(
        long,
        env = "DD_SITE",
        value_name = "SITE",
        default_value = "datadoghq.com",
        global = true
    )]
    pub dd_site: String,

    /// The intake's base URL, for datadog-api; overrides DD_SITE (a proxy, a test).
    #[arg(long, env = "DD_URL", value_name = "URL", global = true)]
    pub dd_url: Option<String>,

    /// Address of the health listener (GET /healthz, GET /readyz), host:port, for
    /// Kubernetes probes; unset: no listener.
    ///
    /// GET /healthz answers 200 from start; GET /readyz answers 200 once a receive from
    /// the source has succeeded, and 503 before that, while every route is paused, and
    /// from the moment shutdown begins. With the `prometheus` metrics backend, GET
    /// /metrics serves the metrics. At most 64 connections at once; a client has 5 s to
    /// send its request.
    #[arg(
        long,
        env = "FORWARDER_HEALTH_ADDR",
        value_name = "HOST:PORT",
        global = true
    )]
    pub health_addr: Option<String>,

    /// Prefix of every metric name.
    #[arg(
        long,
        env = "FORWARDER_METRICS_PREFIX",
        value_name = "PREFIX",
        default_value = "",
        global = true
    )]
    pub metrics_prefix: String,

    /// Tags added to every metric, as k:v,k:v.
    #[arg(long, env = "FORWARDER_METRICS_TAGS", value_name = "K:V,...", default_value = "",
          value_parser = metric_tags, global = true)]
    pub metrics_tags: MetricTags,

    /// Fraction of sampled metrics sent, in (0, 1]. data-forwarding.http_response is never sampled.
    #[arg(long, env = "FORWARDER_METRICS_SAMPLE_RATE", value_name = "RATE", default_value_t = 1.0,
          value_parser = sample_rate, global = true)]
    pub metrics_sample_rate: f64,

    /// Log format [default: pretty; in Lambda, json when AWS_LAMBDA_LOG_FORMAT=JSON]; RUST_LOG filters what is logged.
    #[arg(long, env = "FORWARDER_LOG_FORMAT", value_enum, global = true)]
    pub log_format: Option<LogFormat>,

    /// Wait before the first retry of a failed call.
    #[arg(long, env = "FORWARDER_RETRY_INITIAL_INTERVAL", value_name = "DURATION", default_value = "100ms",
          value_parser = duration, global = true)]
    pub retry_initial_interval: Duration,

    /// Longest wait between two retries.
    #[arg(long, env = "FORWARDER_RETRY_MAX_INTERVAL", value_name = "DURATION", default_value = "10s",
          value_parser = duration, global = true)]
    pub retry_max_interval: Duration,

    /// Give up retrying after this long; the message then stays in the source queue.
    #[arg(long, env = "FORWARDER_RETRY_MAX_ELAPSED", value_name = "DURATION", default_value = "60s",
          value_parser = duration, global = true)]
    pub retry_max_elapsed: Duration,

    /// Time limit of one HTTP attempt (a long poll gets its wait on top).
    #[arg(long, env = "FORWARDER_REQUEST_TIMEOUT", value_name = "DURATION", default_value = "10s",
          value_parser = duration, global = true)]
    pub request_timeout: Duration,

    /// Intern tag keys and values into ids (`tag_ids` in the forwarded event).
    #[arg(long, env = "FORWARDER_INDEXER", value_enum, default_value_t = Switch::On, global = true)]
    pub indexer: Switch,

    /// The indexer's store: postgres://… for many workers; unset uses SQLite in the data directory.
    #[arg(long, env = "FORWARDER_INDEXER_DATABASE_URL", value_name = "URL", value_parser = secret_url,
          hide_env_values = true, global = true)]
    pub indexer_database_url: Option<SecretUrl>,

    /// Directory for the embedded SQLite store.
    #[arg(
        long,
        env = "FORWARDER_DATA_DIR",
        value_name = "DIR",
        default_value = "data",
        global = true
    )]
    pub data_dir: std::path::PathBuf,

    /// Most (organization, string) ids kept in the in-process cache (at least 1).
    #[arg(long, env = "FORWARDER_INDEXER_CACHE_SIZE", value_name = "N", default_value_t = 100_000,
          value_parser = clap::value_parser!(u32).range(1..).map(|v| v as usize), global = true)]
    pub indexer_cache_size: usize,

    /// Connections in the indexer store's pool (1 to 1000).
    #[arg(long, env = "FORWARDER_INDEXER_POOL_SIZE", value_name = "N", default_value_t = 5,
          value_parser = clap::value_parser!(u32).range(1..=1000), global = true)]
    pub indexer_pool_size: u32,

    /// The indexer's shared cache tier, a redis:// URL with host and port, optionally a
    /// user, password and db (rediss:// for TLS), asked between the in-process cache and
    /// the store; unset: no shared tier.
    #[arg(long, env = "FORWARDER_INDEXER_CACHE_URL", value_name = "URL", value_parser = redis_url,
          hide_env_values = true, global = true)]
    pub indexer_cache_url: Option<RedisUrl>,

    /// The shared cache's key version (`:{version}:indexer:org:str:…`); bump it to drop
    /// every key at once.
    #[arg(
        long,
        env = "FORWARDER_INDEXER_CACHE_VERSION",
        value_name = "N",
        default_value_t = 1,
        global = true
    )]
    pub indexer_cache_version: u32,

    /// How long a shared cache key lives (plus up to a quarter more, spread per key).
    #[arg(long, env = "FORWARDER_INDEXER_CACHE_TTL", value_name = "DURATION", default_value = "2h",
          value_parser = ttl, global = true)]
    pub indexer_cache_ttl: Duration,

    /// The most a lookup waits for the shared cache before asking the store.
    #[arg(long, env = "FORWARDER_INDEXER_CACHE_TIMEOUT", value_name = "DURATION", default_value = "50ms",
          value_parser = cache_timeout, global = true)]
    pub indexer_cache_timeout: Duration,

    /// New strings allowed per organization and window, N/DURATION; "off" for none.
    #[arg(long, env = "FORWARDER_INDEXER_WRITE_LIMIT", value_name = "N/DURATION", default_value = "1000/10s",
          value_parser = write_limit, global = true)]
    pub indexer_write_limit: WriteLimitSetting,

    /// The idempotency store, for effectively-once forwarding: redis://, rediss://
    /// or postgres:// (its table created if missing). Each event is claimed there
    /// before its send to a destination and marked after the destination accepted it,
    /// so an event forwarded already (a worker killed before its delete, a redelivery)
    /// is deleted from the source and not sent again; unset: at least once.
    #[arg(long, env = "FORWARDER_IDEMPOTENCY_URL", value_name = "URL", value_parser = idempotency_url,
          hide_env_values = true, global = true)]
    pub idempotency_url: Option<SecretUrl>,

    /// How long the idempotency store remembers an event; unset: the source's
    /// visibility timeout times its redrive policy's maxReceiveCount, at least 1h (run
    /// reads both at start, Lambda from its first batch's queue; replay and redrive:
    /// 1h).
    #[arg(long, env = "FORWARDER_IDEMPOTENCY_TTL", value_name = "DURATION", value_parser = ttl,
          global = true)]
    pub idempotency_ttl: Option<Duration>,

    /// How long a claim holds before another worker may take it over; unset: the
    /// source's visibility timeout (run), the invocation's time left (Lambda), else 30s.
    #[arg(long, env = "FORWARDER_IDEMPOTENCY_LEASE", value_name = "DURATION", value_parser = ttl,
          global = true)]
    pub idempotency_lease: Option<Duration>,

    /// Bound of each call to the idempotency store (retried for up to 10s).
    #[arg(long, env = "FORWARDER_IDEMPOTENCY_TIMEOUT", value_name = "DURATION", default_value = "1s",
          value_parser = cache_timeout, global = true)]
    pub idempotency_timeout: Duration,

    /// When the idempotency store fails: off (fail-closed) leaves the events in the
    /// source, not ready, until it answers; on forwards them without it, each counted
    /// as forwarder.idempotency.bypassed.
    #[arg(long, env = "FORWARDER_IDEMPOTENCY_FAIL_OPEN", value_enum, default_value_t = Switch::Off,
          global = true)]
    pub idempotency_fail_open: Switch,

    /// How long in-flight batches may take to finish after SIGTERM or SIGINT.
    #[arg(long, env = "FORWARDER_SHUTDOWN_TIMEOUT", value_name = "DURATION", default_value = "30s",
          value_parser = duration, global = true)]
    pub shutdown_timeout: Duration,
}

/// A duration: plain seconds (`30`) or with a unit (`100ms`, `30s`, `2m`).
/// Bytes: a number, or with a unit (`KiB`, `MiB`, `GiB`, `KB`, `MB`), from 64 KiB to 4 GiB.
fn byte_size(value: &str) -> Result<usize, String> {
    let value = value.trim();
    let split = value
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(value.len());
    let (number, unit) = value.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{value:?}: expected bytes, e.g. 8MiB, 512KiB or 1048576"))?;
    let scale: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        other => return Err(format!("{other:?}: unknown unit; use KiB, MiB or GiB")),
    };
    let bytes = number.saturating_mul(scale);
    if !(64 * 1024..=4 << 30).contains(&bytes) {
        return Err(format!("{value}: must be between 64KiB and 4GiB"));
    }
    usize::try_from(bytes).map_err(|_| format!("{value}: too large for this machine"))
}

fn duration(value: &str) -> Result<Duration, String> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(value)
        .map_err(|e| format!("{e}; expected seconds or a duration like 500ms, 30s, 2m"))
}

/// The shared cache's URL: its password never appears in Debug, Display or logs.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl(String);

impl RedisUrl {
    /// The URL itself, for connecting.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&crate::redact::url(&self.0, &[]))
    }
}

impl std::fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&crate::redact::url(&self.0, &[]))
    }
}

fn redis_url(value: &str) -> Result<RedisUrl, String> {
    let v = value.trim();
    if !v.starts_with("redis://") && !v.starts_with("rediss://") {
        return Err("expected redis://[user:password@]host:port[/db] (rediss:// for TLS)".into());
    }
    // Parsed as the client will, so a URL it cannot use fails now; nothing connects.
    match redis::Client::open(v) {
        Ok(_) => Ok(RedisUrl(v.to_string())),
        Err(e) => Err(format!(
            "{}; expected redis://[user:password@]host:port[/db]",
            e.detail().unwrap_or("not a usable URL")
        )),
    }
}

fn idempotency_url(value: &str) -> Result<SecretUrl, String> {
    let v = value.trim();
    let usable = if v.starts_with("redis://") || v.starts_with("rediss://") {
        redis::Client::open(v)
            .map(|_| ())
            .map_err(|e| e.detail().unwrap_or("not a usable URL").to_string())
    } else if v.starts_with("postgres://") || v.starts_with("postgresql://") {
        <sqlx::postgres::PgConnectOptions as std::str::FromStr>::from_str(v)
            .map(|_| ())
            .map_err(|_| "not a usable URL".to_string())
    } else {
        Err("unknown scheme".to_string())
    };
    usable.map(|()| SecretUrl::new(v)).map_err(|why| {
        format!("{why}; expected redis://[user:password@]host:port[/db], rediss:// or postgres://user@host/db")
    })
}

fn ttl(value: &str) -> Result<Duration, String> {
    match duration(value)? {
        d if d >= Duration::from_secs(1) => Ok(d),
        _ => Err("must be at least 1s (Redis expires keys in whole seconds)".into()),
    }
}

fn cache_timeout(value: &str) -> Result<Duration, String> {
    match duration(value)? {
        d if d >= Duration::from_millis(1) && d <= Duration::from_secs(10) => Ok(d),
        _ => Err("must be between 1ms and 10s".into()),
    }
}

/// `FORWARDER_INDEXER_WRITE_LIMIT`: a limit, or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteLimitSetting(pub Option<crate::indexer::WriteLimit>);

fn write_limit(value: &str) -> Result<WriteLimitSetting, String> {
    if value.trim().eq_ignore_ascii_case("off") {
        return Ok(WriteLimitSetting(None));
    }
    value.parse().map(|l| WriteLimitSetting(Some(l)))
}

fn sample_rate(value: &str) -> Result<f64, String> {
    match value.trim().parse::<f64>() {
        Ok(rate) if rate > 0.0 && rate <= 1.0 => Ok(rate),
        _ => Err("expected a number in (0, 1], like 0.25".into()),
    }
}

fn metric_tags(value: &str) -> Result<MetricTags, String> {
    let mut tags = Vec::new();
    for item in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        match item.split_once(':') {
            Some((k, v)) if !k.trim().is_empty() => {
                tags.push((k.trim().to_string(), v.trim().to_string()))
            }
            _ => return Err(format!("{item:?} is not k:v; expected k:v,k:v")),
        }
    }
    Ok(MetricTags(tags))
}

impl Cli {
    /// Parses arguments and environment. Help and version exit the process as usual;
    /// any other problem comes back as one line that names the environment variable.
    pub fn parse_or_one_line<I, T>(args: I) -> Result<Cli, String>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        match Cli::try_parse_from(args) {
            Ok(cli) => Ok(cli),
            Err(err)
                if matches!(
                    err.kind(),
                    ErrorKind::DisplayHelp
                        | ErrorKind::DisplayVersion
                        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
                ) =>
            {
                err.exit()
            }
            Err(err) => Err(one_line(&err)),
        }
    }
}

/// Clap's first line, led by the environment variable of the offending option.
pub fn one_line(err: &clap::Error) -> String {
    let rendered = err.render().to_string();
    let first = rendered
        .lines()
        .next()
        .unwrap_or("invalid arguments")
        .trim_start_matches("error: ")
        .to_string();
    let env = match err.get(ContextKind::InvalidArg) {
        Some(ContextValue::String(arg)) => env_of(arg),
        _ => None,
    };
    match env {
        Some(env) => format!("{env}: {first}"),
        None => first,
    }
}

/// The environment variable of an option named as clap shows it (`--workers <N>`).
fn env_of(shown: &str) -> Option<String> {
    let long = shown.split_whitespace().next()?.trim_start_matches("--");
    let cmd = Cli::command();
    let env = std::iter::once(&cmd)
        .chain(cmd.get_subcommands())
        .flat_map(|c| c.get_arguments())
        .find(|a| a.get_long() == Some(long))
        .and_then(|a| a.get_env())
        .map(|e| e.to_string_lossy().into_owned());
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, String> {
        Cli::parse_or_one_line(std::iter::once("sqs-forwarder").chain(args.iter().copied()))
    }

    #[test]
    fn bad_values_fail_in_one_line_naming_the_variable() {
        let cases: &[(&[&str], &str)] = &[
            (&["run", "--workers", "abc"], "FORWARDER_WORKERS"),
            (&["run", "--workers", "0"], "FORWARDER_WORKERS"),
            (&["run", "--threads", "0"], "FORWARDER_THREADS"),
            (&["run", "--batch-size", "11"], "FORWARDER_BATCH_SIZE"),
            (
                &["run", "--metrics-sample-rate", "2"],
                "FORWARDER_METRICS_SAMPLE_RATE",
            ),
            (
                &["run", "--metrics-tags", "novalue"],
                "FORWARDER_METRICS_TAGS",
            ),
            (
                &["run", "--retry-max-elapsed", "soon"],
                "FORWARDER_RETRY_MAX_ELAPSED",
            ),
            (&["run", "--log-format", "xml"], "FORWARDER_LOG_FORMAT"),
            (
                &["run", "--exit-when-idle", "x"],
                "FORWARDER_EXIT_WHEN_IDLE",
            ),
        ];
        for (args, var) in cases {
            let err = parse(args).err().unwrap_or_default();
            assert!(err.starts_with(&format!("{var}: ")), "{args:?}: {err}");
            assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        }
    }

    #[test]
    fn defaults_parse_for_every_command() {
        for args in [
            &["run"][..],
            &["check"],
            &["replay", "-"],
            &["indexer", "resolve", "--org", "1", "x"],
            &["run", "--indexer-write-limit", "off"],
        ] {
            let cli = parse(args);
            assert!(cli.is_ok(), "{args:?}: {cli:?}");
        }
        let cli = parse(&["run"]).ok();
        let s = cli.map(|c| c.settings);
        assert_eq!(s.as_ref().map(|s| s.workers), Some(4));
        assert_eq!(
            s.and_then(|s| s.indexer_write_limit.0)
                .map(|l| l.to_string()),
            Some("1000/10s".to_string())
        );
    }

    #[test]
    fn database_urls_are_redacted() {
        let u =
            SecretUrl::new("postgres://forwarder:hunter2@db.internal:5432/indexer?sslmode=require");
        for shown in [format!("{u:?}"), u.to_string(), u.redacted()] {
            assert!(!shown.contains("hunter2"), "{shown}");
            assert!(
                shown.contains("forwarder:***@db.internal:5432/indexer"),
                "{shown}"
            );
        }
        assert_eq!(
            SecretUrl::new("sqlite:data/x.db").redacted(),
            "sqlite:data/x.db"
        );
        let q = SecretUrl::new(
            "postgres://forwarder@db/indexer?sslmode=require&password=hunter2&sslpassword=s3cret",
        );
        for shown in [format!("{q:?}"), q.to_string(), q.redacted()] {
            assert!(
                !shown.contains("hunter2") && !shown.contains("s3cret"),
                "{shown}"
            );
            assert!(shown.contains("sslmode=require"), "{shown}");
            assert!(shown.contains("password=***"), "{shown}");
        }
        let err = parse(&["run", "--indexer-database-url", "mysql://u:hunter2@h/d"])
            .err()
            .unwrap_or_default();
        assert!(err.starts_with("FORWARDER_INDEXER_DATABASE_URL: "), "{err}");
    }

    #[test]
    fn the_shared_cache_url_is_checked_and_never_shown() {
        let err = parse(&["run", "--indexer-cache-url", "memcached://h:11211"])
            .err()
            .unwrap_or_default();
        assert!(err.starts_with("FORWARDER_INDEXER_CACHE_URL: "), "{err}");
        let cli = Cli::parse_or_one_line([
            "sqs-forwarder",
            "run",
            "--indexer-cache-url",
            "redis://u:hunter2@cache:6379/0",
        ]);
        let shown = format!("{cli:?}");
        assert!(shown.contains("redis://u:***@cache:6379/0"), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(parse(&[
            "run",
            "--indexer-cache-url",
            "rediss://u:pw@cache.example:6380/0"
        ])
        .is_ok());
        let err = parse(&["run", "--indexer-cache-ttl", "0"])
            .err()
            .unwrap_or_default();
        assert!(err.starts_with("FORWARDER_INDEXER_CACHE_TTL: "), "{err}");
    }

    #[test]
    fn byte_sizes_take_units_and_bounds() {
        assert_eq!(byte_size("8MiB"), Ok(8 << 20));
        assert_eq!(byte_size("512KiB"), Ok(512 << 10));
        assert_eq!(byte_size("1048576"), Ok(1 << 20));
        assert_eq!(byte_size("2MB"), Ok(2_000_000));
        assert!(byte_size("1KiB").is_err(), "under 64 KiB");
        assert!(byte_size("8 parsecs").is_err());
        assert!(byte_size("-1").is_err());
    }

    #[test]
    fn durations_accept_seconds_and_units() {
        assert_eq!(duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(duration("2m"), Ok(Duration::from_secs(120)));
        assert!(duration("-1").is_err());
    }

    #[test]
    fn metric_tags_parse() {
        assert_eq!(
            metric_tags("env:prod, region:eu").map(|t| t.0),
            Ok(vec![
                ("env".into(), "prod".into()),
                ("region".into(), "eu".into())
            ])
        );
        assert_eq!(metric_tags("").map(|t| t.0), Ok(vec![]));
        assert!(metric_tags(":x").is_err());
    }

    #[test]
    fn every_option_has_an_env_var() {
        let cmd = Cli::command();
        for arg in std::iter::once(&cmd)
            .chain(cmd.get_subcommands())
            .flat_map(|c| c.get_arguments())
            .filter(|a| {
                a.get_long().is_some() && !matches!(a.get_id().as_str(), "help" | "version")
            })
        {
            assert!(
                arg.get_env().is_some(),
                "--{:?} has no env var",
                arg.get_long()
            );
        }
    }
}
