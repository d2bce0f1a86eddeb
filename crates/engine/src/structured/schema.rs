//! JSON Schema → the node tree that [`super::schema_state::SchemaState`] follows
//! (`response_format: {"type": "json_schema", ...}`).
//!
//! The subset is what Pydantic models and OpenAI's strict mode produce: `type` (one or a list),
//! `properties` and `required` (or `minProperties` = `maxProperties` = 1 without `required`:
//! exactly one of the properties), `items` with `minItems` / `maxItems`, `enum`, `const`, `anyOf` /
//! `oneOf` whose alternatives start differently (`Optional[X]`, `str | int`), and `$ref` into
//! `$defs` / `definitions` (not recursive). The output is always an instance of the schema, but
//! not every instance can be produced: an object's properties come in the schema's order, none
//! beyond those listed (whatever `additionalProperties` says), and an object without
//! `properties` is free JSON. Annotations (`title`, `description`, `default`, `examples`, ...)
//! are ignored; every other keyword (`pattern`, `format`, `minimum`, `minLength`, `allOf`, ...)
//! is refused by name rather than silently not enforced. The root must be an object.

use serde_json::{json, Map, Value};

/// Index of a node in a [`Schema`]'s node list.
pub type NodeId = u16;

/// Most properties of one object, and most values of one `enum` (bit sets of 64).
pub const MAX_CHOICES: usize = 64;
/// Deepest nesting of objects and arrays the schema may describe.
pub const MAX_SCHEMA_DEPTH: usize = 12;

/// A compiled schema; see the module docs.
#[derive(Debug, Clone, PartialEq)]
pub struct Schema {
    pub(super) nodes: Vec<Node>,
    pub(super) root: NodeId,
}

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Node {
    /// Any JSON value.
    Any,
    /// Any JSON object.
    AnyObject,
    /// Listed properties in order; the optional ones may be left out.
    Object(Vec<Property>),
    /// Exactly one of these properties (`minProperties` = `maxProperties` = 1, none required):
    /// a choice among named values, e.g. which function to call with which arguments.
    OneKeyObject(Vec<Property>),
    Array {
        items: NodeId,
        min: u32,
        max: u32,
    },
    String,
    Integer,
    Number,
    Boolean,
    Null,
    /// One of these values' compact JSON texts (`enum`, `const`).
    Literals(Vec<Vec<u8>>),
    /// One of these, told apart by the value's first byte.
    OneOf(Vec<NodeId>),
}

#[derive(Debug, Clone, PartialEq)]
pub(super) struct Property {
    /// The key as JSON text, quotes included.
    pub key: Vec<u8>,
    pub node: NodeId,
    pub required: bool,
}

/// Why a schema cannot be followed; `path` is a JSON pointer into the schema.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("json_schema at {path:?}: {message}")]
pub struct SchemaError {
    pub path: String,
    pub message: String,
}

/// Keywords that only describe (ignored).
const ANNOTATIONS: [&str; 11] = [
    "title",
    "description",
    "default",
    "examples",
    "$schema",
    "$id",
    "$comment",
    "deprecated",
    "readOnly",
    "writeOnly",
    "additionalProperties",
];
/// Keywords this module follows.
const SUPPORTED: [&str; 15] = [
    "type",
    "properties",
    "required",
    "minProperties",
    "maxProperties",
    "items",
    "minItems",
    "maxItems",
    "enum",
    "const",
    "anyOf",
    "oneOf",
    "$ref",
    "$defs",
    "definitions",
];

impl Schema {
    /// Compiles `schema` (a JSON Schema document).
    pub fn compile(schema: &Value) -> Result<Self, SchemaError> {
        let mut c = Compiler {
            document: schema,
            nodes: Vec::new(),
            refs: Vec::new(),
        };
        let root = c.node(schema, "", 0)?;
        let root_is_object = matches!(
            c.nodes[root as usize],
            Node::Object(_) | Node::OneKeyObject(_) | Node::AnyObject
        );
        if !root_is_object {
            return Err(error("", "the root must be an object schema"));
        }
        Ok(Self {
            nodes: c.nodes,
            root,
        })
    }

    pub(super) fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id as usize]
    }

    /// Whether a value of node `id` can start with byte `b`.
    pub(super) fn can_start(&self, id: NodeId, b: u8) -> bool {
        match self.node(id) {
            Node::Any => matches!(
                b,
                b'{' | b'[' | b'"' | b'-' | b'0'..=b'9' | b't' | b'f' | b'n'
            ),
            Node::AnyObject | Node::Object(_) | Node::OneKeyObject(_) => b == b'{',
            Node::Array { .. } => b == b'[',
            Node::String => b == b'"',
            Node::Integer | Node::Number => b == b'-' || b.is_ascii_digit(),
            Node::Boolean => b == b't' || b == b'f',
            Node::Null => b == b'n',
            Node::Literals(values) => values.iter().any(|v| v[0] == b),
            Node::OneOf(alternatives) => alternatives.iter().any(|&a| self.can_start(a, b)),
        }
    }
}

fn error(path: &str, message: impl Into<String>) -> SchemaError {
    SchemaError {
        path: if path.is_empty() {
            "/".into()
        } else {
            path.into()
        },
        message: message.into(),
    }
}

struct Compiler<'a> {
    document: &'a Value,
    nodes: Vec<Node>,
    /// `$ref`s being compiled (a cycle means a recursive schema).
    refs: Vec<String>,
}

impl Compiler<'_> {
    fn push(&mut self, node: Node) -> Result<NodeId, SchemaError> {
        let id = NodeId::try_from(self.nodes.len())
            .map_err(|_| error("", "the schema has too many parts"))?;
        self.nodes.push(node);
        Ok(id)
    }

    fn node(&mut self, schema: &Value, path: &str, depth: usize) -> Result<NodeId, SchemaError> {
        let object = match schema {
            Value::Bool(true) => return self.push(Node::Any),
            Value::Object(object) => object,
            _ => return Err(error(path, "a schema must be an object or true")),
        };
        if depth > MAX_SCHEMA_DEPTH {
            return Err(error(
                path,
                format!("nesting deeper than {MAX_SCHEMA_DEPTH} levels"),
            ));
        }
        if let Some(key) = object
            .keys()
            .find(|k| !SUPPORTED.contains(&k.as_str()) && !ANNOTATIONS.contains(&k.as_str()))
        {
            return Err(error(path, format!("the keyword {key:?} is not supported")));
        }
        if let Some(reference) = object.get("$ref") {
            return self.reference(reference, path, depth);
        }
        if let Some(value) = object.get("const") {
            return self.push(Node::Literals(vec![literal(value)]));
        }
        if let Some(values) = object.get("enum") {
            let values = values
                .as_array()
                .filter(|v| (1..=MAX_CHOICES).contains(&v.len()))
                .ok_or_else(|| error(path, format!("enum must list 1 to {MAX_CHOICES} values")))?;
            return self.push(Node::Literals(values.iter().map(literal).collect()));
        }
        for keyword in ["anyOf", "oneOf"] {
            if let Some(alternatives) = object.get(keyword) {
                let list = alternatives
                    .as_array()
                    .filter(|a| !a.is_empty())
                    .ok_or_else(|| error(path, format!("{keyword} must be a non-empty list")))?;
                let ids = list
                    .iter()
                    .enumerate()
                    .map(|(i, s)| self.node(s, &format!("{path}/{keyword}/{i}"), depth))
                    .collect::<Result<Vec<_>, _>>()?;
                return self.one_of(ids, &format!("{path}/{keyword}"));
            }
        }
        match object.get("type") {
            None => self.push(Node::Any),
            Some(Value::String(kind)) => self.typed(kind, object, path, depth),
            Some(Value::Array(kinds)) => {
                let ids = kinds
                    .iter()
                    .map(|k| match k {
                        Value::String(kind) => self.typed(kind, object, path, depth),
                        _ => Err(error(path, "type must be a string or a list of strings")),
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                self.one_of(ids, &format!("{path}/type"))
            }
            Some(_) => Err(error(path, "type must be a string or a list of strings")),
        }
    }

    fn typed(
        &mut self,
        kind: &str,
        object: &Map<String, Value>,
        path: &str,
        depth: usize,
    ) -> Result<NodeId, SchemaError> {
        let node = match kind {
            "object" => {
                let counts = (object.get("minProperties"), object.get("maxProperties"));
                let one = json!(1);
                let exactly_one = match counts {
                    (None, None) => false,
                    (Some(min), Some(max)) if *min == one && *max == one => true,
                    _ => {
                        return Err(error(
                            path,
                            "minProperties / maxProperties are supported only both 1 (exactly one of the properties)",
                        ))
                    }
                };
                match (object.get("properties"), exactly_one) {
                    (None, false) => Node::AnyObject,
                    (Some(properties), false) => {
                        self.object(properties, object.get("required"), path, depth)?
                    }
                    (Some(properties), true) if object.get("required").is_none() => {
                        match self.object(properties, None, path, depth)? {
                            Node::Object(props) if !props.is_empty() => Node::OneKeyObject(props),
                            _ => return Err(error(path, "exactly one of no properties")),
                        }
                    }
                    _ => {
                        return Err(error(
                            path,
                            "exactly one property (minProperties = maxProperties = 1) needs properties and no required",
                        ))
                    }
                }
            }
            "array" => {
                let items = match object.get("items") {
                    None => self.push(Node::Any)?,
                    Some(items) => self.node(items, &format!("{path}/items"), depth + 1)?,
                };
                let bound = |key: &str| -> Result<Option<u32>, SchemaError> {
                    object
                        .get(key)
                        .map(|v| {
                            v.as_u64()
                                .and_then(|v| u32::try_from(v).ok())
                                .ok_or_else(|| error(path, format!("{key} must be a count")))
                        })
                        .transpose()
                };
                let (min, max) = (bound("minItems")?.unwrap_or(0), bound("maxItems")?);
                let max = max.unwrap_or(u32::MAX);
                if min > max {
                    return Err(error(path, "minItems is larger than maxItems"));
                }
                Node::Array { items, min, max }
            }
            "string" => Node::String,
            "integer" => Node::Integer,
            "number" => Node::Number,
            "boolean" => Node::Boolean,
            "null" => Node::Null,
            other => return Err(error(path, format!("unknown type {other:?}"))),
        };
        self.push(node)
    }

    fn object(
        &mut self,
        properties: &Value,
        required: Option<&Value>,
        path: &str,
        depth: usize,
    ) -> Result<Node, SchemaError> {
        let properties = properties
            .as_object()
            .ok_or_else(|| error(path, "properties must be an object"))?;
        if properties.len() > MAX_CHOICES {
            return Err(error(path, format!("more than {MAX_CHOICES} properties")));
        }
        let required: Vec<&str> = match required {
            None => Vec::new(),
            Some(list) => list
                .as_array()
                .and_then(|l| l.iter().map(Value::as_str).collect::<Option<Vec<_>>>())
                .ok_or_else(|| error(path, "required must be a list of property names"))?,
        };
        if let Some(missing) = required.iter().find(|r| !properties.contains_key(**r)) {
            return Err(error(
                path,
                format!("required property {missing:?} is not in properties"),
            ));
        }
        properties
            .iter()
            .map(|(key, schema)| {
                let node = self.node(schema, &format!("{path}/properties/{key}"), depth + 1)?;
                Ok(Property {
                    key: serde_json::to_vec(key).unwrap_or_default(),
                    node,
                    required: required.contains(&key.as_str()),
                })
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Node::Object)
    }

    fn reference(
        &mut self,
        reference: &Value,
        path: &str,
        depth: usize,
    ) -> Result<NodeId, SchemaError> {
        let pointer = reference
            .as_str()
            .and_then(|r| r.strip_prefix('#'))
            .ok_or_else(|| error(path, "only local $refs (\"#/...\") are supported"))?;
        if self.refs.iter().any(|r| r == pointer) {
            return Err(error(
                path,
                format!("recursive $ref {pointer:?} is not supported"),
            ));
        }
        let target = self
            .document
            .pointer(pointer)
            .ok_or_else(|| error(path, format!("$ref {pointer:?} points nowhere")))?;
        self.refs.push(pointer.to_string());
        let id = self.node(target, pointer, depth);
        self.refs.pop();
        id
    }

    /// Alternatives; refused when two could start with the same byte (which one to follow would
    /// not be known from the output).
    fn one_of(&mut self, ids: Vec<NodeId>, path: &str) -> Result<NodeId, SchemaError> {
        if ids.len() == 1 {
            return Ok(ids[0]);
        }
        let schema = Schema {
            nodes: std::mem::take(&mut self.nodes),
            root: 0,
        };
        let overlap =
            (0..=255u8).find(|&b| ids.iter().filter(|&&id| schema.can_start(id, b)).count() > 1);
        self.nodes = schema.nodes;
        if let Some(b) = overlap {
            return Err(error(
                path,
                format!(
                    "alternatives must start differently (e.g. a string and null), but two can start with {:?}",
                    b as char
                ),
            ));
        }
        self.push(Node::OneOf(ids))
    }
}

/// A value's compact JSON text.
fn literal(value: &Value) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pydantic_style_schemas_compile() {
        let schema = json!({
            "$defs": {"Pet": {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}},
            "type": "object",
            "title": "Person",
            "properties": {
                "name": {"type": "string", "description": "full name"},
                "age": {"type": "integer"},
                "nickname": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": null},
                "kind": {"enum": ["a", "b", 3]},
                "pets": {"type": "array", "items": {"$ref": "#/$defs/Pet"}, "maxItems": 3},
                "extra": {"type": "object"},
            },
            "required": ["name", "age"],
            "additionalProperties": false,
        });
        let compiled = Schema::compile(&schema).unwrap();
        let Node::Object(props) = compiled.node(compiled.root) else {
            panic!("root is an object")
        };
        let keys: Vec<&[u8]> = props.iter().map(|p| &p.key[..]).collect();
        assert_eq!(
            keys,
            [
                &b"\"name\""[..],
                b"\"age\"",
                b"\"nickname\"",
                b"\"kind\"",
                b"\"pets\"",
                b"\"extra\""
            ]
        );
        assert_eq!(
            props.iter().map(|p| p.required).collect::<Vec<_>>(),
            [true, true, false, false, false, false]
        );
        assert_eq!(
            compiled.node(props[3].node),
            &Node::Literals(vec![b"\"a\"".to_vec(), b"\"b\"".to_vec(), b"3".to_vec()])
        );
        assert_eq!(compiled.node(props[5].node), &Node::AnyObject);
    }

    #[test]
    fn what_cannot_be_followed_is_refused_by_keyword_and_place() {
        for (schema, path, words) in [
            (json!({"type": "string"}), "/", "root must be an object"),
            (
                json!({"type": "object", "properties": {"a": {"type": "string", "pattern": "x"}}}),
                "/properties/a",
                "\"pattern\"",
            ),
            (
                json!({"type": "object", "properties": {"a": {"type": "string", "format": "date-time"}}}),
                "/properties/a",
                "\"format\"",
            ),
            (
                json!({"type": "object", "properties": {"n": {"type": "integer", "minimum": 0}}}),
                "/properties/n",
                "\"minimum\"",
            ),
            (json!({"type": "object", "allOf": []}), "/", "\"allOf\""),
            (
                json!({"type": "object", "properties": {"a": {"anyOf": [{"type": "string"}, {"enum": ["x"]}]}}}),
                "/properties/a/anyOf",
                "start differently",
            ),
            (
                json!({"$defs": {"N": {"type": "object", "properties": {"next": {"$ref": "#/$defs/N"}}}}, "$ref": "#/$defs/N"}),
                "/$defs/N/properties/next",
                "recursive",
            ),
            (
                json!({"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}),
                "/properties/a",
                "points nowhere",
            ),
            (
                json!({"type": "object", "properties": {}, "required": ["a"]}),
                "/",
                "not in properties",
            ),
            (
                json!({"type": "object", "properties": {"a": {"type": "array", "minItems": 3, "maxItems": 2}}}),
                "/properties/a",
                "minItems",
            ),
            (
                json!({"type": "object", "properties": {"a": {"type": "decimal"}}}),
                "/properties/a",
                "unknown type",
            ),
        ] {
            let e = Schema::compile(&schema).unwrap_err();
            assert_eq!(e.path, path, "{schema}");
            assert!(e.message.contains(words), "{schema}: {e}");
        }
    }
}
