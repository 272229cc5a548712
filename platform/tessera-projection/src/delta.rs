//! Delta tables: creating them, committing a run's rows together with the
//! last log position it applied (the protocol's `txn` action), and reading
//! that position back, so that a restart resumes exactly where the data is.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::Schema;
use deltalake::kernel::engine::arrow_conversion::TryIntoKernel as _;
use deltalake::kernel::transaction::CommitProperties;
use deltalake::kernel::{StructType, Transaction};
use deltalake::protocol::SaveMode;
use deltalake::{DeltaTable, DeltaTableError};
use serde_json::Value;
use url::Url;

/// What went wrong with a Delta table.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Delta table {url}: {source}")]
    Delta { url: String, source: DeltaTableError },
    #[error("table {table} has no Delta schema: {message}")]
    Schema { table: String, message: String },
    #[error("rows of table {table} do not fit its schema: {message}")]
    Rows { table: String, message: String },
}

fn delta(url: &Url) -> impl FnOnce(DeltaTableError) -> Error + '_ {
    move |source| Error::Delta { url: url.to_string(), source }
}

/// Opens the table at `url`, creating it with `schema` if there is none.
pub async fn open_or_create(url: &Url, name: &str, schema: &Schema) -> Result<DeltaTable, Error> {
    let kernel: StructType = schema.try_into_kernel().map_err(|e| Error::Schema { table: name.to_owned(), message: e.to_string() })?;
    DeltaTable::try_from_url(url.clone())
        .await
        .map_err(delta(url))?
        .create()
        .with_table_name(name)
        .with_columns(kernel.fields().cloned())
        .with_save_mode(SaveMode::Ignore)
        .await
        .map_err(delta(url))
}

/// The last log position committed to the table by `app_id`, if any.
pub async fn applied(table: &DeltaTable, url: &Url, app_id: &str) -> Result<Option<i64>, Error> {
    let snapshot = table.snapshot().map_err(delta(url))?;
    snapshot.transaction_version(table.log_store().as_ref(), app_id).await.map_err(delta(url))
}

/// JSON rows (already checked cell by cell, see `values`) as one Arrow batch.
pub fn batch(table: &str, schema: &Schema, rows: &[Value]) -> Result<RecordBatch, Error> {
    let failed = |e: arrow::error::ArrowError| Error::Rows { table: table.to_owned(), message: e.to_string() };
    let mut decoder =
        arrow::json::ReaderBuilder::new(Arc::new(schema.clone())).with_batch_size(rows.len().max(1)).build_decoder().map_err(failed)?;
    decoder.serialize(rows).map_err(failed)?;
    Ok(decoder.flush().map_err(failed)?.unwrap_or_else(|| RecordBatch::new_empty(Arc::new(schema.clone()))))
}

/// Appends `batch` and records, in the same commit, that the log is applied
/// up to `position` for `app_id`.
pub async fn append(
    table: DeltaTable,
    url: &Url,
    batch: RecordBatch,
    app_id: &str,
    position: i64,
    contract_version: &str,
) -> Result<DeltaTable, Error> {
    let properties = CommitProperties::default().with_application_transaction(Transaction::new(app_id, position)).with_metadata([
        ("tessera.position".to_owned(), Value::from(position)),
        ("tessera.contract_version".to_owned(), Value::from(contract_version)),
    ]);
    table.write(vec![batch]).with_save_mode(SaveMode::Append).with_commit_properties(properties).await.map_err(delta(url))
}
