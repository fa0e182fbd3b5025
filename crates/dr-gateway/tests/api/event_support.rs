//! Plumbing for the event tests: DR-shaped event bodies, signed webhook posts and
//! reading Subscribe streams with deadlines.

use std::time::Duration;

use dr_gateway::pb::v1 as pb;
use dr_gateway::webhook::signature::sign;
use serde_json::{json, Value};
use tonic::Streaming;

use crate::helpers::{TestApp, WEBHOOK_SECRET};

/// Longest any single wait in these tests may take.
pub const WAIT: Duration = Duration::from_secs(10);

/// A DR event envelope (shape of docs/digital-river.md §3.2).
pub fn event(id: &str, event_type: &str, order_id: &str, live: bool) -> Value {
    json!({
        "id": id,
        "type": event_type,
        "data": {"object": {"id": format!("obj-{id}"), "orderId": order_id, "amount": 37.81}},
        "liveMode": live,
        "createdTime": "2024-05-01T12:00:00.123456Z",
        "webhookIds": ["wh-1"],
        "digitalriverVersion": "2021-12-13"
    })
}

/// `DigitalRiver-Signature` for `body` signed now with `secret`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let ts = chrono::Utc::now().timestamp().to_string();
    format!("{ts}, {}", sign(secret, &ts, body))
}

/// The webhook URL of `app`.
pub fn webhook_url(app: &TestApp) -> String {
    format!("http://{}/webhooks/digitalriver", app.http_addr)
}

/// POSTs raw bytes with an optional signature header; returns status and JSON body.
pub async fn post_raw(app: &TestApp, body: Vec<u8>, signature: Option<String>) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .post(webhook_url(app))
        .header("content-type", "application/json")
        .timeout(WAIT)
        .body(body);
    if let Some(sig) = signature {
        req = req.header("DigitalRiver-Signature", sig);
    }
    let resp = req.send().await.expect("webhook POST sent");
    let status = resp.status().as_u16();
    let body = resp.json::<Value>().await.unwrap_or(Value::Null);
    (status, body)
}

/// POSTs `event` signed with the test secret; asserts 200.
pub async fn deliver(app: &TestApp, event: &Value) -> Value {
    let body = serde_json::to_vec(event).unwrap();
    let sig = signature(WEBHOOK_SECRET, &body);
    let (status, reply) = post_raw(app, body, Some(sig)).await;
    assert_eq!(status, 200, "webhook accepted: {reply}");
    reply
}

/// Opens a Subscribe stream.
pub async fn subscribe(
    app: &TestApp,
    req: pb::SubscribeRequest,
) -> Streaming<pb::SubscribeResponse> {
    app.events
        .clone()
        .subscribe(req)
        .await
        .expect("subscribe accepted")
        .into_inner()
}

/// A subscription request with a type / order filter.
pub fn filtered(
    types: &[&str],
    order_ids: &[&str],
    live_mode: Option<bool>,
) -> pb::SubscribeRequest {
    pb::SubscribeRequest {
        filter: Some(pb::EventFilter {
            types: types.iter().map(|s| s.to_string()).collect(),
            order_ids: order_ids.iter().map(|s| s.to_string()).collect(),
            live_mode,
        }),
        ..Default::default()
    }
}

/// The next event on the stream, skipping heartbeats; panics after [`WAIT`].
pub async fn next_event(stream: &mut Streaming<pb::SubscribeResponse>) -> pb::Event {
    tokio::time::timeout(WAIT, async {
        loop {
            let msg = stream
                .message()
                .await
                .expect("stream healthy")
                .expect("stream open");
            if let Some(pb::subscribe_response::Kind::Event(e)) = msg.kind {
                return e;
            }
        }
    })
    .await
    .expect("an event within the deadline")
}

/// Reads events until `last_id`, returning the ids seen (including it).
pub async fn ids_until(
    stream: &mut Streaming<pb::SubscribeResponse>,
    last_id: &str,
) -> Vec<String> {
    let mut ids = Vec::new();
    loop {
        let e = next_event(stream).await;
        let done = e.id == last_id;
        ids.push(e.id);
        if done {
            return ids;
        }
    }
}
