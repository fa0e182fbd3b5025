//! Encodes a JSON object's text as a `google.protobuf.Struct` straight into
//! protobuf bytes, in one walk of the text, without building a `serde_json::Value`
//! or a `prost_types::Struct` first; the object's ids are read on the way.
//!
//! why: building either allocates a map node per object, a `String` per key and
//! per string value and a `Vec` per list, and all of it is dropped right after
//! encoding: on webhook intake that was the largest cost after the HTTP server and
//! the signature (`cargo bench --bench webhook_intake`). The bytes decode to the
//! `Struct` [`json_object_to_struct`](super::proto::json_object_to_struct) builds
//! from the parsed object; members are written in DR's order (a `Struct` is a map:
//! its readers do not depend on the order, and a key DR repeats is read last-wins,
//! as a parsed map keeps it).
//!
//! A nested message's length comes before its body, so each one is written with a
//! one-byte length and, when it closes at 128 bytes or more, its body is moved up
//! to make room for the longer length. A byte moves at most once per enclosing
//! message that long, and nesting is limited ([`MAX_DEPTH`]), so the walk stays
//! linear in the text; DR's objects nest a few levels, and most messages in them
//! are short.

use std::borrow::Cow;

use prost::encoding::{encode_key, encode_varint, WireType};

use super::json_text::{
    number_value, JsonTextError, NumberValue, ObjectIds, Scanner, Token, MAX_DEPTH,
};

/// Appends the body of a `Struct` message (no field key or length) for the JSON
/// object `json` to `buf` and returns the object's `id` and `orderId` (the last of
/// each).
///
/// On text that is not one JSON object, or on nesting deeper than
/// [`MAX_DEPTH`], it fails and leaves `buf` as it was.
pub fn encode_struct(json: &str, buf: &mut Vec<u8>) -> Result<ObjectIds, JsonTextError> {
    let mut scanner = Scanner::new(json);
    match scanner.value()? {
        Token::ObjectStart => {}
        _ => return Err(JsonTextError::Unexpected(0)),
    }
    let before = buf.len();
    let ids = encode_object(&mut scanner, buf)?;
    if let Err(e) = scanner.finish() {
        buf.truncate(before);
        return Err(e);
    }
    Ok(ids)
}

/// [`encode_struct`] for the object whose `{` `scanner` has just read: its
/// members are read (and checked) as they are written, and `scanner` is left
/// after its `}`. On an error `buf` is left as it was and `scanner` somewhere
/// inside the object.
pub fn encode_object(
    scanner: &mut Scanner<'_>,
    buf: &mut Vec<u8>,
) -> Result<ObjectIds, JsonTextError> {
    let before = buf.len();
    let mut writer = Writer { scanner, buf };
    let mut ids = ObjectIds::default();
    match writer.struct_body(1, Some(&mut ids)) {
        Ok(()) => Ok(ids),
        Err(e) => {
            buf.truncate(before);
            Err(e)
        }
    }
}

/// [`encode_struct`] as a length-delimited field number `tag`.
pub fn encode_struct_field(
    tag: u32,
    json: &str,
    buf: &mut Vec<u8>,
) -> Result<ObjectIds, JsonTextError> {
    let before = buf.len();
    let body = open(buf, tag);
    match encode_struct(json, buf) {
        Ok(ids) => {
            close(buf, body);
            Ok(ids)
        }
        Err(e) => {
            buf.truncate(before);
            Err(e)
        }
    }
}

/// Starts a length-delimited field `tag` with a one-byte length; returns where its
/// body starts, for [`close`].
fn open(buf: &mut Vec<u8>, tag: u32) -> usize {
    key(tag, WireType::LengthDelimited, buf);
    buf.push(0);
    buf.len()
}

/// Writes a field's key: one byte for the small field numbers of `Struct`,
/// `Value`, `ListValue` and the map entry, prost's varint for any other.
///
/// why: a key and a short length per member, through prost's generic varint
/// writer, were a fifth of the walk's instructions (`cargo bench --bench
/// webhook_intake`).
fn key(tag: u32, wire_type: WireType, buf: &mut Vec<u8>) {
    if tag < 16 {
        buf.push(((tag << 3) | wire_type as u32) as u8);
    } else {
        encode_key(tag, wire_type, buf);
    }
}

/// Writes a length: one byte below 128, prost's varint above.
fn length(len: usize, buf: &mut Vec<u8>) {
    if len < 0x80 {
        buf.push(len as u8);
    } else {
        encode_varint(len as u64, buf);
    }
}

/// Writes the length of the field whose body started at `body_start`, moving the
/// body up when the length takes more than the one byte [`open`] left.
fn close(buf: &mut Vec<u8>, body_start: usize) {
    let len = buf.len().saturating_sub(body_start);
    // why: `open` pushed the length byte, so `body_start` is at least 1.
    let at = body_start.saturating_sub(1);
    // why: most messages in DR's objects are short, and their one-byte length
    // slot is already in place.
    if len < 0x80 {
        if let Some(slot) = buf.get_mut(at) {
            *slot = len as u8;
        }
        return;
    }
    let mut prefix = [0u8; 10];
    let mut slot = &mut prefix[..];
    encode_varint(len as u64, &mut slot);
    let prefix_len = 10 - slot.len();
    let extra = prefix_len - 1;
    if extra > 0 {
        let end = buf.len();
        buf.resize(end + extra, 0);
        buf.copy_within(body_start..end, body_start + extra);
    }
    if let (Some(dst), Some(src)) = (buf.get_mut(at..at + prefix_len), prefix.get(..prefix_len)) {
        dst.copy_from_slice(src);
    }
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

/// Walks the text once, writing as it reads.
struct Writer<'s, 'a, 'b> {
    scanner: &'s mut Scanner<'a>,
    buf: &'b mut Vec<u8>,
}

impl Writer<'_, '_, '_> {
    fn open(&mut self, tag: u32) -> usize {
        open(self.buf, tag)
    }

    fn close(&mut self, body_start: usize) {
        close(self.buf, body_start);
    }

    fn string(&mut self, tag: u32, text: &str) {
        key(tag, WireType::LengthDelimited, self.buf);
        length(text.len(), self.buf);
        self.buf.extend_from_slice(text.as_bytes());
    }

    /// Writes the members of the object whose `{` was just read; `depth` is its
    /// own nesting. At the top (`ids` given), `id` and `orderId` are read too.
    fn struct_body(
        &mut self,
        depth: usize,
        mut ids: Option<&mut ObjectIds>,
    ) -> Result<(), JsonTextError> {
        if depth > MAX_DEPTH {
            return Err(JsonTextError::TooDeep);
        }
        let mut first_member = true;
        while let Some(key) = self.scanner.key(first_member)? {
            first_member = false;
            let key: Cow<'_, str> = key.value()?;
            let entry = self.open(STRUCT_FIELDS);
            // why: prost leaves out an empty key, as a default.
            if !key.is_empty() {
                self.string(ENTRY_KEY, &key);
            }
            let first = self.scanner.value()?;
            if let Some(ids) = ids.as_deref_mut() {
                let slot = match key.as_ref() {
                    "id" => Some(&mut ids.id),
                    "orderId" => Some(&mut ids.order_id),
                    _ => None,
                };
                if let Some(slot) = slot {
                    *slot = super::json_text::id_text(first);
                }
            }
            self.value(ENTRY_VALUE, first, depth)?;
            self.close(entry);
        }
        Ok(())
    }

    /// Writes the value starting with `first` as `Value` field `tag`; `depth` is
    /// the nesting of its container.
    fn value(&mut self, tag: u32, first: Token<'_>, depth: usize) -> Result<(), JsonTextError> {
        let value = self.open(tag);
        match first {
            Token::Null => {
                key(NULL_VALUE, WireType::Varint, self.buf);
                self.buf.push(0);
            }
            Token::Bool(b) => {
                key(BOOL_VALUE, WireType::Varint, self.buf);
                self.buf.push(u8::from(b));
            }
            Token::Number(text) => match number_value(text) {
                NumberValue::Double(f) => {
                    key(NUMBER_VALUE, WireType::SixtyFourBit, self.buf);
                    self.buf.extend_from_slice(&f.to_le_bytes());
                }
                NumberValue::Text(text) => self.string(STRING_VALUE, &text),
            },
            Token::Str(s) => self.string(STRING_VALUE, &s.value()?),
            Token::ListStart => {
                if depth + 1 > MAX_DEPTH {
                    return Err(JsonTextError::TooDeep);
                }
                let list = self.open(LIST_VALUE);
                let mut first_item = true;
                while let Some(item) = self.scanner.item(first_item)? {
                    first_item = false;
                    self.value(LIST_VALUES, item, depth + 1)?;
                }
                self.close(list);
            }
            Token::ObjectStart => {
                let object = self.open(STRUCT_VALUE);
                self.struct_body(depth + 1, None)?;
                self.close(object);
            }
            Token::ObjectEnd | Token::ListEnd => return Err(JsonTextError::Unexpected(0)),
        }
        self.close(value);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use prost::Message as _;
    use serde_json::{json, Map, Value};

    use super::*;
    use crate::events::proto::json_object_to_struct;

    #[derive(prost::Message)]
    struct Holder {
        #[prost(message, optional, tag = "9")]
        s: Option<prost_types::Struct>,
    }

    /// The `Struct` the text's bytes decode to.
    fn decoded(json: &str) -> prost_types::Struct {
        let mut buf = Vec::new();
        encode_struct_field(9, json, &mut buf).expect("encodes");
        Holder::decode(buf.as_slice())
            .expect("decodes")
            .s
            .expect("present")
    }

    /// The `Struct` built from the parsed object.
    fn built(json: &str) -> prost_types::Struct {
        let map: Map<String, Value> = serde_json::from_str(json).expect("an object");
        json_object_to_struct(&map)
    }

    #[test]
    fn the_bytes_decode_to_the_struct_built_from_the_parsed_object() {
        let cases = [
            json!({}),
            json!({"a": 1}),
            json!({"": "empty key", "null": null, "t": true, "f": false, "zero": 0, "s": ""}),
            json!({"amount": 37.81, "big": 12345678901234567890_u64, "neg": -0.0,
                   "list": [1, "a", {"x": []}, [], [[null]], {}], "nested": {"a": {"b": {"c": 1}}}}),
            json!({"long": "x".repeat(300), "many": (0..200).collect::<Vec<_>>()}),
            json!({"esc\"aped": "line\nbreak \u{e9} \u{1F600}", "\\": "\\\\"}),
        ];
        for case in cases {
            let text = case.to_string();
            assert_eq!(decoded(&text), built(&text), "{text}");
            let pretty = serde_json::to_string_pretty(&case).unwrap();
            assert_eq!(decoded(&pretty), built(&pretty), "{pretty}");
        }
    }

    #[test]
    fn a_repeated_key_reads_as_its_last_value_like_the_parsed_map() {
        let text = r#"{"a":1,"b":{"x":1},"a":"second","b":{"y":[2]}}"#;
        assert_eq!(decoded(text), built(text));
    }

    #[test]
    fn a_number_beyond_a_double_is_written_as_its_text_like_the_struct_holds_it() {
        let text = r#"{"huge":1e400,"low":-1E+400,"ok":12.5}"#;
        let s = decoded(text);
        assert_eq!(s, built(text));
        assert_eq!(
            s.fields["huge"].kind,
            Some(prost_types::value::Kind::StringValue("1e+400".into()))
        );
    }

    #[test]
    fn deep_nesting_is_written_with_the_bytes_prost_writes() {
        // The deepest objects and lists accepted, each long enough for a two-byte
        // length: every body moved up on close lands where prost puts it.
        let mut value = json!("x".repeat(200));
        for depth in 0..MAX_DEPTH - 1 {
            value = if depth % 2 == 0 {
                json!([value])
            } else {
                json!({ "k": value })
            };
        }
        let text = json!({ "root": value }).to_string();
        // One key per object, so DR's order is the built `Struct`'s and the bytes
        // are the ones prost writes for it; and prost decodes them.
        assert_eq!(decoded(&text), built(&text));
        let mut direct = Vec::new();
        encode_struct_field(9, &text, &mut direct).unwrap();
        let mut via_prost = Vec::new();
        prost::encoding::message::encode(9, &built(&text), &mut via_prost);
        assert_eq!(direct, via_prost);
    }

    #[test]
    fn lengths_at_every_varint_boundary_match_prost() {
        for len in [
            0, 1, 100, 115, 116, 117, 118, 126, 127, 128, 129, 16_370, 16_383, 16_384, 70_000,
        ] {
            let text = json!({ "a": { "s": "y".repeat(len) }, "l": ["z".repeat(len)] }).to_string();
            let mut direct = Vec::new();
            encode_struct_field(9, &text, &mut direct).unwrap();
            let mut via_prost = Vec::new();
            prost::encoding::message::encode(9, &built(&text), &mut via_prost);
            assert_eq!(direct, via_prost, "{len}");
        }
    }

    #[test]
    fn ids_are_the_last_top_level_string_or_number_of_each() {
        let text = r#"{"id":"first","nested":{"id":"no","orderId":"no"},"list":[{"id":"no"}],
            "orderId":1E5,"id":"last"}"#;
        let ids = encode_struct(text, &mut Vec::new()).unwrap();
        assert_eq!(ids.id.as_deref(), Some("last"));
        assert_eq!(ids.order_id.as_deref(), Some("1e+5"));
        let none = encode_struct(
            r#"{"id":"","orderId":{"x":1},"\u0069d2":"x"}"#,
            &mut Vec::new(),
        );
        assert_eq!(none.unwrap(), ObjectIds::default());
        let escaped_key = encode_struct(r#"{"\u0069d":"via escape"}"#, &mut Vec::new());
        assert_eq!(escaped_key.unwrap().id.as_deref(), Some("via escape"));
    }

    #[test]
    fn nesting_beyond_the_limit_and_broken_text_fail_without_writing() {
        let too_deep = format!(
            "{{\"a\":{}{}}}",
            "[".repeat(MAX_DEPTH),
            "]".repeat(MAX_DEPTH)
        );
        let deepest = format!(
            "{{\"a\":{}{}}}",
            "[".repeat(MAX_DEPTH - 1),
            "]".repeat(MAX_DEPTH - 1)
        );
        assert!(encode_struct(&deepest, &mut Vec::new()).is_ok());
        for text in [
            too_deep.as_str(),
            "{\"a\":",
            "[1]",
            "{\"a\" 1",
            "{1:2}",
            "{\"a\":[1,}",
        ] {
            let mut buf = vec![7];
            assert!(encode_struct_field(9, text, &mut buf).is_err(), "{text}");
            assert_eq!(buf, vec![7], "{text}");
        }
    }
}
