//! Each RPC sends exactly the DR request it should and maps DR's answer back.

use dr_gateway::pb::v1 as pb;
use serde_json::json;
use wiremock::matchers::{body_json, header, method, path, query_param};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::helpers::{dr_fulfillment, spawn_app, API_KEY};

#[tokio::test]
async fn create_fulfillment_posts_dr_field_names_and_maps_the_result() {
    let dr = MockServer::start().await;
    let mut created = dr_fulfillment("ful_1", "231388420336", "158140150336", 2, 1);
    created["shipmentId"] = json!("100002369153");
    created["trackingCompany"] = json!("Fedex");
    created["trackingNumber"] = json!("Z10100002632653");
    created["trackingUrl"] = json!("http://www.fedex.com/Tracking?tracknumbers=Z10100002632653");
    created["items"][0]["shipmentItemId"] = json!("si-1");
    created["metadata"] = json!({"requestId": "req-42", "warehouse": "MSP", "priority": 3});
    Mock::given(method("POST"))
        .and(path("/fulfillments"))
        .and(header("authorization", format!("Bearer {API_KEY}").as_str()))
        .and(header("content-type", "application/json"))
        .and(header("upstream-id", "req-42"))
        .and(body_json(json!({
            "orderId": "231388420336",
            "items": [{"itemId": "158140150336", "quantity": 2, "cancelQuantity": 1, "shipmentItemId": "si-1"}],
            "shipmentId": "100002369153",
            "trackingCompany": "Fedex",
            "trackingNumber": "Z10100002632653",
            "trackingUrl": "http://www.fedex.com/Tracking?tracknumbers=Z10100002632653",
            "metadata": {"requestId": "req-42", "warehouse": "MSP"}
        })))
        .respond_with(ResponseTemplate::new(201).set_body_json(&created))
        .expect(1)
        .mount(&dr)
        .await;
    // Before its first POST a request id is looked up in DR (every page).
    Mock::given(method("GET"))
        .and(path("/fulfillments"))
        .and(query_param("orderId", "231388420336"))
        .and(query_param("limit", "100"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"hasMore": false, "data": []})),
        )
        .expect(1)
        .mount(&dr)
        .await;
    let mut app = spawn_app(&dr.uri()).await;

    let response = app
        .fulfillments
        .create_fulfillment(pb::CreateFulfillmentRequest {
            order_id: "231388420336".into(),
            items: vec![pb::CreateFulfillmentItem {
                item_id: "158140150336".into(),
                quantity: 2,
                cancel_quantity: 1,
                shipment_item_id: "si-1".into(),
            }],
            shipment_id: "100002369153".into(),
            tracking: Some(pb::Tracking {
                company: "Fedex".into(),
                number: "Z10100002632653".into(),
                url: "http://www.fedex.com/Tracking?tracknumbers=Z10100002632653".into(),
            }),
            metadata: [("warehouse".to_owned(), "MSP".to_owned())].into(),
            request_id: "req-42".into(),
        })
        .await
        .expect("created")
        .into_inner();

    let f = response.fulfillment.unwrap();
    assert_eq!(f.id, "ful_1");
    assert_eq!(f.order_id, "231388420336");
    assert_eq!(f.items[0].quantity, 2);
    assert_eq!(f.items[0].cancel_quantity, 1);
    assert_eq!(f.items[0].sku_id, "b0fd7334");
    assert_eq!(f.items[0].shipment_item_id, "si-1");
    assert_eq!(f.shipment_id, "100002369153");
    assert_eq!(f.tracking.unwrap().company, "Fedex");
    assert_eq!(f.metadata["priority"], "3");
    assert_eq!(f.create_time.unwrap().seconds, 1_656_698_158);
    app.stop().await;
}

#[tokio::test]
async fn get_fulfillment_includes_order_details() {
    let dr = MockServer::start().await;
    let mut body = dr_fulfillment("ful_2", "231388760336", "158140510336", 2, 0);
    body["orderDetails"] = json!({
        "id": "231388760336", "currency": "USD", "totalAmount": 27.01, "state": "fulfilled",
        "stateTransitions": {"accepted": "2022-07-01T18:30:47Z", "fulfilled": "2022-07-01T18:30:59Z"},
        "shipTo": {"name": "Chase Marshall", "address": {"line1": "1234 Any Road W", "city": "Minneapolis", "postalCode": "55401", "state": "MN", "country": "US"}},
        "items": [{"id": "158140510336", "skuId": "eecf", "productDetails": {"name": "Widget"}, "amount": 20.0, "quantity": 2, "state": "fulfilled"}]
    });
    Mock::given(method("GET"))
        .and(path("/fulfillments/ful_2"))
        .respond_with(ResponseTemplate::new(200).set_body_json(&body))
        .expect(1)
        .mount(&dr)
        .await;
    let mut app = spawn_app(&dr.uri()).await;

    let f = app
        .fulfillments
        .get_fulfillment(pb::GetFulfillmentRequest {
            fulfillment_id: "ful_2".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .fulfillment
        .unwrap();

    let details = f.order_details.expect("order_details");
    let total = details.total_amount.unwrap();
    assert_eq!(
        (total.currency_code.as_str(), total.units, total.nanos),
        ("USD", 27, 10_000_000)
    );
    assert_eq!(details.items[0].product_name, "Widget");
    assert_eq!(
        details.ship_to.unwrap().address.unwrap().city,
        "Minneapolis"
    );
    assert!(details.state_transitions.contains_key("fulfilled"));
    app.stop().await;
}

#[tokio::test]
async fn list_fulfillments_maps_filters_and_pages_with_an_opaque_token() {
    let dr = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/fulfillments"))
        .and(query_param("orderId", "123"))
        .and(query_param("limit", "2"))
        .and(query_param("trackingCompany", "UPS"))
        .and(query_param("createdTime[gte]", "2022-07-01T00:00:00Z"))
        .and(wiremock::matchers::query_param_is_missing("startingAfter"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "hasMore": true,
            "data": [dr_fulfillment("ful_b", "123", "i", 1, 0), dr_fulfillment("ful_a", "123", "i", 1, 0)]
        })))
        .expect(1)
        .mount(&dr)
        .await;
    Mock::given(method("GET"))
        .and(path("/fulfillments"))
        .and(query_param("startingAfter", "ful_a"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "hasMore": false, "data": [dr_fulfillment("ful_0", "123", "i", 0, 1)]
        })))
        .expect(1)
        .mount(&dr)
        .await;
    let mut app = spawn_app(&dr.uri()).await;
    let request = pb::ListFulfillmentsRequest {
        order_id: "123".into(),
        tracking_company: "UPS".into(),
        create_time_start: Some(prost_types::Timestamp {
            seconds: 1_656_633_600,
            nanos: 0,
        }),
        page_size: 2,
        ..Default::default()
    };

    let first = app
        .fulfillments
        .list_fulfillments(request.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.fulfillments.len(), 2);
    assert!(!first.next_page_token.is_empty());
    assert!(!first.next_page_token.contains("ful_a"), "token is opaque");

    let second = app
        .fulfillments
        .list_fulfillments(pb::ListFulfillmentsRequest {
            page_token: first.next_page_token.clone(),
            ..request.clone()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second.fulfillments[0].id, "ful_0");
    assert_eq!(second.next_page_token, "");

    // a token used with other filters is refused before reaching DR
    let err = app
        .fulfillments
        .list_fulfillments(pb::ListFulfillmentsRequest {
            page_token: first.next_page_token,
            order_id: "other".into(),
            ..request
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    app.stop().await;
}

#[tokio::test]
async fn update_tracking_posts_to_the_fulfillment() {
    let dr = MockServer::start().await;
    let mut updated = dr_fulfillment("ful_8b9c", "1", "225220780336", 1, 0);
    updated["trackingCompany"] = json!("UPS");
    updated["trackingNumber"] = json!("Z1010");
    Mock::given(method("POST"))
        .and(path("/fulfillments/ful_8b9c"))
        .and(body_json(json!({"trackingCompany": "UPS", "trackingNumber": "Z1010", "items": [{"itemId": "225220780336"}]})))
        .respond_with(ResponseTemplate::new(200).set_body_json(&updated))
        .expect(1)
        .mount(&dr)
        .await;
    let mut app = spawn_app(&dr.uri()).await;
    let f = app
        .fulfillments
        .update_fulfillment_tracking(pb::UpdateFulfillmentTrackingRequest {
            fulfillment_id: "ful_8b9c".into(),
            tracking: Some(pb::Tracking {
                company: "UPS".into(),
                number: "Z1010".into(),
                url: String::new(),
            }),
            item_ids: vec!["225220780336".into()],
        })
        .await
        .unwrap()
        .into_inner()
        .fulfillment
        .unwrap();
    assert_eq!(f.tracking.unwrap().number, "Z1010");
    app.stop().await;
}

fn charges_reference_page_charge() -> serde_json::Value {
    json!({
        "id": "a6809a63-e6a9-4016-abbc-f33d19fccb5b", "createdTime": "2025-05-09T05:15:57.968Z",
        "currency": "USD", "amount": 1180.26, "state": "capturable", "orderId": "9986340012",
        "sourceId": "9986340012", "paymentSessionId": "8cec",
        "captures": [
            {"id": "cap_ok", "amount": 13.45, "state": "complete", "fulfillmentId": "ful_1"},
            {"id": "cap_bad", "amount": 2.45, "state": "failed", "failureCode": "failed-request",
             "failureMessage": "Failed to operate on charge", "fulfillmentId": "ful_2"}
        ],
        "cancels": [{"id": "can_1", "amount": 0.1, "state": "complete"}],
        "captured": true, "refunded": false, "type": "customer_initiated", "liveMode": false
    })
}

#[tokio::test]
async fn get_charge_maps_operations_with_exact_money() {
    let dr = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/charges/a6809a63-e6a9-4016-abbc-f33d19fccb5b"))
        .respond_with(ResponseTemplate::new(200).set_body_json(charges_reference_page_charge()))
        .mount(&dr)
        .await;
    // The charge's source, as the "Capturing and cancelling charges" page prints one.
    Mock::given(method("GET"))
        .and(path("/sources/9986340012"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "id": "9986340012", "createdTime": "2021-10-05T09:06:58Z", "type": "creditCard",
            "reusable": false, "state": "consumed",
            "owner": {"firstName": "Guy", "lastName": "Incognito", "email": "guy@example.com",
                      "address": {"line1": "1234 St.", "city": "Minnetonka", "postalCode": "55341", "state": "MN", "country": "US"}},
            "clientSecret": "9986340012_caa2ec51-SECRET",
            "creditCard": {"brand": "Visa", "expirationMonth": 10, "expirationYear": 2022, "lastFourDigits": "1111"},
            "liveMode": false
        })))
        .mount(&dr)
        .await;
    let mut app = spawn_app(&dr.uri()).await;
    let c = app
        .charges
        .get_charge(pb::GetChargeRequest {
            charge_id: "a6809a63-e6a9-4016-abbc-f33d19fccb5b".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .charge
        .unwrap();
    let source = c
        .source
        .as_ref()
        .expect("GetCharge reads GET /sources/{sourceId}");
    assert_eq!(
        (source.id.as_str(), source.r#type.as_str()),
        ("9986340012", "creditCard")
    );
    let card = source.credit_card.as_ref().unwrap();
    assert_eq!(
        (
            card.brand.as_str(),
            card.last_four_digits.as_str(),
            card.expiration_month,
            card.expiration_year
        ),
        ("Visa", "1111", 10, 2022)
    );
    assert_eq!(source.owner.as_ref().unwrap().first_name, "Guy");
    assert!(!format!("{c:?}").contains("SECRET"), "no client secret");
    assert_eq!(dr.received_requests().await.unwrap().len(), 2);
    let amount = c.amount.unwrap();
    assert_eq!((amount.units, amount.nanos), (1180, 260_000_000));
    assert_eq!(c.state, "capturable");
    assert_eq!(c.captures.len(), 2);
    assert_eq!(c.captures[1].failure_code, "failed-request");
    let cancel = c.cancels[0].amount.clone().unwrap();
    assert_eq!(
        (cancel.units, cancel.nanos),
        (0, 100_000_000),
        "0.1 stays exact"
    );
    app.stop().await;
}

#[tokio::test]
async fn capture_failure_lookup_finds_the_failed_capture_or_says_not_found() {
    let dr = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/charges/ch1"))
        .respond_with(ResponseTemplate::new(200).set_body_json(charges_reference_page_charge()))
        .mount(&dr)
        .await;
    let mut app = spawn_app(&dr.uri()).await;
    let failure = app
        .charges
        .get_capture_failure(pb::GetCaptureFailureRequest {
            charge_id: "ch1".into(),
            capture_id: "cap_bad".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(failure.failure_code, "failed-request");
    assert_eq!(failure.failure_message, "Failed to operate on charge");
    assert_eq!(failure.fulfillment_id, "ful_2");
    assert_eq!(failure.order_id, "9986340012");

    for capture in ["cap_ok", "cap_missing"] {
        let err = app
            .charges
            .get_capture_failure(pb::GetCaptureFailureRequest {
                charge_id: "ch1".into(),
                capture_id: capture.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::NotFound, "{capture}");
        assert!(err.message().contains(capture));
    }
    app.stop().await;
}

#[tokio::test]
async fn list_order_charges_returns_charges_and_order_totals() {
    let dr = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/orders/185326550336"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "id": "185326550336", "currency": "USD", "state": "accepted", "totalAmount": 21.51,
            "capturedAmount": 13.45, "cancelledAmount": 0.0, "availableToRefundAmount": 13.45,
            "payment": {"charges": [
                {"id": "aa74", "amount": 10.0, "state": "capturable", "sourceId": "3066"},
                {"id": "2ad9", "amount": 11.51, "state": "capturable", "sourceId": "f04a"}
            ]}
        })))
        .mount(&dr)
        .await;
    let mut app = spawn_app(&dr.uri()).await;
    let r = app
        .charges
        .list_order_charges(pb::ListOrderChargesRequest {
            order_id: "185326550336".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.charges.len(), 2);
    let second = r.charges[1].amount.clone().unwrap();
    assert_eq!(
        (second.currency_code.as_str(), second.units, second.nanos),
        ("USD", 11, 510_000_000)
    );
    let captured = r.captured_amount.unwrap();
    assert_eq!((captured.units, captured.nanos), (13, 450_000_000));
    assert_eq!(r.order_state, "accepted");
    app.stop().await;
}

#[tokio::test]
async fn a_pinned_api_version_is_sent_as_the_digitalriver_version_header() {
    let dr = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/fulfillments/ful_v"))
        .and(header("digitalriver-version", "2021-12-13"))
        .and(header(
            "authorization",
            format!("Bearer {API_KEY}").as_str(),
        ))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(dr_fulfillment("ful_v", "1", "2", 1, 0)),
        )
        .expect(1)
        .mount(&dr)
        .await;
    let mut settings = crate::helpers::settings(&dr.uri());
    settings.dr_api_version = Some("2021-12-13".into());
    let mut app = crate::helpers::spawn_app_with(settings).await;

    let f = app
        .fulfillments
        .get_fulfillment(pb::GetFulfillmentRequest {
            fulfillment_id: "ful_v".into(),
        })
        .await
        .expect("the header matched");

    assert_eq!(f.into_inner().fulfillment.unwrap().id, "ful_v");
    let sent = dr.received_requests().await.unwrap();
    assert!(
        sent[0].headers.get("upstream-id").is_some(),
        "a generated upstream-id"
    );
    app.stop().await;
}
