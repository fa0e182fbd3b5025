//! [`SpanFieldsJson`]: how the JSON log format keeps a span's fields, the text the
//! `span` object of every line logged inside the span is made from.
//!
//! why: tracing-subscriber's own `JsonFields` builds a map of `serde_json::Value`s
//! per span and, on every `record`, parses the span's text back into a map, adds the
//! new fields and writes it all again. Every RPC opens two or three spans and records
//! its outcome on two of them; with JSON logs at INFO (the chart's default) that was
//! ~100 k instructions per RPC, a fifth of a CreateFulfillment
//! (`cargo bench --bench unary_rpc`). This writes each field once, straight into the
//! span's text, and a `record` appends to the object instead of rewriting it (a
//! field recorded twice appears twice; JSON readers keep the last, like the map).
//!
//! It also leaves out the `otel.*` fields: they steer the OpenTelemetry layer (span
//! name, kind, status) and repeat what the line says already.

use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FormatFields, FormattedFields};

/// The JSON log format's span fields; see the module docs.
#[derive(Debug, Clone, Copy, Default)]
pub struct SpanFieldsJson;

impl<'writer> FormatFields<'writer> for SpanFieldsJson {
    fn format_fields<R: RecordFields>(
        &self,
        mut writer: Writer<'writer>,
        fields: R,
    ) -> fmt::Result {
        let mut text = String::with_capacity(256);
        text.push('{');
        let mut members = Members::new(text);
        fields.record(&mut members);
        let mut text = members.finish()?;
        text.push('}');
        writer.write_str(&text)
    }

    fn add_fields(
        &self,
        current: &'writer mut FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> fmt::Result {
        let mut text = std::mem::take(&mut current.fields);
        // why: the text is always an object this type wrote ("{…}"); reopen it.
        if text.ends_with('}') {
            text.pop();
        } else {
            text.clear();
            text.push('{');
        }
        let mut members = Members::new(text);
        fields.record(&mut members);
        let mut text = members.finish()?;
        text.push('}');
        current.fields = text;
        Ok(())
    }
}

/// Writes `"name":value` members after the text it was given (an object's `{` and
/// any members already there).
pub(super) struct Members {
    /// The text so far; serde_json writes bytes, and the text is checked once at
    /// the end instead of after every member.
    bytes: Vec<u8>,
    /// Whether a member precedes the next one (it needs a comma).
    after_member: bool,
    /// Scratch for `Debug` values, reused from member to member.
    debugged: String,
    failed: bool,
}

impl Members {
    fn new(text: String) -> Self {
        let after_member = text.len() > 1;
        Self {
            bytes: text.into_bytes(),
            after_member,
            debugged: String::new(),
            failed: false,
        }
    }

    /// Members written after `text`, which ends with an object's `{`.
    pub(super) fn opening(text: String) -> Self {
        Self {
            after_member: false,
            ..Self::new(text)
        }
    }

    /// The text with the members; an error if a value could not be written.
    pub(super) fn finish(self) -> Result<String, fmt::Error> {
        if self.failed {
            return Err(fmt::Error);
        }
        // why: serde_json writes valid UTF-8 after valid UTF-8; anything else is a
        // bug, not a line.
        String::from_utf8(self.bytes).map_err(|_| fmt::Error)
    }

    /// The member's key, or `None` for a field the log leaves out.
    fn key(field: &Field) -> Option<&str> {
        let name = field.name();
        if name.starts_with("otel.") || name.starts_with("log.") {
            return None;
        }
        Some(name.strip_prefix("r#").unwrap_or(name))
    }

    /// Writes `"key":` then `value` as serde_json writes it.
    fn member<T: serde::Serialize + ?Sized>(&mut self, field: &Field, value: &T) {
        let Some(key) = Self::key(field) else {
            return;
        };
        if self.after_member {
            self.bytes.push(b',');
        }
        let written = serde_json::to_writer(&mut self.bytes, key).and_then(|()| {
            self.bytes.push(b':');
            serde_json::to_writer(&mut self.bytes, value)
        });
        match written {
            Ok(()) => self.after_member = true,
            Err(_) => self.failed = true,
        }
    }
}

impl Visit for Members {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.member(field, value);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.member(field, &value);
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.member(field, &value);
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.member(field, &value);
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.member(field, &value);
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.member(field, &value.to_string());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if Self::key(field).is_none() {
            return;
        }
        // why: `%value` fields arrive here too (their Debug is their Display).
        let mut text = std::mem::take(&mut self.debugged);
        text.clear();
        if write!(text, "{value:?}").is_err() {
            self.failed = true;
            return;
        }
        self.member(field, text.as_str());
        self.debugged = text;
    }
}

#[cfg(test)]
mod tests {
    use tracing_subscriber::prelude::*;

    use crate::telemetry::test_writer::Captured;

    /// The `span` object of the one line logged inside a span that `act` builds, as
    /// the gateway's JSON log output prints it.
    fn logged_span(act: impl FnOnce()) -> serde_json::Value {
        let buffer = Captured::default();
        // The layer the gateway prints JSON logs with.
        let layer = crate::telemetry::logging::printed_layer(
            crate::config::LogFormat::Json,
            buffer.writer(),
            tracing_subscriber::EnvFilter::new("trace"),
        );
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, act);
        let line: serde_json::Value = serde_json::from_str(&buffer.text()).unwrap();
        line["span"].clone()
    }

    #[test]
    fn a_line_logged_during_a_dr_call_carries_the_rpcs_span() {
        let span = logged_span(|| {
            let rpc = tracing::info_span!("grpc.server", request_id = "req-1");
            let _rpc = rpc.enter();
            let call = tracing::info_span!(
                target: crate::telemetry::logging::DR_CALL_TARGET,
                "dr.call",
                url.path = "/charges/c1",
            );
            let _call = call.enter();
            tracing::info!("DR answered with an error");
        });
        assert_eq!(span["name"], "grpc.server");
        assert_eq!(span["request_id"], "req-1");
        assert_eq!(span.get("url.path"), None);
    }

    #[test]
    fn a_spans_fields_and_later_records_reach_the_line_as_json() {
        let span = logged_span(|| {
            let span = tracing::info_span!(
                "rpc",
                otel.name = "leaves.out",
                text = "quote \" backslash \\ newline \n",
                display = %"shown",
                number = -7_i64,
                flag = true,
                later = tracing::field::Empty,
                r#type = "raw",
            );
            span.record("later", 42_u64);
            span.record("flag", false);
            let _entered = span.enter();
            tracing::info!("inside");
        });
        assert_eq!(span["name"], "rpc");
        assert_eq!(span["text"], "quote \" backslash \\ newline \n");
        assert_eq!(span["display"], "shown");
        assert_eq!(span["number"], -7);
        assert_eq!(span["later"], 42);
        // Recorded twice: the later value wins, as with a map.
        assert_eq!(span["flag"], false);
        assert_eq!(span["type"], "raw");
        assert!(span.get("otel.name").is_none(), "{span}");
    }

    #[test]
    fn a_span_without_fields_gets_fields_recorded_later() {
        let span = logged_span(|| {
            let span = tracing::info_span!("bare", status = tracing::field::Empty);
            span.record("status", "OK");
            let _entered = span.enter();
            tracing::info!("inside");
        });
        assert_eq!(span["status"], "OK");
    }
}
