//! Spawning the gateway for a test, and the clients and log capture tests share.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use dr_gateway::app::Application;
use dr_gateway::config::Settings;
use dr_gateway::digital_river::RetryPolicy;
use dr_gateway::pb::v1::charge_service_client::ChargeServiceClient;
use dr_gateway::pb::v1::event_stream_client::EventStreamClient;
use dr_gateway::pb::v1::fulfillment_service_client::FulfillmentServiceClient;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

/// The DR key every test gateway uses; tests assert it never leaks.
pub const API_KEY: &str = "sk_test_TOPSECRET_4c1d";

/// The webhook signing secret every test gateway accepts; tests assert it never leaks.
pub const WEBHOOK_SECRET: &str = "whsec_TOPSECRET_77b1";

/// A running gateway and clients for it.
pub struct TestApp {
    /// The gateway's bound gRPC address.
    #[allow(dead_code)]
    pub grpc_addr: SocketAddr,
    pub fulfillments: FulfillmentServiceClient<Channel>,
    pub charges: ChargeServiceClient<Channel>,
    pub events: EventStreamClient<Channel>,
    pub channel: Channel,
    /// The gateway's bound webhook / health HTTP address.
    #[allow(dead_code)]
    pub http_addr: SocketAddr,
    /// The plaintext health-only gRPC listener, when the settings ask for one.
    #[allow(dead_code)]
    pub grpc_health_addr: Option<SocketAddr>,
    /// The limiter pacing this gateway's DR calls.
    #[allow(dead_code)]
    pub upstream_limiter: Option<Arc<dr_gateway::digital_river::RateLimiter>>,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestApp {
    /// Stops the gateway and waits for it to finish draining.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .expect("gateway stops within 10s")
                .expect("gateway task");
        }
    }
}

impl TestApp {
    /// Starts shutdown without waiting for it.
    pub fn shutdown_now(&self) {
        self.shutdown.cancel();
    }

    /// Waits (at most `within`) for a shutdown started earlier to finish; panics if
    /// `run_until_stopped` failed or did not return in time.
    pub async fn wait_stopped(mut self, within: Duration) {
        if let Some(task) = self.task.take() {
            tokio::time::timeout(within, task)
                .await
                .unwrap_or_else(|_| panic!("the gateway did not stop within {within:?}"))
                .expect("gateway task");
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Settings pointing at `dr_base_url`, with fast retries so tests stay quick.
pub fn settings(dr_base_url: &str) -> Settings {
    let mut s = Settings::for_upstream(dr_base_url, API_KEY);
    s.retry = RetryPolicy {
        max_attempts: 3,
        base_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(50),
        ..RetryPolicy::default()
    };
    s.upstream_timeout = Duration::from_secs(5);
    s.reconcile_timeout = Duration::from_secs(5);
    s.shutdown_grace = Duration::from_secs(5);
    s.webhook_secrets = vec![secrecy::SecretString::from(WEBHOOK_SECRET)];
    // why: every test's DR stand-in starts empty, so no earlier gateway can have
    // posted to it; the restart tests set the hold themselves.
    s.fulfillment_startup_hold = Duration::ZERO;
    s
}

/// Mounts DR's answer to the lookup a gateway makes before posting a request id it
/// does not hold: no fulfillment of the order carries it yet.
pub async fn dr_lists_no_fulfillments(dr: &wiremock::MockServer) {
    use wiremock::matchers::{method, path};
    wiremock::Mock::given(method("GET"))
        .and(path("/fulfillments"))
        .respond_with(
            wiremock::ResponseTemplate::new(200)
                .set_body_json(serde_json::json!({"hasMore": false, "data": []})),
        )
        .mount(dr)
        .await;
}

/// Starts a gateway against `dr_base_url` with default test settings.
pub async fn spawn_app(dr_base_url: &str) -> TestApp {
    spawn_app_with(settings(dr_base_url)).await
}

/// Starts a gateway with `settings`.
pub async fn spawn_app_with(settings: Settings) -> TestApp {
    capture_logs();
    let tls = settings.security.tls.is_some();
    let app = Application::build(settings).await.expect("gateway starts");
    let grpc_addr = app.grpc_addr();
    let http_addr = app.http_addr();
    let grpc_health_addr = app.grpc_health_addr();
    let upstream_limiter = app.upstream_rate_limiter();
    let shutdown = app.shutdown_token();
    let task = tokio::spawn(async move {
        app.run_until_stopped().await.expect("gateway runs");
    });
    // why: lazily for a gateway serving TLS, which this plaintext channel cannot
    // reach (the security tests make their own channels).
    let endpoint = Channel::from_shared(format!("http://{grpc_addr}")).unwrap();
    let channel = if tls {
        endpoint.connect_lazy()
    } else {
        endpoint.connect().await.expect("connect to gateway")
    };
    TestApp {
        grpc_addr,
        fulfillments: FulfillmentServiceClient::new(channel.clone()),
        charges: ChargeServiceClient::new(channel.clone()),
        events: EventStreamClient::new(channel.clone()),
        channel,
        http_addr,
        grpc_health_addr,
        upstream_limiter,
        shutdown,
        task: Some(task),
    }
}

/// Everything every in-process gateway logged, at TRACE level, in this test binary.
pub fn captured_logs() -> String {
    let buf = log_buffer().lock().unwrap();
    String::from_utf8_lossy(&buf).into_owned()
}

fn log_buffer() -> &'static Arc<Mutex<Vec<u8>>> {
    static BUF: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    BUF.get_or_init(|| Arc::new(Mutex::new(Vec::new())))
}

#[derive(Clone)]
struct BufWriter(Arc<Mutex<Vec<u8>>>);

impl Write for BufWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs (once) a TRACE-level subscriber for every crate that writes into a buffer,
/// so tests can assert what the gateway — and reqwest, hyper, h2 below it — logged.
fn capture_logs() {
    static INIT: OnceLock<()> = OnceLock::new();
    INIT.get_or_init(|| {
        let writer = BufWriter(log_buffer().clone());
        let _ = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .try_init();
    });
}

/// Polls `check` (every 20 ms) until it gives a value, or fails the test after
/// `within`, naming `what` it waited for.
pub async fn eventually<T, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "waited {within:?} for {what}"
        );
        // why: the polling interval of the wait, not a synchronisation.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The gRPC request with a deadline, as a client would send it.
pub fn with_deadline<T>(message: T, timeout: Duration) -> tonic::Request<T> {
    let mut req = tonic::Request::new(message);
    req.set_timeout(timeout);
    req
}

/// A fulfillment as DR returns it (DR's "Capturing and cancelling charges" page).
pub fn dr_fulfillment(
    id: &str,
    order_id: &str,
    item_id: &str,
    qty: i64,
    cancel: i64,
) -> serde_json::Value {
    serde_json::json!({
        "id": id,
        "createdTime": "2022-07-01T17:55:58Z",
        "items": [{"quantity": qty, "cancelQuantity": cancel, "skuId": "b0fd7334", "itemId": item_id}],
        "orderId": order_id,
        "liveMode": false
    })
}

/// A sandbox on an ephemeral port, and a control client for it.
pub struct TestSandbox {
    pub sandbox: dr_sandbox::Sandbox,
    /// Typed client of the sandbox's `/sandbox/` control surface (test-mode key).
    pub control: dr_sandbox::ControlClient,
}

impl TestSandbox {
    /// The DR base URL the gateway should use.
    pub fn base_url(&self) -> String {
        self.sandbox.base_url()
    }
}

/// Starts a sandbox with default (immediate-settle) config.
pub async fn spawn_sandbox() -> TestSandbox {
    spawn_sandbox_with(dr_sandbox::SandboxConfig::default()).await
}

/// Starts a sandbox with `config`.
pub async fn spawn_sandbox_with(config: dr_sandbox::SandboxConfig) -> TestSandbox {
    let sandbox = dr_sandbox::Sandbox::start(config)
        .await
        .expect("sandbox starts");
    let control = sandbox.control_client();
    TestSandbox { sandbox, control }
}

/// The fulfillments the sandbox holds (`GET /fulfillments`, every page), seen with a key
/// of `mode`: how tests check that money moved exactly as often as they expect.
pub async fn fulfillments_held(dr: &TestSandbox, mode: KeyMode) -> Vec<serde_json::Value> {
    fulfillments_held_at(&dr.base_url(), mode).await
}

/// [`fulfillments_held`] by a sandbox's base URL.
pub async fn fulfillments_held_at(base_url: &str, mode: KeyMode) -> Vec<serde_json::Value> {
    let http = reqwest::Client::new();
    let mut held = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut url = format!("{base_url}/fulfillments?limit=100");
        if let Some(a) = &after {
            url.push_str(&format!("&startingAfter={a}"));
        }
        let page: serde_json::Value = http
            .get(url)
            .bearer_auth(mode.key())
            .send()
            .await
            .expect("sandbox answers")
            .json()
            .await
            .expect("a JSON list");
        let data = page["data"].as_array().cloned().unwrap_or_default();
        after = data
            .last()
            .and_then(|f| f["id"].as_str())
            .map(str::to_owned);
        held.extend(data);
        if page["hasMore"] != true || after.is_none() {
            return held;
        }
    }
}

/// Which of DR's two modes a sandbox key speaks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyMode {
    /// `sk_test_…` keys.
    Test,
    /// Any other key.
    Live,
}

impl KeyMode {
    /// A sandbox key of this mode (never the gateway's [`API_KEY`]).
    pub fn key(self) -> &'static str {
        match self {
            KeyMode::Test => dr_sandbox::Sandbox::CONTROL_KEY,
            KeyMode::Live => "sk_live_control",
        }
    }

    /// A control client of `dr` calling with this mode's key.
    pub fn control(self, dr: &TestSandbox) -> dr_sandbox::ControlClient {
        dr_sandbox::ControlClient::new(dr.base_url(), self.key())
    }
}
