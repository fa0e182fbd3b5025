//! The DR event envelope (docs/digital-river.md §3.2): parsed once from the raw bytes
//! DR sent, keeping the whole `data.object` so nothing DR sends is lost.
//!
//! Parsing is lenient about everything except what the gateway needs to store and
//! route an event: `id`, `type`, `createdTime` and an object `data.object`.

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

/// Why a payload is not a DR event envelope.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    /// The body is not JSON at all.
    #[error("body is not valid JSON: {0}")]
    NotJson(#[source] serde_json::Error),
    /// The body is JSON but not an object.
    #[error("body is not a JSON object")]
    NotAnObject,
    /// A required field is missing or has the wrong type.
    #[error("field `{field}` is missing or not {expected}")]
    BadField {
        /// JSON path of the field, e.g. `data.object`.
        field: &'static str,
        /// What it should have been, e.g. "a non-empty string".
        expected: &'static str,
    },
}

impl EnvelopeError {
    /// The offending field, when one is to blame.
    pub fn field(&self) -> Option<&'static str> {
        match self {
            Self::BadField { field, .. } => Some(field),
            _ => None,
        }
    }
}

/// A parsed DR event.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    /// DR event id (a UUID in real payloads).
    pub id: String,
    /// Event type, e.g. `order.charge.capture.complete`.
    pub event_type: String,
    /// When DR created the event.
    pub created_time: DateTime<Utc>,
    /// True for live-mode events; DR omits it rarely, so absent means test mode.
    pub live_mode: bool,
    /// `data.object`, always a JSON object.
    pub object: Map<String, Value>,
    /// `data.previousAttributes`, when DR sent an object there.
    pub previous_attributes: Option<Map<String, Value>>,
    /// `webhookIds`, when sent.
    pub webhook_ids: Vec<String>,
    /// `digitalriverVersion` (or the SDK spelling `digitalRiverVersion`).
    pub digitalriver_version: Option<String>,
    /// The DR order id the event is about (see [`order_id_of`]).
    pub order_id: Option<String>,
    /// The exact bytes DR sent (or the re-serialised JSON for events read through
    /// `GET /events`); a persistent log stores these verbatim.
    pub raw: Bytes,
}

impl Envelope {
    /// Parses an envelope from the raw webhook body.
    pub fn parse(raw: Bytes) -> Result<Self, EnvelopeError> {
        let value: Value = serde_json::from_slice(&raw).map_err(EnvelopeError::NotJson)?;
        Self::from_value_with_raw(value, raw)
    }

    /// Builds an envelope from an already-decoded JSON value (`GET /events` items).
    pub fn from_value(value: Value) -> Result<Self, EnvelopeError> {
        // why: serialising a `Value` cannot fail (string keys only).
        let mut raw = serde_json::to_vec(&value).unwrap_or_default();
        // why: the log keeps these bytes; no spare capacity its byte bound misses.
        raw.shrink_to_fit();
        let raw = Bytes::from(raw);
        Self::from_value_with_raw(value, raw)
    }

    fn from_value_with_raw(value: Value, raw: Bytes) -> Result<Self, EnvelopeError> {
        let Value::Object(mut top) = value else {
            return Err(EnvelopeError::NotAnObject);
        };
        let id = take_nonempty_string(&mut top, "id", "id")?;
        let event_type = take_nonempty_string(&mut top, "type", "type")?;
        let created_time = match top.get("createdTime") {
            Some(Value::String(s)) => DateTime::parse_from_rfc3339(s)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|_| EnvelopeError::BadField {
                    field: "createdTime",
                    expected: "an RFC 3339 timestamp",
                })?,
            _ => {
                return Err(EnvelopeError::BadField {
                    field: "createdTime",
                    expected: "an RFC 3339 timestamp",
                })
            }
        };
        let Some(Value::Object(mut data)) = top.remove("data") else {
            return Err(EnvelopeError::BadField {
                field: "data",
                expected: "an object",
            });
        };
        let Some(Value::Object(object)) = data.remove("object") else {
            return Err(EnvelopeError::BadField {
                field: "data.object",
                expected: "an object",
            });
        };
        let previous_attributes = match data.remove("previousAttributes") {
            Some(Value::Object(m)) => Some(m),
            _ => None,
        };
        let live_mode = matches!(top.get("liveMode"), Some(Value::Bool(true)));
        let webhook_ids = match top.get("webhookIds") {
            Some(Value::Array(ids)) => ids
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
            _ => Vec::new(),
        };
        // why: real payloads say `digitalriverVersion`, the PHP SDK `digitalRiverVersion`
        // (docs/digital-river.md §3.2).
        let digitalriver_version = ["digitalriverVersion", "digitalRiverVersion"]
            .iter()
            .find_map(|k| top.get(*k).and_then(Value::as_str).map(str::to_owned));
        let order_id = order_id_of(&event_type, &object);
        Ok(Self {
            id,
            event_type,
            created_time,
            live_mode,
            object,
            previous_attributes,
            webhook_ids,
            digitalriver_version,
            order_id,
            raw,
        })
    }

    /// DR's bytes of the event (what the benchmarks compare the log's memory with;
    /// the log counts every form of the event, [`super::footprint`]).
    pub fn approx_size(&self) -> usize {
        self.raw.len()
    }

    /// `data.object.id`: the id of the object the event is about, when it has one.
    pub fn object_id(&self) -> Option<String> {
        self.object.get("id").and_then(id_text)
    }
}

/// What the gateway routes and orders a stored event by, taken from its envelope:
/// the one part of an event kept beside its encoding (the parsed `data.object` is
/// not kept; subscribers get the pre-encoded event).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventMeta {
    /// DR event id.
    pub id: String,
    /// Event type.
    pub event_type: String,
    /// When DR created the event.
    pub created_time: DateTime<Utc>,
    /// Live or test mode.
    pub live_mode: bool,
    /// The DR order the event is about ([`order_id_of`]).
    pub order_id: Option<String>,
    /// `data.object.id`, when the object has one.
    pub object_id: Option<String>,
}

impl From<Envelope> for EventMeta {
    fn from(env: Envelope) -> Self {
        let object_id = env.object_id();
        Self {
            id: env.id,
            event_type: env.event_type,
            created_time: env.created_time,
            live_mode: env.live_mode,
            order_id: env.order_id,
            object_id,
        }
    }
}

/// The DR order id an event is about: `data.object.orderId`, or `data.object.id` for
/// `order.*` events whose object is the order itself.
pub fn order_id_of(event_type: &str, object: &Map<String, Value>) -> Option<String> {
    if let Some(id) = object.get("orderId").and_then(id_text) {
        return Some(id);
    }
    // why: `order.charge.*` objects are charges (they carry orderId, handled above),
    // except `order.charge.reauth.failed`, whose object is the order; `order.chargeback`
    // is a sales transaction; any other `order.*` object is the order
    // (docs/digital-river.md §3.2).
    let object_is_order = event_type == "order.charge.reauth.failed"
        || (event_type.starts_with("order.")
            && !event_type.starts_with("order.charge.")
            && event_type != "order.chargeback");
    if object_is_order {
        object.get("id").and_then(id_text)
    } else {
        None
    }
}

/// DR ids are strings, but some examples send them as numbers; accept both.
fn id_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Longest event `id` and `type` accepted.
///
/// why: DR's event ids are UUIDs and its types short dotted names
/// (docs/digital-river.md §3.2); a longer one would only make every subscriber's
/// type match and every dedup lookup cost more.
pub const MAX_ID_OR_TYPE_BYTES: usize = 255;

fn take_nonempty_string(
    top: &mut Map<String, Value>,
    key: &str,
    field: &'static str,
) -> Result<String, EnvelopeError> {
    match top.remove(key) {
        Some(Value::String(s)) if !s.trim().is_empty() && s.len() <= MAX_ID_OR_TYPE_BYTES => Ok(s),
        _ => Err(EnvelopeError::BadField {
            field,
            expected: "a non-empty string of at most 255 bytes",
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn charge_event() -> &'static str {
        r#"{"id":"f275be0a-45fd-4160-8a31-b3274b6a4f8b","type":"order.charge.capture.complete",
            "data":{"object":{"id":"b671","orderId":"218377480336","amount":37.81,
            "captures":[{"id":"b496","amount":25.21,"state":"complete","fulfillmentId":"ful_a"}]}},
            "liveMode":false,"createdTime":"2022-03-02T16:52:01.180061Z",
            "webhookIds":["w1"],"digitalriverVersion":"2021-12-13"}"#
    }

    #[test]
    fn a_real_charge_event_parses_with_its_order_id() {
        let env = Envelope::parse(Bytes::from_static(charge_event().as_bytes())).unwrap();
        assert_eq!(env.id, "f275be0a-45fd-4160-8a31-b3274b6a4f8b");
        assert_eq!(env.event_type, "order.charge.capture.complete");
        assert_eq!(env.order_id.as_deref(), Some("218377480336"));
        assert_eq!(env.webhook_ids, vec!["w1"]);
        assert_eq!(env.digitalriver_version.as_deref(), Some("2021-12-13"));
        assert_eq!(env.created_time.timestamp_subsec_micros(), 180061);
        assert!(!env.live_mode);
    }

    #[test]
    fn an_order_event_takes_the_order_id_from_the_object_id() {
        let body = r#"{"id":"e1","type":"order.accepted","createdTime":"2022-01-01T00:00:00Z",
                       "data":{"object":{"id":"1234"}}}"#;
        let env = Envelope::parse(Bytes::from_static(body.as_bytes())).unwrap();
        assert_eq!(env.order_id.as_deref(), Some("1234"));
    }

    #[test]
    fn a_reauth_failed_event_is_about_the_order_it_carries() {
        // DR's "Payment reauthorizations" page: `data.object` is the order itself.
        let body = r#"{"id":"e1","type":"order.charge.reauth.failed","createdTime":"2022-12-30T18:03:23.12606Z",
                       "data":{"object":{"id":"1066128630082","payment":{"charges":[]}}}}"#;
        let env = Envelope::parse(Bytes::from_static(body.as_bytes())).unwrap();
        assert_eq!(env.order_id.as_deref(), Some("1066128630082"));
    }

    #[test]
    fn a_charge_event_without_order_id_has_none() {
        let body = r#"{"id":"e1","type":"order.charge.complete","createdTime":"2022-01-01T00:00:00Z",
                       "data":{"object":{"id":"ch"}}}"#;
        let env = Envelope::parse(Bytes::from_static(body.as_bytes())).unwrap();
        assert_eq!(env.order_id, None);
    }

    #[test]
    fn missing_required_fields_are_named() {
        let cases = [
            (
                r#"{"type":"x","createdTime":"2022-01-01T00:00:00Z","data":{"object":{}}}"#,
                "id",
            ),
            (
                r#"{"id":"x","createdTime":"2022-01-01T00:00:00Z","data":{"object":{}}}"#,
                "type",
            ),
            (
                r#"{"id":"x","type":"t","data":{"object":{}}}"#,
                "createdTime",
            ),
            (
                r#"{"id":"x","type":"t","createdTime":"yesterday","data":{"object":{}}}"#,
                "createdTime",
            ),
            (
                r#"{"id":"x","type":"t","createdTime":"2022-01-01T00:00:00Z"}"#,
                "data",
            ),
            (
                r#"{"id":"x","type":"t","createdTime":"2022-01-01T00:00:00Z","data":{"object":[]}}"#,
                "data.object",
            ),
        ];
        for (body, field) in cases {
            let err = Envelope::parse(Bytes::from_static(body.as_bytes())).unwrap_err();
            assert_eq!(err.field(), Some(field), "{body}");
        }
    }

    #[test]
    fn non_json_and_non_objects_are_rejected() {
        assert!(matches!(
            Envelope::parse(Bytes::from_static(b"{\"id\":")),
            Err(EnvelopeError::NotJson(_))
        ));
        assert!(matches!(
            Envelope::parse(Bytes::from_static(b"[1,2]")),
            Err(EnvelopeError::NotAnObject)
        ));
    }
}
