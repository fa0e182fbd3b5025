//! Starting without NATS: the JetStream backends connect in the background
//! ([`DeferredBus`]), so a gateway started during a NATS outage serves everything
//! that does not need the bus at once and turns the rest on when NATS arrives — it
//! never exits for want of NATS, so there is no crash loop to wait out.
//!
//! Until the first connection (stream and buckets provisioned), the event log, the
//! idempotency store and the consumer group store stand in with [`NotConnected`]
//! errors: Subscribe and webhooks get UNAVAILABLE / 503, CreateFulfillment /
//! CaptureItems / CancelItems with a `request_id` get UNAVAILABLE with `RetryInfo`
//! before anything reaches DR (no POST without its idempotency record; requests
//! without one use no record), Consume and the consumer group RPCs get UNAVAILABLE
//! with `RetryInfo` at once (no group state is read or written). Once connected,
//! the JetStream backends handle later outages themselves (the client reconnects).

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::stream::BoxStream;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{Bus, BusConfig, BusError, JetStreamLog, KvGroupStore, KvIdempotencyStore};
use crate::clock::Clock;
use crate::digital_river::models::Fulfillment;
use crate::domain::idempotency::{Claim, IdempotencyError, IdempotencyStore};
use crate::events::groups::store::{Created, StoreChange, Versioned, WriteError, Written};
use crate::events::groups::{GroupDef, GroupStore, KeyRecord, MemberInfo, Position, StoreError};
use crate::events::{
    Appended, Bounds, Envelope, EventEncoder, EventLog, LogError, LogStats, Sequence, StoredEvent,
};
use crate::telemetry::metrics::names;

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
    /// The shared consumer group state.
    pub groups: Arc<KvGroupStore>,
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
    /// This replica's name in consumer group member lists and leases (known before
    /// the connection, so the group scheduler and the store agree on it).
    pub replica: String,
}

/// JetStream backends that may not be connected yet; see the module docs. Cheap
/// to clone.
#[derive(Debug, Clone)]
pub struct DeferredBus {
    ready: watch::Receiver<Option<Arc<Connected>>>,
    replica: String,
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
        let replica = settings.replica.clone();
        // why: 0 until the first connection, so a gateway started while NATS is down
        // shows it (and the alert fires) instead of showing nothing.
        metrics::gauge!(names::NATS_CONNECTED).set(0.0);
        tokio::spawn(connect_in_background(
            settings, encoder, clock, tx, shutdown,
        ));
        Self { ready, replica }
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

    /// The consumer group store: JetStream KV once connected, [`NotConnected`]
    /// before; named [`DeferredSettings::replica`] either way.
    pub fn group_store(&self) -> Arc<dyn GroupStore> {
        Arc::new(DeferredGroups {
            ready: self.ready.clone(),
            replica: self.replica.clone(),
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
        // why: a round that connected to NATS but failed later dropped that
        // connection with it.
        metrics::gauge!(names::NATS_CONNECTED).set(0.0);
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
    let groups = KvGroupStore::open(&bus, settings.replica.clone()).await?;
    Ok(Connected {
        bus,
        log: Arc::new(log),
        idempotency: Arc::new(idempotency),
        groups: Arc::new(groups),
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

    /// The stream's own figures (bytes included) once connected.
    async fn stats(&self) -> Result<LogStats, LogError> {
        self.log()?.stats().await
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

// === impl DeferredGroups ===

/// The consumer group store of a [`DeferredBus`]. Every call fails at once before
/// the connection, so a group RPC answers UNAVAILABLE instead of waiting, and no
/// scheduler starts (each starts after reading the group from the store).
#[derive(Debug)]
struct DeferredGroups {
    ready: watch::Receiver<Option<Arc<Connected>>>,
    replica: String,
}

impl DeferredGroups {
    fn store(&self) -> Result<Arc<KvGroupStore>, StoreError> {
        self.ready
            .borrow()
            .as_ref()
            .map(|c| c.groups.clone())
            .ok_or_else(|| StoreError(NotConnected.to_string()))
    }
}

#[async_trait]
impl GroupStore for DeferredGroups {
    fn replica(&self) -> &str {
        &self.replica
    }

    async fn create_group(&self, def: &GroupDef) -> Result<Created, StoreError> {
        self.store()?.create_group(def).await
    }

    async fn group(&self, id: &str) -> Result<Option<GroupDef>, StoreError> {
        self.store()?.group(id).await
    }

    async fn groups(&self) -> Result<Vec<GroupDef>, StoreError> {
        self.store()?.groups().await
    }

    async fn delete_group(&self, id: &str) -> Result<bool, StoreError> {
        self.store()?.delete_group(id).await
    }

    async fn position(&self, group: &GroupDef) -> Result<Position, StoreError> {
        self.store()?.position(group).await
    }

    async fn advance_position(
        &self,
        group: &GroupDef,
        to: Position,
    ) -> Result<Position, StoreError> {
        self.store()?.advance_position(group, to).await
    }

    async fn key(
        &self,
        group: &GroupDef,
        key: &str,
    ) -> Result<Option<Versioned<KeyRecord>>, StoreError> {
        self.store()?.key(group, key).await
    }

    async fn write_key(
        &self,
        group: &GroupDef,
        key: &str,
        expected: Option<u64>,
        record: &KeyRecord,
    ) -> Result<Written, WriteError> {
        self.store()?.write_key(group, key, expected, record).await
    }

    async fn changes(
        &self,
        group: &GroupDef,
    ) -> Result<BoxStream<'static, StoreChange>, StoreError> {
        self.store()?.changes(group).await
    }

    async fn put_members(
        &self,
        group: &GroupDef,
        members: &[MemberInfo],
    ) -> Result<(), StoreError> {
        self.store()?.put_members(group, members).await
    }

    async fn remove_member(&self, group: &GroupDef, member_id: &str) -> Result<(), StoreError> {
        self.store()?.remove_member(group, member_id).await
    }

    async fn members(&self, group: &GroupDef) -> Result<Vec<MemberInfo>, StoreError> {
        self.store()?.members(group).await
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
            replica: "replica-a".into(),
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
        let groups = bus.group_store();
        assert_eq!(groups.replica(), "replica-a");
        assert!(groups.group("g").await.is_err());
        assert!(groups.groups().await.is_err());
        shutdown.cancel();
        assert!(
            tokio::time::timeout(Duration::from_secs(5), bus.wait_connected())
                .await
                .expect("the background task ends on shutdown")
                .is_none()
        );
    }
}
