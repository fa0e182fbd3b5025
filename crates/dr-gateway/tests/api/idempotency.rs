//! CreateFulfillment happens once per request_id, even when DR's answer is lost.

use std::time::Duration;

use dr_gateway::pb::v1 as pb;
use serde_json::json;
use tonic::Code;
use wiremock::matchers::{body_partial_json, method, path, query_param};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::helpers::{dr_fulfillment, settings, spawn_app, spawn_app_with, with_deadline};

fn request(request_id: &str, quantity: i64) -> pb::CreateFulfillmentRequest {
    pb::CreateFulfillmentRequest {
        order_id: "ord1".into(),
        items: vec![pb::CreateFulfillmentItem {
            item_id: "item1".into(),
            quantity,
            ..Default::default()
        }],
        request_id: request_id.into(),
        ..Default::default()
    }
}

fn created(request_id: &str) -> serde_json::Value {
    let mut f = dr_fulfillment("ful_once", "ord1", "item1", 1, 0);
    f["metadata"] = json!({"requestId": request_id});
    f
}

async fn posts(dr: &MockServer) -> usize {
    dr.received_requests()
        .await
        .unwrap()
        .iter()
        .filter(|r| r.method.as_str() == "POST")
        .count()
}

#[tokio::test]
async fn a_repeated_request_id_replays_the_first_result_without_a_second_post() {
    let dr = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/fulfillments"))
        .and(body_partial_json(json!({"metadata": {"requestId": "r1"}})))
        .respond_with(ResponseTemplate::new(201).set_body_json(created("r1")))
        .mount(&dr)
        .await;
    let mut app = spawn_app(&dr.uri()).await;
    let first = app
        .fulfillments
        .create_fulfillment(request("r1", 1))
        .await
        .unwrap()
        .into_inner();
    let again = app
        .fulfillments
        .create_fulfillment(request("r1", 1))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.fulfillment.unwrap().id, again.fulfillment.unwrap().id);
    assert_eq!(posts(&dr).await, 1);

    let reused = app
        .fulfillments
        .create_fulfillment(request("r1", 2))
        .await
        .unwrap_err();
    assert_eq!(reused.code(), Code::InvalidArgument);
    assert!(reused.message().contains("request_id"));
    assert_eq!(posts(&dr).await, 1);
    app.stop().await;
}

#[tokio::test]
async fn concurrent_calls_with_one_request_id_make_one_post() {
    let dr = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/fulfillments"))
        .respond_with(
            ResponseTemplate::new(201)
                .set_body_json(created("r2"))
                .set_delay(Duration::from_millis(300)),
        )
        .mount(&dr)
        .await;
    let app = spawn_app(&dr.uri()).await;
    let calls = (0..5).map(|_| {
        let mut client = app.fulfillments.clone();
        async move { client.create_fulfillment(request("r2", 1)).await }
    });
    let results = futures::future::join_all(calls).await;
    for r in results {
        assert_eq!(r.unwrap().into_inner().fulfillment.unwrap().id, "ful_once");
    }
    assert_eq!(posts(&dr).await, 1);
    app.stop().await;
}

#[tokio::test]
async fn a_lost_response_is_reconciled_and_the_retry_creates_nothing_new() {
    let dr = MockServer::start().await;
    // DR creates the fulfillment but answers too late for the gateway.
    Mock::given(method("POST"))
        .and(path("/fulfillments"))
        .respond_with(
            ResponseTemplate::new(201)
                .set_body_json(created("r3"))
                .set_delay(Duration::from_secs(2)),
        )
        .mount(&dr)
        .await;
    Mock::given(method("GET"))
        .and(path("/fulfillments"))
        .and(query_param("orderId", "ord1"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "hasMore": false,
            "data": [dr_fulfillment("ful_other", "ord1", "item1", 1, 0), created("r3")]
        })))
        .mount(&dr)
        .await;
    let mut app = spawn_app(&dr.uri()).await;

    // the client gives up first
    let lost = app
        .fulfillments
        .create_fulfillment(with_deadline(request("r3", 1), Duration::from_millis(400)))
        .await
        .unwrap_err();
    assert_eq!(lost.code(), Code::DeadlineExceeded);

    // and retries with the same request_id: it gets DR's fulfillment, no second POST
    let retried = app
        .fulfillments
        .create_fulfillment(with_deadline(request("r3", 1), Duration::from_secs(10)))
        .await
        .expect("the retry gets the reconciled result")
        .into_inner();
    assert_eq!(retried.fulfillment.unwrap().id, "ful_once");
    assert_eq!(posts(&dr).await, 1, "exactly one POST reached DR");
    app.stop().await;
}

#[tokio::test]
async fn an_upstream_timeout_is_reconciled_within_the_same_call() {
    let dr = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/fulfillments"))
        .respond_with(
            ResponseTemplate::new(201)
                .set_body_json(created("r4"))
                .set_delay(Duration::from_secs(2)),
        )
        .mount(&dr)
        .await;
    Mock::given(method("GET"))
        .and(path("/fulfillments"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"hasMore": false, "data": [created("r4")]})),
        )
        .mount(&dr)
        .await;
    let mut s = settings(&dr.uri());
    s.upstream_timeout = Duration::from_millis(300);
    let mut app = spawn_app_with(s).await;
    let f = app
        .fulfillments
        .create_fulfillment(request("r4", 1))
        .await
        .expect("reconciled")
        .into_inner();
    assert_eq!(f.fulfillment.unwrap().id, "ful_once");
    assert_eq!(posts(&dr).await, 1);
    app.stop().await;
}

#[tokio::test]
async fn a_post_that_dr_did_not_take_may_be_retried() {
    let dr = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/fulfillments"))
        .respond_with(ResponseTemplate::new(503))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&dr)
        .await;
    Mock::given(method("POST"))
        .and(path("/fulfillments"))
        .respond_with(ResponseTemplate::new(201).set_body_json(created("r5")))
        .with_priority(2)
        .mount(&dr)
        .await;
    Mock::given(method("GET"))
        .and(path("/fulfillments"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"hasMore": false, "data": []})),
        )
        .mount(&dr)
        .await;
    let mut app = spawn_app(&dr.uri()).await;
    let first = app
        .fulfillments
        .create_fulfillment(request("r5", 1))
        .await
        .unwrap_err();
    assert_eq!(
        first.code(),
        Code::Unavailable,
        "a POST is never retried blindly"
    );
    assert_eq!(posts(&dr).await, 1);
    let gets = dr
        .received_requests()
        .await
        .unwrap()
        .iter()
        .filter(|r| r.method.as_str() == "GET")
        .count();
    assert_eq!(gets, 1, "the unknown outcome was reconciled");

    let second = app
        .fulfillments
        .create_fulfillment(request("r5", 1))
        .await
        .expect("the retry posts");
    assert_eq!(second.into_inner().fulfillment.unwrap().id, "ful_once");
    assert_eq!(posts(&dr).await, 2);
    app.stop().await;
}
