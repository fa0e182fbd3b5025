//! Settlement of pending captures and cancels, and the order progress that follows.
//!
//! In `immediate` mode this runs right after each `POST /fulfillments`; in `stepped` mode
//! only on `POST /sandbox/settle`. Outcomes are fixed when the operation is created
//! (`failCaptures` / `failCancels` on the order).

use serde_json::{json, Value};

use super::model::{OpKind, OpState, View};
use super::state::World;

impl World {
    /// Completes (or fails) every pending operation, emitting `order.charge.capture.*` /
    /// `order.charge.cancel.*` and then `order.complete` where it applies. Returns what
    /// was settled.
    pub(crate) fn settle_all(&mut self) -> Vec<Value> {
        let now = self.clock.now();
        let pending = std::mem::take(&mut self.pending);
        let mut settled = Vec::with_capacity(pending.len());
        let mut touched: Vec<String> = Vec::new();
        for p in pending {
            let Some(order) = self.orders.get_mut(&p.order_id) else {
                continue;
            };
            let Some(charge) = order.charges.iter_mut().find(|c| c.id == p.charge_id) else {
                continue;
            };
            let Some(op) = charge.op_mut(p.kind, &p.op_id) else {
                continue;
            };
            op.state = if op.will_fail {
                OpState::Failed
            } else {
                OpState::Complete
            };
            op.updated = now;
            let (state, amount) = (op.state, op.amount);
            let Some(charge) = order.charges.iter().find(|c| c.id == p.charge_id) else {
                continue;
            };
            let object = order.charge_json(charge, View::Event);
            let live = order.live_mode;
            let event_type = format!("order.charge.{}.{}", p.kind.as_str(), state.as_str());
            let amount_json = super::money::to_json(amount, order.exp);
            let event_id = self.emit(&event_type, object, None, live);
            settled.push(json!({
                "orderId": p.order_id,
                "chargeId": p.charge_id,
                "kind": match p.kind { OpKind::Capture => "capture", OpKind::Cancel => "cancel" },
                "operationId": p.op_id,
                "amount": amount_json,
                "state": state.as_str(),
                "eventId": event_id,
            }));
            if !touched.contains(&p.order_id) {
                touched.push(p.order_id);
            }
        }
        for order_id in touched {
            self.progress_order(&order_id);
        }
        settled
    }

    /// Moves a fulfilled order to `complete` once every charge is fully captured or
    /// cancelled (docs/digital-river.md §3.3), emitting `order.complete`.
    pub(crate) fn progress_order(&mut self, order_id: &str) {
        let now = self.clock.now();
        let Some(order) = self.orders.get_mut(order_id) else {
            return;
        };
        if order.state != "fulfilled" || !order.charges.iter().all(|c| c.is_terminal()) {
            return;
        }
        order.state = "complete".to_owned();
        super::model::set_transition(&mut order.transitions, "complete", now);
        order.updated = now;
        let (object, live) = (order.to_json(true, View::Event), order.live_mode);
        self.emit(
            "order.complete",
            object,
            Some(json!({"state": "fulfilled"})),
            live,
        );
    }
}
