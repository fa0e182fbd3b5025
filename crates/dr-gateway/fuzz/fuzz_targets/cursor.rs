//! `Cursor::decode` (Subscribe's `after_cursor`, from any caller): never panics,
//! and what it accepts encodes back to a cursor that decodes the same.
#![no_main]

use dr_gateway::events::Cursor;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(cursor) = Cursor::decode(&text) {
        assert_eq!(Cursor::decode(&cursor.encode()), Ok(cursor));
    }
});
