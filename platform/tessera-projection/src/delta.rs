//! Delta tables: creating them, committing a run's rows together with the
//! last log position it applied (the protocol's `txn` action), and reading
//! that position back, so that a restart resumes exactly where the data is.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Field, Schema};
use deltalake::datafusion::prelude::SessionContext;
use deltalake::kernel::engine::arrow_conversion::TryIntoKernel as _;
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake::kernel::{StructType, Transaction};
use deltalake::protocol::DeltaOperation;
use deltalake::protocol::SaveMode;
use deltalake::{DeltaTable, DeltaTableError};
use serde_json::{Map, Value};
use tessera_core::ColumnName;
use url::Url;

use crate::fold::{Fold, KeyChange};

/// What went wrong with a Delta table.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Delta table {url}: {source}")]
    Delta { url: String, source: DeltaTableError },
    #[error("table {table} has no Delta schema: {message}")]
    Schema { table: String, message: String },
    #[error("rows of table {table} do not fit its schema: {message}")]
    Rows { table: String, message: String },
    #[error("querying table {table}: {message}")]
    Query { table: String, message: String },
}

/// How many times this process has changed a table, any table: the query
/// engine keeps table snapshots, and looks at a table's log again at once
/// when this moved (and otherwise only at its poll interval, for changes
/// made by other processes).
static CHANGES: AtomicU64 = AtomicU64::new(0);

/// The number of table changes this process made so far (see [`CHANGES`]).
pub fn changes() -> u64 {
    CHANGES.load(Ordering::Acquire)
}

/// Counts a change when the function that may change a table returns,
/// however it returns (a failed commit may have written its log entry).
struct Changed;

impl Drop for Changed {
    fn drop(&mut self) {
        CHANGES.fetch_add(1, Ordering::AcqRel);
    }
}

fn delta(url: &Url) -> impl FnOnce(DeltaTableError) -> Error + '_ {
    move |source| Error::Delta { url: url.to_string(), source }
}

/// Opens the table at `url`, creating it with `schema` if there is none, and
/// adding the columns of `schema` it lacks (a minor contract version that
/// adds columns evolves the table in place; added columns are nullable).
pub async fn open_or_create(url: &Url, name: &str, schema: &Schema) -> Result<DeltaTable, Error> {
    let _changed = Changed;
    let kernel: StructType = schema.try_into_kernel().map_err(|e| Error::Schema { table: name.to_owned(), message: e.to_string() })?;
    if url.scheme() == "file"
        && let Ok(path) = url.to_file_path()
    {
        // Object stores have no directories; a local one must exist.
        std::fs::create_dir_all(&path)
            .map_err(|e| Error::Schema { table: name.to_owned(), message: format!("cannot create {}: {e}", path.display()) })?;
    }
    // Statistics (min/max in `_delta_log`) for every column but the sealed
    // ones: a sealed column's bytes are tokens, and none leave its file.
    let sealed: Vec<&str> =
        schema.fields().iter().filter(|f| f.metadata().contains_key(crate::schema::SEALED_TYPE)).map(|f| f.name().as_str()).collect();
    let stats_columns = schema.fields().iter().map(|f| f.name().as_str()).filter(|n| !sealed.contains(n)).collect::<Vec<_>>().join(",");
    let mut create = DeltaTable::try_from_url(url.clone())
        .await
        .map_err(delta(url))?
        .create()
        .with_table_name(name)
        .with_columns(kernel.fields().cloned())
        .with_save_mode(SaveMode::Ignore);
    if !sealed.is_empty() {
        create = create.with_configuration_property(deltalake::TableProperty::DataSkippingStatsColumns, Some(stats_columns.clone()));
    }
    let mut table = create.await.map_err(delta(url))?;
    let configured: Option<Vec<String>> = table
        .snapshot()
        .map_err(delta(url))?
        .table_config()
        .data_skipping_stats_columns
        .as_ref()
        .map(|columns| columns.iter().map(|c| c.to_string()).collect());
    // A table made before its columns were sealed, or one that gained a sealed column.
    let stale = match &configured {
        None => !sealed.is_empty(),
        Some(columns) => columns.iter().any(|c| sealed.contains(&c.as_str())),
    };
    if stale {
        table = table.set_tbl_properties().with_properties([(STATS_COLUMNS.to_owned(), stats_columns)].into()).await.map_err(delta(url))?;
    }
    let current = table.snapshot().map_err(delta(url))?.schema();
    let missing: Vec<_> = kernel.fields().filter(|f| current.field(f.name()).is_none()).cloned().collect();
    if missing.is_empty() {
        return Ok(table);
    }
    if let Some(f) = missing.iter().find(|f| !f.is_nullable()) {
        return Err(Error::Schema {
            table: name.to_owned(),
            message: format!(
                "column `{}` is required but the table exists without it; a required column can only come with a new major version",
                f.name()
            ),
        });
    }
    tracing::info!(table = name, columns = ?missing.iter().map(|f| f.name()).collect::<Vec<_>>(), "adding columns");
    table.add_columns().with_fields(missing).await.map_err(delta(url))
}

/// The table property naming the columns that get statistics.
const STATS_COLUMNS: &str = "delta.dataSkippingStatsColumns";

/// The columns of `schema` whose type differs from the table's: a minor
/// contract version that widens a column's type needs the table rewritten
/// (see [`crate::Projector::rebuild`]).
pub fn type_changes(table: &DeltaTable, url: &Url, name: &str, schema: &Schema) -> Result<Vec<String>, Error> {
    let wanted: StructType = schema.try_into_kernel().map_err(|e| Error::Schema { table: name.to_owned(), message: e.to_string() })?;
    let current = table.snapshot().map_err(delta(url))?.schema();
    Ok(wanted
        .fields()
        .filter(|f| current.field(f.name()).is_some_and(|c| c.data_type() != f.data_type()))
        .map(|f| f.name().to_string())
        .collect())
}

/// The last log position committed to the table by `app_id`, if any.
pub async fn applied(table: &DeltaTable, url: &Url, app_id: &str) -> Result<Option<i64>, Error> {
    let snapshot = table.snapshot().map_err(delta(url))?;
    snapshot.transaction_version(table.log_store().as_ref(), app_id).await.map_err(delta(url))
}

/// JSON rows (already checked cell by cell, see `values`) as one Arrow batch.
pub fn batch(table: &str, schema: &Schema, rows: &[Value]) -> Result<RecordBatch, Error> {
    let failed = |e: arrow::error::ArrowError| Error::Rows { table: table.to_owned(), message: e.to_string() };
    Ok(crate::values::json_batch(schema, rows).map_err(failed)?.unwrap_or_else(|| RecordBatch::new_empty(Arc::new(schema.clone()))))
}

/// What every commit of the projector carries: the last log position it
/// applies, as the Delta protocol's transaction identifier of `app_id`, and
/// the contract version, in the commit info.
fn commit_properties(app_id: &str, position: i64, contract_version: &str) -> CommitProperties {
    CommitProperties::default().with_application_transaction(Transaction::new(app_id, position)).with_metadata([
        (POSITION_KEY.to_owned(), Value::from(position)),
        ("tessera.contract_version".to_owned(), Value::from(contract_version)),
    ])
}

/// The commit-info key under which a commit records its position.
pub const POSITION_KEY: &str = "tessera.position";

/// Appends `batches` and records, in the same commit, that the log is
/// applied up to `position` for `app_id`.
pub async fn append(
    table: DeltaTable,
    url: &Url,
    batches: Vec<RecordBatch>,
    app_id: &str,
    position: i64,
    contract_version: &str,
) -> Result<DeltaTable, Error> {
    append_keyed(table, url, batches, &[], app_id, position, contract_version).await
}

/// [`append`] into a table with a key (an upsert table's first rows): the
/// files get a bloom filter on the key.
async fn append_keyed(
    table: DeltaTable,
    url: &Url,
    batches: Vec<RecordBatch>,
    key: &[ColumnName],
    app_id: &str,
    position: i64,
    contract_version: &str,
) -> Result<DeltaTable, Error> {
    let _changed = Changed;
    table
        .write(batches)
        .with_save_mode(SaveMode::Append)
        .with_writer_properties(layout(key))
        .with_commit_properties(commit_properties(app_id, position, contract_version))
        .await
        .map_err(delta(url))
}

/// Replaces the table's rows with `batches` (a derived table, or a
/// rebuild), recording the position like [`append`].
pub async fn overwrite(
    table: DeltaTable,
    url: &Url,
    batches: Vec<RecordBatch>,
    app_id: &str,
    position: i64,
    contract_version: &str,
) -> Result<DeltaTable, Error> {
    let _changed = Changed;
    table
        .write(batches)
        .with_save_mode(SaveMode::Overwrite)
        .with_writer_properties(layout(&[]))
        .with_commit_properties(commit_properties(app_id, position, contract_version))
        .await
        .map_err(delta(url))
}

/// Records that the log is applied up to `position` without changing any
/// row: a commit with only the `txn` action (for a run whose events gave a
/// table nothing but dead letters, so that they are not read again).
pub async fn mark(table: DeltaTable, url: &Url, app_id: &str, position: i64, contract_version: &str) -> Result<DeltaTable, Error> {
    let _changed = Changed;
    let operation = DeltaOperation::Write { mode: SaveMode::Append, partition_by: None, predicate: None };
    {
        let snapshot = table.snapshot().map_err(delta(url))?;
        CommitBuilder::from(commit_properties(app_id, position, contract_version))
            .build(Some(snapshot), table.log_store(), operation)
            .await
            .map_err(delta(url))?;
    }
    let mut table = table;
    table.load().await.map_err(delta(url))?;
    Ok(table)
}

/// Replaces the table's rows with those of `source` (a rebuilt copy) in
/// one commit, recording `position` like [`append`]: readers see the old
/// rows or the new ones, never a mix. The rows stream from one table to
/// the other; memory stays bounded whatever their size.
pub async fn replace_with(
    table: DeltaTable,
    url: &Url,
    source: &DeltaTable,
    app_id: &str,
    position: i64,
    contract_version: &str,
) -> Result<DeltaTable, Error> {
    let _changed = Changed;
    let name = url.path().rsplit('/').find(|s| !s.is_empty()).unwrap_or("table").to_owned();
    let query = |e: deltalake::datafusion::error::DataFusionError| Error::Query { table: name.clone(), message: e.to_string() };
    let ctx = session();
    let rows = ctx.read_table(source.table_provider().await.map_err(query)?).map_err(query)?;
    table
        .write(Vec::new())
        .with_input_plan(rows.into_unoptimized_plan())
        .with_save_mode(SaveMode::Overwrite)
        // A rebuild may follow a contract that changed a column's type.
        .with_schema_mode(deltalake::operations::write::SchemaMode::Overwrite)
        .with_commit_properties(commit_properties(app_id, position, contract_version))
        .await
        .map_err(delta(url))
}

/// Deletes every object of a table (a rebuild's scratch copy).
pub async fn remove_all(table: &DeltaTable) -> Result<(), object_store::Error> {
    let _changed = Changed;
    use futures::TryStreamExt as _;
    use object_store::ObjectStoreExt as _;
    let store = table.object_store();
    let paths: Vec<_> = store.list(None).map_ok(|m| m.location).try_collect().await?;
    for p in paths {
        store.delete(&p).await?;
    }
    Ok(())
}

/// Rewrites small files into larger ones (a new version with the same rows).
pub async fn compact(table: DeltaTable, url: &Url, key: &[ColumnName]) -> Result<(DeltaTable, Value), Error> {
    let _changed = Changed;
    // An upsert table is rewritten in key order (Z-order on one key is the
    // key's order; on several, their interleaving), so that each file and
    // row group holds a narrow range of keys and a lookup by key prunes to
    // one of each. Compaction without a key keeps the rows' order.
    let kind = if key.is_empty() {
        deltalake::operations::optimize::OptimizeType::Compact
    } else {
        deltalake::operations::optimize::OptimizeType::ZOrder(key.iter().map(|c| c.as_str().to_owned()).collect())
    };
    let (table, metrics) = table.optimize().with_type(kind).with_writer_properties(layout(key)).await.map_err(delta(url))?;
    let report = serde_json::json!({"files_added": metrics.num_files_added, "files_removed": metrics.num_files_removed});
    Ok((table, report))
}

/// Rows per row group of every file the projector writes: small enough
/// that a lookup by key reads one group of a file, not the whole file
/// (DuckDB's own row groups hold 122,880 rows).
pub const ROW_GROUP_ROWS: usize = 128 * 1024;

/// Rows per data page: the page index then narrows a lookup further.
pub const PAGE_ROWS: usize = 4 * 1024;

/// The largest dictionary page of a column chunk (parquet's default: 1 MiB).
pub const DICTIONARY_PAGE_BYTES: usize = 64 * 1024;

/// How the projector writes Parquet (appends, merges, overwrites and
/// compaction): snappy (cheap to decompress for lookups), row groups of
/// [`ROW_GROUP_ROWS`], pages of at most [`PAGE_ROWS`] rows with their
/// statistics in the page index, dictionaries of at most
/// [`DICTIONARY_PAGE_BYTES`], and each key column with a bloom filter and
/// without a dictionary (its values are distinct).
fn layout(key: &[ColumnName]) -> deltalake::parquet::file::properties::WriterProperties {
    use deltalake::parquet::basic::Compression;
    use deltalake::parquet::file::properties::{EnabledStatistics, WriterProperties};
    use deltalake::parquet::schema::types::ColumnPath;
    let mut builder = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .set_data_page_row_count_limit(PAGE_ROWS)
        .set_statistics_enabled(EnabledStatistics::Page)
        // A column of mostly distinct values (keys, ids, sealed tokens)
        // falls back to plain encoding early: its dictionary page would be
        // read and decompressed whole for any one row of the row group.
        .set_dictionary_page_size_limit(DICTIONARY_PAGE_BYTES);
    for column in key {
        let path = ColumnPath::from(column.as_str().to_owned());
        builder = builder.set_column_bloom_filter_enabled(path.clone(), true).set_column_dictionary_enabled(path, false);
    }
    builder.build()
}

/// Deletes the files no version younger than `retention` needs: time
/// travel keeps working inside the window.
pub async fn vacuum(table: DeltaTable, url: &Url, retention: std::time::Duration) -> Result<(DeltaTable, Value), Error> {
    let _changed = Changed;
    let retention = chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::days(7));
    let (table, metrics) =
        table.vacuum().with_retention_period(retention).with_enforce_retention_duration(false).await.map_err(delta(url))?;
    Ok((table, serde_json::json!({"files_deleted": metrics.files_deleted.len()})))
}

/// Deletes every earlier version of `table`: the data files the current
/// version does not read, and the commits before a checkpoint of it (their
/// statistics). For a table that held personal values in clear before they
/// were sealed: nothing of them may stay in the warehouse; time travel then
/// starts at the current version.
pub async fn purge_history(table: DeltaTable, url: &Url) -> Result<DeltaTable, Error> {
    let _changed = Changed;
    let (table, _) =
        table.vacuum().with_retention_period(chrono::Duration::zero()).with_enforce_retention_duration(false).await.map_err(delta(url))?;
    deltalake::checkpoints::create_checkpoint(&table, None).await.map_err(delta(url))?;
    let version = table.version().unwrap_or(0);
    // Every commit before the checkpoint, whatever its age.
    let cutoff = chrono::Utc::now().timestamp_millis() + 60_000;
    deltalake::checkpoints::cleanup_expired_logs_for(version, table.log_store().as_ref(), cutoff, None).await.map_err(delta(url))?;
    let mut table = table;
    table.load().await.map_err(delta(url))?;
    Ok(table)
}

/// A DataFusion session for the projector's own queries.
fn session() -> SessionContext {
    SessionContext::new()
}

fn quoted(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Which of `lookups` (key text and key cells, see
/// [`crate::rows::Upserts::lookups`]) have a row in the table.
pub async fn existing_keys(
    table: &DeltaTable,
    url: &Url,
    schema: &Schema,
    key: &[ColumnName],
    lookups: &[(String, Map<String, Value>)],
) -> Result<HashSet<String>, Error> {
    if lookups.is_empty() || table.snapshot().map_err(delta(url))?.log_data().num_files() == 0 {
        return Ok(HashSet::new());
    }
    let name = url.path().rsplit('/').find(|s| !s.is_empty()).unwrap_or("table").to_owned();
    let mut fields = Vec::new();
    for k in key {
        let f = schema.field_with_name(k.as_str()).map_err(|e| Error::Schema { table: name.clone(), message: e.to_string() })?;
        fields.push(f.clone().with_nullable(true));
    }
    fields.push(Field::new(KEY_TEXT, DataType::Utf8, false));
    let probe_schema = Schema::new(fields);
    let rows: Vec<Value> = lookups
        .iter()
        .map(|(text, cells)| {
            let mut row = cells.clone();
            row.insert(KEY_TEXT.to_owned(), Value::from(text.as_str()));
            Value::Object(row)
        })
        .collect();
    let probe = batch(&name, &probe_schema, &rows)?;
    let ctx = session();
    let query = |e: deltalake::datafusion::error::DataFusionError| Error::Query { table: name.clone(), message: e.to_string() };
    ctx.register_table("target", table.table_provider().await.map_err(query)?).map_err(query)?;
    ctx.register_batch("probe", probe).map_err(query)?;
    let on = key.iter().map(|k| format!("probe.{c} = target.{c}", c = quoted(k.as_str()))).collect::<Vec<_>>().join(" AND ");
    let sql = format!("SELECT DISTINCT probe.{KEY_TEXT} FROM probe JOIN target ON {on}");
    let found = ctx.sql(&sql).await.map_err(query)?.collect().await.map_err(query)?;
    let mut out = HashSet::new();
    for b in found {
        let column =
            arrow::compute::cast(b.column(0), &DataType::Utf8).map_err(|e| Error::Query { table: name.clone(), message: e.to_string() })?;
        if let Some(strings) = column.as_any().downcast_ref::<arrow::array::StringArray>() {
            out.extend(strings.iter().flatten().map(str::to_owned));
        }
    }
    Ok(out)
}

/// The probe's column holding each key as text.
const KEY_TEXT: &str = "__tessera_key";
/// The merge source's column saying what happens to the row.
const OP: &str = "__tessera_op";
/// The merge source's prefix of the columns saying whether a patch sets a column.
const SETS: &str = "__tessera_sets_";

/// Applies the net changes of a run to an upsert table as one MERGE (to an
/// empty table, as a plain append), recording the position like
/// [`append`]. Every row the fold creates is complete (see [`Fold`]).
#[allow(clippy::too_many_arguments)]
pub async fn merge(
    table: DeltaTable,
    url: &Url,
    schema: &Schema,
    key: &[ColumnName],
    changes: Changes<'_>,
    app_id: &str,
    position: i64,
    contract_version: &str,
) -> Result<DeltaTable, Error> {
    let _changed = Changed;
    let name = url.path().rsplit('/').find(|s| !s.is_empty()).unwrap_or("table").to_owned();
    if table.snapshot().map_err(delta(url))?.log_data().num_files() == 0 {
        // Nothing to match: the rows the fold creates, appended. (Every one
        // is complete; a delete of a row that is not there changes nothing.)
        let Some(rows) = changes.rows(&name, schema, key)? else { return mark(table, url, app_id, position, contract_version).await };
        return append_keyed(table, url, vec![rows], key, app_id, position, contract_version).await;
    }
    let source = changes.merge_source(&name, schema, key)?;
    let is_key = |c: &str| key.iter().any(|k| k.as_str() == c);
    let others: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).filter(|c| !is_key(c)).collect();
    let query = |e: deltalake::datafusion::error::DataFusionError| Error::Query { table: name.clone(), message: e.to_string() };
    let source = session().read_batch(source).map_err(query)?;

    let all: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
    let on = key.iter().map(|k| format!("target.{c} = source.{c}", c = quoted(k.as_str()))).collect::<Vec<_>>().join(" AND ");
    let (table, metrics) = table
        .merge(source, on.as_str())
        .with_source_alias("source")
        .with_target_alias("target")
        .with_writer_properties(layout(key))
        .with_commit_properties(commit_properties(app_id, position, contract_version))
        .when_matched_delete(|d| d.predicate(format!("source.{OP} = 'delete'").as_str()))
        .map_err(delta(url))?
        .when_matched_update(|u| {
            all.iter().fold(u.predicate(format!("source.{OP} = 'replace'").as_str()), |u, c| {
                u.update(c.as_str(), format!("source.{}", quoted(c)).as_str())
            })
        })
        .map_err(delta(url))?
        .when_matched_update(|u| {
            others.iter().fold(u.predicate(format!("source.{OP} = 'patch'").as_str()), |u, c| {
                let q = quoted(c);
                u.update(c.as_str(), format!("CASE WHEN source.{SETS}{c} THEN source.{q} ELSE target.{q} END").as_str())
            })
        })
        .map_err(delta(url))?
        .when_not_matched_insert(|i| {
            all.iter().fold(i.predicate(format!("source.{OP} <> 'delete'").as_str()), |i, c| {
                i.set(c.as_str(), format!("source.{}", quoted(c)).as_str())
            })
        })
        .map_err(delta(url))?
        .await
        .map_err(delta(url))?;
    tracing::debug!(table = %name, inserted = metrics.num_target_rows_inserted, updated = metrics.num_target_rows_updated, deleted = metrics.num_target_rows_deleted, "merged");
    Ok(table)
}

/// The net changes of a run, folded per key: as JSON cells (the general
/// path) or typed by a compiled decoder.
#[derive(Debug)]
pub enum Changes<'a> {
    Json(Fold),
    Typed(&'a crate::upsert::UpsertDecoder, crate::upsert::UpsertFold),
}

impl Changes<'_> {
    /// The rows the changes create or set, whole (for a table with no rows
    /// yet, where every one is complete); `None` when there are none.
    pub(crate) fn rows(self, name: &str, schema: &Schema, key: &[ColumnName]) -> Result<Option<RecordBatch>, Error> {
        match self {
            Changes::Json(fold) => {
                let mut rows = Vec::with_capacity(fold.len());
                for (key_text, change) in fold.into_changes() {
                    let (KeyChange::Patch(mut cells) | KeyChange::Replace(mut cells)) = change else { continue };
                    insert_key(&mut cells, key, &key_text, name)?;
                    rows.push(Value::Object(cells));
                }
                if rows.is_empty() { Ok(None) } else { Ok(Some(batch(name, schema, &rows)?)) }
            }
            Changes::Typed(decoder, fold) => {
                decoder.rows(&fold).map_err(|e| Error::Rows { table: name.to_owned(), message: e.to_string() })
            }
        }
    }

    /// The changes as a MERGE source: every column (nullable), what
    /// happens to the row (`OP`), and for each non-key column whether a
    /// patch sets it (`SETS` + column).
    pub(crate) fn merge_source(self, name: &str, schema: &Schema, key: &[ColumnName]) -> Result<RecordBatch, Error> {
        let is_key = |c: &str| key.iter().any(|k| k.as_str() == c);
        let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone().with_nullable(true)).collect();
        fields.push(Field::new(OP, DataType::Utf8, false));
        let others: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).filter(|c| !is_key(c)).collect();
        fields.extend(others.iter().map(|c| Field::new(format!("{SETS}{c}"), DataType::Boolean, false)));
        let source_schema = Schema::new(fields);
        match self {
            Changes::Json(fold) => {
                let mut rows = Vec::with_capacity(fold.len());
                for (key_text, change) in fold.into_changes() {
                    let (op, mut cells) = match change {
                        KeyChange::Patch(cells) => ("patch", cells),
                        KeyChange::Replace(cells) => ("replace", cells),
                        KeyChange::Delete => ("delete", Map::new()),
                    };
                    insert_key(&mut cells, key, &key_text, name)?;
                    for c in &others {
                        let sets = cells.contains_key(c);
                        cells.insert(format!("{SETS}{c}"), Value::from(sets));
                    }
                    cells.insert(OP.to_owned(), Value::from(op));
                    rows.push(Value::Object(cells));
                }
                batch(name, &source_schema, &rows)
            }
            Changes::Typed(decoder, fold) => decoder
                .merge_source(&fold, Arc::new(source_schema))
                .map_err(|e| Error::Rows { table: name.to_owned(), message: e.to_string() }),
        }
    }
}

/// Puts a fold key's values (its JSON text, see [`Fold`]) into a row's cells.
fn insert_key(cells: &mut Map<String, Value>, key: &[ColumnName], key_text: &str, table: &str) -> Result<(), Error> {
    let values: Vec<Value> = serde_json::from_str(key_text).map_err(|e| Error::Rows { table: table.to_owned(), message: e.to_string() })?;
    for (k, v) in key.iter().zip(values) {
        cells.insert(k.to_string(), v);
    }
    Ok(())
}

/// What a table holds now: its version, live files, their bytes and rows.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct TableStats {
    pub version: i64,
    pub files: usize,
    pub bytes: i64,
    pub rows: usize,
}

/// The statistics of the loaded version of `table`.
pub fn stats(table: &DeltaTable, url: &Url) -> Result<TableStats, Error> {
    let snapshot = table.snapshot().map_err(delta(url))?;
    let mut out = TableStats { version: i64::try_from(snapshot.version()).unwrap_or(i64::MAX), ..TableStats::default() };
    for f in snapshot.log_data().iter() {
        out.files += 1;
        out.bytes += f.size();
        out.rows += f.num_records().unwrap_or(0);
    }
    Ok(out)
}
