//! Governance lint: the contract against the global policy.
//!
//! Every column or payload field whose name looks personal carries a
//! classification (or `none` with a justification); classifications exist;
//! masking is only ever tightened; every role's strategy fits the column's
//! type; a column filled from a classified payload field is masked at least
//! as strictly; events that carry personal data name their data subject.

use crate::diagnostic::{Code, Diagnostic, suggestion};
use crate::model::{Column, Contract, DataType, Projection, Source};
use crate::payload;
use crate::policy::{NONE, Policy, Role, Strategy};
use crate::source::child;

/// Every governance finding for a contract.
pub fn check(contract: &Contract, policy: &Policy) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    for (event_name, event) in &contract.events {
        let at = format!("/events/{event_name}/schema");
        for prop in payload::walk(&event.schema) {
            let here = format!("{at}{}", prop.pointer);
            let classification = prop.schema.get("classification").and_then(|v| v.as_str());
            let justification = prop.schema.get("justification").and_then(|v| v.as_str());
            classify(&mut out, policy, &here, &format!("payload field `{}`", prop.path), prop.name, classification, justification);
        }
        // Every personal value is sealed under exactly one subject: the
        // event's, or the one its field (or a field around it) names.
        let plan = crate::seal::plan(event, event.version);
        let without: Vec<String> =
            plan.paths.iter().filter(|(_, subject)| subject.is_none()).map(|(path, _)| crate::seal::path_text(path)).collect();
        if !without.is_empty() {
            out.push(
                Diagnostic::error(
                    Code::SubjectInvalid,
                    format!("/events/{event_name}"),
                    format!("`{event_name}` carries personal data in {} but does not name its data subject", without.join(", ")),
                )
                .at_key()
                .help(
                    "add `subject: <payload path>` naming the identifier of the person the data belongs to, so that it can be forgotten on request \
                     (for an event about several persons, a field may name its own `subject:` in the schema)",
                ),
            );
        }
    }

    for (table_name, table) in &contract.tables {
        for (col_name, col) in &table.columns {
            let at = format!("/tables/{table_name}/columns/{col_name}");
            check_column(&mut out, policy, &at, col_name.as_str(), col);
        }
        // A column filled from a classified payload field is masked at least as strictly.
        let rules: Vec<_> = match &table.projection {
            Projection::Upsert { rules, .. } => rules.iter().map(|(e, r)| (e, r.assignments())).collect(),
            Projection::Append { rules } => rules.iter().collect(),
            Projection::Sql { .. } => Vec::new(),
        };
        for (event_name, assigned) in rules {
            let Some(event) = contract.events.get(event_name) else {
                continue;
            };
            for (col_name, source) in assigned {
                let Some(col) = table.columns.get(col_name) else {
                    continue;
                };
                let column_error = |message: String, help: String| {
                    Diagnostic::error(Code::GovernanceWeakerThanSource, format!("/tables/{table_name}/columns/{col_name}"), message)
                        .at_key()
                        .help(help)
                };
                // A whole object or array copied into a struct or list
                // column: each classified field inside it must land in a
                // field masked at least as strictly.
                if let Source::Payload(path) = source {
                    for (within, class) in payload::classified_within(&event.schema, path) {
                        let weaker = weaker_nested(policy, col, &within, class);
                        if !weaker.is_empty() {
                            out.push(column_error(
                                format!(
                                    "column `{col_name}` is filled from `{source}`, whose field `{}` is {class}, but its field is masked less strictly: {}",
                                    within.join("."),
                                    weaker.join("; ")
                                ),
                                format!("add `classification: {class}` to that field of the column"),
                            ));
                        }
                    }
                }
                // The source's classification: a payload field's own (or its
                // classified parent object's); a metadata key's by the naming
                // heuristics, since metadata has no schema to declare it in.
                let source_class = match source {
                    Source::Payload(path) => payload::resolve(&event.schema, path).ok().and_then(|f| f.classification),
                    Source::Metadata(key) => policy.suspect(key),
                    _ => None,
                };
                let Some(source_class) = source_class.filter(|c| *c != NONE) else {
                    continue;
                };
                let weaker = weaker_than(policy, col, source_class);
                if !weaker.is_empty() {
                    out.push(column_error(
                        format!(
                            "column `{col_name}` is filled from `{source}` ({source_class}) but is masked less strictly: {}",
                            weaker.join("; ")
                        ),
                        format!("add `classification: {source_class}` to the column"),
                    ));
                }
            }
        }
    }
    out
}

/// How `col` is masked less strictly than `class` requires, role by role.
fn weaker_than(policy: &Policy, col: &Column, class: &str) -> Vec<String> {
    let Some(source_policy) = policy.classifications.get(class) else { return Vec::new() };
    Role::ALL
        .into_iter()
        .filter_map(|role| {
            let needed = *source_policy.masking.get(&role)?;
            let given = policy.effective(col, role)?;
            (policy.rank(given) < policy.rank(needed)).then(|| format!("{role} gets {given} instead of {needed}"))
        })
        .collect()
}

/// How the field at `path` inside a struct or list column (`[]` for list
/// items) is masked less strictly than `class` requires. A field the column
/// does not declare is not stored; a column (or field on the way) masked as
/// a whole for a role masks everything inside it.
fn weaker_nested(policy: &Policy, col: &Column, path: &[String], class: &str) -> Vec<String> {
    let Some(source_policy) = policy.classifications.get(class) else { return Vec::new() };
    Role::ALL
        .into_iter()
        .filter_map(|role| {
            let needed = *source_policy.masking.get(&role)?;
            let mut node = col;
            let mut given = policy.effective(node, role)?;
            for step in path {
                if given != Strategy::Clear {
                    break;
                }
                node = match (&node.data_type, step.as_str()) {
                    (DataType::List(item), "[]") => item.as_ref(),
                    (DataType::Struct(fields), name) => fields.iter().find(|(n, _)| n.as_str() == name).map(|(_, f)| f)?,
                    _ => return None,
                };
                given = policy.effective(node, role)?;
            }
            (policy.rank(given) < policy.rank(needed)).then(|| format!("{role} gets {given} instead of {needed}"))
        })
        .collect()
}

fn check_column(out: &mut Vec<Diagnostic>, policy: &Policy, at: &str, name: &str, col: &Column) {
    classify(out, policy, at, &format!("column `{name}`"), name, col.classification.as_deref(), col.justification.as_deref());
    let class_name = col.classification.as_deref().unwrap_or(NONE);
    if let Some(class) = policy.classifications.get(class_name) {
        for (role, own) in &col.masking {
            let Some(global) = class.masking.get(role) else {
                continue;
            };
            if policy.rank(*own) < policy.rank(*global) {
                out.push(
                    Diagnostic::error(
                        Code::GovernanceLoosenedMasking,
                        format!("{at}/masking/{role}"),
                        format!("`{own}` for {role} is looser than the global policy's `{global}` for {class_name}"),
                    )
                    .help(format!("a contract may only tighten masking: use `{global}` or a stricter strategy, or remove the override")),
                );
            }
        }
        for role in Role::ALL {
            let Some(strategy) = policy.effective(col, role) else {
                continue;
            };
            if !strategy.applies_to(&col.data_type) {
                let stricter: Vec<&str> = Strategy::ALL
                    .into_iter()
                    .filter(|s| policy.rank(*s) > policy.rank(strategy) && s.applies_to(&col.data_type))
                    .map(Strategy::as_str)
                    .collect();
                out.push(
                    Diagnostic::error(
                        Code::GovernanceInapplicableMasking,
                        at.to_owned(),
                        format!("{role} gets `{strategy}` for {class_name}, which cannot mask a {} column", col.data_type),
                    )
                    .at_key()
                    .help({
                        let tighten = format!("`masking: {{ {role}: {} }}`", yaml_strategy(stricter.first().copied().unwrap_or("null")));
                        match strategy {
                            Strategy::YearOnly => format!("store it as `type: date` (or `timestamp`), or tighten it: {tighten}"),
                            _ => format!("tighten it: {tighten}"),
                        }
                    }),
                );
            }
        }
    }
    if let DataType::Struct(fields) = &col.data_type {
        for (field_name, field) in fields {
            check_column(out, policy, &child(&format!("{at}/fields"), field_name.as_str()), field_name.as_str(), field);
        }
    }
    // The fields of a list's items are columns too.
    if let DataType::List(item) = &col.data_type
        && let DataType::Struct(fields) = &item.data_type
    {
        for (field_name, field) in fields {
            check_column(out, policy, &child(&format!("{at}/items/fields"), field_name.as_str()), field_name.as_str(), field);
        }
    }
}

/// A strategy as written in YAML: `null` must be quoted to be the strategy.
fn yaml_strategy(s: &str) -> String {
    if s == "null" { "\"null\"".to_owned() } else { s.to_owned() }
}

/// The checks shared by columns and payload fields.
fn classify(
    out: &mut Vec<Diagnostic>,
    policy: &Policy,
    at: &str,
    what: &str,
    name: &str,
    classification: Option<&str>,
    justification: Option<&str>,
) {
    let suspected = policy.suspect(name);
    match classification {
        Some(c) if !policy.classifications.contains_key(c) => out.push(
            Diagnostic::error(
                Code::GovernanceUnknownClassification,
                format!("{at}/classification"),
                format!("unknown classification `{c}`"),
            )
            .help(suggestion(c, policy.classifications.keys().map(String::as_str))),
        ),
        Some(NONE) => {
            if let Some(s) = suspected
                && justification.is_none_or(|j| j.trim().is_empty())
            {
                out.push(
                    Diagnostic::error(
                        Code::GovernanceMissingJustification,
                        format!("{at}/classification"),
                        format!("{what} looks like {s} but is classified `none` without a justification"),
                    )
                    .help("add `justification:` saying why it holds no personal data"),
                );
            }
        }
        Some(_) => {}
        None => {
            if let Some(s) = suspected {
                out.push(
                    Diagnostic::error(
                        Code::GovernanceUnclassified,
                        at.to_owned(),
                        format!("{what} looks like personal data ({s}) but has no classification"),
                    )
                    .at_key()
                    .help(format!("add `classification: {s}`, or `classification: none` with a `justification`")),
                );
            }
        }
    }
}
