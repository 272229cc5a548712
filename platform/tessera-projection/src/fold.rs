//! What a run of events does to an upsert table, folded per key before it
//! becomes one Delta MERGE: each key ends the run patched, replaced or
//! deleted, whatever happened to it in between.

use indexmap::IndexMap;
use indexmap::map::Entry;
use serde_json::{Map, Value};

/// The net change of one key over a run of events.
#[derive(Debug, Clone, PartialEq)]
pub enum KeyChange {
    /// Set these columns of the row; its other columns keep their values
    /// (or are null if the row is new).
    Patch(Map<String, Value>),
    /// The row was deleted earlier in the run and set again: it is these
    /// columns and nothing of what it was before.
    Replace(Map<String, Value>),
    /// The row is gone.
    Delete,
}

/// The changes of a run, by key, in the order keys were first touched.
///
/// Events are applied one by one, as if each were its own commit, so that
/// the outcome never depends on where a run starts or ends: an event that
/// sets some columns of a row that does not exist (yet, or any more) cannot
/// create it when it leaves a required column empty, and is refused, in
/// whichever run it falls.
#[derive(Debug, Default)]
pub struct Fold {
    changes: IndexMap<String, KeyChange>,
}

/// Whether a row existed before the run, as far as the caller knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Before {
    Exists,
    Absent,
    /// Not looked up: only allowed for a key whose first event in the run
    /// is a complete set or a delete, which decide the row whatever it was.
    Unknown,
}

/// A set that was refused: the row does not exist and the event does not
/// give every required column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused;

impl Fold {
    /// An event that sets `columns` of the row with `key` (the key's values
    /// as JSON text, which compares like the values). `complete` says
    /// whether `columns` holds every required column, which a new row needs.
    pub fn set(&mut self, key: String, columns: Map<String, Value>, complete: bool, before: Before) -> Result<(), Refused> {
        match self.changes.entry(key) {
            Entry::Vacant(e) => {
                if !complete && before != Before::Exists {
                    return Err(Refused);
                }
                e.insert(KeyChange::Patch(columns));
            }
            Entry::Occupied(mut e) => match e.get_mut() {
                KeyChange::Patch(cells) | KeyChange::Replace(cells) => cells.extend(columns),
                deleted @ KeyChange::Delete if complete => *deleted = KeyChange::Replace(columns),
                KeyChange::Delete => return Err(Refused),
            },
        }
        Ok(())
    }

    /// An event that deletes the row with `key` (deleting a row that does
    /// not exist changes nothing).
    pub fn delete(&mut self, key: String) {
        self.changes.insert(key, KeyChange::Delete);
    }

    /// Whether the fold decides the row of `key` (it has a change for it).
    pub fn touches(&self, key: &str) -> bool {
        self.changes.contains_key(key)
    }

    /// Whether any key is deleted.
    pub fn deletes(&self) -> bool {
        self.changes.values().any(|c| matches!(c, KeyChange::Delete))
    }

    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    pub fn len(&self) -> usize {
        self.changes.len()
    }

    /// The net changes, one per key.
    pub fn into_changes(self) -> IndexMap<String, KeyChange> {
        self.changes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cols(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn later_events_win_and_deletes_forget_the_row() {
        let mut fold = Fold::default();
        let unknown = Before::Unknown;
        fold.set("a".into(), cols(json!({"status": "placed", "total": 10})), true, unknown).expect("complete");
        fold.set("b".into(), cols(json!({"status": "placed"})), false, Before::Exists).expect("b exists");
        fold.set("a".into(), cols(json!({"status": "shipped"})), false, unknown).expect("a was just set");
        fold.delete("b".into());
        fold.set("c".into(), cols(json!({"status": "placed", "total": 5})), true, unknown).expect("complete");
        fold.delete("c".into());
        fold.set("c".into(), cols(json!({"status": "placed"})), true, unknown).expect("complete");
        let changes = fold.into_changes();
        assert_eq!(changes["a"], KeyChange::Patch(cols(json!({"status": "shipped", "total": 10}))));
        assert_eq!(changes["b"], KeyChange::Delete);
        assert_eq!(changes["c"], KeyChange::Replace(cols(json!({"status": "placed"}))), "nothing of the deleted row survives");
        assert_eq!(changes.keys().collect::<Vec<_>>(), ["a", "b", "c"], "keys in the order first touched");
    }

    #[test]
    fn a_row_that_does_not_exist_is_created_only_by_a_complete_set() {
        let mut fold = Fold::default();
        let shipped = cols(json!({"status": "shipped"}));
        assert_eq!(fold.set("a".into(), shipped.clone(), false, Before::Absent), Err(Refused));
        assert!(fold.is_empty(), "a refused set leaves no trace");
        fold.set("b".into(), cols(json!({"status": "placed", "total": 1})), true, Before::Exists).expect("complete");
        fold.delete("b".into());
        assert_eq!(fold.set("b".into(), shipped, false, Before::Unknown), Err(Refused), "b was deleted in this run");
        assert_eq!(fold.into_changes()["b"], KeyChange::Delete);
    }
}
