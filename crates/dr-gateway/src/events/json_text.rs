//! Walks JSON text that serde_json has already accepted, token by token, without
//! building a `serde_json::Value`: the stored event's `Struct`s are written from it
//! ([`super::struct_encoding`]), and the ids of `data.object` read on the way.
//!
//! why: building a `Value` of every webhook body (a map node per object, a `String`
//! per key and per string, a `Vec` per list), reading it once and dropping it was
//! the largest cost of webhook intake after the HTTP server and the signature
//! (`cargo bench --bench webhook_intake`).
//!
//! The text handed in is always a value serde_json parsed (a `RawValue` of the
//! body), so the scanner trusts its shape: separators are skipped, and every string,
//! number and literal is where JSON allows one. It still checks every index and
//! stops with [`JsonTextError`] on anything else, so a wrong caller gets an error,
//! never a panic or an endless loop. Each byte is looked at a bounded number of
//! times: the walk is linear in the text.

use std::borrow::Cow;

/// Deepest nesting of objects and lists walked, counting the walked object itself.
///
/// why: every subscriber must be able to decode the stored event. Protobuf decoders
/// stop at 100 nested messages (prost, which the gateway's own readers use; upb
/// under Python; protobuf-java), and in a `Struct` each JSON level is two messages
/// (a `Value` and its `Struct` or `ListValue`), below the response's own three. 32
/// levels stay well inside that; DR's objects nest a few. (serde_json's own limit of
/// 128 levels does not apply here: it checks no depth inside a value it only skips,
/// a `RawValue`, and 128 JSON levels would be past every decoder's limit.) It also
/// bounds the encoder's recursion.
pub const MAX_DEPTH: usize = 32;

/// The text is not the JSON value the caller was promised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum JsonTextError {
    /// The text ends (or breaks off) where a token should be.
    #[error("JSON text ends or breaks off at byte {0}")]
    Truncated(usize),
    /// A token where the structure does not allow one (e.g. a non-string key).
    #[error("unexpected JSON token at byte {0}")]
    Unexpected(usize),
    /// A string whose escapes do not decode (a lone UTF-16 surrogate such as
    /// `\ud800`: serde_json checks escapes only when it decodes a string, not when
    /// it skips one).
    #[error("a JSON string does not decode")]
    BadString,
    /// Objects and lists nested deeper than [`MAX_DEPTH`].
    #[error("JSON nested deeper than {MAX_DEPTH} levels")]
    TooDeep,
}

/// A JSON string as it appears in the text (between its quotes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JsonStr<'a> {
    /// The text between the quotes, escapes as written.
    raw: &'a str,
    /// The same text with its quotes (what serde_json unescapes).
    quoted: &'a str,
    /// Whether `raw` holds a backslash escape.
    escaped: bool,
}

impl<'a> JsonStr<'a> {
    /// The string's value: borrowed from the text unless it has escapes.
    pub fn value(&self) -> Result<Cow<'a, str>, JsonTextError> {
        if self.escaped {
            // why: escapes are rare in DR's payloads; serde_json decodes them
            // (surrogate pairs included) rather than a second decoder here.
            serde_json::from_str::<String>(self.quoted)
                .map(Cow::Owned)
                .map_err(|_| JsonTextError::BadString)
        } else {
            Ok(Cow::Borrowed(self.raw))
        }
    }
}

/// One token of JSON text.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Token<'a> {
    /// `{`
    ObjectStart,
    /// `}`
    ObjectEnd,
    /// `[`
    ListStart,
    /// `]`
    ListEnd,
    /// A string (an object's key or a value).
    Str(JsonStr<'a>),
    /// A number, as written.
    Number(&'a str),
    /// `true` or `false`.
    Bool(bool),
    /// `null`
    Null,
}

/// Reads tokens from the front of JSON text.
#[derive(Debug, Clone)]
pub struct Scanner<'a> {
    text: &'a str,
    pos: usize,
}

impl<'a> Scanner<'a> {
    /// A scanner at the start of `text`.
    pub fn new(text: &'a str) -> Self {
        Self { text, pos: 0 }
    }

    /// The next token; `,` and `:` are skipped with the whitespace (the text's
    /// structure was checked by serde_json).
    pub fn next_token(&mut self) -> Result<Token<'a>, JsonTextError> {
        let bytes = self.text.as_bytes();
        while let Some(b) = bytes.get(self.pos) {
            if matches!(b, b' ' | b'\t' | b'\n' | b'\r' | b',' | b':') {
                self.pos += 1;
            } else {
                break;
            }
        }
        let start = self.pos;
        let Some(&first) = bytes.get(start) else {
            return Err(JsonTextError::Truncated(start));
        };
        let token = match first {
            b'{' => Token::ObjectStart,
            b'}' => Token::ObjectEnd,
            b'[' => Token::ListStart,
            b']' => Token::ListEnd,
            b'"' => return self.string(start),
            b't' => return self.literal(start, "true", Token::Bool(true)),
            b'f' => return self.literal(start, "false", Token::Bool(false)),
            b'n' => return self.literal(start, "null", Token::Null),
            b'-' | b'0'..=b'9' => return self.number(start),
            _ => return Err(JsonTextError::Unexpected(start)),
        };
        self.pos += 1;
        Ok(token)
    }

    fn literal(
        &mut self,
        start: usize,
        word: &str,
        token: Token<'a>,
    ) -> Result<Token<'a>, JsonTextError> {
        let end = start + word.len();
        if self.text.get(start..end) == Some(word) {
            self.pos = end;
            Ok(token)
        } else {
            Err(JsonTextError::Unexpected(start))
        }
    }

    fn number(&mut self, start: usize) -> Result<Token<'a>, JsonTextError> {
        let bytes = self.text.as_bytes();
        let mut end = start;
        while let Some(b) = bytes.get(end) {
            if matches!(b, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E') {
                end += 1;
            } else {
                break;
            }
        }
        self.pos = end;
        // why: every byte taken is ASCII, so both ends are character boundaries.
        self.text
            .get(start..end)
            .map(Token::Number)
            .ok_or(JsonTextError::Unexpected(start))
    }

    fn string(&mut self, start: usize) -> Result<Token<'a>, JsonTextError> {
        let bytes = self.text.as_bytes();
        let mut at = start + 1;
        let mut escaped = false;
        loop {
            let rest = bytes.get(at..).unwrap_or_default();
            let Some(offset) = memchr::memchr2(b'"', b'\\', rest) else {
                return Err(JsonTextError::Truncated(bytes.len()));
            };
            at += offset;
            if bytes.get(at) == Some(&b'"') {
                break;
            }
            escaped = true;
            // why: the escaped byte is ASCII (`"`, `\`, `u`, …); skipping it keeps
            // an escaped quote from ending the string.
            at += 2;
        }
        self.pos = at + 1;
        // why: both quotes are ASCII, so these are character boundaries.
        match (self.text.get(start + 1..at), self.text.get(start..=at)) {
            (Some(raw), Some(quoted)) => Ok(Token::Str(JsonStr {
                raw,
                quoted,
                escaped,
            })),
            _ => Err(JsonTextError::Unexpected(start)),
        }
    }
}

/// A number as the stored event holds it: the double DR's text parses to, or, when
/// no double holds it, serde_json's text of it (what
/// [`json_to_value`](super::proto::json_to_value) keeps for such a number).
#[derive(Debug, Clone, PartialEq)]
pub enum NumberValue<'a> {
    /// A finite double.
    Double(f64),
    /// Beyond a double (`1e400`).
    Text(Cow<'a, str>),
}

/// Reads a number token's text.
pub fn number_value(text: &str) -> NumberValue<'_> {
    match text.parse::<f64>() {
        Ok(f) if f.is_finite() => NumberValue::Double(f),
        // why: serde_json spells a parsed number's exponent its own way (`1e400` →
        // `1e+400`); the text a `Value` would have kept is the one subscribers got
        // before, so it stays the same.
        _ => NumberValue::Text(number_text(text)),
    }
}

/// A number's text as serde_json keeps it (`1E5` → `1e+5`).
pub fn number_text(text: &str) -> Cow<'_, str> {
    match text.parse::<serde_json::Number>() {
        Ok(n) if n.as_str() != text => Cow::Owned(n.as_str().to_owned()),
        _ => Cow::Borrowed(text),
    }
}

/// The ids of a JSON object, as the event encoder reads them on its way
/// ([`super::struct_encoding::encode_struct`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObjectIds {
    /// The object's `id`.
    pub id: Option<String>,
    /// The object's `orderId`.
    pub order_id: Option<String>,
}

/// An id's text from the first token of its value: a non-empty string or a number.
pub fn id_text(first: Token<'_>) -> Option<String> {
    match first {
        Token::Str(s) if !s.raw.is_empty() => s.value().ok().map(Cow::into_owned),
        Token::Number(n) => Some(number_text(n).into_owned()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(text: &str) -> Vec<Token<'_>> {
        let mut scanner = Scanner::new(text);
        let mut out = Vec::new();
        while let Ok(t) = scanner.next_token() {
            out.push(t);
        }
        out
    }

    #[test]
    fn every_kind_of_token_is_read() {
        let toks = tokens(r#"{"a" : [1, -2.5e+3, true, false, null, "x\"y"], "b":{}}"#);
        assert_eq!(toks.len(), 14);
        assert_eq!(toks[0], Token::ObjectStart);
        assert_eq!(toks[3], Token::Number("1"));
        assert_eq!(toks[4], Token::Number("-2.5e+3"));
        assert_eq!(toks[5], Token::Bool(true));
        assert_eq!(toks[7], Token::Null);
        let Token::Str(s) = toks[8] else {
            panic!("{:?}", toks[8])
        };
        assert_eq!(s.value().unwrap(), "x\"y");
        assert_eq!(toks[13], Token::ObjectEnd);
    }

    #[test]
    fn escapes_are_decoded_by_serde_json_and_plain_strings_borrowed() {
        let toks = tokens(r#"["\u00e9\ud83d\ude00\n", "plain"]"#);
        let (Token::Str(escaped), Token::Str(plain)) = (toks[1], toks[2]) else {
            panic!("{toks:?}")
        };
        assert_eq!(escaped.value().unwrap(), "é😀\n");
        assert!(matches!(plain.value(), Ok(Cow::Borrowed("plain"))));
        let Token::Str(lone) = tokens(r#""\ud800""#)[0] else {
            panic!("a string")
        };
        assert_eq!(lone.value(), Err(JsonTextError::BadString));
    }

    #[test]
    fn broken_text_is_an_error_not_a_panic() {
        for text in [
            "", "{", "\"abc", "tru", "[1,", "\"a\\", "@", "{\"k\"", "nul",
        ] {
            let mut scanner = Scanner::new(text);
            let mut steps = 0;
            while scanner.next_token().is_ok() {
                steps += 1;
                assert!(steps < 10, "{text}");
            }
        }
    }

    #[test]
    fn numbers_keep_serde_json_text_only_beyond_a_double() {
        assert_eq!(number_value("37.81"), NumberValue::Double(37.81));
        assert_eq!(number_value("-0"), NumberValue::Double(-0.0));
        assert_eq!(
            number_value("1e400"),
            NumberValue::Text(Cow::Owned("1e+400".into()))
        );
        assert_eq!(
            number_value("-1E+400"),
            NumberValue::Text(Cow::Owned("-1e+400".into()))
        );
    }
}
