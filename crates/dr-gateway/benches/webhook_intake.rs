//! Webhook intake against a bare axum POST handler: instructions per signed ~1 KB event
//! (callgrind, server process only) and accepted events per second with 16 in flight.
//! Run with `cargo bench -p dr-gateway --bench webhook_intake` (valgrind must be
//! installed); `bash scripts/bench.sh` runs it with the other benches;
//! `-- --callgrind-only`, `-- --cpu-only` or `-- --rate-only` runs one part.
//!
//! Why: the performance issue asks that intake cost at most 4× the instructions of a
//! bare axum handler that reads the body, and reach at least 0.6× its accepted events
//! per second, both measured in the same run. DR waits at most 3 s for an answer and
//! redelivers, so intake is a cost that matters whatever DR's rate limit.
//!
//! How:
//! - **Instructions.** This binary starts itself (`--serve gateway|bare`) under
//!   `valgrind --tool=callgrind`: one server process on a current-thread runtime. The
//!   driver (this process, not under valgrind) posts pre-signed events to it over one
//!   keep-alive connection, one at a time: a short and a long run per server.
//!   Counting starts after the warm-up events (start-up's cost varies between runs,
//!   see `support/callgrind.rs`), and `(long - short) / (LONG - SHORT)` is one event,
//!   shutdown cancelled out. Signing and the client are not in the count: they happen in the driver.
//!   Each server's per-function breakdown of one event (`callgrind_annotate` of the
//!   long run minus the short one) is printed.
//! - **Server CPU per event, native** (a figure beside the goals, not one of them).
//!   The `--serve` child run natively; its threads' time on CPU (`schedstat`) over
//!   [`CPU_EVENTS`] events after the warm-up, posted one at a time (the instruction
//!   count's workload) and then [`IN_FLIGHT`] at a time (the rate's). Rounds
//!   interleave gateway and bare; the median is reported. Natively the CPU's SHA
//!   extensions hash the signed bytes (valgrind hides them and counts aws-lc's AVX2
//!   SHA-256), and system calls and wake-ups count; and unlike the rate rounds, the
//!   client's CPU is not in it.
//! - **Accepted per second.** The gateway and the bare handler in this process
//!   (multi-thread runtime), a reqwest client posting [`THROUGHPUT_EVENTS`] pre-signed
//!   events with [`IN_FLIGHT`] in flight; rounds interleave gateway and bare, and the
//!   median round is reported. A fresh gateway per round, so every round starts with
//!   an empty event log.
//!
//! The run fails (non-zero exit) unless every event is answered 200 and stored (not a
//! duplicate) by the gateway.

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::SocketAddr;
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use chrono::Utc;
use dr_gateway::app::Application;
use dr_gateway::config::Settings;
use dr_gateway::webhook::{signature::sign, SIGNATURE_HEADER, WEBHOOK_PATH};
use futures::{StreamExt as _, TryStreamExt as _};
use secrecy::SecretString;
use serde_json::json;
use tokio_util::sync::CancellationToken;

#[path = "support/callgrind.rs"]
mod callgrind;
#[path = "support/on_cpu.rs"]
mod on_cpu;

/// Events of the short and the long callgrind run.
const SHORT: usize = 100;
const LONG: usize = 300;
/// Events before the measured ones in every callgrind run (connection, lazy set-up).
const WARM_UP: usize = 20;
/// Short/long pairs per server; the median is reported. Counts move by up to ~20 %
/// between runs (timers that fire in proportion to valgrind's wall time, allocator
/// state, how reads split), so one pair is not enough.
const REPEATS: usize = 3;
/// Events per native CPU round, and how many rounds of each server.
const CPU_EVENTS: usize = 5000;
const CPU_ROUNDS: usize = 7;
/// Events per throughput round, and how many rounds of each server.
const THROUGHPUT_EVENTS: usize = 6000;
const ROUNDS: usize = 15;
/// Requests in flight in the throughput rounds.
const IN_FLIGHT: usize = 16;
/// Webhook signing secret of the benchmark gateway.
const WEBHOOK_SECRET: &str = "whsec_bench";
/// Longest any one POST may take (valgrind makes the server ~50× slower).
const POST_TIMEOUT: Duration = Duration::from_secs(60);
/// Entries of the per-function breakdown printed.
const TOP_FUNCTIONS: usize = 25;

/// The two servers compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Server {
    /// The gateway: signature check, parse, dedup, store, publish.
    Gateway,
    /// A bare axum POST handler that reads the body and answers 200.
    Bare,
}

impl Server {
    fn name(self) -> &'static str {
        match self {
            Server::Gateway => "gateway",
            Server::Bare => "bare",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        [Server::Gateway, Server::Bare]
            .into_iter()
            .find(|s| s.name() == text)
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--serve") {
        let Some(server) = args.get(i + 1).and_then(|s| Server::parse(s)) else {
            eprintln!("usage: webhook_intake --serve <gateway|bare>");
            return ExitCode::from(2);
        };
        return serve_until_stdin_closes(server);
    }
    let only = |flag: &str| args.iter().any(|a| a == flag);
    // why: one part alone, e.g. the rate rounds under `perf record` (no valgrind
    // children).
    let parts = match (
        only("--callgrind-only"),
        only("--cpu-only"),
        only("--rate-only"),
    ) {
        (false, false, false) => Parts::ALL,
        (callgrind, cpu, rate) => Parts {
            callgrind,
            cpu,
            rate,
        },
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return fail(&format!("no runtime: {e}")),
    };
    match runtime.block_on(drive(&args[0], parts)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

fn fail(error: &str) -> ExitCode {
    eprintln!("webhook_intake: FAILED: {error}");
    ExitCode::FAILURE
}

/// Which parts of the bench run.
#[derive(Debug, Clone, Copy)]
struct Parts {
    callgrind: bool,
    cpu: bool,
    rate: bool,
}

impl Parts {
    const ALL: Self = Self {
        callgrind: true,
        cpu: true,
        rate: true,
    };
}

async fn drive(me: &str, parts: Parts) -> Result<(), String> {
    if parts.callgrind && !callgrind::installed() {
        return Err("valgrind is not installed (apt-get install valgrind)".into());
    }
    println!(
        "webhook_intake: signed {} B events; callgrind runs of {SHORT} and {LONG} events \
         (+{WARM_UP} warm-up), {REPEATS} of each per server, server process only",
        capture_complete_event("evt-size").len()
    );
    let mut per_event = Vec::new();
    let counted: &[Server] = if parts.callgrind {
        &[Server::Gateway, Server::Bare]
    } else {
        &[]
    };
    for &server in counted {
        let mut runs = Vec::new();
        for _ in 0..REPEATS {
            let short = callgrind(me, server, SHORT).await?;
            let long = callgrind(me, server, LONG).await?;
            let cost =
                (long.instructions as f64 - short.instructions as f64) / (LONG - SHORT) as f64;
            println!(
                "  {:<8} {SHORT} events: {:>13} instr   {LONG} events: {:>13} instr   → {cost:>9.0} instr/event",
                server.name(),
                short.instructions,
                long.instructions
            );
            runs.push((cost, short, long));
        }
        let (cost, short, long) = callgrind::median_run(runs);
        let breakdown = callgrind::breakdown(&short, &long, (LONG - SHORT) as u64, TOP_FUNCTIONS);
        short.finish();
        long.finish();
        println!(
            "\n  where one event's instructions go in the {} server, median run (own instructions per function, long run minus short):",
            server.name()
        );
        for line in breakdown?.lines() {
            println!("    {line}");
        }
        println!();
        per_event.push(cost);
    }

    let mut cpu = None;
    if parts.cpu {
        let mut figures = Vec::new();
        for in_flight in [1, IN_FLIGHT] {
            println!(
                "\nserver CPU per event, native: {CPU_EVENTS} events per round, {in_flight} in flight, {CPU_ROUNDS} rounds of each, interleaved"
            );
            let mut gateway = Vec::new();
            let mut bare = Vec::new();
            for round in 0..CPU_ROUNDS {
                let g = native_cpu(me, Server::Gateway, round, in_flight).await?;
                let b = native_cpu(me, Server::Bare, round, in_flight).await?;
                println!("  round {round}: gateway {g:>7.2} µs   bare {b:>7.2} µs");
                gateway.push(g);
                bare.push(b);
            }
            figures.push((in_flight, median(&mut gateway), median(&mut bare)));
        }
        cpu = Some(figures);
    }

    let mut rates = None;
    if parts.rate {
        println!(
            "\nthroughput: {THROUGHPUT_EVENTS} events per round, {IN_FLIGHT} in flight, {ROUNDS} rounds of each, interleaved"
        );
        let mut gateway = Vec::new();
        let mut bare = Vec::new();
        for round in 0..ROUNDS {
            let g = throughput_round(Server::Gateway, round).await?;
            let b = throughput_round(Server::Bare, round).await?;
            println!("  round {round}: gateway {g:>8.0}/s   bare {b:>8.0}/s");
            gateway.push(g);
            bare.push(b);
        }
        rates = Some((median(&mut gateway), median(&mut bare)));
    }

    println!("\n| path | dr-gateway | bare axum POST reading the body | ratio | goal |");
    println!("|---|---|---|---|---|");
    if let [gateway_instr, bare_instr] = per_event[..] {
        println!(
            "| webhook intake, instructions per signed event | {gateway_instr:.0} | {bare_instr:.0} | {:.2}× | ≤ 4× |",
            gateway_instr / bare_instr
        );
    }
    for (in_flight, g, b) in cpu.unwrap_or_default() {
        println!(
            "| webhook intake, server CPU per event, native, {in_flight} in flight (beside the goals) | {g:.2} µs | {b:.2} µs | {:.2}× | — |",
            g / b
        );
    }
    if let Some((g, b)) = rates {
        println!(
            "| webhook intake, accepted per second ({IN_FLIGHT} in flight) | {g:.0} | {b:.0} | {:.2} | ≥ 0.6 |",
            g / b
        );
    }
    Ok(())
}

fn median(xs: &mut [f64]) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// An `order.charge.capture.complete` event as DR's "Capturing and cancelling charges"
/// page prints it, ~1 KB, with `id` (the same event as `benches/fan_out.rs`).
fn capture_complete_event(id: &str) -> Vec<u8> {
    let event = json!({
        "id": id,
        "type": "order.charge.capture.complete",
        "data": {"object": {
            "id": "b67136cc-0b2e-43f7-8d9a-362047aa975a", "createdTime": "2022-03-02T16:50:23Z",
            "currency": "USD", "amount": 37.81, "state": "capturable", "orderId": "218377480336",
            "captured": true,
            "captures": [{"id": "b496b7b2-3bc7-49cd-ab48-f91b2f2e37cc",
                "createdTime": "2022-03-02T16:50:37Z", "amount": 25.21, "state": "complete",
                "fulfillmentId": "ful_a0246997-bdcf-480a-a066-2cfc564e6232"}],
            "refunded": false, "sourceId": "52ca4456-5547-4f9c-8016-1a067fd0b125",
            "paymentSessionId": "7c121712-2ae8-4617-97a2-5d41fd79a5b8",
            "type": "customer_initiated", "liveMode": false}},
        "liveMode": false,
        "createdTime": "2022-03-02T16:52:01.180061Z",
        "webhookIds": ["bbac1929-580c-4629-b648-4c096b1a104a", "9666a0f9-d2a5-4eba-8b56-ecf7e87bb84c"],
        "digitalriverVersion": "2021-12-13"
    });
    serde_json::to_vec(&event).unwrap_or_default()
}

/// `n` events with ids `<prefix>-<i>`, each with its `Digitalriver-Signature` value.
fn signed_events(prefix: &str, n: usize) -> Vec<(Vec<u8>, String)> {
    let ts = Utc::now().timestamp().to_string();
    (0..n)
        .map(|i| {
            let body = capture_complete_event(&format!("{prefix}-{i}"));
            let signature = format!("{ts}, {}", sign(WEBHOOK_SECRET, &ts, &body));
            (body, signature)
        })
        .collect()
}

/// Posts one event; fails unless it is answered 200 and not as a duplicate.
async fn post(
    http: &reqwest::Client,
    url: &str,
    (body, signature): (Vec<u8>, String),
) -> Result<(), String> {
    let response = http
        .post(url)
        .header("content-type", "application/json")
        .header(SIGNATURE_HEADER, signature)
        .timeout(POST_TIMEOUT)
        .body(body)
        .send()
        .await
        .map_err(|e| format!("webhook POST: {e}"))?;
    let status = response.status();
    let reply = response
        .bytes()
        .await
        .map_err(|e| format!("webhook reply: {e}"))?;
    let stored = serde_json::from_slice::<serde_json::Value>(&reply)
        .map(|v| v["duplicate"] == json!(false))
        .unwrap_or(false);
    if status != reqwest::StatusCode::OK || !stored {
        return Err(format!(
            "webhook not stored: {status} {}",
            String::from_utf8_lossy(&reply)
        ));
    }
    Ok(())
}

// === instructions: the server under callgrind ===

/// The profile of one server process that took `WARM_UP + events` events.
async fn callgrind(me: &str, server: Server, events: usize) -> Result<callgrind::Profile, String> {
    let out = callgrind::out_file("webhook_intake", server.name(), events as u64);
    let child = callgrind::command(&out, &[me, "--serve", server.name()]);
    let prefix = format!("cg-{}-{events}", server.name());
    let (served, measured) = ServeChild::warmed_up(child, server, &prefix, events).await?;
    let pid = served.child.id();
    tokio::task::spawn_blocking(move || callgrind::start_counting(pid))
        .await
        .map_err(|e| format!("callgrind_control: {e}"))??;
    served.post_all(&measured, 1).await?;
    let output = served.stop().await?;
    callgrind::Profile::from_output(&output, out, server.name())
}

// === server CPU per event: the same child, natively ===

/// Microseconds of the `--serve` child's CPU per event, over [`CPU_EVENTS`] events
/// posted `in_flight` at a time after the warm-up.
async fn native_cpu(
    me: &str,
    server: Server,
    round: usize,
    in_flight: usize,
) -> Result<f64, String> {
    let mut command = std::process::Command::new(me);
    command.args(["--serve", server.name()]);
    let prefix = format!("cpu-{}-{in_flight}-{round}", server.name());
    let (served, measured) = ServeChild::warmed_up(command, server, &prefix, CPU_EVENTS).await?;
    let pid = served.child.id();
    let on_cpu = || on_cpu::threads_on_cpu_ns(pid).ok_or("no schedstat for the server");
    let before = on_cpu()?;
    served.post_all(&measured, in_flight).await?;
    let after = on_cpu()?;
    let output = served.stop().await?;
    if !output.status.success() {
        return Err(format!(
            "the {} server failed: {}",
            server.name(),
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(after.saturating_sub(before) as f64 / 1e3 / CPU_EVENTS as f64)
}

/// A `--serve` child (under valgrind or not) and a client keeping its connections
/// alive.
struct ServeChild {
    child: std::process::Child,
    url: String,
    http: reqwest::Client,
}

impl ServeChild {
    /// Spawns `command` and waits for the address it prints.
    async fn start(mut command: std::process::Command, server: Server) -> Result<Self, String> {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run the {} server: {e}", server.name()))?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let addr = tokio::task::spawn_blocking(move || {
            BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .find_map(|l| l.strip_prefix("listening ").map(str::to_owned))
        })
        .await
        .map_err(|e| format!("reader: {e}"))?
        .ok_or_else(|| format!("the {} server did not start", server.name()))?;
        // why: every connection stays open between requests; one at a time, every
        // request goes over the same one.
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(IN_FLIGHT)
            .build()
            .map_err(|e| format!("client: {e}"))?;
        Ok(Self {
            child,
            url: format!("http://{addr}{WEBHOOK_PATH}"),
            http,
        })
    }

    /// [`start`](Self::start), then [`WARM_UP`] events posted; returns it with
    /// `events` more signed ones (ids `<prefix>-<i>`) for the measure.
    async fn warmed_up(
        command: std::process::Command,
        server: Server,
        prefix: &str,
        events: usize,
    ) -> Result<(Self, Vec<(Vec<u8>, String)>), String> {
        let served = Self::start(command, server).await?;
        let mut signed = signed_events(prefix, WARM_UP + events);
        let measured = signed.split_off(WARM_UP);
        served.post_all(&signed, 1).await?;
        Ok((served, measured))
    }

    /// Posts `events`, `in_flight` at a time.
    async fn post_all(&self, events: &[(Vec<u8>, String)], in_flight: usize) -> Result<(), String> {
        futures::stream::iter(events.iter().cloned())
            .map(|event| post(&self.http, &self.url, event))
            .buffer_unordered(in_flight)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    /// Closes its stdin, which stops it, and waits for it to exit.
    async fn stop(self) -> Result<std::process::Output, String> {
        let Self {
            mut child, http, ..
        } = self;
        // why: the keep-alive connection closes first, or the graceful shutdown
        // waits for it.
        drop(http);
        drop(child.stdin.take());
        tokio::task::spawn_blocking(move || child.wait_with_output())
            .await
            .map_err(|e| format!("waiter: {e}"))?
            .map_err(|e| format!("server process: {e}"))
    }
}

/// The `--serve` child: one server on a current-thread runtime, its address on stdout,
/// until stdin closes.
fn serve_until_stdin_closes(server: Server) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return fail(&format!("no runtime: {e}")),
    };
    let result = runtime.block_on(async move {
        let stop = CancellationToken::new();
        let (addr, running) = start(server, stop.clone()).await?;
        println!("listening {addr}");
        let _ = std::io::stdout().flush();
        // why: a blocking read on its own thread; EOF (the driver closed stdin) stops.
        let closed = tokio::task::spawn_blocking(|| {
            let mut sink = String::new();
            while std::io::stdin().read_line(&mut sink).is_ok_and(|n| n > 0) {}
        });
        let _ = closed.await;
        stop.cancel();
        match tokio::time::timeout(Duration::from_secs(60), running).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(e))) => Err(e),
            Ok(Err(e)) => Err(format!("server task: {e}")),
            Err(_) => Err("the server did not stop within 60 s".into()),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

type Running = tokio::task::JoinHandle<Result<(), String>>;

/// Starts `server` on an ephemeral loopback port; it runs until `stop` is cancelled.
async fn start(server: Server, stop: CancellationToken) -> Result<(SocketAddr, Running), String> {
    match server {
        Server::Gateway => {
            let mut settings = Settings::for_upstream("http://127.0.0.1:9", "sk_bench_unused");
            settings.webhook_secrets = vec![SecretString::from(WEBHOOK_SECRET)];
            // why: backfill would call the (absent) DR; intake is what is measured.
            settings.backfill_enabled = false;
            let app = Application::build(settings)
                .await
                .map_err(|e| format!("gateway starts: {e}"))?;
            let addr = app.http_addr();
            let token = app.shutdown_token();
            let running = tokio::spawn(async move {
                app.run_until_stopped()
                    .await
                    .map_err(|e| format!("gateway: {e}"))
            });
            // why: the gateway stops through its own token (graceful shutdown).
            tokio::spawn(async move {
                stop.cancelled().await;
                token.cancel();
            });
            Ok((addr, running))
        }
        Server::Bare => {
            let router = axum::Router::new().route(
                WEBHOOK_PATH,
                axum::routing::post(|body: bytes::Bytes| async move {
                    // The body is read (and looked at) before the answer.
                    std::hint::black_box(body.len());
                    (
                        [("content-type", "application/json")],
                        r#"{"received":true,"duplicate":false}"#,
                    )
                }),
            );
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .map_err(|e| format!("bare server binds: {e}"))?;
            let addr = listener
                .local_addr()
                .map_err(|e| format!("bare server address: {e}"))?;
            let running = tokio::spawn(async move {
                axum::serve(listener, router)
                    .with_graceful_shutdown(async move { stop.cancelled().await })
                    .await
                    .map_err(|e| format!("bare server: {e}"))
            });
            Ok((addr, running))
        }
    }
}

// === accepted per second ===

/// Events per second of one round against a fresh `server` in this process.
async fn throughput_round(server: Server, round: usize) -> Result<f64, String> {
    let stop = CancellationToken::new();
    let (addr, running) = start(server, stop.clone()).await?;
    let url = format!("http://{addr}{WEBHOOK_PATH}");
    let http = reqwest::Client::new();
    let events = signed_events(&format!("tp-{}-{round}", server.name()), THROUGHPUT_EVENTS);
    let started = Instant::now();
    futures::stream::iter(events)
        .map(|event| post(&http, &url, event))
        .buffer_unordered(IN_FLIGHT)
        .try_collect::<Vec<()>>()
        .await?;
    let elapsed = started.elapsed();
    stop.cancel();
    match tokio::time::timeout(Duration::from_secs(10), running).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => return Err(e),
        Ok(Err(e)) => return Err(format!("server task: {e}")),
        Err(_) => return Err("the server did not stop within 10 s".into()),
    }
    Ok(THROUGHPUT_EVENTS as f64 / elapsed.as_secs_f64())
}
