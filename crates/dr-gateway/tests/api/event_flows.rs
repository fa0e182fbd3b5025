//! End-to-end event flows against the sandbox (a stateful DR emulator that sends
//! signed webhooks): fulfill through the gateway and watch the events arrive, backfill
//! after a restart, and ChargeService's wait for capture outcomes.

use std::time::Duration;

use dr_gateway::pb::v1 as pb;
use dr_sandbox::{Sandbox, SandboxConfig, SettleMode, WebhookRegistration};
use serde_json::json;

use crate::event_support::*;
use crate::helpers::{
    fulfillments_held_at, settings, spawn_app_with, with_deadline, KeyMode, TestApp, API_KEY,
    WEBHOOK_SECRET,
};

/// A sandbox with fast webhook retries.
async fn sandbox(settle: SettleMode) -> Sandbox {
    Sandbox::start(SandboxConfig {
        settle,
        webhook_retry: dr_sandbox::RetryPolicy {
            attempts: 3,
            base_delay: Duration::from_millis(50),
            timeout: Duration::from_millis(3000),
        },
        ..Default::default()
    })
    .await
    .expect("sandbox starts")
}

/// Points the sandbox's webhooks at `app`; returns the webhook id.
async fn register_webhook(sb: &Sandbox, app: &TestApp) -> String {
    sb.control_client()
        .add_webhook(&WebhookRegistration::new(webhook_url(app)).secret(WEBHOOK_SECRET))
        .await
        .expect("webhook registered")
        .id
}

/// Creates an order with one line item of `quantity` units; returns (order id, item id).
async fn order(sb: &Sandbox, quantity: i64, fail_captures: bool) -> (String, String) {
    let order = sb
        .control_client()
        .create_order(json!({"items": [{"quantity": quantity, "amount": "30.00"}], "failCaptures": fail_captures}))
        .await
        .expect("order created");
    (
        order["id"].as_str().expect("order id").to_owned(),
        order["items"][0]["id"]
            .as_str()
            .expect("item id")
            .to_owned(),
    )
}

/// Event types on `stream` until `last_type`.
async fn types_until(
    stream: &mut tonic::Streaming<pb::SubscribeResponse>,
    last_type: &str,
) -> Vec<String> {
    let mut types = Vec::new();
    loop {
        let e = next_event(stream).await;
        let done = e.r#type == last_type;
        types.push(e.r#type);
        if done {
            return types;
        }
    }
}

#[tokio::test]
async fn fulfilling_through_the_gateway_streams_the_whole_lifecycle() {
    // Arrange
    let sb = sandbox(SettleMode::Immediate).await;
    let app = spawn_app_with(settings(&sb.base_url())).await;
    register_webhook(&sb, &app).await;
    let (order_id, item_id) = order(&sb, 1, false).await;
    let mut stream = subscribe(&app, filtered(&[], &[&order_id], None)).await;

    // Act
    app.fulfillments
        .clone()
        .create_fulfillment(with_deadline(
            pb::CreateFulfillmentRequest {
                order_id: order_id.clone(),
                items: vec![pb::CreateFulfillmentItem {
                    item_id,
                    quantity: 1,
                    ..Default::default()
                }],
                ..Default::default()
            },
            WAIT,
        ))
        .await
        .expect("fulfilled");

    // Assert
    let types = types_until(&mut stream, "order.complete").await;
    for want in [
        "fulfillment.created",
        "order.charge.capture.pending",
        "order.charge.capture.complete",
        "order.fulfilled",
        "order.complete",
    ] {
        assert_eq!(
            types.iter().filter(|t| *t == want).count(),
            1,
            "{want} once in {types:?}"
        );
    }
    app.stop().await;
    sb.shutdown().await;
}

#[tokio::test]
async fn events_emitted_while_the_gateway_was_down_are_backfilled_on_restart() {
    // Arrange: a gateway that received nothing, then stopped.
    let sb = sandbox(SettleMode::Immediate).await;
    let mut s = settings(&sb.base_url());
    s.backfill_enabled = true;
    s.backfill_interval = Duration::ZERO;
    let first = spawn_app_with(s.clone()).await;
    let hook = register_webhook(&sb, &first).await;
    first.stop().await;
    // No webhook reaches the restarted gateway: backfill is the only way in.
    sb.control_client()
        .delete_webhook(&hook)
        .await
        .expect("webhook deleted (204)");

    // Act: DR emits the whole lifecycle while no gateway listens; then restart.
    let (order_id, item_id) = order(&sb, 1, false).await;
    let fulfilled = reqwest::Client::new()
        .post(format!("{}/fulfillments", sb.base_url()))
        .bearer_auth(API_KEY)
        .timeout(WAIT)
        .json(&json!({"orderId": order_id, "items": [{"itemId": item_id, "quantity": 1}]}))
        .send()
        .await
        .expect("sandbox reachable");
    assert!(
        fulfilled.status().is_success(),
        "sandbox /fulfillments: {}",
        fulfilled.status()
    );
    let restarted = spawn_app_with(s).await;

    // Assert
    let mut stream = subscribe(
        &restarted,
        pb::SubscribeRequest {
            start: Some(pb::subscribe_request::Start::Position(
                pb::StartPosition::Oldest as i32,
            )),
            ..filtered(&[], &[&order_id], None)
        },
    )
    .await;
    let types = types_until(&mut stream, "order.complete").await;
    assert!(types.contains(&"order.accepted".to_owned()), "{types:?}");
    assert!(
        types.contains(&"fulfillment.created".to_owned()),
        "{types:?}"
    );
    assert!(
        types.contains(&"order.charge.capture.complete".to_owned()),
        "{types:?}"
    );
    restarted.stop().await;
    sb.shutdown().await;
}

/// CaptureItems of one unit with `wait`, under a deadline.
async fn capture_and_wait(
    mut charges: pb::charge_service_client::ChargeServiceClient<tonic::transport::Channel>,
    order_id: String,
    item_id: String,
) -> pb::CaptureItemsResponse {
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
            WAIT,
        ))
        .await
        .expect("capture accepted")
        .into_inner()
}

#[tokio::test]
async fn capture_items_with_wait_returns_the_completed_capture() {
    // Arrange: captures settle only when told, so the RPC really waits.
    let sb = sandbox(SettleMode::Stepped).await;
    let app = spawn_app_with(settings(&sb.base_url())).await;
    register_webhook(&sb, &app).await;
    let (order_id, item_id) = order(&sb, 2, false).await;

    // Act
    let call = tokio::spawn(capture_and_wait(app.charges.clone(), order_id, item_id));
    // Settle once the capture is pending at the sandbox.
    let control = sb.control_client();
    tokio::time::timeout(WAIT, async {
        loop {
            let pending = control.pending().await.expect("sandbox lists pending");
            if !pending.is_empty() {
                break;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("capture pending at the sandbox");
    control.settle().await.expect("sandbox settles");
    let resp = tokio::time::timeout(WAIT, call)
        .await
        .expect("RPC returns")
        .unwrap();

    // Assert: the outcome came from the capture's event (DR's read before settling
    // said pending), its amount exactly what DR holds for the capture, and DR holds
    // the one fulfillment.
    assert!(resp.settled);
    assert_eq!(resp.outcomes.len(), 1);
    let op = resp.outcomes[0].operation.clone().unwrap();
    assert_eq!(op.state, "complete");
    let fulfillment = resp.fulfillment.unwrap();
    assert_eq!(op.fulfillment_id, fulfillment.id);
    let charges = app
        .charges
        .clone()
        .list_order_charges(pb::ListOrderChargesRequest {
            order_id: fulfillment.order_id.clone(),
        })
        .await
        .expect("charges listed")
        .into_inner()
        .charges;
    let held_capture = charges
        .iter()
        .flat_map(|c| &c.captures)
        .find(|c| c.id == op.id)
        .expect("DR holds the capture");
    assert_eq!(op.amount, held_capture.amount);
    let amount = op.amount.clone().expect("an amount");
    assert_eq!(amount.currency_code, "USD");
    assert!(amount.units > 0 || amount.nanos > 0, "{amount:?}");
    let held = fulfillments_held_at(&sb.base_url(), KeyMode::Test).await;
    let for_order = held
        .iter()
        .filter(|f| f["orderId"] == fulfillment.order_id.as_str())
        .count();
    assert_eq!(for_order, 1, "{held:?}");
    app.stop().await;
    sb.shutdown().await;
}

#[tokio::test]
async fn capture_items_with_wait_reports_a_failed_capture_with_its_code() {
    let sb = sandbox(SettleMode::Immediate).await;
    let app = spawn_app_with(settings(&sb.base_url())).await;
    register_webhook(&sb, &app).await;
    let (order_id, item_id) = order(&sb, 1, true).await;

    let resp = capture_and_wait(app.charges.clone(), order_id, item_id).await;

    assert!(resp.settled);
    let op = resp.outcomes[0].operation.clone().unwrap();
    assert_eq!(op.state, "failed");
    assert_eq!(op.failure_code, "failed-request");
    app.stop().await;
    sb.shutdown().await;
}

#[tokio::test]
async fn cancel_items_with_wait_returns_the_completed_cancel() {
    let sb = sandbox(SettleMode::Immediate).await;
    let app = spawn_app_with(settings(&sb.base_url())).await;
    register_webhook(&sb, &app).await;
    let (order_id, item_id) = order(&sb, 2, false).await;

    let resp = app
        .charges
        .clone()
        .cancel_items(with_deadline(
            pb::CancelItemsRequest {
                order_id,
                items: vec![pb::ChargeItem {
                    item_id,
                    quantity: 1,
                    ..Default::default()
                }],
                wait: true,
                ..Default::default()
            },
            WAIT,
        ))
        .await
        .expect("cancel accepted")
        .into_inner();

    assert!(resp.settled);
    assert_eq!(resp.outcomes.len(), 1);
    assert_eq!(
        resp.outcomes[0].operation.clone().unwrap().state,
        "complete"
    );
    assert_eq!(resp.fulfillment.unwrap().items[0].cancel_quantity, 1);
    app.stop().await;
    sb.shutdown().await;
}

#[tokio::test]
async fn capture_items_with_wait_replayed_by_request_id_still_reports_the_outcome() {
    // Arrange: a first call captured and saw the outcome; its events are in the past.
    let sb = sandbox(SettleMode::Immediate).await;
    let app = spawn_app_with(settings(&sb.base_url())).await;
    register_webhook(&sb, &app).await;
    let (order_id, item_id) = order(&sb, 2, false).await;
    let request = pb::CaptureItemsRequest {
        order_id,
        items: vec![pb::ChargeItem {
            item_id,
            quantity: 1,
            ..Default::default()
        }],
        request_id: "replayed-capture".into(),
        wait: true,
        ..Default::default()
    };
    let first = app
        .charges
        .clone()
        .capture_items(with_deadline(request.clone(), WAIT))
        .await
        .expect("first capture")
        .into_inner();
    assert!(first.settled);

    // Act: the client retries (say its connection dropped) with the same request_id
    let started = std::time::Instant::now();
    let replay = app
        .charges
        .clone()
        .capture_items(with_deadline(request, WAIT))
        .await
        .expect("replayed capture")
        .into_inner();

    // Assert: same fulfillment, the settled outcome, and no wait for events that
    // already went by
    assert_eq!(replay.fulfillment, first.fulfillment);
    assert!(
        replay.settled,
        "the replay reports the outcome DR already has"
    );
    assert_eq!(replay.outcomes, first.outcomes);
    assert!(
        started.elapsed() < WAIT / 2,
        "answered without waiting out the deadline"
    );
    app.stop().await;
    sb.shutdown().await;
}

/// A risk-averse order (2 × 15.00) whose authorization has expired; DR can renew it or
/// not. Returns (order id, item id).
async fn expired_averse_order(sb: &Sandbox, reauthorization: &str) -> (String, String) {
    let order = sb
        .control_client()
        .create_order(json!({
            "riskMode": "averse", "authorizationExpired": true, "reauthorization": reauthorization,
            "billTo": {"name": "Guy Incognito", "email": "aa@fraud.com", "phone": "123456789",
                       "address": {"line1": "1234 Fake St.", "city": "Minnetonka", "postalCode": "55341", "state": "MN", "country": "US"}},
            "items": [{"quantity": 2, "amount": "30.00"}],
            "charges": [{"type": "creditCard", "creditCard": {"brand": "Visa", "lastFourDigits": "3676", "expirationMonth": 10, "expirationYear": 2022}}]
        }))
        .await
        .expect("order created");
    (
        order["id"].as_str().unwrap().to_owned(),
        order["items"][0]["id"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test]
async fn an_expired_authorization_dr_renews_is_captured_and_capture_items_waits_for_it() {
    let sb = sandbox(SettleMode::Stepped).await;
    let app = spawn_app_with(settings(&sb.base_url())).await;
    register_webhook(&sb, &app).await;
    let (order_id, item_id) = expired_averse_order(&sb, "succeeds").await;
    let mut stream = subscribe(&app, filtered(&["order.charge.*"], &[&order_id], None)).await;

    let call = tokio::spawn(capture_and_wait(
        app.charges.clone(),
        order_id.clone(),
        item_id,
    ));
    // The page's second outcome: 201, then order.charge.capture.pending — no reauth.failed.
    let first = next_event(&mut stream).await;
    assert_eq!(first.r#type, "order.charge.capture.pending");
    sb.control_client().settle().await.expect("sandbox settles");
    let resp = tokio::time::timeout(WAIT, call)
        .await
        .expect("RPC returns")
        .unwrap();

    assert!(resp.settled);
    let op = resp.outcomes[0].operation.clone().unwrap();
    assert_eq!(op.state, "complete");
    let amount = op.amount.unwrap();
    assert_eq!((amount.units, amount.nanos), (15, 0));
    assert_eq!(
        next_event(&mut stream).await.r#type,
        "order.charge.capture.complete"
    );
    let held = fulfillments_held_at(&sb.base_url(), KeyMode::Test).await;
    assert_eq!(held.len(), 1, "one fulfillment, the money moved once");
    app.stop().await;
    sb.shutdown().await;
}

#[tokio::test]
async fn reauth_failed_carries_the_bill_to_and_payment_sources_the_reauthorizations_page_says_to_read(
) {
    let sb = sandbox(SettleMode::Immediate).await;
    let app = spawn_app_with(settings(&sb.base_url())).await;
    register_webhook(&sb, &app).await;
    let (order_id, item_id) = expired_averse_order(&sb, "fails").await;
    let mut stream = subscribe(
        &app,
        filtered(&["order.charge.reauth.failed"], &[&order_id], None),
    )
    .await;

    let status = app
        .charges
        .clone()
        .capture_items(with_deadline(
            pb::CaptureItemsRequest {
                order_id: order_id.clone(),
                items: vec![pb::ChargeItem {
                    item_id,
                    quantity: 1,
                    ..Default::default()
                }],
                ..Default::default()
            },
            WAIT,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);

    // "From the event, you could retrieve billTo, payment.sources[] … to populate a
    // payment failed notification": both arrive typed.
    let event = next_event(&mut stream).await;
    let Some(pb::event::Payload::Order(order)) = event.payload else {
        panic!("the event's object is the order: {event:?}");
    };
    assert_eq!(order.id, order_id);
    let bill_to = order.bill_to.expect("billTo");
    assert_eq!(
        (bill_to.name.as_str(), bill_to.email.as_str()),
        ("Guy Incognito", "aa@fraud.com")
    );
    assert_eq!(bill_to.address.unwrap().city, "Minnetonka");
    let source = &order.payment_sources[0];
    assert_eq!(source.r#type, "creditCard");
    let card = source.credit_card.as_ref().unwrap();
    assert_eq!(
        (card.last_four_digits.as_str(), card.expiration_year),
        ("3676", 2022)
    );
    assert_eq!(order.charges[0].source.as_ref(), Some(source));
    assert_eq!(
        sb.control_client()
            .requests(Some("POST"), Some("/fulfillments"))
            .await
            .unwrap()
            .len(),
        1,
        "one POST, refused"
    );
    assert!(
        fulfillments_held_at(&sb.base_url(), KeyMode::Test)
            .await
            .is_empty(),
        "DR holds no fulfillment: nothing is captured"
    );
    app.stop().await;
    sb.shutdown().await;
}

/// Fulfills `orders` one-unit orders through the gateway, all at once; returns their ids.
async fn fulfill_orders(sb: &Sandbox, app: &TestApp, orders: usize) -> Vec<String> {
    let mut created = Vec::new();
    for _ in 0..orders {
        created.push(order(sb, 1, false).await);
    }
    let calls = created.iter().map(|(order_id, item_id)| {
        let mut client = app.fulfillments.clone();
        let request = pb::CreateFulfillmentRequest {
            order_id: order_id.clone(),
            items: vec![pb::CreateFulfillmentItem {
                item_id: item_id.clone(),
                quantity: 1,
                ..Default::default()
            }],
            ..Default::default()
        };
        async move {
            client
                .create_fulfillment(with_deadline(request, WAIT))
                .await
                .expect("fulfilled")
        }
    });
    futures::future::join_all(calls).await;
    created.into_iter().map(|(order_id, _)| order_id).collect()
}

/// The DR order an event is about, from its typed payload.
fn order_of(e: &pb::Event) -> Option<String> {
    match &e.payload {
        Some(pb::event::Payload::Order(o)) => Some(o.id.clone()),
        Some(pb::event::Payload::Charge(c)) => Some(c.order_id.clone()),
        Some(pb::event::Payload::Fulfillment(f)) => Some(f.order_id.clone()),
        Some(pb::event::Payload::SalesTransaction(t)) => Some(t.order_id.clone()),
        None => None,
    }
}

/// True when `events` are in DR's creation order.
fn in_creation_order(events: &[pb::Event]) -> bool {
    let times: Vec<_> = events
        .iter()
        .map(|e| e.create_time.map(|t| (t.seconds, t.nanos)))
        .collect();
    times.windows(2).all(|w| w[0] < w[1])
}

/// `order.fulfilled` comes before `order.complete` and createdTimes only grow.
fn assert_creation_order(order_id: &str, events: &[pb::Event]) {
    let types: Vec<&str> = events.iter().map(|e| e.r#type.as_str()).collect();
    let at = |t: &str| types.iter().position(|x| *x == t);
    assert!(
        at("order.fulfilled") < at("order.complete") && at("order.fulfilled").is_some(),
        "{order_id}: {types:?}"
    );
    assert!(
        in_creation_order(events),
        "{order_id} out of creation order: {types:?}"
    );
}

#[tokio::test]
async fn with_concurrent_webhooks_a_group_member_gets_each_orders_events_in_creation_order() {
    // Arrange: DR-style concurrent webhooks, each delayed by up to 100 ms as over a
    // network; one member of a group with the default reorder window, created by
    // the member itself; a plain subscriber sees arrival order.
    let sb = sandbox(SettleMode::Immediate).await;
    sb.control_client()
        .set_delivery(dr_sandbox::DeliveryMode {
            order: dr_sandbox::DeliveryOrder::Concurrent,
            jitter: Duration::from_millis(100),
        })
        .await
        .unwrap();
    let app = spawn_app_with(settings(&sb.base_url())).await;
    register_webhook(&sb, &app).await;
    let mut start = crate::group_support::start("flows", "m", 32);
    start.create = Some(pb::ConsumerGroupSettings::default());
    let mut member = crate::group_support::Member::join(app.channel.clone(), start).await;
    let mut arrival = subscribe(&app, pb::SubscribeRequest::default()).await;

    // Act
    let orders = fulfill_orders(&sb, &app, 8).await;

    // Assert: the webhooks really arrived out of creation order…
    let mut arrived: std::collections::HashMap<String, Vec<pb::Event>> = Default::default();
    let mut complete = 0;
    while complete < orders.len() {
        let e = next_event(&mut arrival).await;
        if e.r#type == "order.complete" {
            complete += 1;
        }
        if let Some(order_id) = order_of(&e) {
            arrived.entry(order_id).or_default().push(e);
        }
    }
    let shuffled = orders
        .iter()
        .filter(|o| !in_creation_order(&arrived[*o]))
        .count();
    assert!(
        shuffled > 0,
        "no order arrived out of creation order; the test proves nothing"
    );
    // …and the member got every order's events in creation order, up to order.complete.
    let mut by_order: std::collections::HashMap<String, Vec<pb::Event>> = Default::default();
    let mut complete = 0;
    while complete < orders.len() {
        let d = member.next_delivery().await;
        let event = d.event.clone().unwrap();
        assert_eq!(d.ordering_key, d.ordering_key.trim(), "ordering key set");
        member.ack(&d.delivery_id).await;
        if event.r#type == "order.complete" {
            complete += 1;
        }
        by_order.entry(d.ordering_key).or_default().push(event);
    }
    for order_id in &orders {
        assert_creation_order(order_id, &by_order[order_id]);
    }
    drop((member, arrival));
    app.stop().await;
    sb.shutdown().await;
}

#[tokio::test]
async fn a_granted_chargeback_streams_its_sales_transaction_typed_and_cuts_available_to_refund() {
    let sb = sandbox(SettleMode::Immediate).await;
    let mut app = spawn_app_with(settings(&sb.base_url())).await;
    register_webhook(&sb, &app).await;
    let control = sb.control_client();
    let order = control
        .create_order(json!({"upstreamId": "221000297718", "items": [{"skuId": "AF01", "quantity": 1, "amount": "0.30", "tax": "0.02"}]}))
        .await
        .unwrap();
    let order_id = order["id"].as_str().unwrap().to_owned();
    let item_id = order["items"][0]["id"].as_str().unwrap().to_owned();
    capture_and_wait(app.charges.clone(), order_id.clone(), item_id).await;
    let mut stream = subscribe(
        &app,
        filtered(
            &["order.dispute*", "order.chargeback", "sales_transaction.*"],
            &[&order_id],
            None,
        ),
    )
    .await;

    control.open_dispute(&order_id).await.unwrap();
    control
        .grant_chargeback(
            &order_id,
            &dr_sandbox::ChargebackSpec {
                amount: Some("0.11".into()),
                kind: dr_sandbox::ChargebackType::FraudChargeback,
                fee: Some("15.0".into()),
            },
        )
        .await
        .unwrap();

    let types = types_until(&mut stream, "order.chargeback").await;
    assert_eq!(
        types,
        [
            "order.dispute",
            "order.dispute.resolved",
            "sales_transaction.created",
            "order.chargeback"
        ]
    );
    // Both chargeback events carry the transaction, exact.
    let mut replay = subscribe(
        &app,
        pb::SubscribeRequest {
            filter: Some(pb::EventFilter {
                types: vec!["order.chargeback".into()],
                ..Default::default()
            }),
            start: Some(pb::subscribe_request::Start::Position(
                pb::StartPosition::Oldest as i32,
            )),
            ..Default::default()
        },
    )
    .await;
    let event = next_event(&mut replay).await;
    let Some(pb::event::Payload::SalesTransaction(t)) = event.payload else {
        panic!("order.chargeback carries a sales transaction: {event:?}");
    };
    assert_eq!(
        (t.r#type.as_str(), t.order_id.as_str()),
        ("fraud_chargeback", order_id.as_str())
    );
    assert_eq!(t.order_upstream_id, "221000297718");
    let amount = t.amount.unwrap();
    assert_eq!((amount.units, amount.nanos), (0, 110_000_000));
    let fees = t.transaction_fees.unwrap();
    assert_eq!((fees.units, fees.nanos), (-15, 0));
    let payout = t.payout_amount.unwrap();
    assert_eq!((payout.units, payout.nanos), (-15, -110_000_000));

    // availableToRefundAmount reduced: 0.32 captured, 0.21 left (the page's numbers).
    let read = app
        .fulfillments
        .get_order(pb::GetOrderRequest {
            key: Some(pb::get_order_request::Key::OrderId(order_id.clone())),
        })
        .await
        .unwrap()
        .into_inner()
        .order
        .unwrap();
    let available = read.available_to_refund_amount.unwrap();
    assert_eq!((available.units, available.nanos), (0, 210_000_000));
    assert_eq!(read.state, "complete", "the dispute is over");
    app.stop().await;
    sb.shutdown().await;
}

#[tokio::test]
async fn with_in_order_webhooks_a_plain_subscriber_gets_each_orders_events_in_creation_order() {
    // Arrange: the sandbox delivers one webhook at a time, in emission order.
    let sb = sandbox(SettleMode::Immediate).await;
    sb.control_client()
        .set_delivery(dr_sandbox::DeliveryMode {
            order: dr_sandbox::DeliveryOrder::InOrder,
            jitter: Duration::ZERO,
        })
        .await
        .unwrap();
    let app = spawn_app_with(settings(&sb.base_url())).await;
    register_webhook(&sb, &app).await;
    let mut stream = subscribe(&app, pb::SubscribeRequest::default()).await;

    // Act
    let orders = fulfill_orders(&sb, &app, 8).await;

    // Assert
    let mut by_order: std::collections::HashMap<String, Vec<pb::Event>> = Default::default();
    let mut complete = 0;
    while complete < orders.len() {
        let e = next_event(&mut stream).await;
        if e.r#type == "order.complete" {
            complete += 1;
        }
        if let Some(order_id) = order_of(&e) {
            by_order.entry(order_id).or_default().push(e);
        }
    }
    for order_id in &orders {
        assert_creation_order(order_id, &by_order[order_id]);
    }
    drop(stream);
    app.stop().await;
    sb.shutdown().await;
}
