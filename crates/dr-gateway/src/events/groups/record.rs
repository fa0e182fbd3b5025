//! The state a group keeps per ordering key, shared by every replica: which event
//! of the key is leased to which member until when, which are acknowledged, and
//! how often each was delivered. Pure transitions, so the rules are tested without
//! a store; a store writes a record only with compare-and-set on the revision it
//! was read at, which is what makes them hold across replicas.
//!
//! # Invariants
//! - At most one lease per key: one member at a time per order.
//! - An event is acknowledged at most once: [`KeyRecord::acknowledge`] needs the
//!   live lease (same event, same lease number), clears it and records the event
//!   as done; a done event is never leased again.
//! - Lease numbers only grow, so a delivery id (event, lease number) is never
//!   reused: an acknowledgement from an earlier delivery of the same event is
//!   refused once the event was leased again.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::events::log::Sequence;

/// A lease: one event of the key, held by one member until a deadline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The leased event.
    pub seq: Sequence,
    /// This lease's number within the key (see [`KeyRecord::leases`]).
    pub number: u64,
    /// The member holding it.
    pub member: String,
    /// The gateway replica that member is connected to.
    pub replica: String,
    /// Wall-clock deadline, milliseconds since the Unix epoch.
    pub deadline_ms: i64,
}

impl Lease {
    /// True while the deadline has not passed.
    pub fn is_live(&self, now_ms: i64) -> bool {
        now_ms < self.deadline_ms
    }
}

/// See the module docs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    /// Every event of this key at or below this sequence is done.
    #[serde(default)]
    pub done_through: Sequence,
    /// Done events above `done_through`: sequence → number of the lease whose
    /// acknowledgement completed it.
    #[serde(default)]
    pub done: BTreeMap<Sequence, u64>,
    /// The current lease, if any (possibly expired: anyone may take it over).
    #[serde(default)]
    pub lease: Option<Lease>,
    /// Deliveries started per event not yet done.
    #[serde(default)]
    pub attempts: BTreeMap<Sequence, u32>,
    /// Leases granted on this key so far; the next one gets this number plus one.
    #[serde(default)]
    pub leases: u64,
    /// Newest DR `createdTime` (µs since the epoch) among acknowledged events.
    #[serde(default)]
    pub newest_acked_created_us: Option<i64>,
}

/// What a scheduler asks for when it leases an event.
#[derive(Debug, Clone, Copy)]
pub struct LeaseRequest<'a> {
    /// The event.
    pub seq: Sequence,
    /// Its DR `createdTime`, µs since the epoch.
    pub created_us: i64,
    /// The member that will hold it.
    pub member: &'a str,
    /// The replica that member is on.
    pub replica: &'a str,
    /// Wall-clock now, ms since the epoch.
    pub now_ms: i64,
    /// Wall-clock deadline, ms since the epoch.
    pub deadline_ms: i64,
}

/// A lease just granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Granted {
    /// The lease number (part of the delivery id).
    pub number: u64,
    /// Which delivery of the event this is (1 = first).
    pub attempt: u32,
    /// An event of this key created later was already acknowledged.
    pub late: bool,
}

/// Why a transition did not apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The event is already done.
    Done,
    /// Another lease is live.
    Leased,
    /// The caller does not hold the lease it names.
    NotHeld,
}

impl KeyRecord {
    /// True when the event at `seq` is done.
    pub fn is_done(&self, seq: Sequence) -> bool {
        seq <= self.done_through || self.done.contains_key(&seq)
    }

    /// The lease, if it is live at `now_ms`.
    pub fn live_lease(&self, now_ms: i64) -> Option<&Lease> {
        self.lease.as_ref().filter(|l| l.is_live(now_ms))
    }

    /// True when `(seq, number)` is the current lease (expired or not: a lease
    /// nobody took over may still be acknowledged, extended or handed back).
    pub fn holds(&self, seq: Sequence, number: u64) -> bool {
        self.lease
            .as_ref()
            .is_some_and(|l| l.seq == seq && l.number == number)
    }

    /// Leases the event `req.seq` to `req.member` until `req.deadline_ms`, taking
    /// over an expired lease. `floor` (every event at or below it is done)
    /// compacts the record on the way.
    pub fn grant(&mut self, req: &LeaseRequest<'_>, floor: Sequence) -> Result<Granted, Refused> {
        let LeaseRequest {
            seq,
            created_us,
            member,
            replica,
            now_ms,
            deadline_ms,
        } = *req;
        self.compact(floor);
        if self.is_done(seq) {
            return Err(Refused::Done);
        }
        if self.live_lease(now_ms).is_some() {
            return Err(Refused::Leased);
        }
        self.leases += 1;
        let attempt = self.attempts.entry(seq).or_insert(0);
        *attempt = attempt.saturating_add(1);
        let attempt = *attempt;
        self.lease = Some(Lease {
            seq,
            number: self.leases,
            member: member.to_owned(),
            replica: replica.to_owned(),
            deadline_ms,
        });
        Ok(Granted {
            number: self.leases,
            attempt,
            late: self
                .newest_acked_created_us
                .is_some_and(|newest| created_us < newest),
        })
    }

    /// Completes the event under lease `(seq, number)`. `Ok(false)` when that lease
    /// already completed it (a repeated acknowledgement): nothing changes.
    pub fn acknowledge(
        &mut self,
        seq: Sequence,
        number: u64,
        created_us: i64,
        floor: Sequence,
    ) -> Result<bool, Refused> {
        if self.done.get(&seq) == Some(&number) {
            return Ok(false);
        }
        if !self.holds(seq, number) {
            return Err(Refused::NotHeld);
        }
        self.lease = None;
        self.attempts.remove(&seq);
        self.done.insert(seq, number);
        self.newest_acked_created_us = Some(
            self.newest_acked_created_us
                .map_or(created_us, |n| n.max(created_us)),
        );
        self.compact(floor);
        Ok(true)
    }

    /// Hands the event under lease `(seq, number)` back: the next member may take it.
    pub fn release(&mut self, seq: Sequence, number: u64) -> Result<(), Refused> {
        if !self.holds(seq, number) {
            return Err(Refused::NotHeld);
        }
        self.lease = None;
        Ok(())
    }

    /// Moves the deadline of lease `(seq, number)` to `deadline_ms`.
    pub fn extend(&mut self, seq: Sequence, number: u64, deadline_ms: i64) -> Result<(), Refused> {
        match self.lease.as_mut() {
            Some(l) if l.seq == seq && l.number == number => {
                l.deadline_ms = deadline_ms;
                Ok(())
            }
            _ => Err(Refused::NotHeld),
        }
    }

    /// Forgets what `floor` already says: done entries and attempts at or below it.
    pub fn compact(&mut self, floor: Sequence) {
        if floor <= self.done_through {
            return;
        }
        self.done_through = floor;
        self.done = self.done.split_off(&(floor + 1));
        self.attempts = self.attempts.split_off(&(floor + 1));
    }

    /// True when the record says nothing beyond what the floor says (no lease, no
    /// done events or attempts above it): a store may forget it.
    pub fn is_idle(&self) -> bool {
        self.lease.is_none() && self.done.is_empty() && self.attempts.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_000_000;

    fn at(seq: Sequence, created_us: i64, member: &str, now_ms: i64) -> LeaseRequest<'_> {
        LeaseRequest {
            seq,
            created_us,
            member,
            replica: "replica",
            now_ms,
            deadline_ms: now_ms + 1000,
        }
    }

    fn grant(r: &mut KeyRecord, seq: Sequence, member: &str) -> Result<Granted, Refused> {
        r.grant(&at(seq, 0, member, NOW), 0)
    }

    #[test]
    fn one_lease_at_a_time_and_an_expired_one_is_taken_over() {
        let mut r = KeyRecord::default();
        let first = grant(&mut r, 5, "a").unwrap();
        assert_eq!((first.number, first.attempt), (1, 1));
        assert_eq!(grant(&mut r, 5, "b"), Err(Refused::Leased));
        assert_eq!(grant(&mut r, 6, "b"), Err(Refused::Leased));
        // After the deadline, b takes over: a new number, the second attempt.
        let again = r.grant(&at(5, 0, "b", NOW + 1000), 0).unwrap();
        assert_eq!((again.number, again.attempt), (2, 2));
        // a's acknowledgement no longer counts; b's does, once.
        assert_eq!(r.acknowledge(5, 1, 0, 0), Err(Refused::NotHeld));
        assert_eq!(r.acknowledge(5, 2, 0, 0), Ok(true));
        assert_eq!(r.acknowledge(5, 2, 0, 0), Ok(false), "repeat is harmless");
        assert_eq!(r.acknowledge(5, 1, 0, 0), Err(Refused::NotHeld));
        assert_eq!(grant(&mut r, 5, "c"), Err(Refused::Done));
    }

    #[test]
    fn a_released_event_is_leased_again_under_a_new_number() {
        let mut r = KeyRecord::default();
        let g = grant(&mut r, 1, "a").unwrap();
        assert_eq!(r.release(1, g.number + 1), Err(Refused::NotHeld));
        r.release(1, g.number).unwrap();
        let g2 = grant(&mut r, 1, "b").unwrap();
        assert_eq!((g2.number, g2.attempt), (2, 2));
        assert_eq!(r.extend(1, g.number, NOW + 5000), Err(Refused::NotHeld));
        r.extend(1, g2.number, NOW + 5000).unwrap();
        assert_eq!(r.lease.as_ref().unwrap().deadline_ms, NOW + 5000);
    }

    #[test]
    fn compaction_forgets_what_the_floor_covers_but_still_refuses_done_events() {
        let mut r = KeyRecord::default();
        for seq in [3, 7, 9] {
            let g = grant(&mut r, seq, "a").unwrap();
            r.acknowledge(seq, g.number, 0, 0).unwrap();
        }
        r.compact(7);
        assert_eq!(r.done_through, 7);
        assert_eq!(r.done.keys().copied().collect::<Vec<_>>(), [9]);
        assert!(r.is_done(3) && r.is_done(7) && r.is_done(9) && !r.is_done(8));
        assert_eq!(grant(&mut r, 3, "a"), Err(Refused::Done));
        r.compact(9);
        assert!(r.is_idle());
    }

    #[test]
    fn an_event_created_before_an_acknowledged_one_is_late() {
        let mut r = KeyRecord::default();
        let g = r.grant(&at(2, 200, "a", NOW), 0).unwrap();
        assert!(!g.late);
        r.acknowledge(2, g.number, 200, 0).unwrap();
        let late = r.grant(&at(3, 100, "a", NOW), 0).unwrap();
        assert!(late.late);
    }

    #[test]
    fn a_record_round_trips_through_json() {
        let mut r = KeyRecord::default();
        let g = grant(&mut r, u64::MAX - 1, "a").unwrap();
        r.acknowledge(u64::MAX - 1, g.number, i64::MIN, 0).unwrap();
        grant(&mut r, 12, "b").unwrap();
        let back: KeyRecord = serde_json::from_slice(&serde_json::to_vec(&r).unwrap()).unwrap();
        assert_eq!(back, r);
    }
}
