//! Fault injection on the DR surface: status, reset (real TCP drop), malformed bodies,
//! latency, and "processed but the response was lost".

use std::time::{Duration, Instant};

use dr_sandbox::{FaultKind, FaultSpec};
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::{eventually, TestSandbox};

/// Arms `spec`; panics unless the sandbox answers 201.
async fn arm(sb: &TestSandbox, spec: FaultSpec) {
    sb.control().add_fault(&spec).await.unwrap();
}

async fn fulfillment_count(sb: &TestSandbox, order_id: &str) -> usize {
    let (_, list) = sb.get(&format!("/fulfillments?orderId={order_id}")).await;
    list["data"].as_array().unwrap().len()
}

#[tokio::test]
async fn a_status_fault_answers_a_dr_error_with_retry_after_without_processing() {
    let sb = TestSandbox::start().await;
    let order = sb.simple_order(2, "10").await;
    let oid = order["id"].as_str().unwrap();
    // 201 Created: the client accepts nothing else.
    sb.control()
        .add_fault(
            &FaultSpec::status("/fulfillments", 429)
                .method("POST")
                .count(2)
                .retry_after(7),
        )
        .await
        .unwrap();
    let body =
        json!({"orderId": oid, "items": [{"itemId": order["items"][0]["id"], "quantity": 1}]});
    for _ in 0..2 {
        let resp = sb
            .req(Method::POST, "/fulfillments")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 429);
        assert_eq!(resp.headers()["retry-after"], "7");
        let err: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(err["type"], "too_many_requests");
        assert!(err["errors"][0]["message"].is_string());
    }
    assert_eq!(
        fulfillment_count(&sb, oid).await,
        0,
        "faulted calls were not processed"
    );
    // Only the next `count` calls: the third goes through.
    let (status, _) = sb.fulfill(body).await;
    assert_eq!(status, StatusCode::CREATED);
    // The request log recorded the faults.
    let log = sb
        .control()
        .requests(Some("POST"), Some("/fulfillments"))
        .await
        .unwrap();
    let faults: Vec<_> = log.iter().map(|r| r.fault).collect();
    assert_eq!(
        faults,
        [Some(FaultKind::Status), Some(FaultKind::Status), None]
    );
    sb.stop().await;
}

#[tokio::test]
async fn a_reset_fault_drops_the_connection_without_processing() {
    let sb = TestSandbox::start().await;
    let order = sb.simple_order(1, "10").await;
    let oid = order["id"].as_str().unwrap();
    arm(
        &sb,
        FaultSpec::new(FaultKind::Reset, "/fulfillments").method("POST"),
    )
    .await;
    let err = sb
        .req(Method::POST, "/fulfillments")
        .json(
            &json!({"orderId": oid, "items": [{"itemId": order["items"][0]["id"], "quantity": 1}]}),
        )
        .send()
        .await
        .expect_err("no HTTP answer");
    assert!(!err.is_status() && !err.is_timeout(), "{err:?}");
    assert_eq!(fulfillment_count(&sb, oid).await, 0);
    sb.stop().await;
}

#[tokio::test]
async fn reset_after_processing_loses_the_response_of_a_call_that_happened() {
    let sb = TestSandbox::start().await;
    let order = sb.simple_order(1, "10").await;
    let oid = order["id"].as_str().unwrap();
    arm(
        &sb,
        FaultSpec::new(FaultKind::ResetAfterProcessing, "/fulfillments").method("POST"),
    )
    .await;
    let body =
        json!({"orderId": oid, "items": [{"itemId": order["items"][0]["id"], "quantity": 1}]});
    let result = sb
        .req(Method::POST, "/fulfillments")
        .json(&body)
        .send()
        .await;
    assert!(result.is_err(), "no HTTP answer");
    assert_eq!(
        fulfillment_count(&sb, oid).await,
        1,
        "but the fulfillment exists"
    );
    // A blind retry now hits the fulfilled order.
    let (status, err) = sb.fulfill(body).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(err["errors"][0]["code"], "order_fulfilled");
    sb.stop().await;
}

#[tokio::test]
async fn latency_after_processing_outlasts_a_client_timeout() {
    let sb = TestSandbox::start().await;
    let order = sb.simple_order(1, "10").await;
    let oid = order["id"].as_str().unwrap();
    arm(
        &sb,
        FaultSpec::new(FaultKind::LatencyAfterProcessing, "/fulfillments")
            .latency(Duration::from_millis(2000)),
    )
    .await;
    let result = sb
        .req(Method::POST, "/fulfillments")
        .timeout(Duration::from_millis(300))
        .json(
            &json!({"orderId": oid, "items": [{"itemId": order["items"][0]["id"], "quantity": 1}]}),
        )
        .send()
        .await;
    assert!(result.expect_err("client times out").is_timeout());
    assert_eq!(fulfillment_count(&sb, oid).await, 1);
    sb.stop().await;
}

#[tokio::test]
async fn a_delayed_commit_takes_effect_after_the_caller_gave_up() {
    // Arrange
    let sb = TestSandbox::start().await;
    let order = sb.simple_order(1, "10").await;
    let oid = order["id"].as_str().unwrap();
    arm(
        &sb,
        // why 2 s: far past the caller's 200 ms, so "not yet" holds on a busy machine.
        FaultSpec::delayed_commit("/fulfillments", Duration::from_secs(2)).method("POST"),
    )
    .await;

    // Act: the caller stops waiting after 200 ms.
    let result = sb
        .req(Method::POST, "/fulfillments")
        .timeout(Duration::from_millis(200))
        .json(
            &json!({"orderId": oid, "items": [{"itemId": order["items"][0]["id"], "quantity": 1}]}),
        )
        .send()
        .await;

    // Assert: nothing yet when it gives up, the fulfillment later.
    assert!(result.expect_err("client times out").is_timeout());
    assert_eq!(fulfillment_count(&sb, oid).await, 0, "not committed yet");
    eventually(10, "the late commit", || async {
        (fulfillment_count(&sb, oid).await == 1).then_some(())
    })
    .await;
    sb.stop().await;
}

#[tokio::test]
async fn a_delayed_commit_answers_a_caller_that_waits() {
    let sb = TestSandbox::start().await;
    let order = sb.simple_order(1, "10").await;
    arm(
        &sb,
        FaultSpec::delayed_commit("/fulfillments", Duration::from_millis(300)).method("POST"),
    )
    .await;
    let started = Instant::now();
    let (status, ful) = sb
        .fulfill(json!({"orderId": order["id"], "items": [{"itemId": order["items"][0]["id"], "quantity": 1}]}))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert!(ful["id"].as_str().unwrap().starts_with("ful_"));
    assert!(started.elapsed() >= Duration::from_millis(300));
    sb.stop().await;
}

#[tokio::test]
async fn status_then_commit_answers_504_and_commits_later() {
    // Arrange
    let sb = TestSandbox::start().await;
    let order = sb.simple_order(1, "10").await;
    let oid = order["id"].as_str().unwrap();
    arm(
        &sb,
        FaultSpec::status_then_commit("/fulfillments", 504, Duration::from_secs(2)).method("POST"),
    )
    .await;

    // Act
    let (status, err) = sb
        .fulfill(
            json!({"orderId": oid, "items": [{"itemId": order["items"][0]["id"], "quantity": 1}]}),
        )
        .await;

    // Assert: DR's gateway timeout at once, the fulfillment later.
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(err["type"], "gateway_timeout");
    assert_eq!(fulfillment_count(&sb, oid).await, 0, "not committed yet");
    eventually(10, "the late commit", || async {
        (fulfillment_count(&sb, oid).await == 1).then_some(())
    })
    .await;
    let log = sb
        .control()
        .requests(Some("POST"), Some("/fulfillments"))
        .await
        .unwrap();
    assert_eq!(log[0].fault, Some(FaultKind::StatusThenCommit));
    // The kind needs a status, like `status`.
    let (status, err) = sb
        .post(
            "/sandbox/faults",
            json!({"path": "/fulfillments", "kind": "status_then_commit", "latencyMs": 10}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{err}");
    sb.stop().await;
}

#[tokio::test]
async fn latency_delays_and_malformed_breaks_the_body() {
    let sb = TestSandbox::start().await;
    let order = sb.simple_order(1, "10").await;
    let oid = order["id"].as_str().unwrap();
    arm(
        &sb,
        FaultSpec::new(FaultKind::Latency, "/orders/*")
            .method("GET")
            .latency(Duration::from_millis(300)),
    )
    .await;
    let started = Instant::now();
    let (status, _) = sb.get(&format!("/orders/{oid}")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(started.elapsed() >= Duration::from_millis(300));

    arm(
        &sb,
        FaultSpec::new(FaultKind::Malformed, "/orders/*").method("GET"),
    )
    .await;
    let resp = sb
        .req(Method::GET, &format!("/orders/{oid}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let text = resp.text().await.unwrap();
    assert!(
        serde_json::from_str::<serde_json::Value>(&text).is_err(),
        "not JSON: {text}"
    );
    sb.stop().await;
}

#[tokio::test]
async fn faults_can_be_listed_and_cleared() {
    let sb = TestSandbox::start().await;
    let control = sb.control();
    arm(&sb, FaultSpec::status("/events", 503).count(5)).await;
    let list = control.faults().await.unwrap();
    assert_eq!(list[0].remaining, 5);
    // 204 No Content: the client accepts nothing else.
    control.clear_faults().await.unwrap();
    let (status, _) = sb.get("/events").await;
    assert_eq!(status, StatusCode::OK);
    let (status, err) = sb
        .post(
            "/sandbox/faults",
            json!({"path": "/events", "kind": "status"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{err}");
    let (status, _) = sb
        .post(
            "/sandbox/faults",
            json!({"path": "/events", "kind": "explode"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    sb.stop().await;
}
