//! Webhook endpoints and delivery: signing, background sending with retries.
//!
//! Delivery never blocks an API call: emitting an event `try_send`s one job per matching
//! endpoint into a bounded queue; a dispatcher task runs up to `MAX_IN_FLIGHT` deliveries
//! at a time, each on its own (DR's way: events arrive in any order). A job emitted in
//! `in_order` mode goes instead to its endpoint's worker, which sends one delivery at a
//! time, retries included, in emission order (bounded queue per endpoint). Each attempt
//! is signed afresh (new timestamp, current secret), times out after the policy's timeout
//! (3000 ms, docs/digital-river.md §4.2) and counts as success only on 2xx.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;

use super::clock::fmt_secs;
use super::glob::glob_match;
use super::state::App;

/// Bounded capacity of the delivery queue.
pub(crate) const QUEUE_CAPACITY: usize = 1024;
/// Deliveries sent concurrently.
const MAX_IN_FLIGHT: usize = 32;
/// Delivery attempts kept in `GET /sandbox/deliveries`.
pub(crate) const DELIVERY_LOG_CAPACITY: usize = 10_000;

/// A registered endpoint.
#[derive(Debug, Clone)]
pub(crate) struct Webhook {
    /// UUID.
    pub id: String,
    /// Where events are POSTed.
    pub url: String,
    /// Current signing secret (used for every delivery).
    pub secret: String,
    /// The secret replaced by the last rotation and until when it stays active.
    pub previous: Option<(String, DateTime<Utc>)>,
    /// Event type globs; empty means all.
    pub types: Vec<String>,
    /// Disabled endpoints get nothing.
    pub enabled: bool,
    /// Created.
    pub created: DateTime<Utc>,
}

impl Webhook {
    /// Whether this endpoint subscribes to `event_type`.
    pub(crate) fn wants(&self, event_type: &str) -> bool {
        self.enabled
            && (self.types.is_empty() || self.types.iter().any(|p| glob_match(p, event_type)))
    }

    /// Control-surface JSON. `secrets` lists the active ones (current + unexpired previous).
    pub(crate) fn to_json(&self, now: DateTime<Utc>) -> Value {
        let mut secrets = vec![json!({"secret": self.secret, "current": true})];
        if let Some((old, until)) = &self.previous {
            if *until > now {
                secrets.push(
                    json!({"secret": old, "current": false, "expiresTime": fmt_secs(*until)}),
                );
            }
        }
        json!({
            "id": self.id,
            "url": self.url,
            "address": self.url,
            "types": if self.types.is_empty() { vec!["*".to_owned()] } else { self.types.clone() },
            "enabled": self.enabled,
            "apiVersion": super::events::DR_VERSION,
            "createdTime": fmt_secs(self.created),
            "secret": self.secret,
            "secrets": secrets,
        })
    }
}

/// `base64(HMAC-SHA256(secret, "<ts>.<body>"))`, standard alphabet with padding (docs/digital-river.md §4.3).
pub fn sign(secret: &str, timestamp: &str, body: &[u8]) -> String {
    // why: HMAC accepts keys of any length, so `new_from_slice` cannot fail here; fall back
    // to an empty signature rather than panic.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
        return String::new();
    };
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// The `DigitalRiver-Signature` value: `<ts>, <sig>` (docs/digital-river.md §4.3, SFCC cartridge split on ", ").
pub fn signature_header(secret: &str, timestamp: &str, body: &[u8]) -> String {
    format!("{timestamp}, {}", sign(secret, timestamp, body))
}

/// One delivery to do.
#[derive(Debug, Clone)]
pub(crate) struct DeliveryJob {
    /// Event id.
    pub event_id: String,
    /// Event type.
    pub event_type: String,
    /// Endpoint id (its url and secret are read at send time).
    pub webhook_id: String,
    /// The serialized event.
    pub body: Arc<[u8]>,
    /// Emitted in `in_order` mode: sent by the endpoint's worker, after every earlier
    /// in-order job of that endpoint.
    pub in_order: bool,
    /// A concurrent delivery first waits a random time below this.
    pub jitter: Duration,
}

/// One delivery attempt, for `GET /sandbox/deliveries`.
#[derive(Debug, Clone)]
pub(crate) struct DeliveryRecord {
    /// Event id.
    pub event_id: String,
    /// Event type.
    pub event_type: String,
    /// Endpoint id.
    pub webhook_id: String,
    /// Endpoint URL.
    pub url: String,
    /// 1-based attempt number.
    pub attempt: u32,
    /// HTTP status if an answer came.
    pub status: Option<u16>,
    /// Transport error or timeout.
    pub error: Option<String>,
    /// The `DigitalRiver-Signature` header sent.
    pub signature: String,
    /// Wall time of the attempt.
    pub at: DateTime<Utc>,
    /// How long it took.
    pub duration_ms: u64,
    /// Whether another attempt follows (false on success and on the last attempt).
    pub will_retry: bool,
}

impl DeliveryRecord {
    /// Control-surface JSON.
    pub(crate) fn to_json(&self) -> Value {
        json!({
            "eventId": self.event_id,
            "eventType": self.event_type,
            "webhookId": self.webhook_id,
            "url": self.url,
            "attempt": self.attempt,
            "status": self.status,
            "error": self.error,
            "success": self.status.is_some_and(|s| (200..300).contains(&s)),
            "signature": self.signature,
            "attemptedTime": super::clock::fmt_event_time(self.at),
            "durationMs": self.duration_ms,
            "willRetry": self.will_retry,
        })
    }
}

/// Runs deliveries until aborted. Dropping this task aborts the deliveries in flight.
pub(crate) async fn run_dispatcher(app: Arc<App>, mut rx: mpsc::Receiver<DeliveryJob>) {
    let permits = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut tasks = JoinSet::new();
    // One sequential worker per endpoint with in-order jobs.
    let mut in_order: HashMap<String, mpsc::Sender<DeliveryJob>> = HashMap::new();
    loop {
        tokio::select! {
            job = rx.recv() => {
                let Some(job) = job else { break };
                if job.in_order {
                    let worker = in_order.entry(job.webhook_id.clone()).or_insert_with(|| {
                        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
                        tasks.spawn(run_in_order(app.clone(), rx));
                        tx
                    });
                    // why: a full queue pauses the dispatcher (backpressure), never reorders.
                    if worker.send(job).await.is_err() {
                        break;
                    }
                    continue;
                }
                let Ok(permit) = permits.clone().acquire_owned().await else { break };
                let app = app.clone();
                tasks.spawn(async move {
                    if !job.jitter.is_zero() {
                        // why: emulates the network: concurrent requests take
                        // different times, so they arrive out of order (not a wait
                        // for anything).
                        let ms = u64::try_from(job.jitter.as_millis()).unwrap_or(u64::MAX);
                        tokio::time::sleep(Duration::from_millis(rand::random_range(0..ms.max(1)))).await;
                    }
                    deliver(&app, job).await;
                    drop(permit);
                });
            }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    drop(in_order);
    while tasks.join_next().await.is_some() {}
}

/// Sends one endpoint's in-order jobs one after the other, each with its retries.
async fn run_in_order(app: Arc<App>, mut rx: mpsc::Receiver<DeliveryJob>) {
    while let Some(job) = rx.recv().await {
        deliver(&app, job).await;
    }
}

/// Delivers one event to one endpoint, retrying with exponential backoff.
#[tracing::instrument(skip_all, fields(event_id = %job.event_id, webhook_id = %job.webhook_id))]
async fn deliver(app: &App, job: DeliveryJob) {
    let policy = app.retry.clone();
    let attempts = policy.attempts.max(1);
    for attempt in 1..=attempts {
        // Read url/secret now: a rotation between attempts signs the retry with the new secret.
        let Some(hook) = app
            .lock()
            .webhooks
            .iter()
            .find(|w| w.id == job.webhook_id)
            .cloned()
        else {
            return;
        };
        if !hook.enabled {
            return;
        }
        // why: the signature timestamp is wall time, not the sandbox clock — receivers
        // check it against their own clock (docs/digital-river.md §4.3 "timestamp … replay attacks").
        let ts = Utc::now().timestamp().to_string();
        let signature = signature_header(&hook.secret, &ts, &job.body);
        let started = Instant::now();
        let result = app
            .http
            .post(&hook.url)
            .timeout(policy.timeout)
            .header("content-type", "application/json")
            .header("DigitalRiver-Signature", &signature)
            .body(job.body.to_vec())
            .send()
            .await;
        let (status, error) = match result {
            Ok(resp) => (Some(resp.status().as_u16()), None),
            Err(e) if e.is_timeout() => (
                None,
                Some(format!("timeout after {} ms", policy.timeout.as_millis())),
            ),
            Err(e) => (None, Some(error_chain(&e))),
        };
        let ok = status.is_some_and(|s| (200..300).contains(&s));
        tracing::debug!(attempt, ?status, ?error, "webhook delivery attempt");
        app.lock().record_delivery(DeliveryRecord {
            event_id: job.event_id.clone(),
            event_type: job.event_type.clone(),
            webhook_id: hook.id.clone(),
            url: hook.url.clone(),
            attempt,
            status,
            error,
            signature,
            at: Utc::now(),
            duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            will_retry: !ok && attempt < attempts,
        });
        if ok || attempt == attempts {
            return;
        }
        tokio::time::sleep(backoff(policy.base_delay, attempt)).await;
    }
}

/// Delay before attempt `attempt + 1`: base × 2^(attempt−1), capped at one hour.
fn backoff(base: Duration, attempt: u32) -> Duration {
    let factor = 1u32 << (attempt.saturating_sub(1)).min(16);
    base.saturating_mul(factor).min(Duration::from_secs(3600))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn signs_ts_dot_body() {
        // Independent: HMAC-SHA256("secret", "1.{}") computed with the same primitives.
        let mut mac = Hmac::<Sha256>::new_from_slice(b"secret").unwrap();
        mac.update(b"1.{}");
        let expected =
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        assert_eq!(
            signature_header("secret", "1", b"{}"),
            format!("1, {expected}")
        );
    }

    #[test]
    fn backoff_doubles() {
        let b = Duration::from_millis(10);
        assert_eq!(backoff(b, 1), Duration::from_millis(10));
        assert_eq!(backoff(b, 3), Duration::from_millis(40));
    }
}
