//! [`ConsumerGroups`]: what the gRPC service calls — create, read, list and delete
//! groups in the [`GroupStore`], and join members to the group's scheduler on this
//! replica (started on the first member, stopped a while after the last left).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use tokio::sync::oneshot;

use super::{
    member::{MemberHandle, MemberOptions, MemberSession},
    scheduler::{Command, Scheduler, Shared},
    settings::{validate_group_id, FilterSpec, GroupDef, GroupSettings, Position, StartSpec},
    store::{Created, GroupStore, MemberInfo},
    GroupError, GroupsConfig,
};
use crate::{
    clock::Clock,
    defaults,
    events::{
        log::EventLog,
        subscription::{resolve_start, Start},
    },
};

/// Times a join is retried while the group's scheduler restarts.
const JOIN_ROUNDS: usize = 3;

/// A group to create; unset durations take the defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewGroup {
    /// Which events.
    pub filter: FilterSpec,
    /// Time to acknowledge; default [`defaults::CONSUMER_GROUP_ACK_DEADLINE`].
    pub ack_deadline: Option<Duration>,
    /// Reorder hold; default [`defaults::CONSUMER_GROUP_REORDER_WINDOW`].
    pub reorder_window: Option<Duration>,
    /// Where to start.
    pub start: StartSpec,
}

/// A group as GetConsumerGroup shows it.
#[derive(Debug, Clone)]
pub struct GroupView {
    /// Definition.
    pub def: GroupDef,
    /// Position.
    pub position: Position,
    /// Events stored after the position.
    pub events_behind: u64,
    /// Connected members on every replica, by connect time.
    pub members: Vec<MemberInfo>,
}

impl GroupView {
    /// Deliveries outstanding across members.
    pub fn unacked(&self) -> u64 {
        self.members.iter().map(|m| u64::from(m.unacked)).sum()
    }
}

#[derive(Debug, Clone)]
struct Handle {
    incarnation: u64,
    commands: tokio::sync::mpsc::Sender<Command>,
}

/// See the module docs. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ConsumerGroups {
    shared: Shared,
    schedulers: Arc<Mutex<HashMap<String, Handle>>>,
}

impl ConsumerGroups {
    /// Groups over `log`, their state in `store`.
    pub fn new(
        log: Arc<dyn EventLog>,
        store: Arc<dyn GroupStore>,
        clock: Arc<dyn Clock>,
        config: GroupsConfig,
    ) -> Self {
        Self {
            shared: Shared {
                log,
                store,
                clock,
                config: Arc::new(config),
            },
            schedulers: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// The limits and timings in force.
    pub fn config(&self) -> &GroupsConfig {
        &self.shared.config
    }

    fn schedulers(&self) -> MutexGuard<'_, HashMap<String, Handle>> {
        // why: a plain map; recover instead of poisoning.
        self.schedulers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Creates a group; [`GroupError::AlreadyExists`] when the id is taken.
    pub async fn create(&self, id: &str, new: NewGroup) -> Result<GroupView, GroupError> {
        match self.create_or_existing(id, new, "settings.").await? {
            (def, true) => self.view(def).await,
            (_, false) => Err(GroupError::AlreadyExists(id.to_owned())),
        }
    }

    /// The stored definition of a new group, or of the existing one (false).
    async fn create_or_existing(
        &self,
        id: &str,
        new: NewGroup,
        field_prefix: &str,
    ) -> Result<(GroupDef, bool), GroupError> {
        validate_group_id(id).map_err(|reason| GroupError::Invalid {
            field: "group_id".into(),
            reason: reason.into(),
        })?;
        new.filter
            .build()
            .map_err(|e| GroupError::filter(field_prefix, e))?;
        if let Some(existing) = self.shared.store.group(id).await? {
            return Ok((existing, false));
        }
        if self.shared.store.groups().await?.len() >= self.shared.config.max_groups {
            return Err(GroupError::GroupsLimit(self.shared.config.max_groups));
        }
        let start = match &new.start {
            StartSpec::Now => Start::Now,
            StartSpec::Oldest => Start::Oldest,
            StartSpec::AtTime(text) => {
                let time = chrono::DateTime::parse_from_rfc3339(text)
                    .map_err(|_| GroupError::Invalid {
                        field: format!("{field_prefix}start_time"),
                        reason: "not a valid timestamp".into(),
                    })?
                    .with_timezone(&chrono::Utc);
                Start::AtTime(time)
            }
        };
        let start_after = resolve_start(self.shared.log.as_ref(), &start).await?;
        let def = GroupDef {
            id: id.to_owned(),
            incarnation: rand::random(),
            settings: GroupSettings {
                filter: new.filter,
                ack_deadline_ms: millis(
                    new.ack_deadline
                        .unwrap_or(defaults::CONSUMER_GROUP_ACK_DEADLINE),
                ),
                reorder_window_ms: millis(
                    new.reorder_window
                        .unwrap_or(defaults::CONSUMER_GROUP_REORDER_WINDOW),
                ),
                start: new.start,
            },
            created: self.shared.clock.now(),
            start_after,
        };
        match self.shared.store.create_group(&def).await? {
            Created::New => {
                tracing::info!(group = %def.id, start_after, "consumer group created");
                Ok((def, true))
            }
            Created::Exists(existing) => Ok((existing, false)),
        }
    }

    /// A group with its position and members.
    pub async fn get(&self, id: &str) -> Result<GroupView, GroupError> {
        let def = self
            .shared
            .store
            .group(id)
            .await?
            .ok_or_else(|| GroupError::NotFound(id.to_owned()))?;
        self.view(def).await
    }

    async fn view(&self, def: GroupDef) -> Result<GroupView, GroupError> {
        let mut position = self.shared.store.position(&def).await?;
        let (local, local_position) = self.inspect_local(&def).await;
        if let Some(p) = local_position {
            if p.floor > position.floor {
                position = p;
            }
        }
        let mut members = local;
        let replica = &self.shared.config.replica;
        members.extend(
            self.shared
                .store
                .members(&def)
                .await?
                .into_iter()
                .filter(|m| &m.replica != replica),
        );
        members.sort_by(|a, b| {
            a.connected
                .cmp(&b.connected)
                .then(a.member_id.cmp(&b.member_id))
        });
        let last = self
            .shared
            .log
            .bounds()
            .await
            .map_err(|e| GroupError::Start(e.into()))?
            .last;
        Ok(GroupView {
            events_behind: last.saturating_sub(position.floor),
            def,
            position,
            members,
        })
    }

    /// The members this replica's scheduler of `def` serves, and its position.
    async fn inspect_local(&self, def: &GroupDef) -> (Vec<MemberInfo>, Option<Position>) {
        let handle = self.schedulers().get(&def.id).cloned();
        let Some(handle) = handle.filter(|h| h.incarnation == def.incarnation) else {
            return (Vec::new(), None);
        };
        let (reply, answer) = oneshot::channel();
        let wait = self.shared.config.settle_timeout;
        if !matches!(
            tokio::time::timeout(wait, handle.commands.send(Command::Inspect { reply })).await,
            Ok(Ok(()))
        ) {
            return (Vec::new(), None);
        }
        match tokio::time::timeout(wait, answer).await {
            Ok(Ok((members, position))) => (members, Some(position)),
            _ => (Vec::new(), None),
        }
    }

    /// Every group, ordered by id (members not filled in).
    pub async fn list(&self) -> Result<Vec<GroupView>, GroupError> {
        let mut defs = self.shared.store.groups().await?;
        defs.sort_by(|a, b| a.id.cmp(&b.id));
        let last = self
            .shared
            .log
            .bounds()
            .await
            .map_err(|e| GroupError::Start(e.into()))?
            .last;
        let mut out = Vec::with_capacity(defs.len());
        for def in defs {
            let position = self.shared.store.position(&def).await?;
            out.push(GroupView {
                events_behind: last.saturating_sub(position.floor),
                def,
                position,
                members: Vec::new(),
            });
        }
        Ok(out)
    }

    /// Deletes a group; its members' streams end.
    pub async fn delete(&self, id: &str) -> Result<(), GroupError> {
        if !self.shared.store.delete_group(id).await? {
            return Err(GroupError::NotFound(id.to_owned()));
        }
        let handle = self.schedulers().remove(id);
        if let Some(handle) = handle {
            let wait = self.shared.config.settle_timeout;
            // A scheduler that does not take the command in time learns it from the
            // store (JetStream) or ends with its last member.
            let _ = tokio::time::timeout(wait, handle.commands.send(Command::Delete)).await;
        }
        tracing::info!(group = %id, "consumer group deleted");
        Ok(())
    }

    /// Joins a member to group `id` on this replica, creating the group first with
    /// `create` when it does not exist. Returns the session, the group as joined,
    /// and whether this call created it.
    pub async fn join(
        &self,
        id: &str,
        options: MemberOptions,
        create: Option<NewGroup>,
    ) -> Result<(MemberSession, GroupView, bool), GroupError> {
        validate_group_id(id).map_err(|reason| GroupError::Invalid {
            field: "start.group_id".into(),
            reason: reason.into(),
        })?;
        let (def, created) = match (self.shared.store.group(id).await?, create) {
            (Some(def), _) => (def, false),
            (None, Some(new)) => self.create_or_existing(id, new, "start.create.").await?,
            (None, None) => return Err(GroupError::NotFound(id.to_owned())),
        };
        let filter = def
            .settings
            .filter
            .build()
            .map_err(|e| GroupError::filter("settings.", e))?;
        for _ in 0..JOIN_ROUNDS {
            let handle = self.handle_for(&def, &filter);
            let (reply, answer) = oneshot::channel();
            let wait = self.shared.config.settle_timeout;
            let command = Command::Join {
                options: options.clone(),
                reply,
            };
            match tokio::time::timeout(wait, handle.commands.send(command)).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => {
                    self.forget(&def, &handle);
                    continue;
                }
                Err(_) => {
                    return Err(GroupError::Store(super::StoreError(
                        "the group's scheduler is overloaded".into(),
                    )))
                }
            }
            let joined = match tokio::time::timeout(wait, answer).await {
                Ok(Ok(Ok(joined))) => joined,
                Ok(Ok(Err(GroupError::Retry))) | Ok(Err(_)) => {
                    self.forget(&def, &handle);
                    continue;
                }
                Ok(Ok(Err(e))) => return Err(e),
                Err(_) => {
                    return Err(GroupError::Store(super::StoreError(
                        "the group's scheduler did not answer in time".into(),
                    )))
                }
            };
            let session = MemberSession {
                member_id: joined.member_id,
                deliveries: joined.deliveries,
                end: joined.end,
                leave_guard: joined.left.clone().drop_guard(),
                handle: MemberHandle {
                    key: joined.key,
                    commands: handle.commands.clone(),
                    left: joined.left,
                    settle_timeout: wait,
                },
            };
            let view = self.view(def).await?;
            return Ok((session, view, created));
        }
        Err(GroupError::Store(super::StoreError(
            "the group's scheduler kept restarting".into(),
        )))
    }

    /// The running scheduler of `def` on this replica, started if needed.
    fn handle_for(&self, def: &GroupDef, filter: &crate::events::EventFilter) -> Handle {
        let mut schedulers = self.schedulers();
        if let Some(h) = schedulers.get(&def.id) {
            if h.incarnation == def.incarnation && !h.commands.is_closed() {
                return h.clone();
            }
        }
        let handle = Handle {
            incarnation: def.incarnation,
            commands: Scheduler::spawn(def.clone(), filter.clone(), self.shared.clone()),
        };
        schedulers.insert(def.id.clone(), handle.clone());
        handle
    }

    fn forget(&self, def: &GroupDef, handle: &Handle) {
        let mut schedulers = self.schedulers();
        if schedulers
            .get(&def.id)
            .is_some_and(|h| h.commands.same_channel(&handle.commands))
        {
            schedulers.remove(&def.id);
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
