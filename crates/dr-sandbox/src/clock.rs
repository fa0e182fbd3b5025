//! The sandbox clock: wall time plus an offset that tests move forward.
//!
//! Resource timestamps, authorization expiry and event retention read this clock, so a
//! test can expire an authorization with `POST /sandbox/clock/advance` instead of waiting.
//! Webhook signature timestamps deliberately do NOT use it (see `webhooks.rs`): receivers
//! check them against their own wall clock.

use chrono::{DateTime, Duration, SecondsFormat, Utc};

/// A wall clock shifted by a controllable offset.
#[derive(Debug, Clone, Default)]
pub(crate) struct Clock {
    offset: Duration,
}

impl Clock {
    /// Current sandbox time.
    pub(crate) fn now(&self) -> DateTime<Utc> {
        Utc::now() + self.offset
    }

    /// Moves the clock forward by `seconds` (negative values are refused by the caller).
    pub(crate) fn advance(&mut self, seconds: i64) {
        self.offset += Duration::seconds(seconds);
    }

    /// How far the sandbox clock is ahead of wall time, in seconds.
    pub(crate) fn offset_seconds(&self) -> i64 {
        self.offset.num_seconds()
    }
}

/// Resource timestamp, whole seconds: `2022-07-01T17:55:58Z` (DR's "Capturing and cancelling charges" page).
pub(crate) fn fmt_secs(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Event timestamp with fractional seconds, trailing zeros trimmed:
/// `2022-07-01T18:30:59.51144Z` (docs/digital-river.md §3.2).
pub(crate) fn fmt_event_time(t: DateTime<Utc>) -> String {
    let micros = t.timestamp_subsec_micros();
    let base = t.format("%Y-%m-%dT%H:%M:%S").to_string();
    let frac = format!("{micros:06}");
    let frac = frac.trim_end_matches('0');
    // why: DR always shows a fraction on events; keep one digit when it is all zeros.
    let frac = if frac.is_empty() { "0" } else { frac };
    format!("{base}.{frac}Z")
}

/// Parses an RFC 3339 / ISO-8601 time as sent in `createdTime` filters.
pub(crate) fn parse_time(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text.trim())
        .ok()
        .map(|t| t.with_timezone(&Utc))
}
