//! The pooled HTTP client: one async fn per DR operation, with per-call time budgets,
//! retries for idempotent reads and none for writes.
//!
//! Each HTTP request (each attempt) is a client span `dr.call` named after its route
//! template (`GET /charges/{id}`; exported, not printed: a line logged during a call
//! names the call itself), carries the RPC's `x-request-id` and the trace context
//! (`traceparent`), and is counted and timed by method, route template and status
//! (`dr_gateway_dr_*`); ids never reach a label.

use std::time::{Duration, Instant};

use reqwest::{header, Method, StatusCode, Url};
use secrecy::{ExposeSecret, SecretString};
use serde::{de::DeserializeOwned, Serialize};
use tracing::{field, Instrument};

use super::call_metrics::{self, Outcome};
use super::models::{
    Charge, CreateFulfillment, Event, Fulfillment, ListResponse, Order, Source, UpdateFulfillment,
};
use super::{Error, ErrorBody, RateLimiter, Resource, RetryPolicy};
use crate::redact::SensitiveUrl;
use crate::telemetry::{self, capped, metrics::names};

/// A page of DR results.
pub type Page<T> = ListResponse<T>;

/// How the client reaches DR.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Base URL, e.g. `https://api.digitalriver.com` (printed redacted).
    pub base_url: SensitiveUrl,
    /// DR secret key. Never logged: `SecretString` redacts it in `Debug`.
    pub api_key: SecretString,
    /// `digitalriver-version` header, when pinned.
    pub api_version: Option<String>,
    /// Longest any one DR call may take, whatever the caller's deadline.
    pub max_timeout: Duration,
    /// Retries for idempotent calls.
    pub retry: RetryPolicy,
    /// Calls per second and burst the gateway allows itself toward DR; `None`: no pacing.
    pub rate_limit: Option<(u32, u32)>,
}

/// Per-call options from the caller.
#[derive(Debug, Clone, Default)]
pub struct CallOptions {
    /// When the caller stops waiting (its gRPC deadline, already minus a margin).
    pub deadline: Option<Instant>,
    /// Sent as `upstream-id` so DR support can trace the call (docs/digital-river.md §5.4);
    /// generated when absent.
    pub request_id: Option<String>,
}

/// Filters of `GET /fulfillments` (docs/digital-river.md §1.4).
#[derive(Debug, Clone, Default)]
pub struct FulfillmentQuery {
    /// `orderId`.
    pub order_id: Option<String>,
    /// `ids`, sent as repeated keys.
    pub ids: Vec<String>,
    /// `skuId`.
    pub sku_id: Option<String>,
    /// `trackingCompany`.
    pub tracking_company: Option<String>,
    /// `trackingNumber`.
    pub tracking_number: Option<String>,
    /// `createdTime[gte]`, RFC 3339.
    pub created_gte: Option<String>,
    /// `createdTime[lt]`, RFC 3339.
    pub created_lt: Option<String>,
    /// `limit`, 1..=100.
    pub limit: Option<u32>,
    /// `startingAfter` (an object id).
    pub starting_after: Option<String>,
}

/// Filters of `GET /events` (docs/digital-river.md §3.1).
#[derive(Debug, Clone, Default)]
pub struct EventQuery {
    /// One type (may hold `*`) → `type`; several exact names → `types`.
    pub types: Vec<String>,
    /// `createdTime[gt]`, RFC 3339.
    pub created_gt: Option<String>,
    /// `createdTime[gte]`, RFC 3339.
    pub created_gte: Option<String>,
    /// `createdTime[lt]`, RFC 3339.
    pub created_lt: Option<String>,
    /// `limit`, 1..=100.
    pub limit: Option<u32>,
    /// `startingAfter` (an event id).
    pub starting_after: Option<String>,
    /// `endingBefore` (an event id).
    pub ending_before: Option<String>,
}

/// Digital River REST client. Cheap to clone: it shares one connection pool.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: Url,
    config: std::sync::Arc<ClientConfig>,
    fixed: std::sync::Arc<FixedHeaders>,
    limiter: Option<std::sync::Arc<RateLimiter>>,
}

/// `upstream-id`: the id DR support finds a call by (docs/digital-river.md §5.4).
const UPSTREAM_ID: header::HeaderName = header::HeaderName::from_static("upstream-id");
/// `digitalriver-version`: the API version, when pinned.
const DR_VERSION: header::HeaderName = header::HeaderName::from_static("digitalriver-version");
const JSON: header::HeaderValue = header::HeaderValue::from_static("application/json");

/// The header values every call sends, built once from the configuration.
///
/// Why once: building `Bearer <key>` and parsing the version on every call allocated
/// and copied both per DR request; a stored `HeaderValue` is shared by reference count.
/// It also refuses a key no HTTP header can carry at start, not on the first call.
struct FixedHeaders {
    /// `Bearer <key>`, marked sensitive so HTTP/2 never indexes it.
    authorization: header::HeaderValue,
    version: Option<header::HeaderValue>,
}

impl FixedHeaders {
    fn new(config: &ClientConfig) -> Result<Self, Error> {
        let invalid = |what: &str| Error::Request {
            path: String::new(),
            // why: never the value itself: the key is a secret.
            reason: format!("the DR {what} holds characters an HTTP header cannot carry"),
        };
        let mut authorization =
            header::HeaderValue::try_from(format!("Bearer {}", config.api_key.expose_secret()))
                .map_err(|_| invalid("API key"))?;
        authorization.set_sensitive(true);
        let version = config
            .api_version
            .as_deref()
            .map(header::HeaderValue::from_str)
            .transpose()
            .map_err(|_| invalid("API version"))?;
        Ok(Self {
            authorization,
            version,
        })
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // why: `Url`'s Debug prints a password the base URL may carry.
        f.debug_struct("Client")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// A request the client is about to send.
struct Call<'a> {
    method: Method,
    /// The path as a template (`/charges/{id}`): metrics labels and span names.
    route: &'static str,
    segments: &'a [&'a str],
    query: Vec<(&'static str, String)>,
    body: Option<Vec<u8>>,
    retry: bool,
    /// What the call addresses; a 404 names it.
    resource: Option<Box<Resource>>,
}

impl Client {
    /// Builds the client; fails on a base URL that cannot carry paths.
    pub fn new(config: ClientConfig) -> Result<Self, Error> {
        let base = Url::parse(config.base_url.expose()).map_err(|e| Error::Request {
            path: String::new(),
            reason: format!("invalid DR base URL: {e}"),
        })?;
        if base.cannot_be_a_base() {
            return Err(Error::Request {
                path: String::new(),
                reason: "invalid DR base URL: it cannot carry paths".into(),
            });
        }
        let http = reqwest::Client::builder()
            .user_agent(concat!("dr-gateway/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(config.max_timeout.min(Duration::from_secs(5)))
            .pool_idle_timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| Error::Request {
                path: String::new(),
                reason: format!("could not build the HTTP client: {e}"),
            })?;
        let fixed = std::sync::Arc::new(FixedHeaders::new(&config)?);
        let limiter = config
            .rate_limit
            .map(|(rate, burst)| std::sync::Arc::new(RateLimiter::new(rate, burst)));
        Ok(Self {
            http,
            base,
            config: std::sync::Arc::new(config),
            fixed,
            limiter,
        })
    }

    /// The limiter pacing this client's calls (shared by its clones), if pacing is on.
    pub fn rate_limiter(&self) -> Option<std::sync::Arc<RateLimiter>> {
        self.limiter.clone()
    }

    /// `POST /fulfillments`. Never retried: DR has no idempotency key (docs/digital-river.md §5.3).
    pub async fn create_fulfillment(
        &self,
        body: &CreateFulfillment,
        opts: &CallOptions,
    ) -> Result<Fulfillment, Error> {
        // why: an unknown order is DR's 404 here (`parameter: orderId`); the order is
        // what the POST addresses (docs/digital-river.md §1.6).
        let call =
            Call::post("/fulfillments", &["fulfillments"], body)?.about("order", &body.order_id);
        self.send(call, opts).await
    }

    /// `GET /fulfillments/{id}`.
    pub async fn get_fulfillment(
        &self,
        id: &str,
        opts: &CallOptions,
    ) -> Result<Fulfillment, Error> {
        self.send(
            Call::get("/fulfillments/{id}", &["fulfillments", id], Vec::new())
                .about("fulfillment", id),
            opts,
        )
        .await
    }

    /// `GET /fulfillments` with filters.
    pub async fn list_fulfillments(
        &self,
        query: &FulfillmentQuery,
        opts: &CallOptions,
    ) -> Result<Page<Fulfillment>, Error> {
        let mut q = Vec::new();
        push_opt(&mut q, "orderId", &query.order_id);
        for id in &query.ids {
            q.push(("ids", id.clone()));
        }
        push_opt(&mut q, "skuId", &query.sku_id);
        push_opt(&mut q, "trackingCompany", &query.tracking_company);
        push_opt(&mut q, "trackingNumber", &query.tracking_number);
        push_opt(&mut q, "createdTime[gte]", &query.created_gte);
        push_opt(&mut q, "createdTime[lt]", &query.created_lt);
        push_opt(&mut q, "limit", &query.limit.map(|l| l.to_string()));
        push_opt(&mut q, "startingAfter", &query.starting_after);
        self.send(Call::get("/fulfillments", &["fulfillments"], q), opts)
            .await
    }

    /// `POST /fulfillments/{id}`: tracking update (docs/digital-river.md §1.5). Not retried.
    pub async fn update_fulfillment(
        &self,
        id: &str,
        body: &UpdateFulfillment,
        opts: &CallOptions,
    ) -> Result<Fulfillment, Error> {
        self.send(
            Call::post("/fulfillments/{id}", &["fulfillments", id], body)?.about("fulfillment", id),
            opts,
        )
        .await
    }

    /// `GET /charges/{id}`.
    pub async fn get_charge(&self, id: &str, opts: &CallOptions) -> Result<Charge, Error> {
        self.send(
            Call::get("/charges/{id}", &["charges", id], Vec::new()).about("charge", id),
            opts,
        )
        .await
    }

    /// `GET /sources/{id}`: a payment source (type, card brand, last four digits, expiry).
    pub async fn get_source(&self, id: &str, opts: &CallOptions) -> Result<Source, Error> {
        self.send(
            Call::get("/sources/{id}", &["sources", id], Vec::new()).about("source", id),
            opts,
        )
        .await
    }

    /// `GET /orders/{id}`.
    pub async fn get_order(&self, id: &str, opts: &CallOptions) -> Result<Order, Error> {
        self.send(
            Call::get("/orders/{id}", &["orders", id], Vec::new()).about("order", id),
            opts,
        )
        .await
    }

    /// `GET /orders?upstreamIds=<id>`: orders carrying the merchant's own id.
    pub async fn list_orders_by_upstream_id(
        &self,
        upstream_id: &str,
        opts: &CallOptions,
    ) -> Result<Page<Order>, Error> {
        let q = vec![("upstreamIds", upstream_id.to_owned())];
        self.send(Call::get("/orders", &["orders"], q), opts).await
    }

    /// `GET /events/{id}`.
    pub async fn get_event(&self, id: &str, opts: &CallOptions) -> Result<Event, Error> {
        self.send(
            Call::get("/events/{id}", &["events", id], Vec::new()).about("event", id),
            opts,
        )
        .await
    }

    /// `GET /events` with filters; DR keeps 30 days.
    pub async fn list_events(
        &self,
        query: &EventQuery,
        opts: &CallOptions,
    ) -> Result<Page<Event>, Error> {
        let mut q = Vec::new();
        // why: DR takes either `type` (one name or a `*` group) or `types` (exact
        // names), never both (docs/digital-river.md §3.1).
        match query.types.as_slice() {
            [] => {}
            [one] => q.push(("type", one.clone())),
            many => q.extend(many.iter().map(|t| ("types", t.clone()))),
        }
        push_opt(&mut q, "createdTime[gt]", &query.created_gt);
        push_opt(&mut q, "createdTime[gte]", &query.created_gte);
        push_opt(&mut q, "createdTime[lt]", &query.created_lt);
        push_opt(&mut q, "limit", &query.limit.map(|l| l.to_string()));
        push_opt(&mut q, "startingAfter", &query.starting_after);
        push_opt(&mut q, "endingBefore", &query.ending_before);
        self.send(Call::get("/events", &["events"], q), opts).await
    }

    async fn send<T: DeserializeOwned>(
        &self,
        call: Call<'_>,
        opts: &CallOptions,
    ) -> Result<T, Error> {
        let url = self.url(call.segments)?;
        let path = url.path().to_owned();
        let method = method_name(&call.method);
        let request_id = opts
            .request_id
            .clone()
            .unwrap_or_else(crate::random_id::uuid_text);
        let max_attempts = if call.retry {
            self.config.retry.max_attempts.max(1)
        } else {
            1
        };
        let mut attempt = 1;
        loop {
            let budget = self.budget(opts.deadline);
            if budget.is_zero() {
                return Err(Error::Timeout {
                    method,
                    path,
                    budget,
                    maybe_sent: false,
                });
            }
            if attempt > 1 {
                metrics::counter!(names::DR_RETRIES, "method" => method, "route" => call.route)
                    .increment(1);
            }
            if let Some(limiter) = &self.limiter {
                // why: every attempt, retries included, counts against DR's limit.
                if let Err(w) = limiter.acquire(opts.deadline).await {
                    return Err(Error::RateLimited {
                        method,
                        path,
                        retry_after: w.retry_after,
                    });
                }
            }
            let span = tracing::info_span!(
                target: telemetry::logging::DR_CALL_TARGET,
                "dr.call",
                otel.name = %format_args!("{method} {}", call.route),
                otel.kind = "client",
                otel.status_code = field::Empty,
                http.request.method = method,
                url.template = call.route,
                url.path = %capped(&path),
                http.request.resend_count = attempt - 1,
                http.response.status_code = field::Empty,
                attempt,
                upstream_id = %capped(&request_id),
                latency_ms = field::Empty,
            );
            let result = self
                .attempt::<T>(&call, &url, &path, &request_id, budget)
                .instrument(span)
                .await;
            let error = match result {
                Ok(value) => return Ok(value),
                Err(e) => e,
            };
            if attempt >= max_attempts || !RetryPolicy::is_retryable(&error) {
                return Err(error);
            }
            let Some(wait) = self.config.retry.delay(attempt, &error) else {
                return Err(error);
            };
            // why: a retry that cannot finish before the caller gives up is wasted
            // load on DR; answer with what we have instead.
            if let Some(deadline) = opts.deadline {
                if Instant::now() + wait >= deadline {
                    return Err(error);
                }
            }
            tracing::debug!(?wait, attempt, "retrying DR call");
            tokio::time::sleep(wait).await;
            attempt += 1;
        }
    }

    async fn attempt<T: DeserializeOwned>(
        &self,
        call: &Call<'_>,
        url: &Url,
        path: &str,
        request_id: &str,
        budget: Duration,
    ) -> Result<T, Error> {
        let method = method_name(&call.method);
        let started = Instant::now();
        let result = self
            .exchange::<T>(call, url, path, request_id, budget, started)
            .await;
        record(method, call.route, &result, started);
        result.map(|(value, _)| value)
    }

    /// One HTTP request and its answer; see [`Self::attempt`].
    async fn exchange<T: DeserializeOwned>(
        &self,
        call: &Call<'_>,
        url: &Url,
        path: &str,
        request_id: &str,
        budget: Duration,
        started: Instant,
    ) -> Result<(T, u16), Error> {
        let method = method_name(&call.method);
        let mut url = url.clone();
        if !call.query.is_empty() {
            url.query_pairs_mut().extend_pairs(&call.query);
        }
        let mut builder = self
            .http
            .request(call.method.clone(), url)
            .timeout(budget)
            .header(header::AUTHORIZATION, self.fixed.authorization.clone())
            .header(header::ACCEPT, JSON)
            .header(UPSTREAM_ID, request_id)
            // why: the RPC's x-request-id and the trace context, so DR's side of a
            // call can be found from the caller's (telemetry/context.rs).
            .headers(telemetry::context::dr_request_headers());
        if let Some(version) = &self.fixed.version {
            builder = builder.header(DR_VERSION, version.clone());
        }
        if let Some(body) = &call.body {
            builder = builder
                .header(header::CONTENT_TYPE, JSON)
                .body(body.clone());
        }
        let response = builder
            .send()
            .await
            .map_err(|e| transport_error(e, method, path, budget))?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let Some(bytes) = read_capped(response, crate::defaults::DR_MAX_RESPONSE_BYTES)
            .await
            .map_err(|e| transport_error(e, method, path, budget))?
        else {
            tracing::warn!(
                method,
                route = call.route,
                status = status.as_u16(),
                limit = crate::defaults::DR_MAX_RESPONSE_BYTES,
                "DR sent a body larger than the gateway reads"
            );
            return Err(Error::Decode {
                status: status.as_u16(),
                method,
                path: path.to_owned(),
                source: serde::de::Error::custom(format!(
                    "the body is larger than {} bytes",
                    crate::defaults::DR_MAX_RESPONSE_BYTES
                )),
            });
        };
        let span = tracing::Span::current();
        let latency_ms = started.elapsed().as_millis() as u64;
        // why: one record, not one per field: the JSON log formatter re-reads and
        // re-writes all of a span's fields on every record (~25k instructions each,
        // crates/dr-gateway/benches/README.md).
        if status.is_success() {
            tracing::record_all!(
                span,
                http.response.status_code = status.as_u16(),
                latency_ms = latency_ms
            );
        } else {
            tracing::record_all!(
                span,
                http.response.status_code = status.as_u16(),
                latency_ms = latency_ms,
                otel.status_code = "ERROR"
            );
        }

        if status.is_success() {
            return serde_json::from_slice(&bytes)
                .map(|value| (value, status.as_u16()))
                .map_err(|source| {
                    log_undecodable(call, status, &bytes);
                    Error::Decode {
                        status: status.as_u16(),
                        method,
                        path: path.to_owned(),
                        source,
                    }
                });
        }
        let body = if bytes.iter().all(u8::is_ascii_whitespace) {
            None
        } else {
            match serde_json::from_slice::<ErrorBody>(&bytes) {
                Ok(body) => Some(Box::new(body)),
                Err(source) => {
                    log_undecodable(call, status, &bytes);
                    return Err(Error::Decode {
                        status: status.as_u16(),
                        method,
                        path: path.to_owned(),
                        source,
                    });
                }
            }
        };
        tracing::info!(
            method,
            route = call.route,
            status = status.as_u16(),
            "DR answered with an error"
        );
        Err(Error::Api {
            status: status.as_u16(),
            method,
            path: path.to_owned(),
            body,
            retry_after,
            request_id: Some(request_id.to_owned()),
            resource: call.resource.clone(),
        })
    }

    /// The URL of `segments` under the base URL.
    ///
    /// why: ids come from callers. Pushed as segments, `/`, `?`, `#` and `%` in them
    /// are percent-encoded, so an id cannot address another resource; but `.` and
    /// `..` are dot-segments URL parsing resolves (`/orders/..` is `/`), and an empty
    /// one changes the path too. The handlers refuse such ids before any call
    /// (`grpc::ids`); refusing them here as well keeps one forgotten check from
    /// turning `POST /fulfillments/{id}` into `POST /fulfillments`.
    fn url(&self, segments: &[&str]) -> Result<Url, Error> {
        if let Some(bad) = segments.iter().find(|s| matches!(**s, "" | "." | "..")) {
            return Err(Error::Request {
                path: format!("/{}", segments.first().copied().unwrap_or_default()),
                reason: format!("refusing the path segment {bad:?}: it would change the path"),
            });
        }
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        Ok(url)
    }

    fn budget(&self, deadline: Option<Instant>) -> Duration {
        let cap = self.config.max_timeout;
        match deadline {
            Some(d) => d.saturating_duration_since(Instant::now()).min(cap),
            None => cap,
        }
    }
}

impl<'a> Call<'a> {
    fn get(
        route: &'static str,
        segments: &'a [&'a str],
        query: Vec<(&'static str, String)>,
    ) -> Self {
        Self {
            method: Method::GET,
            route,
            segments,
            query,
            body: None,
            retry: true,
            resource: None,
        }
    }

    fn post(
        route: &'static str,
        segments: &'a [&'a str],
        body: &impl Serialize,
    ) -> Result<Self, Error> {
        let body = serde_json::to_vec(body).map_err(|e| Error::Request {
            path: segments.join("/"),
            reason: format!("could not encode the body: {e}"),
        })?;
        Ok(Self {
            method: Method::POST,
            route,
            segments,
            query: Vec::new(),
            body: Some(body),
            retry: false,
            resource: None,
        })
    }

    /// Names the resource the call addresses.
    fn about(mut self, kind: &'static str, id: &str) -> Self {
        self.resource = Some(Box::new(Resource::new(kind, id)));
        self
    }
}

fn push_opt(q: &mut Vec<(&'static str, String)>, key: &'static str, value: &Option<String>) {
    if let Some(v) = value {
        q.push((key, v.clone()));
    }
}

fn method_name(method: &Method) -> &'static str {
    if *method == Method::POST {
        "POST"
    } else {
        "GET"
    }
}

/// The response body, or `None` when it is (or says it will be) larger than `limit`.
///
/// why: a body is held in memory whole; an upstream that streams without end must
/// not be able to grow the gateway's memory without bound.
async fn read_capped(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<Option<bytes::Bytes>, reqwest::Error> {
    if response
        .content_length()
        .is_some_and(|declared| declared > limit as u64)
    {
        return Ok(None);
    }
    let mut body = bytes::BytesMut::new();
    while let Some(chunk) = response.chunk().await? {
        if body.len() + chunk.len() > limit {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body.freeze()))
}

fn transport_error(e: reqwest::Error, method: &'static str, path: &str, budget: Duration) -> Error {
    // why: reqwest's errors print the whole URL, with any credentials the base URL
    // carries and caller-supplied ids of any length; the error keeps the path in
    // its own (capped) field.
    let e = e.without_url();
    let path = path.to_owned();
    if e.is_connect() {
        Error::Connect {
            method,
            path,
            source: e,
        }
    } else if e.is_timeout() {
        Error::Timeout {
            method,
            path,
            budget,
            maybe_sent: true,
        }
    } else {
        Error::Connection {
            method,
            path,
            source: e,
        }
    }
}

/// Counts and times one HTTP request to DR: by status, or how it failed without one.
fn record<T>(
    method: &'static str,
    route: &'static str,
    result: &Result<(T, u16), Error>,
    started: Instant,
) {
    let outcome = match result {
        Ok((_, status)) => Outcome::Status(*status),
        Err(Error::Api { status, .. } | Error::Decode { status, .. }) => Outcome::Status(*status),
        Err(Error::Timeout { .. }) => Outcome::Timeout,
        Err(Error::Connect { .. }) => Outcome::ConnectError,
        Err(Error::Connection { .. }) => Outcome::ConnectionError,
        Err(Error::Request { .. } | Error::RateLimited { .. }) => Outcome::NotSent,
    };
    if let Err(e) = result {
        if !matches!(e, Error::Api { .. }) {
            tracing::Span::current().record("otel.status_code", "ERROR");
        }
    }
    call_metrics::record(method, route, outcome, started.elapsed());
}

fn log_undecodable(call: &Call<'_>, status: StatusCode, bytes: &[u8]) {
    let head = String::from_utf8_lossy(&bytes[..bytes.len().min(256)]);
    tracing::warn!(
        method = method_name(&call.method),
        route = call.route,
        status = status.as_u16(),
        body_head = %head,
        "DR sent an undecodable body"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> Client {
        Client::new(ClientConfig {
            base_url: "https://gw:hunter2@dr.example/v1".into(),
            api_key: SecretString::from("sk_test_x".to_owned()),
            api_version: None,
            max_timeout: Duration::from_secs(1),
            retry: RetryPolicy::default(),
            rate_limit: None,
        })
        .expect("a valid base URL")
    }

    #[test]
    fn a_path_segment_that_would_move_the_path_is_refused_not_resolved() {
        let client = client();
        for segments in [
            &["orders", ".."][..],
            &["fulfillments", "."],
            &["charges", ""],
        ] {
            assert!(
                matches!(client.url(segments), Err(Error::Request { .. })),
                "{segments:?}"
            );
        }
        let url = client.url(&["fulfillments", "a/..?#%"]).unwrap();
        assert_eq!(url.path(), "/v1/fulfillments/a%2F..%3F%23%25");
    }

    #[test]
    fn a_key_no_header_can_carry_is_refused_at_build_without_printing_it() {
        let built = Client::new(ClientConfig {
            api_key: SecretString::from("sk_test_secret\nInjected: 1".to_owned()),
            ..client().config.as_ref().clone()
        });
        let Err(error) = built else {
            panic!("a key with a line break was accepted");
        };
        let text = error.to_string();
        assert!(text.contains("API key"), "{text}");
        assert!(!text.contains("sk_test_secret"), "{text}");
        let version = Client::new(ClientConfig {
            api_version: Some("2021-12-13\r".into()),
            ..client().config.as_ref().clone()
        });
        assert!(matches!(version, Err(Error::Request { .. })));
    }

    #[test]
    fn the_authorization_header_is_marked_sensitive() {
        assert!(client().fixed.authorization.is_sensitive());
        assert_eq!(
            client().fixed.authorization.to_str().ok(),
            Some("Bearer sk_test_x")
        );
    }

    #[test]
    fn the_client_prints_no_credential_of_its_base_url() {
        assert!(!format!("{:?}", client()).contains("hunter2"));
    }
}
