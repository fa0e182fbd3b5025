//! Webhook delivery: signature, retries with re-signing, timeouts, rotation, redelivery,
//! type filters — checked by a small receiver that verifies signatures on its own.

use std::time::Duration;

use dr_sandbox::{
    DeliveryMode, DeliveryOrder, RetryPolicy, SandboxConfig, SecretRotation, WebhookEndpoint,
    WebhookRegistration, WebhookSpec,
};
use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{eventually, verify_signature, Receiver, TestSandbox};

/// Registers an endpoint; panics unless the sandbox answers 201.
async fn register(sb: &TestSandbox, registration: WebhookRegistration) -> WebhookEndpoint {
    sb.control().add_webhook(&registration).await.unwrap()
}

fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        attempts: 4,
        base_delay: Duration::from_millis(20),
        timeout: Duration::from_millis(3000),
    }
}

#[tokio::test]
async fn events_are_delivered_signed_to_registered_endpoints() {
    let rx = Receiver::start(vec![]).await;
    let sb = TestSandbox::start_with(SandboxConfig {
        webhook_retry: fast_retry(),
        webhooks: vec![WebhookSpec {
            url: rx.url.clone(),
            secret: "whsec_start".into(),
            types: vec![],
        }],
        ..Default::default()
    })
    .await;
    let order = sb.simple_order(1, "10").await;
    let oid = order["id"].as_str().unwrap().to_owned();
    let got = rx
        .wait_for("order.accepted delivery", 1, |e| {
            e["type"] == "order.accepted" && e["data"]["object"]["id"] == oid.as_str()
        })
        .await;
    let delivery = &got[0];
    assert!(
        verify_signature(&delivery.signature, "whsec_start", &delivery.body),
        "signature {}",
        delivery.signature
    );
    assert!(!verify_signature(
        &delivery.signature,
        "wrong",
        &delivery.body
    ));
    let ts: i64 = delivery
        .signature
        .split(", ")
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (chrono::Utc::now().timestamp() - ts).abs() < 60,
        "timestamp is unix seconds of wall time"
    );
    // The body is the event exactly as GET /events/{id} serves it.
    let event = delivery.json();
    let (_, stored) = sb
        .get(&format!("/events/{}", event["id"].as_str().unwrap()))
        .await;
    assert_eq!(stored, event);
    assert_eq!(event["webhookIds"].as_array().unwrap().len(), 1);

    // The record is written once the endpoint's answer is in, just after it got the body.
    let event_id = event["id"].as_str().unwrap();
    let deliveries = eventually(5, "the delivery record", || async {
        let d = sb.control().deliveries(Some(event_id), None).await.unwrap();
        (!d.is_empty()).then_some(d)
    })
    .await;
    let d = &deliveries[0];
    assert_eq!(d.status, Some(200));
    assert!(d.success);
    assert_eq!(d.attempt, 1);
    assert_eq!(d.url, rx.url);
    assert_eq!(d.signature, delivery.signature);
    sb.stop().await;
}

#[tokio::test]
async fn failed_deliveries_are_retried_with_a_fresh_signature() {
    let rx = Receiver::start(vec![500, 302]).await;
    let sb = TestSandbox::start_with(SandboxConfig {
        webhook_retry: fast_retry(),
        ..Default::default()
    })
    .await;
    // 201 Created: the client accepts nothing else.
    let hook = sb
        .control()
        .add_webhook(
            &WebhookRegistration::new(rx.url.as_str())
                .secret("s1")
                .types(["order.accepted"]),
        )
        .await
        .unwrap();
    assert!(!hook.id.is_empty());
    sb.simple_order(1, "10").await;
    let got = rx
        .wait_for("three attempts", 3, |e| e["type"] == "order.accepted")
        .await;
    assert_eq!(
        got[0].json()["id"],
        got[2].json()["id"],
        "same event each time"
    );
    for r in &got {
        assert!(verify_signature(&r.signature, "s1", &r.body));
    }
    let deliveries = eventually(5, "3 delivery records", || async {
        let data = sb.control().deliveries(None, None).await.unwrap();
        (data.len() >= 3).then_some(data)
    })
    .await;
    let statuses: Vec<_> = deliveries
        .iter()
        .map(|d| (d.attempt, d.status, d.success))
        .collect();
    assert_eq!(
        statuses,
        [
            (1, Some(500), false),
            (2, Some(302), false),
            (3, Some(200), true)
        ],
        "3xx counts as failure"
    );
    sb.stop().await;
}

#[tokio::test]
async fn slow_endpoints_time_out_and_are_retried() {
    let rx = Receiver::start_slow(vec![], 1, Duration::from_millis(1500)).await;
    let policy = RetryPolicy {
        attempts: 3,
        base_delay: Duration::from_millis(10),
        timeout: Duration::from_millis(300),
    };
    let sb = TestSandbox::start_with(SandboxConfig {
        webhook_retry: policy,
        ..Default::default()
    })
    .await;
    register(&sb, WebhookRegistration::new(rx.url.as_str()).secret("s")).await;
    sb.simple_order(1, "10").await;
    let deliveries = eventually(10, "a successful retry after a timeout", || async {
        let data = sb.control().deliveries(None, None).await.unwrap();
        data.iter().any(|d| d.success).then_some(data)
    })
    .await;
    assert!(
        deliveries[0].error.as_deref().unwrap().contains("timeout"),
        "{:?}",
        deliveries[0]
    );
    assert_eq!(deliveries[1].attempt, 2);
    sb.stop().await;
}

#[tokio::test]
async fn deliveries_give_up_after_the_configured_attempts() {
    let rx = Receiver::start(vec![503; 10]).await;
    let policy = RetryPolicy {
        attempts: 3,
        base_delay: Duration::from_millis(10),
        timeout: Duration::from_millis(3000),
    };
    let sb = TestSandbox::start_with(SandboxConfig {
        webhook_retry: policy,
        ..Default::default()
    })
    .await;
    register(
        &sb,
        WebhookRegistration::new(rx.url.as_str())
            .secret("s")
            .types(["order.accepted"]),
    )
    .await;
    sb.simple_order(1, "10").await;
    let data = eventually(5, "a final attempt", || async {
        let data = sb.control().deliveries(None, None).await.unwrap();
        data.iter().any(|d| !d.will_retry).then_some(data)
    })
    .await;
    let summary: Vec<_> = data
        .iter()
        .map(|d| (d.attempt, d.status, d.will_retry))
        .collect();
    assert_eq!(
        summary,
        [
            (1, Some(503), true),
            (2, Some(503), true),
            (3, Some(503), false)
        ]
    );
    sb.stop().await;
}

#[tokio::test]
async fn rotation_signs_with_the_new_secret_and_records_the_old_one() {
    let rx = Receiver::start(vec![]).await;
    let sb = TestSandbox::start_with(SandboxConfig {
        webhook_retry: fast_retry(),
        ..Default::default()
    })
    .await;
    let control = sb.control();
    let hook = register(
        &sb,
        WebhookRegistration::new(rx.url.as_str())
            .secret("old")
            .types(["order.*"]),
    )
    .await;
    let id = hook.id.as_str();
    // 200 OK: the client accepts nothing else.
    let rotated = control
        .rotate_webhook(
            id,
            &SecretRotation {
                secret: Some("new".into()),
                old_secret_valid_seconds: Some(3600),
            },
        )
        .await
        .unwrap();
    assert_eq!(rotated.secret, "new");
    let secrets = &rotated.secrets;
    assert_eq!(secrets.len(), 2);
    assert_eq!(secrets[1].secret, "old");
    assert!(secrets[1].expires_time.is_some());
    sb.simple_order(1, "10").await;
    let got = rx
        .wait_for("delivery after rotation", 1, |e| {
            e["type"] == "order.accepted"
        })
        .await;
    assert!(verify_signature(&got[0].signature, "new", &got[0].body));
    assert!(!verify_signature(&got[0].signature, "old", &got[0].body));
    // After the window the old secret is no longer listed.
    control.advance_clock(3601).await.unwrap();
    let list = control.webhooks().await.unwrap();
    assert_eq!(list[0].secrets.len(), 1);
    // 204 No Content: the client accepts nothing else.
    control.delete_webhook(id).await.unwrap();
    assert_eq!(
        sb.delete(&format!("/sandbox/webhooks/{id}")).await,
        StatusCode::NOT_FOUND
    );
    sb.stop().await;
}

#[tokio::test]
async fn redelivery_sends_the_same_event_again_resigned() {
    let rx = Receiver::start(vec![]).await;
    let sb = TestSandbox::start_with(SandboxConfig {
        webhook_retry: fast_retry(),
        ..Default::default()
    })
    .await;
    register(&sb, WebhookRegistration::new(rx.url.as_str()).secret("k")).await;
    sb.simple_order(1, "10").await;
    let first = rx
        .wait_for("first delivery", 1, |e| e["type"] == "order.accepted")
        .await;
    let event_id = first[0].json()["id"].as_str().unwrap().to_owned();
    // 202 Accepted: the client accepts nothing else.
    let redelivery = sb.control().redeliver(&event_id).await.unwrap();
    assert_eq!(redelivery.webhook_ids.len(), 1);
    let both = rx
        .wait_for("redelivery", 2, |e| e["id"] == event_id.as_str())
        .await;
    assert_eq!(both[0].body, both[1].body, "same event body");
    assert!(verify_signature(&both[1].signature, "k", &both[1].body));
    let (status, _) = sb.post("/sandbox/events/nope/redeliver", json!({})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    sb.stop().await;
}

#[tokio::test]
async fn endpoints_only_get_the_types_they_subscribe_to() {
    let charges = Receiver::start(vec![]).await;
    let all = Receiver::start(vec![]).await;
    let sb = TestSandbox::start_with(SandboxConfig {
        webhook_retry: fast_retry(),
        ..Default::default()
    })
    .await;
    register(
        &sb,
        WebhookRegistration::new(charges.url.as_str())
            .secret("a")
            .types(["order.charge.*"]),
    )
    .await;
    register(&sb, WebhookRegistration::new(all.url.as_str()).secret("b")).await;
    register(
        &sb,
        WebhookRegistration::new(all.url.as_str())
            .secret("c")
            .enabled(false),
    )
    .await;
    let order = sb.simple_order(1, "10").await;
    sb.fulfill(json!({"orderId": order["id"], "items": [{"itemId": order["items"][0]["id"], "quantity": 1}]})).await;
    all.wait_for("order.complete", 1, |e| e["type"] == "order.complete")
        .await;
    charges
        .wait_for("capture.complete", 1, |e| {
            e["type"] == "order.charge.capture.complete"
        })
        .await;
    assert!(charges.received().iter().all(|r| r.json()["type"]
        .as_str()
        .unwrap()
        .starts_with("order.charge.")));
    // The disabled endpoint (secret "c") never got anything.
    assert!(all
        .received()
        .iter()
        .all(|r| verify_signature(&r.signature, "b", &r.body)));
    sb.stop().await;
}

/// Emits `n` events in a row on a fresh sandbox delivering in `order` to a slow
/// endpoint whose first answer is a 500; returns the receiver once every event
/// arrived with a 2xx, and the ids in emission order.
async fn deliver_burst(order: DeliveryOrder, n: usize) -> (Receiver, Vec<String>) {
    // why: slow answers and a slower retry give concurrent delivery room to show
    // (overlap, the retry overtaken); in-order delivery cannot overlap at all.
    let rx = Receiver::start_slow(vec![500], n, Duration::from_millis(200)).await;
    let sb = TestSandbox::start_with(SandboxConfig {
        webhook_retry: RetryPolicy {
            attempts: 4,
            base_delay: Duration::from_millis(300),
            timeout: Duration::from_millis(3000),
        },
        webhooks: vec![WebhookSpec {
            url: rx.url.clone(),
            secret: "s".into(),
            types: vec![],
        }],
        delivery: DeliveryMode {
            order,
            jitter: Duration::ZERO,
        },
        ..Default::default()
    })
    .await;
    let mut ids = Vec::new();
    for i in 0..n {
        let event = sb
            .control()
            .post_event(json!({"type": "order.updated", "object": {"id": format!("ord-{i}")}}))
            .await
            .unwrap();
        ids.push(event["id"].as_str().unwrap().to_owned());
    }
    // Every event at least once, plus the retry of the one that got the 500.
    rx.wait_for("every event", n + 1, |e| e["type"] == "order.updated")
        .await;
    sb.stop().await;
    (rx, ids)
}

#[tokio::test]
async fn in_order_delivery_sends_one_event_at_a_time_in_emission_order_retries_first() {
    let (rx, ids) = deliver_burst(DeliveryOrder::InOrder, 8).await;

    let arrived: Vec<String> = rx
        .received()
        .iter()
        .map(|r| r.json()["id"].as_str().unwrap().to_owned())
        .collect();
    // The first event, refused once, is retried before the second goes out.
    let mut want = vec![ids[0].clone()];
    want.extend(ids.iter().cloned());
    assert_eq!(arrived, want);
    assert_eq!(rx.max_in_flight(), 1, "one delivery at a time");
}

#[tokio::test]
async fn concurrent_delivery_overlaps_and_a_retried_event_arrives_after_later_ones() {
    let (rx, ids) = deliver_burst(DeliveryOrder::Concurrent, 8).await;

    let arrived: Vec<String> = rx
        .received()
        .iter()
        .map(|r| r.json()["id"].as_str().unwrap().to_owned())
        .collect();
    assert!(rx.max_in_flight() > 1, "deliveries overlap, as DR's do");
    let retried_at = arrived.iter().rposition(|id| *id == ids[0]).unwrap();
    assert!(
        retried_at > 1,
        "the retry of the first event comes after later events: {arrived:?}"
    );
}

#[tokio::test]
async fn events_get_strictly_increasing_creation_times() {
    let sb = TestSandbox::start().await;
    let mut times = Vec::new();
    for i in 0..50 {
        let event = sb
            .control()
            .post_event(json!({"type": "order.updated", "object": {"id": format!("o{i}")}}))
            .await
            .unwrap();
        times.push(event["createdTime"].as_str().unwrap().to_owned());
    }
    let parsed: Vec<chrono::DateTime<chrono::Utc>> = times
        .iter()
        .map(|t| chrono::DateTime::parse_from_rfc3339(t).unwrap().into())
        .collect();
    assert!(parsed.windows(2).all(|w| w[0] < w[1]), "{times:?}");
    sb.stop().await;
}
