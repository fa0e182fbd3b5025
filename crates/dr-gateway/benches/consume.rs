//! Consumer group throughput: events per second through a group of 3 members
//! (`EventStream.Consume`, every event leased, delivered and acknowledged) vs a
//! broadcast `Subscribe` to 3 subscribers (every event to each), measured in the
//! same run over the same backlog. Run with `cargo bench --bench consume`.
//!
//! Why: the consumer groups issue asks what sharing events with acknowledgements
//! and per-order ordering costs against the broadcast it replaces. Timed tests are
//! banned, so this binary prints the figures, the broadcast as the baseline.
//!
//! Each run starts a gateway in this process, appends a backlog of `EVENTS` DR
//! events (spread over `ORDERS` orders, ~1 KB each) straight to its event log, then
//! times the consumers draining it over loopback gRPC:
//! 1. **broadcast**: 3 `Subscribe` streams from the oldest event, until each has
//!    every event (3 × `EVENTS` deliveries);
//! 2. **group, ack each**: a group starting at the oldest event (reorder window 0),
//!    3 members holding up to 16 each, acknowledging every delivery on its own;
//! 3. **group, batched acks**: the same, members acknowledging whatever arrived
//!    together in one request.
//!
//! With `nats-server` on `PATH`, the same three runs repeat in JetStream mode
//! (one replica, a fresh `nats-server -js`): there every lease and acknowledgement
//! is a compare-and-set in a KV bucket. Every run fails the binary (non-zero exit)
//! unless each event is delivered (broadcast: to every subscriber) or acknowledged
//! (group: exactly once) within the deadline. Figures are medians of `ROUNDS`.

use std::{
    collections::HashSet,
    net::{SocketAddr, TcpListener},
    process::ExitCode,
    time::{Duration, Instant},
};

use bytes::Bytes;
use chrono::Utc;
use dr_gateway::{
    app::Application,
    bus::BusConfig,
    config::Settings,
    events::{Envelope, EventLog},
    pb::v1::{self as pb, event_stream_client::EventStreamClient},
};
use futures::FutureExt as _;
use serde_json::json;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

/// Events in the backlog (memory mode).
const EVENTS: usize = 6000;
/// Events in the backlog (JetStream mode: every one costs KV round trips).
const EVENTS_JETSTREAM: usize = 2000;
/// Orders the events are spread over (per-order ordering limits parallelism).
const ORDERS: usize = 200;
/// Consumers per run.
const CONSUMERS: usize = 3;
/// Deliveries a member holds at once.
const MAX_UNACKED: u32 = 16;
/// Runs per figure (the median is reported).
const ROUNDS: usize = 3;
/// Longest one run may take.
const RUN_DEADLINE: Duration = Duration::from_secs(120);

fn main() -> ExitCode {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(run_all()) {
        Ok(rows) => {
            print_report(&rows);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("consume: FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}

/// One figure: events drained per second and deliveries per second.
struct Row {
    mode: &'static str,
    run: &'static str,
    events: usize,
    elapsed: Duration,
    deliveries: usize,
}

impl Row {
    fn events_per_s(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64()
    }

    fn deliveries_per_s(&self) -> f64 {
        self.deliveries as f64 / self.elapsed.as_secs_f64()
    }
}

async fn run_all() -> Result<Vec<Row>, String> {
    let mut rows = Vec::new();
    eprintln!("consume: memory mode, {EVENTS} events over {ORDERS} orders");
    rows.extend(run_mode("memory", None, EVENTS).await?);
    match NatsServer::start() {
        Some(nats) => {
            eprintln!("consume: JetStream mode, {EVENTS_JETSTREAM} events over {ORDERS} orders");
            rows.extend(run_mode("JetStream", Some(nats.url()), EVENTS_JETSTREAM).await?);
        }
        None => eprintln!("consume: nats-server not on PATH; JetStream runs skipped"),
    }
    Ok(rows)
}

async fn run_mode(
    mode: &'static str,
    bus: Option<String>,
    events: usize,
) -> Result<Vec<Row>, String> {
    let mut settings = Settings::for_upstream("http://127.0.0.1:9", "sk_bench_unused");
    if let Some(url) = bus {
        let mut config = BusConfig::new(vec![url]);
        config.cache_max_events = events * 2;
        settings.bus = Some(config);
    }
    let app = Application::build(settings)
        .await
        .map_err(|e| format!("gateway starts: {e}"))?;
    let addr = app.grpc_addr();
    let log = app.event_log();
    let shutdown = app.shutdown_token();
    let server = tokio::spawn(app.run_until_stopped());
    preload(log.as_ref(), events).await?;

    let mut rows = Vec::new();
    type Run = fn(
        SocketAddr,
        usize,
        usize,
    ) -> futures::future::BoxFuture<'static, Result<(Duration, usize), String>>;
    let runs: [(&str, Run); 3] = [
        ("broadcast Subscribe, 3 subscribers", |a, n, _| {
            broadcast(a, n).boxed()
        }),
        ("group of 3, ack each", |a, n, r| {
            group(a, n, r, false).boxed()
        }),
        ("group of 3, batched acks", |a, n, r| {
            group(a, n, r, true).boxed()
        }),
    ];
    for (run, f) in runs {
        let mut samples = Vec::new();
        for round in 0..ROUNDS {
            let (elapsed, deliveries) = tokio::time::timeout(RUN_DEADLINE, f(addr, events, round))
                .await
                .map_err(|_| format!("{mode} {run}: not done within {RUN_DEADLINE:?}"))??;
            eprintln!("consume: {mode} {run} round {round}: {elapsed:?}");
            samples.push((elapsed, deliveries));
        }
        samples.sort();
        let (elapsed, deliveries) = samples[samples.len() / 2];
        rows.push(Row {
            mode,
            run,
            events,
            elapsed,
            deliveries,
        });
    }
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(20), server).await;
    Ok(rows)
}

/// A ~1 KB `order.charge.capture.complete` of order `ord-<order>`.
fn event(i: usize) -> Envelope {
    let order = i % ORDERS;
    let body = json!({
        "id": format!("evt-{i}"),
        "type": "order.charge.capture.complete",
        "data": {"object": {
            "id": format!("charge-{order}"), "orderId": format!("ord-{order}"),
            "createdTime": "2022-03-02T16:50:23Z", "currency": "USD", "amount": 37.81,
            "state": "capturable", "captured": true,
            "captures": [{"id": format!("cap-{i}"), "createdTime": "2022-03-02T16:50:37Z",
                "amount": 25.21, "state": "complete", "fulfillmentId": format!("ful_{i}")}],
            "refunded": false, "sourceId": "52ca4456-5547-4f9c-8016-1a067fd0b125",
            "paymentSessionId": "7c121712-2ae8-4617-97a2-5d41fd79a5b8",
            "type": "customer_initiated", "liveMode": false}},
        "liveMode": false,
        "createdTime": (Utc::now() + chrono::Duration::microseconds(i as i64)).to_rfc3339(),
        "webhookIds": ["bbac1929-580c-4629-b648-4c096b1a104a"],
        "digitalriverVersion": "2021-12-13"
    });
    Envelope::parse(Bytes::from(serde_json::to_vec(&body).expect("JSON"))).expect("an envelope")
}

async fn preload(log: &dyn EventLog, n: usize) -> Result<(), String> {
    for i in 0..n {
        let appended = log
            .append(event(i))
            .await
            .map_err(|e| format!("append: {e}"))?;
        if appended.duplicate {
            return Err(format!("event {i} was a duplicate"));
        }
    }
    Ok(())
}

async fn connect(addr: SocketAddr) -> Result<Channel, String> {
    Channel::from_shared(format!("http://{addr}"))
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| format!("connect: {e}"))
}

/// 3 subscribers from the oldest event; (time until each had `n` events, deliveries).
async fn broadcast(addr: SocketAddr, n: usize) -> Result<(Duration, usize), String> {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CONSUMERS {
        let channel = connect(addr).await?;
        tasks.push(tokio::spawn(async move {
            let mut client = EventStreamClient::new(channel);
            let mut stream = client
                .subscribe(pb::SubscribeRequest {
                    start: Some(pb::subscribe_request::Start::Position(
                        pb::StartPosition::Oldest as i32,
                    )),
                    ..Default::default()
                })
                .await
                .map_err(|e| format!("subscribe: {e}"))?
                .into_inner();
            let mut got = 0;
            while got < n {
                match stream.message().await {
                    Ok(Some(pb::SubscribeResponse {
                        kind: Some(pb::subscribe_response::Kind::Event(_)),
                        ..
                    })) => got += 1,
                    Ok(Some(_)) => {}
                    Ok(None) => return Err("subscription ended".to_owned()),
                    Err(e) => return Err(format!("subscription failed: {e}")),
                }
            }
            Ok::<usize, String>(got)
        }));
    }
    let mut deliveries = 0;
    for t in tasks {
        deliveries += t.await.map_err(|e| e.to_string())??;
    }
    Ok((started.elapsed(), deliveries))
}

/// 3 members of a fresh group from the oldest event; (time until every event was
/// acknowledged once, deliveries).
async fn group(
    addr: SocketAddr,
    n: usize,
    round: usize,
    batched: bool,
) -> Result<(Duration, usize), String> {
    let group_id = format!("bench-{}-{round}", if batched { "batched" } else { "each" });
    let mut admin = EventStreamClient::new(connect(addr).await?);
    admin
        .create_consumer_group(pb::CreateConsumerGroupRequest {
            group_id: group_id.clone(),
            settings: Some(pb::ConsumerGroupSettings {
                ack_deadline: Some(prost_types::Duration {
                    seconds: 60,
                    nanos: 0,
                }),
                reorder_window: Some(prost_types::Duration::default()),
                start: Some(pb::consumer_group_settings::Start::Position(
                    pb::StartPosition::Oldest as i32,
                )),
                ..Default::default()
            }),
        })
        .await
        .map_err(|e| format!("create group: {e}"))?;
    let started = Instant::now();
    let (acked_tx, mut acked_rx) = mpsc::unbounded_channel::<Vec<String>>();
    let mut members = Vec::new();
    for m in 0..CONSUMERS {
        let channel = connect(addr).await?;
        let group_id = group_id.clone();
        let acked_tx = acked_tx.clone();
        members.push(tokio::spawn(member(
            channel, group_id, m, batched, acked_tx,
        )));
    }
    drop(acked_tx);
    let mut acked: HashSet<String> = HashSet::new();
    let mut deliveries = 0;
    while acked.len() < n {
        let Some(ids) = acked_rx.recv().await else {
            return Err(format!(
                "members stopped after {} acknowledgements",
                acked.len()
            ));
        };
        deliveries += ids.len();
        for id in ids {
            if !acked.insert(id.clone()) {
                return Err(format!("{id} acknowledged twice"));
            }
        }
    }
    let elapsed = started.elapsed();
    for m in members {
        m.abort();
    }
    Ok((elapsed, deliveries))
}

/// A member: acknowledges every delivery (one per request, or all that arrived
/// together); reports the event ids the gateway confirmed acknowledged.
async fn member(
    channel: Channel,
    group_id: String,
    m: usize,
    batched: bool,
    acked: mpsc::UnboundedSender<Vec<String>>,
) -> Result<(), String> {
    let (tx, rx) = mpsc::channel(64);
    tx.send(pb::ConsumeRequest {
        start: Some(pb::ConsumeStart {
            group_id,
            member_name: format!("bench-{m}"),
            max_unacknowledged: MAX_UNACKED,
            ..Default::default()
        }),
        ..Default::default()
    })
    .await
    .map_err(|e| e.to_string())?;
    let mut stream = EventStreamClient::new(channel)
        .consume(ReceiverStream::new(rx))
        .await
        .map_err(|e| format!("consume: {e}"))?
        .into_inner();
    // delivery id → event id, until the receipt confirms it.
    let mut pending = std::collections::HashMap::new();
    loop {
        let mut batch = Vec::new();
        let first = stream.message().await.map_err(|e| e.to_string())?;
        let mut next = Some(first);
        while let Some(message) = next.take() {
            let Some(message) = message else {
                return Ok(());
            };
            match message.kind {
                Some(pb::consume_response::Kind::Delivery(d)) => {
                    let id = d.event.map(|e| e.id).unwrap_or_default();
                    pending.insert(d.delivery_id.clone(), id);
                    batch.push(d.delivery_id);
                }
                Some(pb::consume_response::Kind::Receipt(r)) => {
                    if !r.rejected.is_empty() {
                        return Err(format!("acknowledgements refused: {:?}", r.rejected));
                    }
                    let ids = r
                        .acknowledged_delivery_ids
                        .iter()
                        .filter_map(|d| pending.remove(d))
                        .collect();
                    let _ = acked.send(ids);
                }
                _ => {}
            }
            if batched {
                // Take whatever else has arrived already, without waiting.
                if let Some(more) = stream.message().now_or_never() {
                    next = Some(more.map_err(|e| e.to_string())?);
                }
            }
        }
        if batched {
            if !batch.is_empty() {
                tx.send(pb::ConsumeRequest {
                    ack_delivery_ids: batch,
                    ..Default::default()
                })
                .await
                .map_err(|e| e.to_string())?;
            }
        } else {
            for id in batch {
                tx.send(pb::ConsumeRequest {
                    ack_delivery_ids: vec![id],
                    ..Default::default()
                })
                .await
                .map_err(|e| e.to_string())?;
            }
        }
    }
}

fn print_report(rows: &[Row]) {
    println!();
    println!("| mode | run | events | time | events/s | deliveries/s | vs broadcast (events/s) |");
    println!("|---|---|---|---|---|---|---|");
    for row in rows {
        let baseline = rows
            .iter()
            .find(|r| r.mode == row.mode && r.run.starts_with("broadcast"))
            .map_or(1.0, Row::events_per_s);
        println!(
            "| {} | {} | {} | {:.0} ms | {:.0} | {:.0} | {:.2}× |",
            row.mode,
            row.run,
            row.events,
            row.elapsed.as_secs_f64() * 1000.0,
            row.events_per_s(),
            row.deliveries_per_s(),
            row.events_per_s() / baseline,
        );
    }
}

// === nats-server, when installed ===

/// A `nats-server -js` child on a free port with its own store, killed on drop.
struct NatsServer {
    child: std::process::Child,
    port: u16,
    store: std::path::PathBuf,
}

impl NatsServer {
    fn start() -> Option<Self> {
        let port = TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        let store =
            std::env::temp_dir().join(format!("dr-gateway-bench-nats-{}", std::process::id()));
        let child = std::process::Command::new("nats-server")
            .args(["-js", "-sd"])
            .arg(&store)
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .ok()?;
        // The gateway's start-up retries until JetStream answers (--bus-startup-timeout).
        Some(Self { child, port, store })
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.store);
    }
}
