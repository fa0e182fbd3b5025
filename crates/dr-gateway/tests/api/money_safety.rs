//! Money moves once: at most one fulfillment per `request_id` across restarts, slow
//! DR commits, concurrent retries and shutdowns; bad quantities never reach DR; the
//! distributed model's shipment ids on cancels. Every test counts the fulfillments
//! the sandbox (the DR stand-in) holds afterwards.

use std::time::{Duration, Instant};

use dr_gateway::config::Settings;
use dr_gateway::defaults;
use dr_gateway::pb::v1 as pb;
use dr_sandbox::{FaultKind, FaultSpec};
use serde_json::{json, Value};
use tonic::Code;
use tonic_types::StatusExt;

use crate::helpers::{settings, spawn_app_with, spawn_sandbox, with_deadline, TestSandbox};

/// A sandbox order with one line of `quantity` units; returns (order id, item id).
async fn order(dr: &TestSandbox, spec: Value) -> (String, String) {
    let order = dr.control.create_order(spec).await.expect("order created");
    (
        order["id"].as_str().unwrap().to_owned(),
        order["items"][0]["id"].as_str().unwrap().to_owned(),
    )
}

async fn simple_order(dr: &TestSandbox, quantity: i64) -> (String, String) {
    order(
        dr,
        json!({"items": [{"quantity": quantity, "amount": "30.00"}]}),
    )
    .await
}

/// The fulfillments DR (the sandbox) holds for `order_id`, read from its DR surface.
async fn fulfillments_at_dr(dr: &TestSandbox, order_id: &str) -> Vec<Value> {
    let body: Value = reqwest::Client::new()
        .get(format!(
            "{}/fulfillments?orderId={order_id}&limit=100",
            dr.base_url()
        ))
        .bearer_auth(dr_sandbox::Sandbox::CONTROL_KEY)
        .send()
        .await
        .expect("sandbox answers")
        .json()
        .await
        .expect("a DR list");
    assert_eq!(body["hasMore"], false);
    body["data"].as_array().unwrap().clone()
}

/// How many requests with `method` to `/fulfillments` the sandbox received.
async fn calls(dr: &TestSandbox, method: &str) -> usize {
    dr.control
        .requests(Some(method), Some("/fulfillments"))
        .await
        .unwrap()
        .len()
}

fn capture(order_id: &str, item_id: &str, request_id: &str) -> pb::CaptureItemsRequest {
    pb::CaptureItemsRequest {
        order_id: order_id.into(),
        items: vec![pb::ChargeItem {
            item_id: item_id.into(),
            quantity: 1,
            ..Default::default()
        }],
        request_id: request_id.into(),
        ..Default::default()
    }
}

fn create(order_id: &str, item_id: &str, request_id: &str) -> pb::CreateFulfillmentRequest {
    pb::CreateFulfillmentRequest {
        order_id: order_id.into(),
        items: vec![pb::CreateFulfillmentItem {
            item_id: item_id.into(),
            quantity: 1,
            ..Default::default()
        }],
        request_id: request_id.into(),
        ..Default::default()
    }
}

/// Production settings for restarts: the start-up hold of an in-memory store.
fn restarted(dr: &TestSandbox) -> Settings {
    let mut s = settings(&dr.base_url());
    s.fulfillment_startup_hold = defaults::FULFILLMENT_COMMIT_BOUND;
    s
}

/// UNAVAILABLE with FULFILLMENT_OUTCOME_PENDING and RetryInfo.
fn assert_pending(status: &tonic::Status) {
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(
        status.get_details_error_info().map(|i| i.reason),
        Some("FULFILLMENT_OUTCOME_PENDING".to_owned()),
        "{status:?}"
    );
    assert!(status.get_details_retry_info().is_some(), "{status:?}");
}

#[tokio::test]
async fn a_capture_retried_after_a_restart_returns_the_first_fulfillment_instead_of_charging_again()
{
    // Arrange: one in-memory gateway captured with ship-900-a, then restarted.
    let dr = spawn_sandbox().await;
    let (order_id, item_id) = simple_order(&dr, 2).await;
    let mut before = spawn_app_with(settings(&dr.base_url())).await;
    let first = before
        .charges
        .capture_items(capture(&order_id, &item_id, "ship-900-a"))
        .await
        .expect("captured")
        .into_inner()
        .fulfillment
        .unwrap();
    before.stop().await;
    let mut after = spawn_app_with(restarted(&dr)).await;

    // Act: the client retries on the new process.
    let retried = after
        .charges
        .capture_items(capture(&order_id, &item_id, "ship-900-a"))
        .await
        .expect("the retry gets the first capture")
        .into_inner()
        .fulfillment
        .unwrap();

    // Assert: one fulfillment at DR, one POST; the new process asked DR first.
    assert_eq!(retried.id, first.id);
    assert_eq!(calls(&dr, "GET").await, 2, "one lookup per process");
    assert_eq!(calls(&dr, "POST").await, 1);
    assert_eq!(fulfillments_at_dr(&dr, &order_id).await.len(), 1);
    after.stop().await;
    dr.sandbox.shutdown().await;
}

#[tokio::test]
async fn dr_committing_after_the_upstream_timeout_makes_one_fulfillment_while_a_client_retries_for_20_s(
) {
    // Arrange: DR commits the first POST 3 s after receiving it; the gateway stops
    // waiting after 2 s.
    let dr = spawn_sandbox().await;
    let (order_id, item_id) = simple_order(&dr, 3).await;
    dr.control
        .add_fault(
            &FaultSpec::delayed_commit("/fulfillments", Duration::from_secs(3))
                .method("POST")
                .count(1),
        )
        .await
        .unwrap();
    let mut s = settings(&dr.base_url());
    s.upstream_timeout = Duration::from_secs(2);
    let app = spawn_app_with(s).await;

    // Act: a client sends the request every 500 ms for 20 s (5 s deadline each).
    let started = Instant::now();
    let mut every = tokio::time::interval(Duration::from_millis(500));
    let mut calls_made = Vec::new();
    while started.elapsed() < Duration::from_secs(20) {
        every.tick().await;
        let mut client = app.fulfillments.clone();
        let request = create(&order_id, &item_id, "late-1");
        calls_made.push(tokio::spawn(async move {
            client
                .create_fulfillment(with_deadline(request, Duration::from_secs(5)))
                .await
        }));
    }
    let mut answers = Vec::new();
    for call in calls_made {
        answers.push(call.await.unwrap());
    }

    // Assert: every answer is the one fulfillment or "pending, retry"; the late
    // calls all get the fulfillment; DR holds one, from one POST.
    let at_dr = fulfillments_at_dr(&dr, &order_id).await;
    assert_eq!(at_dr.len(), 1, "{at_dr:#?}");
    assert_eq!(calls(&dr, "POST").await, 1);
    let id = at_dr[0]["id"].as_str().unwrap();
    for answer in &answers {
        match answer {
            Ok(r) => assert_eq!(r.get_ref().fulfillment.as_ref().unwrap().id, id),
            Err(status) => assert_pending(status),
        }
    }
    assert!(
        answers[0].is_err(),
        "the first call cannot know the outcome"
    );
    assert!(
        answers.iter().rev().take(10).all(Result::is_ok),
        "once DR shows it, every retry gets it"
    );
    app.stop().await;
    dr.sandbox.shutdown().await;
}

#[tokio::test]
async fn a_commit_landing_after_a_restart_is_found_instead_of_posted_again() {
    // Arrange: the first process's POST times out; DR commits it 3 s after it
    // arrived, when the first process has already stopped.
    let dr = spawn_sandbox().await;
    let (order_id, item_id) = simple_order(&dr, 3).await;
    dr.control
        .add_fault(
            &FaultSpec::delayed_commit("/fulfillments", Duration::from_secs(3))
                .method("POST")
                .count(1),
        )
        .await
        .unwrap();
    let mut s = settings(&dr.base_url());
    s.upstream_timeout = Duration::from_secs(1);
    let mut before = spawn_app_with(s).await;
    let first = before
        .fulfillments
        .create_fulfillment(create(&order_id, &item_id, "restart-late"))
        .await
        .unwrap_err();
    assert_pending(&first);
    before.stop().await;

    // Act: the client retries on the new process until it gets an answer.
    let mut after = spawn_app_with(restarted(&dr)).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut pending = 0;
    let fulfillment = loop {
        match after
            .fulfillments
            .create_fulfillment(create(&order_id, &item_id, "restart-late"))
            .await
        {
            Ok(r) => break r.into_inner().fulfillment.unwrap(),
            Err(status) => {
                assert_pending(&status);
                pending += 1;
            }
        }
        assert!(Instant::now() < deadline, "never found the late commit");
        // the client's back-off between retries
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    // Assert: the new process never posted; it found the late commit.
    assert!(
        pending > 0,
        "the commit was not there yet at the first retry"
    );
    let at_dr = fulfillments_at_dr(&dr, &order_id).await;
    assert_eq!(at_dr.len(), 1, "{at_dr:#?}");
    assert_eq!(at_dr[0]["id"], fulfillment.id.as_str());
    assert_eq!(calls(&dr, "POST").await, 1);
    after.stop().await;
    dr.sandbox.shutdown().await;
}

#[tokio::test]
async fn after_a_start_a_request_id_dr_does_not_show_waits_for_the_startup_hold_then_posts() {
    let dr = spawn_sandbox().await;
    let (order_id, item_id) = simple_order(&dr, 2).await;
    let mut s = settings(&dr.base_url());
    s.fulfillment_startup_hold = Duration::from_secs(1);
    let started = Instant::now();
    let mut app = spawn_app_with(s).await;

    let first = app
        .fulfillments
        .create_fulfillment(create(&order_id, &item_id, "fresh-1"))
        .await
        .unwrap_err();
    assert_pending(&first);
    let retry_after = first.get_details_retry_info().unwrap().retry_delay.unwrap();
    assert!(retry_after <= Duration::from_secs(1), "{retry_after:?}");
    let mut answer = Err(first);
    while let Err(status) = &answer {
        assert_pending(status);
        assert!(started.elapsed() < Duration::from_secs(10), "never posted");
        let delay = status
            .get_details_retry_info()
            .unwrap()
            .retry_delay
            .unwrap();
        tokio::time::sleep(delay).await; // the client's back-off, as told
        answer = app
            .fulfillments
            .create_fulfillment(create(&order_id, &item_id, "fresh-1"))
            .await;
    }

    assert!(started.elapsed() >= Duration::from_secs(1));
    assert_eq!(fulfillments_at_dr(&dr, &order_id).await.len(), 1);
    assert_eq!(calls(&dr, "POST").await, 1);
    app.stop().await;
    dr.sandbox.shutdown().await;
}

#[tokio::test]
async fn twenty_identical_requests_at_once_across_a_restart_make_one_fulfillment() {
    // Arrange: DR takes 1 s to answer the POST.
    let dr = spawn_sandbox().await;
    let (order_id, item_id) = simple_order(&dr, 5).await;
    dr.control
        .add_fault(
            &FaultSpec::new(FaultKind::Latency, "/fulfillments")
                .method("POST")
                .latency(Duration::from_secs(1)),
        )
        .await
        .unwrap();
    let burst = |app: &crate::helpers::TestApp, deadline: Duration| {
        let calls: Vec<_> = (0..20)
            .map(|_| {
                let mut client = app.charges.clone();
                let request = capture(&order_id, &item_id, "burst-1");
                async move { client.capture_items(with_deadline(request, deadline)).await }
            })
            .collect();
        futures::future::join_all(calls)
    };

    // Act: 20 at once; they give up while the POST is in flight, and the gateway
    // restarts; then 20 at once on the new process.
    let before = spawn_app_with(settings(&dr.base_url())).await;
    let gave_up = burst(&before, Duration::from_millis(300)).await;
    before.stop().await;
    let after = spawn_app_with(restarted(&dr)).await;
    let retried = burst(&after, Duration::from_secs(5)).await;

    // Assert: the first burst ran out of time (the gateway's DEADLINE_EXCEEDED, or
    // tonic's own CANCELLED when the single test thread answers late), the second
    // got the one fulfillment.
    for answer in &gave_up {
        let code = answer.as_ref().unwrap_err().code();
        assert!(
            matches!(code, Code::DeadlineExceeded | Code::Cancelled),
            "{code:?}"
        );
    }
    let at_dr = fulfillments_at_dr(&dr, &order_id).await;
    assert_eq!(at_dr.len(), 1, "{at_dr:#?}");
    assert_eq!(calls(&dr, "POST").await, 1);
    for answer in retried {
        let f = answer.expect("the fulfillment").into_inner().fulfillment;
        assert_eq!(f.unwrap().id, at_dr[0]["id"].as_str().unwrap());
    }
    after.stop().await;
    dr.sandbox.shutdown().await;
}

#[tokio::test]
async fn a_graceful_shutdown_waits_for_a_fulfillment_attempt_in_flight() {
    let dr = spawn_sandbox().await;
    let (order_id, item_id) = simple_order(&dr, 2).await;
    dr.control
        .add_fault(
            &FaultSpec::new(FaultKind::Latency, "/fulfillments")
                .method("POST")
                .latency(Duration::from_millis(1500)),
        )
        .await
        .unwrap();
    let mut app = spawn_app_with(settings(&dr.base_url())).await;
    let gave_up = app
        .fulfillments
        .create_fulfillment(with_deadline(
            create(&order_id, &item_id, "drain-1"),
            Duration::from_millis(300),
        ))
        .await
        .unwrap_err();
    assert_eq!(gave_up.code(), Code::DeadlineExceeded);

    app.stop().await;

    // The POST finished (and DR holds its fulfillment) before the gateway stopped.
    assert_eq!(fulfillments_at_dr(&dr, &order_id).await.len(), 1);
    dr.sandbox.shutdown().await;
}

#[tokio::test]
async fn each_new_request_id_costs_one_lookup_before_its_post_and_a_replay_costs_nothing() {
    // Arrange
    const CREATES: usize = 10;
    let dr = spawn_sandbox().await;
    let (order_id, item_id) = simple_order(&dr, 20).await;
    let mut app = spawn_app_with(settings(&dr.base_url())).await;

    // Act: CREATES new request ids, each replayed once, and one without a request id.
    for i in 0..CREATES {
        let request = create(&order_id, &item_id, &format!("cost-{i}"));
        app.fulfillments
            .create_fulfillment(request.clone())
            .await
            .unwrap();
        app.fulfillments.create_fulfillment(request).await.unwrap();
    }
    let (gets, posts) = (calls(&dr, "GET").await, calls(&dr, "POST").await);
    app.fulfillments
        .create_fulfillment(create(&order_id, &item_id, ""))
        .await
        .unwrap();

    // Assert
    println!(
        "{CREATES} creates with new request ids: {posts} POST + {gets} GET /fulfillments \
         ({} DR calls per create); replays: 0 calls",
        (posts + gets) as f64 / CREATES as f64
    );
    assert_eq!(posts, CREATES);
    assert_eq!(gets, CREATES, "one listing per new request id");
    assert_eq!(
        calls(&dr, "GET").await,
        CREATES,
        "no lookup without request_id"
    );
    assert_eq!(fulfillments_at_dr(&dr, &order_id).await.len(), CREATES + 1);
    app.stop().await;
    dr.sandbox.shutdown().await;
}

#[tokio::test]
async fn cancel_items_carries_the_shipment_id_a_distributed_model_order_needs() {
    // Arrange: an order in DR's distributed model.
    let dr = spawn_sandbox().await;
    let (order_id, item_id) = order(
        &dr,
        json!({"fulfillmentModel": "distributed", "items": [{"quantity": 2, "amount": "20.00"}]}),
    )
    .await;
    let mut app = spawn_app_with(settings(&dr.base_url())).await;
    let cancel = |shipment_id: &str, request_id: &str| pb::CancelItemsRequest {
        order_id: order_id.clone(),
        items: vec![pb::ChargeItem {
            item_id: item_id.clone(),
            quantity: 1,
            shipment_item_id: "100002369154".into(),
        }],
        shipment_id: shipment_id.into(),
        request_id: request_id.into(),
        ..Default::default()
    };

    // Act
    let without = app
        .charges
        .cancel_items(cancel("", "cancel-no-shipment"))
        .await
        .unwrap_err();
    let cancelled = app
        .charges
        .cancel_items(cancel("100002369153", "cancel-shipment"))
        .await
        .expect("cancelled")
        .into_inner()
        .fulfillment
        .unwrap();

    // Assert: DR's 400 names the missing shipmentId; with it, one cancel.
    assert_eq!(without.code(), Code::InvalidArgument);
    assert_eq!(
        without.get_details_bad_request().unwrap().field_violations[0].field,
        "shipmentId"
    );
    assert_eq!(cancelled.shipment_id, "100002369153");
    let at_dr = fulfillments_at_dr(&dr, &order_id).await;
    assert_eq!(at_dr.len(), 1, "{at_dr:#?}");
    assert_eq!(at_dr[0]["shipmentId"], "100002369153");
    assert_eq!(at_dr[0]["items"][0]["cancelQuantity"], 1);
    assert_eq!(at_dr[0]["items"][0]["shipmentItemId"], "100002369154");
    app.stop().await;
    dr.sandbox.shutdown().await;
}

#[tokio::test]
async fn quantities_beyond_the_maximum_are_invalid_argument_naming_the_field_and_never_reach_dr() {
    let dr = spawn_sandbox().await;
    let (order_id, item_id) = simple_order(&dr, 2).await;
    let mut app = spawn_app_with(settings(&dr.base_url())).await;
    let field = |status: tonic::Status| {
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        status.get_details_bad_request().unwrap().field_violations[0]
            .field
            .clone()
    };

    let overflow = app
        .fulfillments
        .create_fulfillment(pb::CreateFulfillmentRequest {
            order_id: order_id.clone(),
            items: vec![pb::CreateFulfillmentItem {
                item_id: item_id.clone(),
                quantity: i64::MAX,
                cancel_quantity: 1,
                ..Default::default()
            }],
            request_id: "overflow-1".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    let mut too_many = capture(&order_id, &item_id, "overflow-2");
    too_many.items[0].quantity = 1_000_000_001;
    let capture_status = app.charges.capture_items(too_many).await.unwrap_err();
    let cancel_status = app
        .charges
        .cancel_items(pb::CancelItemsRequest {
            order_id: order_id.clone(),
            items: vec![pb::ChargeItem {
                item_id: item_id.clone(),
                quantity: i64::MAX,
                ..Default::default()
            }],
            ..Default::default()
        })
        .await
        .unwrap_err();

    assert_eq!(field(overflow), "items[0].quantity");
    assert_eq!(field(capture_status), "items[0].quantity");
    assert_eq!(field(cancel_status), "items[0].quantity");
    assert!(
        dr.control.requests(None, None).await.unwrap().is_empty(),
        "nothing reached DR"
    );
    assert!(fulfillments_at_dr(&dr, &order_id).await.is_empty());
    app.stop().await;
    dr.sandbox.shutdown().await;
}
