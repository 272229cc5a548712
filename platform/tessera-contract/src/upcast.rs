//! Upcasting: turn a payload written at an older schema version into the
//! current one by applying the contract's upcasters in order.
//!
//! Pure functions on JSON values; the event store calls them on read, so the
//! log itself is never rewritten. Each step is total on objects: a missing
//! field is left alone (except by `default`, which adds it), and a value of
//! the wrong kind is an error naming the step, never a silent change.

use serde_json::{Number, Value};

use crate::model::{CastType, EventType, UpcastStep};

/// Why a payload could not be upcast.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum UpcastError {
    #[error("schema version {version} is newer than the contract's current version {current}")]
    FromTheFuture { version: u32, current: u32 },
    #[error("schema version 0 does not exist; versions start at 1")]
    VersionZero,
    #[error("no upcaster from version {version}")]
    MissingUpcaster { version: u32 },
    #[error("the payload is not a JSON object")]
    NotAnObject,
    #[error("upcaster from version {version}, step #{step}: {reason}")]
    Step { version: u32, step: usize, reason: String },
}

/// Upcasts `payload` from `version` to the event's current version.
pub fn upcast(event: &EventType, version: u32, mut payload: Value) -> Result<Value, UpcastError> {
    if version == 0 {
        return Err(UpcastError::VersionZero);
    }
    if version > event.version {
        return Err(UpcastError::FromTheFuture { version, current: event.version });
    }
    if !payload.is_object() {
        return Err(UpcastError::NotAnObject);
    }
    for v in version..event.version {
        let upcaster = event.upcasters.iter().find(|u| u.from == v).ok_or(UpcastError::MissingUpcaster { version: v })?;
        for (i, step) in upcaster.steps.iter().enumerate() {
            apply(step, &mut payload).map_err(|reason| UpcastError::Step { version: v, step: i + 1, reason })?;
        }
    }
    Ok(payload)
}

fn apply(step: &UpcastStep, payload: &mut Value) -> Result<(), String> {
    match step {
        UpcastStep::Move { from, to } => {
            if let Some(value) = from.take(payload) {
                to.put(payload, value)?;
            }
        }
        UpcastStep::Default { field, value } => {
            if field.get(payload).is_none_or(Value::is_null) {
                field.put(payload, value.clone())?;
            }
        }
        UpcastStep::Remove { field } => {
            field.take(payload);
        }
        UpcastStep::Map { field, values } => {
            if let Some(slot) = field.get_mut(payload) {
                let key = match slot {
                    Value::String(s) => Some(s.clone()),
                    Value::Number(n) => Some(n.to_string()),
                    Value::Bool(b) => Some(b.to_string()),
                    _ => None,
                };
                if let Some(replacement) = key.and_then(|k| values.get(&k)) {
                    *slot = replacement.clone();
                }
            }
        }
        UpcastStep::Scale { field, by } => {
            if let Some(slot) = field.get_mut(payload) {
                match slot {
                    Value::Null => {}
                    Value::Number(n) => {
                        let scaled = n.as_f64().map(|x| x * by).ok_or_else(|| format!("`{field}` is not a finite number"))?;
                        // Keep integers integral when the factor allows it.
                        let rounded = (scaled * 1e9).round() / 1e9;
                        *slot = if rounded.fract() == 0.0 && rounded.abs() < 9.0e15 {
                            Value::Number(Number::from(rounded as i64))
                        } else {
                            Number::from_f64(rounded).map(Value::Number).ok_or_else(|| format!("scaling `{field}` overflows"))?
                        };
                    }
                    other => return Err(format!("`{field}` is {}, not a number", kind(other))),
                }
            }
        }
        UpcastStep::Cast { field, to } => {
            if let Some(slot) = field.get_mut(payload)
                && !slot.is_null()
            {
                *slot = cast(slot, *to).ok_or_else(|| format!("cannot cast `{field}` ({}) to {}", kind(slot), cast_name(*to)))?;
            }
        }
    }
    Ok(())
}

fn cast(v: &Value, to: CastType) -> Option<Value> {
    match (to, v) {
        (CastType::String, Value::String(_)) => Some(v.clone()),
        (CastType::String, Value::Number(n)) => Some(Value::String(n.to_string())),
        (CastType::String, Value::Bool(b)) => Some(Value::String(b.to_string())),
        (CastType::Integer, Value::Number(n)) if n.is_i64() || n.is_u64() => Some(v.clone()),
        (CastType::Integer, Value::Number(n)) => n.as_f64().filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15).map(|f| Value::from(f as i64)),
        (CastType::Integer, Value::String(s)) => s.trim().parse::<i64>().ok().map(Value::from),
        (CastType::Integer, Value::Bool(b)) => Some(Value::from(i64::from(*b))),
        (CastType::Number, Value::Number(_)) => Some(v.clone()),
        (CastType::Number, Value::String(s)) => s.trim().parse::<f64>().ok().and_then(Number::from_f64).map(Value::Number),
        (CastType::Boolean, Value::Bool(_)) => Some(v.clone()),
        (CastType::Boolean, Value::String(s)) => match s.trim().to_lowercase().as_str() {
            "true" | "yes" | "1" => Some(Value::Bool(true)),
            "false" | "no" | "0" => Some(Value::Bool(false)),
            _ => None,
        },
        (CastType::Boolean, Value::Number(n)) => match n.as_i64() {
            Some(0) => Some(Value::Bool(false)),
            Some(1) => Some(Value::Bool(true)),
            _ => None,
        },
        _ => None,
    }
}

fn cast_name(t: CastType) -> &'static str {
    match t {
        CastType::String => "string",
        CastType::Integer => "integer",
        CastType::Number => "number",
        CastType::Boolean => "boolean",
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{FieldPath, Upcaster};
    use serde_json::json;

    fn p(s: &str) -> FieldPath {
        FieldPath::parse(s).unwrap()
    }

    fn event(steps: Vec<Vec<UpcastStep>>) -> EventType {
        EventType {
            description: None,
            version: steps.len() as u32 + 1,
            subject: None,
            schema: json!({"type": "object"}),
            upcasters: steps.into_iter().enumerate().map(|(i, steps)| Upcaster { from: i as u32 + 1, description: None, steps }).collect(),
        }
    }

    #[test]
    fn applies_each_version_in_turn() {
        let e = event(vec![
            vec![
                UpcastStep::Move { from: p("customer_id"), to: p("customer.id") },
                UpcastStep::Default { field: p("currency"), value: json!("EUR") },
            ],
            vec![
                UpcastStep::Scale { field: p("total"), by: 0.01 },
                UpcastStep::Map { field: p("status"), values: json!({"P": "placed"}).as_object().unwrap().clone() },
                UpcastStep::Cast { field: p("qty"), to: CastType::Integer },
                UpcastStep::Remove { field: p("legacy") },
            ],
        ]);
        let v1 = json!({"customer_id": "C1", "total": 1250, "status": "P", "qty": "3", "legacy": true});
        assert_eq!(
            upcast(&e, 1, v1).unwrap(),
            json!({"total": 12.5, "status": "placed", "qty": 3, "customer": {"id": "C1"}, "currency": "EUR"})
        );
        // A version-2 payload only gets the second upcaster.
        let v2 = json!({"customer": {"id": "C1"}, "currency": "USD", "total": 100});
        assert_eq!(upcast(&e, 2, v2).unwrap(), json!({"customer": {"id": "C1"}, "currency": "USD", "total": 1}));
        // The current version is left as it is.
        assert_eq!(upcast(&e, 3, json!({"x": 1})).unwrap(), json!({"x": 1}));
    }

    #[test]
    fn paths_write_everything_or_nothing() {
        let mut v = json!({"a": 1});
        assert!(p("a.b.c").put(&mut v, json!(2)).is_err());
        assert_eq!(v, json!({"a": 1}));
        assert!(p("x").put(&mut json!([1]), json!(2)).is_err());
        let mut v = json!({});
        p("x.y").put(&mut v, json!(1)).unwrap();
        assert_eq!(v, json!({"x": {"y": 1}}));
        assert_eq!(p("x.y").take(&mut v), Some(json!(1)));
        assert_eq!(v, json!({"x": {}}));
    }

    #[test]
    fn refuses_what_it_cannot_do() {
        let e = event(vec![vec![UpcastStep::Scale { field: p("total"), by: 2.0 }]]);
        assert_eq!(upcast(&e, 3, json!({})), Err(UpcastError::FromTheFuture { version: 3, current: 2 }));
        assert_eq!(upcast(&e, 0, json!({})), Err(UpcastError::VersionZero));
        assert_eq!(upcast(&e, 1, json!([1])), Err(UpcastError::NotAnObject));
        assert!(matches!(upcast(&e, 1, json!({"total": "x"})), Err(UpcastError::Step { version: 1, step: 1, .. })));
    }
}
