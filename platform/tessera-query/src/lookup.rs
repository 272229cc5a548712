//! Key lookups without a query plan.
//!
//! `SELECT <columns or *> FROM domain.product.table WHERE <every key
//! column> = <literal> [AND …] [LIMIT n]` on an upsert table, whose key
//! columns the caller sees in the clear, is answered from a serving index
//! of the table's current version: the index gives the file and row of the
//! key, the row's pages are read from Parquet (footers and page indexes
//! kept), and the row is masked by the same code as the masked scan
//! ([`crate::table`]). Anything else (another shape, a view, a key column
//! that is masked or sealed for the caller, a table not indexed yet, a
//! storage error) falls back to the general path, which gives the same
//! bytes: the tests compare the two.
//!
//! The index ([`Indexes`]) holds, per data file, a sorted list of (hash of
//! the key, row): 16 bytes a row, built once per file (Delta files never
//! change), so a new table version only reads the key columns of its new
//! files. It is built in the background: until it is ready, lookups take
//! the general path. A hash match is only a candidate: the row read is
//! compared with the key before it is returned.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, Hasher};
use std::sync::{Arc, Mutex};

use arrow::array::{ArrayRef, RecordBatch, RecordBatchOptions, new_null_array};
use arrow::compute::{cast, concat_batches};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::row::{RowConverter, SortField};
use datafusion::sql::parser::{DFParserBuilder, Statement as DFStatement};
use datafusion::sql::sqlparser::ast::{
    BinaryOperator, Expr, GroupByExpr, Ident, LimitClause, ObjectNamePart, Query, Select, SelectFlavor, SelectItem, SetExpr, Statement,
    TableFactor, UnaryOperator, Value, WildcardAdditionalOptions,
};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use deltalake::DeltaTable;
use futures::TryStreamExt as _;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt as _};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions, RowSelection, RowSelector};
use parquet::arrow::async_reader::{AsyncFileReader, ParquetRecordBatchStreamBuilder};
use parquet::errors::ParquetError;
use parquet::file::metadata::{PageIndexPolicy, ParquetMetaData, ParquetMetaDataReader};
use url::Url;

/// The longest SQL text that is looked at for a key lookup (a lookup is
/// short; anything longer goes straight to the general path).
const MAX_LOOKUP_SQL_BYTES: usize = 4096;

/// The parser's nesting limit for a lookup: a lookup nests a few levels.
const LOOKUP_RECURSION_LIMIT: usize = 16;

/// Rows indexed across all tables at most (16 bytes each, plus each file's
/// footer): a table that would go beyond is served by the general path.
pub const MAX_INDEXED_ROWS: usize = 32 << 20;

/// Candidate rows read for one lookup at most (hash collisions, or a key
/// that an upsert table holds more than once): beyond, the general path.
const MAX_CANDIDATES: usize = 64;

/// A literal a key column is compared with.
#[derive(Debug, Clone, PartialEq)]
pub enum KeyValue {
    Text(String),
    Integer(i128),
}

/// A statement recognized as a key lookup, names normalized as the
/// planner normalizes them (unquoted identifiers in lower case).
#[derive(Debug, Clone, PartialEq)]
pub struct Lookup {
    pub domain: String,
    pub schema: String,
    pub table: String,
    /// `(column, output name)`; `None` for `*`.
    pub columns: Option<Vec<(String, String)>>,
    /// `column = literal`, in the order written.
    pub keys: Vec<(String, KeyValue)>,
    pub limit: Option<usize>,
}

/// Parses `sql` if it may be a key lookup: short, one statement.
pub fn parse(sql: &str) -> Option<DFStatement> {
    if sql.len() > MAX_LOOKUP_SQL_BYTES {
        return None;
    }
    let dialect = PostgreSqlDialect {};
    let mut statements = DFParserBuilder::new(sql)
        .with_dialect(&dialect)
        .with_recursion_limit(LOOKUP_RECURSION_LIMIT)
        .build()
        .ok()?
        .parse_statements()
        .ok()?;
    if statements.len() != 1 {
        return None;
    }
    statements.pop_front().filter(|s| matches!(s, DFStatement::Statement(_)))
}

/// The lookup `statement` is, if it is one.
pub fn recognize(statement: &Statement) -> Option<Lookup> {
    let Statement::Query(query) = statement else { return None };
    let Query {
        with: None,
        body,
        order_by: None,
        limit_clause,
        fetch: None,
        locks,
        for_clause: None,
        settings: None,
        format_clause: None,
        pipe_operators,
    } = query.as_ref()
    else {
        return None;
    };
    if !locks.is_empty() || !pipe_operators.is_empty() {
        return None;
    }
    let limit = match limit_clause {
        None => None,
        Some(LimitClause::LimitOffset { limit: Some(limit), offset: None, limit_by }) if limit_by.is_empty() => {
            // DataFusion takes a limit as a 64-bit signed integer.
            let limit = i64::try_from(integer(limit)?).ok()?;
            Some(usize::try_from(limit).ok()?)
        }
        Some(_) => return None,
    };
    let SetExpr::Select(select) = body.as_ref() else { return None };
    // Every clause of a SELECT is named here: a new one in the parser is
    // a compile error, not a clause silently ignored.
    let Select {
        select_token: _,
        optimizer_hints,
        distinct: None,
        select_modifiers: None,
        top: None,
        top_before_distinct: _,
        projection,
        exclude: None,
        into: None,
        from,
        lateral_views,
        prewhere: None,
        selection: Some(selection),
        connect_by,
        group_by,
        cluster_by,
        distribute_by,
        sort_by,
        having: None,
        named_window,
        qualify: None,
        window_before_qualify: _,
        value_table_mode: None,
        flavor: SelectFlavor::Standard,
    } = select.as_ref()
    else {
        return None;
    };
    let no_grouping = matches!(group_by, GroupByExpr::Expressions(e, m) if e.is_empty() && m.is_empty());
    if !optimizer_hints.is_empty()
        || !lateral_views.is_empty()
        || !connect_by.is_empty()
        || !no_grouping
        || !cluster_by.is_empty()
        || !distribute_by.is_empty()
        || !sort_by.is_empty()
        || !named_window.is_empty()
    {
        return None;
    }
    let [from] = from.as_slice() else { return None };
    if !from.joins.is_empty() {
        return None;
    }
    let TableFactor::Table {
        name,
        alias,
        args: None,
        with_hints,
        version: None,
        with_ordinality: false,
        partitions,
        json_path: None,
        sample: None,
        index_hints,
    } = &from.relation
    else {
        return None;
    };
    if !with_hints.is_empty() || !partitions.is_empty() || !index_hints.is_empty() || alias.as_ref().is_some_and(|a| !a.columns.is_empty())
    {
        return None;
    }
    let [domain, schema, table] = name.0.as_slice() else { return None };
    let part = |p: &ObjectNamePart| match p {
        ObjectNamePart::Identifier(i) => Some(normalize(i)),
        ObjectNamePart::Function(_) => None,
    };
    let (domain, schema, table) = (part(domain)?, part(schema)?, part(table)?);
    // Names the planner resolves elsewhere (its metadata, the session's system catalog).
    if schema == "information_schema" || schema == "pg_catalog" || domain == crate::catalog::SYSTEM_CATALOG {
        return None;
    }
    let columns = match projection.as_slice() {
        [SelectItem::Wildcard(options)] if *options == WildcardAdditionalOptions::default() => None,
        items => {
            let mut out = Vec::with_capacity(items.len());
            for item in items {
                out.push(match item {
                    SelectItem::UnnamedExpr(Expr::Identifier(c)) => (normalize(c), normalize(c)),
                    SelectItem::ExprWithAlias { expr: Expr::Identifier(c), alias } => (normalize(c), normalize(alias)),
                    _ => return None,
                });
            }
            // Two output columns of one name are the general path's error to give.
            let names: HashSet<&str> = out.iter().map(|(_, n)| n.as_str()).collect();
            if names.len() != out.len() {
                return None;
            }
            Some(out)
        }
    };
    let mut keys = Vec::new();
    equalities(selection, &mut keys)?;
    Some(Lookup { domain, schema, table, columns, keys, limit })
}

/// `column = literal [AND …]` into `out`.
fn equalities(e: &Expr, out: &mut Vec<(String, KeyValue)>) -> Option<()> {
    match e {
        Expr::BinaryOp { left, op: BinaryOperator::And, right } => {
            equalities(left, out)?;
            equalities(right, out)
        }
        Expr::BinaryOp { left, op: BinaryOperator::Eq, right } => {
            let (column, value) = match (left.as_ref(), right.as_ref()) {
                (Expr::Identifier(c), v) | (v, Expr::Identifier(c)) => (normalize(c), key_value(v)?),
                _ => return None,
            };
            out.push((column, value));
            Some(())
        }
        _ => None,
    }
}

fn key_value(e: &Expr) -> Option<KeyValue> {
    match e {
        Expr::Value(v) => match &v.value {
            Value::SingleQuotedString(s) => Some(KeyValue::Text(s.clone())),
            Value::Number(..) => integer(e).map(KeyValue::Integer),
            _ => None,
        },
        Expr::UnaryOp { op: UnaryOperator::Minus, .. } => integer(e).map(KeyValue::Integer),
        _ => None,
    }
}

/// An integer literal (digits only, optionally negated).
fn integer(e: &Expr) -> Option<i128> {
    match e {
        Expr::Value(v) => match &v.value {
            Value::Number(n, false) => {
                let text = n.to_string();
                if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                text.parse().ok()
            }
            _ => None,
        },
        Expr::UnaryOp { op: UnaryOperator::Minus, expr } => match expr.as_ref() {
            Expr::Value(_) => integer(expr).map(|n| -n),
            _ => None,
        },
        _ => None,
    }
}

/// An identifier as the planner names it: unquoted ones in lower case.
fn normalize(ident: &Ident) -> String {
    match ident.quote_style {
        Some(_) => ident.value.clone(),
        None => ident.value.to_ascii_lowercase(),
    }
}

/// The key literals as a one-row batch of the key columns' types, or
/// `None` when a literal is not of its column's kind (`order_id = 5` on a
/// text key, `n = 'x'` or an out-of-range number on an integer key): the
/// general path coerces or refuses those.
pub fn key_columns(values: &[&KeyValue], types: &[DataType]) -> Option<Vec<ArrayRef>> {
    let mut out = Vec::with_capacity(values.len());
    for (value, t) in values.iter().zip(types) {
        let array: ArrayRef = match (value, t) {
            (KeyValue::Text(s), DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View) => {
                Arc::new(arrow::array::StringArray::from(vec![s.as_str()]))
            }
            (KeyValue::Integer(n), t) if t.is_integer() => {
                let n = i64::try_from(*n).ok()?;
                let wide: ArrayRef = Arc::new(arrow::array::Int64Array::from(vec![n]));
                // A number that does not fit the column's type is not a key of it.
                let narrow =
                    arrow::compute::cast_with_options(&wide, t, &arrow::compute::CastOptions { safe: false, ..Default::default() }).ok()?;
                out.push(narrow);
                continue;
            }
            _ => return None,
        };
        out.push(cast(&array, t).ok()?);
    }
    Some(out)
}

/// One data file of an indexed table.
#[derive(Debug)]
pub struct FileKeys {
    path: Path,
    size: u64,
    /// The key's types, as hashed: an index of another key is not reused.
    types: Vec<DataType>,
    /// The footer, with the page index: a row's pages are found without reading it again.
    metadata: ArrowReaderMetadata,
    /// `(hash of the key, row in the file)`, sorted.
    entries: Vec<(u64, u32)>,
    /// The first row of each row group, and the file's row count last.
    row_group_starts: Vec<u64>,
}

impl FileKeys {
    fn rows(&self) -> usize {
        self.entries.len()
    }
}

/// The index of one table version.
#[derive(Debug)]
pub struct TableIndex {
    version: u64,
    key: Vec<String>,
    store: Arc<dyn ObjectStore>,
    files: Vec<Arc<FileKeys>>,
}

impl TableIndex {
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The files and rows whose key hashes to `hash`.
    fn candidates(&self, hash: u64) -> Vec<(usize, u32)> {
        let mut out = Vec::new();
        for (f, file) in self.files.iter().enumerate() {
            let start = file.entries.partition_point(|(h, _)| *h < hash);
            out.extend(file.entries[start..].iter().take_while(|(h, _)| *h == hash).map(|(_, row)| (f, *row)));
        }
        out
    }

    /// The rows of `columns` (by name, cast to their types; a column a file
    /// lacks is null) whose key columns equal `key`, in file and row order.
    /// `key_types` are the key columns' types.
    pub async fn rows(&self, hasher: &impl BuildHasher, key: &[ArrayRef], columns: &SchemaRef) -> Result<Option<RecordBatch>, String> {
        let fields: Vec<SortField> = key.iter().map(|a| SortField::new(a.data_type().clone())).collect();
        let converter = RowConverter::new(fields).map_err(|e| e.to_string())?;
        let wanted = converter.convert_columns(key).map_err(|e| e.to_string())?;
        let wanted = wanted.row(0);
        let hash = hash_of(hasher, wanted.as_ref());
        let candidates = self.candidates(hash);
        if candidates.len() > MAX_CANDIDATES {
            return Err(format!("{} rows share this key's hash", candidates.len()));
        }
        let mut found = Vec::new();
        for (f, row) in candidates {
            let file = &self.files[f];
            let batch = self.read_row(file, row, columns).await?;
            let keys: Vec<ArrayRef> = self
                .key
                .iter()
                .zip(key)
                .map(|(name, wanted)| {
                    let c = batch.column_by_name(name).ok_or_else(|| format!("the row has no key column {name}"))?;
                    cast(c, wanted.data_type()).map_err(|e| e.to_string())
                })
                .collect::<Result<_, String>>()?;
            let got = converter.convert_columns(&keys).map_err(|e| e.to_string())?;
            if got.row(0) == wanted {
                found.push(batch);
            }
        }
        if found.is_empty() {
            return Ok(None);
        }
        concat_batches(columns, &found).map(Some).map_err(|e| e.to_string())
    }

    /// Row `row` of `file`: only the pages that hold it are read.
    async fn read_row(&self, file: &FileKeys, row: u32, columns: &SchemaRef) -> Result<RecordBatch, String> {
        let row = u64::from(row);
        let group = file.row_group_starts.partition_point(|start| *start <= row).checked_sub(1).ok_or("a row before the first")?;
        // A file that holds more rows than its footer says is not read here.
        let (Some(start), Some(end)) = (file.row_group_starts.get(group), file.row_group_starts.get(group + 1)) else {
            return Err(format!("row {row} is past the file's row groups"));
        };
        let offset = usize::try_from(row - start).map_err(|e| e.to_string())?;
        let group_rows = usize::try_from(end.saturating_sub(*start)).map_err(|e| e.to_string())?;
        let after = group_rows.checked_sub(offset + 1).ok_or_else(|| format!("row {row} is past its row group"))?;
        let file_schema = file.metadata.schema();
        let present: Vec<&str> =
            columns.fields().iter().map(|f| f.name().as_str()).filter(|n| file_schema.field_with_name(n).is_ok()).collect();
        let mask = ProjectionMask::columns(file.metadata.metadata().file_metadata().schema_descr(), present.iter().copied());
        let selection = RowSelection::from(vec![RowSelector::skip(offset), RowSelector::select(1), RowSelector::skip(after)]);
        let reader = StoreReader { store: Arc::clone(&self.store), path: file.path.clone(), size: file.size };
        let stream = ParquetRecordBatchStreamBuilder::new_with_metadata(reader, file.metadata.clone())
            .with_projection(mask)
            .with_row_groups(vec![group])
            .with_row_selection(selection)
            .with_batch_size(8)
            .build()
            .map_err(|e| e.to_string())?;
        let batches: Vec<RecordBatch> = stream.try_collect().await.map_err(|e| e.to_string())?;
        let read = concat_batches(&batches.first().map(|b| b.schema()).unwrap_or_else(|| Arc::new(Schema::empty())), &batches)
            .map_err(|e| e.to_string())?;
        if read.num_rows() != 1 {
            return Err(format!("read {} rows for one", read.num_rows()));
        }
        let mut out = Vec::with_capacity(columns.fields().len());
        for field in columns.fields() {
            out.push(match read.column_by_name(field.name()) {
                Some(c) => cast(c, field.data_type()).map_err(|e| e.to_string())?,
                None => new_null_array(field.data_type(), 1),
            });
        }
        RecordBatch::try_new_with_options(Arc::clone(columns), out, &RecordBatchOptions::new().with_row_count(Some(1)))
            .map_err(|e| e.to_string())
    }
}

/// A Parquet file in the table's object store, of a known size.
struct StoreReader {
    store: Arc<dyn ObjectStore>,
    path: Path,
    size: u64,
}

fn store_error(e: object_store::Error) -> ParquetError {
    ParquetError::External(Box::new(e))
}

impl AsyncFileReader for StoreReader {
    fn get_bytes(&mut self, range: std::ops::Range<u64>) -> futures::future::BoxFuture<'_, parquet::errors::Result<bytes::Bytes>> {
        Box::pin(async move { self.store.get_range(&self.path, range).await.map_err(store_error) })
    }

    fn get_byte_ranges(
        &mut self,
        ranges: Vec<std::ops::Range<u64>>,
    ) -> futures::future::BoxFuture<'_, parquet::errors::Result<Vec<bytes::Bytes>>> {
        Box::pin(async move { self.store.get_ranges(&self.path, &ranges).await.map_err(store_error) })
    }

    fn get_metadata<'a>(
        &'a mut self,
        options: Option<&'a ArrowReaderOptions>,
    ) -> futures::future::BoxFuture<'a, parquet::errors::Result<Arc<ParquetMetaData>>> {
        Box::pin(async move {
            let size = self.size;
            let metadata = ParquetMetaDataReader::new().with_arrow_reader_options(options).load_and_finish(self, size).await?;
            Ok(Arc::new(metadata))
        })
    }
}

fn hash_of(hasher: &impl BuildHasher, bytes: &[u8]) -> u64 {
    let mut h = hasher.build_hasher();
    h.write(bytes);
    h.finish()
}

/// The serving indexes of an engine's tables, by table.
#[derive(Debug, Default)]
pub struct Indexes {
    tables: Mutex<HashMap<Url, Arc<TableIndex>>>,
    /// Files indexed, by table and path (a new version reuses its unchanged files).
    files: Mutex<HashMap<Url, HashMap<String, Arc<FileKeys>>>>,
    /// Tables whose index is being built.
    building: Mutex<HashSet<Url>>,
    /// Tables not indexed at a version (too large, or unreadable): tried
    /// again at their next version.
    refused: Mutex<HashMap<Url, u64>>,
    /// Keys are hashed with a key of this process's own: no one can choose
    /// keys that collide.
    hasher: std::collections::hash_map::RandomState,
    /// One index is built at a time (so the limit on rows counts every
    /// other table's index, and builds take one core at most).
    build: tokio::sync::Mutex<()>,
}

impl Indexes {
    pub fn hasher(&self) -> &std::collections::hash_map::RandomState {
        &self.hasher
    }

    /// The index of `table` at its version, if it is built; otherwise it
    /// starts building it (in the background) and says `None`.
    pub fn get(self: &Arc<Self>, url: &Url, table: &DeltaTable, key: &[String], types: &[DataType]) -> Option<Arc<TableIndex>> {
        let version = table.version()?;
        if let Some(index) = self.tables.lock().ok()?.get(url).filter(|i| i.version == version && i.key == key) {
            return Some(Arc::clone(index));
        }
        if self.refused.lock().ok()?.get(url) == Some(&version) {
            return None;
        }
        if !self.building.lock().ok()?.insert(url.clone()) {
            return None;
        }
        let (this, url, table, key, types) = (Arc::clone(self), url.clone(), table.clone(), key.to_vec(), types.to_vec());
        tokio::spawn(async move {
            let built = {
                let _one_at_a_time = this.build.lock().await;
                this.build(&url, &table, &key, &types).await
            };
            match built {
                Ok(Some(index)) => {
                    if let Ok(mut tables) = this.tables.lock() {
                        // A build from an older snapshot that ends later does not replace a newer index.
                        if tables.get(&url).is_none_or(|kept| kept.version <= index.version) {
                            tables.insert(url.clone(), Arc::new(index));
                        }
                    }
                }
                Ok(None) => {
                    if let Ok(mut refused) = this.refused.lock() {
                        refused.insert(url.clone(), version);
                    }
                }
                Err(e) => {
                    tracing::warn!(table = %url, version, error = %e, "cannot index the table's keys: its lookups take the general path");
                    // Tried again at the table's next version, not at every lookup.
                    if let Ok(mut refused) = this.refused.lock() {
                        refused.insert(url.clone(), version);
                    }
                }
            }
            if let Ok(mut building) = this.building.lock() {
                building.remove(&url);
            }
        });
        None
    }

    async fn build(&self, url: &Url, table: &DeltaTable, key: &[String], types: &[DataType]) -> Result<Option<TableIndex>, String> {
        let version = table.version().ok_or("no version")?;
        let state = table.snapshot().map_err(|e| e.to_string())?;
        // Files whose rows are not all they hold (deletion vectors), tables
        // whose columns live under other names, or in the path: the general path.
        if !state.metadata().partition_columns().is_empty()
            || state.metadata().configuration().get("delta.columnMapping.mode").is_some_and(|m| m != "none")
        {
            return Ok(None);
        }
        let files: Vec<_> = state.log_data().iter().collect();
        if files.iter().any(|f| f.deletion_vector_descriptor().is_some()) {
            return Ok(None);
        }
        let rows: usize = files.iter().map(|f| f.num_records().unwrap_or(usize::MAX / 2)).fold(0, usize::saturating_add);
        let others: usize = self
            .tables
            .lock()
            .map(|t| t.iter().filter(|(u, _)| *u != url).map(|(_, i)| i.files.iter().map(|f| f.rows()).sum::<usize>()).sum())
            .unwrap_or(0);
        if rows.saturating_add(others) > MAX_INDEXED_ROWS {
            tracing::info!(table = %url, rows, "the table has more rows than the key index keeps: its lookups take the general path");
            return Ok(None);
        }
        let store = table.log_store().object_store(None);
        let known = self.files.lock().map(|f| f.get(url).cloned().unwrap_or_default()).unwrap_or_default();
        let mut indexed = Vec::with_capacity(files.len());
        let mut kept = HashMap::new();
        for file in &files {
            let path = file.path().to_string();
            let keys = match known.get(&path).filter(|k| k.types == types) {
                Some(k) => Arc::clone(k),
                None => {
                    let keys = Arc::new(self.index_file(&store, file.object_store_path(), file.size(), key, types).await?);
                    // Kept at once: a build that fails later does not read this file again.
                    if let Ok(mut f) = self.files.lock() {
                        f.entry(url.clone()).or_default().insert(path.clone(), Arc::clone(&keys));
                    }
                    keys
                }
            };
            kept.insert(path, Arc::clone(&keys));
            indexed.push(keys);
        }
        if let Ok(mut f) = self.files.lock() {
            f.insert(url.clone(), kept);
        }
        Ok(Some(TableIndex { version, key: key.to_vec(), store, files: indexed }))
    }

    /// Reads a file's footer and key columns.
    async fn index_file(
        &self,
        store: &Arc<dyn ObjectStore>,
        path: Path,
        size: i64,
        key: &[String],
        types: &[DataType],
    ) -> Result<FileKeys, String> {
        let size = u64::try_from(size).map_err(|e| e.to_string())?;
        let mut reader = StoreReader { store: Arc::clone(store), path: path.clone(), size };
        let options = ArrowReaderOptions::new().with_page_index_policy(PageIndexPolicy::Optional);
        let metadata = ArrowReaderMetadata::load_async(&mut reader, options).await.map_err(|e| format!("{path}: {e}"))?;
        let mut row_group_starts = vec![0u64];
        for group in metadata.metadata().row_groups() {
            let last = row_group_starts.last().copied().unwrap_or(0);
            row_group_starts.push(last + u64::try_from(group.num_rows()).map_err(|e| e.to_string())?);
        }
        for name in key {
            metadata.schema().field_with_name(name).map_err(|_| format!("{path} has no key column {name}"))?;
        }
        let mask = ProjectionMask::columns(metadata.metadata().file_metadata().schema_descr(), key.iter().map(String::as_str));
        let converter = RowConverter::new(types.iter().map(|t| SortField::new(t.clone())).collect()).map_err(|e| e.to_string())?;
        let mut stream = ParquetRecordBatchStreamBuilder::new_with_metadata(reader, metadata.clone())
            .with_projection(mask)
            .build()
            .map_err(|e| e.to_string())?;
        let declared = usize::try_from(row_group_starts.last().copied().unwrap_or(0)).unwrap_or(0);
        let mut entries = Vec::with_capacity(declared.min(MAX_INDEXED_ROWS));
        let mut row: u32 = 0;
        while let Some(batch) = stream.try_next().await.map_err(|e| format!("{path}: {e}"))? {
            let columns: Vec<ArrayRef> = key
                .iter()
                .zip(types)
                .map(|(name, t)| {
                    let c = batch.column_by_name(name).ok_or_else(|| format!("{path} has no key column {name}"))?;
                    cast(c, t).map_err(|e| e.to_string())
                })
                .collect::<Result<_, String>>()?;
            let rows = converter.convert_columns(&columns).map_err(|e| e.to_string())?;
            for r in rows.iter() {
                entries.push((hash_of(&self.hasher, r.as_ref()), row));
                row = row.checked_add(1).ok_or("a file of more than 4 billion rows")?;
            }
        }
        entries.sort_unstable();
        entries.shrink_to_fit();
        Ok(FileKeys { path, size, types: types.to_vec(), metadata, entries, row_group_starts })
    }
}

/// `fields` renamed as the lookup's output names them.
pub fn output_schema(fields: Vec<(Arc<Field>, &str)>) -> SchemaRef {
    Arc::new(Schema::new(
        fields
            .into_iter()
            .map(|(f, name)| if f.name() == name { f } else { Arc::new(f.as_ref().clone().with_name(name)) })
            .collect::<Vec<_>>(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(sql: &str) -> Option<Lookup> {
        match parse(sql)? {
            DFStatement::Statement(s) => recognize(&s),
            _ => None,
        }
    }

    #[test]
    fn recognizes_key_lookups_only() {
        let l = lookup("SELECT * FROM sales.orders.orders WHERE order_id = 'SO-1'").expect("a lookup");
        assert_eq!((l.domain.as_str(), l.schema.as_str(), l.table.as_str()), ("sales", "orders", "orders"));
        assert_eq!(l.columns, None);
        assert_eq!(l.keys, vec![("order_id".to_owned(), KeyValue::Text("SO-1".into()))]);
        let l = lookup("select Status, total AS \"T\" from Sales.\"orders@v1\".orders o where 7 = n and k = -3 limit 1").expect("a lookup");
        assert_eq!(l.schema, "orders@v1");
        assert_eq!(l.columns, Some(vec![("status".into(), "status".into()), ("total".into(), "T".into())]));
        assert_eq!(l.keys, vec![("n".into(), KeyValue::Integer(7)), ("k".into(), KeyValue::Integer(-3))]);
        assert_eq!(l.limit, Some(1));
        for other in [
            "SELECT * FROM sales.orders.orders WHERE order_id = 'a' OR order_id = 'b'",
            "SELECT * FROM sales.orders.orders WHERE order_id = lower('A')",
            "SELECT * FROM sales.orders.orders WHERE order_id > 'a'",
            "SELECT * FROM sales.orders.orders WHERE (order_id = 'a')",
            "SELECT DISTINCT * FROM sales.orders.orders WHERE order_id = 'a'",
            "SELECT * FROM sales.orders.orders WHERE order_id = 'a' ORDER BY 1",
            "SELECT * FROM sales.orders.orders WHERE order_id = 'a' LIMIT 1 OFFSET 1",
            "SELECT * FROM sales.orders.orders",
            "SELECT * EXCLUDE (total) FROM sales.orders.orders WHERE order_id = 'a'",
            "SELECT o.* FROM sales.orders.orders o WHERE order_id = 'a'",
            "SELECT o.total FROM sales.orders.orders o WHERE order_id = 'a'",
            "SELECT total, total FROM sales.orders.orders WHERE order_id = 'a'",
            "SELECT count(*) FROM sales.orders.orders WHERE order_id = 'a'",
            "SELECT * FROM orders.orders WHERE order_id = 'a'",
            "SELECT * FROM sales.orders.orders, sales.orders.lines WHERE order_id = 'a'",
            "SELECT * FROM sales.orders.orders WHERE order_id = 'a' GROUP BY total",
            "SELECT * FROM sales.orders.orders WHERE order_id = 1.5",
            "SELECT * FROM sales.orders.orders WHERE order_id = 1e3",
            "SELECT * FROM sales.orders.orders WHERE order_id = NULL",
            "SELECT * FROM as_of('sales.orders.orders', 1) WHERE order_id = 'a'",
            "WITH x AS (SELECT 1) SELECT * FROM sales.orders.orders WHERE order_id = 'a'",
            "SELECT * FROM sales.orders.orders WHERE order_id = 'a'; SELECT 1",
            "EXPLAIN SELECT * FROM sales.orders.orders WHERE order_id = 'a'",
            "SELECT * FROM sales.information_schema.tables WHERE table_name = 'a'",
            "SELECT * FROM tessera.pg_catalog.pg_class WHERE relname = 'a'",
            "SELECT * FROM sales.orders.orders WHERE order_id = 'a' LIMIT 9223372036854775808",
        ] {
            assert_eq!(lookup(other), None, "{other}");
        }
    }

    #[test]
    fn literals_of_another_kind_are_not_keys() {
        let text = KeyValue::Text("5".into());
        let big = KeyValue::Integer(1 << 40);
        assert!(key_columns(&[&text], &[DataType::Int64]).is_none());
        assert!(key_columns(&[&KeyValue::Integer(5)], &[DataType::Utf8]).is_none());
        assert!(key_columns(&[&big], &[DataType::Int32]).is_none());
        assert!(key_columns(&[&big], &[DataType::Int64]).is_some());
        assert!(key_columns(&[&text], &[DataType::Utf8View]).is_some());
    }
}
