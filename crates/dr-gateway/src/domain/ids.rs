//! What the gateway accepts as a Digital River id or a filter text before either
//! reaches DR, in a path (`GET /orders/{id}`) or a query (`?orderId=`). A request
//! breaking a rule gets INVALID_ARGUMENT naming the field; nothing is sent.
//!
//! why: DR documents no charset and no maximum length for its ids and says to treat
//! them as opaque strings (docs/digital-river.md §5.4: the shapes seen in examples
//! are digits for orders and line items, UUIDs for charges, sources and events,
//! `ful_<uuid>` for fulfillments). So the gateway does not hold ids to those
//! shapes; it refuses only what no DR id contains and what would change the
//! request's meaning:
//! - **ids** ([`check_id`]): 1 to [`MAX_ID_BYTES`] bytes; not `.` or `..` (a URL
//!   resolves them as "this" and "parent" segment: `GET /orders/..` would read
//!   `GET /`); no whitespace or control characters; none of `/ \ ? # %` (path and
//!   query delimiters, and the escape character);
//! - **filter texts** ([`check_text`]: a merchant's upstream id, SKU id, carrier name,
//!   tracking number): at most [`MAX_TEXT_BYTES`] bytes, no control characters
//!   (spaces are fine; the query encoding escapes everything else).
//!
//! The DR client refuses `.`, `..` and empty path segments again, in case a caller
//! forgets a check (`digital_river::Client`).

use super::{FieldViolation, ServiceError};

/// Longest id accepted, in bytes (DR's longest ids are `ful_` + a 36-character UUID).
pub const MAX_ID_BYTES: usize = 255;
/// Longest filter text accepted, in bytes.
pub const MAX_TEXT_BYTES: usize = 255;

/// Characters no DR id contains that would change a URL if it did.
const URL_DELIMITERS: [char; 5] = ['/', '\\', '?', '#', '%'];

/// What is wrong with `id` as a DR id, if anything.
pub fn id_problem(id: &str) -> Option<String> {
    if id.is_empty() {
        return Some("must not be empty".into());
    }
    if id.len() > MAX_ID_BYTES {
        return Some(format!("must be at most {MAX_ID_BYTES} bytes"));
    }
    if id == "." || id == ".." {
        return Some("must not be \".\" or \"..\"".into());
    }
    if let Some(c) = id
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || URL_DELIMITERS.contains(c))
    {
        return Some(format!(
            "must not contain {c:?} (no whitespace, control characters, '/', '\\\\', '?', '#' or '%')"
        ));
    }
    None
}

/// What is wrong with `text` as a filter text, if anything (empty is fine: unset).
pub fn text_problem(text: &str) -> Option<String> {
    if text.len() > MAX_TEXT_BYTES {
        return Some(format!("must be at most {MAX_TEXT_BYTES} bytes"));
    }
    text.chars()
        .find(|c| c.is_control())
        .map(|c| format!("must not contain the control character {c:?}"))
}

/// INVALID_ARGUMENT naming `field` unless `id` is a usable DR id.
pub fn check_id(field: &str, id: &str) -> Result<(), ServiceError> {
    match id_problem(id) {
        Some(problem) => Err(ServiceError::invalid(field, problem)),
        None => Ok(()),
    }
}

/// INVALID_ARGUMENT naming `field` unless `text` is a usable filter text.
pub fn check_text(field: &str, text: &str) -> Result<(), ServiceError> {
    match text_problem(text) {
        Some(problem) => Err(ServiceError::invalid(field, problem)),
        None => Ok(()),
    }
}

/// Adds a violation of `field` (named only when there is one) to `violations` unless
/// `id` is a usable DR id.
pub fn push_id_violation(
    violations: &mut Vec<FieldViolation>,
    field: impl FnOnce() -> String,
    id: &str,
) {
    if let Some(problem) = id_problem(id) {
        violations.push(FieldViolation::new(field(), problem));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dr_shaped_ids_pass() {
        for id in [
            "231388420336",
            "ful_14776912-d0ff-4f11-974f-17b0f2830ea2",
            "fe4bf8dd-4a1a-4bfb-bd80-ea5d8492739b",
            "1117116275_000010_3700100415",
            "sku_a.b",
            "a..b",
            &"9".repeat(MAX_ID_BYTES),
        ] {
            assert_eq!(id_problem(id), None, "{id}");
        }
    }

    #[test]
    fn ids_that_would_change_the_url_are_refused() {
        for id in [
            "",
            ".",
            "..",
            "a/b",
            "a\\b",
            "a?b",
            "a#b",
            "%2e%2e",
            "a b",
            " 1",
            "1\n",
            "a\u{0}b",
            "a\r\nb",
            "\u{2028}",
            &"9".repeat(MAX_ID_BYTES + 1),
        ] {
            assert!(id_problem(id).is_some(), "{id:?}");
        }
    }

    #[test]
    fn filter_texts_may_hold_spaces_but_no_control_characters() {
        assert_eq!(text_problem("UPS Ground / 2nd day"), None);
        assert_eq!(text_problem(""), None);
        assert!(text_problem("a\nb").is_some());
        assert!(text_problem(&"x".repeat(MAX_TEXT_BYTES + 1)).is_some());
    }
}
