//! A run of events into what it does to each table: rows for an append
//! table, net changes per key for an upsert table, and a dead letter for
//! every event that cannot be projected.

use std::collections::HashSet;

use serde_json::{Map, Value};
use tessera_contract::model::{Assignments, Projection, Rule, Table};
use tessera_store::StoredEvent;

use crate::fold::{Before, Fold};
use crate::values::{cell, source_value};

pub use tessera_store::DeadLetter;

/// The rows a run of events appends to an append table, in log order.
pub fn append_rows(name: &str, table: &Table, events: &[StoredEvent]) -> (Vec<Value>, Vec<DeadLetter>) {
    let mut dead = Vec::new();
    let mut rows = Vec::new();
    if let Projection::Append { rules } = &table.projection {
        for e in events {
            let Some(assignments) = rules.get(e.event_type.as_str()) else { continue };
            match row(table, assignments, e, true) {
                Ok(r) => rows.push(Value::Object(r)),
                Err(reason) => dead.push(dead_letter(name, e, reason)),
            }
        }
    }
    (rows, dead)
}

/// What a run of events does to an upsert table, before it is folded per
/// key: each event's cells, checked, and the keys whose row must be looked
/// up in the table first (see [`Upserts::lookups`]).
#[derive(Debug)]
pub struct Upserts {
    table: String,
    items: Vec<Item>,
    dead: Vec<DeadLetter>,
}

#[derive(Debug)]
struct Item {
    event: Origin,
    key: String,
    op: Op,
}

#[derive(Debug)]
struct Origin {
    position: i64,
    stream: String,
    event_type: String,
}

#[derive(Debug)]
enum Op {
    Set { cells: Map<String, Value>, missing: Vec<String> },
    Delete,
}

fn dead_letter(table: &str, e: &StoredEvent, reason: String) -> DeadLetter {
    DeadLetter { table: table.to_owned(), position: e.position, stream: e.stream.clone(), event_type: e.event_type.clone(), reason }
}

impl Upserts {
    /// Checks every event's cells for the upsert table `table`.
    pub fn prepare(name: &str, table: &Table, events: &[StoredEvent]) -> Self {
        let mut out = Upserts { table: name.to_owned(), items: Vec::new(), dead: Vec::new() };
        let Projection::Upsert { key, rules } = &table.projection else { return out };
        for e in events {
            let Some(rule) = rules.get(e.event_type.as_str()) else { continue };
            // Only the key must be complete here: whether a row may be
            // created is known when the run meets the table.
            let cells = match row(table, rule.assignments(), e, false) {
                Ok(cells) => cells,
                Err(reason) => {
                    out.dead.push(dead_letter(name, e, reason));
                    continue;
                }
            };
            let key_cells: Vec<&Value> = key.iter().map(|k| cells.get(k.as_str()).unwrap_or(&Value::Null)).collect();
            if let Some(k) = key.iter().zip(&key_cells).find_map(|(k, v)| v.is_null().then_some(k)) {
                out.dead.push(dead_letter(name, e, format!("key column `{k}` has no value")));
                continue;
            }
            let key_text = Value::from(key_cells.into_iter().cloned().collect::<Vec<_>>()).to_string();
            let op = match rule {
                Rule::Set(_) => {
                    let missing = table
                        .columns
                        .iter()
                        .filter(|(c, col)| col.required && !cells.contains_key(c.as_str()))
                        .map(|(c, _)| c.to_string())
                        .collect();
                    Op::Set { cells, missing }
                }
                Rule::Delete(_) => Op::Delete,
            };
            let event = Origin { position: e.position, stream: e.stream.clone(), event_type: e.event_type.clone() };
            out.items.push(Item { event, key: key_text, op });
        }
        out
    }

    /// The keys whose row's existence decides an event: those whose first
    /// event in the run sets some columns but not every required one, and
    /// that `pending` (the changes of the run so far, not committed) does
    /// not decide. Each comes with its key cells, to look it up in the table.
    pub fn lookups(&self, key: &[tessera_core::ColumnName], pending: &Fold) -> Vec<(String, Map<String, Value>)> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for item in &self.items {
            if !seen.insert(item.key.as_str()) || pending.touches(&item.key) {
                continue;
            }
            if let Op::Set { cells, missing } = &item.op
                && !missing.is_empty()
            {
                let key_cells = key.iter().filter_map(|k| cells.get(k.as_str()).map(|v| (k.to_string(), v.clone()))).collect();
                out.push((item.key.clone(), key_cells));
            }
        }
        out
    }

    /// Every key the run touches, as key text.
    pub fn keys(&self) -> HashSet<String> {
        self.items.iter().map(|i| i.key.clone()).collect()
    }

    /// Folds the run into net changes per key, given which of the looked-up
    /// keys (see [`Upserts::lookups`]) have a row.
    pub fn fold(self, existing: &HashSet<String>) -> (Fold, Vec<DeadLetter>) {
        let mut fold = Fold::default();
        let dead = self.fold_into(&mut fold, existing);
        (fold, dead)
    }

    /// Folds the run into `fold`, the changes of the events before it that
    /// are not committed yet, as if they were one run.
    pub fn fold_into(self, fold: &mut Fold, existing: &HashSet<String>) -> Vec<DeadLetter> {
        let mut dead = self.dead;
        for item in self.items {
            match item.op {
                Op::Delete => fold.delete(item.key),
                Op::Set { cells, missing } => {
                    let before = if existing.contains(&item.key) { Before::Exists } else { Before::Absent };
                    let before = if missing.is_empty() { Before::Unknown } else { before };
                    if fold.set(item.key.clone(), cells, missing.is_empty(), before).is_err() {
                        let Origin { position, stream, event_type } = item.event;
                        dead.push(DeadLetter {
                            table: self.table.clone(),
                            position,
                            stream,
                            event_type,
                            reason: format!(
                                "there is no row with key {} to update, and the event cannot create one: it does not set the \
                                 required column(s) {}; an event that creates the row must come before it",
                                item.key,
                                missing.iter().map(|c| format!("`{c}`")).collect::<Vec<_>>().join(", ")
                            ),
                        });
                    }
                }
            }
        }
        dead.sort_by_key(|d| d.position);
        dead
    }
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
