//! The typed client of the sandbox's `/sandbox/` control surface: [`ControlClient`], its
//! request bodies ([`FaultSpec`], [`WebhookRegistration`], [`SecretRotation`],
//! [`RefundSpec`], [`ChargebackSpec`], [`RateLimitSettings`]), its typed answers
//! ([`ClockState`], [`WebhookEndpoint`], [`ArmedFault`], [`Settled`],
//! [`PendingOperation`], [`RecordedRequest`], [`DeliveryRecord`], [`Redelivery`],
//! [`Chargeback`], [`RateLimitState`]) and [`ControlError`].
//!
//! It owns only the control surface. Orders and events are DR-shaped JSON and come back as
//! [`serde_json::Value`] (the sandbox does not model them for callers); the DR surface
//! (`/fulfillments`, `/charges`, `/orders`, `/events`) is not wrapped here.
//!
//! Each method expects exactly the success status the crate docs name for its endpoint (201
//! for creations, 202 for a redelivery, 204 for deletions, 200 otherwise), so tests using the
//! client keep asserting the control surface's statuses. The wire types mirror the handlers
//! in `routes/control.rs`; the test walking every method (`tests/sandbox/control.rs`) keeps
//! the two in step.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::faults::{FaultKind, FaultSpec};
use crate::{DeliveryMode, DeliveryOrder};

/// `{order, jitterMs}` of `/sandbox/delivery`.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DeliveryBody {
    order: String,
    jitter_ms: u64,
}

impl DeliveryBody {
    fn mode(self) -> Result<DeliveryMode, ControlError> {
        let order: DeliveryOrder =
            self.order
                .parse()
                .map_err(|e: String| ControlError::Decode {
                    source: serde::de::Error::custom(e),
                    body: self.order.clone(),
                })?;
        Ok(DeliveryMode {
            order,
            jitter: Duration::from_millis(self.jitter_ms),
        })
    }
}

/// Per-request timeout of a [`ControlClient`] unless changed with
/// [`ControlClient::with_timeout`].
pub const DEFAULT_CONTROL_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a control call failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The sandbox answered a status other than the endpoint's documented success status:
    /// any non-2xx (`body` is then its DR-shaped error JSON), or a 2xx that is not the one
    /// the contract names (e.g. 200 where `POST /sandbox/orders` promises 201).
    #[error("sandbox control call answered {status}: {body}")]
    Status {
        /// HTTP status code.
        status: u16,
        /// Response body as text.
        body: String,
    },
    /// No answer: connection refused or reset, timeout, unreadable body.
    #[error("sandbox control call failed: {0}")]
    Transport(#[from] reqwest::Error),
    /// A 2xx answer whose body is not the JSON this client expects.
    #[error("sandbox control answer could not be decoded: {source}")]
    Decode {
        /// The JSON error.
        source: serde_json::Error,
        /// Response body as text.
        body: String,
    },
}

/// The sandbox clock: wall time plus the offset moved by `advance_clock`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClockState {
    /// Sandbox "now" (microsecond precision, as events show it).
    pub now: DateTime<Utc>,
    /// Seconds the clock has been moved forward.
    pub offset_seconds: i64,
}

/// `POST /sandbox/webhooks` body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookRegistration {
    /// Where to POST events.
    pub url: String,
    /// Signing secret; the sandbox makes one up when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// Event type globs; empty = every type.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub types: Vec<String>,
    /// Whether deliveries are sent (default true).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
}

impl WebhookRegistration {
    /// All event types to `url`, enabled, with a secret chosen by the sandbox.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            ..Self::default()
        }
    }

    /// Signs with `secret`.
    pub fn secret(mut self, secret: impl Into<String>) -> Self {
        self.secret = Some(secret.into());
        self
    }

    /// Only event types matching these globs (e.g. `order.charge.*`).
    pub fn types<I, S>(mut self, types: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.types = types.into_iter().map(Into::into).collect();
        self
    }

    /// Registered enabled or disabled.
    pub fn enabled(mut self, enabled: bool) -> Self {
        self.enabled = Some(enabled);
        self
    }
}

/// `POST /sandbox/webhooks/{id}/rotate` body. The default rotates to a made-up secret and
/// drops the old one at once.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SecretRotation {
    /// The new secret; the sandbox makes one up when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// How long the old secret stays listed as valid (default 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub old_secret_valid_seconds: Option<i64>,
}

/// `POST /sandbox/charges/{id}/refunds` body: a refund made outside the emulated API (e.g.
/// in DR's Dashboard), recorded on a charge. The default refunds everything left to refund
/// on the charge, successfully.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RefundSpec {
    /// Amount as exact decimal text (e.g. `"9.99"`); default: all that is left.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub amount: Option<String>,
    /// Why it was made, e.g. `requested_by_customer`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// What was refunded, e.g. `product` or `shipping` (DR `type`).
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// The refunded lines.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub items: Vec<RefundLineSpec>,
    /// When set, the refund fails with this reason (e.g. `expired_or_canceled_card`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure_reason: Option<String>,
}

impl RefundSpec {
    /// A complete refund of `amount` (exact decimal text).
    pub fn of(amount: impl Into<String>) -> Self {
        Self {
            amount: Some(amount.into()),
            ..Self::default()
        }
    }

    /// Gives the reason.
    pub fn reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = Some(reason.into());
        self
    }

    /// Says what was refunded (`product`, `shipping`, …).
    pub fn kind(mut self, kind: impl Into<String>) -> Self {
        self.kind = Some(kind.into());
        self
    }

    /// Adds a refunded line.
    pub fn item(mut self, item: RefundLineSpec) -> Self {
        self.items.push(item);
        self
    }

    /// Makes the refund fail with `reason`.
    pub fn failing(mut self, reason: impl Into<String>) -> Self {
        self.failure_reason = Some(reason.into());
        self
    }
}

/// One refunded line of a [`RefundSpec`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RefundLineSpec {
    /// What the line refunds, e.g. `shipping`.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// SKU id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sku_id: Option<String>,
    /// Line item id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub item_id: Option<String>,
    /// Units.
    pub quantity: i64,
    /// Amount as exact decimal text.
    pub amount: String,
}

/// The two kinds of chargeback sales transactions (DR's "Disputes and chargebacks" page).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChargebackType {
    /// `fraud_chargeback` (the default).
    #[default]
    FraudChargeback,
    /// `non_fraud_chargeback`.
    NonFraudChargeback,
}

/// `POST /sandbox/orders/{id}/chargeback` body. The default charges back everything
/// available to refund, as a fraud chargeback without fee.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ChargebackSpec {
    /// Amount charged back, exact decimal text; default: all available to refund.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub amount: Option<String>,
    /// Fraud or non-fraud.
    #[serde(rename = "type")]
    pub kind: ChargebackType,
    /// Chargeback fee, exact decimal text (the page's example shows 15.0); default none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fee: Option<String>,
}

/// Answer of [`ControlClient::grant_chargeback`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Chargeback {
    /// The sales transaction, DR-shaped, as `sales_transaction.created` and
    /// `order.chargeback` carry it.
    pub sales_transaction: Value,
    /// The order afterwards, as `GET /orders/{id}` returns it.
    pub order: Value,
}

/// A registered webhook endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookEndpoint {
    /// Endpoint id (UUID).
    pub id: String,
    /// Where events go.
    pub url: String,
    /// Same as `url` (DR's field name).
    pub address: String,
    /// Subscribed type globs; `["*"]` = every type.
    pub types: Vec<String>,
    /// Whether deliveries are sent.
    pub enabled: bool,
    /// DR API version of the payloads.
    pub api_version: String,
    /// When it was registered (sandbox clock).
    pub created_time: DateTime<Utc>,
    /// The secret signing deliveries now.
    pub secret: String,
    /// The current secret and, during a rotation window, the previous one.
    pub secrets: Vec<WebhookSecret>,
}

/// One secret of a [`WebhookEndpoint`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookSecret {
    /// The secret.
    pub secret: String,
    /// Whether it signs deliveries now.
    pub current: bool,
    /// Until when a previous secret stays valid.
    #[serde(default)]
    pub expires_time: Option<DateTime<Utc>>,
}

/// An armed fault as the sandbox lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ArmedFault {
    /// Fault id.
    pub id: String,
    /// Method filter, upper case; `*` = any.
    pub method: String,
    /// Path pattern.
    pub path: String,
    /// Calls it will still hit (same as `remaining`).
    pub count: u32,
    /// Calls it will still hit.
    pub remaining: u32,
    /// What it does.
    pub kind: FaultKind,
    /// Delay of the latency kinds (0 otherwise).
    pub latency_ms: u64,
    /// Status of the `status` kind (200 for the other kinds).
    pub status: u16,
    /// `Retry-After` seconds.
    #[serde(default)]
    pub retry_after: Option<u64>,
}

/// Capture or cancel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OperationKind {
    /// A capture (`captures[]`).
    Capture,
    /// A cancel (`cancels[]`).
    Cancel,
}

/// State of a capture or cancel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OperationState {
    /// Submitted, outcome not known yet.
    Pending,
    /// Succeeded.
    Complete,
    /// Failed.
    Failed,
}

/// A capture or cancel waiting for [`ControlClient::settle`] (stepped settlement).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PendingOperation {
    /// Order id.
    pub order_id: String,
    /// Charge id.
    pub charge_id: String,
    /// Capture or cancel.
    pub kind: OperationKind,
    /// The capture's or cancel's id.
    pub operation_id: String,
}

/// A capture or cancel completed by [`ControlClient::settle`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Settled {
    /// Order id.
    pub order_id: String,
    /// Charge id.
    pub charge_id: String,
    /// Capture or cancel.
    pub kind: OperationKind,
    /// The capture's or cancel's id.
    pub operation_id: String,
    /// Its amount, exact (`to_string()` gives DR's decimal text, e.g. `12.34`).
    pub amount: serde_json::Number,
    /// `complete` or `failed`.
    pub state: OperationState,
    /// Id of the `order.charge.{kind}.{state}` event emitted.
    pub event_id: String,
}

/// A DR-surface request as the sandbox received it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecordedRequest {
    /// Arrival order.
    pub seq: u64,
    /// HTTP method.
    pub method: String,
    /// Path.
    pub path: String,
    /// Raw query string.
    #[serde(default)]
    pub query: Option<String>,
    /// Headers (names lower case) minus `Authorization`.
    pub headers: BTreeMap<String, String>,
    /// Body as JSON, a JSON string when not JSON, null when empty.
    pub body: Value,
    /// Wall time of arrival.
    pub received_time: DateTime<Utc>,
    /// The fault applied to it.
    #[serde(default)]
    pub fault: Option<FaultKind>,
    /// Refused with 429 by the sandbox's rate limit.
    #[serde(default)]
    pub rate_limited: bool,
}

/// `POST /sandbox/rate-limit` body: DR's per-key limit on or off, and its numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RateLimitSettings {
    /// Whether DR-surface requests are limited.
    pub enabled: bool,
    /// Requests per second per live key (default 250, DR's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub live_per_second: Option<u32>,
    /// Requests per second per test key (default 25, DR's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub test_per_second: Option<u32>,
}

impl RateLimitSettings {
    /// DR's documented limits (250/s live, 25/s test) on.
    pub fn documented() -> Self {
        Self {
            enabled: true,
            live_per_second: None,
            test_per_second: None,
        }
    }

    /// No limit.
    pub fn off() -> Self {
        Self {
            enabled: false,
            live_per_second: None,
            test_per_second: None,
        }
    }
}

/// The sandbox's rate limit and what it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RateLimitState {
    /// Whether DR-surface requests are limited.
    pub enabled: bool,
    /// Requests per second per live key.
    pub live_per_second: u32,
    /// Requests per second per test key.
    pub test_per_second: u32,
    /// DR-surface requests admitted since start.
    pub admitted: u64,
    /// DR-surface requests answered 429 since start.
    pub limited: u64,
}

/// One webhook delivery attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryRecord {
    /// Event id.
    pub event_id: String,
    /// Event type.
    pub event_type: String,
    /// Endpoint id.
    pub webhook_id: String,
    /// Endpoint URL.
    pub url: String,
    /// 1-based attempt number.
    pub attempt: u32,
    /// HTTP status, if an answer came.
    #[serde(default)]
    pub status: Option<u16>,
    /// Transport error or timeout.
    #[serde(default)]
    pub error: Option<String>,
    /// Whether the endpoint answered 2xx.
    pub success: bool,
    /// The `DigitalRiver-Signature` header sent.
    pub signature: String,
    /// Wall time of the attempt.
    pub attempted_time: DateTime<Utc>,
    /// How long it took.
    pub duration_ms: u64,
    /// Whether another attempt follows.
    pub will_retry: bool,
}

/// Answer of [`ControlClient::redeliver`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Redelivery {
    /// The event sent again.
    pub event_id: String,
    /// The endpoints it is queued for.
    pub webhook_ids: Vec<String>,
}

#[derive(Deserialize)]
struct DataList<T> {
    data: Vec<T>,
}

#[derive(Deserialize)]
struct SettledList {
    settled: Vec<Settled>,
}

#[derive(Serialize)]
struct Advance {
    seconds: i64,
}

/// A client of the `/sandbox/` control surface of one sandbox.
///
/// Cheap to clone (the HTTP connection pool is shared). Every call carries
/// `Authorization: Bearer <api_key>`; an `sk_test_…` key creates test-mode orders and events,
/// any other key live-mode ones.
#[derive(Debug, Clone)]
pub struct ControlClient {
    http: reqwest::Client,
    base_url: String,
    api_key: String,
    timeout: Duration,
}

/// Percent-encodes `s` for a query value or, with `keep_slash`, a path.
fn encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'*' => {
                out.push(char::from(b));
            }
            b'/' if keep_slash => out.push('/'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// `?k=v&…` of the present filters, or nothing.
fn query(pairs: &[(&str, Option<&str>)]) -> String {
    let parts: Vec<String> = pairs
        .iter()
        .filter_map(|(k, v)| v.map(|v| format!("{k}={}", encode(v, true))))
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    }
}

impl ControlClient {
    /// A client of the sandbox at `base_url` (e.g. `http://127.0.0.1:PORT`) calling with
    /// `api_key`, with its own connection pool and a 10 s per-request timeout.
    pub fn new(base_url: impl Into<String>, api_key: impl Into<String>) -> Self {
        Self::with_http_client(reqwest::Client::new(), base_url, api_key)
    }

    /// Like [`ControlClient::new`], sharing `http`'s connection pool. The 10 s per-request
    /// timeout still applies.
    pub fn with_http_client(
        http: reqwest::Client,
        base_url: impl Into<String>,
        api_key: impl Into<String>,
    ) -> Self {
        let base_url = base_url.into().trim_end_matches('/').to_owned();
        Self {
            http,
            base_url,
            api_key: api_key.into(),
            timeout: DEFAULT_CONTROL_TIMEOUT,
        }
    }

    /// The same client with another per-request timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The sandbox's base URL.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// Sends one control call; the body of an `expected` answer, or the error.
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&(impl Serialize + ?Sized)>,
        expected: StatusCode,
    ) -> Result<String, ControlError> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base_url))
            .bearer_auth(&self.api_key)
            .timeout(self.timeout);
        if let Some(body) = body {
            req = req.json(body);
        }
        let resp = req.send().await?;
        let status = resp.status();
        let text = resp.text().await?;
        if status == expected {
            Ok(text)
        } else {
            Err(ControlError::Status {
                status: status.as_u16(),
                body: text,
            })
        }
    }

    /// A control call whose `expected` answer is JSON of type `T`.
    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&(impl Serialize + ?Sized)>,
        expected: StatusCode,
    ) -> Result<T, ControlError> {
        let text = self.send(method, path, body, expected).await?;
        serde_json::from_str(&text).map_err(|source| ControlError::Decode { source, body: text })
    }

    /// A control call without a body.
    async fn call_empty<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        expected: StatusCode,
    ) -> Result<T, ControlError> {
        self.call(method, path, None::<&Value>, expected).await
    }

    /// A control call answering 204 No Content.
    async fn call_no_content(&self, method: Method, path: &str) -> Result<(), ControlError> {
        self.send(method, path, None::<&Value>, StatusCode::NO_CONTENT)
            .await
            .map(drop)
    }

    /// `POST /sandbox/orders`: creates an order (emitting `order.accepted`) and returns it
    /// as `GET /orders/{id}` would. `spec` is the compact order spec of the crate docs,
    /// e.g. `json!({"items": [{"quantity": 2, "amount": "25.00"}]})`.
    pub async fn create_order(&self, spec: impl Serialize) -> Result<Value, ControlError> {
        self.call(
            Method::POST,
            "/sandbox/orders",
            Some(&spec),
            StatusCode::CREATED,
        )
        .await
    }

    /// `POST /sandbox/orders/{id}/accept`: an order created `in_review` or
    /// `pending_payment` passes review and is authorized (`accepted`, `order.accepted`);
    /// returns it.
    pub async fn accept_order(&self, order_id: &str) -> Result<Value, ControlError> {
        let path = format!("/sandbox/orders/{}/accept", encode(order_id, false));
        self.call_empty(Method::POST, &path, StatusCode::OK).await
    }

    /// `POST /sandbox/orders/{id}/chargeback`: grants a chargeback on a disputed order —
    /// the dispute ends, a sales transaction is created (`sales_transaction.created`,
    /// `order.chargeback`) and `availableToRefundAmount` drops by its amount.
    pub async fn grant_chargeback(
        &self,
        order_id: &str,
        spec: &ChargebackSpec,
    ) -> Result<Chargeback, ControlError> {
        let path = format!("/sandbox/orders/{}/chargeback", encode(order_id, false));
        self.call(Method::POST, &path, Some(spec), StatusCode::CREATED)
            .await
    }

    /// `POST /sandbox/charges/{id}/refunds`: records a refund on a charge (emitting
    /// `order.charge.refund.complete` or `.failed`); returns the charge as `GET
    /// /charges/{id}` would.
    pub async fn record_refund(
        &self,
        charge_id: &str,
        spec: &RefundSpec,
    ) -> Result<Value, ControlError> {
        let path = format!("/sandbox/charges/{}/refunds", encode(charge_id, false));
        self.call(Method::POST, &path, Some(spec), StatusCode::CREATED)
            .await
    }

    /// `POST /sandbox/orders/{id}/dispute`: the order goes to `dispute`; returns it.
    pub async fn open_dispute(&self, order_id: &str) -> Result<Value, ControlError> {
        let path = format!("/sandbox/orders/{}/dispute", encode(order_id, false));
        self.call_empty(Method::POST, &path, StatusCode::OK).await
    }

    /// `POST /sandbox/orders/{id}/dispute/resolve`: back to the pre-dispute state; returns
    /// the order.
    pub async fn resolve_dispute(&self, order_id: &str) -> Result<Value, ControlError> {
        let path = format!(
            "/sandbox/orders/{}/dispute/resolve",
            encode(order_id, false)
        );
        self.call_empty(Method::POST, &path, StatusCode::OK).await
    }

    /// `GET /sandbox/clock`.
    pub async fn clock(&self) -> Result<ClockState, ControlError> {
        self.call_empty(Method::GET, "/sandbox/clock", StatusCode::OK)
            .await
    }

    /// `POST /sandbox/clock/advance`: moves the sandbox clock forward (never back).
    pub async fn advance_clock(&self, seconds: i64) -> Result<ClockState, ControlError> {
        self.call(
            Method::POST,
            "/sandbox/clock/advance",
            Some(&Advance { seconds }),
            StatusCode::OK,
        )
        .await
    }

    /// `POST /sandbox/webhooks`: registers an endpoint; events emitted from now on go to it.
    pub async fn add_webhook(
        &self,
        registration: &WebhookRegistration,
    ) -> Result<WebhookEndpoint, ControlError> {
        self.call(
            Method::POST,
            "/sandbox/webhooks",
            Some(registration),
            StatusCode::CREATED,
        )
        .await
    }

    /// `GET /sandbox/webhooks`: every endpoint, in registration order.
    pub async fn webhooks(&self) -> Result<Vec<WebhookEndpoint>, ControlError> {
        let list: DataList<WebhookEndpoint> = self
            .call_empty(Method::GET, "/sandbox/webhooks", StatusCode::OK)
            .await?;
        Ok(list.data)
    }

    /// `POST /sandbox/webhooks/{id}/rotate`: the new secret signs from now on.
    pub async fn rotate_webhook(
        &self,
        webhook_id: &str,
        rotation: &SecretRotation,
    ) -> Result<WebhookEndpoint, ControlError> {
        let path = format!("/sandbox/webhooks/{}/rotate", encode(webhook_id, false));
        self.call(Method::POST, &path, Some(rotation), StatusCode::OK)
            .await
    }

    /// `DELETE /sandbox/webhooks/{id}`.
    pub async fn delete_webhook(&self, webhook_id: &str) -> Result<(), ControlError> {
        let path = format!("/sandbox/webhooks/{}", encode(webhook_id, false));
        self.call_no_content(Method::DELETE, &path).await
    }

    /// `POST /sandbox/faults`: arms a fault on the DR surface.
    pub async fn add_fault(&self, spec: &FaultSpec) -> Result<ArmedFault, ControlError> {
        self.call(
            Method::POST,
            "/sandbox/faults",
            Some(spec),
            StatusCode::CREATED,
        )
        .await
    }

    /// `GET /sandbox/faults`: armed faults, first armed first.
    pub async fn faults(&self) -> Result<Vec<ArmedFault>, ControlError> {
        let list: DataList<ArmedFault> = self
            .call_empty(Method::GET, "/sandbox/faults", StatusCode::OK)
            .await?;
        Ok(list.data)
    }

    /// `DELETE /sandbox/faults`: disarms every fault.
    pub async fn clear_faults(&self) -> Result<(), ControlError> {
        self.call_no_content(Method::DELETE, "/sandbox/faults")
            .await
    }

    /// `GET /sandbox/rate-limit`: the per-key rate limit and its counters.
    pub async fn rate_limit(&self) -> Result<RateLimitState, ControlError> {
        self.call_empty(Method::GET, "/sandbox/rate-limit", StatusCode::OK)
            .await
    }

    /// `POST /sandbox/rate-limit`: turns DR's per-key rate limit on or off.
    pub async fn set_rate_limit(
        &self,
        settings: &RateLimitSettings,
    ) -> Result<RateLimitState, ControlError> {
        self.call(
            Method::POST,
            "/sandbox/rate-limit",
            Some(settings),
            StatusCode::OK,
        )
        .await
    }

    /// `POST /sandbox/settle`: completes every pending capture and cancel now.
    pub async fn settle(&self) -> Result<Vec<Settled>, ControlError> {
        let list: SettledList = self
            .call_empty(Method::POST, "/sandbox/settle", StatusCode::OK)
            .await?;
        Ok(list.settled)
    }

    /// `GET /sandbox/pending`: captures and cancels waiting for [`ControlClient::settle`].
    pub async fn pending(&self) -> Result<Vec<PendingOperation>, ControlError> {
        let list: DataList<PendingOperation> = self
            .call_empty(Method::GET, "/sandbox/pending", StatusCode::OK)
            .await?;
        Ok(list.data)
    }

    /// `GET /sandbox/requests`: DR-surface requests received, oldest first, optionally only
    /// those with `method` (any case) and a path matching `path` (exact or `*` glob).
    pub async fn requests(
        &self,
        method: Option<&str>,
        path: Option<&str>,
    ) -> Result<Vec<RecordedRequest>, ControlError> {
        let url = format!(
            "/sandbox/requests{}",
            query(&[("method", method), ("path", path)])
        );
        let list: DataList<RecordedRequest> =
            self.call_empty(Method::GET, &url, StatusCode::OK).await?;
        Ok(list.data)
    }

    /// `DELETE /sandbox/requests`: forgets the request log.
    pub async fn clear_requests(&self) -> Result<(), ControlError> {
        self.call_no_content(Method::DELETE, "/sandbox/requests")
            .await
    }

    /// `GET /sandbox/deliveries`: webhook delivery attempts, oldest first, optionally only
    /// those of one event and/or one endpoint.
    pub async fn deliveries(
        &self,
        event_id: Option<&str>,
        webhook_id: Option<&str>,
    ) -> Result<Vec<DeliveryRecord>, ControlError> {
        let url = format!(
            "/sandbox/deliveries{}",
            query(&[("eventId", event_id), ("webhookId", webhook_id)])
        );
        let list: DataList<DeliveryRecord> =
            self.call_empty(Method::GET, &url, StatusCode::OK).await?;
        Ok(list.data)
    }

    /// `DELETE /sandbox/deliveries`: forgets the delivery log.
    pub async fn clear_deliveries(&self) -> Result<(), ControlError> {
        self.call_no_content(Method::DELETE, "/sandbox/deliveries")
            .await
    }

    /// `POST /sandbox/events/{id}/redeliver`: sends a stored event again, re-signed, to the
    /// endpoints that want its type.
    pub async fn redeliver(&self, event_id: &str) -> Result<Redelivery, ControlError> {
        let path = format!("/sandbox/events/{}/redeliver", encode(event_id, false));
        self.call_empty(Method::POST, &path, StatusCode::ACCEPTED)
            .await
    }

    /// `GET /sandbox/delivery`: how webhooks go out now.
    pub async fn delivery(&self) -> Result<DeliveryMode, ControlError> {
        let body: DeliveryBody = self
            .call_empty(Method::GET, "/sandbox/delivery", StatusCode::OK)
            .await?;
        body.mode()
    }

    /// `POST /sandbox/delivery`: concurrent (DR's way) or in-order delivery, and the
    /// jitter of concurrent deliveries, for events emitted from now on; returns the
    /// mode in force.
    pub async fn set_delivery(&self, mode: DeliveryMode) -> Result<DeliveryMode, ControlError> {
        let request = DeliveryBody {
            order: mode.order.as_str().to_owned(),
            jitter_ms: u64::try_from(mode.jitter.as_millis()).unwrap_or(u64::MAX),
        };
        let body: DeliveryBody = self
            .call(
                Method::POST,
                "/sandbox/delivery",
                Some(&request),
                StatusCode::OK,
            )
            .await?;
        body.mode()
    }

    /// `POST /sandbox/events`: stores and delivers an event; returns it as `GET
    /// /events/{id}` would. `event` is a full envelope (`type` + `data`, missing fields
    /// filled in) or `{type, object, previousAttributes?}`.
    pub async fn post_event(&self, event: impl Serialize) -> Result<Value, ControlError> {
        self.call(
            Method::POST,
            "/sandbox/events",
            Some(&event),
            StatusCode::CREATED,
        )
        .await
    }
}
