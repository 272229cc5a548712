//! Event values into table cells: each checked against its column's type, so
//! that a value that does not fit is a located reason for the dead-letter
//! list, never a failed commit or a silently changed value.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::Schema;
use arrow::error::ArrowError;
use serde_json::{Map, Value};
use tessera_contract::model::{Column, DataType, EventField, Source};
use tessera_store::StoredEvent;

/// The value of a source for an event: `None` when the payload or the
/// metadata does not have it.
pub fn source_value(source: &Source, event: &StoredEvent) -> Option<Value> {
    match source {
        Source::Payload(path) => path.get(&event.payload).cloned(),
        Source::Metadata(key) => event.metadata.get(key).cloned(),
        Source::Literal(v) => Some(v.clone()),
        Source::Event(field) => Some(match field {
            EventField::Id => Value::from(event.id.to_string()),
            EventField::Type => Value::from(event.event_type.clone()),
            EventField::Stream => Value::from(event.stream.clone()),
            EventField::Version => Value::from(event.version),
            EventField::Position => Value::from(event.position),
            EventField::RecordedAt => Value::from(event.recorded_at.clone()),
            EventField::SchemaVersion => Value::from(event.schema_version),
        }),
    }
}

/// Checks a value against a column and returns it in the form the Arrow
/// JSON decoder reads for the column's stored type; `Err` says why it does
/// not fit. A sealed column's cell is the hex of its JSON text (what the
/// decoder reads as `binary`), tokens and all: sealed parts are checked at
/// append, and again, opened, by readers ([`opened_cell`]).
pub fn cell(value: Option<Value>, column: &Column) -> Result<Value, String> {
    match value {
        None | Some(Value::Null) if column.required => Err("is required but has no value".into()),
        None | Some(Value::Null) => Ok(Value::Null),
        Some(v) if tessera_contract::seal::is_sealed(column) => Ok(Value::String(hex::encode(sealed_json_text(v, column)?))),
        Some(v) => typed(v, &column.data_type),
    }
}

/// The JSON text a sealed column stores for `v` (not null), checked
/// against the column where it is not a token.
pub(crate) fn sealed_json_text(v: Value, column: &Column) -> Result<String, String> {
    Ok(with_tokens(v, column)?.to_string())
}

/// A sealed column's value, opened, in the form the Arrow JSON decoder
/// reads for the column's type in the contract.
pub fn opened_cell(value: Value, column: &Column) -> Result<Value, String> {
    match value {
        Value::Null => Ok(Value::Null),
        v => typed(v, &column.data_type),
    }
}

/// The JSON text of a sealed column's stored cell (hex, as [`cell`] makes it).
pub fn sealed_json(hex_text: &str) -> Option<Value> {
    serde_json::from_slice(&hex::decode(hex_text).ok()?).ok()
}

fn is_token(v: &Value) -> bool {
    v.as_str().is_some_and(|s| s.starts_with("tsr1."))
}

/// `v` checked against `column`, where any part may be a token.
fn with_tokens(v: Value, column: &Column) -> Result<Value, String> {
    if is_token(&v) {
        return Ok(v);
    }
    match &column.data_type {
        DataType::Struct(columns) => {
            let Value::Object(mut object) = v else { return Err(format!("{} does not fit type struct", describe(&v))) };
            let mut out = Map::new();
            for (name, column) in columns {
                let value = match object.remove(name.as_str()) {
                    None | Some(Value::Null) if column.required => Err("is required but has no value".to_owned()),
                    None | Some(Value::Null) => Ok(Value::Null),
                    Some(x) => with_tokens(x, column),
                };
                out.insert(name.to_string(), value.map_err(|e| format!("field `{name}` {e}"))?);
            }
            Ok(Value::Object(out))
        }
        DataType::List(item) => {
            let Value::Array(items) = v else { return Err(format!("{} does not fit type list", describe(&v))) };
            items
                .into_iter()
                .enumerate()
                .map(|(i, x)| match x {
                    Value::Null if item.required => Err(format!("item {i} is required but has no value")),
                    Value::Null => Ok(Value::Null),
                    x => with_tokens(x, item).map_err(|e| format!("item {i} {e}")),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Value::Array)
        }
        t => typed(v, t),
    }
}

fn typed(v: Value, t: &DataType) -> Result<Value, String> {
    let wrong = |v: &Value| Err(format!("{} does not fit type {}", describe(v), type_name(t)));
    match t {
        DataType::String => match v {
            Value::String(_) => Ok(v),
            other => wrong(&other),
        },
        DataType::Boolean => match v {
            Value::Bool(_) => Ok(v),
            other => wrong(&other),
        },
        DataType::Int32 => match v.as_i64().and_then(|n| i32::try_from(n).ok()) {
            Some(n) => Ok(Value::from(n)),
            None => wrong(&v),
        },
        DataType::Int64 => match v.as_i64() {
            Some(n) => Ok(Value::from(n)),
            None => wrong(&v),
        },
        DataType::Float64 => match v.as_f64() {
            Some(_) if v.is_number() => Ok(v),
            _ => wrong(&v),
        },
        DataType::Decimal { precision, scale } => match &v {
            Value::Number(_) | Value::String(_) => decimal_text(&v, *precision, *scale).map(Value::String),
            other => wrong(other),
        },
        DataType::Date => match v.as_str().and_then(date) {
            Some(d) => Ok(Value::from(d.format("%Y-%m-%d").to_string())),
            None => Err(format!("{} is not a date (YYYY-MM-DD, years 1 to 9999)", describe(&v))),
        },
        DataType::Timestamp => match v.as_str().and_then(timestamp) {
            Some(t) => Ok(Value::from(t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))),
            None => Err(format!("{} is not an RFC 3339 timestamp (years 1 to 9999, no leap second)", describe(&v))),
        },
        DataType::Struct(columns) => {
            let Value::Object(mut object) = v else { return wrong(&v) };
            let mut out = Map::new();
            for (name, column) in columns {
                let value = cell(object.remove(name.as_str()), column).map_err(|e| format!("field `{name}` {e}"))?;
                out.insert(name.to_string(), value);
            }
            Ok(Value::Object(out))
        }
        DataType::List(item) => {
            let Value::Array(items) = v else { return wrong(&v) };
            items
                .into_iter()
                .enumerate()
                .map(|(i, x)| cell(Some(x), item).map_err(|e| format!("item {i} {e}")))
                .collect::<Result<Vec<_>, _>>()
                .map(Value::Array)
        }
    }
}

/// JSON rows as one Arrow batch of `schema` (`None` for no rows).
///
/// The rows are written out as JSON text for Arrow's JSON decoder, rather
/// than handed to it as values: numbers keep the exact text they were sent
/// with (serde_json's `arbitrary_precision`), which the decoder's value
/// path does not understand.
pub fn json_batch<T: serde::Serialize>(schema: &Schema, rows: &[T]) -> Result<Option<RecordBatch>, ArrowError> {
    let mut text = Vec::with_capacity(rows.len() * 64);
    for row in rows {
        serde_json::to_writer(&mut text, row).map_err(|e| ArrowError::JsonError(e.to_string()))?;
        text.push(b'\n');
    }
    let mut decoder = arrow::json::ReaderBuilder::new(Arc::new(schema.clone())).with_batch_size(rows.len().max(1)).build_decoder()?;
    let mut rest = text.as_slice();
    while !rest.is_empty() {
        let read = decoder.decode(rest)?;
        if read == 0 {
            break;
        }
        rest = &rest[read..];
    }
    decoder.flush()
}

/// A date as a column takes it: exactly `YYYY-MM-DD`, in years 1 to 9999
/// (what Arrow and Parquet readers read back).
pub(crate) fn date(text: &str) -> Option<chrono::NaiveDate> {
    let d = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d").ok()?;
    ((1..=9999).contains(&chrono::Datelike::year(&d)) && d.format("%Y-%m-%d").to_string() == text).then_some(d)
}

/// A timestamp as a column takes it: RFC 3339, in UTC years 1 to 9999, not
/// a leap second (`…:60`, which no Arrow or Parquet timestamp holds: read
/// back it would be the next second, a different key).
pub(crate) fn timestamp(text: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    let t = chrono::DateTime::parse_from_rfc3339(text).ok()?.with_timezone(&chrono::Utc);
    ((1..=9999).contains(&chrono::Datelike::year(&t)) && chrono::Timelike::nanosecond(&t) < 1_000_000_000).then_some(t)
}

/// The canonical text of a decimal value (a JSON number or a string) that
/// fits `decimal(precision, scale)`, or why it does not. A number written
/// with an exponent (`1.5E7`, as many JSON writers print doubles) is
/// expanded exactly; a string must be plain digits. The text is canonical
/// (no leading zeros, no trailing zeros after the point, no `-0`), so that
/// equal values are equal keys.
pub(crate) fn decimal_text(v: &Value, precision: u8, scale: u8) -> Result<String, String> {
    let text = match v {
        Value::Number(n) => {
            let written = n.to_string();
            if written.contains(['e', 'E']) {
                expand_exponent(&written).ok_or_else(|| format!("`{written}` is beyond any decimal(38): its exponent is too large"))?
            } else {
                written
            }
        }
        Value::String(s) => return decimal_string(s, precision, scale),
        other => return Err(format!("{} is not a decimal number", describe(other))),
    };
    decimal_string(&text, precision, scale)
}

/// [`decimal_text`] of a string value.
pub(crate) fn decimal_string(text: &str, precision: u8, scale: u8) -> Result<String, String> {
    decimal_fits(text, precision, scale)?;
    Ok(canonical_decimal(text))
}

/// `-1.25e3` as `-1250`: the digits shifted by the exponent, exactly.
/// `None` for text that is not a number with an exponent, or an exponent
/// beyond ±100 (no decimal(38) holds it).
fn expand_exponent(text: &str) -> Option<String> {
    let (sign, rest) = match text.strip_prefix('-') {
        Some(r) => ("-", r),
        None => ("", text),
    };
    let (mantissa, exponent) = rest.split_once(['e', 'E'])?;
    let exponent: i64 = exponent.strip_prefix('+').unwrap_or(exponent).parse().ok().filter(|e: &i64| e.abs() <= 100)?;
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if int.is_empty() || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    let digits = format!("{int}{frac}");
    let point = i64::try_from(int.len()).ok()? + exponent;
    let len = i64::try_from(digits.len()).ok()?;
    let plain = if point <= 0 {
        format!("0.{}{digits}", "0".repeat(usize::try_from(-point).ok()?))
    } else if point >= len {
        format!("{digits}{}", "0".repeat(usize::try_from(point - len).ok()?))
    } else {
        let at = usize::try_from(point).ok()?;
        format!("{}.{}", &digits[..at], &digits[at..])
    };
    Some(format!("{sign}{plain}"))
}

/// Plain decimal text without leading zeros, trailing zeros after the
/// point, or a negative zero (the text has passed [`decimal_fits`]).
fn canonical_decimal(text: &str) -> String {
    let (negative, digits) = match text.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, text),
    };
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    let int = match int.trim_start_matches('0') {
        "" => "0",
        i => i,
    };
    let frac = frac.trim_end_matches('0');
    let sign = if negative && (int != "0" || !frac.is_empty()) { "-" } else { "" };
    if frac.is_empty() { format!("{sign}{int}") } else { format!("{sign}{int}.{frac}") }
}

/// A decimal's text fits `decimal(precision, scale)` when it has at most
/// `precision - scale` digits before the point and at most `scale` after it
/// (a value is never rounded into a column).
fn decimal_fits(text: &str, precision: u8, scale: u8) -> Result<(), String> {
    let digits = text.strip_prefix('-').unwrap_or(text);
    if digits.contains(['e', 'E']) {
        return Err(format!("`{text}` is written with an exponent; a decimal column takes plain digits"));
    }
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    if int.is_empty() || !int.bytes().all(|b| b.is_ascii_digit()) || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("`{text}` is not a decimal number"));
    }
    let int = int.trim_start_matches('0');
    let frac = frac.trim_end_matches('0');
    if frac.len() > usize::from(scale) {
        return Err(format!("`{text}` has more than {scale} digits after the point of decimal({precision},{scale})"));
    }
    if int.len() > usize::from(precision - scale) {
        return Err(format!("`{text}` has more than {} digits before the point of decimal({precision},{scale})", precision - scale));
    }
    Ok(())
}

fn describe(v: &Value) -> String {
    let text = v.to_string();
    if text.chars().count() > 40 { format!("{}…", text.chars().take(40).collect::<String>()) } else { text }
}

fn type_name(t: &DataType) -> String {
    match t {
        DataType::String => "string".into(),
        DataType::Boolean => "boolean".into(),
        DataType::Int32 => "int32".into(),
        DataType::Int64 => "int64".into(),
        DataType::Float64 => "float64".into(),
        DataType::Decimal { precision, scale } => format!("decimal({precision},{scale})"),
        DataType::Date => "date".into(),
        DataType::Timestamp => "timestamp".into(),
        DataType::Struct(_) => "struct".into(),
        DataType::List(_) => "list".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn col(t: DataType, required: bool) -> Column {
        Column { data_type: t, required, description: None, classification: None, justification: None, masking: Default::default() }
    }

    #[test]
    fn scalars_fit_or_say_why_not() {
        assert_eq!(cell(Some(json!(7)), &col(DataType::Int32, true)), Ok(json!(7)));
        assert!(cell(Some(json!(3_000_000_000i64)), &col(DataType::Int32, true)).is_err_and(|e| e.contains("int32")));
        assert!(cell(Some(json!("7")), &col(DataType::Int64, false)).is_err());
        assert_eq!(cell(None, &col(DataType::String, false)), Ok(Value::Null));
        assert_eq!(cell(None, &col(DataType::String, true)), Err("is required but has no value".into()));
        assert_eq!(
            cell(Some(json!("2025-03-01T10:00:00+01:00")), &col(DataType::Timestamp, true)),
            Ok(json!("2025-03-01T09:00:00.000000Z"))
        );
        assert!(cell(Some(json!("yesterday")), &col(DataType::Timestamp, true)).is_err());
        assert!(cell(Some(json!("2025-02-30")), &col(DataType::Date, true)).is_err());
        // What Arrow reads back: four-digit years, canonical text.
        assert!(cell(Some(json!("99-12-31")), &col(DataType::Date, true)).is_err());
        assert!(cell(Some(json!(" 2025-03-01")), &col(DataType::Date, true)).is_err());
        assert_eq!(cell(Some(json!("0099-12-31")), &col(DataType::Date, true)), Ok(json!("0099-12-31")));
        assert!(cell(Some(json!("9999-12-31T23:00:00-02:00")), &col(DataType::Timestamp, true)).is_err(), "year 10000 in UTC");
        // A leap second would be read back as the next second: another key.
        assert!(cell(Some(json!("2026-01-01T10:00:60Z")), &col(DataType::Timestamp, true)).is_err_and(|e| e.contains("no leap second")));
    }

    #[test]
    fn decimals_are_never_rounded() {
        let price = col(DataType::Decimal { precision: 6, scale: 2 }, true);
        assert_eq!(cell(Some(json!(1234.5)), &price), Ok(json!("1234.5")));
        // Canonical text: equal values are equal keys.
        assert_eq!(cell(Some(json!("-0012.50")), &price), Ok(json!("-12.5")));
        assert_eq!(cell(Some(json!("-0.00")), &price), Ok(json!("0")));
        // A number written with an exponent is expanded exactly, never through a float.
        let number = |t: &str| serde_json::from_str::<Value>(t).expect("number");
        assert_eq!(cell(Some(number("1.23456789E3")), &col(DataType::Decimal { precision: 12, scale: 8 }, true)), Ok(json!("1234.56789")));
        assert_eq!(cell(Some(number("-25e-3")), &price), Err("`-0.025` has more than 2 digits after the point of decimal(6,2)".into()));
        assert_eq!(cell(Some(number("5E2")), &price), Ok(json!("500")));
        assert!(cell(Some(number("1e400")), &price).is_err_and(|e| e.contains("exponent is too large")));
        assert!(cell(Some(json!(1.005)), &price).is_err_and(|e| e.contains("after the point")));
        assert!(cell(Some(json!(12345)), &price).is_err_and(|e| e.contains("before the point")));
        assert!(cell(Some(json!("1e3")), &price).is_err_and(|e| e.contains("exponent")));
        assert!(cell(Some(json!("12a")), &price).is_err());
    }

    #[test]
    fn structs_and_lists_locate_the_value_that_does_not_fit() {
        let mut fields = indexmap::IndexMap::new();
        fields.insert(tessera_core::ColumnName::parse("city").expect("name"), col(DataType::String, true));
        let address = col(DataType::Struct(fields), false);
        assert_eq!(cell(Some(json!({"city": "Lyon", "extra": 1})), &address), Ok(json!({"city": "Lyon"})));
        assert_eq!(cell(Some(json!({})), &address), Err("field `city` is required but has no value".into()));
        let list = col(DataType::List(Box::new(col(DataType::Int64, true))), false);
        assert_eq!(cell(Some(json!([1, 2])), &list), Ok(json!([1, 2])));
        assert!(cell(Some(json!([1, "x"])), &list).is_err_and(|e| e.starts_with("item 1")));
    }
}
