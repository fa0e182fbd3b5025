//! DR's documented flows end to end: gRPC → gateway → sandbox (the stateful DR emulator).

use dr_gateway::pb::v1 as pb;
use dr_sandbox::{FaultKind, FaultSpec};
use serde_json::json;
use tonic::Code;
use tonic_types::StatusExt;

use crate::helpers::{fulfillments_held, spawn_app, spawn_sandbox, KeyMode};

fn fulfill(
    order_id: &str,
    item_id: &str,
    quantity: i64,
    request_id: &str,
) -> pb::CreateFulfillmentRequest {
    pb::CreateFulfillmentRequest {
        order_id: order_id.into(),
        items: vec![pb::CreateFulfillmentItem {
            item_id: item_id.into(),
            quantity,
            ..Default::default()
        }],
        request_id: request_id.into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn capturing_page_a_fulfilled_order_answers_order_fulfilled_as_failed_precondition() {
    let dr = spawn_sandbox().await;
    let order = dr
        .control
        .create_order(json!({"items": [{"quantity": 2, "amount": "25.00", "tax": "2.01"}]}))
        .await
        .unwrap();
    let (order_id, item_id) = (
        order["id"].as_str().unwrap(),
        order["items"][0]["id"].as_str().unwrap(),
    );
    let mut app = spawn_app(&dr.base_url()).await;

    app.fulfillments
        .create_fulfillment(fulfill(order_id, item_id, 2, "all"))
        .await
        .unwrap();
    let status = app
        .fulfillments
        .create_fulfillment(fulfill(order_id, item_id, 1, "one-more"))
        .await
        .unwrap_err();

    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(
        status.message(),
        format!("Resource '{order_id}' is fulfilled.")
    );
    let info = status.get_details_error_info().unwrap();
    assert_eq!(info.reason, "ORDER_FULFILLED");
    assert_eq!(info.metadata["dr_type"], "conflict");
    let charges = app
        .charges
        .list_order_charges(pb::ListOrderChargesRequest {
            order_id: order_id.into(),
        })
        .await
        .unwrap()
        .into_inner();
    let captured = charges.captured_amount.unwrap();
    assert_eq!((captured.units, captured.nanos), (27, 10_000_000));
    assert_eq!(charges.order_state, "complete");
    app.stop().await;
    dr.sandbox.shutdown().await;
}

#[tokio::test]
async fn capturing_page_a_failed_capture_is_found_through_get_capture_failure() {
    let dr = spawn_sandbox().await;
    let order = dr
        .control
        .create_order(json!({"failCaptures": true, "items": [{"quantity": 1, "amount": "10.00"}]}))
        .await
        .unwrap();
    let (order_id, item_id) = (
        order["id"].as_str().unwrap(),
        order["items"][0]["id"].as_str().unwrap(),
    );
    let mut app = spawn_app(&dr.base_url()).await;
    let fulfillment = app
        .fulfillments
        .create_fulfillment(fulfill(order_id, item_id, 1, "fail-1"))
        .await
        .unwrap()
        .into_inner()
        .fulfillment
        .unwrap();

    let charges = app
        .charges
        .list_order_charges(pb::ListOrderChargesRequest {
            order_id: order_id.into(),
        })
        .await
        .unwrap()
        .into_inner();
    let charge_id = charges.charges[0].id.clone();
    let charge = app
        .charges
        .get_charge(pb::GetChargeRequest {
            charge_id: charge_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .charge
        .unwrap();
    let capture = charge
        .captures
        .iter()
        .find(|c| c.state == "failed")
        .expect("a failed capture");

    let failure = app
        .charges
        .get_capture_failure(pb::GetCaptureFailureRequest {
            charge_id,
            capture_id: capture.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(failure.failure_code, "failed-request");
    assert_eq!(failure.failure_message, "Failed to operate on charge");
    assert_eq!(failure.fulfillment_id, fulfillment.id);
    app.stop().await;
    dr.sandbox.shutdown().await;
}

#[tokio::test]
async fn reauthorizations_page_risk_averse_expired_authorization_is_payment_authorization_failed() {
    let dr = spawn_sandbox().await;
    let order = dr
        .control
        .create_order(json!({"riskMode": "averse", "authorizationExpired": true, "items": [{"quantity": 1, "amount": "5.37"}]}))
        .await
        .unwrap();
    let (order_id, item_id) = (
        order["id"].as_str().unwrap(),
        order["items"][0]["id"].as_str().unwrap(),
    );
    let mut app = spawn_app(&dr.base_url()).await;
    let status = app
        .fulfillments
        .create_fulfillment(fulfill(order_id, item_id, 1, "averse"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(
        status.get_details_error_info().unwrap().reason,
        "PAYMENT_AUTHORIZATION_FAILED"
    );
    assert!(
        !status.message().is_empty(),
        "DR's description becomes the message"
    );
    app.stop().await;
    dr.sandbox.shutdown().await;
}

#[tokio::test]
async fn disputes_page_a_disputed_order_refuses_fulfillment_until_resolved() {
    let dr = spawn_sandbox().await;
    let order = dr
        .control
        .create_order(json!({"items": [{"quantity": 1, "amount": "9.99"}]}))
        .await
        .unwrap();
    let (order_id, item_id) = (
        order["id"].as_str().unwrap(),
        order["items"][0]["id"].as_str().unwrap(),
    );
    dr.control.open_dispute(order_id).await.unwrap();
    let mut app = spawn_app(&dr.base_url()).await;
    let status = app
        .fulfillments
        .create_fulfillment(fulfill(order_id, item_id, 1, "disputed"))
        .await
        .unwrap_err();
    assert_eq!(
        status.get_details_error_info().unwrap().reason,
        "ORDER_NOT_SUBMITTED"
    );

    dr.control.resolve_dispute(order_id).await.unwrap();
    // a new request id: the refused one was not stored, so reusing it would also work
    app.fulfillments
        .create_fulfillment(fulfill(order_id, item_id, 1, "disputed"))
        .await
        .expect("fulfills once the dispute is resolved");
    app.stop().await;
    dr.sandbox.shutdown().await;
}

#[tokio::test]
async fn a_response_lost_after_dr_processed_the_post_creates_one_fulfillment() {
    let dr = spawn_sandbox().await;
    let order = dr
        .control
        .create_order(json!({"items": [{"quantity": 3, "amount": "30.00"}]}))
        .await
        .unwrap();
    let (order_id, item_id) = (
        order["id"].as_str().unwrap(),
        order["items"][0]["id"].as_str().unwrap(),
    );
    dr.control
        .add_fault(
            &FaultSpec::new(FaultKind::ResetAfterProcessing, "/fulfillments")
                .method("POST")
                .count(1),
        )
        .await
        .unwrap();
    let mut app = spawn_app(&dr.base_url()).await;

    let first = app
        .fulfillments
        .create_fulfillment(fulfill(order_id, item_id, 1, "lost-1"))
        .await;
    let retry = app
        .fulfillments
        .create_fulfillment(fulfill(order_id, item_id, 1, "lost-1"))
        .await;

    let first_id = first
        .expect("reconciled after the reset")
        .into_inner()
        .fulfillment
        .unwrap()
        .id;
    let retry_id = retry.unwrap().into_inner().fulfillment.unwrap().id;
    assert_eq!(first_id, retry_id);
    let posts = dr
        .control
        .requests(Some("POST"), Some("/fulfillments"))
        .await
        .unwrap();
    assert_eq!(posts.len(), 1, "DR saw one POST");
    assert_eq!(
        posts[0].fault,
        Some(FaultKind::ResetAfterProcessing),
        "its answer was lost"
    );
    let reconciles = dr
        .control
        .requests(Some("GET"), Some("/fulfillments"))
        .await
        .unwrap();
    assert!(!reconciles.is_empty(), "the gateway reconciled");
    let order = app
        .fulfillments
        .get_order(pb::GetOrderRequest {
            key: Some(pb::get_order_request::Key::OrderId(order_id.into())),
        })
        .await
        .unwrap()
        .into_inner()
        .order
        .unwrap();
    assert_eq!(
        order.items[0].fulfilled_quantity, 1,
        "one unit fulfilled, not two"
    );
    app.stop().await;
    dr.sandbox.shutdown().await;
}

#[tokio::test]
async fn a_shipment_item_id_used_twice_is_refused_before_dr_and_moves_no_money() {
    let dr = spawn_sandbox().await;
    let order = dr
        .control
        .create_order(json!({"fulfillmentModel": "distributed", "items": [
            {"quantity": 1, "amount": "10.00"}, {"quantity": 1, "amount": "5.00"}]}))
        .await
        .unwrap();
    let order_id = order["id"].as_str().unwrap();
    let (a, b) = (
        order["items"][0]["id"].as_str().unwrap(),
        order["items"][1]["id"].as_str().unwrap(),
    );
    let mut app = spawn_app(&dr.base_url()).await;
    let line = |item_id: &str, sid: &str| pb::CreateFulfillmentItem {
        item_id: item_id.into(),
        quantity: 1,
        shipment_item_id: sid.into(),
        ..Default::default()
    };

    let create = app
        .fulfillments
        .create_fulfillment(pb::CreateFulfillmentRequest {
            order_id: order_id.into(),
            shipment_id: "100002369153".into(),
            items: vec![line(a, "s1"), line(b, "s1")],
            request_id: "dup-sid-1".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    let capture = app
        .charges
        .capture_items(pb::CaptureItemsRequest {
            order_id: order_id.into(),
            shipment_id: "100002369153".into(),
            items: [a, b]
                .iter()
                .map(|id| pb::ChargeItem {
                    item_id: (*id).into(),
                    quantity: 1,
                    shipment_item_id: "s1".into(),
                })
                .collect(),
            request_id: "dup-sid-2".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();

    for status in [&create, &capture] {
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        let fields: Vec<_> = status
            .get_details_bad_request()
            .unwrap()
            .field_violations
            .into_iter()
            .map(|v| v.field)
            .collect();
        assert_eq!(fields, ["items[1].shipment_item_id"]);
    }
    assert!(
        dr.control
            .requests(Some("POST"), Some("/fulfillments"))
            .await
            .unwrap()
            .is_empty(),
        "nothing reached DR"
    );
    assert!(fulfillments_held(&dr, KeyMode::Test).await.is_empty());

    // One shipment item id each: one fulfillment, both lines captured.
    app.fulfillments
        .create_fulfillment(pb::CreateFulfillmentRequest {
            order_id: order_id.into(),
            shipment_id: "100002369153".into(),
            items: vec![line(a, "s1"), line(b, "s2")],
            request_id: "dup-sid-3".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(fulfillments_held(&dr, KeyMode::Test).await.len(), 1);
    app.stop().await;
    dr.sandbox.shutdown().await;
}

/// GetOrder through the gateway.
async fn get_order(app: &mut crate::helpers::TestApp, order_id: &str) -> pb::Order {
    app.fulfillments
        .get_order(pb::GetOrderRequest {
            key: Some(pb::get_order_request::Key::OrderId(order_id.into())),
        })
        .await
        .unwrap()
        .into_inner()
        .order
        .unwrap()
}

#[tokio::test]
async fn orders_in_review_pending_payment_blocked_or_cancelled_refuse_fulfillment_and_move_no_money(
) {
    let dr = spawn_sandbox().await;
    let mut app = spawn_app(&dr.base_url()).await;
    // (state, DR code → ErrorInfo reason, fraud state, charge state)
    let cases = [
        (
            "in_review",
            "ORDER_NOT_SUBMITTED",
            "review_opened",
            "capturable",
        ),
        (
            "pending_payment",
            "ORDER_NOT_SUBMITTED",
            "passed",
            "pending",
        ),
        ("blocked", "INVALID_STATE", "blocked", "failed"),
        ("cancelled", "INVALID_STATE", "passed", "cancelled"),
    ];
    let mut in_review = None;
    for (state, reason, fraud_state, charge_state) in cases {
        let order = dr
            .control
            .create_order(json!({"state": state, "items": [{"quantity": 2, "amount": "20.00"}]}))
            .await
            .unwrap();
        let (order_id, item_id) = (
            order["id"].as_str().unwrap().to_owned(),
            order["items"][0]["id"].as_str().unwrap().to_owned(),
        );
        let read = get_order(&mut app, &order_id).await;
        assert_eq!(
            (read.state.as_str(), read.fraud_state.as_str()),
            (state, fraud_state)
        );
        assert_eq!(read.charges[0].state, charge_state, "{state}");

        let capture = app
            .fulfillments
            .create_fulfillment(fulfill(&order_id, &item_id, 1, &format!("{state}-1")))
            .await
            .unwrap_err();
        let cancel = app
            .charges
            .cancel_items(pb::CancelItemsRequest {
                order_id: order_id.clone(),
                items: vec![pb::ChargeItem {
                    item_id: item_id.clone(),
                    quantity: 1,
                    ..Default::default()
                }],
                request_id: format!("{state}-2"),
                ..Default::default()
            })
            .await
            .unwrap_err();
        for status in [capture, cancel] {
            assert_eq!(
                status.code(),
                Code::FailedPrecondition,
                "{state}: {status:?}"
            );
            assert_eq!(status.get_details_error_info().unwrap().reason, reason);
            let violation = &status
                .get_details_precondition_failure()
                .unwrap()
                .violations[0];
            assert_eq!(violation.subject, "orderId");
        }
        if state == "in_review" {
            in_review = Some((order_id, item_id));
        }
    }
    assert!(
        fulfillments_held(&dr, KeyMode::Test).await.is_empty(),
        "no state let money move"
    );

    // Once the review passes the order is accepted and fulfils once.
    let (order_id, item_id) = in_review.unwrap();
    dr.control.accept_order(&order_id).await.unwrap();
    app.fulfillments
        .create_fulfillment(fulfill(&order_id, &item_id, 1, "in_review-accepted"))
        .await
        .unwrap();
    let read = get_order(&mut app, &order_id).await;
    assert_eq!(
        (read.state.as_str(), read.fraud_state.as_str()),
        ("accepted", "passed")
    );
    assert_eq!(read.items[0].fulfilled_quantity, 1);
    assert_eq!(fulfillments_held(&dr, KeyMode::Test).await.len(), 1);
    app.stop().await;
    dr.sandbox.shutdown().await;
}

#[tokio::test]
async fn get_order_shows_fraud_state_review_opened_during_a_dispute_and_passed_after() {
    let dr = spawn_sandbox().await;
    let order = dr
        .control
        .create_order(json!({"items": [{"quantity": 1, "amount": "0.32"}]}))
        .await
        .unwrap();
    let order_id = order["id"].as_str().unwrap();
    let mut app = spawn_app(&dr.base_url()).await;
    assert_eq!(get_order(&mut app, order_id).await.fraud_state, "passed");

    dr.control.open_dispute(order_id).await.unwrap();
    let disputed = get_order(&mut app, order_id).await;
    assert_eq!(
        (disputed.state.as_str(), disputed.fraud_state.as_str()),
        ("dispute", "review_opened")
    );
    let review_opened = disputed.fraud_state_transitions["review_opened"];
    assert_eq!(
        Some(review_opened),
        disputed.state_transitions.get("dispute").copied(),
        "the review opens with the dispute"
    );

    dr.control.resolve_dispute(order_id).await.unwrap();
    let resolved = get_order(&mut app, order_id).await;
    assert_eq!(
        (resolved.state.as_str(), resolved.fraud_state.as_str()),
        ("accepted", "passed")
    );
    assert_eq!(
        resolved.fraud_state_transitions["review_opened"], review_opened,
        "the review stays in the history"
    );
    assert!(resolved.fraud_state_transitions.contains_key("passed"));
    app.stop().await;
    dr.sandbox.shutdown().await;
}
