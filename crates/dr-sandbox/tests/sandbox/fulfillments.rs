//! `POST /fulfillments` validation and effects, `GET /fulfillments[/{id}]`, tracking updates.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::helpers::{num, TestSandbox};

fn ids(order: &Value) -> (String, String) {
    (
        order["id"].as_str().unwrap().to_owned(),
        order["items"][0]["id"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test]
async fn a_fulfillment_is_created_with_ful_id_sku_both_quantities_metadata_and_event() {
    let sb = TestSandbox::start().await;
    let order = sb.order(json!({"items": [{"quantity": 3, "amount": "30.00", "skuId": "sku-1"}], "email": "a@b.c"})).await;
    let (oid, item) = ids(&order);
    let (status, ful) = sb
        .fulfill(json!({"orderId": oid, "items": [{"itemId": item, "quantity": "2"}], "metadata": {"wms": "A1", "rush": true, "box": 3}, "unknownField": 1}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{ful}");
    let id = ful["id"].as_str().unwrap();
    assert!(
        id.starts_with("ful_") && uuid::Uuid::parse_str(&id[4..]).is_ok(),
        "{id}"
    );
    assert_eq!(ful["orderId"], oid.as_str());
    assert_eq!(
        ful["items"],
        json!([{"itemId": item, "skuId": "sku-1", "quantity": 2, "cancelQuantity": 0}])
    );
    assert_eq!(
        ful["metadata"],
        json!({"wms": "A1", "rush": true, "box": 3})
    );
    assert_eq!(ful["liveMode"], false);
    assert_eq!(ful["chargeOperationIds"].as_array().unwrap().len(), 1);
    assert!(ful["createdTime"].as_str().unwrap().ends_with('Z'));

    let events = sb.events_for(&oid).await;
    let created = events
        .iter()
        .find(|e| e["type"] == "fulfillment.created")
        .unwrap();
    let object = &created["data"]["object"];
    assert_eq!(object["id"], ful["id"]);
    assert_eq!(object["orderDetails"]["id"], oid.as_str());
    assert_eq!(object["orderDetails"]["email"], "a@b.c");
    assert!(
        object["orderDetails"].get("payment").is_none(),
        "orderDetails has no payment"
    );
    let capture_complete = events
        .iter()
        .find(|e| e["type"] == "order.charge.capture.complete")
        .unwrap();
    assert_eq!(
        capture_complete["data"]["object"]["captures"][0]["fulfillmentId"],
        ful["id"]
    );
    assert_eq!(
        num(&capture_complete["data"]["object"]["captures"][0]["amount"]),
        "20.0"
    );
    sb.stop().await;
}

#[tokio::test]
async fn invalid_fulfillment_requests_are_400_naming_the_parameter() {
    let sb = TestSandbox::start().await;
    let order = sb.simple_order(1, "10").await;
    let (oid, item) = ids(&order);
    let cases = [
        (
            json!({"items": [{"itemId": item, "quantity": 1}]}),
            "missing_parameter",
            "orderId",
        ),
        (
            json!({"orderId": oid, "items": []}),
            "missing_parameter",
            "items",
        ),
        (json!({"orderId": oid}), "missing_parameter", "items"),
        (
            json!({"orderId": oid, "items": [{"itemId": item}]}),
            "missing_parameter",
            "quantity",
        ),
        (
            json!({"orderId": oid, "items": [{"quantity": 1}]}),
            "missing_parameter",
            "itemId",
        ),
        (
            json!({"orderId": oid, "items": [{"itemId": item, "quantity": "x"}]}),
            "invalid_parameter",
            "quantity",
        ),
        (
            json!({"orderId": oid, "items": [{"itemId": item, "quantity": -1}]}),
            "invalid_parameter",
            "quantity",
        ),
        (
            json!({"orderId": oid, "items": [{"itemId": item, "quantity": 1}], "metadata": {"a": {"b": 1}}}),
            "invalid_parameter",
            "metadata",
        ),
        (
            json!({"orderId": oid, "items": [{"itemId": "nope", "quantity": 1}]}),
            "invalid_parameter",
            "itemId",
        ),
    ];
    for (body, code, parameter) in cases {
        let (status, err) = sb.fulfill(body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body} → {err}");
        assert_eq!(err["type"], "bad_request");
        assert_eq!(err["errors"][0]["code"], code, "{body}");
        assert_eq!(err["errors"][0]["parameter"], parameter, "{body}");
        assert!(err["errors"][0]["message"].is_string());
    }
    // Not JSON at all.
    let (status, err) = sb
        .send(
            sb.req(Method::POST, "/fulfillments")
                .header("content-type", "application/json")
                .body("{not json"),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(err["errors"][0]["code"], "invalid_request");
    assert_eq!(err["errors"][0]["parameter"], "body");
    let (status, _) = sb
        .send(sb.req(Method::POST, "/fulfillments").body("[1,2]"))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    sb.stop().await;
}

#[tokio::test]
async fn more_units_than_remain_is_409_and_changes_nothing() {
    let sb = TestSandbox::start().await;
    let order = sb.simple_order(2, "10").await;
    let (oid, item) = ids(&order);
    let (status, _) = sb
        .fulfill(json!({"orderId": oid, "items": [{"itemId": item, "quantity": 1}]}))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, err) = sb.fulfill(json!({"orderId": oid, "items": [{"itemId": item, "quantity": 1, "cancelQuantity": 1}]})).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(err["type"], "conflict");
    assert_eq!(err["errors"][0]["code"], "quantity_too_large");
    let (_, list) = sb.get(&format!("/fulfillments?orderId={oid}")).await;
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
    sb.stop().await;
}

#[tokio::test]
async fn unknown_order_is_404_and_unknown_resources_are_404() {
    let sb = TestSandbox::start().await;
    let (status, err) = sb
        .fulfill(json!({"orderId": "999999990336", "items": [{"itemId": "1", "quantity": 1}]}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(err["type"], "not_found");
    assert_eq!(err["errors"][0]["code"], "not_found");
    assert_eq!(err["errors"][0]["parameter"], "orderId");
    for path in [
        "/fulfillments/ful_nope",
        "/charges/nope",
        "/events/nope",
        "/orders/nope",
    ] {
        let (status, err) = sb.get(path).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(err["type"], "not_found", "{path}");
        assert_eq!(err["errors"][0]["code"], "not_found", "{path}");
    }
    sb.stop().await;
}

#[tokio::test]
async fn distributed_model_requires_shipment_ids() {
    let sb = TestSandbox::start().await;
    let order = sb
        .order(
            json!({"items": [{"quantity": 1, "amount": "10"}], "fulfillmentModel": "distributed"}),
        )
        .await;
    let (oid, item) = ids(&order);
    let (status, err) = sb.fulfill(json!({"orderId": oid, "items": [{"itemId": item, "quantity": 1, "shipmentItemId": "s1"}]})).await;
    assert_eq!(
        (status, err["errors"][0]["parameter"].clone()),
        (StatusCode::BAD_REQUEST, json!("shipmentId"))
    );
    let (status, err) = sb.fulfill(json!({"orderId": oid, "shipmentId": "100002369153", "items": [{"itemId": item, "quantity": 1}]})).await;
    assert_eq!(
        (status, err["errors"][0]["parameter"].clone()),
        (StatusCode::BAD_REQUEST, json!("shipmentItemId"))
    );
    let (status, ful) = sb
        .fulfill(json!({"orderId": oid, "shipmentId": "100002369153", "items": [{"itemId": item, "quantity": 1, "shipmentItemId": "s1"}]}))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(ful["shipmentId"], "100002369153");
    assert_eq!(ful["items"][0]["shipmentItemId"], "s1");
    sb.stop().await;
}

#[tokio::test]
async fn quantities_whose_sum_overflows_are_a_400_and_change_nothing() {
    // Arrange: 2 units; a body whose quantity + cancelQuantity does not fit in i64.
    let sb = TestSandbox::start().await;
    let order = sb.simple_order(2, "10").await;
    let (oid, item) = ids(&order);

    // Act
    let (status, err) = sb
        .fulfill(json!({"orderId": oid, "items": [{"itemId": item, "quantity": i64::MAX, "cancelQuantity": 1}]}))
        .await;
    let (split_status, _) = sb
        .fulfill(json!({"orderId": oid, "items": [
            {"itemId": item, "quantity": i64::MAX},
            {"itemId": item, "quantity": 1}
        ]}))
        .await;

    // Assert: DR's 400 naming the parameter; nothing fulfilled or captured.
    assert_eq!(status, StatusCode::BAD_REQUEST, "{err}");
    assert_eq!(err["type"], "bad_request");
    assert_eq!(err["errors"][0]["code"], "invalid_parameter");
    assert_eq!(err["errors"][0]["parameter"], "quantity");
    assert_eq!(split_status, StatusCode::BAD_REQUEST);
    let (_, list) = sb.get(&format!("/fulfillments?orderId={oid}")).await;
    assert_eq!(list["data"].as_array().unwrap().len(), 0);
    let (_, order) = sb.get(&format!("/orders/{oid}")).await;
    assert_eq!(order["items"][0]["state"], "created");
    assert_eq!(num(&order["capturedAmount"]), "0.0");
    assert!(order["payment"]["charges"][0]["captures"].is_null());
    sb.stop().await;
}

#[tokio::test]
async fn an_order_whose_total_does_not_fit_is_a_400() {
    let sb = TestSandbox::start().await;
    let (status, err) = sb
        .post(
            "/sandbox/orders",
            json!({"items": [
                {"quantity": 1, "amount": "92233720368547758.07"},
                {"quantity": 1, "amount": "0.01"}
            ]}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{err}");
    assert_eq!(err["errors"][0]["parameter"], "amount");
    sb.stop().await;
}

#[tokio::test]
async fn the_same_shipment_item_id_on_two_items_is_400_and_creates_nothing() {
    let sb = TestSandbox::start().await;
    let order = sb
        .order(json!({"fulfillmentModel": "distributed", "items": [
            {"quantity": 1, "amount": "10"}, {"quantity": 1, "amount": "5"}]}))
        .await;
    let oid = order["id"].as_str().unwrap();
    let (a, b) = (&order["items"][0]["id"], &order["items"][1]["id"]);
    let (status, err) = sb
        .fulfill(
            json!({"orderId": oid, "shipmentId": "100002369153", "items": [
            {"itemId": a, "quantity": 1, "shipmentItemId": "s1"},
            {"itemId": b, "quantity": 1, "shipmentItemId": "s1"}]}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{err}");
    assert_eq!(err["type"], "bad_request");
    assert_eq!(err["errors"][0]["code"], "invalid_parameter");
    assert_eq!(err["errors"][0]["parameter"], "shipmentItemId");
    let (_, list) = sb.get(&format!("/fulfillments?orderId={oid}")).await;
    assert_eq!(
        list["data"].as_array().unwrap().len(),
        0,
        "nothing fulfilled"
    );
    assert_eq!(
        sb.event_types_for(oid).await,
        ["order.accepted"],
        "no capture was started"
    );
    // Distinct ids go through.
    let (status, _) = sb
        .fulfill(
            json!({"orderId": oid, "shipmentId": "100002369153", "items": [
            {"itemId": a, "quantity": 1, "shipmentItemId": "s1"},
            {"itemId": b, "quantity": 1, "shipmentItemId": "s2"}]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    sb.stop().await;
}

#[tokio::test]
async fn get_fulfillment_includes_order_details_without_payment() {
    let sb = TestSandbox::start().await;
    let order = sb.simple_order(1, "10").await;
    let (oid, item) = ids(&order);
    let (_, ful) = sb
        .fulfill(json!({"orderId": oid, "items": [{"itemId": item, "quantity": 1}]}))
        .await;
    let (status, got) = sb
        .get(&format!("/fulfillments/{}", ful["id"].as_str().unwrap()))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(got["id"], ful["id"]);
    assert_eq!(got["orderDetails"]["id"], oid.as_str());
    assert_eq!(got["orderDetails"]["state"], "complete");
    assert_eq!(got["orderDetails"]["items"][0]["state"], "fulfilled");
    assert!(got["orderDetails"].get("payment").is_none());
    assert_eq!(got["chargeOperationIds"], ful["chargeOperationIds"]);
    sb.stop().await;
}

#[tokio::test]
async fn tracking_can_be_added_to_a_fulfillment() {
    let sb = TestSandbox::start().await;
    let order = sb.simple_order(1, "10").await;
    let (oid, item) = ids(&order);
    let (_, ful) = sb
        .fulfill(json!({"orderId": oid, "items": [{"itemId": item, "quantity": 1}]}))
        .await;
    let fid = ful["id"].as_str().unwrap();
    // DR's "Payment reauthorizations" page sends the itemId as a number.
    let item_num: u64 = item.parse().unwrap();
    let (status, updated) = sb
        .post(&format!("/fulfillments/{fid}"), json!({"trackingCompany": "UPS", "trackingNumber": "Z1", "trackingUrl": "http://ups/Z1", "items": [{"itemId": item_num}]}))
        .await;
    assert_eq!(status, StatusCode::OK, "{updated}");
    assert_eq!(updated["trackingCompany"], "UPS");
    assert_eq!(updated["trackingNumber"], "Z1");
    assert_eq!(updated["trackingUrl"], "http://ups/Z1");
    let (_, list) = sb
        .get("/fulfillments?trackingCompany=UPS&trackingNumber=Z1")
        .await;
    assert_eq!(list["data"][0]["id"], fid);
    let (status, _) = sb
        .post("/fulfillments/ful_missing", json!({"trackingNumber": "x"}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    sb.stop().await;
}

#[tokio::test]
async fn list_fulfillments_filters_and_paginates_newest_first() {
    let sb = TestSandbox::start().await;
    let order = sb.order(json!({"items": [{"quantity": 5, "amount": "50", "skuId": "sku-a"}, {"quantity": 1, "amount": "5", "skuId": "sku-b"}]})).await;
    let oid = order["id"].as_str().unwrap();
    let (item_a, item_b) = (
        order["items"][0]["id"].as_str().unwrap(),
        order["items"][1]["id"].as_str().unwrap(),
    );
    let mut made = Vec::new();
    for _ in 0..5 {
        let (_, f) = sb
            .fulfill(json!({"orderId": oid, "items": [{"itemId": item_a, "quantity": 1}]}))
            .await;
        made.push(f["id"].as_str().unwrap().to_owned());
    }
    let other = sb.simple_order(1, "1").await;
    let (_, f_other) = sb.fulfill(json!({"orderId": other["id"], "items": [{"itemId": other["items"][0]["id"], "quantity": 1}], "trackingNumber": "T9"})).await;

    let (_, page1) = sb
        .get(&format!("/fulfillments?orderId={oid}&limit=2"))
        .await;
    let page1_ids: Vec<&str> = page1["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        page1_ids,
        [made[4].as_str(), made[3].as_str()],
        "newest first"
    );
    assert_eq!(page1["hasMore"], true);
    let (_, page2) = sb
        .get(&format!(
            "/fulfillments?orderId={oid}&limit=2&startingAfter={}",
            made[3]
        ))
        .await;
    assert_eq!(page2["data"][0]["id"], made[2].as_str());
    assert_eq!(page2["hasMore"], true);
    let (_, page3) = sb
        .get(&format!(
            "/fulfillments?orderId={oid}&limit=2&startingAfter={}",
            made[1]
        ))
        .await;
    assert_eq!(page3["data"].as_array().unwrap().len(), 1);
    assert_eq!(page3["hasMore"], false);
    let (_, back) = sb
        .get(&format!(
            "/fulfillments?orderId={oid}&limit=2&endingBefore={}",
            made[1]
        ))
        .await;
    assert_eq!(back["data"][0]["id"], made[3].as_str());
    assert_eq!(back["data"][1]["id"], made[2].as_str());
    assert_eq!(back["hasMore"], true);

    // ids: repeated keys and comma lists both work.
    let (_, by_ids) = sb
        .get(&format!("/fulfillments?ids={}&ids={}", made[0], made[1]))
        .await;
    assert_eq!(by_ids["data"].as_array().unwrap().len(), 2);
    let (_, by_ids) = sb
        .get(&format!(
            "/fulfillments?ids={},{}",
            made[0],
            f_other["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(by_ids["data"].as_array().unwrap().len(), 2);
    let (_, by_sku) = sb.get("/fulfillments?skuId=sku-a&limit=100").await;
    assert_eq!(by_sku["data"].as_array().unwrap().len(), 5);
    let (_, by_sku_b) = sb.get("/fulfillments?skuId=sku-b").await;
    assert_eq!(by_sku_b["data"].as_array().unwrap().len(), 0);
    let (_, by_tracking) = sb.get("/fulfillments?trackingNumber=T9").await;
    assert_eq!(by_tracking["data"][0]["id"], f_other["id"]);
    let _ = item_b;

    // createdTime filters.
    let (_, future) = sb
        .get("/fulfillments?createdTime%5Bgt%5D=2999-01-01T00:00:00Z")
        .await;
    assert_eq!(future["data"].as_array().unwrap().len(), 0);
    let (_, past) = sb.get("/fulfillments?createdTime[gte]=2000-01-01T00:00:00Z&createdTime[lt]=2999-01-01T00:00:00Z&limit=100").await;
    assert_eq!(past["data"].as_array().unwrap().len(), 6);

    for bad in [
        "limit=0",
        "limit=101",
        "limit=x",
        "createdTime[gt]=yesterday",
        "startingAfter=ful_unknown",
    ] {
        let (status, err) = sb.get(&format!("/fulfillments?{bad}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(err["errors"][0]["code"], "invalid_parameter", "{bad}");
    }
    sb.stop().await;
}

#[tokio::test]
async fn cancelling_every_unit_cancels_the_order() {
    let sb = TestSandbox::start().await;
    let order = sb.simple_order(2, "9.99").await;
    let (oid, item) = ids(&order);
    let (status, _) = sb
        .fulfill(json!({"orderId": oid, "items": [{"itemId": item, "cancelQuantity": 2}]}))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (_, o) = sb.get(&format!("/orders/{oid}")).await;
    assert_eq!(o["state"], "cancelled");
    assert_eq!(o["items"][0]["state"], "cancelled");
    assert_eq!(num(&o["cancelledAmount"]), "9.99");
    assert_eq!(o["payment"]["charges"][0]["state"], "cancelled");
    let types = sb.event_types_for(&oid).await;
    assert!(types.contains(&"order.cancelled".to_owned()), "{types:?}");
    assert!(types.contains(&"order.charge.cancel.complete".to_owned()));
    let (status, err) = sb
        .fulfill(json!({"orderId": oid, "items": [{"itemId": item, "quantity": 1}]}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(err["errors"][0]["code"], "invalid_state");
    sb.stop().await;
}

#[tokio::test]
async fn multi_line_orders_allocate_shipping_and_sum_exactly() {
    let sb = TestSandbox::start().await;
    let order = sb
        .order(json!({"items": [{"quantity": 3, "amount": "10.00", "tax": "0.83"}, {"quantity": 7, "amount": "3.33", "tax": "0.27"}], "shipping": {"amount": "4.99", "tax": "0.41"}}))
        .await;
    assert_eq!(num(&order["totalAmount"]), "19.83");
    let oid = order["id"].as_str().unwrap();
    let a = order["items"][0]["id"].as_str().unwrap();
    let b = order["items"][1]["id"].as_str().unwrap();
    sb.fulfill(json!({"orderId": oid, "items": [{"itemId": a, "quantity": 1}, {"itemId": b, "quantity": 3}]})).await;
    sb.fulfill(json!({"orderId": oid, "items": [{"itemId": b, "cancelQuantity": 2}]}))
        .await;
    sb.fulfill(json!({"orderId": oid, "items": [{"itemId": a, "quantity": 2}, {"itemId": b, "quantity": 2}]})).await;
    let (_, o) = sb.get(&format!("/orders/{oid}")).await;
    assert_eq!(o["state"], "complete");
    let total_cents = |v: &Value| -> i64 {
        let t = num(v);
        let (i, f) = t.split_once('.').unwrap();
        i.parse::<i64>().unwrap() * 100 + format!("{f:0<2}").parse::<i64>().unwrap()
    };
    assert_eq!(
        total_cents(&o["capturedAmount"]) + total_cents(&o["cancelledAmount"]),
        1983
    );
    sb.stop().await;
}

#[tokio::test]
async fn zero_decimal_currencies_render_whole_amounts() {
    let sb = TestSandbox::start().await;
    let order = sb
        .order(json!({"currency": "JPY", "items": [{"quantity": 3, "amount": 1000}]}))
        .await;
    assert_eq!(num(&order["totalAmount"]), "1000.0");
    let (oid, item) = ids(&order);
    sb.fulfill(json!({"orderId": oid, "items": [{"itemId": item, "quantity": 1}]}))
        .await;
    let (_, o) = sb.get(&format!("/orders/{oid}")).await;
    assert_eq!(num(&o["capturedAmount"]), "333.0");
    let (status, err) = sb
        .post(
            "/sandbox/orders",
            json!({"currency": "JPY", "items": [{"quantity": 1, "amount": "10.5"}]}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{err}");
    sb.stop().await;
}
