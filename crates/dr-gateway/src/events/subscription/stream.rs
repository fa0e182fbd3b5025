//! A subscription as a stream ([`Subscription`]): read from the log when its
//! subscriber polls it, with its heartbeat, and for a reorder window its held
//! events.

use std::{
    collections::VecDeque,
    future::Future as _,
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
    time::Duration,
};

use tokio::{
    sync::watch,
    time::{Instant, Sleep},
};
use tokio_util::sync::ReusableBoxFuture;

use super::{Delivery, SubscriptionItem, Tail, READ_BATCH};
use crate::clock::Clock;
use crate::events::{
    filter::EventFilter,
    log::{EventLog, LogError, Sequence, StoredEvent},
    reorder::{ReorderBuffer, MAX_HELD},
};

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
/// dr-gateway --bench fan_out -- --callgrind`, benches/README.md "Optimisation 10").
pub struct Subscription {
    source: Source,
}

enum Source {
    /// Every matching event as read ([`subscribe`](super::subscribe)).
    Live(Box<Live>),
    /// Matching events held for a reorder window
    /// ([`subscribe_reordered`](super::subscribe_reordered)).
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

impl Subscription {
    /// Every matching event as read ([`subscribe`](super::subscribe)).
    pub(super) fn live(
        tail: Tail,
        filter: EventFilter,
        heartbeat: Duration,
        clock: Arc<dyn Clock>,
        delivery: Delivery,
    ) -> Self {
        Self {
            source: Source::Live(Box::new(Live::new(
                tail, filter, heartbeat, clock, delivery,
            ))),
        }
    }

    /// Matching events held in `buffer` ([`subscribe_reordered`](super::subscribe_reordered)).
    pub(super) fn reordered(
        tail: Tail,
        filter: EventFilter,
        heartbeat: Duration,
        buffer: ReorderBuffer,
        clock: Arc<dyn Clock>,
        delivery: Delivery,
    ) -> Self {
        Self {
            source: Source::Reordered(Box::new(Reordered {
                reader: Reader::new(tail),
                buffer,
                read: Vec::new(),
                due: VecDeque::new(),
                read_on: true,
                filter,
                heartbeat: Heartbeat::new(heartbeat),
                clock,
                delivery,
                ended: false,
            })),
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
