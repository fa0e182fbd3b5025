//! Handlers of the sandbox-only control surface under `/sandbox/` (see the crate docs in `lib.rs`
//! for the contract).

use std::sync::Arc;

use axum::{
    body::Bytes,
    extract::{Path, RawQuery, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    Extension, Json,
};
use chrono::Duration;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::query::Params;
use super::KeyMode;
use crate::clock::{fmt_event_time, parse_time};
use crate::error::ApiError;
use crate::events::DR_VERSION;
use crate::faults::FaultSpec;
use crate::fulfillments::parse_object;
use crate::orders::CreateOrder;
use crate::rate_limit::RateLimit;
use crate::reversals::{GrantChargeback, RecordRefund};
use crate::state::App;
use crate::webhooks::Webhook;
use crate::DeliveryOrder;

type ApiResult = Result<(StatusCode, Json<Value>), ApiError>;

/// Parses a JSON object body into `T`, mapping failures to DR-shaped 400s.
fn body_as<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let obj = parse_object(body)?;
    serde_json::from_value(Value::Object(obj))
        .map_err(|e| ApiError::bad_body(format!("Invalid request body: {e}.")))
}

/// Like [`body_as`], with an empty body read as `{}` (every field optional).
fn body_as_or_empty<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return body_as(b"{}");
    }
    body_as(body)
}

fn webhook_not_found(id: &str) -> ApiError {
    ApiError::not_found("id", format!("Webhook '{id}' not found."))
}

/// `POST /sandbox/orders`.
pub(super) async fn create_order(
    State(app): State<Arc<App>>,
    Extension(key): Extension<KeyMode>,
    body: Bytes,
) -> ApiResult {
    let spec: CreateOrder = body_as(&body)?;
    let json = app.lock().create_order(spec, key.live)?;
    Ok((StatusCode::CREATED, Json(json)))
}

/// `POST /sandbox/orders/{id}/accept`.
pub(super) async fn accept_order(
    State(app): State<Arc<App>>,
    Extension(key): Extension<KeyMode>,
    Path(id): Path<String>,
) -> ApiResult {
    Ok((
        StatusCode::OK,
        Json(app.lock().accept_order(&id, key.live)?),
    ))
}

/// `POST /sandbox/orders/{id}/chargeback`.
pub(super) async fn grant_chargeback(
    State(app): State<Arc<App>>,
    Extension(key): Extension<KeyMode>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult {
    let spec: GrantChargeback = body_as_or_empty(&body)?;
    let json = app.lock().grant_chargeback(&id, spec, key.live)?;
    Ok((StatusCode::CREATED, Json(json)))
}

/// `POST /sandbox/charges/{id}/refunds`.
pub(super) async fn record_refund(
    State(app): State<Arc<App>>,
    Extension(key): Extension<KeyMode>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult {
    let spec: RecordRefund = body_as_or_empty(&body)?;
    let json = app.lock().record_refund(&id, spec, key.live)?;
    Ok((StatusCode::CREATED, Json(json)))
}

/// `POST /sandbox/orders/{id}/dispute`.
pub(super) async fn open_dispute(
    State(app): State<Arc<App>>,
    Extension(key): Extension<KeyMode>,
    Path(id): Path<String>,
) -> ApiResult {
    Ok((
        StatusCode::OK,
        Json(app.lock().open_dispute(&id, key.live)?),
    ))
}

/// `POST /sandbox/orders/{id}/dispute/resolve`.
pub(super) async fn resolve_dispute(
    State(app): State<Arc<App>>,
    Extension(key): Extension<KeyMode>,
    Path(id): Path<String>,
) -> ApiResult {
    Ok((
        StatusCode::OK,
        Json(app.lock().resolve_dispute(&id, key.live)?),
    ))
}

fn clock_json(app: &App) -> Value {
    let world = app.lock();
    json!({"now": fmt_event_time(world.clock.now()), "offsetSeconds": world.clock.offset_seconds()})
}

/// `GET /sandbox/clock`.
pub(super) async fn get_clock(State(app): State<Arc<App>>) -> ApiResult {
    Ok((StatusCode::OK, Json(clock_json(&app))))
}

#[derive(Deserialize)]
struct Advance {
    seconds: i64,
}

/// `POST /sandbox/clock/advance {"seconds": n}`.
pub(super) async fn advance_clock(State(app): State<Arc<App>>, body: Bytes) -> ApiResult {
    let spec: Advance = body_as(&body)?;
    if spec.seconds < 0 {
        return Err(ApiError::invalid(
            "seconds",
            "The clock only moves forward.",
        ));
    }
    app.lock().clock.advance(spec.seconds);
    Ok((StatusCode::OK, Json(clock_json(&app))))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WebhookSpec {
    url: Option<String>,
    address: Option<String>,
    secret: Option<String>,
    types: Option<Vec<String>>,
    enabled: Option<bool>,
}

/// `POST /sandbox/webhooks`.
pub(super) async fn create_webhook(State(app): State<Arc<App>>, body: Bytes) -> ApiResult {
    let spec: WebhookSpec = body_as(&body)?;
    let url = spec
        .url
        .or(spec.address)
        .filter(|u| !u.is_empty())
        .ok_or_else(|| ApiError::missing("url"))?;
    let mut world = app.lock();
    let secret = spec
        .secret
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| world.ids.uuid());
    let hook = Webhook {
        id: world.ids.uuid(),
        url,
        secret,
        previous: None,
        types: spec
            .types
            .unwrap_or_default()
            .into_iter()
            .filter(|t| t != "*")
            .collect(),
        enabled: spec.enabled.unwrap_or(true),
        created: world.clock.now(),
    };
    let json = hook.to_json(world.clock.now());
    world.webhooks.push(hook);
    Ok((StatusCode::CREATED, Json(json)))
}

/// `GET /sandbox/webhooks`.
pub(super) async fn list_webhooks(State(app): State<Arc<App>>) -> ApiResult {
    let world = app.lock();
    let now = world.clock.now();
    let data: Vec<Value> = world.webhooks.iter().map(|w| w.to_json(now)).collect();
    Ok((StatusCode::OK, Json(json!({"data": data}))))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Rotate {
    secret: Option<String>,
    old_secret_valid_seconds: Option<i64>,
}

/// `POST /sandbox/webhooks/{id}/rotate`: new secret signs from now on; the old one is
/// recorded as active for the window (DR: "both secrets work", docs/digital-river.md §4.3).
pub(super) async fn rotate_webhook(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult {
    let spec: Rotate = body_as(&body)?;
    let mut world = app.lock();
    let now = world.clock.now();
    let new_secret = spec
        .secret
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| world.ids.uuid());
    let hook = world
        .webhooks
        .iter_mut()
        .find(|w| w.id == id)
        .ok_or_else(|| webhook_not_found(&id))?;
    let old = std::mem::replace(&mut hook.secret, new_secret);
    let valid = spec.old_secret_valid_seconds.unwrap_or(0).max(0);
    hook.previous = Some((old, now + Duration::seconds(valid)));
    Ok((StatusCode::OK, Json(hook.to_json(now))))
}

/// `DELETE /sandbox/webhooks/{id}`.
pub(super) async fn delete_webhook(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let mut world = app.lock();
    let before = world.webhooks.len();
    world.webhooks.retain(|w| w.id != id);
    if world.webhooks.len() == before {
        return Err(webhook_not_found(&id));
    }
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /sandbox/faults`.
pub(super) async fn arm_fault(State(app): State<Arc<App>>, body: Bytes) -> ApiResult {
    let spec: FaultSpec = body_as(&body)?;
    let fault = app
        .lock()
        .faults
        .arm(spec)
        .map_err(|(param, msg)| ApiError::invalid(param, msg))?;
    Ok((StatusCode::CREATED, Json(fault.to_json())))
}

/// `GET /sandbox/faults`.
pub(super) async fn list_faults(State(app): State<Arc<App>>) -> ApiResult {
    let data: Vec<Value> = app
        .lock()
        .faults
        .list()
        .iter()
        .map(|f| f.to_json())
        .collect();
    Ok((StatusCode::OK, Json(json!({"data": data}))))
}

/// `DELETE /sandbox/faults`.
pub(super) async fn clear_faults(State(app): State<Arc<App>>) -> StatusCode {
    app.lock().faults.clear();
    StatusCode::NO_CONTENT
}

fn rate_limit_json(app: &App) -> Value {
    let world = app.lock();
    let limiter = &world.rate_limiter;
    let (admitted, limited) = limiter.counts();
    let shown = limiter.limit().unwrap_or(RateLimit::documented());
    json!({
        "enabled": limiter.limit().is_some(),
        "livePerSecond": shown.live_per_second,
        "testPerSecond": shown.test_per_second,
        "admitted": admitted,
        "limited": limited,
    })
}

/// `GET /sandbox/rate-limit`.
pub(super) async fn get_rate_limit(State(app): State<Arc<App>>) -> ApiResult {
    Ok((StatusCode::OK, Json(rate_limit_json(&app))))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RateLimitSpec {
    enabled: bool,
    live_per_second: Option<u32>,
    test_per_second: Option<u32>,
}

/// `POST /sandbox/rate-limit {enabled, livePerSecond?, testPerSecond?}`.
pub(super) async fn set_rate_limit(State(app): State<Arc<App>>, body: Bytes) -> ApiResult {
    let spec: RateLimitSpec = body_as(&body)?;
    let documented = RateLimit::documented();
    let limit = RateLimit {
        live_per_second: spec.live_per_second.unwrap_or(documented.live_per_second),
        test_per_second: spec.test_per_second.unwrap_or(documented.test_per_second),
    };
    if limit.live_per_second == 0 {
        return Err(ApiError::invalid("livePerSecond", "Must be at least 1."));
    }
    if limit.test_per_second == 0 {
        return Err(ApiError::invalid("testPerSecond", "Must be at least 1."));
    }
    app.lock()
        .rate_limiter
        .set_limit(spec.enabled.then_some(limit));
    Ok((StatusCode::OK, Json(rate_limit_json(&app))))
}

/// `POST /sandbox/settle`: completes every pending capture/cancel now.
pub(super) async fn settle(State(app): State<Arc<App>>) -> ApiResult {
    let settled = app.lock().settle_all();
    Ok((StatusCode::OK, Json(json!({"settled": settled}))))
}

/// `GET /sandbox/pending`: captures/cancels waiting for `POST /sandbox/settle`.
pub(super) async fn list_pending(State(app): State<Arc<App>>) -> ApiResult {
    let world = app.lock();
    let data: Vec<Value> = world
        .pending
        .iter()
        .map(|p| json!({"orderId": p.order_id, "chargeId": p.charge_id, "kind": p.kind.as_str(), "operationId": p.op_id}))
        .collect();
    Ok((StatusCode::OK, Json(json!({"data": data}))))
}

/// `GET /sandbox/requests[?method=&path=]`: DR-surface requests, oldest first.
pub(super) async fn list_requests(
    State(app): State<Arc<App>>,
    RawQuery(raw): RawQuery,
) -> ApiResult {
    let params = Params::parse(raw.as_deref());
    let method = params.get("method");
    let path = params.get("path");
    let world = app.lock();
    let data: Vec<Value> = world
        .requests()
        .filter(|r| method.is_none_or(|m| r.method.eq_ignore_ascii_case(m)))
        .filter(|r| path.is_none_or(|p| crate::glob::glob_match(p, &r.path)))
        .map(|r| r.to_json())
        .collect();
    Ok((StatusCode::OK, Json(json!({"data": data}))))
}

/// `DELETE /sandbox/requests`.
pub(super) async fn clear_requests(State(app): State<Arc<App>>) -> StatusCode {
    app.lock().clear_requests();
    StatusCode::NO_CONTENT
}

/// `GET /sandbox/deliveries[?eventId=&webhookId=]`: delivery attempts, oldest first.
pub(super) async fn list_deliveries(
    State(app): State<Arc<App>>,
    RawQuery(raw): RawQuery,
) -> ApiResult {
    let params = Params::parse(raw.as_deref());
    let event_id = params.get("eventId");
    let webhook_id = params.get("webhookId");
    let world = app.lock();
    let data: Vec<Value> = world
        .deliveries()
        .filter(|d| event_id.is_none_or(|e| d.event_id == e))
        .filter(|d| webhook_id.is_none_or(|w| d.webhook_id == w))
        .map(|d| d.to_json())
        .collect();
    Ok((StatusCode::OK, Json(json!({"data": data}))))
}

/// `DELETE /sandbox/deliveries`.
pub(super) async fn clear_deliveries(State(app): State<Arc<App>>) -> StatusCode {
    app.lock().clear_deliveries();
    StatusCode::NO_CONTENT
}

/// `POST /sandbox/events/{id}/redeliver`: sends the stored event again, re-signed.
pub(super) async fn redeliver(State(app): State<Arc<App>>, Path(id): Path<String>) -> ApiResult {
    let mut world = app.lock();
    let now = world.clock.now();
    if world.events.get(&id, now).is_none() {
        return Err(ApiError::not_found(
            "id",
            format!("Event '{id}' not found."),
        ));
    }
    let webhook_ids = world.deliver_event(&id);
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"eventId": id, "webhookIds": webhook_ids})),
    ))
}

/// `POST /sandbox/events`: a full envelope (`type` + `data`) or `{type, object,
/// previousAttributes?}`; missing envelope fields are filled in.
pub(super) async fn emit_event(
    State(app): State<Arc<App>>,
    Extension(key): Extension<KeyMode>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let mut obj = parse_object(&body)?;
    let event_type = match obj.get("type") {
        Some(Value::String(t)) if !t.is_empty() => t.clone(),
        _ => return Err(ApiError::missing("type")),
    };
    let mut world = app.lock();
    let now = world.clock.now();
    let id = if obj.contains_key("data") {
        let id = match obj.get("id") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            _ => world.ids.uuid(),
        };
        if world.events.contains(&id) {
            return Err(ApiError::conflict(
                "invalid_parameter",
                Some("id"),
                format!("Event '{id}' already exists."),
            ));
        }
        let created = match obj
            .get("createdTime")
            .and_then(Value::as_str)
            .and_then(parse_time)
        {
            Some(t) => t,
            None => {
                obj.insert("createdTime".into(), json!(fmt_event_time(now)));
                now
            }
        };
        obj.insert("id".into(), json!(id));
        obj.entry("liveMode").or_insert(json!(key.live));
        obj.entry("digitalriverVersion")
            .or_insert(json!(DR_VERSION));
        let hooks: Vec<String> = world
            .webhooks
            .iter()
            .filter(|w| w.wants(&event_type))
            .map(|w| w.id.clone())
            .collect();
        if !hooks.is_empty() {
            obj.entry("webhookIds").or_insert(json!(hooks));
        }
        world.store_and_deliver(id.clone(), event_type, created, Value::Object(obj));
        id
    } else {
        let object = obj
            .remove("object")
            .unwrap_or_else(|| Value::Object(Map::new()));
        let previous = obj.remove("previousAttributes");
        world.emit(&event_type, object, previous, key.live)
    };
    let json = world
        .events
        .get(&id, now)
        .map(|e| e.json.clone())
        .unwrap_or(Value::Null);
    Ok((StatusCode::CREATED, Json(json)).into_response())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DeliverySpec {
    order: Option<String>,
    jitter_ms: Option<u64>,
}

/// Longest jitter the control surface accepts.
const MAX_JITTER_MS: u64 = 10_000;

fn delivery_json(app: &App) -> Value {
    let mode = app.lock().delivery;
    json!({
        "order": mode.order.as_str(),
        "jitterMs": u64::try_from(mode.jitter.as_millis()).unwrap_or(u64::MAX),
    })
}

/// `GET /sandbox/delivery`.
pub(super) async fn get_delivery(State(app): State<Arc<App>>) -> ApiResult {
    Ok((StatusCode::OK, Json(delivery_json(&app))))
}

/// `POST /sandbox/delivery {"order"?: "concurrent" | "in_order", "jitterMs"?: n}`.
pub(super) async fn set_delivery(State(app): State<Arc<App>>, body: Bytes) -> ApiResult {
    let spec: DeliverySpec = body_as(&body)?;
    let order: Option<DeliveryOrder> = spec
        .order
        .map(|o| o.parse())
        .transpose()
        .map_err(|_: String| ApiError::invalid("order", "Use 'concurrent' or 'in_order'."))?;
    if spec.jitter_ms.is_some_and(|ms| ms > MAX_JITTER_MS) {
        return Err(ApiError::invalid("jitterMs", "At most 10000."));
    }
    {
        let mut world = app.lock();
        if let Some(order) = order {
            world.delivery.order = order;
        }
        if let Some(ms) = spec.jitter_ms {
            world.delivery.jitter = std::time::Duration::from_millis(ms);
        }
    }
    Ok((StatusCode::OK, Json(delivery_json(&app))))
}
