//! A stateful emulator of Digital River's REST API for fulfillments, charges, orders,
//! events and webhooks — the "sandbox".
//!
//! It speaks only DR's HTTP API (same paths, bodies, status codes, error shapes as
//! docs/digital-river.md) plus a control surface under `/sandbox/` that tests
//! use to create orders, move the clock, settle asynchronous charge operations, register
//! webhooks, inject faults and inspect what was received and delivered. It imports nothing
//! from the gateway.
//!
//! Three ways to run it: `dr-gateway sandbox --listen …` ([`run_standalone`]), in-process
//! next to the gateway, and from tests on port 0 ([`Sandbox::start`]).
//!
//! # DR surface
//! `POST /fulfillments`, `GET /fulfillments[/{id}]`, `POST /fulfillments/{id}` (tracking),
//! `GET /charges/{id}`, `GET /sources/{id}`, `GET /orders/{id}`, `GET /orders?upstreamIds=…`,
//! `GET /events[/{id}]`. An order's `payment.sources[]` has one source per charge (`type`,
//! `amount`, `creditCard {brand, lastFourDigits, expirationMonth, expirationYear}` or
//! `customerCredit {}`, `owner` from the order's `billTo`); `GET /sources/{id}` adds
//! `createdTime`, `currency`, `liveMode` and the `clientSecret` DR returns there. A request
//! with `digitalriver-version` 2021-02-23 or earlier gets orders in the legacy shape of DR's
//! "Applying store credit (legacy)" page: `creditAmount`, `sources[]` and `charges[]` at the
//! top level, no `payment`; events keep the 2021-12-13 shape of the sandbox's webhooks.
//! Every call needs `Authorization: Bearer <key>`; `sk_test_…` keys create `liveMode: false`
//! objects, any other key `liveMode: true`. A key sees only its own mode's objects
//! (docs/digital-river.md §5.4): orders, charges, fulfillments and events of the other mode
//! answer 404 `not_found` as if they did not exist, and lists leave them out; the control
//! surface's order endpoints follow the same rule. Unknown order on `POST /fulfillments` →
//! 404 `not_found` (`parameter: orderId`); unknown line item → 400 `invalid_parameter`
//! (`itemId`); the same `shipmentItemId` on two items → 400 `invalid_parameter`
//! (`shipmentItemId`; DR asks for "a unique shipmentItemId" per item); more units than left →
//! 409 `quantity_too_large`; fully cancelled order → 409 `invalid_state`. These four are our
//! choices: DR does not document them. Neither does it document what `POST /fulfillments`
//! answers for an order that is not `accepted`; the sandbox answers 409 with
//! `parameter: orderId` and the code `order_not_submitted` for `in_review` and
//! `pending_payment` orders (DR's code for a disputed order, which cannot be fulfilled
//! either), `invalid_state` for `blocked` and `cancelled` ones.
//!
//! A risk-averse order whose authorization has expired (`riskMode: averse` and
//! `authorizationExpired` or `authorizationExpiresAt` passed) refuses captures with DR's 409
//! `payment_authorization_failed` and an `order.charge.reauth.failed` event, unless it was
//! created with `reauthorization: succeeds`: then DR secures a new authorization (valid 7
//! days) and the capture proceeds like any other — 201, `order.charge.capture.pending`, then
//! the outcome (DR's "Payment reauthorizations" page, second outcome).
//!
//! # Control surface (all under the same bearer auth; bodies camelCase, unknown fields ignored)
//! - `POST /sandbox/orders` → 201 order as `GET /orders/{id}` returns it; emits the event of
//!   its state. Body: `id?`, `upstreamId?`, `currency?` (USD), `email?`, `shipTo?`, `items[]`
//!   (`id?`, `skuId?`, `productName?`, `quantity`, `amount` = line amount, `tax?`, `taxRate?`,
//!   `fees?`, `duties?` (line totals, charged like tax), `productDetails?` (more
//!   `productDetails` fields, echoed), `metadata?`), `billTo?` (echoed), `shipping? {amount,
//!   tax?}`, `charges? [{type: creditCard|customerCredit, amount?, creditCard? {brand,
//!   lastFourDigits, expirationMonth, expirationYear, fundingSource?}}]` (a card defaults
//!   to Visa 1111, 7/2030), `fulfillmentModel? third_party|distributed`,
//!   `riskMode? tolerant|averse`, `reauthorization? fails|succeeds` (default `fails`),
//!   `authorizationExpired?`,
//!   `authorizationExpiresAt?` (default: created + 7 days), `failCaptures?`, `failCancels?`,
//!   `metadata?`, `state?`:
//!   - `accepted` (default): charges `capturable`, `fraudState: passed`, `order.accepted`;
//!   - `in_review`: charges `capturable`, `fraudState: review_opened`, `order.review_opened`;
//!   - `pending_payment`: charges `pending`, `fraudState: passed`, `order.pending_payment`;
//!   - `blocked`: charges `failed`, `fraudState: blocked`, `order.blocked`;
//!   - `cancelled`: every unit and every charge cancelled in full, `order.cancelled`.
//!
//!   (DR's "The order lifecycle" page; the charge states of `blocked` and `cancelled`
//!   orders are the sandbox's choice.)
//! - `POST /sandbox/orders/{id}/accept` → 200 order: an `in_review` or `pending_payment`
//!   order passes review and is authorized (`accepted`, `fraudState: passed`, charges
//!   `capturable`, `order.accepted`); 409 `invalid_state` from any other state.
//! - `POST /sandbox/orders/{id}/dispute`, `POST /sandbox/orders/{id}/dispute/resolve` → 200 order.
//!   During the dispute `fraudState` is `review_opened`; resolving restores the state and
//!   the fraud state from before (DR's "Disputes and chargebacks" page).
//! - `POST /sandbox/orders/{id}/chargeback {amount?, type? fraud_chargeback|non_fraud_chargeback,
//!   fee?}` → 201 `{salesTransaction, order}`: grants a chargeback on a disputed order (409
//!   `invalid_state` otherwise). The dispute is resolved (`order.dispute.resolved`), a sales
//!   transaction is created and sent as `sales_transaction.created` and `order.chargeback`,
//!   and `availableToRefundAmount` drops by `amount` (default: all of it). The transaction
//!   has the fields of the page's example; its `amount` is the amount charged back and
//!   `payoutAmounts.payoutAmount` = −(amount + fee) — the sandbox's choice, as DR's only
//!   example is a fee line. The charges' `refunds[]` do not change (DR does not say how a
//!   chargeback shows there).
//! - `POST /sandbox/charges/{id}/refunds {amount?, reason?, type?, items? [{type?, skuId?,
//!   itemId?, quantity, amount}], failureReason?}` → 201 charge: records a refund made
//!   outside the emulated API (e.g. in DR's Dashboard; `POST /refunds` is not emulated) with
//!   the fields of DR's Charges API reference (`id` `ref_…`, `invoiceId`, `refundedAmount`, …).
//!   Complete unless `failureReason` is given; emits `order.charge.refund.complete` /
//!   `.failed`; a complete one raises `refundedAmount` and lowers `availableToRefundAmount`.
//!   `amount` (default: all that is left) must not exceed what the charge captured less
//!   what was refunded or charged back (400 `invalid_parameter` otherwise).
//! - `GET /sandbox/clock`, `POST /sandbox/clock/advance {seconds}` → `{now, offsetSeconds}`.
//! - `POST /sandbox/webhooks {url, secret?, types?, enabled?}` → 201 `{id, url, address, types,
//!   enabled, apiVersion, createdTime, secret, secrets[{secret, current, expiresTime?}]}`;
//!   `GET /sandbox/webhooks` → `{data}`; `POST /sandbox/webhooks/{id}/rotate {secret?,
//!   oldSecretValidSeconds?}` → 200 webhook; `DELETE /sandbox/webhooks/{id}` → 204.
//! - `POST /sandbox/faults {method?, path, count?, kind, latencyMs?, status?, retryAfter?}` → 201
//!   (kinds: `latency`, `status`, `reset`, `malformed`, `reset_after_processing`,
//!   `latency_after_processing`, and the late commits `delayed_commit` — processed
//!   `latencyMs` after arrival even if the caller gave up — and `status_then_commit` —
//!   answered `status` at once, processed `latencyMs` later); `GET /sandbox/faults`;
//!   `DELETE /sandbox/faults` → 204.
//! - `GET /sandbox/rate-limit` → `{enabled, livePerSecond, testPerSecond, admitted, limited}`;
//!   `POST /sandbox/rate-limit {enabled, livePerSecond?, testPerSecond?}` → 200 the same.
//!   While enabled, each secret key may make at most its mode's number of DR-surface
//!   requests in any one-second window; more get DR's 429 `too_many_requests` with
//!   `Retry-After` and are logged in `/sandbox/requests` with `rateLimited: true`.
//!   `admitted` / `limited` count DR-surface requests since start. Defaults to DR's
//!   documented limits (250/s live, 25/s test) when enabled without numbers.
//! - `POST /sandbox/settle` → `{settled: [{orderId, chargeId, kind, operationId, amount, state,
//!   eventId}]}`; `GET /sandbox/pending` → `{data}`.
//! - `GET /sandbox/requests[?method=&path=]` → `{data: [{seq, method, path, query, headers, body,
//!   receivedTime, fault, rateLimited}]}`; `DELETE /sandbox/requests` → 204.
//! - `GET /sandbox/deliveries[?eventId=&webhookId=]` → `{data: [{eventId, eventType, webhookId, url,
//!   attempt, status, error, success, signature, attemptedTime, durationMs, willRetry}]}`; `DELETE` → 204.
//! - `POST /sandbox/events/{id}/redeliver` → 202 `{eventId, webhookIds}`.
//! - `GET /sandbox/delivery` → `{order, jitterMs}`; `POST /sandbox/delivery {order?,
//!   jitterMs?}` → 200 `{order, jitterMs}`: `order` `concurrent` (DR's way, the default:
//!   deliveries run side by side, so events arrive in any order, more so with a jitter:
//!   each concurrent delivery first waits a random time below `jitterMs`, default 0) or
//!   `in_order` (one delivery at a time per endpoint, in emission order, retries
//!   included). Applies to events emitted from then on.
//! - `POST /sandbox/events` (full envelope, or `{type, object, previousAttributes?}`) → 201 event.
//!
//! # Layout
//! - `clock` — sandbox clock (wall time + offset) and DR timestamp formats
//! - `conn` — TCP listener with per-connection kill switches (the `reset` faults)
//! - `control_client` — [`ControlClient`], the typed client of the `/sandbox/` control surface
//! - `error` — DR-shaped API errors and [`SandboxError`]
//! - `events` — event envelope and 30-day event store
//! - `faults` — armed fault table
//! - `fulfill` — capture/cancel allocation rules (pure)
//! - `fulfillments` — `POST /fulfillments` validation and effects
//! - `glob` — `*` wildcard matching
//! - `ids` — (seeded) id generation
//! - `model` — orders, items, charges, fulfillments and their JSON
//! - `money` — integer minor units ↔ exact decimal JSON
//! - `orders` — order creation, acceptance and disputes
//! - `rate_limit` — DR's per-key rate limit (sliding one-second window)
//! - `reversals` — refunds recorded on charges, granted chargebacks
//! - `routes` — axum handlers, auth, request log, fault application
//! - `settle` — settlement of pending captures/cancels, order completion
//! - `state` — the world behind one mutex, event emission
//! - `webhooks` — endpoints, signing, background delivery with retries (concurrent or in
//!   order)
//!
//! Events get strictly increasing `createdTime`s (microseconds, like DR's), so their
//! creation order is never ambiguous.

#[cfg(feature = "cli")]
pub mod cli;
mod clock;
mod conn;
mod control_client;
mod error;
mod events;
mod faults;
mod fulfill;
mod fulfillments;
mod glob;
mod ids;
mod model;
mod money;
mod orders;
mod rate_limit;
mod reversals;
mod routes;
mod settle;
mod state;
mod webhooks;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

pub use control_client::{
    ArmedFault, Chargeback, ChargebackSpec, ChargebackType, ClockState, ControlClient,
    ControlError, DeliveryRecord, OperationKind, OperationState, PendingOperation,
    RateLimitSettings, RateLimitState, RecordedRequest, Redelivery, RefundLineSpec, RefundSpec,
    SecretRotation, Settled, WebhookEndpoint, WebhookRegistration, WebhookSecret,
    DEFAULT_CONTROL_TIMEOUT,
};
pub use error::SandboxError;
pub use faults::{FaultKind, FaultSpec};
pub use rate_limit::RateLimit;
pub use webhooks::{sign as sign_webhook, signature_header};

use conn::{ConnKill, KillableListener};
use state::{App, World};

/// When pending captures and cancels complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SettleMode {
    /// Right after the `POST /fulfillments` that created them, before it answers.
    #[default]
    Immediate,
    /// Only on `POST /sandbox/settle`.
    Stepped,
}

impl std::str::FromStr for SettleMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "immediate" => Ok(Self::Immediate),
            "stepped" => Ok(Self::Stepped),
            other => Err(format!("unknown settle mode '{other}' (immediate|stepped)")),
        }
    }
}

/// The order in which webhooks go out to an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeliveryOrder {
    /// Every delivery on its own (up to 32 at once across endpoints), as DR sends them
    /// (docs/digital-river.md §4.2): events created moments apart can arrive in either
    /// order, and a retried one arrives after later ones.
    #[default]
    Concurrent,
    /// One delivery at a time per endpoint, in the order the events were emitted; a
    /// failing delivery is retried (with backoff) before the next event is sent.
    InOrder,
}

impl DeliveryOrder {
    /// The control surface's and the flag's name: `concurrent` or `in_order`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Concurrent => "concurrent",
            Self::InOrder => "in_order",
        }
    }
}

impl std::str::FromStr for DeliveryOrder {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "concurrent" => Ok(Self::Concurrent),
            "in_order" | "in-order" => Ok(Self::InOrder),
            other => Err(format!(
                "unknown delivery order '{other}' (concurrent|in_order)"
            )),
        }
    }
}

/// How the sandbox sends webhooks: the order, and a random delay before each
/// concurrent delivery (network latency differs per request, which is what makes
/// DR's concurrent webhooks arrive out of order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DeliveryMode {
    /// Concurrent or in order.
    pub order: DeliveryOrder,
    /// Each concurrent delivery first waits a random time below this (zero: none).
    pub jitter: Duration,
}

/// Webhook delivery retries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Total attempts per event and endpoint, first one included (DR test mode retries
    /// "three/four times", docs/digital-river.md §4.2). Default 4.
    pub attempts: u32,
    /// Delay before the first retry; doubles each time. Default 1 s.
    pub base_delay: Duration,
    /// Per-attempt timeout. Default 3000 ms (docs/digital-river.md §4.2).
    pub timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 4,
            base_delay: Duration::from_secs(1),
            timeout: Duration::from_millis(3000),
        }
    }
}

/// A webhook endpoint registered at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookSpec {
    /// Where to POST events.
    pub url: String,
    /// Signing secret.
    pub secret: String,
    /// Event type globs; empty = all.
    pub types: Vec<String>,
}

/// Sandbox settings.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// Listen address; port 0 picks a free port.
    pub listen: SocketAddr,
    /// Seed for ids: same seed and same calls → same ids.
    pub seed: Option<u64>,
    /// Settlement mode.
    pub settle: SettleMode,
    /// Webhook retry policy.
    pub webhook_retry: RetryPolicy,
    /// Endpoints registered at start.
    pub webhooks: Vec<WebhookSpec>,
    /// DR's per-key rate limit on the DR surface; `None` (the default) admits
    /// everything. [`RateLimit::documented`] is DR's.
    pub rate_limit: Option<RateLimit>,
    /// Concurrent (DR's way, the default) or in-order webhook delivery, and the
    /// jitter of concurrent deliveries; the control surface can change both later.
    pub delivery: DeliveryMode,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            seed: None,
            settle: SettleMode::Immediate,
            webhook_retry: RetryPolicy::default(),
            webhooks: Vec::new(),
            rate_limit: None,
            delivery: DeliveryMode::default(),
        }
    }
}

/// A running sandbox.
#[derive(Debug)]
pub struct Sandbox {
    addr: SocketAddr,
    app: Arc<App>,
    shutdown_tx: oneshot::Sender<()>,
    server: JoinHandle<Result<(), SandboxError>>,
}

/// Binds, builds the app and returns the listener, the router and the dispatcher task.
async fn build(
    config: SandboxConfig,
) -> Result<(TcpListener, Arc<App>, JoinHandle<()>), SandboxError> {
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| SandboxError::Bind {
            addr: config.listen,
            source,
        })?;
    let http = reqwest::Client::builder()
        .timeout(config.webhook_retry.timeout)
        .connect_timeout(config.webhook_retry.timeout)
        .build()
        .map_err(SandboxError::HttpClient)?;
    let (tx, rx) = mpsc::channel(webhooks::QUEUE_CAPACITY);
    let mut world = World::new(config.seed, config.settle, tx);
    world.rate_limiter.set_limit(config.rate_limit);
    world.delivery = config.delivery;
    for spec in config.webhooks {
        world.add_webhook(spec);
    }
    let app = Arc::new(App::new(world, http, config.webhook_retry));
    let dispatcher = tokio::spawn(webhooks::run_dispatcher(app.clone(), rx));
    Ok((listener, app, dispatcher))
}

async fn serve(
    listener: TcpListener,
    app: Arc<App>,
    dispatcher: JoinHandle<()>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), SandboxError> {
    let result = axum::serve(
        KillableListener(listener),
        routes::router(app).into_make_service_with_connect_info::<ConnKill>(),
    )
    .with_graceful_shutdown(async move {
        shutdown.await;
        tracing::info!("sandbox shutting down: draining connections");
    })
    .await
    .map_err(SandboxError::Serve);
    // Deliveries in flight are abandoned on shutdown (aborting the dispatcher drops them).
    dispatcher.abort();
    tracing::info!("sandbox stopped");
    result
}

impl Sandbox {
    /// The key of [`Sandbox::control_client`]: `sk_test_`, so orders it creates are test mode.
    pub const CONTROL_KEY: &'static str = "sk_test_control";

    /// Binds `config.listen`, spawns the server and the webhook dispatcher, and returns.
    pub async fn start(config: SandboxConfig) -> Result<Sandbox, SandboxError> {
        let listen = config.listen;
        let (listener, app, dispatcher) = build(config).await?;
        let addr = listener.local_addr().map_err(|source| SandboxError::Bind {
            addr: listen,
            source,
        })?;
        let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, app.clone(), dispatcher, async move {
            let _ = shutdown_rx.await;
        }));
        tracing::info!(%addr, "sandbox listening");
        Ok(Sandbox {
            addr,
            app,
            shutdown_tx,
            server,
        })
    }

    /// Registers a webhook endpoint in process, as `POST /sandbox/webhooks` would;
    /// returns its id. Events emitted from now on are delivered to it.
    pub fn register_webhook(&self, spec: WebhookSpec) -> String {
        self.app.lock().add_webhook(spec)
    }

    /// The bound address (with the real port when started on port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A [`ControlClient`] for this sandbox, calling with the test-mode key
    /// [`Sandbox::CONTROL_KEY`].
    pub fn control_client(&self) -> ControlClient {
        ControlClient::new(self.base_url(), Self::CONTROL_KEY)
    }

    /// Stops accepting, lets requests in progress finish, stops webhook delivery.
    pub async fn shutdown(self) {
        let _ = self.shutdown_tx.send(());
        match self.server.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "sandbox server stopped with an error"),
            Err(e) => tracing::warn!(error = %e, "sandbox server task failed"),
        }
    }
}

/// Runs the sandbox until `shutdown` resolves (e.g. on SIGINT/SIGTERM).
pub async fn run_standalone(
    config: SandboxConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), SandboxError> {
    let (listener, app, dispatcher) = build(config).await?;
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "sandbox listening");
    }
    serve(listener, app, dispatcher, shutdown).await
}
