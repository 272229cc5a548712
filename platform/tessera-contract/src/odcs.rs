//! Export to the Open Data Contract Standard (ODCS) v3.1.0.
//!
//! Everything ODCS can say is said in its own terms (schema objects and
//! properties with logical and physical types, classification, primary
//! keys, quality rules, team, support, SLA). What it cannot say (events,
//! upcasters, projection rules, masking overrides, justifications) goes into
//! `customProperties` under `tessera*` names: nothing is dropped.

use serde_json::{Map, Value, json};
use yaml_rust2::{Yaml, YamlEmitter, yaml::Hash};

use crate::model::{Check, Column, Contract, DataType, Projection, Rule, Source, Table, UpcastStep};

/// The contract as an ODCS v3.1.0 document (a JSON value).
pub fn export(contract: &Contract) -> Value {
    let mut doc = Map::new();
    doc.insert("apiVersion".into(), json!("v3.1.0"));
    doc.insert("kind".into(), json!("DataContract"));
    doc.insert("id".into(), json!(format!("{}.{}", contract.domain, contract.name)));
    doc.insert("name".into(), json!(contract.title));
    doc.insert("version".into(), json!(contract.version.to_string()));
    doc.insert("status".into(), json!(contract.status.as_str()));
    doc.insert("domain".into(), json!(contract.domain.as_str()));
    if !contract.tags.is_empty() {
        doc.insert("tags".into(), json!(contract.tags));
    }
    if let Some(d) = &contract.description {
        doc.insert("description".into(), json!({ "purpose": d.trim_end() }));
    }
    doc.insert("team".into(), json!({ "name": contract.owner.team, "members": [{ "username": contract.owner.contact, "role": "owner" }] }));
    let contact = &contract.owner.contact;
    let (tool, url) = if contact.contains('@') && !contact.contains("://") {
        ("email", format!("mailto:{contact}"))
    } else if contact.starts_with("http") {
        ("other", contact.clone())
    } else {
        ("other", String::new())
    };
    let mut support = json!({ "channel": contact, "tool": tool, "scope": "issues" });
    if !url.is_empty() {
        support["url"] = json!(url);
    }
    doc.insert("support".into(), json!([support]));
    if let Some(f) = &contract.freshness {
        let (value, unit) = f.text.split_at(f.text.len() - 1);
        doc.insert(
            "slaProperties".into(),
            json!([{ "property": "latency", "value": value.parse::<u64>().unwrap_or(f.seconds), "unit": unit,
                     "description": "Maximum lag of the tables behind the newest event (freshness)" }]),
        );
    }
    let schema: Vec<Value> = contract.tables.iter().map(|(name, t)| table(name.as_str(), t)).collect();
    doc.insert("schema".into(), Value::Array(schema));

    let events: Map<String, Value> = contract
        .events
        .iter()
        .map(|(name, e)| {
            let upcasters: Vec<Value> = e
                .upcasters
                .iter()
                .map(|u| {
                    let mut o = json!({ "from": u.from, "steps": u.steps.iter().map(step).collect::<Vec<_>>() });
                    if let Some(d) = &u.description {
                        o["description"] = json!(d);
                    }
                    o
                })
                .collect();
            let mut o = json!({ "version": e.version, "schema": e.schema });
            if let Some(d) = &e.description {
                o["description"] = json!(d);
            }
            if let Some(s) = &e.subject {
                o["subject"] = json!(s.to_string());
            }
            if !upcasters.is_empty() {
                o["upcasters"] = Value::Array(upcasters);
            }
            (name.to_string(), o)
        })
        .collect();
    let mut custom = vec![json!({ "property": "tesseraProduct", "value": contract.product().to_string() })];
    if !events.is_empty() {
        custom.push(json!({ "property": "tesseraEvents", "value": events, "description": "Event types, payload schemas (JSON Schema 2020-12) and upcasters" }));
    }
    doc.insert("customProperties".into(), Value::Array(custom));
    Value::Object(doc)
}

fn table(name: &str, t: &Table) -> Value {
    let key: &[_] = match &t.projection {
        Projection::Upsert { key, .. } => key,
        _ => &[],
    };
    let properties: Vec<Value> = t
        .columns
        .iter()
        .map(|(col_name, c)| {
            let mut p = property(col_name.as_str(), c);
            if let Some(i) = key.iter().position(|k| k == col_name) {
                p["primaryKey"] = json!(true);
                p["primaryKeyPosition"] = json!(i + 1);
            }
            let quality: Vec<Value> = t.checks.iter().filter_map(|check| column_quality(name, col_name.as_str(), check)).collect();
            if !quality.is_empty() {
                p["quality"] = Value::Array(quality);
            }
            if t.checks.iter().any(|c| matches!(c, Check::Unique(cols) if cols.len() == 1 && cols[0] == *col_name)) {
                p["unique"] = json!(true);
            }
            p
        })
        .collect();
    let mut o = json!({
        "name": name,
        "physicalName": name,
        "physicalType": "table",
        "logicalType": "object",
        "properties": properties,
    });
    if let Some(d) = &t.description {
        o["description"] = json!(d.trim_end());
    }
    let quality: Vec<Value> = t.checks.iter().filter_map(|c| table_quality(name, c)).collect();
    if !quality.is_empty() {
        o["quality"] = Value::Array(quality);
    }
    o["customProperties"] = json!([{ "property": "tesseraProjection", "value": projection(&t.projection) }]);
    o
}

fn property(name: &str, c: &Column) -> Value {
    let (logical, physical) = types(&c.data_type);
    let mut p = json!({ "name": name, "logicalType": logical, "physicalType": physical, "required": c.required });
    if let Some(d) = &c.description {
        p["description"] = json!(d);
    }
    if let Some(cl) = &c.classification {
        p["classification"] = json!(cl);
    }
    match &c.data_type {
        DataType::Struct(fields) => {
            p["properties"] = Value::Array(fields.iter().map(|(n, f)| property(n.as_str(), f)).collect());
        }
        DataType::List(item) => {
            let mut i = property("item", item);
            if let Some(o) = i.as_object_mut() {
                o.remove("name");
            }
            p["items"] = i;
        }
        _ => {}
    }
    let mut custom = Vec::new();
    if !c.masking.is_empty() {
        let m: Map<String, Value> = c.masking.iter().map(|(r, s)| (r.to_string(), json!(s.as_str()))).collect();
        custom.push(
            json!({ "property": "tesseraMasking", "value": m, "description": "Masking tightened beyond the global policy, per role" }),
        );
    }
    if let Some(j) = &c.justification {
        custom.push(json!({ "property": "tesseraJustification", "value": j }));
    }
    if !custom.is_empty() {
        p["customProperties"] = Value::Array(custom);
    }
    p
}

fn types(t: &DataType) -> (&'static str, String) {
    let logical = match t {
        DataType::String => "string",
        DataType::Boolean => "boolean",
        DataType::Int32 | DataType::Int64 => "integer",
        DataType::Float64 | DataType::Decimal { .. } => "number",
        DataType::Date => "date",
        DataType::Timestamp => "timestamp",
        DataType::Struct(_) => "object",
        DataType::List(_) => "array",
    };
    (logical, t.to_string())
}

fn column_quality(table: &str, column: &str, check: &Check) -> Option<Value> {
    match check {
        Check::NotNull(c) if c.as_str() == column => Some(json!({ "metric": "nullValues", "mustBe": 0, "dimension": "completeness" })),
        Check::AcceptedValues { column: c, values } if c.as_str() == column => Some(json!({
            "metric": "invalidValues", "mustBe": 0, "arguments": { "validValues": values }, "dimension": "conformity"
        })),
        Check::Range { column: c, min, max } if c.as_str() == column => {
            let mut outside = Vec::new();
            if let Some(lo) = min {
                outside.push(format!("{column} < {lo}"));
            }
            if let Some(hi) = max {
                outside.push(format!("{column} > {hi}"));
            }
            Some(json!({
                "type": "sql", "query": format!("SELECT COUNT(*) FROM {table} WHERE {}", outside.join(" OR ")),
                "mustBe": 0, "dimension": "accuracy", "name": format!("{column} in range")
            }))
        }
        _ => None,
    }
}

fn table_quality(table: &str, check: &Check) -> Option<Value> {
    match check {
        Check::Unique(cols) if cols.len() > 1 => {
            let list = cols.iter().map(|c| c.as_str()).collect::<Vec<_>>().join(", ");
            Some(json!({
                "type": "sql", "name": format!("({list}) unique"), "dimension": "uniqueness", "mustBe": 0,
                "query": format!("SELECT COUNT(*) FROM (SELECT {list} FROM {table} GROUP BY {list} HAVING COUNT(*) > 1) d")
            }))
        }
        Check::Unique(cols) => cols.first().map(
            |c| json!({ "metric": "duplicateValues", "mustBe": 0, "dimension": "uniqueness", "arguments": { "properties": [c.as_str()] } }),
        ),
        Check::RowCount { min, max } => Some(match (min, max) {
            (Some(lo), Some(hi)) => {
                json!({ "metric": "rowCount", "mustBeBetween": [lo, hi], "dimension": "completeness" })
            }
            (Some(lo), None) => {
                json!({ "metric": "rowCount", "mustBeGreaterOrEqualTo": lo, "dimension": "completeness" })
            }
            (None, Some(hi)) => {
                json!({ "metric": "rowCount", "mustBeLessOrEqualTo": hi, "dimension": "completeness" })
            }
            (None, None) => return None,
        }),
        _ => None,
    }
}

fn projection(p: &Projection) -> Value {
    let assignments = |a: &crate::model::Assignments| -> Value {
        Value::Object(
            a.iter()
                .map(|(c, s)| {
                    let v = match s {
                        Source::Literal(v) => json!({ "value": v }),
                        other => json!(other.to_string()),
                    };
                    (c.to_string(), v)
                })
                .collect(),
        )
    };
    match p {
        Projection::Upsert { key, rules } => json!({
            "kind": "upsert",
            "key": key.iter().map(|k| k.as_str()).collect::<Vec<_>>(),
            "from": rules.iter().map(|(e, r)| (e.to_string(), match r {
                Rule::Set(a) => json!({ "set": assignments(a) }),
                Rule::Delete(a) => json!({ "delete": assignments(a) }),
            })).collect::<Map<_, _>>(),
        }),
        Projection::Append { rules } => json!({
            "kind": "append",
            "from": rules.iter().map(|(e, a)| (e.to_string(), json!({ "set": assignments(a) }))).collect::<Map<_, _>>(),
        }),
        Projection::Sql { query, .. } => json!({ "kind": "sql", "sql": query }),
    }
}

fn step(s: &UpcastStep) -> Value {
    match s {
        UpcastStep::Move { from, to } => {
            json!({ "move": { "from": from.to_string(), "to": to.to_string() } })
        }
        UpcastStep::Default { field, value } => {
            json!({ "default": { "field": field.to_string(), "value": value } })
        }
        UpcastStep::Remove { field } => json!({ "remove": { "field": field.to_string() } }),
        UpcastStep::Map { field, values } => {
            json!({ "map": { "field": field.to_string(), "values": values } })
        }
        UpcastStep::Scale { field, by } => {
            json!({ "scale": { "field": field.to_string(), "by": by } })
        }
        UpcastStep::Cast { field, to } => {
            json!({ "cast": { "field": field.to_string(), "to": format!("{to:?}").to_lowercase() } })
        }
    }
}

/// Renders a JSON value as a YAML document.
pub fn to_yaml(value: &Value) -> String {
    fn convert(v: &Value) -> Yaml {
        match v {
            Value::Null => Yaml::Null,
            Value::Bool(b) => Yaml::Boolean(*b),
            Value::Number(n) => match n.as_i64() {
                Some(i) => Yaml::Integer(i),
                None => Yaml::Real(n.to_string()),
            },
            Value::String(s) => Yaml::String(s.clone()),
            Value::Array(items) => Yaml::Array(items.iter().map(convert).collect()),
            Value::Object(map) => {
                let mut h = Hash::new();
                for (k, v) in map {
                    h.insert(Yaml::String(k.clone()), convert(v));
                }
                Yaml::Hash(h)
            }
        }
    }
    let mut out = String::new();
    let mut emitter = YamlEmitter::new(&mut out);
    emitter.multiline_strings(true);
    // Emitting into a String cannot fail.
    let _ = emitter.dump(&convert(value));
    out.push('\n');
    out
}
