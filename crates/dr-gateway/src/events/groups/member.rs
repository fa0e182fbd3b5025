//! What a member of a group sees: the deliveries it gets, the receipt for each of
//! its requests, why its stream ends, and the session that ties them to the
//! group's scheduler.

use std::{sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::{CancellationToken, DropGuard};

use super::scheduler::{Command, MemberKey};
use crate::events::log::StoredEvent;

/// Most delivery ids one request may carry (acknowledge + hand back + extend).
pub const MAX_IDS_PER_REQUEST: usize = 1000;

/// How a member wants to consume.
#[derive(Debug, Clone)]
pub struct MemberOptions {
    /// Shown by GetConsumerGroup.
    pub name: String,
    /// Most deliveries outstanding at once.
    pub max_unacked: u32,
}

/// One event delivered to one member.
#[derive(Debug, Clone)]
pub struct Delivered {
    /// What the member acknowledges with.
    pub delivery_id: String,
    /// 1 for the first delivery of the event to the group.
    pub attempt: u32,
    /// The event.
    pub event: Arc<StoredEvent>,
    /// What the event is ordered by.
    pub ordering_key: Arc<str>,
    /// When the lease runs out (gateway time).
    pub deadline: DateTime<Utc>,
    /// An event of the same key created later was already acknowledged.
    pub late: bool,
}

/// Why a delivery id in a request did not take effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    /// The member does not hold that delivery (any more).
    NotHeld,
    /// Not a delivery id of this group.
    Unknown,
    /// The group's state could not be reached; send it again.
    Unavailable,
}

/// The answer to one request: each id it carried, in exactly one list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Receipt {
    /// Acknowledged.
    pub acknowledged: Vec<String>,
    /// Handed back.
    pub nacked: Vec<String>,
    /// Deadline restarted.
    pub extended: Vec<String>,
    /// Did not take effect.
    pub rejected: Vec<(String, RejectReason)>,
}

impl Receipt {
    /// Every id of a request rejected for one reason (e.g. the scheduler did not
    /// answer in time).
    pub fn reject_all(ids: impl IntoIterator<Item = String>, reason: RejectReason) -> Self {
        Self {
            rejected: ids.into_iter().map(|id| (id, reason)).collect(),
            ..Self::default()
        }
    }
}

/// Why the gateway ended a member's stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// The member left (closed its side); nothing went wrong.
    Left,
    /// The group was deleted.
    GroupDeleted,
    /// The group's state store failed for too long; reconnect (elsewhere).
    StoreUnavailable,
}

/// A member's connection to its group: deliveries come in through `deliveries`,
/// requests go out through [`MemberHandle::settle`]. Dropping `leave_guard` (or
/// calling [`MemberHandle::leave`]) leaves the group: unacknowledged events go to
/// the other members.
#[derive(Debug)]
pub struct MemberSession {
    /// This member's id in the group.
    pub member_id: String,
    /// Deliveries, at most `max_unacked` outstanding; closes when the member is
    /// removed (see `end`).
    pub deliveries: mpsc::Receiver<Delivered>,
    /// Why the member was removed, when the gateway removed it.
    pub end: oneshot::Receiver<EndReason>,
    /// The request side (acknowledge, hand back, extend; leave).
    pub handle: MemberHandle,
    /// Leaves the group when dropped.
    pub leave_guard: DropGuard,
}

/// The request side of a session; clone it into the task that reads requests.
#[derive(Debug, Clone)]
pub struct MemberHandle {
    pub(super) key: MemberKey,
    pub(super) commands: mpsc::Sender<Command>,
    pub(super) left: CancellationToken,
    pub(super) settle_timeout: Duration,
}

impl MemberHandle {
    /// Acknowledges, hands back and extends deliveries; the receipt says what took
    /// effect. Answers within the settle timeout (ids not handled by then are
    /// rejected as unavailable).
    pub async fn settle(
        &self,
        acks: Vec<String>,
        nacks: Vec<String>,
        extends: Vec<String>,
    ) -> Receipt {
        let all: Vec<String> = acks
            .iter()
            .chain(nacks.iter())
            .chain(extends.iter())
            .cloned()
            .collect();
        let (reply, answer) = oneshot::channel();
        let command = Command::Settle {
            member: self.key,
            acks,
            nacks,
            extends,
            reply,
        };
        let sent = tokio::time::timeout(self.settle_timeout, self.commands.send(command)).await;
        if !matches!(sent, Ok(Ok(()))) {
            return Receipt::reject_all(all, RejectReason::Unavailable);
        }
        match tokio::time::timeout(self.settle_timeout, answer).await {
            Ok(Ok(receipt)) => receipt,
            _ => Receipt::reject_all(all, RejectReason::Unavailable),
        }
    }

    /// Leaves the group now (the deliveries channel closes soon after).
    pub fn leave(&self) {
        self.left.cancel();
    }
}
