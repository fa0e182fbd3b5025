//! Fan-out benchmark: what one event costs per `EventStream.Subscribe` subscriber, and
//! what a thousand idle subscribers cost. Run with `cargo bench --bench fan_out`.
//!
//! Why: the events issue promises that "an event is parsed and protobuf-encoded once,
//! not once per subscriber; a thousand idle subscribers cost little memory and no
//! CPU". Timed unit tests are banned, so this binary prints the figures, each next to
//! a baseline measured in the same run:
//!
//! 1. **Encoding.** Encoding the `SubscribeResponse` for each of 1000 subscribers
//!    (baseline) vs handing each the shared pre-encoded bytes
//!    ([`SubscribeItem::Shared`]), as the Subscribe codec does.
//! 2. **Idle subscribers.** A real gateway in this process; its RSS, CPU time and
//!    context switches over an idle window with 0 subscribers (baseline), then with
//!    1000 Subscribe streams open over loopback gRPC (heartbeat 60 s, so none fires).
//! 3. **Delivery.** Signed webhooks posted to the gateway's HTTP listener; time until
//!    every subscriber has every event, with 1000 subscribers vs 1 (baseline), and
//!    the webhook ack latency in both runs.
//!
//! The subscribers live in a **child process** (this binary with `--client`), so the
//! gateway's figures are the gateway's alone; the child's own cost is printed apart.
//! The child decodes only each event's cursor and id (prost skips the rest), so
//! delivery measures the gateway and the transport, not a client's `Struct` decoding.
//!
//! Every wait has a deadline, and the run fails (non-zero exit) unless every POST was
//! acknowledged and every subscriber received exactly every event.

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

/// Subscribers in the fan-out runs.
const SUBSCRIBERS: usize = 1000;
/// HTTP/2 connections the subscribers share, 100 streams each (the gateway sets no
/// per-connection stream limit: tonic passes `None` over hyper's default of 200).
const CHANNELS: usize = 10;
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
/// Deadline for the subscribers to open their streams.
const OPEN_DEADLINE: Duration = Duration::from_secs(20);
/// Deadline for one delivery run (posting and delivering).
const DELIVERY_DEADLINE: Duration = Duration::from_secs(30);
/// Longest the client child lives, whatever happens to the parent.
const CLIENT_LIFETIME: Duration = Duration::from_secs(120);
/// Webhook signing secret of the benchmark gateway.
const WEBHOOK_SECRET: &str = "whsec_bench";
/// gRPC path of Subscribe.
const SUBSCRIBE_PATH: &str = "/digitalriver.gateway.v1.EventStream/Subscribe";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--client") {
        return client::main(&args[i + 1..]);
    }
    let encoding = bench_encoding();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(bench_gateway()) {
        Ok(gateway) => {
            print_report(&encoding, &gateway);
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
    // Compare like with like: both ways put the same bytes on the wire.
    assert_eq!(
        msg.encode_to_vec(),
        SubscribeItem::Shared(stored.encoded_response.clone()).encode_to_vec(),
        "shared bytes equal the per-subscriber encoding"
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

// === 2 and 3. a real gateway ===

/// Figures of the gateway runs.
struct Gateway {
    idle_empty: Window,
    idle_subscribed: Window,
    /// The client child during the subscribed window.
    client_idle: Window,
    open_time: Duration,
    one: Delivery,
    many: Delivery,
}

async fn bench_gateway() -> Result<Gateway, String> {
    let mut settings = Settings::for_upstream("http://127.0.0.1:9", "sk_bench_unused");
    settings.webhook_secrets = vec![SecretString::from(WEBHOOK_SECRET)];
    let app = Application::build(settings)
        .await
        .map_err(|e| format!("gateway starts: {e}"))?;
    let grpc_addr = app.grpc_addr();
    let webhook_url = format!("http://{}{WEBHOOK_PATH}", app.http_addr());
    let shutdown = app.shutdown_token();
    let server = tokio::spawn(app.run_until_stopped());
    let http = reqwest::Client::new();

    eprintln!("fan_out: warming up the webhook path");
    post_events(&http, &webhook_url, "warmup", 20).await?;

    eprintln!("fan_out: idle window, 0 subscribers");
    let idle_empty = idle_window(&[Pid::This]).await?.remove(0);

    eprintln!("fan_out: opening {SUBSCRIBERS} subscribers");
    let opening = Instant::now();
    let mut many = Clients::spawn(grpc_addr, SUBSCRIBERS)?;
    many.expect("ready", OPEN_DEADLINE).await?;
    let open_time = opening.elapsed();

    eprintln!("fan_out: idle window, {SUBSCRIBERS} subscribers");
    let mut windows = idle_window(&[Pid::This, Pid::Child(many.pid)]).await?;
    let client_idle = windows.remove(1);
    let idle_subscribed = windows.remove(0);

    eprintln!("fan_out: delivering {EVENTS} events to {SUBSCRIBERS} subscribers");
    let many_delivery = deliver(&http, &webhook_url, "fan-many", &mut many).await?;
    many.finish().await?;

    eprintln!("fan_out: delivering {EVENTS} events to 1 subscriber");
    let mut one = Clients::spawn(grpc_addr, 1)?;
    one.expect("ready", OPEN_DEADLINE).await?;
    let one_delivery = deliver(&http, &webhook_url, "fan-one", &mut one).await?;
    one.finish().await?;

    shutdown.cancel();
    match tokio::time::timeout(Duration::from_secs(10), server).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => return Err(format!("gateway failed: {e}")),
        Ok(Err(e)) => return Err(format!("gateway task: {e}")),
        Err(_) => return Err("gateway did not stop within 10 s".into()),
    }
    Ok(Gateway {
        idle_empty,
        idle_subscribed,
        client_idle,
        open_time,
        one: one_delivery,
        many: many_delivery,
    })
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
    subscribers: usize,
    /// Events received, summed over subscribers.
    delivered: usize,
    /// From the first POST until every POST was acknowledged.
    acked: Duration,
    /// From the first POST until every subscriber had every event.
    elapsed: Duration,
    /// Gateway CPU time over the run.
    cpu: Cpu,
    /// The client process's CPU time over the run (shares the cores).
    client_cpu: Cpu,
    ack_p50: Duration,
    ack_p99: Duration,
}

/// Posts [`EVENTS`] webhooks and waits until every subscriber of `clients` has them.
async fn deliver(
    http: &reqwest::Client,
    url: &str,
    prefix: &str,
    clients: &mut Clients,
) -> Result<Delivery, String> {
    let client = Pid::Child(clients.pid);
    let before = (ProcSample::read(Pid::This)?, ProcSample::read(client)?);
    clients.go().await?;
    let start = Instant::now();
    let mut acks = post_events(http, url, prefix, EVENTS).await?;
    let acked = start.elapsed();
    let remaining = DELIVERY_DEADLINE.saturating_sub(acked);
    clients.expect("delivered", remaining).await?;
    let elapsed = start.elapsed();
    let cpu = ProcSample::read(Pid::This)?.cpu_since(&before.0);
    let client_cpu = ProcSample::read(client)?.cpu_since(&before.1);
    let expected = clients.subscribers * EVENTS;
    let counts = clients.expect("settled", Duration::from_secs(5)).await?;
    let delivered: usize = counts
        .first()
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("client reported no event count: {counts:?}"))?;
    if delivered != expected {
        return Err(format!(
            "{delivered} events delivered, expected {expected} ({} subscribers × {EVENTS})",
            clients.subscribers
        ));
    }
    acks.sort();
    Ok(Delivery {
        subscribers: clients.subscribers,
        delivered,
        acked,
        elapsed,
        cpu,
        client_cpu,
        ack_p50: percentile(&acks, 50),
        ack_p99: percentile(&acks, 99),
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
}

impl Clients {
    /// Starts a child that opens `subscribers` streams to `grpc_addr`.
    fn spawn(grpc_addr: SocketAddr, subscribers: usize) -> Result<Self, String> {
        let exe = std::env::current_exe().map_err(|e| format!("own executable: {e}"))?;
        let mut child = Command::new(exe)
            .arg("--client")
            .arg(grpc_addr.to_string())
            .arg(subscribers.to_string())
            .arg(EVENTS.to_string())
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
        })
    }

    /// Waits for the child's next line and checks it starts with `word`; returns the
    /// rest of its words.
    async fn expect(&mut self, word: &str, deadline: Duration) -> Result<Vec<String>, String> {
        let line = tokio::time::timeout(deadline, self.lines.next_line())
            .await
            .map_err(|_| format!("no '{word}' from the clients within {deadline:?}"))?
            .map_err(|e| format!("reading the clients: {e}"))?
            .ok_or_else(|| format!("the clients exited before '{word}'"))?;
        let mut words = line.split_whitespace().map(str::to_owned);
        if words.next().as_deref() != Some(word) {
            return Err(format!("expected '{word}' from the clients, got '{line}'"));
        }
        Ok(words.collect())
    }

    /// Tells the child that posting starts, so its delivery deadline runs.
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
    #[derive(Default)]
    struct Progress {
        events: AtomicUsize,
        complete: AtomicUsize,
        failed: AtomicUsize,
        changed: Notify,
    }

    pub(super) fn main(args: &[String]) -> ExitCode {
        let (Some(addr), Some(Ok(subscribers)), Some(Ok(expected))) = (
            args.first(),
            args.get(1).map(|s| s.parse::<usize>()),
            args.get(2).map(|s| s.parse::<usize>()),
        ) else {
            eprintln!("usage: fan_out --client <grpc addr> <subscribers> <events>");
            return ExitCode::FAILURE;
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let run = run(addr, subscribers, expected);
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

    async fn run(addr: &str, subscribers: usize, expected: usize) -> Result<(), String> {
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| format!("endpoint: {e}"))?;
        let mut channels = Vec::new();
        for _ in 0..CHANNELS.min(subscribers) {
            channels.push(
                endpoint
                    .connect()
                    .await
                    .map_err(|e| format!("connect to {addr}: {e}"))?,
            );
        }
        let progress = Arc::new(Progress::default());
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
        if let Err(e) = tokio::time::timeout(deadline, all_complete(&progress, subscribers))
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
                    progress.events.fetch_add(1, Ordering::SeqCst);
                    if seen == expected {
                        progress.complete.fetch_add(1, Ordering::SeqCst);
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

// === process figures from /proc ===

/// Which process to sample.
#[derive(Debug, Clone, Copy)]
enum Pid {
    This,
    Child(u32),
}

impl Pid {
    fn dir(self) -> String {
        match self {
            Self::This => "/proc/self".into(),
            Self::Child(pid) => format!("/proc/{pid}"),
        }
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
        let mut cpu_ns = Some(0);
        let tasks = std::fs::read_dir(format!("{dir}/task")).map_err(|e| format!("tasks: {e}"))?;
        for task in tasks.flatten() {
            // why: a thread may exit between listing and reading; skip it.
            if let Ok(s) = std::fs::read_to_string(task.path().join("status")) {
                switches += status_field(&s, "voluntary_ctxt_switches:").unwrap_or(0)
                    + status_field(&s, "nonvoluntary_ctxt_switches:").unwrap_or(0);
            }
            let on_cpu = std::fs::read_to_string(task.path().join("schedstat"))
                .ok()
                .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok());
            cpu_ns = cpu_ns.zip(on_cpu).map(|(sum, ns)| sum + ns);
        }
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

fn print_report(enc: &Encoding, gw: &Gateway) {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let mib = |kib: u64| kib as f64 / 1024.0;
    let times = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64().max(1e-12);
    let subs = |n: usize| format!("{n} sub{}", if n == 1 { "" } else { "s" });
    let idle = |w: &Window| format!("{}, {} context switches", w.cpu, w.switches);
    let rate = |d: &Delivery| d.delivered as f64 / d.elapsed.as_secs_f64();
    let delivery = |d: &Delivery| {
        format!(
            "{}: {} events in {:.0} ms (all acked at {:.0} ms) = {:.0} events/s",
            subs(d.subscribers),
            d.delivered,
            ms(d.elapsed),
            ms(d.acked),
            rate(d)
        )
    };
    let ack = |d: &Delivery| {
        format!(
            "{}: {:.2} / {:.2} ms",
            subs(d.subscribers),
            ms(d.ack_p50),
            ms(d.ack_p99)
        )
    };
    let cpu = |d: &Delivery, c: &Cpu| {
        format!(
            "{}: {c} = {:.1} µs per delivery",
            subs(d.subscribers),
            us(c.best()) / d.delivered as f64
        )
    };
    let rss_delta = gw.idle_subscribed.rss_kib as f64 - gw.idle_empty.rss_kib as f64;
    // The cost of one more (event, subscriber) pair, the intake's share removed.
    let marginal = (gw.many.cpu.best().as_secs_f64() - gw.one.cpu.best().as_secs_f64())
        / (gw.many.delivered - gw.one.delivered).max(1) as f64;

    println!();
    println!(
        "fan_out: {cores} cores; {SUBSCRIBERS} subscribers on {CHANNELS} connections; \
         {EVENTS} webhooks, {POST_CONCURRENCY} in flight; idle windows {IDLE_WINDOW:?}"
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
    println!(
        "| gateway RSS, idle | 0 subs: {:.1} MiB | {SUBSCRIBERS} subs: {:.1} MiB | {:+.1} KiB per subscriber |",
        mib(gw.idle_empty.rss_kib),
        mib(gw.idle_subscribed.rss_kib),
        rss_delta / SUBSCRIBERS as f64
    );
    println!(
        "| gateway over {IDLE_WINDOW:?} idle | 0 subs: {} | {SUBSCRIBERS} subs: {} | |",
        idle(&gw.idle_empty),
        idle(&gw.idle_subscribed)
    );
    println!(
        "| client process, same window (not in the gateway figures) | — | {:.1} MiB RSS; {} | opened {SUBSCRIBERS} streams in {:.0} ms |",
        mib(gw.client_idle.rss_kib),
        idle(&gw.client_idle),
        ms(gw.open_time)
    );
    println!(
        "| delivery of {EVENTS} events to every subscriber | {} | {} | {:.0}× the events/s |",
        delivery(&gw.one),
        delivery(&gw.many),
        rate(&gw.many) / rate(&gw.one)
    );
    println!(
        "| webhook ack p50 / p99 | {} | {} | p50 {:.1}×, p99 {:.1}× |",
        ack(&gw.one),
        ack(&gw.many),
        times(gw.many.ack_p50, gw.one.ack_p50),
        times(gw.many.ack_p99, gw.one.ack_p99)
    );
    println!(
        "| gateway CPU during delivery | {} | {} | {:.1} µs per extra delivery |",
        cpu(&gw.one, &gw.one.cpu),
        cpu(&gw.many, &gw.many.cpu),
        marginal * 1e6
    );
    println!(
        "| client CPU during delivery (same cores) | {} | {} | |",
        cpu(&gw.one, &gw.one.client_cpu),
        cpu(&gw.many, &gw.many.client_cpu)
    );
}
