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
        let mut server = Self::not_started();
        server.spawn_on_a_free_port().await;
        server
    }

    /// Spawns it, on another picked port while the one it was given turns out
    /// taken.
    ///
    /// why: nats-server cannot report a port of its own choosing to the test, so
    /// the port is picked by binding `:0` and releasing it; another test can take
    /// it first, and nats-server then exits. Only the first start may move: a
    /// restart must come back where the gateway under test connects.
    async fn spawn_on_a_free_port(&mut self) {
        const ATTEMPTS: usize = 5;
        for _ in 0..ATTEMPTS {
            if self.try_spawn().await {
                return;
            }
            self.port = free_port();
        }
        panic!("nats-server exited at start on {ATTEMPTS} picked ports in a row");
    }

    /// A port and store for a server started later ([`spawn`](Self::spawn)).
    pub(crate) fn not_started() -> Self {
        Self {
            child: None,
            port: free_port(),
            store: unique_dir("nats"),
        }
    }

    pub(crate) fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    async fn spawn(&mut self) {
        assert!(
            self.try_spawn().await,
            "nats-server exited at start on port {}",
            self.port
        );
    }

    /// Starts nats-server and waits until JetStream answers (true), or until it
    /// exits (false: its port was taken); fails the test past 10 s.
    async fn try_spawn(&mut self) -> bool {
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
            if let Some(child) = self.child.as_mut() {
                if child.try_wait().ok().flatten().is_some() {
                    self.child = None;
                    return false;
                }
            }
            // why: whatever took the port may hold the connection without answering.
            let connect = tokio::time::timeout(Duration::from_secs(1), async_nats::connect(&url));
            if let Ok(Ok(client)) = connect.await {
                // why: the port opens before JetStream is ready; ask JetStream itself.
                if let Ok(Ok(reply)) = tokio::time::timeout(
                    Duration::from_secs(1),
                    client.request("$JS.API.INFO", "".into()),
                )
                .await
                {
                    let info: Value = serde_json::from_slice(&reply.payload).unwrap_or_default();
                    if info.get("error").is_none() && info.get("type").is_some() {
                        return true;
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
    /// Starts one and waits until its EventStream is SERVING (the bus is up).
    async fn start(nats: &NatsServer, dr: &str) -> Self {
        Self::start_with(nats, dr, &[], EVENT_STREAM).await
    }

    /// Starts one with `extra` flags and waits until health of `ready` is SERVING.
    async fn start_with(nats: &NatsServer, dr: &str, extra: &[&str], ready: &str) -> Self {
        let log = unique_dir("gateway-log").join("gateway.log");
        let out = std::fs::File::create(&log).expect("log file");
        // why: the child binds ports of its own choosing and logs them; a port picked
        // here and released could be taken by another test's connection before the
        // child binds it.
        let child = Command::new(env!("CARGO_BIN_EXE_dr-gateway"))
            .arg("serve")
            .args(["--grpc-addr", "127.0.0.1:0"])
            .args(["--http-addr", "127.0.0.1:0"])
            .args(["--log-format", "json"])
            .args(["--dr-base-url", dr])
            .args(["--bus-url", &nats.url()])
            .args(["--bus-timeout", "800ms"])
            .args(["--backfill-interval", "0s"])
            .args(extra)
            .env("DR_GATEWAY_DR_API_KEY", API_KEY)
            .env("DR_GATEWAY_WEBHOOK_SECRETS", WEBHOOK_SECRET)
            .env("RUST_LOG", "info,dr_gateway=debug")
            .stdout(out.try_clone().expect("log file"))
            .stderr(out)
            .spawn()
            .expect("spawn dr-gateway");
        let unknown = SocketAddr::from(([127, 0, 0, 1], 0));
        let mut process = Self {
            child,
            grpc_addr: unknown,
            http_addr: unknown,
            log,
        };
        (process.grpc_addr, process.http_addr) = process.bound_addresses().await;
        let health = HealthClient::new(process.reachable().await);
        wait_for_service_health(health, ready, ServingStatus::Serving, &process.log_text()).await;
        process
    }

    /// The gRPC and HTTP addresses the child bound, from its "gateway serving" log
    /// line; fails with the child's log when it exits first or does not log them
    /// within [`WAIT`].
    async fn bound_addresses(&mut self) -> (SocketAddr, SocketAddr) {
        let deadline = Instant::now() + WAIT;
        loop {
            let text = self.log_text();
            let serving = text
                .lines()
                .filter_map(|line| serde_json::from_str::<Value>(line).ok())
                .find(|line| line["fields"]["message"] == "gateway serving");
            if let Some(line) = serving {
                let addr = |name: &str| {
                    line["fields"][name]
                        .as_str()
                        .and_then(|a| a.parse::<SocketAddr>().ok())
                        .unwrap_or_else(|| panic!("no {name} in {line}"))
                };
                return (addr("grpc_addr"), addr("http_addr"));
            }
            assert!(
                self.is_running(),
                "gateway exited before serving; its log:\n{text}"
            );
            assert!(
                Instant::now() < deadline,
                "gateway not serving within {WAIT:?}; its log:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A channel to the child's gRPC port once it answers; fails with the child's
    /// log when it exits first or does not answer within [`WAIT`].
    async fn reachable(&mut self) -> Channel {
        let deadline = Instant::now() + WAIT;
        loop {
            // why: a child process binds its port some milliseconds after spawn.
            if TcpStream::connect(self.grpc_addr).is_ok() {
                if let Ok(ch) = Channel::from_shared(format!("http://{}", self.grpc_addr))
                    .unwrap()
                    .connect()
                    .await
                {
                    return ch;
                }
            }
            assert!(
                self.is_running(),
                "gateway exited before answering; its log:\n{}",
                self.log_text()
            );
            assert!(
                Instant::now() < deadline,
                "gateway at {} not reachable; its log:\n{}",
                self.grpc_addr,
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// True while the process runs.
    fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
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

/// The EventStream's health name: SERVING only while the bus is reachable.
const EVENT_STREAM: &str = "digitalriver.gateway.v1.EventStream";

/// Waits (Health.Watch, deadline [`WAIT`]) until `service`'s status is `want`.
async fn wait_for_service_health(
    mut client: HealthClient<Channel>,
    service: &str,
    want: ServingStatus,
    context: &str,
) {
    let result = tokio::time::timeout(WAIT, async {
        let mut stream = client
            .watch(HealthCheckRequest {
                service: service.to_owned(),
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
        "health of {service:?} not {want:?} within {WAIT:?}\n{context}"
    );
}

/// The overall status (`""`, what the readiness probe asks) right now.
async fn overall_health(client: &mut HealthClient<Channel>) -> i32 {
    client
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health check")
        .into_inner()
        .status
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

async fn readyz(http_addr: SocketAddr, service: &str) -> u16 {
    reqwest::Client::new()
        .get(format!("http://{http_addr}/readyz?service={service}"))
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
async fn a_nats_restart_takes_the_event_stream_out_then_it_recovers_without_losing_webhooks() {
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
    for app in [&a, &b] {
        wait_for_service_health(
            health_client(app.grpc_addr).await,
            EVENT_STREAM,
            ServingStatus::NotServing,
            "",
        )
        .await;
    }
    let (down_status, _) = post_event(a.http_addr, &ev("during")).await;
    let stream_ready_down = readyz(a.http_addr, EVENT_STREAM).await;
    let ready_down = readyz(a.http_addr, "").await;
    let overall_down = overall_health(&mut health_client(a.grpc_addr).await).await;

    // Act 2: NATS comes back (same store); DR re-sends what got a 5xx.
    nats.restart().await;
    for app in [&a, &b] {
        wait_for_service_health(
            health_client(app.grpc_addr).await,
            EVENT_STREAM,
            ServingStatus::Serving,
            "",
        )
        .await;
    }
    let (retry_status, retry) = post_event(a.http_addr, &ev("during")).await;
    let (after_status, _) = post_event(a.http_addr, &ev("after")).await;

    // Assert: nothing was acknowledged while down, but the replica stayed ready
    // (its reads need only DR); the same stream on B (never re-subscribed) gets
    // everything once, in order.
    assert!(
        (500..600).contains(&down_status),
        "5xx while NATS is down, got {down_status}"
    );
    assert_eq!(stream_ready_down, 503);
    assert_eq!(ready_down, 200, "a NATS outage leaves the replica ready");
    assert_eq!(overall_down, ServingStatus::Serving as i32);
    assert_eq!((retry_status, &retry["duplicate"]), (200, &json!(false)));
    assert_eq!(after_status, 200);
    assert_eq!(readyz(a.http_addr, EVENT_STREAM).await, 200);
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

// === starting without NATS ===

/// Health of every name, in the order: "", FulfillmentService, ChargeService, EventStream.
async fn health_of_each(client: &mut HealthClient<Channel>) -> Vec<i32> {
    let mut out = Vec::new();
    for service in [
        "",
        "digitalriver.gateway.v1.FulfillmentService",
        "digitalriver.gateway.v1.ChargeService",
        EVENT_STREAM,
    ] {
        let reply = client
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .expect("health check");
        out.push(reply.into_inner().status);
    }
    out
}

async fn http_status(url: String) -> u16 {
    reqwest::Client::new()
        .get(url)
        .timeout(WAIT)
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

/// `reason` of the status's ErrorInfo, and whether it carries RetryInfo.
fn reason_and_retry(status: &tonic::Status) -> (String, bool) {
    use tonic_types::StatusExt;
    (
        status
            .get_details_error_info()
            .map(|i| i.reason)
            .unwrap_or_default(),
        status.get_details_retry_info().is_some(),
    )
}

#[tokio::test]
async fn a_gateway_started_without_nats_serves_reads_and_turns_the_event_stream_on_when_nats_starts(
) {
    // Arrange: DR (the sandbox) is up, NATS is not.
    let sandbox = crate::helpers::spawn_sandbox().await;
    let order = sandbox
        .control
        .create_order(json!({"items": [{"quantity": 2, "amount": "20.00"}]}))
        .await
        .unwrap();
    let order_id = order["id"].as_str().unwrap().to_owned();
    let item_id = order["items"][0]["id"].as_str().unwrap().to_owned();
    let mut nats = NatsServer::not_started();
    let mut gw = GatewayProcess::start_with(
        &nats,
        &sandbox.base_url(),
        &["--bus-startup-timeout", "200ms"],
        "",
    )
    .await;
    let channel = channel(gw.grpc_addr).await;
    let mut health = HealthClient::new(channel.clone());
    let mut fulfillments =
        dr_gateway::pb::v1::fulfillment_service_client::FulfillmentServiceClient::new(
            channel.clone(),
        );
    let mut events = EventStreamClient::new(channel.clone());
    let create = |request_id: &str| pb::CreateFulfillmentRequest {
        order_id: order_id.clone(),
        items: vec![pb::CreateFulfillmentItem {
            item_id: item_id.clone(),
            quantity: 1,
            ..Default::default()
        }],
        request_id: request_id.into(),
        ..Default::default()
    };

    // Act + assert while NATS is down: reads work, what needs the bus says
    // UNAVAILABLE at once with when to retry, nothing reaches DR.
    let serving = ServingStatus::Serving as i32;
    let not_serving = ServingStatus::NotServing as i32;
    assert_eq!(
        health_of_each(&mut health).await,
        [serving, serving, serving, not_serving]
    );
    let read = fulfillments
        .get_order(pb::GetOrderRequest {
            key: Some(pb::get_order_request::Key::OrderId(order_id.clone())),
        })
        .await
        .expect("a read needs only DR");
    assert_eq!(read.into_inner().order.unwrap().id, order_id);
    let refused = fulfillments
        .create_fulfillment(with_deadline(create("ship-1"), Duration::from_secs(5)))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable);
    assert_eq!(
        reason_and_retry(&refused),
        ("GATEWAY_DEPENDENCY_UNAVAILABLE".into(), true)
    );
    let refused_subscribe = events
        .subscribe(with_deadline(
            pb::SubscribeRequest::default(),
            Duration::from_secs(5),
        ))
        .await
        .unwrap_err();
    assert_eq!(refused_subscribe.code(), Code::Unavailable);
    assert_eq!(
        reason_and_retry(&refused_subscribe),
        ("EVENT_LOG_UNAVAILABLE".into(), true)
    );
    // Consumer groups keep their state on the bus: every group RPC, and a member
    // that would create its group, is refused at once (well inside its deadline).
    let group_settings =
        crate::group_support::group_settings(Duration::from_secs(30), Duration::ZERO);
    let mut creating = crate::group_support::start("while-down", "m", 4);
    creating.create = Some(group_settings.clone());
    let asked = Instant::now();
    let refused_member = crate::group_support::Member::try_join(channel.clone(), creating.clone())
        .await
        .err()
        .expect("no member joins without the group store");
    let refused_create = events
        .create_consumer_group(with_deadline(
            pb::CreateConsumerGroupRequest {
                group_id: "while-down".into(),
                settings: Some(group_settings.clone()),
            },
            Duration::from_secs(5),
        ))
        .await
        .unwrap_err();
    let refused_list = events
        .list_consumer_groups(with_deadline(
            pb::ListConsumerGroupsRequest::default(),
            Duration::from_secs(5),
        ))
        .await
        .unwrap_err();
    assert!(
        asked.elapsed() < Duration::from_secs(3),
        "group RPCs answered at once, not after a timeout: {:?}",
        asked.elapsed()
    );
    for refused in [&refused_member, &refused_create, &refused_list] {
        assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
        assert_eq!(
            reason_and_retry(refused),
            ("CONSUMER_GROUP_STORE_UNAVAILABLE".into(), true),
            "{refused:?}"
        );
    }
    assert_eq!(post_event(gw.http_addr, &ev("while-down")).await.0, 503);
    let base = format!("http://{}", gw.http_addr);
    assert_eq!(http_status(format!("{base}/livez")).await, 200);
    assert_eq!(http_status(format!("{base}/readyz")).await, 200);
    assert_eq!(
        http_status(format!("{base}/readyz?service={EVENT_STREAM}")).await,
        503
    );
    assert!(
        sandbox
            .control
            .requests(Some("POST"), Some("/fulfillments"))
            .await
            .unwrap()
            .is_empty(),
        "nothing was posted to DR without the idempotency store"
    );
    assert!(
        gw.is_running(),
        "no exit for want of NATS:\n{}",
        gw.log_text()
    );

    // Act: NATS starts.
    nats.spawn().await;
    wait_for_service_health(
        health.clone(),
        EVENT_STREAM,
        ServingStatus::Serving,
        &gw.log_text(),
    )
    .await;

    // Assert: everything works, with no restart; the retried write posts once.
    assert_eq!(
        health_of_each(&mut health).await,
        [serving, serving, serving, serving]
    );
    let mut stream = subscribe(&mut events, from_now()).await;
    let mut member = crate::group_support::Member::join(channel.clone(), creating).await;
    assert!(member.started.created, "the member created its group");
    assert_eq!(post_event(gw.http_addr, &ev("after-start")).await.0, 200);
    assert_eq!(next_event(&mut stream).await.id, "after-start");
    let delivery = member.next_delivery().await;
    assert_eq!(delivery.event.as_ref().unwrap().id, "after-start");
    assert_eq!(
        member
            .ack(&delivery.delivery_id)
            .await
            .acknowledged_delivery_ids,
        std::slice::from_ref(&delivery.delivery_id)
    );
    drop(member);
    for _ in 0..2 {
        fulfillments
            .create_fulfillment(with_deadline(create("ship-1"), Duration::from_secs(10)))
            .await
            .expect("the retried write succeeds once NATS is there");
    }
    let held = sandbox
        .control
        .requests(Some("POST"), Some("/fulfillments"))
        .await
        .unwrap();
    assert_eq!(
        held.len(),
        1,
        "one POST for two attempts with one request_id"
    );
    let dr_fulfillments = reqwest::Client::new()
        .get(format!(
            "{}/fulfillments?orderId={order_id}",
            sandbox.base_url()
        ))
        .bearer_auth(API_KEY)
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(
        dr_fulfillments["data"].as_array().unwrap().len(),
        1,
        "DR holds exactly one fulfillment"
    );
    assert!(gw.is_running());
    gw.kill();
}

// === DR's rate limit, shared ===

#[tokio::test]
async fn three_replicas_at_full_speed_stay_under_drs_per_key_limit() {
    use dr_gateway::digital_river::replica_share;
    use futures::stream;

    // Arrange: the sandbox enforces DR's per-key limit (25/s for the test key the
    // gateways use); three replicas share one NATS and the default `auto` budget.
    let nats = NatsServer::start().await;
    let sb = dr_sandbox::Sandbox::start(dr_sandbox::SandboxConfig {
        rate_limit: Some(dr_sandbox::RateLimit::documented()),
        ..dr_sandbox::SandboxConfig::default()
    })
    .await
    .unwrap();
    let mut apps = Vec::new();
    for _ in 0..3 {
        apps.push(gateway(&nats, &sb.base_url()).await);
    }
    let budget = 25 * 9 / 10;
    let share = replica_share(budget, 3);
    tokio::time::timeout(WAIT, async {
        while !apps
            .iter()
            .all(|app| app.upstream_limiter.as_ref().map(|l| l.rate()) == Some(share))
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("every replica counts three and paces at its share");

    // Act: each replica gets more callers than its share allows, 30 calls each.
    let drive = |app: &TestApp| {
        let client = app.fulfillments.clone();
        stream::iter(0..30)
            .map(move |i| {
                let mut client = client.clone();
                async move {
                    client
                        .get_fulfillment(with_deadline(
                            pb::GetFulfillmentRequest {
                                fulfillment_id: format!("ful-none-{i}"),
                            },
                            Duration::from_secs(30),
                        ))
                        .await
                }
            })
            .buffer_unordered(8)
            .collect::<Vec<_>>()
    };
    let results = futures::future::join_all(apps.iter().map(drive)).await;

    // Assert: every call reached DR (a 404: no such fulfillment) and DR never
    // answered 429.
    let state = sb.control_client().rate_limit().await.unwrap();
    assert_eq!(state.limited, 0, "DR answered 429 {} times", state.limited);
    assert_eq!(state.admitted, 90);
    for result in results.into_iter().flatten() {
        assert_eq!(result.unwrap_err().code(), Code::NotFound);
    }
    for app in apps {
        app.stop().await;
    }
    sb.shutdown().await;
}

// === consumer groups ===

/// What the members of the replica-failure test saw.
#[derive(Default)]
struct GroupLedger {
    /// Event id → acknowledgements the gateway confirmed.
    acked: std::collections::HashMap<String, u32>,
    /// Events whose acknowledgement was sent but whose stream broke before the
    /// receipt came: the dead replica may or may not have committed it (if it did,
    /// the group rightly never delivers the event again).
    unconfirmed: std::collections::HashSet<String>,
    /// Order id → createdTime of its events, in the order acknowledgements were sent.
    acked_order: std::collections::HashMap<String, Vec<chrono::DateTime<chrono::Utc>>>,
    /// Events a member held unacknowledged when its replica died.
    held: Vec<String>,
    /// Event id → highest attempt delivered.
    attempts: std::collections::HashMap<String, u32>,
}

/// A member that consumes from the first replica that answers in `replicas`,
/// moving on to the next when its stream breaks, until the test says `stop`.
/// With `hold`, it first takes that many deliveries without acknowledging them
/// and keeps them until its stream breaks.
async fn resilient_member(
    name: String,
    replicas: Vec<SocketAddr>,
    hold: usize,
    ledger: std::sync::Arc<std::sync::Mutex<GroupLedger>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    use crate::group_support::{start, try_connect, Member};
    let done = || stop.load(std::sync::atomic::Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut target = 0;
    let mut holding = hold > 0;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "{name}: the group never finished"
        );
        let addr = replicas[target % replicas.len()];
        let Some(channel) = try_connect(addr).await else {
            target += 1;
            continue;
        };
        let limit = if holding { hold as u32 } else { 8 };
        let Ok(mut member) = Member::try_join(channel, start("billing", &name, limit)).await else {
            target += 1;
            continue;
        };
        if holding {
            let mut held = Vec::new();
            while held.len() < hold {
                let d = member
                    .next_delivery_or_end()
                    .await
                    .expect("deliveries to hold");
                held.push(d.event.unwrap().id);
            }
            ledger.lock().unwrap().held = held;
            // Keep them (no acknowledgement) until the replica dies under us.
            member
                .until_end()
                .await
                .expect_err("the stream breaks when the replica dies");
            holding = false;
            target += 1;
            continue;
        }
        while !done() {
            let d = tokio::select! {
                d = member.next_delivery_or_end() => d,
                // why: the last event may be acknowledged by another member.
                () = tokio::time::sleep(Duration::from_millis(100)) => continue,
            };
            let Some(d) = d else { break };
            let event = d.event.expect("event");
            let order = event.id.split('-').next().unwrap().to_owned();
            let created = event
                .create_time
                .map(|t| chrono::DateTime::from_timestamp(t.seconds, t.nanos as u32).unwrap())
                .unwrap();
            {
                let mut l = ledger.lock().unwrap();
                let seen = l.attempts.entry(event.id.clone()).or_default();
                *seen = (*seen).max(d.attempt);
                l.acked_order.entry(order).or_default().push(created);
            }
            let Some(receipt) = member
                .try_send(pb::ConsumeRequest {
                    ack_delivery_ids: vec![d.delivery_id.clone()],
                    ..Default::default()
                })
                .await
            else {
                ledger.lock().unwrap().unconfirmed.insert(event.id);
                break;
            };
            if receipt.acknowledged_delivery_ids == [d.delivery_id] {
                *ledger.lock().unwrap().acked.entry(event.id).or_default() += 1;
            }
        }
        // The stream broke (the replica died): reconnect, to the next replica.
        target += 1;
    }
}

#[tokio::test]
async fn a_consumer_group_survives_a_sigkilled_replica_with_nothing_lost_and_nothing_acknowledged_twice(
) {
    // Arrange: replica A is a real process, B in-process; the group lives on the bus.
    const ORDERS: usize = 30;
    const PER_ORDER: usize = 10;
    const HELD: usize = 6;
    let nats = NatsServer::start().await;
    let mut a = GatewayProcess::start(&nats, "http://127.0.0.1:9").await;
    let b = gateway(&nats, "http://127.0.0.1:9").await;
    let mut client = a.events().await;
    crate::group_support::create_group(
        &mut client,
        "billing",
        crate::group_support::group_settings(Duration::from_secs(3), Duration::from_millis(300)),
    )
    .await;
    let ledger = std::sync::Arc::new(std::sync::Mutex::new(GroupLedger::default()));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let total = ORDERS * PER_ORDER;
    // Two members start on A (one of them holds its first deliveries), one on B;
    // each moves to the other replica when its stream breaks.
    let members: Vec<_> = [
        ("a-holder", vec![a.grpc_addr, b.grpc_addr], HELD),
        ("a-worker", vec![a.grpc_addr, b.grpc_addr], 0),
        ("b-worker", vec![b.grpc_addr, a.grpc_addr], 0),
    ]
    .into_iter()
    .map(|(name, replicas, hold)| {
        tokio::spawn(resilient_member(
            name.into(),
            replicas,
            hold,
            ledger.clone(),
            stop.clone(),
        ))
    })
    .collect();

    // Act: webhooks to both replicas; once consumption is under way and the holder
    // holds its deliveries on A, A is SIGKILLed.
    let t0 = chrono::Utc::now();
    let to_a = crate::group_support::Poster::new(a.http_addr);
    let to_b = crate::group_support::Poster::new(b.http_addr);
    for n in 0..PER_ORDER {
        for order in 0..ORDERS {
            let created = t0 + chrono::Duration::milliseconds((n * ORDERS + order) as i64);
            let ev = crate::group_support::order_event(
                &format!("o{order}-e{n:02}"),
                "order.updated",
                &format!("ord-{order}"),
                created,
            );
            if (n + order) % 2 == 0 {
                to_a.post(&ev).await
            } else {
                to_b.post(&ev).await
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (held, acked) = {
            let l = ledger.lock().unwrap();
            (l.held.len(), l.acked.len())
        };
        if held == HELD && acked >= total / 10 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "consumption did not get going (held {held}, acked {acked})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    a.kill();

    // Wait until every event is acknowledged (or its acknowledgement went down with
    // A) and the group's position on the surviving replica reaches the end: the dead
    // replica's members, and what they held, drop out of the listing once their
    // last refresh is older than the member TTL; an acknowledgement A never
    // committed comes back as a delivery the members still take.
    let all_ids: Vec<String> = (0..ORDERS)
        .flat_map(|o| (0..PER_ORDER).map(move |n| format!("o{o}-e{n:02}")))
        .collect();
    let mut on_b = b.events.clone();
    let deadline =
        Instant::now() + Duration::from_secs(90) + dr_gateway::defaults::CONSUMER_GROUP_MEMBER_TTL;
    loop {
        let missing: Vec<String> = {
            let l = ledger.lock().unwrap();
            all_ids
                .iter()
                .filter(|id| !l.acked.contains_key(*id) && !l.unconfirmed.contains(*id))
                .map(|id| format!("{id} (attempt {:?})", l.attempts.get(id)))
                .collect()
        };
        let group = crate::group_support::get_group(&mut on_b, "billing").await;
        if missing.is_empty() && group.events_behind == 0 && group.unacknowledged_count == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the group did not finish: missing {missing:?}; group on B: {group:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for m in members {
        tokio::time::timeout(WAIT, m)
            .await
            .expect("members stop when told")
            .expect("a member panicked");
    }

    // Assert: no event acknowledged twice, each order in creation order (an event
    // whose acknowledgement A lost may come again, right after itself); the
    // events held on the dead replica came back as later attempts.
    let ledger = std::mem::take(&mut *ledger.lock().unwrap());
    assert!(
        ledger.acked.values().all(|n| *n == 1),
        "no event acknowledged twice"
    );
    for (order, times) in &ledger.acked_order {
        let mut times = times.clone();
        times.dedup();
        assert!(
            times.windows(2).all(|w| w[0] < w[1]),
            "{order} acknowledged out of creation order"
        );
    }
    for id in &ledger.held {
        assert!(
            ledger.attempts[id] >= 2,
            "{id}, held on the dead replica, was delivered again"
        );
    }
    b.stop().await;
}

#[tokio::test]
async fn consumer_groups_are_listed_while_other_groups_keep_writing_their_state() {
    // Arrange: four groups in one bucket whose member lists are rewritten as fast
    // as NATS takes them (as positions and members move while groups consume).
    use dr_gateway::bus::{Bus, KvGroupStore};
    use dr_gateway::events::groups::{GroupDef, GroupSettings, GroupStore, MemberInfo};
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    let nats = NatsServer::start().await;
    let bus = Bus::connect(bus(&nats)).await.expect("bus");
    let store = Arc::new(
        KvGroupStore::open(&bus, "replica-a".into())
            .await
            .expect("buckets"),
    );
    let defs: Vec<GroupDef> = (1..=4)
        .map(|i| GroupDef {
            id: format!("group-{i}"),
            incarnation: i,
            settings: GroupSettings {
                filter: Default::default(),
                ack_deadline_ms: 30_000,
                reorder_window_ms: 0,
                start: Default::default(),
            },
            created: chrono::Utc::now(),
            start_after: 0,
        })
        .collect();
    for def in &defs {
        store.create_group(def).await.expect("group created");
    }
    let stop = Arc::new(AtomicBool::new(false));
    let writes = Arc::new(AtomicU64::new(0));
    // why: several writers per group, so that some write is always in flight.
    let writers: Vec<_> = defs
        .iter()
        .cycle()
        .take(4 * defs.len())
        .cloned()
        .map(|def| {
            let (store, stop, writes) = (store.clone(), stop.clone(), writes.clone());
            tokio::spawn(async move {
                let mut acked = 0;
                while !stop.load(Ordering::Relaxed) {
                    acked += 1;
                    let member = MemberInfo {
                        member_id: format!("{}-m", def.id),
                        name: "worker".into(),
                        replica: "replica-a".into(),
                        connected: chrono::Utc::now(),
                        max_unacked: 10,
                        unacked: 1,
                        acked,
                    };
                    if store.put_members(&def, &[member]).await.is_ok() {
                        writes.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    crate::helpers::eventually("the writers are writing", WAIT, || {
        let writes = writes.clone();
        async move { (writes.load(Ordering::Relaxed) >= 3000).then_some(()) }
    })
    .await;

    // Act + Assert: every listing, each within the bus timeout (800 ms), names
    // the four groups while the writes go on.
    for _ in 0..5 {
        let before = writes.load(Ordering::Relaxed);
        let mut ids: Vec<String> = store
            .groups()
            .await
            .expect("listed while the groups' state is written")
            .into_iter()
            .map(|def| def.id)
            .collect();
        ids.sort();
        assert_eq!(ids, ["group-1", "group-2", "group-3", "group-4"]);
        assert!(
            writes.load(Ordering::Relaxed) > before,
            "the state was written during the listing"
        );
    }
    // And once the writes are over (the last message of the stream is one of
    // thousands that replaced each other).
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.await.expect("writer");
    }
    let mut ids: Vec<String> = store
        .groups()
        .await
        .expect("listed after the writes")
        .into_iter()
        .map(|def| def.id)
        .collect();
    ids.sort();
    assert_eq!(ids, ["group-1", "group-2", "group-3", "group-4"]);
}
