//! The projector of one product: follows its log and applies each run of
//! new events to every table of the current generation, each Delta commit
//! carrying the last log position it applies.
//!
//! The log is read in batches of [`DEFAULT_BATCH`] events. An append table
//! decodes each batch straight into Arrow (see [`crate::decode`]) and
//! gathers the rows until it has [`DEFAULT_COMMIT_ROWS`] of them (or
//! [`COMMIT_BYTES`]) or the run ends, then commits them at once: few
//! commits, large files. An upsert table folds each batch into net changes
//! per key and merges them in one commit. Dead letters are stored before
//! the commit that moves a table past their events.
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
use tessera_store::{Store, StoredEvent};
use url::Url;

use crate::decode::AppendDecoder;
use crate::delta;
use crate::rows::{Upserts, append_rows};
use crate::schema::table_schema;
use crate::upsert::{UpsertDecoder, UpsertFold};
use crate::warehouse::Warehouse;

/// What can stop a run. The projector keeps nothing half-done: after an
/// error, [`Projector::reset`] and run again.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] tessera_store::Error),
    #[error(transparent)]
    Delta(Box<delta::Error>),
    #[error("derived table {table}: {message}")]
    Derived { table: String, message: String },
    #[error("the projector failed unexpectedly ({0}); it retries, and the server's log has the details")]
    Panicked(String),
}

impl From<delta::Error> for Error {
    fn from(e: delta::Error) -> Self {
        Error::Delta(Box::new(e))
    }
}

/// The transaction identifier under which the projector records positions.
pub const APP_ID: &str = "tessera-projector";

/// Events read from the log at a time.
pub const DEFAULT_BATCH: i64 = 50_000;

/// Rows an append table gathers before it commits them (in files of the
/// Delta writer's target size), unless the run ends first.
pub const DEFAULT_COMMIT_ROWS: usize = 1_000_000;

/// Bytes of Arrow data an append table gathers before it commits them.
pub const COMMIT_BYTES: usize = 256 << 20;

/// The projector of one product.
pub struct Projector {
    store: Store,
    warehouse: Warehouse,
    domain: String,
    name: String,
    batch: i64,
    commit_rows: usize,
    /// Whether append tables use their compiled decoder (see [`crate::decode`]).
    compiled: bool,
    generation: Option<Generation>,
    /// When it turns true, a run stops after the batch in hand.
    stop: Option<tokio::sync::watch::Receiver<bool>>,
}

/// The tables of one contract version, as far as they are applied.
struct Generation {
    contract: Contract,
    version: String,
    major: u64,
    tables: Vec<Target>,
    /// Columns whose type the contract changed since the tables were
    /// written: the tables must be rebuilt before anything else.
    retyped: Vec<String>,
    /// Whether this generation is the live one (it has caught up once).
    live: bool,
    /// Which derived tables are views (never materialized).
    lineage: crate::lineage::Lineage,
}

struct Target {
    name: String,
    spec: Table,
    schema: Schema,
    url: Url,
    delta: DeltaTable,
    /// The compiled decoder of an append table, when its columns allow one.
    decoder: Option<AppendDecoder>,
    /// The compiled decoder of an upsert table, when its columns allow one.
    upsert: Option<UpsertDecoder>,
    /// What this run decoded for the table and has not committed.
    pending: Pending,
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
    /// Where the run's time went.
    pub stages: Stages,
}

/// Seconds spent in each stage of a run, summed over its batches.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Stages {
    /// Reading events from the log: the query and the rows it gives (on
    /// another thread, while the batch before is decoded and written).
    pub fetch: f64,
    /// Decoding those rows into events: parsing payloads and metadata,
    /// upcasting (on that thread too).
    pub parse: f64,
    /// Waiting for a batch of events to be read.
    pub read_wait: f64,
    /// Turning events into cells checked against their columns, and those
    /// into Arrow batches.
    pub decode: f64,
    /// Upsert tables: looking up which keys already have a row.
    pub lookup: f64,
    /// Recording dead letters.
    pub dead_letters: f64,
    /// Writing Parquet files and committing them to the Delta log.
    pub write: f64,
}

impl Stages {
    fn add(&mut self, other: &Stages) {
        self.fetch += other.fetch;
        self.parse += other.parse;
        self.read_wait += other.read_wait;
        self.decode += other.decode;
        self.lookup += other.lookup;
        self.dead_letters += other.dead_letters;
        self.write += other.write;
    }
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
        Self {
            store,
            warehouse,
            domain: domain.to_owned(),
            name: name.to_owned(),
            batch: DEFAULT_BATCH,
            commit_rows: DEFAULT_COMMIT_ROWS,
            compiled: true,
            generation: None,
            stop: None,
        }
    }

    /// Events read from the log at a time (an upsert table commits each
    /// such batch).
    pub fn with_batch(mut self, batch: i64) -> Self {
        self.batch = batch.max(1);
        self
    }

    /// Without the compiled decoder: every append table takes the general
    /// path (`rows`, then Arrow's JSON decoder). The two give the same
    /// tables; this is for tests and benchmarks that hold them side by side.
    pub fn with_compiled_decoder(mut self, compiled: bool) -> Self {
        self.compiled = compiled;
        self.generation = None;
        self
    }

    /// Rows an append table gathers before it commits (it commits at the
    /// end of every run as well).
    pub fn with_commit_rows(mut self, rows: usize) -> Self {
        self.commit_rows = rows.max(1);
        self
    }

    /// Stops runs between batches once `stop` turns true (a server
    /// shutting down): every commit is whole, and the next run resumes.
    pub fn with_stop(mut self, stop: tokio::sync::watch::Receiver<bool>) -> Self {
        self.stop = Some(stop);
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
        let major_id = i64::try_from(major).unwrap_or(i64::MAX);
        self.store.ensure_generation(&self.domain, &self.name, major_id).await?;
        let live = self.store.generations(&self.domain, &self.name).await?.iter().any(|g| g.major == major_id && g.state == "live");
        let lineage = crate::lineage::analyze(&contract).await;
        let mut tables = Vec::with_capacity(contract.tables.len());
        let mut retyped = Vec::new();
        for (name, spec) in &contract.tables {
            let schema = table_schema(spec);
            let url = self.warehouse.table_url(&self.domain, &self.name, major, name.as_str());
            let mut table = delta::open_or_create(&url, name.as_str(), &schema).await?;
            if lineage.is_view(name.as_str()) && (table.version().unwrap_or(0) > 0 || delta::stats(&table, &url)?.files > 0) {
                // A derived table that reads classified columns is a view: what an
                // earlier version materialized of it goes, every version of it.
                tracing::warn!(product = %self.product(), table = %name, "removing a derived table's materialized files: it reads classified columns and is served as a view");
                delta::remove_all(&table).await.map_err(|e| Error::Derived {
                    table: name.to_string(),
                    message: format!("cannot remove its materialized files: {e}"),
                })?;
                table = delta::open_or_create(&url, name.as_str(), &schema).await?;
            }
            retyped.extend(delta::type_changes(&table, &url, name.as_str(), &schema)?.into_iter().map(|c| format!("{name}.{c}")));
            let applied = delta::applied(&table, &url, APP_ID).await?.unwrap_or(0);
            let decoder = if self.compiled { AppendDecoder::compile(spec, &schema) } else { None };
            let upsert = if self.compiled { UpsertDecoder::compile(spec, &schema) } else { None };
            tables.push(Target {
                name: name.to_string(),
                spec: spec.clone(),
                schema,
                url,
                delta: table,
                decoder,
                upsert,
                pending: Pending::default(),
                applied,
                last_commit_at: None,
            });
        }
        tracing::info!(product = %self.product(), version = %version, "projecting contract version");
        self.generation = Some(Generation { contract, version, major, tables, retyped, live, lineage });
        Ok(())
    }

    /// Applies every event not yet applied, in batches, then recomputes
    /// the derived tables whose inputs moved. `progress` hears the events
    /// read so far after each batch.
    pub async fn run(&mut self, progress: &(dyn Fn(u64) + Send + Sync)) -> Result<RunReport, Error> {
        self.run_until(i64::MAX, progress).await
    }

    /// [`Projector::run`], stopping at log position `until`.
    pub async fn run_until(&mut self, until: i64, progress: &(dyn Fn(u64) + Send + Sync)) -> Result<RunReport, Error> {
        self.load().await?;
        if let Some(g) = self.generation.as_ref().filter(|g| !g.retyped.is_empty()) {
            tracing::info!(product = %self.product(), version = %g.version, columns = ?g.retyped, "column types changed: rebuilding the tables");
            // A column that is sealed now held clear values before (a table
            // written before sealing existed): its earlier versions go.
            let sealed: Vec<String> = g
                .retyped
                .iter()
                .filter_map(|tc| {
                    let (table, column) = tc.split_once('.')?;
                    let spec = g.contract.tables.iter().find(|(n, _)| n.as_str() == table)?.1;
                    let col = spec.columns.iter().find(|(n, _)| n.as_str() == column)?.1;
                    tessera_contract::seal::is_sealed(col).then(|| table.to_owned())
                })
                .collect();
            Box::pin(self.rebuild(&|_, _| {})).await?;
            if let Some(g) = self.generation.as_mut() {
                for t in g.tables.iter_mut().filter(|t| sealed.contains(&t.name)) {
                    tracing::warn!(table = %t.url, "deleting the table's versions from before sealing: they hold personal values in clear");
                    t.delta = delta::purge_history(t.delta.clone(), &t.url).await?;
                }
            }
        }
        let mut report = RunReport::default();
        let Some(generation) = self.generation.as_mut() else { return Ok(report) };
        let major = i64::try_from(generation.major).unwrap_or(i64::MAX);
        for t in &mut generation.tables {
            t.pending = Pending::default();
        }
        let mut cursor = generation.tables.iter().filter(|t| is_event_table(t)).map(|t| t.applied).min().unwrap_or(i64::MAX);
        let mut moved: HashSet<String> = HashSet::new();
        let mut caught_up = cursor >= until;
        // The next batch is read (on another thread) while this one is
        // decoded and written; parsed there too when a table takes parsed
        // events (compiled decoders read them as stored).
        let parse = generation.tables.iter().any(|t| is_event_table(t) && t.decoder.is_none() && t.upsert.is_none());
        let read = |after: i64| {
            let (store, domain, name, batch) = (self.store.clone(), self.domain.clone(), self.name.clone(), self.batch);
            tokio::spawn(async move {
                let raw = store.log_after_raw(&domain, &name, after, until, batch).await?;
                let clock = std::time::Instant::now();
                let parsed = if parse { raw.events.iter().map(|e| raw.parse(e)).collect() } else { Vec::new() };
                Ok::<_, tessera_store::Error>(Page { raw, parsed, parse_seconds: clock.elapsed().as_secs_f64() })
            })
        };
        let mut next = (cursor < until).then(|| read(cursor));
        while cursor < until {
            if self.stop.as_ref().is_some_and(|s| *s.borrow()) {
                break;
            }
            let Some(reading) = next.take() else { break };
            let clock = std::time::Instant::now();
            let page = reading.await.map_err(|e| Error::Panicked(format!("reading the log: {e}")))??;
            report.stages.read_wait += clock.elapsed().as_secs_f64();
            report.stages.fetch += page.raw.fetch_seconds;
            report.stages.parse += page.parse_seconds;
            let Some(last) = page.raw.events.last() else {
                caught_up = true;
                break;
            };
            let end = last.position;
            if end < until {
                next = Some(read(end));
            }
            report.events += page.raw.events.len() as u64;
            for target in generation.tables.iter_mut().filter(|t| is_event_table(t)) {
                let first = page.raw.events.partition_point(|e| e.position <= target.applied.max(target.pending.to));
                if first == page.raw.events.len() {
                    continue;
                }
                let (change, dead) = prepare(target, &page, first, &mut report.stages).await?;
                // The dead letters are stored before the commit that moves
                // the table past their events: a crash between the two
                // records them again on the next run (recording is
                // idempotent), never loses them.
                let clock = std::time::Instant::now();
                self.store.record_dead_letters(&self.domain, &self.name, major, &dead).await?;
                report.stages.dead_letters += clock.elapsed().as_secs_f64();
                report.dead_letters += dead.len() as u64;
                let clock = std::time::Instant::now();
                // What the events did gathers until there is enough for a commit.
                let pending = &mut target.pending;
                pending.skipped |= !dead.is_empty();
                pending.to = end;
                match change {
                    Change::Append(batch) => pending.add(batch),
                    Change::Folded(events) => pending.rows += events,
                    Change::Nothing => {}
                }
                if pending.rows >= self.commit_rows
                    || pending.bytes >= COMMIT_BYTES
                    || pending.fold.len() >= FOLD_KEYS
                    || pending.typed.len() >= FOLD_KEYS
                {
                    flush(target, &generation.version, &mut report, &mut moved).await?;
                }
                report.stages.write += clock.elapsed().as_secs_f64();
            }
            cursor = end;
            progress(report.events);
        }
        let clock = std::time::Instant::now();
        for target in generation.tables.iter_mut().filter(|t| is_event_table(t)) {
            flush(target, &generation.version, &mut report, &mut moved).await?;
        }
        report.stages.write += clock.elapsed().as_secs_f64();
        report.commits += derive(generation, &moved).await?;
        report.position = generation.tables.iter().map(|t| t.applied).min().unwrap_or(0);
        // A generation goes live once it has caught up with the log; the
        // one it replaces stays readable until it is retired.
        if caught_up && until == i64::MAX && !generation.live {
            self.store.promote_generation(&self.domain, &self.name, major).await?;
            generation.live = true;
            tracing::info!(product = %format!("{}/{}", self.domain, self.name), generation = %format!("v{}", generation.major), "generation is live");
        }
        Ok(report)
    }

    /// Runs each table's quality checks and stores the results.
    pub async fn check_quality(&self) -> Result<Vec<tessera_store::QualityResult>, Error> {
        let Some(generation) = &self.generation else { return Ok(Vec::new()) };
        let mut all = Vec::new();
        for t in generation.tables.iter().filter(|t| !generation.lineage.is_view(&t.name)) {
            let results = crate::quality::run(&t.name, &t.spec, &t.delta).await?;
            all.extend(results);
        }
        let major = i64::try_from(generation.major).unwrap_or(i64::MAX);
        self.store.record_quality(&self.domain, &self.name, major, &all).await?;
        Ok(all)
    }

    /// Projects the whole log afresh into scratch tables, then swaps each
    /// live table to the fresh rows in one commit (see
    /// [`delta::replace_with`]), and forgets the dead letters that the
    /// fresh run no longer sets aside (a fixed contract applies them).
    /// `progress` hears the events replayed and the number to replay. The
    /// caller must hold the product's lease: nothing else may commit to the
    /// live tables meanwhile.
    pub async fn rebuild(&mut self, progress: &(dyn Fn(u64, u64) + Send + Sync)) -> Result<serde_json::Value, Error> {
        let started = std::time::Instant::now();
        self.reset();
        self.load().await?;
        let Some(generation) = self.generation.as_ref() else { return Ok(serde_json::Value::Null) };
        let major = i64::try_from(generation.major).unwrap_or(i64::MAX);
        let label = format!("rebuild-{}", chrono::Utc::now().format("%Y%m%dT%H%M%S%.6fZ"));
        let staging = self.warehouse.staging(&self.domain, &self.name, &label);
        self.store.clear_dead_letters(&self.domain, &self.name, major).await?;
        let mut fresh = Projector::new(self.store.clone(), staging, &self.domain, &self.name)
            .with_batch(self.batch)
            .with_commit_rows(self.commit_rows)
            .with_compiled_decoder(self.compiled);
        let mut events = 0;
        let mut dead_letters = 0;
        let mut stages = Stages::default();
        // Until no event arrived during the last pass.
        loop {
            let head = self.store.head(&self.domain, &self.name).await?;
            let total = u64::try_from(self.store.backlog(&self.domain, &self.name, 0).await?.0).unwrap_or(0);
            let done = events;
            let report = fresh.run_until(head, &|n| progress(done + n, total)).await?;
            events += report.events;
            dead_letters += report.dead_letters;
            stages.add(&report.stages);
            if report.events == 0 || self.store.head(&self.domain, &self.name).await? == head {
                break;
            }
        }
        let (Some(live), Some(new)) = (self.generation.as_mut(), fresh.generation.as_ref()) else { return Ok(serde_json::Value::Null) };
        if live.version != new.version {
            return Err(Error::Derived {
                table: String::new(),
                message: format!("the contract changed during the rebuild ({} to {}); run it again", live.version, new.version),
            });
        }
        let mut swapped = Vec::new();
        for (target, source) in live.tables.iter_mut().zip(&new.tables) {
            target.delta =
                delta::replace_with(target.delta.clone(), &target.url, &source.delta, APP_ID, source.applied, &live.version).await?;
            target.applied = source.applied;
            target.last_commit_at = Some(chrono::Utc::now().timestamp_micros());
            swapped.push(serde_json::json!({"table": target.name, "version": target.delta.version(), "position": source.applied}));
        }
        live.retyped.clear();
        for source in &new.tables {
            if let Err(e) = delta::remove_all(&source.delta).await {
                tracing::warn!(table = %source.url, error = %e, "could not remove a rebuild's scratch table");
            }
        }
        Ok(serde_json::json!({
            "events": events,
            "dead_letters": dead_letters,
            "tables": swapped,
            "seconds": started.elapsed().as_secs_f64(),
            "stages": stages,
        }))
    }

    /// Compacts every table with at least `min_files` live files.
    pub async fn compact(&mut self, min_files: usize) -> Result<serde_json::Value, Error> {
        self.load().await?;
        let Some(generation) = self.generation.as_mut() else { return Ok(serde_json::Value::Null) };
        let mut out = serde_json::Map::new();
        for t in &mut generation.tables {
            if delta::stats(&t.delta, &t.url)?.files < min_files.max(2) {
                continue;
            }
            let key = match &t.spec.projection {
                Projection::Upsert { key, .. } => key.as_slice(),
                _ => &[],
            };
            let (table, report) = delta::compact(t.delta.clone(), &t.url, key).await?;
            t.delta = table;
            out.insert(t.name.clone(), report);
        }
        Ok(serde_json::Value::Object(out))
    }

    /// Vacuums every table: deletes files that no version younger than
    /// `retention` reads.
    pub async fn vacuum(&mut self, retention: std::time::Duration) -> Result<serde_json::Value, Error> {
        self.load().await?;
        let Some(generation) = self.generation.as_mut() else { return Ok(serde_json::Value::Null) };
        let mut out = serde_json::Map::new();
        for t in &mut generation.tables {
            let (table, report) = delta::vacuum(t.delta.clone(), &t.url, retention).await?;
            t.delta = table;
            out.insert(t.name.clone(), report);
        }
        Ok(serde_json::Value::Object(out))
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

/// What a run of events does to one table, before it is committed.
enum Change {
    Append(RecordBatch),
    /// This many events were folded into the table's pending changes.
    Folded(usize),
    Nothing,
}

/// A batch of the log, as stored, and parsed when a table needs that.
struct Page {
    raw: tessera_store::RawPage,
    /// The same events parsed and upcast, or none.
    parsed: Vec<StoredEvent>,
    parse_seconds: f64,
}

/// Works out what the page's events from index `first` do to one table,
/// and the events it cannot project.
async fn prepare(
    target: &mut Target,
    page: &Page,
    first: usize,
    stages: &mut Stages,
) -> Result<(Change, Vec<tessera_store::DeadLetter>), Error> {
    let clock = std::time::Instant::now();
    if let Some(decoder) = &target.decoder {
        let (batch, dead) = decoder
            .decode_raw(&target.name, &target.spec, &page.raw, &page.raw.events[first..])
            .map_err(|e| delta::Error::Rows { table: target.name.clone(), message: e.to_string() })?;
        stages.decode += clock.elapsed().as_secs_f64();
        return Ok((batch.map_or(Change::Nothing, Change::Append), dead));
    }
    if let (Some(decoder), Projection::Upsert { key, .. }) = (&target.upsert, &target.spec.projection) {
        let events = &page.raw.events[first..];
        let decoded = decoder.decode_raw(&target.name, &target.spec, &page.raw, events);
        // Keys the pending changes decide need no lookup: the table does
        // not have their latest state yet.
        let lookups = decoder.lookups(&decoded, &target.pending.typed);
        stages.decode += clock.elapsed().as_secs_f64();
        let clock = std::time::Instant::now();
        let existing = delta::existing_keys(&target.delta, &target.url, &target.schema, key, &lookups).await?;
        stages.lookup += clock.elapsed().as_secs_f64();
        let clock = std::time::Instant::now();
        let dead = decoder.fold_into(&target.name, decoded, events, &mut target.pending.typed, &existing);
        stages.decode += clock.elapsed().as_secs_f64();
        return Ok((Change::Folded(events.len()), dead));
    }
    let events = &page.parsed[first..];
    let out = match &target.spec.projection {
        Projection::Append { .. } => {
            let (rows, dead) = append_rows(&target.name, &target.spec, events);
            if rows.is_empty() {
                (Change::Nothing, dead)
            } else {
                (Change::Append(delta::batch(&target.name, &target.schema, &rows)?), dead)
            }
        }
        Projection::Upsert { key, .. } => {
            let upserts = Upserts::prepare(&target.name, &target.spec, events);
            // Keys the pending changes decide need no lookup: the table does
            // not have their latest state yet.
            let lookups = upserts.lookups(key, &target.pending.fold);
            stages.decode += clock.elapsed().as_secs_f64();
            let clock = std::time::Instant::now();
            let existing = delta::existing_keys(&target.delta, &target.url, &target.schema, key, &lookups).await?;
            stages.lookup += clock.elapsed().as_secs_f64();
            let dead = upserts.fold_into(&mut target.pending.fold, &existing);
            return Ok((Change::Folded(events.len()), dead));
        }
        Projection::Sql { .. } => (Change::Nothing, Vec::new()),
    };
    stages.decode += clock.elapsed().as_secs_f64();
    Ok(out)
}

/// One commit to a table.
enum Commit {
    Append(Vec<RecordBatch>),
    Upsert(crate::fold::Fold),
    Typed(UpsertFold),
    Nothing,
}

/// Keys an upsert table folds before it commits them.
pub const FOLD_KEYS: usize = 500_000;

/// What a run did to a table and has not committed yet, up to log position
/// `to`: rows decoded for an append table, net changes per key for an upsert
/// table.
#[derive(Default)]
struct Pending {
    batches: Vec<RecordBatch>,
    fold: crate::fold::Fold,
    /// The same, typed, for a table with a compiled upsert decoder.
    typed: UpsertFold,
    /// Rows gathered (append) or events folded (upsert).
    rows: usize,
    bytes: usize,
    to: i64,
    /// Whether events up to `to` were set aside as dead letters.
    skipped: bool,
}

impl Pending {
    fn add(&mut self, batch: RecordBatch) {
        self.rows += batch.num_rows();
        self.bytes += batch.get_array_memory_size();
        self.batches.push(batch);
    }
}

/// Commits what a table gathered, with the position it reaches.
async fn flush(target: &mut Target, contract_version: &str, report: &mut RunReport, moved: &mut HashSet<String>) -> Result<(), Error> {
    let pending = std::mem::take(&mut target.pending);
    if pending.to <= target.applied {
        return Ok(());
    }
    let change = if !pending.fold.is_empty() {
        Commit::Upsert(pending.fold)
    } else if !pending.typed.is_empty() {
        Commit::Typed(pending.typed)
    } else if !pending.batches.is_empty() {
        Commit::Append(pending.batches)
    } else {
        Commit::Nothing
    };
    if commit(target, change, pending.skipped, pending.to, contract_version).await? {
        report.commits += 1;
        moved.insert(target.name.clone());
    }
    target.applied = pending.to;
    Ok(())
}

/// Commits a change to one table with `position`; a change of nothing but
/// dead letters (`skipped`) records the position all the same, so that a
/// restart does not read those events again. Returns whether it committed
/// rows.
async fn commit(target: &mut Target, change: Commit, skipped: bool, position: i64, contract_version: &str) -> Result<bool, Error> {
    let committed = match change {
        Commit::Append(batches) => {
            target.delta = delta::append(target.delta.clone(), &target.url, batches, APP_ID, position, contract_version).await?;
            true
        }
        Commit::Upsert(fold) => {
            let Projection::Upsert { key, .. } = &target.spec.projection else { return Ok(false) };
            let changes = delta::Changes::Json(fold);
            target.delta =
                delta::merge(target.delta.clone(), &target.url, &target.schema, key, changes, APP_ID, position, contract_version).await?;
            true
        }
        Commit::Typed(fold) => {
            let (Projection::Upsert { key, .. }, Some(decoder)) = (&target.spec.projection, &target.upsert) else { return Ok(false) };
            let changes = delta::Changes::Typed(decoder, fold);
            target.delta =
                delta::merge(target.delta.clone(), &target.url, &target.schema, key, changes, APP_ID, position, contract_version).await?;
            true
        }
        Commit::Nothing => {
            if skipped {
                target.delta = delta::mark(target.delta.clone(), &target.url, APP_ID, position, contract_version).await?;
            }
            false
        }
    };
    if committed {
        target.last_commit_at = Some(chrono::Utc::now().timestamp_micros());
    }
    Ok(committed)
}

/// Recomputes the derived tables that read a table in `moved`, or that
/// stand behind their inputs (a crash between an input's commit and the
/// recomputation). Returns the commits made.
async fn derive(generation: &mut Generation, moved: &HashSet<String>) -> Result<u64, Error> {
    let mut commits = 0;
    for i in 0..generation.tables.len() {
        let Projection::Sql { query, reads } = &generation.tables[i].spec.projection else { continue };
        let inputs: Vec<&Target> = generation.tables.iter().filter(|t| reads.iter().any(|r| r.as_str() == t.name)).collect();
        let position = inputs.iter().map(|t| t.applied).min().unwrap_or(0);
        let target = &generation.tables[i];
        if generation.lineage.is_view(&target.name) {
            // Served as a view over the caller's masked tables: nothing to store.
            generation.tables[i].applied = generation.tables[i].applied.max(position);
            continue;
        }
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
        let frame = ctx.sql(query).await.map_err(|e| failed(e.to_string()))?;
        // The last check, on the very plan that runs: nothing classified is materialized.
        let plan = frame.clone().into_optimized_plan().map_err(|e| failed(e.to_string()))?;
        let classified = crate::lineage::classified_reads(&generation.contract, &generation.lineage, &plan).map_err(failed)?;
        if !classified.is_empty() {
            return Err(failed(format!("refused to materialize it: it reads {}", classified.join(", "))));
        }
        let batches = frame.collect().await.map_err(|e| failed(e.to_string()))?;
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
            let column =
                b.column_by_name(field.name()).ok_or_else(|| format!("the query gives no column `{}`; name it with AS", field.name()))?;
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
