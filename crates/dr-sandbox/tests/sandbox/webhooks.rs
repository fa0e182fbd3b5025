//! Webhook delivery: signature, retries with re-signing, timeouts, rotation, redelivery,
//! type filters — checked by a small receiver that verifies signatures on its own.

use std::time::Duration;

use dr_sandbox::{RetryPolicy, SandboxConfig, WebhookSpec};
use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{eventually, verify_signature, Receiver, TestSandbox};

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

    let (_, deliveries) = sb
        .get(&format!(
            "/sandbox/deliveries?eventId={}",
            event["id"].as_str().unwrap()
        ))
        .await;
    let d = &deliveries["data"][0];
    assert_eq!(d["status"], 200);
    assert_eq!(d["success"], true);
    assert_eq!(d["attempt"], 1);
    assert_eq!(d["url"], rx.url.as_str());
    assert_eq!(d["signature"], delivery.signature.as_str());
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
    let (status, hook) = sb
        .post(
            "/sandbox/webhooks",
            json!({"url": rx.url, "secret": "s1", "types": ["order.accepted"]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert!(hook["id"].is_string());
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
        let (_, d) = sb.get("/sandbox/deliveries").await;
        let data = d["data"].as_array().unwrap().clone();
        (data.len() >= 3).then_some(data)
    })
    .await;
    let statuses: Vec<_> = deliveries
        .iter()
        .map(|d| {
            (
                d["attempt"].clone(),
                d["status"].clone(),
                d["success"].clone(),
            )
        })
        .collect();
    assert_eq!(
        statuses,
        [
            (json!(1), json!(500), json!(false)),
            (json!(2), json!(302), json!(false)),
            (json!(3), json!(200), json!(true))
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
    sb.post("/sandbox/webhooks", json!({"url": rx.url, "secret": "s"}))
        .await;
    sb.simple_order(1, "10").await;
    let deliveries = eventually(10, "a successful retry after a timeout", || async {
        let (_, d) = sb.get("/sandbox/deliveries").await;
        let data = d["data"].as_array().unwrap().clone();
        data.iter().any(|d| d["success"] == true).then_some(data)
    })
    .await;
    assert!(
        deliveries[0]["error"].as_str().unwrap().contains("timeout"),
        "{:?}",
        deliveries[0]
    );
    assert_eq!(deliveries[1]["attempt"], 2);
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
    sb.post(
        "/sandbox/webhooks",
        json!({"url": rx.url, "secret": "s", "types": ["order.accepted"]}),
    )
    .await;
    sb.simple_order(1, "10").await;
    let data = eventually(5, "a final attempt", || async {
        let (_, d) = sb.get("/sandbox/deliveries").await;
        let data = d["data"].as_array().unwrap().clone();
        data.iter().any(|d| d["willRetry"] == false).then_some(data)
    })
    .await;
    let summary: Vec<_> = data
        .iter()
        .map(|d| {
            (
                d["attempt"].clone(),
                d["status"].clone(),
                d["willRetry"].clone(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (json!(1), json!(503), json!(true)),
            (json!(2), json!(503), json!(true)),
            (json!(3), json!(503), json!(false))
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
    let (_, hook) = sb
        .post(
            "/sandbox/webhooks",
            json!({"url": rx.url, "secret": "old", "types": ["order.*"]}),
        )
        .await;
    let id = hook["id"].as_str().unwrap();
    let (status, rotated) = sb
        .post(
            &format!("/sandbox/webhooks/{id}/rotate"),
            json!({"secret": "new", "oldSecretValidSeconds": 3600}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(rotated["secret"], "new");
    let secrets = rotated["secrets"].as_array().unwrap();
    assert_eq!(secrets.len(), 2);
    assert_eq!(secrets[1]["secret"], "old");
    assert!(secrets[1]["expiresTime"].is_string());
    sb.simple_order(1, "10").await;
    let got = rx
        .wait_for("delivery after rotation", 1, |e| {
            e["type"] == "order.accepted"
        })
        .await;
    assert!(verify_signature(&got[0].signature, "new", &got[0].body));
    assert!(!verify_signature(&got[0].signature, "old", &got[0].body));
    // After the window the old secret is no longer listed.
    sb.post("/sandbox/clock/advance", json!({"seconds": 3601}))
        .await;
    let (_, list) = sb.get("/sandbox/webhooks").await;
    assert_eq!(list["data"][0]["secrets"].as_array().unwrap().len(), 1);
    assert_eq!(
        sb.delete(&format!("/sandbox/webhooks/{id}")).await,
        StatusCode::NO_CONTENT
    );
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
    sb.post("/sandbox/webhooks", json!({"url": rx.url, "secret": "k"}))
        .await;
    sb.simple_order(1, "10").await;
    let first = rx
        .wait_for("first delivery", 1, |e| e["type"] == "order.accepted")
        .await;
    let event_id = first[0].json()["id"].as_str().unwrap().to_owned();
    let (status, body) = sb
        .post(&format!("/sandbox/events/{event_id}/redeliver"), json!({}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(body["webhookIds"].as_array().unwrap().len(), 1);
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
    sb.post(
        "/sandbox/webhooks",
        json!({"url": charges.url, "secret": "a", "types": ["order.charge.*"]}),
    )
    .await;
    sb.post("/sandbox/webhooks", json!({"url": all.url, "secret": "b"}))
        .await;
    sb.post(
        "/sandbox/webhooks",
        json!({"url": all.url, "secret": "c", "enabled": false}),
    )
    .await;
    let order = sb.simple_order(1, "10").await;
    sb.fulfil(json!({"orderId": order["id"], "items": [{"itemId": order["items"][0]["id"], "quantity": 1}]})).await;
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
