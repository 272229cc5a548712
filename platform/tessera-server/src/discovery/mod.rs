//! The discovery catalog's API: search, and everything a product page
//! shows (the contract as the viewer sees it, versions and changelog,
//! lineage, freshness, quality, sample rows, volume). The web UI
//! (`catalog-ui/`, served by [`crate::ui`]) reads only these endpoints.
//!
//! What a viewer sees follows their role: each column says which masking
//! the viewer gets, and sample rows come through the SQL engine
//! ([`tessera_query::Engine::query`], audited as `via = catalog`), masked
//! like any other read.

pub mod search;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};
use tessera_contract::Contract;
use tessera_contract::model::{Check, Column, DataType, Projection, Rule};
use tessera_projection::lineage::{Derived, Lineage};
use tessera_store::{Principal, Store};

use crate::error::ApiError;
use crate::extract::{ApiPath, Caller};
use crate::state::AppState;

/// How long a search may use the index before checking the catalog for
/// newly published versions (other processes publish too).
const RECHECK: Duration = Duration::from_secs(2);

/// The search index, kept in step with the catalog.
#[derive(Debug, Clone, Default)]
pub struct Discovery {
    inner: Arc<DiscoveryInner>,
}

#[derive(Debug, Default)]
struct DiscoveryInner {
    index: RwLock<Arc<search::Index>>,
    /// Each product's indexed contract, by `domain/name`.
    contracts: tokio::sync::Mutex<BTreeMap<String, Arc<Contract>>>,
    checked: RwLock<Option<Instant>>,
}

impl Discovery {
    /// The index, brought up to date first when it may be stale.
    pub async fn index(&self, store: &Store) -> Result<Arc<search::Index>, tessera_store::Error> {
        let fresh = self.inner.checked.read().ok().and_then(|c| *c).is_some_and(|at| at.elapsed() < RECHECK);
        if !fresh {
            self.refresh(store).await?;
        }
        Ok(self.inner.index.read().map(|i| Arc::clone(&i)).unwrap_or_default())
    }

    /// Marks the index stale: the next search rereads the catalog.
    pub fn invalidate(&self) {
        if let Ok(mut c) = self.inner.checked.write() {
            *c = None;
        }
    }

    /// Re-reads the catalog's product list and re-indexes the products
    /// whose current version changed. One refresh at a time; a search that
    /// arrives meanwhile waits for it.
    pub async fn refresh(&self, store: &Store) -> Result<(), tessera_store::Error> {
        let mut contracts = self.inner.contracts.lock().await;
        if self.inner.checked.read().ok().and_then(|c| *c).is_some_and(|at| at.elapsed() < RECHECK) {
            return Ok(()); // another search refreshed it while this one waited
        }
        let products = store.products().await?;
        let mut changed = false;
        let mut seen = std::collections::HashSet::with_capacity(products.len());
        for p in &products {
            let key = format!("{}/{}", p.domain, p.name);
            let current = contracts.get(&key).is_some_and(|c| c.version.to_string() == p.current_version);
            if !current {
                match store.contract_at(&p.domain, &p.name, &p.current_version).await {
                    Ok(contract) => {
                        contracts.insert(key.clone(), Arc::new(contract));
                        changed = true;
                    }
                    // One contract that no longer reads (a policy changed under it) must not take search down
                    // for every product: it keeps its previous entry, if any, and is tried again next time.
                    Err(e) => tracing::warn!(product = %key, error = %e, "a product's contract could not be indexed"),
                }
            }
            seen.insert(key);
        }
        let before = contracts.len();
        contracts.retain(|k, _| seen.contains(k));
        changed |= contracts.len() != before;
        if changed || self.inner.index.read().map(|i| i.is_empty()).unwrap_or(true) {
            let list: Vec<Arc<Contract>> = contracts.values().cloned().collect();
            let index = tokio::task::spawn_blocking(move || search::Index::build(list.iter().map(AsRef::as_ref)))
                .await
                .map_err(|e| tessera_store::Error::Config(format!("indexing failed: {e}")))?;
            if let Ok(mut slot) = self.inner.index.write() {
                *slot = Arc::new(index);
            }
        }
        if let Ok(mut c) = self.inner.checked.write() {
            *c = Some(Instant::now());
        }
        Ok(())
    }
}

fn bad_query(e: impl std::fmt::Display, usage: &str) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", format!("{e}; {usage}"))
}

type QueryResult<T> = Result<Query<T>, axum::extract::rejection::QueryRejection>;

/// Who the caller is, as the UI shows it after sign-in.
/// The catalog: search, who you are, the API's description, and a
/// product's versions, changelog, lineage, freshness, quality, sample rows
/// and volume.
pub fn router() -> axum::Router<AppState> {
    use axum::routing::get;
    axum::Router::new()
        .route("/products/{domain}/{name}/versions", get(versions))
        .route("/products/{domain}/{name}/changelog", get(changelog))
        .route("/products/{domain}/{name}/lineage", get(lineage))
        .route("/products/{domain}/{name}/freshness", get(freshness))
        .route("/products/{domain}/{name}/quality", get(quality))
        .route("/products/{domain}/{name}/sample", get(sample))
        .route("/products/{domain}/{name}/volume", get(volume))
        .route("/search", get(search))
        .route("/me", get(me))
        .route("/openapi.json", get(openapi))
}

pub(crate) async fn me(Caller(caller): Caller) -> Json<Value> {
    Json(json!({
        "name": caller.name,
        "public": caller.is_public(),
        "roles": caller.roles.iter().map(|r| r.as_str()).collect::<Vec<_>>(),
        "domains": caller.domains,
    }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SearchQuery {
    q: Option<String>,
    domain: Option<String>,
    tag: Option<String>,
    status: Option<String>,
    owner: Option<String>,
    offset: Option<usize>,
    limit: Option<usize>,
}

/// `GET /api/v1/search`: full text over the catalog, with facets.
pub(crate) async fn search(State(state): State<AppState>, query: QueryResult<SearchQuery>) -> Result<Json<search::Results>, ApiError> {
    let usage = "use ?q=<words>&domain=&tag=&status=&owner=&offset=<0..>&limit=<1..100>";
    let Query(q) = query.map_err(|e| bad_query(e, usage))?;
    let limit = q.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(bad_query(format!("limit {limit} is outside 1 to 100"), usage));
    }
    let text = q.q.unwrap_or_default();
    if text.len() > 500 {
        return Err(bad_query(format!("the query is {} bytes long; at most 500", text.len()), usage));
    }
    let nonempty = |v: Option<String>| v.filter(|s| !s.trim().is_empty());
    if let Some(status) = nonempty(q.status.clone())
        && tessera_contract::model::Status::parse(&status).is_none()
    {
        return Err(bad_query(format!("status `{status}` is none of draft, active, deprecated, retired"), usage));
    }
    let filters =
        search::Filters { domain: nonempty(q.domain), tag: nonempty(q.tag), status: nonempty(q.status), owner: nonempty(q.owner) };
    let index = state.discovery.index(&state.store).await?;
    Ok(Json(index.search(&text, &filters, q.offset.unwrap_or(0), limit)))
}

/// A product's contract as `viewer` sees it: every column with the masking
/// the viewer gets (`null`: not served to them at all).
pub fn contract_view(contract: &Contract, lineage: &Lineage, policy: &tessera_contract::Policy, viewer: &Principal) -> Value {
    let roles = tessera_query::catalog::roles_for(viewer, contract.domain.as_str());
    let tables: Vec<Value> = contract
        .tables
        .iter()
        .map(|(name, table)| {
            let key = match &table.projection {
                Projection::Upsert { key, .. } => key.iter().map(ToString::to_string).collect(),
                _ => Vec::new(),
            };
            let checks: Vec<Value> = table.checks.iter().map(|c| json!({"kind": c.kind(), "check": check_text(c)})).collect();
            let derived = lineage.get(name.as_str());
            let columns: Vec<Value> = table
                .columns
                .iter()
                .map(|(c, spec)| {
                    let mut v = column_view(c.as_str(), spec, policy, &roles);
                    if let Some(d) = derived {
                        v["computed_from"] = computed_from(contract, d, c.as_str(), policy, &roles);
                    }
                    v
                })
                .collect();
            json!({
                "name": name.as_str(),
                "description": table.description,
                "kind": table.projection.kind(),
                "key": key,
                "sql": match &table.projection { Projection::Sql { query, .. } => Some(query.clone()), _ => None },
                "served_as": derived.map(|d| d.served),
                "served_reason": derived.map(|d| d.reason()),
                "columns": columns,
                "checks": checks,
            })
        })
        .collect();
    let events: Vec<Value> = contract
        .events
        .iter()
        .map(|(name, e)| {
            json!({
                "name": name.as_str(),
                "description": e.description,
                "version": e.version,
                "subject": e.subject.as_ref().map(ToString::to_string),
            })
        })
        .collect();
    json!({
        "domain": contract.domain.as_str(),
        "name": contract.name.as_str(),
        "version": contract.version.to_string(),
        "title": contract.title,
        "description": contract.description,
        "owner": { "team": contract.owner.team, "contact": contract.owner.contact },
        "tags": contract.tags,
        "status": contract.status.as_str(),
        "freshness": contract.freshness.as_ref().map(|f| json!({"target": f.text, "seconds": f.seconds})),
        "viewer": { "name": viewer.name, "roles": roles.iter().map(|r| r.as_str()).collect::<Vec<_>>() },
        "events": events,
        "tables": tables,
    })
}

/// The columns a derived column is computed from, each with its
/// classification and the masking this viewer gets for it.
fn computed_from(
    contract: &Contract,
    derived: &Derived,
    column: &str,
    policy: &tessera_contract::Policy,
    roles: &[tessera_contract::Role],
) -> Value {
    let sources = derived.columns.get(&column.to_lowercase()).cloned().unwrap_or_default();
    Value::Array(
        sources
            .iter()
            .map(|source| {
                let spec = contract.tables.get(source.table.as_str()).and_then(|t| t.columns.get(source.column.as_str()));
                json!({
                    "table": source.table,
                    "column": source.column,
                    "classification": spec.and_then(tessera_projection::lineage::classification_of),
                    "masking": spec.and_then(|s| tessera_query::catalog::strategy_for(policy, s, roles)).map(|s| s.as_str()),
                })
            })
            .collect(),
    )
}

fn column_view(name: &str, spec: &Column, policy: &tessera_contract::Policy, roles: &[tessera_contract::Role]) -> Value {
    let masking = tessera_query::catalog::strategy_for(policy, spec, roles);
    let mut v = json!({
        "name": name,
        "type": spec.data_type.to_string(),
        "required": spec.required,
        "description": spec.description,
        "classification": spec.classification,
        "masking": masking.map(|s| s.as_str()),
    });
    if let DataType::Struct(fields) = &spec.data_type {
        v["fields"] = Value::Array(fields.iter().map(|(f, s)| column_view(f.as_str(), s, policy, roles)).collect());
    }
    v
}

fn check_text(check: &Check) -> String {
    let bound = |v: Option<f64>| v.map_or("…".to_owned(), |x| x.to_string());
    match check {
        Check::NotNull(c) => format!("not_null({c})"),
        Check::Unique(cs) => format!("unique({})", cs.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")),
        Check::AcceptedValues { column, values } => {
            format!("accepted_values({column}: {})", values.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "))
        }
        Check::Range { column, min, max } => format!("range({column}: {} to {})", bound(*min), bound(*max)),
        Check::RowCount { min, max } => {
            format!("row_count({} to {})", min.map_or("…".into(), |v| v.to_string()), max.map_or("…".into(), |v| v.to_string()))
        }
    }
}

/// `GET …/versions`: every published version, newest first, with its changes.
pub(crate) async fn versions(
    State(state): State<AppState>,
    ApiPath((domain, name)): ApiPath<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let mut versions = state.store.versions(&domain, &name).await?;
    versions.reverse();
    Ok(Json(json!({ "versions": versions })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ChangelogQuery {
    from: Option<String>,
    to: Option<String>,
}

/// `GET …/changelog?from=&to=`: what changed between two versions (by
/// default the first and the current), compared by the same rules as
/// publishing.
pub(crate) async fn changelog(
    State(state): State<AppState>,
    ApiPath((domain, name)): ApiPath<(String, String)>,
    query: QueryResult<ChangelogQuery>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = query.map_err(|e| bad_query(e, "use ?from=<version>&to=<version>"))?;
    let versions = state.store.versions(&domain, &name).await?;
    let first = versions.first().map(|v| v.version.clone()).unwrap_or_default();
    let last = versions.last().map(|v| v.version.clone()).unwrap_or_default();
    let from = q.from.unwrap_or(first);
    let to = q.to.unwrap_or(last);
    if let (Ok(a), Ok(b)) = (semver::Version::parse(&from), semver::Version::parse(&to))
        && a > b
    {
        return Err(bad_query(format!("`from` ({from}) is newer than `to` ({to})"), "swap them: ?from=<older>&to=<newer>"));
    }
    let old = state.store.contract_at(&domain, &name, &from).await?;
    let new = state.store.contract_at(&domain, &name, &to).await?;
    let diff = tessera_contract::diff(&old, &new, state.store.policy());
    let steps: Vec<&tessera_store::VersionInfo> = versions
        .iter()
        .filter(|v| {
            let (Ok(at), Ok(lo), Ok(hi)) = (semver::Version::parse(&v.version), semver::Version::parse(&from), semver::Version::parse(&to))
            else {
                return false;
            };
            at > lo && at <= hi
        })
        .collect();
    Ok(Json(json!({
        "from": from,
        "to": to,
        "breaking": diff.is_breaking(),
        "changes": diff.changes,
        "versions": steps,
    })))
}

/// `GET …/lineage`: event types → tables → derived tables, as a graph.
pub(crate) async fn lineage(
    State(state): State<AppState>,
    ApiPath((domain, name)): ApiPath<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let contract = state.store.current_contract(&domain, &name).await?;
    let lineage = lineage_for(&state, &contract).await;
    Ok(Json(lineage_of(&contract, &lineage)))
}

/// The lineage of a published contract (cached by the query engine when there is one).
pub async fn lineage_for(state: &AppState, contract: &Contract) -> Arc<Lineage> {
    match &state.engine {
        Some(engine) => engine.catalog().lineage(contract).await,
        None => Arc::new(tessera_projection::lineage::analyze(contract).await),
    }
}

/// The lineage graph of a contract: nodes in layers (events 0, tables fed
/// by events 1, derived tables one more than their deepest input).
pub fn lineage_of(contract: &Contract, lineage: &Lineage) -> Value {
    let mut nodes = Vec::new();
    let mut edges = Vec::new();
    let mut column_edges = Vec::new();
    for (name, e) in &contract.events {
        nodes.push(
            json!({"id": format!("event:{name}"), "kind": "event", "label": name.as_str(), "layer": 0, "description": e.description}),
        );
    }
    let mut layer: HashMap<&str, usize> = HashMap::new();
    // Derived tables may read derived tables; the validator refuses cycles,
    // so at most as many passes as tables settle every layer.
    for _ in 0..=contract.tables.len() {
        for (name, table) in &contract.tables {
            let l = match &table.projection {
                Projection::Sql { reads, .. } => reads.iter().map(|r| layer.get(r.as_str()).copied().unwrap_or(1) + 1).max().unwrap_or(2),
                _ => 1,
            };
            layer.insert(name.as_str(), l);
        }
    }
    for (name, table) in &contract.tables {
        let derived = lineage.get(name.as_str());
        nodes.push(json!({
            "id": format!("table:{name}"),
            "kind": if matches!(table.projection, Projection::Sql { .. }) { "derived" } else { "table" },
            "projection": table.projection.kind(),
            "label": name.as_str(),
            "layer": layer.get(name.as_str()).copied().unwrap_or(1),
            "description": table.description,
            "served_as": derived.map(|d| d.served),
            "served_reason": derived.map(|d| d.reason()),
        }));
        if let Some(d) = derived {
            for (column, sources) in &d.columns {
                for source in sources {
                    let classification = contract
                        .tables
                        .get(source.table.as_str())
                        .and_then(|t| t.columns.get(source.column.as_str()))
                        .and_then(tessera_projection::lineage::classification_of);
                    column_edges.push(json!({
                        "from": {"table": source.table, "column": source.column, "classification": classification},
                        "to": {"table": name.as_str(), "column": column},
                    }));
                }
            }
        }
        match &table.projection {
            Projection::Upsert { rules, .. } => {
                for (event, rule) in rules {
                    let how = match rule {
                        Rule::Set(_) => "set",
                        Rule::Delete(_) => "delete",
                    };
                    edges.push(json!({"from": format!("event:{event}"), "to": format!("table:{name}"), "label": how}));
                }
            }
            Projection::Append { rules } => {
                for event in rules.keys() {
                    edges.push(json!({"from": format!("event:{event}"), "to": format!("table:{name}"), "label": "append"}));
                }
            }
            Projection::Sql { reads, .. } => {
                for input in reads {
                    edges.push(json!({"from": format!("table:{input}"), "to": format!("table:{name}"), "label": "sql"}));
                }
            }
        }
    }
    json!({ "product": contract.product().to_string(), "nodes": nodes, "edges": edges, "column_edges": column_edges })
}

/// `GET …/freshness`: how far the tables lag behind the log, against the
/// contract's freshness target.
pub(crate) async fn freshness(
    State(state): State<AppState>,
    ApiPath((domain, name)): ApiPath<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let contract = state.store.current_contract(&domain, &name).await?;
    let head = state.store.head(&domain, &name).await?;
    let view = match &state.projections {
        Some(p) => crate::projection::view(&state.store, p, &domain, &name, false).await?,
        None => None,
    };
    let target = contract.freshness.as_ref().map(|f| json!({"target": f.text, "seconds": f.seconds}));
    let (status, lag_events, lag_seconds, tables) = match &view {
        None => ("unknown", Value::Null, Value::Null, Vec::new()),
        Some(v) => {
            let late = contract.freshness.as_ref().is_some_and(|f| v.lag_seconds > f.seconds as f64);
            let tables = v
                .tables
                .iter()
                .map(|t| {
                    json!({
                        "name": t.name, "applied_position": t.applied_position, "lag_events": t.lag_events,
                        "lag_seconds": t.lag_seconds, "last_commit_at": t.last_commit_at,
                    })
                })
                .collect();
            (if late { "late" } else { "fresh" }, json!(v.lag_events), json!(v.lag_seconds), tables)
        }
    };
    Ok(Json(json!({
        "head_position": head,
        "service_level": target,
        "status": status,
        "lag_events": lag_events,
        "lag_seconds": lag_seconds,
        "tables": tables,
    })))
}

/// `GET …/quality`: the latest result of every check, per table.
pub(crate) async fn quality(
    State(state): State<AppState>,
    ApiPath((domain, name)): ApiPath<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let contract = state.store.current_contract(&domain, &name).await?;
    let major = i64::try_from(contract.version.major).unwrap_or(i64::MAX);
    let results = state.store.quality(&domain, &name, major).await?;
    let tables: Vec<Value> = contract
        .tables
        .keys()
        .map(|t| {
            let checks: Vec<&tessera_store::QualityResult> = results.iter().filter(|r| r.table == t.as_str()).collect();
            json!({"name": t.as_str(), "passed": checks.iter().all(|c| c.passed), "checks": checks})
        })
        .collect();
    Ok(Json(json!({ "degraded": results.iter().any(|r| !r.passed), "tables": tables })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SampleQuery {
    table: Option<String>,
    limit: Option<usize>,
}

/// `GET …/sample?table=&limit=`: a few rows of a table as this viewer may
/// see them, through the SQL engine.
pub(crate) async fn sample(
    State(state): State<AppState>,
    Caller(caller): Caller,
    ApiPath((domain, name)): ApiPath<(String, String)>,
    query: QueryResult<SampleQuery>,
) -> Result<Json<Value>, ApiError> {
    let usage = "use ?table=<table>&limit=<1..100>";
    let Query(q) = query.map_err(|e| bad_query(e, usage))?;
    let contract = state.store.current_contract(&domain, &name).await?;
    let table = match q.table {
        Some(t) => t,
        None => contract.tables.keys().next().map(ToString::to_string).unwrap_or_default(),
    };
    if !contract.tables.keys().any(|t| t.as_str() == table) {
        let known: Vec<String> = contract.tables.keys().map(ToString::to_string).collect();
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{domain}/{name} has no table `{table}`; its tables are: {}", known.join(", ")),
        ));
    }
    let limit = q.limit.unwrap_or(10);
    if !(1..=100).contains(&limit) {
        return Err(bad_query(format!("limit {limit} is outside 1 to 100"), usage));
    }
    let engine = state.engine.as_ref().ok_or_else(|| {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "sql_unavailable", "this server does not serve SQL: it has no warehouse configured")
    })?;
    // Names are validated identifiers (letters, digits, `_`, `-`), quoted all the same.
    let sql = format!("SELECT * FROM \"{domain}\".\"{name}\".\"{table}\" LIMIT {limit}");
    let mut rows = engine.query(&caller, "catalog", &sql).await.map_err(|e| crate::sql::query_error(&e))?;
    let schema = rows.schema();
    let mut batches = Vec::new();
    while let Some(batch) = rows.next().await {
        batches.push(batch.map_err(|e| crate::sql::query_error(&e))?);
    }
    let mut writer = arrow::json::ArrayWriter::new(Vec::new());
    for b in &batches {
        writer.write(b).map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", e.to_string()))?;
    }
    writer.finish().map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", e.to_string()))?;
    let data = writer.into_inner();
    let objects: Vec<serde_json::Map<String, Value>> = if data.is_empty() {
        Vec::new()
    } else {
        serde_json::from_slice(&data).map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", e.to_string()))?
    };
    let columns: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
    let rows: Vec<Vec<Value>> =
        objects.into_iter().map(|mut o| columns.iter().map(|c| o.remove(c).unwrap_or(Value::Null)).collect()).collect();
    Ok(Json(json!({
        "table": format!("{domain}.{name}.{table}"),
        "columns": crate::sql::columns_json(&schema),
        "rows": rows,
    })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct VolumeQuery {
    days: Option<i64>,
}

/// Days of a table's row history that one volume request loads at most.
const ROW_DAYS: usize = 31;

/// `GET …/volume?days=`: events recorded per day (by type, for the
/// domain's members), and each table's rows at the end of every day it
/// changed (the last 31 such days).
pub(crate) async fn volume(
    State(state): State<AppState>,
    Caller(caller): Caller,
    ApiPath((domain, name)): ApiPath<(String, String)>,
    query: QueryResult<VolumeQuery>,
) -> Result<Json<Value>, ApiError> {
    let usage = "use ?days=<1..366>";
    let Query(q) = query.map_err(|e| bad_query(e, usage))?;
    let days = q.days.unwrap_or(30);
    if !(1..=366).contains(&days) {
        return Err(bad_query(format!("days {days} is outside 1 to 366"), usage));
    }
    const DAY_US: i64 = 86_400_000_000;
    let today = chrono::Utc::now().timestamp_micros().div_euclid(DAY_US);
    let first = today - days + 1;
    let counts = state.store.event_volume(&domain, &name, first * DAY_US).await?;
    let day_text = |d: i64| chrono::DateTime::from_timestamp(d * 86_400, 0).map(|t| t.format("%Y-%m-%d").to_string()).unwrap_or_default();
    let mut per_day: BTreeMap<i64, (i64, BTreeMap<String, i64>)> = (first..=today).map(|d| (d, (0, BTreeMap::new()))).collect();
    for (day, kind, count) in counts {
        let e = per_day.entry(day).or_default();
        e.0 += count;
        *e.1.entry(kind).or_default() += count;
    }
    // Counts per event type come from the log, which only the domain reads:
    // in a small product, a day's `…Erased` events could single someone out.
    let member = caller.is_member_of(&domain);
    let events: Vec<Value> = per_day
        .into_iter()
        .map(|(d, (total, by_type))| {
            let by_type = if member { json!(by_type) } else { Value::Null };
            json!({"day": day_text(d), "events": total, "by_type": by_type})
        })
        .collect();

    let mut tables = serde_json::Map::new();
    if let Some(projections) = &state.projections {
        let contract = state.store.current_contract(&domain, &name).await?;
        for table in contract.tables.keys() {
            let url = projections.warehouse().table_url(&domain, &name, contract.version.major, table.as_str());
            let Ok(commits) = tessera_projection::history::commits(&url).await else { continue };
            // The last version of each day in the window.
            let mut last_of_day: BTreeMap<i64, u64> = BTreeMap::new();
            for c in &commits {
                let Some(ms) = c.timestamp else { continue };
                let day = ms.div_euclid(86_400_000);
                if day >= first {
                    last_of_day.insert(day, c.version);
                }
            }
            // One table load per day: at most the last ROW_DAYS days that changed.
            let mut series = Vec::new();
            let skip = last_of_day.len().saturating_sub(ROW_DAYS);
            for (day, version) in last_of_day.into_iter().skip(skip) {
                let Ok(t) = tessera_projection::history::at_version(&url, version).await else { continue };
                if let Ok(stats) = tessera_projection::delta::stats(&t, &url) {
                    series.push(json!({"day": day_text(day), "rows": stats.rows, "version": version}));
                }
            }
            tables.insert(table.to_string(), Value::Array(series));
        }
    }
    Ok(Json(json!({ "days": days, "events": events, "tables": tables })))
}

/// `GET /api/v1/openapi.json`: the API's description, kept true by a test.
pub(crate) async fn openapi() -> axum::response::Response {
    use axum::response::IntoResponse;
    ([(axum::http::header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

/// The OpenAPI document (`platform/tessera-server/openapi.json`).
pub const OPENAPI: &str = include_str!("../../openapi.json");
