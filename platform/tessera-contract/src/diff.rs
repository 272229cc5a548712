//! Compatibility between two versions of a contract: every change, and
//! whether it breaks consumers (readers of the tables) or producers (writers
//! of the events). A breaking change needs a new major version.
//!
//! `tessera diff` prints this; publishing a new version runs exactly this
//! check, so what the CLI accepts is what the platform accepts.

use std::fmt;

use serde::Serialize;
use serde_json::Value;

use crate::model::{Column, Contract, DataType, EventType, Projection, Table};
use crate::payload;
use crate::policy::{Policy, Role};

/// Whether a change breaks anyone who relies on the old version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Impact {
    Compatible,
    Breaking,
}

/// One difference between two versions.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Change {
    pub impact: Impact,
    /// What changed, e.g. `tables.orders.columns.total`.
    pub subject: String,
    /// What happened to it, in words.
    pub message: String,
}

/// All differences, and the version rules they violate.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Diff {
    pub old_version: String,
    pub new_version: String,
    pub changes: Vec<Change>,
    /// Rule violations, e.g. a breaking change without a major bump.
    pub errors: Vec<String>,
}

impl Diff {
    pub fn is_breaking(&self) -> bool {
        self.changes.iter().any(|c| c.impact == Impact::Breaking)
    }

    /// Whether the new version may follow the old one.
    pub fn is_valid_successor(&self) -> bool {
        self.errors.is_empty()
    }
}

impl fmt::Display for Diff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{} -> {}: {} change(s)", self.old_version, self.new_version, self.changes.len())?;
        for c in &self.changes {
            let tag = match c.impact {
                Impact::Breaking => "breaking",
                Impact::Compatible => "compatible",
            };
            writeln!(f, "  {tag:<10} {}: {}", c.subject, c.message)?;
        }
        for e in &self.errors {
            writeln!(f, "error: {e}")?;
        }
        Ok(())
    }
}

struct Changes(Vec<Change>);

impl Changes {
    fn breaking(&mut self, subject: impl Into<String>, message: impl Into<String>) {
        self.0.push(Change { impact: Impact::Breaking, subject: subject.into(), message: message.into() });
    }
    fn compatible(&mut self, subject: impl Into<String>, message: impl Into<String>) {
        self.0.push(Change { impact: Impact::Compatible, subject: subject.into(), message: message.into() });
    }
}

/// Compares two versions of one product's contract.
pub fn diff(old: &Contract, new: &Contract, policy: &Policy) -> Diff {
    let mut ch = Changes(Vec::new());
    let mut errors = Vec::new();
    if old.product() != new.product() {
        errors.push(format!(
            "these are two products ({} and {}): a product's domain and name never change; publish a new product instead",
            old.product(),
            new.product()
        ));
    }

    if old.title != new.title {
        ch.compatible("title", format!("`{}` -> `{}`", old.title, new.title));
    }
    if old.description != new.description {
        ch.compatible("description", "changed");
    }
    if old.owner != new.owner {
        ch.compatible("owner", format!("{} <{}> -> {} <{}>", old.owner.team, old.owner.contact, new.owner.team, new.owner.contact));
    }
    if old.tags != new.tags {
        ch.compatible("tags", format!("[{}] -> [{}]", old.tags.join(", "), new.tags.join(", ")));
    }
    if old.status != new.status {
        ch.compatible("status", format!("{} -> {}", old.status.as_str(), new.status.as_str()));
    }
    match (&old.freshness, &new.freshness) {
        (Some(a), Some(b)) if b.seconds > a.seconds => {
            ch.breaking(
                "service_levels.freshness",
                format!("looser target {} -> {}: consumers rely on the promised freshness", a.text, b.text),
            );
        }
        (Some(a), Some(b)) if a != b => ch.compatible("service_levels.freshness", format!("{} -> {}", a.text, b.text)),
        (Some(a), None) => ch.breaking("service_levels.freshness", format!("the {} target was dropped", a.text)),
        (None, Some(b)) => ch.compatible("service_levels.freshness", format!("new target {}", b.text)),
        _ => {}
    }

    for (name, e) in &old.events {
        let subject = format!("events.{name}");
        match new.events.get(name) {
            None => ch.breaking(subject, "event type removed: producers can no longer append it and its history cannot be read"),
            Some(n) => events(&mut ch, &subject, e, n),
        }
    }
    for name in new.events.keys().filter(|n| !old.events.contains_key(*n)) {
        ch.compatible(format!("events.{name}"), "event type added");
    }

    for (name, t) in &old.tables {
        let subject = format!("tables.{name}");
        match new.tables.get(name) {
            None => ch.breaking(subject, "table removed"),
            Some(n) => tables(&mut ch, policy, &subject, t, n),
        }
    }
    for name in new.tables.keys().filter(|n| !old.tables.contains_key(*n)) {
        ch.compatible(format!("tables.{name}"), "table added");
    }

    let changes = ch.0;
    let breaking = changes.iter().any(|c| c.impact == Impact::Breaking);
    if new.version < old.version {
        errors.push(format!("the version goes backwards: {} is older than {}", new.version, old.version));
    } else if new.version == old.version && !changes.is_empty() {
        errors.push(format!("the contract changed but its version is still {}: raise it", new.version));
    } else if breaking && new.version.major <= old.version.major && new.version > old.version {
        errors.push(format!(
            "breaking changes need a new major version: {} -> {} keeps major {}; publish {}.0.0",
            old.version,
            new.version,
            old.version.major,
            old.version.major + 1
        ));
    }
    Diff { old_version: old.version.to_string(), new_version: new.version.to_string(), changes, errors }
}

fn events(ch: &mut Changes, subject: &str, old: &EventType, new: &EventType) {
    if new.version < old.version {
        ch.breaking(
            subject,
            format!(
                "schema version lowered {} -> {}: stored events of version {} can no longer be read",
                old.version, new.version, old.version
            ),
        );
        return;
    }
    if new.version > old.version {
        ch.compatible(subject, format!("schema version {} -> {}, older payloads upcast", old.version, new.version));
    }
    for u in &old.upcasters {
        if !new.upcasters.iter().any(|n| n.from == u.from) {
            ch.breaking(
                format!("{subject}.upcasters"),
                format!("the upcaster from version {} was removed: stored events of that version can no longer be read", u.from),
            );
        } else if new.upcasters.iter().any(|n| n.from == u.from && n != u) {
            ch.compatible(format!("{subject}.upcasters"), format!("the upcaster from version {} changed", u.from));
        }
    }
    if old.schema != new.schema && new.version == old.version {
        let newly_required: Vec<String> =
            required_paths(&new.schema).into_iter().filter(|p| !required_paths(&old.schema).contains(p)).collect();
        if newly_required.is_empty() {
            ch.compatible(format!("{subject}.schema"), "payload schema changed");
        } else {
            ch.breaking(
                format!("{subject}.schema"),
                format!(
                    "payload fields {} became required at the same schema version: producers' events without them are rejected; raise the event version with an upcaster instead",
                    newly_required.join(", ")
                ),
            );
        }
    }
    if old.subject != new.subject {
        ch.compatible(format!("{subject}.subject"), "data subject changed");
    }
}

fn required_paths(schema: &Value) -> Vec<String> {
    payload::walk(schema)
        .into_iter()
        .filter_map(|p| {
            let path = crate::model::FieldPath::parse(&p.path)?;
            payload::resolve(schema, &path).ok().filter(|f| f.always_present).map(|_| p.path)
        })
        .collect()
}

fn tables(ch: &mut Changes, policy: &Policy, subject: &str, old: &Table, new: &Table) {
    if old.projection.kind() != new.projection.kind() {
        ch.breaking(
            subject,
            format!("projection changed from {} to {}: rows mean something else", old.projection.kind(), new.projection.kind()),
        );
    } else {
        match (&old.projection, &new.projection) {
            (Projection::Upsert { key: a, rules: ra }, Projection::Upsert { key: b, rules: rb }) => {
                if a != b {
                    ch.breaking(format!("{subject}.key"), format!("key changed [{}] -> [{}]", join(a), join(b)));
                }
                if ra != rb {
                    ch.compatible(format!("{subject}.upsert"), "projection rules changed");
                }
            }
            (Projection::Append { rules: ra }, Projection::Append { rules: rb }) if ra != rb => {
                ch.compatible(format!("{subject}.append"), "projection rules changed");
            }
            (Projection::Sql { query: a, .. }, Projection::Sql { query: b, .. }) if a.trim() != b.trim() => {
                ch.compatible(format!("{subject}.sql"), "query changed");
            }
            _ => {}
        }
    }
    if old.description != new.description {
        ch.compatible(format!("{subject}.description"), "changed");
    }
    columns(ch, policy, &format!("{subject}.columns"), old.columns.iter().map(|(k, v)| (k.as_str(), v)), &new.columns, |n| n.as_str());
    if old.checks != new.checks {
        let added = new.checks.iter().filter(|c| !old.checks.contains(c)).count();
        let removed = old.checks.iter().filter(|c| !new.checks.contains(c)).count();
        ch.compatible(format!("{subject}.checks"), format!("{added} check(s) added, {removed} removed"));
    }
}

fn columns<'a, K>(
    ch: &mut Changes,
    policy: &Policy,
    subject: &str,
    old: impl Iterator<Item = (&'a str, &'a Column)> + Clone,
    new: &indexmap::IndexMap<K, Column>,
    key: impl Fn(&K) -> &str,
) {
    let new_names: Vec<&str> = new.keys().map(&key).collect();
    let find = |name: &str| new.iter().find(|(k, _)| key(k) == name).map(|(_, c)| c);
    for (name, col) in old.clone() {
        let at = format!("{subject}.{name}");
        let Some(n) = find(name) else {
            let renamed = new.iter().find(|(k, c)| !old.clone().any(|(o, _)| o == key(k)) && c.data_type == col.data_type);
            match renamed {
                Some((k, _)) => ch.breaking(at, format!("column removed (renamed to `{}`?)", key(k))),
                None => ch.breaking(at, "column removed"),
            }
            continue;
        };
        column(ch, policy, &at, col, n);
    }
    for name in new_names.iter().filter(|n| !old.clone().any(|(o, _)| o == **n)) {
        let at = format!("{subject}.{name}");
        match find(name) {
            Some(c) if c.required => ch.breaking(at, "required column added: rows written before it have no value; add it as nullable"),
            _ => ch.compatible(at, "nullable column added"),
        }
    }
}

fn column(ch: &mut Changes, policy: &Policy, at: &str, old: &Column, new: &Column) {
    match (&old.data_type, &new.data_type) {
        (DataType::Struct(a), DataType::Struct(b)) => {
            columns(ch, policy, &format!("{at}.fields"), a.iter().map(|(k, v)| (k.as_str(), v)), b, |n| n.as_str());
        }
        (a, b) if a == b => {}
        (a, b) if a.widens_to(b) => ch.compatible(at, format!("type widened {a} -> {b}")),
        (a, b) => ch.breaking(at, format!("type changed {a} -> {b}: values may no longer fit")),
    }
    match (old.required, new.required) {
        (false, true) => ch.breaking(at, "nullable -> required: rows with no value break the new constraint"),
        (true, false) => ch.breaking(at, "required -> nullable: consumers that rely on a value get nulls"),
        _ => {}
    }
    if old.description != new.description {
        ch.compatible(at, "description changed");
    }
    for role in Role::ALL {
        let (Some(a), Some(b)) = (policy.effective(old, role), policy.effective(new, role)) else {
            continue;
        };
        if policy.rank(b) < policy.rank(a) {
            ch.breaking(at, format!("masking for {role} weakened {a} -> {b}"));
        } else if policy.rank(b) > policy.rank(a) {
            ch.compatible(at, format!("masking for {role} tightened {a} -> {b}"));
        }
    }
    if old.classification != new.classification {
        let show = |c: &Option<String>| c.clone().unwrap_or_else(|| "unclassified".into());
        ch.compatible(at, format!("classification {} -> {}", show(&old.classification), show(&new.classification)));
    }
}

fn join<T: fmt::Display>(items: &[T]) -> String {
    items.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}
