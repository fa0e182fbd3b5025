//! Scale-out on NATS JetStream, against a real `nats-server` (Debian's 2.9 in CI):
//! several gateways — in-process `Application`s, or child processes where a real
//! SIGKILL matters — share events, cursors and idempotency records.
//!
//! Each test starts its own `nats-server -js` on a free port with its own store
//! directory, so tests run in parallel without sharing state. Every wait is a
//! condition with a deadline.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dr_gateway::bus::BusConfig;
use dr_gateway::config::Settings;
use dr_gateway::pb::v1 as pb;
use dr_gateway::pb::v1::event_stream_client::EventStreamClient;
use futures::StreamExt as _;
use serde_json::{json, Value};
use tonic::transport::Channel;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::event_support::{event, next_event, signature, WAIT};
use crate::helpers::{
    dr_fulfillment, dr_lists_no_fulfillments, settings, spawn_app_with, with_deadline, TestApp,
    API_KEY, WEBHOOK_SECRET,
};

// === nats-server ===

/// A `nats-server -js` child process on a free loopback port, with its own store
/// (the metrics tests use it too).
pub(crate) struct NatsServer {
    child: Option<Child>,
    port: u16,
    store: PathBuf,
}

impl NatsServer {
    /// Starts one and waits until JetStream answers, or fails the test.
    pub(crate) async fn start() -> Self {
        let store = unique_dir("nats");
        let mut server = Self {
            child: None,
            port: free_port(),
            store,
        };
        server.spawn().await;
        server
    }

    pub(crate) fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    async fn spawn(&mut self) {
        let child = Command::new("nats-server")
            .args(["-js", "-sd"])
            .arg(&self.store)
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run `nats-server` ({e}). The JetStream tests need a real NATS server: \
                     `apt-get install nats-server` (Debian/Ubuntu) or run `bash scripts/test.sh`, \
                     which installs it"
                )
            });
        self.child = Some(child);
        let url = self.url();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(client) = async_nats::connect(&url).await {
                // why: the port opens before JetStream is ready; ask JetStream itself.
                if let Ok(Ok(reply)) = tokio::time::timeout(
                    Duration::from_secs(1),
                    client.request("$JS.API.INFO", "".into()),
                )
                .await
                {
                    let info: Value = serde_json::from_slice(&reply.payload).unwrap_or_default();
                    if info.get("error").is_none() && info.get("type").is_some() {
                        return;
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "nats-server on port {} did not become ready within 10 s",
                self.port
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL; the store survives for [`restart`](Self::restart).
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Same port, same store.
    pub(crate) async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.store);
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn unique_dir(prefix: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "dr-gateway-{prefix}-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

// === gateways ===

/// Bus settings for tests: short request timeout so outages show quickly.
fn bus(nats: &NatsServer) -> BusConfig {
    let mut config = BusConfig::new(vec![nats.url()]);
    config.request_timeout = Duration::from_millis(800);
    config.startup_timeout = Duration::from_secs(10);
    config
}

fn bus_settings(nats: &NatsServer, dr: &str) -> Settings {
    let mut s = settings(dr);
    s.bus = Some(bus(nats));
    s
}

async fn gateway(nats: &NatsServer, dr: &str) -> TestApp {
    spawn_app_with(bus_settings(nats, dr)).await
}

/// A gateway as a child process (`dr-gateway serve`), so it can be SIGKILLed.
struct GatewayProcess {
    child: Child,
    grpc_addr: SocketAddr,
    http_addr: SocketAddr,
    log: PathBuf,
}

impl GatewayProcess {
    async fn start(nats: &NatsServer, dr: &str) -> Self {
        let grpc_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let http_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let log = unique_dir("gateway-log").join("gateway.log");
        let out = std::fs::File::create(&log).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_dr-gateway"))
            .arg("serve")
            .args(["--grpc-addr", &grpc_addr.to_string()])
            .args(["--http-addr", &http_addr.to_string()])
            .args(["--dr-base-url", dr])
            .args(["--bus-url", &nats.url()])
            .args(["--bus-timeout", "800ms"])
            .args(["--backfill-interval", "0s"])
            .env("DR_GATEWAY_DR_API_KEY", API_KEY)
            .env("DR_GATEWAY_WEBHOOK_SECRETS", WEBHOOK_SECRET)
            .env("RUST_LOG", "info,dr_gateway=debug")
            .stdout(out.try_clone().expect("log file"))
            .stderr(out)
            .spawn()
            .expect("spawn dr-gateway");
        let process = Self {
            child,
            grpc_addr,
            http_addr,
            log,
        };
        let health = health_client(grpc_addr).await;
        wait_for_health(health, ServingStatus::Serving, &process.log_text()).await;
        process
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn events(&self) -> EventStreamClient<Channel> {
        EventStreamClient::new(channel(self.grpc_addr).await)
    }

    /// SIGKILL: no drain, no goodbye.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        self.kill();
        if let Some(dir) = self.log.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

async fn channel(addr: SocketAddr) -> Channel {
    let deadline = Instant::now() + WAIT;
    loop {
        // why: a child process binds its port some milliseconds after spawn.
        if TcpStream::connect(addr).is_ok() {
            if let Ok(ch) = Channel::from_shared(format!("http://{addr}"))
                .unwrap()
                .connect()
                .await
            {
                return ch;
            }
        }
        assert!(Instant::now() < deadline, "gateway at {addr} not reachable");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn health_client(addr: SocketAddr) -> HealthClient<Channel> {
    HealthClient::new(channel(addr).await)
}

/// Waits (Health.Watch, deadline [`WAIT`]) until the overall status is `want`.
async fn wait_for_health(mut client: HealthClient<Channel>, want: ServingStatus, context: &str) {
    let result = tokio::time::timeout(WAIT, async {
        let mut stream = client
            .watch(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .expect("health watch")
            .into_inner();
        while let Some(Ok(msg)) = stream.next().await {
            if msg.status == want as i32 {
                return;
            }
        }
        panic!("health stream ended before {want:?}");
    })
    .await;
    assert!(
        result.is_ok(),
        "health not {want:?} within {WAIT:?}\n{context}"
    );
}

// === webhooks ===

/// POSTs a signed event to the gateway at `http_addr`; returns status and JSON body
/// (status 0 when the connection failed, e.g. the gateway is dead).
async fn post_event(http_addr: SocketAddr, event: &Value) -> (u16, Value) {
    let body = serde_json::to_vec(event).unwrap();
    let sig = signature(WEBHOOK_SECRET, &body);
    let sent = reqwest::Client::new()
        .post(format!("http://{http_addr}/webhooks/digitalriver"))
        .header("content-type", "application/json")
        .header("DigitalRiver-Signature", sig)
        .timeout(WAIT)
        .body(body)
        .send()
        .await;
    match sent {
        Ok(resp) => {
            let status = resp.status().as_u16();
            (status, resp.json().await.unwrap_or(Value::Null))
        }
        Err(_) => (0, Value::Null),
    }
}

async fn readyz(http_addr: SocketAddr) -> u16 {
    reqwest::Client::new()
        .get(format!("http://{http_addr}/readyz"))
        .timeout(WAIT)
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

fn ev(id: &str) -> Value {
    event(id, "order.charge.capture.complete", "ord-js", false)
}

async fn subscribe(
    client: &mut EventStreamClient<Channel>,
    start: pb::subscribe_request::Start,
) -> tonic::Streaming<pb::SubscribeResponse> {
    client
        .subscribe(pb::SubscribeRequest {
            start: Some(start),
            ..Default::default()
        })
        .await
        .expect("subscribe accepted")
        .into_inner()
}

fn from_now() -> pb::subscribe_request::Start {
    pb::subscribe_request::Start::Position(pb::StartPosition::Now as i32)
}

/// Reads events until `last_id`; returns (id, cursor) of each.
async fn read_until(
    stream: &mut tonic::Streaming<pb::SubscribeResponse>,
    last_id: &str,
) -> Vec<(String, String)> {
    let mut seen = Vec::new();
    loop {
        let e = next_event(stream).await;
        let done = e.id == last_id;
        seen.push((e.id, e.cursor));
        if done {
            return seen;
        }
    }
}

fn ids(seen: &[(String, String)]) -> Vec<&str> {
    seen.iter().map(|(id, _)| id.as_str()).collect()
}

// === tests ===

#[tokio::test]
async fn a_webhook_on_one_replica_reaches_subscribers_on_every_replica_exactly_once() {
    // Arrange: two replicas on one JetStream, a subscriber on each.
    let nats = NatsServer::start().await;
    let a = gateway(&nats, "http://127.0.0.1:9").await;
    let b = gateway(&nats, "http://127.0.0.1:9").await;
    let mut on_a = subscribe(&mut a.events.clone(), from_now()).await;
    let mut on_b = subscribe(&mut b.events.clone(), from_now()).await;

    // Act: one event to A; one event to A and B at once (a retry racing the first
    // delivery); a sentinel to B.
    let (status, reply) = post_event(a.http_addr, &ev("e1")).await;
    assert_eq!((status, &reply["duplicate"]), (200, &json!(false)));
    let e2 = ev("e2");
    let (to_a, to_b) = tokio::join!(post_event(a.http_addr, &e2), post_event(b.http_addr, &e2));
    let (status, _) = post_event(b.http_addr, &ev("end")).await;
    assert_eq!(status, 200);

    // Assert: both acknowledged, exactly one stored; each subscriber sees each event
    // once, and both replicas hand out the same cursors.
    assert_eq!((to_a.0, to_b.0), (200, 200));
    let fresh = [&to_a.1, &to_b.1]
        .iter()
        .filter(|r| r["duplicate"] == json!(false))
        .count();
    assert_eq!(fresh, 1, "e2 stored once: {to_a:?} {to_b:?}");
    let seen_a = read_until(&mut on_a, "end").await;
    let seen_b = read_until(&mut on_b, "end").await;
    assert_eq!(ids(&seen_a), ["e1", "e2", "end"]);
    assert_eq!(seen_a, seen_b, "same events, same cursors on both replicas");
    // why: open streams would hold the graceful drain for its whole grace period.
    drop((on_a, on_b));
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_redelivery_after_the_duplicate_window_is_still_stored_once() {
    // Arrange: JetStream's duplicate window of 1 s, so only the ids bucket can catch
    // the redelivery below.
    let nats = NatsServer::start().await;
    let mut short_window = bus_settings(&nats, "http://127.0.0.1:9");
    if let Some(b) = short_window.bus.as_mut() {
        b.duplicate_window = Duration::from_secs(1);
    }
    let a = spawn_app_with(short_window.clone()).await;
    let (status, first) = post_event(a.http_addr, &ev("late")).await;
    assert_eq!((status, &first["duplicate"]), (200, &json!(false)));
    let posted = Instant::now();
    // A replica started afterwards has nothing cached: it must ask the ids bucket.
    let b = spawn_app_with(short_window).await;

    // Act: DR re-sends once the window has passed. why: the condition here is
    // elapsed time itself (JetStream forgets the id after the window), not a guess.
    tokio::time::sleep_until((posted + Duration::from_millis(1200)).into()).await;
    let (status, again) = post_event(b.http_addr, &ev("late")).await;
    let (end_status, _) = post_event(b.http_addr, &ev("end")).await;

    // Assert
    assert_eq!((status, &again["duplicate"]), (200, &json!(true)));
    assert_eq!(end_status, 200);
    let mut on_b = subscribe(
        &mut b.events.clone(),
        pb::subscribe_request::Start::Position(pb::StartPosition::Oldest as i32),
    )
    .await;
    assert_eq!(ids(&read_until(&mut on_b, "end").await), ["late", "end"]);
    drop(on_b);
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_subscriber_resumes_on_another_replica_after_a_sigkill_without_gap_or_duplicate() {
    // Arrange: replica A is a real process (SIGKILL), replica B in-process.
    let nats = NatsServer::start().await;
    let mut a = GatewayProcess::start(&nats, "http://127.0.0.1:9").await;
    let b = gateway(&nats, "http://127.0.0.1:9").await;
    let mut on_a = subscribe(&mut a.events().await, from_now()).await;
    let all: Vec<String> = (0..30).map(|i| format!("k{i:02}")).collect();

    // Act: events flow through both replicas; A dies after the 10th. A delivery that
    // fails because A is gone is re-sent to B, as DR's retry through the Service would.
    let mut received = Vec::new();
    for (i, id) in all.iter().enumerate() {
        let target = if i % 2 == 0 && i < 10 {
            a.http_addr
        } else {
            b.http_addr
        };
        let (mut status, _) = post_event(target, &ev(id)).await;
        if status != 200 {
            status = post_event(b.http_addr, &ev(id)).await.0;
        }
        assert_eq!(status, 200, "{id} acknowledged");
        if i < 10 {
            received.push(next_event(&mut on_a).await);
        }
        if i == 10 {
            a.kill();
        }
    }
    // The stream from A breaks; resume on B after the last cursor A delivered.
    let last_cursor = received.last().map(|e| e.cursor.clone()).unwrap();
    let mut on_b = subscribe(
        &mut b.events.clone(),
        pb::subscribe_request::Start::AfterCursor(last_cursor),
    )
    .await;
    let rest = read_until(&mut on_b, all.last().unwrap()).await;

    // Assert: every event exactly once, in order, across the two streams.
    let mut got: Vec<String> = received.into_iter().map(|e| e.id).collect();
    got.extend(rest.into_iter().map(|(id, _)| id));
    assert_eq!(got, all);
    drop(on_b);
    b.stop().await;
}

#[tokio::test]
async fn a_nats_restart_makes_the_gateway_not_serving_then_it_recovers_without_losing_webhooks() {
    // Arrange: two replicas; the subscriber is on B, webhooks go to A, so delivery
    // also depends on B's tail of the stream surviving the restart.
    let mut nats = NatsServer::start().await;
    let a = gateway(&nats, "http://127.0.0.1:9").await;
    let b = gateway(&nats, "http://127.0.0.1:9").await;
    let mut stream = subscribe(&mut b.events.clone(), from_now()).await;
    assert_eq!(post_event(a.http_addr, &ev("before")).await.0, 200);
    assert_eq!(next_event(&mut stream).await.id, "before");

    // Act 1: NATS goes away.
    nats.kill();
    wait_for_health(
        health_client(a.grpc_addr).await,
        ServingStatus::NotServing,
        "",
    )
    .await;
    wait_for_health(
        health_client(b.grpc_addr).await,
        ServingStatus::NotServing,
        "",
    )
    .await;
    let (down_status, _) = post_event(a.http_addr, &ev("during")).await;
    let ready_down = readyz(a.http_addr).await;

    // Act 2: NATS comes back (same store); DR re-sends what got a 5xx.
    nats.restart().await;
    wait_for_health(health_client(a.grpc_addr).await, ServingStatus::Serving, "").await;
    wait_for_health(health_client(b.grpc_addr).await, ServingStatus::Serving, "").await;
    let (retry_status, retry) = post_event(a.http_addr, &ev("during")).await;
    let (after_status, _) = post_event(a.http_addr, &ev("after")).await;

    // Assert: nothing was acknowledged while down; the same stream on B (never
    // re-subscribed) gets everything once, in order.
    assert!(
        (500..600).contains(&down_status),
        "5xx while NATS is down, got {down_status}"
    );
    assert_eq!(ready_down, 503);
    assert_eq!((retry_status, &retry["duplicate"]), (200, &json!(false)));
    assert_eq!(after_status, 200);
    assert_eq!(readyz(a.http_addr).await, 200);
    assert_eq!(
        ids(&read_until(&mut stream, "after").await),
        ["during", "after"]
    );
    drop(stream);
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn an_expired_cursor_is_out_of_range_as_with_the_memory_log() {
    // Arrange: a stream that keeps only a few KiB.
    let nats = NatsServer::start().await;
    let mut small = bus_settings(&nats, "http://127.0.0.1:9");
    if let Some(b) = small.bus.as_mut() {
        b.max_bytes = Some(4096);
    }
    let app = spawn_app_with(small).await;
    let mut stream = subscribe(&mut app.events.clone(), from_now()).await;
    assert_eq!(post_event(app.http_addr, &ev("old")).await.0, 200);
    let old_cursor = next_event(&mut stream).await.cursor;

    // Act: enough events to push the first one out, then resume after it.
    for i in 0..20 {
        assert_eq!(
            post_event(app.http_addr, &ev(&format!("fill{i}"))).await.0,
            200
        );
    }
    let status = app
        .events
        .clone()
        .subscribe(pb::SubscribeRequest {
            start: Some(pb::subscribe_request::Start::AfterCursor(old_cursor)),
            ..Default::default()
        })
        .await
        .expect_err("an expired cursor is refused");

    // Assert
    assert_eq!(status.code(), Code::OutOfRange);
    drop(stream);
    app.stop().await;
}

#[tokio::test]
async fn restarting_with_new_retention_updates_the_stream_in_place_and_keeps_events_and_cursors() {
    // Arrange: events stored under the default retention.
    let nats = NatsServer::start().await;
    let first = gateway(&nats, "http://127.0.0.1:9").await;
    let mut stream = subscribe(&mut first.events.clone(), from_now()).await;
    for id in ["r1", "r2"] {
        assert_eq!(post_event(first.http_addr, &ev(id)).await.0, 200);
    }
    let before = read_until(&mut stream, "r2").await;
    drop(stream);
    first.stop().await;

    // Act: a replica with a shorter max age and a byte bound starts.
    let mut changed = bus_settings(&nats, "http://127.0.0.1:9");
    if let Some(b) = changed.bus.as_mut() {
        b.max_age = Duration::from_secs(7 * 24 * 3600);
        b.max_bytes = Some(1024 * 1024);
    }
    let second = spawn_app_with(changed).await;
    let mut again = subscribe(
        &mut second.events.clone(),
        pb::subscribe_request::Start::Position(pb::StartPosition::Oldest as i32),
    )
    .await;

    // Assert: same events, same cursors (same log id); the stream has the new limits.
    assert_eq!(read_until(&mut again, "r2").await, before);
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let mut info = js.get_stream("DR_GATEWAY_EVENTS").await.unwrap();
    let config = info.info().await.unwrap().config.clone();
    assert_eq!(config.max_age, Duration::from_secs(7 * 24 * 3600));
    assert_eq!(config.max_bytes, 1024 * 1024);
    drop(again);
    second.stop().await;
}

#[tokio::test]
async fn a_create_fulfillment_retried_on_the_other_replica_posts_to_dr_once() {
    // Arrange: DR answers the POST slowly, so the retry arrives while it runs.
    let dr = MockServer::start().await;
    let mut created = dr_fulfillment("ful_shared", "ord1", "item1", 1, 0);
    created["metadata"] = json!({"requestId": "req-shared"});
    Mock::given(method("POST"))
        .and(path("/fulfillments"))
        .respond_with(
            ResponseTemplate::new(201)
                .set_body_json(&created)
                .set_delay(Duration::from_millis(1000)),
        )
        .mount(&dr)
        .await;
    dr_lists_no_fulfillments(&dr).await;
    let nats = NatsServer::start().await;
    let a = gateway(&nats, &dr.uri()).await;
    let b = gateway(&nats, &dr.uri()).await;
    let request = pb::CreateFulfillmentRequest {
        order_id: "ord1".into(),
        items: vec![pb::CreateFulfillmentItem {
            item_id: "item1".into(),
            quantity: 1,
            ..Default::default()
        }],
        request_id: "req-shared".into(),
        ..Default::default()
    };

    // Act: the call on A is mid-POST when the same request is retried on B; later a
    // replay on B again.
    let first = tokio::spawn({
        let mut client = a.fulfillments.clone();
        let request = request.clone();
        async move {
            client
                .create_fulfillment(with_deadline(request, Duration::from_secs(8)))
                .await
        }
    });
    let deadline = Instant::now() + WAIT;
    while posts(&dr).await == 0 {
        assert!(Instant::now() < deadline, "A never posted");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let retried = b
        .fulfillments
        .clone()
        .create_fulfillment(with_deadline(request.clone(), Duration::from_secs(8)))
        .await;
    let first = first.await.unwrap();
    let replay = b
        .fulfillments
        .clone()
        .create_fulfillment(with_deadline(request, Duration::from_secs(8)))
        .await;

    // Assert: everyone gets the one fulfillment; DR saw one POST.
    let id_of = |r: Result<tonic::Response<pb::CreateFulfillmentResponse>, tonic::Status>| {
        r.expect("fulfillment returned")
            .into_inner()
            .fulfillment
            .map(|f| f.id)
    };
    assert_eq!(id_of(first).as_deref(), Some("ful_shared"));
    assert_eq!(id_of(retried).as_deref(), Some("ful_shared"));
    assert_eq!(id_of(replay).as_deref(), Some("ful_shared"));
    assert_eq!(
        posts(&dr).await,
        1,
        "one POST /fulfillments across both replicas"
    );
    a.stop().await;
    b.stop().await;
}

async fn posts(dr: &MockServer) -> usize {
    dr.received_requests()
        .await
        .unwrap_or_default()
        .iter()
        .filter(|r| r.method.as_str() == "POST")
        .count()
}

#[tokio::test]
async fn shared_idempotency_records_hand_over_a_dead_owners_key_with_its_attempt() {
    // Arrange: two replicas' stores on one bucket; a short lease.
    use dr_gateway::bus::{Bus, KvIdempotencyStore};
    use dr_gateway::digital_river::models::Fulfillment;
    use dr_gateway::domain::idempotency::{Claim, IdempotencyStore};
    let nats = NatsServer::start().await;
    let open = || async {
        let bus = Bus::connect(bus(&nats)).await.expect("bus");
        KvIdempotencyStore::open(
            &bus,
            Duration::from_secs(3600),
            Duration::from_millis(500),
            Duration::from_secs(60),
        )
        .await
        .expect("bucket")
    };
    let (a, b) = (open().await, open().await);
    let ful = |id: &str| Fulfillment {
        id: id.into(),
        ..Default::default()
    };
    let hold_of = |claim: Result<Claim, _>| match claim {
        Ok(Claim::Owner { hold_until }) => hold_until,
        other => panic!("expected Owner, got {other:?}"),
    };
    async fn take_over(
        store: &KvIdempotencyStore,
        key: &str,
    ) -> Result<Claim, dr_gateway::domain::idempotency::IdempotencyError> {
        let Ok(Claim::Wait(mut changed)) = store.claim(key, 1).await else {
            panic!("must wait while the owner's lease runs");
        };
        tokio::time::timeout(WAIT, changed.changed())
            .await
            .expect("woken at the latest when the lease ends")
            .expect("waiter alive");
        store.claim(key, 1).await
    }
    let close_to = |got: Option<Instant>, want: Instant| {
        let got = got.expect("a hold");
        let gap = if got > want { got - want } else { want - got };
        assert!(gap < Duration::from_millis(100), "hold off by {gap:?}");
    };

    // Act + Assert: A owns "k" and goes silent before posting; B takes over after
    // the lease with nothing to hold.
    assert_eq!(hold_of(a.claim("k", 1).await), None);
    assert_eq!(hold_of(take_over(&b, "k").await), None);
    // A's late result loses the compare-and-set; B's wins and everyone sees it.
    a.complete("k", 1, ful("ful_a")).await;
    b.complete("k", 1, ful("ful_b")).await;
    match a.claim("k", 1).await {
        Ok(Claim::Done(f)) => assert_eq!(f.id, "ful_b"),
        other => panic!("expected Done, got {other:?}"),
    }
    assert!(matches!(a.claim("k", 2).await, Ok(Claim::Mismatch)));

    // A records a POST that may land for 30 s and dies mid-POST: B's take-over
    // must not post before then.
    assert_eq!(hold_of(a.claim("p", 1).await), None);
    let lands_by = Instant::now() + Duration::from_secs(30);
    a.record_attempt("p", 1, lands_by)
        .await
        .expect("attempt recorded");
    close_to(hold_of(take_over(&b, "p").await), lands_by);
    // B only looked DR up: the attempt's time stays for the next owner, anywhere.
    b.mark_unknown("p", 1, None).await;
    close_to(hold_of(a.claim("p", 1).await), lands_by);

    // A released key is free again, with nothing to hold.
    assert!(matches!(a.claim("r", 1).await, Ok(Claim::Owner { .. })));
    a.release("r").await;
    assert_eq!(hold_of(b.claim("r", 1).await), None);
}

#[tokio::test]
async fn a_late_commit_retried_on_the_other_replica_is_found_not_posted_again() {
    // Arrange: DR commits the first POST 3 s after it arrives; replica A stops
    // waiting after 1 s.
    use dr_sandbox::FaultSpec;
    use tonic_types::StatusExt;
    let dr = crate::helpers::spawn_sandbox().await;
    let order = dr
        .control
        .create_order(json!({"items": [{"quantity": 3, "amount": "30.00"}]}))
        .await
        .unwrap();
    dr.control
        .add_fault(
            &FaultSpec::delayed_commit("/fulfillments", Duration::from_secs(3))
                .method("POST")
                .count(1),
        )
        .await
        .unwrap();
    let nats = NatsServer::start().await;
    let mut slow = bus_settings(&nats, &dr.base_url());
    slow.upstream_timeout = Duration::from_secs(1);
    let a = spawn_app_with(slow).await;
    let b = gateway(&nats, &dr.base_url()).await;
    let request = pb::CreateFulfillmentRequest {
        order_id: order["id"].as_str().unwrap().into(),
        items: vec![pb::CreateFulfillmentItem {
            item_id: order["items"][0]["id"].as_str().unwrap().into(),
            quantity: 1,
            ..Default::default()
        }],
        request_id: "js-late".into(),
        ..Default::default()
    };
    let pending = |status: &tonic::Status| {
        status.code() == Code::Unavailable
            && status.get_details_error_info().map(|i| i.reason)
                == Some("FULFILLMENT_OUTCOME_PENDING".into())
    };

    // Act: the outcome on A is unknown; the client retries on B until answered.
    let first = a
        .fulfillments
        .clone()
        .create_fulfillment(request.clone())
        .await
        .unwrap_err();
    assert!(pending(&first), "{first:?}");
    let deadline = Instant::now() + Duration::from_secs(15);
    let found = loop {
        match b
            .fulfillments
            .clone()
            .create_fulfillment(request.clone())
            .await
        {
            Ok(r) => break r.into_inner().fulfillment.unwrap(),
            Err(status) => assert!(pending(&status), "{status:?}"),
        }
        assert!(Instant::now() < deadline, "B never found the late commit");
        // the client's back-off between retries
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    // Assert: B found A's late commit; DR saw one POST and holds one fulfillment.
    let posts = dr
        .control
        .requests(Some("POST"), Some("/fulfillments"))
        .await
        .unwrap();
    assert_eq!(posts.len(), 1);
    let order_id = order["id"].as_str().unwrap();
    let held: Value = reqwest::Client::new()
        .get(format!("{}/fulfillments?orderId={order_id}", dr.base_url()))
        .bearer_auth(dr_sandbox::Sandbox::CONTROL_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(held["data"].as_array().unwrap().len(), 1);
    assert_eq!(held["data"][0]["id"], found.id.as_str());
    a.stop().await;
    b.stop().await;
    dr.sandbox.shutdown().await;
}
