//! Length caps for logged values.
//!
//! why: ids, messages and headers come from callers and from DR; a 3 MB field must
//! not become a 3 MB log line (or span attribute). Every such value is logged through
//! [`capped`], which keeps its first [`LOG_VALUE_MAX_BYTES`] bytes and says how long
//! it was. [`crate::telemetry::logging`] also bounds whole lines, for anything that
//! slips through.

use std::fmt;

use crate::defaults::LOG_VALUE_MAX_BYTES;

/// `value` for a log field or span attribute: at most [`LOG_VALUE_MAX_BYTES`] bytes
/// of it (cut at a character boundary), then `…(N bytes)` when it was longer.
pub fn capped(value: &str) -> Capped<'_> {
    Capped {
        value,
        max: LOG_VALUE_MAX_BYTES,
    }
}

/// A value cut to a maximum length when displayed; see [`capped`].
#[derive(Debug, Clone, Copy)]
pub struct Capped<'a> {
    value: &'a str,
    max: usize,
}

impl Capped<'_> {
    /// The same value with another cap.
    pub fn at_most(self, max: usize) -> Self {
        Self { max, ..self }
    }

    /// The displayed text as an owned string.
    pub fn to_owned_string(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for Capped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.value.len() <= self.max {
            return f.write_str(self.value);
        }
        let mut end = self.max;
        while !self.value.is_char_boundary(end) {
            end -= 1;
        }
        write!(f, "{}…({} bytes)", &self.value[..end], self.value.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_value_is_logged_as_it_is() {
        assert_eq!(capped("ch_123").to_string(), "ch_123");
    }

    #[test]
    fn a_megabyte_value_is_cut_and_says_how_long_it_was() {
        let big = "x".repeat(1 << 20);
        let shown = capped(&big).to_string();
        assert!(shown.len() < LOG_VALUE_MAX_BYTES + 32, "{}", shown.len());
        assert!(shown.ends_with("…(1048576 bytes)"), "{shown}");
    }

    #[test]
    fn a_cut_never_splits_a_character() {
        let text = "é".repeat(10);
        assert_eq!(capped(&text).at_most(5).to_string(), "éé…(20 bytes)");
    }
}
