//! Builds the gateway from [`Settings`]: binds the listeners (so tests can use port 0
//! and read the ports back), wires services, and runs until the shutdown token fires.
//!
//! Two listeners: gRPC (services, health, reflection) and HTTP (DR webhooks,
//! `/healthz`, `/readyz`, `/metrics`). Both share one event log: the webhook appends,
//! the EventStream and ChargeService read. `--metrics-addr` moves `/metrics` to a
//! listener of its own.
//!
//! Every RPC passes the telemetry layers ([`crate::telemetry`]: server span and
//! request id, access log, metrics), then the authorization layer.
//!
//! The gRPC listener speaks TLS when configured ([`crate::tls`], reloaded on change)
//! and every call passes the authorization layer ([`crate::auth`]) first; an optional
//! plaintext listener serves only health, for probes that cannot speak TLS.
//!
//! State replicas must share — the event log and the CreateFulfillment idempotency
//! records — is chosen in one place, [`build_backends`]: in memory for one process,
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

use crate::auth::{AuthError, AuthLayer, Authorizer};
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
use crate::grpc::reflection;
use crate::health::{self, HealthGate};
use crate::pb::v1::charge_service_server::ChargeServiceServer;
use crate::pb::v1::fulfillment_service_server::FulfillmentServiceServer;
use crate::telemetry::{AccessLogLayer, Metrics, RpcMetricsLayer, RpcSpanLayer};
use crate::tls::{ServerTls, TlsError};
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
    /// The gRPC listener's TLS certificate, key or client CA cannot be used.
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
    /// The token file or the authorization policy cannot be used.
    #[error("authorization: {0}")]
    Auth(#[from] AuthError),
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
    shutdown: CancellationToken,
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
        // why: first, so what start-up records (the NATS connection) is kept.
        let metrics = settings.metrics.enabled.then(Metrics::install);
        // why: unusable TLS or policy files stop start-up before anything listens.
        let tls = match settings.security.tls.clone() {
            Some(tls) => Some(Arc::new(ServerTls::load(tls)?)),
            None => None,
        };
        let authorizer = Arc::new(Authorizer::load(settings.security.auth.clone())?);
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
        let mut webhook_router = webhook::router(WebhookState::new(
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
                .with_shutdown(shutdown.clone()),
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
        // Both serve the API, health and the google.rpc error model (grpc/reflection.rs).
        let reflection_v1 = reflection::v1()?;
        // why: grpcurl 1.8, grpcui, Postman and Python's reflection client speak only v1alpha.
        let reflection_v1alpha = reflection::v1alpha()?;

        let health_only = health_service.clone();
        let router = Server::builder()
            // why: outermost, so the span, the request id and the access log cover the
            // whole call, authorization refusals included (telemetry/).
            .layer(RpcSpanLayer::new())
            .layer(AccessLogLayer::new())
            .layer(RpcMetricsLayer::new(metrics.as_ref()))
            // why: before any service: callers are identified and checked against the
            // policy first (auth/), and the caller rides in the request extensions.
            .layer(AuthLayer::new(authorizer.clone()))
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
        let server = match &tls {
            Some(tls) => tokio::spawn(
                router.serve_with_incoming_shutdown(tls.incoming(incoming, shutdown.clone()), stop),
            ),
            None => tokio::spawn(router.serve_with_incoming_shutdown(incoming, stop)),
        };
        if let Some(tls) = &tls {
            tls.watch(settings.security.reload_interval, shutdown.clone());
        }
        authorizer.watch(settings.security.reload_interval, shutdown.clone());
        authorizer.log_startup(tls.as_ref().is_some_and(|t| t.verifies_clients()));
        let grpc_health_addr = match settings.security.grpc_health_addr {
            Some(addr) => Some(serve_health_only(addr, health_only, shutdown.clone()).await?),
            None => None,
        };
        let http_stop = {
            let shutdown = shutdown.clone();
            async move {
                shutdown.cancelled().await;
                // why: /readyz fails first so DR's traffic is steered elsewhere while
                // in-flight deliveries finish (unstored ones are re-sent by DR).
                readiness.set_draining();
            }
        };
        let mut metrics_addr = None;
        if let Some(metrics) = &metrics {
            let scrape = metrics.router(crate::events::gauges::collector(event_log.clone()));
            match settings.metrics.addr {
                None => webhook_router = webhook_router.merge(scrape),
                Some(addr) => {
                    metrics_addr = Some(serve_metrics(addr, scrape, shutdown.clone()).await?);
                }
            }
        }
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
        tracing::info!(%grpc_addr, %http_addr, tls = tls.is_some(), ?grpc_health_addr, metrics = metrics.is_some(), ?metrics_addr, dr_base_url = %settings.dr_base_url, shared_bus = shared, "gateway serving");
        Ok(Self {
            grpc_addr,
            grpc_health_addr,
            http_addr,
            metrics_addr,
            shutdown,
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

    /// Cancel this to shut the gateway down gracefully.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Runs until the shutdown token fires, then drains for at most the grace period:
    /// in-flight RPCs and streams, then the fulfillment attempts still running (they
    /// outlive the RPCs that started them).
    pub async fn run_until_stopped(self) -> Result<(), AppError> {
        let mut server = self.server;
        let mut http_server = self.http_server;
        tokio::select! {
            result = &mut server => return flatten(result),
            result = &mut http_server => return flatten_http(result),
            () = self.shutdown.cancelled() => {}
        }
        let until = std::time::Instant::now() + self.grace;
        let drain = async {
            let grpc = (&mut server).await;
            let http = (&mut http_server).await;
            flatten(grpc).and(flatten_http(http))
        };
        let result = match tokio::time::timeout(self.grace, drain).await {
            Ok(result) => result,
            Err(_) => {
                tracing::warn!(grace = ?self.grace, "drain took longer than the grace period; closing the rest");
                server.abort();
                http_server.abort();
                Ok(())
            }
        };
        // why: an attempt cut off mid-POST leaves an outcome nobody records; let
        // each one finish and store its result (or its unknown outcome) first.
        let left = self.fulfiller.wait_for_attempts(until).await;
        if left > 0 {
            tracing::warn!(attempts = left, grace = ?self.grace, "fulfillment attempts still running at the end of the grace period; their outcome is not recorded");
        }
        result
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

/// Serves only `grpc.health.v1` in plaintext on `addr` until `shutdown`, for probes
/// that cannot speak TLS (Kubernetes' gRPC probe). It reports what the main
/// listener's health service reports (the same reporter), and nothing else is
/// reachable through it.
async fn serve_health_only(
    addr: SocketAddr,
    health: tonic_health::pb::health_server::HealthServer<
        impl tonic_health::pb::health_server::Health,
    >,
    shutdown: CancellationToken,
) -> Result<SocketAddr, AppError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| AppError::Bind { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| AppError::Bind { addr, source })?;
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    tokio::spawn(async move {
        let served = Server::builder()
            .add_service(health)
            .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "the health-only gRPC listener failed");
        }
    });
    Ok(bound)
}

/// Serves `/metrics` alone on `addr` until `shutdown` (`--metrics-addr`).
async fn serve_metrics(
    addr: SocketAddr,
    router: axum::Router,
    shutdown: CancellationToken,
) -> Result<SocketAddr, AppError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| AppError::Bind { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| AppError::Bind { addr, source })?;
    tokio::spawn(async move {
        if let Err(e) = webhook::serve(listener, router, shutdown.cancelled_owned()).await {
            tracing::error!(error = %e, "the metrics listener failed");
        }
    });
    Ok(bound)
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
