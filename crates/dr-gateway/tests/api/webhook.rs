//! Webhook intake over a real socket: what DR gets back for good and bad deliveries,
//! and that nothing rejected ever reaches a subscriber.

use crate::event_support::*;
use crate::helpers::{captured_logs, spawn_app, WEBHOOK_SECRET};
use dr_gateway::pb::v1 as pb;

#[tokio::test]
async fn a_signed_event_is_acknowledged_and_streamed_with_all_its_data() {
    // Arrange
    let app = spawn_app("http://127.0.0.1:9").await;
    let mut stream = subscribe(&app, pb::SubscribeRequest::default()).await;
    let event = event("evt-1", "order.charge.capture.complete", "ord-1", false);

    // Act
    let reply = deliver(&app, &event).await;

    // Assert
    assert_eq!(reply["duplicate"], false);
    let got = next_event(&mut stream).await;
    assert_eq!(got.id, "evt-1");
    assert_eq!(got.r#type, "order.charge.capture.complete");
    assert!(!got.cursor.is_empty());
    assert_eq!(got.webhook_ids, vec!["wh-1"]);
    assert_eq!(got.digitalriver_version, "2021-12-13");
    assert_eq!(got.create_time.unwrap().nanos, 123_456_000);
    let object = got.data_object.unwrap();
    assert_eq!(
        object.fields["orderId"].kind,
        Some(prost_types::value::Kind::StringValue("ord-1".into()))
    );
    assert!(matches!(got.payload, Some(pb::event::Payload::Charge(c)) if c.order_id == "ord-1"));
    assert!(
        !captured_logs().contains(WEBHOOK_SECRET),
        "secret leaked into logs"
    );
    app.stop().await;
}

#[tokio::test]
async fn bad_deliveries_get_the_right_4xx_and_are_never_delivered() {
    // Arrange
    let app = spawn_app("http://127.0.0.1:9").await;
    let mut stream = subscribe(&app, pb::SubscribeRequest::default()).await;
    let body = serde_json::to_vec(&event("evt-bad", "order.accepted", "ord-1", false)).unwrap();

    // Act + Assert: forged signature.
    let forged = signature("not-the-secret", &body);
    let (status, reply) = post_raw(&app, body.clone(), Some(forged)).await;
    assert_eq!(
        (status, reply["error"].as_str()),
        (401, Some("invalid_signature"))
    );

    // Missing signature.
    let (status, reply) = post_raw(&app, body.clone(), None).await;
    assert_eq!(
        (status, reply["error"].as_str()),
        (401, Some("missing_signature"))
    );

    // Stale timestamp (10 minutes old, correctly signed).
    let old = (chrono::Utc::now() - chrono::Duration::minutes(10))
        .timestamp()
        .to_string();
    let stale = format!(
        "{old}, {}",
        dr_gateway::webhook::signature::sign(WEBHOOK_SECRET, &old, &body)
    );
    let (status, reply) = post_raw(&app, body.clone(), Some(stale)).await;
    assert_eq!(
        (status, reply["error"].as_str()),
        (401, Some("stale_timestamp"))
    );

    // Truncated body: the signature covered the whole body.
    let truncated = body[..body.len() / 2].to_vec();
    let (status, _) = post_raw(
        &app,
        truncated.clone(),
        Some(signature(WEBHOOK_SECRET, &body)),
    )
    .await;
    assert_eq!(status, 401);

    // Truncated body signed as is: not JSON.
    let sig = signature(WEBHOOK_SECRET, &truncated);
    let (status, reply) = post_raw(&app, truncated, Some(sig)).await;
    assert_eq!(
        (status, reply["error"].as_str()),
        (400, Some("invalid_json"))
    );

    // JSON, but not an event envelope.
    let not_event = br#"{"id":"x","type":"order.accepted","data":{}}"#.to_vec();
    let sig = signature(WEBHOOK_SECRET, &not_event);
    let (status, reply) = post_raw(&app, not_event, Some(sig)).await;
    assert_eq!(
        (status, reply["error"].as_str()),
        (400, Some("not_an_event"))
    );
    assert!(reply["message"].is_string());

    // Signed, but not UTF-8: not JSON.
    let mut not_utf8 = br#"{"id":"x","type":"order.accepted","note":""#.to_vec();
    not_utf8.extend_from_slice(b"\xff\"}");
    let sig = signature(WEBHOOK_SECRET, &not_utf8);
    let (status, reply) = post_raw(&app, not_utf8, Some(sig)).await;
    assert_eq!(
        (status, reply["error"].as_str()),
        (400, Some("invalid_json"))
    );

    // An event whose object nests too deep, or holds a string no protobuf string
    // can carry: refused, naming the field.
    let envelope_with = |object: &str| {
        format!(
            r#"{{"id":"evt-bad","type":"order.accepted","createdTime":"2024-01-01T00:00:00Z","data":{{"object":{object}}}}}"#
        )
        .into_bytes()
    };
    let too_deep = envelope_with(&format!(
        r#"{{"id":"ord-1","a":{}{}}}"#,
        "[".repeat(200),
        "]".repeat(200)
    ));
    let lone_surrogate = envelope_with(r#"{"id":"ord-1","name":"\ud800"}"#);
    for bad in [too_deep, lone_surrogate] {
        let sig = signature(WEBHOOK_SECRET, &bad);
        let (status, reply) = post_raw(&app, bad, Some(sig)).await;
        assert_eq!(
            (status, reply["error"].as_str(), reply["field"].as_str()),
            (400, Some("not_an_event"), Some("data.object"))
        );
    }

    // Over the 1 MiB limit.
    let huge = format!(r#"{{"pad":"{}"}}"#, "x".repeat(1024 * 1024 + 10)).into_bytes();
    let sig = signature(WEBHOOK_SECRET, &huge);
    let (status, _) = post_raw(&app, huge, Some(sig)).await;
    assert_eq!(status, 413);

    // Assert: the first event any subscriber sees is the marker sent after all that.
    deliver(&app, &event("evt-marker", "order.accepted", "ord-1", false)).await;
    assert_eq!(next_event(&mut stream).await.id, "evt-marker");
    app.stop().await;
}

#[tokio::test]
async fn a_redelivered_event_is_acknowledged_but_delivered_once() {
    // Arrange
    let app = spawn_app("http://127.0.0.1:9").await;
    let mut stream = subscribe(&app, pb::SubscribeRequest::default()).await;
    let ev = event("evt-dup", "order.accepted", "ord-1", false);

    // Act
    let first = deliver(&app, &ev).await;
    let second = deliver(&app, &ev).await;
    deliver(&app, &event("evt-after", "order.accepted", "ord-1", false)).await;

    // Assert
    assert_eq!(
        (first["duplicate"].as_bool(), second["duplicate"].as_bool()),
        (Some(false), Some(true))
    );
    assert_eq!(
        ids_until(&mut stream, "evt-after").await,
        ["evt-dup", "evt-after"]
    );
    app.stop().await;
}

#[tokio::test]
async fn health_endpoints_answer_on_the_webhook_listener() {
    let app = spawn_app("http://127.0.0.1:9").await;
    for path in ["healthz", "readyz"] {
        let resp = reqwest::get(format!("http://{}/{path}", app.http_addr))
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200, "{path}");
    }
    app.stop().await;
}
