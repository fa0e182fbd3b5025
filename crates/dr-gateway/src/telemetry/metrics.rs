//! Prometheus metrics: the recorder, the `/metrics` endpoint, the RPC metrics layer
//! and [`names`], the one list of every metric the gateway exports.
//!
//! Instrumentation points call the `metrics` facade (`metrics::counter!(names::…)`);
//! the recorder is installed once per process ([`Metrics::install`]). Without it
//! (`--metrics false`) every such call is a no-op and the layer passes calls through.
//!
//! Every label value comes from a fixed set: method names from the served
//! descriptors (anything else is `unknown`), DR route templates (`/charges/{id}`,
//! never the id), HTTP statuses, webhook rejection reasons, the caller's policy rule
//! name (never the identity). A caller cannot make the series grow.
//!
//! Gauges that describe state (event log size and age, subscriber lag) are computed
//! when Prometheus scrapes, by the collector `app.rs` hands to [`Metrics::router`].

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock, RwLock};
use std::task::{Context, Poll};
use std::time::Instant;

use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::get;
use metrics::{Counter, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tonic::Code;
use tower::{Layer, Service};

use super::rpc::{self, CountedBody, Method, ObservedBody, RpcEnd, RpcObserver};
use crate::auth::Caller;
use crate::defaults;

/// The name of every metric; the README's table lists them with their labels.
pub mod names {
    // === gRPC server (the names go-grpc-prometheus dashboards use) ===
    /// RPCs started. Labels: `grpc_type`, `grpc_service`, `grpc_method`.
    pub const GRPC_STARTED: &str = "grpc_server_started_total";
    /// RPCs ended. Labels: `grpc_type`, `grpc_service`, `grpc_method`, `grpc_code`,
    /// `caller` (the policy rule that admitted the caller).
    pub const GRPC_HANDLED: &str = "grpc_server_handled_total";
    /// Seconds from the request to the end of the response (a stream's whole life).
    /// Labels: `grpc_type`, `grpc_service`, `grpc_method`.
    pub const GRPC_HANDLING_SECONDS: &str = "grpc_server_handling_seconds";
    /// Messages received on client-streaming RPCs. Labels as [`GRPC_STARTED`].
    pub const GRPC_MSG_RECEIVED: &str = "grpc_server_msg_received_total";
    /// Messages sent on server-streaming RPCs. Labels as [`GRPC_STARTED`].
    pub const GRPC_MSG_SENT: &str = "grpc_server_msg_sent_total";

    // === Digital River ===
    /// HTTP requests to DR (each attempt). Labels: `method`, `route` (a template,
    /// e.g. `/charges/{id}`), `status` (HTTP status, or `timeout`, `connect_error`,
    /// `connection_error`).
    pub const DR_REQUESTS: &str = "dr_gateway_dr_requests_total";
    /// Seconds per DR request (each attempt). Labels: `method`, `route`.
    pub const DR_REQUEST_SECONDS: &str = "dr_gateway_dr_request_duration_seconds";
    /// Retries of idempotent DR reads. Labels: `method`, `route`.
    pub const DR_RETRIES: &str = "dr_gateway_dr_retries_total";
    /// DR calls that waited for a slot of the gateway's own rate limit.
    pub const DR_RATE_LIMIT_WAITS: &str = "dr_gateway_dr_rate_limit_waits_total";
    /// Seconds DR calls waited for their rate-limit slot.
    pub const DR_RATE_LIMIT_WAIT_SECONDS: &str = "dr_gateway_dr_rate_limit_wait_seconds";
    /// DR calls refused because their slot came after the caller's deadline.
    pub const DR_RATE_LIMIT_REFUSALS: &str = "dr_gateway_dr_rate_limit_refusals_total";

    // === webhooks ===
    /// Webhook deliveries received (every POST to the webhook path).
    pub const WEBHOOKS_RECEIVED: &str = "dr_gateway_webhooks_received_total";
    /// Webhooks stored as new events.
    pub const WEBHOOKS_ACCEPTED: &str = "dr_gateway_webhooks_accepted_total";
    /// Webhooks acknowledged as redeliveries of stored events.
    pub const WEBHOOKS_DUPLICATES: &str = "dr_gateway_webhooks_duplicates_total";
    /// Webhooks refused. Label: `reason` (`invalid_signature`, `stale_timestamp`,
    /// `missing_signature`, `body_too_large`, `not_an_event`, …).
    pub const WEBHOOKS_REJECTED: &str = "dr_gateway_webhooks_rejected_total";
    /// Seconds from a webhook's arrival to its answer. Label: `outcome`
    /// (`accepted`, `duplicate`, `rejected`).
    pub const WEBHOOK_ACK_SECONDS: &str = "dr_gateway_webhook_ack_seconds";
    /// Unix time of the last webhook acknowledged (accepted or duplicate).
    pub const WEBHOOK_LAST_ACK_TIMESTAMP: &str =
        "dr_gateway_webhook_last_acknowledged_timestamp_seconds";

    // === event log and subscribers ===
    /// New events stored. Label: `source` (`webhook`, `backfill`).
    pub const EVENTS_STORED: &str = "dr_gateway_events_stored_total";
    /// Events the log holds (scrape time).
    pub const EVENT_LOG_EVENTS: &str = "dr_gateway_event_log_events";
    /// Bytes the log holds (scrape time; approximate in memory, the stream's in JetStream).
    pub const EVENT_LOG_BYTES: &str = "dr_gateway_event_log_bytes";
    /// Age in seconds of the oldest held event (scrape time).
    pub const EVENT_LOG_OLDEST_AGE: &str = "dr_gateway_event_log_oldest_event_age_seconds";
    /// Open Subscribe streams on this replica.
    pub const SUBSCRIBERS: &str = "dr_gateway_subscribers";
    /// Events the furthest-behind subscriber has still to read (scrape time).
    pub const SUBSCRIBER_LAG: &str = "dr_gateway_subscriber_lag_events";
    /// Seconds from storing an event to handing it to a subscriber's stream.
    pub const SUBSCRIBER_DELIVERY_SECONDS: &str = "dr_gateway_subscriber_delivery_seconds";

    // === consumer groups (label `group`, bounded by --consumer-groups-max) ===
    /// Events handed to a group's members by this replica (first and later attempts).
    pub const GROUP_DELIVERIES: &str = "dr_gateway_consumer_group_deliveries_total";
    /// Deliveries that were not an event's first (its ack deadline passed, its member
    /// left or handed it back).
    pub const GROUP_REDELIVERIES: &str = "dr_gateway_consumer_group_redeliveries_total";
    /// Events a group's members acknowledged on this replica.
    pub const GROUP_ACKS: &str = "dr_gateway_consumer_group_acks_total";
    /// Events this replica's scheduler of a group has read and not yet left behind
    /// (from the oldest unacknowledged one on; bounded by
    /// --consumer-group-max-pending).
    pub const GROUP_PENDING: &str = "dr_gateway_consumer_group_pending_events";
    /// Members of a group connected to this replica.
    pub const GROUP_MEMBERS: &str = "dr_gateway_consumer_group_members";

    // === idempotent fulfillment ===
    /// CreateFulfillment (CaptureItems, CancelItems) retries answered from the
    /// idempotency store, without DR.
    pub const IDEMPOTENCY_REPLAYS: &str = "dr_gateway_idempotency_replays_total";
    /// Lookups of a request id among an order's fulfillments in DR. Labels: `when`
    /// (`before_post`, `after_unknown_outcome`), `result` (`found`, `not_found`, `failed`).
    pub const IDEMPOTENCY_RECONCILIATIONS: &str = "dr_gateway_idempotency_reconciliations_total";
    /// How fulfillment attempts ended. Label: `outcome` (`created`, `found_in_dr`,
    /// `rejected_by_dr`, `outcome_pending`, `outcome_unknown` (no request_id, so
    /// nothing to hold), `reused_request_id`, `lookup_failed`, `store_unavailable`).
    pub const FULFILLMENT_OUTCOMES: &str = "dr_gateway_fulfillment_outcomes_total";

    // === NATS ===
    /// 1 while connected to NATS, 0 while not (JetStream mode only).
    pub const NATS_CONNECTED: &str = "dr_gateway_nats_connected";
    /// Times the NATS connection was lost.
    pub const NATS_DISCONNECTS: &str = "dr_gateway_nats_disconnects_total";

    /// Always 1. Label: `version`.
    pub const BUILD_INFO: &str = "dr_gateway_build_info";
    /// Unix time the process started recording metrics (alerts tell "no webhook
    /// since start" from "no webhook for hours").
    pub const START_TIME: &str = "dr_gateway_start_time_seconds";

    /// Every name above (histograms add `_bucket`, `_sum` and `_count` series).
    pub const ALL: &[&str] = &[
        GRPC_STARTED,
        GRPC_HANDLED,
        GRPC_HANDLING_SECONDS,
        GRPC_MSG_RECEIVED,
        GRPC_MSG_SENT,
        DR_REQUESTS,
        DR_REQUEST_SECONDS,
        DR_RETRIES,
        DR_RATE_LIMIT_WAITS,
        DR_RATE_LIMIT_WAIT_SECONDS,
        DR_RATE_LIMIT_REFUSALS,
        WEBHOOKS_RECEIVED,
        WEBHOOKS_ACCEPTED,
        WEBHOOKS_DUPLICATES,
        WEBHOOKS_REJECTED,
        WEBHOOK_ACK_SECONDS,
        WEBHOOK_LAST_ACK_TIMESTAMP,
        EVENTS_STORED,
        EVENT_LOG_EVENTS,
        EVENT_LOG_BYTES,
        EVENT_LOG_OLDEST_AGE,
        SUBSCRIBERS,
        SUBSCRIBER_LAG,
        SUBSCRIBER_DELIVERY_SECONDS,
        GROUP_DELIVERIES,
        GROUP_REDELIVERIES,
        GROUP_ACKS,
        GROUP_PENDING,
        GROUP_MEMBERS,
        IDEMPOTENCY_REPLAYS,
        IDEMPOTENCY_RECONCILIATIONS,
        FULFILLMENT_OUTCOMES,
        NATS_CONNECTED,
        NATS_DISCONNECTS,
        BUILD_INFO,
        START_TIME,
    ];
}

/// Bucket bounds of each histogram, in seconds.
const BUCKETS: [(&str, &[f64]); 5] = [
    // why: reads are one DR round trip (tens to hundreds of ms); waits for capture
    // outcomes and DR's timeouts take seconds; streams last minutes or more (+Inf).
    (
        names::GRPC_HANDLING_SECONDS,
        &[
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            60.0,
        ],
    ),
    // why: DR answers in tens to hundreds of ms; the upstream timeout is 10 s.
    (
        names::DR_REQUEST_SECONDS,
        &[0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0],
    ),
    // why: DR gives a delivery about 3 s and the gateway answers within 2 s
    // (docs/digital-river.md §4.2): the buckets resolve what matters there.
    (
        names::WEBHOOK_ACK_SECONDS,
        &[
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0,
        ],
    ),
    // why: the pacing interval is 4 ms (live) to 40 ms (test); a queue of calls waits
    // multiples of it.
    (
        names::DR_RATE_LIMIT_WAIT_SECONDS,
        &[
            0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
        ],
    ),
    // why: live events reach subscribers within milliseconds; replays from the oldest
    // event or a slow reader show hours.
    (
        names::SUBSCRIBER_DELIVERY_SECONDS,
        &[
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0, 300.0,
            3600.0,
        ],
    ),
];

/// The installed Prometheus recorder. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Metrics {
    handle: PrometheusHandle,
}

impl Metrics {
    /// Installs the process-wide recorder on the first call and returns it on every
    /// call (an in-process test runs several gateways; they share it).
    pub fn install() -> Self {
        static INSTALLED: OnceLock<Metrics> = OnceLock::new();
        INSTALLED
            .get_or_init(|| {
                let mut builder = PrometheusBuilder::new();
                for (name, buckets) in BUCKETS {
                    // Never empty, so this cannot fail.
                    builder = builder
                        .set_buckets_for_metric(Matcher::Full(name.to_owned()), buckets)
                        .unwrap_or_else(|_| PrometheusBuilder::new());
                }
                let recorder = builder.build_recorder();
                let handle = recorder.handle();
                if metrics::set_global_recorder(recorder).is_err() {
                    tracing::warn!("another metrics recorder is installed; /metrics shows only what this one records");
                }
                describe();
                metrics::gauge!(names::BUILD_INFO, "version" => env!("CARGO_PKG_VERSION"))
                    .set(1.0);
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default();
                metrics::gauge!(names::START_TIME).set(now.as_secs_f64());
                // why: a counter appears at its first increment; alerts on "no
                // webhook" need the zero before the first one.
                metrics::counter!(names::WEBHOOKS_RECEIVED).increment(0);
                metrics::counter!(names::WEBHOOKS_ACCEPTED).increment(0);
                // why: histogram samples are kept until folded into their buckets;
                // fold them regularly so memory stays flat between scrapes. A thread,
                // not a task: the recorder outlives any one runtime.
                let upkeep = handle.clone();
                let spawned = std::thread::Builder::new()
                    .name("metrics-upkeep".into())
                    .spawn(move || loop {
                        std::thread::sleep(defaults::METRICS_UPKEEP_INTERVAL);
                        upkeep.run_upkeep();
                    });
                if let Err(e) = spawned {
                    tracing::warn!(error = %e, "cannot start the metrics upkeep thread; histogram samples are folded at scrapes only");
                }
                Metrics { handle }
            })
            .clone()
    }

    /// The exposition (Prometheus text format 0.0.4).
    pub fn render(&self) -> String {
        self.handle.render()
    }

    /// `GET /metrics`, which first runs `collect` (at most
    /// [`defaults::METRICS_COLLECT_TIMEOUT`]) to update the state gauges.
    pub fn router(&self, collect: Collector) -> axum::Router {
        axum::Router::new()
            .route("/metrics", get(scrape))
            .with_state(ScrapeState {
                metrics: self.clone(),
                collect,
            })
    }
}

/// Updates gauges right before a scrape renders them.
pub type Collector =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync + 'static>;

#[derive(Clone)]
struct ScrapeState {
    metrics: Metrics,
    collect: Collector,
}

async fn scrape(State(state): State<ScrapeState>) -> impl IntoResponse {
    if tokio::time::timeout(defaults::METRICS_COLLECT_TIMEOUT, (state.collect)())
        .await
        .is_err()
    {
        tracing::warn!("metrics: collecting state gauges took too long; serving the last values");
    }
    (
        [(
            http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
}

/// HELP lines (and units) of every metric.
fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    use names::*;
    describe_counter!(GRPC_STARTED, "RPCs started on the server.");
    describe_counter!(
        GRPC_HANDLED,
        "RPCs completed on the server, by status code and caller policy rule."
    );
    describe_histogram!(
        GRPC_HANDLING_SECONDS,
        Unit::Seconds,
        "Time from the request to the end of the response (for streams: their whole life)."
    );
    describe_counter!(
        GRPC_MSG_RECEIVED,
        "Messages received on client-streaming RPCs."
    );
    describe_counter!(GRPC_MSG_SENT, "Messages sent on server-streaming RPCs.");
    describe_counter!(
        DR_REQUESTS,
        "HTTP requests to Digital River (each attempt), by route template and status."
    );
    describe_histogram!(
        DR_REQUEST_SECONDS,
        Unit::Seconds,
        "Duration of HTTP requests to Digital River (each attempt)."
    );
    describe_counter!(DR_RETRIES, "Retries of idempotent Digital River reads.");
    describe_counter!(
        DR_RATE_LIMIT_WAITS,
        "Digital River calls that waited for the gateway's own rate limit."
    );
    describe_histogram!(
        DR_RATE_LIMIT_WAIT_SECONDS,
        Unit::Seconds,
        "Time Digital River calls waited for the gateway's own rate limit."
    );
    describe_counter!(
        DR_RATE_LIMIT_REFUSALS,
        "Digital River calls refused: no rate-limit slot before the caller's deadline."
    );
    describe_counter!(WEBHOOKS_RECEIVED, "Webhook deliveries received.");
    describe_counter!(WEBHOOKS_ACCEPTED, "Webhooks stored as new events.");
    describe_counter!(
        WEBHOOKS_DUPLICATES,
        "Webhooks acknowledged as redeliveries of stored events."
    );
    describe_counter!(WEBHOOKS_REJECTED, "Webhooks refused, by reason.");
    describe_histogram!(
        WEBHOOK_ACK_SECONDS,
        Unit::Seconds,
        "Time from a webhook's arrival to its answer."
    );
    describe_gauge!(
        WEBHOOK_LAST_ACK_TIMESTAMP,
        Unit::Seconds,
        "Unix time of the last webhook acknowledged."
    );
    describe_counter!(
        EVENTS_STORED,
        "New events stored in the event log, by source."
    );
    describe_gauge!(EVENT_LOG_EVENTS, "Events the event log holds.");
    describe_gauge!(EVENT_LOG_BYTES, Unit::Bytes, "Bytes the event log holds.");
    describe_gauge!(
        EVENT_LOG_OLDEST_AGE,
        Unit::Seconds,
        "Age of the oldest event the log holds."
    );
    describe_gauge!(SUBSCRIBERS, "Open Subscribe streams.");
    describe_gauge!(
        SUBSCRIBER_LAG,
        "Events the furthest-behind subscriber has still to read."
    );
    describe_histogram!(
        SUBSCRIBER_DELIVERY_SECONDS,
        Unit::Seconds,
        "Time from storing an event to handing it to a subscriber's stream."
    );
    describe_counter!(
        GROUP_DELIVERIES,
        "Events handed to a consumer group's members, by group."
    );
    describe_counter!(
        GROUP_REDELIVERIES,
        "Consumer group deliveries that were not the event's first, by group."
    );
    describe_counter!(
        GROUP_ACKS,
        "Events a consumer group's members acknowledged, by group."
    );
    describe_gauge!(
        GROUP_PENDING,
        "Events a consumer group has read from its oldest unacknowledged one on, by group."
    );
    describe_gauge!(
        GROUP_MEMBERS,
        "Consumer group members connected to this replica, by group."
    );
    describe_counter!(
        IDEMPOTENCY_REPLAYS,
        "Fulfillment retries answered from the idempotency store."
    );
    describe_counter!(
        IDEMPOTENCY_RECONCILIATIONS,
        "Lookups of a request id among the order's fulfillments in Digital River."
    );
    describe_counter!(FULFILLMENT_OUTCOMES, "How fulfillment attempts ended.");
    describe_gauge!(NATS_CONNECTED, "1 while connected to NATS.");
    describe_counter!(NATS_DISCONNECTS, "Times the NATS connection was lost.");
    describe_gauge!(BUILD_INFO, "Always 1; the version is a label.");
    describe_gauge!(
        START_TIME,
        Unit::Seconds,
        "Unix time the process started recording metrics."
    );
}

/// Counts and times every RPC (the `grpc_server_*` metrics); passes calls through
/// untouched when metrics are off.
#[derive(Debug, Clone, Copy)]
pub struct RpcMetricsLayer {
    enabled: bool,
}

impl RpcMetricsLayer {
    /// The layer, recording into `metrics` (none: off).
    pub fn new(metrics: Option<&Metrics>) -> Self {
        Self {
            enabled: metrics.is_some(),
        }
    }
}

impl<S> Layer<S> for RpcMetricsLayer {
    type Service = RpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcMetrics {
            inner,
            enabled: self.enabled,
        }
    }
}

/// The service [`RpcMetricsLayer`] wraps around the routes.
#[derive(Debug, Clone)]
pub struct RpcMetrics<S> {
    inner: S,
    enabled: bool,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B, ResBody> Service<http::Request<B>> for RpcMetrics<S>
where
    S: Service<http::Request<CountedBody<B>>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: Send + 'static,
{
    type Response = http::Response<ObservedBody<ResBody, Option<Ended>>>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if !self.enabled {
            let response = self.inner.call(request.map(|b| CountedBody::new(b, None)));
            return Box::pin(async move { Ok(ObservedBody::wrap(response.await?, None)) });
        }
        let started = Instant::now();
        let method = Method::of(request.uri().path());
        let handles = MethodMetrics::of(method);
        handles.started.increment(1);
        let received = handles.received.clone();
        let response = self
            .inner
            .call(request.map(|body| CountedBody::new(body, received)));
        Box::pin(async move {
            let response = response.await?;
            let caller = Caller::from_extensions(response.extensions()).cloned();
            let ended = Ended {
                started,
                method,
                handles,
                caller,
            };
            Ok(ObservedBody::wrap(response, Some(ended)))
        })
    }
}

/// Records an RPC's end.
#[derive(Debug)]
pub struct Ended {
    started: Instant,
    method: &'static Method,
    handles: &'static MethodMetrics,
    caller: Option<Caller>,
}

impl RpcObserver for Ended {
    fn counts_messages(&self) -> bool {
        self.method.server_streams()
    }

    fn on_message(&mut self) {
        if let Some(sent) = &self.handles.sent {
            sent.increment(1);
        }
    }

    fn on_end(&mut self, end: RpcEnd<'_>) {
        self.handles
            .seconds
            .record(self.started.elapsed().as_secs_f64());
        let policy = self.caller.as_ref().map_or("-", Caller::policy_name);
        self.handles
            .handled(self.method, end.code, policy)
            .increment(1);
    }
}

/// The registered series of one method, so an RPC costs no registry lookups but
/// the one of its (code, caller) pair.
#[derive(Debug)]
pub struct MethodMetrics {
    started: Counter,
    seconds: Histogram,
    /// Server-streaming methods only (a unary answer is one message).
    sent: Option<Counter>,
    /// Client-streaming methods only.
    received: Option<Counter>,
    /// `grpc_server_handled_total` per (code, policy rule): few per method.
    handled: RwLock<Vec<(Code, String, Counter)>>,
}

impl MethodMetrics {
    /// The series of `method`, registered with the installed recorder on first use.
    fn of(method: &'static Method) -> &'static Self {
        method.metrics.get_or_init(|| {
            let labels = [
                ("grpc_type", method.kind),
                ("grpc_service", method.service),
                ("grpc_method", method.name),
            ];
            MethodMetrics {
                started: metrics::counter!(names::GRPC_STARTED, &labels),
                seconds: metrics::histogram!(names::GRPC_HANDLING_SECONDS, &labels),
                sent: method
                    .server_streams()
                    .then(|| metrics::counter!(names::GRPC_MSG_SENT, &labels)),
                received: method
                    .client_streams()
                    .then(|| metrics::counter!(names::GRPC_MSG_RECEIVED, &labels)),
                handled: RwLock::new(Vec::new()),
            }
        })
    }

    fn handled(&self, method: &Method, code: Code, policy: &str) -> Counter {
        let find = |handled: &[(Code, String, Counter)]| {
            handled
                .iter()
                .find(|(c, p, _)| *c == code && p == policy)
                .map(|(_, _, counter)| counter.clone())
        };
        if let Some(counter) = find(&self.handled.read().unwrap_or_else(|p| p.into_inner())) {
            return counter;
        }
        let mut handled = self.handled.write().unwrap_or_else(|p| p.into_inner());
        if let Some(counter) = find(&handled) {
            return counter;
        }
        let counter = metrics::counter!(
            names::GRPC_HANDLED,
            "grpc_type" => method.kind,
            "grpc_service" => method.service,
            "grpc_method" => method.name,
            "grpc_code" => rpc::code_name(code),
            "caller" => policy.to_owned(),
        );
        handled.push((code, policy.to_owned(), counter.clone()));
        counter
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_named_once_and_as_prometheus_expects() {
        let mut seen = std::collections::HashSet::new();
        for name in names::ALL {
            assert!(seen.insert(name), "{name} listed twice");
            assert!(
                name.starts_with("grpc_server_") || name.starts_with("dr_gateway_"),
                "{name}"
            );
            assert!(
                name.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
                "{name}"
            );
        }
        for (histogram, buckets) in BUCKETS {
            assert!(names::ALL.contains(&histogram), "{histogram}");
            assert!(histogram.ends_with("_seconds"), "{histogram} has a unit");
            assert!(
                buckets.windows(2).all(|w| w[0] < w[1]),
                "{histogram} buckets ascend"
            );
        }
    }
}
