//! The `tracing` subscriber: an env filter (`RUST_LOG`, default `info`), pretty or
//! JSON lines on stdout, and — when the environment asks for it — OpenTelemetry
//! export of the gateway's spans ([`super::otel`]).
//!
//! Each output has its own filter: `RUST_LOG` decides what is printed, while the
//! exporter takes the gateway's INFO spans and events plus the DEBUG-level delivery
//! spans of the event stream (one per event and subscriber: too many to print, worth
//! exporting; without an exporter they are never even created). It leaves out the
//! handlers' own spans, which repeat the server span of their RPC.
//!
//! Every printed line is at most [`LOG_LINE_MAX_BYTES`]: a longer one is cut (pretty)
//! or replaced by a short JSON object saying so (JSON), so one oversized value can
//! never flood the log pipeline. Values from outside are capped long before that
//! ([`super::capped`]).

use std::io::{self, Write};

use tracing::level_filters::LevelFilter;
use tracing_subscriber::filter::{self, FilterExt as _, Targets};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::{fmt, prelude::*, EnvFilter, Layer, Registry};

use super::json_lines::JsonLines;
use super::otel::{self, Export};
use super::span_fields::SpanFieldsJson;
use crate::config::LogFormat;
use crate::defaults::LOG_LINE_MAX_BYTES;

/// The target of the per-event delivery spans of the event stream.
pub const DELIVERY_TARGET: &str = "dr_gateway::events::delivery";

/// The target of the `dr.call` client spans, one per HTTP request to DR: exported,
/// never printed (see [`printed_layer`]).
pub const DR_CALL_TARGET: &str = "dr_gateway::digital_river::call";

/// What [`init`] set up; [`Telemetry::shutdown`] flushes spans still queued.
#[derive(Debug, Default)]
pub struct Telemetry {
    export: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Telemetry {
    /// Flushes queued spans and stops the exporter (waits at most its export timeout).
    pub async fn shutdown(self) {
        if let Some(provider) = self.export {
            let flushed = tokio::task::spawn_blocking(move || provider.shutdown()).await;
            if let Ok(Err(e)) = flushed {
                tracing::warn!(error = %e, "could not flush the last spans");
            }
        }
    }
}

/// Installs the global subscriber; a second call (tests) is a no-op. Trace export
/// follows the `OTEL_*` environment ([`otel`]); a setting it cannot use is logged
/// and export stays off (the gateway still serves).
pub fn init(format: LogFormat) -> Telemetry {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let printed = printed_layer(format, CappedLines::stdout(format), filter);
    let (export, export_error) = match otel::from_env() {
        Ok(export) => (export, None),
        Err(e) => (None, Some(e)),
    };
    let mut layers: Vec<Box<dyn Layer<Registry> + Send + Sync>> = vec![printed];
    let mut destination = None;
    let mut provider = None;
    if let Some(Export {
        provider: p,
        tracer,
        destination: d,
    }) = export
    {
        // why: the handlers' own spans (`grpc::…`) repeat the RPC the server span
        // already is; without them the DR client spans are its direct children.
        let exported = Targets::new()
            .with_target("dr_gateway", LevelFilter::INFO)
            .with_target(DELIVERY_TARGET, LevelFilter::DEBUG)
            .and(filter::filter_fn(|meta| {
                !(meta.is_span() && meta.target().starts_with("dr_gateway::grpc"))
            }));
        layers.push(
            tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_filter(exported)
                .boxed(),
        );
        destination = Some(d);
        provider = Some(p);
    }
    if tracing_subscriber::registry()
        .with(layers)
        .try_init()
        .is_err()
    {
        return Telemetry::default();
    }
    if let Some(destination) = destination {
        otel::set_enabled();
        tracing::info!(%destination, "exporting traces (OpenTelemetry)");
    }
    if let Some(e) = export_error {
        tracing::error!(error = %e, "trace export is off: the OTEL_* settings cannot be used");
    }
    Telemetry { export: provider }
}

/// The printed output in `format`, lines written to `writer`, what `filter` lets
/// through: what [`init`] installs (and what the benchmarks measure, writing to a
/// sink).
///
/// The `dr.call` spans ([`DR_CALL_TARGET`]) are never printed, at any level. A
/// printed line shows only its innermost span, so inside a DR call it would show the
/// call's fields instead of the RPC's request id; and formatting each call's dozen
/// fields for lines that almost never come costs more per RPC than its access line
/// (crates/dr-gateway/benches/README.md, Optimisation 9). A line logged during a DR
/// call carries the RPC's span, and says which call itself.
pub fn printed_layer<S, W>(
    format: LogFormat,
    writer: W,
    filter: EnvFilter,
) -> Box<dyn Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'span> LookupSpan<'span>,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let printed = filter.and(filter::filter_fn(|meta| {
        !(meta.is_span() && meta.target() == DR_CALL_TARGET)
    }));
    match format {
        LogFormat::Json => fmt::layer()
            .fmt_fields(SpanFieldsJson)
            .event_format(JsonLines)
            .with_writer(writer)
            .with_filter(printed)
            .boxed(),
        LogFormat::Pretty => fmt::layer()
            .compact()
            .with_writer(writer)
            .with_filter(printed)
            .boxed(),
    }
}

/// Writes each formatted line to `W`, cut to [`LOG_LINE_MAX_BYTES`].
#[derive(Debug, Clone, Copy)]
pub struct CappedLines<M> {
    inner: M,
    format: LogFormat,
    max: usize,
}

impl CappedLines<fn() -> io::Stdout> {
    /// Lines on stdout.
    pub fn stdout(format: LogFormat) -> Self {
        Self::new(io::stdout as fn() -> io::Stdout, format, LOG_LINE_MAX_BYTES)
    }
}

impl<M> CappedLines<M> {
    /// Lines written through `inner`, at most `max` bytes each.
    pub fn new(inner: M, format: LogFormat, max: usize) -> Self {
        Self { inner, format, max }
    }
}

impl<'a, M: MakeWriter<'a>> MakeWriter<'a> for CappedLines<M> {
    type Writer = CappedLine<M::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        CappedLine {
            inner: self.inner.make_writer(),
            format: self.format,
            max: self.max,
        }
    }
}

/// One event's output; see [`CappedLines`].
#[derive(Debug)]
pub struct CappedLine<W> {
    inner: W,
    format: LogFormat,
    max: usize,
}

impl<W: Write> Write for CappedLine<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // why: the formatter hands over each event as one buffer (one `write_all`).
        if buf.len() <= self.max {
            self.inner.write_all(buf)?;
        } else {
            self.inner
                .write_all(&cut_line(buf, self.format, self.max))?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A line of more than `max` bytes, made short: its head and how long it was.
fn cut_line(line: &[u8], format: LogFormat, max: usize) -> Vec<u8> {
    let head_len = (max / 2).min(1024);
    let head = String::from_utf8_lossy(&line[..head_len]);
    let mut out = match format {
        LogFormat::Pretty => format!("{head}… [log line cut: {} bytes]", line.len()),
        LogFormat::Json => serde_json::json!({
            "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            "level": "WARN",
            "target": "dr_gateway::telemetry",
            "fields": {
                "message": "log line cut",
                "bytes": line.len(),
                "head": head,
            },
        })
        .to_string(),
    }
    .into_bytes();
    out.push(b'\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::test_writer::Captured;

    fn logged(format: LogFormat, value: &str) -> String {
        let buffer = Captured::default();
        let writer = CappedLines::new(buffer.writer(), format, 4096);
        let layer = match format {
            LogFormat::Json => fmt::layer().json().with_writer(writer).boxed(),
            LogFormat::Pretty => fmt::layer()
                .compact()
                .with_ansi(false)
                .with_writer(writer)
                .boxed(),
        };
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(value, "something happened");
        });
        buffer.text()
    }

    #[test]
    fn an_ordinary_line_is_written_as_it_is() {
        let line = logged(LogFormat::Pretty, "short");
        assert!(line.contains("something happened") && line.contains("value=\"short\""));
    }

    #[test]
    fn a_megabyte_line_is_cut_and_stays_one_valid_line() {
        let big = "x".repeat(1 << 20);
        let pretty = logged(LogFormat::Pretty, &big);
        assert!(pretty.len() < 4096, "{} bytes", pretty.len());
        assert!(pretty.contains("[log line cut: "), "{pretty}");
        assert_eq!(pretty.matches('\n').count(), 1);

        let json = logged(LogFormat::Json, &big);
        assert!(json.len() < 4096, "{} bytes", json.len());
        let parsed: serde_json::Value = serde_json::from_str(json.trim()).expect("valid JSON");
        assert_eq!(parsed["fields"]["message"], "log line cut");
        assert!(parsed["fields"]["bytes"].as_u64().unwrap() > 1 << 20);
    }
}
