//! Charges as a merchant needs them: which payment source each is on (card or store
//! credit), the source itself through GetPaymentSource, refunds with all their fields,
//! and orders of API versions up to 2021-02-23 (top-level `charges[]` / `sources[]`).

use dr_gateway::pb::v1 as pb;
use dr_sandbox::{RefundLineSpec, RefundSpec};
use prost::Message as _;
use serde_json::json;
use tonic::Code;
use tonic_types::StatusExt;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::helpers::{settings, spawn_app, spawn_app_with, spawn_sandbox, KeyMode, TestSandbox};

/// Exact (units, nanos) of a USD amount.
fn usd(money: &Option<pb::Money>) -> (i64, i32) {
    let m = money.as_ref().expect("an amount");
    assert_eq!(m.currency_code, "USD");
    (m.units, m.nanos)
}

/// A DR-surface GET on the sandbox with the test key.
async fn dr_get(dr: &TestSandbox, path: &str) -> serde_json::Value {
    reqwest::Client::new()
        .get(format!("{}{path}", dr.base_url()))
        .bearer_auth(KeyMode::Test.key())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// The "Applying store credit (legacy)" page's capture example: 2 units for 20.00 + 1.51
/// tax, shipping 5.00 + 0.38 tax = 26.89; 11.00 store credit, the rest (15.89) on a card.
fn store_credit_order() -> serde_json::Value {
    json!({
        "billTo": {"name": "John Doe", "email": "anyemail@digitalriver.com",
                   "address": {"line1": "434 3rd Street", "city": "Minneapolis", "postalCode": "55401", "state": "MN", "country": "US"}},
        "items": [{"quantity": 2, "amount": "20.0", "tax": "1.51"}],
        "shipping": {"amount": "5.0", "tax": "0.38"},
        "charges": [{"type": "customerCredit", "amount": "11.0"},
                    {"type": "creditCard", "creditCard": {"brand": "Visa", "lastFourDigits": "1111", "expirationMonth": 7, "expirationYear": 2027}}]
    })
}

#[tokio::test]
async fn with_store_credit_each_charge_says_whether_it_is_on_the_card_or_on_store_credit() {
    let dr = spawn_sandbox().await;
    let order = dr.control.create_order(store_credit_order()).await.unwrap();
    let order_id = order["id"].as_str().unwrap().to_owned();
    let item_id = order["items"][0]["id"].as_str().unwrap().to_owned();
    let mut app = spawn_app(&dr.base_url()).await;

    // One unit shipped: 13.45, store credit first (11.00), then 2.45 on the card.
    app.charges
        .capture_items(pb::CaptureItemsRequest {
            order_id: order_id.clone(),
            items: vec![pb::ChargeItem {
                item_id,
                quantity: 1,
                ..Default::default()
            }],
            request_id: "credit-first".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let listed = app
        .charges
        .list_order_charges(pb::ListOrderChargesRequest {
            order_id: order_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.charges.len(), 2);
    let kind = |c: &pb::Charge| {
        c.source
            .as_ref()
            .expect("the charge's source")
            .r#type
            .clone()
    };
    let credit = listed
        .charges
        .iter()
        .find(|c| kind(c) == "customerCredit")
        .expect("a store-credit charge");
    let card = listed
        .charges
        .iter()
        .find(|c| kind(c) == "creditCard")
        .expect("a card charge");
    assert_eq!(usd(&credit.captures[0].amount), (11, 0));
    assert!(credit.source.as_ref().unwrap().credit_card.is_none());
    // What went on the card, to tell the customer: 2.45 on the Visa ending in 1111.
    assert_eq!(usd(&card.captures[0].amount), (2, 450_000_000));
    let on_card = card.source.as_ref().unwrap().credit_card.as_ref().unwrap();
    assert_eq!(
        (on_card.brand.as_str(), on_card.last_four_digits.as_str()),
        ("Visa", "1111")
    );
    assert_eq!(usd(&listed.captured_amount), (13, 450_000_000));
    assert_eq!(usd(&listed.refunded_amount), (0, 0));

    // GetCharge names the source too (GET /sources/{sourceId}).
    let read = app
        .charges
        .get_charge(pb::GetChargeRequest {
            charge_id: card.id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .charge
        .unwrap();
    let source = read.source.as_ref().expect("GetCharge reads the source");
    assert_eq!(source.id, card.source_id);
    assert_eq!(source.r#type, "creditCard");
    assert_eq!(
        source.credit_card.as_ref().unwrap().last_four_digits,
        "1111"
    );

    // GetPaymentSource: brand, last four digits, expiry, owner; never the client secret.
    let response = app
        .charges
        .get_payment_source(pb::GetPaymentSourceRequest {
            source_id: card.source_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let source = response.source.as_ref().unwrap();
    let cc = source.credit_card.as_ref().unwrap();
    assert_eq!(
        (
            cc.brand.as_str(),
            cc.last_four_digits.as_str(),
            cc.expiration_month,
            cc.expiration_year
        ),
        ("Visa", "1111", 7, 2027)
    );
    assert_eq!(source.r#type, "creditCard");
    assert_eq!(usd(&source.amount), (15, 890_000_000));
    assert!(!source.live_mode && source.create_time.is_some());
    let owner = source.owner.as_ref().unwrap();
    assert_eq!(
        (owner.first_name.as_str(), owner.last_name.as_str()),
        ("John", "Doe")
    );
    assert_eq!(owner.address.as_ref().unwrap().postal_code, "55401");
    let secret = dr_get(&dr, &format!("/sources/{}", card.source_id)).await["clientSecret"]
        .as_str()
        .unwrap()
        .to_owned();
    let bytes = response.encode_to_vec();
    assert!(
        !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
        "the source's client secret never reaches a caller"
    );
    let store_credit = app
        .charges
        .get_payment_source(pb::GetPaymentSourceRequest {
            source_id: credit.source_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .source
        .unwrap();
    assert_eq!(store_credit.r#type, "customerCredit");
    assert_eq!(usd(&store_credit.amount), (11, 0));
    assert!(store_credit.credit_card.is_none());
    app.stop().await;
    dr.sandbox.shutdown().await;
}

#[tokio::test]
async fn get_payment_source_needs_an_id_and_names_an_unknown_one() {
    let dr = spawn_sandbox().await;
    let mut app = spawn_app(&dr.base_url()).await;
    let empty = app
        .charges
        .get_payment_source(pb::GetPaymentSourceRequest::default())
        .await
        .unwrap_err();
    assert_eq!(empty.code(), Code::InvalidArgument);
    assert_eq!(
        empty.get_details_bad_request().unwrap().field_violations[0].field,
        "source_id"
    );
    let unknown = app
        .charges
        .get_payment_source(pb::GetPaymentSourceRequest {
            source_id: "src-missing".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    let info = unknown.get_details_resource_info().unwrap();
    assert_eq!(
        (info.resource_type.as_str(), info.resource_name.as_str()),
        ("source", "src-missing")
    );
    app.stop().await;
    dr.sandbox.shutdown().await;
}

/// The "Applying store credit (legacy)" page's capture example, as printed: an order of
/// API version 2021-02-23 with top-level `creditAmount`, `sources[]` and `charges[]`.
/// Only the page's `...` elisions are gone; `currency` and `state`, which they hide, are
/// filled in.
fn legacy_capture_example() -> serde_json::Value {
    json!({
        "id": "185326550336",
        "currency": "USD",
        "state": "accepted",
        "totalAmount": 26.89,
        "subtotal": 25.0,
        "totalTax": 1.89,
        "items": [{"id": "106494910336", "skuId": "6b04ac06-0858-456c-90aa-235772dea9e2", "amount": 20.0, "quantity": 2}],
        "creditAmount": 11.0,
        "sources": [
            {"id": "21216ef6-d153-445a-8c81-3d912dfcf63a", "type": "customerCredit", "amount": 11.0, "customerCredit": {}},
            {"id": "10103f7f-ce6f-47f2-b064-47931779ebea", "type": "creditCard", "amount": 15.89,
             "paymentSessionId": "cac4fac7-8c54-46d8-86b1-c595a963d719",
             "creditCard": {"brand": "Visa", "expirationMonth": 7, "expirationYear": 2027, "lastFourDigits": "1111"}}
        ],
        "charges": [
            {"id": "84cdf3e6-f70e-49ca-8847-248d039f66d9", "amount": 11.0, "state": "complete", "captured": true,
             "captures": [{"id": "a57b0805-4b57-46ec-a963-124ada0b536a", "createdTime": "2021-03-08T21:14:51Z", "amount": 11.0, "state": "complete"}],
             "sourceId": "21216ef6-d153-445a-8c81-3d912dfcf63a"},
            {"id": "60bbc0e7-affc-46ed-a3e8-3171d4de01cb", "amount": 15.89, "state": "capturable", "captured": true,
             "captures": [{"id": "42253229-ad78-4c64-8096-9bb4138b4433", "createdTime": "2021-03-08T21:14:51Z", "amount": 2.45, "state": "complete"}],
             "sourceId": "10103f7f-ce6f-47f2-b064-47931779ebea"}
        ],
        "checkoutId": "9d92cc87-0e22-4dbe-bc76-e9d8eba1435f"
    })
}

/// The same page's refund example: both charges captured, then a 50% refund that went
/// to the card first (6.89), then store credit (6.56).
fn legacy_refund_example() -> serde_json::Value {
    json!({
        "id": "185317330336", "currency": "USD",
        "totalAmount": 26.89, "subtotal": 25.0, "totalTax": 1.89, "totalShipping": 5.0,
        "items": [{"id": "106484310336", "skuId": "6b04ac06-0858-456c-90aa-235772dea9e2", "amount": 20.0, "quantity": 2,
                   "tax": {"rate": 0.07525, "amount": 1.51}, "availableToRefundAmount": 13.44}],
        "creditAmount": 20.0,
        "sources": [
            {"id": "b77fec60-590b-4330-8d6b-bb069cf5545e", "type": "customerCredit", "amount": 20.0, "state": "consumed", "customerCredit": {}},
            {"id": "b73d759c-eff0-4327-960f-75b86dd87764", "type": "creditCard", "amount": 6.89, "state": "consumed",
             "creditCard": {"brand": "Visa", "expirationMonth": 7, "expirationYear": 2027, "lastFourDigits": "1111"}}
        ],
        "refundedAmount": 13.45,
        "state": "complete",
        "charges": [
            {"id": "b80d59ee-546d-4f04-8fc9-8c4f630594aa", "amount": 20.0, "state": "complete", "captured": true,
             "captures": [{"id": "012d0a54-8e34-48a5-b5e0-5d6735901d95", "createdTime": "2021-03-08T20:01:34Z", "amount": 20.0, "state": "complete"}],
             "refunded": true,
             "refunds": [{"createdTime": "2021-03-08T20:06:44Z", "amount": 6.56, "state": "complete"}],
             "sourceId": "b77fec60-590b-4330-8d6b-bb069cf5545e"},
            {"id": "c7464db6-33c8-45f6-9cb6-4fa5a2a658c9", "amount": 6.89, "state": "complete", "captured": true,
             "captures": [{"id": "191c66ac-7713-49f3-a605-ec9fae84fbf9", "createdTime": "2021-03-08T20:01:34Z", "amount": 6.89, "state": "complete"}],
             "refunded": true,
             "refunds": [{"createdTime": "2021-03-08T20:06:44Z", "amount": 6.89, "state": "complete"}],
             "sourceId": "b73d759c-eff0-4327-960f-75b86dd87764"}
        ],
        "capturedAmount": 26.89,
        "availableToRefundAmount": 13.44,
        "checkoutId": "dc16d13b-d379-45bc-9be1-f3bd798410d2"
    })
}

/// A wiremock DR serving `order` on `GET /orders/{id}` (and no fulfillments).
async fn dr_serving(order: &serde_json::Value) -> MockServer {
    let dr = MockServer::start().await;
    let id = order["id"].as_str().unwrap();
    Mock::given(method("GET"))
        .and(path(format!("/orders/{id}")))
        .respond_with(ResponseTemplate::new(200).set_body_json(order))
        .mount(&dr)
        .await;
    Mock::given(method("GET"))
        .and(path("/fulfillments"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"hasMore": false, "data": []})),
        )
        .mount(&dr)
        .await;
    dr
}

#[tokio::test]
async fn legacy_orders_top_level_charges_and_sources_are_read_by_list_order_charges_and_get_order()
{
    let dr = dr_serving(&legacy_capture_example()).await;
    let mut app = spawn_app(&dr.uri()).await;

    let listed = app
        .charges
        .list_order_charges(pb::ListOrderChargesRequest {
            order_id: "185326550336".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        listed.charges.len(),
        2,
        "not zero: the legacy charges[] is read"
    );
    let (credit, card) = (&listed.charges[0], &listed.charges[1]);
    assert_eq!(
        (credit.state.as_str(), usd(&credit.amount)),
        ("complete", (11, 0))
    );
    assert_eq!(usd(&credit.captures[0].amount), (11, 0));
    assert_eq!(credit.source.as_ref().unwrap().r#type, "customerCredit");
    assert_eq!(
        (card.state.as_str(), usd(&card.amount)),
        ("capturable", (15, 890_000_000))
    );
    assert_eq!(usd(&card.captures[0].amount), (2, 450_000_000));
    let card_source = card.source.as_ref().unwrap();
    assert_eq!(card_source.r#type, "creditCard");
    assert_eq!(
        card_source.credit_card.as_ref().unwrap().last_four_digits,
        "1111"
    );
    assert_eq!(usd(&listed.total_amount), (26, 890_000_000));

    let order = app
        .fulfillments
        .get_order(pb::GetOrderRequest {
            key: Some(pb::get_order_request::Key::OrderId("185326550336".into())),
        })
        .await
        .unwrap()
        .into_inner()
        .order
        .unwrap();
    assert_eq!(order.charges, listed.charges);
    let kinds: Vec<_> = order
        .payment_sources
        .iter()
        .map(|s| s.r#type.as_str())
        .collect();
    assert_eq!(kinds, ["customerCredit", "creditCard"]);
    assert_eq!(usd(&order.payment_sources[1].amount), (15, 890_000_000));
    app.stop().await;
}

#[tokio::test]
async fn legacy_store_credit_refunds_go_to_the_card_first_and_the_totals_stay_exact() {
    let dr = dr_serving(&legacy_refund_example()).await;
    let mut app = spawn_app(&dr.uri()).await;
    let listed = app
        .charges
        .list_order_charges(pb::ListOrderChargesRequest {
            order_id: "185317330336".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let by_kind = |kind: &str| {
        listed
            .charges
            .iter()
            .find(|c| c.source.as_ref().is_some_and(|s| s.r#type == kind))
            .unwrap()
    };
    let (credit, card) = (by_kind("customerCredit"), by_kind("creditCard"));
    assert!(credit.refunded && card.refunded);
    assert_eq!(
        usd(&card.refunds[0].amount),
        (6, 890_000_000),
        "the card in full"
    );
    assert_eq!(
        usd(&credit.refunds[0].amount),
        (6, 560_000_000),
        "then store credit"
    );
    assert_eq!(card.refunds[0].state, "complete");
    assert!(
        card.refunds[0].refund.is_some(),
        "a refund carries refund details"
    );
    assert_eq!(usd(&listed.refunded_amount), (13, 450_000_000));
    assert_eq!(usd(&listed.available_to_refund_amount), (13, 440_000_000));
    app.stop().await;
}

#[tokio::test]
async fn a_gateway_pinned_to_2021_02_23_reads_the_sandboxs_legacy_orders_and_captures_through_them()
{
    let dr = spawn_sandbox().await;
    let order = dr.control.create_order(store_credit_order()).await.unwrap();
    let order_id = order["id"].as_str().unwrap().to_owned();
    let item_id = order["items"][0]["id"].as_str().unwrap().to_owned();
    let mut s = settings(&dr.base_url());
    s.dr_api_version = Some("2021-02-23".into());
    let mut app = spawn_app_with(s).await;

    app.charges
        .capture_items(pb::CaptureItemsRequest {
            order_id: order_id.clone(),
            items: vec![pb::ChargeItem {
                item_id,
                quantity: 1,
                ..Default::default()
            }],
            request_id: "legacy-capture".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let listed = app
        .charges
        .list_order_charges(pb::ListOrderChargesRequest {
            order_id: order_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let kinds: Vec<_> = listed
        .charges
        .iter()
        .map(|c| {
            (
                c.source.as_ref().unwrap().r#type.as_str(),
                usd(&c.captures[0].amount),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            ("customerCredit", (11, 0)),
            ("creditCard", (2, 450_000_000))
        ]
    );
    // The sandbox really answered in the legacy shape.
    let reads = dr
        .control
        .requests(Some("GET"), Some(&format!("/orders/{order_id}")))
        .await
        .unwrap();
    assert!(reads
        .iter()
        .all(|r| r.headers.get("digitalriver-version").map(String::as_str) == Some("2021-02-23")));
    let legacy: serde_json::Value = reqwest::Client::new()
        .get(format!("{}/orders/{order_id}", dr.base_url()))
        .bearer_auth(KeyMode::Test.key())
        .header("digitalriver-version", "2021-02-23")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(legacy.get("payment").is_none() && legacy["charges"].is_array());
    app.stop().await;
    dr.sandbox.shutdown().await;
}

/// The Charges API reference's `GET /charges/{id}` example, exactly as the page prints it.
fn charges_api_reference_example() -> serde_json::Value {
    json!({
      "id": "a6809a63-e6a9-4016-abbc-f33d19fccb5b",
      "createdTime": "2025-05-09T05:15:57.968Z",
      "currency": "USD",
      "amount": 1180.26,
      "state": "pending",
      "orderId": "9986340012",
      "sourceId": "9986340012",
      "failureCode": "a failure code",
      "failureMessage": "a failure message",
      "paymentSessionId": "8cecaa32-f692-44cc-b103-4cf24dc93913",
      "cancels": [{"id": "a6809a63-e6a9-4016-abbc-f33d19fccb5b", "createdTime": "2025-05-09T05:15:57.968Z",
                   "updatedTime": "2025-05-09T05:15:57.968Z", "amount": 1180.26, "state": "pending",
                   "failureCode": "text", "failureMessage": "text"}],
      "captures": [{"id": "a6809a63-e6a9-4016-abbc-f33d19fccb5b", "createdTime": "2025-05-09T05:15:57.968Z",
                    "updatedTime": "2025-05-09T05:15:57.968Z", "amount": 1180.26, "state": "pending",
                    "failureCode": "text", "failureMessage": "text"}],
      "captured": false,
      "refunds": [{
          "id": "ref_5823594809",
          "createdTime": "2025-05-09T05:15:57.968Z",
          "orderId": "ord_6645940010",
          "invoiceId": "5823594809",
          "currency": "USD",
          "type": "shipping",
          "amount": 9.99,
          "refundedAmount": 9.99,
          "items": [[{"type": "shipping", "skuId": "sku_9234276173", "quantity": 1, "amount": 5.95}]],
          "reason": "requested_by_customer",
          "failureReason": "expired_or_canceled_card",
          "state": "created",
          "tokenInformation": {"token": "bb3f0f17-567a-4c87-8cbd-76d93a750709", "expiresTime": "2025-05-09T05:15:57.968Z"},
          "expiresTime": "2025-05-09T05:15:57.968Z",
          "liveMode": false,
          "metadata": {"coupon": "iOS"}
      }],
      "refunded": false,
      "type": "customer_initiated",
      "liveMode": true
    })
}

#[tokio::test]
async fn get_charge_keeps_every_refund_field_of_the_charges_api_reference() {
    let dr = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/charges/a6809a63-e6a9-4016-abbc-f33d19fccb5b"))
        .respond_with(ResponseTemplate::new(200).set_body_json(charges_api_reference_example()))
        .mount(&dr)
        .await;
    // The example's sourceId names no source DR still has: the charge comes back without one.
    Mock::given(method("GET"))
        .and(path("/sources/9986340012"))
        .respond_with(ResponseTemplate::new(404).set_body_json(json!({"type": "not_found",
            "errors": [{"code": "not_found", "parameter": "id", "message": "Source '9986340012' not found."}]})))
        .mount(&dr)
        .await;
    let mut app = spawn_app(&dr.uri()).await;

    let charge = app
        .charges
        .get_charge(pb::GetChargeRequest {
            charge_id: "a6809a63-e6a9-4016-abbc-f33d19fccb5b".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .charge
        .unwrap();

    assert!(charge.source.is_none());
    let refund = &charge.refunds[0];
    assert_eq!(refund.id, "ref_5823594809");
    assert_eq!(refund.state, "created");
    assert_eq!(usd(&refund.amount), (9, 990_000_000));
    assert!(refund.create_time.is_some());
    let details = refund.refund.as_ref().expect("refund details");
    assert_eq!(usd(&details.refunded_amount), (9, 990_000_000));
    assert_eq!(details.reason, "requested_by_customer");
    assert_eq!(details.failure_reason, "expired_or_canceled_card");
    assert_eq!(details.r#type, "shipping");
    assert_eq!(details.invoice_id, "5823594809");
    assert_eq!(
        details.items.len(),
        1,
        "the page's array of arrays, flattened"
    );
    let item = &details.items[0];
    assert_eq!(
        (
            item.r#type.as_str(),
            item.sku_id.as_str(),
            item.quantity,
            usd(&item.amount)
        ),
        ("shipping", "sku_9234276173", 1, (5, 950_000_000))
    );
    // Captures and cancels carry no refund details.
    assert!(charge.captures[0].refund.is_none() && charge.cancels[0].refund.is_none());
    app.stop().await;
}

#[tokio::test]
async fn refunds_made_outside_the_gateway_reach_list_order_charges_and_get_charge_with_every_field()
{
    let dr = spawn_sandbox().await;
    let order = dr
        .control
        .create_order(
            json!({"items": [{"skuId": "sku_9234276173", "quantity": 2, "amount": "20.00"}],
                             "shipping": {"amount": "5.95"}}),
        )
        .await
        .unwrap();
    let order_id = order["id"].as_str().unwrap().to_owned();
    let item_id = order["items"][0]["id"].as_str().unwrap().to_owned();
    let charge_id = order["payment"]["charges"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut app = spawn_app(&dr.base_url()).await;
    app.charges
        .capture_items(pb::CaptureItemsRequest {
            order_id: order_id.clone(),
            items: vec![pb::ChargeItem {
                item_id,
                quantity: 2,
                ..Default::default()
            }],
            request_id: "all".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    // Refunds issued elsewhere (e.g. DR's Dashboard): one for shipping, one that failed.
    dr.control
        .record_refund(
            &charge_id,
            &RefundSpec::of("5.95")
                .reason("requested_by_customer")
                .kind("shipping")
                .item(RefundLineSpec {
                    kind: Some("shipping".into()),
                    sku_id: Some("sku_9234276173".into()),
                    item_id: None,
                    quantity: 1,
                    amount: "5.95".into(),
                }),
        )
        .await
        .unwrap();
    dr.control
        .record_refund(
            &charge_id,
            &RefundSpec::of("3.00").failing("expired_or_canceled_card"),
        )
        .await
        .unwrap();

    let listed = app
        .charges
        .list_order_charges(pb::ListOrderChargesRequest {
            order_id: order_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(usd(&listed.refunded_amount), (5, 950_000_000));
    assert_eq!(
        usd(&listed.available_to_refund_amount),
        (20, 0),
        "25.95 captured − 5.95"
    );
    let charge = &listed.charges[0];
    assert!(charge.refunded);
    let (done, failed) = (&charge.refunds[0], &charge.refunds[1]);
    assert!(done.id.starts_with("ref_"));
    assert_eq!(
        (done.state.as_str(), usd(&done.amount)),
        ("complete", (5, 950_000_000))
    );
    let d = done.refund.as_ref().unwrap();
    assert_eq!(usd(&d.refunded_amount), (5, 950_000_000));
    assert_eq!(
        (d.reason.as_str(), d.r#type.as_str()),
        ("requested_by_customer", "shipping")
    );
    assert!(!d.invoice_id.is_empty());
    assert_eq!(
        (
            d.items[0].sku_id.as_str(),
            d.items[0].quantity,
            usd(&d.items[0].amount)
        ),
        ("sku_9234276173", 1, (5, 950_000_000))
    );
    let f = failed.refund.as_ref().unwrap();
    assert_eq!(
        (failed.state.as_str(), f.failure_reason.as_str()),
        ("failed", "expired_or_canceled_card")
    );
    assert_eq!(usd(&f.refunded_amount), (0, 0));

    let read = app
        .charges
        .get_charge(pb::GetChargeRequest { charge_id })
        .await
        .unwrap()
        .into_inner()
        .charge
        .unwrap();
    assert_eq!(read.refunds, charge.refunds);
    app.stop().await;
    dr.sandbox.shutdown().await;
}
