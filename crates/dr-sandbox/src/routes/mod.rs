//! HTTP routing: the DR surface, the `/sandbox/` control surface, bearer auth, the
//! request log + rate limit + fault injection layer on the DR surface, and DR-shaped
//! 404/405.

mod control;
mod dr;
pub(crate) mod query;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::{
    body::{to_bytes, Body, Bytes},
    extract::{ConnectInfo, Request, State},
    http::{header, HeaderValue, StatusCode},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
    Router,
};
use chrono::Utc;
use serde_json::Value;

use super::conn::ConnKill;
use super::error::ApiError;
use super::faults::{Fault, FaultKind};
use super::state::{App, RequestRecord};

/// Largest request body read (DR payloads are small).
const MAX_BODY_BYTES: usize = 1024 * 1024;

/// The key's mode, decided by its prefix: `sk_test_` → test, anything else → live.
#[derive(Debug, Clone, Copy)]
pub(crate) struct KeyMode {
    /// `liveMode` of objects created with this key.
    pub live: bool,
}

/// The bearer key itself, for the per-key rate limit.
#[derive(Debug, Clone)]
pub(crate) struct ApiKey(pub String);

/// Builds the full router.
pub(crate) fn router(app: Arc<App>) -> Router {
    let dr = Router::new()
        .route(
            "/fulfillments",
            post(dr::create_fulfillment).get(dr::list_fulfillments),
        )
        .route(
            "/fulfillments/{id}",
            get(dr::get_fulfillment).post(dr::update_fulfillment),
        )
        .route("/orders", get(dr::list_orders))
        .route("/orders/{id}", get(dr::get_order))
        .route("/charges/{id}", get(dr::get_charge))
        .route("/sources/{id}", get(dr::get_source))
        .route("/events", get(dr::list_events))
        .route("/events/{id}", get(dr::get_event))
        .route_layer(middleware::from_fn_with_state(app.clone(), dr_surface));
    let control = Router::new()
        .route("/sandbox/orders", post(control::create_order))
        .route("/sandbox/orders/{id}/accept", post(control::accept_order))
        .route(
            "/sandbox/orders/{id}/chargeback",
            post(control::grant_chargeback),
        )
        .route(
            "/sandbox/charges/{id}/refunds",
            post(control::record_refund),
        )
        .route("/sandbox/orders/{id}/dispute", post(control::open_dispute))
        .route(
            "/sandbox/orders/{id}/dispute/resolve",
            post(control::resolve_dispute),
        )
        .route("/sandbox/clock", get(control::get_clock))
        .route("/sandbox/clock/advance", post(control::advance_clock))
        .route(
            "/sandbox/webhooks",
            post(control::create_webhook).get(control::list_webhooks),
        )
        .route(
            "/sandbox/webhooks/{id}",
            axum::routing::delete(control::delete_webhook),
        )
        .route(
            "/sandbox/webhooks/{id}/rotate",
            post(control::rotate_webhook),
        )
        .route(
            "/sandbox/faults",
            post(control::arm_fault)
                .get(control::list_faults)
                .delete(control::clear_faults),
        )
        .route(
            "/sandbox/rate-limit",
            get(control::get_rate_limit).post(control::set_rate_limit),
        )
        .route("/sandbox/settle", post(control::settle))
        .route("/sandbox/pending", get(control::list_pending))
        .route(
            "/sandbox/requests",
            get(control::list_requests).delete(control::clear_requests),
        )
        .route(
            "/sandbox/deliveries",
            get(control::list_deliveries).delete(control::clear_deliveries),
        )
        .route("/sandbox/events", post(control::emit_event))
        .route("/sandbox/events/{id}/redeliver", post(control::redeliver))
        .route(
            "/sandbox/delivery",
            get(control::get_delivery).post(control::set_delivery),
        );
    Router::new()
        .merge(dr)
        .merge(control)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn(require_bearer))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(app)
}

async fn not_found(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        None,
        format!("No resource at '{}'.", req.uri().path()),
    )
}

async fn method_not_allowed(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        None,
        format!(
            "Method '{}' is not allowed on '{}'.",
            req.method(),
            req.uri().path()
        ),
    )
}

/// `Authorization: Bearer <non-empty key>` or a DR-shaped 401 (docs/digital-river.md §5.4).
async fn require_bearer(mut req: Request, next: Next) -> Response {
    let key = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .map(str::to_owned);
    let Some(key) = key else {
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            None,
            "A valid secret key is required in 'Authorization: Bearer <key>'.",
        )
        .into_response();
    };
    // why: the key decides test vs live mode (docs/digital-river.md §5.4).
    req.extensions_mut().insert(KeyMode {
        live: !key.starts_with("sk_test_"),
    });
    req.extensions_mut().insert(ApiKey(key));
    next.run(req).await
}

/// Logs every DR-surface request, applies DR's rate limit, then the first matching
/// armed fault.
async fn dr_surface(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    let bytes = match to_bytes(body, MAX_BODY_BYTES).await {
        Ok(b) => b,
        Err(_) => {
            return ApiError::bad_body("The request body is too large or unreadable.")
                .into_response()
        }
    };
    let method = parts.method.as_str().to_owned();
    let path = parts.uri.path().to_owned();
    let headers = parts
        .headers
        .iter()
        .filter(|(name, _)| *name != header::AUTHORIZATION)
        .map(|(name, value)| {
            (
                name.as_str().to_owned(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body_json = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
    };
    let key = parts.extensions.get::<ApiKey>().map(|k| k.0.clone());
    let live = parts.extensions.get::<KeyMode>().is_none_or(|m| m.live);
    let (limited, fault) = {
        let mut world = app.lock();
        // why: DR answers 429 before doing anything (docs/digital-river.md §5.2).
        let limited = world
            .rate_limiter
            .check(key.as_deref().unwrap_or_default(), live, Instant::now())
            .err();
        let fault = if limited.is_some() {
            None
        } else {
            world.faults.take(&method, &path)
        };
        world.record_request(RequestRecord {
            seq: 0,
            method,
            path,
            query: parts.uri.query().map(str::to_owned),
            headers,
            body: body_json,
            at: Utc::now(),
            fault: fault.as_ref().map(|f| f.kind.as_str().to_owned()),
            rate_limited: limited.is_some(),
        });
        (limited, fault)
    };
    if let Some(retry_after) = limited {
        return ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_requests",
            None,
            "Too many requests: this key's rate limit was reached.",
        )
        .with_retry_after(Some(retry_after))
        .into_response();
    }
    let kill = parts
        .extensions
        .get::<ConnectInfo<ConnKill>>()
        .map(|c| c.0 .0.clone());
    let req = Request::from_parts(parts, Body::from(bytes));
    match fault {
        None => next.run(req).await,
        Some(fault) => apply_fault(fault, req, next, kill).await,
    }
}

async fn apply_fault(
    fault: Fault,
    req: Request,
    next: Next,
    kill: Option<super::conn::KillSwitch>,
) -> Response {
    let latency = Duration::from_millis(fault.latency_ms);
    match fault.kind {
        FaultKind::Latency => {
            tokio::time::sleep(latency).await;
            next.run(req).await
        }
        FaultKind::Status => injected_status(&fault),
        FaultKind::DelayedCommit => {
            // why: a task of its own, so the request takes effect even when the
            // caller hangs up (which drops this handler) before `latency`.
            let late = tokio::spawn(async move {
                tokio::time::sleep(latency).await;
                next.run(req).await
            });
            late.await
                .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
        }
        FaultKind::StatusThenCommit => {
            tokio::spawn(async move {
                tokio::time::sleep(latency).await;
                let _committed = next.run(req).await;
            });
            injected_status(&fault)
        }
        FaultKind::Reset => reset(kill),
        FaultKind::ResetAfterProcessing => {
            let _processed = next.run(req).await;
            reset(kill)
        }
        FaultKind::LatencyAfterProcessing => {
            let resp = next.run(req).await;
            tokio::time::sleep(latency).await;
            resp
        }
        FaultKind::Malformed => {
            let resp = next.run(req).await;
            let bytes = to_bytes(resp.into_body(), usize::MAX)
                .await
                .unwrap_or_default();
            // Half of the real body: an unterminated JSON document.
            let cut = (bytes.len() / 2).max(1).min(bytes.len());
            let mut body = bytes.slice(..cut).to_vec();
            if body.is_empty() {
                body = b"{\"id\":".to_vec();
            }
            let mut resp = (StatusCode::OK, Bytes::from(body)).into_response();
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            resp
        }
    }
}

/// The DR-shaped error a `status` (or `status_then_commit`) fault answers.
fn injected_status(fault: &Fault) -> Response {
    let status = StatusCode::from_u16(fault.status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    let code = super::error::type_for_status(status);
    ApiError::new(status, code, None, "Injected by the sandbox fault table.")
        .with_retry_after(fault.retry_after)
        .into_response()
}

/// Kills the connection; the response returned is never written.
fn reset(kill: Option<super::conn::KillSwitch>) -> Response {
    match kill {
        Some(k) => {
            k.kill();
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
        // Served without the killable listener: break the body instead.
        None => {
            let stream = futures::stream::once(async {
                Err::<Bytes, std::io::Error>(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "sandbox fault",
                ))
            });
            Response::new(Body::from_stream(stream))
        }
    }
}
