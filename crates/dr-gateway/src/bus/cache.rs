//! The per-replica cache of decoded events: sequence → [`StoredEvent`], bounded by
//! count and approximate bytes, evicting the lowest sequences first (subscribers
//! mostly read the tail). Decoding (JSON parse, protobuf conversion, encoding) happens
//! once per event per replica; every local subscriber shares the `Arc`.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use crate::events::log::{Sequence, StoredEvent};

/// See the module docs.
#[derive(Debug)]
pub struct EventCache {
    events: BTreeMap<Sequence, Arc<StoredEvent>>,
    /// DR id → sequence of cached events (a fast path before the ids bucket).
    ids: HashMap<String, Sequence>,
    bytes: usize,
    max_events: usize,
    max_bytes: usize,
}

impl EventCache {
    /// An empty cache holding at most `max_events` events and about `max_bytes`.
    pub fn new(max_events: usize, max_bytes: usize) -> Self {
        Self {
            events: BTreeMap::new(),
            ids: HashMap::new(),
            bytes: 0,
            max_events: max_events.max(1),
            max_bytes,
        }
    }

    /// The cached event at `seq`.
    pub fn get(&self, seq: Sequence) -> Option<Arc<StoredEvent>> {
        self.events.get(&seq).cloned()
    }

    /// True when `seq` is cached.
    pub fn contains(&self, seq: Sequence) -> bool {
        self.events.contains_key(&seq)
    }

    /// The sequence of a cached event with this DR id.
    pub fn seq_of_id(&self, id: &str) -> Option<Sequence> {
        self.ids.get(id).copied()
    }

    /// Cached events with sequence in `from..=to`, in order.
    pub fn range(&self, from: Sequence, to: Sequence) -> Vec<Arc<StoredEvent>> {
        if from > to {
            return Vec::new();
        }
        self.events
            .range(from..=to)
            .map(|(_, e)| e.clone())
            .collect()
    }

    /// Adds an event (no-op when its sequence is cached), then evicts the lowest
    /// sequences beyond the bounds.
    pub fn insert(&mut self, event: Arc<StoredEvent>) {
        if self.events.contains_key(&event.seq) {
            return;
        }
        self.bytes += event.approx_size();
        self.ids.insert(event.meta.id.clone(), event.seq);
        self.events.insert(event.seq, event);
        while self.events.len() > self.max_events
            || (self.bytes > self.max_bytes && self.events.len() > 1)
        {
            let Some((_, old)) = self.events.pop_first() else {
                break;
            };
            self.bytes = self.bytes.saturating_sub(old.approx_size());
            if self.ids.get(&old.meta.id) == Some(&old.seq) {
                self.ids.remove(&old.meta.id);
            }
        }
    }

    /// Number of cached events.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{Envelope, EventEncoder};
    use bytes::Bytes;
    use chrono::Utc;

    fn stored(seq: Sequence, id: &str) -> Arc<StoredEvent> {
        let body = format!(
            r#"{{"id":"{id}","type":"order.accepted","createdTime":"2024-01-01T00:00:00Z","data":{{"object":{{}}}}}}"#
        );
        let env = Envelope::parse(Bytes::from(body)).unwrap();
        Arc::new(StoredEvent::build(
            seq,
            7,
            Utc::now(),
            env,
            &EventEncoder::default(),
        ))
    }

    #[test]
    fn the_lowest_sequences_are_evicted_first() {
        let mut cache = EventCache::new(2, usize::MAX);
        for (seq, id) in [(3, "c"), (1, "a"), (2, "b")] {
            cache.insert(stored(seq, id));
        }
        assert_eq!(cache.len(), 2);
        assert!(!cache.contains(1));
        assert_eq!(cache.seq_of_id("c"), Some(3));
        assert_eq!(cache.seq_of_id("a"), None);
        let seqs: Vec<_> = cache.range(1, 10).iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [2, 3]);
    }

    #[test]
    fn the_byte_bound_keeps_at_least_the_newest_event() {
        let mut cache = EventCache::new(100, 1);
        cache.insert(stored(1, "a"));
        cache.insert(stored(2, "b"));
        assert_eq!(cache.len(), 1);
        assert!(cache.contains(2));
    }
}
