//! Encodes a parsed JSON object as a `google.protobuf.Struct` field straight into
//! protobuf bytes, without building the `prost_types::Struct` first.
//!
//! why: building the `Struct` allocates a map node per object, a `String` per key
//! and per string value and a `Vec` per list, and all of it is dropped right after
//! encoding: on webhook intake that was the largest cost after parsing
//! (`cargo bench --bench webhook_intake`). The bytes are the ones prost writes for
//! [`json_object_to_struct`](super::proto::json_object_to_struct) (same field order:
//! both maps iterate in key order), so subscribers cannot tell the difference.
//!
//! Two passes keep it linear in the size of the JSON: the first measures every
//! nested object and list once, in the order the second pass writes them, and the
//! second writes each length prefix from that record.

use prost::encoding::{encode_key, encode_varint, encoded_len_varint, WireType};
use serde_json::{Map, Number, Value};

/// Appends `map` as a length-delimited `Struct` field number `tag` to `buf`.
pub fn encode_struct_field(tag: u32, map: &Map<String, Value>, buf: &mut Vec<u8>) {
    let mut lengths = Vec::new();
    measure_struct(map, &mut lengths);
    let mut writer = Writer {
        lengths: &lengths,
        next: 0,
        buf,
    };
    writer.write_struct(tag, map);
}

/// `google.protobuf.Struct` field 1 (`fields`) entries; map entry fields 1 (key)
/// and 2 (value).
const STRUCT_FIELDS: u32 = 1;
const ENTRY_KEY: u32 = 1;
const ENTRY_VALUE: u32 = 2;
/// `google.protobuf.Value` oneof `kind` fields.
const NULL_VALUE: u32 = 1;
const NUMBER_VALUE: u32 = 2;
const STRING_VALUE: u32 = 3;
const BOOL_VALUE: u32 = 4;
const STRUCT_VALUE: u32 = 5;
const LIST_VALUE: u32 = 6;
/// `google.protobuf.ListValue` field 1 (`values`).
const LIST_VALUES: u32 = 1;

/// A number as `Value` holds it: the double parsed from DR's text, or that text
/// when no double holds it (see [`json_to_value`](super::proto::json_to_value)).
enum NumberKind<'a> {
    Double(f64),
    Text(&'a str),
}

fn number_kind(n: &Number) -> NumberKind<'_> {
    match n.as_f64() {
        Some(f) => NumberKind::Double(f),
        None => NumberKind::Text(n.as_str()),
    }
}

/// Bytes of a length-delimited field's key, length and `len` bytes of content
/// (every tag here is below 16, so its key is one byte).
fn delimited(len: usize) -> usize {
    1 + encoded_len_varint(len as u64) + len
}

/// Body of a map entry: the key (prost leaves out an empty one, as a default)
/// and the value.
fn entry_len(key: &str, value_body: usize) -> usize {
    let key_part = if key.is_empty() {
        0
    } else {
        delimited(key.len())
    };
    key_part + delimited(value_body)
}

/// Records the body length of `map` and of everything nested in it (pre-order:
/// an object's slot before its members'); returns the body length.
fn measure_struct(map: &Map<String, Value>, lengths: &mut Vec<usize>) -> usize {
    let slot = lengths.len();
    lengths.push(0);
    let body = map
        .iter()
        .map(|(key, value)| delimited(entry_len(key, measure_value(value, lengths))))
        .sum();
    lengths[slot] = body;
    body
}

/// Body length of `value` as a `Value` message, recording nested objects and lists.
fn measure_value(value: &Value, lengths: &mut Vec<usize>) -> usize {
    match value {
        // key + varint 0/1
        Value::Null | Value::Bool(_) => 2,
        Value::Number(n) => match number_kind(n) {
            NumberKind::Double(_) => 1 + 8,
            NumberKind::Text(text) => delimited(text.len()),
        },
        Value::String(s) => delimited(s.len()),
        Value::Array(items) => {
            let slot = lengths.len();
            lengths.push(0);
            let body = items
                .iter()
                .map(|item| delimited(measure_value(item, lengths)))
                .sum();
            lengths[slot] = body;
            delimited(body)
        }
        Value::Object(map) => delimited(measure_struct(map, lengths)),
    }
}

/// The second pass: walks the JSON in the first pass's order, taking each nested
/// message's length from `lengths`.
struct Writer<'a> {
    lengths: &'a [usize],
    next: usize,
    buf: &'a mut Vec<u8>,
}

impl Writer<'_> {
    /// The recorded length of the next object or list.
    fn peek(&self) -> usize {
        // why: both passes walk the same maps in the same order, so every slot the
        // writer asks for was recorded; 0 would only ever write an empty message.
        self.lengths.get(self.next).copied().unwrap_or(0)
    }

    fn take(&mut self) -> usize {
        let len = self.peek();
        self.next += 1;
        len
    }

    fn header(&mut self, tag: u32, len: usize) {
        encode_key(tag, WireType::LengthDelimited, self.buf);
        encode_varint(len as u64, self.buf);
    }

    fn write_struct(&mut self, tag: u32, map: &Map<String, Value>) {
        let body = self.take();
        self.header(tag, body);
        for (key, value) in map {
            let value_body = self.value_body_len(value);
            self.header(STRUCT_FIELDS, entry_len(key, value_body));
            if !key.is_empty() {
                self.header(ENTRY_KEY, key.len());
                self.buf.extend_from_slice(key.as_bytes());
            }
            self.write_value(ENTRY_VALUE, value_body, value);
        }
    }

    /// Body length of `value`; for an object or list, its slot is the next one.
    fn value_body_len(&self, value: &Value) -> usize {
        match value {
            Value::Array(_) | Value::Object(_) => delimited(self.peek()),
            Value::Null | Value::Bool(_) => 2,
            Value::Number(n) => match number_kind(n) {
                NumberKind::Double(_) => 1 + 8,
                NumberKind::Text(text) => delimited(text.len()),
            },
            Value::String(s) => delimited(s.len()),
        }
    }

    fn write_value(&mut self, tag: u32, body: usize, value: &Value) {
        self.header(tag, body);
        match value {
            Value::Null => {
                encode_key(NULL_VALUE, WireType::Varint, self.buf);
                encode_varint(0, self.buf);
            }
            Value::Bool(b) => {
                encode_key(BOOL_VALUE, WireType::Varint, self.buf);
                encode_varint(u64::from(*b), self.buf);
            }
            Value::Number(n) => match number_kind(n) {
                NumberKind::Double(f) => {
                    encode_key(NUMBER_VALUE, WireType::SixtyFourBit, self.buf);
                    self.buf.extend_from_slice(&f.to_le_bytes());
                }
                NumberKind::Text(text) => {
                    self.header(STRING_VALUE, text.len());
                    self.buf.extend_from_slice(text.as_bytes());
                }
            },
            Value::String(s) => {
                self.header(STRING_VALUE, s.len());
                self.buf.extend_from_slice(s.as_bytes());
            }
            Value::Array(items) => {
                let list_body = self.take();
                self.header(LIST_VALUE, list_body);
                for item in items {
                    let item_body = self.value_body_len(item);
                    self.write_value(LIST_VALUES, item_body, item);
                }
            }
            Value::Object(map) => self.write_struct(STRUCT_VALUE, map),
        }
    }
}

#[cfg(test)]
mod tests {
    use prost::Message as _;
    use serde_json::json;

    use super::*;
    use crate::events::proto::json_object_to_struct;

    /// What prost writes for the `Struct` built from `map`, as field `tag`.
    fn prost_bytes(tag: u32, map: &Map<String, Value>) -> Vec<u8> {
        let mut buf = Vec::new();
        prost::encoding::message::encode(tag, &json_object_to_struct(map), &mut buf);
        buf
    }

    fn direct_bytes(tag: u32, map: &Map<String, Value>) -> Vec<u8> {
        let mut buf = Vec::new();
        encode_struct_field(tag, map, &mut buf);
        buf
    }

    fn object(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            other => panic!("not an object: {other}"),
        }
    }

    #[test]
    fn the_bytes_are_the_ones_prost_writes_for_the_built_struct() {
        let cases = [
            json!({}),
            json!({"a": 1}),
            json!({"": "empty key", "null": null, "t": true, "f": false, "zero": 0, "s": ""}),
            json!({"amount": 37.81, "big": 12345678901234567890_u64, "neg": -0.0,
                   "list": [1, "a", {"x": []}, [], [[null]], {}], "nested": {"a": {"b": {"c": 1}}}}),
            json!({"long": "x".repeat(300), "many": (0..200).collect::<Vec<_>>()}),
        ];
        for case in cases {
            let map = object(case);
            assert_eq!(direct_bytes(9, &map), prost_bytes(9, &map), "{map:?}");
        }
    }

    #[test]
    fn a_number_beyond_a_double_is_written_as_its_text_like_the_struct_holds_it() {
        let map: Map<String, Value> =
            serde_json::from_str(r#"{"huge":1e400,"low":-1E+400,"ok":12.5}"#).unwrap();
        let bytes = direct_bytes(1, &map);
        assert_eq!(bytes, prost_bytes(1, &map));
        #[derive(prost::Message)]
        struct Holder {
            #[prost(message, optional, tag = "1")]
            s: Option<prost_types::Struct>,
        }
        let decoded = Holder::decode(bytes.as_slice()).unwrap().s.unwrap();
        assert_eq!(
            decoded.fields["huge"].kind,
            Some(prost_types::value::Kind::StringValue("1e+400".into()))
        );
    }

    #[test]
    fn deep_nesting_is_measured_and_written_once_per_level() {
        // 100 levels of objects and lists: the record holds one slot per level, so
        // the work is linear in the depth, not quadratic.
        let mut value = json!("leaf");
        for depth in 0..100 {
            value = if depth % 2 == 0 {
                json!([value])
            } else {
                json!({ "k": value })
            };
        }
        let map = object(json!({ "root": value }));
        let mut lengths = Vec::new();
        measure_struct(&map, &mut lengths);
        assert_eq!(lengths.len(), 101);
        assert_eq!(direct_bytes(9, &map), prost_bytes(9, &map));
    }
}
