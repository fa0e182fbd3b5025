//! The event log's state as gauges, computed when Prometheus scrapes: how many
//! events and bytes the log holds, how old its oldest event is, and how far behind
//! the slowest subscriber of this replica is.

use std::sync::Arc;

use chrono::Utc;

use super::{subscription, EventLog};
use crate::telemetry::metrics::{names, Collector};

/// The scrape-time collector for `log` (see [`crate::telemetry::Metrics::router`]).
pub fn collector(log: Arc<dyn EventLog>) -> Collector {
    Arc::new(move || {
        let log = log.clone();
        Box::pin(async move { record(log.as_ref()).await })
    })
}

/// Sets the event log and subscriber gauges from `log`'s current state. A log that
/// cannot answer (NATS down) leaves its gauges at their last values.
pub async fn record(log: &dyn EventLog) {
    metrics::gauge!(names::SUBSCRIBER_LAG).set(subscription::max_lag() as f64);
    match log.stats().await {
        Ok(stats) => {
            metrics::gauge!(names::EVENT_LOG_EVENTS).set(stats.events as f64);
            if let Some(bytes) = stats.bytes {
                metrics::gauge!(names::EVENT_LOG_BYTES).set(bytes as f64);
            }
            let age = stats.oldest_received_at.map_or(0.0, |oldest| {
                let age = Utc::now().signed_duration_since(oldest);
                age.to_std().unwrap_or_default().as_secs_f64()
            });
            metrics::gauge!(names::EVENT_LOG_OLDEST_AGE).set(age);
        }
        Err(e) => tracing::debug!(error = %e, "metrics: the event log's state is unavailable"),
    }
}
