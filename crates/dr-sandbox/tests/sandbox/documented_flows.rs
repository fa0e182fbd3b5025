//! One test per flow of DR's documentation pages ("Capturing and cancelling charges",
//! "Payment reauthorizations", "Applying store credit", "Disputes and chargebacks"),
//! against the HTTP surface.

use dr_sandbox::{
    ChargebackSpec, ChargebackType, ControlError, OperationState, RefundLineSpec, RefundSpec,
    SandboxConfig, SettleMode,
};
use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{num, TestSandbox};

/// The "Capturing and cancelling charges" page's order: 2 × Widget for 20.00, tax 1.61, shipping 5.00 + 0.40 tax = 27.01.
fn capturing_page_order() -> serde_json::Value {
    json!({
        "upstreamId": "up-000",
        "email": "jdoe@example.com",
        "shipTo": {"name": "Chase Marshall", "address": {"line1": "1234 Any Road W", "city": "Minneapolis", "postalCode": "55401", "state": "MN", "country": "US"}},
        "items": [{"skuId": "eecf60da-b082-47eb-9a3f-602820f22ed9", "productName": "Widget", "quantity": 2, "amount": 20.0, "tax": "1.61", "taxRate": 0.08025}],
        "shipping": {"amount": 5, "tax": "0.40"}
    })
}

#[tokio::test]
async fn capturing_page_capture_cancel_fulfilled_complete_and_409_afterwards() {
    let sb = TestSandbox::start().await;
    let order = sb.order(capturing_page_order()).await;
    assert_eq!(num(&order["totalAmount"]), "27.01");
    assert_eq!(num(&order["subtotal"]), "25.0");
    assert_eq!(num(&order["totalTax"]), "2.01");
    assert_eq!(order["state"], "accepted");
    let oid = order["id"].as_str().unwrap().to_owned();
    let item = order["items"][0]["id"].as_str().unwrap().to_owned();
    let charge_id = order["payment"]["charges"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();

    // Fulfill one unit: quantity as a string, like the DR docs send it.
    let (status, ful) = sb
        .fulfill(json!({"orderId": oid, "items": [{"itemId": item, "quantity": "1"}]}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{ful}");
    assert_eq!(ful["items"][0]["quantity"], 1);
    assert_eq!(ful["items"][0]["cancelQuantity"], 0);
    assert_eq!(
        ful["items"][0]["skuId"],
        "eecf60da-b082-47eb-9a3f-602820f22ed9"
    );
    let (_, charge) = sb.get(&format!("/charges/{charge_id}")).await;
    assert_eq!(
        charge["state"], "capturable",
        "partially captured charge stays capturable"
    );
    assert_eq!(num(&charge["captures"][0]["amount"]), "13.51"); // 27.01 / 2 rounded half up
    assert_eq!(charge["captures"][0]["state"], "complete");
    assert_eq!(charge["captures"][0]["fulfillmentId"], ful["id"]);

    // Cancel the other: the last unit takes the remainder.
    let (status, _) = sb
        .fulfill(json!({"orderId": oid, "items": [{"itemId": item, "cancelQuantity": 1}]}))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (_, charge) = sb.get(&format!("/charges/{charge_id}")).await;
    assert_eq!(num(&charge["cancels"][0]["amount"]), "13.5");
    assert_eq!(charge["state"], "complete");

    let (_, order) = sb.get(&format!("/orders/{oid}")).await;
    assert_eq!(order["state"], "complete");
    assert_eq!(num(&order["capturedAmount"]), "13.51");
    assert_eq!(num(&order["cancelledAmount"]), "13.5");
    assert_eq!(num(&order["availableToRefundAmount"]), "13.51");
    assert_eq!(order["items"][0]["state"], "fulfilled");
    assert!(order["stateTransitions"]["fulfilled"].is_string());
    assert!(order["stateTransitions"]["complete"].is_string());

    let types = sb.event_types_for(&oid).await;
    let expected = [
        "order.accepted",
        "fulfillment.created",
        "order.charge.capture.pending",
        "order.charge.capture.complete",
        "fulfillment.created",
        "order.charge.cancel.pending",
        "order.fulfilled",
        "order.charge.cancel.complete",
        "order.complete",
    ];
    assert_eq!(types, expected);

    // Any further POST: the "Capturing and cancelling charges" page's exact body.
    let (status, body) = sb
        .fulfill(json!({"orderId": oid, "items": [{"itemId": item, "quantity": 1}]}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(
        body,
        json!({"type": "conflict", "errors": [{"code": "order_fulfilled", "parameter": "orderId", "message": format!("Resource '{oid}' is fulfilled.")}]})
    );
    sb.stop().await;
}

#[tokio::test]
async fn capturing_page_failed_capture_shows_failure_message_only_via_get_charge() {
    let sb = TestSandbox::start().await;
    let order = sb
        .order(json!({"items": [{"quantity": 1, "amount": "37.81"}], "failCaptures": true}))
        .await;
    let oid = order["id"].as_str().unwrap();
    let item = order["items"][0]["id"].as_str().unwrap();
    let (status, ful) = sb
        .fulfill(json!({"orderId": oid, "items": [{"itemId": item, "quantity": 1}]}))
        .await;
    assert_eq!(status, StatusCode::CREATED);

    let events = sb.events_for(oid).await;
    let failed = events
        .iter()
        .find(|e| e["type"] == "order.charge.capture.failed")
        .expect("capture.failed event");
    let capture = &failed["data"]["object"]["captures"][0];
    assert_eq!(capture["state"], "failed");
    assert_eq!(capture["failureCode"], "failed-request");
    assert_eq!(capture["fulfillmentId"], ful["id"]);
    assert!(
        capture.get("failureMessage").is_none(),
        "the event carries no failureMessage"
    );

    // Look-up procedure of DR's "Capturing and cancelling charges" page: charge id from the event, capture id → failureMessage.
    let charge_id = failed["data"]["object"]["id"].as_str().unwrap();
    let capture_id = capture["id"].as_str().unwrap();
    let (status, charge) = sb.get(&format!("/charges/{charge_id}")).await;
    assert_eq!(status, StatusCode::OK);
    let found = charge["captures"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == capture_id)
        .unwrap();
    assert_eq!(found["failureMessage"], "Failed to operate on charge");
    assert_eq!(charge["state"], "capturable");

    let (_, order) = sb.get(&format!("/orders/{oid}")).await;
    assert_eq!(
        order["state"], "fulfilled",
        "a failed capture keeps the order from completing"
    );
    assert_eq!(num(&order["capturedAmount"]), "0.0");
    sb.stop().await;
}

#[tokio::test]
async fn reauthorizations_page_risk_tolerant_expired_authorization_still_captures() {
    let sb = TestSandbox::start_with(SandboxConfig {
        settle: SettleMode::Stepped,
        ..Default::default()
    })
    .await;
    let order = sb.order(json!({"items": [{"quantity": 2, "amount": "27.01"}], "riskMode": "tolerant", "authorizationExpired": true})).await;
    let oid = order["id"].as_str().unwrap();
    let item = order["items"][0]["id"].as_str().unwrap();
    let (status, ful) = sb
        .fulfill(json!({"orderId": oid, "items": [{"itemId": item, "quantity": "2"}], "trackingCompany": "Fedex", "trackingNumber": "Z10100002632653", "trackingUrl": "http://www.fedex.com/Tracking?tracknumbers=Z10100002632653"}))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(ful["trackingCompany"], "Fedex");

    let events = sb.events_for(oid).await;
    let pending = events
        .iter()
        .find(|e| e["type"] == "order.charge.capture.pending")
        .expect("capture.pending");
    assert_eq!(
        pending["data"]["object"]["state"], "processing",
        "Payment reauthorizations: a full pending capture shows processing"
    );
    assert_eq!(pending["data"]["object"]["captures"][0]["state"], "pending");
    assert_eq!(
        num(&pending["data"]["object"]["captures"][0]["amount"]),
        "27.01"
    );

    let settled = sb.control().settle().await.unwrap();
    assert_eq!(settled[0].state, OperationState::Complete);
    let types = sb.event_types_for(oid).await;
    assert!(types.contains(&"order.charge.capture.complete".to_owned()));
    assert_eq!(types.last().map(String::as_str), Some("order.complete"));
    sb.stop().await;
}

#[tokio::test]
async fn reauthorizations_page_risk_averse_expired_authorization_is_409_with_reauth_failed_event() {
    let sb = TestSandbox::start().await;
    let order = sb.order(json!({"items": [{"quantity": 1, "amount": "5.0", "tax": "0.37"}], "riskMode": "averse", "authorizationExpired": true})).await;
    let oid = order["id"].as_str().unwrap();
    let item = order["items"][0]["id"].as_str().unwrap();
    let (status, body) = sb
        .fulfill(json!({"orderId": oid, "items": [{"itemId": item, "quantity": "1"}]}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    // The "Payment reauthorizations" page's body exactly: no `type`, `description` instead of `message`.
    assert_eq!(
        body,
        json!({"errors": [{"code": "payment_authorization_failed", "description": "Fulfillment cannot be processed because the payment authorization has expired", "parameter": "orderId"}]})
    );
    let events = sb.events_for(oid).await;
    let reauth = events
        .iter()
        .find(|e| e["type"] == "order.charge.reauth.failed")
        .expect("reauth.failed event");
    assert_eq!(
        reauth["data"]["object"]["id"], oid,
        "data.object is the order"
    );
    assert!(reauth["data"]["object"]["payment"]["charges"].is_array());
    let (_, list) = sb.get(&format!("/fulfillments?orderId={oid}")).await;
    assert_eq!(
        list["data"].as_array().unwrap().len(),
        0,
        "nothing was fulfilled"
    );
    sb.stop().await;
}

#[tokio::test]
async fn reauthorizations_page_risk_averse_authorization_expires_when_the_clock_passes_it() {
    let sb = TestSandbox::start().await;
    let control = sb.control();
    let now = control.clock().await.unwrap().now;
    let expires = (now + chrono::Duration::hours(1)).to_rfc3339();
    let order = sb.order(json!({"items": [{"quantity": 2, "amount": "10"}], "riskMode": "averse", "authorizationExpiresAt": expires})).await;
    let oid = order["id"].as_str().unwrap();
    let item = order["items"][0]["id"].as_str().unwrap();
    let (status, _) = sb
        .fulfill(json!({"orderId": oid, "items": [{"itemId": item, "quantity": 1}]}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "still valid");
    // 200 OK: the client accepts nothing else.
    let clock = control.advance_clock(7200).await.unwrap();
    assert_eq!(clock.offset_seconds, 7200);
    let (status, body) = sb
        .fulfill(json!({"orderId": oid, "items": [{"itemId": item, "quantity": 1}]}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["errors"][0]["code"], "payment_authorization_failed");
    // Cancelling needs no authorization.
    let (status, _) = sb
        .fulfill(json!({"orderId": oid, "items": [{"itemId": item, "cancelQuantity": 1}]}))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    sb.stop().await;
}

#[tokio::test]
async fn store_credit_page_store_credit_is_captured_first_with_exact_amounts() {
    let sb = TestSandbox::start().await;
    // 2 units for 20.00, shipping 5.00, tax 1.89 → 26.89; store credit 11.00, card 15.89.
    let order = sb
        .order(json!({"items": [{"quantity": 2, "amount": "20.0", "tax": "1.51"}], "shipping": {"amount": "5.0", "tax": "0.38"}, "charges": [{"type": "customerCredit", "amount": "11.0"}, {"type": "creditCard"}]}))
        .await;
    assert_eq!(num(&order["totalAmount"]), "26.89");
    let charges = order["payment"]["charges"].as_array().unwrap();
    assert_eq!(num(&charges[0]["amount"]), "11.0");
    assert_eq!(num(&charges[1]["amount"]), "15.89");
    assert_eq!(order["payment"]["sources"][0]["type"], "customerCredit");
    assert_eq!(order["payment"]["sources"][1]["type"], "creditCard");
    let (credit_id, card_id) = (
        charges[0]["id"].as_str().unwrap(),
        charges[1]["id"].as_str().unwrap(),
    );
    let oid = order["id"].as_str().unwrap();
    let item = order["items"][0]["id"].as_str().unwrap();

    let (status, ful) = sb
        .fulfill(json!({"orderId": oid, "items": [{"itemId": item, "quantity": 1}]}))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(ful["chargeOperationIds"].as_array().unwrap().len(), 2);
    let (_, credit) = sb.get(&format!("/charges/{credit_id}")).await;
    let (_, card) = sb.get(&format!("/charges/{card_id}")).await;
    assert_eq!(num(&credit["captures"][0]["amount"]), "11.0");
    assert_eq!(credit["state"], "complete");
    assert_eq!(num(&card["captures"][0]["amount"]), "2.45");
    assert_eq!(card["state"], "capturable");
    let (_, o) = sb.get(&format!("/orders/{oid}")).await;
    assert_eq!(num(&o["capturedAmount"]), "13.45");

    // The second unit takes the remainder: 13.44, all from the card.
    sb.fulfill(json!({"orderId": oid, "items": [{"itemId": item, "quantity": 1}]}))
        .await;
    let (_, card) = sb.get(&format!("/charges/{card_id}")).await;
    assert_eq!(num(&card["captures"][1]["amount"]), "13.44");
    assert_eq!(card["state"], "complete");
    let (_, o) = sb.get(&format!("/orders/{oid}")).await;
    assert_eq!(num(&o["capturedAmount"]), "26.89");
    assert_eq!(num(&o["availableToRefundAmount"]), "26.89");
    assert_eq!(o["state"], "complete");
    sb.stop().await;
}

#[tokio::test]
async fn store_credit_page_cancel_takes_the_card_before_store_credit() {
    let sb = TestSandbox::start().await;
    let order = sb.order(json!({"items": [{"quantity": 2, "amount": "20.0"}], "charges": [{"type": "creditCard", "amount": "15.0"}, {"type": "customerCredit", "amount": "5.0"}]})).await;
    let oid = order["id"].as_str().unwrap();
    let item = order["items"][0]["id"].as_str().unwrap();
    let card_id = order["payment"]["charges"][0]["id"].as_str().unwrap();
    let credit_id = order["payment"]["charges"][1]["id"].as_str().unwrap();
    let (status, _) = sb
        .fulfill(json!({"orderId": oid, "items": [{"itemId": item, "cancelQuantity": 1}]}))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (_, card) = sb.get(&format!("/charges/{card_id}")).await;
    let (_, credit) = sb.get(&format!("/charges/{credit_id}")).await;
    assert_eq!(num(&card["cancels"][0]["amount"]), "10.0");
    assert_eq!(card["state"], "capturable");
    assert!(
        credit.get("cancels").is_none(),
        "store credit untouched: {credit}"
    );
    assert_eq!(credit["state"], "capturable");
    let (_, o) = sb.get(&format!("/orders/{oid}")).await;
    assert_eq!(num(&o["cancelledAmount"]), "10.0");
    sb.stop().await;
}

#[tokio::test]
async fn disputes_page_dispute_blocks_fulfillments_until_resolved() {
    let sb = TestSandbox::start().await;
    let order = sb.simple_order(1, "0.32").await;
    let oid = order["id"].as_str().unwrap();
    let item = order["items"][0]["id"].as_str().unwrap();
    let control = sb.control();
    // 200 OK: the client accepts nothing else.
    let disputed = control.open_dispute(oid).await.unwrap();
    assert_eq!(disputed["state"], "dispute");
    assert!(disputed["stateTransitions"]["dispute"].is_string());

    let (status, body) = sb
        .fulfill(json!({"orderId": oid, "items": [{"itemId": item, "quantity": 1}]}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(
        body,
        json!({"type": "conflict", "errors": [{"code": "order_not_submitted", "parameter": "orderId", "message": format!("Order '{oid}' has not been submitted.")}]})
    );

    assert_eq!(disputed["fraudState"], "review_opened");
    assert!(disputed["fraudStateTransitions"]["review_opened"].is_string());
    assert!(disputed["fraudStateTransitions"]["passed"].is_string());
    let events = sb.events_for(oid).await;
    assert_eq!(
        events[1]["data"]["object"]["fraudState"], "review_opened",
        "order.dispute shows the review"
    );

    let resolved = control.resolve_dispute(oid).await.unwrap();
    assert_eq!(
        resolved["state"], "accepted",
        "back to the pre-dispute state"
    );
    assert_eq!(
        resolved["fraudState"], "passed",
        "and the fraud state with it"
    );
    assert!(
        resolved["fraudStateTransitions"]["review_opened"].is_string(),
        "the review stays in the history"
    );
    let types = sb.event_types_for(oid).await;
    assert_eq!(
        types,
        ["order.accepted", "order.dispute", "order.dispute.resolved"]
    );
    let events = sb.events_for(oid).await;
    assert_eq!(events[1]["data"]["previousAttributes"]["state"], "accepted");

    let (status, _) = sb
        .fulfill(json!({"orderId": oid, "items": [{"itemId": item, "quantity": 1}]}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "fulfillments work again");
    sb.stop().await;
}

#[tokio::test]
async fn a_risk_averse_expired_authorization_that_dr_renews_captures_as_the_reauthorizations_page_shows(
) {
    let sb = TestSandbox::start_with(SandboxConfig {
        settle: SettleMode::Stepped,
        ..Default::default()
    })
    .await;
    let order = sb
        .order(
            json!({"items": [{"quantity": 2, "amount": "510.0"}], "riskMode": "averse",
            "authorizationExpired": true, "reauthorization": "succeeds"}),
        )
        .await;
    let oid = order["id"].as_str().unwrap();
    let item = order["items"][0]["id"].as_str().unwrap();

    let (status, ful) = sb
        .fulfill(json!({"orderId": oid, "items": [{"itemId": item, "quantity": "1"}]}))
        .await;
    assert_eq!(
        status,
        StatusCode::CREATED,
        "the new authorization lets it through: {ful}"
    );
    let types = sb.event_types_for(oid).await;
    assert_eq!(
        types,
        [
            "order.accepted",
            "fulfillment.created",
            "order.charge.capture.pending"
        ]
    );
    let pending = &sb.events_for(oid).await[2]["data"]["object"];
    assert_eq!(pending["captures"][0]["state"], "pending");
    assert_eq!(num(&pending["captures"][0]["amount"]), "255.0");
    assert_eq!(pending["captures"][0]["fulfillmentId"], ful["id"]);
    let settled = sb.control().settle().await.unwrap();
    assert_eq!(settled[0].state, OperationState::Complete);
    assert!(sb
        .event_types_for(oid)
        .await
        .contains(&"order.charge.capture.complete".to_owned()));

    // Six days on, the second unit captures as well, with no reauthorization failure.
    sb.control().advance_clock(6 * 24 * 3600).await.unwrap();
    let (status, _) = sb
        .fulfill(json!({"orderId": oid, "items": [{"itemId": item, "quantity": 1}]}))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert!(!sb
        .event_types_for(oid)
        .await
        .contains(&"order.charge.reauth.failed".to_owned()));
    sb.control().settle().await.unwrap();
    let (_, o) = sb.get(&format!("/orders/{oid}")).await;
    assert_eq!(num(&o["capturedAmount"]), "510.0");
    sb.stop().await;
}

#[tokio::test]
async fn orders_created_in_review_pending_payment_blocked_or_cancelled_refuse_fulfillments() {
    let sb = TestSandbox::start().await;
    // (state, event, fraudState, charge state, refusal code)
    let cases = [
        (
            "in_review",
            "order.review_opened",
            "review_opened",
            "capturable",
            "order_not_submitted",
        ),
        (
            "pending_payment",
            "order.pending_payment",
            "passed",
            "pending",
            "order_not_submitted",
        ),
        (
            "blocked",
            "order.blocked",
            "blocked",
            "failed",
            "invalid_state",
        ),
        (
            "cancelled",
            "order.cancelled",
            "passed",
            "cancelled",
            "invalid_state",
        ),
    ];
    for (state, event, fraud, charge_state, code) in cases {
        let order = sb
            .order(json!({"state": state, "items": [{"quantity": 2, "amount": "20.00"}]}))
            .await;
        let oid = order["id"].as_str().unwrap();
        let item = order["items"][0]["id"].as_str().unwrap();
        assert_eq!(order["state"], state);
        assert!(order["stateTransitions"][state].is_string(), "{state}");
        assert_eq!(order["fraudState"], fraud, "{state}");
        assert_eq!(
            order["payment"]["charges"][0]["state"], charge_state,
            "{state}"
        );
        assert_eq!(sb.event_types_for(oid).await, [event], "{state}");
        for body in [
            json!({"orderId": oid, "items": [{"itemId": item, "quantity": 1}]}),
            json!({"orderId": oid, "items": [{"itemId": item, "cancelQuantity": 1}]}),
        ] {
            let (status, err) = sb.fulfill(body).await;
            assert_eq!(status, StatusCode::CONFLICT, "{state}: {err}");
            assert_eq!(err["type"], "conflict");
            assert_eq!(err["errors"][0]["code"], code, "{state}");
            assert_eq!(err["errors"][0]["parameter"], "orderId");
        }
        let (_, list) = sb.get(&format!("/fulfillments?orderId={oid}")).await;
        assert_eq!(list["data"], json!([]), "{state}: nothing fulfilled");
    }
    // A cancelled order is cancelled in full.
    let cancelled = sb
        .order(json!({"state": "cancelled", "items": [{"quantity": 2, "amount": "20.00"}]}))
        .await;
    assert_eq!(num(&cancelled["cancelledAmount"]), "20.0");
    assert_eq!(cancelled["items"][0]["state"], "cancelled");
    assert!(cancelled["payment"]["charges"][0]["cancels"][0]
        .get("fulfillmentId")
        .is_none());
    sb.stop().await;
}

#[tokio::test]
async fn an_order_in_review_or_pending_payment_can_be_accepted_and_then_fulfilled() {
    let sb = TestSandbox::start().await;
    let control = sb.control();
    for state in ["in_review", "pending_payment"] {
        let order = sb
            .order(json!({"state": state, "items": [{"quantity": 1, "amount": "9.99"}]}))
            .await;
        let oid = order["id"].as_str().unwrap();
        let item = order["items"][0]["id"].as_str().unwrap();
        let accepted = control.accept_order(oid).await.unwrap();
        assert_eq!(accepted["state"], "accepted");
        assert_eq!(accepted["fraudState"], "passed");
        assert_eq!(accepted["payment"]["charges"][0]["state"], "capturable");
        let events = sb.events_for(oid).await;
        assert_eq!(events.last().unwrap()["type"], "order.accepted");
        assert_eq!(
            events.last().unwrap()["data"]["previousAttributes"]["state"],
            state
        );
        let (status, _) = sb
            .fulfill(json!({"orderId": oid, "items": [{"itemId": item, "quantity": 1}]}))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{state}");
        assert!(matches!(
            control.accept_order(oid).await,
            Err(dr_sandbox::ControlError::Status { status: 409, .. })
        ));
    }
    sb.stop().await;
}

#[tokio::test]
async fn an_order_read_with_a_version_up_to_2021_02_23_has_the_legacy_store_credit_shape() {
    let sb = TestSandbox::start().await;
    let order = sb
        .order(json!({"upstreamId": "legacy-1", "items": [{"quantity": 2, "amount": "20.0", "tax": "1.51"}],
            "shipping": {"amount": "5.0", "tax": "0.38"},
            "charges": [{"type": "customerCredit", "amount": "11.0"}, {"type": "creditCard"}]}))
        .await;
    let oid = order["id"].as_str().unwrap();

    for version in ["2020-09-30", "2020-12-17", "2021-02-23"] {
        let (status, legacy) = read_versioned(&sb, version, &format!("/orders/{oid}")).await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            legacy.get("payment").is_none(),
            "{version}: no payment object"
        );
        assert_eq!(num(&legacy["creditAmount"]), "11.0");
        assert_eq!(legacy["sources"][0]["type"], "customerCredit");
        assert_eq!(legacy["sources"][1]["type"], "creditCard");
        assert_eq!(num(&legacy["charges"][0]["amount"]), "11.0");
        assert_eq!(num(&legacy["charges"][1]["amount"]), "15.89");
        assert_eq!(legacy["charges"][1]["sourceId"], legacy["sources"][1]["id"]);
        let (_, list) = read_versioned(&sb, version, "/orders?upstreamIds=legacy-1").await;
        assert!(
            list["data"][0]["charges"].is_array(),
            "{version}: lists too"
        );
    }
    for version in ["2021-03-23", "2021-12-13", "not-a-date"] {
        let (_, current) = read_versioned(&sb, version, &format!("/orders/{oid}")).await;
        assert!(current.get("charges").is_none(), "{version}");
        assert_eq!(current["payment"]["charges"].as_array().unwrap().len(), 2);
    }
    sb.stop().await;
}

/// A GET with `digitalriver-version: version`.
async fn read_versioned(
    sb: &TestSandbox,
    version: &str,
    path: &str,
) -> (StatusCode, serde_json::Value) {
    sb.send(
        sb.req(reqwest::Method::GET, path)
            .header("digitalriver-version", version),
    )
    .await
}

#[tokio::test]
async fn a_granted_chargeback_ends_the_dispute_and_cuts_available_to_refund() {
    let sb = TestSandbox::start().await;
    let control = sb.control();
    let order = sb
        .order(json!({"upstreamId": "221000297718", "items": [{"quantity": 1, "amount": "0.30", "tax": "0.02"}],
                      "billTo": {"name": "Jane Doe", "address": {"country": "US"}}}))
        .await;
    let oid = order["id"].as_str().unwrap();
    let item = order["items"][0]["id"].as_str().unwrap();
    sb.fulfill(json!({"orderId": oid, "items": [{"itemId": item, "quantity": 1}]}))
        .await;
    let not_disputed = control
        .grant_chargeback(oid, &ChargebackSpec::default())
        .await
        .unwrap_err();
    assert!(
        matches!(not_disputed, ControlError::Status { status: 409, .. }),
        "{not_disputed}"
    );
    control.open_dispute(oid).await.unwrap();
    let too_much = control
        .grant_chargeback(
            oid,
            &ChargebackSpec {
                amount: Some("0.33".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(too_much, ControlError::Status { status: 400, .. }));

    // The page's numbers: 0.32 captured, 0.21 still refundable after the chargeback.
    let granted = control
        .grant_chargeback(
            oid,
            &ChargebackSpec {
                amount: Some("0.11".into()),
                kind: ChargebackType::FraudChargeback,
                fee: Some("15.0".into()),
            },
        )
        .await
        .unwrap();
    assert_eq!(granted.order["state"], "complete", "the dispute ended");
    assert_eq!(granted.order["fraudState"], "passed");
    assert_eq!(num(&granted.order["availableToRefundAmount"]), "0.21");
    assert_eq!(num(&granted.order["capturedAmount"]), "0.32");
    let t = &granted.sales_transaction;
    assert_eq!(t["type"], "fraud_chargeback");
    assert_eq!(t["orderId"], oid);
    assert_eq!(t["orderUpstreamId"], "221000297718");
    assert_eq!(num(&t["amount"]), "0.11");
    assert_eq!(num(&t["payoutAmounts"]["transactionFees"]), "-15.0");
    assert_eq!(num(&t["payoutAmounts"]["payoutAmount"]), "-15.11");
    assert_eq!(t["paymentType"], "creditCard");
    assert_eq!(t["lineItemId"], item);
    let id = t["id"].as_str().unwrap();
    assert_eq!(id.split('_').map(str::len).collect::<Vec<_>>(), [10, 6, 10]);

    let (_, list) = sb.get("/events?limit=100").await;
    let mut events: Vec<_> = list["data"].as_array().unwrap().clone();
    events.reverse();
    let types: Vec<_> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    let tail = &types[types.len() - 4..];
    assert_eq!(
        tail,
        [
            "order.dispute",
            "order.dispute.resolved",
            "sales_transaction.created",
            "order.chargeback"
        ]
    );
    let objects: Vec<_> = events[events.len() - 2..]
        .iter()
        .map(|e| e["data"]["object"].clone())
        .collect();
    assert_eq!(
        objects[0], *t,
        "sales_transaction.created carries the transaction"
    );
    assert_eq!(objects[1], *t, "and so does order.chargeback");
    let (_, o) = sb.get(&format!("/orders/{oid}")).await;
    assert_eq!(num(&o["availableToRefundAmount"]), "0.21");
    sb.stop().await;
}

#[tokio::test]
async fn a_refund_recorded_on_a_charge_carries_the_charges_api_reference_fields() {
    let sb = TestSandbox::start().await;
    let control = sb.control();
    let order = sb
        .order(
            json!({"items": [{"skuId": "sku_9234276173", "quantity": 2, "amount": "20.00"}],
                      "shipping": {"amount": "5.95"}}),
        )
        .await;
    let oid = order["id"].as_str().unwrap();
    let item = order["items"][0]["id"].as_str().unwrap();
    let charge_id = order["payment"]["charges"][0]["id"].as_str().unwrap();
    let nothing_captured = control
        .record_refund(charge_id, &RefundSpec::of("1.00"))
        .await
        .unwrap_err();
    assert!(matches!(
        nothing_captured,
        ControlError::Status { status: 400, .. }
    ));
    sb.fulfill(json!({"orderId": oid, "items": [{"itemId": item, "quantity": 2}]}))
        .await;

    let charge = control
        .record_refund(
            charge_id,
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
    assert_eq!(charge["refunded"], true);
    let refund = &charge["refunds"][0];
    assert!(refund["id"].as_str().unwrap().starts_with("ref_"));
    assert!(refund["invoiceId"].is_string());
    assert_eq!(refund["orderId"], oid);
    assert_eq!(
        (refund["type"].clone(), refund["state"].clone()),
        (json!("shipping"), json!("complete"))
    );
    assert_eq!(num(&refund["amount"]), "5.95");
    assert_eq!(num(&refund["refundedAmount"]), "5.95");
    assert_eq!(refund["reason"], "requested_by_customer");
    assert_eq!(num(&refund["items"][0]["amount"]), "5.95");
    assert_eq!(refund["items"][0]["skuId"], "sku_9234276173");

    let charge = control
        .record_refund(
            charge_id,
            &RefundSpec::of("10.00").failing("expired_or_canceled_card"),
        )
        .await
        .unwrap();
    let failed = &charge["refunds"][1];
    assert_eq!(failed["state"], "failed");
    assert_eq!(failed["failureReason"], "expired_or_canceled_card");
    assert_eq!(num(&failed["refundedAmount"]), "0.0");
    let (_, o) = sb.get(&format!("/orders/{oid}")).await;
    assert_eq!(num(&o["refundedAmount"]), "5.95");
    assert_eq!(
        num(&o["availableToRefundAmount"]),
        "20.0",
        "25.95 captured, 5.95 refunded"
    );
    let too_much = control
        .record_refund(charge_id, &RefundSpec::of("20.01"))
        .await
        .unwrap_err();
    assert!(matches!(too_much, ControlError::Status { status: 400, .. }));
    let types = sb.event_types_for(oid).await;
    assert!(
        types.ends_with(&[
            "order.charge.refund.complete".to_owned(),
            "order.charge.refund.failed".to_owned()
        ]),
        "{types:?}"
    );
    sb.stop().await;
}
