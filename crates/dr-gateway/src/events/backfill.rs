//! Backfill: on start and every interval, list DR's events newer than the newest one
//! the log holds (`GET /events?createdTime[gt]=…`, paging through) and append the
//! ones not seen, oldest first, so events DR sent while the gateway was down (or
//! gave up re-sending) still reach subscribers.
//!
//! Backfilled events are appended in the order backfill finds them, after whatever
//! the webhook already stored: the log is in *arrival* order, not `createdTime`
//! order (see [`super::log`]).

use std::{future::Future, sync::Arc, time::Duration};

use chrono::{DateTime, SecondsFormat, Utc};

use super::{envelope::Envelope, log::EventLog, LogError};
use crate::defaults;
use crate::telemetry::{capped, metrics::names};
use crate::{
    clock::Clock,
    digital_river::{self, CallOptions, Client, EventQuery},
};

/// DR keeps events for 30 days (docs/digital-river.md §3.1); nothing older can be
/// listed.
pub const DR_EVENT_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);

/// Backfill settings.
#[derive(Debug, Clone)]
pub struct BackfillConfig {
    /// Time between runs (the first runs at start). Zero disables periodic runs.
    pub interval: Duration,
    /// How far back to look when the log holds nothing (capped at 30 days).
    pub lookback: Duration,
    /// How far before the newest held event to look again, for events DR created
    /// earlier but delivered later (duplicates are dropped by the log's dedup).
    pub overlap: Duration,
    /// Most events one run appends; more are left for the webhook's redeliveries and
    /// logged, bounding memory on a long outage.
    pub max_events_per_run: usize,
}

impl Default for BackfillConfig {
    fn default() -> Self {
        Self {
            interval: defaults::BACKFILL_INTERVAL,
            lookback: defaults::BACKFILL_LOOKBACK,
            overlap: defaults::BACKFILL_OVERLAP,
            max_events_per_run: defaults::BACKFILL_MAX_EVENTS_PER_RUN,
        }
    }
}

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BackfillReport {
    /// Events DR listed.
    pub listed: usize,
    /// Events newly appended.
    pub appended: usize,
    /// Listed events DR sent in a shape the log cannot store.
    pub skipped: usize,
    /// True when `max_events_per_run` cut the listing short.
    pub truncated: bool,
}

/// Why a run failed; the next run tries again.
#[derive(Debug, thiserror::Error)]
pub enum BackfillError {
    /// `GET /events` failed.
    #[error("listing DR events failed")]
    Dr(#[from] digital_river::Error),
    /// The log failed.
    #[error("event log failed during backfill")]
    Log(#[from] LogError),
}

/// Runs backfill against one log.
#[derive(Debug, Clone)]
pub struct Backfill {
    client: Client,
    log: Arc<dyn EventLog>,
    config: BackfillConfig,
    clock: Arc<dyn Clock>,
}

impl Backfill {
    /// A backfiller; nothing runs until [`run_once`](Self::run_once) or [`run`](Self::run).
    pub fn new(
        client: Client,
        log: Arc<dyn EventLog>,
        config: BackfillConfig,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            client,
            log,
            config,
            clock,
        }
    }

    /// The `createdTime[gt]` bound of the next run.
    pub async fn since(&self) -> Result<DateTime<Utc>, LogError> {
        let now = self.clock.now();
        let oldest_allowed = now - to_chrono(DR_EVENT_RETENTION);
        let since = match self.log.newest_created_time().await? {
            Some(newest) => newest - to_chrono(self.config.overlap),
            None => now - to_chrono(self.config.lookback.min(DR_EVENT_RETENTION)),
        };
        Ok(since.max(oldest_allowed))
    }

    /// One pass: list everything newer than [`since`](Self::since), append oldest first.
    #[tracing::instrument(name = "backfill", skip_all, fields(since))]
    pub async fn run_once(&self) -> Result<BackfillReport, BackfillError> {
        let since = self.since().await?;
        tracing::Span::current().record("since", since.to_rfc3339().as_str());
        let mut report = BackfillReport::default();
        let mut found = Vec::new();
        let mut starting_after: Option<String> = None;
        loop {
            let query = EventQuery {
                created_gt: Some(since.to_rfc3339_opts(SecondsFormat::Micros, true)),
                limit: Some(100),
                starting_after: starting_after.clone(),
                ..Default::default()
            };
            let page = self
                .client
                .list_events(&query, &CallOptions::default())
                .await?;
            report.listed += page.data.len();
            starting_after = page.data.last().map(|e| e.id.clone());
            for event in page.data {
                let value = serde_json::to_value(&event).unwrap_or_default();
                match Envelope::from_value(value) {
                    Ok(env) => found.push(env),
                    Err(e) => {
                        report.skipped += 1;
                        tracing::warn!(event_id = %capped(&event.id), error = %e, "backfill: skipping malformed DR event");
                    }
                }
            }
            if found.len() >= self.config.max_events_per_run {
                report.truncated = page.has_more;
                found.truncate(self.config.max_events_per_run);
                break;
            }
            if !page.has_more || starting_after.is_none() {
                break;
            }
        }
        // why: DR lists newest first; append oldest first so subscribers see them in
        // creation order where the log has a choice.
        found.sort_by_key(|e| e.created_time);
        for env in found {
            if !self.log.append(env).await?.duplicate {
                report.appended += 1;
                metrics::counter!(names::EVENTS_STORED, "source" => "backfill").increment(1);
            }
        }
        if report.truncated {
            tracing::warn!(
                max = self.config.max_events_per_run,
                "backfill: run truncated; older events left out"
            );
        }
        tracing::info!(
            listed = report.listed,
            appended = report.appended,
            "backfill run done"
        );
        Ok(report)
    }

    /// Runs at once, then every interval, until `shutdown` resolves. Failures are
    /// logged and retried on the next tick.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) {
        tokio::pin!(shutdown);
        let interval = if self.config.interval.is_zero() {
            None
        } else {
            Some(self.config.interval)
        };
        loop {
            if let Err(e) = self.run_once().await {
                tracing::warn!(error = %e, source = ?std::error::Error::source(&e), "backfill run failed; retrying next interval");
            }
            let Some(every) = interval else { return };
            tokio::select! {
                () = &mut shutdown => return,
                () = tokio::time::sleep(every) => {}
            }
        }
    }
}

fn to_chrono(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        clock::ManualClock,
        digital_river::{ClientConfig, RetryPolicy},
        events::{EventEncoder, MemoryLog, MemoryLogConfig},
    };
    use secrecy::SecretString;
    use serde_json::json;
    use wiremock::{
        matchers::{method, path, query_param, query_param_is_missing},
        Mock, MockServer, ResponseTemplate,
    };

    fn dr_event(id: &str, created: &str) -> serde_json::Value {
        json!({"id": id, "type": "order.accepted", "createdTime": created, "liveMode": false,
               "data": {"object": {"id": "o1"}}})
    }

    fn client(base: &str) -> Client {
        Client::new(ClientConfig {
            base_url: base.into(),
            api_key: SecretString::from("sk_test".to_string()),
            api_version: None,
            max_timeout: Duration::from_secs(5),
            retry: RetryPolicy::default(),
            rate_limit: None,
        })
        .unwrap()
    }

    #[tokio::test]
    async fn backfill_pages_through_and_appends_unseen_events_oldest_first() {
        let dr = MockServer::start().await;
        Mock::given(method("GET"))
            .and(path("/events"))
            .and(query_param_is_missing("startingAfter"))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({
                "hasMore": true,
                "data": [dr_event("e3", "2024-01-01T00:03:00Z"), dr_event("e2", "2024-01-01T00:02:00Z")]
            })))
            .mount(&dr)
            .await;
        Mock::given(method("GET"))
            .and(path("/events"))
            .and(query_param("startingAfter", "e2"))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({
                "hasMore": false,
                "data": [dr_event("e1", "2024-01-01T00:01:00Z"), {"id": "bad", "type": "x"}]
            })))
            .mount(&dr)
            .await;
        let clock = Arc::new(ManualClock::new(
            DateTime::parse_from_rfc3339("2024-01-02T00:00:00Z")
                .unwrap()
                .into(),
        ));
        let log = Arc::new(MemoryLog::new(
            MemoryLogConfig::default(),
            EventEncoder::default(),
            clock.clone(),
        ));
        // e2 already arrived by webhook.
        log.append(Envelope::from_value(dr_event("e2", "2024-01-01T00:02:00Z")).unwrap())
            .await
            .unwrap();
        let backfill = Backfill::new(
            client(&dr.uri()),
            log.clone(),
            BackfillConfig::default(),
            clock,
        );

        let report = backfill.run_once().await.unwrap();

        assert_eq!(
            report,
            BackfillReport {
                listed: 4,
                appended: 2,
                skipped: 1,
                truncated: false
            }
        );
        let ids: Vec<_> = log
            .read_after(0, 10)
            .await
            .unwrap()
            .iter()
            .map(|e| e.meta.id.clone())
            .collect();
        assert_eq!(ids, ["e2", "e1", "e3"]);
    }

    #[tokio::test]
    async fn the_start_bound_follows_the_newest_held_event_or_the_lookback() {
        let now: DateTime<Utc> = DateTime::parse_from_rfc3339("2024-03-01T00:00:00Z")
            .unwrap()
            .into();
        let clock = Arc::new(ManualClock::new(now));
        let log = Arc::new(MemoryLog::new(
            MemoryLogConfig::default(),
            EventEncoder::default(),
            clock.clone(),
        ));
        let config = BackfillConfig {
            lookback: Duration::from_secs(90 * 24 * 3600),
            overlap: Duration::from_secs(60),
            ..Default::default()
        };
        let backfill = Backfill::new(client("http://127.0.0.1:9"), log.clone(), config, clock);
        // Empty log: the look-back, capped at DR's 30 days.
        assert_eq!(
            backfill.since().await.unwrap(),
            now - chrono::Duration::days(30)
        );
        log.append(Envelope::from_value(dr_event("e", "2024-02-29T12:00:00Z")).unwrap())
            .await
            .unwrap();
        let want: DateTime<Utc> = DateTime::parse_from_rfc3339("2024-02-29T11:59:00Z")
            .unwrap()
            .into();
        assert_eq!(backfill.since().await.unwrap(), want);
    }
}
