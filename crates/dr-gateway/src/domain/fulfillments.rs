//! Creating fulfillments exactly once per caller `request_id`.
//!
//! why: DR has no idempotency key and a duplicated `POST /fulfillments` captures
//! money twice (docs/digital-river.md §0.3, §5.3). Every POST carries `metadata.requestId`; a
//! retry with the same id gets the stored result; when a POST's outcome is unknown
//! (timeout, reset, 5xx) the gateway lists the order's fulfillments and looks for
//! that `requestId` before answering or posting again.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use serde_json::{Map, Value};

use super::idempotency::{Claim, IdempotencyStore};
use super::{FieldViolation, ServiceError};
use crate::digital_river::models::{CreateFulfillment, CreateFulfillmentItem, Fulfillment};
use crate::digital_river::{CallOptions, Client, FulfillmentQuery};

/// The metadata key that carries the idempotency key to DR.
pub const REQUEST_ID_METADATA_KEY: &str = "requestId";

/// The metadata key that records on DR's fulfillment who asked for it: the caller's
/// identity (`spiffe://…`, `dns:…`, `token:…`) when the call was authenticated.
pub const CALLER_METADATA_KEY: &str = "caller";

/// Longest accepted `request_id`.
const MAX_REQUEST_ID_LEN: usize = 255;

/// One item to fulfill and/or cancel.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct ItemCommand {
    /// DR line-item id.
    pub item_id: String,
    /// Units fulfilled.
    pub quantity: i64,
    /// Units cancelled.
    pub cancel_quantity: i64,
    /// Shipment item id.
    pub shipment_item_id: String,
}

/// Carrier tracking data.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct TrackingCommand {
    /// Carrier name.
    pub company: String,
    /// Tracking number.
    pub number: String,
    /// Tracking URL.
    pub url: String,
}

/// A validated-on-use request to create a fulfillment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FulfillmentCommand {
    /// DR order id.
    pub order_id: String,
    /// Items.
    pub items: Vec<ItemCommand>,
    /// Shipment id.
    pub shipment_id: String,
    /// Tracking data.
    pub tracking: Option<TrackingCommand>,
    /// Caller metadata.
    pub metadata: HashMap<String, String>,
    /// Caller idempotency key; empty → generated.
    pub request_id: String,
    /// The authenticated caller's identity, recorded as `metadata.caller` on DR's
    /// fulfillment; `None` for an anonymous call (no key is sent).
    ///
    /// It is part of the request's fingerprint: a retry by the same caller matches,
    /// while another caller reusing the `request_id` gets INVALID_ARGUMENT (the id was
    /// used with different parameters) and neither the stored result nor a second
    /// fulfillment.
    pub caller: Option<String>,
}

impl FulfillmentCommand {
    /// Checks the request before anything reaches DR. Field names follow the proto.
    pub fn validate(&self) -> Result<(), ServiceError> {
        let mut v = Vec::new();
        if self.order_id.trim().is_empty() {
            v.push(FieldViolation::new("order_id", "must not be empty"));
        }
        if self.items.is_empty() {
            v.push(FieldViolation::new(
                "items",
                "must contain at least one item",
            ));
        }
        for (i, item) in self.items.iter().enumerate() {
            if item.item_id.trim().is_empty() {
                v.push(FieldViolation::new(
                    format!("items[{i}].item_id"),
                    "must not be empty",
                ));
            }
            if item.quantity < 0 {
                v.push(FieldViolation::new(
                    format!("items[{i}].quantity"),
                    "must not be negative",
                ));
            }
            if item.cancel_quantity < 0 {
                v.push(FieldViolation::new(
                    format!("items[{i}].cancel_quantity"),
                    "must not be negative",
                ));
            }
            if item.quantity == 0 && item.cancel_quantity == 0 {
                v.push(FieldViolation::new(
                    format!("items[{i}]"),
                    "set quantity or cancel_quantity (or both) to a positive number",
                ));
            }
        }
        if self.request_id.len() > MAX_REQUEST_ID_LEN {
            v.push(FieldViolation::new(
                "request_id",
                format!("must be at most {MAX_REQUEST_ID_LEN} bytes"),
            ));
        }
        if let Some(value) = self.metadata.get(REQUEST_ID_METADATA_KEY) {
            if *value != self.request_id {
                v.push(FieldViolation::new(
                    format!("metadata[{REQUEST_ID_METADATA_KEY}]"),
                    "is reserved for the gateway's request_id",
                ));
            }
        }
        if let Some(value) = self.metadata.get(CALLER_METADATA_KEY) {
            if Some(value) != self.caller.as_ref() {
                v.push(FieldViolation::new(
                    format!("metadata[{CALLER_METADATA_KEY}]"),
                    "is reserved for the caller's identity, which the gateway records",
                ));
            }
        }
        if v.is_empty() {
            Ok(())
        } else {
            Err(ServiceError::InvalidArgument(v))
        }
    }

    fn to_body(&self, request_id: &str) -> CreateFulfillment {
        let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        let mut metadata: Map<String, Value> = self
            .metadata
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        metadata.insert(
            REQUEST_ID_METADATA_KEY.to_owned(),
            Value::String(request_id.to_owned()),
        );
        if let Some(caller) = &self.caller {
            metadata.insert(
                CALLER_METADATA_KEY.to_owned(),
                Value::String(caller.clone()),
            );
        }
        let tracking = self.tracking.clone().unwrap_or_default();
        CreateFulfillment {
            order_id: self.order_id.clone(),
            items: self
                .items
                .iter()
                .map(|i| CreateFulfillmentItem {
                    item_id: i.item_id.clone(),
                    quantity: (i.quantity > 0).then_some(i.quantity),
                    cancel_quantity: (i.cancel_quantity > 0).then_some(i.cancel_quantity),
                    shipment_item_id: non_empty(&i.shipment_item_id),
                })
                .collect(),
            shipment_id: non_empty(&self.shipment_id),
            tracking_company: non_empty(&tracking.company),
            tracking_number: non_empty(&tracking.number),
            tracking_url: non_empty(&tracking.url),
            metadata,
        }
    }

    /// A digest of everything the request asks DR to do.
    ///
    /// why: SHA-256 over a canonical body (the POST body minus the request id, whose
    /// metadata map serializes with sorted keys) is the same on every replica and
    /// every build, so a mixed-version rollout never sees a false mismatch.
    fn fingerprint(&self) -> u64 {
        use sha2::{Digest, Sha256};
        let canonical = serde_json::to_vec(&self.to_body("")).unwrap_or_default();
        let digest = Sha256::digest(&canonical);
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        u64::from_be_bytes(first)
    }
}

/// Creates fulfillments idempotently.
#[derive(Debug, Clone)]
pub struct Fulfiller {
    client: Client,
    store: Arc<dyn IdempotencyStore>,
    reconcile_timeout: Duration,
}

impl Fulfiller {
    /// A fulfiller posting through `client`, remembering results in `store`, and
    /// giving a reconciliation at most `reconcile_timeout`.
    pub fn new(
        client: Client,
        store: Arc<dyn IdempotencyStore>,
        reconcile_timeout: Duration,
    ) -> Self {
        Self {
            client,
            store,
            reconcile_timeout,
        }
    }

    /// Validates `command` and creates its fulfillment at most once per request id.
    ///
    /// The POST and any reconciliation run in their own task: if the caller's
    /// deadline passes first, they still finish and record the result for the retry.
    pub async fn create(
        &self,
        command: FulfillmentCommand,
        deadline: Option<Instant>,
    ) -> Result<Fulfillment, ServiceError> {
        command.validate()?;
        let generated = command.request_id.is_empty();
        let request_id = if generated {
            uuid::Uuid::new_v4().to_string()
        } else {
            command.request_id.clone()
        };
        let fingerprint = command.fingerprint();
        loop {
            let claim = self
                .store
                .claim(&request_id, fingerprint)
                .await
                .map_err(|e| {
                    tracing::warn!(%request_id, error = %e, "cannot claim request_id");
                    ServiceError::Unavailable(
                        "the idempotency store is unavailable; nothing was sent to Digital River, \
                     retry with the same request_id"
                            .into(),
                    )
                })?;
            match claim {
                Claim::Done(f) => {
                    tracing::info!(%request_id, fulfillment_id = %f.id, "replayed stored fulfillment");
                    return Ok(*f);
                }
                Claim::Mismatch => {
                    return Err(ServiceError::invalid(
                        "request_id",
                        "was already used with different parameters (or by another caller)",
                    ))
                }
                Claim::Wait(mut changed) => {
                    let wait = changed.changed();
                    match deadline {
                        Some(d) => {
                            if tokio::time::timeout_at(d.into(), wait).await.is_err() {
                                return Err(ServiceError::DeadlineExceeded(format!(
                                    "a CreateFulfillment with request_id {request_id:?} is still running"
                                )));
                            }
                        }
                        None => {
                            let _ = wait.await;
                        }
                    }
                }
                Claim::Owner { reconcile_first } => {
                    let this = self.clone();
                    let body = command.to_body(&request_id);
                    let key = request_id.clone();
                    let caller_deadline = deadline;
                    let task = tokio::spawn(async move {
                        let store = this.store.clone();
                        let attempt = this.post_once(
                            body,
                            key.clone(),
                            fingerprint,
                            reconcile_first,
                            caller_deadline,
                        );
                        // why: a panic must not leave the key "in flight" for ever;
                        // whether the POST happened is then unknown, so the next
                        // attempt reconciles first.
                        match std::panic::AssertUnwindSafe(attempt).catch_unwind().await {
                            Ok(result) => result,
                            Err(_) => {
                                store.mark_unknown(&key, fingerprint).await;
                                tracing::error!(request_id = %key, "fulfillment task panicked");
                                Err(ServiceError::Internal(
                                    "the fulfillment attempt failed unexpectedly; retry with the same request_id"
                                        .into(),
                                ))
                            }
                        }
                    });
                    let joined = match deadline {
                        Some(d) => match tokio::time::timeout_at(d.into(), task).await {
                            Ok(joined) => joined,
                            Err(_) => {
                                return Err(ServiceError::DeadlineExceeded(
                                    "Digital River did not confirm the fulfillment before the deadline; \
                                     retry with the same request_id to get its outcome"
                                        .into(),
                                ))
                            }
                        },
                        None => task.await,
                    };
                    return joined.unwrap_or_else(|e| {
                        Err(ServiceError::Internal(format!(
                            "the fulfillment task ended unexpectedly: {e}"
                        )))
                    });
                }
            }
        }
    }

    async fn post_once(
        &self,
        body: CreateFulfillment,
        request_id: String,
        fingerprint: u64,
        reconcile_first: bool,
        deadline: Option<Instant>,
    ) -> Result<Fulfillment, ServiceError> {
        if reconcile_first {
            match self.find_by_request_id(&body.order_id, &request_id).await {
                Ok(Some(found)) => {
                    self.store
                        .complete(&request_id, fingerprint, found.clone())
                        .await;
                    return Ok(found);
                }
                Ok(None) => {}
                Err(e) => {
                    self.store.mark_unknown(&request_id, fingerprint).await;
                    return Err(e.into());
                }
            }
        }
        let opts = CallOptions {
            deadline,
            request_id: Some(request_id.clone()),
        };
        match self.client.create_fulfillment(&body, &opts).await {
            Ok(created) => {
                self.store
                    .complete(&request_id, fingerprint, created.clone())
                    .await;
                Ok(created)
            }
            Err(e) if e.outcome_unknown() => {
                tracing::warn!(%request_id, error = %e, "fulfillment outcome unknown; reconciling");
                match self.find_by_request_id(&body.order_id, &request_id).await {
                    Ok(Some(found)) => {
                        tracing::info!(%request_id, fulfillment_id = %found.id, "reconciled: DR had created it");
                        self.store
                            .complete(&request_id, fingerprint, found.clone())
                            .await;
                        Ok(found)
                    }
                    Ok(None) => {
                        // why: DR lists what it created; absent means the POST did
                        // not take effect, so a retry may post again.
                        self.store.release(&request_id).await;
                        Err(e.into())
                    }
                    Err(reconcile_error) => {
                        tracing::warn!(%request_id, error = %reconcile_error, "reconciliation failed");
                        self.store.mark_unknown(&request_id, fingerprint).await;
                        Err(e.into())
                    }
                }
            }
            Err(e) => {
                self.store.release(&request_id).await;
                Err(e.into())
            }
        }
    }

    /// Pages through the order's fulfillments looking for `metadata.requestId`.
    async fn find_by_request_id(
        &self,
        order_id: &str,
        request_id: &str,
    ) -> Result<Option<Fulfillment>, crate::digital_river::Error> {
        let opts = CallOptions {
            deadline: Some(Instant::now() + self.reconcile_timeout),
            request_id: None,
        };
        let mut query = FulfillmentQuery {
            order_id: Some(order_id.to_owned()),
            limit: Some(100),
            ..Default::default()
        };
        loop {
            let page = self.client.list_fulfillments(&query, &opts).await?;
            if let Some(found) = page.data.iter().find(|f| carries_request_id(f, request_id)) {
                return Ok(Some(found.clone()));
            }
            match (page.has_more, page.data.last()) {
                (true, Some(last)) => query.starting_after = Some(last.id.clone()),
                _ => return Ok(None),
            }
        }
    }
}

fn carries_request_id(f: &Fulfillment, request_id: &str) -> bool {
    f.metadata
        .as_ref()
        .and_then(|m| m.get(REQUEST_ID_METADATA_KEY))
        .and_then(Value::as_str)
        == Some(request_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd() -> FulfillmentCommand {
        FulfillmentCommand {
            order_id: "1".into(),
            items: vec![ItemCommand {
                item_id: "2".into(),
                quantity: 1,
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn fields(e: ServiceError) -> Vec<String> {
        match e {
            ServiceError::InvalidArgument(v) => v.into_iter().map(|v| v.field).collect(),
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }

    #[test]
    fn a_valid_command_passes() {
        assert!(cmd().validate().is_ok());
    }

    #[test]
    fn validation_names_each_bad_field() {
        let mut c = cmd();
        c.order_id.clear();
        c.items.push(ItemCommand {
            item_id: String::new(),
            quantity: -1,
            cancel_quantity: 0,
            shipment_item_id: String::new(),
        });
        c.items.push(ItemCommand {
            item_id: "3".into(),
            ..Default::default()
        });
        assert_eq!(
            fields(c.validate().unwrap_err()),
            vec![
                "order_id",
                "items[1].item_id",
                "items[1].quantity",
                "items[2]"
            ]
        );
        let mut empty = cmd();
        empty.items.clear();
        assert_eq!(fields(empty.validate().unwrap_err()), vec!["items"]);
    }

    #[test]
    fn request_id_metadata_is_reserved() {
        let mut c = cmd();
        c.metadata.insert("requestId".into(), "other".into());
        assert_eq!(
            fields(c.validate().unwrap_err()),
            vec!["metadata[requestId]"]
        );
    }

    #[test]
    fn caller_metadata_is_the_gateways_to_write() {
        let mut c = cmd();
        c.metadata
            .insert("caller".into(), "token:someone-else".into());
        assert_eq!(fields(c.validate().unwrap_err()), vec!["metadata[caller]"]);
        c.caller = Some("token:someone-else".into());
        assert!(c.validate().is_ok(), "repeating one's own identity is fine");
    }

    #[test]
    fn the_caller_is_recorded_and_part_of_the_fingerprint() {
        let mut a = cmd();
        a.caller = Some("spiffe://cluster.local/ns/shipping/sa/fulfiller".into());
        let body = serde_json::to_value(a.to_body("req-1")).unwrap();
        assert_eq!(
            body["metadata"],
            serde_json::json!({"requestId": "req-1", "caller": "spiffe://cluster.local/ns/shipping/sa/fulfiller"})
        );
        let same_caller = a.clone();
        assert_eq!(a.fingerprint(), same_caller.fingerprint());
        let mut other = a.clone();
        other.caller = Some("token:other".into());
        assert_ne!(a.fingerprint(), other.fingerprint());
        let anonymous = cmd();
        assert_ne!(a.fingerprint(), anonymous.fingerprint());
        assert!(
            serde_json::to_value(anonymous.to_body("r")).unwrap()["metadata"]
                .get("caller")
                .is_none()
        );
    }

    #[test]
    fn body_stamps_the_request_id_and_sends_only_set_quantities() {
        let body = cmd().to_body("req-1");
        let v = serde_json::to_value(&body).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"orderId":"1","items":[{"itemId":"2","quantity":1}],"metadata":{"requestId":"req-1"}})
        );
    }

    #[test]
    fn fingerprint_ignores_metadata_order_but_not_quantities() {
        let mut a = cmd();
        a.metadata.insert("x".into(), "1".into());
        a.metadata.insert("y".into(), "2".into());
        let mut b = cmd();
        b.metadata.insert("y".into(), "2".into());
        b.metadata.insert("x".into(), "1".into());
        assert_eq!(a.fingerprint(), b.fingerprint());
        b.items[0].quantity = 2;
        assert_ne!(a.fingerprint(), b.fingerprint());
    }
}
