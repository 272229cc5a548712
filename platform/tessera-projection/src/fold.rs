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
#[derive(Debug, Default)]
pub struct Fold {
    changes: IndexMap<String, KeyChange>,
}

impl Fold {
    /// An event that sets `columns` of the row with `key` (the key's
    /// values as JSON text, which orders and compares like the values).
    pub fn set(&mut self, key: String, columns: Map<String, Value>) {
        match self.changes.entry(key) {
            Entry::Vacant(e) => {
                e.insert(KeyChange::Patch(columns));
            }
            Entry::Occupied(mut e) => match e.get_mut() {
                KeyChange::Patch(before) | KeyChange::Replace(before) => before.extend(columns),
                deleted @ KeyChange::Delete => *deleted = KeyChange::Replace(columns),
            },
        }
    }

    /// An event that deletes the row with `key`.
    pub fn delete(&mut self, key: String) {
        self.changes.insert(key, KeyChange::Delete);
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
        fold.set("a".into(), cols(json!({"status": "placed", "total": 10})));
        fold.set("b".into(), cols(json!({"status": "placed"})));
        fold.set("a".into(), cols(json!({"status": "shipped"})));
        fold.delete("b".into());
        fold.set("c".into(), cols(json!({"status": "placed", "total": 5})));
        fold.delete("c".into());
        fold.set("c".into(), cols(json!({"status": "placed"})));
        let changes = fold.into_changes();
        assert_eq!(changes["a"], KeyChange::Patch(cols(json!({"status": "shipped", "total": 10}))));
        assert_eq!(changes["b"], KeyChange::Delete);
        assert_eq!(changes["c"], KeyChange::Replace(cols(json!({"status": "placed"}))), "nothing of the deleted row survives");
        assert_eq!(changes.keys().collect::<Vec<_>>(), ["a", "b", "c"], "keys in the order first touched");
    }
}
