//! Leasing ready keys to members with room, and every compare-and-set on a key's
//! record (with a re-read when someone else wrote first).

use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio::time::Instant;

use super::*;

impl Scheduler {
    pub(super) fn pick_member(&mut self) -> Option<MemberKey> {
        let after = self
            .members
            .range(self.round_robin.saturating_add(1)..)
            .chain(self.members.range(..=self.round_robin))
            .find(|(_, m)| m.has_room())
            .map(|(k, _)| *k)?;
        self.round_robin = after;
        Some(after)
    }

    pub(super) async fn dispatch(&mut self) {
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
            // why: with the in-memory store nothing here waits, so a long backlog
            // would hold the worker thread; give other tasks their turn.
            tokio::task::coop::consume_budget().await;
        }
    }

    /// Reads the key's record from the store into the cache.
    pub(super) async fn refresh(&mut self, key: &Arc<str>) -> Result<(), LeaseStop> {
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
    pub(super) async fn lease(
        &mut self,
        key: &Arc<str>,
        member: MemberKey,
    ) -> Result<(), LeaseStop> {
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
            Ok(written) => self.remember_written(key, written, record),
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
        if granted.attempt > 1 {
            tracing::debug!(key = %key, seq, attempt = granted.attempt, "delivering again");
        }
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
        if sent {
            self.metrics.delivered(granted.attempt);
        } else {
            self.release_lease(id).await;
        }
        self.evaluate(key);
        Ok(())
    }

    /// Forgets a local lease (the record is left as it is).
    pub(super) fn drop_local_lease(&mut self, id: DeliveryId) {
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
    pub(super) async fn release_lease(&mut self, id: DeliveryId) -> bool {
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

    /// Caches what a successful compare-and-set left in the store for `key`, so
    /// the next change starts from it without a read.
    fn remember_written(&mut self, key: &Arc<str>, written: Written, record: KeyRecord) {
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

    /// Applies `change` to `key`'s record with compare-and-set, re-reading on
    /// conflict. `Err` when the store failed; `Ok(Err(_))` when the change was
    /// refused by the record.
    pub(super) async fn change_record<T>(
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
                    self.remember_written(key, written, record);
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
}
