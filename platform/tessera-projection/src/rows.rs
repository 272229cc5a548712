//! A run of events into what it does to each table: rows for an append
//! table, net changes per key for an upsert table, and a dead letter for
//! every event that cannot be projected.

use serde::Serialize;
use serde_json::{Map, Value};
use tessera_contract::model::{Assignments, Projection, Rule, Table};
use tessera_store::StoredEvent;

use crate::fold::Fold;
use crate::values::{cell, source_value};

/// An event that could not be projected into a table, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeadLetter {
    pub table: String,
    pub position: i64,
    pub stream: String,
    pub event_type: String,
    pub reason: String,
}

/// What a run of events does to one table.
#[derive(Debug)]
pub enum Changes {
    /// New rows, in log order.
    Append(Vec<Value>),
    /// Net changes per key (the key's cells as JSON text).
    Upsert(Fold),
}

/// Projects `events` (in log order) into `table`. Derived (`sql`) tables
/// take no events and give `None`.
pub fn project(name: &str, table: &Table, events: &[StoredEvent]) -> Option<(Changes, Vec<DeadLetter>)> {
    let mut dead = Vec::new();
    let mut letter = |e: &StoredEvent, reason: String| {
        dead.push(DeadLetter {
            table: name.to_owned(),
            position: e.position,
            stream: e.stream.clone(),
            event_type: e.event_type.clone(),
            reason,
        })
    };
    let changes = match &table.projection {
        Projection::Sql { .. } => return None,
        Projection::Append { rules } => {
            let mut rows = Vec::new();
            for e in events {
                let Some(assignments) = rules.get(e.event_type.as_str()) else { continue };
                match row(table, assignments, e, true) {
                    Ok(r) => rows.push(Value::Object(r)),
                    Err(reason) => letter(e, reason),
                }
            }
            Changes::Append(rows)
        }
        Projection::Upsert { key, rules } => {
            let mut fold = Fold::default();
            for e in events {
                let Some(rule) = rules.get(e.event_type.as_str()) else { continue };
                // Only the key must be complete here: whether a new row has
                // every required column is known when it meets the table.
                let cells = match row(table, rule.assignments(), e, false) {
                    Ok(cells) => cells,
                    Err(reason) => {
                        letter(e, reason);
                        continue;
                    }
                };
                let key_cells: Vec<&Value> = key.iter().map(|k| cells.get(k.as_str()).unwrap_or(&Value::Null)).collect();
                if let Some(k) = key.iter().zip(&key_cells).find_map(|(k, v)| v.is_null().then_some(k)) {
                    letter(e, format!("key column `{k}` has no value"));
                    continue;
                }
                let key_text = Value::from(key_cells.into_iter().cloned().collect::<Vec<_>>()).to_string();
                match rule {
                    Rule::Set(_) => fold.set(key_text, cells),
                    Rule::Delete(_) => fold.delete(key_text),
                }
            }
            Changes::Upsert(fold)
        }
    };
    Some((changes, dead))
}

/// The cells an event assigns. With `whole`, every column of the table
/// (unassigned ones null, which a required column refuses); otherwise only
/// the assigned columns.
fn row(table: &Table, assignments: &Assignments, e: &StoredEvent, whole: bool) -> Result<Map<String, Value>, String> {
    if let Some(why) = &e.upcast_error {
        return Err(format!("its payload could not be upcast to schema version {}: {why}", e.schema_version));
    }
    let mut cells = Map::new();
    for (name, column) in &table.columns {
        let source = assignments.get(name);
        if source.is_none() && !whole {
            continue;
        }
        let value = cell(source.and_then(|s| source_value(s, e)), column).map_err(|why| match source {
            Some(s) => format!("column `{name}` (from {s}) {why}"),
            None => format!("column `{name}` {why}: no rule of this event type sets it"),
        })?;
        cells.insert(name.to_string(), value);
    }
    Ok(cells)
}
