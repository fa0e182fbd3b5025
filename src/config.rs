//! Settings of `dr-gateway serve`: flags with env fallbacks (`--help` documents each),
//! resolved into [`Settings`] with secrets read from files where asked.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use secrecy::SecretString;

use crate::digital_river::RetryPolicy;

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
    /// gRPC listen address.
    #[arg(long, env = "DR_GATEWAY_GRPC_ADDR", default_value = "0.0.0.0:50051")]
    pub grpc_addr: SocketAddr,

    /// Webhook and /healthz, /readyz listen address.
    #[arg(long, env = "DR_GATEWAY_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    pub http_addr: SocketAddr,

    /// Digital River API base URL.
    #[arg(
        long,
        env = "DR_GATEWAY_DR_BASE_URL",
        default_value = "https://api.digitalriver.com"
    )]
    pub dr_base_url: String,

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
    #[arg(long, env = "DR_GATEWAY_UPSTREAM_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub upstream_timeout: Duration,

    /// Attempts per idempotent DR read (1 = no retry); POSTs are never retried blindly.
    #[arg(long, env = "DR_GATEWAY_UPSTREAM_ATTEMPTS", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=10))]
    pub upstream_attempts: u32,

    /// How long CreateFulfillment results are kept per request_id.
    #[arg(long, env = "DR_GATEWAY_IDEMPOTENCY_TTL", default_value = "24h", value_parser = humantime::parse_duration)]
    pub idempotency_ttl: Duration,

    /// Most request_ids remembered at once (oldest settled ones are dropped first).
    #[arg(
        long,
        env = "DR_GATEWAY_IDEMPOTENCY_MAX_ENTRIES",
        default_value_t = 100_000
    )]
    pub idempotency_max_entries: usize,

    /// Time allowed to find out whether a POST with an unknown outcome took effect.
    #[arg(long, env = "DR_GATEWAY_RECONCILE_TIMEOUT", default_value = "15s", value_parser = humantime::parse_duration)]
    pub reconcile_timeout: Duration,

    /// After SIGTERM/SIGINT: time for in-flight RPCs and streams to finish.
    #[arg(long, env = "DR_GATEWAY_SHUTDOWN_GRACE", default_value = "20s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,

    /// Log format.
    #[arg(
        long,
        env = "DR_GATEWAY_LOG_FORMAT",
        value_enum,
        default_value = "pretty"
    )]
    pub log_format: LogFormat,

    /// Run a built-in Digital River sandbox and point the gateway at it (no DR key needed).
    #[arg(long, env = "DR_GATEWAY_SANDBOX")]
    pub sandbox: bool,

    /// Where the built-in sandbox listens (with --sandbox), for its control surface.
    #[arg(
        long,
        env = "DR_GATEWAY_SANDBOX_ADDR",
        default_value = "127.0.0.1:8090"
    )]
    pub sandbox_addr: SocketAddr,
}

/// Why the settings cannot be used; printed as one line before exiting.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// No key given and not in sandbox mode.
    #[error("no Digital River API key: set DR_GATEWAY_DR_API_KEY_FILE (or DR_GATEWAY_DR_API_KEY), or run with --sandbox")]
    MissingApiKey,
    /// The key file could not be read.
    #[error("cannot read the DR API key file {path}: {source}")]
    KeyFile {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The key file is empty.
    #[error("the DR API key file {0} is empty")]
    EmptyKeyFile(PathBuf),
}

/// Resolved settings of the gateway.
#[derive(Debug, Clone)]
pub struct Settings {
    /// gRPC listen address.
    pub grpc_addr: SocketAddr,
    /// HTTP listen address.
    pub http_addr: SocketAddr,
    /// DR base URL.
    pub dr_base_url: String,
    /// DR secret key.
    pub dr_api_key: SecretString,
    /// `digitalriver-version`.
    pub dr_api_version: Option<String>,
    /// Cap of one DR call.
    pub upstream_timeout: Duration,
    /// Retries of DR reads.
    pub retry: RetryPolicy,
    /// Idempotency TTL.
    pub idempotency_ttl: Duration,
    /// Idempotency capacity.
    pub idempotency_max_entries: usize,
    /// Reconciliation budget.
    pub reconcile_timeout: Duration,
    /// Drain time.
    pub shutdown_grace: Duration,
}

impl Settings {
    /// Settings for tests and embedding: DR at `dr_base_url` with `api_key`, listeners on
    /// ephemeral loopback ports, defaults elsewhere.
    pub fn for_upstream(dr_base_url: impl Into<String>, api_key: impl Into<String>) -> Self {
        Self {
            grpc_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            http_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            dr_base_url: dr_base_url.into(),
            dr_api_key: SecretString::from(api_key.into()),
            dr_api_version: None,
            upstream_timeout: Duration::from_secs(10),
            retry: RetryPolicy::default(),
            idempotency_ttl: Duration::from_secs(24 * 3600),
            idempotency_max_entries: 100_000,
            reconcile_timeout: Duration::from_secs(15),
            shutdown_grace: Duration::from_secs(20),
        }
    }
}

impl ServeArgs {
    /// Resolves flags into settings; `sandbox_key` replaces the DR key in sandbox mode.
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
        Ok(Settings {
            grpc_addr: self.grpc_addr,
            http_addr: self.http_addr,
            dr_base_url: self.dr_base_url.clone(),
            dr_api_key: SecretString::from(key),
            dr_api_version: self.dr_api_version.clone(),
            upstream_timeout: self.upstream_timeout,
            retry: RetryPolicy {
                max_attempts: self.upstream_attempts,
                ..RetryPolicy::default()
            },
            idempotency_ttl: self.idempotency_ttl,
            idempotency_max_entries: self.idempotency_max_entries,
            reconcile_timeout: self.reconcile_timeout,
            shutdown_grace: self.shutdown_grace,
        })
    }
}
