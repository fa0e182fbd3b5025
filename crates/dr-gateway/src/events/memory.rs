//! The embedded, in-memory [`EventLog`]: bounded by event count and bytes, with a
//! bounded seen-ids set for dedup. Lost on restart; backfill refills it from DR.
//!
//! # Dedup window
//! An event id is remembered while the log holds the event, and after it was
//! dropped for as long as it is younger than [`MemoryLogConfig::dedup_window`]
//! (default 4 days, beyond DR's 72 h of webhook retries, docs/digital-river.md §4.2)
//! and among the newest [`MemoryLogConfig::dedup_max_ids`] ids (default 200 000,
//! about 18 MiB, measured by `cargo bench --bench event_memory`). A redelivery older
//! than that is stored again.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::sync::watch;

use super::{
    dedup::DedupIndex,
    envelope::Envelope,
    log::{Appended, Bounds, EventLog, LogError, LogStats, Sequence, StoredEvent},
    proto::EventEncoder,
};
use crate::clock::Clock;
use crate::defaults;

/// Bounds of a [`MemoryLog`].
#[derive(Debug, Clone)]
pub struct MemoryLogConfig {
    /// Most events held; the oldest are dropped beyond it.
    pub max_events: usize,
    /// Most bytes held: what the events really cost in memory, every form of them
    /// and their index entries ([`super::footprint`]).
    pub max_bytes: usize,
    /// Most event ids remembered for dedup (never fewer than the held events).
    pub dedup_max_ids: usize,
    /// How long a dropped event's id is still remembered for dedup.
    pub dedup_window: Duration,
}

impl Default for MemoryLogConfig {
    fn default() -> Self {
        Self {
            max_events: defaults::EVENT_LOG_MAX_EVENTS,
            max_bytes: defaults::EVENT_LOG_MAX_BYTES,
            dedup_max_ids: defaults::EVENT_DEDUP_MAX_IDS,
            dedup_window: defaults::EVENT_DEDUP_WINDOW,
        }
    }
}

/// The in-memory event log.
pub struct MemoryLog {
    /// Random per instance, so cursors from before a restart are recognised.
    log_id: u64,
    config: MemoryLogConfig,
    encoder: EventEncoder,
    clock: Arc<dyn Clock>,
    /// Everything mutable; held only for short, non-async sections.
    state: Mutex<State>,
    /// Last assigned sequence; sent after the event is readable.
    appended: watch::Sender<Sequence>,
}

impl std::fmt::Debug for MemoryLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryLog")
            .field("log_id", &self.log_id)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct State {
    /// Held events, oldest first; `events[i].seq == first_seq + i`.
    events: VecDeque<Arc<StoredEvent>>,
    /// Sum of `approx_size` (the footprint) of held events.
    bytes: usize,
    /// Last assigned sequence.
    last_seq: Sequence,
    /// Dedup: DR id → sequence, in append order for pruning.
    seen: DedupIndex,
    /// Newest `createdTime` ever appended (backfill's resume point).
    newest_created: Option<DateTime<Utc>>,
}

impl State {
    fn first_seq(&self) -> Sequence {
        self.events.front().map_or(self.last_seq + 1, |e| e.seq)
    }
}

impl MemoryLog {
    /// An empty log.
    pub fn new(config: MemoryLogConfig, encoder: EventEncoder, clock: Arc<dyn Clock>) -> Self {
        let (appended, _) = watch::channel(0);
        Self {
            log_id: rand::random(),
            config,
            encoder,
            clock,
            state: Mutex::new(State::default()),
            appended,
        }
    }

    /// Bytes the held events count against [`MemoryLogConfig::max_bytes`] (for
    /// benchmarks and metrics).
    pub fn held_bytes(&self) -> usize {
        self.lock().bytes
    }

    /// Appends up to `limit` events after `after` to `out` ([`EventLog::read_after`]).
    fn read_into(
        &self,
        after: Sequence,
        limit: usize,
        out: &mut Vec<Arc<StoredEvent>>,
    ) -> Result<(), LogError> {
        let st = self.lock();
        let first = st.first_seq();
        if after.saturating_add(1) < first {
            return Err(LogError::Expired {
                after,
                oldest: first,
            });
        }
        let start = usize::try_from(after + 1 - first).unwrap_or(usize::MAX);
        out.extend(st.events.iter().skip(start).take(limit).cloned());
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // why: no code panics while holding the lock; if one did, the state is still
        // consistent between statements, so keep serving rather than poison forever.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn evict(&self, st: &mut State) {
        while st.events.len() > 1
            && (st.events.len() > self.config.max_events || st.bytes > self.config.max_bytes)
        {
            if let Some(old) = st.events.pop_front() {
                st.bytes = st.bytes.saturating_sub(old.approx_size());
            }
        }
        if self.config.max_events == 0 {
            st.events.clear();
            st.bytes = 0;
        }
    }

    fn prune_seen(&self, st: &mut State, now: DateTime<Utc>) {
        let first = st.first_seq();
        let window =
            chrono::Duration::from_std(self.config.dedup_window).unwrap_or(chrono::Duration::MAX);
        while let Some((at, seq)) = st.seen.oldest() {
            let too_many = st.seen.len() > self.config.dedup_max_ids;
            let too_old = now.signed_duration_since(at) > window;
            // why: never forget an id whose event is still held, or a redelivery
            // would be stored (and streamed) twice.
            if seq >= first || !(too_many || too_old) {
                break;
            }
            st.seen.forget_oldest();
        }
    }
}

#[async_trait]
impl EventLog for MemoryLog {
    fn log_id(&self) -> u64 {
        self.log_id
    }

    async fn append(&self, envelope: Envelope) -> Result<Appended, LogError> {
        if let Some(seq) = self.lock().seen.get(&envelope.id) {
            return Ok(Appended {
                seq,
                duplicate: true,
            });
        }
        // why: converting and encoding is the costly part; do it outside the lock.
        let prepared = self.encoder.prepare(&envelope);
        let seq = {
            let mut st = self.lock();
            if let Some(seq) = st.seen.get(&envelope.id) {
                return Ok(Appended {
                    seq,
                    duplicate: true,
                });
            }
            let now = self.clock.now();
            // why: keep received_at monotonic so time lookups can binary-search.
            let received_at = st
                .events
                .back()
                .map_or(now, |last| last.received_at.max(now));
            let seq = st.last_seq + 1;
            st.last_seq = seq;
            st.newest_created = st.newest_created.max(Some(envelope.created_time));
            let id = envelope.id.clone();
            let stored = Arc::new(StoredEvent::from_prepared(
                seq,
                self.log_id,
                received_at,
                envelope,
                prepared,
            ));
            st.bytes += stored.approx_size();
            st.events.push_back(stored);
            st.seen.insert(id, seq, now);
            self.evict(&mut st);
            self.prune_seen(&mut st, now);
            seq
        };
        self.appended.send_replace(seq);
        Ok(Appended {
            seq,
            duplicate: false,
        })
    }

    async fn read_after(
        &self,
        after: Sequence,
        limit: usize,
    ) -> Result<Vec<Arc<StoredEvent>>, LogError> {
        let mut out = Vec::new();
        self.read_into(after, limit, &mut out)?;
        Ok(out)
    }

    fn read_after_now(
        &self,
        after: Sequence,
        limit: usize,
        out: &mut Vec<Arc<StoredEvent>>,
    ) -> Option<Result<(), LogError>> {
        Some(self.read_into(after, limit, out))
    }

    async fn bounds(&self) -> Result<Bounds, LogError> {
        let st = self.lock();
        Ok(Bounds {
            first: st.first_seq(),
            last: st.last_seq,
        })
    }

    async fn first_received_at_or_after(
        &self,
        time: DateTime<Utc>,
    ) -> Result<Option<Sequence>, LogError> {
        let st = self.lock();
        let idx = st.events.partition_point(|e| e.received_at < time);
        Ok(st.events.get(idx).map(|e| e.seq))
    }

    async fn get_by_id(&self, id: &str) -> Result<Option<Arc<StoredEvent>>, LogError> {
        let st = self.lock();
        let Some(seq) = st.seen.get(id) else {
            return Ok(None);
        };
        let first = st.first_seq();
        if seq < first {
            return Ok(None);
        }
        let idx = usize::try_from(seq - first).unwrap_or(usize::MAX);
        Ok(st.events.get(idx).cloned())
    }

    async fn newest_created_time(&self) -> Result<Option<DateTime<Utc>>, LogError> {
        Ok(self.lock().newest_created)
    }

    async fn check_ready(&self) -> Result<(), LogError> {
        Ok(())
    }

    fn watch_appends(&self) -> watch::Receiver<Sequence> {
        self.appended.subscribe()
    }

    async fn stats(&self) -> Result<LogStats, LogError> {
        let st = self.lock();
        Ok(LogStats {
            events: st.events.len() as u64,
            bytes: Some(st.bytes as u64),
            oldest_received_at: st.events.front().map(|e| e.received_at),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use bytes::Bytes;

    fn event(id: &str) -> Envelope {
        event_with_size(id, 0)
    }

    fn event_with_size(id: &str, pad: usize) -> Envelope {
        let body = format!(
            r#"{{"id":"{id}","type":"order.accepted","createdTime":"2024-01-01T00:00:00Z",
                "data":{{"object":{{"id":"o1","pad":"{}"}}}}}}"#,
            "x".repeat(pad)
        );
        Envelope::parse(Bytes::from(body)).unwrap()
    }

    fn log_with(config: MemoryLogConfig) -> (MemoryLog, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::new(Utc::now()));
        (
            MemoryLog::new(config, EventEncoder::default(), clock.clone()),
            clock,
        )
    }

    #[tokio::test]
    async fn appends_get_increasing_sequences_and_read_back_in_order() {
        let (log, _) = log_with(MemoryLogConfig::default());
        for (i, id) in ["a", "b", "c"].iter().enumerate() {
            let got = log.append(event(id)).await.unwrap();
            assert_eq!(
                got,
                Appended {
                    seq: i as u64 + 1,
                    duplicate: false
                }
            );
        }
        let all = log.read_after(0, 10).await.unwrap();
        let ids: Vec<_> = all.iter().map(|e| e.meta.id.as_str()).collect();
        assert_eq!(ids, ["a", "b", "c"]);
        let tail = log.read_after(2, 10).await.unwrap();
        assert_eq!(tail.len(), 1);
        assert_eq!(tail[0].seq, 3);
        assert!(log.read_after(3, 10).await.unwrap().is_empty());
        assert_eq!(log.read_after(0, 2).await.unwrap().len(), 2);
        assert_eq!(*log.watch_appends().borrow(), 3);
    }

    #[tokio::test]
    async fn stats_count_what_the_log_holds_and_how_old_its_oldest_event_is() {
        let (log, clock) = log_with(MemoryLogConfig {
            max_events: 2,
            ..MemoryLogConfig::default()
        });
        assert_eq!(
            log.stats().await.unwrap(),
            LogStats {
                events: 0,
                bytes: Some(0),
                oldest_received_at: None
            }
        );
        let first_at = clock.now();
        log.append(event("a")).await.unwrap();
        clock.advance(chrono::Duration::seconds(30));
        let second_at = clock.now();
        log.append(event("b")).await.unwrap();
        let stats = log.stats().await.unwrap();
        assert_eq!(stats.events, 2);
        assert_eq!(stats.oldest_received_at, Some(first_at));
        let bytes = stats.bytes.unwrap();
        assert!(bytes > 0);
        // the bound drops "a": the oldest is now "b"
        log.append(event("c")).await.unwrap();
        let stats = log.stats().await.unwrap();
        assert_eq!(stats.events, 2);
        assert_eq!(stats.oldest_received_at, Some(second_at));
    }

    #[tokio::test]
    async fn a_redelivered_id_is_acknowledged_but_not_stored_twice() {
        let (log, _) = log_with(MemoryLogConfig::default());
        log.append(event("a")).await.unwrap();
        let again = log.append(event("a")).await.unwrap();
        assert_eq!(
            again,
            Appended {
                seq: 1,
                duplicate: true
            }
        );
        assert_eq!(log.bounds().await.unwrap(), Bounds { first: 1, last: 1 });
        assert_eq!(log.get_by_id("a").await.unwrap().unwrap().seq, 1);
    }

    #[tokio::test]
    async fn the_count_bound_drops_the_oldest_and_expires_their_cursors() {
        let (log, _) = log_with(MemoryLogConfig {
            max_events: 2,
            ..Default::default()
        });
        for id in ["a", "b", "c", "d"] {
            log.append(event(id)).await.unwrap();
        }
        assert_eq!(log.bounds().await.unwrap(), Bounds { first: 3, last: 4 });
        assert!(matches!(
            log.read_after(1, 10).await,
            Err(LogError::Expired {
                after: 1,
                oldest: 3
            })
        ));
        assert_eq!(log.read_after(2, 10).await.unwrap().len(), 2);
        assert!(log.get_by_id("a").await.unwrap().is_none());
        // The dropped id is still remembered: no double delivery.
        assert!(log.append(event("a")).await.unwrap().duplicate);
    }

    #[tokio::test]
    async fn the_byte_bound_drops_the_oldest_but_keeps_the_newest() {
        let one = StoredEvent::build(
            1,
            1,
            Utc::now(),
            event_with_size("x", 10_000),
            &EventEncoder::default(),
        )
        .approx_size();
        let (log, _) = log_with(MemoryLogConfig {
            max_bytes: one * 2 + one / 2,
            ..Default::default()
        });
        for id in ["a", "b", "c", "d"] {
            log.append(event_with_size(id, 10_000)).await.unwrap();
        }
        assert_eq!(log.bounds().await.unwrap(), Bounds { first: 3, last: 4 });
    }

    #[tokio::test]
    async fn dropped_ids_are_forgotten_after_the_dedup_window() {
        let (log, clock) = log_with(MemoryLogConfig {
            max_events: 1,
            dedup_window: Duration::from_secs(3600),
            ..Default::default()
        });
        log.append(event("a")).await.unwrap();
        log.append(event("b")).await.unwrap();
        clock.advance(chrono::Duration::hours(2));
        // This append prunes "a" (dropped and older than the window) but not "c".
        log.append(event("c")).await.unwrap();
        assert!(!log.append(event("a")).await.unwrap().duplicate);
        // Stored again, and held again, so deduped again.
        assert!(log.append(event("a")).await.unwrap().duplicate);
    }

    #[tokio::test]
    async fn dedup_ids_are_bounded_by_count_but_never_below_held_events() {
        let (log, _) = log_with(MemoryLogConfig {
            max_events: 2,
            dedup_max_ids: 3,
            ..Default::default()
        });
        for id in ["a", "b", "c", "d", "e"] {
            log.append(event(id)).await.unwrap();
        }
        assert_eq!(log.lock().seen.len(), 3);
        assert!(!log.append(event("a")).await.unwrap().duplicate);
        assert!(log.append(event("e")).await.unwrap().duplicate);
    }

    #[tokio::test]
    async fn time_lookup_finds_the_first_event_received_at_or_after() {
        let (log, clock) = log_with(MemoryLogConfig::default());
        let t0 = clock.now();
        log.append(event("a")).await.unwrap();
        clock.advance(chrono::Duration::seconds(10));
        log.append(event("b")).await.unwrap();
        assert_eq!(log.first_received_at_or_after(t0).await.unwrap(), Some(1));
        assert_eq!(
            log.first_received_at_or_after(t0 + chrono::Duration::seconds(1))
                .await
                .unwrap(),
            Some(2)
        );
        assert_eq!(
            log.first_received_at_or_after(t0 + chrono::Duration::seconds(11))
                .await
                .unwrap(),
            None
        );
    }

    #[tokio::test]
    async fn cursors_of_another_instance_are_recognised() {
        let (a, _) = log_with(MemoryLogConfig::default());
        let (b, _) = log_with(MemoryLogConfig::default());
        let c = a.cursor_for(5);
        assert_eq!(a.sequence_of(&c), Ok(5));
        assert_eq!(b.sequence_of(&c), Err(crate::events::CursorError::OtherLog));
    }
}
