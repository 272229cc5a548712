//! Bounded functions: the built-in scalar functions whose output can be far
//! larger than their input (`repeat('x', 2000000000)`, `lpad`, `replace`,
//! `array_repeat`, `range`, …) allocate outside any memory pool. Each is
//! replaced, in every session, by a wrapper that estimates the largest value
//! it would produce from its arguments before it runs, and refuses a value
//! over the per-value bound; functions that grow their input by a bounded
//! factor (`concat`, `array_concat`, …) are checked after they run, so that
//! chaining them cannot double a value past the bound either.
//!
//! The per-value bound is the query's memory limit divided by the batch
//! size: a constant result is copied into every row of a batch, so one
//! batch of the largest values still fits the query's limit.
//!
//! Some syntax reaches built-ins without the session's registry (`||` on
//! lists becomes `array_concat`, `OVERLAY` calls `overlay`), and `||` on
//! strings is an operator, not a function. The analyzer rule [`Bounded`]
//! runs after type coercion on every plan: it swaps any built-in instance of
//! a guarded function for the guarded one, and wraps every string `||` in a
//! check of the value it produced.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::datatypes::{DataType, FieldRef, Int64Type};
use datafusion::common::{DataFusionError, Result, ScalarValue};
use datafusion::config::ConfigOptions;
use datafusion::logical_expr::interval_arithmetic::Interval;
use datafusion::logical_expr::simplify::{ExprSimplifyResult, SimplifyContext};
use datafusion::logical_expr::sort_properties::{ExprProperties, SortProperties};
use datafusion::logical_expr::{
    ColumnarValue, Documentation, Expr, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
};

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
    /// `array_resize(a, n[, v])`: n elements.
    Resize,
    /// `range(a[, b[, step]])`, `generate_series`: (b − a) / step elements.
    Range,
    /// A bounded factor of the input: checked after it runs.
    After,
}

/// A built-in function with a bound on the values it produces.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct Guarded {
    inner: Arc<ScalarUDF>,
    growth: Growth,
    max_value_bytes: usize,
}

/// The analyzer rule that puts every guarded function and every string `||`
/// of a plan under the bound (see the module's documentation).
#[derive(Debug)]
pub struct Bounded {
    functions: Vec<Arc<ScalarUDF>>,
    check: Arc<ScalarUDF>,
}

impl Bounded {
    /// The rule for sessions whose values may be at most `max_value_bytes` each.
    pub fn new(max_value_bytes: usize) -> Self {
        Self {
            functions: guarded_functions(max_value_bytes),
            check: Arc::new(ScalarUDF::new_from_impl(BoundedValue {
                signature: Signature::any(1, datafusion::logical_expr::Volatility::Immutable),
                max_value_bytes,
            })),
        }
    }

    /// The guarded functions, to register in a session.
    pub fn functions(&self) -> &[Arc<ScalarUDF>] {
        &self.functions
    }

    fn rewrite(&self, e: Expr) -> Result<datafusion::common::tree_node::Transformed<Expr>> {
        use datafusion::common::tree_node::Transformed;
        use datafusion::logical_expr::{Operator, expr::ScalarFunction};
        match e {
            Expr::ScalarFunction(f) if f.func.inner().downcast_ref::<Guarded>().is_none() => {
                match self.functions.iter().find(|g| g.name() == f.func.name()) {
                    Some(g) => Ok(Transformed::yes(Expr::ScalarFunction(ScalarFunction { func: Arc::clone(g), args: f.args }))),
                    None => Ok(Transformed::no(Expr::ScalarFunction(f))),
                }
            }
            Expr::BinaryExpr(b) if b.op == Operator::StringConcat => Ok(Transformed::yes(Expr::ScalarFunction(ScalarFunction {
                func: Arc::clone(&self.check),
                args: vec![Expr::BinaryExpr(b)],
            }))),
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
        plan.transform_up_with_subqueries(|node| node.map_expressions(|e| e.transform_up(|e| self.rewrite(e)))).map(|t| t.data)
    }

    fn name(&self) -> &str {
        "tessera_bounded_values"
    }
}

/// `tessera_bounded(x)`: `x`, refused when one of its values is over the bound.
#[derive(Debug, PartialEq, Eq, Hash)]
struct BoundedValue {
    signature: Signature,
    max_value_bytes: usize,
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
        Ok(value)
    }
}

/// The guarded replacements of the unbounded built-ins, for a session whose
/// values may be at most `max_value_bytes` each.
pub fn guarded_functions(max_value_bytes: usize) -> Vec<Arc<ScalarUDF>> {
    use datafusion::functions as f;
    use datafusion::functions_nested as n;
    let list = [
        (f::string::repeat(), Growth::Repeat),
        (f::unicode::lpad(), Growth::Pad),
        (f::unicode::rpad(), Growth::Pad),
        (f::string::replace(), Growth::Replace),
        (f::regex::regexp_replace(), Growth::Replace),
        (n::repeat::array_repeat_udf(), Growth::ArrayRepeat),
        (n::resize::array_resize_udf(), Growth::Resize),
        (n::range::range_udf(), Growth::Range),
        (n::range::gen_series_udf(), Growth::Range),
        (n::string::array_to_string_udf(), Growth::After),
        (n::concat::array_concat_udf(), Growth::After),
        (n::concat::array_append_udf(), Growth::After),
        (n::concat::array_prepend_udf(), Growth::After),
        (f::string::concat(), Growth::After),
        (f::string::concat_ws(), Growth::After),
        (f::unicode::translate(), Growth::After),
        (f::string::to_hex(), Growth::After),
        (f::encoding::encode(), Growth::After),
        (f::core::overlay(), Growth::After),
    ];
    list.into_iter().map(|(inner, growth)| Arc::new(ScalarUDF::new_from_impl(Guarded { inner, growth, max_value_bytes }))).collect()
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
    fn estimate(&self, args: &[ColumnarValue]) -> Result<Option<u128>> {
        let int = |i: usize| args.get(i).map(max_int).transpose().map(|v| v.flatten().unwrap_or(0).max(0) as u128);
        let len = |i: usize| args.get(i).map_or(0, max_len) as u128;
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
            Growth::Resize => 16 * int(1)?,
            Growth::Range => {
                let ints: Vec<i128> = (0..args.len())
                    .map(|i| args.get(i).map(min_max_int).transpose())
                    .collect::<Result<Option<Vec<_>>>>()?
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(lo, hi)| (lo.unwrap_or(0) as i128, hi.unwrap_or(0) as i128))
                    .map(|(lo, hi)| if lo.abs() > hi.abs() { lo } else { hi })
                    .collect();
                let (start, stop, step) = match ints.as_slice() {
                    [stop] => (0, *stop, 1),
                    [start, stop] => (*start, *stop, 1),
                    [start, stop, step, ..] => (*start, *stop, *step),
                    [] => return Ok(None),
                };
                // Dates and timestamps with intervals: checked after they run.
                if args.iter().any(|a| !a.data_type().is_integer()) {
                    return Ok(None);
                }
                let span = (stop - start).unsigned_abs();
                let step = step.unsigned_abs().max(1);
                (span / step + 1) * 8
            }
            Growth::After => return Ok(None),
        }))
    }

    /// The largest value a result holds, in bytes.
    fn check_result(&self, out: &ColumnarValue) -> Result<()> {
        let bytes = max_len(out) as u128;
        if bytes > self.max_value_bytes as u128 { Err(self.too_large(bytes)) } else { Ok(()) }
    }
}

/// The largest byte size of one value of an argument.
fn max_len(v: &ColumnarValue) -> usize {
    match v {
        ColumnarValue::Scalar(s) => scalar_len(s),
        ColumnarValue::Array(a) => array_max_len(a),
    }
}

fn scalar_len(s: &ScalarValue) -> usize {
    match s {
        ScalarValue::Utf8(Some(v)) | ScalarValue::LargeUtf8(Some(v)) | ScalarValue::Utf8View(Some(v)) => v.len(),
        ScalarValue::Binary(Some(v)) | ScalarValue::LargeBinary(Some(v)) | ScalarValue::BinaryView(Some(v)) => v.len(),
        ScalarValue::List(a) => a.get_array_memory_size(),
        ScalarValue::LargeList(a) => a.get_array_memory_size(),
        ScalarValue::FixedSizeList(a) => a.get_array_memory_size(),
        other => other.size(),
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
        if let Some(bytes) = self.estimate(&args.args)?
            && bytes > self.max_value_bytes as u128
        {
            return Err(self.too_large(bytes));
        }
        let out = self.inner.inner().invoke_with_args(args)?;
        self.check_result(&out)?;
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
                    largest = largest.max(scalar_len(value) as u128);
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
