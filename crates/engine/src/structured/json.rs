//! A byte-level recognizer of JSON text prefixes (RFC 8259), the automaton behind
//! `response_format: {"type": "json_object"}`.
//!
//! [`JsonState`] is `Copy` (the container stack is a bit set), so checking a candidate token is
//! copying the state and feeding it the token's bytes, with no allocation. A state accepts
//! exactly the byte strings that can still be extended to one complete JSON object, with three
//! limits that keep a weak model from looping forever on filler: at most [`MAX_WHITESPACE_RUN`]
//! whitespace bytes in a row, at most [`MAX_DEPTH`] nested containers, and numbers of at most
//! [`MAX_NUMBER_DIGITS`] digits per part and [`MAX_EXPONENT_DIGITS`] in the exponent (llama.cpp's
//! JSON grammar has the same kind of limits).
//! Inside strings every character from U+0020 up is accepted except unescaped `"` and `\`, as
//! well-formed UTF-8 (RFC 3629: no overlong forms, surrogates or code points past U+10FFFF), so
//! the text always decodes without replacement characters.

/// Longest run of whitespace accepted between tokens (a newline and indentation).
pub const MAX_WHITESPACE_RUN: u8 = 24;
/// Deepest nesting of objects and arrays.
pub const MAX_DEPTH: u8 = 64;
/// Most digits in a number's integer or fraction part (a printed f64 can take 22).
pub const MAX_NUMBER_DIGITS: u8 = 32;
/// Most digits in a number's exponent.
pub const MAX_EXPONENT_DIGITS: u8 = 3;

/// Where the recognizer is inside the text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Before the top-level object: whitespace or `{`.
    Start,
    /// A value is expected (after `:` or `,` in an array).
    Value,
    /// Just after `[`: a value or `]`.
    ArrayFirst,
    /// Just after `{`: a key or `}`.
    ObjectFirst,
    /// After `,` in an object: a key.
    Key,
    /// After a key: `:`.
    Colon,
    /// Inside a string; `key` tells what follows its closing quote.
    Str { key: bool },
    /// After a backslash in a string.
    Escape { key: bool },
    /// Inside `\uXXXX`, `left` hex digits to go.
    Hex { key: bool, left: u8 },
    /// Inside a number.
    Number(Num),
    /// Inside `true`, `false` or `null`: which one, and how many bytes are matched.
    Literal { word: u8, matched: u8 },
    /// After a value inside a container: `,` or the closing bracket.
    After,
    /// The top-level object is closed.
    Done,
}

/// Parts of a number, each named after what was read last.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Num {
    Minus,
    Zero,
    Int(u8),
    Dot,
    Frac(u8),
    E,
    ESign,
    Exp(u8),
}

impl Num {
    /// Whether a number may end here (`-`, `1.`, `1e`, `1e+` may not).
    fn is_complete(self) -> bool {
        matches!(self, Num::Zero | Num::Int(_) | Num::Frac(_) | Num::Exp(_))
    }
}

const LITERALS: [&[u8]; 3] = [b"true", b"false", b"null"];

/// Handles byte `b` between tokens: whitespace counts against [`MAX_WHITESPACE_RUN`]
/// (`Some(accepted)`); any other byte resets the run and is left to the caller (`None`).
pub(super) fn whitespace_between_tokens(run: &mut u8, b: u8) -> Option<bool> {
    if matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
        *run += 1;
        return Some(*run <= MAX_WHITESPACE_RUN);
    }
    *run = 0;
    None
}

/// The recognizer's state; see the module docs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JsonState {
    mode: Mode,
    /// Bit `i` set: the container at depth `i + 1` is an object (else an array).
    stack: u64,
    depth: u8,
    whitespace_run: u8,
    /// UTF-8 continuation bytes still expected inside a string.
    utf8_left: u8,
    /// The range the next continuation byte must be in (narrower than 0x80..=0xbf after some
    /// lead bytes: no overlong forms, surrogates or code points past U+10FFFF).
    utf8_next: (u8, u8),
}

impl JsonState {
    /// The state before any output, for a top-level JSON object.
    pub fn object() -> Self {
        Self {
            mode: Mode::Start,
            stack: 0,
            depth: 0,
            whitespace_run: 0,
            utf8_left: 0,
            utf8_next: (0x80, 0xbf),
        }
    }

    /// The state before one JSON value of any kind (the schema recognizer's scalars and free
    /// values); whitespace is the caller's to handle.
    pub fn value() -> Self {
        Self {
            mode: Mode::Value,
            ..Self::object()
        }
    }

    /// Whether the text so far is one complete number (not inside a container).
    pub fn is_complete_number(&self) -> bool {
        matches!(self.mode, Mode::Number(n) if self.depth == 0 && n.is_complete())
    }

    /// Whether the text so far is one complete number that `b` does not continue: a number
    /// value ends only at the byte after it.
    pub fn number_ends_before(&self, b: u8) -> bool {
        match self.mode {
            Mode::Number(n) => self.is_complete_number() && self.number(n, b).is_none(),
            _ => false,
        }
    }

    /// Whether the top-level value is complete (nothing more may follow).
    pub fn is_done(&self) -> bool {
        self.mode == Mode::Done
    }

    /// Whether the text is inside a string, between characters: any plain string text (no
    /// quote, backslash or control character; whole UTF-8 characters) may follow.
    pub fn in_string_text(&self) -> bool {
        matches!(self.mode, Mode::Str { .. }) && self.utf8_left == 0
    }

    /// The state after `bytes`, or `None` when they cannot continue a JSON object.
    pub fn after(&self, bytes: &[u8]) -> Option<Self> {
        let mut s = *self;
        bytes.iter().all(|&b| s.advance(b)).then_some(s)
    }

    /// Feeds one byte; `false` (and an unspecified state) when it cannot come next.
    pub fn advance(&mut self, b: u8) -> bool {
        if let Mode::Number(n) = self.mode {
            match self.number(n, b) {
                Some(next) => {
                    self.mode = Mode::Number(next);
                    return true;
                }
                // The number ends before `b`, which must then follow a complete value.
                None if n.is_complete() => {
                    self.mode = Mode::After;
                }
                None => return false,
            }
        }
        let between_tokens = matches!(
            self.mode,
            Mode::Start
                | Mode::Value
                | Mode::ArrayFirst
                | Mode::ObjectFirst
                | Mode::Key
                | Mode::Colon
                | Mode::After
        );
        if between_tokens {
            if let Some(accepted) = whitespace_between_tokens(&mut self.whitespace_run, b) {
                return accepted;
            }
        }
        match self.mode {
            Mode::Start => b == b'{' && self.open(true),
            Mode::Value => self.value_start(b),
            Mode::ArrayFirst => {
                if b == b']' {
                    self.close(false)
                } else {
                    self.value_start(b)
                }
            }
            Mode::ObjectFirst | Mode::Key => {
                if b == b'"' {
                    self.mode = Mode::Str { key: true };
                    true
                } else {
                    self.mode == Mode::ObjectFirst && b == b'}' && self.close(true)
                }
            }
            Mode::Colon => {
                self.mode = Mode::Value;
                b == b':'
            }
            Mode::Str { key } => self.string(b, key),
            Mode::Escape { key } => {
                self.mode = match b {
                    b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => Mode::Str { key },
                    b'u' => Mode::Hex { key, left: 4 },
                    _ => return false,
                };
                true
            }
            Mode::Hex { key, left } => {
                self.mode = if left == 1 {
                    Mode::Str { key }
                } else {
                    Mode::Hex {
                        key,
                        left: left - 1,
                    }
                };
                b.is_ascii_hexdigit()
            }
            Mode::Literal { word, matched } => {
                let text = LITERALS[word as usize];
                if text[matched as usize] != b {
                    return false;
                }
                if matched as usize + 1 == text.len() {
                    self.value_done();
                } else {
                    self.mode = Mode::Literal {
                        word,
                        matched: matched + 1,
                    };
                }
                true
            }
            Mode::After => {
                let in_object = self.top_is_object();
                match b {
                    b',' => {
                        self.mode = if in_object { Mode::Key } else { Mode::Value };
                        true
                    }
                    b'}' if in_object => self.close(true),
                    b']' if !in_object => self.close(false),
                    _ => false,
                }
            }
            Mode::Number(_) | Mode::Done => false,
        }
    }

    /// The first byte of a value.
    fn value_start(&mut self, b: u8) -> bool {
        match b {
            b'{' => self.open(true),
            b'[' => self.open(false),
            b'"' => {
                self.mode = Mode::Str { key: false };
                true
            }
            b'-' => {
                self.mode = Mode::Number(Num::Minus);
                true
            }
            b'0' => {
                self.mode = Mode::Number(Num::Zero);
                true
            }
            b'1'..=b'9' => {
                self.mode = Mode::Number(Num::Int(1));
                true
            }
            _ => match LITERALS.iter().position(|w| w[0] == b) {
                Some(word) => {
                    self.mode = Mode::Literal {
                        word: word as u8,
                        matched: 1,
                    };
                    true
                }
                None => false,
            },
        }
    }

    /// The number part after `b`, or `None` when `b` is not part of the number.
    fn number(&self, n: Num, b: u8) -> Option<Num> {
        let digit = b.is_ascii_digit();
        let more = |count: u8| (count < MAX_NUMBER_DIGITS).then_some(count + 1);
        let more_exp = |count: u8| (count < MAX_EXPONENT_DIGITS).then_some(count + 1);
        match (n, b) {
            (Num::Minus, b'0') => Some(Num::Zero),
            (Num::Minus, _) if digit => Some(Num::Int(1)),
            (Num::Int(count), _) if digit => more(count).map(Num::Int),
            (Num::Zero | Num::Int(_), b'.') => Some(Num::Dot),
            (Num::Zero | Num::Int(_) | Num::Frac(_), b'e' | b'E') => Some(Num::E),
            (Num::Dot, _) if digit => Some(Num::Frac(1)),
            (Num::Frac(count), _) if digit => more(count).map(Num::Frac),
            (Num::E, b'+' | b'-') => Some(Num::ESign),
            (Num::E | Num::ESign, _) if digit => Some(Num::Exp(1)),
            (Num::Exp(count), _) if digit => more_exp(count).map(Num::Exp),
            _ => None,
        }
    }

    fn string(&mut self, b: u8, key: bool) -> bool {
        if self.utf8_left > 0 {
            let (lo, hi) = self.utf8_next;
            self.utf8_left -= 1;
            self.utf8_next = (0x80, 0xbf);
            return (lo..=hi).contains(&b);
        }
        // RFC 3629's well-formed sequences: continuations left, range of the first of them.
        let mut multi_byte = |left: u8, lo: u8, hi: u8| {
            self.utf8_left = left;
            self.utf8_next = (lo, hi);
            true
        };
        match b {
            b'"' => {
                if key {
                    self.mode = Mode::Colon;
                } else {
                    self.value_done();
                }
                true
            }
            b'\\' => {
                self.mode = Mode::Escape { key };
                true
            }
            0x20..=0x7f => true,
            0xc2..=0xdf => multi_byte(1, 0x80, 0xbf),
            0xe0 => multi_byte(2, 0xa0, 0xbf),
            0xed => multi_byte(2, 0x80, 0x9f),
            0xe1..=0xef => multi_byte(2, 0x80, 0xbf),
            0xf0 => multi_byte(3, 0x90, 0xbf),
            0xf4 => multi_byte(3, 0x80, 0x8f),
            0xf1..=0xf3 => multi_byte(3, 0x80, 0xbf),
            _ => false,
        }
    }

    fn open(&mut self, object: bool) -> bool {
        if self.depth >= MAX_DEPTH {
            return false;
        }
        if object {
            self.stack |= 1 << self.depth;
        } else {
            self.stack &= !(1 << self.depth);
        }
        self.depth += 1;
        self.mode = if object {
            Mode::ObjectFirst
        } else {
            Mode::ArrayFirst
        };
        true
    }

    fn close(&mut self, object: bool) -> bool {
        if self.depth == 0 || self.top_is_object() != object {
            return false;
        }
        self.depth -= 1;
        self.value_done();
        true
    }

    fn top_is_object(&self) -> bool {
        self.depth > 0 && self.stack & (1 << (self.depth - 1)) != 0
    }

    fn value_done(&mut self) {
        self.mode = if self.depth == 0 {
            Mode::Done
        } else {
            Mode::After
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn accepts(text: &str) -> bool {
        JsonState::object().after(text.as_bytes()).is_some()
    }

    fn complete(text: &str) -> bool {
        JsonState::object()
            .after(text.as_bytes())
            .is_some_and(|s| s.is_done())
    }

    #[test]
    fn whole_objects_are_complete_and_every_prefix_is_accepted() {
        for text in [
            "{}",
            " {\"a\": 1}",
            "{\"a\":[1,2.5,-0.1e+3,true,false,null,\"x\"],\"b\":{\"c\":{}}}",
            "{\"esc\": \"q\\\" b\\\\ u\\u00e9 n\\n\", \"k\": []}",
            "{\"unicode\": \"héllo ✓ 🎉\"}",
            "{\n  \"a\": 0,\n  \"b\": -12E5\n}",
        ] {
            assert!(complete(text), "{text}");
            assert!(serde_json::from_str::<serde_json::Value>(text).is_ok());
            for end in 0..text.len() {
                let prefix = &text.as_bytes()[..end];
                let state = JsonState::object().after(prefix);
                assert!(state.is_some_and(|s| !s.is_done()), "{text} at {end}");
            }
        }
    }

    #[test]
    fn what_json_forbids_is_rejected() {
        for text in [
            "[1]",
            "\"top-level string\"",
            "{a: 1}",
            "{\"a\" 1}",
            "{\"a\": 01}",
            "{\"a\": 1,}",
            "{\"a\": [1,]}",
            "{\"a\": .5}",
            "{\"a\": 1.}",
            "{\"a\": 1e}",
            "{\"a\": -}",
            "{\"a\": tru}",
            "{\"a\": True}",
            "{\"a\": \"\\x\"}",
            "{\"a\": \"\\u12G4\"}",
            "{\"a\": \"line\nbreak\"}",
            "{\"a\": 1]",
            "{\"a\": [1}",
            "{} {}",
            "{}}",
        ] {
            assert!(!complete(text), "{text}");
            assert!(serde_json::from_str::<serde_json::Map<_, _>>(text).is_err());
        }
        // Inside strings, exactly the well-formed UTF-8 sequences (checked against std's decoder
        // on every 1- to 3-byte string and a sample of 4-byte ones).
        let state = JsonState::object().after(b"{\"a\": \"").unwrap();
        let agrees = |bytes: &[u8]| {
            let complete = std::str::from_utf8(bytes).is_ok();
            let prefix =
                complete || std::str::from_utf8(bytes).is_err_and(|e| e.error_len().is_none());
            let accepted = state.after(bytes).map(|s| s.utf8_left == 0);
            let wanted = prefix.then_some(complete);
            // `"` and `\` are the string's own syntax, controls are not allowed.
            let plain = bytes.iter().all(|&b| b >= 0x20 && b != b'"' && b != b'\\');
            !plain || accepted == wanted
        };
        for a in 0..=255u8 {
            assert!(agrees(&[a]), "{a:x}");
            for b in 0..=255u8 {
                assert!(agrees(&[a, b]), "{a:x} {b:x}");
                for c in [
                    0x00, 0x41, 0x7f, 0x80, 0x8f, 0x90, 0x9f, 0xa0, 0xbf, 0xc0, 0xff,
                ] {
                    assert!(agrees(&[a, b, c]), "{a:x} {b:x} {c:x}");
                    assert!(agrees(&[a, b, c, 0x80]), "{a:x} {b:x} {c:x} 80");
                }
            }
        }
    }

    #[test]
    fn filler_is_bounded() {
        let spaces = " ".repeat(MAX_WHITESPACE_RUN as usize);
        assert!(accepts(&format!(
            "{spaces}{{{spaces}\"a\"{spaces}:{spaces}1{spaces}"
        )));
        assert!(!accepts(&format!("{spaces} ")));
        assert!(!accepts(&format!("{{\"a\":{spaces} ")));
        let deep = "[".repeat(MAX_DEPTH as usize - 1);
        assert!(accepts(&format!("{{\"a\":{deep}")));
        assert!(!accepts(&format!("{{\"a\":{deep}[")));
        let digits = "1".repeat(MAX_NUMBER_DIGITS as usize);
        let exponent = "1".repeat(MAX_EXPONENT_DIGITS as usize);
        assert!(complete(&format!("{{\"a\":{digits}.{digits}e{exponent}}}")));
        assert!(!accepts(&format!("{{\"a\":{digits}1")));
        assert!(!accepts(&format!("{{\"a\":1.{digits}1")));
        assert!(!accepts(&format!("{{\"a\":1e{exponent}1")));
    }

    /// Whether a run of digits, or an exponent, is longer than the recognizer's limits (e.g.
    /// `1e0264`; digits inside strings count too, which only skips a few more cases).
    fn long_number(bytes: &[u8]) -> bool {
        let long_run = bytes
            .split(|b| !b.is_ascii_digit())
            .any(|run| run.len() > MAX_NUMBER_DIGITS as usize);
        long_run
            || bytes.windows(2).enumerate().any(|(i, w)| {
                w[0].is_ascii_digit() && matches!(w[1], b'e' | b'E') && {
                    let rest = &bytes[i + 2..];
                    let rest = rest
                        .strip_prefix(b"+")
                        .or(rest.strip_prefix(b"-"))
                        .unwrap_or(rest);
                    rest.iter().take_while(|b| b.is_ascii_digit()).count()
                        > MAX_EXPONENT_DIGITS as usize
                }
            })
    }

    fn arb_object() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            any::<i64>().prop_map(serde_json::Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(serde_json::Value::from),
            "\\PC{0,8}".prop_map(serde_json::Value::from),
            any::<bool>().prop_map(serde_json::Value::from),
            Just(serde_json::Value::Null),
        ];
        let value = leaf.prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
                proptest::collection::btree_map("\\PC{0,4}", inner, 0..4)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        });
        proptest::collection::btree_map("\\PC{0,6}", value, 0..5)
            .prop_map(|m| serde_json::Value::Object(m.into_iter().collect()))
    }

    proptest! {
        /// Every object serde_json prints, compact or pretty, is complete.
        #[test]
        fn printed_objects_are_complete(value in arb_object()) {
            let compact = serde_json::to_string(&value).unwrap();
            prop_assert!(complete(&compact), "{}", compact);
            let pretty = serde_json::to_string_pretty(&value).unwrap();
            prop_assert!(complete(&pretty), "{}", pretty);
        }

        /// A printed object with one byte inserted, replaced or deleted: the recognizer calls it
        /// complete exactly when serde_json parses it as an object (unless it ends in
        /// whitespace: generation stops at the closing brace).
        #[test]
        fn mutated_objects_agree_with_serde_json(
            value in arb_object(),
            at in any::<proptest::sample::Index>(),
            op in 0..3u8,
            byte in proptest::sample::select(b"{}[]\":,0123456789-+.eE \ttrufalsn\\/".to_vec()),
        ) {
            let mut bytes = serde_json::to_vec(&value).unwrap();
            let i = at.index(bytes.len() + 1);
            match op {
                0 => bytes.insert(i, byte),
                1 if i < bytes.len() => bytes[i] = byte,
                _ if i < bytes.len() => {
                    bytes.remove(i);
                }
                _ => bytes.push(byte),
            }
            let done = JsonState::object().after(&bytes).is_some_and(|s| s.is_done());
            let parsed = serde_json::from_slice::<serde_json::Map<_, _>>(&bytes);
            // Valid JSON that serde_json will not hold in an f64 (e.g. 1e400): no verdict.
            let out_of_range = parsed
                .as_ref()
                .is_err_and(|e| e.to_string().contains("number out of range"));
            prop_assume!(!out_of_range && !long_number(&bytes));
            let parses = parsed.is_ok();
            let text = String::from_utf8_lossy(&bytes);
            prop_assert!(!done || parses, "accepted {}", text);
            let trailing_space = bytes.last().is_some_and(u8::is_ascii_whitespace);
            prop_assert!(!parses || done || trailing_space, "rejected {}", text);
        }
    }
}
