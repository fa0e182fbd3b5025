//! EventStream over real sockets: filters, resume by cursor, expiry, heartbeats and
//! isolation of slow subscribers. Events come in through the signed webhook.

use std::time::{Duration, Instant};

use dr_gateway::pb::v1 as pb;
use tonic::Code;
use tonic_types::StatusExt;

use crate::event_support::*;
use crate::helpers::{settings, spawn_app, spawn_app_with};

#[tokio::test]
async fn subscribers_with_different_filters_each_get_exactly_their_events() {
    // Arrange
    let app = spawn_app("http://127.0.0.1:9").await;
    let mut charges = subscribe(&app, filtered(&["order.charge.*"], &[], None)).await;
    let mut order_2 = subscribe(&app, filtered(&[], &["ord-2"], None)).await;
    let mut live = subscribe(&app, filtered(&[], &[], Some(true))).await;
    let mut all = subscribe(&app, pb::SubscribeRequest::default()).await;

    // Act
    let sent = [
        event("e1", "fulfillment.created", "ord-1", false),
        event("e2", "order.charge.capture.pending", "ord-1", false),
        event("e3", "order.charge.capture.complete", "ord-2", false),
        event("e4", "order.fulfilled", "ord-2", true),
        event("e5", "order.chargeback", "ord-3", true),
        event("end", "test.end", "ord-2", true),
    ];
    for ev in &sent {
        deliver(&app, ev).await;
    }

    // Assert: each stream up to a sentinel it matches.
    deliver(
        &app,
        &event("end-charges", "order.charge.end", "none", false),
    )
    .await;
    assert_eq!(
        ids_until(&mut charges, "end-charges").await,
        ["e2", "e3", "end-charges"]
    );
    assert_eq!(ids_until(&mut order_2, "end").await, ["e3", "e4", "end"]);
    assert_eq!(ids_until(&mut live, "end").await, ["e4", "e5", "end"]);
    assert_eq!(
        ids_until(&mut all, "end-charges").await,
        ["e1", "e2", "e3", "e4", "e5", "end", "end-charges"]
    );
    app.stop().await;
}

#[tokio::test]
async fn resuming_after_the_last_cursor_yields_every_later_event_once_in_order() {
    // Arrange
    let app = spawn_app("http://127.0.0.1:9").await;
    let mut first = subscribe(&app, pb::SubscribeRequest::default()).await;
    for i in 0..3 {
        deliver(
            &app,
            &event(&format!("a{i}"), "order.accepted", "ord-1", false),
        )
        .await;
    }
    let mut last_cursor = String::new();
    for i in 0..3 {
        let e = next_event(&mut first).await;
        assert_eq!(e.id, format!("a{i}"));
        last_cursor = e.cursor;
    }

    // Act: disconnect; more events arrive while away; reconnect after the cursor.
    drop(first);
    for i in 0..3 {
        deliver(
            &app,
            &event(&format!("b{i}"), "order.accepted", "ord-1", false),
        )
        .await;
    }
    let mut resumed = subscribe(
        &app,
        pb::SubscribeRequest {
            start: Some(pb::subscribe_request::Start::AfterCursor(last_cursor)),
            ..Default::default()
        },
    )
    .await;
    deliver(&app, &event("b3", "order.accepted", "ord-1", false)).await;

    // Assert: no gap, no duplicate.
    assert_eq!(
        ids_until(&mut resumed, "b3").await,
        ["b0", "b1", "b2", "b3"]
    );
    app.stop().await;
}

#[tokio::test]
async fn oldest_and_start_time_positions_replay_held_events() {
    let app = spawn_app("http://127.0.0.1:9").await;
    deliver(&app, &event("old", "order.accepted", "ord-1", false)).await;
    let between = chrono::Utc::now();
    deliver(&app, &event("newer", "order.accepted", "ord-1", false)).await;

    let mut oldest = subscribe(
        &app,
        pb::SubscribeRequest {
            start: Some(pb::subscribe_request::Start::Position(
                pb::StartPosition::Oldest as i32,
            )),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(ids_until(&mut oldest, "newer").await, ["old", "newer"]);

    let mut from_time = subscribe(
        &app,
        pb::SubscribeRequest {
            start: Some(pb::subscribe_request::Start::StartTime(
                prost_types::Timestamp {
                    seconds: between.timestamp(),
                    nanos: between.timestamp_subsec_nanos() as i32,
                },
            )),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(next_event(&mut from_time).await.id, "newer");
    app.stop().await;
}

#[tokio::test]
async fn a_cursor_older_than_the_log_is_out_of_range_with_the_oldest_cursor() {
    // Arrange: a log that holds 3 events.
    let mut s = settings("http://127.0.0.1:9");
    s.event_log_max_events = 3;
    let app = spawn_app_with(s).await;
    let mut watcher = subscribe(&app, pb::SubscribeRequest::default()).await;
    deliver(&app, &event("x0", "order.accepted", "ord-1", false)).await;
    let first_cursor = next_event(&mut watcher).await.cursor;
    for i in 1..6 {
        deliver(
            &app,
            &event(&format!("x{i}"), "order.accepted", "ord-1", false),
        )
        .await;
    }

    // Act
    let status = app
        .events
        .clone()
        .subscribe(pb::SubscribeRequest {
            start: Some(pb::subscribe_request::Start::AfterCursor(first_cursor)),
            ..Default::default()
        })
        .await
        .expect_err("expired cursor rejected");

    // Assert
    assert_eq!(status.code(), Code::OutOfRange);
    let details = status.get_error_details();
    let info = details.error_info().expect("ErrorInfo");
    assert_eq!(
        (info.reason.as_str(), info.domain.as_str()),
        ("CURSOR_EXPIRED", "digitalriver.com")
    );
    let oldest = info.metadata["oldest_cursor"].clone();
    let mut resumed = subscribe(
        &app,
        pb::SubscribeRequest {
            start: Some(pb::subscribe_request::Start::AfterCursor(oldest)),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(ids_until(&mut resumed, "x5").await, ["x3", "x4", "x5"]);
    app.stop().await;
}

#[tokio::test]
async fn malformed_cursors_and_globs_are_invalid_argument_naming_the_field() {
    let app = spawn_app("http://127.0.0.1:9").await;
    let cases = [
        (
            pb::SubscribeRequest {
                start: Some(pb::subscribe_request::Start::AfterCursor(
                    "not-a-cursor".into(),
                )),
                ..Default::default()
            },
            "after_cursor",
        ),
        (filtered(&["order charge"], &[], None), "filter.types[0]"),
    ];
    for (req, field) in cases {
        let status = app
            .events
            .clone()
            .subscribe(req)
            .await
            .expect_err("rejected");
        assert_eq!(status.code(), Code::InvalidArgument);
        let details = status.get_error_details();
        let violations = &details.bad_request().expect("BadRequest").field_violations;
        assert_eq!(violations[0].field, field);
    }
    app.stop().await;
}

#[tokio::test]
async fn idle_streams_get_heartbeats_carrying_the_latest_cursor() {
    let app = spawn_app("http://127.0.0.1:9").await;
    let mut req = filtered(&["nothing.matches"], &[], None);
    req.heartbeat_interval = Some(prost_types::Duration {
        seconds: 1,
        nanos: 0,
    });
    let mut stream = subscribe(&app, req).await;
    deliver(&app, &event("hb", "order.accepted", "ord-1", false)).await;
    let mut all = subscribe(
        &app,
        pb::SubscribeRequest {
            start: Some(pb::subscribe_request::Start::Position(
                pb::StartPosition::Oldest as i32,
            )),
            ..Default::default()
        },
    )
    .await;
    let cursor_of_hb = next_event(&mut all).await.cursor;

    let heartbeat_cursor = tokio::time::timeout(WAIT, async {
        loop {
            let msg = stream.message().await.unwrap().unwrap();
            match msg.kind {
                Some(pb::subscribe_response::Kind::Heartbeat(h)) if h.cursor == cursor_of_hb => {
                    return h.cursor
                }
                Some(pb::subscribe_response::Kind::Heartbeat(_)) => continue,
                other => panic!("unexpected {other:?}"),
            }
        }
    })
    .await
    .expect("a heartbeat within the deadline");
    assert_eq!(heartbeat_cursor, cursor_of_hb);
    app.stop().await;
}

#[tokio::test]
async fn a_stalled_subscriber_delays_neither_the_webhook_nor_a_fast_subscriber() {
    // Arrange: one subscriber that never reads, one that does.
    let app = spawn_app("http://127.0.0.1:9").await;
    let _stalled = subscribe(&app, pb::SubscribeRequest::default()).await;
    let mut fast = subscribe(&app, pb::SubscribeRequest::default()).await;
    let n = 200; // ~250 KB of frames: far past the stalled stream's queue and HTTP/2 window.

    // Act
    let reader = tokio::spawn(async move {
        let mut got = 0;
        while got < n {
            next_event(&mut fast).await;
            got += 1;
        }
        got
    });
    let mut slowest_ack = Duration::ZERO;
    for i in 0..n {
        let mut ev = event(&format!("s{i}"), "order.accepted", "ord-1", false);
        ev["data"]["object"]["pad"] = serde_json::json!("x".repeat(1000));
        let t = Instant::now();
        deliver(&app, &ev).await;
        slowest_ack = slowest_ack.max(t.elapsed());
    }

    // Assert
    let got = tokio::time::timeout(WAIT, reader)
        .await
        .expect("fast subscriber kept up")
        .unwrap();
    assert_eq!(got, n);
    assert!(
        slowest_ack < Duration::from_secs(1),
        "webhook ack took {slowest_ack:?}"
    );
    app.stop().await;
}

#[tokio::test]
async fn get_event_reads_dr_and_adds_the_cursor_when_the_log_holds_the_event() {
    use wiremock::matchers::{header, method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};
    // Arrange
    let dr = MockServer::start().await;
    for id in ["held", "not-held"] {
        Mock::given(method("GET"))
            .and(path(format!("/events/{id}")))
            .and(header(
                "authorization",
                format!("Bearer {}", crate::helpers::API_KEY).as_str(),
            ))
            .respond_with(ResponseTemplate::new(200).set_body_json(event(
                id,
                "order.accepted",
                "ord-9",
                false,
            )))
            .mount(&dr)
            .await;
    }
    let app = spawn_app(&dr.uri()).await;
    deliver(&app, &event("held", "order.accepted", "ord-9", false)).await;

    // Act
    let held = app
        .events
        .clone()
        .get_event(pb::GetEventRequest {
            event_id: "held".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .event
        .unwrap();
    let not_held = app
        .events
        .clone()
        .get_event(pb::GetEventRequest {
            event_id: "not-held".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .event
        .unwrap();

    // Assert
    assert_eq!(held.id, "held");
    assert!(!held.cursor.is_empty());
    assert!(matches!(held.payload, Some(pb::event::Payload::Order(o)) if o.id == "obj-held"));
    assert_eq!(not_held.id, "not-held");
    assert!(not_held.cursor.is_empty());
    let missing = app
        .events
        .clone()
        .get_event(pb::GetEventRequest {
            event_id: "  ".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::InvalidArgument);
    app.stop().await;
}

#[tokio::test]
async fn list_events_maps_filters_and_pages_onto_dr_query_parameters() {
    use wiremock::matchers::{method, path, query_param, query_param_is_missing};
    use wiremock::{Mock, MockServer, ResponseTemplate};
    // Arrange
    let dr = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/events"))
        .and(query_param("type", "order.charge.*"))
        .and(query_param("limit", "2"))
        .and(query_param("createdTime[gte]", "2024-05-01T00:00:00Z"))
        .and(query_param_is_missing("startingAfter"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "hasMore": true,
            "data": [event("p1", "order.charge.complete", "o", false), event("p2", "order.charge.complete", "o", false)]
        })))
        .expect(1)
        .mount(&dr)
        .await;
    Mock::given(method("GET"))
        .and(path("/events"))
        .and(query_param("startingAfter", "p2"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "hasMore": false,
            "data": [event("p3", "order.charge.complete", "o", false)]
        })))
        .expect(1)
        .mount(&dr)
        .await;
    let app = spawn_app(&dr.uri()).await;
    let request = |token: String| pb::ListEventsRequest {
        types: vec!["order.charge.*".into()],
        create_time_start: Some(prost_types::Timestamp {
            seconds: 1_714_521_600,
            nanos: 0,
        }),
        page_size: 2,
        page_token: token,
        ..Default::default()
    };

    // Act
    let page1 = app
        .events
        .clone()
        .list_events(request(String::new()))
        .await
        .unwrap()
        .into_inner();
    let page2 = app
        .events
        .clone()
        .list_events(request(page1.next_page_token.clone()))
        .await
        .unwrap()
        .into_inner();

    // Assert
    let ids =
        |p: &pb::ListEventsResponse| p.events.iter().map(|e| e.id.clone()).collect::<Vec<_>>();
    assert_eq!(ids(&page1), ["p1", "p2"]);
    assert!(!page1.next_page_token.is_empty());
    assert_eq!(ids(&page2), ["p3"]);
    assert!(page2.next_page_token.is_empty());
    // A token is bound to its filters.
    let mut other = request(page1.next_page_token);
    other.types = vec!["order.accepted".into()];
    let err = app.events.clone().list_events(other).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    app.stop().await;
}

#[tokio::test]
async fn shutdown_ends_open_streams_with_unavailable_instead_of_waiting_for_them() {
    let app = spawn_app("http://127.0.0.1:9").await;
    let mut stream = subscribe(&app, pb::SubscribeRequest::default()).await;

    let started = Instant::now();
    app.shutdown_now();
    let ended = tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("stream ends");

    let status = ended.expect_err("ends with a status");
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(
        status
            .get_error_details()
            .error_info()
            .map(|i| i.reason.as_str()),
        Some("SHUTTING_DOWN"),
        "callers can tell a draining gateway from an outage"
    );
    app.stop().await;
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "took {:?}",
        started.elapsed()
    );
}
