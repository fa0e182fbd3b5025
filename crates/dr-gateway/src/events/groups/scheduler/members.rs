//! Members joining and leaving, and their requests: acknowledge, hand back, extend.

use std::collections::HashSet;

use tokio::time::Instant;

use super::*;

impl Scheduler {
    pub(super) async fn handle(&mut self, command: Command) {
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

    pub(super) fn join(&mut self, options: MemberOptions) -> Result<Joined, GroupError> {
        if self.members.len() >= self.shared.config.max_members {
            return Err(GroupError::MembersLimit(self.shared.config.max_members));
        }
        self.next_member += 1;
        let key = self.next_member;
        let member_id = crate::random_id::uuid().simple().to_string();
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
    pub(super) async fn leave(&mut self, member: MemberKey) {
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
    pub(super) async fn end_all(&mut self, reason: EndReason) {
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

    pub(super) async fn publish_members(&mut self, now: bool) {
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

    pub(super) async fn settle(
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
    pub(super) fn held_by(
        &self,
        member: MemberKey,
        text: &str,
    ) -> Result<DeliveryId, RejectReason> {
        let id = DeliveryId::decode(text)
            .filter(|id| id.incarnation == self.def.incarnation)
            .ok_or(RejectReason::Unknown)?;
        match self.leases.get(&id) {
            Some(lease) if lease.member == member => Ok(id),
            _ => Err(RejectReason::NotHeld),
        }
    }

    pub(super) async fn acknowledge(
        &mut self,
        member: MemberKey,
        text: &str,
    ) -> Result<(), RejectReason> {
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
                if fresh {
                    self.metrics.acknowledged();
                }
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

    pub(super) async fn hand_back(
        &mut self,
        member: MemberKey,
        text: &str,
    ) -> Result<(), RejectReason> {
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

    pub(super) async fn extend(
        &mut self,
        member: MemberKey,
        text: &str,
    ) -> Result<(), RejectReason> {
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
}
