//! Semantic validation: the wire format becomes the domain model, and every
//! name, type and reference is checked on the way.
//!
//! Runs only on a document that passed the JSON Schema, so it can trust the
//! shape and concentrate on meaning: references resolve, types fit, keys are
//! sound, upcaster chains are complete, derived SQL reads only the product's
//! own tables. Every finding is a diagnostic; conversion goes on past errors
//! so that one run reports all of them.

use std::collections::{BTreeMap, HashSet};

use indexmap::IndexMap;
use serde_json::Value;
use tessera_core::{ColumnName, DomainName, EventTypeName, ProductName, TableName};

use crate::diagnostic::{Code, Diagnostic, suggestion};
use crate::model::*;
use crate::policy::{Role, Strategy};
use crate::source::child;
use crate::{payload, sql, wire};

struct Ctx {
    out: Vec<Diagnostic>,
    /// Pointers of columns and assignments left out of the model because
    /// they are already reported: references to them are not errors again.
    dropped: HashSet<String>,
}

impl Ctx {
    fn push(&mut self, d: Diagnostic) {
        self.out.push(d);
    }
}

/// Converts and checks a structurally valid contract.
pub(crate) fn contract(w: wire::Contract) -> (Option<Contract>, Vec<Diagnostic>) {
    let mut cx = Ctx { out: Vec::new(), dropped: HashSet::new() };
    let model = convert(&mut cx, w);
    if let Some(c) = &model {
        check_references(&mut cx, c);
    }
    (model, cx.out)
}

fn convert(cx: &mut Ctx, w: wire::Contract) -> Option<Contract> {
    let domain = name(cx, "/domain", &w.domain, DomainName::parse);
    let product = name(cx, "/name", &w.name, ProductName::parse);
    let version = match semver::Version::parse(&w.version) {
        Ok(v) => Some(v),
        Err(e) => {
            cx.push(
                Diagnostic::error(Code::VersionInvalid, "/version", format!("`{}` is not a semantic version: {e}", w.version))
                    .help("write MAJOR.MINOR.PATCH, e.g. 1.0.0"),
            );
            None
        }
    };
    let status = w.status.as_deref().map_or(Some(Status::Draft), Status::parse);
    let freshness = match w.service_levels.and_then(|s| s.freshness) {
        Some(text) => match Freshness::parse(&text) {
            Some(f) => Some(f),
            None => {
                cx.push(
                    Diagnostic::error(Code::SchemaInvalidValue, "/service_levels/freshness", format!("`{text}` is not a duration"))
                        .help("write a number and a unit (s, m, h, d), e.g. 15m"),
                );
                None
            }
        },
        None => None,
    };

    let mut events = IndexMap::new();
    for (raw_name, e) in w.events {
        let at = child("/events", &raw_name);
        let Some(event_name) = name(cx, &at, &raw_name, EventTypeName::parse) else {
            continue;
        };
        events.insert(event_name, event(cx, &at, e));
    }

    let mut tables = IndexMap::new();
    for (raw_name, t) in w.tables {
        let at = child("/tables", &raw_name);
        let Some(table_name) = name(cx, &at, &raw_name, TableName::parse) else {
            continue;
        };
        if let Some(t) = table(cx, &at, t) {
            tables.insert(table_name, t);
        }
    }

    Some(Contract {
        domain: domain?,
        name: product?,
        version: version?,
        title: w.title,
        description: w.description,
        owner: Owner { team: w.owner.team, contact: w.owner.contact },
        tags: w.tags,
        status: status?,
        freshness,
        events,
        tables,
    })
}

fn name<T, E: std::fmt::Display>(cx: &mut Ctx, at: &str, raw: &str, parse: impl Fn(String) -> Result<T, E>) -> Option<T> {
    match parse(raw.to_owned()) {
        Ok(n) => Some(n),
        Err(e) => {
            cx.push(Diagnostic::error(Code::SchemaInvalidValue, at, e.to_string()).at_key());
            None
        }
    }
}

fn event(cx: &mut Ctx, at: &str, e: wire::Event) -> EventType {
    let schema_at = format!("{at}/schema");
    check_payload_schema(cx, &schema_at, &e.schema);
    for pointer in crate::seal::unsealable_classifications(&e.schema) {
        cx.push(
            Diagnostic::error(
                Code::PayloadSchemaInvalid,
                format!("{schema_at}{pointer}"),
                "a classification under `anyOf`, `oneOf`, `allOf`, `additionalProperties` or a similar keyword cannot be sealed: \
                 whether a payload's value follows that subschema is not known",
            )
            .help("declare personal fields under `properties` (a `$ref` there is fine), or classify the field that holds the alternatives as a whole"),
        );
    }

    let subject = e.subject.as_deref().and_then(|s| {
        let p = FieldPath::parse(s);
        if p.is_none() {
            cx.push(
                Diagnostic::error(Code::SubjectInvalid, format!("{at}/subject"), format!("`{s}` is not a payload path"))
                    .help("write a dotted path of payload fields, e.g. customer.id"),
            );
        }
        p
    });
    if let Some(path) = &subject {
        check_subject(cx, &format!("{at}/subject"), &e.schema, path);
    }
    // An event about several persons: a field may name its own subject.
    let declaring: Vec<payload::Property> =
        payload::walk(&e.schema).into_iter().filter(|p| crate::seal::subject_declared(p.schema).is_some()).collect();
    for prop in &declaring {
        let pointer = format!("{schema_at}{}/subject", prop.pointer);
        let declared = crate::seal::subject_declared(prop.schema).unwrap_or_default();
        match FieldPath::parse(declared) {
            Some(path) => check_subject(cx, &pointer, &e.schema, &path),
            None => cx.push(
                Diagnostic::error(Code::SubjectInvalid, pointer.clone(), format!("`{declared}` is not a payload path"))
                    .help("write the dotted payload path of the identifier of the person this field is about, e.g. payer.customer_id"),
            ),
        }
        if let Some(outer) =
            declaring.iter().find(|o| prop.path.starts_with(&format!("{}.", o.path)) || prop.path.starts_with(&format!("{}[]", o.path)))
        {
            cx.push(
                Diagnostic::error(
                    Code::SubjectInvalid,
                    pointer,
                    format!(
                        "`{}` names a subject inside `{}`, which names one too: a personal field must have exactly one subject",
                        prop.path, outer.path
                    ),
                )
                .help("name the subject on the outer field or on the inner fields, not both"),
            );
        }
    }
    for (pointer, why) in crate::seal::misplaced_subjects(&e.schema) {
        cx.push(Diagnostic::error(Code::SubjectInvalid, format!("{schema_at}{pointer}"), why).help(
            "name the event's subject with `subject:` beside `schema:`, or a person's on the payload property that holds their fields",
        ));
    }

    let mut upcasters: Vec<Upcaster> =
        e.upcasters.into_iter().enumerate().map(|(i, u)| upcaster(cx, &format!("{at}/upcasters/{i}"), u)).collect();
    // The chain must take every older version to the current one, once.
    let mut seen = BTreeMap::new();
    for (i, u) in upcasters.iter().enumerate() {
        let here = format!("{at}/upcasters/{i}/from");
        if u.from >= e.version {
            cx.push(
                Diagnostic::error(
                    Code::UpcastInvalid,
                    here,
                    format!("an upcaster from version {} but the event is at version {}", u.from, e.version),
                )
                .help(format!(
                    "upcasters go from an older version to the next; the oldest is 1, the newest {}",
                    e.version.saturating_sub(1)
                )),
            );
        } else if let Some(first) = seen.insert(u.from, i) {
            cx.push(
                Diagnostic::error(
                    Code::UpcastInvalid,
                    here,
                    format!("a second upcaster from version {} (the first is upcaster #{})", u.from, first + 1),
                )
                .help("merge their steps into one upcaster, or correct `from`"),
            );
        }
    }
    let missing: Vec<String> = (1..e.version).filter(|v| !seen.contains_key(v)).map(|v| v.to_string()).collect();
    if !missing.is_empty() {
        cx.push(
            Diagnostic::error(
                Code::UpcastInvalid,
                format!("{at}/version"),
                format!("the event is at version {} but has no upcaster from version {}", e.version, missing.join(", ")),
            )
            .help("add `upcasters: [{ from: N, steps: [...] }]` for each older version, so that old events can still be read"),
        );
    }
    // Where each upcaster is in the file (the model keeps them sorted).
    let in_file: BTreeMap<u32, usize> = upcasters.iter().enumerate().map(|(i, u)| (u.from, i)).collect();
    upcasters.sort_by_key(|u| u.from);
    let event = EventType { description: e.description, version: e.version, subject, schema: e.schema, upcasters };
    // Classified fields are stored sealed: an upcaster may move them, never look inside.
    for (u, s, why) in crate::seal::upcaster_conflicts(&event) {
        let index = event.upcasters.get(u).and_then(|x| in_file.get(&x.from)).copied().unwrap_or(u);
        cx.push(Diagnostic::error(Code::UpcastInvalid, format!("{at}/upcasters/{index}/steps/{s}"), why).help(
            "classified values are stored sealed per data subject; rename them with `move`, and change the values in the producer instead",
        ));
    }
    event
}

fn check_payload_schema(cx: &mut Ctx, at: &str, schema: &Value) {
    if let Err(e) = jsonschema::meta::validate(schema) {
        cx.push(
            Diagnostic::error(
                Code::PayloadSchemaInvalid,
                format!("{at}{}", e.instance_path().as_str()),
                format!("invalid payload schema: {e}"),
            )
            .help("payload schemas are JSON Schema 2020-12; see https://json-schema.org/understanding-json-schema"),
        );
        return;
    }
    if let Err(e) = jsonschema::draft202012::new(schema) {
        cx.push(Diagnostic::error(Code::PayloadSchemaInvalid, at, format!("the payload schema cannot be used: {e}")));
        return;
    }
    if schema.get("type").and_then(Value::as_str) != Some("object") {
        cx.push(
            Diagnostic::error(Code::PayloadSchemaInvalid, at, "a payload schema must describe an object")
                .help("start the schema with `type: object` and list the fields under `properties`"),
        );
    }
}

/// A data subject named at `at`: a payload path to an identifier (a
/// string or an integer) that every payload has.
fn check_subject(cx: &mut Ctx, at: &str, schema: &Value, path: &FieldPath) {
    match payload::resolve(schema, path) {
        Ok(field) => {
            if !field.always_present {
                cx.push(
                    Diagnostic::error(Code::SubjectInvalid, at.to_owned(), format!("the subject `{path}` is not required in the payload"))
                        .help("every event must name its data subject: list the field under `required` at each level"),
                );
            }
            if !field.types.iter().all(|t| matches!(*t, "string" | "integer")) || field.types.is_empty() {
                cx.push(Diagnostic::error(
                    Code::SubjectInvalid,
                    at.to_owned(),
                    format!("the subject `{path}` must be a string or an integer identifier"),
                ));
            }
        }
        Err(u) => cx.push(unresolved(Code::SubjectInvalid, at.to_owned(), path, &u, &format!("the subject `{path}`"))),
    }
}

fn upcaster(cx: &mut Ctx, at: &str, u: wire::Upcaster) -> Upcaster {
    let steps = u
        .steps
        .into_iter()
        .enumerate()
        .filter_map(|(i, s)| {
            let here = format!("{at}/steps/{i}");
            let mut path = |field: &str, key: &str| {
                let p = FieldPath::parse(field);
                if p.is_none() {
                    cx.push(Diagnostic::error(Code::UpcastInvalid, format!("{here}/{key}"), format!("`{field}` is not a field path")));
                }
                p
            };
            Some(match s {
                wire::UpcastStep::Move { from, to } => {
                    let (from, to) = (path(&from, "from"), path(&to, "to"));
                    UpcastStep::Move { from: from?, to: to? }
                }
                wire::UpcastStep::Default { field, value } => UpcastStep::Default { field: path(&field, "field")?, value },
                wire::UpcastStep::Remove { field } => UpcastStep::Remove { field: path(&field, "field")? },
                wire::UpcastStep::Map { field, values } => UpcastStep::Map { field: path(&field, "field")?, values },
                wire::UpcastStep::Scale { field, by } => UpcastStep::Scale { field: path(&field, "field")?, by },
                wire::UpcastStep::Cast { field, to } => {
                    let to = match to.as_str() {
                        "string" => CastType::String,
                        "integer" => CastType::Integer,
                        "number" => CastType::Number,
                        _ => CastType::Boolean,
                    };
                    UpcastStep::Cast { field: path(&field, "field")?, to }
                }
            })
        })
        .collect();
    Upcaster { from: u.from, description: u.description, steps }
}

fn column(cx: &mut Ctx, at: &str, c: wire::Column) -> Option<Column> {
    let data_type = match DataType::parse_scalar(&c.data_type) {
        Ok(Some(t)) => {
            if c.fields.is_some() || c.items.is_some() {
                cx.push(
                    Diagnostic::error(Code::TypeInvalid, at, format!("a {} column has no `fields` or `items`", c.data_type))
                        .help("use `type: struct` with `fields`, or `type: list` with `items`"),
                );
            }
            t
        }
        Ok(None) if c.data_type == "struct" => match c.fields {
            Some(fields) => DataType::Struct(
                fields
                    .into_iter()
                    .filter_map(|(n, f)| {
                        let here = child(&format!("{at}/fields"), &n);
                        let name = name(cx, &here, &n, ColumnName::parse)?;
                        Some((name, column(cx, &here, f)?))
                    })
                    .collect(),
            ),
            None => {
                cx.push(
                    Diagnostic::error(Code::TypeInvalid, format!("{at}/type"), "a struct column needs `fields`")
                        .help("list its fields under `fields:`"),
                );
                return None;
            }
        },
        Ok(None) => match c.items {
            Some(items) => DataType::List(Box::new(column(cx, &format!("{at}/items"), *items)?)),
            None => {
                cx.push(
                    Diagnostic::error(Code::TypeInvalid, format!("{at}/type"), "a list column needs `items`")
                        .help("describe its element under `items:`"),
                );
                return None;
            }
        },
        Err(message) => {
            cx.push(
                Diagnostic::error(Code::TypeInvalid, format!("{at}/type"), message).help("decimal(p,s) takes 1 ≤ p ≤ 38 and 0 ≤ s ≤ p"),
            );
            return None;
        }
    };
    let masking = c
        .masking
        .iter()
        .filter_map(|(r, s)| match (Role::parse(r), Strategy::parse(s)) {
            (Some(r), Some(s)) => Some((r, s)),
            _ => None,
        })
        .collect();
    if c.description.as_deref().is_none_or(|d| d.trim().is_empty()) {
        cx.push(
            Diagnostic::warning(Code::ColumnUndocumented, at, "the column has no description")
                .at_key()
                .help("add `description:` so consumers know what it holds"),
        );
    }
    Some(Column {
        data_type,
        required: c.required,
        description: c.description,
        classification: c.classification,
        justification: c.justification,
        masking,
    })
}

fn table(cx: &mut Ctx, at: &str, t: wire::Table) -> Option<Table> {
    let columns: IndexMap<ColumnName, Column> = t
        .columns
        .into_iter()
        .filter_map(|(n, c)| {
            let here = child(&format!("{at}/columns"), &n);
            let name = name(cx, &here, &n, ColumnName::parse)?;
            match column(cx, &here, c) {
                Some(c) => Some((name, c)),
                None => {
                    cx.dropped.insert(here);
                    None
                }
            }
        })
        .collect();

    let modes = [t.upsert.is_some(), t.append.is_some(), t.sql.is_some()].iter().filter(|m| **m).count();
    if modes != 1 {
        cx.push(
            Diagnostic::error(
                Code::TableInvalid,
                at,
                if modes == 0 {
                    "the table does not say how it is projected".to_owned()
                } else {
                    "the table names more than one projection".to_owned()
                },
            )
            .at_key()
            .help("give exactly one of `upsert` (state per key), `append` (one row per event) or `sql` (derived from other tables)"),
        );
        return None;
    }
    let projection = if let Some(u) = t.upsert {
        let key: Vec<ColumnName> = u.key.iter().filter_map(|k| ColumnName::parse(k.as_str()).ok()).collect();
        let rules = u
            .from
            .into_iter()
            .filter_map(|(e, r)| {
                let e = EventTypeName::parse(e).ok()?;
                let here = child(&format!("{at}/upsert/from"), e.as_str());
                let rule = match r {
                    wire::Rule::Set(a) => Rule::Set(assignments(cx, &format!("{here}/set"), a)),
                    wire::Rule::Delete(a) => Rule::Delete(assignments(cx, &format!("{here}/delete"), a)),
                };
                Some((e, rule))
            })
            .collect();
        Projection::Upsert { key, rules }
    } else if let Some(a) = t.append {
        let rules = a
            .from
            .into_iter()
            .filter_map(|(e, r)| {
                let e = EventTypeName::parse(e).ok()?;
                match r {
                    wire::Rule::Set(a) => Some((e.clone(), assignments(cx, &format!("{at}/append/from/{e}/set"), a))),
                    wire::Rule::Delete(_) => {
                        cx.push(
                            Diagnostic::error(
                                Code::RuleInvalid,
                                format!("{at}/append/from/{e}/delete"),
                                "an append table cannot delete rows",
                            )
                            .at_key()
                            .help("use an upsert table for state that changes, or `set` to record the deletion as a row"),
                        );
                        None
                    }
                }
            })
            .collect();
        Projection::Append { rules }
    } else {
        let query = t.sql.unwrap_or_default();
        let reads = match sql::analyze(&query) {
            Ok(analysis) => {
                if let Some(outputs) = &analysis.outputs {
                    for (c, _) in &columns {
                        if !outputs.iter().any(|o| o == c.as_str()) {
                            cx.push(
                                Diagnostic::error(
                                    Code::SqlInvalid,
                                    format!("{at}/columns/{c}"),
                                    format!("the query does not return the column `{c}`"),
                                )
                                .at_key()
                                .help(format!(
                                    "the query returns {}; alias an expression `AS {c}` or remove the column",
                                    quote_all(outputs)
                                )),
                            );
                        }
                    }
                    for o in outputs {
                        if !columns.keys().any(|c| c.as_str() == o) {
                            cx.push(
                                Diagnostic::error(
                                    Code::SqlInvalid,
                                    format!("{at}/sql"),
                                    format!("the query returns `{o}`, which is not a declared column"),
                                )
                                .help(format!("declare `{o}` under `columns`, or remove it from the SELECT")),
                            );
                        }
                    }
                }
                analysis.reads.iter().filter_map(|r| TableName::parse(r.as_str()).ok()).collect()
            }
            Err(problem) => {
                let help = if problem.at.is_some() {
                    "derived tables use DataFusion's SQL; check the query at this position"
                } else {
                    "write one SELECT that reads the product's own tables by bare name, e.g. `SELECT ... FROM orders`"
                };
                let mut d = Diagnostic::error(Code::SqlInvalid, format!("{at}/sql"), problem.message).help(help);
                if let Some((line, column)) = problem.at {
                    d = d.within(crate::source::Position { line, column });
                }
                cx.push(d);
                Vec::new()
            }
        };
        Projection::Sql { query, reads }
    };

    let checks = t.checks.into_iter().enumerate().filter_map(|(i, c)| check(cx, &format!("{at}/checks/{i}"), &columns, c)).collect();
    Some(Table { description: t.description, projection, columns, checks })
}

fn assignments(cx: &mut Ctx, here: &str, a: IndexMap<String, wire::Source>) -> Assignments {
    a.into_iter()
        .filter_map(|(c, s)| {
            let at = child(here, &c);
            let c = ColumnName::parse(c).ok()?;
            let source = match s {
                wire::Source::Literal { value } => Source::Literal(value),
                wire::Source::Reference(r) => {
                    let (scope, rest) = r.split_once('.')?;
                    match scope {
                        "payload" => Source::Payload(FieldPath::parse(rest)?),
                        "metadata" => Source::Metadata(rest.to_owned()),
                        _ => match EventField::parse(rest) {
                            Some(field) => Source::Event(field),
                            None => {
                                cx.push(
                                    Diagnostic::error(
                                        Code::RefUnknownEventField,
                                        at.clone(),
                                        format!("`event.{rest}` is not a field of the event envelope"),
                                    )
                                    .help(suggestion(rest, EventField::ALL.iter().map(|f| f.as_str()))),
                                );
                                cx.dropped.insert(at);
                                return None;
                            }
                        },
                    }
                }
            };
            Some((c, source))
        })
        .collect()
}

fn check(cx: &mut Ctx, at: &str, columns: &IndexMap<ColumnName, Column>, c: wire::Check) -> Option<Check> {
    let mut col = |name: &str, here: String| -> Option<(ColumnName, &Column)> {
        match columns.get_key_value(name) {
            Some((n, c)) => Some((n.clone(), c)),
            None => {
                cx.push(
                    Diagnostic::error(Code::CheckInvalid, here, format!("the check names the unknown column `{name}`"))
                        .help(suggestion(name, columns.keys().map(ColumnName::as_str))),
                );
                None
            }
        }
    };
    Some(match c {
        wire::Check::NotNull(n) => Check::NotNull(col(&n, format!("{at}/not_null"))?.0),
        wire::Check::Unique(ns) => {
            let names: Vec<_> = ns.iter().enumerate().filter_map(|(i, n)| col(n, format!("{at}/unique/{i}")).map(|c| c.0)).collect();
            if names.len() != ns.len() {
                return None;
            }
            Check::Unique(names)
        }
        wire::Check::AcceptedValues { column, values } => {
            let (name, c) = col(&column, format!("{at}/accepted_values/column"))?;
            let ty = c.data_type.clone();
            for (i, v) in values.iter().enumerate() {
                if !literal_fits(v, &ty) {
                    cx.push(
                        Diagnostic::error(
                            Code::CheckInvalid,
                            format!("{at}/accepted_values/values/{i}"),
                            format!("`{v}` is not a value of the {ty} column `{name}`"),
                        )
                        .help(literal_help(&ty)),
                    );
                }
            }
            Check::AcceptedValues { column: name, values }
        }
        wire::Check::Range { column, min, max } => {
            let (name, c) = col(&column, format!("{at}/range/column"))?;
            if !c.data_type.is_numeric() {
                cx.push(
                    Diagnostic::error(
                        Code::CheckInvalid,
                        format!("{at}/range/column"),
                        format!("a range check needs a numeric column; `{name}` is {}", c.data_type),
                    )
                    .help("use accepted_values for strings"),
                );
            }
            empty_range(cx, &format!("{at}/range"), "range", min, max);
            Check::Range { column: name, min, max }
        }
        wire::Check::RowCount { min, max } => {
            empty_range(cx, &format!("{at}/row_count"), "row count range", min, max);
            Check::RowCount { min, max }
        }
    })
}

/// Reports a check whose `min` is above its `max`.
fn empty_range<T: PartialOrd + std::fmt::Display>(cx: &mut Ctx, at: &str, what: &str, min: Option<T>, max: Option<T>) {
    if let (Some(lo), Some(hi)) = (min, max)
        && lo > hi
    {
        cx.push(
            Diagnostic::error(Code::CheckInvalid, at, format!("the {what} is empty: min {lo} is above max {hi}")).help("swap min and max"),
        );
    }
}

/// Whether a literal value can be stored in a column of type `t`.
pub(crate) fn literal_fits(v: &Value, t: &DataType) -> bool {
    match (v, t) {
        (Value::Null, _) => true,
        (Value::String(_), DataType::String) => true,
        (Value::String(s), DataType::Date) => s.len() == 10 && s.as_bytes().get(4) == Some(&b'-'),
        (Value::String(s), DataType::Timestamp) => s.len() >= 19 && s.as_bytes().get(10).is_some_and(|b| *b == b'T' || *b == b' '),
        (Value::Bool(_), DataType::Boolean) => true,
        (Value::Number(n), DataType::Int32) => n.as_i64().is_some_and(|i| i32::try_from(i).is_ok()),
        (Value::Number(n), DataType::Int64) => n.is_i64(),
        (Value::Number(_), DataType::Float64 | DataType::Decimal { .. }) => true,
        (Value::Object(_), DataType::Struct(_)) | (Value::Array(_), DataType::List(_)) => true,
        _ => false,
    }
}

fn quote_all(names: &[String]) -> String {
    names.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")
}

/// `what` names the reference, e.g. "`payload.customer.emial` in `OrderPlaced`".
fn unresolved(code: Code, at: String, path: &FieldPath, u: &payload::Unresolved, what: &str) -> Diagnostic {
    let missing = &path.0[u.depth];
    let prefix = path.0[..u.depth].join(".");
    let place = if prefix.is_empty() { "the payload".to_owned() } else { format!("`{prefix}`") };
    let help = if u.available.is_empty() {
        format!("{place} has no fields; declare them under `properties` in the event schema")
    } else {
        suggestion(missing, u.available.iter().map(String::as_str))
    };
    Diagnostic::error(code, at, format!("{what} does not exist: {place} has no field `{missing}`")).help(help)
}

/// References between parts of the contract: rules to events, payload paths
/// and columns; keys; derived tables to their inputs.
fn check_references(cx: &mut Ctx, c: &Contract) {
    let event_names = || c.events.keys().map(EventTypeName::as_str);
    for (table_name, table) in &c.tables {
        let at = format!("/tables/{table_name}");
        let column_names = || table.columns.keys().map(ColumnName::as_str);
        let mut set_anywhere: HashSet<&ColumnName> = HashSet::new();
        let rules: Vec<(&EventTypeName, &Assignments, bool, String)> = match &table.projection {
            Projection::Upsert { key, rules } => {
                for (i, k) in key.iter().enumerate() {
                    match table.columns.get(k) {
                        None => cx.push(
                            Diagnostic::error(
                                Code::KeyInvalid,
                                format!("{at}/upsert/key/{i}"),
                                format!("the key names the unknown column `{k}`"),
                            )
                            .help(suggestion(k.as_str(), column_names())),
                        ),
                        Some(col) if !col.required => cx.push(
                            Diagnostic::error(
                                Code::KeyInvalid,
                                format!("{at}/upsert/key/{i}"),
                                format!("the key column `{k}` is nullable"),
                            )
                            .help(format!("add `required: true` to column `{k}`: a row's key is never null")),
                        ),
                        Some(col) if matches!(col.data_type, DataType::Struct(_) | DataType::List(_) | DataType::Float64) => {
                            cx.push(Diagnostic::error(
                                Code::KeyInvalid,
                                format!("{at}/upsert/key/{i}"),
                                format!("the key column `{k}` is {}, which cannot identify a row", col.data_type),
                            ))
                        }
                        Some(_) => {}
                    }
                }
                let key_ok = key.iter().all(|k| table.columns.contains_key(k));
                let key: Vec<&ColumnName> = key.iter().filter(|k| table.columns.contains_key(*k)).collect();
                rules
                    .iter()
                    .map(|(e, r)| {
                        let (verb, delete) = match r {
                            Rule::Set(_) => ("set", false),
                            Rule::Delete(_) => ("delete", true),
                        };
                        let here = format!("{at}/upsert/from/{e}/{verb}");
                        for k in &key {
                            if !r.assignments().contains_key(*k) {
                                cx.push(
                                    Diagnostic::error(
                                        Code::KeyInvalid,
                                        here.clone(),
                                        format!("the rule for `{e}` does not set the key column `{k}`"),
                                    )
                                    .at_key()
                                    .help(format!(
                                        "add `{k}: payload.<field>` (or `event.stream`): every event must say which row it {verb}s"
                                    )),
                                );
                            }
                        }
                        if delete && key_ok {
                            for col in r.assignments().keys().filter(|col| !key.contains(col)) {
                                cx.push(
                                    Diagnostic::error(
                                        Code::RuleInvalid,
                                        child(&here, col.as_str()),
                                        format!("a delete sets only key columns; `{col}` is not one"),
                                    )
                                    .at_key()
                                    .help("remove it: the whole row is deleted"),
                                );
                            }
                        }
                        (e, r.assignments(), delete, here)
                    })
                    .collect()
            }
            Projection::Append { rules } => rules.iter().map(|(e, a)| (e, a, false, format!("{at}/append/from/{e}/set"))).collect(),
            Projection::Sql { reads, .. } => {
                for r in reads {
                    if r == table_name {
                        cx.push(Diagnostic::error(Code::SqlInvalid, format!("{at}/sql"), "the query reads its own table"));
                    } else if !c.tables.contains_key(r) {
                        cx.push(
                            Diagnostic::error(
                                Code::SqlInvalid,
                                format!("{at}/sql"),
                                format!("the query reads `{r}`, which is not a table of this product"),
                            )
                            .help(suggestion(r.as_str(), c.tables.keys().map(TableName::as_str))),
                        );
                    }
                }
                continue;
            }
        };
        let key: &[ColumnName] = match &table.projection {
            Projection::Upsert { key, .. } => key,
            _ => &[],
        };

        for (event_name, assigned, _delete, here) in &rules {
            let rule_at = here.rsplit_once('/').map(|(p, _)| p.to_owned()).unwrap_or_default();
            let Some(event) = c.events.get(*event_name) else {
                cx.push(
                    Diagnostic::error(Code::RefUnknownEvent, rule_at, format!("the rule refers to the unknown event type `{event_name}`"))
                        .at_key()
                        .help(suggestion(event_name.as_str(), event_names())),
                );
                continue;
            };
            for (col_name, source) in assigned.iter() {
                let src_at = child(here, col_name.as_str());
                let Some(col) = table.columns.get(col_name) else {
                    if cx.dropped.contains(&format!("{at}/columns/{col_name}")) {
                        continue;
                    }
                    cx.push(
                        Diagnostic::error(Code::RefUnknownColumn, src_at, format!("the rule sets the unknown column `{col_name}`"))
                            .at_key()
                            .help(suggestion(col_name.as_str(), column_names())),
                    );
                    continue;
                };
                set_anywhere.insert(col_name);
                let is_key = key.contains(col_name);
                let always = match source {
                    Source::Payload(path) => match payload::resolve(&event.schema, path) {
                        Ok(field) => {
                            if !payload::fits(&field, &col.data_type) {
                                let found =
                                    if field.types.is_empty() { "of no declared type".to_owned() } else { field.types.join(" or ") };
                                let format = field.format.map(|f| format!(" (format {f})")).unwrap_or_default();
                                cx.push(
                                    Diagnostic::error(
                                        Code::RefTypeMismatch,
                                        src_at.clone(),
                                        format!("`payload.{path}` is {found}{format} in `{event_name}`, which does not fit the {} column `{col_name}`", col.data_type),
                                    )
                                    .help(type_help(&col.data_type)),
                                );
                            }
                            field.always_present
                        }
                        Err(u) => {
                            cx.push(unresolved(
                                Code::RefUnknownPayloadPath,
                                src_at.clone(),
                                path,
                                &u,
                                &format!("`payload.{path}` in `{event_name}`"),
                            ));
                            true
                        }
                    },
                    Source::Event(field) => {
                        if !field.fits(&col.data_type) {
                            cx.push(Diagnostic::error(
                                Code::RefTypeMismatch,
                                src_at.clone(),
                                format!("`event.{}` does not fit the {} column `{col_name}`", field.as_str(), col.data_type),
                            ));
                        }
                        true
                    }
                    Source::Metadata(_) => false,
                    Source::Literal(v) => {
                        if !literal_fits(v, &col.data_type) {
                            cx.push(
                                Diagnostic::error(
                                    Code::RefTypeMismatch,
                                    src_at.clone(),
                                    format!("the literal {v} does not fit the {} column `{col_name}`", col.data_type),
                                )
                                .help(literal_help(&col.data_type)),
                            );
                        }
                        !v.is_null()
                    }
                };
                if !always && (is_key || col.required) {
                    let what = if is_key { "key column" } else { "required column" };
                    cx.push(
                        Diagnostic::error(
                            if is_key { Code::KeyInvalid } else { Code::RuleInvalid },
                            src_at.clone(),
                            format!("the {what} `{col_name}` is set from `{source}`, which `{event_name}` may leave out"),
                        )
                        .help(match source {
                            Source::Payload(p) => {
                                format!("list `{p}` under `required` in the schema of `{event_name}`, or make the column nullable")
                            }
                            _ => "use a payload field that is always present, or make the column nullable".to_owned(),
                        }),
                    );
                }
            }
            if let Projection::Append { .. } = table.projection {
                for (col_name, col) in &table.columns {
                    if col.required && !assigned.contains_key(col_name) && !cx.dropped.contains(&child(here, col_name.as_str())) {
                        cx.push(
                            Diagnostic::error(
                                Code::RuleInvalid,
                                here.clone(),
                                format!("the rule for `{event_name}` does not set the required column `{col_name}`"),
                            )
                            .at_key()
                            .help(format!("set `{col_name}`, or make it nullable")),
                        );
                    }
                }
            }
        }
        for (col_name, _) in table.columns.iter() {
            if !set_anywhere.contains(col_name) {
                cx.push(
                    Diagnostic::warning(
                        Code::ColumnUnset,
                        format!("{at}/columns/{col_name}"),
                        format!("no rule sets the column `{col_name}`"),
                    )
                    .at_key()
                    .help("set it from an event, or remove it"),
                );
            }
        }
    }
    check_sql_cycles(cx, c);
}

/// How to write a literal of type `t`.
fn literal_help(t: &DataType) -> String {
    match t {
        DataType::String => "quote it to make it a string, e.g. \"3\"".into(),
        DataType::Date => "write a date as \"2026-01-31\"".into(),
        DataType::Timestamp => "write a timestamp as \"2026-01-31T12:00:00Z\"".into(),
        DataType::Boolean => "write true or false".into(),
        DataType::Int32 | DataType::Int64 => "write a whole number within the column's range".into(),
        DataType::Float64 | DataType::Decimal { .. } => "write a number".into(),
        DataType::Struct(_) => "write a mapping".into(),
        DataType::List(_) => "write a list".into(),
    }
}

fn type_help(t: &DataType) -> String {
    match t {
        DataType::Timestamp => "a timestamp column takes a string with `format: date-time`".into(),
        DataType::Date => "a date column takes a string with `format: date`".into(),
        DataType::Int32 | DataType::Int64 => "an integer column takes `type: integer`".into(),
        DataType::Float64 | DataType::Decimal { .. } => "a numeric column takes `type: number` or `type: integer`".into(),
        DataType::Boolean => "a boolean column takes `type: boolean`".into(),
        DataType::String => "a string column takes `type: string`".into(),
        DataType::Struct(_) => "a struct column takes `type: object`".into(),
        DataType::List(_) => "a list column takes `type: array`".into(),
    }
}

fn check_sql_cycles(cx: &mut Ctx, c: &Contract) {
    for (start, table) in &c.tables {
        let Projection::Sql { .. } = table.projection else {
            continue;
        };
        // Depth-first from `start`; a path back to it is a cycle.
        let mut stack = vec![(start, vec![start])];
        let mut visited = HashSet::new();
        while let Some((node, path)) = stack.pop() {
            let Some(Projection::Sql { reads, .. }) = c.tables.get(node).map(|t| &t.projection) else {
                continue;
            };
            for r in reads {
                if r == start && node != start {
                    let names: Vec<&str> = path.iter().map(|t| t.as_str()).chain([start.as_str()]).collect();
                    cx.push(Diagnostic::error(
                        Code::SqlInvalid,
                        format!("/tables/{start}/sql"),
                        format!("derived tables read each other in a cycle: {}", names.join(" → ")),
                    ));
                    stack.clear();
                    break;
                }
                if visited.insert(r) {
                    let mut p = path.clone();
                    p.push(r);
                    stack.push((r, p));
                }
            }
        }
    }
}
