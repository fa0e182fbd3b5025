//! Bad input never reaches DR, and every row of the DR error → gRPC status table holds
//! end to end.

use std::time::Duration;

use dr_gateway::pb::v1 as pb;
use serde_json::json;
use tonic::Code;
use tonic_types::StatusExt;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::helpers::{
    dr_lists_no_fulfillments, settings, spawn_app, spawn_app_with, with_deadline, API_KEY,
};

fn violations(status: &tonic::Status) -> Vec<String> {
    status
        .get_details_bad_request()
        .map(|b| b.field_violations.into_iter().map(|v| v.field).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn invalid_requests_are_refused_before_any_dr_call() {
    let dr = MockServer::start().await;
    let mut app = spawn_app(&dr.uri()).await;

    let no_order = app
        .fulfillments
        .create_fulfillment(pb::CreateFulfillmentRequest {
            items: vec![pb::CreateFulfillmentItem {
                item_id: "i".into(),
                quantity: 1,
                ..Default::default()
            }],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(no_order.code(), Code::InvalidArgument);
    assert_eq!(violations(&no_order), vec!["order_id"]);

    let no_items = app
        .fulfillments
        .create_fulfillment(pb::CreateFulfillmentRequest {
            order_id: "1".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(violations(&no_items), vec!["items"]);

    let bad_items = app
        .fulfillments
        .create_fulfillment(pb::CreateFulfillmentRequest {
            order_id: "1".into(),
            items: vec![
                pb::CreateFulfillmentItem {
                    item_id: "a".into(),
                    ..Default::default()
                },
                pb::CreateFulfillmentItem {
                    item_id: "b".into(),
                    quantity: -2,
                    ..Default::default()
                },
            ],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        violations(&bad_items),
        vec!["items[0]", "items[1].quantity"]
    );

    let empty_get = app
        .fulfillments
        .get_fulfillment(pb::GetFulfillmentRequest::default())
        .await
        .unwrap_err();
    assert_eq!(violations(&empty_get), vec!["fulfillment_id"]);
    let empty_charge = app
        .charges
        .get_charge(pb::GetChargeRequest::default())
        .await
        .unwrap_err();
    assert_eq!(violations(&empty_charge), vec!["charge_id"]);
    let zero_capture = app
        .charges
        .capture_items(pb::CaptureItemsRequest {
            order_id: "1".into(),
            items: vec![pb::ChargeItem {
                item_id: "a".into(),
                quantity: 0,
                ..Default::default()
            }],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(violations(&zero_capture), vec!["items[0].quantity"]);
    let bad_page = app
        .fulfillments
        .list_fulfillments(pb::ListFulfillmentsRequest {
            page_size: -1,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(violations(&bad_page), vec!["page_size"]);
    let no_key = app
        .fulfillments
        .get_order(pb::GetOrderRequest { key: None })
        .await
        .unwrap_err();
    assert_eq!(violations(&no_key), vec!["key"]);

    assert!(
        dr.received_requests().await.unwrap().is_empty(),
        "nothing reached DR"
    );
    app.stop().await;
}

struct Row {
    http: u16,
    body: serde_json::Value,
    retry_after: Option<&'static str>,
    code: Code,
    reason: &'static str,
}

fn dr_error(kind: &str, code: &str, parameter: &str, message: &str) -> serde_json::Value {
    json!({"type": kind, "errors": [{"code": code, "parameter": parameter, "message": message}]})
}

#[tokio::test]
async fn every_row_of_the_error_table_holds_end_to_end() {
    let rows = [
        Row {
            http: 400,
            body: dr_error("bad_request", "invalid_parameter", "chargeId", "bad id"),
            retry_after: None,
            code: Code::InvalidArgument,
            reason: "INVALID_PARAMETER",
        },
        Row {
            http: 422,
            body: dr_error("bad_request", "missing_parameter", "items", "missing"),
            retry_after: None,
            code: Code::InvalidArgument,
            reason: "MISSING_PARAMETER",
        },
        Row {
            http: 401,
            body: json!({"errors": [{"message": "Unauthorized"}]}),
            retry_after: None,
            code: Code::Internal,
            reason: "UPSTREAM_UNAUTHENTICATED",
        },
        Row {
            http: 403,
            body: dr_error("forbidden", "forbidden", "", "restricted key"),
            retry_after: None,
            code: Code::PermissionDenied,
            reason: "FORBIDDEN",
        },
        Row {
            http: 404,
            body: dr_error("not_found", "not_found", "id", "Charge 'x' not found."),
            retry_after: None,
            code: Code::NotFound,
            reason: "NOT_FOUND",
        },
        Row {
            http: 405,
            body: dr_error("method_not_allowed", "method_not_allowed", "", "no"),
            retry_after: None,
            code: Code::Internal,
            reason: "METHOD_NOT_ALLOWED",
        },
        Row {
            http: 406,
            body: dr_error("not_acceptable", "not_acceptable", "", "no"),
            retry_after: None,
            code: Code::Internal,
            reason: "NOT_ACCEPTABLE",
        },
        Row {
            http: 408,
            body: dr_error("request_timeout", "request_timeout", "", "slow"),
            retry_after: None,
            code: Code::DeadlineExceeded,
            reason: "REQUEST_TIMEOUT",
        },
        Row {
            http: 409,
            body: dr_error("conflict", "invalid_state", "id", "bad state"),
            retry_after: None,
            code: Code::FailedPrecondition,
            reason: "INVALID_STATE",
        },
        Row {
            http: 429,
            body: dr_error("too_many_requests", "too_many_requests", "", "slow down"),
            retry_after: Some("120"),
            code: Code::ResourceExhausted,
            reason: "TOO_MANY_REQUESTS",
        },
        Row {
            http: 500,
            body: dr_error("internal_server_error", "internal_error", "", "oops"),
            retry_after: None,
            code: Code::Internal,
            reason: "INTERNAL_ERROR",
        },
        Row {
            http: 502,
            body: dr_error("bad_gateway", "bad_gateway", "", "bad gw"),
            retry_after: None,
            code: Code::Unavailable,
            reason: "BAD_GATEWAY",
        },
        Row {
            http: 503,
            body: dr_error("service_unavailable", "service_unavailable", "", "down"),
            retry_after: Some("7"),
            code: Code::Unavailable,
            reason: "SERVICE_UNAVAILABLE",
        },
        Row {
            http: 504,
            body: dr_error("gateway_timeout", "gateway_timeout", "", "gw timeout"),
            retry_after: None,
            code: Code::DeadlineExceeded,
            reason: "GATEWAY_TIMEOUT",
        },
        Row {
            http: 418,
            body: json!({}),
            retry_after: None,
            code: Code::Unknown,
            reason: "UPSTREAM_HTTP_418",
        },
    ];
    let dr = MockServer::start().await;
    let mut s = settings(&dr.uri());
    s.retry.max_attempts = 1; // one DR answer per row
    let mut app = spawn_app_with(s).await;
    for row in rows {
        let id = format!("ch_{}", row.http);
        let mut response = ResponseTemplate::new(row.http).set_body_json(&row.body);
        if let Some(wait) = row.retry_after {
            response = response.insert_header("retry-after", wait);
        }
        Mock::given(method("GET"))
            .and(path(format!("/charges/{id}")))
            .respond_with(response)
            .mount(&dr)
            .await;

        let status = app
            .charges
            .get_charge(pb::GetChargeRequest {
                charge_id: id.clone(),
            })
            .await
            .unwrap_err();

        assert_eq!(status.code(), row.code, "HTTP {}", row.http);
        let info = status.get_details_error_info().expect("ErrorInfo");
        assert_eq!(info.reason, row.reason, "HTTP {}", row.http);
        assert_eq!(info.domain, "digitalriver.com");
        assert_eq!(info.metadata["http_status"], row.http.to_string());
        assert!(!info.metadata["upstream_request_id"].is_empty());
        match row.http {
            400 | 422 => assert_eq!(
                status
                    .get_details_bad_request()
                    .unwrap()
                    .field_violations
                    .len(),
                1
            ),
            404 => assert_eq!(
                status.get_details_resource_info().unwrap().resource_name,
                id
            ),
            409 => assert_eq!(
                status
                    .get_details_precondition_failure()
                    .unwrap()
                    .violations[0]
                    .r#type,
                "invalid_state"
            ),
            429 => {
                assert_eq!(
                    status.get_details_retry_info().unwrap().retry_delay,
                    Some(Duration::from_secs(120))
                );
                assert!(status.get_details_quota_failure().is_some());
            }
            503 => assert_eq!(
                status.get_details_retry_info().unwrap().retry_delay,
                Some(Duration::from_secs(7))
            ),
            401 => assert!(!status.message().contains(API_KEY)),
            _ => {}
        }
        if row.http != 401 && row.http != 418 {
            let expected = row.body["errors"][0]["message"].as_str().unwrap();
            assert_eq!(status.message(), expected, "the message is DR's");
        }
    }
    app.stop().await;
}

#[tokio::test]
async fn a_409_from_dr_keeps_the_dr_code_for_callers_to_branch_on() {
    let dr = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/fulfillments"))
        .respond_with(ResponseTemplate::new(409).set_body_json(dr_error(
            "conflict",
            "order_fulfilled",
            "orderId",
            "Resource '201454110336' is fulfilled.",
        )))
        .expect(1)
        .mount(&dr)
        .await;
    dr_lists_no_fulfillments(&dr).await;
    let mut app = spawn_app(&dr.uri()).await;
    let status = app
        .fulfillments
        .create_fulfillment(pb::CreateFulfillmentRequest {
            order_id: "201454110336".into(),
            items: vec![pb::CreateFulfillmentItem {
                item_id: "i".into(),
                quantity: 1,
                ..Default::default()
            }],
            request_id: "r-409".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    let info = status.get_details_error_info().unwrap();
    assert_eq!(info.reason, "ORDER_FULFILLED");
    assert_eq!(info.metadata["dr_type"], "conflict");
    assert_eq!(info.metadata["parameter"], "orderId");
    assert_eq!(status.message(), "Resource '201454110336' is fulfilled.");
    app.stop().await;
}

#[tokio::test]
async fn an_unreachable_dr_is_unavailable() {
    // a port that was free a moment ago: nothing listens there
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut app = spawn_app(&format!("http://{closed}")).await;
    let status = app
        .charges
        .get_charge(pb::GetChargeRequest {
            charge_id: "c".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(
        status.get_details_error_info().unwrap().reason,
        "UPSTREAM_UNAVAILABLE"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_slow_dr_hits_our_upstream_timeout_or_the_callers_deadline() {
    let dr = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/charges/slow"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"id": "slow"}))
                .set_delay(Duration::from_secs(3)),
        )
        .mount(&dr)
        .await;
    let mut s = settings(&dr.uri());
    s.upstream_timeout = Duration::from_millis(300);
    let mut app = spawn_app_with(s).await;
    let started = std::time::Instant::now();
    let status = app
        .charges
        .get_charge(pb::GetChargeRequest {
            charge_id: "slow".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded);
    assert_eq!(
        status.get_details_error_info().unwrap().reason,
        "UPSTREAM_TIMEOUT"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "gave up at our timeout"
    );
    app.stop().await;

    // the caller's shorter deadline wins over a generous upstream timeout
    let mut app = spawn_app(&dr.uri()).await;
    let started = std::time::Instant::now();
    let status = app
        .charges
        .get_charge(with_deadline(
            pb::GetChargeRequest {
                charge_id: "slow".into(),
            },
            Duration::from_millis(400),
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded);
    assert!(started.elapsed() < Duration::from_secs(2));
    app.stop().await;
}

#[tokio::test]
async fn a_body_that_is_not_json_is_internal_and_not_leaked() {
    let dr = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/charges/html"))
        .respond_with(
            ResponseTemplate::new(200).set_body_string("<html>maintenance SECRET-PAGE</html>"),
        )
        .mount(&dr)
        .await;
    Mock::given(method("GET"))
        .and(path("/charges/html502"))
        .respond_with(ResponseTemplate::new(500).set_body_string("<html>oops</html>"))
        .mount(&dr)
        .await;
    let mut app = spawn_app(&dr.uri()).await;
    for id in ["html", "html502"] {
        let status = app
            .charges
            .get_charge(pb::GetChargeRequest {
                charge_id: id.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Internal);
        assert_eq!(
            status.get_details_error_info().unwrap().reason,
            "UPSTREAM_BAD_RESPONSE"
        );
        assert!(!status.message().contains("SECRET-PAGE"));
    }
    app.stop().await;
}

#[tokio::test]
async fn reads_are_retried_on_transient_errors_honouring_retry_after() {
    let dr = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/charges/flaky"))
        .respond_with(ResponseTemplate::new(503))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&dr)
        .await;
    Mock::given(method("GET"))
        .and(path("/charges/flaky"))
        .respond_with(ResponseTemplate::new(429).insert_header("retry-after", "1"))
        .up_to_n_times(1)
        .with_priority(2)
        .mount(&dr)
        .await;
    Mock::given(method("GET"))
        .and(path("/charges/flaky"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"id": "flaky", "state": "capturable"})),
        )
        .with_priority(3)
        .mount(&dr)
        .await;
    let mut app = spawn_app(&dr.uri()).await;
    let started = std::time::Instant::now();
    let charge = app
        .charges
        .get_charge(pb::GetChargeRequest {
            charge_id: "flaky".into(),
        })
        .await
        .expect("third attempt succeeds")
        .into_inner()
        .charge
        .unwrap();
    assert_eq!(charge.state, "capturable");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "waited Retry-After"
    );
    assert_eq!(dr.received_requests().await.unwrap().len(), 3);

    // a Retry-After longer than the caller's deadline is not waited out
    Mock::given(method("GET"))
        .and(path("/charges/limited"))
        .respond_with(ResponseTemplate::new(429).insert_header("retry-after", "30"))
        .mount(&dr)
        .await;
    let started = std::time::Instant::now();
    let status = app
        .charges
        .get_charge(with_deadline(
            pb::GetChargeRequest {
                charge_id: "limited".into(),
            },
            Duration::from_secs(2),
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(started.elapsed() < Duration::from_secs(2));
    app.stop().await;
}

#[tokio::test]
async fn calls_beyond_the_dr_rate_limit_wait_their_turn_or_are_refused_before_the_deadline() {
    let dr = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/charges/paced"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"id": "paced"})))
        .mount(&dr)
        .await;
    let mut s = settings(&dr.uri());
    s.upstream_rate_limit = Some(1); // one call per second, no burst
    let mut app = spawn_app_with(s).await;
    let call = || pb::GetChargeRequest {
        charge_id: "paced".into(),
    };

    app.charges
        .get_charge(call())
        .await
        .expect("the first call goes at once");
    let refused = app
        .charges
        .get_charge(with_deadline(call(), Duration::from_millis(300)))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert_eq!(
        refused.get_details_error_info().unwrap().reason,
        "GATEWAY_RATE_LIMITED"
    );
    assert!(refused
        .get_details_retry_info()
        .unwrap()
        .retry_delay
        .is_some());
    assert_eq!(
        dr.received_requests().await.unwrap().len(),
        1,
        "the refused call never reached DR"
    );

    app.charges
        .get_charge(with_deadline(call(), Duration::from_secs(5)))
        .await
        .expect("a call with time to wait gets its turn");
    assert_eq!(dr.received_requests().await.unwrap().len(), 2);
    app.stop().await;
}
