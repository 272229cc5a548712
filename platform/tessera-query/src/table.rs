//! A table as one caller may see it: [`MaskedTable`] wraps a product
//! table's raw provider (the Delta scan) and is the only thing a session's
//! catalog holds. Its scan is [`MaskedScanExec`], a leaf that runs the raw
//! scan inside itself and masks every batch on the way out.
//!
//! Why a leaf and not a projection over the raw scan: nothing above it can
//! reach below the mask. The planner sees no raw scan to push a filter on a
//! masked column into, no Parquet min/max statistics of a masked column
//! (the leaf reports no column statistics), and `EXPLAIN` shows the table's
//! name, not its files. Filters on columns the caller sees in the clear are
//! pushed down (they reveal nothing), so selective queries still prune
//! files.

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{Schema, SchemaRef};
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{Column, DataFusionError, Result, Statistics};
use datafusion::config::ConfigOptions;
use datafusion::execution::TaskContext;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown, TableType};
use datafusion::physical_expr::expressions::Column as ColumnExpr;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_optimizer::PhysicalOptimizerRule as _;
use datafusion::physical_optimizer::filter_pushdown::FilterPushdown;
use datafusion::physical_plan::execution_plan::reset_plan_states;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties, SendableRecordBatchStream};
use datafusion::physical_plan::{StatisticsArgs, StatisticsContext};
use futures::StreamExt as _;

use crate::late::Absorbed;
use crate::mask::{HashKey, Mask};

/// A served column: where it is in the raw table, and its mask.
#[derive(Debug, Clone)]
pub struct ServedColumn {
    pub raw_index: usize,
    pub mask: Mask,
    /// For a sealed column (stored as tokens, see `tessera_projection::schema`),
    /// the column as the contract types it: the scan opens its tokens, where
    /// the mask needs the value, just before masking.
    pub sealed: Option<Arc<tessera_contract::model::Column>>,
}

/// What opens a table's sealed columns: the store's keys of the product's domain.
#[derive(Debug, Clone)]
pub struct Unsealer {
    pub store: tessera_store::Store,
    pub domain: String,
}

/// A product table, masked for one caller.
#[derive(Debug)]
pub struct MaskedTable {
    /// `domain.product.table`, as the caller addresses it.
    name: String,
    raw: Arc<dyn TableProvider>,
    schema: SchemaRef,
    columns: Vec<ServedColumn>,
    /// Names of the columns served in the clear: filters on them only may
    /// reach the raw scan.
    clear: HashSet<String>,
    key: HashKey,
    unsealer: Option<Unsealer>,
}

impl MaskedTable {
    /// `columns` are the served columns in order; every other raw column is
    /// not served. A table with sealed columns needs an `unsealer`.
    pub fn new(
        name: String,
        raw: Arc<dyn TableProvider>,
        columns: Vec<ServedColumn>,
        key: HashKey,
        unsealer: Option<Unsealer>,
    ) -> Result<Self> {
        let raw_schema = raw.schema();
        let mut fields = Vec::with_capacity(columns.len());
        let mut clear = HashSet::new();
        for c in &columns {
            let field = raw_schema
                .fields()
                .get(c.raw_index)
                .ok_or_else(|| DataFusionError::Internal(format!("table {name} has no column {} to serve", c.raw_index)))?;
            match &c.sealed {
                // Opened, it has the contract's type; a forgotten subject's value is null.
                Some(column) => {
                    if unsealer.is_none() {
                        return Err(DataFusionError::Internal(format!("table {name} has sealed columns and nothing to open them")));
                    }
                    let logical = tessera_projection::schema::logical_field(field.name(), column).with_nullable(true);
                    fields.push(c.mask.field(&logical));
                }
                None => {
                    // Filters on sealed columns never reach the raw scan: they would see tokens.
                    if c.mask == Mask::Clear {
                        clear.insert(field.name().clone());
                    }
                    fields.push(c.mask.field(field));
                }
            }
        }
        Ok(Self { name, raw, schema: Arc::new(Schema::new(fields)), columns, clear, key, unsealer })
    }

    /// `domain.product.table`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether served column `i` is served exactly as stored: not masked,
    /// not sealed, of the stored type.
    pub(crate) fn is_clear(&self, i: usize) -> bool {
        self.columns
            .get(i)
            .is_some_and(|c| served_as_stored(&c.mask, c.sealed.is_some(), self.raw_field(i).as_deref(), self.schema.fields().get(i)))
    }

    /// The stored field of served column `i`.
    pub(crate) fn raw_field(&self, i: usize) -> Option<arrow::datatypes::FieldRef> {
        self.raw.schema().fields().get(self.columns.get(i)?.raw_index).cloned()
    }

    /// Masks `raw`, stored rows of the served columns `chosen` (in that
    /// order), as the scan masks them.
    pub(crate) async fn mask_chosen(&self, chosen: &[usize], raw: &RecordBatch) -> Result<RecordBatch> {
        let masks: Vec<ColumnMask> = chosen
            .iter()
            .map(|i| {
                let c = self.columns.get(*i).ok_or_else(|| DataFusionError::Internal(format!("table {} has no column {i}", self.name)))?;
                Ok(ColumnMask { mask: c.mask.clone(), sealed: c.sealed.clone() })
            })
            .collect::<Result<_>>()?;
        let out = Arc::new(self.schema.project(chosen)?);
        let mut opener = self.unsealer.as_ref().map(|u| u.store.opener(&u.domain));
        mask_batch(raw, &masks, &self.key, opener.as_mut(), &out).await
    }

    /// Whether a filter reads only columns served in the clear.
    fn reads_only_clear(&self, filter: &Expr) -> bool {
        let mut only_clear = true;
        let _ = filter.apply(|e| {
            if let Expr::Column(c) = e
                && !self.clear.contains(&c.name)
            {
                only_clear = false;
                return Ok(TreeNodeRecursion::Stop);
            }
            // Subqueries and outer references are not pushed down.
            if matches!(e, Expr::ScalarSubquery(_) | Expr::Exists(_) | Expr::InSubquery(_) | Expr::OuterReferenceColumn(..)) {
                only_clear = false;
                return Ok(TreeNodeRecursion::Stop);
            }
            Ok(TreeNodeRecursion::Continue)
        });
        only_clear
    }
}

#[async_trait::async_trait]
impl TableProvider for MaskedTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(&self, filters: &[&Expr]) -> Result<Vec<TableProviderFilterPushDown>> {
        Ok(filters
            .iter()
            .map(|f| if self.reads_only_clear(f) { TableProviderFilterPushDown::Inexact } else { TableProviderFilterPushDown::Unsupported })
            .collect())
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let chosen: Vec<usize> = projection.cloned().unwrap_or_else(|| (0..self.columns.len()).collect());
        let mut raw_projection = Vec::with_capacity(chosen.len());
        let mut masks = Vec::with_capacity(chosen.len());
        for i in &chosen {
            let c = self.columns.get(*i).ok_or_else(|| DataFusionError::Internal(format!("table {} has no column {i}", self.name)))?;
            raw_projection.push(c.raw_index);
            masks.push(ColumnMask { mask: c.mask.clone(), sealed: c.sealed.clone() });
        }
        // Only filters on clear columns go down, without their qualifier
        // (the raw table knows its columns by name alone).
        let pushed: Vec<Expr> =
            filters.iter().filter(|f| self.reads_only_clear(f)).map(|f| unqualified(f.clone())).collect::<Result<_>>()?;
        // A limit is only given when every filter is exact, which ours never are.
        let raw = self.raw.scan(state, Some(&raw_projection), &pushed, if filters.is_empty() { limit } else { None }).await?;
        // The raw scan split across the query's partitions (by file, or by
        // byte ranges of large files), so that masking runs on every core:
        // the physical optimizer cannot split it inside the leaf.
        let raw = match raw.repartitioned(state.config().target_partitions(), state.config_options())? {
            Some(split) => split,
            None => raw,
        };
        let schema = Arc::new(self.schema.project(&chosen)?);
        Ok(Arc::new(MaskedScanExec::new(self.name.clone(), raw, masks, schema, self.key.clone(), self.unsealer.clone())))
    }
}

/// Whether a column is served exactly as stored: not masked, not sealed,
/// of the stored type (what a filter or a key lookup may read unmasked).
fn served_as_stored(
    mask: &Mask,
    sealed: bool,
    stored: Option<&arrow::datatypes::Field>,
    served: Option<&arrow::datatypes::FieldRef>,
) -> bool {
    *mask == Mask::Clear && !sealed && stored.zip(served).is_some_and(|(r, s)| r.data_type() == s.data_type())
}

fn unqualified(expr: Expr) -> Result<Expr> {
    expr.transform(|e| match e {
        Expr::Column(c) if c.relation.is_some() => Ok(Transformed::yes(Expr::Column(Column::new_unqualified(c.name)))),
        other => Ok(Transformed::no(other)),
    })
    .map(|t| t.data)
}

/// The scan of a [`MaskedTable`]: a leaf that runs the raw scan and masks
/// its batches. The raw plan is not one of its children, so no optimizer
/// rule and no `EXPLAIN` reaches it.
#[derive(Debug)]
pub struct MaskedScanExec {
    name: String,
    raw: Arc<dyn ExecutionPlan>,
    masks: Vec<ColumnMask>,
    schema: SchemaRef,
    properties: Arc<PlanProperties>,
    key: HashKey,
    unsealer: Option<Unsealer>,
    /// Operators on clear columns that run inside, on the raw rows, before
    /// the mask (see [`crate::late`]); already part of `raw`.
    absorbed: Vec<Absorbed>,
}

/// The largest top-k copied into a scan (see [`crate::late`]): a larger
/// one would hold many rows twice for little gain.
const MAX_ABSORBED_FETCH: usize = 8192;

/// How one column of a scan is masked (and opened first, when sealed).
#[derive(Debug, Clone)]
struct ColumnMask {
    mask: Mask,
    sealed: Option<Arc<tessera_contract::model::Column>>,
}

impl MaskedScanExec {
    fn new(
        name: String,
        raw: Arc<dyn ExecutionPlan>,
        masks: Vec<ColumnMask>,
        schema: SchemaRef,
        key: HashKey,
        unsealer: Option<Unsealer>,
    ) -> Self {
        let partitions = raw.properties().partitioning.partition_count();
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(Arc::clone(&schema)),
            Partitioning::UnknownPartitioning(partitions),
            EmissionType::Incremental,
            Boundedness::Bounded,
        ));
        Self { name, raw, masks, schema, properties, key, unsealer, absorbed: Vec::new() }
    }

    /// Whether the caller sees column `i` exactly as stored: not masked, not sealed.
    fn is_clear(&self, i: usize) -> bool {
        let raw = self.raw.schema();
        self.masks.get(i).is_some_and(|m| {
            served_as_stored(&m.mask, m.sealed.is_some(), raw.fields().get(i).map(|f| f.as_ref()), self.schema.fields().get(i))
        })
    }

    /// This scan with `ops` (in terms of its columns, innermost first) run
    /// inside it on the raw rows, before the mask; `None` when one of them
    /// reads a column that is not clear, or the scan absorbed already.
    pub(crate) fn absorbing(&self, ops: Vec<Absorbed>, config: &ConfigOptions) -> Result<Option<Arc<dyn ExecutionPlan>>> {
        if !self.absorbed.is_empty() || ops.is_empty() {
            return Ok(None);
        }
        // A copied top-k holds its rows a second time: only small ones are worth it.
        if ops.iter().any(|op| matches!(op, Absorbed::TopK { fetch, .. } if *fetch > MAX_ABSORBED_FETCH)) {
            return Ok(None);
        }
        if !ops.iter().all(|op| op.columns().into_iter().all(|i| self.is_clear(i))) {
            return Ok(None);
        }
        let raw_schema = self.raw.schema();
        let to_raw = |i: usize| raw_schema.fields().get(i).map(|f| Arc::new(ColumnExpr::new(f.name(), i)) as Arc<dyn PhysicalExpr>);
        let mut inner = Arc::clone(&self.raw);
        let mut absorbed = Vec::with_capacity(ops.len());
        for op in ops {
            let Some(op) = op.remap_to(&to_raw)? else { return Ok(None) };
            inner = op.over(inner)?;
            absorbed.push(op);
        }
        // The top-k's dynamic filter reaches the Parquet scan (file and row
        // group pruning by the current k-th value), as it would without a mask.
        let inner = match FilterPushdown::new_post_optimization().optimize(Arc::clone(&inner), config) {
            Ok(pushed) => pushed,
            Err(_) => inner,
        };
        let mut scan = self.over(inner);
        scan.absorbed = absorbed;
        Ok(Some(Arc::new(scan)))
    }

    /// The same scan (masks, absorbed operators) over another raw plan.
    fn over(&self, raw: Arc<dyn ExecutionPlan>) -> Self {
        let mut scan =
            Self::new(self.name.clone(), raw, self.masks.clone(), Arc::clone(&self.schema), self.key.clone(), self.unsealer.clone());
        scan.absorbed = self.absorbed.clone();
        scan
    }

    /// The tables a plan reads, by the names callers use.
    pub fn tables_read(plan: &Arc<dyn ExecutionPlan>) -> Vec<String> {
        let mut out = Vec::new();
        collect_tables(plan, &mut out);
        out.sort();
        out.dedup();
        out
    }
}

fn collect_tables(plan: &Arc<dyn ExecutionPlan>, out: &mut Vec<String>) {
    if let Some(scan) = plan.downcast_ref::<MaskedScanExec>() {
        out.push(scan.name.clone());
    }
    for child in plan.children() {
        collect_tables(child, out);
    }
}

impl DisplayAs for MaskedScanExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let masked: Vec<String> = self
            .schema
            .fields()
            .iter()
            .zip(&self.masks)
            .filter(|(_, m)| m.mask != Mask::Clear)
            .map(|(field, m)| format!("{}: {}", field.name(), m.mask.describe()))
            .collect();
        let columns: Vec<&str> = self.schema.fields().iter().map(|f| f.name().as_str()).collect();
        write!(f, "MaskedScan: table={}, columns=[{}], masked=[{}]", self.name, columns.join(", "), masked.join(", "))?;
        if !self.absorbed.is_empty() {
            let absorbed: Vec<String> = self.absorbed.iter().map(Absorbed::describe).collect();
            write!(f, ", before masking=[{}]", absorbed.join(", "))?;
        }
        Ok(())
    }
}

impl ExecutionPlan for MaskedScanExec {
    fn name(&self) -> &str {
        "MaskedScanExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        Vec::new()
    }

    fn apply_expressions(&self, _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    /// A plan run again (the recursive part of a recursive query) starts
    /// afresh: the raw plan inside, an absorbed top-k's dynamic filter
    /// included, is reset too (nothing outside can reach it to do so).
    fn reset_state(self: Arc<Self>) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(Arc::new(self.over(reset_plan_states(Arc::clone(&self.raw))?)))
    }

    fn with_new_children(self: Arc<Self>, children: Vec<Arc<dyn ExecutionPlan>>) -> Result<Arc<dyn ExecutionPlan>> {
        if children.is_empty() { Ok(self) } else { Err(DataFusionError::Internal("a masked scan has no children".into())) }
    }

    /// Row counts, and the statistics of the columns served in the clear
    /// only: a masked or sealed column's minimum or maximum would be a
    /// clear value.
    fn statistics_from_inputs(&self, _inputs: &[Arc<Statistics>], args: &StatisticsArgs) -> Result<Arc<Statistics>> {
        // The raw scan is not a child (nothing may reach it): ask it directly.
        // Statistics only guide planning: without them the query still runs.
        let Ok(raw) = StatisticsContext::new().compute(self.raw.as_ref(), &StatisticsArgs::new().with_partition(args.partition())) else {
            return Ok(Arc::new(Statistics::new_unknown(&self.schema)));
        };
        let mut out = Statistics::new_unknown(&self.schema);
        out.num_rows = raw.num_rows;
        for (i, column) in out.column_statistics.iter_mut().enumerate() {
            if self.is_clear(i)
                && let Some(s) = raw.column_statistics.get(i)
            {
                *column = s.clone();
            }
        }
        Ok(Arc::new(out))
    }

    fn execute(&self, partition: usize, context: Arc<TaskContext>) -> Result<SendableRecordBatchStream> {
        let raw = self.raw.execute(partition, context)?;
        let masks = Arc::new(self.masks.clone());
        let key = self.key.clone();
        let out = Arc::clone(&self.schema);
        // One opener per partition: each key is looked up once per scan, and a
        // forget is seen by the next scan (nothing keeps keys between queries).
        let opener = self.unsealer.as_ref().map(|u| u.store.opener(&u.domain));
        let stream = futures::stream::unfold((raw, opener), move |(mut raw, mut opener)| {
            let (masks, key, out) = (Arc::clone(&masks), key.clone(), Arc::clone(&out));
            async move {
                let batch = match raw.next().await? {
                    Ok(batch) => batch,
                    Err(e) => return Some((Err(e), (raw, opener))),
                };
                let masked = mask_batch(&batch, &masks, &key, opener.as_mut(), &out).await;
                Some((masked, (raw, opener)))
            }
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(Arc::clone(&self.schema), stream)))
    }
}

/// Masks every column of a raw batch, opening sealed ones first.
async fn mask_batch(
    batch: &RecordBatch,
    masks: &[ColumnMask],
    key: &HashKey,
    mut opener: Option<&mut tessera_store::Opener>,
    out: &SchemaRef,
) -> Result<RecordBatch> {
    let mut columns = Vec::with_capacity(masks.len());
    for ((column, m), field) in batch.columns().iter().zip(masks).zip(out.fields()) {
        let masked = match (&m.sealed, opener.as_deref_mut()) {
            (None, _) => m.mask.apply(column, key)?,
            (Some(spec), Some(opener)) => crate::unseal::column(column, spec, &m.mask, field, key, opener).await?,
            (Some(_), None) => return Err(DataFusionError::Internal("a sealed column without an opener".into())),
        };
        columns.push(masked);
    }
    Ok(RecordBatch::try_new_with_options(
        Arc::clone(out),
        columns,
        &arrow::array::RecordBatchOptions::new().with_row_count(Some(batch.num_rows())),
    )?)
}
