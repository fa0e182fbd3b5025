//! OpenTelemetry traces over OTLP, configured by the standard environment variables
//! and off unless `OTEL_EXPORTER_OTLP_ENDPOINT` (or `…_TRACES_ENDPOINT`) is set.
//!
//! | variable | effect |
//! |---|---|
//! | `OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` | where to send spans; unset: no export |
//! | `OTEL_EXPORTER_OTLP_PROTOCOL`, `…_TRACES_PROTOCOL` | `http/protobuf` (default) or `grpc` |
//! | `OTEL_EXPORTER_OTLP_HEADERS`, `…_TRACES_HEADERS` | headers on every export (e.g. an API key) |
//! | `OTEL_EXPORTER_OTLP_TIMEOUT`, `…_TRACES_TIMEOUT` | per export, in milliseconds (10000) |
//! | `OTEL_EXPORTER_OTLP_CERTIFICATE`, `…_TRACES_CERTIFICATE` | PEM CA for an `https://` collector (else the system's roots) |
//! | `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES` | resource (service name `dr-gateway` unless set) |
//! | `OTEL_TRACES_SAMPLER`, `OTEL_TRACES_SAMPLER_ARG` | sampling (`parentbased_always_on` unless set) |
//! | `OTEL_BSP_*` | batching (queue size, delay, batch size) |
//! | `OTEL_SDK_DISABLED=true`, `OTEL_TRACES_EXPORTER=none` | no export even with an endpoint |
//!
//! Spans leave through a batch processor with a bounded queue (spans beyond it are
//! dropped, never queued without bound), over the stack the gateway already uses:
//! tonic for gRPC, its reqwest client for HTTP; TLS through rustls with aws-lc-rs.
//! W3C Trace Context (`traceparent`, `tracestate`) is read from gRPC metadata and
//! written into Digital River requests.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use opentelemetry::propagation::TextMapPropagator as _;
use opentelemetry::trace::{SpanContext, TraceContextExt as _, TracerProvider as _};
use opentelemetry_http::{HeaderExtractor, HeaderInjector, HttpClient, HttpError};
use opentelemetry_otlp::{SpanExporter, WithHttpConfig as _, WithTonicConfig as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracerProvider, Tracer};
use opentelemetry_sdk::Resource;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// The `service.name` spans carry unless `OTEL_SERVICE_NAME` or
/// `OTEL_RESOURCE_ATTRIBUTES` names one.
pub const DEFAULT_SERVICE_NAME: &str = "dr-gateway";

/// Export timeout unless `OTEL_EXPORTER_OTLP_(TRACES_)TIMEOUT` says otherwise (the
/// OTLP exporter specification's default).
const DEFAULT_EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

static ENABLED: AtomicBool = AtomicBool::new(false);

/// True once spans are exported (the subscriber with the OpenTelemetry layer is
/// installed).
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

pub(super) fn set_enabled() {
    ENABLED.store(true, Ordering::Relaxed);
}

/// Why trace export cannot be set up as the environment asks.
#[derive(Debug, thiserror::Error)]
pub enum OtelError {
    /// A variable holds something the gateway cannot use.
    #[error("{variable}: {reason}")]
    Setting {
        /// The variable.
        variable: &'static str,
        /// Why.
        reason: String,
    },
    /// The exporter refused its configuration.
    #[error("OTLP exporter: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
}

/// A configured export: the provider (flushed at shutdown) and the tracer the
/// `tracing` layer writes to.
#[derive(Debug)]
pub struct Export {
    /// Owns the batch processor; shut it down to flush.
    pub provider: SdkTracerProvider,
    /// What the `tracing` layer records spans with.
    pub tracer: Tracer,
    /// Where spans go, for the start-up log (no credentials, no headers).
    pub destination: String,
}

/// The export the environment asks for; `None` when it asks for none.
///
/// Must run inside a Tokio runtime: both transports run their I/O on it.
pub fn from_env() -> Result<Option<Export>, OtelError> {
    from_lookup(|name| std::env::var(name).ok())
}

fn from_lookup(env: impl Fn(&str) -> Option<String>) -> Result<Option<Export>, OtelError> {
    let var = |name: &str| {
        env(name)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    };
    if var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
        || var("OTEL_TRACES_EXPORTER").is_some_and(|v| v.eq_ignore_ascii_case("none"))
    {
        return Ok(None);
    }
    let Some(endpoint) =
        var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").or_else(|| var("OTEL_EXPORTER_OTLP_ENDPOINT"))
    else {
        return Ok(None);
    };
    let protocol = var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        .or_else(|| var("OTEL_EXPORTER_OTLP_PROTOCOL"))
        .unwrap_or_else(|| "http/protobuf".to_owned());
    let timeout = match var("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT")
        .or_else(|| var("OTEL_EXPORTER_OTLP_TIMEOUT"))
    {
        None => DEFAULT_EXPORT_TIMEOUT,
        Some(ms) => ms
            .parse()
            .map(Duration::from_millis)
            .map_err(|_| OtelError::Setting {
                variable: "OTEL_EXPORTER_OTLP_TIMEOUT",
                reason: format!("{ms:?} is not a number of milliseconds"),
            })?,
    };
    let ca = match var("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE")
        .or_else(|| var("OTEL_EXPORTER_OTLP_CERTIFICATE"))
    {
        None => None,
        Some(path) => Some(std::fs::read(&path).map_err(|e| OtelError::Setting {
            variable: "OTEL_EXPORTER_OTLP_CERTIFICATE",
            reason: format!("cannot read {path}: {e}"),
        })?),
    };
    let https = endpoint.to_ascii_lowercase().starts_with("https://");
    let exporter = match protocol.as_str() {
        "grpc" => {
            let mut builder = SpanExporter::builder().with_tonic();
            if https || ca.is_some() {
                let mut tls = tonic::transport::ClientTlsConfig::new().with_native_roots();
                if let Some(pem) = &ca {
                    tls = tls.ca_certificate(tonic::transport::Certificate::from_pem(pem));
                }
                builder = builder.with_tls_config(tls);
            }
            builder.build()?
        }
        "http/protobuf" => {
            let mut client = reqwest::Client::builder().timeout(timeout);
            if let Some(pem) = &ca {
                let certificate =
                    reqwest::Certificate::from_pem(pem).map_err(|e| OtelError::Setting {
                        variable: "OTEL_EXPORTER_OTLP_CERTIFICATE",
                        reason: format!("not a PEM certificate: {e}"),
                    })?;
                client = client.add_root_certificate(certificate);
            }
            let client = client.build().map_err(|e| OtelError::Setting {
                variable: "OTEL_EXPORTER_OTLP_ENDPOINT",
                reason: format!("cannot build the HTTP client: {e}"),
            })?;
            let runtime =
                tokio::runtime::Handle::try_current().map_err(|_| OtelError::Setting {
                    variable: "OTEL_EXPORTER_OTLP_ENDPOINT",
                    reason: "trace export needs a Tokio runtime".into(),
                })?;
            SpanExporter::builder()
                .with_http()
                .with_http_client(OnRuntime { client, runtime })
                .build()?
        }
        other => {
            return Err(OtelError::Setting {
                variable: "OTEL_EXPORTER_OTLP_PROTOCOL",
                reason: format!("{other:?} is not supported; use http/protobuf or grpc"),
            })
        }
    };
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource())
        .build();
    let tracer = provider.tracer("dr-gateway");
    Ok(Some(Export {
        provider,
        tracer,
        destination: format!("{} ({protocol})", without_userinfo(&endpoint)),
    }))
}

/// The resource from `OTEL_SERVICE_NAME` / `OTEL_RESOURCE_ATTRIBUTES`, with the
/// gateway's name and version where they name none.
fn resource() -> Resource {
    let detected = Resource::builder().build();
    let named = detected
        .get(&opentelemetry::Key::from_static_str("service.name"))
        .is_some_and(|name| !name.as_str().starts_with("unknown_service"));
    let mut builder = Resource::builder().with_attribute(opentelemetry::KeyValue::new(
        "service.version",
        env!("CARGO_PKG_VERSION"),
    ));
    if !named {
        builder = builder.with_service_name(DEFAULT_SERVICE_NAME);
    }
    builder.build()
}

/// `https://user:pass@host/…` → `https://host/…`.
fn without_userinfo(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}{}", &url[..scheme + 3], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

fn propagator() -> TraceContextPropagator {
    TraceContextPropagator::new()
}

/// Makes the caller's span (W3C `traceparent` in `headers`) the parent of `span`.
pub fn set_parent_from_headers(span: &tracing::Span, headers: &HeaderMap) {
    let parent = propagator().extract(&HeaderExtractor(headers));
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
}

/// Writes the current span as `traceparent` / `tracestate` into `headers`.
pub fn inject_current_span(headers: &mut HeaderMap) {
    let context = tracing::Span::current().context();
    propagator().inject_context(&context, &mut HeaderInjector(headers));
}

/// The current span as a W3C `traceparent`, when traces are exported (for messages
/// that carry a trace onwards, e.g. an event published to NATS).
pub fn current_traceparent() -> Option<String> {
    if !enabled() {
        return None;
    }
    let mut headers = HeaderMap::new();
    inject_current_span(&mut headers);
    headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// The span a W3C `traceparent` names, when traces are exported and it is valid.
pub fn span_context_from_traceparent(traceparent: &str) -> Option<SpanContext> {
    if !enabled() {
        return None;
    }
    let mut headers = HeaderMap::new();
    headers.insert(
        "traceparent",
        http::HeaderValue::from_str(traceparent).ok()?,
    );
    let context = propagator().extract(&HeaderExtractor(&headers));
    let span_context = context.span().span_context().clone();
    span_context.is_valid().then_some(span_context)
}

/// The OpenTelemetry identity of the current span, when traces are exported.
pub fn current_span_context() -> Option<SpanContext> {
    if !enabled() {
        return None;
    }
    let context = tracing::Span::current().context();
    let span_context = context.span().span_context().clone();
    span_context.is_valid().then_some(span_context)
}

/// The OpenTelemetry identity of the server span of the RPC the current task works
/// for, when traces are exported.
pub fn current_rpc_span_context() -> Option<SpanContext> {
    if !enabled() {
        return None;
    }
    let span = super::context::RequestContext::current()?.span;
    let span_context = span.context().span().span_context().clone();
    span_context.is_valid().then_some(span_context)
}

/// Makes `parent` (e.g. the webhook span that stored an event) the parent of `span`.
pub fn set_parent(span: &tracing::Span, parent: &SpanContext) {
    let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(parent.clone()));
}

/// Links `span` to `other` (e.g. a delivery to the Subscribe call it is part of).
pub fn add_link(span: &tracing::Span, other: SpanContext) {
    span.add_link(other);
}

/// The gateway's reqwest client as the OTLP/HTTP transport.
///
/// why: the batch processor exports from a thread of its own that is not in the Tokio
/// runtime, while reqwest's I/O needs the runtime; each export is spawned onto it.
#[derive(Debug)]
struct OnRuntime {
    client: reqwest::Client,
    runtime: tokio::runtime::Handle,
}

#[async_trait::async_trait]
impl HttpClient for OnRuntime {
    async fn send_bytes(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, HttpError> {
        let client = self.client.clone();
        self.runtime
            .spawn(async move { client.send_bytes(request).await })
            .await?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn lookup(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |name| vars.get(name).cloned()
    }

    #[tokio::test]
    async fn traces_are_off_without_an_endpoint_or_when_disabled() {
        assert!(from_lookup(lookup(&[])).unwrap().is_none());
        assert!(from_lookup(lookup(&[("OTEL_SERVICE_NAME", "x")]))
            .unwrap()
            .is_none());
        for off in [
            ("OTEL_SDK_DISABLED", "true"),
            ("OTEL_TRACES_EXPORTER", "none"),
        ] {
            let vars = [
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318"),
                off,
            ];
            assert!(from_lookup(lookup(&vars)).unwrap().is_none(), "{off:?}");
        }
    }

    #[tokio::test]
    async fn an_endpoint_turns_export_on_over_either_protocol() {
        for protocol in ["grpc", "http/protobuf"] {
            let export = from_lookup(lookup(&[
                (
                    "OTEL_EXPORTER_OTLP_ENDPOINT",
                    "http://user:secret@127.0.0.1:4317",
                ),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol),
            ]))
            .unwrap()
            .expect("export on");
            assert_eq!(
                export.destination,
                format!("http://127.0.0.1:4317 ({protocol})"),
                "no credentials in what is logged"
            );
            let _ = export.provider.shutdown();
        }
    }

    #[tokio::test]
    async fn an_unsupported_protocol_or_timeout_is_refused_by_name() {
        let error = from_lookup(lookup(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
        ]))
        .unwrap_err();
        assert!(
            error.to_string().contains("OTEL_EXPORTER_OTLP_PROTOCOL"),
            "{error}"
        );
        let error = from_lookup(lookup(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "10s"),
        ]))
        .unwrap_err();
        assert!(
            error.to_string().contains("OTEL_EXPORTER_OTLP_TIMEOUT"),
            "{error}"
        );
    }
}
