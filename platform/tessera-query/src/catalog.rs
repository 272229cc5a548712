//! What a caller may query: every served generation of every product, as
//! DataFusion catalogs (one per domain) of schemas (one per product) of
//! masked tables.
//!
//! Addresses: `domain.product.table` reads the product's live generation
//! (its current major version); a previous major that is still served is
//! the schema `"product@v<major>"`, e.g. `sales."orders@v1".orders`.
//! Nothing else is in a session's catalog: the raw tables have no name.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use datafusion::catalog::{CatalogProvider, CatalogProviderList, SchemaProvider, TableProvider};
use datafusion::common::{DataFusionError, Result};
use datafusion::datasource::empty::EmptyTable;
use datafusion::execution::session_state::SessionStateBuilder;
use deltalake::DeltaTable;
use tessera_contract::Contract;
use tessera_contract::model::Column;
use tessera_contract::policy::{Policy, Role, Strategy};
use tessera_projection::Warehouse;
use tessera_projection::lineage::Lineage;
use tessera_projection::schema::table_schema;
use tessera_store::{Principal, Store};
use url::Url;

use crate::mask::{HashKey, Mask};
use crate::table::{MaskedTable, ServedColumn, Unsealer};

/// One served generation of a product: a schema of the SQL catalog.
#[derive(Debug, Clone)]
pub struct Generation {
    pub domain: String,
    pub product: String,
    pub major: u64,
    /// The live generation (addressed by the product's name alone).
    pub live: bool,
    /// The newest contract of this major version: its tables and the
    /// classification of every column.
    pub contract: Arc<Contract>,
    /// For a previous generation, the live generation's contract: a column
    /// that the live version masks more strictly is masked that way here too.
    pub live_contract: Option<Arc<Contract>>,
    /// Which derived tables are views, and what each column is computed from.
    pub lineage: Arc<Lineage>,
}

impl Generation {
    /// The schema's name: the product's, with `@v<major>` for a previous generation.
    pub fn schema_name(&self) -> String {
        if self.live { self.product.clone() } else { format!("{}@v{}", self.product, self.major) }
    }
}

pub use tessera_sql::At;

/// The roles a principal reads a domain's products with: its configured
/// roles, and `owner` when it is a member of the domain (and only then).
pub fn roles_for(principal: &Principal, domain: &str) -> Vec<Role> {
    let mut roles: Vec<Role> = principal.roles.iter().copied().filter(|r| *r != Role::Owner).collect();
    if principal.is_member_of(domain) {
        roles.push(Role::Owner);
    }
    if roles.is_empty() {
        roles.push(Role::Public);
    }
    roles
}

/// The least restrictive strategy any of `roles` gets for `column`; `None`
/// (not served) when the policy cannot resolve it for one of them.
pub fn strategy_for(policy: &Policy, column: &Column, roles: &[Role]) -> Option<Strategy> {
    let mut best: Option<Strategy> = None;
    for role in roles {
        let s = policy.effective(column, *role)?;
        if best.is_none_or(|b| policy.rank(s) < policy.rank(b)) {
            best = Some(s);
        }
    }
    best
}

/// `contract` with the classification of every column that `live` classifies
/// and `contract` does not (same table and column names).
fn with_live_classifications(contract: &Contract, live: &Contract) -> Contract {
    let mut merged = contract.clone();
    for (table, spec) in merged.tables.iter_mut() {
        let Some(live_table) = live.tables.get(table) else { continue };
        for (name, column) in spec.columns.iter_mut() {
            if tessera_projection::lineage::classification_of(column).is_none()
                && let Some(live_column) = live_table.columns.get(name)
                && let Some(class) = tessera_projection::lineage::classification_of(live_column)
            {
                column.classification = Some(class);
            }
        }
    }
    merged
}

/// Whether `live` is masked more strictly than `own` for `roles` (or cannot
/// be resolved: fail closed).
fn stricter(policy: &Policy, live: &Column, own: &Column, roles: &[Role]) -> bool {
    match (strategy_for(policy, live, roles), strategy_for(policy, own, roles)) {
        (Some(l), Some(o)) => policy.rank(l) > policy.rank(o),
        _ => true,
    }
}

/// Loads the served generations from the catalog database, and opens
/// tables; shared by every session of an engine.
#[derive(Debug)]
pub struct Catalog {
    store: Store,
    warehouse: Warehouse,
    key: HashKey,
    generations: Mutex<Option<(Instant, Generations)>>,
    contracts: Mutex<HashMap<VersionKey, Published>>,
    /// Lineage of previous generations under their live version's classifications.
    merged: Mutex<HashMap<VersionKey, Arc<Lineage>>>,
    tables: Mutex<HashMap<Url, Snapshot>>,
    /// Table versions that `as_of` opened, by table and version.
    versions: Mutex<HashMap<(Url, u64), Arc<dyn TableProvider>>>,
    /// One refresh of the generations at a time: the others wait for it.
    refreshing: tokio::sync::Mutex<()>,
    /// Bounds on the values functions produce, in every session and view.
    bounded: Option<Arc<tessera_sql::guard::Bounded>>,
}

/// A product's version: domain, name, version.
type VersionKey = (String, String, String);

/// A published contract and the lineage of its derived tables.
type Published = (Arc<Contract>, Arc<Lineage>);

/// Every served generation of every product.
pub type Generations = Arc<Vec<Arc<Generation>>>;

/// How long the list of products and generations is reused before it is
/// read again from the catalog database.
const GENERATIONS_TTL: Duration = Duration::from_secs(1);

/// How long a table snapshot is used without looking at the table's log,
/// when this process has not changed any table since (see [`Catalog::latest`]).
const SNAPSHOT_POLL: Duration = Duration::from_secs(1);

/// How many table versions opened by `as_of` are kept (all are dropped
/// when the limit is reached: the working set rebuilds itself).
const KEPT_VERSIONS: usize = 64;

/// The newest version of a table that a query found, and its provider.
#[derive(Debug, Clone)]
struct Snapshot {
    table: DeltaTable,
    provider: Arc<dyn TableProvider>,
    /// When the table's log was last looked at.
    checked: Instant,
    /// [`tessera_projection::delta::changes`] just before that.
    changes: u64,
}

impl Catalog {
    pub fn new(store: Store, warehouse: Warehouse, key: HashKey) -> Self {
        Self {
            store,
            warehouse,
            key,
            generations: Mutex::new(None),
            contracts: Mutex::new(HashMap::new()),
            merged: Mutex::new(HashMap::new()),
            tables: Mutex::new(HashMap::new()),
            versions: Mutex::new(HashMap::new()),
            refreshing: tokio::sync::Mutex::new(()),
            bounded: None,
        }
    }

    /// Puts every session and view under these bounds on values.
    pub fn with_bounds(mut self, bounded: Arc<tessera_sql::guard::Bounded>) -> Self {
        self.bounded = Some(bounded);
        self
    }

    /// Registers the bounded functions, and the rule that keeps every plan
    /// under them, in a session being built.
    pub fn bound(&self, builder: SessionStateBuilder) -> SessionStateBuilder {
        match &self.bounded {
            Some(bounded) => bounded.register(builder),
            None => builder,
        }
    }

    pub fn policy(&self) -> &Policy {
        self.store.policy()
    }

    pub fn warehouse(&self) -> &Warehouse {
        &self.warehouse
    }

    /// The key of the `hash` masking of `domain`'s products.
    pub fn key(&self, domain: &str) -> HashKey {
        self.key.for_domain(domain)
    }

    /// Forgets the cached product list (after a publish or a retirement).
    pub fn invalidate(&self) {
        if let Ok(mut g) = self.generations.lock() {
            *g = None;
        }
    }

    /// Every served generation of every product.
    pub async fn generations(&self) -> tessera_store::Result<Generations> {
        if let Some(list) = self.fresh_generations() {
            return Ok(list);
        }
        // One caller reads the catalog database; the others wait and take its list.
        let _refreshing = self.refreshing.lock().await;
        if let Some(list) = self.fresh_generations() {
            return Ok(list);
        }
        let mut out = Vec::new();
        for product in self.store.products().await? {
            let (domain, name) = (product.domain.clone(), product.name.clone());
            let versions = self.store.versions(&domain, &name).await?;
            let current: u64 = semver::Version::parse(&product.current_version).map(|v| v.major).unwrap_or(0);
            let generations = self.store.generations(&domain, &name).await?;
            let live = generations.iter().find(|g| g.state == "live").and_then(|g| u64::try_from(g.major).ok()).unwrap_or(current);
            let mut served = vec![(live, true)];
            served.extend(
                generations.iter().filter(|g| g.state == "previous").filter_map(|g| u64::try_from(g.major).ok()).map(|m| (m, false)),
            );
            for (major, is_live) in served {
                // The newest published version of this major.
                let Some(version) = versions
                    .iter()
                    .filter_map(|v| semver::Version::parse(&v.version).ok())
                    .filter(|v| v.major == major)
                    .max()
                    .map(|v| v.to_string())
                else {
                    continue;
                };
                let (contract, lineage) = self.contract(&domain, &name, &version).await?;
                out.push(Generation {
                    domain: domain.clone(),
                    product: name.clone(),
                    major,
                    live: is_live,
                    contract,
                    live_contract: None,
                    lineage,
                });
            }
        }
        // Previous generations learn their live generation's contract.
        let live: Vec<(String, String, Arc<Contract>)> =
            out.iter().filter(|g| g.live).map(|g| (g.domain.clone(), g.product.clone(), Arc::clone(&g.contract))).collect();
        for g in out.iter_mut().filter(|g| !g.live) {
            g.live_contract = live.iter().find(|(d, p, _)| *d == g.domain && *p == g.product).map(|(_, _, c)| Arc::clone(c));
            // A column the live version classifies is classified here too:
            // a derived table of this generation that reads it is a view.
            if let Some(live) = &g.live_contract {
                let key = (g.domain.clone(), g.product.clone(), format!("{}+{}", g.contract.version, live.version));
                let cached = self.merged.lock().ok().and_then(|m| m.get(&key).cloned());
                g.lineage = match cached {
                    Some(lineage) => lineage,
                    None => {
                        let merged = with_live_classifications(&g.contract, live);
                        let lineage = if merged == *g.contract {
                            Arc::clone(&g.lineage)
                        } else {
                            Arc::new(tessera_projection::lineage::analyze(&merged).await)
                        };
                        if let Ok(mut m) = self.merged.lock() {
                            m.insert(key, Arc::clone(&lineage));
                        }
                        lineage
                    }
                };
            }
        }
        let list = Arc::new(out.into_iter().map(Arc::new).collect());
        if let Ok(mut g) = self.generations.lock() {
            *g = Some((Instant::now(), Arc::clone(&list)));
        }
        Ok(list)
    }

    fn fresh_generations(&self) -> Option<Generations> {
        let g = self.generations.lock().ok()?;
        let (at, list) = g.as_ref()?;
        (at.elapsed() < GENERATIONS_TTL).then(|| Arc::clone(list))
    }

    /// The lineage of a published contract's derived tables (cached by version).
    pub async fn lineage(&self, contract: &Contract) -> Arc<Lineage> {
        match self.contract(contract.domain.as_str(), contract.name.as_str(), &contract.version.to_string()).await {
            Ok((_, lineage)) => lineage,
            Err(_) => Arc::new(tessera_projection::lineage::analyze(contract).await),
        }
    }

    /// A published contract and its derived tables' lineage (both never change).
    async fn contract(&self, domain: &str, name: &str, version: &str) -> tessera_store::Result<(Arc<Contract>, Arc<Lineage>)> {
        let key = (domain.to_owned(), name.to_owned(), version.to_owned());
        if let Ok(cache) = self.contracts.lock()
            && let Some((c, l)) = cache.get(&key)
        {
            return Ok((Arc::clone(c), Arc::clone(l)));
        }
        let contract = Arc::new(self.store.contract_at(domain, name, version).await?);
        let lineage = Arc::new(tessera_projection::lineage::analyze(&contract).await);
        if let Ok(mut cache) = self.contracts.lock() {
            cache.insert(key, (Arc::clone(&contract), Arc::clone(&lineage)));
        }
        Ok((contract, lineage))
    }

    /// The newest version of the Delta table at `url` as a table provider,
    /// or `None` while the projector has not created it yet.
    ///
    /// Snapshots are kept: a table's log is looked at again when this
    /// process changed a table since ([`tessera_projection::delta::changes`]),
    /// and otherwise at most every [`SNAPSHOT_POLL`] (changes made by other
    /// processes), so that a query does not list every table's log.
    async fn latest(&self, url: &Url) -> Result<Option<Arc<dyn TableProvider>>> {
        Ok(self.snapshot(url).await?.map(|s| s.provider))
    }

    /// [`Catalog::latest`], with the Delta table it was opened from.
    async fn snapshot(&self, url: &Url) -> Result<Option<Snapshot>> {
        let changes = tessera_projection::delta::changes();
        let cached = self.tables.lock().ok().and_then(|t| t.get(url).cloned());
        if let Some(s) = &cached
            && s.changes == changes
            && s.checked.elapsed() < SNAPSHOT_POLL
        {
            return Ok(cached);
        }
        let checked = Instant::now();
        let table = match cached {
            Some(Snapshot { mut table, provider, .. }) => {
                let before = table.version();
                table.update_incremental(None).await.map_err(delta_error)?;
                if table.version() == before {
                    let snapshot = Snapshot { table, provider, checked, changes };
                    self.keep(url, snapshot.clone());
                    return Ok(Some(snapshot));
                }
                table
            }
            None => {
                // A table the contract declares but the projector has not
                // created yet (a new minor version's): no directory at all.
                if url.scheme() == "file" && url.to_file_path().is_ok_and(|p| !p.join("_delta_log").exists()) {
                    return Ok(None);
                }
                let mut table = DeltaTable::try_from_url(url.clone()).await.map_err(delta_error)?;
                if !table.verify_deltatable_existence().await.map_err(delta_error)? {
                    return Ok(None);
                }
                table.load().await.map_err(delta_error)?;
                table
            }
        };
        let provider = table.table_provider().await?;
        let snapshot = Snapshot { table, provider, checked, changes };
        self.keep(url, snapshot.clone());
        Ok(Some(snapshot))
    }

    /// Version `version` of the table at `url`, kept for the next query that
    /// reads it (a version never changes; a vacuumed one fails to read, as
    /// it would if opened afresh).
    async fn at_version(&self, url: &Url, version: u64, table: &str) -> Result<Arc<dyn TableProvider>> {
        let key = (url.clone(), version);
        if let Some(provider) = self.versions.lock().ok().and_then(|v| v.get(&key).cloned()) {
            return Ok(provider);
        }
        let provider =
            tessera_projection::history::at_version(url, version).await.map_err(|e| history_error(table, e))?.table_provider().await?;
        if let Ok(mut versions) = self.versions.lock() {
            if versions.len() >= KEPT_VERSIONS {
                versions.clear();
            }
            versions.insert(key, Arc::clone(&provider));
        }
        Ok(provider)
    }

    /// Keeps `snapshot` unless a newer version of the table is kept already
    /// (a slower refresh that finished later): no query goes back in time.
    fn keep(&self, url: &Url, snapshot: Snapshot) {
        if let Ok(mut t) = self.tables.lock() {
            match t.get(url) {
                Some(kept) if kept.table.version() > snapshot.table.version() => {}
                _ => {
                    t.insert(url.clone(), snapshot);
                }
            }
        }
    }

    /// [`Catalog::masked_table`] for a view's input, `depth` views down.
    pub(crate) async fn view_input(
        self: &Arc<Self>,
        generation: &Arc<Generation>,
        table: &str,
        roles: &[Role],
        at: &At,
        depth: usize,
    ) -> Result<Option<Arc<dyn TableProvider>>> {
        let Some(spec) = generation.contract.tables.iter().find(|(n, _)| n.as_str() == table).map(|(_, t)| t) else {
            return Ok(None);
        };
        if generation.lineage.is_view(table) {
            return crate::view::governed_view(self, generation, table, spec, roles, at, depth).await.map(Some);
        }
        self.masked_table(generation, table, roles, at).await
    }

    /// Table `table` of a generation as a caller with `roles` sees it, at
    /// `at`: a Delta table masked beneath its scan, or, for a derived table
    /// that reads classified columns, its query over the caller's masked
    /// tables.
    pub async fn masked_table(
        self: &Arc<Self>,
        generation: &Arc<Generation>,
        table: &str,
        roles: &[Role],
        at: &At,
    ) -> Result<Option<Arc<dyn TableProvider>>> {
        let Some(spec) = generation.contract.tables.iter().find(|(n, _)| n.as_str() == table).map(|(_, t)| t) else {
            return Ok(None);
        };
        if generation.lineage.is_view(table) {
            return crate::view::governed_view(self, generation, table, spec, roles, at, 0).await.map(Some);
        }
        let url = self.warehouse.table_url(&generation.domain, &generation.product, generation.major, table);
        let raw = match at {
            At::Latest => self.latest(&url).await?,
            At::Version(v) => Some(self.at_version(&url, *v, table).await?),
            At::Time(t) => Some(
                tessera_projection::history::at_timestamp(&url, *t).await.map_err(|e| history_error(table, e))?.table_provider().await?,
            ),
        };
        // Published but not projected yet: no rows, the contract's columns.
        let raw: Arc<dyn TableProvider> = raw.unwrap_or_else(|| Arc::new(EmptyTable::new(Arc::new(table_schema(spec)))));
        Ok(Some(Arc::new(self.mask(generation, table, spec, raw, roles)?)))
    }

    /// The newest version of a generation's stored (not derived) table
    /// `table`, as a caller with `roles` sees it, with the Delta table it
    /// was opened from and where that is; `None` if there is no such table
    /// or it has no version yet.
    pub(crate) async fn latest_masked(
        &self,
        generation: &Arc<Generation>,
        table: &str,
        roles: &[Role],
    ) -> Result<Option<(Url, DeltaTable, MaskedTable)>> {
        let Some(spec) = generation.contract.tables.iter().find(|(n, _)| n.as_str() == table).map(|(_, t)| t) else {
            return Ok(None);
        };
        if generation.lineage.is_view(table) {
            return Ok(None);
        }
        let url = self.warehouse.table_url(&generation.domain, &generation.product, generation.major, table);
        let Some(snapshot) = self.snapshot(&url).await? else { return Ok(None) };
        let masked = self.mask(generation, table, spec, snapshot.provider, roles)?;
        Ok(Some((url, snapshot.table, masked)))
    }

    /// A stored table's `raw` provider masked for a caller with `roles`.
    fn mask(
        &self,
        generation: &Arc<Generation>,
        table: &str,
        spec: &tessera_contract::model::Table,
        raw: Arc<dyn TableProvider>,
        roles: &[Role],
    ) -> Result<MaskedTable> {
        let policy = self.policy();
        let live_columns =
            generation.live_contract.as_ref().and_then(|c| c.tables.iter().find(|(n, _)| n.as_str() == table)).map(|(_, t)| t);
        let columns: Vec<ServedColumn> = raw
            .schema()
            .fields()
            .iter()
            .enumerate()
            .filter_map(|(raw_index, field)| {
                let column = spec.columns.iter().find(|(n, _)| n.as_str() == field.name()).map(|(_, c)| c)?;
                let mask = match live_columns.and_then(|t| t.columns.iter().find(|(n, _)| n.as_str() == field.name())).map(|(_, c)| c) {
                    // The live version masks this column more strictly (or cannot resolve it): so does this one.
                    Some(live) if stricter(policy, live, column, roles) => {
                        if live.data_type == column.data_type {
                            Mask::for_column(policy, live, &|c| strategy_for(policy, c, roles))?
                        } else {
                            Mask::Null
                        }
                    }
                    _ => Mask::for_column(policy, column, &|c| strategy_for(policy, c, roles))?,
                };
                let sealed = (tessera_contract::seal::is_sealed(column) && is_binary(field.data_type())).then(|| Arc::new(column.clone()));
                // A version written before sealing existed holds this column in
                // clear, where no forget reaches: it is not served.
                let mask = if tessera_contract::seal::is_sealed(column) && sealed.is_none() { Mask::Null } else { mask };
                Some(ServedColumn { raw_index, mask, sealed })
            })
            .collect();
        let name = format!("{}.{}.{}", generation.domain, generation.schema_name(), table);
        let unsealer = Some(Unsealer { store: self.store.clone(), domain: generation.domain.clone() });
        MaskedTable::new(name, raw, columns, self.key.for_domain(&generation.domain), unsealer)
    }
}

/// Whether a stored column holds bytes (a sealed column does).
fn is_binary(t: &arrow::datatypes::DataType) -> bool {
    matches!(t, arrow::datatypes::DataType::Binary | arrow::datatypes::DataType::LargeBinary | arrow::datatypes::DataType::BinaryView)
}

fn delta_error(e: deltalake::DeltaTableError) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

fn history_error(table: &str, e: tessera_projection::projector::Error) -> DataFusionError {
    DataFusionError::Plan(format!("as_of: table `{table}`: {e}"))
}

/// The session's default catalog. It holds nothing of any product (those
/// are in their domains' catalogs); the PostgreSQL protocol keeps its
/// `pg_catalog` there.
pub const SYSTEM_CATALOG: &str = "tessera";

/// The catalogs of one caller: one per domain.
#[derive(Debug)]
pub struct CallerCatalogs {
    catalogs: BTreeMap<String, Arc<DomainCatalog>>,
    system: Option<Arc<dyn CatalogProvider>>,
}

impl CallerCatalogs {
    pub fn new(catalog: &Arc<Catalog>, principal: &Principal, generations: &[Arc<Generation>]) -> Self {
        let mut catalogs: BTreeMap<String, BTreeMap<String, Arc<ProductSchema>>> = BTreeMap::new();
        for g in generations {
            let roles = roles_for(principal, &g.domain);
            let schema = Arc::new(ProductSchema { generation: Arc::clone(g), roles, catalog: Arc::clone(catalog) });
            catalogs.entry(g.domain.clone()).or_default().insert(g.schema_name(), schema);
        }
        let catalogs = catalogs.into_iter().map(|(d, schemas)| (d, Arc::new(DomainCatalog { schemas }))).collect();
        Self { catalogs, system: None }
    }

    /// The same catalogs, plus an empty system catalog (named
    /// [`SYSTEM_CATALOG`]) for protocol metadata such as `pg_catalog`.
    pub fn with_system_catalog(&self) -> Self {
        self.with_system(Arc::new(datafusion::catalog::MemoryCatalogProvider::new()))
    }

    /// The same catalogs, with `system` as the system catalog.
    pub fn with_system(&self, system: Arc<dyn CatalogProvider>) -> Self {
        Self { catalogs: self.catalogs.clone(), system: Some(system) }
    }

    /// The schema of `domain.schema`, if the caller may read it.
    pub fn schema(&self, domain: &str, schema: &str) -> Option<Arc<ProductSchema>> {
        self.catalogs.get(domain)?.schemas.get(schema).cloned()
    }
}

impl CatalogProviderList for CallerCatalogs {
    fn register_catalog(&self, name: String, _catalog: Arc<dyn CatalogProvider>) -> Option<Arc<dyn CatalogProvider>> {
        // Sessions are read-only: DDL is refused before it gets here.
        tracing::warn!(catalog = %name, "refused to register a catalog in a query session");
        None
    }

    fn catalog_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.catalogs.keys().cloned().collect();
        if self.system.is_some() {
            names.push(SYSTEM_CATALOG.to_owned());
        }
        names
    }

    fn catalog(&self, name: &str) -> Option<Arc<dyn CatalogProvider>> {
        if name == SYSTEM_CATALOG {
            return self.system.clone();
        }
        self.catalogs.get(name).map(|c| Arc::clone(c) as Arc<dyn CatalogProvider>)
    }
}

/// A domain: its products' schemas.
#[derive(Debug)]
pub struct DomainCatalog {
    schemas: BTreeMap<String, Arc<ProductSchema>>,
}

impl CatalogProvider for DomainCatalog {
    fn schema_names(&self) -> Vec<String> {
        self.schemas.keys().cloned().collect()
    }

    fn schema(&self, name: &str) -> Option<Arc<dyn SchemaProvider>> {
        self.schemas.get(name).map(|s| Arc::clone(s) as Arc<dyn SchemaProvider>)
    }
}

/// One generation of a product: its tables, masked for the caller.
#[derive(Debug)]
pub struct ProductSchema {
    generation: Arc<Generation>,
    roles: Vec<Role>,
    catalog: Arc<Catalog>,
}

impl ProductSchema {
    pub async fn table_at(&self, name: &str, at: &At) -> Result<Option<Arc<dyn TableProvider>>> {
        self.catalog.masked_table(&self.generation, name, &self.roles, at).await
    }

    pub fn generation(&self) -> &Arc<Generation> {
        &self.generation
    }
}

#[async_trait::async_trait]
impl SchemaProvider for ProductSchema {
    fn table_names(&self) -> Vec<String> {
        self.generation.contract.tables.keys().map(|t| t.to_string()).collect()
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        self.table_at(name, &At::Latest).await
    }

    fn table_exist(&self, name: &str) -> bool {
        self.generation.contract.tables.keys().any(|t| t.as_str() == name)
    }
}

/// Rows of `table` (as JSON objects, the way the projection's history
/// gives them) masked for a caller with `roles`: the same masks as SQL,
/// applied through the same Arrow kernels, sealed columns opened by the
/// same code as the masked scan. Columns the caller may not be served are
/// left out.
pub async fn mask_rows(
    policy: &Policy,
    key: &HashKey,
    spec: &tessera_contract::model::Table,
    roles: &[Role],
    rows: Vec<serde_json::Map<String, serde_json::Value>>,
    opener: &mut tessera_store::Opener,
) -> Result<Vec<serde_json::Map<String, serde_json::Value>>> {
    if rows.is_empty() {
        return Ok(rows);
    }
    let schema = Arc::new(table_schema(spec));
    let Some(batch) = tessera_projection::values::json_batch(&schema, &rows)? else { return Ok(Vec::new()) };
    let mut fields = Vec::new();
    let mut columns = Vec::new();
    for (field, array) in schema.fields().iter().zip(batch.columns()) {
        let Some(column) = spec.columns.iter().find(|(n, _)| n.as_str() == field.name()).map(|(_, c)| c) else { continue };
        let Some(mask) = Mask::for_column(policy, column, &|c| strategy_for(policy, c, roles)) else { continue };
        if tessera_contract::seal::is_sealed(column) {
            let served = mask.field(&tessera_projection::schema::logical_field(field.name(), column).with_nullable(true));
            columns.push(crate::unseal::column(array, column, &mask, &served, key, opener).await?);
            fields.push(served);
        } else {
            columns.push(mask.apply(array, key)?);
            fields.push(mask.field(field));
        }
    }
    let masked = arrow::array::RecordBatch::try_new(Arc::new(arrow::datatypes::Schema::new(fields)), columns)?;
    tessera_projection::history::json_rows("masked", &masked.schema(), &[masked])
        .map_err(|e| DataFusionError::Execution(format!("cannot render the masked rows: {e}")))
}
