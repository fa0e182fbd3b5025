//! `money::parse_nanos` (DR's amounts, from webhooks and API answers): never panics,
//! linear in its text whatever the exponent, and exact when it accepts.
#![no_main]

use dr_gateway::money;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(nanos) = money::parse_nanos(&text) {
        // What it accepts survives the trip through `Money` when it fits one.
        if let Ok(m) = money::from_nanos("USD", nanos) {
            assert_eq!(money::to_nanos(&m), nanos);
        }
    }
});
