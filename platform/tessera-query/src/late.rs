//! Late masking: operators that only choose or reorder rows by columns the
//! caller sees in the clear run inside the masked leaf, below its mask, so
//! that the mask (and the opening of sealed values) runs on the rows the
//! query keeps rather than on every row of the table.
//!
//! Why this cannot reveal anything: a [`MaskedScanExec`] masks row by row
//! (each output cell depends on its own input cell only), and on a clear
//! column its mask is the identity. An operator that reads only clear
//! columns therefore sees the same values below the mask as above it and
//! keeps the same rows; the rows it keeps are then masked as before, and
//! nothing above the leaf ever sees an unmasked value.
//!
//! What moves ("is absorbed"), found from the top of the plan down:
//! - a top-k (`SortExec` with a fetch of at most 8192 rows) whose keys are
//!   plain clear columns;
//! - a filter whose predicate reads only clear columns, built only from
//!   comparisons, boolean logic, `IN` lists, `LIKE`, `IS [NOT] NULL`,
//!   casts, literals and columns (no function, no subquery, nothing
//!   volatile, nothing that produces values wider than its input).
//!
//! They move only through operators that neither change nor drop rows on
//! their own: plain column projections, repartitioning, batch coalescing,
//! the cooperative-scheduling wrapper, and filters that move inside as
//! well. The operator is copied, not moved: the original stays above the
//! leaf and sees the rows the copy kept, so the result is what it was,
//! only cheaper. Never moved: anything that reads a masked or sealed
//! column, grouping, DISTINCT, joins, aggregates, windows, functions. What
//! the leaf absorbed stays hidden like the rest of its inside: `EXPLAIN`
//! names it, never the files.

use std::sync::Arc;

use datafusion::common::Result;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::config::ConfigOptions;
use datafusion::physical_expr::expressions::{
    BinaryExpr, CastExpr, Column, InListExpr, IsNotNullExpr, IsNullExpr, LikeExpr, Literal, NegativeExpr, NotExpr, TryCastExpr,
};
use datafusion::physical_expr::{LexOrdering, PhysicalExpr, PhysicalSortExpr};
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::execution_plan::{ChildrenPropertiesMode, ReplaceChildrenOptions};
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::sorts::sort::SortExec;

use crate::table::MaskedScanExec;

/// An operator to run inside a masked leaf, its expressions in terms of
/// the columns of the plan node it is at.
#[derive(Debug, Clone)]
pub(crate) enum Absorbed {
    Filter(Arc<dyn PhysicalExpr>),
    TopK { ordering: Vec<PhysicalSortExpr>, fetch: usize },
}

impl Absorbed {
    /// The same operator with every column reference replaced by `map`
    /// (the column's index in the node below); `None` when a column does
    /// not map to a plain column there.
    pub(crate) fn remap_to(&self, map: &dyn Fn(usize) -> Option<Arc<dyn PhysicalExpr>>) -> Result<Option<Absorbed>> {
        Ok(match self {
            Absorbed::Filter(p) => remap_expr(p, map)?.map(Absorbed::Filter),
            Absorbed::TopK { ordering, fetch } => {
                let mut out = Vec::with_capacity(ordering.len());
                for s in ordering {
                    let Some(expr) = remap_expr(&s.expr, map)? else { return Ok(None) };
                    out.push(PhysicalSortExpr::new(expr, s.options));
                }
                Some(Absorbed::TopK { ordering: out, fetch: *fetch })
            }
        })
    }

    /// The columns (by index) the operator reads.
    pub(crate) fn columns(&self) -> Vec<usize> {
        let mut out = Vec::new();
        let mut collect = |e: &Arc<dyn PhysicalExpr>| {
            let _ = e.apply(|n| {
                if let Some(c) = n.downcast_ref::<Column>() {
                    out.push(c.index());
                }
                Ok(TreeNodeRecursion::Continue)
            });
        };
        match self {
            Absorbed::Filter(p) => collect(p),
            Absorbed::TopK { ordering, .. } => ordering.iter().for_each(|s| collect(&s.expr)),
        }
        out
    }

    /// The operator over `input` (whose columns its expressions name).
    pub(crate) fn over(&self, input: Arc<dyn ExecutionPlan>) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(match self {
            Absorbed::Filter(p) => Arc::new(FilterExec::try_new(Arc::clone(p), input)?),
            Absorbed::TopK { ordering, fetch } => {
                let Some(ordering) = LexOrdering::new(ordering.iter().cloned()) else { return Ok(input) };
                Arc::new(SortExec::new(ordering, input).with_fetch(Some(*fetch)).with_preserve_partitioning(true))
            }
        })
    }

    /// What `EXPLAIN` says of it.
    pub(crate) fn describe(&self) -> String {
        match self {
            Absorbed::Filter(_) => "Filter".to_owned(),
            Absorbed::TopK { fetch, .. } => format!("TopK(fetch={fetch})"),
        }
    }
}

/// Only these expressions move below a mask: they compute nothing wider
/// than their inputs, call no function, and are deterministic.
fn movable(expr: &Arc<dyn PhysicalExpr>) -> bool {
    let mut ok = true;
    let _ = expr.apply(|e| {
        let known = e.is::<Column>()
            || e.is::<Literal>()
            || e.is::<BinaryExpr>()
            || e.is::<NotExpr>()
            || e.is::<IsNullExpr>()
            || e.is::<IsNotNullExpr>()
            || e.is::<InListExpr>()
            || e.is::<LikeExpr>()
            || e.is::<CastExpr>()
            || e.is::<TryCastExpr>()
            || e.is::<NegativeExpr>();
        if known {
            Ok(TreeNodeRecursion::Continue)
        } else {
            ok = false;
            Ok(TreeNodeRecursion::Stop)
        }
    });
    ok
}

fn remap_expr(expr: &Arc<dyn PhysicalExpr>, map: &dyn Fn(usize) -> Option<Arc<dyn PhysicalExpr>>) -> Result<Option<Arc<dyn PhysicalExpr>>> {
    let mut missing = false;
    let out = Arc::clone(expr).transform(|e| match e.downcast_ref::<Column>() {
        Some(c) => match map(c.index()) {
            Some(mapped) => Ok(Transformed::yes(mapped)),
            None => {
                missing = true;
                Ok(Transformed::new(e, false, TreeNodeRecursion::Stop))
            }
        },
        None => Ok(Transformed::no(e)),
    })?;
    Ok((!missing).then_some(out.data))
}

/// A node whose child moved: its properties follow the new child.
const RECOMPUTE: ReplaceChildrenOptions = ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute);

/// The physical optimizer rule (see the module's header). It runs after
/// DataFusion's own rules and before the memory metering.
#[derive(Debug, Default)]
pub struct LateMasking;

impl PhysicalOptimizerRule for LateMasking {
    fn optimize(&self, plan: Arc<dyn ExecutionPlan>, config: &ConfigOptions) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_down(|node| {
            let op = if let Some(sort) = node.downcast_ref::<SortExec>()
                && let Some(fetch) = sort.fetch()
            {
                if !sort.expr().iter().all(|s| s.expr.is::<Column>()) {
                    return Ok(Transformed::no(node));
                }
                Absorbed::TopK { ordering: sort.expr().iter().cloned().collect(), fetch }
            } else if let Some(filter) = node.downcast_ref::<FilterExec>() {
                if !movable(filter.predicate()) {
                    return Ok(Transformed::no(node));
                }
                Absorbed::Filter(Arc::clone(filter.predicate()))
            } else {
                return Ok(Transformed::no(node));
            };
            let [input] = node.children()[..] else { return Ok(Transformed::no(node)) };
            match absorb(input, vec![op], config)? {
                Some(input) => Ok(Transformed::yes(Arc::clone(&node).replace_children(vec![input], RECOMPUTE)?)),
                None => Ok(Transformed::no(node)),
            }
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "tessera_late_masking"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// `node` with `ops` (innermost first, in terms of `node`'s columns) run
/// inside the masked leaf below it; `None` when they cannot reach one.
fn absorb(node: &Arc<dyn ExecutionPlan>, ops: Vec<Absorbed>, config: &ConfigOptions) -> Result<Option<Arc<dyn ExecutionPlan>>> {
    if let Some(leaf) = node.downcast_ref::<MaskedScanExec>() {
        return leaf.absorbing(ops, config);
    }
    // Anything that limits rows on its own would change what the ops keep.
    if node.fetch().is_some() {
        return Ok(None);
    }
    let [input] = node.children()[..] else { return Ok(None) };
    let below: Vec<Absorbed> = if let Some(projection) = node.downcast_ref::<ProjectionExec>() {
        let exprs = projection.expr();
        let map = |i: usize| exprs.get(i).filter(|p| p.expr.is::<Column>()).map(|p| Arc::clone(&p.expr));
        let mut out = Vec::with_capacity(ops.len());
        for op in &ops {
            let Some(op) = op.remap_to(&map)? else { return Ok(None) };
            out.push(op);
        }
        out
    } else if let Some(filter) = node.downcast_ref::<FilterExec>() {
        // A top-k may pass a filter only if the filter moves inside too, below it.
        if !movable(filter.predicate()) {
            return Ok(None);
        }
        let mut out = vec![Absorbed::Filter(Arc::clone(filter.predicate()))];
        let input_schema = input.schema();
        let projection = filter.projection().clone();
        let map = |i: usize| {
            let j = match &projection {
                Some(p) => *p.get(i)?,
                None => i,
            };
            let field = input_schema.fields().get(j)?;
            Some(Arc::new(Column::new(field.name(), j)) as Arc<dyn PhysicalExpr>)
        };
        for op in &ops {
            let Some(op) = op.remap_to(&map)? else { return Ok(None) };
            out.push(op);
        }
        out
    } else if matches!(node.name(), "RepartitionExec" | "CoalesceBatchesExec" | "CoalescePartitionsExec" | "CooperativeExec") {
        ops
    } else {
        return Ok(None);
    };
    match absorb(input, below, config)? {
        Some(input) => Ok(Some(Arc::clone(node).replace_children(vec![input], RECOMPUTE)?)),
        None => Ok(None),
    }
}
