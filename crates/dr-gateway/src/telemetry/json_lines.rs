//! [`JsonLines`]: the JSON log line of an event, in the shape of tracing-subscriber's
//! JSON format with the current span (`timestamp`, `level`, `fields`, `target`, and
//! `span`: the span's fields and `name`).
//!
//! why: tracing-subscriber's JSON formatter writes each key, quote and value through
//! an adaptor that checks the bytes are UTF-8 and hands them on one by one, and
//! parses the current span's fields back into a map for every line. With JSON logs
//! at INFO (the chart's default) every RPC writes an access line: that was ~24 k
//! instructions, a twentieth of a GetCharge (crates/dr-gateway/benches/README.md,
//! Optimisation 9). This writes the members into one buffer, as [`SpanFieldsJson`]
//! does for span fields, and copies the span's text as it is.
//!
//! Differences from tracing-subscriber's output, none of which a JSON reader sees:
//! the span's members keep their recorded order (its map sorted them) and a field
//! recorded twice appears twice (the map kept the last; so do JSON readers); the
//! `log.*` fields that the `log` crate's records carry are left out (the target
//! says where a record came from).

use std::cell::RefCell;
use std::fmt::{self, Write as _};

use tracing::{Event, Subscriber};
use tracing_log::NormalizeEvent as _;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

use super::span_fields::{Members, SpanFieldsJson};

/// Formats each event as one JSON line; see the module docs.
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonLines;

impl<S> FormatEvent<S, SpanFieldsJson> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, SpanFieldsJson>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let normalized = event.normalized_metadata();
        let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());
        let mut line = String::with_capacity(512);
        line.push_str("{\"timestamp\":\"");
        push_timestamp(&mut line, chrono::Utc::now());
        line.push_str("\",\"level\":\"");
        line.push_str(meta.level().as_str());
        line.push_str("\",\"fields\":{");
        let mut members = Members::opening(line);
        event.record(&mut members);
        let mut line = members.finish()?;
        line.push_str("},\"target\":");
        push_string(&mut line, meta.target())?;
        let span = event
            .parent()
            .and_then(|id| ctx.span(id))
            .or_else(|| ctx.lookup_current());
        if let Some(span) = span {
            line.push_str(",\"span\":");
            let extensions = span.extensions();
            let fields = extensions
                .get::<FormattedFields<SpanFieldsJson>>()
                .map_or("", |fields| fields.fields.as_str());
            // why: the text is an object SpanFieldsJson wrote ("{…}"); reopen it.
            match fields.strip_suffix('}') {
                Some(open) if open.len() > 1 => {
                    line.push_str(open);
                    line.push(',');
                }
                _ => line.push('{'),
            }
            line.push_str("\"name\":");
            push_string(&mut line, span.name())?;
            line.push('}');
        }
        line.push('}');
        writeln!(writer, "{line}")
    }
}

/// Appends `now` as tracing-subscriber's `SystemTime` timer writes it (RFC 3339,
/// UTC, microseconds: `2026-12-01T19:22:59.123456Z`; nothing to escape).
///
/// why: the calendar part is formatted once per second and thread (chrono's
/// formatting costs ~2 k instructions a line); only the microseconds are new.
fn push_timestamp(line: &mut String, now: chrono::DateTime<chrono::Utc>) {
    thread_local! {
        /// The last second formatted on this thread, and its text.
        static SECOND: RefCell<(i64, String)> = const { RefCell::new((i64::MIN, String::new())) };
    }
    let second = now.timestamp();
    SECOND.with(|cached| {
        let mut cached = cached.borrow_mut();
        if cached.0 != second {
            let (at, text) = &mut *cached;
            text.clear();
            // A formatting error leaves the text short; the line is still JSON.
            let _ = write!(text, "{}", now.format("%Y-%m-%dT%H:%M:%S"));
            *at = second;
        }
        line.push_str(&cached.1);
    });
    line.push('.');
    // why: chrono shows a leap second as 1_000_000 µs and more; it is written as
    // the second's last microsecond, so the field stays six digits.
    let micros = now.timestamp_subsec_micros().min(999_999);
    let mut divisor = 100_000;
    while divisor > 0 {
        // Each digit is 0..=9.
        line.push(char::from(b'0' + ((micros / divisor) % 10) as u8));
        divisor /= 10;
    }
    line.push('Z');
}

/// Appends `text` as a JSON string.
fn push_string(line: &mut String, text: &str) -> fmt::Result {
    let json = serde_json::to_string(text).map_err(|_| fmt::Error)?;
    line.push_str(&json);
    Ok(())
}

#[cfg(test)]
mod tests {
    use tracing_subscriber::prelude::*;

    use crate::telemetry::test_writer::Captured;

    /// The lines `act` logs, as the gateway's JSON output and as tracing-subscriber's
    /// own JSON formatter (with the current span) print them, parsed.
    fn both_outputs(act: impl Fn()) -> (Vec<serde_json::Value>, Vec<serde_json::Value>) {
        let ours = Captured::default();
        let theirs = Captured::default();
        let subscriber = tracing_subscriber::registry()
            .with(crate::telemetry::logging::printed_layer(
                crate::config::LogFormat::Json,
                ours.writer(),
                tracing_subscriber::EnvFilter::new("trace"),
            ))
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_current_span(true)
                    .with_span_list(false)
                    .fmt_fields(super::SpanFieldsJson)
                    .with_writer(theirs.writer()),
            );
        tracing::subscriber::with_default(subscriber, act);
        let parse = |buffer: Captured| {
            buffer
                .text()
                .lines()
                .map(|line| serde_json::from_str(line).unwrap())
                .collect::<Vec<serde_json::Value>>()
        };
        (parse(ours), parse(theirs))
    }

    /// `line` without its timestamp (the two outputs take the time apart).
    fn timeless(mut line: serde_json::Value) -> serde_json::Value {
        let stamp = line["timestamp"].as_str().unwrap().to_owned();
        assert!(
            chrono::DateTime::parse_from_rfc3339(&stamp).is_ok(),
            "timestamp {stamp:?}"
        );
        line.as_object_mut().unwrap().remove("timestamp");
        line
    }

    #[test]
    fn a_line_reads_as_tracing_subscribers_json_line() {
        let (ours, theirs) = both_outputs(|| {
            tracing::info!(
                text = "quote \" backslash \\ newline \n tab \t é",
                number = -7_i64,
                big = u64::MAX,
                flag = true,
                ratio = 0.25_f64,
                shown = %"display",
                debugged = ?Some(3),
                "outside any span: {}",
                "formatted"
            );
            let rpc = tracing::info_span!(
                "grpc.server",
                request_id = "req-1",
                status = tracing::field::Empty
            );
            let _rpc = rpc.enter();
            rpc.record("status", 0_i64);
            tracing::warn!(target: "dr_gateway::access", code = "OK", "rpc");
            let empty = tracing::info_span!("empty");
            let _empty = empty.enter();
            tracing::error!("in a span without fields");
        });
        assert_eq!(ours.len(), 3);
        let ours: Vec<_> = ours.into_iter().map(timeless).collect();
        let theirs: Vec<_> = theirs.into_iter().map(timeless).collect();
        assert_eq!(ours, theirs);
        assert_eq!(ours[1]["span"]["request_id"], "req-1");
        assert_eq!(ours[1]["span"]["name"], "grpc.server");
        assert_eq!(ours[2]["span"], serde_json::json!({"name": "empty"}));
    }

    #[test]
    fn timestamps_are_rfc_3339_utc_with_microseconds_as_the_timer_writes_them() {
        use chrono::TimeZone as _;
        let mut line = String::new();
        let at = chrono::Utc
            .with_ymd_and_hms(2026, 12, 1, 19, 22, 59)
            .unwrap();
        super::push_timestamp(&mut line, at + chrono::Duration::microseconds(4_321));
        line.push(' ');
        // The same second again (the cached text), then the next one.
        super::push_timestamp(&mut line, at + chrono::Duration::microseconds(999_999));
        line.push(' ');
        super::push_timestamp(&mut line, at + chrono::Duration::seconds(1));
        assert_eq!(
            line,
            "2026-12-01T19:22:59.004321Z 2026-12-01T19:22:59.999999Z 2026-12-01T19:23:00.000000Z"
        );
        let mut timer = String::new();
        tracing_subscriber::fmt::time::FormatTime::format_time(
            &tracing_subscriber::fmt::time::SystemTime,
            &mut tracing_subscriber::fmt::format::Writer::new(&mut timer),
        )
        .unwrap();
        let mut ours = String::new();
        super::push_timestamp(&mut ours, chrono::Utc::now());
        assert_eq!(ours.len(), timer.len(), "{ours} vs {timer}");
        assert_eq!(ours.as_bytes()[10], timer.as_bytes()[10]);
        assert!(ours.ends_with('Z') && timer.ends_with('Z'));
    }

    #[test]
    fn a_line_with_an_explicit_parent_carries_that_span() {
        let (ours, theirs) = both_outputs(|| {
            let parent = tracing::info_span!("parent", id = 1_u64);
            let other = tracing::info_span!("other", id = 2_u64);
            let _other = other.enter();
            tracing::info!(parent: &parent, "child of parent");
        });
        assert_eq!(ours[0]["span"]["name"], "parent");
        assert_eq!(timeless(ours[0].clone()), timeless(theirs[0].clone()));
    }
}
