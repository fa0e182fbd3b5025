//! The typed `Event.payload` of a DR event: the charge, fulfillment or order its
//! `data.object` holds, through the gateway's DR → protobuf conversions.

use crate::digital_river::models;
use crate::events::Envelope;
use crate::grpc::convert;
use crate::pb::v1 as pb;

/// The typed `Event.payload` for a DR event: the charge, fulfillment or order in
/// `data.object`, through the core's DR → protobuf conversions. Injected into the
/// event log's [`EventEncoder`] by the app.
pub fn decode_payload(env: &Envelope) -> Option<pb::event::Payload> {
    let t = env.event_type.as_str();
    let object = || serde_json::Value::Object(env.object.clone());
    // why: which object each type carries, docs/digital-river.md §3.2.
    if t == "order.charge.reauth.failed" {
        let order: models::Order = serde_json::from_value(object()).ok()?;
        return Some(pb::event::Payload::Order(convert::order(&order)));
    }
    if t.starts_with("order.charge.") {
        let charge: models::Charge = serde_json::from_value(object()).ok()?;
        return Some(pb::event::Payload::Charge(convert::charge(&charge, "")));
    }
    if t.starts_with("fulfillment.") {
        let ful: models::Fulfillment = serde_json::from_value(object()).ok()?;
        return Some(pb::event::Payload::Fulfillment(convert::fulfillment(&ful)));
    }
    let not_an_order = ["order.chargeback", "order.invoice.", "order.credit_memo."]
        .iter()
        .any(|p| t.starts_with(p));
    if t.starts_with("order.") && !not_an_order {
        let order: models::Order = serde_json::from_value(object()).ok()?;
        return Some(pb::event::Payload::Order(convert::order(&order)));
    }
    None
}
