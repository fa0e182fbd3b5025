//! Exact money: integer minor units (cents) ↔ the decimal text DR puts on the wire.
//!
//! Amounts never pass through `f32`/`f64`. Input arrives as JSON numbers or numeric
//! strings; with serde_json's `arbitrary_precision` a number keeps its source text, so
//! `13.45` is parsed digit by digit. Output is built as text and handed to serde_json as
//! a number, so `13.45` goes out exactly.

use serde_json::{Number, Value};

/// Decimal places of a currency's minor unit (ISO 4217). Unknown currencies use 2.
pub(crate) fn exponent(currency: &str) -> u32 {
    match currency.to_ascii_uppercase().as_str() {
        "JPY" | "KRW" | "CLP" | "ISK" | "VND" | "XAF" | "XOF" | "PYG" | "UGX" => 0,
        "BHD" | "KWD" | "OMR" | "JOD" | "TND" | "IQD" | "LYD" => 3,
        _ => 2,
    }
}

/// Why an amount could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum MoneyError {
    /// Not a number or numeric string.
    #[error("amount is not a decimal number")]
    NotANumber,
    /// More decimal places than the currency has.
    #[error("amount has more than {0} decimal places")]
    TooPrecise(u32),
    /// Below zero.
    #[error("amount must not be negative")]
    Negative,
    /// Does not fit in i64 minor units.
    #[error("amount is too large")]
    TooLarge,
}

/// Parses decimal text (`"13.45"`, `"20"`, `"20.0"`) into minor units.
pub(crate) fn parse_text(text: &str, exp: u32) -> Result<i64, MoneyError> {
    let text = text.trim();
    if text.starts_with('-') {
        return Err(MoneyError::Negative);
    }
    let text = text.strip_prefix('+').unwrap_or(text);
    let (int_part, frac_part) = match text.split_once('.') {
        Some((i, f)) => (i, f),
        None => (text, ""),
    };
    if int_part.is_empty() && frac_part.is_empty() {
        return Err(MoneyError::NotANumber);
    }
    if !int_part.bytes().all(|b| b.is_ascii_digit())
        || !frac_part.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(MoneyError::NotANumber);
    }
    // why: "20.00" for JPY is fine, "20.5" is not; only non-zero digits past the exponent are refused.
    let significant = frac_part.trim_end_matches('0');
    if significant.len() as u32 > exp {
        return Err(MoneyError::TooPrecise(exp));
    }
    let mut minor: i64 = 0;
    for b in int_part.bytes() {
        minor = minor
            .checked_mul(10)
            .and_then(|m| m.checked_add(i64::from(b - b'0')))
            .ok_or(MoneyError::TooLarge)?;
    }
    let frac_digits = significant.as_bytes();
    for i in 0..exp as usize {
        let digit = frac_digits.get(i).map_or(0, |b| i64::from(b - b'0'));
        minor = minor
            .checked_mul(10)
            .and_then(|m| m.checked_add(digit))
            .ok_or(MoneyError::TooLarge)?;
    }
    Ok(minor)
}

/// Parses a JSON number or numeric string into minor units.
pub(crate) fn parse_value(value: &Value, exp: u32) -> Result<i64, MoneyError> {
    match value {
        // why: with `arbitrary_precision`, `Number::to_string` is the original source text.
        Value::Number(n) => {
            let text = n.to_string();
            if text.contains(['e', 'E']) {
                return Err(MoneyError::NotANumber);
            }
            parse_text(&text, exp)
        }
        Value::String(s) => parse_text(s, exp),
        _ => Err(MoneyError::NotANumber),
    }
}

/// Renders minor units as DR writes amounts: at least one decimal, trailing zeros
/// trimmed (`25.0`, `13.45`, `0.1`), like the payloads in DR's documentation (DR's "Capturing and cancelling charges" page: `"subtotal": 25.0`).
pub(crate) fn to_text(minor: i64, exp: u32) -> String {
    let sign = if minor < 0 { "-" } else { "" };
    let abs = minor.unsigned_abs();
    let scale = 10u64.pow(exp);
    let int_part = abs / scale;
    let frac = abs % scale;
    if exp == 0 {
        return format!("{sign}{int_part}.0");
    }
    let frac_text = format!("{frac:0width$}", width = exp as usize);
    let trimmed = frac_text.trim_end_matches('0');
    let frac_out = if trimmed.is_empty() { "0" } else { trimmed };
    format!("{sign}{int_part}.{frac_out}")
}

/// Renders minor units as an exact JSON number.
pub(crate) fn to_json(minor: i64, exp: u32) -> Value {
    let text = to_text(minor, exp);
    match serde_json::from_str::<Number>(&text) {
        Ok(n) => Value::Number(n),
        // Unreachable for text built above; a string keeps the value exact anyway.
        Err(_) => Value::String(text),
    }
}

/// Rounds `numerator / denominator` half up (both non-negative, denominator > 0).
/// Works in i128, so no input overflows; the result is at most `numerator`.
pub(crate) fn div_round_half_up(numerator: i64, denominator: i64) -> i64 {
    if denominator <= 0 {
        return 0;
    }
    let (n, d) = (i128::from(numerator), i128::from(denominator));
    i64::try_from((n * 2 + d) / (d * 2)).unwrap_or(i64::MAX)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_renders_exactly() {
        assert_eq!(parse_text("13.45", 2), Ok(1345));
        assert_eq!(parse_text("20", 2), Ok(2000));
        assert_eq!(parse_text("20.0", 2), Ok(2000));
        assert_eq!(parse_text("0.1", 2), Ok(10));
        assert_eq!(parse_text("1000", 0), Ok(1000));
        assert_eq!(parse_text("1000.00", 0), Ok(1000));
        assert_eq!(parse_text("1.005", 2), Err(MoneyError::TooPrecise(2)));
        assert_eq!(parse_text("-1", 2), Err(MoneyError::Negative));
        assert_eq!(parse_text("abc", 2), Err(MoneyError::NotANumber));
        assert_eq!(to_text(1345, 2), "13.45");
        assert_eq!(to_text(2500, 2), "25.0");
        assert_eq!(to_text(10, 2), "0.1");
        assert_eq!(to_text(0, 2), "0.0");
        assert_eq!(to_text(1000, 0), "1000.0");
        assert_eq!(to_json(1345, 2).to_string(), "13.45");
    }

    #[test]
    fn parses_json_numbers_from_source_text() {
        let v: Value = serde_json::from_str("26.89").unwrap();
        assert_eq!(parse_value(&v, 2), Ok(2689));
        assert_eq!(parse_value(&Value::String("2.45".into()), 2), Ok(245));
    }

    #[test]
    fn rounds_half_up() {
        assert_eq!(div_round_half_up(2689, 2), 1345);
        assert_eq!(div_round_half_up(10, 3), 3);
        assert_eq!(div_round_half_up(20, 3), 7);
        assert_eq!(div_round_half_up(i64::MAX, 1), i64::MAX);
        assert_eq!(div_round_half_up(i64::MAX, 2), i64::MAX / 2 + 1);
    }
}
