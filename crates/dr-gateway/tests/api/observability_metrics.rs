//! Prometheus metrics, as a real Prometheus sees them: Debian's `prometheus` scrapes a
//! gateway process (its own recorder, not this test binary's) on loopback every
//! 250 ms during a scripted flow against the sandbox — a subscriber, a capture that
//! waits for DR's outcome, its retry, a cancel, a NOT_FOUND, a forged webhook and
//! DR's signed ones — and the test asks Prometheus' HTTP API for each counter by name
//! and label. The exposition passes `promtool check metrics`, and the chart's
//! dashboard and alerts use only metrics the gateway exports.

use std::collections::BTreeSet;

use dr_gateway::pb::v1 as pb;
use dr_gateway::pb::v1::charge_service_client::ChargeServiceClient;
use dr_gateway::pb::v1::event_stream_client::EventStreamClient;
use dr_gateway::telemetry::metrics::names;
use dr_sandbox::WebhookRegistration;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::helpers::{
    fulfillments_held, settings, spawn_app_with, spawn_sandbox, KeyMode, API_KEY, WEBHOOK_SECRET,
};
use crate::observability_support::{
    eventually, promtool_check_metrics, unique_dir, GatewayProcess, Prometheus,
};

/// The bearer token of the flow's caller (must never appear in metrics or logs).
const TOKEN: &str = "tok_TOPSECRET_shipping_5e1";

const CHARGES: &str = "digitalriver.gateway.v1.ChargeService";

/// Every route template DR calls are labelled with.
const ROUTES: [&str; 8] = [
    "/fulfillments",
    "/fulfillments/{id}",
    "/charges/{id}",
    "/sources/{id}",
    "/orders/{id}",
    "/orders",
    "/events/{id}",
    "/events",
];

fn handled(method: &str, code: &str) -> String {
    format!(
        "grpc_server_handled_total{{grpc_type=\"unary\",grpc_service=\"{CHARGES}\",grpc_method=\"{method}\",grpc_code=\"{code}\",caller=\"shipping\"}}"
    )
}

fn item(item_id: &str) -> Vec<pb::ChargeItem> {
    vec![pb::ChargeItem {
        item_id: item_id.to_owned(),
        quantity: 1,
        ..Default::default()
    }]
}

#[tokio::test]
async fn a_real_prometheus_scrapes_a_flow_and_sees_each_metric_by_name_and_label() {
    let dr = spawn_sandbox().await;
    let auth = unique_dir("metrics-auth");
    let tokens = auth.join("tokens.txt");
    let policy = auth.join("policy.toml");
    std::fs::write(
        &tokens,
        format!("shipping sha256:{:x}\n", Sha256::digest(TOKEN.as_bytes())),
    )
    .unwrap();
    std::fs::write(
        &policy,
        "[[rules]]\nname = 'shipping'\nidentities = ['token:shipping']\nallow = ['read', 'capture', 'cancel', 'subscribe']\n",
    )
    .unwrap();
    let gateway = GatewayProcess::start(
        &dr.base_url(),
        &[
            "--metrics-addr",
            "127.0.0.1:0",
            "--auth-tokens-file",
            tokens.to_str().unwrap(),
            "--auth-policy-file",
            policy.to_str().unwrap(),
        ],
        &[],
    )
    .await;
    let metrics_addr = gateway
        .metrics_addr
        .expect("--metrics-addr gives /metrics a listener of its own");
    dr.control
        .add_webhook(&WebhookRegistration::new(gateway.webhook_url()).secret(WEBHOOK_SECRET))
        .await
        .unwrap();
    let prometheus = Prometheus::start(metrics_addr).await;

    // === the flow ===
    let order = dr
        .control
        .create_order(json!({"items": [{"quantity": 2, "amount": "30.00"}]}))
        .await
        .unwrap();
    let order_id = order["id"].as_str().unwrap().to_owned();
    let item_id = order["items"][0]["id"].as_str().unwrap().to_owned();
    let bearer: tonic::metadata::MetadataValue<_> = format!("Bearer {TOKEN}").parse().unwrap();
    let authorize = move |mut request: tonic::Request<()>| {
        request
            .metadata_mut()
            .insert("authorization", bearer.clone());
        Ok(request)
    };
    let channel = gateway.channel().await;
    let mut charges = ChargeServiceClient::with_interceptor(channel.clone(), authorize.clone());
    let mut events = EventStreamClient::with_interceptor(channel, authorize);

    let mut subscriber = events
        .subscribe(pb::SubscribeRequest::default())
        .await
        .expect("subscribe")
        .into_inner();
    let capture = pb::CaptureItemsRequest {
        order_id: order_id.clone(),
        items: item(&item_id),
        request_id: "ship-1".into(),
        wait: true,
        ..Default::default()
    };
    let first = charges.capture_items(capture.clone()).await.unwrap();
    let retry = charges.capture_items(capture).await.unwrap();
    assert_eq!(
        first.get_ref().fulfillment.as_ref().map(|f| &f.id),
        retry.get_ref().fulfillment.as_ref().map(|f| &f.id),
        "the retry is answered with the first fulfillment"
    );
    charges
        .cancel_items(pb::CancelItemsRequest {
            order_id: order_id.clone(),
            items: item(&item_id),
            request_id: "cancel-1".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let missing = charges
        .get_charge(pb::GetChargeRequest {
            charge_id: "ch_missing_404".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
    let now = chrono::Utc::now().timestamp();
    let forged = reqwest::Client::new()
        .post(gateway.webhook_url())
        .header("DigitalRiver-Signature", format!("t={now}, v1=AAAAAAAA"))
        .body(r#"{"id":"evt_forged","type":"order.accepted"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 401);
    let mut read = 0u64;
    loop {
        let message =
            tokio::time::timeout(std::time::Duration::from_secs(20), subscriber.message())
                .await
                .expect("the subscriber gets DR's events")
                .expect("stream healthy")
                .expect("stream open");
        read += 1;
        if let Some(pb::subscribe_response::Kind::Event(e)) = message.kind {
            if e.r#type == "order.charge.cancel.complete" {
                break;
            }
        }
    }
    // Money moved twice (one capture, one cancel), however often it was asked for.
    assert_eq!(fulfillments_held(&dr, KeyMode::Test).await.len(), 2);

    // === what Prometheus saw ===
    prometheus
        .wait_for_value(&handled("CaptureItems", "OK"), 2.0)
        .await;
    prometheus
        .wait_for_value(&handled("CancelItems", "OK"), 1.0)
        .await;
    prometheus
        .wait_for_value(&handled("GetCharge", "NotFound"), 1.0)
        .await;
    prometheus
        .wait_for_value(
            &format!("grpc_server_started_total{{grpc_type=\"unary\",grpc_service=\"{CHARGES}\",grpc_method=\"CaptureItems\"}}"),
            2.0,
        )
        .await;
    prometheus
        .wait_for_value(
            "grpc_server_handling_seconds_count{grpc_method=\"CaptureItems\"}",
            2.0,
        )
        .await;
    prometheus
        .wait_for_value(
            "grpc_server_handling_seconds_bucket{grpc_method=\"GetCharge\",le=\"+Inf\"}",
            1.0,
        )
        .await;
    prometheus
        .wait_for_value(
            "grpc_server_started_total{grpc_type=\"server_stream\",grpc_method=\"Subscribe\"}",
            1.0,
        )
        .await;
    prometheus
        .wait_for(
            "grpc_server_msg_sent_total{grpc_type=\"server_stream\",grpc_service=\"digitalriver.gateway.v1.EventStream\",grpc_method=\"Subscribe\"}",
            |sent| sent >= read as f64,
        )
        .await;
    prometheus
        .wait_for_value("dr_gateway_subscribers", 1.0)
        .await;
    prometheus
        .wait_for_value(
            "dr_gateway_dr_requests_total{method=\"POST\",route=\"/fulfillments\",status=\"201\"}",
            2.0,
        )
        .await;
    prometheus
        .wait_for_value(
            "dr_gateway_dr_requests_total{method=\"GET\",route=\"/charges/{id}\",status=\"404\"}",
            1.0,
        )
        .await;
    prometheus
        .wait_for_value(
            "dr_gateway_dr_request_duration_seconds_count{method=\"POST\",route=\"/fulfillments\"}",
            2.0,
        )
        .await;
    prometheus
        .wait_for_value("dr_gateway_idempotency_replays_total", 1.0)
        .await;
    prometheus
        .wait_for_value(
            "dr_gateway_idempotency_reconciliations_total{when=\"before_post\",result=\"not_found\"}",
            2.0,
        )
        .await;
    prometheus
        .wait_for_value(
            "dr_gateway_fulfillment_outcomes_total{outcome=\"created\"}",
            2.0,
        )
        .await;
    prometheus
        .wait_for_value(
            "dr_gateway_webhooks_rejected_total{reason=\"invalid_signature\"}",
            1.0,
        )
        .await;
    prometheus
        .wait_for_value(
            "dr_gateway_webhook_ack_seconds_count{outcome=\"rejected\"}",
            1.0,
        )
        .await;
    // Every event DR delivered was stored once: as the sandbox counts, and as
    // Prometheus does (accepted webhooks, events stored, events the log holds).
    let delivered = eventually("DR's deliveries and the gateway's counters agree", || {
        let (control, prometheus) = (&dr.control, &prometheus);
        async move {
            let distinct: BTreeSet<String> = control
                .deliveries(None, None)
                .await
                .ok()?
                .into_iter()
                .filter(|d| d.success)
                .map(|d| d.event_id)
                .collect();
            let seen = |query: &'static str| async move {
                prometheus.query(query).await.first().map(|(_, v)| *v)
            };
            let want = Some(distinct.len() as f64);
            let agree = distinct.len() >= 3
                && seen("dr_gateway_webhooks_accepted_total").await == want
                && seen("dr_gateway_events_stored_total{source=\"webhook\"}").await == want
                && seen("dr_gateway_event_log_events").await == want
                && seen("dr_gateway_webhooks_received_total").await
                    == Some(distinct.len() as f64 + 1.0);
            agree.then_some(distinct.len())
        }
    })
    .await;
    assert!(delivered >= 3, "capture and cancel events were delivered");
    prometheus
        .wait_for_value(
            &format!(
                "dr_gateway_build_info{{version=\"{}\"}}",
                env!("CARGO_PKG_VERSION")
            ),
            1.0,
        )
        .await;

    // A subscriber that goes away ends its RPC as CANCELLED and leaves the gauge.
    drop(subscriber);
    prometheus
        .wait_for_value(
            "grpc_server_handled_total{grpc_method=\"Subscribe\",grpc_code=\"Canceled\",caller=\"shipping\"}",
            1.0,
        )
        .await;
    prometheus
        .wait_for_value("dr_gateway_subscribers", 0.0)
        .await;

    // === bounded labels: templates and rule names, never ids, tokens or identities ===
    let all = prometheus.query("{job=\"dr-gateway\"}").await;
    assert!(all.len() > 40, "the gateway's series: {}", all.len());
    let routes: BTreeSet<&str> = all
        .iter()
        .filter_map(|(labels, _)| labels.get("route").map(String::as_str))
        .collect();
    assert!(
        routes.iter().all(|r| ROUTES.contains(r)),
        "routes are templates: {routes:?}"
    );
    for (labels, _) in &all {
        for value in labels.values() {
            for id in [
                order_id.as_str(),
                item_id.as_str(),
                "ch_missing_404",
                "ship-1",
                "cancel-1",
                TOKEN,
                "token:shipping",
            ] {
                assert!(!value.contains(id), "{id} in the label value {value}");
            }
        }
    }

    // === the exposition itself ===
    let exposition = reqwest::get(format!("http://{metrics_addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let (ok, lint) = promtool_check_metrics(&exposition);
    assert!(ok, "promtool check metrics:\n{lint}");
    for secret in [API_KEY, WEBHOOK_SECRET, TOKEN] {
        assert!(!exposition.contains(secret), "a secret in the exposition");
        assert!(!gateway.log_text().contains(secret), "a secret in the log");
    }
    for name in exposition
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap_or_default())
    {
        assert!(
            names::ALL.contains(&series_family(name)),
            "{name} is exported but not listed in telemetry::metrics::names::ALL"
        );
    }
    let _ = std::fs::remove_dir_all(auth);
}

/// `x_bucket`, `x_sum`, `x_count` → `x` when `x` is a histogram the gateway exports.
fn series_family(name: &str) -> &str {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(family) = name.strip_suffix(suffix) {
            if names::ALL.contains(&family) {
                return family;
            }
        }
    }
    name
}

#[test]
fn the_charts_dashboard_and_alerts_use_only_metrics_the_gateway_exports() {
    let chart = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../helm/dr-gateway");
    let mut used = BTreeSet::new();
    for file in [
        "files/dashboards/dr-gateway.json",
        "files/alerts/dr-gateway.rules.yaml",
    ] {
        let text = std::fs::read_to_string(chart.join(file)).expect(file);
        for word in text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if word.starts_with("grpc_server_") || word.starts_with("dr_gateway_") {
                used.insert((file, word.to_owned()));
            }
        }
    }
    assert!(
        used.len() > 10,
        "the dashboard and the alerts query metrics: {used:?}"
    );
    for (file, name) in &used {
        assert!(
            names::ALL.contains(&series_family(name)),
            "{file} uses {name}, which the gateway does not export"
        );
    }
}

#[tokio::test]
async fn metrics_are_on_the_http_listener_by_default_and_absent_when_turned_off() {
    let dr = spawn_sandbox().await;
    let on = spawn_app_with(settings(&dr.base_url())).await;
    let scraped = reqwest::get(format!("http://{}/metrics", on.http_addr))
        .await
        .unwrap();
    assert_eq!(scraped.status(), 200);
    assert_eq!(
        scraped.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    assert!(scraped
        .text()
        .await
        .unwrap()
        .contains("dr_gateway_build_info"));

    let mut quiet = settings(&dr.base_url());
    quiet.metrics.enabled = false;
    let off = spawn_app_with(quiet).await;
    let scraped = reqwest::get(format!("http://{}/metrics", off.http_addr))
        .await
        .unwrap();
    assert_eq!(scraped.status(), 404);
    on.stop().await;
    off.stop().await;
}

/// The value of the unlabelled series `name` in an exposition.
fn sample(exposition: &str, name: &str) -> Option<f64> {
    exposition
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::test]
async fn the_nats_connection_and_the_shared_event_log_are_gauges_that_follow_the_bus() {
    let mut nats = crate::jetstream::NatsServer::start().await;
    let dr = spawn_sandbox().await;
    let url = nats.url();
    let gateway = GatewayProcess::start(
        &dr.base_url(),
        &["--bus-url", &url, "--bus-timeout", "800ms"],
        &[],
    )
    .await;
    let metrics = format!("http://{}/metrics", gateway.http_addr);
    let scrape = || {
        let metrics = metrics.clone();
        async move { reqwest::get(metrics).await.ok()?.text().await.ok() }
    };
    let value = |name: &'static str, want: f64| {
        move || async move { (sample(&scrape().await?, name) == Some(want)).then_some(()) }
    };
    eventually("connected", value("dr_gateway_nats_connected", 1.0)).await;
    let body = serde_json::to_vec(&crate::event_support::event(
        "evt_on_nats",
        "order.accepted",
        "o-nats",
        false,
    ))
    .unwrap();
    let stored = reqwest::Client::new()
        .post(gateway.webhook_url())
        .header(
            "DigitalRiver-Signature",
            crate::event_support::signature(WEBHOOK_SECRET, &body),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(stored.status(), 200);
    eventually(
        "the stream's own count",
        value("dr_gateway_event_log_events", 1.0),
    )
    .await;
    let bytes = sample(&scrape().await.unwrap(), "dr_gateway_event_log_bytes");
    assert!(
        bytes.is_some_and(|b| b > 100.0),
        "the stream's bytes: {bytes:?}"
    );
    nats.kill();
    eventually("disconnected", value("dr_gateway_nats_connected", 0.0)).await;
    eventually(
        "the loss counted",
        value("dr_gateway_nats_disconnects_total", 1.0),
    )
    .await;
    nats.restart().await;
    eventually("connected again", value("dr_gateway_nats_connected", 1.0)).await;
}

#[tokio::test]
async fn a_gateway_started_while_nats_is_down_shows_it_disconnected_then_connected_once_nats_comes()
{
    let mut nats = crate::jetstream::NatsServer::not_started();
    let dr = spawn_sandbox().await;
    let url = nats.url();
    let gateway = GatewayProcess::start(
        &dr.base_url(),
        &["--bus-url", &url, "--bus-startup-timeout", "200ms"],
        &[],
    )
    .await;
    let metrics = format!("http://{}/metrics", gateway.http_addr);
    let scrape = || {
        let metrics = metrics.clone();
        async move { reqwest::get(metrics).await.ok()?.text().await.ok() }
    };
    let exposition = scrape().await.expect("/metrics answers without NATS");
    assert_eq!(
        sample(&exposition, "dr_gateway_nats_connected"),
        Some(0.0),
        "NATS down at start is a 0, not a missing series"
    );
    nats.restart().await;
    eventually("connected once NATS comes", || async {
        (sample(&scrape().await?, "dr_gateway_nats_connected") == Some(1.0)).then_some(())
    })
    .await;
}

/// The value of the series `name` whose labels include every one of `labels`.
fn labelled(exposition: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    exposition.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?.strip_prefix('{')?;
        let (set, value) = rest.split_once("} ")?;
        labels
            .iter()
            .all(|(k, v)| set.split(',').any(|pair| pair == format!("{k}=\"{v}\"")))
            .then(|| value.trim().parse().ok())?
    })
}

#[tokio::test]
async fn a_consumer_group_counts_its_deliveries_redeliveries_and_acks_and_consume_counts_messages_both_ways(
) {
    use crate::group_support::{connect, create_group, group_settings, order_event, start};
    let dr = spawn_sandbox().await;
    let gateway = GatewayProcess::start(&dr.base_url(), &[], &[]).await;
    let metrics = format!("http://{}/metrics", gateway.http_addr);
    let mut client = EventStreamClient::new(gateway.channel().await);
    // why: the shortest deadline the gateway allows, so the unacknowledged event
    // comes back within the test.
    create_group(
        &mut client,
        "billing",
        group_settings(std::time::Duration::from_secs(1), std::time::Duration::ZERO),
    )
    .await;
    let mut member = crate::group_support::Member::join(
        connect(gateway.grpc_addr).await,
        start("billing", "m1", 8),
    )
    .await;
    let poster = crate::group_support::Poster::new(gateway.http_addr);
    let now = chrono::Utc::now();
    poster
        .post(&order_event("evt_g1", "order.accepted", "o-g1", now))
        .await;
    poster
        .post(&order_event("evt_g2", "order.accepted", "o-g2", now))
        .await;

    // Two first deliveries; the first is acknowledged, the second left to expire.
    let first = member.next_delivery().await;
    let second = member.next_delivery().await;
    assert_eq!((first.attempt, second.attempt), (1, 1));
    member.ack(&first.delivery_id).await;
    let again = member.next_delivery().await;
    assert_eq!(again.attempt, 2, "the unacknowledged event comes back");
    member.ack(&again.delivery_id).await;

    let group = &[("group", "billing")];
    let consume = &[("grpc_method", "Consume"), ("grpc_type", "bidi_stream")];
    let wait = |name, labels, ok| wait_for_series(&metrics, name, labels, ok);
    wait("dr_gateway_consumer_group_deliveries_total", group, |v| {
        v == 3.0
    })
    .await;
    wait("dr_gateway_consumer_group_redeliveries_total", group, |v| {
        v == 1.0
    })
    .await;
    wait("dr_gateway_consumer_group_acks_total", group, |v| v == 2.0).await;
    wait("dr_gateway_consumer_group_members", group, |v| v == 1.0).await;
    // The start and two acknowledgements in; started, 3 deliveries and 2 receipts
    // out (heartbeats may add more).
    wait("grpc_server_msg_received_total", consume, |v| v == 3.0).await;
    wait("grpc_server_msg_sent_total", consume, |v| v >= 6.0).await;
    member.leave().await.expect("left cleanly");
    wait("dr_gateway_consumer_group_members", group, |v| v == 0.0).await;
}

/// Waits until `/metrics` at `url` has the series `name` with `labels` and a value
/// `ok` accepts.
async fn wait_for_series(
    url: &str,
    name: &'static str,
    labels: &'static [(&'static str, &'static str)],
    ok: fn(f64) -> bool,
) {
    eventually(name, || {
        let url = url.to_owned();
        async move {
            let exposition = reqwest::get(url).await.ok()?.text().await.ok()?;
            labelled(&exposition, name, labels).filter(|v| ok(*v))
        }
    })
    .await;
}
