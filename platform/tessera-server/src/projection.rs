//! The projection's side of the API: each table's lag, last commit, size,
//! dead letters and quality results, as JSON on the product and as
//! Prometheus metrics at `/metrics`.

use std::collections::HashMap;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Serialize;
use tessera_projection::{ProductProjection, Projections};
use tessera_store::{QualityResult, Store};

/// One table, as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct TableView {
    pub name: String,
    pub kind: &'static str,
    /// Where the Delta table is: shown to the product's domain only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// The Delta version (every commit is one).
    pub version: i64,
    pub applied_position: i64,
    /// Events of the product not yet applied to this table.
    pub lag_events: i64,
    /// How long the oldest of them has waited.
    pub lag_seconds: f64,
    pub last_commit_at: Option<String>,
    pub rows: usize,
    pub files: usize,
    pub bytes: i64,
    pub dead_letters: i64,
    pub quality: Vec<QualityResult>,
}

/// A product's projection, as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ProjectionView {
    /// `running`, `standby` (another process projects it), `starting`.
    pub state: &'static str,
    pub contract_version: Option<String>,
    pub generation: Option<String>,
    pub applied_position: i64,
    pub lag_events: i64,
    pub lag_seconds: f64,
    /// A quality check fails, or projection stopped on an error.
    pub degraded: bool,
    pub error: Option<String>,
    pub tables: Vec<TableView>,
    /// Every major version's tables: `building`, `live`, `previous`
    /// (readable until retired) or `retired`.
    pub generations: Vec<tessera_store::Generation>,
}

/// The projection of `domain/name`, if this process knows it.
pub async fn view(
    store: &Store,
    projections: &Projections,
    domain: &str,
    name: &str,
    show_locations: bool,
) -> Result<Option<ProjectionView>, tessera_store::Error> {
    let Some(p) = projections.product(domain, name) else { return Ok(None) };
    Ok(Some(build(store, domain, name, p, show_locations).await?))
}

async fn build(
    store: &Store,
    domain: &str,
    name: &str,
    p: ProductProjection,
    show_locations: bool,
) -> Result<ProjectionView, tessera_store::Error> {
    let major = p.major.and_then(|m| i64::try_from(m).ok());
    let (dead, quality) = match major {
        Some(m) => (store.dead_letter_counts(domain, name, m).await?, store.quality(domain, name, m).await?),
        None => (Vec::new(), Vec::new()),
    };
    let dead: HashMap<String, i64> = dead.into_iter().collect();
    let now = chrono::Utc::now().timestamp_micros();
    let mut backlog_at: HashMap<i64, (i64, f64)> = HashMap::new();
    let mut tables = Vec::with_capacity(p.tables.len());
    for t in p.tables {
        let (lag_events, lag_seconds) = match backlog_at.get(&t.applied_position) {
            Some(lag) => *lag,
            None => {
                let (count, oldest) = store.backlog(domain, name, t.applied_position).await?;
                let lag = (count, oldest.map_or(0.0, |o| (now - o).max(0) as f64 / 1e6));
                backlog_at.insert(t.applied_position, lag);
                lag
            }
        };
        tables.push(TableView {
            quality: quality.iter().filter(|q| q.table == t.name).cloned().collect(),
            dead_letters: dead.get(&t.name).copied().unwrap_or(0),
            location: show_locations.then(|| t.location.clone()),
            kind: t.kind,
            version: t.stats.version,
            applied_position: t.applied_position,
            lag_events,
            lag_seconds,
            last_commit_at: t.last_commit_at.and_then(chrono::DateTime::from_timestamp_micros).map(|d| d.to_rfc3339()),
            rows: t.stats.rows,
            files: t.stats.files,
            bytes: t.stats.bytes,
            name: t.name,
        });
    }
    let lag_events = tables.iter().map(|t| t.lag_events).max().unwrap_or(0);
    let lag_seconds = tables.iter().map(|t| t.lag_seconds).fold(0.0, f64::max);
    let degraded = p.error.is_some() || quality.iter().any(|q| !q.passed);
    let generations = store.generations(domain, name).await?;
    Ok(ProjectionView {
        generations,
        state: p.state,
        contract_version: p.contract_version,
        generation: p.major.map(|m| format!("v{m}")),
        applied_position: p.applied_position,
        lag_events,
        lag_seconds,
        degraded,
        error: p.error,
        tables,
    })
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TableLabels {
    domain: String,
    product: String,
    table: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CheckLabels {
    domain: String,
    product: String,
    table: String,
    check: String,
}

/// Every product's projection in the Prometheus text format.
pub async fn metrics(store: &Store, projections: &Projections) -> Result<String, tessera_store::Error> {
    let applied = Family::<TableLabels, Gauge>::default();
    let lag_events = Family::<TableLabels, Gauge>::default();
    let lag_seconds = Family::<TableLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
    let version = Family::<TableLabels, Gauge>::default();
    let rows = Family::<TableLabels, Gauge>::default();
    let files = Family::<TableLabels, Gauge>::default();
    let bytes = Family::<TableLabels, Gauge>::default();
    let dead = Family::<TableLabels, Gauge>::default();
    let last_commit = Family::<TableLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
    let quality = Family::<CheckLabels, Gauge>::default();
    for (product, p) in projections.all() {
        let Some((domain, name)) = product.split_once('/') else { continue };
        let view = build(store, domain, name, p, false).await?;
        for t in &view.tables {
            let l = TableLabels { domain: domain.to_owned(), product: name.to_owned(), table: t.name.clone() };
            applied.get_or_create(&l).set(t.applied_position);
            lag_events.get_or_create(&l).set(t.lag_events);
            lag_seconds.get_or_create(&l).set(t.lag_seconds);
            version.get_or_create(&l).set(t.version);
            rows.get_or_create(&l).set(i64::try_from(t.rows).unwrap_or(i64::MAX));
            files.get_or_create(&l).set(i64::try_from(t.files).unwrap_or(i64::MAX));
            bytes.get_or_create(&l).set(t.bytes);
            dead.get_or_create(&l).set(t.dead_letters);
            if let Some(at) = t.last_commit_at.as_deref().and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok()) {
                last_commit.get_or_create(&l).set(at.timestamp_micros() as f64 / 1e6);
            }
            for q in &t.quality {
                let c = CheckLabels { domain: domain.to_owned(), product: name.to_owned(), table: t.name.clone(), check: q.check.clone() };
                quality.get_or_create(&c).set(i64::from(q.passed));
            }
        }
    }
    let mut registry = Registry::with_prefix("tessera");
    registry.register("projection_applied_position", "Last log position applied to the table", applied);
    registry.register("projection_lag_events", "Events of the product not yet applied to the table", lag_events);
    registry.register("projection_lag_seconds", "Age of the oldest event not yet applied to the table", lag_seconds);
    registry.register("table_version", "Delta version of the table", version);
    registry.register("table_rows", "Rows in the table's current version", rows);
    registry.register("table_files", "Live data files of the table", files);
    registry.register("table_bytes", "Bytes in the table's live data files", bytes);
    registry.register("projection_dead_letters", "Events that could not be projected into the table", dead);
    registry.register("table_last_commit_timestamp_seconds", "When the projector last committed to the table", last_commit);
    registry.register("quality_check_passed", "1 if the quality check passed on the table's latest version, 0 if not", quality);
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry).map_err(|e| tessera_store::Error::Config(e.to_string()))?;
    Ok(out)
}
