//! Masking: what a caller sees of each column, as Arrow kernels.
//!
//! [`Mask::for_column`] turns a contract column and the strategy the policy
//! gives the caller ([`tessera_contract::Policy::effective`]) into a mask;
//! [`Mask::apply`] masks one column of a batch. The engine applies masks
//! directly above each table scan, so everything above (filters, joins,
//! grouping, functions) only ever sees masked values.
//!
//! Masks keep a column's type: a masked string is a string, a date masked to
//! its year is still a date. A column whose masking cannot be resolved has no
//! mask (`None`): it is not served at all.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, LargeStringBuilder, ListArray, PrimitiveArray, StringBuilder, StringViewBuilder, StructArray, new_null_array,
};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Date32Type, Field, Fields, TimeUnit};
use arrow::error::ArrowError;
use chrono::{DateTime, Datelike, NaiveDate};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tessera_contract::model::{Column, DataType as ColumnType};
use tessera_contract::policy::{NONE, Partial, Policy, Strategy};

/// How one column (or struct field, or list item) is masked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mask {
    /// The value as stored.
    Clear,
    /// Null for every row.
    Null,
    /// `***` for any non-null value.
    Redact,
    /// `someone@example.com` becomes `***@example.com`.
    EmailDomain,
    /// `+44 20 7946 0958` becomes `***0958`.
    Last4,
    /// The hex HMAC-SHA256 of the value under the platform's key.
    Hash,
    /// A date or timestamp becomes the 1st of January of its year (UTC).
    YearOnly,
    /// A struct whose fields are masked one by one, by name. A field of the
    /// data that the contract does not name is nulled.
    Struct(Vec<(String, Mask)>),
    /// A list whose items are masked.
    List(Box<Mask>),
}

impl Mask {
    /// The mask of `column` for a caller whose strategy for a column is
    /// `strategy(column)`. `None` when the column cannot be served: its
    /// classification is unknown to the policy, or the strategy cannot mask
    /// its type.
    pub fn for_column(policy: &Policy, column: &Column, strategy: &dyn Fn(&Column) -> Option<Strategy>) -> Option<Mask> {
        let s = strategy(column)?;
        if !s.applies_to(&column.data_type) {
            return None;
        }
        Some(match s {
            Strategy::Clear => match &column.data_type {
                ColumnType::Struct(fields) => {
                    // A field that cannot be served inside a served struct is nulled:
                    // the struct's type stays, the field's values go.
                    let masks: Vec<(String, Mask)> = fields
                        .iter()
                        .map(|(name, f)| (name.to_string(), Mask::for_column(policy, f, strategy).unwrap_or(Mask::Null)))
                        .collect();
                    if masks.iter().all(|(_, m)| *m == Mask::Clear) { Mask::Clear } else { Mask::Struct(masks) }
                }
                ColumnType::List(item) => match Mask::for_column(policy, item, strategy).unwrap_or(Mask::Null) {
                    Mask::Clear => Mask::Clear,
                    inner => Mask::List(Box::new(inner)),
                },
                _ => Mask::Clear,
            },
            Strategy::Null => Mask::Null,
            Strategy::Redact => Mask::Redact,
            Strategy::Hash => Mask::Hash,
            Strategy::YearOnly => Mask::YearOnly,
            Strategy::Partial => {
                let class = policy.classifications.get(column.classification.as_deref().unwrap_or(NONE))?;
                match class.partial? {
                    Partial::EmailDomain => Mask::EmailDomain,
                    Partial::Last4 => Mask::Last4,
                }
            }
        })
    }

    /// What the caller is told about this mask (`clear`, `partial`, …).
    pub fn describe(&self) -> &'static str {
        match self {
            Mask::Clear => "clear",
            Mask::Null => "null",
            Mask::Redact => "redact",
            Mask::EmailDomain | Mask::Last4 => "partial",
            Mask::Hash => "hash",
            Mask::YearOnly => "year_only",
            Mask::Struct(_) | Mask::List(_) => "per_field",
        }
    }

    /// The field a masked column has: the same name and type; nullable
    /// wherever masking may produce a null.
    pub fn field(&self, field: &Field) -> Field {
        let data_type = match (self, field.data_type()) {
            (Mask::Struct(masks), DataType::Struct(fields)) => {
                DataType::Struct(Fields::from(fields.iter().map(|f| Mask::of_field(masks, f.name()).field(f)).collect::<Vec<_>>()))
            }
            (Mask::List(mask), DataType::List(item)) => DataType::List(Arc::new(mask.field(item))),
            (_, t) => t.clone(),
        };
        let nullable = field.is_nullable() || matches!(self, Mask::Null);
        Field::new(field.name(), data_type, nullable).with_metadata(field.metadata().clone())
    }

    /// Masks one column. `key` is the platform's HMAC key.
    pub fn apply(&self, array: &ArrayRef, key: &HashKey) -> Result<ArrayRef, ArrowError> {
        match self {
            Mask::Clear => Ok(Arc::clone(array)),
            Mask::Null => Ok(new_null_array(array.data_type(), array.len())),
            Mask::Redact => map_strings(array, |_, out| out.push_str("***")),
            Mask::EmailDomain => map_strings(array, email_domain),
            Mask::Last4 => map_strings(array, last4),
            Mask::Hash => map_strings(array, |s, out| key.hash_into(s, out)),
            Mask::YearOnly => year_only(array),
            Mask::Struct(masks) => {
                let s = array.as_struct_opt().ok_or_else(|| mismatch("a struct", array))?;
                let DataType::Struct(fields) = array.data_type() else { return Err(mismatch("a struct", array)) };
                // By name: the data's field order may differ from the contract's
                // (an older version, a reordered struct).
                let masks: Vec<&Mask> = fields.iter().map(|f| Mask::of_field(masks, f.name())).collect();
                let columns = s.columns().iter().zip(&masks).map(|(c, m)| m.apply(c, key)).collect::<Result<Vec<_>, _>>()?;
                let fields: Fields = fields.iter().zip(&masks).map(|(f, m)| m.field(f)).collect::<Vec<_>>().into();
                Ok(Arc::new(StructArray::try_new(fields, columns, s.nulls().cloned())?))
            }
            Mask::List(mask) => {
                let list = array.as_list_opt::<i32>().ok_or_else(|| mismatch("a list", array))?;
                let DataType::List(item) = array.data_type() else { return Err(mismatch("a list", array)) };
                let values = mask.apply(list.values(), key)?;
                Ok(Arc::new(ListArray::try_new(Arc::new(mask.field(item)), list.offsets().clone(), values, list.nulls().cloned())?))
            }
        }
    }
}

impl Mask {
    /// The mask of a struct's field by name; a field the contract does not
    /// name is nulled (fail closed).
    fn of_field<'a>(masks: &'a [(String, Mask)], name: &str) -> &'a Mask {
        masks.iter().find(|(n, _)| n == name).map_or(&Mask::Null, |(_, m)| m)
    }
}

fn mismatch(expected: &str, array: &ArrayRef) -> ArrowError {
    ArrowError::SchemaError(format!("masking expected {expected} column but found {}", array.data_type()))
}

/// A key of the `hash` strategy. The same key gives the same hash for the
/// same value, so joins on hashed columns still match.
///
/// Each domain's products are hashed under a key of their own, derived from
/// the platform's (from the config): [`HashKey::for_domain`]. With one key
/// for everything, a domain's members could write chosen values into a
/// product of theirs, read them hashed, and so reverse another domain's
/// hashes by dictionary. Hashed values therefore join within a domain, not
/// across domains.
#[derive(Clone)]
pub struct HashKey(Hmac<Sha256>);

impl HashKey {
    pub fn new(key: &[u8]) -> Self {
        #[allow(clippy::expect_used)] // HMAC takes keys of any length.
        Self(Hmac::new_from_slice(key).expect("HMAC accepts any key length"))
    }

    /// The key of one domain's products: HMAC-SHA256 of
    /// `tessera masking key for domain <domain>` under this key.
    pub fn for_domain(&self, domain: &str) -> HashKey {
        HashKey::new(&self.0.clone().chain_update(format!("tessera masking key for domain {domain}").as_bytes()).finalize().into_bytes())
    }

    /// The lowercase hex HMAC-SHA256 of `value`.
    pub fn hash(&self, value: &str) -> String {
        let mut out = String::with_capacity(64);
        self.hash_into(value, &mut out);
        out
    }

    /// [`HashKey::hash`], appended to `out` (no allocation per value).
    pub fn hash_into(&self, value: &str, out: &mut String) {
        let digest = self.0.clone().chain_update(value.as_bytes()).finalize().into_bytes();
        let mut hex = [0u8; 64];
        if hex::encode_to_slice(digest, &mut hex).is_ok() {
            out.extend(hex.iter().map(|b| char::from(*b)));
        }
    }
}

impl std::fmt::Debug for HashKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HashKey(..)")
    }
}

/// `someone@example.com` → `***@example.com`; a value without `@` → `***`.
pub fn email_domain(value: &str, out: &mut String) {
    out.push_str("***");
    if let Some((_, domain)) = value.rsplit_once('@')
        && !domain.is_empty()
    {
        out.push('@');
        out.push_str(domain);
    }
}

/// `+44 20 7946 0958` → `***0958`: the last four digits, nothing else. A
/// value with fewer than four digits keeps none.
pub fn last4(value: &str, out: &mut String) {
    out.push_str("***");
    let digits = value.bytes().filter(u8::is_ascii_digit).count();
    if digits >= 4 {
        out.extend(value.chars().filter(char::is_ascii_digit).skip(digits - 4));
    }
}

/// Replaces every non-null string by what `f` writes for it, keeping the
/// column's string type (`Utf8`, `LargeUtf8` or `Utf8View`). One buffer is
/// reused for every value.
fn map_strings(array: &ArrayRef, f: impl Fn(&str, &mut String)) -> Result<ArrayRef, ArrowError> {
    let mut buffer = String::new();
    macro_rules! mapped {
        ($values:expr, $builder:expr) => {{
            let mut out = $builder;
            for v in $values {
                match v {
                    Some(v) => {
                        buffer.clear();
                        f(v, &mut buffer);
                        out.append_value(&buffer);
                    }
                    None => out.append_null(),
                }
            }
            Arc::new(out.finish()) as ArrayRef
        }};
    }
    Ok(match array.data_type() {
        DataType::Utf8 => mapped!(array.as_string::<i32>(), StringBuilder::with_capacity(array.len(), array.len() * 16)),
        DataType::LargeUtf8 => mapped!(array.as_string::<i64>(), LargeStringBuilder::with_capacity(array.len(), array.len() * 16)),
        DataType::Utf8View => mapped!(array.as_string_view(), StringViewBuilder::with_capacity(array.len())),
        _ => return Err(mismatch("a string", array)),
    })
}

/// A date or timestamp as the first instant of its year (UTC), same type.
fn year_only(array: &ArrayRef) -> Result<ArrayRef, ArrowError> {
    match array.data_type() {
        DataType::Date32 => {
            let dates = array.as_primitive::<Date32Type>();
            let out: PrimitiveArray<Date32Type> = dates.iter().map(|d| d.and_then(date32_year_start)).collect();
            Ok(Arc::new(out))
        }
        DataType::Timestamp(unit, _) => {
            let per_micro: (i64, i64) = match unit {
                TimeUnit::Second => (1, 1_000_000),
                TimeUnit::Millisecond => (1, 1_000),
                TimeUnit::Microsecond => (1, 1),
                TimeUnit::Nanosecond => (1_000, 1),
            };
            // Work in microseconds as i64, then back to the column's unit.
            let micros = cast(array, &DataType::Int64)?;
            let out: PrimitiveArray<arrow::datatypes::Int64Type> = micros
                .as_primitive::<arrow::datatypes::Int64Type>()
                .iter()
                .map(|v| {
                    let us = v? / per_micro.0 * per_micro.1;
                    let year = DateTime::from_timestamp_micros(us)?.year();
                    let start = NaiveDate::from_ymd_opt(year, 1, 1)?.and_hms_opt(0, 0, 0)?.and_utc().timestamp_micros();
                    Some(start / per_micro.1 * per_micro.0)
                })
                .collect();
            cast(&(Arc::new(out) as ArrayRef), array.data_type())
        }
        _ => Err(mismatch("a date or timestamp", array)),
    }
}

fn date32_year_start(days: i32) -> Option<i32> {
    let epoch = NaiveDate::from_ymd_opt(1970, 1, 1)?;
    let date = epoch.checked_add_signed(chrono::Duration::days(i64::from(days)))?;
    let start = NaiveDate::from_ymd_opt(date.year(), 1, 1)?;
    i32::try_from((start - epoch).num_days()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Date32Array, Int32Array, StringArray, StringViewArray, TimestampMicrosecondArray};

    fn strings(values: &[Option<&str>]) -> ArrayRef {
        Arc::new(StringArray::from(values.to_vec()))
    }

    fn key() -> HashKey {
        HashKey::new(b"key")
    }

    #[test]
    fn partial_email_keeps_the_domain_only() {
        let out =
            Mask::EmailDomain.apply(&strings(&[Some("ada@example.com"), Some("no-at-sign"), None, Some("a@b@c.org")]), &key()).unwrap();
        assert_eq!(out.as_string::<i32>().iter().collect::<Vec<_>>(), vec![Some("***@example.com"), Some("***"), None, Some("***@c.org")]);
    }

    #[test]
    fn partial_phone_keeps_the_last_four_digits() {
        let out = Mask::Last4.apply(&strings(&[Some("+44 20 7946 0958"), Some("4111 1111 1111 1234"), Some("12"), None]), &key()).unwrap();
        assert_eq!(out.as_string::<i32>().iter().collect::<Vec<_>>(), vec![Some("***0958"), Some("***1234"), Some("***"), None]);
    }

    #[test]
    fn hash_is_the_keyed_hmac_sha256() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        let k = HashKey::new(b"Jefe");
        assert_eq!(k.hash("what do ya want for nothing?"), "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
        let out = Mask::Hash.apply(&strings(&[Some("what do ya want for nothing?"), None]), &k).unwrap();
        let out = out.as_string::<i32>();
        assert_eq!(out.value(0), "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
        assert!(out.is_null(1));
        // A different key gives a different hash: the key is what keeps it from a dictionary attack.
        assert_ne!(HashKey::new(b"other").hash("what do ya want for nothing?"), k.hash("what do ya want for nothing?"));
    }

    #[test]
    fn redact_and_null() {
        let input = strings(&[Some("Ada Lovelace"), None]);
        let out = Mask::Redact.apply(&input, &key()).unwrap();
        assert_eq!(out.as_string::<i32>().iter().collect::<Vec<_>>(), vec![Some("***"), None]);
        let out = Mask::Null.apply(&input, &key()).unwrap();
        assert_eq!(out.null_count(), 2);
        assert_eq!(out.data_type(), &DataType::Utf8);
        let ints: ArrayRef = Arc::new(Int32Array::from(vec![1, 2]));
        assert_eq!(Mask::Null.apply(&ints, &key()).unwrap().null_count(), 2);
    }

    #[test]
    fn string_views_stay_string_views() {
        let input: ArrayRef = Arc::new(StringViewArray::from(vec![Some("ada@example.com")]));
        let out = Mask::EmailDomain.apply(&input, &key()).unwrap();
        assert_eq!(out.data_type(), &DataType::Utf8View);
        assert_eq!(out.as_string_view().value(0), "***@example.com");
    }

    #[test]
    fn year_only_gives_the_first_of_january() {
        // 1990-07-15 is day 7500; 1990-01-01 is day 7305.
        let dates: ArrayRef = Arc::new(Date32Array::from(vec![Some(7500), None, Some(-1)]));
        let out = Mask::YearOnly.apply(&dates, &key()).unwrap();
        // 1969-12-31 (day -1) becomes 1969-01-01, day -365.
        assert_eq!(out.as_primitive::<Date32Type>().iter().collect::<Vec<_>>(), vec![Some(7305), None, Some(-365)]);
        // 2026-11-25T06:30:00Z → 2026-01-01T00:00:00Z (1767225600 s).
        let ts: ArrayRef = Arc::new(TimestampMicrosecondArray::from(vec![Some(1_795_588_200_000_000), None]).with_timezone("UTC"));
        let out = Mask::YearOnly.apply(&ts, &key()).unwrap();
        assert_eq!(out.data_type(), ts.data_type());
        let out = out.as_primitive::<arrow::datatypes::TimestampMicrosecondType>();
        assert_eq!(out.value(0), 1_767_225_600_000_000);
        assert!(out.is_null(1));
    }

    #[test]
    fn struct_fields_are_masked_one_by_one() {
        let street: ArrayRef = strings(&[Some("1 Main St")]);
        let city: ArrayRef = strings(&[Some("London")]);
        let s: ArrayRef = Arc::new(StructArray::from(vec![
            (Arc::new(Field::new("street", DataType::Utf8, false)), street),
            (Arc::new(Field::new("city", DataType::Utf8, true)), city),
        ]));
        // Masks by name, in another order than the data's fields: street is nulled, city kept.
        let out = Mask::Struct(vec![("city".into(), Mask::Clear), ("street".into(), Mask::Null)]).apply(&s, &key()).unwrap();
        let out = out.as_struct();
        assert!(out.column(0).is_null(0));
        assert_eq!(out.column(1).as_string::<i32>().value(0), "London");
        // The nulled field became nullable.
        let DataType::Struct(fields) = out.data_type() else { panic!() };
        assert!(fields[0].is_nullable());
        // A field the masks do not name is nulled.
        let out = Mask::Struct(vec![("street".into(), Mask::Clear)]).apply(&s, &key()).unwrap();
        assert_eq!(out.as_struct().column(0).as_string::<i32>().value(0), "1 Main St");
        assert!(out.as_struct().column(1).is_null(0));
    }

    #[test]
    fn each_domain_hashes_under_its_own_key() {
        // HMAC-SHA256("key", "tessera masking key for domain sales"), then the value under that.
        let master = key();
        let sales = master.for_domain("sales");
        let derived =
            Hmac::<Sha256>::new_from_slice(b"key").unwrap().chain_update(b"tessera masking key for domain sales").finalize().into_bytes();
        assert_eq!(sales.hash("ada"), HashKey::new(&derived).hash("ada"));
        assert_ne!(sales.hash("ada"), master.for_domain("customers").hash("ada"));
        assert_ne!(sales.hash("ada"), master.hash("ada"));
    }
}
