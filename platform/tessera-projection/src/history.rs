//! Time travel: a table as it was at a Delta version, at a time, or at any
//! position of the event log.
//!
//! Every commit of the projector is a table version and records the log
//! position it applied (see [`crate::delta`]). Reading at a position starts
//! from the newest version at or before it and replays only the events
//! after that version, in memory: the versions are the snapshots, and only
//! the tail is replayed.

use std::collections::HashSet;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::Schema;
use deltalake::datafusion::prelude::SessionContext;
use deltalake::{DeltaTable, DeltaTableBuilder};
use futures::TryStreamExt as _;
use indexmap::IndexMap;
use serde_json::{Map, Value};
use tessera_contract::Contract;
use tessera_contract::model::{Projection, Table};
use tessera_store::{Store, StoredEvent};
use url::Url;

use crate::delta::{self, POSITION_KEY};
use crate::fold::KeyChange;
use crate::projector::{Error, conform};
use crate::rows::{Upserts, append_rows};
use crate::schema::table_schema;
use crate::values::cell;
use crate::warehouse::Warehouse;

/// One version of a table.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Commit {
    pub version: u64,
    /// Milliseconds since the epoch, as the commit records it.
    pub timestamp: Option<i64>,
    /// The last log position the version reflects (0 for the empty table
    /// the first version creates).
    pub position: Option<i64>,
    pub operation: Option<String>,
}

fn failed(url: &Url) -> impl Fn(deltalake::DeltaTableError) -> Error + '_ {
    move |source| Error::from(delta::Error::Delta { url: url.to_string(), source })
}

fn query(table: &str) -> impl Fn(deltalake::datafusion::error::DataFusionError) -> Error + '_ {
    move |e| Error::from(delta::Error::Query { table: table.to_owned(), message: e.to_string() })
}

/// Every version of the table at `url` still in its log, oldest first.
pub async fn commits(url: &Url) -> Result<Vec<Commit>, Error> {
    let table = deltalake::open_table(url.clone()).await.map_err(failed(url))?;
    let latest = table.version().unwrap_or(0);
    let infos: Vec<_> = table.history(None).try_collect().await.map_err(failed(url))?;
    // Newest first, without gaps.
    let mut out: Vec<Commit> = infos
        .into_iter()
        .enumerate()
        .filter_map(|(i, info)| {
            let version = latest.checked_sub(u64::try_from(i).ok()?)?;
            Some(Commit {
                version,
                timestamp: info.timestamp,
                position: info.info.get(POSITION_KEY).and_then(Value::as_i64),
                operation: info.operation,
            })
        })
        .rev()
        .collect();
    // A version that is not the projector's (creation, compaction, added
    // columns) holds the rows of the version before it.
    let mut last = 0;
    for c in &mut out {
        last = *c.position.get_or_insert(last);
    }
    Ok(out)
}

/// The table at `url` as of Delta version `version`.
pub async fn at_version(url: &Url, version: u64) -> Result<DeltaTable, Error> {
    DeltaTableBuilder::from_url(url.clone()).map_err(failed(url))?.with_version(version).load().await.map_err(failed(url))
}

/// The table at `url` as of `time`: its newest version whose commit time
/// (as the commit records it, in milliseconds) is at or before then.
pub async fn at_timestamp(url: &Url, time: chrono::DateTime<chrono::Utc>) -> Result<DeltaTable, Error> {
    let ms = time.timestamp_millis();
    let versions = commits(url).await?;
    let Some(version) = versions.iter().filter(|c| c.timestamp.is_some_and(|t| t <= ms)).map(|c| c.version).max() else {
        let first = versions.first().and_then(|c| c.timestamp).and_then(chrono::DateTime::from_timestamp_millis);
        return Err(Error::Derived {
            table: url.to_string(),
            message: format!(
                "the table has no version as old as {time}{}",
                first.map(|f| format!("; its oldest readable version is from {f}")).unwrap_or_default()
            ),
        });
    };
    at_version(url, version).await
}

/// Every row of a loaded table version.
pub async fn scan(name: &str, table: &DeltaTable) -> Result<Vec<RecordBatch>, Error> {
    let ctx = SessionContext::new();
    let provider = table.table_provider().await.map_err(query(name))?;
    ctx.read_table(provider).map_err(query(name))?.collect().await.map_err(query(name))
}

/// Table `table` of the product, as it was when the log ended at
/// `position`: the newest version at or before the position, plus the
/// events after it, replayed.
pub async fn at_position(
    store: &Store,
    warehouse: &Warehouse,
    contract: &Contract,
    table: &str,
    position: i64,
) -> Result<Vec<RecordBatch>, Error> {
    let spec = contract.tables.get(table).ok_or_else(|| Error::Derived {
        table: table.to_owned(),
        message: format!("{}/{} has no table `{table}`", contract.domain, contract.name),
    })?;
    let schema = table_schema(spec);
    if let Projection::Sql { query: sql, reads } = &spec.projection {
        let ctx = SessionContext::new();
        for input in reads {
            let batches = Box::pin(at_position(store, warehouse, contract, input.as_str(), position)).await?;
            let input_schema = Arc::new(table_schema(&contract.tables[input]));
            let mem = deltalake::datafusion::datasource::MemTable::try_new(input_schema, vec![batches]).map_err(query(table))?;
            ctx.register_table(input.as_str(), Arc::new(mem)).map_err(query(table))?;
        }
        let out = ctx.sql(sql).await.map_err(query(table))?.collect().await.map_err(query(table))?;
        return conform(&schema, out).map_err(|message| Error::Derived { table: table.to_owned(), message });
    }

    let (domain, name) = (contract.domain.as_str(), contract.name.as_str());
    let url = warehouse.table_url(domain, name, contract.version.major, table);
    let base = commits(&url).await?.into_iter().rfind(|c| c.position.is_some_and(|p| p <= position));
    let (base_rows, from) = match &base {
        Some(c) => (scan(table, &at_version(&url, c.version).await?).await?, c.position.unwrap_or(0)),
        None => (Vec::new(), 0),
    };
    let tail = events_between(store, domain, name, from, position).await?;
    match &spec.projection {
        Projection::Append { .. } => {
            let (rows, _) = append_rows(table, spec, &tail);
            let mut out = base_rows;
            if !rows.is_empty() {
                out.push(delta::batch(table, &schema, &rows)?);
            }
            Ok(out)
        }
        Projection::Upsert { key, .. } => {
            let mut state = keyed(table, spec, &schema, key, &base_rows)?;
            let upserts = Upserts::prepare(table, spec, &tail);
            let existing: HashSet<String> =
                upserts.lookups(key, &crate::fold::Fold::default()).into_iter().map(|(k, _)| k).filter(|k| state.contains_key(k)).collect();
            let (fold, _) = upserts.fold(&existing);
            for (k, change) in fold.into_changes() {
                match change {
                    KeyChange::Patch(cells) => state.entry(k).or_default().extend(cells),
                    KeyChange::Replace(cells) => {
                        state.insert(k, cells);
                    }
                    KeyChange::Delete => {
                        state.shift_remove(&k);
                    }
                }
            }
            let rows: Vec<Value> = state.into_values().map(Value::Object).collect();
            Ok(vec![delta::batch(table, &schema, &rows)?])
        }
        Projection::Sql { .. } => Ok(Vec::new()),
    }
}

/// One stream's rows in each table, as they were when the log ended at
/// `position`: for an upsert table, the rows of the keys its events touch;
/// for an append table, the rows its events appended. Derived tables hold
/// no entity's rows and are left out.
pub async fn stream_state(
    store: &Store,
    warehouse: &Warehouse,
    contract: &Contract,
    stream: &str,
    position: i64,
) -> Result<IndexMap<String, Vec<Map<String, Value>>>, Error> {
    let (domain, name) = (contract.domain.as_str(), contract.name.as_str());
    let events = store.stream_until(domain, name, stream, position).await?;
    let mut out = IndexMap::new();
    for (table, spec) in &contract.tables {
        let schema = table_schema(spec);
        let rows = match &spec.projection {
            Projection::Sql { .. } => continue,
            Projection::Append { .. } => {
                let (rows, _) = append_rows(table.as_str(), spec, &events);
                let batch = delta::batch(table.as_str(), &schema, &rows)?;
                json_rows(table.as_str(), &schema, &[batch])?
            }
            Projection::Upsert { key, .. } => {
                let keys = Upserts::prepare(table.as_str(), spec, &events).keys();
                if keys.is_empty() {
                    Vec::new()
                } else {
                    let batches = at_position(store, warehouse, contract, table.as_str(), position).await?;
                    keyed(table.as_str(), spec, &schema, key, &batches)?
                        .into_iter()
                        .filter(|(k, _)| keys.contains(k))
                        .map(|(_, r)| r)
                        .collect()
                }
            }
        };
        let rows = rows
            .into_iter()
            .map(|mut r| schema.fields().iter().map(|f| (f.name().clone(), r.remove(f.name()).unwrap_or(Value::Null))).collect())
            .collect();
        out.insert(table.to_string(), rows);
    }
    Ok(out)
}

/// The product's events after `after` up to `until`, upcast.
pub async fn events_between(store: &Store, domain: &str, name: &str, after: i64, until: i64) -> Result<Vec<StoredEvent>, Error> {
    let mut out = Vec::new();
    let mut cursor = after;
    while cursor < until {
        let page = store.log_after(domain, name, cursor, until, tessera_store::log::MAX_PLATFORM_READ).await?;
        if page.events.is_empty() {
            break;
        }
        cursor = page.next_after;
        out.extend(page.events);
    }
    Ok(out)
}

/// An upsert table's rows by key text (as [`Upserts`] writes keys).
fn keyed(
    name: &str,
    spec: &Table,
    schema: &Schema,
    key: &[tessera_core::ColumnName],
    batches: &[RecordBatch],
) -> Result<IndexMap<String, Map<String, Value>>, Error> {
    let mut out = IndexMap::new();
    for row in json_rows(name, schema, batches)? {
        let key_cells: Vec<Value> = key
            .iter()
            .map(|k| {
                let column = &spec.columns[k];
                // A sealed cell reads back as it was written (see `values::cell`).
                if tessera_contract::seal::is_sealed(column) {
                    row.get(k.as_str()).cloned().unwrap_or(Value::Null)
                } else {
                    cell(row.get(k.as_str()).cloned(), column).unwrap_or(Value::Null)
                }
            })
            .collect();
        out.insert(Value::from(key_cells).to_string(), row);
    }
    Ok(out)
}

/// Rows as JSON objects (null cells left out), in the form the Arrow JSON
/// decoder reads back.
pub fn json_rows(name: &str, schema: &Schema, batches: &[RecordBatch]) -> Result<Vec<Map<String, Value>>, Error> {
    let bad = |message: String| Error::from(delta::Error::Rows { table: name.to_owned(), message });
    let conformed = conform(schema, batches.to_vec()).map_err(bad)?;
    let mut writer = arrow::json::ArrayWriter::new(Vec::new());
    for b in &conformed {
        writer.write(b).map_err(|e| bad(e.to_string()))?;
    }
    writer.finish().map_err(|e| bad(e.to_string()))?;
    let bytes = writer.into_inner();
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    let rows: Vec<Map<String, Value>> = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
    Ok(rows)
}
