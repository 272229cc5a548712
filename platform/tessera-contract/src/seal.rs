//! Which values of an event are sealed, and which table columns hold them.
//!
//! Personal values are sealed per data subject when an event is appended
//! (the store does it, with `tessera-seal`): every classified payload field
//! is replaced by a token under its subject's key. This module says, from
//! the contract alone, *which* fields those are, at any schema version, and
//! which table columns therefore hold tokens.
//!
//! - The **unit of sealing** is the outermost classified node of the payload
//!   schema (its own classification, or the nearest classified object's
//!   around it) that has no descendant declared `classification: none`; a
//!   classified object with such a descendant is sealed field by field, so
//!   that the field declared not personal stays readable (a shipment's
//!   destination country inside its sealed address).
//! - An event written at an **older schema version** is sealed at the paths
//!   the current classified fields had then, found by running the
//!   upcasters' moves backwards; a field an upcaster removes is sealed too
//!   (its classification is unknown: fail closed).
//! - A **sealed column** is a table column that is classified, or has a
//!   classified field or item: its cells are the JSON of the value with each
//!   sealed part as a token, stored as bytes; readers open the tokens and
//!   read the JSON as the column's type.

use serde_json::Value;

use crate::model::{Column, DataType, EventType, FieldPath, UpcastStep};
use crate::payload::{class_of, deref, properties};
use crate::policy::NONE;

/// One step of a path into a payload.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Step {
    /// The field of an object.
    Key(String),
    /// Every item of an array.
    Each,
}

/// A path to the values to seal, e.g. `lines[].email`.
pub type SealPath = Vec<Step>;

/// What to seal in a payload of one event type at one schema version.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SealPlan {
    /// Where the subject's identifier is at this version.
    pub subject: Option<FieldPath>,
    /// Every path to seal, outermost first.
    pub paths: Vec<SealPath>,
}

impl SealPlan {
    /// Whether payloads of this version hold anything to seal.
    pub fn seals_anything(&self) -> bool {
        !self.paths.is_empty()
    }

    /// The subject's identifier in `payload`: a string, or an integer as text.
    pub fn subject_of(&self, payload: &Value) -> Option<String> {
        match self.subject.as_ref()?.get(payload)? {
            Value::String(s) if !s.is_empty() => Some(s.clone()),
            Value::Number(n) if n.is_i64() || n.is_u64() => Some(n.to_string()),
            _ => None,
        }
    }

    /// Replaces every non-null value at the plan's paths with `seal(value)`.
    /// A path the payload does not have is skipped.
    pub fn apply<E>(&self, payload: &mut Value, seal: &mut dyn FnMut(&Value) -> Result<Value, E>) -> Result<(), E> {
        for path in &self.paths {
            visit(payload, path, &mut |v| {
                if !v.is_null() {
                    *v = seal(v)?;
                }
                Ok(())
            })?;
        }
        Ok(())
    }

    /// Calls `f` on every non-null value at the plan's paths (to open them).
    pub fn visit<E>(&self, payload: &mut Value, f: &mut dyn FnMut(&mut Value) -> Result<(), E>) -> Result<(), E> {
        for path in &self.paths {
            visit(payload, path, &mut |v| if v.is_null() { Ok(()) } else { f(v) })?;
        }
        Ok(())
    }
}

fn visit<E>(node: &mut Value, path: &[Step], f: &mut dyn FnMut(&mut Value) -> Result<(), E>) -> Result<(), E> {
    let Some((first, rest)) = path.split_first() else { return f(node) };
    match (first, node) {
        (Step::Key(k), Value::Object(o)) => match o.get_mut(k) {
            Some(child) => visit(child, rest, f),
            None => Ok(()),
        },
        (Step::Each, Value::Array(items)) => items.iter_mut().try_for_each(|item| visit(item, rest, f)),
        _ => Ok(()),
    }
}

/// The plan for payloads of `event` written at schema version `version`.
pub fn plan(event: &EventType, version: u32) -> SealPlan {
    let mut paths = current_paths(&event.schema);
    let mut subject = event.subject.clone();
    // Back through each upcaster, newest first, and its steps in reverse.
    let mut upcasters: Vec<_> = event.upcasters.iter().filter(|u| u.from >= version && u.from < event.version).collect();
    upcasters.sort_by_key(|u| std::cmp::Reverse(u.from));
    for upcaster in upcasters {
        for step in upcaster.steps.iter().rev() {
            match step {
                UpcastStep::Move { from, to } => {
                    let (from, to) = (keys(from), keys(to));
                    let mut added = Vec::new();
                    for p in &mut paths {
                        if p.starts_with(&to) {
                            let rest = p.split_off(to.len());
                            *p = from.iter().cloned().chain(rest).collect();
                        } else if to.starts_with(p) {
                            // A sealed object receives the moved value: seal it where it was.
                            added.push(from.clone());
                        }
                    }
                    paths.extend(added);
                    if let Some(s) = &subject
                        && let Some(rest) = s.0.strip_prefix(to_strings(&to).as_slice())
                    {
                        let from_segments: Vec<String> = to_strings(&from);
                        subject = Some(FieldPath(from_segments.into_iter().chain(rest.iter().cloned()).collect()));
                    }
                }
                // What an upcaster removes is unknown to the current schema: sealed, to be safe.
                UpcastStep::Remove { field } => paths.push(keys(field)),
                UpcastStep::Default { .. } | UpcastStep::Map { .. } | UpcastStep::Scale { .. } | UpcastStep::Cast { .. } => {}
            }
        }
    }
    // The subject itself is read before sealing; sealing it too (a
    // classified identifier) is fine. Outermost first, no path twice, and
    // none inside another.
    paths.sort();
    paths.dedup();
    let mut out: Vec<SealPath> = Vec::with_capacity(paths.len());
    for p in paths {
        if !out.iter().any(|o| p.starts_with(o)) {
            out.push(p);
        }
    }
    SealPlan { subject, paths: out }
}

fn keys(path: &FieldPath) -> SealPath {
    path.0.iter().map(|s| Step::Key(s.clone())).collect()
}

fn to_strings(path: &[Step]) -> Vec<String> {
    path.iter()
        .map(|s| match s {
            Step::Key(k) => k.clone(),
            Step::Each => "[]".to_owned(),
        })
        .collect()
}

/// The paths to seal in a payload at the current schema `root`.
pub fn current_paths(root: &Value) -> Vec<SealPath> {
    let mut out = Vec::new();
    walk(root, root, Vec::new(), class_of(root), &mut out, 0);
    out
}

const MAX_DEPTH: usize = 32;

fn walk<'a>(root: &'a Value, node: &'a Value, path: SealPath, class: Option<&'a str>, out: &mut Vec<SealPath>, depth: usize) {
    if depth > MAX_DEPTH {
        // A schema this deep (or a `$ref` cycle): seal the whole node rather than look further.
        if class.is_some_and(|c| c != NONE) {
            out.push(path);
        }
        return;
    }
    let node = deref(root, node);
    let classified = class.is_some_and(|c| c != NONE);
    if classified && !declares_none(root, node, 0) {
        out.push(path);
        return;
    }
    // Below a classified node, fields inherit its classification; below `none`, nothing does.
    let inherited = class.filter(|c| *c != NONE);
    if let Some(props) = properties(node) {
        for (name, child) in props {
            let own = class_of(child).or_else(|| class_of(deref(root, child)));
            let mut here = path.clone();
            here.push(Step::Key(name.clone()));
            walk(root, child, here, own.or(inherited), out, depth + 1);
        }
    }
    if let Some(items) = node.get("items") {
        let own = class_of(items).or_else(|| class_of(deref(root, items)));
        let mut here = path;
        here.push(Step::Each);
        walk(root, items, here, own.or(inherited), out, depth + 1);
    }
}

/// Whether any field below `node` declares `classification: none`.
fn declares_none(root: &Value, node: &Value, depth: usize) -> bool {
    if depth > MAX_DEPTH {
        return false;
    }
    let node = deref(root, node);
    let children = properties(node).into_iter().flat_map(|p| p.values()).chain(node.get("items"));
    for child in children {
        if class_of(child).or_else(|| class_of(deref(root, child))) == Some(NONE) || declares_none(root, child, depth + 1) {
            return true;
        }
    }
    false
}

/// Whether a table column holds sealed values: it is classified, or one of
/// its fields or items is.
pub fn is_sealed(column: &Column) -> bool {
    column.classification.as_deref().is_some_and(|c| c != NONE)
        || match &column.data_type {
            DataType::Struct(fields) => fields.values().any(is_sealed),
            DataType::List(item) => is_sealed(item),
            _ => false,
        }
}

/// Where an upcaster step works on a sealed value as if it were clear: a
/// `map`, `scale` or `cast` of a sealed field (it would see a token), or any
/// step inside a field sealed as a whole. `(upcaster index, step index,
/// why)` for each.
pub fn upcaster_conflicts(event: &EventType) -> Vec<(usize, usize, String)> {
    let mut out = Vec::new();
    for (ui, upcaster) in event.upcasters.iter().enumerate() {
        // The sealed paths of the version this upcaster produces.
        let sealed = plan(event, upcaster.from + 1).paths;
        let inside = |field: &FieldPath| {
            let f = keys(field);
            sealed.iter().find(|p| f.starts_with(p)).map(|p| (to_strings(p).join("."), f.len() > p.len()))
        };
        for (si, step) in upcaster.steps.iter().enumerate() {
            let (field, transforms) = match step {
                UpcastStep::Map { field, .. } | UpcastStep::Scale { field, .. } | UpcastStep::Cast { field, .. } => (field, true),
                UpcastStep::Default { field, .. } | UpcastStep::Remove { field } => (field, false),
                UpcastStep::Move { to, .. } => (to, false),
            };
            match inside(field) {
                Some((sealed, true)) => out.push((
                    ui,
                    si,
                    format!(
                        "`{field}` is inside `{sealed}`, which is classified and stored sealed as a whole: an upcaster cannot reach into it"
                    ),
                )),
                Some((sealed, false)) if transforms => out.push((
                    ui,
                    si,
                    format!("`{sealed}` is classified and stored sealed: an upcaster cannot change its value, only move it"),
                )),
                _ => {}
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::model::Upcaster;

    fn path(s: &str) -> SealPath {
        s.split('.').map(|k| if k == "[]" { Step::Each } else { Step::Key(k.to_owned()) }).collect()
    }

    fn event(schema: Value, subject: &str, upcasters: Vec<Upcaster>) -> EventType {
        let version = upcasters.iter().map(|u| u.from + 1).max().unwrap_or(1);
        EventType { description: None, version, subject: FieldPath::parse(subject), schema, upcasters }
    }

    #[test]
    fn the_outermost_classified_node_is_sealed_unless_it_declares_a_field_not_personal() {
        let schema = json!({"type": "object", "properties": {
            "customer_id": {"type": "string"},
            "email": {"type": "string", "classification": "pii.email"},
            "flag": {"type": "boolean", "classification": "none"},
            "home": {"type": "object", "classification": "pii.address", "properties": {
                "street": {"type": "string"}, "city": {"type": "string"}}},
            "recipient": {"type": "object", "properties": {
                "name": {"type": "string", "classification": "pii.name"},
                "address": {"type": "object", "classification": "pii.address", "properties": {
                    "street": {"type": "string", "classification": "pii.address"},
                    "city": {"type": "string"},
                    "country": {"type": "string", "classification": "none"}}}}},
            "emails": {"type": "array", "items": {"type": "string", "classification": "pii.email"}},
            "lines": {"type": "array", "items": {"type": "object", "properties": {
                "sku": {"type": "string"}, "gift_note": {"type": "string", "classification": "pii.free_text"}}}}}});
        let mut paths = current_paths(&schema);
        paths.sort();
        let mut expected: Vec<SealPath> =
            ["email", "emails.[]", "home", "lines.[].gift_note", "recipient.address.city", "recipient.address.street", "recipient.name"]
                .into_iter()
                .map(path)
                .collect();
        expected.sort();
        assert_eq!(paths, expected);

        let plan = plan(&event(schema, "customer_id", vec![]), 1);
        let mut payload = json!({"customer_id": "C1", "email": "a@b.c", "flag": true, "home": {"street": "1 Main St", "city": "Oslo"},
            "recipient": {"name": "Ada", "address": {"street": "2 High St", "city": "Leeds", "country": "GB"}},
            "emails": ["x@y.z", null], "lines": [{"sku": "S1", "gift_note": "hi"}, {"sku": "S2"}]});
        assert_eq!(plan.subject_of(&payload).as_deref(), Some("C1"));
        plan.apply(&mut payload, &mut |v| Ok::<_, ()>(json!(format!("sealed:{v}")))).unwrap();
        assert_eq!(
            payload,
            json!({"customer_id": "C1", "email": "sealed:\"a@b.c\"", "flag": true, "home": "sealed:{\"street\":\"1 Main St\",\"city\":\"Oslo\"}",
                "recipient": {"name": "sealed:\"Ada\"", "address": {"street": "sealed:\"2 High St\"", "city": "sealed:\"Leeds\"", "country": "GB"}},
                "emails": ["sealed:\"x@y.z\"", null], "lines": [{"sku": "S1", "gift_note": "sealed:\"hi\""}, {"sku": "S2"}]})
        );
    }

    #[test]
    fn older_versions_are_sealed_where_their_fields_were() {
        let schema = json!({"type": "object", "properties": {
            "customer": {"type": "object", "properties": {"id": {"type": "string"}, "email": {"type": "string", "classification": "pii.email"}}},
            "full_name": {"type": "string", "classification": "pii.name"}}});
        let upcasters = vec![
            Upcaster {
                from: 1,
                description: None,
                steps: vec![
                    UpcastStep::Move { from: FieldPath::parse("name").unwrap(), to: FieldPath::parse("full_name").unwrap() },
                    UpcastStep::Remove { field: FieldPath::parse("nickname").unwrap() },
                ],
            },
            Upcaster {
                from: 2,
                description: None,
                steps: vec![
                    UpcastStep::Move { from: FieldPath::parse("customer_id").unwrap(), to: FieldPath::parse("customer.id").unwrap() },
                    UpcastStep::Move { from: FieldPath::parse("customer_email").unwrap(), to: FieldPath::parse("customer.email").unwrap() },
                ],
            },
        ];
        let e = event(schema, "customer.id", upcasters);
        let v3 = plan(&e, 3);
        assert_eq!(v3.paths, vec![path("customer.email"), path("full_name")]);
        let v2 = plan(&e, 2);
        assert_eq!(v2.subject, FieldPath::parse("customer_id"));
        assert_eq!(v2.paths, vec![path("customer_email"), path("full_name")]);
        let v1 = plan(&e, 1);
        assert_eq!(v1.paths, vec![path("customer_email"), path("name"), path("nickname")]);
        // Sealed at its version, then upcast, the payload has its tokens where the current schema says.
        let mut old = json!({"customer_id": "C9", "customer_email": "a@b.c", "name": "Ada", "nickname": "A"});
        assert_eq!(v1.subject_of(&old).as_deref(), Some("C9"));
        v1.apply(&mut old, &mut |v| Ok::<_, ()>(json!(format!("sealed:{v}")))).unwrap();
        let up = crate::upcast(&e, 1, old).unwrap();
        assert_eq!(up, json!({"customer": {"id": "C9", "email": "sealed:\"a@b.c\""}, "full_name": "sealed:\"Ada\""}));
        assert!(upcaster_conflicts(&e).is_empty());
    }

    #[test]
    fn upcasters_may_move_sealed_fields_but_not_change_them() {
        let schema = json!({"type": "object", "properties": {
            "card": {"type": "string", "classification": "pii.payment_card"},
            "home": {"type": "object", "classification": "pii.address", "properties": {"street": {"type": "string"}}}}});
        let upcasters = vec![Upcaster {
            from: 1,
            description: None,
            steps: vec![
                UpcastStep::Cast { field: FieldPath::parse("card").unwrap(), to: crate::model::CastType::String },
                UpcastStep::Default { field: FieldPath::parse("home.street").unwrap(), value: json!("?") },
            ],
        }];
        let conflicts = upcaster_conflicts(&event(schema, "card", upcasters));
        assert_eq!(conflicts.len(), 2, "{conflicts:?}");
        assert!(conflicts[0].2.contains("cannot change its value"));
        assert!(conflicts[1].2.contains("cannot reach into it"));
    }
}
