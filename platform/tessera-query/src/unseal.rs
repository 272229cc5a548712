//! Opening a sealed column inside the masked scan, just before its mask.
//!
//! A sealed column is stored as the JSON text of each value with its
//! personal parts as tokens (see `tessera_projection::schema`). Tokens are
//! opened only where the caller's mask needs the value: never for `null`;
//! for `redact`, only whether each key still exists is looked up (a
//! forgotten subject's value is null, not `***`). A token whose key is
//! destroyed opens as nothing, and the whole cell reads null.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, StringBuilder, new_empty_array, new_null_array};
use arrow::datatypes::{DataType, Field, Schema};
use datafusion::common::{DataFusionError, Result};
use serde_json::Value;
use tessera_contract::model::Column;
use tessera_store::Opener;
use tessera_store::keys::tokens_in;

use crate::mask::{HashKey, Mask};

/// The cells of a sealed column, parsed (null where the cell is null or unreadable).
fn cells(array: &ArrayRef) -> Result<Vec<Option<Value>>> {
    let binary = arrow::compute::cast(array, &DataType::Binary)?;
    let binary = binary.as_binary_opt::<i32>().ok_or_else(|| DataFusionError::Internal("a sealed column is not binary".into()))?;
    Ok((0..binary.len()).map(|i| if binary.is_null(i) { None } else { serde_json::from_slice(binary.value(i)).ok() }).collect())
}

/// Opens and masks one sealed column of a batch. `served` is the column's
/// field as the caller sees it.
pub async fn column(array: &ArrayRef, spec: &Column, mask: &Mask, served: &Field, key: &HashKey, opener: &mut Opener) -> Result<ArrayRef> {
    if *mask == Mask::Null {
        return Ok(new_null_array(served.data_type(), array.len()));
    }
    let mut cells = cells(array)?;
    let tokens: Vec<_> = cells.iter().flatten().flat_map(tokens_in).collect();
    opener.prepare(tokens.iter()).await.map_err(|e| DataFusionError::External(Box::new(e)))?;
    if *mask == Mask::Redact {
        let mut out = StringBuilder::with_capacity(cells.len(), cells.len() * 3);
        for cell in &cells {
            match cell {
                Some(v) if tokens_in(v).iter().all(|t| opener.alive(t)) => out.append_value("***"),
                _ => out.append_null(),
            }
        }
        return Ok(Arc::new(out.finish()));
    }
    let rows: Vec<Value> = cells
        .iter_mut()
        .map(|cell| {
            let opened = cell.take().and_then(|mut v| opener.open_prepared(&mut v).then_some(v));
            let typed = opened.and_then(|v| tessera_projection::values::opened_cell(v, spec).ok()).unwrap_or(Value::Null);
            Value::Object([("v".to_owned(), typed)].into_iter().collect())
        })
        .collect();
    let logical = tessera_projection::schema::logical_field("v", spec).with_nullable(true);
    let opened = decode(&logical, &rows)?;
    Ok(mask.apply(&opened, key)?)
}

/// JSON cells (`{"v": ...}` each) as one array of `field`'s type.
fn decode(field: &Field, rows: &[Value]) -> Result<ArrayRef> {
    if rows.is_empty() {
        return Ok(new_empty_array(field.data_type()));
    }
    match tessera_projection::values::json_batch(&Schema::new(vec![field.clone()]), rows)? {
        Some(batch) => Ok(Arc::clone(batch.column(0))),
        None => Ok(new_empty_array(field.data_type())),
    }
}
