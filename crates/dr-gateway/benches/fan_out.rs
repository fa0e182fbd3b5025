//! Fan-out benchmark: what one event costs per `EventStream.Subscribe` subscriber, and
//! what idle subscribers cost, beside a bare tonic broadcast stream. Run with
//! `cargo bench -p dr-gateway --bench fan_out` (or `bash scripts/bench.sh fan_out`).
//!
//! Why: the events issue promises that "an event is parsed and protobuf-encoded once,
//! not once per subscriber; a thousand idle subscribers cost little memory and no
//! CPU", and the performance issue sets "idle subscriber ≤ 8 KiB RSS; fan-out per
//! delivery ≤ 1.3× bare tonic at 10,000 subscribers". Timed unit tests are banned, so
//! this binary prints the figures, each next to a baseline measured in the same run:
//!
//! 1. **Encoding.** Encoding the `SubscribeResponse` for each of 1000 subscribers
//!    (baseline) vs handing each the shared pre-encoded bytes
//!    ([`SubscribeItem::Shared`]), as the Subscribe codec does.
//! 2. **Idle subscribers.** For 1 / 1,000 / 10,000 subscribers and each server —
//!    the gateway and the bare tonic stream (a minimal server-streaming service of the
//!    same crates, no gateway code, writing one event's pre-encoded bytes from a tokio
//!    broadcast channel through tonic's prost codec; with tonic's 8 KiB encode buffer
//!    and with the gateway's 1 KiB) — a fresh server process (`--serve`); its RSS, CPU
//!    time and context switches over an idle window with no stream, then with every
//!    Subscribe stream open over loopback gRPC ([`STREAMS_PER_CONNECTION`] per HTTP/2
//!    connection; heartbeat 60 s, so none fires).
//! 3. **Delivery.** Then [`EVENTS`] events published (to the gateway as signed
//!    webhooks posted to its HTTP listener; to the bare server by a command on its
//!    stdin); time until every subscriber has every event, and the server's CPU per
//!    delivery, and per extra delivery over the 1-subscriber run (the publishing, e.g.
//!    the gateway's webhook intake, cancelled out).
//! 4. **Idle Consume members.** The gateway's RSS with no stream, then with
//!    [`CONSUME_MEMBERS`] Consume streams (group members) open and idle
//!    (`-- --consume-only` runs this part alone).
//! 5. **Instructions per delivery** (`-- --callgrind`, instead of the rest). Each
//!    server alone under `valgrind --tool=callgrind` with [`CALLGRIND_SUBSCRIBERS`]
//!    subscribers, a short and a long lockstep run; their difference per extra
//!    delivery, and where those instructions go (`callgrind_annotate`).
//!
//! The subscribers live in a **child process** (this binary with `--client`), and each
//! server in another, so a server's figures are its own; the client's cost is printed
//! apart. The client decodes only each event's cursor and id (prost skips the rest), so
//! delivery measures the server and the transport, not a client's `Struct` decoding.
//!
//! Every wait has a deadline, and the run fails (non-zero exit) unless every event was
//! published (every webhook acknowledged and stored) and every subscriber received
//! exactly every event.

use std::{
    hint::black_box,
    net::SocketAddr,
    process::ExitCode,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use chrono::Utc;
use dr_gateway::{
    app::Application,
    config::Settings,
    events::{Envelope, EventEncoder, StoredEvent},
    grpc::event_stream::{decode_payload, SubscribeItem},
    pb::v1 as pb,
    webhook::{signature::sign, SIGNATURE_HEADER, WEBHOOK_PATH},
};
use futures::{StreamExt as _, TryStreamExt as _};
use prost::Message as _;
use secrecy::SecretString;
use serde_json::{json, Value};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader, Lines},
    process::{Child, ChildStdout, Command},
    sync::Notify,
};
use tonic::transport::{Channel, Endpoint};

#[path = "support/callgrind.rs"]
// why: a module shared by the benches; this one does not repeat runs (median_run).
#[allow(dead_code)]
mod callgrind;
#[path = "support/on_cpu.rs"]
mod on_cpu;

/// Subscribers in the encoding comparison.
const SUBSCRIBERS: usize = 1000;
/// Subscribers of the server runs: each number with each server.
const SUBSCRIBER_COUNTS: [usize; 3] = [1, 1_000, 10_000];
/// The servers measured at each number of subscribers: the gateway, the bare tonic
/// stream with tonic's default encode buffer (8 KiB), and the bare stream with the
/// gateway's Subscribe buffer (`defaults::EVENT_STREAM_ENCODE_BUFFER`, 1 KiB).
const SERVERS: [ServerKind; 3] = [
    ServerKind::Gateway,
    ServerKind::Bare {
        encode_buffer: 8 * 1024,
    },
    ServerKind::Bare {
        encode_buffer: 1024,
    },
];
/// Streams per HTTP/2 connection (10,000 subscribers: 100 connections, so the
/// processes need ~100 file descriptors each, not 10,000; the gateway sets no
/// per-connection stream limit: tonic passes `None` over hyper's default of 200).
const STREAMS_PER_CONNECTION: usize = 100;
/// Subscribers of the instruction counts (`-- --callgrind`).
const CALLGRIND_SUBSCRIBERS: usize = 10_000;
/// Events of the short and the long callgrind run, published in lockstep.
const CALLGRIND_SHORT: usize = 5;
const CALLGRIND_LONG: usize = 15;
/// Longest a server under valgrind may take to exit and write its profile.
const CALLGRIND_EXIT_DEADLINE: Duration = Duration::from_secs(300);
/// Functions shown in each server's breakdown of one delivery.
const TOP_FUNCTIONS: usize = 15;
/// Idle Consume streams (group members) in the Consume memory point.
const CONSUME_MEMBERS: usize = 1000;
/// The client mode that opens idle Consume streams instead of Subscribe streams.
const CONSUME_MODE: &str = "consume";
/// Events published before measuring, with no stream open.
const WARM_UP_EVENTS: usize = 20;
/// Webhooks posted per delivery run.
const EVENTS: usize = 200;
/// Webhooks in flight at once (DR delivers concurrently).
const POST_CONCURRENCY: usize = 4;
/// Length of each idle measurement window.
const IDLE_WINDOW: Duration = Duration::from_secs(5);
/// Subscribe heartbeat; longer than the whole run, so none fires.
const HEARTBEAT: Duration = Duration::from_secs(60);
/// Timed rounds of the encoding comparison (the median is reported).
const ENCODE_ROUNDS: usize = 51;
/// Deadline for a server to start, and for the subscribers to open their streams
/// (generous: under valgrind a server is ~50× slower).
const OPEN_DEADLINE: Duration = Duration::from_secs(300);
/// Deadline for one delivery run (publishing and delivering).
const DELIVERY_DEADLINE: Duration = Duration::from_secs(600);
/// Longest the client child lives, whatever happens to the parent.
const CLIENT_LIFETIME: Duration = Duration::from_secs(1200);
/// Webhook signing secret of the benchmark gateway.
const WEBHOOK_SECRET: &str = "whsec_bench";
/// gRPC path of Subscribe.
const SUBSCRIBE_PATH: &str = "/digitalriver.gateway.v1.EventStream/Subscribe";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--client") {
        return client::main(&args[i + 1..]);
    }
    if let Some(i) = args.iter().position(|a| a == "--serve") {
        return serve::main(&args[i + 1..]);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    if args.iter().any(|a| a == "--callgrind") {
        return match runtime.block_on(count_instructions()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("fan_out: FAILED: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if args.iter().any(|a| a == "--consume-only") {
        return match runtime.block_on(consume_members()) {
            Ok(point) => {
                print_consume(&point);
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("fan_out: FAILED: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let encoding = bench_encoding();
    match runtime
        .block_on(async { Ok::<_, String>((bench_servers().await?, consume_members().await?)) })
    {
        Ok((points, consume)) => {
            print_report(&encoding, &points);
            print_consume(&consume);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("fan_out: FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}

/// An `order.charge.capture.complete` event as DR's "Capturing and cancelling charges"
/// page prints it, ~1 KB, with `id`.
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
    serde_json::to_vec(&event).expect("a JSON value serialises")
}

// === 1. encoding once vs per subscriber ===

/// Figures of the encoding comparison.
struct Encoding {
    /// Encoded `SubscribeResponse` size.
    bytes: usize,
    /// Parse + convert + encode, paid once per event.
    prepare_once: Duration,
    /// Encoding the message, per subscriber (baseline).
    encode_each: Duration,
    /// Handing out the shared bytes, per subscriber.
    shared: Duration,
}

fn bench_encoding() -> Encoding {
    let body = Bytes::from(capture_complete_event(
        "f275be0a-45fd-4160-8a31-b3274b6a4f8b",
    ));
    let encoder = EventEncoder::with_payload_decoder(Arc::new(decode_payload));
    let build = || {
        let env = Envelope::parse(body.clone()).expect("the event parses");
        StoredEvent::build(1, 1, Utc::now(), env, &encoder)
    };
    let stored = build();
    let event = stored.decode_event().expect("the stored event decodes");
    assert!(event.payload.is_some(), "the typed payload is filled");
    let msg = pb::SubscribeResponse {
        kind: Some(pb::subscribe_response::Kind::Event(event)),
        ..Default::default()
    };
    // Compare like with like: both ways put the same message, of the same size, on
    // the wire (the stored encoding writes `data_object` after the other fields, so
    // the bytes are in another order than prost's).
    let shared = SubscribeItem::Shared(stored.encoded_response.clone()).encode_to_vec();
    assert_eq!(
        shared.len(),
        msg.encode_to_vec().len(),
        "shared bytes are as long as the per-subscriber encoding"
    );
    assert_eq!(
        pb::SubscribeResponse::decode(shared.as_slice()).as_ref(),
        Ok(&msg),
        "shared bytes decode to the per-subscriber message"
    );

    let prepare_once = median_round(|| {
        black_box(build());
    });
    let mut buf = Vec::with_capacity(8192);
    // why: the baseline encodes a message every subscriber shares by reference (no
    // clone), the cheapest per-subscriber encoding there could be.
    let encode_each = median_round(|| {
        for _ in 0..SUBSCRIBERS {
            buf.clear();
            msg.encode(&mut buf).expect("buffer grows");
            black_box(&buf);
        }
    }) / SUBSCRIBERS as u32;
    // What the Subscribe stream does per subscriber: clone the `Bytes` handle, wrap
    // it, and let the codec copy it into its buffer.
    let shared = median_round(|| {
        for _ in 0..SUBSCRIBERS {
            buf.clear();
            let item = SubscribeItem::Shared(stored.encoded_response.clone());
            item.encode(&mut buf).expect("buffer grows");
            black_box(&buf);
        }
    }) / SUBSCRIBERS as u32;
    Encoding {
        bytes: stored.encoded_response.len(),
        prepare_once,
        encode_each,
        shared,
    }
}

/// Median duration of [`ENCODE_ROUNDS`] runs of `round`, after one warm-up run.
fn median_round(mut round: impl FnMut()) -> Duration {
    round();
    let mut times: Vec<Duration> = (0..ENCODE_ROUNDS)
        .map(|_| {
            let t = Instant::now();
            round();
            t.elapsed()
        })
        .collect();
    times.sort();
    times[times.len() / 2]
}

// === 2 and 3. the gateway and the bare tonic stream, each in its own process ===

/// How a delivery run publishes its events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pace {
    /// All at once, as fast as the server takes them (the gateway: [`POST_CONCURRENCY`]
    /// webhooks in flight): a stream may write several events in one go.
    Burst,
    /// One at a time, the next once every stream has the previous one: each event is
    /// written on its own, and the time each takes to reach every stream is its
    /// fan-out latency.
    Lockstep,
}

impl Pace {
    fn name(self) -> &'static str {
        match self {
            Self::Burst => "burst",
            Self::Lockstep => "lockstep",
        }
    }

    fn parse(s: &str) -> Result<Self, String> {
        match s {
            "burst" => Ok(Self::Burst),
            "lockstep" => Ok(Self::Lockstep),
            _ => Err(format!("unknown pace '{s}'")),
        }
    }
}

/// Which server a run measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ServerKind {
    /// The gateway (`Application`), events posted as signed webhooks.
    Gateway,
    /// The bare tonic broadcast stream with this encode buffer per stream (bytes).
    Bare { encode_buffer: usize },
}

impl ServerKind {
    fn args(self) -> Vec<String> {
        match self {
            Self::Gateway => vec!["gateway".into()],
            Self::Bare { encode_buffer } => vec!["bare".into(), encode_buffer.to_string()],
        }
    }

    fn label(self) -> String {
        match self {
            Self::Gateway => "dr-gateway".into(),
            Self::Bare { encode_buffer } => {
                format!("bare tonic stream, {} KiB buffer", encode_buffer / 1024)
            }
        }
    }
}

/// Figures of one server with one number of subscribers, from a fresh server process.
struct Point {
    server: ServerKind,
    subscribers: usize,
    /// The server over an idle window with no stream open.
    idle_empty: Window,
    /// The server over an idle window with every stream open.
    idle_subscribed: Window,
    /// The client child during the subscribed window.
    client_idle: Window,
    open_time: Duration,
    /// [`EVENTS`] events published as fast as the server takes them.
    burst: Delivery,
    /// [`EVENTS`] events published one at a time, each once every stream has the
    /// previous one.
    lockstep: Delivery,
}

impl Point {
    /// RSS growth per open idle stream, KiB.
    fn rss_per_subscriber(&self) -> f64 {
        (self.idle_subscribed.rss_kib as f64 - self.idle_empty.rss_kib as f64)
            / self.subscribers as f64
    }
}

/// Measures every (server, subscribers) point, each with a fresh server process, so
/// no run inherits another's freed memory.
async fn bench_servers() -> Result<Vec<Point>, String> {
    let http = reqwest::Client::new();
    let mut points = Vec::new();
    for &subscribers in &SUBSCRIBER_COUNTS {
        for server in SERVERS {
            eprintln!("fan_out: {} with {subscribers} subscribers", server.label());
            points.push(measure_point(&http, server, subscribers).await?);
        }
    }
    Ok(points)
}

async fn measure_point(
    http: &reqwest::Client,
    kind: ServerKind,
    subscribers: usize,
) -> Result<Point, String> {
    let mut server = Server::spawn(kind).await?;
    let target = Pid::Child(server.pid);

    // Warm the event path once before measuring (the bare server has no receiver yet:
    // its sends go nowhere, as the gateway's do without subscribers).
    server.publish(http, "warmup", WARM_UP_EVENTS).await?;

    let idle_empty = idle_window(&[target]).await?.remove(0);

    let opening = Instant::now();
    let mut clients = Clients::spawn(server.grpc_addr, subscribers, Pace::Burst)?;
    clients.expect("ready", OPEN_DEADLINE).await?;
    let open_time = opening.elapsed();

    let mut windows = idle_window(&[target, Pid::Child(clients.pid)]).await?;
    let client_idle = windows.remove(1);
    let idle_subscribed = windows.remove(0);

    let burst = deliver(http, &mut server, &mut clients, Pace::Burst).await?;
    clients.finish().await?;

    let mut clients = Clients::spawn(server.grpc_addr, subscribers, Pace::Lockstep)?;
    clients.expect("ready", OPEN_DEADLINE).await?;
    let lockstep = deliver(http, &mut server, &mut clients, Pace::Lockstep).await?;
    clients.finish().await?;
    server.stop().await?;
    Ok(Point {
        server: kind,
        subscribers,
        idle_empty,
        idle_subscribed,
        client_idle,
        open_time,
        burst,
        lockstep,
    })
}

/// A server child: this binary run as `--serve <kind>`.
struct Server {
    kind: ServerKind,
    child: Child,
    pid: u32,
    lines: Lines<BufReader<ChildStdout>>,
    grpc_addr: SocketAddr,
    /// The gateway's webhook URL (`None` for the bare server).
    webhook_url: Option<String>,
}

impl Server {
    async fn spawn(kind: ServerKind) -> Result<Self, String> {
        let exe = std::env::current_exe().map_err(|e| format!("own executable: {e}"))?;
        let mut command = Command::new(exe);
        command.arg("--serve").args(kind.args());
        Self::spawn_with(kind, command).await
    }

    /// Starts the server under `valgrind --tool=callgrind`, writing its profile to `out`.
    async fn spawn_under_callgrind(
        kind: ServerKind,
        out: &std::path::Path,
    ) -> Result<Self, String> {
        let exe = std::env::current_exe().map_err(|e| format!("own executable: {e}"))?;
        let exe = exe.to_string_lossy().into_owned();
        let mut args = vec![exe.as_str(), "--serve"];
        let kind_args = kind.args();
        args.extend(kind_args.iter().map(String::as_str));
        let mut command = Command::from(callgrind::command(out, &args));
        command.stderr(std::process::Stdio::piped());
        Self::spawn_with(kind, command).await
    }

    async fn spawn_with(kind: ServerKind, mut command: Command) -> Result<Self, String> {
        let mut child = command
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("start the server process: {e}"))?;
        let pid = child.id().ok_or("server process exited at once")?;
        let stdout = child.stdout.take().ok_or("server stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let words = expect_line(&mut lines, "listening", "the server", OPEN_DEADLINE).await?;
        let grpc_addr = words
            .first()
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| format!("no gRPC address from the server: {words:?}"))?;
        let webhook_url = words
            .get(1)
            .filter(|a| *a != "-")
            .map(|a| format!("http://{a}{WEBHOOK_PATH}"));
        Ok(Self {
            kind,
            child,
            pid,
            lines,
            grpc_addr,
            webhook_url,
        })
    }

    /// Publishes `n` events: signed webhooks posted to the gateway (returns each
    /// one's ack latency), or the bare server's broadcast (no latencies).
    async fn publish(
        &mut self,
        http: &reqwest::Client,
        prefix: &str,
        n: usize,
    ) -> Result<Vec<Duration>, String> {
        match (&self.webhook_url, self.kind) {
            (Some(url), ServerKind::Gateway) => post_events(http, url, prefix, n).await,
            (None, ServerKind::Bare { .. }) => {
                let stdin = self.child.stdin.as_mut().ok_or("server stdin")?;
                stdin
                    .write_all(format!("publish {n}\n").as_bytes())
                    .await
                    .map_err(|e| format!("writing to the server: {e}"))?;
                let words = expect_line(
                    &mut self.lines,
                    "published",
                    "the server",
                    DELIVERY_DEADLINE,
                )
                .await?;
                if words.first().and_then(|w| w.parse::<usize>().ok()) != Some(n) {
                    return Err(format!("the bare server published {words:?}, not {n}"));
                }
                Ok(Vec::new())
            }
            _ => Err(format!("{:?} has no way to publish", self.kind)),
        }
    }

    /// Closes the server's stdin and waits for it (and valgrind) to finish; returns
    /// its output for [`callgrind::Profile::from_output`].
    async fn stop_with_output(mut self) -> Result<std::process::Output, String> {
        drop(self.child.stdin.take());
        tokio::time::timeout(CALLGRIND_EXIT_DEADLINE, self.child.wait_with_output())
            .await
            .map_err(|_| format!("the server did not exit within {CALLGRIND_EXIT_DEADLINE:?}"))?
            .map_err(|e| format!("waiting for the server: {e}"))
    }

    /// Closes the server's stdin (its signal to stop) and waits for a clean exit.
    async fn stop(mut self) -> Result<(), String> {
        drop(self.child.stdin.take());
        let status = tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .map_err(|_| "the server did not exit within 10 s".to_owned())?
            .map_err(|e| format!("waiting for the server: {e}"))?;
        if !status.success() {
            return Err(format!("the server failed: {status}"));
        }
        Ok(())
    }
}

/// Waits for the next line of `lines` and checks it starts with `word`; returns the
/// rest of its words.
async fn expect_line(
    lines: &mut Lines<BufReader<ChildStdout>>,
    word: &str,
    who: &str,
    deadline: Duration,
) -> Result<Vec<String>, String> {
    let line = tokio::time::timeout(deadline, lines.next_line())
        .await
        .map_err(|_| format!("no '{word}' from {who} within {deadline:?}"))?
        .map_err(|e| format!("reading {who}: {e}"))?
        .ok_or_else(|| format!("{who} exited before '{word}'"))?;
    let mut words = line.split_whitespace().map(str::to_owned);
    if words.next().as_deref() != Some(word) {
        return Err(format!("expected '{word}' from {who}, got '{line}'"));
    }
    Ok(words.collect())
}

/// Posts `n` signed events with ids `<prefix>-<i>`, [`POST_CONCURRENCY`] at a time;
/// returns each one's ack latency. Fails unless every one is stored (200, not a
/// duplicate).
async fn post_events(
    http: &reqwest::Client,
    url: &str,
    prefix: &str,
    n: usize,
) -> Result<Vec<Duration>, String> {
    futures::stream::iter(0..n)
        .map(|i| async move {
            let body = capture_complete_event(&format!("{prefix}-{i}"));
            let ts = Utc::now().timestamp().to_string();
            let signature = format!("{ts}, {}", sign(WEBHOOK_SECRET, &ts, &body));
            let sent = Instant::now();
            let response = http
                .post(url)
                .header("content-type", "application/json")
                .header(SIGNATURE_HEADER, signature)
                .timeout(DELIVERY_DEADLINE)
                .body(body)
                .send()
                .await
                .map_err(|e| format!("webhook POST {prefix}-{i}: {e}"))?;
            let status = response.status();
            let reply: Value = response
                .json()
                .await
                .map_err(|e| format!("webhook reply {prefix}-{i}: {e}"))?;
            let latency = sent.elapsed();
            if status != reqwest::StatusCode::OK || reply["duplicate"] != json!(false) {
                return Err(format!("webhook {prefix}-{i} not stored: {status} {reply}"));
            }
            Ok(latency)
        })
        .buffered(POST_CONCURRENCY)
        .try_collect()
        .await
}

/// Figures of one delivery run.
struct Delivery {
    /// Events received, summed over subscribers.
    delivered: usize,
    /// From the first event published until the last was acknowledged (gateway:
    /// every POST answered; bare: every event handed to the broadcast channel).
    acked: Duration,
    /// From the first event published until every subscriber had every event.
    elapsed: Duration,
    /// The server's CPU time over the run.
    cpu: Cpu,
    /// The client process's CPU time over the run (shares the cores).
    client_cpu: Cpu,
    /// Webhook ack latency, p50 and p99 (the gateway only).
    acks: Option<(Duration, Duration)>,
    /// Lockstep runs: from publishing an event until every stream had it, p50 and
    /// p99.
    fan_out: Option<(Duration, Duration)>,
}

/// Publishes [`EVENTS`] events at `pace` and waits until every subscriber of `clients`
/// has them.
async fn deliver(
    http: &reqwest::Client,
    server: &mut Server,
    clients: &mut Clients,
    pace: Pace,
) -> Result<Delivery, String> {
    let target = Pid::Child(server.pid);
    let client = Pid::Child(clients.pid);
    let before = (ProcSample::read(target)?, ProcSample::read(client)?);
    clients.go().await?;
    let start = Instant::now();
    let mut fan_out = Vec::new();
    let mut acks = match pace {
        Pace::Burst => server.publish(http, "burst", clients.events).await?,
        Pace::Lockstep => {
            let mut acks = Vec::new();
            for k in 1..=clients.events {
                let sent = Instant::now();
                acks.extend(server.publish(http, &format!("step-{k}"), 1).await?);
                let remaining = DELIVERY_DEADLINE.saturating_sub(start.elapsed());
                let got = clients.expect("got", remaining).await?;
                if got.first().and_then(|n| n.parse::<usize>().ok()) != Some(k) {
                    return Err(format!("expected 'got {k}' from the clients, got {got:?}"));
                }
                fan_out.push(sent.elapsed());
            }
            acks
        }
    };
    let acked = start.elapsed();
    let remaining = DELIVERY_DEADLINE.saturating_sub(acked);
    clients.expect("delivered", remaining).await?;
    let elapsed = start.elapsed();
    let cpu = ProcSample::read(target)?.cpu_since(&before.0);
    let client_cpu = ProcSample::read(client)?.cpu_since(&before.1);
    let expected = clients.subscribers * clients.events;
    let counts = clients.expect("settled", Duration::from_secs(5)).await?;
    let delivered: usize = counts
        .first()
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("client reported no event count: {counts:?}"))?;
    if delivered != expected {
        return Err(format!(
            "{delivered} events delivered, expected {expected} ({} subscribers × {})",
            clients.subscribers, clients.events
        ));
    }
    acks.sort();
    fan_out.sort();
    Ok(Delivery {
        delivered,
        acked,
        elapsed,
        cpu,
        client_cpu,
        acks: (!acks.is_empty()).then(|| (percentile(&acks, 50), percentile(&acks, 99))),
        fan_out: (!fan_out.is_empty())
            .then(|| (percentile(&fan_out, 50), percentile(&fan_out, 99))),
    })
}

/// The `p`th percentile of sorted `xs` (nearest rank).
fn percentile(xs: &[Duration], p: usize) -> Duration {
    let rank = (xs.len() * p).div_ceil(100).max(1);
    xs[rank - 1]
}

// === the client child ===

/// The subscribers: this binary run as `--client`, reporting on its stdout.
struct Clients {
    child: Child,
    pid: u32,
    lines: Lines<BufReader<ChildStdout>>,
    subscribers: usize,
    /// Events each stream expects.
    events: usize,
}

impl Clients {
    /// Starts a child that opens `subscribers` streams to `grpc_addr`, each expecting
    /// [`EVENTS`] events.
    fn spawn(grpc_addr: SocketAddr, subscribers: usize, pace: Pace) -> Result<Self, String> {
        Self::spawn_mode(grpc_addr, subscribers, EVENTS, pace.name())
    }

    /// Starts a child in `mode` (a [`Pace`]'s name, or [`CONSUME_MODE`]) whose streams
    /// expect `events` events.
    fn spawn_mode(
        grpc_addr: SocketAddr,
        subscribers: usize,
        events: usize,
        mode: &str,
    ) -> Result<Self, String> {
        let exe = std::env::current_exe().map_err(|e| format!("own executable: {e}"))?;
        let mut child = Command::new(exe)
            .arg("--client")
            .arg(grpc_addr.to_string())
            .arg(subscribers.to_string())
            .arg(events.to_string())
            .arg(mode)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("start the client process: {e}"))?;
        let pid = child.id().ok_or("client process exited at once")?;
        let stdout = child.stdout.take().ok_or("client stdout")?;
        Ok(Self {
            child,
            pid,
            lines: BufReader::new(stdout).lines(),
            subscribers,
            events,
        })
    }

    /// Waits for the child's next line and checks it starts with `word`; returns the
    /// rest of its words.
    async fn expect(&mut self, word: &str, deadline: Duration) -> Result<Vec<String>, String> {
        expect_line(&mut self.lines, word, "the clients", deadline).await
    }

    /// Tells the child that publishing starts, so its delivery deadline runs.
    async fn go(&mut self) -> Result<(), String> {
        let stdin = self.child.stdin.as_mut().ok_or("client stdin")?;
        stdin
            .write_all(b"go\n")
            .await
            .map_err(|e| format!("writing to the clients: {e}"))
    }

    /// Waits for the child to exit successfully.
    async fn finish(mut self) -> Result<(), String> {
        drop(self.child.stdin.take());
        let status = tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .map_err(|_| "the clients did not exit within 10 s".to_owned())?
            .map_err(|e| format!("waiting for the clients: {e}"))?;
        if !status.success() {
            return Err(format!("the clients failed: {status}"));
        }
        Ok(())
    }
}

mod client {
    //! The `--client` side: opens the Subscribe streams and prints `ready <n>` once
    //! they are all open. When the parent writes `go` (it starts posting), prints
    //! `delivered <events>` as soon as every stream has received the expected number
    //! of events, then `settled <events>` a moment later (the exact count), or
    //! `incomplete ...` at its own deadline, shortly before the parent's. Exits early
    //! if its stdin closes (the parent is gone), and after
    //! [`CLIENT_LIFETIME`](super::CLIENT_LIFETIME) whatever happens.

    use super::*;

    /// `Event` as far as this client reads it; prost skips every other field.
    #[derive(Clone, PartialEq, prost::Message)]
    struct EventHead {
        #[prost(string, tag = "1")]
        cursor: String,
        #[prost(string, tag = "2")]
        id: String,
    }

    /// `SubscribeResponse` as far as this client reads it: heartbeats (field 2) are
    /// skipped.
    #[derive(Clone, PartialEq, prost::Message)]
    struct ResponseHead {
        #[prost(message, optional, tag = "1")]
        event: Option<EventHead>,
    }

    /// What the stream readers share.
    struct Progress {
        subscribers: usize,
        events: AtomicUsize,
        complete: AtomicUsize,
        failed: AtomicUsize,
        changed: Notify,
    }

    pub(super) fn main(args: &[String]) -> ExitCode {
        let (Some(addr), Some(Ok(subscribers)), Some(Ok(expected)), Some(mode)) = (
            args.first(),
            args.get(1).map(|s| s.parse::<usize>()),
            args.get(2).map(|s| s.parse::<usize>()),
            args.get(3),
        ) else {
            return usage();
        };
        let run = if mode == CONSUME_MODE {
            futures::FutureExt::boxed(consume_idle(addr, subscribers))
        } else {
            match Pace::parse(mode) {
                Ok(pace) => futures::FutureExt::boxed(run(addr, subscribers, expected, pace)),
                Err(_) => return usage(),
            }
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let result = runtime.block_on(async {
            tokio::select! {
                r = run => r,
                () = tokio::time::sleep(CLIENT_LIFETIME) => Err("lifetime exceeded".into()),
            }
        });
        // why: the stdin reader blocks a thread; don't wait for it.
        runtime.shutdown_background();
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("fan_out --client: {e}");
                ExitCode::FAILURE
            }
        }
    }

    fn usage() -> ExitCode {
        eprintln!(
            "usage: fan_out --client <grpc addr> <streams> <events> <burst|lockstep|consume>"
        );
        ExitCode::FAILURE
    }

    /// Opens `members` Consume streams (group members, [`STREAMS_PER_CONNECTION`] per
    /// group and per connection), waits for each one's `Started`, prints `ready <n>`
    /// and keeps them open and idle until stdin closes.
    async fn consume_idle(addr: &str, members: usize) -> Result<(), String> {
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| format!("endpoint: {e}"))?;
        let mut channels = Vec::new();
        for _ in 0..members.div_ceil(STREAMS_PER_CONNECTION) {
            channels.push(
                endpoint
                    .connect()
                    .await
                    .map_err(|e| format!("connect to {addr}: {e}"))?,
            );
        }
        let opens = (0..members).map(|i| {
            let channel = channels[i % channels.len()].clone();
            async move {
                let (requests, rx) = tokio::sync::mpsc::channel(1);
                let start = pb::ConsumeRequest {
                    start: Some(pb::ConsumeStart {
                        group_id: format!("idle-{}", i / STREAMS_PER_CONNECTION),
                        member_name: format!("member-{i}"),
                        create: Some(pb::ConsumerGroupSettings::default()),
                        ..Default::default()
                    }),
                    ..Default::default()
                };
                requests
                    .send(start)
                    .await
                    .map_err(|_| "request channel closed".to_owned())?;
                let mut stream = pb::event_stream_client::EventStreamClient::new(channel)
                    .consume(tokio_stream::wrappers::ReceiverStream::new(rx))
                    .await
                    .map_err(|e| format!("consume: {e}"))?
                    .into_inner();
                loop {
                    match stream.message().await {
                        Ok(Some(pb::ConsumeResponse {
                            kind: Some(pb::consume_response::Kind::Started(_)),
                            ..
                        })) => return Ok::<_, String>((requests, stream)),
                        Ok(Some(_)) => {}
                        Ok(None) => return Err("the stream ended before Started".into()),
                        Err(e) => return Err(format!("consume stream: {e}")),
                    }
                }
            }
        });
        let open: Vec<_> = futures::stream::iter(opens)
            .buffer_unordered(64)
            .try_collect()
            .await?;
        println!("ready {}", open.len());
        let mut stdin = BufReader::new(tokio::io::stdin()).lines();
        while let Ok(Some(_)) = stdin.next_line().await {}
        drop(open);
        Ok(())
    }

    async fn run(
        addr: &str,
        subscribers: usize,
        expected: usize,
        pace: Pace,
    ) -> Result<(), String> {
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| format!("endpoint: {e}"))?;
        let mut channels = Vec::new();
        for _ in 0..subscribers.div_ceil(STREAMS_PER_CONNECTION) {
            channels.push(
                endpoint
                    .connect()
                    .await
                    .map_err(|e| format!("connect to {addr}: {e}"))?,
            );
        }
        let progress = Arc::new(Progress {
            subscribers,
            events: AtomicUsize::new(0),
            complete: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
            changed: Notify::new(),
        });
        let opens = (0..subscribers).map(|i| open(channels[i % channels.len()].clone()));
        let streams: Vec<_> = futures::stream::iter(opens)
            .buffer_unordered(64)
            .try_collect()
            .await?;
        for stream in streams {
            tokio::spawn(count_events(stream, expected, progress.clone()));
        }
        println!("ready {subscribers}");
        let mut stdin = BufReader::new(tokio::io::stdin()).lines();
        match stdin.next_line().await {
            Ok(Some(line)) if line == "go" => {}
            other => return Err(format!("expected 'go' from the parent, got {other:?}")),
        }
        let deadline = DELIVERY_DEADLINE.saturating_sub(Duration::from_secs(2));
        let all_delivered = async {
            if pace == Pace::Lockstep {
                // One event at a time: the parent publishes the next once every
                // stream has this one.
                for k in 1..=expected {
                    reached(&progress, k * subscribers).await?;
                    println!("got {k}");
                }
            }
            all_complete(&progress, subscribers).await
        };
        if let Err(e) = tokio::time::timeout(deadline, all_delivered)
            .await
            .unwrap_or_else(|_| Err(format!("deadline of {deadline:?} passed")))
        {
            println!(
                "incomplete: {e}; {} of {subscribers} streams complete, {} events in all",
                progress.complete.load(Ordering::SeqCst),
                progress.events.load(Ordering::SeqCst)
            );
            return Err(e);
        }
        println!("delivered {}", progress.events.load(Ordering::SeqCst));
        // why: an event delivered twice, or one too many, lands after the last stream
        // completed; give it a moment to show before the exact count.
        tokio::time::sleep(Duration::from_millis(200)).await;
        println!("settled {}", progress.events.load(Ordering::SeqCst));
        Ok(())
    }

    /// Resolves once the streams have received `events` in all; fails if one broke.
    async fn reached(progress: &Progress, events: usize) -> Result<(), String> {
        loop {
            let changed = progress.changed.notified();
            let failed = progress.failed.load(Ordering::SeqCst);
            if failed > 0 {
                return Err(format!("{failed} streams failed"));
            }
            if progress.events.load(Ordering::SeqCst) >= events {
                return Ok(());
            }
            changed.await;
        }
    }

    /// Resolves once every stream has the expected events; fails if one broke.
    async fn all_complete(progress: &Progress, subscribers: usize) -> Result<(), String> {
        loop {
            let changed = progress.changed.notified();
            let failed = progress.failed.load(Ordering::SeqCst);
            if failed > 0 {
                return Err(format!("{failed} streams failed"));
            }
            if progress.complete.load(Ordering::SeqCst) == subscribers {
                return Ok(());
            }
            changed.await;
        }
    }

    async fn open(channel: Channel) -> Result<tonic::Streaming<ResponseHead>, String> {
        let mut grpc = tonic::client::Grpc::new(channel);
        grpc.ready()
            .await
            .map_err(|e| format!("channel not ready: {e}"))?;
        let request = pb::SubscribeRequest {
            heartbeat_interval: Some(
                prost_types::Duration::try_from(HEARTBEAT).expect("60 s is a valid duration"),
            ),
            ..Default::default()
        };
        let codec = tonic_prost::ProstCodec::<pb::SubscribeRequest, ResponseHead>::default();
        let path = http::uri::PathAndQuery::from_static(SUBSCRIBE_PATH);
        let response = grpc
            .server_streaming(tonic::Request::new(request), path, codec)
            .await
            .map_err(|e| format!("subscribe: {e}"))?;
        Ok(response.into_inner())
    }

    async fn count_events(
        mut stream: tonic::Streaming<ResponseHead>,
        expected: usize,
        progress: Arc<Progress>,
    ) {
        let mut seen = 0;
        loop {
            match stream.message().await {
                Ok(Some(ResponseHead { event: Some(e) })) if !e.cursor.is_empty() => {
                    black_box(&e.id);
                    seen += 1;
                    let events = progress.events.fetch_add(1, Ordering::SeqCst) + 1;
                    if seen == expected {
                        progress.complete.fetch_add(1, Ordering::SeqCst);
                        progress.changed.notify_one();
                    } else if events.is_multiple_of(progress.subscribers) {
                        // As many events as streams: maybe every stream has one more
                        // (what a lockstep run waits for).
                        progress.changed.notify_one();
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) => return,
                Err(_) => {
                    progress.failed.fetch_add(1, Ordering::SeqCst);
                    progress.changed.notify_one();
                    return;
                }
            }
        }
    }
}

// === 4. idle Consume streams ===

/// The gateway's RSS with no stream, then with [`CONSUME_MEMBERS`] idle Consume
/// streams (group members, 100 per group) open.
struct ConsumePoint {
    idle_empty: Window,
    idle_members: Window,
}

async fn consume_members() -> Result<ConsumePoint, String> {
    eprintln!("fan_out: dr-gateway with {CONSUME_MEMBERS} idle Consume members");
    let server = Server::spawn(ServerKind::Gateway).await?;
    let target = Pid::Child(server.pid);
    let idle_empty = idle_window(&[target]).await?.remove(0);
    let mut members = Clients::spawn_mode(server.grpc_addr, CONSUME_MEMBERS, EVENTS, CONSUME_MODE)?;
    members.expect("ready", OPEN_DEADLINE).await?;
    let idle_members = idle_window(&[target]).await?.remove(0);
    members.finish().await?;
    server.stop().await?;
    Ok(ConsumePoint {
        idle_empty,
        idle_members,
    })
}

fn print_consume(point: &ConsumePoint) {
    let per_member = (point.idle_members.rss_kib as f64 - point.idle_empty.rss_kib as f64)
        / CONSUME_MEMBERS as f64;
    println!();
    println!(
        "gateway RSS per idle Consume member ({CONSUME_MEMBERS} members, 100 per group): \
         {per_member:+.1} KiB ({:.1} → {:.1} MiB); {} over {IDLE_WINDOW:?} with them",
        point.idle_empty.rss_kib as f64 / 1024.0,
        point.idle_members.rss_kib as f64 / 1024.0,
        point.idle_members.cpu,
    );
}

// === 5. instructions per delivery (callgrind) ===

/// Instructions per delivery of each server at [`CALLGRIND_SUBSCRIBERS`]: the server
/// process alone under callgrind, a short and a long lockstep run, counting from the
/// moment every stream is open ([`callgrind::start_counting`]), and
/// `(long - short) / ((LONG - SHORT) × subscribers)`: shutdown cancels out; the
/// publishing (the gateway's webhook intake) is in it, spread over the subscribers.
async fn count_instructions() -> Result<(), String> {
    if !callgrind::installed() {
        return Err("valgrind is not installed (apt-get install valgrind)".into());
    }
    let http = reqwest::Client::new();
    let units = ((CALLGRIND_LONG - CALLGRIND_SHORT) * CALLGRIND_SUBSCRIBERS) as u64;
    let mut lines = Vec::new();
    let mut breakdowns = Vec::new();
    for kind in SERVERS {
        let mut runs = Vec::new();
        for events in [CALLGRIND_SHORT, CALLGRIND_LONG] {
            eprintln!(
                "fan_out: callgrind, {} with {CALLGRIND_SUBSCRIBERS} subscribers, {events} events",
                kind.label()
            );
            runs.push(callgrind_run(&http, kind, events).await?);
        }
        let long = runs.pop().ok_or("no long run")?;
        let short = runs.pop().ok_or("no short run")?;
        let per_delivery = (long.instructions as f64 - short.instructions as f64) / units as f64;
        breakdowns.push((
            kind.label(),
            callgrind::breakdown(&short, &long, units, TOP_FUNCTIONS)?,
        ));
        short.finish();
        long.finish();
        lines.push((kind.label(), per_delivery));
    }
    println!();
    println!(
        "fan_out --callgrind: {CALLGRIND_SUBSCRIBERS} subscribers, lockstep runs of \
         {CALLGRIND_SHORT} and {CALLGRIND_LONG} events, server process only"
    );
    let gateway = lines.first().map_or(f64::NAN, |l| l.1);
    for (label, per_delivery) in &lines {
        println!(
            "instructions per delivery, {label}: {per_delivery:.0} (gateway / this: {:.2})",
            gateway / per_delivery
        );
    }
    for (label, breakdown) in breakdowns {
        println!();
        println!("where one delivery's instructions go, {label}:");
        println!("{breakdown}");
    }
    Ok(())
}

/// One server under callgrind: its warm-up, [`CALLGRIND_SUBSCRIBERS`] streams opened,
/// `events` published in lockstep, every stream checked, then the profile.
async fn callgrind_run(
    http: &reqwest::Client,
    kind: ServerKind,
    events: usize,
) -> Result<callgrind::Profile, String> {
    let out = callgrind::out_file("fan_out", &kind.args().join("-"), events as u64);
    let mut server = Server::spawn_under_callgrind(kind, &out).await?;
    server.publish(http, "warmup", WARM_UP_EVENTS).await?;
    let mut clients = Clients::spawn_mode(
        server.grpc_addr,
        CALLGRIND_SUBSCRIBERS,
        events,
        Pace::Lockstep.name(),
    )?;
    clients.expect("ready", OPEN_DEADLINE).await?;
    // why: count only the deliveries (and shutdown, which cancels out): start-up's
    // count differs between runs by millions of instructions (support/callgrind.rs).
    let pid = server.pid;
    tokio::task::spawn_blocking(move || callgrind::start_counting(pid))
        .await
        .map_err(|e| format!("callgrind_control: {e}"))??;
    deliver(http, &mut server, &mut clients, Pace::Lockstep).await?;
    clients.finish().await?;
    let output = server.stop_with_output().await?;
    callgrind::Profile::from_output(&output, out, &kind.label())
}

mod serve {
    //! The `--serve` side: `--serve gateway` runs the gateway (events arrive as signed
    //! webhooks on its HTTP listener); `--serve bare <encode buffer>` runs the bare
    //! baseline, a minimal tonic server-streaming service of the same crates and no
    //! gateway code: every Subscribe stream reads a tokio broadcast channel of one
    //! event's pre-encoded `SubscribeResponse` bytes and writes them through tonic's
    //! prost codec as they are (what the gateway's Subscribe codec does with its shared
    //! bytes), with the given encode buffer per stream. Prints `listening <grpc addr>
    //! <http addr or ->`; the bare server then answers `publish <n>` on stdin with
    //! `published <n>` once it has broadcast `n` events. Both stop when stdin closes.

    use super::*;
    use bytes::BufMut;
    use prost::encoding::{DecodeContext, WireType};
    use tokio::sync::broadcast;
    use tonic::codegen::{http, Body, BoxFuture, Service, StdError};

    /// Broadcast slots: more than one delivery run's events, so no stream can lag
    /// (a lagging stream would end with an error and fail the run).
    const CHANNEL_CAPACITY: usize = 4 * EVENTS;
    /// tonic's default yield threshold, the gateway's too.
    const YIELD_THRESHOLD: usize = 32 * 1024;

    pub(super) fn main(args: &[String]) -> ExitCode {
        let kind = match args {
            [kind, ..] if kind == "gateway" => ServerKind::Gateway,
            [kind, buffer, ..] if kind == "bare" => match buffer.parse() {
                Ok(encode_buffer) => ServerKind::Bare { encode_buffer },
                Err(_) => return usage(),
            },
            _ => return usage(),
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let result = runtime.block_on(async {
            match kind {
                ServerKind::Gateway => gateway().await,
                ServerKind::Bare { encode_buffer } => bare(encode_buffer).await,
            }
        });
        // why: the stdin reader blocks a thread; don't wait for it.
        runtime.shutdown_background();
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("fan_out --serve: {e}");
                ExitCode::FAILURE
            }
        }
    }

    fn usage() -> ExitCode {
        eprintln!("usage: fan_out --serve gateway | fan_out --serve bare <encode buffer bytes>");
        ExitCode::from(2)
    }

    async fn gateway() -> Result<(), String> {
        let mut settings = Settings::for_upstream("http://127.0.0.1:9", "sk_bench_unused");
        settings.webhook_secrets = vec![SecretString::from(WEBHOOK_SECRET)];
        let app = Application::build(settings)
            .await
            .map_err(|e| format!("gateway starts: {e}"))?;
        println!("listening {} {}", app.grpc_addr(), app.http_addr());
        let shutdown = app.shutdown_token();
        let server = tokio::spawn(app.run_until_stopped());
        let mut stdin = BufReader::new(tokio::io::stdin()).lines();
        while let Ok(Some(_)) = stdin.next_line().await {}
        shutdown.cancel();
        match tokio::time::timeout(Duration::from_secs(10), server).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(e))) => Err(format!("gateway failed: {e}")),
            Ok(Err(e)) => Err(format!("gateway task: {e}")),
            Err(_) => Err("gateway did not stop within 10 s".into()),
        }
    }

    async fn bare(encode_buffer: usize) -> Result<(), String> {
        let (events, _) = broadcast::channel::<Bytes>(CHANNEL_CAPACITY);
        let frame = bare_event_bytes();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| format!("bind: {e}"))?;
        let addr = listener.local_addr().map_err(|e| format!("address: {e}"))?;
        let service = BareEventStream {
            events: events.clone(),
            encode_buffer,
        };
        let stop = tokio_util::sync::CancellationToken::new();
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(
                    // why: as the gateway's listener does; without it Nagle holds
                    // back a lone small frame until the client's delayed ACK.
                    tokio_stream::wrappers::TcpListenerStream::new(listener).map(|stream| {
                        let stream = stream?;
                        stream.set_nodelay(true)?;
                        Ok::<_, std::io::Error>(stream)
                    }),
                    stop.clone().cancelled_owned(),
                ),
        );
        println!("listening {addr} -");
        let mut stdin = BufReader::new(tokio::io::stdin()).lines();
        while let Ok(Some(line)) = stdin.next_line().await {
            let Some(n) = line
                .strip_prefix("publish ")
                .and_then(|n| n.trim().parse::<usize>().ok())
            else {
                return Err(format!("unknown command '{line}'"));
            };
            for _ in 0..n {
                // why: with no stream open (the warm-up) the send has no receiver;
                // the event goes nowhere, as the gateway's do without subscribers.
                let _ = events.send(frame.clone());
            }
            println!("published {n}");
        }
        stop.cancel();
        match tokio::time::timeout(Duration::from_secs(10), server).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(e))) => Err(format!("bare server failed: {e}")),
            Ok(Err(e)) => Err(format!("bare server task: {e}")),
            Err(_) => Err("bare server did not stop within 10 s".into()),
        }
    }

    /// One frame's bytes, written as they are: the shared `SubscribeResponse`.
    #[derive(Debug, Default, Clone, PartialEq)]
    struct Frame(Bytes);

    impl prost::Message for Frame {
        fn encode_raw(&self, buf: &mut impl BufMut) {
            buf.put_slice(&self.0);
        }

        fn merge_field(
            &mut self,
            tag: u32,
            wire_type: WireType,
            buf: &mut impl bytes::Buf,
            ctx: DecodeContext,
        ) -> Result<(), prost::DecodeError> {
            prost::encoding::skip_field(wire_type, tag, buf, ctx)
        }

        fn encoded_len(&self) -> usize {
            self.0.len()
        }

        fn clear(&mut self) {
            self.0.clear();
        }
    }

    /// tonic's prost codec with `encode_buffer` bytes of encode buffer per stream.
    #[derive(Debug, Clone, Copy)]
    struct BareCodec {
        encode_buffer: usize,
    }

    impl tonic::codec::Codec for BareCodec {
        type Encode = Frame;
        type Decode = pb::SubscribeRequest;
        type Encoder = tonic_prost::ProstEncoder<Frame>;
        type Decoder = tonic_prost::ProstDecoder<pb::SubscribeRequest>;

        fn encoder(&mut self) -> Self::Encoder {
            tonic_prost::ProstEncoder::new(tonic::codec::BufferSettings::new(
                self.encode_buffer,
                YIELD_THRESHOLD,
            ))
        }

        fn decoder(&mut self) -> Self::Decoder {
            tonic_prost::ProstDecoder::default()
        }
    }

    /// Subscribe as the bare baseline serves it: one broadcast receiver per stream.
    struct BareSubscribe(broadcast::Sender<Bytes>);

    impl tonic::server::ServerStreamingService<pb::SubscribeRequest> for BareSubscribe {
        type Response = Frame;
        type ResponseStream = futures::stream::BoxStream<'static, Result<Frame, tonic::Status>>;
        type Future = BoxFuture<tonic::Response<Self::ResponseStream>, tonic::Status>;

        fn call(&mut self, _request: tonic::Request<pb::SubscribeRequest>) -> Self::Future {
            let frames = futures::stream::unfold(self.0.subscribe(), |mut rx| async move {
                match rx.recv().await {
                    Ok(bytes) => Some((Ok(Frame(bytes)), rx)),
                    Err(broadcast::error::RecvError::Lagged(n)) => Some((
                        Err(tonic::Status::data_loss(format!("{n} events dropped"))),
                        rx,
                    )),
                    Err(broadcast::error::RecvError::Closed) => None,
                }
            });
            let frames: Self::ResponseStream = Box::pin(frames);
            Box::pin(async move { Ok(tonic::Response::new(frames)) })
        }
    }

    /// The bare EventStream service: Subscribe only.
    #[derive(Debug, Clone)]
    struct BareEventStream {
        events: broadcast::Sender<Bytes>,
        encode_buffer: usize,
    }

    impl tonic::server::NamedService for BareEventStream {
        const NAME: &'static str = "digitalriver.gateway.v1.EventStream";
    }

    impl<B> Service<http::Request<B>> for BareEventStream
    where
        B: Body + Send + 'static,
        B::Error: Into<StdError> + Send + 'static,
    {
        type Response = http::Response<tonic::body::Body>;
        type Error = std::convert::Infallible;
        type Future = BoxFuture<Self::Response, Self::Error>;

        fn poll_ready(
            &mut self,
            _cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(), Self::Error>> {
            std::task::Poll::Ready(Ok(()))
        }

        fn call(&mut self, req: http::Request<B>) -> Self::Future {
            let codec = BareCodec {
                encode_buffer: self.encode_buffer,
            };
            let subscribe = BareSubscribe(self.events.clone());
            Box::pin(async move {
                if req.uri().path() != SUBSCRIBE_PATH {
                    return Ok(tonic::Status::unimplemented(
                        "the bare server serves Subscribe only",
                    )
                    .into_http());
                }
                Ok(tonic::server::Grpc::new(codec)
                    .server_streaming(subscribe, req)
                    .await)
            })
        }
    }
}

/// The bare server's event: the same DR event as the gateway's, as a
/// `SubscribeResponse` built from the generated types alone (`data.object` as a
/// `Struct`, no typed payload, so a little smaller than the gateway's frame).
fn bare_event_bytes() -> Bytes {
    let event: Value = serde_json::from_slice(&capture_complete_event(
        "f275be0a-45fd-4160-8a31-b3274b6a4f8b",
    ))
    .expect("the event is JSON");
    let text = |key: &str| event[key].as_str().unwrap_or_default().to_owned();
    let data_object = match &event["data"]["object"] {
        Value::Object(object) => Some(json_struct(object)),
        _ => None,
    };
    let message = pb::SubscribeResponse {
        kind: Some(pb::subscribe_response::Kind::Event(pb::Event {
            cursor: "1".into(),
            id: text("id"),
            r#type: text("type"),
            create_time: Some(prost_types::Timestamp::from(std::time::SystemTime::now())),
            live_mode: false,
            data_object,
            webhook_ids: event["webhookIds"]
                .as_array()
                .map(|ids| {
                    ids.iter()
                        .filter_map(|id| id.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default(),
            digitalriver_version: text("digitalriverVersion"),
            ..Default::default()
        })),
        ..Default::default()
    };
    Bytes::from(message.encode_to_vec())
}

/// A JSON object as a protobuf `Struct` (numbers as doubles, as `Struct` has them).
fn json_struct(object: &serde_json::Map<String, Value>) -> prost_types::Struct {
    prost_types::Struct {
        fields: object
            .iter()
            .map(|(key, value)| (key.clone(), json_value(value)))
            .collect(),
    }
}

fn json_value(value: &Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match value {
        Value::Null => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(*b),
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        Value::String(s) => Kind::StringValue(s.clone()),
        Value::Array(items) => Kind::ListValue(prost_types::ListValue {
            values: items.iter().map(json_value).collect(),
        }),
        Value::Object(object) => Kind::StructValue(json_struct(object)),
    };
    prost_types::Value { kind: Some(kind) }
}

// === process figures from /proc ===

/// Which process to sample: a child of this one, by id.
#[derive(Debug, Clone, Copy)]
enum Pid {
    Child(u32),
}

impl Pid {
    fn id(self) -> u32 {
        match self {
            Self::Child(pid) => pid,
        }
    }

    fn dir(self) -> String {
        format!("/proc/{}", self.id())
    }
}

/// A process's resident memory, CPU time and context switches at one moment.
#[derive(Debug, Clone, Copy)]
struct ProcSample {
    rss_kib: u64,
    /// utime + stime of the process, clock ticks (10 ms each on Linux).
    cpu_ticks: u64,
    /// Time on CPU summed over its current threads (`task/*/schedstat`), ns; `None`
    /// without schedstats. Precise, but blind to threads that exited in between;
    /// the gateway's are the runtime's workers, which live throughout.
    cpu_ns: Option<u64>,
    /// Voluntary + involuntary context switches of its current threads.
    switches: u64,
}

impl ProcSample {
    fn read(pid: Pid) -> Result<Self, String> {
        let dir = pid.dir();
        let read =
            |path: &str| std::fs::read_to_string(path).map_err(|e| format!("read {path}: {e}"));
        let status = read(&format!("{dir}/status"))?;
        let rss_kib = status_field(&status, "VmRSS:").ok_or("VmRSS missing")?;
        let stat = read(&format!("{dir}/stat"))?;
        // Fields after "(comm) ": state is field 3, utime 14, stime 15.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        let tick = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
        let cpu_ticks = tick(11)
            .zip(tick(12))
            .map(|(u, s)| u + s)
            .ok_or("utime/stime missing")?;
        let mut switches = 0;
        let tasks = std::fs::read_dir(format!("{dir}/task")).map_err(|e| format!("tasks: {e}"))?;
        for task in tasks.flatten() {
            // why: a thread may exit between listing and reading; skip it.
            if let Ok(s) = std::fs::read_to_string(task.path().join("status")) {
                switches += status_field(&s, "voluntary_ctxt_switches:").unwrap_or(0)
                    + status_field(&s, "nonvoluntary_ctxt_switches:").unwrap_or(0);
            }
        }
        let cpu_ns = on_cpu::threads_on_cpu_ns(pid.id());
        Ok(Self {
            rss_kib,
            cpu_ticks,
            cpu_ns,
            switches,
        })
    }

    /// CPU time since `earlier`: from schedstat when both have it, else from ticks.
    fn cpu_since(&self, earlier: &Self) -> Cpu {
        Cpu {
            ticks: ticks(self.cpu_ticks.saturating_sub(earlier.cpu_ticks)),
            precise: self
                .cpu_ns
                .zip(earlier.cpu_ns)
                .map(|(now, then)| Duration::from_nanos(now.saturating_sub(then))),
        }
    }
}

/// CPU time over an interval, two ways.
#[derive(Debug, Clone, Copy)]
struct Cpu {
    /// utime + stime: what `top` shows; 10 ms resolution.
    ticks: Duration,
    /// Summed schedstat of the threads, ns resolution.
    precise: Option<Duration>,
}

impl Cpu {
    /// The best figure available.
    fn best(&self) -> Duration {
        self.precise.unwrap_or(self.ticks)
    }
}

impl std::fmt::Display for Cpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:.0} ms CPU", self.ticks.as_secs_f64() * 1e3)?;
        if let Some(p) = self.precise {
            write!(f, " ({:.2} ms by schedstat)", p.as_secs_f64() * 1e3)?;
        }
        Ok(())
    }
}

fn status_field(status: &str, name: &str) -> Option<u64> {
    status.lines().find_map(|l| {
        l.strip_prefix(name)?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()
    })
}

/// Clock ticks as time (`getconf CLK_TCK`, 100 on every Linux we know of).
fn ticks(n: u64) -> Duration {
    static HZ: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let hz = *HZ.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .filter(|&hz| hz > 0)
            .unwrap_or(100)
    });
    Duration::from_micros(n * 1_000_000 / hz)
}

/// One process over an idle window.
struct Window {
    /// RSS at the end of the window.
    rss_kib: u64,
    cpu: Cpu,
    switches: u64,
}

/// Samples `pids` before and after [`IDLE_WINDOW`] of doing nothing.
async fn idle_window(pids: &[Pid]) -> Result<Vec<Window>, String> {
    let before = pids
        .iter()
        .map(|&p| ProcSample::read(p))
        .collect::<Result<Vec<_>, _>>()?;
    tokio::time::sleep(IDLE_WINDOW).await;
    pids.iter()
        .zip(before)
        .map(|(&p, b)| {
            let a = ProcSample::read(p)?;
            Ok(Window {
                rss_kib: a.rss_kib,
                cpu: a.cpu_since(&b),
                switches: a.switches.saturating_sub(b.switches),
            })
        })
        .collect()
}

// === report ===

fn print_report(enc: &Encoding, points: &[Point]) {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let mib = |kib: u64| kib as f64 / 1024.0;
    let times = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64().max(1e-12);
    let point = |server: ServerKind, n: usize| {
        points
            .iter()
            .find(|p| p.server == server && p.subscribers == n)
    };
    let rate = |d: &Delivery| d.delivered as f64 / d.elapsed.as_secs_f64();
    let per_delivery = |d: &Delivery| us(d.cpu.best()) / d.delivered as f64;
    // The server's CPU for one more (event, subscriber) pair over 1 subscriber: the
    // publishing (the gateway's webhook intake) cancelled out.
    let marginal = |run: fn(&Point) -> &Delivery, server: ServerKind, n: usize| -> Option<f64> {
        let (many, one) = (run(point(server, n)?), run(point(server, 1)?));
        let extra = many.delivered.checked_sub(one.delivered)?;
        (extra > 0).then(|| us(many.cpu.best().saturating_sub(one.cpu.best())) / extra as f64)
    };
    let [gateway, bare, bare_small] = SERVERS;

    println!();
    println!(
        "fan_out: {cores} cores; {STREAMS_PER_CONNECTION} streams per HTTP/2 connection; \
         {EVENTS} events per delivery run ({POST_CONCURRENCY} webhooks in flight to the \
         gateway); idle windows {IDLE_WINDOW:?}; a fresh server process per row's point"
    );
    println!(
        "frames: gateway {} B (SubscribeResponse with the typed payload), bare {} B \
         (the same event without it)",
        enc.bytes,
        bare_event_bytes().len()
    );
    println!();
    println!("| figure | baseline | measured | ratio |");
    println!("|---|---|---|---|");
    println!(
        "| encode per subscriber ({} B event, {SUBSCRIBERS} subs) | encode each: {:.3} µs | shared bytes: {:.3} µs | {:.0}× cheaper |",
        enc.bytes,
        us(enc.encode_each),
        us(enc.shared),
        times(enc.encode_each, enc.shared)
    );
    println!(
        "| parse + convert + encode, once per event | — | {:.1} µs | as much as {:.0} shared hand-outs |",
        us(enc.prepare_once),
        times(enc.prepare_once, enc.shared)
    );
    println!();
    println!(
        "| figure | subscribers | {} | {} | ratio | {} | ratio |",
        gateway.label(),
        bare.label(),
        bare_small.label()
    );
    println!("|---|---|---|---|---|---|---|");
    let row = |figure: &str, n: usize, cell: &dyn Fn(&Point) -> (String, f64)| {
        let (Some(g), Some(b), Some(s)) = (point(gateway, n), point(bare, n), point(bare_small, n))
        else {
            return;
        };
        let ((gc, gv), (bc, bv), (sc, sv)) = (cell(g), cell(b), cell(s));
        let ratio = |baseline: f64| {
            if baseline > 0.0 && gv.is_finite() {
                format!("{:.2}", gv / baseline)
            } else {
                "—".to_owned()
            }
        };
        println!(
            "| {figure} | {n} | {gc} | {bc} | {} | {sc} | {} |",
            ratio(bv),
            ratio(sv)
        );
    };
    let many = || SUBSCRIBER_COUNTS.iter().copied().filter(|&n| n > 1);
    for n in many() {
        row("RSS per idle subscriber", n, &|p| {
            (
                format!(
                    "{:+.1} KiB ({:.1} → {:.1} MiB)",
                    p.rss_per_subscriber(),
                    mib(p.idle_empty.rss_kib),
                    mib(p.idle_subscribed.rss_kib)
                ),
                p.rss_per_subscriber(),
            )
        });
    }
    for n in many() {
        row(&format!("server over {IDLE_WINDOW:?} idle"), n, &|p| {
            let w = &p.idle_subscribed;
            (
                format!("{}, {} context switches", w.cpu, w.switches),
                w.cpu.best().as_secs_f64(),
            )
        });
    }
    for (name, run) in [
        ("burst", (|p: &Point| &p.burst) as fn(&Point) -> &Delivery),
        ("lockstep", |p: &Point| &p.lockstep),
    ] {
        for &n in &SUBSCRIBER_COUNTS {
            row(
                &format!("{name}: time until every subscriber has all {EVENTS} events"),
                n,
                &|p| {
                    let d = run(p);
                    (
                        format!(
                            "{:.0} ms (published by {:.0} ms) = {:.0} deliveries/s",
                            ms(d.elapsed),
                            ms(d.acked),
                            rate(d)
                        ),
                        d.elapsed.as_secs_f64(),
                    )
                },
            );
        }
        for &n in &SUBSCRIBER_COUNTS {
            row(&format!("{name}: server CPU per delivery"), n, &|p| {
                let d = run(p);
                (
                    format!("{} = {:.2} µs", d.cpu, per_delivery(d)),
                    per_delivery(d),
                )
            });
        }
        for n in many() {
            row(
                &format!("{name}: server CPU per extra delivery (vs 1 subscriber)"),
                n,
                &|p| {
                    let m = marginal(run, p.server, n).unwrap_or(f64::NAN);
                    (format!("{m:.2} µs"), m)
                },
            );
        }
        for &n in &SUBSCRIBER_COUNTS {
            row(
                &format!("{name}: client process CPU (not in the server figures)"),
                n,
                &|p| {
                    let d = run(p);
                    (
                        format!("{}", d.client_cpu),
                        d.client_cpu.best().as_secs_f64(),
                    )
                },
            );
        }
    }
    for &n in &SUBSCRIBER_COUNTS {
        row(
            "lockstep: fan-out latency p50 / p99 (publish → last subscriber)",
            n,
            &|p| match p.lockstep.fan_out {
                Some((p50, p99)) => (
                    format!("{:.2} / {:.2} ms", ms(p50), ms(p99)),
                    p50.as_secs_f64(),
                ),
                None => ("—".into(), f64::NAN),
            },
        );
    }
    for &n in &SUBSCRIBER_COUNTS {
        row("client process, idle with every stream open", n, &|p| {
            (
                format!(
                    "{:.1} MiB RSS; opened in {:.0} ms",
                    mib(p.client_idle.rss_kib),
                    ms(p.open_time)
                ),
                p.client_idle.rss_kib as f64,
            )
        });
    }
    println!();
    for &n in &SUBSCRIBER_COUNTS {
        if let Some((p50, p99)) = point(gateway, n).and_then(|p| p.burst.acks) {
            println!(
                "gateway webhook ack p50 / p99 with {n} subscribers (burst): {:.2} / {:.2} ms",
                ms(p50),
                ms(p99)
            );
        }
    }
}
