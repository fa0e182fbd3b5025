//! The emulated DR resources (orders, line items, charges, capture/cancel operations,
//! fulfillments) and their JSON rendering, field names as in DR's documentation.
//!
//! Amounts are `i64` minor units of the order's currency; rendering goes through
//! `money::to_json` so they are exact on the wire.

use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};

use super::clock::fmt_secs;
use super::money;

/// Which kind of payment source funds a charge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SourceKind {
    /// The primary source.
    CreditCard,
    /// Store credit (DR's "Applying store credit" page).
    CustomerCredit,
}

impl SourceKind {
    /// DR's `sources[].type`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::CreditCard => "creditCard",
            Self::CustomerCredit => "customerCredit",
        }
    }
}

/// The card behind a credit-card source (never a card number: DR does not return one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Card {
    /// Brand, e.g. `Visa`.
    pub brand: String,
    /// Last four digits.
    pub last_four_digits: String,
    /// Expiry month.
    pub expiration_month: u32,
    /// Expiry year.
    pub expiration_year: u32,
    /// `credit`, `debit`, `prepaid`, when given.
    pub funding_source: Option<String>,
}

impl Default for Card {
    /// DR's test Visa of the "Capturing and cancelling charges" page.
    fn default() -> Self {
        Self {
            brand: "Visa".to_owned(),
            last_four_digits: "1111".to_owned(),
            expiration_month: 7,
            expiration_year: 2030,
            funding_source: None,
        }
    }
}

/// State of a capture or cancel operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OpState {
    /// Submitted, outcome not known yet.
    Pending,
    /// Succeeded.
    Complete,
    /// Failed (`failureCode: failed-request`).
    Failed,
}

impl OpState {
    /// Wire name.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Complete => "complete",
            Self::Failed => "failed",
        }
    }
}

/// A capture or a cancel on a charge (`captures[]` / `cancels[]`).
#[derive(Debug, Clone)]
pub(crate) struct Op {
    /// UUID.
    pub id: String,
    /// When it was requested.
    pub created: DateTime<Utc>,
    /// Last state change.
    pub updated: DateTime<Utc>,
    /// Minor units.
    pub amount: i64,
    /// Current state.
    pub state: OpState,
    /// The fulfillment that caused it; empty when the order's own state did (an order
    /// created `cancelled`).
    pub fulfillment_id: String,
    /// Whether settling it fails (from the order's `failCaptures` / `failCancels`).
    pub will_fail: bool,
}

/// The two kinds of charge operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OpKind {
    /// `captures[]`.
    Capture,
    /// `cancels[]`.
    Cancel,
}

impl OpKind {
    /// The event-type word.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Capture => "capture",
            Self::Cancel => "cancel",
        }
    }
}

/// A refund recorded on a charge (`refunds[]`): the sandbox does not refund through an API,
/// it records refunds made elsewhere, e.g. in DR's Dashboard (`POST /sandbox/charges/{id}/refunds`).
#[derive(Debug, Clone)]
pub(crate) struct Refund {
    /// `ref_` + UUID.
    pub id: String,
    /// When it was made.
    pub created: DateTime<Utc>,
    /// Minor units asked for.
    pub amount: i64,
    /// `Complete` or `Failed`.
    pub state: OpState,
    /// Why it was made.
    pub reason: Option<String>,
    /// Why it failed.
    pub failure_reason: Option<String>,
    /// What was refunded (`product`, `shipping`, …).
    pub kind: Option<String>,
    /// The refunded lines.
    pub items: Vec<RefundLine>,
    /// Credit memo id.
    pub invoice_id: String,
}

/// One line of a [`Refund`].
#[derive(Debug, Clone)]
pub(crate) struct RefundLine {
    /// `product`, `shipping`, …
    pub kind: Option<String>,
    /// SKU id.
    pub sku_id: Option<String>,
    /// Line item id.
    pub item_id: Option<String>,
    /// Units.
    pub quantity: i64,
    /// Minor units.
    pub amount: i64,
}

impl Refund {
    /// What the refund gave back: its amount once complete, nothing when it failed.
    pub(crate) fn refunded(&self) -> i64 {
        if self.state == OpState::Complete {
            self.amount
        } else {
            0
        }
    }
}

/// One charge of an order.
#[derive(Debug, Clone)]
pub(crate) struct Charge {
    /// UUID.
    pub id: String,
    /// Creation time.
    pub created: DateTime<Utc>,
    /// Authorized amount; never changes (docs/digital-river.md §2.2).
    pub amount: i64,
    /// Funding source kind.
    pub kind: SourceKind,
    /// The source's id.
    pub source_id: String,
    /// The card, for a credit-card source.
    pub card: Option<Card>,
    /// The source's client secret (DR returns it on `GET /sources/{id}`; it lets a
    /// browser use the source).
    pub client_secret: String,
    /// Payment session id.
    pub payment_session_id: String,
    /// Captures in creation order.
    pub captures: Vec<Op>,
    /// Cancels in creation order.
    pub cancels: Vec<Op>,
    /// Refunds recorded on the charge, in creation order.
    pub refunds: Vec<Refund>,
    /// A state set by the order's own state rather than by operations: `pending` while
    /// the order awaits payment, `failed` once it is blocked (see `orders`).
    pub fixed_state: Option<&'static str>,
}

/// why: saturating sums: operations never add up to more than their charge, and
/// order creation checked that every total fits in i64 (orders.rs).
fn sum_ops(ops: &[Op], pred: impl Fn(OpState) -> bool) -> i64 {
    ops.iter()
        .filter(|o| pred(o.state))
        .fold(0i64, |sum, o| sum.saturating_add(o.amount))
}

impl Charge {
    /// Completed captures.
    pub(crate) fn captured(&self) -> i64 {
        sum_ops(&self.captures, |s| s == OpState::Complete)
    }

    /// Completed cancels.
    pub(crate) fn cancelled(&self) -> i64 {
        sum_ops(&self.cancels, |s| s == OpState::Complete)
    }

    /// Completed refunds.
    pub(crate) fn refunded(&self) -> i64 {
        self.refunds.iter().map(Refund::refunded).sum()
    }

    /// Amount still free to capture or cancel: failed operations give their amount back.
    pub(crate) fn open_amount(&self) -> i64 {
        let committed = sum_ops(&self.captures, |s| s != OpState::Failed)
            .saturating_add(sum_ops(&self.cancels, |s| s != OpState::Failed));
        self.amount.saturating_sub(committed).max(0)
    }

    fn has_pending(&self) -> bool {
        self.captures
            .iter()
            .chain(self.cancels.iter())
            .any(|o| o.state == OpState::Pending)
    }

    /// Charge state (docs/digital-river.md §2.2). `capturable` until fully captured/cancelled;
    /// `processing` while pending operations cover all of the rest (DR's "Payment reauthorizations" page shows a
    /// charge in `processing` during a full pending capture).
    pub(crate) fn state(&self) -> &'static str {
        if let Some(state) = self.fixed_state {
            return state;
        }
        let captured = self.captured();
        let cancelled = self.cancelled();
        if captured.saturating_add(cancelled) >= self.amount {
            if captured > 0 {
                "complete"
            } else {
                "cancelled"
            }
        } else if self.open_amount() == 0 && self.has_pending() {
            "processing"
        } else {
            "capturable"
        }
    }

    /// Whether no more captures or cancels can happen.
    pub(crate) fn is_terminal(&self) -> bool {
        matches!(self.state(), "complete" | "cancelled" | "failed")
    }

    /// Finds an operation by id.
    pub(crate) fn op_mut(&mut self, kind: OpKind, id: &str) -> Option<&mut Op> {
        let ops = match kind {
            OpKind::Capture => &mut self.captures,
            OpKind::Cancel => &mut self.cancels,
        };
        ops.iter_mut().find(|o| o.id == id)
    }
}

/// A line item.
#[derive(Debug, Clone)]
pub(crate) struct Item {
    /// Numeric id.
    pub id: String,
    /// SKU id.
    pub sku_id: String,
    /// `productDetails.name`.
    pub product_name: String,
    /// Units ordered.
    pub quantity: i64,
    /// Line amount for all units (DR `items[].amount`).
    pub amount: i64,
    /// Line tax.
    pub tax: i64,
    /// Line regulatory fees (`fees.amount`).
    pub fees: i64,
    /// Line duties (`duties.amount`).
    pub duties: i64,
    /// `productDetails` beyond `id` and `name`, echoed.
    pub product_details: Option<Map<String, Value>>,
    /// Optional tax rate, echoed as given.
    pub tax_rate: Option<Value>,
    /// Item metadata, echoed.
    pub metadata: Option<Value>,
    /// This line's share of the order total (amount + tax + its part of shipping).
    pub share: i64,
    /// Units fulfilled so far.
    pub fulfilled: i64,
    /// Units cancelled so far.
    pub cancelled: i64,
    /// Share already assigned to fulfilled or cancelled units.
    pub allocated: i64,
    /// `stateTransitions`.
    pub transitions: Vec<(String, DateTime<Utc>)>,
}

impl Item {
    /// Units neither fulfilled nor cancelled.
    pub(crate) fn remaining(&self) -> i64 {
        // why: fulfilled + cancelled never exceed quantity (fulfillments.rs checks).
        self.quantity
            .saturating_sub(self.fulfilled)
            .saturating_sub(self.cancelled)
    }

    /// DR item state: `created` until every unit is done, then `fulfilled`
    /// (some fulfilled) or `cancelled` (all cancelled).
    pub(crate) fn state(&self) -> &'static str {
        if self.remaining() > 0 {
            "created"
        } else if self.fulfilled > 0 {
            "fulfilled"
        } else {
            "cancelled"
        }
    }
}

/// Who coordinates fulfillment (DR's "Capturing and cancelling charges" page).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FulfillmentModel {
    /// Third-party coordinated: no shipment ids needed.
    ThirdParty,
    /// DR-coordinated distributed model: `shipmentId` and `shipmentItemId` required.
    Distributed,
}

/// An order.
#[derive(Debug, Clone)]
pub(crate) struct Order {
    /// Numeric id.
    pub id: String,
    /// Caller's id.
    pub upstream_id: Option<String>,
    /// Created.
    pub created: DateTime<Utc>,
    /// Last change.
    pub updated: DateTime<Utc>,
    /// ISO currency.
    pub currency: String,
    /// Minor-unit exponent of `currency`.
    pub exp: u32,
    /// Customer email.
    pub email: Option<String>,
    /// `shipTo`, echoed.
    pub ship_to: Option<Value>,
    /// `billTo`, echoed; also the owner of the order's sources.
    pub bill_to: Option<Value>,
    /// Line items.
    pub items: Vec<Item>,
    /// Shipping amount.
    pub shipping: i64,
    /// Shipping tax.
    pub shipping_tax: i64,
    /// Charges in `payment.charges[]` order.
    pub charges: Vec<Charge>,
    /// Fulfillment model.
    pub model: FulfillmentModel,
    /// Risk-averse account (DR's "Payment reauthorizations" page).
    pub risk_averse: bool,
    /// Authorization forced expired.
    pub auth_expired: bool,
    /// When the authorization expires on the sandbox clock.
    pub auth_expires_at: Option<DateTime<Utc>>,
    /// Whether DR secures a new authorization when a risk-averse capture finds the old
    /// one expired (DR's "Payment reauthorizations" page, second outcome).
    pub reauth_succeeds: bool,
    /// Settle captures as failed.
    pub fail_captures: bool,
    /// Settle cancels as failed.
    pub fail_cancels: bool,
    /// Order state.
    pub state: String,
    /// State before a dispute (restored on resolution, DR's "Disputes and chargebacks" page).
    pub pre_dispute_state: Option<String>,
    /// `stateTransitions`.
    pub transitions: Vec<(String, DateTime<Utc>)>,
    /// `fraudState`: `passed`, `review_opened` (in review, or during a dispute) or `blocked`.
    pub fraud_state: String,
    /// Fraud state before a dispute (restored on resolution).
    pub pre_dispute_fraud_state: Option<String>,
    /// `fraudStateTransitions`.
    pub fraud_transitions: Vec<(String, DateTime<Utc>)>,
    /// Amount charged back (granted chargebacks), off `availableToRefundAmount`.
    pub charged_back: i64,
    /// Key mode at creation.
    pub live_mode: bool,
    /// Checkout id.
    pub checkout_id: String,
    /// Order metadata, echoed.
    pub metadata: Option<Value>,
}

/// Sets `name` in a transitions list (replacing an earlier time for the same state).
pub(crate) fn set_transition(
    list: &mut Vec<(String, DateTime<Utc>)>,
    name: &str,
    at: DateTime<Utc>,
) {
    if let Some(entry) = list.iter_mut().find(|(n, _)| n == name) {
        entry.1 = at;
    } else {
        list.push((name.to_owned(), at));
    }
}

fn transitions_json(list: &[(String, DateTime<Utc>)]) -> Value {
    let mut m = Map::new();
    for (name, at) in list {
        m.insert(name.clone(), json!(fmt_secs(*at)));
    }
    Value::Object(m)
}

/// Where a charge is rendered: events leave out `failureMessage` (DR's "Capturing and cancelling charges" page: it is
/// "visible only via GET /charges/{id}").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum View {
    /// API response.
    Api,
    /// Event payload.
    Event,
}

impl Order {
    /// Total of all lines, shipping and taxes.
    pub(crate) fn subtotal(&self) -> i64 {
        self.items
            .iter()
            .fold(self.shipping, |sum, i| sum.saturating_add(i.amount))
    }

    /// Item taxes plus shipping tax.
    pub(crate) fn total_tax(&self) -> i64 {
        self.items
            .iter()
            .fold(self.shipping_tax, |sum, i| sum.saturating_add(i.tax))
    }

    /// `totalFees`.
    pub(crate) fn total_fees(&self) -> i64 {
        self.items
            .iter()
            .fold(0, |sum, i| sum.saturating_add(i.fees))
    }

    /// `totalDuty`.
    pub(crate) fn total_duty(&self) -> i64 {
        self.items
            .iter()
            .fold(0, |sum, i| sum.saturating_add(i.duties))
    }

    /// `totalAmount`: subtotal (lines and shipping), taxes, fees and duties.
    pub(crate) fn total(&self) -> i64 {
        self.subtotal()
            .saturating_add(self.total_tax())
            .saturating_add(self.total_fees())
            .saturating_add(self.total_duty())
    }

    /// Completed captures over all charges.
    pub(crate) fn captured(&self) -> i64 {
        self.charges
            .iter()
            .fold(0i64, |sum, c| sum.saturating_add(c.captured()))
    }

    /// Completed cancels over all charges.
    pub(crate) fn cancelled(&self) -> i64 {
        self.charges
            .iter()
            .fold(0i64, |sum, c| sum.saturating_add(c.cancelled()))
    }

    /// Whether the authorization has expired at `now`.
    pub(crate) fn auth_is_expired(&self, now: DateTime<Utc>) -> bool {
        self.auth_expired || self.auth_expires_at.is_some_and(|t| now >= t)
    }

    fn m(&self, minor: i64) -> Value {
        money::to_json(minor, self.exp)
    }

    /// The charge JSON (`GET /charges/{id}`, `payment.charges[]`, charge events).
    pub(crate) fn charge_json(&self, charge: &Charge, view: View) -> Value {
        let op_json = |op: &Op| {
            let mut m = Map::new();
            m.insert("id".into(), json!(op.id));
            m.insert("createdTime".into(), json!(fmt_secs(op.created)));
            m.insert("updatedTime".into(), json!(fmt_secs(op.updated)));
            m.insert("amount".into(), self.m(op.amount));
            m.insert("state".into(), json!(op.state.as_str()));
            if op.state == OpState::Failed {
                m.insert("failureCode".into(), json!("failed-request"));
                if view == View::Api {
                    m.insert(
                        "failureMessage".into(),
                        json!("Failed to operate on charge"),
                    );
                }
            }
            if !op.fulfillment_id.is_empty() {
                m.insert("fulfillmentId".into(), json!(op.fulfillment_id));
            }
            Value::Object(m)
        };
        let mut m = Map::new();
        m.insert("id".into(), json!(charge.id));
        m.insert("createdTime".into(), json!(fmt_secs(charge.created)));
        m.insert("currency".into(), json!(self.currency));
        m.insert("amount".into(), self.m(charge.amount));
        m.insert("state".into(), json!(charge.state()));
        m.insert("orderId".into(), json!(self.id));
        m.insert("sourceId".into(), json!(charge.source_id));
        m.insert("paymentSessionId".into(), json!(charge.payment_session_id));
        // why: `captured` is true once any capture was attempted (the "Capturing and cancelling charges" page's failed-capture
        // event shows `captured: true` beside a failed capture).
        m.insert("captured".into(), json!(!charge.captures.is_empty()));
        if !charge.captures.is_empty() {
            m.insert(
                "captures".into(),
                Value::Array(charge.captures.iter().map(op_json).collect()),
            );
        }
        if !charge.cancels.is_empty() {
            m.insert(
                "cancels".into(),
                Value::Array(charge.cancels.iter().map(op_json).collect()),
            );
        }
        m.insert("refunded".into(), json!(charge.refunded() > 0));
        if !charge.refunds.is_empty() {
            m.insert(
                "refunds".into(),
                Value::Array(charge.refunds.iter().map(|r| self.refund_json(r)).collect()),
            );
        }
        m.insert("type".into(), json!("customer_initiated"));
        m.insert("liveMode".into(), json!(self.live_mode));
        Value::Object(m)
    }

    /// A refund as the Charges API reference shows one (`items` as a flat list: the
    /// page's array of arrays looks like an artefact of its generator, and the gateway
    /// reads both).
    fn refund_json(&self, r: &Refund) -> Value {
        let mut m = Map::new();
        m.insert("id".into(), json!(r.id));
        m.insert("createdTime".into(), json!(fmt_secs(r.created)));
        m.insert("orderId".into(), json!(self.id));
        m.insert("invoiceId".into(), json!(r.invoice_id));
        m.insert("currency".into(), json!(self.currency));
        if let Some(kind) = &r.kind {
            m.insert("type".into(), json!(kind));
        }
        m.insert("amount".into(), self.m(r.amount));
        m.insert("refundedAmount".into(), self.m(r.refunded()));
        if !r.items.is_empty() {
            let items: Vec<Value> = r
                .items
                .iter()
                .map(|i| {
                    let mut im = Map::new();
                    if let Some(kind) = &i.kind {
                        im.insert("type".into(), json!(kind));
                    }
                    if let Some(sku) = &i.sku_id {
                        im.insert("skuId".into(), json!(sku));
                    }
                    if let Some(item) = &i.item_id {
                        im.insert("itemId".into(), json!(item));
                    }
                    im.insert("quantity".into(), json!(i.quantity));
                    im.insert("amount".into(), self.m(i.amount));
                    Value::Object(im)
                })
                .collect();
            m.insert("items".into(), Value::Array(items));
        }
        if let Some(reason) = &r.reason {
            m.insert("reason".into(), json!(reason));
        }
        if let Some(reason) = &r.failure_reason {
            m.insert("failureReason".into(), json!(reason));
        }
        m.insert("state".into(), json!(r.state.as_str()));
        m.insert("liveMode".into(), json!(self.live_mode));
        Value::Object(m)
    }

    /// Completed refunds over all charges.
    pub(crate) fn refunded(&self) -> i64 {
        self.charges.iter().map(Charge::refunded).sum()
    }

    /// `availableToRefundAmount`: captured, less what was refunded or charged back.
    pub(crate) fn available_to_refund(&self) -> i64 {
        (self.captured() - self.refunded() - self.charged_back).max(0)
    }

    /// `owner` of the order's sources: the payer of `billTo` (name split at the first space).
    fn owner_json(&self) -> Option<Value> {
        let bill_to = self.bill_to.as_ref()?.as_object()?;
        let mut m = Map::new();
        if let Some(name) = bill_to.get("name").and_then(Value::as_str) {
            let (first, last) = name.split_once(' ').unwrap_or((name, ""));
            m.insert("firstName".into(), json!(first));
            m.insert("lastName".into(), json!(last));
        }
        for key in ["email", "phone", "organization", "address"] {
            if let Some(v) = bill_to.get(key) {
                m.insert(key.into(), v.clone());
            }
        }
        Some(Value::Object(m))
    }

    /// A source as `payment.sources[]` shows it; `full` adds what only
    /// `GET /sources/{id}` returns (creation time, currency, client secret, mode).
    pub(crate) fn source_json(&self, charge: &Charge, full: bool) -> Value {
        let mut m = Map::new();
        m.insert("id".into(), json!(charge.source_id));
        if full {
            m.insert("createdTime".into(), json!(fmt_secs(charge.created)));
        }
        m.insert("type".into(), json!(charge.kind.as_str()));
        if full {
            m.insert("currency".into(), json!(self.currency));
        }
        m.insert("amount".into(), self.m(charge.amount));
        m.insert("reusable".into(), json!(false));
        m.insert("state".into(), json!("consumed"));
        if let Some(owner) = self.owner_json() {
            m.insert("owner".into(), owner);
        }
        if full {
            m.insert("clientSecret".into(), json!(charge.client_secret));
        }
        match (&charge.kind, &charge.card) {
            (SourceKind::CreditCard, card) => {
                let card = card.clone().unwrap_or_default();
                let mut c = Map::new();
                c.insert("brand".into(), json!(card.brand));
                c.insert("expirationMonth".into(), json!(card.expiration_month));
                c.insert("expirationYear".into(), json!(card.expiration_year));
                c.insert("lastFourDigits".into(), json!(card.last_four_digits));
                if let Some(f) = &card.funding_source {
                    c.insert("fundingSource".into(), json!(f));
                }
                m.insert("creditCard".into(), Value::Object(c));
                m.insert("paymentSessionId".into(), json!(charge.payment_session_id));
            }
            (SourceKind::CustomerCredit, _) => {
                m.insert("customerCredit".into(), json!({}));
            }
        }
        if full {
            m.insert("liveMode".into(), json!(self.live_mode));
        }
        Value::Object(m)
    }

    fn item_json(&self, item: &Item) -> Value {
        let mut tax = Map::new();
        if let Some(rate) = &item.tax_rate {
            tax.insert("rate".into(), rate.clone());
        }
        tax.insert("amount".into(), self.m(item.tax));
        let mut m = Map::new();
        m.insert("id".into(), json!(item.id));
        m.insert("skuId".into(), json!(item.sku_id));
        let mut details = Map::new();
        details.insert("id".into(), json!(item.sku_id));
        details.insert("name".into(), json!(item.product_name));
        if let Some(extra) = &item.product_details {
            for (k, v) in extra {
                details.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
        m.insert("productDetails".into(), Value::Object(details));
        m.insert("amount".into(), self.m(item.amount));
        m.insert("quantity".into(), json!(item.quantity));
        if let Some(md) = &item.metadata {
            m.insert("metadata".into(), md.clone());
        }
        m.insert("state".into(), json!(item.state()));
        m.insert(
            "stateTransitions".into(),
            transitions_json(&item.transitions),
        );
        m.insert("tax".into(), Value::Object(tax));
        m.insert("importerTax".into(), json!({"amount": self.m(0)}));
        m.insert("duties".into(), json!({"amount": self.m(item.duties)}));
        m.insert(
            "fees".into(),
            json!({"amount": self.m(item.fees), "taxAmount": self.m(0)}),
        );
        Value::Object(m)
    }

    /// The order JSON. `with_payment: false` gives a fulfillment's `orderDetails`
    /// ("orderDetails doesn't contain the order's payment", DR's "Capturing and cancelling charges" page).
    pub(crate) fn to_json(&self, with_payment: bool, view: View) -> Value {
        let captured = self.captured();
        let mut m = Map::new();
        m.insert("id".into(), json!(self.id));
        if let Some(u) = &self.upstream_id {
            m.insert("upstreamId".into(), json!(u));
        }
        m.insert("createdTime".into(), json!(fmt_secs(self.created)));
        m.insert("updatedTime".into(), json!(fmt_secs(self.updated)));
        m.insert("currency".into(), json!(self.currency));
        if let Some(e) = &self.email {
            m.insert("email".into(), json!(e));
        }
        if let Some(s) = &self.ship_to {
            m.insert("shipTo".into(), s.clone());
        }
        if let Some(b) = &self.bill_to {
            m.insert("billTo".into(), b.clone());
        }
        m.insert("totalAmount".into(), self.m(self.total()));
        m.insert("subtotal".into(), self.m(self.subtotal()));
        m.insert("totalFees".into(), self.m(self.total_fees()));
        m.insert("totalTax".into(), self.m(self.total_tax()));
        m.insert("totalImporterTax".into(), self.m(0));
        m.insert("totalDuty".into(), self.m(self.total_duty()));
        m.insert("totalDiscount".into(), self.m(0));
        m.insert("totalShipping".into(), self.m(self.shipping));
        m.insert(
            "items".into(),
            Value::Array(self.items.iter().map(|i| self.item_json(i)).collect()),
        );
        if self.shipping > 0 || self.shipping_tax > 0 {
            m.insert(
                "shippingChoice".into(),
                json!({"amount": self.m(self.shipping), "taxAmount": self.m(self.shipping_tax), "description": "standard"}),
            );
        }
        m.insert("locale".into(), json!("en_US"));
        m.insert("customerType".into(), json!("individual"));
        m.insert("liveMode".into(), json!(self.live_mode));
        if with_payment {
            m.insert(
                "payment".into(),
                json!({
                    "charges": self.charges.iter().map(|c| self.charge_json(c, view)).collect::<Vec<_>>(),
                    "sources": self.charges.iter().map(|c| self.source_json(c, false)).collect::<Vec<_>>(),
                }),
            );
        }
        m.insert("state".into(), json!(self.state));
        m.insert(
            "stateTransitions".into(),
            transitions_json(&self.transitions),
        );
        m.insert("fraudState".into(), json!(self.fraud_state));
        m.insert(
            "fraudStateTransitions".into(),
            transitions_json(&self.fraud_transitions),
        );
        m.insert("requestToBeForgotten".into(), json!(false));
        m.insert("capturedAmount".into(), self.m(captured));
        m.insert("cancelledAmount".into(), self.m(self.cancelled()));
        m.insert("refundedAmount".into(), self.m(self.refunded()));
        m.insert(
            "availableToRefundAmount".into(),
            self.m(self.available_to_refund()),
        );
        if let Some(md) = &self.metadata {
            m.insert("metadata".into(), md.clone());
        }
        m.insert("checkoutId".into(), json!(self.checkout_id));
        Value::Object(m)
    }
}

/// How an order is laid out, by the API version of the request (`digitalriver-version`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OrderShape {
    /// `payment.charges[]` and `payment.sources[]` (2021-03-23 and later).
    Current,
    /// Top-level `charges[]`, `sources[]` and `creditAmount`, no `payment`: versions up to
    /// 2021-02-23 (DR's "Applying store credit (legacy)" page).
    Legacy,
}

impl OrderShape {
    /// The last API version with the legacy shape.
    const LAST_LEGACY_VERSION: &'static str = "2021-02-23";

    /// The shape for a `digitalriver-version` header value; no (or an unreadable)
    /// version means the account's default, which the sandbox takes to be current.
    pub(crate) fn for_version(version: Option<&str>) -> Self {
        let dated = version.map(str::trim).filter(|v| {
            v.len() == 10
                && v.bytes().enumerate().all(|(i, b)| {
                    if i == 4 || i == 7 {
                        b == b'-'
                    } else {
                        b.is_ascii_digit()
                    }
                })
        });
        match dated {
            // why: ISO dates compare correctly as text.
            Some(v) if v <= Self::LAST_LEGACY_VERSION => Self::Legacy,
            _ => Self::Current,
        }
    }
}

impl Order {
    /// The order as `GET /orders` answers it in `shape`.
    pub(crate) fn to_json_shaped(&self, shape: OrderShape) -> Value {
        let mut json = self.to_json(true, View::Api);
        if shape == OrderShape::Current {
            return json;
        }
        if let Some(m) = json.as_object_mut() {
            let payment = m.remove("payment");
            let credit: i64 = self
                .charges
                .iter()
                .filter(|c| c.kind == SourceKind::CustomerCredit)
                .map(|c| c.amount)
                .sum();
            if credit > 0 {
                m.insert("creditAmount".into(), self.m(credit));
            }
            if let Some(Value::Object(mut p)) = payment {
                for key in ["sources", "charges"] {
                    if let Some(v) = p.remove(key) {
                        m.insert(key.into(), v);
                    }
                }
            }
        }
        json
    }
}

/// One line of a fulfillment.
#[derive(Debug, Clone)]
pub(crate) struct FulfillmentItem {
    /// Order line item id.
    pub item_id: String,
    /// Filled in from the order line (read-only in DR's SDK).
    pub sku_id: String,
    /// Units fulfilled.
    pub quantity: i64,
    /// Units cancelled.
    pub cancel_quantity: i64,
    /// Distributed model shipment item id.
    pub shipment_item_id: Option<String>,
}

/// A fulfillment.
#[derive(Debug, Clone)]
pub(crate) struct Fulfillment {
    /// `ful_` + UUID.
    pub id: String,
    /// Created.
    pub created: DateTime<Utc>,
    /// Order id.
    pub order_id: String,
    /// Lines.
    pub items: Vec<FulfillmentItem>,
    /// Shipment id.
    pub shipment_id: Option<String>,
    /// Carrier.
    pub tracking_company: Option<String>,
    /// Tracking number.
    pub tracking_number: Option<String>,
    /// Tracking URL.
    pub tracking_url: Option<String>,
    /// Metadata (string / bool / int values).
    pub metadata: Option<Value>,
    /// Key mode.
    pub live_mode: bool,
    /// Ids of the captures and cancels this fulfillment caused.
    pub charge_operation_ids: Vec<String>,
}

impl Fulfillment {
    /// The fulfillment JSON; `order_details` is added on GET and in `fulfillment.created`.
    pub(crate) fn to_json(&self, order_details: Option<Value>) -> Value {
        let mut m = Map::new();
        m.insert("id".into(), json!(self.id));
        m.insert("createdTime".into(), json!(fmt_secs(self.created)));
        let items: Vec<Value> = self
            .items
            .iter()
            .map(|i| {
                let mut im = Map::new();
                im.insert("quantity".into(), json!(i.quantity));
                im.insert("cancelQuantity".into(), json!(i.cancel_quantity));
                im.insert("skuId".into(), json!(i.sku_id));
                im.insert("itemId".into(), json!(i.item_id));
                if let Some(s) = &i.shipment_item_id {
                    im.insert("shipmentItemId".into(), json!(s));
                }
                Value::Object(im)
            })
            .collect();
        m.insert("items".into(), Value::Array(items));
        m.insert("orderId".into(), json!(self.order_id));
        for (key, value) in [
            ("shipmentId", &self.shipment_id),
            ("trackingCompany", &self.tracking_company),
            ("trackingNumber", &self.tracking_number),
            ("trackingUrl", &self.tracking_url),
        ] {
            if let Some(v) = value {
                m.insert(key.into(), json!(v));
            }
        }
        if let Some(md) = &self.metadata {
            m.insert("metadata".into(), md.clone());
        }
        m.insert("liveMode".into(), json!(self.live_mode));
        m.insert(
            "chargeOperationIds".into(),
            json!(self.charge_operation_ids),
        );
        if let Some(od) = order_details {
            m.insert("orderDetails".into(), od);
        }
        Value::Object(m)
    }
}
