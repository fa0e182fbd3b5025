//! Shared test plumbing: start a sandbox, call it (raw for the DR surface, through
//! [`ControlClient`] for the control surface), wait on conditions, receive webhooks.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::{body::Bytes, extract::State, http::HeaderMap, http::StatusCode, routing::post, Router};
use dr_sandbox::{ControlClient, Sandbox, SandboxConfig};
use reqwest::Method;
use serde_json::{json, Value};

/// Default test key (test mode).
pub const TEST_KEY: &str = "sk_test_123";

/// A running sandbox plus a client.
pub struct TestSandbox {
    sandbox: Option<Sandbox>,
    pub base: String,
    pub client: reqwest::Client,
    pub key: String,
}

impl TestSandbox {
    /// Immediate settlement, random ids.
    pub async fn start() -> Self {
        Self::start_with(SandboxConfig::default()).await
    }

    /// Custom configuration (listen address forced to port 0).
    pub async fn start_with(mut config: SandboxConfig) -> Self {
        config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        let sandbox = Sandbox::start(config).await.expect("sandbox starts");
        let base = sandbox.base_url();
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("client");
        Self {
            sandbox: Some(sandbox),
            base,
            client,
            key: TEST_KEY.to_owned(),
        }
    }

    /// Graceful shutdown.
    pub async fn stop(mut self) {
        if let Some(s) = self.sandbox.take() {
            s.shutdown().await;
        }
    }

    /// The typed control client, calling with the current `key` over the shared pool.
    pub fn control(&self) -> ControlClient {
        ControlClient::with_http_client(self.client.clone(), &self.base, &self.key)
    }

    /// A request builder with auth.
    pub fn req(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, format!("{}{}", self.base, path))
            .bearer_auth(&self.key)
    }

    /// Sends and returns (status, JSON body or Null).
    pub async fn send(&self, rb: reqwest::RequestBuilder) -> (StatusCode, Value) {
        let resp = rb.send().await.expect("request sent");
        let status = StatusCode::from_u16(resp.status().as_u16()).expect("status");
        let bytes = resp.bytes().await.expect("body");
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).expect("JSON body")
        };
        (status, body)
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.send(self.req(Method::GET, path)).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.send(self.req(Method::POST, path).json(&body)).await
    }

    pub async fn delete(&self, path: &str) -> StatusCode {
        self.send(self.req(Method::DELETE, path)).await.0
    }

    /// Creates an order via the control surface; panics unless 201.
    pub async fn order(&self, body: Value) -> Value {
        self.control()
            .create_order(body)
            .await
            .unwrap_or_else(|e| panic!("create order: {e}"))
    }

    /// A one-line order: `quantity` units for `amount` (line total), no tax or shipping.
    pub async fn simple_order(&self, quantity: i64, amount: &str) -> Value {
        self.order(json!({"items": [{"quantity": quantity, "amount": amount}]}))
            .await
    }

    /// POST /fulfillments.
    pub async fn fulfill(&self, body: Value) -> (StatusCode, Value) {
        self.post("/fulfillments", body).await
    }

    /// Event types for an object id, oldest first (GET /events, newest first, reversed).
    pub async fn event_types_for(&self, object_id: &str) -> Vec<String> {
        self.events_for(object_id)
            .await
            .iter()
            .map(|e| e["type"].as_str().unwrap_or("").to_owned())
            .collect()
    }

    /// Events whose data.object.id or data.object.orderId is `object_id`, oldest first.
    pub async fn events_for(&self, object_id: &str) -> Vec<Value> {
        let (status, list) = self.get("/events?limit=100").await;
        assert_eq!(status, StatusCode::OK);
        let mut events: Vec<Value> = list["data"]
            .as_array()
            .expect("data")
            .iter()
            .filter(|e| {
                let o = &e["data"]["object"];
                o["id"] == object_id || o["orderId"] == object_id
            })
            .cloned()
            .collect();
        events.reverse();
        events
    }
}

/// Exact wire text of a JSON number (arbitrary_precision keeps it).
pub fn num(v: &Value) -> String {
    assert!(v.is_number(), "expected a number, got {v}");
    v.to_string()
}

/// Polls `check` every 20 ms until it returns `Some`, failing after `secs` seconds.
pub async fn eventually<T, F, Fut>(secs: u64, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let poll = async {
        loop {
            if let Some(v) = check().await {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    match tokio::time::timeout(Duration::from_secs(secs), poll).await {
        Ok(v) => v,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

/// One webhook request as received.
#[derive(Debug, Clone)]
pub struct Received {
    pub signature: String,
    pub body: Bytes,
}

impl Received {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("webhook body is JSON")
    }
}

#[derive(Default)]
struct ReceiverState {
    received: Vec<Received>,
    /// Statuses to answer with, in order; when exhausted, 200.
    script: Vec<u16>,
    /// Delay before answering the first N requests.
    slow_first: usize,
    slow_by: Duration,
    /// Requests being answered now, and the most at once so far.
    in_flight: usize,
    max_in_flight: usize,
}

/// A small webhook endpoint recording what it gets.
#[derive(Clone)]
pub struct Receiver {
    state: Arc<Mutex<ReceiverState>>,
    pub url: String,
}

async fn receive(
    State(state): State<Arc<Mutex<ReceiverState>>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let (status, delay) = {
        let mut s = state.lock().unwrap();
        let n = s.received.len();
        s.received.push(Received {
            signature: headers
                .get("digitalriver-signature")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned(),
            body,
        });
        let status = if s.script.is_empty() {
            200
        } else {
            s.script.remove(0)
        };
        let delay = if n < s.slow_first {
            s.slow_by
        } else {
            Duration::ZERO
        };
        s.in_flight += 1;
        s.max_in_flight = s.max_in_flight.max(s.in_flight);
        (status, delay)
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    state.lock().unwrap().in_flight -= 1;
    StatusCode::from_u16(status).unwrap()
}

impl Receiver {
    /// Answers `script` statuses first, then 200.
    pub async fn start(script: Vec<u16>) -> Self {
        Self::start_slow(script, 0, Duration::ZERO).await
    }

    /// Also delays the first `slow_first` answers by `slow_by`.
    pub async fn start_slow(script: Vec<u16>, slow_first: usize, slow_by: Duration) -> Self {
        let state = Arc::new(Mutex::new(ReceiverState {
            script,
            slow_first,
            slow_by,
            ..Default::default()
        }));
        let app = Router::new()
            .route("/hook", post(receive))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { state, url }
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.lock().unwrap().received.clone()
    }

    /// The most requests this endpoint was answering at the same time.
    pub fn max_in_flight(&self) -> usize {
        self.state.lock().unwrap().max_in_flight
    }

    /// Waits until a received event satisfies `pred`; returns all matching so far.
    pub async fn wait_for(
        &self,
        what: &str,
        min: usize,
        pred: impl Fn(&Value) -> bool,
    ) -> Vec<Received> {
        eventually(10, what, || {
            let got: Vec<Received> = self
                .received()
                .into_iter()
                .filter(|r| pred(&r.json()))
                .collect();
            async move { (got.len() >= min).then_some(got) }
        })
        .await
    }
}

/// Verifies a `DigitalRiver-Signature` header independently of the sandbox code:
/// `<ts>, base64(HMAC-SHA256(secret, "<ts>.<body>"))`.
pub fn verify_signature(header: &str, secret: &str, body: &[u8]) -> bool {
    use base64::Engine as _;
    use hmac::{Hmac, Mac};
    let Some((ts, sig)) = header.split_once(", ") else {
        return false;
    };
    if ts.is_empty() || !ts.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    let Ok(sig_bytes) = base64::engine::general_purpose::STANDARD.decode(sig) else {
        return false;
    };
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(ts.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.verify_slice(&sig_bytes).is_ok()
}
