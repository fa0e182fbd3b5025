//! Helpers every handler uses on incoming requests: the caller's deadline and the
//! opaque page tokens of List RPCs.

use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::{Deserialize, Serialize};
use tonic::metadata::MetadataMap;

use crate::domain::ServiceError;

/// The caller's deadline from `grpc-timeout`, minus [`deadline_margin`]: the
/// gateway's answer reaches the client before the client's own deadline.
pub fn deadline(metadata: &MetadataMap) -> Option<Instant> {
    let raw = metadata.get("grpc-timeout")?.to_str().ok()?;
    let timeout = parse_grpc_timeout(raw)?;
    Some(Instant::now() + answer_within(timeout))
}

/// How long the gateway may take for a request that arrived with `grpc-timeout`
/// `timeout`.
pub fn answer_within(timeout: Duration) -> Duration {
    timeout.saturating_sub(deadline_margin(timeout))
}

/// Time kept back from a received `grpc-timeout`: what the client may have rounded
/// it up by, plus the network allowance (at most a tenth of the timeout).
///
/// why: gRPC C-core clients (Python, C++, Ruby, PHP) send their remaining time
/// rounded **up** to three significant figures: 1 ms steps below 1 s, 10 ms below
/// 10 s, 100 ms below 100 s, 1 s below 1000 s, then 10 s, 100 s and coarser steps
/// for longer timeouts. A server trusting the header answers up to one step after
/// such a client gave up. Go and Java clients round up by at most a microsecond or
/// millisecond, which the same margin covers.
pub fn deadline_margin(timeout: Duration) -> Duration {
    let allowance = crate::defaults::DEADLINE_NETWORK_ALLOWANCE.min(timeout / 10);
    rounding_step(timeout) + allowance
}

/// The largest amount a C-core client may have rounded a timeout up by, judged from
/// the timeout it sent (a value rounded into a higher band gets that band's larger
/// step, which covers it).
///
/// Both encodings C-core has used are covered: three significant figures of
/// milliseconds or seconds (older releases), and three digits of a unit that
/// grows from 1 ms through 10 ms, 100 ms, 1 s, 10 s, 100 s to 10 minutes, 100
/// minutes and hours (newer ones). Where they differ the larger step is kept. In the
/// newer encoding a value of 1000 minutes or more that would be a whole number of
/// 5 minutes in 100 s units is sent in 10-minute units instead, so the 10-minute
/// step starts there.
fn rounding_step(timeout: Duration) -> Duration {
    const MINUTE_MS: u64 = 60_000;
    let millis = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
    let digits = millis.checked_ilog10().map_or(1, |d| d + 1);
    let three_figures = 10u64.saturating_pow(digits.saturating_sub(3));
    let coarse_units = if millis < 1_000 * MINUTE_MS {
        0
    } else if millis < 10_000 * MINUTE_MS {
        10 * MINUTE_MS
    } else if millis < 100_000 * MINUTE_MS {
        100 * MINUTE_MS
    } else {
        60 * MINUTE_MS
    };
    Duration::from_millis(three_figures.max(coarse_units))
}

/// DR call options for a request: the caller's deadline, a generated `upstream-id`.
pub fn call_options<T>(req: &tonic::Request<T>) -> crate::digital_river::CallOptions {
    crate::digital_river::CallOptions {
        deadline: deadline(req.metadata()),
        request_id: None,
    }
}

/// `grpc-timeout` is digits followed by one unit letter (gRPC over HTTP/2 spec).
pub(crate) fn parse_grpc_timeout(raw: &str) -> Option<Duration> {
    if raw.len() < 2 || raw.len() > 9 {
        return None;
    }
    let (digits, unit) = raw.split_at(raw.len() - 1);
    let value: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(value.checked_mul(3600)?),
        "M" => Duration::from_secs(value.checked_mul(60)?),
        "S" => Duration::from_secs(value),
        "m" => Duration::from_millis(value),
        "u" => Duration::from_micros(value),
        "n" => Duration::from_nanos(value),
        _ => return None,
    })
}

#[derive(Serialize, Deserialize)]
struct TokenBody {
    /// DR id to continue after (`startingAfter`).
    a: String,
    /// Fingerprint of the filters the token was issued for.
    f: String,
}

/// Longest page token this gateway issues (base64 of a DR id and a fingerprint).
const MAX_PAGE_TOKEN_LEN: usize = 1024;

/// Issues the token that continues a listing after `last_id` under `filters`.
pub fn encode_page_token(last_id: &str, filters: &str) -> String {
    let body = TokenBody {
        a: last_id.to_owned(),
        f: fingerprint(filters),
    };
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(&body).unwrap_or_default())
}

/// Reads a page token; it must come from a listing with the same `filters` (AIP-158).
pub fn decode_page_token(token: &str, filters: &str) -> Result<Option<String>, ServiceError> {
    if token.is_empty() {
        return Ok(None);
    }
    let invalid = || ServiceError::invalid("page_token", "is not a token this gateway issued");
    // why: a token holds one DR id (at most 255 bytes) and a fingerprint; anything
    // longer was not issued here and is refused before decoding.
    if token.len() > MAX_PAGE_TOKEN_LEN {
        return Err(invalid());
    }
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid())?;
    let body: TokenBody = serde_json::from_slice(&bytes).map_err(|_| invalid())?;
    if body.f != fingerprint(filters) {
        return Err(ServiceError::invalid(
            "page_token",
            "was issued for different filters; repeat the same filters when paging",
        ));
    }
    Ok(Some(body.a))
}

/// Validates an AIP `page_size` against DR's `limit` range (1..=100; 0 = DR default).
pub fn page_size(value: i32) -> Result<Option<u32>, ServiceError> {
    match value {
        0 => Ok(None),
        1..=100 => Ok(Some(value as u32)),
        101.. => Ok(Some(100)),
        _ => Err(ServiceError::invalid("page_size", "must not be negative")),
    }
}

fn fingerprint(filters: &str) -> String {
    // why: a stable digest (not Rust's DefaultHasher) so a token issued by one
    // replica or build is accepted by another.
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(filters.as_bytes());
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// Requires a non-empty id field.
pub fn required(field: &str, value: &str) -> Result<(), ServiceError> {
    if value.trim().is_empty() {
        Err(ServiceError::invalid(field, "must not be empty"))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_units_parse() {
        assert_eq!(parse_grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("2M"), Some(Duration::from_secs(120)));
        assert_eq!(parse_grpc_timeout("x"), None);
        assert_eq!(parse_grpc_timeout("10Q"), None);
    }

    /// What a C-core client sends for `remaining` ms (newer releases: three digits
    /// of a growing unit, rounded up; a value that is a whole coarser unit moves up).
    fn c_core_sends(remaining: u64) -> u64 {
        fn up(value: u64, unit: u64) -> u64 {
            value.div_ceil(unit)
        }
        fn hours(h: u64) -> u64 {
            h * 3_600_000
        }
        fn minutes(m: u64) -> u64 {
            if m < 1_000 {
                if !m.is_multiple_of(60) {
                    return m * 60_000;
                }
            } else if m < 10_000 {
                let v = up(m, 10);
                if !(v * 10).is_multiple_of(60) {
                    return v * 600_000;
                }
            } else if m < 100_000 {
                let v = up(m, 100);
                if !(v * 100).is_multiple_of(60) {
                    return v * 6_000_000;
                }
            }
            hours(up(m, 60))
        }
        fn seconds(s: u64) -> u64 {
            if s < 1_000 {
                if !s.is_multiple_of(60) {
                    return s * 1_000;
                }
            } else if s < 10_000 {
                let v = up(s, 10);
                if !(v * 10).is_multiple_of(60) {
                    return v * 10_000;
                }
            } else if s < 100_000 {
                let v = up(s, 100);
                if !(v * 100).is_multiple_of(60) {
                    return v * 100_000;
                }
            }
            minutes(up(s, 60))
        }
        if remaining < 1_000 {
            return remaining.max(1);
        } else if remaining < 10_000 {
            let v = up(remaining, 10);
            if !v.is_multiple_of(100) {
                return v * 10;
            }
        } else if remaining < 100_000 {
            let v = up(remaining, 100);
            if !v.is_multiple_of(10) {
                return v * 100;
            }
        }
        seconds(up(remaining, 1_000))
    }

    /// What an older C-core client sends: three significant figures, rounded up,
    /// of milliseconds below 1000 s and of seconds above.
    fn old_c_core_sends(remaining: u64) -> u64 {
        fn three_figures(x: u64) -> u64 {
            let mut scale = 1;
            while x / scale >= 1_000 {
                scale *= 10;
            }
            x.div_ceil(scale) * scale
        }
        if remaining < 1_000_000 {
            three_figures(remaining.max(1))
        } else {
            three_figures(remaining.div_ceil(1_000)) * 1_000
        }
    }

    /// Client timeouts from 1 ms to 400 h, dense where rounding bites (just above
    /// a step).
    fn client_timeouts() -> Vec<u64> {
        let mut all: Vec<u64> = (1..=3_000).collect();
        for exponent in 0..=9u32 {
            let scale = 10u64.pow(exponent);
            for mantissa in 100..=999u64 {
                all.push(mantissa * scale);
                all.push(mantissa * scale + 1);
            }
        }
        for minutes in [1u64, 59, 60, 61, 999, 1_000, 1_001, 9_999, 10_000, 24_000] {
            all.push(minutes * 60_000 + 1);
        }
        all
    }

    #[test]
    fn the_answer_reaches_a_c_core_client_before_its_deadline_from_milliseconds_to_hours() {
        let allowance = crate::defaults::DEADLINE_NETWORK_ALLOWANCE;
        for remaining in client_timeouts() {
            for sent in [c_core_sends(remaining), old_c_core_sends(remaining)] {
                assert!(
                    sent >= remaining,
                    "C-core never rounds down: {remaining} → {sent}"
                );
                let sent = Duration::from_millis(sent);
                let remaining = Duration::from_millis(remaining);
                let budget = answer_within(sent);
                // The answer leaves with the network allowance still to spare.
                assert!(
                    budget + allowance.min(sent / 10) <= remaining,
                    "client has {remaining:?}, sends {sent:?}: gateway answers within {budget:?}"
                );
                // And the gateway keeps most of the caller's time to work in.
                if remaining >= Duration::from_millis(100) {
                    assert!(
                        budget.as_secs_f64() >= remaining.as_secs_f64() * 0.85,
                        "client has {remaining:?}: gateway only uses {budget:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn the_margin_is_the_rounding_step_plus_the_network_allowance() {
        let ms = Duration::from_millis;
        let s = Duration::from_secs;
        for (sent, margin) in [
            (ms(50), ms(1) + ms(5)),
            (ms(999), ms(1) + Duration::from_micros(99_900)),
            (ms(2_020), ms(10) + ms(200)),
            (ms(9_990), ms(10) + ms(200)),
            (ms(12_100), ms(100) + ms(200)),
            (ms(30_100), ms(100) + ms(200)),
            (s(300), s(1) + ms(200)),
            (s(3_600), s(10) + ms(200)),
            (s(5 * 3_600), s(100) + ms(200)),
            (s(60_600), s(600) + ms(200)),
            (s(48 * 3_600), s(1_000) + ms(200)),
            (s(200 * 3_600), s(6_000) + ms(200)),
        ] {
            assert_eq!(deadline_margin(sent), margin, "grpc-timeout {sent:?}");
        }
    }

    #[test]
    fn a_python_client_with_twelve_seconds_is_answered_inside_them() {
        // 12.02 s left when the call starts: C-core sends 12.1 s.
        assert_eq!(c_core_sends(12_020), 12_100);
        let mut metadata = MetadataMap::new();
        metadata.insert("grpc-timeout", "12100m".parse().unwrap());
        let now = Instant::now();
        let deadline = deadline(&metadata).unwrap();
        assert!(deadline <= now + Duration::from_millis(12_020) - Duration::from_millis(200));
    }

    #[test]
    fn page_tokens_round_trip_and_bind_to_filters() {
        let token = encode_page_token("ful_9", "order=1");
        assert_eq!(
            decode_page_token(&token, "order=1").unwrap().as_deref(),
            Some("ful_9")
        );
        assert!(decode_page_token(&token, "order=2").is_err());
        assert!(decode_page_token("garbage!", "order=1").is_err());
        assert_eq!(decode_page_token("", "x").unwrap(), None);
    }

    #[test]
    fn page_size_is_clamped_to_dr_limits() {
        assert_eq!(page_size(0).unwrap(), None);
        assert_eq!(page_size(50).unwrap(), Some(50));
        assert_eq!(page_size(1000).unwrap(), Some(100));
        assert!(page_size(-1).is_err());
    }
}
