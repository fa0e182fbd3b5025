//! Event-type globs (`EventFilter` types from Subscribe callers, matched against
//! every event's type): never panic, and matching is linear. Input: the pattern, a
//! newline, the event type.
#![no_main]

use dr_gateway::events::filter::TypePattern;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (pattern, name) = text.split_once('\n').unwrap_or((&text, ""));
    if let Ok(p) = TypePattern::parse(pattern) {
        let matched = p.matches(name);
        if !pattern.contains('*') {
            assert_eq!(matched, pattern == name);
        }
        if pattern == "*" {
            assert!(matched);
        }
    }
});
