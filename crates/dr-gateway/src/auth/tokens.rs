//! Bearer tokens for clusters without a PKI: a file of named, hashed tokens, and the
//! check of the token a caller sends in `authorization: Bearer <token>`.
//!
//! # The token file
//! One token per line, `<name> sha256:<64 hex digits>`: the name (letters, digits,
//! `.`, `_`, `-`; at most 64) becomes the identity `token:<name>`, the digest is the
//! SHA-256 of the token's exact text. `#` starts a comment; blank lines are ignored.
//! A token and an entry for it:
//!
//! ```sh
//! TOKEN=$(openssl rand -hex 32)
//! echo "shipping sha256:$(printf %s "$TOKEN" | sha256sum | cut -d' ' -f1)" >> tokens.txt
//! ```
//!
//! why SHA-256 and not a password hash (argon2): the tokens are random with at least
//! 128 bits of entropy, which no hash makes easier or harder to guess; a slow hash
//! would only add latency to every call. The file holds no token, so reading it
//! does not let anyone call the gateway.
//!
//! A presented token is hashed and compared with every entry in constant time
//! (`subtle`), so timing tells nothing about how close a guess came.

use std::path::Path;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::identity::Identity;

/// Longest name of a token.
const MAX_NAME_LEN: usize = 64;
/// Longest token accepted from a caller (longer ones are refused unhashed).
pub const MAX_TOKEN_LEN: usize = 1024;

/// The named token digests of one token file.
#[derive(Clone, Default)]
pub struct TokenSet {
    entries: Vec<Entry>,
}

#[derive(Clone)]
struct Entry {
    identity: Identity,
    digest: [u8; 32],
}

impl std::fmt::Debug for TokenSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // why: names only; digests are not secrets, but nothing about a token is logged.
        f.debug_struct("TokenSet")
            .field(
                "names",
                &self
                    .entries
                    .iter()
                    .map(|e| e.identity.as_str())
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// Why a token file cannot be used. Names the line, never quotes it.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    /// The file could not be read.
    #[error("cannot read the token file {path}: {source}")]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A line is not `<name> sha256:<64 hex digits>`.
    #[error("token file line {line}: {problem}")]
    Line {
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        problem: &'static str,
    },
}

impl TokenSet {
    /// Reads and parses the token file at `path`.
    pub fn load(path: &Path) -> Result<Self, TokenFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokenFileError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text)
    }

    /// Parses a token file's text (see the module docs).
    pub fn parse(text: &str) -> Result<Self, TokenFileError> {
        let mut entries: Vec<Entry> = Vec::new();
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let content = raw.split('#').next().unwrap_or_default().trim();
            if content.is_empty() {
                continue;
            }
            let bad = |problem| TokenFileError::Line { line, problem };
            let mut fields = content.split_whitespace();
            let (Some(name), Some(hash), None) = (fields.next(), fields.next(), fields.next())
            else {
                return Err(bad("expected `<name> sha256:<64 hex digits>`"));
            };
            if name.len() > MAX_NAME_LEN
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
            {
                return Err(bad("a name is 1 to 64 letters, digits, `.`, `_` or `-`"));
            }
            let digest = hash
                .strip_prefix("sha256:")
                .and_then(parse_hex_digest)
                .ok_or_else(|| bad("the digest must be `sha256:` and 64 hex digits"))?;
            let identity = Identity::token(name);
            if entries.iter().any(|e| e.identity == identity) {
                return Err(bad("the name is listed twice"));
            }
            if entries.iter().any(|e| e.digest == digest) {
                return Err(bad("the same token is listed twice"));
            }
            entries.push(Entry { identity, digest });
        }
        Ok(Self { entries })
    }

    /// How many tokens the file names.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the file names no token.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The identity of `token`, if the file lists it.
    pub fn identify(&self, token: &str) -> Option<Identity> {
        if token.is_empty() || token.len() > MAX_TOKEN_LEN {
            return None;
        }
        let presented: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = None;
        // why: every entry is compared, each in constant time, so neither the
        // comparison nor the loop's length depends on which entry (if any) matched.
        for entry in &self.entries {
            if bool::from(entry.digest.ct_eq(&presented)) {
                found = Some(entry.identity.clone());
            }
        }
        found
    }
}

fn parse_hex_digest(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in hex.as_bytes().chunks(2).enumerate() {
        let text = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(text, 16).ok()?;
    }
    Some(out)
}

/// The token of an `authorization` header value: `Bearer <token>` (scheme in any
/// case). `None` for any other form.
pub fn bearer_token(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, token: &str) -> String {
        let digest = Sha256::digest(token.as_bytes());
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        format!("{name} sha256:{hex}")
    }

    #[test]
    fn a_listed_token_names_its_identity_and_others_name_no_one() {
        let text = format!(
            "# shipping's batch job\n{}\n\n{}  # support\n",
            entry("shipping", "tok-a"),
            entry("support", "tok-b")
        );
        let set = TokenSet::parse(&text).unwrap();
        assert_eq!(set.len(), 2);
        assert_eq!(set.identify("tok-a").unwrap().as_str(), "token:shipping");
        assert_eq!(set.identify("tok-b").unwrap().as_str(), "token:support");
        assert_eq!(set.identify("tok-c"), None);
        assert_eq!(set.identify(""), None);
        assert_eq!(set.identify(&"x".repeat(MAX_TOKEN_LEN + 1)), None);
    }

    #[test]
    fn bad_lines_are_named_by_number_without_their_text() {
        for (text, line) in [
            ("a sha256:00".to_owned(), 1),
            (format!("{}\nb", entry("a", "t")), 2),
            (format!("{}\n{}", entry("a", "t"), entry("a", "u")), 2),
            (format!("{}\n{}", entry("a", "t"), entry("b", "t")), 2),
            (entry("bad name!", "t"), 1),
            (entry("x", "t").replace("sha256", "md5"), 1),
        ] {
            match TokenSet::parse(&text) {
                Err(TokenFileError::Line { line: got, problem }) => {
                    assert_eq!(got, line, "{text}");
                    assert!(!problem.contains("sha256:0"), "no file text in errors");
                }
                other => panic!("expected a line error for {text:?}, got {other:?}"),
            }
        }
    }

    #[test]
    fn debug_output_names_tokens_but_shows_no_digest() {
        let set = TokenSet::parse(&entry("shipping", "secret-token")).unwrap();
        let shown = format!("{set:?}");
        assert!(shown.contains("token:shipping"));
        assert!(!shown.contains("sha256") && !shown.contains("secret-token"));
    }

    #[test]
    fn only_bearer_headers_carry_a_token() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer  abc "), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer"), None);
        assert_eq!(bearer_token("Bearer "), None);
    }
}
