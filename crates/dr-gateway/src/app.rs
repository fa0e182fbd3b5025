//! Builds the gateway from [`Settings`]: binds the listeners (so tests can use port 0
//! and read the ports back), wires services, and runs until the shutdown token fires.
//!
//! Two listeners: gRPC (services, health, reflection) and HTTP (DR webhooks,
//! `/healthz`, `/readyz`). Both share one event log: the webhook appends, the
//! EventStream and ChargeService read.
//!
//! State replicas must share — the event log, the CreateFulfillment idempotency
//! records and the consumer groups — is chosen in one place, [`build_backends`]: in memory for one process,
//! or NATS JetStream when `--bus-url` is set. In JetStream mode a watcher task
//! ([`watch_bus_health`]) reports NOT_SERVING while the bus is unreachable.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::{server::TcpIncoming, Server};
use tonic_health::ServingStatus;

use crate::bus::{Bus, BusError, JetStreamLog, KvGroupStore, KvIdempotencyStore};
use crate::clock::{Clock, SystemClock};
use crate::config::Settings;
use crate::digital_river::{self, Client, ClientConfig};
use crate::domain::fulfillments::Fulfiller;
use crate::domain::idempotency::{IdempotencyStore, MemoryIdempotencyStore};
use crate::events::groups::{
    default_replica_name, ConsumerGroups, GroupStore, GroupsConfig, MemoryGroupStore,
};
use crate::events::{Backfill, BackfillConfig, EventEncoder, EventLog, MemoryLog, MemoryLogConfig};
use crate::grpc::charge::ChargeApi;
use crate::grpc::event_stream::{self, EventStreamApi, EventStreamServer};
use crate::grpc::fulfillment::FulfillmentApi;
use crate::health::{self, HealthGate};
use crate::pb;
use crate::pb::v1::charge_service_server::ChargeServiceServer;
use crate::pb::v1::fulfillment_service_server::FulfillmentServiceServer;
use crate::webhook::{self, Readiness, SignatureVerifier, WebhookConfig, WebhookState};

/// Why the gateway could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The DR client could not be built.
    #[error("invalid Digital River settings: {0}")]
    Upstream(#[from] digital_river::Error),
    /// Reflection could not be built from the descriptor set.
    #[error("cannot build gRPC reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The gRPC server failed.
    #[error("gRPC server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
    /// The webhook HTTP server failed.
    #[error("webhook HTTP server failed: {0}")]
    Http(#[source] std::io::Error),
    /// The shared event bus could not be set up.
    #[error("event bus: {0}")]
    Bus(#[from] BusError),
}

/// Most concurrent RPCs (Subscribe streams included) on one client connection.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 1024;

/// A running gateway.
#[derive(Debug)]
pub struct Application {
    grpc_addr: SocketAddr,
    http_addr: SocketAddr,
    shutdown: CancellationToken,
    grace: Duration,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
    http_server: JoinHandle<std::io::Result<()>>,
    event_log: Arc<dyn EventLog>,
}

impl Application {
    /// Binds the listeners and starts serving; health reports SERVING once all is up.
    pub async fn build(settings: Settings) -> Result<Self, AppError> {
        let listener = TcpListener::bind(settings.grpc_addr)
            .await
            .map_err(|source| AppError::Bind {
                addr: settings.grpc_addr,
                source,
            })?;
        let grpc_addr = listener.local_addr().map_err(|source| AppError::Bind {
            addr: settings.grpc_addr,
            source,
        })?;
        let http_listener = TcpListener::bind(settings.http_addr)
            .await
            .map_err(|source| AppError::Bind {
                addr: settings.http_addr,
                source,
            })?;
        let http_addr = http_listener
            .local_addr()
            .map_err(|source| AppError::Bind {
                addr: settings.http_addr,
                source,
            })?;

        let client = Client::new(ClientConfig {
            base_url: settings.dr_base_url.clone(),
            api_key: settings.dr_api_key.clone(),
            api_version: settings.dr_api_version.clone(),
            max_timeout: settings.upstream_timeout,
            retry: settings.retry,
            rate_limit: settings.upstream_rate_limit,
        })?;
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        // why: the typed payload comes from the core's conversions, injected so
        // `events` does not depend on `grpc`.
        let encoder = EventEncoder::with_payload_decoder(Arc::new(event_stream::decode_payload));
        let Backends {
            event_log,
            idempotency,
            shared,
            max_event_bytes,
            group_store,
        } = build_backends(&settings, encoder.clone(), clock.clone()).await?;
        let groups = ConsumerGroups::new(
            event_log.clone(),
            group_store.clone(),
            clock.clone(),
            GroupsConfig {
                max_groups: settings.consumer_groups_max,
                max_pending: settings.consumer_group_max_pending,
                replica: group_store.replica().to_owned(),
                ..GroupsConfig::default()
            },
        );
        let fulfiller = Fulfiller::new(client.clone(), idempotency, settings.reconcile_timeout);
        if settings.webhook_secrets.is_empty() {
            tracing::warn!("no webhook secret configured: every DR webhook will be rejected (401)");
        }
        let verifier = SignatureVerifier::new(
            settings.webhook_secrets.clone(),
            settings.webhook_tolerance,
            clock.clone(),
        );
        let readiness = Readiness::default();
        let webhook_router = webhook::router(WebhookState::new(
            verifier,
            event_log.clone(),
            readiness.clone(),
            WebhookConfig {
                max_body_bytes: webhook_body_limit(settings.webhook_max_body, max_event_bytes),
                ..WebhookConfig::default()
            },
        ));
        let shutdown = CancellationToken::new();
        let event_stream = EventStreamServer::new(
            EventStreamApi::new(event_log.clone(), client.clone(), encoder, clock.clone())
                .with_shutdown(shutdown.clone())
                .with_groups(groups),
        );
        let backfill = Backfill::new(
            client.clone(),
            event_log.clone(),
            BackfillConfig {
                interval: settings.backfill_interval,
                lookback: settings.backfill_lookback,
                ..BackfillConfig::default()
            },
            clock.clone(),
        );

        let (health, health_service) = tonic_health::server::health_reporter();
        health::set_all(&health, ServingStatus::NotServing).await;
        let gate = HealthGate::new(health);
        let reflection_v1 = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()?;
        // why: grpcurl 1.8, grpcui, Postman and Python's reflection client speak only v1alpha.
        let reflection_v1alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()?;

        let router = Server::builder()
            .layer(tower_http::trace::TraceLayer::new_for_grpc())
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            // why: tonic otherwise lifts hyper's cap, letting one client open unbounded
            // streams (each Subscribe holds a task and buffers) on a single connection.
            .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION))
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(FulfillmentServiceServer::new(FulfillmentApi::new(
                client.clone(),
                fulfiller.clone(),
            )))
            .add_service(ChargeServiceServer::new(
                ChargeApi::new(client.clone(), fulfiller).with_events(event_log.clone()),
            ))
            .add_service(event_stream);

        let stop = {
            let shutdown = shutdown.clone();
            let gate = gate.clone();
            async move {
                shutdown.cancelled().await;
                // why: load balancers must see NOT_SERVING before connections close.
                gate.set_draining().await;
                tracing::info!("stopped accepting; draining in-flight RPCs");
            }
        };
        // why: tonic ignores `Server::tcp_nodelay` for a listener passed in, so set it
        // on the accepted sockets ourselves; with Nagle on, a stream event written
        // while the previous one is unacknowledged waits for the client's delayed
        // ACK (~40 ms on Linux).
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        let server = tokio::spawn(router.serve_with_incoming_shutdown(incoming, stop));
        let http_stop = {
            let shutdown = shutdown.clone();
            async move {
                shutdown.cancelled().await;
                // why: /readyz fails first so DR's traffic is steered elsewhere while
                // in-flight deliveries finish (unstored ones are re-sent by DR).
                readiness.set_draining();
            }
        };
        let http_server = tokio::spawn(webhook::serve(http_listener, webhook_router, http_stop));
        if settings.backfill_enabled {
            tokio::spawn(backfill.run(shutdown.clone().cancelled_owned()));
        }
        if shared {
            tokio::spawn(health::watch_bus_health(
                event_log.clone(),
                gate.clone(),
                shutdown.clone(),
            ));
        }
        gate.set_bus_ok(true).await;
        tracing::info!(%grpc_addr, %http_addr, dr_base_url = %settings.dr_base_url, shared_bus = shared, "gateway serving");
        Ok(Self {
            grpc_addr,
            http_addr,
            shutdown,
            grace: settings.shutdown_grace,
            server,
            http_server,
            event_log,
        })
    }

    /// The bound webhook / health HTTP address.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The event log the webhook appends to (tests inspect it).
    pub fn event_log(&self) -> Arc<dyn EventLog> {
        self.event_log.clone()
    }

    /// The bound gRPC address.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// Cancel this to shut the gateway down gracefully.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Runs until the shutdown token fires, then drains for at most the grace period.
    pub async fn run_until_stopped(self) -> Result<(), AppError> {
        let mut server = self.server;
        let mut http_server = self.http_server;
        tokio::select! {
            result = &mut server => return flatten(result),
            result = &mut http_server => return flatten_http(result),
            () = self.shutdown.cancelled() => {}
        }
        let drain = async {
            let grpc = (&mut server).await;
            let http = (&mut http_server).await;
            flatten(grpc).and(flatten_http(http))
        };
        match tokio::time::timeout(self.grace, drain).await {
            Ok(result) => result,
            Err(_) => {
                tracing::warn!(grace = ?self.grace, "drain took longer than the grace period; closing the rest");
                server.abort();
                http_server.abort();
                Ok(())
            }
        }
    }
}

fn flatten(
    result: Result<Result<(), tonic::transport::Error>, tokio::task::JoinError>,
) -> Result<(), AppError> {
    match result {
        Ok(inner) => inner.map_err(AppError::from),
        Err(e) if e.is_cancelled() => Ok(()),
        Err(e) => {
            tracing::error!(error = %e, "gRPC server task failed");
            Ok(())
        }
    }
}

fn flatten_http(
    result: Result<std::io::Result<()>, tokio::task::JoinError>,
) -> Result<(), AppError> {
    match result {
        Ok(inner) => inner.map_err(AppError::Http),
        Err(e) if e.is_cancelled() => Ok(()),
        Err(e) => {
            tracing::error!(error = %e, "webhook HTTP server task failed");
            Ok(())
        }
    }
}

/// The state replicas share (or, in one process, keep to themselves).
struct Backends {
    event_log: Arc<dyn EventLog>,
    idempotency: Arc<dyn IdempotencyStore>,
    /// True in JetStream mode.
    shared: bool,
    /// Largest event the backend can store (NATS `max_payload`), if bounded.
    max_event_bytes: Option<usize>,
    /// Consumer group state.
    group_store: Arc<dyn GroupStore>,
}

/// The webhook body limit: the configured one, lowered to what the bus can store so
/// an oversized event gets a clear 413 instead of 503s DR would retry for days.
fn webhook_body_limit(configured: usize, backend: Option<usize>) -> usize {
    match backend {
        Some(max) if max < configured => {
            tracing::info!(
                configured,
                max,
                "webhook body limit lowered to what NATS accepts per message (raise max_payload on the server to allow more)"
            );
            max
        }
        _ => configured,
    }
}

/// THE place that picks the backends: in memory without `--bus-url`, JetStream with it.
async fn build_backends(
    settings: &Settings,
    encoder: EventEncoder,
    clock: Arc<dyn Clock>,
) -> Result<Backends, AppError> {
    let Some(bus_config) = settings.bus.clone() else {
        return Ok(Backends {
            event_log: Arc::new(MemoryLog::new(
                MemoryLogConfig {
                    max_events: settings.event_log_max_events,
                    max_bytes: settings.event_log_max_bytes,
                    ..MemoryLogConfig::default()
                },
                encoder,
                clock,
            )),
            idempotency: Arc::new(MemoryIdempotencyStore::new(
                settings.idempotency_ttl,
                settings.idempotency_max_entries,
            )),
            shared: false,
            max_event_bytes: None,
            group_store: Arc::new(MemoryGroupStore::new(default_replica_name())),
        });
    };
    let bus = Bus::connect(bus_config).await?;
    let event_log = JetStreamLog::open(bus.clone(), encoder, clock).await?;
    // why: an owner holds a key for at most reconcile + POST + reconcile
    // (fulfillments.rs); past that, another replica may assume it died.
    let lease = settings.upstream_timeout + settings.reconcile_timeout * 2 + Duration::from_secs(5);
    let idempotency = KvIdempotencyStore::open(&bus, settings.idempotency_ttl, lease).await?;
    let group_store = KvGroupStore::open(&bus, default_replica_name()).await?;
    Ok(Backends {
        event_log: Arc::new(event_log),
        idempotency: Arc::new(idempotency),
        shared: true,
        max_event_bytes: Some(bus.max_event_bytes()),
        group_store: Arc::new(group_store),
    })
}
