//! The domain model of a data contract: what the rest of the platform uses.
//!
//! Values of these types are well-formed by construction: names are
//! validated newtypes, column types and value sources are enums, and every
//! reference has been resolved by the validator. The model is not the file
//! format (see `wire`); it only knows what a contract means.

use std::collections::BTreeMap;
use std::fmt;

use indexmap::IndexMap;
use serde_json::{Map, Value};
use tessera_core::{ColumnName, DomainName, EventTypeName, ProductName, ProductRef, TableName};

use crate::policy::{Role, Strategy};

/// One data product's contract at one version.
#[derive(Debug, Clone, PartialEq)]
pub struct Contract {
    pub domain: DomainName,
    pub name: ProductName,
    pub version: semver::Version,
    pub title: String,
    pub description: Option<String>,
    pub owner: Owner,
    pub tags: Vec<String>,
    pub status: Status,
    /// How far the tables may lag behind the newest event.
    pub freshness: Option<Freshness>,
    pub events: IndexMap<EventTypeName, EventType>,
    pub tables: IndexMap<TableName, Table>,
}

impl Contract {
    /// `domain/name`.
    pub fn product(&self) -> ProductRef {
        ProductRef { domain: self.domain.clone(), name: self.name.clone() }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Owner {
    pub team: String,
    pub contact: String,
}

/// Where a product is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Status {
    Draft,
    Active,
    Deprecated,
    Retired,
}

impl Status {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "draft" => Self::Draft,
            "active" => Self::Active,
            "deprecated" => Self::Deprecated,
            "retired" => Self::Retired,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Draft => "draft",
            Self::Active => "active",
            Self::Deprecated => "deprecated",
            Self::Retired => "retired",
        }
    }
}

/// A freshness target, kept as written (`15m`) and in seconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Freshness {
    pub text: String,
    pub seconds: u64,
}

impl Freshness {
    /// Parses `<n>s`, `<n>m`, `<n>h` or `<n>d`.
    pub fn parse(text: &str) -> Option<Self> {
        let unit = text.chars().last()?;
        let n: u64 = text[..text.len() - unit.len_utf8()].parse().ok()?;
        let factor = match unit {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => return None,
        };
        Some(Self { text: text.to_owned(), seconds: n.checked_mul(factor)? })
    }
}

/// An event type: its current payload schema and how older payloads upcast.
#[derive(Debug, Clone, PartialEq)]
pub struct EventType {
    pub description: Option<String>,
    /// The current payload schema version, from 1.
    pub version: u32,
    /// Payload path of the identifier of the person the event is about.
    pub subject: Option<FieldPath>,
    /// JSON Schema 2020-12 of the current payload.
    pub schema: Value,
    /// One per older version, ordered by `from`.
    pub upcasters: Vec<Upcaster>,
}

/// A dotted path into a JSON object, e.g. `customer.email`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FieldPath(pub Vec<String>);

impl FieldPath {
    pub fn parse(s: &str) -> Option<Self> {
        let parts: Vec<String> = s.split('.').map(str::to_owned).collect();
        let valid = |p: &String| {
            let mut c = p.chars();
            c.next().is_some_and(|f| f.is_ascii_alphabetic() || f == '_') && c.all(|x| x.is_ascii_alphanumeric() || x == '_')
        };
        parts.iter().all(valid).then_some(Self(parts))
    }
}

impl FieldPath {
    /// The value at this path, if every step is an object that has it.
    pub fn get<'a>(&self, v: &'a Value) -> Option<&'a Value> {
        self.0.iter().try_fold(v, |node, seg| node.as_object()?.get(seg))
    }

    pub fn get_mut<'a>(&self, v: &'a mut Value) -> Option<&'a mut Value> {
        self.0.iter().try_fold(v, |node, seg| node.as_object_mut()?.get_mut(seg))
    }

    /// Removes and returns the value at this path.
    pub fn take(&self, v: &mut Value) -> Option<Value> {
        let (last, parents) = self.0.split_last()?;
        let parent = parents.iter().try_fold(v, |node, seg| node.as_object_mut()?.get_mut(seg))?;
        parent.as_object_mut()?.shift_remove(last)
    }

    /// Sets the value at this path, creating missing parent objects. Fails,
    /// leaving `v` as it was, when the payload or a parent on the way exists
    /// but is not an object.
    pub fn put(&self, v: &mut Value, value: Value) -> Result<(), String> {
        let Some((last, parents)) = self.0.split_last() else { return Ok(()) };
        // Check the whole way first, so that a failure writes nothing.
        let mut probe = Some(&*v);
        for (i, seg) in std::iter::once("").chain(parents.iter().map(String::as_str)).enumerate() {
            let node = if i == 0 { probe } else { probe.and_then(|n| n.get(seg)) };
            if node.is_some_and(|n| !n.is_object()) {
                let at = if i == 0 { "the payload".to_owned() } else { format!("`{}`", parents[..i].join(".")) };
                return Err(format!("cannot create `{self}`: {at} is not an object"));
            }
            probe = node;
        }
        let mut node = v;
        for seg in parents {
            let Value::Object(obj) = node else { return Err(format!("cannot create `{self}`")) };
            node = obj.entry(seg.clone()).or_insert_with(|| Value::Object(Map::new()));
        }
        match node {
            Value::Object(obj) => {
                obj.insert(last.clone(), value);
                Ok(())
            }
            _ => Err(format!("cannot create `{self}`")),
        }
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join("."))
    }
}

/// Turns a payload of version `from` into version `from + 1`.
#[derive(Debug, Clone, PartialEq)]
pub struct Upcaster {
    pub from: u32,
    pub description: Option<String>,
    pub steps: Vec<UpcastStep>,
}

/// One transformation of an upcaster; see `upcast` for the semantics.
#[derive(Debug, Clone, PartialEq)]
pub enum UpcastStep {
    Move { from: FieldPath, to: FieldPath },
    Default { field: FieldPath, value: Value },
    Remove { field: FieldPath },
    Map { field: FieldPath, values: Map<String, Value> },
    Scale { field: FieldPath, by: f64 },
    Cast { field: FieldPath, to: CastType },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CastType {
    String,
    Integer,
    Number,
    Boolean,
}

/// An output table: how it is projected, its columns and its quality checks.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    pub description: Option<String>,
    pub projection: Projection,
    pub columns: IndexMap<ColumnName, Column>,
    pub checks: Vec<Check>,
}

/// How a table is computed.
#[derive(Debug, Clone, PartialEq)]
pub enum Projection {
    /// Current state per key.
    Upsert { key: Vec<ColumnName>, rules: IndexMap<EventTypeName, Rule> },
    /// One row per event.
    Append { rules: IndexMap<EventTypeName, Assignments> },
    /// Derived from the product's other tables.
    Sql { query: String, reads: Vec<TableName> },
}

impl Projection {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Upsert { .. } => "upsert",
            Self::Append { .. } => "append",
            Self::Sql { .. } => "sql",
        }
    }
}

/// What an event does to an upsert table.
#[derive(Debug, Clone, PartialEq)]
pub enum Rule {
    /// Set these columns of the row with the event's key.
    Set(Assignments),
    /// Delete the row with this key (assigns key columns only).
    Delete(Assignments),
}

impl Rule {
    pub fn assignments(&self) -> &Assignments {
        match self {
            Self::Set(a) | Self::Delete(a) => a,
        }
    }
}

/// Columns and where their values come from.
pub type Assignments = IndexMap<ColumnName, Source>;

/// Where a column's value comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    Payload(FieldPath),
    Event(EventField),
    Metadata(String),
    Literal(Value),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Payload(p) => write!(f, "payload.{p}"),
            Self::Event(e) => write!(f, "event.{}", e.as_str()),
            Self::Metadata(k) => write!(f, "metadata.{k}"),
            Self::Literal(v) => write!(f, "{{ value: {v} }}"),
        }
    }
}

/// A field of the event envelope that every event has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventField {
    Id,
    Type,
    Stream,
    Version,
    Position,
    RecordedAt,
    SchemaVersion,
}

impl EventField {
    pub const ALL: [EventField; 7] =
        [Self::Id, Self::Type, Self::Stream, Self::Version, Self::Position, Self::RecordedAt, Self::SchemaVersion];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Id => "id",
            Self::Type => "type",
            Self::Stream => "stream",
            Self::Version => "version",
            Self::Position => "position",
            Self::RecordedAt => "recorded_at",
            Self::SchemaVersion => "schema_version",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.as_str() == s)
    }

    /// The column types this field fits.
    pub fn fits(self, t: &DataType) -> bool {
        match self {
            Self::Id | Self::Type | Self::Stream => matches!(t, DataType::String),
            Self::Version | Self::Position | Self::SchemaVersion => {
                matches!(t, DataType::Int64 | DataType::Decimal { .. } | DataType::String)
            }
            Self::RecordedAt => {
                matches!(t, DataType::Timestamp | DataType::Date | DataType::String)
            }
        }
    }
}

/// A column of an output table, or a field of a struct column.
#[derive(Debug, Clone, PartialEq)]
pub struct Column {
    pub data_type: DataType,
    /// Never null.
    pub required: bool,
    pub description: Option<String>,
    pub classification: Option<String>,
    pub justification: Option<String>,
    /// Tightened masking per role; the rest comes from the global policy.
    pub masking: BTreeMap<Role, Strategy>,
}

/// A column's type.
#[derive(Debug, Clone, PartialEq)]
pub enum DataType {
    String,
    Boolean,
    Int32,
    Int64,
    Float64,
    Decimal { precision: u8, scale: u8 },
    Date,
    Timestamp,
    Struct(IndexMap<ColumnName, Column>),
    List(Box<Column>),
}

impl DataType {
    /// Parses the scalar types; `struct` and `list` are built by the validator.
    pub fn parse_scalar(s: &str) -> Result<Option<Self>, String> {
        Ok(Some(match s {
            "string" => Self::String,
            "boolean" => Self::Boolean,
            "int32" => Self::Int32,
            "int64" => Self::Int64,
            "float64" => Self::Float64,
            "date" => Self::Date,
            "timestamp" => Self::Timestamp,
            "struct" | "list" => return Ok(None),
            other => {
                let inner =
                    other.strip_prefix("decimal(").and_then(|r| r.strip_suffix(')')).ok_or_else(|| format!("unknown type `{other}`"))?;
                let (p, s) = inner.split_once(',').ok_or_else(|| format!("`{other}` needs a precision and a scale"))?;
                let precision: u8 = p.trim().parse().map_err(|_| format!("`{p}` is not a precision"))?;
                let scale: u8 = s.trim().parse().map_err(|_| format!("`{s}` is not a scale"))?;
                if !(1..=38).contains(&precision) {
                    return Err(format!("decimal precision {precision} is outside 1 to 38"));
                }
                if scale > precision {
                    return Err(format!("decimal scale {scale} is larger than its precision {precision}"));
                }
                Self::Decimal { precision, scale }
            }
        }))
    }

    pub fn is_numeric(&self) -> bool {
        matches!(self, Self::Int32 | Self::Int64 | Self::Float64 | Self::Decimal { .. })
    }

    /// Whether values of `self` always fit `wider` without loss.
    pub fn widens_to(&self, wider: &DataType) -> bool {
        use DataType::*;
        match (self, wider) {
            (a, b) if a == b => true,
            (Int32, Int64 | Float64) => true,
            (Int32, Decimal { precision, scale }) => precision.saturating_sub(*scale) >= 10,
            (Int64, Decimal { precision, scale }) => precision.saturating_sub(*scale) >= 19,
            (Decimal { precision: p1, scale: s1 }, Decimal { precision: p2, scale: s2 }) => {
                s2 >= s1 && p2.saturating_sub(*s2) >= p1.saturating_sub(*s1)
            }
            (Date, Timestamp) => true,
            (Struct(a), Struct(b)) => a.iter().all(|(name, col)| {
                b.get(name).is_some_and(|other| col.data_type.widens_to(&other.data_type) && (other.required <= col.required))
            }),
            (List(a), List(b)) => a.data_type.widens_to(&b.data_type),
            _ => false,
        }
    }
}

impl fmt::Display for DataType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::String => f.write_str("string"),
            Self::Boolean => f.write_str("boolean"),
            Self::Int32 => f.write_str("int32"),
            Self::Int64 => f.write_str("int64"),
            Self::Float64 => f.write_str("float64"),
            Self::Decimal { precision, scale } => write!(f, "decimal({precision},{scale})"),
            Self::Date => f.write_str("date"),
            Self::Timestamp => f.write_str("timestamp"),
            Self::Struct(_) => f.write_str("struct"),
            Self::List(item) => write!(f, "list<{}>", item.data_type),
        }
    }
}

/// A quality check, evaluated after each projection.
#[derive(Debug, Clone, PartialEq)]
pub enum Check {
    NotNull(ColumnName),
    Unique(Vec<ColumnName>),
    AcceptedValues { column: ColumnName, values: Vec<Value> },
    Range { column: ColumnName, min: Option<f64>, max: Option<f64> },
    RowCount { min: Option<u64>, max: Option<u64> },
}

impl Check {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::NotNull(_) => "not_null",
            Self::Unique(_) => "unique",
            Self::AcceptedValues { .. } => "accepted_values",
            Self::Range { .. } => "range",
            Self::RowCount { .. } => "row_count",
        }
    }
}
