//! The projector of one product: follows its log and applies each run of
//! new events to every table of the current generation, one Delta commit
//! per table per batch, each carrying the last log position it applied.
//!
//! Exactly once, without a checkpoint of its own: a table's applied
//! position is read back from its Delta log (the `txn` action of
//! [`crate::delta`]), so after a crash each table resumes exactly where its
//! data ends. Tables may stand at different positions (a crash between two
//! tables' commits); a run reads from the lowest and gives each table only
//! the events after its own.

use std::collections::HashSet;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::Schema;
use deltalake::DeltaTable;
use deltalake::datafusion::prelude::SessionContext;
use serde::Serialize;
use tessera_contract::Contract;
use tessera_contract::model::{Projection, Table};
use tessera_store::{StoredEvent, Store};
use url::Url;

use crate::delta;
use crate::rows::{Upserts, append_rows};
use crate::schema::table_schema;
use crate::warehouse::Warehouse;

/// What can stop a run. The projector keeps nothing half-done: after an
/// error, [`Projector::reset`] and run again.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] tessera_store::Error),
    #[error(transparent)]
    Delta(#[from] delta::Error),
    #[error("derived table {table}: {message}")]
    Derived { table: String, message: String },
}

/// The transaction identifier under which the projector records positions.
pub const APP_ID: &str = "tessera-projector";

/// Events per batch: each batch is one commit per table, and bounds memory.
pub const DEFAULT_BATCH: i64 = 50_000;

/// The projector of one product.
pub struct Projector {
    store: Store,
    warehouse: Warehouse,
    domain: String,
    name: String,
    batch: i64,
    generation: Option<Generation>,
}

/// The tables of one contract version, as far as they are applied.
struct Generation {
    contract: Contract,
    version: String,
    major: u64,
    tables: Vec<Target>,
}

struct Target {
    name: String,
    spec: Table,
    schema: Schema,
    url: Url,
    delta: DeltaTable,
    /// The log position the table reflects: its last commit's, or further
    /// when later events gave it nothing to commit.
    applied: i64,
    last_commit_at: Option<i64>,
}

/// How a run went.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunReport {
    /// Events read from the log.
    pub events: u64,
    /// Delta commits made.
    pub commits: u64,
    /// Events set aside as dead letters.
    pub dead_letters: u64,
    /// The position every table has applied now.
    pub position: i64,
}

/// One table as the projector sees it.
#[derive(Debug, Clone, Serialize)]
pub struct TableState {
    pub name: String,
    pub kind: &'static str,
    pub location: String,
    pub applied_position: i64,
    #[serde(flatten)]
    pub stats: delta::TableStats,
    /// Microseconds since the epoch.
    #[serde(skip)]
    pub last_commit_at: Option<i64>,
}

impl Projector {
    pub fn new(store: Store, warehouse: Warehouse, domain: &str, name: &str) -> Self {
        Self { store, warehouse, domain: domain.to_owned(), name: name.to_owned(), batch: DEFAULT_BATCH, generation: None }
    }

    /// Events per batch (each batch is one commit per table).
    pub fn with_batch(mut self, batch: i64) -> Self {
        self.batch = batch.max(1);
        self
    }

    pub fn product(&self) -> String {
        format!("{}/{}", self.domain, self.name)
    }

    /// Forgets what is loaded; the next run reads every table's position
    /// back from storage.
    pub fn reset(&mut self) {
        self.generation = None;
    }

    /// The contract version and major being projected, once loaded.
    pub fn contract_version(&self) -> Option<(&str, u64)> {
        self.generation.as_ref().map(|g| (g.version.as_str(), g.major))
    }

    /// The lowest position applied by every table (what the product's
    /// tables reflect), once loaded.
    pub fn applied(&self) -> Option<i64> {
        self.generation.as_ref().map(|g| g.tables.iter().map(|t| t.applied).min().unwrap_or(0))
    }

    /// The state of each table.
    pub fn tables(&self) -> Result<Vec<TableState>, Error> {
        let Some(generation) = &self.generation else { return Ok(Vec::new()) };
        generation
            .tables
            .iter()
            .map(|t| {
                Ok(TableState {
                    name: t.name.clone(),
                    kind: t.spec.projection.kind(),
                    location: t.url.to_string(),
                    applied_position: t.applied,
                    stats: delta::stats(&t.delta, &t.url)?,
                    last_commit_at: t.last_commit_at,
                })
            })
            .collect()
    }

    /// The loaded Delta tables by name (for quality checks and readers).
    pub fn delta_tables(&self) -> Vec<(String, Table, DeltaTable)> {
        self.generation
            .as_ref()
            .map(|g| g.tables.iter().map(|t| (t.name.clone(), t.spec.clone(), t.delta.clone())).collect())
            .unwrap_or_default()
    }

    /// Loads the current contract and opens (or creates) its tables, unless
    /// that version is loaded already.
    async fn load(&mut self) -> Result<(), Error> {
        let contract = self.store.current_contract(&self.domain, &self.name).await?;
        let version = contract.version.to_string();
        if self.generation.as_ref().is_some_and(|g| g.version == version) {
            return Ok(());
        }
        let major = contract.version.major;
        let mut tables = Vec::with_capacity(contract.tables.len());
        for (name, spec) in &contract.tables {
            let schema = table_schema(spec);
            let url = self.warehouse.table_url(&self.domain, &self.name, major, name.as_str());
            let table = delta::open_or_create(&url, name.as_str(), &schema).await?;
            let applied = delta::applied(&table, &url, APP_ID).await?.unwrap_or(0);
            tables.push(Target { name: name.to_string(), spec: spec.clone(), schema, url, delta: table, applied, last_commit_at: None });
        }
        tracing::info!(product = %self.product(), version = %version, "projecting contract version");
        self.generation = Some(Generation { contract, version, major, tables });
        Ok(())
    }

    /// Applies every event not yet applied, in batches, then recomputes
    /// the derived tables whose inputs moved. `progress` hears the position
    /// reached after each batch.
    pub async fn run(&mut self, progress: &(dyn Fn(i64) + Send + Sync)) -> Result<RunReport, Error> {
        self.run_until(i64::MAX, progress).await
    }

    /// [`Projector::run`], stopping at log position `until`.
    pub async fn run_until(&mut self, until: i64, progress: &(dyn Fn(i64) + Send + Sync)) -> Result<RunReport, Error> {
        self.load().await?;
        let mut report = RunReport::default();
        let Some(generation) = self.generation.as_mut() else { return Ok(report) };
        let major = i64::try_from(generation.major).unwrap_or(i64::MAX);
        let mut cursor = generation.tables.iter().filter(|t| is_event_table(t)).map(|t| t.applied).min().unwrap_or(i64::MAX);
        let mut moved: HashSet<String> = HashSet::new();
        while cursor < until {
            let page = self.store.log_after(&self.domain, &self.name, cursor, until, self.batch).await?;
            let Some(last) = page.events.last() else { break };
            let end = last.position;
            report.events += page.events.len() as u64;
            for target in generation.tables.iter_mut().filter(|t| is_event_table(t)) {
                let first = page.events.partition_point(|e| e.position <= target.applied);
                let events = &page.events[first..];
                if events.is_empty() {
                    continue;
                }
                let (committed, dead) = apply(target, events, end, &generation.version).await?;
                report.dead_letters += dead.len() as u64;
                self.store.record_dead_letters(&self.domain, &self.name, major, &dead).await?;
                if committed {
                    report.commits += 1;
                    moved.insert(target.name.clone());
                }
                target.applied = end;
            }
            cursor = end;
            progress(cursor);
        }
        report.commits += derive(generation, &moved).await?;
        report.position = generation.tables.iter().map(|t| t.applied).min().unwrap_or(0);
        Ok(report)
    }

    /// Runs each table's quality checks and stores the results.
    pub async fn check_quality(&self) -> Result<Vec<tessera_store::QualityResult>, Error> {
        let Some(generation) = &self.generation else { return Ok(Vec::new()) };
        let mut all = Vec::new();
        for t in &generation.tables {
            let results = crate::quality::run(&t.name, &t.spec, &t.delta).await?;
            all.extend(results);
        }
        let major = i64::try_from(generation.major).unwrap_or(i64::MAX);
        self.store.record_quality(&self.domain, &self.name, major, &all).await?;
        Ok(all)
    }

    /// The contract being projected.
    pub fn contract(&self) -> Option<&Contract> {
        self.generation.as_ref().map(|g| &g.contract)
    }
}

impl std::fmt::Debug for Projector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Projector")
            .field("product", &self.product())
            .field("warehouse", &self.warehouse.root().as_str())
            .field("contract_version", &self.contract_version())
            .field("applied", &self.applied())
            .finish()
    }
}

fn is_event_table(t: &Target) -> bool {
    !matches!(t.spec.projection, Projection::Sql { .. })
}

/// Applies `events` to one table, committing with `position` if they change
/// it. Returns whether it committed, and the events it could not project.
async fn apply(
    target: &mut Target,
    events: &[StoredEvent],
    position: i64,
    contract_version: &str,
) -> Result<(bool, Vec<tessera_store::DeadLetter>), Error> {
    let (committed, dead) = match &target.spec.projection {
        Projection::Append { .. } => {
            let (rows, dead) = append_rows(&target.name, &target.spec, events);
            if rows.is_empty() {
                mark_dead_letters_applied(target, &dead, position, contract_version).await?;
                (false, dead)
            } else {
                let batch = delta::batch(&target.name, &target.schema, &rows)?;
                target.delta =
                    delta::append(target.delta.clone(), &target.url, batch, APP_ID, position, contract_version).await?;
                (true, dead)
            }
        }
        Projection::Upsert { key, .. } => {
            let upserts = Upserts::prepare(&target.name, &target.spec, events);
            let lookups = upserts.lookups(key);
            let existing = delta::existing_keys(&target.delta, &target.url, &target.schema, key, &lookups).await?;
            let (fold, dead) = upserts.fold(&existing);
            if fold.is_empty() {
                mark_dead_letters_applied(target, &dead, position, contract_version).await?;
                (false, dead)
            } else {
                target.delta = delta::merge(
                    target.delta.clone(),
                    &target.url,
                    &target.schema,
                    key,
                    fold,
                    APP_ID,
                    position,
                    contract_version,
                )
                .await?;
                (true, dead)
            }
        }
        Projection::Sql { .. } => (false, Vec::new()),
    };
    if committed {
        target.last_commit_at = Some(chrono::Utc::now().timestamp_micros());
    }
    Ok((committed, dead))
}

/// When a run gave a table only dead letters, records its position all the
/// same, so that a restart does not read those events again.
async fn mark_dead_letters_applied(
    target: &mut Target,
    dead: &[tessera_store::DeadLetter],
    position: i64,
    contract_version: &str,
) -> Result<(), Error> {
    if !dead.is_empty() {
        target.delta = delta::mark(target.delta.clone(), &target.url, APP_ID, position, contract_version).await?;
    }
    Ok(())
}

/// Recomputes the derived tables that read a table in `moved`, or that
/// stand behind their inputs (a crash between an input's commit and the
/// recomputation). Returns the commits made.
async fn derive(generation: &mut Generation, moved: &HashSet<String>) -> Result<u64, Error> {
    let mut commits = 0;
    for i in 0..generation.tables.len() {
        let Projection::Sql { query, reads } = &generation.tables[i].spec.projection else { continue };
        let inputs: Vec<&Target> =
            generation.tables.iter().filter(|t| reads.iter().any(|r| r.as_str() == t.name)).collect();
        let position = inputs.iter().map(|t| t.applied).min().unwrap_or(0);
        let target = &generation.tables[i];
        let stale = reads.iter().any(|r| moved.contains(r.as_str())) || target.applied < position;
        if !stale {
            // Its inputs' data did not change: it is what it would be at
            // their position.
            generation.tables[i].applied = generation.tables[i].applied.max(position);
            continue;
        }
        let failed = |message: String| Error::Derived { table: target.name.clone(), message };
        let ctx = SessionContext::new();
        for input in &inputs {
            let provider = input.delta.table_provider().await.map_err(|e| failed(e.to_string()))?;
            ctx.register_table(input.name.as_str(), provider).map_err(|e| failed(e.to_string()))?;
        }
        let batches = ctx.sql(query).await.map_err(|e| failed(e.to_string()))?.collect().await.map_err(|e| failed(e.to_string()))?;
        let batches = conform(&target.schema, batches).map_err(failed)?;
        let version = generation.version.clone();
        let target = &mut generation.tables[i];
        target.delta = delta::overwrite(target.delta.clone(), &target.url, batches, APP_ID, position, &version).await?;
        target.applied = position;
        target.last_commit_at = Some(chrono::Utc::now().timestamp_micros());
        commits += 1;
    }
    Ok(commits)
}

/// A query's batches in the table's schema: its columns by name, cast to
/// the column types; a required column with nulls is an error.
pub(crate) fn conform(schema: &Schema, batches: Vec<RecordBatch>) -> Result<Vec<RecordBatch>, String> {
    let target = Arc::new(schema.clone());
    let mut out = Vec::with_capacity(batches.len().max(1));
    for b in batches {
        let mut columns = Vec::with_capacity(schema.fields().len());
        for field in schema.fields() {
            let column = b
                .column_by_name(field.name())
                .ok_or_else(|| format!("the query gives no column `{}`; name it with AS", field.name()))?;
            let cast = arrow::compute::cast(column, field.data_type())
                .map_err(|e| format!("column `{}` ({}) does not cast to {}: {e}", field.name(), column.data_type(), field.data_type()))?;
            if !field.is_nullable() && cast.null_count() > 0 {
                return Err(format!("column `{}` is required but the query gives {} null value(s)", field.name(), cast.null_count()));
            }
            columns.push(cast);
        }
        out.push(RecordBatch::try_new(target.clone(), columns).map_err(|e| e.to_string())?);
    }
    if out.is_empty() {
        out.push(RecordBatch::new_empty(target));
    }
    Ok(out)
}
