//! Consumer groups: several members share a group's events — each event goes to
//! one member, which acknowledges it — with per-order ordering. The API is
//! `EventStream.Consume` and the `*ConsumerGroup` RPCs (proto/…/event_stream.proto
//! documents the contract callers see).
//!
//! # Model
//! A group reads the one event log from its position. Its events are split by
//! ordering key ([`crate::events::ordering`]: the DR order, else the object); the
//! events of a key wait in DR's creation order, each held for the group's reorder
//! window after it arrived, and only the key's first event may be out with a
//! member (a *lease*, until the ack deadline). An acknowledged event is done; an
//! event handed back, past its deadline, or held by a member that left, is leased
//! again (any member, next attempt).
//!
//! # State and failures
//! Per key, one [`KeyRecord`] in a [`GroupStore`]: the lease (event, lease number,
//! member, deadline), the done events above the group's position, attempt counts.
//! Every change is a compare-and-set on the record's revision, so where several
//! gateway replicas serve members of one group (JetStream mode: `bus::KvGroupStore`,
//! a KV bucket), they agree without a leader: two replicas racing for a key's
//! lease — one wins; an acknowledgement from a member whose lease was taken over
//! after its deadline fails its compare-and-set and is refused, so no event is
//! acknowledged twice. A replica that dies leaves its leases in the records; they
//! run out at their deadline and another replica leases the events again, so
//! nothing is lost. The position (every event at or below it done) is written
//! with "only forward" semantics by whichever replica gets there; a restarted
//! scheduler reads the log from it and learns from the records what is done
//! above it. In single-process mode the same code runs on [`MemoryGroupStore`].
//!
//! # Bounds
//! Per group and replica, a scheduler holds at most `max_pending` read events
//! between the position and its read point (default 10 000; events beyond wait
//! in the log), their key states, and at most `max_members` members, each with at
//! most `max_unacked` deliveries outstanding (its queue holds exactly that many).
//! At most `max_groups` groups exist. Every queue is bounded; every store call
//! has the bus timeout; a member's request is answered within the settle timeout.
//!
//! # Layout
//! - [`settings`]: group ids, settings, definitions, positions;
//! - [`record`]: the per-key record and its rules (pure);
//! - [`delivery_id`]: what members acknowledge with;
//! - [`store`]: the [`GroupStore`] trait and [`MemoryGroupStore`];
//! - [`scheduler`]: one group on one replica (the task that leases);
//! - [`member`]: deliveries, receipts and a member's session;
//! - [`registry`]: [`ConsumerGroups`], what the gRPC service calls.

pub mod delivery_id;
pub mod member;
pub mod record;
pub mod registry;
pub(crate) mod scheduler;
pub mod settings;
pub mod store;

use std::time::Duration;

pub use delivery_id::DeliveryId;
pub use member::{
    Delivered, EndReason, MemberHandle, MemberOptions, MemberSession, Receipt, RejectReason,
    MAX_IDS_PER_REQUEST,
};
pub use record::KeyRecord;
pub use registry::{ConsumerGroups, GroupView, NewGroup};
pub use settings::{FilterSpec, GroupDef, GroupSettings, Position, StartSpec};
pub use store::{GroupStore, MemberInfo, MemoryGroupStore, StoreError};

use crate::defaults;
use crate::events::{FilterError, SubscribeError};

/// Limits and timings of the consumer groups of one gateway replica.
#[derive(Debug, Clone)]
pub struct GroupsConfig {
    /// Most groups (creating more is RESOURCE_EXHAUSTED).
    pub max_groups: usize,
    /// Most read events a group's scheduler holds ahead of its position.
    pub max_pending: usize,
    /// Most members of one group on one replica.
    pub max_members: usize,
    /// This replica's name in member listings and leases.
    pub replica: String,
    /// How long a scheduler with no member stays loaded.
    pub linger: Duration,
    /// How often this replica republishes its members (JetStream mode).
    pub member_refresh: Duration,
    /// How often a moving position is saved.
    pub position_flush: Duration,
    /// Longest wait for the scheduler to answer a member's request.
    pub settle_timeout: Duration,
}

impl Default for GroupsConfig {
    fn default() -> Self {
        Self {
            max_groups: defaults::CONSUMER_GROUPS_MAX,
            max_pending: defaults::CONSUMER_GROUP_MAX_PENDING,
            max_members: defaults::CONSUMER_GROUP_MAX_MEMBERS,
            replica: default_replica_name(),
            linger: defaults::CONSUMER_GROUP_LINGER,
            member_refresh: defaults::CONSUMER_GROUP_MEMBER_REFRESH,
            position_flush: defaults::CONSUMER_GROUP_POSITION_FLUSH,
            settle_timeout: defaults::CONSUMER_GROUP_SETTLE_TIMEOUT,
        }
    }
}

/// `$HOSTNAME` (the pod name in Kubernetes) plus a random suffix, so two processes
/// on one host differ.
pub fn default_replica_name() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty() && h.len() <= 64)
        .unwrap_or_else(|| "gateway".to_owned());
    format!("{host}-{:04x}", rand::random::<u16>())
}

/// What the consumer-group layer can fail with; `grpc/status.rs` maps it.
#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    /// A request field is wrong (the field path, e.g. `settings.ack_deadline`).
    #[error("{field}: {reason}")]
    Invalid {
        /// Request field.
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// No group with that id.
    #[error("consumer group {0} not found")]
    NotFound(String),
    /// The id is taken.
    #[error("consumer group {0} already exists")]
    AlreadyExists(String),
    /// Too many groups.
    #[error("at most {0} consumer groups")]
    GroupsLimit(usize),
    /// Too many members in the group on this replica.
    #[error("at most {0} members per consumer group")]
    MembersLimit(usize),
    /// The start could not be resolved against the log.
    #[error(transparent)]
    Start(#[from] SubscribeError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Internal: the scheduler was stopping; try again (never leaves the registry).
    #[error("consumer group scheduler restarting")]
    Retry,
}

impl GroupError {
    /// A filter error, under `prefix` (e.g. `settings.` → `settings.filter.types[0]`).
    pub fn filter(prefix: &str, e: FilterError) -> Self {
        Self::Invalid {
            field: format!("{prefix}{}", e.field),
            reason: e.reason,
        }
    }
}
