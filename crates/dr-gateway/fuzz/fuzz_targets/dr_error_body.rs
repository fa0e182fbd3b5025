//! DR's error bodies, through the one error → status table: never panic, and the
//! status stays within the bounds that let any gRPC client read it (message at most
//! 512 bytes, details at most 8 KiB: 11 KiB in base64, below a 16 KiB metadata limit).
#![no_main]

use dr_gateway::digital_river::{Error, ErrorBody};
use dr_gateway::grpc::status::{from_dr_error, MAX_MESSAGE_BYTES};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let body: Option<Box<ErrorBody>> = serde_json::from_slice(data).ok().map(Box::new);
    for status in [400, 404, 409, 429, 503] {
        let error = Error::Api {
            status,
            method: "POST",
            path: "/fulfillments".into(),
            body: body.clone(),
            retry_after: None,
            request_id: Some("fuzz".into()),
            resource: None,
        };
        let status = from_dr_error(&error);
        assert!(status.message().len() <= MAX_MESSAGE_BYTES);
        assert!(
            status.details().len() <= 8 * 1024,
            "{} bytes of details",
            status.details().len()
        );
    }
});
