//! `decode_page_token` (List RPCs' `page_token`, from any caller): never panics,
//! accepts only tokens bound to the same filters, and round-trips what it issues.
#![no_main]

use dr_gateway::grpc::request::{decode_page_token, encode_page_token};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = decode_page_token(&text, "orderId=1");
    let token = encode_page_token(&text, "orderId=1");
    assert_eq!(
        decode_page_token(&token, "orderId=1")
            .ok()
            .flatten()
            .as_deref(),
        (token.len() <= 1024).then_some(text.as_ref())
    );
    assert!(decode_page_token(&token, "orderId=2").is_err());
});
