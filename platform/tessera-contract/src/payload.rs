//! Navigating an event's payload schema (JSON Schema 2020-12) by field path:
//! does `customer.email` exist, is it always present, what JSON type is it,
//! which classification does it carry. Local `$ref`s (`#/$defs/...`) are
//! followed, to a bounded depth so that cyclic schemas cannot loop.

use serde_json::{Map, Value};

use crate::model::{DataType, FieldPath};

const MAX_REF_HOPS: usize = 16;

/// What the schema says about one field.
#[derive(Debug, Clone)]
pub struct Field<'a> {
    pub schema: &'a Value,
    /// JSON types the field may have, `null` excluded.
    pub types: Vec<&'a str>,
    /// Present and non-null in every valid payload (required at every level of the path).
    pub always_present: bool,
    pub format: Option<&'a str>,
    pub classification: Option<&'a str>,
}

/// Why a path does not resolve.
#[derive(Debug, Clone, PartialEq)]
pub struct Unresolved {
    /// How many segments resolved before the failure.
    pub depth: usize,
    /// The fields that exist at that level.
    pub available: Vec<String>,
}

/// Follows `$ref` to local definitions.
pub(crate) fn deref<'a>(root: &'a Value, mut node: &'a Value) -> &'a Value {
    for _ in 0..MAX_REF_HOPS {
        match node.get("$ref").and_then(Value::as_str).and_then(|r| r.strip_prefix('#')) {
            Some(target) => match root.pointer(target) {
                Some(next) => node = next,
                None => return node,
            },
            None => return node,
        }
    }
    node
}

/// The JSON types a schema allows, `null` included.
fn types(node: &Value) -> Vec<&str> {
    match node.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ => {
            let from_values = |values: &[Value]| {
                let mut ts: Vec<&str> = values.iter().map(json_type).collect();
                ts.sort_unstable();
                ts.dedup();
                ts
            };
            if let Some(values) = node.get("enum").and_then(Value::as_array) {
                from_values(values)
            } else if let Some(value) = node.get("const") {
                vec![json_type(value)]
            } else if node.get("properties").is_some() {
                vec!["object"]
            } else {
                Vec::new()
            }
        }
    }
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

pub(crate) fn properties(node: &Value) -> Option<&Map<String, Value>> {
    node.get("properties").and_then(Value::as_object)
}

fn is_required(node: &Value, name: &str) -> bool {
    node.get("required").and_then(Value::as_array).is_some_and(|r| r.iter().any(|v| v.as_str() == Some(name)))
}

pub(crate) fn class_of(node: &Value) -> Option<&str> {
    node.get("classification").and_then(Value::as_str)
}

/// Every classified field inside the field at `path` (itself excluded), by
/// its path relative to it (`[]` for array items), with its classification
/// (its own, or the nearest classified object's around it).
pub fn classified_within<'a>(root: &'a Value, path: &FieldPath) -> Vec<(Vec<String>, &'a str)> {
    let Ok(field) = resolve(root, path) else { return Vec::new() };
    let mut out = Vec::new();
    let mut seen: std::collections::HashSet<*const Value> = std::collections::HashSet::new();
    // (node, relative path, inherited classification)
    let mut stack: Vec<(&Value, Vec<String>, Option<&str>)> = vec![(field.schema, Vec::new(), field.classification)];
    while let Some((node, rel, inherited)) = stack.pop() {
        let node = deref(root, node);
        if !seen.insert(node as *const Value) || rel.len() > 32 {
            continue;
        }
        let inherited = inherited.filter(|c| *c != crate::policy::NONE);
        if let Some(props) = properties(node) {
            for (name, child) in props {
                let class = class_of(child).or_else(|| class_of(deref(root, child))).or(inherited);
                let mut here = rel.clone();
                here.push(name.clone());
                if let Some(c) = class.filter(|c| *c != crate::policy::NONE) {
                    out.push((here.clone(), c));
                }
                stack.push((child, here, class));
            }
        }
        if let Some(items) = node.get("items") {
            let mut here = rel.clone();
            here.push("[]".to_owned());
            let class = class_of(items).or(inherited);
            stack.push((items, here, class));
        }
    }
    out
}

/// Resolves `path` in the payload schema `root`.
pub fn resolve<'a>(root: &'a Value, path: &FieldPath) -> Result<Field<'a>, Unresolved> {
    let mut node = deref(root, root);
    let mut node_class = class_of(root).or_else(|| class_of(node));
    let mut always_present = true;
    // A field inside a classified object is as personal as the object.
    let mut inherited: Option<&str> = None;
    for (depth, segment) in path.0.iter().enumerate() {
        if let Some(c) = node_class.filter(|c| *c != crate::policy::NONE) {
            inherited = Some(c);
        }
        let props = properties(node);
        let Some(next) = props.and_then(|p| p.get(segment)) else {
            return Err(Unresolved { depth, available: props.map(|p| p.keys().cloned().collect()).unwrap_or_default() });
        };
        always_present &= is_required(node, segment);
        // A classification beside a `$ref` is the field's own.
        node_class = class_of(next).or_else(|| class_of(deref(root, next)));
        node = deref(root, next);
    }
    let all = types(node);
    always_present &= !all.contains(&"null");
    Ok(Field {
        schema: node,
        types: all.into_iter().filter(|t| *t != "null").collect(),
        always_present,
        format: node.get("format").and_then(Value::as_str),
        // Its own classification (an explicit `none` included), or else its object's.
        classification: node_class.or(inherited),
    })
}

/// Whether every value the field may hold fits a column of type `column`.
pub fn fits(field: &Field<'_>, column: &DataType) -> bool {
    !field.types.is_empty()
        && field.types.iter().all(|t| match *t {
            "string" => match column {
                DataType::String => true,
                DataType::Date => field.format == Some("date"),
                DataType::Timestamp => field.format == Some("date-time"),
                _ => false,
            },
            "integer" => matches!(column, DataType::Int32 | DataType::Int64 | DataType::Float64 | DataType::Decimal { .. }),
            "number" => matches!(column, DataType::Float64 | DataType::Decimal { .. }),
            "boolean" => matches!(column, DataType::Boolean),
            "object" => matches!(column, DataType::Struct(_)),
            "array" => matches!(column, DataType::List(_)),
            _ => false,
        })
}

/// One property of a payload schema, found by [`walk`].
#[derive(Debug)]
pub struct Property<'a> {
    /// Dotted path, with `[]` for array items, e.g. `lines[].sku`.
    pub path: String,
    /// JSON pointer of the property inside the payload schema.
    pub pointer: String,
    pub name: &'a str,
    pub schema: &'a Value,
}

/// Every property of the schema at any depth (through objects and array
/// items). Each schema node is expanded once, so `$ref` cycles and shared
/// definitions cannot make the walk grow beyond the size of the schema: a
/// definition used in two places is reported at its first place.
pub fn walk(root: &Value) -> Vec<Property<'_>> {
    let mut out = Vec::new();
    let mut expanded: std::collections::HashSet<*const Value> = std::collections::HashSet::new();
    // (node, dotted prefix, pointer prefix)
    let mut stack: Vec<(&Value, String, String)> = vec![(root, String::new(), String::new())];
    while let Some((node, prefix, pointer)) = stack.pop() {
        let node = deref(root, node);
        if !expanded.insert(node as *const Value) {
            continue;
        }
        if let Some(props) = properties(node) {
            for (name, schema) in props.iter().rev() {
                let path = if prefix.is_empty() { name.clone() } else { format!("{prefix}.{name}") };
                let ptr = format!("{pointer}/properties/{}", crate::source::escape(name));
                out.push(Property { path: path.clone(), pointer: ptr.clone(), name, schema });
                stack.push((schema, path, ptr));
            }
        }
        if let Some(items) = node.get("items") {
            stack.push((items, format!("{prefix}[]"), format!("{pointer}/items")));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn path(s: &str) -> FieldPath {
        FieldPath::parse(s).unwrap()
    }

    #[test]
    fn resolves_nested_fields_and_their_presence() {
        let schema = json!({"type": "object", "required": ["customer"], "properties": {
            "customer": {"type": "object", "required": ["id"], "properties": {
                "id": {"type": "string"}, "email": {"type": ["string", "null"], "classification": "pii.email"}}}}});
        let id = resolve(&schema, &path("customer.id")).unwrap();
        assert!(id.always_present);
        let email = resolve(&schema, &path("customer.email")).unwrap();
        assert!(!email.always_present);
        assert_eq!(email.types, ["string"]);
        assert_eq!(email.classification, Some("pii.email"));
        let missing = resolve(&schema, &path("customer.mail")).unwrap_err();
        assert_eq!(missing.depth, 1);
        assert!(missing.available.contains(&"email".to_owned()));
    }

    #[test]
    fn follows_refs_and_stops_on_cycles() {
        let schema = json!({"$defs": {"a": {"$ref": "#/$defs/a"}, "money": {"type": "number"}},
            "type": "object", "properties": {"x": {"$ref": "#/$defs/a"}, "total": {"$ref": "#/$defs/money"}}});
        assert_eq!(resolve(&schema, &path("total")).unwrap().types, ["number"]);
        assert!(resolve(&schema, &path("x")).unwrap().types.is_empty());
        let all = walk(&schema);
        assert_eq!(all.len(), 2);
    }

    #[test]
    fn self_referencing_schemas_are_walked_once() {
        // Ten properties that each refer back to the root: without a bound this
        // branches exponentially.
        let props: Map<String, Value> = (0..10).map(|i| (format!("p{i}"), json!({"$ref": "#"}))).collect();
        let schema = json!({"type": "object", "properties": props});
        let started = std::time::Instant::now();
        assert_eq!(walk(&schema).len(), 10);
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
    }

    #[test]
    fn type_compatibility() {
        let s = json!({"type": "string", "format": "date-time"});
        let f = Field { schema: &s, types: vec!["string"], always_present: true, format: Some("date-time"), classification: None };
        assert!(fits(&f, &DataType::Timestamp));
        assert!(!fits(&f, &DataType::Int64));
    }
}
