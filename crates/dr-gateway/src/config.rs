//! Settings of `dr-gateway serve`: flags with env fallbacks (`--help` documents each),
//! resolved into [`Settings`] with secrets read from files where asked.
//!
//! Settings that cannot work are refused at start, with a message naming the flag
//! and its environment variable ([`ConfigError`]; `serve` exits with status 2):
//! zero durations and sizes, a DR base URL that is not http(s), no webhook secret
//! (unless `--webhooks-disabled`), files that cannot be read.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use secrecy::SecretString;

use crate::bus::{BusConfig, BusError};
use crate::digital_river::RetryPolicy;
use crate::listen::ListenAddr;
use crate::redact::SensitiveUrl;
use crate::{defaults, shown_bytes, shown_duration};
pub use security::{SecurityArgs, SecurityError, SecuritySettings};

mod security;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable, for terminals.
    Pretty,
    /// One JSON object per line, for log pipelines.
    Json,
}

/// Flags of `dr-gateway serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// gRPC listen address, host:port; a host name (localhost) is resolved when binding.
    #[arg(long, env = "DR_GATEWAY_GRPC_ADDR", default_value_t = ListenAddr::from(defaults::GRPC_ADDR))]
    pub grpc_addr: ListenAddr,

    /// Webhook, /livez, /readyz, /healthz and /metrics listen address, host:port.
    #[arg(long, env = "DR_GATEWAY_HTTP_ADDR", default_value_t = ListenAddr::from(defaults::HTTP_ADDR))]
    pub http_addr: ListenAddr,

    /// Digital River API base URL (printed with any credentials in it redacted).
    #[arg(long, env = "DR_GATEWAY_DR_BASE_URL", default_value = defaults::DR_BASE_URL)]
    pub dr_base_url: SensitiveUrl,

    /// Digital River secret key (prefer --dr-api-key-file in production).
    #[arg(long, env = "DR_GATEWAY_DR_API_KEY", hide_env_values = true)]
    pub dr_api_key: Option<String>,

    /// File holding the Digital River secret key (e.g. a mounted Kubernetes secret).
    #[arg(long, env = "DR_GATEWAY_DR_API_KEY_FILE")]
    pub dr_api_key_file: Option<PathBuf>,

    /// Pin DR's API version per request (`digitalriver-version` header), e.g. 2021-12-13.
    #[arg(long, env = "DR_GATEWAY_DR_API_VERSION")]
    pub dr_api_version: Option<String>,

    /// Longest one DR call may take (the caller's deadline may cut it shorter).
    #[arg(long, env = "DR_GATEWAY_UPSTREAM_TIMEOUT", default_value = shown_duration!(defaults::UPSTREAM_TIMEOUT), value_parser = humantime::parse_duration)]
    pub upstream_timeout: Duration,

    /// Attempts per idempotent DR read (1 = no retry); POSTs are never retried blindly.
    #[arg(long, env = "DR_GATEWAY_UPSTREAM_ATTEMPTS", default_value_t = defaults::UPSTREAM_ATTEMPTS, value_parser = clap::value_parser!(u32).range(1..=10))]
    pub upstream_attempts: u32,

    /// Longest DR `Retry-After` a read waits out before trying again; DR asking for
    /// longer ends the call with DR's error and its delay in RetryInfo (a deadline
    /// caps the wait too).
    #[arg(long, env = "DR_GATEWAY_UPSTREAM_MAX_RETRY_WAIT", default_value = shown_duration!(defaults::UPSTREAM_MAX_RETRY_WAIT), value_parser = humantime::parse_duration)]
    pub upstream_max_retry_wait: Duration,

    /// Most DR calls per second with this key, across all replicas: `auto` (90 % of
    /// DR's documented per-key limit: 22/s for `sk_test_` keys, 225/s otherwise), a
    /// number, or `off`. Replicas sharing NATS split it between them.
    #[arg(long, env = "DR_GATEWAY_UPSTREAM_RATE_LIMIT", default_value = "auto", value_parser = parse_rate_limit)]
    pub upstream_rate_limit: RateLimitSetting,

    /// Replicas assumed to share the DR key while they cannot count each other
    /// through NATS (without --bus-url, or before it connects); the Helm chart sets
    /// its most pods.
    #[arg(long, env = "DR_GATEWAY_UPSTREAM_RATE_LIMIT_REPLICAS", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub upstream_rate_limit_replicas: u32,

    /// How long CreateFulfillment results are kept per request_id.
    #[arg(long, env = "DR_GATEWAY_IDEMPOTENCY_TTL", default_value = shown_duration!(defaults::IDEMPOTENCY_TTL), value_parser = humantime::parse_duration)]
    pub idempotency_ttl: Duration,

    /// Most request_ids remembered at once (oldest settled ones are dropped first).
    #[arg(long, env = "DR_GATEWAY_IDEMPOTENCY_MAX_ENTRIES", default_value_t = defaults::IDEMPOTENCY_MAX_ENTRIES)]
    pub idempotency_max_entries: usize,

    /// Time allowed to find out whether a POST with an unknown outcome took effect.
    #[arg(long, env = "DR_GATEWAY_RECONCILE_TIMEOUT", default_value = shown_duration!(defaults::RECONCILE_TIMEOUT), value_parser = humantime::parse_duration)]
    pub reconcile_timeout: Duration,

    /// How long after a POST /fulfillments was sent Digital River may still commit it
    /// (DR documents no bound). Until then a request_id whose outcome is unknown is
    /// never posted again: retries get UNAVAILABLE (FULFILLMENT_OUTCOME_PENDING)
    /// unless DR shows the fulfillment.
    #[arg(long, env = "DR_GATEWAY_FULFILLMENT_COMMIT_BOUND", default_value = shown_duration!(defaults::FULFILLMENT_COMMIT_BOUND), value_parser = humantime::parse_duration)]
    pub fulfillment_commit_bound: Duration,

    /// Without --bus-url: after start, how long a request_id this process has not
    /// seen and DR does not show is answered UNAVAILABLE (FULFILLMENT_OUTCOME_PENDING)
    /// instead of posted, because a previous process may have sent it and DR may
    /// still commit it. Default: the commit bound. 0s trades that safety for
    /// availability right after a restart. Ignored with --bus-url (the shared store
    /// remembers attempts) and with --sandbox (a fresh emulator).
    #[arg(long, env = "DR_GATEWAY_FULFILLMENT_STARTUP_HOLD", value_parser = humantime::parse_duration)]
    pub fulfillment_startup_hold: Option<Duration>,

    /// After SIGTERM/SIGINT: time for in-flight RPCs and streams to finish.
    #[arg(long, env = "DR_GATEWAY_SHUTDOWN_GRACE", default_value = shown_duration!(defaults::SHUTDOWN_GRACE), value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,

    /// Log format.
    #[arg(
        long,
        env = "DR_GATEWAY_LOG_FORMAT",
        value_enum,
        default_value = "pretty"
    )]
    pub log_format: LogFormat,

    /// Record Prometheus metrics and serve them at /metrics (`--metrics false`: none).
    #[arg(long, env = "DR_GATEWAY_METRICS", default_value_t = defaults::METRICS, action = clap::ArgAction::Set)]
    pub metrics: bool,

    /// Serve /metrics on this address (an admin port) instead of on --http-addr.
    #[arg(long, env = "DR_GATEWAY_METRICS_ADDR")]
    pub metrics_addr: Option<ListenAddr>,

    /// Webhook signing secret (Dashboard → Webhooks → reveal secret); repeat it to
    /// accept an old and a new secret while rotating. The env var takes a
    /// comma-separated list.
    #[arg(
        long = "webhook-secret",
        env = "DR_GATEWAY_WEBHOOK_SECRETS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub webhook_secrets: Vec<String>,

    /// File with webhook signing secrets, one per line (e.g. a mounted Kubernetes
    /// secret); added to --webhook-secret.
    #[arg(long, env = "DR_GATEWAY_WEBHOOK_SECRETS_FILE")]
    pub webhook_secrets_file: Option<PathBuf>,

    /// Run without DR webhooks (no signing secret needed): POST /webhooks/digitalriver
    /// answers 404 and events arrive only through backfill from DR's GET /events.
    #[arg(long, env = "DR_GATEWAY_WEBHOOKS_DISABLED")]
    pub webhooks_disabled: bool,

    /// Largest accepted gap between a webhook's signed timestamp and now.
    #[arg(long, env = "DR_GATEWAY_WEBHOOK_TOLERANCE", default_value = shown_duration!(defaults::WEBHOOK_TOLERANCE), value_parser = humantime::parse_duration)]
    pub webhook_tolerance: Duration,

    /// Largest accepted webhook body (e.g. 1MiB, 512KiB); larger bodies get 413.
    #[arg(long, env = "DR_GATEWAY_WEBHOOK_MAX_BODY", default_value = shown_bytes!(defaults::WEBHOOK_MAX_BODY), value_parser = parse_byte_size)]
    pub webhook_max_body: usize,

    /// Webhook listener: longest from a request's first byte to the end of its
    /// headers; slower connections are closed.
    #[arg(long, env = "DR_GATEWAY_WEBHOOK_HEADER_TIMEOUT", default_value = shown_duration!(defaults::WEBHOOK_HEADER_TIMEOUT), value_parser = humantime::parse_duration)]
    pub webhook_header_timeout: Duration,

    /// Webhook listener: longest a request body may take to arrive (slower → 408).
    #[arg(long, env = "DR_GATEWAY_WEBHOOK_BODY_TIMEOUT", default_value = shown_duration!(defaults::WEBHOOK_BODY_TIMEOUT), value_parser = humantime::parse_duration)]
    pub webhook_body_timeout: Duration,

    /// Webhook listener: longest a connection may stay silent before a request or
    /// between requests (keep it above the idle timeout of the proxy in front).
    #[arg(long, env = "DR_GATEWAY_WEBHOOK_IDLE_TIMEOUT", default_value = shown_duration!(defaults::WEBHOOK_IDLE_TIMEOUT), value_parser = humantime::parse_duration)]
    pub webhook_idle_timeout: Duration,

    /// Webhook listener: most connections open at once (probes included); past it,
    /// new connections wait until one closes.
    #[arg(long, env = "DR_GATEWAY_WEBHOOK_MAX_CONNECTIONS", default_value_t = defaults::WEBHOOK_MAX_CONNECTIONS, value_parser = parse_positive)]
    pub webhook_max_connections: usize,

    /// Most events the in-memory event log holds (oldest dropped first).
    #[arg(long, env = "DR_GATEWAY_EVENT_LOG_MAX_EVENTS", default_value_t = defaults::EVENT_LOG_MAX_EVENTS)]
    pub event_log_max_events: usize,

    /// Most memory the in-memory event log holds (e.g. 256MiB).
    #[arg(long, env = "DR_GATEWAY_EVENT_LOG_MAX_BYTES", default_value = shown_bytes!(defaults::EVENT_LOG_MAX_BYTES), value_parser = parse_byte_size)]
    pub event_log_max_bytes: usize,

    /// Time between backfills from DR's `GET /events` (one runs at start); 0s runs
    /// only the one at start.
    #[arg(long, env = "DR_GATEWAY_BACKFILL_INTERVAL", default_value = shown_duration!(defaults::BACKFILL_INTERVAL), value_parser = humantime::parse_duration)]
    pub backfill_interval: Duration,

    /// How far back the first backfill looks when the event log is empty (at most
    /// 30d, what DR keeps).
    #[arg(long, env = "DR_GATEWAY_BACKFILL_LOOKBACK", default_value = shown_duration!(defaults::BACKFILL_LOOKBACK), value_parser = humantime::parse_duration)]
    pub backfill_lookback: Duration,

    /// Most consumer groups (EventStream.CreateConsumerGroup beyond it is RESOURCE_EXHAUSTED).
    #[arg(long, env = "DR_GATEWAY_CONSUMER_GROUPS_MAX", default_value_t = defaults::CONSUMER_GROUPS_MAX)]
    pub consumer_groups_max: usize,

    /// Events a consumer group reads ahead of its oldest unacknowledged one, per
    /// replica (its memory bound); further events wait in the log.
    #[arg(long, env = "DR_GATEWAY_CONSUMER_GROUP_MAX_PENDING", default_value_t = defaults::CONSUMER_GROUP_MAX_PENDING, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1_000_000))]
    pub consumer_group_max_pending: usize,

    /// Run a built-in Digital River sandbox and point the gateway at it (no DR key needed).
    #[arg(long, env = "DR_GATEWAY_SANDBOX")]
    pub sandbox: bool,

    /// Where the built-in sandbox listens (with --sandbox), for its control surface.
    #[arg(long, env = "DR_GATEWAY_SANDBOX_ADDR", default_value_t = ListenAddr::from(defaults::SANDBOX_ADDR))]
    pub sandbox_addr: ListenAddr,

    /// The gRPC transport: message sizes, keepalive, connection age, compression.
    #[command(flatten)]
    pub grpc: GrpcArgs,

    /// When the built-in sandbox (with --sandbox) settles captures and cancels: at
    /// once, or only on POST /sandbox/settle (to try `wait` on pending outcomes).
    #[arg(
        long,
        env = "DR_GATEWAY_SANDBOX_SETTLE",
        value_enum,
        default_value = "immediate"
    )]
    pub sandbox_settle: SandboxSettle,

    /// Shared event bus (NATS JetStream) for running several replicas.
    #[command(flatten)]
    pub bus: BusArgs,

    /// TLS, caller identities and authorization of the gRPC listener.
    #[command(flatten)]
    pub security: SecurityArgs,
}

/// When the built-in sandbox settles pending captures and cancels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SandboxSettle {
    /// Right after the `POST /fulfillments` that started them.
    Immediate,
    /// Only on `POST /sandbox/settle`.
    Stepped,
}

/// Flags of the gRPC transport. Requests compressed with gzip, deflate or zstd are
/// always accepted.
#[derive(Debug, Clone, clap::Args)]
pub struct GrpcArgs {
    /// Largest request message accepted, after decompression (e.g. 4MiB); larger
    /// ones get RESOURCE_EXHAUSTED.
    #[arg(long = "grpc-max-receive-message-size", env = "DR_GATEWAY_GRPC_MAX_RECEIVE_MESSAGE_SIZE", default_value = shown_bytes!(defaults::GRPC_MAX_RECEIVE_MESSAGE_SIZE), value_parser = parse_byte_size)]
    pub max_receive_message_size: usize,

    /// Largest response message sent, before compression; a larger one fails the
    /// call with RESOURCE_EXHAUSTED.
    #[arg(long = "grpc-max-send-message-size", env = "DR_GATEWAY_GRPC_MAX_SEND_MESSAGE_SIZE", default_value = shown_bytes!(defaults::GRPC_MAX_SEND_MESSAGE_SIZE), value_parser = parse_byte_size)]
    pub max_send_message_size: usize,

    /// Interval of HTTP/2 PINGs that keep idle connections alive and find dead ones.
    #[arg(long = "grpc-keepalive-interval", env = "DR_GATEWAY_GRPC_KEEPALIVE_INTERVAL", default_value = shown_duration!(defaults::GRPC_KEEPALIVE_INTERVAL), value_parser = humantime::parse_duration)]
    pub keepalive_interval: Duration,

    /// How long a PING may go unanswered before the connection is closed.
    #[arg(long = "grpc-keepalive-timeout", env = "DR_GATEWAY_GRPC_KEEPALIVE_TIMEOUT", default_value = shown_duration!(defaults::GRPC_KEEPALIVE_TIMEOUT), value_parser = humantime::parse_duration)]
    pub keepalive_timeout: Duration,

    /// Close each client connection gracefully after this long (±10 % jitter), so
    /// clients reconnect and spread over new replicas: `off`, or e.g. 5m.
    #[arg(
        long = "grpc-max-connection-age",
        env = "DR_GATEWAY_GRPC_MAX_CONNECTION_AGE",
        default_value = "off"
    )]
    pub max_connection_age: OptionalDuration,

    /// After the connection age: time in-flight calls get to finish before the
    /// connection is closed.
    #[arg(long = "grpc-max-connection-age-grace", env = "DR_GATEWAY_GRPC_MAX_CONNECTION_AGE_GRACE", default_value = shown_duration!(defaults::GRPC_MAX_CONNECTION_AGE_GRACE), value_parser = humantime::parse_duration)]
    pub max_connection_age_grace: Duration,

    /// Compress responses (gzip, deflate or zstd) for clients that say they accept it.
    #[arg(long = "grpc-compress-responses", env = "DR_GATEWAY_GRPC_COMPRESS_RESPONSES", default_value_t = true, action = clap::ArgAction::Set)]
    pub compress_responses: bool,
}

/// A duration that may be switched off: `off` or a duration such as `5m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionalDuration(pub Option<Duration>);

impl FromStr for OptionalDuration {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.trim() {
            "off" => Ok(Self(None)),
            other => humantime::parse_duration(other)
                .map(|d| Self(Some(d)))
                .map_err(|e| format!("expected off or a duration like 5m: {e}")),
        }
    }
}

impl fmt::Display for OptionalDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            None => f.write_str("off"),
            Some(d) => f.write_str(&format_duration(d)),
        }
    }
}

/// The gRPC transport settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcSettings {
    /// Largest request message, bytes.
    pub max_receive_message_size: usize,
    /// Largest response message, bytes.
    pub max_send_message_size: usize,
    /// HTTP/2 PING interval.
    pub keepalive_interval: Duration,
    /// HTTP/2 PING acknowledgement timeout.
    pub keepalive_timeout: Duration,
    /// Graceful close after this connection age; `None`: never.
    pub max_connection_age: Option<Duration>,
    /// Time in-flight calls get after the connection age.
    pub max_connection_age_grace: Duration,
    /// Compress responses for clients that accept it.
    pub compress_responses: bool,
}

impl GrpcArgs {
    fn resolve(&self) -> Result<GrpcSettings, ConfigError> {
        positive_size(
            "--grpc-max-receive-message-size / DR_GATEWAY_GRPC_MAX_RECEIVE_MESSAGE_SIZE",
            self.max_receive_message_size,
        )?;
        positive_size(
            "--grpc-max-send-message-size / DR_GATEWAY_GRPC_MAX_SEND_MESSAGE_SIZE",
            self.max_send_message_size,
        )?;
        positive(
            "--grpc-keepalive-interval / DR_GATEWAY_GRPC_KEEPALIVE_INTERVAL",
            self.keepalive_interval,
        )?;
        positive(
            "--grpc-keepalive-timeout / DR_GATEWAY_GRPC_KEEPALIVE_TIMEOUT",
            self.keepalive_timeout,
        )?;
        if let Some(age) = self.max_connection_age.0 {
            positive(
                "--grpc-max-connection-age / DR_GATEWAY_GRPC_MAX_CONNECTION_AGE",
                age,
            )?;
        }
        positive(
            "--grpc-max-connection-age-grace / DR_GATEWAY_GRPC_MAX_CONNECTION_AGE_GRACE",
            self.max_connection_age_grace,
        )?;
        Ok(GrpcSettings {
            max_receive_message_size: self.max_receive_message_size,
            max_send_message_size: self.max_send_message_size,
            keepalive_interval: self.keepalive_interval,
            keepalive_timeout: self.keepalive_timeout,
            max_connection_age: self.max_connection_age.0,
            max_connection_age_grace: self.max_connection_age_grace,
            compress_responses: self.compress_responses,
        })
    }
}

/// Flags of the shared event bus. Without `--bus-url` the gateway keeps events and
/// idempotency records in memory (one process); with it, every replica shares them
/// through NATS JetStream (`docs/README-jetstream.md`).
#[derive(Debug, Clone, clap::Args)]
pub struct BusArgs {
    /// NATS URL(s), comma-separated (e.g. nats://nats:4222); enables JetStream mode.
    #[arg(long = "bus-url", env = "DR_GATEWAY_BUS_URL", hide_env_values = true)]
    pub url: Option<String>,

    /// NATS credentials (.creds) file.
    #[arg(long = "bus-creds-file", env = "DR_GATEWAY_BUS_CREDS_FILE")]
    pub creds_file: Option<PathBuf>,

    /// PEM CA bundle to verify the NATS server (turns TLS on).
    #[arg(long = "bus-tls-ca-file", env = "DR_GATEWAY_BUS_TLS_CA_FILE")]
    pub tls_ca_file: Option<PathBuf>,

    /// PEM client certificate for mutual TLS with NATS (with --bus-tls-key-file).
    #[arg(long = "bus-tls-cert-file", env = "DR_GATEWAY_BUS_TLS_CERT_FILE")]
    pub tls_cert_file: Option<PathBuf>,

    /// PEM client key for mutual TLS with NATS (with --bus-tls-cert-file).
    #[arg(long = "bus-tls-key-file", env = "DR_GATEWAY_BUS_TLS_KEY_FILE")]
    pub tls_key_file: Option<PathBuf>,

    /// JetStream stream holding the events (created at start if missing).
    #[arg(long = "bus-stream", env = "DR_GATEWAY_BUS_STREAM", default_value = defaults::BUS_STREAM)]
    pub stream: String,

    /// Oldest event the stream keeps (DR keeps events 30 days).
    #[arg(long = "bus-max-age", env = "DR_GATEWAY_BUS_MAX_AGE", default_value = shown_duration!(defaults::BUS_MAX_AGE), value_parser = humantime::parse_duration)]
    pub max_age: Duration,

    /// Most bytes the stream keeps, oldest dropped first (e.g. 10GiB); unset = no bound.
    #[arg(long = "bus-max-bytes", env = "DR_GATEWAY_BUS_MAX_BYTES", value_parser = parse_byte_size)]
    pub max_bytes: Option<usize>,

    /// JetStream duplicate window for the DR event id (Nats-Msg-Id); older
    /// redeliveries are caught by the <stream>_IDS bucket.
    #[arg(long = "bus-dedup-window", env = "DR_GATEWAY_BUS_DEDUP_WINDOW", default_value = shown_duration!(defaults::BUS_DEDUP_WINDOW), value_parser = humantime::parse_duration)]
    pub dedup_window: Duration,

    /// Replicas of the stream and buckets in a NATS cluster.
    #[arg(long = "bus-replicas", env = "DR_GATEWAY_BUS_REPLICAS", default_value_t = defaults::BUS_REPLICAS, value_parser = clap::value_parser!(u8).range(1..=5))]
    pub replicas: u8,

    /// Longest one JetStream request may take (keep it under the webhook's 2 s).
    #[arg(long = "bus-timeout", env = "DR_GATEWAY_BUS_TIMEOUT", default_value = shown_duration!(defaults::BUS_TIMEOUT), value_parser = humantime::parse_duration)]
    pub timeout: Duration,

    /// How long start-up waits for NATS before serving without it: what needs NATS
    /// reports NOT_SERVING until it connects, which goes on in the background.
    #[arg(long = "bus-startup-timeout", env = "DR_GATEWAY_BUS_STARTUP_TIMEOUT", default_value = shown_duration!(defaults::BUS_STARTUP_TIMEOUT), value_parser = humantime::parse_duration)]
    pub startup_timeout: Duration,

    /// KV bucket of CreateFulfillment idempotency records.
    #[arg(long = "bus-idempotency-bucket", env = "DR_GATEWAY_BUS_IDEMPOTENCY_BUCKET", default_value = defaults::BUS_IDEMPOTENCY_BUCKET)]
    pub idempotency_bucket: String,

    /// Decoded events each replica caches for fan-out.
    #[arg(long = "bus-cache-max-events", env = "DR_GATEWAY_BUS_CACHE_MAX_EVENTS", default_value_t = defaults::BUS_CACHE_MAX_EVENTS)]
    pub cache_max_events: usize,

    /// KV bucket of consumer groups (definitions, positions, members); the
    /// per-order records go to <bucket>_KEYS.
    #[arg(long = "bus-groups-bucket", env = "DR_GATEWAY_BUS_GROUPS_BUCKET", default_value = defaults::BUS_GROUPS_BUCKET)]
    pub groups_bucket: String,
}

impl BusArgs {
    /// The bus settings, or `None` for in-memory mode.
    pub fn resolve(&self) -> Result<Option<BusConfig>, ConfigError> {
        let Some(url) = self.url.as_deref().filter(|u| !u.trim().is_empty()) else {
            return Ok(None);
        };
        let servers = url
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        for (flag, file) in [
            (
                "--bus-creds-file / DR_GATEWAY_BUS_CREDS_FILE",
                &self.creds_file,
            ),
            (
                "--bus-tls-ca-file / DR_GATEWAY_BUS_TLS_CA_FILE",
                &self.tls_ca_file,
            ),
            (
                "--bus-tls-cert-file / DR_GATEWAY_BUS_TLS_CERT_FILE",
                &self.tls_cert_file,
            ),
            (
                "--bus-tls-key-file / DR_GATEWAY_BUS_TLS_KEY_FILE",
                &self.tls_key_file,
            ),
        ] {
            if let Some(path) = file {
                readable(flag, path)?;
            }
        }
        positive("--bus-timeout / DR_GATEWAY_BUS_TIMEOUT", self.timeout)?;
        positive_size(
            "--bus-cache-max-events / DR_GATEWAY_BUS_CACHE_MAX_EVENTS",
            self.cache_max_events,
        )?;
        let mut config = BusConfig::new(servers);
        config.creds_file = self.creds_file.clone();
        config.tls_ca_file = self.tls_ca_file.clone();
        config.tls_cert_file = self.tls_cert_file.clone();
        config.tls_key_file = self.tls_key_file.clone();
        config.stream = self.stream.clone();
        config.max_age = self.max_age;
        config.max_bytes = self.max_bytes.map(|b| b as u64);
        config.duplicate_window = self.dedup_window;
        config.replicas = usize::from(self.replicas);
        config.request_timeout = self.timeout;
        config.startup_timeout = self.startup_timeout;
        config.idempotency_bucket = self.idempotency_bucket.clone();
        config.cache_max_events = self.cache_max_events;
        config.groups_bucket = self.groups_bucket.clone();
        config.validate().map_err(ConfigError::Bus)?;
        Ok(Some(config))
    }
}

/// `--upstream-rate-limit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateLimitSetting {
    /// DR's documented per-key limit for the key's mode (docs/digital-river.md §5.2).
    Auto,
    /// No pacing.
    Off,
    /// This many calls per second.
    PerSecond(u32),
}

fn parse_rate_limit(text: &str) -> Result<RateLimitSetting, String> {
    match text.trim() {
        "auto" => Ok(RateLimitSetting::Auto),
        "off" | "0" => Ok(RateLimitSetting::Off),
        n => n
            .parse::<u32>()
            .map(RateLimitSetting::PerSecond)
            .map_err(|_| format!("expected auto, off or calls per second, got {n:?}")),
    }
}

impl RateLimitSetting {
    /// Most calls per second with `api_key`, across all replicas; `None` when off.
    pub fn resolve(self, api_key: &str) -> Option<u32> {
        // why: DR's limits are per secret key: 25/s test, 250/s live (docs/digital-river.md
        // §5.2). `auto` keeps 10 % back for network jitter between the gateway and DR
        // and for anything else calling with the same key.
        match self {
            Self::Off => None,
            Self::PerSecond(n) => Some(n),
            Self::Auto if api_key.starts_with("sk_test_") => Some(25 * 9 / 10),
            Self::Auto => Some(250 * 9 / 10),
        }
    }
}

/// Why the settings cannot be used; printed as one line (naming the flag and its
/// environment variable) before `serve` exits with status 2.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// No key given and not in sandbox mode.
    #[error("no Digital River API key: set --dr-api-key-file / DR_GATEWAY_DR_API_KEY_FILE (or --dr-api-key / DR_GATEWAY_DR_API_KEY), or run with --sandbox")]
    MissingApiKey,
    /// The key file could not be read.
    #[error("--dr-api-key-file / DR_GATEWAY_DR_API_KEY_FILE: cannot read {path}: {source}")]
    KeyFile {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The key file is empty.
    #[error("--dr-api-key-file / DR_GATEWAY_DR_API_KEY_FILE: {0} is empty")]
    EmptyKeyFile(PathBuf),
    /// The webhook secrets file could not be read.
    #[error(
        "--webhook-secrets-file / DR_GATEWAY_WEBHOOK_SECRETS_FILE: cannot read {path}: {source}"
    )]
    WebhookSecretsFile {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// No webhook secret, and webhooks not explicitly disabled: every webhook would
    /// be refused.
    #[error("no webhook signing secret: set --webhook-secret / DR_GATEWAY_WEBHOOK_SECRETS or --webhook-secrets-file / DR_GATEWAY_WEBHOOK_SECRETS_FILE (Dashboard → Webhooks), or pass --webhooks-disabled / DR_GATEWAY_WEBHOOKS_DISABLED=true to run on backfill alone")]
    MissingWebhookSecret,
    /// A setting that cannot work.
    #[error("{flag}: {reason}")]
    Invalid {
        /// The flag and its environment variable.
        flag: &'static str,
        /// What is wrong with the value.
        reason: String,
    },
    /// The backfill look-back exceeds what DR keeps.
    #[error("--backfill-lookback must be at most 30d (DR keeps events 30 days)")]
    LookbackTooLong,
    /// The bus flags cannot work.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// The security flags cannot work together.
    #[error(transparent)]
    Security(#[from] SecurityError),
}

/// Resolved settings of the gateway.
#[derive(Debug, Clone)]
pub struct Settings {
    /// gRPC listen address.
    pub grpc_addr: ListenAddr,
    /// HTTP listen address.
    pub http_addr: ListenAddr,
    /// DR base URL; prints redacted.
    pub dr_base_url: SensitiveUrl,
    /// DR secret key.
    pub dr_api_key: SecretString,
    /// `digitalriver-version`.
    pub dr_api_version: Option<String>,
    /// Cap of one DR call.
    pub upstream_timeout: Duration,
    /// Retries of DR reads.
    pub retry: RetryPolicy,
    /// Most DR calls per second with the key across all replicas; `None`: no pacing.
    pub upstream_rate_limit: Option<u32>,
    /// Replicas assumed to share the key while they cannot count each other.
    pub upstream_rate_limit_replicas: u32,
    /// Idempotency TTL.
    pub idempotency_ttl: Duration,
    /// Idempotency capacity.
    pub idempotency_max_entries: usize,
    /// Reconciliation budget.
    pub reconcile_timeout: Duration,
    /// How long after a POST DR may still commit it.
    pub fulfillment_commit_bound: Duration,
    /// In-memory store only: after start, how long unknown request_ids are not
    /// posted (a previous process may have sent them).
    pub fulfillment_startup_hold: Duration,
    /// Drain time.
    pub shutdown_grace: Duration,
    /// Webhook signing secrets (any may match). Empty: webhooks are disabled
    /// (`--webhooks-disabled`) and the endpoint answers 404.
    pub webhook_secrets: Vec<SecretString>,
    /// Webhook timestamp tolerance.
    pub webhook_tolerance: Duration,
    /// Webhook body limit in bytes.
    pub webhook_max_body: usize,
    /// Webhook listener: request-head timeout.
    pub webhook_header_timeout: Duration,
    /// Webhook listener: body timeout.
    pub webhook_body_timeout: Duration,
    /// Webhook listener: idle timeout.
    pub webhook_idle_timeout: Duration,
    /// Webhook listener: most open connections.
    pub webhook_max_connections: usize,
    /// In-memory event log: most events.
    pub event_log_max_events: usize,
    /// In-memory event log: most bytes.
    pub event_log_max_bytes: usize,
    /// Time between backfills (zero: only at start).
    pub backfill_interval: Duration,
    /// Backfill look-back when the log is empty.
    pub backfill_lookback: Duration,
    /// Whether backfill runs at all (on for `serve`; off in [`Settings::for_upstream`],
    /// so tests that count DR requests see only their own).
    pub backfill_enabled: bool,
    /// Most consumer groups.
    pub consumer_groups_max: usize,
    /// Events a consumer group reads ahead of its position, per replica.
    pub consumer_group_max_pending: usize,
    /// Shared event bus (JetStream); `None` keeps everything in this process.
    pub bus: Option<BusConfig>,
    /// TLS, caller identities and authorization of the gRPC listener.
    pub security: SecuritySettings,
    /// The gRPC transport.
    pub grpc: GrpcSettings,
    /// Prometheus metrics.
    pub metrics: MetricsSettings,
}

/// Whether and where Prometheus metrics are served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsSettings {
    /// Record metrics and serve `/metrics`.
    pub enabled: bool,
    /// Serve `/metrics` on this address; `None`: on the HTTP listener.
    pub addr: Option<ListenAddr>,
}

impl Settings {
    /// Settings for tests and embedding: the flags' defaults (the environment
    /// ignored), DR at `dr_base_url` with `api_key`, listeners on ephemeral loopback
    /// ports, and no backfill (so tests that count DR requests see only their own).
    pub fn for_upstream(dr_base_url: impl Into<String>, api_key: impl Into<String>) -> Self {
        let api_key = api_key.into();
        // why: the defaults are constants; `defaults_resolve` (a unit test) proves
        // they parse and resolve.
        #[allow(clippy::expect_used)]
        let mut settings = ServeArgs {
            webhooks_disabled: true,
            ..ServeArgs::defaults()
        }
        .resolve(Some(&api_key))
        .expect("the default flags resolve");
        settings.dr_base_url = SensitiveUrl::from(dr_base_url.into());
        settings.grpc_addr = ListenAddr::from(std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
        settings.http_addr = ListenAddr::from(std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
        settings.backfill_enabled = false;
        settings
    }
}

impl ServeArgs {
    /// The flags as `serve` with no arguments and no `DR_GATEWAY_*` environment
    /// would have them.
    pub fn defaults() -> Self {
        use clap::{CommandFactory, FromArgMatches};
        #[derive(clap::Parser)]
        struct Serve {
            #[command(flatten)]
            args: ServeArgs,
        }
        // why: tests must not pick up a developer's DR_GATEWAY_* variables.
        let command = Serve::command().mut_args(|arg| arg.env(None));
        let parsed = command
            .try_get_matches_from(["serve"])
            .map_err(|e| e.to_string())
            .and_then(|m| Serve::from_arg_matches(&m).map_err(|e| e.to_string()));
        match parsed {
            Ok(serve) => serve.args,
            // A default that does not parse is a bug the unit tests catch.
            Err(e) => unreachable!("serve's default flags do not parse: {e}"),
        }
    }

    /// Resolves and checks the flags; `sandbox_key` replaces the DR key in sandbox
    /// mode (where a missing webhook secret is made up by the embedded sandbox).
    pub fn resolve(&self, sandbox_key: Option<&str>) -> Result<Settings, ConfigError> {
        let key = match (sandbox_key, &self.dr_api_key_file, &self.dr_api_key) {
            (Some(k), _, _) => k.to_owned(),
            (None, Some(path), _) => {
                let text =
                    std::fs::read_to_string(path).map_err(|source| ConfigError::KeyFile {
                        path: path.clone(),
                        source,
                    })?;
                let key = text.trim().to_owned();
                if key.is_empty() {
                    return Err(ConfigError::EmptyKeyFile(path.clone()));
                }
                key
            }
            (None, None, Some(k)) if !k.trim().is_empty() => k.trim().to_owned(),
            _ => return Err(ConfigError::MissingApiKey),
        };
        let upstream_rate_limit = self.upstream_rate_limit.resolve(&key);
        self.check_values()?;
        let webhook_secrets = self.webhook_secrets()?;
        match (webhook_secrets.is_empty(), self.webhooks_disabled) {
            (true, false) if sandbox_key.is_none() => {
                return Err(ConfigError::MissingWebhookSecret)
            }
            (false, true) => {
                return Err(ConfigError::Invalid {
                    flag: "--webhooks-disabled / DR_GATEWAY_WEBHOOKS_DISABLED",
                    reason:
                        "webhooks are disabled but a webhook secret is set; drop one of the two"
                            .into(),
                })
            }
            _ => {}
        }
        Ok(Settings {
            grpc_addr: self.grpc_addr.clone(),
            http_addr: self.http_addr.clone(),
            dr_base_url: self.dr_base_url.clone(),
            dr_api_key: SecretString::from(key),
            dr_api_version: self.dr_api_version.clone(),
            upstream_timeout: self.upstream_timeout,
            retry: RetryPolicy {
                max_attempts: self.upstream_attempts,
                max_retry_wait: self.upstream_max_retry_wait,
                ..RetryPolicy::default()
            },
            upstream_rate_limit,
            upstream_rate_limit_replicas: self.upstream_rate_limit_replicas,
            idempotency_ttl: self.idempotency_ttl,
            idempotency_max_entries: self.idempotency_max_entries,
            reconcile_timeout: self.reconcile_timeout,
            fulfillment_commit_bound: self.fulfillment_commit_bound,
            fulfillment_startup_hold: self
                .fulfillment_startup_hold
                .unwrap_or(self.fulfillment_commit_bound),
            shutdown_grace: self.shutdown_grace,
            webhook_secrets,
            webhook_tolerance: self.webhook_tolerance,
            webhook_max_body: self.webhook_max_body,
            webhook_header_timeout: self.webhook_header_timeout,
            webhook_body_timeout: self.webhook_body_timeout,
            webhook_idle_timeout: self.webhook_idle_timeout,
            webhook_max_connections: self.webhook_max_connections,
            event_log_max_events: self.event_log_max_events,
            event_log_max_bytes: self.event_log_max_bytes,
            backfill_interval: self.backfill_interval,
            backfill_lookback: if self.backfill_lookback > MAX_LOOKBACK {
                return Err(ConfigError::LookbackTooLong);
            } else {
                self.backfill_lookback
            },
            backfill_enabled: true,
            consumer_groups_max: self.consumer_groups_max,
            consumer_group_max_pending: self.consumer_group_max_pending,
            bus: self.bus.resolve()?,
            security: self.security.resolve()?,
            grpc: self.grpc.resolve()?,
            metrics: MetricsSettings {
                enabled: self.metrics,
                addr: self.metrics_addr.clone(),
            },
        })
    }

    /// Refuses values that parse but cannot work, naming the flag.
    fn check_values(&self) -> Result<(), ConfigError> {
        check_dr_base_url(&self.dr_base_url)?;
        for (flag, value) in [
            (
                "--upstream-timeout / DR_GATEWAY_UPSTREAM_TIMEOUT",
                self.upstream_timeout,
            ),
            (
                "--reconcile-timeout / DR_GATEWAY_RECONCILE_TIMEOUT",
                self.reconcile_timeout,
            ),
            (
                "--fulfillment-commit-bound / DR_GATEWAY_FULFILLMENT_COMMIT_BOUND",
                self.fulfillment_commit_bound,
            ),
            (
                "--idempotency-ttl / DR_GATEWAY_IDEMPOTENCY_TTL",
                self.idempotency_ttl,
            ),
            (
                "--shutdown-grace / DR_GATEWAY_SHUTDOWN_GRACE",
                self.shutdown_grace,
            ),
            (
                "--webhook-tolerance / DR_GATEWAY_WEBHOOK_TOLERANCE",
                self.webhook_tolerance,
            ),
            (
                "--backfill-lookback / DR_GATEWAY_BACKFILL_LOOKBACK",
                self.backfill_lookback,
            ),
            (
                "--webhook-header-timeout / DR_GATEWAY_WEBHOOK_HEADER_TIMEOUT",
                self.webhook_header_timeout,
            ),
            (
                "--webhook-body-timeout / DR_GATEWAY_WEBHOOK_BODY_TIMEOUT",
                self.webhook_body_timeout,
            ),
            (
                "--webhook-idle-timeout / DR_GATEWAY_WEBHOOK_IDLE_TIMEOUT",
                self.webhook_idle_timeout,
            ),
        ] {
            positive(flag, value)?;
        }
        for (flag, value) in [
            (
                "--idempotency-max-entries / DR_GATEWAY_IDEMPOTENCY_MAX_ENTRIES",
                self.idempotency_max_entries,
            ),
            (
                "--webhook-max-body / DR_GATEWAY_WEBHOOK_MAX_BODY",
                self.webhook_max_body,
            ),
            (
                "--event-log-max-events / DR_GATEWAY_EVENT_LOG_MAX_EVENTS",
                self.event_log_max_events,
            ),
            (
                "--event-log-max-bytes / DR_GATEWAY_EVENT_LOG_MAX_BYTES",
                self.event_log_max_bytes,
            ),
            (
                "--consumer-groups-max / DR_GATEWAY_CONSUMER_GROUPS_MAX",
                self.consumer_groups_max,
            ),
            (
                "--consumer-group-max-pending / DR_GATEWAY_CONSUMER_GROUP_MAX_PENDING",
                self.consumer_group_max_pending,
            ),
        ] {
            positive_size(flag, value)?;
        }
        Ok(())
    }

    /// Secrets from --webhook-secret and the secrets file, blanks dropped.
    fn webhook_secrets(&self) -> Result<Vec<SecretString>, ConfigError> {
        let mut secrets: Vec<String> = self
            .webhook_secrets
            .iter()
            .map(|s| s.trim().to_owned())
            .collect();
        if let Some(path) = &self.webhook_secrets_file {
            let text = std::fs::read_to_string(path).map_err(|source| {
                ConfigError::WebhookSecretsFile {
                    path: path.clone(),
                    source,
                }
            })?;
            secrets.extend(text.lines().map(|l| l.trim().to_owned()));
        }
        Ok(secrets
            .into_iter()
            .filter(|s| !s.is_empty())
            .map(SecretString::from)
            .collect())
    }
}

/// DR keeps events 30 days (docs/digital-river.md §3.1).
const MAX_LOOKBACK: Duration = crate::events::backfill::DR_EVENT_RETENTION;

/// Zero durations (a timeout that expires at once, a TTL that keeps nothing) are
/// refused; negative ones never parse.
fn positive(flag: &'static str, value: Duration) -> Result<(), ConfigError> {
    if value.is_zero() {
        return Err(ConfigError::Invalid {
            flag,
            reason: "must be greater than zero (e.g. 10s)".into(),
        });
    }
    Ok(())
}

fn positive_size(flag: &'static str, value: usize) -> Result<(), ConfigError> {
    if value == 0 {
        return Err(ConfigError::Invalid {
            flag,
            reason: "must be greater than zero".into(),
        });
    }
    Ok(())
}

/// The file must exist and be readable by this process now, not at first use.
fn readable(flag: &'static str, path: &Path) -> Result<(), ConfigError> {
    std::fs::read(path)
        .map(drop)
        .map_err(|e| ConfigError::Invalid {
            flag,
            reason: format!("cannot read {}: {e}", path.display()),
        })
}

/// DR is reached over HTTPS (http for a local sandbox), at a URL with a host. The
/// errors show the URL redacted: credentials in it are never printed.
fn check_dr_base_url(url: &SensitiveUrl) -> Result<(), ConfigError> {
    const FLAG: &str = "--dr-base-url / DR_GATEWAY_DR_BASE_URL";
    let uri: http::Uri = url.expose().parse().map_err(|e| ConfigError::Invalid {
        flag: FLAG,
        reason: format!("{url:?} is not a URL: {e}"),
    })?;
    match uri.scheme_str() {
        Some("https" | "http") => {}
        _ => {
            return Err(ConfigError::Invalid {
                flag: FLAG,
                reason: format!(
                    "{url:?} must start with https:// (or http:// for a local sandbox)"
                ),
            })
        }
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(ConfigError::Invalid {
            flag: FLAG,
            reason: format!("{url:?} has no host"),
        });
    }
    if uri.query().is_some() {
        return Err(ConfigError::Invalid {
            flag: FLAG,
            reason: format!("{url:?} must not carry a query"),
        });
    }
    Ok(())
}

/// A whole number of at least 1.
fn parse_positive(text: &str) -> Result<usize, String> {
    match text.trim().parse::<usize>() {
        Ok(0) | Err(_) => Err(format!("{text:?} is not a whole number of at least 1")),
        Ok(n) => Ok(n),
    }
}

/// Renders a duration in the largest whole unit a person would write (`30d`, `24h`,
/// `5m`, `1500ms`), as `humantime::parse_duration` reads it back.
pub fn format_duration(duration: Duration) -> String {
    const UNITS: [(u64, &str); 4] = [(24 * 3600, "d"), (3600, "h"), (60, "m"), (1, "s")];
    if duration.subsec_nanos() == 0 {
        let secs = duration.as_secs();
        for (size, unit) in UNITS {
            // why: "24h" reads better than "1d" for a day; days from two on.
            let days_but_one = unit == "d" && secs / size < 2;
            if secs >= size && secs.is_multiple_of(size) && !days_but_one {
                return format!("{}{unit}", secs / size);
            }
        }
    }
    format!("{}ms", duration.as_millis())
}

/// Renders a byte size in the largest binary unit that divides it (`1MiB`,
/// `512KiB`, `1000`), as [`parse_byte_size`] reads it back.
pub fn format_byte_size(bytes: usize) -> String {
    const UNITS: [(usize, &str); 3] = [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
    for (size, unit) in UNITS {
        if bytes >= size && bytes.is_multiple_of(size) {
            return format!("{}{unit}", bytes / size);
        }
    }
    bytes.to_string()
}

/// Parses a byte size: digits with an optional unit `B`, `KB`, `KiB`, `MB`, `MiB`,
/// `GB`, `GiB` (case-insensitive; K/M/G alone mean KiB/MiB/GiB).
pub fn parse_byte_size(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let value: usize = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a size like 1MiB or 65536"))?;
    let multiplier: usize = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1000,
        "k" | "kib" => 1024,
        "mb" => 1000 * 1000,
        "m" | "mib" => 1024 * 1024,
        "gb" => 1000 * 1000 * 1000,
        "g" | "gib" => 1024 * 1024 * 1024,
        other => {
            return Err(format!(
                "unknown size unit {other:?}; use B, KiB, MiB or GiB"
            ))
        }
    };
    value
        .checked_mul(multiplier)
        .ok_or_else(|| format!("{text:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use secrecy::ExposeSecret;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }

    #[test]
    fn the_rate_limit_follows_the_key_mode_unless_set() {
        let auto = parse_rate_limit("auto").unwrap();
        assert_eq!(auto.resolve("sk_test_abc"), Some(22));
        assert_eq!(auto.resolve("sk_live_abc"), Some(225));
        assert_eq!(
            parse_rate_limit("40").unwrap().resolve("sk_test_abc"),
            Some(40)
        );
        assert_eq!(parse_rate_limit("5").unwrap().resolve("k"), Some(5));
        assert_eq!(
            parse_rate_limit("off").unwrap().resolve("sk_live_abc"),
            None
        );
        assert!(parse_rate_limit("fast").is_err());
    }

    #[test]
    fn byte_sizes_parse_with_units() {
        assert_eq!(parse_byte_size("1MiB"), Ok(1024 * 1024));
        assert_eq!(parse_byte_size("512KiB"), Ok(512 * 1024));
        assert_eq!(parse_byte_size("65536"), Ok(65536));
        assert_eq!(parse_byte_size("2 MB"), Ok(2_000_000));
        assert!(parse_byte_size("lots").is_err());
        assert!(parse_byte_size("1TiB").is_err());
    }

    #[test]
    fn webhook_secrets_come_from_flags_and_file_and_defaults_apply() {
        let dir = std::env::temp_dir().join(format!("drgw-secrets-{}", std::process::id()));
        std::fs::write(&dir, "from-file-1\n\n  from-file-2  \n").unwrap();
        let cli = Cli::try_parse_from([
            "x",
            "--dr-api-key",
            "sk",
            "--webhook-secret",
            "a",
            "--webhook-secret",
            "b",
            "--webhook-secrets-file",
            dir.to_str().unwrap(),
        ])
        .unwrap();
        let settings = cli.serve.resolve(None).unwrap();
        let secrets: Vec<_> = settings
            .webhook_secrets
            .iter()
            .map(|s| s.expose_secret().to_owned())
            .collect();
        assert_eq!(secrets, ["a", "b", "from-file-1", "from-file-2"]);
        assert_eq!(settings.webhook_tolerance, Duration::from_secs(300));
        assert_eq!(settings.webhook_max_body, 1024 * 1024);
        assert!(!format!("{settings:?}").contains("from-file-1"));
        let _ = std::fs::remove_file(dir);
    }

    #[test]
    fn defaults_resolve() {
        let settings = ServeArgs::defaults().resolve(Some("sk_test_x")).unwrap();
        assert_eq!(settings.grpc_addr, ListenAddr::from(defaults::GRPC_ADDR));
        assert_eq!(settings.grpc.max_connection_age, None);
        assert_eq!(
            settings.grpc.max_receive_message_size,
            defaults::GRPC_MAX_RECEIVE_MESSAGE_SIZE
        );
        assert_eq!(settings.upstream_rate_limit_replicas, 1);
        assert_eq!(settings.upstream_timeout, defaults::UPSTREAM_TIMEOUT);
        assert_eq!(settings.event_log_max_bytes, defaults::EVENT_LOG_MAX_BYTES);
        assert_eq!(settings.webhook_max_body, defaults::WEBHOOK_MAX_BODY);
        assert_eq!(settings.retry, RetryPolicy::default());
        assert_eq!(
            settings.fulfillment_commit_bound,
            defaults::FULFILLMENT_COMMIT_BOUND
        );
        assert_eq!(
            settings.fulfillment_startup_hold, settings.fulfillment_commit_bound,
            "the start-up hold defaults to the commit bound"
        );
        assert_eq!(settings.consumer_groups_max, defaults::CONSUMER_GROUPS_MAX);
        assert_eq!(
            settings.consumer_group_max_pending,
            defaults::CONSUMER_GROUP_MAX_PENDING
        );
        assert!(settings.bus.is_none());
        assert_eq!(
            settings.metrics,
            MetricsSettings {
                enabled: true,
                addr: None
            },
            "metrics on, on the HTTP listener"
        );
        let test = Settings::for_upstream("http://dr", "sk_test_x");
        assert_eq!(test.idempotency_ttl, settings.idempotency_ttl);
        assert_eq!(test.grpc_addr.port(), 0);
    }

    #[test]
    fn the_flags_show_the_defaults_in_the_syntax_they_parse() {
        let args = Cli::try_parse_from(["x"]).unwrap().serve;
        assert_eq!(args.bus.max_age, defaults::BUS_MAX_AGE);
        assert_eq!(args.bus.timeout, defaults::BUS_TIMEOUT);
        assert_eq!(args.backfill_lookback, defaults::BACKFILL_LOOKBACK);
        for bytes in [1, 1000, 1024, 1536, 1 << 20, 256 << 20, 3 << 30] {
            assert_eq!(parse_byte_size(&format_byte_size(bytes)), Ok(bytes));
        }
        assert_eq!(format_byte_size(1 << 20), "1MiB");
        for (duration, text) in [
            (Duration::from_secs(30 * 24 * 3600), "30d"),
            (Duration::from_secs(24 * 3600), "24h"),
            (Duration::from_secs(300), "5m"),
            (Duration::from_secs(90), "90s"),
            (Duration::from_millis(1500), "1500ms"),
        ] {
            assert_eq!(format_duration(duration), text);
            assert_eq!(humantime::parse_duration(text), Ok(duration));
        }
    }

    #[test]
    fn the_startup_hold_follows_the_commit_bound_unless_set() {
        let resolve = |args: &[&str]| {
            let argv = [&["x", "--dr-api-key", "sk", "--webhooks-disabled"], args].concat();
            Cli::try_parse_from(argv)
                .unwrap()
                .serve
                .resolve(None)
                .unwrap()
        };
        let longer = resolve(&["--fulfillment-commit-bound", "90s"]);
        assert_eq!(longer.fulfillment_commit_bound, Duration::from_secs(90));
        assert_eq!(longer.fulfillment_startup_hold, Duration::from_secs(90));
        let none = resolve(&["--fulfillment-startup-hold", "0s"]);
        assert_eq!(none.fulfillment_startup_hold, Duration::ZERO);
        assert_eq!(
            none.fulfillment_commit_bound,
            defaults::FULFILLMENT_COMMIT_BOUND
        );
    }

    #[test]
    fn metrics_can_move_to_an_admin_port_or_be_turned_off() {
        let resolve = |args: &[&str]| {
            let argv = [&["x", "--dr-api-key", "sk", "--webhooks-disabled"], args].concat();
            Cli::try_parse_from(argv)
                .unwrap()
                .serve
                .resolve(None)
                .unwrap()
                .metrics
        };
        assert_eq!(
            resolve(&["--metrics-addr", "127.0.0.1:9464"]),
            MetricsSettings {
                enabled: true,
                addr: Some(ListenAddr::from(std::net::SocketAddr::from((
                    [127, 0, 0, 1],
                    9464
                ))))
            }
        );
        assert!(!resolve(&["--metrics", "false"]).enabled);
        assert!(Cli::try_parse_from(["x", "--metrics", "maybe"]).is_err());
    }

    #[test]
    fn a_lookback_beyond_30_days_is_rejected() {
        let cli = Cli::try_parse_from([
            "x",
            "--dr-api-key",
            "sk",
            "--webhooks-disabled",
            "--backfill-lookback",
            "31d",
        ])
        .unwrap();
        assert!(matches!(
            cli.serve.resolve(None),
            Err(ConfigError::LookbackTooLong)
        ));
    }

    /// Resolves `flags` after a valid key and webhook secret.
    fn resolve_with(flags: &[&str]) -> Result<Settings, ConfigError> {
        let mut argv = vec![
            "x",
            "--dr-api-key",
            "sk_test_x",
            "--webhook-secret",
            "whsec",
        ];
        argv.extend_from_slice(flags);
        Cli::try_parse_from(argv).unwrap().serve.resolve(None)
    }

    fn refused_naming(flags: &[&str], flag: &str) {
        let error = resolve_with(flags).expect_err("refused").to_string();
        assert!(error.contains(flag), "{flags:?}: {error}");
    }

    #[test]
    fn settings_that_cannot_work_are_refused_naming_the_flag() {
        refused_naming(&["--upstream-timeout", "0s"], "--upstream-timeout");
        refused_naming(&["--reconcile-timeout", "0s"], "--reconcile-timeout");
        refused_naming(&["--idempotency-ttl", "0s"], "--idempotency-ttl");
        refused_naming(&["--shutdown-grace", "0s"], "--shutdown-grace");
        refused_naming(&["--webhook-max-body", "0"], "--webhook-max-body");
        refused_naming(
            &["--grpc-keepalive-interval", "0s"],
            "--grpc-keepalive-interval",
        );
        refused_naming(
            &["--grpc-max-connection-age", "0s"],
            "--grpc-max-connection-age",
        );
        refused_naming(
            &["--grpc-max-receive-message-size", "0"],
            "--grpc-max-receive-message-size",
        );
        for url in [
            "ftp://api.digitalriver.com",
            "api.digitalriver.com",
            "https://",
            "https://h/?a=b",
        ] {
            refused_naming(&["--dr-base-url", url], "--dr-base-url");
        }
        refused_naming(
            &[
                "--bus-url",
                "nats://127.0.0.1:4222",
                "--bus-creds-file",
                "/nonexistent/x.creds",
            ],
            "--bus-creds-file",
        );
        refused_naming(
            &["--bus-url", "nats://127.0.0.1:4222", "--bus-timeout", "0s"],
            "--bus-timeout",
        );
        refused_naming(&["--webhooks-disabled"], "--webhooks-disabled");
        refused_naming(
            &["--fulfillment-commit-bound", "0s"],
            "--fulfillment-commit-bound",
        );
        for flag in [
            "--tls-client-ca-file",
            "--auth-tokens-file",
            "--auth-policy-file",
        ] {
            refused_naming(&[flag, "/nonexistent/file.pem"], flag);
        }
        refused_naming(
            &[
                "--tls-cert-file",
                "/nonexistent/tls.crt",
                "--tls-key-file",
                "/nonexistent/tls.key",
            ],
            "--tls-cert-file",
        );
    }

    #[test]
    fn working_settings_resolve() {
        let settings = resolve_with(&[
            "--dr-base-url",
            "http://127.0.0.1:8090",
            "--grpc-addr",
            "localhost:50051",
            "--grpc-max-connection-age",
            "5m",
            "--bus-startup-timeout",
            "0s",
            "--grpc-health-addr",
            "localhost:50052",
        ])
        .unwrap();
        assert_eq!(settings.grpc_addr.host(), "localhost");
        let health = settings.security.grpc_health_addr.as_ref().unwrap();
        assert_eq!((health.host(), health.port()), ("localhost", 50052));
        assert_eq!(
            settings.grpc.max_connection_age,
            Some(Duration::from_secs(300))
        );
    }

    #[test]
    fn no_webhook_secret_is_refused_unless_webhooks_are_disabled() {
        let cli = Cli::try_parse_from(["x", "--dr-api-key", "sk"]).unwrap();
        let error = cli.serve.resolve(None).unwrap_err().to_string();
        assert!(
            error.contains("--webhook-secret") && error.contains("--webhooks-disabled"),
            "{error}"
        );
        let cli = Cli::try_parse_from(["x", "--dr-api-key", "sk", "--webhooks-disabled"]).unwrap();
        assert!(cli.serve.resolve(None).unwrap().webhook_secrets.is_empty());
        // The embedded sandbox makes a secret up.
        let cli = Cli::try_parse_from(["x"]).unwrap();
        assert!(cli.serve.resolve(Some("sk_test_sandbox")).is_ok());
    }

    #[test]
    fn unreadable_secret_files_name_their_flag() {
        let cli = Cli::try_parse_from(["x", "--dr-api-key-file", "/nonexistent/key"]).unwrap();
        let error = cli.serve.resolve(None).unwrap_err().to_string();
        assert!(error.contains("--dr-api-key-file"), "{error}");
        refused_naming(
            &["--webhook-secrets-file", "/nonexistent/secrets"],
            "--webhook-secrets-file",
        );
    }

    #[test]
    fn connection_age_is_off_or_a_duration() {
        assert_eq!(
            "off".parse::<OptionalDuration>(),
            Ok(OptionalDuration(None))
        );
        assert_eq!(
            "90s".parse::<OptionalDuration>(),
            Ok(OptionalDuration(Some(Duration::from_secs(90))))
        );
        assert!("soon".parse::<OptionalDuration>().is_err());
        assert_eq!(
            OptionalDuration(Some(Duration::from_secs(300))).to_string(),
            "5m"
        );
    }
}
