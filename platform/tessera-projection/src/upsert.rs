//! The upsert decoder compiled from a table's contract, and the fold it
//! feeds: each event's cells read as stored (the fast lane of
//! [`crate::decode`], the same slow lane for the rest), folded per key into
//! typed cells, and the fold written as Arrow columns for the commit.
//!
//! It is [`crate::rows::Upserts`] and [`crate::fold::Fold`] without a JSON
//! object per event and per key: the same events refused for the same
//! reasons, the same keys looked up, the same net change per key (patch,
//! replace, delete), so the same table. Tables whose key columns are not
//! text, integers, booleans, dates or timestamps keep the general path
//! ([`UpsertDecoder::compile`] says so): the key's text, which dead-letter
//! reasons quote, must come out exactly as the general path writes it.

use std::collections::HashSet;
use std::sync::Arc;

use arrow::array::{ArrayRef, BooleanBuilder, RecordBatch, StringBuilder};
use arrow::datatypes::Schema;
use arrow::error::ArrowError;
use indexmap::IndexMap;
use serde_json::{Map, Value};
use tessera_contract::model::{Projection, Rule, Table};
use tessera_store::{DeadLetter, RawEvent, StoredEvent};

use crate::decode::{Cell, Kind, RawReader, SlowLane, Target, UNIX_EPOCH_DAYS_FROM_CE, sources, targets};

/// The decoder of one upsert table.
#[derive(Debug)]
pub struct UpsertDecoder {
    schema: Arc<Schema>,
    columns: Vec<Target>,
    /// The key columns, as indexes into `columns`.
    key: Vec<usize>,
}

/// A row's cells by column index; `None`: the event does not set it.
type Cells = Vec<Option<Cell<'static>>>;

/// One event's checked effect on the table.
#[derive(Debug)]
struct Item {
    /// The event, as an index into the decoded slice.
    index: usize,
    /// The key's values as JSON text (see [`crate::fold::Fold`]).
    key: String,
    op: Op,
}

#[derive(Debug)]
enum Op {
    Set {
        cells: Cells,
        /// Required columns the event does not set.
        missing: Vec<usize>,
        /// The key's values, for looking the row up.
        key_values: Vec<Value>,
    },
    /// The key's cells.
    Delete(Cells),
}

/// A batch of events decoded: what each does, and those that cannot be
/// projected.
#[derive(Debug)]
pub struct Decoded {
    items: Vec<Item>,
    dead: Vec<DeadLetter>,
}

impl UpsertDecoder {
    /// The decoder of `table` (an upsert table) whose Delta schema is
    /// `schema`; `None` when a column needs the general path.
    pub fn compile(table: &Table, schema: &Schema) -> Option<Self> {
        let Projection::Upsert { key, .. } = &table.projection else { return None };
        let columns = targets(table)?;
        let key = key.iter().map(|k| columns.iter().position(|c| c.name == k.as_str())).collect::<Option<Vec<_>>>()?;
        let plain =
            |i: &usize| matches!(columns[*i].kind, Kind::Utf8 | Kind::Boolean | Kind::Int32 | Kind::Int64 | Kind::Date | Kind::Timestamp);
        if !key.iter().all(plain) {
            return None;
        }
        Some(Self { schema: Arc::new(schema.clone()), columns, key })
    }

    /// What `events` (a part of `page`) do to the table `name` (whose spec
    /// is `table`), event by event, and the events it cannot project.
    pub fn decode_raw(&self, name: &str, table: &Table, page: &impl SlowLane, events: &[RawEvent]) -> Decoded {
        let mut out = Decoded { items: Vec::new(), dead: Vec::new() };
        let Projection::Upsert { rules, .. } = &table.projection else { return out };
        let plans = sources(&self.columns, rules.iter().map(|(t, r)| (t.as_str(), r.assignments())));
        for (index, e) in events.iter().enumerate() {
            let (Some(rule), Some(plan)) = (rules.get(e.event_type.as_str()), plans.get(e.event_type.as_str())) else { continue };
            let assignments = rule.assignments();
            let mut cells: Cells = vec![None; self.columns.len()];
            let fast = !page.upcast_needed(e) && {
                let mut reader = RawReader::new(e);
                self.columns.iter().zip(plan).zip(cells.iter_mut()).all(|((target, source), slot)| match source {
                    None => true,
                    Some(source) => match reader.value(source).and_then(|v| target.cell(v)) {
                        Some(c) => {
                            *slot = Some(c.into_owned());
                            true
                        }
                        None => false,
                    },
                })
            };
            if !fast {
                let parsed = page.parse(e);
                match self.checked(assignments, &parsed) {
                    Ok(c) => cells = c,
                    Err(reason) => {
                        out.dead.push(dead_letter(name, e, reason));
                        continue;
                    }
                }
            }
            if let Some(&k) = self.key.iter().find(|&&k| matches!(cells[k], None | Some(Cell::Null))) {
                out.dead.push(dead_letter(name, e, format!("key column `{}` has no value", self.columns[k].name)));
                continue;
            }
            let key_values: Vec<Value> = self.key.iter().map(|&k| key_value(cells[k].as_ref())).collect();
            let key = Value::Array(key_values.clone()).to_string();
            let op = match rule {
                Rule::Set(_) => {
                    let missing =
                        self.columns.iter().enumerate().filter(|(i, c)| c.column.required && cells[*i].is_none()).map(|(i, _)| i).collect();
                    Op::Set { cells, missing, key_values }
                }
                Rule::Delete(_) => {
                    let mut key_cells: Cells = vec![None; self.columns.len()];
                    for &k in &self.key {
                        key_cells[k] = cells[k].take();
                    }
                    Op::Delete(key_cells)
                }
            };
            out.items.push(Item { index, key, op });
        }
        out
    }

    /// The cells a parsed event sets, or why it cannot be projected.
    fn checked(&self, assignments: &tessera_contract::model::Assignments, e: &StoredEvent) -> Result<Cells, String> {
        if let Some(why) = &e.upcast_error {
            return Err(format!("its payload could not be upcast to schema version {}: {why}", e.schema_version));
        }
        let mut cells: Cells = vec![None; self.columns.len()];
        for (target, slot) in self.columns.iter().zip(cells.iter_mut()) {
            if let Some(source) = assignments.get(target.name.as_str()) {
                *slot = Some(target.checked(Some(source), e)?.into_owned());
            }
        }
        Ok(cells)
    }

    /// The keys whose row's existence decides an event: those whose first
    /// event in the batch sets some columns but not every required one,
    /// and that `pending` does not decide. Each with its key cells, to look
    /// it up in the table (see [`crate::delta::existing_keys`]).
    pub fn lookups(&self, decoded: &Decoded, pending: &UpsertFold) -> Vec<(String, Map<String, Value>)> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for item in &decoded.items {
            if !seen.insert(item.key.as_str()) || pending.changes.contains_key(&item.key) {
                continue;
            }
            if let Op::Set { missing, key_values, .. } = &item.op
                && !missing.is_empty()
            {
                let cells = self.key.iter().zip(key_values).map(|(&k, v)| (self.columns[k].name.clone(), v.clone())).collect();
                out.push((item.key.clone(), cells));
            }
        }
        out
    }

    /// Folds a decoded batch into `fold` (the changes not committed yet),
    /// given which looked-up keys have a row; returns the batch's dead
    /// letters in log order.
    pub fn fold_into(
        &self,
        name: &str,
        decoded: Decoded,
        events: &[RawEvent],
        fold: &mut UpsertFold,
        existing: &HashSet<String>,
    ) -> Vec<DeadLetter> {
        let mut dead = decoded.dead;
        for item in decoded.items {
            match item.op {
                Op::Delete(cells) => {
                    fold.changes.insert(item.key, Change { kind: ChangeKind::Delete, cells });
                }
                Op::Set { cells, missing, .. } => {
                    let complete = missing.is_empty();
                    let exists = !complete && existing.contains(&item.key);
                    if fold.set(&item.key, cells, complete, exists).is_err() {
                        let e = &events[item.index];
                        let missing = missing.iter().map(|&i| format!("`{}`", self.columns[i].name)).collect::<Vec<_>>().join(", ");
                        let reason = format!(
                            "there is no row with key {} to update, and the event cannot create one: it does not set the required \
                             column(s) {missing}; an event that creates the row must come before it",
                            item.key
                        );
                        dead.push(dead_letter(name, e, reason));
                    }
                }
            }
        }
        dead.sort_by_key(|d| d.position);
        dead
    }

    /// The rows the fold creates or sets, whole (for a table with no rows
    /// yet: every one is complete); `None` when there are none.
    pub fn rows(&self, fold: &UpsertFold) -> Result<Option<RecordBatch>, ArrowError> {
        let live: Vec<&Change> = fold.changes.values().filter(|c| c.kind != ChangeKind::Delete).collect();
        if live.is_empty() {
            return Ok(None);
        }
        let arrays = self.arrays(&live)?;
        Ok(Some(RecordBatch::try_new(self.schema.clone(), arrays)?))
    }

    /// The fold as a MERGE source of `source` schema: every column
    /// (nullable), what happens to the row (`op`), and for each non-key
    /// column whether a patch sets it.
    pub fn merge_source(&self, fold: &UpsertFold, source: Arc<Schema>) -> Result<RecordBatch, ArrowError> {
        let changes: Vec<&Change> = fold.changes.values().collect();
        let mut arrays = self.arrays(&changes)?;
        let mut op = StringBuilder::with_capacity(changes.len(), changes.len() * 6);
        for c in &changes {
            op.append_value(match c.kind {
                ChangeKind::Patch => "patch",
                ChangeKind::Replace => "replace",
                ChangeKind::Delete => "delete",
            });
        }
        arrays.push(Arc::new(op.finish()));
        for i in (0..self.columns.len()).filter(|i| !self.key.contains(i)) {
            let mut sets = BooleanBuilder::with_capacity(changes.len());
            for c in &changes {
                sets.append_value(c.cells[i].is_some());
            }
            arrays.push(Arc::new(sets.finish()));
        }
        RecordBatch::try_new(source, arrays)
    }

    /// Each column's cells of `changes` (unset ones null).
    fn arrays(&self, changes: &[&Change]) -> Result<Vec<ArrayRef>, ArrowError> {
        let mut arrays = Vec::with_capacity(self.columns.len() + 1);
        for (i, target) in self.columns.iter().enumerate() {
            let mut builder = target.builder(changes.len())?;
            for c in changes {
                builder.push(c.cells[i].clone().unwrap_or(Cell::Null))?;
            }
            arrays.push(builder.finish());
        }
        Ok(arrays)
    }
}

/// A key cell as the general path writes it ([`crate::values::cell`]),
/// for the key's text.
fn key_value(cell: Option<&Cell<'static>>) -> Value {
    match cell {
        Some(Cell::Text(s)) => Value::String(s.to_string()),
        Some(Cell::Boolean(b)) => Value::Bool(*b),
        Some(Cell::Int32(n)) => Value::from(*n),
        Some(Cell::Int64(n)) => Value::from(*n),
        Some(Cell::Date(days)) => chrono::NaiveDate::from_num_days_from_ce_opt(days + UNIX_EPOCH_DAYS_FROM_CE)
            .map_or(Value::Null, |d| Value::from(d.format("%Y-%m-%d").to_string())),
        Some(Cell::Timestamp(micros)) => chrono::DateTime::from_timestamp_micros(*micros)
            .map_or(Value::Null, |t| Value::from(t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))),
        // Not a key kind (see `UpsertDecoder::compile`).
        _ => Value::Null,
    }
}

fn dead_letter(table: &str, e: &RawEvent, reason: String) -> DeadLetter {
    DeadLetter { table: table.to_owned(), position: e.position, stream: e.stream.clone(), event_type: e.event_type.clone(), reason }
}

/// The net changes of a run per key, in typed cells, in the order keys were
/// first touched: [`crate::fold::Fold`]'s rules, event by event.
#[derive(Debug, Default)]
pub struct UpsertFold {
    changes: IndexMap<String, Change>,
}

#[derive(Debug)]
struct Change {
    kind: ChangeKind,
    cells: Cells,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChangeKind {
    /// Set these cells; the row's others keep their values (null if new).
    Patch,
    /// Deleted earlier in the run and set again: these cells and nothing else.
    Replace,
    Delete,
}

impl UpsertFold {
    /// An event that sets `cells` of the row with `key`; `complete`: it sets
    /// every required column; `exists`: the row is known to exist.
    fn set(&mut self, key: &str, cells: Cells, complete: bool, exists: bool) -> Result<(), crate::fold::Refused> {
        match self.changes.get_mut(key) {
            None => {
                if !complete && !exists {
                    return Err(crate::fold::Refused);
                }
                self.changes.insert(key.to_owned(), Change { kind: ChangeKind::Patch, cells });
            }
            Some(change) => {
                let kind = change.kind;
                match kind {
                    ChangeKind::Patch | ChangeKind::Replace => {
                        for (slot, c) in change.cells.iter_mut().zip(cells) {
                            if c.is_some() {
                                *slot = c;
                            }
                        }
                    }
                    ChangeKind::Delete if complete => *change = Change { kind: ChangeKind::Replace, cells },
                    ChangeKind::Delete => return Err(crate::fold::Refused),
                }
            }
        }
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.changes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use indexmap::IndexMap;
    use serde_json::json;
    use tessera_contract::model::{Assignments, DataType, FieldPath, Source};
    use tessera_core::{ColumnName, EventTypeName};

    use super::*;
    use crate::decode::tests::column;
    use crate::delta::Changes;
    use crate::fold::Fold;
    use crate::rows::Upserts;
    use crate::schema::table_schema;

    /// An upsert table keyed by `id`: `Full` sets every column, `Part`
    /// some (not every required one), `Gone` deletes.
    fn table() -> Table {
        keyed(&["id"])
    }

    /// The same table keyed by `key`.
    fn keyed(key: &[&str]) -> Table {
        let mut columns = IndexMap::new();
        let specs = [
            ("id", DataType::String, true, None),
            ("n", DataType::Int64, true, None),
            ("amount", DataType::Decimal { precision: 12, scale: 2 }, false, None),
            ("at", DataType::Timestamp, false, None),
            ("label", DataType::String, true, None),
            ("email", DataType::String, false, Some("pii.email")),
        ];
        let (mut full, mut part, mut gone) = (Assignments::new(), Assignments::new(), Assignments::new());
        for (name, t, required, class) in specs {
            let name = ColumnName::parse(name).expect("name");
            columns.insert(name.clone(), column(t, required, class));
            let source = Source::Payload(FieldPath::parse(name.as_str()).expect("path"));
            full.insert(name.clone(), source.clone());
            if ["amount", "at"].contains(&name.as_str()) || key.contains(&name.as_str()) {
                part.insert(name.clone(), source.clone());
            }
            if key.contains(&name.as_str()) {
                gone.insert(name, source);
            }
        }
        let mut rules = IndexMap::new();
        rules.insert(EventTypeName::parse("Full").expect("name"), Rule::Set(full));
        rules.insert(EventTypeName::parse("Part").expect("name"), Rule::Set(part));
        rules.insert(EventTypeName::parse("Gone").expect("name"), Rule::Delete(gone));
        let key = key.iter().map(|k| ColumnName::parse(*k).expect("name")).collect();
        Table { description: None, projection: Projection::Upsert { key, rules }, columns, checks: Vec::new() }
    }

    fn payload(rng: &mut fastrand::Rng) -> Value {
        let mut p = Map::new();
        let odd = |rng: &mut fastrand::Rng| rng.u8(0..12) == 0;
        if !odd(rng) {
            p.insert("id".into(), if odd(rng) { json!(7) } else { json!(format!("K-{}", rng.u8(0..6))) });
        }
        if !odd(rng) {
            p.insert("n".into(), if odd(rng) { json!("seven") } else { json!(rng.i64(-2..3)) });
        }
        if !odd(rng) {
            let amount = ["12.50", "0.125", "-3", "1e2"][rng.usize(0..4)];
            p.insert("amount".into(), serde_json::from_str(amount).expect("number"));
        }
        if !odd(rng) {
            let at = ["2026-01-01T10:00:00Z", "2026-02-30T00:00:00Z", "2026-01-01T12:00:00.000+02:00", "2026-01-01T10:00:60Z"];
            p.insert("at".into(), json!(at[rng.usize(0..at.len())]));
        }
        if !odd(rng) {
            p.insert("label".into(), if odd(rng) { Value::Null } else { json!(format!("l\"{}", rng.u8(..))) });
        }
        if rng.bool() {
            p.insert("email".into(), json!(["tsr1.abc", "ada@example.com"][rng.usize(0..2)]));
        }
        Value::Object(p)
    }

    struct Page {
        parsed: HashMap<i64, StoredEvent>,
    }

    impl SlowLane for Page {
        fn upcast_needed(&self, e: &RawEvent) -> bool {
            self.parsed[&e.position].upcast_error.is_some()
        }

        fn parse(&self, e: &RawEvent) -> StoredEvent {
            self.parsed[&e.position].clone()
        }
    }

    /// The property the typed fold rests on: over random events (sets
    /// whole and partial, deletes, values that do not fit, keys missing) in
    /// random batches with random commits, it looks up the same keys, sets
    /// aside the same events for the same reasons, and gives the MERGE the
    /// same source as the general path.
    #[test]
    fn the_typed_fold_gives_the_general_paths_lookups_dead_letters_and_changes() {
        // Keys of text, of text and an integer, of a timestamp.
        for key_names in [&["id"][..], &["id", "n"], &["at"]] {
            same_as_the_general_path(key_names);
        }
    }

    fn same_as_the_general_path(key_names: &[&str]) {
        let table = keyed(key_names);
        let schema = table_schema(&table);
        let decoder = UpsertDecoder::compile(&table, &schema).expect("a table the decoder takes");
        let Projection::Upsert { key, .. } = &table.projection else { return };
        let key = key.clone();
        let (mut merged, mut dead_seen) = (0, 0);
        for seed in 0..40 {
            let mut rng = fastrand::Rng::with_seed(seed);
            let mut page = Page { parsed: HashMap::new() };
            let mut raw = Vec::new();
            for position in 1..=200 {
                let p = payload(&mut rng);
                let event_type = ["Full", "Full", "Part", "Gone", "Other"][rng.usize(0..5)].to_owned();
                let text = serde_json::to_string(&p).expect("json");
                raw.push(RawEvent {
                    position,
                    stream: "S".into(),
                    version: position,
                    id: vec![1; 16],
                    event_type: event_type.clone(),
                    schema_version: 1,
                    payload: text.clone(),
                    metadata: "{}".into(),
                    contract_version: "1.0.0".into(),
                    recorded_at: 0,
                });
                let stored = StoredEvent {
                    position,
                    stream: "S".into(),
                    version: position,
                    id: uuid::Uuid::from_slice(&[1; 16]).expect("id"),
                    event_type,
                    schema_version: 1,
                    stored_schema_version: 1,
                    payload: serde_json::from_str(&text).expect("json"),
                    metadata: json!({}),
                    contract_version: "1.0.0".into(),
                    recorded_at: "1970-01-01T00:00:00.000000Z".into(),
                    upcast_error: (rng.u8(0..25) == 0).then(|| "a step failed".to_owned()),
                };
                page.parsed.insert(position, stored);
            }
            let (mut general, mut typed) = (Fold::default(), UpsertFold::default());
            let mut start = 0;
            while start < raw.len() {
                let end = (start + rng.usize(1..40)).min(raw.len());
                let parsed: Vec<StoredEvent> = raw[start..end].iter().map(|e| page.parse(e)).collect();
                let upserts = Upserts::prepare("t", &table, &parsed);
                let decoded = decoder.decode_raw("t", &table, &page, &raw[start..end]);
                let lookups = upserts.lookups(&key, &general);
                assert_eq!(decoder.lookups(&decoded, &typed), lookups, "seed {seed}, events {start}..{end}");
                // Some of the looked-up rows exist.
                let existing: HashSet<String> = lookups.iter().filter(|(k, _)| k.len() % 2 == 0).map(|(k, _)| k.clone()).collect();
                let dead = upserts.fold_into(&mut general, &existing);
                assert_eq!(decoder.fold_into("t", decoded, &raw[start..end], &mut typed, &existing), dead, "seed {seed}");
                dead_seen += dead.len();
                if rng.u8(0..4) == 0 || end == raw.len() {
                    let a = Changes::Json(std::mem::take(&mut general)).merge_source("t", &schema, &key).expect("general source");
                    let b = Changes::Typed(&decoder, std::mem::take(&mut typed)).merge_source("t", &schema, &key).expect("typed source");
                    assert_eq!(a, b, "key {key_names:?}, seed {seed}, events {start}..{end}");
                    merged += a.num_rows();
                }
                start = end;
            }
        }
        assert!(
            merged > 100 && dead_seen > 200,
            "key {key_names:?}: the events exercise both ({merged} merged rows, {dead_seen} dead letters)"
        );
    }

    #[test]
    fn keys_the_general_path_writes_otherwise_keep_the_general_path() {
        let mut table = table();
        let Projection::Upsert { key, .. } = &mut table.projection else { unreachable!("an upsert table") };
        *key = vec![ColumnName::parse("amount").expect("name")];
        assert!(UpsertDecoder::compile(&table, &table_schema(&table)).is_none(), "a decimal key");
    }
}
