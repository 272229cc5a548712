//! A contract table's columns as an Arrow schema, the schema of its Delta table.

use std::sync::Arc;

use arrow::datatypes::{DataType as Arrow, Field, Fields, Schema, TimeUnit};
use indexmap::IndexMap;
use tessera_contract::model::{Column, DataType, Table};
use tessera_core::ColumnName;

/// The Arrow schema of a table: its columns in contract order; a `required`
/// column is not nullable.
pub fn table_schema(table: &Table) -> Schema {
    Schema::new(fields(&table.columns))
}

fn fields(columns: &IndexMap<ColumnName, Column>) -> Vec<Field> {
    columns.iter().map(|(name, column)| field(name.as_str(), column)).collect()
}

fn field(name: &str, column: &Column) -> Field {
    Field::new(name, arrow_type(&column.data_type), !column.required)
}

/// The Arrow type of a column type. Timestamps are microseconds in UTC (what
/// the Delta protocol's `timestamp` is); dates are days (`date`).
pub fn arrow_type(t: &DataType) -> Arrow {
    match t {
        DataType::String => Arrow::Utf8,
        DataType::Boolean => Arrow::Boolean,
        DataType::Int32 => Arrow::Int32,
        DataType::Int64 => Arrow::Int64,
        DataType::Float64 => Arrow::Float64,
        DataType::Decimal { precision, scale } => Arrow::Decimal128(*precision, i8::try_from(*scale).unwrap_or(i8::MAX)),
        DataType::Date => Arrow::Date32,
        DataType::Timestamp => Arrow::Timestamp(TimeUnit::Microsecond, Some(Arc::from("UTC"))),
        DataType::Struct(columns) => Arrow::Struct(Fields::from(fields(columns))),
        DataType::List(item) => Arrow::List(Arc::new(field("element", item))),
    }
}
