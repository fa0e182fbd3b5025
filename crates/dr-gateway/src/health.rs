//! gRPC health as the gateway reports it: SERVING only while it is not draining and
//! its shared event bus (in JetStream mode) is reachable, for the whole server (`""`)
//! and for each service by name.
//!
//! [`HealthGate`] owns the status; [`watch_bus_health`] feeds it the bus's state.

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

/// Every gRPC service name the health service reports on, besides the overall `""`.
pub const SERVICE_NAMES: &[&str] = &[
    <FulfillmentServiceServer<FulfillmentApi> as NamedService>::NAME,
    <ChargeServiceServer<ChargeApi> as NamedService>::NAME,
    <EventStreamServer as NamedService>::NAME,
];

/// The serving status shown by gRPC health: SERVING only while not draining and the
/// bus (if any) is reachable. Both inputs change under one lock, so a late bus check
/// cannot flip a draining gateway back to SERVING.
#[derive(Clone)]
pub struct HealthGate {
    reporter: HealthReporter,
    state: Arc<tokio::sync::Mutex<GateState>>,
}

#[derive(Debug)]
struct GateState {
    draining: bool,
    bus_ok: bool,
    shown: ServingStatus,
}

impl std::fmt::Debug for HealthGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // why: tonic-health's reporter implements no Debug.
        f.debug_struct("HealthGate").finish_non_exhaustive()
    }
}

impl HealthGate {
    /// A gate over `reporter`, showing NOT_SERVING until the bus is reported reachable.
    pub fn new(reporter: HealthReporter) -> Self {
        Self {
            reporter,
            state: Arc::new(tokio::sync::Mutex::new(GateState {
                draining: false,
                bus_ok: false,
                shown: ServingStatus::NotServing,
            })),
        }
    }

    /// Records whether the shared bus is reachable (always true without one).
    pub async fn set_bus_ok(&self, ok: bool) {
        let mut st = self.state.lock().await;
        st.bus_ok = ok;
        self.apply(&mut st).await;
    }

    /// Shutdown started: NOT_SERVING from now on, whatever the bus says.
    pub async fn set_draining(&self) {
        let mut st = self.state.lock().await;
        st.draining = true;
        self.apply(&mut st).await;
    }

    async fn apply(&self, st: &mut GateState) {
        let want = if st.bus_ok && !st.draining {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        if want != st.shown || st.draining {
            set_all(&self.reporter, want).await;
            st.shown = want;
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
    let mut was_ok = true;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let ok = matches!(
            tokio::time::timeout(BUS_HEALTH_INTERVAL * 4, log.check_ready()).await,
            Ok(Ok(()))
        );
        if ok != was_ok {
            if ok {
                tracing::info!("event bus reachable again: SERVING");
            } else {
                tracing::warn!("event bus unreachable: NOT_SERVING until it is back");
            }
            was_ok = ok;
        }
        gate.set_bus_ok(ok).await;
    }
}

/// Sets `status` for the whole server and every service.
pub async fn set_all(health: &HealthReporter, status: ServingStatus) {
    health.set_service_status("", status).await;
    for name in SERVICE_NAMES {
        health.set_service_status(*name, status).await;
    }
}
