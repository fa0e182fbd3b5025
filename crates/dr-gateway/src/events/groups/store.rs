//! Where consumer groups keep their state: the [`GroupStore`] trait, and its
//! in-memory backend for single-process mode ([`MemoryGroupStore`]). The
//! JetStream backend, shared by replicas, is `bus::KvGroupStore`.
//!
//! # What is stored
//! - the group definitions ([`GroupDef`]) and positions ([`Position`]);
//! - one [`KeyRecord`] per ordering key with events in flight, written only with
//!   compare-and-set on the revision it was read at ([`GroupStore::write_key`]);
//! - the members connected to each replica, with their counters, so any replica
//!   can answer GetConsumerGroup (JetStream only: in one process the scheduler
//!   answers itself).
//!
//! Readers may cache records; a stale cache only costs a refused write and a
//! re-read, never a wrong decision, because every decision is a compare-and-set.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Mutex, MutexGuard},
};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};

use super::{
    record::KeyRecord,
    settings::{GroupDef, Position},
};

/// A value with the store revision it was read or written at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned<T> {
    /// Store revision; compare-and-set writes name it.
    pub revision: u64,
    /// The value.
    pub value: T,
}

/// The store could not be reached or failed; the caller may retry.
#[derive(Debug, thiserror::Error)]
#[error("consumer group state unavailable: {0}")]
pub struct StoreError(pub String);

/// What a compare-and-set write of a key record did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// Stored at this revision.
    Revision(u64),
    /// The record was idle ([`KeyRecord::is_idle`]) and the store dropped it; the
    /// next write creates it anew (expected revision `None`).
    Forgotten,
}

/// Why a compare-and-set write did not happen.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The record is not at the expected revision: someone else wrote it.
    #[error("key record changed since it was read")]
    Conflict,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Result of [`GroupStore::create_group`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Created {
    /// The definition was stored.
    New,
    /// A group with that id exists: its definition.
    Exists(GroupDef),
}

/// A member as other replicas see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    /// Member id (unique per stream).
    pub member_id: String,
    /// The name the member gave.
    pub name: String,
    /// The replica its stream is on.
    pub replica: String,
    /// When its stream started.
    pub connected: DateTime<Utc>,
    /// Its flow-control limit.
    pub max_unacked: u32,
    /// Deliveries it holds now.
    pub unacked: u32,
    /// Acknowledgements since it connected.
    pub acked: u64,
}

/// A change made by someone else (another replica), for schedulers that cache.
#[derive(Debug, Clone)]
pub enum StoreChange {
    /// A key record changed (`None`: deleted or expired).
    Key {
        /// The ordering key.
        key: String,
        /// The new record.
        record: Option<Versioned<KeyRecord>>,
    },
    /// The group's position moved.
    Position(Position),
    /// The group was deleted.
    GroupDeleted,
    /// Changes may have been missed: drop caches and re-read.
    Resync,
}

/// See the module docs.
#[async_trait]
pub trait GroupStore: Send + Sync + std::fmt::Debug + 'static {
    /// This replica's name, under which it publishes its members and leases.
    fn replica(&self) -> &str;
    /// Stores `def` unless a group with its id exists.
    async fn create_group(&self, def: &GroupDef) -> Result<Created, StoreError>;
    /// The group with this id.
    async fn group(&self, id: &str) -> Result<Option<GroupDef>, StoreError>;
    /// Every group, in no particular order.
    async fn groups(&self) -> Result<Vec<GroupDef>, StoreError>;
    /// Deletes the group (definition and position); false when it did not exist.
    async fn delete_group(&self, id: &str) -> Result<bool, StoreError>;
    /// The group's position (its start before anything was acknowledged).
    async fn position(&self, group: &GroupDef) -> Result<Position, StoreError>;
    /// Moves the position forward to `to` (never back); returns the stored one.
    async fn advance_position(
        &self,
        group: &GroupDef,
        to: Position,
    ) -> Result<Position, StoreError>;
    /// The record of one ordering key.
    async fn key(
        &self,
        group: &GroupDef,
        key: &str,
    ) -> Result<Option<Versioned<KeyRecord>>, StoreError>;
    /// Writes a key record if it is still at `expected` (`None`: if absent).
    async fn write_key(
        &self,
        group: &GroupDef,
        key: &str,
        expected: Option<u64>,
        record: &KeyRecord,
    ) -> Result<Written, WriteError>;
    /// Changes others make to the group from now on. Ends when the store cannot
    /// follow any more (the caller re-subscribes). In one process: none.
    async fn changes(
        &self,
        group: &GroupDef,
    ) -> Result<BoxStream<'static, StoreChange>, StoreError>;
    /// Publishes this replica's members of the group (with fresh counters).
    async fn put_members(&self, group: &GroupDef, members: &[MemberInfo])
        -> Result<(), StoreError>;
    /// Removes a member that left.
    async fn remove_member(&self, group: &GroupDef, member_id: &str) -> Result<(), StoreError>;
    /// Members every replica published (the caller adds its own live ones).
    async fn members(&self, group: &GroupDef) -> Result<Vec<MemberInfo>, StoreError>;
}

// === impl MemoryGroupStore ===

/// Most idle key records (no lease, nothing above the floor) the memory store
/// keeps: they only remember the newest acknowledged `createdTime` per key, for
/// [`Delivery.late`](crate::pb::v1::Delivery); the oldest are forgotten first.
pub const MEMORY_IDLE_RECORDS: usize = 100_000;

/// The single-process [`GroupStore`]: plain maps behind a mutex.
#[derive(Debug)]
pub struct MemoryGroupStore {
    replica: String,
    state: Mutex<MemoryState>,
}

#[derive(Debug, Default)]
struct MemoryState {
    revision: u64,
    groups: HashMap<String, GroupDef>,
    positions: HashMap<u64, Position>,
    /// (incarnation, key) → record.
    keys: HashMap<(u64, String), Versioned<KeyRecord>>,
    /// Idle records in the order they became idle (may repeat; checked on eviction).
    idle: VecDeque<(u64, String)>,
}

impl MemoryGroupStore {
    /// An empty store for this process, named `replica` in member listings.
    pub fn new(replica: String) -> Self {
        Self {
            replica,
            state: Mutex::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, MemoryState> {
        // why: plain maps, consistent between statements; recover instead of poisoning.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl MemoryState {
    fn forget_idle_beyond_bound(&mut self) {
        while self.idle.len() > MEMORY_IDLE_RECORDS {
            let Some(slot) = self.idle.pop_front() else {
                break;
            };
            if self.keys.get(&slot).is_some_and(|r| r.value.is_idle()) {
                self.keys.remove(&slot);
            }
        }
    }
}

#[async_trait]
impl GroupStore for MemoryGroupStore {
    fn replica(&self) -> &str {
        &self.replica
    }

    async fn create_group(&self, def: &GroupDef) -> Result<Created, StoreError> {
        let mut st = self.lock();
        if let Some(existing) = st.groups.get(&def.id) {
            return Ok(Created::Exists(existing.clone()));
        }
        st.groups.insert(def.id.clone(), def.clone());
        st.positions.insert(
            def.incarnation,
            Position {
                floor: def.start_after,
                skipped: 0,
            },
        );
        Ok(Created::New)
    }

    async fn group(&self, id: &str) -> Result<Option<GroupDef>, StoreError> {
        Ok(self.lock().groups.get(id).cloned())
    }

    async fn groups(&self) -> Result<Vec<GroupDef>, StoreError> {
        Ok(self.lock().groups.values().cloned().collect())
    }

    async fn delete_group(&self, id: &str) -> Result<bool, StoreError> {
        let mut st = self.lock();
        let Some(def) = st.groups.remove(id) else {
            return Ok(false);
        };
        st.positions.remove(&def.incarnation);
        st.keys
            .retain(|(incarnation, _), _| *incarnation != def.incarnation);
        st.idle
            .retain(|(incarnation, _)| *incarnation != def.incarnation);
        Ok(true)
    }

    async fn position(&self, group: &GroupDef) -> Result<Position, StoreError> {
        Ok(self
            .lock()
            .positions
            .get(&group.incarnation)
            .copied()
            .unwrap_or(Position {
                floor: group.start_after,
                skipped: 0,
            }))
    }

    async fn advance_position(
        &self,
        group: &GroupDef,
        to: Position,
    ) -> Result<Position, StoreError> {
        let mut st = self.lock();
        let current = st
            .groups
            .get(&group.id)
            .is_some_and(|g| g.incarnation == group.incarnation);
        if !current {
            return Ok(to);
        }
        let stored = st.positions.entry(group.incarnation).or_insert(Position {
            floor: group.start_after,
            skipped: 0,
        });
        if to.floor > stored.floor {
            stored.floor = to.floor;
        }
        stored.skipped = stored.skipped.max(to.skipped);
        Ok(*stored)
    }

    async fn key(
        &self,
        group: &GroupDef,
        key: &str,
    ) -> Result<Option<Versioned<KeyRecord>>, StoreError> {
        Ok(self
            .lock()
            .keys
            .get(&(group.incarnation, key.to_owned()))
            .cloned())
    }

    async fn write_key(
        &self,
        group: &GroupDef,
        key: &str,
        expected: Option<u64>,
        record: &KeyRecord,
    ) -> Result<Written, WriteError> {
        let mut st = self.lock();
        let slot = (group.incarnation, key.to_owned());
        let current = st.keys.get(&slot).map(|r| r.revision);
        if current != expected {
            return Err(WriteError::Conflict);
        }
        st.revision += 1;
        let revision = st.revision;
        st.keys.insert(
            slot.clone(),
            Versioned {
                revision,
                value: record.clone(),
            },
        );
        if record.is_idle() {
            st.idle.push_back(slot);
            st.forget_idle_beyond_bound();
        }
        // why: a forgotten record is gone from the map; say so, so the writer's
        // cache expects "absent" next time.
        if !st.keys.contains_key(&(group.incarnation, key.to_owned())) {
            return Ok(Written::Forgotten);
        }
        Ok(Written::Revision(revision))
    }

    async fn changes(
        &self,
        _group: &GroupDef,
    ) -> Result<BoxStream<'static, StoreChange>, StoreError> {
        // One process, one scheduler per group: nobody else changes anything.
        Ok(Box::pin(futures::stream::pending()))
    }

    async fn put_members(
        &self,
        _group: &GroupDef,
        _members: &[MemberInfo],
    ) -> Result<(), StoreError> {
        Ok(())
    }

    async fn remove_member(&self, _group: &GroupDef, _member_id: &str) -> Result<(), StoreError> {
        Ok(())
    }

    async fn members(&self, _group: &GroupDef) -> Result<Vec<MemberInfo>, StoreError> {
        Ok(Vec::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::groups::settings::{GroupSettings, StartSpec};

    fn def(id: &str, incarnation: u64) -> GroupDef {
        GroupDef {
            id: id.into(),
            incarnation,
            settings: GroupSettings {
                filter: Default::default(),
                ack_deadline_ms: 1000,
                reorder_window_ms: 0,
                start: StartSpec::Now,
            },
            created: Utc::now(),
            start_after: 7,
        }
    }

    #[tokio::test]
    async fn key_records_change_only_from_the_revision_they_were_read_at() {
        let store = MemoryGroupStore::new("r".into());
        let g = def("g", 1);
        let mut record = KeyRecord {
            leases: 1,
            ..KeyRecord::default()
        };
        let Written::Revision(r1) = store.write_key(&g, "k", None, &record).await.unwrap() else {
            panic!("a busy record is kept")
        };
        assert!(matches!(
            store.write_key(&g, "k", None, &record).await,
            Err(WriteError::Conflict)
        ));
        record.leases = 2;
        let Written::Revision(r2) = store.write_key(&g, "k", Some(r1), &record).await.unwrap()
        else {
            panic!("kept")
        };
        assert!(r2 > r1);
        assert!(matches!(
            store.write_key(&g, "k", Some(r1), &record).await,
            Err(WriteError::Conflict)
        ));
        assert_eq!(store.key(&g, "k").await.unwrap().unwrap().revision, r2);
        // Another incarnation of the group sees nothing of this one's records.
        assert!(store.key(&def("g", 2), "k").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn groups_are_created_once_and_positions_only_move_forward() {
        let store = MemoryGroupStore::new("r".into());
        let g = def("g", 1);
        assert_eq!(store.create_group(&g).await.unwrap(), Created::New);
        assert_eq!(
            store.create_group(&def("g", 2)).await.unwrap(),
            Created::Exists(g.clone())
        );
        assert_eq!(store.position(&g).await.unwrap().floor, 7);
        let to = |floor| Position { floor, skipped: 0 };
        assert_eq!(store.advance_position(&g, to(9)).await.unwrap().floor, 9);
        assert_eq!(store.advance_position(&g, to(8)).await.unwrap().floor, 9);
        assert!(store.delete_group("g").await.unwrap());
        assert!(!store.delete_group("g").await.unwrap());
        assert!(store.group("g").await.unwrap().is_none());
    }
}
