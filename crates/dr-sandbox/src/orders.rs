//! Order creation (control surface, `POST /sandbox/orders`), acceptance of orders created
//! in review or pending payment, and disputes.
//!
//! The sandbox has no checkout flow: tests create orders directly, described in DR terms
//! (line amounts for all units, line tax, shipping), in the state to start from, with the
//! account and payment behaviours to simulate (risk mode, expired authorization and
//! whether DR can renew it, failing captures).

use chrono::{DateTime, Duration, Utc};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::clock::parse_time;
use super::error::ApiError;
use super::fulfill::line_shares;
use super::ids::IdGen;
use super::model::{
    set_transition, Card, Charge, FulfillmentModel, Item, Op, OpState, Order, SourceKind, View,
};
use super::money;
use super::state::World;

/// How long a card authorization lasts by default ("typically … capturable for 7 days",
/// docs/digital-river.md §2.2).
pub(crate) const DEFAULT_AUTH_DAYS: i64 = 7;

/// The states an order can be created in, and what DR shows in each (DR's "The order
/// lifecycle" page; where it is silent, the sandbox's choice, marked so).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InitialState {
    /// Charge capturable, fraud review passed: ready to fulfil.
    Accepted,
    /// Charge capturable, "requires further fraud review": `fraudState: review_opened`.
    InReview,
    /// "Fraud review … completed but the payment charge is not yet authorized": the
    /// charge is `pending`.
    PendingPayment,
    /// "Blocked by fraud review": `fraudState: blocked`; the charges `failed` (the
    /// sandbox's choice: DR does not say what becomes of them).
    Blocked,
    /// "Fully cancelled": every unit cancelled, every charge cancelled in full.
    Cancelled,
}

impl InitialState {
    fn parse(text: Option<&str>) -> Result<Self, ApiError> {
        Ok(match text {
            None | Some("accepted") => Self::Accepted,
            Some("in_review") => Self::InReview,
            Some("pending_payment") => Self::PendingPayment,
            Some("blocked") => Self::Blocked,
            Some("cancelled") => Self::Cancelled,
            Some(other) => {
                return Err(ApiError::invalid(
                    "state",
                    format!("An order cannot be created in state '{other}' (accepted, in_review, pending_payment, blocked, cancelled)."),
                ))
            }
        })
    }

    /// DR's `state`.
    fn name(self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::InReview => "in_review",
            Self::PendingPayment => "pending_payment",
            Self::Blocked => "blocked",
            Self::Cancelled => "cancelled",
        }
    }

    /// The event DR emits on entering the state (docs/digital-river.md §3.3).
    fn event(self) -> &'static str {
        match self {
            Self::Accepted => "order.accepted",
            Self::InReview => "order.review_opened",
            Self::PendingPayment => "order.pending_payment",
            Self::Blocked => "order.blocked",
            Self::Cancelled => "order.cancelled",
        }
    }

    /// DR's `fraudState`.
    fn fraud_state(self) -> &'static str {
        match self {
            Self::InReview => "review_opened",
            Self::Blocked => "blocked",
            Self::Accepted | Self::PendingPayment | Self::Cancelled => "passed",
        }
    }

    /// A charge state the order's state imposes.
    fn charge_state(self) -> Option<&'static str> {
        match self {
            Self::PendingPayment => Some("pending"),
            Self::Blocked => Some("failed"),
            Self::Accepted | Self::InReview | Self::Cancelled => None,
        }
    }
}

/// `POST /sandbox/orders` body. Unknown fields are ignored.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CreateOrder {
    id: Option<String>,
    upstream_id: Option<String>,
    currency: Option<String>,
    email: Option<String>,
    ship_to: Option<Value>,
    bill_to: Option<Value>,
    #[serde(default)]
    items: Vec<ItemSpec>,
    shipping: Option<ShippingSpec>,
    charges: Option<Vec<ChargeSpec>>,
    fulfillment_model: Option<String>,
    risk_mode: Option<String>,
    reauthorization: Option<String>,
    state: Option<String>,
    authorization_expired: Option<bool>,
    authorization_expires_at: Option<String>,
    fail_captures: Option<bool>,
    fail_cancels: Option<bool>,
    metadata: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ItemSpec {
    id: Option<String>,
    sku_id: Option<String>,
    product_name: Option<String>,
    quantity: Option<Value>,
    amount: Option<Value>,
    tax: Option<Value>,
    tax_rate: Option<Value>,
    fees: Option<Value>,
    duties: Option<Value>,
    product_details: Option<Map<String, Value>>,
    metadata: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ShippingSpec {
    amount: Option<Value>,
    tax: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ChargeSpec {
    #[serde(rename = "type")]
    kind: Option<String>,
    amount: Option<Value>,
    credit_card: Option<CardSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CardSpec {
    brand: Option<String>,
    last_four_digits: Option<String>,
    expiration_month: Option<u32>,
    expiration_year: Option<u32>,
    funding_source: Option<String>,
}

impl CardSpec {
    /// The card, defaults filled in; only the last four digits, as DR shows a card.
    fn into_card(self) -> Result<Card, ApiError> {
        let default = Card::default();
        let last_four_digits = self.last_four_digits.unwrap_or(default.last_four_digits);
        if last_four_digits.len() != 4 || !last_four_digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ApiError::invalid(
                "charges.creditCard.lastFourDigits",
                "'lastFourDigits' must be four digits.",
            ));
        }
        let expiration_month = self.expiration_month.unwrap_or(default.expiration_month);
        if !(1..=12).contains(&expiration_month) {
            return Err(ApiError::invalid(
                "charges.creditCard.expirationMonth",
                "'expirationMonth' must be 1 to 12.",
            ));
        }
        Ok(Card {
            brand: self.brand.unwrap_or(default.brand),
            last_four_digits,
            expiration_month,
            expiration_year: self.expiration_year.unwrap_or(default.expiration_year),
            funding_source: self.funding_source,
        })
    }
}

fn amount(value: Option<&Value>, exp: u32, parameter: &str) -> Result<i64, ApiError> {
    match value {
        None | Some(Value::Null) => Ok(0),
        Some(v) => money::parse_value(v, exp)
            .map_err(|e| ApiError::invalid(parameter, format!("'{parameter}': {e}."))),
    }
}

/// Reads a positive integer from a JSON number or numeric string.
pub(crate) fn int_value(value: &Value) -> Option<i64> {
    match value {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse::<i64>().ok(),
        _ => None,
    }
}

impl World {
    /// Creates an order in the state the spec names (default `accepted`) and emits that
    /// state's event (`order.accepted`, `order.review_opened`, …).
    pub(crate) fn create_order(
        &mut self,
        spec: CreateOrder,
        live_mode: bool,
    ) -> Result<Value, ApiError> {
        let now = self.clock.now();
        let initial = InitialState::parse(spec.state.as_deref())?;
        let currency = spec
            .currency
            .unwrap_or_else(|| "USD".to_owned())
            .to_ascii_uppercase();
        let exp = money::exponent(&currency);
        if spec.items.is_empty() {
            return Err(ApiError::missing("items"));
        }
        let id = match spec.id.filter(|s| !s.is_empty()) {
            Some(id) if self.orders.contains_key(&id) => {
                return Err(ApiError::conflict(
                    "invalid_parameter",
                    Some("id"),
                    format!("Order '{id}' already exists."),
                ));
            }
            Some(id) => id,
            None => self.ids.numeric(),
        };
        let mut items = Vec::with_capacity(spec.items.len());
        for item in spec.items {
            let quantity = item
                .quantity
                .as_ref()
                .and_then(int_value)
                .filter(|q| *q > 0)
                .ok_or_else(|| {
                    ApiError::invalid("quantity", "'quantity' must be a positive integer.")
                })?;
            if item.amount.is_none() {
                return Err(ApiError::missing("amount"));
            }
            let line_amount = amount(item.amount.as_ref(), exp, "amount")?;
            let tax = amount(item.tax.as_ref(), exp, "tax")?;
            let fees = amount(item.fees.as_ref(), exp, "fees")?;
            let duties = amount(item.duties.as_ref(), exp, "duties")?;
            let item_id = item
                .id
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| self.ids.numeric());
            if items.iter().any(|i: &Item| i.id == item_id) {
                return Err(ApiError::invalid(
                    "items",
                    format!("Duplicate item id '{item_id}'."),
                ));
            }
            let sku_id = item
                .sku_id
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| self.ids.uuid());
            items.push(Item {
                id: item_id,
                product_name: item.product_name.unwrap_or_else(|| "Widget".to_owned()),
                sku_id,
                quantity,
                amount: line_amount,
                tax,
                fees,
                duties,
                product_details: item.product_details,
                tax_rate: item.tax_rate,
                metadata: item.metadata,
                share: 0,
                fulfilled: 0,
                cancelled: 0,
                allocated: 0,
                transitions: vec![("created".to_owned(), now)],
            });
        }
        let (shipping, shipping_tax) = match &spec.shipping {
            Some(s) => (
                amount(s.amount.as_ref(), exp, "shipping.amount")?,
                amount(s.tax.as_ref(), exp, "shipping.tax")?,
            ),
            None => (0, 0),
        };
        // why: every amount of the order is derived from these sums; checking them
        // once here keeps every later sum (captured, open, shares) within i64. A
        // line's fees and duties are charged with it, like its tax.
        let too_large = || ApiError::invalid("amount", "The order total is too large.");
        let charged_with_line = |i: &Item| i.tax.checked_add(i.fees)?.checked_add(i.duties);
        let total = items
            .iter()
            .try_fold(0i64, |sum, i| {
                sum.checked_add(i.amount)?
                    .checked_add(charged_with_line(i)?)
            })
            .and_then(|sum| sum.checked_add(shipping)?.checked_add(shipping_tax))
            .ok_or_else(too_large)?;
        let lines = items
            .iter()
            .map(|i| Some((i.amount, charged_with_line(i)?)))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(too_large)?;
        let shares =
            line_shares(&lines, shipping.saturating_add(shipping_tax)).ok_or_else(too_large)?;
        for (item, share) in items.iter_mut().zip(shares) {
            item.share = share;
        }
        let charges = self.build_charges(spec.charges, total, exp, now)?;
        let model = match spec.fulfillment_model.as_deref() {
            None | Some("third_party") => FulfillmentModel::ThirdParty,
            Some("distributed") => FulfillmentModel::Distributed,
            Some(other) => {
                return Err(ApiError::invalid(
                    "fulfillmentModel",
                    format!("Unknown fulfillment model '{other}'."),
                ))
            }
        };
        let risk_averse = match spec.risk_mode.as_deref() {
            None | Some("tolerant") => false,
            Some("averse") => true,
            Some(other) => {
                return Err(ApiError::invalid(
                    "riskMode",
                    format!("Unknown risk mode '{other}'."),
                ))
            }
        };
        let reauth_succeeds = match spec.reauthorization.as_deref() {
            None | Some("fails") => false,
            Some("succeeds") => true,
            Some(other) => {
                return Err(ApiError::invalid(
                    "reauthorization",
                    format!("Unknown reauthorization outcome '{other}' (succeeds, fails)."),
                ))
            }
        };
        let mut charges = charges;
        for charge in &mut charges {
            charge.fixed_state = initial.charge_state();
        }
        if initial == InitialState::Cancelled {
            cancel_in_full(&mut items, &mut charges, now, &mut self.ids);
        }
        let auth_expires_at: Option<DateTime<Utc>> = match spec.authorization_expires_at.as_deref()
        {
            Some(text) => Some(parse_time(text).ok_or_else(|| {
                ApiError::invalid("authorizationExpiresAt", "Not an RFC 3339 time.")
            })?),
            None => Some(now + Duration::days(DEFAULT_AUTH_DAYS)),
        };
        let order = Order {
            id: id.clone(),
            upstream_id: spec.upstream_id,
            created: now,
            updated: now,
            currency,
            exp,
            email: spec.email,
            ship_to: spec.ship_to,
            bill_to: spec.bill_to,
            items,
            shipping,
            shipping_tax,
            charges,
            model,
            risk_averse,
            auth_expired: spec.authorization_expired.unwrap_or(false),
            auth_expires_at,
            reauth_succeeds,
            fail_captures: spec.fail_captures.unwrap_or(false),
            fail_cancels: spec.fail_cancels.unwrap_or(false),
            state: initial.name().to_owned(),
            pre_dispute_state: None,
            transitions: vec![(initial.name().to_owned(), now)],
            fraud_state: initial.fraud_state().to_owned(),
            pre_dispute_fraud_state: None,
            fraud_transitions: vec![(initial.fraud_state().to_owned(), now)],
            charged_back: 0,
            live_mode,
            checkout_id: self.ids.uuid(),
            metadata: spec.metadata,
        };
        for c in &order.charges {
            self.charge_index.insert(c.id.clone(), id.clone());
            self.source_index.insert(c.source_id.clone(), id.clone());
        }
        let json = order.to_json(true, View::Api);
        let event_object = order.to_json(true, View::Event);
        self.orders.insert(id.clone(), order);
        self.order_seq.push(id);
        self.emit(initial.event(), event_object, None, live_mode);
        Ok(json)
    }

    /// Accepts an order created `in_review` or `pending_payment`: the review passed and
    /// the charge is authorized (capturable), so it can be fulfilled; emits
    /// `order.accepted`.
    pub(crate) fn accept_order(&mut self, order_id: &str, live: bool) -> Result<Value, ApiError> {
        let now = self.clock.now();
        let order = self
            .order_in_mode_mut(order_id, live)
            .ok_or_else(|| order_not_found(order_id))?;
        if !matches!(order.state.as_str(), "in_review" | "pending_payment") {
            return Err(ApiError::conflict(
                "invalid_state",
                Some("orderId"),
                format!(
                    "Order '{order_id}' is {}; only in_review and pending_payment orders can be accepted.",
                    order.state
                ),
            ));
        }
        let previous = std::mem::replace(&mut order.state, "accepted".to_owned());
        set_transition(&mut order.transitions, "accepted", now);
        if order.fraud_state != "passed" {
            order.fraud_state = "passed".to_owned();
            set_transition(&mut order.fraud_transitions, "passed", now);
        }
        for charge in &mut order.charges {
            charge.fixed_state = None;
        }
        order.updated = now;
        let (json, object, live) = (
            order.to_json(true, View::Api),
            order.to_json(true, View::Event),
            order.live_mode,
        );
        self.emit(
            "order.accepted",
            object,
            Some(json!({"state": previous})),
            live,
        );
        Ok(json)
    }

    /// Charges from the spec: default one card charge for the total; a card charge
    /// without amount (or a missing one) takes what store credit leaves (DR's "Applying store credit" page).
    fn build_charges(
        &mut self,
        specs: Option<Vec<ChargeSpec>>,
        total: i64,
        exp: u32,
        now: DateTime<Utc>,
    ) -> Result<Vec<Charge>, ApiError> {
        let specs = specs.unwrap_or_default();
        let mut planned: Vec<(SourceKind, Option<i64>, Option<Card>)> = Vec::new();
        for spec in specs {
            let kind = match spec.kind.as_deref() {
                Some("creditCard") | None => SourceKind::CreditCard,
                Some("customerCredit") => SourceKind::CustomerCredit,
                Some(other) => {
                    return Err(ApiError::invalid(
                        "charges",
                        format!("Unknown charge type '{other}'."),
                    ))
                }
            };
            let amt = match &spec.amount {
                None | Some(Value::Null) => None,
                Some(v) => Some(amount(Some(v), exp, "charges.amount")?),
            };
            if kind == SourceKind::CustomerCredit && amt.is_none() {
                return Err(ApiError::missing("charges.amount"));
            }
            let card = match (kind, spec.credit_card) {
                (SourceKind::CreditCard, card) => {
                    Some(card.map_or_else(|| Ok(Card::default()), CardSpec::into_card)?)
                }
                (SourceKind::CustomerCredit, None) => None,
                (SourceKind::CustomerCredit, Some(_)) => {
                    return Err(ApiError::invalid(
                        "charges.creditCard",
                        "Store credit has no card.",
                    ))
                }
            };
            planned.push((kind, amt, card));
        }
        let fixed = planned
            .iter()
            .filter_map(|(_, a, _)| *a)
            .try_fold(0i64, i64::checked_add)
            .ok_or_else(|| {
                ApiError::invalid("charges", "Charge amounts must add up to the order total.")
            })?;
        let open = planned.iter().filter(|(_, a, _)| a.is_none()).count();
        let rest = total - fixed;
        if rest < 0
            || open > 1
            || (open == 0
                && rest > 0
                && planned.iter().any(|(k, _, _)| *k == SourceKind::CreditCard))
        {
            return Err(ApiError::invalid(
                "charges",
                format!(
                    "Charge amounts must add up to the order total {}.",
                    money::to_text(total, exp)
                ),
            ));
        }
        if open == 0 && rest > 0 {
            planned.push((SourceKind::CreditCard, Some(rest), Some(Card::default())));
        }
        let mut charges = Vec::new();
        for (kind, amt, card) in planned {
            let amt = amt.unwrap_or(rest);
            if amt == 0 {
                continue;
            }
            let source_id = self.ids.uuid();
            let client_secret = format!("{source_id}_{}", self.ids.uuid());
            charges.push(Charge {
                id: self.ids.uuid(),
                created: now,
                amount: amt,
                kind,
                source_id,
                card,
                client_secret,
                payment_session_id: self.ids.uuid(),
                captures: Vec::new(),
                cancels: Vec::new(),
                refunds: Vec::new(),
                fixed_state: None,
            });
        }
        Ok(charges)
    }

    /// Puts an order in dispute (DR's "Disputes and chargebacks" page): `state: dispute`, event `order.dispute`.
    pub(crate) fn open_dispute(&mut self, order_id: &str, live: bool) -> Result<Value, ApiError> {
        let now = self.clock.now();
        let order = self
            .order_in_mode_mut(order_id, live)
            .ok_or_else(|| order_not_found(order_id))?;
        if order.state == "dispute" {
            return Err(ApiError::conflict(
                "invalid_state",
                Some("orderId"),
                format!("Order '{order_id}' is already in dispute."),
            ));
        }
        let previous = std::mem::replace(&mut order.state, "dispute".to_owned());
        order.pre_dispute_state = Some(previous.clone());
        set_transition(&mut order.transitions, "dispute", now);
        // why: the "Disputes and chargebacks" page's order.dispute shows
        // `fraudState: review_opened` with its transition, `passed` restored afterwards.
        let fraud = std::mem::replace(&mut order.fraud_state, "review_opened".to_owned());
        order.pre_dispute_fraud_state = Some(fraud);
        set_transition(&mut order.fraud_transitions, "review_opened", now);
        order.updated = now;
        let (json, object, live) = (
            order.to_json(true, View::Api),
            order.to_json(true, View::Event),
            order.live_mode,
        );
        self.emit(
            "order.dispute",
            object,
            Some(json!({"state": previous})),
            live,
        );
        Ok(json)
    }

    /// Ends a dispute: back to the prior state, event `order.dispute.resolved` (DR's "Disputes and chargebacks" page).
    pub(crate) fn resolve_dispute(
        &mut self,
        order_id: &str,
        live: bool,
    ) -> Result<Value, ApiError> {
        let now = self.clock.now();
        let order = self
            .order_in_mode_mut(order_id, live)
            .ok_or_else(|| order_not_found(order_id))?;
        if order.state != "dispute" {
            return Err(ApiError::conflict(
                "invalid_state",
                Some("orderId"),
                format!("Order '{order_id}' is not in dispute."),
            ));
        }
        let restored = order
            .pre_dispute_state
            .take()
            .unwrap_or_else(|| "accepted".to_owned());
        order.state = restored;
        order.fraud_state = order
            .pre_dispute_fraud_state
            .take()
            .unwrap_or_else(|| "passed".to_owned());
        order.updated = now;
        let (object, live) = (order.to_json(true, View::Event), order.live_mode);
        self.emit(
            "order.dispute.resolved",
            object,
            Some(json!({"state": "dispute"})),
            live,
        );
        // Operations may have settled during the dispute.
        self.progress_order(order_id);
        self.orders
            .get(order_id)
            .map(|o| o.to_json(true, View::Api))
            .ok_or_else(|| order_not_found(order_id))
    }
}

/// Cancels every unit and each charge in full: an order created `cancelled`.
fn cancel_in_full(items: &mut [Item], charges: &mut [Charge], now: DateTime<Utc>, ids: &mut IdGen) {
    for item in items {
        item.cancelled = item.quantity;
        item.allocated = item.share;
        set_transition(&mut item.transitions, "cancelled", now);
    }
    for charge in charges {
        let op = Op {
            id: ids.uuid(),
            created: now,
            updated: now,
            amount: charge.amount,
            state: OpState::Complete,
            fulfillment_id: String::new(),
            will_fail: false,
        };
        charge.cancels.push(op);
    }
}

/// 404 for an unknown order id.
pub(crate) fn order_not_found(id: &str) -> ApiError {
    ApiError::not_found("orderId", format!("Order '{id}' not found."))
}
