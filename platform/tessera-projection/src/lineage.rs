//! Column-level lineage of derived (`sql`) tables, computed from
//! DataFusion's plan of each query, and the rule it decides: a derived table
//! that reads a classified column anywhere is served as a governed view,
//! never materialized.
//!
//! Each derived query is planned over empty tables of the contract's
//! schemas and optimized. The optimized plan's table scans name every
//! column the query reads (projection pushdown keeps exactly the columns
//! some expression, filter, join, grouping, ordering or window needs; filters
//! pushed into a scan are read too), so a result can only depend on the
//! columns listed there: that set is what the rule looks at, not the SQL
//! text. Per output column, the base columns its values are computed from
//! are found by walking the same plan bottom-up (for display: "computed
//! from `patients.full_name`").
//!
//! Derived tables that read derived tables inherit everything their inputs
//! read. A query that cannot be planned fails closed: it is a view.
//!
//! Knows nothing of storage: the projector asks it which derived tables it
//! may materialize, the query engine which ones it serves as views, the
//! catalog what to show.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

use deltalake::datafusion::common::tree_node::{TreeNode as _, TreeNodeRecursion};
use deltalake::datafusion::datasource::empty::EmptyTable;
use deltalake::datafusion::logical_expr::{Expr, JoinType, LogicalPlan};
use deltalake::datafusion::prelude::SessionContext;
use tessera_contract::Contract;
use tessera_contract::model::{Column, DataType, Projection};
use tessera_contract::policy::NONE;

/// A column of one of the product's tables.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct TableColumn {
    pub table: String,
    pub column: String,
}

impl fmt::Display for TableColumn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.table, self.column)
    }
}

/// How a derived table is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Served {
    /// Materialized by the projector into a Delta table, read like any table.
    Table,
    /// Evaluated at query time over the caller's masked tables; never stored.
    View,
}

/// What one derived table reads and computes.
#[derive(Debug, Clone, PartialEq)]
pub struct Derived {
    pub served: Served,
    /// Every column of the product's event-fed tables the query reads,
    /// anywhere, through other derived tables too.
    pub reads: BTreeSet<TableColumn>,
    /// The classified columns among them (and classified columns of derived
    /// inputs), with their classification: why it is a view.
    pub classified: BTreeMap<TableColumn, String>,
    /// Per output column (by name), the base columns its values come from.
    pub columns: BTreeMap<String, BTreeSet<TableColumn>>,
    /// Why the query could not be analyzed (then it is a view: fail closed).
    pub error: Option<String>,
}

impl Derived {
    /// Why it is served the way it is, in a sentence.
    pub fn reason(&self) -> String {
        if let Some(e) = &self.error {
            return format!("its query could not be analyzed ({e}), so it is never materialized");
        }
        if self.classified.is_empty() {
            return "it reads no classified column, so it is materialized".to_owned();
        }
        let list: Vec<String> = self.classified.iter().map(|(c, class)| format!("`{c}` ({class})")).collect();
        format!("it reads {}, so it is computed at query time over the caller's masked tables and never materialized", list.join(", "))
    }
}

/// The lineage of every derived table of a contract.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Lineage {
    pub derived: BTreeMap<String, Derived>,
}

impl Lineage {
    /// Whether `table` is a derived table served as a view.
    pub fn is_view(&self, table: &str) -> bool {
        self.derived.get(table).is_some_and(|d| d.served == Served::View)
    }

    pub fn get(&self, table: &str) -> Option<&Derived> {
        self.derived.get(table)
    }
}

/// Lint's information about the derived tables that will be views: one
/// `derived.view` diagnostic each, at its `sql` key, located in `text` (the
/// contract's source).
pub fn view_diagnostics(lineage: &Lineage, text: &str) -> Vec<tessera_contract::Diagnostic> {
    let spans = tessera_contract::source::parse(text).ok().map(|d| d.spans);
    lineage
        .derived
        .iter()
        .filter(|(_, d)| d.served == Served::View)
        .map(|(name, d)| {
            let mut diagnostic = tessera_contract::Diagnostic::info(
                tessera_contract::Code::DerivedView,
                format!("/tables/{name}/sql"),
                format!("derived table `{name}` will be served as a view: {}", d.reason()),
            )
            .at_key()
            .help("readers get its query over their own masked tables; to materialize it, read only unclassified columns");
            if let Some(spans) = &spans {
                diagnostic.locate(spans);
            }
            diagnostic
        })
        .collect()
}

/// Whether a column, or any field inside it, carries a classification other than `none`.
pub fn classification_of(column: &Column) -> Option<String> {
    if let Some(c) = column.classification.as_deref().filter(|c| *c != NONE) {
        return Some(c.to_owned());
    }
    match &column.data_type {
        DataType::Struct(fields) => fields.values().find_map(classification_of),
        DataType::List(item) => classification_of(item),
        _ => None,
    }
}

/// Analyzes every derived table of `contract`.
pub async fn analyze(contract: &Contract) -> Lineage {
    let mut lineage = Lineage::default();
    // Derived tables in an order where inputs come first (the validator refuses cycles).
    let mut pending: Vec<(&str, &str, Vec<String>)> = contract
        .tables
        .iter()
        .filter_map(|(name, t)| match &t.projection {
            Projection::Sql { query, reads } => Some((name.as_str(), query.as_str(), reads.iter().map(|r| r.to_string()).collect())),
            _ => None,
        })
        .collect();
    let derived_names: BTreeSet<String> = pending.iter().map(|(n, _, _)| (*n).to_owned()).collect();
    while !pending.is_empty() {
        let ready =
            pending.iter().position(|(_, _, reads)| reads.iter().all(|r| !derived_names.contains(r) || lineage.derived.contains_key(r)));
        let (name, query, _) = match ready {
            Some(i) => pending.remove(i),
            // A cycle (refused by lint): what is left cannot be analyzed.
            None => pending.remove(0),
        };
        let mut derived = match analyze_one(contract, query, &lineage).await {
            Ok(d) => d,
            Err(e) => Derived {
                served: Served::View,
                reads: BTreeSet::new(),
                classified: BTreeMap::new(),
                columns: BTreeMap::new(),
                error: Some(e),
            },
        };
        // The table's own declared classifications count too.
        if let Some(spec) = contract.tables.get(name) {
            for (col, c) in &spec.columns {
                if let Some(class) = classification_of(c) {
                    derived.classified.insert(TableColumn { table: name.to_owned(), column: col.to_string() }, class);
                }
            }
        }
        if !derived.classified.is_empty() {
            derived.served = Served::View;
        }
        lineage.derived.insert(name.to_owned(), derived);
    }
    lineage
}

async fn analyze_one(contract: &Contract, query: &str, known: &Lineage) -> Result<Derived, String> {
    let ctx = SessionContext::new();
    for (name, table) in &contract.tables {
        let schema = Arc::new(crate::schema::logical_schema(table));
        ctx.register_table(name.as_str(), Arc::new(EmptyTable::new(schema))).map_err(|e| e.to_string())?;
    }
    let plan = ctx.state().create_logical_plan(query).await.map_err(|e| e.find_root().to_string())?;
    let plan = ctx.state().optimize(&plan).map_err(|e| e.find_root().to_string())?;
    let cx = Cx { contract, known };

    let scanned = scanned(contract, &plan)?;
    let mut reads = BTreeSet::new();
    let mut classified = BTreeMap::new();
    let derived_tables: BTreeSet<&str> =
        contract.tables.iter().filter(|(_, t)| matches!(t.projection, Projection::Sql { .. })).map(|(n, _)| n.as_str()).collect();
    for c in &scanned {
        if derived_tables.contains(c.table.as_str()) && known.get(&c.table).is_none() {
            // Itself, or a cycle its declared reads hid (a CTE named like a table).
            return Err(format!("it reads the derived table `{}` before that one is known: a cycle", c.table));
        }
        if let Some(input) = known.get(&c.table) {
            // A derived input: whatever it read (any of its rows depends on all of it).
            reads.extend(input.reads.iter().cloned());
            classified.extend(input.classified.iter().map(|(k, v)| (k.clone(), v.clone())));
            if let Some(e) = &input.error {
                return Err(format!("it reads `{}`, which could not be analyzed: {e}", c.table));
            }
            continue;
        }
        if c.column.is_empty() {
            continue;
        }
        if let Some(class) =
            contract.tables.get(c.table.as_str()).and_then(|t| t.columns.get(c.column.as_str())).and_then(classification_of)
        {
            classified.insert(c.clone(), class);
        }
        reads.insert(c.clone());
    }

    let outputs = cx.outputs(&plan);
    let columns = plan.schema().fields().iter().zip(outputs).map(|(f, deps)| (f.name().to_lowercase(), deps)).collect();
    let served = if classified.is_empty() { Served::Table } else { Served::View };
    Ok(Derived { served, reads, classified, columns, error: None })
}

/// Every column of the product's tables that a plan's scans read
/// (subqueries included); a scan that reads rows but no column is recorded
/// with an empty column name.
fn scanned(contract: &Contract, plan: &LogicalPlan) -> Result<BTreeSet<TableColumn>, String> {
    let mut scanned: BTreeSet<TableColumn> = BTreeSet::new();
    let mut walk_error = None;
    let _ = plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node {
            let table = scan.table_name.table().to_owned();
            if !contract.tables.keys().any(|t| t.as_str() == table) {
                walk_error = Some(format!("it reads `{table}`, which is not a table of this product"));
                return Ok(TreeNodeRecursion::Stop);
            }
            for field in scan.projected_schema.fields() {
                scanned.insert(TableColumn { table: table.clone(), column: field.name().clone() });
            }
            for filter in &scan.filters {
                for c in filter.column_refs() {
                    scanned.insert(TableColumn { table: table.clone(), column: c.name.clone() });
                }
            }
            if scan.projected_schema.fields().is_empty() {
                scanned.insert(TableColumn { table: table.clone(), column: String::new() });
            }
        }
        Ok(TreeNodeRecursion::Continue)
    });
    match walk_error {
        Some(e) => Err(e),
        None => Ok(scanned),
    }
}

/// The classified columns a plan about to be materialized reads: the
/// projector's last check on the very plan it runs. Empty means it may be
/// materialized.
pub fn classified_reads(contract: &Contract, lineage: &Lineage, plan: &LogicalPlan) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for c in scanned(contract, plan)? {
        if let Some(input) = lineage.get(&c.table) {
            if input.served == Served::View {
                out.push(format!("`{}` (a derived view)", c.table));
            }
            continue;
        }
        if let Some(class) =
            contract.tables.get(c.table.as_str()).and_then(|t| t.columns.get(c.column.as_str())).and_then(classification_of)
        {
            out.push(format!("`{c}` ({class})"));
        }
    }
    out.dedup();
    Ok(out)
}

/// What the bottom-up walk needs to know.
struct Cx<'a> {
    contract: &'a Contract,
    known: &'a Lineage,
}

type Deps = BTreeSet<TableColumn>;

impl Cx<'_> {
    /// Per output field of `plan`, the base columns its values come from.
    fn outputs(&self, plan: &LogicalPlan) -> Vec<Deps> {
        let width = plan.schema().fields().len();
        let inputs: Vec<&LogicalPlan> = plan.inputs();
        let out = match plan {
            LogicalPlan::TableScan(scan) => {
                let table = scan.table_name.table();
                scan.projected_schema.fields().iter().map(|f| self.base(table, f.name())).collect()
            }
            LogicalPlan::Projection(p) => {
                let input = self.outputs(&p.input);
                p.expr.iter().map(|e| self.expr_deps(e, &[(&p.input, &input)])).collect()
            }
            LogicalPlan::Aggregate(a) => {
                let input = self.outputs(&a.input);
                let mut v: Vec<Deps> = Vec::new();
                for e in a.group_expr.iter().chain(&a.aggr_expr) {
                    v.push(self.expr_deps(e, &[(&a.input, &input)]));
                }
                v
            }
            LogicalPlan::Window(w) => {
                let input = self.outputs(&w.input);
                let mut v = input.clone();
                for e in &w.window_expr {
                    v.push(self.expr_deps(e, &[(&w.input, &input)]));
                }
                v
            }
            LogicalPlan::Join(j) => {
                let left = self.outputs(&j.left);
                let right = self.outputs(&j.right);
                match j.join_type {
                    JoinType::Inner | JoinType::Left | JoinType::Right | JoinType::Full => left.into_iter().chain(right).collect(),
                    JoinType::LeftSemi | JoinType::LeftAnti => left,
                    JoinType::RightSemi | JoinType::RightAnti => right,
                    JoinType::LeftMark => {
                        let mark = right.iter().flatten().cloned().collect();
                        left.into_iter().chain(std::iter::once(mark)).collect()
                    }
                    JoinType::RightMark => {
                        let mark = left.iter().flatten().cloned().collect();
                        right.into_iter().chain(std::iter::once(mark)).collect()
                    }
                }
            }
            LogicalPlan::Union(u) => {
                let mut v: Vec<Deps> = vec![Deps::new(); width];
                for input in &u.inputs {
                    for (i, d) in self.outputs(input).into_iter().enumerate() {
                        if let Some(slot) = v.get_mut(i) {
                            slot.extend(d);
                        }
                    }
                }
                v
            }
            LogicalPlan::Distinct(deltalake::datafusion::logical_expr::Distinct::On(on)) => {
                let input = self.outputs(&on.input);
                on.select_expr.iter().map(|e| self.expr_deps(e, &[(&on.input, &input)])).collect()
            }
            LogicalPlan::Filter(_)
            | LogicalPlan::Sort(_)
            | LogicalPlan::Limit(_)
            | LogicalPlan::Repartition(_)
            | LogicalPlan::SubqueryAlias(_)
            | LogicalPlan::Subquery(_)
            | LogicalPlan::Distinct(_)
                if inputs.len() == 1 =>
            {
                self.outputs(inputs[0])
            }
            LogicalPlan::Values(_) | LogicalPlan::EmptyRelation(_) => vec![Deps::new(); width],
            _ => Vec::new(),
        };
        if out.len() == width {
            return out;
        }
        // A node we do not model (or a width we did not expect): every
        // output may come from anything its inputs give.
        let all: Deps = inputs.iter().flat_map(|i| self.outputs(i)).flatten().collect();
        vec![all; width]
    }

    /// The base columns of `table.column`: itself, or what a derived input computed it from.
    fn base(&self, table: &str, column: &str) -> Deps {
        if let Some(d) = self.known.get(table) {
            return d.columns.get(&column.to_lowercase()).cloned().unwrap_or_default();
        }
        if self.contract.tables.keys().any(|t| t.as_str() == table) {
            return Deps::from([TableColumn { table: table.to_owned(), column: column.to_owned() }]);
        }
        Deps::new()
    }

    /// The base columns an expression's value depends on: its columns,
    /// resolved in the inputs, and everything a subquery in it reads.
    fn expr_deps(&self, expr: &Expr, inputs: &[(&LogicalPlan, &Vec<Deps>)]) -> Deps {
        let mut out = Deps::new();
        let _ = expr.apply(|e| {
            match e {
                Expr::Column(c) => {
                    for (plan, deps) in inputs {
                        if let Some(i) = plan.schema().maybe_index_of_column(c)
                            && let Some(d) = deps.get(i)
                        {
                            out.extend(d.iter().cloned());
                            break;
                        }
                    }
                }
                Expr::ScalarSubquery(s) => out.extend(self.everything(&s.subquery)),
                Expr::InSubquery(s) => out.extend(self.everything(&s.subquery.subquery)),
                Expr::Exists(s) => out.extend(self.everything(&s.subquery.subquery)),
                _ => {}
            }
            Ok(TreeNodeRecursion::Continue)
        });
        out
    }

    /// Everything a plan's values may depend on: its outputs and every column it scans.
    fn everything(&self, plan: &LogicalPlan) -> Deps {
        let mut out: Deps = self.outputs(plan).into_iter().flatten().collect();
        let _ = plan.apply_with_subqueries(|node| {
            if let LogicalPlan::TableScan(scan) = node {
                let table = scan.table_name.table();
                for f in scan.projected_schema.fields() {
                    out.extend(self.base(table, f.name()));
                }
            }
            Ok(TreeNodeRecursion::Continue)
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
domain: clinic
name: lineage
version: 1.0.0
title: Lineage test
owner: { team: clinic, contact: clinic@example.com }
events:
  PatientRegistered:
    version: 1
    subject: patient_id
    schema:
      type: object
      required: [patient_id, full_name, ward]
      properties:
        patient_id: { type: string }
        full_name: { type: string, classification: pii.name }
        ward: { type: string }
tables:
  patients:
    description: Patients.
    upsert:
      key: [patient_id]
      from:
        PatientRegistered:
          set: { patient_id: payload.patient_id, full_name: payload.full_name, ward: payload.ward }
    columns:
      patient_id: { type: string, required: true, description: Id }
      full_name: { type: string, classification: pii.name, description: Name }
      ward: { type: string, description: Ward }
"#;

    fn contract(derived: &str) -> Contract {
        let text = format!("{BASE}{derived}");
        let linted = tessera_contract::lint(&text, &tessera_contract::Policy::builtin());
        let errors: Vec<String> =
            linted.diagnostics.iter().filter(|d| d.severity == tessera_contract::Severity::Error).map(|d| d.render("t")).collect();
        assert!(errors.is_empty(), "{errors:?}");
        linted.contract.expect("contract")
    }

    fn derived(sql: &str, columns: &str) -> String {
        format!("  d:\n    description: Derived.\n    sql: \"{sql}\"\n    columns:\n{columns}")
    }

    async fn served(sql: &str, columns: &str) -> Derived {
        let c = contract(&derived(sql, columns));
        analyze(&c).await.derived.remove("d").expect("derived")
    }

    const X: &str = "      x: { type: string, description: X }\n";
    const N: &str = "      n: { type: int64, description: N }\n";

    #[tokio::test]
    async fn a_query_of_clear_columns_is_materialized() {
        let d = served("SELECT ward AS x, COUNT(*) AS n FROM patients GROUP BY ward", &format!("{X}{N}")).await;
        assert_eq!(d.served, Served::Table, "{d:?}");
        assert!(d.classified.is_empty());
        assert_eq!(d.columns["x"], Deps::from([TableColumn { table: "patients".into(), column: "ward".into() }]));
        let d = served("SELECT COUNT(*) AS n FROM patients", N).await;
        assert_eq!(d.served, Served::Table, "{d:?}");
    }

    #[tokio::test]
    async fn any_read_of_a_classified_column_makes_a_view() {
        for sql in [
            "SELECT full_name AS x FROM patients",
            "SELECT upper(full_name) || ward AS x FROM patients",
            "SELECT ward AS x FROM patients WHERE full_name = 'A'",
            "SELECT ward AS x FROM patients ORDER BY full_name LIMIT 1",
            "SELECT ward AS x FROM patients GROUP BY ward, full_name",
            "SELECT CASE WHEN full_name LIKE 'A%' THEN 'a' ELSE 'b' END AS x FROM patients",
            "WITH t AS (SELECT full_name AS y FROM patients) SELECT y AS x FROM t",
            "SELECT ward AS x FROM patients WHERE patient_id IN (SELECT patient_id FROM patients WHERE full_name > 'M')",
            "SELECT (SELECT max(full_name) FROM patients) AS x",
            "SELECT a.ward AS x FROM patients a JOIN patients b ON a.full_name = b.full_name",
            "SELECT first_value(ward) OVER (ORDER BY full_name) AS x FROM patients",
            "SELECT ward AS x FROM patients UNION SELECT full_name FROM patients",
        ] {
            let d = served(sql, X).await;
            assert_eq!(d.served, Served::View, "{sql}: {d:?}");
            assert!(d.classified.contains_key(&TableColumn { table: "patients".into(), column: "full_name".into() }), "{sql}");
        }
    }

    #[tokio::test]
    async fn column_lineage_follows_expressions() {
        let d = served("SELECT concat(full_name, ward) AS x FROM patients", X).await;
        let from: Vec<String> = d.columns["x"].iter().map(ToString::to_string).collect();
        assert_eq!(from, ["patients.full_name", "patients.ward"]);
    }
}
