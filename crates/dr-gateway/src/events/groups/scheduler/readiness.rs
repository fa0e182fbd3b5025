//! When a key is ready: its first event not done, no live lease, its earliest
//! reorder hold over; otherwise a timer for when that may change.

use std::sync::Arc;

use tokio::time::Instant;

use super::*;

impl Scheduler {
    pub(super) fn set_timer(&mut self, key: &Arc<str>, at: Instant) {
        if let Some(state) = self.keys.get_mut(key) {
            if let Some(old) = state.timer.take() {
                self.timers.remove(&(old, key.clone()));
            }
            state.timer = Some(at);
            self.timers.insert((at, key.clone()));
        }
    }

    pub(super) fn fire_timers(&mut self) {
        let now = Instant::now();
        while let Some((at, key)) = self.timers.first().cloned() {
            if at > now {
                break;
            }
            self.timers.remove(&(at, key.clone()));
            if let Some(state) = self.keys.get_mut(&key) {
                if state.timer == Some(at) {
                    state.timer = None;
                }
            }
            self.evaluate(&key);
        }
        if self.store_retry_at.is_some_and(|at| at <= now) {
            self.store_retry_at = None;
        }
    }

    /// Marks the event done: no longer waiting, its memory freed.
    pub(super) fn mark_done(&mut self, seq: Sequence) {
        let Some(t) = self.tracked.get_mut(&seq) else {
            return;
        };
        if t.event.take().is_none() {
            return;
        }
        let (key, created, due) = (t.key.clone(), t.created, t.due);
        if let Some(state) = self.keys.get_mut(&key) {
            state.queue.remove(&(created, seq));
            state.holds.remove(&(due, seq));
        }
    }

    /// Decides whether `key` is ready, waits (and until when), or is finished.
    pub(super) fn evaluate(&mut self, key: &Arc<str>) {
        let now_ms = self.now_ms();
        let Some(state) = self.keys.get_mut(key) else {
            return;
        };
        if let Some(head) = state.ready.take() {
            self.ready.remove(&(head, key.clone()));
        }
        // Events the record says are done leave the queue.
        let done: Vec<Sequence> = match state.record.record() {
            Some(record) => state
                .queue
                .iter()
                .map(|(_, seq)| *seq)
                .filter(|seq| record.is_done(*seq))
                .collect(),
            None => Vec::new(),
        };
        for seq in done {
            self.mark_done(seq);
        }
        let Some(state) = self.keys.get_mut(key) else {
            return;
        };
        // A local lease whose deadline passed is lost to its member.
        if let Some(id) = state.local_lease {
            match self.leases.get(&id) {
                Some(lease) if lease.deadline_ms > now_ms => {
                    let at = lease.deadline_ms;
                    let at = self.instant_at_ms(at);
                    self.set_timer(key, at);
                    return;
                }
                _ => self.drop_local_lease(id),
            }
        }
        let Some(state) = self.keys.get_mut(key) else {
            return;
        };
        let Some(&(_, head)) = state.queue.first() else {
            if let Some(old) = state.timer.take() {
                self.timers.remove(&(old, key.clone()));
            }
            self.keys.remove(key);
            return;
        };
        if let Some(lease) = state.record.record().and_then(|r| r.live_lease(now_ms)) {
            let at = lease.deadline_ms;
            let at = self.instant_at_ms(at);
            self.set_timer(key, at);
            return;
        }
        let hold_ends = state.holds.first().map(|(due, _)| *due);
        if let Some(due) = hold_ends {
            if due.timestamp_millis() > now_ms {
                let at = self.instant_at(due);
                self.set_timer(key, at);
                return;
            }
        }
        state.ready = Some(head);
        self.ready.insert((head, key.clone()));
    }
}
