//! The DR event envelope (docs/digital-river.md §3.2): parsed once from the raw bytes
//! DR sent, keeping the whole `data.object` as DR's text so nothing DR sends is lost.
//!
//! Parsing is lenient about everything except what the gateway needs to store and
//! route an event: `id`, `type`, `createdTime` and an object `data.object`.
//!
//! why: the body is read in one walk ([`super::json_text`]), which checks it is
//! JSON, reads the few top-level fields the gateway uses, and writes
//! `data.object` and `data.previousAttributes` as the stored event's `Struct`s
//! ([`super::struct_encoding`]) as it reads them; their text stays where it is in
//! the body. A `serde_json::Value` of the whole body, read once and dropped, cost
//! more than everything else intake does, and serde_json reading past
//! `data.object` before the walk read it again cost a tenth (`cargo bench --bench
//! webhook_intake`).

use std::{borrow::Cow, fmt, ops::Range};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde_json::Value;

use super::json_text::{JsonTextError, ObjectIds, Scanner, Token};
use super::struct_encoding;

/// Why a payload is not a DR event envelope.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    /// The body is not JSON at all.
    #[error("body is not valid JSON: {0}")]
    NotJson(#[source] JsonTextError),
    /// The body is not UTF-8 text, so not JSON either.
    #[error("body is not valid JSON: it is not UTF-8 text")]
    NotUtf8,
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
#[derive(Clone, PartialEq)]
pub struct Envelope {
    /// DR event id (a UUID in real payloads).
    pub id: String,
    /// Event type, e.g. `order.charge.capture.complete`.
    pub event_type: String,
    /// When DR created the event.
    pub created_time: DateTime<Utc>,
    /// True for live-mode events; DR omits it rarely, so absent means test mode.
    pub live_mode: bool,
    /// `webhookIds`, when sent.
    pub webhook_ids: Vec<String>,
    /// `digitalriverVersion` (or the SDK spelling `digitalRiverVersion`).
    pub digitalriver_version: Option<String>,
    /// The DR order id the event is about (see [`order_id_of`]).
    pub order_id: Option<String>,
    /// `data.object.id`: the id of the object the event is about, when it has one.
    pub object_id: Option<String>,
    /// The exact bytes DR sent (or the serialised JSON for events read through
    /// `GET /events`); a persistent log stores these verbatim.
    pub raw: Bytes,
    /// Where `data.object` (always a JSON object) is in `raw`.
    object: Range<usize>,
    /// Where `data.previousAttributes` is in `raw`, when DR sent an object there.
    previous_attributes: Option<Range<usize>>,
    /// `data.object` encoded as a `google.protobuf.Struct` message body.
    object_struct: Vec<u8>,
    /// `data.previousAttributes` encoded the same way, when present.
    previous_struct: Option<Vec<u8>>,
}

impl fmt::Debug for Envelope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Envelope")
            .field("id", &self.id)
            .field("event_type", &self.event_type)
            .field("created_time", &self.created_time)
            .field("live_mode", &self.live_mode)
            .field("order_id", &self.order_id)
            .field("object_id", &self.object_id)
            .field("raw_len", &self.raw.len())
            .finish_non_exhaustive()
    }
}

impl Envelope {
    /// Parses an envelope from the raw webhook body.
    pub fn parse(raw: Bytes) -> Result<Self, EnvelopeError> {
        // why: one UTF-8 check of the whole body; the walk then reads it as text
        // (no second check per string) and the kept ranges are text too.
        let text = std::str::from_utf8(&raw).map_err(|_| EnvelopeError::NotUtf8)?;
        let Some(fields) = read_top_level(text).map_err(EnvelopeError::NotJson)? else {
            return Err(EnvelopeError::NotAnObject);
        };
        let id = nonempty_string(fields.id, "id")?;
        let event_type = nonempty_string(fields.event_type, "type")?;
        let created_time = fields
            .created_time
            .and_then(|s| DateTime::parse_from_rfc3339(&s).ok())
            .map(|t| t.with_timezone(&Utc))
            .ok_or(EnvelopeError::BadField {
                field: "createdTime",
                expected: "an RFC 3339 timestamp",
            })?;
        let Some(Data { object, previous }) = fields.data else {
            return Err(EnvelopeError::BadField {
                field: "data",
                expected: "an object",
            });
        };
        let object = match object {
            Some(Walked::Object(object)) => object,
            Some(Walked::Failed(e)) => return Err(nesting_error("data.object", e)),
            Some(Walked::NotAnObject) | None => {
                return Err(EnvelopeError::BadField {
                    field: "data.object",
                    expected: "an object",
                })
            }
        };
        let previous = match previous {
            Some(Walked::Object(previous)) => Some(previous),
            Some(Walked::Failed(e)) => return Err(nesting_error("data.previousAttributes", e)),
            Some(Walked::NotAnObject) | None => None,
        };
        // why: real payloads say `digitalriverVersion`, the PHP SDK `digitalRiverVersion`
        // (docs/digital-river.md §3.2).
        let digitalriver_version = fields.version.or(fields.version_sdk_spelling);
        let order_id = order_id_of(&event_type, &object.ids);
        let (previous_attributes, previous_struct) = match previous {
            Some(p) => (Some(p.range), Some(p.encoded)),
            None => (None, None),
        };
        Ok(Self {
            id,
            event_type,
            created_time,
            live_mode: fields.live_mode,
            webhook_ids: fields.webhook_ids,
            digitalriver_version: digitalriver_version.map(Cow::into_owned),
            order_id,
            object_id: object.ids.id,
            raw,
            object: object.range,
            previous_attributes,
            object_struct: object.encoded,
            previous_struct,
        })
    }

    /// Builds an envelope from an already-decoded JSON value (`GET /events` items).
    pub fn from_value(value: Value) -> Result<Self, EnvelopeError> {
        // why: serialising a `Value` cannot fail (string keys only).
        let mut raw = serde_json::to_vec(&value).unwrap_or_default();
        // why: the log keeps these bytes; no spare capacity its byte bound misses.
        raw.shrink_to_fit();
        Self::parse(Bytes::from(raw))
    }

    /// DR's bytes of the event (what the benchmarks compare the log's memory with;
    /// the log counts every form of the event, [`super::footprint`]).
    pub fn approx_size(&self) -> usize {
        self.raw.len()
    }

    /// `data.object` as DR's JSON text (always an object).
    pub fn object_json(&self) -> &str {
        self.text_at(&self.object).unwrap_or("{}")
    }

    /// `data.previousAttributes` as DR's JSON text, when DR sent an object there.
    pub fn previous_attributes_json(&self) -> Option<&str> {
        self.previous_attributes
            .as_ref()
            .and_then(|range| self.text_at(range))
    }

    /// `data.object` as a `google.protobuf.Struct` message body (the stored event's
    /// `data_object`, [`super::struct_encoding`]).
    pub fn object_struct(&self) -> &[u8] {
        &self.object_struct
    }

    /// `data.previousAttributes` as a `Struct` message body, when present.
    pub fn previous_attributes_struct(&self) -> Option<&[u8]> {
        self.previous_struct.as_deref()
    }

    /// `data.object` as a parsed JSON object (for readers that want a map; the hot
    /// paths read the text).
    pub fn object_value(&self) -> serde_json::Map<String, Value> {
        // why: `object` is an object's text serde_json accepted (see `parse`).
        serde_json::from_str(self.object_json()).unwrap_or_default()
    }

    fn text_at(&self, range: &Range<usize>) -> Option<&str> {
        // why: `parse` took the range from text serde_json accepted, on character
        // boundaries; checking again is cheap and keeps this free of `unsafe`.
        self.raw
            .get(range.clone())
            .and_then(|bytes| std::str::from_utf8(bytes).ok())
    }
}

fn nesting_error(field: &'static str, e: JsonTextError) -> EnvelopeError {
    match e {
        JsonTextError::TooDeep => EnvelopeError::BadField {
            field,
            expected: "an object nested at most 32 levels deep",
        },
        JsonTextError::BadString => EnvelopeError::BadField {
            field,
            expected: "an object whose strings decode (no lone UTF-16 surrogate)",
        },
        // why: the walk hands back only the two refusals above (the rest of the
        // text was checked as JSON); any other error still names the field.
        JsonTextError::Truncated(_) | JsonTextError::Unexpected(_) => EnvelopeError::BadField {
            field,
            expected: "an object",
        },
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
        Self {
            id: env.id,
            event_type: env.event_type,
            created_time: env.created_time,
            live_mode: env.live_mode,
            order_id: env.order_id,
            object_id: env.object_id,
        }
    }
}

/// The DR order id an event is about: `data.object.orderId`, or `data.object.id` for
/// `order.*` events whose object is the order itself.
pub fn order_id_of(event_type: &str, object: &ObjectIds) -> Option<String> {
    if let Some(id) = &object.order_id {
        return Some(id.clone());
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
        object.id.clone()
    } else {
        None
    }
}

/// Longest event `id` and `type` accepted.
///
/// why: DR's event ids are UUIDs and its types short dotted names
/// (docs/digital-river.md §3.2); a longer one would only make every subscriber's
/// type match and every dedup lookup cost more.
pub const MAX_ID_OR_TYPE_BYTES: usize = 255;

fn nonempty_string(
    value: Option<Cow<'_, str>>,
    field: &'static str,
) -> Result<String, EnvelopeError> {
    match value {
        Some(s) if !s.trim().is_empty() && s.len() <= MAX_ID_OR_TYPE_BYTES => Ok(s.into_owned()),
        _ => Err(EnvelopeError::BadField {
            field,
            expected: "a non-empty string of at most 255 bytes",
        }),
    }
}

/// The top-level fields the gateway reads. Each holds the last value DR sent for
/// its key (as a parsed map would), and a value of the wrong type reads as absent.
#[derive(Default)]
struct Fields<'a> {
    id: Option<Cow<'a, str>>,
    event_type: Option<Cow<'a, str>>,
    created_time: Option<Cow<'a, str>>,
    live_mode: bool,
    data: Option<Data>,
    webhook_ids: Vec<String>,
    version: Option<Cow<'a, str>>,
    version_sdk_spelling: Option<Cow<'a, str>>,
}

/// `data`, when it is an object: its `object` and `previousAttributes` (the last
/// of each), walked as they were read.
#[derive(Default)]
struct Data {
    object: Option<Walked>,
    previous: Option<Walked>,
}

/// A member of `data` as the walk left it.
enum Walked {
    /// An object, written as a `Struct`.
    Object(WalkedObject),
    /// Any other JSON value.
    NotAnObject,
    /// An object the `Struct` walk refused (nested too deep, a string that does
    /// not decode); the body around it is JSON.
    Failed(JsonTextError),
}

/// An object of `data` and its `Struct`.
struct WalkedObject {
    /// Where the object is in the body.
    range: Range<usize>,
    /// Its `Struct` message body.
    encoded: Vec<u8>,
    /// Its `id` and `orderId`.
    ids: ObjectIds,
}

/// Reads the body's top level in one walk: `None` when it is JSON but not an
/// object, an error when it is not JSON.
fn read_top_level(text: &str) -> Result<Option<Fields<'_>>, JsonTextError> {
    let mut scanner = Scanner::new(text);
    let first = scanner.value()?;
    let fields = if first == Token::ObjectStart {
        let mut fields = Fields::default();
        let mut first_member = true;
        while let Some(key) = scanner.key(first_member)? {
            first_member = false;
            let s = &mut scanner;
            match key.value()?.as_ref() {
                "id" => fields.id = read_text(s)?,
                "type" => fields.event_type = read_text(s)?,
                "createdTime" => fields.created_time = read_text(s)?,
                "liveMode" => fields.live_mode = read_true(s)?,
                "data" => fields.data = read_data(s)?,
                "webhookIds" => fields.webhook_ids = read_texts(s)?,
                "digitalriverVersion" => fields.version = read_text(s)?,
                "digitalRiverVersion" => fields.version_sdk_spelling = read_text(s)?,
                _ => skip_value(s)?,
            }
        }
        Some(fields)
    } else {
        scanner.skip(first)?;
        None
    };
    scanner.finish()?;
    Ok(fields)
}

fn skip_value(scanner: &mut Scanner<'_>) -> Result<(), JsonTextError> {
    let first = scanner.value()?;
    scanner.skip(first)
}

/// A string value, borrowed from the body when it has no escapes; `None` for any
/// other JSON value.
fn read_text<'a>(scanner: &mut Scanner<'a>) -> Result<Option<Cow<'a, str>>, JsonTextError> {
    match scanner.value()? {
        Token::Str(s) => s.value().map(Some),
        other => scanner.skip(other).map(|()| None),
    }
}

/// `true` only for the JSON literal `true`.
fn read_true(scanner: &mut Scanner<'_>) -> Result<bool, JsonTextError> {
    match scanner.value()? {
        Token::Bool(b) => Ok(b),
        other => scanner.skip(other).map(|()| false),
    }
}

/// The strings of a JSON list (other items skipped); empty for any other value.
fn read_texts(scanner: &mut Scanner<'_>) -> Result<Vec<String>, JsonTextError> {
    let first = scanner.value()?;
    if first != Token::ListStart {
        return scanner.skip(first).map(|()| Vec::new());
    }
    let mut texts = Vec::new();
    let mut first_item = true;
    while let Some(item) = scanner.item(first_item)? {
        first_item = false;
        match item {
            Token::Str(s) => texts.push(s.value()?.into_owned()),
            other => scanner.skip(other)?,
        }
    }
    Ok(texts)
}

/// `data`: `Some` when it is an object, its `object` and `previousAttributes`
/// walked into `Struct`s as they are read.
fn read_data(scanner: &mut Scanner<'_>) -> Result<Option<Data>, JsonTextError> {
    let first = scanner.value()?;
    if first != Token::ObjectStart {
        return scanner.skip(first).map(|()| None);
    }
    let mut data = Data::default();
    let mut first_member = true;
    while let Some(key) = scanner.key(first_member)? {
        first_member = false;
        match key.value()?.as_ref() {
            "object" => data.object = Some(walk_object(scanner)?),
            "previousAttributes" => data.previous = Some(walk_object(scanner)?),
            _ => skip_value(scanner)?,
        }
    }
    Ok(Some(data))
}

/// Walks the value that comes next into a `Struct` when it is an object.
///
/// why: the `Struct` is written in the same walk that checks the text, so
/// `data.object` is read once. When the walk refuses the object (too deep, a
/// string that does not decode) the object is read again only to check it and
/// find its end: the refusal counts only if no later `object` replaces it.
fn walk_object(scanner: &mut Scanner<'_>) -> Result<Walked, JsonTextError> {
    let first = scanner.value()?;
    if first != Token::ObjectStart {
        return scanner.skip(first).map(|()| Walked::NotAnObject);
    }
    let start = scanner.position().saturating_sub(1);
    // why: the object's end is not known before the walk; the text left (the
    // object and what follows it) is about as long as its `Struct` (which spells
    // every key and wraps every value). Held events' RSS depends on this first
    // allocation: 1.5× the text left measured 2,142 B per held event, the text left
    // 2,069–2,075 B (`cargo bench --bench event_memory`).
    let mut encoded = Vec::with_capacity(scanner.remaining());
    match struct_encoding::encode_object(scanner, &mut encoded) {
        Ok(ids) => Ok(Walked::Object(WalkedObject {
            range: start..scanner.position(),
            encoded,
            ids,
        })),
        Err(refused @ (JsonTextError::TooDeep | JsonTextError::BadString)) => {
            scanner.rewind_to(start);
            skip_value(scanner)?;
            Ok(Walked::Failed(refused))
        }
        Err(not_json) => Err(not_json),
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

    #[test]
    fn fields_of_the_wrong_type_read_as_absent_and_repeated_keys_as_their_last_value() {
        let body = r#"{"id":"first","type":"order.accepted","createdTime":"2022-01-01T00:00:00Z",
            "liveMode":"yes","webhookIds":["w1",2,null,"w2"],"digitalriverVersion":7,
            "digitalRiverVersion":"2021-12-13","id":"last",
            "data":{"object":{"id":1234,"name":"\u00e9"},"previousAttributes":[1]}}"#;
        let env = Envelope::parse(Bytes::from_static(body.as_bytes())).unwrap();
        assert_eq!(env.id, "last");
        assert!(!env.live_mode);
        assert_eq!(env.webhook_ids, vec!["w1", "w2"]);
        assert_eq!(env.digitalriver_version.as_deref(), Some("2021-12-13"));
        assert_eq!(env.order_id.as_deref(), Some("1234"));
        assert_eq!(env.object_id.as_deref(), Some("1234"));
        assert_eq!(env.object_json(), r#"{"id":1234,"name":"\u00e9"}"#);
        assert_eq!(env.previous_attributes_json(), None);
        let escaped_id = r#"{"id":"e\u0031","type":"t","createdTime":"2022-01-01T00:00:00Z","data":{"object":{}}}"#;
        let env = Envelope::parse(Bytes::from_static(escaped_id.as_bytes())).unwrap();
        assert_eq!(env.id, "e1");
    }

    #[test]
    fn the_objects_are_kept_as_the_text_dr_sent() {
        let env = Envelope::parse(Bytes::from_static(charge_event().as_bytes())).unwrap();
        let object: serde_json::Map<String, Value> =
            serde_json::from_str(env.object_json()).unwrap();
        assert_eq!(object["orderId"], "218377480336");
        assert_eq!(env.object_value(), object);
        let with_previous = r#"{"id":"e","type":"t","createdTime":"2022-01-01T00:00:00Z",
            "data":{"previousAttributes": {"state": "pending"}, "object":{"state":"complete"}}}"#;
        let env = Envelope::parse(Bytes::from_static(with_previous.as_bytes())).unwrap();
        assert_eq!(
            env.previous_attributes_json(),
            Some(r#"{"state": "pending"}"#)
        );
        assert_eq!(env.object_json(), r#"{"state":"complete"}"#);
    }

    #[test]
    fn an_object_nested_past_the_limit_and_bytes_that_are_not_utf8_are_refused() {
        let nested = |levels: usize| format!("{}{}", "[".repeat(levels), "]".repeat(levels));
        let body = |inner: &str| {
            format!(
                r#"{{"id":"e","type":"t","createdTime":"2022-01-01T00:00:00Z","data":{{"object":{{"a":{inner}}}}}}}"#
            )
        };
        let deepest = body(&nested(crate::events::json_text::MAX_DEPTH - 1));
        let env = Envelope::parse(Bytes::from(deepest)).unwrap();
        // The deepest event accepted still decodes (protobuf decoders stop at 100
        // nested messages), as an event and as the response subscribers get.
        let encoder = crate::events::EventEncoder::default();
        let stored = crate::events::StoredEvent::build(1, 1, Utc::now(), env, &encoder);
        assert!(stored.decode_event().is_ok());
        use prost::Message as _;
        assert!(crate::pb::v1::SubscribeResponse::decode(stored.encoded_response.clone()).is_ok());
        let too_deep = body(&nested(crate::events::json_text::MAX_DEPTH));
        let err = Envelope::parse(Bytes::from(too_deep)).unwrap_err();
        assert_eq!(err.field(), Some("data.object"));
        // Skipped by serde_json as a whole, so serde_json's own limit is not met.
        let far_too_deep = body(&nested(10_000));
        assert_eq!(
            Envelope::parse(Bytes::from(far_too_deep))
                .unwrap_err()
                .field(),
            Some("data.object")
        );
        let mut not_utf8 =
            br#"{"id":"e","type":"t","createdTime":"2022-01-01T00:00:00Z","x":""#.to_vec();
        not_utf8.extend_from_slice(b"\xff\"}");
        assert!(matches!(
            Envelope::parse(Bytes::from(not_utf8)),
            Err(EnvelopeError::NotUtf8)
        ));
    }

    #[test]
    fn an_envelope_from_a_value_is_the_one_parsed_from_its_text() {
        let value: Value = serde_json::from_str(charge_event()).unwrap();
        let from_value = Envelope::from_value(value.clone()).unwrap();
        let parsed = Envelope::parse(Bytes::from(serde_json::to_vec(&value).unwrap())).unwrap();
        assert_eq!(from_value, parsed);
        assert_eq!(from_value.order_id.as_deref(), Some("218377480336"));
    }
}
