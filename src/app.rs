//! Builds the gateway from [`Settings`]: binds the listeners (so tests can use port 0
//! and read the ports back), wires services, and runs until the shutdown token fires.
//!
//! Two listeners: gRPC (services, health, reflection) and HTTP (DR webhooks,
//! `/healthz`, `/readyz`). Both share one event log: the webhook appends, the
//! EventStream and ChargeService read.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::server::NamedService;
use tonic::transport::{server::TcpIncoming, Server};
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

use crate::clock::{Clock, SystemClock};
use crate::config::Settings;
use crate::digital_river::{self, Client, ClientConfig};
use crate::domain::fulfilments::Fulfiller;
use crate::domain::idempotency::IdempotencyStore;
use crate::events::{Backfill, BackfillConfig, EventEncoder, EventLog, MemoryLog, MemoryLogConfig};
use crate::grpc::charge::ChargeApi;
use crate::grpc::event_stream::{self, EventStreamApi, EventStreamServer};
use crate::grpc::fulfillment::FulfillmentApi;
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
}

/// Every gRPC service name the health service reports on, besides the overall `""`.
pub const SERVICE_NAMES: &[&str] = &[
    <FulfillmentServiceServer<FulfillmentApi> as NamedService>::NAME,
    <ChargeServiceServer<ChargeApi> as NamedService>::NAME,
    <EventStreamServer as NamedService>::NAME,
];

/// A running gateway.
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
        })?;
        let store = Arc::new(IdempotencyStore::new(
            settings.idempotency_ttl,
            settings.idempotency_max_entries,
        ));
        let fulfiller = Fulfiller::new(client.clone(), store, settings.reconcile_timeout);

        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        // why: the typed payload comes from the core's conversions, injected so
        // `events` does not depend on `grpc`.
        let encoder = EventEncoder::with_payload_decoder(Arc::new(event_stream::decode_payload));
        let event_log: Arc<dyn EventLog> = Arc::new(MemoryLog::new(
            MemoryLogConfig {
                max_events: settings.event_log_max_events,
                max_bytes: settings.event_log_max_bytes,
                ..MemoryLogConfig::default()
            },
            encoder.clone(),
            clock.clone(),
        ));
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
                max_body_bytes: settings.webhook_max_body,
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
        set_all(&health, ServingStatus::NotServing).await;
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
            let health = health.clone();
            async move {
                shutdown.cancelled().await;
                // why: load balancers must see NOT_SERVING before connections close.
                set_all(&health, ServingStatus::NotServing).await;
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
        set_all(&health, ServingStatus::Serving).await;
        tracing::info!(%grpc_addr, %http_addr, dr_base_url = %settings.dr_base_url, "gateway serving");
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

async fn set_all(health: &HealthReporter, status: ServingStatus) {
    health.set_service_status("", status).await;
    for name in SERVICE_NAMES {
        health.set_service_status(*name, status).await;
    }
}
