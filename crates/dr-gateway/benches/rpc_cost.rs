//! What the telemetry costs per RPC, in instructions: `GetCharge` through a real
//! in-process gateway against a stub DR, counted by callgrind with metrics on and
//! off, traces off in both. Run with `cargo bench --bench rpc_cost` (valgrind must be
//! installed; `benches/README.md` has the figures and the exact command).
//!
//! Why: the observability issue promises that "instructions per RPC with metrics on
//! and tracing off stay within 5 % of the same build with both off". Timed tests are
//! banned and wall time is noise on shared cores; instructions are repeatable.
//!
//! How: this binary runs itself (`--measure <mode> <rpcs>`) under
//! `valgrind --tool=callgrind`: per mode a short and a long run of sequential RPCs,
//! twice. Start-up, warm-up and shutdown are the same in both
//! lengths of a mode, so `(instructions(long) - instructions(short)) / (long - short)`
//! is the cost of one RPC, client and stub DR included (they are the same in both
//! modes). Everything runs on one current-thread runtime, so the counts do not
//! depend on scheduling. A third mode (`logs`) adds the access log written as JSON to
//! a sink, to show what the INFO line per RPC costs on top.
//!
//! The run fails (non-zero exit) when metrics cost more than 5 % or an RPC fails.

use std::net::SocketAddr;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use dr_gateway::app::Application;
use dr_gateway::config::Settings;
use dr_gateway::pb::v1 as pb;
use dr_gateway::pb::v1::charge_service_client::ChargeServiceClient;
use tonic::transport::Channel;

/// RPCs of the short and the long run of each mode.
const SHORT: u64 = 100;
const LONG: u64 = 300;
/// RPCs before the measured ones in every run (connections, lazy set-up).
const WARM_UP: u64 = 20;
/// Measurements per mode: the counts move a little between runs (hash seeds, ids),
/// so each mode is measured twice and the mean is compared.
const REPEATS: usize = 2;
/// The promise being checked.
const BUDGET: f64 = 0.05;

/// What a run turns on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// No metrics recorder, no subscriber: the baseline.
    Off,
    /// Metrics recorded (what production runs by default), no trace export.
    Metrics,
    /// Metrics and the access log (JSON lines to a sink at INFO).
    MetricsAndLogs,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Off => "off",
            Mode::Metrics => "metrics",
            Mode::MetricsAndLogs => "logs",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        [Mode::Off, Mode::Metrics, Mode::MetricsAndLogs]
            .into_iter()
            .find(|m| m.name() == text)
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--measure") {
        let (Some(mode), Some(rpcs)) = (
            args.get(2).and_then(|m| Mode::parse(m)),
            args.get(3).and_then(|n| n.parse().ok()),
        ) else {
            eprintln!("usage: rpc_cost --measure <off|metrics|logs> <rpcs>");
            return ExitCode::from(2);
        };
        return measure(mode, rpcs);
    }
    drive(&args[0])
}

/// Runs the measurements under callgrind and prints the figures.
fn drive(me: &str) -> ExitCode {
    if Command::new("valgrind").arg("--version").output().is_err() {
        eprintln!("rpc_cost: valgrind is not installed (apt-get install valgrind)");
        return ExitCode::FAILURE;
    }
    println!("rpc_cost: instructions per GetCharge RPC (gateway + client + stub DR, one thread)");
    println!(
        "callgrind runs of {SHORT} and {LONG} RPCs, {REPEATS} of each per mode, {WARM_UP} warm-up RPCs each\n"
    );
    let mut per_rpc = Vec::new();
    for mode in [Mode::Off, Mode::Metrics, Mode::MetricsAndLogs] {
        let mut costs = Vec::new();
        for _ in 0..REPEATS {
            let short = match callgrind(me, mode, SHORT) {
                Ok(n) => n,
                Err(e) => return fail(&e),
            };
            let long = match callgrind(me, mode, LONG) {
                Ok(n) => n,
                Err(e) => return fail(&e),
            };
            let cost = (long - short) as f64 / (LONG - SHORT) as f64;
            println!(
                "  {:<8} {SHORT} RPCs: {short:>14} instr   {LONG} RPCs: {long:>14} instr   → {cost:>10.0} instr/RPC",
                mode.name()
            );
            costs.push(cost);
        }
        per_rpc.push((mode, costs.iter().sum::<f64>() / costs.len() as f64));
    }
    let base = per_rpc[0].1;
    println!();
    println!("| mode | instructions per RPC (mean) | vs metrics and logs off |");
    println!("|---|---|---|");
    for (mode, cost) in &per_rpc {
        println!(
            "| {} | {cost:.0} | {:+.2} % |",
            mode.name(),
            (cost / base - 1.0) * 100.0
        );
    }
    // Wall time, for orientation only (shared cores make it noisy).
    println!();
    for mode in [Mode::Off, Mode::Metrics] {
        match wall_time(me, mode) {
            Ok(us) => println!("  wall time, {}: {us:.1} µs/RPC (no valgrind)", mode.name()),
            Err(e) => return fail(&e),
        }
    }
    let overhead = per_rpc[1].1 / base - 1.0;
    if overhead > BUDGET {
        eprintln!(
            "\nrpc_cost: metrics cost {:.2} % per RPC, over the {:.0} % budget",
            overhead * 100.0,
            BUDGET * 100.0
        );
        return ExitCode::FAILURE;
    }
    println!(
        "\nmetrics on, traces off: {:+.2} % instructions per RPC (budget {:.0} %)",
        overhead * 100.0,
        BUDGET * 100.0
    );
    ExitCode::SUCCESS
}

fn fail(error: &str) -> ExitCode {
    eprintln!("rpc_cost: {error}");
    ExitCode::FAILURE
}

/// Instructions callgrind counted for one run of `rpcs` RPCs in `mode`.
fn callgrind(me: &str, mode: Mode, rpcs: u64) -> Result<u64, String> {
    let out_file = std::env::temp_dir().join(format!(
        "rpc_cost-{}-{}-{rpcs}.callgrind",
        std::process::id(),
        mode.name()
    ));
    let output = Command::new("valgrind")
        .arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", out_file.display()))
        .args([me, "--measure", mode.name(), &rpcs.to_string()])
        .output()
        .map_err(|e| format!("cannot run valgrind: {e}"))?;
    let _ = std::fs::remove_file(&out_file);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        return Err(format!("the {} run failed:\n{stderr}", mode.name()));
    }
    // "==1234== Collected : 123456789"
    stderr
        .lines()
        .find_map(|l| {
            l.split_once("Collected :")
                .map(|(_, n)| n.trim().to_owned())
        })
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("no instruction count in callgrind's output:\n{stderr}"))
}

/// µs per RPC of a native run of `LONG` RPCs (minus `SHORT`), for orientation.
fn wall_time(me: &str, mode: Mode) -> Result<f64, String> {
    let run = |rpcs: u64| -> Result<f64, String> {
        let output = Command::new(me)
            .args(["--measure", mode.name(), &rpcs.to_string()])
            .output()
            .map_err(|e| format!("cannot run myself: {e}"))?;
        if !output.status.success() {
            return Err(String::from_utf8_lossy(&output.stderr).into_owned());
        }
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("elapsed_us "))
            .and_then(|n| n.trim().parse().ok())
            .ok_or_else(|| "no elapsed time".to_owned())
    };
    let (short, long) = (run(SHORT * 10)?, run(LONG * 10)?);
    Ok((long - short) / ((LONG - SHORT) * 10) as f64)
}

/// One run: a gateway, a stub DR and `rpcs` sequential GetCharge calls.
fn measure(mode: Mode, rpcs: u64) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return fail(&format!("no runtime: {e}")),
    };
    if mode == Mode::MetricsAndLogs {
        use tracing_subscriber::prelude::*;
        let _ = tracing_subscriber::registry()
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(std::io::sink)
                    .with_filter(tracing_subscriber::EnvFilter::new("info")),
            )
            .try_init();
    }
    runtime.block_on(async move {
        let dr = stub_dr().await;
        let mut settings = Settings::for_upstream(format!("http://{dr}"), "sk_test_bench");
        settings.metrics.enabled = mode != Mode::Off;
        // why: pacing would measure the rate limiter's sleeps, not the RPC.
        settings.upstream_rate_limit = None;
        let app = match Application::build(settings).await {
            Ok(app) => app,
            Err(e) => return fail(&format!("gateway: {e}")),
        };
        let grpc = app.grpc_addr();
        let stop = app.shutdown_token();
        let running = tokio::spawn(app.run_until_stopped());
        let channel = match Channel::from_shared(format!("http://{grpc}")) {
            Ok(endpoint) => match endpoint.connect().await {
                Ok(channel) => channel,
                Err(e) => return fail(&format!("connect: {e}")),
            },
            Err(e) => return fail(&format!("uri: {e}")),
        };
        let mut client = ChargeServiceClient::new(channel);
        for _ in 0..WARM_UP {
            if let Err(e) = get_charge(&mut client).await {
                return fail(&e);
            }
        }
        let started = Instant::now();
        for _ in 0..rpcs {
            if let Err(e) = get_charge(&mut client).await {
                return fail(&e);
            }
        }
        println!("elapsed_us {}", started.elapsed().as_secs_f64() * 1e6);
        stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), running).await;
        ExitCode::SUCCESS
    })
}

async fn get_charge(client: &mut ChargeServiceClient<Channel>) -> Result<(), String> {
    let reply = client
        .get_charge(pb::GetChargeRequest {
            charge_id: "ch_bench".into(),
        })
        .await
        .map_err(|e| format!("GetCharge failed: {e}"))?;
    let Some(charge) = &reply.get_ref().charge else {
        return Err("GetCharge answered without a charge".into());
    };
    // why: without its source the gateway took DR's 404 path, not the one measured.
    if charge.source.is_none() {
        return Err("GetCharge answered without the charge's payment source".into());
    }
    Ok(())
}

/// A DR that answers every `GET /charges/{id}` with the same captured charge and every
/// `GET /sources/{id}` with its payment source (`GetCharge` reads both), so no call
/// takes a 404 path the gateway would log.
async fn stub_dr() -> SocketAddr {
    let charge = serde_json::json!({
        "id": "ch_bench",
        "createdTime": "2024-05-01T10:00:00Z",
        "currency": "USD",
        "amount": 26.89,
        "state": "capturable",
        "orderId": "240000001",
        "sourceId": "src_bench",
        "captured": true,
        "refunded": false,
        "captures": [{"id": "cap_1", "createdTime": "2024-05-01T11:00:00Z", "amount": 13.45, "state": "complete"}],
        "cancels": [],
        "refunds": [],
        "liveMode": false
    })
    .to_string();
    let source = serde_json::json!({
        "id": "src_bench",
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
    .to_string();
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
        );
    let listener = match tokio::net::TcpListener::bind("127.0.0.1:0").await {
        Ok(l) => l,
        Err(e) => panic!("stub DR cannot bind: {e}"),
    };
    let addr = match listener.local_addr() {
        Ok(a) => a,
        Err(e) => panic!("stub DR address: {e}"),
    };
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    addr
}
