//! Money going back to the customer after capture, as the control surface records it:
//! refunds on a charge (made outside any API the sandbox emulates, e.g. in DR's
//! Dashboard) and granted chargebacks (DR's "Disputes and chargebacks" page).
//!
//! Refunds as an API operation (`POST /refunds`) are not emulated.

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::error::ApiError;
use super::model::{OpState, Order, Refund, RefundLine, View};
use super::money;
use super::orders::{int_value, order_not_found};
use super::state::World;

/// `POST /sandbox/charges/{id}/refunds` body.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RecordRefund {
    amount: Option<Value>,
    reason: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    items: Vec<RefundLineSpec>,
    failure_reason: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RefundLineSpec {
    #[serde(rename = "type")]
    kind: Option<String>,
    sku_id: Option<String>,
    item_id: Option<String>,
    quantity: Option<Value>,
    amount: Option<Value>,
}

/// `POST /sandbox/orders/{id}/chargeback` body.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct GrantChargeback {
    amount: Option<Value>,
    #[serde(rename = "type")]
    kind: Option<String>,
    fee: Option<Value>,
}

fn parse_amount(value: Option<&Value>, exp: u32, parameter: &str) -> Result<Option<i64>, ApiError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(v) => money::parse_value(v, exp)
            .map(Some)
            .map_err(|e| ApiError::invalid(parameter, format!("'{parameter}': {e}."))),
    }
}

impl World {
    /// Records a refund on a charge: complete (or failed, with `failureReason`), emitting
    /// `order.charge.refund.complete` / `.failed`. A complete refund raises the order's
    /// `refundedAmount` and lowers `availableToRefundAmount`. Returns the charge.
    pub(crate) fn record_refund(
        &mut self,
        charge_id: &str,
        spec: RecordRefund,
        live: bool,
    ) -> Result<Value, ApiError> {
        let now = self.clock.now();
        let not_found = || ApiError::not_found("id", format!("Charge '{charge_id}' not found."));
        let order_id = self
            .order_of_charge(charge_id, live)
            .map(|o| o.id.clone())
            .ok_or_else(not_found)?;
        let refund_id = format!("ref_{}", self.ids.uuid());
        let invoice_id = self.ids.numeric();
        let order = self
            .order_in_mode_mut(&order_id, live)
            .ok_or_else(not_found)?;
        let exp = order.exp;
        let refundable = order
            .charges
            .iter()
            .find(|c| c.id == charge_id)
            .map(|c| c.captured() - c.refunded())
            .ok_or_else(not_found)?
            .min(order.available_to_refund());
        let amount = parse_amount(spec.amount.as_ref(), exp, "amount")?.unwrap_or(refundable);
        if amount <= 0 || amount > refundable {
            return Err(ApiError::invalid(
                "amount",
                format!(
                    "The refund must be more than 0 and at most the {} left to refund on charge '{charge_id}'.",
                    money::to_text(refundable, exp)
                ),
            ));
        }
        let mut items = Vec::with_capacity(spec.items.len());
        for line in spec.items {
            items.push(RefundLine {
                kind: line.kind,
                sku_id: line.sku_id,
                item_id: line.item_id,
                quantity: line.quantity.as_ref().and_then(int_value).unwrap_or(0),
                amount: parse_amount(line.amount.as_ref(), exp, "items.amount")?.unwrap_or(0),
            });
        }
        let state = if spec.failure_reason.is_some() {
            OpState::Failed
        } else {
            OpState::Complete
        };
        let refund = Refund {
            id: refund_id,
            created: now,
            amount,
            state,
            reason: spec.reason,
            failure_reason: spec.failure_reason,
            kind: spec.kind,
            items,
            invoice_id,
        };
        let Some(charge) = order.charges.iter_mut().find(|c| c.id == charge_id) else {
            return Err(not_found());
        };
        charge.refunds.push(refund);
        order.updated = now;
        let Some(charge) = order.charges.iter().find(|c| c.id == charge_id) else {
            return Err(not_found());
        };
        let (api, event, live_mode) = (
            order.charge_json(charge, View::Api),
            order.charge_json(charge, View::Event),
            order.live_mode,
        );
        self.emit(
            &format!("order.charge.refund.{}", state.as_str()),
            event,
            None,
            live_mode,
        );
        Ok(api)
    }

    /// Grants a chargeback on a disputed order (DR's "Disputes and chargebacks" page): the
    /// dispute ends (`order.dispute.resolved`), a sales transaction of type
    /// `fraud_chargeback` / `non_fraud_chargeback` is created and announced twice
    /// (`sales_transaction.created`, `order.chargeback`), and `availableToRefundAmount`
    /// drops by the amount. Returns `{salesTransaction, order}`.
    pub(crate) fn grant_chargeback(
        &mut self,
        order_id: &str,
        spec: GrantChargeback,
        live: bool,
    ) -> Result<Value, ApiError> {
        let kind = match spec.kind.as_deref() {
            None | Some("fraud_chargeback") => "fraud_chargeback",
            Some("non_fraud_chargeback") => "non_fraud_chargeback",
            Some(other) => {
                return Err(ApiError::invalid(
                    "type",
                    format!(
                    "Unknown chargeback type '{other}' (fraud_chargeback, non_fraud_chargeback)."
                ),
                ))
            }
        };
        let order = self
            .order_in_mode(order_id, live)
            .ok_or_else(|| order_not_found(order_id))?;
        if order.state != "dispute" {
            // The sandbox's choice: DR grants chargebacks at the end of a dispute.
            return Err(ApiError::conflict(
                "invalid_state",
                Some("orderId"),
                format!("Order '{order_id}' is not in dispute."),
            ));
        }
        let exp = order.exp;
        let available = order.available_to_refund();
        let amount = parse_amount(spec.amount.as_ref(), exp, "amount")?.unwrap_or(available);
        if amount <= 0 || amount > available {
            return Err(ApiError::invalid(
                "amount",
                format!(
                    "A chargeback must be more than 0 and at most the {} available to refund.",
                    money::to_text(available, exp)
                ),
            ));
        }
        let fee = parse_amount(spec.fee.as_ref(), exp, "fee")?.unwrap_or(0);
        // The dispute ends first: the order resumes its lifecycle.
        self.resolve_dispute(order_id, live)?;
        let now = self.clock.now();
        let transaction_id = self.ids.sales_transaction();
        let order = self
            .order_in_mode_mut(order_id, live)
            .ok_or_else(|| order_not_found(order_id))?;
        order.charged_back += amount;
        order.updated = now;
        let transaction = sales_transaction(order, &transaction_id, kind, amount, fee, now);
        let (json, live_mode) = (order.to_json(true, View::Api), order.live_mode);
        self.emit(
            "sales_transaction.created",
            transaction.clone(),
            None,
            live_mode,
        );
        self.emit("order.chargeback", transaction.clone(), None, live_mode);
        Ok(json!({"salesTransaction": transaction, "order": json}))
    }
}

/// The chargeback's sales transaction, shaped like the page's `order.chargeback` object.
/// The page's example is a fee-only line (`amount` 0.0, `transactionFees` -15.0); the
/// sandbox puts the amount charged back in `amount`, and pays out its negative less the
/// fee — its own choice, as DR documents no other example.
fn sales_transaction(
    order: &Order,
    id: &str,
    kind: &str,
    amount: i64,
    fee: i64,
    now: DateTime<Utc>,
) -> Value {
    let m = |minor: i64| money::to_json(minor, order.exp);
    let first = order.items.first();
    let country = |contact: &Option<Value>| {
        contact
            .as_ref()
            .and_then(|c| c.pointer("/address/country"))
            .cloned()
            .unwrap_or(Value::Null)
    };
    let mut payout = Map::new();
    payout.insert("currency".into(), json!(order.currency));
    payout.insert("exchangeRate".into(), json!(1.0));
    payout.insert("amount".into(), m(-amount));
    for key in [
        "tax",
        "shipping",
        "regulatoryFees",
        "landedCost",
        "productPrice",
        "digitalRiverShare",
        "distributorShare",
        "shippingDiscount",
        "regulatoryFeeDiscount",
        "remitShipping",
        "storeCredit",
    ] {
        payout.insert(key.into(), m(0));
    }
    payout.insert("transactionFees".into(), m(-fee));
    payout.insert("payoutAmount".into(), m(-(amount + fee)));
    let mut t = Map::new();
    t.insert("id".into(), json!(id));
    t.insert("createdTime".into(), json!(crate::clock::fmt_secs(now)));
    t.insert("updatedTime".into(), json!(crate::clock::fmt_secs(now)));
    t.insert(
        "saleTime".into(),
        json!(crate::clock::fmt_secs(order.created)),
    );
    t.insert("currency".into(), json!(order.currency));
    t.insert("amount".into(), m(amount));
    t.insert("type".into(), json!(kind));
    t.insert("orderId".into(), json!(order.id));
    t.insert("skuId".into(), json!(first.map(|i| i.sku_id.as_str())));
    t.insert("quantity".into(), json!(0));
    t.insert("payoutAmounts".into(), Value::Object(payout));
    t.insert("liveMode".into(), json!(order.live_mode));
    if let Some(upstream) = &order.upstream_id {
        t.insert("orderUpstreamId".into(), json!(upstream));
    }
    t.insert("shipToCountry".into(), country(&order.ship_to));
    t.insert("billToCountry".into(), country(&order.bill_to));
    t.insert(
        "paymentType".into(),
        json!(order.charges.first().map(|c| c.kind.as_str())),
    );
    t.insert("lineItemId".into(), json!(first.map(|i| i.id.as_str())));
    t.insert(
        "orderMetadata".into(),
        order.metadata.clone().unwrap_or_else(|| json!({})),
    );
    t.insert(
        "lineItemMetadata".into(),
        first
            .and_then(|i| i.metadata.clone())
            .unwrap_or_else(|| json!({})),
    );
    Value::Object(t)
}
