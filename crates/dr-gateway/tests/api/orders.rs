//! GetOrder through the gateway against the sandbox: lookup by each key, what is left
//! to fulfill after partial fulfillments and cancels, and the not-found / ambiguous cases.

use dr_gateway::pb::v1 as pb;
use dr_gateway::pb::v1::get_order_request::Key;
use serde_json::json;
use tonic::Code;
use tonic_types::StatusExt;

use crate::helpers::{fulfillments_held, spawn_app, spawn_sandbox, KeyMode};

fn two_line_order(upstream_id: &str) -> serde_json::Value {
    json!({
        "upstreamId": upstream_id,
        "currency": "USD",
        "shipTo": {"name": "Chase Marshall", "address": {"line1": "1234 Any Road W", "city": "Minneapolis", "postalCode": "55401", "state": "MN", "country": "US"}},
        "items": [
            {"productName": "Widget", "quantity": 3, "amount": "30.00", "tax": "2.40"},
            {"productName": "Gadget", "quantity": 2, "amount": "26.89"}
        ]
    })
}

#[tokio::test]
async fn get_order_by_dr_id_and_by_upstream_id_returns_the_same_order() {
    let dr = spawn_sandbox().await;
    let created = dr
        .control
        .create_order(two_line_order("shop-1001"))
        .await
        .unwrap();
    let order_id = created["id"].as_str().unwrap().to_owned();
    let mut app = spawn_app(&dr.base_url()).await;

    let by_id = app
        .fulfillments
        .get_order(pb::GetOrderRequest {
            key: Some(Key::OrderId(order_id.clone())),
        })
        .await
        .unwrap()
        .into_inner()
        .order
        .unwrap();
    let by_upstream = app
        .fulfillments
        .get_order(pb::GetOrderRequest {
            key: Some(Key::UpstreamId("shop-1001".into())),
        })
        .await
        .unwrap()
        .into_inner()
        .order
        .unwrap();

    assert_eq!(by_id, by_upstream);
    assert_eq!(by_id.id, order_id);
    assert_eq!(by_id.upstream_id, "shop-1001");
    assert_eq!(by_id.state, "accepted");
    assert_eq!(by_id.items.len(), 2);
    assert_eq!(by_id.items[0].product_name, "Widget");
    assert_eq!(by_id.items[0].open_quantity, 3);
    assert_eq!(by_id.ship_to.as_ref().unwrap().name, "Chase Marshall");
    assert_eq!(by_id.charges.len(), 1, "the order's card charge");
    let total = by_id.total_amount.unwrap();
    assert_eq!(
        (total.units, total.nanos),
        (59, 290_000_000),
        "30.00 + 2.40 + 26.89, exact"
    );
    app.stop().await;
    dr.sandbox.shutdown().await;
}

#[tokio::test]
async fn open_quantities_follow_partial_fulfillments_and_cancels() {
    let dr = spawn_sandbox().await;
    let created = dr
        .control
        .create_order(two_line_order("shop-1002"))
        .await
        .unwrap();
    let order_id = created["id"].as_str().unwrap().to_owned();
    let widget = created["items"][0]["id"].as_str().unwrap().to_owned();
    let gadget = created["items"][1]["id"].as_str().unwrap().to_owned();
    let mut app = spawn_app(&dr.base_url()).await;

    let fulfill =
        |items: Vec<pb::CreateFulfillmentItem>, request_id: &str| pb::CreateFulfillmentRequest {
            order_id: order_id.clone(),
            items,
            request_id: request_id.into(),
            ..Default::default()
        };
    app.fulfillments
        .create_fulfillment(fulfill(
            vec![pb::CreateFulfillmentItem {
                item_id: widget.clone(),
                quantity: 1,
                ..Default::default()
            }],
            "partial-1",
        ))
        .await
        .unwrap();
    app.fulfillments
        .create_fulfillment(fulfill(
            vec![
                pb::CreateFulfillmentItem {
                    item_id: widget.clone(),
                    cancel_quantity: 1,
                    ..Default::default()
                },
                pb::CreateFulfillmentItem {
                    item_id: gadget.clone(),
                    quantity: 1,
                    ..Default::default()
                },
            ],
            "partial-2",
        ))
        .await
        .unwrap();

    let order = app
        .fulfillments
        .get_order(pb::GetOrderRequest {
            key: Some(Key::UpstreamId("shop-1002".into())),
        })
        .await
        .unwrap()
        .into_inner()
        .order
        .unwrap();
    let w = order.items.iter().find(|i| i.id == widget).unwrap();
    assert_eq!(
        (w.fulfilled_quantity, w.cancelled_quantity, w.open_quantity),
        (1, 1, 1)
    );
    let g = order.items.iter().find(|i| i.id == gadget).unwrap();
    assert_eq!(
        (g.fulfilled_quantity, g.cancelled_quantity, g.open_quantity),
        (1, 0, 1)
    );

    // "the rest" can be fulfilled from the open quantities alone, and then nothing is open
    let rest: Vec<_> = order
        .items
        .iter()
        .map(|i| pb::CreateFulfillmentItem {
            item_id: i.id.clone(),
            quantity: i.open_quantity,
            ..Default::default()
        })
        .collect();
    app.fulfillments
        .create_fulfillment(fulfill(rest, "the-rest"))
        .await
        .unwrap();
    let order = app
        .fulfillments
        .get_order(pb::GetOrderRequest {
            key: Some(Key::OrderId(order_id.clone())),
        })
        .await
        .unwrap()
        .into_inner()
        .order
        .unwrap();
    assert!(order.items.iter().all(|i| i.open_quantity == 0));
    assert_eq!(order.state, "complete", "fulfilled and fully captured");
    app.stop().await;
    dr.sandbox.shutdown().await;
}

#[tokio::test]
async fn an_unknown_upstream_id_is_not_found_and_a_shared_one_is_ambiguous() {
    let dr = spawn_sandbox().await;
    dr.control
        .create_order(two_line_order("dup-7"))
        .await
        .unwrap();
    dr.control
        .create_order(two_line_order("dup-7"))
        .await
        .unwrap();
    let mut app = spawn_app(&dr.base_url()).await;

    let missing = app
        .fulfillments
        .get_order(pb::GetOrderRequest {
            key: Some(Key::UpstreamId("nope".into())),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    assert_eq!(
        missing.get_details_resource_info().unwrap().resource_name,
        "nope"
    );

    let ambiguous = app
        .fulfillments
        .get_order(pb::GetOrderRequest {
            key: Some(Key::UpstreamId("dup-7".into())),
        })
        .await
        .unwrap_err();
    assert_eq!(ambiguous.code(), Code::FailedPrecondition);
    assert_eq!(
        ambiguous.get_details_error_info().unwrap().reason,
        "AMBIGUOUS_UPSTREAM_ID"
    );

    let unknown_dr_id = app
        .fulfillments
        .get_order(pb::GetOrderRequest {
            key: Some(Key::OrderId("999999999999".into())),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown_dr_id.code(), Code::NotFound);
    app.stop().await;
    dr.sandbox.shutdown().await;
}

/// The `ResourceInfo` of a NOT_FOUND status as (type, name).
fn missing_resource(status: &tonic::Status) -> (String, String) {
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    let info = status
        .get_details_resource_info()
        .expect("NOT_FOUND carries ResourceInfo");
    (info.resource_type, info.resource_name)
}

#[tokio::test]
async fn an_unknown_order_is_not_found_naming_the_order_asked_for_and_nothing_is_fulfilled() {
    let dr = spawn_sandbox().await;
    let mut app = spawn_app(&dr.base_url()).await;
    let unknown = "404404404336".to_owned();
    let item = pb::CreateFulfillmentItem {
        item_id: "1".into(),
        quantity: 1,
        ..Default::default()
    };
    let charge_item = pb::ChargeItem {
        item_id: "1".into(),
        quantity: 1,
        ..Default::default()
    };

    let create = app
        .fulfillments
        .create_fulfillment(pb::CreateFulfillmentRequest {
            order_id: unknown.clone(),
            items: vec![item],
            request_id: "unknown-order-1".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    let capture = app
        .charges
        .capture_items(pb::CaptureItemsRequest {
            order_id: unknown.clone(),
            items: vec![charge_item.clone()],
            request_id: "unknown-order-2".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    let cancel = app
        .charges
        .cancel_items(pb::CancelItemsRequest {
            order_id: unknown.clone(),
            items: vec![charge_item],
            request_id: "unknown-order-3".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    let get = app
        .fulfillments
        .get_order(pb::GetOrderRequest {
            key: Some(Key::OrderId(unknown.clone())),
        })
        .await
        .unwrap_err();
    let charges = app
        .charges
        .list_order_charges(pb::ListOrderChargesRequest {
            order_id: unknown.clone(),
        })
        .await
        .unwrap_err();

    for status in [&create, &capture, &cancel, &get, &charges] {
        assert_eq!(
            missing_resource(status),
            ("order".to_owned(), unknown.clone()),
            "{status:?}"
        );
        assert_eq!(
            status.get_details_error_info().unwrap().reason,
            "NOT_FOUND",
            "DR's code stays the reason"
        );
    }
    assert!(
        fulfillments_held(&dr, KeyMode::Test).await.is_empty(),
        "no fulfillment exists"
    );
    app.stop().await;
    dr.sandbox.shutdown().await;
}

/// Exact (units, nanos) of an amount.
fn exact(money: &Option<pb::Money>) -> (i64, i32) {
    let m = money.as_ref().expect("an amount");
    assert_eq!(m.currency_code, "USD");
    (m.units, m.nanos)
}

#[tokio::test]
async fn get_order_gives_everything_the_customer_notice_table_of_capturing_and_cancelling_charges_needs(
) {
    // The "Capturing and cancelling charges" page's order-details table: addresses,
    // totals (fees, taxes, duties, shipping), product details, payment methods, billing
    // and cancellation dates and amounts.
    let dr = spawn_sandbox().await;
    let order = dr
        .control
        .create_order(json!({
            "upstreamId": "notice-1", "email": "jdoe@example.com",
            "shipTo": {"name": "Chase Marshall", "address": {"line1": "1234 Any Road W", "city": "Minneapolis", "postalCode": "55401", "state": "MN", "country": "US"}},
            "billTo": {"name": "Chase Marshall", "email": "jdoe@example.com", "phone": "612-555-0100",
                       "address": {"line1": "Any other road W", "city": "Eagan", "postalCode": "55122", "state": "MN", "country": "US"}},
            "items": [{"skuId": "eecf60da", "productName": "Widget", "quantity": 2, "amount": "20.00", "tax": "1.61",
                       "fees": "0.40", "duties": "1.00", "metadata": {"key11": "value", "gift": true},
                       "productDetails": {"description": "A small gadget or mechanical device", "image": "https://img.example/widget.png",
                                          "countryOfOrigin": "US", "weight": 10.5, "weightUnit": "g", "partNumber": "W-1"}}],
            "shipping": {"amount": "5.00", "tax": "0.40"},
            "charges": [{"type": "creditCard", "creditCard": {"brand": "Visa", "lastFourDigits": "1111", "expirationMonth": 7, "expirationYear": 2027}}],
            "metadata": {"channel": "web"}
        }))
        .await
        .unwrap();
    let order_id = order["id"].as_str().unwrap().to_owned();
    let item_id = order["items"][0]["id"].as_str().unwrap().to_owned();
    let mut app = spawn_app(&dr.base_url()).await;
    app.charges
        .capture_items(pb::CaptureItemsRequest {
            order_id: order_id.clone(),
            items: vec![pb::ChargeItem {
                item_id: item_id.clone(),
                quantity: 1,
                ..Default::default()
            }],
            request_id: "notice-capture".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    app.charges
        .cancel_items(pb::CancelItemsRequest {
            order_id: order_id.clone(),
            items: vec![pb::ChargeItem {
                item_id: item_id.clone(),
                quantity: 1,
                ..Default::default()
            }],
            request_id: "notice-cancel".into(),
            ..Default::default()
        })
        .await
        .unwrap();

    let o = app
        .fulfillments
        .get_order(pb::GetOrderRequest {
            key: Some(Key::UpstreamId("notice-1".into())),
        })
        .await
        .unwrap()
        .into_inner()
        .order
        .unwrap();

    assert_eq!(
        o.ship_to.as_ref().unwrap().address.as_ref().unwrap().city,
        "Minneapolis"
    );
    let bill_to = o.bill_to.as_ref().expect("billTo");
    assert_eq!(
        (
            bill_to.name.as_str(),
            bill_to.email.as_str(),
            bill_to.phone.as_str()
        ),
        ("Chase Marshall", "jdoe@example.com", "612-555-0100")
    );
    let billing = bill_to.address.as_ref().unwrap();
    assert_eq!(
        (
            billing.line1.as_str(),
            billing.city.as_str(),
            billing.postal_code.as_str()
        ),
        ("Any other road W", "Eagan", "55122")
    );
    assert_eq!(o.email, "jdoe@example.com");
    // 20.00 + 5.00 shipping; tax 1.61 + 0.40; fees 0.40; duties 1.00 → 28.41
    assert_eq!(exact(&o.subtotal), (25, 0));
    assert_eq!(exact(&o.total_tax), (2, 10_000_000));
    assert_eq!(exact(&o.total_fees), (0, 400_000_000));
    assert_eq!(exact(&o.total_duty), (1, 0));
    assert_eq!(exact(&o.total_shipping), (5, 0));
    assert_eq!(exact(&o.total_importer_tax), (0, 0));
    assert_eq!(exact(&o.total_discount), (0, 0));
    assert_eq!(exact(&o.total_amount), (28, 410_000_000));
    assert_eq!(o.metadata["channel"], "web");

    let item = &o.items[0];
    assert_eq!((item.quantity, exact(&item.amount)), (2, (20, 0)));
    assert_eq!(item.metadata["key11"], "value");
    assert_eq!(item.metadata["gift"], "true", "non-string values as text");
    let product = item.product_details.as_ref().expect("productDetails");
    assert_eq!(
        (product.id.as_str(), product.name.as_str()),
        ("eecf60da", "Widget")
    );
    assert_eq!(product.description, "A small gadget or mechanical device");
    assert_eq!(product.image, "https://img.example/widget.png");
    assert_eq!(
        (product.weight.as_str(), product.weight_unit.as_str()),
        ("10.5", "g")
    );
    assert_eq!(
        (
            product.country_of_origin.as_str(),
            product.part_number.as_str()
        ),
        ("US", "W-1")
    );

    // Payment method(s): payment.sources[].type, and the card to name.
    assert_eq!(o.payment_sources.len(), 1);
    let source = &o.payment_sources[0];
    assert_eq!(source.r#type, "creditCard");
    assert_eq!(exact(&source.amount), (28, 410_000_000));
    let card = source.credit_card.as_ref().unwrap();
    assert_eq!(
        (
            card.brand.as_str(),
            card.last_four_digits.as_str(),
            card.expiration_month,
            card.expiration_year
        ),
        ("Visa", "1111", 7, 2027)
    );
    assert_eq!(source.owner.as_ref().unwrap().last_name, "Marshall");

    // Billing and cancellation dates and amounts, on a charge that names its source.
    let charge = &o.charges[0];
    assert_eq!(charge.source.as_ref(), Some(source));
    let capture = &charge.captures[0];
    assert!(capture.create_time.is_some());
    assert_eq!(
        exact(&capture.amount),
        (14, 210_000_000),
        "half of 28.41, rounded half up"
    );
    let cancel = &charge.cancels[0];
    assert!(cancel.create_time.is_some());
    assert_eq!(exact(&cancel.amount), (14, 200_000_000), "the rest");
    assert!(o.fraud_state_transitions.contains_key("passed"));
    assert!(o.state_transitions.contains_key("complete"));

    // A fulfillment's order details carry the same notice data (not the payment).
    let fulfillment_id = capture.fulfillment_id.clone();
    let details = app
        .fulfillments
        .get_fulfillment(pb::GetFulfillmentRequest { fulfillment_id })
        .await
        .unwrap()
        .into_inner()
        .fulfillment
        .unwrap()
        .order_details
        .unwrap();
    assert_eq!(details.bill_to, o.bill_to);
    assert_eq!(details.items[0].product_details, o.items[0].product_details);
    assert!(details.payment_sources.is_empty() && details.charges.is_empty());
    app.stop().await;
    dr.sandbox.shutdown().await;
}
