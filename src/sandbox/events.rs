//! The event store: DR's event envelope, kept 30 days by the sandbox clock for
//! `GET /events` (dr-api.md §3).

use std::collections::HashMap;

use chrono::{DateTime, Duration, Utc};
use serde_json::{json, Map, Value};

use super::clock::fmt_event_time;

/// `digitalriverVersion` of every event (seeds 000, 001, 003).
pub const DR_VERSION: &str = "2021-12-13";

/// How long events stay listable ("extending back 30 days", dr-api.md §3.1).
pub const RETENTION_DAYS: i64 = 30;

/// One stored event.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    /// Event id.
    pub id: String,
    /// Event type.
    pub event_type: String,
    /// Creation time on the sandbox clock.
    pub created: DateTime<Utc>,
    /// The full envelope as served and delivered.
    pub json: Value,
}

/// Builds a DR event envelope (dr-api.md §3.2).
pub fn envelope(
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
pub struct EventStore {
    events: Vec<StoredEvent>,
    index: HashMap<String, usize>,
}

impl EventStore {
    /// Appends an event. A duplicate id (custom events) replaces nothing: the first wins.
    pub fn push(&mut self, id: String, event_type: String, created: DateTime<Utc>, json: Value) {
        if self.index.contains_key(&id) {
            return;
        }
        self.index.insert(id.clone(), self.events.len());
        self.events.push(StoredEvent {
            id,
            event_type,
            created,
            json,
        });
    }

    /// An event still within retention at `now`.
    pub fn get(&self, id: &str, now: DateTime<Utc>) -> Option<&StoredEvent> {
        let e = self.index.get(id).and_then(|&i| self.events.get(i))?;
        (e.created > now - Duration::days(RETENTION_DAYS)).then_some(e)
    }

    /// Events within retention, newest first.
    pub fn newest_first(&self, now: DateTime<Utc>) -> impl Iterator<Item = &StoredEvent> {
        let cutoff = now - Duration::days(RETENTION_DAYS);
        self.events.iter().rev().filter(move |e| e.created > cutoff)
    }

    /// Whether an id is taken.
    pub fn contains(&self, id: &str) -> bool {
        self.index.contains_key(id)
    }
}
