//! The append decoder compiled from a table's contract: each event's
//! values, read in place from its payload, metadata and envelope, checked
//! against their columns and written straight into Arrow builders, in one
//! pass.
//!
//! It is the fast lane of [`crate::rows::append_rows`] followed by
//! [`crate::delta::batch`], which build a JSON object per row and hand the
//! rows to Arrow's JSON decoder: the same checks, the same dead letters with
//! the same reasons (a value that does not fit is explained by the same
//! code, [`crate::values::cell`]), the same table. Tables with a struct or
//! list column keep the general path ([`AppendDecoder::compile`] says so).

use std::borrow::Cow;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BinaryBuilder, BooleanBuilder, Date32Builder, Decimal128Builder, Float64Builder, Int32Builder, Int64Builder, RecordBatch,
    StringBuilder, TimestampMicrosecondBuilder,
};
use arrow::datatypes::{Decimal128Type, Schema};
use arrow::error::ArrowError;
use serde_json::Value;
use tessera_contract::model::{Assignments, Column, DataType, EventField, Projection, Source, Table};
use tessera_store::{DeadLetter, StoredEvent};

use crate::values::{cell, date, decimal_text, sealed_json_text, source_value, timestamp};

/// The decoder of one append table.
#[derive(Debug)]
pub struct AppendDecoder {
    schema: Arc<Schema>,
    columns: Vec<Target>,
}

#[derive(Debug)]
struct Target {
    name: String,
    column: Column,
    kind: Kind,
}

/// What a column holds, as the decoder writes it.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Utf8,
    Boolean,
    Int32,
    Int64,
    Float64,
    Decimal {
        precision: u8,
        scale: u8,
    },
    Date,
    Timestamp,
    /// The JSON text of the value, tokens and all (see `schema`).
    Sealed,
}

/// A checked cell, before it goes into its builder.
enum Cell<'a> {
    Null,
    Text(Cow<'a, str>),
    Boolean(bool),
    Int32(i32),
    Int64(i64),
    Float64(f64),
    Decimal(i128),
    Date(i32),
    Timestamp(i64),
    Bytes(Vec<u8>),
}

enum Builder {
    Utf8(StringBuilder),
    Boolean(BooleanBuilder),
    Int32(Int32Builder),
    Int64(Int64Builder),
    Float64(Float64Builder),
    Decimal(Decimal128Builder),
    Date(Date32Builder),
    Timestamp(TimestampMicrosecondBuilder),
    Binary(BinaryBuilder),
}

const UNIX_EPOCH_DAYS_FROM_CE: i32 = 719_163;

impl AppendDecoder {
    /// The decoder of `table` (an append table) whose Delta schema is
    /// `schema`; `None` when a column needs the general path.
    pub fn compile(table: &Table, schema: &Schema) -> Option<Self> {
        if !matches!(table.projection, Projection::Append { .. }) {
            return None;
        }
        let columns = table
            .columns
            .iter()
            .map(|(name, column)| {
                let kind = if tessera_contract::seal::is_sealed(column) {
                    Kind::Sealed
                } else {
                    match &column.data_type {
                        DataType::String => Kind::Utf8,
                        DataType::Boolean => Kind::Boolean,
                        DataType::Int32 => Kind::Int32,
                        DataType::Int64 => Kind::Int64,
                        DataType::Float64 => Kind::Float64,
                        DataType::Decimal { precision, scale } => Kind::Decimal { precision: *precision, scale: *scale },
                        DataType::Date => Kind::Date,
                        DataType::Timestamp => Kind::Timestamp,
                        DataType::Struct(_) | DataType::List(_) => return None,
                    }
                };
                Some(Target { name: name.to_string(), column: column.clone(), kind })
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Self { schema: Arc::new(schema.clone()), columns })
    }

    /// The rows `events` append to the table `name` (whose spec is
    /// `table`), as one batch (`None` when there are none), and the events
    /// that cannot be projected.
    pub fn decode(&self, name: &str, table: &Table, events: &[StoredEvent]) -> Result<(Option<RecordBatch>, Vec<DeadLetter>), ArrowError> {
        let Projection::Append { rules } = &table.projection else { return Ok((None, Vec::new())) };
        let mut builders: Vec<Builder> = self.columns.iter().map(|c| c.builder(events.len())).collect::<Result<_, _>>()?;
        let mut dead = Vec::new();
        let mut rows = 0usize;
        let mut cells: Vec<Cell<'_>> = Vec::with_capacity(self.columns.len());
        for e in events {
            let Some(assignments) = rules.get(e.event_type.as_str()) else { continue };
            cells.clear();
            match self.check(assignments, e, &mut cells) {
                Ok(()) => {
                    for (builder, c) in builders.iter_mut().zip(cells.drain(..)) {
                        builder.push(c)?;
                    }
                    rows += 1;
                }
                Err(reason) => dead.push(DeadLetter {
                    table: name.to_owned(),
                    position: e.position,
                    stream: e.stream.clone(),
                    event_type: e.event_type.clone(),
                    reason,
                }),
            }
        }
        if rows == 0 {
            return Ok((None, dead));
        }
        let arrays: Vec<ArrayRef> = builders.into_iter().map(Builder::finish).collect();
        Ok((Some(RecordBatch::try_new(self.schema.clone(), arrays)?), dead))
    }

    /// Every column's cell of one event, or why the event cannot be
    /// projected: the first column that does not fit, explained as the
    /// general path explains it.
    fn check<'a>(&self, assignments: &'a Assignments, e: &'a StoredEvent, cells: &mut Vec<Cell<'a>>) -> Result<(), String> {
        if let Some(why) = &e.upcast_error {
            return Err(format!("its payload could not be upcast to schema version {}: {why}", e.schema_version));
        }
        for target in &self.columns {
            let source = assignments.get(target.name.as_str());
            let value = source.and_then(|s| value_of(s, e));
            match target.cell(value) {
                Some(c) => cells.push(c),
                None => {
                    let why = match cell(source.and_then(|s| source_value(s, e)), &target.column) {
                        Err(why) => why,
                        // The two lanes disagree: a defect, but the event is
                        // still not written half-checked.
                        Ok(_) => format!("does not fit type {:?}", target.kind),
                    };
                    let name = &target.name;
                    return Err(match source {
                        Some(s) => format!("column `{name}` (from {s}) {why}"),
                        None => format!("column `{name}` {why}: no rule of this event type sets it"),
                    });
                }
            }
        }
        Ok(())
    }
}

/// The value of a source for an event, read in place where it can be.
fn value_of<'a>(source: &'a Source, e: &'a StoredEvent) -> Option<Cow<'a, Value>> {
    match source {
        Source::Payload(path) => path.get(&e.payload).map(Cow::Borrowed),
        Source::Metadata(key) => e.metadata.get(key).map(Cow::Borrowed),
        Source::Literal(v) => Some(Cow::Borrowed(v)),
        Source::Event(EventField::Type) => Some(Cow::Owned(Value::from(e.event_type.as_str()))),
        Source::Event(EventField::Stream) => Some(Cow::Owned(Value::from(e.stream.as_str()))),
        Source::Event(_) => source_value(source, e).map(Cow::Owned),
    }
}

impl Target {
    fn builder(&self, capacity: usize) -> Result<Builder, ArrowError> {
        Ok(match self.kind {
            Kind::Utf8 => Builder::Utf8(StringBuilder::with_capacity(capacity, capacity * 16)),
            Kind::Boolean => Builder::Boolean(BooleanBuilder::with_capacity(capacity)),
            Kind::Int32 => Builder::Int32(Int32Builder::with_capacity(capacity)),
            Kind::Int64 => Builder::Int64(Int64Builder::with_capacity(capacity)),
            Kind::Float64 => Builder::Float64(Float64Builder::with_capacity(capacity)),
            Kind::Decimal { precision, scale } => Builder::Decimal(
                Decimal128Builder::with_capacity(capacity).with_precision_and_scale(precision, i8::try_from(scale).unwrap_or(i8::MAX))?,
            ),
            Kind::Date => Builder::Date(Date32Builder::with_capacity(capacity)),
            Kind::Timestamp => Builder::Timestamp(TimestampMicrosecondBuilder::with_capacity(capacity).with_timezone("UTC")),
            Kind::Sealed => Builder::Binary(BinaryBuilder::with_capacity(capacity, capacity * 64)),
        })
    }

    /// The checked cell of `value`, or `None` when it does not fit (the
    /// same test as [`crate::values::cell`]).
    fn cell<'a>(&self, value: Option<Cow<'a, Value>>) -> Option<Cell<'a>> {
        let value = match value {
            None => None,
            Some(v) if v.is_null() => None,
            Some(v) => Some(v),
        };
        let Some(v) = value else { return (!self.column.required).then_some(Cell::Null) };
        Some(match self.kind {
            Kind::Utf8 => match v {
                Cow::Borrowed(Value::String(s)) => Cell::Text(Cow::Borrowed(s.as_str())),
                Cow::Owned(Value::String(s)) => Cell::Text(Cow::Owned(s)),
                _ => return None,
            },
            Kind::Boolean => Cell::Boolean(v.as_bool()?),
            Kind::Int32 => Cell::Int32(i32::try_from(v.as_i64()?).ok()?),
            Kind::Int64 => Cell::Int64(v.as_i64()?),
            Kind::Float64 => {
                if !v.is_number() {
                    return None;
                }
                Cell::Float64(v.as_f64()?)
            }
            Kind::Decimal { precision, scale } => {
                let text = decimal_text(&v, precision, scale).ok()?;
                let scale = i8::try_from(scale).ok()?;
                Cell::Decimal(arrow::compute::kernels::cast_utils::parse_decimal::<Decimal128Type>(&text, precision, scale).ok()?)
            }
            Kind::Date => Cell::Date(chrono::Datelike::num_days_from_ce(&date(v.as_str()?)?) - UNIX_EPOCH_DAYS_FROM_CE),
            Kind::Timestamp => Cell::Timestamp(timestamp(v.as_str()?)?.timestamp_micros()),
            Kind::Sealed => Cell::Bytes(sealed_json_text(v.into_owned(), &self.column).ok()?.into_bytes()),
        })
    }
}

impl Builder {
    fn push(&mut self, c: Cell<'_>) -> Result<(), ArrowError> {
        match (self, c) {
            (Builder::Utf8(b), Cell::Null) => b.append_null(),
            (Builder::Utf8(b), Cell::Text(s)) => b.append_value(s),
            (Builder::Boolean(b), Cell::Null) => b.append_null(),
            (Builder::Boolean(b), Cell::Boolean(x)) => b.append_value(x),
            (Builder::Int32(b), Cell::Null) => b.append_null(),
            (Builder::Int32(b), Cell::Int32(x)) => b.append_value(x),
            (Builder::Int64(b), Cell::Null) => b.append_null(),
            (Builder::Int64(b), Cell::Int64(x)) => b.append_value(x),
            (Builder::Float64(b), Cell::Null) => b.append_null(),
            (Builder::Float64(b), Cell::Float64(x)) => b.append_value(x),
            (Builder::Decimal(b), Cell::Null) => b.append_null(),
            (Builder::Decimal(b), Cell::Decimal(x)) => b.append_value(x),
            (Builder::Date(b), Cell::Null) => b.append_null(),
            (Builder::Date(b), Cell::Date(x)) => b.append_value(x),
            (Builder::Timestamp(b), Cell::Null) => b.append_null(),
            (Builder::Timestamp(b), Cell::Timestamp(x)) => b.append_value(x),
            (Builder::Binary(b), Cell::Null) => b.append_null(),
            (Builder::Binary(b), Cell::Bytes(x)) => b.append_value(x),
            _ => return Err(ArrowError::InvalidArgumentError("a cell of the wrong kind for its column".into())),
        }
        Ok(())
    }

    fn finish(self) -> ArrayRef {
        match self {
            Builder::Utf8(mut b) => Arc::new(b.finish()),
            Builder::Boolean(mut b) => Arc::new(b.finish()),
            Builder::Int32(mut b) => Arc::new(b.finish()),
            Builder::Int64(mut b) => Arc::new(b.finish()),
            Builder::Float64(mut b) => Arc::new(b.finish()),
            Builder::Decimal(mut b) => Arc::new(b.finish()),
            Builder::Date(mut b) => Arc::new(b.finish()),
            Builder::Timestamp(mut b) => Arc::new(b.finish()),
            Builder::Binary(mut b) => Arc::new(b.finish()),
        }
    }
}

#[cfg(test)]
mod tests {
    use indexmap::IndexMap;
    use serde_json::json;
    use tessera_contract::model::FieldPath;
    use tessera_core::{ColumnName, EventTypeName};

    use super::*;
    use crate::rows::append_rows;
    use crate::schema::table_schema;

    fn column(data_type: DataType, required: bool, classification: Option<&str>) -> Column {
        Column {
            data_type,
            required,
            description: None,
            classification: classification.map(str::to_owned),
            justification: None,
            masking: Default::default(),
        }
    }

    /// A table with a column of every kind the decoder writes (required and
    /// not), fed from every kind of source by two event types.
    fn table() -> Table {
        let kinds = [
            DataType::String,
            DataType::Boolean,
            DataType::Int32,
            DataType::Int64,
            DataType::Float64,
            DataType::Decimal { precision: 12, scale: 2 },
            DataType::Decimal { precision: 38, scale: 10 },
            DataType::Date,
            DataType::Timestamp,
        ];
        let mut columns = IndexMap::new();
        let mut a = Assignments::new();
        let mut b = Assignments::new();
        for (i, t) in kinds.iter().enumerate() {
            for required in [false, true] {
                let name = ColumnName::parse(format!("c{i}_{}", u8::from(required))).expect("name");
                columns.insert(name.clone(), column(t.clone(), required, None));
                a.insert(name.clone(), Source::Payload(FieldPath::parse(&format!("f{i}.v")).expect("path")));
                if required {
                    b.insert(name, Source::Metadata(format!("m{i}")));
                }
            }
        }
        let sealed = ColumnName::parse("secret").expect("name");
        columns.insert(sealed.clone(), column(DataType::String, false, Some("pii.email")));
        a.insert(sealed, Source::Payload(FieldPath::parse("secret").expect("path")));
        for (name, field) in [
            ("e_id", EventField::Id),
            ("e_type", EventField::Type),
            ("e_stream", EventField::Stream),
            ("e_version", EventField::Version),
            ("e_position", EventField::Position),
            ("e_recorded", EventField::RecordedAt),
            ("e_schema", EventField::SchemaVersion),
        ] {
            let data_type = match field {
                EventField::Version | EventField::Position | EventField::SchemaVersion => DataType::Int64,
                EventField::RecordedAt => DataType::Timestamp,
                _ => DataType::String,
            };
            let name = ColumnName::parse(name).expect("name");
            columns.insert(name.clone(), column(data_type, true, None));
            a.insert(name.clone(), Source::Event(field));
            b.insert(name, Source::Event(field));
        }
        let literal = ColumnName::parse("lit").expect("name");
        columns.insert(literal.clone(), column(DataType::Decimal { precision: 12, scale: 2 }, false, None));
        b.insert(literal, Source::Literal(json!("12.50")));
        let mut rules = IndexMap::new();
        rules.insert(EventTypeName::parse("A").expect("name"), a);
        rules.insert(EventTypeName::parse("B").expect("name"), b);
        Table { description: None, projection: Projection::Append { rules }, columns, checks: Vec::new() }
    }

    /// A value of any kind, usually one that fits the column `i`, often not.
    fn value(rng: &mut fastrand::Rng, i: usize) -> Value {
        let number = |text: &str| serde_json::from_str::<Value>(text).expect("number");
        if rng.u8(0..100) >= 4 {
            return good(rng, i);
        }
        match rng.u8(0..17) {
            0 => Value::Null,
            1 => json!("text"),
            2 => json!(true),
            3 => json!(rng.i64(..)),
            4 => json!(rng.f64() * 1e6),
            5 => number("12345678901234567.890123456789"),
            6 => number("1e3"),
            7 => json!(["x"]),
            8 => json!({"x": 1}),
            9 => json!("2026-02-30"),
            11 => json!(" 2025-03-01"),
            12 => json!("99-12-31"),
            13 => json!("9999-12-31T23:00:00-02:00"),
            14 => number("1.2345E3"),
            15 => json!("-0012.50"),
            _ => json!("not a time"),
        }
    }

    /// A value that fits column `i`, or nearly (decimals with a digit too
    /// many, dates that do not exist, sometimes).
    fn good(rng: &mut fastrand::Rng, i: usize) -> Value {
        let number = |text: &str| serde_json::from_str::<Value>(text).expect("number");
        match i {
            0 => json!(format!("s{}", rng.u32(..))),
            1 => json!(rng.bool()),
            2 => json!(rng.i32(..)),
            3 => json!(rng.i64(..)),
            4 => number(&format!("{}.{}", rng.i32(..), rng.u32(..))),
            5 => [json!(format!("{}.{:02}", rng.i32(-999_999..999_999), rng.u8(0..100))), number("0.125"), json!(-0.5)][rng.usize(0..3)]
                .clone(),
            6 => number(&format!("{}.{}", rng.i64(..), rng.u32(..))),
            7 => json!(format!("{:04}-{:02}-{:02}", rng.u16(1..3000), rng.u8(1..13), rng.u8(1..29))),
            _ => json!(format!(
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{}{}",
                rng.u16(1700..2200),
                rng.u8(1..13),
                rng.u8(1..29),
                rng.u8(0..24),
                rng.u8(0..60),
                rng.u8(0..60),
                rng.u32(..),
                ["Z", "+01:00", "-09:30"][rng.usize(0..3)]
            )),
        }
    }

    fn events(rng: &mut fastrand::Rng, n: usize) -> Vec<StoredEvent> {
        (0..n)
            .map(|k| {
                let mut payload = serde_json::Map::new();
                let mut metadata = serde_json::Map::new();
                for i in 0..9 {
                    if rng.u8(0..40) > 0 {
                        payload.insert(format!("f{i}"), json!({"v": value(rng, i)}));
                    }
                    if rng.u8(0..40) > 0 {
                        metadata.insert(format!("m{i}"), value(rng, i));
                    }
                }
                if rng.bool() {
                    payload.insert("secret".into(), [json!("ada@example.com"), json!("tsr1.abc"), json!(7)][rng.usize(0..3)].clone());
                }
                let event_type = ["A", "B", "Unprojected"][rng.usize(0..3)].to_owned();
                StoredEvent {
                    position: k as i64 + 1,
                    stream: format!("S-{}", rng.u8(0..4)),
                    version: rng.i64(1..100),
                    id: uuid::Uuid::from_u128(rng.u128(..)),
                    event_type,
                    schema_version: 2,
                    stored_schema_version: 1,
                    payload: Value::Object(payload),
                    metadata: Value::Object(metadata),
                    contract_version: "1.0.0".into(),
                    recorded_at: "2026-01-01T10:00:00.123456Z".into(),
                    upcast_error: (rng.u8(0..20) == 0).then(|| "a step failed".to_owned()),
                }
            })
            .collect()
    }

    /// The property the fast lane rests on: over random events (fitting and
    /// not, from every kind of source, some failed upcasts) cut into random
    /// batches, it gives exactly the batch and the dead letters of the
    /// general path.
    #[test]
    fn the_compiled_decoder_gives_the_general_paths_rows_and_dead_letters() {
        let table = table();
        let schema = table_schema(&table);
        let decoder = AppendDecoder::compile(&table, &schema).expect("every column is one the decoder writes");
        let mut rows_seen = 0;
        for seed in 0..40 {
            let mut rng = fastrand::Rng::with_seed(seed);
            let all = events(&mut rng, 300);
            let mut start = 0;
            while start < all.len() {
                let end = (start + rng.usize(1..120)).min(all.len());
                let chunk = &all[start..end];
                let (rows, general_dead) = append_rows("t", &table, chunk);
                let general = (!rows.is_empty()).then(|| crate::delta::batch("t", &schema, &rows).expect("general path"));
                let (fast, fast_dead) = decoder.decode("t", &table, chunk).expect("fast path");
                assert_eq!(fast_dead, general_dead, "seed {seed}, events {start}..{end}");
                assert_eq!(fast, general, "seed {seed}, events {start}..{end}");
                rows_seen += rows.len();
                start = end;
            }
        }
        assert!(rows_seen > 1000, "the random events project into rows often enough to test anything ({rows_seen})");
    }

    #[test]
    fn tables_with_structs_or_lists_keep_the_general_path() {
        let mut table = table();
        let list = column(DataType::List(Box::new(column(DataType::Int64, true, None))), false, None);
        table.columns.insert(ColumnName::parse("items").expect("name"), list);
        assert!(AppendDecoder::compile(&table, &table_schema(&table)).is_none());
    }
}
