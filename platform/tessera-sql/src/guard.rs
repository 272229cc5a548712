//! Bounded functions: the built-in scalar functions whose output can be far
//! larger than their input (`repeat('x', 2000000000)`, `lpad`, `replace`,
//! `array_repeat`, `range`, …) allocate outside any memory pool. Each is
//! replaced, in every session, by a wrapper that estimates the largest value
//! it would produce from its arguments (row by row where it matters: the
//! span of each row's `range`) before it runs, and refuses a value over the
//! per-value bound; functions that grow their input by a small factor
//! (`translate`, `encode`, …) are checked after they run, so that chaining
//! them cannot double a value past the bound either. In a query session,
//! what each call may produce is reserved in the query's pool before it
//! runs (see [`crate::budget::Ledger`]).
//!
//! The per-value bound is the query's memory limit divided by the batch
//! size: a constant result is copied into every row of a batch, so one
//! batch of the largest values still fits the query's limit. The
//! aggregates that gather a group into one value (`array_agg`,
//! `string_agg`, `guard/aggregate.rs`) produce one value per group, not per
//! row: theirs may be a 512th of the query's limit
//! ([`crate::budget::gathered_bytes`]); where such a value is copied into
//! rows, a window's copies are reserved, and a statement that gathers runs
//! in batches small enough for the rest ([`crate::budget::batch_rows`]).
//!
//! Some syntax reaches built-ins without the session's registry (`||` on
//! lists becomes `array_concat`, `OVERLAY` calls `overlay`), and `||` on
//! strings is an operator, not a function. The analyzer rule [`Bounded`]
//! runs after type coercion on every plan: it swaps any built-in instance of
//! a guarded function or aggregate for the guarded one, and wraps every
//! string `||` in a check of the value it produced.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::datatypes::{DataType, FieldRef, Int64Type};
use datafusion::common::{DataFusionError, Result, ScalarValue};
use datafusion::config::ConfigOptions;
use datafusion::logical_expr::interval_arithmetic::Interval;
use datafusion::logical_expr::simplify::{ExprSimplifyResult, SimplifyContext};
use datafusion::logical_expr::sort_properties::{ExprProperties, SortProperties};
use datafusion::logical_expr::{
    AggregateUDF, ColumnarValue, Documentation, Expr, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
};

use crate::budget::Ledger;

mod aggregate;

pub use aggregate::GATHERING;

/// How a function's output size follows from its arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Growth {
    /// `repeat(s, n)`: |s| × n.
    Repeat,
    /// `lpad(s, n[, fill])`, `rpad`: n characters.
    Pad,
    /// `replace(s, from, to)`, `regexp_replace(s, p, r[, flags])`: at most (|s| + 1) × (|to| + 1).
    Replace,
    /// `array_repeat(x, n)`: |x| × n.
    ArrayRepeat,
    /// `array_resize(a, n[, v])`: n elements, each as wide as an element of `a` or `v`.
    Resize,
    /// `range(a[, b[, step]])`, `generate_series`: (b − a) / step elements, for
    /// integers, dates and timestamps.
    Range,
    /// `concat`, `array_concat`, `make_array`, `overlay`, …: the sum of the arguments.
    Sum,
    /// `concat_ws(sep, …)`: the arguments, and a separator between each two.
    ConcatWs,
    /// `array_to_string(a, sep[, null])`: each element of `a` (nested lists
    /// flattened) as text, and a separator after each.
    Join,
    /// `regexp_match(s, p[, flags])`: a copy of `s` for the match and for each group of `p`.
    Match,
    /// `to_char(t, format)`, `date_format`: each two characters of the format
    /// become at most 32 (`%+`, `%c`).
    Format,
    /// `array_replace_all(a, from, to)`, `array_replace_n`: every element may become `to`.
    ReplaceAll,
    /// A bounded factor of the input: checked after it runs.
    After,
}

impl Growth {
    /// Whether the estimate is near what the function produces, so that a
    /// value estimated over the bound is refused before it runs; otherwise
    /// the estimate is only reserved, and the value checked after.
    fn exact(self) -> bool {
        !matches!(self, Self::Match | Self::ReplaceAll)
    }
}

/// A built-in function with a bound on the values it produces.
#[derive(Debug)]
pub struct Guarded {
    inner: Arc<ScalarUDF>,
    growth: Growth,
    max_value_bytes: usize,
    /// Where a query session reserves what the function produces.
    ledger: Option<Arc<Ledger>>,
}

impl PartialEq for Guarded {
    fn eq(&self, other: &Self) -> bool {
        self.inner == other.inner
            && self.growth == other.growth
            && self.max_value_bytes == other.max_value_bytes
            && same_ledger(&self.ledger, &other.ledger)
    }
}

impl Eq for Guarded {}

impl std::hash::Hash for Guarded {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.inner.hash(state);
        self.growth.hash(state);
        self.max_value_bytes.hash(state);
    }
}

fn same_ledger(a: &Option<Arc<Ledger>>, b: &Option<Arc<Ledger>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        (None, None) => true,
        _ => false,
    }
}

/// The analyzer rule that puts every guarded function and every string `||`
/// of a plan under the bound (see the module's documentation).
#[derive(Debug)]
pub struct Bounded {
    functions: Vec<Arc<ScalarUDF>>,
    check: Arc<ScalarUDF>,
    /// The gathering aggregates, bounded: as aggregates, and as window functions.
    aggregates: Vec<(Arc<AggregateUDF>, Arc<AggregateUDF>)>,
    ledger: Option<Arc<Ledger>>,
}

impl Bounded {
    /// The rule for sessions whose values may be at most `max_value_bytes` each.
    pub fn new(max_value_bytes: usize) -> Self {
        Self::with_ledger(max_value_bytes, None)
    }

    /// The rule for one query session: what the functions produce is also
    /// reserved in the session's pool, through `ledger`.
    pub fn metered(max_value_bytes: usize, ledger: Arc<Ledger>) -> Self {
        Self::with_ledger(max_value_bytes, Some(ledger))
    }

    fn with_ledger(max_value_bytes: usize, ledger: Option<Arc<Ledger>>) -> Self {
        // The query's memory limit is the per-value bound times the batch size.
        let gathered = crate::budget::gathered_bytes(max_value_bytes.saturating_mul(crate::budget::BATCH_ROWS));
        Self {
            functions: guarded_functions(max_value_bytes, ledger.as_ref()),
            check: Arc::new(ScalarUDF::new_from_impl(BoundedValue {
                signature: Signature::any(1, datafusion::logical_expr::Volatility::Immutable),
                max_value_bytes,
                ledger: ledger.clone(),
            })),
            aggregates: GATHERING
                .iter()
                .filter_map(|name| aggregate::gathering(name))
                .map(|inner| {
                    (
                        aggregate::BoundedAggregate::udaf(Arc::clone(&inner), gathered, false, ledger.clone()),
                        aggregate::BoundedAggregate::udaf(inner, gathered, true, ledger.clone()),
                    )
                })
                .collect(),
            ledger,
        }
    }

    /// The guarded functions, to register in a session.
    pub fn functions(&self) -> &[Arc<ScalarUDF>] {
        &self.functions
    }

    /// Registers the guarded functions, and this rule, in a session being built.
    pub fn register(
        self: &Arc<Self>,
        builder: datafusion::execution::session_state::SessionStateBuilder,
    ) -> datafusion::execution::session_state::SessionStateBuilder {
        let mut builder = builder.with_analyzer_rule(Arc::clone(self) as _);
        // Registered last, so they win over the built-ins of the same names.
        builder.scalar_functions().get_or_insert_with(Vec::new).extend(self.functions.iter().cloned());
        builder
    }

    fn rewrite(&self, e: Expr, sites: &mut usize) -> Result<datafusion::common::tree_node::Transformed<Expr>> {
        use datafusion::common::tree_node::Transformed;
        use datafusion::logical_expr::expr::{AggregateFunction, ScalarFunction, WindowFunction};
        use datafusion::logical_expr::{Operator, WindowFunctionDefinition};
        match e {
            Expr::ScalarFunction(f) if f.func.name() == self.check.name() => {
                *sites += 1;
                if Arc::ptr_eq(&f.func, &self.check) {
                    Ok(Transformed::no(Expr::ScalarFunction(f)))
                } else {
                    Ok(Transformed::yes(Expr::ScalarFunction(ScalarFunction { func: Arc::clone(&self.check), args: f.args })))
                }
            }
            // Built-ins, and guarded functions of another session (a view
            // planned on its own), become this session's.
            Expr::ScalarFunction(f) => match self.functions.iter().find(|g| g.name() == f.func.name()) {
                Some(g) => {
                    *sites += 1;
                    if Arc::ptr_eq(g, &f.func) {
                        Ok(Transformed::no(Expr::ScalarFunction(f)))
                    } else {
                        Ok(Transformed::yes(Expr::ScalarFunction(ScalarFunction { func: Arc::clone(g), args: f.args })))
                    }
                }
                None => Ok(Transformed::no(Expr::ScalarFunction(f))),
            },
            Expr::BinaryExpr(b) if b.op == Operator::StringConcat => {
                *sites += 1;
                Ok(Transformed::yes(Expr::ScalarFunction(ScalarFunction {
                    func: Arc::clone(&self.check),
                    args: vec![Expr::BinaryExpr(b)],
                })))
            }
            Expr::AggregateFunction(f) => match self.aggregates.iter().find(|(a, _)| a.name() == f.func.name()) {
                Some((a, _)) if !Arc::ptr_eq(a, &f.func) => {
                    Ok(Transformed::yes(Expr::AggregateFunction(AggregateFunction { func: Arc::clone(a), params: f.params })))
                }
                _ => Ok(Transformed::no(Expr::AggregateFunction(f))),
            },
            Expr::WindowFunction(w) => match &w.fun {
                WindowFunctionDefinition::AggregateUDF(udaf) => match self.aggregates.iter().find(|(_, a)| a.name() == udaf.name()) {
                    Some((_, a)) if !Arc::ptr_eq(a, udaf) => {
                        if w.params.filter.is_some() {
                            // With FILTER, the rows a value is copied into are not those it gathers.
                            return Err(DataFusionError::Plan(format!(
                                "`{}(…) FILTER (WHERE …) OVER (…)` is not supported: filter in a subquery, or use CASE inside `{}`",
                                a.name(),
                                a.name()
                            )));
                        }
                        let WindowFunction { params, .. } = *w;
                        Ok(Transformed::yes(Expr::WindowFunction(Box::new(WindowFunction {
                            fun: WindowFunctionDefinition::AggregateUDF(Arc::clone(a)),
                            params,
                        }))))
                    }
                    _ => Ok(Transformed::no(Expr::WindowFunction(w))),
                },
                WindowFunctionDefinition::WindowUDF(_) => Ok(Transformed::no(Expr::WindowFunction(w))),
            },
            other => Ok(Transformed::no(other)),
        }
    }
}

impl datafusion::optimizer::AnalyzerRule for Bounded {
    fn analyze(
        &self,
        plan: datafusion::logical_expr::LogicalPlan,
        _config: &ConfigOptions,
    ) -> Result<datafusion::logical_expr::LogicalPlan> {
        use datafusion::common::tree_node::TreeNode as _;
        let mut sites = 0;
        let plan =
            plan.transform_up_with_subqueries(|node| node.map_expressions(|e| e.transform_up(|e| self.rewrite(e, &mut sites))))?.data;
        if let Some(ledger) = &self.ledger {
            ledger.next_statement(sites);
        }
        Ok(plan)
    }

    fn name(&self) -> &str {
        "tessera_bounded_values"
    }
}

/// `tessera_bounded(x)`: `x`, refused when one of its values is over the bound.
#[derive(Debug)]
struct BoundedValue {
    signature: Signature,
    max_value_bytes: usize,
    ledger: Option<Arc<Ledger>>,
}

impl PartialEq for BoundedValue {
    fn eq(&self, other: &Self) -> bool {
        self.signature == other.signature && self.max_value_bytes == other.max_value_bytes && same_ledger(&self.ledger, &other.ledger)
    }
}

impl Eq for BoundedValue {}

impl std::hash::Hash for BoundedValue {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.signature.hash(state);
        self.max_value_bytes.hash(state);
    }
}

impl ScalarUDFImpl for BoundedValue {
    fn name(&self) -> &str {
        "tessera_bounded"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        arg_types.first().cloned().ok_or_else(|| DataFusionError::Plan("tessera_bounded takes one argument".into()))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let Some(value) = args.args.into_iter().next() else {
            return Err(DataFusionError::Plan("tessera_bounded takes one argument".into()));
        };
        let bytes = max_len(&value);
        if bytes > self.max_value_bytes {
            return Err(DataFusionError::ResourcesExhausted(format!(
                "`||` would produce a value of {bytes} bytes, over the limit of {} bytes per value; concatenate less",
                self.max_value_bytes
            )));
        }
        if let Some(ledger) = &self.ledger {
            // The value exists already: reserve it now, so that what follows cannot pile more on it.
            let (constant, total) = total_bytes(std::slice::from_ref(&value), 1);
            let ticket = ledger.reserve("||", total, constant)?;
            ledger.settle(ticket, total);
        }
        Ok(value)
    }
}

/// The guarded replacements of the unbounded built-ins, for a session whose
/// values may be at most `max_value_bytes` each.
pub fn guarded_functions(max_value_bytes: usize, ledger: Option<&Arc<Ledger>>) -> Vec<Arc<ScalarUDF>> {
    use datafusion::functions as f;
    use datafusion::functions_nested as n;
    let list = [
        (f::string::repeat(), Growth::Repeat),
        (f::unicode::lpad(), Growth::Pad),
        (f::unicode::rpad(), Growth::Pad),
        (f::string::replace(), Growth::Replace),
        (f::regex::regexp_replace(), Growth::Replace),
        (f::regex::regexp_match(), Growth::Match),
        (f::datetime::to_char(), Growth::Format),
        (n::repeat::array_repeat_udf(), Growth::ArrayRepeat),
        (n::resize::array_resize_udf(), Growth::Resize),
        (n::range::range_udf(), Growth::Range),
        (n::range::gen_series_udf(), Growth::Range),
        (n::string::array_to_string_udf(), Growth::Join),
        (n::replace::array_replace_all_udf(), Growth::ReplaceAll),
        (n::replace::array_replace_n_udf(), Growth::ReplaceAll),
        (n::replace::array_replace_udf(), Growth::Sum),
        (n::make_array::make_array_udf(), Growth::Sum),
        (n::concat::array_concat_udf(), Growth::Sum),
        (n::concat::array_append_udf(), Growth::Sum),
        (n::concat::array_prepend_udf(), Growth::Sum),
        (f::string::concat(), Growth::Sum),
        (f::core::overlay(), Growth::Sum),
        (f::string::concat_ws(), Growth::ConcatWs),
        (f::unicode::translate(), Growth::After),
        (f::string::to_hex(), Growth::After),
        (f::encoding::encode(), Growth::After),
    ];
    list.into_iter()
        .map(|(inner, growth)| Arc::new(ScalarUDF::new_from_impl(Guarded { inner, growth, max_value_bytes, ledger: ledger.cloned() })))
        .collect()
}

impl Guarded {
    fn too_large(&self, bytes: u128) -> DataFusionError {
        DataFusionError::ResourcesExhausted(format!(
            "`{}` would produce a value of about {} bytes, over the limit of {} bytes per value; \
             ask for less (a smaller count or length), or compute it in fewer steps",
            self.inner.name(),
            bytes,
            self.max_value_bytes
        ))
    }

    /// The largest value the call would produce, in bytes (an upper bound).
    fn estimate(&self, args: &[ColumnarValue], rows: usize) -> Result<Option<u128>> {
        let int = |i: usize| args.get(i).map(max_int).transpose().map(|v| v.flatten().unwrap_or(0).max(0) as u128);
        let len = |i: usize| args.get(i).map_or(0, max_len) as u128;
        let lists = |i: usize| args.get(i).map_or(ListShape::default(), list_shape);
        Ok(Some(match self.growth {
            Growth::Repeat => len(0) * int(1)?,
            Growth::Pad => int(1)? * 4 + len(2),
            Growth::Replace => {
                let to = if self.inner.name() == "replace" { len(2) } else { len(2).max(len(1)) };
                if to <= len(1) && self.inner.name() == "replace" {
                    return Ok(None);
                }
                (len(0) + 1) * (to + 1)
            }
            Growth::ArrayRepeat => (len(0).max(16)) * int(1)?,
            Growth::Resize => int(1)? * (lists(0).item_bytes as u128).max(len(2)).max(16),
            Growth::Range => match range_elements(args, rows)? {
                Some(elements) => elements.saturating_mul(8),
                None => return Ok(None),
            },
            Growth::Sum => (0..args.len()).map(|i| len(i) + 16).sum(),
            Growth::ConcatWs => len(0) * args.len() as u128 + (1..args.len()).map(len).sum::<u128>(),
            Growth::Join => {
                let shape = lists(0);
                shape.leaves as u128 * (len(1) + len(2) + (shape.leaf_bytes as u128).max(24))
            }
            Growth::Match => (args.get(1).map_or(0, |p| most_of(p, '(')) as u128 + 1) * (len(0) + 16),
            Growth::Format => len(1) * 16 + 64,
            Growth::ReplaceAll => len(0) + lists(0).elements as u128 * (len(2) + 16),
            Growth::After => return Ok(None),
        }))
    }

    /// The largest value a result holds, in bytes.
    fn check_result(&self, out: &ColumnarValue) -> Result<()> {
        let bytes = max_len(out) as u128;
        if bytes > self.max_value_bytes as u128 { Err(self.too_large(bytes)) } else { Ok(()) }
    }
}

/// Whether every value is a constant, and the bytes they take (a
/// constant counted once per row when beside a column of `rows` rows).
fn total_bytes(values: &[ColumnarValue], rows: usize) -> (bool, usize) {
    let constant = values.iter().all(|v| matches!(v, ColumnarValue::Scalar(_)));
    let copies = if constant { 1 } else { rows.max(1) };
    let bytes = values
        .iter()
        .map(|v| match v {
            ColumnarValue::Scalar(s) => crate::budget::scalar_bytes(s).saturating_mul(copies),
            ColumnarValue::Array(a) => crate::budget::array_bytes(a.as_ref()),
        })
        .fold(0usize, usize::saturating_add);
    (constant, bytes)
}

/// The largest byte size of one value of an argument.
pub(crate) fn max_len(v: &ColumnarValue) -> usize {
    match v {
        ColumnarValue::Scalar(s) => crate::budget::scalar_bytes(s),
        ColumnarValue::Array(a) => array_max_len(a),
    }
}

fn array_max_len(a: &ArrayRef) -> usize {
    match a.data_type() {
        DataType::Utf8 => a.as_string::<i32>().iter().flatten().map(str::len).max().unwrap_or(0),
        DataType::LargeUtf8 => a.as_string::<i64>().iter().flatten().map(str::len).max().unwrap_or(0),
        DataType::Utf8View => a.as_string_view().iter().flatten().map(str::len).max().unwrap_or(0),
        DataType::Binary => a.as_binary::<i32>().iter().flatten().map(<[u8]>::len).max().unwrap_or(0),
        DataType::LargeBinary => a.as_binary::<i64>().iter().flatten().map(<[u8]>::len).max().unwrap_or(0),
        DataType::List(_) => {
            let l = a.as_list::<i32>();
            let per_item = l.values().get_array_memory_size() / l.values().len().max(1);
            l.offsets().windows(2).map(|w| (w[1] - w[0]).max(0) as usize).max().unwrap_or(0) * per_item.max(1)
        }
        DataType::LargeList(_) => {
            let l = a.as_list::<i64>();
            let per_item = l.values().get_array_memory_size() / l.values().len().max(1);
            l.offsets().windows(2).map(|w| (w[1] - w[0]).max(0) as usize).max().unwrap_or(0) * per_item.max(1)
        }
        _ => a.get_array_memory_size() / a.len().max(1),
    }
}

/// The largest integer value of an argument (`None` when it has none).
fn max_int(v: &ColumnarValue) -> Result<Option<i64>> {
    Ok(min_max_int(v)?.1)
}

fn min_max_int(v: &ColumnarValue) -> Result<(Option<i64>, Option<i64>)> {
    if !v.data_type().is_integer() {
        return Ok((None, None));
    }
    let array = v.to_array(1)?;
    let ints = arrow::compute::cast(&array, &DataType::Int64)?;
    let ints = ints.as_primitive::<Int64Type>();
    Ok((arrow::compute::min(ints), arrow::compute::max(ints)))
}

/// The shape of the largest list of an argument.
#[derive(Debug, Default, Clone, Copy)]
struct ListShape {
    /// Elements of the longest list.
    elements: usize,
    /// Bytes an element takes, on average.
    item_bytes: usize,
    /// Values of the list with most, nested lists flattened.
    leaves: usize,
    /// Bytes of the widest of those values.
    leaf_bytes: usize,
}

fn list_shape(v: &ColumnarValue) -> ListShape {
    let Ok(array) = v.to_array(1) else { return ListShape::default() };
    let Some((items, _)) = list_items(&array) else { return ListShape::default() };
    let elements = list_lengths(&array).into_iter().max().unwrap_or(0);
    let item_bytes = items.get_array_memory_size() / items.len().max(1);
    let (leaves, leaf_values) = leaves_per_row(&array);
    ListShape { elements, item_bytes, leaves: leaves.into_iter().max().unwrap_or(0), leaf_bytes: array_max_len(&leaf_values) }
}

/// The items of a list array, and its offsets.
fn list_items(a: &ArrayRef) -> Option<(ArrayRef, Vec<usize>)> {
    match a.data_type() {
        DataType::List(_) => {
            let l = a.as_list::<i32>();
            Some((Arc::clone(l.values()), l.offsets().iter().map(|o| (*o).max(0) as usize).collect()))
        }
        DataType::LargeList(_) => {
            let l = a.as_list::<i64>();
            Some((Arc::clone(l.values()), l.offsets().iter().map(|o| (*o).max(0) as usize).collect()))
        }
        DataType::FixedSizeList(_, n) => {
            let l = a.as_fixed_size_list();
            let n = (*n).max(0) as usize;
            Some((Arc::clone(l.values()), (0..=l.len()).map(|i| i * n).collect()))
        }
        _ => None,
    }
}

pub(crate) fn list_lengths(a: &ArrayRef) -> Vec<usize> {
    list_items(a).map_or_else(|| vec![1; a.len()], |(_, offsets)| offsets.windows(2).map(|w| w[1].saturating_sub(w[0])).collect())
}

/// For each row, how many values it holds with nested lists flattened;
/// and the innermost values.
pub(crate) fn leaves_per_row(a: &ArrayRef) -> (Vec<usize>, ArrayRef) {
    let Some((items, offsets)) = list_items(a) else { return (vec![1; a.len()], Arc::clone(a)) };
    let (inner, leaves) = leaves_per_row(&items);
    let mut before = Vec::with_capacity(inner.len() + 1);
    before.push(0usize);
    for n in &inner {
        before.push(before.last().copied().unwrap_or(0).saturating_add(*n));
    }
    let at = |i: usize| before.get(i.min(inner.len())).copied().unwrap_or(0);
    (offsets.windows(2).map(|w| at(w[1]).saturating_sub(at(w[0]))).collect(), leaves)
}

/// The most times `c` occurs in one value of a string argument.
fn most_of(v: &ColumnarValue, c: char) -> usize {
    let count = |s: &str| s.matches(c).count();
    match v {
        ColumnarValue::Scalar(ScalarValue::Utf8(Some(s)) | ScalarValue::LargeUtf8(Some(s)) | ScalarValue::Utf8View(Some(s))) => count(s),
        ColumnarValue::Scalar(_) => 0,
        ColumnarValue::Array(a) => match a.data_type() {
            DataType::Utf8 => a.as_string::<i32>().iter().flatten().map(count).max().unwrap_or(0),
            DataType::LargeUtf8 => a.as_string::<i64>().iter().flatten().map(count).max().unwrap_or(0),
            DataType::Utf8View => a.as_string_view().iter().flatten().map(count).max().unwrap_or(0),
            _ => 0,
        },
    }
}

/// The most elements one row of `range` or `generate_series` would
/// produce, from the arguments of that row; `None` for arguments of a type
/// it does not count (the function checks those itself, or its result is
/// checked after it runs).
fn range_elements(args: &[ColumnarValue], rows: usize) -> Result<Option<u128>> {
    let rows = if args.iter().all(|a| matches!(a, ColumnarValue::Scalar(_))) { 1 } else { rows.max(1) };
    let arrays = args.iter().map(|a| a.to_array(rows)).collect::<Result<Vec<_>>>()?;
    let integers = arrays.iter().all(|a| a.data_type().is_integer());
    let (start, stop, step) = match (arrays.as_slice(), integers) {
        ([stop], true) => (None, points(stop)?, None),
        ([start, stop], true) => (Some(points(start)?), points(stop)?, None),
        ([start, stop, step], _) => (Some(points(start)?), points(stop)?, Some(steps(step)?)),
        _ => return Ok(None),
    };
    let (Some(stop), Some(start), Some(step)) =
        (stop, start.unwrap_or_else(|| Some(vec![Some(0); rows])), step.unwrap_or_else(|| Some(vec![Some(1); rows])))
    else {
        return Ok(None);
    };
    let mut most = 0u128;
    for ((start, stop), step) in start.iter().zip(&stop).zip(&step) {
        if let (Some(start), Some(stop), Some(step)) = (start, stop, step) {
            most = most.max((stop - start).unsigned_abs() / (*step).max(1) + 1);
        }
    }
    Ok(Some(most))
}

const NANOS_PER_DAY: i128 = 86_400_000_000_000;

/// The values of an integer, date or timestamp argument (dates and timestamps in nanoseconds).
fn points(a: &ArrayRef) -> Result<Option<Vec<Option<i128>>>> {
    use arrow::datatypes::{Date32Type, Date64Type, TimeUnit};
    let scaled = |factor: i128| -> Result<Option<Vec<Option<i128>>>> {
        let ints = arrow::compute::cast(a, &DataType::Int64)?;
        Ok(Some(ints.as_primitive::<Int64Type>().iter().map(|v| v.map(|v| i128::from(v) * factor)).collect()))
    };
    match a.data_type() {
        t if t.is_integer() => scaled(1),
        DataType::Date32 => Ok(Some(a.as_primitive::<Date32Type>().iter().map(|d| d.map(|d| i128::from(d) * NANOS_PER_DAY)).collect())),
        DataType::Date64 => Ok(Some(a.as_primitive::<Date64Type>().iter().map(|d| d.map(|d| i128::from(d) * 1_000_000)).collect())),
        DataType::Timestamp(unit, _) => scaled(match unit {
            TimeUnit::Second => 1_000_000_000,
            TimeUnit::Millisecond => 1_000_000,
            TimeUnit::Microsecond => 1_000,
            TimeUnit::Nanosecond => 1,
        }),
        _ => Ok(None),
    }
}

/// The least magnitude of each step of an integer or interval argument
/// (intervals in nanoseconds: a month is at least 28 days, a day at least
/// 23 hours, and parts of opposite signs may cancel).
fn steps(a: &ArrayRef) -> Result<Option<Vec<Option<u128>>>> {
    use arrow::datatypes::{IntervalMonthDayNanoType, IntervalUnit};
    if a.data_type().is_integer() {
        return Ok(points(a)?.map(|v| v.into_iter().map(|s| s.map(i128::unsigned_abs)).collect()));
    }
    if !matches!(a.data_type(), DataType::Interval(_)) {
        return Ok(None);
    }
    let intervals = arrow::compute::cast(a, &DataType::Interval(IntervalUnit::MonthDayNano))?;
    let least = |months: i32, days: i32, nanos: i64| -> u128 {
        let (months, days, nanos) = (i128::from(months), i128::from(days), i128::from(nanos));
        let hour = NANOS_PER_DAY / 24;
        // Each part at its least and at its most magnitude.
        let parts = [(months * 28 * NANOS_PER_DAY, months * 31 * NANOS_PER_DAY), (days * 23 * hour, days * 25 * hour), (nanos, nanos)];
        let up: i128 = parts.iter().filter(|(lo, _)| *lo > 0).map(|(lo, _)| lo).sum::<i128>();
        let down: i128 = parts.iter().filter(|(_, hi)| *hi < 0).map(|(_, hi)| -hi).sum::<i128>();
        let up_most: i128 = parts.iter().filter(|(_, hi)| *hi > 0).map(|(_, hi)| hi).sum::<i128>();
        let down_least: i128 = parts.iter().filter(|(lo, _)| *lo < 0).map(|(lo, _)| -lo).sum::<i128>();
        (up - down).max(down_least - up_most).max(0).unsigned_abs()
    };
    Ok(Some(
        intervals.as_primitive::<IntervalMonthDayNanoType>().iter().map(|v| v.map(|v| least(v.months, v.days, v.nanoseconds))).collect(),
    ))
}

#[warn(clippy::missing_trait_methods)]
impl ScalarUDFImpl for Guarded {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn display_name(&self, args: &[Expr]) -> Result<String> {
        #[expect(deprecated)]
        self.inner.inner().display_name(args)
    }

    fn schema_name(&self, args: &[Expr]) -> Result<String> {
        self.inner.inner().schema_name(args)
    }

    fn signature(&self) -> &Signature {
        self.inner.signature()
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.inner.inner().return_type(arg_types)
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        self.inner.inner().return_field_from_args(args)
    }

    fn is_nullable(&self, args: &[Expr], schema: &dyn datafusion::common::ExprSchema) -> bool {
        #[expect(deprecated)]
        self.inner.inner().is_nullable(args, schema)
    }

    fn is_strict(&self) -> bool {
        self.inner.inner().is_strict()
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let per_value = self.estimate(&args.args, args.number_rows)?;
        if let Some(bytes) = per_value
            && bytes > self.max_value_bytes as u128
            && self.growth.exact()
        {
            return Err(self.too_large(bytes));
        }
        let ticket = match &self.ledger {
            Some(ledger) => {
                // Reserved before it runs: a value per row, or (for what is
                // checked after it runs) a few times what goes in.
                let (constant, input) = total_bytes(&args.args, args.number_rows);
                let rows = if constant { 1 } else { args.number_rows.max(1) as u128 };
                let bytes = per_value.map_or(input.saturating_mul(4) as u128, |v| v.saturating_mul(rows));
                Some((ledger, ledger.reserve(self.inner.name(), usize::try_from(bytes).unwrap_or(usize::MAX), constant)?))
            }
            None => None,
        };
        let out = self.inner.inner().invoke_with_args(args)?;
        self.check_result(&out)?;
        if let Some((ledger, ticket)) = ticket {
            ledger.settle(ticket, total_bytes(std::slice::from_ref(&out), 1).1);
        }
        Ok(out)
    }

    fn with_updated_config(&self, _config: &ConfigOptions) -> Option<ScalarUDF> {
        None
    }

    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }

    fn simplify(&self, args: Vec<Expr>, info: &SimplifyContext) -> Result<ExprSimplifyResult> {
        // Some functions fold their constant arguments themselves (`concat`
        // of literals): the folded value is bounded too.
        let simplified = self.inner.inner().simplify(args, info)?;
        if let ExprSimplifyResult::Simplified(expr) = &simplified {
            use datafusion::common::tree_node::{TreeNode as _, TreeNodeRecursion};
            let mut largest = 0u128;
            expr.apply(|e| {
                if let Expr::Literal(value, _) = e {
                    largest = largest.max(crate::budget::scalar_bytes(value) as u128);
                }
                Ok(TreeNodeRecursion::Continue)
            })?;
            if largest > self.max_value_bytes as u128 {
                return Err(self.too_large(largest));
            }
        }
        Ok(simplified)
    }

    fn preimage(
        &self,
        args: &[Expr],
        lit_expr: &Expr,
        info: &SimplifyContext,
    ) -> Result<datafusion::logical_expr::preimage::PreimageResult> {
        self.inner.inner().preimage(args, lit_expr, info)
    }

    fn conditional_arguments<'a>(&self, args: &'a [Expr]) -> Option<(Vec<&'a Expr>, Vec<&'a Expr>)> {
        self.inner.inner().conditional_arguments(args)
    }

    fn short_circuits(&self) -> bool {
        self.inner.inner().short_circuits()
    }

    fn evaluate_bounds(&self, input: &[&Interval]) -> Result<Interval> {
        self.inner.inner().evaluate_bounds(input)
    }

    fn propagate_constraints(&self, interval: &Interval, inputs: &[&Interval]) -> Result<Option<Vec<Interval>>> {
        self.inner.inner().propagate_constraints(interval, inputs)
    }

    fn struct_field_mapping(&self, literal_args: &[Option<ScalarValue>]) -> Option<datafusion::logical_expr::StructFieldMapping> {
        self.inner.inner().struct_field_mapping(literal_args)
    }

    fn output_ordering(&self, inputs: &[ExprProperties]) -> Result<SortProperties> {
        self.inner.inner().output_ordering(inputs)
    }

    fn preserves_lex_ordering(&self, inputs: &[ExprProperties]) -> Result<bool> {
        self.inner.inner().preserves_lex_ordering(inputs)
    }

    fn strictly_order_preserving(&self, inputs: &[ExprProperties]) -> Result<bool> {
        self.inner.inner().strictly_order_preserving(inputs)
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        self.inner.inner().coerce_types(arg_types)
    }

    fn documentation(&self) -> Option<&Documentation> {
        self.inner.inner().documentation()
    }

    fn placement(&self, args: &[datafusion::logical_expr::ExpressionPlacement]) -> datafusion::logical_expr::ExpressionPlacement {
        self.inner.inner().placement(args)
    }
}

#[cfg(test)]
mod tests {
    use crate::budget::tests::{out_of_memory, run, session};

    /// Each query would produce one value over the bound of 16 KiB (a 64 MiB
    /// query), or several rows of them: each is refused before it runs.
    #[tokio::test]
    async fn multipliers_are_estimated_before_they_run() {
        let ctx = session(64 << 20, true);
        for (sql, says) in [
            // The extremes of each argument are small spans; one row's is not.
            ("SELECT cardinality(range(a, b)) AS n FROM (VALUES (0, 1000000000), (1000000000, 1000000000)) t(a, b)", "`range`"),
            (
                "SELECT cardinality(generate_series(a, b, s)) AS n FROM (VALUES (0, 10, 1), (0, 100000000, 2)) t(a, b, s)",
                "`generate_series`",
            ),
            (
                "SELECT cardinality(range(TIMESTAMP '1970-01-01 00:00:00', TIMESTAMP '2100-01-01 00:00:00', INTERVAL '1 second')) AS n",
                "`range`",
            ),
            ("SELECT cardinality(range(DATE '1970-01-01', DATE '9999-01-01', INTERVAL '1 day')) AS n", "`range`"),
            (
                "SELECT cardinality(range(TIMESTAMP '1970-01-01 00:00:00', TIMESTAMP '2100-01-01 00:00:00', INTERVAL '1 month -30 days')) AS n",
                "`range`",
            ),
            ("SELECT cardinality(make_array(repeat('a', 10000), repeat('b', 10000))) AS n", "`make_array`"),
            ("SELECT length(array_to_string(array_repeat(1, 1000), repeat('-', 1000))) AS n", "`array_to_string`"),
            ("SELECT length(array_to_string([[1, 2], [3, 4, 5, 6, 7, 8, 9, 10, 11, 12]], repeat('-', 2000))) AS n", "`array_to_string`"),
            ("SELECT length(concat_ws(repeat('-', 4000), 'a', 'b', 'c', 'd', 'e', 'f')) AS n", "`concat_ws`"),
            ("SELECT cardinality(array_resize(['x'], 100, repeat('y', 1000))) AS n", "`array_resize`"),
            ("SELECT length(to_char(TIMESTAMP '2001-01-01 00:00:00', repeat('%c', 1000))) AS n", "`to_char`"),
        ] {
            out_of_memory(run(&ctx, sql).await, says);
        }
        // Within the bound they answer.
        for sql in [
            "SELECT cardinality(range(a, b)) AS n FROM (VALUES (0, 10), (1000000000, 1000000010)) t(a, b)",
            "SELECT cardinality(range(TIMESTAMP '2026-01-01 00:00:00', TIMESTAMP '2026-01-02 00:00:00', INTERVAL '1 hour')) AS n",
            "SELECT length(concat_ws(',', 'a', 'b')) AS n",
            "SELECT length(array_to_string([[1, 2], [3]], '-')) AS n",
            "SELECT cardinality(regexp_match('abc', '(a)(b)(c)')) AS n",
            "SELECT length(to_char(TIMESTAMP '2001-01-01 00:00:00', '%Y-%m-%d %H:%M')) AS n",
        ] {
            assert!(run(&ctx, sql).await.is_ok(), "{sql}");
        }
    }

    #[tokio::test]
    async fn what_a_match_may_copy_is_reserved() {
        // Nested groups each copy the whole string: 11 copies of 1 KB a row.
        let groups = format!("{}a*{}", "(".repeat(10), ")".repeat(10));
        let sql =
            format!("SELECT count(regexp_match(s, '{groups}')) AS n FROM (SELECT repeat('a', 1000) AS s FROM generate_series(1, 100000))");
        assert!(run(&session(512 << 20, true), &sql).await.is_ok());
        out_of_memory(run(&session(32 << 20, true), &sql).await, "`regexp_match` would produce");
    }
}
