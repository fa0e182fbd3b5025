//! Subscriber filters: event-type globs (`order.charge.*`), order ids and live mode.

use std::collections::HashSet;

use super::envelope::EventMeta;

/// Most type patterns / order ids one filter may hold.
pub const MAX_FILTER_ENTRIES: usize = 100;

/// Why a filter was rejected; `field` names the request field for BadRequest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct FilterError {
    /// Request field, e.g. `filter.types[2]`.
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

/// An event-type pattern; `*` matches any run of characters (including dots).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypePattern {
    /// The pattern split at `*`; a single part means an exact name.
    parts: Vec<String>,
}

impl TypePattern {
    /// Parses a pattern: ASCII letters, digits, `.`, `_`, `-` and `*`, at most 200
    /// characters, not empty.
    pub fn parse(pattern: &str) -> Result<Self, String> {
        if pattern.is_empty() {
            return Err("must not be empty".into());
        }
        if pattern.len() > 200 {
            return Err("must be at most 200 characters".into());
        }
        if let Some(c) = pattern
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '*')))
        {
            return Err(format!(
                "invalid character {c:?}; use letters, digits, '.', '_', '-' and '*'"
            ));
        }
        Ok(Self {
            parts: pattern.split('*').map(str::to_owned).collect(),
        })
    }

    /// True when `name` matches.
    pub fn matches(&self, name: &str) -> bool {
        let (first, rest) = match self.parts.split_first() {
            Some(split) => split,
            None => return false,
        };
        if rest.is_empty() {
            return name == first;
        }
        let Some(mut remaining) = name.strip_prefix(first.as_str()) else {
            return false;
        };
        let (last, middle) = match rest.split_last() {
            Some(split) => split,
            None => return false,
        };
        for part in middle {
            match remaining.find(part.as_str()) {
                Some(at) => remaining = &remaining[at + part.len()..],
                None => return false,
            }
        }
        remaining.len() >= last.len() && remaining.ends_with(last.as_str())
    }
}

/// Which events a subscriber receives; empty lists match everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventFilter {
    types: Vec<TypePattern>,
    order_ids: HashSet<String>,
    live_mode: Option<bool>,
}

impl EventFilter {
    /// Builds and validates a filter.
    pub fn new(
        types: &[String],
        order_ids: &[String],
        live_mode: Option<bool>,
    ) -> Result<Self, FilterError> {
        if types.len() > MAX_FILTER_ENTRIES {
            return Err(FilterError {
                field: "filter.types".into(),
                reason: format!("at most {MAX_FILTER_ENTRIES} patterns"),
            });
        }
        if order_ids.len() > MAX_FILTER_ENTRIES {
            return Err(FilterError {
                field: "filter.order_ids".into(),
                reason: format!("at most {MAX_FILTER_ENTRIES} order ids"),
            });
        }
        let types = types
            .iter()
            .enumerate()
            .map(|(i, t)| {
                TypePattern::parse(t).map_err(|reason| FilterError {
                    field: format!("filter.types[{i}]"),
                    reason,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(i) = order_ids.iter().position(|id| id.trim().is_empty()) {
            return Err(FilterError {
                field: format!("filter.order_ids[{i}]"),
                reason: "must not be empty".into(),
            });
        }
        Ok(Self {
            types,
            order_ids: order_ids.iter().cloned().collect(),
            live_mode,
        })
    }

    /// True when the event passes every part of the filter.
    pub fn matches(&self, env: &EventMeta) -> bool {
        if self.live_mode.is_some_and(|live| live != env.live_mode) {
            return false;
        }
        if !self.types.is_empty() && !self.types.iter().any(|p| p.matches(&env.event_type)) {
            return false;
        }
        if !self.order_ids.is_empty()
            && !env
                .order_id
                .as_ref()
                .is_some_and(|id| self.order_ids.contains(id))
        {
            return false;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Envelope;
    use bytes::Bytes;

    fn env(t: &str, order: &str, live: bool) -> EventMeta {
        let body = format!(
            r#"{{"id":"e","type":"{t}","createdTime":"2024-01-01T00:00:00Z","liveMode":{live},
                "data":{{"object":{{"orderId":"{order}"}}}}}}"#
        );
        Envelope::parse(Bytes::from(body)).unwrap().into()
    }

    #[test]
    fn globs_match_as_documented() {
        let cases = [
            ("order.charge.*", "order.charge.capture.complete", true),
            ("order.charge.*", "order.charge.", true),
            ("order.charge.*", "order.chargeback", false),
            ("order.*.complete", "order.charge.capture.complete", true),
            ("order.*.complete", "order.complete", false),
            ("*", "anything", true),
            ("*.complete", "order.complete", true),
            ("fulfillment.created", "fulfillment.created", true),
            ("fulfillment.created", "fulfillment.created.x", false),
            ("a*a", "a", false),
            ("a*a", "aa", true),
            ("*capture*", "order.charge.capture.failed", true),
        ];
        for (pattern, name, want) in cases {
            assert_eq!(
                TypePattern::parse(pattern).unwrap().matches(name),
                want,
                "{pattern} vs {name}"
            );
        }
    }

    #[test]
    fn bad_patterns_are_rejected_with_their_index() {
        for bad in ["", "order charge", "order.{a,b}", "ordér"] {
            let err = EventFilter::new(&["ok.*".into(), bad.into()], &[], None).unwrap_err();
            assert_eq!(err.field, "filter.types[1]", "{bad:?}");
        }
        let err = EventFilter::new(&[], &[" ".into()], None).unwrap_err();
        assert_eq!(err.field, "filter.order_ids[0]");
    }

    #[test]
    fn all_parts_of_a_filter_must_match() {
        let f = EventFilter::new(&["order.charge.*".into()], &["o1".into()], Some(false)).unwrap();
        assert!(f.matches(&env("order.charge.capture.complete", "o1", false)));
        assert!(!f.matches(&env("order.charge.capture.complete", "o2", false)));
        assert!(!f.matches(&env("order.charge.capture.complete", "o1", true)));
        assert!(!f.matches(&env("fulfillment.created", "o1", false)));
        assert!(EventFilter::default().matches(&env("x", "y", true)));
    }
}
