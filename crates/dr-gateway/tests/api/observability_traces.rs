//! OpenTelemetry traces, as a collector receives them: a gateway process exports
//! over OTLP (gRPC, or HTTP/protobuf) to a receiver in this test, configured only by
//! the standard `OTEL_*` variables. A call carries the caller's W3C `traceparent`;
//! the server span continues the caller's trace, each DR request is a client span
//! under it, and DR (the sandbox's request log) sees that client span as the parent.
//! Without an endpoint nothing is exported and DR gets the caller's `traceparent`
//! as it came.

use dr_gateway::pb::v1 as pb;
use dr_gateway::pb::v1::charge_service_client::ChargeServiceClient;
use dr_gateway::pb::v1::event_stream_client::EventStreamClient;
use dr_sandbox::WebhookRegistration;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::Span;
use serde_json::json;

use crate::helpers::{
    fulfillments_held, spawn_app, spawn_sandbox, KeyMode, TestSandbox, API_KEY, WEBHOOK_SECRET,
};
use crate::observability_support::{
    attribute, hex, otlp_grpc_receiver, otlp_http_receiver, GatewayProcess,
};

const CAPTURE: &str = "digitalriver.gateway.v1.ChargeService/CaptureItems";

/// A caller's span: (trace id, span id) in hex, and its `traceparent`.
fn caller_span() -> (String, String, String) {
    let trace = hex(&rand::random::<[u8; 16]>());
    let span = hex(&rand::random::<[u8; 8]>());
    let traceparent = format!("00-{trace}-{span}-01");
    (trace, span, traceparent)
}

/// An order of two units in the sandbox: (order id, item id).
async fn order(dr: &TestSandbox) -> (String, String) {
    let order = dr
        .control
        .create_order(json!({"items": [{"quantity": 2, "amount": "30.00"}]}))
        .await
        .unwrap();
    (
        order["id"].as_str().unwrap().to_owned(),
        order["items"][0]["id"].as_str().unwrap().to_owned(),
    )
}

fn capture_request(
    order_id: &str,
    item_id: &str,
    request_id: &str,
    traceparent: &str,
    x_request_id: &str,
) -> tonic::Request<pb::CaptureItemsRequest> {
    let mut request = tonic::Request::new(pb::CaptureItemsRequest {
        order_id: order_id.to_owned(),
        items: vec![pb::ChargeItem {
            item_id: item_id.to_owned(),
            quantity: 1,
            ..Default::default()
        }],
        request_id: request_id.to_owned(),
        ..Default::default()
    });
    let metadata = request.metadata_mut();
    metadata.insert("traceparent", traceparent.parse().unwrap());
    metadata.insert("x-request-id", x_request_id.parse().unwrap());
    request
}

fn otel_env(endpoint: &str, protocol: Option<&'static str>) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.to_owned()),
        // why: export within ~100 ms instead of the default 5 s batch delay.
        ("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned()),
    ];
    if let Some(protocol) = protocol {
        env.push(("OTEL_EXPORTER_OTLP_PROTOCOL", protocol.to_owned()));
    }
    env
}

async fn start(dr: &TestSandbox, env: &[(&'static str, String)]) -> GatewayProcess {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    GatewayProcess::start(&dr.base_url(), &[], &env).await
}

fn no_secret_in(spans: &[(String, Span)]) {
    for (_, span) in spans {
        let text = format!("{span:?}");
        for secret in [API_KEY, WEBHOOK_SECRET] {
            assert!(!text.contains(secret), "a secret in span {}", span.name);
        }
    }
}

#[tokio::test]
async fn one_capture_is_a_server_span_in_the_callers_trace_with_dr_client_spans_under_it_and_dr_sees_them(
) {
    let (endpoint, received) = otlp_grpc_receiver().await;
    let dr = spawn_sandbox().await;
    let (order_id, item_id) = order(&dr).await;
    let gateway = start(&dr, &otel_env(&format!("http://{endpoint}"), Some("grpc"))).await;
    dr.control.clear_requests().await.unwrap();
    let (trace, caller, traceparent) = caller_span();

    let mut charges = ChargeServiceClient::new(gateway.channel().await);
    let response = charges
        .capture_items(capture_request(
            &order_id,
            &item_id,
            "trace-cap-1",
            &traceparent,
            "trace-req-1",
        ))
        .await
        .expect("capture");
    assert_eq!(
        response.metadata().get("x-request-id").unwrap(),
        "trace-req-1"
    );
    assert_eq!(fulfillments_held(&dr, KeyMode::Test).await.len(), 1);

    let (service, server) = received
        .wait_for("the CaptureItems server span", |s| {
            s.name == CAPTURE && hex(&s.trace_id) == trace
        })
        .await;
    assert!(service.contains("dr-gateway"), "service.name: {service}");
    assert_eq!(server.kind, SpanKind::Server as i32);
    assert_eq!(
        hex(&server.parent_span_id),
        caller,
        "the caller's span is the parent"
    );
    assert_eq!(attribute(&server, "rpc.system").as_deref(), Some("grpc"));
    assert_eq!(
        attribute(&server, "rpc.service").as_deref(),
        Some("digitalriver.gateway.v1.ChargeService")
    );
    assert_eq!(
        attribute(&server, "rpc.method").as_deref(),
        Some("CaptureItems")
    );
    assert_eq!(
        attribute(&server, "rpc.grpc.status_code").as_deref(),
        Some("0")
    );
    assert_eq!(
        attribute(&server, "request_id").as_deref(),
        Some("trace-req-1")
    );

    let (_, post) = received
        .wait_for("the POST /fulfillments client span", |s| {
            s.name == "POST /fulfillments" && hex(&s.trace_id) == trace
        })
        .await;
    assert_eq!(post.kind, SpanKind::Client as i32);
    assert_eq!(
        post.parent_span_id, server.span_id,
        "the DR call is a child of the server span"
    );
    assert_eq!(
        attribute(&post, "url.template").as_deref(),
        Some("/fulfillments")
    );
    assert_eq!(
        attribute(&post, "http.response.status_code").as_deref(),
        Some("201")
    );
    let (_, lookup) = received
        .wait_for("the lookup before posting", |s| {
            s.name == "GET /fulfillments" && hex(&s.trace_id) == trace
        })
        .await;
    assert_eq!(lookup.parent_span_id, server.span_id);

    // DR saw the client span as the parent, and the caller's request id.
    let posted = dr
        .control
        .requests(Some("POST"), Some("/fulfillments"))
        .await
        .unwrap();
    let [posted] = posted.as_slice() else {
        panic!("one POST /fulfillments: {posted:?}");
    };
    assert_eq!(
        posted.headers.get("traceparent").map(String::as_str),
        Some(format!("00-{trace}-{}-01", hex(&post.span_id)).as_str())
    );
    assert_eq!(
        posted.headers.get("x-request-id").map(String::as_str),
        Some("trace-req-1")
    );
    // One server span per RPC: the handler's own span is not exported.
    let in_trace: Vec<_> = received
        .spans()
        .into_iter()
        .filter(|(_, s)| hex(&s.trace_id) == trace)
        .collect();
    let servers = in_trace
        .iter()
        .filter(|(_, s)| s.kind == SpanKind::Server as i32)
        .count();
    assert_eq!(
        servers,
        1,
        "{:?}",
        in_trace.iter().map(|(_, s)| &s.name).collect::<Vec<_>>()
    );
    no_secret_in(&received.spans());
}

#[tokio::test]
async fn webhook_intake_and_each_delivery_to_a_subscriber_are_spans_over_otlp_http() {
    let (endpoint, received) = otlp_http_receiver().await;
    let dr = spawn_sandbox().await;
    let (order_id, item_id) = order(&dr).await;
    let mut env = otel_env(&format!("http://{endpoint}"), None);
    env.push(("OTEL_SERVICE_NAME", "payments-gateway".to_owned()));
    let gateway = start(&dr, &env).await;
    dr.control
        .add_webhook(&WebhookRegistration::new(gateway.webhook_url()).secret(WEBHOOK_SECRET))
        .await
        .unwrap();
    let channel = gateway.channel().await;

    let (subscribe_trace, _, subscribe_parent) = caller_span();
    let mut subscribe = tonic::Request::new(pb::SubscribeRequest::default());
    subscribe
        .metadata_mut()
        .insert("traceparent", subscribe_parent.parse().unwrap());
    let mut stream = EventStreamClient::new(channel.clone())
        .subscribe(subscribe)
        .await
        .unwrap()
        .into_inner();
    let (_, _, capture_parent) = caller_span();
    ChargeServiceClient::new(channel.clone())
        .capture_items(capture_request(
            &order_id,
            &item_id,
            "trace-cap-2",
            &capture_parent,
            "trace-req-2",
        ))
        .await
        .expect("capture");
    // why: the capture's events come through the webhook. The gateway's first
    // backfill (at start, from DR's `GET /events`) also appends the order's
    // creation event; when a slow start finishes it after Subscribe began, that
    // event is delivered first, and it has no webhook intake span to wait for.
    let delivered = loop {
        let message = tokio::time::timeout(std::time::Duration::from_secs(20), stream.message())
            .await
            .expect("an event")
            .unwrap()
            .unwrap();
        if let Some(pb::subscribe_response::Kind::Event(e)) = message.kind {
            if e.r#type.starts_with("order.charge.capture.") {
                break e;
            }
        }
    };
    let missing = ChargeServiceClient::new(channel)
        .get_charge(pb::GetChargeRequest {
            charge_id: "ch_nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);

    // A stream's span ends (and is exported) when the stream does.
    drop(stream);
    let (service, subscribe_span) = received
        .wait_for("the Subscribe server span", |s| {
            s.name == "digitalriver.gateway.v1.EventStream/Subscribe"
                && hex(&s.trace_id) == subscribe_trace
        })
        .await;
    assert!(
        service.contains("payments-gateway"),
        "OTEL_SERVICE_NAME: {service}"
    );
    let (_, webhook) = received
        .wait_for("the intake span of the delivered event", |s| {
            s.name == "POST /webhooks/digitalriver"
                && attribute(s, "event_id").as_deref() == Some(delivered.id.as_str())
        })
        .await;
    assert_eq!(webhook.kind, SpanKind::Server as i32);
    // The fields the intake records once it has parsed and stored the event.
    assert_eq!(
        attribute(&webhook, "event_type").as_deref(),
        Some(delivered.r#type.as_str())
    );
    assert_eq!(attribute(&webhook, "duplicate").as_deref(), Some("false"));
    assert!(
        attribute(&webhook, "seq").is_some_and(|seq| seq.parse::<u64>().is_ok_and(|n| n > 0)),
        "the intake span names the log position: {:?}",
        attribute(&webhook, "seq")
    );
    let (_, delivery) = received
        .wait_for("the delivery span of that event", |s| {
            s.name == "event.deliver"
                && attribute(s, "event_id").as_deref() == Some(delivered.id.as_str())
        })
        .await;
    assert_eq!(delivery.kind, SpanKind::Producer as i32);
    assert_eq!(
        (delivery.trace_id.clone(), delivery.parent_span_id.clone()),
        (webhook.trace_id.clone(), webhook.span_id.clone()),
        "a delivery belongs to the trace of the webhook that stored the event"
    );
    assert!(
        delivery
            .links
            .iter()
            .any(|l| l.span_id == subscribe_span.span_id && l.trace_id == subscribe_span.trace_id),
        "and links to the Subscribe call it went to"
    );

    // NOT_FOUND is the caller's answer, not a server failure.
    let (_, not_found) = received
        .wait_for("the GetCharge server span", |s| {
            s.name == "digitalriver.gateway.v1.ChargeService/GetCharge"
        })
        .await;
    assert_eq!(
        attribute(&not_found, "rpc.grpc.status_code").as_deref(),
        Some("5")
    );
    assert_ne!(
        not_found.status.as_ref().map(|s| s.code),
        Some(2),
        "not marked as an error"
    );
    no_secret_in(&received.spans());
}

#[tokio::test]
async fn without_tracing_dr_gets_the_callers_traceparent_and_request_id_as_they_came() {
    let dr = spawn_sandbox().await;
    let (order_id, item_id) = order(&dr).await;
    let mut app = spawn_app(&dr.base_url()).await;
    dr.control.clear_requests().await.unwrap();
    let (_, _, traceparent) = caller_span();
    let response = app
        .charges
        .capture_items(capture_request(
            &order_id,
            &item_id,
            "pass-cap-1",
            &traceparent,
            "pass-req-1",
        ))
        .await
        .expect("capture");
    assert_eq!(
        response.metadata().get("x-request-id").unwrap(),
        "pass-req-1"
    );
    let seen = dr
        .control
        .requests(None, Some("/fulfillments"))
        .await
        .unwrap();
    assert_eq!(seen.len(), 2, "the lookup and the POST: {seen:?}");
    for request in &seen {
        assert_eq!(request.headers.get("traceparent"), Some(&traceparent));
        assert_eq!(
            request.headers.get("x-request-id").map(String::as_str),
            Some("pass-req-1")
        );
    }
    // A call without one gets a generated id, returned to it and sent to DR.
    dr.control.clear_requests().await.unwrap();
    let response = app
        .charges
        .get_charge(pb::GetChargeRequest {
            charge_id: "ch_unknown".into(),
        })
        .await
        .unwrap_err();
    let generated = response
        .metadata()
        .get("x-request-id")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(generated.len(), 36, "a UUID: {generated}");
    let seen = dr.control.requests(None, Some("/charges/*")).await.unwrap();
    assert_eq!(
        seen[0].headers.get("x-request-id"),
        Some(&generated),
        "DR got the id the caller was told"
    );
    assert_eq!(seen[0].headers.get("traceparent"), None);
    app.stop().await;
}
