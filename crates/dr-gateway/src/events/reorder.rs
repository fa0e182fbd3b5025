//! The reorder window of a `Subscribe` stream: events are held for a while after
//! the gateway received them and handed out so that, within one ordering key
//! ([`super::ordering`]), DR's creation order wins over arrival order.
//!
//! # Rule
//! Each event is due `window` after the gateway received it. When the earliest-due
//! event is due, it is handed out together with every held event of its key that
//! DR created before it (they arrived later, but must come first), in creation
//! order. So two events of one key that arrive less than `window` apart come out in
//! creation order, and no event is held longer than `window`.
//!
//! # Bound
//! The caller stops feeding the buffer at [`MAX_HELD`] events and waits for the
//! next due time instead; the held events are the only memory it adds (each an
//! `Arc` of an event the log holds anyway).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::Arc,
};

use chrono::{DateTime, Utc};

use super::{
    log::{Sequence, StoredEvent},
    ordering::{creation_order, ordering_key, CreationOrder},
};

/// Most events one buffer holds; the subscription reads no further until some are due.
pub const MAX_HELD: usize = 10_000;

#[derive(Debug)]
struct Held {
    event: Arc<StoredEvent>,
    key: String,
    due: DateTime<Utc>,
}

/// See the module docs.
#[derive(Debug)]
pub struct ReorderBuffer {
    window: chrono::Duration,
    /// Held events by sequence (the oldest held is the first).
    held: BTreeMap<Sequence, Held>,
    /// (due time, sequence) of every held event.
    by_due: BTreeSet<(DateTime<Utc>, Sequence)>,
    /// Held events of each key, in creation order.
    by_key: HashMap<String, BTreeSet<CreationOrder>>,
}

impl ReorderBuffer {
    /// An empty buffer holding each event for `window`.
    pub fn new(window: std::time::Duration) -> Self {
        Self {
            window: chrono::Duration::from_std(window).unwrap_or(chrono::Duration::MAX),
            held: BTreeMap::new(),
            by_due: BTreeSet::new(),
            by_key: HashMap::new(),
        }
    }

    /// Holds `event` until it is due.
    pub fn push(&mut self, event: Arc<StoredEvent>) {
        let due = event
            .received_at
            .checked_add_signed(self.window)
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        let key = ordering_key(&event.meta);
        self.by_due.insert((due, event.seq));
        self.by_key
            .entry(key.clone())
            .or_default()
            .insert(creation_order(&event.meta, event.seq));
        self.held.insert(event.seq, Held { event, key, due });
    }

    /// Every event due at `now`, with the events of their keys created before them,
    /// in the order to hand them out.
    pub fn pop_due(&mut self, now: DateTime<Utc>) -> Vec<Arc<StoredEvent>> {
        let mut out = Vec::new();
        while let Some(&(due, seq)) = self.by_due.first() {
            if due > now {
                break;
            }
            let Some(first) = self.held.get(&seq) else {
                // why: indexes are kept in step; never loop on a stale entry.
                self.by_due.remove(&(due, seq));
                continue;
            };
            let key = first.key.clone();
            let upto = creation_order(&first.event.meta, seq);
            let Some(queue) = self.by_key.get_mut(&key) else {
                self.by_due.remove(&(due, seq));
                continue;
            };
            let ahead: Vec<CreationOrder> = queue.range(..=upto).copied().collect();
            for order in ahead {
                queue.remove(&order);
                if let Some(held) = self.held.remove(&order.1) {
                    self.by_due.remove(&(held.due, order.1));
                    out.push(held.event);
                }
            }
            if queue.is_empty() {
                self.by_key.remove(&key);
            }
        }
        out
    }

    /// When the next held event is due.
    pub fn next_due(&self) -> Option<DateTime<Utc>> {
        self.by_due.first().map(|(due, _)| *due)
    }

    /// The oldest sequence still held: every event before it has been handed out.
    pub fn oldest_held(&self) -> Option<Sequence> {
        self.held.keys().next().copied()
    }

    /// Number of held events.
    pub fn len(&self) -> usize {
        self.held.len()
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{Envelope, EventEncoder};
    use bytes::Bytes;
    use std::time::Duration;

    fn at(ms: i64) -> DateTime<Utc> {
        DateTime::<Utc>::from_timestamp_millis(1_700_000_000_000 + ms).unwrap()
    }

    /// Event `seq` of `order`, created at `created_ms`, received at `received_ms`.
    fn ev(seq: Sequence, order: &str, created_ms: i64, received_ms: i64) -> Arc<StoredEvent> {
        let body = format!(
            r#"{{"id":"e{seq}","type":"order.charge.capture.complete","createdTime":"{}",
                "data":{{"object":{{"orderId":"{order}"}}}}}}"#,
            at(created_ms).to_rfc3339()
        );
        let env = Envelope::parse(Bytes::from(body)).unwrap();
        Arc::new(StoredEvent::build(
            seq,
            1,
            at(received_ms),
            env,
            &EventEncoder::default(),
        ))
    }

    fn seqs(events: &[Arc<StoredEvent>]) -> Vec<Sequence> {
        events.iter().map(|e| e.seq).collect()
    }

    #[test]
    fn an_event_created_earlier_but_received_later_comes_out_first() {
        let mut buf = ReorderBuffer::new(Duration::from_millis(1000));
        buf.push(ev(1, "o1", 20, 100)); // created later, arrived first
        buf.push(ev(2, "o2", 5, 150));
        buf.push(ev(3, "o1", 10, 400)); // created earlier, arrived 300 ms later
        assert!(
            buf.pop_due(at(1099)).is_empty(),
            "nothing due before the window"
        );
        assert_eq!(seqs(&buf.pop_due(at(1100))), [3, 1]);
        assert_eq!(buf.oldest_held(), Some(2));
        assert_eq!(seqs(&buf.pop_due(at(1150))), [2]);
        assert!(buf.is_empty());
        assert_eq!(buf.next_due(), None);
    }

    #[test]
    fn an_event_arriving_after_the_window_cannot_overtake() {
        let mut buf = ReorderBuffer::new(Duration::from_millis(100));
        buf.push(ev(1, "o1", 20, 100));
        assert_eq!(seqs(&buf.pop_due(at(200))), [1]);
        buf.push(ev(2, "o1", 10, 250));
        assert_eq!(seqs(&buf.pop_due(at(350))), [2]);
    }

    #[test]
    fn equal_creation_times_keep_arrival_order_and_other_keys_are_untouched() {
        let mut buf = ReorderBuffer::new(Duration::from_millis(100));
        buf.push(ev(1, "o1", 10, 0));
        buf.push(ev(2, "o2", 0, 10));
        buf.push(ev(3, "o1", 10, 20));
        assert_eq!(seqs(&buf.pop_due(at(100))), [1]);
        assert_eq!(buf.next_due(), Some(at(110)));
        assert_eq!(seqs(&buf.pop_due(at(1000))), [2, 3]);
    }
}
