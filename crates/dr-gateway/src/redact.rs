//! Keeping credentials that ride in URLs (`https://user:password@host`, NATS
//! `nats://token@host`) out of logs, errors and `Debug` output: one redaction
//! function for every URL the gateway prints, and a string type that only ever
//! prints itself redacted.

use std::fmt;

/// `scheme://user:password@host/path` → `scheme://***@host/path`; a URL without
/// credentials comes back unchanged.
///
/// Everything from the scheme up to the last `@` before the query or fragment goes,
/// so neither an `@` nor a stray `/` inside a password can leave part of it behind
/// (an `@` in the path hides a little more than needed, never less).
pub fn redact_url(url: &str) -> String {
    let authority_start = url.find("://").map_or(0, |i| i + 3);
    let rest = &url[authority_start..];
    let before_query = rest.find(['?', '#']).unwrap_or(rest.len());
    match rest[..before_query].rfind('@') {
        Some(at) => format!("{}***{}", &url[..authority_start], &rest[at..]),
        None => url.to_owned(),
    }
}

/// A URL as configured, which may carry credentials: [`fmt::Display`] and
/// [`fmt::Debug`] show it through [`redact_url`]; [`SensitiveUrl::expose`] gives the
/// real text to the one place that connects with it.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct SensitiveUrl(String);

impl SensitiveUrl {
    /// The URL as configured, credentials included: for connecting, never for printing.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for SensitiveUrl {
    fn from(url: String) -> Self {
        Self(url)
    }
}

impl From<&str> for SensitiveUrl {
    fn from(url: &str) -> Self {
        Self(url.to_owned())
    }
}

impl fmt::Display for SensitiveUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact_url(&self.0))
    }
}

impl fmt::Debug for SensitiveUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", redact_url(&self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_in_the_authority_are_hidden() {
        for (url, shown) in [
            ("nats://alice:s3cret@nats:4222", "nats://***@nats:4222"),
            ("nats://nats:4222", "nats://nats:4222"),
            ("tok@nats:4222", "***@nats:4222"),
            (
                "https://u:p@ss@dr.example/v1?q=a@b",
                "https://***@dr.example/v1?q=a@b",
            ),
            ("https://u:pa/ss@dr.example/v1", "https://***@dr.example/v1"),
            (
                "https://api.digitalriver.com",
                "https://api.digitalriver.com",
            ),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
        }
    }

    #[test]
    fn a_sensitive_url_prints_redacted_but_connects_with_everything() {
        let url = SensitiveUrl::from("https://gw:hunter2@dr.example");
        assert_eq!(url.to_string(), "https://***@dr.example");
        assert!(!format!("{url:?}").contains("hunter2"));
        assert_eq!(url.expose(), "https://gw:hunter2@dr.example");
    }
}
