//! The access log: one line per RPC (target `dr_gateway::access`), at INFO for a
//! success and for the caller's errors, at ERROR for the gateway's; the request id
//! is the caller's `x-request-id` (or generated), returned in the response; every
//! value is capped, so a megabyte field makes a short line.
//!
//! These tests read what the in-process gateway logged (every crate at TRACE, see
//! `helpers::captured_logs`) and pick their lines by the request ids they sent.

use dr_gateway::pb::v1 as pb;
use dr_sandbox::FaultSpec;
use serde_json::json;

use crate::helpers::{captured_logs, spawn_app, spawn_sandbox, API_KEY, WEBHOOK_SECRET};
use crate::observability_support::eventually;

/// A request id no other test sends.
fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

fn with_request_id<T>(message: T, request_id: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("x-request-id", request_id.parse().unwrap());
    request
}

/// The access log line of the RPC with `request_id`, once it is written.
async fn access_line(request_id: &str) -> String {
    let needle = format!("request_id=\"{request_id}\"");
    eventually(&format!("the access log line of {request_id}"), || {
        let line = captured_logs()
            .lines()
            .find(|l| l.contains("dr_gateway::access") && l.contains(&needle))
            .map(str::to_owned);
        async move { line }
    })
    .await
}

/// Every captured line that mentions `text`.
fn lines_with(text: &str) -> Vec<String> {
    captured_logs()
        .lines()
        .filter(|l| l.contains(text))
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn a_success_and_a_caller_error_are_one_info_line_each_and_a_gateway_failure_is_an_error() {
    let dr = spawn_sandbox().await;
    let order = dr
        .control
        .create_order(json!({"items": [{"quantity": 1, "amount": "10.00"}]}))
        .await
        .unwrap();
    let order_id = order["id"].as_str().unwrap().to_owned();
    dr.control
        .add_fault(&FaultSpec::status("/charges/ch_dr_breaks", 500))
        .await
        .unwrap();
    let mut app = spawn_app(&dr.base_url()).await;

    let ok = unique("al-ok");
    let answered = app
        .fulfillments
        .get_order(with_request_id(
            pb::GetOrderRequest {
                key: Some(pb::get_order_request::Key::OrderId(order_id.clone())),
            },
            &ok,
        ))
        .await
        .expect("GetOrder");
    assert_eq!(
        answered.metadata().get("x-request-id").unwrap(),
        ok.as_str()
    );
    let line = access_line(&ok).await;
    assert!(line.contains(" INFO "), "{line}");
    for field in [
        "grpc.service=\"digitalriver.gateway.v1.FulfillmentService\"",
        "grpc.method=\"GetOrder\"",
        "grpc.code=\"OK\"",
        "peer=\"127.0.0.1:",
        "caller=anonymous",
        "duration_ms=",
    ] {
        assert!(line.contains(field), "{field} in {line}");
    }

    let not_found = unique("al-nf");
    let status = app
        .charges
        .get_charge(with_request_id(
            pb::GetChargeRequest {
                charge_id: "ch_nowhere".into(),
            },
            &not_found,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound);
    assert_eq!(
        status.metadata().get("x-request-id").unwrap(),
        not_found.as_str()
    );
    let line = access_line(&not_found).await;
    assert!(line.contains(" INFO "), "{line}");
    assert!(line.contains("grpc.code=\"NotFound\""), "{line}");
    assert!(
        line.contains("grpc.message="),
        "the reason is in the line: {line}"
    );
    let errors: Vec<_> = lines_with(&not_found)
        .into_iter()
        .filter(|l| l.contains(" ERROR "))
        .collect();
    assert!(
        errors.is_empty(),
        "a NOT_FOUND is the caller's: {errors:#?}"
    );

    let invalid = unique("al-invalid");
    let status = app
        .charges
        .capture_items(with_request_id(
            pb::CaptureItemsRequest {
                order_id: order_id.clone(),
                ..Default::default()
            },
            &invalid,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    let line = access_line(&invalid).await;
    assert!(
        line.contains(" INFO ") && line.contains("grpc.code=\"InvalidArgument\""),
        "{line}"
    );

    let broken = unique("al-internal");
    let status = app
        .charges
        .get_charge(with_request_id(
            pb::GetChargeRequest {
                charge_id: "ch_dr_breaks".into(),
            },
            &broken,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Internal);
    let line = access_line(&broken).await;
    assert!(
        line.contains(" ERROR ") && line.contains("grpc.code=\"Internal\""),
        "{line}"
    );

    // A request id that is not a plain token is replaced, not logged or echoed.
    let status = app
        .charges
        .get_charge(with_request_id(
            pb::GetChargeRequest {
                charge_id: "ch_nowhere".into(),
            },
            "<script>alert(1)</script>",
        ))
        .await
        .unwrap_err();
    let replaced = status
        .metadata()
        .get("x-request-id")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(replaced.len(), 36, "a generated UUID: {replaced}");
    access_line(&replaced).await;
    assert!(lines_with("<script>").is_empty());

    // Kubernetes' probes every few seconds would drown the log: DEBUG.
    let probe = unique("al-probe");
    tonic_health::pb::health_client::HealthClient::new(app.channel.clone())
        .check(with_request_id(
            tonic_health::pb::HealthCheckRequest::default(),
            &probe,
        ))
        .await
        .expect("health check");
    let line = access_line(&probe).await;
    assert!(
        line.contains(" DEBUG ") && line.contains("grpc.method=\"Check\""),
        "{line}"
    );

    for secret in [API_KEY, WEBHOOK_SECRET] {
        assert!(!captured_logs().contains(secret), "a secret in the logs");
    }
    app.stop().await;
}

#[tokio::test]
async fn a_megabyte_field_is_logged_capped() {
    let dr = spawn_sandbox().await;
    let mut app = spawn_app(&dr.base_url()).await;
    let big = unique("al-big");
    let huge_id = format!("ch_{}", "x".repeat(1 << 20));
    // (DR cannot take such a path; whatever the answer, the log must stay short.)
    let _ = app
        .charges
        .get_charge(with_request_id(
            pb::GetChargeRequest { charge_id: huge_id },
            &big,
        ))
        .await;
    let line = access_line(&big).await;
    assert!(line.len() < 4096, "the access line is {} bytes", line.len());
    assert!(
        line.contains("grpc.method=\"GetCharge\" grpc.code=\""),
        "{line}"
    );
    // Nothing anywhere logged the id in full: every mention of it is cut.
    let run = "x".repeat(10_000);
    let long: Vec<String> = captured_logs()
        .lines()
        .filter(|l| l.contains(&run))
        .map(|l| format!("{} bytes: {}", l.len(), &l[..300.min(l.len())]))
        .collect();
    assert!(
        long.is_empty(),
        "lines with the raw 1 MB id, by length: {long:?}"
    );
    let mentions = lines_with(&big);
    assert!(!mentions.is_empty());
    for mention in mentions {
        assert!(mention.len() < 8192, "a {}-byte line", mention.len());
    }
    app.stop().await;
}
