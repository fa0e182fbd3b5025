//! Graceful shutdown, in the order `shutdown.rs` documents: health NOT_SERVING,
//! then the drain (listeners closed, GOAWAY, streams ended) while every unary call
//! already received runs to completion, within the grace period.
//!
//! Each test repeats the shutdown many times: the failures it guards against were
//! races (a shutdown that ended while calls were still in flight in some runs only).

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use dr_gateway::pb::v1 as pb;
use dr_gateway::pb::v1::fulfillment_service_client::FulfillmentServiceClient;
use dr_sandbox::{ControlClient, FaultKind, FaultSpec};
use futures::StreamExt as _;
use serde_json::json;
use tokio::task::JoinSet;
use tonic::transport::Channel;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use crate::helpers::{eventually, settings, spawn_app_with, spawn_sandbox, API_KEY};

/// How often each test shuts a gateway down with calls in flight.
const ROUNDS: usize = 20;
/// Calls in flight at each shutdown.
const IN_FLIGHT: usize = 10;
/// How long DR (a sandbox latency fault) takes to answer each of them.
const DR_LATENCY: Duration = Duration::from_secs(1);
/// The gateways' grace period: far longer than the calls take, so a drain that
/// waits out the grace (instead of ending when the calls are answered) shows.
const GRACE: Duration = Duration::from_secs(8);

/// `future`'s output, or a test failure after `limit`.
async fn within<T>(limit: Duration, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(limit, future)
        .await
        .unwrap_or_else(|_| panic!("nothing within {limit:?}"))
}

/// A test-mode order in the sandbox at `control`; returns its id.
async fn an_order(control: &ControlClient) -> String {
    let order = control
        .create_order(json!({"items": [{"quantity": 1, "amount": "10.00"}]}))
        .await
        .expect("order created");
    order["id"].as_str().expect("order id").to_owned()
}

/// Makes the next [`IN_FLIGHT`] `GET /orders/{id}` take [`DR_LATENCY`], and
/// forgets the requests seen so far.
async fn slow_down_order_reads(control: &ControlClient, order_id: &str) {
    control.clear_requests().await.expect("requests cleared");
    let fault = FaultSpec {
        method: Some("GET".into()),
        count: Some(IN_FLIGHT as u32),
        ..FaultSpec::new(FaultKind::Latency, format!("/orders/{order_id}")).latency(DR_LATENCY)
    };
    control.add_fault(&fault).await.expect("fault armed");
}

/// Starts [`IN_FLIGHT`] GetOrder calls on `channel` and returns once DR has received
/// every one of them (so they are in flight at the gateway, waiting on DR).
async fn calls_in_flight(
    channel: &Channel,
    control: &ControlClient,
    order_id: &str,
) -> JoinSet<Result<pb::GetOrderResponse, tonic::Status>> {
    let mut calls = JoinSet::new();
    for _ in 0..IN_FLIGHT {
        let mut client = FulfillmentServiceClient::new(channel.clone());
        let order_id = order_id.to_owned();
        calls.spawn(async move {
            client
                .get_order(pb::GetOrderRequest {
                    key: Some(pb::get_order_request::Key::OrderId(order_id)),
                })
                .await
                .map(tonic::Response::into_inner)
        });
    }
    let path = format!("/orders/{order_id}");
    eventually(
        "DR to receive every call",
        Duration::from_secs(10),
        || async {
            let seen = control
                .requests(Some("GET"), Some(&path))
                .await
                .expect("sandbox requests");
            (seen.len() >= IN_FLIGHT).then_some(())
        },
    )
    .await;
    calls
}

/// Every call of `calls` answered OK with the order.
async fn all_answered(
    mut calls: JoinSet<Result<pb::GetOrderResponse, tonic::Status>>,
    order_id: &str,
    round: usize,
) {
    let mut answered = 0;
    while let Some(joined) = within(GRACE, calls.join_next()).await {
        let response = joined.expect("call task").unwrap_or_else(|status| {
            panic!("round {round}: an in-flight call was cut: {status:?}")
        });
        assert_eq!(response.order.expect("order").id, order_id);
        answered += 1;
    }
    assert_eq!(answered, IN_FLIGHT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shutdown_answers_every_call_in_flight_refuses_new_ones_and_ends_streams_at_once_twenty_times(
) {
    let dr = spawn_sandbox().await;
    let order_id = an_order(&dr.control).await;
    for round in 0..ROUNDS {
        // Arrange: a gateway with a health watcher, a Subscribe stream and ten calls
        // DR is still working on.
        let mut s = settings(&dr.base_url());
        s.shutdown_grace = GRACE;
        let app = spawn_app_with(s).await;
        let grpc_addr = app.grpc_addr;
        let mut watch = HealthClient::new(app.channel.clone())
            .watch(HealthCheckRequest::default())
            .await
            .expect("health watch")
            .into_inner();
        let first = within(GRACE, watch.next())
            .await
            .expect("a status")
            .expect("ok");
        assert_eq!(first.status, ServingStatus::Serving as i32);
        let mut subscription = app
            .events
            .clone()
            .subscribe(pb::SubscribeRequest::default())
            .await
            .expect("subscribe")
            .into_inner();
        slow_down_order_reads(&dr.control, &order_id).await;
        let calls = calls_in_flight(&app.channel, &dr.control, &order_id).await;

        // Act
        let started = Instant::now();
        app.shutdown_now();

        // Assert: the watcher sees NOT_SERVING, then its stream ends, and so does the
        // Subscribe stream, while DR still holds every call ...
        let next = within(GRACE, watch.next())
            .await
            .expect("an update")
            .expect("ok");
        assert_eq!(
            next.status,
            ServingStatus::NotServing as i32,
            "round {round}"
        );
        let ended = within(GRACE, watch.next())
            .await
            .expect("the watch ends with a status");
        assert_eq!(ended.expect_err("UNAVAILABLE").code(), Code::Unavailable);
        let ended = within(GRACE, subscription.next())
            .await
            .expect("the stream ends with a status");
        assert_eq!(ended.expect_err("UNAVAILABLE").code(), Code::Unavailable);
        assert!(
            started.elapsed() < DR_LATENCY,
            "round {round}: streams ended {:?} after the shutdown started",
            started.elapsed()
        );
        // ... a new connection is refused ...
        eventually(
            "the gRPC listener to close",
            Duration::from_secs(2),
            || async { TcpStream::connect(grpc_addr).is_err().then_some(()) },
        )
        .await;
        // ... every call in flight is answered ...
        all_answered(calls, &order_id, round).await;
        // ... and the gateway stops as soon as they are, well inside its grace.
        app.wait_stopped(GRACE / 2).await;
    }
}

// === the real binary, SIGTERM, a separate DR ===

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
}

/// A `dr-gateway` child process with its output in a log file, killed when dropped.
struct Process {
    child: Child,
    log: std::path::PathBuf,
}

impl Process {
    fn spawn(args: &[String]) -> Self {
        let log =
            std::env::temp_dir().join(format!("dr-gateway-shutdown-{}.log", uuid::Uuid::new_v4()));
        let out = std::fs::File::create(&log).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_dr-gateway"))
            .args(args)
            .env("DR_GATEWAY_DR_API_KEY", API_KEY)
            .env("RUST_LOG", "info")
            .stdout(out.try_clone().expect("log file"))
            .stderr(out)
            .spawn()
            .expect("spawn dr-gateway");
        Self { child, log }
    }

    /// Starts `args(port)` on a free port and waits until `ready` (given the address)
    /// says it serves; a start that lost its port to another test is retried on
    /// another one.
    async fn start<F, Fut>(args: impl Fn(SocketAddr) -> Vec<String>, ready: F) -> (Self, SocketAddr)
    where
        F: Fn(SocketAddr) -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        for _ in 0..5 {
            let addr = free_addr();
            let mut process = Self::spawn(&args(addr));
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if process.child.try_wait().expect("try_wait").is_some() {
                    break; // exited: most likely its port was taken meanwhile
                }
                if ready(addr).await {
                    return (process, addr);
                }
                // why: the polling interval of the start-up wait.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            assert!(
                process.child.try_wait().expect("try_wait").is_some(),
                "dr-gateway never became ready:\n{}",
                process.log_text()
            );
        }
        panic!("dr-gateway could not start on a free port five times");
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, as Kubernetes sends it.
    fn terminate(&self) {
        // why: the shell's built-in `kill`, so no crate with `unsafe` libc calls.
        let status = Command::new("sh")
            .args(["-c", "kill -TERM \"$0\"", &self.child.id().to_string()])
            .status()
            .expect("sh");
        assert!(status.success(), "kill -TERM failed");
    }

    /// The exit status, waiting at most `within`.
    async fn exit_within(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "dr-gateway still running {within:?} after SIGTERM:\n{}",
                self.log_text()
            );
            // why: the polling interval of the exit wait.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// A channel to `addr` once its gRPC health says SERVING.
async fn serving_channel(addr: SocketAddr) -> Option<Channel> {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect()
        .await
        .ok()?;
    let status = HealthClient::new(channel.clone())
        .check(HealthCheckRequest::default())
        .await
        .ok()?;
    (status.into_inner().status == ServingStatus::Serving as i32).then_some(channel)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_lets_the_binary_answer_every_call_in_flight_against_a_separate_dr_twenty_times() {
    let (_dr, dr_addr) = Process::start(
        |addr| vec!["sandbox".into(), "--listen".into(), addr.to_string()],
        |addr| async move {
            ControlClient::new(format!("http://{addr}"), dr_sandbox::Sandbox::CONTROL_KEY)
                .clock()
                .await
                .is_ok()
        },
    )
    .await;
    let dr_url = format!("http://{dr_addr}");
    let control = ControlClient::new(&dr_url, dr_sandbox::Sandbox::CONTROL_KEY);
    let order_id = an_order(&control).await;
    for round in 0..ROUNDS {
        // Arrange
        let dr_url = dr_url.clone();
        let (mut gateway, grpc_addr) = Process::start(
            move |addr| {
                [
                    "serve",
                    "--grpc-addr",
                    &addr.to_string(),
                    "--http-addr",
                    "127.0.0.1:0",
                    "--dr-base-url",
                    &dr_url,
                    "--shutdown-grace",
                    &format!("{}s", GRACE.as_secs()),
                    "--backfill-interval",
                    "0s",
                    // why: start-up refuses a gateway without a webhook secret unless
                    // told it runs on backfill alone.
                    "--webhooks-disabled",
                ]
                .map(str::to_owned)
                .to_vec()
            },
            |addr| async move { serving_channel(addr).await.is_some() },
        )
        .await;
        let channel = serving_channel(grpc_addr).await.expect("serving");
        slow_down_order_reads(&control, &order_id).await;
        let calls = calls_in_flight(&channel, &control, &order_id).await;

        // Act
        let started = Instant::now();
        gateway.terminate();

        // Assert: every call in flight is answered, then the process exits 0, as soon
        // as they are and well inside its grace.
        all_answered(calls, &order_id, round).await;
        let status = gateway.exit_within(GRACE / 2).await;
        assert!(
            status.success(),
            "round {round}: exit {status:?}:\n{}",
            gateway.log_text()
        );
        assert!(
            started.elapsed() >= DR_LATENCY / 2,
            "round {round}: exited {:?} after SIGTERM, before DR could answer",
            started.elapsed()
        );
    }
}
