//! CreateFulfillment happens once per request_id, even when DR's answer is lost:
//! exact DR requests against wiremock (the sandbox flows are in `money_safety.rs`).

use std::time::{Duration, Instant};

use dr_gateway::pb::v1 as pb;
use serde_json::json;
use tonic::Code;
use tonic_types::StatusExt;
use wiremock::matchers::{body_partial_json, method, path, query_param};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::helpers::{
    dr_fulfillment, dr_lists_no_fulfillments, settings, spawn_app, spawn_app_with, with_deadline,
};

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

async fn count(dr: &MockServer, http_method: &str) -> usize {
    dr.received_requests()
        .await
        .unwrap()
        .iter()
        .filter(|r| r.method.as_str() == http_method && r.url.path() == "/fulfillments")
        .count()
}

async fn posts(dr: &MockServer) -> usize {
    count(dr, "POST").await
}

/// DR lists nothing for the first `times` lookups, then `found`.
async fn dr_lists_nothing_then(dr: &MockServer, times: u64, found: serde_json::Value) {
    Mock::given(method("GET"))
        .and(path("/fulfillments"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"hasMore": false, "data": []})),
        )
        .up_to_n_times(times)
        .with_priority(1)
        .mount(dr)
        .await;
    Mock::given(method("GET"))
        .and(path("/fulfillments"))
        .and(query_param("orderId", "ord1"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "hasMore": false,
            "data": [dr_fulfillment("ful_other", "ord1", "item1", 1, 0), found]
        })))
        .with_priority(2)
        .mount(dr)
        .await;
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
    dr_lists_no_fulfillments(&dr).await;
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
    assert_eq!(count(&dr, "GET").await, 1, "one lookup, before the POST");

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
    dr_lists_no_fulfillments(&dr).await;
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
async fn a_caller_that_gives_up_mid_post_gets_the_result_on_retry_without_a_second_post() {
    let dr = MockServer::start().await;
    // DR creates the fulfillment but answers after the caller's deadline.
    Mock::given(method("POST"))
        .and(path("/fulfillments"))
        .respond_with(
            ResponseTemplate::new(201)
                .set_body_json(created("r3"))
                .set_delay(Duration::from_secs(2)),
        )
        .mount(&dr)
        .await;
    dr_lists_nothing_then(&dr, 1, created("r3")).await;
    let mut app = spawn_app(&dr.uri()).await;

    // the client gives up first; the gateway's POST runs on (its own budget)
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
        .expect("the retry gets the first attempt's result")
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
    dr_lists_nothing_then(&dr, 1, created("r4")).await;
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
    assert_eq!(
        count(&dr, "GET").await,
        2,
        "looked up before and after the POST"
    );
    app.stop().await;
}

#[tokio::test]
async fn after_a_5xx_the_request_id_is_held_for_the_commit_bound_then_posted_again() {
    // Arrange: DR's front end answers 503 to the first POST (did DR commit it? nobody
    // knows), DR never shows the fulfillment, and the second POST succeeds.
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
    dr_lists_no_fulfillments(&dr).await;
    let mut s = settings(&dr.uri());
    s.fulfillment_commit_bound = Duration::from_secs(1);
    let mut app = spawn_app_with(s).await;

    // Act: the first call, then retries as RetryInfo says, for at most 10 s.
    let started = Instant::now();
    let first = app
        .fulfillments
        .create_fulfillment(request("r5", 1))
        .await
        .unwrap_err();
    let mut pending = vec![first];
    let created = loop {
        let delay = pending
            .last()
            .and_then(|s| s.get_details_retry_info())
            .and_then(|r| r.retry_delay)
            .expect("RetryInfo on every pending answer");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "never posted again"
        );
        tokio::time::sleep(delay).await; // the client's back-off, as told
        match app.fulfillments.create_fulfillment(request("r5", 1)).await {
            Ok(r) => break r.into_inner().fulfillment.unwrap(),
            Err(status) => pending.push(status),
        }
    };

    // Assert: the 503 was looked up, every answer until the bound was the retryable
    // FULFILLMENT_OUTCOME_PENDING without a POST, and then exactly one more POST.
    for status in &pending {
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        let info = status.get_details_error_info().unwrap();
        assert_eq!(info.reason, "FULFILLMENT_OUTCOME_PENDING");
        assert_eq!(info.metadata["request_id"], "r5");
    }
    assert!(
        pending[0].message().contains("503"),
        "{}",
        pending[0].message()
    );
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "posted again only after the commit bound"
    );
    assert_eq!(created.id, "ful_once");
    assert_eq!(posts(&dr).await, 2);
    app.stop().await;
}

#[tokio::test]
async fn a_request_id_dr_already_holds_for_other_items_is_refused() {
    let dr = MockServer::start().await;
    let mut other = dr_fulfillment("ful_old", "ord1", "item1", 3, 0);
    other["metadata"] = json!({"requestId": "r6"});
    Mock::given(method("GET"))
        .and(path("/fulfillments"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"hasMore": false, "data": [other]})),
        )
        .mount(&dr)
        .await;
    let mut app = spawn_app(&dr.uri()).await;
    let status = app
        .fulfillments
        .create_fulfillment(request("r6", 1))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        status.get_details_bad_request().unwrap().field_violations[0].field,
        "request_id"
    );
    assert_eq!(posts(&dr).await, 0);
    app.stop().await;
}

#[tokio::test]
async fn the_lookup_before_a_post_reads_every_page_of_the_orders_fulfillments() {
    let dr = MockServer::start().await;
    let page_one: Vec<_> = (0..100)
        .map(|i| dr_fulfillment(&format!("ful_{i:03}"), "ord1", "item1", 1, 0))
        .collect();
    Mock::given(method("GET"))
        .and(path("/fulfillments"))
        .and(query_param("startingAfter", "ful_099"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "hasMore": false,
            "data": [created("r7")]
        })))
        .with_priority(1)
        .mount(&dr)
        .await;
    Mock::given(method("GET"))
        .and(path("/fulfillments"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"hasMore": true, "data": page_one})),
        )
        .with_priority(2)
        .mount(&dr)
        .await;
    let mut app = spawn_app(&dr.uri()).await;
    let f = app
        .fulfillments
        .create_fulfillment(request("r7", 1))
        .await
        .expect("found on the second page")
        .into_inner();
    assert_eq!(f.fulfillment.unwrap().id, "ful_once");
    assert_eq!(posts(&dr).await, 0);
    assert_eq!(count(&dr, "GET").await, 2);
    app.stop().await;
}
