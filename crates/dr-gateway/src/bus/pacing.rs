//! DR's per-key rate limit shared by every replica: each one announces itself in a
//! KV bucket and paces its DR calls to its share of the budget, so together they
//! stay under the limit DR counts per key (docs/digital-river.md §5.2) however
//! many replicas run.
//!
//! # How
//! - Each replica puts its key (a random id) into the bucket `<stream>_REPLICAS`
//!   every [`HEARTBEAT`](crate::defaults::PACING_HEARTBEAT); the bucket keeps
//!   values for [`PACING_TTL`](crate::defaults::PACING_TTL), so a replica that died
//!   without leaving drops out by itself. A replica that stops cleanly deletes its
//!   key at once.
//! - Each replica watches the bucket (history first, then live updates), so a new
//!   replica is counted by the others within milliseconds of its first heartbeat,
//!   and resizes its limiter to `budget / replicas` ([`replica_share`]). It always
//!   counts itself, so it never takes the whole budget while its own heartbeat is
//!   on its way.
//! - While the view is not current (NATS unreachable, or the watch silent for
//!   longer than two heartbeats: every replica sees its own heartbeats, so silence
//!   means the watch is broken), a replica keeps the larger of its last count and
//!   the configured fallback (`--upstream-rate-limit-replicas`, which the Helm chart
//!   sets to its most pods).
//!
//! Shares can be briefly too large only while replicas join faster than their first
//! heartbeat travels (milliseconds); they are too small (safe) for up to the TTL
//! after a replica dies.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv::{self, Operation};
use bytes::Bytes;
use futures::StreamExt as _;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{provision::ensure_kv, timed, Bus};
use crate::defaults;
use crate::digital_river::{replica_share, RateLimiter};

/// The pacing of one replica.
#[derive(Debug, Clone)]
pub struct PacingConfig {
    /// Most DR calls per second with the key, across all replicas.
    pub budget: u32,
    /// Replicas assumed while the membership view is not current.
    pub fallback_replicas: u32,
    /// Time between two heartbeats.
    pub heartbeat: Duration,
    /// A replica not heard from for this long is no longer counted.
    pub ttl: Duration,
}

impl PacingConfig {
    /// Production timings for `budget` and `fallback_replicas`.
    pub fn new(budget: u32, fallback_replicas: u32) -> Self {
        Self {
            budget,
            fallback_replicas,
            heartbeat: defaults::PACING_HEARTBEAT,
            ttl: defaults::PACING_TTL,
        }
    }
}

/// The bucket replicas announce themselves in.
pub fn members_bucket(bus: &Bus) -> String {
    format!("{}_REPLICAS", bus.config().stream)
}

/// Announces this replica and keeps `limiter` at its share until `shutdown`, then
/// leaves the bucket. Failures are logged and retried; the limiter keeps pacing
/// with the last share meanwhile.
pub async fn run(
    bus: Bus,
    limiter: Arc<RateLimiter>,
    config: PacingConfig,
    shutdown: CancellationToken,
) {
    let me = crate::random_id::uuid().simple().to_string();
    let mut view = View::new(me.clone(), config.clone());
    let store = loop {
        match ensure_kv(&bus, &members_bucket(&bus), config.ttl).await {
            Ok(store) => break store,
            Err(e) => {
                tracing::warn!(error = %e, "rate-limit sharing: cannot open the replicas bucket; retrying");
                view.apply(&limiter);
                // why: retry pacing, not synchronisation.
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(config.heartbeat) => {}
                }
            }
        }
    };
    let timeout = bus.config().request_timeout;
    let heartbeats = tokio::spawn(heartbeat(
        store.clone(),
        me.clone(),
        config.heartbeat,
        timeout,
        shutdown.clone(),
    ));
    while !shutdown.is_cancelled() {
        match store.watch_with_history(">").await {
            Ok(watch) => follow(watch, &mut view, &limiter, &shutdown).await,
            Err(e) => {
                tracing::warn!(error = %e, "rate-limit sharing: cannot watch the replicas bucket; retrying")
            }
        }
        view.stale();
        view.apply(&limiter);
        tokio::select! {
            () = shutdown.cancelled() => {}
            () = tokio::time::sleep(config.heartbeat) => {}
        }
    }
    heartbeats.abort();
    // why: hand this replica's share back at once instead of after the TTL.
    if let Err(e) = timed(timeout, "leaving the replicas bucket", store.delete(&me)).await {
        tracing::debug!(error = %e, "rate-limit sharing: could not leave the replicas bucket");
    }
}

/// Reads membership changes until the watch breaks or falls silent.
async fn follow(
    mut watch: kv::Watch,
    view: &mut View,
    limiter: &RateLimiter,
    shutdown: &CancellationToken,
) {
    let mut tick = tokio::time::interval(view.config.heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_heard = Instant::now();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            entry = watch.next() => match entry {
                Some(Ok(entry)) => {
                    last_heard = Instant::now();
                    let put = matches!(entry.operation, Operation::Put);
                    view.record(&entry.key, put.then(|| entry.created.unix_timestamp_nanos()));
                    if entry.seen_current {
                        view.current = true;
                    }
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "rate-limit sharing: watch failed");
                    return;
                }
                None => return,
            },
            _ = tick.tick() => {
                // why: this replica's own heartbeats come back through the watch;
                // silence for two of them means the watch is broken.
                if last_heard.elapsed() > view.config.heartbeat * 2 {
                    tracing::warn!("rate-limit sharing: watch silent; restarting it");
                    return;
                }
            }
        }
        view.apply(limiter);
    }
}

async fn heartbeat(
    store: kv::Store,
    me: String,
    every: Duration,
    timeout: Duration,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let value = Bytes::from(chrono::Utc::now().to_rfc3339());
        if let Err(e) = timed(timeout, "rate-limit heartbeat", store.put(&me, value)).await {
            tracing::debug!(error = %e, "rate-limit sharing: heartbeat failed");
        }
    }
}

/// Which replicas this one counts, and the share that follows.
#[derive(Debug)]
struct View {
    me: String,
    config: PacingConfig,
    /// Replica → when it was last heard of (its heartbeat's publish time, on the
    /// local clock).
    members: HashMap<String, Instant>,
    /// False until the watch delivered the current state, and after it broke.
    current: bool,
    /// The count last used.
    replicas: u32,
}

impl View {
    fn new(me: String, config: PacingConfig) -> Self {
        let replicas = config.fallback_replicas.max(1);
        Self {
            me,
            config,
            members: HashMap::new(),
            current: false,
            replicas,
        }
    }

    /// A heartbeat of `key` published at `published_nanos` (Unix time), or its
    /// removal (`None`).
    fn record(&mut self, key: &str, published_nanos: Option<i128>) {
        match published_nanos {
            Some(published) => {
                let now = i128::from(chrono::Utc::now().timestamp_nanos_opt().unwrap_or(i64::MAX));
                // why: a heartbeat read from history may be seconds old; clocks that
                // disagree (age < 0) count it as fresh.
                let age = u64::try_from(now.saturating_sub(published)).unwrap_or(0);
                let heard = Instant::now()
                    .checked_sub(Duration::from_nanos(age))
                    .unwrap_or_else(Instant::now);
                self.members.insert(key.to_owned(), heard);
            }
            None => {
                self.members.remove(key);
            }
        }
    }

    fn stale(&mut self) {
        self.current = false;
    }

    /// How many replicas share the budget now.
    fn count(&mut self) -> u32 {
        if !self.current {
            return self.replicas.max(self.config.fallback_replicas).max(1);
        }
        let ttl = self.config.ttl;
        self.members.retain(|_, heard| heard.elapsed() < ttl);
        let others = self.members.keys().filter(|k| **k != self.me).count();
        u32::try_from(others + 1).unwrap_or(u32::MAX)
    }

    /// Resizes `limiter` to this replica's share.
    fn apply(&mut self, limiter: &RateLimiter) {
        let replicas = self.count();
        let (rate, burst) = replica_share(self.config.budget, replicas);
        if limiter.rate() != (rate, burst) {
            tracing::info!(
                replicas,
                budget = self.config.budget,
                rate,
                burst,
                "DR rate limit shared: this replica's share changed"
            );
            limiter.set_rate(rate, burst);
        }
        self.replicas = replicas;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now_nanos() -> i128 {
        i128::from(chrono::Utc::now().timestamp_nanos_opt().unwrap())
    }

    fn view(fallback: u32) -> View {
        View::new(
            "me".into(),
            PacingConfig {
                budget: 22,
                fallback_replicas: fallback,
                heartbeat: Duration::from_secs(2),
                ttl: Duration::from_secs(7),
            },
        )
    }

    #[test]
    fn until_the_view_is_current_the_fallback_applies() {
        let mut v = view(4);
        v.record("other", Some(now_nanos()));
        assert_eq!(v.count(), 4);
        let limiter = RateLimiter::new(100, 10);
        v.apply(&limiter);
        assert_eq!(limiter.rate(), replica_share(22, 4));
    }

    #[test]
    fn a_current_view_counts_live_replicas_and_always_itself() {
        let mut v = view(1);
        v.current = true;
        assert_eq!(v.count(), 1, "alone, before its own heartbeat came back");
        v.record("a", Some(now_nanos()));
        v.record("b", Some(now_nanos()));
        assert_eq!(v.count(), 3);
        v.record("me", Some(now_nanos()));
        assert_eq!(v.count(), 3, "itself once");
        v.record("a", None);
        assert_eq!(v.count(), 2, "a replica that left");
        v.record("old", Some(now_nanos() - 8_000_000_000));
        assert_eq!(v.count(), 2, "a heartbeat older than the TTL");
    }

    #[test]
    fn a_broken_watch_keeps_the_larger_of_the_last_count_and_the_fallback() {
        let mut v = view(2);
        v.current = true;
        for key in ["a", "b", "c", "d"] {
            v.record(key, Some(now_nanos()));
        }
        let limiter = RateLimiter::new(22, 2);
        v.apply(&limiter);
        assert_eq!(limiter.rate(), replica_share(22, 5));
        v.stale();
        v.members.clear();
        v.apply(&limiter);
        assert_eq!(limiter.rate(), replica_share(22, 5), "not 22 / 2");
    }
}
