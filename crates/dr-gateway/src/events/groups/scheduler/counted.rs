//! A group's metrics (`dr_gateway_consumer_group_*`, label `group`): what its
//! scheduler on this replica delivered, redelivered and saw acknowledged, and what it
//! holds. Group ids are chosen by operators and bounded by `--consumer-groups-max`,
//! so the label stays bounded.

use crate::telemetry::metrics::names;

/// The series of one group, registered once when its scheduler starts.
pub(super) struct GroupMetrics {
    deliveries: metrics::Counter,
    redeliveries: metrics::Counter,
    acks: metrics::Counter,
    pending: metrics::Gauge,
    members: metrics::Gauge,
}

impl GroupMetrics {
    pub(super) fn new(group: &str) -> Self {
        let group = group.to_owned();
        Self {
            deliveries: metrics::counter!(names::GROUP_DELIVERIES, "group" => group.clone()),
            redeliveries: metrics::counter!(names::GROUP_REDELIVERIES, "group" => group.clone()),
            acks: metrics::counter!(names::GROUP_ACKS, "group" => group.clone()),
            pending: metrics::gauge!(names::GROUP_PENDING, "group" => group.clone()),
            members: metrics::gauge!(names::GROUP_MEMBERS, "group" => group),
        }
    }

    /// An event was handed to a member (`attempt` > 1: again).
    pub(super) fn delivered(&self, attempt: u32) {
        self.deliveries.increment(1);
        if attempt > 1 {
            self.redeliveries.increment(1);
        }
    }

    /// A member acknowledged an event (not a repeated acknowledgement).
    pub(super) fn acknowledged(&self) {
        self.acks.increment(1);
    }

    /// What the scheduler holds now.
    pub(super) fn holding(&self, pending: usize, members: usize) {
        self.pending.set(pending as f64);
        self.members.set(members as f64);
    }
}

impl Drop for GroupMetrics {
    /// why: a stopped scheduler (no member for the linger time, the group deleted)
    /// holds nothing on this replica.
    fn drop(&mut self) {
        self.holding(0, 0);
    }
}
