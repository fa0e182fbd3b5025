//! Exact conversion of DR's decimal amounts into `Money { units, nanos }`.
//!
//! why: DR sends amounts as JSON numbers (`26.89`). Going through `f64` would turn
//! some into `26.889999…`; we parse the number's text instead (serde_json keeps it
//! with `arbitrary_precision`).

use crate::pb::v1::Money;

const NANOS_PER_UNIT: i128 = 1_000_000_000;

/// A decimal text that is not an amount `Money` can hold exactly.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not an exact amount: {reason}")]
pub struct MoneyError {
    /// The text (its first [`MAX_ERROR_TEXT`] bytes).
    text: String,
    reason: &'static str,
}

/// How much of a rejected text an error keeps.
const MAX_ERROR_TEXT: usize = 64;

/// Most significant digits an amount may have (an `i128` of nanos holds 38).
const MAX_DIGITS: usize = 38;

impl MoneyError {
    fn new(text: &str, reason: &'static str) -> Self {
        let mut end = text.len().min(MAX_ERROR_TEXT);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        Self {
            text: text[..end].to_owned(),
            reason,
        }
    }
}

/// Parses a decimal number's text (`"26.89"`, `"-0.5"`, `"1.18026E3"`) into nanos.
///
/// Takes time linear in the text's length, whatever its exponent: the exponent only
/// moves the decimal point, and a shift beyond what an `i128` of nanos can hold is
/// refused before any arithmetic (`0e-2147483648` is zero, `1e40` too large).
pub fn parse_nanos(text: &str) -> Result<i128, MoneyError> {
    let err = |reason| MoneyError::new(text, reason);
    let t = text.trim();
    let (negative, t) = match t.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, t.strip_prefix('+').unwrap_or(t)),
    };
    let (mantissa, exponent) = match t.find(['e', 'E']) {
        Some(i) => {
            let exp: i32 = t[i + 1..].parse().map_err(|_| err("bad exponent"))?;
            (&t[..i], exp)
        }
        None => (t, 0),
    };
    let (int_part, frac_part) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if int_part.is_empty() && frac_part.is_empty() {
        return Err(err("no digits"));
    }
    if !int_part
        .bytes()
        .chain(frac_part.bytes())
        .all(|b| b.is_ascii_digit())
    {
        return Err(err("not a decimal number"));
    }
    // why: the digits are read where they are, int part then fraction, not copied
    // into one string first (an allocation and a format per amount, on every
    // webhook and DR answer that carries one).
    let digits = || int_part.bytes().chain(frac_part.bytes());
    let total = int_part.len() + frac_part.len();
    let leading_zeros = digits().take_while(|&b| b == b'0').count();
    if leading_zeros == total {
        return Ok(0);
    }
    // value = significant × 10^scale nanos, with the trailing zeros folded into scale:
    // digits × 10^(exponent − frac_len) units, × 10^9 nanos.
    let trailing_zeros = digits().rev().take_while(|&b| b == b'0').count();
    let scale = i64::from(exponent) - frac_part.len() as i64 + 9 + trailing_zeros as i64;
    if scale < 0 {
        return Err(err("finer than a nano"));
    }
    let significant = total - leading_zeros - trailing_zeros;
    if significant > MAX_DIGITS {
        return Err(err("too many digits"));
    }
    let value = digits()
        .skip(leading_zeros)
        .take(significant)
        .try_fold(0i128, |value, digit| {
            value
                .checked_mul(10)
                .and_then(|v| v.checked_add(i128::from(digit - b'0')))
        })
        .ok_or_else(|| err("too many digits"))?;
    let shift = u32::try_from(scale)
        .ok()
        .and_then(|scale| 10i128.checked_pow(scale))
        .ok_or_else(|| err("too large"))?;
    let value = value.checked_mul(shift).ok_or_else(|| err("too large"))?;
    Ok(if negative { -value } else { value })
}

/// Builds `Money` from a nano amount.
pub fn from_nanos(currency_code: &str, nanos: i128) -> Result<Money, MoneyError> {
    let units = i64::try_from(nanos / NANOS_PER_UNIT).map_err(|_| MoneyError {
        text: nanos.to_string(),
        reason: "too large",
    })?;
    // the remainder has the sign of `nanos`, as google.type.Money requires
    let rem = (nanos % NANOS_PER_UNIT) as i32;
    Ok(Money {
        currency_code: currency_code.to_owned(),
        units,
        nanos: rem,
    })
}

/// Parses DR's decimal text into `Money`.
pub fn parse(currency_code: &str, text: &str) -> Result<Money, MoneyError> {
    from_nanos(currency_code, parse_nanos(text)?)
}

/// `Money` back to nanos (for sums and comparisons).
pub fn to_nanos(money: &Money) -> i128 {
    i128::from(money.units) * NANOS_PER_UNIT + i128::from(money.nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(text: &str) -> (i64, i32) {
        let money = parse("USD", text).unwrap();
        (money.units, money.nanos)
    }

    #[test]
    fn parses_dr_amounts_exactly() {
        assert_eq!(m("26.89"), (26, 890_000_000));
        assert_eq!(m("13.45"), (13, 450_000_000));
        assert_eq!(m("0.0"), (0, 0));
        assert_eq!(m("1180.26"), (1180, 260_000_000));
        assert_eq!(m("5"), (5, 0));
        assert_eq!(m("0.1"), (0, 100_000_000));
        // 0.1 + 0.2 style values that f64 cannot hold
        assert_eq!(m("0.30000000"), (0, 300_000_000));
    }

    #[test]
    fn negative_amounts_keep_one_sign() {
        assert_eq!(m("-1.75"), (-1, -750_000_000));
        assert_eq!(m("-0.5"), (0, -500_000_000));
    }

    #[test]
    fn exponents_shift_the_point() {
        assert_eq!(m("1.18026E3"), (1180, 260_000_000));
        assert_eq!(m("2689e-2"), (26, 890_000_000));
    }

    #[test]
    fn rejects_what_is_not_exact() {
        assert!(parse("USD", "1.0000000001").is_err());
        assert!(parse("USD", "abc").is_err());
        assert!(parse("USD", "").is_err());
        assert!(parse("USD", "1e40").is_err());
    }

    #[test]
    fn any_exponent_is_read_without_counting_to_it() {
        // Each of these looped once per unit of the exponent (seconds for the first).
        assert_eq!(parse_nanos("0e-2147483648"), Ok(0));
        assert_eq!(parse_nanos("-0E+2147483647"), Ok(0));
        assert!(parse_nanos("1e-2147483648").is_err());
        assert!(parse_nanos("1e2147483647").is_err());
        assert!(parse_nanos("9e-2147483648").is_err());
        // Trailing zeros never count as precision.
        assert_eq!(
            m("26.890000000000000000000000000000000000000000"),
            (26, 890_000_000)
        );
        assert_eq!(m("100000000000000000000000000000000e-30"), (100, 0));
        assert_eq!(m("0.000000001"), (0, 1));
        assert!(parse("USD", "0.0000000001").is_err());
        // The error keeps only the start of a long text.
        let long = "1".repeat(100_000);
        assert!(parse_nanos(&long).unwrap_err().to_string().len() < 200);
    }

    #[test]
    fn leading_and_trailing_zeros_are_not_significant_digits() {
        assert_eq!(parse_nanos("000.000"), Ok(0));
        assert_eq!(parse_nanos(".5"), Ok(500_000_000));
        assert_eq!(parse_nanos("007.250"), Ok(7_250_000_000));
        // 38 significant digits fit an i128; 39 do not, whatever the zeros around them.
        let ones = |n: usize, exponent: i32| format!("0000.{}000e{exponent}", "1".repeat(n));
        assert_eq!(
            parse_nanos(&ones(38, 29)),
            Ok("1".repeat(38).parse::<i128>().unwrap())
        );
        let refused = parse_nanos(&ones(39, 30)).unwrap_err();
        assert!(refused.to_string().contains("too many digits"), "{refused}");
    }

    #[test]
    fn round_trips_through_nanos() {
        let money = parse("EUR", "-12.34").unwrap();
        assert_eq!(to_nanos(&money), -12_340_000_000);
    }
}
