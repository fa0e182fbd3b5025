//! The sandbox's whole mutable world behind one mutex, and event emission.
//!
//! One `std::sync::Mutex` keeps every operation atomic (a `POST /fulfillments` updates the
//! order, its charges, the fulfillment list and the event log together). Nothing awaits
//! while holding it; webhook jobs leave through a bounded channel with `try_send`.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::clock::{fmt_event_time, Clock};
use super::events::{envelope, EventStore};
use super::faults::FaultTable;
use super::ids::IdGen;
use super::model::{Fulfillment, OpKind, Order};
use super::rate_limit::RateLimiter;
use super::webhooks::{DeliveryJob, DeliveryRecord, Webhook, DELIVERY_LOG_CAPACITY};
use super::{DeliveryMode, DeliveryOrder, RetryPolicy, SettleMode};

/// Requests kept in `GET /sandbox/requests`.
const REQUEST_LOG_CAPACITY: usize = 10_000;

/// Shared application state handed to every handler and to the webhook dispatcher.
#[derive(Debug)]
pub(crate) struct App {
    world: Mutex<World>,
    /// Client for webhook deliveries (timeouts set per request).
    pub http: reqwest::Client,
    /// Retry policy for webhook deliveries.
    pub retry: RetryPolicy,
}

impl App {
    /// Builds the app around a world.
    pub(crate) fn new(world: World, http: reqwest::Client, retry: RetryPolicy) -> Self {
        Self {
            world: Mutex::new(world),
            http,
            retry,
        }
    }

    /// Locks the world. A poisoned lock is taken over: the data is still consistent
    /// enough for an emulator, and a panic in one handler must not wedge the rest.
    pub(crate) fn lock(&self) -> MutexGuard<'_, World> {
        self.world.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A capture or cancel waiting to settle.
#[derive(Debug, Clone)]
pub(crate) struct PendingOp {
    /// Order id.
    pub order_id: String,
    /// Charge id.
    pub charge_id: String,
    /// Capture or cancel.
    pub kind: OpKind,
    /// Operation id.
    pub op_id: String,
}

/// One logged DR-surface request.
#[derive(Debug, Clone)]
pub(crate) struct RequestRecord {
    /// Arrival order.
    pub seq: u64,
    /// HTTP method.
    pub method: String,
    /// Path.
    pub path: String,
    /// Raw query string.
    pub query: Option<String>,
    /// Headers minus `Authorization`.
    pub headers: Vec<(String, String)>,
    /// Body as JSON (or as a string when not JSON, null when empty).
    pub body: Value,
    /// Wall time of arrival.
    pub at: DateTime<Utc>,
    /// The fault applied to it, if any.
    pub fault: Option<String>,
    /// Refused with 429 by the rate limit.
    pub rate_limited: bool,
}

impl RequestRecord {
    /// Control-surface JSON.
    pub(crate) fn to_json(&self) -> Value {
        let headers: serde_json::Map<String, Value> = self
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect();
        json!({
            "seq": self.seq,
            "method": self.method,
            "path": self.path,
            "query": self.query,
            "headers": headers,
            "body": self.body,
            "receivedTime": fmt_event_time(self.at),
            "fault": self.fault,
            "rateLimited": self.rate_limited,
        })
    }
}

/// Everything the sandbox knows.
#[derive(Debug)]
pub(crate) struct World {
    /// Sandbox clock.
    pub clock: Clock,
    /// Id source.
    pub ids: IdGen,
    /// Immediate or stepped settlement.
    pub settle_mode: SettleMode,
    /// Orders by id.
    pub orders: HashMap<String, Order>,
    /// Order ids in creation order.
    pub order_seq: Vec<String>,
    /// Charge id → order id.
    pub charge_index: HashMap<String, String>,
    /// Source id → order id.
    pub source_index: HashMap<String, String>,
    /// Fulfillments in creation order.
    pub fulfillments: Vec<Fulfillment>,
    /// Fulfillment id → index.
    pub fulfillment_index: HashMap<String, usize>,
    /// Event log.
    pub events: EventStore,
    /// Webhook endpoints.
    pub webhooks: Vec<Webhook>,
    /// Armed faults.
    pub faults: FaultTable,
    /// Captures/cancels waiting for settlement.
    pub pending: Vec<PendingOp>,
    /// DR's per-key rate limit on the DR surface.
    pub rate_limiter: RateLimiter,
    requests: VecDeque<RequestRecord>,
    request_seq: u64,
    deliveries: VecDeque<DeliveryRecord>,
    delivery_tx: mpsc::Sender<DeliveryJob>,
    /// How webhooks go out (the control surface changes it).
    pub delivery: DeliveryMode,
    /// `createdTime` of the last emitted event.
    last_emitted: Option<DateTime<Utc>>,
}

impl World {
    /// An empty world.
    pub(crate) fn new(
        seed: Option<u64>,
        settle_mode: SettleMode,
        delivery_tx: mpsc::Sender<DeliveryJob>,
    ) -> Self {
        Self {
            clock: Clock::default(),
            ids: IdGen::new(seed),
            settle_mode,
            orders: HashMap::new(),
            order_seq: Vec::new(),
            charge_index: HashMap::new(),
            source_index: HashMap::new(),
            fulfillments: Vec::new(),
            fulfillment_index: HashMap::new(),
            events: EventStore::default(),
            webhooks: Vec::new(),
            faults: FaultTable::default(),
            pending: Vec::new(),
            rate_limiter: RateLimiter::new(None),
            requests: VecDeque::new(),
            request_seq: 0,
            deliveries: VecDeque::new(),
            delivery_tx,
            delivery: DeliveryMode::default(),
            last_emitted: None,
        }
    }

    /// Registers an enabled webhook endpoint; returns its id.
    pub(crate) fn add_webhook(&mut self, spec: crate::WebhookSpec) -> String {
        let id = self.ids.uuid();
        let created = self.clock.now();
        self.webhooks.push(Webhook {
            id: id.clone(),
            url: spec.url,
            secret: spec.secret,
            previous: None,
            types: spec.types,
            enabled: true,
            created,
        });
        id
    }

    /// Emits an event: stores it and queues a delivery to every matching endpoint.
    /// Returns the event id.
    pub(crate) fn emit(
        &mut self,
        event_type: &str,
        object: Value,
        previous: Option<Value>,
        live_mode: bool,
    ) -> String {
        let id = self.ids.uuid();
        // why: two events of one operation may be stamped within the same microsecond;
        // keep creation order unambiguous, as a single source of truth would.
        let now = self.clock.now();
        let created = match self.last_emitted {
            Some(last) if now <= last => last + chrono::Duration::microseconds(1),
            _ => now,
        };
        self.last_emitted = Some(created);
        let webhook_ids: Vec<String> = self
            .webhooks
            .iter()
            .filter(|w| w.wants(event_type))
            .map(|w| w.id.clone())
            .collect();
        let json = envelope(
            &id,
            event_type,
            object,
            previous,
            live_mode,
            created,
            &webhook_ids,
        );
        self.store_and_deliver(id.clone(), event_type.to_owned(), created, json);
        id
    }

    /// Stores a fully built envelope and delivers it.
    pub(crate) fn store_and_deliver(
        &mut self,
        id: String,
        event_type: String,
        created: DateTime<Utc>,
        json: Value,
    ) {
        let now = self.clock.now();
        self.events
            .push(id.clone(), event_type.clone(), created, json, now);
        self.deliver_event(&id);
    }

    /// Queues deliveries of a stored event to all matching endpoints (also used by
    /// redelivery). Returns the endpoint ids queued.
    pub(crate) fn deliver_event(&mut self, event_id: &str) -> Vec<String> {
        let now = self.clock.now();
        let Some(event) = self.events.get(event_id, now) else {
            return Vec::new();
        };
        let event_type = event.event_type.clone();
        let body: std::sync::Arc<[u8]> = serde_json::to_vec(&event.json).unwrap_or_default().into();
        let targets: Vec<(String, String)> = self
            .webhooks
            .iter()
            .filter(|w| w.wants(&event_type))
            .map(|w| (w.id.clone(), w.url.clone()))
            .collect();
        for (webhook_id, url) in &targets {
            let job = DeliveryJob {
                event_id: event_id.to_owned(),
                event_type: event_type.clone(),
                webhook_id: webhook_id.clone(),
                body: body.clone(),
                in_order: self.delivery.order == DeliveryOrder::InOrder,
                jitter: self.delivery.jitter,
            };
            if let Err(e) = self.delivery_tx.try_send(job) {
                tracing::warn!(event_id, webhook_id = %webhook_id, "webhook queue full or closed; delivery dropped");
                let reason = match e {
                    mpsc::error::TrySendError::Full(_) => "delivery queue full",
                    mpsc::error::TrySendError::Closed(_) => "delivery queue closed",
                };
                self.record_delivery(DeliveryRecord {
                    event_id: event_id.to_owned(),
                    event_type: event_type.clone(),
                    webhook_id: webhook_id.clone(),
                    url: url.clone(),
                    attempt: 0,
                    status: None,
                    error: Some(reason.to_owned()),
                    signature: String::new(),
                    at: Utc::now(),
                    duration_ms: 0,
                    will_retry: false,
                });
            }
        }
        targets.into_iter().map(|(id, _)| id).collect()
    }

    /// Appends a delivery attempt to the bounded log.
    pub(crate) fn record_delivery(&mut self, record: DeliveryRecord) {
        if self.deliveries.len() >= DELIVERY_LOG_CAPACITY {
            self.deliveries.pop_front();
        }
        self.deliveries.push_back(record);
    }

    /// Delivery attempts, oldest first.
    pub(crate) fn deliveries(&self) -> impl Iterator<Item = &DeliveryRecord> {
        self.deliveries.iter()
    }

    /// Forgets delivery attempts.
    pub(crate) fn clear_deliveries(&mut self) {
        self.deliveries.clear();
    }

    /// Appends a request to the bounded log and returns its sequence number.
    pub(crate) fn record_request(&mut self, mut record: RequestRecord) -> u64 {
        self.request_seq += 1;
        record.seq = self.request_seq;
        if self.requests.len() >= REQUEST_LOG_CAPACITY {
            self.requests.pop_front();
        }
        self.requests.push_back(record);
        self.request_seq
    }

    /// Logged requests, oldest first.
    pub(crate) fn requests(&self) -> impl Iterator<Item = &RequestRecord> {
        self.requests.iter()
    }

    /// Forgets logged requests.
    pub(crate) fn clear_requests(&mut self) {
        self.requests.clear();
    }

    /// An order as a key of mode `live` sees it: objects of the other mode do not
    /// exist for it (docs/digital-river.md §5.4).
    pub(crate) fn order_in_mode(&self, id: &str, live: bool) -> Option<&Order> {
        self.orders.get(id).filter(|o| o.live_mode == live)
    }

    /// [`World::order_in_mode`], mutable.
    pub(crate) fn order_in_mode_mut(&mut self, id: &str, live: bool) -> Option<&mut Order> {
        self.orders.get_mut(id).filter(|o| o.live_mode == live)
    }

    /// `GET /sources/{id}` JSON for a key of mode `live`.
    pub(crate) fn source_json(&self, source_id: &str, live: bool) -> Option<Value> {
        let order = self
            .source_index
            .get(source_id)
            .and_then(|oid| self.order_in_mode(oid, live))?;
        let charge = order.charges.iter().find(|c| c.source_id == source_id)?;
        Some(order.source_json(charge, true))
    }

    /// The order owning a charge, as a key of mode `live` sees it.
    pub(crate) fn order_of_charge(&self, charge_id: &str, live: bool) -> Option<&Order> {
        self.charge_index
            .get(charge_id)
            .and_then(|oid| self.order_in_mode(oid, live))
    }
}
