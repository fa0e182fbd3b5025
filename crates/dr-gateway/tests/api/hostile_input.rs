//! Hostile input stays cheap and every answer bounded: ids that would change DR's
//! URL, amounts with absurd exponents, requests with thousands of errors or fields
//! larger than the gateway accepts, DR asking to wait minutes, a store full of open
//! requests, credentials in URLs.

use std::time::{Duration, Instant};

use dr_gateway::pb::v1 as pb;
use dr_gateway::pb::v1::charge_service_client::ChargeServiceClient;
use serde_json::json;
use tonic::transport::{Channel, Endpoint};
use tonic::Code;
use tonic_types::StatusExt;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::event_support::{post_raw, signature};
use crate::helpers::{
    captured_logs, dr_lists_no_fulfillments, settings, spawn_app, spawn_app_with, WEBHOOK_SECRET,
};

/// The field the first `BadRequest` violation names, for an INVALID_ARGUMENT.
fn invalid_field(status: tonic::Status) -> String {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    status
        .get_details_bad_request()
        .and_then(|b| b.field_violations.into_iter().next())
        .map(|v| v.field)
        .unwrap_or_default()
}

fn order_key(id: &str) -> pb::GetOrderRequest {
    pb::GetOrderRequest {
        key: Some(pb::get_order_request::Key::OrderId(id.into())),
    }
}

fn capture(order_id: &str, item_id: &str) -> pb::CaptureItemsRequest {
    pb::CaptureItemsRequest {
        order_id: order_id.into(),
        items: vec![pb::ChargeItem {
            item_id: item_id.into(),
            quantity: 1,
            ..Default::default()
        }],
        request_id: "hostile-1".into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn ids_that_would_change_drs_url_are_refused_naming_the_field_before_any_dr_call() {
    // Arrange: a DR that answers nothing; every request it gets is a failure.
    let dr = MockServer::start().await;
    let mut app = spawn_app(&dr.uri()).await;
    let megabyte = "1".repeat(1 << 20);
    let hostile = [
        ".", "..", "a/../b", "x?y", "x#y", "%2e%2e", "a\r\nb", " 7", "\0", &megabyte,
    ];

    for id in hostile {
        // Act + Assert: every RPC that puts an id into a DR path or query
        let f = &mut app.fulfillments;
        let c = &mut app.charges;
        let e = &mut app.events;
        let tracking = Some(pb::Tracking {
            number: "Z1".into(),
            ..Default::default()
        });
        let fields = [
            (f.get_order(order_key(id)).await.err(), "order_id"),
            (
                f.get_fulfillment(pb::GetFulfillmentRequest {
                    fulfillment_id: id.into(),
                })
                .await
                .err(),
                "fulfillment_id",
            ),
            (
                f.update_fulfillment_tracking(pb::UpdateFulfillmentTrackingRequest {
                    fulfillment_id: id.into(),
                    tracking: tracking.clone(),
                    ..Default::default()
                })
                .await
                .err(),
                "fulfillment_id",
            ),
            (
                f.list_fulfillments(pb::ListFulfillmentsRequest {
                    order_id: id.into(),
                    ..Default::default()
                })
                .await
                .err(),
                "order_id",
            ),
            (
                f.create_fulfillment(pb::CreateFulfillmentRequest {
                    order_id: id.into(),
                    items: vec![pb::CreateFulfillmentItem {
                        item_id: "1".into(),
                        quantity: 1,
                        ..Default::default()
                    }],
                    request_id: "hostile-2".into(),
                    ..Default::default()
                })
                .await
                .err(),
                "order_id",
            ),
            (
                c.capture_items(capture("1", id)).await.err(),
                "items[0].item_id",
            ),
            (
                c.get_charge(pb::GetChargeRequest {
                    charge_id: id.into(),
                })
                .await
                .err(),
                "charge_id",
            ),
            (
                c.get_payment_source(pb::GetPaymentSourceRequest {
                    source_id: id.into(),
                })
                .await
                .err(),
                "source_id",
            ),
            (
                c.list_order_charges(pb::ListOrderChargesRequest {
                    order_id: id.into(),
                })
                .await
                .err(),
                "order_id",
            ),
            (
                e.get_event(pb::GetEventRequest {
                    event_id: id.into(),
                })
                .await
                .err(),
                "event_id",
            ),
        ];
        for (i, (status, field)) in fields.into_iter().enumerate() {
            let status = status.unwrap_or_else(|| panic!("call {i} with {:.20?} succeeded", id));
            assert_eq!(invalid_field(status), field, "call {i} with {:.20?}", id);
        }
    }
    let received = dr.received_requests().await.unwrap();
    assert!(
        received.is_empty(),
        "DR got {:?}",
        received
            .iter()
            .map(|r| format!("{} {}", r.method, r.url.path()))
            .collect::<Vec<_>>()
    );
    app.stop().await;
}

#[tokio::test]
async fn a_webhook_whose_amounts_have_absurd_exponents_is_acknowledged_within_drs_timeout() {
    // Arrange: a signed capture event with two amounts DR could send as JSON numbers.
    let dr = MockServer::start().await;
    let app = spawn_app(&dr.uri()).await;
    let body = br#"{"id":"ev-exp","type":"order.charge.capture.complete","createdTime":"2024-05-01T12:00:00Z",
        "data":{"object":{"id":"ch-1","orderId":"1","currency":"USD","amount":0e-2147483648,
        "captures":[{"id":"cap-1","amount":0E-2147483648,"state":"complete"}]}}}"#
        .to_vec();
    let sig = signature(WEBHOOK_SECRET, &body);

    // Act
    let started = Instant::now();
    let (status, reply) =
        tokio::time::timeout(Duration::from_secs(3), post_raw(&app, body, Some(sig)))
            .await
            .expect("DR gives a delivery 3 s");

    // Assert: stored and acknowledged well before DR would give up and re-send.
    assert_eq!(status, 200, "{reply}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    app.stop().await;
}

#[tokio::test]
async fn ten_thousand_bad_items_give_twenty_violations_and_a_count_that_fit_a_16_kib_client() {
    // Arrange: a client that accepts 16 KiB of metadata, gRPC's usual default.
    let dr = MockServer::start().await;
    let app = spawn_app(&dr.uri()).await;
    let channel: Channel = Endpoint::from_shared(format!("http://{}", app.grpc_addr))
        .unwrap()
        .http2_max_header_list_size(16 * 1024)
        .connect()
        .await
        .unwrap();
    let items = (0..10_000)
        .map(|i| pb::ChargeItem {
            item_id: format!("item-{i}"),
            quantity: 0,
            ..Default::default()
        })
        .collect();

    // Act
    let status = ChargeServiceClient::new(channel)
        .capture_items(pb::CaptureItemsRequest {
            order_id: "1".into(),
            items,
            request_id: "many".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();

    // Assert
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let details = status.get_error_details();
    let violations = &details.bad_request().expect("BadRequest").field_violations;
    assert_eq!(violations.len(), 20);
    assert_eq!(violations[0].field, "items[0].quantity");
    let info = details.error_info().expect("ErrorInfo");
    assert_eq!(info.metadata["violations"], "10000");
    assert!(
        status.message().len() <= 1024,
        "{} bytes",
        status.message().len()
    );
    assert!(status.message().ends_with("(and 9980 more)"));
    assert!(dr.received_requests().await.unwrap().is_empty());
    app.stop().await;
}

#[tokio::test]
async fn a_request_larger_than_the_gateway_takes_is_resource_exhausted() {
    let dr = MockServer::start().await;
    let mut app = spawn_app(&dr.uri()).await;
    let ten_megabytes = "9".repeat(10 << 20);

    let status = app
        .fulfillments
        .get_order(order_key(&ten_megabytes))
        .await
        .unwrap_err();

    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let info = status.get_details_error_info().expect("ErrorInfo");
    assert_eq!(info.reason, "MESSAGE_TOO_LARGE");
    assert_eq!(info.metadata["limit_bytes"], (4 << 20).to_string());
    assert!(dr.received_requests().await.unwrap().is_empty());
    // The connection stays usable for the next call.
    let next = app
        .fulfillments
        .get_order(order_key("."))
        .await
        .unwrap_err();
    assert_eq!(next.code(), Code::InvalidArgument);
    app.stop().await;
}

#[tokio::test]
async fn a_read_without_deadline_does_not_wait_out_a_retry_after_of_minutes() {
    // Arrange: DR asks for 120 s, as its docs allow for 429.
    let dr = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/charges/busy"))
        .respond_with(ResponseTemplate::new(429).insert_header("retry-after", "120"))
        .mount(&dr)
        .await;
    let mut app = spawn_app(&dr.uri()).await;

    // Act: no grpc-timeout on the call
    let started = Instant::now();
    let status = tokio::time::timeout(
        Duration::from_secs(20),
        app.charges.get_charge(pb::GetChargeRequest {
            charge_id: "busy".into(),
        }),
    )
    .await
    .expect("answered long before DR's Retry-After")
    .unwrap_err();

    // Assert: DR's delay handed to the caller, one request to DR.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_eq!(
        status.get_details_retry_info().and_then(|r| r.retry_delay),
        Some(Duration::from_secs(120))
    );
    assert_eq!(dr.received_requests().await.unwrap().len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn when_the_idempotency_store_holds_only_open_requests_a_new_request_id_is_refused_unposted()
{
    // Arrange: room for two request ids; DR takes every POST but never answers
    // within the gateway's upstream timeout, so both outcomes stay open.
    let dr = MockServer::start().await;
    dr_lists_no_fulfillments(&dr).await;
    Mock::given(method("POST"))
        .and(path("/fulfillments"))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(30)))
        .mount(&dr)
        .await;
    let mut s = settings(&dr.uri());
    s.idempotency_max_entries = 2;
    s.upstream_timeout = Duration::from_millis(300);
    s.reconcile_timeout = Duration::from_millis(300);
    let mut app = spawn_app_with(s).await;
    for id in ["open-1", "open-2"] {
        let mut request = capture("231388420336", "158140150336");
        request.request_id = id.into();
        let status = app.charges.capture_items(request).await.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{id}: {status:?}");
    }
    let posts_before = posts(&dr).await;

    // Act
    let mut request = capture("231388420336", "158140150336");
    request.request_id = "third".into();
    let status = app.charges.capture_items(request).await.unwrap_err();

    // Assert: refused with a reason and a retry delay, and nothing posted for it.
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let details = status.get_error_details();
    assert_eq!(
        details.error_info().unwrap().reason,
        "IDEMPOTENCY_STORE_FULL"
    );
    assert!(details.retry_info().is_some());
    assert_eq!(posts(&dr).await, posts_before);
    app.stop().await;
}

async fn posts(dr: &MockServer) -> usize {
    dr.received_requests()
        .await
        .unwrap()
        .iter()
        .filter(|r| r.method.as_str() == "POST")
        .count()
}

#[tokio::test]
async fn a_password_in_the_dr_base_url_is_never_logged() {
    // Arrange: the base URL carries credentials; one call reaches DR, one cannot.
    let dr = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/charges/c1"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"id": "c1"})))
        .mount(&dr)
        .await;
    let with_password = dr
        .uri()
        .replace("http://", "http://gateway:Pa55-hunter2-secret@");
    let mut app = spawn_app_with(settings(&with_password)).await;
    let unreachable = {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = closed.local_addr().unwrap();
        drop(closed);
        format!("http://gateway:Pa55-hunter2-secret@{addr}")
    };
    let mut down = spawn_app_with(settings(&unreachable)).await;

    // Act
    let _ = app
        .charges
        .get_charge(pb::GetChargeRequest {
            charge_id: "c1".into(),
        })
        .await;
    let status = down
        .charges
        .get_charge(pb::GetChargeRequest {
            charge_id: "c1".into(),
        })
        .await
        .unwrap_err();
    app.stop().await;
    down.stop().await;

    // Assert
    assert_eq!(status.code(), Code::Unavailable);
    assert!(!format!("{status:?}").contains("hunter2"));
    assert!(!format!("{:?}", settings(&with_password)).contains("hunter2"));
    let logs = captured_logs();
    assert!(
        logs.contains("gateway serving"),
        "the start-up line is captured"
    );
    assert!(!logs.contains("hunter2"), "a DR password was logged");
}

#[tokio::test]
async fn group_ids_and_group_filters_out_of_form_are_refused_naming_the_field() {
    // Arrange
    let dr = MockServer::start().await;
    let mut app = spawn_app(&dr.uri()).await;
    let megabyte = "g".repeat(1 << 20);
    let events = &mut app.events;

    for id in [".", "..", "a.b", "a/b", "x?y", "*", ">", " g", &megabyte] {
        // Act + Assert: every group RPC that names a group
        let statuses = [
            events
                .create_consumer_group(pb::CreateConsumerGroupRequest {
                    group_id: id.into(),
                    settings: None,
                })
                .await
                .err(),
            events
                .get_consumer_group(pb::GetConsumerGroupRequest {
                    group_id: id.into(),
                })
                .await
                .err(),
            events
                .delete_consumer_group(pb::DeleteConsumerGroupRequest {
                    group_id: id.into(),
                })
                .await
                .err(),
        ];
        for (i, status) in statuses.into_iter().enumerate() {
            let status = status.unwrap_or_else(|| panic!("call {i} with {:.20?} succeeded", id));
            assert_eq!(
                invalid_field(status),
                "group_id",
                "call {i} with {:.20?}",
                id
            );
        }
    }
    // A group's filter holds DR order ids, checked as everywhere else.
    let status = events
        .create_consumer_group(pb::CreateConsumerGroupRequest {
            group_id: "g".into(),
            settings: Some(pb::ConsumerGroupSettings {
                filter: Some(pb::EventFilter {
                    order_ids: vec!["1".into(), "..".into()],
                    ..Default::default()
                }),
                ..Default::default()
            }),
        })
        .await
        .expect_err("a hostile order id in the filter is refused");
    assert_eq!(invalid_field(status), "settings.filter.order_ids[1]");
    app.stop().await;
}
