//! Subscriptions: a position in the log and a filter, read as a stream
//! ([`Subscription`]). A subscription reads the log by sequence when its subscriber
//! polls it, so the webhook path never waits for subscribers, a slow one only delays
//! itself and nothing is read ahead for it; once the log drops its position the
//! subscription ends with [`SubscriptionItem::Expired`] rather than skipping events.
//! A subscription with a reorder window holds matching events for the window and
//! hands them out in DR's creation order per ordering key, in the same way.
//!
//! Each running subscription is counted (`dr_gateway_subscribers`) and registered
//! with its progress, so a scrape can tell how far behind the slowest one is
//! ([`max_lag`]); with traces exported, handing an event to a subscriber is a span
//! (`event.deliver`) whose parent is the span that stored the event and which links
//! to the Subscribe call.
//!
//! `stream.rs` has the stream itself (reading, heartbeats, the reorder window's hold).

mod stream;

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, OnceLock,
    },
    time::Duration,
};

use chrono::{DateTime, Utc};
use tokio::sync::watch;

pub use stream::Subscription;

use super::{
    filter::EventFilter,
    log::{CursorError, EventLog, LogError, Sequence, StoredEvent},
    reorder::ReorderBuffer,
};
use crate::clock::Clock;
use crate::telemetry::logging::DELIVERY_TARGET;
use crate::telemetry::metrics::names;
use crate::telemetry::otel;
use opentelemetry::trace::SpanContext;

/// Events read from the log per batch.
const READ_BATCH: usize = 128;

/// Reads a log from a position onwards, waiting for appends when caught up.
#[derive(Debug)]
pub struct Tail {
    log: Arc<dyn EventLog>,
    pos: Sequence,
    appended: watch::Receiver<Sequence>,
}

impl Tail {
    /// A reader positioned after `after`.
    pub fn new(log: Arc<dyn EventLog>, after: Sequence) -> Self {
        let appended = log.watch_appends();
        Self {
            log,
            pos: after,
            appended,
        }
    }

    /// The last sequence read (everything up to it has been handed out).
    pub fn position(&self) -> Sequence {
        self.pos
    }

    /// The next events after the position, without waiting; empty when caught up.
    pub async fn next_batch(&mut self) -> Result<Vec<Arc<StoredEvent>>, LogError> {
        // why: mark the current version seen *before* reading, so an append racing
        // with the read still wakes `wait_for_append`.
        self.appended.borrow_and_update();
        let batch = self.log.read_after(self.pos, READ_BATCH).await?;
        if let Some(last) = batch.last() {
            self.pos = last.seq;
        }
        Ok(batch)
    }

    /// Waits until something is appended after the last `next_batch`. False when the
    /// log is gone.
    pub async fn wait_for_append(&mut self) -> bool {
        self.appended.changed().await.is_ok()
    }

    /// True when the position has reached the last sequence the log announced: a
    /// reader can wait for the next append instead of reading an empty batch. (An
    /// append announced after the last `next_batch` still wakes
    /// [`wait_for_append`](Self::wait_for_append): this does not mark it seen.)
    pub fn reached_announced(&self) -> bool {
        *self.appended.borrow() <= self.pos
    }
}

/// Where a subscription starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// After the last event appended so far.
    Now,
    /// At the oldest held event.
    Oldest,
    /// At the first event the gateway received at or after this time.
    AtTime(DateTime<Utc>),
    /// After the event this cursor names.
    AfterCursor(String),
}

/// Why a subscription could not start.
#[derive(Debug, thiserror::Error)]
pub enum SubscribeError {
    /// The cursor is not one this gateway issued.
    #[error("malformed cursor")]
    MalformedCursor,
    /// The cursor names a position the log has not reached.
    #[error("cursor is ahead of the event log")]
    CursorAhead,
    /// Events after the start were dropped (or the cursor is from another log
    /// instance); resume from `oldest_cursor` to read what is held.
    #[error("events after the requested start are no longer held")]
    Expired {
        /// Cursor positioned just before the oldest held event.
        oldest_cursor: String,
        /// True when the cursor came from another log instance.
        other_log: bool,
    },
    /// The log failed.
    #[error(transparent)]
    Log(#[from] LogError),
}

/// One message for a subscriber.
#[derive(Debug)]
pub enum SubscriptionItem {
    /// A matching event.
    Event(Arc<StoredEvent>),
    /// A matching event on a stream with a reorder window, and the cursor to resume
    /// after (every event up to it has been handed out).
    Reordered {
        /// The event.
        event: Arc<StoredEvent>,
        /// Where to resume.
        resume_cursor: String,
    },
    /// Nothing matched for a heartbeat interval; `cursor` is where to resume.
    Heartbeat {
        /// Cursor of the last event looked at (matching or not).
        cursor: String,
        /// Gateway time.
        time: DateTime<Utc>,
    },
    /// The log dropped events before this subscriber read them; the stream ends.
    Expired {
        /// Cursor positioned just before the oldest held event.
        oldest_cursor: String,
    },
    /// The log failed; the stream ends.
    Failed(LogError),
}

/// Resolves `start` to the position to read after.
pub async fn resolve_start(log: &dyn EventLog, start: &Start) -> Result<Sequence, SubscribeError> {
    let bounds = log.bounds().await?;
    let oldest_cursor = || log.cursor_for(bounds.first.saturating_sub(1));
    match start {
        Start::Now => Ok(bounds.last),
        Start::Oldest => Ok(bounds.first.saturating_sub(1)),
        Start::AtTime(time) => {
            // Events received before `time` that were dropped would be missed.
            let oldest = log.read_after(bounds.first.saturating_sub(1), 1).await?;
            if bounds.first > 1 && oldest.first().is_some_and(|e| *time < e.received_at) {
                return Err(SubscribeError::Expired {
                    oldest_cursor: oldest_cursor(),
                    other_log: false,
                });
            }
            Ok(match log.first_received_at_or_after(*time).await? {
                Some(seq) => seq - 1,
                None => bounds.last,
            })
        }
        Start::AfterCursor(cursor) => match log.sequence_of(cursor) {
            Err(CursorError::Malformed) => Err(SubscribeError::MalformedCursor),
            Err(CursorError::OtherLog) => Err(SubscribeError::Expired {
                oldest_cursor: oldest_cursor(),
                other_log: true,
            }),
            Ok(seq) if seq > bounds.last => Err(SubscribeError::CursorAhead),
            Ok(seq) if bounds.is_expired(seq) => Err(SubscribeError::Expired {
                oldest_cursor: oldest_cursor(),
                other_log: false,
            }),
            Ok(seq) => Ok(seq),
        },
    }
}

/// Starts a subscription: resolves the start and returns the subscription, which
/// reads the log as it is polled (no task, no queue: see [`Subscription`]).
pub async fn subscribe(
    log: Arc<dyn EventLog>,
    filter: EventFilter,
    start: &Start,
    heartbeat: Duration,
    clock: Arc<dyn Clock>,
) -> Result<Subscription, SubscribeError> {
    let (tail, delivery) = start_reading(log, start).await?;
    Ok(Subscription::live(tail, filter, heartbeat, clock, delivery))
}

/// The reader at the resolved start, and the delivery reporting of a new
/// subscription (its lag registered, linked to the current RPC's span).
async fn start_reading(
    log: Arc<dyn EventLog>,
    start: &Start,
) -> Result<(Tail, Delivery), SubscribeError> {
    let after = resolve_start(log.as_ref(), start).await?;
    let tail = Tail::new(log, after);
    let delivery = Delivery {
        progress: Progress::register(&tail),
        subscribe_span: otel::current_rpc_span_context(),
        seconds: metrics::histogram!(names::SUBSCRIBER_DELIVERY_SECONDS),
    };
    Ok((tail, delivery))
}

/// Like [`subscribe`], but each event is held for `window` after the gateway
/// received it and the events of one ordering key come out in DR's creation order
/// ([`ReorderBuffer`]). Heartbeats and [`SubscriptionItem::Reordered`] carry the
/// cursor to resume after: the position before the oldest event still held.
pub async fn subscribe_reordered(
    log: Arc<dyn EventLog>,
    filter: EventFilter,
    start: &Start,
    heartbeat: Duration,
    window: Duration,
    clock: Arc<dyn Clock>,
) -> Result<Subscription, SubscribeError> {
    let (tail, delivery) = start_reading(log, start).await?;
    Ok(Subscription::reordered(
        tail,
        filter,
        heartbeat,
        ReorderBuffer::new(window),
        clock,
        delivery,
    ))
}

/// What a subscription reports about its deliveries.
struct Delivery {
    progress: Progress,
    /// The Subscribe call's span, linked from each delivery span.
    subscribe_span: Option<SpanContext>,
    /// `dr_gateway_subscriber_delivery_seconds`.
    seconds: metrics::Histogram,
}

impl Delivery {
    /// The span of handing `event` to the subscriber (DEBUG: only exported, never
    /// printed, and not created at all unless traces are exported).
    fn span(&self, event: &StoredEvent) -> tracing::Span {
        let span = tracing::debug_span!(
            target: DELIVERY_TARGET,
            "event.deliver",
            otel.kind = "producer",
            event_id = %crate::telemetry::capped(&event.meta.id),
            event_type = %crate::telemetry::capped(&event.meta.event_type),
            seq = event.seq,
        );
        if !span.is_disabled() {
            if let Some(parent) = &event.intake_span {
                otel::set_parent(&span, parent);
            }
            if let Some(subscribe) = &self.subscribe_span {
                otel::add_link(&span, subscribe.clone());
            }
        }
        span
    }

    /// `event` was handed over (`now` is the gateway's time).
    fn delivered(&self, event: &StoredEvent, now: DateTime<Utc>) {
        let age = now.signed_duration_since(event.received_at);
        self.seconds
            .record(age.to_std().unwrap_or_default().as_secs_f64());
    }
}

/// A running subscription's progress, registered for the lag gauge while it runs.
struct Progress {
    id: u64,
    shared: Arc<Position>,
}

/// How far a subscription got, and how far its log got.
struct Position {
    /// The log it reads ([`EventLog::log_id`]).
    log_id: u64,
    /// The last sequence handed over (or filtered out).
    reached: AtomicU64,
    /// The log's last sequence.
    appended: watch::Receiver<Sequence>,
}

impl Position {
    fn lag(&self) -> u64 {
        let appended = *self.appended.borrow();
        appended.saturating_sub(self.reached.load(Ordering::Relaxed))
    }
}

type Registry = Mutex<HashMap<u64, Arc<Position>>>;

fn registry() -> &'static Registry {
    static OPEN: OnceLock<Registry> = OnceLock::new();
    OPEN.get_or_init(Registry::default)
}

impl Progress {
    fn register(tail: &Tail) -> Self {
        static NEXT_ID: AtomicU64 = AtomicU64::new(0);
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let shared = Arc::new(Position {
            log_id: tail.log.log_id(),
            reached: AtomicU64::new(tail.position()),
            appended: tail.log.watch_appends(),
        });
        registry()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, shared.clone());
        metrics::gauge!(names::SUBSCRIBERS).increment(1.0);
        Self { id, shared }
    }

    fn reached(&self, seq: Sequence) {
        self.shared.reached.store(seq, Ordering::Relaxed);
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        registry()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
        metrics::gauge!(names::SUBSCRIBERS).decrement(1.0);
    }
}

/// Events the furthest-behind running subscription of this process has still to
/// read (0 without subscriptions).
pub fn max_lag() -> u64 {
    max_lag_where(|_| true)
}

/// [`max_lag`] among the subscriptions that read the log `log_id`.
pub fn max_lag_of(log_id: u64) -> u64 {
    max_lag_where(|p| p.log_id == log_id)
}

fn max_lag_where(keep: impl Fn(&Position) -> bool) -> u64 {
    registry()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .values()
        .filter(|p| keep(p))
        .map(|p| p.lag())
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        clock::SystemClock,
        events::{Envelope, EventEncoder, MemoryLog, MemoryLogConfig},
    };
    use bytes::Bytes;
    use futures::StreamExt as _;
    use tokio::time::{timeout, Instant};

    const WAIT: Duration = Duration::from_secs(5);

    fn event(id: &str, t: &str) -> Envelope {
        let body = format!(
            r#"{{"id":"{id}","type":"{t}","createdTime":"2024-01-01T00:00:00Z","data":{{"object":{{"orderId":"o1"}}}}}}"#
        );
        Envelope::parse(Bytes::from(body)).unwrap()
    }

    fn log(max_events: usize) -> Arc<dyn EventLog> {
        Arc::new(MemoryLog::new(
            MemoryLogConfig {
                max_events,
                ..Default::default()
            },
            EventEncoder::default(),
            Arc::new(SystemClock),
        ))
    }

    /// A subscription to everything appended from now on (heartbeats every 60 s).
    async fn subscribe_from_now(log: &Arc<dyn EventLog>) -> Subscription {
        subscribe_matching(log, EventFilter::default(), Duration::from_secs(60)).await
    }

    /// A subscription from now to what `filter` matches, idle heartbeats every
    /// `heartbeat`.
    async fn subscribe_matching(
        log: &Arc<dyn EventLog>,
        filter: EventFilter,
        heartbeat: Duration,
    ) -> Subscription {
        subscribe(
            log.clone(),
            filter,
            &Start::Now,
            heartbeat,
            Arc::new(SystemClock),
        )
        .await
        .unwrap()
    }

    /// A subscription from now that holds each event for `window` to order them.
    async fn reordered_from_now(log: &Arc<dyn EventLog>, window: Duration) -> Subscription {
        subscribe_reordered(
            log.clone(),
            EventFilter::default(),
            &Start::Now,
            Duration::from_secs(60),
            window,
            Arc::new(SystemClock),
        )
        .await
        .unwrap()
    }

    async fn next_event(rx: &mut Subscription) -> Arc<StoredEvent> {
        loop {
            match timeout(WAIT, rx.next())
                .await
                .expect("timed out")
                .expect("closed")
            {
                SubscriptionItem::Event(e) => return e,
                SubscriptionItem::Heartbeat { .. } => continue,
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn a_reader_at_the_last_announced_append_waits_and_the_next_append_wakes_it() {
        let log = log(100);
        log.append(event("a", "t")).await.unwrap();
        let mut tail = Tail::new(log.clone(), 0);
        assert!(!tail.reached_announced());
        assert_eq!(tail.next_batch().await.unwrap().len(), 1);
        assert!(tail.reached_announced(), "read up to the announced append");
        log.append(event("b", "t")).await.unwrap();
        assert!(!tail.reached_announced());
        // The append came after the read: waiting returns at once, not never.
        assert!(timeout(WAIT, tail.wait_for_append()).await.expect("woken"));
        let batch = tail.next_batch().await.unwrap();
        assert_eq!(batch.len(), 1);
        assert_eq!(batch[0].meta.id, "b");
    }

    #[tokio::test]
    async fn a_subscriber_that_caught_up_gets_each_later_append() {
        let log = log(100);
        let mut rx = subscribe_from_now(&log).await;
        for id in ["a", "b", "c"] {
            log.append(event(id, "t")).await.unwrap();
            assert_eq!(next_event(&mut rx).await.meta.id, id);
        }
    }

    #[tokio::test]
    async fn a_subscriber_gets_matching_events_appended_after_it_started() {
        let log = log(100);
        log.append(event("before", "order.accepted")).await.unwrap();
        let filter = EventFilter::new(&["order.charge.*".into()], &[], None).unwrap();
        let mut rx = subscribe_matching(&log, filter, Duration::from_secs(60)).await;
        log.append(event("a", "order.accepted")).await.unwrap();
        log.append(event("b", "order.charge.capture.complete"))
            .await
            .unwrap();
        assert_eq!(next_event(&mut rx).await.meta.id, "b");
    }

    #[tokio::test]
    async fn idle_subscribers_get_heartbeats_with_the_latest_cursor() {
        let log = log(100);
        let filter = EventFilter::new(&["nothing.matches".into()], &[], None).unwrap();
        let mut rx = subscribe_matching(&log, filter, Duration::from_millis(50)).await;
        log.append(event("a", "order.accepted")).await.unwrap();
        let want = log.cursor_for(1);
        let deadline = Instant::now() + WAIT;
        loop {
            match timeout(WAIT, rx.next()).await.unwrap().unwrap() {
                SubscriptionItem::Heartbeat { cursor, .. } if cursor == want => break,
                SubscriptionItem::Heartbeat { .. } => assert!(Instant::now() < deadline),
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn a_subscriber_that_falls_behind_the_log_gets_expired_not_a_gap() {
        let log = log(3);
        let mut rx = subscribe_from_now(&log).await;
        log.append(event("first", "order.accepted")).await.unwrap();
        assert_eq!(next_event(&mut rx).await.seq, 1);
        // Append far more than the log holds without reading.
        for i in 0..42 {
            log.append(event(&format!("e{i}"), "order.accepted"))
                .await
                .unwrap();
        }
        let mut seen = vec![1];
        loop {
            match timeout(WAIT, rx.next()).await.unwrap() {
                Some(SubscriptionItem::Event(e)) => seen.push(e.seq),
                Some(SubscriptionItem::Expired { oldest_cursor }) => {
                    let oldest_held = log.sequence_of(&oldest_cursor).unwrap() + 1;
                    let next_wanted = seen.last().unwrap() + 1;
                    assert!(oldest_held > next_wanted, "expired only after a real gap");
                    break;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        // What was delivered is contiguous from the start.
        assert_eq!(seen, (1..=seen.len() as u64).collect::<Vec<_>>());
    }

    fn order_event(id: &str, order: &str, created: &str) -> Envelope {
        let body = format!(
            r#"{{"id":"{id}","type":"order.updated","createdTime":"{created}","data":{{"object":{{"orderId":"{order}"}}}}}}"#
        );
        Envelope::parse(Bytes::from(body)).unwrap()
    }

    #[tokio::test]
    async fn a_reordered_subscription_hands_out_creation_order_and_resumes_after_what_it_handed_out(
    ) {
        let log = log(100);
        let mut rx = reordered_from_now(&log, Duration::from_millis(200)).await;
        // Order o1's second event arrives first; o2's in between.
        log.append(order_event("o1-b", "o1", "2024-01-01T00:00:02Z"))
            .await
            .unwrap();
        log.append(order_event("o2-a", "o2", "2024-01-01T00:00:00Z"))
            .await
            .unwrap();
        log.append(order_event("o1-a", "o1", "2024-01-01T00:00:01Z"))
            .await
            .unwrap();
        let mut got = Vec::new();
        while got.len() < 3 {
            match timeout(WAIT, rx.next()).await.unwrap().unwrap() {
                SubscriptionItem::Reordered {
                    event,
                    resume_cursor,
                } => got.push((event.meta.id.clone(), resume_cursor)),
                SubscriptionItem::Heartbeat { .. } => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        let ids: Vec<&str> = got.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(ids, ["o1-a", "o1-b", "o2-a"]);
        // o1-a (seq 3) came out before o1-b (seq 1) and o2-a (seq 2): resuming after
        // it must not skip them; after o1-b, only o2-a is left; then nothing.
        assert_eq!(got[0].1, log.cursor_for(0));
        assert_eq!(got[1].1, log.cursor_for(1));
        assert_eq!(got[2].1, log.cursor_for(3));
    }

    #[tokio::test]
    async fn a_reordered_subscriber_that_falls_behind_the_log_gets_expired_not_a_gap() {
        let log = log(3);
        let mut rx = reordered_from_now(&log, Duration::from_millis(1)).await;
        // Far more than the log holds, appended before the subscriber reads any.
        for i in 0..10 {
            log.append(order_event(&format!("e{i}"), "o1", "2024-01-01T00:00:00Z"))
                .await
                .unwrap();
        }
        match timeout(WAIT, rx.next()).await.unwrap() {
            Some(SubscriptionItem::Expired { oldest_cursor }) => {
                assert_eq!(log.sequence_of(&oldest_cursor).unwrap() + 1, 8);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(
            timeout(WAIT, rx.next()).await.unwrap().is_none(),
            "the subscription ends after Expired"
        );
    }

    #[tokio::test]
    async fn starts_resolve_as_documented() {
        let log = log(2);
        for id in ["a", "b", "c"] {
            log.append(event(id, "order.accepted")).await.unwrap();
        }
        assert_eq!(resolve_start(log.as_ref(), &Start::Now).await.unwrap(), 3);
        assert_eq!(
            resolve_start(log.as_ref(), &Start::Oldest).await.unwrap(),
            1
        );
        let c = log.cursor_for(2);
        assert_eq!(
            resolve_start(log.as_ref(), &Start::AfterCursor(c))
                .await
                .unwrap(),
            2
        );
        assert!(matches!(
            resolve_start(log.as_ref(), &Start::AfterCursor(log.cursor_for(0))).await,
            Err(SubscribeError::Expired {
                other_log: false,
                ..
            })
        ));
        assert!(matches!(
            resolve_start(log.as_ref(), &Start::AfterCursor(log.cursor_for(9))).await,
            Err(SubscribeError::CursorAhead)
        ));
        assert!(matches!(
            resolve_start(log.as_ref(), &Start::AfterCursor("junk".into())).await,
            Err(SubscribeError::MalformedCursor)
        ));
        let other = crate::events::Cursor {
            log_id: log.log_id() ^ 1,
            seq: 2,
        }
        .encode();
        assert!(matches!(
            resolve_start(log.as_ref(), &Start::AfterCursor(other)).await,
            Err(SubscribeError::Expired {
                other_log: true,
                ..
            })
        ));
        let long_ago = Utc::now() - chrono::Duration::days(1);
        assert!(matches!(
            resolve_start(log.as_ref(), &Start::AtTime(long_ago)).await,
            Err(SubscribeError::Expired { .. })
        ));
        let future = Utc::now() + chrono::Duration::days(1);
        assert_eq!(
            resolve_start(log.as_ref(), &Start::AtTime(future))
                .await
                .unwrap(),
            3
        );
    }

    #[tokio::test]
    async fn the_lag_is_what_a_stalled_subscriber_has_still_to_read() {
        let log = log(1000);
        let mut rx = subscribe_from_now(&log).await;
        // The subscriber reads nothing, so nothing is read for it: it lags by every
        // event appended since it started.
        let appended = 40;
        for i in 0..appended {
            log.append(event(&format!("e{i}"), "order.accepted"))
                .await
                .unwrap();
        }
        assert_eq!(max_lag_of(log.log_id()), appended);
        for _ in 0..appended / 2 {
            next_event(&mut rx).await;
        }
        assert_eq!(
            max_lag_of(log.log_id()),
            appended - appended / 2,
            "a subscriber lags by what it has not taken, not by what was read for it"
        );
        for _ in appended / 2..appended {
            next_event(&mut rx).await;
        }
        assert_eq!(
            max_lag_of(log.log_id()),
            0,
            "a subscriber that caught up lags by nothing"
        );
        drop(rx);
        assert!(
            !registry()
                .lock()
                .unwrap()
                .values()
                .any(|p| p.log_id == log.log_id()),
            "a subscription that ended is forgotten"
        );
    }
}
