//! Builds the gateway from [`Settings`]: binds the listeners (so tests can use port 0
//! and read the ports back), wires services, and runs until the shutdown token fires;
//! then [`Application::run_until_stopped`] shuts down in the order
//! [`crate::shutdown`] documents (NOT_SERVING, then drain: listeners closed, GOAWAY,
//! streams ended; in-flight calls and fulfillment attempts waited for up to the
//! grace period).
//!
//! Two listeners: gRPC (services, health, reflection; connections served, aged and
//! drained by [`grpc::server`]) and HTTP (DR webhooks, `/livez`, `/readyz`,
//! `/healthz`, `/metrics`). Both share one event log: the webhook appends, the
//! EventStream and ChargeService read. `--metrics-addr` moves `/metrics` to a
//! listener of its own.
//!
//! Every RPC passes the telemetry layers ([`crate::telemetry`]: server span and
//! request id, access log, metrics), then the authorization layer.
//!
//! The gRPC listener speaks TLS when configured ([`crate::tls`], reloaded on change)
//! and every call passes the authorization layer ([`crate::auth`]) first; an optional
//! plaintext listener serves only health (the same statuses), for probes that
//! cannot speak TLS. Both run the same serve loop ([`grpc::server::serve`]).
//!
//! State replicas must share — the event log, the CreateFulfillment idempotency
//! records and the consumer groups — is chosen in one place, [`build_backends`]: in
//! memory for one process, or NATS JetStream when `--bus-url` is set. JetStream
//! connects in the background ([`DeferredBus`]): start-up waits at most
//! `--bus-startup-timeout` for it, then serves what does not need the bus, and a
//! watcher ([`watch_bus_health`]) keeps EventStream NOT_SERVING while the bus is
//! unreachable. Until the first connection the idempotency records cannot be read,
//! so CreateFulfillment with a `request_id`, CaptureItems and CancelItems answer
//! UNAVAILABLE without calling DR, and Consume and the consumer group RPCs answer
//! UNAVAILABLE too (the group state is on the bus). Once connected, the replicas
//! also share DR's rate limit ([`pacing`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::future::FusedFuture as _;
use futures::FutureExt as _;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;

use crate::auth::{AuthError, AuthLayer, Authorizer};
use crate::bus::pacing::{self, PacingConfig};
use crate::bus::{BusError, DeferredBus, DeferredSettings};
use crate::clock::{Clock, SystemClock};
use crate::config::Settings;
use crate::digital_river::{self, replica_share, Client, ClientConfig, RateLimiter};
use crate::domain::fulfillments::{Fulfiller, FulfillerConfig};
use crate::domain::idempotency::{IdempotencyStore, MemoryIdempotencyStore};
use crate::events::groups::{
    default_replica_name, ConsumerGroups, GroupStore, GroupsConfig, MemoryGroupStore,
};
use crate::events::{Backfill, BackfillConfig, EventEncoder, EventLog, MemoryLog, MemoryLogConfig};
use crate::grpc;
use crate::grpc::charge::ChargeApi;
use crate::grpc::event_stream::{self, EventStreamApi, EventStreamServer};
use crate::grpc::fulfillment::FulfillmentApi;
use crate::grpc::server::{with_messages, ConnectionSettings, MessageSettings};
use crate::grpc::{health as grpc_health, reflection};
use crate::health::{watch_bus_health, HealthGate};
use crate::listen::ListenAddr;
use crate::pb::v1::charge_service_server::ChargeServiceServer;
use crate::pb::v1::fulfillment_service_server::FulfillmentServiceServer;
use crate::telemetry::{Metrics, RpcMetricsLayer};
use crate::tls::{ServerTls, TlsError};
use crate::webhook::{
    self, BodyLimit, ConnectionLimits, SignatureVerifier, WebhookConfig, WebhookState,
};

/// Why the gateway could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// A listener could not be bound (or its host name did not resolve).
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address as configured.
        addr: String,
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
    Serve(#[source] std::io::Error),
    /// The webhook HTTP server failed.
    #[error("webhook HTTP server failed: {0}")]
    Http(#[source] std::io::Error),
    /// The shared event bus could not be set up.
    #[error("event bus: {0}")]
    Bus(#[from] BusError),
    /// The gRPC listener's TLS certificate, key or client CA cannot be used.
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
    /// The token file or the authorization policy cannot be used.
    #[error("authorization: {0}")]
    Auth(#[from] AuthError),
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
    grpc_health_addr: Option<SocketAddr>,
    http_addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    /// Cancelled to ask for a graceful shutdown (a signal, or a test).
    shutdown: CancellationToken,
    /// Cancelled by [`Application::run_until_stopped`] once health says
    /// NOT_SERVING: listeners stop accepting, connections get GOAWAY, streams end.
    drain: CancellationToken,
    /// gRPC health and `/readyz`, turned NOT_SERVING first.
    gate: HealthGate,
    grace: Duration,
    server: JoinHandle<std::io::Result<()>>,
    http_server: JoinHandle<std::io::Result<()>>,
    event_log: Arc<dyn EventLog>,
    rate_limiter: Option<Arc<RateLimiter>>,
    /// Its fulfillment attempts run apart from the RPCs; shutdown waits for them.
    fulfiller: Fulfiller,
}

impl Application {
    /// Binds the listeners and starts serving; health reports SERVING once all is up
    /// (EventStream once the bus, if any, is reachable).
    pub async fn build(settings: Settings) -> Result<Self, AppError> {
        // why: first, so what start-up records (the NATS connection) is kept.
        let metrics = settings.metrics.enabled.then(Metrics::install);
        // why: unusable TLS or policy files stop start-up before anything listens.
        let tls = match settings.security.tls.clone() {
            Some(tls) => Some(Arc::new(ServerTls::load(tls)?)),
            None => None,
        };
        let authorizer = Arc::new(Authorizer::load(settings.security.auth.clone())?);
        let (listener, grpc_addr) = bind(&settings.grpc_addr).await?;
        let (http_listener, http_addr) = bind(&settings.http_addr).await?;
        let health_listener = match &settings.security.grpc_health_addr {
            Some(addr) => Some(bind(addr).await?),
            None => None,
        };
        let grpc_health_addr = health_listener.as_ref().map(|(_, addr)| *addr);
        let metrics_listener = match (&metrics, &settings.metrics.addr) {
            (Some(_), Some(addr)) => Some(bind(addr).await?),
            _ => None,
        };
        let metrics_addr = metrics_listener.as_ref().map(|(_, addr)| *addr);

        let client = Client::new(ClientConfig {
            base_url: settings.dr_base_url.clone(),
            api_key: settings.dr_api_key.clone(),
            api_version: settings.dr_api_version.clone(),
            max_timeout: settings.upstream_timeout,
            retry: settings.retry,
            // why: until the replicas can count each other, assume the configured
            // number share the key.
            rate_limit: settings
                .upstream_rate_limit
                .map(|budget| replica_share(budget, settings.upstream_rate_limit_replicas)),
        })?;
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        // why: the typed payload comes from the core's conversions, injected so
        // `events` does not depend on `grpc`.
        let encoder = EventEncoder::with_payload_decoder(Arc::new(event_stream::decode_payload));
        let shutdown = CancellationToken::new();
        let drain = CancellationToken::new();
        let Backends {
            event_log,
            idempotency,
            bus,
            group_store,
        } = build_backends(&settings, encoder.clone(), clock.clone(), &shutdown);
        if let (Some(bus), Some(config)) = (&bus, &settings.bus) {
            // why: with NATS up (the usual case) everything turns SERVING together.
            let waited = tokio::time::timeout(config.startup_timeout, bus.wait_connected()).await;
            if !matches!(waited, Ok(Some(_))) {
                tracing::warn!(
                    waited = ?config.startup_timeout,
                    "NATS not reachable yet: serving what does not need it; EventStream (Subscribe, Consume, \
                     consumer groups), webhooks and idempotent writes answer UNAVAILABLE until it connects \
                     (retrying in the background)"
                );
            }
        }
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
            tracing::warn!(
                "webhooks disabled (--webhooks-disabled): events arrive only through backfill"
            );
        }
        let verifier = SignatureVerifier::new(
            settings.webhook_secrets.clone(),
            settings.webhook_tolerance,
            clock.clone(),
        );
        let health_reporter = tonic_health::server::HealthReporter::new();
        // why: health `Watch` streams end at the drain (grpc/health.rs), or one
        // watcher would hold a graceful shutdown for the whole grace period.
        let health_service = grpc_health::service(health_reporter.clone(), drain.clone());
        let gate = HealthGate::new(health_reporter, bus.is_some()).await;
        let webhook_state = WebhookState::new(
            verifier,
            event_log.clone(),
            gate.clone(),
            WebhookConfig {
                max_body_bytes: settings.webhook_max_body,
                body_timeout: settings.webhook_body_timeout,
                enabled: !settings.webhook_secrets.is_empty(),
                ..WebhookConfig::default()
            },
        );
        let body_limit = webhook_state.body_limit();
        if let Some(connected) = bus.as_ref().and_then(DeferredBus::connected) {
            lower_body_limit(&body_limit, connected.bus.max_event_bytes());
        }
        let mut webhook_router = webhook::router(webhook_state);
        let messages = MessageSettings::new(
            settings.grpc.max_receive_message_size,
            settings.grpc.max_send_message_size,
            settings.grpc.compress_responses,
        );
        let event_stream = EventStreamServer::with_messages(
            EventStreamApi::new(event_log.clone(), client.clone(), encoder, clock.clone())
                // why: Subscribe and Consume streams never end by themselves; they end
                // at the drain (crate::shutdown, step 2), not before NOT_SERVING.
                .with_shutdown(drain.clone())
                .with_groups(groups),
            messages,
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

        // Both serve the API, health and the google.rpc error model (grpc/reflection.rs).
        let reflection_v1 = reflection::v1()?;
        // why: grpcurl 1.8, grpcui, Postman and Python's reflection client speak only v1alpha.
        let reflection_v1alpha = reflection::v1alpha()?;

        // why: the health-only listener answers from the same reporter, so probes on
        // either port see the same statuses.
        let health_only = Routes::new(with_messages!(health_service.clone(), messages));
        let routes = Routes::new(with_messages!(health_service, messages))
            .add_service(with_messages!(reflection_v1, messages))
            .add_service(with_messages!(reflection_v1alpha, messages))
            .add_service(with_messages!(
                FulfillmentServiceServer::new(FulfillmentApi::new(
                    client.clone(),
                    fulfiller.clone(),
                )),
                messages
            ))
            .add_service(with_messages!(
                ChargeServiceServer::new(
                    ChargeApi::new(client.clone(), fulfiller.clone())
                        .with_events(event_log.clone())
                ),
                messages
            ))
            .add_service(event_stream);

        let connections = ConnectionSettings {
            // why: hyper's default would let one client open unbounded streams (each
            // Subscribe holds a task and buffers) on a single connection.
            max_concurrent_streams: MAX_STREAMS_PER_CONNECTION,
            keepalive_interval: settings.grpc.keepalive_interval,
            keepalive_timeout: settings.grpc.keepalive_timeout,
            max_connection_age: settings.grpc.max_connection_age,
            max_connection_age_grace: settings.grpc.max_connection_age_grace,
            max_request_message_size: settings.grpc.max_receive_message_size,
        };
        let server = tokio::spawn(grpc::server::serve(
            listener,
            tls.clone(),
            routes,
            // why: before any service: callers are identified and checked against the
            // policy first (auth/), and the caller rides in the request extensions.
            Some(AuthLayer::new(authorizer.clone())),
            RpcMetricsLayer::new(metrics.as_ref()),
            connections.clone(),
            // why: every listener starts its graceful shutdown on the drain, which
            // `run_until_stopped` starts only after health says NOT_SERVING.
            drain.clone().cancelled_owned(),
        ));
        if let Some(tls) = &tls {
            tls.watch(settings.security.reload_interval, shutdown.clone());
        }
        authorizer.watch(settings.security.reload_interval, shutdown.clone());
        authorizer.log_startup(tls.as_ref().is_some_and(|t| t.verifies_clients()));
        if let Some((health_listener, _)) = health_listener {
            // why: plaintext and without the authorization layer: it serves nothing
            // but health, for probes that can neither speak TLS nor authenticate.
            tokio::spawn(serve_health_only(
                health_listener,
                health_only,
                RpcMetricsLayer::new(metrics.as_ref()),
                connections,
                drain.clone(),
            ));
        }
        let connection_limits = ConnectionLimits {
            max_connections: settings.webhook_max_connections,
            idle_timeout: settings.webhook_idle_timeout,
            header_timeout: settings.webhook_header_timeout,
        };
        if let Some(metrics) = &metrics {
            let scrape = metrics.router(crate::events::gauges::collector(event_log.clone()));
            match metrics_listener {
                // why: also with --webhooks-disabled: the listener still serves the
                // probes, and the metrics with them.
                None => webhook_router = webhook_router.merge(scrape),
                // why: scraped until the drain, like the probes on the HTTP listener.
                Some((listener, _)) => {
                    tokio::spawn(serve_metrics(
                        listener,
                        scrape,
                        connection_limits,
                        drain.clone(),
                    ));
                }
            }
        }
        let http_server = tokio::spawn(webhook::serve(
            http_listener,
            webhook_router,
            connection_limits,
            drain.clone().cancelled_owned(),
        ));
        let rate_limiter = client.rate_limiter();
        let backfill = settings.backfill_enabled.then_some(backfill);
        match &bus {
            None => {
                if let Some(backfill) = backfill {
                    tokio::spawn(backfill.run(drain.clone().cancelled_owned()));
                }
            }
            Some(bus) => {
                gate.set_bus_ok(bus.connected().is_some()).await;
                tokio::spawn(watch_bus_health(
                    event_log.clone(),
                    gate.clone(),
                    drain.clone(),
                ));
                let pacing = rate_limiter.clone().zip(settings.upstream_rate_limit).map(
                    |(limiter, budget)| {
                        (
                            limiter,
                            PacingConfig::new(budget, settings.upstream_rate_limit_replicas),
                        )
                    },
                );
                tokio::spawn(when_bus_connected(
                    bus.clone(),
                    body_limit,
                    backfill,
                    pacing,
                    shutdown.clone(),
                ));
            }
        }
        gate.set_started().await;
        tracing::info!(%grpc_addr, %http_addr, tls = tls.is_some(), ?grpc_health_addr, metrics = metrics.is_some(), ?metrics_addr, dr_base_url = %settings.dr_base_url, shared_bus = bus.is_some(), "gateway serving");
        Ok(Self {
            grpc_addr,
            grpc_health_addr,
            http_addr,
            metrics_addr,
            shutdown,
            drain,
            gate,
            grace: settings.shutdown_grace,
            server,
            http_server,
            event_log,
            rate_limiter,
            fulfiller,
        })
    }

    /// The bound webhook / health HTTP address.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The bound address of the metrics listener, when `/metrics` has one of its own
    /// (else it is on [`http_addr`](Self::http_addr)).
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The event log the webhook appends to (tests inspect it).
    pub fn event_log(&self) -> Arc<dyn EventLog> {
        self.event_log.clone()
    }

    /// The bound gRPC address.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// The bound plaintext health-only gRPC address, if one was asked for.
    pub fn grpc_health_addr(&self) -> Option<SocketAddr> {
        self.grpc_health_addr
    }

    /// The limiter pacing this replica's DR calls (its share of the key's budget);
    /// `None` when pacing is off.
    pub fn upstream_rate_limiter(&self) -> Option<Arc<RateLimiter>> {
        self.rate_limiter.clone()
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
            joined = &mut grpc => stopped_early("gRPC", flatten(joined, AppError::Serve)),
            joined = &mut http => stopped_early("webhook HTTP", flatten(joined, AppError::Http)),
        };
        self.shutdown.cancel();
        let deadline = std::time::Instant::now() + self.grace;

        // 1. NOT_SERVING, before anything closes, so health checkers move traffic.
        self.gate.set_draining().await;
        // 2. Drain: no new connections or calls; streams end; in-flight calls go on.
        self.drain.cancel();
        tracing::info!(grace = ?self.grace, "shutting down: NOT_SERVING, listeners closed, streams ended; waiting for in-flight calls");
        // 3. Wait for both servers' connections to close, up to the grace.
        let servers = async {
            if !grpc.is_terminated() {
                result = std::mem::replace(&mut result, Ok(()))
                    .and(flatten((&mut grpc).await, AppError::Serve));
            }
            if !http.is_terminated() {
                result = std::mem::replace(&mut result, Ok(()))
                    .and(flatten((&mut http).await, AppError::Http));
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

/// Binds `addr` (resolving a host name) and returns the listener and its address.
async fn bind(addr: &ListenAddr) -> Result<(TcpListener, SocketAddr), AppError> {
    let failed = |source| AppError::Bind {
        addr: addr.to_string(),
        source,
    };
    let listener = addr.bind().await.map_err(failed)?;
    let local = listener.local_addr().map_err(failed)?;
    Ok((listener, local))
}

/// A server ended before shutdown was asked for: its error, or [`AppError::Stopped`].
fn stopped_early(which: &'static str, result: Result<(), AppError>) -> Result<(), AppError> {
    let error = result.err().unwrap_or(AppError::Stopped(which));
    tracing::error!(server = which, error = %error, "a server stopped on its own; shutting the rest down");
    Err(error)
}

fn flatten(
    result: Result<std::io::Result<()>, tokio::task::JoinError>,
    error: fn(std::io::Error) -> AppError,
) -> Result<(), AppError> {
    match result {
        Ok(inner) => inner.map_err(error),
        Err(e) if e.is_cancelled() => Ok(()),
        Err(e) => {
            tracing::error!(error = %e, "server task failed");
            Ok(())
        }
    }
}

/// Serves only `grpc.health.v1` (`routes`) in plaintext on `listener` until
/// `shutdown`, for probes that cannot speak TLS (Kubernetes' gRPC probe); nothing
/// else is reachable through it. Same loop, keepalive, limits and telemetry as the
/// main listener; only TLS and the authorization layer are left out.
async fn serve_health_only(
    listener: TcpListener,
    routes: Routes,
    metrics: RpcMetricsLayer,
    connections: ConnectionSettings,
    shutdown: CancellationToken,
) {
    let served = grpc::server::serve(
        listener,
        None,
        routes,
        None,
        metrics,
        connections,
        shutdown.cancelled_owned(),
    )
    .await;
    if let Err(e) = served {
        tracing::error!(error = %e, "the health-only gRPC listener failed");
    }
}

/// Serves `/metrics` alone on `listener` until `shutdown` (`--metrics-addr`), with
/// the HTTP listener's connection limits.
async fn serve_metrics(
    listener: TcpListener,
    router: axum::Router,
    limits: ConnectionLimits,
    shutdown: CancellationToken,
) {
    if let Err(e) = webhook::serve(listener, router, limits, shutdown.cancelled_owned()).await {
        tracing::error!(error = %e, "the metrics listener failed");
    }
}

/// The state replicas share (or, in one process, keep to themselves).
struct Backends {
    event_log: Arc<dyn EventLog>,
    idempotency: Arc<dyn IdempotencyStore>,
    /// The JetStream backends, in JetStream mode (perhaps not connected yet).
    bus: Option<DeferredBus>,
    /// Consumer group state (in JetStream mode, on the bus once connected).
    group_store: Arc<dyn GroupStore>,
}

/// The webhook body limit, lowered to what the bus can store so an oversized event
/// gets a clear 413 instead of 503s DR would retry for days.
fn lower_body_limit(limit: &BodyLimit, max_event_bytes: usize) {
    let configured = limit.get();
    if max_event_bytes < configured {
        tracing::info!(
            configured,
            max = max_event_bytes,
            "webhook body limit lowered to what NATS accepts per message (raise max_payload on the server to allow more)"
        );
        limit.lower_to(max_event_bytes);
    }
}

/// What waits for the bus: the body limit it dictates, backfill (which needs the
/// log) and sharing DR's rate limit with the other replicas.
async fn when_bus_connected(
    bus: DeferredBus,
    body_limit: BodyLimit,
    backfill: Option<Backfill>,
    pacing: Option<(Arc<RateLimiter>, PacingConfig)>,
    shutdown: CancellationToken,
) {
    let connected = tokio::select! {
        connected = bus.wait_connected() => connected,
        () = shutdown.cancelled() => None,
    };
    let Some(connected) = connected else { return };
    lower_body_limit(&body_limit, connected.bus.max_event_bytes());
    if let Some(backfill) = backfill {
        tokio::spawn(backfill.run(shutdown.clone().cancelled_owned()));
    }
    if let Some((limiter, config)) = pacing {
        tokio::spawn(pacing::run(
            connected.bus.clone(),
            limiter,
            config,
            shutdown,
        ));
    }
}

/// THE place that picks the backends: in memory without `--bus-url`, JetStream with
/// it (connecting in the background).
fn build_backends(
    settings: &Settings,
    encoder: EventEncoder,
    clock: Arc<dyn Clock>,
    shutdown: &CancellationToken,
) -> Backends {
    let Some(bus_config) = settings.bus.clone() else {
        return Backends {
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
            bus: None,
            group_store: Arc::new(MemoryGroupStore::new(default_replica_name())),
        };
    };
    // why: an owner writes its record before it looks DR up and again before it
    // posts; between two writes it spends at most lookup + POST + lookup
    // (fulfillments.rs); past that, another replica may assume it died.
    let lease = settings.upstream_timeout + settings.reconcile_timeout * 2 + Duration::from_secs(5);
    let bus = DeferredBus::start(
        DeferredSettings {
            config: bus_config,
            idempotency_ttl: settings.idempotency_ttl,
            idempotency_lease: lease,
            commit_bound: settings.fulfillment_commit_bound,
            replica: default_replica_name(),
        },
        encoder,
        clock,
        shutdown.clone(),
    );
    Backends {
        event_log: bus.event_log(),
        idempotency: bus.idempotency(),
        group_store: bus.group_store(),
        bus: Some(bus),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_body_limit_is_lowered_to_what_nats_stores_never_raised() {
        let state = WebhookState::new(
            SignatureVerifier::new(Vec::new(), Duration::from_secs(1), Arc::new(SystemClock)),
            Arc::new(MemoryLog::new(
                MemoryLogConfig::default(),
                EventEncoder::default(),
                Arc::new(SystemClock),
            )),
            HealthGate::new(tonic_health::server::health_reporter().0, true).await,
            WebhookConfig::default(),
        );
        let limit = state.body_limit();
        lower_body_limit(&limit, 10 << 20);
        assert_eq!(limit.get(), crate::defaults::WEBHOOK_MAX_BODY);
        lower_body_limit(&limit, 512 << 10);
        assert_eq!(limit.get(), 512 << 10);
    }
}
