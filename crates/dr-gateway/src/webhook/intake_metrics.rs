//! The `dr_gateway_webhooks_*` series of webhook intake, registered with the
//! installed recorder once per process.
//!
//! why: `metrics::counter!` builds, hashes and looks up its key on every call; a
//! delivery touched five series (received, accepted or duplicate, stored, last
//! acknowledgement, time to answer). Their handles are registered on first use here
//! and then shared. Refusals keep the macro: their `reason` label is per error and
//! a refusal is not the path that has to be cheap.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram};

use crate::telemetry::metrics::names;

/// How a delivery ended, as the `outcome` label of the answer time says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outcome {
    /// Stored as a new event.
    Accepted,
    /// A redelivery of a stored event.
    Duplicate,
    /// Refused: `reason` is the refusal's stable code (`invalid_signature`, …).
    Rejected {
        /// The `reason` label of the refusal counter.
        reason: &'static str,
    },
}

struct Series {
    received: Counter,
    accepted: Counter,
    duplicates: Counter,
    stored: Counter,
    last_ack: Gauge,
    answered_accepted: Histogram,
    answered_duplicate: Histogram,
    answered_rejected: Histogram,
}

fn series() -> &'static Series {
    static SERIES: OnceLock<Series> = OnceLock::new();
    SERIES.get_or_init(|| {
        let answered =
            |outcome: &'static str| metrics::histogram!(names::WEBHOOK_ACK_SECONDS, "outcome" => outcome);
        Series {
            received: metrics::counter!(names::WEBHOOKS_RECEIVED),
            accepted: metrics::counter!(names::WEBHOOKS_ACCEPTED),
            duplicates: metrics::counter!(names::WEBHOOKS_DUPLICATES),
            stored: metrics::counter!(names::EVENTS_STORED, "source" => "webhook"),
            last_ack: metrics::gauge!(names::WEBHOOK_LAST_ACK_TIMESTAMP),
            answered_accepted: answered("accepted"),
            answered_duplicate: answered("duplicate"),
            answered_rejected: answered("rejected"),
        }
    })
}

/// A delivery arrived.
pub(super) fn received() {
    series().received.increment(1);
}

/// A delivery was answered with `outcome`, `took` after it arrived.
pub(super) fn answered(outcome: Outcome, took: Duration) {
    let series = series();
    let answer_time = match outcome {
        Outcome::Accepted => {
            series.accepted.increment(1);
            series.stored.increment(1);
            &series.answered_accepted
        }
        Outcome::Duplicate => {
            series.duplicates.increment(1);
            &series.answered_duplicate
        }
        Outcome::Rejected { reason } => {
            metrics::counter!(names::WEBHOOKS_REJECTED, "reason" => reason).increment(1);
            &series.answered_rejected
        }
    };
    if !matches!(outcome, Outcome::Rejected { .. }) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        series.last_ack.set(now.as_secs_f64());
    }
    answer_time.record(took.as_secs_f64());
}
