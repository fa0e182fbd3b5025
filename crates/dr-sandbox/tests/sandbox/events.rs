//! `GET /events[/{id}]`: envelope, filters, pagination, retention.

use chrono::SecondsFormat;
use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::TestSandbox;

#[tokio::test]
async fn events_use_drs_envelope() {
    let sb = TestSandbox::start().await;
    let order = sb.simple_order(1, "10").await;
    let (status, list) = sb.get("/events?type=order.accepted").await;
    assert_eq!(status, StatusCode::OK);
    let event = &list["data"][0];
    assert!(uuid::Uuid::parse_str(event["id"].as_str().unwrap()).is_ok());
    assert_eq!(event["type"], "order.accepted");
    assert_eq!(
        event["data"]["object"], order,
        "data.object is the order as GET /orders returns it"
    );
    assert_eq!(event["liveMode"], false);
    assert_eq!(event["digitalriverVersion"], "2021-12-13");
    let created = event["createdTime"].as_str().unwrap();
    assert!(
        created.ends_with('Z') && created.contains('.'),
        "fractional seconds: {created}"
    );
    assert!(chrono::DateTime::parse_from_rfc3339(created).is_ok());
    let (status, one) = sb
        .get(&format!("/events/{}", event["id"].as_str().unwrap()))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(&one, event);
    sb.stop().await;
}

#[tokio::test]
async fn events_filter_by_type_glob_and_types_list() {
    let sb = TestSandbox::start().await;
    let order = sb.simple_order(2, "10").await;
    let (oid, item) = (
        order["id"].as_str().unwrap(),
        order["items"][0]["id"].as_str().unwrap(),
    );
    sb.fulfill(
        json!({"orderId": oid, "items": [{"itemId": item, "quantity": 1, "cancelQuantity": 1}]}),
    )
    .await;

    let types_of = |v: &serde_json::Value| -> Vec<String> {
        v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["type"].as_str().unwrap().to_owned())
            .collect()
    };
    let (_, charge) = sb.get("/events?type=order.charge.*").await;
    let mut got = types_of(&charge);
    got.sort();
    assert_eq!(
        got,
        [
            "order.charge.cancel.complete",
            "order.charge.cancel.pending",
            "order.charge.capture.complete",
            "order.charge.capture.pending"
        ]
    );
    let (_, repeated) = sb
        .get("/events?types=order.accepted&types=order.complete")
        .await;
    assert_eq!(
        types_of(&repeated),
        ["order.complete", "order.accepted"],
        "newest first"
    );
    let (_, comma) = sb
        .get("/events?types=order.accepted,fulfillment.created")
        .await;
    assert_eq!(types_of(&comma), ["fulfillment.created", "order.accepted"]);
    let (status, err) = sb
        .get("/events?type=order.accepted&types=order.complete")
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(err["type"], "bad_request");
    assert_eq!(err["errors"][0]["code"], "invalid_parameter");
    sb.stop().await;
}

#[tokio::test]
async fn events_paginate_and_filter_by_created_time() {
    let sb = TestSandbox::start().await;
    for _ in 0..12 {
        sb.simple_order(1, "1").await;
    }
    let (_, first) = sb.get("/events").await;
    assert_eq!(
        first["data"].as_array().unwrap().len(),
        10,
        "default limit 10"
    );
    assert_eq!(first["hasMore"], true);
    let last_id = first["data"][9]["id"].as_str().unwrap();
    let (_, second) = sb.get(&format!("/events?startingAfter={last_id}")).await;
    assert_eq!(second["data"].as_array().unwrap().len(), 2);
    assert_eq!(second["hasMore"], false);
    let (_, before) = sb
        .get(&format!(
            "/events?endingBefore={}&limit=3",
            second["data"][0]["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(before["data"].as_array().unwrap().len(), 3);
    assert_eq!(before["data"][2]["id"], last_id);

    let control = sb.control();
    let now = control
        .clock()
        .await
        .unwrap()
        .now
        .to_rfc3339_opts(SecondsFormat::Micros, true);
    control.advance_clock(60).await.unwrap();
    let newer = sb.simple_order(1, "2").await;
    let (_, after) = sb.get(&format!("/events?createdTime[gt]={now}")).await;
    assert_eq!(after["data"].as_array().unwrap().len(), 1);
    assert_eq!(after["data"][0]["data"]["object"]["id"], newer["id"]);
    let (_, upto) = sb
        .get(&format!("/events?createdTime[lte]={now}&limit=100"))
        .await;
    assert_eq!(upto["data"].as_array().unwrap().len(), 12);
    sb.stop().await;
}

#[tokio::test]
async fn events_older_than_30_days_are_gone() {
    let sb = TestSandbox::start().await;
    sb.simple_order(1, "1").await;
    let (_, list) = sb.get("/events").await;
    let id = list["data"][0]["id"].as_str().unwrap().to_owned();
    sb.control().advance_clock(31 * 24 * 3600).await.unwrap();
    let (_, list) = sb.get("/events").await;
    assert_eq!(list["data"].as_array().unwrap().len(), 0);
    let (status, _) = sb.get(&format!("/events/{id}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    sb.stop().await;
}

#[tokio::test]
async fn custom_events_can_be_emitted() {
    let sb = TestSandbox::start().await;
    let control = sb.control();
    // 201 Created: the client accepts nothing else.
    let ev = control
        .post_event(json!({"type": "fulfillment_order.shipped", "object": {"id": "shp_1"}}))
        .await
        .unwrap();
    assert_eq!(ev["type"], "fulfillment_order.shipped");
    assert_eq!(ev["data"]["object"]["id"], "shp_1");
    let raw = json!({"id": "0d6c7a3e-0000-4000-8000-000000000001", "type": "order.chargeback", "data": {"object": {"id": "st_1"}}, "versionIds": ["2021-12-13"]});
    let ev = control.post_event(raw).await.unwrap();
    assert_eq!(ev["id"], "0d6c7a3e-0000-4000-8000-000000000001");
    assert_eq!(ev["versionIds"], json!(["2021-12-13"]));
    assert_eq!(ev["digitalriverVersion"], "2021-12-13");
    let (status, _) = sb.get("/events/0d6c7a3e-0000-4000-8000-000000000001").await;
    assert_eq!(status, StatusCode::OK);
    sb.stop().await;
}
