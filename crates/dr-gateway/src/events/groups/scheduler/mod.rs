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
//!
//! # Layout
//! - this file: the state, the task and its loop, back-off after failures;
//! - `reading`: reading the log; the position, saved and taken from others;
//! - `readiness`: when a key is ready, timers;
//! - `leasing`: leasing to members, compare-and-set on key records;
//! - `members`: joining, leaving, acknowledging, handing back, extending.

mod counted;
mod leasing;
mod members;
mod readiness;
mod reading;

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
    /// `dr_gateway_consumer_group_*` of this group.
    metrics: counted::GroupMetrics,
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
        let metrics = counted::GroupMetrics::new(&def.id);
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
            metrics,
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
            self.metrics.holding(self.tracked.len(), self.members.len());
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
}
