//! What a consumer group is: its id, settings, identity ([`GroupDef`]) and
//! position ([`Position`]), in the form the group stores keep (JSON in JetStream).

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::events::{log::Sequence, EventFilter, FilterError};

/// Longest group id.
pub const MAX_GROUP_ID_LEN: usize = 64;

/// Checks a group id: 1 to 64 ASCII letters, digits, `_` or `-` (it names keys in
/// the JetStream buckets, where dots and wildcards mean something).
pub fn validate_group_id(id: &str) -> Result<(), &'static str> {
    if id.is_empty() {
        return Err("must not be empty");
    }
    if id.len() > MAX_GROUP_ID_LEN {
        return Err("must be at most 64 characters");
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err("must be letters, digits, '_' or '-'");
    }
    Ok(())
}

/// The event filter as given (types, order ids, live mode), kept to rebuild the
/// [`EventFilter`] wherever the group is loaded.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilterSpec {
    /// Event type patterns.
    #[serde(default)]
    pub types: Vec<String>,
    /// DR order ids.
    #[serde(default)]
    pub order_ids: Vec<String>,
    /// Live (true) or test (false) events only.
    #[serde(default)]
    pub live_mode: Option<bool>,
}

impl FilterSpec {
    /// The filter this spec describes (validated).
    pub fn build(&self) -> Result<EventFilter, FilterError> {
        EventFilter::new(&self.types, &self.order_ids, self.live_mode)
    }
}

/// Where a group starts, as asked for at creation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum StartSpec {
    /// Events stored after the group was created.
    #[default]
    Now,
    /// The oldest event the log held when the group was created.
    Oldest,
    /// The first event the gateway received at or after this time (RFC 3339).
    AtTime(String),
}

/// A group's settings, fixed at creation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupSettings {
    /// Which events the group receives.
    #[serde(default)]
    pub filter: FilterSpec,
    /// Time a member has to acknowledge a delivery, in milliseconds.
    pub ack_deadline_ms: u64,
    /// How long each event is held after the gateway received it, in milliseconds.
    pub reorder_window_ms: u64,
    /// Where the group started.
    #[serde(default)]
    pub start: StartSpec,
}

impl GroupSettings {
    /// The ack deadline.
    pub fn ack_deadline(&self) -> Duration {
        Duration::from_millis(self.ack_deadline_ms)
    }

    /// The reorder window.
    pub fn reorder_window(&self) -> Duration {
        Duration::from_millis(self.reorder_window_ms)
    }
}

/// A group as stored: created once, never changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupDef {
    /// The group id.
    pub id: String,
    /// Random per creation, so the state and delivery ids of a deleted group with
    /// the same id are never taken for this one's.
    pub incarnation: u64,
    /// Settings.
    pub settings: GroupSettings,
    /// When it was created.
    pub created: DateTime<Utc>,
    /// The log position the group started after.
    pub start_after: Sequence,
}

/// How far a group has got: every event at or below `floor` is done (acknowledged
/// or not matching the filter).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// See the type docs.
    pub floor: Sequence,
    /// Events the log dropped before the group read them.
    #[serde(default)]
    pub skipped: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_ids_are_plain_tokens() {
        for ok in ["notifier", "a", "svc_1-prod", &"x".repeat(64)] {
            assert!(validate_group_id(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a.b", "a b", "a*", "a>", &"x".repeat(65), "é"] {
            assert!(validate_group_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_definition_round_trips_through_json() {
        let def = GroupDef {
            id: "g".into(),
            incarnation: u64::MAX,
            settings: GroupSettings {
                filter: FilterSpec {
                    types: vec!["order.*".into()],
                    order_ids: vec![],
                    live_mode: Some(false),
                },
                ack_deadline_ms: 30_000,
                reorder_window_ms: 2_000,
                start: StartSpec::AtTime("2024-01-01T00:00:00Z".into()),
            },
            created: Utc::now(),
            start_after: 42,
        };
        let json = serde_json::to_vec(&def).unwrap();
        let back: GroupDef = serde_json::from_slice(&json).unwrap();
        assert_eq!(back, def);
    }
}
