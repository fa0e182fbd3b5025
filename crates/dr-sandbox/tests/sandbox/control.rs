//! Auth, routing errors, the request log, determinism, stepped settlement, order look-ups,
//! and the typed control client walked over every control endpoint.

use std::time::Duration;

use dr_sandbox::{
    ChargebackSpec, ChargebackType, ControlClient, ControlError, DeliveryMode, DeliveryOrder,
    FaultKind, FaultSpec, OperationKind, OperationState, RefundSpec, RetryPolicy, Sandbox,
    SandboxConfig, SecretRotation, SettleMode, WebhookRegistration,
};
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::{eventually, num, Receiver, TestSandbox};

#[tokio::test]
async fn requests_without_a_bearer_key_are_401() {
    let sb = TestSandbox::start().await;
    for auth in [None, Some("Basic abc"), Some("Bearer "), Some("Bearer")] {
        let mut rb = sb.client.get(format!("{}/events", sb.base));
        if let Some(a) = auth {
            rb = rb.header("authorization", a);
        }
        let (status, body) = sb.send(rb).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{auth:?}");
        assert_eq!(body["type"], "unauthorized");
        assert!(body["errors"][0]["message"].is_string());
    }
    sb.stop().await;
}

#[tokio::test]
async fn the_key_prefix_decides_live_mode() {
    let mut sb = TestSandbox::start().await;
    let test_order = sb.simple_order(1, "1").await;
    assert_eq!(test_order["liveMode"], false);
    sb.key = "sk_live_abc".into();
    let live_order = sb.simple_order(1, "1").await;
    assert_eq!(live_order["liveMode"], true);
    let (_, ful) = sb.fulfill(json!({"orderId": live_order["id"], "items": [{"itemId": live_order["items"][0]["id"], "quantity": 1}]})).await;
    assert_eq!(ful["liveMode"], true);
    sb.stop().await;
}

#[tokio::test]
async fn a_key_never_sees_the_other_modes_objects_dr_answers_404_as_if_absent() {
    let mut sb = TestSandbox::start().await;
    // A live order, fulfilled with a live key.
    sb.key = "sk_live_abc".into();
    let order = sb.simple_order(2, "20").await;
    let oid = order["id"].as_str().unwrap().to_owned();
    let item = order["items"][0]["id"].as_str().unwrap().to_owned();
    let charge = order["payment"]["charges"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, ful) = sb
        .fulfill(json!({"orderId": oid, "items": [{"itemId": item, "quantity": 1}]}))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let ful_id = ful["id"].as_str().unwrap().to_owned();
    let (_, live_events) = sb.get("/events?limit=100").await;
    let event_id = live_events["data"][0]["id"].as_str().unwrap().to_owned();
    assert!(live_events["data"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["liveMode"] == true));

    // A test key: every one of them is unknown.
    sb.key = "sk_test_abc".into();
    let source = order["payment"]["sources"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    for path in [
        format!("/orders/{oid}"),
        format!("/charges/{charge}"),
        format!("/sources/{source}"),
        format!("/fulfillments/{ful_id}"),
        format!("/events/{event_id}"),
    ] {
        let (status, err) = sb.get(&path).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {err}");
        assert_eq!(err["errors"][0]["code"], "not_found", "{path}");
    }
    let (status, err) = sb
        .fulfill(json!({"orderId": oid, "items": [{"itemId": item, "quantity": 1}]}))
        .await;
    assert_eq!(
        (status, err["errors"][0]["parameter"].clone()),
        (StatusCode::NOT_FOUND, json!("orderId"))
    );
    let (status, _) = sb
        .post(
            &format!("/fulfillments/{ful_id}"),
            json!({"trackingNumber": "1"}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    for list in [
        "/orders".to_owned(),
        format!("/fulfillments?orderId={oid}"),
        "/events?limit=100".to_owned(),
    ] {
        let (status, page) = sb.get(&list).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(page["data"], json!([]), "{list}");
    }
    assert!(matches!(
        sb.control().open_dispute(&oid).await,
        Err(ControlError::Status { status: 404, .. })
    ));

    // And the other way round: a test order is invisible to a live key.
    let test_order = sb.simple_order(1, "1").await;
    sb.key = "sk_live_abc".into();
    let (status, _) = sb
        .get(&format!("/orders/{}", test_order["id"].as_str().unwrap()))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, page) = sb.get("/orders").await;
    assert_eq!(
        page["data"].as_array().unwrap().len(),
        1,
        "only the live order"
    );
    let (_, live) = sb.get(&format!("/fulfillments/{ful_id}")).await;
    assert_eq!(
        live["id"],
        ful_id.as_str(),
        "the live key still reads its own"
    );
    sb.stop().await;
}

#[tokio::test]
async fn unknown_paths_are_404_and_wrong_methods_405_dr_shaped() {
    let sb = TestSandbox::start().await;
    let (status, body) = sb.get("/nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["type"], "not_found");
    assert_eq!(body["errors"][0]["code"], "not_found");
    let (status, body) = sb.send(sb.req(Method::DELETE, "/fulfillments")).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(body["type"], "method_not_allowed");
    assert_eq!(body["errors"][0]["code"], "method_not_allowed");
    let (status, _) = sb.send(sb.req(Method::POST, "/charges/abc")).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    sb.stop().await;
}

#[tokio::test]
async fn the_request_log_records_dr_calls_without_the_key() {
    let sb = TestSandbox::start().await;
    let order = sb.simple_order(1, "1").await;
    let body = json!({"orderId": order["id"], "items": [{"itemId": order["items"][0]["id"], "quantity": 1}]});
    sb.send(
        sb.req(Method::POST, "/fulfillments")
            .header("upstream-id", "req-1")
            .json(&body),
    )
    .await;
    sb.get("/events?type=order.*&limit=5").await;
    let control = sb.control();
    let data = control.requests(None, None).await.unwrap();
    assert_eq!(data.len(), 2, "control calls are not logged: {data:?}");
    assert_eq!(data[0].method, "POST");
    assert_eq!(data[0].path, "/fulfillments");
    assert_eq!(data[0].body, body);
    assert_eq!(data[0].headers["upstream-id"], "req-1");
    assert!(!data[0].headers.contains_key("authorization"));
    assert_eq!(data[1].query.as_deref(), Some("type=order.*&limit=5"));
    // 204 No Content: the client accepts nothing else.
    control.clear_requests().await.unwrap();
    assert_eq!(control.requests(None, None).await.unwrap().len(), 0);
    sb.stop().await;
}

#[tokio::test]
async fn the_same_seed_gives_the_same_ids() {
    let mut runs = Vec::new();
    for _ in 0..2 {
        let sb = TestSandbox::start_with(SandboxConfig {
            seed: Some(42),
            ..Default::default()
        })
        .await;
        let order = sb.simple_order(2, "10").await;
        let (_, ful) = sb.fulfill(json!({"orderId": order["id"], "items": [{"itemId": order["items"][0]["id"], "quantity": 1}]})).await;
        let (_, events) = sb.get("/events").await;
        let event_ids: Vec<_> = events["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["id"].clone())
            .collect();
        runs.push((
            order["id"].clone(),
            order["items"][0]["id"].clone(),
            order["payment"]["charges"][0]["id"].clone(),
            ful["id"].clone(),
            ful["chargeOperationIds"].clone(),
            event_ids,
        ));
        sb.stop().await;
    }
    assert_eq!(runs[0], runs[1]);
    let order_id = runs[0].0.as_str().unwrap();
    assert!(
        order_id.len() == 12 && order_id.bytes().all(|b| b.is_ascii_digit()),
        "{order_id}"
    );
    let other = TestSandbox::start_with(SandboxConfig {
        seed: Some(43),
        ..Default::default()
    })
    .await;
    let order = other.simple_order(2, "10").await;
    assert_ne!(order["id"], runs[0].0);
    other.stop().await;
}

#[tokio::test]
async fn stepped_mode_waits_for_settle() {
    let sb = TestSandbox::start_with(SandboxConfig {
        settle: SettleMode::Stepped,
        ..Default::default()
    })
    .await;
    let order = sb.simple_order(1, "12.34").await;
    let oid = order["id"].as_str().unwrap();
    let (_, ful) = sb
        .fulfill(
            json!({"orderId": oid, "items": [{"itemId": order["items"][0]["id"], "quantity": 1}]}),
        )
        .await;
    let (_, o) = sb.get(&format!("/orders/{oid}")).await;
    assert_eq!(o["state"], "fulfilled");
    assert_eq!(
        o["payment"]["charges"][0]["captures"][0]["state"],
        "pending"
    );
    assert_eq!(num(&o["capturedAmount"]), "0.0");
    let control = sb.control();
    assert_eq!(control.pending().await.unwrap().len(), 1);
    // 200 OK: the client accepts nothing else.
    let settled = control.settle().await.unwrap();
    let s = &settled[0];
    assert_eq!(s.kind, OperationKind::Capture);
    assert_eq!(s.state, OperationState::Complete);
    assert_eq!(s.amount.to_string(), "12.34");
    assert_eq!(s.operation_id, ful["chargeOperationIds"][0]);
    let (_, o) = sb.get(&format!("/orders/{oid}")).await;
    assert_eq!(o["state"], "complete");
    assert_eq!(num(&o["capturedAmount"]), "12.34");
    let again = control.settle().await.unwrap();
    assert_eq!(again.len(), 0);
    sb.stop().await;
}

#[tokio::test]
async fn orders_can_be_found_by_upstream_id() {
    let sb = TestSandbox::start().await;
    let a = sb
        .order(json!({"upstreamId": "shop-1", "items": [{"quantity": 1, "amount": "1"}]}))
        .await;
    sb.order(json!({"upstreamId": "shop-2", "items": [{"quantity": 1, "amount": "1"}]}))
        .await;
    let (status, list) = sb.get("/orders?upstreamIds=shop-1").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["hasMore"], false);
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
    assert_eq!(list["data"][0], a);
    let (_, got) = sb
        .get(&format!("/orders/{}", a["id"].as_str().unwrap()))
        .await;
    assert_eq!(
        got, a,
        "POST /sandbox/orders returns the order exactly as GET /orders/{{id}}"
    );
    let (status, _) = sb
        .post(
            "/sandbox/orders",
            json!({"id": a["id"], "items": [{"quantity": 1, "amount": "1"}]}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (status, err) = sb.post("/sandbox/orders", json!({"items": []})).await;
    assert_eq!(
        (status, err["errors"][0]["parameter"].clone()),
        (StatusCode::BAD_REQUEST, json!("items"))
    );
    sb.stop().await;
}

#[tokio::test]
async fn an_order_has_drs_shape() {
    let sb = TestSandbox::start().await;
    let order = sb.order(json!({"upstreamId": "u1", "email": "e@x.y", "items": [{"id": "158140510336", "skuId": "sku", "productName": "Widget", "quantity": 2, "amount": "20", "tax": "1.61"}]})).await;
    assert_eq!(order["upstreamId"], "u1");
    assert_eq!(order["currency"], "USD");
    assert_eq!(order["state"], "accepted");
    assert_eq!(order["fraudState"], "passed");
    assert!(order["stateTransitions"]["accepted"].is_string());
    let item = &order["items"][0];
    assert_eq!(item["id"], "158140510336");
    assert_eq!(
        item["productDetails"],
        json!({"id": "sku", "name": "Widget"})
    );
    assert_eq!(num(&item["amount"]), "20.0");
    assert_eq!(num(&item["tax"]["amount"]), "1.61");
    assert_eq!(item["state"], "created");
    let charge = &order["payment"]["charges"][0];
    assert!(uuid::Uuid::parse_str(charge["id"].as_str().unwrap()).is_ok());
    assert_eq!(charge["state"], "capturable");
    assert_eq!(num(&charge["amount"]), "21.61");
    assert_eq!(charge["sourceId"], order["payment"]["sources"][0]["id"]);
    for key in [
        "capturedAmount",
        "cancelledAmount",
        "refundedAmount",
        "availableToRefundAmount",
    ] {
        assert_eq!(num(&order[key]), "0.0", "{key}");
    }
    assert!(order["updatedTime"].is_string() && order["createdTime"].is_string());
    sb.stop().await;
}

#[tokio::test]
async fn an_order_carries_bill_to_fees_duties_product_details_and_its_sources() {
    let sb = TestSandbox::start().await;
    let order = sb
        .order(json!({
            "billTo": {"name": "Guy Incognito", "email": "guy@example.com", "phone": "123456789",
                       "address": {"line1": "1234 Fake St.", "city": "Minnetonka", "postalCode": "55341", "state": "MN", "country": "US"}},
            "items": [{"quantity": 2, "amount": "20.00", "tax": "1.61", "fees": "0.50", "duties": "1.25",
                       "productName": "Widget", "metadata": {"key11": "value"},
                       "productDetails": {"description": "A small gadget", "image": "https://img.example/w.png", "weight": 10, "weightUnit": "g"}}],
            "charges": [{"type": "customerCredit", "amount": "5.00"},
                        {"type": "creditCard", "creditCard": {"brand": "Mastercard", "lastFourDigits": "4444", "expirationMonth": 12, "expirationYear": 2031}}]
        }))
        .await;
    assert_eq!(order["billTo"]["name"], "Guy Incognito");
    assert_eq!(num(&order["totalFees"]), "0.5");
    assert_eq!(num(&order["totalDuty"]), "1.25");
    assert_eq!(
        num(&order["totalAmount"]),
        "23.36",
        "20.00 + 1.61 + 0.50 + 1.25"
    );
    let item = &order["items"][0];
    assert_eq!(item["productDetails"]["name"], "Widget");
    assert_eq!(item["productDetails"]["description"], "A small gadget");
    assert_eq!(num(&item["productDetails"]["weight"]), "10");
    assert_eq!(num(&item["fees"]["amount"]), "0.5");
    assert_eq!(num(&item["duties"]["amount"]), "1.25");
    assert_eq!(item["metadata"]["key11"], "value");
    let sources = order["payment"]["sources"].as_array().unwrap();
    assert_eq!(sources[0]["type"], "customerCredit");
    assert_eq!(sources[1]["type"], "creditCard");
    assert_eq!(num(&sources[1]["amount"]), "18.36");
    assert_eq!(
        sources[1]["creditCard"],
        json!({"brand": "Mastercard", "expirationMonth": 12, "expirationYear": 2031, "lastFourDigits": "4444"})
    );
    assert_eq!(sources[1]["owner"]["firstName"], "Guy");
    assert_eq!(sources[1]["owner"]["lastName"], "Incognito");
    assert_eq!(sources[1]["owner"]["address"]["city"], "Minnetonka");
    assert!(
        sources[1].get("clientSecret").is_none(),
        "only GET /sources shows it"
    );

    // GET /sources/{id}: the source with what only it carries.
    let card_id = sources[1]["id"].as_str().unwrap();
    let (status, source) = sb.get(&format!("/sources/{card_id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(source["id"], card_id);
    assert_eq!(source["creditCard"]["lastFourDigits"], "4444");
    assert_eq!(source["currency"], "USD");
    assert_eq!(source["liveMode"], false);
    assert!(source["createdTime"].is_string());
    assert!(source["clientSecret"]
        .as_str()
        .unwrap()
        .starts_with(card_id));
    let (status, credit) = sb
        .get(&format!("/sources/{}", sources[0]["id"].as_str().unwrap()))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(credit["customerCredit"], json!({}));
    assert!(credit.get("creditCard").is_none());
    let (status, err) = sb.get("/sources/nope").await;
    assert_eq!(
        (status, err["errors"][0]["code"].clone()),
        (StatusCode::NOT_FOUND, json!("not_found"))
    );
    sb.stop().await;
}

#[tokio::test]
async fn the_control_client_walks_every_control_endpoint() {
    // Arrange: stepped settlement so pending operations can be seen, and an endpoint that
    // receives `order.*` events.
    let rx = Receiver::start(vec![]).await;
    let sandbox = Sandbox::start(SandboxConfig {
        settle: SettleMode::Stepped,
        webhook_retry: RetryPolicy {
            attempts: 2,
            base_delay: Duration::from_millis(20),
            timeout: Duration::from_millis(3000),
        },
        ..Default::default()
    })
    .await
    .unwrap();
    let c = sandbox.control_client();
    let dr = reqwest::Client::new();
    let base = sandbox.base_url();

    // Clock
    let clock = c.clock().await.unwrap();
    assert_eq!(clock.offset_seconds, 0);
    let advanced = c.advance_clock(60).await.unwrap();
    assert_eq!(advanced.offset_seconds, 60);
    assert!(advanced.now >= clock.now + chrono::Duration::seconds(60));

    // Webhooks: register and list
    let hook = c
        .add_webhook(
            &WebhookRegistration::new(rx.url.as_str())
                .secret("s1")
                .types(["order.*"]),
        )
        .await
        .unwrap();
    assert_eq!(
        (hook.url.as_str(), hook.address.as_str()),
        (rx.url.as_str(), rx.url.as_str())
    );
    assert_eq!(hook.types, ["order.*"]);
    assert!(hook.enabled);
    assert_eq!(hook.api_version, "2021-12-13");
    assert_eq!(hook.secret, "s1");
    assert_eq!(hook.secrets.len(), 1);
    assert!(hook.secrets[0].current && hook.secrets[0].expires_time.is_none());
    assert_eq!(c.webhooks().await.unwrap(), std::slice::from_ref(&hook));

    // Delivery: concurrent without jitter by default, switchable, bad values refused.
    assert_eq!(c.delivery().await.unwrap(), DeliveryMode::default());
    let ordered = DeliveryMode {
        order: DeliveryOrder::InOrder,
        jitter: Duration::from_millis(25),
    };
    assert_eq!(c.set_delivery(ordered).await.unwrap(), ordered);
    assert_eq!(c.delivery().await.unwrap(), ordered);
    for (body, parameter) in [
        (json!({"order": "sometimes"}), "order"),
        (json!({"jitterMs": 60_000}), "jitterMs"),
    ] {
        let refused = dr
            .post(format!("{base}/sandbox/delivery"))
            .bearer_auth("sk_test_x")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), 400);
        let body: serde_json::Value = refused.json().await.unwrap();
        assert_eq!(body["errors"][0]["parameter"], parameter);
    }
    c.set_delivery(DeliveryMode::default()).await.unwrap();

    // Orders and disputes
    let order = c
        .create_order(
            json!({"upstreamId": "walk-1", "items": [{"quantity": 2, "amount": "24.68"}]}),
        )
        .await
        .unwrap();
    assert_eq!(order["state"], "accepted");
    assert_eq!(order["liveMode"], false, "the control key is a test key");
    let oid = order["id"].as_str().unwrap().to_owned();
    let item = order["items"][0]["id"].as_str().unwrap().to_owned();
    assert_eq!(c.open_dispute(&oid).await.unwrap()["state"], "dispute");
    assert_eq!(c.resolve_dispute(&oid).await.unwrap()["state"], "accepted");
    let in_review = c
        .create_order(json!({"state": "in_review", "items": [{"quantity": 1, "amount": "1"}]}))
        .await
        .unwrap();
    assert_eq!(in_review["state"], "in_review");
    let accepted = c
        .accept_order(in_review["id"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!(accepted["state"], "accepted");

    // Faults: arm, list, fire, clear
    let armed = c
        .add_fault(
            &FaultSpec::status("/events", 503)
                .method("get")
                .count(2)
                .retry_after(5),
        )
        .await
        .unwrap();
    assert_eq!(
        (armed.method.as_str(), armed.path.as_str(), armed.kind),
        ("GET", "/events", FaultKind::Status)
    );
    assert_eq!((armed.count, armed.remaining, armed.status), (2, 2, 503));
    assert_eq!((armed.retry_after, armed.latency_ms), (Some(5), 0));
    let slow = c
        .add_fault(
            &FaultSpec::new(FaultKind::Latency, "/charges/*").latency(Duration::from_millis(1)),
        )
        .await
        .unwrap();
    assert_eq!((slow.method.as_str(), slow.latency_ms), ("*", 1));
    let resp = dr
        .get(format!("{base}/events"))
        .bearer_auth(Sandbox::CONTROL_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 503);
    let faults = c.faults().await.unwrap();
    assert_eq!(faults.len(), 2);
    assert_eq!(
        (faults[0].id.as_str(), faults[0].remaining),
        (armed.id.as_str(), 1)
    );
    assert_eq!(faults[1], slow);
    c.clear_faults().await.unwrap();
    assert!(c.faults().await.unwrap().is_empty());

    // Request log, with filters
    let resp = dr
        .post(format!("{base}/fulfillments"))
        .bearer_auth(Sandbox::CONTROL_KEY)
        .json(&json!({"orderId": oid, "items": [{"itemId": item, "quantity": 1}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 201);
    let ful: serde_json::Value = resp.json().await.unwrap();
    let all = c.requests(None, None).await.unwrap();
    assert_eq!(all.len(), 2, "{all:?}");
    assert_eq!(all[0].fault, Some(FaultKind::Status));
    let posts = c
        .requests(Some("post"), Some("/fulfillments"))
        .await
        .unwrap();
    assert_eq!(posts.len(), 1);
    assert_eq!((posts[0].seq, posts[0].fault), (all[1].seq, None));
    assert_eq!(posts[0].body["orderId"], oid.as_str());
    assert!(c
        .requests(Some("GET"), Some("/fulfill*"))
        .await
        .unwrap()
        .is_empty());
    c.clear_requests().await.unwrap();
    assert!(c.requests(None, None).await.unwrap().is_empty());

    // Stepped settlement
    let pending = c.pending().await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(
        (pending[0].order_id.as_str(), pending[0].kind),
        (oid.as_str(), OperationKind::Capture)
    );
    assert_eq!(pending[0].operation_id, ful["chargeOperationIds"][0]);
    let settled = c.settle().await.unwrap();
    assert_eq!(settled.len(), 1);
    let s = &settled[0];
    assert_eq!(
        (s.order_id.as_str(), s.charge_id.as_str()),
        (oid.as_str(), pending[0].charge_id.as_str())
    );
    assert_eq!(
        (s.kind, s.state),
        (OperationKind::Capture, OperationState::Complete)
    );
    assert_eq!(s.operation_id, pending[0].operation_id);
    assert_eq!(s.amount.to_string(), "12.34");
    assert!(!s.event_id.is_empty());
    assert!(c.pending().await.unwrap().is_empty());

    // Refunds recorded on a charge, and chargebacks (on the now captured order)
    let charge = c
        .record_refund(
            &pending[0].charge_id,
            &RefundSpec::of("1.00").reason("duplicate"),
        )
        .await
        .unwrap();
    assert_eq!(charge["refunds"][0]["reason"], "duplicate");
    c.open_dispute(&oid).await.unwrap();
    let chargeback = c
        .grant_chargeback(
            &oid,
            &ChargebackSpec {
                kind: ChargebackType::NonFraudChargeback,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(chargeback.sales_transaction["type"], "non_fraud_chargeback");
    assert_eq!(
        num(&chargeback.sales_transaction["amount"]),
        "11.34",
        "12.34 less the refund"
    );
    assert_eq!(num(&chargeback.order["availableToRefundAmount"]), "0.0");

    // Deliveries and redelivery
    let accepted = rx
        .wait_for("order.accepted", 1, |e| e["type"] == "order.accepted")
        .await;
    let event_id = accepted[0].json()["id"].as_str().unwrap().to_owned();
    let first = eventually(5, "the delivery record", || async {
        let d = c.deliveries(Some(&event_id), Some(&hook.id)).await.unwrap();
        (!d.is_empty()).then_some(d)
    })
    .await;
    let d = &first[0];
    assert_eq!(
        (d.event_id.as_str(), d.event_type.as_str()),
        (event_id.as_str(), "order.accepted")
    );
    assert_eq!(
        (d.webhook_id.as_str(), d.url.as_str()),
        (hook.id.as_str(), rx.url.as_str())
    );
    assert_eq!(
        (d.attempt, d.status, d.success, d.will_retry),
        (1, Some(200), true, false)
    );
    assert_eq!(
        (d.error.as_deref(), d.signature.as_str()),
        (None, accepted[0].signature.as_str())
    );
    let redelivery = c.redeliver(&event_id).await.unwrap();
    assert_eq!(redelivery.event_id, event_id);
    assert_eq!(redelivery.webhook_ids, std::slice::from_ref(&hook.id));
    rx.wait_for("the redelivery", 2, |e| e["id"] == event_id.as_str())
        .await;
    eventually(5, "the redelivery record", || async {
        let d = c.deliveries(Some(&event_id), None).await.unwrap();
        (d.len() == 2).then_some(())
    })
    .await;
    assert!(
        c.deliveries(None, Some("no-such-hook"))
            .await
            .unwrap()
            .is_empty(),
        "filtered by endpoint"
    );
    c.clear_deliveries().await.unwrap();
    assert!(c
        .deliveries(Some(&event_id), None)
        .await
        .unwrap()
        .is_empty());

    // Rotation and deletion
    let rotated = c
        .rotate_webhook(
            &hook.id,
            &SecretRotation {
                secret: Some("s2".into()),
                old_secret_valid_seconds: Some(3600),
            },
        )
        .await
        .unwrap();
    assert_eq!(rotated.secret, "s2");
    assert_eq!(rotated.secrets.len(), 2);
    assert_eq!(
        (
            rotated.secrets[1].secret.as_str(),
            rotated.secrets[1].current
        ),
        ("s1", false)
    );
    assert!(rotated.secrets[1].expires_time.is_some());
    c.delete_webhook(&hook.id).await.unwrap();
    assert!(c.webhooks().await.unwrap().is_empty());

    // Custom events
    let event = c
        .post_event(json!({"type": "order.custom", "object": {"id": "obj-1"}}))
        .await
        .unwrap();
    assert_eq!(event["type"], "order.custom");
    assert_eq!(event["data"]["object"]["id"], "obj-1");
    assert_eq!(event["liveMode"], false);

    // Errors: a refused call is `Status` with the DR-shaped body, no answer is `Transport`
    match c.delete_webhook(&hook.id).await {
        Err(ControlError::Status { status: 404, body }) => {
            assert!(body.contains("not_found"), "{body}")
        }
        other => panic!("expected a 404, got {other:?}"),
    }
    match c.advance_clock(-1).await {
        Err(ControlError::Status { status: 400, .. }) => {}
        other => panic!("expected a 400, got {other:?}"),
    }
    let nowhere = ControlClient::new("http://127.0.0.1:1", Sandbox::CONTROL_KEY);
    assert!(matches!(
        nowhere.clock().await,
        Err(ControlError::Transport(_))
    ));
    sandbox.shutdown().await;
}
