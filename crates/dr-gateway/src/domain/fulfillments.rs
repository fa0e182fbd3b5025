//! Creating fulfillments at most once per caller `request_id`.
//!
//! why: DR has no idempotency key and a duplicated `POST /fulfillments` captures
//! money twice (docs/digital-river.md §0.3, §5.3). Every POST carries
//! `metadata.requestId`; DR's list of the order's fulfillments is the record, looked
//! up before the first POST of a key; a POST whose outcome is unknown may still be
//! committed for the commit bound (§5.5), and no retry posts until then.
//!
//! Metrics: answers replayed from the store (`dr_gateway_idempotency_replays_total`),
//! lookups in DR (`…_reconciliations_total` by when and result) and how each attempt
//! ended (`dr_gateway_fulfillment_outcomes_total`).

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use serde_json::{Map, Value};
use tokio_util::task::TaskTracker;

use super::idempotency::{Claim, IdempotencyError, IdempotencyStore};
use super::{ids, FieldViolation, ServiceError};
use crate::digital_river::models::{CreateFulfillment, CreateFulfillmentItem, Fulfillment};
use crate::digital_river::{CallOptions, Client, FulfillmentQuery};
use crate::telemetry::{self, metrics::names};

/// The metadata key that carries the idempotency key to DR.
pub const REQUEST_ID_METADATA_KEY: &str = "requestId";

/// The metadata key that records on DR's fulfillment who asked for it: the caller's
/// identity (`spiffe://…`, `dns:…`, `token:…`) when the call was authenticated.
pub const CALLER_METADATA_KEY: &str = "caller";

/// Longest accepted `request_id`.
const MAX_REQUEST_ID_LEN: usize = 255;

/// Largest `quantity` or `cancel_quantity` of one item (the proto documents it).
///
/// why: DR documents no maximum (docs/digital-river.md §1.2: JSON integers). A
/// billion units is far beyond any shipment, fits a 32-bit integer in any DR
/// component or client, and keeps every sum of quantities far from overflowing.
pub const MAX_QUANTITY: i64 = 1_000_000_000;

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
        ids::push_id_violation(&mut v, || "order_id".into(), &self.order_id);
        if self.items.is_empty() {
            v.push(FieldViolation::new(
                "items",
                "must contain at least one item",
            ));
        }
        for (i, item) in self.items.iter().enumerate() {
            ids::push_id_violation(&mut v, || format!("items[{i}].item_id"), &item.item_id);
            if let Some(problem) = ids::text_problem(&item.shipment_item_id) {
                v.push(FieldViolation::new(
                    format!("items[{i}].shipment_item_id"),
                    problem,
                ));
            }
            for (field, value) in [
                ("quantity", item.quantity),
                ("cancel_quantity", item.cancel_quantity),
            ] {
                if value < 0 {
                    v.push(FieldViolation::new(
                        format!("items[{i}].{field}"),
                        "must not be negative",
                    ));
                } else if value > MAX_QUANTITY {
                    v.push(FieldViolation::new(
                        format!("items[{i}].{field}"),
                        format!("must be at most {MAX_QUANTITY}"),
                    ));
                }
            }
            if item.quantity == 0 && item.cancel_quantity == 0 {
                v.push(FieldViolation::new(
                    format!("items[{i}]"),
                    "set quantity or cancel_quantity (or both) to a positive number",
                ));
            }
            // why: DR wants "for each item in the shipment, a unique shipmentItemId"
            // (DR's "Capturing and cancelling charges" page); refusing here keeps a bad
            // shipment from ever reaching DR.
            let sid = item.shipment_item_id.as_str();
            if let Some(first) = self.items[..i]
                .iter()
                .position(|earlier| !sid.is_empty() && earlier.shipment_item_id == sid)
            {
                v.push(FieldViolation::new(
                    format!("items[{i}].shipment_item_id"),
                    format!("repeats items[{first}].shipment_item_id; each item needs its own"),
                ));
            }
        }
        if self.request_id.len() > MAX_REQUEST_ID_LEN {
            v.push(FieldViolation::new(
                "request_id",
                format!("must be at most {MAX_REQUEST_ID_LEN} bytes"),
            ));
        } else if let Some(problem) = ids::text_problem(&self.request_id) {
            // why: it travels as the `upstream-id` header too, where a control
            // character cannot go.
            v.push(FieldViolation::new("request_id", problem));
        }
        if let Some(problem) = ids::text_problem(&self.shipment_id) {
            v.push(FieldViolation::new("shipment_id", problem));
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

/// How the [`Fulfiller`] times its DR calls and how long a POST may take to land.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FulfillerConfig {
    /// Budget of one lookup of a request in DR (every page of the order's fulfillments).
    pub reconcile_timeout: Duration,
    /// Budget of one `POST /fulfillments` (the upstream timeout), whatever the
    /// caller's deadline: the attempt runs on when the caller has gone.
    pub post_timeout: Duration,
    /// How long after a POST was sent DR may still commit it (docs/digital-river.md §5.5).
    pub commit_bound: Duration,
}

impl Default for FulfillerConfig {
    fn default() -> Self {
        Self {
            reconcile_timeout: crate::defaults::RECONCILE_TIMEOUT,
            post_timeout: crate::defaults::UPSTREAM_TIMEOUT,
            commit_bound: crate::defaults::FULFILLMENT_COMMIT_BOUND,
        }
    }
}

/// Creates fulfillments, at most one per `request_id`.
///
/// # The rule
/// DR is the record. An owner of a key the store does not hold as done first lists
/// the order's fulfillments (every page) for its `metadata.requestId`; it posts only
/// when DR does not show it **and** no earlier POST with the key can still be
/// committed: the store hands out the time until which one may (`hold_until` of
/// [`Claim::Owner`]), and only a lookup started after that time allows a POST.
/// Until then a retry gets [`ServiceError::OutcomePending`]. A POST whose outcome is
/// unknown (timeout, reset, 408, 5xx) is looked up again at once; if DR does not
/// show it, the key keeps "may land until now + commit bound".
///
/// Requests without a `request_id` get a generated key: nobody can retry them, so
/// they are posted without a lookup (and a caller's retry may fulfil twice).
///
/// Every attempt runs in a task of its own, tracked so a graceful shutdown can wait
/// for it ([`Fulfiller::wait_for_attempts`]): a caller that gives up does not stop it,
/// and its result is stored for the retry.
#[derive(Debug, Clone)]
pub struct Fulfiller {
    client: Client,
    store: Arc<dyn IdempotencyStore>,
    config: FulfillerConfig,
    attempts: TaskTracker,
}

impl Fulfiller {
    /// A fulfiller posting through `client` and remembering results in `store`.
    pub fn new(client: Client, store: Arc<dyn IdempotencyStore>, config: FulfillerConfig) -> Self {
        Self {
            client,
            store,
            config,
            attempts: TaskTracker::new(),
        }
    }

    /// For shutdown: waits until no attempt is running (attempts started meanwhile
    /// included) or `deadline` passes; returns how many are still running then.
    pub async fn wait_for_attempts(&self, deadline: Instant) -> usize {
        // why: closing only lets `wait` finish once the tracker is empty; new
        // attempts can still start (and are waited for).
        self.attempts.close();
        let _ = tokio::time::timeout_at(deadline.into(), self.attempts.wait()).await;
        self.attempts.len()
    }

    /// Validates `command` and creates its fulfillment at most once per request id.
    ///
    /// Answers before `deadline` (the caller's, already minus the margin to answer
    /// in): with the fulfillment, with [`ServiceError::OutcomePending`], or with
    /// [`ServiceError::DeadlineExceeded`] while the attempt goes on.
    pub async fn create(
        &self,
        command: FulfillmentCommand,
        deadline: Option<Instant>,
    ) -> Result<Fulfillment, ServiceError> {
        command.validate()?;
        if command.request_id.is_empty() {
            let key = crate::random_id::uuid_text();
            let this = self.clone();
            let body = command.to_body(&key);
            return self
                .detached(async move { this.post_unkeyed(body, key).await }, deadline)
                .await;
        }
        let request_id = command.request_id.clone();
        let fingerprint = command.fingerprint();
        loop {
            let claim = self
                .store
                .claim(&request_id, fingerprint)
                .await
                .map_err(|e| {
                    outcome("store_unavailable");
                    tracing::warn!(%request_id, error = %e, "cannot claim request_id");
                    match e {
                        IdempotencyError::Full(held) => ServiceError::ResourceExhausted {
                            reason: "IDEMPOTENCY_STORE_FULL",
                            message: format!(
                                "the gateway holds {held} request_ids whose outcome is still \
                                 open, as many as it keeps; nothing was sent to Digital River, \
                                 retry with the same request_id"
                            ),
                            retry_after: crate::defaults::OUTCOME_PENDING_RETRY_DELAY,
                        },
                        IdempotencyError::Unavailable(_) => ServiceError::Unavailable(
                            "the idempotency store is unavailable; nothing was sent to Digital \
                             River, retry with the same request_id"
                                .into(),
                        ),
                    }
                })?;
            match claim {
                Claim::Done(f) => {
                    metrics::counter!(names::IDEMPOTENCY_REPLAYS).increment(1);
                    tracing::info!(%request_id, fulfillment_id = %telemetry::capped(&f.id), "replayed stored fulfillment");
                    return Ok(*f);
                }
                Claim::Mismatch => {
                    outcome("reused_request_id");
                    return Err(reused_request_id());
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
                Claim::Owner { hold_until } => {
                    let this = self.clone();
                    let body = command.to_body(&request_id);
                    let key = request_id.clone();
                    return self
                        .detached(
                            async move { this.own(body, key, fingerprint, hold_until).await },
                            deadline,
                        )
                        .await;
                }
            }
        }
    }

    /// Runs `attempt` as a tracked task and waits for it until `deadline`.
    async fn detached(
        &self,
        attempt: impl Future<Output = Result<Fulfillment, ServiceError>> + Send + 'static,
        deadline: Option<Instant>,
    ) -> Result<Fulfillment, ServiceError> {
        // why: the attempt belongs to the RPC's trace and carries its request id to DR.
        // why: boxed first, so the wrappers and the spawn move a pointer, not the
        // attempt's whole state (several KiB, copied at each move).
        let task = self
            .attempts
            .spawn(telemetry::in_current_context(Box::pin(attempt)));
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
        joined.unwrap_or_else(|e| {
            Err(ServiceError::Internal(format!(
                "the fulfillment task ended unexpectedly: {e}"
            )))
        })
    }

    /// The owner's attempt; a panic leaves the key unknown with a POST that may land.
    async fn own(
        &self,
        body: CreateFulfillment,
        key: String,
        fingerprint: u64,
        hold_until: Option<Instant>,
    ) -> Result<Fulfillment, ServiceError> {
        let attempt = self.look_up_then_post(body, &key, fingerprint, hold_until);
        match std::panic::AssertUnwindSafe(attempt).catch_unwind().await {
            Ok(result) => result,
            Err(_) => {
                // why: a POST this attempt may have sent was sent before now.
                let may_land_until = Instant::now() + self.config.commit_bound;
                self.store
                    .mark_unknown(&key, fingerprint, Some(may_land_until))
                    .await;
                tracing::error!(request_id = %key, "fulfillment task panicked");
                Err(ServiceError::Internal(
                    "the fulfillment attempt failed unexpectedly; retry with the same request_id"
                        .into(),
                ))
            }
        }
    }

    async fn look_up_then_post(
        &self,
        body: CreateFulfillment,
        key: &str,
        fingerprint: u64,
        hold_until: Option<Instant>,
    ) -> Result<Fulfillment, ServiceError> {
        // why: DR is the record (docs/digital-river.md §5.3). The store may not hold
        // this key (a new process, evicted, expired), or an earlier attempt's
        // outcome is unknown: only DR knows whether a fulfillment exists.
        let looked_at = Instant::now();
        let looked = self.find_by_request_id(&body.order_id, key).await;
        reconciled("before_post", &looked);
        match looked {
            Ok(Some(found)) => {
                return self
                    .found(&body, key, fingerprint, found, "before posting")
                    .await
            }
            Ok(None) => {}
            Err(e) => {
                outcome("lookup_failed");
                tracing::warn!(request_id = %key, error = %e, "cannot look the request up in DR; not posting");
                self.store.mark_unknown(key, fingerprint, None).await;
                return Err(e.into());
            }
        }
        if let Some(until) = hold_until.filter(|until| looked_at < *until) {
            outcome("outcome_pending");
            tracing::info!(request_id = %key, "an earlier attempt may still land; not posting");
            self.store.mark_unknown(key, fingerprint, None).await;
            return Err(pending(key, until, None));
        }
        let post_deadline = Instant::now() + self.config.post_timeout;
        // why: the POST leaves by its deadline at the latest, and DR commits what it
        // received within the bound (docs/digital-river.md §5.5). Recorded before
        // sending, so if this process vanishes mid-POST the next owner (another
        // replica) knows how long it may still land.
        let provisional = post_deadline + self.config.commit_bound;
        if let Err(e) = self
            .store
            .record_attempt(key, fingerprint, provisional)
            .await
        {
            outcome("store_unavailable");
            tracing::warn!(request_id = %key, error = %e, "cannot record the attempt; not posting");
            self.store.mark_unknown(key, fingerprint, None).await;
            return Err(ServiceError::Unavailable(
                "the idempotency store is unavailable; nothing was sent to Digital River, \
                 retry with the same request_id"
                    .into(),
            ));
        }
        let opts = CallOptions {
            deadline: Some(post_deadline),
            request_id: Some(key.to_owned()),
        };
        match self.client.create_fulfillment(&body, &opts).await {
            Ok(created) => {
                outcome("created");
                self.store.complete(key, fingerprint, created.clone()).await;
                Ok(created)
            }
            Err(e) if e.outcome_unknown() => {
                // why: the POST left before now, so DR commits it within the bound
                // from now (docs/digital-river.md §5.5).
                let may_land_until = Instant::now() + self.config.commit_bound;
                tracing::warn!(request_id = %key, error = %e, "fulfillment outcome unknown; looking it up");
                let looked = self.find_by_request_id(&body.order_id, key).await;
                reconciled("after_unknown_outcome", &looked);
                match looked {
                    Ok(Some(found)) => {
                        self.found(&body, key, fingerprint, found, "after an unknown outcome")
                            .await
                    }
                    looked => {
                        if let Err(lookup) = looked {
                            tracing::warn!(request_id = %key, error = %lookup, "lookup after an unknown outcome failed");
                        }
                        self.store
                            .mark_unknown(key, fingerprint, Some(may_land_until))
                            .await;
                        outcome("outcome_pending");
                        Err(pending(key, may_land_until, Some(e.to_string())))
                    }
                }
            }
            Err(e) => {
                // why: DR answered and refused: nothing of this POST can land, and
                // no earlier one can either (we only post once those are done).
                outcome("rejected_by_dr");
                self.store.release(key).await;
                Err(e.into())
            }
        }
    }

    /// DR shows a fulfillment with this request id: it is the result, unless the
    /// request id was used for other items or by another caller.
    async fn found(
        &self,
        body: &CreateFulfillment,
        key: &str,
        fingerprint: u64,
        found: Fulfillment,
        when: &'static str,
    ) -> Result<Fulfillment, ServiceError> {
        if !same_items(body, &found) || !same_caller(body, &found) {
            outcome("reused_request_id");
            tracing::warn!(request_id = %key, fulfillment_id = %telemetry::capped(&found.id), "DR holds this request_id for other items or another caller");
            self.store.mark_unknown(key, fingerprint, None).await;
            return Err(reused_request_id());
        }
        outcome("found_in_dr");
        tracing::info!(request_id = %key, fulfillment_id = %telemetry::capped(&found.id), when, "DR already holds the fulfillment");
        self.store.complete(key, fingerprint, found.clone()).await;
        Ok(found)
    }

    /// A request without a caller key: post, and look it up only if the outcome is unknown.
    async fn post_unkeyed(
        &self,
        body: CreateFulfillment,
        key: String,
    ) -> Result<Fulfillment, ServiceError> {
        let opts = CallOptions {
            deadline: Some(Instant::now() + self.config.post_timeout),
            request_id: Some(key.clone()),
        };
        match self.client.create_fulfillment(&body, &opts).await {
            Ok(created) => {
                outcome("created");
                Ok(created)
            }
            Err(e) if e.outcome_unknown() => {
                tracing::warn!(generated_request_id = %key, error = %e, "fulfillment outcome unknown (no request_id); looking it up once");
                let looked = self.find_by_request_id(&body.order_id, &key).await;
                reconciled("after_unknown_outcome", &looked);
                match looked {
                    Ok(Some(found)) => {
                        outcome("found_in_dr");
                        Ok(found)
                    }
                    _ => {
                        outcome("outcome_unknown");
                        Err(e.into())
                    }
                }
            }
            Err(e) => {
                outcome("rejected_by_dr");
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
            deadline: Some(Instant::now() + self.config.reconcile_timeout),
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

/// Counts how a fulfillment attempt ended (`dr_gateway_fulfillment_outcomes_total`).
fn outcome(outcome: &'static str) {
    metrics::counter!(names::FULFILLMENT_OUTCOMES, "outcome" => outcome).increment(1);
}

/// Counts a lookup of a request id in DR (`…_reconciliations_total`).
fn reconciled(
    when: &'static str,
    looked: &Result<Option<Fulfillment>, crate::digital_river::Error>,
) {
    let result = match looked {
        Ok(Some(_)) => "found",
        Ok(None) => "not_found",
        Err(_) => "failed",
    };
    metrics::counter!(names::IDEMPOTENCY_RECONCILIATIONS, "when" => when, "result" => result)
        .increment(1);
}

/// INVALID_ARGUMENT for a request id that already names other work.
fn reused_request_id() -> ServiceError {
    ServiceError::invalid(
        "request_id",
        "was already used with different parameters (or by another caller)",
    )
}

/// The answer while an earlier attempt may land until `until`.
fn pending(request_id: &str, until: Instant, cause: Option<String>) -> ServiceError {
    let left = until.saturating_duration_since(Instant::now());
    ServiceError::OutcomePending {
        request_id: request_id.to_owned(),
        retry_after: left
            .min(crate::defaults::OUTCOME_PENDING_RETRY_DELAY)
            .max(MIN_RETRY_DELAY),
        cause,
    }
}

/// Shortest `RetryInfo` delay of a pending outcome.
const MIN_RETRY_DELAY: Duration = Duration::from_millis(100);

/// Units fulfilled and cancelled per line item, as the request asks or DR shows them.
fn units_per_item<'a>(
    items: impl Iterator<Item = (&'a str, i64, i64)>,
) -> std::collections::BTreeMap<&'a str, (i64, i64)> {
    let mut per_item = std::collections::BTreeMap::new();
    for (item_id, quantity, cancel_quantity) in items {
        let entry: &mut (i64, i64) = per_item.entry(item_id).or_default();
        entry.0 = entry.0.saturating_add(quantity);
        entry.1 = entry.1.saturating_add(cancel_quantity);
    }
    per_item
}

/// Whether DR's fulfillment moved the units the request asks for.
fn same_items(body: &CreateFulfillment, found: &Fulfillment) -> bool {
    let asked = units_per_item(body.items.iter().map(|i| {
        (
            i.item_id.as_str(),
            i.quantity.unwrap_or(0),
            i.cancel_quantity.unwrap_or(0),
        )
    }));
    let held = units_per_item(
        found
            .items
            .iter()
            .map(|i| (i.item_id.as_str(), i.quantity, i.cancel_quantity)),
    );
    asked == held
}

/// Whether DR's fulfillment was asked for by the same caller (both anonymous, or the
/// same recorded identity): a request id is the caller's, not everyone's.
fn same_caller(body: &CreateFulfillment, found: &Fulfillment) -> bool {
    let held = found
        .metadata
        .as_ref()
        .and_then(|m| m.get(CALLER_METADATA_KEY));
    body.metadata.get(CALLER_METADATA_KEY) == held
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
    fn quantities_above_the_maximum_are_refused_by_field() {
        let mut c = cmd();
        c.items[0].quantity = i64::MAX;
        c.items[0].cancel_quantity = 1;
        c.items.push(ItemCommand {
            item_id: "3".into(),
            cancel_quantity: MAX_QUANTITY + 1,
            ..Default::default()
        });
        assert_eq!(
            fields(c.validate().unwrap_err()),
            vec!["items[0].quantity", "items[1].cancel_quantity"]
        );
        let mut at_max = cmd();
        at_max.items[0].quantity = MAX_QUANTITY;
        at_max.items[0].cancel_quantity = MAX_QUANTITY;
        assert!(at_max.validate().is_ok());
    }

    #[test]
    fn a_fulfillment_found_in_dr_must_move_the_same_units() {
        let mut body = cmd().to_body("r");
        body.items.push(CreateFulfillmentItem {
            item_id: "2".into(),
            quantity: None,
            cancel_quantity: Some(1),
            shipment_item_id: None,
        });
        let found = |lines: &[(&str, i64, i64)]| Fulfillment {
            items: lines
                .iter()
                .map(|(id, q, c)| crate::digital_river::models::FulfillmentItem {
                    item_id: (*id).into(),
                    quantity: *q,
                    cancel_quantity: *c,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        // DR may echo one line per item with both quantities.
        assert!(same_items(&body, &found(&[("2", 1, 1)])));
        assert!(same_items(&body, &found(&[("2", 1, 0), ("2", 0, 1)])));
        assert!(!same_items(&body, &found(&[("2", 2, 1)])));
        assert!(!same_items(&body, &found(&[("2", 1, 1), ("9", 1, 0)])));
    }

    #[test]
    fn a_fulfillment_found_in_dr_must_be_the_same_callers() {
        let mut mine = cmd();
        mine.caller = Some("token:fulfiller".into());
        let body = mine.to_body("r");
        let held = |caller: Option<&str>| Fulfillment {
            metadata: Some(
                caller
                    .map(|c| {
                        serde_json::Map::from_iter([(
                            CALLER_METADATA_KEY.to_owned(),
                            Value::from(c),
                        )])
                    })
                    .unwrap_or_default(),
            ),
            ..Default::default()
        };
        assert!(same_caller(&body, &held(Some("token:fulfiller"))));
        assert!(!same_caller(&body, &held(Some("token:other"))));
        assert!(!same_caller(&body, &held(None)));
        assert!(same_caller(&cmd().to_body("r"), &held(None)));
    }

    #[test]
    fn a_shipment_item_id_may_not_repeat_within_a_request() {
        let mut c = cmd();
        c.items[0].shipment_item_id = "s1".into();
        for sid in ["s2", "s1", ""] {
            c.items.push(ItemCommand {
                item_id: "3".into(),
                quantity: 1,
                shipment_item_id: sid.into(),
                ..Default::default()
            });
        }
        assert_eq!(
            fields(c.validate().unwrap_err()),
            vec!["items[2].shipment_item_id"]
        );
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
