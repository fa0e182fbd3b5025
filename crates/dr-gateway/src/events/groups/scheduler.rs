//! The scheduler of one group on one replica: a task that reads the event log from
//! the group's position, keeps the events not yet done per ordering key in
//! creation order, and leases each key's first event to one of the members
//! connected to this replica, through compare-and-set on the key's record in the
//! [`GroupStore`]. Other replicas run their own schedulers for their own members
//! of the same group; the records are where they agree (see [`super::record`]).
//!
//! # One loop
//! 1. read the log after the last read position, at most `max_pending` events
//!    ahead of the group's position (the memory bound);
//! 2. lease ready keys to members with room, round robin;
//! 3. wait for: a member's request (acknowledge, hand back, extend), a member
//!    joining or leaving, an append to the log, another replica's change to a
//!    record, or a timer (an event's reorder hold ending, a lease's deadline).
//!
//! A key is ready when it has an event not done, no live lease, and the earliest
//! reorder hold among its waiting events has ended (then its first event, in
//! creation order, goes first: see [`crate::events::reorder`]).
//!
//! # Position
//! Every event at or below the position is done. The scheduler moves it to just
//! before the oldest event it has read and not seen done, writes it to the store
//! (at most every `position_flush`), and takes any higher position another
//! replica wrote. A restarted scheduler reads from there; what it reads that is
//! already done it learns from the key records.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque},
    sync::Arc,
    time::Duration,
};

use chrono::{DateTime, Utc};
use futures::{future::BoxFuture, stream::FuturesUnordered, FutureExt as _, StreamExt as _};
use tokio::{
    sync::{mpsc, oneshot},
    time::Instant,
};
use tokio_util::sync::CancellationToken;

use super::{
    delivery_id::DeliveryId,
    member::{Delivered, EndReason, MemberOptions, Receipt, RejectReason},
    record::{KeyRecord, LeaseRequest, Refused},
    settings::{GroupDef, Position},
    store::{GroupStore, MemberInfo, StoreChange, Versioned, WriteError, Written},
    GroupError, GroupsConfig,
};
use crate::{
    clock::Clock,
    events::{
        log::{EventLog, LogError, Sequence, StoredEvent},
        ordering::ordering_key,
        subscription::Tail,
        EventFilter,
    },
};

/// A member's handle inside one scheduler.
pub(crate) type MemberKey = u64;

/// Capacity of a scheduler's command queue.
pub(crate) const COMMAND_QUEUE: usize = 256;
/// Acknowledgements a member remembers, so a repeated one is answered "acknowledged".
const RECENT_ACKS: usize = 1024;
/// Compare-and-set rounds per request id before answering "unavailable".
const CAS_ROUNDS: usize = 4;
/// First pause after the store or the log failed (doubles to [`MAX_BACKOFF`]).
const MIN_BACKOFF: Duration = Duration::from_millis(50);
/// Longest pause after the store or the log failed.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// How long the store may fail before members are told to reconnect.
const STORE_OUTAGE_LIMIT: Duration = Duration::from_secs(30);

/// What a scheduler is asked to do.
#[derive(Debug)]
pub(crate) enum Command {
    /// A member joins.
    Join {
        options: MemberOptions,
        reply: oneshot::Sender<Result<Joined, GroupError>>,
    },
    /// A member's request.
    Settle {
        member: MemberKey,
        acks: Vec<String>,
        nacks: Vec<String>,
        extends: Vec<String>,
        reply: oneshot::Sender<Receipt>,
    },
    /// The members connected here, with their counters, and the position.
    Inspect {
        reply: oneshot::Sender<(Vec<MemberInfo>, Position)>,
    },
    /// The group was deleted: end every member, stop.
    Delete,
}

/// A member that joined.
#[derive(Debug)]
pub(crate) struct Joined {
    pub(crate) key: MemberKey,
    pub(crate) member_id: String,
    pub(crate) deliveries: mpsc::Receiver<Delivered>,
    pub(crate) end: oneshot::Receiver<EndReason>,
    pub(crate) left: CancellationToken,
}

/// What the scheduler shares with the registry.
#[derive(Debug, Clone)]
pub(crate) struct Shared {
    pub(crate) log: Arc<dyn EventLog>,
    pub(crate) store: Arc<dyn GroupStore>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) config: Arc<GroupsConfig>,
}

/// A matching event read from the log, above the position.
#[derive(Debug)]
struct Tracked {
    key: Arc<str>,
    created: DateTime<Utc>,
    due: DateTime<Utc>,
    /// The event while it is not done (dropped once done, to free memory).
    event: Option<Arc<StoredEvent>>,
}

impl Tracked {
    fn is_done(&self) -> bool {
        self.event.is_none()
    }
}

/// What this scheduler knows of a key record.
#[derive(Debug, Clone)]
enum Cached {
    /// Not read (or possibly stale): read before deciding.
    Unknown,
    /// Known absent.
    Absent,
    /// Known at this revision.
    Present(Versioned<KeyRecord>),
}

impl Cached {
    fn record(&self) -> Option<&KeyRecord> {
        match self {
            Self::Present(v) => Some(&v.value),
            _ => None,
        }
    }

    fn revision(&self) -> Option<u64> {
        match self {
            Self::Present(v) => Some(v.revision),
            _ => None,
        }
    }
}

/// One ordering key with events not done.
#[derive(Debug)]
struct KeyState {
    /// Waiting events in creation order.
    queue: BTreeSet<(DateTime<Utc>, Sequence)>,
    /// (reorder hold end, seq) of the waiting events.
    holds: BTreeSet<(DateTime<Utc>, Sequence)>,
    record: Cached,
    /// The delivery a local member holds.
    local_lease: Option<DeliveryId>,
    /// Head sequence while the key is in the ready set.
    ready: Option<Sequence>,
    /// When the key must be looked at again.
    timer: Option<Instant>,
}

impl KeyState {
    fn new() -> Self {
        Self {
            queue: BTreeSet::new(),
            holds: BTreeSet::new(),
            record: Cached::Unknown,
            local_lease: None,
            ready: None,
            timer: None,
        }
    }
}

/// A lease a local member holds.
#[derive(Debug)]
struct LocalLease {
    member: MemberKey,
    key: Arc<str>,
    deadline_ms: i64,
}

/// A member connected to this replica.
#[derive(Debug)]
struct LocalMember {
    id: String,
    name: String,
    connected: DateTime<Utc>,
    max_unacked: u32,
    tx: mpsc::Sender<Delivered>,
    end: Option<oneshot::Sender<EndReason>>,
    held: HashSet<DeliveryId>,
    acked: u64,
    recent_acks: VecDeque<DeliveryId>,
}

impl LocalMember {
    fn has_room(&self) -> bool {
        self.held.len() < self.max_unacked as usize
    }

    fn info(&self, replica: &str) -> MemberInfo {
        MemberInfo {
            member_id: self.id.clone(),
            name: self.name.clone(),
            replica: replica.to_owned(),
            connected: self.connected,
            max_unacked: self.max_unacked,
            unacked: u32::try_from(self.held.len()).unwrap_or(u32::MAX),
            acked: self.acked,
        }
    }

    fn remember_ack(&mut self, id: DeliveryId) {
        if self.recent_acks.len() >= RECENT_ACKS {
            self.recent_acks.pop_front();
        }
        self.recent_acks.push_back(id);
    }
}

/// Why [`Scheduler::lease`] stopped.
enum LeaseStop {
    /// The store failed; pause dispatching.
    StoreDown,
}

/// See the module docs.
pub(crate) struct Scheduler {
    def: GroupDef,
    filter: EventFilter,
    shared: Shared,
    commands: mpsc::Receiver<Command>,
    tail: Tail,
    position: Position,
    position_dirty: bool,
    position_flushed_at: Instant,
    tracked: BTreeMap<Sequence, Tracked>,
    keys: HashMap<Arc<str>, KeyState>,
    ready: BTreeSet<(Sequence, Arc<str>)>,
    timers: BTreeSet<(Instant, Arc<str>)>,
    members: BTreeMap<MemberKey, LocalMember>,
    leases: HashMap<DeliveryId, LocalLease>,
    left: FuturesUnordered<BoxFuture<'static, MemberKey>>,
    next_member: MemberKey,
    round_robin: MemberKey,
    /// Dispatching pauses until then after a store failure.
    store_retry_at: Option<Instant>,
    store_backoff: Duration,
    store_down_since: Option<Instant>,
    /// Reading the log pauses until then after a log failure.
    log_retry_at: Option<Instant>,
    /// False when the last read stopped at the memory bound with more to read.
    caught_up: bool,
    log_backoff: Duration,
    members_published_at: Instant,
    idle_since: Option<Instant>,
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler")
            .field("group", &self.def.id)
            .field("position", &self.position)
            .field("tracked", &self.tracked.len())
            .field("members", &self.members.len())
            .finish_non_exhaustive()
    }
}

impl Scheduler {
    /// Spawns the scheduler of `def`; it runs until the command sender is dropped,
    /// the group is deleted, or it had no member for the linger time.
    pub(crate) fn spawn(
        def: GroupDef,
        filter: EventFilter,
        shared: Shared,
    ) -> mpsc::Sender<Command> {
        let (tx, commands) = mpsc::channel(COMMAND_QUEUE);
        let tail = Tail::new(shared.log.clone(), def.start_after);
        let now = Instant::now();
        let scheduler = Self {
            position: Position {
                floor: def.start_after,
                skipped: 0,
            },
            def,
            filter,
            shared,
            commands,
            tail,
            position_dirty: false,
            position_flushed_at: now,
            tracked: BTreeMap::new(),
            keys: HashMap::new(),
            ready: BTreeSet::new(),
            timers: BTreeSet::new(),
            members: BTreeMap::new(),
            leases: HashMap::new(),
            left: FuturesUnordered::new(),
            next_member: 0,
            round_robin: 0,
            store_retry_at: None,
            store_backoff: MIN_BACKOFF,
            store_down_since: None,
            log_retry_at: None,
            caught_up: true,
            log_backoff: MIN_BACKOFF,
            members_published_at: now,
            idle_since: Some(now),
        };
        tokio::spawn(scheduler.run());
        tx
    }

    fn now_ms(&self) -> i64 {
        self.shared.clock.now().timestamp_millis()
    }

    /// The instant a wall-clock time (ms) corresponds to.
    fn instant_at_ms(&self, at_ms: i64) -> Instant {
        let wait = at_ms.saturating_sub(self.now_ms());
        Instant::now() + Duration::from_millis(u64::try_from(wait).unwrap_or(0))
    }

    fn instant_at(&self, at: DateTime<Utc>) -> Instant {
        self.instant_at_ms(at.timestamp_millis())
    }

    #[tracing::instrument(name = "consumer_group", skip_all, fields(group = %self.def.id))]
    async fn run(mut self) {
        self.load_position().await;
        let mut changes = self.subscribe_changes().await;
        loop {
            self.advance_floor();
            self.read_log().await;
            self.dispatch().await;
            self.advance_floor();
            self.flush_position(false).await;
            self.publish_members(false).await;
            if self.store_outage_too_long() {
                tracing::error!(
                    "consumer group state unavailable for too long; ending member streams"
                );
                self.end_all(EndReason::StoreUnavailable).await;
            }
            let wake = self.next_wake();
            let can_read = self.can_read();
            tokio::select! {
                command = self.commands.recv() => match command {
                    Some(Command::Delete) => {
                        self.end_all(EndReason::GroupDeleted).await;
                        return;
                    }
                    Some(command) => self.handle(command).await,
                    None => break,
                },
                Some(member) = self.left.next(), if !self.left.is_empty() => self.leave(member).await,
                change = changes.next() => match change {
                    Some(StoreChange::GroupDeleted) => {
                        self.end_all(EndReason::GroupDeleted).await;
                        return;
                    }
                    Some(change) => self.apply_change(change),
                    None => {
                        // why: the store stopped following (e.g. NATS restarted);
                        // whatever changed meanwhile is re-read lazily.
                        self.resync();
                        changes = self.subscribe_changes().await;
                    }
                },
                alive = self.tail.wait_for_append(), if can_read && self.caught_up => if !alive { break },
                () = tokio::time::sleep_until(wake) => self.fire_timers(),
            }
            if self.members.is_empty() {
                let since = *self.idle_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= self.shared.config.linger && self.leases.is_empty() {
                    break;
                }
            } else {
                self.idle_since = None;
            }
        }
        self.shutdown().await;
    }

    /// Stops taking commands, refuses queued joins (the registry starts a fresh
    /// scheduler for them), and saves the position.
    async fn shutdown(&mut self) {
        self.commands.close();
        while let Ok(command) = self.commands.try_recv() {
            match command {
                Command::Join { reply, .. } => {
                    let _ = reply.send(Err(GroupError::Retry));
                }
                Command::Settle {
                    acks,
                    nacks,
                    extends,
                    reply,
                    ..
                } => {
                    let ids = acks.into_iter().chain(nacks).chain(extends);
                    let _ = reply.send(Receipt::reject_all(ids, RejectReason::NotHeld));
                }
                Command::Inspect { reply } => {
                    let _ = reply.send((Vec::new(), self.position));
                }
                Command::Delete => {}
            }
        }
        self.end_all(EndReason::Left).await;
        self.advance_floor();
        self.flush_position(true).await;
    }

    async fn load_position(&mut self) {
        let mut backoff = MIN_BACKOFF;
        let deadline = Instant::now() + STORE_OUTAGE_LIMIT;
        loop {
            match self.shared.store.position(&self.def).await {
                Ok(position) => {
                    self.position = position;
                    self.tail = Tail::new(self.shared.log.clone(), position.floor);
                    return;
                }
                Err(e) if Instant::now() < deadline => {
                    tracing::warn!(error = %e, "reading the group's position failed; retrying");
                    // why: retry pacing while the store is away, not synchronisation.
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
                Err(e) => {
                    // Start from the definition's start: safe (records say what is done).
                    tracing::error!(error = %e, "group position unreadable; starting from the group's start");
                    return;
                }
            }
        }
    }

    async fn subscribe_changes(&mut self) -> futures::stream::BoxStream<'static, StoreChange> {
        match self.shared.store.changes(&self.def).await {
            Ok(stream) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "cannot follow the group's changes; retrying shortly");
                // why: a stream that ends after a pause makes the loop subscribe again.
                Box::pin(
                    futures::stream::once(tokio::time::sleep(MAX_BACKOFF))
                        .filter_map(|()| async { None }),
                )
            }
        }
    }

    fn store_outage_too_long(&self) -> bool {
        self.store_down_since
            .is_some_and(|since| since.elapsed() >= STORE_OUTAGE_LIMIT)
            && !self.members.is_empty()
    }

    fn store_failed(&mut self) {
        let now = Instant::now();
        self.store_down_since.get_or_insert(now);
        self.store_retry_at = Some(now + self.store_backoff);
        self.store_backoff = (self.store_backoff * 2).min(MAX_BACKOFF);
    }

    fn store_ok(&mut self) {
        self.store_down_since = None;
        self.store_retry_at = None;
        self.store_backoff = MIN_BACKOFF;
    }

    fn can_read(&self) -> bool {
        self.tracked.len() < self.shared.config.max_pending
            && self.log_retry_at.is_none_or(|at| Instant::now() >= at)
    }

    fn next_wake(&self) -> Instant {
        let mut wake = Instant::now() + Duration::from_secs(3600);
        if !self.caught_up && self.can_read() {
            return Instant::now();
        }
        if let Some((at, _)) = self.timers.first() {
            wake = wake.min(*at);
        }
        for at in [self.store_retry_at, self.log_retry_at]
            .into_iter()
            .flatten()
        {
            wake = wake.min(at);
        }
        if self.position_dirty {
            wake = wake.min(self.position_flushed_at + self.shared.config.position_flush);
        }
        if !self.members.is_empty() {
            wake = wake.min(self.members_published_at + self.shared.config.member_refresh);
        }
        if let Some(since) = self.idle_since {
            wake = wake.min(since + self.shared.config.linger);
        }
        wake
    }

    // === reading the log ===

    async fn read_log(&mut self) {
        if !self.can_read() {
            return;
        }
        self.caught_up = false;
        while self.tracked.len() < self.shared.config.max_pending {
            let batch = match self.tail.next_batch().await {
                Ok(batch) => batch,
                Err(LogError::Expired { oldest, .. }) => {
                    let resume = oldest.saturating_sub(1);
                    let lost = resume.saturating_sub(self.tail.position());
                    tracing::error!(
                        lost,
                        from = self.tail.position(),
                        "the event log dropped events this group had not read; skipping them"
                    );
                    self.position.skipped = self.position.skipped.saturating_add(lost);
                    self.position_dirty = true;
                    self.tail = Tail::new(self.shared.log.clone(), resume);
                    continue;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "reading the event log failed; retrying");
                    self.caught_up = true;
                    self.log_retry_at = Some(Instant::now() + self.log_backoff);
                    self.log_backoff = (self.log_backoff * 2).min(MAX_BACKOFF);
                    return;
                }
            };
            self.log_retry_at = None;
            self.log_backoff = MIN_BACKOFF;
            if batch.is_empty() {
                self.caught_up = true;
                break;
            }
            let mut touched = HashSet::new();
            for event in batch {
                if let Some(key) = self.take_in(event) {
                    touched.insert(key);
                }
            }
            for key in touched {
                self.evaluate(&key);
            }
        }
    }

    /// Tracks a newly read event; returns its key when it waits for delivery.
    fn take_in(&mut self, event: Arc<StoredEvent>) -> Option<Arc<str>> {
        if event.seq <= self.position.floor || !self.filter.matches(&event.envelope) {
            return None;
        }
        let key: Arc<str> = Arc::from(ordering_key(&event.envelope));
        let window = chrono::Duration::from_std(self.def.settings.reorder_window())
            .unwrap_or(chrono::Duration::MAX);
        let due = event
            .received_at
            .checked_add_signed(window)
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        let created = event.envelope.created_time;
        let seq = event.seq;
        let state = self.keys.entry(key.clone()).or_insert_with(KeyState::new);
        state.queue.insert((created, seq));
        state.holds.insert((due, seq));
        self.tracked.insert(
            seq,
            Tracked {
                key: key.clone(),
                created,
                due,
                event: Some(event),
            },
        );
        Some(key)
    }

    // === readiness ===

    fn set_timer(&mut self, key: &Arc<str>, at: Instant) {
        if let Some(state) = self.keys.get_mut(key) {
            if let Some(old) = state.timer.take() {
                self.timers.remove(&(old, key.clone()));
            }
            state.timer = Some(at);
            self.timers.insert((at, key.clone()));
        }
    }

    fn fire_timers(&mut self) {
        let now = Instant::now();
        while let Some((at, key)) = self.timers.first().cloned() {
            if at > now {
                break;
            }
            self.timers.remove(&(at, key.clone()));
            if let Some(state) = self.keys.get_mut(&key) {
                if state.timer == Some(at) {
                    state.timer = None;
                }
            }
            self.evaluate(&key);
        }
        if self.store_retry_at.is_some_and(|at| at <= now) {
            self.store_retry_at = None;
        }
    }

    /// Marks the event done: no longer waiting, its memory freed.
    fn mark_done(&mut self, seq: Sequence) {
        let Some(t) = self.tracked.get_mut(&seq) else {
            return;
        };
        if t.event.take().is_none() {
            return;
        }
        let (key, created, due) = (t.key.clone(), t.created, t.due);
        if let Some(state) = self.keys.get_mut(&key) {
            state.queue.remove(&(created, seq));
            state.holds.remove(&(due, seq));
        }
    }

    /// Decides whether `key` is ready, waits (and until when), or is finished.
    fn evaluate(&mut self, key: &Arc<str>) {
        let now_ms = self.now_ms();
        let Some(state) = self.keys.get_mut(key) else {
            return;
        };
        if let Some(head) = state.ready.take() {
            self.ready.remove(&(head, key.clone()));
        }
        // Events the record says are done leave the queue.
        let done: Vec<Sequence> = match state.record.record() {
            Some(record) => state
                .queue
                .iter()
                .map(|(_, seq)| *seq)
                .filter(|seq| record.is_done(*seq))
                .collect(),
            None => Vec::new(),
        };
        for seq in done {
            self.mark_done(seq);
        }
        let Some(state) = self.keys.get_mut(key) else {
            return;
        };
        // A local lease whose deadline passed is lost to its member.
        if let Some(id) = state.local_lease {
            match self.leases.get(&id) {
                Some(lease) if lease.deadline_ms > now_ms => {
                    let at = lease.deadline_ms;
                    let at = self.instant_at_ms(at);
                    self.set_timer(key, at);
                    return;
                }
                _ => self.drop_local_lease(id),
            }
        }
        let Some(state) = self.keys.get_mut(key) else {
            return;
        };
        let Some(&(_, head)) = state.queue.first() else {
            if let Some(old) = state.timer.take() {
                self.timers.remove(&(old, key.clone()));
            }
            self.keys.remove(key);
            return;
        };
        if let Some(lease) = state.record.record().and_then(|r| r.live_lease(now_ms)) {
            let at = lease.deadline_ms;
            let at = self.instant_at_ms(at);
            self.set_timer(key, at);
            return;
        }
        let hold_ends = state.holds.first().map(|(due, _)| *due);
        if let Some(due) = hold_ends {
            if due.timestamp_millis() > now_ms {
                let at = self.instant_at(due);
                self.set_timer(key, at);
                return;
            }
        }
        state.ready = Some(head);
        self.ready.insert((head, key.clone()));
    }

    // === dispatch ===

    fn pick_member(&mut self) -> Option<MemberKey> {
        let after = self
            .members
            .range(self.round_robin.saturating_add(1)..)
            .chain(self.members.range(..=self.round_robin))
            .find(|(_, m)| m.has_room())
            .map(|(k, _)| *k)?;
        self.round_robin = after;
        Some(after)
    }

    async fn dispatch(&mut self) {
        if self.store_retry_at.is_some_and(|at| Instant::now() < at) {
            return;
        }
        while !self.ready.is_empty() && self.members.values().any(LocalMember::has_room) {
            let Some(member) = self.pick_member() else {
                break;
            };
            let Some((_, key)) = self.ready.pop_first() else {
                break;
            };
            if let Some(state) = self.keys.get_mut(&key) {
                state.ready = None;
            }
            match self.lease(&key, member).await {
                Ok(()) => {}
                Err(LeaseStop::StoreDown) => {
                    self.store_failed();
                    self.evaluate(&key);
                    break;
                }
            }
        }
    }

    /// Reads the key's record from the store into the cache.
    async fn refresh(&mut self, key: &Arc<str>) -> Result<(), LeaseStop> {
        let read = self.shared.store.key(&self.def, key).await;
        let record = match read {
            Ok(Some(v)) => Cached::Present(v),
            Ok(None) => Cached::Absent,
            Err(e) => {
                tracing::debug!(error = %e, "reading a key record failed");
                return Err(LeaseStop::StoreDown);
            }
        };
        if let Some(state) = self.keys.get_mut(key) {
            state.record = record;
        }
        Ok(())
    }

    /// Leases `key`'s first event to `member`.
    async fn lease(&mut self, key: &Arc<str>, member: MemberKey) -> Result<(), LeaseStop> {
        if matches!(self.keys.get(key).map(|s| &s.record), Some(Cached::Unknown)) {
            self.refresh(key).await?;
        }
        let Some(state) = self.keys.get(key) else {
            return Ok(());
        };
        let Some(&(created, seq)) = state.queue.first() else {
            self.evaluate(key);
            return Ok(());
        };
        let Some(holder) = self.members.get(&member) else {
            self.evaluate(key);
            return Ok(());
        };
        let expected = state.record.revision();
        let mut record = state.record.record().cloned().unwrap_or_default();
        let now_ms = self.now_ms();
        let ack_ms = i64::try_from(self.def.settings.ack_deadline_ms).unwrap_or(i64::MAX);
        let deadline_ms = now_ms.saturating_add(ack_ms);
        let request = LeaseRequest {
            seq,
            created_us: created.timestamp_micros(),
            member: &holder.id,
            replica: &self.shared.config.replica,
            now_ms,
            deadline_ms,
        };
        let granted = match record.grant(&request, self.position.floor) {
            Ok(granted) => granted,
            Err(Refused::Done | Refused::Leased | Refused::NotHeld) => {
                // The cached record already says why; look again.
                self.evaluate(key);
                return Ok(());
            }
        };
        match self
            .shared
            .store
            .write_key(&self.def, key, expected, &record)
            .await
        {
            Ok(written) => {
                self.store_ok();
                if let Some(state) = self.keys.get_mut(key) {
                    state.record = match written {
                        Written::Revision(revision) => Cached::Present(Versioned {
                            revision,
                            value: record,
                        }),
                        Written::Forgotten => Cached::Absent,
                    };
                }
            }
            Err(WriteError::Conflict) => {
                // Someone else wrote it first: read what they wrote, decide again.
                self.refresh(key).await?;
                self.evaluate(key);
                return Ok(());
            }
            Err(WriteError::Store(e)) => {
                tracing::debug!(error = %e, "leasing failed");
                return Err(LeaseStop::StoreDown);
            }
        }
        let id = DeliveryId {
            incarnation: self.def.incarnation,
            seq,
            lease: granted.number,
        };
        let Some(event) = self.tracked.get(&seq).and_then(|t| t.event.clone()) else {
            return Ok(());
        };
        let delivered = Delivered {
            delivery_id: id.encode(),
            attempt: granted.attempt,
            event,
            ordering_key: key.clone(),
            deadline: DateTime::<Utc>::from_timestamp_millis(deadline_ms)
                .unwrap_or(DateTime::<Utc>::MAX_UTC),
            late: granted.late,
        };
        self.leases.insert(
            id,
            LocalLease {
                member,
                key: key.clone(),
                deadline_ms,
            },
        );
        if let Some(state) = self.keys.get_mut(key) {
            state.local_lease = Some(id);
        }
        let sent = match self.members.get_mut(&member) {
            Some(m) => {
                m.held.insert(id);
                // why: the channel holds max_unacked and the member holds fewer
                // than that, so this only fails when the member is gone.
                m.tx.try_send(delivered).is_ok()
            }
            None => false,
        };
        if !sent {
            self.release_lease(id).await;
        }
        self.evaluate(key);
        Ok(())
    }

    /// Forgets a local lease (the record is left as it is).
    fn drop_local_lease(&mut self, id: DeliveryId) {
        let Some(lease) = self.leases.remove(&id) else {
            return;
        };
        if let Some(m) = self.members.get_mut(&lease.member) {
            m.held.remove(&id);
        }
        if let Some(state) = self.keys.get_mut(&lease.key) {
            if state.local_lease == Some(id) {
                state.local_lease = None;
            }
        }
    }

    /// Hands a local lease back in the store (best effort: if that fails, its
    /// deadline frees it) and forgets it.
    async fn release_lease(&mut self, id: DeliveryId) -> bool {
        let Some(key) = self.leases.get(&id).map(|l| l.key.clone()) else {
            return false;
        };
        let released = self
            .change_record(&key, |record| record.release(id.seq, id.lease))
            .await;
        self.drop_local_lease(id);
        self.evaluate(&key);
        matches!(released, Ok(Ok(())))
    }

    /// Applies `change` to `key`'s record with compare-and-set, re-reading on
    /// conflict. `Err` when the store failed; `Ok(Err(_))` when the change was
    /// refused by the record.
    async fn change_record<T>(
        &mut self,
        key: &Arc<str>,
        mut change: impl FnMut(&mut KeyRecord) -> Result<T, Refused>,
    ) -> Result<Result<T, Refused>, LeaseStop> {
        self.keys.entry(key.clone()).or_insert_with(KeyState::new);
        for _ in 0..CAS_ROUNDS {
            if matches!(self.keys.get(key).map(|s| &s.record), Some(Cached::Unknown)) {
                self.refresh(key).await?;
            }
            let Some(state) = self.keys.get(key) else {
                return Ok(Err(Refused::NotHeld));
            };
            let expected = state.record.revision();
            let mut record = state.record.record().cloned().unwrap_or_default();
            let outcome = match change(&mut record) {
                Ok(outcome) => outcome,
                Err(refused) => return Ok(Err(refused)),
            };
            if expected.is_some() && state.record.record() == Some(&record) {
                // Nothing changed (e.g. a repeated acknowledgement): no write.
                return Ok(Ok(outcome));
            }
            match self
                .shared
                .store
                .write_key(&self.def, key, expected, &record)
                .await
            {
                Ok(written) => {
                    self.store_ok();
                    if let Some(state) = self.keys.get_mut(key) {
                        state.record = match written {
                            Written::Revision(revision) => Cached::Present(Versioned {
                                revision,
                                value: record,
                            }),
                            Written::Forgotten => Cached::Absent,
                        };
                    }
                    return Ok(Ok(outcome));
                }
                Err(WriteError::Conflict) => {
                    if let Some(state) = self.keys.get_mut(key) {
                        state.record = Cached::Unknown;
                    }
                }
                Err(WriteError::Store(e)) => {
                    tracing::debug!(error = %e, "writing a key record failed");
                    self.store_failed();
                    return Err(LeaseStop::StoreDown);
                }
            }
        }
        Err(LeaseStop::StoreDown)
    }

    // === members ===

    async fn handle(&mut self, command: Command) {
        match command {
            Command::Join { options, reply } => {
                let _ = reply.send(self.join(options));
                self.publish_members(true).await;
            }
            Command::Settle {
                member,
                acks,
                nacks,
                extends,
                reply,
            } => {
                let receipt = self.settle(member, acks, nacks, extends).await;
                let _ = reply.send(receipt);
            }
            Command::Inspect { reply } => {
                let replica = &self.shared.config.replica;
                let members = self.members.values().map(|m| m.info(replica)).collect();
                let _ = reply.send((members, self.position));
            }
            Command::Delete => {}
        }
    }

    fn join(&mut self, options: MemberOptions) -> Result<Joined, GroupError> {
        if self.members.len() >= self.shared.config.max_members {
            return Err(GroupError::MembersLimit(self.shared.config.max_members));
        }
        self.next_member += 1;
        let key = self.next_member;
        let member_id = uuid::Uuid::new_v4().simple().to_string();
        let capacity = options.max_unacked.max(1) as usize;
        let (tx, deliveries) = mpsc::channel(capacity);
        let (end_tx, end) = oneshot::channel();
        let left = CancellationToken::new();
        self.left
            .push(left.clone().cancelled_owned().map(move |()| key).boxed());
        self.members.insert(
            key,
            LocalMember {
                id: member_id.clone(),
                name: options.name,
                connected: self.shared.clock.now(),
                max_unacked: options.max_unacked.max(1),
                tx,
                end: Some(end_tx),
                held: HashSet::new(),
                acked: 0,
                recent_acks: VecDeque::new(),
            },
        );
        self.idle_since = None;
        tracing::debug!(member = %member_id, "member joined");
        Ok(Joined {
            key,
            member_id,
            deliveries,
            end,
            left,
        })
    }

    /// A member's stream ended: its deliveries go back to the group.
    async fn leave(&mut self, member: MemberKey) {
        let Some(m) = self.members.get(&member) else {
            return;
        };
        let member_id = m.id.clone();
        let held: Vec<DeliveryId> = m.held.iter().copied().collect();
        for id in held {
            self.release_lease(id).await;
        }
        if let Some(mut m) = self.members.remove(&member) {
            if let Some(end) = m.end.take() {
                let _ = end.send(EndReason::Left);
            }
        }
        if let Err(e) = self.shared.store.remove_member(&self.def, &member_id).await {
            tracing::debug!(error = %e, "removing a member record failed; it expires");
        }
        tracing::debug!(member = %member_id, "member left");
    }

    /// Ends every member's stream with `reason`, handing their deliveries back.
    async fn end_all(&mut self, reason: EndReason) {
        let keys: Vec<MemberKey> = self.members.keys().copied().collect();
        for key in keys {
            if reason != EndReason::GroupDeleted {
                let held: Vec<DeliveryId> = self
                    .members
                    .get(&key)
                    .map(|m| m.held.iter().copied().collect())
                    .unwrap_or_default();
                for id in held {
                    if reason == EndReason::StoreUnavailable {
                        self.drop_local_lease(id);
                    } else {
                        self.release_lease(id).await;
                    }
                }
            }
            if let Some(mut m) = self.members.remove(&key) {
                if let Some(end) = m.end.take() {
                    let _ = end.send(reason);
                }
            }
        }
        self.leases.clear();
    }

    async fn publish_members(&mut self, now: bool) {
        if self.members.is_empty()
            || (!now && self.members_published_at.elapsed() < self.shared.config.member_refresh)
        {
            return;
        }
        self.members_published_at = Instant::now();
        let replica = self.shared.config.replica.clone();
        let infos: Vec<MemberInfo> = self.members.values().map(|m| m.info(&replica)).collect();
        if let Err(e) = self.shared.store.put_members(&self.def, &infos).await {
            tracing::debug!(error = %e, "publishing members failed; retrying at the next refresh");
        }
    }

    // === requests ===

    async fn settle(
        &mut self,
        member: MemberKey,
        acks: Vec<String>,
        nacks: Vec<String>,
        extends: Vec<String>,
    ) -> Receipt {
        let mut receipt = Receipt::default();
        for text in acks {
            match self.acknowledge(member, &text).await {
                Ok(()) => receipt.acknowledged.push(text),
                Err(reason) => receipt.rejected.push((text, reason)),
            }
        }
        for text in nacks {
            match self.hand_back(member, &text).await {
                Ok(()) => receipt.nacked.push(text),
                Err(reason) => receipt.rejected.push((text, reason)),
            }
        }
        for text in extends {
            match self.extend(member, &text).await {
                Ok(()) => receipt.extended.push(text),
                Err(reason) => receipt.rejected.push((text, reason)),
            }
        }
        receipt
    }

    /// The delivery `text` names, if this member holds it here.
    fn held_by(&self, member: MemberKey, text: &str) -> Result<DeliveryId, RejectReason> {
        let id = DeliveryId::decode(text)
            .filter(|id| id.incarnation == self.def.incarnation)
            .ok_or(RejectReason::Unknown)?;
        match self.leases.get(&id) {
            Some(lease) if lease.member == member => Ok(id),
            _ => Err(RejectReason::NotHeld),
        }
    }

    async fn acknowledge(&mut self, member: MemberKey, text: &str) -> Result<(), RejectReason> {
        let id = DeliveryId::decode(text)
            .filter(|id| id.incarnation == self.def.incarnation)
            .ok_or(RejectReason::Unknown)?;
        if let Some(lease) = self.leases.get(&id) {
            if lease.member != member {
                return Err(RejectReason::NotHeld);
            }
        }
        let recently = self
            .members
            .get(&member)
            .is_some_and(|m| m.recent_acks.contains(&id));
        let key = match self.leases.get(&id) {
            Some(lease) => lease.key.clone(),
            None if recently => return Ok(()),
            None => match self.tracked.get(&id.seq) {
                Some(t) => t.key.clone(),
                // Below the position (done) or never read here: not this id's to ack.
                None => return Err(RejectReason::NotHeld),
            },
        };
        let created_us = self
            .tracked
            .get(&id.seq)
            .map_or(0, |t| t.created.timestamp_micros());
        let floor = self.position.floor;
        // why: a lease whose deadline passed but that nobody took over still
        // counts, so the record (not this replica's timer) decides.
        let outcome = self
            .change_record(&key, |record| {
                record.acknowledge(id.seq, id.lease, created_us, floor)
            })
            .await;
        match outcome {
            Ok(Ok(fresh)) => {
                self.drop_local_lease(id);
                if let Some(m) = self.members.get_mut(&member) {
                    if fresh {
                        m.acked += 1;
                    }
                    m.remember_ack(id);
                }
                self.mark_done(id.seq);
                self.evaluate(&key);
                Ok(())
            }
            Ok(Err(_)) => {
                // Taken over by someone else after the deadline.
                self.drop_local_lease(id);
                self.evaluate(&key);
                Err(RejectReason::NotHeld)
            }
            Err(LeaseStop::StoreDown) => Err(RejectReason::Unavailable),
        }
    }

    async fn hand_back(&mut self, member: MemberKey, text: &str) -> Result<(), RejectReason> {
        let id = self.held_by(member, text)?;
        let Some(key) = self.leases.get(&id).map(|l| l.key.clone()) else {
            return Err(RejectReason::NotHeld);
        };
        let outcome = self
            .change_record(&key, |record| record.release(id.seq, id.lease))
            .await;
        match outcome {
            Ok(result) => {
                self.drop_local_lease(id);
                self.evaluate(&key);
                result.map_err(|_| RejectReason::NotHeld)
            }
            Err(LeaseStop::StoreDown) => Err(RejectReason::Unavailable),
        }
    }

    async fn extend(&mut self, member: MemberKey, text: &str) -> Result<(), RejectReason> {
        let id = self.held_by(member, text)?;
        let Some(key) = self.leases.get(&id).map(|l| l.key.clone()) else {
            return Err(RejectReason::NotHeld);
        };
        let ack_ms = i64::try_from(self.def.settings.ack_deadline_ms).unwrap_or(i64::MAX);
        let deadline_ms = self.now_ms().saturating_add(ack_ms);
        let outcome = self
            .change_record(&key, |record| record.extend(id.seq, id.lease, deadline_ms))
            .await;
        match outcome {
            Ok(Ok(())) => {
                if let Some(lease) = self.leases.get_mut(&id) {
                    lease.deadline_ms = deadline_ms;
                }
                self.evaluate(&key);
                Ok(())
            }
            Ok(Err(_)) => {
                self.drop_local_lease(id);
                self.evaluate(&key);
                Err(RejectReason::NotHeld)
            }
            Err(LeaseStop::StoreDown) => Err(RejectReason::Unavailable),
        }
    }

    // === position ===

    /// Moves the position past the done prefix of what was read.
    fn advance_floor(&mut self) {
        let mut floor = self.position.floor;
        loop {
            let Some((&seq, tracked)) = self.tracked.first_key_value() else {
                floor = floor.max(self.tail.position());
                break;
            };
            if !tracked.is_done() {
                floor = floor.max(seq.saturating_sub(1));
                break;
            }
            self.tracked.pop_first();
            floor = floor.max(seq);
        }
        if floor > self.position.floor {
            self.position.floor = floor;
            self.position_dirty = true;
        }
    }

    async fn flush_position(&mut self, force: bool) {
        if !self.position_dirty
            || (!force && self.position_flushed_at.elapsed() < self.shared.config.position_flush)
        {
            return;
        }
        self.position_flushed_at = Instant::now();
        match self
            .shared
            .store
            .advance_position(&self.def, self.position)
            .await
        {
            Ok(stored) => {
                self.position_dirty = false;
                if stored.floor > self.position.floor {
                    self.take_position(stored);
                }
            }
            Err(e) => tracing::debug!(error = %e, "saving the group position failed; retrying"),
        }
    }

    /// Another replica moved the position: everything at or below it is done.
    fn take_position(&mut self, position: Position) {
        if position.floor <= self.position.floor {
            return;
        }
        self.position.floor = position.floor;
        self.position.skipped = self.position.skipped.max(position.skipped);
        let below: Vec<Sequence> = self
            .tracked
            .range(..=position.floor)
            .map(|(seq, _)| *seq)
            .collect();
        let mut touched = HashSet::new();
        for seq in below {
            if let Some(t) = self.tracked.get(&seq) {
                touched.insert(t.key.clone());
            }
            self.mark_done(seq);
        }
        for key in touched {
            self.evaluate(&key);
        }
        if self.tail.position() < position.floor {
            self.tail = Tail::new(self.shared.log.clone(), position.floor);
        }
    }

    // === changes from other replicas ===

    fn apply_change(&mut self, change: StoreChange) {
        match change {
            StoreChange::Key { key, record } => {
                let key: Arc<str> = Arc::from(key);
                let Some(state) = self.keys.get_mut(&key) else {
                    return;
                };
                match record {
                    Some(v) => {
                        if state.record.revision().is_some_and(|r| r >= v.revision) {
                            return;
                        }
                        state.record = Cached::Present(v);
                    }
                    None => state.record = Cached::Unknown,
                }
                self.evaluate(&key);
            }
            StoreChange::Position(position) => self.take_position(position),
            StoreChange::Resync => self.resync(),
            StoreChange::GroupDeleted => {}
        }
    }

    fn resync(&mut self) {
        for state in self.keys.values_mut() {
            state.record = Cached::Unknown;
        }
        let keys: Vec<Arc<str>> = self.keys.keys().cloned().collect();
        for key in keys {
            self.evaluate(&key);
        }
    }
}
