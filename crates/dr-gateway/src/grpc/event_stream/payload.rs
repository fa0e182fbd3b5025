//! The typed `Event.payload` of a DR event: the charge, fulfillment, order or sales
//! transaction its `data.object` holds, through the gateway's DR → protobuf conversions.

use crate::digital_river::models;
use crate::events::Envelope;
use crate::grpc::convert;
use crate::pb::v1 as pb;

/// The typed `Event.payload` for a DR event: the charge, fulfillment, order or sales
/// transaction in `data.object`, through the core's DR → protobuf conversions. Injected
/// into the event log's [`EventEncoder`] by the app.
pub fn decode_payload(env: &Envelope) -> Option<pb::event::Payload> {
    let t = env.event_type.as_str();
    // why: the typed model is read from DR's text of the object (the envelope
    // keeps no parsed form of it): one parse into exactly the fields it has.
    let object = env.object_json();
    // why: which object each type carries, docs/digital-river.md §3.2.
    if t == "order.chargeback" || t.starts_with("sales_transaction.") {
        let transaction = serde_json::from_str::<models::SalesTransaction>(object).ok()?;
        return Some(pb::event::Payload::SalesTransaction(
            convert::sales_transaction(transaction),
        ));
    }
    if t == "order.charge.reauth.failed" {
        let order = serde_json::from_str::<models::Order>(object).ok()?;
        return Some(pb::event::Payload::Order(convert::order(order)));
    }
    if t.starts_with("order.charge.") {
        let charge = serde_json::from_str::<models::Charge>(object).ok()?;
        return Some(pb::event::Payload::Charge(convert::charge(charge, "")));
    }
    if t.starts_with("fulfillment.") {
        let ful = serde_json::from_str::<models::Fulfillment>(object).ok()?;
        return Some(pb::event::Payload::Fulfillment(convert::fulfillment(ful)));
    }
    let not_an_order = ["order.chargeback", "order.invoice.", "order.credit_memo."]
        .iter()
        .any(|p| t.starts_with(p));
    if t.starts_with("order.") && !not_an_order {
        let order = serde_json::from_str::<models::Order>(object).ok()?;
        return Some(pb::event::Payload::Order(convert::order(order)));
    }
    None
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn decode(body: &str) -> Option<pb::event::Payload> {
        let env = Envelope::parse(Bytes::from(body.to_owned())).expect("an envelope");
        decode_payload(&env)
    }

    #[test]
    fn a_chargeback_as_the_disputes_page_prints_it_decodes_to_an_exact_sales_transaction() {
        // The "Disputes and chargebacks" page's order.chargeback, trimmed of fields the
        // gateway does not read.
        let body = r#"{"id":"1f80aaaf-efe6-4d5a-a6de-f8eae775bd76","type":"order.chargeback",
          "data":{"object":{"id":"1117116275_000010_3700100415","createdTime":"2024-05-10T00:00:00Z",
            "saleTime":"2024-05-09T00:00:00Z","currency":"USD","amount":0.0,"type":"fraud_chargeback",
            "orderId":"1362824114639","skuId":"AF01","quantity":0,
            "payoutAmounts":{"currency":"USD","exchangeRate":0.0,"amount":0.0,"transactionFees":-15.0,"payoutAmount":-15.0},
            "liveMode":true,"orderUpstreamId":"221000297718","paymentType":"creditCard","lineItemId":"1428499654639"}},
          "liveMode":true,"createdTime":"2024-05-10T12:10:52.681729Z","digitalriverVersion":"2020-12-17"}"#;
        let Some(pb::event::Payload::SalesTransaction(t)) = decode(body) else {
            panic!("a sales transaction");
        };
        assert_eq!(t.id, "1117116275_000010_3700100415");
        assert_eq!(t.r#type, "fraud_chargeback");
        assert_eq!(
            (t.order_id.as_str(), t.order_upstream_id.as_str()),
            ("1362824114639", "221000297718")
        );
        let fees = t.transaction_fees.unwrap();
        assert_eq!(
            (fees.currency_code.as_str(), fees.units, fees.nanos),
            ("USD", -15, 0)
        );
        assert_eq!(t.payout_amount.unwrap().units, -15);
        assert_eq!(t.amount.unwrap().units, 0);
        assert!(t.live_mode && t.sale_time.is_some());
        let created = body.replace("order.chargeback", "sales_transaction.created");
        assert!(matches!(
            decode(&created),
            Some(pb::event::Payload::SalesTransaction(_))
        ));
    }
}
