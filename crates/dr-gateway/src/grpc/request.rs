//! Helpers every handler uses on incoming requests: the caller's deadline and the
//! opaque page tokens of List RPCs.

use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::{Deserialize, Serialize};
use tonic::metadata::MetadataMap;

use crate::domain::ServiceError;

/// Time kept back from the caller's deadline so the gateway can still answer.
const DEADLINE_MARGIN: Duration = Duration::from_millis(50);

/// The caller's deadline from `grpc-timeout`, minus a small margin to answer in.
pub fn deadline(metadata: &MetadataMap) -> Option<Instant> {
    let raw = metadata.get("grpc-timeout")?.to_str().ok()?;
    let timeout = parse_grpc_timeout(raw)?;
    let margin = DEADLINE_MARGIN.min(timeout / 10);
    Some(Instant::now() + timeout.saturating_sub(margin))
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
