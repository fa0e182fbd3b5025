//! Handlers of the emulated DR surface: fulfillments, orders, charges, events.

use std::sync::Arc;

use axum::{
    body::Bytes,
    extract::{Path, RawQuery, State},
    http::{HeaderMap, StatusCode},
    Extension, Json,
};
use serde_json::{json, Value};

use super::query::Params;
use super::KeyMode;
use crate::error::ApiError;
use crate::fulfillments::{parse_object, FulfillmentRequest};
use crate::glob::glob_match;
use crate::model::{OrderShape, View};
use crate::orders::order_not_found;
use crate::state::App;
use crate::SettleMode;

type ApiResult = Result<(StatusCode, Json<Value>), ApiError>;

fn list_body(data: Vec<Value>, has_more: bool) -> Json<Value> {
    Json(json!({"hasMore": has_more, "data": data}))
}

/// `POST /fulfillments`.
pub(super) async fn create_fulfillment(
    State(app): State<Arc<App>>,
    Extension(key): Extension<KeyMode>,
    body: Bytes,
) -> ApiResult {
    let req = FulfillmentRequest::parse(&body)?;
    let mut world = app.lock();
    let json = world.create_fulfillment(req, key.live)?;
    if world.settle_mode == SettleMode::Immediate {
        world.settle_all();
    }
    Ok((StatusCode::CREATED, Json(json)))
}

/// `GET /fulfillments/{id}` (with `orderDetails`, docs/digital-river.md §1.3).
pub(super) async fn get_fulfillment(
    State(app): State<Arc<App>>,
    Extension(key): Extension<KeyMode>,
    Path(id): Path<String>,
) -> ApiResult {
    let world = app.lock();
    let json = world
        .fulfillment_json(&id, key.live)
        .ok_or_else(|| ApiError::not_found("id", format!("Fulfillment '{id}' not found.")))?;
    Ok((StatusCode::OK, Json(json)))
}

/// `POST /fulfillments/{id}`: tracking update (docs/digital-river.md §1.5).
pub(super) async fn update_fulfillment(
    State(app): State<Arc<App>>,
    Extension(key): Extension<KeyMode>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult {
    let obj = parse_object(&body)?;
    let json = app.lock().update_tracking(&id, &obj, key.live)?;
    Ok((StatusCode::OK, Json(json)))
}

/// `GET /fulfillments` with DR's filters, newest first.
pub(super) async fn list_fulfillments(
    State(app): State<Arc<App>>,
    Extension(key): Extension<KeyMode>,
    RawQuery(raw): RawQuery,
) -> ApiResult {
    let params = Params::parse(raw.as_deref());
    let page = params.page()?;
    let created = params.created_time()?;
    let ids = params.list("ids");
    let order_id = params.get("orderId");
    let sku_id = params.get("skuId");
    let company = params.get("trackingCompany");
    let number = params.get("trackingNumber");
    let world = app.lock();
    let matching: Vec<_> = world
        .fulfillments
        .iter()
        .rev()
        .filter(|f| f.live_mode == key.live)
        .filter(|f| ids.is_empty() || ids.contains(&f.id))
        .filter(|f| order_id.is_none_or(|o| f.order_id == o))
        .filter(|f| sku_id.is_none_or(|s| f.items.iter().any(|i| i.sku_id == s)))
        .filter(|f| company.is_none_or(|c| f.tracking_company.as_deref() == Some(c)))
        .filter(|f| number.is_none_or(|n| f.tracking_number.as_deref() == Some(n)))
        .filter(|f| created.accepts(f.created))
        .collect();
    let (page, has_more) = page.apply(matching, |f| f.id.as_str())?;
    Ok((
        StatusCode::OK,
        list_body(
            page.into_iter().map(|f| f.to_json(None)).collect(),
            has_more,
        ),
    ))
}

/// The order layout the request's `digitalriver-version` asks for (docs/digital-river.md §7).
fn order_shape(headers: &HeaderMap) -> OrderShape {
    OrderShape::for_version(
        headers
            .get("digitalriver-version")
            .and_then(|v| v.to_str().ok()),
    )
}

/// `GET /orders/{id}`.
pub(super) async fn get_order(
    State(app): State<Arc<App>>,
    Extension(key): Extension<KeyMode>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult {
    let world = app.lock();
    let order = world
        .order_in_mode(&id, key.live)
        .ok_or_else(|| order_not_found(&id))?;
    Ok((
        StatusCode::OK,
        Json(order.to_json_shaped(order_shape(&headers))),
    ))
}

/// `GET /orders` with `upstreamIds`, `ids`, `state`, `createdTime`, newest first.
pub(super) async fn list_orders(
    State(app): State<Arc<App>>,
    Extension(key): Extension<KeyMode>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> ApiResult {
    let shape = order_shape(&headers);
    let params = Params::parse(raw.as_deref());
    let page = params.page()?;
    let created = params.created_time()?;
    let upstream = params.list("upstreamIds");
    let ids = params.list("ids");
    let state = params.get("state");
    let world = app.lock();
    let matching: Vec<_> = world
        .order_seq
        .iter()
        .rev()
        .filter_map(|id| world.order_in_mode(id, key.live))
        .filter(|o| {
            upstream.is_empty() || o.upstream_id.as_ref().is_some_and(|u| upstream.contains(u))
        })
        .filter(|o| ids.is_empty() || ids.contains(&o.id))
        .filter(|o| state.is_none_or(|s| o.state == s))
        .filter(|o| created.accepts(o.created))
        .collect();
    let (page, has_more) = page.apply(matching, |o| o.id.as_str())?;
    Ok((
        StatusCode::OK,
        list_body(
            page.into_iter().map(|o| o.to_json_shaped(shape)).collect(),
            has_more,
        ),
    ))
}

/// `GET /charges/{id}` — the only charge operation DR has (docs/digital-river.md §2.1).
pub(super) async fn get_charge(
    State(app): State<Arc<App>>,
    Extension(key): Extension<KeyMode>,
    Path(id): Path<String>,
) -> ApiResult {
    let world = app.lock();
    let not_found = || ApiError::not_found("id", format!("Charge '{id}' not found."));
    let order = world.order_of_charge(&id, key.live).ok_or_else(not_found)?;
    let charge = order
        .charges
        .iter()
        .find(|c| c.id == id)
        .ok_or_else(not_found)?;
    Ok((StatusCode::OK, Json(order.charge_json(charge, View::Api))))
}

/// `GET /sources/{id}`: a payment source (docs/digital-river.md §2.3), with its client
/// secret as DR returns it.
pub(super) async fn get_source(
    State(app): State<Arc<App>>,
    Extension(key): Extension<KeyMode>,
    Path(id): Path<String>,
) -> ApiResult {
    let json = app
        .lock()
        .source_json(&id, key.live)
        .ok_or_else(|| ApiError::not_found("id", format!("Source '{id}' not found.")))?;
    Ok((StatusCode::OK, Json(json)))
}

/// `GET /events` (docs/digital-river.md §3.1): `type` (with `*`) or `types`, not both.
pub(super) async fn list_events(
    State(app): State<Arc<App>>,
    Extension(key): Extension<KeyMode>,
    RawQuery(raw): RawQuery,
) -> ApiResult {
    let params = Params::parse(raw.as_deref());
    let page = params.page()?;
    let created = params.created_time()?;
    let single = params.get("type").filter(|s| !s.is_empty());
    let types = params.list("types");
    if single.is_some() && params.has("types") {
        // why: "either type or types, not both" (docs/digital-river.md §3.1).
        return Err(ApiError::invalid(
            "types",
            "Use either 'type' or 'types', not both.",
        ));
    }
    let world = app.lock();
    let now = world.clock.now();
    let matching: Vec<_> = world
        .events
        .newest_first(now)
        .filter(|e| e.live_mode == key.live)
        .filter(|e| single.is_none_or(|p| glob_match(p, &e.event_type)))
        .filter(|e| types.is_empty() || types.iter().any(|t| glob_match(t, &e.event_type)))
        .filter(|e| created.accepts(e.created))
        .collect();
    let (page, has_more) = page.apply(matching, |e| e.id.as_str())?;
    Ok((
        StatusCode::OK,
        list_body(page.into_iter().map(|e| e.json.clone()).collect(), has_more),
    ))
}

/// `GET /events/{id}`.
pub(super) async fn get_event(
    State(app): State<Arc<App>>,
    Extension(key): Extension<KeyMode>,
    Path(id): Path<String>,
) -> ApiResult {
    let world = app.lock();
    let now = world.clock.now();
    let event = world
        .events
        .get(&id, now)
        .filter(|e| e.live_mode == key.live)
        .ok_or_else(|| ApiError::not_found("id", format!("Event '{id}' not found.")))?;
    Ok((StatusCode::OK, Json(event.json.clone())))
}
