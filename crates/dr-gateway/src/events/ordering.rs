//! What DR events are ordered by: the ordering key of an event (which events must
//! not overtake each other) and DR's creation order within one key.
//!
//! # Keys
//! An event's key is the DR order it is about ([`EventMeta::order_id`]); for an
//! event without an order (a customer, a subscription, a sales transaction without
//! `orderId`), the id of its `data.object`, so events about the same object stay in
//! order; lacking that, the event's own id (it is ordered with nothing).
//!
//! # Creation order
//! Within a key, events are ordered by DR's `createdTime`, ties broken by the
//! gateway's arrival order (log sequence): DR stamps `createdTime` to the
//! microsecond (docs/digital-river.md §3.2) and promises no delivery order
//! (docs/digital-river.md §4.2), so arrival order is all that is left for a tie.

use chrono::{DateTime, Utc};

use super::{envelope::EventMeta, log::Sequence};

/// The ordering key of an event; see the module docs.
pub fn ordering_key(env: &EventMeta) -> String {
    env.order_id
        .as_ref()
        .or(env.object_id.as_ref())
        .unwrap_or(&env.id)
        .clone()
}

/// An event's place in its key's creation order: compare these to order events of
/// one key (earlier first).
pub type CreationOrder = (DateTime<Utc>, Sequence);

/// The creation-order position of the event stored at `seq`.
pub fn creation_order(env: &EventMeta, seq: Sequence) -> CreationOrder {
    (env.created_time, seq)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Envelope;
    use bytes::Bytes;

    fn env(body: &str) -> EventMeta {
        Envelope::parse(Bytes::from(body.to_owned()))
            .unwrap()
            .into()
    }

    #[test]
    fn events_are_keyed_by_order_then_object_then_themselves() {
        let charge = env(
            r#"{"id":"e1","type":"order.charge.capture.complete","createdTime":"2024-01-01T00:00:00Z",
                "data":{"object":{"id":"ch1","orderId":"ord-9"}}}"#,
        );
        assert_eq!(ordering_key(&charge), "ord-9");
        let customer = env(
            r#"{"id":"e2","type":"customer.updated","createdTime":"2024-01-01T00:00:00Z",
                "data":{"object":{"id":"cus_1"}}}"#,
        );
        assert_eq!(ordering_key(&customer), "cus_1");
        let bare = env(
            r#"{"id":"e3","type":"thing.happened","createdTime":"2024-01-01T00:00:00Z",
                "data":{"object":{}}}"#,
        );
        assert_eq!(ordering_key(&bare), "e3");
    }

    #[test]
    fn creation_order_breaks_ties_by_arrival() {
        let a = env(
            r#"{"id":"a","type":"t","createdTime":"2024-01-01T00:00:00.000002Z","data":{"object":{}}}"#,
        );
        let b = env(
            r#"{"id":"b","type":"t","createdTime":"2024-01-01T00:00:00.000001Z","data":{"object":{}}}"#,
        );
        assert!(creation_order(&b, 9) < creation_order(&a, 1));
        assert!(creation_order(&a, 1) < creation_order(&a, 2));
    }
}
