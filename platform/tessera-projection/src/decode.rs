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
//!
//! [`AppendDecoder::decode_raw`] reads events as stored ([`RawPage`]):
//! each value is found in the payload's JSON text and read from there (a
//! string in place, a number from the digits as written), with no tree of
//! the payload built and dropped. Any event it cannot take whole (an old
//! schema version to upcast, a value that does not fit, anything unusual)
//! goes through the slow lane: parsed and upcast by the store, then
//! decoded as above, which explains what does not fit. So the fast lane
//! only ever accepts: what it gets wrong can only be an event slowed down.

use std::borrow::Cow;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BinaryBuilder, BooleanBuilder, Date32Builder, Decimal128Builder, Float64Builder, Int32Builder, Int64Builder, RecordBatch,
    StringBuilder, TimestampMicrosecondBuilder,
};
use arrow::datatypes::{Decimal128Type, Schema};
use arrow::error::ArrowError;
use serde_json::Value;
use serde_json::value::RawValue;
use tessera_contract::model::{Assignments, Column, DataType, EventField, FieldPath, Projection, Source, Table};
use tessera_store::{DeadLetter, RawEvent, RawPage, StoredEvent};

use crate::values::{cell, date, decimal_string, decimal_text, sealed_json_text, source_value, timestamp};

/// Where the slow lane gets events parsed and upcast: the page they were
/// read in.
pub trait SlowLane {
    /// Whether the event's payload must be upcast first.
    fn upcast_needed(&self, e: &RawEvent) -> bool;
    /// The event parsed and upcast.
    fn parse(&self, e: &RawEvent) -> StoredEvent;
}

impl SlowLane for RawPage {
    fn upcast_needed(&self, e: &RawEvent) -> bool {
        RawPage::upcast_needed(self, e)
    }

    fn parse(&self, e: &RawEvent) -> StoredEvent {
        RawPage::parse(self, e)
    }
}

/// The decoder of one append table.
#[derive(Debug)]
pub struct AppendDecoder {
    schema: Arc<Schema>,
    columns: Vec<Target>,
}

#[derive(Debug)]
pub(crate) struct Target {
    pub(crate) name: String,
    pub(crate) column: Column,
    pub(crate) kind: Kind,
}

/// What a column holds, as the decoder writes it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Kind {
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
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Cell<'a> {
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

impl Cell<'_> {
    pub(crate) fn into_owned(self) -> Cell<'static> {
        match self {
            Cell::Null => Cell::Null,
            Cell::Text(s) => Cell::Text(Cow::Owned(s.into_owned())),
            Cell::Boolean(x) => Cell::Boolean(x),
            Cell::Int32(x) => Cell::Int32(x),
            Cell::Int64(x) => Cell::Int64(x),
            Cell::Float64(x) => Cell::Float64(x),
            Cell::Decimal(x) => Cell::Decimal(x),
            Cell::Date(x) => Cell::Date(x),
            Cell::Timestamp(x) => Cell::Timestamp(x),
            Cell::Bytes(x) => Cell::Bytes(x),
        }
    }
}

pub(crate) enum Builder {
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

pub(crate) const UNIX_EPOCH_DAYS_FROM_CE: i32 = 719_163;

/// The columns of `table` as the compiled decoders write them; `None` when
/// one needs the general path (a struct or a list).
pub(crate) fn targets(table: &Table) -> Option<Vec<Target>> {
    table
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
        .collect()
}

impl AppendDecoder {
    /// The decoder of `table` (an append table) whose Delta schema is
    /// `schema`; `None` when a column needs the general path.
    pub fn compile(table: &Table, schema: &Schema) -> Option<Self> {
        if !matches!(table.projection, Projection::Append { .. }) {
            return None;
        }
        Some(Self { schema: Arc::new(schema.clone()), columns: targets(table)? })
    }

    /// The rows `events` append to the table `name` (whose spec is
    /// `table`), as one batch (`None` when there are none), and the events
    /// that cannot be projected.
    pub fn decode(&self, name: &str, table: &Table, events: &[StoredEvent]) -> Result<(Option<RecordBatch>, Vec<DeadLetter>), ArrowError> {
        let Projection::Append { rules } = &table.projection else { return Ok((None, Vec::new())) };
        let mut out = Output::new(&self.columns, events.len())?;
        for e in events {
            let Some(assignments) = rules.get(e.event_type.as_str()) else { continue };
            self.decode_parsed(name, assignments, e, &mut out)?;
        }
        out.finish(&self.schema)
    }

    /// [`AppendDecoder::decode`] of `events` (a part of `page`) as stored.
    pub fn decode_raw(
        &self,
        name: &str,
        table: &Table,
        page: &impl SlowLane,
        events: &[RawEvent],
    ) -> Result<(Option<RecordBatch>, Vec<DeadLetter>), ArrowError> {
        let Projection::Append { rules } = &table.projection else { return Ok((None, Vec::new())) };
        let plans = sources(&self.columns, rules.iter().map(|(t, a)| (t.as_str(), a)));
        let mut out = Output::new(&self.columns, events.len())?;
        let mut cells: Vec<Cell<'_>> = Vec::with_capacity(self.columns.len());
        for e in events {
            let (Some(assignments), Some(plan)) = (rules.get(e.event_type.as_str()), plans.get(e.event_type.as_str())) else { continue };
            cells.clear();
            if !page.upcast_needed(e) && self.check_raw(plan, e, &mut cells).is_some() {
                out.push(&mut cells)?;
            } else {
                self.decode_parsed(name, assignments, &page.parse(e), &mut out)?;
            }
        }
        out.finish(&self.schema)
    }

    /// Decodes one parsed event into `out`: its row, or its dead letter.
    fn decode_parsed(&self, name: &str, assignments: &Assignments, e: &StoredEvent, out: &mut Output) -> Result<(), ArrowError> {
        let mut cells = Vec::with_capacity(self.columns.len());
        match self.check(assignments, e, &mut cells) {
            Ok(()) => out.push(&mut cells),
            Err(reason) => {
                out.dead.push(DeadLetter {
                    table: name.to_owned(),
                    position: e.position,
                    stream: e.stream.clone(),
                    event_type: e.event_type.clone(),
                    reason,
                });
                Ok(())
            }
        }
    }

    /// Every column's cell of one stored event, read in place; `None` when
    /// the event must take the slow lane (anything that does not fit, or
    /// is unusual).
    fn check_raw<'a>(&self, plan: &[Option<&'a Source>], e: &'a RawEvent, cells: &mut Vec<Cell<'a>>) -> Option<()> {
        let mut reader = RawReader::new(e);
        for (target, source) in self.columns.iter().zip(plan) {
            let value = match source {
                None => None,
                Some(source) => reader.value(source)?,
            };
            cells.push(target.cell(value)?);
        }
        Some(())
    }

    /// Every column's cell of one event, or why the event cannot be
    /// projected: the first column that does not fit, explained as the
    /// general path explains it.
    fn check<'a>(&self, assignments: &'a Assignments, e: &'a StoredEvent, cells: &mut Vec<Cell<'a>>) -> Result<(), String> {
        if let Some(why) = &e.upcast_error {
            return Err(format!("its payload could not be upcast to schema version {}: {why}", e.schema_version));
        }
        for target in &self.columns {
            cells.push(target.checked(assignments.get(target.name.as_str()), e)?);
        }
        Ok(())
    }
}

/// For each event type, the source of each column (`None`: no rule sets
/// it), looked up once per batch rather than per event.
pub(crate) fn sources<'a>(
    columns: &[Target],
    rules: impl Iterator<Item = (&'a str, &'a Assignments)>,
) -> std::collections::HashMap<&'a str, Vec<Option<&'a Source>>> {
    rules.map(|(event_type, a)| (event_type, columns.iter().map(|c| a.get(c.name.as_str())).collect())).collect()
}

/// One event as stored, its payload's and metadata's members found on
/// first use.
pub(crate) struct RawReader<'a> {
    e: &'a RawEvent,
    payload: Option<Members<'a>>,
    metadata: Option<Members<'a>>,
}

impl<'a> RawReader<'a> {
    pub(crate) fn new(e: &'a RawEvent) -> Self {
        Self { e, payload: None, metadata: None }
    }

    /// The value of `source` (`Some(None)`: none, or null); `None` when the
    /// slow lane must tell.
    pub(crate) fn value(&mut self, source: &'a Source) -> Option<Option<Scalar<'a>>> {
        let e = self.e;
        Some(match source {
            Source::Payload(path) => {
                let members = match &mut self.payload {
                    Some(m) => m,
                    none => none.insert(Members::parse(&e.payload)?),
                };
                match members.path(path)? {
                    Some(raw) => raw_scalar(raw)?,
                    None => None,
                }
            }
            Source::Metadata(key) => {
                let members = match &mut self.metadata {
                    Some(m) => m,
                    none => none.insert(Members::parse(&e.metadata)?),
                };
                match members.get(key) {
                    Some(raw) => raw_scalar(raw)?,
                    None => None,
                }
            }
            Source::Literal(v) => Scalar::of(Cow::Borrowed(v)),
            Source::Event(field) => Some(match field {
                EventField::Id => Scalar::Text(Cow::Owned(e.id().to_string())),
                EventField::Type => Scalar::Text(Cow::Borrowed(e.event_type.as_str())),
                EventField::Stream => Scalar::Text(Cow::Borrowed(e.stream.as_str())),
                EventField::Version => Scalar::Json(Cow::Owned(Value::from(e.version))),
                EventField::Position => Scalar::Json(Cow::Owned(Value::from(e.position))),
                // Not upcast (the slow lane takes those): the stored version is the current one.
                EventField::SchemaVersion => Scalar::Json(Cow::Owned(Value::from(e.schema_version))),
                EventField::RecordedAt => Scalar::Text(Cow::Owned(e.recorded_at_text())),
            }),
        })
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
    /// The cell of a parsed event's value from `source` (`None`: no rule
    /// sets the column), or why it does not fit, explained as the general
    /// path explains it.
    pub(crate) fn checked<'a>(&self, source: Option<&'a Source>, e: &'a StoredEvent) -> Result<Cell<'a>, String> {
        let value = source.and_then(|s| value_of(s, e)).and_then(Scalar::of);
        if let Some(c) = self.cell(value) {
            return Ok(c);
        }
        let why = match cell(source.and_then(|s| source_value(s, e)), &self.column) {
            Err(why) => why,
            // The two lanes disagree: a defect, but the event is still not
            // written half-checked.
            Ok(_) => format!("does not fit type {:?}", self.kind),
        };
        let name = &self.name;
        Err(match source {
            Some(s) => format!("column `{name}` (from {s}) {why}"),
            None => format!("column `{name}` {why}: no rule of this event type sets it"),
        })
    }

    pub(crate) fn builder(&self, capacity: usize) -> Result<Builder, ArrowError> {
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

    /// The checked cell of `value` (`None`: no value), or `None` when it
    /// does not fit (the same test as [`crate::values::cell`]).
    pub(crate) fn cell<'a>(&self, value: Option<Scalar<'a>>) -> Option<Cell<'a>> {
        let Some(v) = value else { return (!self.column.required).then_some(Cell::Null) };
        Some(match (self.kind, v) {
            (Kind::Utf8, Scalar::Text(s)) => Cell::Text(s),
            (Kind::Boolean, Scalar::Json(v)) => Cell::Boolean(v.as_bool()?),
            (Kind::Int32, Scalar::Json(v)) => Cell::Int32(i32::try_from(v.as_i64()?).ok()?),
            (Kind::Int64, Scalar::Json(v)) => Cell::Int64(v.as_i64()?),
            (Kind::Float64, Scalar::Json(v)) if v.is_number() => Cell::Float64(v.as_f64()?),
            (Kind::Decimal { precision, scale }, v) => {
                let text = match v {
                    Scalar::Text(s) => decimal_string(&s, precision, scale),
                    Scalar::Json(v) => decimal_text(&v, precision, scale),
                }
                .ok()?;
                let scale = i8::try_from(scale).ok()?;
                Cell::Decimal(arrow::compute::kernels::cast_utils::parse_decimal::<Decimal128Type>(&text, precision, scale).ok()?)
            }
            (Kind::Date, Scalar::Text(s)) => Cell::Date(chrono::Datelike::num_days_from_ce(&date(&s)?) - UNIX_EPOCH_DAYS_FROM_CE),
            (Kind::Timestamp, Scalar::Text(s)) => Cell::Timestamp(timestamp(&s)?.timestamp_micros()),
            (Kind::Sealed, v) => Cell::Bytes(sealed_json_text(v.into_value(), &self.column).ok()?.into_bytes()),
            _ => return None,
        })
    }
}

/// A value as the decoder reads it (never null): text in place where it can be.
pub(crate) enum Scalar<'a> {
    Text(Cow<'a, str>),
    /// Any other JSON value.
    Json(Cow<'a, Value>),
}

impl<'a> Scalar<'a> {
    /// `None` for null.
    fn of(v: Cow<'a, Value>) -> Option<Self> {
        Some(match v {
            Cow::Borrowed(Value::Null) | Cow::Owned(Value::Null) => return None,
            Cow::Borrowed(Value::String(s)) => Scalar::Text(Cow::Borrowed(s.as_str())),
            Cow::Owned(Value::String(s)) => Scalar::Text(Cow::Owned(s)),
            v => Scalar::Json(v),
        })
    }

    fn into_value(self) -> Value {
        match self {
            Scalar::Text(s) => Value::String(s.into_owned()),
            Scalar::Json(v) => v.into_owned(),
        }
    }
}

/// A JSON value as written, read as a [`Scalar`]: `Some(None)` for null,
/// `None` for what the fast lane leaves to the slow one (objects, arrays).
fn raw_scalar(raw: &RawValue) -> Option<Option<Scalar<'_>>> {
    let text = raw.get();
    Some(match text.as_bytes().first()? {
        b'"' => Some(Scalar::Text(match serde_json::from_str::<&str>(text) {
            Ok(s) => Cow::Borrowed(s),
            // Escapes: the string differs from its text.
            Err(_) => Cow::Owned(serde_json::from_str::<String>(text).ok()?),
        })),
        b'n' => None,
        b'-' | b'0'..=b'9' | b't' | b'f' => Some(Scalar::Json(Cow::Owned(serde_json::from_str::<Value>(text).ok()?))),
        _ => return None,
    })
}

/// The members of a JSON object, each value's text as written, for reading
/// a few of them without building the object. A key given twice is the
/// last one, as when the object is parsed.
struct Members<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'a> Members<'a> {
    /// `None` for text that is not one JSON object.
    fn parse(text: &'a str) -> Option<Self> {
        if !text.trim_start().starts_with('{') {
            return None;
        }
        serde_json::from_str(text).ok()
    }

    fn get(&self, key: &str) -> Option<&'a RawValue> {
        self.0.iter().rev().find(|(k, _)| k == key).map(|(_, v)| *v)
    }

    /// The value at `path` (`Some(None)`: there is none, as
    /// [`FieldPath::get`] finds none); `None` when the fast lane cannot tell.
    fn path(&self, path: &FieldPath) -> Option<Option<&'a RawValue>> {
        let (first, rest) = path.0.split_first()?;
        let Some(mut node) = self.get(first) else { return Some(None) };
        for segment in rest {
            if !node.get().starts_with('{') {
                return Some(None);
            }
            match Members::parse(node.get())?.get(segment) {
                Some(v) => node = v,
                None => return Some(None),
            }
        }
        Some(Some(node))
    }
}

impl<'de> serde::Deserialize<'de> for Members<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
                let mut members = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some(Key(k)) = map.next_key()? {
                    members.push((k, map.next_value::<&'de RawValue>()?));
                }
                Ok(Members(members))
            }
        }
        deserializer.deserialize_map(Visit)
    }
}

/// An object's key, in place unless it has escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> serde::Deserialize<'de> for Key<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a key")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        deserializer.deserialize_str(Visit)
    }
}

/// The rows and dead letters of one decoding.
struct Output {
    builders: Vec<Builder>,
    rows: usize,
    dead: Vec<DeadLetter>,
}

impl Output {
    fn new(columns: &[Target], capacity: usize) -> Result<Self, ArrowError> {
        Ok(Self { builders: columns.iter().map(|c| c.builder(capacity)).collect::<Result<_, _>>()?, rows: 0, dead: Vec::new() })
    }

    /// Appends one row (its cells, taken).
    fn push(&mut self, cells: &mut Vec<Cell<'_>>) -> Result<(), ArrowError> {
        for (builder, c) in self.builders.iter_mut().zip(cells.drain(..)) {
            builder.push(c)?;
        }
        self.rows += 1;
        Ok(())
    }

    fn finish(self, schema: &Arc<Schema>) -> Result<(Option<RecordBatch>, Vec<DeadLetter>), ArrowError> {
        if self.rows == 0 {
            return Ok((None, self.dead));
        }
        let arrays: Vec<ArrayRef> = self.builders.into_iter().map(Builder::finish).collect();
        Ok((Some(RecordBatch::try_new(schema.clone(), arrays)?), self.dead))
    }
}

impl Builder {
    pub(crate) fn push(&mut self, c: Cell<'_>) -> Result<(), ArrowError> {
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

    pub(crate) fn finish(self) -> ArrayRef {
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
pub(crate) mod tests {
    use indexmap::IndexMap;
    use serde_json::json;
    use tessera_contract::model::FieldPath;
    use tessera_core::{ColumnName, EventTypeName};

    use super::*;
    use crate::rows::append_rows;
    use crate::schema::table_schema;

    /// A column of a test table.
    pub(crate) fn column(data_type: DataType, required: bool, classification: Option<&str>) -> Column {
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
            13 => [json!("9999-12-31T23:00:00-02:00"), json!("2026-06-30T23:59:60Z")][rng.usize(0..2)].clone(),
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

    /// The events of [`events`] as the store gives them: payload and
    /// metadata as JSON text (sometimes pretty-printed, with keys and
    /// strings escaped, a key given twice), and, for the slow lane, parsed
    /// back from that text.
    struct Stored {
        raw: Vec<RawEvent>,
        parsed: std::collections::HashMap<i64, StoredEvent>,
        /// Events the slow lane was asked for.
        slow: std::cell::Cell<usize>,
    }

    impl SlowLane for Stored {
        fn upcast_needed(&self, e: &RawEvent) -> bool {
            self.parsed[&e.position].upcast_error.is_some()
        }

        fn parse(&self, e: &RawEvent) -> StoredEvent {
            self.slow.set(self.slow.get() + 1);
            self.parsed[&e.position].clone()
        }
    }

    fn stored(rng: &mut fastrand::Rng, events: Vec<StoredEvent>) -> Stored {
        let text = |rng: &mut fastrand::Rng, v: &Value| {
            let mut t = if rng.u8(0..5) == 0 { serde_json::to_string_pretty(v) } else { serde_json::to_string(v) }.expect("json");
            let changed = match rng.u8(0..8) {
                0 => t.replacen("\"f1\"", "\"f\\u0031\"", 1),
                1 => t.replacen('{', "{\"f2\": {\"v\": \"dup\"}, \"m2\": 5, ", 1),
                2 => t.replacen("\"s", "\"\\u0073\\\"", 1),
                3 => t.replacen("\"v\"", "\"\\u0076\"", 1),
                _ => return t,
            };
            // Still one JSON object (a key added to `{}` is not).
            if serde_json::from_str::<Value>(&changed).is_ok() {
                t = changed;
            }
            t
        };
        let mut raw = Vec::new();
        let mut parsed = std::collections::HashMap::new();
        for mut e in events {
            let payload = text(rng, &e.payload);
            let metadata = text(rng, &e.metadata);
            raw.push(RawEvent {
                position: e.position,
                stream: e.stream.clone(),
                version: e.version,
                id: e.id.as_bytes().to_vec(),
                event_type: e.event_type.clone(),
                schema_version: e.schema_version,
                payload: payload.clone(),
                metadata: metadata.clone(),
                contract_version: e.contract_version.clone(),
                recorded_at: 1_767_261_600_123_456,
            });
            e.payload = serde_json::from_str(&payload).expect("payload");
            e.metadata = serde_json::from_str(&metadata).expect("metadata");
            e.recorded_at = "2026-01-01T10:00:00.123456Z".into();
            e.stored_schema_version = e.schema_version;
            parsed.insert(e.position, e);
        }
        Stored { raw, parsed, slow: std::cell::Cell::new(0) }
    }

    /// The same property for events read as stored: the fast lane reads
    /// values in place from the JSON text, the slow one takes the rest.
    #[test]
    fn the_compiled_decoder_reads_stored_events_as_the_general_path_does() {
        let table = table();
        let schema = table_schema(&table);
        let decoder = AppendDecoder::compile(&table, &schema).expect("every column is one the decoder writes");
        let (mut rows_seen, mut projected, mut slow) = (0, 0, 0);
        for seed in 0..40 {
            let mut rng = fastrand::Rng::with_seed(seed);
            let generated = events(&mut rng, 300);
            let page = stored(&mut rng, generated);
            let mut parsed_here = 0;
            let mut start = 0;
            while start < page.raw.len() {
                let end = (start + rng.usize(1..120)).min(page.raw.len());
                let parsed: Vec<StoredEvent> = page.raw[start..end].iter().map(|e| page.parse(e)).collect();
                parsed_here += parsed.len();
                let (rows, general_dead) = append_rows("t", &table, &parsed);
                let general = (!rows.is_empty()).then(|| crate::delta::batch("t", &schema, &rows).expect("general path"));
                let (fast, fast_dead) = decoder.decode_raw("t", &table, &page, &page.raw[start..end]).expect("fast path");
                assert_eq!(fast_dead, general_dead, "seed {seed}, events {start}..{end}");
                assert_eq!(fast, general, "seed {seed}, events {start}..{end}");
                rows_seen += rows.len();
                start = end;
            }
            // Events the decoder passed to the slow lane (the rest it asked for here).
            slow += page.slow.get() - parsed_here;
            projected += page.raw.iter().filter(|e| e.event_type != "Unprojected").count();
        }
        assert!(rows_seen > 1000, "the random events project into rows often enough to test anything ({rows_seen})");
        assert!(slow * 4 < projected * 3, "the fast lane takes many events whole ({slow} of {projected} took the slow lane)");
    }

    #[test]
    fn tables_with_structs_or_lists_keep_the_general_path() {
        let mut table = table();
        let list = column(DataType::List(Box::new(column(DataType::Int64, true, None))), false, None);
        table.columns.insert(ColumnName::parse("items").expect("name"), list);
        assert!(AppendDecoder::compile(&table, &table_schema(&table)).is_none());
    }
}
