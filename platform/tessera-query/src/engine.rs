//! The query engine: a DataFusion session per caller whose catalog holds
//! only masked tables ([`crate::catalog`]), read-only SQL ([`crate::sandbox`]),
//! limits from the config, and an audit record for every query.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, SchemaRef};
use datafusion::catalog::{TableFunctionArgs, TableFunctionImpl, TableProvider};
use datafusion::common::{DataFusionError, ScalarValue, TableReference};
use datafusion::execution::SendableRecordBatchStream;
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::execution::session_state::{SessionState, SessionStateBuilder};
use datafusion::logical_expr::{Expr, LogicalPlan};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{ExecutionPlan, execute_stream};
use datafusion::prelude::{SQLOptions, SessionConfig};
use datafusion::sql::parser::Statement as DFStatement;
use datafusion::sql::sqlparser::ast::Statement;
use futures::StreamExt as _;
use tessera_contract::model::Projection;
use tessera_projection::Warehouse;
use tessera_store::{Principal, QueryRecord, Store};
use tokio::time::Instant;

use crate::admission::{Admission, Concurrency, Permit};
use crate::audit::Auditor;
use crate::catalog::{At, CallerCatalogs, Catalog};
use crate::lookup::Indexes;
use crate::mask::HashKey;
use crate::sandbox::{self, AS_OF, AsOf, Bounds, Refusal};
use crate::table::MaskedScanExec;

/// Per-query limits, from the config.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Memory a query's operators may hold (sorts, joins, aggregates).
    pub memory_bytes: usize,
    /// Wall time from the query's arrival to its last row.
    pub timeout: Duration,
    /// Rows returned at most; a longer result is cut there and says so.
    pub max_rows: usize,
    /// Partitions a query runs in parallel.
    pub partitions: usize,
    /// Size and nesting of the SQL text, checked before planning.
    pub bounds: Bounds,
    /// Queries at once, and the memory they share.
    pub concurrency: Concurrency,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory_bytes: 512 << 20,
            timeout: Duration::from_secs(30),
            max_rows: 1_000_000,
            partitions: 2,
            bounds: Bounds::default(),
            concurrency: Concurrency::default(),
        }
    }
}

impl Limits {
    /// The largest value a function may produce (see [`crate::guard`]):
    /// a batch of such values fits the query's memory limit.
    pub fn max_value_bytes(&self) -> usize {
        (self.memory_bytes / tessera_sql::budget::BATCH_ROWS).max(4096)
    }
}

/// The Parquet footers and page indexes kept between queries (DataFusion's
/// file metadata cache, shared by every query of an engine).
const METADATA_CACHE_BYTES: usize = 128 << 20;

/// The stack of the thread that parses and measures SQL text: deep enough
/// for any tree the token check lets through, reserved lazily.
const CHECK_STACK_BYTES: usize = 64 << 20;

/// Why a query did not run, or stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryError {
    pub kind: ErrorKind,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Not parseable SQL, or more than one statement.
    Syntax,
    /// Not a read.
    ReadOnly,
    /// A table or column that does not exist (or that the caller may not read), a type error.
    Invalid,
    /// Over the memory limit.
    Memory,
    /// Over the time limit.
    Timeout,
    /// Failed while running (a cast that does not hold, a division by zero).
    Execution,
    /// Over a bound on the query's size or nesting.
    TooComplex,
    /// The caller (or the server) runs as many queries as it may: retry later.
    Busy,
    /// Ours: storage unreachable, a bug.
    Internal,
}

impl ErrorKind {
    /// A stable code for APIs.
    pub fn code(self) -> &'static str {
        match self {
            Self::Syntax => "sql_syntax",
            Self::ReadOnly => "read_only",
            Self::Invalid => "invalid_query",
            Self::Memory => "memory_limit",
            Self::Timeout => "query_timeout",
            Self::Execution => "query_failed",
            Self::TooComplex => "query_too_complex",
            Self::Busy => "too_many_queries",
            Self::Internal => "internal",
        }
    }
}

impl std::fmt::Display for QueryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for QueryError {}

impl QueryError {
    fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self { kind, message: message.into() }
    }
}

impl From<Refusal> for QueryError {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::Syntax(m) => Self::new(ErrorKind::Syntax, m),
            Refusal::NotReadOnly(m) => Self::new(ErrorKind::ReadOnly, m),
            Refusal::TooComplex(m) => Self::new(ErrorKind::TooComplex, m),
        }
    }
}

/// The engine: shared by every caller of a server.
#[derive(Debug, Clone)]
pub struct Engine {
    catalog: Arc<Catalog>,
    limits: Limits,
    auditor: Auditor,
    admission: Arc<Admission>,
    /// Whether row-choosing operators on clear columns run below the mask
    /// ([`crate::late`]); off only to compare the two in tests and benchmarks.
    late_masking: bool,
    /// What every query's runtime shares: the cache of Parquet footers and
    /// page indexes, and the object stores. Each query gets its own memory
    /// pool on top. `None` if it could not be built (each query then
    /// builds its own, as a fallback).
    runtime: Option<Arc<RuntimeEnv>>,
    /// Whether key lookups are answered from the serving index
    /// ([`crate::lookup`]); off only to compare the two paths.
    key_lookups: bool,
    indexes: Arc<Indexes>,
    /// Key lookups answered from the serving index so far.
    answered: Arc<std::sync::atomic::AtomicU64>,
}

/// A key lookup's answer ([`Engine::lookup`]).
#[derive(Debug)]
pub struct Looked {
    pub schema: SchemaRef,
    /// The rows; `None` when there are none.
    pub batch: Option<RecordBatch>,
    /// The table read, as `domain.product.table`.
    pub table: String,
}

impl Engine {
    /// `key` is the HMAC key of the `hash` masking strategy.
    pub fn new(store: Store, warehouse: Warehouse, key: &[u8], limits: Limits) -> Self {
        let auditor = Auditor::start(store.clone());
        let admission = Arc::new(Admission::new(limits.concurrency.clone()));
        let catalog =
            Catalog::new(store, warehouse, HashKey::new(key)).with_bounds(Arc::new(crate::guard::Bounded::new(limits.max_value_bytes())));
        let runtime = RuntimeEnvBuilder::new()
            .with_disk_manager_builder(DiskManagerBuilder::default().with_mode(DiskManagerMode::Disabled))
            .with_metadata_cache_limit(METADATA_CACHE_BYTES)
            .build_arc()
            .inspect_err(|e| tracing::warn!(error = %e, "queries share no Parquet metadata cache"))
            .ok();
        Self {
            catalog: Arc::new(catalog),
            limits,
            auditor,
            admission,
            late_masking: true,
            runtime,
            key_lookups: true,
            indexes: Arc::new(Indexes::default()),
            answered: Arc::default(),
        }
    }

    /// The same engine with key lookups ([`crate::lookup`]) answered from
    /// the serving index, or always planned.
    pub fn with_key_lookups(mut self, on: bool) -> Self {
        self.key_lookups = on;
        self
    }

    /// The answer to `statement` if it is a key lookup that the serving
    /// index can answer now, as the general path would (the same masks);
    /// `None` sends it to the general path. Neither admits nor audits.
    pub async fn lookup(&self, principal: &Principal, statement: &Statement) -> Option<Looked> {
        if !self.key_lookups {
            return None;
        }
        let lookup = crate::lookup::recognize(statement)?;
        let generations = self.catalog.generations().await.ok()?;
        let generation = generations.iter().find(|g| g.domain == lookup.domain && g.schema_name() == lookup.schema)?;
        let spec = generation.contract.tables.iter().find(|(n, _)| n.as_str() == lookup.table).map(|(_, t)| t)?;
        let Projection::Upsert { key, .. } = &spec.projection else { return None };
        // Every key column exactly once, and nothing else.
        if lookup.keys.len() != key.len() {
            return None;
        }
        let mut values = Vec::with_capacity(key.len());
        for k in key {
            let [(_, v)] = lookup.keys.iter().filter(|(c, _)| c == k.as_str()).collect::<Vec<_>>()[..] else { return None };
            values.push(v);
        }
        let roles = crate::catalog::roles_for(principal, &generation.domain);
        let (url, delta, table) = self.catalog.latest_masked(generation, &lookup.table, &roles).await.ok()??;
        let schema = table.schema();
        let mut key_fields = Vec::with_capacity(key.len());
        for k in key {
            // A key the caller does not see as stored: the general path (which masks, or says why not).
            let i = schema.index_of(k.as_str()).ok().filter(|i| table.is_clear(*i))?;
            key_fields.push(table.raw_field(i)?);
        }
        let types: Vec<DataType> = key_fields.iter().map(|f| f.data_type().clone()).collect();
        let key_values = crate::lookup::key_columns(&values, &types)?;
        let chosen: Vec<(usize, String)> = match &lookup.columns {
            None => schema.fields().iter().enumerate().map(|(i, f)| (i, f.name().clone())).collect(),
            Some(columns) => columns.iter().map(|(c, out)| schema.index_of(c).ok().map(|i| (i, out.clone()))).collect::<Option<_>>()?,
        };
        let names: Vec<String> = key.iter().map(|k| k.to_string()).collect();
        let index = self.indexes.get(&url, &delta, &names, &types)?;
        // The stored columns to read: those chosen, and the key.
        let mut read: Vec<arrow::datatypes::FieldRef> = Vec::new();
        for f in chosen.iter().map(|(i, _)| table.raw_field(*i)).chain(key_fields.iter().cloned().map(Some)) {
            let f = f?;
            if !read.iter().any(|r| r.name() == f.name()) {
                read.push(f);
            }
        }
        let read = Arc::new(arrow::datatypes::Schema::new(read));
        let rows = match index.rows(self.indexes.hasher(), &key_values, &read).await {
            Ok(rows) => rows,
            Err(e) => {
                tracing::debug!(table = %table.name(), error = %e, "a key lookup takes the general path");
                return None;
            }
        };
        let indices: Vec<usize> = chosen.iter().map(|(i, _)| *i).collect();
        let output = crate::lookup::output_schema(
            indices.iter().zip(&chosen).map(|(i, (_, name))| (Arc::clone(&schema.fields()[*i]), name.as_str())).collect(),
        );
        let batch = match rows {
            None => None,
            Some(rows) => {
                let rows = match lookup.limit {
                    Some(0) => {
                        self.answered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        return Some(Looked { schema: output, batch: None, table: table.name().to_owned() });
                    }
                    Some(n) if n < rows.num_rows() => rows.slice(0, n),
                    _ => rows,
                };
                let stored = chosen
                    .iter()
                    .map(|(i, _)| table.raw_field(*i).and_then(|f| rows.column_by_name(f.name()).cloned()))
                    .collect::<Option<Vec<_>>>()?;
                let stored = RecordBatch::try_new_with_options(
                    Arc::new(arrow::datatypes::Schema::new(chosen.iter().map(|(i, _)| table.raw_field(*i)).collect::<Option<Vec<_>>>()?)),
                    stored,
                    &arrow::array::RecordBatchOptions::new().with_row_count(Some(rows.num_rows())),
                )
                .ok()?;
                let masked = match table.mask_chosen(&indices, &stored).await {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::debug!(table = %table.name(), error = %e, "a key lookup takes the general path");
                        return None;
                    }
                };
                // The output names (aliases) on the masked columns.
                let options = arrow::array::RecordBatchOptions::new().with_row_count(Some(masked.num_rows()));
                Some(RecordBatch::try_new_with_options(Arc::clone(&output), masked.columns().to_vec(), &options).ok()?)
            }
        };
        self.answered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Some(Looked { schema: output, batch, table: table.name().to_owned() })
    }

    /// How many key lookups the serving index answered (the others were planned).
    pub fn lookups_answered(&self) -> u64 {
        self.answered.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The same engine with late masking ([`crate::late`]) on or off.
    pub fn with_late_masking(mut self, on: bool) -> Self {
        self.late_masking = on;
        self
    }

    /// Waits for a slot for one more query of `principal` (see [`Admission`]).
    pub async fn admit(&self, principal: &Principal) -> Result<Permit, QueryError> {
        self.admission.admit(principal).await
    }

    pub fn admission(&self) -> &Arc<Admission> {
        &self.admission
    }

    /// [`sandbox::check_bounds`] on a thread with a deep stack, for text
    /// that another parser reads.
    pub async fn check_bounds(&self, sql: &str) -> Result<(), QueryError> {
        let (sql, bounds) = (sql.to_owned(), self.limits.bounds.clone());
        on_deep_stack(move || sandbox::check_bounds(&sql, &bounds)).await?.map_err(QueryError::from)
    }

    /// Checks SQL text against the bounds and parses it, on a thread whose
    /// stack no tree the bounds let through can exhaust (a refused tree is
    /// dropped there too).
    pub async fn check(&self, sql: &str) -> Result<sandbox::Checked, QueryError> {
        let (sql, bounds) = (sql.to_owned(), self.limits.bounds.clone());
        on_deep_stack(move || sandbox::check_bounded(&sql, &bounds)).await?.map_err(QueryError::from)
    }

    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.catalog
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Waits until every query so far is in the audit log.
    pub async fn flush_audit(&self) {
        self.auditor.flush().await;
    }

    /// A session for `principal`: its catalog holds what it may read, masked.
    pub async fn session(&self, principal: &Principal) -> Result<Session, QueryError> {
        let generations = self.catalog.generations().await.map_err(|e| QueryError::new(ErrorKind::Internal, e.to_string()))?;
        let catalogs = Arc::new(CallerCatalogs::new(&self.catalog, principal, &generations));
        Ok(Session { principal: principal.clone(), catalogs, engine: self.clone() })
    }

    /// Runs one query for `principal`, arriving `via` (`http`, `pgwire`,
    /// `catalog`). Every outcome is audited.
    pub async fn query(&self, principal: &Principal, via: &str, sql: &str) -> Result<Rows, QueryError> {
        let audit = Audit::start(self, principal, via, sql);
        let permit = match self.admit(principal).await {
            Ok(p) => p,
            Err(e) => {
                audit.finish(0, Vec::new(), Err(&e));
                return Err(e);
            }
        };
        let deadline = audit.started + self.limits.timeout;
        // A lookup is under the same bounds on the text as any query (the
        // general path checks them again, and says what is wrong).
        if self.key_lookups
            && sandbox::check_text(sql, &self.limits.bounds).is_ok()
            && let Some(statement) = crate::lookup::parse(sql)
            && sandbox::check_depth(&statement, &self.limits.bounds).is_ok()
            && let DFStatement::Statement(statement) = &statement
        {
            match tokio::time::timeout_at(deadline, self.lookup(principal, statement)).await {
                Ok(Some(looked)) => return Ok(self.ready(looked, deadline, audit).holding(permit)),
                Ok(None) => {}
                Err(_) => {
                    let e = timeout(&self.limits);
                    audit.finish(0, Vec::new(), Err(&e));
                    return Err(e);
                }
            }
        }
        let planned = tokio::time::timeout_at(deadline, async {
            let checked = self.check(sql).await?;
            let session = self.session(principal).await?;
            session.plan(checked.statement, &checked.as_of).await
        })
        .await
        .unwrap_or_else(|_| Err(timeout(&self.limits)));
        match planned {
            Ok(plan) => self.execute(plan, deadline, audit).map(|rows| rows.holding(permit)),
            Err(e) => {
                audit.finish(0, Vec::new(), Err(&e));
                Err(e)
            }
        }
    }

    /// The rows of a key lookup, under the same row limit and audit as a planned query's.
    fn ready(&self, looked: Looked, deadline: Instant, audit: Audit) -> Rows {
        let stream = futures::stream::iter(looked.batch.map(Ok));
        Rows {
            schema: Arc::clone(&looked.schema),
            stream: Box::pin(RecordBatchStreamAdapter::new(looked.schema, stream)),
            deadline,
            max_rows: self.limits.max_rows,
            rows: 0,
            truncated: false,
            tables: vec![looked.table],
            audit: Some(audit),
            engine: self.clone(),
            permit: None,
        }
    }

    /// Runs a planned query (from [`Session::plan`]).
    pub fn execute(&self, plan: Planned, deadline: Instant, audit: Audit) -> Result<Rows, QueryError> {
        let tables = MaskedScanExec::tables_read(&plan.physical);
        let schema = plan.physical.schema();
        match execute_stream(plan.physical, plan.state.task_ctx()) {
            Ok(stream) => Ok(Rows {
                schema,
                stream,
                deadline,
                max_rows: self.limits.max_rows,
                rows: 0,
                truncated: false,
                tables,
                audit: Some(audit),
                engine: self.clone(),
                permit: None,
            }),
            Err(e) => {
                let e = self.error(e);
                audit.finish(0, tables, Err(&e));
                Err(e)
            }
        }
    }

    /// A DataFusion error as the caller is told it: classified, without
    /// storage locations.
    pub fn error(&self, e: DataFusionError) -> QueryError {
        let root = e.find_root();
        let kind = match root {
            DataFusionError::SQL(..) => ErrorKind::Syntax,
            DataFusionError::Plan(_) | DataFusionError::SchemaError(..) | DataFusionError::NotImplemented(_) => ErrorKind::Invalid,
            DataFusionError::ResourcesExhausted(_) => ErrorKind::Memory,
            DataFusionError::ArrowError(..) | DataFusionError::Execution(_) => ErrorKind::Execution,
            _ => ErrorKind::Internal,
        };
        let mut message = root.to_string();
        if matches!(root, DataFusionError::ObjectStore(_) | DataFusionError::IoError(_)) {
            // Which file of which table could not be read is for the server's log, not the caller.
            tracing::warn!(error = %message, "a query could not read the warehouse");
            message = "the table's storage could not be read: a version older than the retention window has had its files \
                       vacuumed, or the warehouse is unreachable; try a newer version, or again later"
                .to_owned();
        }
        if kind == ErrorKind::Invalid && message.contains("not found") && message.contains("table") {
            message.push_str(
                "; tables are addressed `domain.product.table` (a previous major version: `domain.\"product@v1\".table`), and SHOW TABLES lists those you may read",
            );
        }
        if kind == ErrorKind::Memory {
            message = format!("the query needs more than its memory limit of {} MiB: {message}", self.limits.memory_bytes >> 20);
        }
        self.scrubbed(kind, &message)
    }

    /// An error of `kind` with `message` scrubbed of storage locations.
    pub fn scrubbed(&self, kind: ErrorKind, message: &str) -> QueryError {
        QueryError::new(kind, scrub(message, self.catalog.warehouse()))
    }

    /// The error of a query over its time limit.
    pub fn timeout_error(&self) -> QueryError {
        timeout(&self.limits)
    }
}

/// Runs `f` on a thread of its own with a deep stack, and waits for it.
async fn on_deep_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, QueryError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("tessera-sql-check".into())
        .stack_size(CHECK_STACK_BYTES)
        .spawn(move || {
            let _ = tx.send(f());
        })
        .map_err(|e| QueryError::new(ErrorKind::Internal, format!("cannot start the SQL checker: {e}")))?;
    rx.await.map_err(|_| QueryError::new(ErrorKind::Internal, "the SQL checker failed on this query".to_owned()))
}

fn timeout(limits: &Limits) -> QueryError {
    QueryError::new(
        ErrorKind::Timeout,
        format!("the query ran longer than its limit of {} s: filter earlier, aggregate, or add LIMIT", limits.timeout.as_secs_f64()),
    )
}

/// Removes storage locations from a message.
fn scrub(message: &str, warehouse: &Warehouse) -> String {
    let root = warehouse.root();
    let mut out = message.replace(root.as_str(), "<warehouse>/");
    let path = root.path();
    if path.len() > 1 {
        out = out.replace(path, "<warehouse>/");
        out = out.replace(path.trim_start_matches('/'), "<warehouse>/");
    }
    out
}

/// One caller's session: the catalogs it may read.
#[derive(Debug, Clone)]
pub struct Session {
    principal: Principal,
    catalogs: Arc<CallerCatalogs>,
    engine: Engine,
}

/// A query ready to run.
#[derive(Debug)]
pub struct Planned {
    pub physical: Arc<dyn ExecutionPlan>,
    pub logical: LogicalPlan,
    state: SessionState,
}

impl Session {
    pub fn principal(&self) -> &Principal {
        &self.principal
    }

    pub fn catalogs(&self) -> &Arc<CallerCatalogs> {
        &self.catalogs
    }

    /// The DataFusion state a statement of this session plans in: the
    /// caller's catalogs, the resolved `as_of` reads, the limits, and no
    /// way to reach files, URLs or settings.
    pub fn state(&self, as_of: HashMap<String, Arc<dyn TableProvider>>) -> Result<SessionState, QueryError> {
        let limits = &self.engine.limits;
        let mut config = SessionConfig::new()
            .with_information_schema(true)
            .with_create_default_catalog_and_schema(false)
            .with_default_catalog_and_schema(crate::catalog::SYSTEM_CATALOG, "default")
            .with_target_partitions(limits.partitions.max(1));
        config.options_mut().sql_parser.dialect = datafusion::config::Dialect::PostgreSQL;
        let pool = self.engine.admission.pool(limits.memory_bytes);
        let shared = match &self.engine.runtime {
            Some(runtime) => RuntimeEnvBuilder::from_runtime_env(runtime),
            None => RuntimeEnvBuilder::new(),
        };
        let runtime = shared
            .with_memory_pool(Arc::clone(&pool))
            .with_disk_manager_builder(DiskManagerBuilder::default().with_mode(DiskManagerMode::Disabled))
            .build_arc()
            .map_err(|e| self.engine.error(e))?;
        let mut functions = HashMap::new();
        for f in datafusion::functions_table::all_default_table_functions() {
            functions.insert(f.name().to_owned(), f);
        }
        functions
            .insert(AS_OF.to_owned(), Arc::new(datafusion::catalog::TableFunction::new(AS_OF.to_owned(), Self::as_of_function(as_of))));
        let builder = SessionStateBuilder::new()
            .with_config(config)
            .with_runtime_env(runtime)
            .with_default_features()
            .with_table_factories(HashMap::new())
            .with_catalog_list(Arc::clone(&self.catalogs) as _)
            .with_table_functions(functions);
        // What DataFusion's operators do not reserve is reserved in the query's
        // pool, and functions that could allocate without bound are bounded,
        // what they produce reserved.
        let ledger = Arc::new(tessera_sql::budget::Ledger::new(pool, limits.partitions));
        let builder =
            if self.engine.late_masking { builder.with_physical_optimizer_rule(Arc::new(crate::late::LateMasking)) } else { builder };
        let builder = builder
            .with_physical_optimizer_rule(Arc::new(tessera_sql::budget::Metering::new(limits.memory_bytes).releasing(Arc::clone(&ledger))));
        let bounded = Arc::new(tessera_sql::guard::Bounded::metered(limits.max_value_bytes(), ledger));
        Ok(bounded.register(builder).build())
    }

    /// The `as_of` table function over tables [`Session::resolve_as_of`] opened.
    pub fn as_of_function(tables: HashMap<String, Arc<dyn TableProvider>>) -> Arc<dyn TableFunctionImpl> {
        Arc::new(AsOfFunction { tables })
    }

    /// Opens the table versions that `as_of` calls read.
    pub async fn resolve_as_of(&self, calls: &[AsOf]) -> Result<HashMap<String, Arc<dyn TableProvider>>, QueryError> {
        let mut out = HashMap::new();
        for call in calls {
            let not_found = || {
                QueryError::new(
                    ErrorKind::Invalid,
                    format!("as_of: there is no table `{}` that you may read; name it `domain.product.table`", call.table),
                )
            };
            let reference = TableReference::parse_str(&call.table);
            let (Some(domain), Some(schema)) = (reference.catalog(), reference.schema()) else { return Err(not_found()) };
            let product = self.catalogs.schema(domain, schema).ok_or_else(not_found)?;
            let table = product.table_at(reference.table(), &call.at).await.map_err(|e| self.engine.error(e))?.ok_or_else(not_found)?;
            out.insert(AsOf::key(&call.table, &call.at), table);
        }
        Ok(out)
    }

    /// The same session with a system catalog for protocol metadata (see
    /// [`CallerCatalogs::with_system_catalog`]).
    pub fn with_system_catalog(&self) -> Session {
        Session { principal: self.principal.clone(), catalogs: Arc::new(self.catalogs.with_system_catalog()), engine: self.engine.clone() }
    }

    /// The same session with `system` as its system catalog.
    pub fn with_system(&self, system: Arc<dyn datafusion::catalog::CatalogProvider>) -> Session {
        Session { principal: self.principal.clone(), catalogs: Arc::new(self.catalogs.with_system(system)), engine: self.engine.clone() }
    }

    /// The engine this session belongs to.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Plans a checked statement: logical plan, the read-only check on it,
    /// physical plan.
    pub async fn plan(&self, statement: DFStatement, as_of: &[AsOf]) -> Result<Planned, QueryError> {
        let resolved = self.resolve_as_of(as_of).await?;
        let mut state = self.state(resolved)?;
        let logical = state.statement_to_plan(statement).await.map_err(|e| self.engine.error(e))?;
        verify_read_only(&logical)?;
        // A statement that gathers groups into values runs in smaller batches.
        tessera_sql::budget::size_batches(state.config_mut().options_mut(), &logical, self.engine.limits.memory_bytes);
        let physical = state.create_physical_plan(&logical).await.map_err(|e| self.engine.error(e))?;
        Ok(Planned { physical, logical, state })
    }
}

/// DataFusion's own check of a plan: no DDL, no DML, no statements (a
/// second wall behind [`sandbox::check`]).
pub fn verify_read_only(plan: &LogicalPlan) -> Result<(), QueryError> {
    SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false)
        .verify_plan(plan)
        .map_err(|e| QueryError::new(ErrorKind::ReadOnly, e.find_root().to_string()))
}

/// The tables a logical plan reads, as `domain.product.table`.
pub fn tables_in(plan: &LogicalPlan) -> Vec<String> {
    use datafusion::common::tree_node::TreeNodeRecursion;
    let mut out = Vec::new();
    let _ = plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node
            && let Some(source) = scan.source.downcast_ref::<datafusion::datasource::DefaultTableSource>()
            && let Some(table) = source.table_provider.downcast_ref::<crate::table::MaskedTable>()
        {
            out.push(table.name().to_owned());
        }
        Ok(TreeNodeRecursion::Continue)
    });
    out.sort();
    out.dedup();
    out
}

/// `as_of('domain.product.table', version | time)`: the table version that
/// was opened for this call before planning (see [`Session::resolve_as_of`]).
#[derive(Debug)]
struct AsOfFunction {
    tables: HashMap<String, Arc<dyn TableProvider>>,
}

impl TableFunctionImpl for AsOfFunction {
    fn call_with_args(&self, args: TableFunctionArgs) -> datafusion::common::Result<Arc<dyn TableProvider>> {
        let usage = || DataFusionError::Plan("as_of takes a table name and a literal version or time".into());
        let [table, at] = args.exprs() else { return Err(usage()) };
        let table = match literal(table) {
            Some(ScalarValue::Utf8(Some(s)) | ScalarValue::Utf8View(Some(s)) | ScalarValue::LargeUtf8(Some(s))) => s,
            _ => return Err(usage()),
        };
        let at = match literal(at) {
            Some(ScalarValue::Utf8(Some(s)) | ScalarValue::Utf8View(Some(s)) | ScalarValue::LargeUtf8(Some(s))) => {
                At::Time(sandbox::parse_time(&s).map_err(DataFusionError::Plan)?)
            }
            Some(v) if v.data_type().is_integer() => {
                let n = v.cast_to(&DataType::Int64)?;
                let ScalarValue::Int64(Some(n)) = n else { return Err(usage()) };
                At::Version(u64::try_from(n).map_err(|_| DataFusionError::Plan(format!("as_of: {n} is not a table version")))?)
            }
            _ => return Err(usage()),
        };
        self.tables.get(&AsOf::key(&table, &at)).cloned().ok_or_else(usage)
    }
}

/// The value of a literal, looking through casts of literals (`TIMESTAMP '…'`).
fn literal(e: &Expr) -> Option<ScalarValue> {
    match e {
        Expr::Literal(v, _) => Some(v.clone()),
        Expr::Cast(c) => literal(&c.expr),
        Expr::TryCast(c) => literal(&c.expr),
        _ => None,
    }
}

/// A query's audit record, written when it ends (however it ends).
#[derive(Debug)]
pub struct Audit {
    auditor: Auditor,
    principal: String,
    via: String,
    sql: String,
    at: chrono::DateTime<chrono::Utc>,
    started: Instant,
}

impl Audit {
    pub fn start(engine: &Engine, principal: &Principal, via: &str, sql: &str) -> Self {
        Self {
            auditor: engine.auditor.clone(),
            principal: principal.name.clone(),
            via: via.to_owned(),
            sql: sql.to_owned(),
            at: chrono::Utc::now(),
            started: Instant::now(),
        }
    }

    pub fn started(&self) -> Instant {
        self.started
    }

    pub fn finish(self, rows: usize, tables: Vec<String>, outcome: Result<(), &QueryError>) {
        let (outcome, error) = match outcome {
            Ok(()) => ("ok", None),
            Err(e) if matches!(e.kind, ErrorKind::Syntax | ErrorKind::ReadOnly) => ("refused", Some(e.message.clone())),
            Err(e) => ("failed", Some(e.message.clone())),
        };
        self.write(rows, tables, outcome, error);
    }

    /// The caller stopped reading before the end.
    pub fn cancelled(self, rows: usize, tables: Vec<String>) {
        self.write(rows, tables, "cancelled", None);
    }

    fn write(self, rows: usize, tables: Vec<String>, outcome: &str, error: Option<String>) {
        self.auditor.record(QueryRecord {
            at_micros: self.at.timestamp_micros(),
            principal: self.principal,
            via: self.via,
            // A value the caller typed (an email in a filter) is not stored in clear.
            sql: sandbox::redact_literals(&self.sql),
            tables,
            rows: i64::try_from(rows).unwrap_or(i64::MAX),
            duration_us: i64::try_from(self.started.elapsed().as_micros()).unwrap_or(i64::MAX),
            outcome: outcome.to_owned(),
            // Error messages quote values too (`cannot cast 'ada@…'`).
            error: error.map(|e| sandbox::redact_quoted(&e)),
        });
    }
}

/// A running query's result: batches under the time and row limits.
/// Dropping it stops the query; it is audited whichever way it ends.
pub struct Rows {
    schema: SchemaRef,
    stream: SendableRecordBatchStream,
    deadline: Instant,
    max_rows: usize,
    rows: usize,
    truncated: bool,
    tables: Vec<String>,
    audit: Option<Audit>,
    engine: Engine,
    /// The query's admission slot, freed when the rows are dropped.
    permit: Option<Permit>,
}

impl std::fmt::Debug for Rows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rows").field("schema", &self.schema).field("rows", &self.rows).field("tables", &self.tables).finish()
    }
}

impl Rows {
    /// Keeps `permit` (the query's slot) until the rows are dropped.
    pub fn holding(mut self, permit: Permit) -> Self {
        self.permit = Some(permit);
        self
    }

    pub fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    /// The tables the query reads, as `domain.product.table`.
    pub fn tables(&self) -> &[String] {
        &self.tables
    }

    /// When the query must have ended, its last row read by the client included.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Rows returned so far.
    pub fn row_count(&self) -> usize {
        self.rows
    }

    /// Whether the result was cut at the row limit.
    pub fn truncated(&self) -> bool {
        self.truncated
    }

    pub fn max_rows(&self) -> usize {
        self.max_rows
    }

    /// The next batch; `None` at the end (or at the row limit).
    pub async fn next(&mut self) -> Option<Result<RecordBatch, QueryError>> {
        self.audit.as_ref()?;
        if self.truncated || self.rows >= self.max_rows {
            if !self.truncated {
                // Anything more is over the limit: look once, to say whether the result was cut.
                let next = tokio::time::timeout_at(self.deadline, self.stream.next()).await;
                self.truncated = matches!(next, Ok(Some(Ok(b))) if b.num_rows() > 0);
            }
            self.end(Ok(()));
            return None;
        }
        match tokio::time::timeout_at(self.deadline, self.stream.next()).await {
            Err(_) => {
                let e = timeout(&self.engine.limits);
                self.end(Err(&e));
                Some(Err(e))
            }
            Ok(None) => {
                self.end(Ok(()));
                None
            }
            Ok(Some(Err(e))) => {
                let e = self.engine.error(e);
                self.end(Err(&e));
                Some(Err(e))
            }
            Ok(Some(Ok(batch))) => {
                let room = self.max_rows - self.rows;
                let batch = if batch.num_rows() > room {
                    self.truncated = true;
                    batch.slice(0, room)
                } else {
                    batch
                };
                self.rows += batch.num_rows();
                Some(Ok(batch))
            }
        }
    }

    fn end(&mut self, outcome: Result<(), &QueryError>) {
        if let Some(audit) = self.audit.take() {
            audit.finish(self.rows, std::mem::take(&mut self.tables), outcome);
        }
    }
}

impl Drop for Rows {
    fn drop(&mut self) {
        if let Some(audit) = self.audit.take() {
            audit.cancelled(self.rows, std::mem::take(&mut self.tables));
        }
    }
}
