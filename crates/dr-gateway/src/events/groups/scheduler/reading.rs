//! Reading the log into the scheduler (within the memory bound), and the group's
//! position: moved past the done prefix, saved, and taken from other replicas along
//! with their changes to key records.

use std::{collections::HashSet, sync::Arc};

use chrono::{DateTime, Utc};
use tokio::time::Instant;

use super::*;

impl Scheduler {
    pub(super) async fn read_log(&mut self) {
        if !self.can_read() {
            return;
        }
        self.caught_up = false;
        while self.tracked.len() < self.shared.config.max_pending {
            let batch = match self.tail.next_batch().await {
                Ok(batch) => batch,
                Err(LogError::Expired { oldest, .. }) => {
                    let resume = oldest.saturating_sub(1);
                    let lost = resume.saturating_sub(self.tail.position());
                    tracing::error!(
                        lost,
                        from = self.tail.position(),
                        "the event log dropped events this group had not read; skipping them"
                    );
                    self.position.skipped = self.position.skipped.saturating_add(lost);
                    self.position_dirty = true;
                    self.tail = Tail::new(self.shared.log.clone(), resume);
                    continue;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "reading the event log failed; retrying");
                    self.caught_up = true;
                    self.log_retry_at = Some(Instant::now() + self.log_backoff);
                    self.log_backoff = (self.log_backoff * 2).min(MAX_BACKOFF);
                    return;
                }
            };
            self.log_retry_at = None;
            self.log_backoff = MIN_BACKOFF;
            if batch.is_empty() {
                self.caught_up = true;
                break;
            }
            let mut touched = HashSet::new();
            for event in batch {
                if let Some(key) = self.take_in(event) {
                    touched.insert(key);
                }
            }
            for key in touched {
                self.evaluate(&key);
            }
        }
    }

    /// Tracks a newly read event; returns its key when it waits for delivery.
    pub(super) fn take_in(&mut self, event: Arc<StoredEvent>) -> Option<Arc<str>> {
        if event.seq <= self.position.floor || !self.filter.matches(&event.meta) {
            return None;
        }
        let key: Arc<str> = Arc::from(ordering_key(&event.meta));
        let window = chrono::Duration::from_std(self.def.settings.reorder_window())
            .unwrap_or(chrono::Duration::MAX);
        let due = event
            .received_at
            .checked_add_signed(window)
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        let created = event.meta.created_time;
        let seq = event.seq;
        let state = self.keys.entry(key.clone()).or_insert_with(KeyState::new);
        state.queue.insert((created, seq));
        state.holds.insert((due, seq));
        self.tracked.insert(
            seq,
            Tracked {
                key: key.clone(),
                created,
                due,
                event: Some(event),
            },
        );
        Some(key)
    }

    /// Moves the position past the done prefix of what was read.
    pub(super) fn advance_floor(&mut self) {
        let mut floor = self.position.floor;
        loop {
            let Some((&seq, tracked)) = self.tracked.first_key_value() else {
                floor = floor.max(self.tail.position());
                break;
            };
            if !tracked.is_done() {
                floor = floor.max(seq.saturating_sub(1));
                break;
            }
            self.tracked.pop_first();
            floor = floor.max(seq);
        }
        if floor > self.position.floor {
            self.position.floor = floor;
            self.position_dirty = true;
        }
    }

    pub(super) async fn flush_position(&mut self, force: bool) {
        if !self.position_dirty
            || (!force && self.position_flushed_at.elapsed() < self.shared.config.position_flush)
        {
            return;
        }
        self.position_flushed_at = Instant::now();
        match self
            .shared
            .store
            .advance_position(&self.def, self.position)
            .await
        {
            Ok(stored) => {
                self.position_dirty = false;
                if stored.floor > self.position.floor {
                    self.take_position(stored);
                }
            }
            Err(e) => tracing::debug!(error = %e, "saving the group position failed; retrying"),
        }
    }

    /// Another replica moved the position: everything at or below it is done.
    pub(super) fn take_position(&mut self, position: Position) {
        if position.floor <= self.position.floor {
            return;
        }
        self.position.floor = position.floor;
        self.position.skipped = self.position.skipped.max(position.skipped);
        let below: Vec<Sequence> = self
            .tracked
            .range(..=position.floor)
            .map(|(seq, _)| *seq)
            .collect();
        let mut touched = HashSet::new();
        for seq in below {
            if let Some(t) = self.tracked.get(&seq) {
                touched.insert(t.key.clone());
            }
            self.mark_done(seq);
        }
        for key in touched {
            self.evaluate(&key);
        }
        if self.tail.position() < position.floor {
            self.tail = Tail::new(self.shared.log.clone(), position.floor);
        }
    }

    pub(super) fn apply_change(&mut self, change: StoreChange) {
        match change {
            StoreChange::Key { key, record } => {
                let key: Arc<str> = Arc::from(key);
                let Some(state) = self.keys.get_mut(&key) else {
                    return;
                };
                match record {
                    Some(v) => {
                        if state.record.revision().is_some_and(|r| r >= v.revision) {
                            return;
                        }
                        state.record = Cached::Present(v);
                    }
                    None => state.record = Cached::Unknown,
                }
                self.evaluate(&key);
            }
            StoreChange::Position(position) => self.take_position(position),
            StoreChange::Resync => self.resync(),
            StoreChange::GroupDeleted => {}
        }
    }

    pub(super) fn resync(&mut self) {
        for state in self.keys.values_mut() {
            state.record = Cached::Unknown;
        }
        let keys: Vec<Arc<str>> = self.keys.keys().cloned().collect();
        for key in keys {
            self.evaluate(&key);
        }
    }
}
