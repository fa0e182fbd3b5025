//! Unary RPCs through the gateway to a fast local DR stub, against bare baselines of
//! the same crates: instructions per `GetCharge` and per `CreateFulfillment` (callgrind)
//! vs the floor, p50 at concurrency 1 vs a direct call to the stub, and `GetCharge` RPS
//! at saturation vs a bare tonic-to-reqwest proxy.
//! Run with `cargo bench -p dr-gateway --bench unary_rpc` (valgrind must be installed);
//! `bash scripts/bench.sh` runs it with the other benches; `-- --callgrind-only` or
//! `-- --wall-only` runs one half; `-- --rps-only gateway|proxy` runs one server's
//! saturation rounds alone (for a profiler).
//!
//! Why: the performance issue asks that `CreateFulfillment` and `GetCharge` cost at most
//! 1.3 × the floor in instructions per RPC with the logs production writes (JSON, INFO),
//! that p50 at concurrency 1 be at most 1.5 × a direct call, and that `GetCharge` RPS
//! reach 0.85 × a bare proxy's. Each figure is printed beside its baseline from the
//! same run.
//!
//! The baselines, all in this file:
//! - **bare tonic echo**: `ChargeService` / `FulfillmentService` servers answering a
//!   response built once (the same response the gateway builds from the stub's JSON);
//! - **bare reqwest call**: a `GET /charges/{id}` / `POST /fulfillments` to the stub,
//!   reading the body;
//! - **floor** = bare tonic echo RPC + bare reqwest call (what any gateway must do);
//! - **bare proxy**: a tonic `ChargeService` whose `GetCharge` does the reqwest GET,
//!   parses the charge with the gateway's model and converts it with the gateway's
//!   `convert::charge`: no layers, no logs, no metrics, no retries.
//!
//! How (instructions): like `benches/rpc_cost.rs`, this binary runs itself
//! (`--measure <mode> <rpcs>`) under `valgrind --tool=callgrind`, client, server and
//! stub on one current-thread runtime; a short and a long run of sequential calls per
//! mode, `(long - short) / (LONG - SHORT)` is one call. The gateway runs with metrics
//! on (the default) and a JSON subscriber at INFO writing to a sink (the Helm chart's
//! log format and level). `CreateFulfillment` goes without a `request_id` (one POST to
//! DR, as the floor); with one the gateway first lists the order's fulfillments in DR.
//! The long `GetCharge` and `CreateFulfillment` runs' per-function breakdowns
//! (`callgrind_annotate`) are printed.
//!
//! How (wall time): everything in this process on a multi-thread runtime (2 workers),
//! the same JSON INFO subscriber; rounds interleave gateway and baseline, and the
//! median round is reported. Client and servers share the machine's cores.
//!
//! The run fails (non-zero exit) when any call fails.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use dr_gateway::app::Application;
use dr_gateway::config::{LogFormat, Settings};
use dr_gateway::digital_river::models;
use dr_gateway::grpc::convert;
use dr_gateway::pb::v1 as pb;
use dr_gateway::pb::v1::charge_service_client::ChargeServiceClient;
use dr_gateway::pb::v1::charge_service_server::{ChargeService, ChargeServiceServer};
use dr_gateway::pb::v1::fulfillment_service_client::FulfillmentServiceClient;
use dr_gateway::pb::v1::fulfillment_service_server::{
    FulfillmentService, FulfillmentServiceServer,
};
use futures::{StreamExt as _, TryStreamExt as _};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

#[path = "support/callgrind.rs"]
mod callgrind;

/// Calls of the short and the long callgrind run of each mode.
const SHORT: u64 = 100;
const LONG: u64 = 300;
/// Calls before the measured ones in every run (connections, lazy set-up).
const WARM_UP: u64 = 20;
/// Short/long pairs per mode; the median is reported (counts move a little between
/// runs: hash seeds, ids, timers).
const REPEATS: usize = 3;
/// Wall-time rounds of each side, interleaved.
const ROUNDS: usize = 5;
/// Sequential calls per latency round.
const LATENCY_CALLS: usize = 1000;
/// RPCs per saturation round, in flight at once, and over how many HTTP/2 connections.
const SATURATION_RPCS: usize = 6000;
const IN_FLIGHT: usize = 64;
const CHANNELS: usize = 4;
/// Entries of each per-function breakdown printed.
const TOP_FUNCTIONS: usize = 25;
/// The charge and the order the stub DR knows.
const CHARGE_ID: &str = "ch_bench";
const ORDER_ID: &str = "240000001";
const SOURCE_ID: &str = "src_bench";

/// What one callgrind run calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Mode {
    /// `GetCharge` through the gateway (metrics, JSON logs at INFO).
    GatewayGet,
    /// `CreateFulfillment` (no request id) through the gateway.
    GatewayCreate,
    /// `GetCharge` against the bare tonic echo.
    EchoGet,
    /// `CreateFulfillment` against the bare tonic echo.
    EchoCreate,
    /// `GET /charges/{id}` to the stub with a bare reqwest client.
    ReqwestGet,
    /// `POST /fulfillments` to the stub with a bare reqwest client.
    ReqwestPost,
    /// `GetCharge` through the bare tonic-to-reqwest proxy.
    ProxyGet,
}

const MODES: [Mode; 7] = [
    Mode::GatewayGet,
    Mode::GatewayCreate,
    Mode::EchoGet,
    Mode::EchoCreate,
    Mode::ReqwestGet,
    Mode::ReqwestPost,
    Mode::ProxyGet,
];

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::GatewayGet => "gateway-get",
            Mode::GatewayCreate => "gateway-create",
            Mode::EchoGet => "echo-get",
            Mode::EchoCreate => "echo-create",
            Mode::ReqwestGet => "reqwest-get",
            Mode::ReqwestPost => "reqwest-post",
            Mode::ProxyGet => "proxy-get",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        MODES.into_iter().find(|m| m.name() == text)
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--measure") {
        let (Some(mode), Some(calls)) = (
            args.get(2).and_then(|m| Mode::parse(m)),
            args.get(3).and_then(|n| n.parse().ok()),
        ) else {
            eprintln!("usage: unary_rpc --measure <mode> <calls>");
            return ExitCode::from(2);
        };
        return measure(mode, calls);
    }
    let only_callgrind = args.iter().any(|a| a == "--callgrind-only");
    // why: the wall-clock rounds alone, e.g. under `perf record` (no valgrind children).
    if args.iter().any(|a| a == "--wall-only") {
        return match wall_only() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(&e),
        };
    }
    // why: one server's saturation rounds alone, so a profiler (`perf record`,
    // `perf stat`) sees that server's CPU per RPC and none of the other's.
    if let Some(at) = args.iter().position(|a| a == "--rps-only") {
        let through_gateway = match args.get(at + 1).map(String::as_str) {
            Some("gateway") => true,
            Some("proxy") => false,
            _ => {
                eprintln!("usage: unary_rpc --rps-only gateway|proxy");
                return ExitCode::from(2);
            }
        };
        return match wall_runtime().and_then(|rt| rt.block_on(rps_only(through_gateway))) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(&e),
        };
    }
    match drive(&args[0], only_callgrind) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

fn fail(error: &str) -> ExitCode {
    eprintln!("unary_rpc: FAILED: {error}");
    ExitCode::FAILURE
}

/// The wall-clock rounds and their rows, without the instruction counts.
fn wall_only() -> Result<(), String> {
    let w = wall_runtime()?.block_on(wall_time())?;
    println!("\n| path | dr-gateway | baseline, same run | ratio | goal |");
    println!("|---|---|---|---|---|");
    print_wall_rows(&w);
    Ok(())
}

fn wall_runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("no runtime: {e}"))
}

fn drive(me: &str, only_callgrind: bool) -> Result<(), String> {
    if !callgrind::installed() {
        return Err("valgrind is not installed (apt-get install valgrind)".into());
    }
    println!(
        "unary_rpc: instructions per call (client + server + stub DR, one thread); \
         callgrind runs of {SHORT} and {LONG} calls (+{WARM_UP} warm-up), {REPEATS} of each per mode"
    );
    let mut cost = std::collections::HashMap::new();
    let mut breakdowns = Vec::new();
    for mode in MODES {
        let mut runs = Vec::new();
        for _ in 0..REPEATS {
            let short = callgrind(me, mode, SHORT)?;
            let long = callgrind(me, mode, LONG)?;
            let per_call =
                (long.instructions as f64 - short.instructions as f64) / (LONG - SHORT) as f64;
            println!(
                "  {:<15} {SHORT} calls: {:>13} instr   {LONG} calls: {:>13} instr   → {per_call:>9.0} instr/call",
                mode.name(),
                short.instructions,
                long.instructions
            );
            runs.push((per_call, short, long));
        }
        let (per_call, short, long) = callgrind::median_run(runs);
        if matches!(mode, Mode::GatewayGet | Mode::GatewayCreate) {
            let breakdown = callgrind::breakdown(&short, &long, LONG - SHORT, TOP_FUNCTIONS);
            breakdowns.push((mode, breakdown));
        }
        short.finish();
        long.finish();
        cost.insert(mode, per_call);
    }
    for (mode, breakdown) in breakdowns {
        println!(
            "\n  where one {} call's instructions go, median run (own instructions per function, long run minus short):",
            mode.name()
        );
        for line in breakdown?.lines() {
            println!("    {line}");
        }
    }
    let floor_get = cost[&Mode::EchoGet] + cost[&Mode::ReqwestGet];
    let floor_create = cost[&Mode::EchoCreate] + cost[&Mode::ReqwestPost];

    let mut wall = None;
    if !only_callgrind {
        wall = Some(wall_runtime()?.block_on(wall_time())?);
    }

    println!("\n| path | dr-gateway | baseline, same run | ratio | goal |");
    println!("|---|---|---|---|---|");
    println!(
        "| CreateFulfillment, instructions per RPC (JSON logs, INFO) | {:.0} | floor {floor_create:.0} (echo {:.0} + reqwest POST {:.0}) | {:.2} × floor | ≤ 1.3 |",
        cost[&Mode::GatewayCreate],
        cost[&Mode::EchoCreate],
        cost[&Mode::ReqwestPost],
        cost[&Mode::GatewayCreate] / floor_create
    );
    println!(
        "| GetCharge, instructions per RPC (JSON logs, INFO) | {:.0} | floor {floor_get:.0} (echo {:.0} + reqwest GET {:.0}) | {:.2} × floor | ≤ 1.3 |",
        cost[&Mode::GatewayGet],
        cost[&Mode::EchoGet],
        cost[&Mode::ReqwestGet],
        cost[&Mode::GatewayGet] / floor_get
    );
    println!(
        "| GetCharge through the bare proxy, instructions per RPC | {:.0} | floor {floor_get:.0} | {:.2} × floor | (reference) |",
        cost[&Mode::ProxyGet],
        cost[&Mode::ProxyGet] / floor_get
    );
    if let Some(w) = &wall {
        print_wall_rows(w);
    }
    Ok(())
}

/// The wall-clock rows of the table.
fn print_wall_rows(w: &Wall) {
    println!(
        "| unary p50 at concurrency 1 (GetCharge) | {:.0} µs | {:.0} µs direct to the DR stub | {:.2} | ≤ 1.5 |",
        w.gateway_p50_us,
        w.direct_p50_us,
        w.gateway_p50_us / w.direct_p50_us
    );
    println!(
        "| unary p50 at concurrency 1 (GetCharge), bare proxy | {:.0} µs | {:.0} µs direct | {:.2} | (reference: the gRPC hop alone) |",
        w.proxy_p50_us,
        w.direct_p50_us,
        w.proxy_p50_us / w.direct_p50_us
    );
    println!(
        "| GetCharge RPS at saturation ({IN_FLIGHT} in flight, {CHANNELS} connections) | {:.0} | {:.0} (bare tonic-to-reqwest proxy) | {:.2} | ≥ 0.85 |",
        w.gateway_rps,
        w.proxy_rps,
        w.gateway_rps / w.proxy_rps
    );
}

// === instructions ===

/// The profile of one run of `calls` calls in `mode`.
fn callgrind(me: &str, mode: Mode, calls: u64) -> Result<callgrind::Profile, String> {
    let out = callgrind::out_file("unary_rpc", mode.name(), calls);
    let output = callgrind::command(&out, &[me, "--measure", mode.name(), &calls.to_string()])
        .output()
        .map_err(|e| format!("cannot run valgrind: {e}"))?;
    callgrind::Profile::from_output(&output, out, mode.name())
}

/// The JSON log output at INFO that production runs (the gateway's own layer),
/// writing to a sink.
fn json_logs_at_info() {
    use tracing_subscriber::prelude::*;
    let printed = dr_gateway::telemetry::logging::printed_layer(
        LogFormat::Json,
        std::io::sink,
        tracing_subscriber::EnvFilter::new("info"),
    );
    let _ = tracing_subscriber::registry().with(printed).try_init();
}

/// One callgrind run: the servers `mode` needs and `calls` sequential calls.
fn measure(mode: Mode, calls: u64) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return fail(&format!("no runtime: {e}")),
    };
    if matches!(mode, Mode::GatewayGet | Mode::GatewayCreate) {
        json_logs_at_info();
    }
    let result = runtime.block_on(async move {
        let dr = stub_dr().await?;
        let mut caller = match mode {
            Mode::GatewayGet | Mode::GatewayCreate => {
                let gateway = start_gateway(dr).await?;
                Caller::grpc(gateway.0, mode == Mode::GatewayCreate).await?
            }
            Mode::EchoGet | Mode::EchoCreate => {
                let echo = start_echo().await?;
                Caller::grpc(echo, mode == Mode::EchoCreate).await?
            }
            Mode::ProxyGet => Caller::grpc(start_proxy(dr).await?, false).await?,
            Mode::ReqwestGet => direct_gets(dr),
            Mode::ReqwestPost => Caller::Http {
                client: reqwest::Client::new(),
                urls: vec![format!("http://{dr}/fulfillments")],
                post: Some(fulfillment_post_body()),
            },
        };
        for _ in 0..WARM_UP {
            caller.call().await?;
        }
        callgrind::start_counting(std::process::id())?;
        for _ in 0..calls {
            caller.call().await?;
        }
        Ok::<(), String>(())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

/// A client of one of the compared paths.
enum Caller {
    Charge(ChargeServiceClient<Channel>),
    Fulfil(FulfillmentServiceClient<Channel>),
    Http {
        client: reqwest::Client,
        /// Called one after the other: one call of this caller.
        urls: Vec<String>,
        /// The JSON body to POST; `None` for GETs.
        post: Option<bytes::Bytes>,
    },
}

impl Caller {
    async fn grpc(addr: SocketAddr, fulfil: bool) -> Result<Self, String> {
        let channel = connect(addr).await?;
        Ok(if fulfil {
            Caller::Fulfil(FulfillmentServiceClient::new(channel))
        } else {
            Caller::Charge(ChargeServiceClient::new(channel))
        })
    }

    async fn call(&mut self) -> Result<(), String> {
        match self {
            Caller::Charge(client) => get_charge(client).await,
            Caller::Fulfil(client) => {
                let reply = client
                    .create_fulfillment(create_fulfillment_request())
                    .await
                    .map_err(|e| format!("CreateFulfillment failed: {e}"))?;
                if reply.get_ref().fulfillment.is_none() {
                    return Err("CreateFulfillment answered without a fulfillment".into());
                }
                Ok(())
            }
            Caller::Http { client, urls, post } => {
                for url in urls.iter() {
                    let request = match post {
                        Some(body) => client
                            .post(url.as_str())
                            .header("content-type", "application/json")
                            .body(body.clone()),
                        None => client.get(url.as_str()),
                    };
                    let response = request
                        .send()
                        .await
                        .map_err(|e| format!("stub call failed: {e}"))?;
                    if !response.status().is_success() {
                        return Err(format!("stub answered {}", response.status()));
                    }
                    let body = response
                        .bytes()
                        .await
                        .map_err(|e| format!("stub body: {e}"))?;
                    std::hint::black_box(body.len());
                }
                Ok(())
            }
        }
    }
}

/// The DR calls `GetCharge` needs, made directly: the charge, then its source.
fn direct_gets(dr: SocketAddr) -> Caller {
    Caller::Http {
        client: reqwest::Client::new(),
        urls: vec![
            format!("http://{dr}/charges/{CHARGE_ID}"),
            format!("http://{dr}/sources/{SOURCE_ID}"),
        ],
        post: None,
    }
}

async fn connect(addr: SocketAddr) -> Result<Channel, String> {
    Channel::from_shared(format!("http://{addr}"))
        .map_err(|e| format!("uri: {e}"))?
        .connect()
        .await
        .map_err(|e| format!("connect {addr}: {e}"))
}

async fn get_charge(client: &mut ChargeServiceClient<Channel>) -> Result<(), String> {
    let reply = client
        .get_charge(pb::GetChargeRequest {
            charge_id: CHARGE_ID.into(),
        })
        .await
        .map_err(|e| format!("GetCharge failed: {e}"))?;
    if reply.get_ref().charge.is_none() {
        return Err("GetCharge answered without a charge".into());
    }
    Ok(())
}

/// A fulfillment of one item, without a request id (one POST to DR).
fn create_fulfillment_request() -> pb::CreateFulfillmentRequest {
    pb::CreateFulfillmentRequest {
        order_id: ORDER_ID.into(),
        items: vec![pb::CreateFulfillmentItem {
            item_id: "item_1".into(),
            quantity: 1,
            cancel_quantity: 0,
            shipment_item_id: "si_1".into(),
        }],
        shipment_id: "sh_1".into(),
        tracking: Some(pb::Tracking {
            company: "UPS".into(),
            number: "1Z999AA10123456784".into(),
            url: String::new(),
        }),
        metadata: Default::default(),
        request_id: String::new(),
    }
}

/// The JSON the gateway POSTs to DR for [`create_fulfillment_request`].
fn fulfillment_post_body() -> bytes::Bytes {
    bytes::Bytes::from(
        serde_json::json!({
            "orderId": ORDER_ID,
            "shipmentId": "sh_1",
            "trackingCompany": "UPS",
            "trackingNumber": "1Z999AA10123456784",
            "items": [{"itemId": "item_1", "quantity": 1, "cancelQuantity": 0, "shipmentItemId": "si_1"}],
            "metadata": {"requestId": "3f1c2a4e-5b6d-4e7f-8a9b-0c1d2e3f4a5b"}
        })
        .to_string(),
    )
}

// === servers ===

/// The charge the stub DR answers with.
fn charge_json() -> String {
    serde_json::json!({
        "id": CHARGE_ID,
        "createdTime": "2024-05-01T10:00:00Z",
        "currency": "USD",
        "amount": 26.89,
        "state": "capturable",
        "orderId": ORDER_ID,
        "sourceId": SOURCE_ID,
        "captured": true,
        "refunded": false,
        "captures": [{"id": "cap_1", "createdTime": "2024-05-01T11:00:00Z", "amount": 13.45, "state": "complete"}],
        "cancels": [],
        "refunds": [],
        "liveMode": false
    })
    .to_string()
}

/// The charge's payment source the stub DR answers with.
fn source_json() -> String {
    serde_json::json!({
        "id": SOURCE_ID,
        "createdTime": "2024-05-01T09:59:00Z",
        "type": "creditCard",
        "currency": "USD",
        "amount": 26.89,
        "reusable": false,
        "state": "consumed",
        "owner": {"firstName": "Jane", "lastName": "Doe", "email": "jane.doe@example.com"},
        "creditCard": {"brand": "Visa", "expirationMonth": 12, "expirationYear": 2030, "lastFourDigits": "1111"},
        "liveMode": false
    })
    .to_string()
}

/// The fulfillment the stub DR answers `POST /fulfillments` with.
fn fulfillment_json() -> String {
    serde_json::json!({
        "id": "ful_2b1e6c1a-8d3f-4f0e-9a57-1c2d3e4f5a6b",
        "createdTime": "2024-05-01T12:00:00Z",
        "orderId": ORDER_ID,
        "shipmentId": "sh_1",
        "trackingCompany": "UPS",
        "trackingNumber": "1Z999AA10123456784",
        "items": [{"itemId": "item_1", "skuId": "sku_1", "quantity": 1, "cancelQuantity": 0, "shipmentItemId": "si_1"}],
        "metadata": {"requestId": "3f1c2a4e-5b6d-4e7f-8a9b-0c1d2e3f4a5b"},
        "chargeOperationIds": ["cap_1"],
        "liveMode": false
    })
    .to_string()
}

/// A DR that answers `GET /charges/{id}`, `GET /sources/{id}` and `POST /fulfillments`
/// with fixed JSON.
async fn stub_dr() -> Result<SocketAddr, String> {
    let charge = charge_json();
    let source = source_json();
    let fulfillment = fulfillment_json();
    let router = axum::Router::new()
        .route(
            "/charges/{id}",
            axum::routing::get(move || {
                let charge = charge.clone();
                async move { ([("content-type", "application/json")], charge) }
            }),
        )
        .route(
            "/sources/{id}",
            axum::routing::get(move || {
                let source = source.clone();
                async move { ([("content-type", "application/json")], source) }
            }),
        )
        .route(
            "/fulfillments",
            axum::routing::post(move |body: bytes::Bytes| {
                let fulfillment = fulfillment.clone();
                async move {
                    std::hint::black_box(body.len());
                    (
                        http::StatusCode::CREATED,
                        [("content-type", "application/json")],
                        fulfillment,
                    )
                }
            }),
        );
    let (listener, addr) = bind().await?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    Ok(addr)
}

async fn bind() -> Result<(tokio::net::TcpListener, SocketAddr), String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("bind: {e}"))?;
    let addr = listener.local_addr().map_err(|e| format!("address: {e}"))?;
    Ok((listener, addr))
}

/// The gateway against the stub DR, metrics on, no pacing; its gRPC address. It runs
/// for the rest of the process.
async fn start_gateway(dr: SocketAddr) -> Result<(SocketAddr,), String> {
    let mut settings = Settings::for_upstream(format!("http://{dr}"), "sk_test_bench");
    settings.metrics.enabled = true;
    // why: pacing would measure the rate limiter's sleeps, not the RPC.
    settings.upstream_rate_limit = None;
    // why: backfill would call the stub's (absent) /events.
    settings.backfill_enabled = false;
    let app = Application::build(settings)
        .await
        .map_err(|e| format!("gateway: {e}"))?;
    let grpc = app.grpc_addr();
    tokio::spawn(app.run_until_stopped());
    Ok((grpc,))
}

/// Bare tonic echo: answers with responses built once.
#[derive(Debug, Clone)]
struct Echo {
    charge: pb::GetChargeResponse,
    fulfillment: pb::CreateFulfillmentResponse,
}

async fn start_echo() -> Result<SocketAddr, String> {
    let charge: models::Charge =
        serde_json::from_str(&charge_json()).map_err(|e| format!("charge JSON: {e}"))?;
    let fulfillment: models::Fulfillment =
        serde_json::from_str(&fulfillment_json()).map_err(|e| format!("fulfillment JSON: {e}"))?;
    let source: models::Source =
        serde_json::from_str(&source_json()).map_err(|e| format!("source JSON: {e}"))?;
    let mut charge = convert::charge(charge, "");
    charge.source = Some(convert::payment_source(source, "USD"));
    let echo = Echo {
        charge: pb::GetChargeResponse {
            charge: Some(charge),
        },
        fulfillment: pb::CreateFulfillmentResponse {
            fulfillment: Some(convert::fulfillment(fulfillment)),
        },
    };
    let (listener, addr) = bind().await?;
    let router = tonic::transport::Server::builder()
        .add_service(ChargeServiceServer::new(echo.clone()))
        .add_service(FulfillmentServiceServer::new(echo));
    tokio::spawn(router.serve_with_incoming(nodelay_incoming(listener)));
    Ok(addr)
}

/// The connections `listener` accepts, with TCP_NODELAY as the gateway sets it (so
/// no baseline waits for a delayed ACK the gateway does not wait for).
fn nodelay_incoming(
    listener: tokio::net::TcpListener,
) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    tokio_stream::wrappers::TcpListenerStream::new(listener).map_ok(|stream| {
        let _ = stream.set_nodelay(true);
        stream
    })
}

/// Bare tonic-to-reqwest proxy: `GetCharge` → `GET /charges/{id}` → model → protobuf.
#[derive(Debug, Clone)]
struct Proxy {
    http: reqwest::Client,
    base: String,
}

async fn start_proxy(dr: SocketAddr) -> Result<SocketAddr, String> {
    let proxy = Proxy {
        http: reqwest::Client::new(),
        base: format!("http://{dr}"),
    };
    let (listener, addr) = bind().await?;
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(ChargeServiceServer::new(proxy))
            .serve_with_incoming(nodelay_incoming(listener)),
    );
    Ok(addr)
}

impl Proxy {
    async fn get_json<T: serde::de::DeserializeOwned>(&self, url: String) -> Result<T, Status> {
        let response = self
            .http
            .get(url)
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        if !response.status().is_success() {
            return Err(Status::unavailable(format!(
                "DR answered {}",
                response.status()
            )));
        }
        let body = response
            .bytes()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        serde_json::from_slice(&body).map_err(|e| Status::internal(e.to_string()))
    }
}

fn unimplemented_in_bench() -> Status {
    Status::unimplemented("not part of the benchmark")
}

#[tonic::async_trait]
impl ChargeService for Echo {
    async fn get_charge(
        &self,
        _: Request<pb::GetChargeRequest>,
    ) -> Result<Response<pb::GetChargeResponse>, Status> {
        Ok(Response::new(self.charge.clone()))
    }
    async fn list_order_charges(
        &self,
        _: Request<pb::ListOrderChargesRequest>,
    ) -> Result<Response<pb::ListOrderChargesResponse>, Status> {
        Err(unimplemented_in_bench())
    }
    async fn get_capture_failure(
        &self,
        _: Request<pb::GetCaptureFailureRequest>,
    ) -> Result<Response<pb::GetCaptureFailureResponse>, Status> {
        Err(unimplemented_in_bench())
    }
    async fn get_payment_source(
        &self,
        _: Request<pb::GetPaymentSourceRequest>,
    ) -> Result<Response<pb::GetPaymentSourceResponse>, Status> {
        Err(unimplemented_in_bench())
    }
    async fn capture_items(
        &self,
        _: Request<pb::CaptureItemsRequest>,
    ) -> Result<Response<pb::CaptureItemsResponse>, Status> {
        Err(unimplemented_in_bench())
    }
    async fn cancel_items(
        &self,
        _: Request<pb::CancelItemsRequest>,
    ) -> Result<Response<pb::CancelItemsResponse>, Status> {
        Err(unimplemented_in_bench())
    }
}

#[tonic::async_trait]
impl FulfillmentService for Echo {
    async fn create_fulfillment(
        &self,
        _: Request<pb::CreateFulfillmentRequest>,
    ) -> Result<Response<pb::CreateFulfillmentResponse>, Status> {
        Ok(Response::new(self.fulfillment.clone()))
    }
    async fn get_fulfillment(
        &self,
        _: Request<pb::GetFulfillmentRequest>,
    ) -> Result<Response<pb::GetFulfillmentResponse>, Status> {
        Err(unimplemented_in_bench())
    }
    async fn list_fulfillments(
        &self,
        _: Request<pb::ListFulfillmentsRequest>,
    ) -> Result<Response<pb::ListFulfillmentsResponse>, Status> {
        Err(unimplemented_in_bench())
    }
    async fn update_fulfillment_tracking(
        &self,
        _: Request<pb::UpdateFulfillmentTrackingRequest>,
    ) -> Result<Response<pb::UpdateFulfillmentTrackingResponse>, Status> {
        Err(unimplemented_in_bench())
    }
    async fn get_order(
        &self,
        _: Request<pb::GetOrderRequest>,
    ) -> Result<Response<pb::GetOrderResponse>, Status> {
        Err(unimplemented_in_bench())
    }
}

#[tonic::async_trait]
impl ChargeService for Proxy {
    async fn get_charge(
        &self,
        req: Request<pb::GetChargeRequest>,
    ) -> Result<Response<pb::GetChargeResponse>, Status> {
        let url = format!("{}/charges/{}", self.base, req.get_ref().charge_id);
        let charge: models::Charge = self.get_json(url).await?;
        let source: Option<models::Source> = match charge.source_id.as_deref() {
            Some(source_id) => {
                let url = format!("{}/sources/{source_id}", self.base);
                Some(self.get_json(url).await?)
            }
            None => None,
        };
        let currency = charge.currency.clone().unwrap_or_default();
        let mut out = convert::charge(charge, "");
        out.source = source.map(|source| convert::payment_source(source, &currency));
        Ok(Response::new(pb::GetChargeResponse { charge: Some(out) }))
    }
    async fn list_order_charges(
        &self,
        _: Request<pb::ListOrderChargesRequest>,
    ) -> Result<Response<pb::ListOrderChargesResponse>, Status> {
        Err(unimplemented_in_bench())
    }
    async fn get_capture_failure(
        &self,
        _: Request<pb::GetCaptureFailureRequest>,
    ) -> Result<Response<pb::GetCaptureFailureResponse>, Status> {
        Err(unimplemented_in_bench())
    }
    async fn get_payment_source(
        &self,
        _: Request<pb::GetPaymentSourceRequest>,
    ) -> Result<Response<pb::GetPaymentSourceResponse>, Status> {
        Err(unimplemented_in_bench())
    }
    async fn capture_items(
        &self,
        _: Request<pb::CaptureItemsRequest>,
    ) -> Result<Response<pb::CaptureItemsResponse>, Status> {
        Err(unimplemented_in_bench())
    }
    async fn cancel_items(
        &self,
        _: Request<pb::CancelItemsRequest>,
    ) -> Result<Response<pb::CancelItemsResponse>, Status> {
        Err(unimplemented_in_bench())
    }
}

// === wall time ===

/// Figures of the wall-time part.
#[derive(Debug)]
struct Wall {
    gateway_p50_us: f64,
    direct_p50_us: f64,
    /// The bare proxy's p50: what the gRPC hop itself adds to the direct calls.
    proxy_p50_us: f64,
    gateway_rps: f64,
    proxy_rps: f64,
}

async fn wall_time() -> Result<Wall, String> {
    json_logs_at_info();
    let dr = stub_dr().await?;
    let (gateway,) = start_gateway(dr).await?;
    let proxy = start_proxy(dr).await?;
    let mut gateway_one = Caller::grpc(gateway, false).await?;
    let mut proxy_one = Caller::grpc(proxy, false).await?;
    let mut direct = direct_gets(dr);
    for _ in 0..WARM_UP {
        gateway_one.call().await?;
        proxy_one.call().await?;
        direct.call().await?;
    }
    println!(
        "\nwall time: {ROUNDS} rounds of each, interleaved; p50 of {LATENCY_CALLS} sequential calls; \
         {SATURATION_RPCS} GetCharge RPCs with {IN_FLIGHT} in flight over {CHANNELS} connections"
    );
    let (mut g50, mut d50, mut p50s) = (Vec::new(), Vec::new(), Vec::new());
    let (mut g_rps, mut p_rps) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let g = p50(&mut gateway_one).await?;
        let d = p50(&mut direct).await?;
        let p = p50(&mut proxy_one).await?;
        let gr = saturate(gateway).await?;
        let pr = saturate(proxy).await?;
        println!(
            "  round {round}: p50 gateway {g:>6.0} µs, direct {d:>6.0} µs, bare proxy {p:>6.0} µs; \
             RPS gateway {gr:>7.0}, bare proxy {pr:>7.0}"
        );
        g50.push(g);
        d50.push(d);
        p50s.push(p);
        g_rps.push(gr);
        p_rps.push(pr);
    }
    Ok(Wall {
        gateway_p50_us: median(&mut g50),
        direct_p50_us: median(&mut d50),
        proxy_p50_us: median(&mut p50s),
        gateway_rps: median(&mut g_rps),
        proxy_rps: median(&mut p_rps),
    })
}

/// The saturation rounds of the gateway or of the bare proxy alone, each round's
/// RPS and their median printed.
async fn rps_only(through_gateway: bool) -> Result<(), String> {
    json_logs_at_info();
    let dr = stub_dr().await?;
    let (addr, name) = if through_gateway {
        (start_gateway(dr).await?.0, "gateway")
    } else {
        (start_proxy(dr).await?, "bare proxy")
    };
    let mut one = Caller::grpc(addr, false).await?;
    for _ in 0..WARM_UP {
        one.call().await?;
    }
    println!(
        "\n{name} alone: {ROUNDS} rounds of {SATURATION_RPCS} GetCharge RPCs with {IN_FLIGHT} \
         in flight over {CHANNELS} connections"
    );
    let mut rounds = Vec::with_capacity(ROUNDS);
    for round in 0..ROUNDS {
        let rps = saturate(addr).await?;
        println!("  round {round}: {rps:>7.0} RPS");
        rounds.push(rps);
    }
    println!("{name}: median {:.0} RPS", median(&mut rounds));
    Ok(())
}

fn median(xs: &mut [f64]) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// p50 in µs of [`LATENCY_CALLS`] sequential calls.
async fn p50(caller: &mut Caller) -> Result<f64, String> {
    let mut took = Vec::with_capacity(LATENCY_CALLS);
    for _ in 0..LATENCY_CALLS {
        let started = Instant::now();
        caller.call().await?;
        took.push(started.elapsed().as_secs_f64() * 1e6);
    }
    Ok(median(&mut took))
}

/// GetCharge RPCs per second against `addr` with [`IN_FLIGHT`] in flight.
async fn saturate(addr: SocketAddr) -> Result<f64, String> {
    let mut clients = Vec::with_capacity(CHANNELS);
    for _ in 0..CHANNELS {
        clients.push(ChargeServiceClient::new(connect(addr).await?));
    }
    let started = Instant::now();
    futures::stream::iter(0..SATURATION_RPCS)
        .map(|i| {
            let mut client = clients[i % CHANNELS].clone();
            async move { get_charge(&mut client).await }
        })
        .buffer_unordered(IN_FLIGHT)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(SATURATION_RPCS as f64 / started.elapsed().as_secs_f64())
}
