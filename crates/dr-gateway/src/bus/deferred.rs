//! Starting without NATS: the JetStream backends connect in the background
//! ([`DeferredBus`]), so a gateway started during a NATS outage serves everything
//! that does not need the bus at once and turns the rest on when NATS arrives — it
//! never exits for want of NATS, so there is no crash loop to wait out.
//!
//! Until the first connection (stream and buckets provisioned), the event log and
//! the idempotency store stand in with [`NotConnected`] errors: Subscribe and
//! webhooks get UNAVAILABLE / 503, CreateFulfillment / CaptureItems / CancelItems
//! with a `request_id` get UNAVAILABLE with `RetryInfo` before anything reaches DR
//! (no POST without its idempotency record; requests without one use no record). Once connected, the
//! JetStream backends handle later outages themselves (the client reconnects).

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{Bus, BusConfig, BusError, JetStreamLog, KvIdempotencyStore};
use crate::clock::Clock;
use crate::digital_river::models::Fulfillment;
use crate::domain::idempotency::{Claim, IdempotencyError, IdempotencyStore};
use crate::events::{
    Appended, Bounds, Envelope, EventEncoder, EventLog, LogError, Sequence, StoredEvent,
};

/// Each background connection round retries this long before pausing.
const RETRY_ROUND: Duration = Duration::from_secs(10);
/// Longest pause between two rounds.
const MAX_PAUSE: Duration = Duration::from_secs(10);

/// The bus has not connected yet (the gateway started while NATS was unreachable).
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the event bus (NATS JetStream) has not connected yet")]
pub struct NotConnected;

/// The JetStream backends, once connected.
#[derive(Debug)]
pub struct Connected {
    /// The NATS connection.
    pub bus: Bus,
    /// The shared event log.
    pub log: Arc<JetStreamLog>,
    /// The shared idempotency store.
    pub idempotency: Arc<KvIdempotencyStore>,
}

/// What the background connection needs to open the backends.
#[derive(Debug, Clone)]
pub struct DeferredSettings {
    /// How to reach JetStream (`startup_timeout` bounds the first round).
    pub config: BusConfig,
    /// The idempotency bucket's TTL.
    pub idempotency_ttl: Duration,
    /// How long an idempotency owner may hold a key.
    pub idempotency_lease: Duration,
    /// How long after a POST DR may still commit it (`--fulfillment-commit-bound`).
    pub commit_bound: Duration,
}

/// JetStream backends that may not be connected yet; see the module docs. Cheap
/// to clone.
#[derive(Debug, Clone)]
pub struct DeferredBus {
    ready: watch::Receiver<Option<Arc<Connected>>>,
}

impl DeferredBus {
    /// Starts connecting in the background until connected or `shutdown`.
    pub fn start(
        settings: DeferredSettings,
        encoder: EventEncoder,
        clock: Arc<dyn Clock>,
        shutdown: CancellationToken,
    ) -> Self {
        let (tx, ready) = watch::channel(None);
        tokio::spawn(connect_in_background(
            settings, encoder, clock, tx, shutdown,
        ));
        Self { ready }
    }

    /// The backends, if connected.
    pub fn connected(&self) -> Option<Arc<Connected>> {
        self.ready.borrow().clone()
    }

    /// Waits until connected; `None` when the background task gave up (shutdown).
    pub async fn wait_connected(&self) -> Option<Arc<Connected>> {
        let mut ready = self.ready.clone();
        ready
            .wait_for(Option::is_some)
            .await
            .ok()
            .and_then(|c| c.clone())
    }

    /// The event log: JetStream once connected, [`NotConnected`] before.
    pub fn event_log(&self) -> Arc<dyn EventLog> {
        Arc::new(DeferredLog {
            ready: self.ready.clone(),
        })
    }

    /// The idempotency store: JetStream KV once connected, [`NotConnected`] before.
    pub fn idempotency(&self) -> Arc<dyn IdempotencyStore> {
        Arc::new(DeferredIdempotency {
            ready: self.ready.clone(),
        })
    }
}

async fn connect_in_background(
    settings: DeferredSettings,
    encoder: EventEncoder,
    clock: Arc<dyn Clock>,
    tx: watch::Sender<Option<Arc<Connected>>>,
    shutdown: CancellationToken,
) {
    let mut config = settings.config.clone();
    for round in 1u32.. {
        let attempt = connect_once(&settings, config.clone(), encoder.clone(), clock.clone());
        let result = tokio::select! {
            () = shutdown.cancelled() => return,
            result = attempt => result,
        };
        match result {
            Ok(connected) => {
                if round > 1 {
                    tracing::info!(round, "event bus connected: JetStream backends ready");
                }
                tx.send_replace(Some(Arc::new(connected)));
                return;
            }
            Err(e @ (BusError::Incompatible { .. } | BusError::Config(_))) => {
                tracing::error!(error = %e, round, "event bus cannot be used as configured; retrying (fix the stream or the flags)");
            }
            Err(e) => {
                tracing::warn!(error = %e, source = ?std::error::Error::source(&e), round, "event bus not ready; serving without it and retrying");
            }
        }
        config.startup_timeout = RETRY_ROUND;
        let pause = (Duration::from_secs(1) * round).min(MAX_PAUSE);
        // why: retry pacing between connection rounds, not synchronisation.
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(pause) => {}
        }
    }
}

async fn connect_once(
    settings: &DeferredSettings,
    config: BusConfig,
    encoder: EventEncoder,
    clock: Arc<dyn Clock>,
) -> Result<Connected, BusError> {
    let bus = Bus::connect(config).await?;
    let log = JetStreamLog::open(bus.clone(), encoder, clock).await?;
    let idempotency = KvIdempotencyStore::open(
        &bus,
        settings.idempotency_ttl,
        settings.idempotency_lease,
        settings.commit_bound,
    )
    .await?;
    Ok(Connected {
        bus,
        log: Arc::new(log),
        idempotency: Arc::new(idempotency),
    })
}

fn not_connected() -> LogError {
    LogError::Unavailable(Box::new(NotConnected))
}

// === impl DeferredLog ===

/// The event log of a [`DeferredBus`].
#[derive(Debug)]
struct DeferredLog {
    ready: watch::Receiver<Option<Arc<Connected>>>,
}

impl DeferredLog {
    fn log(&self) -> Result<Arc<JetStreamLog>, LogError> {
        self.ready
            .borrow()
            .as_ref()
            .map(|c| c.log.clone())
            .ok_or_else(not_connected)
    }
}

#[async_trait]
impl EventLog for DeferredLog {
    fn log_id(&self) -> u64 {
        // why: nothing issues or reads cursors before `bounds` succeeded, which
        // needs the connection; 0 matches no real log.
        self.log().map_or(0, |log| log.log_id())
    }

    async fn append(&self, envelope: Envelope) -> Result<Appended, LogError> {
        self.log()?.append(envelope).await
    }

    async fn read_after(
        &self,
        after: Sequence,
        limit: usize,
    ) -> Result<Vec<Arc<StoredEvent>>, LogError> {
        self.log()?.read_after(after, limit).await
    }

    async fn bounds(&self) -> Result<Bounds, LogError> {
        self.log()?.bounds().await
    }

    async fn first_received_at_or_after(
        &self,
        time: DateTime<Utc>,
    ) -> Result<Option<Sequence>, LogError> {
        self.log()?.first_received_at_or_after(time).await
    }

    async fn get_by_id(&self, id: &str) -> Result<Option<Arc<StoredEvent>>, LogError> {
        self.log()?.get_by_id(id).await
    }

    async fn newest_created_time(&self) -> Result<Option<DateTime<Utc>>, LogError> {
        self.log()?.newest_created_time().await
    }

    async fn check_ready(&self) -> Result<(), LogError> {
        self.log()?.check_ready().await
    }

    fn watch_appends(&self) -> watch::Receiver<Sequence> {
        match self.log() {
            Ok(log) => log.watch_appends(),
            // why: a closed channel tells a reader the log is gone; no reader gets
            // here, since each reads `bounds` first.
            Err(_) => watch::channel(0).1,
        }
    }
}

// === impl DeferredIdempotency ===

/// The idempotency store of a [`DeferredBus`].
#[derive(Debug)]
struct DeferredIdempotency {
    ready: watch::Receiver<Option<Arc<Connected>>>,
}

impl DeferredIdempotency {
    fn store(&self) -> Option<Arc<KvIdempotencyStore>> {
        self.ready.borrow().as_ref().map(|c| c.idempotency.clone())
    }
}

#[async_trait]
impl IdempotencyStore for DeferredIdempotency {
    async fn claim(&self, key: &str, fingerprint: u64) -> Result<Claim, IdempotencyError> {
        match self.store() {
            Some(store) => store.claim(key, fingerprint).await,
            None => Err(IdempotencyError::Unavailable(NotConnected.to_string())),
        }
    }

    // why: the four below follow a successful claim, which needs the connection;
    // once connected it stays (the client reconnects by itself).
    async fn record_attempt(
        &self,
        key: &str,
        fingerprint: u64,
        may_land_until: Instant,
    ) -> Result<(), IdempotencyError> {
        match self.store() {
            Some(store) => store.record_attempt(key, fingerprint, may_land_until).await,
            // why: without a recorded attempt the owner must not post.
            None => Err(IdempotencyError::Unavailable(NotConnected.to_string())),
        }
    }

    async fn complete(&self, key: &str, fingerprint: u64, fulfillment: Fulfillment) {
        if let Some(store) = self.store() {
            store.complete(key, fingerprint, fulfillment).await;
        }
    }

    async fn release(&self, key: &str) {
        if let Some(store) = self.store() {
            store.release(key).await;
        }
    }

    async fn mark_unknown(&self, key: &str, fingerprint: u64, own_attempt: Option<Instant>) {
        if let Some(store) = self.store() {
            store.mark_unknown(key, fingerprint, own_attempt).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SystemClock;

    /// A NATS URL nothing listens on.
    fn unreachable_settings() -> DeferredSettings {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or(1);
        let mut config = BusConfig::new(vec![format!("nats://127.0.0.1:{port}")]);
        config.startup_timeout = Duration::ZERO;
        DeferredSettings {
            config,
            idempotency_ttl: Duration::from_secs(60),
            idempotency_lease: Duration::from_secs(10),
            commit_bound: Duration::from_secs(30),
        }
    }

    #[tokio::test]
    async fn before_connecting_the_backends_answer_unavailable_at_once() {
        let shutdown = CancellationToken::new();
        let bus = DeferredBus::start(
            unreachable_settings(),
            EventEncoder::default(),
            Arc::new(SystemClock),
            shutdown.clone(),
        );
        assert!(bus.connected().is_none());
        let log = bus.event_log();
        assert!(matches!(log.bounds().await, Err(LogError::Unavailable(_))));
        assert!(matches!(
            log.check_ready().await,
            Err(LogError::Unavailable(_))
        ));
        let claim = bus.idempotency().claim("k", 1).await;
        assert!(matches!(claim, Err(IdempotencyError::Unavailable(_))));
        let attempt = bus
            .idempotency()
            .record_attempt("k", 1, Instant::now())
            .await;
        assert!(matches!(attempt, Err(IdempotencyError::Unavailable(_))));
        shutdown.cancel();
        assert!(
            tokio::time::timeout(Duration::from_secs(5), bus.wait_connected())
                .await
                .expect("the background task ends on shutdown")
                .is_none()
        );
    }
}
