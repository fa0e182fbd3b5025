//! `Envelope::parse` and the event encoder (every webhook body that passed its
//! signature, every `GET /events` item): never panic, the stored encoding (its
//! `Struct`s written straight from the JSON) decodes to the event built as messages,
//! and every number the encoded event carries is finite (proto3 JSON cannot express
//! an infinity).
#![no_main]

use std::sync::Arc;

use bytes::Bytes;
use chrono::Utc;
use dr_gateway::events::{Envelope, EventEncoder, StoredEvent};
use dr_gateway::grpc::event_stream::decode_payload;
use libfuzzer_sys::fuzz_target;

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

fuzz_target!(|data: &[u8]| {
    if let Ok(envelope) = Envelope::parse(Bytes::copy_from_slice(data)) {
        let encoder = EventEncoder::with_payload_decoder(Arc::new(decode_payload));
        let mut built = encoder.to_proto(&envelope);
        let stored = StoredEvent::build(1, 1, Utc::now(), envelope, &encoder);
        let event = stored.decode_event().expect("the stored encoding decodes");
        built.cursor = stored.cursor();
        assert_eq!(event, built, "the stored encoding differs from the built event");
        assert!(all_finite(&event), "an infinite number in an event");
    }
});
