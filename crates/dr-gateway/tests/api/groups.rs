//! Consumer groups over real sockets, in single-process mode: members share the
//! events (each to one member, acknowledged once), per-order ordering against
//! concurrent out-of-order webhook delivery, redelivery when a member dies or
//! misses its deadline or its connection ages, flow control, and the group RPCs'
//! answers.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use dr_gateway::pb::v1 as pb;
use futures::StreamExt as _;
use tonic::Code;
use tonic_types::StatusExt;

use crate::event_support::*;
use crate::group_support::*;
use crate::helpers::{settings, spawn_app, spawn_app_with, TestApp};

/// What every member saw and what the gateway confirmed.
#[derive(Default)]
struct Ledger {
    /// Per member: (order id, createdTime, event id) in the order delivered.
    seen: HashMap<String, Vec<(String, DateTime<Utc>, String)>>,
    /// Event id → acknowledgements the gateway confirmed.
    acked: HashMap<String, u32>,
}

/// A member that acknowledges everything it gets until `total` events are
/// acknowledged across the group.
async fn acking_member(
    app_addr: std::net::SocketAddr,
    group: &str,
    name: String,
    ledger: Arc<Mutex<Ledger>>,
    total: usize,
) {
    let mut member = Member::join(connect(app_addr).await, start(group, &name, 8)).await;
    loop {
        if ledger.lock().unwrap().acked.len() >= total {
            return;
        }
        let d = tokio::select! {
            d = member.next_delivery() => d,
            // why: another member may acknowledge the last event; look again.
            () = tokio::time::sleep(Duration::from_millis(50)) => continue,
        };
        let event = d.event.clone().expect("delivery carries the event");
        let order = event
            .data_object
            .as_ref()
            .and_then(|o| o.fields.get("orderId"))
            .and_then(|v| match &v.kind {
                Some(prost_types::value::Kind::StringValue(s)) => Some(s.clone()),
                _ => None,
            })
            .expect("orderId");
        let created = event
            .create_time
            .map(|t| DateTime::<Utc>::from_timestamp(t.seconds, t.nanos as u32).unwrap())
            .unwrap();
        ledger
            .lock()
            .unwrap()
            .seen
            .entry(name.clone())
            .or_default()
            .push((order, created, event.id.clone()));
        let receipt = member.ack(&d.delivery_id).await;
        assert!(
            receipt.rejected.is_empty(),
            "{name}: ack refused: {receipt:?}"
        );
        assert_eq!(receipt.acknowledged_delivery_ids, vec![d.delivery_id]);
        *ledger.lock().unwrap().acked.entry(event.id).or_default() += 1;
    }
}

#[tokio::test]
async fn three_members_share_1000_events_of_50_orders_each_acknowledged_once_in_creation_order() {
    // Arrange: a group with a 2 s reorder window, three members, and a plain
    // subscriber that sees arrival order.
    const ORDERS: usize = 50;
    const PER_ORDER: usize = 20;
    let app = spawn_app("http://127.0.0.1:9").await;
    let mut client = app.events.clone();
    create_group(
        &mut client,
        "notifier",
        group_settings(Duration::from_secs(60), Duration::from_secs(2)),
    )
    .await;
    let mut arrival = subscribe(&app, pb::SubscribeRequest::default()).await;
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let members: Vec<_> = (0..3)
        .map(|i| {
            tokio::spawn(acking_member(
                app.grpc_addr,
                "notifier",
                format!("m{i}"),
                ledger.clone(),
                ORDERS * PER_ORDER,
            ))
        })
        .collect();

    // Act: DR-style concurrent delivery, 8 webhooks in flight, orders interleaved;
    // within each pair of an order's events the later-created one is sent first.
    let t0 = Utc::now();
    let created =
        |order: usize, n: usize| t0 + chrono::Duration::milliseconds((n * 10 + order) as i64);
    let mut jobs = Vec::new();
    for pair in 0..PER_ORDER / 2 {
        for order in 0..ORDERS {
            jobs.push((order, pair * 2));
        }
    }
    let poster = Poster::new(app.http_addr);
    futures::stream::iter(jobs)
        .for_each_concurrent(8, |(order, n)| {
            let poster = &poster;
            async move {
                for k in [n + 1, n] {
                    let ev = order_event(
                        &format!("o{order}-e{k:02}"),
                        "order.updated",
                        &format!("ord-{order}"),
                        created(order, k),
                    );
                    poster.post(&ev).await;
                }
            }
        })
        .await;
    for m in members {
        tokio::time::timeout(Duration::from_secs(60), m)
            .await
            .expect("members finish")
            .unwrap();
    }

    // Assert: arrival order really differed from creation order…
    let mut arrived: HashMap<String, Vec<String>> = HashMap::new();
    for _ in 0..ORDERS * PER_ORDER {
        let e = next_event(&mut arrival).await;
        let order = e.id.split('-').next().unwrap().to_owned();
        arrived.entry(order).or_default().push(e.id);
    }
    for (order, ids) in &arrived {
        let mut sorted = ids.clone();
        sorted.sort();
        assert_ne!(
            ids, &sorted,
            "{order} arrived in creation order; the test proves nothing"
        );
    }
    // …every event was acknowledged exactly once across the group…
    let ledger = std::mem::take(&mut *ledger.lock().unwrap());
    assert_eq!(ledger.acked.len(), ORDERS * PER_ORDER);
    assert!(
        ledger.acked.values().all(|n| *n == 1),
        "an event acknowledged twice"
    );
    let delivered: usize = ledger.seen.values().map(Vec::len).sum();
    assert_eq!(delivered, ORDERS * PER_ORDER, "no event delivered twice");
    // …each member got a share, and saw each order's events in creation order.
    assert_eq!(ledger.seen.len(), 3, "every member got events");
    for (member, seen) in &ledger.seen {
        let mut by_order: BTreeMap<&str, Vec<DateTime<Utc>>> = BTreeMap::new();
        for (order, created, _) in seen {
            by_order.entry(order).or_default().push(*created);
        }
        for (order, times) in by_order {
            assert!(
                times.windows(2).all(|w| w[0] < w[1]),
                "{member} saw {order} out of creation order: {times:?}"
            );
        }
    }
    drop(arrival);
    app.stop().await;
}

/// Posts one event per order `ord-0..n` (ids `e<i>`), created in order.
async fn post_orders(app: &TestApp, prefix: &str, n: usize) -> Vec<String> {
    let t0 = Utc::now();
    let mut ids = Vec::new();
    for i in 0..n {
        let id = format!("{prefix}{i}");
        deliver(
            app,
            &order_event(
                &id,
                "order.updated",
                &format!("ord-{prefix}{i}"),
                t0 + chrono::Duration::milliseconds(i as i64),
            ),
        )
        .await;
        ids.push(id);
    }
    ids
}

#[tokio::test]
async fn a_members_unacknowledged_events_reach_the_others_when_its_connection_dies() {
    // Arrange: the victim joins alone and takes 5 events it never acknowledges;
    // the deadline is far off, so only its disconnection can free them.
    let app = spawn_app("http://127.0.0.1:9").await;
    let mut client = app.events.clone();
    create_group(
        &mut client,
        "g",
        group_settings(Duration::from_secs(300), Duration::ZERO),
    )
    .await;
    let mut victim = Member::join(connect(app.grpc_addr).await, start("g", "victim", 5)).await;
    let ids = post_orders(&app, "k", 12).await;
    let mut held = HashSet::new();
    for _ in 0..5 {
        held.insert(victim.next_delivery().await.event.unwrap().id);
    }

    // Act: its connection goes away (as when the process is killed); two members take over.
    drop(victim);
    let mut a = Member::join(connect(app.grpc_addr).await, start("g", "a", 16)).await;
    let mut b = Member::join(connect(app.grpc_addr).await, start("g", "b", 16)).await;
    let mut got: HashMap<String, u32> = HashMap::new();
    let mut redelivered = 0;
    // why: far inside the 300 s ack deadline, so only the release on disconnect
    // can bring the victim's events back in time.
    let deadline = tokio::time::Instant::now() + WAIT;
    while got.len() < ids.len() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the victim's events did not come back: got {got:?}"
        );
        let d = tokio::select! {
            d = a.next_delivery() => (d, &mut a),
            d = b.next_delivery() => (d, &mut b),
            () = tokio::time::sleep_until(deadline) => continue,
        };
        let (d, member) = d;
        let id = d.event.clone().unwrap().id;
        if held.contains(&id) {
            assert_eq!(d.attempt, 2, "{id} was delivered once before");
            redelivered += 1;
        }
        let receipt = member.ack(&d.delivery_id).await;
        assert_eq!(receipt.acknowledged_delivery_ids.len(), 1, "{receipt:?}");
        *got.entry(id).or_default() += 1;
    }

    // Assert: nothing lost, nothing twice, the victim's five came back.
    assert_eq!(redelivered, 5);
    assert!(got.values().all(|n| *n == 1));
    let group = get_group(&mut client, "g").await;
    assert_eq!(group.unacknowledged_count, 0);
    assert_eq!(
        group.members.len(),
        2,
        "the dead member is gone: {:?}",
        group.members
    );
    app.stop().await;
}

#[tokio::test]
async fn a_member_that_never_acknowledges_holds_at_most_its_limit_while_the_others_keep_going() {
    // Arrange: a stalled member (limit 3) joins first.
    let app = spawn_app("http://127.0.0.1:9").await;
    let mut client = app.events.clone();
    create_group(
        &mut client,
        "g",
        group_settings(Duration::from_secs(300), Duration::ZERO),
    )
    .await;
    let mut stalled = Member::join(connect(app.grpc_addr).await, start("g", "stalled", 3)).await;
    let ids = post_orders(&app, "s", 30).await;
    let mut stuck = Vec::new();
    for _ in 0..3 {
        let d = stalled.next_delivery().await;
        stuck.push(d.event.unwrap().id);
    }
    // A later event of one of the stalled member's orders must wait for it.
    let blocked_order = format!("ord-{}", stuck[0]);
    deliver(
        &app,
        &order_event("after-stuck", "order.updated", &blocked_order, Utc::now()),
    )
    .await;

    // Act: a healthy member joins and acknowledges what it gets.
    let mut healthy = Member::join(connect(app.grpc_addr).await, start("g", "healthy", 16)).await;
    let mut done = HashSet::new();
    tokio::time::timeout(WAIT, async {
        while done.len() < ids.len() - stuck.len() {
            let d = healthy.next_delivery().await;
            let id = d.event.unwrap().id;
            assert_ne!(
                id, "after-stuck",
                "an order's next event overtook its unacknowledged one"
            );
            healthy.ack(&d.delivery_id).await;
            done.insert(id);
        }
    })
    .await
    .expect("the healthy member gets every other event");

    // Assert: the stalled member holds exactly its limit; everything else is done.
    let group = get_group(&mut client, "g").await;
    let by_name: HashMap<_, _> = group
        .members
        .iter()
        .map(|m| (m.member_name.as_str(), m))
        .collect();
    assert_eq!(by_name["stalled"].unacknowledged_count, 3);
    assert_eq!(by_name["stalled"].max_unacknowledged, 3);
    assert_eq!(by_name["healthy"].acknowledged_count, 27);
    assert_eq!(group.unacknowledged_count, 3);
    // When the stalled member leaves, its events and the one behind them go on.
    assert_eq!(stalled.leave().await.map_err(|s| s.code()), Ok(()));
    let mut rest = HashSet::new();
    tokio::time::timeout(WAIT, async {
        while rest.len() < 4 {
            let d = healthy.next_delivery().await;
            rest.insert(d.event.unwrap().id);
            healthy.ack(&d.delivery_id).await;
        }
    })
    .await
    .expect("the stalled member's events go on once it left (long before their deadline)");
    let mut want: HashSet<String> = stuck.iter().cloned().collect();
    want.insert("after-stuck".into());
    assert_eq!(rest, want);
    app.stop().await;
}

#[tokio::test]
async fn an_event_past_its_ack_deadline_is_delivered_again_and_the_old_delivery_id_is_refused() {
    // Arrange: a 1 s deadline; A takes the event and does not acknowledge in time.
    let app = spawn_app("http://127.0.0.1:9").await;
    let mut client = app.events.clone();
    create_group(
        &mut client,
        "g",
        group_settings(Duration::from_secs(1), Duration::ZERO),
    )
    .await;
    let mut a = Member::join(connect(app.grpc_addr).await, start("g", "a", 1)).await;
    let mut b = Member::join(connect(app.grpc_addr).await, start("g", "b", 1)).await;
    deliver(
        &app,
        &order_event("slow", "order.updated", "ord-1", Utc::now()),
    )
    .await;
    let (first, first_on_a) = tokio::select! {
        d = a.next_delivery() => (d, true),
        d = b.next_delivery() => (d, false),
    };
    assert_eq!(first.attempt, 1);

    // Act: the deadline passes; the event comes again (to either member).
    let (again, again_on_a) = tokio::select! {
        d = a.next_delivery() => (d, true),
        d = b.next_delivery() => (d, false),
    };

    // Assert: a new attempt and id; the old id no longer acknowledges; the new one does, once.
    assert_eq!(again.attempt, 2);
    assert_ne!(again.delivery_id, first.delivery_id);
    let (old_holder, new_holder) = match (first_on_a, again_on_a) {
        (true, true) => (&mut a, None),
        (true, false) => (&mut a, Some(&mut b)),
        (false, true) => (&mut b, Some(&mut a)),
        (false, false) => (&mut b, None),
    };
    let stale = old_holder.ack(&first.delivery_id).await;
    assert_eq!(stale.rejected.len(), 1, "{stale:?}");
    assert_eq!(stale.rejected[0].reason, pb::RejectReason::NotHeld as i32);
    let holder = match new_holder {
        Some(m) => m,
        None => old_holder,
    };
    let fresh = holder.ack(&again.delivery_id).await;
    assert_eq!(
        fresh.acknowledged_delivery_ids,
        vec![again.delivery_id.clone()]
    );
    let repeat = holder.ack(&again.delivery_id).await;
    assert_eq!(
        repeat.acknowledged_delivery_ids,
        [again.delivery_id],
        "a repeat is harmless"
    );
    assert_eq!(get_group(&mut client, "g").await.unacknowledged_count, 0);
    app.stop().await;
}

#[tokio::test]
async fn a_handed_back_event_goes_to_the_next_member_and_extensions_keep_a_lease() {
    let app = spawn_app("http://127.0.0.1:9").await;
    let mut client = app.events.clone();
    create_group(
        &mut client,
        "g",
        group_settings(Duration::from_secs(2), Duration::ZERO),
    )
    .await;
    let mut a = Member::join(connect(app.grpc_addr).await, start("g", "a", 1)).await;
    deliver(
        &app,
        &order_event("e1", "order.updated", "ord-1", Utc::now()),
    )
    .await;
    let d = a.next_delivery().await;

    // Extending twice keeps it past the original deadline.
    for _ in 0..2 {
        let r = a
            .send(pb::ConsumeRequest {
                extend_delivery_ids: vec![d.delivery_id.clone()],
                ..Default::default()
            })
            .await;
        assert_eq!(r.extended_delivery_ids, vec![d.delivery_id.clone()]);
    }
    // Handing it back gives it to the next member at once (attempt 2).
    let mut b = Member::join(connect(app.grpc_addr).await, start("g", "b", 1)).await;
    let r = a
        .send(pb::ConsumeRequest {
            nack_delivery_ids: vec![d.delivery_id.clone()],
            ..Default::default()
        })
        .await;
    assert_eq!(r.nacked_delivery_ids, vec![d.delivery_id.clone()]);
    let (again, on_b) = tokio::select! {
        d = a.next_delivery() => (d, false),
        d = b.next_delivery() => (d, true),
    };
    assert_eq!(again.attempt, 2);
    let holder = if on_b { &mut b } else { &mut a };
    assert_eq!(
        holder
            .ack(&again.delivery_id)
            .await
            .acknowledged_delivery_ids
            .len(),
        1
    );
    // Unknown and malformed ids are refused with a reason.
    let r = a.ack("not-a-delivery").await;
    assert_eq!(r.rejected[0].reason, pb::RejectReason::Unknown as i32);
    app.stop().await;
}

#[tokio::test]
async fn groups_are_created_listed_read_and_deleted_and_errors_name_the_problem() {
    let app = spawn_app("http://127.0.0.1:9").await;
    let mut client = app.events.clone();

    // Create; the same id again is ALREADY_EXISTS.
    let g = create_group(&mut client, "alpha", pb::ConsumerGroupSettings::default()).await;
    let s = g.settings.unwrap();
    assert_eq!(
        s.ack_deadline,
        Some(prost_types::Duration {
            seconds: 30,
            nanos: 0
        }),
        "default ack deadline"
    );
    assert_eq!(
        s.reorder_window,
        Some(prost_types::Duration {
            seconds: 2,
            nanos: 0
        }),
        "default reorder window"
    );
    let again = client
        .create_consumer_group(pb::CreateConsumerGroupRequest {
            group_id: "alpha".into(),
            settings: None,
        })
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::AlreadyExists);
    assert_eq!(
        again.get_error_details().error_info().unwrap().reason,
        "CONSUMER_GROUP_EXISTS"
    );
    create_group(&mut client, "beta", pb::ConsumerGroupSettings::default()).await;
    create_group(&mut client, "gamma", pb::ConsumerGroupSettings::default()).await;

    // List in pages of 2.
    let page1 = client
        .list_consumer_groups(pb::ListConsumerGroupsRequest {
            page_size: 2,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        page1
            .groups
            .iter()
            .map(|g| g.group_id.as_str())
            .collect::<Vec<_>>(),
        ["alpha", "beta"]
    );
    let page2 = client
        .list_consumer_groups(pb::ListConsumerGroupsRequest {
            page_size: 2,
            page_token: page1.next_page_token,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        page2
            .groups
            .iter()
            .map(|g| g.group_id.as_str())
            .collect::<Vec<_>>(),
        ["gamma"]
    );
    assert!(page2.next_page_token.is_empty());

    // Bad input names the field.
    let cases = [
        (
            pb::CreateConsumerGroupRequest {
                group_id: "has.dot".into(),
                settings: None,
            },
            "group_id",
        ),
        (
            pb::CreateConsumerGroupRequest {
                group_id: "x".into(),
                settings: Some(group_settings(Duration::from_millis(10), Duration::ZERO)),
            },
            "settings.ack_deadline",
        ),
        (
            pb::CreateConsumerGroupRequest {
                group_id: "x".into(),
                settings: Some(group_settings(
                    Duration::from_secs(5),
                    Duration::from_secs(301),
                )),
            },
            "settings.reorder_window",
        ),
        (
            pb::CreateConsumerGroupRequest {
                group_id: "x".into(),
                settings: Some(pb::ConsumerGroupSettings {
                    filter: Some(pb::EventFilter {
                        types: vec!["bad type".into()],
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
            },
            "settings.filter.types[0]",
        ),
    ];
    for (req, field) in cases {
        let status = client.create_consumer_group(req).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{field}");
        assert_eq!(
            status
                .get_error_details()
                .bad_request()
                .unwrap()
                .field_violations[0]
                .field,
            field
        );
    }

    // Consume: a missing group is NOT_FOUND, unless the start creates it.
    let missing = Member::try_join(app.channel.clone(), start("nope", "m", 1))
        .await
        .err()
        .unwrap();
    assert_eq!(missing.code(), Code::NotFound);
    assert_eq!(
        missing.get_error_details().error_info().unwrap().reason,
        "CONSUMER_GROUP_NOT_FOUND"
    );
    let mut creating = start("made-by-member", "m", 1);
    creating.create = Some(group_settings(Duration::from_secs(7), Duration::ZERO));
    let member = Member::join(app.channel.clone(), creating.clone()).await;
    assert!(member.started.created);
    assert_eq!(
        member
            .started
            .group
            .as_ref()
            .unwrap()
            .settings
            .as_ref()
            .unwrap()
            .ack_deadline
            .unwrap()
            .seconds,
        7
    );
    let second = Member::join(app.channel.clone(), creating).await;
    assert!(
        !second.started.created,
        "the second member joins the existing group"
    );
    let bad_first = Member::try_join(
        app.channel.clone(),
        pb::ConsumeStart {
            group_id: "".into(),
            ..Default::default()
        },
    )
    .await
    .err()
    .unwrap();
    assert_eq!(
        bad_first
            .get_error_details()
            .bad_request()
            .unwrap()
            .field_violations[0]
            .field,
        "start.group_id"
    );

    // Delete: members' streams end NOT_FOUND (CONSUMER_GROUP_DELETED); the group is gone.
    let mut member = member;
    client
        .delete_consumer_group(pb::DeleteConsumerGroupRequest {
            group_id: "made-by-member".into(),
        })
        .await
        .unwrap();
    let ended = member.until_end().await.unwrap_err();
    assert_eq!(ended.code(), Code::NotFound);
    assert_eq!(
        ended.get_error_details().error_info().unwrap().reason,
        "CONSUMER_GROUP_DELETED"
    );
    let gone = client
        .get_consumer_group(pb::GetConsumerGroupRequest {
            group_id: "made-by-member".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
    drop(second);
    app.stop().await;
}

#[tokio::test]
async fn a_subscriber_with_a_reorder_window_gets_an_orders_events_in_creation_order() {
    // Arrange: one plain subscriber, one with a 1 s window.
    let app = spawn_app("http://127.0.0.1:9").await;
    let mut plain = subscribe(&app, pb::SubscribeRequest::default()).await;
    let mut ordered = subscribe(
        &app,
        pb::SubscribeRequest {
            reorder_window: Some(prost_types::Duration {
                seconds: 1,
                nanos: 0,
            }),
            ..Default::default()
        },
    )
    .await;

    // Act: DR's `order.fulfilled` arrives after `order.complete`, which it precedes.
    let t0 = Utc::now();
    deliver(
        &app,
        &order_event(
            "complete",
            "order.complete",
            "ord-1",
            t0 + chrono::Duration::milliseconds(5),
        ),
    )
    .await;
    deliver(
        &app,
        &order_event(
            "other",
            "order.accepted",
            "ord-2",
            t0 + chrono::Duration::milliseconds(1),
        ),
    )
    .await;
    deliver(
        &app,
        &order_event("fulfilled", "order.fulfilled", "ord-1", t0),
    )
    .await;

    // Assert
    assert_eq!(
        ids_until(&mut plain, "fulfilled").await,
        ["complete", "other", "fulfilled"]
    );
    let mut got = Vec::new();
    let mut resume = String::new();
    while got.len() < 3 {
        let msg = tokio::time::timeout(WAIT, ordered.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let Some(pb::subscribe_response::Kind::Event(e)) = msg.kind {
            got.push(e.id);
            resume = msg.resume_cursor;
        }
    }
    assert_eq!(got, ["fulfilled", "complete", "other"]);
    assert!(!resume.is_empty(), "reordered events carry a resume cursor");
    app.stop().await;
}

#[tokio::test]
async fn an_event_that_arrives_after_a_later_one_was_acknowledged_is_marked_late() {
    // Arrange: no reorder window, so the later-created event goes out at once.
    let app = spawn_app("http://127.0.0.1:9").await;
    let mut client = app.events.clone();
    create_group(
        &mut client,
        "g",
        group_settings(Duration::from_secs(30), Duration::ZERO),
    )
    .await;
    let mut m = Member::join(connect(app.grpc_addr).await, start("g", "m", 4)).await;
    let t0 = Utc::now();
    deliver(
        &app,
        &order_event(
            "newer",
            "order.complete",
            "ord-1",
            t0 + chrono::Duration::seconds(1),
        ),
    )
    .await;
    let newer = m.next_delivery().await;
    assert!(!newer.late);
    m.ack(&newer.delivery_id).await;

    // Act: DR's retry of an older event of the same order arrives now.
    deliver(&app, &order_event("older", "order.fulfilled", "ord-1", t0)).await;

    // Assert
    let older = m.next_delivery().await;
    assert_eq!(older.event.unwrap().id, "older");
    assert!(
        older.late,
        "delivered after a later event of its order was acknowledged"
    );
    assert_eq!(older.ordering_key, "ord-1");
    app.stop().await;
}

#[tokio::test]
async fn a_shutting_down_gateway_ends_member_streams_unavailable_so_they_reconnect_elsewhere() {
    let app = spawn_app("http://127.0.0.1:9").await;
    let mut creating = start("g", "m", 4);
    creating.create = Some(pb::ConsumerGroupSettings::default());
    let mut m = Member::join(connect(app.grpc_addr).await, creating).await;

    app.shutdown_now();

    let ended = m.until_end().await.unwrap_err();
    assert_eq!(ended.code(), Code::Unavailable);
    assert_eq!(
        ended.get_error_details().error_info().unwrap().reason,
        "SHUTTING_DOWN"
    );
    app.stop().await;
}

#[tokio::test]
async fn an_aged_connection_ends_its_members_stream_and_what_it_held_goes_to_the_others_at_once() {
    // Arrange: connections age after 1.5 s (the in-flight grace is long, so only the
    // age can end a stream); the victim takes all 5 events and acknowledges none,
    // with a 300 s ack deadline, so only its leaving can free them.
    let mut s = settings("http://127.0.0.1:9");
    s.grpc.max_connection_age = Some(Duration::from_millis(1500));
    s.grpc.max_connection_age_grace = WAIT * 4;
    let app = spawn_app_with(s).await;
    let mut client = app.events.clone();
    create_group(
        &mut client,
        "g",
        group_settings(Duration::from_secs(300), Duration::ZERO),
    )
    .await;
    let ids: HashSet<String> = post_orders(&app, "aged", 5).await.into_iter().collect();
    let mut victim = Member::join(connect(app.grpc_addr).await, start("g", "victim", 5)).await;
    let mut held = HashSet::new();
    for _ in 0..5 {
        held.insert(victim.next_delivery().await.event.unwrap().id);
    }
    assert_eq!(held, ids);

    // Act: the victim's connection ages.
    let ended = victim.until_end().await.unwrap_err();

    // Assert: it ended as a Subscribe stream does, and its five reach a member
    // on fresh connections (which age too: it rejoins) long before the deadline.
    assert_eq!(ended.code(), Code::Unavailable, "{ended:?}");
    assert_eq!(
        ended.get_details_error_info().unwrap().reason,
        "CONNECTION_AGED"
    );
    assert!(ended.get_details_retry_info().is_some());
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut acked = HashSet::new();
    while acked.len() < ids.len() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the aged member's events did not come back: {acked:?}"
        );
        let mut other = Member::join(connect(app.grpc_addr).await, start("g", "other", 16)).await;
        while let Some(d) = other.next_delivery_or_end().await {
            assert!(d.attempt >= 2, "delivered to the victim first: {d:?}");
            if let Some(receipt) = other
                .try_send(pb::ConsumeRequest {
                    ack_delivery_ids: vec![d.delivery_id.clone()],
                    ..Default::default()
                })
                .await
            {
                if receipt.acknowledged_delivery_ids == std::slice::from_ref(&d.delivery_id) {
                    acked.insert(d.event.unwrap().id);
                }
            }
            if acked.len() == ids.len() {
                break;
            }
        }
    }
    assert_eq!(acked, ids);
    app.stop().await;
}
