//! Verifies the `DigitalRiver-Signature` header on the raw body bytes
//! (docs/digital-river.md §4.3).
//!
//! why: DR does not document the header's exact format. DR's own SFCC connector
//! implies `"<ts>, <base64 HMAC-SHA256(secret, "<ts>.<raw body>")>"`; until a captured
//! test-mode webhook confirms it, this verifier is tolerant (§4.3 "Recommended"):
//! - the parts are split on `,` and trimmed; the timestamp is the part starting with
//!   `t=`, or else the first part;
//! - every other part is a candidate signature, with a short `xx=` prefix
//!   (`v1=`, `v0=`, `s=`) stripped, so several signatures (rotation) are fine;
//! - the signed prefix is tried both verbatim (`t=123`) and as bare digits (`123`);
//! - a timestamp above 10^12 is milliseconds, else seconds;
//! - every configured secret is tried (rotation: DR keeps the old one ~12 h).
//!
//! Every (secret, prefix, candidate) combination is compared in constant time and
//! the results are OR-ed without short-circuiting, so timing reveals neither which
//! secret matched nor how much of a signature was right.

use std::{sync::Arc, time::Duration};

use aws_lc_rs::hmac;
use base64::{
    engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD},
    Engine as _,
};
use secrecy::{ExposeSecret, SecretString};
use subtle::{Choice, ConstantTimeEq};

use crate::clock::Clock;

/// Header DR signs webhooks with (note: no dash between Digital and River).
pub const SIGNATURE_HEADER: &str = "digitalriver-signature";

/// Most signature candidates looked at in one header (bounds the work a forged
/// header can cause).
const MAX_CANDIDATES: usize = 8;

/// Longest candidate worth decoding: a SHA-256 is 44 characters in base64 and 64 in
/// hex; longer ones cannot match and are skipped undecoded.
const MAX_CANDIDATE_LEN: usize = 128;

/// Why a webhook's signature was rejected. Says nothing about the secrets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// No `DigitalRiver-Signature` header.
    #[error("missing DigitalRiver-Signature header")]
    Missing,
    /// The header has no usable timestamp or no signature part.
    #[error("malformed DigitalRiver-Signature header")]
    Malformed,
    /// The timestamp is outside the tolerance window.
    #[error("signature timestamp outside the tolerance window")]
    Stale,
    /// No configured secret produced any of the signatures.
    #[error("signature does not match")]
    Mismatch,
    /// No webhook secret is configured, so nothing can be verified.
    #[error("no webhook secret configured")]
    NoSecrets,
}

/// Which variant of the header matched; logged so the verifier can be tightened
/// once DR's real format is confirmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verified {
    /// Index of the secret that matched (0 = the first configured).
    pub secret_index: usize,
    /// True when the signed prefix was the bare digits rather than the verbatim part.
    pub digits_prefix: bool,
    /// True when the timestamp was read as milliseconds.
    pub millis: bool,
}

/// Checks webhook signatures against the configured secrets.
#[derive(Clone)]
pub struct SignatureVerifier {
    /// One HMAC-SHA256 key per configured secret, keyed once here: the key's inner
    /// and outer pads are hashed once, not per webhook.
    keys: Arc<[hmac::Key]>,
    tolerance: Duration,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for SignatureVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignatureVerifier")
            .field("secrets", &format_args!("[{} redacted]", self.keys.len()))
            .field("tolerance", &self.tolerance)
            .finish_non_exhaustive()
    }
}

/// A parsed header.
///
/// why: its parts are kept on the stack (there are at most
/// [`MAX_CANDIDATES`] + 1), not in a `Vec` per delivery.
#[derive(Debug, PartialEq, Eq)]
struct ParsedHeader<'a> {
    /// The timestamp part as sent, e.g. `1700000000` or `t=1700000000`.
    ts_raw: &'a str,
    /// Just its digits.
    ts_digits: &'a str,
    /// The header's non-empty parts, trimmed, the timestamp's among them.
    parts: [&'a str; MAX_CANDIDATES + 1],
    /// How many of `parts` are filled.
    len: usize,
    /// Which part is the timestamp.
    ts_index: usize,
}

impl<'a> ParsedHeader<'a> {
    /// Candidate signatures: every part but the timestamp, prefixes stripped.
    fn candidates(&self) -> impl Iterator<Item = &'a str> + '_ {
        self.parts
            .iter()
            .take(self.len)
            .enumerate()
            .filter(|&(i, _)| i != self.ts_index)
            .map(|(_, part)| strip_scheme_prefix(part))
    }
}

impl SignatureVerifier {
    /// A verifier trying every secret in `secrets` (order irrelevant).
    pub fn new(secrets: Vec<SecretString>, tolerance: Duration, clock: Arc<dyn Clock>) -> Self {
        Self {
            keys: secrets.iter().map(hmac_key).collect(),
            tolerance,
            clock,
        }
    }

    /// Number of configured secrets.
    pub fn secret_count(&self) -> usize {
        self.keys.len()
    }

    /// Verifies `header` (the `DigitalRiver-Signature` value) over `body`.
    pub fn verify(&self, header: Option<&[u8]>, body: &[u8]) -> Result<Verified, SignatureError> {
        if self.keys.is_empty() {
            return Err(SignatureError::NoSecrets);
        }
        let header = header.ok_or(SignatureError::Missing)?;
        let header = std::str::from_utf8(header).map_err(|_| SignatureError::Malformed)?;
        let parsed = parse_header(header).ok_or(SignatureError::Malformed)?;
        let millis = self.check_timestamp(parsed.ts_digits)?;

        let mut decoded = [[0u8; MAC_LEN]; MAX_CANDIDATES];
        let mut count = 0;
        let macs = parsed
            .candidates()
            .filter(|c| c.len() <= MAX_CANDIDATE_LEN)
            .filter_map(decode_signature);
        for (slot, mac) in decoded.iter_mut().zip(macs) {
            *slot = mac;
            count += 1;
        }
        let decoded = decoded.get(..count).unwrap_or_default();
        if decoded.is_empty() {
            return Err(SignatureError::Mismatch);
        }

        let digits_too = parsed.ts_digits != parsed.ts_raw;
        let prefixes = [(parsed.ts_raw, false), (parsed.ts_digits, true)];
        let prefixes = prefixes
            .get(..1 + usize::from(digits_too))
            .unwrap_or_default();

        let mut matched = Choice::from(0);
        let mut found: Option<Verified> = None;
        for (secret_index, key) in self.keys.iter().enumerate() {
            for &(prefix, digits_prefix) in prefixes {
                let expected = hmac_sha256(key, prefix, body);
                for candidate in decoded {
                    let hit = expected.as_ref().ct_eq(candidate.as_slice());
                    matched |= hit;
                    // why: record the first match for logging, without branching
                    // the comparison loop itself on secret data.
                    if found.is_none() && bool::from(hit) {
                        found = Some(Verified {
                            secret_index,
                            digits_prefix,
                            millis,
                        });
                    }
                }
            }
        }
        match (bool::from(matched), found) {
            (true, Some(v)) => Ok(v),
            _ => Err(SignatureError::Mismatch),
        }
    }

    /// Returns whether the timestamp was in milliseconds, or `Stale`.
    fn check_timestamp(&self, digits: &str) -> Result<bool, SignatureError> {
        let value: i64 = digits.parse().map_err(|_| SignatureError::Malformed)?;
        let millis = value > 1_000_000_000_000;
        let ts_ms = if millis {
            value
        } else {
            value.checked_mul(1000).ok_or(SignatureError::Malformed)?
        };
        let now_ms = self.clock.now().timestamp_millis();
        let tolerance_ms = i64::try_from(self.tolerance.as_millis()).unwrap_or(i64::MAX);
        if now_ms.abs_diff(ts_ms) > tolerance_ms.unsigned_abs() {
            return Err(SignatureError::Stale);
        }
        Ok(millis)
    }
}

/// Splits the header into timestamp and candidate signatures.
fn parse_header(header: &str) -> Option<ParsedHeader<'_>> {
    let mut parts = [""; MAX_CANDIDATES + 1];
    let mut len = 0;
    let nonempty = header.split(',').map(str::trim).filter(|p| !p.is_empty());
    for (slot, part) in parts.iter_mut().zip(nonempty) {
        *slot = part;
        len += 1;
    }
    let filled = parts.get(..len)?;
    let ts_index = filled.iter().position(|p| p.starts_with("t=")).unwrap_or(0);
    let ts_raw = *filled.get(ts_index)?;
    let ts_digits = ts_raw.strip_prefix("t=").unwrap_or(ts_raw).trim();
    if ts_digits.is_empty() || !ts_digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // why: every part but the timestamp is a candidate; there must be one.
    if len < 2 {
        return None;
    }
    Some(ParsedHeader {
        ts_raw,
        ts_digits,
        parts,
        len,
        ts_index,
    })
}

/// Strips `v1=`-style prefixes: a short alphanumeric label before the first `=`,
/// when something other than padding follows it (base64 has `=` only at the end).
fn strip_scheme_prefix(part: &str) -> &str {
    match part.split_once('=') {
        Some((label, rest))
            if (1..=4).contains(&label.len())
                && label.bytes().all(|b| b.is_ascii_alphanumeric())
                && !rest.is_empty()
                && !rest.starts_with('=') =>
        {
            rest.trim()
        }
        _ => part,
    }
}

/// Length of an HMAC-SHA256.
const MAC_LEN: usize = 32;

/// Decodes a candidate: standard base64 (what the SFCC code compares), tolerating
/// missing padding, URL-safe alphabets and hex. Only a SHA-256-sized value counts.
///
/// why: decoded into a buffer on the stack; candidates are at most
/// [`MAX_CANDIDATE_LEN`] characters, so their base64 fits in it.
fn decode_signature(candidate: &str) -> Option<[u8; MAC_LEN]> {
    let mut buf = [0u8; MAX_CANDIDATE_LEN * 3 / 4];
    // why: 64 hex digits are also valid base64 (of 48 bytes), so keep looking until
    // a decoding yields a SHA-256-sized value.
    [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD]
        .iter()
        .find_map(|engine| match engine.decode_slice(candidate, &mut buf) {
            Ok(MAC_LEN) => buf.get(..MAC_LEN)?.try_into().ok(),
            _ => None,
        })
        .or_else(|| decode_hex(candidate))
}

fn decode_hex(s: &str) -> Option<[u8; MAC_LEN]> {
    if s.len() != 2 * MAC_LEN {
        return None;
    }
    let mut out = [0u8; MAC_LEN];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// The HMAC-SHA256 key of one webhook secret.
fn hmac_key(secret: &SecretString) -> hmac::Key {
    hmac::Key::new(hmac::HMAC_SHA256, secret.expose_secret().as_bytes())
}

/// `HMAC-SHA256(secret, "<prefix>.<body>")`: each signed byte is hashed once.
fn hmac_sha256(key: &hmac::Key, prefix: &str, body: &[u8]) -> hmac::Tag {
    let mut context = hmac::Context::with_key(key);
    context.update(prefix.as_bytes());
    context.update(b".");
    context.update(body);
    context.sign()
}

/// Signs a body the way the verifier expects (`<ts>, <base64>`); for tests, the
/// sandbox's webhook sender and tools.
pub fn sign(secret: &str, timestamp: &str, body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    STANDARD.encode(hmac_sha256(&key, timestamp, body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use chrono::{TimeZone, Utc};

    const NOW: i64 = 1_700_000_000;
    const BODY: &[u8] = br#"{"id":"e1","type":"order.accepted"}"#;

    fn verifier(secrets: &[&str]) -> SignatureVerifier {
        let clock = Arc::new(ManualClock::new(Utc.timestamp_opt(NOW, 0).unwrap()));
        SignatureVerifier::new(
            secrets
                .iter()
                .map(|s| SecretString::from(s.to_string()))
                .collect(),
            Duration::from_secs(300),
            clock,
        )
    }

    fn check(v: &SignatureVerifier, header: &str) -> Result<Verified, SignatureError> {
        v.verify(Some(header.as_bytes()), BODY)
    }

    #[test]
    fn the_sfcc_format_verifies() {
        let sig = sign("whsec", &NOW.to_string(), BODY);
        let got = check(&verifier(&["whsec"]), &format!("{NOW}, {sig}")).unwrap();
        assert_eq!(
            got,
            Verified {
                secret_index: 0,
                digits_prefix: false,
                millis: false
            }
        );
    }

    #[test]
    fn every_header_variant_verifies() {
        let v = verifier(&["whsec"]);
        let bare = sign("whsec", &NOW.to_string(), BODY);
        let with_t = sign("whsec", &format!("t={NOW}"), BODY);
        let no_pad = bare.trim_end_matches('=').to_string();
        let variants = [
            format!("{NOW}, {bare}"),
            format!("{NOW},{bare}"),
            format!("t={NOW}, {bare}"),
            format!("t={NOW},v1={bare}"),
            format!("t={NOW}, {with_t}"),
            format!("t={NOW},v0={with_t}"),
            format!("t={NOW},s={bare}"),
            format!("v1={bare},t={NOW}"),
            format!("t={NOW},v1=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=,v1={bare}"),
            format!("{NOW}, {no_pad}"),
        ];
        for header in variants {
            assert!(check(&v, &header).is_ok(), "{header}");
        }
    }

    #[test]
    fn a_forged_signature_or_body_is_a_mismatch() {
        let v = verifier(&["whsec"]);
        let other = sign("not-the-secret", &NOW.to_string(), BODY);
        assert_eq!(
            check(&v, &format!("{NOW}, {other}")),
            Err(SignatureError::Mismatch)
        );
        let sig = sign("whsec", &NOW.to_string(), BODY);
        let tampered = v.verify(Some(format!("{NOW}, {sig}").as_bytes()), b"{}");
        assert_eq!(tampered, Err(SignatureError::Mismatch));
        assert_eq!(
            check(&v, &format!("{NOW}, not base64!")),
            Err(SignatureError::Mismatch)
        );
        // Signing a different timestamp than the header claims.
        let shifted = sign("whsec", &(NOW - 1).to_string(), BODY);
        assert_eq!(
            check(&v, &format!("{NOW}, {shifted}")),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn missing_or_malformed_headers_are_rejected() {
        let v = verifier(&["whsec"]);
        assert_eq!(v.verify(None, BODY), Err(SignatureError::Missing));
        for header in [
            "",
            "abc",
            "abc, def",
            "t=, sig",
            &NOW.to_string(),
            "t=12x, sig",
        ] {
            assert_eq!(
                check(&v, header),
                Err(SignatureError::Malformed),
                "{header:?}"
            );
        }
        assert_eq!(
            v.verify(Some(&[0xff, 0xfe]), BODY),
            Err(SignatureError::Malformed)
        );
    }

    #[test]
    fn rotation_accepts_any_configured_secret() {
        let v = verifier(&["new", "old"]);
        let old = sign("old", &NOW.to_string(), BODY);
        assert_eq!(check(&v, &format!("{NOW}, {old}")).unwrap().secret_index, 1);
        let new = sign("new", &NOW.to_string(), BODY);
        assert_eq!(check(&v, &format!("{NOW}, {new}")).unwrap().secret_index, 0);
        // Both signatures sent at once.
        assert!(check(&v, &format!("t={NOW},v1={new},v1={old}")).is_ok());
    }

    #[test]
    fn the_tolerance_applies_in_seconds() {
        let v = verifier(&["whsec"]);
        for (ts, ok) in [
            (NOW - 300, true),
            (NOW + 300, true),
            (NOW - 301, false),
            (NOW + 301, false),
        ] {
            let sig = sign("whsec", &ts.to_string(), BODY);
            let got = check(&v, &format!("{ts}, {sig}"));
            assert_eq!(got.is_ok(), ok, "{ts}");
            if !ok {
                assert_eq!(got, Err(SignatureError::Stale));
            }
        }
    }

    #[test]
    fn the_tolerance_applies_in_milliseconds() {
        let v = verifier(&["whsec"]);
        let now_ms = NOW * 1000;
        for (ts, ok) in [
            (now_ms - 300_000, true),
            (now_ms + 299_999, true),
            (now_ms - 300_001, false),
        ] {
            let sig = sign("whsec", &ts.to_string(), BODY);
            let got = check(&v, &format!("{ts}, {sig}"));
            assert_eq!(got.is_ok(), ok, "{ts}");
            if ok {
                assert!(got.unwrap().millis);
            }
        }
    }

    #[test]
    fn a_stale_timestamp_is_rejected_even_with_a_valid_signature() {
        let v = verifier(&["whsec"]);
        let ts = NOW - 3600;
        let sig = sign("whsec", &ts.to_string(), BODY);
        assert_eq!(
            check(&v, &format!("{ts}, {sig}")),
            Err(SignatureError::Stale)
        );
    }

    #[test]
    fn without_secrets_nothing_verifies() {
        let v = verifier(&[]);
        let sig = sign("whsec", &NOW.to_string(), BODY);
        assert_eq!(
            check(&v, &format!("{NOW}, {sig}")),
            Err(SignatureError::NoSecrets)
        );
    }

    #[test]
    fn every_combination_is_compared_even_after_a_match() {
        // The constant-time path: a match on the first secret still computes and
        // compares the rest (no early return), which this observes through the
        // result recording the *first* match while later secrets also match.
        let v = verifier(&["same", "same"]);
        let sig = sign("same", &NOW.to_string(), BODY);
        assert_eq!(check(&v, &format!("{NOW}, {sig}")).unwrap().secret_index, 0);
    }

    #[test]
    fn debug_output_never_shows_secrets() {
        let v = verifier(&["super-secret-value"]);
        let dbg = format!("{v:?}");
        assert!(!dbg.contains("super-secret-value"));
        assert!(dbg.contains("redacted"));
    }

    #[test]
    fn hex_signatures_are_accepted() {
        let v = verifier(&["whsec"]);
        let raw = hmac_sha256(
            &hmac_key(&SecretString::from("whsec".to_string())),
            &NOW.to_string(),
            BODY,
        );
        assert!(check(&v, &format!("{NOW}, {}", hex(raw.as_ref()))).is_ok());
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn the_mac_is_standard_hmac_sha256_over_prefix_dot_body() {
        // RFC 4231 test case 7: a key longer than SHA-256's block and data longer
        // than one block; its data has a `.` to split into prefix and body.
        let key = hmac::Key::new(hmac::HMAC_SHA256, &[0xaa; 131]);
        let tag = hmac_sha256(
            &key,
            "This is a test using a larger than block-size key and a larger than block-size data",
            b" The key needs to be hashed before being used by the HMAC algorithm.",
        );
        assert_eq!(
            hex(tag.as_ref()),
            "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2"
        );
    }
}
