//! Auth, routing errors, the request log, determinism, stepped settlement, order look-ups.

use dr_sandbox::{SandboxConfig, SettleMode};
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::{num, TestSandbox};

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
    let (_, ful) = sb.fulfil(json!({"orderId": live_order["id"], "items": [{"itemId": live_order["items"][0]["id"], "quantity": 1}]})).await;
    assert_eq!(ful["liveMode"], true);
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
    let (_, log) = sb.get("/sandbox/requests").await;
    let data = log["data"].as_array().unwrap();
    assert_eq!(data.len(), 2, "control calls are not logged: {log}");
    assert_eq!(data[0]["method"], "POST");
    assert_eq!(data[0]["path"], "/fulfillments");
    assert_eq!(data[0]["body"], body);
    assert_eq!(data[0]["headers"]["upstream-id"], "req-1");
    assert!(data[0]["headers"].get("authorization").is_none());
    assert_eq!(data[1]["query"], "type=order.*&limit=5");
    assert_eq!(sb.delete("/sandbox/requests").await, StatusCode::NO_CONTENT);
    let (_, log) = sb.get("/sandbox/requests").await;
    assert_eq!(log["data"].as_array().unwrap().len(), 0);
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
        let (_, ful) = sb.fulfil(json!({"orderId": order["id"], "items": [{"itemId": order["items"][0]["id"], "quantity": 1}]})).await;
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
        .fulfil(
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
    let (_, pending) = sb.get("/sandbox/pending").await;
    assert_eq!(pending["data"].as_array().unwrap().len(), 1);
    let (status, settled) = sb.post("/sandbox/settle", json!({})).await;
    assert_eq!(status, StatusCode::OK);
    let s = &settled["settled"][0];
    assert_eq!(s["kind"], "capture");
    assert_eq!(s["state"], "complete");
    assert_eq!(num(&s["amount"]), "12.34");
    assert_eq!(s["operationId"], ful["chargeOperationIds"][0]);
    let (_, o) = sb.get(&format!("/orders/{oid}")).await;
    assert_eq!(o["state"], "complete");
    assert_eq!(num(&o["capturedAmount"]), "12.34");
    let (_, again) = sb.post("/sandbox/settle", json!({})).await;
    assert_eq!(again["settled"].as_array().unwrap().len(), 0);
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
