//! The gRPC transport: compression both ways (gzip, deflate, zstd — zstd is proven
//! here with tonic because neither Python's grpcio nor Node's grpc-js can send it),
//! message size limits, and the maximum connection age (GOAWAY, in-flight calls
//! finish, Subscribe ends cleanly, the grace period is enforced). Consume, the
//! bidirectional stream, is compressed both ways like the rest; its connection
//! age is in `groups.rs`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dr_gateway::config::Settings;
use dr_gateway::pb::v1 as pb;
use dr_gateway::pb::v1::charge_service_client::ChargeServiceClient;
use dr_gateway::pb::v1::event_stream_client::EventStreamClient;
use dr_gateway::pb::v1::fulfillment_service_client::FulfillmentServiceClient;
use dr_sandbox::{Sandbox, SandboxConfig, SettleMode, WebhookRegistration};
use serde_json::json;
use tonic::codec::CompressionEncoding;
use tonic::transport::{Channel, Endpoint};
use tonic::Code;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tonic_types::StatusExt;

use crate::event_support::{deliver, event, next_event, webhook_url, WAIT};
use crate::helpers::{settings, spawn_app_with, with_deadline, TestApp, WEBHOOK_SECRET};

const ENCODINGS: [(CompressionEncoding, &str); 3] = [
    (CompressionEncoding::Gzip, "gzip"),
    (CompressionEncoding::Deflate, "deflate"),
    (CompressionEncoding::Zstd, "zstd"),
];

async fn sandbox(settle: SettleMode) -> Sandbox {
    Sandbox::start(SandboxConfig {
        settle,
        webhook_retry: dr_sandbox::RetryPolicy {
            attempts: 3,
            base_delay: Duration::from_millis(50),
            timeout: Duration::from_millis(3000),
        },
        ..SandboxConfig::default()
    })
    .await
    .expect("sandbox starts")
}

/// Creates an order of `quantity` units; returns (order id, item id).
async fn order(sb: &Sandbox, quantity: i64) -> (String, String) {
    let order = sb
        .control_client()
        .create_order(json!({"items": [{"quantity": quantity, "amount": "30.00"}]}))
        .await
        .expect("order created");
    (
        order["id"].as_str().unwrap().to_owned(),
        order["items"][0]["id"].as_str().unwrap().to_owned(),
    )
}

fn get_order(order_id: &str) -> pb::GetOrderRequest {
    pb::GetOrderRequest {
        key: Some(pb::get_order_request::Key::OrderId(order_id.to_owned())),
    }
}

fn grpc_encoding<T>(response: &tonic::Response<T>) -> Option<String> {
    response
        .metadata()
        .get("grpc-encoding")
        .map(|v| v.to_str().unwrap().to_owned())
}

// === compression ===

#[tokio::test]
async fn requests_compressed_with_gzip_deflate_or_zstd_are_accepted_and_answered_in_kind() {
    let sb = sandbox(SettleMode::Immediate).await;
    let (order_id, _) = order(&sb, 1).await;
    let app = spawn_app_with(settings(&sb.base_url())).await;

    for (encoding, name) in ENCODINGS {
        let mut client = FulfillmentServiceClient::new(app.channel.clone())
            .send_compressed(encoding)
            .accept_compressed(encoding);
        let response = client
            .get_order(get_order(&order_id))
            .await
            .unwrap_or_else(|e| panic!("{name}-compressed request refused: {e:?}"));
        assert_eq!(grpc_encoding(&response).as_deref(), Some(name));
        assert_eq!(response.into_inner().order.unwrap().id, order_id);
    }
    // A client that accepts no compression gets plain responses.
    let plain = FulfillmentServiceClient::new(app.channel.clone())
        .get_order(get_order(&order_id))
        .await
        .unwrap();
    assert_eq!(grpc_encoding(&plain), None);
    app.stop().await;
    sb.shutdown().await;
}

#[tokio::test]
async fn subscribe_streams_compressed_events_to_clients_that_accept_them() {
    let app = spawn_app_with(settings("http://127.0.0.1:9")).await;
    for (encoding, name) in ENCODINGS {
        let mut client = EventStreamClient::new(app.channel.clone())
            .send_compressed(encoding)
            .accept_compressed(encoding);
        let response = client
            .subscribe(pb::SubscribeRequest::default())
            .await
            .unwrap_or_else(|e| panic!("{name}: {e:?}"));
        assert_eq!(grpc_encoding(&response).as_deref(), Some(name));
        let mut stream = response.into_inner();
        let id = format!("evt-{name}");
        deliver(&app, &event(&id, "order.accepted", "o-1", false)).await;
        assert_eq!(next_event(&mut stream).await.id, id);
    }
    app.stop().await;
}

/// The next Consume message other than a heartbeat, within [`WAIT`].
async fn next_message(
    stream: &mut tonic::Streaming<pb::ConsumeResponse>,
) -> pb::consume_response::Kind {
    loop {
        let message = tokio::time::timeout(WAIT, stream.message())
            .await
            .expect("a Consume message in time")
            .expect("the stream stays open")
            .expect("the stream stays open");
        match message.kind {
            Some(pb::consume_response::Kind::Heartbeat(_)) => continue,
            Some(kind) => return kind,
            None => panic!("a message without a kind"),
        }
    }
}

#[tokio::test]
async fn a_consume_stream_is_compressed_both_ways_deliveries_out_and_acknowledgements_in() {
    let app = spawn_app_with(settings("http://127.0.0.1:9")).await;
    for (encoding, name) in ENCODINGS {
        // The member's requests (start, then an ack) go compressed, deliveries come
        // back compressed.
        let (requests, rx) = tokio::sync::mpsc::channel(4);
        requests
            .send(pb::ConsumeRequest {
                start: Some(pb::ConsumeStart {
                    group_id: format!("compressed-{name}"),
                    member_name: name.into(),
                    create: Some(pb::ConsumerGroupSettings {
                        reorder_window: Some(prost_types::Duration::default()),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .unwrap();
        let response = EventStreamClient::new(app.channel.clone())
            .send_compressed(encoding)
            .accept_compressed(encoding)
            .consume(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap_or_else(|e| panic!("{name}: {e:?}"));
        assert_eq!(grpc_encoding(&response).as_deref(), Some(name));
        let mut stream = response.into_inner();
        assert!(matches!(
            next_message(&mut stream).await,
            pb::consume_response::Kind::Started(_)
        ));
        let id = format!("evt-consume-{name}");
        deliver(&app, &event(&id, "order.accepted", "o-1", false)).await;
        let pb::consume_response::Kind::Delivery(delivery) = next_message(&mut stream).await else {
            panic!("{name}: no delivery");
        };
        assert_eq!(delivery.event.unwrap().id, id);
        requests
            .send(pb::ConsumeRequest {
                ack_delivery_ids: vec![delivery.delivery_id.clone()],
                ..Default::default()
            })
            .await
            .unwrap();
        let pb::consume_response::Kind::Receipt(receipt) = next_message(&mut stream).await else {
            panic!("{name}: no receipt");
        };
        assert_eq!(receipt.acknowledged_delivery_ids, [delivery.delivery_id]);
    }
    app.stop().await;
}

#[tokio::test]
async fn with_response_compression_off_requests_are_still_accepted_compressed() {
    let sb = sandbox(SettleMode::Immediate).await;
    let (order_id, _) = order(&sb, 1).await;
    let mut s = settings(&sb.base_url());
    s.grpc.compress_responses = false;
    let app = spawn_app_with(s).await;
    let response = FulfillmentServiceClient::new(app.channel.clone())
        .send_compressed(CompressionEncoding::Zstd)
        .accept_compressed(CompressionEncoding::Gzip)
        .get_order(get_order(&order_id))
        .await
        .unwrap();
    assert_eq!(grpc_encoding(&response), None);
    app.stop().await;
    sb.shutdown().await;
}

// === message sizes ===

fn fulfillment_with_metadata(bytes: usize) -> pb::CreateFulfillmentRequest {
    pb::CreateFulfillmentRequest {
        order_id: "o-1".into(),
        items: vec![pb::CreateFulfillmentItem {
            item_id: "i-1".into(),
            quantity: 1,
            ..Default::default()
        }],
        metadata: [("note".to_owned(), "x".repeat(bytes))].into(),
        ..Default::default()
    }
}

/// RESOURCE_EXHAUSTED `MESSAGE_TOO_LARGE` against a 1 KiB limit; `inflated`: the
/// size as sent was within it, the decompressed one was not.
fn assert_message_too_large(status: &tonic::Status, inflated: bool) {
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let info = status.get_details_error_info().expect("ErrorInfo");
    assert_eq!(info.reason, "MESSAGE_TOO_LARGE", "{status:?}");
    assert_eq!(info.metadata["limit_bytes"], "1024", "{status:?}");
    if inflated {
        assert_eq!(info.metadata["compressed"], "true", "{status:?}");
    } else {
        let sent: usize = info.metadata["message_bytes"].parse().unwrap();
        assert!(sent > 1024, "{status:?}");
    }
}

#[tokio::test]
async fn messages_past_the_configured_sizes_are_refused_before_reaching_dr() {
    let sb = sandbox(SettleMode::Immediate).await;
    let (order_id, _) = order(&sb, 1).await;
    let mut s = settings(&sb.base_url());
    s.grpc.max_receive_message_size = 1024;
    s.grpc.max_send_message_size = 64;
    let app = spawn_app_with(s).await;
    let mut fulfillments = FulfillmentServiceClient::new(app.channel.clone());

    // Larger than the receive limit: plain; compressed but still larger as sent
    // (refused at the frame header); and a small gzip body that inflates past the
    // limit (a decompression bomb, 64 KiB from ~200 bytes): all RESOURCE_EXHAUSTED
    // MESSAGE_TOO_LARGE, nothing sent to DR.
    let plain = fulfillments
        .create_fulfillment(fulfillment_with_metadata(4096))
        .await
        .unwrap_err();
    assert_message_too_large(&plain, false);
    let incompressible: String = (0..128)
        .map(|_| uuid::Uuid::new_v4().simple().to_string())
        .collect();
    let mut compressed_but_large = fulfillment_with_metadata(0);
    compressed_but_large
        .metadata
        .insert("note".to_owned(), incompressible);
    let large = fulfillments
        .clone()
        .send_compressed(CompressionEncoding::Gzip)
        .create_fulfillment(compressed_but_large)
        .await
        .unwrap_err();
    assert_message_too_large(&large, false);
    for (encoding, name) in ENCODINGS {
        let inflating = fulfillments
            .clone()
            .send_compressed(encoding)
            .create_fulfillment(fulfillment_with_metadata(64 * 1024))
            .await
            .unwrap_err();
        assert_message_too_large(&inflating, true);
        assert!(
            inflating.message().contains("decompresses"),
            "{name}: {inflating:?}"
        );
    }
    assert!(
        sb.control_client()
            .requests(Some("POST"), Some("/fulfillments"))
            .await
            .unwrap()
            .is_empty(),
        "nothing reached DR"
    );
    // An answer larger than the send limit fails instead of being sent.
    let too_big = fulfillments
        .get_order(get_order(&order_id))
        .await
        .unwrap_err();
    assert_eq!(too_big.code(), Code::OutOfRange, "{too_big:?}");
    app.stop().await;
    sb.shutdown().await;
}

// === connection age ===

/// A channel to `app` over connections this test counts.
async fn counted_channel(app: &TestApp) -> (Channel, Arc<AtomicUsize>) {
    let connections = Arc::new(AtomicUsize::new(0));
    let counter = connections.clone();
    let addr = app.grpc_addr;
    let connector = tower::service_fn(move |_uri: http::Uri| {
        counter.fetch_add(1, Ordering::SeqCst);
        async move {
            let stream = tokio::net::TcpStream::connect(addr).await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
        }
    });
    let channel = Endpoint::from_static("http://gateway")
        .connect_with_connector(connector)
        .await
        .expect("connect");
    (channel, connections)
}

/// Calls health on `channel` until the client has opened a second connection
/// (it does so after the server's GOAWAY), within [`WAIT`].
async fn until_reconnected(channel: &Channel, connections: &AtomicUsize) {
    let mut health = HealthClient::new(channel.clone());
    tokio::time::timeout(WAIT, async {
        while connections.load(Ordering::SeqCst) < 2 {
            let _ = health
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the client reconnected after the connection's maximum age");
}

/// Starts CaptureItems with `wait` (which holds until the sandbox settles) on
/// `channel`, and waits until the capture is pending at the sandbox.
async fn capture_in_flight(
    channel: &Channel,
    sb: &Sandbox,
    order_id: String,
    item_id: String,
) -> tokio::task::JoinHandle<Result<pb::CaptureItemsResponse, tonic::Status>> {
    let mut charges = ChargeServiceClient::new(channel.clone());
    let call = tokio::spawn(async move {
        charges
            .capture_items(with_deadline(
                pb::CaptureItemsRequest {
                    order_id,
                    items: vec![pb::ChargeItem {
                        item_id,
                        quantity: 1,
                        ..Default::default()
                    }],
                    wait: true,
                    ..Default::default()
                },
                Duration::from_secs(30),
            ))
            .await
            .map(tonic::Response::into_inner)
    });
    let control = sb.control_client();
    tokio::time::timeout(WAIT, async {
        while control.pending().await.expect("pending").is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the capture reached the sandbox");
    call
}

fn aged_settings(sb: &Sandbox, age: Duration, grace: Duration) -> Settings {
    let mut s = settings(&sb.base_url());
    s.grpc.max_connection_age = Some(age);
    s.grpc.max_connection_age_grace = grace;
    s
}

#[tokio::test]
async fn a_connection_past_its_age_gets_goaway_and_its_in_flight_calls_finish() {
    // Arrange: a capture that cannot finish until the test settles it, and a
    // Subscribe stream, both on one connection that ages after 500 ms.
    let sb = sandbox(SettleMode::Stepped).await;
    let app = spawn_app_with(aged_settings(&sb, Duration::from_millis(500), WAIT)).await;
    sb.control_client()
        .add_webhook(&WebhookRegistration::new(webhook_url(&app)).secret(WEBHOOK_SECRET))
        .await
        .unwrap();
    let (order_id, item_id) = order(&sb, 2).await;
    let (channel, connections) = counted_channel(&app).await;
    let mut stream = EventStreamClient::new(channel.clone())
        .subscribe(pb::SubscribeRequest::default())
        .await
        .unwrap()
        .into_inner();
    let capture = capture_in_flight(&channel, &sb, order_id, item_id).await;

    // Act: the connection ages; the client moves to a new one; then DR settles.
    until_reconnected(&channel, &connections).await;
    // (events of the capture may come first)
    let ended = tokio::time::timeout(WAIT, async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("the stream ended without a status"),
                Err(status) => return status,
            }
        }
    })
    .await
    .expect("the stream ended when its connection aged");
    sb.control_client().settle().await.unwrap();
    let captured = tokio::time::timeout(WAIT, capture)
        .await
        .expect("the in-flight call finished")
        .unwrap();

    // Assert
    let captured = captured.expect("the call in flight at GOAWAY succeeded");
    assert!(captured.settled, "{captured:?}");
    assert_eq!(ended.code(), Code::Unavailable);
    assert_eq!(
        ended.get_details_error_info().unwrap().reason,
        "CONNECTION_AGED"
    );
    assert!(ended.get_details_retry_info().is_some());
    assert_eq!(connections.load(Ordering::SeqCst), 2);
    app.stop().await;
    sb.shutdown().await;
}

#[tokio::test]
async fn a_call_still_running_after_the_grace_period_is_cut_off() {
    let sb = sandbox(SettleMode::Stepped).await;
    let app = spawn_app_with(aged_settings(
        &sb,
        Duration::from_millis(300),
        Duration::from_millis(300),
    ))
    .await;
    sb.control_client()
        .add_webhook(&WebhookRegistration::new(webhook_url(&app)).secret(WEBHOOK_SECRET))
        .await
        .unwrap();
    let (order_id, item_id) = order(&sb, 2).await;
    let (channel, _) = counted_channel(&app).await;

    // The capture waits for a settlement that never comes: the grace ends first.
    let capture = capture_in_flight(&channel, &sb, order_id, item_id).await;
    let outcome = tokio::time::timeout(WAIT, capture)
        .await
        .expect("cut off well before the call's own 30 s deadline")
        .unwrap();

    let error = outcome.expect_err("the connection was closed under the call");
    assert_ne!(error.code(), Code::DeadlineExceeded, "{error:?}");
    app.stop().await;
    sb.shutdown().await;
}
