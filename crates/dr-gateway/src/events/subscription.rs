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

use std::{
    collections::{HashMap, VecDeque},
    future::Future as _,
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, OnceLock,
    },
    task::{ready, Context, Poll},
    time::Duration,
};

use chrono::{DateTime, Utc};
use tokio::{
    sync::watch,
    time::{Instant, Sleep},
};
use tokio_util::sync::ReusableBoxFuture;

use super::{
    filter::EventFilter,
    log::{CursorError, EventLog, LogError, Sequence, StoredEvent},
    reorder::{ReorderBuffer, MAX_HELD},
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
    let after = resolve_start(log.as_ref(), start).await?;
    let tail = Tail::new(log, after);
    let delivery = Delivery {
        progress: Progress::register(&tail),
        subscribe_span: otel::current_rpc_span_context(),
        seconds: metrics::histogram!(names::SUBSCRIBER_DELIVERY_SECONDS),
    };
    Ok(Subscription {
        source: Source::Live(Box::new(Live::new(
            tail, filter, heartbeat, clock, delivery,
        ))),
    })
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
    let after = resolve_start(log.as_ref(), start).await?;
    let tail = Tail::new(log, after);
    let delivery = Delivery {
        progress: Progress::register(&tail),
        subscribe_span: otel::current_rpc_span_context(),
        seconds: metrics::histogram!(names::SUBSCRIBER_DELIVERY_SECONDS),
    };
    Ok(Subscription {
        source: Source::Reordered(Box::new(Reordered {
            reader: Reader::new(tail),
            buffer: ReorderBuffer::new(window),
            read: Vec::new(),
            due: VecDeque::new(),
            read_on: true,
            filter,
            heartbeat: Heartbeat::new(heartbeat),
            clock,
            delivery,
            ended: false,
        })),
    })
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

/// A running subscription: the [`SubscriptionItem`]s for one subscriber, as a
/// stream read from the log when the subscriber polls it (no task, no queue): the
/// subscriber's transport drives it, so nothing is read ahead of what the
/// subscriber takes (the log keeps the events; one read batch, and a reorder
/// window's held events, are the most it holds) and nothing runs for it between
/// polls. It ends after [`SubscriptionItem::Expired`] or
/// [`SubscriptionItem::Failed`], or when the log is gone; dropping it ends the
/// subscription.
///
/// why: a task per subscription with a queue to its stream cost a wake-up, a
/// queue push and pop and the task's own poll per delivery (`cargo bench -p
/// dr-gateway --bench fan_out -- --callgrind`, benches/README.md "Optimisation 9").
pub struct Subscription {
    source: Source,
}

enum Source {
    /// Every matching event as read ([`subscribe`]).
    Live(Box<Live>),
    /// Matching events held for a reorder window ([`subscribe_reordered`]).
    Reordered(Box<Reordered>),
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.source {
            Source::Live(_) => "live",
            Source::Reordered(_) => "reordered",
        };
        f.debug_struct("Subscription")
            .field("source", &kind)
            .finish_non_exhaustive()
    }
}

impl futures::Stream for Subscription {
    type Item = SubscriptionItem;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<SubscriptionItem>> {
        match &mut self.get_mut().source {
            Source::Live(live) => live.poll_next(cx),
            Source::Reordered(reordered) => reordered.poll_next(cx),
        }
    }
}

/// The events the log returned for one read.
type Batch = Vec<Arc<StoredEvent>>;

/// A [`Tail`] read by polling: a log read in flight and a wait for the next append
/// live in boxes reused from one read (wait) to the next.
struct Reader {
    log: Arc<dyn EventLog>,
    /// The last sequence read.
    pos: Sequence,
    /// The log's append watch, while no wait holds it.
    appended: Option<watch::Receiver<Sequence>>,
    /// A wait for the next append (owns the watch while it runs).
    append_wait: Option<ReusableBoxFuture<'static, (bool, watch::Receiver<Sequence>)>>,
    waiting: bool,
    /// A log read.
    read: Option<ReusableBoxFuture<'static, Result<Batch, LogError>>>,
    reading: bool,
}

impl Reader {
    fn new(tail: Tail) -> Self {
        let Tail { log, pos, appended } = tail;
        Self {
            log,
            pos,
            appended: Some(appended),
            append_wait: None,
            waiting: false,
            read: None,
            reading: false,
        }
    }

    /// See [`Tail::reached_announced`].
    fn reached_announced(&self) -> bool {
        self.appended
            .as_ref()
            .is_some_and(|appended| *appended.borrow() <= self.pos)
    }

    /// Reads the events after the position into `out` (in log order), starting a
    /// read unless one runs.
    fn poll_read(
        &mut self,
        cx: &mut Context<'_>,
        out: &mut Vec<Arc<StoredEvent>>,
    ) -> Poll<Result<(), LogError>> {
        if !self.reading {
            // why: mark the current version seen *before* reading, so an append
            // racing with the read still ends the next wait at once.
            if let Some(appended) = &mut self.appended {
                appended.borrow_and_update();
            }
            let before = out.len();
            if let Some(read) = self.log.read_after_now(self.pos, READ_BATCH, out) {
                self.read_up_to(&out[before..]);
                return Poll::Ready(read);
            }
            let log = self.log.clone();
            let after = self.pos;
            let read = async move { log.read_after(after, READ_BATCH).await };
            match &mut self.read {
                Some(boxed) => boxed.set(read),
                None => self.read = Some(ReusableBoxFuture::new(read)),
            }
            self.reading = true;
        }
        let Some(read) = &mut self.read else {
            return Poll::Ready(Ok(()));
        };
        let batch = ready!(read.poll(cx));
        self.reading = false;
        Poll::Ready(batch.map(|batch| {
            self.read_up_to(&batch);
            out.extend(batch);
        }))
    }

    fn read_up_to(&mut self, batch: &[Arc<StoredEvent>]) {
        if let Some(last) = batch.last() {
            self.pos = last.seq;
        }
    }

    /// Waits for an append after the last read; false when the log is gone.
    fn poll_append(&mut self, cx: &mut Context<'_>) -> Poll<bool> {
        if !self.waiting {
            let Some(mut appended) = self.appended.take() else {
                return Poll::Ready(false);
            };
            let wait = async move {
                let alive = appended.changed().await.is_ok();
                (alive, appended)
            };
            match &mut self.append_wait {
                Some(boxed) => boxed.set(wait),
                None => self.append_wait = Some(ReusableBoxFuture::new(wait)),
            }
            self.waiting = true;
        }
        let Some(wait) = &mut self.append_wait else {
            return Poll::Ready(false);
        };
        let (alive, appended) = ready!(wait.poll(cx));
        self.waiting = false;
        self.appended = Some(appended);
        Poll::Ready(alive)
    }

    /// The item that ends a subscription whose read failed.
    fn failed(&self, error: LogError) -> SubscriptionItem {
        match error {
            LogError::Expired { oldest, .. } => SubscriptionItem::Expired {
                oldest_cursor: self.log.cursor_for(oldest.saturating_sub(1)),
            },
            e => SubscriptionItem::Failed(e),
        }
    }
}

/// When a subscription's heartbeat is due: `heartbeat` after the last item.
struct Heartbeat {
    every: Duration,
    /// A heartbeat is due when nothing was handed out until then.
    idle_until: Instant,
    /// why: one timer for the subscription's life, moved on with `reset`: moving a
    /// registered timer later does not touch the timer wheel, where a new `sleep`
    /// per wait registered and removed an entry for every delivery.
    timer: Pin<Box<Sleep>>,
}

impl Heartbeat {
    fn new(every: Duration) -> Self {
        let idle_until = Instant::now() + every;
        Self {
            every,
            idle_until,
            timer: Box::pin(tokio::time::sleep_until(idle_until)),
        }
    }

    /// Something was handed out now.
    fn handed_out(&mut self) {
        self.idle_until = Instant::now() + self.every;
    }

    fn is_due(&self) -> bool {
        Instant::now() >= self.idle_until
    }

    /// Waits until `deadline` (the timer moved there unless it is there).
    fn poll_until(&mut self, deadline: Instant, cx: &mut Context<'_>) -> Poll<()> {
        if self.timer.deadline() != deadline {
            self.timer.as_mut().reset(deadline);
        }
        self.timer.as_mut().poll(cx)
    }
}

/// A subscription handing out every matching event as it reads it. Each poll hands
/// out the next matching event of the last read, else reads on, else waits for an
/// append or the heartbeat.
struct Live {
    reader: Reader,
    /// The rest of the last read, not looked at yet, last first (its buffer is
    /// reused from read to read).
    batch: Vec<Arc<StoredEvent>>,
    /// True when the last read reached the last append the log announced.
    caught_up: bool,
    /// True when the last read did not: the next one follows without a wait.
    behind: bool,
    filter: EventFilter,
    heartbeat: Heartbeat,
    clock: Arc<dyn Clock>,
    delivery: Delivery,
    ended: bool,
}

impl Live {
    fn new(
        tail: Tail,
        filter: EventFilter,
        heartbeat: Duration,
        clock: Arc<dyn Clock>,
        delivery: Delivery,
    ) -> Self {
        Self {
            reader: Reader::new(tail),
            batch: Vec::new(),
            caught_up: false,
            behind: false,
            filter,
            heartbeat: Heartbeat::new(heartbeat),
            clock,
            delivery,
            ended: false,
        }
    }

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<SubscriptionItem>> {
        if self.ended {
            return Poll::Ready(None);
        }
        loop {
            while let Some(event) = self.batch.pop() {
                let seq = event.seq;
                if self.filter.matches(&event.meta) {
                    return Poll::Ready(Some(self.hand_over(event)));
                }
                self.delivery.progress.reached(seq);
            }
            if !self.caught_up {
                // why: a stream that never catches up (a backlog of events it does
                // not match) still gets its heartbeats.
                if self.behind && !self.reader.reading && self.heartbeat.is_due() {
                    return Poll::Ready(Some(self.heartbeat_now()));
                }
                match ready!(self.reader.poll_read(cx, &mut self.batch)) {
                    Ok(()) => {
                        let read = self.batch.len();
                        // why: a short batch that reaches the last announced append
                        // is the end; an empty read to confirm it would cost a log
                        // read per delivery.
                        self.caught_up =
                            read == 0 || (read < READ_BATCH && self.reader.reached_announced());
                        self.behind = !self.caught_up;
                        self.batch.reverse();
                        continue;
                    }
                    Err(e) => {
                        self.ended = true;
                        return Poll::Ready(Some(self.reader.failed(e)));
                    }
                }
            }
            match self.reader.poll_append(cx) {
                Poll::Ready(true) => {
                    self.caught_up = false;
                    continue;
                }
                Poll::Ready(false) => {
                    // The log is gone.
                    self.ended = true;
                    return Poll::Ready(None);
                }
                Poll::Pending => {}
            }
            let idle_until = self.heartbeat.idle_until;
            ready!(self.heartbeat.poll_until(idle_until, cx));
            return Poll::Ready(Some(self.heartbeat_now()));
        }
    }

    /// Hands `event` to the subscriber (it matched), with its delivery span and
    /// metrics.
    fn hand_over(&mut self, event: Arc<StoredEvent>) -> SubscriptionItem {
        let span = self.delivery.span(&event);
        let _entered = span.enter();
        self.delivery.delivered(&event, self.clock.now());
        self.delivery.progress.reached(event.seq);
        self.heartbeat.handed_out();
        SubscriptionItem::Event(event)
    }

    /// A heartbeat with the cursor of the last event looked at.
    fn heartbeat_now(&mut self) -> SubscriptionItem {
        self.heartbeat.handed_out();
        SubscriptionItem::Heartbeat {
            cursor: self.reader.log.cursor_for(self.reader.pos),
            time: self.clock.now(),
        }
    }
}

/// A subscription holding matching events for a reorder window
/// ([`ReorderBuffer`]). Each poll hands out the next due event, else reads on while
/// the buffer has room, else waits for an append (when it has room), the next held
/// event's due time or the heartbeat.
struct Reordered {
    reader: Reader,
    buffer: ReorderBuffer,
    /// The last read (its buffer is reused from read to read).
    read: Vec<Arc<StoredEvent>>,
    /// Due events not handed out yet, each with the position to resume after.
    due: VecDeque<(Arc<StoredEvent>, Sequence)>,
    /// True until a read comes back empty (and again after an append).
    read_on: bool,
    filter: EventFilter,
    heartbeat: Heartbeat,
    clock: Arc<dyn Clock>,
    delivery: Delivery,
    ended: bool,
}

impl Reordered {
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<SubscriptionItem>> {
        if self.ended {
            return Poll::Ready(None);
        }
        loop {
            if let Some((event, position)) = self.due.pop_front() {
                return Poll::Ready(Some(self.hand_over(event, position)));
            }
            // Read while there is room; a full buffer waits for its next due time.
            if self.read_on && self.buffer.len() < MAX_HELD {
                match ready!(self.reader.poll_read(cx, &mut self.read)) {
                    Ok(()) => {
                        self.read_on = !self.read.is_empty();
                        for event in self.read.drain(..) {
                            if self.filter.matches(&event.meta) {
                                self.buffer.push(event);
                            }
                        }
                    }
                    Err(e) => {
                        self.ended = true;
                        return Poll::Ready(Some(self.reader.failed(e)));
                    }
                }
            }
            if self.take_due() {
                continue;
            }
            // why: held events are not delivered yet; the lag counts them.
            let resume = self.resume_position();
            self.delivery.progress.reached(resume);
            if self.heartbeat.is_due() {
                self.heartbeat.handed_out();
                return Poll::Ready(Some(SubscriptionItem::Heartbeat {
                    cursor: self.reader.log.cursor_for(resume),
                    time: self.clock.now(),
                }));
            }
            let room = self.buffer.len() < MAX_HELD;
            if self.read_on && room {
                continue;
            }
            if room {
                match self.reader.poll_append(cx) {
                    Poll::Ready(true) => {
                        self.read_on = true;
                        continue;
                    }
                    Poll::Ready(false) => {
                        // The log is gone.
                        self.ended = true;
                        return Poll::Ready(None);
                    }
                    Poll::Pending => {}
                }
            }
            let idle_until = self.heartbeat.idle_until;
            let next = self.buffer.next_due().map_or(idle_until, |due| {
                let wait = (due - self.clock.now()).to_std().unwrap_or(Duration::ZERO);
                idle_until.min(Instant::now() + wait)
            });
            ready!(self.heartbeat.poll_until(next, cx));
        }
    }

    /// Moves the events due now to `due` with their resume positions; false when
    /// none is due.
    fn take_due(&mut self) -> bool {
        let due = self.buffer.pop_due(self.clock.now());
        if due.is_empty() {
            return false;
        }
        // why: an item's resume point must stay before every event not handed out
        // yet, including the rest of these, or a resume after it would skip them.
        let held = self.buffer.oldest_held();
        let mut later: Option<Sequence> = None;
        let mut positions = vec![0; due.len()];
        for (i, event) in due.iter().enumerate().rev() {
            positions[i] = match (held, later) {
                (Some(a), Some(b)) => a.min(b).saturating_sub(1),
                (Some(a), None) | (None, Some(a)) => a.saturating_sub(1),
                (None, None) => self.reader.pos,
            };
            later = Some(later.map_or(event.seq, |s| s.min(event.seq)));
        }
        self.due.extend(due.into_iter().zip(positions));
        true
    }

    /// The position a reordered stream resumes after: before the oldest held
    /// event, else everything read.
    fn resume_position(&self) -> Sequence {
        self.buffer
            .oldest_held()
            .map_or(self.reader.pos, |seq| seq.saturating_sub(1))
    }

    /// Hands `event` to the subscriber with the position to resume after.
    fn hand_over(&mut self, event: Arc<StoredEvent>, position: Sequence) -> SubscriptionItem {
        let span = self.delivery.span(&event);
        let _entered = span.enter();
        self.delivery.delivered(&event, self.clock.now());
        self.delivery.progress.reached(position);
        self.heartbeat.handed_out();
        SubscriptionItem::Reordered {
            resume_cursor: self.reader.log.cursor_for(position),
            event,
        }
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
    use tokio::time::timeout;

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
        subscribe(
            log.clone(),
            EventFilter::default(),
            &Start::Now,
            Duration::from_secs(60),
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
        let mut rx = subscribe(
            log.clone(),
            filter,
            &Start::Now,
            Duration::from_secs(60),
            Arc::new(SystemClock),
        )
        .await
        .unwrap();
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
        let mut rx = subscribe(
            log.clone(),
            filter,
            &Start::Now,
            Duration::from_millis(50),
            Arc::new(SystemClock),
        )
        .await
        .unwrap();
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
        let mut rx = subscribe_reordered(
            log.clone(),
            EventFilter::default(),
            &Start::Now,
            Duration::from_secs(60),
            Duration::from_millis(200),
            Arc::new(SystemClock),
        )
        .await
        .unwrap();
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
        let mut rx = subscribe_reordered(
            log.clone(),
            EventFilter::default(),
            &Start::Now,
            Duration::from_secs(60),
            Duration::from_millis(1),
            Arc::new(SystemClock),
        )
        .await
        .unwrap();
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
