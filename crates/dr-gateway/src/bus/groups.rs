//! [`KvGroupStore`]: consumer group state on JetStream KV, shared by every replica,
//! so a group survives the loss of any replica and its members may connect to
//! any of them (the rules are in [`crate::events::groups`]).
//!
//! # Buckets
//! - `DR_GATEWAY_GROUPS` (`--bus-groups-bucket`), no expiry, per group `<id>`:
//!   `<id>.def` the [`GroupDef`] (created once with KV create), `<id>.pos` its
//!   [`Position`] (moved only forward, compare-and-set), `<id>.mem` the members of
//!   each replica with the time that replica last refreshed them (a replica that
//!   died stops being listed after [`defaults::CONSUMER_GROUP_MEMBER_TTL`]).
//! - `<groups bucket>_KEYS`, entries expire after the event stream's max age plus
//!   a day (by then the events they describe are gone): one [`KeyRecord`] per
//!   ordering key, key `<incarnation>.<safe key>`, written only with
//!   compare-and-set (KV create / update on a revision). The record carries the
//!   ordering key's own text, since a long or odd one is hashed into the KV key.
//!
//! # Watching
//! A scheduler follows `<incarnation>.>` of the keys bucket and `<id>.*` of the
//! groups bucket from "now": other replicas' leases and acknowledgements, the
//! position, and the group's deletion. Its own writes come back too and are
//! ignored by revision.

use std::{collections::BTreeMap, time::Duration};

use async_nats::jetstream::consumer::{push, DeliverPolicy, ReplayPolicy};
use async_nats::jetstream::kv::{self, CreateErrorKind, Operation, UpdateErrorKind};
use async_trait::async_trait;
use bytes::Bytes;
use chrono::Utc;
use futures::{stream::BoxStream, StreamExt as _};
use serde::{Deserialize, Serialize};

use super::{event_log::safe_key, provision::ensure_kv, timed, Bus, BusError};
use crate::{
    defaults,
    events::groups::{
        store::{Created, StoreChange, Versioned, WriteError, Written},
        GroupDef, GroupStore, KeyRecord, MemberInfo, Position, StoreError,
    },
};

/// Compare-and-set rounds for the position and the member list.
const CAS_ROUNDS: usize = 8;

/// A key record as stored: with the ordering key's text.
#[derive(Debug, Serialize, Deserialize)]
struct StoredKey {
    key: String,
    record: KeyRecord,
}

/// The position as stored: tied to one incarnation of the group.
#[derive(Debug, Serialize, Deserialize)]
struct StoredPosition {
    incarnation: u64,
    position: Position,
}

/// One replica's members of a group.
#[derive(Debug, Default, Serialize, Deserialize)]
struct ReplicaMembers {
    updated_ms: i64,
    members: Vec<MemberInfo>,
}

/// Every replica's members of a group.
#[derive(Debug, Default, Serialize, Deserialize)]
struct StoredMembers {
    incarnation: u64,
    #[serde(default)]
    replicas: BTreeMap<String, ReplicaMembers>,
}

/// See the module docs.
#[derive(Clone)]
pub struct KvGroupStore {
    groups: kv::Store,
    keys: kv::Store,
    /// For the inbox of the listing consumer ([`group_ids`]).
    client: async_nats::Client,
    timeout: Duration,
    replica: String,
    member_ttl: Duration,
}

impl std::fmt::Debug for KvGroupStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvGroupStore")
            .field("replica", &self.replica)
            .finish_non_exhaustive()
    }
}

fn store_error(e: impl std::fmt::Display) -> StoreError {
    StoreError(e.to_string())
}

fn def_key(id: &str) -> String {
    format!("{id}.def")
}

fn pos_key(id: &str) -> String {
    format!("{id}.pos")
}

fn mem_key(id: &str) -> String {
    format!("{id}.mem")
}

fn record_key(group: &GroupDef, key: &str) -> String {
    format!("{:016x}.{}", group.incarnation, safe_key(key))
}

fn to_json<T: Serialize>(value: &T) -> Bytes {
    // why: plain structs of strings and numbers always serialise.
    Bytes::from(serde_json::to_vec(value).unwrap_or_default())
}

impl KvGroupStore {
    /// Creates or checks the buckets; `replica` names this process in member lists.
    pub async fn open(bus: &Bus, replica: String) -> Result<Self, BusError> {
        let config = bus.config();
        let groups = ensure_kv(bus, &config.groups_bucket, Duration::ZERO).await?;
        let keys_ttl = config.max_age + Duration::from_secs(24 * 3600);
        let keys = ensure_kv(bus, &config.groups_keys_bucket(), keys_ttl).await?;
        Ok(Self {
            groups,
            keys,
            client: bus.jetstream().client(),
            timeout: config.request_timeout,
            replica,
            member_ttl: defaults::CONSUMER_GROUP_MEMBER_TTL,
        })
    }

    async fn read<T: for<'de> Deserialize<'de>>(
        &self,
        store: &kv::Store,
        key: &str,
    ) -> Result<Option<Versioned<T>>, StoreError> {
        let entry = timed(
            self.timeout,
            "reading consumer group state",
            store.entry(key),
        )
        .await
        .map_err(store_error)?;
        match entry {
            Some(e) if e.operation == Operation::Put => {
                let value = serde_json::from_slice(&e.value).map_err(|err| {
                    store_error(format!("unreadable consumer group state at {key}: {err}"))
                })?;
                Ok(Some(Versioned {
                    revision: e.revision,
                    value,
                }))
            }
            _ => Ok(None),
        }
    }

    /// KV create (`expected` None) or update on a revision.
    async fn cas(
        &self,
        store: &kv::Store,
        key: &str,
        expected: Option<u64>,
        value: Bytes,
    ) -> Result<u64, WriteError> {
        match expected {
            None => match tokio::time::timeout(self.timeout, store.create(key, value)).await {
                Err(_) => Err(WriteError::Store(StoreError(
                    "creating a record timed out".into(),
                ))),
                Ok(Ok(revision)) => Ok(revision),
                Ok(Err(e)) if e.kind() == CreateErrorKind::AlreadyExists => {
                    Err(WriteError::Conflict)
                }
                Ok(Err(e)) => Err(WriteError::Store(store_error(e))),
            },
            Some(revision) => {
                match tokio::time::timeout(self.timeout, store.update(key, value, revision)).await {
                    Err(_) => Err(WriteError::Store(StoreError(
                        "updating a record timed out".into(),
                    ))),
                    Ok(Ok(revision)) => Ok(revision),
                    Ok(Err(e)) if e.kind() == UpdateErrorKind::WrongLastRevision => {
                        Err(WriteError::Conflict)
                    }
                    Ok(Err(e)) => Err(WriteError::Store(store_error(e))),
                }
            }
        }
    }

    /// Read-modify-write of the member list with compare-and-set.
    async fn change_members(
        &self,
        group: &GroupDef,
        change: impl Fn(&mut StoredMembers),
    ) -> Result<(), StoreError> {
        let key = mem_key(&group.id);
        for _ in 0..CAS_ROUNDS {
            let current = self.read::<StoredMembers>(&self.groups, &key).await?;
            let expected = current.as_ref().map(|v| v.revision);
            let mut members = match current {
                Some(v) if v.value.incarnation == group.incarnation => v.value,
                _ => StoredMembers {
                    incarnation: group.incarnation,
                    replicas: BTreeMap::new(),
                },
            };
            change(&mut members);
            let stale_before = Utc::now().timestamp_millis() - ttl_ms(self.member_ttl);
            members
                .replicas
                .retain(|_, r| r.updated_ms >= stale_before && !r.members.is_empty());
            match self
                .cas(&self.groups, &key, expected, to_json(&members))
                .await
            {
                Ok(_) => return Ok(()),
                Err(WriteError::Conflict) => continue,
                Err(WriteError::Store(e)) => return Err(e),
            }
        }
        Err(StoreError("the member list kept changing".into()))
    }
}

/// The ids of the groups whose definition the bucket holds: the last entry of
/// each `<id>.def`, read until the consumer has nothing pending.
///
/// why: only the `.def` keys, not the whole bucket (`Store::keys`). Positions and
/// member lists are rewritten many times a second while groups consume; reading
/// every key did not finish within the bus timeout once a few groups had
/// consumed (`cargo bench -p dr-gateway --bench consume`, JetStream rounds), so
/// CreateConsumerGroup, which counts the groups, and ListConsumerGroups answered
/// UNAVAILABLE. A definition is written once and deleted once.
async fn group_ids(
    client: &async_nats::Client,
    store: &kv::Store,
) -> Result<Vec<String>, GroupListError> {
    let consumer = store
        .stream
        .create_consumer(push::OrderedConfig {
            deliver_subject: client.new_inbox(),
            description: Some("consumer group listing".into()),
            filter_subject: format!("{}*.def", store.prefix),
            headers_only: true,
            deliver_policy: DeliverPolicy::LastPerSubject,
            replay_policy: ReplayPolicy::Instant,
            ..Default::default()
        })
        .await
        .map_err(GroupListError::new)?;
    let mut ids = Vec::new();
    if consumer.cached_info().num_pending == 0 {
        return Ok(ids);
    }
    let mut messages = consumer.messages().await.map_err(GroupListError::new)?;
    while let Some(message) = messages.next().await {
        let message = message.map_err(GroupListError::new)?;
        let pending = message.info().map_err(GroupListError::new)?.pending;
        let deleted = message
            .headers
            .as_ref()
            .and_then(|h| h.get(KV_OPERATION_HEADER))
            .is_some_and(|op| op.as_str() != "PUT");
        let id = message
            .subject
            .strip_prefix(store.prefix.as_str())
            .and_then(|key| key.strip_suffix(".def"));
        if let (false, Some(id)) = (deleted, id) {
            ids.push(id.to_owned());
        }
        if pending == 0 {
            break;
        }
    }
    Ok(ids)
}

/// The KV header that marks a deleted or purged key (absent on a put).
const KV_OPERATION_HEADER: &str = "KV-Operation";

/// Listing the group definitions failed.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct GroupListError(String);

impl GroupListError {
    fn new(e: impl std::fmt::Display) -> Self {
        Self(e.to_string())
    }
}

fn ttl_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[async_trait]
impl GroupStore for KvGroupStore {
    fn replica(&self) -> &str {
        &self.replica
    }

    async fn create_group(&self, def: &GroupDef) -> Result<Created, StoreError> {
        let key = def_key(&def.id);
        match self.cas(&self.groups, &key, None, to_json(def)).await {
            Ok(_) => {}
            Err(WriteError::Conflict) => {
                return match self.read::<GroupDef>(&self.groups, &key).await? {
                    Some(existing) => Ok(Created::Exists(existing.value)),
                    None => Err(StoreError(
                        "the group was deleted while being created".into(),
                    )),
                };
            }
            Err(WriteError::Store(e)) => return Err(e),
        }
        let position = StoredPosition {
            incarnation: def.incarnation,
            position: Position {
                floor: def.start_after,
                skipped: 0,
            },
        };
        let put = timed(
            self.timeout,
            "writing a group position",
            self.groups.put(pos_key(&def.id), to_json(&position)),
        )
        .await;
        if let Err(e) = put {
            // The definition's start is the position until one is written.
            tracing::warn!(group = %def.id, error = %e, "initial group position not written");
        }
        Ok(Created::New)
    }

    async fn group(&self, id: &str) -> Result<Option<GroupDef>, StoreError> {
        Ok(self
            .read::<GroupDef>(&self.groups, &def_key(id))
            .await?
            .map(|v| v.value))
    }

    async fn groups(&self) -> Result<Vec<GroupDef>, StoreError> {
        let ids = timed(
            self.timeout,
            "listing consumer groups",
            group_ids(&self.client, &self.groups),
        )
        .await
        .map_err(store_error)?;
        let mut out = Vec::new();
        for id in ids {
            if let Some(def) = self.group(&id).await? {
                out.push(def);
            }
        }
        Ok(out)
    }

    async fn delete_group(&self, id: &str) -> Result<bool, StoreError> {
        if self.group(id).await?.is_none() {
            return Ok(false);
        }
        for key in [def_key(id), pos_key(id), mem_key(id)] {
            timed(
                self.timeout,
                "deleting a consumer group",
                self.groups.delete(&key),
            )
            .await
            .map_err(store_error)?;
        }
        Ok(true)
    }

    async fn position(&self, group: &GroupDef) -> Result<Position, StoreError> {
        Ok(
            match self
                .read::<StoredPosition>(&self.groups, &pos_key(&group.id))
                .await?
            {
                Some(v) if v.value.incarnation == group.incarnation => v.value.position,
                _ => Position {
                    floor: group.start_after,
                    skipped: 0,
                },
            },
        )
    }

    async fn advance_position(
        &self,
        group: &GroupDef,
        to: Position,
    ) -> Result<Position, StoreError> {
        let key = pos_key(&group.id);
        for _ in 0..CAS_ROUNDS {
            let current = self.read::<StoredPosition>(&self.groups, &key).await?;
            let (expected, stored) = match &current {
                Some(v) if v.value.incarnation == group.incarnation => {
                    (Some(v.revision), v.value.position)
                }
                // Another incarnation's position: the group was deleted (and maybe
                // re-created); this scheduler's position means nothing any more.
                Some(_) => return Ok(to),
                None => (
                    None,
                    Position {
                        floor: group.start_after,
                        skipped: 0,
                    },
                ),
            };
            if to.floor <= stored.floor && to.skipped <= stored.skipped {
                return Ok(stored);
            }
            let next = StoredPosition {
                incarnation: group.incarnation,
                position: Position {
                    floor: to.floor.max(stored.floor),
                    skipped: to.skipped.max(stored.skipped),
                },
            };
            match self.cas(&self.groups, &key, expected, to_json(&next)).await {
                Ok(_) => return Ok(next.position),
                Err(WriteError::Conflict) => continue,
                Err(WriteError::Store(e)) => return Err(e),
            }
        }
        Err(StoreError("the group position kept changing".into()))
    }

    async fn key(
        &self,
        group: &GroupDef,
        key: &str,
    ) -> Result<Option<Versioned<KeyRecord>>, StoreError> {
        Ok(self
            .read::<StoredKey>(&self.keys, &record_key(group, key))
            .await?
            .map(|v| Versioned {
                revision: v.revision,
                value: v.value.record,
            }))
    }

    async fn write_key(
        &self,
        group: &GroupDef,
        key: &str,
        expected: Option<u64>,
        record: &KeyRecord,
    ) -> Result<Written, WriteError> {
        let stored = StoredKey {
            key: key.to_owned(),
            record: record.clone(),
        };
        self.cas(
            &self.keys,
            &record_key(group, key),
            expected,
            to_json(&stored),
        )
        .await
        .map(Written::Revision)
    }

    async fn changes(
        &self,
        group: &GroupDef,
    ) -> Result<BoxStream<'static, StoreChange>, StoreError> {
        let records = timed(
            self.timeout * 2,
            "watching consumer group records",
            self.keys.watch(format!("{:016x}.>", group.incarnation)),
        )
        .await
        .map_err(store_error)?;
        let own = timed(
            self.timeout * 2,
            "watching a consumer group",
            self.groups.watch(format!("{}.*", group.id)),
        )
        .await
        .map_err(store_error)?;
        let incarnation = group.incarnation;
        let records = records.map(|entry| {
            let entry = entry.map_err(|_| ())?;
            let record = match entry.operation {
                Operation::Put => match serde_json::from_slice::<StoredKey>(&entry.value) {
                    Ok(stored) => {
                        return Ok(Some(StoreChange::Key {
                            key: stored.key,
                            record: Some(Versioned {
                                revision: entry.revision,
                                value: stored.record,
                            }),
                        }))
                    }
                    Err(_) => return Ok(Some(StoreChange::Resync)),
                },
                // why: a removed record's ordering key is only known from its value.
                Operation::Delete | Operation::Purge => StoreChange::Resync,
            };
            Ok(Some(record))
        });
        let own = own.map(move |entry| {
            let entry = entry.map_err(|_| ())?;
            if entry.key.ends_with(".def") && entry.operation != Operation::Put {
                return Ok(Some(StoreChange::GroupDeleted));
            }
            if entry.key.ends_with(".pos") && entry.operation == Operation::Put {
                if let Ok(p) = serde_json::from_slice::<StoredPosition>(&entry.value) {
                    if p.incarnation == incarnation {
                        return Ok(Some(StoreChange::Position(p.position)));
                    }
                }
            }
            Ok(None)
        });
        // why: a watch that fails ends the whole stream, so the scheduler
        // re-subscribes and re-reads instead of silently missing changes.
        let merged = futures::stream::select(records, own)
            .take_while(|item: &Result<Option<StoreChange>, ()>| std::future::ready(item.is_ok()))
            .filter_map(|item| std::future::ready(item.ok().flatten()));
        Ok(merged.boxed())
    }

    async fn put_members(
        &self,
        group: &GroupDef,
        members: &[MemberInfo],
    ) -> Result<(), StoreError> {
        let now = Utc::now().timestamp_millis();
        self.change_members(group, |stored| {
            stored.replicas.insert(
                self.replica.clone(),
                ReplicaMembers {
                    updated_ms: now,
                    members: members.to_vec(),
                },
            );
        })
        .await
    }

    async fn remove_member(&self, group: &GroupDef, member_id: &str) -> Result<(), StoreError> {
        self.change_members(group, |stored| {
            if let Some(mine) = stored.replicas.get_mut(&self.replica) {
                mine.members.retain(|m| m.member_id != member_id);
            }
        })
        .await
    }

    async fn members(&self, group: &GroupDef) -> Result<Vec<MemberInfo>, StoreError> {
        let Some(stored) = self
            .read::<StoredMembers>(&self.groups, &mem_key(&group.id))
            .await?
        else {
            return Ok(Vec::new());
        };
        if stored.value.incarnation != group.incarnation {
            return Ok(Vec::new());
        }
        let fresh_after = Utc::now().timestamp_millis() - ttl_ms(self.member_ttl);
        Ok(stored
            .value
            .replicas
            .into_values()
            .filter(|r| r.updated_ms >= fresh_after)
            .flat_map(|r| r.members)
            .collect())
    }
}
