//! `Envelope::parse` and the event encoder (every webhook body that passed its
//! signature, every `GET /events` item): never panic; refuse as "not JSON" only
//! what serde_json refuses, and accept nothing serde_json refuses; read the fields
//! a parsed map of the body holds (the last of a repeated key, a wrong type as
//! absent); the stored encoding (its `Struct`s written straight from the JSON)
//! decodes to the event built as messages; and every number the encoded event
//! carries is finite (proto3 JSON cannot express an infinity).
#![no_main]

use std::sync::Arc;

use bytes::Bytes;
use chrono::Utc;
use dr_gateway::events::json_text::JsonTextError;
use dr_gateway::events::{Envelope, EnvelopeError, EventEncoder, StoredEvent};
use dr_gateway::grpc::event_stream::decode_payload;
use libfuzzer_sys::fuzz_target;
use serde::de::IgnoredAny;
use serde_json::{Map, Value};

fn all_finite(value: &dr_gateway::pb::v1::Event) -> bool {
    use prost_types::value::Kind;
    fn check(v: &prost_types::Value) -> bool {
        match &v.kind {
            Some(Kind::NumberValue(n)) => n.is_finite(),
            Some(Kind::StructValue(s)) => s.fields.values().all(check),
            Some(Kind::ListValue(l)) => l.values.iter().all(check),
            _ => true,
        }
    }
    [&value.data_object, &value.previous_attributes]
        .into_iter()
        .flatten()
        .all(|s| s.fields.values().all(check))
}

/// The fields a parsed map of the body holds, held against the envelope's.
fn same_fields_as_the_parsed_map(envelope: &Envelope, body: &[u8]) {
    // why: serde_json's `Value` stops at 128 levels; deeper bodies are only
    // checked against serde_json's reading of their syntax.
    let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(body) else {
        return;
    };
    let text = |key: &str| map.get(key).and_then(Value::as_str);
    assert_eq!(Some(envelope.id.as_str()), text("id"));
    assert_eq!(Some(envelope.event_type.as_str()), text("type"));
    assert_eq!(envelope.live_mode, map.get("liveMode") == Some(&Value::Bool(true)));
    let webhook_ids: Vec<&str> = match map.get("webhookIds") {
        Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    assert_eq!(envelope.webhook_ids, webhook_ids);
    assert_eq!(
        envelope.digitalriver_version.as_deref(),
        text("digitalriverVersion").or(text("digitalRiverVersion"))
    );
    let data = map.get("data").and_then(Value::as_object);
    let object = data.and_then(|d| d.get("object")).and_then(Value::as_object);
    assert_eq!(Some(&envelope.object_value()), object);
    let previous = data
        .and_then(|d| d.get("previousAttributes"))
        .and_then(Value::as_object);
    let kept: Option<Map<String, Value>> = envelope
        .previous_attributes_json()
        .map(|json| serde_json::from_str(json).expect("kept text is an object"));
    assert_eq!(kept.as_ref(), previous);
}

fuzz_target!(|data: &[u8]| {
    let parsed = Envelope::parse(Bytes::copy_from_slice(data));
    let serde_reads = serde_json::from_slice::<IgnoredAny>(data).is_ok();
    match &parsed {
        // why: a string the gateway decodes (a key, a top-level text) must
        // decode; serde_json checks that only where it decodes a string too.
        Err(EnvelopeError::NotJson(JsonTextError::BadString)) => assert!(
            serde_json::from_slice::<Value>(data).is_err(),
            "refused a string serde_json decodes"
        ),
        // why: serde_json skips strings without checking their UTF-8; the whole
        // body is checked here first, so only `NotJson` is compared.
        Err(EnvelopeError::NotJson(e)) => {
            assert!(!serde_reads, "refused JSON serde_json reads: {e}")
        }
        Ok(_) => assert!(serde_reads, "accepted what serde_json refuses"),
        Err(_) => {}
    }
    if let Ok(envelope) = parsed {
        same_fields_as_the_parsed_map(&envelope, data);
        let encoder = EventEncoder::with_payload_decoder(Arc::new(decode_payload));
        let mut built = encoder.to_proto(&envelope);
        let stored = StoredEvent::build(1, 1, Utc::now(), envelope, &encoder);
        let event = stored.decode_event().expect("the stored encoding decodes");
        built.cursor = stored.cursor();
        assert_eq!(event, built, "the stored encoding differs from the built event");
        assert!(all_finite(&event), "an infinite number in an event");
    }
});
