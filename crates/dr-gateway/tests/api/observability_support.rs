//! What the observability tests run besides the sandbox: the gateway as a child
//! process (so its metrics and its trace export are its own, not this test binary's),
//! a real Prometheus (Debian's `prometheus`) on loopback, and OTLP trace receivers
//! (gRPC and HTTP/protobuf) in this process.
//!
//! Every wait is a condition with a deadline.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message as _;
use serde_json::Value;
use tonic::transport::Channel;

use crate::helpers::{API_KEY, WEBHOOK_SECRET};

/// Longest any condition here is waited for.
pub const WAIT: Duration = Duration::from_secs(20);

/// A fresh directory under the system's temp dir.
pub fn unique_dir(what: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "drgw-{what}-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// Polls `check` until it returns `Some`, or fails the test with `what` after [`WAIT`].
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// === the gateway as a child process ===

/// `dr-gateway serve` in a child process on ephemeral loopback ports, logging JSON
/// to a file; its bound addresses are read from its "gateway serving" line.
pub struct GatewayProcess {
    child: Child,
    /// The gRPC listener.
    pub grpc_addr: SocketAddr,
    /// The webhook / health (and, by default, metrics) listener.
    pub http_addr: SocketAddr,
    /// The metrics listener, when `--metrics-addr` was given.
    pub metrics_addr: Option<SocketAddr>,
    log: PathBuf,
    dir: PathBuf,
}

impl GatewayProcess {
    /// Starts a gateway against `dr` with `args` added to `serve` and `env` set.
    pub async fn start(dr: &str, args: &[&str], env: &[(&str, &str)]) -> Self {
        let dir = unique_dir("gateway");
        let log = dir.join("gateway.log");
        let out = std::fs::File::create(&log).expect("log file");
        let mut command = Command::new(env!("CARGO_BIN_EXE_dr-gateway"));
        command
            .arg("serve")
            .args(["--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
            .args(["--dr-base-url", dr, "--backfill-interval", "0s"])
            .args(["--log-format", "json"])
            // why: each test's DR stand-in starts empty, so no earlier process can
            // have posted to it (as in helpers::settings).
            .args(["--fulfillment-startup-hold", "0s"])
            .args(args)
            .env_clear()
            .env("DR_GATEWAY_DR_API_KEY", API_KEY)
            .env("DR_GATEWAY_WEBHOOK_SECRETS", WEBHOOK_SECRET)
            .env("RUST_LOG", "info")
            .stdout(out.try_clone().expect("log file"))
            .stderr(out);
        for (name, value) in env {
            command.env(name, value);
        }
        let child = command.spawn().expect("spawn dr-gateway");
        let serving = eventually("the gateway logs that it is serving", || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            async move {
                text.lines()
                    .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                    .find(|l| l["fields"]["message"] == "gateway serving")
            }
        })
        .await;
        let addr = |name: &str| -> Option<SocketAddr> {
            let text = serving["fields"][name].as_str()?;
            let text = text
                .strip_prefix("Some(")
                .map_or(text, |t| t.trim_end_matches(')'));
            text.parse().ok()
        };
        Self {
            child,
            grpc_addr: addr("grpc_addr").expect("grpc_addr in the serving line"),
            http_addr: addr("http_addr").expect("http_addr in the serving line"),
            metrics_addr: addr("metrics_addr"),
            log,
            dir,
        }
    }

    /// Everything the process logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A connected plaintext channel to its gRPC listener.
    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.grpc_addr))
            .expect("uri")
            .connect()
            .await
            .expect("connect to the gateway process")
    }

    /// Where DR's webhooks go.
    pub fn webhook_url(&self) -> String {
        format!("http://{}/webhooks/digitalriver", self.http_addr)
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// === Prometheus ===

/// A Prometheus server on a free loopback port scraping one target every 250 ms,
/// with its storage in a temp dir.
pub struct Prometheus {
    child: Child,
    base: String,
    http: reqwest::Client,
    dir: PathBuf,
}

impl Prometheus {
    /// Starts it scraping `target` (`/metrics`) and waits until it is ready.
    ///
    /// why: Prometheus cannot report a port of its own choosing to the test, so
    /// the port is picked by binding `:0` and releasing it; another test can take
    /// it first, and Prometheus then exits. It is started again on another port.
    pub async fn start(target: SocketAddr) -> Self {
        const ATTEMPTS: usize = 5;
        for _ in 0..ATTEMPTS {
            if let Some(prometheus) = Self::try_start(target).await {
                return prometheus;
            }
        }
        panic!("Prometheus found its port taken {ATTEMPTS} times in a row");
    }

    /// One start on a picked port: ready, or `None` if its port was taken.
    async fn try_start(target: SocketAddr) -> Option<Self> {
        let binary = find_tool("prometheus");
        let dir = unique_dir("prometheus");
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 250ms\n  scrape_timeout: 250ms\n\
                 scrape_configs:\n  - job_name: dr-gateway\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .expect("prometheus.yml");
        let port = free_port();
        let log_path = dir.join("prometheus.log");
        let log = std::fs::File::create(&log_path).expect("log file");
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("spawn prometheus");
        let mut prometheus = Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::new(),
            dir,
        };
        let ready = format!("{}/-/ready", prometheus.base);
        let deadline = Instant::now() + WAIT;
        loop {
            if prometheus.child.try_wait().ok().flatten().is_some() {
                let printed = std::fs::read_to_string(&log_path).unwrap_or_default();
                assert!(
                    printed.contains("address already in use"),
                    "Prometheus exited at start: {printed}"
                );
                return None;
            }
            // why: whatever took the port may hold the connection without answering.
            let check = prometheus.http.get(&ready).timeout(Duration::from_secs(1));
            if let Ok(reply) = check.send().await {
                if reply.status().is_success() {
                    return Some(prometheus);
                }
            }
            assert!(
                Instant::now() < deadline,
                "never happened: Prometheus is ready"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The instant vector `query` evaluates to: each series' labels and value.
    pub async fn query(&self, query: &str) -> Vec<(HashMap<String, String>, f64)> {
        let url = reqwest::Url::parse_with_params(
            &format!("{}/api/v1/query", self.base),
            &[("query", query)],
        )
        .expect("query URL");
        let reply: Value = self
            .http
            .get(url)
            .send()
            .await
            .expect("Prometheus answers")
            .json()
            .await
            .expect("JSON");
        assert_eq!(reply["status"], "success", "query {query}: {reply}");
        reply["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .map(|series| {
                let labels = serde_json::from_value(series["metric"].clone()).unwrap_or_default();
                let value = series["value"][1]
                    .as_str()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(f64::NAN);
                (labels, value)
            })
            .collect()
    }

    /// Waits until `query` is one series whose value satisfies `ok`; returns it.
    pub async fn wait_for(&self, query: &str, ok: impl Fn(f64) -> bool) -> f64 {
        let deadline = Instant::now() + WAIT;
        loop {
            let last = self.query(query).await;
            if let [(_, value)] = last.as_slice() {
                if ok(*value) {
                    return *value;
                }
            }
            assert!(
                Instant::now() < deadline,
                "Prometheus never saw the expected value of {query}; last: {last:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until `query` is exactly `want` in Prometheus.
    pub async fn wait_for_value(&self, query: &str, want: f64) {
        self.wait_for(query, |v| v == want).await;
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A free loopback port (for a child process that cannot report the one it bound).
pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// The path of a tool from Debian's `prometheus` package, or a test failure that
/// says how to get it.
pub fn find_tool(name: &str) -> PathBuf {
    let path = std::env::var("PATH").unwrap_or_default();
    for dir in path.split(':').filter(|d| !d.is_empty()) {
        let candidate = Path::new(dir).join(name);
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!(
        "`{name}` is not installed: apt-get install prometheus (bash scripts/test.sh installs it)"
    );
}

/// Runs `promtool check metrics` on an exposition; returns its exit success and output.
pub fn promtool_check_metrics(exposition: &str) -> (bool, String) {
    use std::io::Write as _;
    let mut child = Command::new(find_tool("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn promtool");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(exposition.as_bytes())
        .expect("write the exposition");
    let out = child.wait_with_output().expect("promtool runs");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

// === OTLP receivers ===

/// Spans an OTLP receiver got, with the `service.name` of their resource.
#[derive(Clone, Default)]
pub struct Received(Arc<Mutex<Vec<(String, Span)>>>);

impl Received {
    fn add(&self, request: ExportTraceServiceRequest) {
        let mut spans = self.0.lock().unwrap();
        for resource_spans in request.resource_spans {
            let service = resource_spans
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| kv.value.as_ref()?.value.as_ref())
                .map(|v| match v {
                    AnyValue::StringValue(name) => name.clone(),
                    other => format!("{other:?}"),
                })
                .unwrap_or_default();
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    spans.push((service.clone(), span));
                }
            }
        }
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<(String, Span)> {
        self.0.lock().unwrap().clone()
    }

    /// Waits until a span satisfies `pick`; returns it (with its service name).
    pub async fn wait_for(&self, what: &str, pick: impl Fn(&Span) -> bool) -> (String, Span) {
        let deadline = Instant::now() + WAIT;
        loop {
            let spans = self.spans();
            if let Some(found) = spans.iter().find(|(_, s)| pick(s)) {
                return found.clone();
            }
            let seen: Vec<String> = spans
                .iter()
                .map(|(_, s)| {
                    format!(
                        "{} (trace {}, span {}, parent {})",
                        s.name,
                        hex(&s.trace_id),
                        hex(&s.span_id),
                        hex(&s.parent_span_id)
                    )
                })
                .collect();
            assert!(
                Instant::now() < deadline,
                "never received {what}; got {seen:#?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tonic::async_trait]
impl TraceService for Received {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.add(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// An OTLP/gRPC trace receiver (the collector's `TraceService`) on a loopback port.
pub async fn otlp_grpc_receiver() -> (SocketAddr, Received) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let received = Received::default();
    let service = TraceServiceServer::new(received.clone());
    tokio::spawn(async move {
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        let _ = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(incoming)
            .await;
    });
    (addr, received)
}

/// An OTLP/HTTP (protobuf) trace receiver: `POST /v1/traces` on a loopback port.
pub async fn otlp_http_receiver() -> (SocketAddr, Received) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let received = Received::default();
    let state = received.clone();
    let router = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: axum::body::Bytes| {
            let state = state.clone();
            async move {
                match ExportTraceServiceRequest::decode(body) {
                    Ok(request) => {
                        state.add(request);
                        (
                            axum::http::StatusCode::OK,
                            [("content-type", "application/x-protobuf")],
                            ExportTraceServiceResponse::default().encode_to_vec(),
                        )
                    }
                    Err(_) => (
                        axum::http::StatusCode::BAD_REQUEST,
                        [("content-type", "text/plain")],
                        b"not an ExportTraceServiceRequest".to_vec(),
                    ),
                }
            }
        }),
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    (addr, received)
}

/// Lower-case hex of `bytes` (trace and span ids).
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A string attribute of `span`, if present.
pub fn attribute(span: &Span, key: &str) -> Option<String> {
    use opentelemetry_proto::tonic::common::v1::any_value::Value as V;
    let value = span
        .attributes
        .iter()
        .find(|kv| kv.key == key)?
        .value
        .as_ref()?
        .value
        .as_ref()?;
    Some(match value {
        V::StringValue(s) => s.clone(),
        V::IntValue(i) => i.to_string(),
        V::BoolValue(b) => b.to_string(),
        V::DoubleValue(d) => d.to_string(),
        other => format!("{other:?}"),
    })
}
