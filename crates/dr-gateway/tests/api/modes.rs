//! Test and live objects are kept apart: a gateway holding an `sk_test_` key cannot read
//! or fulfil live-mode objects, and a live key cannot touch test ones — DR answers 404
//! as if they did not exist, and the gateway says which object was missing.

use dr_gateway::pb::v1 as pb;
use dr_gateway::pb::v1::get_order_request::Key;
use serde_json::json;
use tonic::Code;
use tonic_types::StatusExt;

use crate::helpers::{
    fulfillments_held, settings, spawn_app, spawn_app_with, spawn_sandbox, KeyMode, TestSandbox,
};

/// (type, name) of the `ResourceInfo` of a NOT_FOUND status.
fn missing(status: tonic::Status) -> (String, String) {
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    let info = status.get_details_resource_info().expect("ResourceInfo");
    (info.resource_type, info.resource_name)
}

/// An order of `mode`, fulfilled by one unit with a key of the same mode: (order id,
/// item id, charge id, source id, fulfillment id).
async fn fulfilled_order(dr: &TestSandbox, mode: KeyMode) -> [String; 5] {
    let order = mode
        .control(dr)
        .create_order(json!({"items": [{"quantity": 2, "amount": "20.00"}]}))
        .await
        .unwrap();
    assert_eq!(order["liveMode"], mode == KeyMode::Live);
    let text = |v: &serde_json::Value| v.as_str().unwrap().to_owned();
    let (order_id, item_id) = (text(&order["id"]), text(&order["items"][0]["id"]));
    let ful: serde_json::Value = reqwest::Client::new()
        .post(format!("{}/fulfillments", dr.base_url()))
        .bearer_auth(mode.key())
        .json(&json!({"orderId": order_id, "items": [{"itemId": item_id, "quantity": 1}]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    [
        order_id,
        item_id,
        text(&order["payment"]["charges"][0]["id"]),
        text(&order["payment"]["sources"][0]["id"]),
        text(&ful["id"]),
    ]
}

#[tokio::test]
async fn a_test_key_gateway_cannot_read_or_fulfil_live_objects_and_a_live_key_not_test_ones() {
    let dr = spawn_sandbox().await;
    let [live_order, live_item, live_charge, live_source, live_ful] =
        fulfilled_order(&dr, KeyMode::Live).await;
    let [test_order, _, test_charge, _, _] = fulfilled_order(&dr, KeyMode::Test).await;
    let mut app = spawn_app(&dr.base_url()).await; // an sk_test_ key

    let get = app
        .fulfillments
        .get_order(pb::GetOrderRequest {
            key: Some(Key::OrderId(live_order.clone())),
        })
        .await
        .unwrap_err();
    assert_eq!(missing(get), ("order".into(), live_order.clone()));
    let charges = app
        .charges
        .list_order_charges(pb::ListOrderChargesRequest {
            order_id: live_order.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing(charges), ("order".into(), live_order.clone()));
    let charge = app
        .charges
        .get_charge(pb::GetChargeRequest {
            charge_id: live_charge.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing(charge), ("charge".into(), live_charge.clone()));
    let source = app
        .charges
        .get_payment_source(pb::GetPaymentSourceRequest {
            source_id: live_source.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing(source), ("source".into(), live_source.clone()));
    let ful = app
        .fulfillments
        .get_fulfillment(pb::GetFulfillmentRequest {
            fulfillment_id: live_ful.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing(ful), ("fulfillment".into(), live_ful.clone()));
    let listed = app
        .fulfillments
        .list_fulfillments(pb::ListFulfillmentsRequest {
            order_id: live_order.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(listed.fulfillments.is_empty());

    // Fulfilling the live order with the test key moves no money.
    let capture = app
        .charges
        .capture_items(pb::CaptureItemsRequest {
            order_id: live_order.clone(),
            items: vec![pb::ChargeItem {
                item_id: live_item.clone(),
                quantity: 1,
                ..Default::default()
            }],
            request_id: "wrong-mode-capture".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(missing(capture), ("order".into(), live_order.clone()));
    assert_eq!(
        fulfillments_held(&dr, KeyMode::Live).await.len(),
        1,
        "only the live key's own fulfillment"
    );
    assert_eq!(fulfillments_held(&dr, KeyMode::Test).await.len(), 1);
    app.stop().await;

    // A live-key gateway reads the live objects and not the test ones.
    let mut live = settings(&dr.base_url());
    live.dr_api_key = secrecy::SecretString::from(KeyMode::Live.key());
    let mut app = spawn_app_with(live).await;
    let order = app
        .fulfillments
        .get_order(pb::GetOrderRequest {
            key: Some(Key::OrderId(live_order.clone())),
        })
        .await
        .unwrap()
        .into_inner()
        .order
        .unwrap();
    assert!(order.live_mode);
    assert_eq!(order.items[0].fulfilled_quantity, 1);
    let charge = app
        .charges
        .get_charge(pb::GetChargeRequest {
            charge_id: test_charge.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing(charge), ("charge".into(), test_charge));
    let get = app
        .fulfillments
        .get_order(pb::GetOrderRequest {
            key: Some(Key::OrderId(test_order.clone())),
        })
        .await
        .unwrap_err();
    assert_eq!(missing(get), ("order".into(), test_order));
    app.stop().await;
    dr.sandbox.shutdown().await;
}
