//! gRPC health as the gateway reports it, per service, and the same answers for the
//! HTTP probes (`/readyz`, `/healthz`).
//!
//! [`HealthGate`] owns the status; [`watch_bus_health`] feeds it the bus's state.
//!
//! # What each name means
//! | health name | SERVING while | needs |
//! |---|---|---|
//! | `""` (the whole server: the readiness probe) | started and not draining | DR settings |
//! | `digitalriver.gateway.v1.FulfillmentService` | started and not draining | DR settings |
//! | `digitalriver.gateway.v1.ChargeService` | started and not draining | DR settings |
//! | `digitalriver.gateway.v1.EventStream` | as above, and the event log is reachable | the bus, in JetStream mode |
//!
//! EventStream's status covers Consume and the consumer group RPCs too: their
//! state is on the same bus, opened in the same connection round as the event log
//! (`bus::deferred`), so the log's check answers for both.
//!
//! A NATS outage therefore leaves a replica ready: reads and DR lookups keep working
//! while everything that needs the bus — Subscribe, Consume and the consumer group
//! RPCs, webhooks, and the idempotency records of CreateFulfillment / CaptureItems /
//! CancelItems with a `request_id` — answers UNAVAILABLE with `RetryInfo` (webhooks:
//! 503, which DR retries). Taking
//! every replica out of its Service for an outage they all share would only turn
//! those reads away too.
//!
//! The plaintext health-only listener (`--grpc-health-addr`) serves the same
//! reporter, so it answers exactly what the main listener does.
//!
//! Liveness is none of these: it is `/livez` on the HTTP listener, which answers
//! while the process and its runtime do and never asks a dependency.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tonic::server::NamedService;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

use crate::events::EventLog;
use crate::grpc::charge::ChargeApi;
use crate::grpc::event_stream::EventStreamServer;
use crate::grpc::fulfillment::FulfillmentApi;
use crate::pb::v1::charge_service_server::ChargeServiceServer;
use crate::pb::v1::fulfillment_service_server::FulfillmentServiceServer;

/// How often the bus-health watcher checks JetStream.
pub const BUS_HEALTH_INTERVAL: Duration = Duration::from_millis(500);

/// The FulfillmentService's health name.
pub const FULFILLMENT_SERVICE: &str =
    <FulfillmentServiceServer<FulfillmentApi> as NamedService>::NAME;
/// The ChargeService's health name.
pub const CHARGE_SERVICE: &str = <ChargeServiceServer<ChargeApi> as NamedService>::NAME;
/// The EventStream's health name.
pub const EVENT_STREAM: &str = <EventStreamServer as NamedService>::NAME;

/// Every gRPC service name the health service reports on, besides the overall `""`.
pub const SERVICE_NAMES: &[&str] = &[FULFILLMENT_SERVICE, CHARGE_SERVICE, EVENT_STREAM];

/// Every name health answers for, the overall `""` first.
pub const HEALTH_NAMES: &[&str] = &["", FULFILLMENT_SERVICE, CHARGE_SERVICE, EVENT_STREAM];

/// The event bus as health sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BusHealth {
    /// No shared bus (one process, in-memory event log).
    NotUsed,
    /// JetStream mode, and the event log answers.
    Reachable,
    /// JetStream mode, and the event log does not answer (or never connected yet).
    Unreachable,
}

impl BusHealth {
    /// The form `/readyz` shows.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotUsed => "not_used",
            Self::Reachable => "reachable",
            Self::Unreachable => "unreachable",
        }
    }
}

/// What health shows right now, for every name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthSnapshot {
    /// The bus's state.
    pub bus: BusHealth,
    /// True once shutdown started.
    pub draining: bool,
    /// `(name, serving)` for each of [`HEALTH_NAMES`], in that order.
    pub services: Vec<(&'static str, bool)>,
}

impl HealthSnapshot {
    /// Whether `name` is SERVING; `None` for a name health does not know.
    pub fn serving(&self, name: &str) -> Option<bool> {
        self.services
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, serving)| *serving)
    }
}

/// The serving status of every name, from its inputs (started, draining, bus). All
/// inputs change under one lock, so a late bus check cannot flip a draining gateway
/// back to SERVING.
#[derive(Clone)]
pub struct HealthGate {
    reporter: HealthReporter,
    state: Arc<tokio::sync::Mutex<GateState>>,
}

#[derive(Debug)]
struct GateState {
    started: bool,
    draining: bool,
    bus: BusHealth,
    /// What the reporter shows, per name of [`HEALTH_NAMES`].
    shown: Vec<Option<ServingStatus>>,
}

impl GateState {
    fn serving(&self, name: &str) -> bool {
        let up = self.started && !self.draining;
        if name == EVENT_STREAM {
            up && self.bus != BusHealth::Unreachable
        } else {
            up
        }
    }
}

impl std::fmt::Debug for HealthGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // why: tonic-health's reporter implements no Debug.
        f.debug_struct("HealthGate").finish_non_exhaustive()
    }
}

impl HealthGate {
    /// A gate over `reporter`, showing NOT_SERVING everywhere until
    /// [`set_started`](Self::set_started). With `uses_bus`, the bus counts as
    /// unreachable until [`set_bus_ok`](Self::set_bus_ok) says otherwise.
    pub async fn new(reporter: HealthReporter, uses_bus: bool) -> Self {
        let gate = Self {
            reporter,
            state: Arc::new(tokio::sync::Mutex::new(GateState {
                started: false,
                draining: false,
                bus: if uses_bus {
                    BusHealth::Unreachable
                } else {
                    BusHealth::NotUsed
                },
                shown: vec![None; HEALTH_NAMES.len()],
            })),
        };
        gate.apply(&mut *gate.state.lock().await).await;
        gate
    }

    /// Every service is wired and the listeners are serving.
    pub async fn set_started(&self) {
        let mut st = self.state.lock().await;
        st.started = true;
        self.apply(&mut st).await;
    }

    /// Records whether the shared bus is reachable (ignored without one).
    pub async fn set_bus_ok(&self, ok: bool) {
        let mut st = self.state.lock().await;
        if st.bus != BusHealth::NotUsed {
            st.bus = if ok {
                BusHealth::Reachable
            } else {
                BusHealth::Unreachable
            };
        }
        self.apply(&mut st).await;
    }

    /// Shutdown started: NOT_SERVING everywhere from now on, whatever the bus says.
    pub async fn set_draining(&self) {
        let mut st = self.state.lock().await;
        st.draining = true;
        self.apply(&mut st).await;
    }

    /// What health shows now.
    pub async fn snapshot(&self) -> HealthSnapshot {
        let st = self.state.lock().await;
        HealthSnapshot {
            bus: st.bus,
            draining: st.draining,
            services: HEALTH_NAMES
                .iter()
                .map(|name| (*name, st.serving(name)))
                .collect(),
        }
    }

    async fn apply(&self, st: &mut GateState) {
        for (i, name) in HEALTH_NAMES.iter().enumerate() {
            let want = if st.serving(name) {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            // why: once draining, re-send even unchanged statuses, so every Watch
            // stream hears NOT_SERVING before connections close.
            if st.shown[i] != Some(want) || st.draining {
                self.reporter.set_service_status(*name, want).await;
                st.shown[i] = Some(want);
            }
        }
    }
}

/// Checks the event bus every [`BUS_HEALTH_INTERVAL`] and mirrors it into gRPC
/// health, until shutdown. Webhooks meanwhile get 503 from the log itself (DR
/// retries), so nothing is acknowledged while the bus is away.
pub async fn watch_bus_health(
    log: Arc<dyn EventLog>,
    gate: HealthGate,
    shutdown: CancellationToken,
) {
    let mut ticker = tokio::time::interval(BUS_HEALTH_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut was_ok = None;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let ok = matches!(
            tokio::time::timeout(BUS_HEALTH_INTERVAL * 4, log.check_ready()).await,
            Ok(Ok(()))
        );
        if was_ok != Some(ok) {
            if ok {
                tracing::info!("event bus reachable: EventStream SERVING");
            } else {
                tracing::warn!(
                    "event bus unreachable: EventStream NOT_SERVING, webhooks 503 and \
                     idempotent writes UNAVAILABLE until it is back; reads go on"
                );
            }
            was_ok = Some(ok);
        }
        gate.set_bus_ok(ok).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic_health::pb::health_client::HealthClient;

    async fn statuses(gate: &HealthGate) -> Vec<bool> {
        gate.snapshot()
            .await
            .services
            .into_iter()
            .map(|(_, s)| s)
            .collect()
    }

    #[tokio::test]
    async fn a_bus_outage_takes_only_the_event_stream_out() {
        let (reporter, _service) = tonic_health::server::health_reporter();
        let gate = HealthGate::new(reporter, true).await;
        assert_eq!(statuses(&gate).await, [false, false, false, false]);
        gate.set_started().await;
        // "", Fulfillment, Charge serve; EventStream waits for the bus.
        assert_eq!(statuses(&gate).await, [true, true, true, false]);
        gate.set_bus_ok(true).await;
        assert_eq!(statuses(&gate).await, [true, true, true, true]);
        gate.set_bus_ok(false).await;
        assert_eq!(statuses(&gate).await, [true, true, true, false]);
        gate.set_bus_ok(true).await;
        gate.set_draining().await;
        gate.set_bus_ok(true).await;
        assert_eq!(statuses(&gate).await, [false, false, false, false]);
        assert!(gate.snapshot().await.draining);
    }

    #[tokio::test]
    async fn without_a_bus_everything_serves_once_started() {
        let (reporter, _service) = tonic_health::server::health_reporter();
        let gate = HealthGate::new(reporter, false).await;
        gate.set_started().await;
        gate.set_bus_ok(false).await;
        let snapshot = gate.snapshot().await;
        assert_eq!(snapshot.bus, BusHealth::NotUsed);
        assert_eq!(snapshot.serving(EVENT_STREAM), Some(true));
        assert_eq!(snapshot.serving("no.such.Service"), None);
    }

    #[tokio::test]
    async fn the_reporter_shows_what_the_gate_decides() {
        let (reporter, service) = tonic_health::server::health_reporter();
        let gate = HealthGate::new(reporter, true).await;
        gate.set_started().await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
        );
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut client = HealthClient::new(channel);
        for (name, want) in [("", 1), (FULFILLMENT_SERVICE, 1), (EVENT_STREAM, 2)] {
            let status = client
                .check(tonic_health::pb::HealthCheckRequest {
                    service: name.into(),
                })
                .await
                .unwrap()
                .into_inner()
                .status;
            assert_eq!(status, want, "{name:?} (1 SERVING, 2 NOT_SERVING)");
        }
    }
}
