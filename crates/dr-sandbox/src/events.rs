//! The event store: DR's event envelope, kept 30 days by the sandbox clock for
//! `GET /events` (docs/digital-river.md §3).

use std::collections::HashMap;

use chrono::{DateTime, Duration, Utc};
use serde_json::{json, Map, Value};

use super::clock::fmt_event_time;

/// `digitalriverVersion` of every event (DR's pages "Capturing and cancelling charges", "Payment reauthorizations", "Disputes and chargebacks").
pub(crate) const DR_VERSION: &str = "2021-12-13";

/// How long events stay listable ("extending back 30 days", docs/digital-river.md §3.1).
pub(crate) const RETENTION_DAYS: i64 = 30;

/// Hard cap on stored events; the oldest go first (keeps a long standalone run bounded).
const MAX_EVENTS: usize = 200_000;

/// One stored event.
#[derive(Debug, Clone)]
pub(crate) struct StoredEvent {
    /// Event id.
    pub id: String,
    /// Event type.
    pub event_type: String,
    /// Creation time on the sandbox clock.
    pub created: DateTime<Utc>,
    /// The envelope's `liveMode`: only keys of the same mode list or read it.
    pub live_mode: bool,
    /// The full envelope as served and delivered.
    pub json: Value,
}

/// Builds a DR event envelope (docs/digital-river.md §3.2).
pub(crate) fn envelope(
    id: &str,
    event_type: &str,
    object: Value,
    previous: Option<Value>,
    live_mode: bool,
    created: DateTime<Utc>,
    webhook_ids: &[String],
) -> Value {
    let mut data = Map::new();
    data.insert("object".into(), object);
    if let Some(p) = previous {
        data.insert("previousAttributes".into(), p);
    }
    let mut m = Map::new();
    m.insert("id".into(), json!(id));
    m.insert("type".into(), json!(event_type));
    m.insert("data".into(), Value::Object(data));
    m.insert("liveMode".into(), json!(live_mode));
    m.insert("createdTime".into(), json!(fmt_event_time(created)));
    if !webhook_ids.is_empty() {
        m.insert("webhookIds".into(), json!(webhook_ids));
    }
    m.insert("digitalriverVersion".into(), json!(DR_VERSION));
    Value::Object(m)
}

/// All events, in emission order (the order lists use, so equal timestamps stay ordered).
#[derive(Debug, Default)]
pub(crate) struct EventStore {
    events: Vec<StoredEvent>,
    index: HashMap<String, usize>,
}

impl EventStore {
    /// Appends an event. A duplicate id (custom events) replaces nothing: the first wins.
    /// Events past retention at `now` (and any beyond `MAX_EVENTS`) are dropped first.
    pub(crate) fn push(
        &mut self,
        id: String,
        event_type: String,
        created: DateTime<Utc>,
        json: Value,
        now: DateTime<Utc>,
    ) {
        if self.index.contains_key(&id) {
            return;
        }
        self.prune(now);
        self.index.insert(id.clone(), self.events.len());
        let live_mode = json
            .get("liveMode")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        self.events.push(StoredEvent {
            id,
            event_type,
            created,
            live_mode,
            json,
        });
    }

    fn prune(&mut self, now: DateTime<Utc>) {
        let cutoff = now - Duration::days(RETENTION_DAYS);
        let expired_head = self.events.first().is_some_and(|e| e.created <= cutoff);
        if !expired_head && self.events.len() < MAX_EVENTS {
            return;
        }
        let overflow = (self.events.len() + 1).saturating_sub(MAX_EVENTS);
        let mut dropped = 0usize;
        self.events.retain(|e| {
            let keep = e.created > cutoff && dropped >= overflow;
            if !keep {
                dropped += 1;
            }
            keep
        });
        self.index = self
            .events
            .iter()
            .enumerate()
            .map(|(i, e)| (e.id.clone(), i))
            .collect();
    }

    /// An event still within retention at `now`.
    pub(crate) fn get(&self, id: &str, now: DateTime<Utc>) -> Option<&StoredEvent> {
        let e = self.index.get(id).and_then(|&i| self.events.get(i))?;
        (e.created > now - Duration::days(RETENTION_DAYS)).then_some(e)
    }

    /// Events within retention, newest first.
    pub(crate) fn newest_first(&self, now: DateTime<Utc>) -> impl Iterator<Item = &StoredEvent> {
        let cutoff = now - Duration::days(RETENTION_DAYS);
        self.events.iter().rev().filter(move |e| e.created > cutoff)
    }

    /// Whether an id is taken.
    pub(crate) fn contains(&self, id: &str) -> bool {
        self.index.contains_key(id)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn expired_events_are_pruned_on_push() {
        let t0 = Utc::now();
        let mut store = EventStore::default();
        store.push("a".into(), "x".into(), t0, Value::Null, t0);
        store.push(
            "b".into(),
            "x".into(),
            t0 + Duration::days(10),
            Value::Null,
            t0,
        );
        let later = t0 + Duration::days(31);
        store.push("c".into(), "x".into(), later, Value::Null, later);
        assert!(!store.contains("a"), "a is past retention");
        assert!(store.get("b", later).is_some());
        assert_eq!(
            store
                .newest_first(later)
                .map(|e| e.id.as_str())
                .collect::<Vec<_>>(),
            ["c", "b"]
        );
    }
}
