//! Governed views: a derived table that reads classified columns is never
//! materialized (see `tessera_projection::lineage`). It is served as its
//! query, planned for each caller over that caller's masked tables of the
//! same generation, exactly as if the caller had typed it: an analyst who
//! groups by a hashed name gets counts per hash, a public caller what
//! public may see. `as_of` at a time evaluates it over each input as it was
//! then; a view has no versions of its own.
//!
//! The result is conformed to the declared columns (by name, cast to the
//! declared types) and masked once more by the derived table's own column
//! classifications, which may only tighten what comes through.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::catalog::view::ViewTable;
use datafusion::catalog::{CatalogProvider, CatalogProviderList, MemoryCatalogProviderList, SchemaProvider, TableProvider};
use datafusion::common::{Column, DataFusionError, Result};
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::logical_expr::{Expr, LogicalPlanBuilder, cast};
use datafusion::prelude::SessionConfig;
use tessera_contract::model::{Projection, Table};
use tessera_contract::policy::Role;
use tessera_projection::schema::logical_schema;

use crate::catalog::{At, Catalog, Generation, strategy_for};
use crate::mask::Mask;
use crate::table::{MaskedTable, ServedColumn};

const VIEW_CATALOG: &str = "tessera_view";

/// Views that read views, at most this deep (a contract's derived tables
/// form no cycle, but a view that hides one must not recurse forever).
const MAX_VIEW_DEPTH: usize = 16;
const VIEW_SCHEMA: &str = "product";

/// The derived table `table` of `generation`, as its query over the
/// caller's masked tables at `at`.
pub async fn governed_view(
    catalog: &Arc<Catalog>,
    generation: &Arc<Generation>,
    table: &str,
    spec: &Table,
    roles: &[Role],
    at: &At,
    depth: usize,
) -> Result<Arc<dyn TableProvider>> {
    if depth >= MAX_VIEW_DEPTH {
        return Err(DataFusionError::Plan(format!(
            "the derived view `{table}` reads views {MAX_VIEW_DEPTH} deep, or reads itself: its contract must be fixed"
        )));
    }
    let Projection::Sql { query, .. } = &spec.projection else {
        return Err(DataFusionError::Internal(format!("`{table}` is not a derived table")));
    };
    if let At::Version(_) = at {
        return Err(DataFusionError::Plan(format!(
            "as_of: `{table}` is a derived view, computed at query time from the tables it reads; it has no versions of its own: \
             give a time instead, e.g. as_of('{}.{}.{table}', '2026-01-31T00:00:00Z')",
            generation.domain,
            generation.schema_name()
        )));
    }
    let inputs = Arc::new(ViewInputs {
        catalog: Arc::clone(catalog),
        generation: Arc::clone(generation),
        roles: roles.to_vec(),
        at: at.clone(),
        depth: depth + 1,
    });
    let schemas = datafusion::catalog::MemoryCatalogProvider::new();
    schemas.register_schema(VIEW_SCHEMA, inputs)?;
    let list = MemoryCatalogProviderList::new();
    list.register_catalog(VIEW_CATALOG.to_owned(), Arc::new(schemas));
    let config =
        SessionConfig::new().with_create_default_catalog_and_schema(false).with_default_catalog_and_schema(VIEW_CATALOG, VIEW_SCHEMA);
    let builder = SessionStateBuilder::new()
        .with_config(config)
        .with_default_features()
        .with_table_factories(HashMap::new())
        .with_catalog_list(Arc::new(list));
    // A view keeps the functions it was planned with: the bounded ones.
    let state = catalog.bound(builder).build();
    let plan = state
        .create_logical_plan(query)
        .await
        .map_err(|e| DataFusionError::Plan(format!("the derived view `{table}` cannot be planned: {}", e.find_root())))?;
    // The declared columns, by name, in the declared types.
    let declared = logical_schema(spec);
    let exprs: Vec<Expr> = declared
        .fields()
        .iter()
        .map(|f| cast(Expr::Column(Column::new_unqualified(f.name())), f.data_type().clone()).alias(f.name()))
        .collect();
    let plan = LogicalPlanBuilder::from(plan).project(exprs)?.build()?;
    let view: Arc<dyn TableProvider> = Arc::new(ViewTable::new(plan, Some(query.clone())));
    let policy = catalog.policy();
    let columns: Vec<ServedColumn> = spec
        .columns
        .values()
        .enumerate()
        .filter_map(|(raw_index, column)| {
            let mask = Mask::for_column(policy, column, &|c| strategy_for(policy, c, roles))?;
            Some(ServedColumn { raw_index, mask, sealed: None })
        })
        .collect();
    let name = format!("{}.{}.{}", generation.domain, generation.schema_name(), table);
    Ok(Arc::new(MaskedTable::new(name, view, columns, catalog.key(&generation.domain), None)?))
}

/// The tables a derived view's query reads by bare name: the same
/// generation's tables, masked for the caller, at the same point in time.
#[derive(Debug)]
struct ViewInputs {
    catalog: Arc<Catalog>,
    generation: Arc<Generation>,
    roles: Vec<Role>,
    at: At,
    /// How many views deep these inputs are read.
    depth: usize,
}

#[async_trait::async_trait]
impl SchemaProvider for ViewInputs {
    fn table_names(&self) -> Vec<String> {
        self.generation.contract.tables.keys().map(|t| t.to_string()).collect()
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        Box::pin(self.catalog.view_input(&self.generation, name, &self.roles, &self.at, self.depth)).await
    }

    fn table_exist(&self, name: &str) -> bool {
        self.generation.contract.tables.keys().any(|t| t.as_str() == name)
    }
}
