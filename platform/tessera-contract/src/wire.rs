//! The contract file's shape, as serde reads it: the wire format.
//!
//! These structs mirror `contracts/data-contract.schema.json` one to one and
//! are only ever filled from a document that already passed that schema. They
//! are converted into the domain model (`model`) by `validate`, which is where
//! strings become types, references and enums. Nothing outside this crate
//! sees them.

use indexmap::IndexMap;
use serde::Deserialize;
use serde_json::{Map, Value};

#[derive(Debug, Deserialize)]
pub struct Contract {
    pub domain: String,
    pub name: String,
    pub version: String,
    pub title: String,
    #[serde(default)]
    pub description: Option<String>,
    pub owner: Owner,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub service_levels: Option<ServiceLevels>,
    #[serde(default)]
    pub events: IndexMap<String, Event>,
    pub tables: IndexMap<String, Table>,
}

#[derive(Debug, Deserialize)]
pub struct Owner {
    pub team: String,
    pub contact: String,
}

#[derive(Debug, Deserialize)]
pub struct ServiceLevels {
    #[serde(default)]
    pub freshness: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct Event {
    #[serde(default)]
    pub description: Option<String>,
    pub version: u32,
    #[serde(default)]
    pub subject: Option<String>,
    pub schema: Value,
    #[serde(default)]
    pub upcasters: Vec<Upcaster>,
}

#[derive(Debug, Deserialize)]
pub struct Upcaster {
    pub from: u32,
    #[serde(default)]
    pub description: Option<String>,
    pub steps: Vec<UpcastStep>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpcastStep {
    Move { from: String, to: String },
    Default { field: String, value: Value },
    Remove { field: String },
    Map { field: String, values: Map<String, Value> },
    Scale { field: String, by: f64 },
    Cast { field: String, to: String },
}

#[derive(Debug, Deserialize)]
pub struct Table {
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub upsert: Option<Upsert>,
    #[serde(default)]
    pub append: Option<Append>,
    #[serde(default)]
    pub sql: Option<String>,
    pub columns: IndexMap<String, Column>,
    #[serde(default)]
    pub checks: Vec<Check>,
}

#[derive(Debug, Deserialize)]
pub struct Upsert {
    pub key: Vec<String>,
    pub from: IndexMap<String, Rule>,
}

#[derive(Debug, Deserialize)]
pub struct Append {
    pub from: IndexMap<String, Rule>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    Set(IndexMap<String, Source>),
    Delete(IndexMap<String, Source>),
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Source {
    Reference(String),
    Literal { value: Value },
}

#[derive(Debug, Deserialize)]
pub struct Column {
    #[serde(rename = "type")]
    pub data_type: String,
    #[serde(default)]
    pub required: bool,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub classification: Option<String>,
    #[serde(default)]
    pub justification: Option<String>,
    #[serde(default)]
    pub masking: IndexMap<String, String>,
    #[serde(default)]
    pub fields: Option<IndexMap<String, Column>>,
    #[serde(default)]
    pub items: Option<Box<Column>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Check {
    NotNull(String),
    Unique(Vec<String>),
    AcceptedValues { column: String, values: Vec<Value> },
    Range { column: String, min: Option<f64>, max: Option<f64> },
    RowCount { min: Option<u64>, max: Option<u64> },
}
