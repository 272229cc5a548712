//! A table's quality checks from its contract, run through DataFusion on
//! the table's current version after each commit.

use deltalake::DeltaTable;
use deltalake::datafusion::prelude::SessionContext;
use serde_json::Value;
use tessera_contract::model::{Check, Table};
use tessera_store::QualityResult;

use crate::delta::Error;

/// Runs every check of `spec` on `table` (named `name`).
pub async fn run(name: &str, spec: &Table, table: &DeltaTable) -> Result<Vec<QualityResult>, Error> {
    if spec.checks.is_empty() {
        return Ok(Vec::new());
    }
    let failed = |e: deltalake::datafusion::error::DataFusionError| Error::Query { table: name.to_owned(), message: e.to_string() };
    let ctx = SessionContext::new();
    let provider = table.table_provider().await.map_err(failed)?;
    ctx.register_table("t", provider).map_err(failed)?;
    let version = table.version().and_then(|v| i64::try_from(v).ok()).unwrap_or(0);
    let mut out = Vec::with_capacity(spec.checks.len());
    for check in &spec.checks {
        let (label, sql) = query(check);
        // A sealed column's values are tokens to the platform: what they are
        // cannot be checked without opening them, which quality never does.
        let sealed = match check {
            Check::AcceptedValues { column, .. } | Check::Range { column, .. } => {
                spec.columns.get(column).is_some_and(tessera_contract::seal::is_sealed)
            }
            _ => false,
        };
        if sealed {
            let detail = "not run: the column is classified and stored sealed, so its values are not readable to checks".to_owned();
            out.push(QualityResult {
                table: name.to_owned(),
                check: label,
                passed: true,
                detail,
                table_version: version,
                checked_at: String::new(),
            });
            continue;
        }
        let batches = ctx.sql(&sql).await.map_err(failed)?.collect().await.map_err(failed)?;
        let n = batches
            .first()
            .filter(|b| b.num_rows() > 0)
            .and_then(|b| arrow::compute::cast(b.column(0), &arrow::datatypes::DataType::Int64).ok())
            .and_then(|c| c.as_any().downcast_ref::<arrow::array::Int64Array>().map(|a| a.value(0)))
            .unwrap_or(0);
        let (passed, detail) = verdict(check, n);
        out.push(QualityResult { table: name.to_owned(), check: label, passed, detail, table_version: version, checked_at: String::new() });
    }
    Ok(out)
}

fn q(column: &str) -> String {
    format!("\"{}\"", column.replace('"', "\"\""))
}

/// A check's label and the query that counts what it measures.
fn query(check: &Check) -> (String, String) {
    match check {
        Check::NotNull(c) => (format!("not_null({c})"), format!("SELECT COUNT(*) FROM t WHERE {} IS NULL", q(c.as_str()))),
        Check::Unique(cols) => {
            let list = cols.iter().map(|c| q(c.as_str())).collect::<Vec<_>>().join(", ");
            let label = cols.iter().map(|c| c.as_str()).collect::<Vec<_>>().join(", ");
            (format!("unique({label})"), format!("SELECT COUNT(*) FROM (SELECT {list} FROM t GROUP BY {list} HAVING COUNT(*) > 1)"))
        }
        Check::AcceptedValues { column, values } => {
            let list = values.iter().map(literal).collect::<Vec<_>>().join(", ");
            let c = q(column.as_str());
            (format!("accepted_values({column})"), format!("SELECT COUNT(*) FROM t WHERE {c} IS NOT NULL AND {c} NOT IN ({list})"))
        }
        Check::Range { column, min, max } => {
            let c = q(column.as_str());
            let mut outside = Vec::new();
            if let Some(min) = min {
                outside.push(format!("{c} < {min:?}"));
            }
            if let Some(max) = max {
                outside.push(format!("{c} > {max:?}"));
            }
            let condition = if outside.is_empty() { "false".to_owned() } else { outside.join(" OR ") };
            (format!("range({column})"), format!("SELECT COUNT(*) FROM t WHERE {condition}"))
        }
        Check::RowCount { .. } => ("row_count".to_owned(), "SELECT COUNT(*) FROM t".to_owned()),
    }
}

fn literal(v: &Value) -> String {
    match v {
        Value::String(s) => format!("'{}'", s.replace('\'', "''")),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => format!("'{}'", other.to_string().replace('\'', "''")),
    }
}

/// Whether a check passed, given its count, and what was measured.
fn verdict(check: &Check, n: i64) -> (bool, String) {
    let plural = |n: i64, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
    match check {
        Check::NotNull(_) => (n == 0, plural(n, "null value", "null values")),
        Check::Unique(_) => (n == 0, plural(n, "duplicated key", "duplicated keys")),
        Check::AcceptedValues { .. } => (n == 0, plural(n, "row with a value not accepted", "rows with a value not accepted")),
        Check::Range { .. } => (n == 0, plural(n, "row out of range", "rows out of range")),
        Check::RowCount { min, max } => {
            let count = u64::try_from(n).unwrap_or(0);
            let ok = min.is_none_or(|m| count >= m) && max.is_none_or(|m| count <= m);
            let bounds = match (min, max) {
                (Some(a), Some(b)) => format!(" (expected {a} to {b})"),
                (Some(a), None) => format!(" (expected at least {a})"),
                (None, Some(b)) => format!(" (expected at most {b})"),
                (None, None) => String::new(),
            };
            (ok, format!("{}{bounds}", plural(n, "row", "rows")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_core::ColumnName;

    #[test]
    fn checks_read_as_counting_queries() {
        let status = ColumnName::parse("status").expect("name");
        let (label, sql) = query(&Check::AcceptedValues { column: status, values: vec![Value::from("placed"), Value::from("it's")] });
        assert_eq!(label, "accepted_values(status)");
        assert_eq!(sql, "SELECT COUNT(*) FROM t WHERE \"status\" IS NOT NULL AND \"status\" NOT IN ('placed', 'it''s')");
        assert_eq!(verdict(&Check::RowCount { min: Some(1), max: None }, 0), (false, "0 rows (expected at least 1)".to_owned()));
        assert_eq!(verdict(&Check::RowCount { min: Some(1), max: None }, 1), (true, "1 row (expected at least 1)".to_owned()));
    }
}
