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
//!   under the event's subject (its classification is unknown: fail
//!   closed), or, in an event without one, not kept.
//! - A **subject** is the event's, or the one the nearest property around a
//!   field names (`subject:` on the property: an event about two persons).
//!   A classified object with such a property inside is sealed property by
//!   property, and the fields its schema does not list under its own
//!   subject ([`Step::Rest`]).
//! - A **sealed column** is a table column that is classified, or has a
//!   classified field or item: its cells are the JSON of the value with each
//!   sealed part as a token, stored as bytes; readers open the tokens and
//!   read the JSON as the column's type.

use std::collections::{HashMap, HashSet};

use serde_json::Value;

use crate::model::{Column, Contract, DataType, EventType, FieldPath, Projection, Source, UpcastStep};
use crate::payload::{class_of, deref, properties};
use crate::policy::NONE;

/// One step of a path into a payload.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Step {
    /// The field of an object.
    Key(String),
    /// Every item of an array.
    Each,
    /// Every field of an object that is not one of these: the fields a
    /// classified object's schema does not list, when its listed fields are
    /// sealed one by one (JSON Schema lets a payload carry more).
    Rest(Vec<String>),
}

/// A path to the values to seal, e.g. `lines[].email`.
pub type SealPath = Vec<Step>;

/// What to seal in a payload of one event type at one schema version.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SealPlan {
    /// Where each data subject's identifier is at this version: the
    /// event's `subject` first (if it names one), then those that fields
    /// declare for themselves (an event about two persons).
    pub subjects: Vec<FieldPath>,
    /// Every path to seal, outermost first, with the index in `subjects`
    /// of the subject whose key seals it (`None`: the contract names no
    /// subject for it, which lint refuses).
    pub paths: Vec<(SealPath, Option<usize>)>,
    /// Fields an upcaster removes, in an event that names no subject of
    /// its own to seal them under: their values are not kept (reading
    /// drops them anyway), since whose they are is not known.
    pub drop: Vec<SealPath>,
}

impl SealPlan {
    /// Whether payloads of this version hold anything to seal.
    pub fn seals_anything(&self) -> bool {
        !self.paths.is_empty()
    }

    /// The identifier of subject `index` in `payload`: a string, or an integer as text.
    pub fn subject_id(&self, index: usize, payload: &Value) -> Option<String> {
        match self.subjects.get(index)?.get(payload)? {
            Value::String(s) if !s.is_empty() => Some(s.clone()),
            Value::Number(n) if n.is_i64() || n.is_u64() => Some(n.to_string()),
            _ => None,
        }
    }

    /// The subjects (by index) whose values `payload` holds: a non-null
    /// value at one of their paths. Sorted, each once.
    pub fn subjects_holding(&self, payload: &Value) -> Vec<Option<usize>> {
        let mut out = Vec::new();
        self.each_value(payload, &mut |subject, _| {
            if !out.contains(&subject) {
                out.push(subject);
            }
        });
        out.sort();
        out
    }

    /// The identifier of each subject whose values `payload` holds, by the
    /// subject's index (`None` for a subject it holds no values of); or the
    /// first subject it holds values of but has no identifier for (`None`:
    /// values of no subject).
    pub fn subject_ids(&self, payload: &Value) -> Result<Vec<Option<String>>, Option<usize>> {
        let mut ids = vec![None; self.subjects.len()];
        for needed in self.subjects_holding(payload) {
            let index = needed.ok_or(None)?;
            ids[index] = Some(self.subject_id(index, payload).ok_or(Some(index))?);
        }
        Ok(ids)
    }

    /// Calls `f` on every non-null value at the plan's paths, with the
    /// index of its subject (to read them).
    pub fn each_value(&self, payload: &Value, f: &mut dyn FnMut(Option<usize>, &Value)) {
        for (path, subject) in &self.paths {
            visit_ref(payload, path, &mut |v| f(*subject, v));
        }
    }

    /// Replaces every non-null value at the plan's paths with
    /// `seal(subject index, value)`. A path the payload does not have is skipped.
    pub fn apply<E, F>(&self, payload: &mut Value, seal: &mut F) -> Result<(), E>
    where
        F: FnMut(Option<usize>, &Value) -> Result<Value, E>,
    {
        for (path, subject) in &self.paths {
            visit(payload, path, &mut |v| {
                if !v.is_null() {
                    *v = seal(*subject, v)?;
                }
                Ok(())
            })?;
        }
        Ok(())
    }

    /// Empties the fields the plan drops (see [`SealPlan::drop`]).
    pub fn drop_removed(&self, payload: &mut Value) {
        for path in &self.drop {
            visit(payload, path, &mut |v| {
                *v = Value::Null;
                Ok::<_, std::convert::Infallible>(())
            })
            .unwrap_or_else(|never| match never {});
        }
    }

    /// Calls `f` on every non-null value at the plan's paths (to open them).
    pub fn visit<E>(&self, payload: &mut Value, f: &mut dyn FnMut(&mut Value) -> Result<(), E>) -> Result<(), E> {
        for (path, _) in &self.paths {
            visit(payload, path, &mut |v| if v.is_null() { Ok(()) } else { f(v) })?;
        }
        Ok(())
    }
}

fn visit_ref(node: &Value, path: &[Step], f: &mut dyn FnMut(&Value)) {
    let Some((first, rest)) = path.split_first() else {
        if !node.is_null() {
            f(node);
        }
        return;
    };
    match (first, node) {
        (Step::Key(k), Value::Object(o)) => {
            if let Some(child) = o.get(k) {
                visit_ref(child, rest, f);
            }
        }
        (Step::Each, Value::Array(items)) => items.iter().for_each(|item| visit_ref(item, rest, f)),
        (Step::Rest(known), Value::Object(o)) => {
            o.iter().filter(|(k, _)| !known.contains(k)).for_each(|(_, child)| visit_ref(child, rest, f));
        }
        _ => {}
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
        (Step::Rest(known), Value::Object(o)) => {
            o.iter_mut().filter(|(k, _)| !known.contains(k)).try_for_each(|(_, child)| visit(child, rest, f))
        }
        _ => Ok(()),
    }
}

/// The plan for payloads of `event` written at schema version `version`,
/// sealing each classified node whole.
pub fn plan(event: &EventType, version: u32) -> SealPlan {
    plan_reading(event, version, &[])
}

/// The plan for payloads of event type `event` of `contract` at schema
/// version `version`: a classified object that a table rule reads a field
/// of is sealed field by field, so that the rule finds that field's token.
pub fn plan_for(contract: &Contract, event: &str, version: u32) -> Option<SealPlan> {
    let spec = contract.events.get(event)?;
    Some(plan_reading(spec, version, &reads_of(contract, event)))
}

/// The payload paths the table rules of `contract` read from events of type `event`.
pub fn reads_of(contract: &Contract, event: &str) -> Vec<FieldPath> {
    let mut out = Vec::new();
    for spec in contract.tables.values() {
        let assignments: Vec<&crate::model::Assignments> = match &spec.projection {
            Projection::Upsert { rules, .. } => rules.iter().filter(|(e, _)| e.as_str() == event).map(|(_, r)| r.assignments()).collect(),
            Projection::Append { rules } => rules.iter().filter(|(e, _)| e.as_str() == event).map(|(_, a)| a).collect(),
            Projection::Sql { .. } => Vec::new(),
        };
        for a in assignments {
            out.extend(a.values().filter_map(|s| match s {
                Source::Payload(p) => Some(p.clone()),
                _ => None,
            }));
        }
    }
    out.sort();
    out.dedup();
    out
}

fn plan_reading(event: &EventType, version: u32, reads: &[FieldPath]) -> SealPlan {
    // The event's own subject is subject 0; each subject a field declares is added once.
    let mut subjects: Vec<FieldPath> = event.subject.iter().cloned().collect();
    let mut paths: Vec<(SealPath, Option<usize>)> = paths_reading(&event.schema, reads)
        .into_iter()
        .map(|(path, declared)| {
            let subject = match declared {
                Some(declared) => Some(subjects.iter().position(|s| *s == declared).unwrap_or_else(|| {
                    subjects.push(declared);
                    subjects.len() - 1
                })),
                None => event.subject.as_ref().map(|_| 0),
            };
            (path, subject)
        })
        .collect();
    let mut drop: Vec<SealPath> = Vec::new();
    // Back through each upcaster, newest first, and its steps in reverse.
    let mut upcasters: Vec<_> = event.upcasters.iter().filter(|u| u.from >= version && u.from < event.version).collect();
    upcasters.sort_by_key(|u| std::cmp::Reverse(u.from));
    for upcaster in upcasters {
        for step in upcaster.steps.iter().rev() {
            match step {
                UpcastStep::Move { from, to } => {
                    let (from, to) = (keys(from), keys(to));
                    let mut added = Vec::new();
                    for (p, subject) in &mut paths {
                        if p.starts_with(&to) {
                            let rest = p.split_off(to.len());
                            *p = from.iter().cloned().chain(rest).collect();
                        } else if to.starts_with(p) {
                            // A sealed object receives the moved value: seal it where it was.
                            added.push((from.clone(), *subject));
                        }
                    }
                    paths.extend(added);
                    for p in &mut drop {
                        if p.starts_with(&to) {
                            let rest = p.split_off(to.len());
                            *p = from.iter().cloned().chain(rest).collect();
                        }
                    }
                    let to = to_strings(&to);
                    for s in &mut subjects {
                        if let Some(rest) = s.0.strip_prefix(to.as_slice()) {
                            *s = FieldPath(to_strings(&from).into_iter().chain(rest.iter().cloned()).collect());
                        }
                    }
                }
                // What an upcaster removes is unknown to the current schema:
                // sealed, to be safe, under the event's subject; without one,
                // whose it is is unknown: not kept.
                UpcastStep::Remove { field } => match event.subject {
                    Some(_) => paths.push((keys(field), Some(0))),
                    None => drop.push(keys(field)),
                },
                UpcastStep::Default { .. } | UpcastStep::Map { .. } | UpcastStep::Scale { .. } | UpcastStep::Cast { .. } => {}
            }
        }
    }
    // The subject itself is read before sealing; sealing it too (a
    // classified identifier) is fine. Outermost first, no path twice, and
    // none inside another.
    paths.sort();
    let mut out: Vec<(SealPath, Option<usize>)> = Vec::with_capacity(paths.len());
    for (p, subject) in paths {
        if !out.iter().any(|(o, _)| p.starts_with(o)) {
            out.push((p, subject));
        }
    }
    SealPlan { subjects, paths: out, drop }
}

fn keys(path: &FieldPath) -> SealPath {
    path.0.iter().map(|s| Step::Key(s.clone())).collect()
}

/// A path as contracts write it: `lines[].email`, `home.*` for the fields
/// a schema does not list.
pub fn path_text(path: &[Step]) -> String {
    to_strings(path).join(".").replace(".[]", "[]")
}

fn to_strings(path: &[Step]) -> Vec<String> {
    path.iter()
        .map(|s| match s {
            Step::Key(k) => k.clone(),
            Step::Each => "[]".to_owned(),
            Step::Rest(_) => "*".to_owned(),
        })
        .collect()
}

/// The paths to seal in a payload at the current schema `root`.
pub fn current_paths(root: &Value) -> Vec<SealPath> {
    paths_reading(root, &[]).into_iter().map(|(p, _)| p).collect()
}

/// [`current_paths`], descending into a classified object wherever one of
/// `reads` reads a field inside it; with the subject each path's field (or
/// the nearest field around it) declares, if any.
fn paths_reading(root: &Value, reads: &[FieldPath]) -> Vec<(SealPath, Option<FieldPath>)> {
    let mut out = Vec::new();
    let reads = reads.iter().map(keys).collect();
    let mut walker = Walker { root, split_below: HashMap::new(), ancestors: Vec::new(), budget: MAX_NODES, reads };
    walker.walk(root, Vec::new(), class_of(root), None, &mut out);
    out.into_iter().map(|(p, s)| (p, s.and_then(FieldPath::parse))).collect()
}

/// The subject a payload property declares for its personal values
/// (`subject: payer.customer_id`), on the property itself: a definition
/// shared through `$ref` cannot name one (it would be the same absolute
/// path at every place it is used; lint refuses it there).
pub fn subject_declared(node: &Value) -> Option<&str> {
    node.get("subject").and_then(Value::as_str)
}

/// Where the payload schema `root` names a `subject` that sealing would not
/// follow: anywhere but on a property (the root, array `items`, a `$defs`
/// entry, under `anyOf` and the like), or as something other than a path.
/// `(JSON pointer of the keyword, why)` for each.
pub fn misplaced_subjects(root: &Value) -> Vec<(String, &'static str)> {
    let mut out = Vec::new();
    let mut seen: HashSet<*const Value> = HashSet::new();
    // (node, its pointer, the last segment of the pointer's parent)
    let mut stack: Vec<(&Value, String, String)> = vec![(root, String::new(), String::new())];
    while let Some((node, pointer, parent)) = stack.pop() {
        if !seen.insert(node as *const Value) || seen.len() > MAX_NODES {
            continue;
        }
        match node {
            Value::Object(map) => {
                // A map of names to schemas: `subject` there is a name, not the keyword.
                let names = ["properties", "$defs", "definitions", "patternProperties", "dependentSchemas"]
                    .iter()
                    .any(|k| pointer.ends_with(&format!("/{k}")) || pointer == format!("/{k}"));
                if !names && let Some(subject) = map.get("subject") {
                    let at = format!("{pointer}/subject");
                    if !subject.is_string() {
                        out.push((at, "`subject` names a payload path, e.g. payer.customer_id: a string"));
                    } else if parent != "properties" {
                        out.push((
                            at,
                            "a subject can be named on a payload property only (not on the schema's root, array items, a `$defs` entry or \
                             under `anyOf` and the like): sealing would not follow it",
                        ));
                    }
                }
                let last = pointer.rsplit('/').next().unwrap_or_default().to_owned();
                for (k, v) in map {
                    let escaped = k.replace('~', "~0").replace('/', "~1");
                    stack.push((v, format!("{pointer}/{escaped}"), last.clone()));
                }
            }
            Value::Array(items) => {
                let last = pointer.rsplit('/').next().unwrap_or_default().to_owned();
                for (i, v) in items.iter().enumerate() {
                    stack.push((v, format!("{pointer}/{i}"), last.clone()));
                }
            }
            _ => {}
        }
    }
    out.sort();
    out
}

/// Schema nodes one walk may visit: a schema that shares definitions so
/// much that it would take longer is sealed whole where the walk stops.
const MAX_NODES: usize = 20_000;

struct Walker<'a> {
    root: &'a Value,
    /// Whether a field below a node declares `none` or its own subject, per node.
    split_below: HashMap<*const Value, bool>,
    /// The nodes on the way here: a `$ref` back to one of them is a cycle.
    ancestors: Vec<*const Value>,
    budget: usize,
    /// Paths table rules read: a classified object one of them reads into is
    /// sealed field by field.
    reads: Vec<SealPath>,
}

impl<'a> Walker<'a> {
    fn walk(
        &mut self,
        node: &'a Value,
        path: SealPath,
        class: Option<&'a str>,
        subject: Option<&'a str>,
        out: &mut Vec<(SealPath, Option<&'a str>)>,
    ) {
        let node = deref(self.root, node);
        let classified = class.is_some_and(|c| c != NONE);
        let key = node as *const Value;
        if self.budget == 0 || self.ancestors.contains(&key) {
            // A cycle, or more than the walk may visit: seal here, whole, if anything here is personal.
            if classified || self.classified_below(node) {
                out.push((path, subject));
            }
            return;
        }
        self.budget -= 1;
        let read_inside = self.reads.iter().any(|r| r.len() > path.len() && r.starts_with(&path));
        if classified && !read_inside && !self.splits(node) {
            out.push((path, subject));
            return;
        }
        // Below a classified node, fields inherit its classification; below `none`, nothing does.
        let inherited = class.filter(|c| *c != NONE);
        self.ancestors.push(key);
        if let Some(props) = properties(node) {
            for (name, child) in props {
                let own = class_of(child).or_else(|| class_of(deref(self.root, child)));
                let mut here = path.clone();
                here.push(Step::Key(name.clone()));
                let subject = subject_declared(child).or(subject);
                self.walk(child, here, own.or(inherited), subject, out);
            }
        }
        // A classified object sealed field by field: whatever fields a
        // payload has beyond those its schema lists are sealed too.
        if classified
            && let Some(props) = properties(node)
            && node.get("additionalProperties") != Some(&Value::Bool(false))
        {
            let mut here = path.clone();
            here.push(Step::Rest(props.keys().cloned().collect()));
            out.push((here, subject));
        }
        if let Some(items) = node.get("items") {
            let own = class_of(items).or_else(|| class_of(deref(self.root, items)));
            let mut here = path;
            here.push(Step::Each);
            self.walk(items, here, own.or(inherited), subject, out);
        }
        self.ancestors.pop();
    }

    /// Whether any field below `node` declares `classification: none` or a
    /// subject of its own: the node is then sealed field by field (each
    /// node answered once).
    fn splits(&mut self, node: &'a Value) -> bool {
        let node = deref(self.root, node);
        let key = node as *const Value;
        if let Some(known) = self.split_below.get(&key) {
            return *known;
        }
        // Provisional answer while this node is being looked at (cycles).
        self.split_below.insert(key, false);
        let children: Vec<&'a Value> = properties(node).into_iter().flat_map(|p| p.values()).chain(node.get("items")).collect();
        let found = children.into_iter().any(|child| {
            class_of(child).or_else(|| class_of(deref(self.root, child))) == Some(NONE)
                || subject_declared(child).is_some()
                || self.splits(child)
        });
        self.split_below.insert(key, found);
        found
    }

    /// Whether any field below `node` is classified (for a node the walk
    /// will not enter).
    fn classified_below(&self, node: &Value) -> bool {
        let mut seen: HashSet<*const Value> = HashSet::new();
        let mut stack = vec![node];
        while let Some(n) = stack.pop() {
            let n = deref(self.root, n);
            if !seen.insert(n as *const Value) || seen.len() > MAX_NODES {
                continue;
            }
            for child in properties(n).into_iter().flat_map(|p| p.values()).chain(n.get("items")) {
                if class_of(child).or_else(|| class_of(deref(self.root, child))).is_some_and(|c| c != NONE) {
                    return true;
                }
                stack.push(child);
            }
        }
        false
    }
}

/// Keywords under which a classified field cannot be sealed: the value may
/// or may not follow that subschema, so which part is personal is unknown.
const UNSEALABLE: &[&str] = &[
    "anyOf",
    "oneOf",
    "allOf",
    "not",
    "if",
    "then",
    "else",
    "prefixItems",
    "additionalItems",
    "additionalProperties",
    "patternProperties",
    "unevaluatedProperties",
    "unevaluatedItems",
    "dependentSchemas",
    "contains",
    "propertyNames",
];

/// The JSON pointers (inside the payload schema) of classifications that
/// sealing cannot follow: under `anyOf`, `additionalProperties` and the
/// like, directly or through a `$ref`.
pub fn unsealable_classifications(root: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let mut seen: HashSet<*const Value> = HashSet::new();
    // (node, its pointer, under an unsealable keyword)
    let mut stack: Vec<(&Value, String, bool)> = vec![(root, String::new(), false)];
    while let Some((node, pointer, under)) = stack.pop() {
        if !seen.insert(node as *const Value) || seen.len() > MAX_NODES {
            continue;
        }
        match node {
            Value::Object(map) => {
                if under && map.get("classification").and_then(Value::as_str).is_some_and(|c| c != NONE) {
                    out.push(format!("{pointer}/classification"));
                }
                if under
                    && let Some(target) = map.get("$ref").and_then(Value::as_str).and_then(|r| r.strip_prefix('#'))
                    && let Some(next) = root.pointer(target)
                {
                    stack.push((next, format!("{pointer}/$ref"), true));
                }
                for (k, v) in map {
                    let escaped = k.replace('~', "~0").replace('/', "~1");
                    stack.push((v, format!("{pointer}/{escaped}"), under || UNSEALABLE.contains(&k.as_str())));
                }
            }
            Value::Array(items) => {
                for (i, v) in items.iter().enumerate() {
                    stack.push((v, format!("{pointer}/{i}"), under));
                }
            }
            _ => {}
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Table rules that cannot work with sealed values: a classified column
/// filled from event metadata (which is not sealed).
/// `(table, event type, column, why)` for each.
pub fn rule_conflicts(contract: &Contract) -> Vec<(String, String, String, String)> {
    let mut out = Vec::new();
    for (table, spec) in &contract.tables {
        let rules: Vec<(&str, &crate::model::Assignments)> = match &spec.projection {
            Projection::Upsert { rules, .. } => rules.iter().map(|(e, r)| (e.as_str(), r.assignments())).collect(),
            Projection::Append { rules } => rules.iter().map(|(e, a)| (e.as_str(), a)).collect(),
            Projection::Sql { .. } => Vec::new(),
        };
        for (event, assignments) in rules {
            for (column, source) in assignments {
                let why = match source {
                    Source::Metadata(key) if spec.columns.get(column).is_some_and(is_sealed) => Some(format!(
                        "column `{column}` is classified but `metadata.{key}` is not sealed (event metadata is stored as sent): \
                         put the value in the payload, with its classification"
                    )),
                    _ => None,
                };
                if let Some(why) = why {
                    out.push((table.to_string(), event.to_owned(), column.to_string(), why));
                }
            }
        }
    }
    out
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
        let sealed: Vec<SealPath> = plan(event, upcaster.from + 1).paths.into_iter().map(|(p, _)| p).collect();
        let inside = |field: &FieldPath| {
            let f = keys(field);
            sealed.iter().find(|p| f.starts_with(p)).map(|p| (path_text(p), f.len() > p.len()))
        };
        // And of the version it reads.
        let before: Vec<SealPath> = plan(event, upcaster.from).paths.into_iter().map(|(p, _)| p).collect();
        for (si, step) in upcaster.steps.iter().enumerate() {
            if let UpcastStep::Move { from, .. } = step {
                let f = keys(from);
                if let Some(p) = before.iter().find(|p| f.len() > p.len() && f.starts_with(p)) {
                    out.push((
                        ui,
                        si,
                        format!(
                            "`{from}` is inside `{}`, which is classified and stored sealed as a whole: an upcaster cannot reach into it",
                            path_text(p)
                        ),
                    ));
                    continue;
                }
            }
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

    fn paths_of(plan: &SealPlan) -> Vec<SealPath> {
        plan.paths.iter().map(|(p, _)| p.clone()).collect()
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
        let (mut paths, rest): (Vec<SealPath>, Vec<SealPath>) =
            current_paths(&schema).into_iter().partition(|p| !matches!(p.last(), Some(Step::Rest(_))));
        paths.sort();
        // The address is sealed field by field, and so is any field its schema does not list.
        let mut address = path("recipient.address");
        address.push(Step::Rest(vec!["street".into(), "city".into(), "country".into()]));
        assert_eq!(rest, vec![address]);
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
        assert_eq!(plan.subject_id(0, &payload).as_deref(), Some("C1"));
        plan.apply(&mut payload, &mut |_, v| Ok::<_, ()>(json!(format!("sealed:{v}")))).unwrap();
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
        assert_eq!(paths_of(&v3), vec![path("customer.email"), path("full_name")]);
        let v2 = plan(&e, 2);
        assert_eq!(v2.subjects, vec![FieldPath::parse("customer_id").unwrap()]);
        assert_eq!(paths_of(&v2), vec![path("customer_email"), path("full_name")]);
        let v1 = plan(&e, 1);
        assert_eq!(paths_of(&v1), vec![path("customer_email"), path("name"), path("nickname")]);
        // Sealed at its version, then upcast, the payload has its tokens where the current schema says.
        let mut old = json!({"customer_id": "C9", "customer_email": "a@b.c", "name": "Ada", "nickname": "A"});
        assert_eq!(v1.subject_id(0, &old).as_deref(), Some("C9"));
        v1.apply(&mut old, &mut |_, v| Ok::<_, ()>(json!(format!("sealed:{v}")))).unwrap();
        let up = crate::upcast(&e, 1, old).unwrap();
        assert_eq!(up, json!({"customer": {"id": "C9", "email": "sealed:\"a@b.c\""}, "full_name": "sealed:\"Ada\""}));
        assert!(upcaster_conflicts(&e).is_empty());
    }

    #[test]
    fn self_referencing_schemas_are_walked_in_bounded_time_and_fail_closed() {
        // Ten properties that each refer back to the root: without a bound the walk branches exponentially.
        let mut props: serde_json::Map<String, Value> = (0..10).map(|i| (format!("p{i}"), json!({"$ref": "#"}))).collect();
        props.insert("email".into(), json!({"type": "string", "classification": "pii.email"}));
        let schema = json!({"type": "object", "properties": props});
        let started = std::time::Instant::now();
        let paths = current_paths(&schema);
        assert!(started.elapsed() < std::time::Duration::from_secs(1), "{:?}", started.elapsed());
        assert!(paths.contains(&path("email")));
        // A cycle is sealed whole where it closes, since it holds a classified field.
        assert!(paths.contains(&path("p0")), "{paths:?}");
        // A shared definition is sealed at every place it is used.
        let shared = json!({"$defs": {"a": {"type": "object", "properties": {"street": {"type": "string", "classification": "pii.address"}}}},
            "type": "object", "properties": {"home": {"$ref": "#/$defs/a"}, "work": {"$ref": "#/$defs/a"}}});
        assert_eq!(current_paths(&shared), vec![path("home.street"), path("work.street")]);
    }

    #[test]
    fn a_classified_object_a_rule_reads_into_is_sealed_field_by_field() {
        let schema = json!({"type": "object", "properties": {"id": {"type": "string"},
            "home": {"type": "object", "classification": "pii.address", "properties": {"street": {"type": "string"}, "city": {"type": "string"}}}}});
        let e = event(schema, "id", vec![]);
        assert_eq!(paths_of(&plan(&e, 1)), vec![path("home")]);
        let reads = [FieldPath::parse("home.city").unwrap()];
        let mut rest = path("home");
        rest.push(Step::Rest(vec!["street".into(), "city".into()]));
        assert_eq!(paths_of(&plan_reading(&e, 1, &reads)), vec![path("home.city"), path("home.street"), rest]);
    }

    #[test]
    fn classifications_sealing_cannot_follow_are_found() {
        let schema = json!({"$defs": {"contact": {"type": "object", "properties": {"email": {"type": "string", "classification": "pii.email"}}}},
            "type": "object", "properties": {
                "contact": {"anyOf": [{"$ref": "#/$defs/contact"}, {"type": "null"}]},
                "extra": {"type": "object", "additionalProperties": {"type": "string", "classification": "pii.free_text"}},
                "fine": {"$ref": "#/$defs/contact"},
                "flag": {"oneOf": [{"type": "boolean", "classification": "none"}]}}});
        let found = unsealable_classifications(&schema);
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found.iter().any(|p| p.starts_with("/properties/contact/anyOf")), "{found:?}");
        assert!(found.iter().any(|p| p.starts_with("/properties/extra/additionalProperties")), "{found:?}");
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

    #[test]
    fn an_event_about_two_persons_seals_each_field_under_its_own_subject() {
        // A transfer: the payer's and the payee's personal fields, each under
        // its own subject; the note (no subject declared) under the event's.
        let schema = json!({"type": "object", "properties": {
            "sender": {"type": "string"},
            "note": {"type": "string", "classification": "pii.free_text"},
            "parties": {"type": "object", "classification": "pii.contact", "properties": {
                "payer": {"type": "object", "subject": "parties.payer.id", "properties": {
                    "id": {"type": "string"}, "email": {"type": "string"}}},
                "payee": {"$ref": "#/$defs/payee", "subject": "parties.payee.id"}}}},
            "$defs": {"payee": {"type": "object", "properties": {
                "id": {"type": "string"}, "email": {"type": "string", "classification": "pii.email"}}}}});
        let upcasters = vec![Upcaster {
            from: 1,
            description: None,
            steps: vec![UpcastStep::Move { from: FieldPath::parse("payee").unwrap(), to: FieldPath::parse("parties.payee").unwrap() }],
        }];
        let e = event(schema, "sender", upcasters);
        let now = plan(&e, 2);
        assert_eq!(
            now.subjects,
            vec![
                FieldPath::parse("sender").unwrap(),
                FieldPath::parse("parties.payer.id").unwrap(),
                FieldPath::parse("parties.payee.id").unwrap()
            ]
        );
        // The classified `parties` is split: each person's object is sealed whole, under its subject.
        let mut others = path("parties");
        others.push(Step::Rest(vec!["payer".into(), "payee".into()]));
        assert_eq!(
            now.paths,
            vec![(path("note"), Some(0)), (path("parties.payee"), Some(2)), (path("parties.payer"), Some(1)), (others, Some(0))]
        );
        let payload = json!({"sender": "S1", "note": "rent", "parties": {"payer": {"id": "C1", "email": "a@b.c"}, "payee": {"id": "C2"},
            "guarantor": {"name": "Eve"}}});
        assert_eq!(now.subjects_holding(&payload), vec![Some(0), Some(1), Some(2)]);
        assert_eq!(now.subject_id(2, &payload).as_deref(), Some("C2"));
        let mut sealed = payload.clone();
        now.apply(&mut sealed, &mut |s, v| Ok::<_, ()>(json!(format!("{}:{v}", s.unwrap())))).unwrap();
        assert!(sealed["parties"]["payer"].as_str().unwrap().starts_with("1:{"), "{sealed}");
        assert_eq!(sealed["parties"]["payee"], json!("2:{\"id\":\"C2\"}"));
        assert_eq!(sealed["note"], json!("0:\"rent\""));
        assert!(sealed["parties"]["guarantor"].as_str().unwrap().starts_with("0:{"), "a field the schema does not list: {sealed}");
        // At version 1 the payee was at the top: its subject is found there.
        let old = plan(&e, 1);
        assert_eq!(old.subjects[2], FieldPath::parse("payee.id").unwrap());
        assert!(old.paths.contains(&(path("payee"), Some(2))), "{:?}", old.paths);
        assert!(misplaced_subjects(&e.schema).is_empty(), "{:?}", misplaced_subjects(&e.schema));
        // Where sealing would not follow a subject, lint is told.
        let misplaced = json!({"type": "object", "subject": "id", "properties": {
            "subject": {"type": "string"},
            "lines": {"type": "array", "items": {"type": "object", "subject": "lines[].buyer"}},
            "payer": {"type": "object", "subject": 5},
            "either": {"anyOf": [{"type": "object", "subject": "id"}]}},
            "$defs": {"subject": {"type": "object", "subject": "x"}}});
        let found: Vec<String> = misplaced_subjects(&misplaced).into_iter().map(|(p, _)| p).collect();
        assert_eq!(
            found,
            [
                "/$defs/subject/subject",
                "/properties/either/anyOf/0/subject",
                "/properties/lines/items/subject",
                "/properties/payer/subject",
                "/subject"
            ]
        );
        // Without an event subject, a field without its own has none: lint refuses it.
        let mut bare = e.clone();
        bare.subject = None;
        assert_eq!(plan(&bare, 2).paths[0], (path("note"), None));
    }

    #[test]
    fn a_removed_field_of_an_event_without_a_subject_is_not_kept() {
        let schema = json!({"type": "object", "properties": {"id": {"type": "string"}}});
        let upcasters = vec![Upcaster {
            from: 1,
            description: None,
            steps: vec![
                UpcastStep::Remove { field: FieldPath::parse("contact.email").unwrap() },
                UpcastStep::Move { from: FieldPath::parse("ref").unwrap(), to: FieldPath::parse("id").unwrap() },
            ],
        }];
        let e = event(schema, "id", upcasters);
        // With the event's subject, it is sealed under it.
        assert_eq!(plan(&e, 1).paths, vec![(path("contact.email"), Some(0))]);
        let mut bare = e.clone();
        bare.subject = None;
        let old = plan(&bare, 1);
        assert!(old.paths.is_empty() && old.drop == vec![path("contact.email")], "{old:?}");
        let mut payload = json!({"ref": "R1", "contact": {"email": "a@b.c", "phone_type": "mobile"}});
        old.drop_removed(&mut payload);
        assert_eq!(payload, json!({"ref": "R1", "contact": {"email": null, "phone_type": "mobile"}}));
    }
}
