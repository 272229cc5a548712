//! Bounded aggregates: `array_agg` and `string_agg` gather a whole group
//! into one value. DataFusion reserves what they hold while they gather,
//! but not what happens to the value they produce: a window function copies
//! it into every row of its partition (`array_agg(x) OVER ()` holds n rows
//! of n elements), and a scalar subquery or a cross join copies it into
//! every row of the other side.
//!
//! Each is replaced, in every plan, by a wrapper that refuses a value over
//! the bound for gathered values (a 512th of the query's memory), as the
//! group gathers and when the value is produced, and that, as a window
//! function, reserves every value it gives out for as many rows as it
//! stands for before the window operator copies it. A statement that
//! gathers runs in batches small enough that a batch of such values fits a
//! quarter of the query's memory ([`crate::budget::batch_rows`]), wherever
//! operators copy them (a scalar subquery, a join, batches merged).

use std::sync::Arc;

use arrow::array::ArrayRef;
use arrow::datatypes::{DataType, FieldRef};
use datafusion::common::{DataFusionError, Result, ScalarValue};
use datafusion::logical_expr::expr::{AggregateFunctionParams, WindowFunctionParams};
use datafusion::logical_expr::function::{AccumulatorArgs, AggregateFunctionSimplification, StateFieldsArgs};
use datafusion::logical_expr::utils::AggregateOrderSensitivity;
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, Documentation, Expr, GroupsAccumulator, Operator, ReversedUDAF, SetMonotonicity,
    Signature, StatisticsArgs,
};

use crate::budget::Ledger;

/// The aggregates that gather a group into one value.
pub const GATHERING: [&str; 2] = ["array_agg", "string_agg"];

/// The built-in aggregate `name`, if it gathers.
pub(crate) fn gathering(name: &str) -> Option<Arc<AggregateUDF>> {
    match name {
        "array_agg" => Some(datafusion::functions_aggregate::array_agg::array_agg_udaf()),
        "string_agg" => Some(datafusion::functions_aggregate::string_agg::string_agg_udaf()),
        _ => None,
    }
}

/// A gathering aggregate whose values are bounded (see the module's documentation).
#[derive(Debug)]
pub(crate) struct BoundedAggregate {
    inner: Arc<AggregateUDF>,
    max_value_bytes: usize,
    /// Used as a window function: each value is reserved for the rows it is copied into.
    window: bool,
    ledger: Option<Arc<Ledger>>,
}

impl PartialEq for BoundedAggregate {
    fn eq(&self, other: &Self) -> bool {
        self.inner == other.inner
            && self.max_value_bytes == other.max_value_bytes
            && self.window == other.window
            && super::same_ledger(&self.ledger, &other.ledger)
    }
}

impl Eq for BoundedAggregate {}

impl std::hash::Hash for BoundedAggregate {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.inner.hash(state);
        self.max_value_bytes.hash(state);
        self.window.hash(state);
    }
}

impl BoundedAggregate {
    pub(crate) fn udaf(inner: Arc<AggregateUDF>, max_value_bytes: usize, window: bool, ledger: Option<Arc<Ledger>>) -> Arc<AggregateUDF> {
        Arc::new(AggregateUDF::new_from_impl(Self { inner, max_value_bytes, window, ledger }))
    }

    fn wrap(&self, inner: Box<dyn Accumulator>, distinct: bool) -> Box<dyn Accumulator> {
        let copies = if self.window { self.ledger.clone() } else { None };
        Box::new(Bounded {
            inner,
            name: self.inner.name().to_owned(),
            max_value_bytes: self.max_value_bytes,
            rows: 0,
            gathered: (!distinct).then_some(0),
            copies,
        })
    }

    fn rewrapped(&self, inner: Arc<AggregateUDF>) -> Arc<AggregateUDF> {
        Self::udaf(inner, self.max_value_bytes, self.window, self.ledger.clone())
    }
}

#[warn(clippy::missing_trait_methods)]
impl AggregateUDFImpl for BoundedAggregate {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }

    fn schema_name(&self, params: &AggregateFunctionParams) -> Result<String> {
        self.inner.inner().schema_name(params)
    }

    fn human_display(&self, params: &AggregateFunctionParams) -> Result<String> {
        self.inner.inner().human_display(params)
    }

    fn window_function_schema_name(&self, params: &WindowFunctionParams) -> Result<String> {
        self.inner.inner().window_function_schema_name(params)
    }

    fn display_name(&self, params: &AggregateFunctionParams) -> Result<String> {
        self.inner.inner().display_name(params)
    }

    fn window_function_display_name(&self, params: &WindowFunctionParams) -> Result<String> {
        self.inner.inner().window_function_display_name(params)
    }

    fn signature(&self) -> &Signature {
        self.inner.signature()
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.inner.inner().return_type(arg_types)
    }

    fn return_field(&self, arg_fields: &[FieldRef]) -> Result<FieldRef> {
        self.inner.inner().return_field(arg_fields)
    }

    fn is_nullable(&self) -> bool {
        self.inner.inner().is_nullable()
    }

    fn accumulator(&self, acc_args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        let distinct = acc_args.is_distinct;
        Ok(self.wrap(self.inner.inner().accumulator(acc_args)?, distinct))
    }

    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        self.inner.inner().state_fields(args)
    }

    fn groups_accumulator_supported(&self, _args: AccumulatorArgs) -> bool {
        // Each group's value is checked as it is produced, by the accumulator.
        false
    }

    fn create_groups_accumulator(&self, _args: AccumulatorArgs) -> Result<Box<dyn GroupsAccumulator>> {
        Err(DataFusionError::Internal(format!("the bounded {} has no groups accumulator", self.inner.name())))
    }

    fn create_sliding_accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        let distinct = args.is_distinct;
        Ok(self.wrap(self.inner.inner().create_sliding_accumulator(args)?, distinct))
    }

    fn with_beneficial_ordering(self: Arc<Self>, beneficial_ordering: bool) -> Result<Option<Arc<dyn AggregateUDFImpl>>> {
        Ok(Arc::clone(self.inner.inner())
            .with_beneficial_ordering(beneficial_ordering)?
            .map(|inner| Arc::clone(self.rewrapped(Arc::new(AggregateUDF::new_from_shared_impl(inner))).inner())))
    }

    fn order_sensitivity(&self) -> AggregateOrderSensitivity {
        self.inner.inner().order_sensitivity()
    }

    fn simplify(&self) -> Option<AggregateFunctionSimplification> {
        self.inner.inner().simplify()
    }

    fn simplify_expr_op_literal(
        &self,
        agg_function: &datafusion::logical_expr::expr::AggregateFunction,
        arg: &Expr,
        op: Operator,
        lit: &Expr,
        arg_is_left: bool,
    ) -> Result<Option<Expr>> {
        self.inner.inner().simplify_expr_op_literal(agg_function, arg, op, lit, arg_is_left)
    }

    fn reverse_expr(&self) -> ReversedUDAF {
        match self.inner.inner().reverse_expr() {
            ReversedUDAF::Reversed(inner) => ReversedUDAF::Reversed(self.rewrapped(inner)),
            other => other,
        }
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        self.inner.inner().coerce_types(arg_types)
    }

    fn is_descending(&self) -> Option<bool> {
        self.inner.inner().is_descending()
    }

    fn value_from_stats(&self, statistics_args: &StatisticsArgs) -> Option<ScalarValue> {
        self.inner.inner().value_from_stats(statistics_args)
    }

    fn default_value(&self, data_type: &DataType) -> Result<ScalarValue> {
        self.inner.inner().default_value(data_type)
    }

    fn supports_null_handling_clause(&self) -> bool {
        self.inner.inner().supports_null_handling_clause()
    }

    fn supports_within_group_clause(&self) -> bool {
        self.inner.inner().supports_within_group_clause()
    }

    fn documentation(&self) -> Option<&Documentation> {
        self.inner.inner().documentation()
    }

    fn set_monotonicity(&self, data_type: &DataType) -> SetMonotonicity {
        self.inner.inner().set_monotonicity(data_type)
    }
}

/// The bytes of the values an aggregate is given (booleans as a byte each:
/// as text or in a list they take at least that).
fn given(values: &[ArrayRef]) -> usize {
    values
        .iter()
        .map(|v| if v.data_type() == &DataType::Boolean { v.len() } else { crate::budget::array_bytes(v.as_ref()) })
        .fold(0, usize::saturating_add)
}

impl Bounded {
    fn too_large(&self, bytes: usize) -> DataFusionError {
        DataFusionError::ResourcesExhausted(format!(
            "`{}` would produce a value of at least {bytes} bytes, over the limit of {} bytes per value; \
             gather fewer rows into each value (GROUP BY more, or filter first)",
            self.name, self.max_value_bytes
        ))
    }
}

/// The accumulator of a [`BoundedAggregate`].
#[derive(Debug)]
struct Bounded {
    inner: Box<dyn Accumulator>,
    name: String,
    max_value_bytes: usize,
    /// Rows taken in since the last value was given out.
    rows: usize,
    /// Bytes of the values gathered (unless DISTINCT, which keeps fewer):
    /// the value will be at least this large, so a group past twice the
    /// bound is refused as it gathers, not after.
    gathered: Option<usize>,
    /// As a window function: where the copies of the values it gives out are reserved.
    copies: Option<Arc<Ledger>>,
}

impl Accumulator for Bounded {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        self.rows = self.rows.saturating_add(values.first().map_or(0, |v| v.len()));
        match self.gathered {
            // What it is given, delimiters included, is in its value.
            Some(gathered) => {
                let gathered = gathered.saturating_add(given(values));
                if gathered > self.max_value_bytes.saturating_mul(2) {
                    return Err(self.too_large(gathered));
                }
                self.gathered = Some(gathered);
                self.inner.update_batch(values)
            }
            // DISTINCT keeps what it has not seen: what it holds, and a
            // delimiter for each value it holds (each takes 8 bytes or more).
            None => {
                self.inner.update_batch(values)?;
                let held = self.inner.size();
                let delimiter =
                    values.get(1).map_or(0, |d| crate::guard::max_len(&datafusion::logical_expr::ColumnarValue::Array(Arc::clone(d))));
                let estimate = held.saturating_add((held / 8).saturating_mul(delimiter));
                if estimate > self.max_value_bytes.saturating_mul(4) { Err(self.too_large(estimate)) } else { Ok(()) }
            }
        }
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        let value = self.inner.evaluate()?;
        let bytes = crate::budget::scalar_bytes(&value);
        if bytes > self.max_value_bytes {
            return Err(self.too_large(bytes));
        }
        if let Some(ledger) = &self.copies {
            // A window operator copies the value into each row it stands
            // for: all the rows taken in since the last value (all of the
            // partition, for a frame over the whole of it), or the one row
            // it is asked for. They are reserved until it gives them out.
            let copies = std::mem::take(&mut self.rows).max(1);
            ledger.copy(bytes.saturating_mul(copies)).map_err(|e| {
                DataFusionError::ResourcesExhausted(format!(
                    "`{} … OVER` copies its value ({bytes} bytes) into each of {copies} rows of its window, over the query's memory: {}; \
                     gather less, or partition the window (PARTITION BY)",
                    self.name,
                    e.find_root()
                ))
            })?;
        }
        Ok(value)
    }

    fn size(&self) -> usize {
        self.inner.size() + size_of::<Self>()
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        self.inner.state()
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        self.inner.merge_batch(states)
    }

    fn retract_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        if let Some(gathered) = &mut self.gathered {
            *gathered = gathered.saturating_sub(given(values));
        }
        self.inner.retract_batch(values)
    }

    fn supports_retract_batch(&self) -> bool {
        self.inner.supports_retract_batch()
    }
}
