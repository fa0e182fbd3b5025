//! DR's JSON objects as the gateway reads and writes them.
//!
//! why: DR adds fields and enum values without notice (docs/digital-river.md §5.4), so every
//! field is optional or defaulted and unknown fields are ignored. Amounts stay
//! [`serde_json::Number`]s: with `arbitrary_precision` they keep DR's decimal text,
//! which [`crate::money`] converts exactly.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Number, Value};

/// A page of a DR list endpoint: `{ "hasMore": bool, "data": [...] }`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ListResponse<T> {
    /// True when more objects follow the last one in `data`.
    pub has_more: bool,
    /// The objects of this page.
    pub data: Vec<T>,
}

/// `POST /fulfillments` body.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CreateFulfillment {
    /// DR order id.
    pub order_id: String,
    /// Fulfilled / cancelled items.
    pub items: Vec<CreateFulfillmentItem>,
    /// Shipment id (distributed model).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shipment_id: Option<String>,
    /// Carrier name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tracking_company: Option<String>,
    /// Carrier tracking number.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tracking_number: Option<String>,
    /// Carrier tracking URL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tracking_url: Option<String>,
    /// Metadata; always carries `requestId` (the gateway's idempotency key).
    #[serde(skip_serializing_if = "Map::is_empty")]
    pub metadata: Map<String, Value>,
}

/// One item of a `POST /fulfillments` body.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CreateFulfillmentItem {
    /// DR line-item id.
    pub item_id: String,
    /// Units fulfilled (sent as an integer; docs/digital-river.md §1.2).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quantity: Option<i64>,
    /// Units cancelled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cancel_quantity: Option<i64>,
    /// Shipment item id (distributed model).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shipment_item_id: Option<String>,
}

/// `POST /fulfillments/{id}` body (tracking update, docs/digital-river.md §1.5).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct UpdateFulfillment {
    /// Carrier name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tracking_company: Option<String>,
    /// Carrier tracking number.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tracking_number: Option<String>,
    /// Carrier tracking URL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tracking_url: Option<String>,
    /// Items the tracking applies to (`[{ "itemId": … }]`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub items: Vec<ItemRef>,
}

/// `{ "itemId": … }`.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ItemRef {
    /// DR line-item id.
    pub item_id: String,
}

/// A DR fulfillment (docs/digital-river.md §1.3).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Fulfillment {
    /// `ful_` + UUID.
    #[serde(deserialize_with = "lenient::string")]
    pub id: String,
    /// RFC 3339 creation time.
    pub created_time: Option<String>,
    /// DR order id.
    #[serde(deserialize_with = "lenient::string")]
    pub order_id: String,
    /// Items with both quantities.
    pub items: Vec<FulfillmentItem>,
    /// Shipment id.
    #[serde(deserialize_with = "lenient::opt_string")]
    pub shipment_id: Option<String>,
    /// Carrier name.
    pub tracking_company: Option<String>,
    /// Carrier tracking number.
    pub tracking_number: Option<String>,
    /// Carrier tracking URL.
    pub tracking_url: Option<String>,
    /// Metadata (values may be strings, booleans or integers).
    pub metadata: Option<Map<String, Value>>,
    /// Live (true) or test mode.
    pub live_mode: bool,
    /// Capture / cancel operation ids.
    pub charge_operation_ids: Vec<String>,
    /// The order minus `payment` (GET and `fulfillment.created`).
    pub order_details: Option<Box<Order>>,
}

/// One item of a fulfillment.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct FulfillmentItem {
    /// DR line-item id.
    #[serde(deserialize_with = "lenient::string")]
    pub item_id: String,
    /// DR SKU id.
    pub sku_id: Option<String>,
    /// Units fulfilled.
    #[serde(deserialize_with = "lenient::int")]
    pub quantity: i64,
    /// Units cancelled.
    #[serde(deserialize_with = "lenient::int")]
    pub cancel_quantity: i64,
    /// Shipment item id.
    #[serde(deserialize_with = "lenient::opt_string")]
    pub shipment_item_id: Option<String>,
}

/// A DR order, reduced to what the gateway reads.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Order {
    /// DR order id.
    #[serde(deserialize_with = "lenient::string")]
    pub id: String,
    /// The merchant's own order id.
    #[serde(deserialize_with = "lenient::opt_string")]
    pub upstream_id: Option<String>,
    /// Order state.
    pub state: Option<String>,
    /// State → RFC 3339 time.
    pub state_transitions: Map<String, Value>,
    /// ISO 4217 currency.
    pub currency: Option<String>,
    /// Order total.
    pub total_amount: Option<Number>,
    /// Items subtotal.
    pub subtotal: Option<Number>,
    /// Total tax.
    pub total_tax: Option<Number>,
    /// Total shipping.
    pub total_shipping: Option<Number>,
    /// Total regulatory fees.
    pub total_fees: Option<Number>,
    /// Total duties.
    pub total_duty: Option<Number>,
    /// Total importer tax.
    pub total_importer_tax: Option<Number>,
    /// Total discount.
    pub total_discount: Option<Number>,
    /// Captured so far.
    pub captured_amount: Option<Number>,
    /// Cancelled so far.
    pub cancelled_amount: Option<Number>,
    /// Refundable now.
    pub available_to_refund_amount: Option<Number>,
    /// Refunded so far.
    pub refunded_amount: Option<Number>,
    /// Recipient.
    pub ship_to: Option<Contact>,
    /// Payer and billing address.
    pub bill_to: Option<Contact>,
    /// Customer email.
    pub email: Option<String>,
    /// Line items.
    pub items: Vec<OrderItem>,
    /// Payment (absent from `orderDetails`, and from orders of API versions up to
    /// 2021-02-23, which carry `charges` and `sources` at the top level).
    pub payment: Option<Payment>,
    /// Charges of the legacy shape (API versions up to 2021-02-23, DR's "Applying store
    /// credit (legacy)" page); read them through [`Order::charges`].
    pub charges: Vec<Charge>,
    /// Sources of the legacy shape; read them through [`Order::sources`].
    pub sources: Vec<Source>,
    /// Order metadata.
    pub metadata: Option<Map<String, Value>>,
    /// Live or test mode.
    pub live_mode: bool,
    /// RFC 3339 creation time.
    pub created_time: Option<String>,
    /// RFC 3339 last update.
    pub updated_time: Option<String>,
    /// Fraud review state.
    pub fraud_state: Option<String>,
    /// Fraud state → RFC 3339 time.
    pub fraud_state_transitions: Map<String, Value>,
}

impl Order {
    /// The order's charges and payment sources, taken out of it. Each comes in either
    /// shape: `payment.charges[]` / `payment.sources[]`, or the top-level `charges[]` /
    /// `sources[]` of API versions up to 2021-02-23 (docs/digital-river.md §7).
    pub fn take_payment(&mut self) -> (Vec<Charge>, Vec<Source>) {
        let payment = self.payment.take().unwrap_or_default();
        let charges = if payment.charges.is_empty() {
            std::mem::take(&mut self.charges)
        } else {
            payment.charges
        };
        let sources = if payment.sources.is_empty() {
            std::mem::take(&mut self.sources)
        } else {
            payment.sources
        };
        (charges, sources)
    }
}

/// `order.payment`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Payment {
    /// The order's charges.
    pub charges: Vec<Charge>,
    /// The sources funding them.
    pub sources: Vec<Source>,
}

/// `order.shipTo` and `order.billTo`: a person, how to reach them, an address.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Contact {
    /// Name.
    pub name: Option<String>,
    /// Email.
    pub email: Option<String>,
    /// Phone.
    pub phone: Option<String>,
    /// Organization.
    pub organization: Option<String>,
    /// Address.
    pub address: Option<Address>,
}

/// A payment source (`GET /sources/{id}`, `payment.sources[]`).
///
/// why: DR also sends `clientSecret`, which lets a browser use the source; it is left
/// out here so it can never reach a caller or a log.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Source {
    /// Source id.
    pub id: String,
    /// RFC 3339 creation time.
    pub created_time: Option<String>,
    /// `creditCard`, `customerCredit`, `payPal`, …
    #[serde(rename = "type")]
    pub source_type: Option<String>,
    /// ISO 4217 currency (absent on an order's sources).
    pub currency: Option<String>,
    /// Amount the source contributes.
    pub amount: Option<Number>,
    /// Saved to a customer.
    pub reusable: bool,
    /// Source state.
    pub state: Option<String>,
    /// Account holder.
    pub owner: Option<Owner>,
    /// Card details, for credit cards.
    pub credit_card: Option<CreditCard>,
    /// Customer id, for saved sources.
    pub customer_id: Option<String>,
    /// Payment session id.
    pub payment_session_id: Option<String>,
    /// Live or test mode.
    pub live_mode: bool,
}

/// `source.owner`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Owner {
    /// Given name.
    pub first_name: Option<String>,
    /// Family name.
    pub last_name: Option<String>,
    /// Email.
    pub email: Option<String>,
    /// Phone.
    pub phone: Option<String>,
    /// Organization.
    pub organization: Option<String>,
    /// Address.
    pub address: Option<Address>,
}

/// `source.creditCard`: never the card number.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct CreditCard {
    /// Brand, e.g. `Visa`.
    pub brand: Option<String>,
    /// Last four digits (text: leading zeros matter).
    #[serde(deserialize_with = "lenient::opt_string")]
    pub last_four_digits: Option<String>,
    /// Expiry month.
    #[serde(deserialize_with = "lenient::int")]
    pub expiration_month: i64,
    /// Expiry year.
    #[serde(deserialize_with = "lenient::int")]
    pub expiration_year: i64,
    /// `credit`, `debit`, `prepaid`, …
    pub funding_source: Option<String>,
}

/// A postal address.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Address {
    /// Line 1.
    pub line1: Option<String>,
    /// Line 2.
    pub line2: Option<String>,
    /// City.
    pub city: Option<String>,
    /// Postal code.
    pub postal_code: Option<String>,
    /// State.
    pub state: Option<String>,
    /// Country.
    pub country: Option<String>,
}

/// `order.items[]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct OrderItem {
    /// DR line-item id.
    #[serde(deserialize_with = "lenient::string")]
    pub id: String,
    /// DR SKU id.
    pub sku_id: Option<String>,
    /// Product details (name).
    pub product_details: Option<ProductDetails>,
    /// Line amount.
    pub amount: Option<Number>,
    /// Units ordered.
    #[serde(deserialize_with = "lenient::int")]
    pub quantity: i64,
    /// Item state.
    pub state: Option<String>,
    /// Shipment item id, when DR sets one.
    #[serde(deserialize_with = "lenient::opt_string")]
    pub shipment_item_id: Option<String>,
    /// Item metadata.
    pub metadata: Option<Map<String, Value>>,
}

/// `items[].productDetails`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ProductDetails {
    /// Product (SKU) id.
    #[serde(deserialize_with = "lenient::opt_string")]
    pub id: Option<String>,
    /// Product name.
    pub name: Option<String>,
    /// Description.
    pub description: Option<String>,
    /// Image URL.
    pub image: Option<String>,
    /// Product page URL.
    pub url: Option<String>,
    /// Country of origin.
    pub country_of_origin: Option<String>,
    /// Weight: a JSON number, kept as its exact text.
    pub weight: Option<Number>,
    /// Unit of the weight.
    pub weight_unit: Option<String>,
    /// Part number.
    #[serde(deserialize_with = "lenient::opt_string")]
    pub part_number: Option<String>,
    /// SKU group id.
    pub sku_group_id: Option<String>,
    /// Product metadata.
    pub metadata: Option<Map<String, Value>>,
}

/// A DR charge (docs/digital-river.md §2.2).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Charge {
    /// Charge id.
    pub id: String,
    /// RFC 3339 creation time.
    pub created_time: Option<String>,
    /// ISO 4217 currency.
    pub currency: Option<String>,
    /// Authorized amount.
    pub amount: Option<Number>,
    /// Charge state.
    pub state: Option<String>,
    /// DR order id.
    #[serde(deserialize_with = "lenient::opt_string")]
    pub order_id: Option<String>,
    /// Payment source id.
    pub source_id: Option<String>,
    /// Payment session id.
    pub payment_session_id: Option<String>,
    /// Charge-level failure code.
    pub failure_code: Option<String>,
    /// Charge-level failure message.
    pub failure_message: Option<String>,
    /// Anything captured.
    pub captured: bool,
    /// Anything refunded.
    pub refunded: bool,
    /// Captures.
    pub captures: Vec<ChargeOperation>,
    /// Cancels.
    pub cancels: Vec<ChargeOperation>,
    /// Refunds.
    pub refunds: Vec<Refund>,
    /// customer_initiated | merchant_initiated | moto.
    #[serde(rename = "type")]
    pub charge_type: Option<String>,
    /// Live or test mode.
    pub live_mode: bool,
}

/// A capture, cancel or refund inside a charge.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ChargeOperation {
    /// Operation id.
    pub id: String,
    /// RFC 3339 creation time.
    pub created_time: Option<String>,
    /// RFC 3339 last update.
    pub updated_time: Option<String>,
    /// Amount.
    pub amount: Option<Number>,
    /// pending | complete | failed | …
    pub state: Option<String>,
    /// Failure code.
    pub failure_code: Option<String>,
    /// Failure message.
    pub failure_message: Option<String>,
    /// Fulfillment that started it (since 2022).
    pub fulfillment_id: Option<String>,
}

/// A refund inside a charge (DR's Charges API reference; not the `/refunds` resource).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Refund {
    /// Refund id (`ref_…`); DR's store-credit examples leave it out.
    pub id: String,
    /// RFC 3339 creation time.
    pub created_time: Option<String>,
    /// RFC 3339 last update.
    pub updated_time: Option<String>,
    /// ISO 4217 currency.
    pub currency: Option<String>,
    /// Amount asked for.
    pub amount: Option<Number>,
    /// Amount refunded so far.
    pub refunded_amount: Option<Number>,
    /// pending | complete | failed | …
    pub state: Option<String>,
    /// Why it was made.
    pub reason: Option<String>,
    /// Why it failed.
    pub failure_reason: Option<String>,
    /// What was refunded (`product`, `shipping`, …).
    #[serde(rename = "type")]
    pub refund_type: Option<String>,
    /// Refunded lines.
    #[serde(deserialize_with = "lenient::flat_list")]
    pub items: Vec<RefundItem>,
    /// Invoice (credit memo) id.
    #[serde(deserialize_with = "lenient::opt_string")]
    pub invoice_id: Option<String>,
}

/// One line of a refund.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct RefundItem {
    /// `product`, `shipping`, …
    #[serde(rename = "type")]
    pub item_type: Option<String>,
    /// SKU id.
    pub sku_id: Option<String>,
    /// Line item id.
    #[serde(deserialize_with = "lenient::opt_string")]
    pub item_id: Option<String>,
    /// Units.
    #[serde(deserialize_with = "lenient::int")]
    pub quantity: i64,
    /// Amount.
    pub amount: Option<Number>,
}

/// A sales transaction (`order.chargeback` / `sales_transaction.created` objects,
/// docs/digital-river.md §2.5).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct SalesTransaction {
    /// Id, e.g. `1117116275_000010_3700100415`.
    #[serde(deserialize_with = "lenient::string")]
    pub id: String,
    /// `fraud_chargeback`, `non_fraud_chargeback`, …
    #[serde(rename = "type")]
    pub transaction_type: Option<String>,
    /// DR order id.
    #[serde(deserialize_with = "lenient::opt_string")]
    pub order_id: Option<String>,
    /// The merchant's order id.
    #[serde(deserialize_with = "lenient::opt_string")]
    pub order_upstream_id: Option<String>,
    /// Line item id.
    #[serde(deserialize_with = "lenient::opt_string")]
    pub line_item_id: Option<String>,
    /// SKU id.
    pub sku_id: Option<String>,
    /// Units.
    #[serde(deserialize_with = "lenient::int")]
    pub quantity: i64,
    /// ISO 4217 currency of `amount`.
    pub currency: Option<String>,
    /// Amount.
    pub amount: Option<Number>,
    /// What DR pays out.
    pub payout_amounts: Option<PayoutAmounts>,
    /// Payment type.
    pub payment_type: Option<String>,
    /// RFC 3339 sale time.
    pub sale_time: Option<String>,
    /// RFC 3339 creation time.
    pub created_time: Option<String>,
    /// Live or test mode.
    pub live_mode: bool,
}

/// `salesTransaction.payoutAmounts` (the fields the gateway reads).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PayoutAmounts {
    /// Payout currency.
    pub currency: Option<String>,
    /// Fees (negative when charged).
    pub transaction_fees: Option<Number>,
    /// Amount paid out (negative when money goes back).
    pub payout_amount: Option<Number>,
}

/// A DR event envelope (docs/digital-river.md §3.2).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Event {
    /// Event id (UUID).
    pub id: String,
    /// Event type.
    #[serde(rename = "type")]
    pub event_type: String,
    /// `data.object` and `data.previousAttributes`.
    pub data: EventData,
    /// Live or test mode.
    pub live_mode: bool,
    /// RFC 3339 with fractional seconds.
    pub created_time: Option<String>,
    /// Webhook ids.
    pub webhook_ids: Vec<String>,
    /// DR API version of the payload.
    pub digitalriver_version: Option<String>,
}

/// `event.data`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct EventData {
    /// The object the event is about.
    pub object: Value,
    /// Attributes before the change, when DR sends them.
    pub previous_attributes: Option<Value>,
}

/// Deserializers that accept what DR really sends, not just what it documents.
pub(crate) mod lenient {
    use serde::{Deserialize, Deserializer};
    use serde_json::Value;

    /// A string, or a number rendered as text (DR examples send ids both ways), or null → "".
    pub(crate) fn string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        Ok(opt_string(d)?.unwrap_or_default())
    }

    /// Like [`string`], but keeps absence.
    pub(crate) fn opt_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        match Option::<Value>::deserialize(d)? {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(Value::Number(n)) => Ok(Some(n.to_string())),
            Some(other) => Err(serde::de::Error::custom(format!(
                "expected a string or number, got {other}"
            ))),
        }
    }

    /// A list of objects, also when DR nests it one level deeper: the Charges API
    /// reference prints a refund's `items` as an array of arrays.
    pub(crate) fn flat_list<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
    where
        D: Deserializer<'de>,
        T: serde::de::DeserializeOwned,
    {
        let values = match Option::<Value>::deserialize(d)? {
            None | Some(Value::Null) => return Ok(Vec::new()),
            Some(Value::Array(values)) => values,
            Some(other) => {
                return Err(serde::de::Error::custom(format!(
                    "expected a list, got {other}"
                )))
            }
        };
        let mut out = Vec::with_capacity(values.len());
        for value in values {
            match value {
                Value::Array(inner) => {
                    for v in inner {
                        out.push(serde_json::from_value(v).map_err(serde::de::Error::custom)?);
                    }
                }
                v => out.push(serde_json::from_value(v).map_err(serde::de::Error::custom)?),
            }
        }
        Ok(out)
    }

    /// An integer, or a numeric string (the DR docs' curl examples quote quantities).
    pub(crate) fn int<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
        match Option::<Value>::deserialize(d)? {
            None | Some(Value::Null) => Ok(0),
            Some(Value::Number(n)) => n
                .as_i64()
                .ok_or_else(|| serde::de::Error::custom(format!("expected an integer, got {n}"))),
            Some(Value::String(s)) => s
                .trim()
                .parse()
                .map_err(|_| serde::de::Error::custom(format!("expected an integer, got {s:?}"))),
            Some(other) => Err(serde::de::Error::custom(format!(
                "expected an integer, got {other}"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fulfillment_from_the_capturing_page_keeps_quantities_and_ignores_unknown_fields() {
        let json = r#"{"id":"ful_14776912-d0ff-4f11-974f-17b0f2830ea2","createdTime":"2022-07-01T17:55:58Z",
          "items":[{"quantity":2,"cancelQuantity":0,"skuId":"b0fd","itemId":"158140150336","newField":1}],
          "orderId":"231388420336","liveMode":false,"somethingNew":{"a":1}}"#;
        let f: Fulfillment = serde_json::from_str(json).unwrap();
        assert_eq!(f.items[0].quantity, 2);
        assert_eq!(f.items[0].item_id, "158140150336");
        assert_eq!(f.order_id, "231388420336");
    }

    #[test]
    fn numeric_ids_and_quoted_quantities_are_accepted() {
        let json = r#"{"id":"ful_1","orderId":250956650336,"items":[{"itemId":225220780336,"quantity":"2"}]}"#;
        let f: Fulfillment = serde_json::from_str(json).unwrap();
        assert_eq!(f.order_id, "250956650336");
        assert_eq!(f.items[0].item_id, "225220780336");
        assert_eq!(f.items[0].quantity, 2);
    }

    #[test]
    fn an_orders_payment_is_taken_from_whichever_shape_holds_it() {
        let ids = |o: &str| {
            let mut order: Order = serde_json::from_str(o).unwrap();
            let (charges, sources) = order.take_payment();
            let charges: Vec<String> = charges.into_iter().map(|c| c.id).collect();
            let sources: Vec<String> = sources.into_iter().map(|s| s.id).collect();
            (charges, sources)
        };
        let current = r#"{"id":"1","payment":{"charges":[{"id":"c1"}],"sources":[{"id":"s1"}]},
            "charges":[{"id":"old"}],"sources":[{"id":"old"}]}"#;
        assert_eq!(ids(current), (vec!["c1".into()], vec!["s1".into()]));
        let up_to_2021_02_23 = r#"{"id":"1","charges":[{"id":"c2"}],"sources":[{"id":"s2"}]}"#;
        assert_eq!(
            ids(up_to_2021_02_23),
            (vec!["c2".into()], vec!["s2".into()])
        );
        let mixed = r#"{"id":"1","payment":{"sources":[{"id":"s3"}]},"charges":[{"id":"c3"}]}"#;
        assert_eq!(ids(mixed), (vec!["c3".into()], vec!["s3".into()]));
    }

    #[test]
    fn amounts_keep_their_decimal_text() {
        let c: Charge = serde_json::from_str(r#"{"id":"c","amount":1180.26}"#).unwrap();
        assert_eq!(c.amount.unwrap().to_string(), "1180.26");
    }

    #[test]
    fn create_body_uses_dr_field_names_and_skips_unused_fields() {
        let body = CreateFulfillment {
            order_id: "1".into(),
            items: vec![CreateFulfillmentItem {
                item_id: "2".into(),
                cancel_quantity: Some(1),
                ..Default::default()
            }],
            tracking_company: Some("UPS".into()),
            ..Default::default()
        };
        let v = serde_json::to_value(&body).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"orderId":"1","items":[{"itemId":"2","cancelQuantity":1}],"trackingCompany":"UPS"})
        );
    }
}
