//! What an event held in memory costs, for the in-memory log's byte bound: every
//! allocation a [`StoredEvent`] owns — DR's raw bytes, the parsed JSON of
//! `data.object`, the protobuf event (its `Struct`s and typed payload), the
//! pre-encoded response — plus the log's index entries for it, each allocation
//! rounded up the way the allocator does.
//!
//! why: a bound that counts only the raw bytes let a log told to hold 256 MiB grow
//! the process by about four times that (`cargo bench --bench event_memory`
//! measures RSS against the bound). The estimate walks the structures instead of
//! scaling the raw size, because the cost depends on their shape: many short
//! fields cost more per byte than one long string. It is a model of glibc's malloc
//! (16-byte granules, 8 bytes of header, 32 bytes at least) and of the std and
//! serde_json containers, plus the slack a churning allocator keeps
//! ([`ALLOCATOR_SLACK_PERCENT`], measured); the benchmark checks it against the RSS.

use std::mem::size_of;

use prost::Message as _;
use prost_types::value::Kind;
use serde_json::{Map, Value};

use super::envelope::Envelope;
use super::log::StoredEvent;
use crate::pb::v1 as pb;

/// Bytes the allocator takes for a request of `n` bytes (0 for none).
pub fn alloc(n: usize) -> usize {
    if n == 0 {
        0
    } else {
        (n + 8).div_ceil(16).max(2) * 16
    }
}

fn string(s: &str) -> usize {
    alloc(s.len())
}

/// Heap bytes of a parsed JSON value (not counting the value's own slot).
pub fn json_value(v: &Value) -> usize {
    match v {
        Value::Null | Value::Bool(_) => 0,
        // why: with `arbitrary_precision` a number keeps its text in a String.
        Value::Number(n) => alloc(n.as_str().len()),
        Value::String(s) => string(s),
        Value::Array(items) => {
            alloc(items.len() * size_of::<Value>()) + items.iter().map(json_value).sum::<usize>()
        }
        Value::Object(map) => json_object(map),
    }
}

/// Heap bytes of a parsed JSON object: its B-tree nodes and every key and value.
pub fn json_object(map: &Map<String, Value>) -> usize {
    // A B-tree leaf holds up to 11 entries and is about half full after inserts
    // in arbitrary order; each node is one allocation of 11 key and value slots.
    const CAPACITY: usize = 11;
    let node = alloc(CAPACITY * (size_of::<String>() + size_of::<Value>()) + 16);
    let nodes = map.len().div_ceil(CAPACITY / 2 + 1);
    nodes * node
        + map
            .iter()
            .map(|(k, v)| string(k) + json_value(v))
            .sum::<usize>()
}

/// Heap bytes of a `google.protobuf.Struct`: its hash table and every field.
pub fn pb_struct(s: &prost_types::Struct) -> usize {
    let n = s.fields.len();
    if n == 0 {
        return 0;
    }
    // hashbrown: a power-of-two bucket count with 1/8 left free, one control byte
    // per bucket (plus a group's worth).
    let buckets = (n * 8 / 7).next_power_of_two().max(4);
    let slot = size_of::<String>() + size_of::<prost_types::Value>();
    alloc(buckets * (slot + 1) + 16)
        + s.fields
            .iter()
            .map(|(k, v)| string(k) + pb_value(v))
            .sum::<usize>()
}

fn pb_value(v: &prost_types::Value) -> usize {
    match &v.kind {
        Some(Kind::StringValue(s)) => string(s),
        Some(Kind::StructValue(s)) => pb_struct(s),
        Some(Kind::ListValue(l)) => {
            alloc(l.values.len() * size_of::<prost_types::Value>())
                + l.values.iter().map(pb_value).sum::<usize>()
        }
        _ => 0,
    }
}

/// Heap bytes of a protobuf message known only by its encoding (the typed payload):
/// its strings, repeated fields and nested messages, estimated from the encoded
/// size. Every length-delimited field of the encoding is at least one allocation
/// in memory, which the per-field allocation overhead accounts for.
fn pb_message_estimate(encoded: &[u8]) -> usize {
    let mut fields = 0;
    let mut buf = encoded;
    while let Ok(key) = prost::encoding::decode_varint(&mut buf) {
        let wire_type = key & 7;
        let skip = match wire_type {
            0 => prost::encoding::decode_varint(&mut buf)
                .map(|_| 0)
                .unwrap_or(usize::MAX),
            1 => 8,
            2 => {
                fields += 1;
                match prost::encoding::decode_varint(&mut buf) {
                    Ok(len) => usize::try_from(len).unwrap_or(usize::MAX),
                    Err(_) => usize::MAX,
                }
            }
            5 => 4,
            _ => usize::MAX,
        };
        if skip > buf.len() {
            break;
        }
        buf = &buf[skip..];
    }
    // why: the top level's length-delimited fields are strings or nested messages;
    // nested messages hold more of them, counted through their share of the bytes.
    alloc(encoded.len()) + fields * 48
}

/// Heap bytes the log's indexes spend on one held event: its id in the dedup map
/// and in the dedup order, and its slot in the ring of held events.
pub fn index_entry(id: &str) -> usize {
    // dedup map: key String + sequence in a hash-table slot (~8/7 occupancy) and the
    // id's own allocation; dedup order: (time, sequence, String) in a ring buffer
    // and a second copy of the id; held ring: one `Arc` pointer.
    let map_slot = (size_of::<String>() + size_of::<u64>() + 1) * 8 / 7;
    let order_slot = size_of::<(chrono::DateTime<chrono::Utc>, u64, String)>();
    map_slot + string(id) + order_slot + string(id) + size_of::<usize>()
}

/// Everything one held event costs the process, in bytes (see the module docs).
pub fn stored_event(event: &StoredEvent) -> usize {
    event_parts(&event.envelope, &event.proto, event.encoded_response.len())
}

/// [`stored_event`] from its parts, before the event has its place in a log:
/// `proto` with or without its cursor (a cursor's 23 bytes are counted either way),
/// `response_len` the size of its pre-encoded response.
pub fn event_parts(env: &Envelope, proto: &pb::Event, response_len: usize) -> usize {
    // The event itself, in its `Arc` allocation (two counters besides).
    let own = alloc(size_of::<StoredEvent>() + 2 * size_of::<usize>());
    let raw = alloc(env.raw.len());
    let envelope = string(&env.id)
        + string(&env.event_type)
        + env.order_id.as_deref().map_or(0, string)
        + env.digitalriver_version.as_deref().map_or(0, string)
        + alloc(env.webhook_ids.len() * size_of::<String>())
        + env.webhook_ids.iter().map(|w| string(w)).sum::<usize>()
        + json_object(&env.object)
        + env.previous_attributes.as_ref().map_or(0, json_object);
    let event_proto = alloc(CURSOR_BYTES)
        + string(&proto.id)
        + string(&proto.r#type)
        + string(&proto.digitalriver_version)
        + alloc(proto.webhook_ids.len() * size_of::<String>())
        + proto.webhook_ids.iter().map(|w| string(w)).sum::<usize>()
        + proto.data_object.as_ref().map_or(0, pb_struct)
        + proto.previous_attributes.as_ref().map_or(0, pb_struct)
        + proto
            .payload
            .as_ref()
            .map_or(0, |p| pb_message_estimate(&encode_payload(p)));
    let response = alloc(response_len.max(proto.encoded_len()));
    let heap = own + raw + envelope + event_proto + response + index_entry(&env.id);
    heap * ALLOCATOR_SLACK_PERCENT / 100
}

/// What the process's RSS holds beyond the allocations themselves while a log is
/// full and churning (events dropped and appended all the time): the allocator's
/// free lists and fragmented pages.
///
/// why: measured, not modelled. `cargo bench --bench event_memory` (64 MiB bound,
/// ~1 KB DR events of three kinds) showed RSS growth 1.23 × what the model counts;
/// 120 % brings the bound within a few percent of the RSS.
const ALLOCATOR_SLACK_PERCENT: usize = 120;

/// Length of a cursor's text.
const CURSOR_BYTES: usize = 23;

fn encode_payload(payload: &pb::event::Payload) -> Vec<u8> {
    let mut buf = Vec::with_capacity(payload.encoded_len());
    payload.encode(&mut buf);
    buf
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;
    use chrono::Utc;

    use super::*;
    use crate::events::EventEncoder;

    fn stored(body: &str) -> StoredEvent {
        let env = Envelope::parse(Bytes::from(body.to_owned())).unwrap();
        let encoder =
            EventEncoder::with_payload_decoder(Arc::new(crate::grpc::event_stream::decode_payload));
        StoredEvent::build(1, 1, Utc::now(), env, &encoder)
    }

    #[test]
    fn the_allocator_model_rounds_like_malloc() {
        assert_eq!(alloc(0), 0);
        assert_eq!(alloc(1), 32);
        assert_eq!(alloc(24), 32);
        assert_eq!(alloc(25), 48);
        assert_eq!(alloc(1000), 1008);
    }

    #[test]
    fn an_event_costs_more_than_every_form_of_it_laid_end_to_end() {
        let event = stored(
            r#"{"id":"e1","type":"order.charge.capture.complete","createdTime":"2024-01-01T00:00:00Z",
                "data":{"object":{"id":"c1","orderId":"1","currency":"USD","amount":37.81,
                "captures":[{"id":"k1","amount":25.21,"state":"complete"}]}}}"#,
        );
        let cost = stored_event(&event);
        let laid_out = event.envelope.raw.len()
            + event.encoded_response.len()
            + event.proto.encoded_len()
            + serde_json::to_vec(&event.envelope.object).unwrap().len();
        assert!(cost > laid_out, "{cost} <= {laid_out}");
    }

    #[test]
    fn many_short_fields_cost_more_per_byte_than_one_long_string() {
        let fields: Vec<String> = (0..60).map(|i| format!("\"f{i}\":\"{i}\"")).collect();
        let many = stored(&format!(
            r#"{{"id":"e1","type":"x.y","createdTime":"2024-01-01T00:00:00Z","data":{{"object":{{{}}}}}}}"#,
            fields.join(",")
        ));
        let one = stored(&format!(
            r#"{{"id":"e1","type":"x.y","createdTime":"2024-01-01T00:00:00Z","data":{{"object":{{"f":"{}"}}}}}}"#,
            "x".repeat(many.envelope.raw.len() - 70)
        ));
        let per_byte = |e: &StoredEvent| stored_event(e) as f64 / e.envelope.raw.len() as f64;
        assert!(per_byte(&many) > per_byte(&one) * 1.5);
    }
}
