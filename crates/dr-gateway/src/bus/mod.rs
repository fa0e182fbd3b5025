//! Scale-out on NATS JetStream: the event log every replica shares
//! ([`JetStreamLog`]), the shared CreateFulfillment idempotency store
//! ([`KvIdempotencyStore`]), and the one NATS connection both use ([`Bus`]).
//!
//! # What lives on the bus
//! - **Stream** `DR_GATEWAY_EVENTS` (`--bus-stream`), subjects `<stream>.<event type>`:
//!   one message per DR event, payload = the raw JSON DR sent, header `Nats-Msg-Id` =
//!   the DR event id. The stream sequence *is* the log sequence, so a cursor issued by
//!   one replica means the same position on every other.
//! - **KV bucket** `<stream>_IDS`: DR event id → stream sequence. JetStream's own dedup
//!   only covers its duplicate window (`--bus-dedup-window`, default 2 min); DR
//!   re-sends for up to 72 h (docs/digital-river.md §4.2), so redeliveries older than
//!   the window are caught here (the bucket keeps ids as long as the stream keeps
//!   events). It also answers [`EventLog::get_by_id`](crate::events::EventLog::get_by_id).
//! - **KV bucket** `DR_GATEWAY_IDEMPOTENCY` (`--bus-idempotency-bucket`):
//!   CreateFulfillment `request_id` → in-flight / done / unknown record.
//! - **KV bucket** `<stream>_REPLICAS`: one key per running replica, refreshed by
//!   heartbeats, so the replicas split DR's per-key rate limit ([`pacing`]).
//! - **KV buckets** `DR_GATEWAY_GROUPS` (`--bus-groups-bucket`) and
//!   `DR_GATEWAY_GROUPS_KEYS`: consumer groups (definitions, positions, members;
//!   one compare-and-set record per ordering key), see [`groups`].
//!
//! # NATS 2.9
//! Debian ships nats-server 2.9.10. async-nats ≥ 0.4x's `create_key_value` asks for
//! account info fields 2.9 does not send, so [`provision`] creates the `KV_<bucket>`
//! streams itself with the settings a KV bucket has, after which `get_key_value` works
//! on 2.9 and 2.10+ alike. Nothing here needs a 2.10+ feature (no per-message TTL,
//! no batch direct get).
//!
//! # Layout
//! - [`deferred`]: connecting in the background, so the gateway starts without NATS.
//! - [`pacing`]: sharing DR's rate limit between replicas.
//! - [`provision`]: create-or-check the stream and the KV buckets at start-up.
//! - [`event_log`]: the [`EventLog`](crate::events::EventLog) backend, [`JetStreamLog`].
//! - [`cache`]: the bounded per-replica cache of decoded events.
//! - [`idempotency`]: the shared [`KvIdempotencyStore`].
//! - [`groups`]: the shared consumer group state, [`KvGroupStore`].

pub mod cache;
pub mod deferred;
pub mod event_log;
pub mod groups;
pub mod idempotency;
pub mod pacing;
pub mod provision;

use std::{path::PathBuf, sync::Arc, time::Duration};

use crate::defaults;
use async_nats::{jetstream, ConnectOptions, Event, ServerAddr};
use tokio::sync::watch;

pub use deferred::{DeferredBus, DeferredSettings};
pub use event_log::JetStreamLog;
pub use groups::KvGroupStore;
pub use idempotency::KvIdempotencyStore;

/// How to reach JetStream and what to keep there.
#[derive(Debug, Clone)]
pub struct BusConfig {
    /// NATS server URLs (`nats://host:4222`, `tls://…`). May carry user:password,
    /// so they are only ever logged redacted.
    pub servers: Vec<String>,
    /// NATS `.creds` file (JWT + nkey seed).
    pub creds_file: Option<PathBuf>,
    /// PEM CA bundle to verify the server with (implies TLS).
    pub tls_ca_file: Option<PathBuf>,
    /// PEM client certificate for mutual TLS (with `tls_key_file`).
    pub tls_cert_file: Option<PathBuf>,
    /// PEM client key for mutual TLS (with `tls_cert_file`).
    pub tls_key_file: Option<PathBuf>,
    /// Event stream name.
    pub stream: String,
    /// Oldest event the stream keeps.
    pub max_age: Duration,
    /// Most bytes the stream keeps (oldest dropped first); `None` = no byte bound.
    pub max_bytes: Option<u64>,
    /// JetStream's `Nats-Msg-Id` duplicate window (≤ `max_age`).
    pub duplicate_window: Duration,
    /// Stream and bucket replicas in a NATS cluster (1 on a single server).
    pub replicas: usize,
    /// Longest one JetStream request (publish ack, get, KV op) may take.
    pub request_timeout: Duration,
    /// How long start-up keeps trying to reach NATS before giving up.
    pub startup_timeout: Duration,
    /// KV bucket of CreateFulfillment idempotency records.
    pub idempotency_bucket: String,
    /// Most decoded events each replica keeps in memory for fan-out.
    pub cache_max_events: usize,
    /// Most bytes (approximate) of decoded events each replica keeps.
    pub cache_max_bytes: usize,
    /// KV bucket of consumer group definitions, positions and members (the
    /// per-key records live in `<this>_KEYS`).
    pub groups_bucket: String,
}

impl BusConfig {
    /// Defaults for everything but the servers.
    pub fn new(servers: Vec<String>) -> Self {
        Self {
            servers,
            creds_file: None,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            stream: defaults::BUS_STREAM.to_owned(),
            max_age: defaults::BUS_MAX_AGE,
            max_bytes: None,
            duplicate_window: defaults::BUS_DEDUP_WINDOW,
            replicas: usize::from(defaults::BUS_REPLICAS),
            request_timeout: defaults::BUS_TIMEOUT,
            startup_timeout: defaults::BUS_STARTUP_TIMEOUT,
            idempotency_bucket: defaults::BUS_IDEMPOTENCY_BUCKET.to_owned(),
            cache_max_events: defaults::BUS_CACHE_MAX_EVENTS,
            cache_max_bytes: defaults::BUS_CACHE_MAX_BYTES,
            groups_bucket: defaults::BUS_GROUPS_BUCKET.to_owned(),
        }
    }

    /// The KV bucket of consumer groups' per-ordering-key records.
    pub fn groups_keys_bucket(&self) -> String {
        format!("{}_KEYS", self.groups_bucket)
    }

    /// The KV bucket of seen DR event ids.
    pub fn ids_bucket(&self) -> String {
        format!("{}_IDS", self.stream)
    }

    /// Checks what the server would refuse anyway, with a clearer message.
    pub fn validate(&self) -> Result<(), BusError> {
        if self.servers.is_empty() {
            return Err(BusError::Config("no NATS server URL".into()));
        }
        for server in &self.servers {
            server.parse::<ServerAddr>().map_err(|e| {
                BusError::Config(format!("bad NATS URL {}: {e}", redact_url(server)))
            })?;
        }
        for (what, name) in [
            ("--bus-stream: stream", &self.stream),
            (
                "--bus-idempotency-bucket: idempotency bucket",
                &self.idempotency_bucket,
            ),
            (
                "--bus-groups-bucket: consumer groups bucket",
                &self.groups_bucket,
            ),
        ] {
            if !is_valid_name(name) {
                return Err(BusError::Config(format!(
                    "{what} name {name:?} must be letters, digits, '_' or '-'"
                )));
            }
        }
        if self.max_age.is_zero() {
            return Err(BusError::Config("--bus-max-age must be positive".into()));
        }
        if self.duplicate_window.is_zero() || self.duplicate_window > self.max_age {
            return Err(BusError::Config(
                "--bus-dedup-window must be positive and at most --bus-max-age".into(),
            ));
        }
        if self.tls_cert_file.is_some() != self.tls_key_file.is_some() {
            return Err(BusError::Config(
                "--bus-tls-cert-file and --bus-tls-key-file go together".into(),
            ));
        }
        Ok(())
    }

    fn wants_tls(&self) -> bool {
        self.tls_ca_file.is_some()
            || self.tls_cert_file.is_some()
            || self.servers.iter().any(|s| s.starts_with("tls://"))
    }
}

/// Stream and bucket names: what NATS accepts in both (no dots, wildcards, spaces).
fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 200
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

// why: one redaction for every URL the gateway prints (NATS servers, DR's base URL).
pub use crate::redact::redact_url;

/// What the JetStream backend can fail with at start-up or at runtime.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// Settings that cannot work.
    #[error("invalid bus settings: {0}")]
    Config(String),
    /// The credentials file could not be read (its content is never printed).
    #[error("cannot read the NATS credentials file {path}")]
    Credentials {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// NATS could not be reached before the start-up deadline.
    #[error("cannot connect to NATS at {servers}")]
    Connect {
        /// The servers, redacted.
        servers: String,
        /// The last failure.
        #[source]
        source: async_nats::ConnectError,
    },
    /// A JetStream API call failed.
    #[error("JetStream: {what} failed")]
    JetStream {
        /// What was being done.
        what: String,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A stream exists with a setting that cannot be changed in place; the gateway
    /// refuses to touch its data.
    #[error(
        "stream {stream} has {detail}; change it by hand (the gateway never recreates a stream)"
    )]
    Incompatible {
        /// The stream.
        stream: String,
        /// Which setting.
        detail: String,
    },
    /// A JetStream call took longer than the request timeout.
    #[error("JetStream: {0} timed out")]
    Timeout(String),
}

impl BusError {
    pub(crate) fn js(
        what: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self::JetStream {
            what: what.into(),
            source: Box::new(source),
        }
    }
}

/// Runs `fut` with the bus request timeout, mapping both failure kinds to [`BusError`].
pub(crate) async fn timed<T, E>(
    timeout: Duration,
    what: &str,
    fut: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, BusError>
where
    E: std::error::Error + Send + Sync + 'static,
{
    match tokio::time::timeout(timeout, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(BusError::js(what, e)),
        Err(_) => Err(BusError::Timeout(what.to_owned())),
    }
}

/// The NATS connection and JetStream context the backends share. Cheap to clone.
#[derive(Clone)]
pub struct Bus {
    client: async_nats::Client,
    js: jetstream::Context,
    config: Arc<BusConfig>,
    /// Counts (re)connections, so consumers can restart at once after NATS returns
    /// instead of waiting to notice missed heartbeats.
    connects: watch::Receiver<u64>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bus")
            .field("stream", &self.config.stream)
            .field("state", &self.client.connection_state())
            .finish_non_exhaustive()
    }
}

impl Bus {
    /// Connects, retrying until `config.startup_timeout`; afterwards the client
    /// reconnects by itself forever (backoff capped at 2 s), so a NATS restart needs
    /// no gateway restart.
    pub async fn connect(config: BusConfig) -> Result<Self, BusError> {
        config.validate()?;
        let (servers, userinfo) = strip_userinfo(&config.servers);
        let redacted = config
            .servers
            .iter()
            .map(|s| redact_url(s))
            .collect::<Vec<_>>()
            .join(",");
        let deadline = tokio::time::Instant::now() + config.startup_timeout;
        let (connected_tx, connects) = watch::channel(0u64);
        let connected_tx = Arc::new(connected_tx);
        let mut attempt: u32 = 0;
        let client = loop {
            attempt += 1;
            let mut options = connect_options(&config, connected_tx.clone()).await?;
            options = match &userinfo {
                Some((user, Some(password))) => {
                    options.user_and_password(user.clone(), password.clone())
                }
                Some((token, None)) => options.token(token.clone()),
                None => options,
            };
            match options.connect(servers.clone()).await {
                Ok(client) => break client,
                Err(source) => {
                    let pause = Duration::from_millis(200 * u64::from(attempt.min(10)));
                    if tokio::time::Instant::now() + pause >= deadline {
                        return Err(BusError::Connect {
                            servers: redacted,
                            source,
                        });
                    }
                    tracing::warn!(servers = %redacted, attempt, error = %source, "NATS not reachable yet; retrying");
                    // why: retry pacing during start-up, not synchronisation.
                    tokio::time::sleep(pause).await;
                }
            }
        };
        tracing::info!(servers = %redacted, "connected to NATS");
        metrics::gauge!(crate::telemetry::metrics::names::NATS_CONNECTED).set(1.0);
        let js = jetstream::ContextBuilder::new()
            .timeout(config.request_timeout)
            .build(client.clone());
        Ok(Self {
            client,
            js,
            config: Arc::new(config),
            connects,
        })
    }

    /// Changes each time the client (re)connects to a server.
    pub fn connects(&self) -> watch::Receiver<u64> {
        self.connects.clone()
    }

    /// True while the client holds a connection to a server.
    pub fn is_connected(&self) -> bool {
        matches!(
            self.client.connection_state(),
            async_nats::connection::State::Connected
        )
    }

    /// Largest event body the server accepts in one message, leaving room for the
    /// headers the log adds; bigger webhooks could never be stored.
    pub fn max_event_bytes(&self) -> usize {
        self.client.server_info().max_payload.saturating_sub(4096)
    }

    /// The JetStream context.
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }

    /// The settings.
    pub fn config(&self) -> &BusConfig {
        &self.config
    }
}

async fn connect_options(
    config: &BusConfig,
    connected: Arc<watch::Sender<u64>>,
) -> Result<ConnectOptions, BusError> {
    let mut options = ConnectOptions::new()
        .name("dr-gateway")
        .connection_timeout(config.request_timeout.max(Duration::from_secs(2)))
        .request_timeout(Some(config.request_timeout))
        .ping_interval(Duration::from_secs(10))
        .max_reconnects(None)
        .reconnect_delay_callback(|attempts| {
            // why: recover within ~2 s of NATS coming back; DR keeps retrying meanwhile.
            let exp = u32::try_from(attempts.min(11)).unwrap_or(11);
            Duration::from_millis(2u64.pow(exp)).min(Duration::from_secs(2))
        })
        .event_callback(move |event| {
            let connected = connected.clone();
            async move { log_event(event, &connected) }
        });
    if let Some(path) = &config.creds_file {
        options = options
            .credentials_file(path)
            .await
            .map_err(|source| BusError::Credentials {
                path: path.clone(),
                source,
            })?;
    }
    if config.wants_tls() {
        options = options.require_tls(true);
    }
    if let Some(ca) = &config.tls_ca_file {
        options = options.add_root_certificates(ca.clone());
    }
    if let (Some(cert), Some(key)) = (&config.tls_cert_file, &config.tls_key_file) {
        options = options.add_client_certificate(cert.clone(), key.clone());
    }
    Ok(options)
}

/// Parses the server URLs and takes any `user:password@` / `token@` out of them,
/// to be given to the client as options instead: async-nats logs server addresses
/// (with `Debug`, which shows the password) while reconnecting. The first URL with
/// userinfo wins, as NATS clients do.
fn strip_userinfo(servers: &[String]) -> (Vec<ServerAddr>, Option<(String, Option<String>)>) {
    let mut userinfo = None;
    let mut out = Vec::with_capacity(servers.len());
    for server in servers {
        let Ok(addr) = server.parse::<ServerAddr>() else {
            continue;
        };
        if userinfo.is_none() {
            if let Some(user) = addr.username() {
                userinfo = Some((percent_decode(user), addr.password().map(percent_decode)));
            }
        }
        let mut url = addr.clone().into_inner();
        let stripped = url.set_password(None).is_ok() && url.set_username("").is_ok();
        match (stripped, ServerAddr::from_url(url)) {
            (true, Ok(plain)) => out.push(plain),
            _ => out.push(addr),
        }
    }
    (out, userinfo)
}

/// URL userinfo arrives percent-encoded (`p%40ss` for `p@ss`).
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).copied(),
            bytes.get(i + 2).copied(),
        ) {
            (b'%', Some(h), Some(l)) if hex(h).is_some() && hex(l).is_some() => {
                let value = hex(h).unwrap_or(0) * 16 + hex(l).unwrap_or(0);
                out.push(u8::try_from(value).unwrap_or(b'?'));
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Logs a connection event and keeps `dr_gateway_nats_connected` current.
fn log_event(event: Event, connected: &watch::Sender<u64>) {
    use crate::telemetry::metrics::names;
    match event {
        Event::Connected => {
            tracing::info!("NATS connection (re)established");
            metrics::gauge!(names::NATS_CONNECTED).set(1.0);
            connected.send_modify(|n| *n = n.wrapping_add(1));
        }
        Event::Disconnected => {
            metrics::gauge!(names::NATS_CONNECTED).set(0.0);
            metrics::counter!(names::NATS_DISCONNECTS).increment(1);
            tracing::warn!("NATS connection lost; reconnecting");
        }
        Event::ClientError(e) => tracing::warn!(error = %e, "NATS client error"),
        Event::ServerError(e) => tracing::warn!(error = %e, "NATS server error"),
        Event::SlowConsumer(sid) => tracing::warn!(sid, "NATS slow consumer"),
        other => tracing::debug!(event = %other, "NATS event"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_redacted_before_logging() {
        assert_eq!(
            redact_url("nats://alice:s3cret@nats:4222"),
            "nats://***@nats:4222"
        );
        assert_eq!(redact_url("nats://nats:4222"), "nats://nats:4222");
        assert_eq!(redact_url("tok@nats:4222"), "***@nats:4222");
    }

    #[test]
    fn credentials_are_taken_out_of_server_urls() {
        let (servers, userinfo) = strip_userinfo(&[
            "nats://alice:s3cret@a:4222".to_owned(),
            "nats://b:4222".to_owned(),
        ]);
        assert_eq!(
            userinfo,
            Some(("alice".to_owned(), Some("s3cret".to_owned())))
        );
        let shown = format!("{servers:?}");
        assert!(
            !shown.contains("s3cret") && !shown.contains("alice"),
            "{shown}"
        );
        assert_eq!(servers.len(), 2);
        let (_, encoded) = strip_userinfo(&["nats://u:p%40ss%2F@a:4222".to_owned()]);
        assert_eq!(encoded, Some(("u".to_owned(), Some("p@ss/".to_owned()))));
        let (_, token) = strip_userinfo(&["nats://tok@a:4222".to_owned()]);
        assert_eq!(token, Some(("tok".to_owned(), None)));
    }

    #[test]
    fn settings_that_cannot_work_are_refused() {
        let ok = BusConfig::new(vec!["nats://127.0.0.1:4222".into()]);
        assert!(ok.validate().is_ok());
        let mut bad = ok.clone();
        bad.stream = "DR.EVENTS".into();
        assert!(bad.validate().is_err());
        let mut bad = ok.clone();
        bad.duplicate_window = Duration::from_secs(10);
        bad.max_age = Duration::from_secs(5);
        assert!(bad.validate().is_err());
        let mut bad = ok.clone();
        bad.tls_cert_file = Some("c.pem".into());
        assert!(bad.validate().is_err());
        let mut bad = ok;
        bad.servers.clear();
        assert!(bad.validate().is_err());
    }
}
