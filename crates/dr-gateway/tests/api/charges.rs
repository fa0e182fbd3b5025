//! Charges as a merchant needs them: which payment source each is on (card or store
//! credit), the source itself through GetPaymentSource, refunds with all their fields,
//! and orders of API versions up to 2021-02-23 (top-level `charges[]` / `sources[]`).

use dr_gateway::pb::v1 as pb;
use prost::Message as _;
use serde_json::json;
use tonic::Code;
use tonic_types::StatusExt;

use crate::helpers::{spawn_app, spawn_sandbox, KeyMode, TestSandbox};

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
async fn seed_002_each_charge_says_whether_it_is_on_the_card_or_on_store_credit() {
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
