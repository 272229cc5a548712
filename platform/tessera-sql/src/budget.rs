//! Memory that DataFusion's own operators do not reserve: a query's
//! pool counts what sorts, joins, aggregates and repartitions hold, but not
//!
//! - the rows a window function (or a partial sort) buffers before it can
//!   answer: `max(x) OVER ()` holds its whole input;
//! - constants copied into every row: a projection of a 60 KiB literal
//!   writes 60 KiB per row of each batch, 480 MiB for a batch of 8,192;
//! - what the bounded functions produce ([`crate::guard`], through a
//!   [`Ledger`]).
//!
//! [`Metering`], the last physical optimizer rule of every query session,
//! puts the first two under the query's pool: each buffering operator's
//! input is metered, and what it holds (rows taken in and not yet given
//! out) is reserved before it takes more; when a plan's constants are wide,
//! the input of every operator that copies them is cut into batches small
//! enough that the copies of one batch stay under a quarter of the query's
//! memory, and that much is reserved while the query runs. A query whose
//! constants are too wide even for one row is refused before it starts.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use arrow::array::{Array as _, RecordBatch};
use datafusion::common::tree_node::{Transformed, TreeNode as _, TreeNodeRecursion};
use datafusion::common::{DataFusionError, Result, ScalarValue};
use datafusion::config::ConfigOptions;
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryPool, MemoryReservation};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::Literal;
use datafusion::physical_expr::scalar_subquery::ScalarSubqueryExpr;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::execution_plan::{ChildrenPropertiesMode, ReplaceChildrenOptions};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::unnest::UnnestExec;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties as _, PlanProperties};
use futures::StreamExt as _;

/// Rows per batch, DataFusion's default.
pub const BATCH_ROWS: usize = 8192;

/// The operators that hold rows without reserving them.
const BUFFERING: [&str; 3] = ["WindowAggExec", "BoundedWindowAggExec", "PartialSortExec"];

/// The physical optimizer rule of a query session (see the module's documentation).
#[derive(Debug)]
pub struct Metering {
    memory_limit: usize,
    ledger: Option<Arc<Ledger>>,
}

impl Metering {
    /// For sessions whose queries may hold `memory_limit` bytes each.
    pub fn new(memory_limit: usize) -> Self {
        Self { memory_limit, ledger: None }
    }

    /// What `ledger` holds for a statement is freed when its plan has run.
    pub fn releasing(self, ledger: Arc<Ledger>) -> Self {
        Self { ledger: Some(ledger), ..self }
    }
}

impl PhysicalOptimizerRule for Metering {
    fn optimize(&self, plan: Arc<dyn ExecutionPlan>, _config: &ConfigOptions) -> Result<Arc<dyn ExecutionPlan>> {
        // A value gathered from a group (`array_agg`, `string_agg`) may be
        // far wider than a row; where a scalar subquery's is copied into
        // rows it counts as a constant that wide.
        let gathered = if gathers(&plan)? { gathered_bytes(self.memory_limit) } else { 0 };
        let width = constant_width(&plan, gathered)?;
        let partitions = plan.output_partitioning().partition_count().max(1);
        let mut most_partitions = partitions;
        plan.apply(|node| {
            most_partitions = most_partitions.max(node.output_partitioning().partition_count());
            Ok(TreeNodeRecursion::Continue)
        })?;
        let rows = (self.memory_limit / 4 / most_partitions).checked_div(width).map_or(BATCH_ROWS, |rows| rows.min(BATCH_ROWS));
        if rows == 0 {
            return Err(DataFusionError::ResourcesExhausted(format!(
                "the query's constants take {width} bytes in every row, and {most_partitions} partitions copy them at once: \
                 more than a quarter of its memory limit of {} bytes even for one row; use fewer or shorter literals",
                self.memory_limit
            )));
        }
        plan.transform_up(|node| {
            let node = if rows < BATCH_ROWS && node_width(&node, gathered)? > 0 { rebatched_inputs(node, rows, gathered)? } else { node };
            let node = if node.downcast_ref::<UnnestExec>().is_some() { fanned_out(node, self.memory_limit)? } else { node };
            if BUFFERING.contains(&node.name()) {
                Ok(Transformed::yes(buffered(node, self.ledger.as_ref())?))
            } else {
                Ok(Transformed::yes(node))
            }
        })
        .map(|t| match &self.ledger {
            Some(ledger) => Arc::new(Released { input: t.data, ledger: Arc::clone(ledger) }) as Arc<dyn ExecutionPlan>,
            None => t.data,
        })
    }

    fn name(&self) -> &str {
        "tessera_metering"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// Bytes of the constants one row of the plan's operators may copy.
fn constant_width(plan: &Arc<dyn ExecutionPlan>, gathered: usize) -> Result<usize> {
    let mut width = 0usize;
    plan.apply(|node| {
        width = width.saturating_add(node_width(node, gathered)?);
        Ok(TreeNodeRecursion::Continue)
    })?;
    Ok(width)
}

/// Bytes of the constants in one operator's expressions: its literals, and
/// its scalar subqueries of variable width (as wide as a gathered value,
/// `gathered`, when the plan gathers).
fn node_width(node: &Arc<dyn ExecutionPlan>, gathered: usize) -> Result<usize> {
    let mut width = 0usize;
    node.apply_expressions(&mut |root: &Arc<dyn PhysicalExpr>| {
        root.apply(|e| {
            if let Some(literal) = e.downcast_ref::<Literal>() {
                width = width.saturating_add(scalar_bytes(literal.value()));
            } else if let Some(subquery) = e.downcast_ref::<ScalarSubqueryExpr>()
                && subquery.return_field(&arrow::datatypes::Schema::empty())?.data_type().primitive_width().is_none()
            {
                width = width.saturating_add(gathered);
            }
            Ok(TreeNodeRecursion::Continue)
        })
    })?;
    Ok(width)
}

/// The widest value a gathering aggregate may produce under a query memory
/// limit of `memory_limit`: it is produced once per group, not per row, so
/// it may be wider than a computed value (see [`crate::guard`]). Operators
/// copy values into batches of rows (a scalar subquery's, a join's build
/// side, batches merged after a filter or a repartition), so a query that
/// gathers runs in batches of [`batch_rows`].
pub fn gathered_bytes(memory_limit: usize) -> usize {
    (memory_limit / 512).max(64 << 10)
}

/// Sets the batch size in `config` for running `plan` (see [`batch_rows`]).
pub fn size_batches(config: &mut ConfigOptions, plan: &datafusion::logical_expr::LogicalPlan, memory_limit: usize) {
    if let Ok(rows) = datafusion::config::ConfigNonZeroUsize::try_new(batch_rows(plan, memory_limit)) {
        config.execution.batch_size = rows;
    }
}

/// Rows per batch for a statement under a query memory limit of
/// `memory_limit`: [`BATCH_ROWS`], or, when it gathers groups into values,
/// few enough that a batch of the widest gathered values takes a quarter of
/// the limit.
pub fn batch_rows(plan: &datafusion::logical_expr::LogicalPlan, memory_limit: usize) -> usize {
    use datafusion::logical_expr::{Expr, WindowFunctionDefinition};
    let mut gathering = false;
    let _ = plan.apply_with_subqueries(|node| {
        let _ = node.apply_expressions(|e| {
            e.apply(|e| {
                gathering |= match e {
                    Expr::AggregateFunction(f) => crate::guard::GATHERING.contains(&f.func.name()),
                    Expr::WindowFunction(w) => {
                        matches!(&w.fun, WindowFunctionDefinition::AggregateUDF(f) if crate::guard::GATHERING.contains(&f.name()))
                    }
                    _ => false,
                };
                Ok(if gathering { TreeNodeRecursion::Stop } else { TreeNodeRecursion::Continue })
            })
        });
        Ok(if gathering { TreeNodeRecursion::Stop } else { TreeNodeRecursion::Continue })
    });
    if gathering { (memory_limit / 4 / gathered_bytes(memory_limit)).clamp(1, BATCH_ROWS) } else { BATCH_ROWS }
}

/// Whether any operator of `plan` gathers a group into one value.
fn gathers(plan: &Arc<dyn ExecutionPlan>) -> Result<bool> {
    use datafusion::physical_expr::window::{PlainAggregateWindowExpr, SlidingAggregateWindowExpr};
    use datafusion::physical_plan::aggregates::AggregateExec;
    use datafusion::physical_plan::windows::{BoundedWindowAggExec, WindowAggExec};
    let gathering = |name: &str| crate::guard::GATHERING.contains(&name);
    let windowed = |exprs: &[Arc<dyn datafusion::physical_expr::window::WindowExpr>]| {
        exprs.iter().any(|w| {
            let any = w.as_any();
            any.downcast_ref::<PlainAggregateWindowExpr>().is_some_and(|a| gathering(a.get_aggregate_expr().fun().name()))
                || any.downcast_ref::<SlidingAggregateWindowExpr>().is_some_and(|a| gathering(a.get_aggregate_expr().fun().name()))
        })
    };
    let mut found = false;
    plan.apply(|node| {
        found = node.downcast_ref::<AggregateExec>().is_some_and(|a| a.aggr_expr().iter().any(|e| gathering(e.fun().name())))
            || node.downcast_ref::<WindowAggExec>().is_some_and(|w| windowed(w.window_expr()))
            || node.downcast_ref::<BoundedWindowAggExec>().is_some_and(|w| windowed(w.window_expr()));
        Ok(if found { TreeNodeRecursion::Stop } else { TreeNodeRecursion::Continue })
    })?;
    Ok(found)
}

/// The bytes a value takes when copied into a row.
pub(crate) fn scalar_bytes(s: &ScalarValue) -> usize {
    match s {
        ScalarValue::Utf8(Some(v)) | ScalarValue::LargeUtf8(Some(v)) | ScalarValue::Utf8View(Some(v)) => v.len(),
        ScalarValue::Binary(Some(v)) | ScalarValue::LargeBinary(Some(v)) | ScalarValue::BinaryView(Some(v)) => v.len(),
        ScalarValue::List(a) => array_bytes(a.as_ref()),
        ScalarValue::LargeList(a) => array_bytes(a.as_ref()),
        ScalarValue::FixedSizeList(a) => array_bytes(a.as_ref()),
        other => other.data_type().primitive_width().unwrap_or_else(|| other.size()),
    }
}

/// The bytes of an array's own values: a slice (a list value often is one,
/// of the batch it was gathered from) counts only what it covers, except
/// where strings or bytes are kept as views, whose buffers a slice does not
/// measure.
pub(crate) fn array_bytes(a: &dyn arrow::array::Array) -> usize {
    fn has_views(t: &arrow::datatypes::DataType) -> bool {
        use arrow::datatypes::DataType;
        match t {
            DataType::Utf8View | DataType::BinaryView => true,
            DataType::List(f)
            | DataType::LargeList(f)
            | DataType::FixedSizeList(f, _)
            | DataType::ListView(f)
            | DataType::LargeListView(f) => has_views(f.data_type()),
            DataType::Map(f, _) => has_views(f.data_type()),
            DataType::Struct(fields) => fields.iter().any(|f| has_views(f.data_type())),
            DataType::Union(fields, _) => fields.iter().any(|(_, f)| has_views(f.data_type())),
            DataType::Dictionary(_, v) => has_views(v),
            DataType::RunEndEncoded(_, v) => has_views(v.data_type()),
            _ => false,
        }
    }
    let full = a.get_array_memory_size();
    if has_views(a.data_type()) {
        return full;
    }
    a.to_data().get_slice_memory_size().map_or(full, |slice| slice.min(full))
}

/// The bytes of a batch's columns from the `skip`th on (see [`array_bytes`]).
fn batch_bytes(batch: &RecordBatch, skip: usize) -> usize {
    batch.columns().iter().skip(skip).map(|c| array_bytes(c.as_ref())).fold(0, usize::saturating_add)
}

/// `node` with each input cut into batches of at most `rows` rows, and
/// the copies of its constants reserved.
fn rebatched_inputs(node: Arc<dyn ExecutionPlan>, rows: usize, gathered: usize) -> Result<Arc<dyn ExecutionPlan>> {
    let width = node_width(&node, gathered)?;
    let children: Vec<Arc<dyn ExecutionPlan>> =
        node.children().into_iter().map(|c| Arc::new(Rebatch::new(Arc::clone(c), rows, width)) as Arc<dyn ExecutionPlan>).collect();
    if children.is_empty() {
        return Ok(node);
    }
    node.replace_children(children, ReplaceChildrenOptions::new(ChildrenPropertiesMode::Keep))
}

/// Its input, in batches of at most `rows` rows; holds a reservation of
/// `rows × width` bytes while it runs (the copies its parent makes).
#[derive(Debug)]
struct Rebatch {
    input: Arc<dyn ExecutionPlan>,
    rows: usize,
    width: usize,
}

impl Rebatch {
    fn new(input: Arc<dyn ExecutionPlan>, rows: usize, width: usize) -> Self {
        Self { input, rows, width }
    }
}

impl DisplayAs for Rebatch {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "Rebatch: rows={}, constant_bytes_per_row={}", self.rows, self.width)
    }
}

impl ExecutionPlan for Rebatch {
    fn name(&self) -> &str {
        "Rebatch"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.input.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }

    fn apply_expressions(&self, _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(self: Arc<Self>, mut children: Vec<Arc<dyn ExecutionPlan>>) -> Result<Arc<dyn ExecutionPlan>> {
        match (children.pop(), children.is_empty()) {
            (Some(input), true) => Ok(Arc::new(Rebatch::new(input, self.rows, self.width))),
            _ => Err(DataFusionError::Internal("Rebatch has one input".into())),
        }
    }

    fn execute(&self, partition: usize, context: Arc<TaskContext>) -> Result<SendableRecordBatchStream> {
        let reservation = MemoryConsumer::new("tessera constants").register(context.memory_pool());
        reservation.try_grow(self.rows.saturating_mul(self.width)).map_err(|e| {
            DataFusionError::ResourcesExhausted(format!(
                "copying the query's constants ({} bytes a row) into batches of {} rows: {}",
                self.width,
                self.rows,
                e.find_root()
            ))
        })?;
        let input = self.input.execute(partition, context)?;
        let schema = input.schema();
        let rows = self.rows;
        let stream = input.flat_map(move |batch| {
            let _held = &reservation;
            let parts: Vec<Result<RecordBatch>> = match batch {
                Ok(b) if b.num_rows() > rows => {
                    (0..b.num_rows()).step_by(rows).map(|at| Ok(b.slice(at, rows.min(b.num_rows() - at)))).collect()
                }
                other => vec![other],
            };
            futures::stream::iter(parts)
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
    }
}

/// `unnest` with its input cut into batches whose rows, each repeated as
/// many times as its longest unnested list has elements, take at most an
/// eighth of the query's memory: `SELECT unnest(l), wide FROM t` copies
/// `wide` once per element of `l`.
fn fanned_out(node: Arc<dyn ExecutionPlan>, memory_limit: usize) -> Result<Arc<dyn ExecutionPlan>> {
    let Some(unnest) = node.downcast_ref::<UnnestExec>() else { return Ok(node) };
    let lists = unnest.list_column_indices().iter().map(|l| (l.index_in_input_schema, l.depth)).collect();
    let input: Arc<dyn ExecutionPlan> = Arc::new(Fanout { input: Arc::clone(unnest.input()), lists, bytes: (memory_limit / 8).max(1) });
    node.replace_children(vec![input], ReplaceChildrenOptions::new(ChildrenPropertiesMode::Keep))
}

/// The input of an `unnest`, in batches whose output fits `bytes`.
#[derive(Debug)]
struct Fanout {
    input: Arc<dyn ExecutionPlan>,
    /// The unnested columns, and how deep.
    lists: Vec<(usize, usize)>,
    bytes: usize,
}

impl Fanout {
    /// The bytes each row becomes once unnested: its other columns, and an
    /// element of each list, once for each element of its longest list.
    fn fanned(&self, batch: &RecordBatch) -> Vec<usize> {
        let others: Vec<usize> = (0..batch.num_columns()).filter(|c| !self.lists.iter().any(|(l, _)| l == c)).collect();
        let widths = batch.project(&others).map(|b| row_bytes(&b)).unwrap_or_else(|_| row_bytes(batch));
        let widths = widths.into_iter().map(|w| w.saturating_add(16 * self.lists.len())).collect::<Vec<_>>();
        let mut copies = vec![1usize; batch.num_rows()];
        for (column, depth) in &self.lists {
            let Some(list) = batch.columns().get(*column) else { continue };
            let lengths = if *depth > 1 { crate::guard::leaves_per_row(list).0 } else { crate::guard::list_lengths(list) };
            for (c, n) in copies.iter_mut().zip(lengths) {
                *c = (*c).max(n);
            }
        }
        widths.into_iter().zip(copies).map(|(w, c)| w.saturating_mul(c)).collect()
    }
}

impl DisplayAs for Fanout {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "Fanout: bytes={}", self.bytes)
    }
}

impl ExecutionPlan for Fanout {
    fn name(&self) -> &str {
        "Fanout"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.input.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }

    fn apply_expressions(&self, _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(self: Arc<Self>, mut children: Vec<Arc<dyn ExecutionPlan>>) -> Result<Arc<dyn ExecutionPlan>> {
        match (children.pop(), children.is_empty()) {
            (Some(input), true) => Ok(Arc::new(Fanout { input, lists: self.lists.clone(), bytes: self.bytes })),
            _ => Err(DataFusionError::Internal("Fanout has one input".into())),
        }
    }

    fn execute(&self, partition: usize, context: Arc<TaskContext>) -> Result<SendableRecordBatchStream> {
        let reservation = MemoryConsumer::new("tessera unnest").register(context.memory_pool());
        reservation
            .try_grow(self.bytes)
            .map_err(|e| DataFusionError::ResourcesExhausted(format!("unnesting in batches of {} bytes: {}", self.bytes, e.find_root())))?;
        let input = self.input.execute(partition, context)?;
        let schema = input.schema();
        let this = Fanout { input: Arc::clone(&self.input), lists: self.lists.clone(), bytes: self.bytes };
        let stream = input.flat_map(move |batch| {
            let _held = &reservation;
            let parts: Vec<Result<RecordBatch>> = match batch {
                Ok(b) => this.cut(&b),
                Err(e) => vec![Err(e)],
            };
            futures::stream::iter(parts)
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
    }
}

impl Fanout {
    /// `batch` in slices whose rows, unnested, fit; a row that alone takes
    /// more than twice that is refused.
    fn cut(&self, batch: &RecordBatch) -> Vec<Result<RecordBatch>> {
        let fanned = self.fanned(batch);
        let mut parts = Vec::new();
        let (mut start, mut sum) = (0usize, 0usize);
        for (i, bytes) in fanned.iter().enumerate() {
            if *bytes > self.bytes.saturating_mul(2) {
                parts.push(Err(DataFusionError::ResourcesExhausted(format!(
                    "unnesting one row would copy {bytes} bytes (its other columns once for each element of its list), \
                     more than a quarter of the query's memory; select fewer or narrower columns beside the unnested list"
                ))));
                return parts;
            }
            if i > start && sum.saturating_add(*bytes) > self.bytes {
                parts.push(Ok(batch.slice(start, i - start)));
                (start, sum) = (i, 0);
            }
            sum = sum.saturating_add(*bytes);
        }
        if start < batch.num_rows() || parts.is_empty() {
            parts.push(Ok(batch.slice(start, batch.num_rows() - start)));
        }
        parts
    }
}

/// The bytes each row of a batch takes (an estimate for fixed-width columns).
fn row_bytes(batch: &RecordBatch) -> Vec<usize> {
    use arrow::array::AsArray as _;
    use arrow::datatypes::DataType;
    let mut out = vec![0usize; batch.num_rows()];
    let add = |out: &mut Vec<usize>, sizes: &mut dyn Iterator<Item = usize>| {
        for (o, s) in out.iter_mut().zip(sizes) {
            *o = o.saturating_add(s);
        }
    };
    for column in batch.columns() {
        match column.data_type() {
            DataType::Utf8 => add(&mut out, &mut column.as_string::<i32>().iter().map(|v| v.map_or(0, str::len) + 4)),
            DataType::LargeUtf8 => add(&mut out, &mut column.as_string::<i64>().iter().map(|v| v.map_or(0, str::len) + 8)),
            DataType::Utf8View => add(&mut out, &mut column.as_string_view().iter().map(|v| v.map_or(0, str::len) + 16)),
            DataType::Binary => add(&mut out, &mut column.as_binary::<i32>().iter().map(|v| v.map_or(0, <[u8]>::len) + 4)),
            DataType::LargeBinary => add(&mut out, &mut column.as_binary::<i64>().iter().map(|v| v.map_or(0, <[u8]>::len) + 8)),
            DataType::List(_) | DataType::LargeList(_) | DataType::FixedSizeList(..) => {
                let items = crate::guard::list_lengths(column);
                let values: usize = items.iter().sum();
                let per_item = column.get_array_memory_size() / values.max(1);
                add(&mut out, &mut items.into_iter().map(|n| n.saturating_mul(per_item) + 8));
            }
            _ => {
                let each = column.get_array_memory_size() / column.len().max(1);
                add(&mut out, &mut std::iter::repeat_n(each, column.len()));
            }
        }
    }
    out
}

/// The root of a statement's plan: when its last stream is dropped, what
/// the session's [`Ledger`] holds for the statement is freed (a connection
/// of the PostgreSQL protocol keeps its session between statements).
#[derive(Debug)]
struct Released {
    input: Arc<dyn ExecutionPlan>,
    ledger: Arc<Ledger>,
}

impl DisplayAs for Released {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("Released")
    }
}

impl ExecutionPlan for Released {
    fn name(&self) -> &str {
        "Released"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.input.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }

    fn apply_expressions(&self, _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(self: Arc<Self>, mut children: Vec<Arc<dyn ExecutionPlan>>) -> Result<Arc<dyn ExecutionPlan>> {
        match (children.pop(), children.is_empty()) {
            (Some(input), true) => Ok(Arc::new(Released { input, ledger: Arc::clone(&self.ledger) })),
            _ => Err(DataFusionError::Internal("Released has one input".into())),
        }
    }

    fn execute(&self, partition: usize, context: Arc<TaskContext>) -> Result<SendableRecordBatchStream> {
        let running = Running::start(Arc::clone(&self.ledger));
        let input = self.input.execute(partition, context)?;
        let schema = input.schema();
        let stream = input.map(move |batch| {
            let _running = &running;
            batch
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
    }
}

/// One running stream of a statement's plan.
struct Running(Arc<Ledger>);

impl Running {
    fn start(ledger: Arc<Ledger>) -> Self {
        ledger.streams.fetch_add(1, Ordering::Relaxed);
        Self(ledger)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.0.streams.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.release();
        }
    }
}

/// What one partition of a buffering operator holds: rows taken in and
/// not yet given out, at the average size of the rows taken in.
struct Held {
    reservation: MemoryReservation,
    rows_in: AtomicUsize,
    bytes_in: AtomicUsize,
    rows_out: AtomicUsize,
}

impl Held {
    fn new(pool: &Arc<dyn MemoryPool>, operator: &str) -> Arc<Self> {
        Arc::new(Self {
            reservation: MemoryConsumer::new(format!("tessera buffer of {operator}")).register(pool),
            rows_in: AtomicUsize::new(0),
            bytes_in: AtomicUsize::new(0),
            rows_out: AtomicUsize::new(0),
        })
    }

    /// What the rows held take, twice: a window operator concatenates the
    /// batches it holds into one before it computes, and holds both then.
    fn holding(&self) -> usize {
        let rows_in = self.rows_in.load(Ordering::Relaxed);
        let bytes_in = self.bytes_in.load(Ordering::Relaxed);
        let rows_out = self.rows_out.load(Ordering::Relaxed).min(rows_in);
        if rows_in == 0 { 0 } else { ((bytes_in as u128) * 2 * ((rows_in - rows_out) as u128) / rows_in as u128) as usize }
    }

    /// The operator takes `batch` in: reserve it first.
    fn take(&self, batch: &RecordBatch, operator: &str) -> Result<()> {
        self.rows_in.fetch_add(batch.num_rows(), Ordering::Relaxed);
        self.bytes_in.fetch_add(batch_bytes(batch, 0), Ordering::Relaxed);
        self.reservation.try_resize(self.holding()).map_err(|e| {
            DataFusionError::ResourcesExhausted(format!(
                "{operator} holds {} rows ({} bytes) before it can answer, over the query's memory: {}; \
                 partition the window (PARTITION BY) or filter first",
                self.rows_in.load(Ordering::Relaxed) - self.rows_out.load(Ordering::Relaxed).min(self.rows_in.load(Ordering::Relaxed)),
                self.holding(),
                e.find_root()
            ))
        })
    }

    /// The operator gave `rows` out: what it held of them is free.
    fn give(&self, rows: usize) {
        self.rows_out.fetch_add(rows, Ordering::Relaxed);
        let now = self.holding();
        if now < self.reservation.size() {
            self.reservation.resize(now);
        }
    }
}

/// Partitions of one buffering operator, from its metered output to its metered input.
type Partitions = Arc<Mutex<HashMap<usize, Arc<Held>>>>;

/// `node` (a buffering operator) with its input and its output metered.
fn buffered(node: Arc<dyn ExecutionPlan>, ledger: Option<&Arc<Ledger>>) -> Result<Arc<dyn ExecutionPlan>> {
    let partitions: Partitions = Arc::default();
    let operator = node.name().to_owned();
    let children: Vec<Arc<dyn ExecutionPlan>> = node
        .children()
        .into_iter()
        .map(|c| {
            Arc::new(MeteredInput { input: Arc::clone(c), partitions: Arc::clone(&partitions), operator: operator.clone() })
                as Arc<dyn ExecutionPlan>
        })
        .collect();
    let inner = node.replace_children(children, ReplaceChildrenOptions::new(ChildrenPropertiesMode::Keep))?;
    Ok(Arc::new(MeteredBuffer { inner, partitions, operator, ledger: ledger.cloned() }))
}

/// A buffering operator whose input is a [`MeteredInput`]: what it gives
/// out frees what it held.
#[derive(Debug)]
struct MeteredBuffer {
    inner: Arc<dyn ExecutionPlan>,
    partitions: Partitions,
    operator: String,
    /// Where the copies a window function makes are reserved until given out.
    ledger: Option<Arc<Ledger>>,
}

impl fmt::Debug for Held {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Held").field("bytes", &self.reservation.size()).finish()
    }
}

impl DisplayAs for MeteredBuffer {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "MeteredBuffer: {}", self.operator)
    }
}

impl ExecutionPlan for MeteredBuffer {
    fn name(&self) -> &str {
        "MeteredBuffer"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.inner.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.inner]
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }

    fn apply_expressions(&self, _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(self: Arc<Self>, mut children: Vec<Arc<dyn ExecutionPlan>>) -> Result<Arc<dyn ExecutionPlan>> {
        match (children.pop(), children.is_empty()) {
            (Some(inner), true) => Ok(Arc::new(MeteredBuffer {
                inner,
                partitions: Arc::clone(&self.partitions),
                operator: self.operator.clone(),
                ledger: self.ledger.clone(),
            })),
            _ => Err(DataFusionError::Internal("MeteredBuffer has one input".into())),
        }
    }

    fn execute(&self, partition: usize, context: Arc<TaskContext>) -> Result<SendableRecordBatchStream> {
        let held = Held::new(context.memory_pool(), &self.operator);
        self.partitions
            .lock()
            .map_err(|_| DataFusionError::Internal("metering is unavailable".into()))?
            .insert(partition, Arc::clone(&held));
        let out = self.inner.execute(partition, context)?;
        let schema = out.schema();
        let ledger = self.ledger.clone();
        // A window operator gives out its input's columns, and then its own.
        let passed = self.inner.children().first().map_or(0, |input| input.schema().fields().len());
        let stream = out.map(move |batch| {
            if let Ok(b) = &batch {
                held.give(b.num_rows());
                if let Some(ledger) = &ledger {
                    ledger.copied_out(batch_bytes(b, passed));
                }
            }
            batch
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
    }
}

/// The input of a buffering operator: each batch is reserved before the
/// operator takes it.
#[derive(Debug)]
struct MeteredInput {
    input: Arc<dyn ExecutionPlan>,
    partitions: Partitions,
    operator: String,
}

impl DisplayAs for MeteredInput {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "MeteredInput: of {}", self.operator)
    }
}

impl ExecutionPlan for MeteredInput {
    fn name(&self) -> &str {
        "MeteredInput"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.input.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }

    fn apply_expressions(&self, _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(self: Arc<Self>, mut children: Vec<Arc<dyn ExecutionPlan>>) -> Result<Arc<dyn ExecutionPlan>> {
        match (children.pop(), children.is_empty()) {
            (Some(input), true) => {
                Ok(Arc::new(MeteredInput { input, partitions: Arc::clone(&self.partitions), operator: self.operator.clone() }))
            }
            _ => Err(DataFusionError::Internal("MeteredInput has one input".into())),
        }
    }

    fn execute(&self, partition: usize, context: Arc<TaskContext>) -> Result<SendableRecordBatchStream> {
        // Run without its [`MeteredBuffer`] (nothing is given out), it holds everything it takes.
        let held = self
            .partitions
            .lock()
            .map_err(|_| DataFusionError::Internal("metering is unavailable".into()))?
            .get(&partition)
            .cloned()
            .unwrap_or_else(|| Held::new(context.memory_pool(), &self.operator));
        let input = self.input.execute(partition, context)?;
        let schema = input.schema();
        let operator = self.operator.clone();
        let stream = input.map(move |batch| {
            let batch = batch?;
            held.take(&batch, &operator)?;
            Ok(batch)
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
    }
}

/// What the bounded functions of one session produce, reserved in its
/// pool: values computed from constants (folded into the plan while it is
/// optimized) are held until the next statement is planned; the batches
/// computed from columns are held while the next few are computed (the
/// operators above have taken them over by then, and reserve what they
/// keep).
pub struct Ledger {
    pool: Arc<dyn MemoryPool>,
    constants: MemoryReservation,
    recent: Mutex<VecDeque<MemoryReservation>>,
    /// Values a window operator copies into its rows, until it gives them out.
    copies: MemoryReservation,
    partitions: usize,
    /// Batch reservations kept: one per partition for each bounded call in the statement.
    keep: AtomicUsize,
    /// Streams of the statement's plan still running.
    streams: AtomicUsize,
}

impl fmt::Debug for Ledger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ledger").field("constants", &self.constants.size()).field("keep", &self.keep).finish()
    }
}

/// A reservation made before a function runs, settled at what it produced.
#[derive(Debug)]
pub enum Ticket {
    Constant(usize),
    Batch(MemoryReservation),
}

impl Ledger {
    /// For a session drawing on `pool`, running `partitions` partitions.
    pub fn new(pool: Arc<dyn MemoryPool>, partitions: usize) -> Self {
        let constants = MemoryConsumer::new("tessera constant values").register(&pool);
        let copies = MemoryConsumer::new("tessera window copies").register(&pool);
        Self {
            pool,
            constants,
            copies,
            recent: Mutex::new(VecDeque::new()),
            partitions: partitions.max(1),
            keep: AtomicUsize::new(partitions.max(1)),
            streams: AtomicUsize::new(0),
        }
    }

    /// A new statement with `sites` bounded calls is being planned: the
    /// previous one's values are in its plan, or gone, by now.
    pub fn next_statement(&self, sites: usize) {
        self.release();
        self.keep.store(sites.max(1).saturating_mul(self.partitions), Ordering::Relaxed);
    }

    /// Frees what the ledger holds: the statement is done.
    pub fn release(&self) {
        self.constants.free();
        self.copies.free();
        if let Ok(mut recent) = self.recent.lock() {
            recent.clear();
        }
    }

    /// A window operator is about to copy a value into rows, `bytes` in all.
    pub fn copy(&self, bytes: usize) -> Result<usize> {
        self.copies.try_grow(bytes)?;
        Ok(self.copies.size())
    }

    /// A window operator gave out a batch of `bytes`: the copies in it are the consumer's now.
    fn copied_out(&self, bytes: usize) {
        self.copies.shrink(bytes.min(self.copies.size()));
    }

    /// Reserves `bytes` before a function named `name` runs.
    pub fn reserve(&self, name: &str, bytes: usize, constant: bool) -> Result<Ticket> {
        let refused = |e: DataFusionError| {
            DataFusionError::ResourcesExhausted(format!(
                "`{name}` would produce about {bytes} bytes, more than the query's memory has left: {}; \
                 ask for less (a smaller count or length), or over fewer rows",
                e.find_root()
            ))
        };
        if constant {
            self.constants.try_grow(bytes).map_err(refused)?;
            return Ok(Ticket::Constant(bytes));
        }
        let reservation = MemoryConsumer::new(format!("tessera {name}")).register(&self.pool);
        reservation.try_grow(bytes).map_err(refused)?;
        Ok(Ticket::Batch(reservation))
    }

    /// The function produced `bytes`.
    pub fn settle(&self, ticket: Ticket, bytes: usize) {
        match ticket {
            Ticket::Constant(reserved) => self.constants.shrink(reserved.saturating_sub(bytes).min(self.constants.size())),
            Ticket::Batch(reservation) => {
                reservation.resize(bytes);
                if let Ok(mut recent) = self.recent.lock() {
                    recent.push_back(reservation);
                    while recent.len() > self.keep.load(Ordering::Relaxed) {
                        recent.pop_front();
                    }
                }
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use datafusion::execution::memory_pool::GreedyMemoryPool;
    use datafusion::execution::runtime_env::RuntimeEnvBuilder;
    use datafusion::execution::session_state::SessionStateBuilder;
    use datafusion::prelude::{SessionConfig, SessionContext};

    use super::*;
    use crate::guard::Bounded;

    /// A session whose queries may hold `limit` bytes; `metered` adds the
    /// rule and the ledger of this module, as the query engine does.
    pub(crate) fn session(limit: usize, metered: bool) -> SessionContext {
        let pool: Arc<dyn MemoryPool> = Arc::new(GreedyMemoryPool::new(limit));
        let runtime = RuntimeEnvBuilder::new().with_memory_pool(Arc::clone(&pool)).build_arc().unwrap();
        let builder = SessionStateBuilder::new()
            .with_config(SessionConfig::new().with_target_partitions(2))
            .with_runtime_env(runtime)
            .with_default_features();
        let max_value_bytes = (limit / BATCH_ROWS).max(16 << 10);
        let ledger = Arc::new(Ledger::new(pool, 2));
        let bounded = if metered {
            Arc::new(Bounded::metered(max_value_bytes, Arc::clone(&ledger)))
        } else {
            Arc::new(Bounded::new(max_value_bytes))
        };
        let builder =
            if metered { builder.with_physical_optimizer_rule(Arc::new(Metering::new(limit).releasing(ledger))) } else { builder };
        SessionContext::new_with_state(bounded.register(builder).build())
    }

    pub(crate) async fn run(ctx: &SessionContext, sql: &str) -> Result<Vec<RecordBatch>> {
        ctx.sql(sql).await?.collect().await
    }

    pub(crate) fn out_of_memory(r: Result<Vec<RecordBatch>>, says: &str) {
        match r {
            Err(e) => {
                let e = e.find_root().to_string();
                assert!(e.contains("Resources exhausted") && e.contains(says), "{e}");
            }
            Ok(_) => panic!("expected to run out of memory ({says})"),
        }
    }

    const WINDOW: &str = "SELECT max(x) OVER () AS m FROM generate_series(1, 5000000) t(x) LIMIT 1";

    #[tokio::test]
    async fn a_window_over_its_whole_input_is_reserved() {
        // 40 MB of input held by the window: unmetered it runs past a 16 MiB limit.
        assert!(run(&session(16 << 20, false), WINDOW).await.is_ok());
        out_of_memory(run(&session(16 << 20, true), WINDOW).await, "WindowAggExec holds");
        // Within the limit it answers.
        let batches = run(&session(256 << 20, true), WINDOW).await.unwrap();
        assert_eq!(batches.iter().map(RecordBatch::num_rows).sum::<usize>(), 1);
    }

    #[tokio::test]
    async fn a_streaming_window_holds_little() {
        let sql = "SELECT count(r) AS n FROM (SELECT row_number() OVER () AS r FROM generate_series(1, 10000000) t(x)) w";
        let batches = run(&session(16 << 20, true), sql).await.unwrap();
        let n = batches[0].column(0).as_any().downcast_ref::<arrow::array::Int64Array>().unwrap().value(0);
        assert_eq!(n, 10_000_000);
    }

    #[tokio::test]
    async fn wide_constants_are_copied_in_small_batches() {
        let literal = "z".repeat(60_000);
        let sql = format!("SELECT sum(length(CASE WHEN x % 2 = 0 THEN '{literal}' ELSE 'a' END)) AS n FROM generate_series(1, 20000) t(x)");
        let ctx = session(64 << 20, true);
        let plan = ctx.sql(&sql).await.unwrap().create_physical_plan().await.unwrap();
        let shown = datafusion::physical_plan::displayable(plan.as_ref()).indent(true).to_string();
        let rows: usize = shown.split("Rebatch: rows=").nth(1).and_then(|s| s.split(',').next()).and_then(|s| s.parse().ok()).unwrap();
        assert!(rows * 60_000 <= (64 << 20) / 4, "{shown}");
        let batches = run(&ctx, &sql).await.unwrap();
        let n = batches[0].column(0).as_any().downcast_ref::<arrow::array::Int64Array>().unwrap().value(0);
        assert_eq!(n, 10_000 * 60_000 + 10_000);
        // Too wide for even one row of the limit: refused before it runs.
        out_of_memory(run(&session(100_000, true), &sql).await, "constants take");
    }

    #[tokio::test]
    async fn what_bounded_functions_produce_is_reserved() {
        let sql = "SELECT sum(length(repeat(x::text, 300))) AS n FROM generate_series(1, 100000) t(x)";
        // 1,800 bytes a value are within the per-value bound, and a few
        // batches of them (15 MB each) within a 64 MiB limit; beside the
        // 40 MiB another operator holds, the query cannot have them.
        let ctx = session(64 << 20, true);
        assert!(run(&ctx, sql).await.is_ok());
        let other = MemoryConsumer::new("another operator").register(&ctx.runtime_env().memory_pool);
        other.grow(40 << 20);
        assert!(run(&session(64 << 20, false), sql).await.is_ok(), "unmetered, nothing stops it");
        out_of_memory(run(&ctx, sql).await, "`repeat` would produce");
        drop(other);
        assert!(run(&ctx, sql).await.is_ok());
        // Constants folded while planning are held until the next statement
        // (a fold the ledger refuses is left to run, and refused, at execution).
        let many = (0..40).map(|i| format!("repeat('{i}', 8000) AS c{i}")).collect::<Vec<_>>().join(", ");
        let e = run(&session(256 << 10, true), &format!("SELECT {many}")).await.unwrap_err().find_root().to_string();
        assert!(e.contains("more than the query's memory has left") || e.contains("constants take"), "{e}");
    }

    fn int(batches: &[RecordBatch]) -> i64 {
        let column = batches[0].column(0);
        arrow::compute::cast(column, &arrow::datatypes::DataType::Int64)
            .unwrap()
            .as_any()
            .downcast_ref::<arrow::array::Int64Array>()
            .unwrap()
            .value(0)
    }

    #[tokio::test]
    async fn gathered_values_are_bounded() {
        // Values of 16 KiB, and gathered values of 256 KiB, under this limit.
        let ctx = session(64 << 20, true);
        let few = "SELECT length(string_agg(x::text, ',')) AS n FROM generate_series(1, 1000) t(x)";
        assert_eq!(int(&run(&ctx, few).await.unwrap()), 3892);
        let many = "SELECT length(string_agg(x::text, ',')) AS n FROM generate_series(1, 1000000) t(x)";
        out_of_memory(run(&ctx, many).await, "`string_agg` would produce a value");
        out_of_memory(
            run(&ctx, "SELECT cardinality(array_agg(x)) AS n FROM generate_series(1, 1000000) t(x)").await,
            "`array_agg` would produce",
        );
        // Delimiters count, with DISTINCT too.
        let delimited = "SELECT length(string_agg(x::text, repeat(',', 1000))) AS n FROM generate_series(1, 10000) t(x)";
        out_of_memory(run(&ctx, delimited).await, "`string_agg` would produce a value of at least");
        let delimited = "SELECT length(string_agg(DISTINCT x::text, repeat(',', 1000))) AS n FROM generate_series(1, 10000) t(x)";
        out_of_memory(run(&ctx, delimited).await, "`string_agg` would produce a value of at least");
        // DISTINCT gathers fewer than it is given.
        let distinct = "SELECT cardinality(array_agg(DISTINCT x % 10)) AS n FROM generate_series(1, 1000000) t(x)";
        assert_eq!(int(&run(&ctx, distinct).await.unwrap()), 10);
        let distinct = "SELECT length(string_agg(DISTINCT (x % 10)::text, ', ')) AS n FROM generate_series(1, 1000000) t(x)";
        assert_eq!(int(&run(&ctx, distinct).await.unwrap()), 28);
        // Per group, each value is within the bound.
        let grouped =
            "SELECT sum(c) AS n FROM (SELECT cardinality(array_agg(x)) AS c FROM generate_series(1, 1000000) t(x) GROUP BY x % 100)";
        assert_eq!(int(&run(&ctx, grouped).await.unwrap()), 1_000_000);
    }

    #[tokio::test]
    async fn a_statement_that_gathers_runs_in_small_batches() {
        // A value of 169 KB beside each of 20,000 rows: 1.4 GB in one batch
        // of 8,192 rows; in batches of 128, 22 MB.
        let sql = "SELECT sum(length(s)) AS n FROM generate_series(1, 20000) t(x), \
                   (SELECT string_agg(y::text, ',') AS s FROM generate_series(1, 30000) u(y)) g";
        let ctx = session(64 << 20, true);
        let plan = ctx.state().create_logical_plan(sql).await.unwrap();
        let rows = batch_rows(&plan, 64 << 20);
        assert_eq!(rows, 128);
        assert_eq!(
            batch_rows(&ctx.state().create_logical_plan("SELECT count(*) FROM generate_series(1, 10)").await.unwrap(), 64 << 20),
            BATCH_ROWS
        );
        size_batches(ctx.state_ref().write().config_mut().options_mut(), &plan, 64 << 20);
        assert_eq!(int(&run(&ctx, sql).await.unwrap()), 20_000 * 168_893);
    }

    #[tokio::test]
    async fn a_gathering_window_reserves_its_copies() {
        // 1,500 values of 12 KB each: 18 MB of copies.
        let over_all = "SELECT sum(cardinality(a)) AS n FROM (SELECT array_agg(x) OVER () AS a FROM generate_series(1, 1500) t(x))";
        assert_eq!(int(&run(&session(64 << 20, true), over_all).await.unwrap()), 1500 * 1500);
        out_of_memory(run(&session(8 << 20, true), over_all).await, "copies its value");
        // A running window grows its value row by row: 2,000 rows hold 16 MB.
        let running =
            "SELECT sum(cardinality(a)) AS n FROM (SELECT array_agg(x) OVER (ORDER BY x) AS a FROM generate_series(1, 2000) t(x))";
        assert_eq!(int(&run(&session(64 << 20, true), running).await.unwrap()), 2000 * 2001 / 2);
        out_of_memory(run(&session(8 << 20, true), running).await, "copies its value");
        // With FILTER the rows a value stands for are not the rows it gathered: refused.
        let filtered = "SELECT array_agg(x) FILTER (WHERE x > 1) OVER () AS a FROM generate_series(1, 10) t(x)";
        let e = run(&session(64 << 20, true), filtered).await.unwrap_err().find_root().to_string();
        assert!(e.contains("FILTER (WHERE …) OVER (…)` is not supported"), "{e}");
    }

    #[tokio::test]
    async fn a_statement_that_has_run_holds_nothing() {
        let ctx = session(64 << 20, true);
        let batches = run(&ctx, "SELECT repeat(x::text, 100) AS s FROM generate_series(1, 100000) t(x)").await.unwrap();
        assert_eq!(batches.iter().map(RecordBatch::num_rows).sum::<usize>(), 100_000);
        assert_eq!(ctx.runtime_env().memory_pool.reserved(), 0, "the ledger keeps nothing once the statement has run");
    }

    #[tokio::test]
    async fn unnest_repeats_its_siblings_in_small_batches() {
        let sql = "SELECT sum(length(pad)) AS n FROM (SELECT unnest(range(0, 1000)) AS u, repeat(x::text, 400) AS pad FROM generate_series(1, 300) t(x))";
        let ctx = session(16 << 20, true);
        let plan = ctx.sql(sql).await.unwrap().create_physical_plan().await.unwrap();
        let shown = datafusion::physical_plan::displayable(plan.as_ref()).indent(true).to_string();
        assert!(shown.contains("Fanout"), "{shown}");
        assert_eq!(int(&run(&ctx, sql).await.unwrap()), 1000 * 400 * (9 + 90 * 2 + 201 * 3));
        // A row that alone would be copied past the query's memory is refused.
        let wide =
            "SELECT sum(length(pad)) AS n FROM (SELECT unnest(range(0, 1990)) AS u, repeat('x', n) AS pad FROM (VALUES (15000)) t(n))";
        out_of_memory(run(&session(16 << 20, true), wide).await, "unnesting one row");
    }
}
