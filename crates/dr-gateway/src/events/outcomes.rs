//! Waits for the outcome of the captures or cancels a fulfillment started.
//!
//! DR captures and cancels asynchronously: `POST /fulfillments` answers at once and
//! the outcome arrives later as `order.charge.capture.*` / `order.charge.cancel.*`
//! events whose `data.object` is the charge (docs/digital-river.md §0.2, §3.3). The
//! operations that belong to a fulfillment are the charge's `captures[]` /
//! `cancels[]` entries with its `fulfillmentId`, or whose id is in the
//! fulfillment's `chargeOperationIds` (DR's cancel example has no `fulfillmentId`).
//!
//! Callers position a [`Tail`] *before* sending the POST, so no event is missed.
//!
//! The charges are read in the API's terms (`pb::Charge`, exact `Money`): DR's reads
//! converted by the caller, and each event's typed payload decoded from the log's
//! encoding of it (the log keeps no parsed JSON).

use std::collections::BTreeMap;

use tokio::time::Instant;

use super::{log::StoredEvent, subscription::Tail, LogError};
use crate::pb::v1 as pb;

/// Which operations to wait for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OperationKind {
    /// Captures (`quantity`).
    Capture,
    /// Cancels (`cancelQuantity`).
    Cancel,
}

impl OperationKind {
    fn event_prefix(self) -> &'static str {
        match self {
            Self::Capture => "order.charge.capture.",
            Self::Cancel => "order.charge.cancel.",
        }
    }

    fn operations(self, charge: &pb::Charge) -> &[pb::ChargeOperation] {
        match self {
            Self::Capture => &charge.captures,
            Self::Cancel => &charge.cancels,
        }
    }
}

/// True for the final states of a capture or cancel.
pub fn is_terminal(state: &str) -> bool {
    matches!(state, "complete" | "failed")
}

/// The latest known state of one operation.
#[derive(Debug, Clone)]
pub struct OperationOutcome {
    /// Charge the operation runs on.
    pub charge_id: String,
    /// The operation as the newest event showed it; its amount in the charge's
    /// currency (the order's when the charge names none).
    pub operation: pb::ChargeOperation,
}

/// What waiting found.
#[derive(Debug, Clone, Default)]
pub struct Outcomes {
    /// Outcomes by operation id, in id order.
    pub operations: Vec<OperationOutcome>,
    /// True when every operation is complete or failed.
    pub settled: bool,
}

/// Which operations belong to one fulfillment.
#[derive(Debug, Clone)]
pub struct Correlation {
    /// Capture or cancel.
    pub kind: OperationKind,
    /// The fulfillment id.
    pub fulfillment_id: String,
    /// `chargeOperationIds` of the fulfillment, when DR sent them.
    pub operation_ids: Vec<String>,
}

impl Correlation {
    fn belongs(&self, op: &pb::ChargeOperation) -> bool {
        (!op.fulfillment_id.is_empty() && op.fulfillment_id == self.fulfillment_id)
            || self.operation_ids.contains(&op.id)
    }
}

/// Reads the log from `tail` until every operation of the fulfillment is terminal
/// or `deadline` passes. Settled means: at least one operation seen, all seen ones
/// terminal, and every id in `chargeOperationIds` seen.
///
/// `known` are the order's charges as DR reported them after the tail started,
/// converted (`currency` is the order's, for amounts whose charge names none). They seed the outcomes:
/// events older than the tail (a replayed `request_id`, whose POST happened earlier)
/// are then not needed, and every operation the fulfillment started is known even
/// before its first event arrives.
pub async fn wait_for_outcomes(
    tail: &mut Tail,
    correlation: &Correlation,
    known: &[pb::Charge],
    currency: &str,
    deadline: Instant,
) -> Result<Outcomes, LogError> {
    let mut seen: BTreeMap<String, OperationOutcome> = BTreeMap::new();
    for charge in known {
        absorb(&mut seen, correlation, charge, currency);
    }
    loop {
        let result = outcomes(seen.clone(), correlation);
        if result.settled {
            return Ok(result);
        }
        let batch = match tail.next_batch().await {
            Ok(batch) => batch,
            // why: the log moved past us (tiny log, huge burst); report what we saw.
            Err(LogError::Expired { .. }) => return Ok(outcomes(seen, correlation)),
            Err(e) => return Err(e),
        };
        let caught_up = batch.is_empty();
        for event in batch {
            if !event
                .meta
                .event_type
                .starts_with(correlation.kind.event_prefix())
            {
                continue;
            }
            let Some(charge) = charge_of(&event) else {
                continue;
            };
            absorb(&mut seen, correlation, &charge, currency);
        }
        if !caught_up {
            continue;
        }
        if outcomes(seen.clone(), correlation).settled {
            continue;
        }
        match tokio::time::timeout_at(deadline, tail.wait_for_append()).await {
            Ok(true) => {}
            Ok(false) | Err(_) => return Ok(outcomes(seen, correlation)),
        }
    }
}

/// The charge an `order.charge.*` event carries, from its typed payload; `None`
/// when the payload is not a charge (DR sent a `data.object` the gateway could not
/// read as one).
fn charge_of(event: &StoredEvent) -> Option<pb::Charge> {
    match event.decode_event() {
        Ok(pb::Event {
            payload: Some(pb::event::Payload::Charge(charge)),
            ..
        }) => Some(charge),
        Ok(_) => None,
        Err(e) => {
            tracing::error!(seq = event.seq, error = %e, "a stored event does not decode");
            None
        }
    }
}

/// Records the fulfillment's operations found on `charge`.
fn absorb(
    seen: &mut BTreeMap<String, OperationOutcome>,
    correlation: &Correlation,
    charge: &pb::Charge,
    fallback_currency: &str,
) {
    for op in correlation.kind.operations(charge) {
        if !correlation.belongs(op) {
            continue;
        }
        // why: events may arrive out of order, and DR's read may be newer than an
        // event still in the log; never let a "pending" overwrite a final state.
        let keep_old = seen
            .get(&op.id)
            .is_some_and(|old| is_terminal(&old.operation.state))
            && !is_terminal(&op.state);
        if !keep_old {
            let mut operation = op.clone();
            if let Some(amount) = operation.amount.as_mut() {
                if amount.currency_code.is_empty() {
                    fallback_currency.clone_into(&mut amount.currency_code);
                }
            }
            seen.insert(
                op.id.clone(),
                OperationOutcome {
                    charge_id: charge.id.clone(),
                    operation,
                },
            );
        }
    }
}

fn outcomes(seen: BTreeMap<String, OperationOutcome>, correlation: &Correlation) -> Outcomes {
    let all_expected_seen = correlation
        .operation_ids
        .iter()
        .all(|id| seen.contains_key(id));
    let settled = !seen.is_empty()
        && all_expected_seen
        && seen.values().all(|o| is_terminal(&o.operation.state));
    Outcomes {
        operations: seen.into_values().collect(),
        settled,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        clock::SystemClock,
        events::{Envelope, EventEncoder, EventLog, MemoryLog, MemoryLogConfig},
    };
    use serde_json::json;
    use std::{sync::Arc, time::Duration};

    fn charge_event(id: &str, t: &str, ops: serde_json::Value) -> Envelope {
        let key = if t.contains(".capture.") {
            "captures"
        } else {
            "cancels"
        };
        Envelope::from_value(json!({
            "id": id, "type": t, "createdTime": "2024-01-01T00:00:00Z",
            "data": {"object": {"id": "ch1", "orderId": "o1", "currency": "USD", key: ops}}
        }))
        .unwrap()
    }

    fn log() -> Arc<dyn EventLog> {
        // The production encoder: outcomes read the events' typed payloads.
        let encoder =
            EventEncoder::with_payload_decoder(Arc::new(crate::grpc::event_stream::decode_payload));
        Arc::new(MemoryLog::new(
            MemoryLogConfig::default(),
            encoder,
            Arc::new(SystemClock),
        ))
    }

    fn correlation(kind: OperationKind, ids: &[&str]) -> Correlation {
        Correlation {
            kind,
            fulfillment_id: "ful_1".into(),
            operation_ids: ids.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[tokio::test]
    async fn a_capture_settles_when_its_complete_event_arrives() {
        let log = log();
        let mut tail = Tail::new(log.clone(), log.bounds().await.unwrap().last);
        let appender = {
            let log = log.clone();
            tokio::spawn(async move {
                log.append(charge_event(
                    "e0",
                    "order.charge.capture.pending",
                    json!([{"id": "cap9", "state": "pending", "fulfillmentId": "ful_other"}]),
                ))
                .await
                .unwrap();
                log.append(charge_event(
                    "e1",
                    "order.charge.capture.pending",
                    json!([{"id": "cap1", "state": "pending", "fulfillmentId": "ful_1"}]),
                ))
                .await
                .unwrap();
                log.append(charge_event("e2", "order.charge.capture.complete",
                    json!([{"id": "cap1", "state": "complete", "amount": 5.0, "fulfillmentId": "ful_1"}]))).await.unwrap();
            })
        };
        let got = wait_for_outcomes(
            &mut tail,
            &correlation(OperationKind::Capture, &[]),
            &[],
            "",
            Instant::now() + Duration::from_secs(5),
        )
        .await
        .unwrap();
        appender.await.unwrap();
        assert!(got.settled);
        assert_eq!(got.operations.len(), 1);
        assert_eq!(got.operations[0].operation.state, "complete");
        assert_eq!(got.operations[0].charge_id, "ch1");
        let amount = got.operations[0].operation.amount.clone().unwrap();
        assert_eq!(
            (amount.currency_code.as_str(), amount.units, amount.nanos),
            ("USD", 5, 0)
        );
    }

    #[tokio::test]
    async fn an_amount_stays_exact_and_takes_the_orders_currency_when_the_charge_names_none() {
        let log = log();
        let mut tail = Tail::new(log.clone(), 0);
        let event = Envelope::from_value(json!({
            "id": "e1", "type": "order.charge.capture.complete",
            "createdTime": "2024-01-01T00:00:00Z",
            "data": {"object": {"id": "ch1", "orderId": "o1", "captures": [
                {"id": "cap1", "state": "complete", "amount": 1234567.89, "fulfillmentId": "ful_1"}
            ]}}
        }))
        .unwrap();
        log.append(event).await.unwrap();
        let got = wait_for_outcomes(
            &mut tail,
            &correlation(OperationKind::Capture, &[]),
            &[],
            "EUR",
            Instant::now() + Duration::from_secs(5),
        )
        .await
        .unwrap();
        assert!(got.settled);
        let amount = got.operations[0].operation.amount.clone().unwrap();
        assert_eq!(
            (amount.currency_code.as_str(), amount.units, amount.nanos),
            ("EUR", 1_234_567, 890_000_000)
        );
    }

    #[tokio::test]
    async fn a_failed_capture_settles_with_its_failure_code() {
        let log = log();
        let mut tail = Tail::new(log.clone(), 0);
        log.append(charge_event("e1", "order.charge.capture.failed",
            json!([{"id": "cap1", "state": "failed", "failureCode": "failed-request", "fulfillmentId": "ful_1"}]))).await.unwrap();
        let got = wait_for_outcomes(
            &mut tail,
            &correlation(OperationKind::Capture, &[]),
            &[],
            "",
            Instant::now() + Duration::from_secs(5),
        )
        .await
        .unwrap();
        assert!(got.settled);
        assert_eq!(got.operations[0].operation.failure_code, "failed-request");
    }

    #[tokio::test]
    async fn cancels_match_by_operation_id_and_wait_for_all_expected() {
        let log = log();
        let mut tail = Tail::new(log.clone(), 0);
        // DR's cancel example carries no fulfillmentId.
        log.append(charge_event(
            "e1",
            "order.charge.cancel.complete",
            json!([{"id": "can1", "state": "complete"}]),
        ))
        .await
        .unwrap();
        let got = wait_for_outcomes(
            &mut tail,
            &correlation(OperationKind::Cancel, &["can1", "can2"]),
            &[],
            "",
            Instant::now() + Duration::from_millis(100),
        )
        .await
        .unwrap();
        assert!(!got.settled, "can2 never arrived");
        assert_eq!(got.operations.len(), 1);
    }

    #[tokio::test]
    async fn the_deadline_returns_what_was_seen_unsettled() {
        let log = log();
        let mut tail = Tail::new(log.clone(), 0);
        log.append(charge_event(
            "e1",
            "order.charge.capture.pending",
            json!([{"id": "cap1", "state": "pending", "fulfillmentId": "ful_1"}]),
        ))
        .await
        .unwrap();
        let got = wait_for_outcomes(
            &mut tail,
            &correlation(OperationKind::Capture, &[]),
            &[],
            "",
            Instant::now() + Duration::from_millis(50),
        )
        .await
        .unwrap();
        assert!(!got.settled);
        assert_eq!(got.operations[0].operation.state, "pending");
    }

    #[tokio::test]
    async fn a_late_pending_never_overwrites_a_final_state() {
        let log = log();
        let mut tail = Tail::new(log.clone(), 0);
        log.append(charge_event(
            "e2",
            "order.charge.capture.complete",
            json!([{"id": "cap1", "state": "complete", "fulfillmentId": "ful_1"}]),
        ))
        .await
        .unwrap();
        log.append(charge_event(
            "e1",
            "order.charge.capture.pending",
            json!([{"id": "cap1", "state": "pending", "fulfillmentId": "ful_1"}]),
        ))
        .await
        .unwrap();
        let got = wait_for_outcomes(
            &mut tail,
            &correlation(OperationKind::Capture, &[]),
            &[],
            "",
            Instant::now() + Duration::from_secs(5),
        )
        .await
        .unwrap();
        assert!(got.settled);
    }
}
