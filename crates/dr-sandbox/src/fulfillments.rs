//! `POST /fulfillments` semantics: request validation, the order-state rules of
//! docs/digital-river.md §1.6, and turning fulfilled / cancelled units into captures and cancels.

use axum::http::StatusCode;
use serde_json::{Map, Value};

use super::error::ApiError;
use super::fulfill::{split, units_amount};
use super::model::{
    set_transition, Fulfillment, FulfillmentItem, FulfillmentModel, Item, Op, OpKind, OpState, View,
};
use super::orders::{int_value, order_not_found, DEFAULT_AUTH_DAYS};
use super::state::{PendingOp, World};

/// DR's 400 for quantities whose sums do not fit (the sandbox never wraps around).
fn too_large() -> ApiError {
    ApiError::invalid("quantity", "'quantity' or 'cancelQuantity' is too large.")
}

/// What a fulfillment does to one order line, worked out before anything changes.
#[derive(Debug, Clone, Copy)]
struct LinePlan {
    /// Index of the line in `order.items`.
    idx: usize,
    /// Units fulfilled afterwards.
    fulfilled: i64,
    /// Units cancelled afterwards.
    cancelled: i64,
    /// Share allocated afterwards.
    allocated: i64,
    /// Amount to capture for the fulfilled units.
    capture: i64,
    /// Amount to cancel for the cancelled units.
    cancel: i64,
}

impl LinePlan {
    /// Fulfils `q` and cancels `cq` more units of `item`; `None` on overflow.
    /// Fulfilled units go first, then cancelled ones; the unit emptying the line takes
    /// the remainder.
    fn for_item(idx: usize, item: &Item, q: i64, cq: i64) -> Option<Self> {
        let done = item.fulfilled.checked_add(item.cancelled)?;
        let capture = units_amount(item.share, item.quantity, done, item.allocated, q)?;
        let allocated = item.allocated.checked_add(capture)?;
        let cancel = units_amount(
            item.share,
            item.quantity,
            done.checked_add(q)?,
            allocated,
            cq,
        )?;
        Some(Self {
            idx,
            fulfilled: item.fulfilled.checked_add(q)?,
            cancelled: item.cancelled.checked_add(cq)?,
            allocated: allocated.checked_add(cancel)?,
            capture,
            cancel,
        })
    }
}

/// A validated `POST /fulfillments` body.
#[derive(Debug, Clone)]
pub(crate) struct FulfillmentRequest {
    order_id: String,
    items: Vec<RequestItem>,
    shipment_id: Option<String>,
    tracking_company: Option<String>,
    tracking_number: Option<String>,
    tracking_url: Option<String>,
    metadata: Option<Value>,
}

#[derive(Debug, Clone)]
struct RequestItem {
    item_id: String,
    quantity: i64,
    cancel_quantity: i64,
    shipment_item_id: Option<String>,
}

/// A string field that may arrive as a number (DR's "Payment reauthorizations" page sends `"itemId": 225220780336`).
fn id_field(obj: &Map<String, Value>, key: &str) -> Option<String> {
    match obj.get(key)? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn opt_string(obj: &Map<String, Value>, key: &str) -> Result<Option<String>, ApiError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(_) => Err(ApiError::invalid(key, format!("'{key}' must be a string."))),
    }
}

/// A quantity: JSON integer or numeric string (the DR docs send `"quantity": "2"`, DR's "Capturing and cancelling charges" page).
fn quantity_field(obj: &Map<String, Value>, key: &str) -> Result<Option<i64>, ApiError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match int_value(v) {
            Some(q) if q >= 0 => Ok(Some(q)),
            _ => Err(ApiError::invalid(
                key,
                format!("'{key}' must be a non-negative integer."),
            )),
        },
    }
}

/// Parses the body of a JSON object into an object map, or a DR 400.
pub(crate) fn parse_object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_body("A JSON request body is required."));
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(ApiError::bad_body(
            "The request body must be a JSON object.",
        )),
        Err(e) => Err(ApiError::bad_body(format!(
            "The request body is not valid JSON: {e}."
        ))),
    }
}

impl FulfillmentRequest {
    /// Validates a body; errors name the parameter (docs/digital-river.md §1.2).
    pub(crate) fn parse(body: &[u8]) -> Result<Self, ApiError> {
        let obj = parse_object(body)?;
        let order_id = id_field(&obj, "orderId").ok_or_else(|| ApiError::missing("orderId"))?;
        let raw_items = match obj.get("items") {
            None | Some(Value::Null) => return Err(ApiError::missing("items")),
            Some(Value::Array(a)) if a.is_empty() => return Err(ApiError::missing("items")),
            Some(Value::Array(a)) => a,
            Some(_) => return Err(ApiError::invalid("items", "'items' must be an array.")),
        };
        let mut items = Vec::with_capacity(raw_items.len());
        for raw in raw_items {
            let Value::Object(item) = raw else {
                return Err(ApiError::invalid("items", "Each item must be an object."));
            };
            let item_id = id_field(item, "itemId").ok_or_else(|| ApiError::missing("itemId"))?;
            let quantity = quantity_field(item, "quantity")?;
            let cancel_quantity = quantity_field(item, "cancelQuantity")?;
            if quantity.is_none() && cancel_quantity.is_none() {
                // why: "doesn't need to specify both … but it must contain one or the other" (DR's "Capturing and cancelling charges" page).
                return Err(ApiError::missing("quantity"));
            }
            let (quantity, cancel_quantity) = (quantity.unwrap_or(0), cancel_quantity.unwrap_or(0));
            if quantity == 0 && cancel_quantity == 0 {
                return Err(ApiError::invalid(
                    "quantity",
                    "'quantity' or 'cancelQuantity' must be greater than 0.",
                ));
            }
            let shipment_item_id = opt_string(item, "shipmentItemId")?.filter(|s| !s.is_empty());
            if let Some(sid) = &shipment_item_id {
                // why: "for each item in the shipment, a unique shipmentItemId" (DR's
                // "Capturing and cancelling charges" page). DR does not document its
                // refusal; 400 invalid_parameter naming `shipmentItemId` is the sandbox's choice.
                if items
                    .iter()
                    .any(|i: &RequestItem| i.shipment_item_id.as_ref() == Some(sid))
                {
                    return Err(ApiError::invalid(
                        "shipmentItemId",
                        format!("Shipment item id '{sid}' is used by more than one item; each item needs its own."),
                    ));
                }
            }
            items.push(RequestItem {
                item_id,
                quantity,
                cancel_quantity,
                shipment_item_id,
            });
        }
        let metadata = match obj.get("metadata") {
            None | Some(Value::Null) => None,
            Some(Value::Object(m)) => {
                // why: "Value can be string, boolean or integer types" (docs/digital-river.md §1.2).
                let ok = m
                    .values()
                    .all(|v| v.is_string() || v.is_boolean() || v.as_i64().is_some());
                if !ok {
                    return Err(ApiError::invalid(
                        "metadata",
                        "Metadata values must be strings, booleans or integers.",
                    ));
                }
                Some(Value::Object(m.clone()))
            }
            Some(_) => {
                return Err(ApiError::invalid(
                    "metadata",
                    "'metadata' must be an object.",
                ))
            }
        };
        Ok(Self {
            order_id,
            items,
            shipment_id: opt_string(&obj, "shipmentId")?,
            tracking_company: opt_string(&obj, "trackingCompany")?,
            tracking_number: opt_string(&obj, "trackingNumber")?,
            tracking_url: opt_string(&obj, "trackingUrl")?,
            metadata,
        })
    }
}

impl World {
    /// Creates a fulfillment: checks the order's state, captures/cancels the units'
    /// share, emits `fulfillment.created` and the `*.pending` charge events.
    pub(crate) fn create_fulfillment(
        &mut self,
        req: FulfillmentRequest,
        live_mode: bool,
    ) -> Result<Value, ApiError> {
        let now = self.clock.now();
        let order = self
            .order_in_mode(&req.order_id, live_mode)
            .ok_or_else(|| order_not_found(&req.order_id))?;
        let oid = order.id.clone();
        match order.state.as_str() {
            // why: docs/digital-river.md §1.6 / DR's "Disputes and chargebacks" page.
            "dispute" => {
                return Err(ApiError::conflict(
                    "order_not_submitted",
                    Some("orderId"),
                    format!("Order '{oid}' has not been submitted."),
                ));
            }
            // why: docs/digital-river.md §1.6 / DR's "Capturing and cancelling charges" page — exact body.
            "fulfilled" | "complete" => {
                return Err(ApiError::conflict(
                    "order_fulfilled",
                    Some("orderId"),
                    format!("Resource '{oid}' is fulfilled."),
                ));
            }
            // The sandbox's choice (DR documents no refusal for these states): an order
            // not yet accepted answers like a disputed one, DR's code for "not ready to
            // fulfil"; a blocked or cancelled one is in a state that never will be.
            "in_review" | "pending_payment" => {
                return Err(ApiError::conflict(
                    "order_not_submitted",
                    Some("orderId"),
                    format!("Order '{oid}' has not been submitted."),
                ));
            }
            "blocked" | "cancelled" => {
                return Err(ApiError::conflict(
                    "invalid_state",
                    Some("orderId"),
                    format!("Order '{oid}' is {}.", order.state),
                ));
            }
            _ => {}
        }
        if order.model == FulfillmentModel::Distributed {
            // why: the distributed model needs one shipmentId and a shipmentItemId per item (DR's "Capturing and cancelling charges" page).
            if req.shipment_id.as_deref().is_none_or(str::is_empty) {
                return Err(ApiError::missing("shipmentId"));
            }
            if req
                .items
                .iter()
                .any(|i| i.shipment_item_id.as_deref().is_none_or(str::is_empty))
            {
                return Err(ApiError::missing("shipmentItemId"));
            }
        }
        // Totals per line (an item may appear more than once). Every sum is checked:
        // quantities come from the caller and may be as large as i64 allows.
        let mut wanted: Vec<(usize, i64, i64)> = Vec::new();
        for ri in &req.items {
            let idx = order
                .items
                .iter()
                .position(|i| i.id == ri.item_id)
                .ok_or_else(|| {
                    ApiError::invalid(
                        "itemId",
                        format!("Item '{}' does not belong to order '{oid}'.", ri.item_id),
                    )
                })?;
            match wanted.iter_mut().find(|(i, _, _)| *i == idx) {
                Some(w) => {
                    w.1 = w.1.checked_add(ri.quantity).ok_or_else(too_large)?;
                    w.2 = w.2.checked_add(ri.cancel_quantity).ok_or_else(too_large)?;
                }
                None => wanted.push((idx, ri.quantity, ri.cancel_quantity)),
            }
        }
        // The whole effect, worked out before anything changes.
        let mut plan: Vec<LinePlan> = Vec::with_capacity(wanted.len());
        for (idx, q, cq) in &wanted {
            let item = &order.items[*idx];
            let units = q.checked_add(*cq).ok_or_else(too_large)?;
            if units > item.remaining() {
                let parameter = if *q > 0 { "quantity" } else { "cancelQuantity" };
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "quantity_too_large",
                    Some(parameter),
                    format!(
                        "Quantity {units} exceeds the {} unit(s) of item '{}' left to fulfill or cancel.",
                        item.remaining(),
                        item.id
                    ),
                ));
            }
            plan.push(LinePlan::for_item(*idx, item, *q, *cq).ok_or_else(too_large)?);
        }
        let capture_total = plan
            .iter()
            .try_fold(0i64, |sum, p| sum.checked_add(p.capture))
            .ok_or_else(too_large)?;
        let cancel_total = plan
            .iter()
            .try_fold(0i64, |sum, p| sum.checked_add(p.cancel))
            .ok_or_else(too_large)?;
        let captures_requested = wanted.iter().any(|(_, q, _)| *q > 0);
        let reauthorize = captures_requested && order.risk_averse && order.auth_is_expired(now);
        if reauthorize && !order.reauth_succeeds {
            // why: risk-averse accounts never capture on an expired authorization (DR's "Payment reauthorizations" page).
            let (object, live) = (order.to_json(true, View::Event), order.live_mode);
            self.emit("order.charge.reauth.failed", object, None, live);
            return Err(ApiError::payment_authorization_failed());
        }

        // --- apply ---
        let ful_id = self.ids.fulfillment();
        let mut op_ids: Vec<(String, OpKind, String)> = Vec::new(); // (charge id, kind, op id)
        let Some(order) = self.orders.get_mut(&oid) else {
            return Err(order_not_found(&oid));
        };
        if reauthorize {
            // why: the page's second outcome — DR secures a new authorization and the
            // capture proceeds (201, then order.charge.capture.pending); the new one lasts
            // as long as a first one would.
            order.auth_expired = false;
            order.auth_expires_at = Some(now + chrono::Duration::days(DEFAULT_AUTH_DAYS));
        }
        for p in &plan {
            let item = &mut order.items[p.idx];
            item.allocated = p.allocated;
            item.fulfilled = p.fulfilled;
            item.cancelled = p.cancelled;
            match item.state() {
                "fulfilled" => set_transition(&mut item.transitions, "fulfilled", now),
                "cancelled" => set_transition(&mut item.transitions, "cancelled", now),
                _ => {}
            }
        }
        let fail_captures = order.fail_captures;
        let fail_cancels = order.fail_cancels;
        for (kind, total, credit_first, will_fail) in [
            (OpKind::Capture, capture_total, true, fail_captures),
            (OpKind::Cancel, cancel_total, false, fail_cancels),
        ] {
            if total <= 0 {
                continue;
            }
            let open: Vec<_> = order
                .charges
                .iter()
                .enumerate()
                .map(|(i, c)| (i, c.kind, c.open_amount()))
                .collect();
            for (ci, amount) in split(total, &open, credit_first) {
                let op = Op {
                    id: self.ids.uuid(),
                    created: now,
                    updated: now,
                    amount,
                    state: OpState::Pending,
                    fulfillment_id: ful_id.clone(),
                    will_fail,
                };
                let charge = &mut order.charges[ci];
                op_ids.push((charge.id.clone(), kind, op.id.clone()));
                match kind {
                    OpKind::Capture => charge.captures.push(op),
                    OpKind::Cancel => charge.cancels.push(op),
                }
            }
        }
        // Order state: every line done → fulfilled (some shipped) or cancelled (none).
        let mut state_change = None;
        if order.items.iter().all(|i| i.remaining() == 0) {
            let new_state = if order.items.iter().any(|i| i.fulfilled > 0) {
                "fulfilled"
            } else {
                "cancelled"
            };
            let previous = std::mem::replace(&mut order.state, new_state.to_owned());
            set_transition(&mut order.transitions, new_state, now);
            state_change = Some((new_state, previous));
        }
        order.updated = now;
        let fulfillment = Fulfillment {
            id: ful_id.clone(),
            created: now,
            order_id: oid.clone(),
            items: req
                .items
                .iter()
                .map(|ri| FulfillmentItem {
                    sku_id: order
                        .items
                        .iter()
                        .find(|i| i.id == ri.item_id)
                        .map(|i| i.sku_id.clone())
                        .unwrap_or_default(),
                    item_id: ri.item_id.clone(),
                    quantity: ri.quantity,
                    cancel_quantity: ri.cancel_quantity,
                    shipment_item_id: ri.shipment_item_id.clone(),
                })
                .collect(),
            shipment_id: req.shipment_id,
            tracking_company: req.tracking_company,
            tracking_number: req.tracking_number,
            tracking_url: req.tracking_url,
            metadata: req.metadata,
            live_mode,
            charge_operation_ids: op_ids.iter().map(|(_, _, id)| id.clone()).collect(),
        };
        // Events, in DR's order: fulfillment.created, the pending operations, then the order state.
        let order_details = order.to_json(false, View::Event);
        let order_live = order.live_mode;
        let charge_events: Vec<(String, Value)> = op_ids
            .iter()
            .filter_map(|(cid, kind, _)| {
                let charge = order.charges.iter().find(|c| &c.id == cid)?;
                Some((
                    format!("order.charge.{}.pending", kind.as_str()),
                    order.charge_json(charge, View::Event),
                ))
            })
            .collect();
        let order_event = state_change
            .map(|(s, prev)| (format!("order.{s}"), order.to_json(true, View::Event), prev));
        let response = fulfillment.to_json(None);
        self.emit(
            "fulfillment.created",
            fulfillment.to_json(Some(order_details)),
            None,
            live_mode,
        );
        for (event_type, object) in charge_events {
            self.emit(&event_type, object, None, order_live);
        }
        if let Some((event_type, object, prev)) = order_event {
            self.emit(
                &event_type,
                object,
                Some(serde_json::json!({"state": prev})),
                order_live,
            );
        }
        for (charge_id, kind, op_id) in op_ids {
            self.pending.push(PendingOp {
                order_id: oid.clone(),
                charge_id,
                kind,
                op_id,
            });
        }
        self.fulfillment_index
            .insert(ful_id, self.fulfillments.len());
        self.fulfillments.push(fulfillment);
        Ok(response)
    }

    /// `GET /fulfillments/{id}` JSON (with `orderDetails`) for a key of mode `live`.
    pub(crate) fn fulfillment_json(&self, id: &str, live: bool) -> Option<Value> {
        let f = self
            .fulfillment_index
            .get(id)
            .and_then(|&i| self.fulfillments.get(i))
            .filter(|f| f.live_mode == live)?;
        let details = self
            .orders
            .get(&f.order_id)
            .map(|o| o.to_json(false, View::Api));
        Some(f.to_json(details))
    }

    /// `POST /fulfillments/{id}`: updates tracking data (docs/digital-river.md §1.5). Items, when
    /// given, must belong to the fulfillment; nothing else changes.
    pub(crate) fn update_tracking(
        &mut self,
        id: &str,
        body: &Map<String, Value>,
        live: bool,
    ) -> Result<Value, ApiError> {
        let idx = *self
            .fulfillment_index
            .get(id)
            .filter(|&&i| {
                self.fulfillments
                    .get(i)
                    .is_some_and(|f| f.live_mode == live)
            })
            .ok_or_else(|| ApiError::not_found("id", format!("Fulfillment '{id}' not found.")))?;
        let company = opt_string(body, "trackingCompany")?;
        let number = opt_string(body, "trackingNumber")?;
        let url = opt_string(body, "trackingUrl")?;
        let f = self
            .fulfillments
            .get_mut(idx)
            .ok_or_else(|| ApiError::not_found("id", format!("Fulfillment '{id}' not found.")))?;
        match body.get("items") {
            None | Some(Value::Null) => {}
            Some(Value::Array(items)) => {
                for item in items {
                    let item_id = item
                        .as_object()
                        .and_then(|o| id_field(o, "itemId"))
                        .ok_or_else(|| ApiError::missing("itemId"))?;
                    if !f.items.iter().any(|i| i.item_id == item_id) {
                        return Err(ApiError::invalid(
                            "itemId",
                            format!("Item '{item_id}' is not part of fulfillment '{id}'."),
                        ));
                    }
                }
            }
            Some(_) => return Err(ApiError::invalid("items", "'items' must be an array.")),
        }
        if company.is_some() {
            f.tracking_company = company;
        }
        if number.is_some() {
            f.tracking_number = number;
        }
        if url.is_some() {
            f.tracking_url = url;
        }
        self.fulfillment_json(id, live)
            .ok_or_else(|| ApiError::not_found("id", format!("Fulfillment '{id}' not found.")))
    }
}
