//! Structural validation: the document against `contracts/data-contract.schema.json`.
//!
//! The JSON Schema is the single definition of the file's shape (editors use
//! it for completion too). This module only translates the schema
//! validator's findings into diagnostics a person can act on: the key at
//! fault, the nearest valid key for a typo, the expected shape in words.

use std::sync::OnceLock;

use jsonschema::error::{TypeKind, ValidationErrorKind};
use jsonschema::{JsonType, ValidationError, Validator};
use serde_json::Value;

use crate::diagnostic::{Code, Diagnostic, nearest, suggestion};
use crate::source::child;

/// The contract format's JSON Schema, as shipped in `contracts/`.
pub const CONTRACT_SCHEMA: &str = include_str!("../../../contracts/data-contract.schema.json");

fn schema() -> &'static (Value, Validator) {
    static SCHEMA: OnceLock<(Value, Validator)> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        #[allow(clippy::expect_used)] // Both are checked by this crate's tests.
        let value: Value = serde_json::from_str(CONTRACT_SCHEMA).expect("the contract schema is JSON");
        #[allow(clippy::expect_used)]
        let validator = jsonschema::draft202012::new(&value).expect("the contract schema is a valid JSON Schema");
        (value, validator)
    })
}

/// Every structural error of the document.
pub fn check(document: &Value) -> Vec<Diagnostic> {
    let (root, validator) = schema();
    let mut out: Vec<Diagnostic> = validator.iter_errors(document).flat_map(|e| translate(root, document, &e)).collect();
    out.sort_by(|a, b| a.pointer.cmp(&b.pointer));
    out.dedup_by(|a, b| a.pointer == b.pointer && a.message == b.message);
    out
}

fn translate(root: &Value, document: &Value, error: &ValidationError<'_>) -> Vec<Diagnostic> {
    let at = error.instance_path().as_str().to_owned();
    let keyword_schema = resolve(root, error.schema_path().as_str()).filter(|s| s.is_object());
    let parent_schema = resolve(root, parent(error.schema_path().as_str())).filter(|s| s.is_object());
    let instance = document.pointer(&at).unwrap_or(&Value::Null);
    let what = describe(&at);
    match error.kind() {
        ValidationErrorKind::AdditionalProperties { unexpected } => {
            let allowed: Vec<String> = parent_schema
                .and_then(|s| s.get("properties"))
                .and_then(Value::as_object)
                .map(|p| p.keys().cloned().collect())
                .unwrap_or_default();
            unexpected
                .iter()
                .map(|key| {
                    let help = match nearest(key, allowed.iter().map(String::as_str)) {
                        Some(near) => format!("did you mean `{near}`?"),
                        None if allowed.is_empty() => "remove it".to_owned(),
                        None => format!("remove it; {what} takes {}", list(&allowed)),
                    };
                    Diagnostic::error(Code::SchemaUnknownKey, child(&at, key), format!("unknown key `{key}` in {what}")).at_key().help(help)
                })
                .collect()
        }
        ValidationErrorKind::PropertyNames { error } => {
            let key = error.instance().as_str().unwrap_or_default().to_owned();
            let (kind, help) = if at.ends_with("/events") || at.ends_with("/from") {
                ("event type name", "event types are UpperCamelCase, e.g. OrderPlaced")
            } else {
                ("name", "names are lower_snake_case: a lowercase letter, then lowercase letters, digits or `_`, at most 63 characters")
            };
            vec![
                Diagnostic::error(Code::SchemaInvalidValue, child(&at, &key), format!("`{key}` is not a valid {kind}")).at_key().help(help),
            ]
        }
        ValidationErrorKind::Required { property } => {
            let key = property.as_str().unwrap_or_default();
            let help = parent_schema
                .and_then(|s| s.pointer(&format!("/properties/{key}/description")))
                .and_then(Value::as_str)
                .map(|d| format!("add `{key}:` ({})", as_help(d)))
                .unwrap_or_else(|| format!("add `{key}:`"));
            vec![
                Diagnostic::error(Code::SchemaMissingKey, at.clone(), format!("{what} is missing the required key `{key}`"))
                    .at_key()
                    .help(help),
            ]
        }
        ValidationErrorKind::Type { kind } => {
            let expected = match kind {
                TypeKind::Single(t) => type_name(*t).to_owned(),
                TypeKind::Multiple(ts) => ts.iter().map(type_name).collect::<Vec<_>>().join(" or "),
            };
            let mut d =
                Diagnostic::error(Code::SchemaWrongType, at.clone(), format!("{what} must be {expected}, found {}", value_kind(instance)));
            if expected == "a string" && instance.is_number() {
                d = d.help(format!("quote it: \"{instance}\" (YAML reads {instance} as a number)"));
            } else if let Some(desc) = keyword_schema.or(parent_schema).and_then(|s| s.get("description")).and_then(Value::as_str) {
                d = d.help(as_help(desc));
            }
            vec![d]
        }
        ValidationErrorKind::Enum { options } => {
            let options: Vec<String> = options.as_array().into_iter().flatten().filter_map(|o| o.as_str().map(str::to_owned)).collect();
            let given = instance.as_str().map(str::to_owned).unwrap_or_else(|| instance.to_string());
            vec![
                Diagnostic::error(Code::SchemaInvalidValue, at.clone(), format!("`{given}` is not a valid {what}"))
                    .help(suggestion(&given, options.iter().map(String::as_str))),
            ]
        }
        ValidationErrorKind::Pattern { .. } => {
            let given = instance.as_str().unwrap_or_default();
            let described = keyword_schema.or(parent_schema).and_then(|s| s.get("description")).and_then(Value::as_str);
            let is_type = at.ends_with("/type");
            let mut d = Diagnostic::error(
                Code::SchemaInvalidValue,
                at.clone(),
                if is_type { format!("unknown column type `{given}`") } else { format!("`{given}` is not a valid {what}") },
            );
            let type_names = ["string", "boolean", "int32", "int64", "float64", "date", "timestamp", "struct", "list", "decimal(p,s)"];
            d = match (is_type, nearest(given, type_names)) {
                (true, Some(near)) => d.help(format!("did you mean `{near}`?")),
                _ => match described {
                    Some(desc) => d.help(as_help(desc)),
                    None => d,
                },
            };
            vec![d]
        }
        ValidationErrorKind::OneOfNotValid { .. } if at.contains("/set/") || at.contains("/delete/") => {
            vec![
                Diagnostic::error(Code::SchemaInvalidValue, at.clone(), format!("`{}` is not a value source", compact(instance)))
                    .help("write payload.<path>, event.<field>, metadata.<key>, or a literal as { value: ... }"),
            ]
        }
        ValidationErrorKind::MinProperties { .. } | ValidationErrorKind::MaxProperties { .. } => {
            let options: Vec<String> = keyword_schema
                .or(parent_schema)
                .and_then(|s| s.get("properties"))
                .and_then(Value::as_object)
                .map(|p| p.keys().cloned().collect())
                .unwrap_or_default();
            let given = instance.as_object().map(|o| o.len()).unwrap_or(0);
            let max_one = parent_schema.and_then(|s| s.get("maxProperties")).and_then(Value::as_u64) == Some(1);
            let message = if max_one && given > 1 {
                format!("{what} must name exactly one of {}, found {given}", list(&options))
            } else if max_one || !options.is_empty() {
                format!("{what} must name one of {}", list(&options))
            } else {
                format!("{what} must not be empty")
            };
            let mut d = Diagnostic::error(Code::SchemaInvalidValue, at.clone(), message);
            if max_one && given > 1 {
                d = d.help("give each its own list item");
            }
            vec![d]
        }
        _ => {
            let message = error.to_string();
            vec![Diagnostic::error(Code::SchemaInvalidValue, at.clone(), format!("invalid {what}: {message}"))]
        }
    }
}

/// A schema description as a help line: lowercase start, no trailing period.
fn as_help(description: &str) -> String {
    let d = description.trim().trim_end_matches('.');
    let mut chars = d.chars();
    match chars.next() {
        Some(first) if !chars.clone().next().is_some_and(char::is_uppercase) => first.to_lowercase().chain(chars).collect(),
        _ => d.to_owned(),
    }
}

/// Follows a keyword location through the schema, `$ref`s included.
fn resolve<'a>(root: &'a Value, location: &str) -> Option<&'a Value> {
    let mut node = root;
    for segment in location.split('/').skip(1) {
        let segment = segment.replace("~1", "/").replace("~0", "~");
        if segment == "$ref" {
            let target = node.get("$ref")?.as_str()?.strip_prefix('#')?;
            node = root.pointer(target)?;
            continue;
        }
        node = match node {
            Value::Object(map) => map.get(&segment)?,
            Value::Array(items) => items.get(segment.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(node)
}

fn parent(location: &str) -> &str {
    location.rfind('/').map(|i| &location[..i]).unwrap_or("")
}

/// A few words for the node at `pointer`, e.g. "column `total` of table `orders`".
pub(crate) fn describe(pointer: &str) -> String {
    let parts: Vec<String> = pointer.split('/').skip(1).map(|s| s.replace("~1", "/").replace("~0", "~")).collect();
    let p: Vec<&str> = parts.iter().map(String::as_str).collect();
    match p.as_slice() {
        [] => "the contract".into(),
        ["owner"] => "`owner`".into(),
        ["tables", t] => format!("table `{t}`"),
        ["tables", t, "columns", c] => format!("column `{c}` of table `{t}`"),
        ["tables", _, "columns", c, "type"] => format!("type of column `{c}`"),
        ["tables", t, "checks", i] => format!("check {} of table `{t}`", idx(i)),
        ["tables", t, mode, "from", e] => format!("rule for `{e}` in the {mode} of table `{t}`"),
        ["tables", t, _, "from", e, _, c] => {
            format!("source of column `{c}` for `{e}` in table `{t}`")
        }
        ["events", e] => format!("event `{e}`"),
        ["events", e, "upcasters", i] => format!("upcaster {} of event `{e}`", idx(i)),
        ["events", e, "upcasters", i, "steps", s] => {
            format!("step {} of upcaster {} of event `{e}`", idx(s), idx(i))
        }
        [.., last] => format!("`{last}`"),
    }
}

fn idx(i: &str) -> String {
    i.parse::<usize>().map(|n| format!("#{}", n + 1)).unwrap_or_else(|_| i.to_owned())
}

fn list(keys: &[String]) -> String {
    keys.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ")
}

fn type_name(t: JsonType) -> &'static str {
    match t {
        JsonType::Array => "a list",
        JsonType::Boolean => "true or false",
        JsonType::Integer => "a whole number",
        JsonType::Null => "empty",
        JsonType::Number => "a number",
        JsonType::Object => "a mapping",
        JsonType::String => "a string",
    }
}

fn value_kind(v: &Value) -> String {
    match v {
        Value::Null => "nothing".into(),
        Value::Bool(b) => format!("`{b}`"),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) => format!("the string `{}`", truncate(s)),
        Value::Array(_) => "a list".into(),
        Value::Object(_) => "a mapping".into(),
    }
}

fn compact(v: &Value) -> String {
    match v {
        Value::String(s) => truncate(s),
        other => truncate(&other.to_string()),
    }
}

fn truncate(s: &str) -> String {
    if s.chars().count() > 40 { format!("{}…", s.chars().take(40).collect::<String>()) } else { s.to_owned() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_schema_compiles() {
        let _ = schema();
    }

    #[test]
    fn unknown_keys_get_the_nearest_valid_one() {
        let doc = json!({"domain": "sales", "name": "orders", "version": "1.0.0", "title": "T",
            "owner": {"team": "t", "contact": "c"},
            "tables": {"t": {"colums": {}, "columns": {"a": {"type": "string"}}, "sql": "select 1 as a"}}});
        let errors = check(&doc);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].pointer, "/tables/t/colums");
        assert_eq!(errors[0].help.as_deref(), Some("did you mean `columns`?"));
    }

    #[test]
    fn typos_in_types_get_a_suggestion() {
        let doc = json!({"domain": "sales", "name": "orders", "version": "1.0.0", "title": "T",
            "owner": {"team": "t", "contact": "c"},
            "tables": {"t": {"columns": {"a": {"type": "strng"}}, "sql": "select 1 as a"}}});
        let errors = check(&doc);
        assert_eq!(errors[0].message, "unknown column type `strng`");
        assert_eq!(errors[0].help.as_deref(), Some("did you mean `string`?"));
    }
}
