//! DR wire models → the API's protobuf messages.
//!
//! Conversions take the model by value and move its strings into the message: a
//! model is read to be converted, so copying each string would be an allocation per
//! field for nothing. They are lenient like the models: a missing field becomes the
//! proto default, an unparsable time or amount is logged and left unset rather than
//! failing a whole call over one field DR changed.

use std::collections::HashMap;

use prost_types::Timestamp;
use serde_json::{Number, Value};

use crate::digital_river::models;
use crate::money;
use crate::pb::v1 as pb;

/// RFC 3339 text (with or without fractional seconds) → `Timestamp`.
pub fn timestamp(text: &str) -> Option<Timestamp> {
    match chrono::DateTime::parse_from_rfc3339(text) {
        Ok(t) => Some(Timestamp {
            seconds: t.timestamp(),
            nanos: t.timestamp_subsec_nanos() as i32,
        }),
        Err(e) => {
            tracing::warn!(text = %crate::telemetry::capped(text), error = %e, "DR sent an unparsable time");
            None
        }
    }
}

fn opt_timestamp(text: &Option<String>) -> Option<Timestamp> {
    text.as_deref().and_then(timestamp)
}

/// An optional DR amount in `currency` → `Money`.
pub fn amount(currency: &str, value: &Option<Number>) -> Option<pb::Money> {
    let number = value.as_ref()?;
    // why: with `arbitrary_precision` a number keeps DR's text; read in place (its
    // `Display` writes the same text into a new `String`).
    match money::parse(currency, number.as_str()) {
        Ok(m) => Some(m),
        Err(e) => {
            tracing::warn!(error = %e, "DR sent an amount that is not exact");
            None
        }
    }
}

/// A DR fulfillment.
pub fn fulfillment(f: models::Fulfillment) -> pb::Fulfillment {
    let tracking = if f.tracking_company.is_some()
        || f.tracking_number.is_some()
        || f.tracking_url.is_some()
    {
        Some(pb::Tracking {
            company: f.tracking_company.unwrap_or_default(),
            number: f.tracking_number.unwrap_or_default(),
            url: f.tracking_url.unwrap_or_default(),
        })
    } else {
        None
    };
    pb::Fulfillment {
        id: f.id,
        order_id: f.order_id,
        create_time: opt_timestamp(&f.created_time),
        items: f
            .items
            .into_iter()
            .map(|i| pb::FulfillmentItem {
                item_id: i.item_id,
                sku_id: i.sku_id.unwrap_or_default(),
                quantity: i.quantity,
                cancel_quantity: i.cancel_quantity,
                shipment_item_id: i.shipment_item_id.unwrap_or_default(),
            })
            .collect(),
        shipment_id: f.shipment_id.unwrap_or_default(),
        tracking,
        metadata: metadata(f.metadata),
        live_mode: f.live_mode,
        charge_operation_ids: f.charge_operation_ids,
        order_details: f.order_details.map(|o| order(*o)),
    }
}

/// DR metadata values may be strings, booleans or integers; the API carries text.
fn metadata(map: Option<serde_json::Map<String, Value>>) -> HashMap<String, String> {
    map.into_iter()
        .flatten()
        .map(|(k, v)| {
            let text = match v {
                Value::String(s) => s,
                other => other.to_string(),
            };
            (k, text)
        })
        .collect()
}

/// A postal address.
fn address(a: models::Address) -> pb::Address {
    pb::Address {
        line1: a.line1.unwrap_or_default(),
        line2: a.line2.unwrap_or_default(),
        city: a.city.unwrap_or_default(),
        postal_code: a.postal_code.unwrap_or_default(),
        state: a.state.unwrap_or_default(),
        country: a.country.unwrap_or_default(),
    }
}

/// State name → time, for `stateTransitions` and `fraudStateTransitions`.
fn transitions(map: serde_json::Map<String, Value>) -> HashMap<String, Timestamp> {
    map.into_iter()
        .filter_map(|(state, t)| Some((state, timestamp(t.as_str()?)?)))
        .collect()
}

/// A line item's product details; the weight keeps DR's exact decimal text.
fn product_details(p: models::ProductDetails) -> pb::ProductDetails {
    pb::ProductDetails {
        id: p.id.unwrap_or_default(),
        name: p.name.unwrap_or_default(),
        description: p.description.unwrap_or_default(),
        image: p.image.unwrap_or_default(),
        url: p.url.unwrap_or_default(),
        country_of_origin: p.country_of_origin.unwrap_or_default(),
        weight: p.weight.as_ref().map(Number::to_string).unwrap_or_default(),
        weight_unit: p.weight_unit.unwrap_or_default(),
        part_number: p.part_number.unwrap_or_default(),
        sku_group_id: p.sku_group_id.unwrap_or_default(),
        metadata: metadata(p.metadata),
    }
}

/// A payment source; `fallback_currency` prices it when the source names no currency
/// (an order's sources do not).
pub fn payment_source(src: models::Source, fallback_currency: &str) -> pb::PaymentSource {
    let currency = src.currency.as_deref().unwrap_or(fallback_currency);
    pb::PaymentSource {
        amount: amount(currency, &src.amount),
        id: src.id,
        r#type: src.source_type.unwrap_or_default(),
        state: src.state.unwrap_or_default(),
        reusable: src.reusable,
        credit_card: src.credit_card.map(|c| pb::CreditCard {
            brand: c.brand.unwrap_or_default(),
            last_four_digits: c.last_four_digits.unwrap_or_default(),
            expiration_month: i32::try_from(c.expiration_month).unwrap_or_default(),
            expiration_year: i32::try_from(c.expiration_year).unwrap_or_default(),
            funding_source: c.funding_source.unwrap_or_default(),
        }),
        owner: src.owner.map(|o| pb::SourceOwner {
            first_name: o.first_name.unwrap_or_default(),
            last_name: o.last_name.unwrap_or_default(),
            email: o.email.unwrap_or_default(),
            phone: o.phone.unwrap_or_default(),
            organization: o.organization.unwrap_or_default(),
            address: o.address.map(address),
        }),
        customer_id: src.customer_id.unwrap_or_default(),
        payment_session_id: src.payment_session_id.unwrap_or_default(),
        live_mode: src.live_mode,
        create_time: opt_timestamp(&src.created_time),
    }
}

/// A DR order (items without progress quantities; see `fulfillment_progress`). Each
/// charge gets the source its `sourceId` names among the order's sources.
pub fn order(mut o: models::Order) -> pb::Order {
    let currency = o.currency.take().unwrap_or_default();
    let (charges, sources) = o.take_payment();
    let payment_sources: Vec<pb::PaymentSource> = sources
        .into_iter()
        .map(|s| payment_source(s, &currency))
        .collect();
    let charges = charges
        .into_iter()
        .map(|c| {
            let mut out = charge(c, &currency);
            out.source = payment_sources
                .iter()
                .find(|s| !out.source_id.is_empty() && s.id == out.source_id)
                .cloned();
            out
        })
        .collect();
    let email = o.email;
    pb::Order {
        id: o.id,
        upstream_id: o.upstream_id.unwrap_or_default(),
        state: o.state.unwrap_or_default(),
        state_transitions: transitions(o.state_transitions),
        total_amount: amount(&currency, &o.total_amount),
        subtotal: amount(&currency, &o.subtotal),
        total_tax: amount(&currency, &o.total_tax),
        total_shipping: amount(&currency, &o.total_shipping),
        captured_amount: amount(&currency, &o.captured_amount),
        cancelled_amount: amount(&currency, &o.cancelled_amount),
        available_to_refund_amount: amount(&currency, &o.available_to_refund_amount),
        refunded_amount: amount(&currency, &o.refunded_amount),
        ship_to: o.ship_to.map(|s| pb::ShipTo {
            name: s.name.unwrap_or_default(),
            email: s.email.or_else(|| email.clone()).unwrap_or_default(),
            phone: s.phone.unwrap_or_default(),
            address: s.address.map(address),
        }),
        bill_to: o.bill_to.map(|b| pb::BillTo {
            name: b.name.unwrap_or_default(),
            email: b.email.unwrap_or_default(),
            phone: b.phone.unwrap_or_default(),
            address: b.address.map(address),
            organization: b.organization.unwrap_or_default(),
        }),
        email: email.unwrap_or_default(),
        total_fees: amount(&currency, &o.total_fees),
        total_duty: amount(&currency, &o.total_duty),
        total_importer_tax: amount(&currency, &o.total_importer_tax),
        total_discount: amount(&currency, &o.total_discount),
        payment_sources,
        fraud_state_transitions: transitions(o.fraud_state_transitions),
        metadata: metadata(o.metadata),
        items: o
            .items
            .into_iter()
            .map(|i| pb::OrderItem {
                amount: amount(&currency, &i.amount),
                id: i.id,
                sku_id: i.sku_id.unwrap_or_default(),
                product_name: i
                    .product_details
                    .as_ref()
                    .and_then(|p| p.name.clone())
                    .unwrap_or_default(),
                quantity: i.quantity,
                state: i.state.unwrap_or_default(),
                fulfilled_quantity: 0,
                cancelled_quantity: 0,
                open_quantity: 0,
                shipment_item_id: i.shipment_item_id.unwrap_or_default(),
                metadata: metadata(i.metadata),
                product_details: i.product_details.map(product_details),
            })
            .collect(),
        charges,
        live_mode: o.live_mode,
        create_time: opt_timestamp(&o.created_time),
        update_time: opt_timestamp(&o.updated_time),
        fraud_state: o.fraud_state.unwrap_or_default(),
        currency_code: currency,
    }
}

/// A DR charge; `fallback_currency` is used when the charge itself names none.
pub fn charge(c: models::Charge, fallback_currency: &str) -> pb::Charge {
    let currency = c.currency.as_deref().unwrap_or(fallback_currency);
    let ops = |list: Vec<models::ChargeOperation>| {
        list.into_iter()
            .map(|op| charge_operation(op, currency))
            .collect()
    };
    pb::Charge {
        id: c.id,
        order_id: c.order_id.unwrap_or_default(),
        source_id: c.source_id.unwrap_or_default(),
        state: c.state.unwrap_or_default(),
        amount: amount(currency, &c.amount),
        captured: c.captured,
        refunded: c.refunded,
        captures: ops(c.captures),
        cancels: ops(c.cancels),
        refunds: c.refunds.into_iter().map(|r| refund(r, currency)).collect(),
        failure_code: c.failure_code.unwrap_or_default(),
        failure_message: c.failure_message.unwrap_or_default(),
        r#type: c.charge_type.unwrap_or_default(),
        payment_session_id: c.payment_session_id.unwrap_or_default(),
        live_mode: c.live_mode,
        create_time: opt_timestamp(&c.created_time),
        source: None,
    }
}

/// A refund of a charge: a `ChargeOperation` with its refund-only fields.
pub fn refund(r: models::Refund, fallback_currency: &str) -> pb::ChargeOperation {
    let currency = r.currency.as_deref().unwrap_or(fallback_currency);
    pb::ChargeOperation {
        amount: amount(currency, &r.amount),
        id: r.id,
        state: r.state.unwrap_or_default(),
        failure_code: String::new(),
        failure_message: String::new(),
        fulfillment_id: String::new(),
        create_time: opt_timestamp(&r.created_time),
        update_time: opt_timestamp(&r.updated_time),
        refund: Some(pb::RefundDetails {
            refunded_amount: amount(currency, &r.refunded_amount),
            reason: r.reason.unwrap_or_default(),
            failure_reason: r.failure_reason.unwrap_or_default(),
            r#type: r.refund_type.unwrap_or_default(),
            items: r
                .items
                .into_iter()
                .map(|i| pb::RefundItem {
                    amount: amount(currency, &i.amount),
                    r#type: i.item_type.unwrap_or_default(),
                    sku_id: i.sku_id.unwrap_or_default(),
                    item_id: i.item_id.unwrap_or_default(),
                    quantity: i.quantity,
                })
                .collect(),
            invoice_id: r.invoice_id.unwrap_or_default(),
        }),
    }
}

/// A sales transaction; payout figures are in the payout currency.
pub fn sales_transaction(t: models::SalesTransaction) -> pb::SalesTransaction {
    let currency = t.currency.as_deref().unwrap_or_default();
    let payout = t.payout_amounts.as_ref();
    let payout_currency = payout
        .and_then(|p| p.currency.as_deref())
        .unwrap_or(currency);
    pb::SalesTransaction {
        amount: amount(currency, &t.amount),
        payout_amount: payout.and_then(|p| amount(payout_currency, &p.payout_amount)),
        transaction_fees: payout.and_then(|p| amount(payout_currency, &p.transaction_fees)),
        id: t.id,
        r#type: t.transaction_type.unwrap_or_default(),
        order_id: t.order_id.unwrap_or_default(),
        order_upstream_id: t.order_upstream_id.unwrap_or_default(),
        line_item_id: t.line_item_id.unwrap_or_default(),
        sku_id: t.sku_id.unwrap_or_default(),
        quantity: t.quantity,
        payment_type: t.payment_type.unwrap_or_default(),
        sale_time: opt_timestamp(&t.sale_time),
        create_time: opt_timestamp(&t.created_time),
        live_mode: t.live_mode,
    }
}

/// A capture or cancel.
pub fn charge_operation(op: models::ChargeOperation, currency: &str) -> pb::ChargeOperation {
    pb::ChargeOperation {
        amount: amount(currency, &op.amount),
        id: op.id,
        state: op.state.unwrap_or_default(),
        failure_code: op.failure_code.unwrap_or_default(),
        failure_message: op.failure_message.unwrap_or_default(),
        fulfillment_id: op.fulfillment_id.unwrap_or_default(),
        create_time: opt_timestamp(&op.created_time),
        update_time: opt_timestamp(&op.updated_time),
        refund: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charge_from_the_charges_reference_page_keeps_exact_amounts_and_operations() {
        let json = r#"{"id":"a68","createdTime":"2025-05-09T05:15:57.968Z","currency":"USD","amount":1180.26,
          "state":"capturable","orderId":"9986340012","sourceId":"s1",
          "captures":[{"id":"cap1","amount":13.45,"state":"failed","failureCode":"failed-request",
                       "failureMessage":"Failed to operate on charge","fulfillmentId":"ful_1"}],
          "captured":false,"type":"customer_initiated"}"#;
        let c: models::Charge = serde_json::from_str(json).unwrap();
        let pb = charge(c, "");
        let amount = pb.amount.unwrap();
        assert_eq!((amount.units, amount.nanos), (1180, 260_000_000));
        assert_eq!(pb.captures[0].failure_code, "failed-request");
        assert_eq!(pb.captures[0].fulfillment_id, "ful_1");
        assert_eq!(pb.create_time.unwrap().nanos, 968_000_000);
    }

    #[test]
    fn fractional_event_times_parse() {
        let t = timestamp("2022-07-01T18:30:59.51144Z").unwrap();
        assert_eq!(t.nanos, 511_440_000);
    }
}
