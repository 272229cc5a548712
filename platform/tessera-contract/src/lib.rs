//! Tessera's data contract language.
//!
//! A contract is one YAML file per data product: identity and ownership, the
//! event types its domain appends (payload schemas and upcasters), and the
//! output tables projected from them (columns, classification, projection
//! rules, quality checks). This crate turns the text into a [`Contract`] and
//! says everything that is wrong with it, with `file:line:column`:
//!
//! 1. [`source`]: YAML to JSON with the position of every node, refusing
//!    anchors, tags and unbounded input;
//! 2. [`structure`]: the JSON Schema of the format (`contracts/data-contract.schema.json`);
//! 3. `validate`: meaning: names, types, references, keys, SQL, upcasters;
//! 4. [`governance`]: the global [`Policy`] (`contracts/policies.yaml`).
//!
//! **Linting never fails**: [`lint`] returns the model (when the structure
//! allows one) and every diagnostic. Beyond linting: [`diff()`] classifies
//! changes between versions, [`upcast()`] brings old payloads to the current
//! version, [`odcs`] exports to the Open Data Contract Standard.
//!
//! This crate knows nothing of storage, SQL engines or HTTP, and builds
//! without them, so a domain team's CI lints contracts in seconds.

pub mod diagnostic;
pub mod diff;
pub mod governance;
pub mod model;
pub mod odcs;
pub mod payload;
pub mod policy;
pub mod seal;
pub mod source;
pub mod sql;
pub mod structure;
pub mod upcast;
mod validate;
mod wire;

pub use diagnostic::{Code, Diagnostic, Severity};
pub use diff::{Change, Diff, Impact, diff};
pub use model::Contract;
pub use policy::{Policy, Role, Strategy};
pub use upcast::{UpcastError, upcast};

/// The outcome of linting one contract.
#[derive(Debug, Clone)]
pub struct Linted {
    /// The contract, when its structure was sound enough to build one.
    pub contract: Option<Contract>,
    /// Every finding, in source order.
    pub diagnostics: Vec<Diagnostic>,
}

impl Linted {
    /// Whether any diagnostic is an error.
    pub fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(|d| d.severity == Severity::Error)
    }

    /// The contract, if it has no errors.
    pub fn valid(self) -> Option<Contract> {
        if self.has_errors() { None } else { self.contract }
    }

    fn failed(diagnostics: Vec<Diagnostic>) -> Self {
        Self { contract: None, diagnostics }
    }
}

/// Lints raw bytes: they must be UTF-8.
pub fn lint_bytes(bytes: &[u8], policy: &Policy) -> Linted {
    match source::decode(bytes) {
        Ok(text) => lint(text, policy),
        Err(d) => Linted::failed(vec![*d]),
    }
}

/// Parses and checks a contract against the governance policy.
pub fn lint(text: &str, policy: &Policy) -> Linted {
    let document = match source::parse(text) {
        Ok(d) => d,
        Err(diagnostics) => return Linted::failed(diagnostics),
    };
    let mut diagnostics = structure::check(&document.value);
    let mut contract = None;
    // Set aside the tables and events with structural errors, so that the
    // rest of the file is still checked and every error shows in one run.
    if let Some((value, pruned)) = prune(&document.value, &diagnostics) {
        match serde_path_to_error::deserialize::<_, wire::Contract>(&value) {
            Ok(w) => {
                let (model, mut found) = validate::contract(w);
                if let Some(c) = &model {
                    found.extend(governance::check(c, policy));
                    for (table, event, column, why) in seal::rule_conflicts(c) {
                        let kind = c.tables.get(table.as_str()).map_or("upsert", |t| t.projection.kind());
                        found.push(
                            Diagnostic::error(
                                Code::RuleInvalid,
                                format!("/tables/{table}/{kind}/from/{event}"),
                                format!("column `{column}`: {why}"),
                            )
                            .help("carry the value in the payload, where its classification seals it"),
                        );
                    }
                }
                // Drop what only follows from setting parts aside.
                found.retain(|d| match d.code {
                    Code::RefUnknownEvent | Code::SqlInvalid => !pruned.iter().any(|name| d.message.contains(&format!("`{name}`"))),
                    // The rules of a set-aside event no longer set anything.
                    Code::ColumnUnset => pruned.is_empty(),
                    _ => true,
                });
                diagnostics.extend(found);
                contract = if pruned.is_empty() { model } else { None };
            }
            Err(e) => diagnostics.push(Diagnostic::error(
                Code::SchemaInvalidValue,
                policy::path_to_pointer(&e.path().to_string()),
                format!("cannot read this value: {}", e.inner()),
            )),
        }
    }
    for d in &mut diagnostics {
        d.locate(&document.spans);
    }
    diagnostics.sort_by_key(|d| (d.position, d.code));
    diagnostics.dedup();
    Linted { contract, diagnostics }
}

/// The document without the tables and events that have structural errors,
/// and their names; `None` when an error elsewhere leaves nothing to check.
fn prune(document: &serde_json::Value, errors: &[Diagnostic]) -> Option<(serde_json::Value, Vec<String>)> {
    if errors.is_empty() {
        return Some((document.clone(), Vec::new()));
    }
    let mut value = document.clone();
    let mut pruned = Vec::new();
    for e in errors {
        let mut parts = e.pointer.split('/').skip(1);
        let (section, name) = (parts.next()?, parts.next());
        let unescaped = |n: &str| n.replace("~1", "/").replace("~0", "~");
        match (section, name) {
            ("tables" | "events", Some(name)) => {
                let name = unescaped(name);
                value.get_mut(section)?.as_object_mut()?.shift_remove(&name);
                pruned.push(name);
            }
            ("tags" | "status" | "service_levels" | "description", _) => {
                value.as_object_mut()?.shift_remove(section);
            }
            (unknown, None) if e.code == Code::SchemaUnknownKey => {
                value.as_object_mut()?.shift_remove(&unescaped(unknown));
            }
            _ => return None,
        }
    }
    structure::check(&value).is_empty().then_some((value, pruned))
}
