//! Webhook intake: an axum router on its own listener that receives DR's event
//! POSTs, verifies the signature on the raw bytes, parses the envelope, appends it
//! to the event log and only then answers 2xx, so DR re-sends anything not stored
//! (docs/digital-river.md §4.2). Also serves `/healthz` and `/readyz` (and, unless
//! it has a listener of its own, `/metrics`: see `app.rs`).
//!
//! Each delivery is a server span `webhook` and is counted by outcome
//! (`dr_gateway_webhooks_*`: received, accepted, duplicates, rejected by reason) and
//! timed from arrival to answer.

pub mod error;
pub mod signature;

use std::{
    future::Future,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use axum::{
    body::Bytes,
    extract::{rejection::BytesRejection, DefaultBodyLimit, State},
    http::{HeaderMap, StatusCode},
    response::IntoResponse,
    routing::{get, post},
    Json, Router,
};
use serde_json::json;
use tokio::net::TcpListener;

pub use error::WebhookError;
pub use signature::{SignatureError, SignatureVerifier, SIGNATURE_HEADER};

use crate::defaults;
use crate::events::{Appended, Envelope, EventLog};
use crate::telemetry::{capped, metrics::names};

/// Path DR posts events to.
pub const WEBHOOK_PATH: &str = "/webhooks/digitalriver";

/// Webhook intake settings.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// Largest accepted body in bytes (larger → 413).
    pub max_body_bytes: usize,
    /// Longest an append may take before answering 503; well inside DR's 3000 ms.
    pub append_timeout: Duration,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: defaults::WEBHOOK_MAX_BODY,
            append_timeout: defaults::WEBHOOK_APPEND_TIMEOUT,
        }
    }
}

/// Whether the process is draining; `/readyz` fails once set. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Readiness {
    draining: Arc<AtomicBool>,
}

impl Readiness {
    /// Marks the process as shutting down.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// True once shutting down.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }
}

/// What the handlers share.
#[derive(Debug, Clone)]
pub struct WebhookState {
    verifier: SignatureVerifier,
    log: Arc<dyn EventLog>,
    readiness: Readiness,
    config: WebhookConfig,
}

impl WebhookState {
    /// Bundles the handlers' dependencies.
    pub fn new(
        verifier: SignatureVerifier,
        log: Arc<dyn EventLog>,
        readiness: Readiness,
        config: WebhookConfig,
    ) -> Self {
        Self {
            verifier,
            log,
            readiness,
            config,
        }
    }
}

/// The webhook listener's routes.
pub fn router(state: WebhookState) -> Router {
    let limit = state.config.max_body_bytes;
    Router::new()
        .route(WEBHOOK_PATH, post(receive_event))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// Serves `router` on `listener` until `shutdown` resolves, then finishes in-flight
/// requests.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router)
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
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<impl IntoResponse, WebhookError> {
    let started = Instant::now();
    metrics::counter!(names::WEBHOOKS_RECEIVED).increment(1);
    let result = intake(&state, &headers, body).await;
    let outcome = match &result {
        Ok(appended) if appended.duplicate => {
            metrics::counter!(names::WEBHOOKS_DUPLICATES).increment(1);
            "duplicate"
        }
        Ok(_) => {
            metrics::counter!(names::WEBHOOKS_ACCEPTED).increment(1);
            metrics::counter!(names::EVENTS_STORED, "source" => "webhook").increment(1);
            "accepted"
        }
        Err(e) => {
            metrics::counter!(names::WEBHOOKS_REJECTED, "reason" => e.code()).increment(1);
            "rejected"
        }
    };
    if result.is_ok() {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        metrics::gauge!(names::WEBHOOK_LAST_ACK_TIMESTAMP).set(now.as_secs_f64());
    }
    metrics::histogram!(names::WEBHOOK_ACK_SECONDS, "outcome" => outcome)
        .record(started.elapsed().as_secs_f64());
    let appended = result?;
    Ok((
        StatusCode::OK,
        Json(json!({ "received": true, "duplicate": appended.duplicate })),
    ))
}

/// Verifies, parses and stores one delivery.
async fn intake(
    state: &WebhookState,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Appended, WebhookError> {
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            WebhookError::TooLarge {
                limit: state.config.max_body_bytes,
            }
        } else {
            WebhookError::BodyUnreadable
        }
    })?;
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
    span.record("event_id", tracing::field::display(capped(&envelope.id)));
    span.record(
        "event_type",
        tracing::field::display(capped(&envelope.event_type)),
    );

    let appended = tokio::time::timeout(state.config.append_timeout, state.log.append(envelope))
        .await
        .map_err(|_| WebhookError::LogUnavailable(None))?
        .map_err(|e| WebhookError::LogUnavailable(Some(e)))?;
    span.record("seq", appended.seq);
    span.record("duplicate", appended.duplicate);
    tracing::info!("webhook event stored");
    Ok(appended)
}

async fn healthz() -> impl IntoResponse {
    (StatusCode::OK, Json(json!({ "status": "ok" })))
}

async fn readyz(State(state): State<WebhookState>) -> impl IntoResponse {
    if state.readiness.is_draining() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "draining" })),
        );
    }
    match state.log.check_ready().await {
        Ok(()) => (StatusCode::OK, Json(json!({ "status": "ready" }))),
        Err(e) => {
            tracing::warn!(error = %e, "readiness: event log not ready");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({ "status": "event_log_unavailable" })),
            )
        }
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

    fn app(log: Arc<dyn EventLog>, max_body: usize) -> (Router, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::new(Utc::now()));
        let verifier = SignatureVerifier::new(
            vec![SecretString::from(SECRET.to_string())],
            Duration::from_secs(300),
            clock.clone(),
        );
        let config = WebhookConfig {
            max_body_bytes: max_body,
            append_timeout: Duration::from_millis(200),
        };
        let state = WebhookState::new(verifier, log, Readiness::default(), config);
        (router(state), clock)
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
        let (app, clock) = app(log.clone(), 1024 * 1024);
        let (status, body) = call(&app, signed(&clock, &event_body("e1"))).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["duplicate"], false);
        let (status, body) = call(&app, signed(&clock, &event_body("e1"))).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["duplicate"], true);
        assert_eq!(log.bounds().await.unwrap(), Bounds { first: 1, last: 1 });
    }

    #[tokio::test]
    async fn bad_requests_get_the_right_status_and_store_nothing() {
        let log = memory_log();
        let (app, clock) = app(log.clone(), 4096);

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
    async fn a_log_failure_is_a_503_so_dr_retries_and_readyz_fails() {
        let (app, clock) = app(Arc::new(BrokenLog), 4096);
        let (status, body) = call(&app, signed(&clock, &event_body("e1"))).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Some("temporarily_unavailable")
            )
        );
        let (status, _) = call(
            &app,
            axum::http::Request::get("/readyz")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        let (status, _) = call(
            &app,
            axum::http::Request::get("/healthz")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
    }
}
