//! Reads JSON text token by token, without building a `serde_json::Value`: the
//! webhook body's top level is read from it ([`super::envelope`]), the stored
//! event's `Struct`s are written from it ([`super::struct_encoding`]), and the ids
//! of `data.object` read on the way, all in one walk of the body.
//!
//! why: building a `Value` of every webhook body (a map node per object, a `String`
//! per key and per string, a `Vec` per list), reading it once and dropping it was
//! the largest cost of webhook intake after the HTTP server and the signature; and
//! reading the top level through serde_json first (which had to read past all of
//! `data.object` to check it) before walking `data.object` read most of the body
//! twice (`cargo bench --bench webhook_intake`).
//!
//! The text comes from outside (a webhook body that passed its signature), so the
//! scanner checks it as serde_json would: whitespace and separators only where
//! JSON has them, strings without raw control characters and with known escapes,
//! numbers as JSON spells them, nothing after the value. A value the caller does
//! not read is skipped with the same checks at any depth. Every index is checked;
//! anything else stops with [`JsonTextError`], never a panic or an endless loop.
//! Each byte is looked at a bounded number of times: the walk is linear in the
//! text. (The `envelope` fuzz target holds what it accepts against serde_json.)

use std::borrow::Cow;

/// Deepest nesting of objects and lists walked, counting the walked object itself.
///
/// why: every subscriber must be able to decode the stored event. Protobuf decoders
/// stop at 100 nested messages (prost, which the gateway's own readers use; upb
/// under Python; protobuf-java), and in a `Struct` each JSON level is two messages
/// (a `Value` and its `Struct` or `ListValue`), below the response's own three. 32
/// levels stay well inside that; DR's objects nest a few. (serde_json's limit of 128
/// levels for the values it decodes would be past every decoder's limit; values a
/// walk only skips, as serde_json skips them, have no limit.) It also bounds the
/// encoder's recursion.
pub const MAX_DEPTH: usize = 32;

/// The text is not JSON, or not JSON the walk writes.
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

/// Reads JSON text token by token, checking it as strictly as serde_json does:
/// separators where the grammar puts them, strings without control characters or
/// unknown escapes, numbers as JSON spells them, literals whole. Structure is the
/// caller's: [`value`](Self::value) at a value, [`key`](Self::key) in an object,
/// [`item`](Self::item) in a list, [`skip`](Self::skip) past a value it does not
/// read, [`finish`](Self::finish) at the end.
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

    /// Where the next unread byte is.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Moves back (or on) to byte `pos`, where a value starts.
    pub fn rewind_to(&mut self, pos: usize) {
        self.pos = pos;
    }

    /// How many bytes are left to read.
    pub fn remaining(&self) -> usize {
        self.text.len().saturating_sub(self.pos)
    }

    fn skip_whitespace(&mut self) {
        let bytes = self.text.as_bytes();
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = bytes.get(self.pos) {
            self.pos += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.pos).copied()
    }

    /// An error at the next byte: `Truncated` at the end of the text.
    fn unexpected(&self) -> JsonTextError {
        if self.pos >= self.text.len() {
            JsonTextError::Truncated(self.pos)
        } else {
            JsonTextError::Unexpected(self.pos)
        }
    }

    /// The first token of the value that comes next: `{`, `[` or a scalar.
    pub fn value(&mut self) -> Result<Token<'a>, JsonTextError> {
        self.skip_whitespace();
        let start = self.pos;
        let token = match self.peek() {
            Some(b'{') => Token::ObjectStart,
            Some(b'[') => Token::ListStart,
            Some(b'"') => return self.string(start).map(Token::Str),
            Some(b't') => return self.literal(start, "true", Token::Bool(true)),
            Some(b'f') => return self.literal(start, "false", Token::Bool(false)),
            Some(b'n') => return self.literal(start, "null", Token::Null),
            Some(b'-' | b'0'..=b'9') => return self.number(start),
            _ => return Err(self.unexpected()),
        };
        self.pos += 1;
        Ok(token)
    }

    /// In a container closed by `close`, after its opening bracket (`first`) or
    /// after an element: `false` at its `close` (read), `true` when an element
    /// follows (its `,` read).
    fn another(&mut self, close: u8, first: bool) -> Result<bool, JsonTextError> {
        self.skip_whitespace();
        match self.peek() {
            Some(b) if b == close => {
                self.pos += 1;
                Ok(false)
            }
            Some(b',') if !first => {
                self.pos += 1;
                self.skip_whitespace();
                Ok(true)
            }
            Some(_) if first => Ok(true),
            _ => Err(self.unexpected()),
        }
    }

    /// In an object, after its `{` (`first`) or after a member's value: the next
    /// member's key, its `:` read too, or `None` at the object's `}`.
    pub fn key(&mut self, first: bool) -> Result<Option<JsonStr<'a>>, JsonTextError> {
        if !self.another(b'}', first)? {
            return Ok(None);
        }
        if self.peek() != Some(b'"') {
            return Err(self.unexpected());
        }
        let key = self.string(self.pos)?;
        self.skip_whitespace();
        if self.peek() != Some(b':') {
            return Err(self.unexpected());
        }
        self.pos += 1;
        Ok(Some(key))
    }

    /// In a list, after its `[` (`first`) or after an item: the next item's first
    /// token, or `None` at the list's `]`.
    pub fn item(&mut self, first: bool) -> Result<Option<Token<'a>>, JsonTextError> {
        if !self.another(b']', first)? {
            return Ok(None);
        }
        self.value().map(Some)
    }

    /// Checks that only whitespace follows.
    pub fn finish(&mut self) -> Result<(), JsonTextError> {
        self.skip_whitespace();
        if self.pos == self.text.len() {
            Ok(())
        } else {
            Err(JsonTextError::Unexpected(self.pos))
        }
    }

    /// Reads past the value whose first token is `first`, checking it, at any
    /// depth (as serde_json skips a value): a bit per open level, on the stack up
    /// to 128 levels.
    pub fn skip(&mut self, first: Token<'a>) -> Result<(), JsonTextError> {
        let mut open = Nesting::default();
        let mut next = Some(first);
        loop {
            if let Some(token) = next.take() {
                // The first value inside a container that is not empty.
                let inside = match token {
                    Token::ObjectStart => match self.key(true)? {
                        Some(_) => Some((true, self.value()?)),
                        None => None,
                    },
                    Token::ListStart => self.item(true)?.map(|item| (false, item)),
                    _ => None,
                };
                if let Some((object, first_inside)) = inside {
                    open.push(object);
                    next = Some(first_inside);
                    continue;
                }
            }
            // A value just ended: go on in the container around it.
            match open.innermost() {
                None => return Ok(()),
                Some(true) => match self.key(false)? {
                    Some(_) => next = Some(self.value()?),
                    None => open.pop(),
                },
                Some(false) => match self.item(false)? {
                    Some(item) => next = Some(item),
                    None => open.pop(),
                },
            }
        }
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
        while let Some(b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E') = bytes.get(end) {
            end += 1;
        }
        self.pos = end;
        match bytes.get(start..end) {
            // why: every byte taken is ASCII, so both ends are character boundaries.
            Some(number) if is_json_number(number) => self
                .text
                .get(start..end)
                .map(Token::Number)
                .ok_or(JsonTextError::Unexpected(start)),
            _ => Err(JsonTextError::Unexpected(start)),
        }
    }

    /// The string whose opening quote is at `start`.
    fn string(&mut self, start: usize) -> Result<JsonStr<'a>, JsonTextError> {
        let bytes = self.text.as_bytes();
        let mut at = start + 1;
        let mut escaped = false;
        loop {
            let rest = bytes.get(at..).unwrap_or_default();
            let Some(offset) = string_stop(rest) else {
                return Err(JsonTextError::Truncated(bytes.len()));
            };
            at += offset;
            match bytes.get(at) {
                Some(b'"') => break,
                Some(b'\\') => {
                    escaped = true;
                    at += escape_len(bytes.get(at + 1..).unwrap_or_default())
                        .ok_or(JsonTextError::Unexpected(at))?;
                }
                // why: JSON has no raw control characters in strings (serde_json
                // refuses them too); escaped ones are `\n`, `\u0000`, ….
                _ => return Err(JsonTextError::Unexpected(at)),
            }
        }
        self.pos = at + 1;
        // why: both quotes are ASCII, so these are character boundaries.
        match (self.text.get(start + 1..at), self.text.get(start..=at)) {
            (Some(raw), Some(quoted)) => Ok(JsonStr {
                raw,
                quoted,
                escaped,
            }),
            _ => Err(JsonTextError::Unexpected(start)),
        }
    }
}

/// Where the first byte of `bytes` that ends a run of plain string text is: a
/// `"`, a `\` or a control character (below 0x20).
///
/// why: strings are most of DR's bytes and most of them are short (keys, ids);
/// eight bytes are tested at a time with word arithmetic, where a search for the
/// two characters alone spent more on starting up than on short strings, and a
/// second pass would have had to look for the control characters.
fn string_stop(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = u64::from_le_bytes([0x01; 8]);
    const HIGH_BITS: u64 = u64::from_le_bytes([0x80; 8]);
    const QUOTES: u64 = u64::from_le_bytes([b'"'; 8]);
    const BACKSLASHES: u64 = u64::from_le_bytes([b'\\'; 8]);
    const SPACES: u64 = u64::from_le_bytes([0x20; 8]);
    let mut at = 0;
    while let Some(chunk) = bytes.get(at..at + 8) {
        let Ok(chunk) = <[u8; 8]>::try_from(chunk) else {
            break;
        };
        let word = u64::from_le_bytes(chunk);
        let quote = word ^ QUOTES;
        let backslash = word ^ BACKSLASHES;
        // A byte's high bit is set where it is zero (for `quote`, `backslash`) or
        // below 0x20 (for `word`); a borrow can set bits only above the first such
        // byte, so the lowest set bit is exact.
        let found = ((quote.wrapping_sub(ONES) & !quote)
            | (backslash.wrapping_sub(ONES) & !backslash)
            | (word.wrapping_sub(SPACES) & !word))
            & HIGH_BITS;
        if found != 0 {
            return Some(at + (found.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    bytes
        .get(at..)?
        .iter()
        .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
        .map(|offset| at + offset)
}

/// The length of the escape whose backslash comes right before `after`,
/// backslash included, or `None` when JSON has no such escape.
fn escape_len(after: &[u8]) -> Option<usize> {
    match after.first()? {
        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => Some(2),
        b'u' if after.get(1..5)?.iter().all(u8::is_ascii_hexdigit) => Some(6),
        _ => None,
    }
}

/// Whether `text` is a JSON number: `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`.
fn is_json_number(text: &[u8]) -> bool {
    let digits_from = |mut i: usize| {
        while let Some(b'0'..=b'9') = text.get(i) {
            i += 1;
        }
        i
    };
    let mut i = usize::from(text.first() == Some(&b'-'));
    i = match text.get(i) {
        Some(b'0') => i + 1,
        Some(b'1'..=b'9') => digits_from(i + 1),
        _ => return false,
    };
    if text.get(i) == Some(&b'.') {
        let end = digits_from(i + 1);
        if end == i + 1 {
            return false;
        }
        i = end;
    }
    if let Some(b'e' | b'E') = text.get(i) {
        i += 1;
        if let Some(b'+' | b'-') = text.get(i) {
            i += 1;
        }
        let end = digits_from(i);
        if end == i {
            return false;
        }
        i = end;
    }
    i == text.len()
}

/// The containers a skip is inside, innermost last: one bit each (set for an
/// object), 128 levels inline and the rest spilled.
#[derive(Default)]
struct Nesting {
    inline: u128,
    spilled: Vec<u128>,
    depth: usize,
}

impl Nesting {
    fn push(&mut self, object: bool) {
        if self.depth > 0 && self.depth.is_multiple_of(128) {
            self.spilled.push(self.inline);
            self.inline = 0;
        }
        self.inline = (self.inline << 1) | u128::from(object);
        self.depth += 1;
    }

    fn pop(&mut self) {
        self.inline >>= 1;
        self.depth = self.depth.saturating_sub(1);
        if self.depth > 0 && self.depth.is_multiple_of(128) {
            self.inline = self.spilled.pop().unwrap_or_default();
        }
    }

    /// Whether the innermost container is an object; `None` outside all.
    fn innermost(&self) -> Option<bool> {
        (self.depth > 0).then_some(self.inline & 1 == 1)
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

    /// Every token of one JSON value, in order, read as a caller walks it.
    fn tokens(text: &str) -> Result<Vec<Token<'_>>, JsonTextError> {
        fn walk<'a>(
            scanner: &mut Scanner<'a>,
            first: Token<'a>,
            out: &mut Vec<Token<'a>>,
        ) -> Result<(), JsonTextError> {
            out.push(first);
            match first {
                Token::ObjectStart => {
                    let mut first = true;
                    while let Some(key) = scanner.key(first)? {
                        first = false;
                        out.push(Token::Str(key));
                        let value = scanner.value()?;
                        walk(scanner, value, out)?;
                    }
                    out.push(Token::ObjectEnd);
                }
                Token::ListStart => {
                    let mut first = true;
                    while let Some(item) = scanner.item(first)? {
                        first = false;
                        walk(scanner, item, out)?;
                    }
                    out.push(Token::ListEnd);
                }
                _ => {}
            }
            Ok(())
        }
        let mut scanner = Scanner::new(text);
        let mut out = Vec::new();
        let first = scanner.value()?;
        walk(&mut scanner, first, &mut out)?;
        scanner.finish()?;
        Ok(out)
    }

    /// Whether the scanner skips `text` as one whole value.
    fn skips(text: &str) -> bool {
        let mut scanner = Scanner::new(text);
        scanner
            .value()
            .and_then(|first| scanner.skip(first))
            .and_then(|()| scanner.finish())
            .is_ok()
    }

    #[test]
    fn every_kind_of_token_is_read() {
        let toks = tokens(r#" {"a" : [1, -2.5e+3, true, false, null, "x\"y"], "b":{}} "#).unwrap();
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
        let toks = tokens(r#"["\u00e9\ud83d\ude00\n", "plain"]"#).unwrap();
        let (Token::Str(escaped), Token::Str(plain)) = (toks[1], toks[2]) else {
            panic!("{toks:?}")
        };
        assert_eq!(escaped.value().unwrap(), "é😀\n");
        assert!(matches!(plain.value(), Ok(Cow::Borrowed("plain"))));
        let Token::Str(lone) = tokens(r#""\ud800""#).unwrap()[0] else {
            panic!("a string")
        };
        assert_eq!(lone.value(), Err(JsonTextError::BadString));
    }

    #[test]
    fn text_is_held_to_json_as_serde_json_holds_it() {
        let cases = [
            "",
            " ",
            "{",
            "\"abc",
            "tru",
            "truex",
            "[1,",
            "\"a\\",
            "@",
            "{\"k\"",
            "nul",
            "{\"a\":1,}",
            "[1,]",
            "[,1]",
            "{,}",
            "{\"a\" 1}",
            "{\"a\":1 \"b\":2}",
            "[1 2]",
            "{1:2}",
            "01",
            "1.",
            ".5",
            "-",
            "1e",
            "1e+",
            "+1",
            "1.5e3.2",
            "--1",
            "0x10",
            "\"tab\there\"",
            "\"\\x\"",
            "\"\\u12\"",
            "\"\\u12g4\"",
            "[1]]",
            "{} {}",
            "\u{feff}{}",
            "[\"\\ud800\"]",
            "{\"\\ud800\":1}",
            "[1e400, -0, 0.0e-0]",
            "{\"a\":{\"b\":[{}, [], \"\\/\\b\\f\\n\\r\\t\\\"\\\\\"]}}",
            "\t[\r\n1\n]\r\n",
        ];
        for text in cases {
            let serde = serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok();
            assert_eq!(skips(text), serde, "skip {text:?}");
            // Reading it token by token agrees too, but for strings that do not
            // decode, which serde_json refuses only when it decodes them.
            if !text.contains("\\ud800") {
                assert_eq!(tokens(text).is_ok(), serde, "walk {text:?}");
            }
        }
    }

    #[test]
    fn a_string_stops_at_the_first_quote_backslash_or_control_character() {
        let naive = |bytes: &[u8]| {
            bytes
                .iter()
                .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
        };
        // Every byte value at every place of a 20-byte run (two words and a tail),
        // after plain text and after bytes that borrow or carry (0x00, 0x80, 0xff).
        for fill in [b'a', 0x7f, 0x80, 0xff, 0x21, 0x5d] {
            for place in 0..20 {
                for byte in 0..=255u8 {
                    let mut bytes = vec![fill; 20];
                    bytes[place] = byte;
                    assert_eq!(string_stop(&bytes), naive(&bytes), "{fill} {place} {byte}");
                    if place + 1 < 20 {
                        bytes[place + 1] = b'"';
                        assert_eq!(string_stop(&bytes), naive(&bytes), "{fill} {place} {byte}");
                    }
                }
            }
        }
        assert_eq!(string_stop(b""), None);
        assert_eq!(string_stop("é€😀 plain".as_bytes()), None);
    }

    #[test]
    fn skipping_is_not_limited_in_depth_and_tracks_each_level() {
        for levels in [1, 127, 128, 129, 256, 300, 10_000] {
            let lists = format!("{}{}", "[".repeat(levels), "]".repeat(levels));
            assert!(skips(&lists), "{levels}");
            let mixed = format!("{}1{}", "[{\"k\":".repeat(levels), "}]".repeat(levels));
            assert!(skips(&mixed), "{levels}");
            // A bracket of the wrong kind at the innermost or the outermost level.
            let wrong_inner = mixed.replacen("1}", "1]", 1);
            assert!(!skips(&wrong_inner), "{levels}");
            let mut wrong_outer = mixed.clone();
            wrong_outer.pop();
            wrong_outer.push('}');
            assert!(!skips(&wrong_outer), "{levels}");
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
