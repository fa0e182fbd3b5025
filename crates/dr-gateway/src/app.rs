//! Builds the gateway from [`Settings`]: binds the listeners (so tests can use port 0
//! and read the ports back), wires services, and runs until the shutdown token fires;
//! then [`Application::run_until_stopped`] shuts down in the order
//! [`crate::shutdown`] documents (NOT_SERVING, then drain: listeners closed, GOAWAY,
//! streams ended; in-flight calls and fulfillment attempts waited for up to the
//! grace period).
//!
//! Two listeners: gRPC (services, health, reflection) and HTTP (DR webhooks,
//! `/healthz`, `/readyz`). Both share one event log: the webhook appends, the
//! EventStream and ChargeService read.
//!
//! State replicas must share — the event log and the CreateFulfillment idempotency
//! records — is chosen in one place, [`build_backends`]: in memory for one process,
//! or NATS JetStream when `--bus-url` is set. In JetStream mode a watcher task
//! ([`watch_bus_health`]) reports NOT_SERVING while the bus is unreachable.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::future::FusedFuture as _;
use futures::FutureExt as _;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::{server::TcpIncoming, Server};
use tonic_health::ServingStatus;

use crate::bus::{Bus, BusError, JetStreamLog, KvIdempotencyStore};
use crate::clock::{Clock, SystemClock};
use crate::config::Settings;
use crate::digital_river::{self, Client, ClientConfig};
use crate::domain::fulfillments::{Fulfiller, FulfillerConfig};
use crate::domain::idempotency::{IdempotencyStore, MemoryIdempotencyStore};
use crate::events::{Backfill, BackfillConfig, EventEncoder, EventLog, MemoryLog, MemoryLogConfig};
use crate::grpc::charge::ChargeApi;
use crate::grpc::event_stream::{self, EventStreamApi, EventStreamServer};
use crate::grpc::fulfillment::FulfillmentApi;
use crate::grpc::message_limit::MessageLimitLayer;
use crate::grpc::{health as grpc_health, reflection};
use crate::health::{self, HealthGate};
use crate::pb::v1::charge_service_server::ChargeServiceServer;
use crate::pb::v1::fulfillment_service_server::FulfillmentServiceServer;
use crate::webhook::{
    self, ConnectionLimits, Readiness, SignatureVerifier, WebhookConfig, WebhookState,
};

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
    /// A listener's server stopped although no shutdown was asked for.
    #[error("the {0} server stopped unexpectedly")]
    Stopped(&'static str),
}

/// Most concurrent RPCs (Subscribe streams included) on one client connection.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 1024;

/// A running gateway.
#[derive(Debug)]
pub struct Application {
    grpc_addr: SocketAddr,
    http_addr: SocketAddr,
    /// Cancelled to ask for a graceful shutdown (a signal, or a test).
    shutdown: CancellationToken,
    /// Cancelled by [`Application::run_until_stopped`] once health says
    /// NOT_SERVING: listeners stop accepting, connections get GOAWAY, streams end.
    drain: CancellationToken,
    /// gRPC health, turned NOT_SERVING first.
    gate: HealthGate,
    /// `/readyz`, failing from the same moment.
    readiness: Readiness,
    grace: Duration,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
    http_server: JoinHandle<std::io::Result<()>>,
    event_log: Arc<dyn EventLog>,
    /// Its fulfillment attempts run apart from the RPCs; shutdown waits for them.
    fulfiller: Fulfiller,
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
        } = build_backends(&settings, encoder.clone(), clock.clone()).await?;
        let fulfiller = Fulfiller::new(
            client.clone(),
            idempotency,
            FulfillerConfig {
                reconcile_timeout: settings.reconcile_timeout,
                post_timeout: settings.upstream_timeout,
                commit_bound: settings.fulfillment_commit_bound,
            },
        );
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
                body_timeout: settings.webhook_body_timeout,
                ..WebhookConfig::default()
            },
        ));
        let shutdown = CancellationToken::new();
        let drain = CancellationToken::new();
        let event_stream = EventStreamServer::new(
            EventStreamApi::new(event_log.clone(), client.clone(), encoder, clock.clone())
                .with_shutdown(drain.clone()),
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

        let health = tonic_health::server::HealthReporter::new();
        health::set_all(&health, ServingStatus::NotServing).await;
        let health_service = grpc_health::service(health.clone(), drain.clone());
        let gate = HealthGate::new(health);
        // Both serve the API, health and the google.rpc error model (grpc/reflection.rs).
        let reflection_v1 = reflection::v1()?;
        // why: grpcurl 1.8, grpcui, Postman and Python's reflection client speak only v1alpha.
        let reflection_v1alpha = reflection::v1alpha()?;

        let router = Server::builder()
            .layer(tower_http::trace::TraceLayer::new_for_grpc())
            .layer(MessageLimitLayer::new(
                crate::defaults::GRPC_MAX_REQUEST_MESSAGE,
            ))
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
                ChargeApi::new(client.clone(), fulfiller.clone()).with_events(event_log.clone()),
            ))
            .add_service(event_stream);

        // why: tonic ignores `Server::tcp_nodelay` for a listener passed in, so set it
        // on the accepted sockets ourselves; with Nagle on, a stream event written
        // while the previous one is unacknowledged waits for the client's delayed
        // ACK (~40 ms on Linux).
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        // why: both servers start their graceful shutdown on the drain, which
        // `run_until_stopped` starts only after health says NOT_SERVING.
        let server = tokio::spawn(
            router.serve_with_incoming_shutdown(incoming, drain.clone().cancelled_owned()),
        );
        let http_server = tokio::spawn(webhook::serve(
            http_listener,
            webhook_router,
            ConnectionLimits {
                max_connections: settings.webhook_max_connections,
                idle_timeout: settings.webhook_idle_timeout,
                header_timeout: settings.webhook_header_timeout,
            },
            drain.clone().cancelled_owned(),
        ));
        if settings.backfill_enabled {
            tokio::spawn(backfill.run(drain.clone().cancelled_owned()));
        }
        if shared {
            tokio::spawn(health::watch_bus_health(
                event_log.clone(),
                gate.clone(),
                drain.clone(),
            ));
        }
        gate.set_bus_ok(true).await;
        tracing::info!(%grpc_addr, %http_addr, dr_base_url = %settings.dr_base_url, shared_bus = shared, "gateway serving");
        Ok(Self {
            grpc_addr,
            http_addr,
            shutdown,
            drain,
            gate,
            readiness,
            grace: settings.shutdown_grace,
            server,
            http_server,
            event_log,
            fulfiller,
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

    /// Runs until the shutdown token fires, then shuts down in the order
    /// [`crate::shutdown`] documents, within the grace period from that moment:
    /// NOT_SERVING; drain (listeners closed, GOAWAY, streams ended); wait for the
    /// in-flight calls and then for the fulfillment attempts still running (they
    /// outlive the RPCs that started them); cut what is left at the end of the grace.
    ///
    /// A server that stops on its own (it failed) starts the same sequence for the
    /// rest, and its error is returned at the end.
    pub async fn run_until_stopped(self) -> Result<(), AppError> {
        let (grpc_abort, http_abort) =
            (self.server.abort_handle(), self.http_server.abort_handle());
        let mut grpc = self.server.fuse();
        let mut http = self.http_server.fuse();
        // why: `biased`, shutdown first. The webhook server drains in a moment once
        // the drain starts; had it already finished when this task wakes, an
        // unbiased select could take its end for the end of everything and return
        // while gRPC calls are still in flight.
        let mut result = tokio::select! {
            biased;
            () = self.shutdown.cancelled() => Ok(()),
            joined = &mut grpc => stopped_early("gRPC", flatten(joined)),
            joined = &mut http => stopped_early("webhook HTTP", flatten_http(joined)),
        };
        self.shutdown.cancel();
        let deadline = std::time::Instant::now() + self.grace;

        // 1. NOT_SERVING, before anything closes, so health checkers move traffic.
        self.gate.set_draining().await;
        self.readiness.set_draining();
        // 2. Drain: no new connections or calls; streams end; in-flight calls go on.
        self.drain.cancel();
        tracing::info!(grace = ?self.grace, "shutting down: NOT_SERVING, listeners closed, streams ended; waiting for in-flight calls");
        // 3. Wait for both servers' connections to close, up to the grace.
        let servers = async {
            if !grpc.is_terminated() {
                result = std::mem::replace(&mut result, Ok(())).and(flatten((&mut grpc).await));
            }
            if !http.is_terminated() {
                result =
                    std::mem::replace(&mut result, Ok(())).and(flatten_http((&mut http).await));
            }
        };
        if tokio::time::timeout_at(deadline.into(), servers)
            .await
            .is_err()
        {
            tracing::warn!(grace = ?self.grace, "drain took longer than the grace period; closing the rest");
            grpc_abort.abort();
            http_abort.abort();
        }
        // 4. Fulfillment attempts that outlived their callers record their outcome.
        // why: an attempt cut off mid-POST leaves an outcome nobody records; let
        // each one finish and store its result (or its unknown outcome) first.
        let left = self.fulfiller.wait_for_attempts(deadline).await;
        if left > 0 {
            tracing::warn!(attempts = left, grace = ?self.grace, "fulfillment attempts still running at the end of the grace period; their outcome is not recorded");
        }
        tracing::info!("shutdown complete");
        result
    }
}

/// A server ended before shutdown was asked for: its error, or [`AppError::Stopped`].
fn stopped_early(which: &'static str, result: Result<(), AppError>) -> Result<(), AppError> {
    let error = result.err().unwrap_or(AppError::Stopped(which));
    tracing::error!(server = which, error = %error, "a server stopped on its own; shutting the rest down");
    Err(error)
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
            // why: an empty store after a start cannot know what a previous process
            // posted; until the hold ends such a request_id is not posted again
            // (README, "Money safety").
            idempotency: Arc::new(
                MemoryIdempotencyStore::new(
                    settings.idempotency_ttl,
                    settings.idempotency_max_entries,
                )
                .with_startup_hold(settings.fulfillment_startup_hold),
            ),
            shared: false,
            max_event_bytes: None,
        });
    };
    let bus = Bus::connect(bus_config).await?;
    let event_log = JetStreamLog::open(bus.clone(), encoder, clock).await?;
    // why: an owner writes its record before it looks DR up and again before it
    // posts; between two writes it spends at most lookup + POST + lookup
    // (fulfillments.rs); past that, another replica may assume it died.
    let lease = settings.upstream_timeout + settings.reconcile_timeout * 2 + Duration::from_secs(5);
    let idempotency = KvIdempotencyStore::open(
        &bus,
        settings.idempotency_ttl,
        lease,
        settings.fulfillment_commit_bound,
    )
    .await?;
    Ok(Backends {
        event_log: Arc::new(event_log),
        idempotency: Arc::new(idempotency),
        shared: true,
        max_event_bytes: Some(bus.max_event_bytes()),
    })
}
