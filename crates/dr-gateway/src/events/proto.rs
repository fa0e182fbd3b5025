//! Turns a DR [`Envelope`] into the API's `Event` message: the typed payload (through
//! a pluggable decoder), the whole `data.object` / `previousAttributes` as
//! `google.protobuf.Struct`, and the encoded bytes subscribers share.

use std::{fmt, sync::Arc};

use chrono::{DateTime, Utc};
use prost::encoding::{encode_key, encode_varint, encoded_len_varint, WireType};
use prost_types::{value::Kind, ListValue, Struct, Timestamp, Value as PbValue};
use serde_json::{Map, Value};

use super::envelope::Envelope;
use super::log::{Cursor, PreparedEvent};
use crate::pb::v1 as pb;

/// Decodes `data.object` into the typed `Event.payload` (Charge / Fulfillment /
/// Order). The conversions live with the gRPC layer (`crate::grpc::convert`), so the
/// app injects them here instead of `events` depending on `grpc`.
pub type PayloadDecoder = Arc<dyn Fn(&Envelope) -> Option<pb::event::Payload> + Send + Sync>;

/// Builds `pb::Event`s from envelopes.
#[derive(Clone, Default)]
pub struct EventEncoder {
    payload: Option<PayloadDecoder>,
}

impl fmt::Debug for EventEncoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventEncoder")
            .field("payload_decoder", &self.payload.is_some())
            .finish()
    }
}

impl EventEncoder {
    /// An encoder that fills the typed payload with `decoder`.
    pub fn with_payload_decoder(decoder: PayloadDecoder) -> Self {
        Self {
            payload: Some(decoder),
        }
    }

    /// The protobuf event (empty cursor) for an envelope, its `Struct`s built from
    /// the parsed objects: what [`encode`](Self::encode) writes, as a message (the
    /// tests and the fuzz target hold one against the other).
    pub fn to_proto(&self, env: &Envelope) -> pb::Event {
        pb::Event {
            data_object: Some(json_object_to_struct(&env.object_value())),
            previous_attributes: env
                .previous_attributes_json()
                .map(|json| json_object_to_struct(&parse_object(json))),
            ..self.without_objects(env)
        }
    }

    /// [`to_proto`](Self::to_proto) encoded: the other fields, then the `Struct`s
    /// the envelope wrote from DR's text ([`super::struct_encoding`]).
    pub fn encode(&self, env: &Envelope) -> Vec<u8> {
        let event = self.parts(env);
        let mut buf = Vec::with_capacity(event.len());
        event.write(&mut buf);
        buf
    }

    /// Splits an envelope into the event's fields as a message and its `Struct`s as
    /// bytes.
    fn parts<'a>(&self, env: &'a Envelope) -> EventParts<'a> {
        EventParts {
            fields: EventFields {
                env,
                create_time: timestamp(env.created_time),
                payload: self.payload.as_ref().and_then(|decode| decode(env)),
            },
            objects: [
                Some((DATA_OBJECT_FIELD, env.object_struct())),
                env.previous_attributes_struct()
                    .map(|body| (PREVIOUS_ATTRIBUTES_FIELD, body)),
            ],
        }
    }

    /// The event without `data_object` and `previous_attributes` (empty cursor).
    fn without_objects(&self, env: &Envelope) -> pb::Event {
        pb::Event {
            cursor: String::new(),
            id: env.id.clone(),
            r#type: env.event_type.clone(),
            create_time: Some(timestamp(env.created_time)),
            live_mode: env.live_mode,
            payload: self.payload.as_ref().and_then(|decode| decode(env)),
            data_object: None,
            previous_attributes: None,
            webhook_ids: env.webhook_ids.clone(),
            digitalriver_version: env.digitalriver_version.clone().unwrap_or_default(),
        }
    }

    /// Converts and encodes an envelope once, as the `SubscribeResponse` every
    /// subscriber gets, ready for any log position: the cursor's room is left
    /// first (protobuf lets a field appear anywhere in a message) and filled when a
    /// log places the event ([`StoredEvent::from_prepared`](super::StoredEvent::from_prepared)).
    ///
    /// why: one allocation, sized exactly, is the one the log holds: no copy of the
    /// event into its response and no spare capacity (the log's byte bound and the
    /// allocator's placement of the held events both depend on it, `cargo bench
    /// --bench event_memory`).
    pub fn prepare(&self, env: &Envelope) -> PreparedEvent {
        let event = self.parts(env);
        let cursor_field = 1 + encoded_len_varint(Cursor::TEXT_LEN as u64) + Cursor::TEXT_LEN;
        let event_len = cursor_field + event.len();
        let mut response = Vec::with_capacity(1 + encoded_len_varint(event_len as u64) + event_len);
        // SubscribeResponse field 1 (event), then Event field 1 (cursor).
        encode_key(1, WireType::LengthDelimited, &mut response);
        encode_varint(event_len as u64, &mut response);
        encode_key(1, WireType::LengthDelimited, &mut response);
        encode_varint(Cursor::TEXT_LEN as u64, &mut response);
        let cursor_at = response.len();
        response.resize(cursor_at + Cursor::TEXT_LEN, b'A');
        event.write(&mut response);
        let footprint = super::footprint::event_parts(env, response.len());
        PreparedEvent {
            response,
            cursor_at,
            footprint,
        }
    }
}

/// An event's fields as a message and its `Struct`s as encoded bodies.
struct EventParts<'a> {
    fields: EventFields<'a>,
    objects: [Option<(u32, &'a [u8])>; 2],
}

/// The event's fields other than its `Struct`s, written from the envelope's own
/// strings.
///
/// why: building a `pb::Event` to encode it copied the id, the type, the webhook ids
/// and the version (an allocation each) only to drop them after encoding.
struct EventFields<'a> {
    env: &'a Envelope,
    create_time: Timestamp,
    payload: Option<pb::event::Payload>,
}

/// A singular string field, or nothing when it is empty.
fn singular(tag: u32, text: &String) -> Option<(u32, &String)> {
    (!text.is_empty()).then_some((tag, text))
}

impl EventFields<'_> {
    /// The string fields in field order. Proto3 leaves out a singular field's empty
    /// string, as prost does; a repeated field keeps every element.
    fn strings(&self) -> impl Iterator<Item = (u32, &String)> {
        let env = self.env;
        [
            singular(ID_FIELD, &env.id),
            singular(TYPE_FIELD, &env.event_type),
        ]
        .into_iter()
        .flatten()
        .chain(env.webhook_ids.iter().map(|id| (WEBHOOK_IDS_FIELD, id)))
        .chain(
            env.digitalriver_version
                .as_ref()
                .and_then(|v| singular(DIGITALRIVER_VERSION_FIELD, v)),
        )
    }

    fn encoded_len(&self) -> usize {
        use prost::encoding::{bool, message, string};
        self.strings()
            .map(|(tag, text)| string::encoded_len(tag, text))
            .sum::<usize>()
            + message::encoded_len(CREATE_TIME_FIELD, &self.create_time)
            + if self.env.live_mode {
                bool::encoded_len(LIVE_MODE_FIELD, &true)
            } else {
                0
            }
            + self
                .payload
                .as_ref()
                .map_or(0, pb::event::Payload::encoded_len)
    }

    fn encode_raw(&self, buf: &mut Vec<u8>) {
        use prost::encoding::{bool, message, string};
        for (tag, text) in self.strings() {
            string::encode(tag, text, buf);
        }
        message::encode(CREATE_TIME_FIELD, &self.create_time, buf);
        if self.env.live_mode {
            bool::encode(LIVE_MODE_FIELD, &true, buf);
        }
        if let Some(payload) = &self.payload {
            payload.encode(buf);
        }
    }
}

impl EventParts<'_> {
    /// The encoded event's length.
    fn len(&self) -> usize {
        self.fields.encoded_len()
            + self
                .objects
                .iter()
                .flatten()
                .map(|(_, body)| 1 + encoded_len_varint(body.len() as u64) + body.len())
                .sum::<usize>()
    }

    fn write(self, buf: &mut Vec<u8>) {
        self.fields.encode_raw(buf);
        for (tag, body) in self.objects.into_iter().flatten() {
            encode_key(tag, WireType::LengthDelimited, buf);
            encode_varint(body.len() as u64, buf);
            buf.extend_from_slice(body);
        }
    }
}

/// A JSON object's text parsed (empty when it is not one).
fn parse_object(json: &str) -> Map<String, Value> {
    serde_json::from_str(json).unwrap_or_default()
}

/// Field numbers of `Event` (`proto/digitalriver/gateway/v1/event_stream.proto`).
const ID_FIELD: u32 = 2;
const TYPE_FIELD: u32 = 3;
const CREATE_TIME_FIELD: u32 = 4;
const LIVE_MODE_FIELD: u32 = 5;
const DATA_OBJECT_FIELD: u32 = 9;
const PREVIOUS_ATTRIBUTES_FIELD: u32 = 10;
const WEBHOOK_IDS_FIELD: u32 = 11;
const DIGITALRIVER_VERSION_FIELD: u32 = 12;

/// A protobuf timestamp for a UTC time.
pub fn timestamp(t: DateTime<Utc>) -> Timestamp {
    Timestamp {
        seconds: t.timestamp(),
        // why: subsec nanos of a valid DateTime are < 2e9 (leap second), fits i32.
        nanos: i32::try_from(t.timestamp_subsec_nanos()).unwrap_or(999_999_999),
    }
}

/// A JSON object as `google.protobuf.Struct`.
pub fn json_object_to_struct(map: &Map<String, Value>) -> Struct {
    Struct {
        fields: map
            .iter()
            .map(|(k, v)| (k.clone(), json_to_value(v)))
            .collect(),
    }
}

/// A JSON value as `google.protobuf.Value`. Numbers become doubles parsed from the
/// number's text (`arbitrary_precision` keeps DR's digits), which is exact for
/// amounts with few decimals and for integers below 2^53. A number beyond what a
/// double holds (`1e400`) becomes a string of DR's text.
///
/// why: parsing it gives an infinity, which proto3 JSON cannot express: clients that
/// print events as JSON (Python's `MessageToDict`, grpcurl) fail on the whole event.
/// The text keeps DR's value for anyone who wants it, and every client can read it.
pub fn json_to_value(v: &Value) -> PbValue {
    let kind = match v {
        Value::Null => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(*b),
        // why: `as_f64` parses the number's own text in place (no copy of it per
        // number); it is `None` for a number beyond a double.
        Value::Number(n) => match n.as_f64() {
            Some(f) => Kind::NumberValue(f),
            None => Kind::StringValue(n.to_string()),
        },
        Value::String(s) => Kind::StringValue(s.clone()),
        Value::Array(items) => Kind::ListValue(ListValue {
            values: items.iter().map(json_to_value).collect(),
        }),
        Value::Object(m) => Kind::StructValue(json_object_to_struct(m)),
    };
    PbValue { kind: Some(kind) }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use prost::Message as _;

    use super::*;
    use crate::events::log::{Cursor, StoredEvent};

    fn envelope() -> Envelope {
        let body = r#"{"id":"e1","type":"order.charge.capture.complete",
            "createdTime":"2022-03-02T16:52:01.180061Z","liveMode":true,
            "data":{"object":{"orderId":"218377480336","amount":37.81,"big":12345678901234567890,
                              "ok":true,"none":null,"list":[1,"a",{"x":[]}]},
                    "previousAttributes":{"state":"pending"}},
            "webhookIds":["w1","w2"],"digitalRiverVersion":"2021-12-13"}"#;
        Envelope::parse(Bytes::from_static(body.as_bytes())).unwrap()
    }

    #[test]
    fn every_envelope_field_reaches_the_proto() {
        let ev = EventEncoder::default().to_proto(&envelope());
        assert_eq!(ev.id, "e1");
        assert_eq!(ev.r#type, "order.charge.capture.complete");
        assert!(ev.live_mode);
        assert_eq!(ev.webhook_ids, vec!["w1", "w2"]);
        assert_eq!(ev.digitalriver_version, "2021-12-13");
        let ts = ev.create_time.unwrap();
        assert_eq!(ts.nanos, 180_061_000);
        let obj = ev.data_object.unwrap();
        assert_eq!(obj.fields["amount"].kind, Some(Kind::NumberValue(37.81)));
        assert_eq!(
            obj.fields["big"].kind,
            Some(Kind::NumberValue(12_345_678_901_234_567_890.0))
        );
        assert_eq!(obj.fields["none"].kind, Some(Kind::NullValue(0)));
        let Some(Kind::ListValue(list)) = &obj.fields["list"].kind else {
            panic!("list")
        };
        assert_eq!(list.values.len(), 3);
        let prev = ev.previous_attributes.unwrap();
        assert_eq!(
            prev.fields["state"].kind,
            Some(Kind::StringValue("pending".into()))
        );
    }

    #[test]
    fn a_number_beyond_a_double_keeps_its_text_instead_of_becoming_infinite() {
        let body = r#"{"id":"e1","type":"order.charge.capture.complete",
            "createdTime":"2022-03-02T16:52:01Z",
            "data":{"object":{"amount":1e400,"low":-1E+400,"tiny":1e-400,"ok":12.5}}}"#;
        let env = Envelope::parse(Bytes::from_static(body.as_bytes())).unwrap();
        let obj = EventEncoder::default().to_proto(&env).data_object.unwrap();
        // serde_json's text of the number: the exponent's sign written out.
        assert_eq!(
            obj.fields["amount"].kind,
            Some(Kind::StringValue("1e+400".into()))
        );
        let Some(Kind::StringValue(low)) = &obj.fields["low"].kind else {
            panic!("low is not a string: {:?}", obj.fields["low"])
        };
        assert_eq!(low.parse::<f64>(), Ok(f64::NEG_INFINITY));
        assert_eq!(obj.fields["tiny"].kind, Some(Kind::NumberValue(0.0)));
        assert_eq!(obj.fields["ok"].kind, Some(Kind::NumberValue(12.5)));
    }

    #[test]
    fn the_direct_encoding_decodes_to_the_built_event() {
        let encoder =
            EventEncoder::with_payload_decoder(Arc::new(crate::grpc::event_stream::decode_payload));
        let env = envelope();
        let bytes = encoder.encode(&env);
        let decoded = pb::Event::decode(bytes.as_slice()).unwrap();
        assert_eq!(decoded, encoder.to_proto(&env));
        assert!(decoded.previous_attributes.is_some());
        // No spare capacity left to free later.
        assert_eq!(bytes.capacity(), bytes.len());
    }

    #[test]
    fn the_direct_encoding_keeps_empty_webhook_ids_and_leaves_out_empty_fields() {
        let body = r#"{"id":"e2","type":"order.accepted","createdTime":"2022-03-02T16:52:01Z",
            "liveMode":false,"data":{"object":{}},"webhookIds":["","w"],"digitalRiverVersion":""}"#;
        let env = Envelope::parse(Bytes::from_static(body.as_bytes())).unwrap();
        let encoder = EventEncoder::default();
        let bytes = encoder.encode(&env);
        let decoded = pb::Event::decode(bytes.as_slice()).unwrap();
        assert_eq!(decoded, encoder.to_proto(&env));
        assert_eq!(decoded.webhook_ids, ["", "w"]);
        assert!(!decoded.live_mode);
        // As prost writes the same message: no byte for a default field.
        assert_eq!(bytes.len(), encoder.to_proto(&env).encoded_len());
    }

    #[test]
    fn the_payload_decoder_fills_the_typed_payload() {
        let enc = EventEncoder::with_payload_decoder(Arc::new(|env: &Envelope| {
            Some(pb::event::Payload::Charge(pb::Charge {
                order_id: env.order_id.clone().unwrap_or_default(),
                ..Default::default()
            }))
        }));
        let ev = enc.to_proto(&envelope());
        assert!(
            matches!(ev.payload, Some(pb::event::Payload::Charge(c)) if c.order_id == "218377480336")
        );
    }

    #[test]
    fn the_shared_encoding_equals_encoding_the_response_with_its_cursor() {
        let stored = StoredEvent::build(7, 99, Utc::now(), envelope(), &EventEncoder::default());
        let cursor = Cursor { log_id: 99, seq: 7 }.encode();
        assert_eq!(stored.cursor(), cursor);
        let decoded = pb::SubscribeResponse::decode(stored.encoded_response.clone()).unwrap();
        let mut event = EventEncoder::default().to_proto(&envelope());
        event.cursor = cursor;
        assert_eq!(stored.decode_event().unwrap(), event);
        let expected = pb::SubscribeResponse {
            kind: Some(pb::subscribe_response::Kind::Event(event)),
            ..Default::default()
        };
        assert_eq!(decoded, expected);
    }
}
