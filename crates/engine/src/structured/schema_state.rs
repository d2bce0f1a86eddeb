//! A byte-level recognizer of the JSON texts a [`Schema`] describes (see its module for the
//! subset): like [`JsonState`], `Copy` and allocation-free, so a token is checked by copying the
//! state and feeding it the token's bytes.
//!
//! The state is a stack of frames, one per open object or array plus the value being read.
//! Object keys and `enum` / `const` values are matched byte by byte against their candidates (a
//! bit set); strings, numbers, `true` / `false` / `null` and free JSON are read by an embedded
//! [`JsonState`]. Whitespace between tokens is limited as in [`JsonState`] (the same helper).

use super::json::{whitespace_between_tokens, JsonState};
use super::schema::{Node, NodeId, Schema, MAX_SCHEMA_DEPTH};

/// Frames a state can hold: a container per schema level, the value being read, and slack.
const MAX_FRAMES: usize = MAX_SCHEMA_DEPTH + 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Frame {
    /// A value of `node` comes next (whitespace may come first).
    Value { node: NodeId },
    /// A string, number, literal word or free JSON value read by the embedded [`JsonState`].
    Scalar { node: NodeId },
    /// An `enum` / `const` value: `candidates` still match the `matched` bytes read so far.
    Literal {
        node: NodeId,
        candidates: u64,
        matched: u16,
    },
    Object {
        node: NodeId,
        next: u16,
        phase: ObjectPhase,
    },
    Array {
        node: NodeId,
        items: u32,
        phase: ArrayPhase,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ObjectPhase {
    /// After `{`: a key or `}`.
    Open,
    /// After `,`: a key.
    Comma,
    /// Inside a key: `candidates` (property indices) still match the `matched` bytes.
    Key { candidates: u64, matched: u16 },
    /// After property `property`'s key: `:`.
    Colon { property: u16 },
    /// After a property's value: `,` or `}`.
    AfterValue,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ArrayPhase {
    Open,
    Comma,
    AfterValue,
}

/// The recognizer's state; see the module docs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SchemaState {
    frames: [Frame; MAX_FRAMES],
    len: u8,
    scalar: JsonState,
    whitespace_run: u8,
}

impl SchemaState {
    /// The state before any output.
    pub fn new(schema: &Schema) -> Self {
        let mut frames = [Frame::Value { node: 0 }; MAX_FRAMES];
        frames[0] = Frame::Value { node: schema.root };
        Self {
            frames,
            len: 1,
            scalar: JsonState::value(),
            whitespace_run: 0,
        }
    }

    /// Whether the root object is complete (nothing more may follow).
    pub fn is_done(&self) -> bool {
        self.len == 0
    }

    /// Whether the text is inside a free string between characters (see
    /// [`JsonState::in_string_text`]).
    pub fn in_string_text(&self) -> bool {
        matches!(self.top(), Some(Frame::Scalar { .. })) && self.scalar.in_string_text()
    }

    /// The state after `bytes`, or `None` when they cannot continue an instance of `schema`.
    pub fn after(&self, schema: &Schema, bytes: &[u8]) -> Option<Self> {
        let mut s = *self;
        bytes.iter().all(|&b| s.advance(schema, b)).then_some(s)
    }

    fn top(&self) -> Option<Frame> {
        self.len.checked_sub(1).map(|i| self.frames[i as usize])
    }

    fn set_top(&mut self, frame: Frame) {
        self.frames[self.len as usize - 1] = frame;
    }

    fn push(&mut self, frame: Frame) -> bool {
        if self.len as usize >= MAX_FRAMES {
            return false;
        }
        self.frames[self.len as usize] = frame;
        self.len += 1;
        true
    }

    /// The value on top is complete: pop it (its container, if any, already waits for what
    /// follows a value).
    fn value_done(&mut self) {
        self.len -= 1;
    }

    /// Feeds one byte; `false` (and an unspecified state) when it cannot come next.
    pub fn advance(&mut self, schema: &Schema, b: u8) -> bool {
        // A byte that ends a number or a literal is handled again by the frame below.
        loop {
            let Some(top) = self.top() else {
                return false;
            };
            let between_tokens = matches!(
                top,
                Frame::Value { .. }
                    | Frame::Object {
                        phase: ObjectPhase::Open
                            | ObjectPhase::Comma
                            | ObjectPhase::Colon { .. }
                            | ObjectPhase::AfterValue,
                        ..
                    }
                    | Frame::Array { .. }
            );
            if between_tokens {
                if let Some(accepted) = whitespace_between_tokens(&mut self.whitespace_run, b) {
                    return accepted;
                }
            }
            match top {
                Frame::Value { node } => return self.start_value(schema, node, b),
                Frame::Scalar { node } => {
                    // An integer also ends before a fraction or an exponent (which the frame
                    // below then refuses).
                    let integer = matches!(schema.node(node), Node::Integer);
                    let ends = self.scalar.number_ends_before(b)
                        || (integer
                            && self.scalar.is_complete_number()
                            && matches!(b, b'.' | b'e' | b'E'));
                    if ends {
                        self.value_done();
                        continue;
                    }
                    if !self.scalar.advance(b) {
                        return false;
                    }
                    if self.scalar.is_done() {
                        self.value_done();
                    }
                    return true;
                }
                Frame::Literal {
                    node,
                    candidates,
                    matched,
                } => {
                    let Node::Literals(values) = schema.node(node) else {
                        return false;
                    };
                    let at = matched as usize;
                    let next = bits(candidates)
                        .filter(|&i| values[i].get(at) == Some(&b))
                        .fold(0u64, |set, i| set | 1 << i);
                    if next == 0 {
                        // Only a complete number can be followed by what is not part of it.
                        if bits(candidates).any(|i| values[i].len() == at) {
                            self.value_done();
                            continue;
                        }
                        return false;
                    }
                    let matched = matched + 1;
                    // Done when every candidate left is complete and none is a number (which
                    // might go on: `1` and `12`).
                    let finished = bits(next).all(|i| {
                        values[i].len() == matched as usize && !ends_with_digit(&values[i])
                    });
                    if finished {
                        self.value_done();
                    } else {
                        self.set_top(Frame::Literal {
                            node,
                            candidates: next,
                            matched,
                        });
                    }
                    return true;
                }
                Frame::Object { node, next, phase } => {
                    return self.object(schema, node, next, phase, b);
                }
                Frame::Array { node, items, phase } => {
                    return self.array(schema, node, items, phase, b);
                }
            }
        }
    }

    /// The first byte of a value of `node`.
    fn start_value(&mut self, schema: &Schema, node: NodeId, b: u8) -> bool {
        match schema.node(node) {
            Node::OneOf(alternatives) => {
                match alternatives.iter().find(|&&a| schema.can_start(a, b)) {
                    Some(&chosen) => self.start_value(schema, chosen, b),
                    None => false,
                }
            }
            Node::Object(_) | Node::OneKeyObject(_) => {
                self.set_top(Frame::Object {
                    node,
                    next: 0,
                    phase: ObjectPhase::Open,
                });
                b == b'{'
            }
            Node::Array { .. } => {
                self.set_top(Frame::Array {
                    node,
                    items: 0,
                    phase: ArrayPhase::Open,
                });
                b == b'['
            }
            Node::Literals(values) => {
                let all = if values.len() == 64 {
                    u64::MAX
                } else {
                    (1u64 << values.len()) - 1
                };
                self.set_top(Frame::Literal {
                    node,
                    candidates: all,
                    matched: 0,
                });
                self.advance(schema, b)
            }
            Node::AnyObject => {
                if b != b'{' {
                    return false;
                }
                self.scalar = JsonState::object();
                self.set_top(Frame::Scalar { node });
                self.scalar.advance(b)
            }
            Node::Any
            | Node::String
            | Node::Integer
            | Node::Number
            | Node::Boolean
            | Node::Null => {
                if !schema.can_start(node, b) {
                    return false;
                }
                self.scalar = JsonState::value();
                self.set_top(Frame::Scalar { node });
                self.scalar.advance(b)
            }
        }
    }

    fn object(
        &mut self,
        schema: &Schema,
        node: NodeId,
        next: u16,
        phase: ObjectPhase,
        b: u8,
    ) -> bool {
        let (props, exactly_one) = match schema.node(node) {
            Node::Object(props) => (props, false),
            Node::OneKeyObject(props) => (props, true),
            _ => return false,
        };
        // Exactly one property: none may follow the first, and it cannot be left out.
        let rest_optional = if exactly_one {
            phase == ObjectPhase::AfterValue
        } else {
            props[next as usize..].iter().all(|p| !p.required)
        };
        let set = |s: &mut Self, next: u16, phase: ObjectPhase| {
            s.set_top(Frame::Object { node, next, phase });
        };
        match phase {
            ObjectPhase::Open | ObjectPhase::Comma if b == b'"' => {
                // The keys that may come: the next ones up to and including the next required.
                // (Exactly one property: only after `{`, with every property a candidate.)
                let mut candidates = 0u64;
                for (i, p) in props.iter().enumerate().skip(next as usize) {
                    candidates |= 1 << i;
                    if p.required {
                        break;
                    }
                }
                set(
                    self,
                    next,
                    ObjectPhase::Key {
                        candidates,
                        matched: 1,
                    },
                );
                candidates != 0
            }
            ObjectPhase::Open if b == b'}' && rest_optional => {
                self.value_done();
                true
            }
            ObjectPhase::Key {
                candidates,
                matched,
            } => {
                let at = matched as usize;
                let left = bits(candidates)
                    .filter(|&i| props[i].key.get(at) == Some(&b))
                    .fold(0u64, |set, i| set | 1 << i);
                let matched = matched + 1;
                // Keys end with their closing quote, so a complete one is the only one left.
                match bits(left).find(|&i| props[i].key.len() == matched as usize) {
                    Some(i) => set(
                        self,
                        i as u16 + 1,
                        ObjectPhase::Colon { property: i as u16 },
                    ),
                    None => set(
                        self,
                        next,
                        ObjectPhase::Key {
                            candidates: left,
                            matched,
                        },
                    ),
                }
                left != 0
            }
            ObjectPhase::Colon { property } if b == b':' => {
                set(self, next, ObjectPhase::AfterValue);
                self.push(Frame::Value {
                    node: props[property as usize].node,
                })
            }
            ObjectPhase::AfterValue
                if b == b',' && !exactly_one && (next as usize) < props.len() =>
            {
                set(self, next, ObjectPhase::Comma);
                true
            }
            ObjectPhase::AfterValue if b == b'}' && rest_optional => {
                self.value_done();
                true
            }
            _ => false,
        }
    }

    fn array(
        &mut self,
        schema: &Schema,
        node: NodeId,
        items: u32,
        phase: ArrayPhase,
        b: u8,
    ) -> bool {
        let Node::Array {
            items: item_node,
            min,
            max,
        } = *schema.node(node)
        else {
            return false;
        };
        match phase {
            ArrayPhase::Open if b == b']' && min == 0 => {
                self.value_done();
                true
            }
            ArrayPhase::Open | ArrayPhase::Comma if items < max => {
                self.set_top(Frame::Array {
                    node,
                    items: items + 1,
                    phase: ArrayPhase::AfterValue,
                });
                self.push(Frame::Value { node: item_node }) && self.advance(schema, b)
            }
            ArrayPhase::AfterValue if b == b',' && items < max => {
                self.set_top(Frame::Array {
                    node,
                    items,
                    phase: ArrayPhase::Comma,
                });
                true
            }
            ArrayPhase::AfterValue if b == b']' && items >= min => {
                self.value_done();
                true
            }
            _ => false,
        }
    }
}

/// The indices of the set bits.
fn bits(set: u64) -> impl Iterator<Item = usize> {
    (0..64).filter(move |i| set & (1 << i) != 0)
}

fn ends_with_digit(text: &[u8]) -> bool {
    text.last().is_some_and(u8::is_ascii_digit)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::{json, Value};

    fn compile(schema: Value) -> Schema {
        Schema::compile(&schema).unwrap()
    }

    fn state(schema: &Schema, text: &str) -> Option<SchemaState> {
        SchemaState::new(schema).after(schema, text.as_bytes())
    }

    fn complete(schema: &Schema, text: &str) -> bool {
        state(schema, text).is_some_and(|s| s.is_done())
    }

    fn person() -> Schema {
        compile(json!({
            "$defs": {"Pet": {"type": "object", "properties": {
                "kind": {"enum": ["cat", "dog", 7, null]},
                "legs": {"type": "integer"}}, "required": ["kind"]}},
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "age": {"type": "integer"},
                "score": {"type": ["number", "null"]},
                "ok": {"type": "boolean"},
                "pets": {"type": "array", "items": {"$ref": "#/$defs/Pet"}, "minItems": 1, "maxItems": 2},
                "meta": {"type": "object"},
                "any": {},
            },
            "required": ["name", "age"],
        }))
    }

    /// `minProperties` = `maxProperties` = 1: exactly one of the properties, any of them.
    #[test]
    fn exactly_one_property_is_one_and_no_more() {
        let schema = compile(
            json!({"type": "object", "minProperties": 1, "maxProperties": 1,
            "properties": {
                "weather": {"type": "object", "properties": {"city": {"type": "string"}},
                            "required": ["city"]},
                "time": {"type": "object", "properties": {}}}}),
        );
        for text in [r#"{"weather": {"city": "Oslo"}}"#, r#"{ "time" : {} }"#] {
            assert!(complete(&schema, text), "{text}");
            for end in 0..text.len() {
                assert!(state(&schema, &text[..end]).is_some_and(|s| !s.is_done()));
            }
        }
        for text in [
            "{}",
            r#"{"time": {},"#,
            r#"{"time": {}, "weather": {"city": "x"}}"#,
            r#"{"date": {}}"#,
            r#"{"weather": {}}"#,
        ] {
            assert!(!complete(&schema, text), "{text}");
        }
        assert!(state(&schema, r#"{"time": {}, "#).is_none());
        assert!(state(&schema, "{}").is_none());
        for (bad, why) in [
            (
                json!({"type": "object", "properties": {"a": {}}, "minProperties": 1}),
                "both 1",
            ),
            (
                json!({"type": "object", "properties": {"a": {}}, "minProperties": 1, "maxProperties": 2}),
                "both 1",
            ),
            (
                json!({"type": "object", "properties": {"a": {}}, "required": ["a"],
                    "minProperties": 1, "maxProperties": 1}),
                "no required",
            ),
            (
                json!({"type": "object", "properties": {}, "minProperties": 1, "maxProperties": 1}),
                "no properties",
            ),
        ] {
            let e = Schema::compile(&bad).unwrap_err();
            assert!(e.to_string().contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn instances_are_complete_and_every_prefix_is_accepted() {
        let schema = person();
        for text in [
            r#"{"name": "Ann", "age": 3}"#,
            r#"{"name":"A\"n","age":-12,"score":null,"ok":true}"#,
            r#"{ "name" : "Lily" , "age" : 0 , "score" : 1.5e3 , "pets" : [ {"kind": "cat"} , {"kind": 7, "legs": 4} ] }"#,
            r#"{"name": "B", "age": 1, "pets": [{"kind": null}], "meta": {"x": [1, {"y": null}]}, "any": [1, "2"]}"#,
            r#"{"name": "C", "age": 2, "any": 17}"#,
        ] {
            assert!(complete(&schema, text), "{text}");
            for end in 0..text.len() {
                let s = state(&schema, &text[..end]);
                assert!(s.is_some_and(|s| !s.is_done()), "{text} at {end}");
            }
        }
    }

    #[test]
    fn what_the_schema_forbids_is_rejected() {
        let schema = person();
        for text in [
            r#"{"age": 3, "name": "Ann"}"#,
            r#"{"name": "Ann"}"#,
            r#"{"name": "Ann", "age": 3.5}"#,
            r#"{"name": "Ann", "age": 3e2}"#,
            r#"{"name": 5, "age": 3}"#,
            r#"{"name": "Ann", "age": 3, "extra": 1}"#,
            r#"{"name": "Ann", "age": 3, "score": "high"}"#,
            r#"{"name": "Ann", "age": 3, "pets": []}"#,
            r#"{"name": "Ann", "age": 3, "pets": [{"kind": "cat"}, {"kind": "dog"}, {"kind": "cat"}]}"#,
            r#"{"name": "Ann", "age": 3, "pets": [{"kind": "cow"}]}"#,
            r#"{"name": "Ann", "age": 3, "pets": [{"kind": 70}]}"#,
            r#"{"name": "Ann", "age": 3, "pets": [{"legs": 4}]}"#,
            r#"{"name": "Ann", "age": 3, "ok": 1}"#,
            r#"{"name": "Ann", "age": 3, "meta": []}"#,
            r#"{"name": "Ann", "age": 3,}"#,
            r#"{"name": "Ann", "age": 3}}"#,
            r#"["name"]"#,
        ] {
            assert!(!complete(&schema, text), "{text}");
        }
        // A complete object takes nothing more, whitespace included.
        let done = state(&schema, r#"{"name": "Ann", "age": 3}"#).unwrap();
        assert!(done.after(&schema, b" ").is_none());
    }

    #[test]
    fn keys_and_enums_are_matched_against_their_candidates_only() {
        let schema = person();
        let s = state(&schema, "{\"").unwrap();
        // Only the first required key (or an optional one before it) may start: "name".
        assert!(s.after(&schema, b"n").is_some());
        assert!(s.after(&schema, b"a").is_none());
        let s = state(&schema, r#"{"name": "A", ""#).unwrap();
        assert!(s.after(&schema, b"age").is_some());
        assert!(
            s.after(&schema, b"score").is_none(),
            "age is required before score"
        );
        let s = state(&schema, r#"{"name": "A", "age": 1, "pets": [{"kind": "#).unwrap();
        for ok in ["\"c", "\"dog\"", "7", "null"] {
            assert!(s.after(&schema, ok.as_bytes()).is_some(), "{ok}");
        }
        for bad in ["\"e", "8", "true", "nul "] {
            assert!(s.after(&schema, bad.as_bytes()).is_none(), "{bad}");
        }
        // Inside a free string, plain text may follow; inside a key or an enum value, not.
        assert!(state(&schema, r#"{"name": "An"#).unwrap().in_string_text());
        assert!(!state(&schema, "{\"na").unwrap().in_string_text());
        assert!(!s.after(&schema, b"\"c").unwrap().in_string_text());
    }

    proptest! {
        /// Instances of the schema that serde_json prints are complete.
        #[test]
        fn printed_instances_are_complete(
            name in "\\PC{0,8}",
            age in any::<i64>(),
            score in proptest::option::of(any::<f64>().prop_filter("finite", |f| f.is_finite())),
            pets in proptest::collection::vec((0..4usize, proptest::option::of(any::<i32>())), 1..=2),
            pretty in any::<bool>(),
        ) {
            let kinds = [json!("cat"), json!("dog"), json!(7), Value::Null];
            let pets: Vec<Value> = pets
                .into_iter()
                .map(|(k, legs)| match legs {
                    Some(legs) => json!({"kind": kinds[k], "legs": legs}),
                    None => json!({"kind": kinds[k]}),
                })
                .collect();
            let value = json!({"name": name, "age": age, "score": score, "pets": pets});
            let text = if pretty {
                serde_json::to_string_pretty(&value).unwrap()
            } else {
                serde_json::to_string(&value).unwrap()
            };
            prop_assert!(complete(&person(), &text), "{}", text);
        }
    }
}
