//! A contract table's columns as an Arrow schema, the schema of its Delta table.
//!
//! A **sealed column** (classified, or with a classified field or item: see
//! `tessera_contract::seal`) is stored as `binary`: each cell is the JSON
//! text of the value, with every sealed part a token. The column's type in
//! the contract is kept in the field's metadata ([`SEALED_TYPE`]); readers
//! open the tokens and read the JSON as that type (see
//! [`logical_schema`]). Every other column has its own Arrow type.

use std::sync::Arc;

use arrow::datatypes::{DataType as Arrow, Field, Fields, Schema, TimeUnit};
use indexmap::IndexMap;
use tessera_contract::model::{Column, DataType, Table};
use tessera_core::ColumnName;

/// The field metadata key that holds a sealed column's type in the contract.
pub const SEALED_TYPE: &str = "tessera.sealed";

/// The Arrow schema of a table's Delta table: its columns in contract
/// order, sealed columns as `binary`; a `required` column is not nullable.
pub fn table_schema(table: &Table) -> Schema {
    Schema::new(
        table
            .columns
            .iter()
            .map(|(name, column)| {
                if tessera_contract::seal::is_sealed(column) {
                    Field::new(name.as_str(), Arrow::Binary, !column.required)
                        .with_metadata([(SEALED_TYPE.to_owned(), type_text(&column.data_type))].into())
                } else {
                    field(name.as_str(), column)
                }
            })
            .collect::<Vec<_>>(),
    )
}

/// The Arrow schema of a table as the contract types it (sealed columns
/// opened): what readers see, and what derived queries are planned over.
pub fn logical_schema(table: &Table) -> Schema {
    Schema::new(fields(&table.columns))
}

/// The Arrow field of one column as the contract types it.
pub fn logical_field(name: &str, column: &Column) -> Field {
    field(name, column)
}

/// The sealed columns of a table, by name.
pub fn sealed_columns(table: &Table) -> Vec<&str> {
    table.columns.iter().filter(|(_, c)| tessera_contract::seal::is_sealed(c)).map(|(n, _)| n.as_str()).collect()
}

fn type_text(t: &DataType) -> String {
    match t {
        DataType::String => "string".into(),
        DataType::Boolean => "boolean".into(),
        DataType::Int32 => "int32".into(),
        DataType::Int64 => "int64".into(),
        DataType::Float64 => "float64".into(),
        DataType::Decimal { precision, scale } => format!("decimal({precision},{scale})"),
        DataType::Date => "date".into(),
        DataType::Timestamp => "timestamp".into(),
        DataType::Struct(fields) => {
            format!("struct<{}>", fields.iter().map(|(n, c)| format!("{n}: {}", type_text(&c.data_type))).collect::<Vec<_>>().join(", "))
        }
        DataType::List(item) => format!("list<{}>", type_text(&item.data_type)),
    }
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
