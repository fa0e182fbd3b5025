//! Webhook intake: an axum router on its own listener that receives DR's event
//! POSTs, verifies the signature on the raw bytes, parses the envelope, appends it
//! to the event log and only then answers 2xx, so DR re-sends anything not stored
//! (docs/digital-river.md §4.2).
//!
//! Each delivery is a server span `webhook` and is counted by outcome
//! (`dr_gateway_webhooks_*`: received, accepted, duplicates, rejected by reason) and
//! timed from arrival to answer.
//!
//! The same listener serves the HTTP probes (and, unless it has a listener of its
//! own, `/metrics`: see `app.rs`):
//! - `/livez` — 200 while the process and its runtime answer; never asks a
//!   dependency (the liveness probe);
//! - `/readyz`, `/healthz` — gRPC health over HTTP (see `crate::health`): 200 when
//!   SERVING, 503 when NOT_SERVING, for the whole server or `?service=<name>` (404
//!   for a name health does not know); the body lists every name's status and the
//!   event bus's state.
//!
//! Every answer that is not 2xx has a JSON body (`error` a stable snake_case code;
//! see [`error`]); a layer gives the ones axum makes itself (404, 405) the same
//! shape. [`listener`] bounds the connections (count, idle and request-head
//! timeouts) of the whole listener, probes included; the webhook handler bounds the
//! body (size, checked against `Content-Length` before reading, and read time).

pub mod error;
mod intake_metrics;
pub mod json_errors;
pub mod listener;
pub mod signature;

use std::{
    collections::HashMap,
    future::Future,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use axum::{
    body::{Body, Bytes},
    extract::{Query, Request, State},
    http::{header, HeaderMap, HeaderValue, StatusCode},
    response::IntoResponse,
    routing::{get, post},
    Json, Router,
};
use futures::StreamExt as _;
use serde_json::{json, Map, Value};
use tokio::net::TcpListener;

pub use error::WebhookError;
pub use listener::{ConnectionLimits, ConnectionPhase, GuardedListener};
pub use signature::{SignatureError, SignatureVerifier, SIGNATURE_HEADER};

use crate::defaults;
use crate::events::{Appended, Envelope, EventLog};
use crate::health::HealthGate;
use crate::telemetry::capped;
use intake_metrics::Outcome;

/// How long `/livez` waits for a task spawned on the runtime to run.
pub const LIVENESS_TIMEOUT: Duration = Duration::from_secs(1);

/// Path DR posts events to.
pub const WEBHOOK_PATH: &str = "/webhooks/digitalriver";

/// Webhook intake settings.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// Largest accepted body in bytes (larger → 413).
    pub max_body_bytes: usize,
    /// Longest an append may take before answering 503; well inside DR's 3000 ms.
    pub append_timeout: Duration,
    /// False with `--webhooks-disabled`: the endpoint answers 404.
    pub enabled: bool,
    /// Longest the body of one request may take to arrive (larger → 408).
    pub body_timeout: Duration,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: defaults::WEBHOOK_MAX_BODY,
            append_timeout: defaults::WEBHOOK_APPEND_TIMEOUT,
            enabled: true,
            body_timeout: defaults::WEBHOOK_BODY_TIMEOUT,
        }
    }
}

/// The body limit in force, which may be lowered while running (to what the bus
/// can store, once it is connected). Cheap to clone.
#[derive(Debug, Clone)]
pub struct BodyLimit(Arc<AtomicUsize>);

impl BodyLimit {
    /// The limit now, in bytes.
    pub fn get(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }

    /// Lowers the limit to `max` (never raises it).
    pub fn lower_to(&self, max: usize) {
        self.0.fetch_min(max, Ordering::Relaxed);
    }
}

/// What the handlers share. Cheap to clone: one reference count.
///
/// why: axum hands every request its own clone of the router's state; with the
/// parts side by side that was six reference counts taken and dropped per
/// delivery, on cache lines every worker thread shares.
#[derive(Debug, Clone)]
pub struct WebhookState(Arc<Shared>);

#[derive(Debug)]
struct Shared {
    verifier: SignatureVerifier,
    log: Arc<dyn EventLog>,
    health: HealthGate,
    config: WebhookConfig,
    limit: BodyLimit,
}

impl WebhookState {
    /// Bundles the handlers' dependencies; `/readyz` reports what `health` shows.
    pub fn new(
        verifier: SignatureVerifier,
        log: Arc<dyn EventLog>,
        health: HealthGate,
        config: WebhookConfig,
    ) -> Self {
        let limit = BodyLimit(Arc::new(AtomicUsize::new(config.max_body_bytes)));
        Self(Arc::new(Shared {
            verifier,
            log,
            health,
            config,
            limit,
        }))
    }

    /// The handle that lowers the body limit while running.
    pub fn body_limit(&self) -> BodyLimit {
        self.0.limit.clone()
    }
}

/// The webhook listener's routes.
///
/// why: no axum body limit layer: no route reads its body through an axum
/// extractor. The webhook route reads the raw body itself, against the limit in
/// force ([`BodyLimit`]), and the layer only added a request extension per
/// delivery.
pub fn router(state: WebhookState) -> Router {
    Router::new()
        .route(WEBHOOK_PATH, post(receive_event))
        .route("/livez", get(livez))
        .route("/healthz", get(health))
        .route("/readyz", get(health))
        .with_state(state)
}

/// Serves `router` on `listener` within `limits` until `shutdown` resolves; then
/// stops accepting, closes idle connections and finishes in-flight requests.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // why: here rather than in `router`, so the answers of routes merged in later
    // (`/metrics`) and the fallback of the merged router get the JSON shape too.
    let app = listener::TrackPhase::new(json_errors::JsonErrors::new(router));
    axum::serve(GuardedListener::new(listener, limits), app)
        .with_graceful_shutdown(shutdown)
        .await
}

#[tracing::instrument(
    name = "webhook",
    skip_all,
    fields(
        otel.kind = "server",
        otel.name = "POST /webhooks/digitalriver",
        event_id,
        event_type,
        seq,
        duplicate,
    )
)]
async fn receive_event(
    State(state): State<WebhookState>,
    request: Request,
) -> Result<impl IntoResponse, WebhookError> {
    let started = Instant::now();
    intake_metrics::received();
    // why: the request's own headers, read in place: axum's `HeaderMap` extractor
    // hands the handler a copy of them (an allocation and a reference count per
    // header value, per delivery).
    let (parts, body) = request.into_parts();
    let result = intake(&state.0, &parts.headers, body).await;
    let outcome = match &result {
        Ok(appended) if appended.duplicate => Outcome::Duplicate,
        Ok(_) => Outcome::Accepted,
        Err(e) => Outcome::Rejected { reason: e.code() },
    };
    intake_metrics::answered(outcome, started.elapsed());
    let appended = result?;
    // why: two fixed answers, written once, instead of a JSON map built and
    // serialised per event.
    let body: &'static [u8] = if appended.duplicate {
        br#"{"received":true,"duplicate":true}"#
    } else {
        br#"{"received":true,"duplicate":false}"#
    };
    Ok((
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        Bytes::from_static(body),
    ))
}

/// Verifies, parses and stores one delivery.
async fn intake(state: &Shared, headers: &HeaderMap, body: Body) -> Result<Appended, WebhookError> {
    if !state.config.enabled {
        return Err(WebhookError::Disabled);
    }
    let body = read_body(&state.config, state.limit.get(), headers, body).await?;
    // why: verify the exact bytes DR signed, before any parsing (docs/digital-river.md §4.3).
    let header = headers.get(SIGNATURE_HEADER).map(|v| v.as_bytes());
    match state.verifier.verify(header, &body) {
        Ok(variant) => tracing::debug!(?variant, "webhook signature verified"),
        Err(e) => {
            tracing::warn!(reason = %e, "webhook rejected");
            return Err(e.into());
        }
    }
    let envelope = Envelope::parse(body).inspect_err(|e| {
        tracing::warn!(error = %e, "webhook body is not a DR event");
    })?;
    let span = tracing::Span::current();
    // why: one record per stage, not one per field: the JSON log formatter re-reads
    // and re-writes all of a span's fields on every record.
    tracing::record_all!(
        span,
        event_id = tracing::field::display(capped(&envelope.id)),
        event_type = tracing::field::display(capped(&envelope.event_type))
    );

    let appended = tokio::time::timeout(state.config.append_timeout, state.log.append(envelope))
        .await
        .map_err(|_| WebhookError::LogUnavailable(None))?
        .map_err(|e| WebhookError::LogUnavailable(Some(e)))?;
    tracing::record_all!(span, seq = appended.seq, duplicate = appended.duplicate);
    tracing::info!("webhook event stored");
    Ok(appended)
}

/// Liveness: a task spawned on the runtime gets to run. A wedged runtime (every
/// worker blocked) fails it; no dependency is asked.
async fn livez() -> impl IntoResponse {
    match tokio::time::timeout(LIVENESS_TIMEOUT, tokio::spawn(async {})).await {
        Ok(Ok(())) => (StatusCode::OK, Json(json!({ "status": "alive" }))),
        _ => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "runtime_unresponsive" })),
        ),
    }
}

/// The whole body, within the size limit in force (`limit`) and the body timeout.
///
/// why: a declared `Content-Length` above the limit is refused before a byte of the
/// body is read, so a client cannot hold the connection by promising a huge body.
async fn read_body(
    config: &WebhookConfig,
    limit: usize,
    headers: &HeaderMap,
    body: Body,
) -> Result<Bytes, WebhookError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(WebhookError::TooLarge { limit });
    }
    let collect = async {
        let mut stream = body.into_data_stream();
        // why: the event log keeps these bytes; a buffer sized by the declared
        // length holds no spare capacity the log's byte bound would not see.
        let declared = declared.map_or(0, |len| len as usize);
        let mut buf = bytes::BytesMut::with_capacity(declared);
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|_| WebhookError::BodyUnreadable)?;
            if buf.len() + chunk.len() > limit {
                return Err(WebhookError::TooLarge { limit });
            }
            buf.extend_from_slice(&chunk);
        }
        if buf.capacity() > buf.len() + buf.len() / 8 {
            return Ok(Bytes::copy_from_slice(&buf));
        }
        Ok(buf.freeze())
    };
    tokio::time::timeout(config.body_timeout, collect)
        .await
        .map_err(|_| WebhookError::BodyTimeout {
            timeout: config.body_timeout,
        })?
}

/// `/readyz` and `/healthz`: what gRPC health shows, for `?service=` or the whole
/// server.
async fn health(
    State(state): State<WebhookState>,
    Query(query): Query<HashMap<String, String>>,
) -> impl IntoResponse {
    let snapshot = state.0.health.snapshot().await;
    let service = query.get("service").map(String::as_str).unwrap_or("");
    let services: Map<String, Value> = snapshot
        .services
        .iter()
        .map(|(name, serving)| ((*name).to_owned(), json!(serving_text(*serving))))
        .collect();
    let Some(serving) = snapshot.serving(service) else {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({ "error": "unknown_service", "service": service, "services": services })),
        );
    };
    let status = if serving {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({
            "status": serving_text(serving),
            "service": service,
            "draining": snapshot.draining,
            "event_bus": snapshot.bus.as_str(),
            "services": services,
        })),
    )
}

fn serving_text(serving: bool) -> &'static str {
    if serving {
        "SERVING"
    } else {
        "NOT_SERVING"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        clock::{Clock, ManualClock},
        events::{
            Appended, Bounds, EventEncoder, LogError, MemoryLog, MemoryLogConfig, Sequence,
            StoredEvent,
        },
    };
    use async_trait::async_trait;
    use axum::body::Body;
    use chrono::{DateTime, Utc};
    use secrecy::SecretString;
    use tower::ServiceExt as _;

    const SECRET: &str = "whsec_test";

    fn event_body(id: &str) -> String {
        format!(
            r#"{{"id":"{id}","type":"order.accepted","createdTime":"2024-01-01T00:00:00Z","data":{{"object":{{"id":"o1"}}}}}}"#
        )
    }

    async fn gate(uses_bus: bool) -> HealthGate {
        let (reporter, _service) = tonic_health::server::health_reporter();
        let gate = HealthGate::new(reporter, uses_bus).await;
        gate.set_started().await;
        gate
    }

    async fn app_with(
        log: Arc<dyn EventLog>,
        max_body: usize,
        health: HealthGate,
    ) -> (Router, Arc<ManualClock>, BodyLimit) {
        let clock = Arc::new(ManualClock::new(Utc::now()));
        let verifier = SignatureVerifier::new(
            vec![SecretString::from(SECRET.to_string())],
            Duration::from_secs(300),
            clock.clone(),
        );
        let config = WebhookConfig {
            max_body_bytes: max_body,
            append_timeout: Duration::from_millis(200),
            enabled: true,
            ..WebhookConfig::default()
        };
        let state = WebhookState::new(verifier, log, health, config);
        let limit = state.body_limit();
        (router(state), clock, limit)
    }

    async fn app(log: Arc<dyn EventLog>, max_body: usize) -> (Router, Arc<ManualClock>) {
        let (router, clock, _) = app_with(log, max_body, gate(false).await).await;
        (router, clock)
    }

    fn get(path: &str) -> axum::http::Request<Body> {
        axum::http::Request::get(path).body(Body::empty()).unwrap()
    }

    fn memory_log() -> Arc<MemoryLog> {
        Arc::new(MemoryLog::new(
            MemoryLogConfig::default(),
            EventEncoder::default(),
            Arc::new(crate::clock::SystemClock),
        ))
    }

    fn signed(clock: &ManualClock, body: &str) -> axum::http::Request<Body> {
        let ts = clock.now().timestamp().to_string();
        let sig = signature::sign(SECRET, &ts, body.as_bytes());
        axum::http::Request::post(WEBHOOK_PATH)
            .header("DigitalRiver-Signature", format!("{ts}, {sig}"))
            .header("content-type", "application/json")
            .body(Body::from(body.to_owned()))
            .unwrap()
    }

    async fn call(app: &Router, req: axum::http::Request<Body>) -> (StatusCode, serde_json::Value) {
        let resp = app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, serde_json::from_slice(&bytes).unwrap_or_default())
    }

    #[tokio::test]
    async fn a_signed_event_is_stored_and_acknowledged_once() {
        let log = memory_log();
        let (app, clock) = app(log.clone(), 1024 * 1024).await;
        let (status, body) = call(&app, signed(&clock, &event_body("e1"))).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["received"], true);
        assert_eq!(body["duplicate"], false);
        let (status, body) = call(&app, signed(&clock, &event_body("e1"))).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["duplicate"], true);
        let resp = app
            .clone()
            .oneshot(signed(&clock, &event_body("e1")))
            .await
            .unwrap();
        assert_eq!(resp.headers()[header::CONTENT_TYPE], "application/json");
        assert_eq!(log.bounds().await.unwrap(), Bounds { first: 1, last: 1 });
    }

    #[tokio::test]
    async fn bad_requests_get_the_right_status_and_store_nothing() {
        let log = memory_log();
        let (app, clock) = app(log.clone(), 4096).await;

        let unsigned = axum::http::Request::post(WEBHOOK_PATH)
            .body(Body::from(event_body("e1")))
            .unwrap();
        let (status, body) = call(&app, unsigned).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (StatusCode::UNAUTHORIZED, Some("missing_signature"))
        );

        let (status, body) = call(&app, signed(&clock, "{\"id\": \"e1\"")).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (StatusCode::BAD_REQUEST, Some("invalid_json"))
        );

        let (status, body) = call(&app, signed(&clock, r#"{"id":"e1","type":"x"}"#)).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (StatusCode::BAD_REQUEST, Some("not_an_event"))
        );
        assert_eq!(body["field"], "createdTime");

        let big = format!(r#"{{"pad":"{}"}}"#, "x".repeat(5000));
        let (status, body) = call(&app, signed(&clock, &big)).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (StatusCode::PAYLOAD_TOO_LARGE, Some("body_too_large"))
        );

        let stale = signed(&clock, &event_body("e2"));
        clock.advance(chrono::Duration::minutes(6));
        let (status, body) = call(&app, stale).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (StatusCode::UNAUTHORIZED, Some("stale_timestamp"))
        );

        assert_eq!(log.bounds().await.unwrap().last, 0);
    }

    /// A log that always fails, standing in for a backend outage.
    #[derive(Debug)]
    struct BrokenLog;

    #[async_trait]
    impl EventLog for BrokenLog {
        fn log_id(&self) -> u64 {
            1
        }
        async fn append(&self, _: Envelope) -> Result<Appended, LogError> {
            Err(LogError::Unavailable("down".into()))
        }
        async fn read_after(
            &self,
            _: Sequence,
            _: usize,
        ) -> Result<Vec<Arc<StoredEvent>>, LogError> {
            Err(LogError::Unavailable("down".into()))
        }
        async fn bounds(&self) -> Result<Bounds, LogError> {
            Err(LogError::Unavailable("down".into()))
        }
        async fn first_received_at_or_after(
            &self,
            _: DateTime<Utc>,
        ) -> Result<Option<Sequence>, LogError> {
            Err(LogError::Unavailable("down".into()))
        }
        async fn get_by_id(&self, _: &str) -> Result<Option<Arc<StoredEvent>>, LogError> {
            Err(LogError::Unavailable("down".into()))
        }
        async fn newest_created_time(&self) -> Result<Option<DateTime<Utc>>, LogError> {
            Err(LogError::Unavailable("down".into()))
        }
        async fn check_ready(&self) -> Result<(), LogError> {
            Err(LogError::Unavailable("down".into()))
        }
        fn watch_appends(&self) -> tokio::sync::watch::Receiver<Sequence> {
            tokio::sync::watch::channel(0).1
        }
    }

    #[tokio::test]
    async fn a_log_failure_is_a_503_so_dr_retries_while_livez_stays_ok() {
        let (app, clock) = app(Arc::new(BrokenLog), 4096).await;
        let (status, body) = call(&app, signed(&clock, &event_body("e1"))).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Some("temporarily_unavailable")
            )
        );
        let (status, body) = call(&app, get("/livez")).await;
        assert_eq!(
            (status, body["status"].as_str()),
            (StatusCode::OK, Some("alive"))
        );
    }

    #[tokio::test]
    async fn readyz_and_healthz_say_what_grpc_health_says() {
        let health = gate(true).await;
        let (app, _, _) = app_with(Arc::new(BrokenLog), 4096, health.clone()).await;
        for path in ["/readyz", "/healthz"] {
            // Bus unreachable: the server and the DR-only services serve, EventStream not.
            let (status, body) = call(&app, get(path)).await;
            assert_eq!(status, StatusCode::OK, "{path}");
            assert_eq!(body["event_bus"], "unreachable");
            assert_eq!(body["services"][crate::health::EVENT_STREAM], "NOT_SERVING");
            assert_eq!(body["services"][crate::health::CHARGE_SERVICE], "SERVING");
            let (status, body) = call(
                &app,
                get(&format!("{path}?service={}", crate::health::EVENT_STREAM)),
            )
            .await;
            assert_eq!(
                (status, body["status"].as_str()),
                (StatusCode::SERVICE_UNAVAILABLE, Some("NOT_SERVING"))
            );
            let (status, _) = call(&app, get(&format!("{path}?service=no.Such"))).await;
            assert_eq!(status, StatusCode::NOT_FOUND);
        }
        health.set_bus_ok(true).await;
        let (status, _) = call(
            &app,
            get(&format!("/readyz?service={}", crate::health::EVENT_STREAM)),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        health.set_draining().await;
        let (status, body) = call(&app, get("/readyz")).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["draining"], true);
        let (status, _) = call(&app, get("/livez")).await;
        assert_eq!(status, StatusCode::OK, "draining is not dying");
    }

    #[tokio::test]
    async fn a_lowered_body_limit_applies_to_the_next_webhook() {
        let log = memory_log();
        let (app, clock, limit) = app_with(log.clone(), 1024 * 1024, gate(false).await).await;
        limit.lower_to(64);
        limit.lower_to(1 << 20);
        assert_eq!(limit.get(), 64, "never raised");
        let (status, body) = call(&app, signed(&clock, &event_body("e1"))).await;
        assert_eq!(
            (status, body["limit_bytes"].as_u64()),
            (StatusCode::PAYLOAD_TOO_LARGE, Some(64))
        );
        assert_eq!(log.bounds().await.unwrap().last, 0);
    }

    #[tokio::test]
    async fn disabled_webhooks_answer_404() {
        let clock = Arc::new(ManualClock::new(Utc::now()));
        let verifier = SignatureVerifier::new(Vec::new(), Duration::from_secs(300), clock.clone());
        let config = WebhookConfig {
            enabled: false,
            ..WebhookConfig::default()
        };
        let app = router(WebhookState::new(
            verifier,
            memory_log(),
            gate(false).await,
            config,
        ));
        let (status, body) = call(&app, signed(&clock, &event_body("e1"))).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (StatusCode::NOT_FOUND, Some("webhooks_disabled"))
        );
    }
}
